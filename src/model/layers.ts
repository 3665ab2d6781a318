/**
 * The transformer math, as pure functions of tf ops (picoGPT style). Shapes use
 * N = B*T rows, d = n_embd, H = n_head, hd = d / H, Tk = cached + new key positions.
 */
import * as tf from '../tf';
import { Activation } from './config';
import { BlockParams, Linear, Norm } from './params';
import { kernelAttend, kernelLayerNorm, kernelLinear, wasmKernelsActive, writeCacheRows } from './wasm/kernels';

/**
 * Additive attention mask value. Finite even where WebGL textures are float16 (max 65504), so
 * `score + MASK` never overflows to -inf and a fully masked row softmaxes to finite values.
 * exp(-3e4 + s) underflows to exactly 0 in float32 for any realistic score s.
 */
export const MASK_NEG = -3e4;

export function layerNorm(x: tf.Tensor2D, p: Norm, eps: number): tf.Tensor2D {
  const fused = kernelLayerNorm(x, p.g, p.b, eps); // wasm: one pass per row
  if (fused) return fused;
  const xc = tf.sub(x, tf.mean(x, -1, true)); // [N, d], centred
  const variance = tf.mean(tf.square(xc), -1, true); // [N, 1], biased as torch
  return tf.add(tf.mul(tf.mul(xc, tf.rsqrt(tf.add(variance, eps))), p.g), p.b) as tf.Tensor2D; // [N, d]
}

export function linear(x: tf.Tensor2D, p: Linear): tf.Tensor2D {
  return kernelLinear(x, p.w, p.b, 'none') ?? (tf.fused.matMul({ a: x, b: p.w, bias: p.b }) as tf.Tensor2D); // [N, in] -> [N, out]
}

/** x @ w without a bias (the output head). */
export function project(x: tf.Tensor2D, w: tf.Tensor2D): tf.Tensor2D {
  return kernelLinear(x, w, null, 'none') ?? tf.matMul(x, w); // [N, in] -> [N, out]
}

/** gelu_new = 0.5 x (1 + tanh(√(2/π)(x + 0.044715 x³))), written as x·σ(2·√(2/π)(x + 0.044715 x³)): same function, fewer ops. */
export function geluNew(x: tf.Tensor): tf.Tensor {
  const c = 2 * Math.sqrt(2 / Math.PI);
  return tf.mul(x, tf.sigmoid(tf.mul(x, tf.add(tf.mul(tf.square(x), 0.044715 * c), c)))); // elementwise
}

export function activate(x: tf.Tensor2D, act: Activation): tf.Tensor2D {
  if (act === 'relu') return tf.relu(x);
  if (act === 'gelu') return tf.mul(tf.mul(x, tf.add(tf.erf(tf.mul(x, Math.SQRT1_2)), 1)), 0.5); // exact erf form
  return geluNew(x) as tf.Tensor2D;
}

export function mlp(x: tf.Tensor2D, p: BlockParams, act: Activation): tf.Tensor2D {
  const fused = act === 'gelu' ? null : kernelLinear(x, p.c_fc.w, p.c_fc.b, act); // wasm: activation fused into the matMul
  const h = fused ?? activate(linear(x, p.c_fc), act); // [N, d] -> [N, n_inner]
  return linear(h, p.mlp_c_proj); // [N, n_inner] -> [N, d]
}

/** What attention needs to know about the step besides x: batch layout, heads and the mask. */
export interface AttnContext {
  batch: number; // B
  steps: number; // T new positions per row
  past: number; // positions already in the cache (its buffers may hold more, unused, positions)
  nHead: number; // H
  /**
   * tf-op path: additive mask [B, T, Tk] when T > 1 (causal + padding), [B, Tk, 1] when T == 1 (padding
   * only; null when no row is padded). Null on the wasm-kernel path, which reads `padMask` instead.
   */
  mask: tf.Tensor3D | null;
  /** wasm-kernel path: padding only, [B, Tk] additive; null when no row is padded (the kernel applies causality itself). */
  padMask: tf.Tensor2D | null;
}

export interface LayerKV {
  k: tf.Tensor3D; // [B, cap, d]: the first `past` positions are keys; the rest is room to grow
  v: tf.Tensor3D; // [B, cap, d]
}

/** Positions a cache buffer grows by when a decode step finds it full (one copy per this many steps). */
export const KV_GROW = 128;

/** The first `n` positions of a cache buffer [B, cap, d] -> [B, n, d]. */
export function cachePrefix(t: tf.Tensor3D, n: number): tf.Tensor3D {
  return t.shape[1] === n ? t : tf.slice(t, [0, 0, 0], [t.shape[0], n, t.shape[2]]);
}

/** A buffer holding `buf`'s first `len` positions with room for `n` more: `buf` itself when it has room. */
function withRoom(buf: tf.Tensor3D, len: number, n: number): tf.Tensor3D {
  if (buf.shape[1] >= len + n) return buf;
  return tf.pad(cachePrefix(buf, len), [[0, 0], [0, n + KV_GROW], [0, 0]]); // [B, len, d] -> [B, len + n + KV_GROW, d]
}

/**
 * Causal multi-head self-attention on the fused c_attn. Returns the block output and the layer's
 * keys/values including the new positions (the caller keeps them as the cache).
 */
