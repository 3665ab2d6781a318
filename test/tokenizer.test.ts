import { createHash } from 'crypto';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { getEncoding } from 'js-tiktoken';
import {
  Tokenizer,
  hasTokenizerFiles,
  loadTokenizer,
  tokenizerFromFiles,
  tokenizerFromTokenizerJson,
  tokenizerFromVocabAndMerges,
} from '../src/tokenizer';
import { CompiledBPE, compileSource } from '../src/tokenizer/bpe';
import { compileTokenizerJson, compileVocabAndMerges } from '../src/tokenizer/compact';
import { bpeSourceFromTokenizerJson, bpeSourceFromVocabAndMerges } from '../src/tokenizer/parse';
import { EncoderPy, GPT2_DIR } from './tokenizer.reference';
import { caught, corpusPath } from './helpers';

const SHAKESPEARE = corpusPath();
const EOT = '<|endoftext|>';
const vocabText = fs.readFileSync(path.join(GPT2_DIR, 'vocab.json'), 'utf8');
const mergesText = fs.readFileSync(path.join(GPT2_DIR, 'merges.txt'), 'utf8');

let tok: Tokenizer;
beforeAll(async () => {
  tok = await loadTokenizer(GPT2_DIR);
});

const tmpDirs: string[] = [];
function tmpDir(files: Record<string, string>): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'gpt2-tok-'));
  tmpDirs.push(dir);
  for (const [name, text] of Object.entries(files)) fs.writeFileSync(path.join(dir, name), text);
  return dir;
}
afterAll(() => {
  for (const d of tmpDirs) fs.rmSync(d, { recursive: true, force: true });
});

/** A Hugging Face tokenizer.json equivalent to the shipped vocab.json + merges.txt. */
function hfTokenizerJson(pairs: boolean): string {
  const merges = mergesText.split('\n').slice(1).filter((l) => l !== '');
  return JSON.stringify({
    version: '1.0',
    added_tokens: [{ id: 50256, content: EOT, single_word: false, lstrip: false, rstrip: false, normalized: true, special: true }],
    normalizer: null,
    pre_tokenizer: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
    post_processor: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: false, use_regex: true },
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: '',
      end_of_word_suffix: '',
      fuse_unk: false,
      vocab: JSON.parse(vocabText) as Record<string, number>,
      merges: pairs ? merges.map((m) => m.split(' ')) : merges,
    },
  });
}

describe('shipped files', () => {
  it('are OpenAI encoder.json / vocab.bpe byte for byte (the hashes tiktoken pins)', () => {
    const sha = (f: string): string => createHash('sha256').update(fs.readFileSync(path.join(GPT2_DIR, f))).digest('hex');
    expect(sha('vocab.json')).toBe('196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783');
    expect(sha('merges.txt')).toBe('1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5');
  });

  it('give GPT-2 sizes', () => {
    expect(tok.vocabSize).toBe(50257);
    expect(tok.eosTokenId).toBe(50256);
  });
});

