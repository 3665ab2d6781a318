/**
 * TensorFlow.js weights manifests: `model.json` + binary shards (`group1-shard1of3.bin`, ...), the
 * layout tfjs-converter writes and `tf.io.loadWeights` reads. Browsers fetch (and HTTP-cache) the
 * small shards in parallel, and nothing but JSON has to be parsed.
 *
 *   model.json = { format, generatedBy, convertedBy, modelTopology,
 *                  weightsManifest: [{ paths: ['group1-shard1of3.bin', ...],
 *                                      weights: [{ name, shape, dtype, quantization? }] }] }
 *
 * Within a group the weights' bytes are concatenated in manifest order (little-endian) and cut into
 * shards of at most `shardBytes`, so one weight may straddle two shards. float16 is written the way
 * tfjs-converter's `--quantize_float16` writes it: dtype 'float32' + quantization { dtype: 'float16' }.
 * Reading also accepts dtype 'float16' and tfjs's affine uint8/uint16 quantization.
 */
import { GPT2Error } from '../errors';
import { LoadProgress, NamedHostTensor, canonicalName } from './hf';
import { isSafeRelativePath } from './paths';
import { decodeToFloat32, toHalf } from './safetensors';
import { FileSource } from './source';

export const MANIFEST_FILE = 'model.json';
export const MANIFEST_FORMAT = 'gpt2-tfjs';

export type TfjsStoredDtype = 'float32' | 'float16';

export interface TfjsWeightSpec {
  name: string;
  shape: number[];
  dtype: 'float32' | 'float16';
  quantization?: { dtype: 'float16' | 'uint8' | 'uint16'; scale?: number; min?: number };
}

export interface TfjsWeightsGroup {
  paths: string[];
  weights: TfjsWeightSpec[];
}

export interface TfjsModelJson {
  format: string;
  generatedBy: string;
  convertedBy: string | null;
  modelTopology: null;
  weightsManifest: TfjsWeightsGroup[];
}

// ---- reader -----------------------------------------------------------------------------------

type Storage = 'f32' | 'f16' | 'u8' | 'u16';
const STORAGE_BYTES: Record<Storage, number> = { f32: 4, f16: 2, u8: 1, u16: 2 };

/** One weight of a validated manifest: where its bytes lie in its group's concatenated shards. */
export interface TfjsEntry {
  name: string;
  shape: number[];
  storage: Storage;
  /** Affine dequantisation (uint8/uint16): value = q * scale + min. */
  scale: number;
  min: number;
  group: number;
  begin: number;
  end: number;
}

export interface TfjsManifest {
  groups: { paths: string[]; bytes: number }[];
  /** Weights to load, in manifest order (buffers such as attn.bias are left out). */
  entries: TfjsEntry[];
  /** Every shard path, in read order. */
  files: string[];
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

/** Reads and validates `model.json`; duplicate weight names and unsupported dtypes fail here. */
export async function readTfjsManifest(source: FileSource): Promise<TfjsManifest> {
  const where = source.describe(MANIFEST_FILE);
  const fail = (what: string): never => {
    throw new GPT2Error('BAD_WEIGHTS', `${where}: ${what}`);
  };
  const text = await source.readText(MANIFEST_FILE);
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    fail(`not valid JSON (${(e as Error).message})`);
  }
  const manifest = isRecord(json) ? json.weightsManifest : undefined;
  if (!Array.isArray(manifest)) return fail('missing the "weightsManifest" array of a tfjs weights manifest');

