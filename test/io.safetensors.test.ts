/** safetensors: every malformed file is one GPT2Error('BAD_SAFETENSORS') naming the problem; every dtype decodes exactly. */
import { GPT2Error, GPT2ErrorCode } from '../src/errors';
import { decodeToFloat32, readHeaderLength, readSafetensorsHeader, readTensor, writeSafetensors } from '../src/io/safetensors';
import { caught, expectSameFloats } from './helpers';

// ---- helpers ----------------------------------------------------------------------------------

/** A safetensors file from a header (object or raw text) and a data section; `declared` overrides the length prefix. */
function build(header: unknown, data: Uint8Array = new Uint8Array(0), declared?: number): Uint8Array {
  const hb = new TextEncoder().encode(typeof header === 'string' ? header : JSON.stringify(header));
  const out = new Uint8Array(8 + hb.byteLength + data.byteLength);
  const dv = new DataView(out.buffer);
  const n = declared ?? hb.byteLength;
  dv.setUint32(0, n % 2 ** 32, true);
  dv.setUint32(4, Math.floor(n / 2 ** 32), true);
  out.set(hb, 8);
  out.set(data, 8 + hb.byteLength);
  return out;
}

function bytesOf(a: ArrayBufferView): Uint8Array {
  return new Uint8Array(a.buffer.slice(a.byteOffset, a.byteOffset + a.byteLength));
}

function expectGPT2(fn: () => unknown, code: GPT2ErrorCode, message: RegExp): void {
  const e = caught(fn);
  expect(e.code).toBe(code);
  expect(e.message).toMatch(message);
}

const bad = (bytes: Uint8Array, message: RegExp): void =>
  expectGPT2(() => readSafetensorsHeader(bytes, 'x/model.safetensors'), 'BAD_SAFETENSORS', message);

const f32 = (x: number): number => Math.fround(x);

// ---- malformed files ------------------------------------------------------------------------

