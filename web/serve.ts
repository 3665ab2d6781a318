/**
 * A tiny static server for the browser page and the browser tests: serves the repository's
 * /web/, /weights/, /test/fixtures/ and /bench/models/ on 127.0.0.1 only.
 *
 * Every response carries COOP `same-origin` + COEP `require-corp`, which make the page
 * cross-origin isolated: SharedArrayBuffer is then available and tfjs-backend-wasm picks its
 * multi-threaded binary. Usage: `npm run web` (or `npx tsx web/serve.ts [port]`).
 */
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as path from 'node:path';

/** URL prefixes served, each mapped to the same folder under the root. */
export const SERVED_PREFIXES: readonly string[] = ['/web/', '/weights/', '/test/fixtures/', '/bench/models/'];

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.map': 'application/json; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json; charset=utf-8',
  '.txt': 'text/plain; charset=utf-8',
  '.wasm': 'application/wasm', // instantiateStreaming requires this exact type
  '.png': 'image/png',
  '.svg': 'image/svg+xml',
};

const ISOLATION_HEADERS: Record<string, string> = {
  'Cross-Origin-Opener-Policy': 'same-origin',
  'Cross-Origin-Embedder-Policy': 'require-corp',
  'Cross-Origin-Resource-Policy': 'same-origin',
  'Cache-Control': 'no-cache',
};

export interface ServeOptions {
  /** Port to listen on; 0 (default) picks a free one. */
  port?: number;
  /** Repository root (default: the folder above web/). */
  root?: string;
}

export interface StaticServer {
  /** Base URL, e.g. http://127.0.0.1:8080 (no trailing slash). */
  url: string;
  port: number;
  close(): Promise<void>;
}

/** Resolves a request path to a file under `root`, or null when it is outside the served prefixes. */
function resolvePath(root: string, urlPath: string): string | null {
  let decoded: string;
  try {
    decoded = decodeURIComponent(urlPath.split('?')[0].split('#')[0]);
  } catch {
    return null;
  }
  if (decoded.includes('\0')) return null;
  const normal = path.posix.normalize(decoded);
  if (!SERVED_PREFIXES.some((p) => normal.startsWith(p))) return null;
  const file = path.join(root, ...normal.split('/').filter(Boolean));
  // normalize() already removed `..`; this guards against anything that still escapes the root.
  if (!file.startsWith(path.resolve(root) + path.sep)) return null;
  return file;
}

function send(res: http.ServerResponse, status: number, body: string, headers: Record<string, string> = {}): void {
  res.writeHead(status, { ...ISOLATION_HEADERS, 'Content-Type': 'text/plain; charset=utf-8', ...headers });
  res.end(body);
}

function handle(root: string, req: http.IncomingMessage, res: http.ServerResponse): void {
  if (req.method !== 'GET' && req.method !== 'HEAD') {
    send(res, 405, 'method not allowed\n', { Allow: 'GET, HEAD' });
    return;
  }
  const urlPath = req.url ?? '/';
  if (urlPath === '/' || urlPath === '/web') {
    send(res, 302, 'see /web/\n', { Location: '/web/' });
    return;
  }
  let file = resolvePath(root, urlPath);
  if (!file) {
    send(res, 404, `not found: ${urlPath} (served: ${SERVED_PREFIXES.join(', ')})\n`);
    return;
  }
  fs.stat(file, (err, st) => {
    if (!err && st.isDirectory()) {
      if (!urlPath.split('?')[0].endsWith('/')) {
        send(res, 301, 'moved\n', { Location: urlPath.split('?')[0] + '/' });
        return;
      }
      file = path.join(file as string, 'index.html');
      fs.stat(file, (err2, st2) => (err2 || !st2.isFile() ? send(res, 404, `not found: ${urlPath}\n`) : stream(file as string, st2.size)));
      return;
    }
    if (err || !st.isFile()) {
      send(res, 404, `not found: ${urlPath}\n`);
      return;
    }
    stream(file as string, st.size);
  });

  function stream(f: string, size: number): void {
    res.writeHead(200, {
      ...ISOLATION_HEADERS,
      'Content-Type': TYPES[path.extname(f).toLowerCase()] ?? 'application/octet-stream',
      'Content-Length': String(size),
    });
    if (req.method === 'HEAD') {
      res.end();
      return;
    }
    const rs = fs.createReadStream(f);
    rs.on('error', () => res.destroy());
    rs.pipe(res);
  }
}

/** Starts the server on 127.0.0.1 (never on other interfaces). */
export function serve(options: ServeOptions = {}): Promise<StaticServer> {
  const root = path.resolve(options.root ?? path.join(__dirname, '..'));
  const server = http.createServer((req, res) => handle(root, req, res));
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port ?? 0, '127.0.0.1', () => {
      const addr = server.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      resolve({
        url: `http://127.0.0.1:${port}`,
        port,
        close: () =>
          new Promise<void>((done) => {
            server.closeAllConnections();
            server.close(() => done());
          }),
      });
    });
  });
}

if (require.main === module) {
  const arg = process.argv[2] ?? process.env.PORT ?? '8080';
  const port = Number(arg);
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    process.stderr.write(`usage: tsx web/serve.ts [port]  (got port "${arg}")\n`);
    process.exitCode = 2;
  } else {
    serve({ port }).then(
      (s) => process.stdout.write(`serving on ${s.url}/web/  (COOP/COEP set; Ctrl-C to stop)\n`),
      (e: Error) => {
        process.stderr.write(`could not start the server: ${e.message}\n`);
        process.exitCode = 1;
      },
    );
  }
}
