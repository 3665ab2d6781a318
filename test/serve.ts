/** A local HTTP file server on 127.0.0.1 for the remote-loading tests (no internet needed). */
import * as fs from 'fs';
import * as http from 'http';
import { AddressInfo } from 'net';

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

export async function startServer(handler: Handler): Promise<TestServer> {
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
