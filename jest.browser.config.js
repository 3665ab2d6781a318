/**
 * Real-browser tests (test/browser/): headless Chromium driven by playwright-core. Kept out of the
 * main `npm test` run (see jest.config.js) because they need the chromium package and take minutes.
 * @type {import('jest').Config}
 */
module.exports = {
  preset: 'ts-jest',
  testEnvironment: 'node',
  roots: ['<rootDir>/test/browser'],
  testMatch: ['**/*.test.ts'],
  testTimeout: 180000,
  maxWorkers: 1,
  transform: { '^.+\\.ts$': ['ts-jest', { tsconfig: 'tsconfig.json' }] },
};
