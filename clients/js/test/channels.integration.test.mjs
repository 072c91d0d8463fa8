// Channels against the real `palisade` binary ($PALISADE_BIN, default target/debug/palisade):
// subscribe and publish between two clients, typed refusals, presence and history, a restart
// (new epoch: the resubscription reports a gap), and a dropped connection recovered from the
// server's history (recovered: true, nothing missed).
import { afterEach, test } from "node:test";
import assert from "node:assert/strict";
import { ChannelError, PalisadeClient } from "../dist/index.js";
import { DroppableWebSocket, WebSocketImpl, sleep, startServer, token, until } from "./support.mjs";

const fast = { baseMs: 50, capMs: 400 };
const ALL = ["subscribe", "publish", "presence", "history"];

const open = [];
afterEach(() => {
  for (const c of open.splice(0)) c.close();
});

/** A client for `userId` whose tokens carry `grants` as the `channels` claim. */
function connect(server, userId, grants, opts = {}) {
  const c = new PalisadeClient(opts.url ?? server.url, {
    getToken: async () => {
      await opts.gate?.();
      return token(userId, 600, { channels: grants });
    },
    backoff: fast,
    WebSocket: WebSocketImpl,
    ...opts.client,
  });
  open.push(c);
  return c;
}

/** A subscription that records what it is told. */
function record(c, channel) {
  const log = { publications: [], gaps: [], subscribed: [], ended: [] };
  const sub = c.subscribe(channel, {
    onPublication: (p) => log.publications.push(p),
    onGap: (g) => log.gaps.push(g),
    onSubscribed: (i) => log.subscribed.push(i),
    onUnsubscribed: (r) => log.ended.push(r),
  });
  return { sub, log };
}

test("two clients subscribe and publish; refusals are typed; presence and unsubscribe", async () => {
  const server = await startServer();
  try {
    const alice = connect(server, "alice", { "chat:*": ALL });
    const bob = connect(server, "bob", { "chat:*": ["subscribe", "publish"] });
    await Promise.all([alice.waitFor("open"), bob.waitFor("open")]);
    const a = record(alice, "chat:room1");
    const b = record(bob, "chat:room1");
    const info = await a.sub.ready;
    assert.equal(info.recovered, false);
    assert.equal(info.offset, 0);
    await b.sub.ready;

    assert.deepEqual(await bob.publish("chat:room1", { text: "hi" }), { offset: 1 });
    assert.deepEqual(await alice.publish("chat:room1", [1, 2]), { offset: 2 });
    await until(() => a.log.publications.length === 2 && b.log.publications.length === 2, "both publications");
    assert.deepEqual(a.log.publications, [
      { channel: "chat:room1", offset: 1, data: { text: "hi" }, info: { userId: "bob" } },
      { channel: "chat:room1", offset: 2, data: [1, 2], info: { userId: "alice" } },
    ]);
    assert.deepEqual(b.log.publications, a.log.publications);

    const users = (await alice.presence("chat:room1")).sort((x, y) => x.userId.localeCompare(y.userId));
    assert.deepEqual(users, [{ userId: "alice", sessions: 1 }, { userId: "bob", sessions: 1 }]);

    // No grant: typed rejections, and both connections go on.
    await assert.rejects(bob.publish("news", 1), (e) => e instanceof ChannelError && e.reason === "permission_denied");
    await assert.rejects(bob.presence("chat:room1"), (e) => e.reason === "permission_denied");
    const secret = bob.subscribe("secret:x", { onPublication() {} });
    await assert.rejects(secret.ready, (e) => e instanceof ChannelError && e.reason === "permission_denied");
    await assert.rejects(alice.publish("bad channel", 1), (e) => e.reason === "bad_channel");
    // No history kept by this server.
    await assert.rejects(alice.history("chat:room1"), (e) => e.reason === "unavailable");
    assert.equal(bob.state, "open");

    await b.sub.unsubscribe();
    assert.deepEqual(b.log.ended, ["client"]);
    await alice.publish("chat:room1", "after");
    await until(() => a.log.publications.length === 3, "the third publication");
    await sleep(100);
    assert.equal(b.log.publications.length, 2, "nothing after unsubscribe");
  } finally {
    await server.stop();
  }
});

