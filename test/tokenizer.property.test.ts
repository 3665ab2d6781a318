import fc from 'fast-check';
import { getEncoding } from 'js-tiktoken';
import { Tokenizer, loadTokenizer } from '../src/tokenizer';
import { EncoderPy, GPT2_DIR } from './tokenizer.reference';

const EOT = '<|endoftext|>';
let tok: Tokenizer;
let ref: EncoderPy;
beforeAll(async () => {
  tok = await loadTokenizer(GPT2_DIR);
  ref = new EncoderPy();
});

/** Pieces that stress the split regex: contractions, whitespace kinds, digits, marks, emoji. */
const tricky = fc.string({
  unit: fc.constantFrom(
    ' ', '  ', '\n', '\r\n', '\t', '\u00a0', '\u0085', '\ufeff', '\u3000', "'", "'s", "'t", "'re", "'ll", 'S',
    'a', 'the', 'The', 'é', 'e\u0301', '1', '23', '٣', '!', '?!', '...', '—', '😀', '👨‍👩‍👧', '你好', 'ß', EOT,
  ),
  maxLength: 30,
});
const texts = fc.oneof(
  fc.string({ unit: 'grapheme', maxLength: 60 }),
  fc.string({ unit: 'binary', maxLength: 60 }), // any code point, surrogate pairs included
  tricky,
);

describe('tokenizer properties', () => {
  it('decode(encode(s)) === s for well-formed unicode', () => {
    fc.assert(
      fc.property(texts, (s) => {
        expect(tok.decode(tok.encode(s))).toBe(s);
        expect(tok.decode(tok.encode(s, { allowSpecial: true }))).toBe(s);
      }),
      { numRuns: 300 },
    );
  });

  it('encode equals a merge-rule port of encoder.py', () => {
    fc.assert(
      fc.property(texts, (s) => {
        expect(tok.encode(s)).toEqual(ref.encode(s));
      }),
      { numRuns: 300 },
    );
  });

  it('encode equals js-tiktoken where their regexes agree (no U+0085, U+FEFF)', () => {
    const tiktoken = getEncoding('gpt2');
    fc.assert(
      fc.property(texts.filter((s) => !/[\u0085\ufeff]/.test(s)), (s) => {
        // Nothing allowed and nothing disallowed: js-tiktoken then encodes "<|endoftext|>" as
        // ordinary text, like ours without allowSpecial (its default would throw instead).
        expect(tok.encode(s)).toEqual(tiktoken.encode(s, [], []));
      }),
      { numRuns: 300 },
    );
  });

  it('allowSpecial splits exactly at <|endoftext|>', () => {
    fc.assert(
      fc.property(texts, texts, (a, b) => {
        fc.pre(!a.includes(EOT) && !b.includes(EOT));
        expect(tok.encode(a + EOT + b, { allowSpecial: true })).toEqual([...tok.encode(a), 50256, ...tok.encode(b)]);
      }),
    );
  });

  it('stream decode: concatenated pushes + flush === decode, for any ids', () => {
    // Ids 0..255 are single bytes, so random arrays of them are random (often invalid) UTF-8.
    const ids = fc.array(fc.oneof(fc.integer({ min: 0, max: 255 }), fc.integer({ min: 0, max: 50256 })), { maxLength: 40 });
    fc.assert(
      fc.property(ids, (xs) => {
        const d = tok.createDecoder();
        let out = '';
        for (const id of xs) out += d.push(id);
        expect(out + d.flush()).toBe(tok.decode(xs));
      }),
      { numRuns: 1000 },
    );
  });

  it('stream decode never prints half a character of well-formed text', () => {
    fc.assert(
      fc.property(texts, (s) => {
        fc.pre(!s.includes('\ufffd'));
        const d = tok.createDecoder();
        for (const id of tok.encode(s)) {
          const piece = d.push(id);
          expect(piece).not.toContain('\ufffd');
          expect(piece).not.toMatch(/[\ud800-\udbff]$/);
        }
        expect(d.flush()).toBe('');
      }),
      { numRuns: 300 },
    );
  });

  // Long unbroken runs are single pieces: the heap path of merge.ts (pieces > 24 bytes), not the short loop.
  const runs = fc.oneof(
    fc.tuple(fc.constantFrom('a', '1', '!', ' ', 'é', '😀', 'ab', 'aab', '12', '!?', 'ไ', 'the'), fc.integer({ min: 1, max: 700 })).map(([u, k]) => u.repeat(k)),
    fc.string({ unit: fc.constantFrom('a', 'b', 'e', 'n', 't', 'h', 'r', 's'), minLength: 25, maxLength: 600 }),
    fc.string({ unit: fc.constantFrom('0', '1', '9'), minLength: 25, maxLength: 600 }),
    fc.string({ unit: fc.constantFrom('-', '=', '!', '.', '*'), minLength: 25, maxLength: 600 }),
  );

  it('long unbroken runs encode exactly as encoder.py does', () => {
    fc.assert(
      fc.property(runs, (s) => {
        expect(tok.encode(s)).toEqual(ref.encode(s));
      }),
      { numRuns: 200 },
    );
  });

  it('long unbroken runs encode as js-tiktoken does', () => {
    const tiktoken = getEncoding('gpt2');
    fc.assert(
      fc.property(runs, (s) => {
        expect(tok.encode(s)).toEqual(tiktoken.encode(s, [], []));
      }),
      { numRuns: 200 },
    );
  });
});

describe('tokenizer cost on hostile input', () => {
  // A complexity guard, not a speed assertion: the old merge loop took 38.8 s on 300 k digits and
  // minutes on 1 MiB, this one about 0.5 s (bench/tokenizer.ts prints the figures). The bound only
  // catches a return to quadratic cost.
  it.each(['a', '1', '!', ' '])('1 MiB of %j encodes in far less than quadratic time, and decodes back', (ch) => {
    const s = ch.repeat(1 << 20);
    const t0 = performance.now();
    const ids = tok.encode(s);
    expect(performance.now() - t0).toBeLessThan(15_000);
    expect(tok.decode(ids)).toBe(s);
    // Every piece of a long run is one of the longest merges; the count is a lower bound from maxTokenBytes.
    expect(ids.length).toBeGreaterThanOrEqual(Math.ceil(s.length / tok.maxTokenBytes));
  });
});
