#!/usr/bin/env python3
"""A real WebSocket echo server and client (the `websockets` package) for the L7 tests
(tests/tests/mesh_l7.rs).

    ws_peer.py server HOST:PORT NAME   echo every message; prints "listening" when bound
    ws_peer.py client URI              run every check; exit 0 and print "ok", or exit 1 with
                                       what differed on stderr

The client sends text and binary messages (up to 1 MiB) one at a time, each checked against its
echo, then a second connection sends 100 messages before reading any echo; both close with
code 1000. The server's handshake answer carries x-instance: NAME.
"""

import asyncio
import os
import sys

from websockets.asyncio.client import connect
from websockets.asyncio.server import serve
from websockets.exceptions import WebSocketException

TIMEOUT = 20.0


async def run_server(addr, name):
    host, port = addr.rsplit(":", 1)

    async def echo(ws):
        async for message in ws:
            await ws.send(message)

    def tag(connection, request, response):
        response.headers["x-instance"] = name
        return response

    async with serve(echo, host, int(port), max_size=None, process_response=tag):
        print("listening", flush=True)
        await asyncio.Future()


class Mismatch(Exception):
    pass


async def run_client(uri):
    # proxy=None: never through a proxy from the environment; the test means the mesh.
    async with connect(uri, proxy=None, max_size=None, open_timeout=TIMEOUT) as ws:
        instance = ws.response.headers.get("x-instance", "")
        messages = ["hello through the mesh", b"\x00\x01binary\xff", "x" * 70000, os.urandom(1 << 20)]
        for i, m in enumerate(messages):
            await ws.send(m)
            back = await asyncio.wait_for(ws.recv(), TIMEOUT)
            if back != m:
                raise Mismatch(f"message {i} ({type(m).__name__}, {len(m)}): echo differs")
        await ws.close(1000, "done")
        if ws.close_code != 1000:
            raise Mismatch(f"close code {ws.close_code}, want 1000")

    async with connect(uri, proxy=None, max_size=None, open_timeout=TIMEOUT) as ws:
        sent = [f"burst-{i}" for i in range(100)]
        for m in sent:
            await ws.send(m)
        back = [await asyncio.wait_for(ws.recv(), TIMEOUT) for _ in sent]
        if back != sent:
            raise Mismatch("a burst of 100 messages came back different or out of order")
    print(f"ok instance={instance}", flush=True)


def main(argv):
    if len(argv) >= 4 and argv[1] == "server":
        asyncio.run(run_server(argv[2], argv[3]))
        return 0
    if len(argv) >= 3 and argv[1] == "client":
        try:
            asyncio.run(asyncio.wait_for(run_client(argv[2]), 3 * TIMEOUT))
        except Mismatch as e:
            print(f"ws_peer client: {e}", file=sys.stderr)
            return 1
        except (WebSocketException, OSError, asyncio.TimeoutError) as e:
            print(f"ws_peer client: {type(e).__name__}: {e}", file=sys.stderr)
            return 1
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
