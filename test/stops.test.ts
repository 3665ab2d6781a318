/** Stop strings and text release (src/generate/stops.ts), alone: examples and a property against a naive model. */
import fc from 'fast-check';
import { StopText, partialStop, stopList } from '../src/generate/stops';

/** Pushes `pieces`; returns everything shown (the flush included unless a stop ended it) and the final state. */
function run(stops: string[], pieces: string[]): { shown: string[]; text: string; stopped: boolean } {
  const st = new StopText(stops);
  const shown = pieces.map((p) => st.push(p));
  if (!st.stopped) shown.push(st.flush());
  return { shown, text: st.text, stopped: st.stopped };
}

test('stopList: one string or a list, each non-empty', () => {
  expect(stopList(undefined)).toEqual([]);
  expect(stopList('\n')).toEqual(['\n']);
  expect(stopList(['a', 'bc'])).toEqual(['a', 'bc']);
  for (const bad of [[''], '', [1 as unknown as string]]) {
    expect(() => stopList(bad)).toThrow(expect.objectContaining({ code: 'BAD_OPTION', message: expect.stringContaining('stop') }));
  }
});

test('partialStop: the longest suffix that begins a stop string', () => {
  expect(partialStop('hello wo', ['world'])).toBe(2);
  expect(partialStop('xab', ['abc', 'bcd'])).toBe(2);
  expect(partialStop('abc', ['x'])).toBe(0);
  expect(partialStop('ab', ['b'])).toBe(0); // a whole stop is a match, not a partial one
  expect(partialStop('', ['abc'])).toBe(0);
});

test('without stops every piece is shown at once', () => {
  expect(run([], ['ab', '', 'c'])).toEqual({ shown: ['ab', '', 'c', ''], text: 'abc', stopped: false });
});

test('text that may begin a stop is held back, then released or cut', () => {
  expect(run(['world'], ['hello w', 'or', 'ld!'])).toEqual({ shown: ['hello ', '', ''], text: 'hello ', stopped: true });
  expect(run(['world'], ['hello w', 'ow'])).toEqual({ shown: ['hello ', 'wo', 'w'], text: 'hello wow', stopped: false });
  // The earliest stop wins when one piece completes several.
  expect(run(['cd', 'bc'], ['abcd'])).toEqual({ shown: ['a'], text: 'a', stopped: true });
  // A stop that starts inside held-back text that itself began a false match.
  expect(run(['abcabd'], ['abcab', 'cabd'])).toEqual({ shown: ['', 'abc'], text: 'abc', stopped: true });
});

test('after a stop, later pieces are ignored', () => {
  const st = new StopText(['.']);
  expect(st.push('Hi. There')).toBe('Hi');
  expect(st.push(' more')).toBe('');
  expect(st.flush()).toBe('');
  expect(st.text).toBe('Hi');
});

test('equals a naive model that searches the whole text after every piece', () => {
  const str = (max: number) => fc.string({ unit: fc.constantFrom('a', 'b', ' '), maxLength: max });
  fc.assert(fc.property(fc.array(str(4).filter((s) => s.length > 0), { minLength: 1, maxLength: 3 }), fc.array(str(5), { maxLength: 8 }), (stops, pieces) => {
    let text = '';
    let stopped = false;
    for (const p of pieces) {
      text += p;
      const hits = stops.map((s) => text.indexOf(s)).filter((i) => i >= 0);
      if (hits.length) {
        text = text.slice(0, Math.min(...hits));
        stopped = true;
        break;
      }
    }
    const r = run(stops, pieces);
    expect(r.stopped).toBe(stopped);
    expect(r.text).toBe(text);
    expect(r.shown.join('')).toBe(text); // everything shown, nothing shown that was later cut
  }));
});
