// Test helpers: the real `palisade` binary on 127.0.0.1, HS256 tokens, the admin API.
import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { mkdtempSync, writeFileSync, rmSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { createInterface } from "node:readline";

/** The WebSocket the tests inject: node's standard one, else the `ws` package's. */
export const WebSocketImpl = globalThis.WebSocket ?? (await import("ws")).WebSocket;

export const SECRET = "integration-test-secret-that-is-long-enough-0123456789";

const here = dirname(fileURLToPath(import.meta.url));
/** The binary under test: $PALISADE_BIN, else the workspace's debug build. */
export const BIN = process.env.PALISADE_BIN ?? resolve(here, "../../../target/debug/palisade");

const b64url = (buf) => Buffer.from(buf).toString("base64url");

/** An HS256 token for `userId` expiring `ttlSecs` from now, with `extra` claims (e.g. `channels`). */
export function token(userId, ttlSecs, extra = {}) {
  const now = Math.floor(Date.now() / 1000);
  const head = b64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const body = b64url(JSON.stringify({ user_id: userId, iat: now, exp: now + ttlSecs, ...extra }));
  const sig = createHmac("sha256", SECRET).update(`${head}.${body}`).digest("base64url");
  return `${head}.${body}.${sig}`;
}

/**
 * Starts palisade with the base test configuration plus `overrides` (TOML dotted keys) and
 * resolves with `{ secure, admin, url, stop(), kill() }` once it prints its addresses.
 */
export async function startServer(overrides = {}) {
  const dir = mkdtempSync(join(tmpdir(), "palisade-js-"));
  const keys = {
    "echo.listen": '"127.0.0.1:0"',
    "secure.listen": '"127.0.0.1:0"',
    "admin.listen": '"127.0.0.1:0"',
    "auth.leeway_secs": "0",
    "log.dir": JSON.stringify(join(dir, "log")),
    "log.level": '"info"',
    ...overrides,
  };
  const config = join(dir, "palisade.toml");
  writeFileSync(config, Object.entries(keys).map(([k, v]) => `${k} = ${v}\n`).join(""));
  const env = { ...process.env, PALISADE_JWT_SECRET: SECRET };
  delete env.PALISADE_LOG_LEVEL;
  delete env.PALISADE_LOG_DIR;
  const child = spawn(BIN, ["--config", config], { env, stdio: ["ignore", "pipe", "pipe"] });
  let stderr = "";
  child.stderr.on("data", (d) => (stderr += d));
  const exited = new Promise((r) => child.once("exit", r));
  const addrs = await new Promise((resolveAddrs, reject) => {
    const found = {};
    const timer = setTimeout(() => reject(new Error(`palisade did not start:\n${stderr}`)), 15_000);
    child.once("error", reject);
    createInterface({ input: child.stdout }).on("line", (line) => {
      const m = line.match(/^palisade: (echo|secure|admin) listening on (?:[a-z]+:\/\/)?([^/\s]+)/);
      if (m) found[m[1]] = m[2];
      if (found.echo && found.secure && found.admin) {
        clearTimeout(timer);
        resolveAddrs(found);
      }
    });
  });
  return {
    secure: addrs.secure,
    admin: addrs.admin,
    url: `ws://${addrs.secure}/`,
    /** SIGTERM, and wait for the exit. */
    async stop() {
      child.kill("SIGTERM");
      await exited;
      rmSync(dir, { recursive: true, force: true });
    },
    stderr: () => stderr,
    console: () => {
      try {
        return readFileSync(join(dir, "log", "palisade.log"), "utf8");
      } catch {
        return "";
      }
    },
  };
}

/** An admin API call; resolves with `{ status, body }`. */
export async function admin(server, method, path) {
  const res = await fetch(`http://${server.admin}${path}`, { method });
  return { status: res.status, body: await res.text() };
}

/** Resolves with the first event of `client` named `event` for which `pred` holds. */
export function next(client, event, pred = () => true, timeoutMs = 10_000) {
  return new Promise((resolveEvent, reject) => {
    const t = setTimeout(() => {
      off();
      reject(new Error(`no ${event} event within ${timeoutMs} ms`));
    }, timeoutMs);
    const off = client.on(event, (...args) => {
      if (!pred(...args)) return;
      clearTimeout(t);
      off();
      resolveEvent(args.length === 1 ? args[0] : args);
    });
  });
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * A WebSocket whose connection the test can cut from the client side: `drop()` closes the real
 * socket and reports a close without a close frame (1006) at once, as a lost network would.
 */
export class DroppableWebSocket {
  static last = null;
  constructor(url, protocols) {
    this.inner = new WebSocketImpl(url, protocols);
    this.dropped = false;
    this.onopen = this.onmessage = this.onclose = this.onerror = null;
    this.inner.onopen = (ev) => this.onopen?.(ev);
    this.inner.onmessage = (ev) => !this.dropped && this.onmessage?.(ev);
    this.inner.onerror = (ev) => !this.dropped && this.onerror?.(ev);
    this.inner.onclose = (ev) => !this.dropped && this.onclose?.(ev);
    DroppableWebSocket.last = this;
  }
  get readyState() {
    return this.dropped ? 3 : this.inner.readyState;
  }
  get protocol() {
    return this.inner.protocol;
  }
  send(data) {
    this.inner.send(data);
  }
  close(code, reason) {
    this.inner.close(code, reason);
  }
  drop() {
    this.dropped = true;
    this.inner.close();
    this.onclose?.({ code: 1006, reason: "" });
  }
}

/** Resolves when `pred()` holds (polled), or rejects after `timeoutMs`. */
export async function until(pred, what, timeoutMs = 10_000) {
  const end = Date.now() + timeoutMs;
  while (!pred()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}
