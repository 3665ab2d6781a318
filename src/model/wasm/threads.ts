/**
 * A second thread for the kernels (Node): one worker_threads Worker instantiates kernels.wasm on the
 * same shared memory as tfjs-backend-wasm and runs half of each kernel call (half the columns of a
 * matrix product, half the heads of decode attention) while the calling thread runs the other half.
 * Each call is a few integers in a small SharedArrayBuffer and an Atomics notify; the caller then
 * waits (spinning briefly, then Atomics.wait) for the worker's half. Splitting by output columns or
 * heads keeps every sum in the same order as one thread, so results are bit-identical.
 */

const enum Slot {
  Seq = 0, // bumped by the caller for each job
  Op = 1, // 0 quit, 1 linear, 2 attend, 3 linear by chunks of the inner dimension
  Args = 2, // up to 16 int args
  FloatArg = 18, // one float32 arg
  Done = 19, // the worker writes the job's Seq here when finished
  Error = 20, // 1 when the worker's kernel threw
  State = 21, // Idle, Claimed (the caller holds the worker for one job) or Exited
  Chunk = 22, // next unclaimed chunk of a chunked job (both threads take chunks with Atomics.add)
}
const enum State {
  Idle = 0,
  Claimed = 1,
  Exited = 2,
}
/** A worker with no job for this long exits (it pins the backend's memory); the next step starts another. */
const IDLE_EXIT_MS = 30_000;
const CTRL_INTS = 32;

/** The worker: plain JS (evaluated with `eval: true`), so it needs no build step or file path. */
const WORKER_SOURCE = `
const { parentPort } = require('node:worker_threads');
parentPort.once('message', ({ module, memory, ctrl }) => {
  const c = new Int32Array(ctrl), f = new Float32Array(ctrl);
  let k;
  try { k = new WebAssembly.Instance(module, { env: { memory } }).exports; }
  catch (e) { parentPort.postMessage({ error: String(e) }); return; }
  // Jobs are counted from 0 on a fresh control block. Reading the counter here instead would race:
  // the caller may post its first job between 'ready' and that read, and the job would never run.
  let last = 0;
  parentPort.postMessage({ ready: true });
  for (;;) {
    const t0 = performance.now();
    while (Atomics.load(c, ${Slot.Seq}) === last) {
      if (performance.now() - t0 < 2) continue; // spin a little: the next job usually follows within microseconds
      // idle: sleep until the next job; after a long idle, exit unless the caller holds us right now
      if (Atomics.wait(c, ${Slot.Seq}, last, IDLE_EXIT_MS) === 'timed-out' && Atomics.compareExchange(c, ${Slot.State}, ${State.Idle}, ${State.Exited}) === ${State.Idle}) return;
    }
    last = Atomics.load(c, ${Slot.Seq});
    const op = c[${Slot.Op}];
    if (op === 0) return;
    const a = ${Slot.Args};
    try {
      if (op === 1) k.linear(c[a], c[a + 1], c[a + 2], c[a + 3], c[a + 4], c[a + 5], c[a + 6], c[a + 7], c[a + 8], c[a + 9], c[a + 10]);
      else if (op === 3) {
        // chunk ch: x[:, k0:k0+kn] @ W[k0:k0+kn, :] into parts[ch]  (args: x, W, parts, M, K, N, chunk, nChunks)
        const [x, w, parts, M, K, N, chunk, n] = [c[a], c[a + 1], c[a + 2], c[a + 3], c[a + 4], c[a + 5], c[a + 6], c[a + 7]];
        for (let ch = Atomics.add(c, ${Slot.Chunk}, 1); ch < n; ch = Atomics.add(c, ${Slot.Chunk}, 1)) {
          const k0 = ch * chunk;
          k.linear(x + 4 * k0, w + 4 * k0 * N, 0, parts + 4 * ch * M * N, M, Math.min(chunk, K - k0), N, N, K, 0, 0);
        }
      }
      else if (op === 2) k.attend(c[a], c[a + 1], c[a + 2], c[a + 3], c[a + 4], c[a + 5], c[a + 6], c[a + 7], c[a + 8], c[a + 9], c[a + 10], c[a + 11], f[${Slot.FloatArg}], c[a + 12], c[a + 13]);
    } catch (e) { Atomics.store(c, ${Slot.Error}, 1); }
    Atomics.store(c, ${Slot.Done}, last);
    Atomics.notify(c, ${Slot.Done});
  }
});
`;

