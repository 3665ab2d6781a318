/**
 * `npm test` runs two projects in one jest run (one JSON report for CI):
 * - node:    test/ — parity, engine, tokenizer, I/O, server, CLI (cpu and wasm backends)
 * - browser: test/browser/ — real headless Chromium (webgl, webgpu, wasm, the page); needs the
 *            `chromium` apt package: fails under CI=true without it, skipped with a reason elsewhere.
 * Files run one at a time (maxWorkers 1): the machine has two cores and the suites are CPU-bound.
 * @type {import('jest').Config}
 */
const transform = { '^.+\\.ts$': ['ts-jest', { tsconfig: 'tsconfig.json' }] };
module.exports = {
  maxWorkers: 1,
  testTimeout: 180000,
  projects: [
    {
      displayName: 'node',
      preset: 'ts-jest',
      testEnvironment: 'node',
      roots: ['<rootDir>/test'],
      testMatch: ['**/*.test.ts'],
      testPathIgnorePatterns: ['/node_modules/', '/test/browser/'],
      transform,
    },
    {
      displayName: 'browser',
      preset: 'ts-jest',
      testEnvironment: 'node',
      roots: ['<rootDir>/test/browser'],
      testMatch: ['**/*.test.ts'],
      transform,
    },
  ],
};
