# A real HTTP/1.1 + HTTP/2 backend for the end-to-end tests: hypercorn
# (Debian's python3-hypercorn), which switches a connection to HTTP/2 when a
# request asks with `Upgrade: h2c` — as Apache's mod_http2, Envoy and Go's
# h2c handler do. Logs every request it serves as one JSON line (method,
# path, HTTP version, headers) to the file named in argv[2]; prints its port on the
# first line once it accepts connections.
import asyncio
import json
import socket
import sys
import threading
import time

from hypercorn.asyncio import serve
from hypercorn.config import Config

host, log_path = sys.argv[1], sys.argv[2]
log = open(log_path, "a")


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    headers = {k.decode("latin1"): v.decode("latin1") for k, v in scope["headers"]}
    entry = {"method": scope["method"], "path": scope["path"], "version": scope["http_version"], "headers": headers}
    log.write(json.dumps(entry) + "\n")
    log.flush()
    # /api/slow/…: answered after 300 ms, so concurrent requests overlap.
    if scope["path"].startswith("/api/slow/"):
        await asyncio.sleep(0.3)
    body = f"{scope['http_version']} {scope['method']} {scope['path']}".encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})


probe = socket.socket()
probe.bind((host, 0))
port = probe.getsockname()[1]
probe.close()


def announce():
    while True:
        try:
            socket.create_connection((host, port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.05)
    print(port, flush=True)


threading.Thread(target=announce, daemon=True).start()
config = Config()
config.bind = [f"{host}:{port}"]
config.accesslog = None
config.errorlog = "-"
asyncio.run(serve(app, config))
