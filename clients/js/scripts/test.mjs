// Runs `node --test` on the given files with a standard WebSocket: Node 22+ has one; Node 20.10+
// gets it from --experimental-websocket.
import { spawnSync } from "node:child_process";

const files = process.argv.slice(2);
const flags = typeof WebSocket === "function" ? [] : ["--experimental-websocket"];
const run = spawnSync(process.execPath, [...flags, "--test", "--test-concurrency=1", ...files], {
  stdio: "inherit",
});
process.exit(run.status ?? 1);
