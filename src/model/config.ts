/**
 * GPT2Config: the subset of Hugging Face's `configuration_gpt2.py` that the forward pass needs,
 * validated once, with HF's defaults in one place.
 */
import { GPT2Error } from '../errors';

export type Activation = 'gelu_new' | 'gelu' | 'relu';

export interface GPT2Config {
  vocabSize: number;
  nPositions: number;
  nEmbd: number;
  nLayer: number;
  nHead: number;
  /** MLP hidden size (HF `n_inner`, null means 4 * n_embd). */
  nInner: number;
  layerNormEpsilon: number;
  activation: Activation;
  bosTokenId: number;
  eosTokenId: number;
  /** 'q8': int8 weights with float scales (docs/q8.md, `quantization_config` in config.json); null: float weights. */
  quantization: 'q8' | null;
}

/** The `quantization_config` a q8 checkpoint's config.json carries (docs/q8.md). */
export const Q8_QUANTIZATION_CONFIG = {
  quant_method: 'gpt2-tfjs-q8',
  version: 1,
  bits: 8,
  weights: 'int8 symmetric, one float32 scale per output channel: <name>_scale [out]',
  embeddings: 'int8 symmetric, one float32 scale per row: wte.weight_scale [vocab], wpe.weight_scale [n_positions]',
} as const;

function parseQuantization(raw: unknown, where: string): 'q8' | null {
  if (raw === undefined || raw === null) return null;
  const bad = (what: string): never => {
    throw new GPT2Error('BAD_CONFIG', `${where}: quantization_config ${what} (supported: {"quant_method": "${Q8_QUANTIZATION_CONFIG.quant_method}", "version": 1, "bits": 8}, as \`gpt2-tfjs convert --quantize q8\` writes it)`);
  };
  if (typeof raw !== 'object' || Array.isArray(raw)) return bad('must be an object');
  const q = raw as Record<string, unknown>;
  if (q.quant_method !== Q8_QUANTIZATION_CONFIG.quant_method) return bad(`has quant_method ${JSON.stringify(q.quant_method)}`);
  if (q.version !== 1) return bad(`has version ${JSON.stringify(q.version)}`);
  if (q.bits !== 8) return bad(`has bits ${JSON.stringify(q.bits)}`);
  return 'q8';
}

const DEFAULTS = {
  vocab_size: 50257,
  n_positions: 1024,
  n_embd: 768,
  n_layer: 12,
  n_head: 12,
  layer_norm_epsilon: 1e-5,
  activation_function: 'gelu_new',
  bos_token_id: 50256,
  eos_token_id: 50256,
};

// HF names for the tanh approximation all mean the same function.
const ACTIVATIONS: Record<string, Activation> = {
  gelu_new: 'gelu_new',
  gelu_pytorch_tanh: 'gelu_new',
  gelu_fast: 'gelu_new',
  gelu: 'gelu',
  relu: 'relu',
};

/**
 * Upper bounds, checked before anything is sized from the config: far above every published GPT-2
 * (1.5B: 48 layers, 1600 wide, 1024 positions, 50257 tokens), low enough that a hostile or corrupt
 * config.json cannot make the loader allocate or loop for long before a weight is read.
 */
export const CONFIG_LIMITS = {
  vocab_size: 1 << 20,
  n_positions: 1 << 17,
  n_embd: 1 << 15,
  n_layer: 1024,
  n_head: 1024,
  n_inner: 1 << 17,
} as const;

