/**
 * Our kernels registered with tfjs for the `wasm` backend, written as tfjs-backend-wasm writes its
 * own (src/kernels/*.ts there): typed inputs and attrs, a kernelFunc that allocates the output with
 * the backend and calls the C function through the ABI table (abi.ts), and a typed runner that the
 * engine calls (tf.engine().runKernel, so tidy/dispose track the outputs as for any tf op).
 *
 *   GPT2Linear     y = act(x @ W + b)            replaces fused matMul (+ gelu): streams W once per call
 *                                                 instead of keeping an XNNPACK-packed second copy
 *   GPT2LayerNorm  (x - mean) / sqrt(var + eps) · g + b, one pass per row (10 ops → 1)
 *   GPT2Attend     causal attention against the KV cache buffers (prefill and decode)
 *   GPT2LinearP    y = act(x @ W + b) (+ residual) with W float32 in 16-column panels (one sequential stream per panel)
 *   GPT2GatherP    rows of a tied float embedding, read from the head's panels
 *   GPT2LinearQ8   y = act(x @ W + b) with W int8 (q8): x's rows quantized to int8 on the fly, int32 sums
 *   GPT2GatherQ8   rows of a q8 tied embedding, dequantized from the head's int8 panels
 *   GPT2SplitCols  column blocks of a matrix (q|k|v) as separate tensors: strided copies in wasm (tfjs's
 *                  slice copies through JS typed arrays, several times slower on a shared heap)
 *   GPT2CacheRows  a new cache buffer assembled from rows of one or two others
 *   GPT2CacheNew   a new cache buffer, its positions to be written by GPT2BlockStep
 *   GPT2BlockStep  one transformer block (ln_1, c_attn, the cache writes, attention, c_proj + x, ln_2,
 *                  c_fc + act, c_proj + x1) over a step's rows, decode rows and prompt chunks alike, in
 *                  one call run by the whole team
 */
import * as tf from '../../tf';
import type { F32PanelWeight, Q8Weight } from '../params';
import { KernelExports, call } from './abi';
import { WasmBackendLike, activeKernels, countBlockRun, memoryOf, threadFor } from './instance';
import { runChunks, runTeamed } from './threads';

export const ACT_CODES = { none: 0, gelu_new: 1, relu: 2 } as const;
export type KernelActivation = keyof typeof ACT_CODES;

/** KC x 8 floats: the packed W panel of the kernel's tiled path (KC = 256 in kernels.c). */
const PACK_FLOATS = 256 * 8;

/** Chunks of the inner dimension in a few-row product (see GPT2Linear). */
export const LINEAR_CHUNKS = 8;

function offset(backend: WasmBackendLike, t: tf.TensorInfo): number {
  const d = backend.dataIdMap.get(t.dataId);
  if (!d) throw new Error('gpt2-tfjs kernel: tensor is not on the wasm backend');
  return d.memoryOffset;
}

function kernels(): KernelExports {
  const k = activeKernels();
  if (!k) throw new Error('gpt2-tfjs kernels are not instantiated for the active backend');
  return k;
}

/** Registers one kernel for the wasm backend. */
function register<I extends string, A extends object>(kernelName: string, run: (be: WasmBackendLike, inputs: Partial<Record<I, tf.TensorInfo>>, attrs: A) => tf.TensorInfo | tf.TensorInfo[]): void {
  if (tf.getKernel(kernelName, 'wasm')) return;
  const kernelFunc = ({ inputs, backend, attrs }: { inputs: Partial<Record<I, tf.TensorInfo>>; backend: unknown; attrs?: unknown }) => run(backend as WasmBackendLike, inputs, (attrs ?? {}) as A);
  tf.registerKernel({ kernelName, backendName: 'wasm', kernelFunc } as unknown as tf.KernelConfig);
}

// ----------------------------------------------------------------------------- GPT2Linear

type LinearInputs = 'x' | 'w' | 'b';
interface LinearAttrs {
  act: number;
}

/**
 * Few rows (decode, M < 16, N <= 4096): the inner dimension is cut into LINEAR_CHUNKS chunks, each
 * chunk's partial product gets its own slot, and the slots are summed in order (reduce_act) — with
 * any number of threads (all take chunks in turn), so the result does not depend on the thread count.
 * Many rows (prefill) or wide outputs (the head): chunks of output columns, multiples of 16 (each
 * column is computed exactly as one thread computes it).
 */
