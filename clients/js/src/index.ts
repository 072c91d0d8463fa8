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
 * const sub = c.subscribe("chat:room1", { onPublication: (p) => console.log(p.offset, p.data) });
 * await sub.ready;
 * await c.publish("chat:room1", { text: "hi all" });
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
   * Messages `send` keeps while not connected, sent in order after the next authentication
   * (after the resubscriptions); channel requests (`publish`, `presence`, `history`) wait in
   * the same queue. Default 0: `send` while not connected throws `not_connected` (and channel
   * requests reject with it). A full queue throws `queue_full`; `close()` and a `never` close
   * drop the queue.
   */
  queueSize?: number;
  /** Longest wait from opening the socket to `authenticated`; default 10 000 ms. */
  authTimeoutMs?: number;
  /** Reconnect after retryable closes; default `true`. */
  reconnect?: boolean;
  /** Random numbers in [0, 1), for the jitter; default `Math.random`. */
  random?: () => number;
  /**
   * Longest wait for the reply to a channel request (`subscribe`, `publish`, `presence`,
   * `history`, `unsubscribe`); default 10 000 ms. A request queued while disconnected counts
   * from the call; a subscribe from when it is sent.
   */
  requestTimeoutMs?: number;
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

/** Why a channel request failed: the server's `error` reasons and the client's own. */
export type ChannelErrorReason =
  // The server's (docs/subprotocol.md#channels).
  | "permission_denied"
  | "bad_channel"
  | "too_many_subscriptions"
  | "rate_limited"
  | "message_too_big"
  | "unavailable"
  | "bad_envelope"
  // The client's.
  /** No reply within the request timeout. */
  | "timeout"
  /** Not connected and no room in the opt-in queue (`queueSize` 0). */
  | "not_connected"
  /** Not connected and the opt-in queue is full. */
  | "queue_full"
  /** The connection closed before the reply came: the request may or may not have taken effect. */
  | "connection_lost"
  /** The client was closed (`close()` or the server advised `never`). */
  | "closed"
  /** `subscribe` to a channel this client already has a subscription to. */
  | "already_subscribed"
  /** The subscription was ended (`unsubscribe()`) before the server confirmed it. */
  | "unsubscribed";

/**
 * A refused or failed channel request (`subscribe`, `publish`, `presence`, `history`,
 * `unsubscribe`). `reason` is the server's or the client's ([[ChannelErrorReason]]); the
 * connection goes on either way.
 */
export class ChannelError extends PalisadeError {
  declare readonly reason: ChannelErrorReason | (string & {});
  /** The channel of the request. */
  readonly channel: string;
  /** The server's `detail`, or the client's explanation. */
  readonly detail: string;

  constructor(reason: ChannelErrorReason | (string & {}), channel: string, detail: string) {
    super(reason, `${channel}: ${reason}${detail && detail !== reason ? `: ${detail}` : ""}`);
    this.name = "ChannelError";
    this.channel = channel;
    this.detail = detail;
  }
}

/** A channel request waiting for its reply (or, queued, for the connection). */
interface Pending {
  channel: string;
  /** The reply's `type`. */
  expects: string;
  resolve: (env: Record<string, unknown>) => void;
  reject: (err: ChannelError) => void;
  timer: ReturnType<typeof setTimeout>;
  /** Sent on the current connection (else still in the queue). */
  sent: boolean;
}

/** What waits in the opt-in queue: `send` data, or a channel request. */
type Outgoing = { kind: "message"; data: unknown } | { kind: "request"; id: number; envelope: Record<string, unknown> };

