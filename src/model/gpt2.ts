/**
 * GPT2Model: params + config, and the forward step. One tf.tidy per step; the KV cache tensors
 * leave the tidy as its return value and are disposed explicitly when replaced or released.
 */
import * as tf from '../tf';
import { GPT2Error } from '../errors';
import { GPT2Config } from './config';
import { AttnContext, KV_GROW, LayerKV, MASK_NEG, block, cachePrefix, layerNorm, project } from './layers';
import { Params, disposeParams } from './params';
import { ensureKernelThread, kernelCacheRows, moveCacheRows, wasmKernelsActive } from './wasm/kernels';

/**
 * Keys/values of every layer for B rows that share one time axis. Rows shorter than the longest
 * are left-padded: `pad[b]` leading positions of row b are masked out and positions restart at 0
 * after them, so a padded row computes exactly what it would alone.
 */
/** Extra rows a merged cache buffer keeps, so the next joining rows are copied in place. */
const SPARE_ROWS = 3;

export class KVCache {
  layers: LayerKV[] | null = null;
  /** Positions held per row, padding included. */
  length = 0;
  constructor(readonly pad: number[] = [0]) {}
  get batch(): number {
    return this.pad.length;
  }
  /** Replaces the cached tensors (disposing the old ones, except buffers the new layers reuse). */
  update(layers: LayerKV[], length: number): void {
    const kept = new Set(layers.flatMap((l) => [l.k, l.v]));
    for (const l of this.layers ?? []) {
      if (!kept.has(l.k)) l.k.dispose();
      if (!kept.has(l.v)) l.v.dispose();
    }
    this.layers = layers;
    this.length = length;
  }
  private disposeTensors(): void {
    for (const l of this.layers ?? []) {
      l.k.dispose();
      l.v.dispose();
    }
    this.layers = null;
  }
  dispose(): void {
    this.disposeTensors();
    this.length = 0;
    this.pad.length = 0;
  }

  /**
   * Moves the rows of `other` into this cache (continuous batching: a sequence prefilled alone joins
   * the running batch). The shorter side is left-padded with masked positions; `other` ends empty.
   */
  append(other: KVCache): void {
    if (!other.layers) throw new GPT2Error('BAD_INPUT', 'cannot append an empty KV cache');
    if (!this.layers || this.pad.length === 0) {
      this.layers = other.layers;
      this.length = other.length;
      this.pad.splice(0, this.pad.length, ...other.pad);
      other.layers = null;
      other.dispose();
      return;
    }
    const T = Math.max(this.length, other.length);
    const padA = T - this.length;
    const padB = T - other.length;
    const mine = this.layers;
    const theirs = other.layers;
    const nRows = this.pad.length + other.pad.length;
    // wasm, the joining rows are no longer than ours and our buffers have spare rows: copy them in place
    if (padA === 0 && mine[0].k.shape[0] >= nRows && mine[0].k.shape[1] >= T) {
      const to = other.pad.map((_, j) => this.pad.length + j);
      const from = other.pad.map((_, j) => j);
      const moved = mine.every((l, i) => moveCacheRows(l.k, theirs[i].k, from, to, 0, other.length, padB) && moveCacheRows(l.v, theirs[i].v, from, to, 0, other.length, padB));
      if (moved) {
        this.pad.push(...other.pad.map((p) => p + padB));
        other.dispose();
        return;
      }
    }
    const [lenA, lenB] = [this.length, other.length];
    const nA = this.pad.length;
    const rowsAB = [...this.pad.keys(), ...other.pad.map((_, j) => nA + j)];
    const start = rowsAB.map(() => 0);
    const lens = rowsAB.map((r) => (r < nA ? lenA : lenB));
    const dsts = rowsAB.map((r) => (r < nA ? padA : padB));
    const merged = tf.tidy(() =>
      mine.flatMap((l, i) => {
        // wasm: one contiguous copy per row into a buffer with room to grow
        // (with a few spare rows, so later joins can be copied in place)
        const fk = kernelCacheRows(l.k, theirs[i].k, rowsAB, start, lens, dsts, T + KV_GROW, nRows + SPARE_ROWS, nA);
        const fv = fk && kernelCacheRows(l.v, theirs[i].v, rowsAB, start, lens, dsts, T + KV_GROW, nRows + SPARE_ROWS, nA);
        if (fk && fv) return [fk, fv];
        const grow = (t: tf.Tensor3D, len: number, n: number): tf.Tensor3D => (n ? tf.pad(cachePrefix(t, len), [[0, 0], [n, 0], [0, 0]]) : cachePrefix(t, len)); // [B, Tc, d] -> [B, T, d]
        return [tf.concat([grow(l.k, lenA, padA), grow(theirs[i].k, lenB, padB)], 0), tf.concat([grow(l.v, lenA, padA), grow(theirs[i].v, lenB, padB)], 0)];
      }),
    ) as tf.Tensor3D[];
    const pad = [...this.pad.map((p) => p + padA), ...other.pad.map((p) => p + padB)];
    this.update(pairs(merged), T);
    this.pad.splice(0, this.pad.length, ...pad);
    other.dispose();
  }

