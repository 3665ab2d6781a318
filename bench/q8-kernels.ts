/**
 * The q8 kernel choice, measured: decode and prefill of a q8 model with the engine's linear_q8
 * (activations quantized per row to int8, int8 x int8 -> int32 sums) against the weight-only variant
 * linear_q8w (float activations, int8 weights widened to float in registers), on the same packed
 * weights, in the same process. Numbers are printed, never asserted.
 *
 *   npx tsx bench/q8-kernels.ts --model /tmp/peers/models/gpt2-124m-random-q8 [--threads 2] [--new-tokens 64]
 */
import { Command } from 'commander';
import { loadModel } from '../src';
import { KVCache } from '../src/model/kvcache';
import { Q8Weight } from '../src/model/params';
import { wasmEngine } from '../src/model/wasm/engine';
import { runLinearQ8WeightOnly } from '../src/model/wasm/register';
import type { Engine } from '../src/model/engine';

async function main(): Promise<void> {
  const o = new Command('q8-kernels')
    .requiredOption('--model <dir>', 'q8 model folder')
    .option('--threads <n>', 'kernel threads', (v) => Number(v), 2)
    .option('--new-tokens <n>', 'decode steps', (v) => Number(v), 64)
    .option('--prompt-tokens <n>', 'prefill length', (v) => Number(v), 256)
    .parse()
    .opts<{ model: string; threads: number; newTokens: number; promptTokens: number }>();
  const gpt = await loadModel(o.model, { threads: o.threads });
  if (gpt.model.weights.held !== 'int8') throw new Error('not a q8 model on the int8 kernels');
  const original = wasmEngine.linear;
  const weightOnly: Engine['linear'] = (x, w, b, act = 'none') =>
    w instanceof Q8Weight && act !== 'gelu' ? runLinearQ8WeightOnly(x, w, b, act) : original(x, w, b, act);
  const ids = Array.from({ length: o.promptTokens }, (_, i) => (464 + 1009 * i) % 50257);
  const run = async (): Promise<{ prefill: number; decode: number }> => {
    const c = new KVCache([0]);
    try {
      let t0 = performance.now();
      await gpt.model.step([ids], c, { lastOnly: true });
      const prefill = (ids.length / (performance.now() - t0)) * 1000;
      t0 = performance.now();
      for (let i = 0; i < o.newTokens; i++) await gpt.model.step([[100 + i]], c, { lastOnly: true });
      return { prefill, decode: (o.newTokens / (performance.now() - t0)) * 1000 };
    } finally {
      c.dispose();
    }
  };
  const variants: [string, Engine['linear']][] = [['linear_q8 (w8a8)', original], ['linear_q8w (weight-only)', weightOnly]];
  for (let rep = 0; rep < 3; rep++) {
    for (const [name, f] of variants) {
      wasmEngine.linear = f;
      if (rep === 0) await run(); // warm-up
      const r = await run();
      process.stdout.write(`${name.padEnd(26)} prefill ${r.prefill.toFixed(1).padStart(7)} tok/s  decode ${r.decode.toFixed(1).padStart(6)} tok/s\n`);
    }
  }
  wasmEngine.linear = original;
  gpt.dispose();
}

main().catch((e) => {
  process.stderr.write(`${(e as Error).stack ?? e}\n`);
  process.exitCode = 1;
});