describe('encode: known ids', () => {
  it.each([
    ['hello world', [31373, 995]],
    ['Hello World', [15496, 2159]],
    ['How are you doing?', [2437, 389, 345, 1804, 30]],
    ['The dog', [464, 3290]],
    ['', []],
  ])('%j', (text, ids) => {
    expect(tok.encode(text)).toEqual(ids);
  });

  // Expected ids from OpenAI's gpt-2 src/encoder.py (Python `regex` 2026.5.9), run on these strings.
  it.each([
    ["I'm sure you're right; we've seen it's what they'll do, he'd say, don't you think?", [40, 1101, 1654, 345, 821, 826, 26, 356, 1053, 1775, 340, 338, 644, 484, 1183, 466, 11, 339, 1549, 910, 11, 836, 470, 345, 892, 30]],
    ["'s't're've'm'll'd", [338, 470, 821, 1053, 1101, 1183, 1549]],
    ["DON'T YOU'RE I'M", [41173, 6, 51, 7013, 6, 2200, 314, 6, 44]], // contractions are lower-case only
    ['a  b   c    d', [64, 220, 275, 220, 220, 269, 220, 220, 220, 288]],
    ['   leading and trailing   ', [220, 220, 3756, 290, 25462, 220, 220, 220]],
    ['line one\nline two\n\n\nline five\n', [1370, 530, 198, 1370, 734, 628, 198, 1370, 1936, 198]],
    ['\t\tindented\n    four spaces\n', [197, 197, 521, 4714, 198, 220, 220, 220, 1440, 9029, 198]],
    ['  \n  \n', [220, 220, 198, 220, 220, 198]],
    ['12345 67890 3.14159 1,000,000 x2y3', [10163, 2231, 718, 3695, 3829, 513, 13, 1415, 19707, 352, 11, 830, 11, 830, 2124, 17, 88, 18]],
    ['\ud83d\ude00 \ud83d\udc68\u200d\ud83d\udc69\u200d\ud83d\udc67\u200d\ud83d\udc66 family \ud83c\uddfa\ud83c\uddf8', [47249, 222, 50169, 101, 447, 235, 41840, 102, 447, 235, 41840, 100, 447, 235, 41840, 99, 1641, 12520, 229, 118, 8582, 229, 116]],
    ['\u4f60\u597d\uff0c\u4e16\u754c \u3053\u3093\u306b\u3061\u306f\u4e16\u754c \ud55c\uad6d\uc5b4', [19526, 254, 25001, 121, 171, 120, 234, 10310, 244, 45911, 234, 23294, 241, 22174, 28618, 2515, 94, 31676, 10310, 244, 45911, 234, 220, 47991, 250, 166, 113, 255, 168, 244, 112]],
    ['e\u0301 n\u0303 Z\u0351\u0356a\u0336l\u0330g\u030co', [68, 136, 223, 299, 136, 225, 1168, 137, 239, 137, 244, 64, 48869, 75, 136, 108, 70, 136, 234, 78]],
    ['\u00a0nbsp \u3000\u5168\u89d2', [1849, 77, 24145, 220, 5099, 222, 17739, 101, 164, 100, 240]],
    ['a\u0085\u0085b', [64, 126, 227, 126, 227, 65]],
    // Python's \s includes U+0085 and excludes U+FEFF, unlike JavaScript's; JS-regex ports
    // (js-tiktoken, gpt-tokenizer) give [1587, 227, 0] and [220, 171, 119, 123, 0] here.
    [' \u0085!', [220, 126, 227, 0]],
    [' \ufeff!', [27332, 119, 123, 0]],
  ])('%j (encoder.py ids)', (text, ids) => {
    expect(tok.encode(text)).toEqual(ids);
    expect(tok.decode(ids)).toBe(text);
  });
});

describe('special tokens', () => {
  it('<|endoftext|> is plain text unless allowSpecial', () => {
    expect(tok.encode(EOT)).toEqual([27, 91, 437, 1659, 5239, 91, 29]);
    expect(tok.encode(EOT, { allowSpecial: false })).toEqual([27, 91, 437, 1659, 5239, 91, 29]);
    expect(tok.encode(EOT, { allowSpecial: true })).toEqual([50256]);
    expect(tok.encode(`Hello${EOT}World`)).toEqual([15496, 27, 91, 437, 1659, 5239, 91, 29, 10603]);
    expect(tok.encode(`Hello${EOT}World`, { allowSpecial: true })).toEqual([15496, 50256, 10603]);
    expect(tok.encode(`${EOT}${EOT} a`, { allowSpecial: true })).toEqual([50256, 50256, 257]);
  });

  it('decodes to its literal text', () => {
    expect(tok.decode([15496, 50256, 10603])).toBe(`Hello${EOT}World`);
  });
});

