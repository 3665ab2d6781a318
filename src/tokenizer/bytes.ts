/**
 * GPT-2's vocab files store each token's *bytes* as a printable string: every byte maps to one
 * unicode character (`bytes_to_unicode` in OpenAI's encoder.py), so that whitespace and control
 * bytes survive JSON and the space-separated merges file. We only need the reverse direction:
 * vocab string -> raw bytes.
 */

/** byte value -> the character OpenAI's `bytes_to_unicode()` assigns it. */
function byteToChar(): string[] {
  const printable: number[] = [];
  for (let b = 0x21; b <= 0x7e; b++) printable.push(b); // '!'..'~'
  for (let b = 0xa1; b <= 0xac; b++) printable.push(b); // '¡'..'¬'
  for (let b = 0xae; b <= 0xff; b++) printable.push(b); // '®'..'ÿ'
  const table = new Array<string>(256);
  for (const b of printable) table[b] = String.fromCharCode(b);
  // The remaining bytes (controls, space, NBSP, soft hyphen) are shifted to U+0100.. in byte order.
  let n = 0;
  for (let b = 0; b < 256; b++) {
    if (table[b] === undefined) table[b] = String.fromCharCode(256 + n++);
  }
  return table;
}

export const BYTE_TO_CHAR: readonly string[] = byteToChar();

const CHAR_TO_BYTE: ReadonlyMap<string, number> = new Map(BYTE_TO_CHAR.map((c, b) => [c, b]));

/** Bytes of a byte-level vocab string, or undefined if it contains a character outside the map. */
export function vocabStringToBytes(token: string): Uint8Array | undefined {
  const out = new Uint8Array(token.length); // every mapped char is one UTF-16 unit
  for (let i = 0; i < token.length; i++) {
    const b = CHAR_TO_BYTE.get(token[i]);
    if (b === undefined) return undefined;
    out[i] = b;
  }
  return out;
}
