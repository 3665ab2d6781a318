/**
 * The WASM SIMD kernels (src/model/wasm) against the same math in plain tf ops, on the wasm
 * backend; the shared-memory rewrite of tfjs-backend-wasm's binary; the second kernel thread.
 * (The model-level parity suites run through these kernels too: on wasm they are the default path.)
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import * as tf from '../src/tf';
import { setBackend } from '../src/backend';
import { KV_GROW, cachePrefix } from '../src/model/engine';
import { MAX_FUSED_ROWS, wasmEngine } from '../src/model/wasm/engine';
import { F32PanelWeight } from '../src/model/params';
import { packPanelsF32 } from '../src/model/quantize';
import { KVCache } from '../src/model/kvcache';
import { KERNELS_BUILT_FOR, blockRunsSoFar, setBlockFusion, ensureKernelThread, memoryOf, setWasmKernelsDisabled, stopKernelThread, wasmKernelThreads, wasmKernelsActive } from '../src/model/wasm/instance';
import { moveRows, runAttend } from '../src/model/wasm/register';
import { KERNELS_FMA_WASM_BASE64, KERNELS_WASM_BASE64 } from '../src/model/wasm/kernels.wasm';
import { KERNEL_ABI, argList, chunkLayout } from '../src/model/wasm/abi';
import { patchMemoryImportToShared, patchToImportSharedMemory } from '../src/model/wasm/shared-memory';
import { KernelTeam } from '../src/model/wasm/threads';
import { EngineInfo, engineInfo, loadModel } from '../src';
import { TINY_DIR, caught, expectSameFloats, maxAbsDiff, runScript } from './helpers';

const rowLinear = (x: tf.Tensor2D, w: tf.Tensor2D, b: tf.Tensor1D | null, act: 'none' | 'relu' | 'gelu_new') => wasmEngine.linear(x, w, b, act);
/** The same product on W packed in 16-column panels (how a loaded model holds its float weights on wasm). */
const panelLinear = (x: tf.Tensor2D, w: tf.Tensor2D, b: tf.Tensor1D | null, act: 'none' | 'relu' | 'gelu_new') => {
  const [K, N] = w.shape;
  return wasmEngine.linear(x, new F32PanelWeight(tf.tensor1d(packPanelsF32(w.dataSync() as Float32Array, K, N, false)), K, N), b, act);
};
const kernelAttend = (q: tf.Tensor2D, k: tf.Tensor3D, v: tf.Tensor3D, B: number, T: number, past: number, mask: tf.Tensor | null, nHead: number, scale: number) =>
  runAttend(q, k, v, mask && (tf.reshape(mask, [B, past + T]) as tf.Tensor2D), { B, T, past, nHead, scale });
/** Writes rows [B, T, d] into the cache buffer at positions [pos, pos + T), in place. */
const writeCacheRows = (buf: tf.Tensor3D, rows: tf.Tensor3D, pos: number) => {
  const r = Array.from({ length: rows.shape[0] }, (_, i) => i);
  moveRows(buf, rows, r, r, 0, rows.shape[1], pos, false);
};

const randn = (shape: number[], seed: number, scale = 0.5) => tf.randomNormal(shape, 0, scale, 'float32', seed);

/**
 * A prefill attention case: queries [B*T, H*hd], cache buffers with 3 spare positions, row b left-padded
 * by min(b, past); maskOf(n) is the additive padding mask over the first n positions. Seeds seed..seed+2.
 */
function prefillCase(B: number, past: number, T: number, H: number, hd: number, seed: number) {
  const D = H * hd;
  const Tk = past + T;
  const pad = Array.from({ length: B }, (_, b) => Math.min(b, past));
  return {
    D,
    Tk,
    pad,
    q: randn([B * T, D], seed, 2) as tf.Tensor2D,
    k: randn([B, Tk + 3, D], seed + 1) as tf.Tensor3D,
    v: randn([B, Tk + 3, D], seed + 2) as tf.Tensor3D,
    maskOf: (n: number) => tf.tensor2d(Float32Array.from({ length: B * n }, (_, i) => ((i % n) < pad[Math.floor(i / n)] ? -3e4 : 0)), [B, n]),
  };
}

/** Runs `f` with our kernels off, so the callers' tf-op fallbacks compute the reference. */
function reference<T>(f: () => T): T {
  setWasmKernelsDisabled(true);
  try {
    return f();
  } finally {
    setWasmKernelsDisabled(false);
  }
}

beforeAll(async () => {
  await setBackend('wasm');
});

