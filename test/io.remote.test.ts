/**
 * Loading over HTTP (plain base URLs and the hub's /<id>/resolve/<rev>/ scheme), the on-disk cache,
 * HTTP failures, and the resumable `download` command — all against a local server on 127.0.0.1.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { GPT2, loadModel } from '../src';
import { downloadModel } from '../src/io/download';
import { LoadProgress } from '../src/io/hf';
import { WriteTensor, readSafetensorsHeader, readTensor, writeSafetensors } from '../src/io/safetensors';
import { SIDE_FILES } from '../src/io/weights';
import { TINY_DIR, TestServer, caught, expectSameFloats, forwardAndDispose, runCli, serveFile, startTestServer } from './helpers';

const IDS = [464, 2068, 7586, 21831, 18045, 625, 262, 50256];
const TINY_WEIGHTS = path.join(TINY_DIR, 'model.safetensors');
const TINY_SIZE = fs.statSync(TINY_WEIGHTS).size;

let tmp: string;
let shardedDir: string;
let reference: Float32Array;
let server: TestServer;

/** The tiny checkpoint split in two safetensors shards + index, as the hub stores big models. */
function writeSharded(dir: string): void {
  fs.mkdirSync(dir, { recursive: true });
  const bytes = new Uint8Array(fs.readFileSync(TINY_WEIGHTS));
  const header = readSafetensorsHeader(bytes);
  const shards: Record<string, WriteTensor>[] = [{}, {}];
  const weightMap: Record<string, string> = {};
  const names = ['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors'];
  for (const e of header.entries.values()) {
    const i = e.name === 'wte.weight' || e.name === 'wpe.weight' ? 0 : 1;
    const t = readTensor(bytes, e);
    shards[i][e.name] = { data: t.data, shape: t.shape, dtype: e.dtype === 'F16' ? 'F16' : 'F32' };
    weightMap[e.name] = names[i];
  }
  shards.forEach((s, i) => fs.writeFileSync(path.join(dir, names[i]), writeSafetensors(s)));
  fs.writeFileSync(path.join(dir, 'model.safetensors.index.json'), JSON.stringify({ metadata: {}, weight_map: weightMap }));
  fs.copyFileSync(path.join(TINY_DIR, 'config.json'), path.join(dir, 'config.json'));
}

const REPOS: Record<string, string> = {};

/** Routes: /<id>/resolve/main/<file> (hub), /plain/<file>, /e404/, /e500/, /trunc/, /norange/<hub path>. */
async function hubServer(): Promise<TestServer> {
  return startTestServer(async (req, res, p) => {
    let route = p;
    let ranges = true;
    if (route.startsWith('/norange/')) {
      route = route.slice('/norange'.length);
      ranges = false;
    }
    const hub = /^\/(.+)\/resolve\/([^/]+)\/(.+)$/.exec(route);
    if (hub) {
      const dir = REPOS[hub[1]];
      if (!dir || hub[2] !== 'main') {
        res.writeHead(404);
        res.end('Repository not found');
        return;
      }
      return serveFile(req, res, path.join(dir, hub[3]), { ranges });
    }
    const [, kind, file] = /^\/([^/]+)\/(.+)$/.exec(route) ?? [];
    if (kind === 'plain') return serveFile(req, res, path.join(TINY_DIR, file));
    if (kind === 'e404') return serveFile(req, res, path.join(tmp, 'nothing-here', file));
    if (kind === 'noweights' && file === 'config.json') return serveFile(req, res, path.join(TINY_DIR, file));
    if (kind === 'e500' && file === 'config.json') return serveFile(req, res, path.join(TINY_DIR, file));
    if (kind === 'e500') {
      res.writeHead(500, 'Internal Server Error');
      res.end('boom');
      return;
    }
    if (kind === 'trunc') return serveFile(req, res, path.join(TINY_DIR, file), { truncateAt: file === 'model.safetensors' ? 1_000_000 : undefined });
    res.writeHead(404);
    res.end();
  });
}

const logits = (model: GPT2): Promise<Float32Array> => forwardAndDispose(model, IDS);
const expectSame = (got: Float32Array): void => expectSameFloats(got, reference);

