/**
 * The logits processors: against the NumPy reference (test/fixtures/processors.json, written by
 * `npm run fixtures`), option validation, and property tests (the partial-selection processors equal
 * their full-sort definitions; bias and penalties are the formulas they claim).
 */
import fc from 'fast-check';
import { inspect } from 'util';
import { makeRng } from '../src/generate/rng';
import {
  Sampler, SamplingOptions, argmax, checkSamplingOptions, kthLargest, logitBias, presenceFrequencyPenalty, processorsFor, sortedDesc, softmaxInPlace, topK, topP,
} from '../src/generate/sampling';
import { fixture } from './helpers';

const logitsArb = fc.array(fc.oneof(fc.double({ min: -20, max: 20, noNaN: true }), fc.constantFrom(0, 1, -1)), { minLength: 1, maxLength: 300 });

test('kthLargest equals the k-th value of a full descending sort', () => {
  fc.assert(fc.property(logitsArb, fc.nat(), (z, k0) => {
    const k = 1 + (k0 % z.length);
    // `+ 0` turns -0 into 0: a threshold of -0 and of 0 are the same number (toBe tells them apart).
    expect(kthLargest(z, k) + 0).toBe([...z].sort((a, b) => b - a)[k - 1] + 0);
  }));
});

test('topP keeps exactly the smallest best-first prefix reaching p (full-sort definition)', () => {
  fc.assert(fc.property(logitsArb, fc.double({ min: 0.01, max: 0.999, noNaN: true }), (zs, p) => {
    const z = Float64Array.from(zs);
    topP(p)(z, []);
    const probs = softmaxInPlace(Float64Array.from(zs));
    const order = sortedDesc(probs);
    const want = new Set<number>();
    let cum = 0;
    for (let i = 0; i < order.length; i++) {
      if (i > 0 && cum >= p) break;
      cum += probs[order[i]];
      want.add(order[i]);
    }
    for (let i = 0; i < z.length; i++) expect(z[i] === -Infinity).toBe(!want.has(i));
  }));
});

test('topK keeps the k best (and ties at the boundary)', () => {
  fc.assert(fc.property(logitsArb, fc.nat(), (zs, k0) => {
    const k = 1 + (k0 % zs.length);
    const z = Float64Array.from(zs);
    topK(k)(z, []);
    const kth = [...zs].sort((a, b) => b - a)[k - 1];
    zs.forEach((v, i) => expect(z[i] === -Infinity).toBe(v < kth));
  }));
});

interface ProcessorFixture {
  vocab: number;
  cases: { options: SamplingOptions; logits: number[]; context: number[]; promptLength: number; seed: number; processed: (number | null)[]; tokens: number[] }[];
}
const px = fixture<ProcessorFixture>('processors.json');

describe('processors against the NumPy reference', () => {
  test.each(px.cases.map((c, i) => [i, JSON.stringify(c.options), c.promptLength, c] as const))('case %i %s (prompt length %i)', (_i, _o, _p, c) => {
    // Processed logits: within 1e-12 relative (the same float64 operations in the same order; only
    // exp inside top-p/min-p may differ by an ulp), filtered positions exactly where NumPy's are.
    const z = Float64Array.from(c.logits);
    for (const p of processorsFor(c.options, { size: px.vocab })) p(z, c.context, c.promptLength);
    c.processed.forEach((want, j) => {
      if (want === null) expect(z[j]).toBe(-Infinity);
      else expect(Math.abs(z[j] - want)).toBeLessThanOrEqual(1e-12 * Math.max(1, Math.abs(want)));
    });
    // Seeded draws (or the greedy pick): token ids exactly.
    const sampler = new Sampler(c.options, makeRng(c.seed), { size: px.vocab });
    expect(c.tokens.map(() => sampler.sample(c.logits, c.context, c.promptLength))).toEqual(c.tokens);
  });
});

