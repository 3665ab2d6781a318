/**
 * Loading Hugging Face folders: every bad folder is one GPT2Error with the right code, a message that
 * names the problem, and no tensors left behind; name mapping, tying, shards and dtypes give the
 * logits of the shipped checkpoint.
 */
import * as fs from 'fs';
import * as http from 'http';
import * as os from 'os';
import * as path from 'path';
import * as zlib from 'zlib';
import * as tf from '@tensorflow/tfjs-core';
import { GPT2, GPT2Error, LoadOptions, loadModel } from '../src';
import { GPT2ErrorCode } from '../src/errors';
import { LoadProgress, StreamOptions, canonicalName, listWeightFiles, parseIndex, streamTensors } from '../src/io/hf';
import { loadTransformer } from '../src/load';
import { setBackend } from '../src/backend';
import { parseConfig } from '../src/model/config';
import { currentEngine } from '../src/model/engines';
import { buildParams } from '../src/model/params';
import { isSafeRelativePath } from '../src/io/paths';
import { DirSource, openSource } from '../src/io/source';
import { WriteTensor, readSafetensorsHeader, readTensor, writeSafetensors } from '../src/io/safetensors';
import { TINY_DIR, caught, expectSameFloats, maxAbsDiff } from './helpers';

// ---- fixtures: the tiny checkpoint as host arrays, and temp folders built from it --------------

const baseConfig = JSON.parse(fs.readFileSync(path.join(TINY_DIR, 'config.json'), 'utf8')) as Record<string, unknown>;
const baseBytes = new Uint8Array(fs.readFileSync(path.join(TINY_DIR, 'model.safetensors')));
const baseHeader = readSafetensorsHeader(baseBytes);
/** The shipped tensors (F16 upcast to float32, exactly representable in F16), in file order. */
const base: Record<string, WriteTensor> = {};
for (const [name, e] of baseHeader.entries) base[name] = readTensor(baseBytes, e);

const IDS = [15496, 11, 995, 0, 50256, 318, 257, 1332];

let tmpRoot: string;
let n = 0;
beforeAll(() => {
  tmpRoot = fs.mkdtempSync(path.join(os.tmpdir(), 'gpt2-io-loader-'));
});
afterAll(() => fs.rmSync(tmpRoot, { recursive: true, force: true }));

interface FolderSpec {
  /** config.json contents: an object, raw text, or null for no file (default: the tiny config). */
  config?: Record<string, unknown> | string | null;
  /** model.safetensors tensors (default: the tiny tensors as F32); null for no file. */
  tensors?: Record<string, WriteTensor> | null;
  /** Extra files, name -> bytes or text. */
  files?: Record<string, Uint8Array | string>;
}

function folder(spec: FolderSpec = {}): string {
  const dir = path.join(tmpRoot, `m${n++}`);
  fs.mkdirSync(dir);
  const config = spec.config === undefined ? baseConfig : spec.config;
  if (config !== null) fs.writeFileSync(path.join(dir, 'config.json'), typeof config === 'string' ? config : JSON.stringify(config));
  const tensors = spec.tensors === undefined ? base : spec.tensors;
  if (tensors !== null) fs.writeFileSync(path.join(dir, 'model.safetensors'), writeSafetensors(tensors));
  for (const [name, body] of Object.entries(spec.files ?? {})) fs.writeFileSync(path.join(dir, name), body);
  return dir;
}

function withTensors(edit: (t: Record<string, WriteTensor>) => void, dtype?: 'F32' | 'F16'): Record<string, WriteTensor> {
  const t: Record<string, WriteTensor> = {};
  for (const [k, v] of Object.entries(base)) t[k] = { ...v, dtype: dtype ?? v.dtype };
  edit(t);
  return t;
}

function scaled(t: WriteTensor, s: number): WriteTensor {
  return { data: t.data.map((v) => v * s), shape: t.shape.slice() };
}

/** Float32 -> bfloat16 bits, round to nearest even (what torch does). */
function bf16Bits(x: Float32Array): Uint16Array {
  const u = new Uint32Array(x.buffer.slice(x.byteOffset, x.byteOffset + x.byteLength));
  return Uint16Array.from(u, (v) => (v + 0x7fff + ((v >>> 16) & 1)) >>> 16);
}

/** A BF16 safetensors file (writeSafetensors writes only F32/F16), header padded to 8 bytes. */
function writeBf16(tensors: Record<string, WriteTensor>): Uint8Array {
  const header: Record<string, unknown> = { __metadata__: { format: 'pt' } };
  const parts: Uint8Array[] = [];
  let off = 0;
  for (const [k, t] of Object.entries(tensors)) {
    const b = new Uint8Array(bf16Bits(t.data as Float32Array).buffer);
    header[k] = { dtype: 'BF16', shape: t.shape, data_offsets: [off, off + b.byteLength] };
    parts.push(b);
    off += b.byteLength;
  }
  let text = JSON.stringify(header);
  text += ' '.repeat((8 - (text.length % 8)) % 8);
  const hb = new TextEncoder().encode(text);
  const out = new Uint8Array(8 + hb.byteLength + off);
  new DataView(out.buffer).setUint32(0, hb.byteLength, true);
  out.set(hb, 8);
  let p = 8 + hb.byteLength;
  for (const b of parts) {
    out.set(b, p);
    p += b.byteLength;
  }
  return out;
}

