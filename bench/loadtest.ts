/**
 * Load test for the HTTP service: streaming completions at several concurrency levels, reporting
 * requests/s, tokens/s, p50/p95 latency, time to first token and inter-token latency (the gaps between
 * a stream's chunks). Starts the server in-process on an ephemeral loopback port (or targets --url,
 * loopback only), bounded in requests and in time. With --long-prompt-every S, one more client sends a
 * --long-prompt-tokens prompt (max_tokens 1) every S seconds during each level: how much do long
 * admissions disturb the running streams?
 *
 *   npm run loadtest -- --model weights/tiny-random --backend wasm --concurrency 1,4,16
 *   npm run loadtest -- --model bench/models/gpt2-124m-random --concurrency 1 --long-prompt-every 2 --long-prompt-tokens 900
 *
 * Prints a table, then one JSON line (for scripts). Numbers are printed, never asserted.
 */
/* eslint-disable no-console */
import { Command } from 'commander';
import * as path from 'path';
import { BACKENDS, BackendName, GPT2, loadModel } from '../src';
import { RunningServer, startServer } from '../src/server';
import { hasTokenizerFiles, loadTokenizer } from '../src/tokenizer';

interface Level {
  concurrency: number;
  requests: number;
  errors: number;
  seconds: number;
  requestsPerSec: number;
  tokensPerSec: number;
  latencyP50Ms: number;
  latencyP95Ms: number;
  ttftP50Ms: number;
  ttftP95Ms: number;
  itlP50Ms: number;
  itlP95Ms: number;
  /** Long prompts sent beside the streams (--long-prompt-every), and how many failed. */
  longPrompts: number;
  longPromptErrors: number;
}

interface Sample {
  ok: boolean;
  latencyMs: number;
  ttftMs: number;
  tokens: number;
  /** Gaps between successive chunks of the stream, ms. */
  gaps: number[];
}

const LOOPBACK = new Set(['127.0.0.1', 'localhost', '[::1]', '::1']);

function quantile(xs: number[], q: number): number {
  if (!xs.length) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil(q * s.length) - 1))];
}

