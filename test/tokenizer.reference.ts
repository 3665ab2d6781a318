/**
 * Test-only reference: a line-by-line port of OpenAI's gpt-2 `src/encoder.py` (merge-rule BPE,
 * whole-bigram replacement, no shortcuts). Slow but obviously faithful, so it can judge the
 * rank-based core we build on. Its split regex is spelled differently from src/tokenizer/bpe.ts on
 * purpose: Python's `\s` is JavaScript's `\s` plus U+0085 minus U+FEFF.
 */
import * as fs from 'fs';
import * as path from 'path';

export const GPT2_DIR = path.join(__dirname, '..', 'weights', 'tiny-random') // ships OpenAI's GPT-2 vocab.json + merges.txt;

const S = '(?:(?!\\uFEFF)[\\s\\x85])'; // Python `regex` \s
const NS = `(?:(?!${S})[^])`; // Python \S
const PAT = new RegExp(`'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?(?:(?!${S})[^\\p{L}\\p{N}])+|${S}+(?!${NS})|${S}+`, 'gu');

function bytesToUnicode(): Map<number, string> {
  const bs: number[] = [];
  for (let i = '!'.charCodeAt(0); i <= '~'.charCodeAt(0); i++) bs.push(i);
  for (let i = '¡'.charCodeAt(0); i <= '¬'.charCodeAt(0); i++) bs.push(i);
  for (let i = '®'.charCodeAt(0); i <= 'ÿ'.charCodeAt(0); i++) bs.push(i);
  const cs = bs.slice();
  let n = 0;
  for (let b = 0; b < 256; b++) {
    if (!bs.includes(b)) {
      bs.push(b);
      cs.push(256 + n);
      n += 1;
    }
  }
  return new Map(bs.map((b, i) => [b, String.fromCharCode(cs[i])]));
}

export class EncoderPy {
  readonly encoder: Record<string, number>;
  private readonly ranks = new Map<string, number>();
  private readonly byteEncoder = bytesToUnicode();
  private readonly cache = new Map<string, string[]>();

  constructor(dir: string = GPT2_DIR) {
    this.encoder = JSON.parse(fs.readFileSync(path.join(dir, 'vocab.json'), 'utf8')) as Record<string, number>;
    const lines = fs.readFileSync(path.join(dir, 'merges.txt'), 'utf8').split('\n');
    lines.slice(1, -1).forEach((l, i) => this.ranks.set(l, i)); // bpe_data.split("\n")[1:-1]
  }

  bpe(token: string): string[] {
    const hit = this.cache.get(token);
    if (hit) return hit;
    let word = [...token];
    while (word.length > 1) {
      let best = Infinity;
      let first = '';
      let second = '';
      for (let i = 0; i < word.length - 1; i++) {
        const r = this.ranks.get(word[i] + ' ' + word[i + 1]);
        if (r !== undefined && r < best) [best, first, second] = [r, word[i], word[i + 1]];
      }
      if (best === Infinity) break;
      const next: string[] = [];
      for (let i = 0; i < word.length; ) {
        if (word[i] === first && i < word.length - 1 && word[i + 1] === second) {
          next.push(first + second);
          i += 2;
        } else next.push(word[i++]);
      }
      word = next;
    }
    this.cache.set(token, word);
    return word;
  }

  encode(text: string): number[] {
    const out: number[] = [];
    for (const [piece] of text.matchAll(PAT)) {
      const mapped = Array.from(Buffer.from(piece, 'utf8'), (b) => this.byteEncoder.get(b) as string).join('');
      for (const t of this.bpe(mapped)) out.push(this.encoder[t]);
    }
    return out;
  }
}
