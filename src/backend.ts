/**
 * Backend selection. Each backend package is imported lazily, only when chosen, so a Node user
 * never loads WebGL code and a browser bundle never loads tfjs-node.
 */
import * as tf from './tf';
import { GPT2Error } from './errors';
import { enableWasmKernels } from './model/wasm/engine';
import { withSharedWasmMemory } from './model/wasm/shared-memory';
import { warnOnce } from './model/wasm/instance';

export type BackendName = 'cpu' | 'wasm' | 'webgl' | 'webgpu' | 'tensorflow';
export const BACKENDS: readonly BackendName[] = ['cpu', 'wasm', 'webgl', 'webgpu', 'tensorflow'];

const PACKAGES: Record<BackendName, string> = {
  cpu: '@tensorflow/tfjs-backend-cpu',
  wasm: '@tensorflow/tfjs-backend-wasm',
  webgl: '@tensorflow/tfjs-backend-webgl',
  webgpu: '@tensorflow/tfjs-backend-webgpu',
  tensorflow: '@tensorflow/tfjs-node',
};

const isNode = typeof process !== 'undefined' && !!process.versions?.node && typeof window === 'undefined';

/** The backend used when none is named: wasm everywhere (fast, exact float32), as the issues ask. */
export function defaultBackend(): BackendName {
  return 'wasm';
}

/** Options for backend set-up that must happen before the backend first initialises. */
export interface BackendOptions {
  /**
   * wasm only, browser: where the tfjs-backend-wasm binaries are served — a folder URL ending in
   * '/' (holding tfjs-backend-wasm{,-simd,-threaded-simd}.wasm) or a map from file name to URL.
   * Bundlers do not copy these files, so a page must serve them and say where. Ignored in Node
   * (the package reads them from its own folder) and once the wasm backend has initialised.
   * The threaded binary is chosen only when the page is cross-origin isolated (COOP/COEP headers).
   */
  wasmPaths?: string | Record<string, string>;
  /**
   * wasm only: threads for the matrix products and attention, 1..N where N is the machine's cores
   * (Node: os.availableParallelism(); browser: navigator.hardwareConcurrency); default
   * min(N, DEFAULT_MAX_THREADS = 4). With n > 1, n - 1 workers (Node: worker_threads; browser: Web
   * Workers) take chunks of each of our kernels with the calling thread, on the backend's shared memory
   * (results bit-identical to one thread). Node: takes
   * effect when the wasm backend is first initialised in the process (it is then started on a shared
   * memory); env GPT2_TFJS_THREADS overrides the default. Browser: needs a cross-origin isolated page
   * (COOP/COEP headers), where tfjs-backend-wasm's threaded binary shares its memory; elsewhere one
   * thread runs and engineInfo() says why.
   */
  threads?: number;
}

function runtimeName(): string {
  return isNode ? `Node.js ${process.versions.node}` : 'this runtime';
}

async function importBackend(name: BackendName, opts: BackendOptions): Promise<void> {
  try {
    switch (name) {
      case 'cpu':
        await import('@tensorflow/tfjs-backend-cpu');
        return;
      case 'wasm': {
        const wasm = await import('@tensorflow/tfjs-backend-wasm');
        if (opts.wasmPaths !== undefined && !isNode && !tf.findBackend('wasm')) wasm.setWasmPaths(opts.wasmPaths);
        return;
      }
      case 'webgl':
        if (isNode) throw new GPT2Error('BACKEND_UNAVAILABLE', `backend "webgl" needs a browser with WebGL2, and this is ${runtimeName()}: in Node use "wasm", "cpu" or "tensorflow"`);
        // Float32 render targets are used when the device can render to them (EXT_color_buffer_float:
        // tfjs sets WEBGL_RENDER_FLOAT32_ENABLED itself), and then logits match the reference to ~1e-5.
        // On float16-only devices (some phones) tfjs falls back to half-float render textures: weights
        // are uploaded in float32 and token ids stay exact, but every op's output is rounded to fp16
        // (11-bit mantissa, max 65504; MASK_NEG = -3e4 stays finite), so logits drift by ~1e-2 and
        // greedy text can differ from the reference where the top two tokens are close. Use "wasm" there.
        await import('@tensorflow/tfjs-backend-webgl');
        return;
      case 'webgpu':
        if (isNode) throw new GPT2Error('BACKEND_UNAVAILABLE', `backend "webgpu" needs a browser with WebGPU (navigator.gpu), and this is ${runtimeName()}: in Node use "wasm", "cpu" or "tensorflow"`);
        if (typeof navigator === 'undefined' || !('gpu' in navigator)) {
          throw new GPT2Error('BACKEND_UNAVAILABLE', 'backend "webgpu" is not available: this browser has no WebGPU (navigator.gpu is missing; it needs a secure context — https or localhost). Use "webgl" or "wasm"');
        }
        await import('@tensorflow/tfjs-backend-webgpu');
        return;
      case 'tensorflow':
        if (!isNode) throw new GPT2Error('BACKEND_UNAVAILABLE', 'backend "tensorflow" (tfjs-node) runs only in Node: in a browser use "wasm", "webgl" or "webgpu"');
        // A non-literal specifier keeps TypeScript and bundlers from resolving the optional peer dependency.
        await import(PACKAGES.tensorflow);
        return;
    }
  } catch (e) {
    if (e instanceof GPT2Error) throw e;
    throw new GPT2Error(
      'BACKEND_UNAVAILABLE',
      `backend "${name}" is not available: could not load ${PACKAGES[name]} (${(e as Error).message.split('\n')[0]}). Install it with \`npm install ${PACKAGES[name]}\`${name === 'tensorflow' ? ' (it downloads libtensorflow at install time; where that fails use "wasm")' : ''}.`,
      { cause: e },
    );
  }
}

