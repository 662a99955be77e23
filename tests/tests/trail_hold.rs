//! The row-level trail's alerts acting, end to end: an `[[alert]]` with
//! `action = "hold"` turns the user's next statement (in any of their
//! sessions on that backend) into an approval request naming the alert —
//! approved it runs, denied it is refused and the session goes on, and a
//! rule without approvers refuses; a slow reader's window survives an
//! agent restart (rebuilt from the store); trail records written in
//! strict mode survive an agent killed right after its client finished.
//! Every outcome is checked on the server (rows in `notes`) and in the
//! audit store. Needs root.
#![expect(clippy::unwrap_used, reason = "test helpers panic with context on failure")]
#![expect(clippy::indexing_slicing, reason = "indexing serde_json values by key returns Null, it cannot panic")]

use std::path::{Path, PathBuf};
use std::process::{Child, Output};
use std::time::{Duration, Instant};

use gatehouse_e2e::pg::{self, PgServer};
use gatehouse_e2e::{Env, free_port, loopback};
use serde_json::Value;

/// Fields drop in order: the server stops before the test directory goes.
struct World {
    pg: PgServer,
    env: Env,
    config: PathBuf,
    /// A copy of the CLI other users may run.
    gatehouse: PathBuf,
    /// Staff (their rule has approvers).
    ann: String,
    sid: String,
    /// Temps (their rule has none).
    tom: String,
    /// An approver.
    lea: String,
}

const THRESHOLD: u64 = 150;

