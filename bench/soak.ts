/**
 * Soak test for the HTTP service: mixed traffic, hostile requests and mid-stream disconnects for a
 * fixed time against an in-process server on 127.0.0.1, reporting requests, unexpected answers,
 * latency, event-loop delay, RSS and tensor count over time. Bounded in time and in concurrency;
 * numbers are printed, never asserted.
 *
 *   npx tsx bench/soak.ts --minutes 10 --concurrency 8            # bundled model, wasm
 *   npx tsx bench/soak.ts --minutes 1 --model weights/tiny-random
 *
 * Before the soak, it times the hostile-prompt case alone: 1 MiB prompts (one unbroken run) sent
 * while /health is polled, giving the worst /health round trip and the event-loop delay meanwhile.
 */
/* eslint-disable no-console */
import { Command } from 'commander';
import { monitorEventLoopDelay } from 'perf_hooks';
import * as tf from '@tensorflow/tfjs-core';
import { BACKENDS, BackendName, loadModel } from '../src';
import { startServer } from '../src/server';

interface Kind {
  name: string;
  weight: number;
  /** Statuses that are the right answer to this request. */
  expect: number[];
  run(url: string): Promise<{ status: number; ms: number }>;
}

function quantile(xs: number[], q: number): number {
  if (!xs.length) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil(q * s.length) - 1))];
}

async function timed(f: () => Promise<number>): Promise<{ status: number; ms: number }> {
  const t0 = performance.now();
  const status = await f();
  return { status, ms: performance.now() - t0 };
}

const json = { 'content-type': 'application/json' };
const post = (url: string, body: string, headers: Record<string, string> = json, signal?: AbortSignal) =>
  fetch(`${url}/v1/completions`, { method: 'POST', headers, body, signal });

/** Sends one request, reads the body, returns the status with the time taken. */
const exchange = (f: () => Promise<Response>) => timed(async () => {
  const r = await f();
  await r.text();
  return r.status;
});

const PROMPTS = ['ROMEO:', 'JULIET:\nO', 'To be, or not to be', 'First Citizen:\nBefore we proceed', 'KING HENRY'];
const pick = <T>(xs: T[]): T => xs[Math.floor(Math.random() * xs.length)];

const KINDS: Kind[] = [
  {
    name: 'completion',
    weight: 30,
    expect: [200, 429],
    run: (url) => exchange(() => post(url, JSON.stringify({ prompt: pick(PROMPTS), max_tokens: 16, temperature: 0.8, seed: 1 }))),
  },
  {
    name: 'stream',
    weight: 25,
    expect: [200, 429],
    run: (url) => exchange(() => post(url, JSON.stringify({ prompt: pick(PROMPTS), max_tokens: 24, stream: true }))),
  },
  {
    name: 'disconnect mid-stream',
    weight: 15,
    expect: [200, 429, 0],
    run: (url) => timed(async () => {
      const ctl = new AbortController();
      try {
        const r = await post(url, JSON.stringify({ prompt: pick(PROMPTS), max_tokens: 64, stream: true }), json, ctl.signal);
        if (r.status !== 200 || !r.body) return r.status;
        const reader = r.body.getReader();
        await reader.read(); // the first chunk, then go away
        ctl.abort();
        return 200;
      } catch {
        return 0; // aborted by us
      }
    }),
  },
  {
    name: 'n=3 with logprobs',
    weight: 5,
    expect: [200, 429],
    run: (url) => exchange(() => post(url, JSON.stringify({ prompt: pick(PROMPTS), max_tokens: 8, n: 3, logprobs: 2, seed: 7 }))),
  },
  {
    name: 'hostile 200 KB run',
    weight: 5,
    expect: [400],
    run: (url) => exchange(() => post(url, JSON.stringify({ prompt: 'a'.repeat(200_000) }))),
  },
  {
    name: 'malformed JSON',
    weight: 5,
    expect: [400],
    run: (url) => exchange(() => post(url, '{"prompt": "x",')),
  },
  {
    name: 'text/plain',
    weight: 3,
    expect: [415],
    run: (url) => exchange(() => post(url, 'hello', { 'content-type': 'text/plain' })),
  },
  {
    name: 'bad ids',
    weight: 4,
    expect: [400],
    run: (url) => exchange(() => post(url, JSON.stringify({ prompt: [1, 99999999], max_tokens: 2 }))),
  },
  {
    name: 'health',
    weight: 5,
    expect: [200],
    run: (url) => exchange(() => fetch(`${url}/health`)),
  },
  {
    name: 'metrics',
    weight: 3,
    expect: [200],
    run: (url) => exchange(() => fetch(`${url}/metrics`)),
  },
];

