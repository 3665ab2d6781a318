/**
 * The `gpt2-tfjs` command line. Thin: parse (commander), call the library, format output.
 * commander: the de-facto Node CLI parser (subcommands, typed options, generated --help).
 * cli-progress: a maintained terminal progress bar, drawn on stderr while weights load.
 */
import { Command, InvalidArgumentError, Option } from 'commander';
import { BACKENDS, BackendName } from '../backend';
import { GPT2Error } from '../errors';
import { GPT2, GenerateOptions, LoadOptions, loadModel } from '../index';
import { LoadProgress } from '../io/hf';
import { GENERATE_DEFAULTS, READING_PRESET, SERVER_DEFAULTS } from '../options';
import { registerFileCommands } from './files';

export interface CliIO {
  stdout: { write(s: string): unknown; isTTY?: boolean };
  stderr: { write(s: string): unknown; isTTY?: boolean };
  stdin?: NodeJS.ReadableStream & { isTTY?: boolean };
}

class CliError extends Error {}

function int(name: string, min: number, max = Number.MAX_SAFE_INTEGER) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min || n > max) throw new InvalidArgumentError(`${name} must be an integer in [${min}, ${max}]`);
    return n;
  };
}
function num(name: string, min: number, max = Infinity) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isFinite(n) || n < min || n > max) throw new InvalidArgumentError(`${name} must be a number in [${min}, ${max}]`);
    return n;
  };
}
function collect(v: string, prev: string[] = []): string[] {
  return [...prev, v.replace(/\\n/g, '\n')];
}

const backendOption = () => new Option('-b, --backend <name>', 'tfjs backend').choices([...BACKENDS]).default('wasm');
const threadsOption = () => new Option('--threads <n>', 'wasm in Node: threads for the kernels, 1..cores (default: cores, at most 4; env GPT2_TFJS_THREADS)').argParser(int('--threads', 1));
const modelOption = () => new Option('-m, --model <dir-or-url>', 'model folder or http(s) base URL in Hugging Face layout (default: the bundled Shakespeare model)');

async function readStdin(stdin: NodeJS.ReadableStream): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of stdin) chunks.push(typeof c === 'string' ? Buffer.from(c) : (c as Buffer));
  return Buffer.concat(chunks).toString('utf8');
}

const loadTimeoutOption = () =>
  new Option('--load-timeout <ms>', 'model URLs: fail when the server sends nothing for this long (default 30000)').argParser(int('--load-timeout', 1));

/** The model-loading flags every command shares. */
interface LoadFlags {
  model?: string;
  backend: BackendName;
  threads?: number;
  loadTimeout?: number;
}

/** Loads a model with a progress bar on stderr when it is a terminal; Ctrl-C during the load aborts it. */
export async function loadWithProgress(io: CliIO, flags: LoadFlags, quiet = false, extra: Partial<Pick<LoadOptions, 'validate'>> = {}): Promise<GPT2> {
  const ctl = new AbortController();
  const abort = (): void => ctl.abort();
  process.once('SIGINT', abort);
  try {
    return await loadQuietlyOrNot(io, flags.model, { backend: flags.backend, threads: flags.threads, timeoutMs: flags.loadTimeout, signal: ctl.signal, ...extra }, quiet);
  } finally {
    process.off('SIGINT', abort);
  }
}

async function loadQuietlyOrNot(io: CliIO, model: string | undefined, options: LoadOptions, quiet: boolean): Promise<GPT2> {
  if (quiet || !io.stderr.isTTY) return loadModel(model, options);
  const { SingleBar, Presets } = await import('cli-progress');
  const bar = new SingleBar({ format: 'loading {file} [{bar}] {percentage}% | {value}/{total} MB', stream: io.stderr as NodeJS.WritableStream, clearOnComplete: true }, Presets.shades_classic);
  let started = false;
  try {
    return await loadModel(model, {
      ...options,
      onProgress: (p: LoadProgress) => {
        const mb = (b: number) => Math.round(b / 1e5) / 10;
        if (!started) {
          bar.start(mb(p.totalBytes), 0, { file: p.file });
          started = true;
        }
        bar.update(mb(p.loadedBytes), { file: p.file });
      },
    });
  } finally {
    if (started) bar.stop();
  }
}

