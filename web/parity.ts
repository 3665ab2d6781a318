/**
 * Test and benchmark harness for real browsers (web/parity.html). It loads models over HTTP with
 * the public API and exposes `window.__gpt2test` for playwright's page.evaluate; it returns plain
 * numbers and leaves every assertion to test/browser/browser.test.ts.
 */
import * as tf from '@tensorflow/tfjs-core';
import { BackendName, EngineInfo, GPT2, GenerateOptions, engineInfo, loadModel, setBackend } from '../src/index';
import { blockRunsSoFar, setWasmKernelsDisabled } from '../src/model/wasm/instance';

interface TinyFixture {
  fullLogits: { file: string; ids: number[]; shape: [number, number] };
  cases: { ids: number[]; columns: number[]; logits: number[][]; argmax: number[]; top2Margin: number[]; logsumexp: number[] }[];
  greedy: { prompt: number[]; newTokens: number; ids: number[] }[];
}

export interface EnvReport {
  backend: string;
  /** What ran the model: on wasm our kernels must be active (a silent fallback to tf ops is a 2-4x slowdown). */
  engine: EngineInfo;
  crossOriginIsolated: boolean;
  hardwareConcurrency: number;
  /** webgl: whether ops render to float32 textures (false on float16-only devices). */
  webglRenderFloat32?: boolean;
  userAgent: string;
}

export interface ParityReport extends EnvReport {
  loadMs: number;
  /** max |logit − reference| over the 8 × 50257 logits of fullLogits. */
  fullMaxDiff: number;
  caseColumnMaxDiff: number;
  caseLogsumexpMaxDiff: number;
  /** Rows whose argmax differs from the reference, with the reference's top-2 margin. */
  argmaxMismatches: { case: number; t: number; want: number; got: number; margin: number }[];
  /** viaForward (re-running the whole sequence per token) only when asked: slow on SwiftShader. */
  greedy: { want: number[]; viaForward: number[] | null; viaGenerate: number[] }[];
  /** Blocks that ran as one kernel (GPT2BlockStep) during the greedy generations: > 0 on wasm. */
  fusedBlockRuns: number;
  tensorsBefore: number;
  tensorsAfter: number;
  ms: number;
}

export interface MemorySample {
  numTensors: number;
  numBytes: number;
  numBytesInGPU: number | null;
}

export interface MemoryReport extends EnvReport {
  calls: number;
  afterLoad: MemorySample;
  /** After one warm-up generate call: the baseline the 20 calls are compared with. */
  baseline: MemorySample;
  perCall: MemorySample[];
  afterAbort: MemorySample;
  afterDispose: MemorySample;
}

/** The browser's `gpt2-tfjs bench`: the same field names as BenchResult (src/bench.ts), where they apply. */
export interface BenchReport extends EnvReport {
  model: string;
  /** Kernel threads used (wasm; 1 elsewhere), and whether the fused multiply-add build ran. */
  threads: number;
  fma: boolean;
  /** Blocks that ran as one kernel (GPT2BlockStep) in the timed runs; 0 = every block op by op. */
  fusedBlocks: number;
  nLayer: number;
  nHead: number;
  nEmbd: number;
  vocabSize: number;
  params: number;
  loadSeconds: number;
  promptTokens: number;
  newTokens: number;
  repeats: number;
  /** Medians over repeats; prefill = prompt tokens / time to first token. */
  timeToFirstTokenSeconds: number;
  prefillTokensPerSecond: number;
  decodeTokensPerSecond: number;
  decodeMsPerStep: number;
  numTensors: number;
}

function mem(): MemorySample {
  const m = tf.memory() as tf.MemoryInfo & { numBytesInGPU?: number };
  return { numTensors: m.numTensors, numBytes: m.numBytes, numBytesInGPU: typeof m.numBytesInGPU === 'number' ? m.numBytesInGPU : null };
}