function linearKernel(be: WasmBackendLike, inputs: Partial<Record<LinearInputs, tf.TensorInfo>>, { act }: LinearAttrs): tf.TensorInfo {
  const x = inputs.x as tf.TensorInfo;
  const w = inputs.w as tf.TensorInfo;
  const [M, K] = x.shape;
  const N = w.shape[1];
  const out = be.makeOutput([M, N], 'float32');
  if (M * N === 0) return out;
  const k = kernels();
  const thread = threadFor(M * K * N);
  const chunked = M < 16 && N <= 4096 && K >= 4 * LINEAR_CHUNKS;
  const cols = panelChunks(N, 64, inputs.b !== undefined, false); // a row-major W advances 64 bytes per 16 columns
  const pack = M >= 16 ? be.makeOutput([cols.count * PACK_FLOATS], 'float32') : null; // the tiled path's W panels, one per chunk
  const partial = chunked ? be.makeOutput([LINEAR_CHUNKS * M * N], 'float32') : null;
  const [px, pw, pb, py, pp] = [offset(be, x), offset(be, w), inputs.b ? offset(be, inputs.b) : 0, offset(be, out), pack ? offset(be, pack) : 0];
  try {
    if (partial) {
      const size = Math.ceil(K / LINEAR_CHUNKS / 4) * 4;
      const count = Math.ceil(K / size);
      const parts = offset(be, partial);
      // chunk c: x[:, c*size : +size] @ W[c*size : +size, :] -> parts[c]
      runChunks(k, 'linear', { x: px, w: pw, b: 0, y: parts, M, K: size, n: N, ld: N, ldx: K, act: 0, pack: 0 },
        { count, step: { x: 4 * size, w: 4 * size * N, y: 4 * M * N }, extent: { arg: 'K', size, total: K } }, thread);
      call(k, 'reduce_act', { y: py, parts, nparts: count, M, N, b: pb, act });
    } else {
      // column chunks (multiples of 16), each with its own pack scratch when tiled
      runChunks(k, 'linear', { x: px, w: pw, b: pb, y: py, M, K, n: N, ld: N, ldx: K, act, pack: pp }, { ...cols, step: { ...cols.step, pack: pp && 4 * PACK_FLOATS } }, thread);
    }
  } finally {
    if (pack) be.disposeData(pack.dataId);
    if (partial) be.disposeData(partial.dataId);
  }
  return out;
}

export function runLinear(x: tf.Tensor2D, w: tf.Tensor2D, b: tf.Tensor1D | null, act: KernelActivation): tf.Tensor2D {
  const inputs: tf.NamedTensorMap = b ? { x, w, b } : { x, w };
  const attrs: LinearAttrs = { act: ACT_CODES[act] };
  return tf.engine().runKernel('GPT2Linear', inputs, attrs as unknown as tf.NamedAttrMap) as tf.Tensor2D;
}

// ----------------------------------------------------------------------------- panels

/** Column chunks of a panel product: whole 16-column panels each, taken in turn by both threads. */
const PANEL_CHUNKS = 16;

/**
 * The chunking of a product over panel-packed weights (linear_p, linear_q8, linear_q8w): N columns
 * cut into at most PANEL_CHUNKS chunks of whole panels; per chunk the weights advance by
 * `panelBytes` per 16 columns, the scales (if any), bias (if any) and output by 4 bytes per column.
 */
function panelChunks(N: number, panelBytes: number, bias: boolean, scales: boolean, residual = false) {
  const panels = Math.ceil(N / 16);
  const size = Math.ceil(panels / Math.min(panels, PANEL_CHUNKS)) * 16; // columns per chunk
  const step = { w: (size / 16) * panelBytes, b: bias ? 4 * size : 0, y: 4 * size, ...(scales ? { ws: 4 * size } : {}), ...(residual ? { r: 4 * size } : {}) };
  return { count: Math.ceil(N / size), step, extent: { arg: 'n' as const, size, total: N } };
}

// ----------------------------------------------------------------------------- GPT2LinearP

type LinearPInputs = 'x' | 'w' | 'b' | 'r';
interface LinearPAttrs {
  act: number;
  n: number; // output columns (w is padded to whole panels of 16)
}

/**
 * y = act(x @ W + b) (+ r) with W float32 in panels (native/kernels.c linear_p): the threads take chunks
 * of whole panels; each output column is computed by one call, so any thread count gives identical bits.
 */
