# A real HTTP backend for the end-to-end tests: Python's http.server
# (HTTP/1.1, keep-alive), logging every request it receives as one JSON line
# (method, path, headers, body) to the file named in argv[2], so tests can
# assert on what the server got. Prints its port on the first line. With a
# certificate and key (argv[3], argv[4]) it speaks HTTPS.
import gzip
import http.server
import json
import re
import urllib.parse
import sys

host, log_path = sys.argv[1], sys.argv[2]
log = open(log_path, "a")
# The headers of every request so far, for the request-log endpoint.
seen = []
# Set by /api/v1/events-next: the event stream's second event may go.
import threading
next_event = threading.Event()


def order(i):
    return {
        "id": i,
        "customer": {"name": "Ann Smith", "card": "4111 1111 1111 1111", "email": "ann@example.com", "ssn": "123-45-6789"},
        "note": "call 4111111111111111 if needed",
        "total": 12.5,
        "paid": True,
    }


class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def body(self):
        self.trailers = {}
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            out = b""
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    # The trailer section, up to its empty line.
                    while True:
                        line = self.rfile.readline()
                        if line in (b"\r\n", b"\n", b""):
                            return out
                        k, _, v = line.decode("latin1").partition(":")
                        self.trailers[k.strip().lower()] = v.strip()
                out += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("content-length") or 0)
        return self.rfile.read(n) if n else b""

    def reply(self, status, payload, ctype, encoding=None, extra=()):
        self.send_response(status)
        self.send_header("content-type", ctype)
        if encoding:
            self.send_header("content-encoding", encoding)
        for k, v in extra:
            self.send_header(k, v)
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def any(self):
        body = self.body()
        rec = {"method": self.command, "path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()},
               "body": body.decode("latin1"), "trailers": self.trailers}
        log.write(json.dumps(rec) + "\n")
        log.flush()
        seen.append(rec["headers"])
        path = self.path.split("?")[0]
        if path == "/api/v1/request-log":
            # Keeps requests and shows them later, as a request log or a stored
            # webhook does: the previous request's headers.
            return self.reply(200, json.dumps(seen[-2] if len(seen) > 1 else {}).encode(), "application/json")
        if path.startswith("/api/v1/orders"):
            n = 20000 if "big=1" in self.path else 1
            if "html=1" in self.path:
                # A card as a web page formats it: each group in its own span.
                groups = order(7)["customer"]["card"].split()
                spans = " ".join("<span>%s</span>" % g for g in groups)
                return self.reply(200, ("<table><tr><td>%s</td></tr></table>\n" % spans).encode(), "text/html; charset=utf-8")
            if "hidden_gz=1" in self.path:
                # gzip bytes labelled as plain text (no content coding): the user can gunzip them.
                return self.reply(200, gzip.compress(json.dumps(order(7)).encode()), "text/plain")
            if "bom=1" in self.path:
                # Declared UTF-8, but a UTF-16 byte order mark: browsers decode it as UTF-16.
                c = order(7)["customer"]
                return self.reply(200, ("card %s\n" % c["card"]).encode("utf-16"), "text/plain; charset=utf-8")
            if "ct2=1" in self.path:
                # Two Content-Type fields: the second says UTF-16.
                self.send_response(200)
                self.send_header("content-type", "text/plain; charset=utf-8")
                self.send_header("content-type", "text/plain; charset=utf-16")
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")
                return
            if "utf16=1" in self.path:
                # Text in a charset that is not ASCII-compatible: the client decodes it.
                c = order(7)["customer"]
                return self.reply(200, ("card %s\n" % c["card"]).encode("utf-16"), "text/plain; charset=utf-16")
            if "csv=1" in self.path:
                c = order(7)["customer"]
                csv = "id,name,ssn\n7,%s,%s\n" % (c["name"], c["ssn"])
                return self.reply(200, csv.encode(), "text/csv")
            doc = order(7) if n == 1 else [order(i) for i in range(n)]
            payload = json.dumps(doc).encode()
            if "hdr=1" in self.path:
                # The customer's data in response headers too, as a download or a redirect puts it.
                c = order(7)["customer"]
                return self.reply(200, payload, "application/json", None, [
                    ("x-customer-email", c["email"]),
                    ("content-disposition", 'attachment; filename="card %s.json"' % c["card"]),
                    ("link", "</customers/by-email/%s>; rel=related" % c["email"]),
                ])
            if "gz=1" in self.path and "gzip" in self.headers.get("accept-encoding", ""):
                return self.reply(200, gzip.compress(payload), "application/json", "gzip")
            if "br=1" in self.path:
                return self.reply(200, payload, "application/json", "br")
            rng = self.headers.get("range", "")
            if rng.startswith("bytes=") and "-" in rng:
                a, b = rng[6:].split("-", 1)
                return self.reply(206, payload[int(a):int(b) + 1], "application/json")
            return self.reply(200, payload, "application/json")
        if path == "/api/v1/events":
            # Server-sent events: the first at once, the second only once
            # /api/v1/events-next is asked for (a watch waiting for a change).
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            for event in (b"data: first event, the order was shipped\n\n", b"data: second\n\n"):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
                self.wfile.flush()
                next_event.wait(10)
            self.wfile.write(b"0\r\n\r\n")
            return
        if path == "/api/v1/events-next":
            next_event.set()
            return self.reply(200, b"ok", "text/plain")
        if path.endswith("/te-gzip"):
            # gzip as a transfer coding (under chunked), which HTTP/1.1 allows.
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("transfer-encoding", "gzip, chunked")
            self.end_headers()
            z = gzip.compress(json.dumps(rec["headers"]).encode())
            self.wfile.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(z), z))
            return
        if path.endswith("/login-cookie"):
            # A session cookie minted for whoever the Authorization says.
            return self.reply(200, b"ok", "text/plain", None, [("set-cookie", "sid=minted-for-the-token; HttpOnly"), ("set-cookie", "pref=1")])
        if path.endswith("/reason"):
            # The status line's reason phrase echoes the Authorization.
            self.send_response(200, self.headers.get("authorization", ""))
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"ok")
            return
        if path.endswith("/trailer"):
            # A chunked body whose trailer field echoes the Authorization.
            self.send_response(200)
            self.send_header("content-type", "text/plain")
            self.send_header("transfer-encoding", "chunked")
            self.send_header("trailer", "x-echo-auth")
            self.end_headers()
            body = b"see the trailer\n"
            auth = self.headers.get("authorization", "").encode()
            self.wfile.write(b"%x\r\n%s\r\n0\r\nx-echo-auth: %s\r\n\r\n" % (len(body), body, auth))
            return
        if path.endswith("/headers") and "enc=1" in self.path:
            # The Authorization as a web page writes it back: HTML-escaped the
            # way Go's html/template does, and percent-encoded in a redirect.
            a = self.headers.get("authorization", "")
            go_html = "".join({'"': "&#34;", "&": "&amp;", "'": "&#39;", "+": "&#43;", "<": "&lt;", ">": "&gt;"}.get(c, c) for c in a)
            link = "/login?again=" + urllib.parse.quote(a, safe="")
            page = '<p>Signed in with %s</p><a href="%s">again</a>' % (go_html, link)
            return self.reply(302, page.encode(), "text/html", None, [("location", link)])
        if path.endswith("/headers"):
            # Echoes the request's headers, as a debug endpoint or an error page
            # might: in the body, and the Authorization in a response header too;
            # gzipped with "gz=1", labelled br with "br=1" (whatever the request accepts).
            payload = json.dumps(rec["headers"]).encode()
            if "b64=1" in self.path:
                # The request's headers base64-encoded, as a `state` value or an
                # API gateway's binary body carries them.
                import base64
                return self.reply(200, base64.b64encode(payload), "text/plain")
            if "u16=1" in self.path:
                # The echo in UTF-16, as a .NET or Windows backend may write it.
                return self.reply(200, json.dumps(rec["headers"]).encode("utf-16"), "application/json; charset=utf-16")
            if "ce2=1" in self.path:
                # Two Content-Encoding fields, the first saying identity.
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-encoding", "identity")
                self.send_header("content-encoding", "gzip")
                z = gzip.compress(payload)
                self.send_header("content-length", str(len(z)))
                self.end_headers()
                self.wfile.write(z)
                return
            extra = [("x-seen-authorization", self.headers.get("authorization", ""))]
            if "gz=1" in self.path:
                return self.reply(200, gzip.compress(payload), "application/json", "gzip", extra)
            if "br=1" in self.path:
                return self.reply(200, payload, "application/json", "br", extra)
            return self.reply(200, payload, "application/json", None, extra)
        if re.match(r"^/admin/", urllib.parse.unquote(urllib.parse.unquote(path)), re.IGNORECASE):
            # Routed as Django routes a `re_path(r"(?i)^admin/")` pattern: Python's
            # re matches `ı`, `İ`, `ſ` and the Kelvin sign to ASCII letters. The
            # path decoded twice, as behind a proxy that decodes it first.
            return self.reply(200, b"admin area: user list", "text/plain")
        if path == "/image":
            return self.reply(200, b"\x89PNG....", "image/png")
        return self.reply(200, ("ok " + self.command + " " + self.path).encode(), "text/plain")

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = any


srv = http.server.ThreadingHTTPServer((host, 0), H)
if len(sys.argv) > 4:
    import ssl
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(sys.argv[3], sys.argv[4])
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
print(srv.server_address[1], flush=True)
srv.serve_forever()
