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

/** char code -> byte, -1 for characters outside the map (every mapped char is below U+0144). */
export const CODE_TO_BYTE: Int16Array = (() => {
  const t = new Int16Array(0x200).fill(-1);
  BYTE_TO_CHAR.forEach((c, b) => (t[c.charCodeAt(0)] = b));
  return t;
})();

/**
 * Writes the bytes of a byte-level vocab string into out[at..at + token.length) (one byte per
 * character); false if it contains a character outside the map.
 */
export function vocabStringToBytes(token: string, out: Uint8Array, at: number): boolean {
  for (let i = 0; i < token.length; i++) {
    const c = token.charCodeAt(i);
    const b = c < CODE_TO_BYTE.length ? CODE_TO_BYTE[c] : -1;
    if (b < 0) return false;
    out[at + i] = b;
  }
  return true;
}
