//! The row-level access trail end to end: a real PostgreSQL with 300,000
//! customers, psql, psycopg 3 and asyncpg sessions by several users reading
//! overlapping ranges (by key, by a filter without the key, through a join
//! under an alias, by COPY, binary results); `who-saw` must list exactly the
//! statements whose client received the row (computed from what each client
//! printed), `access-report` the distinct rows per user; a slow reader
//! crossing a 30-day threshold over several sessions raises one alert, a
//! listed key with `action = "cut"` ends the session after its answer;
//! `verify` catches a tampered trail record and a tampered trail index.
//! Needs root.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use gatehouse_e2e::pg::{self, PgServer};
use gatehouse_e2e::{Env, free_port, gatehouse_bin, loopback};
use serde_json::Value;

/// Fields drop in order: the server stops before the test directory goes.
struct World {
    pg: PgServer,
    env: Env,
}

const CUSTOMERS: i64 = 300_000;
const THRESHOLD: u64 = 250;
const VIP: i64 = 77;

fn world() -> (World, BTreeMap<&'static str, String>) {
    let mut env = Env::new("trail");
    let staff = env.group("staff");
    let support = env.group("support");
    let auditors = env.group("auditors");
    let mut users = BTreeMap::new();
    for name in ["ann", "cat", "sid", "eve"] {
        users.insert(name, env.user(name, &[&staff]));
    }
    users.insert("bob", env.user("bob", &[&support]));
    users.insert("aud", env.user("aud", &[&auditors]));
    let pg = PgServer::start(&env.dir, &loopback(80), free_port(), "");
    pg.admin_db(
        "appdb",
        &format!(
            "CREATE TABLE customers (id int PRIMARY KEY, name text, email text, region int);
             INSERT INTO customers SELECT g, 'name ' || g, 'user' || g || '@example.com', g % 10
               FROM generate_series(1, {CUSTOMERS}) g;
             CREATE TABLE orders (id int PRIMARY KEY, customer_id int, total numeric);
             INSERT INTO orders VALUES (1, 42, 10), (2, 150, 20), (3, 5000, 30), (4, 42, 40);
             CREATE TABLE accounts (id int PRIMARY KEY, note text) PARTITION BY RANGE (id);
             CREATE TABLE accounts_low PARTITION OF accounts FOR VALUES FROM (0) TO (1000);
             INSERT INTO accounts VALUES (7, 'seven'), (8, 'eight');
             ALTER TABLE customers OWNER TO {app}; ALTER TABLE orders OWNER TO {app};
             ALTER TABLE accounts OWNER TO {app}; ALTER TABLE accounts_low OWNER TO {app};",
            app = pg::APP_ROLE
        ),
    );
    let secret = pg::password_file(&env.dir, "appdb.secret", pg::APP_PASSWORD);
    // Alerts are announced to a local command (root's, like the agent).
    let hook = env.path("alert.sh");
    let heard = env.path("alerts.jsonl");
    std::fs::write(&hook, format!("#!/bin/sh\ncat >> {h}\necho >> {h}\n", h = heard.display()))
        .unwrap_or_else(|e| panic!("write {}: {e}", hook.display()));
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", hook.display()));
    let policy = format!(
        r#"
[agent]
auditor_group = "{auditors}"

[[backend]]
name = "appdb"
protocol = "postgres"
address = "{addr}"
tls = "off"
credentials = {{ user = "{app}", password_file = "{s}" }}

[[mask]]
name = "pii"
columns = [{{ column = "customers.email", style = "partial" }}]

[[rule]]
name = "staff"
who = {{ groups = ["{staff}"] }}
backend = "appdb"
statements = ["select", "copy_to"]

[[rule]]
name = "support masked"
who = {{ groups = ["{support}"] }}
backend = "appdb"
statements = ["select"]
mask = "pii"

[[notify]]
name = "alerts"
command = ["{hook}"]
events = ["trail_alert"]

[[trail]]
table = "public.customers"

[[trail]]
table = "public.accounts"

[[alert]]
name = "bulk-readers"
table = "public.customers"
window = "30d"
threshold = {THRESHOLD}

[[alert]]
name = "vip"
table = "customers"
keys = ["{VIP}"]
action = "cut"
"#,
        addr = pg.addr(),
        app = pg::APP_ROLE,
        s = secret.display(),
        hook = hook.display(),
    );
    let config = env.write_policy("policy.toml", &policy);
    env.start_agent(&config);
    (World { pg, env }, users)
}

