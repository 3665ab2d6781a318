/**
 * GPT2: the public handle on a loaded model — config, tokenizer, forward, generation, scoring,
 * dispose. It composes the layers below (model/, tokenizer/, generate/) and adds no math of its own.
 */
import { GPT2Error } from './errors';
import { FinishReason, GenerateOptions, GenerateResult, Sequence, StreamChunk, runToEnd, streamSequence } from './generate/generate';
import { GPT2Config } from './model/config';
import { GPT2Model } from './model/gpt2';
import { Tokenizer } from './tokenizer';

export type Prompt = string | number[];

export class GPT2 {
  constructor(readonly model: GPT2Model, readonly tokenizer: Tokenizer | null = null) {}

  get config(): GPT2Config {
    return this.model.config;
  }

  /** Logits of every position, row-major [ids.length, vocab_size]. */
  forward(ids: number[]): Promise<Float32Array> {
    return this.model.forward(ids);
  }

  /** Token ids of a prompt: arrays pass through, text goes through the tokenizer. */
  encode(prompt: Prompt, allowSpecial = false): number[] {
    if (Array.isArray(prompt)) return prompt;
    if (typeof prompt !== 'string') throw new GPT2Error('BAD_INPUT', 'a prompt is a string or an array of token ids');
    if (!this.tokenizer) throw new GPT2Error('BAD_INPUT', 'this model has no tokenizer files: pass token ids instead of text');
    return this.tokenizer.encode(prompt, { allowSpecial });
  }

  private sequence(prompt: Prompt, options: GenerateOptions): Sequence {
    if (options === null || typeof options !== 'object') throw new GPT2Error('BAD_OPTION', 'options must be an object');
    // A text that cannot fit even before tokenizing (no token is longer than maxTokenBytes) fails at once.
    if (typeof prompt === 'string' && this.tokenizer && options.truncate !== 'left') {
      const atLeast = Math.ceil(new TextEncoder().encode(prompt).length / this.tokenizer.maxTokenBytes);
      if (atLeast > this.config.nPositions) {
        throw new GPT2Error('CONTEXT_OVERFLOW', `the prompt has at least ${atLeast} tokens, past the context of ${this.config.nPositions}; shorten it, or pass truncate: 'left'`);
      }
    }
    return new Sequence(this.encode(prompt, options.allowSpecial), options, this.model, this.tokenizer);
  }

  /** Generates a completion. Aborting via `signal` resolves with finishReason 'abort' and the text so far. */
  async generate(prompt: Prompt, options: GenerateOptions = {}): Promise<GenerateResult> {
    const seq = this.sequence(prompt, options);
    await runToEnd(this.model, [seq]);
    return seq.result();
  }

  /** Streams a completion chunk by chunk; breaking out of the loop or aborting frees everything. */
  stream(prompt: Prompt, options: GenerateOptions = {}): AsyncIterable<StreamChunk> {
    const seq = this.sequence(prompt, options);
    return streamSequence(this.model, seq);
  }

  /**
   * Generates for several prompts with one forward per decode step. `options` is shared or given
   * per prompt; each row keeps its own sampling state and stop rules.
   */
  async generateBatch(prompts: Prompt[], options: GenerateOptions | GenerateOptions[] = {}): Promise<GenerateResult[]> {
    if (!Array.isArray(prompts) || prompts.length === 0) throw new GPT2Error('BAD_INPUT', 'generateBatch needs a non-empty array of prompts');
    if (Array.isArray(options) && options.length !== prompts.length) {
      throw new GPT2Error('BAD_OPTION', `got ${options.length} option sets for ${prompts.length} prompts`);
    }
    const seqs = prompts.map((p, i) => this.sequence(p, Array.isArray(options) ? options[i] : options));
    await runToEnd(this.model, seqs);
    return seqs.map((s) => s.result());
  }

  /**
   * Mean next-token cross-entropy (nats/token) of a text or ids, over non-overlapping windows of the
   * model's context (each window predicts its tokens 2..n from the ones before, as in training).
   */
  async score(textOrIds: Prompt, options: { windowSize?: number; signal?: AbortSignal } = {}): Promise<{ loss: number; perplexity: number; tokens: number }> {
    const ids = this.encode(textOrIds);
    const win = options.windowSize ?? this.config.nPositions;
    if (!Number.isInteger(win) || win < 2 || win > this.config.nPositions) {
      throw new GPT2Error('BAD_OPTION', `windowSize must be an integer in [2, ${this.config.nPositions}]`);
    }
    if (ids.length < 2) throw new GPT2Error('BAD_INPUT', 'scoring needs at least 2 tokens');
    let sum = 0;
    let count = 0;
    for (let start = 0; start + 1 < ids.length; start += win) {
      if (options.signal?.aborted) throw new GPT2Error('ABORTED', 'scoring was aborted');
      const nll = await this.model.tokenNll(ids.slice(start, start + win));
      for (const v of nll) sum += v;
      count += nll.length;
    }
    const loss = sum / count;
    if (!Number.isFinite(loss)) {
      throw new GPT2Error('NON_FINITE', `the loss is ${loss}: the model produced non-finite logits (weights holding NaN/Infinity, or an overflow). Check them with \`gpt2-tfjs check\``);
    }
    return { loss, perplexity: Math.exp(loss), tokens: count };
  }

  dispose(): void {
    this.model.dispose();
  }
}

export type { FinishReason, GenerateOptions, GenerateResult, StreamChunk };
