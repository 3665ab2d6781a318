/** Backend selection in Node: lazy imports and clear errors for what this runtime cannot run. */
import * as tf from '@tensorflow/tfjs-core';
import { GPT2Error, setBackend } from '../src';

test('cpu and wasm switch and report themselves', async () => {
  await setBackend('cpu');
  expect(tf.getBackend()).toBe('cpu');
  await setBackend('wasm');
  expect(tf.getBackend()).toBe('wasm');
});

test.each(['webgl', 'webgpu'] as const)('%s in Node names the runtime it needs', async (name) => {
  await expect(setBackend(name)).rejects.toMatchObject({ code: 'BACKEND_UNAVAILABLE', message: expect.stringMatching(/browser/) });
});

test('tensorflow (tfjs-node) names the package when it is not installed', async () => {
  let installed = true;
  try {
    require.resolve('@tensorflow/tfjs-node');
  } catch {
    installed = false;
  }
  if (installed) {
    await setBackend('tensorflow');
    expect(tf.getBackend()).toBe('tensorflow');
  } else {
    await expect(setBackend('tensorflow')).rejects.toMatchObject({ code: 'BACKEND_UNAVAILABLE', message: expect.stringMatching(/@tensorflow\/tfjs-node/) });
  }
});

test('an unknown backend is BAD_OPTION', async () => {
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  await expect(setBackend('tpu' as 'cpu')).rejects.toBeInstanceOf(GPT2Error);
  await expect(setBackend('tpu' as 'cpu')).rejects.toMatchObject({ code: 'BAD_OPTION' });
});
