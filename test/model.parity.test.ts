/** Logits and greedy ids of the HF-GPT-2 forward pass against the NumPy reference (float64). */
import * as tf from '@tensorflow/tfjs-core';
import { GPT2, loadModel } from '../src';
import { argmax } from '../src/generate/sampling';
import { TINY_DIR, TinyFixture, fixture, fixtureF32, logsumexp, maxAbsDiff, nodeBackends } from './helpers';

const fx = fixture<TinyFixture>('tiny.json');

describe.each(nodeBackends())('tiny model parity on %s', (backend) => {
  let model: GPT2;
  let baseline: number;
  beforeAll(async () => {
    model = await loadModel(TINY_DIR, { backend });
    baseline = tf.memory().numTensors;
  });
  afterAll(() => model.dispose());

  test('full logits of an 8-token prompt within 1e-4', async () => {
    const want = fixtureF32(fx.fullLogits.file);
    const got = await model.forward(fx.fullLogits.ids);
    expect(got.length).toBe(want.length);
    expect(maxAbsDiff(got, want)).toBeLessThanOrEqual(1e-4);
  });

  test.each(fx.cases.map((c, i) => [i, c] as const))('case %i: sampled columns, logsumexp and argmax', async (_i, c) => {
    const V = model.config.vocabSize;
    const got = await model.forward(c.ids);
    expect(got.length).toBe(c.ids.length * V);
    let worst = 0;
    c.logits.forEach((row, t) => {
      c.columns.forEach((col, j) => (worst = Math.max(worst, Math.abs(got[t * V + col] - row[j]))));
      expect(Math.abs(logsumexp(got.subarray(t * V, (t + 1) * V)) - c.logsumexp[t])).toBeLessThanOrEqual(1e-4);
      if (c.top2Margin[t] > 1e-4) expect(argmax(got.subarray(t * V, (t + 1) * V))).toBe(c.argmax[t]);
    });
    expect(worst).toBeLessThanOrEqual(1e-4);
  });

  test.each(fx.greedy.map((g, i) => [i, g] as const))('greedy %i: 32 new tokens identical', async (_i, g) => {
    const ids = g.prompt.slice();
    const V = model.config.vocabSize;
    for (let n = 0; n < g.newTokens; n++) {
      const logits = await model.forward(ids);
      ids.push(argmax(logits.subarray((ids.length - 1) * V, ids.length * V)));
    }
    expect(ids).toEqual(g.ids);
  });

  test('forward leaks no tensor', () => {
    expect(tf.memory().numTensors).toBe(baseline);
  });
});