function linearPKernel(be: WasmBackendLike, inputs: Partial<Record<LinearPInputs, tf.TensorInfo>>, { act, n: N }: LinearPAttrs): tf.TensorInfo {
  const x = inputs.x as tf.TensorInfo;
  const [M, K] = x.shape;
  const out = be.makeOutput([M, N], 'float32');
  if (M * N === 0) return out;
  const pb = inputs.b ? offset(be, inputs.b) : 0;
  const pr = inputs.r ? offset(be, inputs.r) : 0;
  runChunks(kernels(), 'linear_p', { x: offset(be, x), w: offset(be, inputs.w as tf.TensorInfo), b: pb, y: offset(be, out), M, K, n: N, ld: N, ldx: K, act, r: pr },
    panelChunks(N, 64 * K, pb !== 0, false, pr !== 0), threadFor(M * K * N));
  return out;
}

/** act(x @ w + b), plus `residual` [M, out] when given (added after the activation, in the kernel). */
export function runLinearP(x: tf.Tensor2D, w: F32PanelWeight, b: tf.Tensor1D | null, act: KernelActivation, residual: tf.Tensor2D | null = null): tf.Tensor2D {
  const inputs: tf.NamedTensorMap = { x, w: w.packed, ...(b ? { b } : {}), ...(residual ? { r: residual } : {}) };
  const attrs: LinearPAttrs = { act: ACT_CODES[act], n: w.outDim };
  return tf.engine().runKernel('GPT2LinearP', inputs, attrs as unknown as tf.NamedAttrMap) as tf.Tensor2D;
}

type GatherPInputs = 'w' | 'ids';
interface GatherPAttrs {
  K: number;
}

/** Rows of the tied float embedding from the head's panels: [n] ids -> [n, K]. */
function gatherPKernel(be: WasmBackendLike, inputs: Partial<Record<GatherPInputs, tf.TensorInfo>>, { K }: GatherPAttrs): tf.TensorInfo {
  const ids = inputs.ids as tf.TensorInfo;
  const n = ids.shape[0];
  const out = be.makeOutput([n, K], 'float32');
  if (n * K > 0) call(kernels(), 'gather_p', { w: offset(be, inputs.w as tf.TensorInfo), ids: offset(be, ids), out: offset(be, out), n, K });
  return out;
}

export function runGatherP(w: F32PanelWeight, ids: tf.Tensor1D): tf.Tensor2D {
  const attrs: GatherPAttrs = { K: w.inDim };
  return tf.engine().runKernel('GPT2GatherP', { w: w.packed, ids }, attrs as unknown as tf.NamedAttrMap) as tf.Tensor2D;
}

// ----------------------------------------------------------------------------- GPT2LinearQ8

type LinearQ8Inputs = 'x' | 'w' | 's' | 'b';
interface LinearQ8Attrs {
  act: number;
  n: number; // output columns (w and s are padded to whole panels of 16)
  K4: number; // inner dimension rounded up to 4 (w's k-groups)
}


/**
 * y = act(quant(x) @ W·s + b) with W int8 in panels (native/kernels.c linear_q8). x's rows are
 * quantized once (quantize_rows), then both threads take chunks of whole panels: each output column
 * is computed by one call, so the result does not depend on the thread count.
 */
function linearQ8Kernel(be: WasmBackendLike, inputs: Partial<Record<LinearQ8Inputs, tf.TensorInfo>>, { act, n: N, K4 }: LinearQ8Attrs): tf.TensorInfo {
  const x = inputs.x as tf.TensorInfo;
  const [M, K] = x.shape;
  const out = be.makeOutput([M, N], 'float32');
  if (M * N === 0) return out;
  const k = kernels();
  const xq = be.makeOutput([(M * K4) / 2], 'float32'); // scratch bytes for int16 [M, K4]
  const xs = be.makeOutput([M], 'float32');
  try {
    const [pq, ps] = [offset(be, xq), offset(be, xs)];
    call(k, 'quantize_rows', { x: offset(be, x), xq: pq, xs: ps, M, K, ldx: K, K4 });
    const pb = inputs.b ? offset(be, inputs.b) : 0;
    runChunks(k, 'linear_q8', { xq: pq, xs: ps, w: offset(be, inputs.w as tf.TensorInfo), ws: offset(be, inputs.s as tf.TensorInfo), b: pb, y: offset(be, out), M, K4, n: N, ld: N, act },
      panelChunks(N, 16 * K4, pb !== 0, true), threadFor((M * K4 * N) / 2));
  } finally {
    be.disposeData(xq.dataId);
    be.disposeData(xs.dataId);
  }
  return out;
}

function runQ8(kernel: 'GPT2LinearQ8' | 'GPT2LinearQ8W', x: tf.Tensor2D, w: Q8Weight, b: tf.Tensor1D | null, act: KernelActivation): tf.Tensor2D {
  const inputs: tf.NamedTensorMap = b ? { x, w: w.packed, s: w.scale, b } : { x, w: w.packed, s: w.scale };
  const attrs: LinearQ8Attrs = { act: ACT_CODES[act], n: w.outDim, K4: w.K4 };
  return tf.engine().runKernel(kernel, inputs, attrs as unknown as tf.NamedAttrMap) as tf.Tensor2D;
}

