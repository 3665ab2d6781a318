/** The generation engine: KV cache, sampling controls vs NumPy, stop rules, abort, batching, leaks. */
import * as tf from '@tensorflow/tfjs-core';
import { GPT2, GPT2Error, GenerateOptions, loadModel } from '../src';
import { KVCache } from '../src/model/gpt2';
import { logSoftmax } from '../src/generate/sampling';
import { TINY_DIR, fixture, maxAbsDiff } from './helpers';

interface SamplingFixture {
  cases: { prompt: number[]; options: GenerateOptions; tokens: number[]; finishReason: string }[];
}
const fx = fixture<SamplingFixture>('sampling.json');

describe.each(['cpu', 'wasm'] as const)('generation on %s', (backend) => {
  let model: GPT2;
  beforeAll(async () => {
    model = await loadModel(TINY_DIR, { backend });
  });
  afterAll(() => model.dispose());

  test('KV-cache steps equal the full forward (logits within 1e-4)', async () => {
    const ids = [15496, 2159, 11, 314, 716, 257, 3303, 13, 50256, 7];
    const V = model.config.vocabSize;
    const full = await model.forward(ids);
    const cache = new KVCache([0]);
    try {
      const prefill = await model.model.step([ids.slice(0, 4)], cache); // [4, V]
      expect(maxAbsDiff(prefill, full.subarray(0, 4 * V))).toBeLessThanOrEqual(1e-4);
      for (let t = 4; t < ids.length; t++) {
        const row = await model.model.step([[ids[t]]], cache, { lastOnly: true });
        expect(maxAbsDiff(row, full.subarray(t * V, (t + 1) * V))).toBeLessThanOrEqual(1e-4);
      }
      expect(cache.length).toBe(ids.length);
    } finally {
      cache.dispose();
    }
  });

  test.each(fx.cases.map((c, i) => [i, JSON.stringify(c.options), c] as const))('sampling case %i %s matches NumPy', async (_i, _o, c) => {
    const r = await model.generate(c.prompt, c.options);
    expect(r.tokens).toEqual(c.tokens);
    expect(r.finishReason).toBe(c.finishReason);
    expect(r.usage.promptTokens).toBe(c.prompt.length);
  });

  test('presence/frequency penalties count the generated tokens, not the prompt', async () => {
    // The fixture's prompt ends in the token greedy picks first: no penalty applies to it yet.
    const c = fx.cases.find((x) => x.options.presencePenalty && x.prompt.includes(x.tokens[0]))!;
    const plain = await model.generate(c.prompt, { temperature: 0, maxNewTokens: 2 });
    expect(c.tokens[0]).toBe(plain.tokens[0]);
    expect(c.tokens[1]).not.toBe(plain.tokens[1]);
  });

  test('same seed, same tokens; different seed, different tokens', async () => {
    const a = await model.generate([464], { seed: 11, maxNewTokens: 8 });
    const b = await model.generate([464], { seed: 11, maxNewTokens: 8 });
    const c = await model.generate([464], { seed: 12, maxNewTokens: 8 });
    expect(a.tokens).toEqual(b.tokens);
    expect(a.tokens).not.toEqual(c.tokens);
  });

  test('logprobs are the raw log-softmax of the chosen token, with sorted alternatives', async () => {
    const prompt = [464, 3290];
    const r = await model.generate(prompt, { temperature: 0, maxNewTokens: 2, logprobs: 3 });
    const lp = logSoftmax((await model.forward(prompt)).subarray(1 * model.config.vocabSize));
    expect(r.logprobs).toHaveLength(2);
    const first = r.logprobs![0];
    expect(first.token).toBe(r.tokens[0]);
    expect(Math.abs(first.logprob - lp[first.token])).toBeLessThan(1e-4);
    expect(first.top.map((t) => t.token)[0]).toBe(first.token); // greedy = top-1
    expect(first.top[0].logprob).toBeGreaterThanOrEqual(first.top[1].logprob);
  });

  test('batched greedy equals one-by-one, with different prompt lengths and options', async () => {
    const prompts = [[464, 3290], [15496, 2159, 11, 314, 716, 257, 3303], [50256], [7, 8, 9, 10]];
    const opts: GenerateOptions[] = [
      { temperature: 0, maxNewTokens: 10 },
      { temperature: 0, maxNewTokens: 6 },
      { temperature: 0, maxNewTokens: 12, repetitionPenalty: 1.3 },
      { temperature: 0.9, seed: 5, topK: 7, maxNewTokens: 9 },
    ];
    const one: number[][] = [];
    for (let i = 0; i < prompts.length; i++) one.push((await model.generate(prompts[i], opts[i])).tokens);
    const before = tf.memory().numTensors;
    const batch = await model.generateBatch(prompts, opts);
    expect(batch.map((r) => r.tokens)).toEqual(one);
    expect(tf.memory().numTensors).toBe(before);
  });

  test('stream yields every token and ends; break and abort free the cache', async () => {
    const base = tf.memory().numTensors;
    const seen: number[] = [];
    for await (const c of model.stream([464], { temperature: 0, maxNewTokens: 5 })) seen.push(c.token);
    expect(seen).toEqual((await model.generate([464], { temperature: 0, maxNewTokens: 5 })).tokens);
    for await (const _c of model.stream([464], { maxNewTokens: 20 })) break;
    expect(tf.memory().numTensors).toBe(base);

    const ac = new AbortController();
    let n = 0;
    for await (const _c of model.stream([464], { maxNewTokens: 40, signal: ac.signal })) {
      if (++n === 3) ac.abort();
    }
    expect(n).toBe(3);
    expect(tf.memory().numTensors).toBe(base);

    const ac2 = new AbortController();
    const pending = model.generate([464], { maxNewTokens: 40, signal: ac2.signal });
    ac2.abort();
    const r = await pending;
    expect(r.finishReason).toBe('abort');
    expect(r.tokens.length).toBeLessThan(40);
    expect(tf.memory().numTensors).toBe(base);
  });

  test('context limit: error by default, truncate left keeps the latest tokens', async () => {
    const P = model.config.nPositions;
    const long = Array.from({ length: P }, (_, i) => (i * 7) % 1000);
    await expect(model.generate(long, { maxNewTokens: 4 })).rejects.toMatchObject({ code: 'CONTEXT_OVERFLOW' });
    const r = await model.generate(long, { maxNewTokens: 4, temperature: 0, truncate: 'left' });
    expect(r.usage.promptTokens).toBe(P - 3);
    const direct = await model.generate(long.slice(3), { maxNewTokens: 4, temperature: 0 });
    expect(r.tokens).toEqual(direct.tokens);
  });

  test('a text far past the context fails before it is tokenized; with truncate left it still generates', async () => {
    const huge = 'a'.repeat(1 << 20); // one unbroken run: the worst case for BPE
    const t0 = performance.now();
    await expect(model.generate(huge, { maxNewTokens: 2 })).rejects.toMatchObject({ code: 'CONTEXT_OVERFLOW', message: expect.stringMatching(/at least \d+ tokens/) });
    expect(performance.now() - t0).toBeLessThan(1000);
    const r = await model.generate(huge, { maxNewTokens: 2, temperature: 0, truncate: 'left' });
    expect(r.usage.promptTokens).toBe(model.config.nPositions - 1);
  });

  test('invalid options and ids are typed errors', async () => {
    const bad: GenerateOptions[] = [
      { temperature: -1 }, { topK: 1.5 }, { topP: 0 }, { topP: 1.5 }, { minP: 2 }, { repetitionPenalty: 0 },
      { maxNewTokens: 0 }, { seed: -1 }, { logprobs: 99 }, { eosTokenId: 1e9 }, { stop: [''] },
      { logitBias: { 50257: 1 } }, { logitBias: { 5: 200 } }, { presencePenalty: 3 }, { frequencyPenalty: -2.5 },
      // eslint-disable-next-line @typescript-eslint/no-explicit-any
      { truncate: 'right' as 'left' },
    ];
    const base = tf.memory().numTensors;
    for (const o of bad) await expect(model.generate([1], o)).rejects.toBeInstanceOf(GPT2Error);
    await expect(model.generate([], {})).rejects.toMatchObject({ code: 'BAD_INPUT' });
    await expect(model.generate([-1], {})).rejects.toMatchObject({ code: 'BAD_INPUT' });
    await expect(model.generate([50257], {})).rejects.toMatchObject({ code: 'BAD_INPUT' });
    expect(tf.memory().numTensors).toBe(base);
  });

  test('100 generate calls leak no tensor', async () => {
    await model.generate([1, 2], { maxNewTokens: 3 });
    const base = tf.memory().numTensors;
    for (let i = 0; i < 100; i++) await model.generate([1 + i, 2], { maxNewTokens: 3, seed: i });
    expect(tf.memory().numTensors).toBe(base);
  });
});

