/**
 * The kernels' calling convention, written once. Each entry is one C function of native/kernels.c:
 * its arguments by name, in order, with their wasm types. The TS callers pass named arguments
 * (`call(k, 'attend', { q, k, ... })`), the worker thread receives the table and reads a job's
 * arguments from it, and the instance's exports are typed from it — so adding a kernel is one entry
 * here plus its C function, and no call site patches an argument by position.
 *
 * ptr: a byte offset into the wasm backend's memory (0 = none); i32: an integer; f32: a float.
 */

export type ArgType = 'ptr' | 'i32' | 'f32';

export const KERNEL_ABI = {
  /** y[:, 0:n] = act(x[:, 0:K] @ W[0:K, 0:n] + b[0:n]); W and y have row stride ld, x has ldx; pack: KC*8 floats when M >= 16. */
  linear: [['x', 'ptr'], ['w', 'ptr'], ['b', 'ptr'], ['y', 'ptr'], ['M', 'i32'], ['K', 'i32'], ['n', 'i32'], ['ld', 'i32'], ['ldx', 'i32'], ['act', 'i32'], ['pack', 'ptr']],
  /** y[M, N] = act(b + sum of parts[nparts, M, N] in index order). */
  reduce_act: [['y', 'ptr'], ['parts', 'ptr'], ['nparts', 'i32'], ['M', 'i32'], ['N', 'i32'], ['b', 'ptr'], ['act', 'i32']],
  /** y = (x - mean) / sqrt(var + eps) * g + b over rows of D. */
  layer_norm: [['x', 'ptr'], ['g', 'ptr'], ['b', 'ptr'], ['y', 'ptr'], ['M', 'i32'], ['D', 'i32'], ['eps', 'f32']],
  /** Causal attention of T new positions per row against k/v cache buffers [B, ldkv, H*hd], heads [h0, h1). */
  attend: [
    ['q', 'ptr'], ['k', 'ptr'], ['v', 'ptr'], ['mask', 'ptr'], ['out', 'ptr'], ['scratch', 'ptr'],
    ['B', 'i32'], ['T', 'i32'], ['past', 'i32'], ['H', 'i32'], ['hd', 'i32'], ['ldkv', 'i32'], ['scale', 'f32'], ['h0', 'i32'], ['h1', 'i32'],
  ],
  /** Per-row dynamic int8 quantization of x [M, K] (row stride ldx) -> xq int16 [M, K4] (zero padded), row scales xs [M]. */
  quantize_rows: [['x', 'ptr'], ['xq', 'ptr'], ['xs', 'ptr'], ['M', 'i32'], ['K', 'i32'], ['ldx', 'i32'], ['K4', 'i32']],
  /** y[:, 0:n] = act(xq·xs @ W·ws + b) with W int8 in 16-column panels (kernels.c), starting at a panel; y row stride ld. */
  linear_q8: [['xq', 'ptr'], ['xs', 'ptr'], ['w', 'ptr'], ['ws', 'ptr'], ['b', 'ptr'], ['y', 'ptr'], ['M', 'i32'], ['K4', 'i32'], ['n', 'i32'], ['ld', 'i32'], ['act', 'i32']],
  /** y[:, 0:n] = act(x[:, 0:K] @ W + b) (+ r[:, 0:n] when r ≠ 0) with W float32 in 16-column panels (kernels.c), starting at a panel; y and r row stride ld, x row stride ldx. */
  linear_p: [['x', 'ptr'], ['w', 'ptr'], ['b', 'ptr'], ['y', 'ptr'], ['M', 'i32'], ['K', 'i32'], ['n', 'i32'], ['ld', 'i32'], ['ldx', 'i32'], ['act', 'i32'], ['r', 'ptr']],
  /** out[i, 0:K] = W[0:K, ids[i]]: embedding rows from the float head's panels. */
  gather_p: [['w', 'ptr'], ['ids', 'ptr'], ['out', 'ptr'], ['n', 'i32'], ['K', 'i32']],
  /** Weight-only variant of linear_q8 (float x [M, K4] zero padded, int8 W widened to float), measured against it (bench/q8-kernels.ts); not used by the engine. */
  linear_q8w: [['x', 'ptr'], ['w', 'ptr'], ['ws', 'ptr'], ['b', 'ptr'], ['y', 'ptr'], ['M', 'i32'], ['K4', 'i32'], ['n', 'i32'], ['ld', 'i32'], ['act', 'i32']],
  /** out[i, 0:K] = ws[ids[i]] · W[0:K, ids[i]]: embedding rows from the q8 head's panels. */
  gather_q8: [['w', 'ptr'], ['ws', 'ptr'], ['ids', 'ptr'], ['out', 'ptr'], ['n', 'i32'], ['K', 'i32'], ['K4', 'i32']],
  copy_f32: [['dst', 'ptr'], ['src', 'ptr'], ['n', 'i32']],
  /** dst[m, 0:n] = src[m, 0:n] for m < M; row strides ldd, lds. */
  copy_cols: [['dst', 'ptr'], ['src', 'ptr'], ['M', 'i32'], ['n', 'i32'], ['ldd', 'i32'], ['lds', 'i32']],
  zero_f32: [['dst', 'ptr'], ['n', 'i32']],
  /**
   * One transformer block over N rows, run by every thread of the team at once (thread tid of nth): x [N, D]
   * -> y [N, D]; desc: 4 ints per row (its cache row's keys and values [cap, D], its position there, its
   * mask row or 0): each row's key/value is written at its position and it attends to [0, pos] (decode
   * rows and prompt chunks alike); maxTk: the most positions a row attends to; shared: some rows share a
   * cache row (a prompt chunk: all keys are written before any row attends); ctl: control words, the
   * weight table and the scratch (kernels.c, block_step); may_block: this thread may sleep in a barrier
   * (0 on a browser's main thread, where memory.atomic.wait traps).
   */
  block_step: [
    ['x', 'ptr'], ['y', 'ptr'], ['ctl', 'ptr'], ['desc', 'ptr'], ['N', 'i32'], ['maxTk', 'i32'], ['shared', 'i32'],
    ['H', 'i32'], ['D', 'i32'], ['F', 'i32'], ['eps', 'f32'], ['scale', 'f32'], ['act', 'i32'], ['tid', 'i32'], ['nth', 'i32'], ['may_block', 'i32'],
  ],
} as const satisfies Record<string, readonly (readonly [string, ArgType])[]>;

