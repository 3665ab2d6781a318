/**
 * safetensors reader. Layout: 8-byte little-endian header length N, N bytes of JSON
 * `{ name: { dtype, shape, data_offsets: [begin, end] }, __metadata__?: {...} }`, then raw
 * little-endian data; offsets are relative to the end of the header.
 *
 * Everything is validated before a single tensor is decoded, so a malformed file fails with one
 * GPT2Error('BAD_SAFETENSORS') naming the problem and never with a raw RangeError/TypeError.
 */
import { GPT2Error } from '../errors';

export type SafetensorsDtype = 'F32' | 'F16' | 'BF16' | 'F64' | 'I8';

const DTYPE_BYTES: Record<SafetensorsDtype, number> = { F32: 4, F16: 2, BF16: 2, F64: 8, I8: 1 };

export interface TensorEntry {
  name: string;
  dtype: SafetensorsDtype;
  shape: number[];
  /** Absolute byte range inside the file. */
  begin: number;
  end: number;
}

export interface SafetensorsHeader {
  /** Bytes before the data section (8 + N). */
  dataStart: number;
  entries: Map<string, TensorEntry>;
  metadata: Record<string, string>;
}

/**
 * A host-side tensor: its data plus its shape. What io/ hands to model/. Floats of every stored
 * dtype arrive as float32; int8 (I8, the q8 format's weights) stays int8.
 */
export interface HostTensor {
  data: Float32Array | Int8Array;
  shape: number[];
}

function fail(file: string, what: string): never {
  throw new GPT2Error('BAD_SAFETENSORS', `${file}: ${what}`);
}

/** Reads the 8-byte header length; `totalBytes` is the file size (for streaming readers). */
export function readHeaderLength(prefix: Uint8Array, totalBytes: number, file: string): number {
  if (prefix.byteLength < 8 || totalBytes < 8) fail(file, `truncated: ${totalBytes} bytes is shorter than the 8-byte header length`);
  const view = new DataView(prefix.buffer, prefix.byteOffset, 8);
  const lo = view.getUint32(0, true);
  const hi = view.getUint32(4, true);
  const n = hi * 2 ** 32 + lo;
  if (n === 0) fail(file, 'header length is 0 (expected a JSON header)');
  if (n > totalBytes - 8) fail(file, `header length ${n} runs past the end of the file (${totalBytes} bytes): truncated or not a safetensors file`);
  return n;
}

function isNonNegInt(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
}

/** Parses and validates the JSON header. `headerBytes` are the N bytes after the length prefix. */
export function parseHeader(headerBytes: Uint8Array, totalBytes: number, file: string): SafetensorsHeader {
  const dataStart = 8 + headerBytes.byteLength;
  let json: unknown;
  try {
    json = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(headerBytes));
  } catch (e) {
    fail(file, `header is not valid JSON (${(e as Error).message})`);
  }
  if (json === null || typeof json !== 'object' || Array.isArray(json)) fail(file, 'header JSON must be an object');
  const dataLen = totalBytes - dataStart;
  const entries = new Map<string, TensorEntry>();
  let metadata: Record<string, string> = {};
  for (const [name, raw] of Object.entries(json as Record<string, unknown>)) {
    if (name === '__metadata__') {
      if (raw !== null && typeof raw === 'object' && !Array.isArray(raw)) metadata = raw as Record<string, string>;
      else fail(file, '__metadata__ must be an object');
      continue;
    }
    if (raw === null || typeof raw !== 'object') fail(file, `tensor "${name}": entry must be an object`);
    const { dtype, shape, data_offsets: offs } = raw as Record<string, unknown>;
    if (typeof dtype !== 'string' || !Object.prototype.hasOwnProperty.call(DTYPE_BYTES, dtype)) {
      fail(file, `tensor "${name}": unsupported dtype ${JSON.stringify(dtype)} (supported: ${Object.keys(DTYPE_BYTES).join(', ')})`);
    }
    if (!Array.isArray(shape) || !shape.every(isNonNegInt)) fail(file, `tensor "${name}": shape must be an array of non-negative integers`);
    if (!Array.isArray(offs) || offs.length !== 2 || !offs.every(isNonNegInt)) fail(file, `tensor "${name}": data_offsets must be [begin, end]`);
    const [b, e] = offs as number[];
    if (b > e) fail(file, `tensor "${name}": data_offsets [${b}, ${e}] has begin after end`);
    if (e > dataLen) fail(file, `tensor "${name}": data_offsets [${b}, ${e}] out of file range (data section is ${dataLen} bytes): truncated file?`);
    const count = (shape as number[]).reduce((a, s) => a * s, 1);
    const want = count * DTYPE_BYTES[dtype as SafetensorsDtype];
    if (want !== e - b) fail(file, `tensor "${name}": shape [${shape}] × ${dtype} needs ${want} bytes but data_offsets span ${e - b}`);
    entries.set(name, { name, dtype: dtype as SafetensorsDtype, shape: shape as number[], begin: dataStart + b, end: dataStart + e });
  }
  // Empty tensors occupy no bytes; among the rest, compare each with the furthest-reaching one before it
  // (comparing only neighbours misses an overlap when an empty tensor sits between the two).
  const sorted = [...entries.values()].filter((t) => t.end > t.begin).sort((x, y) => x.begin - y.begin || x.end - y.end);
  let reach: TensorEntry | null = null;
  for (const cur of sorted) {
    if (reach && cur.begin < reach.end) fail(file, `tensors "${reach.name}" and "${cur.name}" have overlapping byte ranges`);
    if (!reach || cur.end > reach.end) reach = cur;
  }
  return { dataStart, entries, metadata };
}

