/**
 * Browser throughput: prefill and decode tokens/s per backend in headless Chromium, through the
 * public stream API (web/parity.ts `bench`). Numbers are printed, never asserted.
 * WebGL/WebGPU here run on SwiftShader (CPU rendering): they say nothing about a real GPU.
 *
 *   npm run bench:web -- [--model /weights/tiny-random/] [--backends wasm,webgl,webgpu]
 *                        [--prompt 32] [--new 32] [--repeats 3]
 * (build first: `npm run build:web`; bench:web does both.)
 */
import { launchChromium } from './chromium';
import type { BenchReport } from './parity';
import { serve } from './serve';

function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && process.argv[i + 1] !== undefined ? process.argv[i + 1] : fallback;
}

async function main(): Promise<void> {
  const model = arg('model', '/weights/tiny-random/');
  const backends = arg('backends', 'wasm,webgl,webgpu').split(',') as ('wasm' | 'webgl' | 'webgpu' | 'cpu')[];
  const promptTokens = Number(arg('prompt', '32'));
  const newTokens = Number(arg('new', '32'));
  const repeats = Number(arg('repeats', '3'));
  const server = await serve();
  const browser = await launchChromium();
  const rows: string[] = [];
  try {
    for (const backend of backends) {
      const page = await browser.newPage();
      try {
        await page.goto(`${server.url}/web/parity.html`);
        await page.waitForSelector('body[data-ready="1"]', { state: 'attached' });
        const r: BenchReport = await page.evaluate(
          ([b, m, p, n, k]) => window.__gpt2test!.bench(b, m, p, n, k),
          [backend, model, promptTokens, newTokens, repeats] as const,
        );
        const row =
          `${backend.padEnd(7)} prefill ${r.prefillTokPerS.toFixed(1).padStart(8)} tok/s  decode ${r.decodeTokPerS.toFixed(1).padStart(7)} tok/s  ` +
          `(first token ${r.ttftMs.toFixed(0)} ms, load ${(r.loadMs / 1000).toFixed(1)} s, isolated=${r.crossOriginIsolated})`;
        rows.push(row);
        process.stdout.write(row + '\n');
      } catch (e) {
        const row = `${backend.padEnd(7)} failed: ${(e as Error).message.split('\n')[0]}`;
        rows.push(row);
        process.stdout.write(row + '\n');
      } finally {
        await page.close();
      }
    }
  } finally {
    await browser.close();
    await server.close();
  }
  process.stdout.write(
    `\n${model}: prompt ${promptTokens} tokens, ${newTokens} new, greedy, median of ${repeats} after a warm-up; ` +
      `Chromium headless, webgl/webgpu on SwiftShader (software rendering)\n`,
  );
}

main().catch((e: Error) => {
  process.stderr.write(`${e.message}\n`);
  process.exitCode = 1;
});
