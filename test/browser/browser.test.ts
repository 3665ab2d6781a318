/**
 * Real-browser tests (`npm run test:browser`): the bundled library in headless Chromium on the
 * wasm, webgl and webgpu backends, against the same NumPy fixtures as the Node parity suite, plus
 * a leak check and a drive of the actual page. WebGL/WebGPU run on SwiftShader (CPU rendering).
 *
 * Needs Debian's chromium (`apt-get install -y chromium`). Without it the suite fails under CI=true
 * and is skipped, with the reason printed, elsewhere.
 */
import * as fs from 'fs';
import * as http from 'http';
import * as path from 'path';
import type { Browser, Page } from 'playwright-core';
import { buildWeb } from '../../web/build';
import { chromiumMissing, launchChromium } from '../../web/chromium';
import type { MemoryReport, MemorySample, ParityReport, Q8Report } from '../../web/parity';
import { StaticServer, serve } from '../../web/serve';

type BrowserBackend = 'wasm' | 'webgl' | 'webgpu';

/** Logit tolerance per backend: wasm is exact float32 math; GPU shaders reorder sums and use fast exp/tanh. */
const TOLERANCE: Record<BrowserBackend, number> = { wasm: 1e-4, webgl: 1e-3, webgpu: 1e-3 };
const ROOT = path.join(__dirname, '..', '..');
const SCREENSHOT = path.join(ROOT, 'test-results', 'page.png');

const missing = chromiumMissing();
const inCI = !!process.env.CI && process.env.CI !== 'false' && process.env.CI !== '0';
if (missing && !inCI) {
  // eslint-disable-next-line no-console
  console.log(`browser tests skipped: ${missing}`);
}

if (missing && inCI) {
  test('chromium is installed', () => {
    throw new Error(`browser tests cannot run: ${missing}`);
  });
}

const suite = missing ? describe.skip : describe;

