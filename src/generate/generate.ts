/**
 * The generation loop: prefill → decode steps, stop rules, streaming, abort — for one sequence or
 * a running batch. A `Batch` holds the shared KV cache of its rows; each `Sequence` holds its own
 * sampling state, so rows can join (after their own prefill) and leave at any step.
 */
import { GPT2Error } from '../errors';
import { GPT2Model, KVCache, StepPart } from '../model/gpt2';
import { GENERATE_DEFAULTS } from '../options';
import { makeRng } from './rng';
import { Sampler, SamplingOptions, TokenLogprob, tokenLogprobs, vocabBounds } from './sampling';
import { StopText, stopList } from './stops';

/** What generation needs of a tokenizer (the tokenizer module's Tokenizer satisfies it). */
export interface TextCodec {
  readonly vocabSize: number;
  encode(text: string, opts?: { allowSpecial?: boolean }): number[];
  decode(ids: readonly number[]): string;
  createDecoder(): { push(id: number): string; flush(): string };
}

export type FinishReason = 'length' | 'stop' | 'eos' | 'abort';

export interface GenerateOptions extends SamplingOptions {
  /** Tokens to generate at most (default 64, `GENERATE_DEFAULTS` in src/options.ts, capped by the room the prompt leaves). */
  maxNewTokens?: number;
  /** Seeds the draw (MT19937, NumPy's legacy stream): same seed → same text on every backend. */
  seed?: number;
  /** Stop strings, matched on the decoded text; the match and what follows are not returned. */
  stop?: string | string[];
  /** Ends generation when sampled (default: the model's eos, 50256); null disables. */
  eosTokenId?: number | null;
  /** Report each chosen token's log-probability plus this many top alternatives (0 = chosen only). */
  logprobs?: number;
  /** Aborts generation; `generate` then resolves with finishReason 'abort', `stream` just ends. */
  signal?: AbortSignal;
  /** Prompt + maxNewTokens past the context: 'error' (default) or 'left' (keep the latest tokens). */
  truncate?: 'error' | 'left';
  /** Encode `<|endoftext|>` in a text prompt as the special token (default false). */
  allowSpecial?: boolean;
}

export interface StreamChunk {
  /** The generated token id; -1 for a final chunk that only releases held-back text. */
  token: number;
  /** Newly printable text (never half a UTF-8 character; held back while it may start a stop string). */
  text: string;
  logprob?: number;
  topLogprobs?: TokenLogprob[];
}

export interface GenerateResult {
  text: string;
  tokens: number[];
  finishReason: FinishReason;
  usage: { promptTokens: number; completionTokens: number };
  logprobs?: { token: number; logprob: number; top: TokenLogprob[] }[];
}

/** One sequence's state: context, sampler, stop rules, incremental text. */
export class Sequence {
  readonly context: number[];
  readonly promptTokens: number;
  readonly tokens: number[] = [];
  readonly logprobs: { token: number; logprob: number; top: TokenLogprob[] }[] = [];
  finishReason: FinishReason | null = null;
  /** Chunks produced and not yet taken by the consumer. */
  readonly out: StreamChunk[] = [];
  private completion = 0;
  private readonly sampler: Sampler;
  private readonly stopText: StopText;
  private readonly decoder: { push(id: number): string; flush(): string } | null;
  private readonly maxNew: number;
  private readonly eos: number | null;