const DEFAULT_REQUEST_TIMEOUT_MS = 10_000;

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
  private queue: Outgoing[] = [];
  /** Subscriptions by channel (ended ones are removed). */
  private subs = new Map<string, Subscription>();
  /** Subscribe requests in flight, by id. */
  private subscribing = new Map<number, Subscription>();
  /** Other channel requests, by id. */
  private pending = new Map<number, Pending>();
  private nextId = 1;
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
    this.queue.push({ kind: "message", data });
  }

  // ---- channels ----

  /**
   * Subscribes to `channel`. The returned [[Subscription]] is active once `ready` resolves
   * (it rejects with a [[ChannelError]]: `permission_denied`, `bad_channel`,
   * `too_many_subscriptions`, `timeout`, ...). While not connected the subscribe is sent after
   * the next authentication. After every reconnect the client subscribes again with `since`
   * (the last epoch and offset seen): recovered publications arrive through `onPublication`
   * in order, and `onGap` tells when some may have been missed (`recovered: false`).
   * Throws a [[ChannelError]] `already_subscribed`, or `closed` after `close()`.
   */
  subscribe(channel: string, options: SubscribeOptions): Subscription {
    if (this.isClosed()) throw new ChannelError("closed", channel, "the client is closed");
    if (this.subs.has(channel)) {
      throw new ChannelError("already_subscribed", channel, "this client already has a subscription to it");
    }
    const sub = new Subscription(channel, options, { unsubscribe: (s, o) => this.endSubscription(s, o) });
    this.subs.set(channel, sub);
    if (this.currentState === "open" && this.ws) this.sendSubscribe(this.ws, sub);
    return sub;
  }

  /** The subscription to `channel`, if any. */
  subscription(channel: string): Subscription | undefined {
    return this.subs.get(channel);
  }

  /** Ends the subscription to `channel` (see [[Subscription.unsubscribe]]); resolves at once without one. */
  unsubscribe(channel: string, options?: RequestOptions): Promise<void> {
    const sub = this.subs.get(channel);
    return sub ? sub.unsubscribe(options) : Promise.resolve();
  }

  /**
   * Publishes `data` (any JSON value) to `channel`; resolves with its offset. Rejects with a
   * [[ChannelError]]: the server's reason (`permission_denied`, `message_too_big`, ...),
   * `timeout`, `connection_lost` (it may or may not have been published), `not_connected` or
   * `queue_full` (see `queueSize`), `closed`.
   */
  async publish(channel: string, data: unknown, options?: RequestOptions): Promise<{ offset: number }> {
    const env = await this.request("publish", channel, { data }, "ok", options);
    return { offset: typeof env.offset === "number" ? env.offset : 0 };
  }

  /** The users subscribed to `channel` on the server, with their session counts. */
  async presence(channel: string, options?: RequestOptions): Promise<PresenceUser[]> {
    const env = await this.request("presence", channel, {}, "presence", options);
    const users = Array.isArray(env.users) ? (env.users as Record<string, unknown>[]) : [];
    return users.map((u) => ({ userId: String(u.user_id), sessions: Number(u.sessions) }));
  }

  /** The last publications the server holds for `channel`, oldest first (`unavailable` when
   * the server keeps no history). */
  async history(channel: string, options: RequestOptions & { limit?: number } = {}): Promise<History> {
    const fields = options.limit === undefined ? {} : { limit: options.limit };
    const env = await this.request("history", channel, fields, "history", options);
    const pubs = Array.isArray(env.publications) ? (env.publications as Record<string, unknown>[]) : [];
    return { channel, epoch: String(env.epoch), publications: pubs.map((p) => toPublication(channel, p)) };
  }

  /** Closes the connection (1000) and stops reconnecting. Final. */
  close(): void {
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
    this.queue = [];
    this.failChannels();
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
        if (this.ws !== ws) break; // A listener closed the client.
        for (const sub of this.subs.values()) if (sub.state === "subscribing") this.sendSubscribe(ws, sub);
        const queued = this.queue;
        this.queue = [];
        for (const item of queued) {
          if (item.kind === "message") {
            ws.send(JSON.stringify({ type: "message", data: item.data }));
          } else {
            const p = this.pending.get(item.id);
            if (!p) continue; // Timed out while queued.
            p.sent = true;
            ws.send(JSON.stringify(item.envelope));
          }
        }
        break;
      }
      case "message":
        this.emit("message", env.data);
        break;
      case "subscribed": {
        const sub = this.subs.get(String(env.channel));
        if (sub && sub.state !== "unsubscribed") {
          if (sub.requestId !== null) this.subscribing.delete(sub.requestId);
          sub.subscribed(env);
        }
        break;
      }
      case "publication":
        this.subs.get(String(env.channel))?.publication(env);
        break;
      case "unsubscribed": {
        if (typeof env.id === "number" && this.pending.get(env.id)?.expects === "unsubscribed") {
          this.reply(env.id, env);
        } else if (env.reason !== "client") {
          // Ended by the server: permission_revoked, channel_closed.
          const sub = this.subs.get(String(env.channel));
          if (sub) this.forget(sub, String(env.reason));
        }
        break;
      }
      case "ok":
      case "presence":
      case "history":
        if (typeof env.id === "number") this.reply(env.id, env);
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
        const answered = typeof env.id === "number" && this.refused(env.id, String(env.reason), String(env.detail ?? ""));
        if (reconnect) this.lastError = err;
        else if (!answered) this.emit("error", err); // Not followed by a close: a refused refresh, a bad envelope.
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
    this.connectionLost();
    const err = this.lastError;
    this.lastError = null;
    const decision: Decision =
      this.options.reconnect === false
        ? { action: "stop" }
        : decide(close, this.attempt, this.options.backoff, this.options.random);
    if (decision.action === "stop") {
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

  // ---- channel internals ----

  private timeout(options?: RequestOptions): number {
    return options?.timeoutMs ?? this.options.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS;
  }

  private sendSubscribe(ws: WebSocketLike, sub: Subscription): void {
    const id = this.nextId++;
    const since = sub.since;
    const envelope: Record<string, unknown> = { type: "subscribe", channel: sub.channel, id };
    if (since) envelope.since = since;
    sub.requestId = id;
    sub.sentSince = since;
    this.subscribing.set(id, sub);
    const ms = this.timeout({ timeoutMs: sub.timeoutMs });
    sub.timer = setTimeout(() => {
      this.subscribing.delete(id);
      const err = new ChannelError("timeout", sub.channel, `no reply to subscribe within ${ms} ms`);
      if (sub.failed(err)) this.dropSubscription(sub);
    }, ms);
    ws.send(JSON.stringify(envelope));
  }

  /** Removes an ended subscription; tells the server when it may still hold it. */
  private dropSubscription(sub: Subscription): void {
    if (this.subs.get(sub.channel) === sub) this.subs.delete(sub.channel);
    if (this.currentState === "open" && this.ws) {
      this.ws.send(JSON.stringify({ type: "unsubscribe", channel: sub.channel, id: this.nextId++ }));
    }
  }

  /** Ends `sub` locally (no message to the server). */
  private forget(sub: Subscription, reason: string): void {
    if (sub.requestId !== null) this.subscribing.delete(sub.requestId);
    if (this.subs.get(sub.channel) === sub) this.subs.delete(sub.channel);
    sub.end(reason);
  }

  private async endSubscription(sub: Subscription, options?: RequestOptions): Promise<void> {
    if (sub.state === "unsubscribed" || this.subs.get(sub.channel) !== sub) return;
    this.forget(sub, "client");
    if (this.currentState !== "open" || !this.ws) return; // The server forgot it with the connection.
    await this.request("unsubscribe", sub.channel, {}, "unsubscribed", options, false);
  }

  /** Sends (or queues) a request and resolves with the reply of type `expects`. */
  private request(
    type: string,
    channel: string,
    fields: Record<string, unknown>,
    expects: string,
    options?: RequestOptions,
    queueable = true,
  ): Promise<Record<string, unknown>> {
    return new Promise((resolve, reject) => {
      if (this.isClosed()) return reject(new ChannelError("closed", channel, "the client is closed"));
      const id = this.nextId++;
      const envelope = { type, channel, id, ...fields };
      const open = this.currentState === "open" && this.ws !== null;
      if (!open) {
        const max = this.options.queueSize ?? 0;
        if (!queueable || max <= 0) {
          return reject(new ChannelError("not_connected", channel, "not connected (queueSize is 0)"));
        }
        if (this.queue.length >= max) {
          return reject(new ChannelError("queue_full", channel, `the send queue holds its ${max} messages`));
        }
        this.queue.push({ kind: "request", id, envelope });
      }
      const ms = this.timeout(options);
      const timer = setTimeout(() => {
        this.pending.delete(id);
        this.queue = this.queue.filter((q) => !(q.kind === "request" && q.id === id));
        reject(new ChannelError("timeout", channel, `no reply to ${type} within ${ms} ms`));
      }, ms);
      this.pending.set(id, { channel, expects, resolve, reject, timer, sent: open });
      if (open) this.ws!.send(JSON.stringify(envelope));
    });
  }

  /** A reply to request `id`. */
  private reply(id: number, env: Record<string, unknown>): void {
    const p = this.pending.get(id);
    if (!p || p.expects !== env.type) return; // Late (timed out) or not ours.
    this.pending.delete(id);
    clearTimeout(p.timer);
    p.resolve(env);
  }

  /** An `error` with `id`; returns whether it answered one of our requests. */
  private refused(id: number, reason: string, detail: string): boolean {
    const p = this.pending.get(id);
    if (p) {
      this.pending.delete(id);
      clearTimeout(p.timer);
      p.reject(new ChannelError(reason, p.channel, detail));
      return true;
    }
    const sub = this.subscribing.get(id);
    if (sub) {
      this.subscribing.delete(id);
      if (sub.failed(new ChannelError(reason, sub.channel, detail))) this.forget(sub, reason);
      return true;
    }
    return false;
  }

  /** The connection is gone: sent requests cannot be answered; subscriptions wait to resubscribe. */
  private connectionLost(): void {
    for (const [id, p] of this.pending) {
      if (!p.sent) continue;
      this.pending.delete(id);
      clearTimeout(p.timer);
      p.reject(new ChannelError("connection_lost", p.channel, "the connection closed before the reply"));
    }
    this.subscribing.clear();
    for (const sub of this.subs.values()) sub.disconnected();
  }

  /** The client is closed: every request fails, every subscription ends. */
  private failChannels(): void {
    for (const p of this.pending.values()) {
      clearTimeout(p.timer);
      p.reject(new ChannelError("closed", p.channel, "the client is closed"));
    }
    this.pending.clear();
    this.subscribing.clear();
    const subs = [...this.subs.values()];
    this.subs.clear();
    for (const sub of subs) sub.end("closed");
  }

  private online(): void {
    if (!this.waitingForOnline || this.currentState !== "reconnecting") return;
    this.waitingForOnline = false;
    void this.connect(this.pendingReason);
  }
}