describe('malformed safetensors', () => {
  test('messages name the file', () => bad(new Uint8Array(3), /^x\/model\.safetensors: /));

  test.each([0, 1, 7])('a %i-byte file is truncated (shorter than the length prefix)', (n) => bad(new Uint8Array(n), /truncated: \d+ bytes is shorter than the 8-byte header length/));

  test('header cut short: length prefix runs past the end', () => {
    const full = build({ a: { dtype: 'F32', shape: [1], data_offsets: [0, 4] } }, new Uint8Array(4));
    bad(full.subarray(0, 20), /header length \d+ runs past the end of the file \(20 bytes\)/);
  });

  test('header length far past the end (high word set, and just one byte over)', () => {
    bad(build('{}', undefined, 2 ** 40), /header length 1099511627776 runs past the end/);
    bad(build('{}', undefined, 3), /header length 3 runs past the end of the file \(10 bytes\)/);
  });

  test('header length 0', () => bad(build('', new Uint8Array(8), 0), /header length is 0/));

  test('readHeaderLength checks the declared file size, not just the prefix', () => {
    const prefix = build('{}').subarray(0, 8);
    expect(readHeaderLength(prefix, 10, 'f')).toBe(2);
    expectGPT2(() => readHeaderLength(prefix, 9, 'f'), 'BAD_SAFETENSORS', /runs past the end/);
    expectGPT2(() => readHeaderLength(prefix.subarray(0, 4), 100, 'f'), 'BAD_SAFETENSORS', /truncated/);
  });

  test.each([
    ['{"a": ', 'unterminated'],
    ["{'a': 1}", 'single quotes'],
    ['{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}}', 'trailing brace'],
  ])('bad JSON: %s (%s)', (text) => bad(build(text, new Uint8Array(4)), /header is not valid JSON \(/));

  test('header that is not UTF-8 is reported as bad JSON', () => {
    const f = build('{"a":1}');
    f[9] = 0xff;
    bad(f, /header is not valid JSON/);
  });

  test.each(['[]', '42', 'null', '"text"', 'true'])('header %s is not an object', (text) => bad(build(text), /header JSON must be an object/));

  test.each(['5', 'null', '"F32"'])('tensor entry %s is not an object', (v) => bad(build(`{"w": ${v}}`), /tensor "w": entry must be an object/));

  test.each(['I64', 'Q4', 'U8', 'f32', 'toString', 'constructor', '__proto__'])('unknown dtype %s', (dtype) =>
    bad(build({ w: { dtype, shape: [1], data_offsets: [0, 8] } }, new Uint8Array(8)), new RegExp(`tensor "w": unsupported dtype "${dtype}" \\(supported: F32, F16, BF16, F64, I8\\)`)),
  );

  test('missing or non-string dtype', () => {
    bad(build({ w: { shape: [1], data_offsets: [0, 4] } }, new Uint8Array(4)), /tensor "w": unsupported dtype undefined/);
    bad(build({ w: { dtype: 4, shape: [1], data_offsets: [0, 4] } }, new Uint8Array(4)), /tensor "w": unsupported dtype 4/);
  });

  test.each([[[-1]], [[1.5]], ['3'], [null], [[2, '2']]])('bad shape %j', (shape) =>
    bad(build({ w: { dtype: 'F32', shape, data_offsets: [0, 4] } }, new Uint8Array(4)), /tensor "w": shape must be an array of non-negative integers/),
  );

  test.each([[[0]], [[0, 4, 8]], [[-4, 0]], [[0, 4.5]], ['0,4'], [undefined]])('bad data_offsets %j', (offs) =>
    bad(build({ w: { dtype: 'F32', shape: [1], data_offsets: offs } }, new Uint8Array(8)), /tensor "w": data_offsets must be \[begin, end\]/),
  );

  test.each([
    ['F32', [3], [0, 8], 12, 8],
    ['F16', [2, 3], [0, 24], 12, 24],
    ['BF16', [4], [0, 4], 8, 4],
    ['F64', [1], [0, 4], 8, 4],
    ['F32', [], [0, 0], 4, 0],
  ])('%s shape %j with data_offsets %j: shape × dtype size ≠ byte range', (dtype, shape, offs, want, span) =>
    bad(build({ w: { dtype, shape, data_offsets: offs } }, new Uint8Array(32)), new RegExp(`tensor "w": shape \\[.*\\] × ${dtype} needs ${want} bytes but data_offsets span ${span}`)),
  );

  test('begin after end', () =>
    bad(build({ w: { dtype: 'F32', shape: [0], data_offsets: [8, 4] } }, new Uint8Array(8)), /tensor "w": data_offsets \[8, 4\] has begin after end/));

  test('range out of the file (truncated data section)', () => {
    bad(build({ w: { dtype: 'F32', shape: [4], data_offsets: [0, 16] } }, new Uint8Array(12)), /tensor "w": data_offsets \[0, 16\] out of file range \(data section is 12 bytes\)/);
    bad(build({ w: { dtype: 'F32', shape: [0], data_offsets: [13, 13] } }, new Uint8Array(12)), /out of file range/);
  });

  test('overlapping byte ranges', () => {
    const h = {
      a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] },
      b: { dtype: 'F32', shape: [2], data_offsets: [4, 12] },
    };
    bad(build(h, new Uint8Array(12)), /tensors "a" and "b" have overlapping byte ranges/);
    // Same range twice.
    bad(build({ a: h.a, b: { ...h.a } }, new Uint8Array(12)), /overlapping byte ranges/);
    // One range nested inside another, listed out of order.
    bad(build({ small: { dtype: 'F16', shape: [1], data_offsets: [4, 6] }, big: { dtype: 'F32', shape: [3], data_offsets: [0, 12] } }, new Uint8Array(12)), /"big" and "small" have overlapping/);
  });

  test('overlap is found even across an empty tensor lying inside a bigger one', () => {
    const h = {
      big: { dtype: 'F32', shape: [4], data_offsets: [0, 16] },
      empty: { dtype: 'F32', shape: [0], data_offsets: [4, 4] },
      inner: { dtype: 'F32', shape: [1], data_offsets: [8, 12] },
    };
    bad(build(h, new Uint8Array(16)), /"big" and "inner" have overlapping byte ranges/);
  });

  test('touching ranges and empty tensors are fine', () => {
    const h = readSafetensorsHeader(
      build(
        {
          a: { dtype: 'F32', shape: [1], data_offsets: [0, 4] },
          e: { dtype: 'F16', shape: [0, 7], data_offsets: [4, 4] },
          b: { dtype: 'F32', shape: [1], data_offsets: [4, 8] },
        },
        new Uint8Array(8),
      ),
    );
    expect([...h.entries.keys()]).toEqual(['a', 'e', 'b']);
    expect(readTensor(new Uint8Array(0), { ...h.entries.get('e')!, begin: 0, end: 0 }).data.length).toBe(0);
  });

  test('__metadata__ must be an object', () => {
    bad(build({ __metadata__: 'pt' }), /__metadata__ must be an object/);
    bad(build({ __metadata__: ['pt'] }), /__metadata__ must be an object/);
    bad(build({ __metadata__: null }), /__metadata__ must be an object/);
  });

  test('errors are GPT2Errors, never raw TypeError/RangeError, for many random corruptions', () => {
    const good = writeSafetensors({ a: { data: new Float32Array([1, 2, 3]), shape: [3] }, b: { data: new Float32Array([4, 5]), shape: [2], dtype: 'F16' } });
    let seed = 12345;
    const rnd = (n: number): number => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed % n;
    };
    for (let trial = 0; trial < 2000; trial++) {
      const f = good.slice(0, trial % 3 === 0 ? rnd(good.length + 1) : good.length);
      for (let k = 0; k < 1 + rnd(3); k++) if (f.length) f[rnd(f.length)] = rnd(256);
      try {
        const h = readSafetensorsHeader(f);
        for (const e of h.entries.values()) readTensor(f, e);
      } catch (e) {
        expect(e).toBeInstanceOf(GPT2Error);
        expect((e as GPT2Error).code).toBe('BAD_SAFETENSORS');
      }
    }
  });
});

