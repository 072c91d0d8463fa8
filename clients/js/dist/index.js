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
import { adviceForCode, decide, fullJitter, } from "./backoff.js";
export { adviceForCode, decide, fullJitter };
/** The subprotocol the client negotiates. */
export const PROTOCOL = "palisade.v1";
/**
 * A failure the application should know of. `fatal` errors end the client (state `closed`);
 * the others are reported while the client recovers.
 */
export class PalisadeError extends Error {
    constructor(reason, message, extra = {}) {
        super(message);
        this.name = "PalisadeError";
        this.reason = reason;
        this.reconnect = extra.reconnect;
        this.retryAfterMs = extra.retryAfterMs;
        this.code = extra.code;
        this.fatal = extra.fatal ?? false;
    }
}
/**
 * A refused or failed channel request (`subscribe`, `publish`, `presence`, `history`,
 * `unsubscribe`). `reason` is the server's or the client's ([[ChannelErrorReason]]); the
 * connection goes on either way.
 */
export class ChannelError extends PalisadeError {
    constructor(reason, channel, detail) {
        super(reason, `${channel}: ${reason}${detail && detail !== reason ? `: ${detail}` : ""}`);
        this.name = "ChannelError";
        this.channel = channel;
        this.detail = detail;
    }
}
const DEFAULT_REQUEST_TIMEOUT_MS = 10000;
const ADVICE = ["now", "backoff", "after_refresh", "never"];
/** One `palisade.v1` connection that survives token expiry, restarts and network loss. */
export class PalisadeClient {
    constructor(url, options) {
        this.ws = null;
        this.currentState = "connecting";
        this.attempt = 0;
        this.timer = null;
        this.authTimer = null;
        /** The error envelope that came before the coming close. */
        this.lastError = null;
        this.queue = [];
        /** Subscriptions by channel (ended ones are removed). */
        this.subs = new Map();
        /** Subscribe requests in flight, by id. */
        this.subscribing = new Map();
        /** Other channel requests, by id. */
        this.pending = new Map();
        this.nextId = 1;
        this.listeners = {
            message: new Set(),
            state: new Set(),
            error: new Set(),
        };
        this.waitingForOnline = false;
        this.onOnline = () => this.online();
        this.session = null;
        /** Bumped on every connect, so callbacks of an older socket are ignored. */
        this.generation = 0;
        this.pendingReason = "connect";
        this.url = url;
        this.options = options;
        const ctor = options.WebSocket ?? globalThis.WebSocket;
        if (!ctor) {
            throw new TypeError("no WebSocket: pass options.WebSocket (Node < 22: the `ws` package, or run node with --experimental-websocket)");
        }
        this.Ctor = ctor;
        const g = globalThis;
        g.addEventListener?.("online", this.onOnline);
        queueMicrotask(() => void this.connect("connect"));
    }
    /** The client's state. */
    get state() {
        return this.currentState;
    }
    /** The current session, while `open`. */
    get currentSession() {
        return this.currentState === "open" ? this.session : null;
    }
    /** Messages waiting in the queue. */
    get queued() {
        return this.queue.length;
    }
    /** Adds a listener; returns a function that removes it. */
    on(event, listener) {
        this.listeners[event].add(listener);
        return () => this.listeners[event].delete(listener);
    }
    /**
     * Sends `data` (any JSON value) in a `message` envelope. While not connected it is queued
     * when `queueSize` allows, else this throws a [[PalisadeError]] (`not_connected`,
     * `queue_full`, or `closed` after `close()`).
     */
    send(data) {
        if (this.currentState === "open" && this.ws) {
            this.ws.send(JSON.stringify({ type: "message", data }));
            return;
        }
        if (this.currentState === "closed") {
            throw new PalisadeError("closed", "the client is closed");
        }
        const max = this.options.queueSize ?? 0;
        if (max <= 0)
            throw new PalisadeError("not_connected", "not connected (queueSize is 0)");
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
    subscribe(channel, options) {
        if (this.isClosed())
            throw new ChannelError("closed", channel, "the client is closed");
        if (this.subs.has(channel)) {
            throw new ChannelError("already_subscribed", channel, "this client already has a subscription to it");
        }
        const sub = new Subscription(channel, options, { unsubscribe: (s, o) => this.endSubscription(s, o) });
        this.subs.set(channel, sub);
        if (this.currentState === "open" && this.ws)
            this.sendSubscribe(this.ws, sub);
        return sub;
    }
    /** The subscription to `channel`, if any. */
    subscription(channel) {
        return this.subs.get(channel);
    }
    /** Ends the subscription to `channel` (see [[Subscription.unsubscribe]]); resolves at once without one. */
    unsubscribe(channel, options) {
        const sub = this.subs.get(channel);
        return sub ? sub.unsubscribe(options) : Promise.resolve();
    }
    /**
     * Publishes `data` (any JSON value) to `channel`; resolves with its offset. Rejects with a
     * [[ChannelError]]: the server's reason (`permission_denied`, `message_too_big`, ...),
     * `timeout`, `connection_lost` (it may or may not have been published), `not_connected` or
     * `queue_full` (see `queueSize`), `closed`.
     */
    async publish(channel, data, options) {
        const env = await this.request("publish", channel, { data }, "ok", options);
        return { offset: typeof env.offset === "number" ? env.offset : 0 };
    }
    /** The users subscribed to `channel` on the server, with their session counts. */
    async presence(channel, options) {
        const env = await this.request("presence", channel, {}, "presence", options);
        const users = Array.isArray(env.users) ? env.users : [];
        return users.map((u) => ({ userId: String(u.user_id), sessions: Number(u.sessions) }));
    }
    /** The last publications the server holds for `channel`, oldest first (`unavailable` when
     * the server keeps no history). */
    async history(channel, options = {}) {
        const fields = options.limit === undefined ? {} : { limit: options.limit };
        const env = await this.request("history", channel, fields, "history", options);
        const pubs = Array.isArray(env.publications) ? env.publications : [];
        return { channel, epoch: String(env.epoch), publications: pubs.map((p) => toPublication(channel, p)) };
    }
    /** Closes the connection (1000) and stops reconnecting. Final. */
    close() {
        this.finish();
        const ws = this.ws;
        this.ws = null;
        if (ws && ws.readyState <= 1)
            ws.close(1000, "client closed");
    }
    /** Resolves when the state is `state` (rejects on `closed` when waiting for another). */
    waitFor(state, timeoutMs = 30000) {
        if (this.currentState === state)
            return Promise.resolve();
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
                }
                else if (s === "closed") {
                    clearTimeout(t);
                    off();
                    reject(new PalisadeError("closed", "the client closed"));
                }
            });
        });
    }
    // ---- internals ----
    emit(event, ...args) {
        for (const fn of [...this.listeners[event]]) {
            try {
                fn(...args);
            }
            catch (e) {
                // A listener's bug must not break the connection; surface it asynchronously.
                setTimeout(() => {
                    throw e;
                }, 0);
            }
        }
    }
    setState(next) {
        const prev = this.currentState;
        if (prev === next)
            return;
        this.currentState = next;
        this.emit("state", next, prev);
    }
    isClosed() {
        return this.currentState === "closed";
    }
    finish() {
        this.clearTimers();
        this.queue = [];
        this.failChannels();
        this.setState("closed");
        const g = globalThis;
        g.removeEventListener?.("online", this.onOnline);
    }
    clearTimers() {
        if (this.timer)
            clearTimeout(this.timer);
        if (this.authTimer)
            clearTimeout(this.authTimer);
        this.timer = this.authTimer = null;
    }
    async connect(reason) {
        if (this.currentState === "closed")
            return;
        const generation = ++this.generation;
        this.setState("connecting");
        this.lastError = null;
        let token;
        try {
            token = await this.options.getToken(reason);
        }
        catch (e) {
            if (generation !== this.generation || this.isClosed())
                return;
            this.emit("error", new PalisadeError("token_provider_failed", `getToken failed: ${e}`));
            return this.closed(generation, { code: 1006, advice: "backoff" });
        }
        if (generation !== this.generation || this.isClosed())
            return;
        let ws;
        try {
            ws = new this.Ctor(this.url, PROTOCOL);
        }
        catch (e) {
            this.emit("error", new PalisadeError("bad_url", `cannot open ${this.url}: ${e}`, { fatal: true }));
            this.finish();
            return;
        }
        this.ws = ws;
        ws.onopen = () => {
            if (generation !== this.generation)
                return;
            if (ws.protocol !== PROTOCOL) {
                this.lastError = new PalisadeError("no_subprotocol", `the server did not select ${PROTOCOL} (subprotocol.enabled = false?)`, { reconnect: "never" });
                ws.close(1000);
                return;
            }
            this.setState("authenticating");
            ws.send(JSON.stringify({ type: "auth", token }));
        };
        ws.onmessage = (ev) => {
            if (generation === this.generation)
                this.frame(ws, ev.data);
        };
        ws.onerror = () => {
            // Always followed by onclose, which decides.
        };
        ws.onclose = (ev) => {
            if (generation !== this.generation || this.ws !== ws)
                return;
            this.ws = null;
            const err = this.lastError;
            this.closed(generation, {
                code: ev.code,
                advice: err?.reconnect,
                retryAfterMs: err?.retryAfterMs,
            });
        };
        const limit = this.options.authTimeoutMs ?? 10000;
        this.authTimer = setTimeout(() => {
            if (generation !== this.generation || this.currentState === "open")
                return;
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
    frame(ws, raw) {
        let env;
        try {
            env = JSON.parse(String(raw));
            if (typeof env !== "object" || env === null)
                throw new Error("not an object");
        }
        catch {
            // Binary application data arrives unwrapped.
            if (typeof raw !== "string")
                this.emit("message", raw);
            else
                this.emit("error", new PalisadeError("bad_frame", "the server sent a frame that is not an envelope"));
            return;
        }
        switch (env.type) {
            case "authenticated": {
                if (this.authTimer)
                    clearTimeout(this.authTimer);
                this.authTimer = null;
                this.attempt = 0;
                this.session = {
                    sessionId: String(env.session_id),
                    userId: String(env.user_id),
                    exp: typeof env.exp === "number" ? env.exp : null,
                };
                this.setState("open");
                if (this.ws !== ws)
                    break; // A listener closed the client.
                for (const sub of this.subs.values())
                    if (sub.state === "subscribing")
                        this.sendSubscribe(ws, sub);
                const queued = this.queue;
                this.queue = [];
                for (const item of queued) {
                    if (item.kind === "message") {
                        ws.send(JSON.stringify({ type: "message", data: item.data }));
                    }
                    else {
                        const p = this.pending.get(item.id);
                        if (!p)
                            continue; // Timed out while queued.
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
                    if (sub.requestId !== null)
                        this.subscribing.delete(sub.requestId);
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
                }
                else if (env.reason !== "client") {
                    // Ended by the server: permission_revoked, channel_closed.
                    const sub = this.subs.get(String(env.channel));
                    if (sub)
                        this.forget(sub, String(env.reason));
                }
                break;
            }
            case "ok":
            case "presence":
            case "history":
                if (typeof env.id === "number")
                    this.reply(env.id, env);
                break;
            case "expiring":
                void this.refresh(ws);
                break;
            case "refreshed":
                if (this.session)
                    this.session.exp = typeof env.exp === "number" ? env.exp : null;
                break;
            case "error": {
                const reconnect = typeof env.reconnect === "string" && ADVICE.includes(env.reconnect)
                    ? env.reconnect
                    : undefined;
                const retryAfterMs = typeof env.retry_after_ms === "number" ? env.retry_after_ms : undefined;
                const err = new PalisadeError(String(env.reason), String(env.detail ?? env.reason), {
                    reconnect,
                    retryAfterMs,
                    fatal: reconnect === "never",
                });
                const answered = typeof env.id === "number" && this.refused(env.id, String(env.reason), String(env.detail ?? ""));
                if (reconnect)
                    this.lastError = err;
                else if (!answered)
                    this.emit("error", err); // Not followed by a close: a refused refresh, a bad envelope.
                break;
            }
            default:
            // Unknown envelopes are ignored (forward compatibility).
        }
    }
    async refresh(ws) {
        try {
            const token = await this.options.getToken("refresh");
            if (this.ws === ws && ws.readyState === 1)
                ws.send(JSON.stringify({ type: "refresh", token }));
        }
        catch (e) {
            this.emit("error", new PalisadeError("token_provider_failed", `getToken failed: ${e}`));
        }
    }
    closed(generation, close) {
        if (generation !== this.generation || this.isClosed())
            return;
        this.clearTimers();
        this.connectionLost();
        const err = this.lastError;
        this.lastError = null;
        const decision = this.options.reconnect === false
            ? { action: "stop" }
            : decide(close, this.attempt, this.options.backoff, this.options.random);
        if (decision.action === "stop") {
            this.emit("error", new PalisadeError(err?.reason ?? "connection_lost", err?.message ?? `closed with ${close.code}`, {
                reconnect: close.advice ?? adviceForCode(close.code),
                retryAfterMs: close.retryAfterMs,
                code: close.code,
                fatal: true,
            }));
            this.finish();
            return;
        }
        if (err)
            this.emit("error", new PalisadeError(err.reason, err.message, { reconnect: err.reconnect, retryAfterMs: err.retryAfterMs, code: close.code }));
        this.attempt += 1;
        this.setState("reconnecting");
        const reason = decision.refreshToken ? "after_refresh" : "connect";
        const nav = globalThis.navigator;
        if (nav && nav.onLine === false) {
            // Offline in a browser: wait for the `online` event instead of spinning.
            this.waitingForOnline = true;
            this.pendingReason = reason;
            return;
        }
        this.timer = setTimeout(() => void this.connect(reason), decision.delayMs);
    }
    // ---- channel internals ----
    timeout(options) {
        return options?.timeoutMs ?? this.options.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS;
    }
    sendSubscribe(ws, sub) {
        const id = this.nextId++;
        const since = sub.since;
        const envelope = { type: "subscribe", channel: sub.channel, id };
        if (since)
            envelope.since = since;
        sub.requestId = id;
        sub.sentSince = since;
        this.subscribing.set(id, sub);
        const ms = this.timeout({ timeoutMs: sub.timeoutMs });
        sub.timer = setTimeout(() => {
            this.subscribing.delete(id);
            const err = new ChannelError("timeout", sub.channel, `no reply to subscribe within ${ms} ms`);
            if (sub.failed(err))
                this.dropSubscription(sub);
        }, ms);
        ws.send(JSON.stringify(envelope));
    }
    /** Removes an ended subscription; tells the server when it may still hold it. */
    dropSubscription(sub) {
        if (this.subs.get(sub.channel) === sub)
            this.subs.delete(sub.channel);
        if (this.currentState === "open" && this.ws) {
            this.ws.send(JSON.stringify({ type: "unsubscribe", channel: sub.channel, id: this.nextId++ }));
        }
    }
    /** Ends `sub` locally (no message to the server). */
    forget(sub, reason) {
        if (sub.requestId !== null)
            this.subscribing.delete(sub.requestId);
        if (this.subs.get(sub.channel) === sub)
            this.subs.delete(sub.channel);
        sub.end(reason);
    }
    async endSubscription(sub, options) {
        if (sub.state === "unsubscribed" || this.subs.get(sub.channel) !== sub)
            return;
        this.forget(sub, "client");
        if (this.currentState !== "open" || !this.ws)
            return; // The server forgot it with the connection.
        await this.request("unsubscribe", sub.channel, {}, "unsubscribed", options, false);
    }
    /** Sends (or queues) a request and resolves with the reply of type `expects`. */
    request(type, channel, fields, expects, options, queueable = true) {
        return new Promise((resolve, reject) => {
            if (this.isClosed())
                return reject(new ChannelError("closed", channel, "the client is closed"));
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
            if (open)
                this.ws.send(JSON.stringify(envelope));
        });
    }
    /** A reply to request `id`. */
    reply(id, env) {
        const p = this.pending.get(id);
        if (!p || p.expects !== env.type)
            return; // Late (timed out) or not ours.
        this.pending.delete(id);
        clearTimeout(p.timer);
        p.resolve(env);
    }
    /** An `error` with `id`; returns whether it answered one of our requests. */
    refused(id, reason, detail) {
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
            if (sub.failed(new ChannelError(reason, sub.channel, detail)))
                this.forget(sub, reason);
            return true;
        }
        return false;
    }
    /** The connection is gone: sent requests cannot be answered; subscriptions wait to resubscribe. */
    connectionLost() {
        for (const [id, p] of this.pending) {
            if (!p.sent)
                continue;
            this.pending.delete(id);
            clearTimeout(p.timer);
            p.reject(new ChannelError("connection_lost", p.channel, "the connection closed before the reply"));
        }
        this.subscribing.clear();
        for (const sub of this.subs.values())
            sub.disconnected();
    }
    /** The client is closed: every request fails, every subscription ends. */
    failChannels() {
        for (const p of this.pending.values()) {
            clearTimeout(p.timer);
            p.reject(new ChannelError("closed", p.channel, "the client is closed"));
        }
        this.pending.clear();
        this.subscribing.clear();
        const subs = [...this.subs.values()];
        this.subs.clear();
        for (const sub of subs)
            sub.end("closed");
    }
    online() {
        if (!this.waitingForOnline || this.currentState !== "reconnecting")
            return;
        this.waitingForOnline = false;
        void this.connect(this.pendingReason);
    }
}
/**
 * A subscription to one channel. It survives reconnects: after each new authentication the
 * client subscribes again with `since` (the last `epoch` and `offset` seen), delivers what the
 * server recovered, and calls `onGap` when it could not recover.
 */
export class Subscription {
    /** @internal Made by [[PalisadeClient.subscribe]]. */
    constructor(channel, options, host) {
        this.currentState = "subscribing";
        this.everSubscribed = false;
        /** @internal The `since` sent with the subscribe in flight. */
        this.sentSince = null;
        /** @internal The id of the subscribe in flight. */
        this.requestId = null;
        /** @internal Its timeout. */
        this.timer = null;
        this.channel = channel;
        this.options = options;
        this.host = host;
        this.position = options.since ? { ...options.since } : null;
        let settle;
        this.ready = new Promise((resolve, reject) => (settle = { resolve, reject }));
        this.settle = settle;
        // Not awaiting `ready` is fine: its rejection must not be an unhandled one.
        this.ready.catch(() => undefined);
    }
    /** `subscribing`, `subscribed` or `unsubscribed`. */
    get state() {
        return this.currentState;
    }
    /** The last position seen (from `subscribed` or a publication), sent as `since` on resubscribe. */
    get since() {
        return this.position ? { ...this.position } : null;
    }
    /** The subscribe timeout of this subscription, if set. */
    get timeoutMs() {
        return this.options.timeoutMs;
    }
    /** Ends the subscription (publications still in flight are dropped). Resolves when the server
     * confirms, at once when not connected. */
    unsubscribe(options) {
        return this.host.unsubscribe(this, options);
    }
    // ---- called by the client ----
    /** @internal The connection closed: resubscribe after the next authentication. */
    disconnected() {
        this.clearTimer();
        this.requestId = null;
        if (this.currentState === "subscribed")
            this.currentState = "subscribing";
    }
    /** @internal A `subscribed` envelope for this channel. */
    subscribed(env) {
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
        }
        else {
            this.position = { epoch, offset };
        }
        const info = { channel: this.channel, epoch, offset, recovered, resubscribed };
        if (sent && !recovered) {
            this.call(this.options.onGap, { channel: this.channel, previous: { ...sent }, current: { epoch, offset } });
        }
        this.call(this.options.onSubscribed, info);
        if (this.settle) {
            this.settle.resolve(info);
            this.settle = null;
        }
        if (recovered)
            for (const p of publications)
                this.publication(p);
        // The reply's offset is the channel's position, whatever was recovered.
        if (this.position && this.position.offset < offset)
            this.position.offset = offset;
    }
    /** @internal A publication for this channel (live or recovered). */
    publication(env) {
        if (this.currentState !== "subscribed" || typeof env.offset !== "number")
            return;
        if (this.position && env.offset <= this.position.offset)
            return; // Seen already.
        if (this.position)
            this.position.offset = env.offset;
        this.call(this.options.onPublication, toPublication(this.channel, env));
    }
    /** @internal The subscribe was refused or timed out. Returns whether the subscription ended. */
    failed(err) {
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
        if (err.reason === "timeout")
            return false; // A late reply still counts; a reconnect retries.
        this.end(err.reason);
        return true;
    }
    /** @internal The subscription has ended (server's `unsubscribed`, `unsubscribe()`, close). */
    end(reason) {
        if (this.currentState === "unsubscribed")
            return;
        this.clearTimer();
        this.currentState = "unsubscribed";
        if (this.settle) {
            this.settle.reject(new ChannelError(reason === "client" ? "unsubscribed" : reason, this.channel, `ended (${reason}) before subscribed`));
            this.settle = null;
            return;
        }
        this.call(this.options.onUnsubscribed, reason);
    }
    clearTimer() {
        if (this.timer)
            clearTimeout(this.timer);
        this.timer = null;
    }
    call(fn, arg) {
        if (!fn)
            return;
        try {
            fn(arg);
        }
        catch (e) {
            // The application's bug must not break the connection; surface it asynchronously.
            setTimeout(() => {
                throw e;
            }, 0);
        }
    }
}
/** A `publication` envelope (or an item of `subscribed`/`history`) as a [[Publication]]. */
function toPublication(channel, env) {
    const p = {
        channel: typeof env.channel === "string" ? env.channel : channel,
        offset: typeof env.offset === "number" ? env.offset : 0,
        data: env.data,
    };
    const info = env.info;
    if (info && typeof info === "object" && info.user_id !== undefined)
        p.info = { userId: String(info.user_id) };
    return p;
}
