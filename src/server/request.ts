/**
 * The /v1/completions request: its JSON schema (Fastify validates every body against it before the
 * handler runs) and the parse from a valid body to prompts and generation options — the analogue of
 * llama.cpp's `params_from_json_cmpl`.
 *
 * Every request field is one row of `completionFields`: its schema, and either the `GenerateOptions`
 * key it sets (with an optional mapping and default), or, for a field this server does not
 * implement, the only value it accepts. Adding an OpenAI sampling field is one row, e.g.
 *   presence_penalty: { schema: opt({ type: 'number', minimum: -2, maximum: 2 }), option: 'presencePenalty' },
 * Each option a row sets is then checked by the library's own validator, with the vocabulary the
 * sampler will use, so what the schema cannot say (a logit_bias id past the vocabulary) is a 400
 * naming the request field rather than a failure once generation starts.
 */
import { isGPT2Error } from '../errors';
import type { GenerateOptions } from '../generate/generate';
import { SamplingOptions, VocabBounds, checkSamplingOptions, vocabBounds } from '../generate/sampling';
import { COMPLETION_DEFAULTS } from '../options';
import type { Tokenizer } from '../tokenizer';
import { HttpError } from './openai';

/** OpenAI's limit for the legacy endpoint. */
export const MAX_LOGPROBS = 5;
export const MAX_STOPS = 4;

/** One request field: how it is validated and what it becomes. */
export interface FieldSpec {
  /** JSON schema of the field's value. */
  schema: object;
  /** The `GenerateOptions` key a non-null value sets (fields without one are read by `parseCompletion` itself). */
  option?: keyof GenerateOptions;
  /** The request's value → the option's (`undefined` leaves the option unset). */
  map?: (v: unknown) => unknown;
  /** The option's value when the field is absent or null. */
  default?: unknown;
  /** Accepted for client compatibility at its neutral value only (null always passes); `hint` says what to use. */
  neutral?: { ok: (v: unknown) => boolean; hint?: string };
}

/** `null` allowed too, as OpenAI's clients send it for "unset". */
const opt = (s: object): object => ({ anyOf: [s, { type: 'null' }] });

/** The request fields, in the order the schema lists them; `maxTokens` and `maxChoices` are the server's caps. */
export function completionFields(maxTokens: number, maxChoices: number): Record<string, FieldSpec> {
  const ids = { type: 'array', minItems: 1, items: { type: 'integer', minimum: 0 } };
  const text = { type: 'string' };
  const prompts = { anyOf: [text, { type: 'array', minItems: 1, maxItems: maxChoices, items: text }, ids, { type: 'array', minItems: 1, maxItems: maxChoices, items: ids }] };
  const penalty = opt({ type: 'number', minimum: -2, maximum: 2 });
  // JSON keys are the token ids as strings, as a Record<number, number>'s keys are in JS; the
  // library's check (below) wants each a canonical integer id inside the vocabulary.
  const bias = opt({ type: 'object', additionalProperties: { type: 'number', minimum: -100, maximum: 100 } });
  // prettier-ignore
  return {
    model:              { schema: { type: 'string' } },
    prompt:             { schema: prompts },
    max_tokens:         { schema: opt({ type: 'integer', minimum: 0, maximum: maxTokens }) }, // → maxNewTokens; 0 only with echo
    temperature:        { schema: opt({ type: 'number', minimum: 0, maximum: 2 }), option: 'temperature', default: COMPLETION_DEFAULTS.temperature },
    top_p:              { schema: opt({ type: 'number', exclusiveMinimum: 0, maximum: 1 }), option: 'topP' },
    top_k:              { schema: opt({ type: 'integer', minimum: -1 }), option: 'topK', map: (k) => (k === -1 ? undefined : k) },
    min_p:              { schema: opt({ type: 'number', minimum: 0, maximum: 1 }), option: 'minP' },
    repetition_penalty: { schema: opt({ type: 'number', exclusiveMinimum: 0 }), option: 'repetitionPenalty' },
    stop:               { schema: opt({ anyOf: [{ type: 'string', minLength: 1 }, { type: 'array', maxItems: MAX_STOPS, items: { type: 'string', minLength: 1 } }] }), option: 'stop' },
    seed:               { schema: opt({ type: 'integer', minimum: 0, maximum: 4294967295 }), option: 'seed' },
    n:                  { schema: opt({ type: 'integer', minimum: 1, maximum: maxChoices }) },
    logprobs:           { schema: opt({ type: 'integer', minimum: 0, maximum: MAX_LOGPROBS }), option: 'logprobs' },
    echo:               { schema: opt({ type: 'boolean' }) },
    stream:             { schema: opt({ type: 'boolean' }) },
    stream_options:     { schema: opt({ type: 'object', additionalProperties: false, properties: { include_usage: { type: 'boolean' } } }) },
    presence_penalty:   { schema: penalty, option: 'presencePenalty' },
    frequency_penalty:  { schema: penalty, option: 'frequencyPenalty' },
    best_of:            { schema: opt({ type: 'integer' }), neutral: { ok: (v) => v === 1, hint: 'use n' } },
    suffix:             { schema: opt({ type: 'string' }), neutral: { ok: (v) => v === '', hint: 'insertion is not supported' } },
    logit_bias:         { schema: bias, option: 'logitBias', map: (v) => Object.fromEntries(Object.entries(v as Record<string, number>)) },
    user:               { schema: { type: 'string' } },
  };
}