// ---- well-formed files ----------------------------------------------------------------------

describe('header parsing', () => {
  test('entries carry absolute byte ranges, metadata is returned and never listed as a tensor', () => {
    const bytes = build(
      { __metadata__: { format: 'pt', note: 'hi' }, w: { dtype: 'F32', shape: [2, 1], data_offsets: [0, 8] }, v: { dtype: 'F16', shape: [1], data_offsets: [8, 10] } },
      new Uint8Array(10),
    );
    const h = readSafetensorsHeader(bytes);
    const n = bytes.length - 10 - 8;
    expect(h.dataStart).toBe(8 + n);
    expect(h.metadata).toEqual({ format: 'pt', note: 'hi' });
    expect([...h.entries.keys()]).toEqual(['w', 'v']);
    expect(h.entries.get('w')).toEqual({ name: 'w', dtype: 'F32', shape: [2, 1], begin: 8 + n, end: 16 + n });
    expect(h.entries.get('v')).toMatchObject({ begin: 16 + n, end: 18 + n });
  });

  test('no __metadata__ gives empty metadata; an empty header has no entries', () => {
    const h = readSafetensorsHeader(build('{}'));
    expect(h.metadata).toEqual({});
    expect(h.entries.size).toBe(0);
  });

  test('header padded with trailing spaces (as the reference writer pads to 8 bytes)', () => {
    const h = readSafetensorsHeader(build('{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}      ', new Uint8Array(4)));
    expect(h.entries.get('w')!.shape).toEqual([1]);
  });

  test('a tensor named like an Object.prototype key is just a tensor', () => {
    const h = readSafetensorsHeader(build('{"__proto__":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', new Uint8Array(4)));
    expect([...h.entries.keys()]).toEqual(['__proto__']);
  });
});

