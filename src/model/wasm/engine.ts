/**
 * The wasm-kernel engine (see ../engine.ts for the interface and the tf-op engine it replaces on the
 * wasm backend). Differences that matter:
 * - linear fuses bias and gelu_new/relu into one kernel that streams W once;
 * - attention is one kernel for every head, reading a padding-only mask (it applies causality itself);
 * - the KV cache buffers keep room to grow: a step's keys/values are written into them in place (the
 *   one deliberate mutation of a tensor in this library: the buffers are referenced only by their
 *   KVCache), rows that join or leave a batch are moved in place where they fit.
 */
import * as tf from '../../tf';
import type { Engine, JoinPlan, KVOps, LayerKV, LoadBuffer } from '../engine';
import { KV_GROW, cachePrefix, floatWeight, tfEngine } from '../engine';
import { activate } from '../layers';
import { WasmBackendLike, blockFusionOn, memoryOf, startKernels } from './instance';
import { F32PanelWeight, Q8Weight } from '../params';
import { ACT_CODES, KernelActivation, moveRows, registerKernels, BlockPart, runAttend, runBlockStep, runCacheNew, runCacheRows, runGatherP, runGatherQ8, runLayerNorm, runLinear, runLinearP, runLinearQ8, runSplitCols, zeroWords } from './register';

/**
 * The most rows (decode rows + prompt positions) a step's blocks run as one kernel each: its scratch
 * holds every activation of the block at once (N x (7 d + n_inner) floats: 4.3 MB at 128 rows on 124M),
 * where op by op frees each branch's before the next (a long prefill's peak memory). The server's steps
 * (rows + a prompt budget, prompt-only passes of 64) and short prompts fit.
 */
export const MAX_FUSED_ROWS = 128;

/** Extra rows a merged cache buffer keeps, so the next joining rows are copied in place. */
const SPARE_ROWS = 3;

/**
 * Starts the kernels for the current wasm backend (instance, worker thread, tfjs registration).
 * False when they cannot run here; kernelStatus() then says why.
 */
export async function enableWasmKernels(opts: { threads?: number; unshared?: string } = {}): Promise<boolean> {
  const ok = await startKernels(opts);
  if (ok) registerKernels();
  return ok;
}

/** `t`'s data where the wasm backend keeps it, as a typed array view (null when its memory is not reachable). */
function heapView<A extends Float32ArrayConstructor | Int32ArrayConstructor>(t: tf.Tensor, Arr: A): InstanceType<A> | null {
  const be = tf.engine().backend as unknown as WasmBackendLike;
  const at = be.dataIdMap.get(t.dataId)?.memoryOffset;
  const memory = memoryOf(be);
  return at === undefined || !memory ? null : (new Arr(memory.buffer, at, t.size) as InstanceType<A>);
}

/** A buffer holding `buf`'s first `len` positions with room for `n` more: `buf` itself when it has room. */
function withRoom(buf: tf.Tensor3D, len: number, n: number): tf.Tensor3D {
  if (buf.shape[1] >= len + n) return buf;
  return tf.pad(cachePrefix(buf, len), [[0, 0], [0, n + KV_GROW], [0, 0]]); // [B, len, d] -> [B, len + n + KV_GROW, d]
}

/** 1 / sqrt(head size): the score scale both attention kernels get (the same float, so the same bits). */
const attnScale = (d: number, nHead: number) => 1 / Math.sqrt(d / nHead);

const range = (n: number, from = 0) => Array.from({ length: n }, (_, i) => from + i);