export const runLinearQ8 = (x: tf.Tensor2D, w: Q8Weight, b: tf.Tensor1D | null, act: KernelActivation): tf.Tensor2D => runQ8('GPT2LinearQ8', x, w, b, act);

/**
 * The weight-only variant (float activations, int8 weights widened to float): kept to measure the
 * choice of linear_q8 against it (bench/q8-kernels.ts); the engine does not use it.
 */
function linearQ8WKernel(be: WasmBackendLike, inputs: Partial<Record<LinearQ8Inputs, tf.TensorInfo>>, { act, n: N, K4 }: LinearQ8Attrs): tf.TensorInfo {
  const x = inputs.x as tf.TensorInfo;
  const [M, K] = x.shape;
  const out = be.makeOutput([M, N], 'float32');
  if (M * N === 0) return out;
  const k = kernels();
  const xp = be.makeOutput([M * K4], 'float32'); // x with rows padded to K4
  try {
    const px = offset(be, xp);
    call(k, 'zero_f32', { dst: px, n: M * K4 });
    call(k, 'copy_cols', { dst: px, src: offset(be, x), M, n: K, ldd: K4, lds: K });
    const pb = inputs.b ? offset(be, inputs.b) : 0;
    runChunks(k, 'linear_q8w', { x: px, w: offset(be, inputs.w as tf.TensorInfo), ws: offset(be, inputs.s as tf.TensorInfo), b: pb, y: offset(be, out), M, K4, n: N, ld: N, act },
      panelChunks(N, 16 * K4, pb !== 0, true), threadFor((M * K4 * N) / 2));
  } finally {
    be.disposeData(xp.dataId);
  }
  return out;
}

export const runLinearQ8WeightOnly = (x: tf.Tensor2D, w: Q8Weight, b: tf.Tensor1D | null, act: KernelActivation): tf.Tensor2D => runQ8('GPT2LinearQ8W', x, w, b, act);

// ----------------------------------------------------------------------------- GPT2GatherQ8

type GatherQ8Inputs = 'w' | 's' | 'ids';
interface GatherQ8Attrs {
  K: number;
  K4: number;
}

/** Rows of the tied q8 embedding, dequantized from the head's panels: [n] ids -> [n, K]. */
function gatherQ8Kernel(be: WasmBackendLike, inputs: Partial<Record<GatherQ8Inputs, tf.TensorInfo>>, { K, K4 }: GatherQ8Attrs): tf.TensorInfo {
  const ids = inputs.ids as tf.TensorInfo;
  const n = ids.shape[0];
  const out = be.makeOutput([n, K], 'float32');
  if (n * K > 0) call(kernels(), 'gather_q8', { w: offset(be, inputs.w as tf.TensorInfo), ws: offset(be, inputs.s as tf.TensorInfo), ids: offset(be, ids), out: offset(be, out), n, K, K4 });
  return out;
}

export function runGatherQ8(w: Q8Weight, ids: tf.Tensor1D): tf.Tensor2D {
  const attrs: GatherQ8Attrs = { K: w.inDim, K4: w.K4 };
  return tf.engine().runKernel('GPT2GatherQ8', { w: w.packed, s: w.scale, ids }, attrs as unknown as tf.NamedAttrMap) as tf.Tensor2D;
}

// ----------------------------------------------------------------------------- GPT2SplitCols

type SplitInputs = 'x';
interface SplitAttrs {
  parts: number;
}

/** x [M, parts·c] -> parts × [M, c] (column blocks): one strided copy each. */
function splitColsKernel(be: WasmBackendLike, inputs: Partial<Record<SplitInputs, tf.TensorInfo>>, { parts }: SplitAttrs): tf.TensorInfo[] {
  const x = inputs.x as tf.TensorInfo;
  const [M, N] = x.shape;
  const c = N / parts;
  const px = offset(be, x);
  const k = kernels();
  return Array.from({ length: parts }, (_, i) => {
    const out = be.makeOutput([M, c], 'float32');
    if (M * c > 0) call(k, 'copy_cols', { dst: offset(be, out), src: px + 4 * i * c, M, n: c, ldd: c, lds: N });
    return out;
  });
}

