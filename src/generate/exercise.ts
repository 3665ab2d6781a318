/**
 * `gpt2Generate`: the exercise's `gpt2_generate(token_ids, wte, wpe, layers, ln_f_g, ln_f_b,
 * n_tokens, temperature)` on tf ops. Logits come back to JS each step; temperature, softmax and
 * the draw happen here in float64, as `np.random.choice(len(p), p=p)` does.
 */
import * as tf from '../tf';
import { GPT2Error } from '../errors';
import { BackendName, setBackend } from '../backend';
import { ArrayInput, SeedLayer, SeedParams, seedLogits, toTensor } from '../model/seed';
import { MT19937, Rng, choice, unseeded } from './rng';
import { argmax, assertFiniteLogits, softmaxInPlace, temperature } from './sampling';

export interface GPT2GenerateOptions {
  /** Makes the draw deterministic (MT19937 seeded like `np.random.seed(seed)`). */
  seed?: number;
  /** 'numpy' (the default when seeded): NumPy's legacy stream, so ids equal the NumPy original's. */
  rng?: 'numpy' | Rng;
  /**
   * tfjs backend to run on. Default: the one already set, or (as a first call in a fresh app) the
   * library's default, 'wasm', started here.
   */
  backend?: BackendName;
  /** Stops between tokens: the call rejects with ABORTED and frees what it made. */
  signal?: AbortSignal;
}

/** Lets timers and I/O run between tokens, so a long generation never starves the event loop. */
function yieldToEventLoop(): Promise<void> {
  return new Promise((resolve) => (typeof setImmediate === 'function' ? setImmediate(resolve) : setTimeout(resolve, 0)));
}

/** Whether some tfjs backend is already running (a first call in a fresh app has none). */
function hasBackend(): boolean {
  return Object.keys(tf.engine().registry).length > 0;
}

/** softmax(logits / temperature) in float64, as the NumPy original computes it. */
export function softmax64(logits: ArrayLike<number>, t: number): Float64Array {
  const z = Float64Array.from(logits);
  temperature(t)(z, []);
  return softmaxInPlace(z);
}

/** Every layer's arrays must fit n_embd = d, so a wrong shape is a typed error and not a tf shape error mid-step. */
function checkShapes(p: SeedParams, d: number): void {
  const want = (t: tf.Tensor, shape: (number | null)[], what: string): number[] => {
    if (t.shape.length !== shape.length || shape.some((s, i) => s !== null && s !== t.shape[i])) {
      throw new GPT2Error('BAD_INPUT', `${what} has shape [${t.shape}], expected [${shape.map((s) => s ?? 'any')}] (n_embd ${d})`);
    }
    return t.shape;
  };
  want(p.lnF[0], [d], 'ln_f_g');
  want(p.lnF[1], [d], 'ln_f_b');
  p.layers.forEach((l, i) => {
    const [wq, wk, wv, wo] = l.attnWeights;
    const dk = want(wq, [d, null], `layers[${i}].Wq`)[1];
    want(wk, [d, dk], `layers[${i}].Wk`);
    const dv = want(wv, [d, null], `layers[${i}].Wv`)[1];
    want(wo, [dv, d], `layers[${i}].Wo`);
    want(l.attnBiases[0], [dk], `layers[${i}].bq`);
    want(l.attnBiases[1], [dk], `layers[${i}].bk`);
    want(l.attnBiases[2], [dv], `layers[${i}].bv`);
    want(l.attnBiases[3], [d], `layers[${i}].bo`);
    const f = want(l.ffnWeights[0], [d, null], `layers[${i}].W1`)[1];
    want(l.ffnWeights[1], [f], `layers[${i}].b1`);
    want(l.ffnWeights[2], [f, d], `layers[${i}].W2`);
    want(l.ffnWeights[3], [d], `layers[${i}].b2`);
    for (const [j, t] of [...l.ln1, ...l.ln2].entries()) want(t, [d], `layers[${i}].ln${j < 2 ? 1 : 2}[${j % 2}]`);
  });
}

