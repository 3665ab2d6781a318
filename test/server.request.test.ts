/**
 * The request parser on its own: the field table's schema through the server's real Fastify
 * transport (no model; loopback only), and `parseCompletion` from a body to generate options or a
 * typed HttpError.
 */
import type { FastifyInstance } from 'fastify';
import { createApp } from '../src/server/http';
import { createMetrics } from '../src/server/metrics';
import { ErrorBody, HttpError } from '../src/server/openai';
import { CompletionBody, FieldSpec, ParseContext, completionFields, completionSchema, parseCompletion } from '../src/server/request';
import { Tokenizer, loadTokenizer } from '../src/tokenizer';
import { TINY_DIR, caught } from './helpers';

let tok: Tokenizer;
let ctx: ParseContext;
const fields = completionFields(60, 6);

beforeAll(async () => {
  tok = await loadTokenizer(TINY_DIR);
  ctx = { modelName: 'tiny', maxPromptTokens: 48, maxChoices: 6, vocabSize: 50257, tokenizer: tok };
});

/** The parse's HttpError (the test fails when it parses, or throws something else). */
const parseError = (body: Record<string, unknown>, c: ParseContext = ctx): Promise<HttpError> => caught(parseCompletion(body as CompletionBody, fields, c), HttpError);

describe('parseCompletion: good requests → options', () => {
  test('a bare text prompt takes OpenAI defaults: max_tokens 16, temperature 1, n 1, no echo, no stream', async () => {
    const p = await parseCompletion({ prompt: 'Hello world' }, fields, ctx);
    expect(p.prompts).toEqual([{ ids: tok.encode('Hello world'), text: 'Hello world' }]);
    expect(p.options).toEqual({ maxNewTokens: 16, temperature: 1 });
    expect(p).toMatchObject({ n: 1, maxNew: 16, echo: false, stream: false, includeUsage: false });
  });

  test('every sampling field lands on its GenerateOptions key', async () => {
    const p = await parseCompletion(
      {
        prompt: [1, 2], max_tokens: 5, temperature: 0.5, top_p: 0.9, top_k: 40, min_p: 0.05, repetition_penalty: 1.3, stop: ['\n'], seed: 9, logprobs: 2, n: 3, echo: true, stream: true, stream_options: { include_usage: true },
        presence_penalty: 0.5, frequency_penalty: -1, logit_bias: { '50256': -100, '0': 2.5 },
      },
      fields,
      ctx,
    );
    expect(p.options).toEqual({
      maxNewTokens: 5, temperature: 0.5, topP: 0.9, topK: 40, minP: 0.05, repetitionPenalty: 1.3, stop: ['\n'], seed: 9, logprobs: 2,
      presencePenalty: 0.5, frequencyPenalty: -1, logitBias: { 50256: -100, 0: 2.5 },
    });
    expect(p).toMatchObject({ n: 3, maxNew: 5, echo: true, stream: true, includeUsage: true });
    expect(p.prompts).toEqual([{ ids: [1, 2], text: tok.decode([1, 2]) }]);
  });

  test('null means unset; top_k -1 means off; neutral values of unsupported fields pass', async () => {
    const p = await parseCompletion(
      { prompt: 'a', temperature: null, top_p: null, top_k: -1, seed: null, stop: null, frequency_penalty: null, logit_bias: null, best_of: 1, suffix: '', user: 'u' },
      fields,
      ctx,
    );
    expect(p.options).toEqual({ maxNewTokens: 16, temperature: 1 });
    // The OpenAI fields the library implements pass their neutral values on as they are.
    const neutral = await parseCompletion({ prompt: 'a', presence_penalty: 0, frequency_penalty: 0, logit_bias: {} }, fields, ctx);
    expect(neutral.options).toEqual({ maxNewTokens: 16, temperature: 1, presencePenalty: 0, frequencyPenalty: 0, logitBias: {} });
    expect((await parseCompletion({ prompt: 'a', top_k: 0 }, fields, ctx)).options.topK).toBe(0);
  });

  test('prompt forms: text, ids, texts, id lists; max_tokens 0 with echo scores only', async () => {
    const many = await parseCompletion({ prompt: ['a', 'bc'], n: 2 }, fields, ctx);
    expect(many.prompts.map((x) => x.text)).toEqual(['a', 'bc']);
    const lists = await parseCompletion({ prompt: [[1], [2, 3]] }, fields, ctx);
    expect(lists.prompts.map((x) => x.ids)).toEqual([[1], [2, 3]]);
    const score = await parseCompletion({ prompt: 'a', max_tokens: 0, echo: true }, fields, ctx);
    expect(score.maxNew).toBe(0);
    const bare = await parseCompletion({ prompt: [5, 6] }, fields, { ...ctx, tokenizer: null });
    expect(bare.prompts).toEqual([{ ids: [5, 6], text: '' }]);
  });

  test('adding an OpenAI field is one row: its value reaches GenerateOptions', async () => {
    const extended: Record<string, FieldSpec> = { ...fields, x_min_p: { schema: { type: 'number' }, option: 'minP', map: (v) => Number(v) / 2 } };
    const p = await parseCompletion({ prompt: 'a', x_min_p: 0.1 }, extended, ctx);
    expect(p.options.minP).toBe(0.05);
    expect((completionSchema(extended) as { properties: Record<string, object> }).properties.x_min_p).toEqual({ type: 'number' });
  });
});