export function attention(x: tf.Tensor2D, p: BlockParams, past: LayerKV | null, ctx: AttnContext): { out: tf.Tensor2D; kv: LayerKV } {
  const { batch: B, steps: T, nHead: H } = ctx;
  const d = x.shape[1];
  const hd = d / H;
  const [q, k, v] = tf.split(linear(x, p.c_attn), 3, 1) as tf.Tensor2D[]; // [N, d] -> [N, 3d] -> 3 × [N, d]
  const kNew = tf.reshape(k, [B, T, d]) as tf.Tensor3D;
  const vNew = tf.reshape(v, [B, T, d]) as tf.Tensor3D;
  const scale = 1 / Math.sqrt(hd);
  if (wasmKernelsActive()) {
    // wasm: the new keys/values are written into the cache buffers in place (no per-step copy of the
    // whole cache), and one kernel does scores, causal softmax and the weighted sum for every head.
    const kBuf = past ? withRoom(past.k, ctx.past, T) : kNew; // [B, cap, d]
    const vBuf = past ? withRoom(past.v, ctx.past, T) : vNew; // [B, cap, d]
    if (past) {
      writeCacheRows(kBuf, kNew, ctx.past);
      writeCacheRows(vBuf, vNew, ctx.past);
    }
    const a = kernelAttend(q, kBuf, vBuf, B, T, ctx.past, ctx.padMask, H, scale) as tf.Tensor2D; // [N, d]
    return { out: linear(a, p.c_proj), kv: { k: kBuf, v: vBuf } };
  }
  const kAll = past ? tf.concat([cachePrefix(past.k, ctx.past), kNew], 1) : kNew; // [B, Tk, d]
  const vAll = past ? tf.concat([cachePrefix(past.v, ctx.past), vNew], 1) : vNew; // [B, Tk, d]
  const Tk = kAll.shape[1];
  const qs = tf.mul(q, scale) as tf.Tensor2D; // [N, d], scaled once here instead of per score

  let a: tf.Tensor2D;
  if (T === 1) {
    // Decode: one query per row. Elementwise multiply-and-sum beats H tiny matMuls (op overhead dominates).
    const scores = tf.sum(tf.mul(tf.reshape(qs, [B, 1, H, hd]), tf.reshape(kAll, [B, Tk, H, hd])), -1); // [B, Tk, H]
    const probs = tf.softmax(tf.transpose(ctx.mask ? tf.add(scores, ctx.mask) : scores, [0, 2, 1])); // [B, H, Tk]
    const w = tf.reshape(tf.transpose(probs, [0, 2, 1]), [B, Tk, H, 1]); // [B, Tk, H, 1]
    a = tf.reshape(tf.sum(tf.mul(w, tf.reshape(vAll, [B, Tk, H, hd])), 1), [B, d]); // [B, H, hd] -> [B, d]
  } else {
    // Prefill: per row and head, plain 2-D matMuls. On wasm the batched rank-3 matMul and the
    // transposed-B matMul are ~10x slower and per-head column slices are slow, so each row is laid
    // out head-major once ([H, T, hd], K as [H, hd, Tk]) and split into heads with one unstack.
    const rows: tf.Tensor2D[] = [];
    for (let b = 0; b < B; b++) {
      const rowOf = (t: tf.Tensor, n: number) => tf.reshape(B === 1 ? t : tf.slice(t, [b, 0, 0], [1, n, d]), [n, H, hd]); // [n, H, hd]
      const qh = tf.unstack(tf.transpose(tf.reshape(B === 1 ? qs : tf.slice(qs, [b * T, 0], [T, d]), [T, H, hd]), [1, 0, 2])); // H × [T, hd]
      const kh = tf.unstack(tf.transpose(rowOf(kAll, Tk), [1, 2, 0])); // H × [hd, Tk]
      const vh = tf.unstack(tf.transpose(rowOf(vAll, Tk), [1, 0, 2])); // H × [Tk, hd]
      const mask = ctx.mask as tf.Tensor3D; // always present when T > 1 (causal)
      const mb = tf.reshape(B === 1 ? mask : tf.slice(mask, [b, 0, 0], [1, T, Tk]), [T, Tk]); // [T, Tk]
      const heads: tf.Tensor2D[] = [];
      for (let h = 0; h < H; h++) {
        const probs = tf.softmax(tf.add(tf.matMul(qh[h] as tf.Tensor2D, kh[h] as tf.Tensor2D), mb)); // [T, hd] @ [hd, Tk] -> [T, Tk]
        heads.push(tf.matMul(probs, vh[h] as tf.Tensor2D)); // [T, Tk] @ [Tk, hd] -> [T, hd]
      }
      rows.push(tf.concat(heads, 1)); // H × [T, hd] -> [T, d]
    }
    a = rows.length === 1 ? rows[0] : tf.concat(rows, 0); // [N, d]
  }
  return { out: linear(a, p.c_proj), kv: { k: kAll, v: vAll } }; // [N, d]
}

/** Pre-LN transformer block: x + attn(ln_1(x)), then + mlp(ln_2(x)). */
export function block(x: tf.Tensor2D, p: BlockParams, past: LayerKV | null, ctx: AttnContext, eps: number, act: Activation): { x: tf.Tensor2D; kv: LayerKV } {
  const { out, kv } = attention(layerNorm(x, p.ln_1, eps), p, past, ctx); // [N, d]
  const x1 = tf.add(x, out) as tf.Tensor2D; // [N, d]
  return { x: tf.add(x1, mlp(layerNorm(x1, p.ln_2, eps), p, act)) as tf.Tensor2D, kv }; // [N, d]
}
