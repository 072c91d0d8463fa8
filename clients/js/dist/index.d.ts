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
/** Why a channel request failed: the server's `error` reasons and the client's own. */
export type ChannelErrorReason = "permission_denied" | "bad_channel" | "too_many_subscriptions" | "rate_limited" | "message_too_big" | "unavailable" | "bad_envelope"
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
export declare class ChannelError extends PalisadeError {
    readonly reason: ChannelErrorReason | (string & {});
    /** The channel of the request. */
    readonly channel: string;
    /** The server's `detail`, or the client's explanation. */
    readonly detail: string;
    constructor(reason: ChannelErrorReason | (string & {}), channel: string, detail: string);
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
    /** Subscriptions by channel (ended ones are removed). */
    private subs;
    /** Subscribe requests in flight, by id. */
    private subscribing;
    /** Other channel requests, by id. */
    private pending;
    private nextId;
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
    /**
     * Subscribes to `channel`. The returned [[Subscription]] is active once `ready` resolves
     * (it rejects with a [[ChannelError]]: `permission_denied`, `bad_channel`,
     * `too_many_subscriptions`, `timeout`, ...). While not connected the subscribe is sent after
     * the next authentication. After every reconnect the client subscribes again with `since`
     * (the last epoch and offset seen): recovered publications arrive through `onPublication`
     * in order, and `onGap` tells when some may have been missed (`recovered: false`).
     * Throws a [[ChannelError]] `already_subscribed`, or `closed` after `close()`.
     */
    subscribe(channel: string, options: SubscribeOptions): Subscription;
    /** The subscription to `channel`, if any. */
    subscription(channel: string): Subscription | undefined;
    /** Ends the subscription to `channel` (see [[Subscription.unsubscribe]]); resolves at once without one. */
    unsubscribe(channel: string, options?: RequestOptions): Promise<void>;
    /**
     * Publishes `data` (any JSON value) to `channel`; resolves with its offset. Rejects with a
     * [[ChannelError]]: the server's reason (`permission_denied`, `message_too_big`, ...),
     * `timeout`, `connection_lost` (it may or may not have been published), `not_connected` or
     * `queue_full` (see `queueSize`), `closed`.
     */
    publish(channel: string, data: unknown, options?: RequestOptions): Promise<{
        offset: number;
    }>;
    /** The users subscribed to `channel` on the server, with their session counts. */
    presence(channel: string, options?: RequestOptions): Promise<PresenceUser[]>;
    /** The last publications the server holds for `channel`, oldest first (`unavailable` when
     * the server keeps no history). */
    history(channel: string, options?: RequestOptions & {
        limit?: number;
    }): Promise<History>;
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
    private timeout;
    private sendSubscribe;
    /** Removes an ended subscription; tells the server when it may still hold it. */
    private dropSubscription;
    /** Ends `sub` locally (no message to the server). */
    private forget;
    private endSubscription;
    /** Sends (or queues) a request and resolves with the reply of type `expects`. */
    private request;
    /** A reply to request `id`. */
    private reply;
    /** An `error` with `id`; returns whether it answered one of our requests. */
    private refused;
    /** The connection is gone: sent requests cannot be answered; subscriptions wait to resubscribe. */
    private connectionLost;
    /** The client is closed: every request fails, every subscription ends. */
    private failChannels;
    private online;
}
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
    info?: {
        userId: string;
    };
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
"subscribing"
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
export declare class Subscription {
    readonly channel: string;
    /** Resolves at the first `subscribed`; rejects with a [[ChannelError]] when the server refuses
     * (`permission_denied`, ...), on timeout, or when ended first. */
    readonly ready: Promise<SubscribedInfo>;
    private currentState;
    private position;
    private readonly options;
    private readonly host;
    private settle;
    private everSubscribed;
    /** @internal The `since` sent with the subscribe in flight. */
    sentSince: StreamPosition | null;
    /** @internal The id of the subscribe in flight. */
    requestId: number | null;
    /** @internal Its timeout. */
    timer: ReturnType<typeof setTimeout> | null;
    /** @internal Made by [[PalisadeClient.subscribe]]. */
    constructor(channel: string, options: SubscribeOptions, host: SubscriptionHost);
    /** `subscribing`, `subscribed` or `unsubscribed`. */
    get state(): SubscriptionState;
    /** The last position seen (from `subscribed` or a publication), sent as `since` on resubscribe. */
    get since(): StreamPosition | null;
    /** The subscribe timeout of this subscription, if set. */
    get timeoutMs(): number | undefined;
    /** Ends the subscription (publications still in flight are dropped). Resolves when the server
     * confirms, at once when not connected. */
    unsubscribe(options?: RequestOptions): Promise<void>;
    /** @internal The connection closed: resubscribe after the next authentication. */
    disconnected(): void;
    /** @internal A `subscribed` envelope for this channel. */
    subscribed(env: Record<string, unknown>): void;
    /** @internal A publication for this channel (live or recovered). */
    publication(env: Record<string, unknown>): void;
    /** @internal The subscribe was refused or timed out. Returns whether the subscription ended. */
    failed(err: ChannelError): boolean;
    /** @internal The subscription has ended (server's `unsubscribed`, `unsubscribe()`, close). */
    end(reason: string): void;
    private clearTimer;
    private call;
}
