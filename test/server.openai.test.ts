/** OpenAI's response shapes on their own: the one envelope, the one error body, error mapping, logprobs. */
import { GPT2Error } from '../src/errors';
import type { GenerateResult } from '../src/generate/generate';
import {
  HttpError,
  TokenText,
  completionChoice,
  completionEnvelope,
  emptyLogprobs,
  errorBody,
  finishReason,
  pushLogprob,
  rawErrorResponse,
  shuttingDownError,
  timeoutError,
  toHttpError,
  usage,
} from '../src/server/openai';
import { Tokenizer, loadTokenizer } from '../src/tokenizer';
import { TINY_DIR } from './helpers';

describe('the envelope', () => {
  test('a whole response: fields in OpenAI order, usage totalled', () => {
    const before = Math.floor(Date.now() / 1000);
    const e = completionEnvelope('cmpl-1', 'tiny', [completionChoice(0, 'hi', null, 'stop')], usage(3, 2));
    expect(Object.keys(e)).toEqual(['id', 'object', 'created', 'model', 'choices', 'usage']);
    expect(e).toEqual({ id: 'cmpl-1', object: 'text_completion', created: expect.any(Number), model: 'tiny', choices: [{ text: 'hi', index: 0, logprobs: null, finish_reason: 'stop' }], usage: { prompt_tokens: 3, completion_tokens: 2, total_tokens: 5 } });
    expect(e.created).toBeGreaterThanOrEqual(before);
    expect(Object.keys(e.choices[0])).toEqual(['text', 'index', 'logprobs', 'finish_reason']);
  });

  test('a stream chunk has no usage key; the usage event has no choices', () => {
    const chunk = completionEnvelope('cmpl-1', 'tiny', [completionChoice(2, 'x', null, null)]);
    expect(JSON.stringify(chunk)).toMatch(/^\{"id":"cmpl-1","object":"text_completion","created":\d+,"model":"tiny","choices":\[\{"text":"x","index":2,"logprobs":null,"finish_reason":null\}\]\}$/);
    const last = completionEnvelope('cmpl-1', 'tiny', [], usage(1, 0));
    expect(JSON.stringify(last)).toMatch(/^\{"id":"cmpl-1","object":"text_completion","created":\d+,"model":"tiny","choices":\[\],"usage":\{"prompt_tokens":1,"completion_tokens":0,"total_tokens":1\}\}$/);
  });

  test('finish reasons in OpenAI terms', () => {
    const r = (finishReason: GenerateResult['finishReason']) => ({ finishReason }) as GenerateResult;
    expect([finishReason(null), finishReason(r('length')), finishReason(r('stop')), finishReason(r('eos')), finishReason(r('abort'))]).toEqual(['length', 'length', 'stop', 'stop', null]);
  });
});

describe('the error body', () => {
  test('one shape: {error: {message, type, param, code}}; type from the status', () => {
    expect(errorBody(new HttpError(400, 'bad n', 'n', 'invalid_value'))).toEqual({ error: { message: 'bad n', type: 'invalid_request_error', param: 'n', code: 'invalid_value' } });
    expect(errorBody(timeoutError(40))).toEqual({ error: { message: 'the request did not finish within 40 ms', type: 'server_error', param: null, code: 'timeout' } });
    expect(errorBody(shuttingDownError())).toEqual({ error: { message: 'the server is shutting down', type: 'server_error', param: null, code: 'shutting_down' } });
  });

  test('on a raw socket: a whole HTTP/1.1 response that closes the connection', () => {
    const e = new HttpError(431, 'the request headers are too large', null, 'headers_too_large');
    const body = JSON.stringify(errorBody(e));
    expect(rawErrorResponse(e)).toBe(`HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n${body}`);
    expect(rawErrorResponse(new HttpError(400, 'é'))).toContain(`Content-Length: ${Buffer.byteLength(JSON.stringify(errorBody(new HttpError(400, 'é'))))}\r\n`);
  });

  test('GPT2Errors map by code', () => {
    const m = (code: ConstructorParameters<typeof GPT2Error>[0]) => {
      const e = toHttpError(new GPT2Error(code, 'msg'));
      return [e.status, e.code, e.type];
    };
    expect(m('BAD_OPTION')).toEqual([400, 'bad_option', 'invalid_request_error']);
    expect(m('CONTEXT_OVERFLOW')).toEqual([400, 'context_length_exceeded', 'invalid_request_error']);
    expect(m('QUEUE_FULL')).toEqual([429, 'queue_full', 'rate_limit_error']);
    expect(m('DISPOSED')).toEqual([503, 'disposed', 'server_error']);
    expect(m('NON_FINITE')).toEqual([500, 'non_finite', 'server_error']);
    expect(m('NETWORK')).toEqual([500, 'network', 'server_error']);
  });

  test('Fastify errors and anything else', () => {
    const v = (keyword: string, instancePath: string, params: Record<string, unknown>, message?: string) => toHttpError({ validation: [{ keyword, instancePath, params, message }] });
    expect(v('required', '', { missingProperty: 'prompt' })).toMatchObject({ status: 400, param: 'prompt', message: 'missing required parameter: prompt', code: 'invalid_value' });
    expect(v('additionalProperties', '', { additionalProperty: 'foo' })).toMatchObject({ param: 'foo', message: 'unrecognized request argument: foo' });
    expect(v('maximum', '/n', {}, 'must be <= 6')).toMatchObject({ param: 'n', message: 'n must be <= 6' });
    expect(toHttpError({ statusCode: 413 })).toMatchObject({ status: 413, code: 'body_too_large' });
    expect(toHttpError({ statusCode: 415 })).toMatchObject({ status: 415, code: 'unsupported_media_type' });
    expect(toHttpError({ statusCode: 400, message: 'Unexpected end of JSON input' })).toMatchObject({ status: 400, code: 'invalid_request', message: 'Unexpected end of JSON input' });
    expect(toHttpError(new Error('secret detail'))).toMatchObject({ status: 500, code: 'internal_error', message: 'internal server error' });
    const same = new HttpError(418, 'x');
    expect(toHttpError(same)).toBe(same);
  });
});

describe('legacy logprobs', () => {
  let tok: Tokenizer;
  beforeAll(async () => {
    tok = await loadTokenizer(TINY_DIR);
  });

  test('tokens, their logprobs, top alternatives by string (the likelier kept), offsets continuing', () => {
    const ids = tok.encode('Hello world');
    const view = new TokenText(tok, 5);
    const out = emptyLogprobs();
    pushLogprob(out, view, ids[0], null, null);
    pushLogprob(out, view, ids[1], -1.5, [{ token: ids[1], logprob: -1.5 }, { token: ids[0], logprob: -2 }, { token: ids[1], logprob: -9 }]);
    expect(out).toEqual({
      tokens: ['Hello', ' world'],
      token_logprobs: [null, -1.5],
      top_logprobs: [null, { ' world': -1.5, Hello: -2 }],
      text_offset: [5, 10],
    });
    expect(view.offset).toBe(5 + 'Hello world'.length);
  });

  test('without a tokenizer, tokens read <id> and offsets stay put', () => {
    const view = new TokenText(null, 0);
    const out = emptyLogprobs();
    pushLogprob(out, view, 7, -1, []);
    expect(out).toEqual({ tokens: ['<7>'], token_logprobs: [-1], top_logprobs: [{}], text_offset: [0] });
  });
});