  const groups: TfjsManifest['groups'] = [];
  const entries: TfjsEntry[] = [];
  const seenNames = new Set<string>();
  const seenPaths = new Set<string>();
  manifest.forEach((g: unknown, gi) => {
    const group = `weightsManifest[${gi}]`;
    if (!isRecord(g) || !Array.isArray(g.paths) || !Array.isArray(g.weights)) fail(`${group} must be { paths: [...], weights: [...] }`);
    const { paths, weights } = g as { paths: unknown[]; weights: unknown[] };
    for (const p of paths) {
      if (!isSafeRelativePath(p)) fail(`${group}: bad shard path ${JSON.stringify(p)}`);
      if (seenPaths.has(p as string)) fail(`shard "${p}" is listed twice`);
      seenPaths.add(p as string);
    }
    let offset = 0;
    for (const w of weights) {
      if (!isRecord(w) || typeof w.name !== 'string') return fail(`${group}: every weight needs a "name"`);
      const name = w.name;
      const shape = w.shape;
      if (!Array.isArray(shape) || !shape.every((s) => Number.isSafeInteger(s) && s >= 0)) return fail(`weight "${name}": shape must be an array of non-negative integers`);
      const q = w.quantization;
      let storage: Storage;
      let scale = 1;
      let min = 0;
      if (q !== undefined && q !== null) {
        if (!isRecord(q)) return fail(`weight "${name}": "quantization" must be an object`);
        if (q.dtype === 'float16') storage = 'f16';
        else if (q.dtype === 'uint8' || q.dtype === 'uint16') {
          if (typeof q.scale !== 'number' || typeof q.min !== 'number') return fail(`weight "${name}": ${q.dtype} quantization needs numeric "scale" and "min"`);
          storage = q.dtype === 'uint8' ? 'u8' : 'u16';
          scale = q.scale;
          min = q.min;
        } else return fail(`weight "${name}": unsupported quantization dtype ${JSON.stringify(q.dtype)} (supported: float16, uint8, uint16)`);
        if (w.dtype !== 'float32' && w.dtype !== 'float16') return fail(`weight "${name}": dtype ${JSON.stringify(w.dtype)} cannot be dequantised to float32`);
      } else if (w.dtype === 'float32') storage = 'f32';
      else if (w.dtype === 'float16') storage = 'f16';
      else return fail(`weight "${name}": unsupported dtype ${JSON.stringify(w.dtype)} (supported: float32, float16)`);

      const canon = canonicalName(name);
      const key = canon ?? name;
      if (seenNames.has(key)) fail(`weight "${key}" appears twice; a manifest names each weight once`);
      seenNames.add(key);
      const bytes = (shape as number[]).reduce((a, s) => a * s, 1) * STORAGE_BYTES[storage];
      if (canon !== null) entries.push({ name: canon, shape: (shape as number[]).slice(), storage, scale, min, group: gi, begin: offset, end: offset + bytes });
      offset += bytes;
    }
    if (offset > 0 && paths.length === 0) fail(`${group} has weights but no shard paths`);
    groups.push({ paths: paths as string[], bytes: offset });
  });
  return { groups, entries, files: groups.flatMap((g) => g.paths) };
}

interface GroupLayout {
  paths: string[];
  sizes: number[];
  /** Byte offset of each shard within the group. */
  starts: number[];
}

/** Checks the shards of each group add up to exactly its weights; names a short shard when not. */
async function layoutGroups(source: FileSource, manifest: TfjsManifest): Promise<GroupLayout[]> {
  const out: GroupLayout[] = [];
  for (const [gi, g] of manifest.groups.entries()) {
    const sizes: number[] = [];
    for (const p of g.paths) sizes.push(await source.size(p));
    const held = sizes.reduce((a, s) => a + s, 0);
    if (held < g.bytes) {
      // Shards are cut at one fixed size, so every shard but the last is as long as the longest.
      const full = Math.max(...sizes);
      let short = sizes.findIndex((s, i) => i < sizes.length - 1 && s < full);
      if (short < 0) short = sizes.length - 1;
      throw new GPT2Error(
        'BAD_WEIGHTS',
        `shard ${source.describe(g.paths[short])} is too short (${sizes[short]} bytes): the ${g.paths.length} shard(s) of weightsManifest[${gi}] hold ` +
          `${held} bytes but its weights need ${g.bytes}. Truncated file? Download or convert it again.`,
      );
    }
    if (held > g.bytes) {
      throw new GPT2Error('BAD_WEIGHTS', `${source.describe(MANIFEST_FILE)}: the shards of weightsManifest[${gi}] hold ${held} bytes but its weights need ${g.bytes}: manifest and shards do not match`);
    }
    const starts: number[] = [];
    sizes.reduce((at, s) => (starts.push(at), at + s), 0);
    out.push({ paths: g.paths, sizes, starts });
  }
  return out;
}

