/**
 * The browser page: pick a backend and a model URL, type a prompt, watch tokens stream in.
 * Uses the library's public API only (loadModel / setBackend / GPT2.stream).
 *
 * Query parameters preset the form: ?backend=webgl&model=https://…/&autoload=0
 */
import { BackendName, GPT2, GenerateOptions, currentBackend, engineInfo, isGPT2Error, loadModel, setBackend } from '../src/index';

const PAGE_BACKENDS: readonly BackendName[] = ['wasm', 'webgl', 'webgpu', 'cpu'];

function el<T extends HTMLElement>(id: string): T {
  const e = document.getElementById(id);
  if (!e) throw new Error(`page is missing #${id}`);
  return e as T;
}

const ui = {
  backend: el<HTMLSelectElement>('backend'),
  modelUrl: el<HTMLInputElement>('modelUrl'),
  load: el<HTMLButtonElement>('load'),
  modelinfo: el<HTMLDivElement>('modelinfo'),
  prompt: el<HTMLTextAreaElement>('prompt'),
  maxTokens: el<HTMLInputElement>('maxTokens'),
  temperature: el<HTMLInputElement>('temperature'),
  topK: el<HTMLInputElement>('topK'),
  topP: el<HTMLInputElement>('topP'),
  seed: el<HTMLInputElement>('seed'),
  generate: el<HTMLButtonElement>('generate'),
  stop: el<HTMLButtonElement>('stop'),
  status: el<HTMLSpanElement>('status'),
  output: el<HTMLPreElement>('output'),
  statBackend: el<HTMLElement>('statBackend'),
  statEngine: el<HTMLElement>('statEngine'),
  statPrompt: el<HTMLElement>('statPrompt'),
  statTokens: el<HTMLElement>('statTokens'),
  statTtft: el<HTMLElement>('statTtft'),
  statTps: el<HTMLElement>('statTps'),
  statFinish: el<HTMLElement>('statFinish'),
};

const TEXT_PROMPT = 'To be, or not to be, that is the question:';
const IDS_PROMPT = '2514 307 11 393 407 284 307'; // 'To be, or not to be' as GPT-2 token ids

/**
 * What runs the model, next to the speed: on wasm our kernels (threads, fused multiply-add) or, with
 * the reason, the plain tf ops; one thread with the reason (e.g. a page without COOP/COEP headers).
 */
function showEngine(): void {
  const info = engineInfo();
  const k = info.kernels;
  let text = info.engine === 'wasm-kernels' ? `wasm kernels · ${k.threads} thread${k.threads > 1 ? 's' : ''}${k.fma ? ' · FMA' : ''}` : 'tf ops';
  const why = info.backend === 'wasm' ? (k.reason ?? k.threadReason) : undefined;
  if (why) text += ' (!)';
  ui.statEngine.textContent = text;
  ui.statEngine.title = why ?? '';
}

/** Page state, mirrored into <body data-state> so tests (and CSS) can follow it. */
type PageState = 'loading' | 'ready' | 'generating' | 'error';

let model: GPT2 | null = null;
let loaded: { backend: BackendName; url: string } | null = null;
let controller: AbortController | null = null;
let busy = false;

function setState(state: PageState, message: string): void {
  document.body.dataset.state = state;
  ui.status.textContent = message;
  ui.status.classList.toggle('error', state === 'error');
  ui.generate.disabled = state === 'generating' || state === 'loading';
  ui.load.disabled = state === 'generating' || state === 'loading';
  ui.stop.disabled = state !== 'generating';
}

function describeError(e: unknown): string {
  if (isGPT2Error(e)) return `${e.code}: ${e.message}`;
  return e instanceof Error ? e.message : String(e);
}

/** Yields to the event loop (a macrotask, unclamped unlike setTimeout) so the page repaints and Stop clicks land. */
function yieldToBrowser(): Promise<void> {
  return new Promise((resolve) => {
    const ch = new MessageChannel();
    ch.port1.onmessage = () => resolve();
    ch.port2.postMessage(null);
  });
}

