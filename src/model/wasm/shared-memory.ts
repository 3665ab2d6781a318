/**
 * Lets tfjs-backend-wasm run on a *shared* WebAssembly.Memory, so a worker thread can run our
 * kernels on the same tensors (src/model/wasm/threads.ts): the second core does half of every
 * matrix product. tfjs-backend-wasm's single-threaded binary defines its own (unshared) memory, so
 * while the backend initialises, its bytes are rewritten to import the memory instead (the memory
 * section becomes an `env.memory` import with the shared flag and a 4 GiB maximum). Nothing else in
 * the binary changes; a shared memory behaves exactly like an unshared one for a single thread.
 *
 * Node only (browsers need cross-origin isolation and tfjs ships its own threaded build there).
 */

function readLeb(b: Uint8Array, p: number): [number, number] {
  let r = 0;
  let s = 0;
  let byte: number;
  do {
    byte = b[p++];
    r += (byte & 0x7f) * 2 ** s;
    s += 7;
  } while (byte & 0x80);
  return [r, p];
}

function leb(n: number): number[] {
  const out: number[] = [];
  do {
    let byte = n & 0x7f;
    n = Math.floor(n / 128);
    if (n) byte |= 0x80;
    out.push(byte);
  } while (n);
  return out;
}

const MAX_PAGES = 65536; // 4 GiB, wasm32's limit; a shared memory must declare a maximum

/**
 * Rewrites a module that defines one memory so that it imports a shared one as `env.memory`.
 * Returns null when the module does not have exactly that shape (then nothing is patched).
 */
export function patchToImportSharedMemory(bytes: Uint8Array): { bytes: Uint8Array; initialPages: number } | null {
  const sections = parseSections(bytes);
  const mem = sections?.find((s) => s.id === 5);
  const imp = sections?.find((s) => s.id === 2);
  if (!sections || !mem || !imp) return null;
  let [count, q] = readLeb(bytes, mem.payload);
  if (count !== 1) return null;
  const flags = bytes[q++];
  if (flags !== 0 && flags !== 1) return null; // already shared or 64-bit: leave it alone
  const [initialPages] = readLeb(bytes, q);
  [count, q] = readLeb(bytes, imp.payload);
  const name = (s: string) => [...leb(s.length), ...Array.from(s, (c) => c.charCodeAt(0))];
  const entry = [...name('env'), ...name('memory'), 0x02, 0x03, ...leb(initialPages), ...leb(MAX_PAGES)];
  const payload = [...leb(count + 1), ...bytes.subarray(q, imp.end), ...entry];
  const out = rebuild(bytes, sections, (s) => (s === mem ? null : s === imp ? Uint8Array.from([2, ...leb(payload.length), ...payload]) : bytes.subarray(s.start, s.end)));
  return { bytes: out, initialPages };
}

/** Rewrites a module's (unshared) memory import so it accepts a shared memory; null if it has none. */
export function patchMemoryImportToShared(bytes: Uint8Array): Uint8Array | null {
  const sections = parseSections(bytes);
  const imp = sections?.find((s) => s.id === 2);
  if (!sections || !imp) return null;
  const [count, first] = readLeb(bytes, imp.payload);
  const entries: number[] = [];
  let found = false;
  let q = first;
  for (let i = 0; i < count; i++) {
    const start = q;
    for (let name = 0; name < 2; name++) {
      const [n, r] = readLeb(bytes, q); // module, then field name
      q = r + n;
    }
    const kindAt = q;
    const kind = bytes[q++];
    if (kind === 0x02) {
      const flags = bytes[q++];
      if (flags & ~1) return null; // already shared, or memory64
      let min: number;
      [min, q] = readLeb(bytes, q);
      if (flags & 1) [, q] = readLeb(bytes, q);
      entries.push(...bytes.subarray(start, kindAt), 0x02, 0x03, ...leb(min), ...leb(MAX_PAGES));
      found = true;
      continue;
    }
    if (kind === 0x00) [, q] = readLeb(bytes, q); // function: type index
    else if (kind === 0x01) {
      q++; // table: reftype, then limits
      const flags = bytes[q++];
      [, q] = readLeb(bytes, q);
      if (flags & 1) [, q] = readLeb(bytes, q);
    } else if (kind === 0x03) q += 2; // global: valtype, mutability
    else return null;
    entries.push(...bytes.subarray(start, q));
  }
  if (!found) return null;
  const payload = [...leb(count), ...entries];
  return rebuild(bytes, sections, (s) => (s === imp ? Uint8Array.from([2, ...leb(payload.length), ...payload]) : bytes.subarray(s.start, s.end)));
}