impl World {
    fn psql(&self, user: &str, commands: &[&str]) -> (bool, String) {
        let port = self.pg.port.to_string();
        let mut args =
            vec!["-h", &self.pg.host, "-p", &port, "-d", "appdb", "-U", "x", "-X", "-q", "-A", "-t", "-F", "|"];
        for c in commands {
            args.extend(["-c", c]);
        }
        let out = self.env.run_as(user, None, Path::new("/usr/bin/psql"), &args);
        (
            out.status.success(),
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        )
    }

    fn python(&self, user: &str, file: &str, script: &str) -> String {
        let p = self.env.path(file);
        std::fs::write(&p, script).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        let port = self.pg.port.to_string();
        let out = self.env.run_as(
            user,
            None,
            Path::new("/usr/bin/python3"),
            &[&p.display().to_string(), &self.pg.host, &port],
        );
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "{file}: {text}\n{}", self.env.agent_log());
        text
    }

    fn gh(&self, user: Option<&str>, args: &[&str]) -> (bool, String) {
        let out = match user {
            None => gh_root_output(args),
            Some(u) => self.env.run_as(u, None, &gatehouse_bin(), args),
        };
        (
            out.status.success(),
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        )
    }

    fn who_saw(&self, key: i64) -> Vec<Value> {
        let ctl = self.env.control().display().to_string();
        let key = key.to_string();
        let (ok, out) =
            self.gh(None, &["who-saw", "--table", "customers", "--key", &key, "--json", "--control-socket", &ctl]);
        assert!(ok, "who-saw: {out}");
        out.lines()
            .filter(|l| l.starts_with('{'))
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("who-saw line {l}: {e}")))
            .collect()
    }
}

/// The first `|`-separated field of every line that is a number: the ids a client printed.
fn ids(out: &str, field: usize) -> BTreeSet<i64> {
    out.lines().filter_map(|l| l.split(['|', '\t']).nth(field)?.trim().parse().ok()).collect()
}

const PSYCOPG: &str = r#"
import sys, psycopg
conn = psycopg.connect(host=sys.argv[1], port=sys.argv[2], dbname="appdb", user="x", autocommit=True)
def show(label, rows):
    for r in rows:
        print(label + "|" + "|".join("NULL" if v is None else str(v) for v in r), flush=True)
show("bob_any", conn.execute("SELECT id, email AS q_bob_any FROM customers WHERE id = ANY(%s)", ([42, 150, 1000],)).fetchall())
show("bob_join", conn.execute("SELECT c.id AS q_bob_join, o.total FROM customers c JOIN orders o ON o.customer_id = c.id ORDER BY o.id").fetchall())
show("bob_filter", conn.execute("SELECT name AS q_bob_filter FROM customers WHERE id BETWEEN 300 AND 310").fetchall())
"#;

const ASYNCPG: &str = r#"
import sys, asyncio, asyncpg
async def main():
    conn = await asyncpg.connect(host=sys.argv[1], port=int(sys.argv[2]), user="x", database="appdb")
    for lo, hi in ((150, 160), (5000, 5003)):
        for r in await conn.fetch("SELECT id AS q_cat_range, name FROM customers WHERE id >= $1 AND id < $2", lo, hi):
            print("cat_range|%d|%s" % (r[0], r[1]), flush=True)
    for r in await conn.fetch("SELECT id::text AS q_cat_text FROM customers WHERE id = 42"):
        print("cat_text|%s" % r[0], flush=True)
    await conn.close()
asyncio.run(main())
"#;

