/**
 * Streaming: Server-Sent Events as OpenAI frames them (`data: <json>\n\n`, no event names, a final
 * `data: [DONE]`), and the streamed completion — echo first, then a chunk per released piece of
 * text, a finish chunk per choice, an error event when cancelled, the usage event when asked for.
 */
import type { ServerResponse } from 'http';
import type { FastifyReply } from 'fastify';
import type { GenerateResult, StreamChunk } from '../generate/generate';
import type { Choice, CompletionContext, RequestAbort } from './completion';
import { HttpError, LegacyLogprobs, OpenAIFinishReason, completionChoice, completionEnvelope, emptyLogprobs, errorBody, finishReason, pushLogprob, toHttpError, usage } from './openai';

export const SSE_HEADERS = Object.freeze({ 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache', connection: 'keep-alive', 'x-accel-buffering': 'no' });

/** The stream's last event. */
export const SSE_DONE = '[DONE]';

/** One SSE event: a string is sent as is, anything else as JSON. */
export function sseFrame(data: unknown): string {
  return `data: ${typeof data === 'string' ? data : JSON.stringify(data)}\n\n`;
}

/** An event stream on a raw response: writes the headers at once; sends nothing once the response is over. */
export class EventStream {
  constructor(private readonly raw: ServerResponse) {
    raw.writeHead(200, SSE_HEADERS);
  }

  send(data: unknown): void {
    if (!this.raw.writableEnded && !this.raw.destroyed) this.raw.write(sseFrame(data));
  }

  /** The connection is gone (the client left, or it was closed under us). */
  get destroyed(): boolean {
    return this.raw.destroyed;
  }

  /** Ends the response; resolves once it is flushed or closed, so a graceful close finds the connection idle. */
  end(): Promise<void> {
    return new Promise<void>((resolve) => {
      this.raw.once('finish', resolve);
      this.raw.once('close', resolve);
      this.raw.end();
    });
  }
}

/** Takes the response from Fastify and opens an event stream on it. */
export function openEventStream(reply: FastifyReply): EventStream {
  reply.hijack();
  return new EventStream(reply.raw);
}

export interface StreamJob {
  id: string;
  choices: Choice[];
  promptTokens: number;
  includeUsage: boolean;
  /** `performance.now()` when the request arrived. */
  t0: number;
}

/** Streams every choice of a request as it generates; the choices are queued whole (the caller checked for room). */
export async function streamChoices(ctx: CompletionContext, job: StreamJob, reply: FastifyReply, abort: RequestAbort): Promise<FastifyReply> {
  const sse = openEventStream(reply);
  const chunk = (index: number, text: string, logprobs: LegacyLogprobs | null, finish: OpenAIFinishReason) =>
    completionEnvelope(job.id, ctx.parse.modelName, [completionChoice(index, text, logprobs, finish)]);
  let first = true;
  let completionTokens = 0;
  try {
    for (const c of job.choices) {
      if (c.head.text || c.head.logprobs) sse.send(chunk(c.index, c.head.text, c.head.logprobs, null));
    }
    const results = await Promise.all(
      job.choices.map(async (c): Promise<GenerateResult | null> => {
        if (!c.seq) {
          sse.send(chunk(c.index, '', null, 'length'));
          return null;
        }
        const r = await ctx.scheduler.submit(c.seq, (ch: StreamChunk) => {
          if (first && ch.token >= 0) {
            first = false;
            ctx.metrics.firstToken(job.t0);
          }
          let lp: LegacyLogprobs | null = null;
          if (c.wantLogprobs && ch.token >= 0) {
            lp = emptyLogprobs();
            pushLogprob(lp, c.view, ch.token, ch.logprob ?? null, ch.topLogprobs ?? null);
          }
          if (ch.text || lp) sse.send(chunk(c.index, ch.text, lp, null));
        });
        completionTokens += r.usage.completionTokens;
        if (r.finishReason !== 'abort') sse.send(chunk(c.index, '', null, finishReason(r)));
        return r;
      }),
    );
    const outcome = abort.outcome(results);
    if (outcome instanceof HttpError) sse.send(errorBody(outcome));
    if (!abort.why) {
      if (job.includeUsage) sse.send(completionEnvelope(job.id, ctx.parse.modelName, [], usage(job.promptTokens, completionTokens)));
      ctx.metrics.completed(job.t0);
    }
    sse.send(SSE_DONE);
  } catch (e) {
    sse.send(errorBody(toHttpError(e)));
    sse.send(SSE_DONE);
  }
  if (abort.why === 'disconnect' || sse.destroyed) {
    ctx.metrics.clientClosed(); // no 'finish', so no onResponse
    return reply;
  }
  await sse.end();
  return reply;
}
