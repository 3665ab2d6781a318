/**
 * The OpenAI-compatible HTTP service, over real HTTP on an ephemeral loopback port: completions
 * (plain, streamed, stop, seed, n, echo, logprobs), every validation path, limits, cancellation on
 * disconnect, leaks over many requests, batching equivalence, graceful close.
 */
import { getMaxListeners } from 'events';
import * as tf from '@tensorflow/tfjs-core';
import { GPT2, loadModel } from '../src';
import { GenerateOptions, Sequence, StreamChunk } from '../src/generate/generate';
import { Scheduler } from '../src/generate/scheduler';
import { RunningServer, ServerOptions, startServer } from '../src/server';
import { ErrorBody } from '../src/server/openai';
import { loadTokenizer } from '../src/tokenizer';
import { TINY_DIR } from './helpers';

interface Choice {
  text: string;
  index: number;
  finish_reason: string | null;
  logprobs: { tokens: string[]; token_logprobs: (number | null)[]; top_logprobs: (Record<string, number> | null)[]; text_offset: number[] } | null;
}
interface Completion {
  id: string;
  object: string;
  model: string;
  choices: Choice[];
  usage: { prompt_tokens: number; completion_tokens: number; total_tokens: number };
}

let gpt: GPT2;
let srv: RunningServer;
let baseline: number;

beforeAll(async () => {
  const base = await loadModel(TINY_DIR, { backend: 'wasm' });
  // The tokenizer is attached by loadModel once it ships; until then attach it here.
  gpt = base.tokenizer ? base : new GPT2(base.model, await loadTokenizer(TINY_DIR));
  srv = await startServer({ model: gpt, port: 0, modelName: 'tiny', maxTokens: 60, maxPromptTokens: 48, maxChoices: 6, bodyLimit: 16 * 1024 });
  baseline = tf.memory().numTensors;
});
afterAll(async () => {
  await srv?.close();
  gpt?.dispose();
});