/** Bytes [begin, end) of a group, read from the shard(s) that hold them. */
async function readSpan(source: FileSource, g: GroupLayout, begin: number, end: number): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  for (let i = 0; i < g.paths.length; i++) {
    const s0 = g.starts[i];
    const s1 = s0 + g.sizes[i];
    if (s1 <= begin || s0 >= end) continue;
    parts.push(await source.readRange(g.paths[i], Math.max(begin, s0) - s0, Math.min(end, s1) - s0));
  }
  if (parts.length === 1) return parts[0];
  const out = new Uint8Array(end - begin);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.byteLength;
  }
  return out;
}

function decode(bytes: Uint8Array, e: TfjsEntry): Float32Array {
  if (e.storage === 'f32') return decodeToFloat32(bytes, 'F32');
  if (e.storage === 'f16') return decodeToFloat32(bytes, 'F16');
  const aligned = bytes.byteOffset % 2 === 0 ? bytes : bytes.slice();
  const q = e.storage === 'u8' ? aligned : new Uint16Array(aligned.buffer, aligned.byteOffset, aligned.byteLength / 2);
  const out = new Float32Array(q.length);
  for (let i = 0; i < q.length; i++) out[i] = q[i] * e.scale + e.min;
  return out;
}

/**
 * Streams the weights of a validated manifest one at a time (as streamTensors does for safetensors).
 * Shard sizes are checked against the manifest before any weight is decoded.
 */
export async function* streamTfjsTensors(
  source: FileSource,
  manifest: TfjsManifest,
  onProgress?: (p: LoadProgress) => void,
): AsyncGenerator<NamedHostTensor> {
  const layouts = await layoutGroups(source, manifest);
  const totalBytes = layouts.reduce((a, g) => a + g.sizes.reduce((b, s) => b + s, 0), 0);
  let loadedBytes = 0;
  let file = manifest.files[0] ?? MANIFEST_FILE;
  for (const e of manifest.entries) {
    const g = layouts[e.group];
    const bytes = e.end > e.begin ? await readSpan(source, g, e.begin, e.end) : new Uint8Array(0);
    const last = g.starts.findIndex((s, i) => e.end - 1 >= s && e.end - 1 < s + g.sizes[i]);
    file = g.paths[Math.max(last, 0)] ?? file;
    yield { name: e.name, file, shape: e.shape.slice(), data: decode(bytes, e) };
    loadedBytes += e.end - e.begin;
    onProgress?.({ loadedBytes, totalBytes, file });
  }
  onProgress?.({ loadedBytes: totalBytes, totalBytes, file });
}

// ---- writer (Node) ----------------------------------------------------------------------------

export interface TfjsWriteOptions {
  /** Largest shard in bytes (default 4 MiB, tfjs-converter's default): small enough to cache well. */
  shardBytes?: number;
  /** Stored precision (default 'float32'); 'float16' halves the download. */
  dtype?: TfjsStoredDtype;
}

export interface TfjsWriteTensor {
  name: string;
  shape: number[];
  data: Float32Array;
}

export interface TfjsWriteResult {
  /** Path of the written model.json. */
  modelJson: string;
  /** Shard file names, in order. */
  paths: string[];
  weights: number;
  bytes: number;
}

const SHARD_NAME = /^group\d+-shard\d+of\d+\.bin$/;

/** Cuts one byte stream into shard files of at most `shardBytes` (temporary names until renamed). */
class ShardWriter {
  readonly temps: string[] = [];
  private fh: import('fs').promises.FileHandle | null = null;
  private filled = 0;
  constructor(private readonly dir: string, private readonly shardBytes: number) {}