export function runSplitCols(x: tf.Tensor2D, parts: number): tf.Tensor2D[] {
  if (x.shape[1] % parts !== 0) throw new Error(`gpt2-tfjs split: ${x.shape[1]} columns do not split into ${parts}`);
  const attrs: SplitAttrs = { parts };
  return tf.engine().runKernel('GPT2SplitCols', { x }, attrs as unknown as tf.NamedAttrMap) as unknown as tf.Tensor2D[];
}

// ----------------------------------------------------------------------------- GPT2LayerNorm

type NormInputs = 'x' | 'g' | 'b';
interface NormAttrs {
  eps: number;
}

function layerNormKernel(be: WasmBackendLike, inputs: Partial<Record<NormInputs, tf.TensorInfo>>, { eps }: NormAttrs): tf.TensorInfo {
  const x = inputs.x as tf.TensorInfo;
  const [M, D] = x.shape;
  const out = be.makeOutput([M, D], 'float32');
  if (M * D > 0) call(kernels(), 'layer_norm', { x: offset(be, x), g: offset(be, inputs.g as tf.TensorInfo), b: offset(be, inputs.b as tf.TensorInfo), y: offset(be, out), M, D, eps });
  return out;
}

export function runLayerNorm(x: tf.Tensor2D, g: tf.Tensor1D, b: tf.Tensor1D, eps: number): tf.Tensor2D {
  const attrs: NormAttrs = { eps };
  return tf.engine().runKernel('GPT2LayerNorm', { x, g, b }, attrs as unknown as tf.NamedAttrMap) as tf.Tensor2D;
}

// ----------------------------------------------------------------------------- GPT2Attend

type AttendInputs = 'q' | 'k' | 'v' | 'mask';
interface AttendAttrs {
  B: number;
  T: number;
  past: number;
  nHead: number;
  scale: number;
}

/**
 * In chunks that any number of threads take in turn: with several rows one chunk per batch row (each
 * thread then reads its own part of the cache), with one row one chunk per head. Each chunk has its
 * own softmax scratch row.
 */
function attendKernel(be: WasmBackendLike, inputs: Partial<Record<AttendInputs, tf.TensorInfo>>, { B, T, past, nHead: H, scale }: AttendAttrs): tf.TensorInfo {
  const q = inputs.q as tf.TensorInfo;
  const kb = inputs.k as tf.TensorInfo;
  const D = q.shape[1];
  const ldkv = kb.shape[1];
  const Tk = past + T;
  const out = be.makeOutput([B * T, D], 'float32');
  const room = 4 * ((Tk + 7) & ~3); // four softmax rows: a prefill's queries attend four at a time
  const rows = B >= 2; // chunks: batch rows, else heads
  const count = rows ? B : H;
  const scratch = be.makeOutput([count * room], 'float32'); // four softmax rows per chunk
  const mask = inputs.mask ? offset(be, inputs.mask) : 0;
  const qRow = 4 * T * D; // bytes of q/out per batch row
  const kvRow = 4 * ldkv * D; // bytes of k/v per batch row
  try {
    runChunks(kernels(), 'attend', {
      q: offset(be, q), k: offset(be, kb), v: offset(be, inputs.v as tf.TensorInfo), mask,
      out: offset(be, out), scratch: offset(be, scratch), B: rows ? 1 : B, T, past, H, hd: D / H, ldkv, scale, h0: 0, h1: rows ? H : 1,
    }, {
      count,
      step: rows ? { q: qRow, k: kvRow, v: kvRow, mask: mask && 4 * Tk, out: qRow, scratch: 4 * room } : { h0: 1, h1: 1, scratch: 4 * room },
    }, threadFor(B * T * Tk * D));
  } finally {
    be.disposeData(scratch.dataId);
  }
  return out;
}

/**
 * q [B*T, d] against the first past + T positions of k/v [B, cap, d] (cache buffers that already hold
 * the new keys/values), with an optional additive padding mask [B, past + T] -> [B*T, d].
 */
export function runAttend(q: tf.Tensor2D, k: tf.Tensor3D, v: tf.Tensor3D, mask: tf.Tensor2D | null, attrs: AttendAttrs): tf.Tensor2D {
  const inputs: tf.NamedTensorMap = mask ? { q, k, v, mask } : { q, k, v };
  return tf.engine().runKernel('GPT2Attend', inputs, attrs as unknown as tf.NamedAttrMap) as tf.Tensor2D;
}

// ----------------------------------------------------------------------------- GPT2CacheRows

type CacheRowsInputs = 'a' | 'b';
interface CacheRowsAttrs {
  rows: number[]; // source row: < aRows from a, else b's row (rows[i] - aRows)
  start: number[]; // first source position
  len: number[]; // positions copied
  dst: number[]; // zero positions before them
  cap: number; // positions of the new buffer
  rowsCap: number; // rows of the new buffer (>= rows.length: spare rows for later joins)
  aRows: number; // a's rows in use
}

