/** The CLI, run in-process through main() with captured output. */
import { Readable } from 'stream';
import { main } from '../src/cli';
import { TINY_DIR } from './helpers';

async function run(args: string[], stdin?: string): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const io = {
    stdout: { write: (s: string) => (out += s) },
    stderr: { write: (s: string) => (err += s) },
    stdin: stdin === undefined ? undefined : Object.assign(Readable.from([Buffer.from(stdin)]), { isTTY: false }),
  };
  const code = await main(['node', 'gpt2-tfjs', ...args], io);
  return { code, out, err };
}

describe('gpt2-tfjs CLI', () => {
  test('generate --json is reproducible with a seed', async () => {
    const args = ['generate', 'Hello world', '--model', TINY_DIR, '--backend', 'cpu', '-n', '6', '--seed', '3', '--json'];
    const a = await run(args);
    expect(a.code).toBe(0);
    const r = JSON.parse(a.out.trim().split('\n').pop() as string);
    expect(r.tokens).toHaveLength(6);
    expect(r.finishReason).toBe('length');
    expect(r.usage).toEqual({ promptTokens: 2, completionTokens: 6 });
    const b = await run(args);
    expect(JSON.parse(b.out.trim().split('\n').pop() as string).tokens).toEqual(r.tokens);
  });

  test('generate streams the prompt and completion to stdout; prompt from stdin', async () => {
    const a = await run(['generate', '--model', TINY_DIR, '--backend', 'cpu', '-n', '4', '-t', '0'], 'ROMEO:\n');
    expect(a.code).toBe(0);
    expect(a.out.startsWith('ROMEO:')).toBe(true);
    expect(a.out.length).toBeGreaterThan('ROMEO:'.length + 1);
  });

  test('--help shows examples and exits 0', async () => {
    const a = await run(['generate', '--help']);
    expect(a.code).toBe(0);
    expect(a.out).toContain('Examples:');
  });

  test('bad input: one-line errors and non-zero exit codes', async () => {
    const bad = await run(['generate', 'x', '--temperature', 'hot']);
    expect(bad.code).not.toBe(0);
    expect(bad.err).toMatch(/temperature/);
    const missing = await run(['generate', 'x', '--model', '/nonexistent/model', '--backend', 'cpu']);
    expect(missing.code).toBe(1);
    expect(missing.err.trim().split('\n')).toHaveLength(1);
    expect(missing.err).toMatch(/config\.json/);
    const backend = await run(['generate', 'x', '--backend', 'webgl', '--model', TINY_DIR]);
    expect(backend.code).toBe(1);
    expect(backend.err).toMatch(/browser/);
    const unknown = await run(['frobnicate']);
    expect(unknown.code).not.toBe(0);
    const noPrompt = await run(['generate', '--model', TINY_DIR], undefined);
    expect(noPrompt.code).toBe(1);
  });
});

test('score prints loss and perplexity of a file', async () => {
  const fs = await import('fs');
  const os = await import('os');
  const path = await import('path');
  const f = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'gpt2-score-')), 'a.txt');
  fs.writeFileSync(f, 'To be, or not to be, that is the question.');
  const a = await run(['score', f, '--model', TINY_DIR, '--backend', 'cpu', '--json']);
  expect(a.code).toBe(0);
  const r = JSON.parse(a.out);
  expect(r.tokens).toBeGreaterThan(5);
  expect(r.perplexity).toBeCloseTo(Math.exp(r.loss), 6);
  const missing = await run(['score', '/nonexistent.txt', '--model', TINY_DIR]);
  expect(missing.code).toBe(1);
});

test('generate without -n fits a small context (the default budget shrinks to it)', async () => {
  const a = await run(['generate', 'ROMEO:', '--model', TINY_DIR, '--backend', 'cpu', '--json']);
  expect(a.code).toBe(0);
  const r = JSON.parse(a.out);
  expect(r.usage.completionTokens).toBeGreaterThan(0);
});