describe('parseCompletion: bad requests → typed HttpError', () => {
  const cases: [string, Record<string, unknown>, number, string | null, string][] = [
    ['a model this server does not serve', { prompt: 'a', model: 'gpt-4' }, 404, 'model', 'model_not_found'],
    ['best_of', { prompt: 'a', best_of: 2 }, 400, 'best_of', 'unsupported_parameter'],
    ['suffix', { prompt: 'a', suffix: 'x' }, 400, 'suffix', 'unsupported_parameter'],
    // The sampling fields go through the library's own check (the schema is not run here).
    ['presence_penalty above 2', { prompt: 'a', presence_penalty: 2.5 }, 400, 'presence_penalty', 'invalid_value'],
    ['frequency_penalty below -2', { prompt: 'a', frequency_penalty: -3 }, 400, 'frequency_penalty', 'invalid_value'],
    ['logit_bias id past the vocabulary', { prompt: 'a', logit_bias: { '50257': -100 } }, 400, 'logit_bias', 'invalid_value'],
    ['logit_bias id not an integer', { prompt: 'a', logit_bias: { '1.5': 1 } }, 400, 'logit_bias', 'invalid_value'],
    ['logit_bias id not canonical', { prompt: 'a', logit_bias: { '007': 1 } }, 400, 'logit_bias', 'invalid_value'],
    ['logit_bias value past 100', { prompt: 'a', logit_bias: { '7': 101 } }, 400, 'logit_bias', 'invalid_value'],
    ['temperature negative', { prompt: 'a', temperature: -1 }, 400, 'temperature', 'invalid_value'],
    ['token id past the vocabulary', { prompt: [1, 50257] }, 400, 'prompt', 'invalid_value'],
    ['empty text prompt', { prompt: '' }, 400, 'prompt', 'invalid_value'],
    ['ids past maxPromptTokens', { prompt: Array(49).fill(1) }, 400, 'prompt', 'context_length_exceeded'],
    ['text past the byte bound', { prompt: 'a'.repeat(200_000) }, 400, 'prompt', 'context_length_exceeded'],
    ['prompts × n past maxChoices', { prompt: ['a', 'b', 'c'], n: 3 }, 400, 'n', 'invalid_value'],
    ['max_tokens 0 without echo', { prompt: 'a', max_tokens: 0 }, 400, 'max_tokens', 'invalid_value'],
  ];
  test.each(cases)('%s', async (_name, body, status, param, code) => {
    const e = await parseError(body);
    expect({ status: e.status, param: e.param, code: e.code, type: e.type }).toEqual({ status, param, code, type: 'invalid_request_error' });
    expect(e.message.length).toBeGreaterThan(10);
  });

  test('messages say what was wrong and what to use', async () => {
    expect((await parseError({ prompt: 'a', best_of: 3 })).message).toBe('best_of is not supported by this server (use n)');
    expect((await parseError({ prompt: 'a', suffix: 'x' })).message).toBe('suffix is not supported by this server (insertion is not supported)');
    // The library's message, under the request field's name.
    expect((await parseError({ prompt: 'a', logit_bias: { 50257: 1 } })).message).toBe('logit_bias has token id "50257": ids must be integers in [0, 50256]');
    expect((await parseError({ prompt: 'a', logit_bias: { 7: 101 } })).message).toBe('logit_bias for token 7 must be a number in [-100, 100], got 101');
    expect((await parseError({ prompt: 'a', presence_penalty: 2.5 })).message).toBe('presence_penalty must be a number in [-2, 2] (0 = off), got 2.5');
    expect((await parseError({ prompt: 'a'.repeat(200_000) })).message).toMatch(/^the prompt has at least \d+ tokens; this server takes at most 48$/);
    expect((await parseError({ prompt: 'hi' }, { ...ctx, tokenizer: null })).code).toBe('no_tokenizer');
  });

  test('logit_bias ids are bounded by the ids the sampler may pick: a padded embedding past the tokenizer does not widen them', async () => {
    const padded = { ...ctx, vocabSize: 50304 };
    const e = await parseError({ prompt: 'a', logit_bias: { 50300: 1 } }, padded);
    expect({ param: e.param, code: e.code, message: e.message }).toEqual({ param: 'logit_bias', code: 'invalid_value', message: 'logit_bias has token id "50300": ids must be integers in [0, 50256]' });
    expect((await parseCompletion({ prompt: 'a', logit_bias: { 50256: 1 } }, fields, padded)).options.logitBias).toEqual({ 50256: 1 });
    // No tokenizer: the model's own vocabulary bounds them.
    expect((await parseCompletion({ prompt: [1], logit_bias: { 50303: 1 } }, fields, { ...padded, tokenizer: null })).options.logitBias).toEqual({ 50303: 1 });
  });

  test('a text that only fails after tokenizing is tokenized, then refused', async () => {
    const e = await parseError({ prompt: 'x '.repeat(60) });
    expect(e.message).toMatch(/^the prompt has \d+ tokens/);
  });
});

