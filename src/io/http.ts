/**
 * HTTP for model files, on the platform `fetch` (Node >= 18 and browsers): status codes become
 * GPT2Errors, bodies are read as streams (progress per chunk, Content-Length checked), and files are
 * written under a temporary name that is renamed only once every byte has arrived.
 */
import { GPT2Error } from '../errors';

/** Bytes of one file received so far, and its full length (equal to `received` while unknown). */
export type BytesCallback = (received: number, total: number) => void;

function causeText(e: unknown): string {
  const err = e as { message?: string; cause?: { message?: string; code?: string } };
  const cause = err.cause?.code ?? err.cause?.message;
  return cause ? `${err.message} (${cause})` : String(err.message ?? e);
}

function isAbort(e: unknown): boolean {
  return (e as { name?: string } | null)?.name === 'AbortError';
}

/** What bounds one request: the caller's signal, and how long the server may send nothing. */
export interface FetchGuard {
  signal?: AbortSignal;
  /** Milliseconds without a response or a body chunk before the request fails (NETWORK). */
  idleTimeoutMs?: number;
  /** Most body bytes accepted, counted after decompression (a gzip body cannot expand past it). */
  maxBytes?: number;
}

/**
 * One request's abort controller: fires on the caller's signal, or when `idleTimeoutMs` pass with no
 * progress (`touch()` on each chunk); `error()` then says which, as a GPT2Error.
 */
class Watchdog {
  readonly controller = new AbortController();
  private timer: ReturnType<typeof setTimeout> | null = null;
  private timedOut = false;
  private readonly onAbort = (): void => this.controller.abort();

  constructor(private readonly url: string, private readonly guard: FetchGuard) {
    if (guard.signal?.aborted) this.controller.abort();
    else guard.signal?.addEventListener('abort', this.onAbort, { once: true });
    this.touch();
  }

  get signal(): AbortSignal {
    return this.controller.signal;
  }

  touch(): void {
    const ms = this.guard.idleTimeoutMs;
    if (ms === undefined || !Number.isFinite(ms)) return;
    if (this.timer) clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timedOut = true;
      this.controller.abort();
    }, ms);
    (this.timer as { unref?: () => void }).unref?.();
  }

  done(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    this.guard.signal?.removeEventListener('abort', this.onAbort);
  }

  /** The error for an abort of this request, or null when it was not aborted. */
  error(cause?: unknown): GPT2Error | null {
    if (this.timedOut) {
      return new GPT2Error('NETWORK', `${this.url}: the server sent nothing for ${this.guard.idleTimeoutMs} ms (timeoutMs); it may be stalled. Retry, or raise timeoutMs.`, { cause });
    }
    if (this.controller.signal.aborted) return new GPT2Error('ABORTED', `fetching ${this.url} was aborted`, { cause });
    return null;
  }
}

/** fetch() whose failures (refused, DNS, reset, aborted, stalled) are GPT2Errors naming the URL. */
export function httpFetch(url: string, init: RequestInit = {}, guard: FetchGuard = {}): Promise<Response> {
  const { signal, ...rest } = init;
  return guardedFetch(url, rest, { ...guard, signal: signal ?? guard.signal }, async (res) => res);
}

/** A request whose watchdog lives on through the body: `pump` reads it (touching on each chunk). */
async function guardedFetch<T>(url: string, init: RequestInit, guard: FetchGuard, pump: (res: Response, dog: Watchdog) => Promise<T>): Promise<T> {
  const dog = new Watchdog(url, guard);
  try {
    let res: Response;
    try {
      res = await fetch(url, { ...init, signal: dog.signal });
    } catch (e) {
      const why = dog.error(e);
      if (why) throw why;
      throw new GPT2Error('NETWORK', `could not fetch ${url}: ${causeText(e)}. Check the URL and the network, then retry.`, { cause: e });
    }
    dog.touch();
    try {
      return await pump(res, dog);
    } catch (e) {
      throw dog.error(e) ?? e;
    }
  } finally {
    dog.done();
  }
}

