#!/usr/bin/env python3
"""Talks to the agent's control socket directly, as any local program can:
one JSON request per connection, one JSON answer.

usage: control.py SOCKET start            -> prints the login's nonce
       control.py SOCKET login TOKEN      -> prints the agent's answer (JSON)
"""
import json
import socket
import sys


def ask(path, request):
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    s.sendall((json.dumps(request) + "\n").encode())
    data = b""
    while not data.endswith(b"\n"):
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    return json.loads(data)


path, op = sys.argv[1], sys.argv[2]
if op == "start":
    answer = ask(path, {"op": "login_start"})
    print(answer.get("nonce") or json.dumps(answer))
elif op == "login":
    print(json.dumps(ask(path, {"op": "login", "id_token": sys.argv[3]})))