describe('wasm kernels', () => {
  test('are active on the wasm backend, with a second thread where the machine has two cores', () => {
    expect(wasmKernelsActive()).toBe(true);
    const cores = os.availableParallelism?.() ?? os.cpus().length;
    expect(wasmKernelThreads()).toBe(cores >= 2 ? 2 : 1);
  });

  test('engineInfo says so: the kernel engine, on the tfjs-backend-wasm version they were built for, no fallback reason', () => {
    const cores = os.availableParallelism?.() ?? os.cpus().length;
    const info = engineInfo();
    expect(info.backend).toBe('wasm');
    expect(info.engine).toBe('wasm-kernels');
    expect(info.kernels.active).toBe(true);
    expect(info.kernels.reason).toBeUndefined();
    expect(info.kernels.threads).toBe(cores >= 2 ? 2 : 1);
    expect(info.kernels.threadReason).toBeUndefined();
    // package.json pins tfjs-backend-wasm; a bump must be checked against the kernels' use of its internals
    expect(info.kernels.backendVersion).toBe(KERNELS_BUILT_FOR);
    expect(require('../package.json').dependencies['@tensorflow/tfjs-backend-wasm']).toBe(KERNELS_BUILT_FOR);
  });

  test('engineInfo says why the kernels are off: turned off, or another backend', async () => {
    setWasmKernelsDisabled(true);
    try {
      const info = engineInfo();
      expect(info.engine).toBe('tf-ops');
      expect(info.kernels).toMatchObject({ active: false, reason: expect.stringMatching(/turned off/) });
    } finally {
      setWasmKernelsDisabled(false);
    }
    await setBackend('cpu');
    try {
      expect(engineInfo()).toMatchObject({ backend: 'cpu', engine: 'tf-ops', kernels: { active: false, reason: expect.stringMatching(/active backend is "cpu"/) } });
    } finally {
      await setBackend('wasm');
    }
    expect(engineInfo().engine).toBe('wasm-kernels');
  });

  test.each([['plain', KERNELS_WASM_BASE64], ['fma', KERNELS_FMA_WASM_BASE64]])('the %s build exports exactly the ABI table: names and argument counts', async (_, b64) => {
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const module = await WebAssembly.compile(bytes as BufferSource).catch(() => null);
    if (!module) return expect(b64).toBe(KERNELS_FMA_WASM_BASE64); // relaxed SIMD not compilable here: only the fma build may be skipped
    const names = WebAssembly.Module.exports(module).filter((e) => e.kind === 'function').map((e) => e.name);
    expect(names.sort()).toEqual(Object.keys(KERNEL_ABI).sort());
    const instance = await WebAssembly.instantiate(module, { env: { memory: new WebAssembly.Memory({ initial: 1 }) } });
    for (const [name, args] of Object.entries(KERNEL_ABI)) expect([name, (instance.exports[name] as (...a: number[]) => void).length]).toEqual([name, args.length]);
  });

  test("the backend's memory is found under either Emscripten glue's name, and its absence is reported", () => {
    const memory = new WebAssembly.Memory({ initial: 1 });
    expect(memoryOf({ wasm: { asm: { memory } } })).toBe(memory);
    expect(memoryOf({ wasm: { wasmExports: { memory } } })).toBe(memory);
    expect(memoryOf({ wasm: {} })).toBeNull();
    expect(memoryOf(undefined)).toBeNull();
  });

  // Rows: decode (1), batched decode (3, 8), the tiled prefill path (16, 64), a lone last row after the
  // tiles (37: row by row), a last tile of 2 or 3 rows (6, 7, 39: the missing rows repeat the last one;
  // K past 256 reloads their running sums between k blocks).
  // Columns: odd widths (not multiples of 4, 8 or 16), and wide enough to split across threads.
  const shapes: [number, number, number][] = [
    [1, 64, 50],
    [1, 768, 2304],
    [3, 300, 1001],
    [6, 64, 40],
    [7, 300, 777],
    [8, 768, 768],
    [8, 1030, 517],
    [16, 64, 40],
    [37, 300, 777],
    [39, 1027, 260],
    [64, 1027, 260],
  ];
  test.each(shapes)('linear [%i, %i] x [%i] on panels with a residual: bit-identical to the product, then a separate add (with bias, without, with relu)', (M, K, N) => {
    tf.tidy(() => {
      const x = randn([M, K], 1) as tf.Tensor2D;
      const w = randn([K, N], 2, 0.05) as tf.Tensor2D;
      const b = randn([N], 3) as tf.Tensor1D;
      const r = randn([M, N], 4) as tf.Tensor2D;
      const pw = new F32PanelWeight(tf.tensor1d(packPanelsF32(w.dataSync() as Float32Array, K, N, false)), K, N);
      for (const [bias, act] of [[b, 'none'], [null, 'none'], [b, 'relu']] as const) {
        const fused = wasmEngine.linear(x, pw, bias, act, r);
        const apart = tf.add(wasmEngine.linear(x, pw, bias, act), r);
        expect(fused.shape).toEqual([M, N]);
        expectSameFloats(fused.dataSync() as Float32Array, apart.dataSync() as Float32Array);
      }
    });
  });

  test.each(shapes.flatMap((sh) => [[...sh, 'row-major'], [...sh, 'panels']] as [number, number, number, string][]))('linear [%i, %i] x [%i] (%s W) with bias, without, and with the fused activations', (M, K, N, layout) => {
    const kernelLinear = layout === 'panels' ? panelLinear : rowLinear;
    tf.tidy(() => {
      const x = randn([M, K], 1) as tf.Tensor2D;
      const w = randn([K, N], 2, 0.05) as tf.Tensor2D;
      const b = randn([N], 3) as tf.Tensor1D;
      const ref = tf.fused.matMul({ a: x, b: w, bias: b }) as tf.Tensor2D;
      const scale = Math.max(1, tf.max(tf.abs(ref)).dataSync()[0]);
      const tol = 2e-6 * scale * Math.sqrt(K);
      const check = (got: tf.Tensor | null, want: tf.Tensor) => {
        expect(got).not.toBeNull();
        expect(got!.shape).toEqual([M, N]);
        expect(maxAbsDiff(got!.dataSync(), want.dataSync())).toBeLessThanOrEqual(tol);
      };
      check(kernelLinear(x, w, b, 'none'), ref);
      check(kernelLinear(x, w, null, 'none'), reference(() => tf.matMul(x, w)));
      check(kernelLinear(x, w, b, 'relu'), tf.relu(ref));
      const c = 2 * Math.sqrt(2 / Math.PI);
      const geluRef = tf.mul(ref, tf.sigmoid(tf.mul(ref, tf.add(tf.mul(tf.square(ref), 0.044715 * c), c))));
      check(kernelLinear(x, w, b, 'gelu_new'), geluRef);
    });
  });

  test('a load reads through a buffer lent from the wasm memory and frees it, also when the load fails', async () => {
    const lent = jest.spyOn(wasmEngine, 'loadBuffer');
    const before = tf.memory().numTensors;
    try {
      const gpt = await loadModel(TINY_DIR, { backend: 'wasm' });
      expect(lent).toHaveBeenCalledTimes(1);
      expect(lent.mock.results[0].value).not.toBeNull(); // the shared memory lends it (a host array otherwise)
      const greedy = await gpt.generate([1, 2, 3], { maxNewTokens: 4, temperature: 0 });
      expect(greedy.tokens).toHaveLength(4);
      gpt.dispose();
      expect(tf.memory().numTensors).toBe(before);
      // a load that fails part way (a NaN in the file's last tensor, found by validate): neither the
      // buffer nor any weight is left behind
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'gpt2-nan-'));
      try {
        fs.copyFileSync(path.join(TINY_DIR, 'config.json'), path.join(dir, 'config.json'));
        const w = Buffer.from(fs.readFileSync(path.join(TINY_DIR, 'model.safetensors')));
        w.writeFloatLE(NaN, w.length - 4);
        fs.writeFileSync(path.join(dir, 'model.safetensors'), w);
        expect(await caught(loadModel(dir, { backend: 'wasm', validate: true }))).toMatchObject({ code: 'NON_FINITE' });
        expect(lent).toHaveBeenCalledTimes(2);
        expect(tf.memory().numTensors).toBe(before);
      } finally {
        fs.rmSync(dir, { recursive: true, force: true });
      }
    } finally {
      lent.mockRestore();
    }
  });

  test('the tied embedding read from the float head panels equals a gather from the [d, V] head', () => {
    tf.tidy(() => {
      const [d, V] = [24, 70];
      const headT = randn([d, V], 9) as tf.Tensor2D;
      const ids = tf.tensor1d([0, 69, 15, 16, 33], 'int32');
      const packed = new F32PanelWeight(tf.tensor1d(packPanelsF32(headT.dataSync() as Float32Array, d, V, false)), d, V);
      expect(Array.from(wasmEngine.embed(packed, ids).dataSync())).toEqual(Array.from(tf.transpose(tf.gather(headT, ids, 1)).dataSync()));
    });
  });

  test('layer norm equals the tf-op version', () => {
    tf.tidy(() => {
      const x = tf.add(randn([7, 770], 4, 3), 5) as tf.Tensor2D;
      const g = randn([770], 5) as tf.Tensor1D;
      const b = randn([770], 6) as tf.Tensor1D;
      const xc = tf.sub(x, tf.mean(x, -1, true));
      const want = tf.add(tf.mul(tf.mul(xc, tf.rsqrt(tf.add(tf.mean(tf.square(xc), -1, true), 1e-5))), g), b);
      expect(maxAbsDiff(wasmEngine.layerNorm(x, g, b, 1e-5).dataSync(), want.dataSync())).toBeLessThanOrEqual(2e-5);
    });
  });

  test.each([
    [1, 1, 12, 64],
    [3, 70, 12, 64],
    [8, 265, 12, 64],
    [2, 9, 4, 10], // head size not a multiple of 4 or 32
  ])('decode attention: B=%i, Tk=%i, H=%i, hd=%i, in a cache buffer with spare room and a padding mask', (B, Tk, H, hd) => {
    tf.tidy(() => {
      const D = H * hd;
      const cap = Tk + 5;
      const q = randn([B, D], 7, 2) as tf.Tensor2D;
      const k = randn([B, cap, D], 8) as tf.Tensor3D;
      const v = randn([B, cap, D], 9) as tf.Tensor3D;
      const pad = Array.from({ length: B }, (_, b) => Math.min(b * 2, Tk - 1));
      const mask = tf.tensor3d(Float32Array.from({ length: B * Tk }, (_, i) => ((i % Tk) < pad[Math.floor(i / Tk)] ? -3e4 : 0)), [B, Tk, 1]);
      const scale = 1 / Math.sqrt(hd);
      const kk = tf.reshape(cachePrefix(k, Tk), [B, Tk, H, hd]);
      const vv = tf.reshape(cachePrefix(v, Tk), [B, Tk, H, hd]);
      const scores = tf.add(tf.mul(tf.sum(tf.mul(tf.reshape(q, [B, 1, H, hd]), kk), -1), scale), mask); // [B, Tk, H]
      const probs = tf.softmax(tf.transpose(scores, [0, 2, 1])); // [B, H, Tk]
      const want = tf.reshape(tf.sum(tf.mul(tf.reshape(tf.transpose(probs, [0, 2, 1]), [B, Tk, H, 1]), vv), 1), [B, D]);
      const got = kernelAttend(q, k, v, B, 1, Tk - 1, mask, H, scale)!;
      expect(maxAbsDiff(got.dataSync(), want.dataSync())).toBeLessThanOrEqual(1e-5);
    });
  });

  // T: queries attend four at a time (a last group of 2 or 3, or 1); hd 36: 32 vector lanes + 4 scalar
  // ones; hd 10: not a multiple of 4, one query at a time
  test.each([
    [1, 0, 7, 12, 64],
    [2, 5, 4, 3, 8],
    [3, 2, 9, 4, 10],
    [2, 3, 10, 2, 36],
    [2, 6, 5, 2, 64],
  ])('prefill attention: B=%i, past=%i, T=%i, H=%i, hd=%i, causal, with padding', (B, past, T, H, hd) => {
    tf.tidy(() => {
      const { D, Tk, q, k, v, pad, maskOf } = prefillCase(B, past, T, H, hd, 13);
      const padMask = maskOf(Tk);
      const full = new Float32Array(B * T * Tk);
      for (let b = 0; b < B; b++) for (let i = 0; i < T; i++) for (let j = 0; j < Tk; j++) if (j > past + i || j < pad[b]) full[(b * T + i) * Tk + j] = -3e4;
      const qh = tf.transpose(tf.reshape(q, [B, T, H, hd]), [0, 2, 1, 3]); // [B, H, T, hd]
      const kh = tf.transpose(tf.reshape(cachePrefix(k, Tk), [B, Tk, H, hd]), [0, 2, 3, 1]); // [B, H, hd, Tk]
      const vh = tf.transpose(tf.reshape(cachePrefix(v, Tk), [B, Tk, H, hd]), [0, 2, 1, 3]); // [B, H, Tk, hd]
      const scores = tf.add(tf.mul(tf.matMul(qh, kh), 1 / Math.sqrt(hd)), tf.reshape(tf.tensor1d(full), [B, 1, T, Tk]));
      const want = tf.reshape(tf.transpose(tf.matMul(tf.softmax(scores), vh), [0, 2, 1, 3]), [B * T, D]);
      const got = kernelAttend(q, k, v, B, T, past, padMask, H, 1 / Math.sqrt(hd))!;
      expect(maxAbsDiff(got.dataSync(), want.dataSync())).toBeLessThanOrEqual(1e-5);
    });
  });

  test.each([
    [2, 3, 10, 2, 36],
    [1, 0, 7, 4, 64],
    [2, 5, 6, 3, 8],
  ])('prefill attention (B=%i, past=%i, T=%i, H=%i, hd=%i) gives each query the bits one decode-step query gets', (B, past, T, H, hd) => {
    tf.tidy(() => {
      const { D, Tk, q, k, v, maskOf } = prefillCase(B, past, T, H, hd, 23);
      const all = kernelAttend(q, k, v, B, T, past, maskOf(Tk), H, 1 / Math.sqrt(hd))!.dataSync() as Float32Array;
      for (let i = 0; i < T; i++) {
        const qi = tf.gather(q, Array.from({ length: B }, (_, b) => b * T + i)) as tf.Tensor2D; // row b's query i
        const one = kernelAttend(qi, k, v, B, 1, past + i, maskOf(past + i + 1), H, 1 / Math.sqrt(hd))!.dataSync() as Float32Array;
        const want = Float32Array.from({ length: B * D }, (_, j) => all[(Math.floor(j / D) * T + i) * D + (j % D)]);
        expectSameFloats(one, want);
      }
    });
  });

  test('a cache write fills only its positions, and refuses one that does not fit', () => {
    const buf = tf.zeros([2, 6, 3]) as tf.Tensor3D;
    const rows = tf.tensor3d([1, 2, 3, 4, 5, 6], [2, 1, 3]);
    writeCacheRows(buf, rows, 4);
    const got = Array.from(buf.dataSync());
    const want = new Array(36).fill(0);
    want.splice(12, 3, 1, 2, 3);
    want.splice(30, 3, 4, 5, 6);
    expect(got).toEqual(want);
    expect(() => writeCacheRows(buf, rows, 6)).toThrow(/does not fit/);
    tf.dispose([buf, rows]);
  });

  test(`decode across the cache's growth boundary (${KV_GROW} positions) equals the full forward`, async () => {
    const model = await loadModel(undefined, { backend: 'wasm' }); // the bundled model: 256 positions
    try {
      const ids = Array.from({ length: KV_GROW + 12 }, (_, i) => (i * 7919) % 50257);
      const full = await model.forward(ids);
      const V = model.config.vocabSize;
      const { KVCache } = await import('../src/model/gpt2');
      const cache = new KVCache([0]);
      await model.model.step([ids.slice(0, 3)], cache);
      let worst = 0;
      for (let t = 3; t < ids.length; t++) {
        const row = await model.model.step([[ids[t]]], cache, { lastOnly: true });
        worst = Math.max(worst, maxAbsDiff(row, full.subarray(t * V, (t + 1) * V)));
      }
      cache.dispose();
      expect(worst).toBeLessThanOrEqual(1e-4);
    } finally {
      model.dispose();
    }
  });
});

