/**
 * More threads for the kernels: a team of workers (Node: worker_threads; browser: Web Workers), each
 * with kernels.wasm instantiated on the same shared memory as tfjs-backend-wasm, takes chunks of a
 * kernel call while the calling thread takes chunks too. A job is a kernel name, its arguments (laid
 * out by the ABI table in abi.ts, which the workers receive at start: they have no per-kernel code) and
 * a chunk layout, written into one small SharedArrayBuffer that the whole team reads, then an Atomics
 * notify; every thread takes the next chunk from one shared counter until none is left, and the caller
 * waits (spinning briefly, then Atomics.wait) until every worker has reported done.
 * Chunks are output columns, heads or batch rows (each output element is computed by one chunk, in the
 * same order whichever thread takes it), or chunks of the inner dimension into their own partial slots
 * summed in index order afterwards: results do not depend on the thread count.
 */
import { ChunkSpec, KERNEL_ABI, KERNEL_NAMES, KernelArgs, KernelExports, KernelName, MAX_KERNEL_ARGS, argList, chunkArgs, chunkLayout, invoke } from './abi';

/**
 * The control block's int32 slots. The three words both threads touch while a job runs sit on cache
 * lines of their own (64 bytes apart): the chunk counter (both take chunks), Done (the caller polls it
 * while the worker works) and the rest (written once per job). Sharing one line made every chunk the
 * worker took wait for the line to come back from the polling caller: a small job on two threads ran
 * slower than on one.
 */
const enum Slot {
  Seq = 0, // bumped by the caller for each job
  Kernel = 1, // 1 + index in KERNEL_NAMES; 0 = quit
  Error = 3, // 1 when the worker's kernel threw
  State = 4, // Idle, Claimed (the caller holds the team for one job) or Exited
  Chunks = 6, // chunk count
  ExtentArg = 7, // argument index set to min(size, total - c * size) per chunk; -1 none
  ExtentSize = 8,
  ExtentTotal = 9,
  Args = 10, // MAX_KERNEL_ARGS slots, f32 arguments stored as float bits (read through a Float32Array view)
  Chunk = 64, // next unclaimed chunk of the job (every thread takes chunks with Atomics.add): its own line
  Done = 80, // workers that finished the job (each adds 1): its own line
}
const enum State {
  Idle = 0,
  Claimed = 1,
  Exited = 2,
}
/** A team with no job for this long exits (it pins the backend's memory); the next step starts another. */
const IDLE_EXIT_MS = 30_000;
const STEPS = Slot.Args + MAX_KERNEL_ARGS; // per-argument chunk steps
const CTRL_INTS = 96;
if (STEPS + MAX_KERNEL_ARGS > Slot.Chunk) throw new Error('gpt2-tfjs: kernel arguments overflow the control block');

/**
 * The worker: plain JS (Node: evaluated with `eval: true`; browser: a Blob URL), so it needs no build
 * step or file path. `start` gets the first message and a way to answer it.
 */
