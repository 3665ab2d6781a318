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
 *                            [--with ort,transformersjs] [--json]
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
    .option('--json', 'one JSON object per line')
    .parse()
    .opts<{ peers: string; model?: string; threads: string; dtypes: string; with: string; json?: boolean }>();
  const model = path.resolve(o.model ?? path.join(o.peers, 'models', 'gpt2-124m-random'));
  const q8Model = `${model}-q8`;
  const dtypes = o.dtypes.split(',');
  if (dtypes.includes('q8') && !fs.existsSync(path.join(q8Model, 'model.safetensors'))) {
    execFileSync('node', [CLI, 'convert', '--quantize', 'q8', model, q8Model, '-q'], { stdio: 'inherit' });
  }
  const rows: { who: string; dtype: string; threads: number; f: Figures }[] = [];
  for (const threads of o.threads.split(',').map(Number)) {
    for (const dtype of dtypes) {
      for (const p of o.with.split(',')) {
        const f = peer(o.peers, p, dtype, threads, model);
        rows.push({ who: p === 'ort' ? 'onnxruntime-node' : 'transformers.js', dtype, threads, f });
        process.stderr.write(`${rows.at(-1)!.who} ${dtype} t=${threads}: prefill256 ${f.prefill256.toFixed(1)}, decode ${f.decode.toFixed(2)} tok/s\n`);
      }
      const f = ours(dtype === 'q8' ? q8Model : model, threads);
      rows.push({ who: 'gpt2-tfjs', dtype, threads, f });
      process.stderr.write(`gpt2-tfjs ${dtype} t=${threads}: prefill256 ${f.prefill256.toFixed(1)}, decode ${f.decode.toFixed(2)} tok/s, peak RSS ${f.peakRssMiB?.toFixed(0)} MiB\n`);
    }
  }
  if (o.json) {
    for (const r of rows) process.stdout.write(JSON.stringify({ who: r.who, dtype: r.dtype, threads: r.threads, ...r.f }) + '\n');
    return;
  }
  const lines = ['| who | dtype | threads | prefill 256 tok/s | decode tok/s | ours ÷ it: prefill | ours ÷ it: decode |', '|---|---|---:|---:|---:|---:|---:|'];
  for (const r of rows) {
    const me = rows.find((x) => x.who === 'gpt2-tfjs' && x.dtype === r.dtype && x.threads === r.threads)!.f;
    const ratio = (a: number, b: number) => (r.who === 'gpt2-tfjs' ? '' : (a / b).toFixed(2));
    lines.push(`| ${r.who} | ${r.dtype} | ${r.threads} | ${r.f.prefill256.toFixed(1)} | ${r.f.decode.toFixed(2)} | ${ratio(me.prefill256, r.f.prefill256)} | ${ratio(me.decode, r.f.decode)} |`);
  }
  process.stdout.write(lines.join('\n') + '\n');
}

main();
