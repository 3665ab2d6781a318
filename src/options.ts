/**
 * The defaults of every public option, in one place: the library (`GenerateOptions`), the CLI and
 * the HTTP server read them from here. A leaf module (no imports), like errors.ts, so any layer may
 * import it; `SamplingOptions` in generate/sampling.ts documents what each option does.
 *
 * Two sampling defaults, on purpose:
 *
 * - Library and server: `SAMPLING_DEFAULTS`, the model's own distribution (temperature 1, every
 *   filter off). The library is "exact to the reference": `generate()` with no options draws from
 *   softmax(logits) as the NumPy reference and picoGPT do, so what a caller measures is the model and
 *   not a hidden preset. The server mirrors OpenAI's API, whose documented defaults are the same
 *   (temperature 1, top_p 1); clients ported from OpenAI get what they expect.
 * - CLI `generate`: `READING_PRESET`, temperature 0.7 and top-k 40. The CLI is for a person reading
 *   samples of the small bundled Shakespeare model, whose tail at temperature 1 is mostly noise; the
 *   preset trades diversity for legible text. It is named, so a library caller can ask for the
 *   same with `{ ...READING_PRESET }` and a CLI user can get the neutral draw with `-t 1 --top-k 0`.
 */

/** A value for every `SamplingOptions` key (checkSamplingOptions returns them all, so none can be missing). */
export interface SamplingDefaults {
  readonly temperature: number;
  readonly topK: number;
  readonly topP: number;
  readonly minP: number;
  readonly repetitionPenalty: number;
  readonly logitBias: Readonly<Record<number, number>>;
  readonly presencePenalty: number;
  readonly frequencyPenalty: number;
}

/** The library's sampling defaults: each processor at its neutral value, i.e. off. */
export const SAMPLING_DEFAULTS: SamplingDefaults = Object.freeze({
  temperature: 1,
  topK: 0,
  topP: 1,
  minP: 0,
  repetitionPenalty: 1,
  logitBias: Object.freeze({}), // no token biased
  presencePenalty: 0,
  frequencyPenalty: 0,
});

/** The library's `GenerateOptions` defaults (`maxNewTokens` is also capped by the room the prompt leaves). */
export const GENERATE_DEFAULTS = Object.freeze({ ...SAMPLING_DEFAULTS, maxNewTokens: 64 });

/** The CLI's `generate` sampling: legible samples from a small model (see above). */
export const READING_PRESET: SamplingDefaults = Object.freeze({ ...SAMPLING_DEFAULTS, temperature: 0.7, topK: 40 });

/**
 * `/v1/completions` request defaults: OpenAI's documented ones. Sampling fields a request leaves out
 * fall to the library's defaults, which equal OpenAI's; temperature is stated here because it is
 * the one a reader of the API docs looks for.
 */
export const COMPLETION_DEFAULTS = Object.freeze({
  max_tokens: 16,
  temperature: SAMPLING_DEFAULTS.temperature,
  n: 1,
  echo: false,
  stream: false,
});

/** `startServer` options and the matching `serve` flags (`maxPromptTokens` defaults to the model's context). */
export const SERVER_DEFAULTS = Object.freeze({
  host: '127.0.0.1', // loopback only; bind 0.0.0.0 deliberately
  port: 8080,
  maxBatch: 8,
  maxQueue: 64,
  prefillChunk: 64, // prompt tokens fed per step beside running rows, at most (chunked prefill; docs/server.md)
  prefillStretch: 1.5, // ... and no more than keep such a step within 1.5x a plain decode step (p95 then stays near 2x; docs/server.md)
  maxTokens: 256,
  maxChoices: 16,
  requestTimeoutMs: 120_000,
  bodyLimit: 1024 * 1024,
  modelName: 'gpt2',
  shutdownGraceMs: 5000,
  bodyTimeoutMs: 10_000,
  keepAliveTimeoutMs: 5000,
  maxConnections: 512,
  logger: false, // library code does not log
});