// ---- channels (docs/subprotocol.md#channels) ----
//
// The types of publications and replies, and the [[Subscription]] that
// [[PalisadeClient.subscribe]] returns. The client owns the socket; a subscription keeps the
// position it has seen (`epoch`, `offset`) so that the client can resubscribe with `since`
// after a reconnect, and tells the application about gaps.

/** A channel's position: offsets compare only within one epoch. */
export interface StreamPosition {
  epoch: string;
  offset: number;
}

/** One publication on a channel. */
export interface Publication {
  channel: string;
  /** 1 for the first publication of the epoch, then +1 each. */
  offset: number;
  data: unknown;
  /** Who published it; absent for a publication made by the server (admin API). */
  info?: { userId: string };
}

/** A `subscribed` reply: the subscription is active (again). */
export interface SubscribedInfo {
  channel: string;
  /** The channel's position when the subscription became active. */
  epoch: string;
  offset: number;
  /** `since` was sent and everything after it was delivered (before any live publication). */
  recovered: boolean;
  /** Whether this is a resubscription after a reconnect (or the first `subscribed`). */
  resubscribed: boolean;
}

/**
 * Publications may have been missed: a resubscription with `since` came back with
 * `recovered: false` (another epoch after a server restart, or more missed than the server's
 * history holds). Reload the channel's state another way (for example `history`, or your API).
 */
