//! The MySQL adapter end to end: a real MariaDB started by the test on a
//! 127.x address, reached through the eBPF redirect, driven by the real
//! `mariadb` client and PyMySQL run as unprivileged users in the test
//! cgroup. Asserts on what the server did (tables, rows, its query log),
//! not only on Gatehouse's verdicts. Needs root.
#![expect(clippy::unwrap_used, reason = "test helpers panic with context on failure")]

use std::path::Path;
use std::process::Output;

use gatehouse_e2e::mysql::{self, MariaServer};
use gatehouse_e2e::{Env, free_port, loopback};
use serde_json::Value;

/// Fields drop in order: the server stops before the test directory goes.
struct World {
    db: MariaServer,
    env: Env,
    ana: String,
    eve: String,
    /// In a group whose rule masks results (profile `pii`).
    sam: String,
    /// In a group whose rule only reads (`select`).
    rita: String,
    /// In a group whose DELETEs wait for an approval by `lea`'s group, and
    /// that may drop, never touching a table called `customers`.
    dan: String,
    lea: String,
    /// In a group whose UPDATEs wait for an approval, 2 seconds at most.
    oli: String,
    /// In a group whose rule reads and lists columns, masked (profile
    /// `pii_open`: computing with masked columns allowed, so warnings arise).
    gus: String,
    /// In a group whose rule reads and writes, masked (profile `pii`).
    wes: String,
    /// In a group whose rule reads masked by a profile that allows
    /// predicates and computing (`pii_open`): computed values come back hidden.
    lou: String,
}

fn world(name: &str) -> World {
    world_with(name, "")
}

/// [`world`] with `agent` (an `[agent]` table) at the head of its policy.
fn world_with(name: &str, agent: &str) -> World {
    let mut env = Env::new(name);
    let analyst = env.group("analyst");
    let ana = env.user("ana", &[&analyst]);
    let eve = env.user("eve", &[]);
    let support = env.group("support");
    let sam = env.user("sam", &[&support]);
    let reader = env.group("reader");
    let rita = env.user("rita", &[&reader]);
    let dba = env.group("dba");
    let dan = env.user("dan", &[&dba]);
    let leads = env.group("leads");
    let lea = env.user("lea", &[&leads]);
    let ops = env.group("ops");
    let oli = env.user("oli", &[&ops]);
    let auditor = env.group("auditor");
    let gus = env.user("gus", &[&auditor]);
    let writers = env.group("swriters");
    let wes = env.user("wes", &[&writers]);
    let lookup = env.group("lookup");
    let lou = env.user("lou", &[&lookup]);
    let db = MariaServer::start(&env.dir, &loopback(41), free_port());
    db.admin(
        "USE appdb;
         CREATE TABLE appdb.items (id int PRIMARY KEY, name varchar(40));
         INSERT INTO appdb.items SELECT seq, CONCAT('item ', seq) FROM seq_1_to_100;
         CREATE TABLE appdb.victim (id int);
         CREATE TABLE appdb.held (id int);
         INSERT INTO appdb.held VALUES (1), (2);
         INSERT INTO appdb.victim VALUES (1);
         CREATE TABLE appdb.customers (id int PRIMARY KEY, email varchar(80), card varchar(20), note text);
         INSERT INTO appdb.customers VALUES (1, 'zoe@example.com', '4111111111111111', 'ssn 123-45-6789'), (2, NULL, NULL, 'plain');",
    );
    let secret = gatehouse_e2e::pg::password_file(&env.dir, "appdb.secret", mysql::APP_PASSWORD);
    let policy = format!(
        r#"{agent}
[[backend]]
name = "shop"
protocol = "mysql"
address = "{addr}"
tls = "off"
credentials = {{ user = "{user}", password_file = "{s}" }}

[[rule]]
name = "analysts read and write items"
who = {{ groups = ["{analyst}"] }}
backend = "shop"
statements = ["select", "insert", "update", "delete"]

[[mask]]
name = "pii"
columns = [
  {{ column = "customers.card", style = "partial" }},
  {{ column = "appdb.customers.email", style = "redact" }},
]
detectors = {{ us_ssn = "redact" }}

[[rule]]
name = "support reads masked"
who = {{ groups = ["{support}"] }}
backend = "shop"
statements = ["select"]
mask = "pii"
record_parameters = true

[[mask]]
name = "pii_open"
columns = [
  {{ column = "customers.card", style = "partial" }},
  {{ column = "appdb.customers.email", style = "redact" }},
]
detectors = {{ us_ssn = "redact" }}
masked_predicates = "allow"

[[rule]]
name = "lookups masked"
who = {{ groups = ["{lookup}"] }}
backend = "shop"
statements = ["select"]
mask = "pii_open"

[[rule]]
name = "support writes masked"
who = {{ groups = ["{writers}"] }}
backend = "shop"
statements = ["select", "insert", "update", "create", "alter"]
mask = "pii"

[[rule]]
name = "readers only read"
who = {{ groups = ["{reader}"] }}
backend = "shop"
statements = ["select"]
record_parameters = true

[[rule]]
name = "auditors list columns masked"
who = {{ groups = ["{auditor}"] }}
backend = "shop"
statements = ["select", "show"]
mask = "pii_open"

[[approvers]]
name = "leads"
who = {{ groups = ["{leads}"] }}

[[rule]]
name = "dbas delete with a second pair of eyes"
who = {{ groups = ["{dba}"] }}
backend = "shop"
statements = ["select", "delete", "show", "drop"]
deny_tables = ["*.customers"]
approval = {{ for = ["delete"], by = "leads", timeout = "60s" }}

[[rule]]
name = "ops update in a hurry"
who = {{ groups = ["{ops}"] }}
backend = "shop"
statements = ["select", "update"]
approval = {{ for = ["update"], by = "leads", timeout = "2s" }}
"#,
        addr = db.addr(),
        user = mysql::APP_USER,
        s = secret.display(),
    );
    let config = env.write_policy("policy.toml", &policy);
    env.start_agent(&config);
    World { db, env, ana, eve, sam, rita, dan, lea, oli, gus, wes, lou }
}

impl World {
    /// The `mariadb` client as `user`, over TCP to the backend's own address.
    fn mariadb(&self, user: &str, args: &[&str]) -> Output {
        mariadb_as(&self.env, &self.db, user, args)
    }

    /// The `mariadb` client reading `script` on its standard input (one
    /// session; `--force` goes on after an error, as a user at the prompt would).
    fn mariadb_script(&self, user: &str, extra: &[&str], script: &str) -> Output {
        use std::io::Write;
        let port = self.db.port.to_string();
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg("echo $$ > \"$0/cgroup.procs\" && exec \"$@\"")
            .arg(&self.env.cgroup)
            .args(["setpriv", "--reuid", user, "--regid", user, "--init-groups", "--", "/usr/bin/mariadb"])
            .args(["--no-defaults", "--protocol=TCP", "-h", &self.db.host, "-P", &port, "-u", "whoever"])
            .args(["--skip-ssl", "-N", "-B", "-A", "--force"])
            .args(extra)
            .current_dir(&self.env.dir)
            .env("HOME", &self.env.dir)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    }

    fn python(&self, user: &str, script: &str) -> Output {
        let path = self.env.path(&format!("script-{}.py", free_port()));
        std::fs::write(&path, script).unwrap();
        let port = self.db.port.to_string();
        self.env.run_as(user, None, Path::new("/usr/bin/python3"), &[path.to_str().unwrap(), &self.db.host, &port])
    }

    /// A Node.js script run with the mysql2 driver (`cargo xtask setup` installs it).
    fn node(&self, user: &str, script: &str) -> Output {
        let modules = "/usr/local/lib/gatehouse-e2e/node/node_modules";
        assert!(
            Path::new(modules).join("mysql2").exists(),
            "node mysql2 is missing from {modules}: run `cargo xtask setup`"
        );
        let path = self.env.path(&format!("script-{}.js", free_port()));
        std::fs::write(&path, script).unwrap();
        let port = self.db.port.to_string();
        let node_path = format!("NODE_PATH={modules}");
        let args = [node_path.as_str(), "node", path.to_str().unwrap(), &self.db.host, &port];
        self.env.run_as(user, None, Path::new("/usr/bin/env"), &args)
    }

    /// `mysqlslap` (from mariadb-client) as `user` against the backend's own address.
    fn mysqlslap(&self, user: &str, args: &[&str]) -> Output {
        let port = self.db.port.to_string();
        let mut all = vec![
            "--no-defaults",
            "--protocol=TCP",
            "-h",
            &self.db.host,
            "-P",
            &port,
            "-u",
            "whoever",
            "--skip-ssl",
            "--create-schema=appdb",
            "--no-drop",
        ];
        all.extend_from_slice(args);
        self.env.run_as(user, None, Path::new("/usr/bin/mysqlslap"), &all)
    }

    /// The `gatehouse` CLI as `user` (an approver), through the agent's control socket.
    fn cli(&self, user: &str, args: &[&str]) -> Output {
        let bin = self.env.path("gatehouse-cli");
        if !bin.exists() {
            std::fs::copy(gatehouse_e2e::gatehouse_bin(), &bin).unwrap();
            std::fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        }
        let ctl = self.env.control().display().to_string();
        let mut all = args.to_vec();
        all.extend(["--control-socket", &ctl]);
        self.env.run_as(user, None, &bin, &all)
    }