describe('the schema, through the real transport', () => {
  let app: FastifyInstance;
  let url: string;
  beforeAll(async () => {
    const metrics = createMetrics({ stats: { tokensGenerated: 0, steps: 0, prefills: 0, prefillTokens: 0, mixedSteps: 0, lastStep: { decodeRows: 0, prefillTokens: 0 }, tokensPerSecond: 0 }, queueDepth: 0, running: 0 });
    app = createApp({ logger: false, bodyLimit: 16 * 1024, bodyTimeoutMs: 1000, keepAliveTimeoutMs: 1000, maxConnections: 8, metrics, closing: () => false });
    app.post('/v1/completions', { schema: { body: completionSchema(fields) } }, async (req) => (await parseCompletion(req.body as CompletionBody, fields, ctx)).options);
    url = await app.listen({ host: '127.0.0.1', port: 0 });
  });
  afterAll(async () => {
    await app.close();
  });

  const inject = async (payload: unknown) => {
    const r = await fetch(`${url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(payload) });
    return { status: r.status, json: (await r.json()) as ErrorBody & Record<string, unknown> };
  };

  test('a valid body reaches the parser', async () => {
    const r = await inject({ prompt: 'a', top_k: -1, seed: 3 });
    expect(r).toEqual({ status: 200, json: { maxNewTokens: 16, temperature: 1, seed: 3 } });
  });

  const cases: [unknown, string | null, string][] = [
    [{ max_tokens: 3 }, 'prompt', 'missing required parameter: prompt'],
    [{ prompt: 'a', foo: 1 }, 'foo', 'unrecognized request argument: foo'],
    [{ prompt: 'a', stream_options: { foo: 1 } }, 'stream_options.foo', 'unrecognized request argument: stream_options.foo'],
    [{ prompt: ['a', 1] }, 'prompt', 'prompt must be a string, an array of strings, an array of token ids, or an array of arrays of token ids (non-empty)'],
    [{ prompt: 'a', max_tokens: 61 }, 'max_tokens', 'max_tokens must be <= 60'],
    [{ prompt: 'a', temperature: 2.5 }, 'temperature', 'temperature must be <= 2'],
    [{ prompt: 'a', stop: ['a', 'b', 'c', 'd', 'e'] }, 'stop', expect.stringMatching(/^stop /) as unknown as string],
    [{ prompt: 'a', logprobs: 6 }, 'logprobs', 'logprobs must be <= 5'],
    [{ prompt: 'a', presence_penalty: 2.5 }, 'presence_penalty', 'presence_penalty must be <= 2'],
    [{ prompt: 'a', frequency_penalty: '1' }, 'frequency_penalty', 'frequency_penalty must be number'],
    [{ prompt: 'a', logit_bias: { '7': 101 } }, 'logit_bias', 'logit_bias.7 must be <= 100'],
    [{ prompt: 'a', logit_bias: { '7': 'ban' } }, 'logit_bias', 'logit_bias.7 must be number'],
    [{ prompt: 'a', logit_bias: [1] }, 'logit_bias', 'logit_bias must be object'],
    // Past the schema, the parse's library check: still a 400 naming the field.
    [{ prompt: 'a', logit_bias: { '50257': -100 } }, 'logit_bias', 'logit_bias has token id "50257": ids must be integers in [0, 50256]'],
    [{ prompt: ['a', 'b', 'c', 'd', 'e', 'f', 'g'] }, 'prompt', expect.stringMatching(/^prompt must be/) as unknown as string],
    [[1, 2], null, expect.any(String) as unknown as string],
  ];
  test.each(cases)('%j → 400 invalid_value', async (body, param, message) => {
    const r = await inject(body);
    expect(r.status).toBe(400);
    expect(r.json).toEqual({ error: { message, type: 'invalid_request_error', param, code: 'invalid_value' } });
  });

  test("the schema lists exactly the table's fields, in order, prompt required, nothing else accepted", () => {
    const s = completionSchema(fields) as { type: string; required: string[]; additionalProperties: boolean; properties: Record<string, object> };
    expect(s.required).toEqual(['prompt']);
    expect(s.additionalProperties).toBe(false);
    expect(Object.keys(s.properties)).toEqual(Object.keys(fields));
    expect(Object.keys(fields)).toEqual(
      expect.arrayContaining([
        'model', 'prompt', 'max_tokens', 'temperature', 'top_p', 'top_k', 'min_p', 'repetition_penalty', 'stop', 'seed', 'n', 'logprobs', 'echo', 'stream', 'stream_options',
        'presence_penalty', 'frequency_penalty', 'logit_bias', 'user',
      ]),
    );
  });
});
