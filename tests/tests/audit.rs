//! The audit store end to end: tamper evidence (`gatehouse verify`), strict
//! recording when the disk fills up, and a SIGKILLed agent under load.
//! Needs root.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use gatehouse_e2e::pg::{self, PgServer};
use gatehouse_e2e::{EchoServer, Env, free_port, loopback};
use serde_json::Value;

fn tcp_policy(addr: &str, group: &str, extra_agent: &str) -> String {
    format!(
        "[agent]\n{extra_agent}\n\n[[backend]]\nname = \"echo\"\nprotocol = \"tcp\"\naddress = \"{addr}\"\n\n\
         [[rule]]\nname = \"team\"\nwho = {{ groups = [\"{group}\"] }}\nbackend = \"echo\"\n"
    )
}

fn verify(env: &Env, db: &Path, extra: &[&str]) -> (bool, String) {
    let mut args = vec!["verify".to_owned(), db.display().to_string()];
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = env.gatehouse(&refs);
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// Runs SQL against a copy of the store (python3's sqlite3; no trigger stops it).
fn tamper(db: &Path, sql: &str) {
    let out = Command::new("python3")
        .args(["-c", "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.executescript(sys.argv[2]); c.commit()"])
        .arg(db)
        .arg(sql)
        .output()
        .unwrap_or_else(|e| panic!("python3: {e}"));
    assert!(out.status.success(), "tamper {sql}: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn verify_finds_every_kind_of_tampering() {
    let mut env = Env::new("verify");
    let team = env.group("team");
    let ana = env.user("ana", &[&team]);
    let echo = EchoServer::start(&format!("{}:0", loopback(70)));
    let addr = echo.addr.to_string();
    let config = env.write_policy("policy.toml", &tcp_policy(&addr, &team, "checkpoint_interval = \"1s\""));
    env.start_agent(&config);
    for _ in 0..3 {
        assert_eq!(env.probe(&ana, &["echo", &addr, "3000"])["ok"], true);
    }
    let status = env.status();
    let pubkey = status["public_key"].as_str().map(str::to_owned).unwrap_or_default();
    assert_eq!(pubkey.len(), 64, "{status:#}");
    // A clean stop writes a final signed checkpoint.
    assert!(env.signal_agent("TERM").success());

    let (ok, out) = verify(&env, &env.db(), &["--pubkey", &pubkey]);
    assert!(ok, "an untouched store verifies: {out}");
    assert!(out.contains("checkpoints") && !out.contains("(0 verified)"), "{out}");
    let other_key = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
    let (ok, out) = verify(&env, &env.db(), &["--pubkey", other_key]);
    assert!(!ok && out.contains("not a trusted key"), "a different key must not verify: {out}");

    let cases: [(&str, &str, &str); 6] = [
        (
            "edit",
            "UPDATE events SET body = replace(body, 'allow', 'deny') WHERE kind = 'session_open' AND seq = (SELECT min(seq) FROM events WHERE kind = 'session_open');",
            "was changed",
        ),
        ("delete", "DELETE FROM events WHERE seq = (SELECT min(seq) FROM events WHERE kind = 'chunk');", "deleted"),
        (
            "insert",
            "UPDATE events SET seq = seq + 100000 WHERE seq >= 5; UPDATE events SET seq = seq - 99999 WHERE seq >= 100000; INSERT INTO events SELECT 5, time_us, session, kind, content_hash, body, data, prev_hash, hash FROM events WHERE seq = 3;",
            "record 5",
        ),
        (
            "reorder",
            "UPDATE events SET seq = -seq WHERE seq IN (4, 5); UPDATE events SET seq = 5 WHERE seq = -4; UPDATE events SET seq = 4 WHERE seq = -5;",
            "record 4",
        ),
        ("index", "UPDATE sessions SET user = 'somebody-else';", "sessions table does not match"),
        ("truncate", "DELETE FROM events WHERE seq > (SELECT max(seq) - 3 FROM events);", "checkpoint"),
    ];
    for (name, sql, expect) in cases {
        let copy = env.path(&format!("copy-{name}.db"));
        std::fs::copy(env.db(), &copy).unwrap();
        tamper(&copy, sql);
        let (ok, out) = verify(&env, &copy, &["--pubkey", &pubkey]);
        assert!(!ok, "{name}: tampering must be found:\n{out}");
        assert!(out.contains("TAMPERED") && out.contains(expect), "{name}: expected {expect:?}:\n{out}");
    }
}

#[test]
fn strict_mode_refuses_new_sessions_when_the_disk_is_full_and_loses_nothing_acknowledged() {
    let mut env = Env::new("diskfull");
    let team = env.group("team");
    let ana = env.user("ana", &[&team]);
    let echo = EchoServer::start(&format!("{}:0", loopback(71)));
    let addr = echo.addr.to_string();
    let small = env.tmpfs("small", "3m");
    env.audit_db = small.join("audit.db");
    let config = env.write_policy("policy.toml", &tcp_policy(&addr, &team, "record_max_bytes = 4194304"));
    env.start_agent(&config);
    // `verify` proves only against a key recorded outside the store.
    let pubkey = env.status()["public_key"].as_str().unwrap_or_default().to_owned();
    // Fill the store with recorded traffic until it fails.
    let mut allowed = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = env.probe(&ana, &["echo", &addr, "262144"]);
        if r["ok"] == true {
            allowed += 1;
        }
        if !env.status()["audit_failure"].is_null() {
            break;
        }
        assert!(Instant::now() < deadline, "the store never filled up: {:#}", env.status());
    }
    let st = env.status();
    assert!(st["audit_failure"].as_str().unwrap_or("").to_lowercase().contains("full"), "{st:#}");
    // New sessions are refused, with the reason in the log.
    let r = env.probe(&ana, &["echo", &addr, "100"]);
    assert_ne!(r["ok"], true, "no session may start while the store cannot be written: {r}");
    assert!(env.agent_log().contains("audit store"), "{}", env.agent_log());
    // Everything acknowledged is there: every session that went through is recorded.
    env.signal_agent("KILL");
    let copy = env.path("after.db");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::copy(format!("{}{suffix}", env.db().display()), format!("{}{suffix}", copy.display()));
    }
    env.audit_db = copy;
    let recorded = env.sessions().iter().filter(|s| s["decision"] == "allow").count();
    assert!(recorded >= allowed, "{allowed} sessions went through but only {recorded} are recorded");
    let (ok, out) = verify(&env, &env.db(), &["--pubkey", &pubkey]);
    assert!(ok, "what was written still verifies: {out}");
}

