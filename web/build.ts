/**
 * Bundles the browser page (web/main.ts → web/dist/app.js) and the parity/bench harness used by the
 * browser tests (web/parity.ts → web/dist/parity.js) with esbuild, and copies tfjs-backend-wasm's
 * .wasm binaries beside them (bundlers do not; the page passes their folder as `wasmPaths`).
 *
 * ES modules with code splitting: the webgl/webgpu backends are `import()`ed by src/backend.ts only
 * when chosen, so they land in their own chunks and a wasm-only visit never downloads them.
 * Usage: `npm run build:web` (`npx tsx web/build.ts`).
 */
import * as esbuild from 'esbuild';
import * as fs from 'node:fs';
import * as path from 'node:path';

const WEB = __dirname;
export const DIST = path.join(WEB, 'dist');

/**
 * Node-only code the library reaches lazily (DirSource's require('fs'), the CLI, the server,
 * tfjs-node). Marked external so the bundle never tries to include them; they are never called
 * in a browser, where sources are http(s) URLs.
 */
const NODE_ONLY = [
  'fs',
  'path',
  'os',
  'crypto',
  'http',
  'https',
  'url',
  'util',
  'stream',
  'zlib',
  'worker_threads',
  'perf_hooks',
  'child_process',
  'node:*',
  '@tensorflow/tfjs-node',
  'fastify',
  'commander',
  'cli-progress',
  'prom-client',
];

export async function buildWeb(options: { minify?: boolean; quiet?: boolean } = {}): Promise<void> {
  fs.rmSync(DIST, { recursive: true, force: true });
  fs.mkdirSync(DIST, { recursive: true });
  const result = await esbuild.build({
    entryPoints: { app: path.join(WEB, 'main.ts'), parity: path.join(WEB, 'parity.ts') },
    outdir: DIST,
    bundle: true,
    splitting: true,
    format: 'esm',
    platform: 'browser',
    target: 'es2020',
    sourcemap: true,
    minify: options.minify ?? true,
    external: NODE_ONLY,
    logLevel: options.quiet ? 'error' : 'warning',
    // tsconfig.json targets CommonJS for Node; the bundle is ESM, esbuild only needs the TS settings.
    tsconfig: path.join(WEB, 'tsconfig.json'),
    metafile: true,
  });
  const wasmDir = path.join(path.dirname(require.resolve('@tensorflow/tfjs-backend-wasm/package.json')), 'dist');
  for (const f of fs.readdirSync(wasmDir)) if (f.endsWith('.wasm')) fs.copyFileSync(path.join(wasmDir, f), path.join(DIST, f));
  if (!options.quiet) {
    const out = Object.entries(result.metafile.outputs)
      .filter(([f]) => !f.endsWith('.map'))
      .map(([f, o]) => `  ${path.relative(process.cwd(), f)}  ${(o.bytes / 1024).toFixed(0)} KiB`);
    process.stdout.write(`built web/dist:\n${out.join('\n')}\n`);
  }
}

if (require.main === module) {
  buildWeb().catch((e: Error) => {
    process.stderr.write(`web build failed: ${e.message}\n`);
    process.exitCode = 1;
  });
}
