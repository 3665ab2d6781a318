/**
 * GPT2Model: params + config, and the forward step. One tf.tidy per step; the KV cache tensors
 * leave the tidy as its return value and are disposed explicitly when replaced or released.
 */
import * as tf from '../tf';
import { GPT2Error } from '../errors';
import { GPT2Config } from './config';
import { AttnContext, AttnMask, Engine, LayerKV } from './engine';
import { currentEngine } from './engines';
import { KVCache } from './kvcache';
import { block, layerNorm } from './layers';
import { Params, disposeParams } from './params';
import { ensureKernelThread } from './wasm/instance';

export { KVCache } from './kvcache';

/** Rows sharing one KV cache in a multi-part step (see GPT2Model.stepParts). */
export interface StepPart {
  ids: number[][]; // B rows × T new tokens
  cache: KVCache | null;
}

export interface StepOptions {
  /** Only the last position of each row needs logits (generation); skips the head for the rest. */
  lastOnly?: boolean;
  /**
   * Logits go into this array when it holds them all (the results are then views of it, valid until
   * the caller reuses it): a generation loop that samples each step at once reuses one buffer instead
   * of leaving a ~200 KB array per row per step to the garbage collector.
   */
  into?: Float32Array;
}

export class GPT2Model {
  private disposed = false;
  constructor(readonly config: GPT2Config, private readonly params: Params) {}

  /** The checkpoint's weight format and how this model holds it (a q8 model without int8 kernels is dequantized at load). */
  get weights(): { format: 'float32' | 'q8'; held: 'float32' | 'int8' } {
    return { format: this.config.quantization ?? 'float32', held: this.params.held };
  }

  private check(ids: number[][], cache: KVCache | null): void {
    if (this.disposed) throw new GPT2Error('DISPOSED', 'this model has been disposed; load it again');
    const B = cache ? cache.batch : 1;
    if (ids.length !== B) throw new GPT2Error('BAD_INPUT', `expected ${B} row(s) of token ids, got ${ids.length}`);
    const T = ids[0]?.length ?? 0;
    if (T === 0) throw new GPT2Error('BAD_INPUT', 'token ids must not be empty');
    const V = this.config.vocabSize;
    for (const row of ids) {
      if (row.length !== T) throw new GPT2Error('BAD_INPUT', 'every row of a step must have the same length (left-pad shorter rows)');
      for (const id of row) {
        if (!Number.isInteger(id) || id < 0 || id >= V) {
          throw new GPT2Error('BAD_INPUT', `token id ${id} is out of range: ids must be integers in [0, ${V - 1}]`);
        }
      }
    }
    const total = (cache?.length ?? 0) + T;
    if (total > this.config.nPositions) {
      throw new GPT2Error('CONTEXT_OVERFLOW', `sequence of ${total} positions exceeds the model's context of ${this.config.nPositions} (n_positions)`);
    }
  }

  /**
   * Embeddings and the blocks (call inside a tidy): token + position embedding, then every layer.
   * `parts` split the rows of `ids` by cache (see AttnPart); returns each part's keys/values per layer.
   */
  private hidden(e: Engine, ids: Int32Array, pos: Int32Array, parts: { ctx: AttnContext; cache: KVCache | null }[]): { x: tf.Tensor2D; kvs: LayerKV[][] } {
    const c = this.config;
    const p = this.params;
    let x = tf.tidy(() => {
      const idx = tf.tensor1d(ids, 'int32');
      const tokEmb = p.wte ? tf.gather(p.wte, idx) : e.embed(p.headT, idx); // [N] -> [N, d]
      return tf.add(tokEmb, tf.gather(p.wpe, tf.tensor1d(pos, 'int32'))) as tf.Tensor2D; // [N, d]
    });
    const kvs: LayerKV[][] = parts.map(() => []);
    for (let l = 0; l < c.nLayer; l++) {
      // A tidy per block: its intermediates are freed before the next block runs, so a long prefill
      // holds one block's activations at a time, not every layer's (the wasm heap never shrinks).
      const prev = x;
      const out = tf.tidy(() => {
        const r = block(e, prev, p.h[l], parts.map(({ ctx, cache }) => ({ ctx, past: cache?.layers?.[l] ?? null })), c.layerNormEpsilon, c.activation); // [N, d]
        return [r.x, ...r.kvs.flatMap((kv) => [kv.k, kv.v])];
      });
      prev.dispose(); // each block's input is freed once the next has it (a long prefill holds one at a time)
      x = out[0] as tf.Tensor2D;
      parts.forEach((_, i) => kvs[i].push({ k: out[1 + 2 * i] as tf.Tensor3D, v: out[2 + 2 * i] as tf.Tensor3D }));
    }
    return { x, kvs };
  }

  /**
   * Feeds `ids` (B rows × T new tokens) after what `cache` holds, updates the cache, and returns the
   * logits row-major: [B, V] when `lastOnly`, else [B, T, V]. With `cache` null nothing is kept.
   */
  async step(ids: number[][], cache: KVCache | null, opts: StepOptions = {}): Promise<Float32Array> {
    return (await this.stepParts([{ ids, cache }], opts))[0];
  }

