/**
 * Continuous batching: many independent requests share one running `Batch` (one forward per
 * decode step for all of them). One async loop owns the model, so there is never more than one
 * forward pass at a time: between steps it gives waiting sequences free rows (their prompts are fed
 * in chunks inside the following steps, beside the running rows' decode tokens: no stall), runs
 * `batch.step()`, hands every row its new chunks and settles finished rows.
 */
import { GPT2Error } from '../errors';
import { SERVER_DEFAULTS } from '../options';
import { GPT2Model } from '../model/gpt2';
import { Batch, GenerateResult, Sequence, StepComposition, StreamChunk } from './generate';

export interface SchedulerOptions {
  /** Rows decoded together at most (default 8). */
  maxBatch?: number;
  /** Sequences waiting beyond the free rows at most; one more is refused with QUEUE_FULL (default 64). */
  maxQueue?: number;
  /** Prompt tokens of joining sequences fed per step beside running rows, at most (default DEFAULT_PREFILL_CHUNK). */
  prefillChunk?: number;
  /**
   * A step that carries prompt tokens beside running rows may take at most about this many times a
   * plain decode step of the rows running once the joining sequences that will decode are in (default
   * 1.5): the per-step prompt budget is sized from measured step times, so the running streams'
   * inter-token latency stays within this factor on any machine, and prompts are admitted as fast as
   * that allows.
   */
  prefillStretch?: number;
}

export interface SchedulerStats {
  /** Completion tokens produced (an end-of-text token included). */
  tokensGenerated: number;
  /** Batched steps run (decode rows and/or prompt chunks). */
  steps: number;
  /** Sequences prefilled (admitted). */
  prefills: number;
  /** Prompt tokens prefilled, and steps that carried both decode rows and prompt tokens. */
  prefillTokens: number;
  mixedSteps: number;
  /** The last step's composition: running rows decoded, prompt tokens fed. */
  lastStep: StepComposition;
  /** Tokens per second over the last few seconds (0 when idle). */
  tokensPerSecond: number;
}

interface Entry {
  seq: Sequence;
  onChunk?: (c: StreamChunk) => void;
  resolve: (r: GenerateResult) => void;
  reject: (e: unknown) => void;
  counted: number;
  unlisten: () => void;
  /** Short prompts admitted before this (long) one although it arrived first. */
  passed: number;
}

const RATE_WINDOW_MS = 10_000;
const yieldToIo = (): Promise<void> => new Promise((r) => setImmediate(r));

/**
 * Prompt tokens prefilled in one forward pass when no row is running: no stream waits on such a step,
 * but a request arriving during it does. Measured on the 124M model, 2 cores, a 900-token prompt
 * every 2 s beside one stream: 64-token passes prefill as fast as 256-token ones (~200 ms for 64,
 * ~850 ms for 256: the weights are re-read per pass, but a prefill pass is compute-bound), and the
 * stream's time to first token fell from 1.5 s to 0.5 s (p50).
 */
const MAX_PREFILL_TOKENS = 64;

/**
 * Prompt tokens that ride in one step beside running rows (chunked prefill); chosen by measurement on
 * the 124M model (docs/server.md).
 */
export const DEFAULT_PREFILL_CHUNK = SERVER_DEFAULTS.prefillChunk;

/**
 * How many prompt tokens may ride in the next step beside `rows` running rows, from measured step
 * times. A step's cost is not linear in its rows: the weights stream from memory once per step (a
 * decode row's whole cost) and each further row adds compute, in jumps where the kernels change tiling.
 * Decode rows and prompt positions cost alike (the wasm kernels run a mixed step as one kernel per
 * block, as a plain one), so steps are timed by their total rows, and the budget is the largest prompt
 * share whose measured (or next larger measured) step stays within `stretch` x a plain step. The plain
 * step is the one the running rows will see anyway once the sequences joining now are in (`rowsAfter`;
 * not measured: the largest measured size below it): admitting them faster does not make their streams
 * slower than that. Past the largest measured size the time is extrapolated from the two largest
 * (never beyond twice the largest, so one wrong guess costs one step), and the table grows as it is
 * used. Noise only ever adds time, so each size keeps a low estimate (a new time replaces it when lower,
 * and raises it by at most 2% when higher), and every 16th mixed step tries one token more than the
 * budget, so a size that once measured slow is measured again.
 */
export class StepBudget {
  /** Low estimates (ms) of a step's time by its total rows (decode rows + prompt tokens). */
  private readonly total = new Map<number, number>();
  private sizes: number[] = [];
  private mixed = 0;

  constructor(readonly stretch: number, readonly max: number) {}