export interface Gap {
  channel: string;
  /** The last position the subscription had seen. */
  previous: StreamPosition;
  /** The channel's position now; live publications continue from here. */
  current: StreamPosition;
}

/** A user subscribed to a channel, with how many of their sessions are. */
export interface PresenceUser {
  userId: string;
  sessions: number;
}

/** The publications the server holds for a channel, oldest first. */
export interface History {
  channel: string;
  epoch: string;
  publications: Publication[];
}

/** Options of a single request. */
export interface RequestOptions {
  /** Overrides the client's `requestTimeoutMs` for this request. */
  timeoutMs?: number;
}

/** Options of [[PalisadeClient.subscribe]]. */
export interface SubscribeOptions extends RequestOptions {
  /** Every publication, in offset order, each once (recovered ones included). */
  onPublication: (publication: Publication) => void;
  /**
   * The subscription has ended: `client` (`unsubscribe()`), the server's `permission_revoked`
   * or `channel_closed`, a refused resubscription (its error reason), or `closed` (the client
   * closed). Not called when the first subscribe is refused: `ready` rejects instead.
   */
  onUnsubscribed?: (reason: string) => void;
  /** Every `subscribed`: the first one and each one after a reconnect. */
  onSubscribed?: (info: SubscribedInfo) => void;
  /** Publications may have been missed across a reconnect (`recovered: false`). */
  onGap?: (gap: Gap) => void;
  /** A resubscription failed or timed out (the first subscribe's failure rejects `ready`). */
  onError?: (error: ChannelError) => void;
  /** Start from a known position (for example one the application saved): recovers from there. */
  since?: StreamPosition;
}

