/**
 * Keys/values of every layer for B rows that share one time axis. Rows shorter than the longest
 * are left-padded: `pad[b]` leading positions of row b are masked out and positions restart at 0
 * after them, so a padded row computes exactly what it would alone. Rows join (a sequence prefilled
 * alone enters the running batch) and leave (finished sequences) between steps; how the buffers are
 * written and moved is the engine's (engine.ts KVOps), this class keeps the bookkeeping.
 */
import * as tf from '../tf';
import { GPT2Error } from '../errors';
import { LayerKV } from './engine';
import { currentEngine } from './engines';

export class KVCache {
  layers: LayerKV[] | null = null;
  /** Positions held per row, padding included. */
  length = 0;
  constructor(readonly pad: number[] = [0]) {}
  get batch(): number {
    return this.pad.length;
  }

  /** Replaces the cached tensors (disposing the old ones, except buffers the new layers reuse). */
  update(layers: LayerKV[], length: number): void {
    const kept = new Set(layers.flatMap((l) => [l.k, l.v]));
    for (const l of this.layers ?? []) {
      if (!kept.has(l.k)) l.k.dispose();
      if (!kept.has(l.v)) l.v.dispose();
    }
    this.layers = layers;
    this.length = length;
  }

  dispose(): void {
    for (const l of this.layers ?? []) {
      l.k.dispose();
      l.v.dispose();
    }
    this.layers = null;
    this.length = 0;
    this.pad.length = 0;
  }

  /**
   * Moves the rows of `other` into this cache (continuous batching: a sequence prefilled alone joins
   * the running batch). The shorter side is left-padded with masked positions; `other` ends empty.
   */
  append(other: KVCache): void {
    if (!other.layers) throw new GPT2Error('BAD_INPUT', 'cannot append an empty KV cache');
    if (!this.layers || this.pad.length === 0) {
      this.layers = other.layers;
      this.length = other.length;
      this.pad.splice(0, this.pad.length, ...other.pad);
      other.layers = null;
      other.dispose();
      return;
    }
    const length = Math.max(this.length, other.length);
    const plan = { rowsA: this.pad.length, lenA: this.length, padA: length - this.length, rowsB: other.pad.length, lenB: other.length, padB: length - other.length, length };
    const mine = this.layers;
    const theirs = other.layers;
    const e = currentEngine();
    const merged = tf.tidy(() => mine.flatMap((l, i) => both(e.kv.join(l, theirs[i], plan)))) as tf.Tensor3D[];
    const pad = [...this.pad.map((p) => p + plan.padA), ...other.pad.map((p) => p + plan.padB)];
    this.update(pairs(merged), length);
    this.pad.splice(0, this.pad.length, ...pad);
    other.dispose();
  }

  /** Keeps only `rows` (in that order), then drops leading positions that are padding in every row. */
  keepRows(rows: number[]): void {
    if (!this.layers) return;
    if (rows.length === 0) {
      this.dispose();
      return;
    }
    const pad = rows.map((r) => this.pad[r]);
    const trim = Math.min(...pad);
    if (trim === 0 && rows.length === this.pad.length && rows.every((r, i) => r === i)) return;
    const layers = this.layers;
    const e = currentEngine();
    const kept = tf.tidy(() => layers.flatMap((l) => both(e.kv.keep(l, rows, trim, this.length)))) as tf.Tensor3D[];
    this.update(pairs(kept), this.length - trim);
    this.pad.splice(0, this.pad.length, ...pad.map((p) => p - trim));
  }
}

const both = (l: LayerKV): tf.Tensor3D[] => [l.k, l.v];

function pairs(flat: tf.Tensor3D[]): LayerKV[] {
  const out: LayerKV[] = [];
  for (let i = 0; i < flat.length; i += 2) out.push({ k: flat[i], v: flat[i + 1] });
  return out;
}