suite('in headless Chromium', () => {
  let server: StaticServer;
  let browser: Browser;
  const pageErrors: string[] = [];

  beforeAll(async () => {
    await buildWeb({ quiet: true });
    server = await serve();
    browser = await launchChromium();
  });
  afterAll(async () => {
    await browser?.close();
    await server?.close();
  });

  async function open(pathname: string): Promise<Page> {
    const page = await browser.newPage();
    page.on('pageerror', (e) => pageErrors.push(`${pathname}: ${e.message}`));
    await page.goto(server.url + pathname);
    return page;
  }

  async function harness(): Promise<Page> {
    const page = await open('/web/parity.html');
    await page.waitForSelector('body[data-ready="1"]', { state: 'attached' });
    return page;
  }

  test('the server sends COOP/COEP, so the page is cross-origin isolated (threaded wasm)', async () => {
    const res = await fetch(`${server.url}/web/index.html`);
    expect(res.headers.get('cross-origin-opener-policy')).toBe('same-origin');
    expect(res.headers.get('cross-origin-embedder-policy')).toBe('require-corp');
    expect((await fetch(`${server.url}/web/dist/tfjs-backend-wasm-simd.wasm`)).headers.get('content-type')).toBe('application/wasm');
    expect((await fetch(`${server.url}/src/index.ts`)).status).toBe(404);
    // A raw request line: fetch() would resolve the dot segments itself before sending.
    const traversal = await new Promise<number>((resolve, reject) => {
      http.get({ host: '127.0.0.1', port: server.port, path: '/web/%2e%2e/package.json' }, (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      }).on('error', reject);
    });
    expect(traversal).toBe(404);
  });

  describe.each<BrowserBackend>(['wasm', 'webgl', 'webgpu'])('%s', (backend) => {
    let page: Page;
    beforeAll(async () => {
      page = await harness();
    });
    afterAll(async () => {
      await page?.close();
    });

    test(`logits within ${TOLERANCE[backend]} of the reference and greedy ids identical`, async () => {
      // Greedy by full re-forward per token too on wasm; on SwiftShader that compiles shaders for every length.
      const r: ParityReport = await page.evaluate((b) => window.__gpt2test!.parity(b, { viaForward: b === 'wasm' }), backend);
      // eslint-disable-next-line no-console
      console.log(
        `${backend}: full logits max|Δ| ${r.fullMaxDiff.toExponential(2)}, sampled columns ${r.caseColumnMaxDiff.toExponential(2)}, ` +
          `logsumexp ${r.caseLogsumexpMaxDiff.toExponential(2)}, isolated=${r.crossOriginIsolated}` +
          (r.webglRenderFloat32 === undefined ? '' : `, float32 render textures=${r.webglRenderFloat32}`) +
          `, ${(r.ms / 1000).toFixed(1)} s`,
      );
      expect(r.backend).toBe(backend);
      // wasm: our kernels run (not a silent fallback to tf ops); GPU backends: tfjs's own ops
      expect(r.engine.engine).toBe(backend === 'wasm' ? 'wasm-kernels' : 'tf-ops');
      // and, the page being cross-origin isolated, on two threads (a Web Worker beside the page)
      const threads = Math.min(2, r.hardwareConcurrency);
      if (backend === 'wasm') expect(r.engine.kernels).toMatchObject({ active: true, fma: true, threads, threadsWanted: threads });
      // decode blocks ran as one kernel each on wasm (a silent fall back to op by op would fail here)
      if (backend === 'wasm') expect(r.fusedBlockRuns).toBeGreaterThan(0);
      else expect(r.fusedBlockRuns).toBe(0);
      expect(r.crossOriginIsolated).toBe(true);
      if (backend === 'webgl') expect(r.webglRenderFloat32).toBe(true);
      expect(r.fullMaxDiff).toBeLessThanOrEqual(TOLERANCE[backend]);
      expect(r.caseColumnMaxDiff).toBeLessThanOrEqual(TOLERANCE[backend]);
      expect(r.caseLogsumexpMaxDiff).toBeLessThanOrEqual(TOLERANCE[backend]);
      // A near-tie in the reference may flip within the tolerance; nothing else may.
      expect(r.argmaxMismatches.filter((m) => m.margin > 2 * TOLERANCE[backend])).toEqual([]);
      for (const g of r.greedy) {
        if (backend === 'wasm') expect(g.viaForward).toEqual(g.want);
        expect(g.viaGenerate).toEqual(g.want);
      }
      expect(r.tensorsAfter).toBe(r.tensorsBefore);
    });

    if (backend === 'wasm') {
      test('with our kernels off (the plain tf-op engine), logits within the same tolerance and greedy ids identical', async () => {
        const r: ParityReport = await page.evaluate(() => window.__gpt2test!.parity('wasm', { kernels: false }));
        expect(r.engine.engine).toBe('tf-ops');
        expect(r.engine.kernels.reason).toMatch(/turned off/);
        expect(r.fullMaxDiff).toBeLessThanOrEqual(TOLERANCE.wasm);
        expect(r.caseColumnMaxDiff).toBeLessThanOrEqual(TOLERANCE.wasm);
        expect(r.argmaxMismatches.filter((m) => m.margin > 2 * TOLERANCE.wasm)).toEqual([]);
        for (const g of r.greedy) expect(g.viaGenerate).toEqual(g.want);
        expect(r.tensorsAfter).toBe(r.tensorsBefore);
        // and back on afterwards
        expect((await page.evaluate(() => window.__gpt2test!.parity('wasm'))).engine.engine).toBe('wasm-kernels');
      });
    }

    test('a q8 (int8) model loads from its URL: int8 kernels on wasm, dequantized elsewhere; logits and greedy ids as the NumPy reference', async () => {
      const r: Q8Report = await page.evaluate((b) => window.__gpt2test!.q8parity(b), backend);
      // eslint-disable-next-line no-console
      console.log(`${backend} q8: held ${r.weights.held}, reference ${r.reference}, max|Δ| ${r.columnMaxDiff.toExponential(2)}, ${(r.downloadBytes / 1e6).toFixed(2)} MB downloaded`);
      expect(r.weights).toEqual({ format: 'q8', held: backend === 'wasm' ? 'int8' : 'float32' });
      expect(r.engine.q8.int8Kernels).toBe(backend === 'wasm');
      expect(r.downloadBytes).toBeGreaterThan(1e6);
      expect(r.downloadBytes).toBeLessThan(2e6); // the int8 file, not a float one (6.5 MB)
      expect(r.columnMaxDiff).toBeLessThanOrEqual(TOLERANCE[backend]);
      expect(r.argmaxMismatches.filter((m) => m.margin > 2 * TOLERANCE[backend])).toEqual([]);
      for (const g of r.greedy) expect(g.got).toEqual(g.want);
      expect(r.tensorsAfter).toBe(r.tensorsBefore);
    });

    test('20 generate calls and an aborted stream leave tensors and GPU memory where they were', async () => {
      const r: MemoryReport = await page.evaluate((b) => window.__gpt2test!.memory(b, 20), backend);
      const tensors = (s: MemorySample[]): number[] => s.map((m) => m.numTensors);
      expect(r.calls).toBe(20);
      expect(tensors(r.perCall)).toEqual(new Array(20).fill(r.baseline.numTensors));
      expect(r.afterAbort.numTensors).toBe(r.baseline.numTensors);
      expect(r.baseline.numTensors).toBe(r.afterLoad.numTensors);
      expect(r.afterDispose.numTensors).toBe(0);
      if (backend === 'wasm') {
        expect(r.baseline.numBytesInGPU).toBeNull();
      } else {
        expect(r.baseline.numBytesInGPU).toBeGreaterThan(0);
        expect(r.perCall.map((m) => m.numBytesInGPU)).toEqual(new Array(20).fill(r.baseline.numBytesInGPU));
        expect(r.afterAbort.numBytesInGPU).toBe(r.baseline.numBytesInGPU);
        expect(r.afterDispose.numBytesInGPU).toBe(0);
      }
    });
  });

  describe('the page', () => {
    let page: Page;
    beforeAll(async () => {
      page = await open('/web/index.html?backend=wasm');
      await page.setViewportSize({ width: 1000, height: 860 });
      await page.waitForSelector('body[data-state="ready"]', { state: 'attached', timeout: 60000 });
    });
    afterAll(async () => {
      await page?.close();
    });

    async function typePrompt(): Promise<void> {
      // Text when the model ships a tokenizer; token ids otherwise (weights/tiny-random has none).
      const hasTokenizer = (await page.getAttribute('body', 'data-tokenizer')) === 'bpe';
      await page.fill('#prompt', '');
      await page.type('#prompt', hasTokenizer ? 'ROMEO:' : '49, 2662, 46, 25');
    }

    test('Stop aborts a running generation', async () => {
      await typePrompt();
      await page.fill('#maxTokens', '40');
      // Press Stop from inside the page as soon as the first token shows, so the timing is not racy.
      const stopped = await page.evaluate(
        () =>
          new Promise<number>((resolve) => {
            const out = document.getElementById('output') as HTMLElement;
            const obs = new MutationObserver(() => {
              const gen = out.querySelector('.gen');
              if (gen && gen.textContent) {
                obs.disconnect();
                (document.getElementById('stop') as HTMLButtonElement).click();
                resolve(gen.textContent.length);
              }
            });
            obs.observe(out, { childList: true, subtree: true, characterData: true });
            (document.getElementById('generate') as HTMLButtonElement).click();
          }),
      );
      expect(stopped).toBeGreaterThan(0);
      await page.waitForSelector('body[data-state="ready"]', { state: 'attached' });
      expect(await page.textContent('#statFinish')).toBe('stopped');
      expect(Number(await page.textContent('#statTokens'))).toBeLessThan(40);
    });

    test('typing a prompt and pressing Generate streams tokens in; screenshot in test-results/page.png', async () => {
      await typePrompt();
      await page.fill('#maxTokens', '40');
      await page.fill('#temperature', '0.9');
      // Count distinct lengths of the generated text as it grows: streaming shows many, not one.
      await page.evaluate(() => {
        const w = window as unknown as { __lengths: number[] };
        w.__lengths = [];
        const out = document.getElementById('output') as HTMLElement;
        new MutationObserver(() => {
          const n = out.querySelector('.gen')?.textContent?.length ?? 0;
          if (n && w.__lengths[w.__lengths.length - 1] !== n) w.__lengths.push(n);
        }).observe(out, { childList: true, subtree: true, characterData: true });
      });
      await page.click('#generate');
      await page.waitForFunction(() => document.getElementById('statFinish')?.textContent === 'length' || document.body.dataset.state === 'error', null, { timeout: 60000 });
      expect(await page.getAttribute('body', 'data-state')).toBe('ready');
      const lengths = await page.evaluate(() => (window as unknown as { __lengths: number[] }).__lengths);
      expect(lengths.length).toBeGreaterThan(5);
      expect(await page.textContent('#statTokens')).toBe('40');
      expect(await page.textContent('#statFinish')).toBe('length');
      expect(await page.textContent('#statBackend')).toBe('wasm');
      const cores = await page.evaluate(() => navigator.hardwareConcurrency || 1);
      expect(await page.textContent('#statEngine')).toBe(cores >= 2 ? 'wasm kernels · 2 threads · FMA' : 'wasm kernels · 1 thread · FMA');
      expect(Number(await page.textContent('#statTps'))).toBeGreaterThan(0);
      expect((await page.textContent('#output .gen'))?.length).toBeGreaterThan(0);
      fs.mkdirSync(path.dirname(SCREENSHOT), { recursive: true });
      await page.screenshot({ path: SCREENSHOT, fullPage: true });
    });
  });

  test('no uncaught errors in any page', () => {
    expect(pageErrors).toEqual([]);
  });
});
