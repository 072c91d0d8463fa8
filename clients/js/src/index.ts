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

import {
  type Advice,
  type BackoffOptions,
  type CloseInfo,
  type Decision,
  adviceForCode,
  decide,
  fullJitter,
} from "./backoff.js";

export { type Advice, type BackoffOptions, type CloseInfo, type Decision };
export { adviceForCode, decide, fullJitter };

/** The subprotocol the client negotiates. */
export const PROTOCOL = "palisade.v1";

/** Why the client asks for a token. */
export type TokenReason = "connect" | "refresh" | "after_refresh";

/** The client's life cycle. */
export type State =
  /** Getting a token and opening the socket. */
  | "connecting"
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
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
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
export class PalisadeError extends Error {
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

  constructor(
    reason: string,
    message: string,
    extra: { reconnect?: Advice; retryAfterMs?: number; code?: number; fatal?: boolean } = {},
  ) {
    super(message);
    this.name = "PalisadeError";
    this.reason = reason;
    this.reconnect = extra.reconnect;
    this.retryAfterMs = extra.retryAfterMs;
    this.code = extra.code;
    this.fatal = extra.fatal ?? false;
  }
}

type Events = {
  message: (data: unknown) => void;
  state: (state: State, previous: State) => void;
  error: (error: PalisadeError) => void;
};

const ADVICE: readonly string[] = ["now", "backoff", "after_refresh", "never"];

/** One `palisade.v1` connection that survives token expiry, restarts and network loss. */
export class PalisadeClient {
  readonly url: string;
  private readonly options: PalisadeClientOptions;
  private readonly Ctor: WebSocketConstructor;
  private ws: WebSocketLike | null = null;
  private currentState: State = "connecting";
  private attempt = 0;
  private timer: ReturnType<typeof setTimeout> | null = null;
  private authTimer: ReturnType<typeof setTimeout> | null = null;
  /** The error envelope that came before the coming close. */
  private lastError: PalisadeError | null = null;
  private queue: unknown[] = [];
  private listeners: { [K in keyof Events]: Set<Events[K]> } = {
    message: new Set(),
    state: new Set(),
    error: new Set(),
  };
  private waitingForOnline = false;
  private readonly onOnline = () => this.online();
  private session: Session | null = null;
  /** Bumped on every connect, so callbacks of an older socket are ignored. */
  private generation = 0;

  constructor(url: string, options: PalisadeClientOptions) {
    this.url = url;
    this.options = options;
    const ctor = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (!ctor) {
      throw new TypeError(
        "no WebSocket: pass options.WebSocket (Node < 22: the `ws` package, or run node with --experimental-websocket)",
      );
    }
    this.Ctor = ctor;
    const g = globalThis as { addEventListener?: (type: string, fn: () => void) => void };
    g.addEventListener?.("online", this.onOnline);
    queueMicrotask(() => void this.connect("connect"));
  }

  /** The client's state. */
  get state(): State {
    return this.currentState;
  }

  /** The current session, while `open`. */
  get currentSession(): Session | null {
    return this.currentState === "open" ? this.session : null;
  }

  /** Messages waiting in the queue. */
  get queued(): number {
    return this.queue.length;
  }

  /** Adds a listener; returns a function that removes it. */
  on<K extends keyof Events>(event: K, listener: Events[K]): () => void {
    this.listeners[event].add(listener);
    return () => this.listeners[event].delete(listener);
  }

  /**
   * Sends `data` (any JSON value) in a `message` envelope. While not connected it is queued
   * when `queueSize` allows, else this throws a [[PalisadeError]] (`not_connected`,
   * `queue_full`, or `closed` after `close()`).
   */
  send(data: unknown): void {
    if (this.currentState === "open" && this.ws) {
      this.ws.send(JSON.stringify({ type: "message", data }));
      return;
    }
    if (this.currentState === "closed") {
      throw new PalisadeError("closed", "the client is closed");
    }
    const max = this.options.queueSize ?? 0;
    if (max <= 0) throw new PalisadeError("not_connected", "not connected (queueSize is 0)");
    if (this.queue.length >= max) {
      throw new PalisadeError("queue_full", `the send queue holds its ${max} messages`);
    }
    this.queue.push(data);
  }

