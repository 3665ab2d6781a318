/**
 * The node suites' helpers, one of each: paths and fixtures, the error catcher (`caught`), the
 * exact-float comparator (`expectSameFloats`), the in-process CLI runner (`runCli`), a fresh-process
 * script runner (`runScript`), and a loopback file server for the remote-loading tests
 * (`startTestServer`). Nothing here is named like a product export.
 */
import * as fs from 'fs';
import * as http from 'http';
import { AddressInfo } from 'net';
import * as path from 'path';
import { GPT2Error } from '../src/errors';

// ─── paths and fixtures ──────────────────────────────────────────────────────────────────────────

export const ROOT = path.join(__dirname, '..');
export const TINY_DIR = path.join(ROOT, 'weights', 'tiny-random');

export function fixture<T>(name: string): T {
  return JSON.parse(fs.readFileSync(path.join(ROOT, 'test', 'fixtures', name), 'utf8')) as T;
}

export function fixtureF32(name: string): Float32Array {
  const b = fs.readFileSync(path.join(ROOT, 'test', 'fixtures', name));
  return new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));
}

export interface TinyFixture {
  model: string;
  fullLogits: { file: string; ids: number[]; shape: [number, number] };
  cases: { ids: number[]; columns: number[]; logits: number[][]; argmax: number[]; top2Margin: number[]; logsumexp: number[] }[];
  greedy: { prompt: number[]; newTokens: number; ids: number[] }[];
}

/** Node backends the parity suites run on; tfjs-node joins when it is installed. */
export function nodeBackends(): ('cpu' | 'wasm' | 'tensorflow')[] {
  const out: ('cpu' | 'wasm' | 'tensorflow')[] = ['cpu', 'wasm'];
  try {
    require.resolve('@tensorflow/tfjs-node');
    out.push('tensorflow');
  } catch {
    // eslint-disable-next-line no-console
    console.log('parity on "tensorflow" skipped: @tensorflow/tfjs-node is not installed (it downloads libtensorflow at install time)');
  }
  return out;
}

/**
 * The shared Tiny Shakespeare corpus: $TINYSHAKESPEARE, else shared/ beside the checkout (as CI lays
 * it out), else the workplace's /work/shared. Fails loudly when none exists.
 */
export function corpusPath(): string {
  const candidates = [
    process.env.TINYSHAKESPEARE,
    path.join(ROOT, '..', 'shared', 'data', 'tinyshakespeare.txt'),
    '/work/shared/data/tinyshakespeare.txt',
  ].filter((p): p is string => !!p);
  const found = candidates.find((p) => fs.existsSync(p));
  if (!found) throw new Error(`tinyshakespeare.txt not found (looked in: ${candidates.join(', ')}); set TINYSHAKESPEARE`);
  return found;
}

// ─── numbers ─────────────────────────────────────────────────────────────────────────────────────

export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

export function logsumexp(row: ArrayLike<number>): number {
  let max = -Infinity;
  for (let i = 0; i < row.length; i++) max = Math.max(max, row[i]);
  let s = 0;
  for (let i = 0; i < row.length; i++) s += Math.exp(row[i] - max);
  return Math.log(s) + max;
}

/**
 * Bit-identical floats: same length, every element `Object.is`-equal (any NaN matches NaN; -0 does
 * not match 0). One message naming the first difference: jest's toEqual on 400k-element typed
 * arrays takes seconds, and an expect per element floods the report.
 */
export function expectSameFloats(got: ArrayLike<number>, want: ArrayLike<number>): void {
  expect(got.length).toBe(want.length);
  let bad = -1;
  for (let i = 0; i < got.length && bad < 0; i++) if (!Object.is(got[i], want[i])) bad = i;
  expect(bad < 0 ? 'identical' : `differs at ${bad}: ${got[bad]} vs ${want[bad]}`).toBe('identical');
}

/** Logits of `ids`, then the model is disposed (one-shot loads in I/O tests). */
export async function forwardAndDispose(model: { forward(ids: number[]): Promise<Float32Array>; dispose(): void }, ids: number[]): Promise<Float32Array> {
  try {
    return await model.forward(ids);
  } finally {
    model.dispose();
  }
}

// ─── errors ──────────────────────────────────────────────────────────────────────────────────────

type ErrorClass<E> = abstract new (...args: never[]) => E;

/**
 * The error a promise rejects with, or a function throws, checked to be an instance of `type`
 * (GPT2Error unless told); the test fails when the promise resolves or the function returns.
 * Pass an async call as its promise: `await caught(loadModel(dir))`; a sync one as a function:
 * `caught(() => tok.decode([-1]))`.
 */