  record(decodeRows: number, prefillTokens: number, ms: number): void {
    if (!decodeRows) return; // prompt-only steps (no stream waits on them) size nothing here
    const n = decodeRows + prefillTokens;
    const old = this.total.get(n);
    this.total.set(n, old === undefined ? ms : Math.min(ms, 1.02 * old));
    if (old === undefined) this.sizes = [...this.total.keys()].sort((a, b) => a - b);
  }

  /** A plain step of n rows, low: measured, else the largest measured size below it; undefined below every measured size. */
  private plain(n: number): number | undefined {
    let at: number | undefined;
    for (const x of this.sizes) if (x <= n) at = this.total.get(x);
    return at;
  }

  /**
   * A step of n rows, high: measured, else the next larger measured size (time grows with rows, in
   * jumps where the tiling changes), else past the largest extrapolated from the two largest (one size
   * known: -Infinity, tried); undefined past twice the largest (not explored yet).
   */
  private cost(n: number): number | undefined {
    const { sizes, total } = this;
    const above = sizes.find((x) => x >= n);
    if (above !== undefined) return total.get(above);
    const largest = sizes[sizes.length - 1];
    if (largest === undefined || n > Math.max(largest + 1, 2 * largest)) return undefined;
    if (sizes.length < 2) return -Infinity;
    const a = sizes[sizes.length - 2];
    const slope = Math.max(0, ((total.get(largest) as number) - (total.get(a) as number)) / (largest - a));
    return (total.get(largest) as number) + slope * (n - largest);
  }

  /**
   * Prompt tokens for the next step beside `rows` running rows, `rowsAfter` (>= rows) of them once the
   * joining sequences are in: 0 while no step of at most that many rows has been timed (that step is
   * then plain, to time it), else 1..max.
   */
  next(rows: number, rowsAfter = rows): number {
    const plain = this.plain(Math.max(rows, rowsAfter));
    if (plain === undefined) return 0;
    const target = this.stretch * plain;
    let n = 0;
    for (let k = 1; k <= this.max; k++) {
      const at = this.cost(rows + k);
      if (at === undefined || at > target) break;
      n = k;
    }
    if (++this.mixed % 16 === 0 && n < this.max) n++; // now and then one more: re-measures a size that once ran slow
    return Math.max(1, n); // one token at least: a prompt always advances
  }
}

export class Scheduler {
  readonly maxBatch: number;
  readonly maxQueue: number;
  private readonly waiting: Entry[] = [];
  private rows: Entry[] = [];
  /** The entries being prefilled: off `waiting`, not yet in `rows`, but each holds a row. */
  private admitting: Entry[] = [];
  private batch: Batch;
  private loop: Promise<void> | null = null;
  private closed = false;
  private readonly jobs: { run: () => Promise<void>; cancel: (e: unknown) => void }[] = [];
  private readonly counters = { tokensGenerated: 0, steps: 0, prefills: 0, prefillTokens: 0, mixedSteps: 0 };
  private last: StepComposition = { decodeRows: 0, prefillTokens: 0 };
  readonly prefillChunk: number;
  readonly prefillStretch: number;
  /** Sizes the prompt share of each step from measured step times. */
  private readonly budget: StepBudget;
  private readonly recent: { t: number; n: number }[] = [];

  constructor(private readonly model: GPT2Model, opts: SchedulerOptions = {}) {
    const { maxBatch = 8, maxQueue = 64, prefillChunk = DEFAULT_PREFILL_CHUNK, prefillStretch = SERVER_DEFAULTS.prefillStretch } = opts;
    if (!Number.isInteger(prefillChunk) || prefillChunk < 1) throw new GPT2Error('BAD_OPTION', `prefillChunk must be an integer ≥ 1, got ${JSON.stringify(prefillChunk)}`);
    if (typeof prefillStretch !== 'number' || !(prefillStretch > 1)) throw new GPT2Error('BAD_OPTION', `prefillStretch must be a number > 1, got ${JSON.stringify(prefillStretch)}`);
    this.prefillChunk = prefillChunk;
    this.prefillStretch = prefillStretch;
    this.budget = new StepBudget(prefillStretch, prefillChunk);
    if (!Number.isInteger(maxBatch) || maxBatch < 1) throw new GPT2Error('BAD_OPTION', `maxBatch must be an integer ≥ 1, got ${JSON.stringify(maxBatch)}`);
    if (!Number.isInteger(maxQueue) || maxQueue < 0) throw new GPT2Error('BAD_OPTION', `maxQueue must be an integer ≥ 0, got ${JSON.stringify(maxQueue)}`);
    this.maxBatch = maxBatch;
    this.maxQueue = maxQueue;
    this.batch = new Batch(model);
  }

  /** Sequences waiting for a row. */
  get queueDepth(): number {
    return this.waiting.length;
  }

  /** Rows in the running batch. */
  get running(): number {
    return this.rows.length;
  }

