//! The fleet-wide audit store: an agent ships its committed records to a
//! real central PostgreSQL (`[agent.ship]`). The test stops the central
//! server mid-stream while users keep working through the agent (shipping
//! never blocks the data path), restarts it, and checks that the central
//! copy holds every record exactly once, in sequence, that `gatehouse
//! verify --central` verifies the chain there against the host key, that
//! it catches an edit made there, and that `sessions --central` finds the
//! sessions. Needs root.
#![expect(clippy::unwrap_used, reason = "test code panics with context on failure")]

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use gatehouse_e2e::pg::{self, PgServer};
use gatehouse_e2e::{Env, free_port, gatehouse_bin, loopback};

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn local_max_seq(env: &Env) -> i64 {
    gatehouse_e2e::settle(&env.db());
    let conn = rusqlite::Connection::open_with_flags(env.db(), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    conn.query_row("SELECT coalesce(max(seq), 0) FROM events", [], |r| r.get(0)).unwrap()
}

/// (count, min seq, max seq) of the host's records in the central store.
fn central(c: &PgServer) -> (i64, i64, i64) {
    let out = c.admin_db(
        "appdb",
        "SELECT count(*) || ' ' || coalesce(min(seq), 0) || ' ' || coalesce(max(seq), 0) FROM gatehouse_events WHERE host = 'bastion-e2e'",
    );
    let mut v = out.split_whitespace().map(|x| x.parse::<i64>().unwrap());
    let mut next = || v.next().unwrap();
    (next(), next(), next())
}

/// Waits until the central store holds every record the local store had a moment ago.
fn wait_caught_up(env: &Env, c: &PgServer, what: &str) -> (i64, i64, i64) {
    let target = local_max_seq(env);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = central(c);
        if got.2 >= target {
            return got;
        }
        assert!(Instant::now() < deadline, "{what}: central store at {got:?}, local at {target}:\n{}", env.agent_log());
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn records_reach_the_central_store_once_each_across_an_outage_and_verify_there() {
    let mut env = Env::new("opsship");
    let analyst = env.group("analyst");
    let ana = env.user("ana", &[&analyst]);
    let app = PgServer::start(&env.dir, &loopback(42), free_port(), "");
    // The central server speaks TLS only to certificates of its own CA's, and the shipper verifies it.
    let (ca, cert, key) = pg::certs(&env.path("central-tls"), &loopback(43), 2);
    let centre = PgServer::start(&env.dir, &loopback(43), free_port(), &pg::ssl_conf(&env.dir, &cert, &key));
    let secret = pg::password_file(&env.dir, "appdb.secret", pg::APP_PASSWORD);
    let url = format!("postgres://{}:{}@{}/appdb", pg::APP_ROLE, pg::APP_PASSWORD, centre.addr());
    let config = env.write_policy(
        "policy.toml",
        &format!(
            r#"[agent]
ship = {{ url = "{url}", host = "bastion-e2e", batch = 7, ca_file = "{ca}" }}
checkpoint_interval = "1s"

[[backend]]
name = "appdb"
protocol = "postgres"
address = "{addr}"
tls = "off"
credentials = {{ user = "{role}", password_file = "{secret}" }}

[[rule]]
name = "analysts read"
who = {{ groups = ["{analyst}"] }}
backend = "appdb"
statements = ["select"]
"#,
            addr = app.addr(),
            ca = ca.display(),
            role = pg::APP_ROLE,
            secret = secret.display(),
        ),
    );
    env.start_agent(&config);
    let port = app.port.to_string();
    let psql = |n: usize| {
        for i in 0..n {
            let sql = format!("SELECT {i} AS round");
            let out = env.run_as(
                &ana,
                None,
                Path::new("/usr/bin/psql"),
                &["-h", &app.host, "-p", &port, "-U", "x", "-d", "appdb", "-X", "-A", "-t", "-c", &sql],
            );
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), i.to_string(), "{}", text(&out));
        }
    };

    psql(5);
    let (n, first, _) = wait_caught_up(&env, &centre, "before the outage");
    assert!(n > 10 && first == 1, "{n} records from {first}");

    // The central server goes away; users keep working; records queue up locally.
    centre.stop();
    let before = local_max_seq(&env);
    let started = Instant::now();
    psql(5);
    assert!(started.elapsed() < Duration::from_secs(30), "sessions were held up by the central outage");
    assert!(local_max_seq(&env) > before, "the local store goes on");
    std::thread::sleep(Duration::from_secs(2));
    centre.resume();

    let (n, first, last) = wait_caught_up(&env, &centre, "after the outage");
    assert!(env.agent_log().contains("audit shipping paused"), "the shipper saw the outage:\n{}", env.agent_log());
    assert_eq!((first, n), (1, last), "every record once, in sequence: {n} rows for 1..={last}");
    let dups = centre.admin_db("appdb", "SELECT count(*) - count(DISTINCT (host, seq)) FROM gatehouse_events");
    assert_eq!(dups, "0");
    assert_eq!(centre.admin_db("appdb", "SELECT max(version) FROM gatehouse_schema"), "1");

    // Verified there, against the host key from outside the central store.
    let key = env.status()["public_key"].as_str().unwrap().to_owned();
    let gh = |args: &[&str]| std::process::Command::new(gatehouse_bin()).args(args).output().unwrap();
    let ca_arg = ca.to_str().unwrap();
    let out = gh(&["verify", "--central", &url, "--central-ca", ca_arg, "--host", "bastion-e2e", "--pubkey", &key]);
    assert!(out.status.success(), "verify --central: {}", text(&out));
    assert!(text(&out).contains("ok: the chain is intact"), "{}", text(&out));
    assert!(!text(&out).contains(pg::APP_PASSWORD), "the password is not printed: {}", text(&out));

    let out = gh(&["sessions", "--central", &url, "--central-ca", ca_arg, "--json", "--limit", "1000"]);
    assert!(out.status.success(), "sessions --central: {}", text(&out));
    let rows: Vec<serde_json::Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    // Without the central CA the same server is not trusted: TLS is verified, not merely used.
    let out = gh(&["sessions", "--central", &url, "--json"]);
    assert!(!out.status.success() && text(&out).contains("certificate"), "unverified central store: {}", text(&out));
    let ana_rows = rows.iter().filter(|r| r["host"] == "bastion-e2e" && r["open"]["user"] == ana.as_str()).count();
    assert_eq!(ana_rows, 10, "{rows:?}");

    // An edit in the central store is caught.
    centre.admin_db(
        "appdb",
        "UPDATE gatehouse_events SET body = convert_to(replace(convert_from(body, 'UTF8'), 'SELECT 3', 'SELECT 4'), 'UTF8')
         WHERE kind = 'statement' AND convert_from(body, 'UTF8') LIKE '%SELECT 3 AS round%'",
    );
    let out = gh(&["verify", "--central", &url, "--central-ca", ca_arg, "--host", "bastion-e2e", "--pubkey", &key]);
    assert!(!out.status.success() && text(&out).contains("TAMPERED"), "{}", text(&out));
}
