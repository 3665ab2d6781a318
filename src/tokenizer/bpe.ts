/**
 * GPT-2 byte-level BPE from a folder's own vocab/merges: GPT-2's exact pre-tokenizer regex, the
 * merge-rule BPE of encoder.py (merge.ts: same result, O(n log n) per piece so no input can stall
 * the process), special-token handling, decode and streaming decode.
 *
 * Merges follow the *priority of the merge rule*, as GPT-2's encoder.py and Hugging Face do (tiktoken
 * and gpt-tokenizer rank by merged token, which agrees on OpenAI's files but not on every file).
 * Tokens no merge rule produces can never be emitted, as in encoder.py.
 */
import { GPT2Error } from '../errors';
import { BYTE_TO_CHAR, vocabStringToBytes } from './bytes';
import { MergeBPE } from './merge';
import { BPEData, BPESource, EOS_TOKEN, bad, sourceOfData } from './parse';
import { Utf8StreamDecoder, decodeUtf8 } from './stream';
import type { EncodeOptions, StreamDecoder, Tokenizer } from './types';

/**
 * OpenAI's GPT-2 split pattern. `\s` is spelled out as Unicode White_Space, which is what `\s`
 * means in Python's `regex` (encoder.py) and Rust's regex (tiktoken); JavaScript's `\s` differs
 * (it lacks U+0085 and adds U+FEFF), which changes ids for text such as " \u0085!".
 */
const WS = '\\t\\n\\v\\f\\r \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000';
const GPT2_SPLIT = new RegExp(
  `'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^${WS}\\p{L}\\p{N}]+|[${WS}]+(?![^${WS}])|[${WS}]+`,
  'gu',
);

const utf8Encoder = new TextEncoder();
/** Pieces up to this many characters are remembered (bounded, so hostile input cannot grow it). */
const CACHED_PIECE_CHARS = 64;
const CACHE_ENTRIES = 100_000;

function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/**
 * A tokenizer's data as encode and decode use it, in typed arrays only: every token's bytes back to
 * back (id's are table[start[id], end[id]); start -1: no such id), the merge rules as ids in priority
 * order, and the id of each single byte. Built from a BPESource (compile) or, for the plain file
 * layouts, straight from the files' bytes (compact.ts).
 */
export interface CompiledBPE {
  readonly table: Uint8Array;
  readonly start: Int32Array;
  readonly end: Int32Array;
  readonly rules: { readonly left: Int32Array; readonly right: Int32Array; readonly merged: Int32Array };
  readonly byteIds: Int32Array;
  readonly specialTokens: ReadonlyMap<string, number>;
  readonly eos: number;
}

/** Validates a BPESource (vocab and merges fit together) and compiles it. */
function compile(src: BPESource): CompiledBPE {
  const { specialTokens, files } = src;

  // id -> bytes for decode, packed into one byte table (a Uint8Array per id cost ~9 MB of JS heap for
  // GPT-2's 50 257 tokens). Special tokens decode to their literal text.
  let maxId = -1;
  let total = 0;
  src.forEachToken((token, id) => {
    if (specialTokens.has(token)) return;
    total += token.length; // every byte-level character is one byte
    maxId = Math.max(maxId, id);
  });
  const specialBytes = new Map<string, Uint8Array>();
  for (const [text, id] of specialTokens) {
    const inVocab = src.idOf(text);
    if (inVocab !== undefined && inVocab !== id) {
      throw bad(files.vocab, `special token ${JSON.stringify(text)} has id ${id} but the vocab says ${inVocab}`);
    }
    const bytes = utf8Encoder.encode(text);
    specialBytes.set(text, bytes);
    total += bytes.length;
    maxId = Math.max(maxId, id);
  }
  const table = new Uint8Array(total);
  const start = new Int32Array(maxId + 2).fill(-1);
  const end = new Int32Array(maxId + 1);
  let at = 0;
  src.forEachToken((token, id) => {
    if (specialTokens.has(token)) return;
    if (!vocabStringToBytes(token, table, at)) {
      throw bad(files.vocab, `token ${JSON.stringify(token)} (id ${id}) is not in GPT-2's byte-level alphabet`);
    }
    start[id] = at;
    at += token.length;
    end[id] = at;
  });
  for (const [text, id] of specialTokens) {
    if (src.idOf(text) === undefined && start[id] !== -1) {
      throw bad(files.vocab, `special token ${JSON.stringify(text)} reuses id ${id}, which belongs to another token`);
    }
    const bytes = specialBytes.get(text) as Uint8Array;
    table.set(bytes, at);
    start[id] = at;
    at += bytes.length;
    end[id] = at;
  }
  const eos = specialTokens.get(EOS_TOKEN);
  if (eos === undefined) throw bad(files.vocab, `no ${EOS_TOKEN} token, which every GPT-2 vocab has`);

  // Merge rules as ids, in priority order (a pair listed twice takes its later index, as in encoder.py).
  const byteIds = new Int32Array(256);
  for (let b = 0; b < 256; b++) {
    const id = src.idOf(BYTE_TO_CHAR[b]);
    if (id === undefined) {
      throw bad(files.vocab, `no token for byte 0x${b.toString(16).padStart(2, '0')} (${JSON.stringify(BYTE_TO_CHAR[b])}), so some text could not be encoded`);
    }
    byteIds[b] = id;
  }
  const n = src.mergeCount;
  const rules = { left: new Int32Array(n), right: new Int32Array(n), merged: new Int32Array(n) };
  src.forEachMerge((left, right, i) => {
    const l = src.idOf(left);
    const r = src.idOf(right);
    if (l === undefined || r === undefined) {
      throw bad(files.merges, `merge #${i + 1} ("${left} ${right}") uses ${JSON.stringify(l === undefined ? left : right)}, which is not in the vocab (${files.vocab})`);
    }
    const m = src.idOf(left + right);
    if (m === undefined) throw bad(files.merges, `merge #${i + 1} ("${left} ${right}") makes ${JSON.stringify(left + right)}, which is not in the vocab (${files.vocab})`);
    rules.left[i] = l;
    rules.right[i] = r;
    rules.merged[i] = m;
  });
  return { table, start, end, rules, byteIds, specialTokens, eos };
}

