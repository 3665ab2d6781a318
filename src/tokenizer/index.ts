/**
 * GPT-2 tokenizer: text <-> ids from the model folder's own files.
 *
 * Library choice, revisited (issue: hostile input). The JS BPEs we measured merge a piece by
 * rescanning it after each merge, so cost grows with the square of an unbroken run: gpt-tokenizer 4.x
 * (`BytePairEncodingCore`, used here before) took 38.8 s for 300 k digits, js-tiktoken 1.x 38.8 s for
 * just 25 k. One request could stall a server for minutes. The BPE is now
 * our own (merge.ts: encoder.py's merge order with a heap, O(n log n)), checked against a line-by-line
 * port of encoder.py and against js-tiktoken by property tests; on tinyshakespeare it is faster than
 * gpt-tokenizer in the same run (bench/tokenizer.ts). Hand-written here too: file parsing and
 * validation (parse.ts), GPT-2's exact split regex and special tokens (bpe.ts), streaming decode
 * (stream.ts), and a reader that compiles the plain vocab + merges files straight from their bytes
 * (compact.ts: JSON.parse and a Map of 50 257 strings left ~20 MB resident in a generating process;
 * anything unusual goes through parse.ts). gpt-tokenizer stays a dev dependency, as the speed yardstick.
 */
import { GPT2Error } from '../errors';
import { FileSource, openSource } from '../io/source';
import { tokenizerFromCompiled, tokenizerFromSource } from './bpe';
import { compileTokenizerJson, compileVocabAndMerges } from './compact';
import { bpeSourceFromTokenizerJson, bpeSourceFromVocabAndMerges } from './parse';
import type { Tokenizer } from './types';

export type { EncodeOptions, StreamDecoder, Tokenizer } from './types';
export type { BPEData } from './parse';
/** From already-parsed data (e.g. a vocab bundled with an app); validates like the loaders. */
export { createTokenizer } from './bpe';

/** The file layouts we read, in order of preference. */
export const TOKENIZER_LAYOUTS: readonly (readonly string[])[] = [
  ['tokenizer.json'],
  ['vocab.json', 'merges.txt'],
  ['encoder.json', 'vocab.bpe'],
];

/** Texts of whichever tokenizer files a caller has (e.g. fetched in a browser), by file name. */
export interface TokenizerFileTexts {
  'tokenizer.json'?: string;
  'vocab.json'?: string;
  'merges.txt'?: string;
  'encoder.json'?: string;
  'vocab.bpe'?: string;
}

/** From a Hugging Face `tokenizer.json`. `file` names it in error messages. */
export function tokenizerFromTokenizerJson(text: string, file = 'tokenizer.json'): Tokenizer {
  return tokenizerFromSource(bpeSourceFromTokenizerJson(text, file));
}

/** From `vocab.json` + `merges.txt`, or equally OpenAI's `encoder.json` + `vocab.bpe`. */
export function tokenizerFromVocabAndMerges(
  vocabJson: string,
  mergesTxt: string,
  files: { vocab: string; merges: string } = { vocab: 'vocab.json', merges: 'merges.txt' },
): Tokenizer {
  return tokenizerFromSource(bpeSourceFromVocabAndMerges(vocabJson, mergesTxt, files));
}

/** `present`: names found, so half a pair can be named (the usual mistake is a missing merges file). */
function missing(where: string, present: (name: string) => boolean): GPT2Error {
  const wanted = TOKENIZER_LAYOUTS.map((l) => l.join(' + ')).join(', or ');
  const half = TOKENIZER_LAYOUTS.filter((l) => l.some(present))
    .map((l) => `; found ${l.filter(present).join(', ')} but not ${l.filter((n) => !present(n)).join(', ')}`)
    .join('');
  return new GPT2Error('MISSING_FILE', `no tokenizer files in ${where}: expected ${wanted}${half}`);
}

/**
 * From file texts by name, using the first complete layout in TOKENIZER_LAYOUTS.
 * `describe` turns a file name into a location for messages (default: the name itself).
 */
export function tokenizerFromFiles(files: TokenizerFileTexts, describe: (name: string) => string = (n) => n): Tokenizer {
  const tj = files['tokenizer.json'];
  if (tj !== undefined) return tokenizerFromTokenizerJson(tj, describe('tokenizer.json'));
  const pairs: [keyof TokenizerFileTexts, keyof TokenizerFileTexts][] = [
    ['vocab.json', 'merges.txt'],
    ['encoder.json', 'vocab.bpe'],
  ];
  for (const [v, m] of pairs) {
    const vocab = files[v];
    const merges = files[m];
    if (vocab !== undefined && merges !== undefined) {
      return tokenizerFromVocabAndMerges(vocab, merges, { vocab: describe(v), merges: describe(m) });
    }
  }
  throw missing('the given files', (name) => files[name as keyof TokenizerFileTexts] !== undefined);
}

/** The first complete layout, and which tokenizer file names exist at all. */
async function findLayout(where: string | FileSource): Promise<{ layout?: readonly string[]; present: Set<string> }> {
  const src = typeof where === 'string' ? openSource(where) : where;
  const names = TOKENIZER_LAYOUTS.flat();
  const found = await Promise.all(names.map((name) => src.exists(name)));
  const present = new Set(names.filter((_, i) => found[i]));
  return { layout: TOKENIZER_LAYOUTS.find((l) => l.every((n) => present.has(n))), present };
}

/**
 * Whether the folder (or base URL) holds any tokenizer file at all. Half a layout (vocab.json without
 * merges.txt) counts: loading it then fails naming the missing file, rather than silently giving a
 * model without a tokenizer.
 */
export async function hasAnyTokenizerFile(dirOrUrl: string | FileSource): Promise<boolean> {
  return (await findLayout(dirOrUrl)).present.size > 0;
}

/** Whether the folder (or base URL) holds a complete tokenizer in any supported layout. */
export async function hasTokenizerFiles(dirOrUrl: string | FileSource): Promise<boolean> {
  return (await findLayout(dirOrUrl)).layout !== undefined;
}

/**
 * Loads the tokenizer from a model folder or base URL. A broken preferred file is an error rather
 * than a reason to fall back to another layout: mixing files from two sources is how ids go wrong.
 */
export async function loadTokenizer(dirOrUrl: string | FileSource): Promise<Tokenizer> {
  const src = typeof dirOrUrl === 'string' ? openSource(dirOrUrl) : dirOrUrl;
  const { layout, present } = await findLayout(src);
  if (layout === undefined) throw missing(typeof dirOrUrl === 'string' ? dirOrUrl : src.describe('.'), (name) => present.has(name));
  // compiled from the bytes where the files are plain (compact.ts), else parsed as text
  const compiled = layout.length === 2 ? compileVocabAndMerges(await src.read(layout[0]), await src.read(layout[1])) : compileTokenizerJson(await src.read(layout[0]));
  if (compiled) return tokenizerFromCompiled(compiled);
  const texts: TokenizerFileTexts = {};
  for (const name of layout) texts[name as keyof TokenizerFileTexts] = await src.readText(name);
  return tokenizerFromFiles(texts, (name) => src.describe(name));
}