describe('KV cache joins and leaves on wasm', () => {
  test('rows copied in place into spare rows, then compacted in place, decode as they would alone', async () => {
    await setBackend('wasm');
    const atStart = tf.memory().numTensors;
    const model = await loadModel(TINY_DIR, { backend: 'wasm' });
    const { KVCache } = await import('../src/model/gpt2');
    const prompts = [[464, 318, 257, 1332, 13], [15496, 995, 0], [40, 716, 407, 3049]];
    const V = model.config.vocabSize;
    const before = tf.memory().numTensors;
    try {
      const alone: Float32Array[] = [];
      for (const p of prompts) {
        const c = new KVCache([0]);
        await model.model.step([p], c, { lastOnly: true });
        alone.push(await model.model.step([[11]], c, { lastOnly: true }));
        c.dispose();
      }
      const batch = new KVCache([]);
      for (const p of prompts) {
        const c = new KVCache([0]);
        await model.model.step([p], c, { lastOnly: true });
        batch.append(c); // the 2nd join makes a buffer with spare rows; the 3rd (shorter) is copied into it
      }
      expect(batch.pad).toEqual([0, 2, 1]);
      expect(batch.layers![0].k.shape[0]).toBeGreaterThan(3);
      const all = await model.model.step([[11], [11], [11]], batch, { lastOnly: true });
      for (let b = 0; b < 3; b++) expect(maxAbsDiff(all.subarray(b * V, (b + 1) * V), alone[b])).toBeLessThanOrEqual(1e-4);
      // the plain tf-op engine reads kernel-built buffers too (spare rows, room to grow): a second batch, kernels off for its step
      const other = new KVCache([]);
      for (const p of prompts) {
        const c = new KVCache([0]);
        await model.model.step([p], c, { lastOnly: true });
        other.append(c);
      }
      expect(other.layers![0].k.shape[0]).toBeGreaterThan(3);
      setWasmKernelsDisabled(true);
      try {
        expect(maxAbsDiff(await model.model.step([[11], [11], [11]], other, { lastOnly: true }), all)).toBeLessThanOrEqual(1e-4);
      } finally {
        setWasmKernelsDisabled(false);
        other.dispose();
      }
      // The tf-op engine computed with float copies of the kernel-packed weights (2 layers x 4 + the head),
      // made once and owned by the model until dispose.
      const unpacked = 2 * 4 + 1;
      batch.keepRows([1, 2]); // the longest row leaves: rows move down and the common padding is trimmed
      expect(batch.pad).toEqual([1, 0]);
      const again = await model.model.step([[12], [12]], batch, { lastOnly: true });
      for (const [slot, b] of [[0, 1], [1, 2]]) {
        const c = new KVCache([0]);
        await model.model.step([[...prompts[b], 11]], c, { lastOnly: true });
        const want = await model.model.step([[12]], c, { lastOnly: true });
        c.dispose();
        expect(maxAbsDiff(again.subarray(slot * V, (slot + 1) * V), want)).toBeLessThanOrEqual(1e-4);
      }
      batch.dispose();
      expect(tf.memory().numTensors).toBe(before + unpacked);
    } finally {
      model.dispose();
    }
    expect(tf.memory().numTensors).toBe(atStart);
  });
});

