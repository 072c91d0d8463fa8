// Runs `node --test` on the given files with a standard WebSocket where node has one: Node 22+
// natively, Node 20.10+ with --experimental-websocket. Older nodes run the tests with the `ws`
// package (a devDependency) injected as the client's WebSocket constructor.
import { spawnSync } from "node:child_process";

const files = process.argv.slice(2);
const flagWorks =
  typeof WebSocket !== "function" &&
  spawnSync(process.execPath, ["--experimental-websocket", "-e", "0"]).status === 0;
const flags = flagWorks ? ["--experimental-websocket"] : [];
const run = spawnSync(process.execPath, [...flags, "--test", "--test-concurrency=1", ...files], {
  stdio: "inherit",
});
process.exit(run.status ?? 1);