test("after a server restart the subscription is restored and reports the gap (new epoch)", async () => {
  const first = await startServer({ "channels.history_size": "10" });
  const port = first.secure.split(":").pop();
  const c = connect(first, "42", { "chat:*": ALL });
  let second;
  try {
    await c.waitFor("open");
    const r = record(c, "chat:e");
    const before = await r.sub.ready;
    await c.publish("chat:e", "before");
    await until(() => r.log.publications.length === 1, "the publication");
    await first.stop();
    await until(() => r.sub.state === "subscribing", "the subscription to wait");
    second = await startServer({ "secure.listen": `"127.0.0.1:${port}"`, "channels.history_size": "10" });
    await until(() => r.log.subscribed.length === 2, "the resubscription", 20_000);
    const after = r.log.subscribed[1];
    assert.equal(after.resubscribed, true);
    assert.equal(after.recovered, false);
    assert.notEqual(after.epoch, before.epoch, "a restart starts a new epoch");
    assert.deepEqual(r.log.gaps, [
      { channel: "chat:e", previous: { epoch: before.epoch, offset: 1 }, current: { epoch: after.epoch, offset: 0 } },
    ]);
    // Live again in the new epoch.
    assert.deepEqual(await c.publish("chat:e", "after"), { offset: 1 });
    await until(() => r.log.publications.length === 2, "the new publication");
    assert.deepEqual(r.log.publications.map((p) => p.data), ["before", "after"]);
    assert.deepEqual(r.sub.since, { epoch: after.epoch, offset: 1 });
  } finally {
    c.close();
    await second?.stop();
  }
});

test("a dropped connection resubscribes with since and recovers the missed publications", async () => {
  const server = await startServer({ "channels.history_size": "10" });
  try {
    const publisher = connect(server, "p", { "chat:*": ALL });
    // The reader's reconnect waits for the gate, so the test publishes while it is away.
    let hold = null;
    const reader = connect(server, "r", { "chat:*": ALL }, {
      gate: () => hold?.promise,
      client: { WebSocket: DroppableWebSocket },
    });
    await Promise.all([publisher.waitFor("open"), reader.waitFor("open")]);
    const readerSocket = DroppableWebSocket.last;
    const r = record(reader, "chat:r");
    const { epoch } = await r.sub.ready;
    for (const n of [1, 2]) await publisher.publish("chat:r", n);
    await until(() => r.log.publications.length === 2, "two live publications");

    let release;
    hold = { promise: new Promise((res) => (release = res)) };
    readerSocket.drop();
    assert.equal(r.sub.state, "subscribing");
    for (const n of [3, 4]) await publisher.publish("chat:r", n);
    await until(() => reader.state === "connecting", "the reader to wait for its token");
    release();
    await until(() => r.log.subscribed.length === 2, "the resubscription");
    assert.deepEqual(r.log.subscribed[1], { channel: "chat:r", epoch, offset: 4, recovered: true, resubscribed: true });
    assert.deepEqual(r.log.gaps, []);
    assert.deepEqual(r.log.publications.map((p) => [p.offset, p.data]), [[1, 1], [2, 2], [3, 3], [4, 4]]);
    // Live publications follow the recovered ones.
    await publisher.publish("chat:r", 5);
    await until(() => r.log.publications.length === 5, "the live publication");
    assert.equal(r.log.publications[4].offset, 5);
    // The history holds them too.
    const h = await reader.history("chat:r", { limit: 2 });
    assert.equal(h.epoch, epoch);
    assert.deepEqual(h.publications.map((p) => p.data), [4, 5]);
  } finally {
    await server.stop();
  }
});