class GPT2Tokenizer implements Tokenizer {
  readonly vocabSize: number;
  readonly eosTokenId: number;
  readonly maxTokenBytes: number;
  private readonly bpe: MergeBPE;
  /** piece -> ids, for pieces seen before (most words of a text repeat) */
  private readonly cache = new Map<string, number[]>();
  /** see CompiledBPE */
  private readonly table: Uint8Array;
  private readonly start: Int32Array;
  private readonly end: Int32Array;
  private readonly specialIds: ReadonlyMap<string, number>;
  private readonly specialSplit: RegExp | null;

  constructor(c: CompiledBPE) {
    this.bpe = new MergeBPE(c.rules, c.byteIds);
    this.table = c.table;
    this.start = c.start;
    this.end = c.end;
    this.vocabSize = c.end.length;
    let longest = 1;
    for (let id = 0; id < c.end.length; id++) if (c.start[id] >= 0) longest = Math.max(longest, c.end[id] - c.start[id]);
    this.maxTokenBytes = longest;
    this.eosTokenId = c.eos;
    this.specialIds = c.specialTokens;
    // Longest first, so a special token that is a prefix of another never shadows it.
    const literals = [...c.specialTokens.keys()].sort((a, b) => b.length - a.length);
    this.specialSplit = literals.length > 0 ? new RegExp(literals.map(escapeRegExp).join('|'), 'g') : null;
  }

  encode(text: string, opts: EncodeOptions = {}): number[] {
    if (typeof text !== 'string') throw new GPT2Error('BAD_INPUT', `encode expects a string, got ${typeof text}`);
    if (!opts.allowSpecial || this.specialSplit === null) return this.encodeOrdinary(text);
    const out: number[] = [];
    let start = 0;
    for (const m of text.matchAll(this.specialSplit)) {
      const at = m.index ?? 0;
      for (const id of this.encodeOrdinary(text.slice(start, at))) out.push(id);
      out.push(this.specialIds.get(m[0]) as number); // the regex only matches keys of the map
      start = at + m[0].length;
    }
    for (const id of this.encodeOrdinary(text.slice(start))) out.push(id);
    return out;
  }

  private encodeOrdinary(text: string): number[] {
    const out: number[] = [];
    if (text === '') return out;
    const cache = this.cache;
    const split = new RegExp(GPT2_SPLIT); // own lastIndex, so encode stays reentrant
    for (let m = split.exec(text); m !== null; m = split.exec(text)) {
      const piece = m[0];
      let ids = cache.get(piece);
      if (ids === undefined) {
        ids = this.bpe.encode(utf8Encoder.encode(piece));
        if (piece.length <= CACHED_PIECE_CHARS) {
          if (cache.size >= CACHE_ENTRIES) cache.clear();
          cache.set(piece, ids);
        }
      }
      for (let i = 0; i < ids.length; i++) out.push(ids[i]);
    }
    return out;
  }

  private bytesOf = (id: number): Uint8Array => {
    const s = Number.isInteger(id) && id >= 0 && id < this.vocabSize ? this.start[id] : -1;
    if (s < 0) {
      throw new GPT2Error('BAD_INPUT', `token id ${id} is not in the vocabulary (ids 0..${this.vocabSize - 1})`);
    }
    return this.table.subarray(s, this.end[id]);
  };

  decode(ids: readonly number[]): string {
    const parts: Uint8Array[] = new Array(ids.length);
    let length = 0;
    for (let i = 0; i < ids.length; i++) {
      parts[i] = this.bytesOf(ids[i]);
      length += parts[i].length;
    }
    const all = new Uint8Array(length);
    let at = 0;
    for (const p of parts) {
      all.set(p, at);
      at += p.length;
    }
    return decodeUtf8(all);
  }

  createDecoder(): StreamDecoder {
    return new Utf8StreamDecoder(this.bytesOf);
  }
}

/** Builds a tokenizer from parsed files, validating that vocab and merges fit together. */
export function createTokenizer(data: BPEData): Tokenizer {
  return new GPT2Tokenizer(compile(sourceOfData(data)));
}

/** Builds a tokenizer from files as parse.ts reads them (no Map or pair arrays in between). */
export function tokenizerFromSource(src: BPESource): Tokenizer {
  return new GPT2Tokenizer(compile(src));
}

/** The compiled form of a source (tests compare it with compact.ts's). */
export function compileSource(src: BPESource): CompiledBPE {
  return compile(src);
}

/** A tokenizer from data already compiled (compact.ts). */
export function tokenizerFromCompiled(c: CompiledBPE): Tokenizer {
  return new GPT2Tokenizer(c);
}
