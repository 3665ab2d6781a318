/**
 * A model "source" is a folder on disk or an http(s) base URL with the same layout
 * (`${base}/config.json`, `${base}/model.safetensors`, ...). Everything that reads model files goes
 * through this interface so the formats above it never care where the bytes come from.
 */
import { GPT2Error } from '../errors';

export interface FileSource {
  /** Human-readable location of `name`, for error messages. */
  describe(name: string): string;
  exists(name: string): Promise<boolean>;
  read(name: string): Promise<Uint8Array>;
  readText(name: string): Promise<string>;
  /** Size in bytes, and a byte range [begin, end): lets big files be read piecewise. */
  size(name: string): Promise<number>;
  readRange(name: string, begin: number, end: number): Promise<Uint8Array>;
}

export function isUrl(s: string): boolean {
  return /^https?:\/\//i.test(s);
}

function joinUrl(base: string, name: string): string {
  return base.replace(/\/+$/, '') + '/' + name;
}

class UrlSource implements FileSource {
  /** Range reads over HTTP fetch the whole file once and slice it (servers need not support Range). */
  private whole: { name: string; bytes: Uint8Array } | null = null;
  constructor(private readonly base: string) {}
  private async cached(name: string): Promise<Uint8Array> {
    if (this.whole?.name !== name) this.whole = { name, bytes: await this.read(name) };
    return this.whole.bytes;
  }
  async size(name: string): Promise<number> {
    return (await this.cached(name)).byteLength;
  }
  async readRange(name: string, begin: number, end: number): Promise<Uint8Array> {
    return (await this.cached(name)).subarray(begin, end);
  }
  describe(name: string): string {
    return joinUrl(this.base, name);
  }
  async exists(name: string): Promise<boolean> {
    try {
      const res = await fetch(joinUrl(this.base, name), { method: 'HEAD' });
      return res.ok;
    } catch {
      return false;
    }
  }
  async read(name: string): Promise<Uint8Array> {
    const url = joinUrl(this.base, name);
    let res: Response;
    try {
      res = await fetch(url);
    } catch (e) {
      throw new GPT2Error('NETWORK', `could not fetch ${url}: ${(e as Error).message}`, { cause: e });
    }
    if (res.status === 404) throw new GPT2Error('MISSING_FILE', `${url} not found (HTTP 404)`);
    if (!res.ok) throw new GPT2Error('NETWORK', `fetching ${url} failed: HTTP ${res.status} ${res.statusText}`);
    const buf = new Uint8Array(await res.arrayBuffer());
    const declared = Number(res.headers.get('content-length'));
    if (Number.isFinite(declared) && declared > 0 && res.headers.get('content-encoding') == null && buf.byteLength !== declared) {
      throw new GPT2Error('NETWORK', `${url}: body truncated (${buf.byteLength} of ${declared} bytes)`);
    }
    return buf;
  }
  async readText(name: string): Promise<string> {
    return new TextDecoder().decode(await this.read(name));
  }
}

/** Node-only: reads from a local folder. `fs` is required lazily so browser bundles never see it. */
class DirSource implements FileSource {
  constructor(private readonly dir: string) {}
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
  async read(name: string): Promise<Uint8Array> {
    const fs = require('fs') as typeof import('fs');
    const file = this.path(name);
    try {
      const b = await fs.promises.readFile(file);
      return new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') throw new GPT2Error('MISSING_FILE', `${file} does not exist`);
      throw new GPT2Error('MISSING_FILE', `cannot read ${file}: ${(e as Error).message}`, { cause: e });
    }
  }
  async readText(name: string): Promise<string> {
    return new TextDecoder().decode(await this.read(name));
  }
  async size(name: string): Promise<number> {
    const fs = require('fs') as typeof import('fs');
    try {
      return (await fs.promises.stat(this.path(name))).size;
    } catch {
      throw new GPT2Error('MISSING_FILE', `${this.path(name)} does not exist`);
    }
  }
  async readRange(name: string, begin: number, end: number): Promise<Uint8Array> {
    const fs = require('fs') as typeof import('fs');
    const fh = await fs.promises.open(this.path(name), 'r');
    try {
      const out = new Uint8Array(end - begin);
      let got = 0;
      while (got < out.byteLength) {
        const { bytesRead } = await fh.read(out, got, out.byteLength - got, begin + got);
        if (bytesRead === 0) throw new GPT2Error('BAD_WEIGHTS', `${this.path(name)}: unexpected end of file at byte ${begin + got}`);
        got += bytesRead;
      }
      return out;
    } finally {
      await fh.close();
    }
  }
}

export function openSource(dirOrUrl: string): FileSource {
  return isUrl(dirOrUrl) ? new UrlSource(dirOrUrl) : new DirSource(dirOrUrl);
}
