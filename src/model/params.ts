/**
 * Named host arrays → tf.Tensors, once, at load. Shapes are checked against the config as each
 * tensor arrives; on any failure every tensor created so far is disposed (no half-loaded model).
 */
import * as tf from '../tf';
import { GPT2Error } from '../errors';
import { GPT2Config, expectedShapes } from './config';

export interface Linear {
  w: tf.Tensor2D; // Conv1D layout [in, out]: y = x @ w + b
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
  headT: tf.Tensor2D;
  /** [vocab, d], only when the checkpoint has an untied lm_head (else the embedding reads headT). */
  wte: tf.Tensor2D | null;
  wpe: tf.Tensor2D; // [n_positions, d]
  h: BlockParams[];
  ln_f: Norm;
}

export interface HostArray {
  data: Float32Array;
  shape: number[];
}

function sameShape(a: number[], b: number[]): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

/**
 * Builds Params from a stream of (name, host array). Names are canonical gpt2 keys
 * (`wte.weight`, `h.0.attn.c_attn.weight`, ..., optional `lm_head.weight`).
 */
export async function buildParams(config: GPT2Config, tensors: AsyncIterable<HostArray & { name: string; file?: string }>): Promise<Params> {
  const want = expectedShapes(config);
  const made = new Map<string, tf.Tensor>();
  let lmHead: HostArray | null = null;
  let wte: HostArray | null = null;
  try {
    for await (const t of tensors) {
      const where = t.file ? ` (in ${t.file})` : '';
      if (t.name === 'lm_head.weight') {
        if (!sameShape(t.shape, [config.vocabSize, config.nEmbd])) {
          throw new GPT2Error('BAD_WEIGHTS', `lm_head.weight${where} has shape [${t.shape}], config needs [${config.vocabSize}, ${config.nEmbd}]`);
        }
        lmHead = { data: t.data, shape: t.shape };
        continue;
      }
      const shape = want.get(t.name);
      if (!shape) continue; // unknown extras (e.g. optimizer state) are not ours to judge
      if (!sameShape(t.shape, shape)) {
        throw new GPT2Error('BAD_WEIGHTS', `${t.name}${where} has shape [${t.shape}], config needs [${shape}]`);
      }
      if (t.name === 'wte.weight') {
        wte = { data: t.data, shape: t.shape }; // layout decided once lm_head is known
        continue;
      }
      made.set(t.name, tf.tensor(t.data, shape, 'float32'));
    }
    const missing = [...want.keys()].filter((k) => k !== 'wte.weight' && !made.has(k));
    if (!wte) missing.unshift('wte.weight');
    if (missing.length) {
      throw new GPT2Error('BAD_WEIGHTS', `checkpoint is missing ${missing.length} tensor(s): ${missing.slice(0, 5).join(', ')}${missing.length > 5 ? ', ...' : ''}`);
    }
    const wteHost = wte as HostArray;
    // A checkpoint whose lm_head equals wte is tied in all but name: keep one copy.
    const untied = lmHead !== null && !lmHead.data.every((v, i) => v === wteHost.data[i]);
    // Transposed on the host: a device-side transpose would leave a dead 154 MB copy in the wasm heap (which never shrinks).
    const transposeHost = (a: HostArray): tf.Tensor2D => {
      const [rows, cols] = a.shape;
      const t = new Float32Array(rows * cols);
      for (let r = 0; r < rows; r++) {
        const src = r * cols;
        for (let c = 0; c < cols; c++) t[c * rows + r] = a.data[src + c];
      }
      return tf.tensor2d(t, [cols, rows]);
    };
    const headT = transposeHost(untied ? (lmHead as HostArray) : wteHost);
    made.set('__headT', headT);
    const wteT = untied ? tf.tensor2d(wteHost.data, [config.vocabSize, config.nEmbd]) : null;
    if (wteT) made.set('__wte', wteT);
    const get = <T extends tf.Tensor>(k: string): T => made.get(k) as T;
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
    return { headT, wte: wteT, wpe: get('wpe.weight'), h, ln_f: norm('ln_f') };
  } catch (e) {
    for (const t of made.values()) t.dispose();
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
