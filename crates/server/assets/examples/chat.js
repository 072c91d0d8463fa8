// The chat example: the palisade-client TypeScript client (clients/js/dist, embedded by the
// server) against the secure endpoint. No inline script: the page's policy is script-src 'self'.
import { PalisadeClient } from "/examples/palisade-client/index.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.hash.slice(1));
$("url").value = params.get("ws") ?? `ws://${location.hostname || "127.0.0.1"}:8888/`;
$("token").value = params.get("token") ?? "";

function log(text, kind = "") {
  const li = document.createElement("li");
  li.textContent = text;
  if (kind) li.className = kind;
  $("log").prepend(li);
}

let client = null;

function connect() {
  client?.close();
  const token = $("token").value.trim();
  client = new PalisadeClient($("url").value.trim(), {
    // A real application fetches a fresh token from its login service here.
    getToken: async () => token,
    queueSize: 20,
  });
  client.on("state", (state) => {
    $("state").textContent = state;
    const s = client.currentSession;
    $("session").textContent = s ? `(user ${s.userId}, session ${s.sessionId.slice(0, 8)})` : "";
    const open = state === "open";
    $("text").disabled = $("send").disabled = !open;
  });
  client.on("message", (data) => log(typeof data === "string" ? data : JSON.stringify(data)));
  client.on("error", (e) =>
    log(`${e.fatal ? "stopped" : "error"}: ${e.reason} (${e.message})${e.reconnect ? `, advice ${e.reconnect}` : ""}`, "error"),
  );
}

$("connect").addEventListener("submit", (ev) => {
  ev.preventDefault();
  connect();
});
$("say").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const text = $("text").value;
  if (!text || !client) return;
  client.send({ text });
  log(`you: ${text}`, "you");
  $("text").value = "";
});
if ($("token").value) connect();
