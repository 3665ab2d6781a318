/**
 * A model "source" is a folder on disk or an http(s) base URL with the same layout
 * (`${base}/config.json`, `${base}/model.safetensors`, ...). Everything that reads model files goes
 * through this interface so the formats above it never care where the bytes come from.
 */
import { GPT2Error, isGPT2Error } from '../errors';
import type { LoadProgress } from './hf';
import { BytesCallback, FetchGuard, declaredLength, fetchBytes, fetchToFile, httpFetch, statusError } from './http';

export interface FileSource {
  /** Human-readable location of `name`, for error messages. */
  describe(name: string): string;
  exists(name: string): Promise<boolean>;
  read(name: string): Promise<Uint8Array>;
  readText(name: string): Promise<string>;
  /**
   * Size in bytes, and a byte range [begin, end): lets big files be read piecewise. `into`, when given
   * and large enough, is where a source that must copy the bytes puts them (the result is then a view
   * on it); a source that holds the file in memory may still return a view on its own bytes.
   */
  size(name: string): Promise<number>;
  readRange(name: string, begin: number, end: number, into?: Uint8Array): Promise<Uint8Array>;
  /**
   * Remote sources only: fetch `names` now, reporting progress, so that later reads need no network.
   * Loading calls it for the weight files, then reads them in ranges.
   */
  prefetch?(names: string[], onProgress?: (p: LoadProgress) => void): Promise<void>;
}

export function isUrl(s: string): boolean {
  return /^https?:\/\//i.test(s);
}

function joinUrl(base: string, name: string): string {
  return base.replace(/\/+$/, '') + '/' + name;
}

export interface SourceOptions {
  /** Node only: a folder that keeps the files a URL source fetches; see LoadOptions.cacheDir. */
  cacheDir?: string;
  /** Aborts reads (and downloads) in progress: they fail with ABORTED. */
  signal?: AbortSignal;
  /** URL sources: a request that gets no response or body bytes for this long fails (default 30 000 ms). */
  timeoutMs?: number;
}

export const DEFAULT_TIMEOUT_MS = 30_000;

const MiB = 1024 * 1024;
/**
 * The most bytes each file that is read whole may have (after decompression, for a URL): GPT-2's own
 * are ~1 MB at most, so these leave room for large vocabularies while a corrupt or hostile file
 * cannot fill memory. Weight files are read in ranges and have no such cap.
 */
export const MAX_FILE_BYTES: Readonly<Record<string, number>> = {
  'config.json': MiB,
  'generation_config.json': MiB,
  'tokenizer_config.json': MiB,
  'special_tokens_map.json': MiB,
  'vocab.json': 64 * MiB,
  'merges.txt': 64 * MiB,
  'encoder.json': 64 * MiB,
  'vocab.bpe': 64 * MiB,
  'tokenizer.json': 64 * MiB,
  'model.safetensors.index.json': 64 * MiB,
  'model.json': 64 * MiB,
};

function capOf(name: string): number | undefined {
  return Object.prototype.hasOwnProperty.call(MAX_FILE_BYTES, name) ? MAX_FILE_BYTES[name] : undefined;
}

function tooLarge(where: string, size: number, cap: number): GPT2Error {
  return new GPT2Error('TOO_LARGE', `${where} is ${size} bytes, more than the ${cap} such a file may have; is it the right file?`);
}

function checkSignal(signal: AbortSignal | undefined, what: string): void {
  if (signal?.aborted) throw new GPT2Error('ABORTED', `reading ${what} was aborted`);
}

function checkTimeout(ms: unknown): number {
  if (ms === undefined) return DEFAULT_TIMEOUT_MS;
  if (typeof ms !== 'number' || !(ms > 0)) throw new GPT2Error('BAD_OPTION', `timeoutMs must be a positive number of milliseconds (Infinity: no limit), got ${JSON.stringify(ms)}`);
  return ms;
}

function checkCacheDir(dir: unknown): string {
  if (typeof dir !== 'string' || dir === '') throw new GPT2Error('BAD_OPTION', 'cacheDir must be a folder path');
  if (typeof process === 'undefined' || !process.versions?.node) throw new GPT2Error('BAD_OPTION', 'cacheDir works in Node only (a browser caches over HTTP)');
  return dir;
}

/**
 * An http(s) base URL. Each file is fetched once, as a stream, into the cache folder (written under a
 * temporary name, renamed when complete) or, without one, into memory; reads are then served from
 * there. A cached file is trusted as is (pin a revision in the URL to pin the bytes).
 */
class UrlSource implements FileSource {
  /** Whole files, when there is no cache folder. */
  private readonly memory = new Map<string, Uint8Array>();
  /** HEAD answers, so listing and sizing cost one request per file. */
  private readonly heads = new Map<string, { exists: boolean; length: number | null }>();
  /** Downloads in flight or done, so concurrent readers share one. */
  private readonly fetching = new Map<string, Promise<void>>();
  private readonly disk: DirSource | null;

