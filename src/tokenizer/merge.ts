/**
 * GPT-2's merge-rule BPE (encoder.py's `bpe()`), in O(n log n) per piece instead of O(n²).
 *
 * encoder.py repeatedly finds the adjacent pair with the lowest merge-rule index and replaces every
 * occurrence of it, left to right; on a 300 k-character run of one letter that is ~10¹¹ steps. Here
 * the pieces live in a linked list and every adjacent pair sits in a binary heap keyed by
 * (rule index, position), so each merge costs O(log n). Entries made stale by a merge are skipped
 * when popped (their pair no longer matches their rule). This is the same order as encoder.py:
 * rules in index order, and within one rule, occurrences left to right; a pair *created* during a
 * rule's pass that has a lower index than that rule waits until the pass ends, as it would there.
 */

/** Open-addressing table (left id, right id) → merge-rule index, on typed arrays. */
class PairTable {
  private readonly mask: number;
  private readonly left: Int32Array;
  private readonly right: Int32Array;
  private readonly rule: Int32Array;

  constructor(pairs: number) {
    let cap = 16;
    while (cap < pairs * 2) cap *= 2;
    this.mask = cap - 1;
    this.left = new Int32Array(cap).fill(-1);
    this.right = new Int32Array(cap);
    this.rule = new Int32Array(cap);
  }

  private slot(l: number, r: number): number {
    let h = Math.imul(l, 0x9e3779b1) ^ Math.imul(r, 0x85ebca77);
    h ^= h >>> 15;
    let s = h & this.mask;
    while (this.left[s] !== -1 && (this.left[s] !== l || this.right[s] !== r)) s = (s + 1) & this.mask;
    return s;
  }

  /** A later rule for the same pair replaces an earlier one, as in encoder.py's `dict(zip(...))`. */
  set(l: number, r: number, rule: number): void {
    const s = this.slot(l, r);
    this.left[s] = l;
    this.right[s] = r;
    this.rule[s] = rule;
  }

  /** The rule index, or -1 when no rule merges this pair. */
  get(l: number, r: number): number {
    const s = this.slot(l, r);
    return this.left[s] === -1 ? -1 : this.rule[s];
  }
}

/** Min-heap of numbers (rule * 2^32 + position: rule first, then leftmost). */
class NumberHeap {
  private a: Float64Array;
  size = 0;
  constructor(capacity: number) {
    this.a = new Float64Array(Math.max(16, capacity));
  }
  push(v: number): void {
    if (this.size === this.a.length) {
      const b = new Float64Array(this.a.length * 2);
      b.set(this.a);
      this.a = b;
    }
    const a = this.a;
    let i = this.size++;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (a[p] <= v) break;
      a[i] = a[p];
      i = p;
    }
    a[i] = v;
  }
  peek(): number {
    return this.a[0];
  }
  pop(): number {
    const a = this.a;
    const top = a[0];
    const v = a[--this.size];
    let i = 0;
    const n = this.size;
    for (;;) {
      let c = 2 * i + 1;
      if (c >= n) break;
      if (c + 1 < n && a[c + 1] < a[c]) c++;
      if (a[c] >= v) break;
      a[i] = a[c];
      i = c;
    }
    a[i] = v;
    return top;
  }
}

const POS = 2 ** 32;
/** Pieces up to this many bytes take encoder.py's own loop: for a word, cheaper than a heap. */
const SHORT = 24;

export class MergeBPE {
  private readonly pairs: PairTable;
  /** merged id of each rule */
  private readonly merged: Int32Array;

  /**
   * Merge rule i (priority order) joins ids `rules.left[i]` and `rules.right[i]` into `rules.merged[i]`;
   * `byteIds[b]` = the id of the single-byte token for byte b.
   */
  constructor(rules: { left: Int32Array; right: Int32Array; merged: Int32Array }, private readonly byteIds: Int32Array) {
    this.pairs = new PairTable(rules.merged.length);
    this.merged = rules.merged;
    for (let i = 0; i < rules.merged.length; i++) this.pairs.set(rules.left[i], rules.right[i], i);
  }

  /** encoder.py's loop, verbatim: lowest rule among adjacent pairs, every occurrence left to right. */
  private encodeShort(bytes: Uint8Array): number[] {
    let word: number[] = Array.from(bytes, (b) => this.byteIds[b]);
    while (word.length > 1) {
      let best = -1;
      for (let i = 0; i + 1 < word.length; i++) {
        const r = this.pairs.get(word[i], word[i + 1]);
        if (r >= 0 && (best < 0 || r < best)) best = r;
      }
      if (best < 0) break;
      const next: number[] = [];
      for (let i = 0; i < word.length; ) {
        if (i + 1 < word.length && this.pairs.get(word[i], word[i + 1]) === best) {
          next.push(this.merged[best]);
          i += 2;
        } else next.push(word[i++]);
      }
      word = next;
    }
    return word;
  }

  /** Ids of one pre-tokenized piece, given as its UTF-8 bytes. */
  encode(bytes: Uint8Array): number[] {
    const n = bytes.length;
    if (n === 0) return [];
    if (n === 1) return [this.byteIds[bytes[0]]];
    if (n <= SHORT) return this.encodeShort(bytes);
    const tok = new Int32Array(n);
    const next = new Int32Array(n); // -1 at the end; a merged-away position keeps its old links
    const prev = new Int32Array(n);
    const dead = new Uint8Array(n);
    for (let i = 0; i < n; i++) {
      tok[i] = this.byteIds[bytes[i]];
      next[i] = i + 1 < n ? i + 1 : -1;
      prev[i] = i - 1;
    }
    const heap = new NumberHeap(n);
    for (let i = 0; i + 1 < n; i++) {
      const r = this.pairs.get(tok[i], tok[i + 1]);
      if (r >= 0) heap.push(r * POS + i);
    }
    let pending: number[] = []; // pairs with a lower rule than the pass that created them
    let current = -1; // rule of the pass in progress
    const add = (i: number): void => {
      const j = next[i];
      if (i < 0 || j < 0) return;
      const r = this.pairs.get(tok[i], tok[j]);
      if (r < 0) return;
      if (r < current) pending.push(r * POS + i);
      else heap.push(r * POS + i);
    };
    while (heap.size > 0 || pending.length > 0) {
      if (pending.length > 0 && (heap.size === 0 || Math.floor(heap.peek() / POS) !== current)) {
        for (const v of pending) heap.push(v);
        pending = [];
      }
      const key = heap.pop();
      const r = Math.floor(key / POS);
      const i = key - r * POS;
      const j = next[i];
      if (dead[i] || j < 0 || this.pairs.get(tok[i], tok[j]) !== r) continue; // stale
      current = r;
      tok[i] = this.merged[r];
      dead[j] = 1;
      const k = next[j];
      next[i] = k;
      if (k >= 0) prev[k] = i;
      add(prev[i]);
      add(i);
    }
    const out: number[] = [];
    for (let i = 0; i >= 0; i = next[i]) out.push(tok[i]);
    return out;
  }
}
