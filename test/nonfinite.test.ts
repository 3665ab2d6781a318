/**
 * Non-finite weights never pass silently: sampling (every mode, greedy included), scoring and
 * logprobs refuse NaN/Infinity logits with NON_FINITE, and `validate` / `gpt2-tfjs check` find them
 * at load.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import * as tf from '@tensorflow/tfjs-core';
import { GPT2, GenerateOptions, loadModel } from '../src';
import { WriteTensor, readSafetensorsHeader, readTensor, writeSafetensors } from '../src/io/safetensors';
import { TINY_DIR, caught, runCli } from './helpers';

let dir: string;
let allNanDir: string;

/** The tiny model with `edit` applied to wte, tokenizer files included. */
function tinyWith(edit: (wte: Float32Array) => void): string {
  const out = fs.mkdtempSync(path.join(os.tmpdir(), 'gpt2-nan-'));
  for (const f of fs.readdirSync(TINY_DIR)) if (f !== 'model.safetensors') fs.copyFileSync(path.join(TINY_DIR, f), path.join(out, f));
  const bytes = new Uint8Array(fs.readFileSync(path.join(TINY_DIR, 'model.safetensors')));
  const tensors: Record<string, WriteTensor> = {};
  for (const e of readSafetensorsHeader(bytes).entries.values()) {
    const t = readTensor(bytes, e);
    const data = Float32Array.from(t.data);
    if (e.name === 'wte.weight') edit(data);
    tensors[e.name] = { data, shape: t.shape, dtype: 'F32' };
  }
  fs.writeFileSync(path.join(out, 'model.safetensors'), writeSafetensors(tensors));
  return out;
}

beforeAll(() => {
  dir = tinyWith((w) => (w[5] = NaN)); // one NaN in wte: every logit is NaN through the tied head
  allNanDir = tinyWith((w) => w.fill(NaN));
});
afterAll(() => {
  for (const d of [dir, allNanDir]) fs.rmSync(d, { recursive: true, force: true });
});

describe.each(['cpu', 'wasm'] as const)('on %s', (backend) => {
  let gpt: GPT2;
  beforeAll(async () => {
    gpt = await loadModel(dir, { backend });
  });
  afterAll(() => gpt.dispose());

  const modes: [string, GenerateOptions][] = [
    ['greedy', { temperature: 0 }],
    ['temperature', { temperature: 0.8, seed: 1 }],
    ['topK', { topK: 5, seed: 1 }],
    ['topP', { topP: 0.9, seed: 1 }],
    ['minP', { minP: 0.1, seed: 1 }],
    ['repetitionPenalty', { repetitionPenalty: 1.3, seed: 1 }],
    ['logprobs', { temperature: 0, logprobs: 2 }],
  ];
  test.each(modes)('%s sampling → NON_FINITE, no tensor left', async (_name, o) => {
    const before = tf.memory().numTensors;
    const e = await caught(gpt.generate('Hello', { maxNewTokens: 4, ...o }));
    expect(e.code).toBe('NON_FINITE');
    expect(e.message).toMatch(/non-finite logit \(NaN for token id 0\).*gpt2-tfjs check/);
    expect(tf.memory().numTensors).toBe(before);
  });

  test('a batch fails whole, and the model still works afterwards for what it can do', async () => {
    const e = await caught(gpt.generateBatch(['a', 'b'], { maxNewTokens: 2, seed: 3 }));
    expect(e.code).toBe('NON_FINITE');
    expect((await gpt.forward([1, 2])).length).toBe(2 * gpt.config.vocabSize);
  });

  test('score → NON_FINITE instead of a null loss', async () => {
    const all = await loadModel(allNanDir, { backend });
    try {
      const e = await caught(all.score('To be, or not to be'));
      expect(e.code).toBe('NON_FINITE');
    } finally {
      all.dispose();
    }
  });
});

describe('found at load', () => {
  test('loadModel(..., { validate: true }) → NON_FINITE naming wte', async () => {
    const e = await caught(loadModel(dir, { backend: 'cpu', validate: true }));
    expect(e.code).toBe('NON_FINITE');
    expect(e.message).toMatch(/^wte\.weight .* holds NaN at flat index 5 /);
  });

  test('gpt2-tfjs check: exit 1 naming the tensor; exit 0 and "ok" on a good model', async () => {
    const check = (model: string) => runCli(['check', '--model', model, '--backend', 'cpu']);
    const bad = await check(dir);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(/wte\.weight .* holds NaN .*\[NON_FINITE\]/);
    const good = await check(TINY_DIR);
    expect(good.code).toBe(0);
    expect(good.stdout).toMatch(/^ok: every weight is finite/);
  });
});