describe('kernel builds and thread counts', () => {
  /** Greedy ids of the bundled model, and a hash of prefill and decode logits, from a fresh process with the given environment. */
  /** `cores`: what os.availableParallelism() says in that process (more threads than this machine has cores, for the team's code path). */
  const greedyIn = (env: Record<string, string>, cores?: number): Promise<{ tokens: number[]; backend: string; logits: string }> =>
    runScript(
      [
        ...(cores ? [`require('os').availableParallelism = () => ${cores};`] : []),
        "const { loadModel, engineInfo } = require('./src');",
        "const { KVCache } = require('./src/model/kvcache');",
        "const { createHash } = require('crypto');",
        '(async () => {',
        "  const m = await loadModel(undefined, { backend: 'wasm' });",
        "  const r = await m.generate('ROMEO:', { maxNewTokens: 24, temperature: 0 });",
        '  const ids = Array.from({ length: 41 }, (_, i) => (i * 7919 + 13) % 50257);',
        '  const c = new KVCache([0]);',
        '  const pre = await m.model.step([ids.slice(0, 40)], c);', // 40 rows: the tiled prefill path, every position's logits
        '  const dec = await m.model.step([[ids[40]]], c, { lastOnly: true });', // one row: the chunked decode path
        '  c.dispose();',
        '  const c2 = new KVCache([0, 3]);', // two rows (one padded): attention in row chunks
        '  const two = await m.model.step([ids.slice(0, 20), [0, 0, 0, ...ids.slice(20, 37)]], c2);',
        '  const two1 = await m.model.step([[ids[37]], [ids[38]]], c2, { lastOnly: true });',
        '  c2.dispose();',
        "  const logits = createHash('sha256').update(Buffer.from(pre.buffer)).update(Buffer.from(dec.buffer)).update(Buffer.from(two.buffer)).update(Buffer.from(two1.buffer)).digest('hex');",
        '  const k = engineInfo().kernels;',
        '  console.log(JSON.stringify({ tokens: r.tokens, backend: `fma=${k.fma} threads=${k.threads}`, logits }));',
        '})();',
      ],
      env,
    );

  test('threads: 1..cores; more than the machine has, 0, or a fraction is BAD_OPTION naming the range, and nothing changes', async () => {
    const cores = os.availableParallelism?.() ?? os.cpus().length;
    const before = engineInfo().kernels.threads;
    for (const threads of [cores + 1, 0, 1.5]) {
      const e = await caught(setBackend('wasm', { threads }));
      expect(e.code).toBe('BAD_OPTION');
      expect(e.message).toMatch(threads > cores ? new RegExp(`threads is ${threads}, but this machine has ${cores} cores?: use 1\\.\\.${cores}`) : /threads must be a positive integer/);
    }
    expect(engineInfo().kernels.threads).toBe(before);
  });

  test('GPT2_TFJS_THREADS above the cores (a setting carried to a smaller machine) is capped, with one warning', async () => {
    const cores = os.availableParallelism?.() ?? os.cpus().length;
    const r = await runScript<{ threads: number; wanted: number; warns: string[] }>([
      "const { setBackend, engineInfo } = require('./src');",
      'const warns = [];',
      'console.warn = (m) => warns.push(String(m));',
      '(async () => {',
      "  await setBackend('wasm');",
      '  const k = engineInfo().kernels;',
      '  console.log(JSON.stringify({ threads: k.threads, wanted: k.threadsWanted, warns }));',
      '})();',
    ], { GPT2_TFJS_THREADS: String(cores + 1) });
    expect(r.wanted).toBe(cores);
    expect(r.threads).toBe(cores);
    expect(r.warns).toEqual([`gpt2-tfjs: GPT2_TFJS_THREADS=${cores + 1}, but this machine has ${cores} core${cores === 1 ? '' : 's'}: using ${cores}`]);
  }, 60_000);

  test('1, 2 and 3 threads give bit-identical logits (prefill, decode, two rows); the plain build on one thread generates the same text', async () => {
    const cores = os.availableParallelism?.() ?? os.cpus().length;
    const fast = await greedyIn({});
    const one = await greedyIn({ GPT2_TFJS_THREADS: '1' });
    const three = await greedyIn({ GPT2_TFJS_THREADS: '3' }, 4); // a team of two workers (on a 2-core machine: oversubscribed, still exact)
    const plain = await greedyIn({ GPT2_TFJS_FMA: '0', GPT2_TFJS_THREADS: '1' });
    const opByOp = await greedyIn({ GPT2_TFJS_FUSED_BLOCK: '0' }); // every block op by op instead of one kernel each
    expect(fast.backend).toMatch(cores >= 2 ? new RegExp(`threads=${Math.min(cores, 4)}`) : /threads=1/);
    expect(three.backend).toMatch(/threads=3/);
    expect(three.logits).toBe(one.logits);
    expect(three.tokens).toEqual(one.tokens);
    expect(one.backend).toMatch(/threads=1/);
    expect(plain.backend).toBe('fma=false threads=1');
    expect(one.backend.replace(/threads=\d/, '')).toBe(fast.backend.replace(/threads=\d/, ''));
    expect(one.logits).toBe(fast.logits); // the same build: every logit bit-identical whatever the thread count
    expect(one.tokens).toEqual(fast.tokens);
    expect(plain.tokens).toEqual(fast.tokens);
    expect(opByOp.logits).toBe(fast.logits);
    expect(opByOp.tokens).toEqual(fast.tokens);
  }, 120_000);
});