function env(): EnvReport {
  const backend = tf.getBackend();
  const r: EnvReport = { backend, engine: engineInfo(), crossOriginIsolated: self.crossOriginIsolated === true, hardwareConcurrency: navigator.hardwareConcurrency || 1, userAgent: navigator.userAgent };
  if (backend === 'webgl') r.webglRenderFloat32 = tf.env().getBool('WEBGL_RENDER_FLOAT32_ENABLED');
  return r;
}

const base = (p: string): string => new URL(p, location.href).href;

async function load(backend: BackendName, url: string, threads?: number): Promise<GPT2> {
  if (backend === 'wasm') await setBackend('wasm', { wasmPaths: base('/web/dist/'), threads });
  return loadModel(url, { backend, threads });
}

function argmax(a: ArrayLike<number>, from: number, to: number): number {
  let best = from;
  for (let i = from + 1; i < to; i++) if (a[i] > a[best]) best = i;
  return best - from;
}

function logsumexp(a: Float32Array): number {
  let max = -Infinity;
  for (const v of a) max = Math.max(max, v);
  let s = 0;
  for (const v of a) s += Math.exp(v - max);
  return Math.log(s) + max;
}

async function fetchFixture(): Promise<{ fx: TinyFixture; full: Float32Array }> {
  const fx = (await (await fetch(base('/test/fixtures/tiny.json'))).json()) as TinyFixture;
  const full = new Float32Array(await (await fetch(base(`/test/fixtures/${fx.fullLogits.file}`))).arrayBuffer());
  return { fx, full };
}

/**
 * Logits and greedy ids of weights/tiny-random against the NumPy fixtures (as test/model.parity.test.ts
 * does in Node). Greedy ids come from generate() (prefill + KV-cached decode); with `viaForward` also
 * from one full forward per token, which costs a new set of shaders per length on the GPU backends.
 */
async function parity(backend: BackendName, options: { viaForward?: boolean; kernels?: boolean } = {}): Promise<ParityReport> {
  // wasm: `kernels: false` runs the plain tf-op engine (the kernels' own reference) in this browser
  setWasmKernelsDisabled(options.kernels === false);
  try {
    return await parityRun(backend, options);
  } finally {
    setWasmKernelsDisabled(false);
  }
}

async function parityRun(backend: BackendName, options: { viaForward?: boolean }): Promise<ParityReport> {
  const t0 = performance.now();
  const { fx, full } = await fetchFixture();
  const model = await load(backend, base('/weights/tiny-random/'));
  const loadMs = performance.now() - t0;
  const tensorsBefore = tf.memory().numTensors;
  try {
    const V = model.config.vocabSize;
    const got = await model.forward(fx.fullLogits.ids);
    let fullMaxDiff = got.length === full.length ? 0 : Infinity;
    for (let i = 0; i < full.length; i++) fullMaxDiff = Math.max(fullMaxDiff, Math.abs(got[i] - full[i]));

    let caseColumnMaxDiff = 0;
    let caseLogsumexpMaxDiff = 0;
    const argmaxMismatches: ParityReport['argmaxMismatches'] = [];
    for (const [ci, c] of fx.cases.entries()) {
      const z = await model.forward(c.ids);
      c.logits.forEach((row, t) => {
        c.columns.forEach((col, j) => (caseColumnMaxDiff = Math.max(caseColumnMaxDiff, Math.abs(z[t * V + col] - row[j]))));
        caseLogsumexpMaxDiff = Math.max(caseLogsumexpMaxDiff, Math.abs(logsumexp(z.subarray(t * V, (t + 1) * V)) - c.logsumexp[t]));
        const a = argmax(z, t * V, (t + 1) * V);
        if (a !== c.argmax[t]) argmaxMismatches.push({ case: ci, t, want: c.argmax[t], got: a, margin: c.top2Margin[t] });
      });
    }

    const greedy: ParityReport['greedy'] = [];
    const fusedBefore = blockRunsSoFar();
    for (const g of fx.greedy) {
      let viaForward: number[] | null = null;
      if (options.viaForward) {
        viaForward = g.prompt.slice();
        for (let n = 0; n < g.newTokens; n++) {
          const z = await model.forward(viaForward);
          viaForward.push(argmax(z, (viaForward.length - 1) * V, viaForward.length * V));
        }
      }
      const r = await model.generate(g.prompt, { maxNewTokens: g.newTokens, temperature: 0, eosTokenId: null });
      greedy.push({ want: g.ids, viaForward, viaGenerate: [...g.prompt, ...r.tokens] });
    }
    return {
      ...env(),
      loadMs,
      fullMaxDiff,
      caseColumnMaxDiff,
      caseLogsumexpMaxDiff,
      argmaxMismatches,
      greedy,
      fusedBlockRuns: blockRunsSoFar() - fusedBefore,
      tensorsBefore,
      tensorsAfter: tf.memory().numTensors,
      ms: performance.now() - t0,
    };
  } finally {
    model.dispose();
  }
}