/** The GPT2Error for a non-2xx response: 404/410 → MISSING_FILE, anything else → NETWORK. */
export function statusError(url: string, res: Response): GPT2Error {
  if (res.status === 404 || res.status === 410) return new GPT2Error('MISSING_FILE', `${url} not found (HTTP ${res.status})`);
  const hint = res.status === 401 || res.status === 403 ? ' (the model may be private or gated: it needs an access token)' : '';
  return new GPT2Error('NETWORK', `fetching ${url} failed: HTTP ${res.status} ${res.statusText}${hint}`.trimEnd());
}

/** Throws statusError for a non-2xx response, after releasing its body. */
export async function checkStatus(url: string, res: Response): Promise<void> {
  if (res.ok) return;
  await res.body?.cancel().catch(() => undefined);
  throw statusError(url, res);
}

/** Body length promised by Content-Length, or null when absent or when fetch decodes the body (gzip). */
export function declaredLength(res: Response): number | null {
  const enc = res.headers.get('content-encoding');
  if (enc !== null && enc.trim().toLowerCase() !== 'identity') return null;
  const v = res.headers.get('content-length');
  if (v === null) return null;
  const n = Number(v);
  return Number.isSafeInteger(n) && n >= 0 ? n : null;
}

function truncated(url: string, got: number, expected: number | null, cause?: unknown): GPT2Error {
  const what = expected === null ? `after ${got} bytes` : `after ${got} of ${expected} bytes`;
  const why = cause === undefined ? '' : `: ${causeText(cause)}`;
  return new GPT2Error('NETWORK', `${url}: body truncated, the connection ended ${what}${why}. Retry the download.`, { cause });
}

function tooLarge(url: string, max: number): GPT2Error {
  return new GPT2Error('TOO_LARGE', `${url}: larger than the ${max} bytes this file may have (after decompression); is it the right file?`);
}

/**
 * Reads a response body chunk by chunk into `sink`, checking its length against Content-Length.
 * `offset` is the number of bytes already held (resumed downloads), for progress only.
 */
export async function pumpBody(
  url: string,
  res: Response,
  sink: (chunk: Uint8Array) => void | Promise<void>,
  onBytes?: BytesCallback,
  offset = 0,
  limits: { maxBytes?: number; onChunk?: () => void } = {},
): Promise<number> {
  const expected = declaredLength(res);
  const max = limits.maxBytes ?? Infinity;
  if (expected !== null && expected > max) {
    await res.body?.cancel().catch(() => undefined);
    throw tooLarge(url, max);
  }
  let got = 0;
  if (res.body) {
    const reader = res.body.getReader();
    try {
      for (;;) {
        let r: ReadableStreamReadResult<Uint8Array>;
        try {
          r = await reader.read();
        } catch (e) {
          if (isAbort(e)) throw new GPT2Error('ABORTED', `fetching ${url} was aborted`, { cause: e });
          throw truncated(url, got, expected, e);
        }
        if (r.done) break;
        limits.onChunk?.();
        got += r.value.byteLength;
        if (got > max) throw tooLarge(url, max);
        if (expected !== null && got > expected) throw new GPT2Error('NETWORK', `${url}: body is longer than its Content-Length (${expected} bytes)`);
        await sink(r.value);
        onBytes?.(offset + got, offset + (expected ?? got));
      }
    } catch (e) {
      await reader.cancel().catch(() => undefined);
      throw e;
    }
  }
  if (expected !== null && got !== expected) throw truncated(url, got, expected);
  return got;
}

/** GETs `url` into memory (one buffer, preallocated when the length is known), with progress. */
export async function fetchBytes(url: string, onBytes?: BytesCallback, init: RequestInit = {}, guard: FetchGuard = {}): Promise<Uint8Array> {
  return guardedFetch(url, init, guard, async (res, dog) => {
    await checkStatus(url, res);
    const limits = { maxBytes: guard.maxBytes, onChunk: () => dog.touch() };
    const expected = declaredLength(res);
    if (expected !== null && expected <= (guard.maxBytes ?? Infinity)) {
      const out = new Uint8Array(expected);
      let at = 0;
      await pumpBody(url, res, (c) => {
        out.set(c, at); // pumpBody has already checked that the chunk fits
        at += c.byteLength;
      }, onBytes, 0, limits);
      return out;
    }
    const chunks: Uint8Array[] = [];
    const n = await pumpBody(url, res, (c) => void chunks.push(c), onBytes, 0, limits);
    const out = new Uint8Array(n);
    let at = 0;
    for (const c of chunks) {
      out.set(c, at);
      at += c.byteLength;
    }
    return out;
  });
}

