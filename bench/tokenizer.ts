/**
 * Tokenizer throughput on tinyshakespeare (numbers are printed, never asserted).
 *
 *   npx tsx bench/tokenizer.ts [textFile] [tokenizerDir]
 *
 * "cold" is a fresh tokenizer (empty merge cache, unoptimised JIT), i.e. a one-off prompt of new
 * text; "warm" repeats on the same instance, as a server would see. gpt-tokenizer (OpenAI's GPT-2
 * ranks) runs on the same text in the same process as the yardstick, and the hostile rows time
 * 1 MiB unbroken runs (one piece each: the case that used to grow with the square of its length).
 */
import * as fs from 'fs';
import * as path from 'path';
import { encode as gptTokenizerEncode } from 'gpt-tokenizer/cjs/encoding/gpt2';
import { loadTokenizer } from '../src/tokenizer';

const root = path.join(__dirname, '..');
const textFile = process.argv[2] ?? process.env.TINYSHAKESPEARE ?? path.join(root, '..', 'shared', 'data', 'tinyshakespeare.txt');
const tokDir = process.argv[3] ?? path.join(root, 'weights', 'tiny-random');

function seconds(f: () => void): number {
  const t = process.hrtime.bigint();
  f();
  return Number(process.hrtime.bigint() - t) / 1e9;
}

async function main(): Promise<void> {
  const text = fs.readFileSync(textFile, 'utf8');
  const mb = Buffer.byteLength(text) / 1e6;
  const t0 = process.hrtime.bigint();
  const tok = await loadTokenizer(tokDir);
  const loadMs = Number(process.hrtime.bigint() - t0) / 1e6;

  let ids: number[] = [];
  const cold = seconds(() => (ids = tok.encode(text)));
  const warm: number[] = [];
  for (let i = 0; i < 5; i++) warm.push(seconds(() => tok.encode(text)));
  const bestWarm = Math.min(...warm);
  const dec = seconds(() => tok.decode(ids));
  const stream = seconds(() => {
    const d = tok.createDecoder();
    for (const id of ids) d.push(id);
    d.flush();
  });

  const theirs: number[] = [];
  for (let i = 0; i < 5; i++) theirs.push(seconds(() => gptTokenizerEncode(text)));
  const same = gptTokenizerEncode(text).every((id, i) => id === ids[i]);
  const hostile: [string, string][] = ['a', '1', '!', ' ', 'é'].map((ch) => {
    const s = ch.repeat(Math.floor((1 << 20) / Buffer.byteLength(ch)));
    return [`1 MiB of ${JSON.stringify(ch)}`, `${(seconds(() => tok.encode(s)) * 1000).toFixed(0)} ms`];
  });

  const rows: [string, string][] = [
    ['file', `${textFile} (${mb.toFixed(2)} MB, ${ids.length} tokens)`],
    ['load tokenizer', `${loadMs.toFixed(0)} ms`],
    ['encode cold', `${(mb / cold).toFixed(2)} MB/s`],
    ['encode warm (best of 5)', `${(mb / bestWarm).toFixed(2)} MB/s`],
    ['gpt-tokenizer warm', `${(mb / Math.min(...theirs)).toFixed(2)} MB/s (same ids: ${same})`],
    ...hostile,
    ['decode', `${(mb / dec).toFixed(2)} MB/s`],
    ['stream decode', `${(mb / stream).toFixed(2)} MB/s (${((stream / ids.length) * 1e6).toFixed(2)} µs/token)`],
  ];
  for (const [k, v] of rows) process.stdout.write(`${k.padEnd(24)} ${v}\n`);
}

main().catch((e: unknown) => {
  process.stderr.write(`${(e as Error).stack ?? String(e)}\n`);
  process.exitCode = 1;
});