async function main(): Promise<void> {
  const o = new Command()
    .option('--model <dir>', 'model folder (default: the bundled model)')
    .option('--backend <name>', `backend (${BACKENDS.join(', ')})`, 'wasm')
    .option('--minutes <m>', 'soak duration', Number, 10)
    .option('--concurrency <n>', 'clients at once', Number, 8)
    .option('--every <s>', 'seconds between report lines', Number, 30)
    .parse(process.argv)
    .opts<{ model?: string; backend: BackendName; minutes: number; concurrency: number; every: number }>();

  const gpt = await loadModel(o.model, { backend: o.backend });
  const srv = await startServer({ model: gpt, port: 0, host: '127.0.0.1' });
  const loop = monitorEventLoopDelay({ resolution: 5 });
  loop.enable();

  // ── the hostile-prompt case alone ──
  let worstHealth = 0;
  let polling = true;
  const poller = (async () => {
    while (polling) {
      const t0 = performance.now();
      await (await fetch(`${srv.url}/health`)).text();
      worstHealth = Math.max(worstHealth, performance.now() - t0);
      await new Promise((r) => setTimeout(r, 5));
    }
  })();
  loop.reset();
  const hostile: number[] = [];
  for (const ch of ['a', '1', '!', 'é', ' ']) {
    for (let i = 0; i < 4; i++) {
      const body = JSON.stringify({ prompt: ch.repeat(Math.floor((1024 * 1024 - 64) / Buffer.byteLength(ch))) });
      const t0 = performance.now();
      const r = await post(srv.url, body);
      await r.text();
      hostile.push(performance.now() - t0);
      if (r.status !== 400 && r.status !== 413) throw new Error(`hostile prompt answered ${r.status}`);
    }
  }
  polling = false;
  await poller;
  console.log(
    `1 MiB hostile prompts: ${hostile.length} requests, answer p50 ${quantile(hostile, 0.5).toFixed(1)} ms / max ${Math.max(...hostile).toFixed(1)} ms; ` +
      `/health worst round trip ${worstHealth.toFixed(1)} ms; event-loop delay max ${(loop.max / 1e6).toFixed(1)} ms, p99 ${(loop.percentile(99) / 1e6).toFixed(1)} ms`,
  );

  // ── the soak ──
  const total = KINDS.reduce((s, k) => s + k.weight, 0);
  const choose = (): Kind => {
    let x = Math.random() * total;
    for (const k of KINDS) if ((x -= k.weight) < 0) return k;
    return KINDS[0];
  };
  const end = Date.now() + o.minutes * 60_000;
  let requests = 0;
  let unexpected = 0;
  const unexpectedBy = new Map<string, number>();
  let window: number[] = [];
  const all: number[] = [];
  const clients = Array.from({ length: o.concurrency }, async () => {
    while (Date.now() < end) {
      const k = choose();
      let res: { status: number; ms: number };
      try {
        res = await k.run(srv.url);
      } catch {
        res = { status: -1, ms: NaN };
      }
      requests++;
      if (!k.expect.includes(res.status)) {
        unexpected++;
        const key = `${k.name} → ${res.status}`;
        unexpectedBy.set(key, (unexpectedBy.get(key) ?? 0) + 1);
      }
      if (k.name === 'completion' && res.status === 200) {
        window.push(res.ms);
        all.push(res.ms);
      }
    }
  });
  const t0 = Date.now();
  loop.reset();
  console.log('  t(s)  requests  unexpected  completion p50/p99 ms  loop delay p99/max ms  RSS MiB  tensors');
  const report = (): void => {
    const mem = process.memoryUsage().rss / 2 ** 20;
    console.log(
      `${String(Math.round((Date.now() - t0) / 1000)).padStart(6)}  ${String(requests).padStart(8)}  ${String(unexpected).padStart(10)}  ` +
        `${quantile(window, 0.5).toFixed(0).padStart(9)} / ${quantile(window, 0.99).toFixed(0).padEnd(9)}  ` +
        `${(loop.percentile(99) / 1e6).toFixed(1).padStart(10)} / ${(loop.max / 1e6).toFixed(1).padEnd(8)}  ${mem.toFixed(0).padStart(7)}  ${String(tf.memory().numTensors).padStart(7)}`,
    );
    window = [];
    loop.reset();
  };
  const timer = setInterval(report, o.every * 1000);
  await Promise.all(clients);
  clearInterval(timer);
  report();
  await srv.close();
  const summary = {
    minutes: o.minutes,
    concurrency: o.concurrency,
    requests,
    unexpected,
    unexpectedBy: Object.fromEntries(unexpectedBy),
    completionP50Ms: quantile(all, 0.5),
    completionP99Ms: quantile(all, 0.99),
    tensorsAfterClose: tf.memory().numTensors,
  };
  gpt.dispose();
  console.log(JSON.stringify({ ...summary, tensorsAfterDispose: tf.memory().numTensors }));
}

main().catch((e: unknown) => {
  console.error((e as Error).stack ?? String(e));
  process.exitCode = 1;
});
