/**
 * Reconnect decisions: full-jitter exponential backoff and the server's advice.
 *
 * Pure functions, so the policy is testable without a socket.
 */
export const DEFAULT_BASE_MS = 500;
export const DEFAULT_CAP_MS = 30000;
/**
 * Full jitter (AWS architecture blog, "Exponential Backoff And Jitter"): a uniformly random
 * delay in [0, min(cap, base * 2^attempt)).
 */
export function fullJitter(attempt, options = {}, random = Math.random) {
    const base = options.baseMs ?? DEFAULT_BASE_MS;
    const cap = options.capMs ?? DEFAULT_CAP_MS;
    const ceiling = Math.min(cap, base * 2 ** Math.min(attempt, 30));
    return Math.floor(random() * ceiling);
}
/**
 * The advice a close implies when no `error` envelope gave one: a close without a frame (1006),
 * going away (1001), internal error (1011), service restart (1012) and try again later (1013)
 * are retried with backoff; any other code (1008 policy, 1002, 1007, 1009, 1000) is final.
 */
export function adviceForCode(code) {
    return [1001, 1006, 1011, 1012, 1013].includes(code) ? "backoff" : "never";
}
/**
 * The decision after a close: `attempt` counts the reconnects since the last successful
 * authentication (0 for the first).
 */
export function decide(close, attempt, options = {}, random = Math.random) {
    const advice = close.advice ?? adviceForCode(close.code);
    if (advice === "never")
        return { action: "stop" };
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
