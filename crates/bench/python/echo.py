"""python-websockets-echo: a benchmark baseline (`cargo xtask bench`).

The echo server from the `websockets` documentation (`websockets.asyncio.server.serve`
with its default settings, `async for message in websocket: await websocket.send(message)`),
run from a venv that the benchmark creates under target/ with `websockets>=16,<17`. It must
stay as close as possible to that example: do not optimise it. The only departures: the
listen address comes from `--listen HOST:PORT` (port 0: any free port) and the address
actually bound is printed on stdout (one line, flushed) for the orchestrator.
"""

import argparse
import asyncio

from websockets.asyncio.server import serve


async def echo(websocket):
    async for message in websocket:
        await websocket.send(message)


async def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT (port 0: any)")
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    async with serve(echo, host, int(port)) as server:
        bound = server.sockets[0].getsockname()
        print(f"python-websockets-echo listening on {bound[0]}:{bound[1]}", flush=True)
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
