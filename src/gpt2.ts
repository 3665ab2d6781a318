/**
 * GPT2: the public handle on a loaded model — config, tokenizer, forward, generation, dispose.
 * It composes the layers below (model/, tokenizer/, generate/) and adds no math of its own.
 */
import { GPT2Config } from './model/config';
import { GPT2Model } from './model/gpt2';

export class GPT2 {
  constructor(readonly model: GPT2Model) {}

  get config(): GPT2Config {
    return this.model.config;
  }

  /** Logits of every position, row-major [ids.length, vocab_size]. */
  forward(ids: number[]): Promise<Float32Array> {
    return this.model.forward(ids);
  }

  dispose(): void {
    this.model.dispose();
  }
}
