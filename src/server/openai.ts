/**
 * OpenAI's response shapes for the legacy completions API, each written once: the error body, the
 * `text_completion` envelope (plain responses and stream chunks alike), usage, finish reasons and
 * the legacy logprobs object. Pure data builders; nothing here touches a socket.
 */
import { STATUS_CODES } from 'http';
import type { FastifyError } from 'fastify';
import { GPT2ErrorCode, isGPT2Error } from '../errors';
import type { GenerateResult, TextCodec } from '../generate/generate';
import type { TokenLogprob } from '../generate/sampling';

// ─── errors ──────────────────────────────────────────────────────────────────────────────────────

/** An error with its HTTP status and OpenAI-style body fields. */
export class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly param: string | null = null,
    readonly code: string | null = null,
    readonly type = status >= 500 ? 'server_error' : 'invalid_request_error',
  ) {
    super(message);
  }
}

export interface ErrorBody {
  error: { message: string; type: string; param: string | null; code: string | null };
}

/** The one error body: `{"error": {message, type, param, code}}`. */
export function errorBody(e: HttpError): ErrorBody {
  return { error: { message: e.message, type: e.type, param: e.param, code: e.code } };
}

/** A whole HTTP/1.1 error response, for errors answered on the raw socket before a request exists. */
export function rawErrorResponse(e: HttpError): string {
  const body = JSON.stringify(errorBody(e));
  return `HTTP/1.1 ${e.status} ${STATUS_CODES[e.status]}\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`;
}

/** 504: the request ran past the server's requestTimeoutMs. */
export function timeoutError(requestTimeoutMs: number): HttpError {
  return new HttpError(504, `the request did not finish within ${requestTimeoutMs} ms`, null, 'timeout');
}

/** 503: the server is draining (new requests) or cancelled this one past the grace period. */
export function shuttingDownError(): HttpError {
  return new HttpError(503, 'the server is shutting down', null, 'shutting_down');
}

const STATUS_OF: Partial<Record<GPT2ErrorCode, number>> = { BAD_INPUT: 400, BAD_OPTION: 400, CONTEXT_OVERFLOW: 400, QUEUE_FULL: 429, DISPOSED: 503, NON_FINITE: 500 };

type ValidationError = Partial<FastifyError> & { validation?: { instancePath: string; message?: string; keyword: string; params: Record<string, unknown> }[] };

/** Any thrown value as an HttpError: GPT2Errors by code, Fastify's schema and protocol errors, else 500. */
export function toHttpError(e: unknown): HttpError {
  if (e instanceof HttpError) return e;
  if (isGPT2Error(e)) {
    const status = STATUS_OF[e.code] ?? 500;
    const code = e.code === 'CONTEXT_OVERFLOW' ? 'context_length_exceeded' : e.code === 'QUEUE_FULL' ? 'queue_full' : e.code.toLowerCase();
    return new HttpError(status, e.message, null, code, status === 429 ? 'rate_limit_error' : undefined);
  }
  const fe = e as ValidationError;
  if (fe.validation && fe.validation.length) {
    const v = fe.validation[0];
    const path = v.instancePath.replace(/^\//, '').split('/');
    let param = path[0] || null;
    let message: string;
    if (v.keyword === 'required') {
      param = String(v.params.missingProperty);
      message = `missing required parameter: ${param}`;
    } else if (v.keyword === 'additionalProperty' || v.keyword === 'additionalProperties') {
      param = param ? `${param}.${String(v.params.additionalProperty)}` : String(v.params.additionalProperty);
      message = `unrecognized request argument: ${param}`;
    } else if (param === 'prompt') {
      message = 'prompt must be a string, an array of strings, an array of token ids, or an array of arrays of token ids (non-empty)';
    } else {
      message = `${path.join('.')} ${v.message ?? 'is invalid'}`;
    }
    return new HttpError(400, message, param, 'invalid_value');
  }
  const status = typeof fe.statusCode === 'number' ? fe.statusCode : 500;
  if (status === 413) return new HttpError(413, 'the request body is too large', null, 'body_too_large');
  if (status === 415) return new HttpError(415, 'send the body as JSON (Content-Type: application/json)', null, 'unsupported_media_type');
  if (status >= 400 && status < 500) return new HttpError(status, fe.message ?? 'bad request', null, 'invalid_request');
  return new HttpError(500, 'internal server error', null, 'internal_error');
}

// ─── the text_completion envelope ────────────────────────────────────────────────────────────────

export type OpenAIFinishReason = 'length' | 'stop' | null;

export interface CompletionChoice {
  text: string;
  index: number;
  logprobs: LegacyLogprobs | null;
  finish_reason: OpenAIFinishReason;
}

export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
}

