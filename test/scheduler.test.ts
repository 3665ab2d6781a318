/** Continuous batching: results equal one-at-a-time generation; queue limits, aborts, close, no leaks. */
import * as tf from '@tensorflow/tfjs-core';
import { GPT2, GenerateOptions, loadModel } from '../src';
import { Batch, Sequence, StreamChunk } from '../src/generate/generate';
import { Scheduler, StepBudget } from '../src/generate/scheduler';
import { TINY_DIR, caught } from './helpers';

let gpt: GPT2;
let baseline: number;
beforeAll(async () => {
  gpt = await loadModel(TINY_DIR, { backend: 'wasm' });
  baseline = tf.memory().numTensors;
});
afterAll(() => gpt.dispose());

const seq = (prompt: number[], o: GenerateOptions): Sequence => new Sequence(prompt, o, gpt.model, gpt.tokenizer);
const prompts = [[464], [15496, 11, 995], [40, 716, 257, 1310, 11, 290], [1, 2], [50, 51, 52, 53, 54, 55, 56, 57, 58], [7, 7, 7], [999, 1000, 1001, 1002]];

test('greedy and seeded rows through the scheduler equal one-at-a-time generation, with rows joining mid-run', async () => {
  const opts = prompts.map((_, i): GenerateOptions => (i % 2 ? { temperature: 0, maxNewTokens: 6 + i } : { seed: 100 + i, maxNewTokens: 4 + 2 * i, topK: 50 }));
  const alone = [];
  for (let i = 0; i < prompts.length; i++) alone.push(await gpt.generate(prompts[i], opts[i]));
  const sched = new Scheduler(gpt.model, { maxBatch: 3, maxQueue: 16 });
  const streamed: number[][] = prompts.map(() => []);
  const together = await Promise.all(prompts.map((p, i) => sched.submit(seq(p, opts[i]), (c: StreamChunk) => c.token >= 0 && streamed[i].push(c.token))));
  expect(together.map((r) => r.tokens)).toEqual(alone.map((r) => r.tokens));
  expect(together.map((r) => r.finishReason)).toEqual(alone.map((r) => r.finishReason));
  expect(streamed).toEqual(alone.map((r) => r.tokens));
  const total = alone.reduce((s, r) => s + r.usage.completionTokens, 0);
  expect(sched.stats.tokensGenerated).toBe(total);
  expect(sched.stats.steps).toBeGreaterThan(0);
  expect(sched.stats.steps).toBeLessThan(total); // rows shared steps
  expect(sched.running).toBe(0);
  expect(sched.queueDepth).toBe(0);
  await sched.close();
  expect(tf.memory().numTensors).toBe(baseline);
});

test('a full queue refuses with QUEUE_FULL; the others finish', async () => {
  const sched = new Scheduler(gpt.model, { maxBatch: 1, maxQueue: 1 });
  // Room is maxQueue plus free rows: two fit, the third is refused.
  const a = sched.submit(seq([1, 2, 3], { temperature: 0, maxNewTokens: 5 }));
  const b = sched.submit(seq([4, 5], { temperature: 0, maxNewTokens: 5 }));
  await expect(sched.submit(seq([6], { temperature: 0, maxNewTokens: 5 }))).rejects.toMatchObject({ code: 'QUEUE_FULL' });
  expect((await a).usage.completionTokens).toBe(5);
  expect((await b).usage.completionTokens).toBe(5);
  await sched.close();
  expect(tf.memory().numTensors).toBe(baseline);
});

test('free rows go to short prompts first, then to long ones one at a time (a long prompt never holds a row a short request waits for)', async () => {
  const sched = new Scheduler(gpt.model, { maxBatch: 3, maxQueue: 4, prefillChunk: 4 }); // long: more than 4 prompt tokens
  const long = (k: number) => Array.from({ length: 20 }, (_, i) => (i * 17 + k) % 1000);
  const firstChunk: { name: string; waiting: number }[] = [];
  const watch = (name: string) => (c: StreamChunk) => {
    if (c.token >= 0 && !firstChunk.some((f) => f.name === name)) firstChunk.push({ name, waiting: sched.queueDepth });
  };
  const opts = { temperature: 0, maxNewTokens: 3 };
  const done = Promise.all([
    sched.submit(seq(long(1), opts), watch('A')),
    sched.submit(seq(long(2), opts), watch('B')),
    sched.submit(seq([5, 6, 7], opts), watch('C')),
  ]);
  const alone = await Promise.all([long(1), long(2), [5, 6, 7]].map((p) => gpt.generate(p, opts)));
  const res = await done;
  expect(res.map((r) => r.tokens)).toEqual(alone.map((r) => r.tokens));
  expect(firstChunk.map((f) => f.name)).toEqual(['C', 'A', 'B']);
  // when C started, A was prefilling and B still waited although a row was free
  expect(firstChunk[0].waiting).toBe(1);
  expect(firstChunk[1].waiting).toBe(1); // A's first token: B is admitted only now
  await sched.close();
  expect(tf.memory().numTensors).toBe(baseline);
});

