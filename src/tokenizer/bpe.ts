/**
 * GPT-2 byte-level BPE: a thin adapter that feeds a folder's own vocab/merges to gpt-tokenizer's
 * BPE core (see index.ts for why that library), plus the parts it does not do for us: special-token
 * handling, GPT-2's exact pre-tokenizer regex, decode and streaming decode.
 *
 * gpt-tokenizer (like tiktoken) merges by *rank of the merged token*, while GPT-2's encoder.py and
 * Hugging Face merge by *priority of the merge rule*. We give each merged token the rank
 * 256 + (index of the first merge rule that makes it), so both orders coincide, and map ranks back
 * to the file's ids afterwards (for OpenAI's files the map is the identity and is skipped). Tokens
 * no merge rule produces are left out of the rank table, so encode can never emit them, as in
 * encoder.py. With GPT-2's files this agrees with a merge-rule BPE on every vocab token and on
 * every test text (test/tokenizer.test.ts).
 */
import { BytePairEncodingCore } from 'gpt-tokenizer/cjs/BytePairEncodingCore';
import { tryConvertToString } from 'gpt-tokenizer/cjs/utfUtil';
import { GPT2Error } from '../errors';
import { BYTE_TO_CHAR, vocabStringToBytes } from './bytes';
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

function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

class GPT2Tokenizer implements Tokenizer {
  readonly vocabSize: number;
  readonly eosTokenId: number;
  private readonly core: BytePairEncodingCore;
  /** rank -> id, or null when they are equal (OpenAI's GPT-2 files) */
  private readonly rankToId: Int32Array | null;
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

    // Rank table for the core: string when the bytes are valid UTF-8, else the byte array,
    // decided by the library's own test so its two lookup tables agree with ours.
    const rankDecoder: (string | number[])[] = [];
    const rankToId: number[] = [];
    const asRankValue = (bytes: Uint8Array): string | number[] => tryConvertToString(bytes) ?? Array.from(bytes);
    for (let b = 0; b < 256; b++) {
      const id = vocab.get(BYTE_TO_CHAR[b]);
      if (id === undefined) {
        throw bad(files.vocab, `no token for byte 0x${b.toString(16).padStart(2, '0')} (${JSON.stringify(BYTE_TO_CHAR[b])}), so some text could not be encoded`);
      }
      rankDecoder[b] = asRankValue(Uint8Array.of(b));
      rankToId[b] = id;
    }
    const ranked = new Set<string>(BYTE_TO_CHAR);
    merges.forEach(([left, right], i) => {
      const where = `merge #${i + 1} ("${left} ${right}")`;
      for (const part of [left, right]) {
        if (!vocab.has(part)) throw bad(files.merges, `${where} uses ${JSON.stringify(part)}, which is not in the vocab (${files.vocab})`);
      }
      const merged = left + right;
      const id = vocab.get(merged);
      if (id === undefined) throw bad(files.merges, `${where} makes ${JSON.stringify(merged)}, which is not in the vocab (${files.vocab})`);
      if (ranked.has(merged)) return; // a later rule for the same token never wins over the first
      ranked.add(merged);
      const bytes = idBytes[id] as Uint8Array; // set above for every vocab entry
      rankDecoder[256 + i] = asRankValue(bytes);
      rankToId[256 + i] = id;
    });

    this.core = new BytePairEncodingCore({
      bytePairRankDecoder: rankDecoder,
      specialTokensEncoder: new Map(), // specials are split out here, only when allowed
      tokenSplitRegex: GPT2_SPLIT,
    });
    const identity = rankToId.every((id, rank) => id === rank);
    this.rankToId = identity ? null : Int32Array.from(rankToId, (id) => id ?? -1);
    this.idBytes = idBytes;
    this.vocabSize = maxId + 1;
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
    if (text === '') return [];
    const ranks = this.core.encodeNative(text);
    const map = this.rankToId;
    if (map !== null) for (let i = 0; i < ranks.length; i++) ranks[i] = map[ranks[i]];
    return ranks;
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