/** Parses the header of a whole file held in memory. */
export function readSafetensorsHeader(bytes: Uint8Array, file = 'model.safetensors'): SafetensorsHeader {
  const n = readHeaderLength(bytes, bytes.byteLength, file);
  return parseHeader(bytes.subarray(8, 8 + n), bytes.byteLength, file);
}

// ---- dtype conversion -------------------------------------------------------------------------

let f16Table: Float32Array | null = null;
/** All 65536 half-precision values, decoded once (a lookup beats bit-twiddling per element). */
function halfTable(): Float32Array {
  if (f16Table) return f16Table;
  const t = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const s = h & 0x8000 ? -1 : 1;
    const e = (h >> 10) & 0x1f;
    const m = h & 0x3ff;
    if (e === 0) t[h] = s * m * 2 ** -24;
    else if (e === 31) t[h] = m ? NaN : s * Infinity;
    else t[h] = s * (1 + m / 1024) * 2 ** (e - 15);
  }
  f16Table = t;
  return t;
}

/**
 * Decodes `bytes` (exactly one tensor's data) of `dtype` into a new Float32Array. `view`: F32 bytes at
 * an aligned offset are returned as a view even when they are a window on a bigger buffer (the caller
 * then owns the lifetime question: the streamed load's reused read buffer).
 */
export function decodeToFloat32(bytes: Uint8Array, dtype: SafetensorsDtype, view = false): Float32Array {
  // Copy into an aligned buffer first: file offsets need not be multiples of the element size.
  const aligned = bytes.byteOffset % 8 === 0 ? bytes : bytes.slice();
  switch (dtype) {
    case 'F32':
      if (view) return new Float32Array(aligned.buffer, aligned.byteOffset, aligned.byteLength / 4);
      // A view when the bytes own their buffer (streamed reads), a copy when they are a window on a bigger file.
      if (aligned.byteOffset === 0 && aligned.byteLength === aligned.buffer.byteLength) return new Float32Array(aligned.buffer, 0, aligned.byteLength / 4);
      return new Float32Array(aligned.buffer.slice(aligned.byteOffset, aligned.byteOffset + aligned.byteLength));
    case 'F64':
      return Float32Array.from(new Float64Array(aligned.buffer, aligned.byteOffset, aligned.byteLength / 8));
    case 'F16': {
      const src = new Uint16Array(aligned.buffer, aligned.byteOffset, aligned.byteLength / 2);
      const table = halfTable();
      const out = new Float32Array(src.length);
      for (let i = 0; i < src.length; i++) out[i] = table[src[i]];
      return out;
    }
    case 'BF16': {
      const src = new Uint16Array(aligned.buffer, aligned.byteOffset, aligned.byteLength / 2);
      const out = new Uint32Array(src.length);
      for (let i = 0; i < src.length; i++) out[i] = src[i] << 16;
      return new Float32Array(out.buffer);
    }
    case 'I8':
      return Float32Array.from(new Int8Array(aligned.buffer, aligned.byteOffset, aligned.byteLength));
  }
}