async function logitsOf(dir: string, ids = IDS): Promise<Float32Array> {
  const m = await loadModel(dir, { backend: 'cpu' });
  try {
    return await m.forward(ids);
  } finally {
    m.dispose();
  }
}

/** The load fails with `code`, a message matching `message`, and leaves no tensor behind. */
async function expectLoadFails(dir: string, code: GPT2ErrorCode, message: RegExp, options: LoadOptions = {}): Promise<GPT2Error> {
  const before = tf.memory().numTensors;
  const e = await caught(loadModel(dir, { backend: 'cpu', ...options }));
  expect(e.code).toBe(code);
  expect(e.message).toMatch(message);
  expect(tf.memory().numTensors).toBe(before);
  return e;
}

const esc = (s: string): string => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

let reference: Float32Array;
beforeAll(async () => {
  reference = await logitsOf(TINY_DIR);
});

// ---- failures ---------------------------------------------------------------------------------

describe('a bad folder fails cleanly', () => {
  test('missing config.json', async () => {
    const dir = folder({ config: null });
    await expectLoadFails(dir, 'MISSING_FILE', new RegExp(`${esc(path.join(dir, 'config.json'))} does not exist`));
  });

  test('a folder that does not exist', async () => {
    await expectLoadFails(path.join(tmpRoot, 'nope'), 'MISSING_FILE', /nope.config\.json does not exist/);
  });

  test('config.json that is not JSON', async () => {
    await expectLoadFails(folder({ config: '{"n_embd": 32,' }), 'BAD_CONFIG', /config\.json: not valid JSON/);
  });

  test('config.json that is not an object', async () => {
    await expectLoadFails(folder({ config: '[1, 2]' }), 'BAD_CONFIG', /config\.json: expected a JSON object/);
  });

  test('n_embd not divisible by n_head', async () => {
    await expectLoadFails(folder({ config: { ...baseConfig, n_head: 5 } }), 'BAD_CONFIG', /n_embd \(32\) must be divisible by n_head \(5\)/);
  });

  test.each([
    ['n_layer', 0],
    ['n_embd', 32.5],
    ['vocab_size', '50257'],
  ])('config %s = %j', async (key, value) => {
    await expectLoadFails(folder({ config: { ...baseConfig, [key]: value } }), 'BAD_CONFIG', new RegExp(`"${key}" must be an integer`));
  });

  test.each([
    ['n_layer', 10_000_000],
    ['n_layer', Number.MAX_SAFE_INTEGER],
    ['n_embd', 2 ** 40],
    ['n_positions', 1e12],
    ['vocab_size', 2 ** 31],
    ['n_inner', 2 ** 30],
  ])('config %s = %j is refused before anything is sized from it', async (key, value) => {
    const t0 = performance.now();
    await expectLoadFails(folder({ config: { ...baseConfig, [key]: value } }), 'BAD_CONFIG', new RegExp(`"${key}" must be an integer from 1 to \\d+`));
    expect(performance.now() - t0).toBeLessThan(5000); // it used to hang, growing to ~1.9 GB
  });

  test.each([
    ['eos_token_id', 99999999],
    ['eos_token_id', 'x'],
    ['eos_token_id', -1],
    ['bos_token_id', 50257],
    ['bos_token_id', 1.5],
  ])('config %s = %j (not a token id of this vocab)', async (key, value) => {
    await expectLoadFails(folder({ config: { ...baseConfig, [key]: value } }), 'BAD_CONFIG', new RegExp(`"${key}" must be a token id from 0 to 50256`));
  });

  test('unsupported activation', async () => {
    await expectLoadFails(folder({ config: { ...baseConfig, activation_function: 'swish' } }), 'BAD_CONFIG', /unsupported activation_function "swish"/);
  });

  test('missing model.safetensors', async () => {
    const dir = folder({ tensors: null });
    const e = await expectLoadFails(dir, 'MISSING_FILE', new RegExp(`no weights.*${esc(dir)}`));
    expect(e.message).toMatch(/model\.safetensors\b.*model\.safetensors\.index\.json/);
  });

  test('a missing tensor (after every other one was uploaded)', async () => {
    const t = withTensors((t) => delete t['h.1.mlp.c_fc.bias']);
    await expectLoadFails(folder({ tensors: t }), 'BAD_WEIGHTS', /checkpoint is missing 1 tensor\(s\): h\.1\.mlp\.c_fc\.bias$/);
  });

  test('a missing wte and a missing layer are both named', async () => {
    const t = withTensors((t) => {
      delete t['wte.weight'];
      for (const k of Object.keys(t)) if (k.startsWith('h.1.')) delete t[k];
    });
    const e = await expectLoadFails(folder({ tensors: t }), 'BAD_WEIGHTS', /checkpoint is missing 13 tensor\(s\): wte\.weight, h\.1\.ln_1\.weight, /);
    expect(e.message).toMatch(/, \.\.\.$/);
  });

  test('a tensor whose shape disagrees with the config', async () => {
    const t = withTensors((t) => (t['h.1.attn.c_attn.weight'] = { data: t['h.1.attn.c_attn.weight'].data, shape: [96, 32] }));
    await expectLoadFails(folder({ tensors: t }), 'BAD_WEIGHTS', /h\.1\.attn\.c_attn\.weight \(in .*model\.safetensors\) has shape \[96,32\], config needs \[32,96\]/);
  });

  test('a config whose n_positions disagrees with wpe', async () => {
    await expectLoadFails(folder({ config: { ...baseConfig, n_positions: 128 } }), 'BAD_WEIGHTS', /wpe\.weight .*has shape \[64,32\], config needs \[128,32\]/);
  });

  test('a config whose vocab_size disagrees with wte', async () => {
    await expectLoadFails(folder({ config: { ...baseConfig, vocab_size: 50000, bos_token_id: 49999, eos_token_id: 49999 } }), 'BAD_WEIGHTS', /wte\.weight .*has shape \[50257,32\], config needs \[50000,32\]/);
  });

  test('an lm_head of the wrong shape', async () => {
    const t = withTensors((t) => (t['lm_head.weight'] = { data: new Float32Array(32 * 10), shape: [10, 32] }));
    await expectLoadFails(folder({ tensors: t }), 'BAD_WEIGHTS', /lm_head\.weight .*has shape \[10,32\], config needs \[50257, 32\]/);
  });

  test('the same weight twice in one file (plain and transformer.-prefixed)', async () => {
    const t = withTensors((t) => (t['transformer.ln_f.bias'] = t['ln_f.bias']));
    await expectLoadFails(folder({ tensors: t }), 'BAD_WEIGHTS', /weight "ln_f\.bias" appears twice/);
  });

  test('a corrupt model.safetensors names the file', async () => {
    const dir = folder({ tensors: null, files: { 'model.safetensors': baseBytes.subarray(0, 1000) } });
    await expectLoadFails(dir, 'BAD_SAFETENSORS', new RegExp(`^${esc(path.join(dir, 'model.safetensors'))}: header length \\d+ runs past the end`));
  });

  test('a data section cut short fails before any tensor is read', async () => {
    const dir = folder({ tensors: null, files: { 'model.safetensors': baseBytes.subarray(0, baseBytes.length - 1) } });
    await expectLoadFails(dir, 'BAD_SAFETENSORS', /tensor "ln_f\.bias": data_offsets \[\d+, \d+\] out of file range/);
  });

  test('a tiny file (< 8 bytes)', async () => {
    await expectLoadFails(folder({ tensors: null, files: { 'model.safetensors': new Uint8Array(5) } }), 'BAD_SAFETENSORS', /truncated: 5 bytes/);
  });

  test('an F64/unknown dtype tensor in the folder', async () => {
    const bytes = new Uint8Array(writeSafetensors(base));
    const text = new TextDecoder().decode(bytes.subarray(8, 8 + 200));
    // Rename the first tensor's dtype F32 -> I64 in place (same length) and its shape is now wrong for I64 too.
    const at = text.indexOf('"F32"');
    bytes.set(new TextEncoder().encode('"I64"'), 8 + at);
    await expectLoadFails(folder({ tensors: null, files: { 'model.safetensors': bytes } }), 'BAD_SAFETENSORS', /tensor "wte\.weight": unsupported dtype "I64"/);
  });
});

