/**
 * Browser throughput: `gpt2-tfjs bench` in headless Chromium, per backend, through the public stream
 * API (web/parity.ts `bench`). Numbers are printed, never asserted. WebGL/WebGPU here run on
 * SwiftShader (CPU rendering): they say nothing about a real GPU; wasm speed is real.
 *
 *   npm run bench:web -- [--model /bench/models/gpt2-124m-random/] [--backends wasm,webgl,webgpu]
 *                        [--prompt-tokens 32] [--new-tokens 32] [--threads N] [--repeats 3] [--json]
 * --model: any folder served under /weights/ or /bench/models/. --json: one JSON object per backend,
 * on its own line, with BenchResult's field names (prefillTokensPerSecond, decodeTokensPerSecond, ...).
 * (build first: `npm run build:web`; bench:web does both.)
 */
import { Command, InvalidArgumentError } from 'commander';
import { launchChromium } from './chromium';
import type { BenchReport } from './parity';
import { serve } from './serve';

const int = (name: string, min: number) => (v: string): number => {
  const n = Number(v);
  if (!Number.isInteger(n) || n < min) throw new InvalidArgumentError(`${name} must be an integer ≥ ${min}`);
  return n;
};

async function main(): Promise<void> {
  const o = new Command('bench:web')
    .description('prefill and decode tokens/s per backend in headless Chromium (the browser twin of `gpt2-tfjs bench`)')
    .option('--model <path>', 'model folder served by the page: /weights/... or /bench/models/...', '/weights/tiny-random/')
    .option('--backends <list>', 'comma-separated: wasm, webgl, webgpu, cpu', 'wasm,webgl,webgpu')
    .option('--prompt-tokens <n>', 'prompt length', int('--prompt-tokens', 1), 32)
    .option('--new-tokens <n>', 'tokens to generate', int('--new-tokens', 2), 32)
    .option('--threads <n>', 'wasm kernel threads (1..cores; default: the cores, at most 4, where the page is cross-origin isolated)', int('--threads', 1))
    .option('--repeats <n>', 'timed runs after a warm-up (the median is reported)', int('--repeats', 1), 3)
    .option('--json', 'print one JSON object per backend on its own line')
    .parse()
    .opts<{ model: string; backends: string; promptTokens: number; newTokens: number; threads?: number; repeats: number; json?: boolean }>();
  const model = o.model.endsWith('/') ? o.model : `${o.model}/`;
  const server = await serve();
  const browser = await launchChromium();
  try {
    for (const backend of o.backends.split(',') as ('wasm' | 'webgl' | 'webgpu' | 'cpu')[]) {
      const page = await browser.newPage();
      try {
        await page.goto(`${server.url}/web/parity.html`);
        await page.waitForSelector('body[data-ready="1"]', { state: 'attached' });
        const r: BenchReport = await page.evaluate(
          ([b, m, p, n, k, t]) => window.__gpt2test!.bench(b, m, p, n, k, t ?? undefined),
          [backend, model, o.promptTokens, o.newTokens, o.repeats, o.threads ?? null] as const,
        );
        const k = r.engine.kernels;
        const engine = `engine ${r.engine.engine}` + (backend === 'wasm' ? ` (${r.threads} thread${r.threads > 1 ? 's' : ''}${r.fma ? ', fused multiply-add' : ''}${r.fusedBlocks ? ', blocks fused' : ''}${k.reason ? `; kernels off: ${k.reason}` : ''}${k.threadReason ? `; one thread: ${k.threadReason}` : ''})` : '');
        process.stdout.write(
          o.json
            ? JSON.stringify({ ...r, backend }) + '\n'
            : `${backend.padEnd(7)} prefill ${r.prefillTokensPerSecond.toFixed(1).padStart(8)} tok/s  decode ${r.decodeTokensPerSecond.toFixed(1).padStart(7)} tok/s  ` +
                `(first token ${(r.timeToFirstTokenSeconds * 1000).toFixed(0)} ms, load ${r.loadSeconds.toFixed(1)} s, isolated=${r.crossOriginIsolated})\n        ${engine}\n`,
        );
      } catch (e) {
        process.stdout.write(o.json ? JSON.stringify({ backend, error: (e as Error).message.split('\n')[0] }) + '\n' : `${backend.padEnd(7)} failed: ${(e as Error).message.split('\n')[0]}\n`);
      } finally {
        await page.close();
      }
    }
  } finally {
    await browser.close();
    await server.close();
  }
  if (!o.json) {
    process.stdout.write(
      `\n${model}: prompt ${o.promptTokens} tokens, ${o.newTokens} new, greedy, median of ${o.repeats} after a warm-up; ` +
        `Chromium headless, webgl/webgpu on SwiftShader (software rendering)\n`,
    );
  }
}

main().catch((e: Error) => {
  process.stderr.write(`${e.message}\n`);
  process.exitCode = 1;
});
