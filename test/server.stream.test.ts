/** Server-Sent Events framing on its own, over a plain node:http server on 127.0.0.1. */
import * as http from 'http';
import type { AddressInfo } from 'net';
import { EventStream, SSE_DONE, SSE_HEADERS, sseFrame } from '../src/server/stream';

test('frames: JSON or a literal, "data: " before, a blank line after', () => {
  expect(sseFrame({ a: 1, b: 'x\ny' })).toBe('data: {"a":1,"b":"x\\ny"}\n\n');
  expect(sseFrame(SSE_DONE)).toBe('data: [DONE]\n\n');
  expect(sseFrame([1])).toBe('data: [1]\n\n');
});

async function withServer(handler: (res: http.ServerResponse) => Promise<void>): Promise<{ status: number; headers: Headers; body: string }> {
  let done: Promise<void> = Promise.resolve();
  const server = http.createServer((_req, res) => {
    done = handler(res);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  try {
    const r = await fetch(`http://127.0.0.1:${(server.address() as AddressInfo).port}/`);
    const body = await r.text();
    await done;
    return { status: r.status, headers: r.headers, body };
  } finally {
    await new Promise<void>((r) => server.close(() => r()));
  }
}

test('an event stream: 200 with SSE headers, events in order, end resolves once flushed', async () => {
  let ended = false;
  const r = await withServer(async (res) => {
    const es = new EventStream(res);
    es.send({ n: 1 });
    es.send('[DONE]');
    await es.end();
    ended = true;
    es.send({ late: true }); // after the end: dropped
  });
  expect(r.status).toBe(200);
  for (const [k, v] of Object.entries(SSE_HEADERS)) expect(r.headers.get(k)).toBe(v);
  expect(r.body).toBe('data: {"n":1}\n\ndata: [DONE]\n\n');
  expect(ended).toBe(true);
});

test('sends nothing once the connection is gone', () => {
  const written: unknown[] = [];
  const raw = { writeHead: () => raw, write: (s: string) => written.push(s), writableEnded: false, destroyed: false };
  const es = new EventStream(raw as unknown as http.ServerResponse);
  es.send({ a: 1 });
  raw.destroyed = true;
  es.send({ a: 2 });
  expect(es.destroyed).toBe(true);
  expect(written).toEqual(['data: {"a":1}\n\n']);
});