// ---- name mapping, tying, shards, dtypes ------------------------------------------------------

describe('what loads, and what it computes', () => {
  test('the F32 copy of the F16 checkpoint gives identical logits', async () => {
    expectSameFloats(await logitsOf(folder()), reference);
  });

  test('an F16 re-write gives identical logits', async () => {
    expectSameFloats(await logitsOf(folder({ tensors: withTensors(() => undefined, 'F16') })), reference);
  });

  test('BF16 checkpoint loads and its logits are close', async () => {
    const dir = folder({ tensors: null, files: { 'model.safetensors': writeBf16(base) } });
    const got = await logitsOf(dir);
    const scale = reference.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
    expect(maxAbsDiff(got, reference)).toBeGreaterThan(0);
    expect(maxAbsDiff(got, reference)).toBeLessThanOrEqual(0.05 * scale);
  });

  test('transformer.-prefixed keys (GPT2LMHeadModel export) give the same logits', async () => {
    const t: Record<string, WriteTensor> = {};
    for (const [k, v] of Object.entries(base)) t[`transformer.${k}`] = v;
    expectSameFloats(await logitsOf(folder({ tensors: t })), reference);
  });

  test('attn.bias / attn.masked_bias buffers are skipped (plain and prefixed)', async () => {
    const mask = new Float32Array(64 * 64);
    for (let i = 0; i < 64; i++) for (let j = 0; j <= i; j++) mask[i * 64 + j] = 1;
    const t = withTensors((t) => {
      t['h.0.attn.bias'] = { data: mask, shape: [1, 1, 64, 64] };
      t['h.0.attn.masked_bias'] = { data: new Float32Array([-1e4]), shape: [] };
      t['transformer.h.1.attn.bias'] = { data: mask, shape: [1, 1, 64, 64] };
      t['transformer.h.1.attn.masked_bias'] = { data: new Float32Array([-1e4]), shape: [] };
    });
    expect(canonicalName('transformer.h.1.attn.masked_bias')).toBeNull();
    expect(canonicalName('h.10.attn.bias')).toBeNull();
    expect(canonicalName('h.0.attn.c_attn.bias')).toBe('h.0.attn.c_attn.bias');
    expectSameFloats(await logitsOf(folder({ tensors: t })), reference);
  });

  test('an untied lm_head is used for the output (lm_head = 2·wte doubles every logit), wte for the input', async () => {
    const t = withTensors((t) => (t['lm_head.weight'] = scaled(t['wte.weight'], 2)));
    const got = await logitsOf(folder({ tensors: t }));
    // logits = ln_f(x) @ lm_head.T: doubling lm_head (exact in float32) doubles every logit exactly,
    // and only if the embedding still reads wte is x unchanged.
    expectSameFloats(got, reference.map((v) => 2 * v));
  });

  test('an untied lm_head with a transformer. prefix on everything else', async () => {
    const t: Record<string, WriteTensor> = {};
    for (const [k, v] of Object.entries(base)) t[`transformer.${k}`] = v;
    t['lm_head.weight'] = scaled(base['wte.weight'], -0.5);
    expectSameFloats(await logitsOf(folder({ tensors: t })), reference.map((v) => -0.5 * v));
  });

  test('an lm_head equal to wte is treated as tied (same logits, no second copy)', async () => {
    const before = tf.memory();
    const tied = await loadModel(TINY_DIR, { backend: 'cpu' });
    const tiedCost = tf.memory().numBytes - before.numBytes;
    tied.dispose();
    const t = withTensors((t) => (t['lm_head.weight'] = { data: t['wte.weight'].data.slice(), shape: [50257, 32] }));
    const m = await loadModel(folder({ tensors: t }), { backend: 'cpu' });
    try {
      expect(tf.memory().numBytes - before.numBytes).toBe(tiedCost);
      expect(m.model['params'].wte).toBeNull();
      expectSameFloats(await m.forward(IDS), reference);
    } finally {
      m.dispose();
    }
    expect(tf.memory().numTensors).toBe(before.numTensors);
  });

  test('sharded checkpoint via model.safetensors.index.json gives identical logits', async () => {
    const names = Object.keys(base);
    const a: Record<string, WriteTensor> = {};
    const b: Record<string, WriteTensor> = {};
    // wte and layer 1 in the second shard, so the reading order differs from the plain file.
    for (const k of names) (k === 'wte.weight' || k.startsWith('h.1.') ? b : a)[k] = base[k];
    const weight_map: Record<string, string> = {};
    for (const k of names) weight_map[k] = k in a ? 'model-00001-of-00002.safetensors' : 'model-00002-of-00002.safetensors';
    const dir = folder({
      tensors: null,
      files: {
        'model-00001-of-00002.safetensors': writeSafetensors(a),
        'model-00002-of-00002.safetensors': writeSafetensors(b, {}),
        'model.safetensors.index.json': JSON.stringify({ metadata: { total_size: 0 }, weight_map }),
      },
    });
    expect((await listWeightFiles(openSource(dir))).sort()).toEqual(['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors']);
    expectSameFloats(await logitsOf(dir), reference);
  });

  test('the index wins over a stray model.safetensors beside it', async () => {
    const weight_map: Record<string, string> = {};
    for (const k of Object.keys(base)) weight_map[k] = 'only.safetensors';
    const dir = folder({
      tensors: withTensors((t) => delete t['wte.weight']),
      files: { 'only.safetensors': writeSafetensors(base), 'model.safetensors.index.json': JSON.stringify({ weight_map }) },
    });
    expectSameFloats(await logitsOf(dir), reference);
  });

  test('progress reports bytes up to the total', async () => {
    const seen: LoadProgress[] = [];
    const m = await loadModel(folder(), { backend: 'cpu', onProgress: (p) => seen.push(p) });
    m.dispose();
    const last = seen[seen.length - 1];
    expect(last.loadedBytes).toBe(last.totalBytes);
    expect(last.totalBytes).toBe(writeSafetensors(base).byteLength);
    for (let i = 1; i < seen.length; i++) expect(seen[i].loadedBytes).toBeGreaterThanOrEqual(seen[i - 1].loadedBytes);
  });

  test('streamTensors yields canonical names in file order, skipping buffers', async () => {
    const t: Record<string, WriteTensor> = { 'transformer.h.0.attn.bias': { data: new Float32Array(1), shape: [1] } };
    for (const [k, v] of Object.entries(base)) t[`transformer.${k}`] = v;
    const names: string[] = [];
    for await (const x of streamTensors(openSource(folder({ tensors: t })))) {
      names.push(x.name);
      expect(x.data.length).toBe(x.shape.reduce((a, s) => a * s, 1));
    }
    expect(names).toEqual(Object.keys(base));
  });
});

