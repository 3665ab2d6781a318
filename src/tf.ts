/**
 * The one place the library imports tfjs-core. The code uses the functional op style
 * (`tf.add(x, y)`): tfjs-core's CommonJS build does not register chained methods (`x.add(y)`).
 */
export * from '@tensorflow/tfjs-core';
