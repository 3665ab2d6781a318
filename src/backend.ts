/**
 * Backend selection. Each backend package is imported lazily, only when chosen, so a Node user
 * never loads WebGL code and a browser bundle never loads tfjs-node.
 */
import * as tf from './tf';
import { GPT2Error } from './errors';

export type BackendName = 'cpu' | 'wasm' | 'webgl' | 'webgpu' | 'tensorflow';
export const BACKENDS: readonly BackendName[] = ['cpu', 'wasm', 'webgl', 'webgpu', 'tensorflow'];

const PACKAGES: Record<BackendName, string> = {
  cpu: '@tensorflow/tfjs-backend-cpu',
  wasm: '@tensorflow/tfjs-backend-wasm',
  webgl: '@tensorflow/tfjs-backend-webgl',
  webgpu: '@tensorflow/tfjs-backend-webgpu',
  tensorflow: '@tensorflow/tfjs-node',
};

const isNode = typeof process !== 'undefined' && !!process.versions?.node && typeof window === 'undefined';

/** The backend used when none is named: wasm everywhere (fast, exact float32), as the issues ask. */
export function defaultBackend(): BackendName {
  return 'wasm';
}

async function importBackend(name: BackendName): Promise<void> {
  try {
    switch (name) {
      case 'cpu':
        await import('@tensorflow/tfjs-backend-cpu');
        return;
      case 'wasm':
        await import('@tensorflow/tfjs-backend-wasm');
        return;
      case 'webgl':
        if (isNode) throw new GPT2Error('BACKEND_UNAVAILABLE', 'backend "webgl" needs a browser (WebGL2); in Node use "wasm", "cpu" or "tensorflow"');
        await import(/* webpackIgnore: false */ '@tensorflow/tfjs-backend-webgl' as string);
        return;
      case 'webgpu':
        if (isNode) throw new GPT2Error('BACKEND_UNAVAILABLE', 'backend "webgpu" needs a browser with WebGPU; in Node use "wasm", "cpu" or "tensorflow"');
        await import('@tensorflow/tfjs-backend-webgpu' as string);
        return;
      case 'tensorflow':
        if (!isNode) throw new GPT2Error('BACKEND_UNAVAILABLE', 'backend "tensorflow" (tfjs-node) runs only in Node');
        await import('@tensorflow/tfjs-node' as string);
        return;
    }
  } catch (e) {
    if (e instanceof GPT2Error) throw e;
    throw new GPT2Error(
      'BACKEND_UNAVAILABLE',
      `backend "${name}" is not available: could not load ${PACKAGES[name]} (${(e as Error).message.split('\n')[0]}). Install it with \`npm install ${PACKAGES[name]}\`${name === 'tensorflow' ? ' (it downloads libtensorflow at install time; where that fails use "wasm")' : ''}.`,
      { cause: e },
    );
  }
}

/** Switches tfjs to `name` (importing its package on first use) and waits until it is ready. */
export async function setBackend(name: BackendName = defaultBackend()): Promise<BackendName> {
  if (!BACKENDS.includes(name)) {
    throw new GPT2Error('BAD_OPTION', `unknown backend "${name}" (choose one of: ${BACKENDS.join(', ')})`);
  }
  if (tf.getBackend() === name && tf.engine().backendName === name) return name;
  await importBackend(name);
  let ok = false;
  try {
    ok = await tf.setBackend(name);
  } catch (e) {
    throw new GPT2Error('BACKEND_UNAVAILABLE', `backend "${name}" failed to initialise: ${(e as Error).message}`, { cause: e });
  }
  if (!ok) throw new GPT2Error('BACKEND_UNAVAILABLE', `backend "${name}" failed to initialise in this runtime`);
  await tf.ready();
  // Production mode skips per-op debug checks and the "install tfjs-node" console notice.
  tf.enableProdMode();
  return name;
}

export function currentBackend(): string {
  return tf.getBackend();
}
