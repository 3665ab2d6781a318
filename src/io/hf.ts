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
}

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
  let loadedBytes = 0;
  for (const { file, header } of headers) {
    loadedBytes += header.dataStart;
    for (const entry of header.entries.values()) {
      const name = canonicalName(entry.name);
      if (name !== null) {
        const bytes = await source.readRange(file, entry.begin, entry.end);
        yield { name, file, shape: entry.shape.slice(), data: decodeTensor(bytes, entry.dtype) };
      }
      loadedBytes += entry.end - entry.begin;
      onProgress?.({ loadedBytes, totalBytes, file });
    }
  }
  onProgress?.({ loadedBytes: totalBytes, totalBytes, file: files[files.length - 1] });
}
