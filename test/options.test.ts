/** One place for defaults: the library, the CLI and the server agree with src/options.ts. */
import type { Command } from 'commander';
import { buildProgram } from '../src/cli';
import { DEFAULT_MAX_NEW_TOKENS } from '../src/generate/generate';
import { checkSamplingOptions } from '../src/generate/sampling';
import { COMPLETION_DEFAULTS, GENERATE_DEFAULTS, READING_PRESET, SAMPLING_DEFAULTS, SERVER_DEFAULTS } from '../src/options';
import { completionFields } from '../src/server/request';

function flagDefaults(name: string): Record<string, unknown> {
  const io = { stdout: { write: () => true }, stderr: { write: () => true } };
  const cmd = buildProgram(io).commands.find((c: Command) => c.name() === name);
  if (!cmd) throw new Error(`no ${name} command`);
  return Object.fromEntries(cmd.options.map((o) => [o.attributeName(), o.defaultValue]));
}

test('the library samples from the model itself: every processor off, temperature 1', () => {
  expect(SAMPLING_DEFAULTS).toEqual({ temperature: 1, topK: 0, topP: 1, minP: 0, repetitionPenalty: 1 });
  expect(checkSamplingOptions({})).toMatchObject(SAMPLING_DEFAULTS);
  expect(GENERATE_DEFAULTS).toEqual({ ...SAMPLING_DEFAULTS, maxNewTokens: DEFAULT_MAX_NEW_TOKENS });
});

test('the CLI generates with the reading preset (temperature 0.7, top-k 40), read from options.ts', () => {
  expect(READING_PRESET).toEqual({ ...SAMPLING_DEFAULTS, temperature: 0.7, topK: 40 });
  expect(flagDefaults('generate')).toMatchObject(READING_PRESET);
});

test('serve flags default to startServer defaults', () => {
  const flags = flagDefaults('serve');
  const { host, port, maxBatch, maxQueue, maxTokens, modelName, maxConnections } = SERVER_DEFAULTS;
  expect(flags).toMatchObject({ host, port, maxBatch, maxQueue, maxTokens, modelName, maxConnections, requestTimeout: SERVER_DEFAULTS.requestTimeoutMs, bodyTimeout: SERVER_DEFAULTS.bodyTimeoutMs });
});

test('the server follows OpenAI: max_tokens 16, temperature 1 — the library default, stated once', () => {
  expect(COMPLETION_DEFAULTS).toMatchObject({ max_tokens: 16, temperature: SAMPLING_DEFAULTS.temperature, n: 1 });
  expect(completionFields(256, 16).temperature.default).toBe(COMPLETION_DEFAULTS.temperature);
});

test('defaults are frozen: no caller can change them for everyone', () => {
  for (const d of [SAMPLING_DEFAULTS, GENERATE_DEFAULTS, READING_PRESET, COMPLETION_DEFAULTS, SERVER_DEFAULTS]) expect(Object.isFrozen(d)).toBe(true);
});
