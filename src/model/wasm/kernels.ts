/**
 * Hand-written WASM SIMD kernels for the tfjs `wasm` backend (source: native/kernels.c, built by
 * native/build.sh into kernels.wasm.ts). The module imports the backend's own WebAssembly.Memory,
 * so it works on tensors in place, and is registered as extra tfjs kernels:
 *
 *   GPT2Linear     y = act(x @ W + b)            replaces fused matMul (+ gelu): streams W once per call
 *                                                 instead of keeping an XNNPACK-packed second copy
 *   GPT2LayerNorm  (x - mean) / sqrt(var + eps) · g + b, one pass per row (10 ops → 1)
 *   GPT2Attend     causal attention against the KV cache buffers (prefill and decode)
 *   GPT2CacheRows  a new cache buffer assembled from rows of one or two others
 * plus in-place row moves/writes inside cache buffers (moveCacheRows, writeCacheRows).
 *
 * Why: tfjs-backend-wasm 4.22 runs a decode-time matrix-vector product through XNNPACK at ~10 GB/s of
 * weights and keeps every weight twice (its tensor + XNNPACK's packed copy); small ops cost ~6 µs each.
 *
 * They are used only when the active backend is `wasm` and `enableWasmKernels()` has run for it
 * (setBackend does that); everywhere else the callers fall back to plain tf ops, which are also
 * the reference the kernels are tested against.
 */
import * as tf from '../../tf';
import { KERNELS_FMA_WASM_BASE64, KERNELS_WASM_BASE64 } from './kernels.wasm';
import { patchMemoryImportToShared } from './shared-memory';
import { KernelThread } from './threads';

interface KernelExports {
  linear(x: number, w: number, b: number, y: number, M: number, K: number, n: number, ld: number, ldx: number, act: number, pack: number): void;
  reduce_act(y: number, parts: number, nparts: number, M: number, N: number, b: number, act: number): void;
  copy_f32(dst: number, src: number, n: number): void;
  zero_f32(dst: number, n: number): void;
  layer_norm(x: number, g: number, b: number, y: number, M: number, D: number, eps: number): void;
  attend(q: number, k: number, v: number, mask: number, out: number, scratch: number, B: number, T: number, past: number, H: number, hd: number, ldkv: number, scale: number, h0: number, h1: number): void;
}

/** What the wasm backend object exposes that the kernels use (tfjs-backend-wasm 4.x internals). */
interface WasmBackendLike {
  wasm: { asm?: { memory?: WebAssembly.Memory }; HEAPF32: Float32Array };
  dataIdMap: { get(id: object): { memoryOffset: number } | undefined };
  makeOutput(shape: number[], dtype: 'float32'): tf.TensorInfo;
  disposeData(id: object): void;
}

/** KC x 8 floats: the packed W panel of the kernel's tiled path (KC = 256 in kernels.c). */
const PACK_FLOATS = 256 * 8;

/** Chunks of the inner dimension in a two-thread few-row product (see GPT2Linear). */
const LINEAR_CHUNKS = 8;

export const ACT_CODES = { none: 0, gelu_new: 1, relu: 2 } as const;
export type KernelActivation = keyof typeof ACT_CODES;

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

