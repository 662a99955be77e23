# A WebSocket echo server (python3-websockets) on argv[1]; prints its port.
# Offers permessage-deflate, as websockets does by default.
import asyncio
import sys

import websockets


async def echo(ws, path=None):
    # /whoami: first says who the request said it was (its Authorization),
    # as a debugging endpoint of a real service might.
    if (path or getattr(ws, "path", "")) == "/whoami":
        await ws.send("you are " + ws.request_headers.get("Authorization", "nobody"))
    # /whoami-frag: the same, as one message in two fragments that split the
    # Authorization in its middle (as a service streaming its output does).
    if (path or getattr(ws, "path", "")) == "/whoami-frag":
        said = "you are " + ws.request_headers.get("Authorization", "nobody")
        await ws.send([said[:20], said[20:]])
    async for msg in ws:
        await ws.send(msg)


def cookie(path, request_headers):
    # A service that starts a session for whoever the request says it is
    # (the Authorization it carried) and hands back its cookie.
    if request_headers.get("Authorization"):
        return [("Set-Cookie", "session=svc-7f3a91; HttpOnly")]
    return []


async def main():
    async with websockets.serve(echo, sys.argv[1], 0, extra_headers=cookie) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        print(port, flush=True)
        await asyncio.Future()


asyncio.run(main())
