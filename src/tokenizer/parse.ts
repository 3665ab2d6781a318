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

function vocabFromObject(obj: unknown, file: string, what: string): Map<string, number> {
  if (!isRecord(obj)) throw bad(file, `${what} must be a JSON object of token -> id`);
  const vocab = new Map<string, number>();
  const owner = new Map<number, string>();
  for (const [token, id] of Object.entries(obj)) {
    if (typeof id !== 'number' || !Number.isInteger(id) || id < 0) {
      throw bad(file, `${what}: id of token ${JSON.stringify(token)} is ${JSON.stringify(id)}, not a non-negative integer`);
    }
    const prev = owner.get(id);
    // Two strings for one id would make decode ambiguous.
    if (prev !== undefined) throw bad(file, `${what}: id ${id} is used by both ${JSON.stringify(prev)} and ${JSON.stringify(token)}`);
    owner.set(id, token);
    vocab.set(token, id);
  }
  if (vocab.size === 0) throw bad(file, `${what} is empty`);
  return vocab;
}

/** `vocab.json` / `encoder.json`: a flat object of byte-level token string -> id. */
export function parseVocabJson(text: string, file: string): Map<string, number> {
  return vocabFromObject(parseJson(text, file), file, 'vocab');
}

/** `merges.txt` / `vocab.bpe`: optional `#version` header, then one "left right" pair per line. */
export function parseMergesTxt(text: string, file: string): [string, string][] {
  if (text.trim() === '') throw bad(file, 'file is empty');
  const lines = text.split('\n');
  const merges: [string, string][] = [];
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i].replace(/\r$/, '');
    if (line === '' || (i === 0 && line.startsWith('#version'))) continue;
    // Byte-level tokens never contain a space (it is mapped to 'Ġ'), so exactly one separator.
    const parts = line.split(' ');
    if (parts.length !== 2 || parts[0] === '' || parts[1] === '') {
      throw bad(file, `line ${i + 1} is ${JSON.stringify(line)}, expected two tokens separated by one space`);
    }
    merges.push([parts[0], parts[1]]);
  }
  if (merges.length === 0) throw bad(file, 'contains no merges');
  return merges;
}

/** The vocab.json + merges.txt (or encoder.json + vocab.bpe) pair. */
export function bpeDataFromVocabAndMerges(
  vocabText: string,
  mergesText: string,
  files: { vocab: string; merges: string },
): BPEData {
  const vocab = parseVocabJson(vocabText, files.vocab);
  const merges = parseMergesTxt(mergesText, files.merges);
  // These layouts have no list of special tokens; GPT-2's only one lives in the vocab itself.
  const eos = vocab.get(EOS_TOKEN);
  const specialTokens = new Map<string, number>(eos === undefined ? [] : [[EOS_TOKEN, eos]]);
  return { vocab, merges, specialTokens, files };
}

/** Hugging Face `tokenizer.json` (tokenizers >= 0.20 writes merges as pairs, older as "a b"). */
export function bpeDataFromTokenizerJson(text: string, file: string): BPEData {
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
  const vocab = vocabFromObject(model.vocab, file, 'model.vocab');
  if (!Array.isArray(model.merges)) throw bad(file, 'model.merges must be an array');
  const merges: [string, string][] = [];
  model.merges.forEach((m: unknown, i: number) => {
    let pair: unknown[] | undefined;
    if (typeof m === 'string') pair = m.split(' ');
    else if (Array.isArray(m)) pair = m;
    if (!pair || pair.length !== 2 || typeof pair[0] !== 'string' || typeof pair[1] !== 'string' || pair[0] === '' || pair[1] === '') {
      throw bad(file, `model.merges[${i}] is ${JSON.stringify(m)}, expected "a b" or ["a", "b"]`);
    }
    merges.push([pair[0], pair[1]]);
  });
  if (merges.length === 0) throw bad(file, 'model.merges is empty');

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
  const eos = vocab.get(EOS_TOKEN);
  if (eos !== undefined && !specialTokens.has(EOS_TOKEN)) specialTokens.set(EOS_TOKEN, eos);
  return { vocab, merges, specialTokens, files: { vocab: file, merges: file } };
}
