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
        this.queue.push(data);
    }
    /** Closes the connection (1000) and stops reconnecting. Final. */
    close() {
        this.queue = [];
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
                const queued = this.queue;
                this.queue = [];
                for (const data of queued)
                    ws.send(JSON.stringify({ type: "message", data }));
                break;
            }
            case "message":
                this.emit("message", env.data);
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
                if (reconnect)
                    this.lastError = err;
                else
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
        const err = this.lastError;
        this.lastError = null;
        const decision = this.options.reconnect === false
            ? { action: "stop" }
            : decide(close, this.attempt, this.options.backoff, this.options.random);
        if (decision.action === "stop") {
            this.queue = [];
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
    online() {
        if (!this.waitingForOnline || this.currentState !== "reconnecting")
            return;
        this.waitingForOnline = false;
        void this.connect(this.pendingReason);
    }
}
