// Runs the browser client of docs/subprotocol.md (the test puts it where the SNIPPET line is)
// in Node's standard WebSocket, and prints what happens as JSON lines for the Rust test.
// Arguments: the server URL, then the tokens that getToken() hands out, one per call.
const [url, ...tokens] = process.argv.slice(2);
const log = (event) => console.log(JSON.stringify({ t: Date.now() / 1000, ...event }));
let authed = false;
let sessions = 0;
const Base = globalThis.WebSocket;
globalThis.WebSocket = class extends Base {
  constructor(...args) {
    super(...args);
    log({ event: "open_attempt", protocols: args[1] });
    this.addEventListener("message", (e) => {
      const envelope = JSON.parse(e.data);
      if (envelope.type === "authenticated") { authed = true; sessions += 1; }
      if (envelope.type !== "message") log({ event: "recv", envelope });
    });
    this.addEventListener("close", (e) => {
      authed = false;
      log({ event: "close", code: e.code, reason: e.reason });
    });
  }
};
let handed = 0;
async function getToken() {
  if (handed >= tokens.length) { log({ event: "out_of_tokens" }); process.exit(2); }
  log({ event: "token", index: handed });
  return tokens[handed++];
}

// SNIPPET

let n = 0;
const client = palisade(url, getToken, (data) => {
  log({ event: "data", data });
  if (sessions === 2) { log({ event: "done" }); process.exit(0); }
});
setInterval(() => { if (authed) client.send(++n); }, 100);
setTimeout(() => { log({ event: "timeout" }); process.exit(3); }, 30000);
