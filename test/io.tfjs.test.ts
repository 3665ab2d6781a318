/** tfjs weights manifests: convert, load (from a folder and over HTTP), and reject broken ones. */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { GPT2, loadModel } from '../src';
import { LoadProgress } from '../src/io/hf';
import { openSource } from '../src/io/source';
import { TfjsModelJson, writeTfjsManifest } from '../src/io/tfjs';
import { SIDE_FILES, convertToTfjs, detectWeights, streamWeights } from '../src/io/weights';
import { TINY_DIR, TestServer, caught, expectSameFloats, forwardAndDispose, runCli, serveFile, startTestServer } from './helpers';

const IDS = [464, 2068, 7586, 21831, 18045, 625, 262, 50256];
const MiB = 2 ** 20;

let tmp: string;
let out: string; // float32, 1 MiB shards
let reference: Float32Array;

const logits = (model: GPT2): Promise<Float32Array> => forwardAndDispose(model, IDS);
const expectSame = (got: Float32Array): void => expectSameFloats(got, reference);

function readManifest(dir: string): TfjsModelJson {
  return JSON.parse(fs.readFileSync(path.join(dir, 'model.json'), 'utf8')) as TfjsModelJson;
}

/** A copy of the converted folder to break on purpose. */
function copyOut(name: string): string {
  const dir = path.join(tmp, name);
  fs.cpSync(out, dir, { recursive: true });
  return dir;
}

beforeAll(async () => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'gpt2-tfjs-'));
  out = path.join(tmp, 'tfjs');
  reference = await logits(await loadModel(TINY_DIR, { backend: 'cpu' }));
  await convertToTfjs(openSource(TINY_DIR), out, { shardBytes: MiB });
});

afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