/** Whether the kernels in use are the fused multiply-add (relaxed SIMD) build. */
export function wasmKernelsFma(): boolean {
  return state !== null && fmaChoice === true;
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
let state: { memory: WebAssembly.Memory; module: WebAssembly.Module; exports: KernelExports; thread: KernelThread | null } | null = null;
let registered = false;
let disabled = false;

function decodeBase64(s: string): Uint8Array {
  const bin = atob(s);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

function memoryOf(b: unknown): WebAssembly.Memory | null {
  const m = (b as WasmBackendLike | undefined)?.wasm?.asm?.memory;
  return m instanceof WebAssembly.Memory ? m : null;
}

/**
 * Instantiates the kernels against the current wasm backend's memory (async: browsers refuse to
 * compile modules over 4 KB synchronously). Returns false, and the model keeps using plain tf ops,
 * when the backend does not expose its memory (a tfjs-backend-wasm build this was not written for).
 */
export async function enableWasmKernels(opts: { threads?: number } = {}): Promise<boolean> {
  const backend = tf.findBackend('wasm');
  const memory = memoryOf(backend);
  if (!memory || disabled) return false;
  const wantThread = (opts.threads ?? 1) > 1 && memory.buffer instanceof SharedArrayBuffer;
  if (state?.memory === memory) {
    await ensureKernelThread(); // restarts a worker that exited after an idle spell
    return true;
  }
  // A shared memory needs the import declared shared: the same module with its import flag rewritten.
  const shared = memory.buffer instanceof SharedArrayBuffer;
  const module = await compileKernels(relaxedSimd(), shared);
  const instance = await WebAssembly.instantiate(module, { env: { memory } });
  await state?.thread?.stop();
  let thread: KernelThread | null = null;
  if (wantThread) {
    try {
      thread = await KernelThread.start(module, memory);
    } catch {
      thread = null; // no worker_threads here: one thread
    }
  }
  state = { memory, module, exports: instance.exports as unknown as KernelExports, thread };
  if (!registered) {
    registerKernels();
    registered = true;
  }
  return true;
}

/** Stops the worker thread (kernels go on with one thread until the next model step starts another). */
export async function stopKernelThread(): Promise<void> {
  await state?.thread?.stop();
}

/** Turns the kernels off (or back on) for this process: for A/B benchmarks and tests. */
export function setWasmKernelsDisabled(off: boolean): void {
  disabled = off;
}

/** The kernels, when the active backend is the wasm backend they were instantiated for. */
function active(): KernelExports | null {
  if (disabled || !state || tf.getBackend() !== 'wasm') return null;
  return memoryOf(tf.engine().backend) === state.memory ? state.exports : null;
}

export function wasmKernelsActive(): boolean {
  return active() !== null;
}

function offset(backend: WasmBackendLike, t: tf.TensorInfo): number {
  const d = backend.dataIdMap.get(t.dataId);
  if (!d) throw new Error('gpt2-tfjs kernel: tensor is not on the wasm backend');
  return d.memoryOffset;
}

function exportsFor(): KernelExports {
  if (!state) throw new Error('gpt2-tfjs kernels are not instantiated');
  return state.exports;
}

/** The worker thread when it can take half of a job of `work` multiply-adds (small jobs stay on one thread); claim it before posting. */
function threadFor(work: number): KernelThread | null {
  const t = state?.thread;
  return t && t.usable && work >= 1 << 16 ? t : null;
}

/**
 * Starts a new worker when the last one exited after an idle spell (called before each model step;
 * a no-op when there is nothing to restart). Until it is up, kernels run on one thread.
 */
export async function ensureKernelThread(): Promise<void> {
  const s = state;
  if (!s || !s.thread || s.thread.usable) return;
  const old = s.thread;
  s.thread = null;
  await old.stop().catch(() => undefined);
  try {
    s.thread = await KernelThread.start(s.module, s.memory);
  } catch {
    s.thread = null;
  }
}

/** Number of kernel threads in use (1, or 2 with the worker). */
export function wasmKernelThreads(): number {
  return state?.thread?.usable ? 2 : 1;
}

type KernelArgs = { inputs: Record<string, tf.TensorInfo>; backend: unknown; attrs?: tf.NamedAttrMap };

/** Registers one of our kernels for the wasm backend. */
function wasmKernel(kernelName: string, run: (be: WasmBackendLike, inputs: Record<string, tf.TensorInfo>, attrs: tf.NamedAttrMap) => tf.TensorInfo): void {
  const kernelFunc = ({ inputs, backend, attrs }: KernelArgs) => run(backend as WasmBackendLike, inputs, attrs ?? {});
  tf.registerKernel({ kernelName, backendName: 'wasm', kernelFunc } as unknown as tf.KernelConfig);
}

function registerKernels(): void {
  // Cache bookkeeping: out[i] = zeros(dst[i]) ++ src_i[start[i], start[i] + len[i]) ++ (unused room), where
  // row i comes from input a (rows[i] < a's batch) or b (rows[i] - a's batch).
  wasmKernel('GPT2CacheRows', (be, inputs, attrs) => {
      const { a, b } = inputs;
      const d = a.shape[2];
      const [rows, start, len, dst] = [attrs.rows, attrs.start, attrs.len, attrs.dst] as number[][];
      const cap = attrs.cap as number;
      const out = be.makeOutput([Math.max(rows.length, (attrs.rowsCap as number) ?? 0), cap, d], 'float32');
      const k = exportsFor();
      const po = offset(be, out);
      const nA = (attrs.aRows as number) ?? a.shape[0]; // rows numbered below nA come from a (its buffer may hold spare rows)
      rows.forEach((r, i) => {
        const fromA = r < nA;
        const src = fromA ? a : (b as tf.TensorInfo);
        const row = fromA ? r : r - nA;
        const base = po + 4 * i * cap * d;
        k.zero_f32(base, dst[i] * d);
        k.copy_f32(base + 4 * dst[i] * d, offset(be, src) + 4 * (row * src.shape[1] + start[i]) * d, len[i] * d);
        // positions after dst + len are never read (attention reads only the first `length`); left
        // padding is zeroed because masked positions are still multiplied before the mask applies
      });
      return out;
  });
  wasmKernel('GPT2Linear', (be, inputs, attrs) => {
      const { x, w, b } = inputs;
      const [M, K] = x.shape;
      const N = w.shape[1];
      const out = be.makeOutput([M, N], 'float32');
      if (M * N === 0) return out;
      const act = attrs.act as number;
      const k = exportsFor();
      const thread = threadFor(M * K * N);
      // Few rows (decode): the inner dimension is cut into LINEAR_CHUNKS chunks that both threads take
      // in turn (each streams contiguous rows of W; a late worker just takes fewer); each chunk's
      // partial product has its own slot and the slots are summed in order, so the result does not
      // depend on who computed what. Many rows (prefill): the threads split the output columns.
      const kSplit = thread !== null && M < 16 && N <= 4096 && K >= 4 * LINEAR_CHUNKS;
      const pack = M >= 16 ? be.makeOutput([2 * PACK_FLOATS], 'float32') : null; // the tiled path's W panels, one per thread
      const partial = kSplit ? be.makeOutput([LINEAR_CHUNKS * M * N], 'float32') : null;
      const [px, pw, pb, py, pp] = [offset(be, x), offset(be, w), b ? offset(be, b) : 0, offset(be, out), pack ? offset(be, pack) : 0];
      try {
        if (thread && partial && thread.claim()) {
          const chunk = Math.ceil(K / LINEAR_CHUNKS / 4) * 4;
          const n = Math.ceil(K / chunk);
          const parts = offset(be, partial);
          thread.post(3, [px, pw, parts, M, K, N, chunk, n]);
          try {
            for (let ch = thread.takeChunk(); ch < n; ch = thread.takeChunk()) {
              const k0 = ch * chunk;
              k.linear(px + 4 * k0, pw + 4 * k0 * N, 0, parts + 4 * ch * M * N, M, Math.min(chunk, K - k0), N, N, K, 0, 0);
            }
          } finally {
            thread.wait();
          }
          k.reduce_act(py, parts, n, M, N, pb, act);
        } else if (thread && !partial && thread.claim()) {
          const n0 = (N >> 1) & ~15;
          thread.post(1, [px, pw + 4 * n0, pb && pb + 4 * n0, py + 4 * n0, M, K, N - n0, N, K, act, pp && pp + 4 * PACK_FLOATS]);
          try {
            k.linear(px, pw, pb, py, M, K, n0, N, K, act, pp);
          } finally {
            thread.wait();
          }
        } else {
          k.linear(px, pw, pb, py, M, K, N, N, K, act, pp);
        }
      } finally {
        if (pack) be.disposeData(pack.dataId);
        if (partial) be.disposeData(partial.dataId);
      }
      return out;
  });
  wasmKernel('GPT2LayerNorm', (be, inputs, attrs) => {
      const { x, g, b } = inputs;
      const [M, D] = x.shape;
      const out = be.makeOutput([M, D], 'float32');
      if (M * D > 0) exportsFor().layer_norm(offset(be, x), offset(be, g), offset(be, b), offset(be, out), M, D, attrs.eps as number);
      return out;
  });
  wasmKernel('GPT2Attend', (be, inputs, attrs) => {
      const { q, k, v, mask } = inputs;
      const D = q.shape[1];
      const [B, T, past, H] = [attrs.B, attrs.T, attrs.past, attrs.nHead] as number[];
      const scale = attrs.scale as number;
      const ldkv = k.shape[1];
      const out = be.makeOutput([B * T, D], 'float32');
      const room = past + T + 4;
      const scratch = be.makeOutput([2 * room], 'float32'); // one softmax row per thread
      const thread = threadFor(B * T * (past + T) * D);
      const ints = [offset(be, q), offset(be, k), offset(be, v), mask ? offset(be, mask) : 0, offset(be, out), offset(be, scratch), B, T, past, H, D / H, ldkv];
      try {
        // Two threads: with several rows the worker takes rows [B/2, B) (each thread then reads its own
        // part of the cache); with one row it takes heads [H/2, H).
        const split = thread !== null && thread.claim();
        const rowSplit = split && B >= 2;
        const b0 = rowSplit ? B >> 1 : B;
        const h0 = split && !rowSplit ? H >> 1 : H;
        if (split) {
          const theirs = ints.slice();
          theirs[5] += 4 * room;
          if (rowSplit) {
            const qRow = 4 * T * D; // q/out rows per batch row
            const kvRow = 4 * ldkv * D;
            theirs[0] += b0 * qRow;
            theirs[1] += b0 * kvRow;
            theirs[2] += b0 * kvRow;
            if (theirs[3]) theirs[3] += 4 * b0 * (past + T);
            theirs[4] += b0 * qRow;
            theirs[6] = B - b0;
          }
          thread.post(2, [...theirs, rowSplit ? 0 : h0, H], scale);
        }
        try {
          const [a0, a1, a2, a3, a4, a5, , a7, a8, a9, a10, a11] = ints;
          exportsFor().attend(a0, a1, a2, a3, a4, a5, b0, a7, a8, a9, a10, a11, scale, 0, h0);
        } finally {
          if (split) thread.wait();
        }
      } finally {
        be.disposeData(scratch.dataId);
      }
      return out;
  });
}

/** y = act(x @ w + b) on the kernels; null when they are not active (caller uses tf ops). */
export function kernelLinear(x: tf.Tensor2D, w: tf.Tensor2D, b: tf.Tensor1D | null, act: KernelActivation): tf.Tensor2D | null {
  if (!active()) return null;
  const inputs: tf.NamedTensorMap = b ? { x, w, b } : { x, w };
  return tf.engine().runKernel('GPT2Linear', inputs, { act: ACT_CODES[act] }) as tf.Tensor2D;
}

export function kernelLayerNorm(x: tf.Tensor2D, g: tf.Tensor1D, b: tf.Tensor1D, eps: number): tf.Tensor2D | null {
  if (!active()) return null;
  return tf.engine().runKernel('GPT2LayerNorm', { x, g, b }, { eps }) as tf.Tensor2D;
}

/**
 * Causal attention for T new positions per row: q [B*T, d] against the first past + T positions of
 * k/v [B, cap, d] (cache buffers that already hold the new keys/values), with an optional additive
 * padding mask of B * (past + T) values → [B*T, d]. Query i of a row sees positions [0, past + i].
 */
export function kernelAttend(q: tf.Tensor2D, k: tf.Tensor3D, v: tf.Tensor3D, B: number, T: number, past: number, mask: tf.Tensor | null, nHead: number, scale: number): tf.Tensor2D | null {
  if (!active()) return null;
  const inputs: tf.NamedTensorMap = mask ? { q, k, v, mask } : { q, k, v };
  return tf.engine().runKernel('GPT2Attend', inputs, { nHead, scale, B, T, past }) as tf.Tensor2D;
}

/**
 * A new cache buffer [max(rows.length, rowsCap), cap, d] assembled from rows of `a` (and `b`, numbered
 * from `aRows`, a's rows in use):
 * row i is dst[i] zero positions, then positions [start[i], start[i] + len[i]) of its source row,
 * then unused room (not zeroed). One contiguous copy per row. Null when the kernels are not active.
 */
export function kernelCacheRows(a: tf.Tensor3D, b: tf.Tensor3D | null, rows: number[], start: number[], len: number[], dst: number[], cap: number, rowsCap = rows.length, aRows = a.shape[0]): tf.Tensor3D | null {
  if (!active()) return null;
  rows.forEach((r, i) => {
    const src = r < aRows ? a : b;
    const row = r < aRows ? r : r - aRows;
    if (!src || row >= src.shape[0] || start[i] < 0 || start[i] + len[i] > src.shape[1] || dst[i] + len[i] > cap || src.shape[2] !== a.shape[2]) {
      throw new Error(`cache row ${r} [${start[i]}, ${start[i] + len[i]}) -> ${dst[i]} does not fit`);
    }
  });
  const inputs: tf.NamedTensorMap = b ? { a, b } : { a };
  return tf.engine().runKernel('GPT2CacheRows', inputs, { rows, start, len, dst, cap, rowsCap, aRows }) as tf.Tensor3D;
}

/**
 * In place, inside cache buffers (no new tensor): row to[i] of `buf` becomes `dst` zero positions, then
 * positions [start, start + len) of row from[i] of `src` (zeroLead false: positions before `dst` are
 * left as they are). `src` may be `buf` itself: moves run in order,
 * so from[i] >= to[i] with ascending `to` never reads a row already overwritten). False, doing nothing,
 * when the kernels are not active.
 */
export function moveCacheRows(buf: tf.Tensor3D, src: tf.Tensor3D, from: number[], to: number[], start: number, len: number, dst: number, zeroLead = true): boolean {
  if (!active()) return false;
  const [R, cap, d] = buf.shape;
  const [Rs, caps] = src.shape;
  if (src.shape[2] !== d || dst + len > cap || start + len > caps || from.some((r) => r < 0 || r >= Rs) || to.some((r) => r < 0 || r >= R)) {
    throw new Error(`cache move [${start}, ${start + len}) -> ${dst} does not fit ${buf.shape} from ${src.shape}`);
  }
  const be = tf.engine().backend as unknown as WasmBackendLike;
  const k = exportsFor();
  const pb = offset(be, buf);
  const ps = offset(be, src);
  from.forEach((r, i) => {
    const base = pb + 4 * to[i] * cap * d;
    k.copy_f32(base + 4 * dst * d, ps + 4 * (r * caps + start) * d, len * d); // forward copy: safe for dst <= src
    if (zeroLead) k.zero_f32(base, dst * d);
  });
  return true;
}

/**
 * Writes `rows` [B, T, d] into the cache buffer `buf` [B, cap, d] at positions [pos, pos + T), in
 * place (the one deliberate mutation of a tensor in this library: `buf` is a KV-cache buffer that
 * only its KVCache references). Returns false, writing nothing, when the kernels are not active.
 */
export function writeCacheRows(buf: tf.Tensor3D, rows: tf.Tensor3D, pos: number): boolean {
  const r = Array.from({ length: rows.shape[0] }, (_, i) => i);
  return moveCacheRows(buf, rows, r, r, 0, rows.shape[1], pos, false);
}
