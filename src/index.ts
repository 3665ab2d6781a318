export { GPT2 } from './gpt2';
export type { Prompt, FinishReason, GenerateOptions, GenerateResult, StreamChunk } from './gpt2';
export type { SamplingOptions, TokenLogprob } from './generate/sampling';
export { GPT2Error, isGPT2Error } from './errors';
export type { GPT2ErrorCode } from './errors';
export { setBackend, currentBackend, BACKENDS } from './backend';
export type { BackendName } from './backend';
export type { GPT2Config } from './model/config';
export type { LoadOptions } from './load';
export type { LoadProgress } from './io/hf';
export { gpt2Generate } from './generate/exercise';
export type { GPT2GenerateOptions } from './generate/exercise';
export type { SeedLayer, ArrayInput } from './model/seed';
export { MT19937 } from './generate/rng';
export { readSafetensorsHeader, writeSafetensors } from './io/safetensors';

import { GPT2 } from './gpt2';
import { LoadOptions, loadTransformer, resolveSource } from './load';

/** Loads a GPT-2 in Hugging Face layout from a folder or http(s) base URL (default: the bundled model). */
export async function loadModel(source?: string, options: LoadOptions = {}): Promise<GPT2> {
  const model = await loadTransformer(resolveSource(source), options);
  return new GPT2(model);
}