/** Tensor and GPU-memory counts across `calls` generate calls, one aborted stream and dispose. */
async function memory(backend: BackendName, calls = 20, newTokens = 4): Promise<MemoryReport> {
  const model = await load(backend, base('/weights/tiny-random/'));
  const afterLoad = mem();
  const prompt = [464, 2068, 7586, 21831, 18045, 625, 262];
  const opts = (i: number): GenerateOptions => ({ maxNewTokens: newTokens, temperature: i % 2 ? 0 : 0.9, topK: 40, topP: 0.95, seed: i, eosTokenId: null });
  try {
    await model.generate(prompt, opts(0));
    const baseline = mem();
    const perCall: MemorySample[] = [];
    for (let i = 0; i < calls; i++) {
      // Vary the prompt length so the cache and mask shapes differ between calls.
      await model.generate(prompt.slice(0, 1 + (i % prompt.length)), opts(i));
      perCall.push(mem());
    }
    const ctl = new AbortController();
    let n = 0;
    for await (const chunk of model.stream(prompt, { ...opts(1), maxNewTokens: 20, signal: ctl.signal })) {
      if (chunk.token >= 0 && ++n === 3) ctl.abort();
    }
    const afterAbort = mem();
    model.dispose();
    return { ...env(), calls, afterLoad, baseline, perCall, afterAbort, afterDispose: mem() };
  } catch (e) {
    model.dispose();
    throw e;
  }
}