describe('decode', () => {
  it('turns lone surrogates into U+FFFD (they have no UTF-8 form)', () => {
    expect(tok.decode(tok.encode('a\ud83db'))).toBe('a\ufffdb');
    expect(tok.decode(tok.encode('\ude00'))).toBe('\ufffd');
    expect(tok.decode(tok.encode('\ude00\ud83d'))).toBe('\ufffd\ufffd');
    expect(tok.encode('\ud83d')).toEqual(tok.encode('\ufffd'));
  });

  it('keeps a leading byte-order mark', () => {
    expect(tok.decode(tok.encode('\ufeffhi'))).toBe('\ufeffhi');
  });

  it('replaces invalid or cut UTF-8 with U+FFFD', () => {
    const [first, ...rest] = tok.encode('😀'); // [47249, 222]: the emoji's bytes split in two tokens
    expect(rest.length).toBeGreaterThan(0);
    expect(tok.decode([first])).toBe('\ufffd');
    expect(tok.decode([first, ...rest])).toBe('😀');
    expect(tok.decode([187])).toBe('\ufffd'); // id 187 is the lone byte 0xFF, never valid UTF-8
  });

  it('rejects ids outside the vocabulary with BAD_INPUT', async () => {
    expect(caught(() => tok.decode([50257]))).toMatchObject({ code: 'BAD_INPUT', message: expect.stringMatching(/50257/) });
    expect(caught(() => tok.decode([-1]))).toMatchObject({ code: 'BAD_INPUT', message: expect.stringMatching(/-1/) });
    expect(caught(() => tok.decode([1.5]))).toMatchObject({ code: 'BAD_INPUT', message: expect.stringMatching(/1\.5/) });
    expect(caught(() => tok.createDecoder().push(99999))).toMatchObject({ code: 'BAD_INPUT', message: expect.stringMatching(/99999/) });
  });
});

describe('streaming decoder', () => {
  it('holds back half a character and emits it once complete', () => {
    const ids = tok.encode('a😀b');
    const d = tok.createDecoder();
    const outs = ids.map((id) => d.push(id));
    expect(outs.join('') + d.flush()).toBe('a😀b');
    expect(outs).not.toContain('\ufffd');
    expect(outs.some((s) => s === '')).toBe(true); // the first half of the emoji printed nothing
  });

  it('flush emits U+FFFD for an unfinished sequence, then starts over', () => {
    const [first] = tok.encode('😀');
    const d = tok.createDecoder();
    expect(d.push(first)).toBe('');
    expect(d.flush()).toBe('\ufffd');
    expect(d.flush()).toBe('');
    expect(d.push(31373)).toBe('hello');
  });

  it('matches decode on tinyshakespeare', () => {
    const text = fs.readFileSync(SHAKESPEARE, 'utf8').slice(0, 50000);
    const ids = tok.encode(text);
    const d = tok.createDecoder();
    let out = '';
    for (const id of ids) out += d.push(id);
    expect(out + d.flush()).toBe(tok.decode(ids));
  });
});

describe('tinyshakespeare', () => {
  it('encodes to 338,025 ids, id-for-id equal to js-tiktoken, and decodes byte-identical', () => {
    const text = fs.readFileSync(SHAKESPEARE, 'utf8');
    const ids = tok.encode(text);
    expect(ids.length).toBe(338025);
    // An independent implementation with its own bundled copy of OpenAI's ranks.
    const reference = getEncoding('gpt2').encode(text);
    expect(ids).toEqual(reference);
    expect(Buffer.from(tok.decode(ids), 'utf8').equals(fs.readFileSync(SHAKESPEARE))).toBe(true);
  });
});

describe('exactness against a merge-rule BPE (encoder.py port)', () => {
  it('agrees on the text of every vocab token that is valid UTF-8', () => {
    const ref = new EncoderPy();
    let checked = 0;
    const mismatches: string[] = [];
    for (let id = 0; id < 50256; id++) {
      const text = tok.decode([id]);
      if (text.includes('\ufffd')) continue; // the token's bytes are not valid UTF-8 on their own
      checked++;
      const ours = tok.encode(text);
      if (ours.join() !== ref.encode(text).join()) mismatches.push(JSON.stringify(text));
    }
    expect(checked).toBeGreaterThan(45000);
    expect(mismatches).toEqual([]);
  });
});

