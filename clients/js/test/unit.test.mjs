// Unit tests: the backoff policy, the client's state machine and its channel bookkeeping
// (requests matched by id, timeouts, resubscription with `since`), driven by a scripted socket.
// (The integration tests run the same client against the real server.)
import { test } from "node:test";
import assert from "node:assert/strict";
import { ChannelError, PalisadeClient, PalisadeError, decide, fullJitter, adviceForCode } from "../dist/index.js";

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

// ---- channels ----

/** The envelopes `ws` received of `type`. */
const sentOf = (ws, type) => ws.sent.filter((e) => e.type === type);

test("channel requests resolve by id, in any order; refusals are typed and keep the connection", async () => {
  const t = client();
  const ws = await authenticate(t);
  const a = t.c.publish("chat:1", { n: 1 });
  const b = t.c.publish("chat:1", { n: 2 });
  const who = t.c.presence("chat:1");
  const hist = t.c.history("chat:1", { limit: 2 });
  const [pa, pb, pp, ph] = sentOf(ws, "publish").concat(sentOf(ws, "presence"), sentOf(ws, "history"));
  assert.deepEqual(pa, { type: "publish", channel: "chat:1", id: pa.id, data: { n: 1 } });
  assert.notEqual(pa.id, pb.id);
  assert.equal(ph.limit, 2);
  // Replies out of order, each to its id.
  ws.push({ type: "history", id: ph.id, channel: "chat:1", epoch: "e1", publications: [
    { type: "publication", channel: "chat:1", offset: 4, data: "x", info: { user_id: "7" } },
    { type: "publication", channel: "chat:1", offset: 5, data: "y" },
  ] });
  ws.push({ type: "ok", id: pb.id, offset: 12 });
  ws.push({ type: "presence", id: pp.id, channel: "chat:1", users: [{ user_id: "42", sessions: 2 }] });
  ws.push({ type: "ok", id: pa.id, offset: 11 });
  assert.deepEqual(await a, { offset: 11 });
  assert.deepEqual(await b, { offset: 12 });
  assert.deepEqual(await who, [{ userId: "42", sessions: 2 }]);
  assert.deepEqual(await hist, {
    channel: "chat:1",
    epoch: "e1",
    publications: [
      { channel: "chat:1", offset: 4, data: "x", info: { userId: "7" } },
      { channel: "chat:1", offset: 5, data: "y" },
    ],
  });
  // A refusal rejects that request only, with the server's reason; no error event, still open.
  const denied = t.c.publish("news", 1);
  ws.push({ type: "error", id: sentOf(ws, "publish").at(-1).id, reason: "permission_denied", detail: "no grant" });
  await assert.rejects(denied, (e) =>
    e instanceof ChannelError && e instanceof PalisadeError && e.reason === "permission_denied" &&
    e.channel === "news" && e.detail === "no grant");
  const off = t.c.history("chat:1");
  ws.push({ type: "error", id: sentOf(ws, "history").at(-1).id, reason: "unavailable", detail: "no history" });
  await assert.rejects(off, (e) => e.reason === "unavailable");
  assert.deepEqual(t.errors, []);
  assert.equal(t.c.state, "open");
  t.c.close();
});

test("requests time out; a late reply is ignored; a drop fails what was sent", async () => {
  const t = client({ requestTimeoutMs: 30 });
  let ws = await authenticate(t);
  const slow = t.c.publish("chat:1", "late");
  const started = Date.now();
  await assert.rejects(slow, (e) => e instanceof ChannelError && e.reason === "timeout");
  assert.ok(Date.now() - started >= 25);
  ws.push({ type: "ok", id: sentOf(ws, "publish")[0].id, offset: 1 }); // Nothing to resolve.
  // A per-request timeout overrides the client's.
  const quick = t.c.presence("chat:1", { timeoutMs: 5 });
  await assert.rejects(quick, (e) => e.reason === "timeout");
  // In flight when the connection drops: connection_lost (it may or may not have happened).
  const lost = t.c.publish("chat:1", "lost");
  ws.drop(1006);
  await assert.rejects(lost, (e) => e.reason === "connection_lost");
  // While disconnected, without the opt-in queue: not_connected at once.
  await assert.rejects(t.c.publish("chat:1", 1), (e) => e instanceof ChannelError && e.reason === "not_connected");
  t.c.close();
  await assert.rejects(t.c.publish("chat:1", 1), (e) => e.reason === "closed");
  assert.throws(() => t.c.subscribe("chat:1", { onPublication() {} }), (e) => e.reason === "closed");
});

