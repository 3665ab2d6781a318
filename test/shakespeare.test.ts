/**
 * The bundled model (weights/gpt2-shakespeare): JS scores the held-out validation split like the
 * PyTorch training script recorded (float64 eval of the exported F16 weights), and greedy text from
 * three prompts equals PyTorch's (tools/train_shakespeare.py writes training.json). The whole split
 * (132 windows, ~2 min on wasm) is scored by `gpt2-tfjs score`; the tests take a slice of it.
 */
import * as fs from 'fs';
import * as path from 'path';
import { GPT2, loadModel } from '../src';
import { ROOT, corpusPath } from './helpers';

const DIR = path.join(ROOT, 'weights', 'gpt2-shakespeare');
const CORPUS = corpusPath();

interface Training {
  data: { tokens: number; split_index: number; val_tokens: number };
  window: { n_positions: number; num_windows: number };
  val_loss: number;
  first_windows: { window: number; start_token_index_in_ids: number; mean_loss: number }[];
  first_window_ids: number[];
  greedy: { n_new_tokens: number; cases: { prompt: string; prompt_ids: number[]; generated_ids: number[]; min_top2_logit_margin: number }[] };
}
const tr = JSON.parse(fs.readFileSync(path.join(DIR, 'training.json'), 'utf8')) as Training;

test('loadModel() with no argument is the bundled Shakespeare model', async () => {
  const g = await loadModel(undefined, { backend: 'wasm' });
  try {
    expect(g.config.nPositions).toBe(tr.window.n_positions);
    expect(g.tokenizer).not.toBeNull();
  } finally {
    g.dispose();
  }
});

describe.each(['wasm', 'cpu'] as const)('gpt2-shakespeare on %s', (backend) => {
  let g: GPT2;
  let val: number[];
  beforeAll(async () => {
    g = await loadModel(DIR, { backend });
    const ids = g.encode(fs.readFileSync(CORPUS, 'utf8'));
    expect(ids.length).toBe(tr.data.tokens);
    val = ids.slice(tr.data.split_index);
  });
  afterAll(() => g.dispose());

  test('the validation split starts where training put it', () => {
    expect(val.length).toBe(tr.data.val_tokens);
    expect(val.slice(0, tr.window.n_positions)).toEqual(tr.first_window_ids);
  });

  test('score() of the first validation windows equals the PyTorch losses (1e-3 relative)', async () => {
    const T = tr.window.n_positions;
    const n = backend === 'cpu' ? 2 : tr.first_windows.length;
    for (const w of tr.first_windows.slice(0, n)) {
      const r = await g.score(val.slice(w.window * T, (w.window + 1) * T));
      expect(r.tokens).toBe(T - 1);
      expect(Math.abs(r.loss - w.mean_loss) / w.mean_loss).toBeLessThan(1e-3);
    }
  });

  test.each(tr.greedy.cases.map((c) => [c.prompt, c] as const))('greedy from %j equals PyTorch', async (_p, c) => {
    expect(g.encode(c.prompt)).toEqual(c.prompt_ids);
    const r = await g.generate(c.prompt, { temperature: 0, maxNewTokens: tr.greedy.n_new_tokens, eosTokenId: null });
    expect(r.tokens).toEqual(c.generated_ids);
  });
});