describe('blocks as one kernel (GPT2BlockStep)', () => {
  /** Prefill, then `steps` decode steps; each step's last-position logits. */
  async function decode(m: Awaited<ReturnType<typeof loadModel>>, fused: boolean, pad: number[], prompt: number[][], steps: number): Promise<Float32Array[]> {
    setBlockFusion(fused);
    const c = new KVCache([...pad]); // the cache keeps (and changes) the array it is given
    try {
      const out = [await m.model.step(prompt, c, { lastOnly: true })];
      for (let i = 0; i < steps; i++) out.push(await m.model.step(prompt.map((_, b) => [(i * 31 + b * 7 + 5) % 50257]), c, { lastOnly: true }));
      return out;
    } finally {
      c.dispose();
      setBlockFusion(true);
    }
  }

  test('the same bits as op by op: one row, three and five rows with padding (five: the 4-row register tiles), prefill and decode, across the cache growth boundary; nothing left behind', async () => {
    const m = await loadModel(undefined, { backend: 'wasm' }); // the bundled model: context 256, room for the cache to grow
    const L = m.config.nLayer;
    const steps = KV_GROW + 4; // the cache buffers grow once on the way
    try {
      for (const pad of [[0], [0, 2, 4], [0, 1, 0, 3, 2]]) {
        const prompt = pad.map((p, b) => Array.from({ length: 6 }, (_, i) => (i < p ? 0 : (i * 13 + b * 101 + 1) % 50257)));
        const before = tf.memory().numTensors;
        const runs = blockRunsSoFar();
        const fused = await decode(m, true, pad, prompt, steps);
        expect(blockRunsSoFar() - runs).toBe((steps + 1) * L); // every block: the prefill's and every decode step's
        const plain = await decode(m, false, pad, prompt, steps);
        expect(blockRunsSoFar() - runs).toBe((steps + 1) * L);
        fused.forEach((f, i) => expectSameFloats(f, plain[i]));
        expect(tf.memory().numTensors).toBe(before);
      }
    } finally {
      m.dispose();
    }
  }, 60_000);

  test('a mixed step (decode rows + prompt chunks, split across steps) is one kernel per block with the same bits as op by op; a prefill past MAX_FUSED_ROWS runs op by op', async () => {
    const m = await loadModel(undefined, { backend: 'wasm' }); // the bundled model
    const L = m.config.nLayer;
    /** Two running rows (one padded) and two prompts fed in chunks beside them: every step's logits. */
    const run = async (fused: boolean): Promise<Float32Array[]> => {
      setBlockFusion(fused);
      const batch = new KVCache([0, 2]);
      const a = new KVCache([0]);
      const b = new KVCache([0]);
      const out: Float32Array[] = [];
      const copy = (x: Float32Array[]) => x.forEach((l) => out.push(l.slice()));
      try {
        copy([await m.model.step([[5, 6, 7, 8], [0, 0, 9, 10]], batch, { lastOnly: true })]);
        const promptA = Array.from({ length: 9 }, (_, i) => (i * 37 + 3) % 50257);
        const promptB = Array.from({ length: 3 }, (_, i) => (i * 91 + 1) % 50257);
        // step 1: rows + A[0:4] + B (whole); step 2: rows + A[4:9]; step 3: rows + a decode-style chunk of A
        copy(await m.model.stepParts([{ ids: [[11], [12]], cache: batch }, { ids: [promptA.slice(0, 4)], cache: a }, { ids: [promptB], cache: b }], { lastOnly: true }));
        copy(await m.model.stepParts([{ ids: [[13], [14]], cache: batch }, { ids: [promptA.slice(4)], cache: a }]));
        copy(await m.model.stepParts([{ ids: [[15], [16]], cache: batch }, { ids: [[17]], cache: a }, { ids: [[18]], cache: b }], { lastOnly: true }));
        return out;
      } finally {
        for (const c of [batch, a, b]) c.dispose();
        setBlockFusion(true);
      }
    };
    try {
      const before = tf.memory().numTensors;
      const runs = blockRunsSoFar();
      const fused = await run(true);
      expect(blockRunsSoFar() - runs).toBe(4 * L); // the prefill and the three mixed steps, every block fused
      const plain = await run(false);
      expect(blockRunsSoFar() - runs).toBe(4 * L);
      expect(fused).toHaveLength(plain.length);
      fused.forEach((f, i) => expectSameFloats(f, plain[i]));
      expect(tf.memory().numTensors).toBe(before);
      // a prefill of more rows than MAX_FUSED_ROWS holds one branch's activations at a time: op by op
      const c = new KVCache([0]);
      try {
        const at = blockRunsSoFar();
        await m.model.step([Array.from({ length: MAX_FUSED_ROWS + 1 }, (_, i) => (i * 13) % 50257)], c, { lastOnly: true });
        expect(blockRunsSoFar()).toBe(at);
        await m.model.step([[1]], c, { lastOnly: true });
        expect(blockRunsSoFar()).toBe(at + L);
      } finally {
        c.dispose();
      }
    } finally {
      m.dispose();
    }
  }, 60_000);

  test('a decode step is one kernel per block plus the head; engineInfo says so; q8 models run op by op', async () => {
    const m = await loadModel(TINY_DIR, { backend: 'wasm' });
    const c = new KVCache([0]);
    try {
      await m.model.step([[1, 2, 3]], c);
      const prof = await tf.profile(() => m.model.step([[4]], c, { lastOnly: true }));
      const names = prof.kernels.map((k) => k.name);
      expect(names.filter((n) => n === 'GPT2BlockStep')).toHaveLength(m.config.nLayer);
      expect(names.filter((n) => n === 'GPT2LinearP')).toHaveLength(1); // the head
      expect(engineInfo().kernels.fusedBlocks).toBe(true);
    } finally {
      c.dispose();
      m.dispose();
    }
    const q8 = await loadModel(TINY_DIR + '-q8', { backend: 'wasm' });
    try {
      const runs = blockRunsSoFar();
      await q8.generate([1, 2, 3], { maxNewTokens: 4, temperature: 0 });
      expect(blockRunsSoFar()).toBe(runs);
    } finally {
      q8.dispose();
    }
  }, 60_000);
});

