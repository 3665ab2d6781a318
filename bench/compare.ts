/**
 * The project right after its peers, in one run, as ratios (absolute tokens/s move 10-20% between
 * runs on a shared host; ratios measured together are what carry). Peers come from a writable copy of
 * ../shared/peers (see its README: `cp -r ../shared/peers /tmp/peers && cd /tmp/peers && npm ci
 * --ignore-scripts`, then `bash run_peers.sh` once to make the model and its ONNX graphs; for q8 also
 * `DTYPES="fp32 q8" bash run_peers.sh`). Each figure is one fresh process; the peers use their own
 * protocol (prefill 256 = one forward of 256 tokens; decode = 128 steps after a 32-token prompt), and
 * `gpt2-tfjs bench` is run to match it (--prompt-tokens 256, then --prompt-tokens 32 --new-tokens 128).
 *
 *   npx tsx bench/compare.ts [--peers /tmp/peers] [--model DIR] [--threads 1,2] [--dtypes fp32,q8]
 *                            [--with ort,transformersjs] [--repeat N] [--json]
 * --repeat N: N rounds, each running every peer and then ours (the order alternates by round); each
 * figure is then the median of its N runs, shown with its range (a shared host's memory bandwidth moves
 * by 10-30% from minute to minute, and a lone same-run pair can land on either side of a ratio).
 * q8: our side converts the model once (gpt2-tfjs convert --quantize q8) into DIR-q8 beside it.
 */
import { execFileSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { Command } from 'commander';

interface Figures {
  prefill256: number;
  decode: number;
  peakRssMiB?: number;
}

const ROOT = path.join(__dirname, '..');
const CLI = path.join(ROOT, 'bin', 'gpt2-tfjs.js');

function peer(dir: string, name: string, dtype: string, threads: number, model: string): Figures {
  const script = name === 'ort' ? 'peer_ort.mjs' : 'peer_transformersjs.mjs';
  const args = [script, '--threads', String(threads), '--model', model, ...(dtype === 'fp32' ? [] : ['--dtype', dtype])];
  const out = execFileSync('node', args, { cwd: dir, encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] });
  const line = out.split('\n').find((l) => l.startsWith('RESULT '));
  if (!line) throw new Error(`${script} printed no RESULT line`);
  const r = JSON.parse(line.slice(7));
  return { prefill256: r.prefill256, decode: r.decode };
}

function ours(model: string, threads: number): Figures {
  const run = (prompt: number, newTokens: number) => {
    const out = execFileSync('node', [CLI, 'bench', '--model', model, '--threads', String(threads), '--prompt-tokens', String(prompt), '--new-tokens', String(newTokens), '--json'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] });
    return JSON.parse(out.trim().split('\n').pop() as string);
  };
  const pre = run(256, 16);
  const dec = run(32, 128);
  return { prefill256: pre.prefillTokensPerSecond, decode: dec.decodeTokensPerSecond, peakRssMiB: Math.max(pre.peakRssBytes, dec.peakRssBytes) / 2 ** 20 };
}