export interface CompletionEnvelope {
  id: string;
  object: 'text_completion';
  created: number;
  model: string;
  choices: CompletionChoice[];
  usage?: Usage;
}

export function completionChoice(index: number, text: string, logprobs: LegacyLogprobs | null, finishReason: OpenAIFinishReason): CompletionChoice {
  return { text, index, logprobs, finish_reason: finishReason };
}

export function usage(promptTokens: number, completionTokens: number): Usage {
  return { prompt_tokens: promptTokens, completion_tokens: completionTokens, total_tokens: promptTokens + completionTokens };
}

/**
 * The one envelope: a whole response (with usage), a stream chunk (one choice, no usage) or the
 * stream's final usage event (no choices). `created` is the time it is built, in seconds.
 */
export function completionEnvelope(id: string, model: string, choices: CompletionChoice[], u?: Usage): CompletionEnvelope {
  const out: CompletionEnvelope = { id, object: 'text_completion', created: Math.floor(Date.now() / 1000), model, choices };
  if (u) out.usage = u;
  return out;
}

/** The library's finish reason in OpenAI's terms; no result (echo with max_tokens 0) is 'length', an abort null. */
export function finishReason(r: GenerateResult | null): OpenAIFinishReason {
  if (!r) return 'length';
  if (r.finishReason === 'eos' || r.finishReason === 'stop') return 'stop';
  if (r.finishReason === 'length') return 'length';
  return null;
}

// ─── logprobs in OpenAI's legacy shape ───────────────────────────────────────────────────────────

export interface LegacyLogprobs {
  tokens: string[];
  token_logprobs: (number | null)[];
  top_logprobs: (Record<string, number> | null)[];
  text_offset: number[];
}

/** Per-choice text view of tokens: each token's own string and its offset in the returned text. */
export class TokenText {
  private readonly decoder: { push(id: number): string } | null;
  constructor(private readonly codec: TextCodec | null, public offset: number) {
    this.decoder = codec ? codec.createDecoder() : null;
  }
  str(id: number): string {
    return this.codec ? this.codec.decode([id]) : `<${id}>`;
  }
  /** Appends `id`, returning its string and the offset where it starts. */
  next(id: number): { token: string; offset: number } {
    const at = this.offset;
    this.offset += this.decoder ? this.decoder.push(id).length : 0;
    return { token: this.str(id), offset: at };
  }
}

export function emptyLogprobs(): LegacyLogprobs {
  return { tokens: [], token_logprobs: [], top_logprobs: [], text_offset: [] };
}

/** Appends one token's entry; alternatives that decode to the same string keep the first (the likelier). */
export function pushLogprob(out: LegacyLogprobs, view: TokenText, id: number, logprob: number | null, top: TokenLogprob[] | null): void {
  const { token, offset } = view.next(id);
  out.tokens.push(token);
  out.token_logprobs.push(logprob);
  out.text_offset.push(offset);
  if (!top) {
    out.top_logprobs.push(null);
    return;
  }
  const m: Record<string, number> = {};
  for (const t of top) {
    const s = view.str(t.token);
    if (!(s in m)) m[s] = t.logprob;
  }
  out.top_logprobs.push(m);
}
