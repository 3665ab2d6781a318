export { GPT2 } from './gpt2';
export type { Prompt, FinishReason, GenerateOptions, GenerateResult, StreamChunk } from './gpt2';
export type { SamplingOptions, TokenLogprob } from './generate/sampling';
export { GPT2Error, isGPT2Error } from './errors';
export type { GPT2ErrorCode } from './errors';
export { setBackend, currentBackend, engineInfo, BACKENDS } from './backend';
export type { BackendName, BackendOptions, EngineInfo, KernelStatus } from './backend';
export type { GPT2Config } from './model/config';
export type { LoadOptions } from './load';
export { MAX_FILE_BYTES, DEFAULT_TIMEOUT_MS } from './io/source';
export type { LoadProgress } from './io/hf';
export { gpt2Generate } from './generate/exercise';
export type { GPT2GenerateOptions } from './generate/exercise';
export type { SeedLayer, ArrayInput } from './model/seed';
export { MT19937 } from './generate/rng';
export { readSafetensorsHeader, writeSafetensors } from './io/safetensors';
export { downloadModel } from './io/download';
export { convertToTfjs } from './io/weights';
export { quantizeModel } from './convert';
export type { QuantizeOptions, QuantizeResult } from './convert';

export { loadTokenizer, hasTokenizerFiles, tokenizerFromFiles } from './tokenizer';
export type { Tokenizer, StreamDecoder, EncodeOptions } from './tokenizer';

import { GPT2 } from './gpt2';
import { GPT2Error } from './errors';
import { LoadOptions, loadTransformer, resolveSource } from './load';
import { hasAnyTokenizerFile, loadTokenizer } from './tokenizer';

/**
 * Loads a GPT-2 in Hugging Face layout from a folder or http(s) base URL (default: the bundled
 * model). The tokenizer comes from the same place when its files are there (else `tokenizer` is null
 * and prompts must be token ids; half a tokenizer is an error). It is read first: a broken tokenizer
 * fails before any weight loads.
 */
export async function loadModel(source?: string, options: LoadOptions = {}): Promise<GPT2> {
  const files = resolveSource(source, options);
  const tokenizer = (await hasAnyTokenizerFile(files)) ? await loadTokenizer(files) : null;
  const model = await loadTransformer(files, options);
  if (tokenizer && tokenizer.vocabSize > model.config.vocabSize) {
    model.dispose();
    throw new GPT2Error('BAD_TOKENIZER', `${files.describe('.')}: the tokenizer has ${tokenizer.vocabSize} tokens but the model only ${model.config.vocabSize} (vocab_size): they do not belong together`);
  }
  return new GPT2(model, tokenizer);
}