  /**
   * One forward pass over several parts, each with its own cache: e.g. a running batch's decode tokens
   * and a chunk of a joining prompt (chunked prefill). The weights are read once for all of them; each
   * part attends only to its own cache, so its logits are what `step` gives it alone. Returns each
   * part's logits as `step` would.
   */
  async stepParts(parts: StepPart[], opts: StepOptions = {}): Promise<Float32Array[]> {
    if (!Array.isArray(parts) || parts.length === 0) throw new GPT2Error('BAD_INPUT', 'a step needs at least one part');
    for (const { ids, cache } of parts) this.check(ids, cache);
    if (new Set(parts.map((pt) => pt.cache).filter((k) => k)).size !== parts.filter((pt) => pt.cache).length) {
      throw new GPT2Error('BAD_INPUT', 'each part of a step needs its own KV cache');
    }
    await ensureKernelThread();
    const c = this.config;
    const p = this.params;
    const N = parts.reduce((n, { ids }) => n + ids.length * ids[0].length, 0);
    const flat = new Int32Array(N);
    const pos = new Int32Array(N);
    const lastRows: number[] = [];
    let row = 0;
    const shapes = parts.map(({ ids, cache }) => {
      const B = ids.length;
      const T = ids[0].length;
      const past = cache?.length ?? 0;
      const pad = cache?.pad ?? [0];
      for (let b = 0; b < B; b++) {
        for (let i = 0; i < T; i++) {
          flat[row] = ids[b][i];
          pos[row] = Math.max(0, past + i - pad[b]);
          row++;
        }
        lastRows.push(row - 1);
      }
      return { B, T, past, pad };
    });
    const rowsOut = opts.lastOnly ? lastRows.length : N;
    const e = currentEngine(); // chosen once per step: the wasm kernels where they run, else tf ops
    const kept = tf.tidy(() => {
      const ctxs = shapes.map(({ B, T, past, pad }): AttnContext => ({ batch: B, steps: T, past, nHead: c.nHead, mask: new AttnMask(B, T, past, pad) }));
      let h: ReturnType<GPT2Model['hidden']>;
      try {
        h = this.hidden(e, flat, pos, parts.map((pt, i) => ({ ctx: ctxs[i], cache: pt.cache })));
      } finally {
        for (const ctx of ctxs) ctx.mask.dispose();
      }
      let x = h.x; // [N, d]
      if (opts.lastOnly && rowsOut < N) x = tf.gather(x, tf.tensor1d(Int32Array.from(lastRows), 'int32')); // [N, d] -> [rows, d]
      const out = e.linear(layerNorm(e, x, p.ln_f, c.layerNormEpsilon), p.headT, null); // [rows, d] -> [rows, V]
      // tidy keeps what it returns: the logits and, for each part with a cache, every layer's keys/values.
      return [out, ...parts.flatMap((pt, i) => (pt.cache ? h.kvs[i].flatMap((l) => [l.k, l.v]) : []))];
    });
    const logits = kept[0];
    let at = 1;
    parts.forEach(({ cache }, i) => {
      if (!cache) return;
      const kv: LayerKV[] = [];
      for (let l = 0; l < c.nLayer; l++, at += 2) kv.push({ k: kept[at] as tf.Tensor3D, v: kept[at + 1] as tf.Tensor3D });
      cache.update(kv, shapes[i].past + shapes[i].T);
    });
    let all: Float32Array;
    try {
      all = await e.read(logits, opts.into);
    } finally {
      logits.dispose();
    }
    const V = c.vocabSize;
    let from = 0;
    return shapes.map(({ B, T }) => {
      const n = (opts.lastOnly ? B : B * T) * V;
      const part = parts.length === 1 ? all : all.subarray(from, from + n);
      from += n;
      return part;
    });
  }

  /**
   * Per-token negative log-likelihood of one sequence: entry t is -log p(ids[t+1] | ids[..t]),
   * [ids.length - 1] values. Log-softmax and the gather run on the device, so only T floats come back.
   */
  async tokenNll(ids: number[]): Promise<Float32Array> {
    if (!Array.isArray(ids) || ids.length < 2) throw new GPT2Error('BAD_INPUT', 'scoring needs at least 2 tokens');
    this.check([ids], null);
    await ensureKernelThread(); // as step(): a worker that exited after an idle spell is restarted
    const c = this.config;
    const p = this.params;
    const T = ids.length;
    const nll = tf.tidy(() => {
      const e = currentEngine();
      const ctx: AttnContext = { batch: 1, steps: T - 1, past: 0, nHead: c.nHead, mask: new AttnMask(1, T - 1, 0, [0]) };
      const positions = Int32Array.from({ length: T - 1 }, (_, t) => t);
      let x: tf.Tensor2D;
      try {
        x = this.hidden(e, Int32Array.from(ids.slice(0, T - 1)), positions, [{ ctx, cache: null }]).x; // [T-1, d]
      } finally {
        ctx.mask.dispose();
      }
      const logp = tf.logSoftmax(e.linear(layerNorm(e, x, p.ln_f, c.layerNormEpsilon), p.headT, null)); // [T-1, V]
      const flat = Int32Array.from({ length: T - 1 }, (_, t) => t * c.vocabSize + ids[t + 1]);
      return tf.neg(tf.gather(tf.reshape(logp, [-1]), tf.tensor1d(flat, 'int32'))); // [T-1]
    });
    try {
      return (await nll.data()) as Float32Array;
    } finally {
      nll.dispose();
    }
  }

  /** Logits of every position of one sequence, row-major [ids.length, vocab_size] (no cache). */
  forward(ids: number[]): Promise<Float32Array> {
    if (!Array.isArray(ids)) throw new GPT2Error('BAD_INPUT', 'forward(ids) expects an array of token ids');
    return this.step([ids], null);
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    disposeParams(this.params);
  }
}