  /**
   * Sequences that can be submitted now: free rows (taken at the next step boundary) plus free
   * queue places. A request of k sequences checks this before submitting any.
   */
  get room(): number {
    if (this.closed) return 0;
    const freeRows = Math.max(0, this.maxBatch - this.rows.length - this.admitting.length);
    return Math.max(0, this.maxQueue + freeRows - this.waiting.length);
  }

  get stats(): SchedulerStats {
    const now = Date.now();
    this.prune(now);
    const n = this.recent.reduce((s, r) => s + r.n, 0);
    const span = this.recent.length ? Math.max(1000, now - this.recent[0].t) : 1;
    return { ...this.counters, lastStep: { ...this.last }, tokensPerSecond: this.recent.length ? (n * 1000) / span : 0 };
  }

  /**
   * Queues `seq`; resolves with its result when it finishes (aborted via `seq.options.signal`, it
   * resolves with finishReason 'abort' and the text so far). `onChunk` gets each chunk as produced.
   * Rejects with QUEUE_FULL when the queue is full and DISPOSED after `close()`.
   */
  submit(seq: Sequence, onChunk?: (c: StreamChunk) => void): Promise<GenerateResult> {
    if (this.closed) return Promise.reject(new GPT2Error('DISPOSED', 'the scheduler is closed: it accepts no new requests'));
    if (this.room === 0) {
      return Promise.reject(new GPT2Error('QUEUE_FULL', `the queue is full (${this.waiting.length} waiting for ${this.maxBatch} rows): retry later`));
    }
    return new Promise<GenerateResult>((resolve, reject) => {
      const entry: Entry = { seq, onChunk, resolve, reject, counted: 0, unlisten: () => undefined, passed: 0 };
      const signal = seq.options.signal;
      if (signal) {
        // A waiting sequence leaves the queue at once; a running one leaves at the next step.
        const onAbort = (): void => {
          const i = this.waiting.indexOf(entry);
          if (i < 0) return;
          this.waiting.splice(i, 1);
          seq.finish('abort');
          this.settle(entry);
        };
        signal.addEventListener('abort', onAbort, { once: true });
        entry.unlisten = () => signal.removeEventListener('abort', onAbort);
      }
      this.waiting.push(entry);
      this.kick();
    });
  }

  /**
   * Runs `fn` alone on the model at the next step boundary (e.g. scoring a prompt), so that it
   * never overlaps a batch step.
   */
  exclusive<T>(fn: () => Promise<T>): Promise<T> {
    if (this.closed) return Promise.reject(new GPT2Error('DISPOSED', 'the scheduler is closed: it accepts no new requests'));
    return new Promise<T>((resolve, reject) => {
      // Through a promise, so that a synchronous throw in `fn` rejects this job, not the loop.
      this.jobs.push({ run: () => Promise.resolve().then(fn).then(resolve, reject), cancel: reject });
      this.kick();
    });
  }

  /** Stops accepting work, aborts what is waiting or running, waits for the loop, frees the cache. */
  async close(): Promise<void> {
    this.closed = true;
    for (const e of this.waiting.splice(0)) {
      e.seq.finish('abort');
      this.settle(e);
    }
    const closed = new GPT2Error('DISPOSED', 'the scheduler was closed before this job ran');
    for (const j of this.jobs.splice(0)) j.cancel(closed);
    // The loop stops at the next step boundary; rows still running then end as aborted.
    await this.loop;
    for (const e of [...this.rows, ...this.admitting]) {
      e.seq.finish('abort');
      this.settle(e);
    }
    this.rows = [];
    this.admitting = [];
    this.batch.dispose();
  }

  private kick(): void {
    if (this.loop) return;
    // `run` catches what it expects; anything else fails the work it touched, never escapes unhandled.
    this.loop = this.run().catch((err: unknown) => this.crash(err)).finally(() => {
      this.loop = null;
      // Work that arrived while the loop was winding down.
      if (!this.closed && (this.waiting.length || this.jobs.length)) this.kick();
    });
  }