test("with queueSize, requests made while disconnected go after the resubscriptions", async () => {
  const t = client({ queueSize: 3, requestTimeoutMs: 2000 });
  let ws = await authenticate(t);
  const sub = t.c.subscribe("chat:1", { onPublication() {} });
  ws.push({ type: "subscribed", id: sentOf(ws, "subscribe")[0].id, channel: "chat:1", epoch: "e", offset: 0, recovered: false, publications: [] });
  await sub.ready;
  ws.drop(1006);
  t.c.send("m");
  const queued = t.c.publish("chat:1", "q");
  assert.equal(t.c.queued, 2);
  await until(() => Script.sockets.length === 2, "the reconnect");
  ws = await authenticate(t);
  assert.deepEqual(ws.sent.slice(1).map((e) => e.type), ["subscribe", "message", "publish"]);
  ws.push({ type: "ok", id: sentOf(ws, "publish")[0].id, offset: 1 });
  assert.deepEqual(await queued, { offset: 1 });
  t.c.close();
});

test("a subscription delivers in order, resubscribes with since, and reports gaps", async () => {
  const t = client();
  let ws = await authenticate(t);
  const got = [];
  const gaps = [];
  const infos = [];
  const sub = t.c.subscribe("chat:1", {
    onPublication: (p) => got.push(p.offset),
    onGap: (g) => gaps.push(g),
    onSubscribed: (i) => infos.push(i),
  });
  assert.equal(sub.state, "subscribing");
  assert.throws(() => t.c.subscribe("chat:1", { onPublication() {} }), (e) => e.reason === "already_subscribed");
  let req = sentOf(ws, "subscribe")[0];
  assert.deepEqual(req, { type: "subscribe", channel: "chat:1", id: req.id });
  ws.push({ type: "publication", channel: "chat:1", offset: 9, data: 0 }); // Before subscribed: ignored.
  ws.push({ type: "subscribed", id: req.id, channel: "chat:1", epoch: "E", offset: 3, recovered: false, publications: [] });
  assert.deepEqual(await sub.ready, { channel: "chat:1", epoch: "E", offset: 3, recovered: false, resubscribed: false });
  assert.equal(sub.state, "subscribed");
  for (const offset of [4, 5, 5]) ws.push({ type: "publication", channel: "chat:1", offset, data: offset });
  ws.push({ type: "publication", channel: "chat:other", offset: 6, data: 0 }); // Not subscribed.
  assert.deepEqual(got, [4, 5], "a repeated offset is delivered once");
  assert.deepEqual(sub.since, { epoch: "E", offset: 5 });

  // Reconnect: subscribe again from the last offset seen; the recovered ones arrive in order.
  ws.drop(1006);
  assert.equal(sub.state, "subscribing");
  await until(() => Script.sockets.length === 2, "the reconnect");
  ws = await authenticate(t);
  req = sentOf(ws, "subscribe")[0];
  assert.deepEqual(req.since, { epoch: "E", offset: 5 });
  ws.push({ type: "subscribed", id: req.id, channel: "chat:1", epoch: "E", offset: 7, recovered: true, publications: [
    { type: "publication", channel: "chat:1", offset: 6, data: 6 },
    { type: "publication", channel: "chat:1", offset: 7, data: 7 },
  ] });
  assert.deepEqual(got, [4, 5, 6, 7]);
  assert.deepEqual(gaps, []);
  assert.equal(infos.at(-1).recovered, true);
  assert.equal(infos.at(-1).resubscribed, true);

  // A restart: another epoch, not recovered: a gap, and the new position.
  ws.drop(1012);
  await until(() => Script.sockets.length === 3, "the reconnect");
  ws = await authenticate(t);
  req = sentOf(ws, "subscribe")[0];
  assert.deepEqual(req.since, { epoch: "E", offset: 7 });
  ws.push({ type: "subscribed", id: req.id, channel: "chat:1", epoch: "F", offset: 0, recovered: false, publications: [] });
  assert.deepEqual(gaps, [{ channel: "chat:1", previous: { epoch: "E", offset: 7 }, current: { epoch: "F", offset: 0 } }]);
  ws.push({ type: "publication", channel: "chat:1", offset: 1, data: 1 });
  assert.deepEqual(got, [4, 5, 6, 7, 1]);
  assert.deepEqual(sub.since, { epoch: "F", offset: 1 });
  t.c.close();
});