describe('decoding', () => {
  test('F32 round trip through writeSafetensors, special values included', () => {
    const data = new Float32Array([0, -0, 1, -1.5, 3.4028234663852886e38, -3.4028234663852886e38, 1.401298464324817e-45, -1.1754942106924411e-38, Infinity, -Infinity, NaN, f32(Math.PI)]);
    const bytes = writeSafetensors({ w: { data, shape: [3, 4] } });
    const h = readSafetensorsHeader(bytes);
    const t = readTensor(bytes, h.entries.get('w')!);
    expect(t.shape).toEqual([3, 4]);
    expectSameFloats(t.data, data);
  });

  test('F32 decoded from a window is a copy of just that window', () => {
    const bytes = writeSafetensors({ a: { data: new Float32Array([1, 2]), shape: [2] }, b: { data: new Float32Array([3, 4, 5]), shape: [3] } });
    const h = readSafetensorsHeader(bytes);
    const b = readTensor(bytes, h.entries.get('b')!);
    expect(Array.from(b.data)).toEqual([3, 4, 5]);
    bytes.fill(0);
    expect(Array.from(b.data)).toEqual([3, 4, 5]);
  });

  test('F32 from bytes that own their buffer (streamed reads)', () => {
    const own = bytesOf(new Float32Array([7, -8]));
    expect(Array.from(decodeToFloat32(own, 'F32'))).toEqual([7, -8]);
  });

  test('F16 bit patterns: zeros, subnormals, normals, extremes, inf, NaN', () => {
    const cases: [number, number][] = [
      [0x0000, 0],
      [0x8000, -0],
      [0x0001, 2 ** -24], // smallest subnormal
      [0x8001, -(2 ** -24)],
      [0x0200, 2 ** -15],
      [0x03ff, 1023 * 2 ** -24], // largest subnormal
      [0x0400, 2 ** -14], // smallest normal
      [0x3c00, 1],
      [0x3c01, 1 + 2 ** -10],
      [0xc000, -2],
      [0x3555, 0.333251953125],
      [0x7bff, 65504], // largest finite
      [0xfbff, -65504],
      [0x7c00, Infinity],
      [0xfc00, -Infinity],
      [0x7e00, NaN],
      [0x7c01, NaN],
      [0xffff, NaN],
    ];
    const got = decodeToFloat32(bytesOf(Uint16Array.from(cases.map((c) => c[0]))), 'F16');
    expectSameFloats(got, cases.map((c) => c[1]));
  });

  test('F16 write → read is exact for all 65536 half values (NaNs stay NaN)', () => {
    const all = Uint16Array.from({ length: 65536 }, (_, i) => i);
    const values = decodeToFloat32(bytesOf(all), 'F16');
    const bytes = writeSafetensors({ h: { data: values, shape: [256, 256], dtype: 'F16' } });
    const h = readSafetensorsHeader(bytes);
    const e = h.entries.get('h')!;
    expect(e.dtype).toBe('F16');
    const raw = new Uint16Array(bytes.slice(e.begin, e.end).buffer);
    for (let i = 0; i < 65536; i++) {
      const isNaN = (i & 0x7c00) === 0x7c00 && (i & 0x3ff) !== 0;
      if (isNaN) expect((raw[i] & 0x7c00) === 0x7c00 && (raw[i] & 0x3ff) !== 0).toBe(true);
      else if (raw[i] !== i) throw new Error(`half 0x${i.toString(16)} came back as 0x${raw[i].toString(16)}`);
    }
    expectSameFloats(readTensor(bytes, e).data, values);
  });

  test('F16 writer rounds to nearest, ties to even, over/underflowing correctly', () => {
    const cases: [number, number][] = [
      [1 + 2 ** -11, 1], // tie -> even mantissa 0
      [1 + 3 * 2 ** -11, 1 + 2 ** -9], // tie -> even mantissa 2
      [1 + 2 ** -11 + 2 ** -20, 1 + 2 ** -10], // just above the tie
      [65519, 65504],
      [65520, Infinity], // rounds past the largest finite
      [-1e6, -Infinity],
      [2 ** -25, 0], // tie between 0 and the smallest subnormal -> 0
      [-(2 ** -25), -0],
      [2 ** -25 * 1.0001, 2 ** -24],
      [3 * 2 ** -25, 2 ** -23], // subnormal tie -> even
      [2 ** -26, 0],
      [1e-40, 0], // float32 subnormal
      [f32(0.1), 0.0999755859375],
      [1023.75 * 2 ** -24, 2 ** -14], // largest subnormal rounds up into the normals
    ];
    const data = Float32Array.from(cases.map((c) => c[0]));
    const bytes = writeSafetensors({ w: { data, shape: [data.length], dtype: 'F16' } });
    const t = readTensor(bytes, readSafetensorsHeader(bytes).entries.get('w')!);
    expectSameFloats(t.data, cases.map((c) => c[1]));
  });

  test('BF16 bit patterns', () => {
    const cases: [number, number][] = [
      [0x0000, 0],
      [0x8000, -0],
      [0x3f80, 1],
      [0xbf80, -1],
      [0x4049, 3.140625],
      [0xc2f7, -123.5],
      [0x0001, 2 ** -133], // smallest subnormal
      [0x0080, 2 ** -126],
      [0x7f7f, 3.3895313892515355e38], // largest finite
      [0x7f80, Infinity],
      [0xff80, -Infinity],
      [0x7fc0, NaN],
      [0xffc1, NaN],
    ];
    expectSameFloats(decodeToFloat32(bytesOf(Uint16Array.from(cases.map((c) => c[0]))), 'BF16'), cases.map((c) => c[1]));
  });

  test('BF16 is the top half of float32: hand-built file round trip', () => {
    const src = Float32Array.from({ length: 257 }, (_, i) => (i - 128) * 1.37e-3 * (i % 7 === 0 ? 1e20 : 1));
    const top = Uint16Array.from(new Uint32Array(src.buffer), (u) => u >>> 16);
    const want = new Float32Array(Uint32Array.from(top, (u) => (u << 16) >>> 0).buffer);
    const bytes = build({ w: { dtype: 'BF16', shape: [257], data_offsets: [0, 514] } }, bytesOf(top));
    const t = readTensor(bytes, readSafetensorsHeader(bytes).entries.get('w')!);
    expectSameFloats(t.data, want);
    for (let i = 0; i < src.length; i++) expect(Math.abs(t.data[i] - src[i])).toBeLessThanOrEqual(Math.abs(src[i]) * 2 ** -7);
  });

  test('F64 hand-built file: values narrow to float32 (rounding, overflow, underflow)', () => {
    const src = new Float64Array([1.5, -2.25, 0.1, 1e300, -1e300, 1e-50, -0, NaN, Infinity, 16777217]);
    const bytes = build({ __metadata__: { format: 'np' }, d: { dtype: 'F64', shape: [2, 5], data_offsets: [0, 80] } }, bytesOf(src));
    const t = readTensor(bytes, readSafetensorsHeader(bytes).entries.get('d')!);
    expect(t.shape).toEqual([2, 5]);
    expectSameFloats(t.data, [1.5, -2.25, f32(0.1), Infinity, -Infinity, 0, -0, NaN, Infinity, 16777216]);
  });

  test('unaligned data offsets: every dtype decodes wherever its bytes start', () => {
    const a16 = bytesOf(new Uint16Array([0x3c00])); // F16 1.0, 2 bytes: shifts what follows off 4/8 alignment
    const af32 = bytesOf(new Float32Array([1.25, -7]));
    const af64 = bytesOf(new Float64Array([2.5, -0.125]));
    const abf = bytesOf(new Uint16Array([0x4049, 0xbf80]));
    const data = new Uint8Array([...a16, ...af32, ...af64, ...abf]);
    const o1 = 2;
    const o2 = o1 + 8;
    const o3 = o2 + 16;
    const header = {
      h: { dtype: 'F16', shape: [1], data_offsets: [0, o1] },
      f: { dtype: 'F32', shape: [2], data_offsets: [o1, o2] },
      d: { dtype: 'F64', shape: [2], data_offsets: [o2, o3] },
      b: { dtype: 'BF16', shape: [2], data_offsets: [o3, o3 + 4] },
    };
    // Try several header lengths so the data section itself starts at every residue mod 8.
    for (let pad = 0; pad < 8; pad++) {
      const bytes = build(JSON.stringify(header) + ' '.repeat(pad), data);
      const h = readSafetensorsHeader(bytes);
      const get = (k: string): number[] => Array.from(readTensor(bytes, h.entries.get(k)!).data);
      expect(get('h')).toEqual([1]);
      expect(get('f')).toEqual([1.25, -7]);
      expect(get('d')).toEqual([2.5, -0.125]);
      expect(get('b')).toEqual([3.140625, -1]);
    }
  });

  test('decodeToFloat32 on odd byteOffset views', () => {
    const host = new Uint8Array(3 + 8);
    host.set(bytesOf(new Float64Array([-3.5])), 3);
    expect(Array.from(decodeToFloat32(host.subarray(3), 'F64'))).toEqual([-3.5]);
    host.set(bytesOf(new Float32Array([9.5, 10])), 3);
    expect(Array.from(decodeToFloat32(host.subarray(3), 'F32'))).toEqual([9.5, 10]);
    host.set(bytesOf(new Uint16Array([0xc000, 0x3800])), 1);
    expect(Array.from(decodeToFloat32(host.subarray(1, 5), 'F16'))).toEqual([-2, 0.5]);
  });

  test('readTensor returns its own shape array', () => {
    const bytes = writeSafetensors({ w: { data: new Float32Array(6), shape: [2, 3] } });
    const e = readSafetensorsHeader(bytes).entries.get('w')!;
    const t = readTensor(bytes, e);
    t.shape.push(9);
    expect(e.shape).toEqual([2, 3]);
  });
});

