/**
 * Hugging Face model folder layout: `config.json` + `model.safetensors` (or shards listed in
 * `model.safetensors.index.json`). This module only reads, validates and name-maps; it knows
 * nothing of tf or of the model math.
 */
import { GPT2Error } from '../errors';
import { isSafeRelativePath } from './paths';
import { FileSource } from './source';
import { HostTensor, SafetensorsHeader, decodeTensor, parseHeader, readHeaderLength } from './safetensors';

export interface LoadProgress {
  loadedBytes: number;
  totalBytes: number;
  file: string;
}

export async function readConfigJson(source: FileSource): Promise<Record<string, unknown>> {
  const text = await source.readText('config.json');
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new GPT2Error('BAD_CONFIG', `${source.describe('config.json')}: not valid JSON (${(e as Error).message})`);
  }
  if (json === null || typeof json !== 'object' || Array.isArray(json)) {
    throw new GPT2Error('BAD_CONFIG', `${source.describe('config.json')}: expected a JSON object`);
  }
  return json as Record<string, unknown>;
}

/**
 * Maps a checkpoint key to the canonical gpt2 name (`wte.weight`, `h.0.attn.c_attn.weight`, ...,
 * `lm_head.weight`), or null for buffers that carry no weights (the causal-mask `attn.bias`).
 */
export function canonicalName(key: string): string | null {
  const k = key.startsWith('transformer.') ? key.slice('transformer.'.length) : key;
  if (/^h\.\d+\.attn\.(bias|masked_bias)$/.test(k)) return null;
  return k;
}

/**
 * The shard files named by a `model.safetensors.index.json` text, each once, in first-seen order;
 * BAD_WEIGHTS (prefixed with `where`) for bad JSON, a missing `weight_map` or an unsafe shard name.
 */
export function parseIndex(text: string, where: string): string[] {
  let index: unknown;
  try {
    index = JSON.parse(text);
  } catch (e) {
    throw new GPT2Error('BAD_WEIGHTS', `${where}: not valid JSON (${(e as Error).message})`);
  }
  const map = index !== null && typeof index === 'object' ? (index as { weight_map?: unknown }).weight_map : undefined;
  if (map === null || typeof map !== 'object' || Array.isArray(map)) {
    throw new GPT2Error('BAD_WEIGHTS', `${where}: missing "weight_map" object`);
  }
  const files = [...new Set(Object.values(map as Record<string, unknown>))];
  for (const f of files) {
    if (!isSafeRelativePath(f)) throw new GPT2Error('BAD_WEIGHTS', `${where}: bad shard name ${JSON.stringify(f)}`);
  }
  return files as string[];
}

/** The weight files of a folder, in read order. */
export async function listWeightFiles(source: FileSource): Promise<string[]> {
  if (await source.exists('model.safetensors.index.json')) {
    const where = source.describe('model.safetensors.index.json');
    const files = parseIndex(await source.readText('model.safetensors.index.json'), where);
    for (const f of files) {
      if (!(await source.exists(f))) throw new GPT2Error('MISSING_FILE', `${where} names shard "${f}", which does not exist`);
    }
    return files;
  }
  if (await source.exists('model.safetensors')) return ['model.safetensors'];
  throw new GPT2Error('MISSING_FILE', `no weights: neither ${source.describe('model.safetensors')} nor model.safetensors.index.json exists`);
}

export interface NamedHostTensor extends HostTensor {
  name: string;
  file: string;
  /**
   * Only in a stream asked for `chunkBytes`: this item holds rows [row0, row0 + rows) of the tensor
   * (shape is the whole tensor's); the other rows follow in the next items, in order.
   */
  part?: { row0: number; rows: number };
  /** Only in a stream asked to `reuse` its read buffer: data is valid until the next item is asked for. */
  borrowed?: true;
}

