/**
 * `quantizeModel`: any GPT-2 folder or URL (safetensors F32/F16/BF16, sharded or not, or a tfjs
 * manifest) -> a q8 folder in Hugging Face layout (docs/q8.md): int8 Conv1D weights with one scale per
 * output channel, int8 wte/wpe with one scale per row, float biases and layer norms, config.json with
 * its `quantization_config`, and the tokenizer files. Node only (writes files).
 */
import { GPT2Error } from './errors';
import { LoadProgress, readConfigJson } from './io/hf';
import { WriteTensor, safetensorsParts } from './io/safetensors';
import { FileSource, openSource } from './io/source';
import { SIDE_FILES, streamWeights } from './io/weights';
import { Q8_QUANTIZATION_CONFIG, isInt8Weight, parseConfig } from './model/config';
import { quantize } from './model/quantize';

export interface QuantizeOptions {
  /** Called as source weight bytes are read (for a URL: downloaded). */
  onProgress?: (p: LoadProgress) => void;
  /** URL sources: fail with NETWORK when the server sends nothing for this long (ms; default 30 000). */
  timeoutMs?: number;
  /** Aborts the conversion (ABORTED); nothing is left in `outDir` but what was there. */
  signal?: AbortSignal;
}

export interface QuantizeResult {
  /** The written model.safetensors, its size, and the float bytes it replaces. */
  path: string;
  bytes: number;
  floatBytes: number;
  /** Tensors written (int8 weights, their scales, float biases and norms). */
  tensors: number;
  /** config.json and the side files copied. */
  copied: string[];
}

/**
 * Quantizes the model of `src` (a folder path, an http(s) base URL, or an opened source) into `outDir`
 * (created; must not hold another model's weights).
 */
export async function quantizeModel(src: string | FileSource, outDir: string, options: QuantizeOptions = {}): Promise<QuantizeResult> {
  if (typeof outDir !== 'string' || outDir === '') throw new GPT2Error('BAD_OPTION', 'quantizeModel(src, outDir): outDir must be a folder path');
  const source = typeof src === 'string' ? openSource(src, { signal: options.signal, timeoutMs: options.timeoutMs }) : src;
  const fs = require('fs') as typeof import('fs');
  const path = require('path') as typeof import('path');
  const raw = await readConfigJson(source); // fails early, before anything is written
  const config = parseConfig(raw, source.describe('config.json'));
  if (config.quantization) throw new GPT2Error('BAD_OPTION', `${source.describe('config.json')} is already q8: quantize the float model`);
  for (const f of ['model.safetensors.index.json', 'model.json']) {
    if (fs.existsSync(path.join(outDir, f))) throw new GPT2Error('BAD_OPTION', `${path.join(outDir, f)} exists and would load instead of the q8 weights: quantize into an empty folder`);
  }
  const q8 = { ...config, quantization: 'q8' as const };
  const out: Record<string, WriteTensor> = {};
  let floatBytes = 0;
  let wte: Float32Array | null = null;
  let lmHead: { data: Float32Array; shape: number[] } | null = null;
  for await (const t of streamWeights(source, options.onProgress)) {
    if (!(t.data instanceof Float32Array)) throw new GPT2Error('BAD_WEIGHTS', `${t.name} (in ${t.file}) is already int8`);
    floatBytes += 4 * t.data.length;
    if (t.name === 'lm_head.weight') {
      lmHead = { data: t.data, shape: t.shape }; // written only when it is not wte under another name
      continue;
    }
    if (t.name === 'wte.weight') wte = t.data;
    if (isInt8Weight(q8, t.name) && t.shape.length === 2) {
      const [rows, cols] = t.shape;
      const { q, scale } = quantize(t.data, rows, cols, !/^h\./.test(t.name)); // Conv1D [in, out]: per output column; embeddings: per row
      out[t.name] = { data: q, shape: t.shape };
      out[t.name + '_scale'] = { data: scale, shape: [scale.length] };
    } else out[t.name] = { data: t.data, shape: t.shape };
  }
  if (lmHead && !(wte && lmHead.data.every((v, i) => v === (wte as Float32Array)[i]))) {
    const { q, scale } = quantize(lmHead.data, lmHead.shape[0], lmHead.shape[1], true);
    out['lm_head.weight'] = { data: q, shape: lmHead.shape };
    out['lm_head.weight_scale'] = { data: scale, shape: [scale.length] };
  }
  await fs.promises.mkdir(outDir, { recursive: true });
  const file = path.join(outDir, 'model.safetensors');
  const tmp = `${file}.partial`;
  const parts = safetensorsParts(out, { format: 'pt', quantization: Q8_QUANTIZATION_CONFIG.quant_method });
  const fh = await fs.promises.open(tmp, 'w');
  try {
    for (const p of parts) await fh.write(p);
  } finally {
    await fh.close();
  }
  await fs.promises.rename(tmp, file); // whole or not at all
  const copied = ['config.json'];
  await fs.promises.writeFile(path.join(outDir, 'config.json'), JSON.stringify({ ...raw, quantization_config: Q8_QUANTIZATION_CONFIG }, null, 2) + '\n');
  for (const f of SIDE_FILES) {
    if (!(await source.exists(f))) continue;
    await fs.promises.writeFile(path.join(outDir, f), await source.read(f));
    copied.push(f);
  }
  return { path: file, bytes: parts.reduce((n, p) => n + p.byteLength, 0), floatBytes, tensors: Object.keys(out).length, copied };
}