test('a long prompt passed over by maxBatch short ones takes the next free row', async () => {
  const sched = new Scheduler(gpt.model, { maxBatch: 1, maxQueue: 4, prefillChunk: 4 });
  const order: string[] = [];
  const opts = { temperature: 0, maxNewTokens: 2 };
  const run = (name: string, prompt: number[]) => sched.submit(seq(prompt, opts)).then(() => order.push(name));
  await Promise.all([run('L', Array.from({ length: 12 }, (_, i) => i + 1)), run('S1', [5, 6]), run('S2', [7, 8])]);
  expect(order).toEqual(['S1', 'L', 'S2']); // S1 went first; then L, passed over once with one row, before S2
  await sched.close();
  expect(tf.memory().numTensors).toBe(baseline);
});

test('aborting a running or a waiting row resolves it with "abort" and leaks nothing', async () => {
  const sched = new Scheduler(gpt.model, { maxBatch: 1, maxQueue: 4 });
  const run = new AbortController();
  const wait = new AbortController();
  let chunks = 0;
  const running = sched.submit(seq([1, 2, 3], { temperature: 0, maxNewTokens: 60, signal: run.signal }), () => {
    if (++chunks === 3) run.abort();
  });
  const waiting = sched.submit(seq([4, 5], { temperature: 0, maxNewTokens: 60, signal: wait.signal }));
  const other = sched.submit(seq([6], { temperature: 0, maxNewTokens: 3 }));
  wait.abort();
  const w = await waiting;
  expect(w.finishReason).toBe('abort');
  expect(w.tokens).toEqual([]);
  const r = await running;
  expect(r.finishReason).toBe('abort');
  expect(r.tokens.length).toBeGreaterThanOrEqual(3);
  expect(r.tokens.length).toBeLessThan(60);
  expect((await other).finishReason).toBe('length');
  await sched.close();
  expect(tf.memory().numTensors).toBe(baseline);
});

test('close aborts what runs, refuses new work, and frees the cache', async () => {
  const sched = new Scheduler(gpt.model, { maxBatch: 2, maxQueue: 4 });
  const rows = [sched.submit(seq([1], { temperature: 0, maxNewTokens: 60 })), sched.submit(seq([2, 3], { temperature: 0, maxNewTokens: 60 })), sched.submit(seq([4], { temperature: 0, maxNewTokens: 60 }))];
  await new Promise((r) => setTimeout(r, 30));
  await sched.close();
  const res = await Promise.all(rows);
  expect(res.map((r) => r.finishReason)).toEqual(['abort', 'abort', 'abort']);
  expect((await caught(sched.submit(seq([1], { maxNewTokens: 2 })))).code).toBe('DISPOSED');
  expect(tf.memory().numTensors).toBe(baseline);
});

test('exclusive jobs run between steps, alone on the model', async () => {
  const sched = new Scheduler(gpt.model, { maxBatch: 2 });
  const gen = sched.submit(seq([1, 2], { temperature: 0, maxNewTokens: 10 }));
  const logits = await sched.exclusive(() => gpt.forward([1, 2, 3]));
  expect(logits.length).toBe(3 * gpt.config.vocabSize);
  expect((await gen).tokens.length).toBe(10);
  await sched.close();
  expect(tf.memory().numTensors).toBe(baseline);
});

test('a sequence being prefilled holds its row, so the queue cannot overfill by one', async () => {
  const sched = new Scheduler(gpt.model, { maxBatch: 1, maxQueue: 1 });
  const step = Batch.prototype.step;
  const seen: number[] = [];
  const spy = jest.spyOn(Batch.prototype, 'step').mockImplementation(function (this: Batch, o?: { prefillBudget?: number }) {
    if (this.joiningCount) seen.push(sched.room); // steps that feed the joining sequence's prompt
    return step.call(this, o);
  });
  try {
    await sched.submit(seq([1, 2], { temperature: 0, maxNewTokens: 2 }));
  } finally {
    spy.mockRestore();
  }
  expect(seen).toEqual([1]); // the one row is taken by the joining sequence; one queue place is left
  await sched.close();
  expect(tf.memory().numTensors).toBe(baseline);
});

test('an exclusive job that throws synchronously rejects alone; the loop goes on', async () => {
  const sched = new Scheduler(gpt.model, { maxBatch: 2 });
  const gen = sched.submit(seq([1, 2], { temperature: 0, maxNewTokens: 4 }));
  const boom = (): Promise<number> => {
    throw new Error('boom');
  };
  await expect(sched.exclusive(boom)).rejects.toThrow('boom');
  expect((await gen).tokens.length).toBe(4);
  expect(await sched.exclusive(() => Promise.resolve(7))).toBe(7);
  await sched.close();
  expect(tf.memory().numTensors).toBe(baseline);
});

