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

/** With stringAt's `split`: where (in output bytes) its one space was, -1 if none. */
let spaceAt = -1;

/**
 * The JSON string whose opening quote is at b[p - 1], as byte-level bytes into out[o..]: returns the
 * position after the closing quote (its length in `got`), or -1. With `split`, one space (outside the
 * byte-level alphabet: a merge rule's separator) is allowed and not written; spaceAt says where.
 */
function stringAt(b: Uint8Array, p: number, out: Uint8Array, o: number, split = false): number {
  let n = 0;
  spaceAt = -1;
  for (;;) {
    if (o + n >= out.length && b[p] !== QUOTE) return -1;
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
      if (byte < 0) {
        if (!(split && code === 0x20 && spaceAt < 0)) return -1;
        spaceAt = n;
      } else out[o + n++] = byte;
    } else if (split && c === 0x20 && spaceAt < 0) {
      spaceAt = n;
      p++;
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

/** `a`'s values in a new array of `cap`. */
function grown(a: Int32Array, cap: number) {
  const b = new Int32Array(cap);
  b.set(a);
  return b;
}

/** A vocab object read by readVocab: every key's byte-level bytes, indexed, and id -> bytes. */
interface Vocab {
  keys: Uint8Array;
  k: number;
  ids: Int32Array;
  index: BytesIndex;
  start: Int32Array;
  end: Int32Array;
}

/** The JSON object { "token": id, ... } filling b[from, to) exactly, or null. */
function readVocab(b: Uint8Array, from: number, to: number): Vocab | null {
  let p = skipWs(b, from);
  if (b[p] !== 0x7b) return null;
  p = skipWs(b, p + 1);
  const keys = new Uint8Array(to - from); // each key byte takes at least one file byte
  let cap = 1 << 16;
  let kStart = new Int32Array(cap);
  let kLen = new Int32Array(cap);
  let ids = new Int32Array(cap);
  let n = 0;
  let k = 0;
  let maxId = -1;
  for (;;) {
    if (b[p] !== QUOTE) return null; // also an empty object: the general path says so
    p = stringAt(b, p + 1, keys, k);
    if (p < 0 || p > to) return null;
    if (n === cap) {
      cap *= 2;
      [kStart, kLen, ids] = [grown(kStart, cap), grown(kLen, cap), grown(ids, cap)];
    }
    kStart[n] = k;
    kLen[n] = got;
    k += got;
    p = skipWs(b, p);
    if (b[p] !== 0x3a) return null;
    p = intAt(b, skipWs(b, p + 1));
    if (p < 0) return null;
    ids[n++] = got;
    maxId = Math.max(maxId, got);
    p = skipWs(b, p);
    if (b[p] === 0x2c) {
      p = skipWs(b, p + 1);
      continue;
    }
    if (b[p] !== 0x7d) return null;
    p = skipWs(b, p + 1);
    break;
  }
  if (p !== to || maxId >= 4 * n + 1024) return null; // trailing bytes; ids far sparser than GPT-2's
  const index = new BytesIndex(keys, kStart, kLen, n);
  const start = new Int32Array(maxId + 2).fill(-1);
  const end = new Int32Array(maxId + 1);
  for (let i = 0; i < n; i++) {
    if (!index.add(i) || start[ids[i]] !== -1) return null; // a key or an id twice
    start[ids[i]] = kStart[i];
    end[ids[i]] = kStart[i] + kLen[i];
  }
  return { keys, k, ids, index, start, end };
}

/** Collects merge rules as ids; `pair` holds left then right, decoded next to each other (the merged token is both at once). */
class Rules {
  left: Int32Array;
  right: Int32Array;
  merged: Int32Array;
  m = 0;
  /** room for any GPT-2 token twice over; a longer one makes stringAt give up (the general path takes it) */
  pair = new Uint8Array(4096);
  constructor(private readonly v: Vocab, capacity: number) {
    this.left = new Int32Array(capacity);
    this.right = new Int32Array(capacity);
    this.merged = new Int32Array(capacity);
  }
  room(n: number): void {
    if (this.pair.length < n) this.pair = new Uint8Array(2 * n);
  }
  /** The rule whose left side is pair[0, a) and right side pair[a, c): false if a token is unknown. */
  add(a: number, c: number): boolean {
    const { index, ids } = this.v;
    if (a === 0 || c === a) return false;
    const l = index.find(this.pair, 0, a);
    const r = index.find(this.pair, a, c - a);
    const mg = index.find(this.pair, 0, c);
    if (l < 0 || r < 0 || mg < 0) return false;
    if (this.m === this.left.length) {
      const cap = 2 * this.m + 16;
      [this.left, this.right, this.merged] = [grown(this.left, cap), grown(this.right, cap), grown(this.merged, cap)];
    }
    this.left[this.m] = ids[l];
    this.right[this.m] = ids[r];
    this.merged[this.m] = ids[mg];
    this.m++;
    return true;
  }
}

/** The compiled form, once vocab and rules are read; specials: text -> id, each in the vocab under that id. */
function finish(v: Vocab, rules: Rules, specials: Map<string, number>): CompiledBPE | null {
  const { index, ids } = v;
  // Specials here are printable ASCII, which the byte-level alphabet keeps as itself: their key bytes
  // are also the text they decode to.
  for (const [text, id] of specials) {
    if (!/^[\x21-\x7e]+$/.test(text)) return null;
    const at = index.find(Uint8Array.from(text, (c) => c.charCodeAt(0)), 0, text.length);
    if (at < 0 || ids[at] !== id) return null;
  }
  const eos = specials.get(EOS_TOKEN);
  if (eos === undefined || rules.m === 0) return null;
  const byteIds = new Int32Array(256);
  const one = new Uint8Array(1);
  for (let b = 0; b < 256; b++) {
    one[0] = b;
    const e = index.find(one, 0, 1);
    if (e < 0) return null;
    byteIds[b] = ids[e];
  }
  return {
    table: v.keys.slice(0, v.k),
    start: v.start,
    end: v.end,
    rules: { left: rules.left.slice(0, rules.m), right: rules.right.slice(0, rules.m), merged: rules.merged.slice(0, rules.m) },
    byteIds,
    specialTokens: specials,
    eos,
  };
}

/** <|endoftext|>, where a layout has no list of special tokens: GPT-2's only one, in the vocab itself. */
function eosOf(v: Vocab): Map<string, number> {
  const at = v.index.find(Uint8Array.from(EOS_TOKEN, (c) => c.charCodeAt(0)), 0, EOS_TOKEN.length);
  return new Map(at < 0 ? [] : [[EOS_TOKEN, v.ids[at]]]);
}

/** See the module comment. `vocab`: vocab.json / encoder.json; `merges`: merges.txt / vocab.bpe. */
export function compileVocabAndMerges(vocab: Uint8Array, merges: Uint8Array): CompiledBPE | null {
  const v = readVocab(vocab, 0, vocab.length);
  if (!v) return null;
  // merges: optional "#version" first line, then "left right" per line (as parse.ts's scanMerges)
  let lines = 1;
  for (let i = 0; i < merges.length; i++) if (merges[i] === 0x0a) lines++;
  const rules = new Rules(v, lines);
  const version = Uint8Array.from('#version', (c) => c.charCodeAt(0));
  for (let q = 0, line = 0; q < merges.length; line++) {
    let nl = merges.indexOf(0x0a, q);
    if (nl < 0) nl = merges.length;
    const e = nl > q && merges[nl - 1] === 0x0d ? nl - 1 : nl;
    const isVersion = line === 0 && e - q >= version.length && version.every((c, i) => merges[q + i] === c);
    if (e > q && !isVersion) {
      rules.room(e - q);
      const pair = rules.pair;
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
      if (!rules.add(a, c)) return null;
    }
    q = nl + 1;
  }
  return finish(v, rules, eosOf(v));
}

/**
 * The end of the JSON value starting at b[p] (after whitespace), or -1; on the way, the spans of the
 * values at paths model.vocab and model.merges (depth 2) go into `spans`.
 */
function skipValue(b: Uint8Array, p: number, path: string, spans: Map<string, [number, number]>): number {
  p = skipWs(b, p);
  const c = b[p];
  if (c === QUOTE) {
    for (p++; p < b.length; p++) {
      if (b[p] === BACKSLASH) p++;
      else if (b[p] === QUOTE) return p + 1;
    }
    return -1;
  }
  if (c === 0x7b || c === 0x5b) {
    const close = c === 0x7b ? 0x7d : 0x5d;
    const from = p;
    p = skipWs(b, p + 1);
    if (b[p] === close) p++;
    else {
      for (;;) {
        let key = '';
        if (c === 0x7b) {
          if (b[p] !== QUOTE) return -1;
          const k0 = p + 1;
          p = skipValue(b, p, '', spans);
          if (p < 0) return -1;
          // keys on the way to model.vocab / model.merges are plain ASCII; others are never looked at
          if ((path === '' || path === 'model') && p - k0 - 1 < 16) key = String.fromCharCode(...b.subarray(k0, p - 1));
          p = skipWs(b, p);
          if (b[p] !== 0x3a) return -1;
          p++;
        }
        const sub = path === '' ? key : path === 'model' ? `model.${key}` : '#';
        p = skipValue(b, p, c === 0x7b ? sub : '#', spans);
        if (p < 0) return -1;
        p = skipWs(b, p);
        if (b[p] === 0x2c) {
          p = skipWs(b, p + 1);
          continue;
        }
        if (b[p] !== close) return -1;
        p++;
        break;
      }
    }
    if (path === 'model.vocab' || path === 'model.merges') spans.set(path, [from, p]);
    return p;
  }
  // number, true, false, null
  const from = p;
  while (p < b.length && b[p] !== 0x2c && b[p] !== 0x7d && b[p] !== 0x5d && b[p] > 0x20) p++;
  return p > from ? p : -1;
}

/**
 * Hugging Face tokenizer.json from its bytes: model.vocab and model.merges are read as the plain
 * files are (no strings, no Map); the rest of the file — small — goes through JSON.parse with those two
 * values cut out. Null for anything the general path should judge.
 */
export function compileTokenizerJson(bytes: Uint8Array): CompiledBPE | null {
  const spans = new Map<string, [number, number]>();
  const endAt = skipValue(bytes, 0, '', spans);
  if (endAt < 0 || skipWs(bytes, endAt) !== bytes.length) return null;
  const vs = spans.get('model.vocab');
  const ms = spans.get('model.merges');
  if (!vs || !ms || bytes[ms[0]] !== 0x5b) return null;
  // the rest, with the two big values replaced by empty ones
  const [first, second] = vs[0] < ms[0] ? [vs, ms] : [ms, vs];
  const dec = new TextDecoder();
  const rest =
    dec.decode(bytes.subarray(0, first[0])) + (first === vs ? '{}' : '[]') +
    dec.decode(bytes.subarray(first[1], second[0])) + (second === vs ? '{}' : '[]') +
    dec.decode(bytes.subarray(second[1]));
  let root: { model?: { type?: unknown }; pre_tokenizer?: { add_prefix_space?: unknown } | null; added_tokens?: unknown };
  try {
    root = JSON.parse(rest);
  } catch {
    return null;
  }
  if (typeof root !== 'object' || root === null || typeof root.model !== 'object' || root.model === null) return null;
  if (root.model.type !== undefined && root.model.type !== 'BPE') return null;
  if (root.pre_tokenizer && root.pre_tokenizer.add_prefix_space === true) return null;
  const added = root.added_tokens ?? [];
  if (!Array.isArray(added)) return null;
  const specials = new Map<string, number>();
  for (const t of added as { content?: unknown; id?: unknown }[]) {
    if (typeof t !== 'object' || t === null || typeof t.content !== 'string' || typeof t.id !== 'number' || !Number.isInteger(t.id) || t.id < 0) return null;
    specials.set(t.content, t.id);
  }
  const v = readVocab(bytes, vs[0], vs[1]);
  if (!v) return null;
  if (!specials.has(EOS_TOKEN)) for (const [t, id] of eosOf(v)) specials.set(t, id);
  // merges: ["a b", ...] or [["a", "b"], ...]
  const rules = new Rules(v, 1 << 16);
  let p = skipWs(bytes, ms[0] + 1);
  if (bytes[p] === 0x5d) return null;
  for (;;) {
    if (bytes[p] === QUOTE) {
      // "a b": the one space (outside the byte-level alphabet) separates the sides
      p = stringAt(bytes, p + 1, rules.pair, 0, true);
      if (p < 0 || spaceAt < 0) return null;
      if (!rules.add(spaceAt, got)) return null;
    } else if (bytes[p] === 0x5b) {
      // ["a", "b"]
      p = skipWs(bytes, p + 1);
      if (bytes[p] !== QUOTE) return null;
      p = stringAt(bytes, p + 1, rules.pair, 0);
      if (p < 0) return null;
      const a = got;
      p = skipWs(bytes, p);
      if (bytes[p] !== 0x2c) return null;
      p = skipWs(bytes, p + 1);
      if (bytes[p] !== QUOTE) return null;
      p = stringAt(bytes, p + 1, rules.pair, a);
      if (p < 0) return null;
      const c = a + got;
      p = skipWs(bytes, p);
      if (bytes[p] !== 0x5d) return null;
      p++;
      if (!rules.add(a, c)) return null;
    } else return null;
    p = skipWs(bytes, p);
    if (bytes[p] === 0x2c) {
      p = skipWs(bytes, p + 1);
      continue;
    }
    if (bytes[p] !== 0x5d || p + 1 !== ms[1]) return null;
    break;
  }
  return finish(v, rules, specials);
}
