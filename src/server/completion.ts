/**
 * One /v1/completions request from parsed body to answer: its abort signal (client gone, timeout),
 * a `Sequence` per (prompt, choice) built before any is queued, prompt scoring for echo + logprobs,
 * then the whole response — or the stream, handed to stream.ts.
 */
import { randomUUID } from 'crypto';
import { setMaxListeners } from 'events';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { GPT2Error } from '../errors';
import { GenerateOptions, GenerateResult, Sequence } from '../generate/generate';
import { TokenLogprob, tokenLogprobs } from '../generate/sampling';
import type { Scheduler } from '../generate/scheduler';
import type { GPT2 } from '../gpt2';
import type { ServerMetrics } from './metrics';
import { HttpError, LegacyLogprobs, TokenText, completionChoice, completionEnvelope, emptyLogprobs, finishReason, pushLogprob, shuttingDownError, timeoutError, usage } from './openai';
import { CompletionBody, FieldSpec, ParseContext, PromptItem, parseCompletion } from './request';
import { streamChoices } from './stream';

/** What a completion needs of the server. */
export interface CompletionContext {
  gpt: GPT2;
  scheduler: Scheduler;
  metrics: ServerMetrics;
  fields: Record<string, FieldSpec>;
  parse: ParseContext;
  maxBatch: number;
  maxQueue: number;
  requestTimeoutMs: number;
}

/** The echoed prompt at the head of a choice: its text, and with logprobs its tokens' entries. */
export interface EchoPart {
  text: string;
  logprobs: LegacyLogprobs | null;
}

export interface Choice {
  index: number;
  prompt: PromptItem;
  /** null: echo with max_tokens 0 (scoring only). */
  seq: Sequence | null;
  /** The completion's tokens as text, offsets continuing after the echo. */
  view: TokenText;
  wantLogprobs: boolean;
  head: EchoPart;
}

type PromptScores = { token: number; logprob: number | null; top: TokenLogprob[] | null }[];

/**
 * A request's one abort signal: a client that goes away and the request timeout both abort it
 * (shutdown aborts the rows themselves, through the scheduler).
 */
export class RequestAbort {
  private readonly ctl = new AbortController();
  why: 'disconnect' | 'timeout' | null = null;
  private readonly timer: NodeJS.Timeout;
  private readonly onClose = (): void => {
    if (!this.reply.raw.writableFinished) {
      this.why = this.why ?? 'disconnect';
      this.ctl.abort();
    }
  };

  constructor(req: FastifyRequest, private readonly reply: FastifyReply, private readonly timeoutMs: number, listeners: number) {
    // Every choice's queued row listens on this one signal; no leak warning for that.
    setMaxListeners(listeners, this.ctl.signal);
    reply.raw.on('close', this.onClose);
    this.timer = setTimeout(() => {
      this.why = this.why ?? 'timeout';
      this.ctl.abort();
    }, timeoutMs);
    this.timer.unref();
    // The socket, not req.raw: a request whose body has been read is destroyed by Node itself (autoDestroy).
    if (req.raw.socket?.destroyed || reply.raw.destroyed) this.onClose();
  }

  get signal(): AbortSignal {
    return this.ctl.signal;
  }

  /** What a cancelled request answers: 'gone' (nobody to answer), 504 (timeout), 503 (rows aborted by shutdown), or null. */
  outcome(results: (GenerateResult | null)[]): 'gone' | HttpError | null {
    if (this.why === 'disconnect') return 'gone';
    if (this.why === 'timeout') return timeoutError(this.timeoutMs);
    if (results.some((r) => r?.finishReason === 'abort')) return shuttingDownError();
    return null;
  }

  /** Stops listening; aborts what is still queued (e.g. a sibling's submit failed). */
  release(): void {
    clearTimeout(this.timer);
    this.reply.raw.off('close', this.onClose);
    if (!this.ctl.signal.aborted) this.ctl.abort();
  }
}

/**
 * Log-probabilities of the prompt's own tokens (echo + logprobs), computed between decode steps;
 * null when `signal` aborted before the forward ran.
 *
 * Cost: `gpt.forward` copies all [T, V] float32 logits back to the host (about 205 MB for 1024
 * tokens of GPT-2) and runs alone on the model, stalling every decoding row while it does; once
 * started it cannot be interrupted. A device-side per-token scorer can replace it here.
 */
async function promptLogprobs(ctx: CompletionContext, ids: number[], top: number, signal: AbortSignal): Promise<PromptScores | null> {
  const V = ctx.gpt.config.vocabSize;
  // The job waits for a step boundary: skip the forward if the request was cancelled meanwhile.
  const logits = await ctx.scheduler.exclusive(async () => (signal.aborted ? null : ctx.gpt.forward(ids)));
  if (!logits) return null;
  return ids.map((id, i) => {
    if (i === 0) return { token: id, logprob: null, top: null };
    const lp = tokenLogprobs(logits.subarray((i - 1) * V, i * V), id, top);
    return { token: id, logprob: lp.logprob, top: lp.top };
  });
}