export function caught<E = GPT2Error>(p: Promise<unknown>, type?: ErrorClass<E>): Promise<E>;
export function caught<E = GPT2Error>(f: () => unknown, type?: ErrorClass<E>): E;
export function caught<E>(x: Promise<unknown> | (() => unknown), type: ErrorClass<E> = GPT2Error as unknown as ErrorClass<E>): E | Promise<E> {
  const check = (e: unknown): E => {
    expect(e).toBeInstanceOf(type);
    return e as E;
  };
  if (typeof x !== 'function') {
    return x.then(
      () => {
        throw new Error('expected a rejection');
      },
      check,
    );
  }
  let returned: unknown;
  try {
    returned = x();
  } catch (e) {
    return check(e);
  }
  if (returned instanceof Promise) throw new Error('caught(): the function returned a promise; pass the promise itself');
  throw new Error('expected a throw');
}

// ─── processes ───────────────────────────────────────────────────────────────────────────────────

/** Runs the CLI in-process through main(), output captured; `stdin`, when given, is piped in. */
export async function runCli(args: string[], stdin?: string): Promise<{ code: number; stdout: string; stderr: string }> {
  const { main } = await import('../src/cli'); // loaded on first use: most suites never run the CLI
  const { Readable } = await import('stream');
  let stdout = '';
  let stderr = '';
  const io = {
    stdout: { write: (s: string) => (stdout += s) },
    stderr: { write: (s: string) => (stderr += s), isTTY: false },
    stdin: stdin === undefined ? undefined : Object.assign(Readable.from([Buffer.from(stdin)]), { isTTY: false }),
  };
  const code = await main(['node', 'gpt2-tfjs', ...args], io);
  return { code, stdout, stderr };
}

/** Runs a CommonJS script (tsx, repo root) in a fresh process; returns its last stdout line as JSON. */
export async function runScript<T>(lines: string[], env: Record<string, string> = {}): Promise<T> {
  const { execFile } = await import('child_process');
  const tsx = path.join(ROOT, 'node_modules', '.bin', 'tsx');
  const out = await new Promise<string>((resolve, reject) =>
    execFile(tsx, ['-e', lines.join('\n')], { cwd: ROOT, env: { ...process.env, ...env } }, (e, stdout) => (e ? reject(e) : resolve(stdout))),
  );
  return JSON.parse(out.trim().split('\n').pop() as string) as T;
}

// ─── a loopback file server (remote-loading tests; no internet needed) ───────────────────────────

export interface LoggedRequest {
  method: string;
  path: string;
  range?: string;
}

export interface TestServer {
  url: string;
  requests: LoggedRequest[];
  close(): Promise<void>;
}

export type Handler = (req: http.IncomingMessage, res: http.ServerResponse, path: string) => void | Promise<void>;

/** An HTTP server on 127.0.0.1 (ephemeral port) that logs each request and hands it to `handler`. */
export async function startTestServer(handler: Handler): Promise<TestServer> {
  const requests: LoggedRequest[] = [];
  const server = http.createServer((req, res) => {
    const path = decodeURIComponent(new URL(req.url ?? '/', 'http://x').pathname);
    requests.push({ method: req.method ?? 'GET', path, range: req.headers.range });
    Promise.resolve(handler(req, res, path)).catch((e: Error) => {
      if (!res.headersSent) res.writeHead(500);
      res.end(String(e.message));
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    requests,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

export interface ServeFileOptions {
  /** Honour `Range: bytes=N-` (default true); false answers 200 with the whole file. */
  ranges?: boolean;
  /** Promise the whole length, send only this many bytes, then drop the connection. */
  truncateAt?: number;
}

/** Serves one file: 404 when missing, HEAD, Range, and a body written in 64 KiB chunks. */
export async function serveFile(req: http.IncomingMessage, res: http.ServerResponse, file: string, options: ServeFileOptions = {}): Promise<void> {
  if (!fs.existsSync(file) || !fs.statSync(file).isFile()) {
    res.writeHead(404, { 'content-type': 'text/plain' });
    res.end('not found');
    return;
  }
  const bytes = fs.readFileSync(file);
  const size = bytes.byteLength;
  let start = 0;
  const m = /^bytes=(\d+)-$/.exec(req.headers.range ?? '');
  if (m && options.ranges !== false) {
    start = Number(m[1]);
    if (start >= size) {
      res.writeHead(416, { 'content-range': `bytes */${size}` });
      res.end();
      return;
    }
    res.writeHead(206, { 'content-length': size - start, 'content-range': `bytes ${start}-${size - 1}/${size}`, 'accept-ranges': 'bytes' });
  } else {
    res.writeHead(200, { 'content-length': size, 'accept-ranges': 'bytes', 'content-type': 'application/octet-stream' });
  }
  if (req.method === 'HEAD') {
    res.end();
    return;
  }
  const stop = options.truncateAt ?? size;
  for (let at = start; at < stop; at += 1 << 16) {
    const chunk = bytes.subarray(at, Math.min(stop, at + (1 << 16)));
    if (!res.write(chunk)) await new Promise((r) => res.once('drain', r));
  }
  if (options.truncateAt !== undefined) {
    await new Promise((r) => setTimeout(r, 20));
    res.socket?.destroy();
    return;
  }
  res.end();
}
