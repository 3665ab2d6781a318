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
import { BPEData, EOS_TOKEN, bad } from './parse';
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

class GPT2Tokenizer implements Tokenizer {
  readonly vocabSize: number;
  readonly eosTokenId: number;
  readonly maxTokenBytes: number;
  private readonly bpe: MergeBPE;
  /** piece -> ids, for pieces seen before (most words of a text repeat) */
  private readonly cache = new Map<string, number[]>();
  /** id -> bytes it decodes to (undefined for ids absent from the files) */
  private readonly idBytes: (Uint8Array | undefined)[];
  private readonly specialIds: ReadonlyMap<string, number>;
  private readonly specialSplit: RegExp | null;

  constructor(data: BPEData) {
    const { vocab, merges, specialTokens, files } = data;

    // id -> bytes for decode. Special tokens decode to their literal text.
    let maxId = -1;
    const idBytes: (Uint8Array | undefined)[] = [];
    for (const [token, id] of vocab) {
      const bytes = specialTokens.has(token) ? utf8Encoder.encode(token) : vocabStringToBytes(token);
      if (bytes === undefined) {
        throw bad(files.vocab, `token ${JSON.stringify(token)} (id ${id}) is not in GPT-2's byte-level alphabet`);
      }
      idBytes[id] = bytes;
      maxId = Math.max(maxId, id);
    }
    for (const [text, id] of specialTokens) {
      const inVocab = vocab.get(text);
      if (inVocab !== undefined && inVocab !== id) {
        throw bad(files.vocab, `special token ${JSON.stringify(text)} has id ${id} but the vocab says ${inVocab}`);
      }
      if (inVocab === undefined && idBytes[id] !== undefined) {
        throw bad(files.vocab, `special token ${JSON.stringify(text)} reuses id ${id}, which belongs to another token`);
      }
      idBytes[id] = utf8Encoder.encode(text);
      maxId = Math.max(maxId, id);
    }
    const eos = specialTokens.get(EOS_TOKEN);
    if (eos === undefined) throw bad(files.vocab, `no ${EOS_TOKEN} token, which every GPT-2 vocab has`);

    // Merge rules as ids, in priority order (a pair listed twice takes its later index, as in encoder.py).
    const byteIds = new Int32Array(256);
    for (let b = 0; b < 256; b++) {
      const id = vocab.get(BYTE_TO_CHAR[b]);
      if (id === undefined) {
        throw bad(files.vocab, `no token for byte 0x${b.toString(16).padStart(2, '0')} (${JSON.stringify(BYTE_TO_CHAR[b])}), so some text could not be encoded`);
      }
      byteIds[b] = id;
    }
    const rules = merges.map(([left, right], i): [number, number, number] => {
      const where = `merge #${i + 1} ("${left} ${right}")`;
      const l = vocab.get(left);
      const r = vocab.get(right);
      if (l === undefined || r === undefined) {
        throw bad(files.merges, `${where} uses ${JSON.stringify(l === undefined ? left : right)}, which is not in the vocab (${files.vocab})`);
      }
      const m = vocab.get(left + right);
      if (m === undefined) throw bad(files.merges, `${where} makes ${JSON.stringify(left + right)}, which is not in the vocab (${files.vocab})`);
      return [l, r, m];
    });
    this.bpe = new MergeBPE(rules, byteIds);
    this.idBytes = idBytes;
    this.vocabSize = maxId + 1;
    this.maxTokenBytes = idBytes.reduce((m, b) => Math.max(m, b?.length ?? 0), 1);
    this.eosTokenId = eos;
    this.specialIds = specialTokens;
    // Longest first, so a special token that is a prefix of another never shadows it.
    const literals = [...specialTokens.keys()].sort((a, b) => b.length - a.length);
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
    const bytes = Number.isInteger(id) ? this.idBytes[id] : undefined;
    if (bytes === undefined) {
      throw new GPT2Error('BAD_INPUT', `token id ${id} is not in the vocabulary (ids 0..${this.vocabSize - 1})`);
    }
    return bytes;
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
  return new GPT2Tokenizer(data);
}