function expectProgress(events: LoadProgress[], total: number): void {
  expect(events.length).toBeGreaterThan(3);
  for (let i = 1; i < events.length; i++) expect(events[i].loadedBytes).toBeGreaterThanOrEqual(events[i - 1].loadedBytes);
  expect(events.some((e) => e.loadedBytes > 0 && e.loadedBytes < total)).toBe(true); // fired during the download
  expect(events[events.length - 1]).toMatchObject({ loadedBytes: total, totalBytes: total });
}

function tempFiles(dir: string): string[] {
  return fs.existsSync(dir) ? fs.readdirSync(dir).filter((f) => /\.(tmp|part)$/.test(f)) : [];
}

beforeAll(async () => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'gpt2-remote-'));
  shardedDir = path.join(tmp, 'sharded');
  writeSharded(shardedDir);
  REPOS['test/tiny'] = TINY_DIR;
  REPOS['test/sharded'] = shardedDir;
  reference = await logits(await loadModel(TINY_DIR, { backend: 'cpu' }));
  server = await hubServer();
});

afterAll(async () => {
  await server?.close();
  fs.rmSync(tmp, { recursive: true, force: true });
});

describe('loadModel from a URL', () => {
  test('a plain base URL gives the logits of the folder, with download progress', async () => {
    const events: LoadProgress[] = [];
    const model = await loadModel(`${server.url}/plain`, { backend: 'cpu', onProgress: (p) => events.push({ ...p }) });
    expectSame(await logits(model));
    expectProgress(events, TINY_SIZE);
    expect(events.every((e) => e.file === 'model.safetensors')).toBe(true);
  });

  test('a hub URL with cacheDir fills the cache, and a later load needs no network', async () => {
    const own = await hubServer();
    const cacheDir = path.join(tmp, 'cache-hub');
    const url = `${own.url}/test/tiny/resolve/main`;
    const events: LoadProgress[] = [];
    expectSame(await logits(await loadModel(url, { backend: 'cpu', cacheDir, onProgress: (p) => events.push({ ...p }) })));
    expectProgress(events, TINY_SIZE);
    const cached = fs.readdirSync(cacheDir);
    expect(cached.filter((f) => f.endsWith('-config.json'))).toHaveLength(1);
    expect(cached.filter((f) => f.endsWith('-model.safetensors'))).toHaveLength(1);
    expect(tempFiles(cacheDir)).toEqual([]);
    const weights = cached.find((f) => f.endsWith('-model.safetensors'))!;
    expect(fs.readFileSync(path.join(cacheDir, weights)).equals(fs.readFileSync(TINY_WEIGHTS))).toBe(true);

    // Online again: config and weights are not fetched a second time.
    own.requests.length = 0;
    expectSame(await logits(await loadModel(url, { backend: 'cpu', cacheDir })));
    expect(own.requests.filter((r) => r.method === 'GET' && /config\.json|safetensors/.test(r.path))).toEqual([]);

    await own.close();
    const offline: LoadProgress[] = [];
    expectSame(await logits(await loadModel(url, { backend: 'cpu', cacheDir, onProgress: (p) => offline.push({ ...p }) })));
    expect(offline[offline.length - 1]).toMatchObject({ loadedBytes: TINY_SIZE, totalBytes: TINY_SIZE });
    // Without the cache the same URL is unreachable now.
    expect((await caught(loadModel(url, { backend: 'cpu' }))).code).toBe('NETWORK');
  });

  test('a sharded checkpoint served over HTTP', async () => {
    const cacheDir = path.join(tmp, 'cache-sharded');
    const events: LoadProgress[] = [];
    const model = await loadModel(`${server.url}/test/sharded/resolve/main`, { backend: 'cpu', cacheDir, onProgress: (p) => events.push({ ...p }) });
    expectSame(await logits(model));
    const total = ['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors'].reduce((a, f) => a + fs.statSync(path.join(shardedDir, f)).size, 0);
    expectProgress(events, total);
    expect(new Set(events.map((e) => e.file))).toEqual(new Set(['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors']));
    expect(fs.readdirSync(cacheDir)).toHaveLength(4); // config, index, 2 shards
  });

  test('404 → MISSING_FILE naming the URL; nothing is cached', async () => {
    const cacheDir = path.join(tmp, 'cache-404');
    const e = await caught(loadModel(`${server.url}/e404`, { backend: 'cpu', cacheDir }));
    expect(e.code).toBe('MISSING_FILE');
    expect(e.message).toContain(`${server.url}/e404/config.json`);
    expect(fs.existsSync(cacheDir) ? fs.readdirSync(cacheDir) : []).toEqual([]);
  });

  test('a folder URL without weights → MISSING_FILE listing the layouts looked for', async () => {
    const e = await caught(loadModel(`${server.url}/noweights`, { backend: 'cpu' }));
    expect(e.code).toBe('MISSING_FILE');
    expect(e.message).toMatch(/model\.safetensors.*index\.json.*model\.json/);
  });

  test('500 → NETWORK with the status; no weights entry or temp file in the cache', async () => {
    const cacheDir = path.join(tmp, 'cache-500');
    const e = await caught(loadModel(`${server.url}/e500`, { backend: 'cpu', cacheDir }));
    expect(e.code).toBe('NETWORK');
    expect(e.message).toMatch(/HTTP 500/);
    expect(e.message).toContain(`${server.url}/e500/`);
    expect(fs.existsSync(cacheDir) ? fs.readdirSync(cacheDir).filter((f) => !f.endsWith('-config.json')) : []).toEqual([]);
  });

  test('a truncated body → NETWORK naming the URL and the byte counts; no half-written cache entry', async () => {
    for (const cacheDir of [path.join(tmp, 'cache-trunc'), undefined]) {
      const e = await caught(loadModel(`${server.url}/trunc`, { backend: 'cpu', cacheDir }));
      expect(e.code).toBe('NETWORK');
      expect(e.message).toContain(`${server.url}/trunc/model.safetensors`);
      expect(e.message).toContain(`1000000 of ${TINY_SIZE} bytes`);
      if (cacheDir) {
        expect(fs.readdirSync(cacheDir).filter((f) => !/-(config\.json|vocab\.json|merges\.txt)$/.test(f))).toEqual([]);
        expect(tempFiles(cacheDir)).toEqual([]);
      }
    }
  });

  test('cacheDir must be a path', async () => {
    const e = await caught(loadModel(`${server.url}/plain`, { backend: 'cpu', cacheDir: '' }));
    expect(e.code).toBe('BAD_OPTION');
  });
});