export function parseConfig(raw: Record<string, unknown>, where = 'config.json'): GPT2Config {
  const int = (key: keyof typeof CONFIG_LIMITS, min = 1): number => {
    const v = raw[key] ?? DEFAULTS[key as keyof typeof DEFAULTS];
    const max = CONFIG_LIMITS[key];
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min || v > max) {
      throw new GPT2Error('BAD_CONFIG', `${where}: "${key}" must be an integer from ${min} to ${max}, got ${JSON.stringify(v)}`);
    }
    return v;
  };
  const vocabSize = int('vocab_size');
  const nPositions = int('n_positions');
  const nEmbd = int('n_embd');
  const nLayer = int('n_layer');
  const nHead = int('n_head');
  if (nEmbd % nHead !== 0) throw new GPT2Error('BAD_CONFIG', `${where}: n_embd (${nEmbd}) must be divisible by n_head (${nHead})`);
  const nInner = raw.n_inner === undefined || raw.n_inner === null ? 4 * nEmbd : int('n_inner');
  // Variants of the attention math this forward pass does not implement: refuse rather than differ silently.
  if (raw.scale_attn_by_inverse_layer_idx === true) throw new GPT2Error('BAD_CONFIG', `${where}: scale_attn_by_inverse_layer_idx is not supported`);
  if (raw.scale_attn_weights === false) throw new GPT2Error('BAD_CONFIG', `${where}: scale_attn_weights: false is not supported`);
  if (raw.add_cross_attention === true) throw new GPT2Error('BAD_CONFIG', `${where}: add_cross_attention (encoder-decoder GPT-2) is not supported`);
  const eps = raw.layer_norm_epsilon ?? DEFAULTS.layer_norm_epsilon;
  if (typeof eps !== 'number' || !(eps > 0)) throw new GPT2Error('BAD_CONFIG', `${where}: "layer_norm_epsilon" must be a positive number`);
  const actName = raw.activation_function ?? DEFAULTS.activation_function;
  const activation = typeof actName === 'string' ? ACTIVATIONS[actName] : undefined;
  if (!activation) {
    throw new GPT2Error('BAD_CONFIG', `${where}: unsupported activation_function ${JSON.stringify(actName)} (supported: ${Object.keys(ACTIVATIONS).join(', ')})`);
  }
  // A token id the model cannot produce would never stop generation (eos) or index past wte (bos).
  const tokenId = (key: 'bos_token_id' | 'eos_token_id'): number => {
    const v = raw[key] ?? DEFAULTS[key];
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0 || v >= vocabSize) {
      throw new GPT2Error('BAD_CONFIG', `${where}: "${key}" must be a token id from 0 to ${vocabSize - 1} (vocab_size - 1), got ${JSON.stringify(v)}`);
    }
    return v;
  };
  const bos = tokenId('bos_token_id');
  const eos = tokenId('eos_token_id');
  return {
    vocabSize, nPositions, nEmbd, nLayer, nHead, nInner,
    layerNormEpsilon: eps,
    activation,
    bosTokenId: bos,
    eosTokenId: eos,
    quantization: parseQuantization(raw.quantization_config, where),
  };
}

/** The shape every canonical weight must have under `config`. */
export function expectedShapes(c: GPT2Config): Map<string, number[]> {
  const d = c.nEmbd;
  const m = new Map<string, number[]>([
    ['wte.weight', [c.vocabSize, d]],
    ['wpe.weight', [c.nPositions, d]],
    ['ln_f.weight', [d]],
    ['ln_f.bias', [d]],
  ]);
  for (let i = 0; i < c.nLayer; i++) {
    const h = `h.${i}.`;
    m.set(h + 'ln_1.weight', [d]);
    m.set(h + 'ln_1.bias', [d]);
    m.set(h + 'attn.c_attn.weight', [d, 3 * d]);
    m.set(h + 'attn.c_attn.bias', [3 * d]);
    m.set(h + 'attn.c_proj.weight', [d, d]);
    m.set(h + 'attn.c_proj.bias', [d]);
    m.set(h + 'ln_2.weight', [d]);
    m.set(h + 'ln_2.bias', [d]);
    m.set(h + 'mlp.c_fc.weight', [d, c.nInner]);
    m.set(h + 'mlp.c_fc.bias', [c.nInner]);
    m.set(h + 'mlp.c_proj.weight', [c.nInner, d]);
    m.set(h + 'mlp.c_proj.bias', [d]);
  }
  if (c.quantization === 'q8') {
    // one scale per output channel of each Conv1D weight [in, out], per row of wte and wpe
    for (const [name, shape] of [...m]) {
      if (/^h\.\d+\.(attn|mlp)\.c_\w+\.weight$/.test(name)) m.set(name + '_scale', [shape[1]]);
    }
    m.set('wte.weight_scale', [c.vocabSize]);
    m.set('wpe.weight_scale', [c.nPositions]);
  }
  return m;
}

/** Names a q8 checkpoint stores as int8: the Conv1D weights, wte and wpe (and lm_head when untied). */
export function isInt8Weight(c: GPT2Config, name: string): boolean {
  return c.quantization === 'q8' && (/^h\.\d+\.(attn|mlp)\.c_\w+\.weight$/.test(name) || name === 'wte.weight' || name === 'wpe.weight' || name === 'lm_head.weight');
}
