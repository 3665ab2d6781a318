/** The exercise's gpt2_generate against the NumPy original run after np.random.seed(seed). */
import * as tf from '@tensorflow/tfjs-core';
import { GPT2Error, MT19937, SeedLayer, gpt2Generate, setBackend } from '../src';
import { caught, fixture, runScript } from './helpers';

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
      // malformed arrays that used to reach tfjs raw: a negative shape, strings, a disposed tensor
      () => gpt2Generate([1], { data: new Float32Array(0), shape: [-1, 0] }, fx.wpe, fx.layers, fx.lnFG, fx.lnFB, 2, 1),
      () => gpt2Generate([1], fx.wte.map((r) => r.map(String)) as unknown as number[][], fx.wpe, fx.layers, fx.lnFG, fx.lnFB, 2, 1),
      () => gpt2Generate([1], { data: fx.wte.flat().map(String) as unknown as number[], shape: [fx.wte.length, fx.wte[0].length] }, fx.wpe, fx.layers, fx.lnFG, fx.lnFB, 2, 1),
      () => {
        const t = tf.tensor2d(fx.wte);
        t.dispose();
        return gpt2Generate([1], t, fx.wpe, fx.layers, fx.lnFG, fx.lnFB, 2, 1);
      },
      () => gpt2Generate([1], fx.wte, fx.wpe, fx.layers, fx.lnFG, fx.lnFB, 2, 1, { signal: 'soon' as unknown as AbortSignal }),
      () => gpt2Generate([1], fx.wte, fx.wpe, fx.layers, fx.lnFG, fx.lnFB, 2, 1, { backend: 'gpu' as 'cpu' }),
    ];
    for (const f of bad) await expect(f()).rejects.toBeInstanceOf(GPT2Error);
    expect(tf.memory().numTensors).toBe(before);
  });

  test('a NaN weight is a NON_FINITE error, not a silent token 0', async () => {
    const before = tf.memory().numTensors;
    const wte = fx.wte.map((r) => r.slice());
    wte[3][1] = NaN;
    for (const t of [1, 0]) {
      const e = await caught(gpt2Generate([3], wte, fx.wpe, fx.layers, fx.lnFG, fx.lnFB, 2, t, { seed: 1 }));
      expect(e.code).toBe('NON_FINITE');
    }
    expect(tf.memory().numTensors).toBe(before);
  });

  test('yields to the event loop between tokens, and a signal stops it (ABORTED, nothing leaked)', async () => {
    const c = fx.cases[0];
    const n = Math.min(20, fx.wpe.length - c.prompt.length);
    const before = tf.memory().numTensors;
    let ticks = 0;
    const timer = setInterval(() => ticks++, 0);
    try {
      await gpt2Generate(c.prompt, fx.wte, fx.wpe, fx.layers, fx.lnFG, fx.lnFB, n, 1, { seed: 1 });
    } finally {
      clearInterval(timer);
    }
    expect(ticks).toBeGreaterThan(1); // it used to run its whole loop with zero timer ticks

    const ctl = new AbortController();
    const run = gpt2Generate(c.prompt, fx.wte, fx.wpe, fx.layers, fx.lnFG, fx.lnFB, n, 1, { seed: 1, signal: ctl.signal });
    setImmediate(() => ctl.abort());
    const e = await caught(run);
    expect(e.code).toBe('ABORTED');
    expect(tf.memory().numTensors).toBe(before);
  });
});

test('gpt2Generate works as the first call of a fresh app (it starts a backend itself)', async () => {
  const result = await runScript([
    "const { gpt2Generate } = require('./src');",
    "const fx = require('./test/fixtures/exercise.json');",
    'const c = fx.cases[0];',
    '(async () => {',
    "  const out = await gpt2Generate(c.prompt, fx.wte, fx.wpe, fx.layers, fx.lnFG, fx.lnFB, c.nTokens, c.temperature, { seed: c.seed, rng: 'numpy' });",
    "  const tf = require('@tensorflow/tfjs-core');",
    '  console.log(JSON.stringify({ same: JSON.stringify(out) === JSON.stringify(c.expected), backend: tf.getBackend() }));',
    '})().catch((e) => { console.log(JSON.stringify({ error: String(e) })); });',
  ]);
  expect(result).toEqual({ same: true, backend: 'wasm' });
}, 60_000);