describe('download', () => {
  const sideFiles = () => SIDE_FILES.filter((f) => fs.existsSync(path.join(TINY_DIR, f)));

  test('`download` fetches config, weights and the tokenizer files there are; the folder loads', async () => {
    const to = path.join(tmp, 'dl-tiny');
    server.requests.length = 0;
    const r = await runCli(['download', 'test/tiny', '--to', to, '--endpoint', server.url]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('downloaded test/tiny@main');
    expect(fs.readdirSync(to).sort()).toEqual(['config.json', 'model.safetensors', ...sideFiles()].sort());
    for (const f of fs.readdirSync(to)) expect(fs.readFileSync(path.join(to, f)).equals(fs.readFileSync(path.join(TINY_DIR, f)))).toBe(true);
    expect(server.requests.every((q) => q.path.startsWith('/test/tiny/resolve/main/'))).toBe(true);
    expectSame(await logits(await loadModel(to, { backend: 'cpu' })));
  });

  test('an interrupted download keeps its .part and resumes it with a Range request', async () => {
    const to = path.join(tmp, 'dl-resume');
    // First attempt: the server drops the connection 1 MB into the weights.
    const flaky = await startTestServer((req, res, p) => serveFile(req, res, path.join(TINY_DIR, p.split('/').pop()!), { truncateAt: p.endsWith('model.safetensors') ? 1_000_000 : undefined }));
    const e = await caught(downloadModel('test/tiny', { to, endpoint: flaky.url }));
    await flaky.close();
    expect(e.code).toBe('NETWORK');
    expect(fs.statSync(path.join(to, 'model.safetensors.part')).size).toBe(1_000_000);
    expect(fs.existsSync(path.join(to, 'model.safetensors'))).toBe(false);

    server.requests.length = 0;
    const events: LoadProgress[] = [];
    const r = await downloadModel('test/tiny', { to, endpoint: server.url, onProgress: (p) => events.push({ ...p }) });
    const get = server.requests.filter((q) => q.method === 'GET' && q.path.endsWith('/model.safetensors'));
    expect(get).toEqual([{ method: 'GET', path: '/test/tiny/resolve/main/model.safetensors', range: 'bytes=1000000-' }]);
    expect(fs.readFileSync(path.join(to, 'model.safetensors')).equals(fs.readFileSync(TINY_WEIGHTS))).toBe(true);
    expect(tempFiles(to)).toEqual([]);
    expect(r.files).toEqual(['config.json', 'model.safetensors', ...SIDE_FILES.filter((f) => r.files.includes(f))]);
    // config.json was already complete: only the missing weight bytes (and side files) came over the wire.
    const side = sideFiles().reduce((a, f) => a + fs.statSync(path.join(TINY_DIR, f)).size, 0);
    expect(r.fetchedBytes).toBe(TINY_SIZE - 1_000_000 + side);
    const w = events.filter((p) => p.file === 'model.safetensors');
    expect(w[0].loadedBytes).toBeGreaterThan(1_000_000);
    expect(w[w.length - 1]).toMatchObject({ loadedBytes: TINY_SIZE, totalBytes: TINY_SIZE });
  });

  test('a server that ignores Range (200) restarts the file; a complete .part (416) is just renamed', async () => {
    const to = path.join(tmp, 'dl-norange');
    fs.mkdirSync(to);
    fs.writeFileSync(path.join(to, 'model.safetensors.part'), Buffer.alloc(12345, 7));
    server.requests.length = 0;
    await downloadModel('test/tiny', { to, endpoint: `${server.url}/norange` });
    expect(server.requests.find((q) => q.method === 'GET' && q.path.endsWith('/model.safetensors'))?.range).toBe('bytes=12345-');
    expect(fs.readFileSync(path.join(to, 'model.safetensors')).equals(fs.readFileSync(TINY_WEIGHTS))).toBe(true);

    const done = path.join(tmp, 'dl-complete-part');
    fs.mkdirSync(done);
    fs.copyFileSync(TINY_WEIGHTS, path.join(done, 'model.safetensors.part'));
    const r = await downloadModel('test/tiny', { to: done, endpoint: server.url, files: ['model.safetensors'] });
    expect(r.fetchedBytes).toBe(0);
    expect(fs.readFileSync(path.join(done, 'model.safetensors')).equals(fs.readFileSync(TINY_WEIGHTS))).toBe(true);
    expect(tempFiles(done)).toEqual([]);
  });

  test('a sharded repository: index and every shard', async () => {
    const to = path.join(tmp, 'dl-sharded');
    const r = await downloadModel('test/sharded', { to, endpoint: server.url });
    expect(r.files).toEqual(['config.json', 'model.safetensors.index.json', 'model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors']);
    for (const f of r.files) expect(fs.readFileSync(path.join(to, f)).equals(fs.readFileSync(path.join(shardedDir, f)))).toBe(true);
    expectSame(await logits(await loadModel(to, { backend: 'cpu' })));
  });

  test('an unknown model or revision is MISSING_FILE (exit code 1) and leaves no .part', async () => {
    const to = path.join(tmp, 'dl-missing');
    const r = await runCli(['download', 'nobody/nothing', '--to', to, '--endpoint', server.url]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/nobody\/nothing.*\[MISSING_FILE\]/s);
    const e = await caught(downloadModel('test/tiny', { to, endpoint: server.url, revision: 'v9' }));
    expect(e.code).toBe('MISSING_FILE');
    expect(e.message).toContain('/test/tiny/resolve/v9/config.json');
    expect(fs.readdirSync(to)).toEqual([]);
  });

  test('bad ids and options are BAD_OPTION; HF_ENDPOINT is the default endpoint', async () => {
    expect((await caught(downloadModel('../etc', { to: tmp }))).code).toBe('BAD_OPTION');
    expect((await caught(downloadModel('gpt2', { to: '' }))).code).toBe('BAD_OPTION');
    const to = path.join(tmp, 'dl-env');
    const saved = process.env.HF_ENDPOINT;
    process.env.HF_ENDPOINT = server.url;
    try {
      const r = await downloadModel('test/tiny', { to, files: ['config.json'] });
      expect(r.files).toEqual(['config.json']);
    } finally {
      if (saved === undefined) delete process.env.HF_ENDPOINT;
      else process.env.HF_ENDPOINT = saved;
    }
  });
});