describe('loading in parts, through one reused read buffer', () => {
  // The tiny model's tables are far below the 16 MB at which a load splits them: shrink the parts so
  // that wte (50257 x 32) arrives in 1622 parts of 31 rows (not a multiple of the 16-column panels),
  // and the 2-D weights over 4000 bytes (c_attn, c_fc, mlp.c_proj, wpe, lm_head) in parts that are put
  // back together.
  const PARTS: StreamOptions = { reuse: true, chunkBytes: 4_000 };

  test('streamTensors: the parts of a tensor cover it in order; reused items share one buffer', async () => {
    const dir = folder();
    const whole = new Map<string, Float32Array>();
    for await (const t of streamTensors(openSource(dir))) whole.set(t.name, t.data as Float32Array);
    const got = new Map<string, Float32Array>();
    const buffers = new Set<ArrayBufferLike>();
    let parts = 0;
    for await (const t of streamTensors(openSource(dir), undefined, PARTS)) {
      expect(t.borrowed).toBe(true);
      buffers.add(t.data.buffer);
      const rowLen = t.shape.slice(1).reduce((a, b) => a * b, 1);
      if (!got.has(t.name)) got.set(t.name, new Float32Array(t.shape.reduce((a, b) => a * b, 1)));
      const row0 = t.part?.row0 ?? 0;
      if (t.part) {
        parts++;
        expect(t.data.length).toBe(t.part.rows * rowLen);
      }
      got.get(t.name)!.set(t.data as Float32Array, row0 * rowLen); // copied now: the buffer is reused for the next item
    }
    expect(parts).toBeGreaterThan(1622);
    expect(buffers.size).toBeLessThanOrEqual(3); // grown a few times, never one per tensor
    expect([...got.keys()]).toEqual([...whole.keys()]);
    for (const [k, v] of whole) expectSameFloats(got.get(k)!, v);
  });

  for (const backend of ['cpu', 'wasm'] as const) {
    test(`${backend}: a model loaded in parts gives the logits of a whole-tensor load, bit for bit, and no tensor is left`, async () => {
      for (const tensors of [base, withTensors((t) => (t['lm_head.weight'] = scaled(t['wte.weight'], 2)))]) {
        const dir = folder({ tensors });
        const want = await loadModel(dir, { backend });
        const expected = await want.forward(IDS);
        want.dispose();
        const before = tf.memory().numTensors;
        const m = await loadTransformer(openSource(dir), { backend }, PARTS);
        expectSameFloats(await m.forward(IDS), expected);
        m.dispose();
        expect(tf.memory().numTensors).toBe(before);
      }
    });
  }

  test('a stream whose parts stop short is BAD_WEIGHTS, and nothing is left', async () => {
    const config = parseConfig(baseConfig, 'config.json');
    async function* cut() {
      for await (const t of streamTensors(openSource(folder()), undefined, PARTS)) {
        if (t.name === 'wte.weight' && t.part!.row0 > 5000) continue; // the table's later parts never come
        yield t;
      }
    }
    for (const panels of [false, true]) {
      await setBackend(panels ? 'wasm' : 'cpu');
      const before = tf.memory().numTensors;
      const e = await caught(buildParams(config, cut(), { panels, upload: currentEngine().upload }));
      expect(e.code).toBe('BAD_WEIGHTS');
      expect(e.message).toMatch(/wte\.weight: its parts stopped at row \d+/);
      expect(tf.memory().numTensors).toBe(before);
    }
  });
});