/** The life of a subscription. */
export type SubscriptionState =
  /** Waiting for `subscribed` (also after a reconnect, until the resubscription is answered). */
  | "subscribing"
  /** Active: publications arrive. */
  | "subscribed"
  /** Ended for good. */
  | "unsubscribed";

/** What a [[Subscription]] needs from its client. */
export interface SubscriptionHost {
  unsubscribe(sub: Subscription, options?: RequestOptions): Promise<void>;
}

/**
 * A subscription to one channel. It survives reconnects: after each new authentication the
 * client subscribes again with `since` (the last `epoch` and `offset` seen), delivers what the
 * server recovered, and calls `onGap` when it could not recover.
 */
export class Subscription {
  readonly channel: string;
  /** Resolves at the first `subscribed`; rejects with a [[ChannelError]] when the server refuses
   * (`permission_denied`, ...), on timeout, or when ended first. */
  readonly ready: Promise<SubscribedInfo>;
  private currentState: SubscriptionState = "subscribing";
  private position: StreamPosition | null;
  private readonly options: SubscribeOptions;
  private readonly host: SubscriptionHost;
  private settle: { resolve: (i: SubscribedInfo) => void; reject: (e: ChannelError) => void } | null;
  private everSubscribed = false;
  /** @internal The `since` sent with the subscribe in flight. */
  sentSince: StreamPosition | null = null;
  /** @internal The id of the subscribe in flight. */
  requestId: number | null = null;
  /** @internal Its timeout. */
  timer: ReturnType<typeof setTimeout> | null = null;

  /** @internal Made by [[PalisadeClient.subscribe]]. */
  constructor(channel: string, options: SubscribeOptions, host: SubscriptionHost) {
    this.channel = channel;
    this.options = options;
    this.host = host;
    this.position = options.since ? { ...options.since } : null;
    let settle!: Subscription["settle"];
    this.ready = new Promise<SubscribedInfo>((resolve, reject) => (settle = { resolve, reject }));
    this.settle = settle;
    // Not awaiting `ready` is fine: its rejection must not be an unhandled one.
    this.ready.catch(() => undefined);
  }

  /** `subscribing`, `subscribed` or `unsubscribed`. */
  get state(): SubscriptionState {
    return this.currentState;
  }

  /** The last position seen (from `subscribed` or a publication), sent as `since` on resubscribe. */
  get since(): StreamPosition | null {
    return this.position ? { ...this.position } : null;
  }

  /** The subscribe timeout of this subscription, if set. */
  get timeoutMs(): number | undefined {
    return this.options.timeoutMs;
  }