  constructor(prompt: number[], readonly options: GenerateOptions, model: GPT2Model, codec: TextCodec | null) {
    const c = model.config;
    const o = options;
    if (!Array.isArray(prompt) || prompt.length === 0) throw new GPT2Error('BAD_INPUT', 'the prompt is empty: give at least one token');
    for (const id of prompt) {
      if (!Number.isInteger(id) || id < 0 || id >= c.vocabSize) throw new GPT2Error('BAD_INPUT', `token id ${id} is out of range: ids must be integers in [0, ${c.vocabSize - 1}]`);
    }
    // Unset, the budget is the default capped by the room the prompt leaves (a short context still works).
    const maxNew = o.maxNewTokens ?? Math.max(1, Math.min(GENERATE_DEFAULTS.maxNewTokens, c.nPositions - prompt.length + 1, c.nPositions - 1));
    if (!Number.isInteger(maxNew) || maxNew < 1) throw new GPT2Error('BAD_OPTION', `maxNewTokens must be an integer ≥ 1, got ${JSON.stringify(o.maxNewTokens)}`);
    if (o.truncate !== undefined && o.truncate !== 'error' && o.truncate !== 'left') throw new GPT2Error('BAD_OPTION', `truncate must be 'error' or 'left', got ${JSON.stringify(o.truncate)}`);
    if (o.logprobs !== undefined && (!Number.isInteger(o.logprobs) || o.logprobs < 0 || o.logprobs > 20)) throw new GPT2Error('BAD_OPTION', `logprobs must be an integer in [0, 20], got ${JSON.stringify(o.logprobs)}`);
    if (o.eosTokenId !== undefined && o.eosTokenId !== null && (!Number.isInteger(o.eosTokenId) || o.eosTokenId < 0 || o.eosTokenId >= c.vocabSize)) {
      throw new GPT2Error('BAD_OPTION', `eosTokenId must be a token id in [0, ${c.vocabSize - 1}] or null`);
    }
    const stops = stopList(o.stop);
    if (stops.length && !codec) throw new GPT2Error('BAD_OPTION', 'stop strings need a tokenizer; this model has none (pass token ids and use eosTokenId)');
    if (maxNew > c.nPositions) throw new GPT2Error('CONTEXT_OVERFLOW', `maxNewTokens (${maxNew}) exceeds the model's context of ${c.nPositions}`);
    // The last generated token is never fed back, so prompt + maxNew - 1 positions are needed.
    const room = c.nPositions - maxNew + 1;
    let ids = prompt;
    if (prompt.length > room) {
      if (o.truncate !== 'left') {
        throw new GPT2Error('CONTEXT_OVERFLOW', `prompt of ${prompt.length} tokens + maxNewTokens ${maxNew} exceeds the context of ${c.nPositions}; shorten it, lower maxNewTokens, or pass truncate: 'left'`);
      }
      ids = prompt.slice(prompt.length - room);
    }
    this.context = ids.slice();
    this.promptTokens = ids.length;
    // A model whose embedding is padded past the tokenizer's vocabulary must never pick a padding id.
    this.sampler = new Sampler(o, makeRng(o.seed), vocabBounds(c.vocabSize, codec));
    this.stopText = new StopText(stops);
    this.decoder = codec ? codec.createDecoder() : null;
    this.maxNew = maxNew;
    this.eos = o.eosTokenId === undefined ? c.eosTokenId : o.eosTokenId;
  }

  /** Whether it decodes after its prompt (more than one new token allowed): a batch row once joined. */
  get willDecode(): boolean {
    return this.maxNew > 1;
  }

  get done(): boolean {
    return this.finishReason !== null;
  }

  get aborted(): boolean {
    return !!this.options.signal?.aborted;
  }

  /** Picks the next token from this row's logits and updates text, stops and finish state. */
  accept(logits: Float32Array): void {
    const token = this.sampler.sample(logits, this.context, this.promptTokens);
    this.completion++;
    const lp = this.options.logprobs !== undefined ? tokenLogprobs(logits, token, this.options.logprobs) : null;
    if (token === this.eos) {
      this.finish('eos');
      return;
    }
    this.context.push(token);
    this.tokens.push(token);
    if (lp) this.logprobs.push({ token, logprob: lp.logprob, top: lp.top });
    const text = this.decoder ? this.decoder.push(token) : '';
    const chunk: StreamChunk = { token, text: this.addText(text) };
    if (lp) {
      chunk.logprob = lp.logprob;
      chunk.topLogprobs = lp.top;
    }
    this.out.push(chunk);
    if (!this.done && this.tokens.length >= this.maxNew) this.finish('length');
  }

