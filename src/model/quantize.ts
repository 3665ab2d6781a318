/**
 * The q8 format's arithmetic on host arrays (docs/q8.md): symmetric int8 with one float32 scale per
 * output channel (Conv1D weights [in, out]: per column) or per row (wte, wpe), and the panel layout the
 * wasm int8 kernels read. Bit-exact with reference/quantize_ref.py:
 *
 *   scale = fround(max|w| / 127)      q = clamp(round_half_even(fround(w / scale)), -127, 127)
 *
 * (a float32 division done in float64 and rounded once to float32 is the float32 division.)
 */

/** Round half to even, as NumPy's rint (Math.round rounds halves up). */
function rint(x: number): number {
  const r = Math.round(x);
  return r - x === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

export interface Quantized {
  q: Int8Array;
  scale: Float32Array;
}

/**
 * int8 + scales of w [rows, cols] (row-major), one scale per column (`perRow` false: the output channels
 * of a Conv1D weight [in, out]) or per row (`perRow` true: embedding rows).
 */
export function quantize(w: Float32Array, rows: number, cols: number, perRow: boolean): Quantized {
  const n = perRow ? rows : cols;
  const max = new Float32Array(n);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      const a = Math.abs(w[r * cols + c]);
      const i = perRow ? r : c;
      if (a > max[i]) max[i] = a;
    }
  }
  const scale = new Float32Array(n);
  for (let i = 0; i < n; i++) scale[i] = max[i] / 127;
  const q = new Int8Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      const s = scale[perRow ? r : c];
      if (s === 0) continue;
      const v = rint(Math.fround(w[r * cols + c] / s));
      q[r * cols + c] = v > 127 ? 127 : v < -127 ? -127 : v;
    }
  }
  return { q, scale };
}

/** f32(q) * scale: the float weights of a q8 tensor (what every engine without int8 kernels computes with). */
export function dequantize(q: Int8Array, scale: Float32Array, rows: number, cols: number, perRow: boolean): Float32Array {
  const out = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out[r * cols + c] = q[r * cols + c] * scale[perRow ? r : c];
  return out;
}

const ceilTo = (n: number, m: number) => Math.ceil(n / m) * m;

/** Sizes of the panel layout of a [K, N] int8 weight: K rounded up to 4, N to 16. */
export function panelDims(K: number, N: number): { K4: number; N16: number; words: number } {
  const K4 = ceilTo(K, 4);
  const N16 = ceilTo(N, 16);
  return { K4, N16, words: (K4 / 4) * N16 };
}

/**
 * The wasm kernels' layout of an int8 weight W [K, N] (native/kernels.c, linear_q8): panels of 16
 * columns, each (K4/4) int32 words per column holding W[4g..4g+3, j] (little-endian bytes), zero padded.
 * `transposed`: q holds W^T [N, K] row-major (an embedding table [vocab, d] used as the head [d, vocab]).
 */
export function packPanels(q: Int8Array, K: number, N: number, transposed: boolean, into?: Int32Array): Int32Array {
  const { K4, words } = panelDims(K, N);
  const G = K4 / 4;
  const packed = into ?? new Int32Array(words);
  if (packed.length !== words) throw new Error(`packPanels: ${packed.length} words given, ${words} needed`);
  const bytes = new Int8Array(packed.buffer, packed.byteOffset, packed.byteLength);
  for (let j = 0; j < N; j++) {
    const base = ((j >> 4) * G * 16 + (j & 15)) * 4;
    for (let k = 0; k < K; k++) bytes[base + (k >> 2) * 64 + (k & 3)] = transposed ? q[j * K + k] : q[k * N + j];
  }
  return packed;
}

/** Inverse of packPanels, dequantized: the float32 W [K, N] (column j scaled by scale[j]). */
export function unpackPanels(packed: Int32Array, scale: Float32Array, K: number, N: number): Float32Array {
  const G = panelDims(K, N).K4 / 4;
  const bytes = new Int8Array(packed.buffer, packed.byteOffset, packed.byteLength);
  const out = new Float32Array(K * N);
  for (let j = 0; j < N; j++) {
    const base = ((j >> 4) * G * 16 + (j & 15)) * 4;
    for (let k = 0; k < K; k++) out[k * N + j] = bytes[base + (k >> 2) * 64 + (k & 3)] * scale[j];
  }
  return out;
}

/**
 * The wasm kernels' layout of a float32 weight W [K, N] (native/kernels.c, linear_p): panels of 16
 * columns, each K rows of 16 floats ((k, c) of panel p at (p*K + k)*16 + c), zero padded to N16.
 * `transposed`: w holds W^T [N, K] row-major (an embedding table used as the head).
 */
export function packPanelsF32(w: Float32Array, K: number, N: number, transposed: boolean, into?: Float32Array): Float32Array {
  const words = panelDims(1, N).N16 * K;
  const out = into ?? new Float32Array(words);
  if (out.length !== words) throw new Error(`packPanelsF32: ${out.length} floats given, ${words} needed`);
  // walk the source in its own order (rows of [K, N], or of [N, K] when transposed): one sequential
  // read, writes 16 floats at a time (the column-first walk took ~0.8 s for the 124M model)
  if (transposed) {
    packPanelColsF32(w, K, 0, N, out);
  } else {
    for (let k = 0; k < K; k++) {
      for (let j = 0, src = k * N; j < N; j++) out[(j >> 4) * K * 16 + k * 16 + (j & 15)] = w[src + j];
    }
  }
  return out;
}

/**
 * Columns [j0, j0 + n) of panel-packed W [K, N] from `rows`, which holds them as rows ([n, K]: the rows
 * j0.. of a [N, K] table such as wte, arriving part by part). Writes only those columns of `out`.
 */
export function packPanelColsF32(rows: Float32Array, K: number, j0: number, n: number, out: Float32Array): void {
  for (let j = j0; j < j0 + n; j++) {
    const base = (j >> 4) * K * 16 + (j & 15);
    for (let k = 0, src = (j - j0) * K; k < K; k++) out[base + k * 16] = rows[src + k];
  }
}

/** Rows [row0, row0 + n) of a [R, C] matrix (`rows` holds them, [n, C]) into its transpose `out` [C, R]. */
export function transposeRows(rows: Float32Array, C: number, R: number, row0: number, out: Float32Array): void {
  const n = rows.length / C;
  for (let r = 0; r < n; r++) {
    const src = r * C;
    for (let c = 0; c < C; c++) out[c * R + row0 + r] = rows[src + c];
  }
}

/** Inverse of packPanelsF32: W [K, N]. */
export function unpackPanelsF32(packed: Float32Array, K: number, N: number): Float32Array {
  const out = new Float32Array(K * N);
  for (let j = 0; j < N; j++) {
    const base = (j >> 4) * K * 16 + (j & 15);
    for (let k = 0; k < K; k++) out[k * N + j] = packed[base + k * 16];
  }
  return out;
}
