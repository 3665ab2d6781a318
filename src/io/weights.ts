/**
 * Which weight layout a model folder uses, in load order: model.safetensors.index.json (sharded)
 * → model.safetensors → model.json (tfjs manifest); one stream of named host tensors for all of
 * them; and conversion to the tfjs layout.
 */
import { GPT2Error } from '../errors';
import { LoadProgress, NamedHostTensor, StreamOptions, listWeightFiles, readConfigJson, streamTensors } from './hf';
import { FileSource } from './source';
import { MANIFEST_FILE, TfjsManifest, TfjsWriteOptions, TfjsWriteResult, readTfjsManifest, streamTfjsTensors, writeTfjsManifest } from './tfjs';

/** Files that travel beside the weights: tokenizer files and generation defaults. All optional. */
export const SIDE_FILES = ['vocab.json', 'merges.txt', 'tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json', 'generation_config.json'];

export type WeightLayout = { format: 'safetensors'; files: string[] } | { format: 'tfjs'; files: string[]; manifest: TfjsManifest };

export async function detectWeights(source: FileSource): Promise<WeightLayout> {
  if ((await source.exists('model.safetensors.index.json')) || (await source.exists('model.safetensors'))) {
    return { format: 'safetensors', files: await listWeightFiles(source) };
  }
  if (await source.exists(MANIFEST_FILE)) {
    const manifest = await readTfjsManifest(source);
    for (const f of manifest.files) {
      if (!(await source.exists(f))) throw new GPT2Error('MISSING_FILE', `${source.describe(MANIFEST_FILE)} names shard "${f}", which does not exist`);
    }
    return { format: 'tfjs', files: manifest.files, manifest };
  }
  throw new GPT2Error(
    'MISSING_FILE',
    `no weights in ${source.describe('')}: expected model.safetensors, model.safetensors.index.json (sharded) or model.json (tfjs manifest)`,
  );
}

/**
 * The weights of any supported layout, one tensor at a time. A remote source first fetches the
 * weight files (progress then reports the download); reads after that need no network.
 */
export async function* streamWeights(source: FileSource, onProgress?: (p: LoadProgress) => void, opts: StreamOptions = {}): AsyncGenerator<NamedHostTensor> {
  const layout = await detectWeights(source);
  let readProgress = onProgress;
  if (source.prefetch) {
    await source.prefetch(layout.files, onProgress);
    readProgress = undefined; // reading the fetched bytes back is quick; the download was the progress
  }
  if (layout.format === 'tfjs') yield* streamTfjsTensors(source, layout.manifest, readProgress);
  else yield* streamTensors(source, readProgress, opts); // (the tfjs layout's shards are read whole: no parts, nothing borrowed)
}

/** Index of the first NaN or ±Infinity in `a`, or -1. */
export function firstNonFinite(a: Float32Array): number {
  for (let i = 0; i < a.length; i++) {
    const v = a[i];
    if (v - v !== 0) return i; // NaN - NaN and Inf - Inf are NaN; every finite v gives 0
  }
  return -1;
}

/** The same stream, failing with NON_FINITE at the first tensor holding a NaN or ±Infinity. */
export async function* checkFinite(tensors: AsyncIterable<NamedHostTensor>): AsyncGenerator<NamedHostTensor> {
  for await (const t of tensors) {
    const i = t.data instanceof Float32Array ? firstNonFinite(t.data) : -1; // int8 is always finite
    if (i >= 0) {
      const at = i + (t.part ? (t.part.row0 * t.data.length) / t.part.rows : 0); // a part's index within the whole tensor
      throw new GPT2Error('NON_FINITE', `${t.name} (in ${t.file}) holds ${t.data[i]} at flat index ${at} (shape [${t.shape.join(', ')}]): the checkpoint is corrupt or was saved after training diverged`);
    }
    yield t;
  }
}

/** The stream, refusing int8 tensors: the tfjs layout holds floats, so a q8 model has no tfjs form. */
async function* floatsOnly(tensors: AsyncIterable<NamedHostTensor>): AsyncGenerator<NamedHostTensor & { data: Float32Array }> {
  for await (const t of tensors) {
    if (!(t.data instanceof Float32Array)) {
      throw new GPT2Error('BAD_OPTION', `${t.name} (in ${t.file}) is int8: a q8 model cannot be written as a tfjs manifest; convert the float model instead`);
    }
    yield t as NamedHostTensor & { data: Float32Array };
  }
}

export interface TfjsConvertResult extends TfjsWriteResult {
  /** config.json and the side files copied beside the manifest. */
  copied: string[];
}

/**
 * Node only: writes the model of `source` (any layout) into `outDir` as a tfjs manifest, with its
 * config.json and whichever tokenizer files it has.
 */
export async function convertToTfjs(source: FileSource, outDir: string, options: TfjsWriteOptions = {}): Promise<TfjsConvertResult> {
  const fs = require('fs') as typeof import('fs');
  const path = require('path') as typeof import('path');
  for (const f of ['model.safetensors', 'model.safetensors.index.json']) {
    if (fs.existsSync(path.join(outDir, f))) {
      throw new GPT2Error('BAD_OPTION', `${path.join(outDir, f)} exists and would load before model.json: convert into an empty folder`);
    }
  }
  await readConfigJson(source); // fail early, before writing anything, when the config is unreadable
  const result = await writeTfjsManifest(floatsOnly(streamWeights(source)), outDir, options);
  const copied: string[] = [];
  for (const f of ['config.json', ...SIDE_FILES]) {
    if (f !== 'config.json' && !(await source.exists(f))) continue;
    await fs.promises.writeFile(path.join(outDir, f), await source.read(f));
    copied.push(f);
  }
  return { ...result, copied };
}