describe('processorsFor', () => {
  const names = (o: SamplingOptions): number => processorsFor(o).length;
  test('builds only the processors an option turns on; greedy stops after the penalties', () => {
    expect(names({})).toBe(0);
    expect(names({ temperature: 0, topK: 5, topP: 0.5, minP: 0.1 })).toBe(0);
    expect(names({ temperature: 0, logitBias: { 1: -100 }, repetitionPenalty: 1.2, presencePenalty: 1, topK: 5 })).toBe(3);
    expect(names({ logitBias: { 1: 0 }, presencePenalty: 0, frequencyPenalty: 0 })).toBe(0);
    expect(names({ temperature: 0.5, topK: 5, topP: 0.5, minP: 0.1, frequencyPenalty: -1 })).toBe(5);
    expect(processorsFor({}, { size: 10, limit: 8 })).toHaveLength(1);
    expect(processorsFor({}, { size: 10, limit: 10 })).toHaveLength(0);
  });

  test('the order: bias before the repetition penalty, penalties before temperature', () => {
    // Bias first: +4 lifts a negative logit to positive before the repetition penalty divides it
    // (the other way round it would be -1 * 2 + 4 = 2, not 1.5).
    const z = Float64Array.from([-1, 0, 0]);
    for (const p of processorsFor({ logitBias: { 0: 4 }, repetitionPenalty: 2, presencePenalty: 1, temperature: 0.5 })) p(z, [0], 0);
    expect(z[0]).toBe(((-1 + 4) / 2 - 1) / 0.5);
  });

  test('greedy honours bias and penalties', () => {
    const logits = [5, 4, 3, 0];
    const greedy = (o: SamplingOptions, context: number[] = [], promptLength = 0): number => new Sampler({ temperature: 0, ...o }, makeRng(0)).sample(logits, context, promptLength);
    expect(greedy({})).toBe(0);
    expect(greedy({ logitBias: { 0: -100 } })).toBe(1);
    expect(greedy({ logitBias: { 3: 5.5 } })).toBe(3);
    expect(greedy({ presencePenalty: 1.5 }, [0])).toBe(1);
    expect(greedy({ frequencyPenalty: 0.75 }, [0, 1, 0, 0], 0)).toBe(1); // 5 - 3 * 0.75 = 2.75 < 4 - 0.75
    expect(greedy({ frequencyPenalty: 0.75 }, [0, 1, 0, 0], 3)).toBe(0); // one generated 0: 4.25 > 4
  });

  test('penalties count the generated tokens only, not the prompt', () => {
    const z = Float64Array.from([1, 1, 1, 1]);
    presenceFrequencyPenalty(0.5, 0.25)(z, [0, 0, 1, 2, 2], 2); // prompt [0, 0], generated [1, 2, 2]
    expect(Array.from(z)).toEqual([1, 1 - (0.25 + 0.5), 1 - (0.5 + 0.5), 1]);
  });

  test('a padded vocabulary stays unpickable whatever the bias', () => {
    const s = new Sampler({ temperature: 0 }, makeRng(0), { size: 4, limit: 3 });
    expect(s.sample([0, 0, 0, 9], [])).toBe(0);
    expect(() => processorsFor({ logitBias: { 3: 100 } }, { size: 4, limit: 3 })).toThrow(expect.objectContaining({ code: 'BAD_OPTION', message: expect.stringContaining('[0, 2]') }));
  });
});