export interface FileFetchOptions extends FetchGuard {
  /** Where the bytes go until the file is complete; renamed to the destination then. */
  partPath: string;
  /** Continue an existing `partPath` with a `Range: bytes=N-` request (default false: start afresh). */
  resume?: boolean;
  /** Keep a partial `partPath` after a failure so a later call can resume (default false: delete it). */
  keepPartial?: boolean;
  onBytes?: BytesCallback;
}

/** `bytes start-end/total` → its parts (total null for `*`). */
function parseContentRange(v: string | null): { start: number; total: number | null } | null {
  const m = v === null ? null : /^bytes\s+(\d+)-(\d+)\/(\d+|\*)$/i.exec(v.trim());
  return m ? { start: Number(m[1]), total: m[3] === '*' ? null : Number(m[3]) } : null;
}

/**
 * Node only. Streams `url` into `options.partPath`, checks the length, then renames it to `dest`.
 * Nothing is created before the server answers 2xx, so a 404/500 leaves no file behind; other
 * failures delete the partial file unless `keepPartial`. Returns the file's size and the bytes
 * this call received (less than the size when it resumed).
 */
export async function fetchToFile(url: string, dest: string, options: FileFetchOptions): Promise<{ size: number; fetched: number }> {
  const fs = require('fs') as typeof import('fs');
  const path = require('path') as typeof import('path');
  const { partPath } = options;
  let have = 0;
  if (options.resume) {
    try {
      have = (await fs.promises.stat(partPath)).size;
    } catch {
      have = 0;
    }
  }
  const headers: Record<string, string> = have > 0 ? { Range: `bytes=${have}-` } : {};
  return guardedFetch(url, { headers }, options, async (res, dog) => {

    if (res.status === 416 && have > 0) {
      // Range not satisfiable: the partial file is already whole (total == have) or stale; decide by the total.
      await res.body?.cancel().catch(() => undefined);
      const m = /\/(\d+)\s*$/.exec(res.headers.get('content-range') ?? ''); // `bytes */TOTAL`
      if (m && Number(m[1]) === have) {
        await fs.promises.rename(partPath, dest);
        options.onBytes?.(have, have);
        return { size: have, fetched: 0 };
      }
      await fs.promises.rm(partPath, { force: true });
      return fetchToFile(url, dest, { ...options, resume: false });
    }
    await checkStatus(url, res);

    let append = false;
    let total: number | null;
    const body = declaredLength(res);
    if (res.status === 206) {
      const range = parseContentRange(res.headers.get('content-range'));
      if (!range || range.start !== have) {
        await res.body?.cancel().catch(() => undefined);
        throw new GPT2Error('NETWORK', `${url}: asked for bytes ${have}- but the server sent ${res.headers.get('content-range') ?? 'no Content-Range'}; delete ${partPath} and retry`);
      }
      append = true;
      total = range.total ?? (body === null ? null : have + body);
    } else {
      have = 0; // a plain 200 (the server ignored Range, or there was nothing to resume): start over
      total = body;
    }

    await fs.promises.mkdir(path.dirname(partPath), { recursive: true });
    const fh = await fs.promises.open(partPath, append ? 'a' : 'w');
    let closed = false;
    try {
      const fetched = await pumpBody(url, res, async (c) => {
        await fh.write(c);
      }, options.onBytes, have, { maxBytes: options.maxBytes, onChunk: () => dog.touch() });
      await fh.close();
      closed = true;
      const size = (await fs.promises.stat(partPath)).size;
      if (total !== null && size !== total) {
        throw new GPT2Error('NETWORK', `${url}: got ${size} bytes, expected ${total}; delete ${partPath} and retry`);
      }
      await fs.promises.rename(partPath, dest);
      return { size, fetched };
    } catch (e) {
      if (!closed) await fh.close().catch(() => undefined);
      if (!options.keepPartial) await fs.promises.rm(partPath, { force: true }).catch(() => undefined);
      throw e;
    }
  });
}