function median(xs: number[]): number {
  const s = xs.slice().sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

/** Prefill and decode speed through the public stream API (greedy, eos off) after one warm-up run. */
async function bench(backend: BackendName, modelUrl: string, promptTokens = 32, newTokens = 32, repeats = 3, threads?: number): Promise<BenchReport> {
  const t0 = performance.now();
  const model = await load(backend, base(modelUrl), threads);
  const loadSeconds = (performance.now() - t0) / 1000;
  try {
    const c = model.config;
    const prompt = Array.from({ length: promptTokens }, (_, i) => (i * 7919 + 13) % Math.min(c.vocabSize, 50000));
    const opts: GenerateOptions = { maxNewTokens: newTokens, temperature: 0, eosTokenId: null };
    const run = async (): Promise<{ ttft: number; decode: number }> => {
      const start = performance.now();
      let first = 0;
      let n = 0;
      for await (const chunk of model.stream(prompt, opts)) {
        if (chunk.token < 0) continue;
        if (++n === 1) first = performance.now();
      }
      const end = performance.now();
      return { ttft: first - start, decode: ((n - 1) * 1000) / (end - first) };
    };
    await run(); // shader compilation and texture pools on the GPU backends
    const runs: { ttft: number; decode: number }[] = [];
    const fusedBefore = blockRunsSoFar();
    for (let i = 0; i < repeats; i++) runs.push(await run());
    const fusedBlocks = blockRunsSoFar() - fusedBefore;
    const ttft = median(runs.map((r) => r.ttft));
    const decode = median(runs.map((r) => r.decode));
    const params = c.vocabSize * c.nEmbd + c.nPositions * c.nEmbd + c.nLayer * (12 * c.nEmbd * c.nEmbd + 13 * c.nEmbd);
    const e = env();
    return {
      ...e,
      model: modelUrl,
      threads: e.engine.kernels.active ? e.engine.kernels.threads : 1,
      fma: e.engine.kernels.fma,
      fusedBlocks,
      nLayer: c.nLayer,
      nHead: c.nHead,
      nEmbd: c.nEmbd,
      vocabSize: c.vocabSize,
      params,
      loadSeconds,
      promptTokens,
      newTokens,
      repeats,
      timeToFirstTokenSeconds: ttft / 1000,
      prefillTokensPerSecond: (promptTokens * 1000) / ttft,
      decodeTokensPerSecond: decode,
      decodeMsPerStep: 1000 / decode,
      numTensors: tf.memory().numTensors,
    };
  } finally {
    model.dispose();
  }
}

export interface Q8Report extends EnvReport {
  /** How the model holds its weights here, the reference it is compared with, and the download size. */
  weights: { format: string; held: string };
  reference: 'w8a8' | 'dequant';
  downloadBytes: number;
  columnMaxDiff: number;
  argmaxMismatches: { case: number; t: number; want: number; got: number; margin: number }[];
  greedy: { want: number[]; got: number[] }[];
  tensorsBefore: number;
  tensorsAfter: number;
}

interface Q8Logits {
  logits: number[][];
  argmax: number[];
  top2Margin: number[];
}
interface Q8Fixture {
  cases: { ids: number[]; columns: number[]; dequant: Q8Logits; w8a8: Q8Logits }[];
  greedy: { prompt: number[]; newTokens: number; dequant: number[]; w8a8: number[] }[];
}

/**
 * weights/tiny-random-q8 (int8) loaded from its URL, against test/fixtures/tiny_q8.json: the int8 kernels'
 * arithmetic where they run (wasm), the dequantized weights elsewhere.
 */
async function q8parity(backend: BackendName): Promise<Q8Report> {
  const fx = (await (await fetch(base('/test/fixtures/tiny_q8.json'))).json()) as Q8Fixture;
  if (backend === 'wasm') await setBackend('wasm', { wasmPaths: base('/web/dist/') });
  let downloadBytes = 0;
  const model = await loadModel(base('/weights/tiny-random-q8/'), { backend, onProgress: (p) => (downloadBytes = p.totalBytes) });
  const tensorsBefore = tf.memory().numTensors;
  try {
    const reference = model.model.weights.held === 'int8' ? 'w8a8' : 'dequant';
    const V = model.config.vocabSize;
    let columnMaxDiff = 0;
    const argmaxMismatches: Q8Report['argmaxMismatches'] = [];
    for (const [ci, c] of fx.cases.entries()) {
      const z = await model.forward(c.ids);
      const want = c[reference];
      want.logits.forEach((row, t) => {
        c.columns.forEach((col, j) => (columnMaxDiff = Math.max(columnMaxDiff, Math.abs(z[t * V + col] - row[j]))));
        const a = argmax(z, t * V, (t + 1) * V);
        if (a !== want.argmax[t]) argmaxMismatches.push({ case: ci, t, want: want.argmax[t], got: a, margin: want.top2Margin[t] });
      });
    }
    const greedy: Q8Report['greedy'] = [];
    for (const g of fx.greedy) {
      const r = await model.generate(g.prompt, { maxNewTokens: g.newTokens, temperature: 0, eosTokenId: null });
      greedy.push({ want: g[reference], got: [...g.prompt, ...r.tokens] });
    }
    return { ...env(), weights: model.model.weights, reference, downloadBytes, columnMaxDiff, argmaxMismatches, greedy, tensorsBefore, tensorsAfter: tf.memory().numTensors };
  } finally {
    model.dispose();
  }
}

export interface Harness {
  parity: typeof parity;
  q8parity: typeof q8parity;
  memory: typeof memory;
  bench: typeof bench;
  /** tf.memory(), for ad-hoc checks. */
  memoryInfo: () => MemorySample;
}

declare global {
  interface Window {
    __gpt2test?: Harness;
  }
}

window.__gpt2test = { parity, q8parity, memory, bench, memoryInfo: mem };
document.body.dataset.ready = '1';
