/**
 * Parsing and validation of the three tokenizer file layouts a GPT-2 folder may carry:
 *   - Hugging Face `tokenizer.json` (model.vocab + model.merges, merges as "a b" or ["a", "b"]),
 *   - Hugging Face `vocab.json` + `merges.txt`,
 *   - OpenAI's `encoder.json` + `vocab.bpe` (same formats as the HF pair, other names).
 * Everything here is pure text -> data so a browser can feed it fetched strings. Problems become
 * GPT2Error('BAD_TOKENIZER') naming the file, because a silently wrong vocab gives fluent-looking
 * garbage that is very hard to trace back to its cause.
 */
import { GPT2Error } from '../errors';

/** The parsed, not yet validated content of one tokenizer, whatever layout it came from. */
export interface BPEData {
  /** byte-level token string -> id */
  readonly vocab: ReadonlyMap<string, number>;
  /** merge pairs, highest priority first */
  readonly merges: readonly (readonly [string, string])[];
  /** literal text -> id of tokens that are matched only when `allowSpecial` is set */
  readonly specialTokens: ReadonlyMap<string, number>;
  /** where vocab and merges came from, for error messages (the same path for tokenizer.json) */
  readonly files: { readonly vocab: string; readonly merges: string };
}

export const EOS_TOKEN = '<|endoftext|>';

const FIX = 're-download or re-export the tokenizer files';

/** A BAD_TOKENIZER error naming the file and the problem, with the usual fix. */
export function bad(file: string, problem: string): GPT2Error {
  return new GPT2Error('BAD_TOKENIZER', `${file}: ${problem}; ${FIX}`);
}

