/**
 * Benchmark: prefill and decode tokens/s, time to first token, peak RSS and tensor count for any
 * HF-layout model folder. Numbers are printed by the CLI (`gpt2-tfjs bench`), never asserted in tests.
 */
import { BackendName, currentBackend } from './backend';
import { Batch, Sequence } from './generate/generate';
import * as tf from './tf';
import { loadModel } from './index';
import { EngineInfo, engineInfo } from './model/engines';
import { blockRunsSoFar } from './model/wasm/instance';

export interface BenchOptions {
  model?: string;
  backend?: BackendName;
  /** wasm in Node: kernel threads (see LoadOptions.threads). */
  threads?: number;
  promptTokens?: number;
  newTokens?: number;
  batch?: number;
  /** Untimed warm-up generations first (kernels compile and caches settle). Default 1. */
  warmup?: number;
}

export interface BenchResult {
  model: string;
  backend: string;
  /** Threads the model's kernels ran on (wasm: 1..cores; other backends: 1 as far as we control). */
  threads: number;
  /** wasm: whether the fused multiply-add (relaxed SIMD) build of the kernels ran. */
  fma: boolean;
  /** wasm: blocks that ran as one kernel (GPT2BlockStep) in the timed run; 0 = every block ran op by op. */
  fusedBlocks: number;
  /** What ran the model, and why a fast path was off (engineInfo() after the timed run). */
  engine: EngineInfo;
  nLayer: number;
  nHead: number;
  nEmbd: number;
  vocabSize: number;
  promptTokens: number;
  newTokens: number;
  batch: number;
  loadSeconds: number;
  timeToFirstTokenSeconds: number;
  prefillTokensPerSecond: number;
  decodeTokensPerSecond: number;
  decodeMsPerStep: number;
  peakRssBytes: number;
  numTensors: number;
}

function now(): number {
  return Number(process.hrtime.bigint()) / 1e9;
}

export async function runBench(o: BenchOptions = {}): Promise<BenchResult> {
  const B = o.batch ?? 1;
  const t0 = now();
  const gpt = await loadModel(o.model, { backend: o.backend, threads: o.threads });
  const loadSeconds = now() - t0;
  try {
    // Defaults (256 + 64) shrink to fit a small context; explicit sizes are taken as given.
    const P = gpt.config.nPositions;
    const newTokens = o.newTokens ?? Math.min(64, Math.floor(P / 4));
    const promptTokens = o.promptTokens ?? Math.min(256, P - newTokens + 1);
    const V = gpt.config.vocabSize;
    // Deterministic pseudo-random prompts (different per row); greedy so every run does the same work.
    const prompt = (row: number) => Array.from({ length: promptTokens }, (_, i) => (i * 7919 + row * 104729 + 13) % (V - 1));
    const opts = { temperature: 0, maxNewTokens: newTokens, eosTokenId: null };
    const once = async (n: number) => {
      const seqs = Array.from({ length: B }, (_, b) => new Sequence(prompt(b), { ...opts, maxNewTokens: n }, gpt.model, null));
      const batch = new Batch(gpt.model);
      try {
        const a = now();
        for (const s of seqs) await batch.admit(s);
        const b = now();
        let steps = 0;
        while (batch.size > 0) {
          await batch.step();
          steps++;
        }
        return { prefill: b - a, decode: now() - b, steps };
      } finally {
        batch.dispose();
      }
    };
    for (let i = 0; i < (o.warmup ?? 1); i++) await once(Math.min(4, newTokens));
    const fusedBefore = blockRunsSoFar();
    const r = await once(newTokens);
    const fusedBlocks = blockRunsSoFar() - fusedBefore;
    const engine = engineInfo();
    return {
      model: o.model ?? 'default',
      backend: currentBackend(),
      threads: engine.kernels.active ? engine.kernels.threads : 1,
      fma: engine.kernels.fma,
      fusedBlocks,
      engine,
      nLayer: gpt.config.nLayer,
      nHead: gpt.config.nHead,
      nEmbd: gpt.config.nEmbd,
      vocabSize: V,
      promptTokens,
      newTokens,
      batch: B,
      loadSeconds,
      timeToFirstTokenSeconds: r.prefill / B,
      prefillTokensPerSecond: (B * promptTokens) / r.prefill,
      decodeTokensPerSecond: r.steps ? (B * r.steps) / r.decode : 0,
      decodeMsPerStep: r.steps ? (r.decode / r.steps) * 1000 : 0,
      peakRssBytes: process.resourceUsage().maxRSS * 1024,
      numTensors: tf.memory().numTensors,
    };
  } finally {
    gpt.dispose();
  }
}