  /** Keeps only `rows` (in that order), then drops leading positions that are padding in every row. */
  keepRows(rows: number[]): void {
    if (!this.layers) return;
    if (rows.length === 0) {
      this.dispose();
      return;
    }
    const pad = rows.map((r) => this.pad[r]);
    const trim = Math.min(...pad);
    const T = this.length - trim;
    const layers = this.layers;
    const len = this.length;
    const idx = rows.length === this.pad.length && rows.every((r, i) => r === i) ? null : rows;
    if (!idx && trim === 0) return;
    // wasm: rows kept in order move down (and left by `trim`) inside the same buffers
    const ascending = rows.every((r, i) => i === 0 || r > rows[i - 1]);
    const to = rows.map((_, i) => i);
    if (ascending && layers.every((l) => moveCacheRows(l.k, l.k, rows, to, trim, T, 0) && moveCacheRows(l.v, l.v, rows, to, trim, T, 0))) {
      this.length = T;
      this.pad.splice(0, this.pad.length, ...pad.map((p) => p - trim));
      return;
    }
    const kept = tf.tidy(() => {
      const sel = idx ? tf.tensor1d(idx, 'int32') : null;
      const cut = (t: tf.Tensor3D): tf.Tensor3D => {
        const g = sel ? tf.gather(cachePrefix(t, len), sel) : cachePrefix(t, len); // [B, Tc, d] -> [B', Tc, d]
        return trim ? tf.slice(g, [0, trim, 0], [rows.length, T, g.shape[2]]) : g; // -> [B', Tc - trim, d]
      };
      return layers.flatMap((l) => [cut(l.k), cut(l.v)]);
    }) as tf.Tensor3D[];
    this.update(pairs(kept), T);
    this.pad.splice(0, this.pad.length, ...pad.map((p) => p - trim));
  }
}

function pairs(flat: tf.Tensor3D[]): LayerKV[] {
  const out: LayerKV[] = [];
  for (let i = 0; i < flat.length; i += 2) out.push({ k: flat[i], v: flat[i + 1] });
  return out;
}

export interface StepOptions {
  /** Only the last position of each row needs logits (generation); skips the head for the rest. */
  lastOnly?: boolean;
}

export class GPT2Model {
  private disposed = false;
  constructor(readonly config: GPT2Config, private readonly params: Params) {}

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

  /** Embeddings and the blocks (call inside a tidy): token + position embedding, then every layer. */
  private hidden(ids: Int32Array, pos: Int32Array, ctx: AttnContext, cache: KVCache | null): { x: tf.Tensor2D; kvs: LayerKV[] } {
    const c = this.config;
    const p = this.params;
    const idx = tf.tensor1d(ids, 'int32');
    const tokEmb = p.wte ? tf.gather(p.wte, idx) : tf.transpose(tf.gather(p.headT, idx, 1)); // [N] -> [N, d]
    let x = tf.add(tokEmb, tf.gather(p.wpe, tf.tensor1d(pos, 'int32'))) as tf.Tensor2D; // [N, d]
    const kvs: LayerKV[] = [];
    for (let l = 0; l < c.nLayer; l++) {
      const r = block(x, p.h[l], cache?.layers?.[l] ?? null, ctx, c.layerNormEpsilon, c.activation); // [N, d]
      x = r.x;
      kvs.push(r.kv);
    }
    return { x, kvs };
  }

  /** Additive padding mask [B, Tk] (null when no row is padded). */
  private padMask(B: number, Tk: number, pad: number[]): tf.Tensor2D | null {
    if (pad.every((p) => p === 0)) return null;
    const m = new Float32Array(B * Tk);
    for (let b = 0; b < B; b++) for (let j = 0; j < pad[b]; j++) m[b * Tk + j] = MASK_NEG;
    return tf.tensor2d(m, [B, Tk]);
  }

