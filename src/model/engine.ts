/**
 * The engine seam: HOW a backend runs the heavy ops, behind one interface chosen once per step
 * (engines.ts). layers.ts says WHAT is computed and never asks which engine runs it.
 *
 *   tfEngine     plain tf ops: every backend (cpu, wasm, webgl, webgpu, tensorflow), and the
 *                reference the kernels are tested against
 *   wasmEngine   our SIMD kernels on the wasm backend (wasm/engine.ts): fused linear + activation,
 *                one-pass layer norm, one attention kernel, KV cache buffers written in place
 *
 * Shapes: N = B*T rows, d = n_embd, Tk = past + T key positions, cap >= Tk a cache buffer's room.
 */
import * as tf from '../tf';
import { Activation } from './config';
import { activate } from './layers';
import { BlockParams, PackedWeight, Uploader, Weight, hostUpload } from './params';

/**
 * Additive attention mask value. Finite even where WebGL textures are float16 (max 65504), so
 * `score + MASK` never overflows to -inf and a fully masked row softmaxes to finite values.
 * exp(-3e4 + s) underflows to exactly 0 in float32 for any realistic score s.
 */
export const MASK_NEG = -3e4;

/** One layer's keys and values, [B, cap, d]: the first `length` positions are in use, the rest is room. */
export interface LayerKV {
  k: tf.Tensor3D;
  v: tf.Tensor3D;
}

/** Positions a cache buffer grows by when a decode step finds it full (one copy per this many steps). */
export const KV_GROW = 128;

/** The first `n` positions of a cache buffer [B, cap, d] -> [B, n, d]. */
export function cachePrefix(t: tf.Tensor3D, n: number, rows = t.shape[0]): tf.Tensor3D {
  // rows: a buffer built by the kernel engine may hold spare rows beyond those in use
  return t.shape[1] === n && t.shape[0] === rows ? t : tf.slice(t, [0, 0, 0], [rows, n, t.shape[2]]);
}

/**
 * Which key positions each query may see: causal (query i of a row sees positions [0, past + i]) and
 * not padding (the first pad[b] positions of row b are masked out). This is the one representation;
 * each engine derives the tensor it needs once per step (lazily, inside the step's tidy).
 */
export class AttnMask {
  private full: tf.Tensor3D | null | undefined;
  private padOnly: tf.Tensor2D | null | undefined;
  constructor(readonly batch: number, readonly steps: number, readonly past: number, readonly pad: readonly number[]) {}

  get padded(): boolean {
    return this.pad.some((p) => p > 0);
  }

  /** Frees the derived tensors (kept out of the per-block tidies that first asked for them). */
  dispose(): void {
    this.full?.dispose();
    this.padOnly?.dispose();
    this.full = this.padOnly = undefined;
  }

  /** Additive causal + padding mask: [B, T, Tk] when T > 1; [B, Tk, 1] (padding only) when T == 1, null if nothing is padded. */
  additive(): tf.Tensor3D | null {
    if (this.full !== undefined) return this.full;
    const { batch: B, steps: T, past, pad } = this;
    const Tk = past + T;
    if (T === 1) {
      const p = this.padding();
      return (this.full = p && tf.keep(tf.reshape(p, [B, Tk, 1]) as tf.Tensor3D));
    }
    const m = new Float32Array(B * T * Tk);
    for (let b = 0; b < B; b++) {
      for (let i = 0; i < T; i++) {
        const row = (b * T + i) * Tk;
        for (let j = 0; j < Tk; j++) if (j > past + i || j < pad[b]) m[row + j] = MASK_NEG;
      }
    }
    return (this.full = tf.keep(tf.tensor3d(m, [B, T, Tk])));
  }

  /** Additive padding-only mask [B, Tk] (causality left to the consumer), null if nothing is padded. */
  padding(): tf.Tensor2D | null {
    if (this.padOnly !== undefined) return this.padOnly;
    if (!this.padded) return (this.padOnly = null);
    const { batch: B, pad } = this;
    const Tk = this.past + this.steps;
    const m = new Float32Array(B * Tk);
    for (let b = 0; b < B; b++) for (let j = 0; j < pad[b]; j++) m[b * Tk + j] = MASK_NEG;
    return (this.padOnly = tf.keep(tf.tensor2d(m, [B, Tk])));
  }
}

/** What attention needs to know about the step besides x: batch layout, heads and the mask. */
export interface AttnContext {
  batch: number; // B
  steps: number; // T new positions per row
  past: number; // positions already in the cache (its buffers may hold more, unused, positions)
  nHead: number; // H
  mask: AttnMask;
}

/** Merging the rows of two caches: a's rows then b's, each side left-padded to the common length. */
export interface JoinPlan {
  rowsA: number; // rows of a in use (its buffers may hold spare rows)
  lenA: number; // positions in use in a
  padA: number; // positions of padding to put before a's
  rowsB: number;
  lenB: number;
  padB: number;
  length: number; // the merged length: lenA + padA = lenB + padB
}