describe('bad sharded checkpoints', () => {
  function shardedFolder(index: unknown, shards: Record<string, Record<string, WriteTensor>>): string {
    const files: Record<string, Uint8Array | string> = { 'model.safetensors.index.json': typeof index === 'string' ? index : JSON.stringify(index) };
    for (const [f, t] of Object.entries(shards)) files[f] = writeSafetensors(t);
    return folder({ tensors: null, files });
  }

  test('an index naming a missing shard → MISSING_FILE naming the shard', async () => {
    const weight_map: Record<string, string> = {};
    for (const k of Object.keys(base)) weight_map[k] = k === 'ln_f.bias' ? 'model-00002-of-00002.safetensors' : 'model-00001-of-00002.safetensors';
    const dir = shardedFolder({ weight_map }, { 'model-00001-of-00002.safetensors': base });
    await expectLoadFails(dir, 'MISSING_FILE', /model\.safetensors\.index\.json names shard "model-00002-of-00002\.safetensors", which does not exist/);
  });

  test('a tensor in two shards → BAD_WEIGHTS naming both', async () => {
    const a = { ...base };
    const b = { 'h.0.ln_1.weight': base['h.0.ln_1.weight'] };
    const weight_map: Record<string, string> = {};
    for (const k of Object.keys(base)) weight_map[k] = 'a.safetensors';
    weight_map['h.0.ln_1.weight'] = 'b.safetensors';
    const dir = shardedFolder({ weight_map }, { 'a.safetensors': a, 'b.safetensors': b });
    await expectLoadFails(dir, 'BAD_WEIGHTS', /weight "h\.0\.ln_1\.weight" appears twice \(in a\.safetensors and b\.safetensors\)/);
  });

  test('the same tensor twice across shards under different prefixes', async () => {
    const b = { 'transformer.wpe.weight': base['wpe.weight'] };
    const dir = shardedFolder({ weight_map: { 'wte.weight': 'a.safetensors', 'transformer.wpe.weight': 'b.safetensors' } }, { 'a.safetensors': base, 'b.safetensors': b });
    await expectLoadFails(dir, 'BAD_WEIGHTS', /weight "wpe\.weight" appears twice/);
  });

  test('an index that is not JSON', async () => {
    await expectLoadFails(shardedFolder('{"weight_map": {', {}), 'BAD_WEIGHTS', /model\.safetensors\.index\.json: not valid JSON/);
  });

  test.each([{}, { weight_map: null }, { weight_map: 'a.safetensors' }, { weight_map: ['a.safetensors'] }, null, []])('an index without a weight_map object: %j', async (index) => {
    await expectLoadFails(shardedFolder(index, {}), 'BAD_WEIGHTS', /model\.safetensors\.index\.json: missing "weight_map" object/);
  });

  test.each(['../model.safetensors', '/etc/passwd', 3, '..\\model.safetensors', 'a\\..\\..\\b', '\\\\host\\share', 'C:\\x.safetensors'])('a shard name %j that escapes the folder or is not a string', async (f) => {
    await expectLoadFails(shardedFolder({ weight_map: { 'wte.weight': f } }, {}), 'BAD_WEIGHTS', /bad shard name/);
  });

  test('one path check for index, manifest and download names: dots inside a name are fine', () => {
    for (const ok of ['a..b.safetensors', 'sub/model.safetensors', '.hidden', 'x..']) expect(isSafeRelativePath(ok)).toBe(true);
    for (const no of ['', '..', 'a/../b', 'a\\..', '/abs', '\\abs', 'C:/x', 'a\0b', null, 3]) expect(isSafeRelativePath(no)).toBe(false);
    expect(parseIndex(JSON.stringify({ weight_map: { a: 'a..b.safetensors', b: 'c.safetensors', c: 'a..b.safetensors' } }), 'idx')).toEqual(['a..b.safetensors', 'c.safetensors']);
    expect(() => parseIndex('{"weight_map": {"a": "..\\\\x"}}', 'idx')).toThrow(/idx: bad shard name/);
  });

  test('reading a range of a file that does not exist → MISSING_FILE', async () => {
    const err = await caught(new DirSource(tmpRoot).readRange('nope.safetensors', 0, 8));
    expect(err).toMatchObject({ code: 'MISSING_FILE', message: expect.stringMatching(/nope\.safetensors does not exist/) });
  });

  test('a bad second shard is reported before any tensor is uploaded', async () => {
    const weight_map: Record<string, string> = {};
    for (const k of Object.keys(base)) weight_map[k] = k === 'ln_f.bias' ? 'b.safetensors' : 'a.safetensors';
    const a = withTensors((t) => delete t['ln_f.bias']);
    const dir = shardedFolder({ weight_map }, { 'a.safetensors': a });
    fs.writeFileSync(path.join(dir, 'b.safetensors'), '{"not": "safetensors"}');
    await expectLoadFails(dir, 'BAD_SAFETENSORS', /b\.safetensors: header length \d+ runs past the end/);
  });
});

