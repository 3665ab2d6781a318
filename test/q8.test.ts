/**
 * q8 (int8 weights) end to end: the converter against the NumPy quantizer (bit-exact), loading on
 * every backend (int8 kernels on wasm, dequantized elsewhere) against the NumPy reference, the int8
 * kernels against an exact JS simulation of their integer arithmetic, and malformed q8 files.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import * as tf from '../src/tf';
import { GPT2, engineInfo, loadModel, quantizeModel, readSafetensorsHeader, writeSafetensors } from '../src';
import { setBackend } from '../src/backend';
import { argmax } from '../src/generate/sampling';
import { openSource } from '../src/io/source';
import { convertToTfjs } from '../src/io/weights';
import { Q8Weight } from '../src/model/params';
import { dequantize, packPanels, panelDims, quantize, unpackPanels } from '../src/model/quantize';
import { setWasmKernelsDisabled, wasmKernelsActive } from '../src/model/wasm/instance';
import { runGatherQ8, runLinearQ8, runLinearQ8WeightOnly } from '../src/model/wasm/register';
import { ROOT, TINY_DIR, caught, fixture, nodeBackends, runCli, runScript } from './helpers';

const Q8_DIR = path.join(ROOT, 'weights', 'tiny-random-q8');

interface Logits {
  logits: number[][];
  argmax: number[];
  top2Margin: number[];
}
interface Q8Fixture {
  cases: { ids: number[]; columns: number[]; dequant: Logits; w8a8: Logits }[];
  greedy: { prompt: number[]; newTokens: number; dequant: number[]; w8a8: number[] }[];
}
const fx = fixture<Q8Fixture>('tiny_q8.json');

const tmp = () => fs.mkdtempSync(path.join(os.tmpdir(), 'gpt2-q8-'));

/** name -> stored bytes and dtype, for every tensor of a safetensors file. */
function tensorsOf(file: string): Map<string, { dtype: string; shape: number[]; bytes: Buffer }> {
  const buf = fs.readFileSync(file);
  const h = readSafetensorsHeader(new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength));
  return new Map([...h.entries].map(([k, e]) => [k, { dtype: e.dtype, shape: e.shape, bytes: buf.subarray(e.begin, e.end) }]));
}