async function post(body: unknown, s: RunningServer = srv, init: RequestInit = {}): Promise<{ status: number; json: unknown; headers: Headers }> {
  const r = await fetch(`${s.url}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: typeof body === 'string' ? body : JSON.stringify(body),
    ...init,
  });
  const text = await r.text();
  let json: unknown = text;
  try {
    json = JSON.parse(text);
  } catch {
    // left as text (SSE or plain)
  }
  return { status: r.status, json, headers: r.headers };
}

async function complete(body: Record<string, unknown>, s: RunningServer = srv): Promise<Completion> {
  const r = await post(body, s);
  if (r.status !== 200) throw new Error(`status ${r.status}: ${JSON.stringify(r.json)}`);
  return r.json as Completion;
}

/** The JSON payloads of an SSE body, and whether it ended with [DONE]. */
function sse(text: string): { events: Record<string, unknown>[]; done: boolean } {
  const datas = text
    .split('\n\n')
    .filter((b) => b.startsWith('data: '))
    .map((b) => b.slice(6));
  const done = datas[datas.length - 1] === '[DONE]';
  return { events: datas.filter((d) => d !== '[DONE]').map((d) => JSON.parse(d) as Record<string, unknown>), done };
}

async function idle(s: RunningServer = srv): Promise<void> {
  for (let i = 0; i < 200 && (s.scheduler.running > 0 || s.scheduler.queueDepth > 0); i++) await new Promise((r) => setTimeout(r, 10));
}

const PROMPT = 'The quick brown fox';

describe('completions', () => {
  test('greedy text completion equals the library call, with usage and OpenAI fields', async () => {
    const c = await complete({ model: 'tiny', prompt: PROMPT, max_tokens: 12, temperature: 0 });
    const lib = await gpt.generate(PROMPT, { temperature: 0, maxNewTokens: 12 });
    expect(c.object).toBe('text_completion');
    expect(c.id).toMatch(/^cmpl-/);
    expect(c.model).toBe('tiny');
    expect(c.choices).toEqual([{ text: lib.text, index: 0, logprobs: null, finish_reason: lib.finishReason === 'length' ? 'length' : 'stop' }]);
    const promptTokens = gpt.encode(PROMPT).length;
    expect(c.usage).toEqual({ prompt_tokens: promptTokens, completion_tokens: lib.usage.completionTokens, total_tokens: promptTokens + lib.usage.completionTokens });
  });

  test('token-id prompts and an array of prompts', async () => {
    const ids = gpt.encode(PROMPT);
    const a = await complete({ prompt: ids, max_tokens: 5, temperature: 0 });
    const b = await complete({ prompt: PROMPT, max_tokens: 5, temperature: 0 });
    expect(a.choices[0].text).toBe(b.choices[0].text);
    const many = await complete({ prompt: [ids, [464, 3290]], max_tokens: 5, temperature: 0 });
    expect(many.choices.map((c) => c.index)).toEqual([0, 1]);
    expect(many.choices[0].text).toBe(a.choices[0].text);
    const texts = await complete({ prompt: [PROMPT, 'Hello'], max_tokens: 5, temperature: 0 });
    expect(texts.choices[0].text).toBe(many.choices[0].text);
    expect(texts.usage.prompt_tokens).toBe(ids.length + gpt.encode('Hello').length);
  });

  test('streaming sends text_completion chunks that add up to the plain result, then [DONE]', async () => {
    const plain = await complete({ prompt: PROMPT, max_tokens: 15, temperature: 0 });
    const r = await fetch(`${srv.url}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ prompt: PROMPT, max_tokens: 15, temperature: 0, stream: true, stream_options: { include_usage: true } }),
    });
    expect(r.status).toBe(200);
    expect(r.headers.get('content-type')).toMatch(/^text\/event-stream/);
    const { events, done } = sse(await r.text());
    expect(done).toBe(true);
    const chunks = events.filter((e) => (e.choices as Choice[]).length > 0);
    for (const e of chunks) expect(e).toMatchObject({ object: 'text_completion', model: 'tiny' });
    const choices = chunks.map((e) => (e.choices as Choice[])[0]);
    expect(choices.map((c) => c.text).join('')).toBe(plain.choices[0].text);
    expect(choices[choices.length - 1].finish_reason).toBe(plain.choices[0].finish_reason);
    expect(choices.slice(0, -1).every((c) => c.finish_reason === null)).toBe(true);
    expect(events[events.length - 1].usage).toEqual(plain.usage);
  });

  test('stop sequences cut the text before the match and finish with "stop"', async () => {
    const full = (await complete({ prompt: PROMPT, max_tokens: 30, temperature: 0 })).choices[0].text;
    const stop = full.slice(8, 11);
    expect(stop.length).toBe(3);
    const at = full.indexOf(stop);
    for (const s of [stop, ['zzzz-never', stop]]) {
      const c = await complete({ prompt: PROMPT, max_tokens: 30, temperature: 0, stop: s });
      expect(c.choices[0].text).toBe(full.slice(0, at));
      expect(c.choices[0].finish_reason).toBe('stop');
    }
    // Streamed, the held-back text never leaks past the stop.
    const streamed = sse((await post({ prompt: PROMPT, max_tokens: 30, temperature: 0, stop, stream: true })).json as string);
    const cs = streamed.events.map((e) => (e.choices as Choice[])[0]);
    expect(cs.map((c) => c.text).join('')).toBe(full.slice(0, at));
    expect(cs[cs.length - 1].finish_reason).toBe('stop');
  });

  test('a seed reproduces a sampled completion across requests and matches the library', async () => {
    const body = { prompt: PROMPT, max_tokens: 10, temperature: 0.9, top_k: 40, seed: 1234 };
    const a = await complete(body);
    const b = await complete(body);
    expect(a.choices[0].text).toBe(b.choices[0].text);
    expect(a.choices[0].text).toBe((await gpt.generate(PROMPT, { temperature: 0.9, topK: 40, seed: 1234, maxNewTokens: 10 })).text);
    const other = await complete({ ...body, seed: 1235 });
    expect(other.choices[0].text).not.toBe(a.choices[0].text);
    const extras = { temperature: 0.8, seed: 99, maxNewTokens: 5, topP: 0.9, minP: 0.01, repetitionPenalty: 1.3 };
    const viaHttp = await complete({ prompt: PROMPT, max_tokens: 5, temperature: 0.8, seed: 99, top_p: 0.9, min_p: 0.01, repetition_penalty: 1.3 });
    expect(viaHttp.choices[0].text).toBe((await gpt.generate(PROMPT, extras)).text);
  });

  test('logit_bias, presence_penalty and frequency_penalty act as the library options do', async () => {
    const tokenizer = gpt.tokenizer as NonNullable<GPT2['tokenizer']>;
    /** The server's completion and the library's, with the same options: the same tokens and text. */
    const both = async (body: Record<string, unknown>, options: GenerateOptions): Promise<{ text: string; tokens: number[] }> => {
      const c = await complete({ prompt: PROMPT, max_tokens: 12, logprobs: 0, ...body });
      const lib = await gpt.generate(PROMPT, { maxNewTokens: 12, logprobs: 0, ...options });
      expect(c.choices[0].text).toBe(lib.text);
      expect(c.choices[0].logprobs?.tokens).toEqual(lib.tokens.map((t) => tokenizer.decode([t])));
      return lib;
    };
    const plain = await both({ temperature: 0 }, { temperature: 0 });
    // Greedy with the greedy token banned: the first token changes, and the banned one never appears.
    const first = plain.tokens[0];
    const banned = await both({ temperature: 0, logit_bias: { [first]: -100 } }, { temperature: 0, logitBias: { [first]: -100 } });
    expect(banned.tokens[0]).not.toBe(first);
    expect(banned.tokens).not.toContain(first);
    // +100 on a token all but forces it.
    const forced = await both({ temperature: 0, logit_bias: { '464': 100 } }, { temperature: 0, logitBias: { 464: 100 } });
    expect(forced.tokens).toEqual(Array(12).fill(464));
    // The penalties: the greedy text repeats tokens; penalising repeats changes it.
    expect(new Set(plain.tokens).size).toBeLessThan(plain.tokens.length);
    const presence = await both({ temperature: 0, presence_penalty: 2 }, { temperature: 0, presencePenalty: 2 });
    const frequency = await both({ temperature: 0, frequency_penalty: 2 }, { temperature: 0, frequencyPenalty: 2 });
    expect(presence.tokens).not.toEqual(plain.tokens);
    expect(frequency.tokens).not.toEqual(plain.tokens);
    // Sampled, all three together, seeded: the same draw as the library's.
    const mixed = { temperature: 0.9, seed: 5 };
    const sampled = await both({ ...mixed }, mixed);
    const all = await both({ ...mixed, logit_bias: { [sampled.tokens[0]]: -100 }, presence_penalty: 1.5, frequency_penalty: 0.5 }, { ...mixed, logitBias: { [sampled.tokens[0]]: -100 }, presencePenalty: 1.5, frequencyPenalty: 0.5 });
    expect(all.tokens).not.toEqual(sampled.tokens);
  });

  test('n > 1: choice j draws with seed + j; prompts × n are indexed prompt-major', async () => {
    const c = await complete({ prompt: PROMPT, max_tokens: 10, seed: 7, n: 3 });
    expect(c.choices.map((x) => x.index)).toEqual([0, 1, 2]);
    for (let j = 0; j < 3; j++) expect(c.choices[j].text).toBe((await complete({ prompt: PROMPT, max_tokens: 10, seed: 7 + j })).choices[0].text);
    expect(new Set(c.choices.map((x) => x.text)).size).toBeGreaterThan(1);
    expect(c.usage.prompt_tokens).toBe(gpt.encode(PROMPT).length);
    expect(c.usage.completion_tokens).toBe(30);
    const grid = await complete({ prompt: [PROMPT, 'Hello'], max_tokens: 3, seed: 7, n: 2 });
    expect(grid.choices.map((x) => x.index)).toEqual([0, 1, 2, 3]);
    expect(grid.choices[3].text).toBe((await complete({ prompt: 'Hello', max_tokens: 3, seed: 8 })).choices[0].text);
  });

  test('echo prepends the prompt; echo with max_tokens 0 scores the prompt', async () => {
    const plain = await complete({ prompt: PROMPT, max_tokens: 6, temperature: 0 });
    const echoed = await complete({ prompt: PROMPT, max_tokens: 6, temperature: 0, echo: true });
    expect(echoed.choices[0].text).toBe(PROMPT + plain.choices[0].text);
    const ids = gpt.encode(PROMPT);
    const scored = await complete({ prompt: PROMPT, max_tokens: 0, echo: true, logprobs: 1 });
    const lp = scored.choices[0].logprobs;
    expect(scored.choices[0].text).toBe(PROMPT);
    expect(lp?.tokens.join('')).toBe(PROMPT);
    expect(lp?.token_logprobs[0]).toBeNull();
    expect(lp?.top_logprobs[0]).toBeNull();
    expect(lp?.text_offset[0]).toBe(0);
    // The prompt's log-probabilities are the model's own: log softmax of the previous position's logits.
    const V = gpt.config.vocabSize;
    const logits = await gpt.forward(ids);
    const row = Array.from(logits.subarray(0, V));
    const max = Math.max(...row);
    const lse = Math.log(row.reduce((s, z) => s + Math.exp(z - max), 0)) + max;
    expect(lp?.token_logprobs[1]).toBeCloseTo(row[ids[1]] - lse, 5);
    expect(scored.usage.completion_tokens).toBe(0);
    expect(scored.choices[0].finish_reason).toBe('length');
    // Echo + logprobs + generation: prompt entries first, then the completion's, offsets continuing.
    const both = await complete({ prompt: PROMPT, max_tokens: 4, temperature: 0, echo: true, logprobs: 0 });
    expect(both.choices[0].logprobs?.tokens.length).toBe(ids.length + 4);
    expect(both.choices[0].logprobs?.text_offset[ids.length]).toBe(PROMPT.length);
  });

  test('logprobs: legacy shape, the library values, top alternatives', async () => {
    const c = await complete({ prompt: PROMPT, max_tokens: 8, temperature: 0, logprobs: 3 });
    const lib = await gpt.generate(PROMPT, { temperature: 0, maxNewTokens: 8, logprobs: 3 });
    const lp = c.choices[0].logprobs;
    if (!lp) throw new Error('no logprobs');
    expect(lp.tokens.length).toBe(lib.tokens.length);
    expect(lp.tokens).toEqual(lib.tokens.map((t) => (gpt.tokenizer as NonNullable<GPT2['tokenizer']>).decode([t])));
    lp.token_logprobs.forEach((v, i) => expect(v).toBeCloseTo((lib.logprobs ?? [])[i].logprob, 10));
    for (const top of lp.top_logprobs) {
      expect(top).not.toBeNull();
      const n = Object.keys(top as object).length;
      expect(n).toBeGreaterThanOrEqual(1);
      expect(n).toBeLessThanOrEqual(3);
    }
    // Greedy: the chosen token is the top alternative.
    lp.tokens.forEach((t, i) => expect((lp.top_logprobs[i] as Record<string, number>)[t]).toBeCloseTo(lp.token_logprobs[i] as number, 10));
    expect(lp.text_offset[0]).toBe(0);
    for (let i = 1; i < lp.text_offset.length; i++) expect(lp.text_offset[i]).toBeGreaterThanOrEqual(lp.text_offset[i - 1]);
    // Streamed, each chunk carries its token's entry.
    const streamed = sse((await post({ prompt: PROMPT, max_tokens: 8, temperature: 0, logprobs: 3, stream: true })).json as string);
    const entries = streamed.events.map((e) => (e.choices as Choice[])[0].logprobs).filter((l): l is NonNullable<Choice['logprobs']> => !!l);
    expect(entries.flatMap((l) => l.token_logprobs)).toEqual(lp.token_logprobs);
    expect(entries.flatMap((l) => l.text_offset)).toEqual(lp.text_offset);
  });
});

