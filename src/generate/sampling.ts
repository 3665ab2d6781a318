/**
 * Logits processors on the final logits, in JS (float64), as small composable units. Order, as in
 * Hugging Face: repetition penalty → temperature → top-k → top-p → min-p → draw.
 * Filtering sets a logit to -Infinity; the draw is `np.random.choice` over softmax(logits).
 */
import { GPT2Error } from '../errors';
import { Rng, choice } from './rng';

export interface SamplingOptions {
  /** Softmax temperature; 0 means greedy (argmax). Default 1. */
  temperature?: number;
  /** Keep the k most likely tokens (0 = off). */
  topK?: number;
  /** Nucleus: keep the smallest set of most likely tokens whose probability reaches p (1 = off). */
  topP?: number;
  /** Keep tokens with probability ≥ minP × the top probability (0 = off). */
  minP?: number;
  /** > 1 discourages tokens already in the sequence (HF/CTRL rule: divide positive logits, multiply negative). */
  repetitionPenalty?: number;
}

export type Processor = (logits: Float64Array, context: readonly number[]) => void;

export function repetitionPenalty(penalty: number): Processor {
  return (z, context) => {
    const seen = new Set(context);
    for (const id of seen) if (id >= 0 && id < z.length) z[id] = z[id] > 0 ? z[id] / penalty : z[id] * penalty;
  };
}

export function temperature(t: number): Processor {
  return (z) => {
    for (let i = 0; i < z.length; i++) z[i] /= t;
  };
}

/** Indices sorted by logit descending; ties by index ascending (the reference sorts the same way). */
export function sortedDesc(z: Float64Array): Int32Array {
  const idx = new Int32Array(z.length);
  for (let i = 0; i < z.length; i++) idx[i] = i;
  return idx.sort((a, b) => z[b] - z[a] || a - b);
}

/** The k-th largest value of `z` (1-based), by quickselect on a copy: O(n), no full sort. */
export function kthLargest(z: ArrayLike<number>, k: number): number {
  const a = Float64Array.from(z);
  let lo = 0;
  let hi = a.length - 1;
  const want = k - 1; // index in descending order
  while (lo < hi) {
    const pivot = a[(lo + hi) >>> 1];
    let i = lo;
    let j = hi;
    while (i <= j) {
      while (a[i] > pivot) i++;
      while (a[j] < pivot) j--;
      if (i <= j) {
        const t = a[i];
        a[i] = a[j];
        a[j] = t;
        i++;
        j--;
      }
    }
    if (want <= j) hi = j;
    else if (want >= i) lo = i;
    else break;
  }
  return a[want];
}

/** Indices of the largest values, best first (ties by index), among those ≥ a threshold: a partial sort. */
function topIndices(z: ArrayLike<number>, threshold: number): number[] {
  const idx: number[] = [];
  for (let i = 0; i < z.length; i++) if (z[i] >= threshold) idx.push(i);
  return idx.sort((a, b) => z[b] - z[a] || a - b);
}

export function topK(k: number): Processor {
  return (z) => {
    if (k <= 0 || k >= z.length) return;
    // The k-th largest value; everything strictly below it goes (ties at the boundary stay, as HF).
    const kth = kthLargest(z, k);
    for (let i = 0; i < z.length; i++) if (z[i] < kth) z[i] = -Infinity;
  };
}

export function softmaxInPlace(z: Float64Array): Float64Array {
  let max = -Infinity;
  for (let i = 0; i < z.length; i++) if (z[i] > max) max = z[i];
  let sum = 0;
  for (let i = 0; i < z.length; i++) {
    z[i] = Math.exp(z[i] - max);
    sum += z[i];
  }
  for (let i = 0; i < z.length; i++) z[i] /= sum;
  return z;
}

export function topP(p: number): Processor {
  return (z) => {
    if (p >= 1) return;
    const probs = softmaxInPlace(Float64Array.from(z));
    let top = 0;
    for (let i = 0; i < probs.length; i++) if (probs[i] > top) top = probs[i];
    // Sort only the candidates above a threshold, lowering it until they hold mass p: everything
    // below the threshold would sort after them anyway, so the kept set equals a full sort's.
    for (let threshold = top / 16; ; threshold /= 16) {
      const order = threshold > 1e-300 ? topIndices(probs, threshold) : Array.from(sortedDesc(probs));
      let cum = 0;
      let i = 0;
      for (; i < order.length; i++) {
        if (i > 0 && cum >= p) break;
        cum += probs[order[i]];
      }
      if (i === order.length && cum < p && order.length < probs.length) continue; // need more candidates
      const keep = new Uint8Array(z.length);
      for (let j = 0; j < i; j++) keep[order[j]] = 1;
      for (let j = 0; j < z.length; j++) if (!keep[j]) z[j] = -Infinity;
      return;
    }
  };
}