export type KernelName = keyof typeof KERNEL_ABI;
/** A kernel's arguments by name. */
export type KernelArgs<K extends KernelName> = { [A in (typeof KERNEL_ABI)[K][number] as A[0]]: number };
/** The instance's exports, typed from the table. */
export type KernelExports = { [K in KernelName]: (...args: number[]) => void };

export const KERNEL_NAMES = Object.keys(KERNEL_ABI) as KernelName[];
/** Most arguments any kernel takes (the worker's argument slots). */
export const MAX_KERNEL_ARGS = Math.max(...KERNEL_NAMES.map((k) => KERNEL_ABI[k].length));

/** The positional argument list of a call, in the table's order. */
export function argList<K extends KernelName>(name: K, args: KernelArgs<K>): number[] {
  const named = args as Record<string, number>;
  return KERNEL_ABI[name].map(([a]) => {
    const v = named[a];
    if (typeof v !== 'number') throw new Error(`gpt2-tfjs kernel ${name}: argument ${a} is missing`);
    return v;
  });
}

/**
 * Calls `f` with the positional arguments `a`, at a fixed arity: a wasm export called through a
 * spread takes V8's slow generic path, and a decode step makes hundreds of these calls.
 */
export function invoke(f: (...args: number[]) => void, a: readonly number[]): void {
  switch (a.length) {
    case 2: return f(a[0], a[1]);
    case 3: return f(a[0], a[1], a[2]);
    case 5: return f(a[0], a[1], a[2], a[3], a[4]);
    case 6: return f(a[0], a[1], a[2], a[3], a[4], a[5]);
    case 7: return f(a[0], a[1], a[2], a[3], a[4], a[5], a[6]);
    case 10: return f(a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8], a[9]);
    case 11: return f(a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8], a[9], a[10]);
    case 15: return f(a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8], a[9], a[10], a[11], a[12], a[13], a[14]);
    case 16: return f(a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8], a[9], a[10], a[11], a[12], a[13], a[14], a[15]);
    default: return f(...a);
  }
}

/** Calls kernel `name` of `k` with named arguments. */
export function call<K extends KernelName>(k: KernelExports, name: K, args: KernelArgs<K>): void {
  invoke(k[name], argList(name, args));
}

/**
 * A job that repeats a call over chunks: chunk c runs with each named argument advanced by
 * c × step[name], and `extent` (an argument) set to min(size, total − c × size): the last chunk may
 * be shorter. Chunks are taken in turn by whichever thread is free; each writes its own output slot.
 */
export interface ChunkSpec<K extends KernelName> {
  count: number;
  step: Partial<KernelArgs<K>>;
  extent?: { arg: keyof KernelArgs<K> & string; size: number; total: number };
}

/** Writes the arguments of chunk `c` of a chunked job (positional) into `out`. */
export function chunkArgs(out: number[], base: readonly number[], steps: readonly number[], c: number, extentIndex: number, size: number, total: number): number[] {
  for (let i = 0; i < base.length; i++) out[i] = base[i] + c * steps[i];
  if (extentIndex >= 0) out[extentIndex] = Math.min(size, total - c * size);
  return out;
}

/** Positional step vector and extent index of a chunk spec. */
export function chunkLayout<K extends KernelName>(name: K, spec: ChunkSpec<K>): { steps: number[]; extentIndex: number } {
  const step = spec.step as Record<string, number | undefined>;
  const names = KERNEL_ABI[name].map(([a]) => a as string);
  return { steps: names.map((a) => step[a] ?? 0), extentIndex: spec.extent ? names.indexOf(spec.extent.arg) : -1 };
}
