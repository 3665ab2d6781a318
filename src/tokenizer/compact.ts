/**
 * The plain file layouts (vocab.json + merges.txt, or OpenAI's encoder.json + vocab.bpe) compiled
 * straight from their bytes into CompiledBPE: no JSON.parse, no strings, no Map. The general path
 * (parse.ts: JSON.parse, then string lookups) left ~20 MB of objects behind on a 124M model's load:
 * the 2 MB two-byte text of vocab.json, the parsed object's 3 MB dictionary, key arrays — garbage that
 * stays resident in V8's large-object space until a full collection, which a generating process may
 * never run. This path allocates the result's typed arrays and a few scratch ones.
 *
 * It reads only the layout these files have in practice: one JSON object of "token": non-negative
 * integer, standard escapes, tokens in GPT-2's byte-level alphabet, each key and id once; merges as
 * parse.ts reads them. Anything else — malformed files, a token outside the alphabet, a merge naming
 * an unknown token, a missing byte or <|endoftext|> — returns null, and the caller takes the general
 * path, which accepts what it accepts and words the errors. Tests check that both paths compile GPT-2's
 * files to the same arrays.
 */
import { CODE_TO_BYTE } from './bytes';
import type { CompiledBPE } from './bpe';
import { EOS_TOKEN } from './parse';

const QUOTE = 0x22;
const BACKSLASH = 0x5c;

function skipWs(b: Uint8Array, p: number): number {
  while (p < b.length && (b[p] === 0x20 || b[p] === 0x0a || b[p] === 0x0d || b[p] === 0x09)) p++;
  return p;
}

function hexDigit(c: number): number {
  if (c >= 48 && c <= 57) return c - 48;
  if (c >= 97 && c <= 102) return c - 87;
  if (c >= 65 && c <= 70) return c - 55;
  return -1;
}

/** The byte-level byte of a code point, -1 outside the alphabet. */
const byteOf = (code: number): number => (code < CODE_TO_BYTE.length ? CODE_TO_BYTE[code] : -1);

/** Results of the readers below (one set of module-level cells: no tuple per call). */
let got = 0;

/**
 * One character of byte-level text in UTF-8 at b[p]: its byte in `got`, the next position returned,
 * -1 if it is not in the alphabet (every character of it is below U+0144: one or two UTF-8 bytes).
 */
function charAt(b: Uint8Array, p: number, end: number): number {
  const c = b[p];
  let code: number;
  if (c < 0x80) {
    code = c;
    p += 1;
  } else if (c >= 0xc2 && c < 0xe0 && p + 1 < end && (b[p + 1] & 0xc0) === 0x80) {
    code = ((c & 0x1f) << 6) | (b[p + 1] & 0x3f);
    p += 2;
  } else return -1;
  got = byteOf(code);
  return got < 0 ? -1 : p;
}

/**
 * The JSON string whose opening quote is at b[p - 1], as byte-level bytes into out[o..]: returns the
 * position after the closing quote (its length in `got`), or -1.
 */
function stringAt(b: Uint8Array, p: number, out: Uint8Array, o: number): number {
  let n = 0;
  for (;;) {
    if (p >= b.length) return -1;
    const c = b[p];
    if (c === QUOTE) {
      got = n;
      return p + 1;
    }
    if (c === BACKSLASH) {
      const e = b[p + 1];
      let code: number;
      if (e === 0x75) {
        // \uXXXX (OpenAI's encoder.json escapes every non-ASCII character)
        if (p + 6 > b.length) return -1;
        code = 0;
        for (let i = 2; i < 6; i++) {
          const h = hexDigit(b[p + i]);
          if (h < 0) return -1;
          code = code * 16 + h;
        }
        p += 6;
      } else if (e === QUOTE || e === BACKSLASH || e === 0x2f) {
        code = e;
        p += 2;
      } else return -1; // \b \f \n \r \t: control characters, outside the alphabet
      const byte = byteOf(code);
      if (byte < 0) return -1;
      out[o + n++] = byte;
    } else {
      if (c < 0x20) return -1;
      p = charAt(b, p, b.length);
      if (p < 0) return -1;
      out[o + n++] = got;
    }
  }
}

/** A JSON non-negative integer below 2^31 at b[p]: the value in `got`, the next position, or -1. */
function intAt(b: Uint8Array, p: number): number {
  let q = p;
  let v = 0;
  while (q < b.length && b[q] >= 48 && b[q] <= 57) {
    v = v * 10 + (b[q] - 48);
    if (v > 0x7fffffff) return -1;
    q++;
  }
  if (q === p || (b[p] === 48 && q - p > 1)) return -1; // no digits, or a leading zero (not JSON)
  got = v;
  return q;
}

/** Open-addressing index of byte strings (keys[kStart[i]..+kLen[i]]) -> entry i. */
class BytesIndex {
  private readonly slots: Int32Array;
  private readonly mask: number;
  constructor(private readonly keys: Uint8Array, private readonly kStart: Int32Array, private readonly kLen: Int32Array, n: number) {
    let cap = 16;
    while (cap < n * 2) cap *= 2;
    this.slots = new Int32Array(cap).fill(-1);
    this.mask = cap - 1;
  }
  private slot(buf: Uint8Array, o: number, len: number): number {
    let h = 0x811c9dc5;
    for (let i = 0; i < len; i++) h = Math.imul(h ^ buf[o + i], 0x01000193);
    for (let s = h & this.mask; ; s = (s + 1) & this.mask) {
      const e = this.slots[s];
      if (e < 0 || this.same(e, buf, o, len)) return s;
    }
  }
  private same(e: number, buf: Uint8Array, o: number, len: number): boolean {
    if (this.kLen[e] !== len) return false;
    const k = this.kStart[e];
    for (let i = 0; i < len; i++) if (this.keys[k + i] !== buf[o + i]) return false;
    return true;
  }
  /** Adds entry e; false if its bytes are already there. */
  add(e: number): boolean {
    const s = this.slot(this.keys, this.kStart[e], this.kLen[e]);
    if (this.slots[s] >= 0) return false;
    this.slots[s] = e;
    return true;
  }
  find(buf: Uint8Array, o: number, len: number): number {
    return this.slots[this.slot(buf, o, len)];
  }
}