/**
 * out[i] = zeros(dst[i]) ++ src_i[start[i], start[i] + len[i]) ++ (unused room, not zeroed). Positions
 * after dst + len are never read (attention reads only the first `length`); left padding is zeroed
 * because masked positions are still multiplied before the mask applies.
 */
function cacheRowsKernel(be: WasmBackendLike, inputs: Partial<Record<CacheRowsInputs, tf.TensorInfo>>, { rows, start, len, dst, cap, rowsCap, aRows }: CacheRowsAttrs): tf.TensorInfo {
  const a = inputs.a as tf.TensorInfo;
  const d = a.shape[2];
  const out = be.makeOutput([Math.max(rows.length, rowsCap), cap, d], 'float32');
  const k = kernels();
  const po = offset(be, out);
  rows.forEach((r, i) => {
    const src = r < aRows ? a : (inputs.b as tf.TensorInfo);
    const row = r < aRows ? r : r - aRows;
    const base = po + 4 * i * cap * d;
    call(k, 'zero_f32', { dst: base, n: dst[i] * d });
    call(k, 'copy_f32', { dst: base + 4 * dst[i] * d, src: offset(be, src) + 4 * (row * src.shape[1] + start[i]) * d, n: len[i] * d });
  });
  return out;
}

export function runCacheRows(a: tf.Tensor3D, b: tf.Tensor3D | null, attrs: CacheRowsAttrs): tf.Tensor3D {
  attrs.rows.forEach((r, i) => {
    const src = r < attrs.aRows ? a : b;
    const row = r < attrs.aRows ? r : r - attrs.aRows;
    if (!src || row >= src.shape[0] || attrs.start[i] < 0 || attrs.start[i] + attrs.len[i] > src.shape[1] || attrs.dst[i] + attrs.len[i] > attrs.cap || src.shape[2] !== a.shape[2]) {
      throw new Error(`cache row ${r} [${attrs.start[i]}, ${attrs.start[i] + attrs.len[i]}) -> ${attrs.dst[i]} does not fit`);
    }
  });
  const inputs: tf.NamedTensorMap = b ? { a, b } : { a };
  return tf.engine().runKernel('GPT2CacheRows', inputs, attrs as unknown as tf.NamedAttrMap) as tf.Tensor3D;
}

/**
 * A new cache buffer [rows, cap, d] for a prompt's first chunk, written by the block kernel. Not zeroed
 * (as GPT2CacheRows' room): attention reads only positions already written, and every copy of a cache
 * reads only those (a JS zeros array per layer was ~10 MB to fill and upload for one 7-token chunk).
 */
function cacheNewKernel(be: WasmBackendLike, _inputs: Partial<Record<string, tf.TensorInfo>>, { shape }: { shape: number[] }): tf.TensorInfo {
  return be.makeOutput(shape, 'float32');
}

export function runCacheNew(rows: number, cap: number, d: number): tf.Tensor3D {
  return tf.engine().runKernel('GPT2CacheNew', {}, { shape: [rows, cap, d] } as unknown as tf.NamedAttrMap) as tf.Tensor3D;
}

// ----------------------------------------------------------------------------- in-place row moves

/** Zeroes n 32-bit words of the backend's memory at byte offset `at` (a wasm loop: a typed array's fill on shared memory is ~10x slower). */
export function zeroWords(at: number, n: number): void {
  call(kernels(), 'zero_f32', { dst: at, n });
}

/**
 * In place, inside cache buffers (no new tensor, no tfjs kernel: nothing is allocated): row to[i] of
 * `buf` becomes positions [start, start + len) of row from[i] of `src`, written at position `dst`,
 * with positions before `dst` zeroed when `zeroLead`. `src` may be `buf` itself: moves run in order,
 * so from[i] >= to[i] with ascending `to` never reads a row already overwritten.
 */
export function moveRows(buf: tf.Tensor3D, src: tf.Tensor3D, from: number[], to: number[], start: number, len: number, dst: number, zeroLead = true): void {
  const [R, cap, d] = buf.shape;
  const [Rs, caps] = src.shape;
  if (src.shape[2] !== d || dst + len > cap || start + len > caps || from.some((r) => r < 0 || r >= Rs) || to.some((r) => r < 0 || r >= R)) {
    throw new Error(`cache move [${start}, ${start + len}) -> ${dst} does not fit ${buf.shape} from ${src.shape}`);
  }
  const be = tf.engine().backend as unknown as WasmBackendLike;
  const k = kernels();
  const pb = offset(be, buf);
  const ps = offset(be, src);
  from.forEach((r, i) => {
    const base = pb + 4 * to[i] * cap * d;
    call(k, 'copy_f32', { dst: base + 4 * dst * d, src: ps + 4 * (r * caps + start) * d, n: len * d }); // forward copy: safe for dst <= src
    if (zeroLead) call(k, 'zero_f32', { dst: base, n: dst * d });
  });
}