  private async run(): Promise<void> {
    while (!this.closed && (this.waiting.length || this.rows.length || this.admitting.length || this.jobs.length)) {
      // Let HTTP handlers run (new requests, disconnects) between forward passes.
      await yieldToIo();
      for (const j of this.jobs.splice(0)) await j.run();
      // Waiting sequences take free rows at once: their prompts ride in the coming steps (chunked prefill).
      while (this.rows.length + this.admitting.length < this.maxBatch && !this.closed) {
        const i = this.nextWaiting();
        if (i < 0) break;
        const [e] = this.waiting.splice(i, 1);
        this.admitting.push(e);
        this.batch.join(e.seq);
      }
      if ((!this.rows.length && !this.admitting.length) || this.closed) continue;
      let step: StepComposition;
      try {
        // With rows running, at most `prefillChunk` prompt tokens ride in a step, so their next token is
        // never held up by more than that; with none running, prompts go in as fast as they can.
        const t0 = performance.now();
        const rowsAfter = Math.min(this.maxBatch, this.rows.length + this.admitting.filter((e) => e.seq.willDecode).length);
        step = await this.batch.step({ prefillBudget: this.rows.length ? this.budget.next(this.rows.length, rowsAfter) : MAX_PREFILL_TOKENS });
        this.budget.record(step.decodeRows, step.prefillTokens, performance.now() - t0);
      } catch (err) {
        // A failed step leaves the caches unusable: fail its rows (running and joining), start a fresh batch.
        const failed = [...this.rows, ...this.admitting];
        this.rows = [];
        this.admitting = [];
        this.batch.dispose();
        this.batch = new Batch(this.model);
        for (const e of failed) this.fail(e, err);
        continue;
      }
      this.counters.steps++;
      this.counters.prefillTokens += step.prefillTokens;
      if (step.prefillTokens && step.decodeRows) this.counters.mixedSteps++;
      this.last = step;
      const still: Entry[] = [];
      for (const e of this.rows) {
        this.deliver(e);
        if (e.seq.done) this.settle(e);
        else still.push(e);
      }
      const admitting: Entry[] = [];
      for (const e of this.admitting) {
        const joined = !e.seq.done && this.batch.rows.includes(e.seq);
        if (joined || (e.seq.done && e.seq.finishReason !== 'abort')) this.counters.prefills++; // an abort while joining prefilled nothing whole
        if (e.seq.done) this.settle(e);
        else if (joined) {
          this.deliver(e);
          still.push(e);
        } else admitting.push(e);
      }
      this.rows = still;
      this.admitting = admitting;
    }
  }

  /**
   * The waiting sequence that takes the next free row: short prompts (at most `prefillChunk` tokens)
   * first, in arrival order, then long ones, one at a time (one passed over by maxBatch short ones goes
   * before them). Long prompts are prefilled one after another anyway (shortest remaining first), so
   * several admitted together only hold rows that a short request arriving meanwhile then waits for.
   * -1: none may join now.
   */
  private nextWaiting(): number {
    const long = (e: Entry) => e.seq.context.length > this.prefillChunk;
    const firstLong = this.admitting.some(long) ? -1 : this.waiting.findIndex(long);
    // a long prompt passed over by maxBatch short ones goes first: a steady flow of short requests
    // cannot keep it waiting for ever
    if (firstLong >= 0 && this.waiting[firstLong].passed >= this.maxBatch) return firstLong;
    const short = this.waiting.findIndex((e) => !long(e));
    if (short < 0) return firstLong;
    if (firstLong >= 0 && firstLong < short) this.waiting[firstLong].passed++;
    return short;
  }

  /** Hands over the row's new chunks and counts its new tokens. */
  private deliver(e: Entry): void {
    const seq = e.seq;
    while (seq.out.length) {
      const c = seq.out.shift() as StreamChunk;
      if (e.onChunk) {
        try {
          e.onChunk(c);
        } catch {
          // A consumer's failure must not stop the other rows; that consumer aborts its own signal.
        }
      }
    }
    const n = seq.tokens.length + (seq.finishReason === 'eos' ? 1 : 0);
    if (n > e.counted) {
      this.counters.tokensGenerated += n - e.counted;
      const now = Date.now();
      this.recent.push({ t: now, n: n - e.counted });
      this.prune(now);
      e.counted = n;
    }
  }

  private settle(e: Entry): void {
    this.deliver(e);
    e.unlisten();
    e.resolve(e.seq.result());
  }

  private fail(e: Entry, err: unknown): void {
    e.unlisten();
    e.reject(err);
  }

  /** An unexpected throw in the loop: fail the running rows and the pending jobs, start a fresh batch. */
  private crash(err: unknown): void {
    const rows = [...this.rows, ...this.admitting];
    this.rows = [];
    this.admitting = [];
    this.batch.dispose();
    this.batch = new Batch(this.model);
    for (const e of rows) {
      e.seq.finish('abort');
      this.fail(e, err);
    }
    for (const j of this.jobs.splice(0)) j.cancel(err);
  }

  private prune(now: number): void {
    while (this.recent.length && now - this.recent[0].t > RATE_WINDOW_MS) this.recent.shift();
    // Bound memory under heavy load: merge into coarse buckets when too many samples pile up.
    if (this.recent.length > 4096) {
      const merged = this.recent.splice(0, this.recent.length - 1024).reduce((s, r) => s + r.n, 0);
      this.recent.unshift({ t: now - RATE_WINDOW_MS + 1, n: merged });
    }
  }
}