const WORKER_BODY = `
function start({ module, memory, ctrl, names, types }, reply) {
  const c = new Int32Array(ctrl), f = new Float32Array(ctrl);
  let k;
  try { k = new WebAssembly.Instance(module, { env: { memory } }).exports; }
  catch (e) { reply({ error: String(e) }); return; }
  const fns = names.map((n) => k[n]);
  const arrays = [], arrays2 = [], steps = []; // argument arrays by length, reused for every job
  for (let m = 0; m <= ${MAX_KERNEL_ARGS}; m++) { arrays.push(new Array(m).fill(0)); arrays2.push(new Array(m).fill(0)); steps.push(new Array(m).fill(0)); }
  const invoke = ${invoke.toString()}; // abi.ts: fixed-arity calls (a spread call to a wasm export is slow)

  // Jobs are counted from 0 on a fresh control block. Reading the counter here instead would race:
  // the caller may post its first job between 'ready' and that read, and the job would never run.
  let last = 0;
  reply({ ready: true });
  for (;;) {
    // Spin a little: the next job usually follows within microseconds. The clock is read once per 1024
    // polls: each read allocates a number, and a worker polling it nonstop collected garbage every few
    // decode steps, each collection waking V8's helper threads onto the cores the kernels run on.
    let t0 = -1, polls = 0;
    while (Atomics.load(c, ${Slot.Seq}) === last) {
      if ((++polls & 1023) !== 0) continue;
      if (t0 < 0) t0 = performance.now();
      if (performance.now() - t0 < 2) continue;
      // idle: sleep until the next job; after a long idle, exit unless the caller holds the team right
      // now (the first worker to time out marks the team exited; the others see it and exit too)
      if (Atomics.wait(c, ${Slot.Seq}, last, IDLE_EXIT_MS) === 'timed-out') {
        const was = Atomics.compareExchange(c, ${Slot.State}, ${State.Idle}, ${State.Exited});
        if (was === ${State.Idle} || was === ${State.Exited}) return;
      }
    }
    last = Atomics.load(c, ${Slot.Seq});
    const op = c[${Slot.Kernel}];
    if (op === 0) return;
    try {
      const t = types[op - 1], fn = fns[op - 1], m = t.length;
      const args = arrays[m], a = arrays2[m];
      for (let i = 0; i < m; i++) args[i] = t[i] === 'f32' ? f[${Slot.Args} + i] : c[${Slot.Args} + i];
      const n = c[${Slot.Chunks}];
      const e = c[${Slot.ExtentArg}], size = c[${Slot.ExtentSize}], total = c[${Slot.ExtentTotal}], st = steps[m];
      for (let i = 0; i < m; i++) st[i] = c[${STEPS} + i];
      for (let ch = Atomics.add(c, ${Slot.Chunk}, 1); ch < n; ch = Atomics.add(c, ${Slot.Chunk}, 1)) {
        for (let i = 0; i < m; i++) a[i] = args[i] + ch * st[i];
        if (e >= 0) a[e] = Math.min(size, total - ch * size);
        invoke(fn, a);
      }
    } catch (e) { Atomics.store(c, ${Slot.Error}, 1); }
    Atomics.add(c, ${Slot.Done}, 1);
    Atomics.notify(c, ${Slot.Done});
  }
}
`;
const NODE_WORKER = `${WORKER_BODY}
const { parentPort } = require('node:worker_threads');
parentPort.once('message', (m) => start(m, (r) => parentPort.postMessage(r)));
`;
const BROWSER_WORKER = `${WORKER_BODY}
self.onmessage = (e) => { self.onmessage = null; start(e.data, (r) => self.postMessage(r)); };
`;

const isNode = typeof process !== 'undefined' && !!process.versions?.node && typeof window === 'undefined';
/** Atomics.wait is refused on a browser's main thread: there the caller spins instead. */
const canBlock = isNode || typeof window === 'undefined';

interface WorkerLike {
  terminate(): unknown;
  postMessage(m: unknown): void;
}

/** Starts the platform's worker on `source`; `onMessage` gets its first message, `onGone` an error or exit. */
async function spawn(source: string, onMessage: (m: { ready?: boolean; error?: string }) => void, onGone: (e: unknown) => void): Promise<WorkerLike> {
  if (isNode) {
    const { Worker } = await import('node:worker_threads');
    const w = new Worker(source, { eval: true });
    w.unref(); // never keeps the process alive
    w.once('message', onMessage);
    w.on('error', onGone);
    w.on('exit', onGone);
    return w;
  }
  if (typeof Worker === 'undefined') throw new Error('no Worker in this runtime');
  const url = URL.createObjectURL(new Blob([source], { type: 'text/javascript' }));
  const w = new Worker(url);
  URL.revokeObjectURL(url);
  w.onmessage = (e: MessageEvent) => {
    w.onmessage = null;
    onMessage(e.data as { ready?: boolean; error?: string });
  };
  w.onerror = onGone;
  return w;
}

export class KernelTeam {
  private readonly ctrl = new Int32Array(new SharedArrayBuffer(CTRL_INTS * 4));
  private readonly f32 = new Float32Array(this.ctrl.buffer);
  private seq = 0;
  private broken = false;

  private readonly workers: WorkerLike[] = [];
  private stopped = false;

  private constructor(readonly size: number) {}