describe('fallbacks that speak', () => {
  interface Report {
    info: EngineInfo;
    warns: string[];
    tokens?: number[];
  }
  test('engineInfo as the first call of an app: no backend yet, and it says so', async () => {
    const r = await runScript<Report>(["const { engineInfo } = require('./src');", 'console.log(JSON.stringify({ info: engineInfo(), warns: [] }));']);
    expect(r.info).toMatchObject({ backend: null, engine: 'tf-ops', kernels: { active: false, reason: expect.stringMatching(/no backend has started yet/) } });
  }, 60_000);

  test('a second thread wanted on a backend already started unshared: one thread, the reason in engineInfo, one warning', async () => {
    const r = await runScript<Report>([
      "const { setBackend, engineInfo } = require('./src');",
      'const warns = [];',
      'console.warn = (m) => warns.push(String(m));',
      '(async () => {',
      "  await setBackend('wasm', { threads: 1 });",
      "  await setBackend('wasm', { threads: 2 });",
      "  await setBackend('wasm', { threads: 2 });",
      '  console.log(JSON.stringify({ info: engineInfo(), warns }));',
      '})();',
    ]);
    expect(r.info.kernels).toMatchObject({ active: true, threads: 1, threadsWanted: 2, threadReason: expect.stringMatching(/unshared memory/) });
    expect(r.warns).toEqual([expect.stringMatching(/^gpt2-tfjs: the wasm kernels run on one thread: .*unshared memory/)]);
  }, 60_000);

  test('a tfjs-backend-wasm that hides its memory: tf ops, the reason in engineInfo, one warning, and generation still right', async () => {
    const r = await runScript<Report>([
      "const { setBackend, engineInfo, loadModel } = require('./src');",
      "const tf = require('./src/tf');",
      'const warns = [];',
      'console.warn = (m) => warns.push(String(m));',
      '(async () => {',
      "  await setBackend('wasm', { threads: 1 });",
      "  const glue = tf.findBackend('wasm').wasm;", // as if a newer Emscripten glue kept the memory elsewhere
      '  glue.asm = { ...glue.asm, memory: undefined };',
      "  await setBackend('wasm', { threads: 1 });",
      "  await setBackend('wasm', { threads: 1 });",
      `  const m = await loadModel(${JSON.stringify(TINY_DIR)}, { backend: 'wasm', threads: 1 });`,
      "  const g = await m.generate([464, 318], { maxNewTokens: 6, temperature: 0 });",
      '  console.log(JSON.stringify({ info: engineInfo(), warns, tokens: g.tokens }));',
      '})();',
    ]);
    expect(r.info.engine).toBe('tf-ops');
    expect(r.info.kernels).toMatchObject({ active: false, reason: expect.stringMatching(/does not expose its WebAssembly.Memory/) });
    expect(r.warns).toEqual([expect.stringMatching(/^gpt2-tfjs: wasm kernels are off, generation runs on plain tf ops/)]);
    const model = await loadModel(TINY_DIR, { backend: 'wasm' }); // here, with the kernels
    try {
      expect((await model.generate([464, 318], { maxNewTokens: 6, temperature: 0 })).tokens).toEqual(r.tokens);
    } finally {
      model.dispose();
    }
  }, 60_000);
});