describe('convert to a tfjs manifest', () => {
  test('model.json follows the tfjs weights-manifest layout, in several shards', () => {
    const m = readManifest(out);
    expect(m.format).toBe('gpt2-tfjs');
    expect(m.modelTopology).toBeNull();
    expect(m.weightsManifest).toHaveLength(1);
    const { paths, weights } = m.weightsManifest[0];
    const bytes = weights.reduce((a, w) => a + w.shape.reduce((x, y) => x * y, 1) * 4, 0);
    expect(paths).toEqual(Array.from({ length: Math.ceil(bytes / MiB) }, (_, i) => `group1-shard${i + 1}of${paths.length}.bin`));
    expect(paths.length).toBeGreaterThan(3);
    paths.forEach((p, i) => expect(fs.statSync(path.join(out, p)).size).toBe(i < paths.length - 1 ? MiB : bytes - MiB * (paths.length - 1)));
    expect(weights[0]).toEqual({ name: 'wte.weight', shape: [50257, 32], dtype: 'float32' });
    expect(weights.map((w) => w.name)).toContain('h.1.mlp.c_proj.bias');
    expect(fs.readdirSync(out).filter((f) => f.endsWith('.tmp'))).toEqual([]);
  });

  test('config.json and the tokenizer files there are are copied', () => {
    for (const f of ['config.json', ...SIDE_FILES.filter((s) => fs.existsSync(path.join(TINY_DIR, s)))]) {
      expect(fs.readFileSync(path.join(out, f)).equals(fs.readFileSync(path.join(TINY_DIR, f)))).toBe(true);
    }
  });

  test('loadModel from the converted folder gives identical logits', async () => {
    expect((await detectWeights(openSource(out))).format).toBe('tfjs');
    const events: LoadProgress[] = [];
    expectSame(await logits(await loadModel(out, { backend: 'cpu', onProgress: (p) => events.push({ ...p }) })));
    const total = readManifest(out).weightsManifest[0].paths.reduce((a, p) => a + fs.statSync(path.join(out, p)).size, 0);
    expect(events[events.length - 1]).toMatchObject({ loadedBytes: total, totalBytes: total });
    for (let i = 1; i < events.length; i++) expect(events[i].loadedBytes).toBeGreaterThanOrEqual(events[i - 1].loadedBytes);
  });

  test('`convert --to tfjs --dtype float16` (tfjs float16 quantization) loads to identical logits', async () => {
    const half = path.join(tmp, 'tfjs-f16');
    const r = await runCli(['convert', '--to', 'tfjs', TINY_DIR, half, '--shard-mb', '0.5', '--dtype', 'float16']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/wrote .*model\.json: 28 weights in 7 shard\(s\)/);
    const w = readManifest(half).weightsManifest[0].weights[0];
    expect(w).toEqual({ name: 'wte.weight', shape: [50257, 32], dtype: 'float32', quantization: { dtype: 'float16' } });
    // tiny-random is stored as F16, so float16 shards hold the very same values.
    expectSame(await logits(await loadModel(half, { backend: 'cpu' })));
  });

  test('a manifest with dtype "float16" reads the same values', async () => {
    const dir = path.join(tmp, 'dtype-f16');
    await convertToTfjs(openSource(TINY_DIR), dir, { dtype: 'float16' });
    const m = readManifest(dir);
    m.weightsManifest[0].weights = m.weightsManifest[0].weights.map(({ name, shape }) => ({ name, shape, dtype: 'float16' as const }));
    fs.writeFileSync(path.join(dir, 'model.json'), JSON.stringify(m));
    const a = new Map<string, Float32Array>();
    for await (const t of streamWeights(openSource(TINY_DIR))) a.set(t.name, t.data as Float32Array);
    let n = 0;
    for await (const t of streamWeights(openSource(dir))) {
      expectSameFloats(t.data, a.get(t.name)!);
      n++;
    }
    expect(n).toBe(a.size);
  });

  test('converting again into the same folder removes stale shards', async () => {
    const dir = copyOut('reconvert');
    const before = readManifest(dir).weightsManifest[0].paths.length;
    const r = await convertToTfjs(openSource(TINY_DIR), dir, { shardBytes: 4 * MiB });
    expect(r.paths.length).toBeLessThan(before);
    expect(fs.readdirSync(dir).filter((f) => f.endsWith('.bin')).sort()).toEqual([...r.paths].sort());
    expectSame(await logits(await loadModel(dir, { backend: 'cpu' })));
  });

  test('a folder that already holds safetensors weights is refused', async () => {
    const dir = path.join(tmp, 'has-st');
    fs.mkdirSync(dir);
    fs.writeFileSync(path.join(dir, 'model.safetensors'), '');
    expect((await caught(convertToTfjs(openSource(TINY_DIR), dir))).code).toBe('BAD_OPTION');
    const r = await runCli(['convert', '--to', 'onnx', TINY_DIR, dir]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/onnx/);
  });
});