/** How the KV cache buffers are written and rearranged. Results may be the input buffers, changed in place. */
export interface KVOps {
  /** This step's keys/values [B, T, d] after the first `past` positions of `prev` -> buffers holding past + T positions. */
  write(prev: LayerKV | null, k: tf.Tensor3D, v: tf.Tensor3D, past: number): LayerKV;
  /** a's rows then b's, padded per the plan -> buffers holding plan.length positions. */
  join(a: LayerKV, b: LayerKV, plan: JoinPlan): LayerKV;
  /** Only `rows` (in that order), without the first `trim` of the `length` positions in use. */
  keep(l: LayerKV, rows: number[], trim: number, length: number): LayerKV;
}

export interface Engine {
  readonly name: 'wasm-kernels' | 'tf-ops';
  /**
   * act(x @ w + b) (+ residual): [N, in] @ [in, out] -> [N, out]; b null = no bias; residual [N, out]
   * added last (the block's skip connection: the wasm kernels add it as they store). w float32 or int8 (q8).
   */
  linear(x: tf.Tensor2D, w: Weight, b: tf.Tensor1D | null, act?: Activation | 'none', residual?: tf.Tensor2D | null): tf.Tensor2D;
  /** x [N, parts·c] -> parts × [N, c], column blocks (q|k|v of c_attn). */
  split(x: tf.Tensor2D, parts: number): tf.Tensor2D[];
  /**
   * A new tensor of `shape` whose data `fill` writes (at load: transposed or packed weights). Where the
   * backend's memory is reachable the data is written there directly, with no host-side staging copy.
   */
  upload: Uploader;
  /**
   * A read buffer for the load, lent from the backend's own memory (null or absent: the loader keeps
   * its own host array). Freed by `dispose`, its room is reused by the generation's KV cache and
   * activations, where a host array would sit in the process until the garbage collector ran.
   */
  loadBuffer?(): LoadBuffer | null;
  /** Rows `ids` of the tied embedding, read from the head [d, vocab]: -> [N, d]. */
  embed(headT: Weight, ids: tf.Tensor1D): tf.Tensor2D;
  /**
   * A float32 tensor's values, copied to the host (the step's logits): into `into` when it is given
   * and large enough (the result is then a view of it), else into a new array.
   */
  read(t: tf.Tensor, into?: Float32Array): Promise<Float32Array>;
  /** (x - mean) / sqrt(var + eps) * g + b over the last axis (biased variance, as torch). */
  layerNorm(x: tf.Tensor2D, g: tf.Tensor1D, b: tf.Tensor1D, eps: number): tf.Tensor2D;
  /** Causal multi-head attention of q [N, d] against the first past + T positions of kv -> [N, d]. */
  attend(q: tf.Tensor2D, kv: LayerKV, ctx: AttnContext): tf.Tensor2D;
  readonly kv: KVOps;
  /**
   * A whole block as one fused kernel, where the engine has one for this step (the wasm kernels:
   * float32 weights, decode rows and prompt chunks of a bounded step); null = run the block op by op
   * (layers.ts block). It computes exactly what layers.ts block does (tests: the same bits), and returns
   * each part's keys/values as it would.
   */
  block?(x: tf.Tensor2D, p: BlockParams, parts: readonly { ctx: AttnContext; past: LayerKV | null }[], eps: number, act: Activation): { x: tf.Tensor2D; kvs: LayerKV[] } | null;
}

// ----------------------------------------------------------------------------- tf ops

const tfKV: KVOps = {
  write(prev, k, v, past) {
    if (!prev) return { k, v };
    const B = k.shape[0];
    return { k: tf.concat([cachePrefix(prev.k, past, B), k], 1), v: tf.concat([cachePrefix(prev.v, past, B), v], 1) }; // [B, past + T, d]
  },
  join(a, b, j) {
    const side = (t: tf.Tensor3D, rows: number, len: number, pad: number): tf.Tensor3D => {
      const used = cachePrefix(t, len, rows); // [rows, len, d]
      return pad ? tf.pad(used, [[0, 0], [pad, 0], [0, 0]]) : used; // -> [rows, length, d]
    };
    return {
      k: tf.concat([side(a.k, j.rowsA, j.lenA, j.padA), side(b.k, j.rowsB, j.lenB, j.padB)], 0), // [rowsA + rowsB, length, d]
      v: tf.concat([side(a.v, j.rowsA, j.lenA, j.padA), side(b.v, j.rowsB, j.lenB, j.padB)], 0),
    };
  },
  keep(l, rows, trim, length) {
    const all = rows.length === l.k.shape[0] && rows.every((r, i) => r === i);
    const sel = all ? null : tf.tensor1d(rows, 'int32');
    const cut = (t: tf.Tensor3D): tf.Tensor3D => {
      const g = sel ? tf.gather(cachePrefix(t, length), sel) : cachePrefix(t, length); // [B, Tc, d] -> [B', Tc, d]
      return trim ? tf.slice(g, [0, trim, 0], [rows.length, length - trim, g.shape[2]]) : g; // -> [B', Tc - trim, d]
    };
    return { k: cut(l.k), v: cut(l.v) };
  },
};

/** A weight as float32 [in, out]: a kernel-packed one is unpacked (int8: dequantized) once, on first use, and kept. */
export function floatWeight(w: Weight): tf.Tensor2D {
  return w instanceof PackedWeight ? w.float() : w;
}