/** The shipped model when the server has it, else the tiny random test model. */
async function defaultModelUrl(): Promise<string> {
  const shakespeare = new URL('/weights/gpt2-shakespeare/', location.href).href;
  try {
    const res = await fetch(shakespeare + 'config.json', { method: 'HEAD' });
    if (res.ok) return shakespeare;
  } catch {
    // fall through to the tiny model
  }
  return new URL('/weights/tiny-random/', location.href).href;
}

async function ensureModel(): Promise<GPT2> {
  const backend = ui.backend.value as BackendName;
  const url = new URL(ui.modelUrl.value.trim(), location.href).href;
  if (model && loaded && loaded.backend === backend && loaded.url === url) return model;
  model?.dispose();
  model = null;
  loaded = null;
  setState('loading', `loading ${backend}…`);
  // The wasm binaries are copied into web/dist/ by the build; tell tfjs where (before it initialises).
  if (backend === 'wasm') await setBackend('wasm', { wasmPaths: new URL('./dist/', location.href).href });
  const t0 = performance.now();
  let downloadBytes = 0;
  const m = await loadModel(url, {
    backend,
    onProgress: (p) => {
      downloadBytes = p.totalBytes;
      setState('loading', `loading weights… ${(p.loadedBytes / 1e6).toFixed(1)} / ${(p.totalBytes / 1e6).toFixed(1)} MB`);
    },
  });
  const w = m.model.weights;
  const weights = w.format === 'q8' ? (w.held === 'int8' ? 'int8 (q8) weights on int8 kernels' : 'int8 (q8) weights, dequantized to float32 on this backend') : 'float32 weights';
  const c = m.config;
  const params = c.vocabSize * c.nEmbd + c.nPositions * c.nEmbd + c.nLayer * (12 * c.nEmbd * c.nEmbd + 13 * c.nEmbd);
  ui.modelinfo.textContent =
    `${new URL(url).pathname} · ${c.nLayer} layers, d=${c.nEmbd}, ${c.nHead} heads, context ${c.nPositions}, ≈${(params / 1e6).toFixed(1)}M params · ` +
    `${(downloadBytes / 1e6).toFixed(1)} MB, ${weights} · loaded on ${currentBackend()} in ${((performance.now() - t0) / 1000).toFixed(2)} s · ` +
    (m.tokenizer ? 'tokenizer: GPT-2 BPE' : 'no tokenizer files: the prompt is token ids, separated by spaces');
  document.body.dataset.tokenizer = m.tokenizer ? 'bpe' : 'none';
  // Keep the example prompt in the form the model can read.
  if (!m.tokenizer && ui.prompt.value === TEXT_PROMPT) ui.prompt.value = IDS_PROMPT;
  if (m.tokenizer && ui.prompt.value === IDS_PROMPT) ui.prompt.value = TEXT_PROMPT;
  ui.statBackend.textContent = currentBackend();
  showEngine();
  model = m;
  loaded = { backend, url };
  return m;
}

function parseIds(text: string): number[] {
  const parts = text.split(/[\s,]+/).filter(Boolean);
  const ids = parts.map(Number);
  if (!parts.length || ids.some((n) => !Number.isInteger(n))) {
    throw new Error('this model has no tokenizer files: enter the prompt as token ids separated by spaces');
  }
  return ids;
}

function numberField(input: HTMLInputElement, name: string, fallback: number): number {
  if (input.value.trim() === '') return fallback;
  const v = Number(input.value);
  if (!Number.isFinite(v)) throw new Error(`${name} must be a number`);
  return v;
}

