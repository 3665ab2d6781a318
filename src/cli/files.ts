/**
 * CLI commands that move model files: `download` (from the Hugging Face hub, resumable) and
 * `convert` (to a tfjs manifest for browsers, or to int8 q8 weights). Thin: parse, call io/, report.
 */
import { Command, InvalidArgumentError, Option } from 'commander';
import { quantizeModel } from '../convert';
import { GPT2Error } from '../errors';
import { downloadModel } from '../io/download';
import { LoadProgress } from '../io/hf';
import { openSource } from '../io/source';
import { TfjsStoredDtype } from '../io/tfjs';
import { convertToTfjs } from '../io/weights';
import type { CliIO } from './index';

export interface FileCommandHelpers {
  /** Environment to read HF_ENDPOINT from (default process.env). */
  env?: Record<string, string | undefined>;
}

const mb = (b: number): number => Math.round(b / 1e5) / 10;

function positive(name: string) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isFinite(n) || n <= 0) throw new InvalidArgumentError(`${name} must be a positive number`);
    return n;
  };
}

/** A per-file progress bar on stderr (when it is a terminal); returns the callback and a stop(). */
async function fileProgress(io: CliIO, verb: string, quiet: boolean): Promise<{ onProgress?: (p: LoadProgress) => void; stop(): void }> {
  if (quiet || !io.stderr.isTTY) return { stop: () => undefined };
  const { SingleBar, Presets } = await import('cli-progress');
  const bar = new SingleBar({ format: `${verb} {file} [{bar}] {percentage}% | {value}/{total} MB`, stream: io.stderr as NodeJS.WritableStream }, Presets.shades_classic);
  let current: string | null = null;
  return {
    onProgress: (p) => {
      if (p.file !== current) {
        if (current !== null) bar.stop();
        bar.start(mb(p.totalBytes), mb(p.loadedBytes), { file: p.file });
        current = p.file;
      }
      bar.setTotal(mb(p.totalBytes));
      bar.update(mb(p.loadedBytes), { file: p.file });
    },
    stop: () => {
      if (current !== null) bar.stop();
    },
  };
}

export function registerFileCommands(program: Command, io: CliIO, helpers: FileCommandHelpers = {}): void {
  program
    .command('download')
    .description('download a GPT-2 checkpoint from the Hugging Face hub into a folder (resumes interrupted downloads)')
    .argument('<hf-model-id>', 'model id, e.g. gpt2 or openai-community/gpt2')
    .requiredOption('--to <dir>', 'folder to save into')
    .option('--endpoint <url>', 'hub endpoint (default: $HF_ENDPOINT or https://huggingface.co)')
    .option('--revision <rev>', 'branch, tag or commit', 'main')
    .option('-q, --quiet', 'no progress bar')
    .addHelpText('after', '\nExamples:\n  $ gpt2-tfjs download gpt2 --to models/gpt2\n  $ gpt2-tfjs generate "Hello" --model models/gpt2')
    .action(async (id: string, o: { to: string; endpoint?: string; revision: string; quiet?: boolean }) => {
      const env = helpers.env ?? process.env;
      const progress = await fileProgress(io, 'downloading', !!o.quiet);
      const r = await downloadModel(id, { to: o.to, endpoint: o.endpoint ?? env.HF_ENDPOINT, revision: o.revision, onProgress: progress.onProgress }).finally(() => progress.stop());
      io.stdout.write(`downloaded ${id}@${o.revision} to ${r.dir}: ${r.files.join(', ')} (${mb(r.fetchedBytes)} MB fetched)\n`);
    });

  program
    .command('convert')
    .description('convert a model folder to another weights layout: a tfjs manifest (for browsers), or int8 weights (--quantize q8, ~4x smaller)')
    .argument('<dir>', 'model folder (or http(s) base URL) in Hugging Face layout (F32/F16/BF16 safetensors, sharded or not, or a tfjs manifest)')
    .argument('<out>', 'output folder')
    .addOption(new Option('--to <format>', 'target layout (tfjs: model.json + binary shards)').choices(['tfjs']))
    .addOption(new Option('--quantize <scheme>', 'write int8 weights in Hugging Face layout (model.safetensors + quantization_config, docs/q8.md)').choices(['q8']).conflicts('to'))
    .option('--shard-mb <n>', 'largest shard in MiB (tfjs)', positive('--shard-mb'), 4)
    .addOption(new Option('--dtype <dtype>', 'stored precision (tfjs)').choices(['float32', 'float16']).default('float32'))
    .option('-q, --quiet', 'no progress bar')
    .addHelpText('after', '\nExamples:\n  $ gpt2-tfjs convert --quantize q8 models/gpt2 models/gpt2-q8\n  $ gpt2-tfjs convert --to tfjs models/gpt2 web/models/gpt2\n  $ gpt2-tfjs convert --to tfjs models/gpt2 out --shard-mb 8 --dtype float16')
    .action(async (dir: string, out: string, o: { to?: 'tfjs'; quantize?: 'q8'; shardMb: number; dtype: TfjsStoredDtype; quiet?: boolean }) => {
      if (o.quantize) {
        const progress = await fileProgress(io, 'quantizing', !!o.quiet);
        const r = await quantizeModel(dir, out, { onProgress: progress.onProgress }).finally(() => progress.stop());
        io.stdout.write(`wrote ${r.path}: ${r.tensors} tensors, ${mb(r.bytes)} MB (${(r.bytes / r.floatBytes).toFixed(3)}x the ${mb(r.floatBytes)} MB of float32 weights); copied ${r.copied.join(', ')}\n`);
        return;
      }
      if (!o.to) throw new GPT2Error('BAD_OPTION', 'say what to convert to: --to tfjs, or --quantize q8');
      const shardBytes = Math.max(1, Math.round(o.shardMb * 2 ** 20));
      const r = await convertToTfjs(openSource(dir), out, { shardBytes, dtype: o.dtype });
      io.stdout.write(`wrote ${r.modelJson}: ${r.weights} weights in ${r.paths.length} shard(s), ${mb(r.bytes)} MB ${o.dtype}; copied ${r.copied.join(', ')}\n`);
    });
}
