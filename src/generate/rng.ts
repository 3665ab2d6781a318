/**
 * Seeded PRNGs. The one generator is MT19937 with NumPy's legacy seeding and `random_sample`
 * (53-bit doubles), so `seed: s` gives the same uniforms as `np.random.seed(s)` in the reference,
 * on every backend: the NumPy fixtures can check sampled ids exactly.
 */
import { GPT2Error } from '../errors';

export interface Rng {
  /** Uniform double in [0, 1). */
  random(): number;
}

export class MT19937 implements Rng {
  private readonly mt = new Uint32Array(624);
  private idx = 624;

  /** `np.random.seed(seed)` for an integer seed: init_genrand. */
  constructor(seed: number) {
    if (!Number.isInteger(seed) || seed < 0 || seed > 0xffffffff) {
      throw new GPT2Error('BAD_OPTION', `seed must be an integer in [0, 2^32 - 1], got ${seed}`);
    }
    const mt = this.mt;
    mt[0] = seed >>> 0;
    for (let i = 1; i < 624; i++) {
      const prev = mt[i - 1] ^ (mt[i - 1] >>> 30);
      // 1812433253 * prev in 32-bit arithmetic, split to stay exact in doubles.
      mt[i] = (((((prev & 0xffff0000) >>> 16) * 1812433253) << 16) + (prev & 0x0000ffff) * 1812433253 + i) >>> 0;
    }
  }

  private twist(): void {
    const mt = this.mt;
    for (let i = 0; i < 624; i++) {
      const y = (mt[i] & 0x80000000) | (mt[(i + 1) % 624] & 0x7fffffff);
      mt[i] = mt[(i + 397) % 624] ^ (y >>> 1) ^ (y & 1 ? 0x9908b0df : 0);
    }
    this.idx = 0;
  }

  nextUint32(): number {
    if (this.idx >= 624) this.twist();
    let y = this.mt[this.idx++];
    y ^= y >>> 11;
    y ^= (y << 7) & 0x9d2c5680;
    y ^= (y << 15) & 0xefc60000;
    y ^= y >>> 18;
    return y >>> 0;
  }

  /** `np.random.random_sample()`: (a * 2^26 + b) / 2^53 with a = next >>> 5, b = next >>> 6. */
  random(): number {
    const a = this.nextUint32() >>> 5;
    const b = this.nextUint32() >>> 6;
    return (a * 67108864 + b) / 9007199254740992;
  }
}

/** Math.random for callers that did not ask for reproducibility. */
export const unseeded: Rng = { random: () => Math.random() };

export function makeRng(seed: number | undefined): Rng {
  return seed === undefined ? unseeded : new MT19937(seed);
}

/**
 * `np.random.choice(len(p), p=p)`: cdf = cumsum(p); cdf /= cdf[-1]; searchsorted(cdf, u, 'right').
 * `p` need not be normalised. Float64 throughout, as NumPy.
 */
export function choice(p: ArrayLike<number>, rng: Rng): number {
  const n = p.length;
  const cdf = new Float64Array(n);
  let acc = 0;
  for (let i = 0; i < n; i++) {
    acc += p[i];
    cdf[i] = acc;
  }
  const total = cdf[n - 1];
  for (let i = 0; i < n; i++) cdf[i] /= total;
  const u = rng.random();
  // searchsorted side='right': first index with cdf[i] > u
  let lo = 0;
  let hi = n;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (cdf[mid] <= u) lo = mid + 1;
    else hi = mid;
  }
  return Math.min(lo, n - 1);
}