export interface StreamOptions {
  /**
   * Read every tensor into one buffer, reused (and grown) from tensor to tensor: the items are
   * `borrowed`. Without it each tensor gets its own buffer, which the consumer may keep.
   */
  reuse?: boolean;
  /** Float tensors of 2+ dims larger than this many bytes arrive in parts of whole rows (`part`). */
  chunkBytes?: number;
  /**
   * With `reuse`: where the reused buffer lives, for a buffer of at least n bytes (default: a host
   * array, grown by half again, so a few sizes settle it). The wasm engine lends one from its memory.
   */
  buffer?: (n: number) => Uint8Array;
}

const FLOAT_BYTES: Record<string, number> = { F32: 4, F16: 2, BF16: 2, F64: 8 };

async function readHeaderOf(source: FileSource, file: string): Promise<{ header: SafetensorsHeader; size: number }> {
  const where = source.describe(file);
  const size = await source.size(file);
  const prefix = await source.readRange(file, 0, Math.min(8, size));
  const n = readHeaderLength(prefix, size, where);
  const header = parseHeader(await source.readRange(file, 8, 8 + n), size, where);
  return { header, size };
}

/**
 * Streams the tensors of every weight file, one at a time, so the caller can upload each and drop
 * the host copy: peak host memory stays near the largest tensor, not the whole checkpoint.
 * All headers are validated (and duplicate names across shards rejected) before any data is read.
 */
export async function* streamTensors(
  source: FileSource,
  onProgress?: (p: LoadProgress) => void,
  opts: StreamOptions = {},
): AsyncGenerator<NamedHostTensor> {
  const files = await listWeightFiles(source);
  const headers: { file: string; header: SafetensorsHeader }[] = [];
  const seen = new Map<string, string>();
  let totalBytes = 0;
  for (const file of files) {
    const { header, size } = await readHeaderOf(source, file);
    totalBytes += size;
    for (const key of header.entries.keys()) {
      const name = canonicalName(key);
      if (name === null) continue;
      const prev = seen.get(name);
      if (prev !== undefined) throw new GPT2Error('BAD_WEIGHTS', `weight "${name}" appears twice (in ${prev} and ${file})`);
      seen.set(name, file);
    }
    headers.push({ file, header });
  }
  let buf = new Uint8Array(0);
  /** The reused read buffer, with room for n bytes. */
  const scratch = opts.buffer ?? ((n: number): Uint8Array => {
    if (buf.byteLength < n) buf = new Uint8Array(Math.max(n, Math.floor(buf.byteLength * 1.5)));
    return buf;
  });
  let loadedBytes = 0;
  for (const { file, header } of headers) {
    loadedBytes += header.dataStart;
    for (const entry of header.entries.values()) {
      const name = canonicalName(entry.name);
      if (name !== null) {
        const elBytes = FLOAT_BYTES[entry.dtype];
        const rowBytes = entry.shape.length >= 2 && elBytes ? (entry.end - entry.begin) / entry.shape[0] : 0;
        const chunkRows = opts.chunkBytes !== undefined && rowBytes > 0 && entry.end - entry.begin > opts.chunkBytes ? Math.max(1, Math.floor(opts.chunkBytes / rowBytes)) : 0;
        // the whole tensor in one item, or rows [row0, row0 + rows) per item
        for (let row0 = 0, first = true; first || (chunkRows && row0 < entry.shape[0]); first = false) {
          const rows = chunkRows ? Math.min(chunkRows, entry.shape[0] - row0) : 0;
          const [begin, end] = chunkRows ? [entry.begin + row0 * rowBytes, entry.begin + (row0 + rows) * rowBytes] : [entry.begin, entry.end];
          const bytes = await source.readRange(file, begin, end, opts.reuse ? scratch(end - begin) : undefined);
          yield { name, file, shape: entry.shape.slice(), data: decodeTensor(bytes, entry.dtype, opts.reuse), ...(chunkRows ? { part: { row0, rows } } : {}), ...(opts.reuse ? { borrowed: true as const } : {}) };
          row0 += rows;
        }
      }
      loadedBytes += entry.end - entry.begin;
      onProgress?.({ loadedBytes, totalBytes, file });
    }
  }
  onProgress?.({ loadedBytes: totalBytes, totalBytes, file: files[files.length - 1] });
}