describe('file layouts', () => {
  const sample = fs.readFileSync(SHAKESPEARE, 'utf8').slice(0, 20000) + ' 😀 你好 \u0085 ' + EOT;

  it('tokenizer.json (both merge styles), vocab.json + merges.txt and encoder.json + vocab.bpe give identical ids', async () => {
    const expected = tok.encode(sample);
    const dirs = [
      tmpDir({ 'tokenizer.json': hfTokenizerJson(false) }),
      tmpDir({ 'tokenizer.json': hfTokenizerJson(true) }),
      tmpDir({ 'vocab.json': vocabText, 'merges.txt': mergesText }),
      tmpDir({ 'encoder.json': vocabText, 'vocab.bpe': mergesText }),
    ];
    for (const dir of dirs) {
      expect(await hasTokenizerFiles(dir)).toBe(true);
      const t = await loadTokenizer(dir);
      expect(t.encode(sample)).toEqual(expected);
      expect(t.encode(sample, { allowSpecial: true })).toEqual(tok.encode(sample, { allowSpecial: true }));
      expect(t.vocabSize).toBe(50257);
      expect(t.eosTokenId).toBe(50256);
    }
  });

  it('builds from file texts without touching the file system (browser path)', () => {
    const fromPair = tokenizerFromFiles({ 'encoder.json': vocabText, 'vocab.bpe': mergesText });
    const fromJson = tokenizerFromTokenizerJson(hfTokenizerJson(true));
    const direct = tokenizerFromVocabAndMerges(vocabText, mergesText);
    for (const t of [fromPair, fromJson, direct]) expect(t.encode('hello world')).toEqual([31373, 995]);
  });

  it('follows merge order, not id order, when a vocab numbers its tokens differently', () => {
    // Renumber every ordinary token with a bijection on 0..50255, keeping the merges as they are.
    const perm = (id: number): number => (id === 50256 ? id : (id * 7919) % 50256);
    const vocab = JSON.parse(vocabText) as Record<string, number>;
    for (const k of Object.keys(vocab)) vocab[k] = perm(vocab[k]);
    const renumbered = tokenizerFromVocabAndMerges(JSON.stringify(vocab), mergesText);
    const ids = tok.encode(sample, { allowSpecial: true });
    expect(renumbered.encode(sample, { allowSpecial: true })).toEqual(ids.map(perm));
    expect(renumbered.decode(ids.map(perm))).toBe(sample);
  });

  it('prefers tokenizer.json, and reports it broken rather than falling back', async () => {
    const dir = tmpDir({ 'tokenizer.json': '{"model": {"vocab": {', 'vocab.json': vocabText, 'merges.txt': mergesText });
    expect(await caught(loadTokenizer(dir))).toMatchObject({ code: 'BAD_TOKENIZER', message: expect.stringMatching(/tokenizer\.json/) });
  });

  it('says which files it wanted when none (or half a pair) are there', async () => {
    const empty = tmpDir({});
    expect(await hasTokenizerFiles(empty)).toBe(false);
    expect(await caught(loadTokenizer(empty))).toMatchObject({ code: 'MISSING_FILE', message: expect.stringMatching(/tokenizer\.json.*vocab\.json \+ merges\.txt.*encoder\.json \+ vocab\.bpe/) });
    const half = tmpDir({ 'vocab.json': vocabText });
    expect(await hasTokenizerFiles(half)).toBe(false);
    expect(await caught(loadTokenizer(half))).toMatchObject({ code: 'MISSING_FILE', message: expect.stringMatching(/found vocab\.json but not merges\.txt/) });
    expect(caught(() => tokenizerFromFiles({ 'vocab.json': vocabText }))).toMatchObject({ code: 'MISSING_FILE', message: expect.stringMatching(/found vocab\.json but not merges\.txt/) });
  });
});

