/**
 * The server's Prometheus metrics (prom-client, so the exposition format is right by construction):
 * requests by route and status, completion latency, time to first token, and the scheduler's own
 * counters and gauges read at scrape time. One registry per server, so servers do not share series.
 */
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { Scheduler } from '../generate/scheduler';

export const COMPLETIONS_ROUTE = '/v1/completions';

/** What the metrics read of the scheduler at scrape time. */
export type SchedulerView = Pick<Scheduler, 'stats' | 'queueDepth' | 'running'>;

export interface ServerMetrics {
  readonly registry: Registry;
  /** One answered request (`route` as registered, or 'unmatched'). */
  request(route: string, status: number): void;
  /**
   * A completion whose client left before its answer: there is no response, so no onResponse to
   * count it; it is counted as 499 (nginx's "client closed request").
   */
  clientClosed(): void;
  /** A completion answered in full; `t0` is `performance.now()` when it arrived. */
  completed(t0: number): void;
  /** A streamed completion's first token; `t0` as for `completed`. */
  firstToken(t0: number): void;
}

const since = (t0: number): number => (performance.now() - t0) / 1000;

export function createMetrics(scheduler: SchedulerView): ServerMetrics {
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
  // Totals the scheduler keeps itself: copied in at scrape time.
  const total = (name: string, help: string, read: () => number): void => {
    new Counter({
      name,
      help,
      registers: [registry],
      collect() {
        this.reset();
        this.inc(read());
      },
    });
  };
  total('gpt2_tokens_generated_total', 'Completion tokens generated', () => scheduler.stats.tokensGenerated);
  total('gpt2_decode_steps_total', 'Batched steps run (decode rows and/or prompt chunks)', () => scheduler.stats.steps);
  total('gpt2_prefill_tokens_total', 'Prompt tokens prefilled', () => scheduler.stats.prefillTokens);
  total('gpt2_mixed_steps_total', 'Steps that carried running rows and prompt tokens together (chunked prefill)', () => scheduler.stats.mixedSteps);
  const gauge = (name: string, help: string, read: () => number): void => {
    new Gauge({ name, help, registers: [registry], collect() { this.set(read()); } });
  };
  gauge('gpt2_queue_depth', 'Sequences waiting for a batch row', () => scheduler.queueDepth);
  gauge('gpt2_running_rows', 'Sequences in the running batch', () => scheduler.running);
  gauge('gpt2_tokens_per_second', 'Generation throughput over the last 10 s', () => scheduler.stats.tokensPerSecond);
  gauge('gpt2_step_decode_rows', 'Running rows decoded in the last step', () => scheduler.stats.lastStep.decodeRows);
  gauge('gpt2_step_prefill_tokens', 'Prompt tokens fed in the last step', () => scheduler.stats.lastStep.prefillTokens);

  return {
    registry,
    request: (route, status) => requests.inc({ route, status: String(status) }),
    clientClosed: () => requests.inc({ route: COMPLETIONS_ROUTE, status: '499' }),
    completed: (t0) => latency.observe(since(t0)),
    firstToken: (t0) => ttft.observe(since(t0)),
  };
}