/** Switches tfjs to `name` (importing its package on first use) and waits until it is ready. */
export async function setBackend(name: BackendName = defaultBackend(), options: BackendOptions = {}): Promise<BackendName> {
  if (!BACKENDS.includes(name)) {
    throw new GPT2Error('BAD_OPTION', `unknown backend "${name}" (choose one of: ${BACKENDS.join(', ')})`);
  }
  if (tf.getBackend() === name && tf.engine().backendName === name) {
    // already running: the thread count changes only when asked for (a later loadModel keeps it)
    if (name === 'wasm') await enableWasmKernels(options.threads !== undefined ? { threads: wasmThreads(options) } : {});
    return name;
  }
  await importBackend(name, options);
  if (name === 'webgl') {
    // Generation changes shapes every step (the KV length grows by one), and tfjs-webgl by default
    // bakes shapes into its shaders: one fresh compile per op per length. With shapes passed as
    // uniforms most programs are compiled once and reused (same math, so the same results).
    tf.env().set('WEBGL_USE_SHAPES_UNIFORMS', true);
  }
  let ok = false;
  const threads = name === 'wasm' ? wasmThreads(options) : 1;
  let unshared: string | undefined;
  try {
    if (name === 'wasm' && isNode && threads > 1 && !tf.engine().registry['wasm']) {
      const r = await withSharedWasmMemory(() => tf.setBackend(name));
      ok = r.result;
      if (!r.memory) unshared = "the shared-memory rewrite did not recognise tfjs-backend-wasm's module (a version the kernels were not built for), so it runs on an unshared memory";
    } else {
      ok = await tf.setBackend(name);
    }
  } catch (e) {
    throw new GPT2Error('BACKEND_UNAVAILABLE', `backend "${name}" failed to initialise: ${(e as Error).message}`, { cause: e });
  }
  if (!ok) throw new GPT2Error('BACKEND_UNAVAILABLE', `backend "${name}" failed to initialise in this runtime`);
  await tf.ready();
  // Our SIMD kernels (linear, layer norm, decode attention) share the wasm backend's memory.
  if (name === 'wasm') await enableWasmKernels({ threads, unshared });
  // Production mode skips per-op debug checks and the "install tfjs-node" console notice.
  tf.enableProdMode();
  return name;
}

/**
 * The default thread count's cap. Measured on 2-core hosts only (2 threads: decode 1.2x, prefill 1.8x
 * one thread); beyond that, decode is bound by memory bandwidth, which a few cores already saturate, so
 * more threads would mostly spin. Ask for more with `threads`.
 */
export const DEFAULT_MAX_THREADS = 4;

function wasmThreads(options: BackendOptions): number {
  const raw = isNode ? process.env.GPT2_TFJS_THREADS : undefined;
  const env = raw !== undefined && raw !== '' ? Number(raw) : undefined;
  const n = cores();
  const wanted = options.threads ?? env ?? Math.min(n, DEFAULT_MAX_THREADS);
  const what = options.threads !== undefined ? 'threads' : 'GPT2_TFJS_THREADS';
  if (!Number.isInteger(wanted) || wanted < 1) throw new GPT2Error('BAD_OPTION', `${what} must be a positive integer, got ${options.threads ?? raw}`);
  if (wanted <= n) return wanted;
  // An explicit option asks for something this machine cannot give: say so. The environment variable
  // is a deployment setting that may travel to a smaller machine: it is capped, with one warning.
  if (options.threads !== undefined) throw new GPT2Error('BAD_OPTION', `threads is ${wanted}, but this machine has ${n} core${n === 1 ? '' : 's'}: use 1..${n}`);
  warnOnce(`GPT2_TFJS_THREADS=${wanted}, but this machine has ${n} core${n === 1 ? '' : 's'}: using ${n}`);
  return n;
}

function cores(): number {
  if (!isNode) return typeof navigator !== 'undefined' ? navigator.hardwareConcurrency || 1 : 1;
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const os = require('os') as typeof import('os');
    return os.availableParallelism?.() ?? os.cpus().length;
  } catch {
    return 1;
  }
}

export function currentBackend(): string {
  return tf.getBackend();
}

/** What runs the model now: backend, engine (our wasm kernels or tf ops), kernel threads and FMA, and why a fast path is off. */
export { engineInfo } from './model/engines';
export type { EngineInfo } from './model/engines';
export type { KernelStatus } from './model/wasm/instance';
