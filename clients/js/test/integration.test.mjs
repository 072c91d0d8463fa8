// The client against the real `palisade` binary on 127.0.0.1 ($PALISADE_BIN, default
// target/debug/palisade): auth, refresh across token expiry, reconnect after a restart, a
// revoked session (`never`), rate-limit advice, an expired token (`after_refresh`).
import { afterEach, test } from "node:test";
import assert from "node:assert/strict";
import { PalisadeClient } from "../dist/index.js";
import { WebSocketImpl, admin, next, sleep, startServer, token } from "./support.mjs";

const fast = { baseMs: 50, capMs: 400 };

// Every client is closed after its test, passed or failed, so nothing keeps reconnecting.
const open = [];
afterEach(() => {
  for (const c of open.splice(0)) c.close();
});

function connect(server, opts = {}) {
  const reasons = [];
  const c = new PalisadeClient(opts.url ?? server.url, {
    getToken: async (reason) => {
      reasons.push(reason);
      return (opts.token ?? (() => token("42", 600)))(reason);
    },
    backoff: fast,
    WebSocket: WebSocketImpl,
    ...opts.client,
  });
  open.push(c);
  return { c, reasons };
}

async function echo(c, data) {
  const reply = next(c, "message");
  c.send(data);
  return reply;
}

test("authenticates and exchanges data", async () => {
  const server = await startServer();
  try {
    const { c } = connect(server);
    await c.waitFor("open");
    assert.equal(c.currentSession.userId, "42");
    assert.equal(c.currentSession.sessionId.length, 32);
    assert.equal(await echo(c, { n: 1 }), 'Server received: {"n":1}');
    c.close();
    assert.equal(c.state, "closed");
  } finally {
    await server.stop();
  }
});

test("refreshes on expiring and keeps the session past the first token's exp", async () => {
  const server = await startServer({ "auth.expiry_warning_secs": "2" });
  try {
    // The first token lives 3 s; refreshes get 600 s ones.
    const { c, reasons } = connect(server, {
      token: (reason) => token("42", reason === "refresh" ? 600 : 3),
    });
    await c.waitFor("open");
    const states = [];
    c.on("state", (s) => states.push(s));
    const firstExp = c.currentSession.exp;
    await sleep(4000);
    assert.equal(await echo(c, "still here"), 'Server received: "still here"');
    assert.deepEqual(reasons, ["connect", "refresh"]);
    assert.ok(c.currentSession.exp > firstExp + 100, "the session carries the new exp");
    assert.deepEqual(states, [], "no reconnect happened");
    c.close();
  } finally {
    await server.stop();
  }
});

test("an expired session token reconnects after_refresh", async () => {
  const server = await startServer({ "auth.expiry_warning_secs": "0" });
  try {
    const { c, reasons } = connect(server, { token: () => token("42", 2) });
    await c.waitFor("open");
    const err = await next(c, "error", () => true, 8000);
    assert.equal(err.reason, "token_expired");
    assert.equal(err.reconnect, "after_refresh");
    assert.equal(err.fatal, false);
    await c.waitFor("open");
    assert.deepEqual(reasons, ["connect", "after_refresh"]);
    c.close();
  } finally {
    await server.stop();
  }
});

test("reconnects after a server restart on the same address", async () => {
  const first = await startServer();
  const port = first.secure.split(":").pop();
  const { c } = connect(first, { client: { queueSize: 10 } });
  let second;
  try {
    await c.waitFor("open");
    const firstSession = c.currentSession.sessionId;
    const bye = next(c, "error");
    await first.stop();
    const err = await bye;
    assert.equal(err.reason, "shutting_down");
    assert.equal(err.reconnect, "backoff");
    assert.ok(["reconnecting", "connecting"].includes(c.state), c.state);
    // Queued while the server is down, delivered after the reconnect.
    const reply = next(c, "message", () => true, 20_000);
    c.send("queued");
    second = await startServer({ "secure.listen": `"127.0.0.1:${port}"` });
    await c.waitFor("open", 20_000);
    assert.notEqual(c.currentSession.sessionId, firstSession);
    assert.equal(await reply, 'Server received: "queued"');
    c.close();
  } finally {
    c.close();
    await second?.stop();
  }
});

test("a revoked session stops for good (never)", async () => {
  const server = await startServer();
  try {
    const { c } = connect(server);
    await c.waitFor("open");
    const id = c.currentSession.sessionId;
    const fatal = next(c, "error", (e) => e.fatal);
    const res = await admin(server, "DELETE", `/sessions/${id}`);
    assert.ok(res.status >= 200 && res.status < 300, `revoke answered ${res.status}`);
    const err = await fatal;
    assert.equal(err.reason, "revoked");
    assert.equal(err.reconnect, "never");
    assert.equal(err.code, 1008);
    assert.equal(c.state, "closed");
    await sleep(300);
    const sessions = JSON.parse((await admin(server, "GET", "/sessions")).body);
    assert.equal(JSON.stringify(sessions).includes('"42"'), false, "no new session");
  } finally {
    await server.stop();
  }
});

test("a rate limit closes with backoff advice and the firewall's retry_after_ms", async () => {
  const server = await startServer({
    "firewall.messages_per_sec": "2",
    "firewall.message_burst": "3",
  });
  try {
    const { c } = connect(server);
    await c.waitFor("open");
    const limited = next(c, "error", (e) => e.reason === "rate_limited");
    for (let i = 0; i < 10; i++) {
      try {
        c.send(i);
      } catch {
        break; // Closed by the limit already.
      }
    }
    const err = await limited;
    assert.equal(err.reconnect, "backoff");
    assert.ok(err.retryAfterMs > 0 && err.retryAfterMs <= 1000, `${err.retryAfterMs}`);
    assert.equal(err.code, 1008);
    const started = Date.now();
    await c.waitFor("open", 10_000);
    assert.ok(Date.now() - started >= err.retryAfterMs - 50, "waited retry_after_ms");
    c.close();
  } finally {
    await server.stop();
  }
});
