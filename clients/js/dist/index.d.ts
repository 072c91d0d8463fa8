/**
 * `palisade-client`: the official client of Palisade's `palisade.v1` subprotocol, for browsers
 * and Node.js (docs/clients.md).
 *
 * ```js
 * import { PalisadeClient } from "palisade-client";
 * const c = new PalisadeClient("wss://chat.example.com/", { getToken: async () => fetchJwt() });
 * c.on("message", (data) => console.log(data));
 * c.on("state", (state) => console.log(state));
 * c.on("error", (err) => console.warn(err.reason, err.reconnect));
 * c.send({ text: "hello" });
 * ```
 *
 * It authenticates, refreshes the token on `expiring`, and reconnects with full-jitter
 * exponential backoff as the server advises (`now`, `backoff`, `after_refresh`, `never`).
 */
import { type Advice, type BackoffOptions, type CloseInfo, type Decision, adviceForCode, decide, fullJitter } from "./backoff.js";
export { type Advice, type BackoffOptions, type CloseInfo, type Decision };
export { adviceForCode, decide, fullJitter };
/** The subprotocol the client negotiates. */
export declare const PROTOCOL = "palisade.v1";
/** Why the client asks for a token. */
export type TokenReason = "connect" | "refresh" | "after_refresh";
/** The client's life cycle. */
export type State = 
/** Getting a token and opening the socket. */
"connecting"
/** The socket is open; waiting for `authenticated`. */
 | "authenticating"
/** Authenticated: `send` delivers at once. */
 | "open"
/** Waiting for the backoff delay (or for the browser to come online) before reconnecting. */
 | "reconnecting"
/** Finished: closed by `close()`, or the server advised `never`. Final. */
 | "closed";
/** The minimal WHATWG `WebSocket` the client needs (browsers, Node 22+, the `ws` package). */
export interface WebSocketLike {
    readonly readyState: number;
    readonly protocol: string;
    send(data: string): void;
    close(code?: number, reason?: string): void;
    onopen: ((ev: unknown) => void) | null;
    onmessage: ((ev: {
        data: unknown;
    }) => void) | null;
    onclose: ((ev: {
        code: number;
        reason: string;
    }) => void) | null;
    onerror: ((ev: unknown) => void) | null;
}
/** A `WebSocket` constructor. */
export type WebSocketConstructor = new (url: string, protocols: string | string[]) => WebSocketLike;
/** The session the server started (`authenticated` envelope). */
export interface Session {
    sessionId: string;
    userId: string;
    /** The token's `exp` (Unix seconds), or `null`. */
    exp: number | null;
}
/** Options of [[PalisadeClient]]. */
export interface PalisadeClientOptions {
    /** Returns a JWT: called before every connect and on every `expiring`. */
    getToken: (reason: TokenReason) => string | Promise<string>;
    /** The `WebSocket` constructor; default `globalThis.WebSocket`. */
    WebSocket?: WebSocketConstructor;
    /** Backoff between reconnects (full jitter). */
    backoff?: BackoffOptions;
    /**
     * Messages `send` keeps while not connected, sent in order after the next authentication.
     * Default 0: `send` while not connected throws `not_connected`. A full queue throws
     * `queue_full`; `close()` and a `never` close drop the queue.
     */
    queueSize?: number;
    /** Longest wait from opening the socket to `authenticated`; default 10 000 ms. */
    authTimeoutMs?: number;
    /** Reconnect after retryable closes; default `true`. */
    reconnect?: boolean;
    /** Random numbers in [0, 1), for the jitter; default `Math.random`. */
    random?: () => number;
}
/**
 * A failure the application should know of. `fatal` errors end the client (state `closed`);
 * the others are reported while the client recovers.
 */
export declare class PalisadeError extends Error {
    /** The server's `reason` (e.g. `token_expired`), or the client's: `not_connected`,
     * `queue_full`, `token_provider_failed`, `auth_timeout`, `connection_lost`, `bad_frame`. */
    readonly reason: string;
    /** The server's advice, for errors before a close. */
    readonly reconnect: Advice | undefined;
    /** The server's `retry_after_ms`, if given. */
    readonly retryAfterMs: number | undefined;
    /** The close code, for errors about a close. */
    readonly code: number | undefined;
    /** Whether the client has stopped for good. */
    readonly fatal: boolean;
    constructor(reason: string, message: string, extra?: {
        reconnect?: Advice;
        retryAfterMs?: number;
        code?: number;
        fatal?: boolean;
    });
}
type Events = {
    message: (data: unknown) => void;
    state: (state: State, previous: State) => void;
    error: (error: PalisadeError) => void;
};
/** One `palisade.v1` connection that survives token expiry, restarts and network loss. */
export declare class PalisadeClient {
    readonly url: string;
    private readonly options;
    private readonly Ctor;
    private ws;
    private currentState;
    private attempt;
    private timer;
    private authTimer;
    /** The error envelope that came before the coming close. */
    private lastError;
    private queue;
    private listeners;
    private waitingForOnline;
    private readonly onOnline;
    private session;
    /** Bumped on every connect, so callbacks of an older socket are ignored. */
    private generation;
    constructor(url: string, options: PalisadeClientOptions);
    /** The client's state. */
    get state(): State;
    /** The current session, while `open`. */
    get currentSession(): Session | null;
    /** Messages waiting in the queue. */
    get queued(): number;
    /** Adds a listener; returns a function that removes it. */
    on<K extends keyof Events>(event: K, listener: Events[K]): () => void;
    /**
     * Sends `data` (any JSON value) in a `message` envelope. While not connected it is queued
     * when `queueSize` allows, else this throws a [[PalisadeError]] (`not_connected`,
     * `queue_full`, or `closed` after `close()`).
     */
    send(data: unknown): void;
    /** Closes the connection (1000) and stops reconnecting. Final. */
    close(): void;
    /** Resolves when the state is `state` (rejects on `closed` when waiting for another). */
    waitFor(state: State, timeoutMs?: number): Promise<void>;
    private emit;
    private setState;
    private isClosed;
    private finish;
    private clearTimers;
    private connect;
    private frame;
    private refresh;
    private closed;
    private pendingReason;
    private online;
}
