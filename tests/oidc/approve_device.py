#!/usr/bin/env python3
"""Completes a device login the way a person at a browser does: opens the
verification URL, types the user code into the provider's form, confirms,
signs in with the provider's login form, and consents. Each page is the
provider's own HTML; the script fills what a person would and submits.

usage: approve_device.py VERIFICATION_URL USER_CODE LOGIN CA_FILE
Prints the title of each page it saw; exits 0 once "Sign-in Success" shows.
"""
import html.parser
import http.cookiejar
import ssl
import sys
import urllib.parse
import urllib.request


class Forms(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.forms, self.title, self._in_title = [], "", False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "form":
            self.forms.append({"action": a.get("action", ""), "id": a.get("id", ""), "inputs": []})
        elif tag == "input" and self.forms:
            self.forms[-1]["inputs"].append((a.get("name"), a.get("type", "text"), a.get("value") or ""))
        elif tag == "title":
            self._in_title = True

    def handle_endtag(self, tag):
        if tag == "title":
            self._in_title = False

    def handle_data(self, data):
        if self._in_title:
            self.title += data.strip()


def main():
    url, code, login, ca = sys.argv[1:5]
    ctx = ssl.create_default_context(cafile=ca)
    opener = urllib.request.build_opener(
        urllib.request.HTTPSHandler(context=ctx),
        urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()),
    )
    page = opener.open(url, timeout=10)
    for _ in range(10):
        body = page.read().decode()
        p = Forms()
        p.feed(body)
        print("page:", p.title, page.geturl(), flush=True)
        if "Sign-in Success" in p.title:
            return 0
        if not p.forms:
            print(body, file=sys.stderr)
            return 1
        form = p.forms[0]
        fields = {}
        for name, kind, value in form["inputs"]:
            if not name:
                continue
            if name == "user_code" and kind == "text":
                value = code
            elif name == "login":
                value = login
            elif name == "password":
                value = "any password"
            fields[name] = value
        action = urllib.parse.urljoin(page.geturl(), form["action"])
        data = urllib.parse.urlencode(fields).encode()
        page = opener.open(urllib.request.Request(action, data=data, method="POST"), timeout=10)
    return 1


if __name__ == "__main__":
    sys.exit(main())