describe('q8 format and converter', () => {
  test('quantize() is symmetric per column / per row, rounds half to even, clamps to ±127, and a zero column has scale 0', () => {
    const w = Float32Array.from([1, -2, 0, 0.5, 2, 0, 127 / 254, -1, 0]); // [3, 3]
    const cols = quantize(w, 3, 3, false);
    expect(Array.from(cols.scale)).toEqual([Math.fround(1 / 127), Math.fround(2 / 127), 0]);
    expect(Array.from(cols.q)).toEqual([127, -127, 0, 64, 127, 0, 64, -64, 0]); // 63.5 -> 64 (even), 0.5*127 = 63.5 -> 64
    const rows = quantize(w, 3, 3, true);
    expect(Array.from(rows.scale)).toEqual([Math.fround(2 / 127), Math.fround(2 / 127), Math.fround(1 / 127)]);
    expect(Array.from(dequantize(rows.q, rows.scale, 3, 3, true)).every((v, i) => Math.abs(v - w[i]) <= rows.scale[Math.floor(i / 3)] / 2 + 1e-7)).toBe(true);
  });

  test('packPanels / unpackPanels round-trip any shape (K not a multiple of 4, N not of 16), and the transposed form equals packing W^T', () => {
    for (const [K, N] of [[5, 3], [32, 16], [33, 40], [64, 17]]) {
      const w = Float32Array.from({ length: K * N }, (_, i) => Math.sin(i * 1.7) * 3);
      const { q, scale } = quantize(w, K, N, false);
      const packed = packPanels(q, K, N, false);
      expect(packed.length).toBe(panelDims(K, N).words);
      expect(Array.from(unpackPanels(packed, scale, K, N))).toEqual(Array.from(dequantize(q, scale, K, N, false)));
      const qt = new Int8Array(N * K);
      for (let k = 0; k < K; k++) for (let j = 0; j < N; j++) qt[j * K + k] = q[k * N + j];
      expect(Array.from(packPanels(qt, K, N, true))).toEqual(Array.from(packed));
    }
  });

  test('convert --quantize q8 writes exactly what the NumPy quantizer writes (every int8 weight and scale bit-identical), config and tokenizer files', async () => {
    const out = tmp();
    const r = await quantizeModel(openSource(TINY_DIR), out);
    const got = tensorsOf(path.join(out, 'model.safetensors'));
    const want = tensorsOf(path.join(Q8_DIR, 'model.safetensors'));
    expect([...got.keys()].sort()).toEqual([...want.keys()].sort());
    for (const [k, w] of want) {
      const g = got.get(k)!;
      expect([k, g.dtype, g.shape]).toEqual([k, w.dtype, w.shape]);
      expect(g.bytes.equals(w.bytes)).toBe(true);
    }
    expect(got.get('h.0.attn.c_attn.weight')!.dtype).toBe('I8');
    expect(got.get('h.0.attn.c_attn.weight_scale')!.shape).toEqual([96]);
    expect(got.get('wte.weight_scale')!.shape).toEqual([50257]);
    const cfg = JSON.parse(fs.readFileSync(path.join(out, 'config.json'), 'utf8'));
    expect(cfg.quantization_config).toEqual(JSON.parse(fs.readFileSync(path.join(Q8_DIR, 'config.json'), 'utf8')).quantization_config);
    expect(r.copied).toEqual(['config.json', 'vocab.json', 'merges.txt']);
    expect(r.bytes / r.floatBytes).toBeLessThan(0.3);
  });

  test('quantizeModel takes a folder path; an aborted conversion is ABORTED and writes nothing', async () => {
    const out = tmp();
    const r = await quantizeModel(TINY_DIR, out);
    expect(r.tensors).toBe(38);
    const ac = new AbortController();
    ac.abort();
    const stopped = tmp();
    expect((await caught(quantizeModel(TINY_DIR, stopped, { signal: ac.signal }))).code).toBe('ABORTED');
    expect(fs.readdirSync(stopped)).toEqual([]);
    expect((await caught(quantizeModel(TINY_DIR, ''))).code).toBe('BAD_OPTION');
  });

  test('the CLI converts, and refuses what it cannot: no target, a q8 source, a q8 model to tfjs', async () => {
    const out = tmp();
    const ok = await runCli(['convert', '--quantize', 'q8', TINY_DIR, out, '-q']);
    expect(ok.code).toBe(0);
    expect(ok.stdout).toMatch(/wrote .*model\.safetensors: 38 tensors, .* MB \(0\.2\d\dx the .* MB of float32 weights\)/);
    const none = await runCli(['convert', TINY_DIR, tmp()]);
    expect([none.code, none.stderr]).toEqual([1, expect.stringMatching(/--to tfjs, or --quantize q8 \[BAD_OPTION\]/)]);
    const again = await runCli(['convert', '--quantize', 'q8', out, tmp()]);
    expect(again.stderr).toMatch(/already q8: quantize the float model \[BAD_OPTION\]/);
    expect((await caught(convertToTfjs(openSource(Q8_DIR), tmp()))).message).toMatch(/is int8: a q8 model cannot be written as a tfjs manifest/);
    const help = await runCli(['convert', '--help']);
    expect(help.stdout).toMatch(/--quantize <scheme>/);
  });
});

describe.each(nodeBackends())('q8 model parity on %s', (backend) => {
  let model: GPT2;
  let baseline: number;
  beforeAll(async () => {
    model = await loadModel(Q8_DIR, { backend });
    baseline = tf.memory().numTensors;
  });
  afterAll(() => model.dispose());
  /** wasm runs the int8 kernels (the NumPy simulation of their integer arithmetic); other backends the dequantized weights. */
  const kind = (): 'w8a8' | 'dequant' => (backend === 'wasm' ? 'w8a8' : 'dequant');

  test('holds the weights as the backend allows, and engineInfo says so', () => {
    expect(model.model.weights).toEqual({ format: 'q8', held: backend === 'wasm' ? 'int8' : 'float32' });
    const q8 = engineInfo().q8;
    expect(q8.int8Kernels).toBe(backend === 'wasm');
    if (backend !== 'wasm') expect(q8.reason).toMatch(/dequantized to float32 at load/);
  });

  test.each(fx.cases.map((c, i) => [i, c] as const))('case %i: logits within 1e-4 of the NumPy reference, argmax identical', async (_i, c) => {
    const want = c[kind()];
    const V = model.config.vocabSize;
    const got = await model.forward(c.ids);
    let worst = 0;
    want.logits.forEach((row, t) => {
      c.columns.forEach((col, j) => (worst = Math.max(worst, Math.abs(got[t * V + col] - row[j]))));
      if (want.top2Margin[t] > 1e-3) expect(argmax(got.subarray(t * V, (t + 1) * V))).toBe(want.argmax[t]);
    });
    expect(worst).toBeLessThanOrEqual(1e-4);
  });

  test.each(fx.greedy.map((g, i) => [i, g] as const))('greedy %i: 24 new tokens identical (KV-cache decode)', async (_i, g) => {
    const r = await model.generate(g.prompt, { maxNewTokens: g.newTokens, temperature: 0, eosTokenId: null });
    expect([...g.prompt, ...r.tokens]).toEqual(g[kind()]);
  });

  test('leaks no tensor', () => {
    expect(tf.memory().numTensors).toBe(baseline);
  });
});