// ----------------------------------------------------------------------------- GPT2BlockStep

/** The weights of a block, in the order of block_step's table (kernels.c CTL_TABLE). */
export const BLOCK_TABLE = ['ln1g', 'ln1b', 'wa', 'ba', 'wo', 'bo', 'ln2g', 'ln2b', 'wf', 'bf', 'wm', 'bm'] as const;
interface BlockAttrs {
  /** Per part, 3 numbers: rows B, new positions per row T, positions already cached (`past`). Part i's cache buffers are inputs k<i>, v<i> [B', cap, D] (cap >= past + T), its padding mask m<i> [B, past + T] (absent: none). */
  parts: number[];
  nHead: number;
  nInner: number; // c_fc's output width
  eps: number;
  act: number;
  scale: number; // 1 / sqrt(head size), as GPT2Attend gets it
}
/** kernels.c: control words before the scratch floats (by thread count: 8 stages), the weight table's first word, the barrier's give-up flag. */
const ctlInts = (nth: number) => 64 + 8 * nth * 16;
const CTL_TABLE = 48;
const CTL_ERR = 32;

/**
 * x [N, D] (the parts' rows in order: part i's B rows × T positions) -> the block's output [N, D],
 * writing every row's key/value into its part's cache buffers in place. The control words, the scratch
 * and the rows' descriptors are one buffer per call; every thread of the team runs block_step
 * (runTeamed). Should the team fail, or a barrier give up waiting for a thread, the team is abandoned
 * and the block runs again here on one thread (every write of the kernel is repeatable: x is only read,
 * the cache positions written are the same).
 */
function blockStepKernel(be: WasmBackendLike, inputs: Partial<Record<string, tf.TensorInfo>>, { parts, nHead, nInner, eps, act, scale }: BlockAttrs): tf.TensorInfo {
  const x = inputs.x as tf.TensorInfo;
  const [N, D] = x.shape;
  const out = be.makeOutput([N, D], 'float32');
  const k = kernels();
  const thread = threadFor(N * D * D * 12);
  const most = thread ? thread.size + 1 : 1;
  let maxTk = 0;
  for (let i = 0; i < parts.length; i += 3) maxTk = Math.max(maxTk, parts[i + 1] + parts[i + 2]);
  const floats = ctlInts(most) + N * (7 * D + nInner) + most * 4 * ((maxTk + 7) & ~3);
  const scratch = be.makeOutput([floats + 5 * N], 'float32'); // the descriptors last: a lone thread's floats start earlier, never past them
  try {
    // everything that can throw happens before the team is claimed (a throw while it is held would
    // leave it claimed: every later kernel on one thread, the workers never idle-exiting)
    const pc = offset(be, scratch);
    const table = BLOCK_TABLE.map((n) => (inputs[n] ? offset(be, inputs[n] as tf.TensorInfo) : 0));
    const buffer = (memoryOf(be) as WebAssembly.Memory).buffer;
    const descAt = pc + 4 * floats;
    const desc = new Int32Array(buffer, descAt, 5 * N); // 4 per row, then each row's group (kernels.c block_step)
    let n = 0;
    let shared = 0;
    for (let i = 0; i < parts.length / 3; i++) {
      const [B, T, past] = [parts[3 * i], parts[3 * i + 1], parts[3 * i + 2]];
      const kb = inputs[`k${i}`] as tf.TensorInfo;
      const vb = inputs[`v${i}`] as tf.TensorInfo;
      const mask = inputs[`m${i}`];
      const [rows, cap, width] = kb.shape;
      const [vRows, vCap, vWidth] = vb.shape;
      // numbers compared, not joined shapes: this runs for every block of every decode step
      if (vRows !== rows || vCap !== cap || vWidth !== width || width !== D || rows < B || cap < past + T || (mask && (mask.shape[0] !== B || mask.shape[1] !== past + T))) {
        throw new Error(`gpt2-tfjs block: part ${i} (${B} x ${T} after ${past}) does not fit its cache [${kb.shape}] / [${vb.shape}]${mask ? ` or mask [${mask.shape}]` : ''}`);
      }
      if (T > 1) shared = 1; // several positions per row: they share its cache row
      const [ko, vo] = [offset(be, kb), offset(be, vb)];
      const mo = mask ? offset(be, mask) : 0;
      const row = cap * D * 4; // bytes per cache row
      for (let b = 0; b < B; b++) {
        for (let t = 0; t < T; t++, n++) {
          desc[4 * n] = ko + b * row;
          desc[4 * n + 1] = vo + b * row;
          desc[4 * n + 2] = past + t;
          desc[4 * n + 3] = mask ? mo + b * (past + T) * 4 : 0;
          desc[4 * N + n] = t % 4 ? 0 : Math.min(4, T - t); // a row's positions attend four at a time
        }
      }
    }
    if (n !== N) throw new Error(`gpt2-tfjs block: the parts hold ${n} rows, x ${N}`);
    // the control words, one view for the call (nothing allocates in the backend's memory meanwhile)
    const ctl = new Int32Array(buffer, pc, ctlInts(most));
    const prepare = (nth: number) => {
      call(k, 'zero_f32', { dst: pc, n: ctlInts(nth) });
      ctl.set(table, CTL_TABLE);
    };
    const args = { x: offset(be, x), y: offset(be, out), ctl: pc, desc: descAt, N, maxTk, shared, H: nHead, D, F: nInner, eps, scale, act, tid: 0, nth: 1, may_block: 0 };
    const alone = () => {
      prepare(1);
      call(k, 'block_step', { ...args, nth: 1 });
    };
    prepare(most); // control words for any thread count up to `most`
    const team = thread && thread.claim() ? thread : null;
    runTeamed(k, 'block_step', { ...args, nth: team ? team.size + 1 : 1 }, team, alone, () => Atomics.store(ctl, CTL_ERR, 1));
    if (team && Atomics.load(ctl, CTL_ERR)) {
      team.abandon(); // a thread never reached a barrier
      alone();
    }
  } catch (e) {
    be.disposeData(out.dataId);
    throw e;
  } finally {
    be.disposeData(scratch.dataId);
  }
  countBlockRun();
  return out;
}

