/** The tokenizer's public shapes, apart from index.ts so helpers can use them without a cycle. */

export interface EncodeOptions {
  /**
   * Match special tokens such as `<|endoftext|>` in the text and emit their ids. Default false:
   * the literal text is encoded as ordinary text, so untrusted input cannot inject an end-of-text.
   */
  allowSpecial?: boolean;
}

export interface Tokenizer {
  /** One more than the largest id, special tokens included (50257 for GPT-2). */
  readonly vocabSize: number;
  /** Id of `<|endoftext|>` (50256 for GPT-2). */
  readonly eosTokenId: number;
  /**
   * Bytes of the longest token: a text of B UTF-8 bytes has at least ceil(B / maxTokenBytes) tokens,
   * which bounds a prompt's length before tokenizing it.
   */
  readonly maxTokenBytes: number;
  encode(text: string, opts?: EncodeOptions): number[];
  /** Invalid UTF-8 (e.g. a multi-byte character cut in half) becomes U+FFFD. */
  decode(ids: readonly number[]): string;
  /** A fresh decoder for printing ids one at a time as they are generated. */
  createDecoder(): StreamDecoder;
}

export interface StreamDecoder {
  /** Text completed by this token; holds back a trailing, still incomplete UTF-8 sequence. */
  push(id: number): string;
  /** Whatever was held back (U+FFFD for bytes that never completed); the decoder starts over. */
  flush(): string;
}