/// Which query a recorded statement text is, by the marker in it.
fn label_of(text: &str) -> String {
    if text.starts_with("COPY customers") {
        return "ann_copy".into();
    }
    match text.find("q_") {
        Some(i) => text[i + 2..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect(),
        None => format!("unknown: {text}"),
    }
}

#[test]
fn who_saw_lists_exactly_the_statements_that_returned_the_row() {
    let (w, users) = world();
    let log = || w.env.agent_log();
    // label → ids the client received.
    let mut got: BTreeMap<String, BTreeSet<i64>> = BTreeMap::new();

    let (ok, out) =
        w.psql(&users["ann"], &["SELECT id, name AS q_ann_range FROM customers WHERE id BETWEEN 100 AND 199"]);
    assert!(ok, "{out}\n{}", log());
    got.insert("ann_range".into(), ids(&out, 0));
    assert_eq!(got["ann_range"].len(), 100);
    let (ok, out) = w.psql(&users["ann"], &["SELECT count(*) AS q_ann_agg FROM customers WHERE region = 3"]);
    assert!(ok && out.trim() == "30000", "{out}");
    let (ok, out) = w.psql(&users["ann"], &["COPY customers (id, name) TO STDOUT"]);
    assert!(ok, "{out}");
    got.insert("ann_copy".into(), ids(&out, 0));
    assert_eq!(got["ann_copy"].len(), usize::try_from(CUSTOMERS).unwrap(), "ann's COPY returned every row");

    let out = w.python(&users["bob"], "bob.py", PSYCOPG);
    for label in ["bob_any", "bob_join"] {
        let mine: String =
            out.lines().filter(|l| l.starts_with(&format!("{label}|"))).map(|l| format!("{l}\n")).collect();
        got.insert(label.into(), ids(&mine, 1));
    }
    assert_eq!(got["bob_any"], BTreeSet::from([42, 150, 1000]), "{out}");
    assert_eq!(got["bob_join"], BTreeSet::from([42, 150, 5000]), "{out}");
    assert!(out.contains("****@example.com") && !out.contains("user42@example.com"), "bob's e-mails are masked: {out}");
    assert_eq!(out.lines().filter(|l| l.starts_with("bob_filter|")).count(), 11);

    let out = w.python(&users["cat"], "cat.py", ASYNCPG);
    let mine: String = out.lines().filter(|l| l.starts_with("cat_range|")).map(|l| format!("{l}\n")).collect();
    got.insert("cat_range".into(), ids(&mine, 1));
    assert_eq!(got["cat_range"].len(), 13, "{out}");
    assert!(out.contains("cat_text|42"), "{out}");

    // The slow reader: 100 new rows per session; the third session crosses 250.
    for (i, lo) in [2000, 2100, 2200, 2300].iter().enumerate() {
        let hi = lo + if i == 3 { 49 } else { 99 };
        let q = format!("SELECT id AS q_sid_{i}, name FROM customers WHERE id BETWEEN {lo} AND {hi}");
        let (ok, out) = w.psql(&users["sid"], &[&q]);
        assert!(ok, "{out}");
        got.insert(format!("sid_{i}"), ids(&out, 0));
    }

    // A listed key with action = "cut": the answer arrives, then the session ends.
    let (ok, out) = w.psql(
        &users["eve"],
        &["SELECT id AS q_eve_vip, name FROM customers WHERE id BETWEEN 70 AND 80", "SELECT 1 AS after_the_alert"],
    );
    assert!(!ok, "the session is cut after the alert: {out}");
    got.insert("eve_vip".into(), ids(&out, 0));
    assert_eq!(got["eve_vip"].len(), 11, "the statement's rows reached the client before the cut: {out}");
    let eve = w.env.wait_session("eve's", |s| s["user"] == users["eve"].as_str());
    assert!(eve["end_reason"].as_str().unwrap_or_default().contains("alert `vip`"), "{eve:#}\n{}", log());

    // A partition holds its trailed parent's rows: reading it is on the parent's trail.
    let (ok, out) = w.psql(&users["ann"], &["SELECT note, id AS q_ann_part FROM accounts_low WHERE id = 7"]);
    assert!(ok && out.trim() == "seven|7", "{out}\n{}", log());

    // Everything recorded: wait for the last sessions to close and the writer to commit.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let ctl = w.env.control().display().to_string();
    for (key, want) in [("7", 1), ("8", 0)] {
        let (ok, out) =
            w.gh(None, &["who-saw", "--table", "accounts", "--key", key, "--json", "--control-socket", &ctl]);
        let rows: Vec<&str> = out.lines().filter(|l| l.starts_with('{')).collect();
        assert!(ok && rows.len() == want, "who-saw accounts {key}: {out}\n{}", log());
        assert!(rows.iter().all(|r| r.contains("q_ann_part")), "{out}");
    }

    for key in [42, 150, 155, 305, 1000, 2050, 5001, VIP, 299_999, 999_999] {
        let mut want: Vec<String> = got.iter().filter(|(_, v)| v.contains(&key)).map(|(l, _)| l.clone()).collect();
        want.sort();
        let rows = w.who_saw(key);
        let mut have: Vec<String> = rows.iter().map(|r| label_of(r["text"].as_str().unwrap_or_default())).collect();
        have.sort();
        assert_eq!(have, want, "who-saw --key {key}: {rows:#?}\n{}", log());
        for r in &rows {
            let label = label_of(r["text"].as_str().unwrap_or_default());
            let owner = label.split('_').next().unwrap();
            assert_eq!(r["user"], users[owner].as_str(), "{r:#}");
            assert!(r["pid"].as_u64().is_some() && r["comm"].is_string(), "the process is named: {r:#}");
            assert_eq!(r["masked"], label.starts_with("bob_any"), "only bob's e-mails were masked: {r:#}");
        }
    }

    // Keyless reads are on record: the aggregate, bob's filter, cat's cast of the key.
    gatehouse_e2e::settle(&w.env.db());
    let conn = rusqlite::Connection::open_with_flags(w.env.db(), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let keyless: Vec<(String, i64)> = conn
        .prepare("SELECT st.text, t.rows FROM trail t JOIN statements st ON st.session_id = t.session_id AND st.seq = t.stmt WHERE t.key_column IS NULL")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let mut labels: Vec<(String, i64)> = keyless.iter().map(|(t, n)| (label_of(t), *n)).collect();
    labels.sort();
    assert_eq!(
        labels,
        vec![("ann_agg".into(), 1), ("bob_filter".into(), 11), ("cat_text".into(), 1)],
        "keyless reads: {keyless:?}"
    );

    // One alert per crossing of the threshold, per user: from what each user received.
    let mut per_user: BTreeMap<&str, BTreeSet<i64>> = BTreeMap::new();
    for (label, v) in &got {
        per_user.entry(label.split('_').next().unwrap()).or_default().extend(v);
    }
    let mut want_bulk: Vec<String> =
        per_user.iter().filter(|(_, v)| v.len() as u64 > THRESHOLD).map(|(u, _)| users[u].clone()).collect();
    want_bulk.sort();
    assert_eq!(want_bulk, vec![users["ann"].clone(), users["sid"].clone()]);
    let alerts: Vec<Value> = conn
        .prepare("SELECT body FROM events WHERE kind = 'trail_alert' ORDER BY seq")
        .unwrap()
        .query_map([], |r| r.get::<_, Vec<u8>>(0))
        .unwrap()
        .map(|b| serde_json::from_slice(&b.unwrap()).unwrap())
        .collect();
    let mut bulk: Vec<String> =
        alerts.iter().filter(|a| a["rule"] == "bulk-readers").map(|a| a["user"].as_str().unwrap().to_owned()).collect();
    bulk.sort();
    assert_eq!(bulk, want_bulk, "{alerts:#?}");
    let sid = alerts.iter().find(|a| a["rule"] == "bulk-readers" && a["user"] == users["sid"].as_str()).unwrap();
    assert_eq!(sid["distinct"], 300, "sid crossed at the third session: {sid:#}");
    let vip: Vec<&str> = alerts.iter().filter(|a| a["rule"] == "vip").map(|a| a["user"].as_str().unwrap()).collect();
    assert_eq!(vip.len(), got.values().filter(|v| v.contains(&VIP)).count(), "{alerts:#?}");
    assert!(log().contains("TRAIL ALERT"), "alerts are logged");
    // …and announced, once each.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let heard = loop {
        let text = std::fs::read_to_string(w.env.path("alerts.jsonl")).unwrap_or_default();
        // One write per announcement; two running at once may share a line.
        let heard: Vec<Value> =
            serde_json::Deserializer::from_str(&text).into_iter::<Value>().map(|v| v.unwrap()).collect();
        if heard.len() >= alerts.len() || std::time::Instant::now() > deadline {
            break heard;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(heard.len(), alerts.len(), "{heard:#?}");
    assert!(heard.iter().all(|h| h["event"] == "trail_alert" && h["text"].as_str().unwrap().contains("alert `")));

    // access-report: distinct rows per user.
    let ctl = w.env.control().display().to_string();
    let (ok, out) = w.gh(None, &["access-report", "--table", "public.customers", "--json", "--control-socket", &ctl]);
    assert!(ok, "{out}");
    let report: BTreeMap<String, Value> = out
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .map(|v| (v["user"].as_str().unwrap().to_owned(), v))
        .collect();
    for (u, v) in &per_user {
        assert_eq!(report[&users[u]]["distinct_rows"], v.len(), "{u}: {report:#?}");
    }
    assert_eq!(report[&users["bob"]]["keyless_reads"], 1);

    // Only root and the auditor group may ask.
    let (ok, out) =
        w.gh(Some(&users["bob"]), &["who-saw", "--table", "customers", "--key", "42", "--control-socket", &ctl]);
    assert!(!ok && out.contains("permission denied"), "{out}");
    let (ok, out) = w.gh(
        Some(&users["aud"]),
        &["who-saw", "--table", "customers", "--key", "42", "--json", "--control-socket", &ctl],
    );
    assert!(ok && out.lines().filter(|l| l.starts_with('{')).count() == 3, "an auditor may: {out}");

    // verify: the store as written verifies; a tampered trail record or index does not.
    let pubkey = w.env.status()["public_key"].as_str().unwrap_or_default().to_owned();
    drop(conn);
    let mut env = w.env;
    assert!(env.signal_agent("TERM").success());
    let db = env.db().display().to_string();
    let (ok, out) = gh_root(&["verify", &db, "--pubkey", &pubkey]);
    assert!(ok, "{out}");
    for (name, sql, expect) in [
        (
            "record",
            "UPDATE events SET data = (SELECT data FROM events WHERE kind = 'trail' ORDER BY seq LIMIT 1)
             WHERE seq = (SELECT max(seq) FROM events WHERE kind = 'trail' AND length(data) > 20);",
            "was changed",
        ),
        ("index", "DELETE FROM trail_buckets WHERE bucket = 0;", "trail_buckets table does not match"),
    ] {
        let copy = env.path(&format!("tampered-{name}.db"));
        std::fs::copy(env.db(), &copy).unwrap();
        let out = Command::new("python3")
            .args([
                "-c",
                "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.executescript(sys.argv[2]); c.commit()",
            ])
            .arg(&copy)
            .arg(sql)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let (ok, out) = gh_root(&["verify", &copy.display().to_string(), "--pubkey", &pubkey]);
        assert!(!ok && out.contains(expect), "{name}: {out}");
    }

    // Export: trail records and alerts are in the bundle (JSONL with the key sets, OCSF); it verifies until edited.
    let bundle = env.path("bundle");
    let (ok, out) = gh_root(&["export", "--db", &db, "--format", "ocsf", "--out", bundle.to_str().unwrap()]);
    assert!(ok, "{out}");
    let records = std::fs::read_to_string(bundle.join("records.jsonl")).unwrap();
    let trail_records = records.lines().filter(|l| l.contains("\"kind\":\"trail\"")).count();
    let ocsf = std::fs::read_to_string(bundle.join("ocsf.jsonl")).unwrap();
    assert!(trail_records >= 12, "{trail_records} trail records exported");
    assert_eq!(ocsf.lines().filter(|l| l.contains("\"gatehouse_trail\"")).count(), trail_records);
    assert_eq!(ocsf.lines().filter(|l| l.contains("\"class_uid\":2004")).count(), alerts.len());
    let (ok, out) = gh_root(&["verify", bundle.to_str().unwrap(), "--pubkey", &pubkey]);
    assert!(ok, "{out}");
    let forged = records.replacen("\"keys\":3,", "\"keys\":2,", 1);
    assert_ne!(forged, records, "bob's ANY(…) read is in the export");
    std::fs::write(bundle.join("records.jsonl"), forged).unwrap();
    let (ok, out) = gh_root(&["verify", bundle.to_str().unwrap(), "--pubkey", &pubkey]);
    assert!(!ok && out.contains("TAMPERED"), "{out}");
    drop(w.pg);
}

fn gh_root_output(args: &[&str]) -> std::process::Output {
    Command::new(gatehouse_bin()).args(args).output().unwrap_or_else(|e| panic!("gatehouse {args:?}: {e}"))
}

fn gh_root(args: &[&str]) -> (bool, String) {
    let out = gh_root_output(args);
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}
