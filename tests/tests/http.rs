//! HTTP backends end to end: a real Python http.server and WebSocket echo
//! server on loopback addresses, real clients (curl, Python requests and
//! websockets, Node's fetch) run as unprivileged users through the real
//! eBPF redirect. Assertions are on what the server received and what the
//! client got, and on the audit store. Needs root.

#![expect(clippy::expect_used, reason = "test helpers panic with context on failure")]
#![expect(clippy::indexing_slicing, reason = "indexing serde_json values by key returns Null, it cannot panic")]

use std::path::Path;

use gatehouse_e2e::http::{PyServer, http_records, http_records_until};
use gatehouse_e2e::{Env, loopback};
use serde_json::Value;

/// With `+`, `/` and `=`, as base64 tokens have: encoders escape them.
const HELD_TOKEN: &str = "held-token-8f3a+Zk/q=";
const CARD: &str = "4111 1111 1111 1111";

struct World {
    env: Env,
    api: PyServer,
    ws: PyServer,
    ana: String,
    eve: String,
    /// Masked by detectors only (no field rules): text bodies pass, scanned.
    ida: String,
    /// May GET any path that no deny rule names.
    ben: String,
}

fn world(name: &str) -> World {
    let mut env = Env::new(name);
    let ana = env.user("ana", &[]);
    let eve = env.user("eve", &[]);
    let ida = env.user("ida", &[]);
    let ben = env.user("ben", &[]);
    let api = PyServer::http(&env.dir, &loopback(1));
    let ws = PyServer::ws_echo(&env.dir, &loopback(2));
    let token = gatehouse_e2e::pg::password_file(&env.dir, "api.token", HELD_TOKEN);
    let policy = format!(
        r#"
[agent]
shutdown_grace = "1s"

[[backend]]
name = "orders-api"
protocol = "http"
address = "{api}"
credentials = {{ bearer_file = "{token}" }}

[[backend]]
name = "ws-echo"
protocol = "http"
address = "{ws}"

[[mask]]
name = "cards"
detectors = ["card", "email"]
fields = ["*.ssn", {{ path = "$.customer.name", style = "partial" }}]

[[mask]]
name = "detectors"
detectors = ["card", "email"]

[[rule]]
name = "ida reads text"
who = {{ users = ["{ida}"] }}
backends = ["orders-api"]
methods = ["GET"]
paths = ["/api/v1/orders/*"]
mask = "detectors"

[[rule]]
name = "support reads orders"
who = {{ users = ["{ana}"] }}
backends = ["orders-api"]
methods = ["GET", "HEAD"]
paths = ["/api/v1/orders/*", "/headers", "/image", "/api/v1/export"]
mask = "cards"

[[rule]]
name = "eve posts without masking"
who = {{ users = ["{eve}"] }}
backends = ["orders-api"]
methods = ["POST", "GET"]
paths = ["/api/*", "/admin/*"]
max_body = "1KiB"
pass_client_auth = true

[[rule]]
name = "ben reads anything but what is denied"
who = {{ users = ["{ben}"] }}
backends = ["orders-api"]
methods = ["GET"]

[[rule]]
name = "no admin"
who = {{ users = ["*"] }}
backends = ["orders-api"]
action = "deny"
paths = ["/admin/*"]

[[rule]]
name = "nobody exports"
who = {{ users = ["*"] }}
backends = ["orders-api"]
action = "deny"
methods = ["GET"]
paths = ["/api/v1/export"]

[[rule]]
name = "nobody cancels orders"
who = {{ users = ["*"] }}
backends = ["orders-api"]
action = "deny"
paths = ["/api/v1/orders/*"]
query = {{ action = "cancel" }}

[[rule]]
name = "ana echoes"
who = {{ users = ["{ana}"] }}
backends = ["ws-echo"]

[[rule]]
name = "eve echoes masked"
who = {{ users = ["{eve}"] }}
backends = ["ws-echo"]
mask = "cards"
"#,
        api = api.addr,
        ws = ws.addr,
        token = token.display(),
    );
    let config = env.write_policy("policy.toml", &policy);
    env.start_agent(&config);
    World { env, api, ws, ana, eve, ida, ben }
}