describe('other routes', () => {
  test('/v1/models, /health, /metrics', async () => {
    const models = (await (await fetch(`${srv.url}/v1/models`)).json()) as { object: string; data: { id: string; object: string }[] };
    expect(models.object).toBe('list');
    expect(models.data[0]).toMatchObject({ id: 'tiny', object: 'model' });
    const health = await fetch(`${srv.url}/health`);
    expect(health.status).toBe(200);
    expect(await health.json()).toMatchObject({ status: 'ok', queue_depth: 0, running: 0 });
    const m = await fetch(`${srv.url}/metrics`);
    expect(m.headers.get('content-type')).toMatch(/^text\/plain/);
    const text = await m.text();
    expect(text).toMatch(/^gpt2_http_requests_total\{route="\/v1\/completions",status="200"\} \d+/m);
    expect(text).toMatch(/^gpt2_tokens_generated_total [1-9]\d*/m);
    for (const name of ['gpt2_queue_depth 0', 'gpt2_running_rows 0', 'gpt2_tokens_per_second', 'gpt2_time_to_first_token_seconds_count', 'gpt2_completion_duration_seconds_count']) {
      expect(text).toContain(name);
    }
    const nf = await fetch(`${srv.url}/nope`);
    expect(nf.status).toBe(404);
    expect(((await nf.json()) as ErrorBody).error.code).toBe('not_found');
  });
});