describe('q8 on wasm with the kernels switched off', () => {
  test('dequantizes on first use (one warning), matches the dequantized reference, and dispose frees those copies too', async () => {
    await setBackend('wasm');
    const before = tf.memory().numTensors;
    const m = await loadModel(Q8_DIR, { backend: 'wasm' });
    expect(m.model.weights.held).toBe('int8');
    const warn = jest.spyOn(console, 'warn').mockImplementation(() => undefined);
    setWasmKernelsDisabled(true);
    try {
      const c = fx.cases[1];
      const got = await m.forward(c.ids);
      const V = m.config.vocabSize;
      let worst = 0;
      c.dequant.logits.forEach((row, t) => c.columns.forEach((col, j) => (worst = Math.max(worst, Math.abs(got[t * V + col] - row[j])))));
      expect(worst).toBeLessThanOrEqual(1e-4);
      await m.forward(c.ids);
      expect(warn.mock.calls.filter(([s]) => /kernel-packed weights are being unpacked to float32/.test(String(s)))).toHaveLength(1);
    } finally {
      setWasmKernelsDisabled(false);
      warn.mockRestore();
    }
    m.dispose();
    expect(tf.memory().numTensors).toBe(before);
  });
});

describe('int8 kernels', () => {
  beforeAll(async () => {
    await setBackend('wasm');
    expect(wasmKernelsActive()).toBe(true);
  });

  const f = Math.fround;
  const rint = (x: number) => {
    const r = Math.round(x);
    return r - x === 0.5 && r % 2 !== 0 ? r - 1 : r;
  };
  /** kernels.c linear_q8 in plain JS: per-row int8 activations, exact int32 sums, float32 epilogue. */
  function simulate(x: Float32Array, M: number, K: number, q: Int8Array, scale: Float32Array, N: number, b: Float32Array | null, relu: boolean): Float32Array {
    const y = new Float32Array(M * N);
    for (let m = 0; m < M; m++) {
      let mx = 0;
      for (let k = 0; k < K; k++) mx = Math.max(mx, Math.abs(x[m * K + k]));
      const inv = f(127 / mx);
      const xs = f(mx / 127);
      const xq = Array.from({ length: K }, (_, k) => (mx > 0 ? Math.max(-127, Math.min(127, rint(f(x[m * K + k] * inv)))) : 0));
      for (let j = 0; j < N; j++) {
        let acc = 0;
        for (let k = 0; k < K; k++) acc += xq[k] * q[k * N + j];
        let v = f(f(acc) * f(xs * scale[j]));
        if (b) v = f(v + b[j]);
        y[m * N + j] = relu ? Math.max(0, v) : v;
      }
    }
    return y;
  }
  const weight = (q: Int8Array, scale: Float32Array, K: number, N: number) => {
    const s = new Float32Array(panelDims(K, N).N16);
    s.set(scale);
    return new Q8Weight(tf.tensor1d(packPanels(q, K, N, false), 'int32'), tf.tensor1d(s), K, N);
  };

  test.each([
    [1, 32, 16, true, false], [1, 768, 2304, true, false], [3, 37, 50, false, true], [2, 64, 17, true, true],
    [8, 128, 100, true, false], [17, 96, 33, false, false], [40, 200, 72, true, true],
  ])('linear_q8 M=%i K=%i N=%i (bias %s, relu %s) equals the exact simulation bit for bit', (M, K, N, bias, relu) => {
    const w = Float32Array.from({ length: K * N }, (_, i) => Math.sin(i * 0.37 + 1) * 0.3);
    const { q, scale } = quantize(w, K, N, false);
    const x = Float32Array.from({ length: M * K }, (_, i) => Math.cos(i * 0.91) * (1 + (i % 7))); // uneven magnitudes: exercises the per-row scale
    if (M > 2) x.fill(0, 2 * K, 3 * K); // an all-zero row: scale 0, output = bias
    const b = bias ? Float32Array.from({ length: N }, (_, j) => j / N - 0.5) : null;
    const qw = weight(q, scale, K, N);
    const before = tf.memory().numTensors;
    const got = tf.tidy(() => runLinearQ8(tf.tensor2d(x, [M, K]), qw, b && tf.tensor1d(b), relu ? 'relu' : 'none').dataSync());
    expect(tf.memory().numTensors).toBe(before);
    expect(Array.from(got)).toEqual(Array.from(simulate(x, M, K, q, scale, N, b, relu)));
    qw.dispose();
  });

  test('the weight-only variant (measured, not used by the engine) computes x @ dequant(W) + b', () => {
    const [M, K, N] = [3, 70, 40];
    const w = Float32Array.from({ length: K * N }, (_, i) => Math.sin(i * 0.37 + 1) * 0.3);
    const { q, scale } = quantize(w, K, N, false);
    const deq = dequantize(q, scale, K, N, false);
    const x = Float32Array.from({ length: M * K }, (_, i) => Math.cos(i * 0.91));
    const b = Float32Array.from({ length: N }, (_, j) => j / N);
    const qw = weight(q, scale, K, N);
    const got = tf.tidy(() => runLinearQ8WeightOnly(tf.tensor2d(x, [M, K]), qw, tf.tensor1d(b), 'none').dataSync());
    let worst = 0;
    for (let m = 0; m < M; m++) {
      for (let j = 0; j < N; j++) {
        let s = b[j];
        for (let k = 0; k < K; k++) s += x[m * K + k] * deq[k * N + j];
        worst = Math.max(worst, Math.abs(got[m * N + j] - s));
      }
    }
    expect(worst).toBeLessThan(1e-5);
    qw.dispose();
  });

  test('gather_q8 reads embedding rows out of the head panels: f32(q) * scale exactly', () => {
    const V = 70, d = 24;
    const table = Float32Array.from({ length: V * d }, (_, i) => Math.sin(i * 0.13));
    const { q, scale } = quantize(table, V, d, true);
    const s = new Float32Array(panelDims(d, V).N16);
    s.set(scale);
    const head = new Q8Weight(tf.tensor1d(packPanels(q, d, V, true), 'int32'), tf.tensor1d(s), d, V);
    const ids = [0, 69, 15, 16, 33];
    const got = tf.tidy(() => runGatherQ8(head, tf.tensor1d(ids, 'int32')).dataSync());
    const deq = dequantize(q, scale, V, d, true);
    expect(Array.from(got)).toEqual(ids.flatMap((v) => Array.from(deq.subarray(v * d, (v + 1) * d))));
    head.dispose();
  });

  test('one thread and two give bit-identical q8 logits (prefill and decode)', async () => {
    const run = (threads: string) =>
      runScript<{ hash: string; threads: number }>(
        [
          "const { loadModel, engineInfo } = require('./src');",
          "const { createHash } = require('crypto');",
          '(async () => {',
          `  const m = await loadModel(${JSON.stringify(Q8_DIR)}, { backend: 'wasm' });`,
          '  const ids = Array.from({ length: 40 }, (_, i) => (i * 7919 + 13) % 50257);',
          '  const pre = await m.forward(ids);',
          '  const r = await m.generate(ids.slice(0, 5), { maxNewTokens: 12, temperature: 0, logprobs: 0 });',
          "  const h = createHash('sha256').update(Buffer.from(pre.buffer)).update(JSON.stringify(r.tokens)).digest('hex');",
          '  console.log(JSON.stringify({ hash: h, threads: engineInfo().kernels.threads }));',
          '})();',
        ],
        { GPT2_TFJS_THREADS: threads },
      );
    const one = await run('1');
    const two = await run('2');
    expect(one.threads).toBe(1);
    expect(two.threads).toBe((os.availableParallelism?.() ?? os.cpus().length) >= 2 ? 2 : 1);
    expect(two.hash).toBe(one.hash);
  }, 60_000);
});

