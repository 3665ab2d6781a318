/**
 * Which engine runs (chosen once per model step, and for each KV-cache rearrangement), and what it
 * reports about itself.
 */
import * as tf from '../tf';
import { Engine, tfEngine } from './engine';
import { wasmEngine } from './wasm/engine';
import { KernelStatus, kernelStatus, wasmKernelsActive } from './wasm/instance';

/** The engine for the active backend: the wasm kernels where they run, else tf ops. */
export function currentEngine(): Engine {
  return wasmKernelsActive() ? wasmEngine : tfEngine;
}

/** What runs the model now: the public engineInfo(). */
export interface EngineInfo {
  /** The active tfjs backend ('wasm', 'cpu', 'webgl', ...), or null before any backend started. */
  backend: string | null;
  /** 'wasm-kernels' (our SIMD kernels) or 'tf-ops' (the backend's own ops). */
  engine: Engine['name'];
  /** The wasm kernels: on/off and why, threads (used, wanted, why fewer), FMA build, versions. */
  kernels: KernelStatus;
  /** How a q8 (int8) model loaded now runs: on the int8 kernels, or dequantized to float32 at load, and why. */
  q8: { int8Kernels: boolean; reason?: string };
}

export function engineInfo(): EngineInfo {
  let backend: string | null = null;
  try {
    backend = tf.getBackend() ?? null;
  } catch {
    backend = null;
  }
  const kernels = kernelStatus();
  const q8 = kernels.active ? { int8Kernels: true } : { int8Kernels: false, reason: `q8 weights are dequantized to float32 at load: ${kernels.reason}` };
  return { backend, engine: currentEngine().name, kernels, q8 };
}