test('options are checked', () => {
  expect(() => new Scheduler(gpt.model, { maxBatch: 0 })).toThrow(/maxBatch/);
  expect(() => new Scheduler(gpt.model, { maxQueue: -1 })).toThrow(/maxQueue/);
  expect(() => new Scheduler(gpt.model, { prefillChunk: 0 })).toThrow(/prefillChunk/);
  expect(() => new Scheduler(gpt.model, { prefillStretch: 1 })).toThrow(/prefillStretch/);
});

describe('StepBudget: the prompt share of a step, from measured step times', () => {
  test('a plain step first, to time it; past the largest measured size, extrapolated, at most to twice it', () => {
    const b = new StepBudget(2, 64);
    expect(b.next(1)).toBe(0); // nothing timed for 1 row: a plain decode step
    b.record(1, 0, 20);
    expect(b.next(1)).toBe(1); // one size known: one more row is tried
    b.record(1, 1, 24);
    expect(b.next(1)).toBe(3); // 4 ms a row from sizes 1-2 would allow 5 extra rows within 40 ms; exploring stops at size 4
    b.record(1, 3, 38);
    expect(b.next(1)).toBe(3); // sizes 2 and 4 extrapolate 7 ms a row: size 5 (45 ms) does not fit
    expect(b.next(2)).toBe(3); // 2 rows: no plain step timed, but a step of 2 rows (1 + 1 token, 24 ms) was: sizes 3-5 fit 48 ms
    expect(b.next(5)).toBe(3); // 5 rows: no step of 5 timed; the 4-row step's 38 ms bounds a plain one from below (76 ms): sizes 6-8 fit, 9 is past exploring
    const fresh = new StepBudget(2, 64);
    fresh.record(3, 0, 30);
    expect(fresh.next(2)).toBe(0); // nothing timed at or below 2 rows: a plain step first
  });

  test('the plain step is the one the running rows will see once the joining sequences are in', () => {
    const b = new StepBudget(1.5, 64);
    for (const [n, ms] of [[1, 16], [2, 19], [4, 26], [8, 40], [12, 54], [16, 68]] as const) b.record(n, 0, ms);
    expect(b.next(1)).toBe(1); // alone: within 24 ms, one more row (19 ms)
    expect(b.next(1, 8)).toBe(11); // 8 rows once joined: within 60 ms, up to 12 rows (54 ms)
    expect(b.next(7, 8)).toBe(5); // the same bound beside 7 running rows
  });

  test('the largest share whose measured step (or the next larger measured one) stays within stretch x a plain step', () => {
    const b = new StepBudget(2, 64);
    b.record(1, 0, 20); // target: 40 ms
    for (const [n, ms] of [[1, 24], [2, 28], [3, 45], [7, 50], [15, 80]] as const) b.record(1, n, ms); // sizes 2, 3, 4, 8, 16
    expect(b.next(1)).toBe(2); // 3 rows: 28 ms fits; 4 rows: 45 ms does not (the jump where 4-row tiles start)
    const c = new StepBudget(3, 64); // target 60 ms
    c.record(1, 0, 20);
    for (const [n, ms] of [[1, 24], [2, 28], [3, 45], [7, 50], [15, 80]] as const) c.record(1, n, ms);
    expect(c.next(1)).toBe(7); // sizes 5..7 unmeasured, bounded by size 8's 50 ms; size 9..15 by 16's 80 ms: no
  });

  test('every 16th call tries one token more than fits, so a size measured slow once is measured again', () => {
    const b = new StepBudget(2, 64);
    b.record(1, 0, 20);
    b.record(1, 1, 24);
    b.record(1, 2, 70); // size 3 measured slow once (target 40)
    const picks = Array.from({ length: 32 }, () => b.next(1));
    expect(picks.filter((n) => n === 2)).toHaveLength(2); // calls 16 and 32
    expect(picks.filter((n) => n === 1)).toHaveLength(30);
  });

  test('never more than the cap, never less than one token once timed; estimates follow the machine', () => {
    const b = new StepBudget(10, 4);
    b.record(2, 0, 10);
    for (let n = 1; n <= 8; n++) b.record(2, n, 10 + n);
    expect(b.next(2)).toBe(4); // the cap
    const s = new StepBudget(1.1, 64);
    s.record(1, 0, 20);
    s.record(1, 1, 100);
    expect(s.next(1)).toBe(1); // one token at least: a prompt always advances
    s.record(1, 1, 21); // the 2-row step measured fast once: noise only adds time, so the low estimate wins
    expect(s.next(1)).toBe(2); // and 1 ms a row extrapolates size 3 to 22 ms: within 22
    const t = new StepBudget(1.5, 64); // target 30 ms
    t.record(1, 0, 20);
    t.record(1, 1, 21);
    expect(t.next(1)).toBe(3); // sizes 3, 4 extrapolated to 22, 23 ms; exploring stops at twice the largest size
    t.record(1, 1, 500); // one slow outlier raises the estimate by 2% at most
    expect(t.next(1)).toBe(3);
  });
});