/** See the module comment. `vocab`: vocab.json / encoder.json; `merges`: merges.txt / vocab.bpe. */
export function compileVocabAndMerges(vocab: Uint8Array, merges: Uint8Array): CompiledBPE | null {
  // vocab: { "token": id, ... }
  let p = skipWs(vocab, 0);
  if (vocab[p] !== 0x7b) return null;
  p = skipWs(vocab, p + 1);
  const keys = new Uint8Array(vocab.length); // each key byte takes at least one file byte
  let cap = 1 << 16;
  let kStart = new Int32Array(cap);
  let kLen = new Int32Array(cap);
  let ids = new Int32Array(cap);
  let n = 0;
  let k = 0;
  let maxId = -1;
  for (;;) {
    if (vocab[p] !== QUOTE) return null; // also an empty object: the general path says so
    p = stringAt(vocab, p + 1, keys, k);
    if (p < 0) return null;
    if (n === cap) {
      cap *= 2;
      const grow = (a: Int32Array) => {
        const b = new Int32Array(cap);
        b.set(a);
        return b;
      };
      [kStart, kLen, ids] = [grow(kStart), grow(kLen), grow(ids)];
    }
    kStart[n] = k;
    kLen[n] = got;
    k += got;
    p = skipWs(vocab, p);
    if (vocab[p] !== 0x3a) return null;
    p = intAt(vocab, skipWs(vocab, p + 1));
    if (p < 0) return null;
    ids[n++] = got;
    maxId = Math.max(maxId, got);
    p = skipWs(vocab, p);
    if (vocab[p] === 0x2c) {
      p = skipWs(vocab, p + 1);
      continue;
    }
    if (vocab[p] !== 0x7d) return null;
    p = skipWs(vocab, p + 1);
    break;
  }
  if (p !== vocab.length || maxId >= 4 * n + 1024) return null; // trailing bytes; ids far sparser than GPT-2's
  const index = new BytesIndex(keys, kStart, kLen, n);
  const start = new Int32Array(maxId + 2).fill(-1);
  const end = new Int32Array(maxId + 1);
  for (let i = 0; i < n; i++) {
    if (!index.add(i) || start[ids[i]] !== -1) return null; // a key or an id twice
    start[ids[i]] = kStart[i];
    end[ids[i]] = kStart[i] + kLen[i];
  }
  // Special: <|endoftext|> is printable ASCII, which the byte-level alphabet keeps as itself, so its
  // key bytes are also the text it decodes to.
  const eosBytes = Uint8Array.from(EOS_TOKEN, (c) => c.charCodeAt(0));
  const eosAt = index.find(eosBytes, 0, eosBytes.length);
  if (eosAt < 0) return null;
  const byteIds = new Int32Array(256);
  const one = new Uint8Array(1);
  for (let b = 0; b < 256; b++) {
    one[0] = b;
    const e = index.find(one, 0, 1);
    if (e < 0) return null;
    byteIds[b] = ids[e];
  }

  // merges: optional "#version" first line, then "left right" per line (as parse.ts's scanMerges)
  let lines = 1;
  for (let i = 0; i < merges.length; i++) if (merges[i] === 0x0a) lines++;
  const left = new Int32Array(lines);
  const right = new Int32Array(lines);
  const merged = new Int32Array(lines);
  let pair = new Uint8Array(256);
  let m = 0;
  const version = Uint8Array.from('#version', (c) => c.charCodeAt(0));
  for (let q = 0, line = 0; q < merges.length; line++) {
    let nl = merges.indexOf(0x0a, q);
    if (nl < 0) nl = merges.length;
    const e = nl > q && merges[nl - 1] === 0x0d ? nl - 1 : nl;
    const isVersion = line === 0 && e - q >= version.length && version.every((c, i) => merges[q + i] === c);
    if (e > q && !isVersion) {
      if (pair.length < e - q) pair = new Uint8Array(2 * (e - q));
      // left side, then right side, decoded next to each other: the merged token is both at once
      let a = 0;
      let r = q;
      while (r < e && merges[r] !== 0x20) {
        r = charAt(merges, r, e);
        if (r < 0) return null;
        pair[a++] = got;
      }
      let c = a;
      for (r++; r < e; ) {
        if (merges[r] === 0x20) return null;
        r = charAt(merges, r, e);
        if (r < 0) return null;
        pair[c++] = got;
      }
      if (a === 0 || c === a) return null;
      const l = index.find(pair, 0, a);
      const rt = index.find(pair, a, c - a);
      const mg = index.find(pair, 0, c);
      if (l < 0 || rt < 0 || mg < 0) return null;
      left[m] = ids[l];
      right[m] = ids[rt];
      merged[m] = ids[mg];
      m++;
    }
    q = nl + 1;
  }
  if (m === 0) return null;
  return {
    table: keys.slice(0, k),
    start,
    end,
    rules: { left: left.slice(0, m), right: right.slice(0, m), merged: merged.slice(0, m) },
    byteIds,
    specialTokens: new Map([[EOS_TOKEN, ids[eosAt]]]),
    eos: ids[eosAt],
  };
}