/** One streaming request; time to first token is the first chunk that carries text or a token. */
async function oneRequest(url: string, body: object, timeoutMs: number): Promise<Sample> {
  const t0 = performance.now();
  let ttft = NaN;
  let tokens = 0;
  let last = NaN;
  const gaps: number[] = [];
  try {
    const r = await fetch(`${url}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ ...body, stream: true, stream_options: { include_usage: true } }),
      signal: AbortSignal.timeout(timeoutMs),
    });
    if (r.status !== 200 || !r.body) {
      await r.text().catch(() => undefined);
      return { ok: false, latencyMs: performance.now() - t0, ttftMs: NaN, tokens: 0, gaps };
    }
    const decoder = new TextDecoder();
    let buf = '';
    let done = false;
    for await (const part of r.body as unknown as AsyncIterable<Uint8Array>) {
      buf += decoder.decode(part, { stream: true });
      let i: number;
      while ((i = buf.indexOf('\n\n')) >= 0) {
        const ev = buf.slice(0, i);
        buf = buf.slice(i + 2);
        if (!ev.startsWith('data: ')) continue;
        const data = ev.slice(6);
        if (data === '[DONE]') {
          done = true;
          continue;
        }
        const msg = JSON.parse(data) as { choices?: { text: string; finish_reason?: string | null }[]; usage?: { completion_tokens: number }; error?: unknown };
        if (msg.error) return { ok: false, latencyMs: performance.now() - t0, ttftMs: ttft, tokens, gaps };
        // a chunk carrying text (the closing chunk with finish_reason and no text is no token gap)
        if (msg.choices?.length && (msg.choices[0].text || !msg.choices[0].finish_reason)) {
          const now = performance.now();
          if (Number.isNaN(ttft)) ttft = now - t0;
          else gaps.push(now - last);
          last = now;
        }
        if (msg.usage) tokens = msg.usage.completion_tokens;
      }
    }
    return { ok: done, latencyMs: performance.now() - t0, ttftMs: ttft, tokens, gaps };
  } catch {
    return { ok: false, latencyMs: performance.now() - t0, ttftMs: NaN, tokens, gaps };
  }
}

interface LongPrompts {
  everyMs: number;
  body: object;
}

async function runLevel(url: string, concurrency: number, opts: { requests: number; seconds: number; body: (i: number) => object; timeoutMs: number; long?: LongPrompts }): Promise<Level> {
  const samples: Sample[] = [];
  const deadline = performance.now() + opts.seconds * 1000;
  let next = 0;
  const t0 = performance.now();
  const worker = async (): Promise<void> => {
    while (next < opts.requests && performance.now() < deadline) {
      const i = next++;
      samples.push(await oneRequest(url, opts.body(i), opts.timeoutMs));
    }
  };
  // the disturbing client: a long prompt every `everyMs`, each sent whether or not the last one finished
  const longs: Promise<Sample>[] = [];
  const timer = opts.long ? setInterval(() => longs.push(oneRequest(url, opts.long!.body, opts.timeoutMs)), opts.long.everyMs) : null;
  await Promise.all(Array.from({ length: concurrency }, worker));
  if (timer) clearInterval(timer);
  const longDone = await Promise.all(longs);
  const seconds = (performance.now() - t0) / 1000;
  const ok = samples.filter((s) => s.ok);
  const r = (x: number): number => Math.round(x * 10) / 10;
  return {
    concurrency,
    requests: samples.length,
    errors: samples.length - ok.length,
    seconds: r(seconds),
    requestsPerSec: r(ok.length / seconds),
    tokensPerSec: r(ok.reduce((s, x) => s + x.tokens, 0) / seconds),
    latencyP50Ms: r(quantile(ok.map((s) => s.latencyMs), 0.5)),
    latencyP95Ms: r(quantile(ok.map((s) => s.latencyMs), 0.95)),
    ttftP50Ms: r(quantile(ok.map((s) => s.ttftMs).filter((x) => !Number.isNaN(x)), 0.5)),
    ttftP95Ms: r(quantile(ok.map((s) => s.ttftMs).filter((x) => !Number.isNaN(x)), 0.95)),
    itlP50Ms: r(quantile(ok.flatMap((s) => s.gaps), 0.5)),
    itlP95Ms: r(quantile(ok.flatMap((s) => s.gaps), 0.95)),
    longPrompts: longDone.length,
    longPromptErrors: longDone.filter((s) => !s.ok).length,
  };
}

function table(rows: Level[]): string {
  const head = ['conc', 'reqs', 'errs', 'secs', 'req/s', 'tok/s', 'p50 ms', 'p95 ms', 'ttft p50', 'ttft p95', 'itl p50', 'itl p95', 'long (errs)'];
  const body = rows.map((l) => [l.concurrency, l.requests, l.errors, l.seconds, l.requestsPerSec, l.tokensPerSec, l.latencyP50Ms, l.latencyP95Ms, l.ttftP50Ms, l.ttftP95Ms, l.itlP50Ms, l.itlP95Ms, `${l.longPrompts} (${l.longPromptErrors})`].map(String));
  const w = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i].length)));
  const line = (cells: string[]): string => cells.map((c, i) => c.padStart(w[i])).join('  ');
  return [line(head), line(w.map((n) => '-'.repeat(n))), ...body.map(line)].join('\n');
}

async function main(): Promise<void> {
  const program = new Command()
    .name('loadtest')
    .description('Load-tests the gpt2-tfjs HTTP service on loopback (bounded in requests and time).')
    .option('--model <dir>', 'model folder to serve in-process', path.join(__dirname, '..', 'weights', 'tiny-random'))
    .option('--backend <name>', `tfjs backend (${BACKENDS.join(', ')})`, 'wasm')
    .option('--url <url>', 'test a running server instead (loopback only), e.g. http://127.0.0.1:8080')
    .option('--concurrency <list>', 'comma-separated concurrency levels', '1,4,16')
    .option('--requests <n>', 'requests per level at most', '48')
    .option('--seconds <s>', 'time per level at most', '20')
    .option('--max-tokens <n>', 'max_tokens per request', '32')
    .option('--temperature <t>', 'sampling temperature (0 = greedy)', '0')
    .option('--prompt <text>', 'prompt text (default: a short prompt given as token ids)')
    .option('--max-batch <n>', 'in-process server: rows decoded together (default: the highest concurrency)')
    .option('--prefill-chunk <n>', 'in-process server: prompt tokens fed per step beside running rows (default: the server default)')
    .option('--token-gaps', 'ask for logprobs (0 alternatives), so every token arrives in its own chunk: inter-token latency per token, not per released text')
    .option('--prefill-stretch <x>', 'in-process server: a step carrying prompt tokens takes at most ~x decode steps (default: the server default)')
    .option('--long-prompt-every <s>', 'one more client: a long prompt (max_tokens 1) every this many seconds')
    .option('--long-prompt-tokens <n>', 'length of that prompt in tokens', '900')
    .parse();
  const o = program.opts<{
    model: string;
    backend: string;
    url?: string;
    concurrency: string;
    requests: string;
    seconds: string;
    maxTokens: string;
    temperature: string;
    prompt?: string;
    maxBatch?: string;
    prefillChunk?: string;
    prefillStretch?: string;
    tokenGaps?: boolean;
    longPromptEvery?: string;
    longPromptTokens: string;
  }>();
  const int = (name: string, v: string, min: number): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min) throw new Error(`--${name} must be an integer ≥ ${min}, got ${v}`);
    return n;
  };
  const levels = o.concurrency.split(',').map((c) => int('concurrency', c.trim(), 1));
  const requests = int('requests', o.requests, 1);
  const seconds = Number(o.seconds);
  if (!(seconds > 0 && seconds <= 600)) throw new Error('--seconds must be in (0, 600]');
  const maxTokens = int('max-tokens', o.maxTokens, 1);
  const temperature = Number(o.temperature);
  if (!BACKENDS.includes(o.backend as BackendName)) throw new Error(`--backend must be one of ${BACKENDS.join(', ')}`);

  let server: RunningServer | null = null;
  let gpt: GPT2 | null = null;
  let url = o.url;
  if (url) {
    const host = new URL(url).hostname;
    if (!LOOPBACK.has(host)) throw new Error(`--url must point at loopback (127.0.0.1, localhost, ::1), got ${host}`);
    url = url.replace(/\/+$/, '');
  } else {
    const base = await loadModel(o.model, { backend: o.backend as BackendName });
    // Serve text as well when the folder has tokenizer files and the loader did not attach them.
    gpt = base.tokenizer || !(await hasTokenizerFiles(o.model)) ? base : new GPT2(base.model, await loadTokenizer(o.model));
    const maxBatch = o.maxBatch ? int('max-batch', o.maxBatch, 1) : Math.max(...levels);
    const prefillChunk = o.prefillChunk ? int('prefill-chunk', o.prefillChunk, 1) : undefined;
    server = await startServer({ model: gpt, host: '127.0.0.1', port: 0, maxBatch, maxQueue: Math.max(64, Math.max(...levels) * 2), maxTokens: Math.max(256, maxTokens), prefillChunk, prefillStretch: o.prefillStretch ? Number(o.prefillStretch) : undefined });
    url = server.url;
  }
  const prompt: string | number[] = o.prompt ?? [464, 2068, 7586, 21831, 18045, 625, 262]; // "The quick brown fox jumps over the"
  const body = (i: number): object => ({ prompt, max_tokens: maxTokens, temperature, seed: i, ...(o.tokenGaps ? { logprobs: 0 } : {}) });
  const timeoutMs = Math.max(5000, seconds * 1000);
  let long: LongPrompts | undefined;
  if (o.longPromptEvery !== undefined) {
    const every = Number(o.longPromptEvery);
    if (!(every > 0)) throw new Error('--long-prompt-every must be a number of seconds > 0');
    const n = int('long-prompt-tokens', o.longPromptTokens, 1);
    long = { everyMs: every * 1000, body: { prompt: Array.from({ length: n }, (_, i) => (i * 7919 + 11) % 50000), max_tokens: 1, temperature: 0 } };
  }

  try {
    await runLevel(url, 1, { requests: 2, seconds: 10, body, timeoutMs }); // warm-up
    const rows: Level[] = [];
    for (const c of levels) rows.push(await runLevel(url, c, { requests: Math.max(requests, c), seconds, body, timeoutMs, long }));
    const where = server ? `in-process, model ${o.model}, backend ${o.backend}` : `server ${url}`;
    console.log(`gpt2-tfjs loadtest — ${where}, max_tokens ${maxTokens}, temperature ${temperature}, streaming` + (long ? `, plus a ${o.longPromptTokens}-token prompt every ${o.longPromptEvery} s` : ''));
    console.log(table(rows));
    console.log(JSON.stringify({ loadtest: { target: server ? { model: o.model, backend: o.backend } : { url }, maxTokens, temperature, levels: rows } }));
  } finally {
    await server?.close();
    gpt?.dispose();
  }
}

main().then(
  () => process.exit(0),
  (e: unknown) => {
    console.error(`loadtest: ${(e as Error).message ?? String(e)}`);
    process.exit(1);
  },
);