  /** Appends decoded text, applies stop strings, returns what may be shown now. */
  private addText(piece: string): string {
    const shown = this.stopText.push(piece);
    if (this.stopText.stopped) this.finishReason = 'stop';
    return shown;
  }

  /** Ends the sequence; whatever text was held back is released (as a last chunk when non-empty). */
  finish(reason: FinishReason): void {
    if (this.done) return;
    this.finishReason = reason;
    const rest = this.decoder ? this.decoder.flush() : '';
    const tail = rest ? this.addText(rest) : '';
    if (reason !== 'length') this.finishReason = reason; // a stop string in the flushed tail does not hide an abort or eos
    const held = this.finishReason === 'stop' ? '' : this.stopText.flush();
    const text = tail + held;
    if (text) {
      const last = this.out[this.out.length - 1];
      if (last) last.text += text;
      else this.out.push({ token: -1, text });
    }
  }

  result(): GenerateResult {
    const r: GenerateResult = {
      text: this.stopText.text,
      tokens: this.tokens.slice(),
      finishReason: this.finishReason ?? 'length',
      usage: { promptTokens: this.promptTokens, completionTokens: this.completion },
    };
    if (this.options.logprobs !== undefined) r.logprobs = this.logprobs.slice();
    return r;
  }
}

/** What one batch step ran: the running rows' decode tokens and the joining prompts' tokens. */
export interface StepComposition {
  decodeRows: number;
  prefillTokens: number;
}

/** A sequence whose prompt is being prefilled in chunks inside the running steps. */
interface Joining {
  seq: Sequence;
  cache: KVCache;
  fed: number; // prompt tokens already in `cache`
}

/**
 * A running batch: rows share one KV cache (left-padded to a common length) and one forward per
 * decode step. Rows join after their prefill — alone (`admit`), or in chunks that ride in the decode
 * steps (`join`: no stall of the running rows) — and leave when finished.
 */
export class Batch {
  readonly rows: Sequence[] = [];
  private readonly cache = new KVCache([]);
  private readonly joining: Joining[] = [];
  /** Every step's logits land here: each row samples from them before the next step (see StepOptions.into). */
  private logits = new Float32Array(0);
  constructor(private readonly model: GPT2Model) {}

  /** The logits buffer, grown to hold `rows` rows. */
  private logitsFor(rows: number): Float32Array {
    const n = rows * this.model.config.vocabSize;
    if (this.logits.length < n) this.logits = new Float32Array(n);
    return this.logits;
  }

  get size(): number {
    return this.rows.length;
  }

  /** Sequences whose prompts are still being fed (see `join`). */
  get joiningCount(): number {
    return this.joining.length;
  }

  /**
   * Queues `seq` to join the batch: from the next `step` on, its prompt is fed in chunks within that
   * step's prefill budget, in the same forward pass as the running rows' decode tokens, into a cache of
   * its own; once the whole prompt is in, it samples its first token and becomes a row.
   */
  join(seq: Sequence): void {
    this.joining.push({ seq, cache: new KVCache([0]), fed: 0 });
  }

  /** Prefills `seq` alone (only its last position goes through the head), samples its first token, and adds it. */
  async admit(seq: Sequence): Promise<void> {
    if (seq.aborted) {
      seq.finish('abort');
      return;
    }
    const own = new KVCache([0]);
    try {
      const logits = await this.model.step([seq.context], own, { lastOnly: true, into: this.logitsFor(1) });
      seq.accept(logits);
      if (seq.done) return;
      this.cache.append(own);
      this.rows.push(seq);
    } finally {
      own.dispose();
    }
  }

