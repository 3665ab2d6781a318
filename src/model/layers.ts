/**
 * The transformer math, as pure functions of tf ops (picoGPT style). Shapes use
 * N = B*T rows, d = n_embd, H = n_head, hd = d / H, Tk = cached + new key positions.
 * `e` is the engine that runs the heavy ops (engine.ts: tf ops, or the wasm kernels): the math
 * here is the same whichever it is.
 */
import * as tf from '../tf';
import { Activation } from './config';
import type { AttnContext, Engine, LayerKV } from './engine';
import { BlockParams, Norm } from './params';

export function layerNorm(e: Engine, x: tf.Tensor2D, p: Norm, eps: number): tf.Tensor2D {
  return e.layerNorm(x, p.g, p.b, eps); // [N, d]: (x - mean) / sqrt(var + eps) * g + b
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

export function mlp(e: Engine, x: tf.Tensor2D, p: BlockParams, act: Activation): tf.Tensor2D {
  const h = e.linear(x, p.mlp.c_fc.w, p.mlp.c_fc.b, act); // [N, d] -> [N, n_inner], activation fused where the engine can
  return e.linear(h, p.mlp.c_proj.w, p.mlp.c_proj.b); // [N, n_inner] -> [N, d]
}

/**
 * Causal multi-head self-attention on the fused c_attn. Returns the block output and the layer's
 * keys/values including the new positions (the caller keeps them as the cache).
 */
export function attention(e: Engine, x: tf.Tensor2D, p: BlockParams, past: LayerKV | null, ctx: AttnContext): { out: tf.Tensor2D; kv: LayerKV } {
  const { batch: B, steps: T } = ctx;
  const d = x.shape[1];
  const [q, k, v] = tf.split(e.linear(x, p.attn.c_attn.w, p.attn.c_attn.b), 3, 1) as tf.Tensor2D[]; // [N, d] -> [N, 3d] -> 3 × [N, d]
  const kv = e.kv.write(past, tf.reshape(k, [B, T, d]), tf.reshape(v, [B, T, d]), ctx.past); // cache + new: [B, >= past + T, d]
  const a = e.attend(q, kv, ctx); // softmax(q k^T / sqrt(hd) + mask) v per head: [N, d]
  return { out: e.linear(a, p.attn.c_proj.w, p.attn.c_proj.b), kv }; // [N, d]
}

/** Pre-LN transformer block: x + attn(ln_1(x)), then + mlp(ln_2(x)). */
export function block(e: Engine, x: tf.Tensor2D, p: BlockParams, past: LayerKV | null, ctx: AttnContext, eps: number, act: Activation): { x: tf.Tensor2D; kv: LayerKV } {
  const { out, kv } = attention(e, layerNorm(e, x, p.ln_1, eps), p, past, ctx); // [N, d]
  const x1 = tf.add(x, out) as tf.Tensor2D; // [N, d]
  return { x: tf.add(x1, mlp(e, layerNorm(e, x1, p.ln_2, eps), p, act)) as tf.Tensor2D, kv }; // [N, d]
}
