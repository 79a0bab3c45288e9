// Types of the `edgeward` package: the addon's generated ones (../index.d.ts) and the
// middleware's.
import type { IncomingMessage, ServerResponse } from 'node:http'

import type { Decision, Engine } from '../index'

export * from '../index'

/** Options of `guard` and `wrap`. */
export interface GuardOptions {
  /** The engine; the embedded default policy's when absent. */
  engine?: Engine
  /** The most request body bytes read; a larger request is answered 413 (default 1 MiB). */
  maxBody?: number
  /** The most of a JSON response kept to read its usage from (default 1 MiB). */
  maxResponse?: number
  /** A caller the host has already verified (mTLS, a session), or null. */
  identity?: (req: IncomingMessage) => string | null | undefined
  /** The id that fills the refusal template's `{request_id}`. */
  requestId?: (req: IncomingMessage) => string | null | undefined
  /** Where settlement problems are reported (default `console`). */
  log?: { info?: (msg: string) => void; warn?: (msg: string) => void; error?: (...args: unknown[]) => void }
}

/** A request the guard let through: the forwarded body and the decision. */
export interface GuardedRequest extends IncomingMessage {
  body: Buffer
  edgeward: Decision
}

/** A connect/Express middleware; mount it before any body parser. */
export declare function guard(
  options?: GuardOptions,
): (req: IncomingMessage, res: ServerResponse, next: (err?: unknown) => void) => void

/** A `node:http` request listener that guards `handler`. */
export declare function wrap(
  handler: (req: GuardedRequest, res: ServerResponse) => unknown,
  options?: GuardOptions,
): (req: IncomingMessage, res: ServerResponse) => void