describe('writeSafetensors', () => {
  test('header padded to 8 bytes, contiguous offsets, default metadata', () => {
    const bytes = writeSafetensors({
      a: { data: new Float32Array([1]), shape: [1] },
      b: { data: new Float32Array([2, 3, 4]), shape: [3], dtype: 'F16' },
      c: { data: new Float32Array(0), shape: [0] },
      d: { data: new Float32Array([5, 6]), shape: [1, 2] },
    });
    const n = Number(new DataView(bytes.buffer).getBigUint64(0, true));
    expect(n % 8).toBe(0);
    const h = readSafetensorsHeader(bytes);
    expect(h.metadata).toEqual({ format: 'pt' });
    const offs = [...h.entries.values()].map((e) => [e.begin - h.dataStart, e.end - h.dataStart]);
    expect(offs).toEqual([[0, 4], [4, 10], [10, 10], [10, 18]]);
    expect(bytes.length).toBe(h.dataStart + 18);
    expect(Array.from(readTensor(bytes, h.entries.get('d')!).data)).toEqual([5, 6]);
    expect(Array.from(readTensor(bytes, h.entries.get('b')!).data)).toEqual([2, 3, 4]);
  });

  test('custom metadata, no tensors, and data given as a subarray', () => {
    const big = new Float32Array([9, 1, 2, 9]);
    const bytes = writeSafetensors({ s: { data: big.subarray(1, 3), shape: [2] } }, { format: 'tf', author: 'test' });
    const h = readSafetensorsHeader(bytes);
    expect(h.metadata).toEqual({ format: 'tf', author: 'test' });
    expect(Array.from(readTensor(bytes, h.entries.get('s')!).data)).toEqual([1, 2]);
    const empty = readSafetensorsHeader(writeSafetensors({}, {}));
    expect(empty.entries.size).toBe(0);
  });
});
