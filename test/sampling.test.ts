/** Property tests: the partial-selection processors equal their full-sort definitions. */
import fc from 'fast-check';
import { kthLargest, sortedDesc, softmaxInPlace, topK, topP } from '../src/generate/sampling';

const logitsArb = fc.array(fc.oneof(fc.double({ min: -20, max: 20, noNaN: true }), fc.constantFrom(0, 1, -1)), { minLength: 1, maxLength: 300 });

test('kthLargest equals the k-th value of a full descending sort', () => {
  fc.assert(fc.property(logitsArb, fc.nat(), (z, k0) => {
    const k = 1 + (k0 % z.length);
    // `+ 0` turns -0 into 0: a threshold of -0 and of 0 are the same number (toBe tells them apart).
    expect(kthLargest(z, k) + 0).toBe([...z].sort((a, b) => b - a)[k - 1] + 0);
  }));
});

test('topP keeps exactly the smallest best-first prefix reaching p (full-sort definition)', () => {
  fc.assert(fc.property(logitsArb, fc.double({ min: 0.01, max: 0.999, noNaN: true }), (zs, p) => {
    const z = Float64Array.from(zs);
    topP(p)(z, []);
    const probs = softmaxInPlace(Float64Array.from(zs));
    const order = sortedDesc(probs);
    const want = new Set<number>();
    let cum = 0;
    for (let i = 0; i < order.length; i++) {
      if (i > 0 && cum >= p) break;
      cum += probs[order[i]];
      want.add(order[i]);
    }
    for (let i = 0; i < z.length; i++) expect(z[i] === -Infinity).toBe(!want.has(i));
  }));
});

test('topK keeps the k best (and ties at the boundary)', () => {
  fc.assert(fc.property(logitsArb, fc.nat(), (zs, k0) => {
    const k = 1 + (k0 % zs.length);
    const z = Float64Array.from(zs);
    topK(k)(z, []);
    const kth = [...zs].sort((a, b) => b - a)[k - 1];
    zs.forEach((v, i) => expect(z[i] === -Infinity).toBe(v < kth));
  }));
});