  /**
   * Starts `workers` workers (default 1) on `memory` (must be shared) and resolves once all have their
   * kernels instantiated; if one fails to start, those started are stopped and it rejects.
   */
  static async start(module: WebAssembly.Module, memory: WebAssembly.Memory, opts: { workers?: number; idleExitMs?: number } = {}): Promise<KernelTeam> {
    const n = opts.workers ?? 1;
    if (!Number.isInteger(n) || n < 1) throw new Error(`a kernel team needs at least one worker, got ${n}`);
    const t = new KernelTeam(n);
    const source = (isNode ? NODE_WORKER : BROWSER_WORKER).replace('IDLE_EXIT_MS', String(opts.idleExitMs ?? IDLE_EXIT_MS));
    const one = () =>
      new Promise<void>((resolve, reject) => {
        let started = false;
        spawn(
          source,
          (m) => {
            started = true;
            if (m.ready) resolve();
            else reject(new Error(m.error));
          },
          (e) => {
            t.broken = true;
            if (!started) reject(e instanceof Error ? e : new Error(String((e as ErrorEvent)?.message ?? e)));
          },
        ).then((w) => {
          if (t.stopped) {
            void w.terminate(); // another worker failed to start and the team was stopped meanwhile
            return;
          }
          t.workers.push(w);
          w.postMessage({ module, memory, ctrl: t.ctrl.buffer, names: KERNEL_NAMES, types: KERNEL_NAMES.map((n) => KERNEL_ABI[n].map(([, ty]) => ty)) });
        }, reject);
      });
    try {
      await Promise.all(Array.from({ length: n }, one));
    } catch (e) {
      await t.stop();
      throw e;
    }
    return t;
  }

  get usable(): boolean {
    return !this.broken && Atomics.load(this.ctrl, Slot.State) !== State.Exited;
  }

  /** Reserves the team for one job (post, then wait). False when it has exited or failed. */
  claim(): boolean {
    if (this.broken) return false;
    return Atomics.compareExchange(this.ctrl, Slot.State, State.Idle, State.Claimed) === State.Idle;
  }

  /**
   * Hands a claimed team its job: kernel `name` on the positional arguments `list` (argList), in
   * `count` chunks laid out by `layout` (chunkLayout), which every worker takes in turn with the caller
   * (see runChunks). Call `wait()` after taking the caller's chunks.
   */
  post<K extends KernelName>(name: K, list: readonly number[], count: number, layout: { steps: number[]; extentIndex: number }, extent: ChunkSpec<K>['extent']): void {
    const c = this.ctrl;
    const types = KERNEL_ABI[name];
    for (let i = 0; i < list.length; i++) {
      if (types[i][1] === 'f32') this.f32[Slot.Args + i] = list[i];
      else c[Slot.Args + i] = list[i];
    }
    Atomics.store(c, Slot.Chunk, 0);
    Atomics.store(c, Slot.Done, 0);
    c[Slot.Chunks] = count;
    for (let i = 0; i < layout.steps.length; i++) c[STEPS + i] = layout.steps[i];
    c[Slot.ExtentArg] = layout.extentIndex;
    c[Slot.ExtentSize] = extent?.size ?? 0;
    c[Slot.ExtentTotal] = extent?.total ?? 0;
    c[Slot.Kernel] = 1 + KERNEL_NAMES.indexOf(name);
    this.seq = (this.seq + 1) | 0;
    Atomics.store(c, Slot.Seq, this.seq);
    Atomics.notify(c, Slot.Seq);
  }

  /** The caller's turn at a chunked job: the next chunk index (>= the chunk count when none is left). */
  takeChunk(): number {
    return Atomics.add(this.ctrl, Slot.Chunk, 1);
  }

  /**
   * `wait()`, and when a worker failed or stopped answering (the team is then marked unusable, and
   * later calls run on one thread), `redo` computes the job again on this thread: the call still
   * returns the right result.
   */
  waitOr(redo: () => void): void {
    try {
      this.wait();
    } catch {
      redo();
    }
  }

  /** Blocks until every worker finished the posted job (normally within microseconds of the caller), then releases the team. */
  wait(): void {
    const c = this.ctrl;
    let t0 = -1;
    for (let polls = 1; ; polls++) {
      const done = Atomics.load(c, Slot.Done);
      if (done === this.size) break;
      if ((polls & 1023) !== 0) continue; // the clock once per 1024 polls (see the worker's loop)
      if (t0 < 0) t0 = performance.now();
      const waited = performance.now() - t0;
      if (waited > 30_000 || this.broken) {
        this.broken = true;
        throw new Error('gpt2-tfjs kernel worker stopped answering; falling back to one thread');
      }
      if (waited > 1 && canBlock) Atomics.wait(c, Slot.Done, done, 5); // a browser's main thread spins
    }
    Atomics.store(c, Slot.State, State.Idle);
    if (Atomics.load(c, Slot.Error)) {
      this.broken = true;
      throw new Error('gpt2-tfjs kernel worker failed');
    }
  }