describe('vocab + merges compiled from their bytes (compact.ts)', () => {
  const bytes = (text: string) => new TextEncoder().encode(text);
  /** Every id's bytes, the rules and the byte ids: what the tokenizer uses (the table's order may differ). */
  const summary = (c: CompiledBPE) => ({
    tokens: Array.from(c.end, (e, id) => (c.start[id] < 0 ? null : Buffer.from(c.table.subarray(c.start[id], e)).toString('hex'))),
    rules: [Array.from(c.rules.left), Array.from(c.rules.right), Array.from(c.rules.merged)],
    byteIds: Array.from(c.byteIds),
    eos: c.eos,
    special: [...c.specialTokens],
  });
  const general = (v: string, m: string) => summary(compileSource(bpeSourceFromVocabAndMerges(v, m, { vocab: 'vocab.json', merges: 'merges.txt' })));
  // OpenAI's encoder.json as json.dump(ensure_ascii=True) writes it: every non-ASCII character as \uXXXX
  const escaped = vocabText.replace(/[\u007f-\uffff]/g, (c) => '\\u' + c.charCodeAt(0).toString(16).padStart(4, '0'));

  it.each([
    ['GPT-2 vocab.json + merges.txt (UTF-8)', vocabText, mergesText],
    ['GPT-2 encoder.json with \\u escapes', escaped, mergesText],
    ['CRLF merges, no #version line', vocabText, mergesText.split('\n').slice(1).join('\r\n')],
  ])('%s: the same tokenizer data as the general path, with no fallback', (_name, v, m) => {
    const fast = compileVocabAndMerges(bytes(v), bytes(m));
    expect(fast).not.toBeNull(); // the fast path engages on the layouts real checkpoints ship
    expect(summary(fast as CompiledBPE)).toEqual(general(v, m));
  });

  it.each([
    ['merges as "a b"', false],
    ['merges as ["a", "b"]', true],
  ])('tokenizer.json (%s): the same data as the general path, with no fallback', (_name, pairs) => {
    const text = hfTokenizerJson(pairs as boolean);
    const fast = compileTokenizerJson(bytes(text));
    expect(fast).not.toBeNull();
    expect(summary(fast as CompiledBPE)).toEqual(summary(compileSource(bpeSourceFromTokenizerJson(text, 'tokenizer.json'))));
  });

  it('tokenizer.json outside the plain form goes to the general path: bad files, odd ids, unusual added tokens', () => {
    const good = hfTokenizerJson(true);
    for (const t of [
      good.slice(0, 100000),
      good.replace('"add_prefix_space":false', '"add_prefix_space":true'),
      good.replace('"merges":[[', '"merges":[7,['),
      good.replace('"type":"BPE"', '"type":"WordPiece"'),
      good.replace('"!":0,', '"!":0.0,'),
      good.replace('"content":"<|endoftext|>"', '"content":"<|end of text|>"'),
    ]) {
      expect(t).not.toBe(good);
      expect(compileTokenizerJson(bytes(t))).toBeNull();
    }
  });

  it('hands anything outside the plain layout to the general path, which loads what it accepts', async () => {
    // valid JSON the byte reader does not take: an id written as 0.0
    const odd = vocabText.replace('"!": 0,', '"!": 0.0,');
    expect(odd).not.toBe(vocabText);
    expect(compileVocabAndMerges(bytes(odd), bytes(mergesText))).toBeNull();
    const t = await loadTokenizer(tmpDir({ 'vocab.json': odd, 'merges.txt': mergesText }));
    expect(t.encode('hello world!')).toEqual(tok.encode('hello world!'));
    // and every malformed file of 'bad files' below: null here, then the general path's error
    for (const v of [vocabText.slice(0, 5000), '', '[1, 2]', '{"a": 1.5}', vocabText.replace('"\\"": 1,', '"\\"": 0,')]) {
      expect(compileVocabAndMerges(bytes(v), bytes(mergesText))).toBeNull();
    }
    for (const m of ['', '#version: 0.2\n', 'abc\n', 'Ġt zzqx\n', 'Ġthe Ġthe\n', 'a  b\n', ' a\n']) {
      expect(compileVocabAndMerges(bytes(vocabText), bytes(m))).toBeNull();
    }
  });
});