describe('validation', () => {
  const cases: [string, unknown, number, string | null][] = [
    ['missing prompt', { max_tokens: 3 }, 400, 'prompt'],
    ['prompt of a wrong type', { prompt: 5 }, 400, 'prompt'],
    ['prompt mixing strings and ids', { prompt: ['a', 1] }, 400, 'prompt'],
    ['empty prompt array', { prompt: [] }, 400, 'prompt'],
    ['empty text prompt', { prompt: '' }, 400, 'prompt'],
    ['negative token id', { prompt: [1, -2] }, 400, 'prompt'],
    ['token id past the vocabulary', { prompt: [1, 50257] }, 400, 'prompt'],
    ['fractional token id', { prompt: [1.5] }, 400, 'prompt'],
    ['prompt longer than maxPromptTokens', { prompt: Array(49).fill(1), max_tokens: 1 }, 400, 'prompt'],
    ['prompt + max_tokens past the context', { prompt: Array(40).fill(1), max_tokens: 30 }, 400, null],
    ['unknown field', { prompt: 'a', foo: 1 }, 400, 'foo'],
    ['max_tokens above the cap', { prompt: 'a', max_tokens: 61 }, 400, 'max_tokens'],
    ['max_tokens as a string', { prompt: 'a', max_tokens: '5' }, 400, 'max_tokens'],
    ['max_tokens 0 without echo', { prompt: 'a', max_tokens: 0 }, 400, 'max_tokens'],
    ['negative max_tokens', { prompt: 'a', max_tokens: -1 }, 400, 'max_tokens'],
    ['temperature above 2', { prompt: 'a', temperature: 2.5 }, 400, 'temperature'],
    ['top_p 0', { prompt: 'a', top_p: 0 }, 400, 'top_p'],
    ['top_k fractional', { prompt: 'a', top_k: 1.5 }, 400, 'top_k'],
    ['min_p above 1', { prompt: 'a', min_p: 1.5 }, 400, 'min_p'],
    ['repetition_penalty 0', { prompt: 'a', repetition_penalty: 0 }, 400, 'repetition_penalty'],
    ['stop empty string', { prompt: 'a', stop: '' }, 400, 'stop'],
    ['five stops', { prompt: 'a', stop: ['a', 'b', 'c', 'd', 'e'] }, 400, 'stop'],
    ['negative seed', { prompt: 'a', seed: -1 }, 400, 'seed'],
    ['n 0', { prompt: 'a', n: 0 }, 400, 'n'],
    ['prompts × n above maxChoices', { prompt: ['a', 'b', 'c'], n: 3 }, 400, 'n'],
    ['logprobs 6', { prompt: 'a', logprobs: 6 }, 400, 'logprobs'],
    ['echo not a boolean', { prompt: 'a', echo: 'yes' }, 400, 'echo'],
    ['stream not a boolean', { prompt: 'a', stream: 1 }, 400, 'stream'],
    ['presence_penalty above 2', { prompt: 'a', presence_penalty: 2.5 }, 400, 'presence_penalty'],
    ['frequency_penalty below -2', { prompt: 'a', frequency_penalty: -2.5 }, 400, 'frequency_penalty'],
    ['logit_bias id past the vocabulary', { prompt: 'a', logit_bias: { '50257': -100 } }, 400, 'logit_bias'],
    ['logit_bias id not a token id', { prompt: 'a', logit_bias: { x: -100 } }, 400, 'logit_bias'],
    ['logit_bias value above 100', { prompt: 'a', logit_bias: { '50256': 101 } }, 400, 'logit_bias'],
    ['logit_bias not an object', { prompt: 'a', logit_bias: [1] }, 400, 'logit_bias'],
    ['best_of (not supported)', { prompt: 'a', best_of: 2 }, 400, 'best_of'],
    ['a model this server does not serve', { prompt: 'a', model: 'gpt-4' }, 404, 'model'],
    ['a body that is not an object', [1, 2], 400, null],
  ];
  test.each(cases.map(([name, ...rest]) => [`${name} → ${rest[1]}`, ...rest] as const))('%s', async (_name, body, status, param) => {
    const r = await post(body);
    expect(r.status).toBe(status);
    const e = (r.json as ErrorBody).error;
    expect(e.type).toBe('invalid_request_error');
    expect(typeof e.message).toBe('string');
    expect(e.message.length).toBeGreaterThan(5);
    expect(e.param).toBe(param);
  });

  test('malformed JSON → 400, not JSON → 415, too large → 413', async () => {
    const bad = await post('{"prompt": "a",');
    expect(bad.status).toBe(400);
    expect((bad.json as ErrorBody).error.type).toBe('invalid_request_error');
    const text = await post('prompt=a', srv, { headers: { 'content-type': 'application/x-www-form-urlencoded' } });
    expect(text.status).toBe(415);
    const big = await post({ prompt: 'x'.repeat(20 * 1024) });
    expect(big.status).toBe(413);
    expect((big.json as ErrorBody).error.code).toBe('body_too_large');
  });

  test('GPT2 errors map to statuses: stop strings on a tokenizer-less model → 400', async () => {
    const bare = new GPT2(gpt.model, null);
    const s = await startServer({ model: bare, port: 0 });
    try {
      const r = await post({ prompt: 'hello' }, s);
      expect(r.status).toBe(400);
      expect((r.json as ErrorBody).error.param).toBe('prompt');
      const st = await post({ prompt: [1, 2], stop: 'x', max_tokens: 2 }, s);
      expect(st.status).toBe(400);
      expect((st.json as ErrorBody).error.message).toMatch(/tokenizer/);
      const ok = await post({ prompt: [1, 2], max_tokens: 2 }, s);
      expect(ok.status).toBe(200);
    } finally {
      await s.close();
    }
  });

  test('startServer checks its options', async () => {
    await expect(startServer({ model: null } as unknown as ServerOptions)).rejects.toMatchObject({ code: 'BAD_OPTION' });
    await expect(startServer({ model: gpt, maxTokens: 0 })).rejects.toMatchObject({ code: 'BAD_OPTION' });
    const port = Number(new URL(srv.url).port);
    await expect(startServer({ model: gpt, port })).rejects.toMatchObject({ code: 'NETWORK' });
  });
});

