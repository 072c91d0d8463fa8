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
export declare const DEFAULT_BASE_MS = 500;
export declare const DEFAULT_CAP_MS = 30000;
/**
 * Full jitter (AWS architecture blog, "Exponential Backoff And Jitter"): a uniformly random
 * delay in [0, min(cap, base * 2^attempt)).
 */
export declare function fullJitter(attempt: number, options?: BackoffOptions, random?: () => number): number;
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
export type Decision = {
    action: "stop";
} | {
    action: "retry";
    delayMs: number;
    refreshToken: boolean;
};
/**
 * The advice a close implies when no `error` envelope gave one: a close without a frame (1006),
 * going away (1001), internal error (1011), service restart (1012) and try again later (1013)
 * are retried with backoff; any other code (1008 policy, 1002, 1007, 1009, 1000) is final.
 */
export declare function adviceForCode(code: number): Advice;
/**
 * The decision after a close: `attempt` counts the reconnects since the last successful
 * authentication (0 for the first).
 */
export declare function decide(close: CloseInfo, attempt: number, options?: BackoffOptions, random?: () => number): Decision;