describe('second kernel thread', () => {
  test('stops, runs on one thread meanwhile, and is started again by the next model step', async () => {
    if (wasmKernelThreads() < 2) return expect(wasmKernelThreads()).toBe(1); // single-core machine: nothing to restart
    const threads = wasmKernelThreads();
    const model = await loadModel(TINY_DIR, { backend: 'wasm' });
    try {
      const before = await model.generate([464, 318], { maxNewTokens: 6, temperature: 0 });
      await stopKernelThread();
      expect(wasmKernelThreads()).toBe(1);
      tf.tidy(() => {
        const x = randn([1, 512], 11) as tf.Tensor2D;
        const w = randn([512, 512], 12) as tf.Tensor2D;
        const want = reference(() => tf.matMul(x, w));
        expect(maxAbsDiff(panelLinear(x, w, null, 'none')!.dataSync(), want.dataSync())).toBeLessThanOrEqual(1e-4);
      });
      await ensureKernelThread();
      expect(wasmKernelThreads()).toBe(threads);
      const after = await model.generate([464, 318], { maxNewTokens: 6, temperature: 0 });
      expect(after.tokens).toEqual(before.tokens);
    } finally {
      model.dispose();
    }
  });

  test('a team left idle exits on its own (every worker), and a claimed one does not', async () => {
    const bytes = Uint8Array.from(atob(KERNELS_WASM_BASE64), (c) => c.charCodeAt(0));
    const module = await WebAssembly.compile(patchMemoryImportToShared(bytes)! as BufferSource);
    const memory = new WebAssembly.Memory({ initial: 1, maximum: 65536, shared: true });
    const t = await KernelTeam.start(module, memory, { workers: 2, idleExitMs: 100 });
    expect(t.size).toBe(2);
    expect(t.usable).toBe(true);
    expect(t.claim()).toBe(true);
    // x (2 floats) at 0, W [2, 2] at 64, y at 128: y = x @ W, one column per chunk, taken by the workers
    new Float32Array(memory.buffer, 0, 2).set([1, 2]);
    new Float32Array(memory.buffer, 64, 4).set([1, 2, 3, 4]);
    const spec = { count: 2, step: { w: 4, y: 4 }, extent: { arg: 'n' as const, size: 1, total: 2 } };
    t.post('linear', argList('linear', { x: 0, w: 64, b: 0, y: 128, M: 1, K: 2, n: 2, ld: 2, ldx: 2, act: 0, pack: 0 }), spec.count, chunkLayout('linear', spec), spec.extent);
    t.wait();
    expect(Array.from(new Float32Array(memory.buffer, 128, 2))).toEqual([7, 10]);
    await new Promise((r) => setTimeout(r, 400));
    expect(t.usable).toBe(false);
    expect(t.claim()).toBe(false);
    await t.stop();
  });
});