function samplingOptions(m: GPT2): GenerateOptions {
  const requested = Math.round(numberField(ui.maxTokens, 'max tokens', 48));
  const seedText = ui.seed.value.trim();
  return {
    // The library rejects budgets at or past the context; clamp here and let long prompts be cut on the left.
    maxNewTokens: Math.max(1, Math.min(requested, m.config.nPositions - 1)),
    temperature: numberField(ui.temperature, 'temperature', 1),
    topK: Math.round(numberField(ui.topK, 'top-k', 0)),
    topP: numberField(ui.topP, 'top-p', 1),
    seed: seedText === '' ? Math.floor(Math.random() * 2 ** 31) : Math.round(Number(seedText)),
    truncate: 'left',
  };
}

async function generate(): Promise<void> {
  if (busy) return;
  busy = true;
  try {
    const m = await ensureModel();
    const prompt = m.tokenizer ? ui.prompt.value : parseIds(ui.prompt.value);
    const opts = samplingOptions(m);
    controller = new AbortController();
    opts.signal = controller.signal;

    const promptTokens = m.encode(prompt).length;
    ui.output.textContent = '';
    const shown = document.createElement('span');
    shown.className = 'prompt';
    shown.textContent = m.tokenizer ? ui.prompt.value : prompt.toString().replace(/,/g, ' ');
    const gen = document.createElement('span');
    gen.className = 'gen';
    ui.output.append(shown, gen);
    ui.statBackend.textContent = currentBackend();
    showEngine();
    ui.statPrompt.textContent = String(promptTokens);
    ui.statTokens.textContent = '0';
    ui.statTtft.textContent = '–';
    ui.statTps.textContent = '–';
    ui.statFinish.textContent = '–';
    setState('generating', 'generating…');

    const t0 = performance.now();
    let tFirst = 0;
    let n = 0;
    for await (const chunk of m.stream(prompt, opts)) {
      const now = performance.now();
      if (chunk.token >= 0) {
        n++;
        if (n === 1) {
          tFirst = now;
          // Time to first token = prefill of the whole prompt + one draw.
          ui.statTtft.textContent = `${(now - t0).toFixed(0)} ms (${((promptTokens * 1000) / (now - t0)).toFixed(1)} tok/s prefill)`;
        }
      }
      gen.textContent += m.tokenizer ? chunk.text : chunk.token >= 0 ? ` ${chunk.token}` : '';
      ui.statTokens.textContent = String(n);
      if (n > 1) ui.statTps.textContent = (((n - 1) * 1000) / (now - tFirst)).toFixed(1);
      await yieldToBrowser();
    }
    const finish = controller.signal.aborted ? 'stopped' : n >= (opts.maxNewTokens ?? 0) ? 'length' : 'end of text';
    ui.statFinish.textContent = finish;
    setState('ready', `done: ${n} tokens (${finish})`);
  } catch (e) {
    setState('error', describeError(e));
  } finally {
    controller = null;
    busy = false;
  }
}

async function loadOnly(): Promise<void> {
  if (busy) return;
  busy = true;
  try {
    await ensureModel();
    setState('ready', 'ready');
  } catch (e) {
    ui.modelinfo.textContent = 'no model loaded';
    setState('error', describeError(e));
  } finally {
    busy = false;
  }
}

async function init(): Promise<void> {
  const q = new URLSearchParams(location.search);
  const b = q.get('backend');
  if (b && (PAGE_BACKENDS as readonly string[]).includes(b)) ui.backend.value = b;
  ui.modelUrl.value = q.get('model') ?? (await defaultModelUrl());
  ui.prompt.value = TEXT_PROMPT;
  ui.generate.addEventListener('click', () => void generate());
  ui.stop.addEventListener('click', () => controller?.abort());
  ui.load.addEventListener('click', () => void loadOnly());
  ui.prompt.addEventListener('keydown', (ev) => {
    if (ev.key === 'Enter' && (ev.ctrlKey || ev.metaKey)) void generate();
  });
  if (q.get('autoload') === '0') setState('ready', 'press Load or Generate');
  else await loadOnly();
}

void init();
