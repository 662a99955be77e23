//! Conditional access end to end: statements held for a human approval
//! (approved, denied, timed out, cancelled), logins held at connect, and
//! just-in-time grants (requested, approved, revoked), through the real
//! agent, a real PostgreSQL 15, psql and psycopg, with approvers running
//! `gatehouse approve` as other Unix users. Every assertion on outcome is
//! checked on the server (the table is there or not) and in the audit trail.
//! Needs root.
#![expect(clippy::unwrap_used, reason = "test helpers panic with context on failure")]
#![expect(clippy::indexing_slicing, reason = "indexing serde_json values by key returns Null, it cannot panic")]

use std::path::{Path, PathBuf};
use std::process::{Child, Output};
use std::time::{Duration, Instant};

use gatehouse_e2e::pg::{self, PgServer};
use gatehouse_e2e::{Env, free_port, loopback};
use serde_json::Value;

struct World {
    /// The webhook receiver (stopped by PID on drop, before the test directory goes).
    hook: Receiver,
    pg: PgServer,
    env: Env,
    gatehouse: PathBuf,
    /// A DBA: anything, but DROP and TRUNCATE wait for an SRE lead.
    dan: String,
    /// Two SRE leads (approvers).
    lea: String,
    sam: String,
    /// A developer with no rule: may request the "orders admin" grant.
    dev: String,
    /// A contractor whose logins wait for an approval.
    con: String,
    /// Nobody in particular.
    eve: String,
}