describe('loading a tfjs manifest over HTTP', () => {
  let server: TestServer;
  beforeAll(async () => {
    server = await startTestServer((req, res, p) => serveFile(req, res, path.join(out, p.replace(/^\/tfjs\//, ''))));
  });
  afterAll(() => server.close());

  test('identical logits, download progress across the shards, cache reused', async () => {
    const cacheDir = path.join(tmp, 'cache');
    const events: LoadProgress[] = [];
    expectSame(await logits(await loadModel(`${server.url}/tfjs`, { backend: 'cpu', cacheDir, onProgress: (p) => events.push({ ...p }) })));
    const paths = readManifest(out).weightsManifest[0].paths;
    const total = paths.reduce((a, p) => a + fs.statSync(path.join(out, p)).size, 0);
    for (let i = 1; i < events.length; i++) expect(events[i].loadedBytes).toBeGreaterThanOrEqual(events[i - 1].loadedBytes);
    expect(new Set(events.map((e) => e.file))).toEqual(new Set(paths));
    expect(events[events.length - 1]).toMatchObject({ loadedBytes: total, totalBytes: total });
    expect(fs.readdirSync(cacheDir).filter((f) => f.endsWith('.bin'))).toHaveLength(paths.length);
    server.requests.length = 0;
    expectSame(await logits(await loadModel(`${server.url}/tfjs`, { backend: 'cpu', cacheDir })));
    expect(server.requests.filter((r) => r.method === 'GET' && r.path.endsWith('.bin'))).toEqual([]);
  });
});

describe('broken manifests', () => {
  test('a duplicate weight name → BAD_WEIGHTS naming it', async () => {
    const dir = copyOut('dup');
    const m = readManifest(dir);
    const w = m.weightsManifest[0].weights;
    w.splice(3, 0, { ...w.find((x) => x.name === 'ln_f.bias')! });
    fs.writeFileSync(path.join(dir, 'model.json'), JSON.stringify(m));
    const e = await caught(loadModel(dir, { backend: 'cpu' }));
    expect(e.code).toBe('BAD_WEIGHTS');
    expect(e.message).toMatch(/"ln_f\.bias" appears twice/);
    expect(e.message).toContain(path.join(dir, 'model.json'));
  });

  test('the writer refuses duplicate names too', async () => {
    const t = { name: 'a', shape: [1], data: new Float32Array(1) };
    const e = await caught(writeTfjsManifest([t, t], path.join(tmp, 'dup-write')));
    expect(e.code).toBe('BAD_WEIGHTS');
    expect(fs.readdirSync(path.join(tmp, 'dup-write'))).toEqual([]);
  });

  test.each([
    ['a middle shard', 2],
    ['the last shard', -1],
  ])('%s shorter than its weights → BAD_WEIGHTS naming that shard', async (_what, which) => {
    const dir = copyOut(`short-${which}`);
    const paths = readManifest(dir).weightsManifest[0].paths;
    const shard = paths[which < 0 ? paths.length + which : which];
    const file = path.join(dir, shard);
    fs.truncateSync(file, fs.statSync(file).size - 100);
    const e = await caught(loadModel(dir, { backend: 'cpu' }));
    expect(e.code).toBe('BAD_WEIGHTS');
    expect(e.message).toContain(`shard ${file} is too short`);
  });

  test('a missing shard → MISSING_FILE naming it', async () => {
    const dir = copyOut('missing-shard');
    const shard = readManifest(dir).weightsManifest[0].paths[1];
    fs.rmSync(path.join(dir, shard));
    const e = await caught(loadModel(dir, { backend: 'cpu' }));
    expect(e.code).toBe('MISSING_FILE');
    expect(e.message).toContain(shard);
  });

  test.each([
    ['not JSON', '{'],
    ['no weightsManifest', '{"format":"gpt2-tfjs"}'],
    ['an int32 weight', JSON.stringify({ weightsManifest: [{ paths: ['a.bin'], weights: [{ name: 'x', shape: [1], dtype: 'int32' }] }] })],
    ['a path outside the folder', JSON.stringify({ weightsManifest: [{ paths: ['../a.bin'], weights: [] }] })],
  ])('%s → BAD_WEIGHTS', async (_what, text) => {
    const dir = copyOut(`bad-${_what.replace(/\W/g, '')}`);
    fs.writeFileSync(path.join(dir, 'model.json'), text);
    expect((await caught(loadModel(dir, { backend: 'cpu' }))).code).toBe('BAD_WEIGHTS');
  });

  test('load order: model.safetensors wins over model.json', async () => {
    const dir = copyOut('both');
    fs.writeFileSync(path.join(dir, 'model.json'), '{ broken');
    fs.copyFileSync(path.join(TINY_DIR, 'model.safetensors'), path.join(dir, 'model.safetensors'));
    expect((await detectWeights(openSource(dir))).format).toBe('safetensors');
    expectSame(await logits(await loadModel(dir, { backend: 'cpu' })));
  });
});