/// `request` sent as it is to the API backend's address by `user` (a client
/// that writes what no HTTP library would); the whole answer, and stderr.
fn raw_request(w: &World, user: &str, request: &str) -> (String, String) {
    let script = "import socket, sys\n\
                  h, p = sys.argv[1].rsplit(':', 1)\n\
                  s = socket.create_connection((h, int(p)))\n\
                  s.sendall(sys.argv[2].encode('latin1'))\n\
                  out = b''\n\
                  while True:\n\
                  \x20   b = s.recv(65536)\n\
                  \x20   if not b: break\n\
                  \x20   out += b\n\
                  print(out.decode('latin1'))\n";
    let addr = w.api.addr.to_string();
    let o = w.env.run_as(user, None, std::path::Path::new("/usr/bin/python3"), &["-c", script, &addr, request]);
    (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

/// The newest `http` record whose target ends with `target` and that
/// satisfies `done`: the record is written when the response body ends,
/// which can be just after the client has read it, so it is waited for (5 s).
fn record_for(w: &World, target: &str, done: impl Fn(&Value) -> bool) -> Option<Value> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let recs = http_records(&w.env.db());
        let found = recs
            .into_iter()
            .rev()
            .find(|(k, r, _)| k == "http" && r["target"].as_str().is_some_and(|t| t.ends_with(target)))
            .map(|(_, r, _)| r);
        if found.as_ref().is_some_and(&done) || std::time::Instant::now() > deadline {
            return found;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn curl(w: &World, user: &str, args: &[&str]) -> (String, String) {
    let o = w.env.run_as(user, None, Path::new("/usr/bin/curl"), args);
    (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

/// Decodes base64 as a client would, skipping characters that are not base64
/// (the `****` written over a copy) and decoding each run of valid ones.
fn base64_decode_lossy(s: &str) -> Vec<u8> {
    let table = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes() {
        let Some(v) = table.iter().position(|&t| t == c) else {
            (acc, bits) = (0, 0);
            continue;
        };
        acc = (acc << 6) | u32::try_from(v).unwrap_or(0);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(u8::try_from((acc >> bits) & 0xff).unwrap_or(0));
        }
    }
    out
}

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

#[test]
fn requests_are_decided_credentials_held_and_bodies_masked() {
    let w = world("http-policy");
    let base = format!("http://{}", w.api.addr);

    // Allowed GET: the server gets the held token, never the client's own token or cookie.
    let (out, err) = curl(
        &w,
        &w.ana,
        &[
            "-sS",
            "-H",
            "Authorization: Bearer client-own-token",
            "-H",
            "Cookie: sid=client-cookie",
            &format!("{base}/api/v1/orders/7"),
        ],
    );
    let body = json(&out);
    assert!(err.is_empty(), "curl: {err}");
    let got = w.api.requests();
    let first = got.last().expect("the server got the request");
    assert_eq!(first["method"], "GET");
    assert_eq!(first["headers"]["authorization"], format!("Bearer {HELD_TOKEN}"));
    assert!(first["headers"].get("cookie").is_none(), "the client's cookie reached the server: {first}");
    assert!(!first.to_string().contains("client-own-token"));
    // Response headers go through the detectors too (a download's file name, a link).
    let (out, err) = curl(&w, &w.ana, &["-sS", "-D", "-", &format!("{base}/api/v1/orders/7?hdr=1")]);
    let (head, _) = out.split_once("\r\n\r\n").unwrap_or_default();
    assert!(!head.contains("ann@example.com") && !head.contains("4111 1111"), "{out}{err}");
    assert!(head.contains("x-customer-email: ****@example.com") && head.contains("card ****1111.json"), "{out}");
    // Text bodies on a detectors-only profile (ida's): what the client would decode
    // differently from the bytes the detectors see is not passed.
    let (out, _) = curl(&w, &w.ida, &["-sS", &format!("{base}/api/v1/orders/7")]);
    assert!(out.contains("****1111") && !out.contains("4111 1111 1111 1111"), "{out}");
    let url = |q: &str| format!("{base}/api/v1/orders/7?{q}");
    let (out, err) = curl(&w, &w.ida, &["-sS", "-w", "\n%{http_code}", &url("utf16=1")]);
    assert!(out.contains("charset utf-16 cannot be masked") && out.ends_with("\n502"), "{out}{err}");
    // A page that writes each group of the card in its own span: found in the rendered text
    // (that line goes out as text, its markup lost).
    let (out, err) = curl(&w, &w.ida, &["-sS", &url("html=1")]);
    let digits: String = out.chars().filter(char::is_ascii_digit).collect();
    assert!(out.contains("****1111") && !digits.contains("4111111111111111"), "{out}{err}");
    let (out, err) = curl(&w, &w.ida, &["-sS", "-w", "\n%{http_code}", &url("ct2=1")]);
    assert!(out.contains("more than one Content-Type") && out.ends_with("\n502"), "{out}{err}");
    // Two Host fields (an upstream routing on the last would reach another service): 400, not forwarded.
    let before = w.api.requests().len();
    let (out, err) = raw_request(
        &w,
        &w.ida,
        "GET /api/v1/orders/7 HTTP/1.1\r\nHost: orders.internal\r\nHost: admin.internal\r\nConnection: close\r\n\r\n",
    );
    assert!(out.starts_with("HTTP/1.1 400") && out.contains("more than one Host"), "{out}{err}");
    assert_eq!(w.api.requests().len(), before, "the request reached the server");
    // Another host behind the backend's address (an ingress routing on Host
    // would take this rule and the held credential to that service): 421,
    // not forwarded; the address itself is served (above, as every request).
    for host in ["billing.internal", "billing.internal:80", "[::1]"] {
        let (out, err) =
            curl(&w, &w.ida, &["-sS", "-w", "\n%{http_code}", "-H", &format!("Host: {host}"), &url("plain=1")]);
        assert!(out.ends_with("\n421") && out.contains("which this backend does not serve"), "{host}: {out}{err}");
    }
    // The same host named where a proxy, or an application behind one, reads it instead.
    for h in [
        "X-Forwarded-Host: billing.internal",
        "X-Forwarded-Host: a, billing.internal",
        "X_Forwarded_Host: billing.internal",
        "Forwarded: for=1.2.3.4;host=billing.internal",
    ] {
        let (out, err) = curl(&w, &w.ida, &["-sS", "-w", "\n%{http_code}", "-H", h, &url("plain=1")]);
        assert!(out.ends_with("\n421") && out.contains("forwarded host"), "{h}: {out}{err}");
    }
    assert_eq!(w.api.requests().len(), before, "a request for another host reached the server");
    // A UTF-16 byte order mark under a UTF-8 label (browsers decode by the mark), gzip
    // bytes labelled as plain text (no content coding): the body is cut before any of it.
    for (query, why) in [("bom=1", "byte order mark"), ("hidden_gz=1", "NUL byte")] {
        let (out, err) = curl(&w, &w.ida, &["-sS", "-w", "\n%{http_code}", &url(query)]);
        assert!(!out.contains("4\u{0}1\u{0}1") && !out.contains('\u{1f}') && !err.is_empty(), "{query}: {out}{err}");
        let has_why = |r: &Value| r["error"].as_str().is_some_and(|e| e.contains(why));
        let rec = record_for(&w, query, has_why);
        assert!(rec.as_ref().is_some_and(has_why), "{query}: {rec:?}\n{}", w.env.agent_log());
    }
    // What the client saw: cards and e-mails by the detectors, the field rules' values.
    assert_eq!(body["id"], 7);
    assert_eq!(body["customer"]["card"], "****1111", "{body}");
    assert_eq!(body["customer"]["email"], "****@example.com", "{body}");
    assert_eq!(body["customer"]["ssn"], "****", "{body}");
    assert_ne!(body["customer"]["name"], "Ann Smith", "{body}");
    assert!(!out.contains(CARD) && !out.contains("4111111111111111"), "{out}");
    assert_eq!(body["total"], 12.5);

    // The same data as CSV (a format the client may ask for): the field rules
    // name JSON fields, so a non-JSON body on their profile is refused (502),
    // not passed with the detectors alone. The server did send it.
    let (out, _) = curl(&w, &w.eve, &["-s", &format!("{base}/api/v1/orders/7?csv=1")]);
    assert!(out.contains("Ann Smith,123-45-6789"), "what the server returns: {out}");
    let (out, _) = curl(&w, &w.ana, &["-s", "-w", "\n%{http_code}", &format!("{base}/api/v1/orders/7?csv=1")]);
    assert!(out.ends_with("502") && !out.contains("123-45-6789") && !out.contains("Ann Smith"), "{out}");
    assert!(out.contains("field rules"), "{out}");

    // A byte range of a masked body: a fragment such as `"123-45-6789"` is
    // JSON without the field name its rule matches. Masked rules do not ask
    // the backend for ranges; the client gets the whole body, masked.
    let (full, _) = curl(&w, &w.eve, &["-s", &format!("{base}/api/v1/orders/7")]);
    let at = full.find("\"123-45-6789\"").expect("the ssn in the server's body");
    let range = format!("Range: bytes={at}-{}", at + 12);
    // (Asked directly, not through Gatehouse: the server answers ranges.)
    let direct = std::process::Command::new("curl")
        .args(["-s", "-H", &range, &format!("{base}/api/v1/orders/7")])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&direct.stdout), "\"123-45-6789\"", "the server answers ranges");
    let (out, _) = curl(&w, &w.ana, &["-s", "-H", &range, "-w", "\n%{http_code}", &format!("{base}/api/v1/orders/7")]);
    assert!(out.ends_with("\n200") && !out.contains("123-45-6789"), "{out}");
    assert_eq!(json(out.trim_end_matches("\n200"))["customer"]["ssn"], "****", "{out}");
    assert!(
        w.api.requests().last().is_some_and(|r| r["headers"].get("range").is_none()),
        "the range reached the server"
    );
    // The pre-standard spelling (Apache honours it) does not reach it either.
    let legacy = format!("Request-Range: bytes={at}-{}", at + 12);
    let (out, _) = curl(&w, &w.ana, &["-s", "-H", &legacy, "-w", "\n%{http_code}", &format!("{base}/api/v1/orders/7")]);
    assert!(out.ends_with("\n200") && !out.contains("123-45-6789"), "{out}");
    assert!(
        w.api.requests().last().is_some_and(|r| r["headers"].get("request-range").is_none()),
        "the pre-standard range reached the server"
    );

    // A method override (the backend would run DELETE where POST was decided): refused, never forwarded.
    for (extra, target) in [
        (vec!["-H", "X-HTTP-Method-Override: DELETE"], format!("{base}/api/v1/orders/7")),
        (vec![], format!("{base}/api/v1/orders/7?_method=DELETE")),
        // The first value agrees; a backend that reads the last gets DELETE.
        (
            vec!["-H", "X-HTTP-Method-Override: POST", "-H", "X-HTTP-Method-Override: DELETE"],
            format!("{base}/api/v1/orders/7"),
        ),
        (vec![], format!("{base}/api/v1/orders/7?_method=POST&_method=DELETE")),
    ] {
        let before = w.api.requests().len();
        let mut args = vec!["-s", "-X", "POST", "-w", "\n%{http_code}"];
        args.extend(extra);
        args.push(&target);
        let (out, _) = curl(&w, &w.eve, &args);
        assert!(out.ends_with("\n400") && out.contains("method override"), "{out}");
        assert_eq!(w.api.requests().len(), before, "the override reached the server");
    }

    // A deny rule's query condition: `?action=cancel` is denied, and so is a
    // form, multipart or JSON body, or one without a Content-Type (Rails and
    // Laravel read its `action` over the query's; Gatehouse does not read
    // bodies), never reaching the server. A body no framework reads as
    // parameters passes.
    let order = format!("{base}/api/v1/orders/7");
    for (ct, body, target) in [
        ("text/plain", "x", format!("{order}?action=cancel")),
        // PHP skips a name's leading spaces and reads it up to a NUL.
        ("text/plain", "x", format!("{order}?+action=cancel")),
        ("text/plain", "x", format!("{order}?action%00x=cancel")),
        // A value encoded twice, for an application that decodes its parameters again.
        ("text/plain", "x", format!("{order}?action=%2563ancel")),
        // The rule's `/api/v1/orders/*` keeps out the collection itself (bulk cancel), and a format suffix.
        ("text/plain", "x", format!("{base}/api/v1/orders?action=cancel")),
        ("text/plain", "x", format!("{base}/api/v1/orders/?action=cancel")),
        ("application/json", r#"{"action":"cancel"}"#, order.clone()),
        ("application/vnd.api+json; charset=utf-8", r#"{"action":"cancel"}"#, order.clone()),
        ("application/x-www-form-urlencoded", "action=cancel", order.clone()),
        // Rack parses multipart/mixed and multipart/related, and reads a POST body without a
        // Content-Type (sent here with none: curl's `Content-Type:` removes it) as a form.
        (
            "multipart/mixed; boundary=b",
            "--b\r\nContent-Disposition: form-data; name=\"action\"\r\n\r\ncancel\r\n--b--\r\n",
            order.clone(),
        ),
        ("", "action=cancel", order.clone()),
    ] {
        let before = w.api.requests().len();
        let ct = if ct.is_empty() { "Content-Type:".to_owned() } else { format!("Content-Type: {ct}") };
        let (out, _) =
            curl(&w, &w.eve, &["-s", "-X", "POST", "-H", &ct, "--data-binary", body, "-w", "\n%{http_code}", &target]);
        assert!(out.ends_with("\n403") && out.contains("nobody cancels orders"), "{ct} {target}: {out}");
        assert_eq!(w.api.requests().len(), before, "{ct} {target}: the request reached the server");
    }
    let before = w.api.requests().len();
    let (out, _) = curl(
        &w,
        &w.eve,
        &[
            "-s",
            "-X",
            "POST",
            "-H",
            "Content-Type: text/plain",
            "--data-binary",
            "action=cancel",
            "-w",
            "\n%{http_code}",
            &order,
        ],
    );
    assert!(!out.ends_with("\n403"), "{out}");
    assert_eq!(w.api.requests().len(), before + 1, "a text body passes: {out}");

    // What a client claims about its address never reaches the backend (which
    // would read it as where the request came from, trusting the bastion as its proxy).
    let spoof = [
        "X-Forwarded-For: 203.0.113.1",
        "X_Real_IP: 203.0.113.2",
        "Forwarded: for=203.0.113.3",
        "True-Client-IP: 203.0.113.4",
    ];
    let mut args = vec!["-s", "-o", "/dev/null", "-w", "%{http_code}"];
    for h in &spoof {
        args.extend(["-H", h]);
    }
    let target = format!("{base}/api/v1/orders/7?spoof=1");
    args.push(&target);
    let (out, _) = curl(&w, &w.eve, &args);
    assert_eq!(out, "200", "{out}");
    let seen = w.api.requests().into_iter().rev().find(|r| r["path"] == "/api/v1/orders/7?spoof=1").expect("forwarded");
    assert!(!seen["headers"].to_string().contains("203.0.113."), "a client's address claim reached the server: {seen}");

    // A deny rule on GET keeps out HEAD: frameworks run the GET handler for it.
    // (`-I`: curl sends HEAD without waiting for a body.)
    for method in ["-G", "-I"] {
        let before = w.api.requests().len();
        let (out, _) = curl(
            &w,
            &w.ana,
            &["-s", "-m", "20", method, "-o", "/dev/null", "-w", "%{http_code}", &format!("{base}/api/v1/export")],
        );
        assert_eq!(out, "403", "{method}");
        assert_eq!(w.api.requests().len(), before, "{method} /api/v1/export reached the server");
    }

    // Parameter cloaking: Rack 2, Python before 3.9.2 and CGI.pm read `;` as
    // a separator, so behind them `?x=1;action=cancel` carries `action=cancel`
    // where a reader of `&` alone sees one `x`. Refused as ambiguous, never
    // reaching the server, and a secret after a `;` is not recorded.
    for q in ["x=1;action=cancel", "action=list;action=cancel", "page=2;access%5Ftoken=cloaked-secret-7"] {
        let before = w.api.requests().len();
        let (out, _) = curl(&w, &w.eve, &["-s", "-X", "POST", "-w", "\n%{http_code}", &format!("{order}?{q}")]);
        assert!(out.ends_with("\n400") && out.contains("`;`"), "{q}: {out}");
        assert_eq!(w.api.requests().len(), before, "{q}: the request reached the server");
    }
    // The refusal's record is written as its answer goes out: waited for (5 s).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let cloaked_of = |recs: &[(String, Value, Vec<u8>)]| {
        recs.iter()
            .find(|(k, b, _)| k == "http" && b["target"].as_str().is_some_and(|t| t.contains("page=2;access%5Ftoken=")))
            .cloned()
    };
    let mut recs = http_records(&w.env.db());
    while cloaked_of(&recs).is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
        recs = http_records(&w.env.db());
    }
    let cloaked = cloaked_of(&recs).unwrap_or_else(|| panic!("the refusal is recorded: {recs:?}"));
    assert_eq!(cloaked.1["status"], 400, "{cloaked:?}");
    assert!(!format!("{recs:?}").contains("cloaked-secret-7"), "the secret after `;` was recorded: {cloaked:?}");

    // DELETE is refused with a 403 naming the rule; the same connection then serves a GET.
    let (out, err) = curl(
        &w,
        &w.ana,
        &["-sv", "-X", "DELETE", &format!("{base}/api/v1/orders/7"), "--next", "-s", &format!("{base}/headers")],
    );
    assert!(err.contains("403"), "{err}");
    assert!(err.contains("Re-using existing connection") || err.contains("Reusing existing connection"), "{err}");
    let refusal_end = out.find('}').expect("a JSON refusal") + 1;
    let refusal = json(&out[..refusal_end]);
    assert_eq!(refusal["status"], 403);
    assert_eq!(refusal["rule"], "support reads orders");
    assert!(refusal["reason"].as_str().unwrap().contains("method DELETE"), "{refusal}");
    // The server got the held token; an endpoint that echoes it does not hand it to the user.
    let headers = json(&out[refusal_end..]);
    assert_eq!(headers["authorization"], "****", "{out}");
    assert!(!out.contains(HELD_TOKEN), "{out}");
    assert_eq!(w.api.requests().last().unwrap()["headers"]["authorization"], format!("Bearer {HELD_TOKEN}"));
    // The same on a rule without masking (eve's, which injects the held token
    // when she sends none): in the body, in a header, in a gzipped body, split
    // by a byte range; a coding Gatehouse cannot undo is refused.
    for (path, extra) in [
        ("/api/v1/headers", &[][..]),
        ("/api/v1/headers?gz=1", &["--compressed"][..]),
        ("/api/v1/headers", &["-H", "Range: bytes=20-40"][..]),
    ] {
        let url = format!("{base}{path}");
        let args = [&["-sS", "-D", "-"][..], extra, &[url.as_str()][..]].concat();
        let (out, err) = curl(&w, &w.eve, &args);
        assert!(!out.contains(HELD_TOKEN) && !out.contains("held-tok"), "{path} {extra:?}: {out}{err}");
        let lower = out.to_ascii_lowercase();
        assert!(
            lower.contains("x-seen-authorization: ****") && out.contains("\"authorization\": \"****\""),
            "{path}: {out}"
        );
        let seen = w.api.requests().last().unwrap().clone();
        assert_eq!(seen["headers"]["authorization"], format!("Bearer {HELD_TOKEN}"), "{seen}");
        assert!(seen["headers"].get("range").is_none(), "{seen}");
    }
    // A path override (IIS, Symfony route by it): refused, never forwarded.
    let before = w.api.requests().len();
    let args = ["-sS", "-H", "X-Original-URL: /admin/users", "-w", "\n%{http_code}"];
    let (out, _) = curl(&w, &w.eve, &[&args[..], &[format!("{base}/api/v1/orders/7").as_str()][..]].concat());
    assert!(out.ends_with("\n400") && out.contains("path override"), "{out}");
    assert_eq!(w.api.requests().len(), before, "the override reached the server");
    // A session cookie the backend mints for the held credential stays with Gatehouse.
    let (out, err) = curl(&w, &w.eve, &["-sS", "-D", "-", &format!("{base}/api/v1/login-cookie")]);
    assert!(!out.to_ascii_lowercase().contains("set-cookie") && out.ends_with("ok"), "{out}{err}");
    let dropped = |r: &Value| r["credentials"].as_str().is_some_and(|c| c.contains("Set-Cookie dropped (2)"));
    let rec = record_for(&w, "/api/v1/login-cookie", dropped);
    assert!(rec.as_ref().is_some_and(dropped), "{rec:?}");
    // Kubernetes impersonation headers never ride on the held credential.
    let args = ["-sS", "-H", "Impersonate-User: admin", "-H", "Impersonate-Group: system:masters"];
    let _ = curl(&w, &w.eve, &[&args[..], &[format!("{base}/api/v1/orders/7").as_str()][..]].concat());
    let seen = w.api.requests().last().unwrap().clone();
    assert!(seen["headers"].as_object().is_some_and(|h| !h.keys().any(|k| k.starts_with("impersonate"))), "{seen}");
    // A backend that keeps requests and shows them later (a request log):
    // eve's request with her own token gets back the one before it, which
    // carried the held token — that response is searched too.
    let _ = curl(&w, &w.eve, &["-sS", &format!("{base}/api/v1/orders/7")]);
    let own = ["-sS", "-H", "Authorization: Bearer eves-own"];
    let (out, err) = curl(&w, &w.eve, &[&own[..], &[format!("{base}/api/v1/request-log").as_str()][..]].concat());
    assert!(!out.contains("held-tok") && json(&out)["authorization"] == "****", "{out}{err}");
    assert_eq!(w.api.requests().last().unwrap()["headers"]["authorization"], "Bearer eves-own");
    // gzip as a transfer coding: the client gets no gzipped bytes that could hide it.
    let (out, err) = curl(&w, &w.eve, &["-sS", "-D", "-", &format!("{base}/api/v1/te-gzip")]);
    assert!(!out.contains("held-tok") && out.contains("transfer coding gzip"), "{out}{err}");
    // Two Content-Encoding fields (`identity`, then `gzip`): all of them count.
    let (out, err) = curl(&w, &w.eve, &["-sS", "--compressed", "-D", "-", &format!("{base}/api/v1/headers?ce2=1")]);
    assert!(!out.contains("held-tok"), "{out}{err}");
    // An echo in UTF-16.
    let (out, err) = curl(&w, &w.eve, &["-sS", &format!("{base}/api/v1/headers?u16=1")]);
    assert!(!out.replace('\u{0}', "").contains("held-tok") && out.contains("*\u{0}*\u{0}*\u{0}*"), "{out}{err}");
    // The headers base64-encoded: the client decodes them and finds no copy.
    let (out, err) = curl(&w, &w.eve, &["-sS", &format!("{base}/api/v1/headers?b64=1")]);
    let decoded = String::from_utf8_lossy(&base64_decode_lossy(out.trim())).into_owned();
    assert!(!decoded.contains("held-token-8f3a") && decoded.contains("host"), "{decoded:?} from {out}{err}");
    // The status line's reason phrase.
    let (out, err) = curl(&w, &w.eve, &["-sS", "-D", "-", &format!("{base}/api/v1/reason")]);
    assert!(!out.contains("held-tok") && out.starts_with("HTTP/1.1 200") && out.ends_with("ok"), "{out}{err}");
    // A trailer field (after a chunked body): the body comes whole, the credential not at all.
    for proto in ["--http1.1", "--http2-prior-knowledge"] {
        let url = format!("{base}/api/v1/trailer");
        let (out, err) = curl(&w, &w.eve, &["-sS", proto, "--raw", "-H", "TE: trailers", "-D", "-", &url]);
        assert!(!out.contains("held-tok") && out.contains("see the trailer"), "{proto}: {out}{err}");
    }
    // Written back as a web page would: HTML-escaped (Go's html/template: `+` is `&#43;`) and
    // percent-encoded in a redirect's Location (`%2B`, `%2F`, `%3D`).
    let (out, err) = curl(&w, &w.eve, &["-sS", "-D", "-", &format!("{base}/api/v1/headers?enc=1")]);
    assert!(!out.contains("held-token-8f3a") && !out.contains("held-tok"), "{out}{err}");
    assert!(out.contains("Signed in with ****") && out.contains("again=****"), "{out}{err}");
    let lower = out.to_ascii_lowercase();
    assert!(lower.contains("location: /login?again=****"), "{out}");
    let (out, _) = curl(&w, &w.eve, &["-sS", &format!("{base}/api/v1/headers?br=1")]);
    assert!(!out.contains(HELD_TOKEN) && out.contains("content encoding br"), "{out}");
    // The exchange's record says the credential was removed, and holds no trace of it.
    let recs = http_records_until(&w.env.db(), |recs| {
        recs.iter().any(|(_, r, _)| r["masked"]["held_credential"].as_u64() >= Some(2))
            && recs.iter().any(|(_, r, _)| r["masked"]["trailers_dropped"].as_u64() == Some(1))
    });
    assert!(recs.iter().any(|(_, r, _)| r["masked"]["held_credential"].as_u64() >= Some(2)), "{recs:#?}");
    assert!(recs.iter().any(|(_, r, _)| r["masked"]["trailers_dropped"].as_u64() == Some(1)), "{recs:#?}");
    assert!(
        recs.iter()
            .all(|(_, r, data)| !r.to_string().contains(HELD_TOKEN)
                && !String::from_utf8_lossy(data).contains(HELD_TOKEN))
    );
    assert!(w.api.requests().iter().all(|r| r["method"] != "DELETE"), "DELETE reached the server");

    // A deny rule's path, and paths that could be read as another path, never reach the server.
    let (out, _) = curl(&w, &w.eve, &["-s", &format!("{base}/admin/users")]);
    assert_eq!(json(&out)["rule"], "no admin", "{out}");
    // `%252e%252e` is `..` to a server (or a proxy before it) that decodes twice.
    for sneaky in [
        "/api/../admin/users",
        "/api/%2e%2e/admin/users",
        "/api//..%2fadmin/users",
        "/ADMIN/users",
        "/api/%252e%252e/admin/users",
        "/api/v1%252f..%252f..%252fadmin/users",
        // A stray `%` elsewhere: servers that decode leniently leave it and still read the `..`.
        "/api/%25zz/%252e%252e/admin/users",
    ] {
        let (out, _) = curl(
            &w,
            &w.eve,
            &["-s", "--path-as-is", "-o", "/dev/null", "-w", "%{http_code}", &format!("{base}{sneaky}")],
        );
        assert!(out == "400" || out == "403", "{sneaky}: {out}");
    }
    assert!(w.api.requests().iter().all(|r| !r["path"].as_str().unwrap().to_lowercase().contains("admin")));

    // pass_client_auth: eve's own Authorization reaches the server; max_body caps what she sends.
    let (out, _) = curl(&w, &w.eve, &["-s", "-H", "Authorization: Bearer eves-own", &format!("{base}/api/echo")]);
    assert!(out.starts_with("ok GET"), "{out}");
    assert_eq!(w.api.requests().last().unwrap()["headers"]["authorization"], "Bearer eves-own");
    let big = "x".repeat(4096);
    let (out, _) =
        curl(&w, &w.eve, &["-s", "-o", "/dev/null", "-w", "%{http_code}", "-d", &big, &format!("{base}/api/post")]);
    assert_eq!(out, "403", "a declared body over max_body");
    let chunked = w.env.run_as(
        &w.eve,
        None,
        Path::new("/usr/bin/python3"),
        &[
            "-c",
            "import requests,sys; r=requests.post(sys.argv[1], data=iter([b'y'*800, b'y'*800])); print(r.status_code)",
            &format!("{base}/api/chunked"),
        ],
    );
    assert_eq!(String::from_utf8_lossy(&chunked.stdout).trim(), "413", "{}", String::from_utf8_lossy(&chunked.stderr));
    assert!(w.api.requests().iter().all(|r| r["body"].as_str().unwrap().len() <= 1024));

    // The audit store has every exchange; replay reads like curl -v.
    let recs = http_records_until(&w.env.db(), |recs| {
        recs.iter().any(|(_, b, _)| b["decision"] == "deny" && b["method"] == "DELETE" && b["status"] == 403)
            && recs.iter().any(|(_, b, _)| b["target"] == "/api/v1/orders/7" && b["method"] == "GET")
    });
    let refused: Vec<&Value> = recs.iter().map(|(_, b, _)| b).filter(|b| b["decision"] == "deny").collect();
    assert!(refused.iter().any(|b| b["method"] == "DELETE" && b["status"] == 403));
    let get = recs
        .iter()
        .find(|(_, b, _)| b["target"] == "/api/v1/orders/7" && b["method"] == "GET")
        .expect("the GET on record");
    assert_eq!(get.1["status"], 200);
    assert!(get.1["masked"]["card"].as_u64().unwrap() >= 2, "{}", get.1);
    let recorded = String::from_utf8_lossy(&get.2);
    assert!(recorded.contains("****1111") && !recorded.contains(CARD), "{recorded}");
    assert!(!get.1.to_string().contains("client-own-token") && !get.1.to_string().contains(HELD_TOKEN));
    let session = w.env.wait_session("ana's first", |s| s["backend"] == "orders-api").get("id").cloned().unwrap();
    let db = w.env.db().display().to_string();
    let replay = w.env.gatehouse(&["replay", session.as_str().unwrap(), "--no-wait", "--db", &db]);
    let text = String::from_utf8_lossy(&replay.stdout);
    assert!(text.contains("> GET /api/v1/orders/7 HTTP/1.1"), "{text}");
    assert!(text.contains("< HTTP/1.1 200"), "{text}");
    assert!(text.contains("authorization: [redacted]"), "{text}");
    assert!(text.contains("bearer token injected"), "{text}");
    assert!(!text.contains(CARD), "{text}");
    // `gatehouse statements` lists requests beside statements: method and target, decision, rule, masked count.
    let listed = w.env.statements(session.as_str());
    let row = listed.iter().find(|r| r["text"] == "GET /api/v1/orders/7").unwrap_or_else(|| panic!("{listed:?}"));
    assert_eq!((row["kinds"].as_str(), row["decision"].as_str()), (Some("http"), Some("allow")), "{row}");
    let masked: Value = serde_json::from_str(row["masked"].as_str().unwrap_or("null")).unwrap();
    assert!(masked["card"].as_u64() >= Some(2), "{row}");
    let all = w.env.statements(None);
    let refused =
        all.iter().find(|r| r["text"].as_str().is_some_and(|t| t.starts_with("DELETE "))).expect("the DELETE");
    assert_eq!(
        (refused["decision"].as_str(), refused["error"].as_str()),
        (Some("deny"), Some("HTTP 403")),
        "{refused}"
    );

    // Exported as OCSF HTTP Activity (4002); the bundle verifies.
    let mut w = w;
    assert!(w.env.signal_agent("TERM").success());
    let bundle = w.env.path("bundle");
    let out = w.env.gatehouse(&["export", "--db", &db, "--format", "ocsf", "--out", bundle.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ocsf = std::fs::read_to_string(bundle.join("ocsf.jsonl")).unwrap();
    let events: Vec<Value> = ocsf.lines().map(json).filter(|e| e["class_uid"] == 4002).collect();
    let delete = events.iter().find(|e| e["http_request"]["http_method"] == "DELETE").expect("the DELETE in OCSF");
    assert_eq!(delete["activity_name"], "Delete");
    assert_eq!(delete["unmapped"]["rule"], "support reads orders");
    assert!(
        events.iter().any(|e| e["http_response"]["code"] == 200 && e["unmapped"]["masked"]["card"].as_u64() > Some(0))
    );
    let verify = w.env.gatehouse(&["verify", bundle.to_str().unwrap()]);
    let vt = format!("{}{}", String::from_utf8_lossy(&verify.stdout), String::from_utf8_lossy(&verify.stderr));
    assert!(!vt.contains("TAMPERED"), "{vt}");
}

#[test]
fn gzip_is_masked_while_streaming_http2_and_node_fetch() {
    let w = world("http-enc");
    let base = format!("http://{}", w.api.addr);
    // Python requests: 20,000 orders, gzip, masked and re-compressed.
    let script = "import requests,sys,json\n\
r=requests.get(sys.argv[1], headers={'Accept-Encoding':'gzip, br'})\n\
d=r.json()\n\
print(json.dumps({'status':r.status_code,'enc':r.headers.get('content-encoding'),'n':len(d),'raw':sys.argv[2] in r.text,'card':d[0]['customer']['card']}))";
    let o = w.env.run_as(
        &w.ana,
        None,
        Path::new("/usr/bin/python3"),
        &["-c", script, &format!("{base}/api/v1/orders/?big=1&gz=1"), CARD],
    );
    let v = json(String::from_utf8_lossy(&o.stdout).trim());
    assert_eq!(v["status"], 200, "{v} {}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(v["enc"], "gzip");
    assert_eq!(v["n"], 20000);
    assert_eq!(v["raw"], false);
    assert_eq!(v["card"], "****1111");
    // The backend was asked only for codings masking can undo.
    let asked = w.api.requests().last().unwrap()["headers"]["accept-encoding"].as_str().unwrap().to_owned();
    assert!(asked.contains("gzip") && !asked.contains("br"), "{asked}");

    // A coding masking cannot read, or a body type it cannot read: 502, nothing unmasked.
    let (out, _) = curl(&w, &w.ana, &["-s", &format!("{base}/api/v1/orders/7?br=1")]);
    assert_eq!(json(&out)["status"], 502, "{out}");
    assert!(!out.contains(CARD));
    let (out, _) = curl(&w, &w.ana, &["-s", &format!("{base}/image")]);
    assert_eq!(json(&out)["status"], 502, "{out}");

    // HTTP/2 (prior knowledge, h2c) from curl.
    let (out, err) = curl(
        &w,
        &w.ana,
        &["-s", "--http2-prior-knowledge", "-w", "\n%{http_version}", &format!("{base}/api/v1/orders/7")],
    );
    let (body, version) = out.rsplit_once('\n').unwrap_or_else(|| panic!("{out} {err}"));
    assert_eq!(version, "2", "{err}");
    assert_eq!(json(body)["customer"]["card"], "****1111");
    let is_h2 = |(_, b, _): &(String, Value, Vec<u8>)| b["version"] == "HTTP/2.0";
    let h2 = http_records_until(&w.env.db(), |recs| recs.iter().any(is_h2))
        .into_iter()
        .find(is_h2)
        .expect("an HTTP/2 exchange on record");
    assert_eq!(h2.1["status"], 200);

    // Node's fetch.
    let js = "fetch(process.argv[1]).then(r => r.json()).then(j => console.log(JSON.stringify(j.customer)))";
    let o = w.env.run_as(&w.ana, None, Path::new("/usr/bin/node"), &["-e", js, &format!("{base}/api/v1/orders/7")]);
    let c = json(String::from_utf8_lossy(&o.stdout).trim());
    assert_eq!(c["card"], "****1111", "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(w.api.requests().last().unwrap()["headers"]["authorization"], format!("Bearer {HELD_TOKEN}"));
}

#[test]
fn websocket_echo_is_relayed_and_recorded_frame_by_frame() {
    let w = world("http-ws");
    let script = r#"
import asyncio, sys, websockets
async def m():
    async with websockets.connect(sys.argv[1], compression=None) as ws:
        await ws.send('hello through gatehouse')
        print(await ws.recv())
asyncio.run(m())
"#;
    let o = w.env.run_as(&w.ana, None, Path::new("/usr/bin/python3"), &["-c", script, &format!("ws://{}/", w.ws.addr)]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "hello through gatehouse",
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // eve's rule masks: a WebSocket's frames cannot be masked, so the upgrade is refused (403).
    let o = w.env.run_as(&w.eve, None, Path::new("/usr/bin/python3"), &["-c", script, &format!("ws://{}/", w.ws.addr)]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("403"), "{err}\n{}", w.env.agent_log());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let recs = http_records(&w.env.db());
        let frames: Vec<&(String, Value, Vec<u8>)> = recs.iter().filter(|(k, _, _)| k == "ws_frame").collect();
        let up =
            frames.iter().any(|(_, b, d)| b["dir"] == "up" && b["opcode"] == "text" && d == b"hello through gatehouse");
        let down = frames
            .iter()
            .any(|(_, b, d)| b["dir"] == "down" && b["opcode"] == "text" && d == b"hello through gatehouse");
        if up && down {
            assert!(recs.iter().any(|(k, b, _)| k == "http" && b["status"] == 101));
            let sessions: std::collections::BTreeSet<String> =
                frames.iter().map(|(_, b, _)| b["session"].to_string()).collect();
            assert_eq!(sessions.len(), 1, "only ana's session carried frames: {frames:?}");
            assert!(
                recs.iter().any(|(k, b, _)| k == "http"
                    && b["status"] == 403
                    && b["reason"].as_str().is_some_and(|r| r.contains("cannot be masked"))),
                "{recs:?}"
            );
            break;
        }
        assert!(std::time::Instant::now() < deadline, "frames not recorded: {frames:?}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn policy_check_says_passthrough_https_is_opaque() {
    let env = Env::new("http-check");
    let policy = format!(
        r#"
[[backend]]
name = "vault"
protocol = "http"
address = "{}:443"
tls = "passthrough"

[[rule]]
name = "ops"
who = {{ users = ["root"] }}
backends = ["vault"]
"#,
        loopback(9)
    );
    let config = env.write_policy("policy.toml", &policy);
    let out = env.gatehouse(&["policy", "check", &config.display().to_string()]);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    assert!(text.contains("opaque TCP"), "{text}");
    // Request conditions on a passthrough backend cannot be enforced: the rule says so at load.
    let bad = policy.replace("backends = [\"vault\"]", "backends = [\"vault\"]\nmethods = [\"GET\"]");
    let config = env.write_policy("bad.toml", &bad);
    let out = env.gatehouse(&["policy", "check", &config.display().to_string()]);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("passthrough"), "{text}");
}

#[test]
fn https_is_terminated_with_the_agent_ca_and_refused_without_it() {
    let mut env = Env::new("http-tls");
    let ana = env.user("ana", &[]);
    let ip = loopback(3);
    let (backend_ca, cert, key) = gatehouse_e2e::pg::certs(&env.dir.join("backend-tls"), &ip, 2);
    let api = PyServer::https(&env.dir, &ip, &cert, &key);
    let token = gatehouse_e2e::pg::password_file(&env.dir, "api.token", HELD_TOKEN);
    let db = env.db().display().to_string();
    let init = env.gatehouse(&["ca", "init", "--db", &db]);
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
    let export = env.gatehouse(&["ca", "export", "--db", &db]);
    assert!(export.status.success());
    let agent_ca = env.path("agent-ca.crt");
    std::fs::write(&agent_ca, &export.stdout).expect("write agent CA");
    let policy = format!(
        r#"
[[backend]]
name = "secure-api"
protocol = "http"
address = "{addr}"
tls = "terminate"
ca_file = "{ca}"
credentials = {{ bearer_file = "{token}" }}

[[mask]]
name = "cards"
detectors = ["card"]

[[rule]]
name = "ana reads"
who = {{ users = ["{ana}"] }}
backends = ["secure-api"]
methods = ["GET"]
mask = "cards"
"#,
        addr = api.addr,
        ca = backend_ca.display(),
        token = token.display(),
    );
    let config = env.write_policy("policy.toml", &policy);
    env.start_agent(&config);
    let url = format!("https://{}/api/v1/orders/7", api.addr);
    let curl = |args: &[&str]| env.run_as(&ana, None, Path::new("/usr/bin/curl"), args);

    // Trusting the agent CA: HTTPS works, the request is decided, masked, and carries the held token.
    let o = curl(&["-sS", "--cacert", agent_ca.to_str().unwrap(), "-w", "\n%{http_version}", &url]);
    let out = String::from_utf8_lossy(&o.stdout);
    let (body, version) =
        out.rsplit_once('\n').unwrap_or_else(|| panic!("{out} {}", String::from_utf8_lossy(&o.stderr)));
    assert_eq!(json(body)["customer"]["card"], "****1111", "{body}");
    assert_eq!(version, "2", "ALPN offers h2 to clients");
    let got = api.requests();
    assert_eq!(got.last().unwrap()["headers"]["authorization"], format!("Bearer {HELD_TOKEN}"));
    // A DELETE over HTTPS is refused like any other.
    let o = curl(&["-s", "--cacert", agent_ca.to_str().unwrap(), "-X", "DELETE", &url]);
    assert_eq!(json(&String::from_utf8_lossy(&o.stdout))["status"], 403);
    assert!(api.requests().iter().all(|r| r["method"] != "DELETE"));

    // Not trusting it (the system store, which does not hold it): curl refuses the certificate.
    let o = curl(&["-sS", &url]);
    assert_eq!(
        o.status.code(),
        Some(60),
        "curl must refuse an untrusted certificate: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    // A name the backend does not serve gets no certificate.
    let resolve = format!("evil.example:{}:{ip}", api.addr.rsplit(':').next().unwrap());
    let o = curl(&[
        "-sS",
        "--cacert",
        agent_ca.to_str().unwrap(),
        "--resolve",
        &resolve,
        &format!("https://evil.example:{}/api/v1/orders/7", api.addr.rsplit(':').next().unwrap()),
    ]);
    assert!(!o.status.success());
    assert_eq!(api.requests().len(), got.len(), "no request reached the server without a served name");
}

/// Runs the `gatehouse` CLI as `user` against the test agent (a copy of
/// the binary the test users may execute).
fn cli(env: &Env, bin: &Path, user: &str, args: &[&str]) -> std::process::Output {
    let ctl = env.control().display().to_string();
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--control-socket", &ctl]);
    env.run_as(user, None, bin, &all)
}

/// Waits for a pending approval request whose subject contains `what`; its id.
fn pending(env: &Env, bin: &Path, approver: &str, what: &str) -> u64 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let o = cli(env, bin, approver, &["requests", "--json"]);
        assert!(o.status.success(), "gatehouse requests: {}", String::from_utf8_lossy(&o.stderr));
        let found = String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(json)
            .find(|r| r["state"]["state"] == "pending" && r["subject"].to_string().contains(what));
        if let Some(r) = found {
            assert_eq!(r["subject"]["type"], "http_request", "{r}");
            return r["id"].as_u64().expect("request id");
        }
        assert!(std::time::Instant::now() < deadline, "no pending request for {what:?}:\n{}", env.agent_log());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// HTTP/2 from Node's built-in client: a DELETE and a GET on one
/// connection; a JSON line per response as it completes.
const H2_HELD: &str = r#"
const http2 = require('http2');
setTimeout(() => process.exit(3), 40000).unref();
const c = http2.connect(process.argv[2]);
const send = (method, path) => new Promise((resolve, reject) => {
  const s = c.request({':method': method, ':path': path});
  let body = '', status = 0;
  s.on('response', h => { status = h[':status']; });
  s.setEncoding('utf8');
  s.on('data', d => { body += d; });
  s.on('end', () => resolve({method, status, body}));
  s.on('error', reject);
  s.end();
});
const del = send('DELETE', '/api/v1/orders/9');
send('GET', '/api/v1/orders/7')
  .then(g => { console.log(JSON.stringify(g)); return del; })
  .then(d => { console.log(JSON.stringify(d)); c.close(); })
  .catch(e => { console.log(JSON.stringify({error: String(e)})); process.exit(2); });
"#;

#[test]
fn held_requests_reach_the_server_only_once_approved() {
    let mut env = Env::new("http-held");
    let dan = env.user("dan", &[]);
    let lea = env.user("lea", &[]);
    let api = PyServer::http(&env.dir, &loopback(4));
    let token = gatehouse_e2e::pg::password_file(&env.dir, "api.token", HELD_TOKEN);
    let policy = format!(
        r#"
[agent]
shutdown_grace = "1s"

[[backend]]
name = "orders-api"
protocol = "http"
address = "{api}"
credentials = {{ bearer_file = "{token}" }}

[[approvers]]
name = "leads"
who = {{ users = ["{lea}"] }}

[[rule]]
name = "dan deletes with a lead"
who = {{ users = ["{dan}"] }}
backends = ["orders-api"]
methods = ["GET", "DELETE"]
paths = ["/api/v1/orders/*"]
approval = {{ for = ["DELETE"], by = "leads", timeout = "30s" }}

[[rule]]
name = "dan puts, quickly approved or not at all"
who = {{ users = ["{dan}"] }}
backends = ["orders-api"]
methods = ["PUT"]
paths = ["/api/v1/slow/*"]
approval = {{ for = ["*"], by = "leads", timeout = "1s" }}
"#,
        api = api.addr,
        token = token.display(),
    );
    let config = env.write_policy("policy.toml", &policy);
    env.start_agent(&config);
    let bin = env.path("gatehouse-cli");
    std::fs::copy(gatehouse_e2e::gatehouse_bin(), &bin).expect("copy the CLI");
    std::fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    let base = format!("http://{}", api.addr);
    let deletes = |path: &str| api.requests().iter().filter(|r| r["method"] == "DELETE" && r["path"] == path).count();

    // HTTP/2: the DELETE waits; a GET on the same connection is answered meanwhile.
    let script = env.path("h2_held.js");
    std::fs::write(&script, H2_HELD).expect("write the node script");
    let mut node = env.spawn_as(&dan, None, Path::new("/usr/bin/node"), &[script.to_str().unwrap(), &base]);
    let get = gatehouse_e2e::read_json_line(&mut node);
    assert_eq!(get["method"], "GET", "{get}");
    assert_eq!(get["status"], 200, "{get}");
    let id = pending(&env, &bin, &lea, "/api/v1/orders/9");
    assert_eq!(deletes("/api/v1/orders/9"), 0, "the held DELETE reached the server before approval");
    // The requester may not approve it.
    let o = cli(&env, &bin, &dan, &["approve", &id.to_string()]);
    assert!(!o.status.success(), "the requester approved their own request");
    assert_eq!(deletes("/api/v1/orders/9"), 0);
    let o = cli(&env, &bin, &lea, &["approve", &id.to_string()]);
    assert!(o.status.success(), "approve: {}", String::from_utf8_lossy(&o.stderr));
    let del = gatehouse_e2e::read_json_line(&mut node);
    assert_eq!(del["method"], "DELETE", "{del}");
    assert_eq!(del["status"], 200, "{del}");
    assert_eq!(deletes("/api/v1/orders/9"), 1, "the approved DELETE reached the server once");
    let _ = node.wait();
    let seen = api.requests();
    let d = seen.iter().find(|r| r["method"] == "DELETE").expect("the approved DELETE reached the server");
    assert_eq!(d["headers"]["authorization"], format!("Bearer {HELD_TOKEN}"), "the held token is injected");

    // HTTP/1.1 (curl): denied, with the approver's reason; the server never sees it.
    let child = env.spawn_as(
        &dan,
        None,
        Path::new("/usr/bin/curl"),
        &["-s", "-X", "DELETE", &format!("{base}/api/v1/orders/10")],
    );
    let id = pending(&env, &bin, &lea, "/api/v1/orders/10");
    let o = cli(&env, &bin, &lea, &["deny", &id.to_string(), "--reason", "not during the freeze"]);
    assert!(o.status.success(), "deny: {}", String::from_utf8_lossy(&o.stderr));
    let out = child.wait_with_output().expect("curl");
    let refused = json(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(refused["status"], 403, "{refused}");
    assert_eq!(refused["rule"], "dan deletes with a lead", "{refused}");
    let reason = refused["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("denied by") && reason.contains("not during the freeze"), "{refused}");
    assert_eq!(deletes("/api/v1/orders/10"), 0, "a denied request reached the server");

    // A held request's body is read first and shown to the approvers (size,
    // SHA-256, beginning); exactly that body reaches the server once approved.
    let body = r#"{"refund": 9999, "note": "line one\nline two"}"#;
    let child = env.spawn_as(
        &dan,
        None,
        Path::new("/usr/bin/curl"),
        &[
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            "DELETE",
            "-H",
            "content-type: application/json",
            "--data-binary",
            body,
            &format!("{base}/api/v1/orders/12"),
        ],
    );
    let id = pending(&env, &bin, &lea, "/api/v1/orders/12");
    let o = cli(&env, &bin, &lea, &["requests", "--json"]);
    let req = String::from_utf8_lossy(&o.stdout).lines().map(json).find(|r| r["id"] == id).expect("the request");
    let shown = req["subject"]["body"].as_str().unwrap_or_default().to_owned();
    assert!(shown.starts_with(&format!("{} bytes, sha256 ", body.len())) && shown.ends_with(body), "{req}");
    let o = cli(&env, &bin, &lea, &["requests"]);
    let listed = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        listed.contains(r#"with body"#)
            && listed.contains(r#""refund": 9999"#)
            && listed.contains(r"line one\nline two"),
        "{listed}"
    );
    assert_eq!(deletes("/api/v1/orders/12"), 0, "the held DELETE reached the server before approval");
    let o = cli(&env, &bin, &lea, &["approve", &id.to_string()]);
    assert!(o.status.success(), "approve: {}", String::from_utf8_lossy(&o.stderr));
    let out = child.wait_with_output().expect("curl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200", "the approved DELETE was answered");
    let seen = api.requests();
    let d = seen.iter().find(|r| r["method"] == "DELETE" && r["path"] == "/api/v1/orders/12").expect("forwarded");
    assert_eq!(d["body"], body, "the server got the body the approver saw");

    // A client that gives up withdraws its request: nobody can approve it into running later.
    let mut gone = env.spawn_as(
        &dan,
        None,
        Path::new("/usr/bin/curl"),
        &["-s", "-X", "DELETE", &format!("{base}/api/v1/orders/11")],
    );
    let id = pending(&env, &bin, &lea, "/api/v1/orders/11");
    gone.kill().expect("stop curl");
    let _ = gone.wait();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let o = cli(&env, &bin, &lea, &["requests", "--json"]);
        let state = String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(json)
            .find(|r| r["id"] == id)
            .map(|r| r["state"]["state"].clone());
        if state == Some(Value::from("withdrawn")) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "request {id} is still {state:?} after its client left");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(!cli(&env, &bin, &lea, &["approve", &id.to_string()]).status.success());
    assert_eq!(deletes("/api/v1/orders/11"), 0);

    // Nobody decides in time: refused after the rule's timeout.
    let (out, _) = {
        let o = env.run_as(
            &dan,
            None,
            Path::new("/usr/bin/curl"),
            &["-s", "-X", "PUT", "-d", "x", &format!("{base}/api/v1/slow/1")],
        );
        (String::from_utf8_lossy(&o.stdout).into_owned(), ())
    };
    let timed_out = json(&out);
    assert_eq!(timed_out["status"], 403, "{timed_out}");
    assert!(timed_out["reason"].as_str().unwrap_or_default().contains("not approved in time"), "{timed_out}");
    assert!(api.requests().iter().all(|r| r["method"] != "PUT"), "a timed-out request reached the server");

    // On record (the writer thread may be a moment behind): every step of each request, and each exchange.
    let approval_steps = || -> Vec<Value> {
        gatehouse_e2e::settle(&env.db());
        let conn = rusqlite::Connection::open_with_flags(env.db(), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        let mut st = conn.prepare("SELECT body FROM events WHERE kind = 'approval' ORDER BY seq").unwrap();
        st.query_map([], |r| r.get::<_, Vec<u8>>(0))
            .unwrap()
            .filter_map(Result::ok)
            .filter_map(|b| serde_json::from_slice(&b).ok())
            .collect()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let steps = loop {
        let steps = approval_steps();
        let events: Vec<&str> = steps.iter().filter_map(|s| s["event"].as_str()).collect();
        if ["requested", "approved", "denied", "withdrawn", "timed_out"].iter().all(|e| events.contains(e)) {
            break steps;
        }
        assert!(std::time::Instant::now() < deadline, "approval steps missing on record: {events:?}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(steps.iter().all(|s| s["request"]["subject"]["type"] == "http_request"), "{steps:?}");
    let on_record = |recs: &[(String, Value, Vec<u8>)], method: &str, target: &str| {
        recs.iter().any(|(k, b, _)| k == "http" && b["method"] == method && b["target"] == target)
    };
    let records = http_records_until(&env.db(), |recs| {
        on_record(recs, "DELETE", "/api/v1/orders/9") && on_record(recs, "DELETE", "/api/v1/orders/10")
    });
    let exchange = |method: &str, target: &str| {
        records
            .iter()
            .find(|(k, b, _)| k == "http" && b["method"] == method && b["target"] == target)
            .unwrap_or_else(|| panic!("no record of {method} {target}"))
            .1
            .clone()
    };
    let approved = exchange("DELETE", "/api/v1/orders/9");
    assert_eq!(approved["decision"], "allow", "{approved}");
    assert_eq!(approved["status"], 200, "{approved}");
    assert!(approved["reason"].as_str().unwrap_or_default().contains("approved"), "{approved}");
    let denied = exchange("DELETE", "/api/v1/orders/10");
    assert_eq!(denied["decision"], "deny", "{denied}");
    assert_eq!(denied["status"], 403, "{denied}");
}

/// An HTTPS "ingress": one address, a virtual host per TLS server name
/// (its own certificate and request log), as a shared load balancer serves
/// several services. Arguments: host, then name, cert, key, log per vhost.
const INGRESS_PY: &str = r#"
import sys, json, ssl, http.server
host, rest = sys.argv[1], sys.argv[2:]
vhosts = {}
for i in range(0, len(rest), 4):
    name, cert, key, log = rest[i:i + 4]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    vhosts[name] = (ctx, open(log, "a"))
front = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
front.load_cert_chain(rest[1], rest[2])
def pick(sock, name, _ctx):
    if name not in vhosts:
        return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
    sock.context = vhosts[name][0]
    sock.vhost = name
front.sni_callback = pick
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a):
        pass
    def any(self):
        n = int(self.headers.get("content-length") or 0)
        if n:
            self.rfile.read(n)
        name = getattr(self.connection, "vhost", None)
        rec = {"vhost": name, "method": self.command, "path": self.path,
               "headers": {k.lower(): v for k, v in self.headers.items()}}
        if name in vhosts:
            vhosts[name][1].write(json.dumps(rec) + "\n")
            vhosts[name][1].flush()
        body = json.dumps({"vhost": name}).encode()
        self.send_response(200 if name in vhosts else 421)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    do_GET = do_POST = do_DELETE = any
srv = http.server.ThreadingHTTPServer((host, 0), H)
srv.socket = front.wrap_socket(srv.socket, server_side=True)
print(srv.server_address[1], flush=True)
srv.serve_forever()
"#;

/// A test CA and a certificate for each DNS name: (CA file, [(cert, key)]).
fn dns_certs(dir: &Path, names: &[&str]) -> (std::path::PathBuf, Vec<(std::path::PathBuf, std::path::PathBuf)>) {
    std::fs::create_dir_all(dir).expect("cert dir");
    let run = |args: &[&str]| {
        let o = std::process::Command::new("openssl").args(args).current_dir(dir).output().expect("openssl");
        assert!(o.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=ingress test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    ]);
    let mut out = Vec::new();
    for n in names {
        std::fs::write(dir.join(format!("{n}.ext")), format!("subjectAltName=DNS:{n}\nbasicConstraints=CA:FALSE\n"))
            .expect("ext");
        let (key, csr, crt) = (format!("{n}.key"), format!("{n}.csr"), format!("{n}.crt"));
        run(&["req", "-newkey", "rsa:2048", "-nodes", "-subj", &format!("/CN={n}"), "-keyout", &key, "-out", &csr]);
        run(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &format!("{n}.ext"),
            "-out",
            &crt,
        ]);
        out.push((dir.join(crt), dir.join(key)));
    }
    (dir.join("ca.crt"), out)
}

#[test]
fn sni_picks_the_backend_among_https_backends_on_one_address() {
    let mut env = Env::new("http-sni");
    let ana = env.user("ana", &[]);
    let bob = env.user("bob", &[]);
    let ip = loopback(5);
    let (ingress_ca, certs) = dns_certs(&env.dir.join("ingress-tls"), &["orders.test", "billing.test"]);
    let script = env.path("ingress.py");
    std::fs::write(&script, INGRESS_PY).expect("write ingress");
    let logs = [env.path("orders.log"), env.path("billing.log")];
    let mut args: Vec<String> = vec![script.display().to_string(), ip.clone()];
    for ((name, (cert, key)), log) in ["orders.test", "billing.test"].iter().zip(&certs).zip(&logs) {
        args.extend([
            name.to_string(),
            cert.display().to_string(),
            key.display().to_string(),
            log.display().to_string(),
        ]);
    }
    let mut ingress = std::process::Command::new("/usr/bin/python3")
        .args(&args)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the ingress");
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(ingress.stdout.take().unwrap()), &mut line).unwrap();
    let port: u16 = line.trim().parse().unwrap_or_else(|_| panic!("ingress port: {line:?}"));
    // Stopped by PID when the test ends, whatever happens.
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _ingress = Kill(ingress);
    let addr = format!("{ip}:{port}");
    let orders_token = gatehouse_e2e::pg::password_file(&env.dir, "orders.token", "orders-token-1a");
    let billing_token = gatehouse_e2e::pg::password_file(&env.dir, "billing.token", "billing-token-2b");
    let db = env.db().display().to_string();
    assert!(env.gatehouse(&["ca", "init", "--db", &db]).status.success());
    let agent_ca = env.path("agent-ca.crt");
    std::fs::write(&agent_ca, env.gatehouse(&["ca", "export", "--db", &db]).stdout).expect("agent CA");
    let policy = format!(
        r#"
[[backend]]
name = "orders-api"
protocol = "http"
address = "{addr}"
tls = "terminate"
server_names = ["orders.test"]
tls_server_name = "orders.test"
ca_file = "{ca}"
credentials = {{ bearer_file = "{orders}" }}

[[backend]]
name = "billing-api"
protocol = "http"
address = "{addr}"
tls = "terminate"
server_names = ["billing.test"]
tls_server_name = "billing.test"
ca_file = "{ca}"
credentials = {{ bearer_file = "{billing}" }}

[[rule]]
name = "ana reads orders"
who = {{ users = ["{ana}"] }}
backends = ["orders-api"]
methods = ["GET"]

[[rule]]
name = "bob reads both"
who = {{ users = ["{bob}"] }}
backends = ["orders-api", "billing-api"]
methods = ["GET"]
"#,
        ca = ingress_ca.display(),
        orders = orders_token.display(),
        billing = billing_token.display(),
    );
    let config = env.write_policy("policy.toml", &policy);
    let check = env.gatehouse(&["policy", "check", &config.display().to_string()]);
    let text = format!("{}{}", String::from_utf8_lossy(&check.stdout), String::from_utf8_lossy(&check.stderr));
    assert!(check.status.success(), "{text}");
    assert!(
        text.contains(&format!("backends share {addr}"))
            && text.contains("orders.test → `orders-api`")
            && text.contains("billing.test → `billing-api`"),
        "policy check explains the shared address: {text}"
    );
    env.start_agent(&config);
    let curl = |user: &str, name: &str, path: &str| {
        let url = format!("https://{name}:{port}{path}");
        let resolve = format!("{name}:{port}:{ip}");
        let args = [
            "-sS",
            "--cacert",
            agent_ca.to_str().unwrap(),
            "--resolve",
            &resolve,
            "-H",
            "Authorization: Bearer own",
            &url,
        ];
        let o = env.run_as(user, None, Path::new("/usr/bin/curl"), &args);
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let seen =
        |i: usize| -> Vec<Value> { std::fs::read_to_string(&logs[i]).unwrap_or_default().lines().map(json).collect() };

    // Each name reaches its own virtual host with its own held token.
    let (code, out, err) = curl(&bob, "orders.test", "/o/1");
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(json(&out)["vhost"], "orders.test");
    let (code, out, err) = curl(&bob, "billing.test", "/b/1");
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(json(&out)["vhost"], "billing.test");
    let (o, b) = (seen(0), seen(1));
    assert_eq!(o.len(), 1, "{o:?}");
    assert_eq!(b.len(), 1, "{b:?}");
    assert_eq!(o[0]["headers"]["authorization"], "Bearer orders-token-1a");
    assert_eq!(b[0]["headers"]["authorization"], "Bearer billing-token-2b");
    assert_eq!(o[0]["path"], "/o/1");

    // Domain fronting: orders' name in TLS, billing's in Host: refused, nothing upstream.
    let url = format!("https://orders.test:{port}/b/fronted");
    let resolve = format!("orders.test:{port}:{ip}");
    let o = env.run_as(
        &bob,
        None,
        Path::new("/usr/bin/curl"),
        &["-sS", "--cacert", agent_ca.to_str().unwrap(), "--resolve", &resolve, "-H", "Host: billing.test", &url],
    );
    let refused = json(&String::from_utf8_lossy(&o.stdout));
    assert_eq!(refused["status"], 421, "{refused}");
    assert_eq!((seen(0).len(), seen(1).len()), (1, 1), "a fronted request went upstream");

    // The name picks the rules too: ana may reach orders, not billing.
    let (code, _, err) = curl(&ana, "orders.test", "/o/2");
    assert_eq!(code, Some(0), "{err}");
    let (code, _, _) = curl(&ana, "billing.test", "/b/2");
    assert_ne!(code, Some(0), "ana reached billing through the shared address");
    assert_eq!(seen(1).len(), 1, "billing got ana's request");

    // A name no backend serves: a TLS alert, nothing upstream, and a refusal on record.
    let (code, _, err) = curl(&bob, "evil.test", "/x");
    assert_ne!(code, Some(0));
    assert!(err.contains("unrecognized name"), "curl: {err}");
    assert_eq!((seen(0).len(), seen(1).len()), (2, 1));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let sessions = env.sessions();
        if let Some(s) = sessions.iter().find(|s| s.to_string().contains("evil.test")) {
            assert_eq!(s["decision"], "deny", "{s}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no refusal of evil.test on record: {sessions:#?}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // The sessions of bob are recorded under the backend the name picked.
    let sessions = env.sessions();
    for backend in ["orders-api", "billing-api"] {
        assert!(sessions.iter().any(|s| s["backend"] == backend && s["decision"] == "allow"), "{sessions:#?}");
    }
}

/// No Kubernetes API server can run here (no kube-apiserver, k3s or kind
/// on this machine), so the backend is the test HTTP server answering
/// Kubernetes-shaped paths; the client is the real kubectl (`get --raw`)
/// and curl.
#[test]
fn kubernetes_paths_are_decided_and_exec_is_held() {
    let mut env = Env::new("http-k8s");
    let ana = env.user("ana", &[]);
    let lea = env.user("lea", &[]);
    let api = PyServer::http(&env.dir, &loopback(6));
    let policy = format!(
        r#"
[[backend]]
name = "cluster"
protocol = "http"
address = "{api}"

[[approvers]]
name = "leads"
who = {{ users = ["{lea}"] }}

[[rule]]
name = "ana reads prod pods"
who = {{ users = ["{ana}"] }}
backends = ["cluster"]
k8s = {{ verbs = ["get", "list", "create"], resources = ["pods", "pods/log", "pods/exec"], namespaces = ["prod"] }}
approval = {{ for = ["pods/exec"], by = "leads", timeout = "30s" }}

[[rule]]
name = "no secrets"
who = {{ users = ["*"] }}
backends = ["cluster"]
action = "deny"
k8s = {{ resources = ["secrets"] }}
"#,
        api = api.addr,
    );
    let config = env.write_policy("policy.toml", &policy);
    env.start_agent(&config);
    let bin = env.path("gatehouse-cli");
    std::fs::copy(gatehouse_e2e::gatehouse_bin(), &bin).expect("copy the CLI");
    std::fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    let server = format!("http://{}", api.addr);
    let paths = || {
        api.requests()
            .iter()
            .map(|r| format!("{} {}", r["method"].as_str().unwrap(), r["path"].as_str().unwrap()))
            .collect::<Vec<_>>()
    };

    // kubectl reads pods in prod.
    let o = env.run_as(
        &ana,
        None,
        Path::new("/usr/bin/kubectl"),
        &["--server", &server, "--kubeconfig", "/dev/null", "get", "--raw", "/api/v1/namespaces/prod/pods"],
    );
    assert!(o.status.success(), "kubectl: {}", String::from_utf8_lossy(&o.stderr));
    assert!(paths().contains(&"GET /api/v1/namespaces/prod/pods".to_owned()), "{:?}", paths());

    // Out of scope: another namespace, a verb not named, secrets (denied by rule), a trailing slash.
    for (method, path, rule) in [
        ("GET", "/api/v1/namespaces/dev/pods", "ana reads prod pods"),
        ("DELETE", "/api/v1/namespaces/prod/pods/web", "ana reads prod pods"),
        ("GET", "/api/v1/namespaces/prod/secrets/db", "no secrets"),
        ("GET", "/api/v1/namespaces/prod/secrets/", "no secrets"),
    ] {
        let o = env.run_as(&ana, None, Path::new("/usr/bin/curl"), &["-s", "-X", method, &format!("{server}{path}")]);
        let v = json(&String::from_utf8_lossy(&o.stdout));
        assert_eq!((v["status"].as_u64(), v["rule"].as_str()), (Some(403), Some(rule)), "{method} {path}: {v}");
    }
    assert!(
        paths().iter().all(|p| !p.contains("/dev/") && !p.contains("secrets") && !p.starts_with("DELETE")),
        "{:?}",
        paths()
    );

    // exec waits for a lead; the server sees it only once approved.
    let exec = format!("{server}/api/v1/namespaces/prod/pods/web/exec?command=ls");
    let child = env.spawn_as(&ana, None, Path::new("/usr/bin/curl"), &["-s", "-X", "POST", &exec]);
    let id = pending(&env, &bin, &lea, "/pods/web/exec");
    assert!(paths().iter().all(|p| !p.contains("/exec")), "exec reached the server before approval");
    let o = cli(&env, &bin, &lea, &["approve", &id.to_string()]);
    assert!(o.status.success(), "approve: {}", String::from_utf8_lossy(&o.stderr));
    let out = child.wait_with_output().expect("curl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok POST /api/v1/namespaces/prod/pods/web/exec?command=ls");
    assert!(paths().contains(&"POST /api/v1/namespaces/prod/pods/web/exec?command=ls".to_owned()));
}

/// A request's trailer section does not reach the backend: Gatehouse takes
/// client claims (`X-Forwarded-For`, `Impersonate-*`, a client's
/// `Authorization`) out of the header section, and a server that merges
/// trailer fields into its headers (Apache's `MergeTrailers`, CVE-2013-5704)
/// would read them from there instead. The body arrives whole; the record
/// counts the trailer section dropped.
#[test]
fn request_trailers_do_not_reach_the_backend() {
    let w = world("httptrailers");
    let request = format!(
        "POST /api/v1/notes HTTP/1.1\r\nHost: {}\r\nTransfer-Encoding: chunked\r\n\
         Trailer: X-Forwarded-For, Impersonate-User\r\nConnection: close\r\n\r\n\
         5\r\nhello\r\n0\r\nX-Forwarded-For: 203.0.113.9\r\nImpersonate-User: system:admin\r\n\r\n",
        w.api.addr
    );
    let (out, err) = raw_request(&w, &w.eve, &request);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}{err}\n{}", w.env.agent_log());
    let got =
        w.api.requests().into_iter().rfind(|r| r["path"] == "/api/v1/notes").expect("the request reached the backend");
    assert_eq!(got["body"], "hello", "{got}");
    assert_eq!(got["trailers"], serde_json::json!({}), "the backend got the client's trailer fields: {got}");
    let shown = got.to_string();
    assert!(!shown.contains("203.0.113.9") && !shown.contains("system:admin"), "{shown}");
    let rec = record_for(&w, "/api/v1/notes", |b| b["masked"]["request_trailers_dropped"] == 1);
    assert!(rec.is_some(), "{:?}", http_records(&w.env.db()));
}

/// A client that asks the backend to switch to HTTP/2 (`Upgrade: h2c`) and
/// then speaks HTTP/2 on the connection: every request after the first would
/// travel inside the upgraded stream, which Gatehouse relayed without reading
/// (h2c smuggling). The backend is hypercorn, which honours the upgrade as
/// Apache's mod_http2, Envoy and Go's h2c handler do; the clients are curl
/// with `--http2` (it names `HTTP2-Settings` in `Connection`) and a raw one
/// built on the h2 library (it does not).
const H2C_CLIENT_PY: &str = r#"
import socket, sys
import h2.connection, h2.config, h2.events
host, port, first, second = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
s = socket.create_connection((host, port), timeout=10)
conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
settings = conn.initiate_upgrade_connection().decode()
s.sendall((f"GET {first} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: Upgrade\r\n"
           f"Upgrade: h2c\r\nHTTP2-Settings: {settings}\r\n\r\n").encode())
buf = b""
while b"\r\n\r\n" not in buf:
    d = s.recv(65536)
    if not d:
        break
    buf += d
head, _, rest = buf.partition(b"\r\n\r\n")
status = head.split(b"\r\n")[0].decode()
print("STATUS", status)
if " 101" not in status:
    sys.exit(0)
s.sendall(conn.data_to_send())
sid = conn.get_next_available_stream_id()
conn.send_headers(sid, [(":method", "GET"), (":path", second), (":scheme", "http"), (":authority", f"{host}:{port}")], end_stream=True)
s.sendall(conn.data_to_send())
bodies, ended, data = {}, set(), rest
while sid not in ended:
    for e in conn.receive_data(data):
        if isinstance(e, h2.events.DataReceived):
            bodies[e.stream_id] = bodies.get(e.stream_id, b"") + e.data
            conn.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
        elif isinstance(e, h2.events.StreamEnded):
            ended.add(e.stream_id)
        elif isinstance(e, h2.events.ConnectionTerminated):
            ended.add(sid)
    s.sendall(conn.data_to_send())
    if sid in ended:
        break
    data = s.recv(65536)
    if not data:
        break
for k in sorted(bodies):
    print("STREAM", k, bodies[k].decode(errors="replace"))
"#;

#[test]
fn an_upgrade_to_http2_cannot_carry_requests_past_the_policy() {
    let mut env = Env::new("http-h2c");
    let ana = env.user("ana", &[]);
    let api = PyServer::h2c(&env.dir, &loopback(7));
    let policy = format!(
        r#"
[[backend]]
name = "h2c-api"
protocol = "http"
address = "{api}"

[[rule]]
name = "ana reads the api"
who = {{ users = ["{ana}"] }}
backends = ["h2c-api"]
methods = ["GET"]
paths = ["/api/*"]

[[rule]]
name = "no admin"
who = {{ users = ["*"] }}
backends = ["h2c-api"]
action = "deny"
paths = ["/admin/*"]
"#,
        api = api.addr,
    );
    let config = env.write_policy("policy.toml", &policy);
    env.start_agent(&config);
    let base = format!("http://{}", api.addr);
    let served = || {
        api.requests()
            .iter()
            .map(|r| {
                let field = |k: &str| r[k].as_str().unwrap_or("").to_owned();
                format!("{} {} {}", field("version"), field("method"), field("path"))
            })
            .collect::<Vec<_>>()
    };
    // The backend does switch when asked directly (the test's own check of its backend).
    let o = std::process::Command::new("/usr/bin/curl")
        .args(["-sS", "--http2", &format!("{base}/api/direct")])
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&o.stdout), "2 GET /api/direct", "{}", String::from_utf8_lossy(&o.stderr));

    // curl asks for h2c on its first request and would reuse the connection for the second.
    let o = env.run_as(
        &ana,
        None,
        Path::new("/usr/bin/curl"),
        &["-sS", "--http2", &format!("{base}/api/one"), &format!("{base}/admin/users")],
    );
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(out.starts_with("1.1 GET /api/one"), "{out}{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.contains("\"no admin\""), "{out}");
    // The raw client: the upgrade is not passed on, so there is no HTTP/2 stream to smuggle in.
    let (host, port) = api.addr.split_once(':').expect("host:port");
    let o = env.run_as(
        &ana,
        None,
        Path::new("/usr/bin/python3"),
        &["-c", H2C_CLIENT_PY, host, port, "/api/two", "/admin/users"],
    );
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        out.starts_with("STATUS HTTP/1.1 200") && !out.contains("STREAM"),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // What the server got: no request for /admin, and through Gatehouse no
    // upgrade it could have taken (the first request is the test's own, direct).
    let seen = served();
    assert!(seen.iter().all(|r| !r.contains("/admin")), "the backend served {seen:?}");
    for r in api.requests().iter().skip(1) {
        assert!(r["headers"]["upgrade"].is_null() && r["headers"]["http2-settings"].is_null(), "{r}");
    }
    assert_eq!(seen[1..], ["1.1 GET /api/one", "1.1 GET /api/two"], "{seen:?}");
    // The record says the upgrade was not passed on.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let recs = http_records(&env.db());
        if recs.iter().any(|(k, b, _)| {
            k == "http"
                && b["status"] == 200
                && b["reason"].as_str().is_some_and(|r| r.contains("upgrade to h2c was not passed on"))
        }) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{recs:?}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// A backend that holds a credential could send it back over a WebSocket
/// (the upgrade request carried it), as it could in a response body: every
/// copy is overwritten as the bytes pass, and permessage-deflate, which would
/// hide one in compressed frames, is not offered to it. A session cookie it
/// sets in the 101 answer is a credential of its own, dropped as from any
/// response.
#[test]
fn a_held_credential_does_not_come_back_over_a_websocket() {
    let mut env = Env::new("http-wsheld");
    let ana = env.user("ana", &[]);
    let ws = PyServer::ws_echo(&env.dir, &loopback(8));
    let token = gatehouse_e2e::pg::password_file(&env.dir, "ws.token", HELD_TOKEN);
    let policy = format!(
        r#"
[[backend]]
name = "ws-held"
protocol = "http"
address = "{ws}"
credentials = {{ bearer_file = "{token}" }}

[[rule]]
name = "ana talks"
who = {{ users = ["{ana}"] }}
backends = ["ws-held"]
"#,
        ws = ws.addr,
        token = token.display(),
    );
    let config = env.write_policy("policy.toml", &policy);
    env.start_agent(&config);
    // The client offers permessage-deflate (websockets' default).
    let script = r#"
import asyncio, sys, websockets
async def m():
    async with websockets.connect(sys.argv[1]) as ws:
        print(await ws.recv())
        await ws.send('and an echo')
        print(await ws.recv())
        print('cookie', ws.response_headers.get('Set-Cookie'))
asyncio.run(m())
"#;
    let o = env.run_as(&ana, None, Path::new("/usr/bin/python3"), &["-c", script, &format!("ws://{}/whoami", ws.addr)]);
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    let blank = format!("you are {}", "*".repeat(format!("Bearer {HELD_TOKEN}").len()));
    assert_eq!(
        out,
        format!("{blank}\nand an echo\ncookie None\n"),
        "{}\n{}",
        String::from_utf8_lossy(&o.stderr),
        env.agent_log()
    );
    // Sent as one message in two fragments, the frame header between the halves of the copy.
    let o = env.run_as(
        &ana,
        None,
        Path::new("/usr/bin/python3"),
        &["-c", script, &format!("ws://{}/whoami-frag", ws.addr)],
    );
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert_eq!(out, format!("{blank}\nand an echo\ncookie None\n"), "{}", String::from_utf8_lossy(&o.stderr));
    // The recorded frames hold no copy either.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let recs = http_records(&env.db());
        let frames: Vec<&(String, Value, Vec<u8>)> = recs.iter().filter(|(k, _, _)| k == "ws_frame").collect();
        if frames.iter().any(|(_, b, d)| b["dir"] == "down" && d == blank.as_bytes()) {
            assert!(
                recs.iter().all(|(_, b, d)| !b.to_string().contains(HELD_TOKEN)
                    && !String::from_utf8_lossy(d).contains("held-token")),
                "{recs:?}"
            );
            break;
        }
        assert!(std::time::Instant::now() < deadline, "frames not recorded: {frames:?}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(env.agent_log().contains("the backend sent the held credential over an upgraded connection"));
    // The session cookie the service set in answer to the held credential stayed here.
    let recs = http_records(&env.db());
    assert!(
        recs.iter().any(|(k, b, _)| k == "http"
            && b["status"] == 101
            && b["credentials"].as_str().is_some_and(|c| c.contains("backend Set-Cookie dropped (1)"))),
        "{recs:?}"
    );
}

/// A deny rule's path written with letters outside ASCII that a backend
/// routing case-insensitively by Unicode rules reads as the denied ASCII
/// path: the dotless `ı` (U+0131) and `İ` (U+0130) are `i`, the long `ſ`
/// (U+017F) is `s` to Python's `re` with `IGNORECASE` (as Django's `(?i)`
/// patterns route) and to Java's `equalsIgnoreCase`. The backend here
/// routes `(?i)^/admin/` that way, on the path decoded twice (as behind a
/// proxy that decodes it first: `/%2561dmin` is `/admin` to it); ben may GET
/// any path no deny rule names, and `/admin/*` is denied to everyone.
#[test]
fn a_denied_path_spelled_with_unicode_case_variants_is_refused() {
    let w = world("httpunicase");
    let url = |p: &str| format!("http://{}{p}", w.api.addr);
    // The backend does route these as its admin area (asked directly).
    let direct =
        std::process::Command::new("/usr/bin/curl").args(["-s", &url("/adm%C4%B1n/users")]).output().expect("curl");
    assert_eq!(String::from_utf8_lossy(&direct.stdout), "admin area: user list");
    let before = w.api.requests().len();
    let (ok, err) = curl(&w, &w.ben, &["-s", "-w", " %{http_code}", &url("/api/v1/notes")]);
    assert!(ok.ends_with(" 200"), "ben's allowed GET: {ok}{err}\n{}", w.env.agent_log());
    for path in [
        "/adm%C4%B1n/users",
        "/ADM%C4%B0N/users",
        "/adm%C4%B1n/u%C5%BFers",
        "/%2561dmin/users",
        "/adm%25C4%25B1n/users",
    ] {
        let (out, err) = curl(&w, &w.ben, &["-s", &url(path)]);
        assert!(!out.contains("admin area"), "{path}: the backend's admin area answered ben: {out}");
        let refusal = json(&out);
        assert_eq!(
            (refusal["status"].as_u64(), refusal["rule"].as_str()),
            (Some(403), Some("no admin")),
            "{path}: {out}{err}"
        );
    }
    // What the server received: ben's allowed request, and none of the others.
    let got: Vec<String> =
        w.api.requests().iter().skip(before).filter_map(|r| r["path"].as_str().map(str::to_owned)).collect();
    assert_eq!(got, ["/api/v1/notes"], "the backend received: {got:?}");
}

/// A streamed response (server-sent events, a watch) on a backend that holds
/// a credential: each event reaches the client when the backend sends it.
/// The scrubber held the last bytes of every chunk (as long as the longest
/// form of the credential) until the next chunk, so an event stayed cut
/// short until the next change; now only bytes that begin a copy wait.
/// The backend sends its second event only once the client has read the
/// first whole (and asked for the next): held, the first never completes.
#[test]
fn a_streamed_event_is_not_held_back_for_the_next() {
    let w = world("httpsse");
    let script = r#"
import socket, sys
h, p = sys.argv[1].rsplit(':', 1)
s = socket.create_connection((h, int(p)), timeout=5)
s.sendall(f"GET /api/v1/events HTTP/1.1\r\nHost: {sys.argv[1]}\r\n\r\n".encode())
got = b""
try:
    while b"shipped\n\n" not in got:
        d = s.recv(65536)
        if not d:
            break
        got += d
    print("first whole", flush=True)
except socket.timeout:
    print("first held back:", got[-80:], flush=True)
    sys.exit(0)
n = socket.create_connection((h, int(p)), timeout=5)
n.sendall(f"GET /api/v1/events-next HTTP/1.1\r\nHost: {sys.argv[1]}\r\nConnection: close\r\n\r\n".encode())
n.recv(65536)
while b"second" not in got:
    d = s.recv(65536)
    if not d:
        break
    got += d
print("second", b"second" in got, flush=True)
"#;
    let addr = w.api.addr.to_string();
    let o = w.env.run_as(&w.eve, None, Path::new("/usr/bin/python3"), &["-c", script, &addr]);
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert_eq!(out, "first whole\nsecond True\n", "{}\n{}", String::from_utf8_lossy(&o.stderr), w.env.agent_log());
}
