/**
 * UTF-8 helpers for decode and streaming decode. GPT-2 tokens are byte strings, so one character
 * can be split across tokens (most emoji and CJK are). A streaming printer must therefore hold back
 * an incomplete trailing sequence instead of printing U+FFFD for each half.
 *
 * Streaming output must equal `decode` of all ids for any split. We get that by cutting only where
 * a WHATWG UTF-8 decoder has no pending bytes: the decoder's state there is empty, so decoding the
 * two sides separately gives the same text as decoding them together (including U+FFFD for invalid
 * bytes). Hand-written because neither tokenizer library offers a chunk-exact streaming decode
 * (gpt-tokenizer's shares one `{stream: true}` TextDecoder across calls, so a half character left
 * by one decode leaks into the next).
 */
import type { StreamDecoder } from './types';

// ignoreBOM keeps a leading U+FEFF in the output: the default would drop it, so a text starting
// with a BOM would not survive decode(encode(text)).
const utf8 = new TextDecoder('utf-8', { ignoreBOM: true });

export function decodeUtf8(bytes: Uint8Array): string {
  return bytes.length === 0 ? '' : utf8.decode(bytes);
}

/**
 * Length of the longest prefix of `buf` after which a UTF-8 decoder has no pending bytes: all of
 * `buf` unless it ends inside a sequence that could still complete.
 */
export function completePrefixLength(buf: Uint8Array): number {
  const n = buf.length;
  // A pending sequence is at most 3 bytes (4-byte lead + 2 continuations), so look back 3 bytes
  // for the last non-continuation byte. A decoder always starts a fresh sequence at such a byte.
  for (let j = n - 1; j >= Math.max(0, n - 3); j--) {
    const lead = buf[j];
    if ((lead & 0xc0) === 0x80) continue; // continuation byte: keep looking left
    const need = lead >= 0xc2 && lead <= 0xdf ? 2 : lead >= 0xe0 && lead <= 0xef ? 3 : lead >= 0xf0 && lead <= 0xf4 ? 4 : 1;
    if (n - j >= need) return n; // complete, or a byte that is an error on its own
    for (let k = j + 1; k < n; k++) {
      // The second byte's range is narrowed to exclude overlongs, surrogates and > U+10FFFF.
      let lo = 0x80;
      let hi = 0xbf;
      if (k === j + 1) {
        if (lead === 0xe0) lo = 0xa0;
        else if (lead === 0xed) hi = 0x9f;
        else if (lead === 0xf0) lo = 0x90;
        else if (lead === 0xf4) hi = 0x8f;
      }
      if (buf[k] < lo || buf[k] > hi) return n; // the decoder already gave up on this sequence
    }
    return j; // a valid but unfinished sequence starts at j: hold it back
  }
  return n;
}

const EMPTY = new Uint8Array(0);

export class Utf8StreamDecoder implements StreamDecoder {
  private pending: Uint8Array = EMPTY;

  constructor(private readonly bytesOf: (id: number) => Uint8Array) {}

  push(id: number): string {
    const tok = this.bytesOf(id); // throws for an unknown id before any state changes
    let buf = tok;
    if (this.pending.length > 0) {
      buf = new Uint8Array(this.pending.length + tok.length);
      buf.set(this.pending);
      buf.set(tok, this.pending.length);
    }
    const cut = completePrefixLength(buf);
    this.pending = cut === buf.length ? EMPTY : buf.slice(cut);
    return decodeUtf8(buf.subarray(0, cut));
  }

  flush(): string {
    const rest = this.pending;
    this.pending = EMPTY;
    return decodeUtf8(rest);
  }
}