const wasmKV: KVOps = {
  write(prev, k, v, past) {
    const T = k.shape[1];
    // A first write (prefill) goes straight into buffers with room for the decode steps: handing back
    // the exact-size k/v meant the first decode step padded every layer's cache while the whole
    // exact-size set was still alive (+19 MB of memory touched for a 256-token prompt on 124M).
    if (!prev) return { k: withRoom(k, T, 1), v: withRoom(v, T, 1) };
    const kb = withRoom(prev.k, past, T); // [B, cap, d]
    const vb = withRoom(prev.v, past, T);
    const rows = range(k.shape[0]);
    moveRows(kb, k, rows, rows, 0, T, past, false);
    moveRows(vb, v, rows, rows, 0, T, past, false);
    return { k: kb, v: vb };
  },
  join(a: LayerKV, b: LayerKV, j: JoinPlan) {
    const rows = j.rowsA + j.rowsB;
    if (j.padA === 0 && a.k.shape[0] >= rows && a.k.shape[1] >= j.length) {
      // the joining rows are no longer than ours and our buffers have spare rows: copy them in place
      const from = range(j.rowsB);
      const to = range(j.rowsB, j.rowsA);
      moveRows(a.k, b.k, from, to, 0, j.lenB, j.padB);
      moveRows(a.v, b.v, from, to, 0, j.lenB, j.padB);
      return a;
    }
    // one contiguous copy per row into a buffer with room to grow, and a few spare rows for later joins
    const src = range(rows);
    const attrs = {
      rows: src,
      start: src.map(() => 0),
      len: src.map((r) => (r < j.rowsA ? j.lenA : j.lenB)),
      dst: src.map((r) => (r < j.rowsA ? j.padA : j.padB)),
      cap: j.length + KV_GROW,
      rowsCap: rows + SPARE_ROWS,
      aRows: j.rowsA,
    };
    return { k: runCacheRows(a.k, b.k, attrs), v: runCacheRows(a.v, b.v, attrs) };
  },
  keep(l, rows, trim, length) {
    // rows kept in order move down (and left by `trim`) inside the same buffers
    if (!rows.every((r, i) => i === 0 || r > rows[i - 1])) return tfEngine.kv.keep(l, rows, trim, length);
    const to = range(rows.length);
    moveRows(l.k, l.k, rows, to, trim, length - trim, 0);
    moveRows(l.v, l.v, rows, to, trim, length - trim, 0);
    return l;
  },
};