  async write(bytes: Uint8Array): Promise<void> {
    const fs = require('fs') as typeof import('fs');
    const path = require('path') as typeof import('path');
    let at = 0;
    while (at < bytes.byteLength) {
      if (!this.fh || this.filled === this.shardBytes) {
        await this.close();
        const tmp = path.join(this.dir, `group1-shard${this.temps.length + 1}.bin.tmp`);
        this.temps.push(tmp);
        this.fh = await fs.promises.open(tmp, 'w');
        this.filled = 0;
      }
      const n = Math.min(this.shardBytes - this.filled, bytes.byteLength - at);
      await this.fh.write(bytes, at, n);
      this.filled += n;
      at += n;
    }
  }

  async close(): Promise<void> {
    const fh = this.fh;
    this.fh = null;
    await fh?.close();
  }
}

/**
 * Writes `tensors` as model.json + shards into `outDir` (Node only). Shards are written under
 * temporary names and model.json last, so an interrupted write never leaves a loadable mix; shards
 * left by an earlier conversion into the same folder are removed.
 */
export async function writeTfjsManifest(
  tensors: Iterable<TfjsWriteTensor> | AsyncIterable<TfjsWriteTensor>,
  outDir: string,
  options: TfjsWriteOptions = {},
): Promise<TfjsWriteResult> {
  const shardBytes = options.shardBytes ?? 4 * 2 ** 20;
  const dtype = options.dtype ?? 'float32';
  if (!Number.isSafeInteger(shardBytes) || shardBytes < 1) throw new GPT2Error('BAD_OPTION', `shardBytes must be a positive integer (got ${shardBytes})`);
  if (dtype !== 'float32' && dtype !== 'float16') throw new GPT2Error('BAD_OPTION', `dtype must be 'float32' or 'float16' (got ${JSON.stringify(dtype)})`);
  const fs = require('fs') as typeof import('fs');
  const path = require('path') as typeof import('path');
  await fs.promises.mkdir(outDir, { recursive: true });

  const shards = new ShardWriter(outDir, shardBytes);
  const weights: TfjsWeightSpec[] = [];
  const names = new Set<string>();
  let total = 0;
  try {
    for await (const t of tensors) {
      if (names.has(t.name)) throw new GPT2Error('BAD_WEIGHTS', `weight "${t.name}" given twice`);
      names.add(t.name);
      const count = t.shape.reduce((a, s) => a * s, 1);
      if (count !== t.data.length) throw new GPT2Error('BAD_WEIGHTS', `weight "${t.name}": shape [${t.shape}] holds ${count} values, data has ${t.data.length}`);
      let bytes: Uint8Array;
      if (dtype === 'float32') bytes = new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);
      else {
        const h = new Uint16Array(t.data.length);
        for (let i = 0; i < h.length; i++) h[i] = toHalf(t.data[i]);
        bytes = new Uint8Array(h.buffer);
      }
      await shards.write(bytes);
      total += bytes.byteLength;
      weights.push(dtype === 'float32' ? { name: t.name, shape: t.shape.slice(), dtype: 'float32' } : { name: t.name, shape: t.shape.slice(), dtype: 'float32', quantization: { dtype: 'float16' } });
    }
    await shards.close();
    const temps = shards.temps;
    const paths = temps.map((_, i) => `group1-shard${i + 1}of${temps.length}.bin`);
    for (let i = 0; i < temps.length; i++) await fs.promises.rename(temps[i], path.join(outDir, paths[i]));
    const modelJson: TfjsModelJson = { format: MANIFEST_FORMAT, generatedBy: 'gpt2-tfjs', convertedBy: 'gpt2-tfjs convert', modelTopology: null, weightsManifest: [{ paths, weights }] };
    const file = path.join(outDir, MANIFEST_FILE);
    await fs.promises.writeFile(`${file}.tmp`, JSON.stringify(modelJson, null, 1) + '\n');
    await fs.promises.rename(`${file}.tmp`, file);
    const keep = new Set(paths);
    for (const f of await fs.promises.readdir(outDir)) {
      if (SHARD_NAME.test(f) && !keep.has(f)) await fs.promises.rm(path.join(outDir, f), { force: true });
    }
    return { modelJson: file, paths, weights: weights.length, bytes: total };
  } catch (e) {
    await shards.close().catch(() => undefined);
    for (const t of shards.temps) await fs.promises.rm(t, { force: true }).catch(() => undefined);
    throw e;
  }
}