describe('malformed q8 checkpoints: typed errors, nothing left behind', () => {
  /** A copy of the tiny q8 model with its tensors and config edited. */
  async function variant(edit: (t: Map<string, { data: Float32Array | Int8Array; shape: number[] }>, cfg: Record<string, unknown>) => void): Promise<string> {
    const dir = tmp();
    const raw = fs.readFileSync(path.join(Q8_DIR, 'model.safetensors'));
    const h = readSafetensorsHeader(new Uint8Array(raw.buffer, raw.byteOffset, raw.byteLength));
    const t = new Map<string, { data: Float32Array | Int8Array; shape: number[] }>();
    for (const [k, e] of h.entries) {
      const bytes = raw.subarray(e.begin, e.end);
      const copy = new Uint8Array(bytes).buffer;
      t.set(k, { data: e.dtype === 'I8' ? new Int8Array(copy) : new Float32Array(copy), shape: e.shape });
    }
    const cfg = JSON.parse(fs.readFileSync(path.join(Q8_DIR, 'config.json'), 'utf8'));
    edit(t, cfg);
    fs.writeFileSync(path.join(dir, 'model.safetensors'), writeSafetensors(Object.fromEntries(t)));
    fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(cfg));
    return dir;
  }

  type Tensors = Map<string, { data: Float32Array | Int8Array; shape: number[] }>;
  type Edit = (t: Tensors, cfg: Record<string, unknown>) => void;
  const scales = (t: Tensors, k: string) => t.get(k)!.data as Float32Array;
  const cases: [string, Edit, string, RegExp][] = [
    ['a missing scale', (t) => { t.delete('h.1.mlp.c_fc.weight_scale'); }, 'BAD_WEIGHTS', /missing 1 tensor\(s\): h\.1\.mlp\.c_fc\.weight_scale/],
    ['a scale of the wrong shape', (t) => { t.set('h.0.attn.c_proj.weight_scale', { data: new Float32Array(5), shape: [5] }); }, 'BAD_WEIGHTS', /h\.0\.attn\.c_proj\.weight_scale .*has shape \[5\], config needs \[32\]/],
    ['a negative scale', (t) => { scales(t, 'wte.weight_scale')[7] = -1; }, 'BAD_WEIGHTS', /wte\.weight_scale .*holds -1 at index 7: q8 scales must be finite and >= 0/],
    ['a NaN scale', (t) => { scales(t, 'h.0.mlp.c_proj.weight_scale')[0] = NaN; }, 'BAD_WEIGHTS', /holds NaN at index 0/],
    ['a float weight where int8 belongs', (t) => { t.set('h.0.attn.c_attn.weight', { data: new Float32Array(32 * 96), shape: [32, 96] }); }, 'BAD_WEIGHTS', /h\.0\.attn\.c_attn\.weight .*is float, but config\.json's quantization_config \(q8\) needs it int8/],
    ['int8 weights without quantization_config', (_t, cfg) => { delete cfg.quantization_config; }, 'BAD_WEIGHTS', /is int8, but config\.json has no quantization_config/],
    ['an unknown quant_method', (_t, cfg) => { cfg.quantization_config = { quant_method: 'gptq', bits: 4 }; }, 'BAD_CONFIG', /quantization_config has quant_method "gptq"/],
    ['a quantization_config that is not an object', (_t, cfg) => { cfg.quantization_config = 'q8'; }, 'BAD_CONFIG', /quantization_config must be an object/],
    ['bits other than 8', (_t, cfg) => { cfg.quantization_config = { ...(cfg.quantization_config as object), bits: 4 }; }, 'BAD_CONFIG', /has bits 4/],
  ];
  test.each(cases)('%s', async (_name, edit, code, message) => {
    const dir = await variant(edit);
    for (const backend of ['cpu', 'wasm'] as const) {
      await setBackend(backend);
      const before = tf.memory().numTensors;
      const e = await caught(loadModel(dir, { backend }));
      expect([e.code, e.message]).toEqual([code, expect.stringMatching(message)]);
      expect(tf.memory().numTensors).toBe(before);
    }
  });
});