  /** Closes the connection (1000) and stops reconnecting. Final. */
  close(): void {
    this.queue = [];
    this.finish();
    const ws = this.ws;
    this.ws = null;
    if (ws && ws.readyState <= 1) ws.close(1000, "client closed");
  }

  /** Resolves when the state is `state` (rejects on `closed` when waiting for another). */
  waitFor(state: State, timeoutMs = 30_000): Promise<void> {
    if (this.currentState === state) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => {
        off();
        reject(new PalisadeError("timeout", `state ${state} not reached in ${timeoutMs} ms`));
      }, timeoutMs);
      const off = this.on("state", (s) => {
        if (s === state) {
          clearTimeout(t);
          off();
          resolve();
        } else if (s === "closed") {
          clearTimeout(t);
          off();
          reject(new PalisadeError("closed", "the client closed"));
        }
      });
    });
  }

  // ---- internals ----

  private emit<K extends keyof Events>(event: K, ...args: Parameters<Events[K]>): void {
    for (const fn of [...this.listeners[event]]) {
      try {
        (fn as (...a: Parameters<Events[K]>) => void)(...args);
      } catch (e) {
        // A listener's bug must not break the connection; surface it asynchronously.
        setTimeout(() => {
          throw e;
        }, 0);
      }
    }
  }

  private setState(next: State): void {
    const prev = this.currentState;
    if (prev === next) return;
    this.currentState = next;
    this.emit("state", next, prev);
  }

  private isClosed(): boolean {
    return this.currentState === "closed";
  }

  private finish(): void {
    this.clearTimers();
    this.setState("closed");
    const g = globalThis as { removeEventListener?: (type: string, fn: () => void) => void };
    g.removeEventListener?.("online", this.onOnline);
  }

  private clearTimers(): void {
    if (this.timer) clearTimeout(this.timer);
    if (this.authTimer) clearTimeout(this.authTimer);
    this.timer = this.authTimer = null;
  }

  private async connect(reason: TokenReason): Promise<void> {
    if (this.currentState === "closed") return;
    const generation = ++this.generation;
    this.setState("connecting");
    this.lastError = null;
    let token: string;
    try {
      token = await this.options.getToken(reason);
    } catch (e) {
      if (generation !== this.generation || this.isClosed()) return;
      this.emit("error", new PalisadeError("token_provider_failed", `getToken failed: ${e}`));
      return this.closed(generation, { code: 1006, advice: "backoff" });
    }
    if (generation !== this.generation || this.isClosed()) return;
    let ws: WebSocketLike;
    try {
      ws = new this.Ctor(this.url, PROTOCOL);
    } catch (e) {
      this.emit("error", new PalisadeError("bad_url", `cannot open ${this.url}: ${e}`, { fatal: true }));
      this.finish();
      return;
    }
    this.ws = ws;
    ws.onopen = () => {
      if (generation !== this.generation) return;
      if (ws.protocol !== PROTOCOL) {
        this.lastError = new PalisadeError(
          "no_subprotocol",
          `the server did not select ${PROTOCOL} (subprotocol.enabled = false?)`,
          { reconnect: "never" },
        );
        ws.close(1000);
        return;
      }
      this.setState("authenticating");
      ws.send(JSON.stringify({ type: "auth", token }));
    };
    ws.onmessage = (ev) => {
      if (generation === this.generation) this.frame(ws, ev.data);
    };
    ws.onerror = () => {
      // Always followed by onclose, which decides.
    };
    ws.onclose = (ev) => {
      if (generation !== this.generation || this.ws !== ws) return;
      this.ws = null;
      const err = this.lastError;
      this.closed(generation, {
        code: ev.code,
        advice: err?.reconnect,
        retryAfterMs: err?.retryAfterMs,
      });
    };
    const limit = this.options.authTimeoutMs ?? 10_000;
    this.authTimer = setTimeout(() => {
      if (generation !== this.generation || this.currentState === "open") return;
      this.emit("error", new PalisadeError("auth_timeout", `not authenticated within ${limit} ms`));
      this.lastError = new PalisadeError("auth_timeout", "timeout", { reconnect: "backoff" });
      ws.close(1000);
      // A socket that never opened may not report its close soon: decide now.
      if (this.ws === ws) {
        this.ws = null;
        this.closed(generation, { code: 1006, advice: "backoff" });
      }
    }, limit);
  }

  private frame(ws: WebSocketLike, raw: unknown): void {
    let env: Record<string, unknown>;
    try {
      env = JSON.parse(String(raw));
      if (typeof env !== "object" || env === null) throw new Error("not an object");
    } catch {
      // Binary application data arrives unwrapped.
      if (typeof raw !== "string") this.emit("message", raw);
      else this.emit("error", new PalisadeError("bad_frame", "the server sent a frame that is not an envelope"));
      return;
    }
    switch (env.type) {
      case "authenticated": {
        if (this.authTimer) clearTimeout(this.authTimer);
        this.authTimer = null;
        this.attempt = 0;
        this.session = {
          sessionId: String(env.session_id),
          userId: String(env.user_id),
          exp: typeof env.exp === "number" ? env.exp : null,
        };
        this.setState("open");
        const queued = this.queue;
        this.queue = [];
        for (const data of queued) ws.send(JSON.stringify({ type: "message", data }));
        break;
      }
      case "message":
        this.emit("message", env.data);
        break;
      case "expiring":
        void this.refresh(ws);
        break;
      case "refreshed":
        if (this.session) this.session.exp = typeof env.exp === "number" ? env.exp : null;
        break;
      case "error": {
        const reconnect =
          typeof env.reconnect === "string" && ADVICE.includes(env.reconnect)
            ? (env.reconnect as Advice)
            : undefined;
        const retryAfterMs = typeof env.retry_after_ms === "number" ? env.retry_after_ms : undefined;
        const err = new PalisadeError(String(env.reason), String(env.detail ?? env.reason), {
          reconnect,
          retryAfterMs,
          fatal: reconnect === "never",
        });
        if (reconnect) this.lastError = err;
        else this.emit("error", err); // Not followed by a close: a refused refresh, a bad envelope.
        break;
      }
      default:
      // Unknown envelopes are ignored (forward compatibility).
    }
  }

  private async refresh(ws: WebSocketLike): Promise<void> {
    try {
      const token = await this.options.getToken("refresh");
      if (this.ws === ws && ws.readyState === 1) ws.send(JSON.stringify({ type: "refresh", token }));
    } catch (e) {
      this.emit("error", new PalisadeError("token_provider_failed", `getToken failed: ${e}`));
    }
  }

  private closed(generation: number, close: CloseInfo): void {
    if (generation !== this.generation || this.isClosed()) return;
    this.clearTimers();
    const err = this.lastError;
    this.lastError = null;
    const decision: Decision =
      this.options.reconnect === false
        ? { action: "stop" }
        : decide(close, this.attempt, this.options.backoff, this.options.random);
    if (decision.action === "stop") {
      this.queue = [];
      this.emit(
        "error",
        new PalisadeError(err?.reason ?? "connection_lost", err?.message ?? `closed with ${close.code}`, {
          reconnect: close.advice ?? adviceForCode(close.code),
          retryAfterMs: close.retryAfterMs,
          code: close.code,
          fatal: true,
        }),
      );
      this.finish();
      return;
    }
    if (err) this.emit("error", new PalisadeError(err.reason, err.message, { reconnect: err.reconnect, retryAfterMs: err.retryAfterMs, code: close.code }));
    this.attempt += 1;
    this.setState("reconnecting");
    const reason: TokenReason = decision.refreshToken ? "after_refresh" : "connect";
    const nav = (globalThis as { navigator?: { onLine?: boolean } }).navigator;
    if (nav && nav.onLine === false) {
      // Offline in a browser: wait for the `online` event instead of spinning.
      this.waitingForOnline = true;
      this.pendingReason = reason;
      return;
    }
    this.timer = setTimeout(() => void this.connect(reason), decision.delayMs);
  }

  private pendingReason: TokenReason = "connect";

  private online(): void {
    if (!this.waitingForOnline || this.currentState !== "reconnecting") return;
    this.waitingForOnline = false;
    void this.connect(this.pendingReason);
  }
}
