/**
 * The exercise's simplified GPT-2, exactly: single-head attention on separate Wq/Wk/Wv/Wo, an
 * additive -1e10 causal mask, ReLU FFN, layer norm `(x - mean) / (std + eps) * g + b`, pre-LN
 * blocks, final LN, logits `x[-1] @ wte.T`. Every array may be nested numbers, {data, shape} or a tf.Tensor.
 */
import * as tf from '../tf';
import { GPT2Error } from '../errors';

export type ArrayInput = tf.Tensor | { data: Float32Array | number[]; shape: number[] } | number[] | number[][];

export interface SeedLayer<A = ArrayInput> {
  attnWeights: [A, A, A, A]; // Wq, Wk, Wv [d, d]; Wo [d, d]
  attnBiases: [A, A, A, A]; // bq, bk, bv, bo [d]
  ffnWeights: [A, A, A, A]; // W1 [d, f], b1 [f], W2 [f, d], b2 [d]
  ln1: [A, A]; // g, b [d]
  ln2: [A, A];
}

export interface SeedParams {
  wte: tf.Tensor2D; // [V, d]
  wpe: tf.Tensor2D; // [P, d]
  layers: SeedLayer<tf.Tensor>[];
  lnF: [tf.Tensor1D, tf.Tensor1D];
}

export const SEED_MASK = -1e10;
const EPS = 1e-5;

export function seedLayerNorm(x: tf.Tensor2D, g: tf.Tensor, b: tf.Tensor): tf.Tensor2D {
  const mean = tf.mean(x, -1, true); // [T, 1]
  const std = tf.sqrt(tf.mean(tf.square(tf.sub(x, mean)), -1, true)); // [T, 1], biased like np.std
  return tf.add(tf.mul(tf.div(tf.sub(x, mean), tf.add(std, EPS)), g), b) as tf.Tensor2D; // [T, d]
}

export function seedAttention(x: tf.Tensor2D, [wq, wk, wv, wo]: tf.Tensor[], [bq, bk, bv, bo]: tf.Tensor[]): tf.Tensor2D {
  const T = x.shape[0];
  const q = tf.add(tf.matMul(x, wq as tf.Tensor2D), bq) as tf.Tensor2D; // [T, d] -> [T, dk]
  const k = tf.add(tf.matMul(x, wk as tf.Tensor2D), bk) as tf.Tensor2D; // [T, d] -> [T, dk]
  const v = tf.add(tf.matMul(x, wv as tf.Tensor2D), bv) as tf.Tensor2D; // [T, d] -> [T, dv]
  const mask = tf.mul(tf.sub(1, tf.linalg.bandPart(tf.ones([T, T]), -1, 0)), SEED_MASK); // [T, T]: -1e10 above the diagonal
  const scores = tf.add(tf.div(tf.matMul(q, k, false, true), Math.sqrt(q.shape[1])), mask); // [T, T]
  return tf.add(tf.matMul(tf.matMul(tf.softmax(scores), v), wo as tf.Tensor2D), bo) as tf.Tensor2D; // [T, d]
}

export function seedFfn(x: tf.Tensor2D, [w1, b1, w2, b2]: tf.Tensor[]): tf.Tensor2D {
  const h = tf.relu(tf.add(tf.matMul(x, w1 as tf.Tensor2D), b1)) as tf.Tensor2D; // [T, d] -> [T, f]
  return tf.add(tf.matMul(h, w2 as tf.Tensor2D), b2) as tf.Tensor2D; // [T, f] -> [T, d]
}

export function seedBlock(x: tf.Tensor2D, l: SeedLayer<tf.Tensor>): tf.Tensor2D {
  const x1 = tf.add(x, seedAttention(seedLayerNorm(x, l.ln1[0], l.ln1[1]), l.attnWeights, l.attnBiases)) as tf.Tensor2D; // [T, d]
  return tf.add(x1, seedFfn(seedLayerNorm(x1, l.ln2[0], l.ln2[1]), l.ffnWeights)) as tf.Tensor2D; // [T, d]
}

/** Logits of the last position, [V], as a tensor (caller disposes). */
export function seedLogits(ids: number[], p: SeedParams): tf.Tensor1D {
  return tf.tidy(() => {
    const T = ids.length;
    let x = tf.add(tf.gather(p.wte, tf.tensor1d(ids, 'int32')), tf.slice(p.wpe, [0, 0], [T, p.wpe.shape[1]])) as tf.Tensor2D; // [T, d]
    for (const l of p.layers) x = seedBlock(x, l);
    x = seedLayerNorm(x, p.lnF[0], p.lnF[1]);
    return tf.reshape(tf.matMul(tf.slice(x, [T - 1, 0], [1, x.shape[1]]), p.wte, false, true), [-1]) as tf.Tensor1D; // [1, d] @ [d, V] -> [V]
  });
}

/** A description of the first element of a nested array that is not a number, or null. */
function firstNonNumber(a: unknown): string | null {
  if (typeof a === 'number' || ArrayBuffer.isView(a)) return null;
  if (!Array.isArray(a)) return `${typeof a} ${JSON.stringify(a)?.slice(0, 20)}`;
  for (const x of a) {
    const bad = firstNonNumber(x);
    if (bad !== null) return bad;
  }
  return null;
}

/** Turns one user array into a float32 tensor; `owned` collects what we created (to dispose). */
export function toTensor(a: ArrayInput, what: string, rank: 1 | 2, owned: tf.Tensor[]): tf.Tensor {
  let t: tf.Tensor;
  if (a instanceof tf.Tensor) {
    if (a.isDisposed) throw new GPT2Error('BAD_INPUT', `${what}: the tf.Tensor was disposed; pass a live tensor`);
    if (a.dtype !== 'float32') throw new GPT2Error('BAD_INPUT', `${what}: expected a float32 tensor, got ${a.dtype}`);
    t = a;
  } else if (Array.isArray(a)) {
    const bad = firstNonNumber(a);
    if (bad !== null) throw new GPT2Error('BAD_INPUT', `${what}: not a rectangular numeric array (found ${bad})`);
    try {
      t = tf.tensor(a as number[][], undefined, 'float32');
    } catch (e) {
      throw new GPT2Error('BAD_INPUT', `${what}: not a rectangular numeric array (${(e as Error).message})`);
    }
    owned.push(t);
  } else if (a && typeof a === 'object' && 'data' in a && 'shape' in a && Array.isArray(a.shape) && a.data && typeof a.data.length === 'number') {
    if (!a.shape.every((s) => Number.isSafeInteger(s) && s > 0)) throw new GPT2Error('BAD_INPUT', `${what}: shape [${a.shape}] must be positive integers`);
    const n = a.shape.reduce((x, y) => x * y, 1);
    if (a.data.length !== n) throw new GPT2Error('BAD_INPUT', `${what}: data has ${a.data.length} values but shape [${a.shape}] needs ${n}`);
    if (!(a.data instanceof Float32Array)) {
      const bad = firstNonNumber(a.data);
      if (bad !== null) throw new GPT2Error('BAD_INPUT', `${what}: data must be numbers (found ${bad})`);
    }
    t = tf.tensor(a.data, a.shape, 'float32');
    owned.push(t);
  } else {
    throw new GPT2Error('BAD_INPUT', `${what}: expected a nested number array, {data, shape} or a tf.Tensor`);
  }
  if (t.rank !== rank) throw new GPT2Error('BAD_INPUT', `${what}: expected rank ${rank}, got shape [${t.shape}]`);
  return t;
}
