/**
 * Stop strings and text release for one streamed completion. Decoded text arrives piece by piece;
 * what may begin a stop string is held back until it cannot, and at the first stop the text is cut
 * (the stop and everything after it are never shown).
 */
import { GPT2Error } from '../errors';

/** The `stop` option as a list; each must be a non-empty string. */
export function stopList(stop: string | string[] | undefined): string[] {
  const stops = stop === undefined ? [] : Array.isArray(stop) ? stop : [stop];
  if (!stops.every((s) => typeof s === 'string' && s.length > 0)) throw new GPT2Error('BAD_OPTION', 'stop must be a non-empty string or an array of them');
  return stops;
}

/** Longest suffix of `text` that is a proper prefix of some stop string (text to hold back). */
export function partialStop(text: string, stops: readonly string[]): number {
  let best = 0;
  for (const s of stops) {
    for (let n = Math.min(s.length - 1, text.length); n > best; n--) {
      if (text.endsWith(s.slice(0, n))) {
        best = n;
        break;
      }
    }
  }
  return best;
}

/** The completion text so far, the part already shown, and whether a stop string has ended it. */
export class StopText {
  private full = ''; // decoded completion text so far (cut at the stop once one matched)
  private emitted = 0; // chars of `full` already handed out
  private readonly longest: number;
  private matched = false;

  constructor(private readonly stops: readonly string[]) {
    this.longest = Math.max(0, ...stops.map((s) => s.length));
  }

  /** The completion text: everything pushed, cut before the first stop string. */
  get text(): string {
    return this.full;
  }

  /** True once a stop string has matched; later pushes are ignored. */
  get stopped(): boolean {
    return this.matched;
  }

  /** Appends decoded text and returns what may be shown now. */
  push(piece: string): string {
    if (this.matched) return '';
    this.full += piece;
    if (!this.stops.length) return this.release(this.full.length);
    // A stop can only begin in text not yet shown, or at most a stop's length before it.
    const from = Math.max(0, this.emitted - this.longest);
    let at = -1;
    for (const s of this.stops) {
      const i = this.full.indexOf(s, from);
      if (i >= 0 && (at < 0 || i < at)) at = i;
    }
    if (at >= 0) {
      this.full = this.full.slice(0, at);
      this.matched = true;
      return this.release(this.full.length);
    }
    return this.release(this.full.length - partialStop(this.full, this.stops));
  }

  /** Releases whatever is held back (generation has ended without completing a stop string). */
  flush(): string {
    return this.release(this.full.length);
  }

  private release(upTo: number): string {
    if (upTo <= this.emitted) return '';
    const s = this.full.slice(this.emitted, upTo);
    this.emitted = upTo;
    return s;
  }
}