  /** Additive mask: [B, T, Tk] (causal + padding) for T > 1, [B, Tk, 1] (padding) for T == 1. */
  private mask(B: number, T: number, past: number, pad: number[]): tf.Tensor3D | null {
    const Tk = past + T;
    if (T === 1) {
      if (pad.every((p) => p === 0)) return null; // one new position, nothing padded: nothing to mask
      const m = new Float32Array(B * Tk);
      for (let b = 0; b < B; b++) for (let j = 0; j < pad[b]; j++) m[b * Tk + j] = MASK_NEG;
      return tf.tensor3d(m, [B, Tk, 1]);
    }
    const m = new Float32Array(B * T * Tk);
    for (let b = 0; b < B; b++) {
      for (let i = 0; i < T; i++) {
        const row = (b * T + i) * Tk;
        for (let j = 0; j < Tk; j++) if (j > past + i || j < pad[b]) m[row + j] = MASK_NEG;
      }
    }
    return tf.tensor3d(m, [B, T, Tk]);
  }

  /**
   * Feeds `ids` (B rows × T new tokens) after what `cache` holds, updates the cache, and returns the
   * logits row-major: [B, V] when `lastOnly`, else [B, T, V]. With `cache` null nothing is kept.
   */
  async step(ids: number[][], cache: KVCache | null, opts: StepOptions = {}): Promise<Float32Array> {
    this.check(ids, cache);
    await ensureKernelThread();
    const c = this.config;
    const p = this.params;
    const B = ids.length;
    const T = ids[0].length;
    const past = cache?.length ?? 0;
    const pad = cache?.pad ?? [0];
    const flat = new Int32Array(B * T);
    const pos = new Int32Array(B * T);
    for (let b = 0; b < B; b++) {
      for (let i = 0; i < T; i++) {
        flat[b * T + i] = ids[b][i];
        pos[b * T + i] = Math.max(0, past + i - pad[b]);
      }
    }
    const kept = tf.tidy(() => {
      const kernels = wasmKernelsActive(); // the kernel path reads only the padding mask, the tf-op path only the full one
      const ctx: AttnContext = { batch: B, steps: T, past, nHead: c.nHead, mask: kernels ? null : this.mask(B, T, past, pad), padMask: kernels ? this.padMask(B, past + T, pad) : null };
      const h = this.hidden(flat, pos, ctx, cache);
      const kvs = h.kvs;
      let x = h.x; // [N, d]
      if (opts.lastOnly && T > 1) {
        const last = Int32Array.from({ length: B }, (_, b) => b * T + T - 1);
        x = tf.gather(x, tf.tensor1d(last, 'int32')); // [N, d] -> [B, d]
      }
      const out = project(layerNorm(x, p.ln_f, c.layerNormEpsilon), p.headT); // [rows, d] -> [rows, V]
      // tidy keeps what it returns: the logits and, when caching, every layer's keys/values.
      return [out, ...(cache ? kvs.flatMap((l) => [l.k, l.v]) : [])];
    });
    const logits = kept[0];
    if (cache) {
      const kv: LayerKV[] = [];
      for (let l = 0; l < c.nLayer; l++) kv.push({ k: kept[1 + 2 * l] as tf.Tensor3D, v: kept[2 + 2 * l] as tf.Tensor3D });
      cache.update(kv, past + T);
    }
    try {
      return (await logits.data()) as Float32Array;
    } finally {
      logits.dispose();
    }
  }

  /**
   * Per-token negative log-likelihood of one sequence: entry t is -log p(ids[t+1] | ids[..t]),
   * [ids.length - 1] values. Log-softmax and the gather run on the device, so only T floats come back.
   */
  async tokenNll(ids: number[]): Promise<Float32Array> {
    if (!Array.isArray(ids) || ids.length < 2) throw new GPT2Error('BAD_INPUT', 'scoring needs at least 2 tokens');
    this.check([ids], null);
    const c = this.config;
    const p = this.params;
    const T = ids.length;
    const nll = tf.tidy(() => {
      const ctx: AttnContext = { batch: 1, steps: T - 1, past: 0, nHead: c.nHead, mask: wasmKernelsActive() ? null : this.mask(1, T - 1, 0, [0]), padMask: null };
      const positions = Int32Array.from({ length: T - 1 }, (_, t) => t);
      const { x } = this.hidden(Int32Array.from(ids.slice(0, T - 1)), positions, ctx, null); // [T-1, d]
      const logp = tf.logSoftmax(project(layerNorm(x, p.ln_f, c.layerNormEpsilon), p.headT)); // [T-1, V]
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