/** See Engine.loadBuffer: `get(n)` is a view of at least n bytes, valid until the next get or dispose. */
export interface LoadBuffer {
  get(n: number): Uint8Array;
  dispose(): void;
}

export const tfEngine: Engine = {
  name: 'tf-ops',
  linear(x, w, b, act = 'none', residual = null) {
    const wf = floatWeight(w);
    const y = b ? (tf.fused.matMul({ a: x, b: wf, bias: b }) as tf.Tensor2D) : (tf.matMul(x, wf) as tf.Tensor2D); // [N, in] -> [N, out]
    const z = act === 'none' ? y : activate(y, act);
    return residual ? (tf.add(z, residual) as tf.Tensor2D) : z;
  },
  split(x, parts) {
    return tf.split(x, parts, 1) as tf.Tensor2D[];
  },
  upload: hostUpload,
  async read(t, into) {
    const data = (await t.data()) as Float32Array;
    if (!into || into.length < data.length) return data;
    const out = into.subarray(0, data.length);
    out.set(data);
    return out;
  },
  embed(headT, ids) {
    return tf.transpose(tf.gather(floatWeight(headT), ids, 1)); // [d, V] -> [d, N] -> [N, d]
  },
  layerNorm(x, g, b, eps) {
    const xc = tf.sub(x, tf.mean(x, -1, true)); // [N, d], centred
    const variance = tf.mean(tf.square(xc), -1, true); // [N, 1], biased as torch
    return tf.add(tf.mul(tf.mul(xc, tf.rsqrt(tf.add(variance, eps))), g), b) as tf.Tensor2D; // [N, d]
  },
  attend(q, kv, ctx) {
    const { batch: B, steps: T, past, nHead: H } = ctx;
    const d = q.shape[1];
    const hd = d / H;
    const Tk = past + T;
    const kAll = cachePrefix(kv.k, Tk, B); // [B, Tk, d]
    const vAll = cachePrefix(kv.v, Tk, B); // [B, Tk, d]
    const qs = tf.mul(q, 1 / Math.sqrt(hd)) as tf.Tensor2D; // [N, d], scaled once here instead of per score
    const mask = ctx.mask.additive();
    if (T === 1) {
      // Decode: one query per row. Elementwise multiply-and-sum beats H tiny matMuls (op overhead dominates).
      const scores = tf.sum(tf.mul(tf.reshape(qs, [B, 1, H, hd]), tf.reshape(kAll, [B, Tk, H, hd])), -1); // [B, Tk, H]
      const probs = tf.softmax(tf.transpose(mask ? tf.add(scores, mask) : scores, [0, 2, 1])); // [B, H, Tk]
      const w = tf.reshape(tf.transpose(probs, [0, 2, 1]), [B, Tk, H, 1]); // [B, Tk, H, 1]
      return tf.reshape(tf.sum(tf.mul(w, tf.reshape(vAll, [B, Tk, H, hd])), 1), [B, d]); // [B, H, hd] -> [B, d]
    }
    // Prefill: per row and head, plain 2-D matMuls. On wasm the batched rank-3 matMul and the
    // transposed-B matMul are ~10x slower and per-head column slices are slow, so each row is laid
    // out head-major once ([H, T, hd], K as [H, hd, Tk]) and split into heads with one unstack.
    const rows: tf.Tensor2D[] = [];
    for (let b = 0; b < B; b++) {
      const rowOf = (t: tf.Tensor, n: number) => tf.reshape(B === 1 ? t : tf.slice(t, [b, 0, 0], [1, n, d]), [n, H, hd]); // [n, H, hd]
      const qh = tf.unstack(tf.transpose(tf.reshape(B === 1 ? qs : tf.slice(qs, [b * T, 0], [T, d]), [T, H, hd]), [1, 0, 2])); // H × [T, hd]
      const kh = tf.unstack(tf.transpose(rowOf(kAll, Tk), [1, 2, 0])); // H × [hd, Tk]
      const vh = tf.unstack(tf.transpose(rowOf(vAll, Tk), [1, 0, 2])); // H × [Tk, hd]
      const m = mask as tf.Tensor3D; // always present when T > 1 (causal)
      const mb = tf.reshape(B === 1 ? m : tf.slice(m, [b, 0, 0], [1, T, Tk]), [T, Tk]); // [T, Tk]
      const heads: tf.Tensor2D[] = [];
      for (let h = 0; h < H; h++) {
        const probs = tf.softmax(tf.add(tf.matMul(qh[h] as tf.Tensor2D, kh[h] as tf.Tensor2D), mb)); // [T, hd] @ [hd, Tk] -> [T, Tk]
        heads.push(tf.matMul(probs, vh[h] as tf.Tensor2D)); // [T, Tk] @ [Tk, hd] -> [T, hd]
      }
      rows.push(tf.concat(heads, 1)); // H × [T, hd] -> [T, d]
    }
    return rows.length === 1 ? rows[0] : tf.concat(rows, 0); // [N, d]
  },
  kv: tfKV,
};
