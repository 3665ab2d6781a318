/**
 * Chunked prefill (issue: joins without stalls): a prompt fed in chunks inside the running rows'
 * decode steps — alone, beside other rows, split across steps — gives the tokens and logits it gets
 * prefilled alone. On cpu and wasm; the bundled model as well as the tiny one.
 */
import * as tf from '@tensorflow/tfjs-core';
import { GPT2, loadModel } from '../src';
import { Batch, Sequence } from '../src/generate/generate';
import { KVCache } from '../src/model/gpt2';
import { TINY_DIR, caught, maxAbsDiff } from './helpers';

const PROMPTS = [
  [464, 318, 257, 1332, 13, 383, 2068, 7586, 21831, 18045, 625, 262],
  [15496, 995, 0],
  [40, 716, 407, 3049, 11, 475, 314, 716, 1016, 284, 1949, 340, 287, 262, 1110, 13, 632, 318, 922],
  [7],
];

describe.each([
  ['cpu', TINY_DIR],
  ['wasm', TINY_DIR],
  ['wasm', undefined], // the bundled model: 6 layers, 4 heads
] as const)('chunked prefill on %s (%s)', (backend, dir) => {
  let gpt: GPT2;
  beforeAll(async () => {
    gpt = await loadModel(dir, { backend });
  });
  afterAll(() => gpt.dispose());

  test('a multi-part step gives each part the logits it gets alone (within 1e-4)', async () => {
    const m = gpt.model;
    const V = m.config.vocabSize;
    const before = tf.memory().numTensors;
    // a running batch of two rows, and a third prompt's first chunk, in one pass
    const batch = new KVCache([0, 0]);
    const own = new KVCache([0]);
    const aloneRows = new KVCache([0, 0]);
    const aloneOwn = new KVCache([0]);
    try {
      await m.step([PROMPTS[0].slice(0, 3), PROMPTS[1]], batch, { lastOnly: true });
      await m.step([PROMPTS[0].slice(0, 3), PROMPTS[1]], aloneRows, { lastOnly: true });
      const [rows, chunk] = await m.stepParts([{ ids: [[11], [12]], cache: batch }, { ids: [PROMPTS[2].slice(0, 7)], cache: own }], { lastOnly: true });
      const wantRows = await m.step([[11], [12]], aloneRows, { lastOnly: true });
      const wantChunk = await m.step([PROMPTS[2].slice(0, 7)], aloneOwn, { lastOnly: true });
      expect(rows.length).toBe(2 * V);
      expect(chunk.length).toBe(V);
      expect(maxAbsDiff(rows, wantRows)).toBeLessThanOrEqual(1e-4);
      expect(maxAbsDiff(chunk, wantChunk)).toBeLessThanOrEqual(1e-4);
      // the second chunk continues from the first one's cache
      const [rest] = await m.stepParts([{ ids: [PROMPTS[2].slice(7)], cache: own }], { lastOnly: true });
      const full = await m.forward(PROMPTS[2]);
      expect(maxAbsDiff(rest, full.subarray((PROMPTS[2].length - 1) * V))).toBeLessThanOrEqual(1e-4);
      expect(own.length).toBe(PROMPTS[2].length);
    } finally {
      for (const c of [batch, own, aloneRows, aloneOwn]) c.dispose();
    }
    expect(tf.memory().numTensors).toBe(before);
  });

  test('parts must not share a cache', async () => {
    const c = new KVCache([0]);
    try {
      const e = await caught(gpt.model.stepParts([{ ids: [[1]], cache: c }, { ids: [[2]], cache: c }]));
      expect(e.code).toBe('BAD_INPUT');
    } finally {
      c.dispose();
    }
  });

  /** Greedy tokens of each prompt generated alone. */
  async function alone(n: number): Promise<number[][]> {
    const out: number[][] = [];
    for (const p of PROMPTS) out.push((await gpt.generate(p, { maxNewTokens: n, temperature: 0, eosTokenId: null })).tokens);
    return out;
  }

  test.each([1, 3, 5, 64])('rows joining with a prefill budget of %i tokens per step generate what they generate alone', async (budget) => {
    const n = 8;
    const want = await alone(n);
    const before = tf.memory().numTensors;
    const batch = new Batch(gpt.model);
    const seqs = PROMPTS.map((p) => new Sequence(p, { maxNewTokens: n, temperature: 0, eosTokenId: null }, gpt.model, null));
    const compositions: { decodeRows: number; prefillTokens: number }[] = [];
    try {
      // the first joins alone; the others join while it (and then they) decode
      batch.join(seqs[0]);
      let next = 1;
      while (batch.size > 0 || batch.joiningCount > 0 || next < seqs.length) {
        compositions.push(await batch.step({ prefillBudget: batch.size ? budget : 1024 }));
        if (next < seqs.length) batch.join(seqs[next++]);
      }
    } finally {
      batch.dispose();
    }
    expect(seqs.map((s) => s.tokens)).toEqual(want);
    expect(seqs.every((s) => s.finishReason === 'length')).toBe(true);
    // every step beside running rows stayed within the budget, and some steps carried both
    expect(compositions.filter((c) => c.decodeRows > 0).every((c) => c.prefillTokens <= budget)).toBe(true);
    expect(compositions.some((c) => c.decodeRows > 0 && c.prefillTokens > 0)).toBe(true);
    expect(compositions.reduce((t, c) => t + c.prefillTokens, 0)).toBe(PROMPTS.reduce((t, p) => t + p.length, 0));
    expect(tf.memory().numTensors).toBe(before);
  });

  test('a joining sequence aborted mid-prompt leaves, and the others go on unchanged', async () => {
    const want = await alone(6);
    const before = tf.memory().numTensors;
    const ac = new AbortController();
    const batch = new Batch(gpt.model);
    const a = new Sequence(PROMPTS[0], { maxNewTokens: 6, temperature: 0, eosTokenId: null }, gpt.model, null);
    const b = new Sequence(PROMPTS[2], { maxNewTokens: 6, temperature: 0, eosTokenId: null, signal: ac.signal }, gpt.model, null);
    try {
      batch.join(a);
      await batch.step();
      batch.join(b);
      await batch.step({ prefillBudget: 4 }); // b is 4 tokens into its 19-token prompt
      ac.abort();
      while (batch.size > 0 || batch.joiningCount > 0) await batch.step({ prefillBudget: 4 });
    } finally {
      batch.dispose();
    }
    expect(a.tokens).toEqual(want[0]);
    expect(b.finishReason).toBe('abort');
    expect(b.tokens).toEqual([]);
    expect(tf.memory().numTensors).toBe(before);
  });
});
