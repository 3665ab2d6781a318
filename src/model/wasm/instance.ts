/**
 * The kernels' instance: compiled once per build variant (plain SIMD128, or relaxed SIMD with fused
 * multiply-add), instantiated on the wasm backend's own WebAssembly.Memory so they work on tensors in
 * place, plus the optional worker thread (threads.ts). Keeps why the kernels or the thread are off,
 * for `kernelStatus()` (the public engineInfo) and a one-time warning.
 *
 * Built for tfjs-backend-wasm 4.22 internals: `backend.wasm` (the Emscripten module: its memory and
 * HEAPF32) and `backend.dataIdMap` (a tensor's byte offset in that memory).
 */
import * as tf from '../../tf';
import { KernelExports } from './abi';
import { KERNELS_FMA_WASM_BASE64, KERNELS_WASM_BASE64 } from './kernels.wasm';
import { patchMemoryImportToShared } from './shared-memory';
import { KernelTeam } from './threads';

/** The tfjs-backend-wasm version the kernels were written and tested against (package.json pins it). */
export const KERNELS_BUILT_FOR = '4.22.0';

/** What the wasm backend object exposes that the kernels use (tfjs-backend-wasm 4.x internals). */
export interface WasmBackendLike {
  wasm: { asm?: { memory?: WebAssembly.Memory }; wasmExports?: { memory?: WebAssembly.Memory }; wasmMemory?: WebAssembly.Memory };
  dataIdMap: { get(id: object): { memoryOffset: number } | undefined };
  makeOutput(shape: number[], dtype: 'float32' | 'int32'): tf.TensorInfo;
  disposeData(id: object): void;
}

interface Instance {
  memory: WebAssembly.Memory;
  module: WebAssembly.Module;
  exports: KernelExports;
  thread: KernelTeam | null;
}

let state: Instance | null = null;
let disabled = false;
/** Why the kernels are not instantiated (null when they are, or before the wasm backend started). */
let offReason: string | null = null;
/** Why more threads were wanted and are not running (null when they run or were not wanted). */
let threadOffReason: string | null = null;
let threadsWanted = 1;
/** Why the backend's memory is not shared, when backend.ts knows (kept for later calls). */
let unsharedReason: string | undefined;
let backendVersion: string | null = null;
const warned = new Set<string>();
/**
 * Whether a step's blocks run as one kernel each (GPT2BlockStep: decode rows, prompt chunks and short
 * prefills, up to MAX_FUSED_ROWS rows) on float32 models. On unless
 * GPT2_TFJS_FUSED_BLOCK=0 (for comparing against the op-by-op path; tests flip it with setBlockFusion).
 */
let blockFusion = typeof process === 'undefined' || process.env?.GPT2_TFJS_FUSED_BLOCK !== '0';
let blockRuns = 0;

export function setBlockFusion(on: boolean): void {
  blockFusion = on;
}
export function blockFusionOn(): boolean {
  return blockFusion;
}
/** Counts blocks run as one kernel (register.ts), so a benchmark or test can tell that the fused path engaged. */
export function countBlockRun(): void {
  blockRuns++;
}
export function blockRunsSoFar(): number {
  return blockRuns;
}

const compiled = new Map<string, Promise<WebAssembly.Module>>(); // by variant and memory kind

/** A minimal module using f32x4.relaxed_madd (relaxed SIMD): validates where the runtime has it. */
const RELAXED_PROBE = Uint8Array.from([
  0, 97, 115, 109, 1, 0, 0, 0, 1, 8, 1, 96, 3, 123, 123, 123, 1, 123, 3, 2, 1, 0,
  10, 13, 1, 11, 0, 32, 0, 32, 1, 32, 2, 253, 133, 2, 11,
]);
let fmaChoice: boolean | null = null;

/**
 * Whether the fused multiply-add build of the kernels can run here. Browsers ship relaxed SIMD
 * (Chrome 114+); Node 20's V8 has it behind a flag, which is switched on here (a wasm feature flag,
 * read when a module is compiled). GPT2_TFJS_FMA=0 keeps the plain build.
 */
function relaxedSimd(): boolean {
  if (fmaChoice !== null) return fmaChoice;
  const env = typeof process !== 'undefined' ? process.env?.GPT2_TFJS_FMA : undefined;
  fmaChoice = false;
  if (env === '0') return fmaChoice;
  if (WebAssembly.validate(RELAXED_PROBE)) return (fmaChoice = true);
  if (typeof process !== 'undefined' && process.versions?.node) {
    try {
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      (require('node:v8') as typeof import('v8')).setFlagsFromString('--experimental-wasm-relaxed-simd');
      fmaChoice = WebAssembly.validate(RELAXED_PROBE);
    } catch {
      fmaChoice = false;
    }
  }
  return fmaChoice;
}