function parseJson(text: string, file: string): unknown {
  if (text.trim() === '') throw bad(file, 'file is empty');
  try {
    return JSON.parse(text) as unknown;
  } catch (e) {
    throw bad(file, `not valid JSON, probably truncated or corrupt (${(e as Error).message})`);
  }
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/**
 * Checks a token -> id object (ids non-negative integers, each used once) without building a Map:
 * GPT-2's 50 257 entries as Map + entry arrays were ~15 MB of objects alive at once at load, enough to
 * grow V8's young generation (and the process's RSS) for the rest of its life. Returns the token list.
 */
function checkVocabObject(obj: unknown, file: string, what: string): { obj: Record<string, unknown>; tokens: string[] } {
  if (!isRecord(obj)) throw bad(file, `${what} must be a JSON object of token -> id`);
  const tokens = Object.keys(obj);
  if (tokens.length === 0) throw bad(file, `${what} is empty`);
  const ids = new Float64Array(tokens.length);
  for (let i = 0; i < tokens.length; i++) {
    const id = obj[tokens[i]];
    if (typeof id !== 'number' || !Number.isInteger(id) || id < 0) {
      throw bad(file, `${what}: id of token ${JSON.stringify(tokens[i])} is ${JSON.stringify(id)}, not a non-negative integer`);
    }
    ids[i] = id;
  }
  // Two strings for one id would make decode ambiguous.
  ids.sort();
  for (let i = 1; i < ids.length; i++) {
    if (ids[i] === ids[i - 1]) {
      const both = tokens.filter((t) => obj[t] === ids[i]);
      throw bad(file, `${what}: id ${ids[i]} is used by both ${JSON.stringify(both[0])} and ${JSON.stringify(both[1])}`);
    }
  }
  return { obj, tokens };
}

/**
 * `merges.txt` / `vocab.bpe`: optional `#version` header, then one "left right" pair per line.
 * Validates the file in place (no array of lines, no array per line) and counts its rules; with
 * `each`, also hands over each rule's two tokens in order.
 */
function scanMerges(text: string, file: string, each?: (left: string, right: string, i: number) => void): number {
  if (text.trim() === '') throw bad(file, 'file is empty');
  let n = 0;
  for (let pos = 0, i = 0; pos < text.length; i++) {
    let nl = text.indexOf('\n', pos);
    if (nl < 0) nl = text.length;
    const end = nl > pos && text.charCodeAt(nl - 1) === 13 ? nl - 1 : nl; // a CRLF file
    if (end > pos && !(i === 0 && text.startsWith('#version', pos))) {
      // Byte-level tokens never contain a space (it is mapped to 'Ġ'), so exactly one separator.
      const sp = text.indexOf(' ', pos);
      if (sp <= pos || sp >= end - 1 || text.lastIndexOf(' ', end - 1) !== sp) {
        throw bad(file, `line ${i + 1} is ${JSON.stringify(text.slice(pos, end))}, expected two tokens separated by one space`);
      }
      each?.(text.slice(pos, sp), text.slice(sp + 1, end), n);
      n++;
    }
    pos = nl + 1;
  }
  if (n === 0) throw bad(file, 'contains no merges');
  return n;
}

/**
 * What a tokenizer is built from: BPEData, or — when read from files — a view over the parsed vocab
 * object and the merges text that materialises no Map and no pair arrays (see checkVocabObject).
 */
export interface BPESource {
  /** every (token, id) of the vocab */
  forEachToken(f: (token: string, id: number) => void): void;
  idOf(token: string): number | undefined;
  /** merge rules, highest priority first */
  readonly mergeCount: number;
  forEachMerge(f: (left: string, right: string, i: number) => void): void;
  readonly specialTokens: ReadonlyMap<string, number>;
  readonly files: { readonly vocab: string; readonly merges: string };
}

export function sourceOfData(d: BPEData): BPESource {
  return {
    forEachToken: (f) => d.vocab.forEach((id, token) => f(token, id)),
    idOf: (token) => d.vocab.get(token),
    mergeCount: d.merges.length,
    forEachMerge: (f) => d.merges.forEach(([l, r], i) => f(l, r, i)),
    specialTokens: d.specialTokens,
    files: d.files,
  };
}

const hasOwn = (o: object, k: string) => Object.prototype.hasOwnProperty.call(o, k);

/** A vocab object already checked by checkVocabObject, as BPESource's vocab half. */
function objectVocab(obj: Record<string, unknown>, tokens: string[]): Pick<BPESource, 'forEachToken' | 'idOf'> {
  return {
    forEachToken: (f) => tokens.forEach((t) => f(t, obj[t] as number)),
    idOf: (token) => {
      const id = obj[token];
      return typeof id === 'number' && hasOwn(obj, token) ? id : undefined;
    },
  };
}

/** GPT-2's only special token, where a layout has no list of them: it lives in the vocab itself. */
function eosOnly(idOf: (t: string) => number | undefined): Map<string, number> {
  const eos = idOf(EOS_TOKEN);
  return new Map<string, number>(eos === undefined ? [] : [[EOS_TOKEN, eos]]);
}

/** The vocab.json + merges.txt (or encoder.json + vocab.bpe) pair, as a BPESource. */
export function bpeSourceFromVocabAndMerges(vocabText: string, mergesText: string, files: { vocab: string; merges: string }): BPESource {
  const { obj, tokens } = checkVocabObject(parseJson(vocabText, files.vocab), files.vocab, 'vocab');
  const vocab = objectVocab(obj, tokens);
  return {
    ...vocab,
    mergeCount: scanMerges(mergesText, files.merges),
    forEachMerge: (f) => void scanMerges(mergesText, files.merges, f),
    specialTokens: eosOnly(vocab.idOf),
    files,
  };
}

/** Hugging Face `tokenizer.json`, as a BPESource (the parsed JSON is the store: no copies of vocab or merges). */
export function bpeSourceFromTokenizerJson(text: string, file: string): BPESource {
  const root = parseJson(text, file);
  if (!isRecord(root) || !isRecord(root.model)) throw bad(file, 'missing the "model" object');
  const model = root.model;
  if (model.type !== undefined && model.type !== 'BPE') {
    throw bad(file, `model.type is ${JSON.stringify(model.type)}; only GPT-2 byte-level "BPE" is supported`);
  }
  const pre = root.pre_tokenizer;
  if (isRecord(pre) && pre.add_prefix_space === true) {
    // GPT-2 checkpoints are trained without it; honouring it silently would shift every id.
    throw bad(file, 'pre_tokenizer.add_prefix_space is true, which GPT-2 does not use');
  }
  const { obj, tokens } = checkVocabObject(model.vocab, file, 'model.vocab');
  const vocab = objectVocab(obj, tokens);
  const list = model.merges;
  if (!Array.isArray(list)) throw bad(file, 'model.merges must be an array');
  const pairOf = (m: unknown, i: number): [string, string] => {
    const pair = typeof m === 'string' ? m.split(' ') : Array.isArray(m) ? m : undefined;
    if (!pair || pair.length !== 2 || typeof pair[0] !== 'string' || typeof pair[1] !== 'string' || pair[0] === '' || pair[1] === '') {
      throw bad(file, `model.merges[${i}] is ${JSON.stringify(m)}, expected "a b" or ["a", "b"]`);
    }
    return pair as [string, string];
  };
  list.forEach(pairOf); // checked up front, so every error surfaces at parse time
  if (list.length === 0) throw bad(file, 'model.merges is empty');

  const specialTokens = new Map<string, number>();
  const added = root.added_tokens ?? [];
  if (!Array.isArray(added)) throw bad(file, 'added_tokens must be an array');
  added.forEach((t: unknown, i: number) => {
    if (!isRecord(t) || typeof t.content !== 'string' || typeof t.id !== 'number' || !Number.isInteger(t.id) || t.id < 0) {
      throw bad(file, `added_tokens[${i}] needs a string "content" and an integer "id"`);
    }
    // Hugging Face always splits added tokens out of the text; we do so only with allowSpecial,
    // which is what lets "<|endoftext|>" in user text stay ordinary text by default.
    specialTokens.set(t.content, t.id);
  });
  const eos = vocab.idOf(EOS_TOKEN);
  if (eos !== undefined && !specialTokens.has(EOS_TOKEN)) specialTokens.set(EOS_TOKEN, eos);
  return {
    ...vocab,
    mergeCount: list.length,
    forEachMerge: (f) => list.forEach((m: unknown, i: number) => {
      const [l, r] = pairOf(m, i);
      f(l, r, i);
    }),
    specialTokens,
    files: { vocab: file, merges: file },
  };
}
