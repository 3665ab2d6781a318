/** Path checks for file names that come from untrusted input (index files, manifests, options). */

/**
 * True for a non-empty relative path that stays inside its folder: no leading `/` or `\`, no drive
 * letter, no `..` segment (either separator). Names that merely contain dots, like
 * `a..b.safetensors`, are fine.
 */
export function isSafeRelativePath(p: unknown): p is string {
  return typeof p === 'string' && p !== '' && !/^[\\/]/.test(p) && !/^[A-Za-z]:/.test(p) && !p.includes('\0') && !p.split(/[\\/]/).includes('..');
}