export class KernelThread {
  private readonly ctrl = new Int32Array(new SharedArrayBuffer(CTRL_INTS * 4));
  private readonly f32 = new Float32Array(this.ctrl.buffer);
  private seq = 0;
  private broken = false;

  private constructor(private readonly worker: { terminate(): Promise<number>; postMessage(m: unknown): void }) {}

  /** Starts the worker on `memory` (must be shared) and resolves once its kernels are instantiated. */
  static async start(module: WebAssembly.Module, memory: WebAssembly.Memory, opts: { idleExitMs?: number } = {}): Promise<KernelThread> {
    const { Worker } = await import('node:worker_threads');
    const worker = new Worker(WORKER_SOURCE.replace('IDLE_EXIT_MS', String(opts.idleExitMs ?? IDLE_EXIT_MS)), { eval: true });
    worker.unref(); // never keeps the process alive
    const t = new KernelThread(worker);
    await new Promise<void>((resolve, reject) => {
      worker.once('message', (m: { ready?: boolean; error?: string }) => (m.ready ? resolve() : reject(new Error(m.error))));
      worker.once('error', reject);
      worker.postMessage({ module, memory, ctrl: t.ctrl.buffer });
    });
    worker.on('error', () => (t.broken = true));
    worker.on('exit', () => (t.broken = true));
    return t;
  }

  get usable(): boolean {
    return !this.broken && Atomics.load(this.ctrl, Slot.State) !== State.Exited;
  }

  /** Reserves the worker for one job (post, then wait). False when it has exited or failed. */
  claim(): boolean {
    if (this.broken) return false;
    return Atomics.compareExchange(this.ctrl, Slot.State, State.Idle, State.Claimed) === State.Idle;
  }

  /** Hands a claimed worker its job; call `wait()` after doing the caller's half. */
  post(op: 1 | 2 | 3, ints: number[], float = 0): void {
    const c = this.ctrl;
    Atomics.store(c, Slot.Chunk, 0);
    for (let i = 0; i < ints.length; i++) c[Slot.Args + i] = ints[i];
    this.f32[Slot.FloatArg] = float;
    c[Slot.Op] = op;
    this.seq = (this.seq + 1) | 0;
    Atomics.store(c, Slot.Seq, this.seq);
    Atomics.notify(c, Slot.Seq);
  }

  /** The caller's turn at a chunked job: the next chunk index (>= the chunk count when none is left). */
  takeChunk(): number {
    return Atomics.add(this.ctrl, Slot.Chunk, 1);
  }

  /** Blocks until the worker finished the posted job (normally within microseconds of the caller), then releases it. */
  wait(): void {
    const c = this.ctrl;
    const t0 = performance.now();
    for (;;) {
      const done = Atomics.load(c, Slot.Done);
      if (done === this.seq) break;
      const waited = performance.now() - t0;
      if (waited > 30_000 || this.broken) {
        this.broken = true;
        throw new Error('gpt2-tfjs kernel thread stopped answering; falling back to one thread');
      }
      if (waited > 1) Atomics.wait(c, Slot.Done, done, 5);
    }
    Atomics.store(c, Slot.State, State.Idle);
    if (Atomics.load(c, Slot.Error)) {
      this.broken = true;
      throw new Error('gpt2-tfjs kernel thread failed');
    }
  }

  async stop(): Promise<void> {
    Atomics.store(this.ctrl, Slot.State, State.Exited);
    this.ctrl[Slot.Op] = 0;
    Atomics.add(this.ctrl, Slot.Seq, 1);
    Atomics.notify(this.ctrl, Slot.Seq);
    this.broken = true;
    await this.worker.terminate();
  }
}