type Section = { id: number; start: number; end: number; payload: number };

function parseSections(bytes: Uint8Array): Section[] | null {
  if (bytes.length < 8 || bytes[0] !== 0 || bytes[1] !== 0x61 || bytes[2] !== 0x73 || bytes[3] !== 0x6d) return null;
  const sections: Section[] = [];
  let p = 8;
  while (p < bytes.length) {
    const start = p;
    const id = bytes[p++];
    const [size, q] = readLeb(bytes, p);
    sections.push({ id, start, end: q + size, payload: q });
    p = q + size;
  }
  return p === bytes.length ? sections : null;
}

function rebuild(bytes: Uint8Array, sections: Section[], part: (s: Section) => Uint8Array | null): Uint8Array {
  const parts: Uint8Array[] = [bytes.subarray(0, 8)];
  for (const s of sections) {
    const p = part(s);
    if (p) parts.push(p);
  }
  const out = new Uint8Array(parts.reduce((n, a) => n + a.length, 0));
  let o = 0;
  for (const a of parts) {
    out.set(a, o);
    o += a.length;
  }
  return out;
}

function isTfjsBackendModule(mod: WebAssembly.Module): boolean {
  const imports = WebAssembly.Module.imports(mod);
  const exports = WebAssembly.Module.exports(mod).map((e) => e.name);
  return !imports.some((i) => i.kind === 'memory') && exports.includes('memory') && exports.includes('_FusedMatMul') && exports.includes('register_tensor');
}

/**
 * Runs `init` (the wasm backend's initialisation) with WebAssembly.instantiate wrapped so the
 * tfjs-backend-wasm module gets a shared memory. Returns that memory, or null when the module was
 * not seen or could not be patched (then the backend runs exactly as shipped).
 */
export async function withSharedWasmMemory<T>(init: () => Promise<T>): Promise<{ result: T; memory: WebAssembly.Memory | null }> {
  const original = WebAssembly.instantiate;
  let memory: WebAssembly.Memory | null = null;
  const wrapped = async function (source: BufferSource | WebAssembly.Module, imports?: WebAssembly.Imports) {
    if (!memory && !(source instanceof WebAssembly.Module) && imports && typeof imports === 'object') {
      const bytes = ArrayBuffer.isView(source) ? new Uint8Array(source.buffer, source.byteOffset, source.byteLength) : new Uint8Array(source as ArrayBuffer);
      try {
        const mod = await WebAssembly.compile(bytes);
        if (isTfjsBackendModule(mod)) {
          const patched = patchToImportSharedMemory(bytes);
          if (patched) {
            const shared = new WebAssembly.Memory({ initial: patched.initialPages, maximum: MAX_PAGES, shared: true });
            const env = { ...((imports as Record<string, WebAssembly.ModuleImports>).env ?? {}), memory: shared };
            const result = await original(patched.bytes, { ...imports, env });
            memory = shared;
            return result;
          }
        }
      } catch {
        // fall through: instantiate the module as shipped
      }
    }
    return (original as (s: unknown, i?: WebAssembly.Imports) => Promise<unknown>)(source, imports);
  };
  (WebAssembly as { instantiate: unknown }).instantiate = wrapped;
  try {
    const result = await init();
    return { result, memory };
  } finally {
    (WebAssembly as { instantiate: unknown }).instantiate = original;
  }
}