test("refused subscribes reject ready; ends are reported with their reason", async () => {
  const t = client({ requestTimeoutMs: 40 });
  let ws = await authenticate(t);
  const denied = t.c.subscribe("secret", { onPublication() {} });
  ws.push({ type: "error", id: sentOf(ws, "subscribe")[0].id, reason: "permission_denied", detail: "no grant" });
  await assert.rejects(denied.ready, (e) => e instanceof ChannelError && e.reason === "permission_denied" && e.channel === "secret");
  assert.equal(denied.state, "unsubscribed");
  assert.equal(t.c.subscription("secret"), undefined);
  assert.deepEqual(t.errors, [], "a refusal is not a connection error");

  // No reply at all: ready rejects with timeout, and the client tells the server it gives up.
  const silent = t.c.subscribe("chat:silent", { onPublication() {} });
  await assert.rejects(silent.ready, (e) => e.reason === "timeout");
  assert.equal(sentOf(ws, "unsubscribe").at(-1).channel, "chat:silent");

  // The server ends a subscription (a refresh took the grant away).
  const ended = [];
  const got = [];
  const sub = t.c.subscribe("chat:1", { onPublication: (p) => got.push(p), onUnsubscribed: (r) => ended.push(r) });
  ws.push({ type: "subscribed", id: sentOf(ws, "subscribe").at(-1).id, channel: "chat:1", epoch: "E", offset: 0, recovered: false, publications: [] });
  await sub.ready;
  ws.push({ type: "unsubscribed", channel: "chat:1", reason: "permission_revoked" });
  ws.push({ type: "publication", channel: "chat:1", offset: 1, data: 1 });
  assert.deepEqual(ended, ["permission_revoked"]);
  assert.deepEqual(got, []);
  assert.equal(sub.state, "unsubscribed");

  // unsubscribe(): sent with an id, resolved by the matching unsubscribed.
  const mine = t.c.subscribe("chat:2", { onPublication: (p) => got.push(p), onUnsubscribed: (r) => ended.push(r) });
  ws.push({ type: "subscribed", id: sentOf(ws, "subscribe").at(-1).id, channel: "chat:2", epoch: "E", offset: 0, recovered: false, publications: [] });
  await mine.ready;
  const done = mine.unsubscribe();
  const un = sentOf(ws, "unsubscribe").at(-1);
  assert.equal(un.channel, "chat:2");
  ws.push({ type: "publication", channel: "chat:2", offset: 1, data: 1 }); // In flight: dropped.
  ws.push({ type: "unsubscribed", id: un.id, channel: "chat:2", reason: "client" });
  await done;
  assert.deepEqual(ended, ["permission_revoked", "client"]);
  assert.deepEqual(got, []);

  // A refused resubscription after a reconnect ends the subscription through the callbacks.
  const errs = [];
  const again = t.c.subscribe("chat:3", { onPublication() {}, onUnsubscribed: (r) => ended.push(r), onError: (e) => errs.push(e.reason) });
  ws.push({ type: "subscribed", id: sentOf(ws, "subscribe").at(-1).id, channel: "chat:3", epoch: "E", offset: 0, recovered: false, publications: [] });
  await again.ready;
  ws.drop(1006);
  await until(() => Script.sockets.length === 2, "the reconnect");
  ws = await authenticate(t);
  ws.push({ type: "error", id: sentOf(ws, "subscribe")[0].id, reason: "permission_denied", detail: "gone" });
  assert.deepEqual(errs, ["permission_denied"]);
  assert.deepEqual(ended.at(-1), "permission_denied");
  assert.equal(again.state, "unsubscribed");

  // close() ends the rest: pending ones reject, active ones hear "closed".
  const last = t.c.subscribe("chat:4", { onPublication() {}, onUnsubscribed: (r) => ended.push(r) });
  const pendingPublish = t.c.publish("chat:4", 1);
  t.c.close();
  await assert.rejects(last.ready, (e) => e.reason === "closed");
  await assert.rejects(pendingPublish, (e) => e.reason === "closed");
});

test("a subscribe made while disconnected is sent after authentication, with a given since", async () => {
  const t = client();
  const sub = t.c.subscribe("chat:1", { onPublication() {}, since: { epoch: "E", offset: 2 } });
  const ws = await authenticate(t);
  const req = sentOf(ws, "subscribe")[0];
  assert.deepEqual(req.since, { epoch: "E", offset: 2 });
  ws.push({ type: "subscribed", id: req.id, channel: "chat:1", epoch: "E", offset: 2, recovered: true, publications: [] });
  assert.equal((await sub.ready).recovered, true);
  t.c.close();
});