describe('option validation', () => {
  const bad: [string, SamplingOptions][] = [
    ['logitBias', { logitBias: null as unknown as Record<number, number> }],
    ['logitBias', { logitBias: [1, 2] as unknown as Record<number, number> }],
    ['logitBias', { logitBias: 'x' as unknown as Record<number, number> }],
    ['logitBias', { logitBias: { [-1]: 1 } }],
    ['logitBias', { logitBias: { 1.5: 1 } }],
    ['logitBias', { logitBias: { abc: 1 } as unknown as Record<number, number> }],
    ['logitBias', { logitBias: { '01': 1 } as unknown as Record<number, number> }],
    ['logitBias', { logitBias: { 100: 1 } }],
    ['logitBias', { logitBias: { 5: 101 } }],
    ['logitBias', { logitBias: { 5: -100.5 } }],
    ['logitBias', { logitBias: { 5: NaN } }],
    ['logitBias', { logitBias: { 5: '1' as unknown as number } }],
    ['logitBias', { logitBias: { 5: 1n as unknown as number } }],
    ['logitBias', { logitBias: 7n as unknown as Record<number, number> }],
    ['presencePenalty', { presencePenalty: 2.01 }],
    ['presencePenalty', { presencePenalty: -3 }],
    ['presencePenalty', { presencePenalty: NaN }],
    ['presencePenalty', { presencePenalty: '1' as unknown as number }],
    ['presencePenalty', { presencePenalty: 1n as unknown as number }],
    ['frequencyPenalty', { frequencyPenalty: 2.5 }],
    ['frequencyPenalty', { frequencyPenalty: -Infinity }],
    ['frequencyPenalty', { frequencyPenalty: null as unknown as number }],
  ];
  test.each(bad.map(([name, o]) => [name, inspect(o), o] as const))('%s: %s is a BAD_OPTION naming it', (name, _s, o) => {
    expect(() => checkSamplingOptions(o, 100)).toThrow(expect.objectContaining({ code: 'BAD_OPTION', message: expect.stringContaining(name) }));
  });

  test('the edges of the ranges are accepted', () => {
    const o = checkSamplingOptions({ logitBias: { 0: -100, 99: 100, 7: 0 }, presencePenalty: -2, frequencyPenalty: 2 }, 100);
    expect(o).toMatchObject({ logitBias: { 0: -100, 99: 100, 7: 0 }, presencePenalty: -2, frequencyPenalty: 2 });
    expect(checkSamplingOptions({})).toMatchObject({ logitBias: {}, presencePenalty: 0, frequencyPenalty: 0 });
  });
});

describe('bias and penalty properties', () => {
  const V = 40;
  const rowArb = fc.array(fc.double({ min: -20, max: 20, noNaN: true }), { minLength: V, maxLength: V });
  const idArb = fc.integer({ min: 0, max: V - 1 });
  const biasArb = fc.dictionary(idArb.map(String), fc.double({ min: -100, max: 100, noNaN: true })) as fc.Arbitrary<Record<number, number>>;
  const penaltyArb = fc.double({ min: -2, max: 2, noNaN: true });

  test('logitBias adds exactly its value to the listed ids and leaves the rest', () => {
    fc.assert(fc.property(rowArb, biasArb, (row, bias) => {
      const z = Float64Array.from(row);
      logitBias(bias)(z, []);
      row.forEach((v, j) => expect(z[j] + 0).toBe(v + (bias[j] ?? 0) + 0)); // + 0: -0 and 0 are one logit
    }));
  });

  test('presence/frequency: z[j] -= frequency * count + presence for generated tokens, prompt ignored', () => {
    fc.assert(fc.property(rowArb, fc.array(idArb, { maxLength: 30 }), fc.nat(), penaltyArb, penaltyArb, (row, context, p0, presence, frequency) => {
      const promptLength = p0 % (context.length + 1);
      const z = Float64Array.from(row);
      presenceFrequencyPenalty(presence, frequency)(z, context, promptLength);
      const generated = context.slice(promptLength);
      row.forEach((v, j) => {
        const count = generated.filter((t) => t === j).length;
        expect(z[j]).toBe(count > 0 ? v - (frequency * count + presence) : v);
      });
    }));
  });

  test('greedy picks the argmax of the biased, penalised logits; -100 bans', () => {
    fc.assert(fc.property(rowArb, biasArb, fc.array(idArb, { maxLength: 20 }), penaltyArb, penaltyArb, (row, bias, context, presence, frequency) => {
      const o = { temperature: 0, logitBias: bias, presencePenalty: presence, frequencyPenalty: frequency };
      const z = Float64Array.from(row);
      for (const p of processorsFor(o)) p(z, context, 0);
      const pick = new Sampler(o, makeRng(0)).sample(row, context, 0);
      expect(pick).toBe(argmax(z));
      // A -100 ban holds against any token left alone (logits within 20 of 0, penalties at most 2 + 2 * count).
      const banned = Object.entries(bias).filter(([, b]) => b === -100).map(([k]) => Number(k));
      const untouched = row.some((_, j) => bias[j] === undefined && !context.includes(j));
      if (untouched) expect(banned).not.toContain(pick);
    }));
  });
});