export const wasmEngine: Engine = {
  name: 'wasm-kernels',
  linear(x, w, b, act = 'none', residual = null) {
    const a: KernelActivation = act === 'gelu' ? 'none' : act; // exact erf gelu: not fused
    if (residual && act !== 'gelu' && w instanceof F32PanelWeight) return runLinearP(x, w, b, a, residual); // the skip connection added as the kernel stores
    const y = w instanceof Q8Weight ? runLinearQ8(x, w, b, a) : w instanceof F32PanelWeight ? runLinearP(x, w, b, a) : runLinear(x, floatWeight(w), b, a); // [N, in] -> [N, out]
    const z = act === 'gelu' ? activate(y, act) : y;
    return residual ? (tf.add(z, residual) as tf.Tensor2D) : z;
  },
  split: runSplitCols,
  loadBuffer(): LoadBuffer | null {
    const be = tf.engine().backend as unknown as WasmBackendLike;
    // Only on a shared memory: an unshared one detaches its views when it grows, as each weight's
    // upload may make it do between a read into the buffer and its use.
    if (!(memoryOf(be)?.buffer instanceof SharedArrayBuffer)) return null;
    let t: tf.Tensor | null = null;
    return {
      get(n) {
        if (!t || t.size * 4 < n) {
          t?.dispose();
          t = null; // a failed allocation below leaves nothing to dispose twice
          t = tf.engine().makeTensorFromTensorInfo(be.makeOutput([Math.ceil(n / 4)], 'int32'));
        }
        const at = be.dataIdMap.get(t.dataId)?.memoryOffset as number;
        return new Uint8Array((memoryOf(be) as WebAssembly.Memory).buffer, at, n);
      },
      dispose() {
        t?.dispose();
        t = null;
      },
    };
  },
  async upload(shape, dtype, fill) {
    // Allocated in the backend's memory with no values (tf.zeros would build a zeroed host array of the
    // whole size and copy it in: 2.6 s and a transient 154 MB for the 124M head), zeroed and written in place.
    const be = tf.engine().backend as unknown as WasmBackendLike;
    if (!memoryOf(be)) return tfEngine.upload(shape, dtype, fill);
    const t = tf.engine().makeTensorFromTensorInfo(be.makeOutput(shape, dtype));
    // a fresh view per call: after an await the memory may have grown (an unshared one's old buffer is then detached)
    const view = () => heapView(t, dtype === 'int32' ? Int32Array : Float32Array);
    const first = view();
    if (!first) {
      t.dispose();
      return tfEngine.upload(shape, dtype, fill);
    }
    try {
      zeroWords(first.byteOffset, t.size); // malloc'd memory may be reused: the packers leave padding untouched
      await fill(view as never);
    } catch (e) {
      t.dispose(); // a failed fill leaves no tensor behind
      throw e;
    }
    return t;
  },
  async read(t, into) {
    // tfjs-backend-wasm's readSync copies through a Uint8Array slice, byte by byte on a shared memory
    // (~0.4 ms for the 124M logits, every decode step), and so does a float32 view's slice() (413 µs);
    // set() into a fresh array copies the block at once (25 µs; micro-benchmark, 50257 floats)
    const v = t.dtype === 'float32' ? heapView(t, Float32Array) : null;
    if (!v) return tfEngine.read(t, into);
    const out = into && into.length >= v.length ? into.subarray(0, v.length) : new Float32Array(v.length);
    out.set(v);
    return out;
  },
  embed(headT, ids) {
    if (headT instanceof Q8Weight) return runGatherQ8(headT, ids); // [N] -> [N, d]
    if (headT instanceof F32PanelWeight) return runGatherP(headT, ids);
    return tfEngine.embed(headT, ids);
  },
  layerNorm: runLayerNorm,
  attend(q, kv, ctx) {
    return runAttend(q, kv.k, kv.v, ctx.mask.padding(), { B: ctx.batch, T: ctx.steps, past: ctx.past, nHead: ctx.nHead, scale: attnScale(q.shape[1], ctx.nHead) }); // [N, d]
  },
  kv: wasmKV,
  block(x, p, parts, eps, act) {
    // Float32 panel weights with a fused activation, a step of at most MAX_FUSED_ROWS rows (decode rows
    // and prompt chunks alike); anything else (a long prefill, int8 weights, exact-erf gelu) runs op by op.
    const { attn, mlp } = p;
    const ws = [attn.c_attn.w, attn.c_proj.w, mlp.c_fc.w, mlp.c_proj.w];
    if (!blockFusionOn() || x.shape[0] > MAX_FUSED_ROWS || act === 'gelu' || !ws.every((w) => w instanceof F32PanelWeight)) return null;
    const [wa, wo, wf, wm] = ws as F32PanelWeight[];
    const d = x.shape[1];
    const kvs: LayerKV[] = [];
    const blockParts: BlockPart[] = parts.map(({ ctx, past }) => {
      const { batch: B, steps: T } = ctx;
      // the keys/values go straight into buffers with room (a first chunk's: new ones, with room to grow)
      const kv = past
        ? { k: withRoom(past.k, ctx.past, T), v: withRoom(past.v, ctx.past, T) }
        : { k: runCacheNew(B, T + 1 + KV_GROW, d), v: runCacheNew(B, T + 1 + KV_GROW, d) };
      kvs.push(kv); // (GPT2BlockStep checks that each part fits its buffers)
      return { B, T, past: ctx.past, k: kv.k, v: kv.v, mask: ctx.mask.padding() };
    });
    const y = runBlockStep(x, blockParts, {
      ln1g: p.ln_1.g, ln1b: p.ln_1.b, wa: wa.packed, ba: attn.c_attn.b, wo: wo.packed, bo: attn.c_proj.b,
      ln2g: p.ln_2.g, ln2b: p.ln_2.b, wf: wf.packed, bf: mlp.c_fc.b, wm: wm.packed, bm: mlp.c_proj.b,
    }, { nHead: parts[0].ctx.nHead, nInner: wf.outDim, eps, act: ACT_CODES[act], scale: attnScale(d, parts[0].ctx.nHead) }); // [N, d]
    return { x: y, kvs };
  },
};
