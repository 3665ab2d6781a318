/**
 * q8 accuracy on held-out text: the float model and its q8 conversion, side by side, over the last
 * 10% of a corpus (the bundled model's validation split: weights/gpt2-shakespeare/training.json), in
 * non-overlapping windows of the model's context. Prints both losses, their ratio, and the mean
 * per-position KL(float ‖ q8) in nats. Numbers are printed, never asserted.
 *
 *   npx tsx bench/q8-accuracy.ts [--model weights/gpt2-shakespeare] [--text ../shared/data/tinyshakespeare.txt]
 *                                [--backend wasm] [--windows N] [--json]
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { Command } from 'commander';
import { BackendName, engineInfo, loadModel, quantizeModel } from '../src';
import { openSource } from '../src/io/source';

/** log-softmax of row t of z [T, V] into out. */
function logSoftmax(z: Float32Array, t: number, V: number, out: Float64Array): void {
  let max = -Infinity;
  for (let i = 0; i < V; i++) max = Math.max(max, z[t * V + i]);
  let s = 0;
  for (let i = 0; i < V; i++) s += Math.exp(z[t * V + i] - max);
  const lse = Math.log(s) + max;
  for (let i = 0; i < V; i++) out[i] = z[t * V + i] - lse;
}

async function main(): Promise<void> {
  const o = new Command('q8-accuracy')
    .option('--model <dir>', 'float model folder', path.join(__dirname, '..', 'weights', 'gpt2-shakespeare'))
    .option('--text <file>', 'corpus (the last 10% of its tokens are scored)', path.join(__dirname, '..', '..', 'shared', 'data', 'tinyshakespeare.txt'))
    .option('--backend <name>', 'tfjs backend', 'wasm')
    .option('--windows <n>', 'score only the first n windows', (v) => Number(v))
    .option('--json', 'one JSON object')
    .parse()
    .opts<{ model: string; text: string; backend: BackendName; windows?: number; json?: boolean }>();
  const out = fs.mkdtempSync(path.join(os.tmpdir(), 'gpt2-q8-acc-'));
  const conv = await quantizeModel(openSource(o.model), out);
  const float = await loadModel(o.model, { backend: o.backend });
  const q8 = await loadModel(out, { backend: o.backend });
  const ids = float.encode(fs.readFileSync(o.text, 'utf8'));
  const val = ids.slice(Math.floor(0.9 * ids.length));
  const T = float.config.nPositions;
  const V = float.config.vocabSize;
  const windows = Math.min(Math.floor(val.length / T), o.windows ?? Infinity);
  const lf = new Float64Array(V);
  const lq = new Float64Array(V);
  let nllF = 0;
  let nllQ = 0;
  let kl = 0;
  let n = 0;
  for (let w = 0; w < windows; w++) {
    const win = val.slice(w * T, (w + 1) * T);
    const zf = await float.forward(win);
    const zq = await q8.forward(win);
    for (let t = 0; t < T - 1; t++) {
      logSoftmax(zf, t, V, lf);
      logSoftmax(zq, t, V, lq);
      nllF -= lf[win[t + 1]];
      nllQ -= lq[win[t + 1]];
      let k = 0;
      for (let i = 0; i < V; i++) k += Math.exp(lf[i]) * (lf[i] - lq[i]);
      kl += k;
      n++;
    }
  }
  const r = {
    model: o.model,
    backend: o.backend,
    q8Held: q8.model.weights.held,
    engine: engineInfo().engine,
    windows,
    predictions: n,
    lossFloat: nllF / n,
    lossQ8: nllQ / n,
    lossRatio: nllQ / nllF,
    meanKL: kl / n,
    floatBytes: conv.floatBytes,
    q8Bytes: conv.bytes,
  };
  float.dispose();
  q8.dispose();
  fs.rmSync(out, { recursive: true, force: true });
  if (o.json) process.stdout.write(JSON.stringify(r) + '\n');
  else {
    process.stdout.write(
      `${r.model} on ${r.backend} (q8 held ${r.q8Held}), ${windows} windows, ${n} predictions\n` +
        `loss float ${r.lossFloat.toFixed(5)} | q8 ${r.lossQ8.toFixed(5)} (${((r.lossRatio - 1) * 100).toFixed(3)}%) | mean KL(float‖q8) ${r.meanKL.toExponential(3)} nats\n`,
    );
  }
}

main().catch((e) => {
  process.stderr.write(`${(e as Error).stack ?? e}\n`);
  process.exitCode = 1;
});
