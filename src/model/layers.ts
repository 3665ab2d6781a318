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

/** The feed-forward part, plus `residual` when given (added by the last projection). */
export function mlp(e: Engine, x: tf.Tensor2D, p: BlockParams, act: Activation, residual: tf.Tensor2D | null = null): tf.Tensor2D {
  const h = e.linear(x, p.mlp.c_fc.w, p.mlp.c_fc.b, act); // [N, d] -> [N, n_inner], activation fused where the engine can
  return e.linear(h, p.mlp.c_proj.w, p.mlp.c_proj.b, 'none', residual); // [N, n_inner] -> [N, d] (+ residual)
}

/** One part of a step: rows that share a KV cache (a running batch, or one prompt being prefilled). */
export interface AttnPart {
  ctx: AttnContext;
  past: LayerKV | null; // this part's cache for this layer
}

/**
 * Causal multi-head self-attention on the fused c_attn. x holds the rows of every part in order
 * (part i: B_i*T_i rows); the projections run once over all of them, and each part attends to its own
 * cache. Returns the block output (plus `residual` when given, added by the output projection) and each
 * part's keys/values including the new positions.
 */
export function attention(e: Engine, x: tf.Tensor2D, p: BlockParams, parts: AttnPart[], residual: tf.Tensor2D | null = null): { out: tf.Tensor2D; kvs: LayerKV[] } {
  const d = x.shape[1];
  const qkv = e.linear(x, p.attn.c_attn.w, p.attn.c_attn.b); // [N, d] -> [N, 3d]
  const [q, k, v] = e.split(qkv, 3); // -> 3 × [N, d]
  qkv.dispose(); // freed now, not at the end of the block: a long prefill's peak memory is one block's activations
  const outs: tf.Tensor2D[] = [];
  const kvs: LayerKV[] = [];
  let row = 0;
  for (const { ctx, past } of parts) {
    const { batch: B, steps: T } = ctx;
    const mine = (t: tf.Tensor2D) => (parts.length === 1 ? t : tf.slice(t, [row, 0], [B * T, d])); // this part's rows: [B*T, d]
    const kv = e.kv.write(past, tf.reshape(mine(k), [B, T, d]), tf.reshape(mine(v), [B, T, d]), ctx.past); // cache + new: [B, >= past + T, d]
    outs.push(e.attend(mine(q), kv, ctx)); // softmax(q k^T / sqrt(hd) + mask) v per head: [B*T, d]
    kvs.push(kv);
    row += B * T;
  }
  const a = outs.length === 1 ? outs[0] : (tf.concat(outs, 0) as tf.Tensor2D); // [N, d]
  return { out: e.linear(a, p.attn.c_proj.w, p.attn.c_proj.b, 'none', residual), kvs }; // [N, d]
}

/**
 * Pre-LN transformer block: x + attn(ln_1(x)), then + mlp(ln_2(x)). Each skip connection is handed to
 * the projection that ends its branch (the wasm kernels add it as they store the output: no separate
 * add, two tfjs ops fewer per block; the same float additions, so the same bits). An engine may run
 * the whole block as one kernel instead (Engine.block: the wasm kernels' block over a step's rows), computing the same.
 */
export function block(e: Engine, x: tf.Tensor2D, p: BlockParams, parts: AttnPart[], eps: number, act: Activation): { x: tf.Tensor2D; kvs: LayerKV[] } {
  const fused = e.block?.(x, p, parts, eps, act); // the engine's one-kernel block, where it has one
  if (fused) return fused;
  // Each branch in a tidy of its own, so its intermediates are freed before the next branch allocates.
  const [x1, ...kv] = tf.tidy(() => {
    const a = attention(e, layerNorm(e, x, p.ln_1, eps), p, parts, x); // x + attn(ln_1(x)): [N, d]
    return [a.out, ...a.kvs.flatMap((l) => [l.k, l.v])];
  }) as [tf.Tensor2D, ...tf.Tensor3D[]];
  const kvs = parts.map((_, i) => ({ k: kv[2 * i], v: kv[2 * i + 1] }));
  return { x: tf.tidy(() => mlp(e, layerNorm(e, x1, p.ln_2, eps), p, act, x1)), kvs }; // x1 + mlp(ln_2(x1)): [N, d]
}
