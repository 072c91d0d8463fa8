// Unit tests: the backoff policy and the client's state machine, driven by a scripted socket.
// (The integration tests run the same client against the real server.)
import { test } from "node:test";
import assert from "node:assert/strict";
import { PalisadeClient, PalisadeError, decide, fullJitter, adviceForCode } from "../dist/index.js";

test("full jitter stays under min(cap, base * 2^attempt) and reaches it", () => {
  const opts = { baseMs: 100, capMs: 1000 };
  assert.equal(fullJitter(0, opts, () => 0), 0);
  assert.equal(fullJitter(0, opts, () => 0.999999), 99);
  assert.equal(fullJitter(3, opts, () => 0.5), 400);
  assert.equal(fullJitter(4, opts, () => 0.999999), 999);
  assert.equal(fullJitter(60, opts, () => 0.5), 500, "the cap holds for huge attempts");
  for (let i = 0; i < 1000; i++) {
    const d = fullJitter(2, opts);
    assert.ok(d >= 0 && d < 400, `${d}`);
  }
});

test("decisions follow the advice, the close code and retry_after_ms", () => {
  const half = () => 0.5;
  const o = { baseMs: 100, capMs: 10_000 };
  assert.deepEqual(decide({ code: 1008, advice: "never" }, 0, o, half), { action: "stop" });
  assert.deepEqual(decide({ code: 1001, advice: "now" }, 0, o, half), {
    action: "retry",
    delayMs: 0,
    refreshToken: false,
  });
  // A repeated "now" backs off instead of spinning.
  assert.equal(decide({ code: 1001, advice: "now" }, 2, o, half).delayMs, 200);
  assert.deepEqual(decide({ code: 1008, advice: "after_refresh" }, 0, o, half), {
    action: "retry",
    delayMs: 0,
    refreshToken: true,
  });
  assert.equal(decide({ code: 1008, advice: "backoff" }, 1, o, half).delayMs, 100);
  // retry_after_ms is a floor under the jitter.
  assert.equal(decide({ code: 1008, advice: "backoff", retryAfterMs: 750 }, 0, o, half).delayMs, 750);
  assert.equal(decide({ code: 1008, advice: "backoff", retryAfterMs: 10 }, 5, o, half).delayMs, 1600);
  // Without an error envelope the code decides.
  for (const code of [1001, 1006, 1011, 1012, 1013]) assert.equal(adviceForCode(code), "backoff");
  for (const code of [1000, 1002, 1007, 1008, 1009]) assert.equal(adviceForCode(code), "never");
  assert.equal(decide({ code: 1006 }, 0, o, half).action, "retry");
  assert.deepEqual(decide({ code: 1008 }, 0, o, half), { action: "stop" });
});

/** A scripted WebSocket: records what the client sends; the test plays the server. */
class Script {
  static sockets = [];
  constructor(url, protocols) {
    this.url = url;
    this.protocols = protocols;
    this.protocol = "";
    this.readyState = 0;
    this.sent = [];
    this.onopen = this.onmessage = this.onclose = this.onerror = null;
    Script.sockets.push(this);
  }
  send(text) {
    this.sent.push(JSON.parse(text));
  }
  close(code = 1000) {
    if (this.readyState === 3) return;
    this.readyState = 3;
    queueMicrotask(() => this.onclose?.({ code, reason: "" }));
  }
  // Server side.
  open() {
    this.protocol = "palisade.v1";
    this.readyState = 1;
    this.onopen?.({});
  }
  push(env) {
    this.onmessage?.({ data: JSON.stringify(env) });
  }
  drop(code, reason = "") {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }
}

const tick = () => new Promise((r) => setTimeout(r, 5));
async function until(pred, what) {
  for (let i = 0; i < 400; i++) {
    if (pred()) return;
    await tick();
  }
  assert.fail(`timed out waiting for ${what}`);
}
const lastSocket = () => Script.sockets[Script.sockets.length - 1];

function client(extra = {}) {
  Script.sockets = [];
  const reasons = [];
  const states = [];
  const errors = [];
  const messages = [];
  let n = 0;
  const c = new PalisadeClient("ws://test/", {
    WebSocket: Script,
    getToken: async (reason) => {
      reasons.push(reason);
      return `token-${++n}`;
    },
    backoff: { baseMs: 10, capMs: 20 },
    ...extra,
  });
  c.on("state", (s) => states.push(s));
  c.on("error", (e) => errors.push(e));
  c.on("message", (m) => messages.push(m));
  return { c, reasons, states, errors, messages };
}

async function authenticate(t) {
  await until(() => Script.sockets.length > 0, "a socket");
  const ws = lastSocket();
  assert.deepEqual(ws.protocols, "palisade.v1");
  ws.open();
  await until(() => ws.sent.length > 0, "the auth envelope");
  assert.equal(ws.sent[0].type, "auth");
  ws.push({ type: "authenticated", session_id: "ab", user_id: "42", exp: 99 });
  assert.equal(t.c.state, "open");
  return ws;
}

