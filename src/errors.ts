/**
 * Every error the library throws on purpose is a GPT2Error with a stable `code`, so callers can
 * branch on the kind of failure without parsing messages. Messages say what was wrong and what to do.
 */
export type GPT2ErrorCode =
  | 'BAD_SAFETENSORS'
  | 'BAD_CONFIG'
  | 'BAD_WEIGHTS'
  | 'MISSING_FILE'
  | 'BAD_TOKENIZER'
  | 'BAD_INPUT'
  | 'BAD_OPTION'
  | 'CONTEXT_OVERFLOW'
  | 'QUEUE_FULL'
  | 'BACKEND_UNAVAILABLE'
  | 'NETWORK'
  | 'TOO_LARGE'
  | 'NON_FINITE'
  | 'ABORTED'
  | 'DISPOSED';

export class GPT2Error extends Error {
  readonly code: GPT2ErrorCode;
  constructor(code: GPT2ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message);
    this.name = 'GPT2Error';
    this.code = code;
    if (options && 'cause' in options) (this as { cause?: unknown }).cause = options.cause;
  }
}

export function isGPT2Error(e: unknown, code?: GPT2ErrorCode): e is GPT2Error {
  return e instanceof GPT2Error && (code === undefined || e.code === code);
}
