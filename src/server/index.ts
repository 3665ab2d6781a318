/**
 * The HTTP surface: an OpenAI-compatible completions service over one loaded model.
 *
 * Built on Fastify rather than node:http because it brings, well tested, what a public endpoint
 * needs and we would otherwise hand-write: JSON-schema validation of every body (ajv), body-size
 * limits (413), routing with 404s, keep-alive handling and graceful close. Metrics use prom-client,
 * the standard Prometheus client, so the exposition format is right by construction.
 *
 * The surface stays thin: parse and validate, turn each (prompt, choice) into a `Sequence`, hand it
 * to the continuous-batching `Scheduler`, format what comes back. All sequences of all requests
 * share the scheduler's one loop, so the model never runs two forward passes at once.
 */
import { randomUUID } from 'crypto';
import { setMaxListeners } from 'events';
import { STATUS_CODES, Server } from 'http';
import type { Socket } from 'net';
import Fastify, { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import { GPT2Error, GPT2ErrorCode, isGPT2Error } from '../errors';
import { GenerateOptions, GenerateResult, Sequence, StreamChunk, TextCodec } from '../generate/generate';
import { TokenLogprob, tokenLogprobs } from '../generate/sampling';
import { Scheduler } from '../generate/scheduler';
import { GPT2 } from '../gpt2';

export interface ServerOptions {
  /** The loaded model; the server never disposes it (the caller owns it). */
  model: GPT2;
  /** Interface to bind (default 127.0.0.1: loopback only; use 0.0.0.0 deliberately). */
  host?: string;
  /** Port (default 8080; 0 picks a free one). */
  port?: number;
  /** Rows decoded together (default 8). */
  maxBatch?: number;
  /** Sequences waiting for a row before requests get 429 (default 64). */
  maxQueue?: number;
  /** Largest `max_tokens` a request may ask for (default 256). */
  maxTokens?: number;
  /** Longest prompt in tokens (default: the model's context). */
  maxPromptTokens?: number;
  /** Most completions one request may ask for, prompts × n (default 16). */
  maxChoices?: number;
  /** A request still generating after this long is cancelled (default 120 000 ms). */
  requestTimeoutMs?: number;
  /** Largest request body in bytes (default 1 MiB); larger gets 413. */
  bodyLimit?: number;
  /** The id served at /v1/models and accepted in `model` (default 'gpt2'). */
  modelName?: string;
  /** On close, how long in-flight requests may run before they are cancelled (default 5000 ms). */
  shutdownGraceMs?: number;
  /**
   * A request's headers and body must arrive within this many ms, or it gets 408 and its connection
   * closes (default 10 000): a client trickling bytes cannot hold a connection open.
   */
  bodyTimeoutMs?: number;
  /** An idle keep-alive connection closes after this many ms (default 5000). */
  keepAliveTimeoutMs?: number;
  /** Most open connections; more are closed on arrival (default 512). */
  maxConnections?: number;
  /** Fastify's request logger (default off: library code does not log). */
  logger?: boolean;
}

export interface RunningServer {
  /** Base URL, e.g. http://127.0.0.1:8080 */
  url: string;
  /** Stops accepting, lets in-flight requests finish (up to shutdownGraceMs), cancels the rest, frees the KV cache. */
  close(): Promise<void>;
  server: Server;
  /** The scheduler behind the server (queue depth, running rows, stats). */
  scheduler: Scheduler;
}

// ─── request body ────────────────────────────────────────────────────────────────────────────────

interface CompletionBody {
  model?: string;
  prompt: string | string[] | number[] | number[][];
  max_tokens?: number | null;
  temperature?: number | null;
  top_p?: number | null;
  top_k?: number | null;
  min_p?: number | null;
  repetition_penalty?: number | null;
  stop?: string | string[] | null;
  seed?: number | null;
  n?: number | null;
  logprobs?: number | null;
  echo?: boolean | null;
  stream?: boolean | null;
  stream_options?: { include_usage?: boolean } | null;
  presence_penalty?: number | null;
  frequency_penalty?: number | null;
  best_of?: number | null;
  suffix?: string | null;
  logit_bias?: Record<string, number> | null;
  user?: string;
}

const DEFAULT_MAX_TOKENS = 16; // OpenAI's default for /v1/completions
const MAX_LOGPROBS = 5; // OpenAI's limit for the legacy endpoint
const MAX_STOPS = 4;

function completionSchema(maxTokens: number, maxChoices: number): object {
  const ids = { type: 'array', minItems: 1, items: { type: 'integer', minimum: 0 } };
  const opt = (s: object): object => ({ anyOf: [s, { type: 'null' }] });
  return {
    type: 'object',
    required: ['prompt'],
    additionalProperties: false,
    properties: {
      model: { type: 'string' },
      prompt: {
        anyOf: [
          { type: 'string' },
          { type: 'array', minItems: 1, maxItems: maxChoices, items: { type: 'string' } },
          ids,
          { type: 'array', minItems: 1, maxItems: maxChoices, items: ids },
        ],
      },
      max_tokens: opt({ type: 'integer', minimum: 0, maximum: maxTokens }),
      temperature: opt({ type: 'number', minimum: 0, maximum: 2 }),
      top_p: opt({ type: 'number', exclusiveMinimum: 0, maximum: 1 }),
      top_k: opt({ type: 'integer', minimum: -1 }),
      min_p: opt({ type: 'number', minimum: 0, maximum: 1 }),
      repetition_penalty: opt({ type: 'number', exclusiveMinimum: 0 }),
      stop: opt({ anyOf: [{ type: 'string', minLength: 1 }, { type: 'array', maxItems: MAX_STOPS, items: { type: 'string', minLength: 1 } }] }),
      seed: opt({ type: 'integer', minimum: 0, maximum: 4294967295 }),
      n: opt({ type: 'integer', minimum: 1, maximum: maxChoices }),
      logprobs: opt({ type: 'integer', minimum: 0, maximum: MAX_LOGPROBS }),
      echo: opt({ type: 'boolean' }),
      stream: opt({ type: 'boolean' }),
      stream_options: opt({ type: 'object', additionalProperties: false, properties: { include_usage: { type: 'boolean' } } }),
      // Accepted for client compatibility; only their neutral values are supported (checked below).
      presence_penalty: opt({ type: 'number' }),
      frequency_penalty: opt({ type: 'number' }),
      best_of: opt({ type: 'integer' }),
      suffix: opt({ type: 'string' }),
      logit_bias: opt({ type: 'object' }),
      user: { type: 'string' },
    },
  };
}

// ─── errors ──────────────────────────────────────────────────────────────────────────────────────

/** An error with its HTTP status and OpenAI-style body fields. */
class HttpError extends Error {
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

const STATUS_OF: Partial<Record<GPT2ErrorCode, number>> = { BAD_INPUT: 400, BAD_OPTION: 400, CONTEXT_OVERFLOW: 400, QUEUE_FULL: 429, DISPOSED: 503, NON_FINITE: 500 };

function toHttpError(e: unknown): HttpError {
  if (e instanceof HttpError) return e;
  if (isGPT2Error(e)) {
    const status = STATUS_OF[e.code] ?? 500;
    const code = e.code === 'CONTEXT_OVERFLOW' ? 'context_length_exceeded' : e.code === 'QUEUE_FULL' ? 'queue_full' : e.code.toLowerCase();
    return new HttpError(status, e.message, null, code, status === 429 ? 'rate_limit_error' : undefined);
  }
  const fe = e as Partial<FastifyError> & { validation?: { instancePath: string; message?: string; keyword: string; params: Record<string, unknown> }[] };
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

function errorBody(e: HttpError): object {
  return { error: { message: e.message, type: e.type, param: e.param, code: e.code } };
}

// ─── logprobs in OpenAI's legacy shape ───────────────────────────────────────────────────────────

interface LegacyLogprobs {
  tokens: string[];
  token_logprobs: (number | null)[];
  top_logprobs: (Record<string, number> | null)[];
  text_offset: number[];
}

/** Per-choice text view of tokens: each token's own string and its offset in the returned text. */
class TokenText {
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

function emptyLogprobs(): LegacyLogprobs {
  return { tokens: [], token_logprobs: [], top_logprobs: [], text_offset: [] };
}

function pushLogprob(out: LegacyLogprobs, view: TokenText, id: number, logprob: number | null, top: TokenLogprob[] | null): void {
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

// ─── the server ──────────────────────────────────────────────────────────────────────────────────

interface PromptItem {
  ids: number[];
  text: string; // the prompt as text (for echo)
}

interface Choice {
  index: number;
  prompt: PromptItem;
  seq: Sequence | null; // null: echo with max_tokens 0 (scoring only)
  view: TokenText;
  logprobs: LegacyLogprobs | null;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms).unref());
const yieldToEventLoop = (): Promise<void> => new Promise((r) => setImmediate(r));

export async function startServer(opts: ServerOptions): Promise<RunningServer> {
  if (!opts || !(opts.model instanceof GPT2)) throw new GPT2Error('BAD_OPTION', 'startServer needs { model }: a GPT2 from loadModel()');
  const gpt = opts.model;
  const {
    host = '127.0.0.1',
    port = 8080,
    maxBatch = 8,
    maxQueue = 64,
    maxTokens = 256,
    maxPromptTokens = gpt.config.nPositions,
    maxChoices = 16,
    requestTimeoutMs = 120_000,
    bodyLimit = 1024 * 1024,
    modelName = 'gpt2',
    shutdownGraceMs = 5000,
    bodyTimeoutMs = 10_000,
    keepAliveTimeoutMs = 5000,
    maxConnections = 512,
    logger = false,
  } = opts;
  const positiveInt = (name: string, v: number): void => {
    if (!Number.isInteger(v) || v < 1) throw new GPT2Error('BAD_OPTION', `${name} must be an integer ≥ 1, got ${JSON.stringify(v)}`);
  };
  positiveInt('maxTokens', maxTokens);
  positiveInt('maxPromptTokens', maxPromptTokens);
  positiveInt('maxChoices', maxChoices);
  positiveInt('requestTimeoutMs', requestTimeoutMs);
  positiveInt('bodyLimit', bodyLimit);
  positiveInt('bodyTimeoutMs', bodyTimeoutMs);
  positiveInt('keepAliveTimeoutMs', keepAliveTimeoutMs);
  positiveInt('maxConnections', maxConnections);
  if (typeof modelName !== 'string' || !modelName) throw new GPT2Error('BAD_OPTION', 'modelName must be a non-empty string');

  const scheduler = new Scheduler(gpt.model, { maxBatch, maxQueue });
  const codec = gpt.tokenizer;
  const created = Math.floor(Date.now() / 1000);
  let closing: Promise<void> | null = null;
  const inflight = new Set<Promise<unknown>>();

  // ── metrics ──
  const registry = new Registry();
  const requests = new Counter({ name: 'gpt2_http_requests_total', help: 'HTTP requests by route and status', labelNames: ['route', 'status'], registers: [registry] });
  const latency = new Histogram({
    name: 'gpt2_completion_duration_seconds',
    help: 'Time to finish a completion request',
    buckets: [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
    registers: [registry],
  });
  const ttft = new Histogram({
    name: 'gpt2_time_to_first_token_seconds',
    help: 'Time from a streaming request to its first token',
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
    registers: [registry],
  });
  new Counter({
    name: 'gpt2_tokens_generated_total',
    help: 'Completion tokens generated',
    registers: [registry],
    collect() {
      this.reset();
      this.inc(scheduler.stats.tokensGenerated);
    },
  });
  new Counter({
    name: 'gpt2_decode_steps_total',
    help: 'Batched decode steps run',
    registers: [registry],
    collect() {
      this.reset();
      this.inc(scheduler.stats.steps);
    },
  });
  new Gauge({ name: 'gpt2_queue_depth', help: 'Sequences waiting for a batch row', registers: [registry], collect() { this.set(scheduler.queueDepth); } });
  new Gauge({ name: 'gpt2_running_rows', help: 'Sequences in the running batch', registers: [registry], collect() { this.set(scheduler.running); } });
  new Gauge({ name: 'gpt2_tokens_per_second', help: 'Generation throughput over the last 10 s', registers: [registry], collect() { this.set(scheduler.stats.tokensPerSecond); } });

  /** Errors Node's HTTP parser raises before a request exists (Fastify's default answers in its own shape). */
  const clientError = (err: Error & { code?: string }, socket: Socket): void => {
    if (err.code === 'ECONNRESET' || socket.destroyed) return;
    let e: HttpError;
    if (err.code === 'ERR_HTTP_REQUEST_TIMEOUT') e = new HttpError(408, `the request (headers and body) did not arrive within ${bodyTimeoutMs} ms`, null, 'request_timeout');
    else if (err.code === 'HPE_HEADER_OVERFLOW') e = new HttpError(431, 'the request headers are too large', null, 'headers_too_large');
    else e = new HttpError(400, `malformed HTTP request (${err.code ?? 'parse error'})`, null, 'bad_request');
    requests.inc({ route: 'unmatched', status: String(e.status) });
    if (socket.writable) {
      const body = JSON.stringify(errorBody(e));
      socket.write(`HTTP/1.1 ${e.status} ${STATUS_CODES[e.status]}\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`);
    }
    socket.destroy();
  };

  const app: FastifyInstance = Fastify({
    logger,
    bodyLimit,
    return503OnClosing: false, // answered below, in the OpenAI error shape
    forceCloseConnections: 'idle',
    requestTimeout: bodyTimeoutMs, // headers + body; the response may then take as long as generation needs
    keepAliveTimeout: keepAliveTimeoutMs,
    // Node checks request timeouts every connectionsCheckingInterval (default 30 s): check often enough to keep the promise.
    http: { headersTimeout: bodyTimeoutMs, connectionsCheckingInterval: Math.min(1000, bodyTimeoutMs) },
    clientErrorHandler: clientError,
    frameworkErrors: (err, req, reply) => {
      // Fastify's own errors before routing (a malformed URL such as /%ZZ, bad constraints): OpenAI shape too.
      const e = toHttpError(err);
      void (reply as FastifyReply).code(e.status).send(errorBody(e.status === 400 && /url/i.test(err.message) ? new HttpError(400, `malformed URL: ${req.url}`, null, 'bad_url') : e));
    },
    ajv: { customOptions: { coerceTypes: false, removeAdditional: false, useDefaults: false, allErrors: false } },
  });
  app.server.maxConnections = maxConnections;
  // Bodies are JSON only: text/plain gets 415 instead of a confusing schema error.
  app.removeContentTypeParser('text/plain');

  app.setErrorHandler((err, _req, reply) => {
    const e = toHttpError(err);
    void reply.code(e.status).send(errorBody(e));
  });
  app.setNotFoundHandler((req, reply) => {
    void reply.code(404).send(errorBody(new HttpError(404, `no route ${req.method} ${req.url}`, null, 'not_found')));
  });
  app.addHook('onRequest', async (req, reply) => {
    if (closing && req.url !== '/health') return reply.code(503).header('connection', 'close').send(errorBody(new HttpError(503, 'the server is shutting down', null, 'shutting_down')));
  });
  app.addHook('onSend', async (_req, reply, payload) => {
    // Responses finishing during shutdown end their connection, so the server can close promptly.
    if (closing) reply.header('connection', 'close');
    return payload;
  });
  app.addHook('onResponse', async (req, reply) => {
    requests.inc({ route: req.routeOptions.url ?? 'unmatched', status: String(reply.statusCode) });
  });

  app.get('/health', async (_req, reply) => {
    const body = { status: closing ? 'closing' : 'ok', model: modelName, queue_depth: scheduler.queueDepth, running: scheduler.running };
    return reply.code(closing ? 503 : 200).send(body);
  });

  app.get('/v1/models', async () => ({
    object: 'list',
    data: [{ id: modelName, object: 'model', created, owned_by: 'gpt2-tfjs', context_length: gpt.config.nPositions }],
  }));

  app.get('/metrics', async (_req, reply) => {
    return reply.header('content-type', registry.contentType).send(await registry.metrics());
  });

  app.post('/v1/completions', { schema: { body: completionSchema(maxTokens, maxChoices) } }, async (req: FastifyRequest, reply: FastifyReply) => {
    const work = complete(req.body as CompletionBody, req, reply);
    inflight.add(work);
    try {
      return await work;
    } finally {
      inflight.delete(work);
    }
  });

  /** Turns the body into prompts and per-choice generation options; throws HttpError on what the schema cannot say. */
  async function parse(body: CompletionBody): Promise<{ prompts: PromptItem[]; n: number; options: GenerateOptions; maxNew: number; echo: boolean }> {
    if (body.model !== undefined && body.model !== modelName) {
      throw new HttpError(404, `the model '${body.model}' does not exist; this server serves '${modelName}'`, 'model', 'model_not_found');
    }
    const neutral: [keyof CompletionBody, unknown[], string][] = [
      ['presence_penalty', [0, null], 'use repetition_penalty'],
      ['frequency_penalty', [0, null], 'use repetition_penalty'],
      ['best_of', [1, null], 'use n'],
      ['suffix', ['', null], 'insertion is not supported'],
    ];
    for (const [k, ok, hint] of neutral) {
      if (body[k] !== undefined && !ok.includes(body[k])) throw new HttpError(400, `${k} is not supported by this server (${hint})`, k, 'unsupported_parameter');
    }
    if (body.logit_bias && Object.keys(body.logit_bias).length) throw new HttpError(400, 'logit_bias is not supported by this server', 'logit_bias', 'unsupported_parameter');

    const p = body.prompt;
    const raw: (string | number[])[] = typeof p === 'string' ? [p] : typeof p[0] === 'number' ? [p as number[]] : (p as (string | number[])[]);
    const tooLong = (n: string | number): HttpError =>
      new HttpError(400, `the prompt has ${n} tokens; this server takes at most ${maxPromptTokens}`, 'prompt', 'context_length_exceeded');
    const prompts: PromptItem[] = [];
    for (const x of raw) {
      let ids: number[];
      if (typeof x === 'string') {
        if (!codec) throw new HttpError(400, 'this model has no tokenizer: send the prompt as token ids', 'prompt', 'no_tokenizer');
        // A cheap bound first: no token is longer than maxTokenBytes, so a text this long cannot fit.
        const atLeast = Math.ceil(Buffer.byteLength(x) / codec.maxTokenBytes);
        if (atLeast > maxPromptTokens) throw tooLong(`at least ${atLeast}`);
        await yieldToEventLoop(); // one prompt's tokenizing at a time between other requests
        ids = gpt.encode(x);
      } else {
        ids = x;
        const bad = ids.find((id) => id >= gpt.config.vocabSize);
        if (bad !== undefined) throw new HttpError(400, `token id ${bad} is out of range: ids must be integers in [0, ${gpt.config.vocabSize - 1}]`, 'prompt', 'invalid_value');
      }
      if (ids.length === 0) throw new HttpError(400, 'the prompt is empty: give at least one token', 'prompt', 'invalid_value');
      if (ids.length > maxPromptTokens) throw tooLong(ids.length);
      prompts.push({ ids, text: typeof x === 'string' ? x : codec ? codec.decode(ids) : '' });
    }
    const n = body.n ?? 1;
    if (prompts.length * n > maxChoices) {
      throw new HttpError(400, `${prompts.length} prompt(s) × n=${n} asks for ${prompts.length * n} completions; this server takes at most ${maxChoices} per request`, 'n', 'invalid_value');
    }
    const echo = body.echo ?? false;
    const maxNew = body.max_tokens ?? DEFAULT_MAX_TOKENS;
    if (maxNew === 0 && !echo) throw new HttpError(400, 'max_tokens must be ≥ 1 (0 is allowed only with echo, to score the prompt)', 'max_tokens', 'invalid_value');
    const options: GenerateOptions = {
      maxNewTokens: maxNew,
      temperature: body.temperature ?? 1,
      topP: body.top_p ?? undefined,
      topK: body.top_k === -1 || body.top_k === null ? undefined : body.top_k,
      minP: body.min_p ?? undefined,
      repetitionPenalty: body.repetition_penalty ?? undefined,
      stop: body.stop ?? undefined,
      seed: body.seed ?? undefined,
      logprobs: body.logprobs ?? undefined,
    };
    return { prompts, n, options, maxNew, echo };
  }

  /**
   * Log-probabilities of the prompt's own tokens (echo + logprobs), computed between decode steps;
   * null when `signal` aborted before the forward ran.
   *
   * Cost: `gpt.forward` copies all [T, V] float32 logits back to the host (about 205 MB for 1024
   * tokens of GPT-2) and runs alone on the model, stalling every decoding row while it does; once
   * started it cannot be interrupted. A device-side per-token scorer can replace it here.
   */
  async function promptLogprobs(ids: number[], top: number, signal: AbortSignal): Promise<{ token: number; logprob: number | null; top: TokenLogprob[] | null }[] | null> {
    const V = gpt.config.vocabSize;
    // The job waits for a step boundary: skip the forward if the request was cancelled meanwhile.
    const logits = await scheduler.exclusive(async () => (signal.aborted ? null : gpt.forward(ids)));
    if (!logits) return null;
    return ids.map((id, i) => {
      if (i === 0) return { token: id, logprob: null, top: null };
      const lp = tokenLogprobs(logits.subarray((i - 1) * V, i * V), id, top);
      return { token: id, logprob: lp.logprob, top: lp.top };
    });
  }

  async function complete(body: CompletionBody, req: FastifyRequest, reply: FastifyReply): Promise<unknown> {
    const t0 = performance.now();
    const { prompts, n, options, maxNew, echo } = await parse(body);
    const stream = body.stream ?? false;
    const id = `cmpl-${randomUUID().replace(/-/g, '')}`;

    // Cancellation: a client that goes away, the request timeout, and shutdown all abort this one signal.
    const ctl = new AbortController();
    // Every choice's queued row listens on this one signal (up to maxChoices); no leak warning for that.
    setMaxListeners(maxChoices + 1, ctl.signal);
    let why: 'disconnect' | 'timeout' | null = null;
    const onClose = (): void => {
      if (!reply.raw.writableFinished) {
        why = why ?? 'disconnect';
        ctl.abort();
      }
    };
    reply.raw.on('close', onClose);
    const timer = setTimeout(() => {
      why = why ?? 'timeout';
      ctl.abort();
    }, requestTimeoutMs);
    timer.unref();
    // The socket, not req.raw: a request whose body has been read is destroyed by Node itself (autoDestroy).
    if (req.raw.socket?.destroyed || reply.raw.destroyed) onClose();

    try {
      // Build every sequence before queueing any, so a bad option fails the request whole.
      const choices: Choice[] = [];
      prompts.forEach((pr, pi) => {
        for (let j = 0; j < n; j++) {
          const o: GenerateOptions = { ...options, signal: ctl.signal };
          // Choices of one request draw differently; choice j with seed s uses s + j.
          if (o.seed !== undefined) o.seed = (o.seed + j) >>> 0;
          const seq = maxNew > 0 ? new Sequence(pr.ids, o, gpt.model, codec) : null;
          const view = new TokenText(codec, echo ? pr.text.length : 0);
          choices.push({ index: pi * n + j, prompt: pr, seq, view, logprobs: options.logprobs !== undefined ? emptyLogprobs() : null });
        }
      });
      // Echo: the prompt's text (and with logprobs, its tokens' log-probabilities) comes first.
      const busy = (): GPT2Error => {
        reply.header('retry-after', '1');
        return new GPT2Error('QUEUE_FULL', `the server is busy (${scheduler.queueDepth} waiting): retry later`);
      };
      const scored = new Map<PromptItem, NonNullable<Awaited<ReturnType<typeof promptLogprobs>>>>();
      if (echo && options.logprobs !== undefined) {
        if (scheduler.room === 0) throw busy(); // scoring waits for a step boundary like a queued row
        // Each prompt is one uninterruptible forward: check the request's signal before and after each.
        for (const pr of prompts) {
          if (ctl.signal.aborted) break;
          const lp = await promptLogprobs(pr.ids, options.logprobs, ctl.signal);
          if (!lp) break;
          scored.set(pr, lp);
        }
        if (ctl.signal.aborted) {
          if (why === 'disconnect') {
            requests.inc({ route: '/v1/completions', status: '499' }); // nobody to answer; no response, no onResponse
            return reply;
          }
          throw new HttpError(504, `the request did not finish within ${requestTimeoutMs} ms`, null, 'timeout');
        }
      }
      const echoPart = (c: Choice): { text: string; logprobs: LegacyLogprobs | null } => {
        if (!echo) return { text: '', logprobs: null };
        const lp = scored.get(c.prompt);
        if (!lp) return { text: c.prompt.text, logprobs: null };
        const out = emptyLogprobs();
        const v = new TokenText(codec, 0);
        for (const t of lp) pushLogprob(out, v, t.token, t.logprob, t.top);
        return { text: c.prompt.text, logprobs: out };
      };

      // More rows than the batch and the queue together can ever hold: retrying would never help.
      const rows = choices.filter((c) => c.seq).length;
      if (rows > maxBatch + maxQueue) {
        throw new HttpError(400, `this request needs ${rows} rows (prompts × n) but the server holds at most ${maxBatch + maxQueue} (max batch + max queue); split it`, 'n', 'invalid_value');
      }
      // Checked right before queueing (nothing awaits in between), so a request is queued whole or not at all.
      if (rows > scheduler.room) throw busy();
      if (stream) return await streamChoices(id, choices, echoPart, body, reply, () => why, t0);

      const results = await Promise.all(choices.map((c) => (c.seq ? scheduler.submit(c.seq) : Promise.resolve(null))));
      if (why === 'disconnect') {
        requests.inc({ route: '/v1/completions', status: '499' }); // nobody to answer; no response, no onResponse
        return reply;
      }
      if (why === 'timeout') throw new HttpError(504, `the request did not finish within ${requestTimeoutMs} ms`, null, 'timeout');
      if (results.some((r) => r?.finishReason === 'abort')) throw new HttpError(503, 'the server is shutting down', null, 'shutting_down');

      let completionTokens = 0;
      const out = choices.map((c, i) => {
        const r = results[i];
        const head = echoPart(c);
        let logprobs: LegacyLogprobs | null = null;
        if (c.logprobs) {
          logprobs = head.logprobs ?? emptyLogprobs();
          for (const t of r?.logprobs ?? []) pushLogprob(logprobs, c.view, t.token, t.logprob, t.top);
        }
        completionTokens += r?.usage.completionTokens ?? 0;
        return { text: head.text + (r?.text ?? ''), index: c.index, logprobs, finish_reason: finishReason(r) };
      });
      latency.observe((performance.now() - t0) / 1000);
      const promptTokens = prompts.reduce((s, p) => s + p.ids.length, 0);
      return {
        id,
        object: 'text_completion',
        created: Math.floor(Date.now() / 1000),
        model: modelName,
        choices: out,
        usage: { prompt_tokens: promptTokens, completion_tokens: completionTokens, total_tokens: promptTokens + completionTokens },
      };
    } finally {
      clearTimeout(timer);
      reply.raw.off('close', onClose);
      if (!ctl.signal.aborted) ctl.abort(); // releases any row still queued (e.g. a sibling's submit failed)
    }
  }

  async function streamChoices(
    id: string,
    choices: Choice[],
    echoPart: (c: Choice) => { text: string; logprobs: LegacyLogprobs | null },
    body: CompletionBody,
    reply: FastifyReply,
    why: () => 'disconnect' | 'timeout' | null,
    t0: number,
  ): Promise<FastifyReply> {
    const raw = reply.raw;
    reply.hijack();
    raw.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache', connection: 'keep-alive', 'x-accel-buffering': 'no' });
    const send = (data: unknown): void => {
      if (!raw.writableEnded && !raw.destroyed) raw.write(`data: ${typeof data === 'string' ? data : JSON.stringify(data)}\n\n`);
    };
    const chunk = (index: number, text: string, logprobs: LegacyLogprobs | null, finish: string | null): object => ({
      id,
      object: 'text_completion',
      created: Math.floor(Date.now() / 1000),
      model: modelName,
      choices: [{ text, index, logprobs, finish_reason: finish }],
    });
    let first = true;
    let completionTokens = 0;
    try {
      for (const c of choices) {
        const head = echoPart(c);
        if (head.text || head.logprobs) send(chunk(c.index, head.text, head.logprobs, null));
      }
      const results = await Promise.all(
        choices.map(async (c) => {
          if (!c.seq) {
            send(chunk(c.index, '', null, 'length'));
            return null;
          }
          const r = await scheduler.submit(c.seq, (ch: StreamChunk) => {
            if (first && ch.token >= 0) {
              first = false;
              ttft.observe((performance.now() - t0) / 1000);
            }
            let lp: LegacyLogprobs | null = null;
            if (c.logprobs && ch.token >= 0) {
              lp = emptyLogprobs();
              pushLogprob(lp, c.view, ch.token, ch.logprob ?? null, ch.topLogprobs ?? null);
            }
            if (ch.text || lp) send(chunk(c.index, ch.text, lp, null));
          });
          completionTokens += r.usage.completionTokens;
          if (r.finishReason !== 'abort') send(chunk(c.index, '', null, finishReason(r)));
          return r;
        }),
      );
      const w = why();
      if (w === 'timeout') send(errorBody(new HttpError(504, `the request did not finish within ${requestTimeoutMs} ms`, null, 'timeout')));
      else if (!w && results.some((r) => r?.finishReason === 'abort')) send(errorBody(new HttpError(503, 'the server is shutting down', null, 'shutting_down')));
      if (!w) {
        if (body.stream_options?.include_usage) {
          const promptTokens = [...new Set(choices.map((c) => c.prompt))].reduce((s, p) => s + p.ids.length, 0);
          send({
            id,
            object: 'text_completion',
            created: Math.floor(Date.now() / 1000),
            model: modelName,
            choices: [],
            usage: { prompt_tokens: promptTokens, completion_tokens: completionTokens, total_tokens: promptTokens + completionTokens },
          });
        }
        latency.observe((performance.now() - t0) / 1000);
      }
      send('[DONE]');
    } catch (e) {
      const he = toHttpError(e);
      send(errorBody(he));
      send('[DONE]');
    }
    if (why() === 'disconnect' || raw.destroyed) {
      requests.inc({ route: '/v1/completions', status: '499' }); // no 'finish', so no onResponse
      return reply;
    }
    // Wait until the response is flushed, so that a graceful close finds the connection idle.
    await new Promise<void>((resolve) => {
      raw.once('finish', resolve);
      raw.once('close', resolve);
      raw.end();
    });
    return reply;
  }

  try {
    await app.listen({ host, port });
  } catch (e) {
    await app.close().catch(() => undefined);
    await scheduler.close();
    throw new GPT2Error('NETWORK', `could not listen on ${host}:${port}: ${(e as Error).message}; pick another port or stop what holds it`, { cause: e });
  }
  const addr = app.server.address();
  const boundPort = addr && typeof addr === 'object' ? addr.port : port;
  const url = `http://${host.includes(':') ? `[${host}]` : host}:${boundPort}`;

  async function close(): Promise<void> {
    if (closing) return closing;
    closing = (async () => {
      // Still listening while in-flight requests drain, so new ones (and /health) get 503, not ECONNREFUSED.
      const grace = sleep(shutdownGraceMs);
      while (inflight.size) {
        const done = await Promise.race([Promise.allSettled([...inflight]).then(() => true), grace.then(() => false)]);
        if (!done) break;
      }
      const stopped = app.close(); // stops listening; idle keep-alive connections close now
      await scheduler.close(); // cancels what is still running and frees the KV cache
      await Promise.allSettled([...inflight]);
      app.server.closeIdleConnections();
      // A connection still open now has nothing left to send to it.
      if (!(await Promise.race([stopped.then(() => true), sleep(1000).then(() => false)]))) app.server.closeAllConnections();
      await stopped;
    })();
    return closing;
  }

  return { url, close, server: app.server, scheduler };
}

function finishReason(r: GenerateResult | null): 'length' | 'stop' | null {
  if (!r) return 'length';
  if (r.finishReason === 'eos' || r.finishReason === 'stop') return 'stop';
  if (r.finishReason === 'length') return 'length';
  return null;
}