/** The block's weights, as GPT2BlockStep takes them. */
export type BlockWeights = Record<(typeof BLOCK_TABLE)[number], tf.Tensor>;

/** One part of a fused step: its rows × positions, its cache buffers (with room for them) and padding mask. */
export interface BlockPart {
  B: number;
  T: number;
  past: number;
  k: tf.Tensor3D;
  v: tf.Tensor3D;
  mask: tf.Tensor2D | null;
}

export function runBlockStep(x: tf.Tensor2D, parts: BlockPart[], w: BlockWeights, attrs: Omit<BlockAttrs, 'parts'>): tf.Tensor2D {
  const inputs: tf.NamedTensorMap = { x, ...w };
  parts.forEach((p, i) => {
    inputs[`k${i}`] = p.k;
    inputs[`v${i}`] = p.v;
    if (p.mask) inputs[`m${i}`] = p.mask;
  });
  const all = { ...attrs, parts: parts.flatMap((p) => [p.B, p.T, p.past]) };
  return tf.engine().runKernel('GPT2BlockStep', inputs, all as unknown as tf.NamedAttrMap) as tf.Tensor2D;
}

/** Registers the kernels (once per process; the wasm backend must be registered). */
export function registerKernels(): void {
  register<CacheRowsInputs, CacheRowsAttrs>('GPT2CacheRows', cacheRowsKernel);
  register<string, { shape: number[] }>('GPT2CacheNew', cacheNewKernel);
  register<LinearInputs, LinearAttrs>('GPT2Linear', linearKernel);
  register<LinearQ8Inputs, LinearQ8Attrs>('GPT2LinearQ8', linearQ8Kernel);
  register<LinearPInputs, LinearPAttrs>('GPT2LinearP', linearPKernel);
  register<GatherPInputs, GatherPAttrs>('GPT2GatherP', gatherPKernel);
  register<GatherQ8Inputs, GatherQ8Attrs>('GPT2GatherQ8', gatherQ8Kernel);
  register<LinearQ8Inputs, LinearQ8Attrs>('GPT2LinearQ8W', linearQ8WKernel);
  register<SplitInputs, SplitAttrs>('GPT2SplitCols', splitColsKernel);
  register<NormInputs, NormAttrs>('GPT2LayerNorm', layerNormKernel);
  register<AttendInputs, AttendAttrs>('GPT2Attend', attendKernel);
  register<string, BlockAttrs>('GPT2BlockStep', blockStepKernel);
}