fn world(name: &str) -> World {
    let mut env = Env::new(name);
    let staff = env.group("staff");
    let temps = env.group("temps");
    let leads = env.group("leads");
    let ann = env.user("ann", &[&staff]);
    let sid = env.user("sid", &[&staff]);
    let tom = env.user("tom", &[&temps]);
    let lea = env.user("lea", &[&leads]);
    let pg = PgServer::start(&env.dir, &loopback(74), free_port(), "log_statement = 'all'\n");
    pg.admin_db(
        "appdb",
        &format!(
            "CREATE TABLE customers (id int PRIMARY KEY, name text);
             INSERT INTO customers SELECT g, 'name ' || g FROM generate_series(1, 1000) g;
             CREATE TABLE notes (id int, who text);
             CREATE TABLE line_items (order_id int, line_no int, what text, PRIMARY KEY (order_id, line_no));
             INSERT INTO line_items VALUES (7, 1, 'a'), (7, 2, 'b'), (8, 1, 'c');
             ALTER TABLE customers OWNER TO {app}; ALTER TABLE notes OWNER TO {app};
             ALTER TABLE line_items OWNER TO {app};",
            app = pg::APP_ROLE
        ),
    );
    let secret = pg::password_file(&env.dir, "appdb.secret", pg::APP_PASSWORD);
    let policy = format!(
        r#"
[[backend]]
name = "appdb"
protocol = "postgres"
address = "{addr}"
tls = "off"
credentials = {{ user = "{app}", password_file = "{s}" }}

[[approvers]]
name = "leads"
who = {{ groups = ["{leads}"] }}

[[rule]]
name = "staff"
who = {{ groups = ["{staff}"] }}
backend = "appdb"
statements = ["select", "insert"]
approval = {{ for = ["drop"], by = "leads", timeout = "60s" }}

[[rule]]
name = "temps"
who = {{ groups = ["{temps}"] }}
backend = "appdb"
statements = ["select", "insert"]

[[trail]]
table = "public.customers"

[[trail]]
table = "public.line_items"

[[alert]]
name = "vip-hold"
table = "public.customers"
keys = ["42"]
action = "hold"

[[alert]]
name = "slow"
table = "public.customers"
window = "30d"
threshold = {THRESHOLD}
"#,
        addr = pg.addr(),
        app = pg::APP_ROLE,
        s = secret.display(),
    );
    let config = env.write_policy("policy.toml", &policy);
    env.start_agent(&config);
    let gatehouse = env.path("gatehouse-cli");
    std::fs::copy(gatehouse_e2e::gatehouse_bin(), &gatehouse).unwrap();
    std::fs::set_permissions(&gatehouse, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    World { pg, env, config, gatehouse, ann, sid, tom, lea }
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

impl World {
    fn psql_args(&self, commands: &[&str]) -> Vec<String> {
        let port = self.pg.port.to_string();
        let mut args: Vec<String> = ["-h", &self.pg.host, "-p", &port, "-U", "x", "-d", "appdb", "-X", "-A", "-t"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        for c in commands {
            args.extend(["-c".to_owned(), (*c).to_owned()]);
        }
        args
    }

    fn psql(&self, user: &str, commands: &[&str]) -> Output {
        let args = self.psql_args(commands);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        self.env.run_as(user, None, Path::new("/usr/bin/psql"), &refs)
    }

    /// psql in the background, stdout and stderr captured.
    fn psql_spawn(&self, user: &str, commands: &[&str]) -> Child {
        let mut cmd = std::process::Command::new("sh");
        cmd.arg("-c")
            .arg("echo $$ > \"$0/cgroup.procs\" && exec \"$@\"")
            .arg(&self.env.cgroup)
            .args(["setpriv", "--reuid", user, "--regid", user, "--init-groups", "--", "/usr/bin/psql"])
            .args(self.psql_args(commands))
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

    /// Waits for a pending request whose subject contains `what`; returns it.
    fn pending(&self, what: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let o = self.cli(&self.lea, &["requests", "--json"]);
            assert!(o.status.success(), "{}", text(&o));
            let found = String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(|l| serde_json::from_str::<Value>(l).unwrap())
                .find(|r| r["state"]["state"] == "pending" && r["subject"].to_string().contains(what));
            if let Some(r) = found {
                return r;
            }
            assert!(Instant::now() < deadline, "no pending request for {what:?}:\n{}", self.env.agent_log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn decide(&self, verb: &str, id: u64) {
        let o = self.cli(&self.lea, &[verb, &id.to_string(), "--reason", "checked with the customer"]);
        assert!(o.status.success(), "{verb} {id}: {}", text(&o));
    }

    /// The ids in `notes`, as the server has them.
    fn notes(&self) -> String {
        self.pg.admin_db("appdb", "SELECT coalesce(string_agg(id::text, ',' ORDER BY id), '') FROM notes")
    }

    fn events(&self, kind: &str) -> Vec<Value> {
        gatehouse_e2e::settle(&self.env.db());
        let conn =
            rusqlite::Connection::open_with_flags(self.env.db(), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        let mut st = conn.prepare("SELECT body FROM events WHERE kind = ?1 ORDER BY seq").unwrap();
        let rows = st.query_map([kind], |r| r.get::<_, Vec<u8>>(0)).unwrap();
        rows.map(|b| serde_json::from_slice(&b.unwrap()).unwrap()).collect()
    }

    /// The records of `kind` once at least `n` are in the store. Strict
    /// records are acknowledged from the journal and reach SQLite (which this
    /// reads) a little later, so a client can be done before they are there.
    fn events_at_least(&self, kind: &str, n: usize) -> Vec<Value> {
        let start = Instant::now();
        loop {
            let v = self.events(kind);
            if v.len() >= n || start.elapsed() > Duration::from_secs(10) {
                return v;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
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
fn a_hold_alert_makes_the_next_statement_wait_for_an_approval() {
    let w = world("trhold");
    let log = || w.env.agent_log();

    // ann reads the listed key: the answer arrives, and the alert stands for her on appdb.
    let o = w.psql(&w.ann, &["SELECT id, name FROM customers WHERE id BETWEEN 40 AND 45"]);
    assert!(o.status.success() && text(&o).contains("42|name 42"), "{}", text(&o));

    // Her next statement, in another session, waits for an approver; nothing reaches the server meanwhile.
    let held = w.psql_spawn(&w.ann, &["INSERT INTO notes VALUES (1, 'after the alert')"]);
    let req = w.pending("VALUES (1,");
    assert!(
        req["reason"].as_str().unwrap_or_default().contains("alert `vip-hold`"),
        "the request names the alert: {req:#}"
    );
    assert_eq!(req["approvers"], "leads", "{req:#}");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(w.notes(), "", "the held INSERT did not run before the approval");
    assert!(!w.pg.log().contains("VALUES (1, 'after the alert')"), "the server never saw it");
    w.decide("approve", req["id"].as_u64().unwrap());
    let o = wait_output(held, Duration::from_secs(20));
    assert!(o.status.success(), "{}\n{}", text(&o), log());
    assert!(text(&o).contains("holding this statement for approval") && text(&o).contains("vip-hold"), "{}", text(&o));
    assert_eq!(w.notes(), "1", "approved: it ran");

    // Approved, the hold is lifted: her statements run at once again.
    let o = w.psql(&w.ann, &["INSERT INTO notes VALUES (2, 'free again')"]);
    assert!(o.status.success() && !text(&o).contains("holding"), "{}", text(&o));
    assert_eq!(w.notes(), "1,2");

    // In one session: the key read again, the next statement denied (refused, 42501), the session
    // goes on, and its next statement is held again (the hold stands until an approval), approved.
    let session = w.psql_spawn(
        &w.ann,
        &[
            "SELECT id, name FROM customers WHERE id = 42",
            "INSERT INTO notes VALUES (3, 'denied')",
            "INSERT INTO notes VALUES (4, 'approved')",
        ],
    );
    let denied = w.pending("VALUES (3,");
    w.decide("deny", denied["id"].as_u64().unwrap());
    let approved = w.pending("VALUES (4,");
    assert_eq!(w.notes(), "1,2", "neither ran yet");
    w.decide("approve", approved["id"].as_u64().unwrap());
    let o = wait_output(session, Duration::from_secs(20));
    let t = text(&o);
    assert!(t.contains("denied by") && t.contains("checked with the customer"), "the denial reached the client: {t}");
    assert_eq!(w.notes(), "1,2,4", "the denied INSERT never ran, the approved one did:\n{t}");
    assert!(!w.pg.log().contains("VALUES (3, 'denied')"), "the server never saw the denied one");

    // A rule without approvers: the statement after the alert is refused, saying why.
    let o = w.psql(
        &w.tom,
        &["SELECT id, name FROM customers WHERE id = 42", "INSERT INTO notes VALUES (5, 'nobody to ask')"],
    );
    let t = text(&o);
    assert!(t.contains("name 42"), "{t}");
    assert!(t.contains("42501") || t.contains("names no approvers"), "{t}");
    assert!(t.contains("alert `vip-hold`") && t.contains("names no approvers"), "{t}\n{}", log());
    assert_eq!(w.notes(), "1,2,4", "tom's INSERT did not run");

    // On record: the alerts (one per read of key 42), the approval steps with the alert as reason.
    let alerts = w.events_at_least("trail_alert", 3);
    assert_eq!(alerts.iter().filter(|a| a["rule"] == "vip-hold" && a["action"] == "hold").count(), 3, "{alerts:#?}");
    let start = Instant::now();
    let steps = loop {
        let steps = w.events("approval");
        if steps.iter().filter(|s| s["event"] == "requested").count() >= 3 || start.elapsed() > Duration::from_secs(10)
        {
            break steps;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let requested: Vec<&Value> = steps.iter().filter(|s| s["event"] == "requested").collect();
    assert_eq!(requested.len(), 3, "{steps:#?}");
    assert!(requested.iter().all(|s| s["request"]["reason"].as_str().unwrap_or_default().contains("vip-hold")));
}

#[test]
fn alert_windows_survive_a_restart_and_trail_records_survive_a_kill() {
    let mut w = world("trwin");

    // A composite primary key: each row's (order_id, line_no) is one key, asked for as "7,2".
    let o = w.psql(&w.sid, &["SELECT line_no, order_id, what FROM line_items WHERE order_id = 7"]);
    assert!(o.status.success() && text(&o).contains("2|7|b"), "{}", text(&o));
    let ctl = w.env.control().display().to_string();
    for (key, want) in [("7,2", 1), ("7,1", 1), ("8,1", 0), ("7", 0)] {
        let o =
            w.env.gatehouse(&["who-saw", "--table", "line_items", "--key", key, "--json", "--control-socket", &ctl]);
        assert!(o.status.success(), "{}", text(&o));
        let rows = String::from_utf8_lossy(&o.stdout).lines().filter(|l| l.starts_with('{')).count();
        assert_eq!(rows, want, "who-saw --key {key}: {}", text(&o));
    }

    // sid reads 140 distinct rows over two sessions: under the threshold (150).
    for q in [
        "SELECT id FROM customers WHERE id BETWEEN 101 AND 200",
        "SELECT id FROM customers WHERE id BETWEEN 161 AND 240",
    ] {
        let o = w.psql(&w.sid, &[q]);
        assert!(o.status.success(), "{}", text(&o));
    }
    assert!(w.events("trail_alert").is_empty());

    // The agent restarts; sid comes back for 20 more rows: 160 within the window, one alert.
    assert!(w.env.signal_agent("TERM").success());
    let config = w.config.clone();
    w.env.start_agent(&config);
    assert_eq!(
        w.env.agent_log().matches("alert windows rebuilt from the audit store").count(),
        2,
        "rebuilt at each start:\n{}",
        w.env.agent_log()
    );
    let o = w.psql(&w.sid, &["SELECT id FROM customers WHERE id BETWEEN 241 AND 260"]);
    assert!(o.status.success(), "{}", text(&o));
    let alerts = w.events_at_least("trail_alert", 1);
    let slow: Vec<&Value> = alerts.iter().filter(|a| a["rule"] == "slow").collect();
    assert_eq!(slow.len(), 1, "sid crossed the threshold across the restart: {alerts:#?}\n{}", w.env.agent_log());
    assert_eq!(slow[0]["distinct"], 160);
    assert_eq!(slow[0]["user"], w.sid.as_str());

    // A burst of statements in strict mode (the default), the agent killed as soon as the client
    // has its answers: every statement's trail record is in the store once the journal is replayed.
    let burst: Vec<String> = (0..300).map(|i| format!("SELECT id FROM customers WHERE id = {}", 300 + i)).collect();
    let o = w.psql(&w.sid, &[&burst.join("; ")]);
    assert!(o.status.success(), "{}", text(&o));
    w.env.signal_agent("KILL");
    w.env.start_agent(&config);
    gatehouse_e2e::settle(&w.env.db());
    let conn = rusqlite::Connection::open_with_flags(w.env.db(), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let (records, indexed): (i64, i64) = conn
        .query_row(
            "SELECT (SELECT count(*) FROM events WHERE kind = 'trail' AND body LIKE '%\"keys\":1,%'),
                    (SELECT count(*) FROM trail WHERE keys = 1)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((records, indexed), (300, 300), "one trail record per statement, each indexed\n{}", w.env.agent_log());
    drop(conn);
    // The store verifies (the trail index rebuilt from the chain matches, journal replay included).
    let pubkey = w.env.status()["public_key"].as_str().unwrap_or_default().to_owned();
    assert!(w.env.signal_agent("TERM").success());
    let o = w.env.gatehouse(&["verify", &w.env.db().display().to_string(), "--pubkey", &pubkey]);
    assert!(o.status.success(), "{}", text(&o));
}