export function buildProgram(io: CliIO): Command {
  const program = new Command();
  program
    .name('gpt2-tfjs')
    .description('GPT-2 text generation on TensorFlow.js: generate, serve, benchmark, download and convert models.')
    .exitOverride()
    .configureOutput({ writeOut: (s) => io.stdout.write(s), writeErr: (s) => io.stderr.write(s) })
    .showHelpAfterError('(run with --help for usage)');

  program
    .command('generate')
    .description('generate text from a prompt (argument or stdin), streamed to stdout as tokens arrive')
    .argument('[prompt]', 'the prompt; read from stdin when omitted')
    .addOption(modelOption())
    .addOption(loadTimeoutOption())
    .addOption(backendOption())
    .addOption(threadsOption())
    // Sampling defaults are READING_PRESET, not the library's neutral ones: options.ts says why.
    .option('-n, --max-new-tokens <n>', `tokens to generate (default ${GENERATE_DEFAULTS.maxNewTokens}, or what the context leaves)`, int('--max-new-tokens', 1, 100000))
    .option('-t, --temperature <t>', 'sampling temperature (0 = greedy)', num('--temperature', 0), READING_PRESET.temperature)
    .option('--top-k <k>', 'keep the k most likely tokens (0 = off)', int('--top-k', 0), READING_PRESET.topK)
    .option('--top-p <p>', 'nucleus sampling mass (1 = off)', num('--top-p', Number.MIN_VALUE, 1), READING_PRESET.topP)
    .option('--min-p <p>', 'drop tokens below p × the top probability (0 = off)', num('--min-p', 0, 1), READING_PRESET.minP)
    .option('--repetition-penalty <r>', 'discourage repeated tokens (1 = off)', num('--repetition-penalty', Number.MIN_VALUE), READING_PRESET.repetitionPenalty)
    .option('-s, --seed <n>', 'random seed (same seed, same text)', int('--seed', 0, 0xffffffff))
    .option('--stop <text>', 'stop string (repeatable; \\n means newline)', collect)
    .option('--json', 'print one JSON result instead of streaming text')
    .option('-q, --quiet', 'no progress bar')
    .addHelpText('after', '\nExamples:\n  $ gpt2-tfjs generate "ROMEO:"\n  $ gpt2-tfjs generate "To be" -n 50 --seed 42 --temperature 0.7\n  $ echo "JULIET:" | gpt2-tfjs generate --top-k 40 --stop "\\n\\n" --json\n  $ gpt2-tfjs generate "Hello" --model ./my-gpt2 --backend cpu')
    .action(async (promptArg: string | undefined, o) => {
      let prompt = promptArg;
      if (prompt === undefined) {
        if (!io.stdin || io.stdin.isTTY) throw new CliError('no prompt: pass it as an argument or pipe it on stdin');
        prompt = (await readStdin(io.stdin)).replace(/\n$/, '');
      }
      if (!prompt) throw new CliError('the prompt is empty');
      const gpt = await loadWithProgress(io, o, o.quiet || o.json);
      try {
        const opts: GenerateOptions = {
          maxNewTokens: o.maxNewTokens, temperature: o.temperature, topK: o.topK, topP: o.topP, minP: o.minP,
          repetitionPenalty: o.repetitionPenalty, seed: o.seed, stop: o.stop, truncate: 'left',
        };
        if (o.json) {
          const t0 = Date.now();
          const r = await gpt.generate(prompt, opts);
          io.stdout.write(JSON.stringify({ prompt, ...r, seconds: (Date.now() - t0) / 1000 }) + '\n');
        } else {
          io.stdout.write(prompt);
          for await (const c of gpt.stream(prompt, opts)) io.stdout.write(c.text);
          io.stdout.write('\n');
        }
      } finally {
        gpt.dispose();
      }
    });

  program
    .command('score')
    .description('mean next-token cross-entropy (loss, perplexity) of a text file under the model')
    .argument('<file>', 'UTF-8 text file ("-" for stdin)')
    .addOption(modelOption())
    .addOption(loadTimeoutOption())
    .addOption(backendOption())
    .addOption(threadsOption())
    .option('--window <n>', 'tokens per window (default: the model context)', int('--window', 2))
    .option('--json', 'print one JSON object')
    .option('-q, --quiet', 'no progress bar')
    .addHelpText('after', '\nExamples:\n  $ gpt2-tfjs score ../shared/data/tinyshakespeare.txt\n  $ cat notes.txt | gpt2-tfjs score - --json')
    .action(async (file: string, o) => {
      let text: string;
      if (file === '-') {
        if (!io.stdin) throw new CliError('no stdin to read');
        text = await readStdin(io.stdin);
      } else {
        const fs = await import('fs');
        try {
          text = fs.readFileSync(file, 'utf8');
        } catch (e) {
          throw new CliError(`cannot read ${file}: ${(e as Error).message}`);
        }
      }
      const gpt = await loadWithProgress(io, o, o.quiet || o.json);
      try {
        const t0 = Date.now();
        const r = await gpt.score(text, { windowSize: o.window });
        const seconds = (Date.now() - t0) / 1000;
        if (o.json) io.stdout.write(JSON.stringify({ file, ...r, seconds }) + '\n');
        else io.stdout.write(`${file}: loss ${r.loss.toFixed(4)} nats/token, perplexity ${r.perplexity.toFixed(2)} over ${r.tokens} predicted tokens (${seconds.toFixed(1)} s)\n`);
      } finally {
        gpt.dispose();
      }
    });

  program
    .command('bench')
    .description('measure prefill and decode tokens/s, time to first token, peak RSS and tensor count')
    .addOption(modelOption())
    .addOption(loadTimeoutOption())
    .addOption(backendOption())
    .addOption(threadsOption())
    .option('--prompt-tokens <n>', 'prompt length', int('--prompt-tokens', 1), 256)
    .option('--new-tokens <n>', 'tokens to generate', int('--new-tokens', 1), 64)
    .option('--batch <n>', 'sequences decoded together', int('--batch', 1, 64), 1)
    .option('--json', 'print one JSON object on the last line')
    .addHelpText('after', '\nExamples:\n  $ python3 bench/make_random_checkpoint.py   # 124M-shaped random model in bench/models/\n  $ gpt2-tfjs bench --model bench/models/gpt2-124m-random --backend wasm --prompt-tokens 256 --new-tokens 64\n  $ gpt2-tfjs bench --batch 8 --json')
    .action(async (o) => {
      const { runBench } = await import('../bench');
      const r = await runBench({ model: o.model, backend: o.backend, threads: o.threads, promptTokens: o.promptTokens, newTokens: o.newTokens, batch: o.batch });
      const f = (x: number, d = 1) => x.toFixed(d);
      io.stdout.write(
        `model ${r.model}: ${r.nLayer} layers, ${r.nHead} heads, n_embd ${r.nEmbd}, vocab ${r.vocabSize}\n` +
          `backend ${r.backend}, engine ${r.engine.engine} (${r.threads} thread${r.threads > 1 ? 's' : ''}${r.fma ? ', fused multiply-add' : ''}${r.fusedBlocks ? ', blocks fused' : ''}), prompt ${r.promptTokens} tokens, ${r.newTokens} new tokens, batch ${r.batch}\n` +
          (r.engine.kernels.reason && r.backend === 'wasm' ? `wasm kernels off: ${r.engine.kernels.reason}\n` : '') +
          (r.engine.kernels.threadReason ? `one kernel thread: ${r.engine.kernels.threadReason}\n` : '') +
          `load ${f(r.loadSeconds, 2)} s | time to first token ${f(r.timeToFirstTokenSeconds, 3)} s\n` +
          `prefill ${f(r.prefillTokensPerSecond)} tokens/s | decode ${f(r.decodeTokensPerSecond)} tokens/s (${f(r.decodeMsPerStep)} ms/step)\n` +
          `peak RSS ${f(r.peakRssBytes / 2 ** 20, 0)} MiB | tensors ${r.numTensors}\n`,
      );
      if (o.json) io.stdout.write(JSON.stringify(r) + '\n');
    });

  program
    .command('check')
    .description('load a model and check every weight for NaN and ±Infinity (exit 1 naming the first one found)')
    .addOption(modelOption())
    .addOption(loadTimeoutOption())
    .addOption(backendOption())
    .option('--json', 'print one JSON object')
    .addHelpText('after', '\nExamples:\n  $ gpt2-tfjs check\n  $ gpt2-tfjs check --model ./my-gpt2 --json')
    .action(async (o) => {
      const t0 = performance.now();
      const gpt = await loadWithProgress(io, o, Boolean(o.json), { validate: true });
      const seconds = (performance.now() - t0) / 1000;
      const c = gpt.config;
      gpt.dispose();
      const r = { ok: true, layers: c.nLayer, nEmbd: c.nEmbd, vocabSize: c.vocabSize, seconds };
      io.stdout.write(o.json ? JSON.stringify(r) + '\n' : `ok: every weight is finite (${c.nLayer} layers, n_embd ${c.nEmbd}, vocab ${c.vocabSize}); loaded and checked in ${seconds.toFixed(2)} s\n`);
    });

  program
    .command('serve')
    .description('serve an OpenAI-compatible completions API over HTTP (continuous batching)')
    .addOption(modelOption())
    .addOption(loadTimeoutOption())
    .addOption(backendOption())
    .addOption(threadsOption())
    .option('-p, --port <n>', 'port', int('--port', 0, 65535), SERVER_DEFAULTS.port)
    .option('--host <host>', 'address to listen on', SERVER_DEFAULTS.host)
    .option('--max-batch <n>', 'rows decoded together', int('--max-batch', 1, 256), SERVER_DEFAULTS.maxBatch)
    .option('--max-queue <n>', 'waiting requests before 429', int('--max-queue', 0, 100000), SERVER_DEFAULTS.maxQueue)
    .option('--prefill-chunk <n>', 'prompt tokens fed per step beside running requests, at most (chunked prefill)', int('--prefill-chunk', 1, 100000), SERVER_DEFAULTS.prefillChunk)
    .option('--prefill-stretch <x>', 'a step carrying prompt tokens takes at most ~x times a plain decode step', (v: string) => { const n = Number(v); if (!(n > 1)) throw new InvalidArgumentError('--prefill-stretch must be a number > 1'); return n; }, SERVER_DEFAULTS.prefillStretch)
    .option('--max-tokens <n>', 'cap on a request\'s max_tokens', int('--max-tokens', 1, 100000), SERVER_DEFAULTS.maxTokens)
    .option('--request-timeout <ms>', 'per-request timeout in milliseconds', int('--request-timeout', 1), SERVER_DEFAULTS.requestTimeoutMs)
    .option('--body-timeout <ms>', 'a request\'s headers and body must arrive within this (408 otherwise)', int('--body-timeout', 1), SERVER_DEFAULTS.bodyTimeoutMs)
    .option('--max-connections <n>', 'open connections at most; more are closed on arrival', int('--max-connections', 1), SERVER_DEFAULTS.maxConnections)
    .option('--model-name <id>', 'model id reported by /v1/models and accepted in requests', SERVER_DEFAULTS.modelName)
    .addHelpText('after', '\nExamples:\n  $ gpt2-tfjs serve --port 8080\n  $ curl -s localhost:8080/v1/completions -H "content-type: application/json" -d \'{"prompt":"ROMEO:","max_tokens":40}\'')
    .action(async (o) => {
      const gpt = await loadWithProgress(io, o, false);
      const { startServer } = await import('../server');
      const srv = await startServer({
        model: gpt, host: o.host, port: o.port, maxBatch: o.maxBatch, maxQueue: o.maxQueue, prefillChunk: o.prefillChunk, prefillStretch: o.prefillStretch,
        maxTokens: o.maxTokens, requestTimeoutMs: o.requestTimeout, modelName: o.modelName,
        bodyTimeoutMs: o.bodyTimeout, maxConnections: o.maxConnections,
      });
      io.stderr.write(`gpt2-tfjs listening on ${srv.url} (backend ${o.backend}); Ctrl-C to stop\n`);
      await new Promise<void>((resolve) => {
        const stop = () => {
          srv
            .close()
            .catch((e: Error) => io.stderr.write(`gpt2-tfjs: error while closing: ${e.message}\n`))
            .finally(() => {
              gpt.dispose();
              resolve();
            });
        };
        process.once('SIGINT', stop);
        process.once('SIGTERM', stop);
      });
    });

  registerFileCommands(program, io);
  return program;
}

/** Runs the CLI; returns the exit code (never calls process.exit, so tests can call it in-process). */
export async function main(argv: string[], io: CliIO = { stdout: process.stdout, stderr: process.stderr, stdin: process.stdin }): Promise<number> {
  const program = buildProgram(io);
  try {
    await program.parseAsync(argv);
    return 0;
  } catch (e) {
    const err = e as { code?: string; exitCode?: number; message?: string };
    if (typeof err.code === 'string' && err.code.startsWith('commander.')) {
      return err.code === 'commander.helpDisplayed' || err.code === 'commander.version' || err.code === 'commander.help' ? 0 : (err.exitCode ?? 2);
    }
    if (e instanceof CliError) io.stderr.write(`gpt2-tfjs: ${e.message}\n`);
    else if (e instanceof GPT2Error) io.stderr.write(`gpt2-tfjs: ${e.message} [${e.code}]\n`);
    else io.stderr.write(`gpt2-tfjs: unexpected error: ${(e as Error)?.stack ?? String(e)}\n`);
    return 1;
  }
}