// ---- over http ---------------------------------------------------------------------------------

describe('http(s) source', () => {
  let server: http.Server;
  let url: string;
  beforeAll(async () => {
    server = http.createServer((req, res) => {
      const name = decodeURIComponent((req.url ?? '/').slice(1));
      const file = path.join(TINY_DIR, name);
      if (name.includes('..') || !fs.existsSync(file)) {
        res.writeHead(404).end();
        return;
      }
      const body = fs.readFileSync(file);
      res.writeHead(200, { 'content-length': body.byteLength });
      res.end(req.method === 'HEAD' ? undefined : body);
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    url = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
  });
  afterAll(() => new Promise<void>((r) => server.close(() => r())));

  test('a base URL loads the same model', async () => {
    expectSameFloats(await logitsOf(`${url}/`), reference);
  });

  test('a URL without config.json → MISSING_FILE naming the URL', async () => {
    await expectLoadFails(`${url}/missing`, 'MISSING_FILE', new RegExp(`${esc(url)}/missing/config\\.json.*404`));
  });

  test('an unreachable host → NETWORK', async () => {
    const probe = http.createServer();
    await new Promise<void>((r) => probe.listen(0, '127.0.0.1', r));
    const port = (probe.address() as { port: number }).port;
    await new Promise<void>((r) => probe.close(() => r()));
    await expectLoadFails(`http://127.0.0.1:${port}`, 'NETWORK', /could not fetch http:\/\/127\.0\.0\.1:\d+\/\S+/);
  });
});

describe('hostile and careless sources', () => {
  test('model.safetensors that is a FIFO is refused, not read forever', async () => {
    const dir = folder({ tensors: null });
    const { execFileSync } = await import('child_process');
    execFileSync('mkfifo', [path.join(dir, 'model.safetensors')]);
    const t0 = performance.now();
    await expectLoadFails(dir, 'MISSING_FILE', /model\.safetensors is not a regular file/);
    expect(performance.now() - t0).toBeLessThan(5000);
  });

  test('a config.json over its size cap → TOO_LARGE before it is parsed', async () => {
    const big = JSON.stringify({ ...baseConfig, padding: ' '.repeat(2 * 1024 * 1024) });
    await expectLoadFails(folder({ config: big }), 'TOO_LARGE', /config\.json is \d+ bytes, more than the 1048576/);
  });

  test('vocab.json without merges.txt is an error naming the missing file, not a model without tokenizer', async () => {
    const dir = folder({ files: { 'vocab.json': fs.readFileSync(path.join(TINY_DIR, 'vocab.json')) } });
    await expectLoadFails(dir, 'MISSING_FILE', /found vocab\.json but not merges\.txt/);
  });

  test('validate: a NaN weight → NON_FINITE naming the tensor; without validate it loads', async () => {
    const t = withTensors((t) => {
      const d = Float32Array.from(t['wte.weight'].data);
      d[12345] = NaN;
      t['wte.weight'] = { ...t['wte.weight'], data: d };
    });
    const dir = folder({ tensors: t });
    await expectLoadFails(dir, 'NON_FINITE', /wte\.weight \(in model\.safetensors\) holds NaN at flat index 12345/, { validate: true });
    const m = await loadModel(dir, { backend: 'cpu' });
    m.dispose();
  });

  test('an aborted load → ABORTED, nothing left behind', async () => {
    const ctl = new AbortController();
    ctl.abort();
    await expectLoadFails(TINY_DIR, 'ABORTED', /aborted/, { signal: ctl.signal });
  });

  test('timeoutMs must be a positive number', async () => {
    await expectLoadFails('http://127.0.0.1:9/x', 'BAD_OPTION', /timeoutMs must be a positive number/, { timeoutMs: -1 });
  });

  describe('over http', () => {
    let server: http.Server;
    let url: string;
    const held: http.ServerResponse[] = [];
    let gz: Buffer; // 256 MiB of JSON in ~260 KB of gzip, made without holding the 256 MiB
    beforeAll(async () => {
      const z = zlib.createGzip({ level: 9 });
      const parts: Buffer[] = [];
      z.on('data', (c: Buffer) => parts.push(c));
      const spaces = Buffer.alloc(1024 * 1024, 0x20);
      z.write('{"n_embd": 32, "pad": "');
      for (let i = 0; i < 256; i++) if (!z.write(spaces)) await new Promise((r) => z.once('drain', r));
      await new Promise<void>((r) => z.end('"}', () => r()));
      gz = Buffer.concat(parts);
      server = http.createServer((req, res) => {
        const [, kind, name] = /^\/([^/]+)\/(.+)$/.exec(req.url ?? '') ?? [];
        const file = path.join(TINY_DIR, name ?? '');
        if (kind === 'silent') return void held.push(res); // never answers
        if (kind === 'stall' && name === 'model.safetensors') {
          // headers and the first bytes, then nothing
          res.writeHead(200, { 'content-length': fs.statSync(file).size });
          if (req.method === 'HEAD') return void res.end();
          res.write(fs.readFileSync(file).subarray(0, 1000));
          return void held.push(res);
        }
        if (kind === 'gzip' && name === 'config.json') {
          res.writeHead(200, { 'content-encoding': 'gzip', 'content-length': gz.byteLength });
          return void res.end(req.method === 'HEAD' ? undefined : gz);
        }
        if (!name || !fs.existsSync(file) || !['stall', 'gzip'].includes(kind)) return void res.writeHead(404).end();
        const body = fs.readFileSync(file);
        res.writeHead(200, { 'content-length': body.byteLength });
        res.end(req.method === 'HEAD' ? undefined : body);
      });
      await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
      url = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
    });
    afterAll(async () => {
      for (const r of held) r.destroy();
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
    });

    test('a server that never answers → NETWORK after timeoutMs', async () => {
      const t0 = performance.now();
      await expectLoadFails(`${url}/silent`, 'NETWORK', /sent nothing for 300 ms \(timeoutMs\)/, { timeoutMs: 300 });
      expect(performance.now() - t0).toBeLessThan(5000);
    });

    test('a body that stalls half way → NETWORK after timeoutMs, no tensor left', async () => {
      await expectLoadFails(`${url}/stall`, 'NETWORK', /model\.safetensors: the server sent nothing for 300 ms/, { timeoutMs: 300 });
    });

    test('the signal aborts a download in progress', async () => {
      const ctl = new AbortController();
      setTimeout(() => ctl.abort(), 300);
      await expectLoadFails(`${url}/stall`, 'ABORTED', /aborted/, { signal: ctl.signal, timeoutMs: Infinity });
    });

    test('a gzip config.json that inflates past its cap → TOO_LARGE while inflating', async () => {
      const rss0 = process.memoryUsage().rss;
      await expectLoadFails(`${url}/gzip`, 'TOO_LARGE', /config\.json: larger than the 1048576 bytes/, { timeoutMs: 2000 });
      expect(process.memoryUsage().rss - rss0).toBeLessThan(128 * 1024 * 1024); // it used to inflate all 256 MiB (and a 306 KB body to 300 MB)
    });
  });
});

// ---- forward on bad input ----------------------------------------------------------------------

describe('forward input checks', () => {
  let model: GPT2;
  beforeAll(async () => {
    model = await loadModel(TINY_DIR, { backend: 'cpu' });
  });
  afterAll(() => model.dispose());

  async function expectForwardFails(ids: unknown, code: GPT2ErrorCode, message: RegExp): Promise<void> {
    const before = tf.memory().numTensors;
    const e = await caught(Promise.resolve().then(() => model.forward(ids as number[])));
    expect(e.code).toBe(code);
    expect(e.message).toMatch(message);
    expect(tf.memory().numTensors).toBe(before);
  }

  test.each([
    [[1, -1, 2], /token id -1 is out of range: ids must be integers in \[0, 50256\]/],
    [[1.5], /token id 1.5 is out of range/],
    [[NaN], /token id NaN is out of range/],
    [[Infinity], /token id Infinity is out of range/],
    [[50257], /token id 50257 is out of range/],
    [[1, '2'], /token id 2 is out of range/],
    [[1, null], /token id null is out of range/],
    [[], /token ids must not be empty/],
    ['hello', /expects an array of token ids/],
    [null, /expects an array of token ids/],
  ])('forward(%j) → BAD_INPUT', async (ids, message) => {
    await expectForwardFails(ids, 'BAD_INPUT', message);
  });

  test('longer than n_positions → CONTEXT_OVERFLOW; exactly n_positions is fine', async () => {
    await expectForwardFails(new Array(65).fill(7), 'CONTEXT_OVERFLOW', /sequence of 65 positions exceeds the model's context of 64 \(n_positions\)/);
    const before = tf.memory().numTensors;
    const out = await model.forward(new Array(64).fill(7));
    expect(out.length).toBe(64 * 50257);
    expect(tf.memory().numTensors).toBe(before);
  });

  test('the edge ids 0 and vocab-1 are accepted', async () => {
    const out = await model.forward([0, 50256]);
    expect(out.length).toBe(2 * 50257);
    expect(out.every(Number.isFinite)).toBe(true);
  });

  test('dispose() then forward → DISPOSED; dispose is idempotent and frees every tensor', async () => {
    const before = tf.memory().numTensors;
    const m = await loadModel(TINY_DIR, { backend: 'cpu' });
    expect(tf.memory().numTensors).toBeGreaterThan(before);
    m.dispose();
    m.dispose();
    expect(tf.memory().numTensors).toBe(before);
    const e = await caught(m.forward([1, 2]));
    expect(e.code).toBe('DISPOSED');
    expect(e.message).toMatch(/disposed/);
    expect(tf.memory().numTensors).toBe(before);
  });
});
