/**
 * Named host arrays → tf.Tensors, once, at load. Shapes are checked against the config as each
 * tensor arrives; on any failure every tensor created so far is disposed (no half-loaded model).
 */
import * as tf from '../tf';
import { GPT2Error } from '../errors';
import { GPT2Config, expectedShapes, isInt8Weight } from './config';
import { dequantize, packPanelColsF32, packPanels, packPanelsF32, panelDims, transposeRows, unpackPanels, unpackPanelsF32 } from './quantize';
import { warnOnce } from './wasm/instance';

/**
 * A weight W [inDim, outDim] held in a kernel layout (panels of 16 columns) for the wasm kernels. An
 * engine without them computes with `float()`: W as float32 [inDim, outDim], made on first use (the
 * kernels switched off after load), kept until dispose.
 */
export abstract class PackedWeight {
  private f: tf.Tensor2D | null = null;
  constructor(readonly packed: tf.Tensor1D, readonly inDim: number, readonly outDim: number) {}

  protected abstract unpack(): Float32Array;

  float(): tf.Tensor2D {
    if (!this.f) {
      warnOnce('kernel-packed weights are being unpacked to float32 because the wasm kernels are off (setWasmKernelsDisabled or another backend): each weight now takes extra memory');
      this.f = tf.keep(tf.tensor2d(this.unpack(), [this.inDim, this.outDim]));
    }
    return this.f;
  }

  dispose(): void {
    this.packed.dispose();
    this.f?.dispose();
    this.f = null;
  }
}

/** float32 weights in panels (packPanelsF32): one sequential stream per panel for the decode kernel. */
export class F32PanelWeight extends PackedWeight {
  protected unpack(): Float32Array {
    return unpackPanelsF32(this.packed.dataSync() as Float32Array, this.inDim, this.outDim);
  }
}

/** int8 weights in panels (packPanels) with one float32 scale per column (q8). */
export class Q8Weight extends PackedWeight {
  constructor(
    packed: tf.Tensor1D, // int32 words, panelDims(inDim, outDim).words
    readonly scale: tf.Tensor1D, // [outDim rounded up to 16], float32, zero padded
    inDim: number,
    outDim: number,
  ) {
    super(packed, inDim, outDim);
  }

  get K4(): number {
    return panelDims(this.inDim, this.outDim).K4;
  }

  protected unpack(): Float32Array {
    return unpackPanels(this.packed.dataSync() as Int32Array, this.scale.dataSync() as Float32Array, this.inDim, this.outDim);
  }

  override dispose(): void {
    super.dispose();
    this.scale.dispose();
  }
}

/** A linear layer's weight: float32 [in, out], or packed for the wasm kernels (float32 or int8 panels). */
export type Weight = tf.Tensor2D | PackedWeight;

export interface Linear {
  w: Weight; // Conv1D layout [in, out]: y = x @ w + b
  b: tf.Tensor1D;
}
export interface Norm {
  g: tf.Tensor1D;
  b: tf.Tensor1D;
}
/** One block, named as the checkpoint names it (`h.{i}.ln_1`, `h.{i}.attn.c_attn`, `h.{i}.mlp.c_proj`, ...). */
export interface BlockParams {
  ln_1: Norm;
  attn: {
    c_attn: Linear; // [d, 3d], q|k|v along the last axis
    c_proj: Linear; // [d, d]
  };
  ln_2: Norm;
  mlp: {
    c_fc: Linear; // [d, n_inner]
    c_proj: Linear; // [n_inner, d]
  };
}
export interface Params {
  /**
   * The output head as [d, vocab]. Tied checkpoints keep wte only in this layout: one copy serves the
   * head as a plain matMul (the transposed-B matMul is ~6x slower on wasm) and the embedding lookup
   * as a gather along axis 1.
   */
  headT: Weight;
  /** [vocab, d], only when the checkpoint has an untied lm_head (else the embedding reads headT). */
  wte: tf.Tensor2D | null;
  wpe: tf.Tensor2D; // [n_positions, d]
  h: BlockParams[];
  ln_f: Norm;
  /** How the weights are held: float32, or (q8 checkpoints) int8 for the wasm kernels. */
  held: 'float32' | 'int8';
}