  private readonly guard: FetchGuard;

  constructor(private readonly base: string, private readonly options: SourceOptions = {}) {
    this.disk = options.cacheDir === undefined ? null : new DirSource(checkCacheDir(options.cacheDir));
    this.guard = { signal: options.signal, idleTimeoutMs: checkTimeout(options.timeoutMs) };
  }

  get cacheDir(): string | undefined {
    return this.options.cacheDir;
  }

  withCacheDir(dir: string): UrlSource {
    return dir === this.cacheDir ? this : new UrlSource(this.base, { ...this.options, cacheDir: dir });
  }

  describe(name: string): string {
    return joinUrl(this.base, name);
  }

  /** The cache entry of a file: a hash of its URL, plus its name for people browsing the folder. */
  private cacheName(name: string): string {
    const crypto = require('crypto') as typeof import('crypto');
    const hash = crypto.createHash('sha256').update(this.describe(name)).digest('hex').slice(0, 32);
    return `${hash}-${name.replace(/[^\w.-]+/g, '_')}`;
  }

  private async held(name: string): Promise<boolean> {
    if (this.memory.has(name)) return true;
    return this.disk !== null && (await this.disk.exists(this.cacheName(name)));
  }

  private fetchOnce(name: string, onBytes?: BytesCallback): Promise<void> {
    let job = this.fetching.get(name);
    if (!job) {
      job = (async () => {
        if (await this.held(name)) return;
        const url = this.describe(name);
        if (this.disk && this.cacheDir !== undefined) {
          const fs = require('fs') as typeof import('fs');
          const path = require('path') as typeof import('path');
          await fs.promises.mkdir(this.cacheDir, { recursive: true });
          const dest = path.join(this.cacheDir, this.cacheName(name));
          const tmp = `${dest}.${process.pid}-${Math.random().toString(36).slice(2)}.tmp`;
          await fetchToFile(url, dest, { ...this.guard, maxBytes: capOf(name), partPath: tmp, onBytes });
        } else {
          this.memory.set(name, await fetchBytes(url, onBytes, {}, { ...this.guard, maxBytes: capOf(name) }));
        }
      })();
      this.fetching.set(name, job);
      job.catch(() => this.fetching.delete(name)); // a failed download may be retried
    }
    return job;
  }

  /** What a HEAD request says of `name`; null when the server cannot be reached. */
  private async head(name: string): Promise<{ exists: boolean; length: number | null } | null> {
    const known = this.heads.get(name);
    if (known) return known;
    const url = this.describe(name);
    let res: Response;
    try {
      res = await httpFetch(url, { method: 'HEAD' }, this.guard);
    } catch (e) {
      if (isGPT2Error(e, 'NETWORK')) return null;
      throw e;
    }
    await res.body?.cancel().catch(() => undefined);
    let answer: { exists: boolean; length: number | null };
    if (res.ok) answer = { exists: true, length: declaredLength(res) };
    else if (res.status === 404 || res.status === 410) answer = { exists: false, length: null };
    else if (res.status === 405 || res.status === 501) {
      // No HEAD on this server: find out with a GET (the file is needed anyway if it exists).
      try {
        await this.fetchOnce(name);
        answer = { exists: true, length: await this.size(name) };
      } catch (e) {
        if (!isGPT2Error(e, 'MISSING_FILE')) throw e;
        answer = { exists: false, length: null };
      }
    } else throw statusError(url, res);
    this.heads.set(name, answer);
    return answer;
  }

  /**
   * A cached file exists. Otherwise HEAD decides: 2xx yes, 404/410 no, other statuses throw. An
   * unreachable server counts as "no": offline, a cached model then loads from its cache, and when
   * nothing is cached the required reads that follow (config.json first) report the network error.
   */
  async exists(name: string): Promise<boolean> {
    if (await this.held(name)) return true;
    return (await this.head(name))?.exists ?? false;
  }

  async read(name: string): Promise<Uint8Array> {
    await this.fetchOnce(name);
    checkSignal(this.guard.signal, this.describe(name));
    return this.memory.get(name) ?? this.disk!.read(this.cacheName(name), capOf(name));
  }

  async readText(name: string): Promise<string> {
    return new TextDecoder().decode(await this.read(name));
  }

  async size(name: string): Promise<number> {
    await this.fetchOnce(name);
    return this.memory.get(name)?.byteLength ?? this.disk!.size(this.cacheName(name));
  }