/// A local HTTP receiver for webhooks: every POST is a JSON line in
/// `hooks.jsonl` (path, event header, body, and whether the HMAC signature
/// checks out with the shared secret).
struct Receiver {
    child: Child,
    addr: String,
    log: PathBuf,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const RECEIVER: &str = r#"
import sys, json, hmac, hashlib, http.server
host, port, secret_path, log = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
key = open(secret_path, "rb").read().splitlines()[0]
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        want = "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()
        rec = {"path": self.path, "event": self.headers.get("X-Gatehouse-Event"),
               "signed": hmac.compare_digest(want, self.headers.get("X-Gatehouse-Signature", "")),
               "body": json.loads(body)}
        with open(log, "a") as f:
            f.write(json.dumps(rec) + "\n")
        self.send_response(204)
        self.end_headers()
    def log_message(self, *a): pass
http.server.HTTPServer((host, port), H).serve_forever()
"#;

fn receiver(env: &Env) -> (Receiver, PathBuf) {
    let secret = pg::password_file(&env.dir, "hook.secret", "hook-Secret-9");
    let script = env.path("receiver.py");
    std::fs::write(&script, RECEIVER).unwrap();
    let host = loopback(71);
    let port = free_port();
    let log = env.path("hooks.jsonl");
    let child = std::process::Command::new("/usr/bin/python3")
        .args([script.to_str().unwrap(), &host, &port.to_string(), secret.to_str().unwrap(), log.to_str().unwrap()])
        .spawn()
        .unwrap();
    let addr = format!("{host}:{port}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(&addr).is_err() {
        assert!(Instant::now() < deadline, "webhook receiver did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    (Receiver { child, addr, log }, secret)
}

fn world(name: &str, statement_timeout: &str) -> World {
    let mut env = Env::new(name);
    let dba = env.group("dba");
    let leads = env.group("leads");
    let devs = env.group("devs");
    let contractors = env.group("contr");
    let dan = env.user("dan", &[&dba]);
    let lea = env.user("lea", &[&leads]);
    let sam = env.user("sam", &[&leads]);
    let dev = env.user("dev", &[&devs]);
    let con = env.user("con", &[&contractors]);
    let eve = env.user("eve", &[]);
    let pg = PgServer::start(&env.dir, &loopback(70), free_port(), "log_statement = 'all'\n");
    pg.admin_db(
        "appdb",
        &format!(
            "CREATE TABLE victim (id int); CREATE TABLE orders (id int); INSERT INTO orders VALUES (1), (2);
             ALTER TABLE victim OWNER TO {app}; ALTER TABLE orders OWNER TO {app};",
            app = pg::APP_ROLE
        ),
    );
    let secret = pg::password_file(&env.dir, "appdb.secret", pg::APP_PASSWORD);
    let (hook, hook_secret) = receiver(&env);
    // A local command told of every step (root's, like the agent), and a webhook that never answers.
    let notify_sh = env.path("notify.sh");
    std::fs::write(
        &notify_sh,
        format!(
            "#!/bin/sh\ncat >> {}\necho >> {}\n",
            env.path("command.jsonl").display(),
            env.path("command.jsonl").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&notify_sh, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let dead = format!("{}:{}", loopback(72), free_port());
    let policy = format!(
        r#"
[[backend]]
name = "appdb"
protocol = "postgres"
address = "{addr}"
tls = "off"
credentials = {{ user = "{app}", password_file = "{s}" }}

[[approvers]]
name = "sre-leads"
who = {{ groups = ["{leads}"] }}

[[rule]]
name = "dbas, with a second pair of eyes"
who = {{ groups = ["{dba}"] }}
backend = "appdb"
statements = ["*"]
approval = {{ for = ["drop", "truncate", "delete"], by = "sre-leads", timeout = "{statement_timeout}" }}

[[rule]]
name = "contractors, when someone lets them in"
who = {{ groups = ["{contractors}"] }}
backend = "appdb"
statements = ["select"]
approval = {{ for = ["connect"], by = "sre-leads", timeout = "30s" }}

[[notify]]
name = "chat"
url = "http://{hook}/hooks/gatehouse"
secret_file = "{hook_secret}"

[[notify]]
name = "nobody home"
url = "http://{dead}/hook"

[[notify]]
name = "local log"
command = ["{notify_sh}"]
events = ["requested", "approved", "denied"]

[[grant]]
name = "orders admin"
who = {{ groups = ["{devs}"] }}
backends = ["appdb"]
statements = ["select", "insert", "update", "delete"]
max = "2h"
by = "sre-leads"
"#,
        addr = pg.addr(),
        app = pg::APP_ROLE,
        s = secret.display(),
        hook = hook.addr,
        hook_secret = hook_secret.display(),
        notify_sh = notify_sh.display(),
    );
    let config = env.write_policy("policy.toml", &policy);
    env.start_agent(&config);
    // Approvers run the CLI as themselves: a copy they can execute.
    let gatehouse = env.path("gatehouse-cli");
    std::fs::copy(gatehouse_e2e::gatehouse_bin(), &gatehouse).unwrap();
    std::fs::set_permissions(&gatehouse, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    World { hook, pg, env, gatehouse, dan, lea, sam, dev, con, eve }
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

impl World {
    fn psql_args(&self, sql: &str) -> Vec<String> {
        let port = self.pg.port.to_string();
        ["-h", &self.pg.host, "-p", &port, "-U", "whoever", "-d", "appdb", "-X", "-A", "-t", "-c", sql]
            .iter()
            .map(|s| (*s).to_owned())
            .collect()
    }

    fn psql(&self, user: &str, sql: &str) -> Output {
        let args = self.psql_args(sql);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        self.env.run_as(user, None, Path::new("/usr/bin/psql"), &refs)
    }

    /// psql in the background, stdout and stderr captured (notices and errors go to stderr).
    fn psql_spawn(&self, user: &str, sql: &str) -> Child {
        let mut cmd = std::process::Command::new("sh");
        cmd.arg("-c")
            .arg("echo $$ > \"$0/cgroup.procs\" && exec \"$@\"")
            .arg(&self.env.cgroup)
            .args(["setpriv", "--reuid", user, "--regid", user, "--init-groups", "--", "/usr/bin/psql"])
            .args(self.psql_args(sql))
            .env("HOME", &self.env.dir)
            .current_dir(&self.env.dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        cmd.spawn().unwrap()
    }

    fn cli(&self, user: &str, args: &[&str]) -> Output {
        let ctl = self.env.control().display().to_string();
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--control-socket", &ctl]);
        self.env.run_as(user, None, &self.gatehouse, &all)
    }

    /// The requests `user` may see, as JSON.
    fn requests(&self, user: &str) -> Vec<Value> {
        let o = self.cli(user, &["requests", "--json"]);
        assert!(o.status.success(), "gatehouse requests as {user}: {}", text(&o));
        String::from_utf8_lossy(&o.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    /// Waits for a pending request whose description contains `what`; returns its id.
    fn pending(&self, approver: &str, what: &str) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(r) = self
                .requests(approver)
                .into_iter()
                .find(|r| r["state"]["state"] == "pending" && r["subject"].to_string().contains(what))
            {
                return r["id"].as_u64().unwrap();
            }
            assert!(Instant::now() < deadline, "no pending request for {what:?}:\n{}", self.env.agent_log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn table_exists(&self, table: &str) -> bool {
        self.pg.admin_db("appdb", &format!("SELECT to_regclass('public.{table}') IS NOT NULL")) == "t"
    }

    fn approval_events(&self) -> Vec<Value> {
        gatehouse_e2e::settle(&self.env.db());
        let conn = rusqlite::Connection::open(self.env.db()).unwrap();
        let mut st = conn.prepare("SELECT body FROM events WHERE kind = 'approval' ORDER BY seq").unwrap();
        let rows = st.query_map([], |r| r.get::<_, Vec<u8>>(0)).unwrap();
        rows.filter_map(Result::ok).filter_map(|b| serde_json::from_slice(&b).ok()).collect()
    }
}

fn wait_output(child: Child, limit: Duration) -> Output {
    let start = Instant::now();
    let mut child = child;
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        assert!(start.elapsed() < limit, "the client is still waiting after {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn held_statements_run_when_approved_and_are_refused_when_denied() {
    let w = world("aphold", "60s");
    // Approved by another person: it runs, and the session goes on.
    let held = w.psql_spawn(&w.dan, "DROP TABLE victim");
    let id = w.pending(&w.lea, "DROP TABLE victim");
    assert!(w.table_exists("victim"), "nothing runs before the approval");
    // Someone outside the approvers sees nothing and cannot approve.
    assert!(w.requests(&w.eve).is_empty(), "{:?}", w.requests(&w.eve));
    let o = w.cli(&w.eve, &["approve", &id.to_string()]);
    assert!(!o.status.success() && text(&o).contains("no pending request"), "{}", text(&o));
    // The requester cannot approve their own request (they do not even see it as decidable).
    let o = w.cli(&w.dan, &["approve", &id.to_string()]);
    assert!(!o.status.success(), "{}", text(&o));
    // The approver sees what the session did before (psql's own queries, at least the held one's neighbours).
    let o = w.cli(&w.lea, &["requests"]);
    assert!(text(&o).contains("DROP TABLE victim") && text(&o).contains("approvers: sre-leads"), "{}", text(&o));
    let o = w.cli(&w.lea, &["approve", &id.to_string(), "--reason", "planned cleanup"]);
    assert!(o.status.success(), "{}", text(&o));
    let out = wait_output(held, Duration::from_secs(20));
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("holding this statement for approval"), "the client was told: {}", text(&out));
    assert!(!w.table_exists("victim"), "the approved DROP ran");

    // Denied: ERROR 42501 with the reason; nothing changes on the server.
    w.pg.admin_db("appdb", &format!("CREATE TABLE victim (id int); ALTER TABLE victim OWNER TO {}", pg::APP_ROLE));
    // The statement also tries to show its approver another one: a carriage
    // return and an erase-line sequence would make a terminal print the fake
    // over the real. The CLI shows them escaped.
    let spoof = "TRUNCATE orders /*\r\x1b[2K    run on appdb: SELECT count(*) FROM orders\x1b[K <!channel> */";
    let held = w.psql_spawn(&w.dan, spoof);
    let id = w.pending(&w.sam, "TRUNCATE orders");
    let o = w.cli(&w.sam, &["requests"]);
    let shown = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success() && shown.contains(r"run on appdb: TRUNCATE orders /*\r\u{1b}[2K"), "{shown}");
    assert!(!shown.contains(['\r', '\x1b']), "raw terminal controls reached the approver: {shown:?}");
    let o = w.cli(&w.sam, &["deny", &id.to_string(), "--reason", "not during business hours"]);
    assert!(o.status.success(), "{}", text(&o));
    let out = wait_output(held, Duration::from_secs(20));
    let t = text(&out);
    assert!(!out.status.success() && t.contains("denied by") && t.contains("not during business hours"), "{t}");
    assert_eq!(w.pg.admin_db("appdb", "SELECT count(*) FROM orders"), "2");
    // The operator's statement list shows it escaped too.
    let db = w.env.db().display().to_string();
    let o = w.env.gatehouse(&["statements", "--db", &db, "--limit", "1000"]);
    let listed = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success() && listed.contains(r"TRUNCATE orders /* \u{1b}[2K"), "{listed}");
    assert!(!listed.contains(['\r', '\x1b']), "raw terminal controls in `gatehouse statements`: {listed:?}");

    // Ordinary statements of the same rule run at once.
    let o = w.psql(&w.dan, "SELECT count(*) FROM orders");
    assert!(o.status.success() && text(&o).contains('2'), "{}", text(&o));

    // The audit trail has every step, with who decided.
    let events = w.approval_events();
    let steps: Vec<String> = events.iter().map(|e| e["event"].as_str().unwrap_or_default().to_owned()).collect();
    assert!(steps.iter().filter(|s| *s == "requested").count() >= 2, "{steps:?}");
    assert!(steps.contains(&"approved".to_owned()) && steps.contains(&"denied".to_owned()), "{steps:?}");
    let approved = events.iter().find(|e| e["event"] == "approved").unwrap();
    assert!(approved["by"]["user"].as_str().unwrap().contains("lea"), "{approved}");
    assert!(w.pg.log().contains("DROP TABLE victim"), "the approved statement reached the server");
    assert!(!w.pg.log().contains("TRUNCATE orders"), "the denied one did not");
    // The webhook heard every step, signed; the dead one did not hold anything up.
    let deadline = Instant::now() + Duration::from_secs(10);
    let hooks = loop {
        let hooks: Vec<Value> = std::fs::read_to_string(&w.hook.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if hooks.iter().any(|h| h["event"] == "denied") || Instant::now() > deadline {
            break hooks;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    for step in ["requested", "approved", "denied"] {
        let h = hooks.iter().find(|h| h["event"] == step).unwrap_or_else(|| panic!("no {step} webhook: {hooks:?}"));
        assert_eq!(h["signed"], true, "{h}");
        assert_eq!(h["path"], "/hooks/gatehouse");
        assert!(h["body"]["text"].as_str().unwrap().contains("Gatehouse request"), "{h}");
    }
    assert!(hooks.iter().any(|h| h["body"]["text"].as_str().unwrap().contains("gatehouse approve")), "{hooks:?}");
    // The chat line of the spoofing statement is one line, its controls escaped.
    let spoofed = hooks
        .iter()
        .filter_map(|h| h["body"]["text"].as_str())
        .find(|t| t.contains("TRUNCATE orders"))
        .unwrap_or_else(|| panic!("no hook names the TRUNCATE: {hooks:?}"));
    assert!(spoofed.contains(r"/*\r\u{1b}[2K") && !spoofed.contains(['\r', '\n', '\x1b']), "{spoofed:?}");
    // Nor a mention or a link in a Slack-compatible channel.
    assert!(spoofed.contains("&lt;!channel&gt;") && !spoofed.contains(['<', '>']), "{spoofed:?}");
    let local = std::fs::read_to_string(w.env.path("command.jsonl")).unwrap_or_default();
    assert!(local.contains("\"event\":\"requested\"") && local.contains("\"event\":\"approved\""), "{local}");
    assert!(w.env.agent_log().contains("notification failed"), "the dead webhook was tried and logged");
}

#[test]
fn held_statements_time_out_and_a_cancel_withdraws_them() {
    let w = world("aptimeout", "3s");
    let held = w.psql_spawn(&w.dan, "DROP TABLE victim");
    let out = wait_output(held, Duration::from_secs(20));
    let t = text(&out);
    assert!(!out.status.success() && t.contains("not approved in time"), "{t}\n{}", w.env.agent_log());
    assert!(w.table_exists("victim"));
    // A client cancel while held withdraws the request; the session stays usable.
    let port = w.pg.port.to_string();
    let script = w.env.path("cancel.py");
    std::fs::write(
        &script,
        r#"
import sys, time, threading, psycopg
conn = psycopg.connect(host=sys.argv[1], port=sys.argv[2], dbname="appdb", user="whoever", autocommit=True)
conn.add_notice_handler(lambda d: print("notice:", d.message_primary, flush=True))
threading.Timer(1.5, conn.cancel).start()
try:
    conn.execute("DROP TABLE victim")
    print("ran")
except psycopg.Error as e:
    print("refused", e.sqlstate, str(e).splitlines()[0])
print("still", conn.execute("SELECT 7").fetchone()[0])
"#,
    )
    .unwrap();
    let o = w.env.run_as(&w.dan, None, Path::new("/usr/bin/python3"), &[script.to_str().unwrap(), &w.pg.host, &port]);
    let t = text(&o);
    assert!(t.contains("notice: Gatehouse is holding"), "{t}");
    assert!(t.contains("refused 57014") && t.contains("withdrawn"), "{t}\n{}", w.env.agent_log());
    assert!(t.contains("still 7"), "{t}");
    assert!(w.table_exists("victim"));
    let events = w.approval_events();
    assert!(events.iter().any(|e| e["event"] == "timed_out"), "{events:?}");
    assert!(events.iter().any(|e| e["event"] == "withdrawn"), "{events:?}");
}

/// A driver's statement with parameters (Parse, Bind, Execute): the values
/// are bound before the Execute is held, so the approvers see them with the
/// text, and the server runs exactly those.
#[test]
fn held_executes_show_their_bound_parameters() {
    let w = world("apparams", "60s");
    w.pg.admin_db("appdb", "INSERT INTO orders VALUES (3), (4)");
    let port = w.pg.port.to_string();
    let script = w.env.path("params.py");
    std::fs::write(
        &script,
        r#"
import sys, psycopg
conn = psycopg.connect(host=sys.argv[1], port=sys.argv[2], dbname="appdb", user="whoever", autocommit=True)
cur = conn.execute("DELETE FROM orders WHERE id = %s OR %s = 'every order'", (3, "just one"))
print("deleted", cur.rowcount, flush=True)
"#,
    )
    .unwrap();
    let held =
        w.env.spawn_as(&w.dan, None, Path::new("/usr/bin/python3"), &[script.to_str().unwrap(), &w.pg.host, &port]);
    let id = w.pending(&w.lea, "DELETE FROM orders");
    let r = w.requests(&w.lea).into_iter().find(|r| r["id"] == id).expect("the request");
    assert_eq!(r["subject"]["text"], "DELETE FROM orders WHERE id = $1 OR $2 = 'every order'", "{r}");
    assert_eq!(r["subject"]["parameters"], serde_json::json!(["$1 = 3", "$2 = 'just one'"]), "{r}");
    let o = w.cli(&w.lea, &["requests"]);
    assert!(text(&o).contains("OR $2 = 'every order' with $1 = 3, $2 = 'just one'"), "{}", text(&o));
    assert_eq!(w.pg.admin_db("appdb", "SELECT count(*) FROM orders"), "4", "nothing ran before the approval");
    let o = w.cli(&w.lea, &["approve", &id.to_string()]);
    assert!(o.status.success(), "{}", text(&o));
    let out = wait_output(held, Duration::from_secs(20));
    assert!(text(&out).contains("deleted 1"), "{}", text(&out));
    // The server ran it with the values the approver saw: order 3 is gone, the rest stay.
    assert_eq!(w.pg.admin_db("appdb", "SELECT string_agg(id::text, ',' ORDER BY id) FROM orders"), "1,2,4");
}

/// Portals bound with the extended protocol and cursors share one namespace
/// on the server: SQL `FETCH`/`MOVE` of a bound portal runs its statement
/// (a `DELETE … RETURNING` too) as a FETCH. Without a check, dan's DELETE
/// ran that way with no approval (orders: 2 → 0).
#[test]
fn a_bound_portal_cannot_be_run_by_sql_fetch_past_its_approval() {
    let w = world("apfetch", "60s");
    let port = w.pg.port.to_string();
    let script = w.env.path("fetch.py");
    std::fs::write(
        &script,
        format!(
            "{}{}",
            pg::RAW_CLIENT_PY,
            r#"
for verb in ["FETCH ALL FROM", "MOVE ALL FROM"]:
    query("begin", "BEGIN")
    # Parse and Bind only: the DELETE waits for an approval at Execute.
    s.sendall(msg(b"P", cstr("del") + cstr("DELETE FROM orders RETURNING id") + struct.pack("!h", 0))
              + msg(b"B", cstr("p1") + cstr("del") + struct.pack("!hhh", 0, 0, 0)) + msg(b"S", b""))
    print("bind", codes(answer()), flush=True)
    query(verb, verb + " p1")
    query("commit", "COMMIT")
    s.sendall(msg(b"C", b"S" + cstr("del")) + msg(b"S", b""))
    answer()
# The portal outlives a failed DECLARE of its name, a failed DISCARD ALL or a
# Close skipped after an error, once the transaction is back at a savepoint
# made after the Bind: FETCH is refused all the same.
tricks = {
    "declare": lambda: query("declare fails", "DECLARE p1 CURSOR FOR SELECT 1"),
    "discard": lambda: query("discard fails", "DISCARD ALL"),
    "close": lambda: (s.sendall(msg(b"P", cstr("") + cstr("SELECT 1/0") + struct.pack("!h", 0))
        + msg(b"B", cstr("") + cstr("") + struct.pack("!hhh", 0, 0, 0)) + msg(b"E", cstr("") + struct.pack("!i", 0))
        + msg(b"C", b"P" + cstr("p1")) + msg(b"S", b"")), print("close skipped", codes(answer()), flush=True)),
}
for name, trick in tricks.items():
    query("begin", "BEGIN")
    s.sendall(msg(b"P", cstr("") + cstr("DELETE FROM orders RETURNING id") + struct.pack("!h", 0))
              + msg(b"B", cstr("p1") + cstr("") + struct.pack("!hhh", 0, 0, 0)) + msg(b"S", b""))
    print("bind", codes(answer()), flush=True)
    query("savepoint", "SAVEPOINT a")
    trick()
    query("back", "ROLLBACK TO a")
    query("after " + name, "FETCH ALL FROM p1")
    query("commit", "COMMIT")
# A second Bind of the name, which the server refuses (the portal is open),
# must not make Gatehouse decide the next Execute on its statement.
query("begin", "BEGIN")
s.sendall(msg(b"P", cstr("") + cstr("DELETE FROM orders RETURNING id") + struct.pack("!h", 0))
          + msg(b"B", cstr("p1") + cstr("") + struct.pack("!hhh", 0, 0, 0)) + msg(b"S", b""))
print("bind", codes(answer()), flush=True)
query("savepoint", "SAVEPOINT a")
s.sendall(msg(b"P", cstr("harmless") + cstr("SELECT 1") + struct.pack("!h", 0))
          + msg(b"B", cstr("p1") + cstr("harmless") + struct.pack("!hhh", 0, 0, 0)) + msg(b"S", b""))
print("rebind", codes(answer()), flush=True)
query("back", "ROLLBACK TO a")
s.sendall(msg(b"E", cstr("p1") + struct.pack("!i", 0)) + msg(b"S", b""))
print("execute after rebind", codes(answer()), flush=True)
query("commit", "COMMIT")
# A cursor declared with SQL is fetched as ever (also under a name a portal had).
query("begin", "BEGIN")
query("declare", "DECLARE p1 CURSOR FOR SELECT id FROM orders ORDER BY id")
query("fetch cursor", "FETCH ALL FROM p1")
query("commit", "COMMIT")
s.sendall(msg(b"X", b""))
"#
        ),
    )
    .unwrap();
    let out = text(&w.env.run_as(
        &w.dan,
        None,
        Path::new("/usr/bin/python3"),
        &[script.to_str().unwrap(), &w.pg.host, &port],
    ));
    assert!(out.contains("bind ['1', '2', 'Z']"), "{out}\n{}", w.env.agent_log());
    assert!(out.contains("FETCH ALL FROM ['0A000', 'Z']"), "{out}\n{}", w.env.agent_log());
    assert!(out.contains("MOVE ALL FROM ['0A000', 'Z']"), "{out}\n{}", w.env.agent_log());
    assert!(out.contains("fetch cursor ['T', 'D', 'D', 'C', 'Z']"), "{out}\n{}", w.env.agent_log());
    for (setup, after) in [
        ("declare fails ['42P03', 'Z']", "after declare ['0A000', 'Z']"),
        ("discard fails ['25001', 'Z']", "after discard ['0A000', 'Z']"),
        ("close skipped ['1', '22012', 'Z']", "after close ['0A000', 'Z']"),
        ("rebind ['1', '42P03', 'Z']", "execute after rebind ['34000', 'Z']"),
    ] {
        assert!(out.contains(setup) && out.contains(after), "{setup} / {after}:\n{out}\n{}", w.env.agent_log());
    }
    // What the server did: no order deleted, no FETCH or MOVE of the portal run.
    assert_eq!(w.pg.admin_db("appdb", "SELECT count(*) FROM orders"), "2", "{out}");
    let log = w.pg.log();
    assert_eq!(log.matches("statement: FETCH ALL FROM p1").count(), 1, "only the SQL cursor's FETCH ran: {log}");
    assert!(!log.contains("MOVE ALL FROM p1"), "the MOVE reached the server: {log}");
    // Refused, so no approval was asked for, and the refusals are recorded.
    assert!(w.requests(&w.lea).is_empty(), "{:?}", w.requests(&w.lea));
    let st = w.env.statements(None);
    assert_eq!(
        st.iter().filter(|s| s["decision"] == "deny" && s["reason"].as_str().is_some_and(|r| r.contains("extended protocol"))).count(),
        5,
        "{st:#?}"
    );
}

#[test]
fn held_logins_and_just_in_time_grants() {
    let w = world("apgrant", "60s");
    // A login that waits for an approval.
    let held = w.psql_spawn(&w.con, "SELECT count(*) FROM orders");
    let id = w.pending(&w.lea, "connect");
    let o = w.cli(&w.lea, &["approve", &id.to_string()]);
    assert!(o.status.success(), "{}", text(&o));
    let out = wait_output(held, Duration::from_secs(20));
    assert!(out.status.success() && text(&out).contains('2'), "{}\n{}", text(&out), w.env.agent_log());

    // No rule for the developer: refused.
    let o = w.psql(&w.dev, "SELECT count(*) FROM orders");
    assert!(!o.status.success() && text(&o).contains("no rule allows"), "{}", text(&o));
    // A grant request needs a reason and stays within the grant's maximum.
    let o = w.cli(
        &w.dev,
        &["request", "--backend", "appdb", "--grant", "orders admin", "--for", "3h", "--reason", "INC-4711"],
    );
    assert!(!o.status.success() && text(&o).contains("at most"), "{}", text(&o));
    let o = w.cli(
        &w.dev,
        &["request", "--backend", "appdb", "--grant", "orders admin", "--for", "30m", "--reason", "INC-4711"],
    );
    assert!(o.status.success(), "{}", text(&o));
    let id = w.pending(&w.lea, "orders admin");
    // The requester sees their own request.
    assert!(w.requests(&w.dev).iter().any(|r| r["id"] == id), "{:?}", w.requests(&w.dev));
    let o = w.cli(&w.sam, &["approve", &id.to_string()]);
    assert!(o.status.success(), "{}", text(&o));
    let o = w.psql(&w.dev, "INSERT INTO orders VALUES (3)");
    assert!(o.status.success(), "the grant allows writes: {}\n{}", text(&o), w.env.agent_log());
    assert_eq!(w.pg.admin_db("appdb", "SELECT count(*) FROM orders"), "3");
    // The grant covers only its kinds.
    let o = w.psql(&w.dev, "DROP TABLE orders");
    assert!(!o.status.success() && text(&o).contains("Gatehouse refused"), "{}", text(&o));
    // Revocation cuts an open session and refuses new ones.
    let long = w.psql_spawn(&w.dev, "SELECT pg_sleep(30)");
    let _ = long;
    let script = w.env.path("long.py");
    std::fs::write(
        &script,
        r#"
import sys, time, psycopg
conn = psycopg.connect(host=sys.argv[1], port=sys.argv[2], dbname="appdb", user="whoever", autocommit=True)
print("open", conn.execute("SELECT count(*) FROM orders").fetchone()[0], flush=True)
sys.stdin.readline()
try:
    conn.execute("SELECT 1")
    print("still open")
except psycopg.Error as e:
    print("cut", str(e).splitlines()[0])
"#,
    )
    .unwrap();
    let port = w.pg.port.to_string();
    let mut session =
        w.env.spawn_as(&w.dev, None, Path::new("/usr/bin/python3"), &[script.to_str().unwrap(), &w.pg.host, &port]);
    // Revoke once the session is open (however slow the machine), then let
    // the client try its next statement.
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = session.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
            if tx.send(line.unwrap_or_default()).is_err() {
                break;
            }
        }
    });
    let first = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_default();
    assert!(first.contains("open 3"), "the session did not open: {first:?}\n{}", w.env.agent_log());
    let o = w.cli(&w.lea, &["revoke", &id.to_string()]);
    assert!(o.status.success(), "{}", text(&o));
    std::io::Write::write_all(session.stdin.as_mut().unwrap(), b"go\n").unwrap();
    let out = wait_output(session, Duration::from_secs(30));
    let mut rest = Vec::new();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(10)) {
        rest.push(line);
    }
    let t = format!("{first}\n{}\n{}", rest.join("\n"), text(&out));
    assert!(
        t.contains("open 3") && t.contains("cut") && t.contains("no longer in force"),
        "{t}\n{}",
        w.env.agent_log()
    );
    let o = w.psql(&w.dev, "SELECT 1");
    assert!(!o.status.success(), "after revocation: {}", text(&o));
    let events = w.approval_events();
    for step in ["requested", "approved", "revoked"] {
        assert!(
            events.iter().any(|e| e["event"] == step && e["request"]["subject"]["type"] == "grant"),
            "{step}: {events:?}"
        );
    }
    // An approved grant outlives an agent restart; numbering carries on.
    let o = w.cli(
        &w.dev,
        &["request", "--backend", "appdb", "--grant", "orders admin", "--for", "30m", "--reason", "INC-4712"],
    );
    assert!(o.status.success(), "{}", text(&o));
    let id2 = w.pending(&w.lea, "orders admin");
    assert!(id2 > id, "request numbers only grow: {id2} after {id}");
    assert!(w.cli(&w.lea, &["approve", &id2.to_string()]).status.success());
    let mut w = w;
    let status = w.env.signal_agent("TERM");
    assert!(status.success(), "{status}");
    let config = w.env.path("policy.toml");
    w.env.start_agent(&config);
    let o = w.psql(&w.dev, "SELECT count(*) FROM orders");
    assert!(
        o.status.success() && text(&o).contains('3'),
        "the grant survived the restart: {}\n{}",
        text(&o),
        w.env.agent_log()
    );
    let mine = w.requests(&w.dev);
    assert!(mine.iter().any(|r| r["id"] == id2 && r["state"]["state"] == "approved"), "{mine:?}");
    let o = w.cli(
        &w.dev,
        &["request", "--backend", "appdb", "--grant", "orders admin", "--for", "10m", "--reason", "INC-4713"],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(w.pending(&w.lea, "orders admin") > id2, "numbering continues after the restart");
    let _ = (&w.eve, &w.dan);
}

/// A local user cannot flood the approvers (and the agent) with requests:
/// each is an audit record and a notification to every `[[notify]]`
/// target. With `max_pending_requests_per_user = 2`, dev's third grant
/// request is refused and the approvers' webhook got two; dan's third held
/// DELETE is refused at once with 53400 and never reaches the server, while
/// his first two wait for a decision; another user is not held back.
#[test]
fn a_user_cannot_flood_the_approvers_with_requests() {
    let mut w = world("apflood", "60s");
    let config = w.env.path("policy.toml");
    let policy = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("[agent]\nmax_pending_requests_per_user = 2\n{policy}")).unwrap();
    assert!(w.env.signal_agent("TERM").success());
    w.env.start_agent(&config);
    let grant = |reason: &str| {
        w.cli(&w.dev, &["request", "--backend", "appdb", "--grant", "orders admin", "--for", "30m", "--reason", reason])
    };
    for reason in ["INC-1", "INC-2"] {
        let o = grant(reason);
        assert!(o.status.success(), "{}", text(&o));
    }
    let o = grant("INC-3");
    assert!(
        !o.status.success()
            && text(&o).contains("already has 2 approval requests pending")
            && text(&o).contains("max_pending_requests_per_user = 2"),
        "{}",
        text(&o)
    );
    // The approvers were told of two requests, not three.
    let requested = || {
        std::fs::read_to_string(&w.hook.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|e| e["event"] == "requested" && e["body"]["request"]["subject"]["type"] == "grant")
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while requested() < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(requested(), 2, "webhook deliveries of grant requests");
    assert_eq!(
        w.requests(&w.lea).iter().filter(|r| r["state"]["state"] == "pending").count(),
        2,
        "pending requests: {:?}",
        w.requests(&w.lea)
    );

    // Held statements: two wait, the third is refused at once and never runs.
    w.pg.admin_db("appdb", "INSERT INTO victim VALUES (7)");
    let first = w.psql_spawn(&w.dan, "DELETE FROM victim WHERE id = 1");
    let a = w.pending(&w.lea, "DELETE FROM victim WHERE id = 1");
    let second = w.psql_spawn(&w.dan, "DELETE FROM victim WHERE id = 2");
    let b = w.pending(&w.lea, "DELETE FROM victim WHERE id = 2");
    let o = w.psql(&w.dan, "DELETE FROM victim WHERE id = 7");
    let t = text(&o);
    assert!(!o.status.success() && t.contains("max_pending_requests_per_user = 2"), "{t}");
    let port = w.pg.port.to_string();
    let code = w.env.run_as(
        &w.dan,
        None,
        Path::new("/usr/bin/python3"),
        &[
            "-c",
            "import sys, psycopg2\nc = psycopg2.connect(host=sys.argv[1], port=sys.argv[2], dbname='appdb', user='x')\ntry:\n    c.cursor().execute('DELETE FROM victim WHERE id = 7')\nexcept psycopg2.Error as e:\n    print(e.pgcode)\n",
            &w.pg.host,
            &port,
        ],
    );
    assert_eq!(String::from_utf8_lossy(&code.stdout).trim(), "53400", "{}", text(&code));
    assert_eq!(
        w.pg.admin_db("appdb", "SELECT count(*) FROM victim WHERE id = 7"),
        "1",
        "the refused DELETE did not run"
    );
    assert!(!w.pg.log().contains("DELETE FROM victim WHERE id = 7"), "the server never saw it");
    // Another user's requests open meanwhile (con's logins wait for one each), up to her own limit:
    // a third held login is refused in the protocol, saying why.
    let con = w.psql_spawn(&w.con, "SELECT 1");
    let c = w.pending(&w.lea, "connect");
    let con2 = w.psql_spawn(&w.con, "SELECT 2");
    let deadline = Instant::now() + Duration::from_secs(15);
    while w.requests(&w.lea).iter().filter(|r| r["state"]["state"] == "pending").count() < 6 {
        assert!(Instant::now() < deadline, "con's second login is not pending: {:?}", w.requests(&w.lea));
        std::thread::sleep(Duration::from_millis(100));
    }
    let o = w.psql(&w.con, "SELECT 3");
    let t = text(&o);
    assert!(
        !o.status.success()
            && t.contains("Gatehouse refused this connection")
            && t.contains("max_pending_requests_per_user"),
        "{t}"
    );
    let pending: Vec<u64> = w
        .requests(&w.lea)
        .iter()
        .filter(|r| r["state"]["state"] == "pending")
        .filter_map(|r| r["id"].as_u64())
        .filter(|id| ![a, b, c].contains(id))
        .collect();
    for id in [a, b, c].into_iter().chain(pending) {
        let o = w.cli(&w.lea, &["deny", &id.to_string(), "--reason", "not now"]);
        assert!(o.status.success(), "{}", text(&o));
    }
    for child in [first, second] {
        let out = wait_output(child, Duration::from_secs(20));
        assert!(!out.status.success() && text(&out).contains("denied"), "{}", text(&out));
    }
    for child in [con, con2] {
        assert!(!wait_output(child, Duration::from_secs(20)).status.success());
    }
    // Decided requests no longer count: dan may be held again.
    let again = w.psql_spawn(&w.dan, "DELETE FROM victim WHERE id = 3");
    let d = w.pending(&w.lea, "DELETE FROM victim WHERE id = 3");
    assert!(w.cli(&w.lea, &["deny", &d.to_string()]).status.success());
    let _ = wait_output(again, Duration::from_secs(20));
    let _ = (&w.eve, &w.sam);
}
