/** The exercise's gpt2_generate against the NumPy original run after np.random.seed(seed). */
import * as tf from '@tensorflow/tfjs-core';
import { GPT2Error, MT19937, SeedLayer, gpt2Generate, setBackend } from '../src';
import { fixture } from './helpers';

interface ExerciseFixture {
  wte: number[][];
  wpe: number[][];
  lnFG: number[];
  lnFB: number[];
  layers: SeedLayer[];
  randomSample42: number[];
  cases: { seed: number; temperature: number; prompt: number[]; nTokens: number; expected: number[] }[];
}
const fx = fixture<ExerciseFixture>('exercise.json');

test('MT19937 reproduces np.random.seed(42); np.random.random_sample(5)', () => {
  const rng = new MT19937(42);
  expect(Array.from({ length: 5 }, () => rng.random())).toEqual(fx.randomSample42);
});

describe.each(['cpu', 'wasm'] as const)('gpt2Generate on %s', (backend) => {
  beforeAll(() => setBackend(backend));

  test.each(fx.cases.map((c) => [c.seed, c.temperature, c.prompt.length, c] as const))(
    'seed %i, temperature %f, prompt of %i: ids equal NumPy',
    async (_s, _t, _l, c) => {
      const before = tf.memory().numTensors;
      const out = await gpt2Generate(c.prompt, fx.wte, fx.wpe, fx.layers, fx.lnFG, fx.lnFB, c.nTokens, c.temperature, { seed: c.seed, rng: 'numpy' });
      expect(out).toEqual(c.expected);
      expect(tf.memory().numTensors).toBe(before);
    },
  );

  test('accepts {data, shape} and tf.Tensor inputs alike', async () => {
    const c = fx.cases[4];
    const flat = (a: number[][]) => ({ data: Float32Array.from(a.flat()), shape: [a.length, a[0].length] });
    const wte = tf.tensor2d(fx.wte);
    try {
      const out = await gpt2Generate(c.prompt, wte, flat(fx.wpe), fx.layers, fx.lnFG, fx.lnFB, c.nTokens, c.temperature, { seed: c.seed, rng: 'numpy' });
      expect(out).toEqual(c.expected);
      expect(wte.isDisposed).toBe(false); // the caller's tensors stay the caller's
    } finally {
      wte.dispose();
    }
  });

  test('bad input is a typed error and leaks nothing', async () => {
    const before = tf.memory().numTensors;
    const bad = [
      () => gpt2Generate([999], fx.wte, fx.wpe, fx.layers, fx.lnFG, fx.lnFB, 2, 1, { seed: 1 }),
      () => gpt2Generate([1], fx.wte, fx.wpe, fx.layers, fx.lnFG, fx.lnFB, 40, 1, { seed: 1 }),
      () => gpt2Generate([1], fx.wte, fx.wpe, fx.layers, fx.lnFG, fx.lnFB, 2, -1),
      () => gpt2Generate([], fx.wte, fx.wpe, fx.layers, fx.lnFG, fx.lnFB, 2, 1),
      () => gpt2Generate([1], [[1, 2], [3]], fx.wpe, fx.layers, fx.lnFG, fx.lnFB, 2, 1),
      () => gpt2Generate([1], fx.wte, fx.wpe, fx.layers, fx.lnFG, fx.lnFB, 2, 1, { seed: -3 }),
      // a layer whose Wk does not fit n_embd, layers not an array, a bad rng
      () => gpt2Generate([1], fx.wte, fx.wpe, [{ ...fx.layers[0], attnWeights: [fx.layers[0].attnWeights[0], [[1, 2]], fx.layers[0].attnWeights[2], fx.layers[0].attnWeights[3]] }], fx.lnFG, fx.lnFB, 2, 1),
      () => gpt2Generate([1], fx.wte, fx.wpe, {} as unknown as SeedLayer[], fx.lnFG, fx.lnFB, 2, 1),
      () => gpt2Generate([1], fx.wte, fx.wpe, fx.layers, fx.lnFG, fx.lnFB, 2, 1, { rng: 'mt' as 'numpy' }),
    ];
    for (const f of bad) await expect(f()).rejects.toBeInstanceOf(GPT2Error);
    expect(tf.memory().numTensors).toBe(before);
  });
});
