/**
 * The HTTP transport: a Fastify instance with the server's limits, where every error — schema,
 * protocol, routing, a request Node's parser rejects before it exists, a request during shutdown —
 * answers in OpenAI's error shape, and every answered request is counted.
 *
 * Fastify rather than node:http because it brings, well tested, what a public endpoint needs and we
 * would otherwise hand-write: JSON-schema validation of every body (ajv), body-size limits (413),
 * routing with 404s, keep-alive handling and graceful close.
 */
import type { Socket } from 'net';
import Fastify, { FastifyInstance, FastifyReply } from 'fastify';
import type { ServerMetrics } from './metrics';
import { HttpError, errorBody, rawErrorResponse, shuttingDownError, toHttpError } from './openai';

export interface TransportOptions {
  logger: boolean;
  bodyLimit: number;
  bodyTimeoutMs: number;
  keepAliveTimeoutMs: number;
  maxConnections: number;
  metrics: ServerMetrics;
  /** True once the server is draining: new requests (but /health) get 503 and connections close. */
  closing: () => boolean;
}

/** Errors Node's HTTP parser raises before a request exists (Fastify's default answers in its own shape). */
function clientErrorHandler(o: TransportOptions) {
  return (err: Error & { code?: string }, socket: Socket): void => {
    if (err.code === 'ECONNRESET' || socket.destroyed) return;
    let e: HttpError;
    if (err.code === 'ERR_HTTP_REQUEST_TIMEOUT') e = new HttpError(408, `the request (headers and body) did not arrive within ${o.bodyTimeoutMs} ms`, null, 'request_timeout');
    else if (err.code === 'HPE_HEADER_OVERFLOW') e = new HttpError(431, 'the request headers are too large', null, 'headers_too_large');
    else e = new HttpError(400, `malformed HTTP request (${err.code ?? 'parse error'})`, null, 'bad_request');
    o.metrics.request('unmatched', e.status);
    if (socket.writable) socket.write(rawErrorResponse(e));
    socket.destroy();
  };
}

export function createApp(o: TransportOptions): FastifyInstance {
  const app: FastifyInstance = Fastify({
    logger: o.logger,
    bodyLimit: o.bodyLimit,
    return503OnClosing: false, // answered below, in the OpenAI error shape
    forceCloseConnections: 'idle',
    requestTimeout: o.bodyTimeoutMs, // headers + body; the response may then take as long as generation needs
    keepAliveTimeout: o.keepAliveTimeoutMs,
    // Node checks request timeouts every connectionsCheckingInterval (default 30 s): check often enough to keep the promise.
    http: { headersTimeout: o.bodyTimeoutMs, connectionsCheckingInterval: Math.min(1000, o.bodyTimeoutMs) },
    clientErrorHandler: clientErrorHandler(o),
    frameworkErrors: (err, req, reply) => {
      // Fastify's own errors before routing (a malformed URL such as /%ZZ, bad constraints): OpenAI shape too.
      const e = toHttpError(err);
      void (reply as FastifyReply).code(e.status).send(errorBody(e.status === 400 && /url/i.test(err.message) ? new HttpError(400, `malformed URL: ${req.url}`, null, 'bad_url') : e));
    },
    ajv: { customOptions: { coerceTypes: false, removeAdditional: false, useDefaults: false, allErrors: false } },
  });
  app.server.maxConnections = o.maxConnections;
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
    if (o.closing() && req.url !== '/health') return reply.code(503).header('connection', 'close').send(errorBody(shuttingDownError()));
  });
  app.addHook('onSend', async (_req, reply, payload) => {
    // Responses finishing during shutdown end their connection, so the server can close promptly.
    if (o.closing()) reply.header('connection', 'close');
    return payload;
  });
  app.addHook('onResponse', async (req, reply) => {
    o.metrics.request(req.routeOptions.url ?? 'unmatched', reply.statusCode);
  });
  return app;
}
