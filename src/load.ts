/**
 * loadModel: source (folder or URL) → validated config → streamed weights → GPT2Model.
 * Nothing is left behind on failure: tensors created before an error are disposed.
 */
import { BackendName, setBackend } from './backend';
import { GPT2Error } from './errors';
import { LoadProgress, readConfigJson, streamTensors } from './io/hf';
import { FileSource, isUrl, openSource } from './io/source';
import { GPT2Config, parseConfig } from './model/config';
import { GPT2Model } from './model/gpt2';
import { buildParams } from './model/params';

export interface LoadOptions {
  /** tfjs backend to run on (default 'wasm'). */
  backend?: BackendName;
  /** Called as weight bytes are read. */
  onProgress?: (p: LoadProgress) => void;
}

/** The folder of the model shipped with the package (weights/ beside src/ and dist/). */
export function defaultModelDir(): string {
  const path = require('path') as typeof import('path');
  return path.join(__dirname, '..', 'weights', 'gpt2-shakespeare');
}

export async function loadTransformer(source: FileSource, opts: LoadOptions = {}): Promise<GPT2Model> {
  await setBackend(opts.backend);
  const config: GPT2Config = parseConfig(await readConfigJson(source), source.describe('config.json'));
  const params = await buildParams(config, streamTensors(source, opts.onProgress));
  return new GPT2Model(config, params);
}

export function resolveSource(dirOrUrl: string | undefined): FileSource {
  if (dirOrUrl !== undefined && typeof dirOrUrl !== 'string') throw new GPT2Error('BAD_OPTION', 'model source must be a folder path or an http(s) URL');
  const src = dirOrUrl ?? defaultModelDir();
  if (!isUrl(src) && typeof window !== 'undefined') throw new GPT2Error('BAD_OPTION', 'in a browser the model source must be an http(s) URL');
  return openSource(src);
}
