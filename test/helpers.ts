import * as fs from 'fs';
import * as path from 'path';
import { GPT2Error } from '../src/errors';

export const ROOT = path.join(__dirname, '..');
export const TINY_DIR = path.join(ROOT, 'weights', 'tiny-random');

export function fixture<T>(name: string): T {
  return JSON.parse(fs.readFileSync(path.join(ROOT, 'test', 'fixtures', name), 'utf8')) as T;
}

export function fixtureF32(name: string): Float32Array {
  const b = fs.readFileSync(path.join(ROOT, 'test', 'fixtures', name));
  return new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));
}

export interface TinyFixture {
  model: string;
  fullLogits: { file: string; ids: number[]; shape: [number, number] };
  cases: { ids: number[]; columns: number[]; logits: number[][]; argmax: number[]; top2Margin: number[]; logsumexp: number[] }[];
  greedy: { prompt: number[]; newTokens: number; ids: number[] }[];
}

/** Node backends the parity suites run on; tfjs-node joins when it is installed. */
export function nodeBackends(): ('cpu' | 'wasm' | 'tensorflow')[] {
  const out: ('cpu' | 'wasm' | 'tensorflow')[] = ['cpu', 'wasm'];
  try {
    require.resolve('@tensorflow/tfjs-node');
    out.push('tensorflow');
  } catch {
    // eslint-disable-next-line no-console
    console.log('parity on "tensorflow" skipped: @tensorflow/tfjs-node is not installed (it downloads libtensorflow at install time)');
  }
  return out;
}

export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

export function logsumexp(row: ArrayLike<number>): number {
  let max = -Infinity;
  for (let i = 0; i < row.length; i++) max = Math.max(max, row[i]);
  let s = 0;
  for (let i = 0; i < row.length; i++) s += Math.exp(row[i] - max);
  return Math.log(s) + max;
}

/** Logits of `ids`, then the model is disposed (one-shot loads in I/O tests). */
export async function forwardAndDispose(model: { forward(ids: number[]): Promise<Float32Array>; dispose(): void }, ids: number[]): Promise<Float32Array> {
  try {
    return await model.forward(ids);
  } finally {
    model.dispose();
  }
}

/** Bit-identical logits (same weights read through another path). */
export function expectSameLogits(got: Float32Array, reference: Float32Array): void {
  expect(got.length).toBe(reference.length);
  expect(maxAbsDiff(got, reference)).toBe(0);
}

/**
 * The shared Tiny Shakespeare corpus: $TINYSHAKESPEARE, else shared/ beside the checkout (as CI lays
 * it out), else the workplace's /work/shared. Fails loudly when none exists.
 */
export function corpusPath(): string {
  const fs = require('fs') as typeof import('fs');
  const path = require('path') as typeof import('path');
  const candidates = [
    process.env.TINYSHAKESPEARE,
    path.join(ROOT, '..', 'shared', 'data', 'tinyshakespeare.txt'),
    '/work/shared/data/tinyshakespeare.txt',
  ].filter((p): p is string => !!p);
  const found = candidates.find((p) => fs.existsSync(p));
  if (!found) throw new Error(`tinyshakespeare.txt not found (looked in: ${candidates.join(', ')}); set TINYSHAKESPEARE`);
  return found;
}

/** The GPT2Error a promise rejects with (fails the test if it resolves or throws something else). */
export async function rejection(p: Promise<unknown>): Promise<GPT2Error> {
  try {
    await p;
  } catch (e) {
    expect(e).toBeInstanceOf(GPT2Error);
    return e as GPT2Error;
  }
  throw new Error('expected a rejection');
}

/** The server's error shape (OpenAI's). */
export interface ErrorBody {
  error: { message: string; type: string; param: string | null; code: string | null };
}
