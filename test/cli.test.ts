/** The CLI, run in-process through main() with captured output. */
import { TINY_DIR, runCli } from './helpers';

describe('gpt2-tfjs CLI', () => {
  test('generate --json is reproducible with a seed', async () => {
    const args = ['generate', 'Hello world', '--model', TINY_DIR, '--backend', 'cpu', '-n', '6', '--seed', '3', '--json'];
    const a = await runCli(args);
    expect(a.code).toBe(0);
    const r = JSON.parse(a.stdout.trim().split('\n').pop() as string);
    expect(r.tokens).toHaveLength(6);
    expect(r.finishReason).toBe('length');
    expect(r.usage).toEqual({ promptTokens: 2, completionTokens: 6 });
    const b = await runCli(args);
    expect(JSON.parse(b.stdout.trim().split('\n').pop() as string).tokens).toEqual(r.tokens);
  });

  test('generate streams the prompt and completion to stdout; prompt from stdin', async () => {
    const a = await runCli(['generate', '--model', TINY_DIR, '--backend', 'cpu', '-n', '4', '-t', '0'], 'ROMEO:\n');
    expect(a.code).toBe(0);
    expect(a.stdout.startsWith('ROMEO:')).toBe(true);
    expect(a.stdout.length).toBeGreaterThan('ROMEO:'.length + 1);
  });

  test('--help shows examples and exits 0', async () => {
    const a = await runCli(['generate', '--help']);
    expect(a.code).toBe(0);
    expect(a.stdout).toContain('Examples:');
  });

  test('bad input: one-line errors and non-zero exit codes', async () => {
    const bad = await runCli(['generate', 'x', '--temperature', 'hot']);
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toMatch(/temperature/);
    const missing = await runCli(['generate', 'x', '--model', '/nonexistent/model', '--backend', 'cpu']);
    expect(missing.code).toBe(1);
    expect(missing.stderr.trim().split('\n')).toHaveLength(1);
    expect(missing.stderr).toMatch(/config\.json/);
    const backend = await runCli(['generate', 'x', '--backend', 'webgl', '--model', TINY_DIR]);
    expect(backend.code).toBe(1);
    expect(backend.stderr).toMatch(/browser/);
    const unknown = await runCli(['frobnicate']);
    expect(unknown.code).not.toBe(0);
    const noPrompt = await runCli(['generate', '--model', TINY_DIR], undefined);
    expect(noPrompt.code).toBe(1);
  });
});

test('score prints loss and perplexity of a file', async () => {
  const fs = await import('fs');
  const os = await import('os');
  const path = await import('path');
  const f = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'gpt2-score-')), 'a.txt');
  fs.writeFileSync(f, 'To be, or not to be, that is the question.');
  const a = await runCli(['score', f, '--model', TINY_DIR, '--backend', 'cpu', '--json']);
  expect(a.code).toBe(0);
  const r = JSON.parse(a.stdout);
  expect(r.tokens).toBeGreaterThan(5);
  expect(r.perplexity).toBeCloseTo(Math.exp(r.loss), 6);
  const missing = await runCli(['score', '/nonexistent.txt', '--model', TINY_DIR]);
  expect(missing.code).toBe(1);
});

test('generate without -n fits a small context (the default budget shrinks to it)', async () => {
  const a = await runCli(['generate', 'ROMEO:', '--model', TINY_DIR, '--backend', 'cpu', '--json']);
  expect(a.code).toBe(0);
  const r = JSON.parse(a.stdout);
  expect(r.usage.completionTokens).toBeGreaterThan(0);
});