  /** Marks the team unusable (a job it ran together went wrong); later calls run on one thread. */
  abandon(): void {
    this.broken = true;
  }

  async stop(): Promise<void> {
    this.stopped = true;
    Atomics.store(this.ctrl, Slot.State, State.Exited);
    this.ctrl[Slot.Kernel] = 0;
    Atomics.add(this.ctrl, Slot.Seq, 1);
    Atomics.notify(this.ctrl, Slot.Seq);
    this.broken = true;
    await Promise.all(this.workers.map((w) => w.terminate()));
  }
}

/**
 * Runs every chunk of a chunked job: with a team (claimed here) every thread takes chunks in turn,
 * else the caller takes them all, in the same chunks — so the per-chunk results, and whatever sums
 * them afterwards in index order, are the same for any number of threads.
 */
export function runChunks<K extends KernelName>(k: KernelExports, name: K, args: KernelArgs<K>, spec: ChunkSpec<K>, thread: KernelTeam | null): void {
  const base = argList(name, args);
  const layout = chunkLayout(name, spec);
  const { steps, extentIndex } = layout;
  const size = spec.extent?.size ?? 0;
  const total = spec.extent?.total ?? 0;
  const shared = thread !== null && thread.claim();
  const f = k[name];
  const a = base.slice();
  if (shared) thread.post(name, base, spec.count, layout, spec.extent);
  try {
    let next = 0;
    for (let ch = shared ? thread.takeChunk() : next++; ch < spec.count; ch = shared ? thread.takeChunk() : next++) invoke(f, chunkArgs(a, base, steps, ch, extentIndex, size, total));
  } finally {
    // if a worker failed, every chunk is redone here (each chunk writes only its own slot)
    if (shared) thread.waitOr(() => { for (let ch = 0; ch < spec.count; ch++) invoke(f, chunkArgs(a, base, steps, ch, extentIndex, size, total)); });
  }
}

/**
 * Runs a kernel that splits its own work (block_step): every thread of a claimed team runs it once,
 * at the same time, as thread `tid` of `nth` (its chunk index is its tid; the threads meet at barriers
 * in memory, so none can take a second chunk before all have taken one). Without a team it runs once
 * here with nth 1 (the caller passes that nth in `args`). A `may_block` argument is 1 for the workers
 * and, for this thread, whether it may sleep (not a browser's main thread). `redo` runs when a worker
 * failed: it must compute the whole job again on this thread (the kernel's writes are repeatable).
 * `abort` runs when this thread's own part threw, before waiting for the others: it must make them
 * stop waiting for it (block_step: its give-up flag).
 */
/** Per kernel, once: where its `may_block` argument is, and the chunk layout that steps `tid` by 1. */
const teamLayouts = new Map<KernelName, { blockAt: number; layout: { steps: number[]; extentIndex: number } }>();
function teamLayout(name: KernelName): { blockAt: number; layout: { steps: number[]; extentIndex: number } } {
  let t = teamLayouts.get(name);
  if (!t) {
    t = { blockAt: KERNEL_ABI[name].findIndex(([a]) => a === 'may_block'), layout: chunkLayout(name, { count: 0, step: { tid: 1 } as Partial<KernelArgs<typeof name>> }) };
    teamLayouts.set(name, t);
  }
  return t;
}

export function runTeamed<K extends KernelName>(k: KernelExports, name: K, args: KernelArgs<K>, team: KernelTeam | null, redo: () => void, abort?: () => void): void {
  const base = argList(name, args);
  const f = k[name];
  if (!team) {
    invoke(f, base);
    return;
  }
  const { blockAt, layout } = teamLayout(name);
  if (blockAt >= 0) base[blockAt] = 1; // workers may always sleep
  const count = team.size + 1;
  const a = base.slice();
  let failed = false;
  team.post(name, base, count, layout, undefined);
  try {
    for (let ch = team.takeChunk(); ch < count; ch = team.takeChunk()) {
      chunkArgs(a, base, layout.steps, ch, -1, 0, 0);
      if (blockAt >= 0) a[blockAt] = canBlock ? 1 : 0;
      invoke(f, a);
    }
  } catch (e) {
    abort?.();
    throw e;
  } finally {
    team.waitOr(() => (failed = true));
  }
  if (failed) redo();
}