describe.each(['cpu', 'wasm'] as const)('score on %s', (backend) => {
  test('mean next-token cross-entropy over context windows equals NumPy', async () => {
    const fx2 = fixture<{ score: { ids: number[]; loss: number; tokens: number } }>('tiny.json');
    const model = await loadModel(TINY_DIR, { backend });
    try {
      const before = tf.memory().numTensors;
      const r = await model.score(fx2.score.ids);
      expect(r.tokens).toBe(fx2.score.tokens);
      expect(Math.abs(r.loss - fx2.score.loss) / fx2.score.loss).toBeLessThan(1e-5);
      expect(Math.abs(r.perplexity / Math.exp(fx2.score.loss) - 1)).toBeLessThan(1e-4);
      expect(tf.memory().numTensors).toBe(before);
      await expect(model.score([1])).rejects.toMatchObject({ code: 'BAD_INPUT' });
    } finally {
      model.dispose();
    }
  });
});

describe('text generation with the tokenizer (wasm)', () => {
  let model: GPT2;
  beforeAll(async () => {
    model = await loadModel(TINY_DIR, { backend: 'wasm' });
  });
  afterAll(() => model.dispose());

  test('the tiny model ships the GPT-2 tokenizer', () => {
    expect(model.tokenizer).not.toBeNull();
    expect(model.encode('The dog')).toEqual([464, 3290]);
  });

  test('stop strings end generation, are not returned, and streaming agrees', async () => {
    const full = await model.generate('Hello world', { temperature: 0, maxNewTokens: 12 });
    expect(full.finishReason).toBe('length');
    expect(full.text).toBe(model.tokenizer!.decode(full.tokens));
    // Stop on a piece of text that straddles tokens 3..4 of the greedy completion.
    const cut = model.tokenizer!.decode(full.tokens.slice(0, 3)).length;
    const stop = full.text.slice(cut - 2, cut + 3);
    const r = await model.generate('Hello world', { temperature: 0, maxNewTokens: 12, stop: [stop, 'never-there'] });
    expect(r.finishReason).toBe('stop');
    expect(r.text).toBe(full.text.slice(0, full.text.indexOf(stop)));
    expect(r.text.includes(stop)).toBe(false);
    let streamed = '';
    for await (const c of model.stream('Hello world', { temperature: 0, maxNewTokens: 12, stop })) streamed += c.text;
    expect(streamed).toBe(r.text);
  });

  test('streamed text concatenates to the decoded completion', async () => {
    let streamed = '';
    const tokens: number[] = [];
    for await (const c of model.stream('ROMEO:', { seed: 3, maxNewTokens: 20 })) {
      streamed += c.text;
      if (c.token >= 0) tokens.push(c.token);
    }
    expect(streamed).toBe(model.tokenizer!.decode(tokens));
  });

  test('eos ends generation with finishReason eos', async () => {
    const greedy = await model.generate('Hello', { temperature: 0, maxNewTokens: 5 });
    const r = await model.generate('Hello', { temperature: 0, maxNewTokens: 5, eosTokenId: greedy.tokens[2] });
    expect(r.finishReason).toBe('eos');
    expect(r.tokens).toEqual(greedy.tokens.slice(0, greedy.tokens.indexOf(greedy.tokens[2])));
  });

  test('text prompts and allowSpecial', async () => {
    expect(model.encode('<|endoftext|>', true)).toEqual([50256]);
    expect(model.encode('<|endoftext|>')).not.toEqual([50256]);
    const r = await model.generate('<|endoftext|>', { allowSpecial: true, temperature: 0, maxNewTokens: 3 });
    expect(r.usage.promptTokens).toBe(1);
  });
});

test('a model padded past the tokenizer vocabulary never samples a padding id', async () => {
  const model = await loadModel(TINY_DIR, { backend: 'cpu' });
  try {
    // Pretend the tokenizer knows only the first 1000 ids: sampling must stay below that.
    const real = model.tokenizer!;
    const small = Object.create(real, { vocabSize: { value: 1000 } });
    const limited = new GPT2(model.model, small);
    const r = await limited.generate([464], { temperature: 1.5, seed: 4, maxNewTokens: 30, eosTokenId: null });
    expect(r.tokens.every((t) => t < 1000)).toBe(true);
    await expect(limited.generate([464], { logitBias: { 1000: 100 } })).rejects.toMatchObject({ code: 'BAD_OPTION' });
  } finally {
    model.dispose();
  }
});