  /**
   * One step: every row decodes one token and, within `prefillBudget` prompt tokens (default: no
   * limit), the joining sequences' prompts advance, shortest remaining first — one forward pass for
   * all of it (chunked prefill, as Sarathi-Serve / vLLM). A joining sequence whose prompt is complete
   * samples its first token and becomes a row; finished and aborted rows leave.
   */
  async step(opts: { prefillBudget?: number } = {}): Promise<StepComposition> {
    for (const r of this.rows) if (r.aborted) r.finish('abort');
    this.compact();
    for (const j of this.joining.filter((j) => j.seq.aborted)) this.dropJoining(j, 'abort');
    const parts: StepPart[] = [];
    if (this.rows.length) parts.push({ ids: this.rows.map((r) => [r.context[r.context.length - 1]]), cache: this.cache });
    let budget = opts.prefillBudget ?? Infinity;
    const fed: { j: Joining; n: number }[] = [];
    // Shortest remaining prompt first: a short request is not held behind a long prompt's whole
    // prefill (each step still advances the longest by whatever budget the shorter ones leave).
    const order = [...this.joining].sort((a, b) => a.seq.context.length - a.fed - (b.seq.context.length - b.fed));
    for (const j of order) {
      if (budget < 1) break;
      const n = Math.min(budget, j.seq.context.length - j.fed);
      parts.push({ ids: [j.seq.context.slice(j.fed, j.fed + n)], cache: j.cache });
      fed.push({ j, n });
      budget -= n;
    }
    const composition = { decodeRows: this.rows.length, prefillTokens: fed.reduce((t, f) => t + f.n, 0) };
    if (!parts.length) return composition;
    const logits = await this.model.stepParts(parts, { lastOnly: true, into: this.logitsFor(this.rows.length + fed.length) });
    const V = this.model.config.vocabSize;
    const rowLogits = this.rows.length ? (logits.shift() as Float32Array) : null;
    this.rows.forEach((r, b) => {
      if (r.aborted) r.finish('abort');
      else r.accept((rowLogits as Float32Array).subarray(b * V, (b + 1) * V));
    });
    this.compact();
    fed.forEach(({ j, n }, i) => {
      j.fed += n;
      if (j.fed < j.seq.context.length) return;
      this.joining.splice(this.joining.indexOf(j), 1);
      if (j.seq.aborted) j.seq.finish('abort');
      else j.seq.accept(logits[i]);
      if (j.seq.done) j.cache.dispose();
      else {
        this.cache.append(j.cache); // its rows move into the batch's cache; j.cache ends empty
        this.rows.push(j.seq);
      }
    });
    return composition;
  }

  private dropJoining(j: Joining, reason: FinishReason): void {
    this.joining.splice(this.joining.indexOf(j), 1);
    j.seq.finish(reason);
    j.cache.dispose();
  }

  private compact(): void {
    if (this.rows.every((r) => !r.done)) return;
    const keep: number[] = [];
    this.rows.forEach((r, i) => !r.done && keep.push(i));
    this.cache.keepRows(keep);
    const live = keep.map((i) => this.rows[i]);
    this.rows.splice(0, this.rows.length, ...live);
  }

  /** Releases the caches; rows still running or joining end as aborted. */
  dispose(): void {
    for (const j of this.joining.slice()) this.dropJoining(j, 'abort');
    for (const r of this.rows) r.finish('abort');
    this.rows.length = 0;
    this.cache.dispose();
  }
}

/** Runs `seqs` to completion together (one forward per step for all of them). */
export async function runToEnd(model: GPT2Model, seqs: Sequence[]): Promise<void> {
  const batch = new Batch(model);
  try {
    for (const s of seqs) await batch.admit(s);
    while (batch.size > 0) await batch.step();
  } finally {
    batch.dispose();
  }
}

/** Streams one sequence: yields its chunks as they are produced; cleans up on break or abort. */
export async function* streamSequence(model: GPT2Model, seq: Sequence): AsyncGenerator<StreamChunk> {
  const batch = new Batch(model);
  try {
    await batch.admit(seq);
    for (;;) {
      while (seq.out.length) yield seq.out.shift() as StreamChunk;
      if (seq.done || batch.size === 0) break;
      await batch.step();
    }
    while (seq.out.length) yield seq.out.shift() as StreamChunk;
  } finally {
    batch.dispose();
  }
}