export interface HostArray {
  data: Float32Array | Int8Array;
  shape: number[];
  /** Rows [row0, row0 + rows) of the tensor, the rest following in order (io's StreamOptions.chunkBytes). */
  part?: { row0: number; rows: number };
  /** data is valid only until the next item is asked for (io's StreamOptions.reuse). */
  borrowed?: true;
}

export interface BuildOptions {
  /** q8 checkpoints: keep int8 weights packed for the wasm int8 kernels (else dequantize to float32 at load). */
  int8Kernels?: boolean;
  /** float32 checkpoints: pack the Conv1D weights and the head into panels for the wasm kernels. */
  panels?: boolean;
  /** How tensors whose data is rearranged at load (the transposed head, packed int8) are made: the engine's `upload` (no staging copy). */
  upload?: Uploader;
}

/**
 * Engine.upload's shape: a tensor whose data `fill` writes, zero-initialised, through `dst()` (call it
 * again after an await: a backend memory that grows may move). `fill` may be async (the head is
 * filled part by part as the file streams in).
 */
export type Uploader = <D extends 'float32' | 'int32'>(shape: number[], dtype: D, fill: (dst: () => D extends 'int32' ? Int32Array : Float32Array) => void | Promise<void>) => Promise<tf.Tensor>;

/** The uploader of every backend whose memory is not reachable: fill a host array, then one copy to the backend. */
export const hostUpload: Uploader = async (shape, dtype, fill) => {
  const n = shape.reduce((a, b) => a * b, 1);
  const host = dtype === 'int32' ? new Int32Array(n) : new Float32Array(n);
  await fill(() => host as never);
  return tf.tensor(host, shape, dtype);
};

function sameShape(a: number[], b: number[]): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

/** int8 data with its scales, or float data. */
type Host = { data: Float32Array; q?: undefined; scale?: undefined } | { data?: undefined; q: Int8Array; scale: Float32Array };

/**
 * Builds Params from a stream of (name, host array). Names are canonical gpt2 keys
 * (`wte.weight`, `h.0.attn.c_attn.weight`, ..., optional `lm_head.weight`; q8 checkpoints add a
 * `<name>_scale` beside each int8 weight).
 */