  /** Ends the subscription (publications still in flight are dropped). Resolves when the server
   * confirms, at once when not connected. */
  unsubscribe(options?: RequestOptions): Promise<void> {
    return this.host.unsubscribe(this, options);
  }

  // ---- called by the client ----

  /** @internal The connection closed: resubscribe after the next authentication. */
  disconnected(): void {
    this.clearTimer();
    this.requestId = null;
    if (this.currentState === "subscribed") this.currentState = "subscribing";
  }

  /** @internal A `subscribed` envelope for this channel. */
  subscribed(env: Record<string, unknown>): void {
    this.clearTimer();
    this.requestId = null;
    const sent = this.sentSince;
    this.sentSince = null;
    const epoch = String(env.epoch);
    const offset = typeof env.offset === "number" ? env.offset : 0;
    const recovered = env.recovered === true;
    const previous = this.position;
    const resubscribed = this.everSubscribed;
    this.everSubscribed = true;
    this.currentState = "subscribed";
    const publications = Array.isArray(env.publications) ? env.publications : [];
    if (recovered && previous && previous.epoch === epoch) {
      this.position = { epoch, offset: previous.offset };
    } else {
      this.position = { epoch, offset };
    }
    const info: SubscribedInfo = { channel: this.channel, epoch, offset, recovered, resubscribed };
    if (sent && !recovered) {
      this.call(this.options.onGap, { channel: this.channel, previous: { ...sent }, current: { epoch, offset } });
    }
    this.call(this.options.onSubscribed, info);
    if (this.settle) {
      this.settle.resolve(info);
      this.settle = null;
    }
    if (recovered) for (const p of publications) this.publication(p as Record<string, unknown>);
    // The reply's offset is the channel's position, whatever was recovered.
    if (this.position && this.position.offset < offset) this.position.offset = offset;
  }

  /** @internal A publication for this channel (live or recovered). */
  publication(env: Record<string, unknown>): void {
    if (this.currentState !== "subscribed" || typeof env.offset !== "number") return;
    if (this.position && env.offset <= this.position.offset) return; // Seen already.
    if (this.position) this.position.offset = env.offset;
    this.call(this.options.onPublication, toPublication(this.channel, env));
  }

  /** @internal The subscribe was refused or timed out. Returns whether the subscription ended. */
  failed(err: ChannelError): boolean {
    this.clearTimer();
    this.requestId = null;
    this.sentSince = null;
    if (this.settle) {
      this.settle.reject(err);
      this.settle = null;
      this.currentState = "unsubscribed";
      return true;
    }
    this.call(this.options.onError, err);
    if (err.reason === "timeout") return false; // A late reply still counts; a reconnect retries.
    this.end(err.reason);
    return true;
  }

  /** @internal The subscription has ended (server's `unsubscribed`, `unsubscribe()`, close). */
  end(reason: string): void {
    if (this.currentState === "unsubscribed") return;
    this.clearTimer();
    this.currentState = "unsubscribed";
    if (this.settle) {
      this.settle.reject(
        new ChannelError(reason === "client" ? "unsubscribed" : reason, this.channel, `ended (${reason}) before subscribed`),
      );
      this.settle = null;
      return;
    }
    this.call(this.options.onUnsubscribed, reason);
  }

  private clearTimer(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
  }

  private call<T>(fn: ((arg: T) => void) | undefined, arg: T): void {
    if (!fn) return;
    try {
      fn(arg);
    } catch (e) {
      // The application's bug must not break the connection; surface it asynchronously.
      setTimeout(() => {
        throw e;
      }, 0);
    }
  }
}

/** A `publication` envelope (or an item of `subscribed`/`history`) as a [[Publication]]. */
function toPublication(channel: string, env: Record<string, unknown>): Publication {
  const p: Publication = {
    channel: typeof env.channel === "string" ? env.channel : channel,
    offset: typeof env.offset === "number" ? env.offset : 0,
    data: env.data,
  };
  const info = env.info as { user_id?: unknown } | undefined;
  if (info && typeof info === "object" && info.user_id !== undefined) p.info = { userId: String(info.user_id) };
  return p;
}