#[test]
fn a_killed_agent_leaves_a_verifiable_chain_with_every_executed_statement() {
    let mut env = Env::new("killed");
    let team = env.group("team");
    let ana = env.user("ana", &[&team]);
    let pg = PgServer::start(&env.dir, &loopback(72), free_port(), "");
    pg.admin_db("appdb", &format!("CREATE TABLE t (n int); ALTER TABLE t OWNER TO {};", pg::APP_ROLE));
    let secret = pg::password_file(&env.dir, "s.secret", pg::APP_PASSWORD);
    let policy = format!(
        "[[backend]]\nname = \"db\"\nprotocol = \"postgres\"\naddress = \"{}\"\ntls = \"off\"\ncredentials = {{ user = \"{}\", password_file = \"{}\" }}\n\n\
         [[rule]]\nname = \"team writes\"\nwho = {{ groups = [\"{team}\"] }}\nbackend = \"db\"\nstatements = [\"insert\", \"select\"]\n",
        pg.addr(),
        pg::APP_ROLE,
        secret.display()
    );
    let config = env.write_policy("policy.toml", &policy);
    env.start_agent(&config);
    let pubkey = env.status()["public_key"].as_str().unwrap_or_default().to_owned();
    let script = env.path("load.py");
    std::fs::write(
        &script,
        "import sys, psycopg, threading\n\
         def worker(k):\n\
         \ttry:\n\
         \t\tc = psycopg.connect(host=sys.argv[1], port=sys.argv[2], dbname='appdb', user='x', autocommit=True)\n\
         \t\tfor i in range(100000):\n\
         \t\t\tc.execute('INSERT INTO t VALUES (%d)' % (k * 1000000 + i))\n\
         \texcept Exception as e:\n\
         \t\tpass\n\
         ts = [threading.Thread(target=worker, args=(k,)) for k in range(4)]\n\
         [t.start() for t in ts]; [t.join() for t in ts]\n",
    )
    .unwrap();
    let port = pg.port.to_string();
    let env_ref = &env;
    std::thread::scope(|s| {
        let load = s.spawn(|| {
            env_ref.run_as(&ana, None, Path::new("/usr/bin/python3"), &[script.to_str().unwrap(), &pg.host, &port])
        });
        // Kill under load: once the server has executed a few hundred
        // statements (however slowly the clients started), not after a fixed time.
        let started = std::time::Instant::now();
        while started.elapsed() < Duration::from_secs(90) {
            let n: u64 = pg.admin_db("appdb", "SELECT count(*) FROM t").trim().parse().unwrap_or(0);
            if n >= 300 {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let pid = env_ref.agent.as_ref().map(std::process::Child::id).unwrap_or_default();
        assert!(Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap().success());
        let _ = load.join();
    });
    let _ = env.agent.take().map(|mut c| c.wait());
    let executed: Vec<i64> =
        pg.admin_db("appdb", "SELECT n FROM t ORDER BY n").lines().filter_map(|l| l.trim().parse().ok()).collect();
    assert!(executed.len() > 100, "the load ran: {} rows", executed.len());
    let (ok, out) = verify(&env, &env.db(), &["--pubkey", &pubkey]);
    assert!(ok, "the chain verifies after SIGKILL: {out}");
    let recorded: std::collections::HashSet<i64> = env
        .statements(None)
        .iter()
        .filter_map(|s: &Value| {
            s["text"].as_str()?.strip_prefix("INSERT INTO t VALUES (")?.strip_suffix(')')?.parse().ok()
        })
        .collect();
    let missing: Vec<&i64> = executed.iter().filter(|n| !recorded.contains(n)).collect();
    assert!(
        missing.is_empty(),
        "{} statements ran on the server but are not recorded, e.g. {:?}",
        missing.len(),
        missing.iter().take(5).collect::<Vec<_>>()
    );
}

#[test]
fn replay_export_and_per_user_access() {
    let mut env = Env::new("replay");
    let team = env.group("team");
    let ana = env.user("ana", &[&team]);
    let bob = env.user("bob", &[&team]);
    let pg = PgServer::start(&env.dir, &loopback(73), free_port(), "");
    pg.admin_db("appdb", &format!("CREATE TABLE fruit (id int, name text); INSERT INTO fruit VALUES (1, 'apple'), (2, 'pear'); ALTER TABLE fruit OWNER TO {};", pg::APP_ROLE));
    // A table named to read as another schema's table in a list of names.
    pg.admin_db(
        "appdb",
        &format!("CREATE TABLE \"x,hr.salaries\" (n int); ALTER TABLE \"x,hr.salaries\" OWNER TO {};", pg::APP_ROLE),
    );
    let secret = pg::password_file(&env.dir, "s.secret", pg::APP_PASSWORD);
    let policy = format!(
        "[[backend]]\nname = \"db\"\nprotocol = \"postgres\"\naddress = \"{}\"\ntls = \"off\"\ncredentials = {{ user = \"{}\", password_file = \"{}\" }}\n\n\
         [[rule]]\nname = \"team reads\"\nwho = {{ groups = [\"{team}\"] }}\nbackend = \"db\"\nstatements = [\"select\"]\n",
        pg.addr(),
        pg::APP_ROLE,
        secret.display()
    );
    let config = env.write_policy("policy.toml", &policy);
    env.start_agent(&config);
    let port = pg.port.to_string();
    for (user, sql) in
        [(&ana, "SELECT id, name FROM fruit ORDER BY id; DELETE FROM fruit"), (&bob, "SELECT 42 AS answer")]
    {
        let args = ["-h", pg.host.as_str(), "-p", port.as_str(), "-d", "appdb", "-X", "-c", sql];
        env.run_as(user, None, Path::new("/usr/bin/psql"), &args);
        // psql sends the two statements of ana's -c as one query string: run them apart too.
        if user == &ana {
            env.run_as(
                user,
                None,
                Path::new("/usr/bin/psql"),
                &["-h", &pg.host, "-p", &port, "-d", "appdb", "-X", "-c", "SELECT id, name FROM fruit ORDER BY id"],
            );
            env.run_as(
                user,
                None,
                Path::new("/usr/bin/psql"),
                &["-h", &pg.host, "-p", &port, "-d", "appdb", "-X", "-c", "DELETE FROM fruit"],
            );
        }
    }
    let ana_sessions: Vec<String> = env
        .sessions()
        .iter()
        .filter(|s| s["user"] == ana.as_str() && s["decision"] == "allow")
        .filter_map(|s| s["id"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(ana_sessions.len(), 3, "{:#?}", env.sessions());
    let forged = r#"SELECT n FROM "x,hr.salaries""#;
    env.run_as(
        &bob,
        None,
        Path::new("/usr/bin/psql"),
        &["-h", &pg.host, "-p", &port, "-d", "appdb", "-X", "-c", forged],
    );
    let st = env.statements(None);
    let rec = st.iter().find(|s| s["text"] == forged).unwrap_or_else(|| panic!("recorded: {st:#?}"));
    assert_eq!(rec["decision"], "allow", "{rec}");
    // The record names one table, which is not hr.salaries.
    assert_eq!(rec["tables"], r#"public."x,hr.salaries""#, "{rec}");

    // Root replays a session: the statement, the rows as psql showed them.
    let ctl = env.control().display().to_string();
    let out = env.gatehouse(&["replay", &ana_sessions[1], "--no-wait", "--control-socket", &ctl]);
    let t = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{t}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        t.contains("SELECT id, name FROM fruit ORDER BY id")
            && t.contains("apple")
            && t.contains("pear")
            && t.contains("(2 rows)"),
        "{t}"
    );
    let out = env.gatehouse(&["replay", &ana_sessions[2], "--no-wait", "--control-socket", &ctl]);
    let t = String::from_utf8_lossy(&out.stdout);
    assert!(t.contains("refused by Gatehouse") && t.contains("delete"), "{t}");

    // Users see their own sessions only, through the agent's socket.
    let bin = env.path("gatehouse");
    std::fs::copy(gatehouse_e2e::gatehouse_bin(), &bin).unwrap();
    let as_bob = |args: &[&str]| {
        let out = Command::new("setpriv")
            .args(["--reuid", &bob, "--regid", &bob, "--init-groups", "--"])
            .arg(&bin)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        )
    };
    let (ok, t) = as_bob(&["sessions", "--json", "--control-socket", &ctl]);
    assert!(ok, "{t}");
    assert!(t.contains(&bob) && !t.contains(&ana), "bob sees only his own sessions: {t}");
    // Someone else's session answers exactly like one that does not exist.
    let (ok, t) = as_bob(&["replay", &ana_sessions[1], "--no-wait", "--control-socket", &ctl]);
    assert!(!ok && t.contains("no recorded session matches"), "{t}");
    let nobody = "01000000-0000-7000-8000-000000000000";
    let (ok, unknown) = as_bob(&["replay", nobody, "--no-wait", "--control-socket", &ctl]);
    assert!(!ok);
    assert_eq!(t.replace(ana_sessions[1].as_str(), "ID"), unknown.replace(nobody, "ID"));
    let (ok, t) = as_bob(&["status", "--control-socket", &ctl]);
    assert!(!ok && t.contains("permission denied"), "{t}");

    // Export, verify with the host key; tamper with the bundle; verify fails.
    let pubkey = env.status()["public_key"].as_str().unwrap().to_owned();
    assert!(env.signal_agent("TERM").success());
    let bundle = env.path("bundle");
    let db = env.db().display().to_string();
    let out = env.gatehouse(&["export", "--db", &db, "--format", "ocsf", "--out", bundle.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ocsf = std::fs::read_to_string(bundle.join("ocsf.jsonl")).unwrap();
    assert!(
        ocsf.contains("\"class_uid\":3002") && ocsf.contains("\"class_uid\":6005"),
        "{}",
        &ocsf[..ocsf.len().min(400)]
    );
    let ev: Value = ocsf
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|e| e["query_info"]["query_string"] == forged)
        .unwrap_or_else(|| panic!("no OCSF event for {forged}"));
    assert_eq!(ev["table"]["name"], r#"public."x,hr.salaries""#, "{ev}");
    let (ok, t) = verify(&env, &bundle, &["--pubkey", &pubkey]);
    assert!(ok, "{t}");
    let records = bundle.join("records.jsonl");
    let text = std::fs::read_to_string(&records).unwrap();
    // A statement answered within the audit writer's gather window (2 ms) is
    // chained with its end as one record; the replays above and this export
    // read it as the two records it stands for.
    let allowed: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| r["kind"] == "statement" && r["body"]["decision"] == "allow")
        .collect();
    assert!(
        allowed.iter().any(|r| r["body"]["end"]["rows"].is_u64()),
        "none of the {} allowed statements was chained with its end: {allowed:#?}",
        allowed.len()
    );
    // The OCSF events of statements that ran have their outcome, folded or not.
    for q in ["SELECT 42 AS answer", r#"SELECT n FROM "x,hr.salaries""#] {
        let e: Value = ocsf
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|e| e["query_info"]["query_string"] == q)
            .unwrap_or_else(|| panic!("no OCSF event for {q}"));
        assert!(e["unmapped"]["rows"].is_u64() && e["end_time"].is_u64(), "{e}");
    }
    let forged = text.replacen("\"decision\":\"allow\"", "\"decision\":\"deny\"", 1);
    assert_ne!(forged, text, "the tampering must change the bundle");
    std::fs::write(&records, forged).unwrap();
    let (ok, t) = verify(&env, &bundle, &["--pubkey", &pubkey]);
    assert!(!ok && t.contains("TAMPERED"), "{t}");
}
