/**
 * Node only: downloads a GPT-2 checkpoint from the Hugging Face hub (or a mirror with the same URL
 * scheme, `${endpoint}/${id}/resolve/${revision}/${file}`) into a folder that loadModel reads.
 * Resumable: each file is streamed into `file.part`, continued with `Range: bytes=N-` after an
 * interruption, and renamed only when its length is right. Files already present are kept.
 */
import { GPT2Error, isGPT2Error } from '../errors';
import { LoadProgress, parseIndex } from './hf';
import { fetchToFile } from './http';
import { isSafeRelativePath } from './paths';
import { SIDE_FILES } from './weights';

export interface DownloadOptions {
  /** Folder to save into (created if missing). */
  to: string;
  /** Hub endpoint (default: $HF_ENDPOINT, else https://huggingface.co). */
  endpoint?: string;
  /** Branch, tag or commit (default 'main'). */
  revision?: string;
  /** Exactly these files, all required (default: config, safetensors weights, tokenizer files). */
  files?: string[];
  /** Per-file progress: bytes of `file` on disk so far (resumed bytes included) and its length. */
  onProgress?: (p: LoadProgress) => void;
  signal?: AbortSignal;
}

export interface DownloadResult {
  dir: string;
  /** Files now in `dir`, in download order. */
  files: string[];
  /** Bytes fetched over the network by this call (resumed and already-present bytes excluded). */
  fetchedBytes: number;
}

const DEFAULT_ENDPOINT = 'https://huggingface.co';

export async function downloadModel(id: string, options: DownloadOptions): Promise<DownloadResult> {
  const fs = require('fs') as typeof import('fs');
  const path = require('path') as typeof import('path');
  if (typeof id !== 'string' || !/^[\w.-]+(\/[\w.-]+)?$/.test(id) || id.split('/').some((p) => p === '..' || p === '.')) {
    throw new GPT2Error('BAD_OPTION', `"${id}" is not a Hugging Face model id (like gpt2 or openai-community/gpt2)`);
  }
  if (!options || typeof options.to !== 'string' || options.to === '') throw new GPT2Error('BAD_OPTION', 'downloadModel needs { to: folder }');
  const endpoint = (options.endpoint ?? process.env.HF_ENDPOINT ?? DEFAULT_ENDPOINT).replace(/\/+$/, '');
  const revision = options.revision ?? 'main';
  if (!/^https?:\/\//i.test(endpoint)) throw new GPT2Error('BAD_OPTION', `endpoint must be an http(s) URL (got "${endpoint}")`);
  if (options.files && !options.files.every(isSafeRelativePath)) throw new GPT2Error('BAD_OPTION', 'files must be relative file names inside the model repository');
  const dir = options.to;
  await fs.promises.mkdir(dir, { recursive: true });

  const base = `${endpoint}/${id}/resolve/${encodeURIComponent(revision)}`;
  const got: string[] = [];
  let fetchedBytes = 0;

  /** Fetches one file; false when it is optional and the hub does not have it. */
  const fetchFile = async (file: string, required: boolean): Promise<boolean> => {
    const dest = path.join(dir, file);
    if (fs.existsSync(dest)) {
      got.push(file);
      return true;
    }
    await fs.promises.mkdir(path.dirname(dest), { recursive: true });
    try {
      const { fetched } = await fetchToFile(`${base}/${file}`, dest, {
        partPath: `${dest}.part`,
        resume: true,
        keepPartial: true,
        signal: options.signal,
        onBytes: (loadedBytes, totalBytes) => options.onProgress?.({ loadedBytes, totalBytes, file }),
      });
      fetchedBytes += fetched;
    } catch (e) {
      if (!required && isGPT2Error(e, 'MISSING_FILE')) return false;
      if (isGPT2Error(e, 'MISSING_FILE')) {
        throw new GPT2Error('MISSING_FILE', `${e.message}: is "${id}" a model id on ${endpoint}, with revision "${revision}"?`, { cause: e });
      }
      throw e;
    }
    got.push(file);
    return true;
  };

  if (options.files) {
    for (const f of options.files) await fetchFile(f, true);
    return { dir, files: got, fetchedBytes };
  }

  await fetchFile('config.json', true);
  if (await fetchFile('model.safetensors.index.json', false)) {
    const indexPath = path.join(dir, 'model.safetensors.index.json');
    for (const s of parseIndex(await fs.promises.readFile(indexPath, 'utf8'), indexPath)) await fetchFile(s, true);
  } else if (!(await fetchFile('model.safetensors', false))) {
    throw new GPT2Error(
      'MISSING_FILE',
      `${base}/ has neither model.safetensors nor model.safetensors.index.json: only safetensors checkpoints can be loaded ` +
        `(is "${id}" right, and does revision "${revision}" have safetensors weights?)`,
    );
  }
  for (const f of SIDE_FILES) await fetchFile(f, false);
  return { dir, files: got, fetchedBytes };
}

