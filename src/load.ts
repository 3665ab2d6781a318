/**
 * loadModel: source (folder or URL) → validated config → streamed weights → GPT2Model.
 * Nothing is left behind on failure: tensors created before an error are disposed.
 */
import { BackendName, setBackend } from './backend';
import { GPT2Error } from './errors';
import { LoadProgress, StreamOptions, readConfigJson } from './io/hf';
import { FileSource, isUrl, openSource } from './io/source';
import { checkFinite, streamWeights } from './io/weights';
import { GPT2Config, parseConfig } from './model/config';
import { GPT2Model } from './model/gpt2';
import { currentEngine, engineInfo } from './model/engines';
import { buildParams } from './model/params';
import { warnOnce, wasmKernelsActive } from './model/wasm/instance';

export interface LoadOptions {
  /** tfjs backend to run on (default 'wasm'). */
  backend?: BackendName;
  /** Called as weight bytes are read (for a URL source: as they are downloaded). */
  onProgress?: (p: LoadProgress) => void;
  /**
   * Node only, URL sources: a folder that keeps the fetched files (one per URL, named by a hash of
   * it; written whole or not at all). Later loads of the same URL read them from there, without
   * network. Without it, a URL's files are fetched into memory on every load.
   */
  cacheDir?: string;
  /**
   * wasm: threads for the model's kernels, 1..cores (default: the cores, at most 4; Node: env
   * GPT2_TFJS_THREADS). See BackendOptions.threads.
   */
  threads?: number;
  /** Aborts the load: it fails with ABORTED, leaving no tensor behind. */
  signal?: AbortSignal;
  /**
   * URL sources: a request that gets no response or no body bytes for this long fails with NETWORK
   * (default 30 000 ms; Infinity waits forever). A slow but moving download is never cut.
   */
  timeoutMs?: number;
  /**
   * Check every weight for NaN/±Infinity as it loads (NON_FINITE names the tensor and index). Costs one
   * pass over the weights; off by default, since sampling refuses non-finite logits anyway.
   */
  validate?: boolean;
}

/** Float tables larger than this arrive in parts at load (see streamWeights). */
export const LOAD_CHUNK_BYTES = 16 << 20;

/** The folder of the model shipped with the package (weights/ beside src/ and dist/). */
export function defaultModelDir(): string {
  const path = require('path') as typeof import('path');
  return path.join(__dirname, '..', 'weights', 'gpt2-shakespeare');
}

/** `stream`: how the weight files are read (tests shrink the parts to exercise them on small models). */
export async function loadTransformer(source: FileSource, opts: LoadOptions = {}, stream: StreamOptions = { reuse: true, chunkBytes: LOAD_CHUNK_BYTES }): Promise<GPT2Model> {
  await setBackend(opts.backend, { threads: opts.threads });
  const config: GPT2Config = parseConfig(await readConfigJson(source), source.describe('config.json'));
  // One reused read buffer, and tables over 16 MB in parts (the 154 MB wte goes into the head part by
  // part): the load holds no whole-tensor host copies beside the backend's memory.
  const lent = stream.reuse ? (currentEngine().loadBuffer?.() ?? null) : null; // the read buffer, in the backend's memory where it can be
  try {
    const weights = streamWeights(source, opts.onProgress, lent ? { ...stream, buffer: lent.get } : stream);
    // With the wasm kernels the weights are packed for them at load (float32 panels, or int8 ones for q8).
    const kernels = wasmKernelsActive();
    if (config.quantization && !kernels) warnOnce(`${source.describe('')} is a q8 model: ${engineInfo().q8.reason ?? ''} (4x the memory, float speed)`);
    const params = await buildParams(config, opts.validate ? checkFinite(weights) : weights, { int8Kernels: kernels, panels: kernels, upload: currentEngine().upload });
    return new GPT2Model(config, params);
  } finally {
    lent?.dispose();
  }
}

export function resolveSource(dirOrUrl: string | undefined, opts: Pick<LoadOptions, 'cacheDir' | 'signal' | 'timeoutMs'> = {}): FileSource {
  if (dirOrUrl !== undefined && typeof dirOrUrl !== 'string') throw new GPT2Error('BAD_OPTION', 'model source must be a folder path or an http(s) URL');
  if (typeof window !== 'undefined' && (dirOrUrl === undefined || !isUrl(dirOrUrl))) {
    throw new GPT2Error('BAD_OPTION', 'in a browser the model source must be an http(s) URL (the page serves weights/ alongside)');
  }
  const src = dirOrUrl ?? defaultModelDir();
  return openSource(src, { cacheDir: opts.cacheDir, signal: opts.signal, timeoutMs: opts.timeoutMs });
}
