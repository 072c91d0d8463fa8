/**
 * Reconnect decisions: full-jitter exponential backoff and the server's advice.
 *
 * Pure functions, so the policy is testable without a socket.
 */

/** What the server advises in the `reconnect` field of the `error` envelope before a close. */
export type Advice = "now" | "backoff" | "after_refresh" | "never";

/** Backoff settings (milliseconds). */
export interface BackoffOptions {
  /** The first delay's upper bound. Default 500. */
  baseMs?: number;
  /** The largest delay. Default 30 000. */
  capMs?: number;
}

export const DEFAULT_BASE_MS = 500;
export const DEFAULT_CAP_MS = 30_000;

/**
 * Full jitter (AWS architecture blog, "Exponential Backoff And Jitter"): a uniformly random
 * delay in [0, min(cap, base * 2^attempt)).
 */
export function fullJitter(
  attempt: number,
  options: BackoffOptions = {},
  random: () => number = Math.random,
): number {
  const base = options.baseMs ?? DEFAULT_BASE_MS;
  const cap = options.capMs ?? DEFAULT_CAP_MS;
  const ceiling = Math.min(cap, base * 2 ** Math.min(attempt, 30));
  return Math.floor(random() * ceiling);
}

/** What ended a connection, as far as the client knows. */
export interface CloseInfo {
  /** The close code (1006 when the connection dropped without a close frame). */
  code: number;
  /** The advice of the `error` envelope before the close, if one came. */
  advice?: Advice;
  /** The envelope's `retry_after_ms`, if any. */
  retryAfterMs?: number;
}

/** What to do after a close. */
export type Decision =
  | { action: "stop" }
  | { action: "retry"; delayMs: number; refreshToken: boolean };

/**
 * The advice a close implies when no `error` envelope gave one: a close without a frame (1006),
 * going away (1001), internal error (1011), service restart (1012) and try again later (1013)
 * are retried with backoff; any other code (1008 policy, 1002, 1007, 1009, 1000) is final.
 */
export function adviceForCode(code: number): Advice {
  return [1001, 1006, 1011, 1012, 1013].includes(code) ? "backoff" : "never";
}

/**
 * The decision after a close: `attempt` counts the reconnects since the last successful
 * authentication (0 for the first).
 */
export function decide(
  close: CloseInfo,
  attempt: number,
  options: BackoffOptions = {},
  random: () => number = Math.random,
): Decision {
  const advice = close.advice ?? adviceForCode(close.code);
  if (advice === "never") return { action: "stop" };
  const floor = Math.max(0, close.retryAfterMs ?? 0);
  // "now" and "after_refresh" go at once the first time; a repeat backs off like any other.
  const immediate = (advice === "now" || advice === "after_refresh") && attempt === 0;
  const jitter = immediate ? 0 : fullJitter(attempt, options, random);
  return {
    action: "retry",
    delayMs: Math.max(floor, jitter),
    refreshToken: advice === "after_refresh",
  };
}
