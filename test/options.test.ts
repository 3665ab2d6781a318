/** One place for defaults: the library, the CLI and the server read them from src/options.ts. */
import type { Command } from 'commander';
import { buildProgram } from '../src/cli';
import type * as Generate from '../src/generate/generate';
import type { GPT2Model } from '../src/model/gpt2';
import { checkSamplingOptions } from '../src/generate/sampling';
import type * as Sampling from '../src/generate/sampling';
import { COMPLETION_DEFAULTS, GENERATE_DEFAULTS, READING_PRESET, SAMPLING_DEFAULTS, SERVER_DEFAULTS } from '../src/options';
import type * as Options from '../src/options';
import { completionFields } from '../src/server/request';

function flagDefaults(name: string): Record<string, unknown> {
  const io = { stdout: { write: () => true }, stderr: { write: () => true } };
  const cmd = buildProgram(io).commands.find((c: Command) => c.name() === name);
  if (!cmd) throw new Error(`no ${name} command`);
  return Object.fromEntries(cmd.options.map((o) => [o.attributeName(), o.defaultValue]));
}

test('the library samples from the model itself: every processor off, temperature 1', () => {
  expect(SAMPLING_DEFAULTS).toEqual({ temperature: 1, topK: 0, topP: 1, minP: 0, repetitionPenalty: 1, logitBias: {}, presencePenalty: 0, frequencyPenalty: 0 });
  // Every sampling option has its default here: the validator fills in exactly these.
  expect(checkSamplingOptions({})).toEqual(SAMPLING_DEFAULTS);
  expect(GENERATE_DEFAULTS).toEqual({ ...SAMPLING_DEFAULTS, maxNewTokens: 64 });
});

test('the library reads its defaults from options.ts: change them there and generation follows', () => {
  const moved = { temperature: 0.5, topK: 3, topP: 0.9, minP: 0.01, repetitionPenalty: 1.2, logitBias: { 2: -100 }, presencePenalty: 0.5, frequencyPenalty: -0.5 };
  jest.isolateModules(() => {
    jest.doMock('../src/options', () => {
      const real = jest.requireActual<typeof Options>('../src/options');
      return { ...real, SAMPLING_DEFAULTS: moved, GENERATE_DEFAULTS: { ...moved, maxNewTokens: 3 } };
    });
    // A Sequence needs only the model's config: keep a second copy of tfjs out of this registry.
    jest.doMock('../src/model/gpt2', () => ({ GPT2Model: class {}, KVCache: class {} }));
    const sampling = require('../src/generate/sampling') as typeof Sampling;
    const generate = require('../src/generate/generate') as typeof Generate;
    expect(sampling.checkSamplingOptions({})).toEqual(moved);
    expect(sampling.checkSamplingOptions({ topK: 7 })).toEqual({ ...moved, topK: 7 });
    // A sequence with no maxNewTokens stops after the moved default of 3 tokens.
    const model = { config: { vocabSize: 4, nPositions: 32, eosTokenId: null } } as unknown as GPT2Model;
    const seq = new generate.Sequence([1], { temperature: 0 }, model, null);
    const logits = Float32Array.from([0, 1, 5, 2]); // the moved logitBias bans the argmax, 2
    for (let i = 0; i < 10 && !seq.done; i++) seq.accept(logits);
    expect(seq.result()).toMatchObject({ tokens: [3, 3, 3], finishReason: 'length' });
  });
});

test('the CLI generates with the reading preset (temperature 0.7, top-k 40), read from options.ts', () => {
  expect(READING_PRESET).toEqual({ ...SAMPLING_DEFAULTS, temperature: 0.7, topK: 40 });
  // The CLI's sampling flags: those it has default to the preset.
  const { temperature, topK, topP, minP, repetitionPenalty } = READING_PRESET;
  expect(flagDefaults('generate')).toMatchObject({ temperature, topK, topP, minP, repetitionPenalty });
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
  for (const d of [SAMPLING_DEFAULTS, GENERATE_DEFAULTS, READING_PRESET, COMPLETION_DEFAULTS, SERVER_DEFAULTS, SAMPLING_DEFAULTS.logitBias]) expect(Object.isFrozen(d)).toBe(true);
});