describe('shared-memory rewrite', () => {
  /** A minimal module: defines 1 page of memory, exports it and a function storing 42 at address 8. */
  const tiny = Uint8Array.from([
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00,
    0x01, 0x04, 0x01, 0x60, 0x00, 0x00, // type: () -> ()
    0x02, 0x09, 0x01, 0x03, 0x65, 0x6e, 0x76, 0x01, 0x66, 0x00, 0x00, // import env.f: type 0
    0x03, 0x02, 0x01, 0x00, // function 1: type 0
    0x05, 0x03, 0x01, 0x00, 0x01, // memory: min 1
    0x07, 0x10, 0x02, 0x06, 0x6d, 0x65, 0x6d, 0x6f, 0x72, 0x79, 0x02, 0x00, 0x03, 0x73, 0x65, 0x74, 0x00, 0x01, // export memory, set
    0x0a, 0x0b, 0x01, 0x09, 0x00, 0x41, 0x08, 0x41, 0x2a, 0x36, 0x02, 0x00, 0x0b, // set: i32.store(8, 42)
  ]);

  test('turns a defined memory into an imported shared one, and the module still works', async () => {
    expect(WebAssembly.validate(tiny)).toBe(true);
    const patched = patchToImportSharedMemory(tiny)!;
    expect(patched.initialPages).toBe(1);
    const memory = new WebAssembly.Memory({ initial: 1, maximum: 65536, shared: true });
    const { instance } = (await WebAssembly.instantiate(patched.bytes as BufferSource, { env: { f: () => undefined, memory } })) as unknown as WebAssembly.WebAssemblyInstantiatedSource;
    expect(instance.exports.memory).toBe(memory);
    (instance.exports.set as () => void)();
    expect(new Int32Array(memory.buffer)[2]).toBe(42);
  });

  test('marks an unshared memory import as shared', async () => {
    const bytes = Uint8Array.from(atob(KERNELS_WASM_BASE64), (c) => c.charCodeAt(0));
    const patched = patchMemoryImportToShared(bytes)!;
    const memory = new WebAssembly.Memory({ initial: 1, maximum: 65536, shared: true });
    await expect(WebAssembly.instantiate(patched as BufferSource, { env: { memory } })).resolves.toBeDefined();
    await expect(WebAssembly.instantiate(bytes, { env: { memory } })).rejects.toThrow();
  });

  test('leaves modules of another shape alone', () => {
    expect(patchToImportSharedMemory(Uint8Array.from([1, 2, 3]))).toBeNull();
    expect(patchToImportSharedMemory(tiny.subarray(0, 20))).toBeNull(); // truncated
    const noMemory = patchToImportSharedMemory(patchToImportSharedMemory(tiny)!.bytes); // already imports its memory
    expect(noMemory).toBeNull();
    expect(patchMemoryImportToShared(tiny)).toBeNull(); // nothing imported as memory
  });
});