/** Decodes one tensor's bytes: I8 as an Int8Array (a copy), every float dtype as float32. */
export function decodeTensor(bytes: Uint8Array, dtype: SafetensorsDtype, view = false): Float32Array | Int8Array {
  if (dtype !== 'I8') return decodeToFloat32(bytes, dtype, view);
  // a view when the bytes own their buffer (streamed reads) or a view is asked for, a copy when they are a window on a bigger file
  if (view) return new Int8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return bytes.byteOffset === 0 && bytes.byteLength === bytes.buffer.byteLength ? new Int8Array(bytes.buffer, 0, bytes.byteLength) : new Int8Array(bytes.slice());
}

/** Decodes one entry out of a whole file held in memory. */
export function readTensor(bytes: Uint8Array, entry: TensorEntry): HostTensor {
  return { data: decodeTensor(bytes.subarray(entry.begin, entry.end), entry.dtype), shape: entry.shape.slice() };
}

// ---- writer (used by tools, tests and `convert`) ----------------------------------------------

export interface WriteTensor {
  data: Float32Array | Int8Array;
  shape: number[];
  /** F32 (default) or F16 for float data; int8 data is always written as I8. */
  dtype?: 'F32' | 'F16';
}

export function toHalf(x: number): number {
  // Round-to-nearest-even float32 -> float16 conversion.
  const f = new Float32Array([x]);
  const u = new Uint32Array(f.buffer)[0];
  const sign = (u >>> 16) & 0x8000;
  const exp = (u >>> 23) & 0xff;
  let mant = u & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  const e = exp - 127 + 15;
  if (e >= 31) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    let half = mant >>> shift;
    const rem = mant & ((1 << shift) - 1);
    const mid = 1 << (shift - 1);
    if (rem > mid || (rem === mid && half & 1)) half++;
    return sign | half;
  }
  let half = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && half & 1)) half++;
  return sign | half;
}

/**
 * The pieces of a safetensors file, in order: the 8-byte length, the header (padded to 8 bytes, as the
 * reference writer does), then each tensor's bytes. Written one after another they are the file.
 */
export function safetensorsParts(tensors: Record<string, WriteTensor>, metadata: Record<string, string> = { format: 'pt' }): Uint8Array[] {
  const header: Record<string, unknown> = { __metadata__: metadata };
  let offset = 0;
  const parts: Uint8Array[] = [];
  for (const [name, t] of Object.entries(tensors)) {
    const dtype = t.data instanceof Int8Array ? 'I8' : t.dtype ?? 'F32';
    let bytes: Uint8Array;
    if (dtype === 'I8' || dtype === 'F32') bytes = new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);
    else {
      const h = new Uint16Array(t.data.length);
      for (let i = 0; i < h.length; i++) h[i] = toHalf(t.data[i]);
      bytes = new Uint8Array(h.buffer);
    }
    header[name] = { dtype, shape: t.shape, data_offsets: [offset, offset + bytes.byteLength] };
    offset += bytes.byteLength;
    parts.push(bytes);
  }
  let headerBytes = new TextEncoder().encode(JSON.stringify(header));
  const pad = (8 - (headerBytes.byteLength % 8)) % 8;
  if (pad) headerBytes = new TextEncoder().encode(JSON.stringify(header) + ' '.repeat(pad));
  const len = new Uint8Array(8);
  new DataView(len.buffer).setUint32(0, headerBytes.byteLength, true);
  return [len, headerBytes, ...parts];
}

/** Serialises tensors to safetensors bytes (header padded to 8 bytes, as the reference writer does). */
export function writeSafetensors(tensors: Record<string, WriteTensor>, metadata: Record<string, string> = { format: 'pt' }): Uint8Array {
  const parts = safetensorsParts(tensors, metadata);
  const out = new Uint8Array(parts.reduce((n, p) => n + p.byteLength, 0));
  let p = 0;
  for (const part of parts) {
    out.set(part, p);
    p += part.byteLength;
  }
  return out;
}