export async function gpt2Generate(
  tokenIds: number[],
  wte: ArrayInput,
  wpe: ArrayInput,
  layers: SeedLayer[],
  lnFG: ArrayInput,
  lnFB: ArrayInput,
  nTokens = 10,
  temperature = 1.0,
  options: GPT2GenerateOptions = {},
): Promise<number[]> {
  if (!Number.isInteger(nTokens) || nTokens < 0) throw new GPT2Error('BAD_OPTION', `nTokens must be a non-negative integer, got ${nTokens}`);
  if (typeof temperature !== 'number' || !(temperature >= 0) || !Number.isFinite(temperature)) {
    throw new GPT2Error('BAD_OPTION', `temperature must be a finite number ≥ 0 (0 = greedy), got ${temperature}`);
  }
  if (!Array.isArray(tokenIds) || tokenIds.length === 0) throw new GPT2Error('BAD_INPUT', 'tokenIds must be a non-empty array');
  if (options === null || typeof options !== 'object') throw new GPT2Error('BAD_OPTION', 'options must be an object');
  if (options.rng !== undefined && options.rng !== 'numpy' && typeof (options.rng as Rng).random !== 'function') {
    throw new GPT2Error('BAD_OPTION', "options.rng must be 'numpy' or an object with a random() method");
  }
  if (!Array.isArray(layers)) throw new GPT2Error('BAD_INPUT', 'layers must be an array of layer objects');
  const { signal } = options;
  if (signal !== undefined && (signal === null || typeof signal.aborted !== 'boolean')) throw new GPT2Error('BAD_OPTION', 'options.signal must be an AbortSignal');
  if (options.backend !== undefined) await setBackend(options.backend);
  else if (!hasBackend()) await setBackend();
  const aborted = (): GPT2Error => new GPT2Error('ABORTED', `gpt2Generate was aborted after ${ids.length - tokenIds.length} of ${nTokens} tokens`);
  const ids = tokenIds.slice();
  let rng: Rng;
  if (options.rng && options.rng !== 'numpy') rng = options.rng;
  else rng = options.seed !== undefined ? new MT19937(options.seed) : options.rng === 'numpy' ? new MT19937((Math.random() * 2 ** 32) >>> 0) : unseeded;

  const owned: tf.Tensor[] = [];
  try {
    const p: SeedParams = {
      wte: toTensor(wte, 'wte', 2, owned) as tf.Tensor2D,
      wpe: toTensor(wpe, 'wpe', 2, owned) as tf.Tensor2D,
      lnF: [toTensor(lnFG, 'ln_f_g', 1, owned) as tf.Tensor1D, toTensor(lnFB, 'ln_f_b', 1, owned) as tf.Tensor1D],
      layers: layers.map((l, i) => {
        const w = (a: ArrayInput, n: string, r: 1 | 2) => toTensor(a, `layers[${i}].${n}`, r, owned);
        if (!l || !Array.isArray(l.attnWeights) || !Array.isArray(l.attnBiases) || !Array.isArray(l.ffnWeights) || !Array.isArray(l.ln1) || !Array.isArray(l.ln2)) {
          throw new GPT2Error('BAD_INPUT', `layers[${i}] must have attnWeights, attnBiases, ffnWeights, ln1 and ln2`);
        }
        return {
          attnWeights: [w(l.attnWeights[0], 'Wq', 2), w(l.attnWeights[1], 'Wk', 2), w(l.attnWeights[2], 'Wv', 2), w(l.attnWeights[3], 'Wo', 2)],
          attnBiases: [w(l.attnBiases[0], 'bq', 1), w(l.attnBiases[1], 'bk', 1), w(l.attnBiases[2], 'bv', 1), w(l.attnBiases[3], 'bo', 1)],
          ffnWeights: [w(l.ffnWeights[0], 'W1', 2), w(l.ffnWeights[1], 'b1', 1), w(l.ffnWeights[2], 'W2', 2), w(l.ffnWeights[3], 'b2', 1)],
          ln1: [w(l.ln1[0], 'ln1.g', 1), w(l.ln1[1], 'ln1.b', 1)],
          ln2: [w(l.ln2[0], 'ln2.g', 1), w(l.ln2[1], 'ln2.b', 1)],
        } as SeedLayer<tf.Tensor>;
      }),
    };
    const [V, d] = p.wte.shape;
    if (p.wpe.shape[1] !== d) throw new GPT2Error('BAD_INPUT', `wpe is [${p.wpe.shape}] but wte is [${p.wte.shape}]: embedding sizes differ`);
    checkShapes(p, d);
    if (ids.length + nTokens > p.wpe.shape[0] + 1 && nTokens > 0) {
      throw new GPT2Error('CONTEXT_OVERFLOW', `${ids.length} prompt + ${nTokens} new tokens need ${ids.length + nTokens - 1} positions; wpe has ${p.wpe.shape[0]}`);
    }
    if (ids.length > p.wpe.shape[0]) throw new GPT2Error('CONTEXT_OVERFLOW', `prompt of ${ids.length} tokens is longer than wpe (${p.wpe.shape[0]} positions)`);
    for (const id of ids) {
      if (!Number.isInteger(id) || id < 0 || id >= V) throw new GPT2Error('BAD_INPUT', `token id ${id} is out of range [0, ${V - 1}]`);
    }
    for (let n = 0; n < nTokens; n++) {
      if (signal?.aborted) throw aborted();
      const t = seedLogits(ids, p);
      let logits: Float32Array;
      try {
        logits = (await t.data()) as Float32Array;
      } finally {
        t.dispose();
      }
      assertFiniteLogits(logits);
      ids.push(temperature === 0 ? argmax(logits) : choice(softmax64(logits, temperature), rng));
      await yieldToEventLoop();
    }
    if (signal?.aborted) throw aborted();
    return ids;
  } finally {
    for (const t of owned) t.dispose();
  }
}