  async readRange(name: string, begin: number, end: number, into?: Uint8Array): Promise<Uint8Array> {
    await this.fetchOnce(name);
    checkSignal(this.guard.signal, this.describe(name));
    const bytes = this.memory.get(name);
    return bytes ? bytes.subarray(begin, end) : this.disk!.readRange(this.cacheName(name), begin, end, into);
  }

  async prefetch(names: string[], onProgress?: (p: LoadProgress) => void): Promise<void> {
    // Lengths up front (HEAD, usually already asked by exists()) so the total is right from the first event.
    const sizes: (number | null)[] = [];
    for (const n of names) sizes.push((await this.held(n)) ? await this.size(n) : ((await this.head(n))?.length ?? null));
    const total = () => sizes.reduce<number>((a, s) => a + (s ?? 0), 0);
    let done = 0;
    for (let i = 0; i < names.length; i++) {
      const file = names[i];
      await this.fetchOnce(file, (got, all) => {
        sizes[i] = all;
        onProgress?.({ loadedBytes: done + got, totalBytes: Math.max(total(), done + got), file });
      });
      sizes[i] = await this.size(file);
      done += sizes[i] ?? 0;
      onProgress?.({ loadedBytes: done, totalBytes: Math.max(total(), done), file });
    }
  }
}

/**
 * Node-only: reads from a local folder. `fs` is required lazily so browser bundles never see it.
 * Only regular files are read (a FIFO or device would block the loader forever), small files
 * within MAX_FILE_BYTES.
 */
export class DirSource implements FileSource {
  constructor(private readonly dir: string, private readonly signal?: AbortSignal) {}
  private path(name: string): string {
    // eslint-disable-next-line @typescript-eslint/no-var-requires
    const p = require('path') as typeof import('path');
    return p.join(this.dir, name);
  }
  describe(name: string): string {
    return this.path(name);
  }
  async exists(name: string): Promise<boolean> {
    const fs = require('fs') as typeof import('fs');
    return fs.existsSync(this.path(name));
  }
  /** Size of a regular file; every failure is a typed error naming it. */
  private async stat(file: string): Promise<number> {
    const fs = require('fs') as typeof import('fs');
    checkSignal(this.signal, file);
    let st: import('fs').Stats;
    try {
      st = await fs.promises.stat(file);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') throw new GPT2Error('MISSING_FILE', `${file} does not exist`);
      throw new GPT2Error('MISSING_FILE', `cannot read ${file}: ${(e as Error).message}`, { cause: e });
    }
    if (!st.isFile()) throw new GPT2Error('MISSING_FILE', `${file} is not a regular file (a folder, FIFO, socket or device): give the file itself`);
    return st.size;
  }
  async read(name: string, cap: number | undefined = capOf(name)): Promise<Uint8Array> {
    const file = this.path(name);
    const size = await this.stat(file);
    if (cap !== undefined && size > cap) throw tooLarge(file, size, cap);
    return this.readBytes(file, 0, size);
  }
  async readText(name: string): Promise<string> {
    return new TextDecoder().decode(await this.read(name));
  }
  async size(name: string): Promise<number> {
    return this.stat(this.path(name));
  }
  async readRange(name: string, begin: number, end: number, into?: Uint8Array): Promise<Uint8Array> {
    const file = this.path(name);
    await this.stat(file);
    return this.readBytes(file, begin, end, into);
  }
  /** Bytes [begin, end) of a file already checked by stat(), into `into` when it has room. */
  private async readBytes(file: string, begin: number, end: number, into?: Uint8Array): Promise<Uint8Array> {
    const fs = require('fs') as typeof import('fs');
    let fh: import('fs').promises.FileHandle;
    try {
      fh = await fs.promises.open(file, 'r');
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') throw new GPT2Error('MISSING_FILE', `${file} does not exist`);
      throw new GPT2Error('MISSING_FILE', `cannot read ${file}: ${(e as Error).message}`, { cause: e });
    }
    try {
      const out = into && into.byteLength >= end - begin ? into.subarray(0, end - begin) : new Uint8Array(end - begin);
      let got = 0;
      while (got < out.byteLength) {
        const { bytesRead } = await fh.read(out, got, out.byteLength - got, begin + got);
        if (bytesRead === 0) throw new GPT2Error('BAD_WEIGHTS', `${file}: unexpected end of file at byte ${begin + got}`);
        got += bytesRead;
      }
      return out;
    } finally {
      await fh.close();
    }
  }
}

export function openSource(dirOrUrl: string, options: SourceOptions = {}): FileSource {
  return isUrl(dirOrUrl) ? new UrlSource(dirOrUrl, options) : new DirSource(dirOrUrl, options.signal);
}

/** The same source with a cache folder for what it fetches (folders are returned unchanged). */
export function withCacheDir(source: FileSource, cacheDir: string): FileSource {
  return source instanceof UrlSource ? source.withCacheDir(checkCacheDir(cacheDir)) : source;
}