test("connects, authenticates, sends, receives and refreshes on expiring", async () => {
  const t = client();
  const ws = await authenticate(t);
  assert.deepEqual(t.states, ["authenticating", "open"]);
  assert.deepEqual(t.c.currentSession, { sessionId: "ab", userId: "42", exp: 99 });
  t.c.send({ n: 1 });
  assert.deepEqual(ws.sent[1], { type: "message", data: { n: 1 } });
  ws.push({ type: "message", data: "hi" });
  assert.deepEqual(t.messages, ["hi"]);
  ws.push({ type: "expiring", in_secs: 5 });
  await until(() => ws.sent.length === 3, "the refresh envelope");
  assert.deepEqual(ws.sent[2], { type: "refresh", token: "token-2" });
  assert.deepEqual(t.reasons, ["connect", "refresh"]);
  ws.push({ type: "refreshed", exp: 200 });
  assert.equal(t.c.currentSession.exp, 200);
  // A refused refresh is reported, not fatal.
  ws.push({ type: "error", reason: "user_mismatch", detail: "another user" });
  assert.equal(t.errors.length, 1);
  assert.equal(t.errors[0].reason, "user_mismatch");
  assert.equal(t.errors[0].fatal, false);
  assert.equal(t.c.state, "open");
  t.c.close();
  assert.equal(t.c.state, "closed");
  assert.throws(() => t.c.send(1), (e) => e instanceof PalisadeError && e.reason === "closed");
});

test("never stops and reports a fatal error", async () => {
  const t = client();
  const ws = await authenticate(t);
  ws.push({ type: "error", reason: "revoked", detail: "session revoked", reconnect: "never" });
  ws.drop(1008, "session revoked");
  assert.equal(t.c.state, "closed");
  const fatal = t.errors.at(-1);
  assert.equal(fatal.reason, "revoked");
  assert.equal(fatal.fatal, true);
  assert.equal(fatal.code, 1008);
  await tick();
  assert.equal(Script.sockets.length, 1, "no reconnect");
});

test("backoff reconnects with a fresh connect token; after_refresh says why", async () => {
  const t = client();
  let ws = await authenticate(t);
  ws.push({ type: "error", reason: "shutting_down", detail: "bye", reconnect: "backoff", retry_after_ms: 30 });
  ws.drop(1001, "server shutting down");
  assert.equal(t.c.state, "reconnecting");
  assert.equal(t.errors.at(-1).retryAfterMs, 30);
  const started = Date.now();
  await until(() => Script.sockets.length === 2, "the reconnect");
  assert.ok(Date.now() - started >= 25, "retry_after_ms is honoured");
  ws = await authenticate(t);
  assert.deepEqual(t.reasons, ["connect", "connect"]);
  ws.push({ type: "error", reason: "token_expired", detail: "expired", reconnect: "after_refresh" });
  ws.drop(1008, "token expired");
  await until(() => Script.sockets.length === 3, "the reconnect");
  assert.deepEqual(t.reasons, ["connect", "connect", "after_refresh"]);
  t.c.close();
});

test("a drop without a close frame backs off; send queues only when opted in", async () => {
  const plain = client();
  let ws = await authenticate(plain);
  ws.drop(1006);
  assert.equal(plain.c.state, "reconnecting");
  assert.throws(() => plain.c.send(1), (e) => e.reason === "not_connected");
  plain.c.close();

  const t = client({ queueSize: 2 });
  ws = await authenticate(t);
  ws.drop(1006);
  t.c.send("a");
  t.c.send("b");
  assert.throws(() => t.c.send("c"), (e) => e.reason === "queue_full");
  assert.equal(t.c.queued, 2);
  await until(() => Script.sockets.length === 2, "the reconnect");
  ws = await authenticate(t);
  assert.deepEqual(ws.sent.slice(1), [
    { type: "message", data: "a" },
    { type: "message", data: "b" },
  ]);
  assert.equal(t.c.queued, 0);
  t.c.close();
});

test("a server without palisade.v1 is final; a failing getToken backs off", async () => {
  const t = client();
  await until(() => Script.sockets.length === 1, "a socket");
  const ws = lastSocket();
  ws.readyState = 1;
  ws.onopen({}); // protocol "" : the server did not select palisade.v1
  await until(() => t.c.state === "closed", "closed");
  assert.equal(t.errors.at(-1).reason, "no_subprotocol");

  Script.sockets = [];
  let calls = 0;
  const errors = [];
  const c = new PalisadeClient("ws://test/", {
    WebSocket: Script,
    getToken: async () => {
      calls += 1;
      if (calls === 1) throw new Error("login service down");
      return "tok";
    },
    backoff: { baseMs: 5, capMs: 5 },
  });
  c.on("error", (e) => errors.push(e));
  await until(() => Script.sockets.length === 1, "a socket after the retry");
  assert.equal(errors[0].reason, "token_provider_failed");
  c.close();
});

test("offline waits for the online event instead of retrying", async () => {
  const listeners = {};
  const saved = Object.getOwnPropertyDescriptor(globalThis, "navigator");
  const nav = { onLine: true };
  Object.defineProperty(globalThis, "navigator", { value: nav, configurable: true });
  globalThis.addEventListener = (type, fn) => (listeners[type] = fn);
  globalThis.removeEventListener = (type) => delete listeners[type];
  try {
    const t = client();
    const ws = await authenticate(t);
    nav.onLine = false;
    ws.drop(1006);
    assert.equal(t.c.state, "reconnecting");
    await new Promise((r) => setTimeout(r, 60));
    assert.equal(Script.sockets.length, 1, "no attempt while offline");
    nav.onLine = true;
    listeners.online();
    await until(() => Script.sockets.length === 2, "the reconnect when online");
    t.c.close();
    assert.equal(listeners.online, undefined, "close() removes the listener");
  } finally {
    delete globalThis.addEventListener;
    delete globalThis.removeEventListener;
    if (saved) Object.defineProperty(globalThis, "navigator", saved);
    else delete globalThis.navigator;
  }
});

test("no authenticated within authTimeoutMs backs off", async () => {
  const t = client({ authTimeoutMs: 20 });
  await until(() => Script.sockets.length === 1, "a socket");
  lastSocket().open();
  await until(() => Script.sockets.length === 2, "a second attempt");
  assert.equal(t.errors[0].reason, "auth_timeout");
  t.c.close();
});