/** The JSON schema of a request body, built from the field table. */
export function completionSchema(fields: Record<string, FieldSpec>): object {
  const properties: Record<string, object> = {};
  for (const [name, f] of Object.entries(fields)) properties[name] = f.schema;
  return { type: 'object', required: ['prompt'], additionalProperties: false, properties };
}

/** A body that passed the schema: the fields `parseCompletion` reads itself, the rest by table. */
export interface CompletionBody {
  model?: string;
  prompt: string | string[] | number[] | number[][];
  max_tokens?: number | null;
  n?: number | null;
  echo?: boolean | null;
  stream?: boolean | null;
  stream_options?: { include_usage?: boolean } | null;
  [field: string]: unknown;
}

/** What the parse needs of the server and its model. */
export interface ParseContext {
  /** The id this server serves; a request naming another gets 404. */
  modelName: string;
  maxPromptTokens: number;
  maxChoices: number;
  vocabSize: number;
  /** null: the model has no tokenizer, so prompts must be token ids. */
  tokenizer: Pick<Tokenizer, 'encode' | 'decode' | 'maxTokenBytes' | 'vocabSize'> | null;
}

export interface PromptItem {
  ids: number[];
  /** The prompt as text (for echo). */
  text: string;
}

export interface ParsedCompletion {
  prompts: PromptItem[];
  /** Completions per prompt. */
  n: number;
  /** Options shared by every choice (the handler adds the signal and offsets the seed per choice). */
  options: GenerateOptions;
  /** max_tokens; 0 means score the prompt only (echo). */
  maxNew: number;
  echo: boolean;
  stream: boolean;
  includeUsage: boolean;
}

const yieldToEventLoop = (): Promise<void> => new Promise((r) => setImmediate(r));

/**
 * A schema-valid body → prompts and generation options; throws HttpError for what the schema cannot
 * say (an unserved model, unsupported values, a bad sampling option, prompts that cannot fit). Text prompts are tokenized
 * one at a time, yielding to the event loop in between.
 */