function decodeBase64(s: string): Uint8Array {
  const bin = atob(s);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

function compileKernels(fma: boolean, shared: boolean): Promise<WebAssembly.Module> {
  const key = `${fma}:${shared}`;
  let p = compiled.get(key);
  if (!p) {
    const bytes = decodeBase64(fma ? KERNELS_FMA_WASM_BASE64 : KERNELS_WASM_BASE64);
    p = WebAssembly.compile((shared ? patchMemoryImportToShared(bytes) : bytes) as BufferSource);
    compiled.set(key, p);
  }
  return p;
}

/** The backend's WebAssembly.Memory: Emscripten glue calls it `asm.memory`, newer glue `wasmExports.memory`. */
export function memoryOf(b: unknown): WebAssembly.Memory | null {
  const w = (b as WasmBackendLike | undefined)?.wasm;
  const m = w?.asm?.memory ?? w?.wasmExports?.memory ?? w?.wasmMemory;
  return m instanceof WebAssembly.Memory ? m : null;
}

/** Logs `message` once per process (the library's only console output: a fast path that could not engage). */
/** console.warn, once per message per process: a fast path that switches itself off says so. */
export function warnOnce(message: string): void {
  if (warned.has(message)) return;
  warned.add(message);
  console.warn(`gpt2-tfjs: ${message}`);
}

/**
 * Instantiates the kernels against the current wasm backend's memory (async: browsers refuse to
 * compile modules over 4 KB synchronously) and, with `threads` > 1 on a shared memory, starts a
 * team of threads - 1 workers. Returns false when the kernels cannot run (the model then uses plain tf ops): the reason is
 * kept for kernelStatus() and logged once.
 */
export async function startKernels(opts: { threads?: number; unshared?: string } = {}): Promise<boolean> {
  if (disabled) return false;
  if (opts.threads !== undefined) threadsWanted = opts.threads;
  if (opts.unshared !== undefined) unsharedReason = opts.unshared;
  if (backendVersion === null) {
    try {
      backendVersion = (await import('@tensorflow/tfjs-backend-wasm')).version_wasm;
    } catch {
      backendVersion = 'unknown';
    }
  }
  const backend = tf.findBackend('wasm');
  const memory = memoryOf(backend);
  if (!memory) {
    offReason = `tfjs-backend-wasm ${backendVersion} does not expose its WebAssembly.Memory (looked for backend.wasm.asm.memory, .wasmExports.memory, .wasmMemory); the kernels were built for ${KERNELS_BUILT_FOR}`;
    state = null;
    warnOnce(`wasm kernels are off, generation runs on plain tf ops (several times slower): ${offReason}`);
    return false;
  }
  if (backendVersion !== KERNELS_BUILT_FOR) {
    warnOnce(`the wasm kernels were built for tfjs-backend-wasm ${KERNELS_BUILT_FOR} and this is ${backendVersion}: they are used, but results are checked only on ${KERNELS_BUILT_FOR}`);
  }
  const shared = memory.buffer instanceof SharedArrayBuffer;
  if (state?.memory === memory) {
    if (state.thread && state.thread.size !== threadsWanted - 1) {
      await state.thread.stop(); // asked for another thread count now
      state.thread = null;
    }
    if (threadsWanted > 1 && !state.thread && shared) {
      state.thread = await startThread(state.module, memory);
    } else {
      await ensureKernelThread(); // restarts a worker that exited after an idle spell
    }
    noteThread(shared, unsharedReason);
    return true;
  }
  // A shared memory needs the import declared shared: the same module with its import flag rewritten.
  const module = await compileKernels(relaxedSimd(), shared);
  const instance = await WebAssembly.instantiate(module, { env: { memory } });
  await state?.thread?.stop();
  const thread = threadsWanted > 1 && shared ? await startThread(module, memory) : null;
  state = { memory, module, exports: instance.exports as unknown as KernelExports, thread };
  offReason = null;
  noteThread(shared, unsharedReason);
  return true;
}

async function startThread(module: WebAssembly.Module, memory: WebAssembly.Memory): Promise<KernelTeam | null> {
  threadOffReason = null;
  try {
    return await KernelTeam.start(module, memory, { workers: threadsWanted - 1 });
  } catch (e) {
    threadOffReason = `the kernel workers did not start (${(e as Error).message})`;
    return null;
  }
}

/** Records (and warns once) why the wanted threads are not running. */
function noteThread(shared: boolean, unshared?: string): void {
  if (threadsWanted <= 1 || state?.thread) return;
  if (!shared) {
    threadOffReason =
      unshared ??
      (typeof process !== 'undefined' && process.versions?.node
        ? 'tfjs-backend-wasm was initialised on an unshared memory (setBackend("wasm", { threads: 2 }) must be the first wasm initialisation in the process)'
        : 'the page is not cross-origin isolated (serve it with COOP/COEP headers), so tfjs-backend-wasm runs on an unshared memory');
  }
  if (threadOffReason) warnOnce(`the wasm kernels run on one thread: ${threadOffReason}`);
}

/** Stops the kernel workers (kernels go on with one thread until the next model step starts them again). */
export async function stopKernelThread(): Promise<void> {
  await state?.thread?.stop();
}

/** Turns the kernels off (or back on) for this process: for A/B benchmarks and tests. */
export function setWasmKernelsDisabled(off: boolean): void {
  disabled = off;
}

/** The kernels' exports when the active backend is the wasm backend they were instantiated for. */
export function activeKernels(): KernelExports | null {
  if (disabled || !state || tf.getBackend() !== 'wasm') return null;
  return memoryOf(tf.engine().backend) === state.memory ? state.exports : null;
}

export function wasmKernelsActive(): boolean {
  return activeKernels() !== null;
}

/** Whether the kernels in use are the fused multiply-add (relaxed SIMD) build. */
export function wasmKernelsFma(): boolean {
  return state !== null && fmaChoice === true;
}

/** The workers when they can take part of a job of `work` multiply-adds (small jobs stay on one thread). */
export function threadFor(work: number): KernelTeam | null {
  const t = state?.thread;
  return t && t.usable && work >= 1 << 16 ? t : null;
}

/**
 * Starts the workers again when they exited after an idle spell (called before each model step;
 * a no-op when there is nothing to restart). Until it is up, kernels run on one thread.
 */
export async function ensureKernelThread(): Promise<void> {
  const s = state;
  if (!s || !s.thread || s.thread.usable) return;
  const old = s.thread;
  s.thread = null;
  await old.stop().catch(() => undefined);
  try {
    s.thread = await KernelTeam.start(s.module, s.memory, { workers: old.size });
  } catch (e) {
    s.thread = null;
    threadOffReason = `the kernel workers did not restart (${(e as Error).message})`;
    warnOnce(`the wasm kernels run on one thread: ${threadOffReason}`);
  }
}

/** Number of kernel threads in use: the caller, plus the workers while they run. */
export function wasmKernelThreads(): number {
  return state?.thread?.usable ? 1 + state.thread.size : 1;
}

/** What the kernels are doing and why (the wasm part of the public engineInfo()). */
export interface KernelStatus {
  /** The kernels run the model's linear, layer norm and attention on the active backend. */
  active: boolean;
  /** Why they are not active (absent when active). */
  reason?: string;
  /** Threads the kernels use now (the calling thread and the workers), and how many were asked for. */
  threads: number;
  threadsWanted: number;
  /** Why fewer threads run than were asked for (absent otherwise; an idle worker that exited is restarted by the next step). */
  threadReason?: string;
  /** The fused multiply-add (relaxed SIMD) build. */
  fma: boolean;
  /** Blocks of float32 models run as one kernel each, steps of up to MAX_FUSED_ROWS rows (off only with GPT2_TFJS_FUSED_BLOCK=0; q8 models run op by op). */
  fusedBlocks: boolean;
  /** tfjs-backend-wasm version in use, and the one the kernels were built for. */
  backendVersion: string | null;
  builtFor: string;
}

export function kernelStatus(): KernelStatus {
  const active = wasmKernelsActive();
  let reason: string | undefined;
  if (!active) {
    if (disabled) reason = 'turned off (setWasmKernelsDisabled)';
    else if (offReason) reason = offReason;
    else if (!tf.getBackend()) reason = 'no backend has started yet (loadModel or setBackend starts one; the default is "wasm")';
    else if (tf.getBackend() !== 'wasm') reason = `the active backend is "${tf.getBackend()}"; the kernels run only on "wasm"`;
    else reason = 'the wasm backend was not started through setBackend("wasm")';
  }
  const threads = active ? wasmKernelThreads() : 1;
  const idle = state?.thread && !state.thread.usable ? 'the workers exited after an idle spell; the next model step restarts them' : undefined;
  return {
    active,
    ...(reason ? { reason } : {}),
    threads,
    threadsWanted,
    ...(active && threads < threadsWanted ? { threadReason: threadOffReason ?? idle ?? 'unknown' } : {}),
    fma: active && wasmKernelsFma(),
    fusedBlocks: active && blockFusion,
    backendVersion,
    builtFor: KERNELS_BUILT_FOR,
  };
}
