/**
 * The HTTP surface: an OpenAI-compatible completions service over one loaded model.
 *
 * The surface stays thin: parse and validate, turn each (prompt, choice) into a `Sequence`, hand it
 * to the continuous-batching `Scheduler`, format what comes back. All sequences of all requests
 * share the scheduler's one loop, so the model never runs two forward passes at once.
 *
 * Cut by concern, as llama.cpp's tools/server is; this file only wires the parts:
 *   request.ts     the request schema (one row per field) and body → generate options
 *   completion.ts  one completion: abort signal, sequences, prompt scoring, the whole response
 *   stream.ts      Server-Sent Events and the streamed completion
 *   openai.ts      OpenAI's response shapes: the one envelope, the one error body, logprobs
 *   metrics.ts     Prometheus metrics (prom-client)
 *   http.ts        the Fastify transport: limits, errors in OpenAI's shape, shutdown hooks
 * Defaults of every option live in ../options.ts.
 */
import { Server } from 'http';
import { GPT2Error } from '../errors';
import { Scheduler } from '../generate/scheduler';
import { GPT2 } from '../gpt2';
import { SERVER_DEFAULTS } from '../options';
import { CompletionContext, complete } from './completion';
import { createApp } from './http';
import { COMPLETIONS_ROUTE, createMetrics } from './metrics';
import { CompletionBody, completionFields, completionSchema } from './request';

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
  /**
   * Prompt tokens of joining requests fed per step beside the running rows, at most (chunked prefill;
   * default 64); fewer when more would stretch the step past `prefillStretch`.
   */
  prefillChunk?: number;
  /** A step carrying prompt tokens takes at most about this many times a plain decode step (default 1.5; sizes the chunk from measured step times). */
  prefillStretch?: number;
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

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms).unref());

export async function startServer(opts: ServerOptions): Promise<RunningServer> {
  if (!opts || !(opts.model instanceof GPT2)) throw new GPT2Error('BAD_OPTION', 'startServer needs { model }: a GPT2 from loadModel()');
  const gpt = opts.model;
  const d = SERVER_DEFAULTS;
  const {
    host = d.host,
    port = d.port,
    maxBatch = d.maxBatch,
    maxQueue = d.maxQueue,
    prefillChunk = d.prefillChunk,
    prefillStretch = d.prefillStretch,
    maxTokens = d.maxTokens,
    maxPromptTokens = gpt.config.nPositions,
    maxChoices = d.maxChoices,
    requestTimeoutMs = d.requestTimeoutMs,
    bodyLimit = d.bodyLimit,
    modelName = d.modelName,
    shutdownGraceMs = d.shutdownGraceMs,
    bodyTimeoutMs = d.bodyTimeoutMs,
    keepAliveTimeoutMs = d.keepAliveTimeoutMs,
    maxConnections = d.maxConnections,
    logger = d.logger,
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

  const scheduler = new Scheduler(gpt.model, { maxBatch, maxQueue, prefillChunk, prefillStretch });
  const metrics = createMetrics(scheduler);
  const created = Math.floor(Date.now() / 1000);
  let closing: Promise<void> | null = null;
  const inflight = new Set<Promise<unknown>>();
  const app = createApp({ logger, bodyLimit, bodyTimeoutMs, keepAliveTimeoutMs, maxConnections, metrics, closing: () => closing !== null });

  // ── routes ──
  app.get('/health', async (_req, reply) => {
    const body = { status: closing ? 'closing' : 'ok', model: modelName, queue_depth: scheduler.queueDepth, running: scheduler.running };
    return reply.code(closing ? 503 : 200).send(body);
  });

  app.get('/v1/models', async () => ({
    object: 'list',
    data: [{ id: modelName, object: 'model', created, owned_by: 'gpt2-tfjs', context_length: gpt.config.nPositions }],
  }));

  app.get('/metrics', async (_req, reply) => {
    return reply.header('content-type', metrics.registry.contentType).send(await metrics.registry.metrics());
  });

  const fields = completionFields(maxTokens, maxChoices);
  const ctx: CompletionContext = {
    gpt,
    scheduler,
    metrics,
    fields,
    parse: { modelName, maxPromptTokens, maxChoices, vocabSize: gpt.config.vocabSize, tokenizer: gpt.tokenizer },
    maxBatch,
    maxQueue,
    requestTimeoutMs,
  };
  app.post(COMPLETIONS_ROUTE, { schema: { body: completionSchema(fields) } }, async (req, reply) => {
    const work = complete(ctx, req.body as CompletionBody, req, reply);
    inflight.add(work);
    try {
      return await work;
    } finally {
      inflight.delete(work);
    }
  });

  // ── lifecycle ──
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