describe('load, cancellation and lifecycle', () => {
  test('concurrent greedy requests equal the same requests sent one at a time', async () => {
    const prompts = ['Hello', PROMPT, 'It was the best of times, it was', 'A', 'One two three four five six seven', 'GPT-2 is'];
    const body = (p: string, i: number) => ({ prompt: p, max_tokens: 8 + i, temperature: 0, logprobs: 0 });
    const one: Completion[] = [];
    for (let i = 0; i < prompts.length; i++) one.push(await complete(body(prompts[i], i)));
    const stepsBefore = srv.scheduler.stats.steps;
    const together = await Promise.all(prompts.map((p, i) => complete(body(p, i))));
    const steps = srv.scheduler.stats.steps - stepsBefore;
    expect(together.map((c) => c.choices[0].text)).toEqual(one.map((c) => c.choices[0].text));
    expect(together.map((c) => c.choices[0].logprobs?.tokens)).toEqual(one.map((c) => c.choices[0].logprobs?.tokens));
    expect(together.map((c) => c.usage)).toEqual(one.map((c) => c.usage));
    const total = one.reduce((s, c) => s + c.usage.completion_tokens, 0);
    expect(steps).toBeLessThan(total); // they really shared decode steps
  });

  test('a full queue answers 429 with an OpenAI error and Retry-After; the admitted requests finish', async () => {
    const s = await startServer({ model: gpt, port: 0, maxBatch: 1, maxQueue: 1 });
    try {
      const rs = await Promise.all(Array.from({ length: 6 }, (_, i) => post({ prompt: [1 + i, 2], max_tokens: 40, temperature: 0 }, s)));
      const statuses = rs.map((r) => r.status);
      expect(statuses.filter((x) => x === 429).length).toBeGreaterThanOrEqual(3);
      expect(statuses.filter((x) => x === 200).length).toBeGreaterThanOrEqual(1);
      expect(statuses.every((x) => x === 200 || x === 429)).toBe(true);
      const busy = rs.find((r) => r.status === 429);
      expect((busy?.json as ErrorBody).error.code).toBe('queue_full');
      expect(busy?.headers.get('retry-after')).toBe('1');
      const metrics = await (await fetch(`${s.url}/metrics`)).text();
      expect(metrics).toMatch(/gpt2_http_requests_total\{route="\/v1\/completions",status="429"\} [1-9]/);
    } finally {
      await s.close();
    }
    expect(tf.memory().numTensors).toBe(baseline);
  });

  test('a client that disconnects cancels its generation and leaks nothing (streaming and plain)', async () => {
    const ctl = new AbortController();
    const r = await fetch(`${srv.url}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ prompt: [1, 2, 3], max_tokens: 60, temperature: 0, stream: true }),
      signal: ctl.signal,
    });
    const reader = (r.body as ReadableStream<Uint8Array>).getReader();
    await reader.read();
    const tokensAt = srv.scheduler.stats.tokensGenerated;
    ctl.abort();
    await reader.read().catch(() => undefined);
    await idle();
    expect(srv.scheduler.stats.tokensGenerated - tokensAt).toBeLessThan(50);
    expect(tf.memory().numTensors).toBe(baseline);

    const ctl2 = new AbortController();
    const plain = fetch(`${srv.url}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ prompt: [4, 5, 6], max_tokens: 60, temperature: 0 }),
      signal: ctl2.signal,
    }).then(
      () => 'answered',
      (e: { name?: string }) => e.name,
    );
    for (let i = 0; i < 100 && srv.scheduler.running === 0; i++) await new Promise((res) => setTimeout(res, 5));
    const before = srv.scheduler.stats.tokensGenerated;
    ctl2.abort();
    expect(await plain).toBe('AbortError');
    await idle();
    expect(srv.scheduler.stats.tokensGenerated - before).toBeLessThan(55);
    expect(tf.memory().numTensors).toBe(baseline);
    const metrics = await (await fetch(`${srv.url}/metrics`)).text();
    expect(metrics).toMatch(/gpt2_http_requests_total\{route="\/v1\/completions",status="499"\} [2-9]/);
  });

  test('200 sequential requests: no errors, tensor count flat', async () => {
    const counts: number[] = [];
    for (let i = 0; i < 200; i++) {
      const r = await post({ prompt: [(i * 7919) % 50000, 11], max_tokens: 2, temperature: i % 10 ? 0 : 1, seed: i, stream: i % 5 === 0 });
      expect(r.status).toBe(200);
      counts.push(tf.memory().numTensors);
    }
    expect(new Set(counts)).toEqual(new Set([baseline]));
  });

  test('a request past requestTimeoutMs is cancelled with 504', async () => {
    const s = await startServer({ model: gpt, port: 0, requestTimeoutMs: 40, maxBatch: 1 });
    // Each model step takes 5 ms or more: 60 tokens cannot finish within 40 ms however fast the host.
    const stepParts = gpt.model.stepParts.bind(gpt.model);
    const spy = jest.spyOn(gpt.model, 'stepParts').mockImplementation(async (...a: Parameters<typeof stepParts>) => {
      const out = await stepParts(...a);
      await new Promise((r) => setTimeout(r, 5));
      return out;
    });
    try {
      const r = await post({ prompt: [1], max_tokens: 60, temperature: 0 }, s);
      expect(r.status).toBe(504);
      expect((r.json as ErrorBody).error.code).toBe('timeout');
      const st = sse((await post({ prompt: [1], max_tokens: 60, temperature: 0, stream: true }, s)).json as string);
      expect(st.done).toBe(true);
      expect((st.events[st.events.length - 1] as unknown as ErrorBody).error.code).toBe('timeout');
      await idle(s);
    } finally {
      spy.mockRestore();
      await s.close();
    }
    expect(tf.memory().numTensors).toBe(baseline);
  });

  test('echo + logprobs checks the request between prompts: a timeout during scoring skips the rest', async () => {
    const s = await startServer({ model: gpt, port: 0, requestTimeoutMs: 20 });
    const forward = gpt.forward.bind(gpt);
    // Each scoring forward takes 60 ms, past the 20 ms timeout.
    const spy = jest.spyOn(gpt, 'forward').mockImplementation(async (ids: number[]) => {
      const out = await forward(ids);
      await new Promise((r) => setTimeout(r, 60));
      return out;
    });
    try {
      const r = await post({ prompt: [[1, 2], [3, 4], [5, 6]], max_tokens: 0, echo: true, logprobs: 0 }, s);
      expect(r.status).toBe(504);
      expect((r.json as ErrorBody).error.code).toBe('timeout');
      expect(spy).toHaveBeenCalledTimes(1);
    } finally {
      spy.mockRestore();
      await s.close();
    }
    expect(tf.memory().numTensors).toBe(baseline);
  });

  test('many choices share one abort signal whose listener limit fits them (no MaxListenersExceededWarning)', async () => {
    const s = await startServer({ model: gpt, port: 0, maxChoices: 16 });
    // Jest's sandboxed `process` does not see Node's warnings, so check the limit on the signal itself.
    const limits: number[] = [];
    const submit = Scheduler.prototype.submit;
    const spy = jest.spyOn(Scheduler.prototype, 'submit').mockImplementation(function (this: Scheduler, seq: Sequence, onChunk?: (c: StreamChunk) => void) {
      if (seq.options.signal) limits.push(getMaxListeners(seq.options.signal));
      return submit.call(this, seq, onChunk);
    });
    try {
      const r = await complete({ prompt: [1], n: 16, max_tokens: 2, temperature: 0 }, s);
      expect(r.choices).toHaveLength(16);
      expect(limits).toHaveLength(16);
      for (const l of limits) expect(l).toBeGreaterThanOrEqual(16);
    } finally {
      spy.mockRestore();
      await s.close();
    }
    expect(tf.memory().numTensors).toBe(baseline);
  });

  test('graceful close: in-flight requests finish, new ones are refused, tensors are freed', async () => {
    const s = await startServer({ model: gpt, port: 0, shutdownGraceMs: 10_000 });
    const inflight = post({ prompt: [1, 2], max_tokens: 30, temperature: 0 }, s);
    const streamed = post({ prompt: [3], max_tokens: 30, temperature: 0, stream: true }, s);
    for (let i = 0; i < 100 && s.scheduler.running < 2; i++) await new Promise((res) => setTimeout(res, 5));
    const closed = s.close();
    // Refused: either the connection is (503 on a kept-alive socket) or the port is closed.
    const late = await post({ prompt: [1], max_tokens: 2 }, s).catch(() => null);
    if (late) expect(late.status).toBe(503);
    const done = await inflight;
    expect(done.status).toBe(200);
    expect((done.json as Completion).usage.completion_tokens).toBe(30);
    expect(sse((await streamed).json as string).done).toBe(true);
    await closed;
    expect(tf.memory().numTensors).toBe(baseline);
    await expect(fetch(`${s.url}/health`)).rejects.toThrow();
  });

  test('close past the grace period cancels what still runs (503) and returns promptly', async () => {
    const s = await startServer({ model: gpt, port: 0, shutdownGraceMs: 20, maxBatch: 1 });
    const slow = post({ prompt: [1, 2], max_tokens: 60, temperature: 0 }, s);
    for (let i = 0; i < 100 && s.scheduler.running < 1; i++) await new Promise((res) => setTimeout(res, 5));
    const t0 = Date.now();
    await s.close();
    expect(Date.now() - t0).toBeLessThan(3000);
    const r = await slow;
    expect(r.status).toBe(503);
    expect((r.json as ErrorBody).error.code).toBe('shutting_down');
    expect(tf.memory().numTensors).toBe(baseline);
  });
});