function echoPart(ctx: CompletionContext, prompt: PromptItem, echo: boolean, scores: PromptScores | undefined): EchoPart {
  if (!echo) return { text: '', logprobs: null };
  if (!scores) return { text: prompt.text, logprobs: null };
  const out = emptyLogprobs();
  const v = new TokenText(ctx.gpt.tokenizer, 0);
  for (const t of scores) pushLogprob(out, v, t.token, t.logprob, t.top);
  return { text: prompt.text, logprobs: out };
}

export async function complete(ctx: CompletionContext, body: CompletionBody, req: FastifyRequest, reply: FastifyReply): Promise<unknown> {
  const t0 = performance.now();
  const { prompts, n, options, maxNew, echo, stream, includeUsage } = await parseCompletion(body, ctx.fields, ctx.parse);
  const id = `cmpl-${randomUUID().replace(/-/g, '')}`;
  const codec = ctx.gpt.tokenizer;
  const abort = new RequestAbort(req, reply, ctx.requestTimeoutMs, ctx.parse.maxChoices + 1);
  /** Answers a cancelled request; true when it was. */
  const cancelled = (results: (GenerateResult | null)[]): boolean => {
    const outcome = abort.outcome(results);
    if (outcome instanceof HttpError) throw outcome;
    if (outcome === 'gone') ctx.metrics.clientClosed(); // nobody to answer; no response, no onResponse
    return outcome === 'gone';
  };

  try {
    // Build every sequence before queueing any, so a bad option fails the request whole.
    const choices: Choice[] = [];
    prompts.forEach((pr, pi) => {
      for (let j = 0; j < n; j++) {
        const o: GenerateOptions = { ...options, signal: abort.signal };
        // Choices of one request draw differently; choice j with seed s uses s + j.
        if (o.seed !== undefined) o.seed = (o.seed + j) >>> 0;
        const seq = maxNew > 0 ? new Sequence(pr.ids, o, ctx.gpt.model, codec) : null;
        const view = new TokenText(codec, echo ? pr.text.length : 0);
        choices.push({ index: pi * n + j, prompt: pr, seq, view, wantLogprobs: options.logprobs !== undefined, head: { text: '', logprobs: null } });
      }
    });
    const busy = (): GPT2Error => {
      reply.header('retry-after', '1');
      return new GPT2Error('QUEUE_FULL', `the server is busy (${ctx.scheduler.queueDepth} waiting): retry later`);
    };
    // Echo: the prompt's text (and with logprobs, its tokens' log-probabilities) comes first.
    const scored = new Map<PromptItem, PromptScores>();
    if (echo && options.logprobs !== undefined) {
      if (ctx.scheduler.room === 0) throw busy(); // scoring waits for a step boundary like a queued row
      // Each prompt is one uninterruptible forward: check the request's signal before and after each.
      for (const pr of prompts) {
        if (abort.signal.aborted) break;
        const lp = await promptLogprobs(ctx, pr.ids, options.logprobs, abort.signal);
        if (!lp) break;
        scored.set(pr, lp);
      }
      if (abort.signal.aborted && cancelled([])) return reply;
    }
    for (const c of choices) c.head = echoPart(ctx, c.prompt, echo, scored.get(c.prompt));

    // More rows than the batch and the queue together can ever hold: retrying would never help.
    const rows = choices.filter((c) => c.seq).length;
    const capacity = ctx.maxBatch + ctx.maxQueue;
    if (rows > capacity) throw new HttpError(400, `this request needs ${rows} rows (prompts × n) but the server holds at most ${capacity} (max batch + max queue); split it`, 'n', 'invalid_value');
    // Checked right before queueing (nothing awaits in between), so a request is queued whole or not at all.
    if (rows > ctx.scheduler.room) throw busy();
    const promptTokens = prompts.reduce((s, p) => s + p.ids.length, 0);
    if (stream) return await streamChoices(ctx, { id, choices, promptTokens, includeUsage, t0 }, reply, abort);

    const results = await Promise.all(choices.map((c) => (c.seq ? ctx.scheduler.submit(c.seq) : Promise.resolve(null))));
    if (cancelled(results)) return reply;

    let completionTokens = 0;
    const out = choices.map((c, i) => {
      const r = results[i];
      let logprobs: LegacyLogprobs | null = null;
      if (c.wantLogprobs) {
        logprobs = c.head.logprobs ?? emptyLogprobs();
        for (const t of r?.logprobs ?? []) pushLogprob(logprobs, c.view, t.token, t.logprob, t.top);
      }
      completionTokens += r?.usage.completionTokens ?? 0;
      return completionChoice(c.index, c.head.text + (r?.text ?? ''), logprobs, finishReason(r));
    });
    ctx.metrics.completed(t0);
    return completionEnvelope(id, ctx.parse.modelName, out, usage(promptTokens, completionTokens));
  } finally {
    abort.release();
  }
}
