/** The server's metrics on their own, over a stand-in scheduler. */
import { COMPLETIONS_ROUTE, SchedulerView, createMetrics } from '../src/server/metrics';

function fakeScheduler(): SchedulerView {
  const stats = { tokensGenerated: 0, steps: 0, prefills: 0, prefillTokens: 0, mixedSteps: 0, lastStep: { decodeRows: 0, prefillTokens: 0 }, tokensPerSecond: 0 };
  return { stats, queueDepth: 0, running: 0 };
}

const line = (text: string, name: string): string | undefined => text.split('\n').find((l) => l.startsWith(name + ' ') || l.startsWith(name + '{'));

test('requests are counted by route and status; a client that left counts as 499 on completions', async () => {
  const m = createMetrics(fakeScheduler());
  m.request(COMPLETIONS_ROUTE, 200);
  m.request(COMPLETIONS_ROUTE, 200);
  m.request('unmatched', 408);
  m.clientClosed();
  const text = await m.registry.metrics();
  expect(text).toContain('gpt2_http_requests_total{route="/v1/completions",status="200"} 2');
  expect(text).toContain('gpt2_http_requests_total{route="unmatched",status="408"} 1');
  expect(text).toContain('gpt2_http_requests_total{route="/v1/completions",status="499"} 1');
});

test('latency and time to first token are observed in seconds since arrival', async () => {
  const m = createMetrics(fakeScheduler());
  m.completed(performance.now() - 1500);
  m.firstToken(performance.now() - 20);
  const text = await m.registry.metrics();
  expect(line(text, 'gpt2_completion_duration_seconds_count')).toBe('gpt2_completion_duration_seconds_count 1');
  const sum = Number(line(text, 'gpt2_completion_duration_seconds_sum')?.split(' ')[1]);
  expect(sum).toBeGreaterThanOrEqual(1.5);
  expect(sum).toBeLessThan(3);
  expect(text).toContain('gpt2_completion_duration_seconds_bucket{le="2.5"} 1');
  expect(text).toContain('gpt2_completion_duration_seconds_bucket{le="1"} 0');
  expect(line(text, 'gpt2_time_to_first_token_seconds_count')).toBe('gpt2_time_to_first_token_seconds_count 1');
});

test('scheduler figures are read at scrape time', async () => {
  const s = fakeScheduler();
  const m = createMetrics(s);
  s.stats.tokensGenerated = 42;
  s.stats.steps = 7;
  s.stats.tokensPerSecond = 12.5;
  (s as { queueDepth: number }).queueDepth = 3;
  (s as { running: number }).running = 2;
  const text = await m.registry.metrics();
  for (const want of ['gpt2_tokens_generated_total 42', 'gpt2_decode_steps_total 7', 'gpt2_queue_depth 3', 'gpt2_running_rows 2', 'gpt2_tokens_per_second 12.5']) expect(text).toContain(want);
  s.stats.tokensGenerated = 50; // counters follow the scheduler's total, not a sum of scrapes
  expect(await m.registry.metrics()).toContain('gpt2_tokens_generated_total 50\n');
});

test("each step's composition (chunked prefill) is exported: rows decoded, prompt tokens fed, totals", async () => {
  const s = fakeScheduler();
  const m = createMetrics(s);
  Object.assign(s.stats, { prefillTokens: 900, mixedSteps: 28, lastStep: { decodeRows: 3, prefillTokens: 17 } });
  const text = await m.registry.metrics();
  for (const want of ['gpt2_prefill_tokens_total 900', 'gpt2_mixed_steps_total 28', 'gpt2_step_decode_rows 3', 'gpt2_step_prefill_tokens 17']) expect(text).toContain(want);
});

test('each server has its own registry', async () => {
  const a = createMetrics(fakeScheduler());
  const b = createMetrics(fakeScheduler());
  a.request(COMPLETIONS_ROUTE, 200);
  expect(await b.registry.metrics()).not.toContain('status="200"');
  expect(a.registry.contentType).toMatch(/^text\/plain/);
});