describe('bad files', () => {
  const mergeLines = mergesText.split('\n');
  const cases: [string, Record<string, string>, RegExp][] = [
    ['truncated vocab.json', { 'vocab.json': vocabText.slice(0, 5000), 'merges.txt': mergesText }, /vocab\.json.*not valid JSON/],
    ['empty vocab.json', { 'vocab.json': '', 'merges.txt': mergesText }, /vocab\.json.*empty/],
    ['vocab.json that is not an object', { 'vocab.json': '[1, 2]', 'merges.txt': mergesText }, /vocab\.json.*object/],
    ['vocab.json with a non-integer id', { 'vocab.json': '{"a": 1.5}', 'merges.txt': mergesText }, /vocab\.json.*"a".*1\.5/],
    ['vocab.json with a duplicate id', { 'vocab.json': vocabText.replace('"\\"": 1,', '"\\"": 0,'), 'merges.txt': mergesText }, /vocab\.json.*id 0/],
    ['vocab.json missing a byte token', { 'vocab.json': vocabText.replace('"\\"": 1,', ''), 'merges.txt': mergesText }, /vocab\.json.*0x22/],
    ['empty merges.txt', { 'vocab.json': vocabText, 'merges.txt': '' }, /merges\.txt.*empty/],
    ['merges.txt with only a header', { 'vocab.json': vocabText, 'merges.txt': '#version: 0.2\n' }, /merges\.txt.*no merges/],
    ['merges.txt with a malformed line', { 'vocab.json': vocabText, 'merges.txt': mergeLines.slice(0, 10).join('\n') + '\nabc\n' }, /merges\.txt.*line 11.*"abc"/],
    ['merges.txt naming an unknown token', { 'vocab.json': vocabText, 'merges.txt': mergeLines.slice(0, 10).join('\n') + '\nĠt zzqx\n' }, /merges\.txt.*#10.*"zzqx".*not in the vocab/],
    ['merges.txt making an unknown token', { 'vocab.json': vocabText, 'merges.txt': mergeLines.slice(0, 10).join('\n') + '\nĠthe Ġthe\n' }, /merges\.txt.*makes "ĠtheĠthe"/],
    ['tokenizer.json truncated', { 'tokenizer.json': hfTokenizerJson(true).slice(0, 100000) }, /tokenizer\.json.*not valid JSON/],
    ['tokenizer.json of another model type', { 'tokenizer.json': JSON.stringify({ model: { type: 'WordPiece', vocab: {} } }) }, /tokenizer\.json.*WordPiece/],
    ['tokenizer.json with a bad merge entry', { 'tokenizer.json': hfTokenizerJson(true).replace('"merges":[[', '"merges":[7,[') }, /tokenizer\.json.*merges\[0\]/],
    ['tokenizer.json with add_prefix_space', { 'tokenizer.json': hfTokenizerJson(true).replace('"add_prefix_space":false', '"add_prefix_space":true') }, /add_prefix_space/],
  ];
  it.each(cases)('%s -> BAD_TOKENIZER naming the file and problem', async (_name, files, mentions) => {
    expect(await caught(loadTokenizer(tmpDir(files)))).toMatchObject({ code: 'BAD_TOKENIZER', message: expect.stringMatching(mentions) });
  });

  it('vocab without <|endoftext|> is rejected', async () => {
    const vocab = JSON.parse(vocabText) as Record<string, number>;
    delete vocab[EOT];
    expect(caught(() => tokenizerFromVocabAndMerges(JSON.stringify(vocab), mergesText))).toMatchObject({ code: 'BAD_TOKENIZER', message: expect.stringMatching(/endoftext/) });
  });
});