export async function buildParams(config: GPT2Config, tensors: AsyncIterable<HostArray & { name: string; file?: string }>, opts: BuildOptions = {}): Promise<Params> {
  type Item = HostArray & { name: string; file?: string };
  const want = expectedShapes(config);
  const d = config.nEmbd;
  const V = config.vocabSize;
  // what may arrive: the config's tensors, and an optional lm_head (q8: with its scales)
  const accepted = new Map(want).set('lm_head.weight', [V, d]);
  if (config.quantization) accepted.set('lm_head.weight_scale', [V]);
  const made = new Map<string, tf.Tensor | PackedWeight>();
  const seen = new Set<string>();
  const pending = new Map<string, HostArray & { where: string }>(); // halves of an int8 weight + scale pair, and wte/lm_head
  const upload = opts.upload ?? hostUpload;
  /** [rows, cols] -> tensor [cols, rows], transposed straight into the tensor's memory (the wasm heap never shrinks: no staging copy there). */
  const transposeHost = async (a: { data: Float32Array; shape: number[] }): Promise<tf.Tensor2D> => {
    const [rows, cols] = a.shape;
    return (await upload([cols, rows], 'float32', (t) => transposeRows(a.data, cols, rows, 0, t()))) as tf.Tensor2D;
  };
  /** int8 [K, N] + per-column scales -> packed for the kernels, or dequantized. */
  const linearQ8 = async (q: Int8Array, scale: Float32Array, K: number, N: number, transposed: boolean): Promise<tf.Tensor2D | Q8Weight> => {
    if (opts.int8Kernels) {
      const s = new Float32Array(panelDims(K, N).N16);
      s.set(scale);
      const packed = (await upload([panelDims(K, N).words], 'int32', (dst) => void packPanels(q, K, N, transposed, dst()))) as tf.Tensor1D;
      return new Q8Weight(packed, tf.tensor1d(s), K, N);
    }
    const w = dequantize(q, scale, transposed ? N : K, transposed ? K : N, transposed);
    return transposed ? transposeHost({ data: w, shape: [N, K] }) : tf.tensor2d(w, [K, N]);
  };
  /** The int8 weight `name` and its scales, both arrived (null until then); scales checked. */
  const pair = (name: string): { q: Int8Array; scale: Float32Array } | null => {
    const w = pending.get(name);
    const s = pending.get(name + '_scale');
    if (!w || !s) return null;
    const scale = s.data as Float32Array;
    const bad = scale.findIndex((v) => !(v >= 0 && v < Infinity));
    if (bad >= 0) throw new GPT2Error('BAD_WEIGHTS', `${name}_scale${s.where} holds ${scale[bad]} at index ${bad}: q8 scales must be finite and >= 0`);
    pending.delete(name);
    pending.delete(name + '_scale');
    return { q: w.data as Int8Array, scale };
  };
  /** A table's host data once complete (float; or int8 with its scales, checked), else null. */
  const table = (name: string): Host | null => {
    if (!config.quantization) {
      const h = pending.get(name);
      if (!h) return null;
      pending.delete(name);
      return { data: h.data as Float32Array };
    }
    return pair(name);
  };
  /** The output head [d, V] from a [V, d] table: transposed floats, or int8 panels for the kernels. */
  const headOf = async (t: Host): Promise<Weight> => {
    if (!t.data) return linearQ8(t.q, t.scale, d, V, true);
    return headFromParts({ name: 'head', shape: [V, d], data: t.data, part: { row0: 0, rows: V } }); // one part: the whole table
  };
  const it = tensors[Symbol.asyncIterator]();
  /** The item after a part of `name`: its next part (rows in order), or BAD_WEIGHTS. */
  const nextPart = async (name: string, row: number): Promise<Item & { data: Float32Array; part: { row0: number; rows: number } }> => {
    const r = await it.next();
    const t = r.done ? null : r.value;
    if (!t || t.name !== name || t.part?.row0 !== row || !(t.data instanceof Float32Array)) throw new GPT2Error('BAD_WEIGHTS', `${name}: its parts stopped at row ${row}`);
    return t as Item & { data: Float32Array; part: { row0: number; rows: number } };
  };
  /** The float head [d, V] from a float [V, d] table (wte, or an untied lm_head) arriving in parts: each part written into the head as it comes, no host copy of the whole. */
  const headFromParts = async (first: Item & { data: Float32Array; part: { row0: number; rows: number } }): Promise<Weight> => {
    const fill = async (dst: () => Float32Array): Promise<void> => {
      for (let t = first; ; t = await nextPart(first.name, t.part.row0 + t.part.rows)) {
        if (opts.panels) packPanelColsF32(t.data, d, t.part.row0, t.part.rows, dst());
        else transposeRows(t.data, d, V, t.part.row0, dst());
        if (t.part.row0 + t.part.rows >= V) return;
      }
    };
    if (opts.panels) return new F32PanelWeight((await upload([panelDims(1, V).N16 * d], 'float32', fill)) as tf.Tensor1D, d, V);
    return (await upload([d, V], 'float32', fill)) as tf.Tensor2D;
  };
  /** A tensor arriving in parts, whole again (a host array of its own). */
  const assemble = async (first: Item & { data: Float32Array; part: { row0: number; rows: number } }): Promise<Item> => {
    const rowLen = first.data.length / first.part.rows;
    const whole = new Float32Array(first.shape[0] * rowLen);
    for (let t = first; ; t = await nextPart(first.name, t.part.row0 + t.part.rows)) {
      whole.set(t.data, t.part.row0 * rowLen);
      if (t.part.row0 + t.part.rows >= first.shape[0]) break;
    }
    return { name: first.name, file: first.file, shape: first.shape, data: whole };
  };
  try {
    for (let r = await it.next(); !r.done; r = await it.next()) {
      let t: Item = r.value;
      const where = t.file ? ` (in ${t.file})` : '';
      const shape = accepted.get(t.name);
      if (!shape) continue; // unknown extras (e.g. optimizer state) are not ours to judge
      if (!sameShape(t.shape, shape)) {
        throw new GPT2Error('BAD_WEIGHTS', `${t.name}${where} has shape [${t.shape}], config needs [${t.name.startsWith('lm_head.') ? shape.join(', ') : shape}]`);
      }
      const int8 = isInt8Weight(config, t.name);
      if (int8 !== t.data instanceof Int8Array) {
        throw new GPT2Error('BAD_WEIGHTS', int8
          ? `${t.name}${where} is float, but config.json's quantization_config (q8) needs it int8 (I8) with ${t.name}_scale: convert with \`gpt2-tfjs convert --quantize q8\``
          : `${t.name}${where} is int8, but ${config.quantization ? 'q8 stores it as float' : 'config.json has no quantization_config (a q8 checkpoint names its format there)'}`);
      }
      seen.add(t.name);
      if (t.part) {
        const first = t as Item & { data: Float32Array; part: { row0: number; rows: number } };
        if (t.part.row0 !== 0) throw new GPT2Error('BAD_WEIGHTS', `${t.name}${where}: its first part starts at row ${t.part.row0}`);
        if (t.name === 'wte.weight' && !made.has('__headT')) {
          made.set('__headT', await headFromParts(first));
          continue;
        }
        t = await assemble(first);
      }
      const m = /^(.*\.weight)(_scale)?$/.exec(t.name);
      const base = m?.[1] ?? t.name;
      // held until complete: an int8 weight and its scales (they arrive one by one), and the tables (wte, wpe, lm_head)
      const hold = (config.quantization !== null && (int8 || m?.[2] !== undefined)) || base === 'wte.weight' || base === 'lm_head.weight' || base === 'wpe.weight';
      if (hold) {
        pending.set(t.name, { data: t.data, shape: t.shape, where });
        if (/^h\./.test(base)) {
          const p = pair(base);
          if (p) {
            const [K, N] = want.get(base) as number[];
            made.set(base, await linearQ8(p.q, p.scale, K, N, false));
          }
        } else if (base === 'wte.weight' && !made.has('__headT')) {
          // The head is built as soon as wte is complete, so its host copy (154 MB for 124M) is not held
          // while the rest loads; an untied lm_head, rare, is sorted out at the end.
          const wte = table(base);
          if (wte) made.set('__headT', await headOf(wte));
        }
        // still waiting (its scales, or the end): a borrowed buffer is about to be reused, keep a copy
        const held = pending.get(t.name);
        if (t.borrowed && held?.data === t.data) pending.set(t.name, { ...held, data: t.data.slice() });
        continue;
      }
      if (opts.panels && /^h\.\d+\.(attn|mlp)\.c_\w+\.weight$/.test(t.name)) {
        const [K, N] = shape;
        const data = t.data as Float32Array;
        made.set(t.name, new F32PanelWeight((await upload([panelDims(1, N).N16 * K], 'float32', (dst) => void packPanelsF32(data, K, N, false, dst()))) as tf.Tensor1D, K, N));
        continue;
      }
      // a borrowed buffer is reused for the next tensor: the wasm backend copies it into its memory
      // here, the others (cpu, webgl, webgpu) may keep the very array, so they get a copy
      const data = t.borrowed && tf.getBackend() !== 'wasm' ? t.data.slice() : t.data;
      made.set(t.name, tf.tensor(data as Float32Array, shape, 'float32'));
    }
    const missing = [...want.keys()].filter((k) => !seen.has(k));
    if (config.quantization && seen.has('lm_head.weight') !== seen.has('lm_head.weight_scale')) missing.push(seen.has('lm_head.weight') ? 'lm_head.weight_scale' : 'lm_head.weight');
    if (missing.length) {
      throw new GPT2Error('BAD_WEIGHTS', `checkpoint is missing ${missing.length} tensor(s): ${missing.slice(0, 5).join(', ')}${missing.length > 5 ? ', ...' : ''}`);
    }
    const wpe = table('wpe.weight') as Host;
    made.set('wpe.weight', tf.tensor2d(wpe.data ?? dequantize(wpe.q as Int8Array, wpe.scale as Float32Array, config.nPositions, d, true), [config.nPositions, d]));
    let headT = made.get('__headT') as Weight;
    const lmHead = table('lm_head.weight');
    let wteT: tf.Tensor2D | null = null;
    if (lmHead) {
      // wte as [V, d] floats, read back from the head built from it ([d, V]): only for checkpoints that store lm_head
      const wteRows = (): Float32Array => {
        const t = (headT instanceof PackedWeight ? headT.float() : headT).dataSync() as Float32Array; // [d, V]
        const rows = new Float32Array(V * d);
        for (let k = 0; k < d; k++) for (let v = 0; v < V; v++) rows[v * d + k] = t[k * V + v];
        return rows;
      };
      const lm = lmHead.data ?? dequantize(lmHead.q as Int8Array, lmHead.scale as Float32Array, V, d, true);
      const wte = wteRows();
      // A checkpoint whose lm_head equals wte is tied in all but name: keep one copy.
      if (!lm.every((v, i) => v === wte[i])) {
        wteT = tf.tensor2d(wte, [V, d]);
        made.set('__wte', wteT);
        headT.dispose();
        made.delete('__headT');
        headT = await headOf(lmHead);
        made.set('__headT', headT);
      }
    }
    const get = <T extends tf.Tensor | PackedWeight>(k: string): T => made.get(k) as T;
    const lin = (k: string): Linear => ({ w: get(k + '.weight'), b: get(k + '.bias') });
    const norm = (k: string): Norm => ({ g: get(k + '.weight'), b: get(k + '.bias') });
    const h: BlockParams[] = [];
    for (let i = 0; i < config.nLayer; i++) {
      h.push({
        ln_1: norm(`h.${i}.ln_1`),
        attn: { c_attn: lin(`h.${i}.attn.c_attn`), c_proj: lin(`h.${i}.attn.c_proj`) },
        ln_2: norm(`h.${i}.ln_2`),
        mlp: { c_fc: lin(`h.${i}.mlp.c_fc`), c_proj: lin(`h.${i}.mlp.c_proj`) },
      });
    }
    return { headT, wte: wteT, wpe: get('wpe.weight'), h, ln_f: norm('ln_f'), held: config.quantization && opts.int8Kernels ? 'int8' : 'float32' };
  } catch (e) {
    for (const t of made.values()) t.dispose();
    await it.return?.(undefined); // the stream (and its read buffer) is closed now, not left suspended
    throw e;
  }
}

export function disposeParams(p: Params): void {
  p.headT.dispose();
  p.wte?.dispose();
  p.wpe.dispose();
  p.ln_f.g.dispose();
  p.ln_f.b.dispose();
  for (const b of p.h) {
    for (const part of [b.ln_1, b.ln_2]) { part.g.dispose(); part.b.dispose(); }
    for (const part of [b.attn.c_attn, b.attn.c_proj, b.mlp.c_fc, b.mlp.c_proj]) { part.w.dispose(); part.b.dispose(); }
  }
}