    /// Waits for a pending request `approver` may decide whose subject contains `what`; returns its id.
    fn pending(&self, approver: &str, what: &str) -> u64 {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        loop {
            let o = self.cli(approver, &["requests", "--json"]);
            assert!(o.status.success(), "gatehouse requests: {}", text(&o));
            let found = String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|r| {
                    r.pointer("/state/state").is_some_and(|s| s == "pending")
                        && r.get("subject").is_some_and(|s| s.to_string().contains(what))
                });
            if let Some(id) = found.and_then(|r| r.get("id").and_then(Value::as_u64)) {
                return id;
            }
            assert!(std::time::Instant::now() < deadline, "no pending request for {what:?}:\n{}", self.env.agent_log());
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    fn victim_present(&self) -> bool {
        self.db.admin(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'appdb' AND table_name = 'victim'",
        ) == "1"
    }

    /// Every statement of `user`'s sessions, once one of them has closed.
    fn statements_of(&self, user: &str) -> Vec<Value> {
        self.env.wait_session("of the test user", |s| s["user"] == user);
        let sessions = self.env.sessions();
        sessions
            .iter()
            .filter(|s| s["user"] == user && s["decision"] == "allow")
            .flat_map(|s| self.env.statements(s["id"].as_str()))
            .collect()
    }
}

/// The `mariadb` client as `user` in the test's cgroup, over TCP to `db`'s own
/// address (so through the redirect), plaintext, batch output, no auto-rehash.
fn mariadb_as(env: &Env, db: &MariaServer, user: &str, args: &[&str]) -> Output {
    let port = db.port.to_string();
    let mut all = vec![
        "--no-defaults",
        "--protocol=TCP",
        "-h",
        &db.host,
        "-P",
        &port,
        "-u",
        "whoever",
        "--skip-ssl",
        "-N",
        "-B",
        "-A",
    ];
    all.extend_from_slice(args);
    env.run_as(user, None, Path::new("/usr/bin/mariadb"), &all)
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn mariadb_cli_reads_writes_and_a_refused_drop_leaves_the_session_usable() {
    let w = world("mysqlcli");
    // One session; --force goes on after an error, as a user at the prompt would.
    let out = w.mariadb_script(
        &w.ana,
        &["appdb"],
        "SELECT count(*) FROM items;\nINSERT INTO items VALUES (1000, 'new');\nDROP TABLE victim;\nSELECT name FROM items WHERE id = 1000;\nuse appdb\nSELECT count(*) FROM victim;\n",
    );
    let t = text(&out);
    assert!(t.contains("100\n"), "count: {t}\n{}", w.env.agent_log());
    assert!(t.contains("ERROR 1227 (42000)") && t.contains("Gatehouse refused this statement"), "{t}");
    assert!(t.contains("analysts read and write items"), "the refusal names the rule: {t}");
    assert!(t.contains("new"), "the session must stay usable after the refusal: {t}");
    // What the server did: the row is there, the table survived, the DROP never reached it.
    assert_eq!(w.db.admin("SELECT name FROM appdb.items WHERE id = 1000"), "new");
    assert!(w.victim_present(), "victim must survive");
    assert!(!w.db.general_log().contains("DROP TABLE victim"), "{}", w.db.general_log());
    // The server saw Gatehouse's login, not the client's.
    assert!(w.db.general_log().contains(&format!("{}@", mysql::APP_USER)), "{}", w.db.general_log());

    let st = w.statements_of(&w.ana);
    let drop = st.iter().find(|x| x["text"].as_str().unwrap_or("").contains("DROP")).expect("drop recorded");
    assert_eq!(drop["decision"], "deny", "{drop}");
    assert_eq!(drop["rule"], "analysts read and write items", "{drop}");
    assert_eq!(drop["kinds"], "drop", "{drop}");
    let count = st.iter().find(|x| x["text"] == "SELECT count(*) FROM items").expect("select recorded");
    assert_eq!(count["decision"], "allow", "{count}");
    assert_eq!(count["rows"], 1, "{count}");
    assert_eq!(count["tables"], "appdb.items", "{count}");
    let insert = st.iter().find(|x| x["text"].as_str().unwrap_or("").starts_with("INSERT")).expect("insert recorded");
    assert_eq!(insert["rows"], 1, "affected rows: {insert}");
    // The client's `use` is COM_INIT_DB, decided and recorded as USE.
    let usedb = st.iter().find(|x| x["text"] == "USE `appdb`").expect("COM_INIT_DB recorded");
    assert_eq!(usedb["decision"], "allow", "{usedb}");
    let victim = st.iter().find(|x| x["text"] == "SELECT count(*) FROM victim").expect("select after use");
    assert_eq!(victim["tables"], "appdb.victim", "{victim}");
    assert_eq!(victim["rows"], 1, "{victim}");
    // Other sessions' statements (every Gatehouse user shares the login, which
    // sees its own sessions without PROCESS) need catalog = "all": refused, never sent.
    for (user, sql) in [
        (&w.ana, "SELECT INFO FROM information_schema.PROCESSLIST"),
        (&w.ana, "SELECT trx_query FROM information_schema.INNODB_TRX"),
        (&w.gus, "SHOW FULL PROCESSLIST"),
    ] {
        let t = text(&w.mariadb(user, &["appdb", "-e", sql]));
        assert!(t.contains("ERROR 1227") && t.contains("catalog = \"all\""), "{sql}: {t}");
    }
    let log = w.db.general_log().to_ascii_lowercase();
    assert!(!log.contains("processlist") && !log.contains("innodb_trx"), "{log}");
    let session = w.env.sessions().into_iter().find(|s| s["user"] == w.ana.as_str()).unwrap();
    // Without a rule: an error in MySQL's own terms, not a dropped connection.
    let t = text(&w.mariadb(&w.eve, &["appdb", "-e", "SELECT 1"]));
    assert!(
        t.contains("ERROR 1045") && t.contains("Gatehouse refused this connection") && t.contains("no rule allows"),
        "{t}"
    );
    assert!(
        session["bytes_up"].as_u64().unwrap_or(0) > 0 && session["bytes_down"].as_u64().unwrap_or(0) > 0,
        "{session}"
    );
}

#[test]
fn a_held_delete_runs_once_approved_and_a_denied_one_gets_err_1227() {
    let w = world("mysqlhold");
    let script = w.env.path("held.py");
    std::fs::write(
        &script,
        r#"
import json, sys
import pymysql
c = pymysql.connect(host=sys.argv[1], port=int(sys.argv[2]), user="whoever", password="", database="appdb",
                    autocommit=True)
cur = c.cursor()
def run(sql):
    try:
        cur.execute(sql)
        print(json.dumps({"sql": sql, "affected": cur.rowcount, "rows": [list(r) for r in cur.fetchall()]}), flush=True)
    except pymysql.MySQLError as e:
        print(json.dumps({"sql": sql, "error": e.args[0], "message": e.args[1]}), flush=True)
run("DELETE FROM held WHERE id = 1")
run("DELETE FROM held WHERE id = 2")
run("SELECT id FROM held")
"#,
    )
    .unwrap();
    let port = w.db.port.to_string();
    let args = [script.to_str().unwrap(), w.db.host.as_str(), port.as_str()];
    let mut py = w.env.spawn_as(&w.dan, None, Path::new("/usr/bin/python3"), &args);
    // Held: nothing reached the server before the approval.
    let id = w.pending(&w.lea, "DELETE FROM held WHERE id = 1");
    assert_eq!(w.db.admin("SELECT count(*) FROM appdb.held"), "2");
    assert!(!w.db.general_log().contains("DELETE FROM held"), "{}", w.db.general_log());
    // The requester cannot approve their own request.
    let o = w.cli(&w.dan, &["approve", &id.to_string()]);
    assert!(!o.status.success(), "{}", text(&o));
    let o = w.cli(&w.lea, &["approve", &id.to_string(), "--reason", "ticket 7"]);
    assert!(o.status.success(), "{}", text(&o));
    let first = gatehouse_e2e::read_json_line(&mut py);
    assert_eq!(first["affected"], 1, "{first}\n{}", w.env.agent_log());
    assert_eq!(w.db.admin("SELECT id FROM appdb.held"), "2", "the approved DELETE ran on the server");
    assert!(w.db.general_log().contains("DELETE FROM held WHERE id = 1"), "{}", w.db.general_log());

    // The second is denied: ERR 1227 naming the rule and the outcome; the row stays.
    let id = w.pending(&w.lea, "DELETE FROM held WHERE id = 2");
    let o = w.cli(&w.lea, &["deny", &id.to_string(), "--reason", "not today"]);
    assert!(o.status.success(), "{}", text(&o));
    let second = gatehouse_e2e::read_json_line(&mut py);
    assert_eq!(second["error"], 1227, "{second}");
    let msg = second["message"].as_str().unwrap();
    assert!(
        msg.contains("dbas delete with a second pair of eyes")
            && msg.contains("denied by")
            && msg.contains("not today"),
        "{msg}"
    );
    // The session goes on.
    let third = gatehouse_e2e::read_json_line(&mut py);
    assert_eq!(third["rows"], serde_json::json!([[2]]), "{third}");
    assert!(py.wait().unwrap().success());
    assert!(!w.db.general_log().contains("DELETE FROM held WHERE id = 2"), "{}", w.db.general_log());

    // The audit trail: the approved DELETE as `approval`, the denied one as `deny`, and every step of both requests.
    let st = w.statements_of(&w.dan);
    let ran = st.iter().find(|x| x["text"] == "DELETE FROM held WHERE id = 1").expect("approved recorded");
    assert_eq!(ran["decision"], "approval", "{ran}");
    assert_eq!(ran["rows"], 1, "{ran}");
    let denied = st.iter().find(|x| x["text"] == "DELETE FROM held WHERE id = 2").expect("denied recorded");
    assert_eq!(denied["decision"], "deny", "{denied}");
    assert_eq!(denied["rule"], "dbas delete with a second pair of eyes", "{denied}");
    gatehouse_e2e::settle(&w.env.db());
    let conn = rusqlite::Connection::open(w.env.db()).unwrap();
    let steps: Vec<String> = conn
        .prepare("SELECT body FROM events WHERE kind = 'approval' ORDER BY seq")
        .unwrap()
        .query_map([], |r| r.get::<_, Vec<u8>>(0))
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|b| serde_json::from_slice::<Value>(&b).ok())
        .map(|e| e["event"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(steps, ["requested", "approved", "requested", "denied"], "{steps:?}");
    let session = w.env.sessions().into_iter().find(|s| s["user"] == w.dan.as_str()).unwrap();
    let ctl = w.env.control().display().to_string();
    let replay =
        text(&w.env.gatehouse(&["replay", session["id"].as_str().unwrap(), "--no-wait", "--control-socket", &ctl]));
    assert!(
        replay.contains("DELETE FROM held WHERE id = 1;\n-- held for approval (rule \"dbas delete with a second pair of eyes\"), and approved"),
        "{replay}"
    );
    assert!(replay.contains("ERROR 1227 (42000)") && replay.contains("not today"), "{replay}");

    // A prepared statement's execute (node mysql2 `execute()`): the approvers
    // see the values it binds, and the server runs it with exactly those.
    let modules = "/usr/local/lib/gatehouse-e2e/node/node_modules";
    let js = w.env.path("held_execute.js");
    std::fs::write(&js, node_script(&serde_json::json!([["DELETE FROM held WHERE id = ?", [2]]]))).unwrap();
    let node_path = format!("NODE_PATH={modules}");
    let args = [node_path.as_str(), "node", js.to_str().unwrap(), w.db.host.as_str(), port.as_str()];
    let mut node = w.env.spawn_as(&w.dan, None, Path::new("/usr/bin/env"), &args);
    let id = w.pending(&w.lea, "DELETE FROM held WHERE id = ?");
    let o = w.cli(&w.lea, &["requests", "--json"]);
    let req = String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|r| r["id"] == id)
        .expect("the request");
    assert_eq!(req["subject"]["parameters"], serde_json::json!(["?1 = 2"]), "{req}");
    assert_eq!(w.db.admin("SELECT count(*) FROM appdb.held"), "1", "nothing ran before the approval");
    let o = w.cli(&w.lea, &["approve", &id.to_string()]);
    assert!(o.status.success(), "{}", text(&o));
    let line = gatehouse_e2e::read_json_line(&mut node);
    assert_eq!(line["rows"], 1, "{line}\n{}", w.env.agent_log());
    assert_eq!(w.db.admin("SELECT count(*) FROM appdb.held"), "0", "the approved execute ran with ?1 = 2");
    let _ = node.wait();
}

/// The `mariadb` client at a terminal (a pty: only then does it read the
/// tables' columns for name completion, without `-A`), typing `lines`.
const MARIADB_AT_A_TTY: &str = r#"
import os, pty, select, sys, time
host, port, lines = sys.argv[1], sys.argv[2], sys.argv[3:]
pid, fd = pty.fork()
if pid == 0:
    os.execv("/usr/bin/mariadb", ["mariadb", "--no-defaults", "--protocol=TCP", "-h", host, "-P", port,
                                  "-u", "whoever", "--skip-ssl", "appdb"])
out = b""
def until(marker, limit=20):
    global out
    end = time.time() + limit
    while marker not in out and time.time() < end:
        r, _, _ = select.select([fd], [], [], 0.5)
        if r:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                return
            if not chunk:
                return
            out += chunk
for line in lines:
    until(b"]> ")
    out = out.replace(b"]> ", b"]>  ", 1)
    os.write(fd, line.encode() + b"\n")
until(b"Bye")
_, status = os.waitpid(pid, 0)
sys.stdout.write(out.decode(errors="replace"))
sys.exit(os.waitstatus_to_exitcode(status))
"#;

#[test]
fn the_mariadb_cli_without_a_reads_column_definitions_through_com_field_list() {
    let w = world("mysqlfields");
    let script = w.env.path("at_a_terminal.py");
    std::fs::write(&script, MARIADB_AT_A_TTY).unwrap();
    let port = w.db.port.to_string();
    let args = [script.to_str().unwrap(), w.db.host.as_str(), port.as_str(), "SELECT count(*) FROM items;", "quit"];
    let o = w.env.run_as(&w.dan, None, Path::new("/usr/bin/python3"), &args);
    let t = text(&o);
    assert!(o.status.success(), "{t}\n{}", w.env.agent_log());
    assert!(t.contains("Reading table information for completion"), "not at a terminal? {t}");
    assert!(t.contains("| count(*) |") && t.contains("|      100 |"), "{t}");
    assert!(!t.contains("ERROR"), "{t}");
    // The server answered the client's COM_FIELD_LIST for each table.
    let log = w.db.general_log();
    let listed = |t: &str| log.lines().any(|l| l.contains("Field List") && l.contains(t));
    assert!(listed("items") && listed("held"), "{log}");
    // The rule denies table customers: its columns are not read (the client goes on without them).
    assert!(!listed("customers"), "{log}");
    // Recorded as what it is.
    let st = w.statements_of(&w.dan);
    let fl = st.iter().find(|x| x["text"] == "SHOW COLUMNS FROM `appdb`.`items`").expect("field list recorded");
    assert_eq!(fl["decision"], "allow", "{fl}");
    assert_eq!(fl["kinds"], "show", "{fl}");
    assert_eq!(fl["tables"], "appdb.items", "{fl}");
    assert_eq!(fl["rows"], 2, "the columns listed: {fl}");
    let denied = st.iter().find(|x| x["text"] == "SHOW COLUMNS FROM `appdb`.`customers`").expect("refusal recorded");
    assert_eq!(denied["decision"], "deny", "{denied}");
}

#[test]
fn a_prepared_delete_is_held_at_execute_and_a_client_that_leaves_withdraws_its_request() {
    let w = world("mysqlhold2");
    // node mysql2's execute(): the prepare goes through at once, the EXECUTE waits.
    let modules = "/usr/local/lib/gatehouse-e2e/node/node_modules";
    let script = w.env.path("held.js");
    let q = serde_json::json!([["DELETE FROM held WHERE id = ?", [2]], ["SELECT count(*) FROM held", []]]);
    std::fs::write(&script, node_script(&q)).unwrap();
    let port = w.db.port.to_string();
    let node_path = format!("NODE_PATH={modules}");
    let args = [node_path.as_str(), "node", script.to_str().unwrap(), w.db.host.as_str(), port.as_str()];
    let mut node = w.env.spawn_as(&w.dan, None, Path::new("/usr/bin/env"), &args);
    let id = w.pending(&w.lea, "DELETE FROM held WHERE id = ?");
    let log = w.db.general_log();
    assert!(log.contains("Prepare\tDELETE FROM held WHERE id = ?"), "the prepare is not held: {log}");
    assert!(!log.contains("Execute\tDELETE"), "the execute is: {log}");
    let o = w.cli(&w.lea, &["approve", &id.to_string()]);
    assert!(o.status.success(), "{}", text(&o));
    let first = gatehouse_e2e::read_json_line(&mut node);
    assert_eq!(first["rows"], 1, "{first}\n{}", w.env.agent_log());
    let second = gatehouse_e2e::read_json_line(&mut node);
    assert_eq!(second["rows"], serde_json::json!([[1]]), "{second}");
    assert!(node.wait().unwrap().success());
    assert!(w.db.general_log().contains("Execute\tDELETE FROM held WHERE id = 2"));

    // A client that goes away while its statement is held withdraws the request; nothing runs.
    let script = w.env.path("leave.py");
    std::fs::write(
        &script,
        r#"
import sys, pymysql
c = pymysql.connect(host=sys.argv[1], port=int(sys.argv[2]), user="whoever", password="", database="appdb", autocommit=True)
c.cursor().execute("DELETE FROM held WHERE id = 1")
"#,
    )
    .unwrap();
    let args = [script.to_str().unwrap(), w.db.host.as_str(), port.as_str()];
    let mut py = w.env.spawn_as(&w.dan, None, Path::new("/usr/bin/python3"), &args);
    let id = w.pending(&w.lea, "DELETE FROM held WHERE id = 1");
    py.kill().unwrap();
    let _ = py.wait();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let o = w.cli(&w.lea, &["requests", "--json"]);
        let withdrawn =
            String::from_utf8_lossy(&o.stdout).lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).any(|r| {
                r.get("id").and_then(Value::as_u64) == Some(id)
                    && r.pointer("/state/state").is_some_and(|s| s == "withdrawn")
            });
        if withdrawn {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "request {id} not withdrawn: {}\n{}",
            text(&o),
            w.env.agent_log()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let o = w.cli(&w.lea, &["approve", &id.to_string()]);
    assert!(!o.status.success(), "a withdrawn request cannot be approved: {}", text(&o));
    assert_eq!(w.db.admin("SELECT id FROM appdb.held"), "1", "the row stays");
    assert!(!w.db.general_log().contains("DELETE FROM held WHERE id = 1"));
}

#[test]
fn a_held_update_nobody_approves_times_out_with_err_1227() {
    let w = world("mysqlholdtime");
    let out = w.python(
        &w.oli,
        r#"
import json, sys, time
import pymysql
c = pymysql.connect(host=sys.argv[1], port=int(sys.argv[2]), user="whoever", password="", database="appdb", autocommit=True)
cur = c.cursor()
t = time.time()
try:
    cur.execute("UPDATE held SET id = 5 WHERE id = 1")
    print(json.dumps({"ran": cur.rowcount}))
except pymysql.MySQLError as e:
    print(json.dumps({"error": e.args[0], "message": e.args[1], "waited": time.time() - t}))
cur.execute("SELECT count(*) FROM held")
print(json.dumps({"rows": cur.fetchall()}))
"#,
    );
    let t = text(&out);
    let lines: Vec<Value> =
        String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    assert_eq!(lines.len(), 2, "{t}\n{}", w.env.agent_log());
    assert_eq!(lines[0]["error"], 1227, "{t}");
    let msg = lines[0]["message"].as_str().unwrap();
    assert!(msg.contains("ops update in a hurry") && msg.contains("not approved in time"), "{msg}");
    assert!(lines[0]["waited"].as_f64().unwrap() >= 1.5, "it waited for the timeout: {t}");
    assert_eq!(lines[1]["rows"], serde_json::json!([[2]]), "the session goes on: {t}");
    assert!(!w.db.general_log().contains("UPDATE held"), "{}", w.db.general_log());
}

#[test]
fn executable_comments_and_load_data_local_are_refused() {
    let w = world("mysqlexec");
    let out = w.mariadb_script(
        &w.ana,
        &["appdb"],
        "SELECT 1 /*!50000 , (SELECT count(*) FROM victim) */;\nSELECT 2 /*M!100000 , 3 */;\nSELECT 'still here';\n",
    );
    let t = text(&out);
    assert_eq!(t.matches("executable comment").count(), 2, "{t}");
    assert!(t.contains("still here"), "{t}");
    assert!(!w.db.general_log().contains("/*!50000"), "{}", w.db.general_log());

    let data = w.env.path("rows.tsv");
    std::fs::write(&data, "7\n8\n").unwrap();
    std::fs::set_permissions(&data, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let load = format!("LOAD DATA LOCAL INFILE '{}' INTO TABLE victim", data.display());
    let out = w.mariadb(&w.ana, &["--local-infile=1", "appdb", "-e", &load]);
    let t = text(&out);
    assert!(t.contains("LOAD DATA LOCAL") && t.contains("not allowed"), "{t}");
    assert_eq!(w.db.admin("SELECT count(*) FROM appdb.victim"), "1", "no row may be loaded");
    assert!(!w.db.general_log().contains("LOAD DATA"), "{}", w.db.general_log());
}

#[test]
fn pymysql_multi_statement_text_with_a_drop_is_refused_whole() {
    let w = world("mysqlpy");
    let out = w.python(
        &w.ana,
        r#"
import json, sys
import pymysql
from pymysql.constants import CLIENT
c = pymysql.connect(host=sys.argv[1], port=int(sys.argv[2]), user="whoever", password="", database="appdb",
                    client_flag=CLIENT.MULTI_STATEMENTS, autocommit=True)
cur = c.cursor()
def run(sql):
    try:
        cur.execute(sql)
        print(json.dumps({"sql": sql, "rows": [list(r) for r in cur.fetchall()]}))
    except pymysql.MySQLError as e:
        print(json.dumps({"sql": sql, "error": e.args[0], "message": e.args[1]}))
run("SELECT count(*) FROM items")
run("SELECT 1; DROP TABLE victim")
run("DROP TABLE victim")
run("SELECT name FROM items WHERE id = 2")
run("SET NAMES sjis")
run("SELECT name FROM items WHERE id = 3")
"#,
    );
    let t = text(&out);
    let lines: Vec<Value> =
        String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    assert_eq!(lines.len(), 6, "{t}\n{}", w.env.agent_log());
    assert_eq!(lines[0]["rows"], serde_json::json!([[100]]), "{t}");
    assert_eq!(lines[1]["error"], 1227, "{t}");
    assert!(lines[1]["message"].as_str().unwrap().contains("statements"), "{t}");
    assert_eq!(lines[2]["error"], 1227, "{t}");
    assert_eq!(lines[3]["rows"], serde_json::json!([["item 2"]]), "{t}");
    assert_eq!(lines[4]["error"], 1227, "{t}");
    assert!(lines[4]["message"].as_str().unwrap().contains("sjis"), "{t}");
    assert_eq!(lines[5]["rows"], serde_json::json!([["item 3"]]), "{t}");
    assert!(w.victim_present(), "victim must survive");
    assert!(!w.db.general_log().contains("DROP TABLE"), "{}", w.db.general_log());

    let st = w.statements_of(&w.ana);
    let multi = st.iter().find(|x| x["text"] == "SELECT 1; DROP TABLE victim").expect("multi recorded");
    assert_eq!(multi["decision"], "deny", "{multi}");
}

/// PyMySQL sends a raw COM_FIELD_LIST for table `argv[3]` over its own
/// connection (it has no API for it), reads the answer packet by packet,
/// then runs a query to show the session is still in step. Prints the raw
/// answer (hex) and each column's name and default.
const PYMYSQL_FIELD_LIST: &str = r#"
import json, sys
import pymysql
c = pymysql.connect(host=sys.argv[1], port=int(sys.argv[2]), user="whoever", password="", database="appdb", autocommit=True)
c._execute_command(4, sys.argv[3].encode() + b"\0")
raw, defs, err = b"", [], None
while True:
    head = c._rfile.read(4)
    p = c._rfile.read(int.from_bytes(head[:3], "little"))
    raw += head + p
    if p[:1] == b"\xff":
        err = p[9:].decode(errors="replace")
        break
    if p[:1] == b"\xfe" and len(p) < 9:
        break
    at, names = 0, []
    for _ in range(6):
        names.append(p[at + 1 : at + 1 + p[at]].decode())
        at += 1 + p[at]
    at += 13
    default = None if p[at : at + 1] == b"\xfb" else p[at + 1 : at + 1 + p[at]].decode()
    defs.append([names[4], default])
cur = c.cursor()
cur.execute("SELECT 'still in step'")
print(json.dumps({"raw": raw.hex(), "defs": defs, "err": err, "after": cur.fetchone()[0]}))
"#;

#[test]
fn com_field_list_on_a_masked_rule_sends_no_column_default_values() {
    let w = world("mysqldefaults");
    w.db.admin(
        "CREATE TABLE appdb.defaults (id int PRIMARY KEY, note varchar(40) DEFAULT 'secret-default-123', n int DEFAULT 42)",
    );
    let secret = hex_of(b"secret-default-123");
    let field_list = |user: &str| {
        let path = w.env.path(&format!("field-list-{}.py", free_port()));
        std::fs::write(&path, PYMYSQL_FIELD_LIST).unwrap();
        let port = w.db.port.to_string();
        let args = [path.to_str().unwrap(), w.db.host.as_str(), port.as_str(), "defaults"];
        let o = w.env.run_as(user, None, Path::new("/usr/bin/python3"), &args);
        assert!(o.status.success(), "{}\n{}", text(&o), w.env.agent_log());
        let line = String::from_utf8_lossy(&o.stdout).lines().last().unwrap_or_default().to_owned();
        serde_json::from_str::<Value>(&line).unwrap_or_else(|e| panic!("{e}: {}", text(&o)))
    };
    let listed = |db: &MariaServer| db.general_log().lines().filter(|l| l.contains("Field List\tdefaults")).count();

    // Unmasked (dan's rule lists columns): the defaults, as the server sent them.
    let plain = field_list(&w.dan);
    assert_eq!(plain["err"], Value::Null, "{plain}");
    assert_eq!(plain["after"], "still in step", "{plain}");
    let defs = plain["defs"].as_array().unwrap();
    assert_eq!(defs.len(), 3, "{plain}");
    assert_eq!(defs[1], serde_json::json!(["note", "secret-default-123"]), "{plain}");
    assert_eq!(defs[2], serde_json::json!(["n", "42"]), "{plain}");
    assert!(plain["raw"].as_str().unwrap().contains(&secret), "{plain}");
    assert_eq!(listed(&w.db), 1, "the server answered the Field List: {}", w.db.general_log());

    // Masked (gus's rule): the same column definitions, every default NULL.
    let masked = field_list(&w.gus);
    assert_eq!(masked["err"], Value::Null, "{masked}\n{}", w.env.agent_log());
    assert_eq!(masked["after"], "still in step", "the session goes on in step: {masked}");
    assert_eq!(
        masked["defs"],
        serde_json::json!([["id", null], ["note", null], ["n", null]]),
        "{masked}\n{}",
        w.env.agent_log()
    );
    let raw = masked["raw"].as_str().unwrap();
    assert!(!raw.contains(&secret) && !raw.contains(&hex_of(b"secret")), "the default leaked: {masked}");
    // The server did answer it, with the default in it.
    assert_eq!(listed(&w.db), 2, "the server answered the masked Field List too: {}", w.db.general_log());
    // Apart from the defaults, the masked answer is the server's: the same columns.
    let names = |v: &Value| -> Vec<Value> { v["defs"].as_array().unwrap().iter().map(|d| d[0].clone()).collect() };
    assert_eq!(names(&plain), names(&masked));
    let st = w.statements_of(&w.gus);
    let fl = st.iter().find(|x| x["text"] == "SHOW COLUMNS FROM `appdb`.`defaults`").expect("field list recorded");
    assert_eq!(fl["decision"], "allow", "{fl}");
    assert_eq!(fl["rows"], 3, "{fl}");
    assert!(fl["masked"].as_str().unwrap_or("").contains("columns"), "the defaults dropped are counted: {fl}");
}

fn hex_of(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn masked_rule_masks_result_sets_for_the_cli_and_pymysql() {
    let w = world("mysqlmask");
    let q = "SELECT id, email, card, note FROM customers ORDER BY id";
    // The unmasked user sees what the server really returned.
    let real = text(&w.mariadb(&w.ana, &["appdb", "-e", q]));
    assert!(real.contains("zoe@example.com") && real.contains("4111111111111111"), "{real}\n{}", w.env.agent_log());
    assert!(real.contains("123-45-6789"), "{real}");

    let out = w.mariadb_script(
        &w.sam,
        &["appdb"],
        &format!("{q};\nSELECT card AS c FROM customers WHERE id = 1;\nSELECT 'ssn 123-45-6789' AS x;\nSELECT 1 FROM zoe_secret;\nSELECT 'after';\n"),
    );
    let t = text(&out);
    assert!(!t.contains("4111111111111111") && !t.contains("411111111111"), "card leaked: {t}\n{}", w.env.agent_log());
    assert!(!t.contains("zoe@example.com"), "email leaked: {t}");
    assert!(!t.contains("123-45-6789"), "the detector must mask the ssn: {t}");
    let first = t.lines().next().unwrap_or_default();
    let cells: Vec<&str> = first.split('\t').collect();
    assert_eq!(cells.len(), 4, "{t}");
    assert_eq!(cells[0], "1", "{t}");
    assert_eq!(cells[1], "****", "email is redacted: {t}");
    assert!(cells[2].ends_with("1111") && cells[2].len() >= 4, "card is partial: {t}");
    assert_eq!(cells[3], "ssn ****", "{t}");
    assert!(t.contains("2\tNULL\tNULL\tplain"), "NULL stays NULL, plain text passes: {t}");
    // Errors lose what they quote (they can echo values); the session goes on.
    assert!(t.contains("ERROR 1146") && t.contains("Table '****'"), "{t}");
    let err = t.lines().find(|l| l.starts_with("ERROR 1146")).unwrap_or_default();
    assert!(
        !err.contains("zoe_secret") && t.contains("after"),
        "the client echoes the query, not the server's message: {t}"
    );
    // The server did run them: it returned the real values to Gatehouse.
    let log = w.db.general_log();
    assert!(log.contains("SELECT card AS c FROM customers"), "{log}");

    let py = w.python(
        &w.sam,
        r#"
import json, sys
import pymysql
c = pymysql.connect(host=sys.argv[1], port=int(sys.argv[2]), user="whoever", password="", database="appdb", autocommit=True)
cur = c.cursor()
cur.execute("SELECT id, email, card FROM customers ORDER BY id")
print(json.dumps([list(r) for r in cur.fetchall()]))
cur.execute("SELECT email, id + 0 FROM customers WHERE id = 1")
print(json.dumps([list(r) for r in cur.fetchall()]))
"#,
    );
    let pt = text(&py);
    let lines: Vec<Value> =
        String::from_utf8_lossy(&py.stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    assert_eq!(lines.len(), 2, "{pt}\n{}", w.env.agent_log());
    assert_eq!(lines[0][0][0], 1, "{pt}");
    assert_eq!(lines[0][0][1], "****", "{pt}");
    let card = lines[0][0][2].as_str().unwrap();
    assert!(card.ends_with("1111") && !card.contains("41111111"), "{pt}");
    assert_eq!(lines[0][1], serde_json::json!([2, null, null]), "{pt}");
    // Expressions over a table with masked columns cannot be traced: masked (fail closed).
    assert!(!pt.contains("ZOE@EXAMPLE.COM"), "{pt}");
    assert_eq!(lines[1][0][1], Value::Null, "a computed number over a masked table is NULL: {pt}");

    // A value shaped from a masked column is hidden whole, NULL included (a
    // partial form of it would show what the column's hides; its NULL would
    // answer the NULLIF's question). The server returns the real thing.
    let shaped = "SELECT CONCAT('xxxxxxxx', REVERSE(card)), NULLIF(SUBSTR(card, 1, 1), '4'), NULLIF(SUBSTR(card, 1, 1), '9') FROM customers WHERE id = 1";
    let real = text(&w.mariadb(&w.ana, &["appdb", "-N", "-e", shaped]));
    assert!(real.contains("xxxxxxxx1111111111111114\tNULL\t4"), "{real}");
    let got = text(&w.mariadb(&w.lou, &["appdb", "-N", "-e", shaped]));
    assert_eq!(got.trim(), "****\t****\t****", "{got}\n{}", w.env.agent_log());
    // On the default profile computing with a masked column is refused: the
    // result would be hidden, so only an error could carry what it computes
    // (`Subquery returns more than 1 row` when the card starts with 4).
    let bit = "SELECT IF(card LIKE '4%', (SELECT 1 UNION SELECT 2), 1), 'bit1' FROM customers WHERE id = 1";
    assert!(text(&w.mariadb(&w.ana, &["appdb", "-N", "-e", bit])).contains("ERROR 1242"), "what the server says");
    for sql in [&bit.replace("bit1", "bit2"), shaped] {
        let out = text(&w.mariadb(&w.sam, &["appdb", "-N", "-e", sql]));
        assert!(out.contains("ERROR 1227") && out.contains("computes with the masked column"), "{sql}: {out}");
    }
    assert!(!w.db.general_log().contains("bit2"), "the server ran the refused statement");
    // Filtering, joining, sorting, grouping or counting rows on a masked
    // column: refused (masked_predicates = "refuse", the default), and the
    // server never ran them.
    let refused = [
        "SELECT id FROM customers WHERE card LIKE '4pred1%'",
        "SELECT COUNT(*), 'pred2' FROM customers GROUP BY card",
        "SELECT id, 'pred3' FROM customers ORDER BY card",
        "SELECT COUNT(NULLIF(SUBSTR(card, 1, 1), 'pred4')) FROM customers",
        "SELECT DISTINCT SUBSTR(email, 1, 1), 'pred5' FROM customers",
        "SELECT card FROM customers UNION SELECT 'pred6'",
        "SELECT * FROM (SELECT card AS x FROM customers) d WHERE x LIKE 'pred7%'",
        "SELECT c.id FROM customers c JOIN customers d ON d.email = c.email AND 'pred8' = 'pred8'",
        // A position past a `*` (id, email, card, note): the column it lands on is not known here.
        "SELECT *, 'pred9' FROM customers ORDER BY 3",
        "SELECT 'pred10', customers.* FROM customers ORDER BY 4 DESC",
    ];
    for sql in refused {
        let out = text(&w.mariadb(&w.sam, &["appdb", "-N", "-e", sql]));
        assert!(out.contains("ERROR 1227") && out.contains("masked column"), "{sql}: {out}\n{}", w.env.agent_log());
    }
    // A shaped value behind a stored column in a UNION: the union's column
    // must not pass for the stored one.
    let union = "SELECT card FROM customers WHERE id = 1 UNION ALL SELECT CONCAT('xxxxxxxx', REVERSE(card)) FROM customers WHERE id = 1";
    let got = text(&w.mariadb(&w.lou, &["appdb", "-N", "-e", union]));
    assert_eq!(got.trim(), "****\n****", "{got}\n{}", w.env.agent_log());
    // A common table expression: the server names it as the column's table
    // (it came back as the stored card); it is the user's query, hidden whole.
    let cte = "WITH t AS (SELECT card FROM customers WHERE id = 1) SELECT * FROM t";
    assert_eq!(
        text(&w.mariadb(&w.ana, &["appdb", "-N", "-e", cte])).trim(),
        "4111111111111111",
        "what the server returns"
    );
    for u in [&w.lou, &w.sam] {
        let got = text(&w.mariadb(u, &["appdb", "-N", "-e", cte]));
        assert_eq!(got.trim(), "****", "{got}\n{}", w.env.agent_log());
    }
    // A value carried out of its column in a user variable, then read back
    // by a statement that names no table: refused, whatever the profile
    // says about predicates; the variable stays unset on the server.
    let out = w.mariadb_script(
        &w.sam,
        &["appdb"],
        "SELECT @v := card, 'store1' FROM customers WHERE id = 1;\nSELECT CONCAT('v=', COALESCE(@v, 'unset'));\n",
    );
    let t = text(&out);
    assert!(t.contains("ERROR 1227") && t.contains("user variable"), "{t}\n{}", w.env.agent_log());
    assert!(t.contains("v=unset") && !t.contains("4111111111111111"), "{t}");
    let allowed =
        text(&w.mariadb(&w.sam, &["appdb", "-N", "-e", "SELECT id, card FROM customers WHERE id = 1 ORDER BY id"]));
    assert!(allowed.starts_with("1\t") && allowed.contains("1111"), "{allowed}");
    let log = w.db.general_log();
    for n in 1..=10 {
        assert!(!log.contains(&format!("pred{n}")), "the server ran refused statement {n}: {log}");
    }
    assert!(!log.contains("store1"), "the server ran the refused assignment: {log}");

    // A warning can quote the value an earlier statement read: what it
    // quotes is redacted, as an ERR's is (gus's masked rule may SHOW; its
    // profile allows computing with masked columns, which sam's refuses).
    let out = w.mariadb_script(
        &w.gus,
        &["appdb"],
        "SELECT CAST(email AS DOUBLE) FROM customers WHERE id = 1;\nSHOW WARNINGS;\nSHOW ERRORS;\n",
    );
    let t = text(&out);
    assert!(t.contains("Truncated incorrect DOUBLE value: '****'"), "{t}\n{}", w.env.agent_log());
    assert!(!t.contains("zoe@example.com"), "{t}");

    let st = w.statements_of(&w.sam);
    assert!(
        st.iter()
            .filter(
                |x| x["decision"] == "deny" && x["reason"].as_str().is_some_and(|r| r.contains("rows on the masked"))
            )
            .count()
            == refused.len(),
        "the refusal is recorded: {st:#?}"
    );
    let sel = st.iter().find(|x| x["text"] == q).expect("select recorded");
    assert_eq!(sel["decision"], "allow", "{sel}");
    assert_eq!(sel["rows"], 2, "{sel}");
    assert!(sel["masked"].as_str().unwrap_or("").contains("columns"), "{sel}");
}

/// A masked rule that may write: a masked column's values stored in another
/// table, column or view, or the table or column the rules name renamed,
/// would be read back raw a statement later. Refused, and the server never
/// ran them (its general log, its rows).
#[test]
fn a_masked_mysql_rule_that_writes_cannot_store_masked_values_elsewhere() {
    let w = world("mysqlstore");
    let out = w.mariadb_script(
        &w.wes,
        &["appdb"],
        "CREATE TEMPORARY TABLE loot AS SELECT id, card, 'st1' AS tag FROM customers;\nSELECT card FROM loot;\n",
    );
    let t = text(&out);
    assert!(t.contains("ERROR 1227") && t.contains("stores values of the masked column"), "{t}\n{}", w.env.agent_log());
    assert!(t.contains("ERROR 1146") && !t.contains("4111111111111111"), "the server has no such table: {t}");
    for sql in [
        "UPDATE customers SET note = CONCAT('st2', card) WHERE id = 2",
        "INSERT INTO items (id, name) SELECT 1000 + id, CONCAT('st3', card) FROM customers",
        "CREATE VIEW peek AS SELECT CONCAT('st4', card) AS c FROM customers",
        "ALTER TABLE customers ADD COLUMN c_st5 VARCHAR(32) AS (card) STORED",
        "ALTER TABLE customers RENAME COLUMN card TO c_st6",
        "RENAME TABLE customers TO clients_st7",
    ] {
        let out = text(&w.mariadb(&w.wes, &["appdb", "-N", "-e", sql]));
        assert!(out.contains("ERROR 1227"), "{sql}: {out}\n{}", w.env.agent_log());
    }
    let log = w.db.general_log();
    for n in 1..=7 {
        assert!(!log.contains(&format!("st{n}")), "the server ran refused statement {n}: {log}");
    }
    let note = text(&w.mariadb(&w.ana, &["appdb", "-N", "-e", "SELECT note FROM customers WHERE id = 2"]));
    assert_eq!(note.trim(), "plain", "the server's row");
    // A write that stores nothing masked goes through.
    let ok = text(&w.mariadb(&w.wes, &["appdb", "-N", "-e", "UPDATE customers SET note = 'st-ok' WHERE id = 2"]));
    assert!(!ok.contains("ERROR"), "{ok}\n{}", w.env.agent_log());
    let note = text(&w.mariadb(&w.ana, &["appdb", "-N", "-e", "SELECT note FROM customers WHERE id = 2"]));
    assert_eq!(note.trim(), "st-ok", "the server's row");
    // A select-only masked rule that allows computing: LAST_INSERT_ID(expr)
    // keeps a value for the next LAST_INSERT_ID() (and the OK packet), and a
    // server variable set from a query keeps what it read; no masking
    // follows either. Reached directly, through a derived table's alias, a CTE.
    for (keep, read) in [
        (
            "SELECT LAST_INSERT_ID(CAST(LEFT(card, 9) AS UNSIGNED)) FROM customers WHERE id = 1",
            "SELECT LAST_INSERT_ID()",
        ),
        (
            "SELECT LAST_INSERT_ID(x) FROM (SELECT CAST(LEFT(card, 9) AS UNSIGNED) AS x FROM customers WHERE id = 1) d",
            "SELECT LAST_INSERT_ID()",
        ),
        (
            "WITH d AS (SELECT card AS x FROM customers WHERE id = 1) SELECT LAST_INSERT_ID(CAST(LEFT(x, 9) AS UNSIGNED)) FROM d",
            "SELECT LAST_INSERT_ID()",
        ),
        (
            "SET SESSION sql_select_limit = (SELECT CAST(LEFT(card, 9) AS UNSIGNED) FROM customers WHERE id = 1)",
            "SELECT @@sql_select_limit",
        ),
    ] {
        let out = w.mariadb_script(&w.lou, &["appdb", "-N"], &format!("{keep};\n{read};\n"));
        let t = text(&out);
        assert!(!t.contains("411111111"), "the card's digits came back: {keep}: {t}");
        assert!(t.contains("ERROR 1227") && t.contains("masked"), "{keep}: {t}\n{}", w.env.agent_log());
    }
}

/// Node mysql2 prints one JSON line per statement it ran with `execute()`.
const NODE_EXECUTE: &str = r#"
const mysql = require('mysql2/promise');
(async () => {
  const [host, port] = process.argv.slice(2);
  const c = await mysql.createConnection({ host, port: Number(port), user: 'whoever', password: '', database: 'appdb' });
  const run = async (sql, params) => {
    try {
      const [rows] = await c.execute(sql, params);
      console.log(JSON.stringify({ sql, rows: Array.isArray(rows) ? rows.map((r) => Object.values(r)) : rows.affectedRows }));
    } catch (e) {
      console.log(JSON.stringify({ sql, error: e.errno, message: e.message }));
    }
  };
  for (const [sql, params] of JSON.parse(process.env.QUERIES || '[]')) await run(sql, params);
  await c.end();
})().catch((e) => { console.error(e); process.exit(1); });
"#;

fn node_lines(o: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&o.stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// The Node script with its statements baked in (env does not pass through setpriv's sh).
fn node_script(queries: &Value) -> String {
    NODE_EXECUTE.replace("process.env.QUERIES || '[]'", &serde_json::to_string(&queries.to_string()).unwrap())
}

#[test]
fn node_mysql2_prepared_statements_are_decided_masked_and_recorded() {
    let w = world("mysqlprep");
    let queries = serde_json::json!([
        ["SELECT name FROM items WHERE id = ?", [42]],
        ["DROP TABLE victim", []],
        ["SELECT count(*) FROM victim WHERE id >= ?", [0]],
        ["INSERT INTO items VALUES (?, ?)", [2000, "prepared"]],
        ["SELECT name FROM items WHERE id = ?", [2000]],
    ]);
    let out = w.node(&w.ana, &node_script(&queries));
    let t = text(&out);
    let lines = node_lines(&out);
    assert_eq!(lines.len(), 5, "{t}\n{}", w.env.agent_log());
    assert_eq!(lines[0]["rows"], serde_json::json!([["item 42"]]), "{t}");
    assert_eq!(lines[1]["error"], 1227, "{t}");
    assert!(lines[1]["message"].as_str().unwrap().contains("analysts read and write items"), "names the rule: {t}");
    assert_eq!(lines[2]["rows"], serde_json::json!([[1]]), "the session stays usable: {t}");
    assert_eq!(lines[3]["rows"], 1, "{t}");
    assert_eq!(lines[4]["rows"], serde_json::json!([["prepared"]]), "{t}");
    // What the server did: it prepared and executed the allowed ones, never saw the DROP.
    let log = w.db.general_log();
    assert!(log.contains("Prepare\tSELECT name FROM items WHERE id = ?"), "{log}");
    assert!(log.contains("Execute\tSELECT name FROM items WHERE id = 42"), "{log}");
    assert!(!log.contains("DROP TABLE victim"), "a refused prepare never reaches the server: {log}");
    assert!(w.victim_present(), "victim must survive");
    assert_eq!(w.db.admin("SELECT name FROM appdb.items WHERE id = 2000"), "prepared");

    let st = w.statements_of(&w.ana);
    let drop = st.iter().find(|x| x["text"] == "DROP TABLE victim").expect("the refused prepare is recorded");
    assert_eq!((drop["decision"].as_str(), drop["kinds"].as_str()), (Some("deny"), Some("drop")), "{drop}");
    // mysql2 prepares a text once and executes it each time: one record of
    // the prepare (no rows), one per EXECUTE (its rows), all with the text.
    let same: Vec<&Value> = st.iter().filter(|x| x["text"] == "SELECT name FROM items WHERE id = ?").collect();
    assert_eq!(same.len(), 3, "{st:#?}");
    assert!(same.iter().all(|x| x["decision"] == "allow" && x["tables"] == "appdb.items"), "{same:#?}");
    assert_eq!(same.iter().filter(|x| x["rows"] == 1).count(), 2, "each EXECUTE is a statement: {same:#?}");
    // (In the records' texts: a timestamp or an id may hold the digits.)
    fn holds(x: &Value, needle: &str) -> bool {
        x.as_object()
            .into_iter()
            .flatten()
            .any(|(k, v)| !k.ends_with("id") && v.as_str().is_some_and(|t| t.contains(needle)))
    }
    assert!(!st.iter().any(|x| holds(x, "2000")), "parameter values are not recorded: {st:#?}");
    // The replay decodes the binary rows of each EXECUTE by column type.
    let sessions = w.env.sessions();
    let ana = sessions.iter().find(|s| s["user"] == w.ana.as_str() && s["decision"] == "allow").unwrap();
    let ctl = w.env.control().display().to_string();
    let out = w.env.gatehouse(&["replay", ana["id"].as_str().unwrap(), "--no-wait", "--control-socket", &ctl]);
    let r = String::from_utf8_lossy(&out.stdout);
    assert!(
        r.contains("> SELECT name FROM items WHERE id = ?;") && r.contains("prepared (1 parameters, 1 columns)"),
        "{r}"
    );
    assert!(r.contains("| item 42 |") && r.contains("| prepared |"), "binary rows decoded: {r}");
    assert!(r.contains("Query OK, 1 row affected"), "the INSERT's EXECUTE: {r}");
    assert!(r.contains("ERROR 1227 (42000)"), "the refused prepare: {r}");

    // Masked rule: binary rows are masked like text rows.
    let queries = serde_json::json!([
        ["SELECT id, email, card, note FROM customers WHERE id >= ? ORDER BY id", [0]],
        ["SELECT id + 0, email FROM customers WHERE id = ?", [1]],
    ]);
    let out = w.node(&w.sam, &node_script(&queries));
    let t = text(&out);
    let lines = node_lines(&out);
    assert_eq!(lines.len(), 2, "{t}\n{}", w.env.agent_log());
    assert!(!t.contains("zoe@example.com") && !t.contains("ZOE@EXAMPLE.COM") && !t.contains("41111111"), "{t}");
    let first = &lines[0]["rows"][0];
    assert_eq!(first[0], 1, "{t}");
    assert_eq!(first[1], "****", "{t}");
    assert!(first[2].as_str().unwrap().ends_with("1111"), "{t}");
    assert_eq!(first[3], "ssn ****", "{t}");
    assert_eq!(lines[0]["rows"][1], serde_json::json!([2, null, null, "plain"]), "{t}");
    assert_eq!(lines[1]["rows"][0][0], Value::Null, "a computed number over a masked table is NULL: {t}");
    // The server returned the real values to Gatehouse.
    assert!(w.db.general_log().contains("Execute\tSELECT id, email, card, note FROM customers WHERE id >= 0"));
}

#[test]
fn execute_parameters_are_recorded_only_under_record_parameters_and_through_the_mask() {
    let w = world("mysqlparams");
    let queries = |id: u32, name: &str| {
        serde_json::json!([
            ["SELECT name FROM items WHERE id = ?", [id]],
            ["SELECT id FROM items WHERE name = ?", [name]]
        ])
    };
    // rita's rule says record_parameters; ana's does not; sam's does, with a masking profile.
    for (user, q) in [(&w.rita, queries(7, "item 8")), (&w.ana, queries(9, "item 10"))] {
        let out = w.node(user, &node_script(&q));
        assert_eq!(node_lines(&out).len(), 2, "{}\n{}", text(&out), w.env.agent_log());
    }
    let q = serde_json::json!([["SELECT id FROM customers WHERE note = ?", ["ssn 123-45-6789"]]]);
    let out = w.node(&w.sam, &node_script(&q));
    assert_eq!(node_lines(&out), [serde_json::json!({"sql": q[0][0], "rows": [[1]]})], "{}", text(&out));
    // The server bound the real values in each case.
    let log = w.db.general_log();
    assert!(log.contains("WHERE name = 'item 10'") && log.contains("WHERE note = 'ssn 123-45-6789'"), "{log}");

    let ctl = w.env.control().display().to_string();
    let replay = |user: &str| {
        let s = w.env.wait_session("the node session", |s| s["user"] == user);
        let o = w.env.gatehouse(&["replay", s["id"].as_str().unwrap(), "--no-wait", "--control-socket", &ctl]);
        assert!(o.status.success(), "{}", text(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let r = replay(&w.rita);
    assert!(r.contains("-- parameters: 7\n") && r.contains("-- parameters: 'item 8'\n"), "{r}");
    let r = replay(&w.ana);
    assert!(!r.contains("-- parameters") && !r.contains("item 10"), "not recorded without record_parameters: {r}");
    assert!(r.contains("WHERE name = ?;"), "{r}");
    let r = replay(&w.sam);
    assert!(
        r.contains("-- parameters: 'ssn ****'\n") && !r.contains("123-45-6789"),
        "masked by the rule's profile: {r}"
    );
}

#[test]
fn statement_ids_not_prepared_through_gatehouse_are_refused() {
    let w = world("mysqlstmtid");
    // PyMySQL's raw command path: commands a driver would send for a
    // statement it never prepared (or one Gatehouse refused).
    let out = w.python(
        &w.ana,
        r#"
import json, struct, sys
import pymysql
c = pymysql.connect(host=sys.argv[1], port=int(sys.argv[2]), user="whoever", password="", database="appdb", autocommit=True)
def raw(command, body, answer=True):
    c._execute_command(command, body)
    if not answer:
        return "sent"
    try:
        p = c._read_packet()
        return "ok" if p.is_ok_packet() else "other"
    except pymysql.MySQLError as e:
        return e.args[0]
print(json.dumps({
    "execute": raw(0x17, struct.pack("<IBI", 1, 0, 1)),
    "last": raw(0x17, struct.pack("<IBI", 0xffffffff, 0, 1)),
    "reset": raw(0x1a, struct.pack("<I", 1)),
    "close": raw(0x19, struct.pack("<I", 1), answer=False),
    "long": raw(0x18, struct.pack("<IH", 1, 0) + b"x", answer=False),
    "prepare_drop": raw(0x16, b"DROP TABLE victim"),
    "fetch": raw(0x1c, struct.pack("<II", 1, 1)),
}))
cur = c.cursor()
cur.execute("SELECT count(*) FROM victim")
print(json.dumps(cur.fetchall()))
"#,
    );
    let t = text(&out);
    let lines: Vec<Value> =
        String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    assert_eq!(lines.len(), 2, "{t}\n{}", w.env.agent_log());
    let r = &lines[0];
    for k in ["execute", "last", "reset", "prepare_drop", "fetch"] {
        assert_eq!(r[k], 1227, "{k}: {t}");
    }
    assert_eq!(lines[1], serde_json::json!([[1]]), "the session goes on: {t}");
    let log = w.db.general_log();
    for word in ["Execute", "Prepare", "Reset stmt", "Close stmt", "Long Data", "DROP"] {
        assert!(!log.contains(word), "{word} reached the server: {log}");
    }
    assert!(w.victim_present());
    let st = w.statements_of(&w.ana);
    for text in [
        "(COM_STMT_EXECUTE of statement id 1)",
        "(COM_STMT_CLOSE of statement id 1)",
        "(COM_STMT_SEND_LONG_DATA of statement id 1)",
    ] {
        let x = st.iter().find(|x| x["text"] == text).unwrap_or_else(|| panic!("{text} recorded: {st:#?}"));
        assert_eq!(x["decision"], "deny", "{x}");
    }
}

#[test]
fn mysqlslap_reads_through_gatehouse_and_its_writes_are_refused_on_a_read_only_rule() {
    let w = world("mysqlslap");
    let out = w.mysqlslap(
        &w.rita,
        &[
            "--concurrency=4",
            "--iterations=2",
            "--number-of-queries=200",
            "--query=SELECT name FROM items WHERE id = 7",
        ],
    );
    let t = text(&out);
    assert!(out.status.success(), "{t}\n{}", w.env.agent_log());
    assert!(t.contains("Average number of seconds to run all queries"), "{t}");
    let log = w.db.general_log();
    let ran = log.matches("SELECT name FROM items WHERE id = 7").count();
    assert!(ran >= 200, "the server ran the reads ({ran}): {t}");

    let out =
        w.mysqlslap(&w.rita, &["--concurrency=2", "--iterations=1", "--query=INSERT INTO items VALUES (5000, 'slap')"]);
    let t = text(&out);
    // mysqlslap exits 0 when its queries fail; it prints the server's message, not its code.
    assert!(t.contains("Gatehouse refused this statement") && t.contains("readers only read"), "{t}");
    assert_eq!(w.db.admin("SELECT count(*) FROM appdb.items WHERE id = 5000"), "0", "no row may be written");
    assert!(!w.db.general_log().contains("INSERT INTO items VALUES (5000"), "{}", w.db.general_log());
}

#[test]
fn a_prepared_statement_is_decided_again_at_each_execute() {
    use std::io::{BufRead, Write};
    let w = world("mysqlredecide");
    let script = w.env.path("redecide.js");
    std::fs::write(
        &script,
        r#"
const mysql = require('mysql2/promise');
const lines = require('readline').createInterface({ input: process.stdin })[Symbol.asyncIterator]();
(async () => {
  const [host, port] = process.argv.slice(2);
  const c = await mysql.createConnection({ host, port: Number(port), user: 'whoever', password: '', database: 'appdb' });
  const run = async (sql, params) => {
    try {
      const [rows] = await c.execute(sql, params);
      console.log(JSON.stringify({ sql, rows: Array.isArray(rows) ? rows.map((r) => Object.values(r)) : rows.affectedRows }));
    } catch (e) {
      console.log(JSON.stringify({ sql, error: e.errno, message: e.message }));
    }
  };
  await run('SELECT name FROM items WHERE id = ?', [1]);
  console.log('READY');
  await lines.next();
  await run('SELECT name FROM items WHERE id = ?', [2]);
  await run('INSERT INTO items VALUES (?, ?)', [3000, 'after reload']);
  await c.end();
  process.exit(0);
})().catch((e) => { console.error(e); process.exit(1); });
"#,
    )
    .unwrap();
    let port = w.db.port.to_string();
    let node_path = "NODE_PATH=/usr/local/lib/gatehouse-e2e/node/node_modules";
    let mut child = w.env.spawn_as(
        &w.ana,
        None,
        Path::new("/usr/bin/env"),
        &[node_path, "node", script.to_str().unwrap(), &w.db.host, &port],
    );
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut before = String::new();
    loop {
        let mut line = String::new();
        assert!(stdout.read_line(&mut line).unwrap() > 0, "node ended early: {before}\n{}", w.env.agent_log());
        if line.trim() == "READY" {
            break;
        }
        before.push_str(&line);
    }
    assert!(before.contains(r#""rows":[["item 1"]]"#), "{before}");
    // The rule no longer allows reads; the session (and its prepared statement) stays.
    let config = w.env.path("policy.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let changed = text.replace(
        r#"statements = ["select", "insert", "update", "delete"]"#,
        r#"statements = ["insert", "update", "delete"]"#,
    );
    assert_ne!(text, changed);
    std::fs::write(&config, changed).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while w.env.status()["policy"]["reloads"] != 1 {
        assert!(std::time::Instant::now() < deadline, "no reload: {:#}", w.env.status());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    child.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    let mut after = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut after).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{after}\n{}", w.env.agent_log());
    let lines: Vec<Value> = after.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    assert_eq!(lines.len(), 2, "{after}");
    assert_eq!(lines[0]["error"], 1227, "the execute is decided under the new policy: {after}");
    assert!(lines[0]["message"].as_str().unwrap().contains("select is not in its statements"), "{after}");
    assert_eq!(lines[1]["rows"], 1, "the session goes on: {after}");
    // The server executed the first, never the second.
    let log = w.db.general_log();
    assert!(log.contains("Execute\tSELECT name FROM items WHERE id = 1"), "{log}");
    assert!(!log.contains("SELECT name FROM items WHERE id = 2"), "{log}");
    assert_eq!(w.db.admin("SELECT name FROM appdb.items WHERE id = 3000"), "after reload");
    let st = w.statements_of(&w.ana);
    let refused: Vec<&Value> =
        st.iter().filter(|x| x["text"] == "SELECT name FROM items WHERE id = ?" && x["decision"] == "deny").collect();
    assert_eq!(refused.len(), 1, "{st:#?}");
    assert_eq!(refused[0]["rule"], "analysts read and write items", "{st:#?}");
}

#[test]
fn replay_shows_a_mariadb_session_masked_with_its_refusal_and_the_records_verify_and_export() {
    let mut w = world("mysqlrec");
    let out = w.mariadb_script(
        &w.sam,
        &["appdb"],
        "SELECT id, email, card FROM customers ORDER BY id;\nDROP TABLE victim;\nSELECT count(*) FROM items WHERE name <> 'hunter2-secret';\nSELECT name FROM items WHERE id = 1;\n",
    );
    let t = text(&out);
    assert!(t.contains("ERROR 1227 (42000)") && t.contains("item 1"), "{t}\n{}", w.env.agent_log());
    assert!(w.victim_present(), "the refused DROP never reached the server");
    let session = w.env.wait_session("sam's session", |s| s["user"] == w.sam.as_str());
    let id = session["id"].as_str().unwrap().to_owned();

    // The replay: as the mariadb client shows it, from the masked bytes.
    let ctl = w.env.control().display().to_string();
    let out = w.env.gatehouse(&["replay", &id, "--no-wait", "--control-socket", &ctl]);
    let r = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{r}{}", String::from_utf8_lossy(&out.stderr));
    // The client logged in to database appdb: on record, and in the prompt from the first statement on.
    assert!(r.contains("-- logged in to the backend as gh_app, database appdb"), "{r}");
    assert!(r.contains("MariaDB [appdb]> SELECT id, email, card FROM customers ORDER BY id;"), "{r}");
    assert!(r.contains("| id | email"), "the result as a box: {r}");
    assert!(r.contains("+----+"), "{r}");
    assert!(r.contains("2 rows in set"), "{r}");
    assert!(r.contains("****"), "the masked email as the client saw it: {r}");
    assert!(!r.contains("zoe@example.com") && !r.contains("4111111111111111"), "never the real values: {r}");
    assert!(r.contains("> DROP TABLE victim;"), "{r}");
    assert!(
        r.contains("ERROR 1227 (42000): Gatehouse refused this statement"),
        "the refusal as the client saw it: {r}"
    );
    assert!(r.contains("item 1 |"), "the last result: {r}");
    assert!(r.contains("1 row in set"), "{r}");

    // The streams are on record (both directions), and the export carries them.
    let pubkey = w.env.status()["public_key"].as_str().unwrap().to_owned();
    assert!(w.env.signal_agent("TERM").success());
    let db = w.env.db().display().to_string();
    let (ok, vt) = {
        let o = w.env.gatehouse(&["verify", &db, "--pubkey", &pubkey]);
        (o.status.success(), format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
    };
    assert!(ok && !vt.contains("TAMPERED"), "{vt}");
    let bundle = w.env.path("bundle");
    let out = w.env.gatehouse(&["export", "--db", &db, "--out", bundle.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let records = std::fs::read_to_string(bundle.join("records.jsonl")).unwrap();
    let ours: Vec<Value> = records
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["session"] == id.as_str())
        .collect();
    let kinds: Vec<&str> = ours.iter().filter_map(|v| v["kind"].as_str()).collect();
    // A statement's end is a record of its own, or folded into the statement's (`end`) when the
    // audit writer took both in one batch.
    let ended = |v: &&Value| v["kind"] == "statement_end" || (v["kind"] == "statement" && v["body"]["end"].is_object());
    assert!(kinds.contains(&"statement") && ours.iter().any(|v| ended(&v)), "{kinds:?}");
    let login = ours.iter().find(|v| v["kind"] == "backend_login").expect("backend_login exported");
    assert!(
        login.to_string().contains(r#"\"database\":\"appdb\""#) || login.to_string().contains(r#""database":"appdb""#),
        "{login}"
    );
    assert!(kinds.contains(&"chunk"), "the refusal's ERR is a chunk: {kinds:?}");
    let has_data = |v: &Value| v["data_hex"].as_str().is_some_and(|d| !d.is_empty());
    let up = ours.iter().any(|v| v["kind"] == "statement" && v["body"]["up_offset"].is_u64() && has_data(v));
    let down = ours.iter().any(|v| {
        let end = if v["kind"] == "statement" { &v["body"]["end"] } else { &v["body"] };
        ended(&v) && end["down_offset"].is_u64() && has_data(v)
    });
    assert!(up && down, "both streams folded on the statement records");
    let hex = |s: &str| s.bytes().map(|b| format!("{b:02x}")).collect::<String>();
    for secret in ["zoe@example.com", "4111111111111111"] {
        assert!(!records.contains(secret) && !records.contains(&hex(secret)), "{secret} never recorded");
    }
    assert!(
        records.contains(&hex("DROP TABLE victim")) || records.contains("DROP TABLE victim"),
        "the DROP is on record"
    );
    let (ok, vt) = {
        let o = w.env.gatehouse(&["verify", bundle.to_str().unwrap(), "--pubkey", &pubkey]);
        (o.status.success(), format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
    };
    assert!(ok, "{vt}");
}

#[test]
fn a_login_held_for_mariadbs_ed25519_plugin_logs_in_and_a_wrong_password_fails_clearly() {
    let mut env = Env::new("mysqled");
    let team = env.group("team");
    let ana = env.user("ana", &[&team]);
    let db = MariaServer::start(&env.dir, &loopback(42), free_port());
    db.admin(
        "INSTALL SONAME 'auth_ed25519';
         CREATE USER 'gh_ed'@'%' IDENTIFIED VIA ed25519 USING PASSWORD('ed-Secret-1');
         GRANT SELECT ON appdb.* TO 'gh_ed'@'%';",
    );
    let secret = gatehouse_e2e::pg::password_file(&env.dir, "ed.secret", "ed-Secret-1");
    let policy = format!(
        "[[backend]]\nname = \"shop\"\nprotocol = \"mysql\"\naddress = \"{}\"\ntls = \"off\"\n\
         credentials = {{ user = \"gh_ed\", password_file = \"{}\" }}\n\n\
         [[rule]]\nname = \"team reads\"\nwho = {{ groups = [\"{team}\"] }}\nbackend = \"shop\"\nstatements = [\"select\"]\n",
        db.addr(),
        secret.display()
    );
    let config = env.write_policy("policy.toml", &policy);
    env.start_agent(&config);
    let mariadb = |q: &str| mariadb_as(&env, &db, &ana, &["appdb", "-e", q]);
    let out = mariadb("SELECT CURRENT_USER()");
    let t = text(&out);
    assert!(out.status.success() && t.contains("gh_ed@%"), "{t}\n{}", env.agent_log());

    // The server checks the signature: a wrong password is refused, and the client is told why.
    gatehouse_e2e::pg::password_file(&env.dir, "ed.secret", "not-the-password");
    let out = mariadb("SELECT CURRENT_USER()");
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(t.contains("Gatehouse could not log in to backend shop as gh_ed") && t.contains("Access denied"), "{t}");
    assert!(db.general_log().contains("gh_ed"), "the server saw the login");
}

#[test]
fn the_recording_is_capped_per_statement_and_the_replay_says_where() {
    let mut env = Env::new("mysqlcap");
    let team = env.group("team");
    let ana = env.user("ana", &[&team]);
    let db = MariaServer::start(&env.dir, &loopback(43), free_port());
    db.admin(
        "USE appdb;
         CREATE TABLE appdb.items (id int PRIMARY KEY, name varchar(40));
         INSERT INTO appdb.items SELECT seq, CONCAT('item ', seq) FROM seq_1_to_100;",
    );
    let secret = gatehouse_e2e::pg::password_file(&env.dir, "app.secret", mysql::APP_PASSWORD);
    let policy = format!(
        "[agent]\nrecord_max_bytes = 1500\n\n[[backend]]\nname = \"shop\"\nprotocol = \"mysql\"\naddress = \"{}\"\ntls = \"off\"\n\
         credentials = {{ user = \"{}\", password_file = \"{}\" }}\n\n\
         [[rule]]\nname = \"team reads\"\nwho = {{ groups = [\"{team}\"] }}\nbackend = \"shop\"\nstatements = [\"select\"]\n",
        db.addr(),
        mysql::APP_USER,
        secret.display()
    );
    let config = env.write_policy("policy.toml", &policy);
    env.start_agent(&config);
    let out =
        mariadb_as(&env, &db, &ana, &["appdb", "-e", "SELECT id, name FROM items ORDER BY id; SELECT 'after' AS x"]);
    let t = text(&out);
    assert!(out.status.success() && t.contains("100\titem 100") && t.contains("after"), "the client got it all: {t}");
    let session = env.wait_session("ana's session", |s| s["user"] == ana.as_str());
    let ctl = env.control().display().to_string();
    let out = env.gatehouse(&["replay", session["id"].as_str().unwrap(), "--no-wait", "--control-socket", &ctl]);
    let r = String::from_utf8_lossy(&out.stdout);
    assert!(r.contains("|  1 | item 1  |"), "the start of the result is on record: {r}");
    assert!(!r.contains("item 100"), "not past the cap: {r}");
    assert!(r.contains("recording capped at 1500 bytes per statement (record_max_bytes)"), "{r}");
    assert!(r.contains("the backend returned 100 rows in all"), "{r}");
    // The next statement has a budget of its own.
    assert!(r.contains("| after |") && r.contains("1 row in set"), "{r}");
}

/// Long values cost memory while they pass, not after: sessions that read a
/// 15 MB value each and then sit idle hold none of it (before: each
/// connection's buffer kept the size of its largest packet).
#[test]
fn idle_sessions_give_back_the_memory_a_long_value_took() {
    let w = world("mybigmsg");
    let script = w.env.path("idle.py");
    std::fs::write(
        &script,
        r#"
import sys, pymysql
conns = []
for i in range(4):
    c = pymysql.connect(host=sys.argv[1], port=int(sys.argv[2]), user="whoever", password="", database="appdb")
    cur = c.cursor()
    cur.execute("SELECT REPEAT('x', 15000000)")
    print("read", len(cur.fetchone()[0]), flush=True)
    conns.append(c)
print("idle", flush=True)
sys.stdin.readline()
for c in conns:
    cur = c.cursor()
    cur.execute("SELECT 1")
    print("still", cur.fetchone()[0], flush=True)
"#,
    )
    .unwrap();
    let port = w.db.port.to_string();
    // Free memory goes back to the system within 100 ms of a session's last
    // large buffer; the audit store's page cache (16 MiB) may have grown with
    // the recorded results meanwhile.
    let run = w.env.idle_sessions_rss(&w.ana, &script, &[&w.db.host, &port], 40 * 1024);
    let reads = run.until_idle.iter().filter(|l| *l == "read 15000000").count();
    assert_eq!(reads, 4, "{run:?}\n{}", w.env.agent_log());
    assert!(run.idle < run.before + 40 * 1024, "agent RSS {} KiB before, {} KiB idle", run.before, run.idle);
    assert_eq!(run.after.matches("still 1").count(), 4, "the idle sessions are still served: {run:?}");
}

/// MySQL packets take from the budget large messages of all sessions share
/// (`[agent] large_message_budget`, here 4 MiB), as PostgreSQL messages do:
/// a 15 MB value past what is left ends its own session with ERR 1041 and a
/// recorded reason (before: no budget, so a user's many sessions each
/// reading a 16 MiB packet could hold gigabytes); a 1 MB value passes, and
/// the agent serves the next session.
#[test]
fn a_packet_past_the_shared_memory_budget_ends_its_session_with_err_1041() {
    let w = world_with("mybudget", "[agent]\nlarge_message_budget = 4194304\n");
    let short = |o: &Output| text(o).chars().take(600).collect::<String>();
    let o = w.mariadb(&w.ana, &["-e", "SELECT REPEAT('x', 15000000)"]);
    assert!(!o.status.success() && o.stdout.len() < 1_000_000, "the value passed: {}", short(&o));
    let t = short(&o);
    assert!(t.contains("ERROR 1041") && t.contains("server's message is larger than the agent can hold"), "{t}");
    assert!(t.contains("large_message_budget"), "{t}");
    let o = w.mariadb(&w.ana, &["-e", "SELECT REPEAT('z', 1000000)"]);
    assert!(o.status.success() && o.stdout.len() > 1_000_000, "a 1 MB value passes: {}", short(&o));
    // The agent's account of it: the session cut for the budget.
    w.env.wait_session("cut for the memory budget", |s| {
        s["end_reason"].as_str().is_some_and(|r| r.contains("memory budget"))
    });
    let o = w.mariadb(&w.ana, &["-e", "SELECT 'served'"]);
    assert!(text(&o).contains("served"), "{}", text(&o));
}

/// Views count as the tables they read (the server reads them with the
/// view's rights, and names the view, not the table, as its columns'
/// origin): `deny_tables` holds through a view, a masked session gets the
/// columns of a view over a table with masked columns hidden whole and may
/// not filter on them, even where the view renames them; a view made while
/// the agent runs counts from the first statement that names it.
#[test]
fn views_count_as_the_tables_they_read() {
    let w = world("mysqlviews");
    w.db.admin(
        "USE appdb;
         CREATE VIEW appdb.cards AS SELECT id, card, email FROM customers;
         CREATE VIEW appdb.cards2 AS SELECT id, card AS k FROM cards;",
    );
    let run = |user: &str, sql: &str| text(&w.mariadb(user, &["appdb", "-N", "-e", sql]));
    let secret = |out: &str| out.contains("4111111111111111") || out.contains("zoe@example.com");
    // Masked, directly and through a view of a view that renames the column.
    for (user, sql) in [
        (&w.sam, "SELECT card, email FROM cards"),
        (&w.sam, "SELECT k FROM cards2"),
        (&w.sam, "SELECT * FROM cards2"),
        (&w.lou, "SELECT card, email FROM cards"),
        (&w.lou, "SELECT CONCAT(k, '') FROM cards2"),
    ] {
        let out = run(user, sql);
        assert!(!secret(&out) && out.contains("****") && !out.contains("ERROR"), "{sql}: {out}\n{}", w.env.agent_log());
    }
    // The default profile refuses predicates on them; the server never sees the statement.
    for sql in [
        "SELECT id FROM cards2 WHERE k LIKE '4%' AND 'vw1' = 'vw1'",
        "SELECT id, 'vw2' FROM cards ORDER BY card",
        "SELECT COUNT(*), 'vw3' FROM cards WHERE email IS NOT NULL",
    ] {
        let out = run(&w.sam, sql);
        assert!(
            out.contains("ERROR 1227") && out.contains("masked columns of appdb.customers, read through a view"),
            "{sql}: {out}"
        );
    }
    // deny_tables holds through views.
    for sql in ["SELECT id, 'vw4' FROM cards", "SELECT k, 'vw5' FROM cards2"] {
        let out = run(&w.dan, sql);
        assert!(
            out.contains("ERROR 1227") && out.contains("appdb.customers is in its deny_tables (read through a view"),
            "{sql}: {out}"
        );
    }
    let log = w.db.general_log();
    for n in 1..=5 {
        assert!(!log.contains(&format!("vw{n}")), "the server ran refused statement vw{n}: {log}");
    }
    // A session whose results come in latin1 (which it may set) still has the
    // views' names as the server stores them (a view named outside ASCII).
    w.db.admin("CREATE VIEW appdb.`kärten` AS SELECT card FROM appdb.customers;");
    let out = text(&w.mariadb_script(
        &w.sam,
        &["appdb"],
        "SET character_set_results = latin1;\nSELECT card FROM `kärten`;\n",
    ));
    assert!(!secret(&out) && out.contains("****"), "{out}\n{}", w.env.agent_log());
    // Prepared statements (node mysql2's execute): masked at each execute, denied at the prepare.
    let queries = serde_json::json!([["SELECT id, k FROM cards2 WHERE id = ?", [1]], ["SELECT k FROM cards2", []]]);
    let out = w.node(&w.lou, &node_script(&queries));
    let lines = node_lines(&out);
    assert_eq!(lines.len(), 2, "{}\n{}", text(&out), w.env.agent_log());
    for l in &lines {
        let shown = l.to_string();
        assert!(l.get("rows").is_some() && shown.contains("****") && !secret(&shown), "{shown}");
    }
    let queries = serde_json::json!([["SELECT k, 'vw7' FROM cards2 WHERE id = ?", [1]]]);
    let lines = node_lines(&w.node(&w.dan, &node_script(&queries)));
    assert!(lines.first().is_some_and(|l| l["error"] == 1227), "{lines:?}");
    // A rule without masking or deny_tables reads the view as before.
    let out = run(&w.ana, "SELECT card FROM cards WHERE id = 1");
    assert_eq!(out.trim(), "4111111111111111", "{out}");
    // A view made outside Gatehouse while the agent runs (its list of views
    // was read by the sessions above) counts from the first statement naming it.
    w.db.admin("CREATE VIEW appdb.late AS SELECT card AS c FROM appdb.customers;");
    let out = run(&w.sam, "SELECT c FROM late");
    assert!(!secret(&out) && out.contains("****"), "{out}\n{}", w.env.agent_log());
    let out = run(&w.dan, "SELECT c, 'vw6' FROM late");
    assert!(out.contains("ERROR 1227") && out.contains("deny_tables"), "{out}");
    // A name looked up a moment ago is looked up again: a user polling a
    // name a DBA is about to create does not get past deny_tables through the
    // new view in the second after (dan's shell waits, mid-session, for it).
    let sync = w.env.path("sync");
    std::fs::create_dir(&sync).unwrap();
    std::fs::set_permissions(&sync, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let (go, made) = (sync.join("go"), sync.join("made"));
    // (The client reads `;` as the end of a statement even after `\!`: the shell's part is a file.)
    let wait = sync.join("wait.sh");
    std::fs::write(
        &wait,
        format!("touch {go}; while [ ! -e {made} ]; do sleep 0.01; done\n", go = go.display(), made = made.display()),
    )
    .unwrap();
    std::fs::set_permissions(&wait, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let script = format!("SELECT c, 'vw8' FROM soon;\n\\! sh {}\nSELECT c, 'vw9' FROM soon;\n", wait.display());
    let out = std::thread::scope(|scope| {
        let poll = scope.spawn(|| text(&w.mariadb_script(&w.dan, &["appdb"], &script)));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !go.exists() {
            assert!(std::time::Instant::now() < deadline, "dan's first statement did not come");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        w.db.admin("CREATE VIEW appdb.soon AS SELECT card AS c FROM appdb.customers;");
        std::fs::write(&made, "").unwrap();
        poll.join().unwrap()
    });
    assert!(out.contains("soon' doesn't exist"), "the first look: {out}");
    assert!(
        out.contains("ERROR 1227") && out.contains("deny_tables") && !secret(&out),
        "the view made a moment after a look: {out}"
    );
    let log = w.db.general_log();
    for n in 6..=7 {
        assert!(!log.contains(&format!("vw{n}")), "the server ran refused statement vw{n}: {log}");
    }
    assert!(!log.contains("vw9"), "the server ran refused statement vw9: {log}");
    // A name the server does not have (a common table expression's) costs
    // no read of the list: statements with one are not held to its budget.
    let script = "WITH t AS (SELECT id FROM items) SELECT COUNT(*) FROM t;\n".repeat(12);
    for user in [&w.sam, &w.dan] {
        let out = text(&w.mariadb_script(user, &["appdb"], &script));
        assert_eq!(out.lines().filter(|l| l.trim() == "100").count(), 12, "{user}: {out}");
    }
}

/// A database dropped is every table in it dropped: a rule that denies
/// `*.customers` refuses dropping a database (Gatehouse does not list a
/// database's tables, so any database), and the server keeps the table;
/// `SHOW CREATE TABLE` of a denied table is a read of it.
#[test]
fn dropping_a_database_counts_as_every_table_in_it() {
    let w = world("mydropdb");
    w.db.admin(&format!(
        "CREATE DATABASE scratch; CREATE TABLE scratch.customers (id int, card varchar(20));
         INSERT INTO scratch.customers VALUES (1, '4111111111111111');
         GRANT ALL ON scratch.* TO '{}'@'%';",
        mysql::APP_USER
    ));
    // And SHOW CREATE TABLE of a denied table reads it as SHOW COLUMNS does.
    for sql in ["DROP DATABASE scratch", "DROP SCHEMA IF EXISTS scratch", "SHOW CREATE TABLE customers"] {
        let out = text(&w.mariadb(&w.dan, &["appdb", "-N", "-e", sql]));
        assert!(out.contains("Gatehouse refused"), "{sql}: {out}\n{}", w.env.agent_log());
    }
    assert_eq!(w.db.admin("SELECT count(*) FROM scratch.customers").trim(), "1", "the database was dropped");
    assert!(!w.db.general_log().contains("DROP DATABASE"), "{}", w.db.general_log());
    // Dropping a table the rule does not name still works.
    w.db.admin("CREATE TABLE appdb.scratchpad (id int)");
    let out = text(&w.mariadb(&w.dan, &["appdb", "-N", "-e", "DROP TABLE scratchpad"]));
    assert!(!out.contains("ERROR"), "{out}\n{}", w.env.agent_log());
}