export function minP(m: number): Processor {
  return (z) => {
    if (m <= 0) return;
    const probs = softmaxInPlace(Float64Array.from(z));
    let top = 0;
    for (let i = 0; i < probs.length; i++) if (probs[i] > top) top = probs[i];
    for (let i = 0; i < z.length; i++) if (probs[i] < m * top) z[i] = -Infinity;
  };
}

export function argmax(z: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < z.length; i++) if (z[i] > z[best]) best = i;
  return best;
}

/** Validates sampling options; throws GPT2Error('BAD_OPTION') naming the bad one. */
export function checkSamplingOptions(o: SamplingOptions): Required<SamplingOptions> {
  const num = (name: keyof SamplingOptions, v: unknown, ok: (x: number) => boolean, rule: string, dflt: number): number => {
    if (v === undefined) return dflt;
    if (typeof v !== 'number' || !Number.isFinite(v) || !ok(v)) throw new GPT2Error('BAD_OPTION', `${name} must be ${rule}, got ${JSON.stringify(v)}`);
    return v;
  };
  return {
    temperature: num('temperature', o.temperature, (x) => x >= 0, 'a number ≥ 0 (0 = greedy)', 1),
    topK: num('topK', o.topK, (x) => Number.isInteger(x) && x >= 0, 'an integer ≥ 0 (0 = off)', 0),
    topP: num('topP', o.topP, (x) => x > 0 && x <= 1, 'in (0, 1] (1 = off)', 1),
    minP: num('minP', o.minP, (x) => x >= 0 && x <= 1, 'in [0, 1] (0 = off)', 0),
    repetitionPenalty: num('repetitionPenalty', o.repetitionPenalty, (x) => x > 0, 'a number > 0 (1 = off)', 1),
  };
}

/** A configured sampler: processors in order, then a greedy pick or a seeded draw. */
/**
 * Sampling on a NaN or an infinite logit would silently pick token 0 (every comparison with NaN is
 * false), so non-finite raw logits are a NON_FINITE error: the weights hold NaN/Inf or overflowed.
 * One pass over the vocabulary per token (~30 µs for 50257 logits).
 */
export function assertFiniteLogits(logits: ArrayLike<number>): void {
  for (let i = 0; i < logits.length; i++) {
    const v = logits[i];
    if (v - v !== 0) {
      throw new GPT2Error(
        'NON_FINITE',
        `the model produced a non-finite logit (${v} for token id ${i}): its weights hold NaN/Infinity or overflowed. Check them with \`gpt2-tfjs check --model DIR\` or loadModel(..., { validate: true })`,
      );
    }
  }
}

export class Sampler {
  private readonly processors: Processor[] = [];
  private readonly greedy: boolean;
  constructor(opts: SamplingOptions, private readonly rng: Rng, vocabLimit?: number) {
    const o = checkSamplingOptions(opts);
    if (vocabLimit !== undefined) this.processors.push((z) => z.fill(-Infinity, vocabLimit));
    if (o.repetitionPenalty !== 1) this.processors.push(repetitionPenalty(o.repetitionPenalty));
    this.greedy = o.temperature === 0;
    if (this.greedy) return; // filters cannot change the argmax
    if (o.temperature !== 1) this.processors.push(temperature(o.temperature));
    if (o.topK > 0) this.processors.push(topK(o.topK));
    if (o.topP < 1) this.processors.push(topP(o.topP));
    if (o.minP > 0) this.processors.push(minP(o.minP));
  }

  /** Picks the next token from raw logits; `context` is every token so far (prompt included). */
  sample(logits: ArrayLike<number>, context: readonly number[]): number {
    assertFiniteLogits(logits);
    if (this.greedy && this.processors.length === 0) return argmax(logits); // no float64 copy on the plain greedy path
    const z = Float64Array.from(logits);
    for (const p of this.processors) p(z, context);
    if (this.greedy) return argmax(z);
    return choice(softmaxInPlace(z), this.rng);
  }
}

/** log-softmax of the raw logits (the model's own distribution, before any processor). */
export function logSoftmax(logits: ArrayLike<number>): Float64Array {
  const z = Float64Array.from(logits);
  let max = -Infinity;
  for (let i = 0; i < z.length; i++) if (z[i] > max) max = z[i];
  let sum = 0;
  for (let i = 0; i < z.length; i++) sum += Math.exp(z[i] - max);
  const lse = Math.log(sum) + max;
  for (let i = 0; i < z.length; i++) z[i] -= lse;
  return z;
}

export interface TokenLogprob {
  token: number;
  logprob: number;
}

/** The chosen token's log-probability and the top-n alternatives, from the raw logits. */
export function tokenLogprobs(logits: ArrayLike<number>, chosen: number, n: number): { logprob: number; top: TokenLogprob[] } {
  assertFiniteLogits(logits);
  const lp = logSoftmax(logits);
  const top: TokenLogprob[] = [];
  if (n > 0) {
    const order = topIndices(lp, kthLargest(lp, Math.min(n, lp.length)));
    for (let i = 0; i < Math.min(n, order.length); i++) top.push({ token: order[i], logprob: lp[order[i]] });
  }
  return { logprob: lp[chosen], top };
}
