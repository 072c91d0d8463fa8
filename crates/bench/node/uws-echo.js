/* uws-echo: a benchmark baseline (`cargo xtask bench`).
 *
 * uWebSockets.js's own examples/EchoServer.js: one App, one `ws('/*')` route with the
 * example's options, every text and binary message sent back unchanged with its opcode.
 * It must stay as close as possible to that example: do not optimise it. The only
 * departures: the native addon is loaded by path (see below), the listen address comes from
 * `--listen HOST:PORT` (port 0: any free port), the address actually bound is printed on
 * stdout (one line) for the orchestrator, and the example's console.log on every open, drain
 * and close is left out (a print per connection would slow the baseline in the handshake
 * scenario).
 *
 * uWebSockets.js is C++ (uWebSockets and uSockets) behind a Node.js addon: the messages
 * cross into JavaScript, so this is not the C++ library alone. It is the only uWebSockets
 * build installable from the package registries the benchmark may use (upstream v20.30.0's
 * addon as republished by @trufflesuite/uws-js-unofficial); see docs/benchmarks.md.
 */
'use strict';

// The package's own entry point falls back to a pure-JavaScript imitation (over `ws`) when
// the native addon does not load; the benchmark wants the addon or nothing, so load it by path.
const addon = `uws_${process.platform}_${process.arch}_${process.versions.modules}.node`;
const uWS = require(`@trufflesuite/uws-js-unofficial/binaries/${addon}`);

let listen = '127.0.0.1:0';
const args = process.argv.slice(2);
for (let i = 0; i < args.length; i++) {
  if (args[i] === '--listen' && i + 1 < args.length) listen = args[++i];
}
const colon = listen.lastIndexOf(':');
const host = listen.slice(0, colon);
const port = Number(listen.slice(colon + 1));

const app = uWS.App({}).ws('/*', {
  /* Options */
  compression: uWS.SHARED_COMPRESSOR,
  maxPayloadLength: 16 * 1024 * 1024,
  idleTimeout: 10,
  /* Handlers */
  message: (ws, message, isBinary) => {
    /* Ok is false if backpressure was built up, wait for drain */
    let ok = ws.send(message, isBinary);
  },
}).any('/*', (res, req) => {
  res.end('Nothing to see here!');
}).listen(host, port, (token) => {
  if (token) {
    process.stdout.write(`uws-echo listening on ${host}:${uWS.us_socket_local_port(token)}\n`);
  } else {
    process.stderr.write(`uws-echo: cannot listen on ${listen}\n`);
    process.exit(1);
  }
});