function main(): void {
  const o = new Command('compare')
    .option('--peers <dir>', 'writable copy of ../shared/peers, set up', '/tmp/peers')
    .option('--model <dir>', 'fp32 model folder (default: the peers\' models/gpt2-124m-random)')
    .option('--threads <list>', 'thread counts', '1,2')
    .option('--dtypes <list>', 'fp32 and/or q8', 'fp32,q8')
    .option('--with <list>', 'peers: ort, transformersjs', 'ort,transformersjs')
    .option('--repeat <n>', 'rounds; figures are medians over them', '1')
    .option('--json', 'one JSON object per line')
    .parse()
    .opts<{ peers: string; model?: string; threads: string; dtypes: string; with: string; repeat: string; json?: boolean }>();
  const repeat = Number(o.repeat);
  if (!Number.isInteger(repeat) || repeat < 1) throw new Error(`--repeat is ${o.repeat}: give a whole number >= 1`);
  const model = path.resolve(o.model ?? path.join(o.peers, 'models', 'gpt2-124m-random'));
  const q8Model = `${model}-q8`;
  const dtypes = o.dtypes.split(',');
  if (dtypes.includes('q8') && !fs.existsSync(path.join(q8Model, 'model.safetensors'))) {
    execFileSync('node', [CLI, 'convert', '--quantize', 'q8', model, q8Model, '-q'], { stdio: 'inherit' });
  }
  const runs = new Map<string, { who: string; dtype: string; threads: number; fs: Figures[] }>();
  const record = (who: string, dtype: string, threads: number, f: Figures) => {
    const key = `${who}|${dtype}|${threads}`;
    if (!runs.has(key)) runs.set(key, { who, dtype, threads, fs: [] });
    runs.get(key)!.fs.push(f);
    const extra = f.peakRssMiB ? `, peak RSS ${f.peakRssMiB.toFixed(0)} MiB` : '';
    process.stderr.write(`${who} ${dtype} t=${threads}: prefill256 ${f.prefill256.toFixed(1)}, decode ${f.decode.toFixed(2)} tok/s${extra}\n`);
  };
  for (let round = 0; round < repeat; round++) {
    for (const threads of o.threads.split(',').map(Number)) {
      for (const dtype of dtypes) {
        const jobs: (() => void)[] = o.with.split(',').map((p) => () => record(p === 'ort' ? 'onnxruntime-node' : 'transformers.js', dtype, threads, peer(o.peers, p, dtype, threads, model)));
        const mine = () => record('gpt2-tfjs', dtype, threads, ours(dtype === 'q8' ? q8Model : model, threads));
        if (round % 2 === 0) jobs.push(mine);
        else jobs.unshift(mine); // odd rounds run ours first: neither side always follows the other
        for (const job of jobs) job();
      }
    }
  }
  const median = (v: number[]) => {
    const s = [...v].sort((a, b) => a - b);
    return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
  };
  const rows = [...runs.values()].map(({ who, dtype, threads, fs: list }) => {
    const pick = (k: 'prefill256' | 'decode') => list.map((f) => f[k]);
    const rss = list.map((f) => f.peakRssMiB).filter((x): x is number => x !== undefined);
    const f: Figures = { prefill256: median(pick('prefill256')), decode: median(pick('decode')), ...(rss.length ? { peakRssMiB: Math.max(...rss) } : {}) };
    const range = (v: number[], d: number) => (v.length > 1 ? ` (${Math.min(...v).toFixed(d)}–${Math.max(...v).toFixed(d)})` : '');
    return { who, dtype, threads, f, spread: { prefill256: range(pick('prefill256'), 1), decode: range(pick('decode'), 2) } };
  });
  if (o.json) {
    for (const r of rows) process.stdout.write(JSON.stringify({ who: r.who, dtype: r.dtype, threads: r.threads, ...r.f }) + '\n');
    return;
  }
  const lines = ['| who | dtype | threads | prefill 256 tok/s | decode tok/s | ours ÷ it: prefill | ours ÷ it: decode |', '|---|---|---:|---:|---:|---:|---:|'];
  for (const r of rows) {
    const me = rows.find((x) => x.who === 'gpt2-tfjs' && x.dtype === r.dtype && x.threads === r.threads)!.f;
    const ratio = (a: number, b: number) => (r.who === 'gpt2-tfjs' ? '' : (a / b).toFixed(2));
    lines.push(`| ${r.who} | ${r.dtype} | ${r.threads} | ${r.f.prefill256.toFixed(1)}${r.spread.prefill256} | ${r.f.decode.toFixed(2)}${r.spread.decode} | ${ratio(me.prefill256, r.f.prefill256)} | ${ratio(me.decode, r.f.decode)} |`);
  }
  if (repeat > 1) lines.push('', `medians of ${repeat} rounds (range in brackets); ratios are of the medians`);
  process.stdout.write(lines.join('\n') + '\n');
}

main();