export async function parseCompletion(body: CompletionBody, fields: Record<string, FieldSpec>, ctx: ParseContext): Promise<ParsedCompletion> {
  if (body.model !== undefined && body.model !== ctx.modelName) {
    throw new HttpError(404, `the model '${body.model}' does not exist; this server serves '${ctx.modelName}'`, 'model', 'model_not_found');
  }
  for (const [k, f] of Object.entries(fields)) {
    const v = body[k];
    if (f.neutral && v !== undefined && v !== null && !f.neutral.ok(v)) {
      throw new HttpError(400, `${k} is not supported by this server${f.neutral.hint ? ` (${f.neutral.hint})` : ''}`, k, 'unsupported_parameter');
    }
  }

  const prompts = await parsePrompts(body.prompt, ctx);
  const n = body.n ?? COMPLETION_DEFAULTS.n;
  if (prompts.length * n > ctx.maxChoices) {
    throw new HttpError(400, `${prompts.length} prompt(s) × n=${n} asks for ${prompts.length * n} completions; this server takes at most ${ctx.maxChoices} per request`, 'n', 'invalid_value');
  }
  const echo = body.echo ?? COMPLETION_DEFAULTS.echo;
  const maxNew = body.max_tokens ?? COMPLETION_DEFAULTS.max_tokens;
  if (maxNew === 0 && !echo) throw new HttpError(400, 'max_tokens must be ≥ 1 (0 is allowed only with echo, to score the prompt)', 'max_tokens', 'invalid_value');

  const options: GenerateOptions = { maxNewTokens: maxNew };
  const set = options as Record<string, unknown>;
  const vocab = vocabBounds(ctx.vocabSize, ctx.tokenizer);
  for (const [k, f] of Object.entries(fields)) {
    if (!f.option) continue;
    const v = body[k] ?? undefined;
    const value = v === undefined ? f.default : f.map ? f.map(v) : v;
    if (value === undefined) continue;
    checkOption(k, f.option, value, vocab);
    set[f.option] = value;
  }
  return { prompts, n, options, maxNew, echo, stream: body.stream ?? COMPLETION_DEFAULTS.stream, includeUsage: body.stream_options?.include_usage ?? false };
}

/**
 * The library's check of one sampling option, as `generate` will run it (other options pass through:
 * `Sequence` checks those); its BAD_OPTION becomes a 400 naming the request field.
 */
function checkOption(field: string, option: keyof GenerateOptions, value: unknown, vocab: VocabBounds): void {
  try {
    checkSamplingOptions({ [option]: value } as SamplingOptions, vocab.limit ?? vocab.size);
  } catch (e) {
    if (!isGPT2Error(e, 'BAD_OPTION')) throw e;
    // The library's messages start with its option's name; the client knows the field's.
    const message = e.message.startsWith(option) ? field + e.message.slice(option.length) : e.message;
    throw new HttpError(400, message, field, 'invalid_value');
  }
}

async function parsePrompts(p: CompletionBody['prompt'], ctx: ParseContext): Promise<PromptItem[]> {
  const codec = ctx.tokenizer;
  const raw: (string | number[])[] = typeof p === 'string' ? [p] : typeof p[0] === 'number' ? [p as number[]] : (p as (string | number[])[]);
  const tooLong = (n: string | number): HttpError =>
    new HttpError(400, `the prompt has ${n} tokens; this server takes at most ${ctx.maxPromptTokens}`, 'prompt', 'context_length_exceeded');
  const prompts: PromptItem[] = [];
  for (const x of raw) {
    let ids: number[];
    if (typeof x === 'string') {
      if (!codec) throw new HttpError(400, 'this model has no tokenizer: send the prompt as token ids', 'prompt', 'no_tokenizer');
      // A cheap bound first: no token is longer than maxTokenBytes, so a text this long cannot fit.
      const atLeast = Math.ceil(Buffer.byteLength(x) / codec.maxTokenBytes);
      if (atLeast > ctx.maxPromptTokens) throw tooLong(`at least ${atLeast}`);
      await yieldToEventLoop(); // one prompt's tokenizing at a time between other requests
      ids = codec.encode(x, { allowSpecial: false });
    } else {
      ids = x;
      const bad = ids.find((id) => id >= ctx.vocabSize);
      if (bad !== undefined) throw new HttpError(400, `token id ${bad} is out of range: ids must be integers in [0, ${ctx.vocabSize - 1}]`, 'prompt', 'invalid_value');
    }
    if (ids.length === 0) throw new HttpError(400, 'the prompt is empty: give at least one token', 'prompt', 'invalid_value');
    if (ids.length > ctx.maxPromptTokens) throw tooLong(ids.length);
    prompts.push({ ids, text: typeof x === 'string' ? x : codec ? codec.decode(ids) : '' });
  }
  return prompts;
}
