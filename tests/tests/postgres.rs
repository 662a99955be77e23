//! The PostgreSQL adapter end to end: a real PostgreSQL 15 started by the
//! test on a 127.x address, reached through the eBPF redirect, driven by real
//! clients (psql, pgbench, psycopg 3, asyncpg) run as unprivileged users in
//! the test cgroup. Needs root.
#![expect(clippy::unwrap_used, reason = "test helpers panic with context on failure")]

use std::path::Path;
use std::process::Output;

use gatehouse_e2e::pg::{self, PgServer};
use gatehouse_e2e::{Env, free_port, loopback};
use serde_json::Value;

/// Fields drop in order: the server stops before the test directory goes.
struct World {
    pg: PgServer,
    env: Env,
    ana: String,
    eve: String,
    dan: String,
}

fn policy(pg: &PgServer, secret: &Path, analyst: &str, dba: &str) -> String {
    let s = secret.display();
    format!(
        r#"
[[backend]]
name = "appdb"
protocol = "postgres"
address = "{addr}"
tls = "off"
credentials = {{ user = "{app}", password_file = "{s}" }}
roles = {{ readonly = {{ user = "{ro}", password_file = "{s}" }}, md5 = {{ user = "{md5}", password_file = "{s}" }}, clear = {{ user = "{clear}", password_file = "{s}" }} }}

[[rule]]
name = "analysts read and write items"
who = {{ groups = ["{analyst}"] }}
backend = "appdb"
statements = ["select", "insert", "update", "delete", "copy_to", "copy_from", "function_call"]

[[rule]]
name = "dbas do anything"
who = {{ groups = ["{dba}"] }}
backend = "appdb"
statements = ["*", "function_call", "do", "call"]
"#,
        addr = pg.addr(),
        app = pg::APP_ROLE,
        ro = pg::RO_ROLE,
        md5 = pg::MD5_ROLE,
        clear = pg::CLEAR_ROLE,
    )
}

fn world(name: &str) -> World {
    world_with(name, policy)
}

fn world_with(name: &str, make: impl Fn(&PgServer, &Path, &str, &str) -> String) -> World {
    let mut env = Env::new(name);
    let analyst = env.group("analyst");
    let dba = env.group("dba");
    let ana = env.user("ana", &[&analyst]);
    let eve = env.user("eve", &[]);
    let dan = env.user("dan", &[&dba]);
    let pg = PgServer::start(&env.dir, &loopback(40), free_port(), "");
    pg.admin_db(
        "appdb",
        &format!(
            "CREATE TABLE items (id int PRIMARY KEY, name text);
             INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 100) g;
             CREATE TABLE victim (id int);
             ALTER TABLE items OWNER TO {app}; ALTER TABLE victim OWNER TO {app};",
            app = pg::APP_ROLE
        ),
    );
    let secret = pg::password_file(&env.dir, "appdb.secret", pg::APP_PASSWORD);
    let config = env.write_policy("policy.toml", &make(&pg, &secret, &analyst, &dba));
    env.start_agent(&config);
    World { env, pg, ana, eve, dan }
}

impl World {
    fn psql(&self, user: &str, args: &[&str]) -> Output {
        let port = self.pg.port.to_string();
        let mut all = vec!["-h", &self.pg.host, "-p", &port, "-U", "whoever", "-d", "appdb", "-X", "-A", "-t"];
        all.extend_from_slice(args);
        self.env.run_as(user, None, Path::new("/usr/bin/psql"), &all)
    }

    fn python(&self, user: &str, script: &str) -> Output {
        let path = self.env.path(&format!("script-{}.py", gatehouse_e2e::free_port()));
        std::fs::write(&path, script).unwrap();
        let port = self.pg.port.to_string();
        self.env.run_as(user, None, Path::new("/usr/bin/python3"), &[path.to_str().unwrap(), &self.pg.host, &port])
    }
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn psql_reads_writes_and_a_refused_drop_leaves_the_session_usable() {
    let w = world("pgpsql");
    // One psql session, statements from a script file (-f).
    let script = w.env.path("script.sql");
    std::fs::write(
        &script,
        "SELECT count(*) FROM items;\nINSERT INTO items VALUES (1000, 'new');\nDROP TABLE victim;\nSELECT name FROM items WHERE id = 1000;\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let out = w.psql(&w.ana, &["-f", script.to_str().unwrap()]);
    let t = text(&out);
    assert!(t.contains("100\n"), "count: {t}\n{}", w.env.agent_log());
    assert!(t.contains("Gatehouse refused this statement") && t.contains("drop is not in its statements"), "{t}");
    assert!(t.contains("42501") || t.contains("ERROR"), "{t}");
    assert!(t.contains("new"), "the session must stay usable after the refusal: {t}");
    assert_eq!(
        w.pg.admin_db("appdb", "SELECT count(*) FROM pg_tables WHERE tablename = 'victim'"),
        "1",
        "victim must survive"
    );

    // Interactive-style input on stdin, one session.
    let port = w.pg.port.to_string();
    let mut child = std::process::Command::new("sh")
        .arg("-c")
        .arg("echo $$ > \"$0/cgroup.procs\" && exec \"$@\"")
        .arg(&w.env.cgroup)
        .args([
            "setpriv",
            "--reuid",
            &w.ana,
            "--regid",
            &w.ana,
            "--init-groups",
            "--",
            "/usr/bin/psql",
            "-h",
            &w.pg.host,
            "-p",
            &port,
            "-d",
            "appdb",
            "-X",
            "-A",
            "-t",
        ])
        .current_dir(&w.env.dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"BEGIN;\nUPDATE items SET name = 'changed' WHERE id = 2;\nTRUNCATE victim;\nROLLBACK;\nSELECT name FROM items WHERE id = 2;\n\\q\n").unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let t = text(&out);
    assert!(t.contains("truncate is not in its statements"), "{t}");
    assert!(t.contains("item 2"), "rolled back after the refusal aborted the transaction: {t}");

    let sessions = w.env.sessions();
    let s = sessions.iter().find(|s| s["user"] == w.ana.as_str()).expect("ana's session");
    assert_eq!(s["decision"], "allow");
    let st = w.env.statements(s["id"].as_str());
    let drop = st.iter().find(|x| x["text"].as_str().unwrap_or("").contains("DROP")).expect("drop recorded");
    assert_eq!(drop["decision"], "deny", "{drop}");
    assert_eq!(drop["rule"], "analysts read and write items", "{drop}");
    let count = st.iter().find(|x| x["text"] == "SELECT count(*) FROM items").expect("select recorded");
    assert_eq!(count["rows"], 1, "{count}");
    assert_eq!(count["decision"], "allow");
}

#[test]
fn a_multi_statement_query_with_a_refused_part_is_refused_as_a_whole() {
    let w = world("pgmulti");
    let out = w.psql(&w.ana, &["-c", "SELECT 1; DROP TABLE victim"]);
    let t = text(&out);
    assert!(t.contains("Gatehouse refused this statement"), "{t}");
    assert!(!t.contains("\n1\n") && !t.starts_with("1\n"), "no part of it may run: {t}");
    assert_eq!(w.pg.admin_db("appdb", "SELECT count(*) FROM pg_tables WHERE tablename = 'victim'"), "1");
    // The server never saw the DROP: its log shows only the stand-in.
    assert!(!w.pg.log().contains("DROP TABLE victim"), "{}", w.pg.log());
}

#[test]
fn users_without_a_rule_get_a_fatal_error_not_a_reset() {
    let w = world("pgdeny");
    let t = text(&w.psql(&w.eve, &["-c", "SELECT 1"]));
    assert!(t.contains("FATAL") && t.contains("Gatehouse refused this connection"), "{t}");
    assert!(t.contains("no rule allows"), "{t}");
}

#[test]
fn backend_logins_with_scram_md5_and_cleartext() {
    for role in ["readonly", "md5", "clear"] {
        // md5 and cleartext hand the server the password (or a replayable
        // hash): over an unverified link they must be listed explicitly.
        let w = world_with(&format!("pgauth{role}"), |pg, secret, analyst, dba| {
            policy(pg, secret, analyst, dba)
                .replace(
                    "name = \"analysts read and write items\"",
                    &format!("name = \"analysts read and write items\"\nas_role = \"{role}\""),
                )
                .replace("tls = \"off\"", "tls = \"off\"\nrequire_auth = [\"scram-sha-256\", \"md5\", \"password\"]")
        });
        let t = text(&w.psql(&w.ana, &["-c", "SELECT current_user"]));
        let expect = match role {
            "readonly" => pg::RO_ROLE,
            "md5" => pg::MD5_ROLE,
            _ => pg::CLEAR_ROLE,
        };
        assert!(t.contains(expect), "{role}: {t}\n{}", w.env.agent_log());
    }
}

/// The agent remembers the SCRAM keys it derives from a backend password
/// (per password, salt and count). A password changed at the server (a new
/// salt) with the old one still in the secret file must fail, and the new
/// one, once in the file, must log in: nothing stale is used.
#[test]
fn a_backend_password_changed_at_the_server_is_followed_not_remembered() {
    let w = world("pgrotate");
    let who = |w: &World| text(&w.psql(&w.ana, &["-c", "SELECT current_user"]));
    for _ in 0..2 {
        let t = who(&w);
        assert_eq!(t.trim(), pg::APP_ROLE, "{}", w.env.agent_log());
    }
    w.pg.admin(&format!("ALTER ROLE {} PASSWORD 'rotated-Secret-2'", pg::APP_ROLE));
    let t = who(&w);
    assert!(t.contains("password authentication failed"), "the old password still logs in: {t}");
    pg::password_file(&w.env.dir, "appdb.secret", "rotated-Secret-2");
    let t = who(&w);
    assert_eq!(t.trim(), pg::APP_ROLE, "the new password does not log in\n{}", w.env.agent_log());
    // Set again to the first password: a new salt, the same password.
    w.pg.admin(&format!("ALTER ROLE {} PASSWORD '{}'", pg::APP_ROLE, pg::APP_PASSWORD));
    pg::password_file(&w.env.dir, "appdb.secret", pg::APP_PASSWORD);
    let t = who(&w);
    assert_eq!(t.trim(), pg::APP_ROLE, "{}", w.env.agent_log());
}

#[test]
fn copy_in_and_out() {
    let w = world("pgcopy");
    let data = w.env.path("rows.csv");
    std::fs::write(&data, "5001,alpha\n5002,beta\n").unwrap();
    std::fs::set_permissions(&data, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let t = text(&w.psql(&w.ana, &["-c", &format!("\\copy items FROM '{}' WITH (FORMAT csv)", data.display())]));
    assert!(t.contains("COPY 2"), "{t}\n{}", w.env.agent_log());
    let t = text(&w.psql(
        &w.ana,
        &["-c", "COPY (SELECT id, name FROM items WHERE id > 5000 ORDER BY id) TO STDOUT WITH (FORMAT csv)"],
    ));
    assert_eq!(t.trim(), "5001,alpha\n5002,beta", "{t}");
}

#[test]
fn pgbench_simple_extended_and_prepared() {
    let w = world("pgbench");
    w.pg.admin_db("appdb", "SELECT 1");
    let init = std::process::Command::new("setpriv")
        .args([
            "--reuid",
            "postgres",
            "--regid",
            "postgres",
            "--init-groups",
            "--",
            "/usr/lib/postgresql/15/bin/pgbench",
            "-i",
            "-s",
            "1",
            "-q",
            "-h",
        ])
        .arg(&w.pg.dir)
        .args(["-p", &w.pg.port.to_string(), "-U", "postgres", "appdb"])
        .output()
        .unwrap();
    assert!(init.status.success(), "{}", text(&init));
    w.pg.admin_db("appdb", &format!("GRANT ALL ON ALL TABLES IN SCHEMA public TO {}", pg::APP_ROLE));
    let port = w.pg.port.to_string();
    for mode in ["simple", "extended", "prepared"] {
        let out = w.env.run_as(
            &w.dan,
            None,
            Path::new("/usr/lib/postgresql/15/bin/pgbench"),
            &["-h", &w.pg.host, "-p", &port, "-M", mode, "-c", "2", "-j", "2", "-t", "50", "-n", "appdb"],
        );
        let t = text(&out);
        assert!(out.status.success(), "pgbench -M {mode}: {t}\n{}", w.env.agent_log());
        assert!(t.contains("number of transactions actually processed: 100/100"), "{mode}: {t}");
        assert!(!t.contains("failed transactions: ") || t.contains("failed transactions: 0 "), "{mode}: {t}");
    }
}

#[test]
fn psycopg_extended_pipeline_stays_in_sync_after_a_refusal_and_server_side_cursors_work() {
    let w = world("pgpsycopg");
    let out = w.python(
        &w.ana,
        r#"
import sys, psycopg
conn = psycopg.connect(host=sys.argv[1], port=sys.argv[2], dbname="appdb", user="whoever")
cur = conn.cursor()
cur.execute("SELECT name FROM items WHERE id = %s", (3,))
print("row", cur.fetchone()[0])
# A pipeline: an allowed insert, a refused drop, a later select.
try:
    with conn.pipeline() as p:
        conn.execute("INSERT INTO items VALUES (%s, %s)", (7001, "piped"))
        conn.execute("DROP TABLE victim")
        conn.execute("SELECT 1")
except psycopg.Error as e:
    print("pipeline error", type(e).__name__, e.sqlstate, str(e).splitlines()[0])
conn.rollback()
cur = conn.cursor()
cur.execute("SELECT count(*) FROM items WHERE id = 7001")
print("after", cur.fetchone()[0])
# Server-side cursor, fetched in batches.
with conn.cursor(name="big") as c:
    c.itersize = 7
    c.execute("SELECT id FROM items ORDER BY id")
    print("cursor rows", sum(1 for _ in c))
conn.commit()
print("done")
"#,
    );
    let t = text(&out);
    assert!(t.contains("row item 3"), "{t}\n{}", w.env.agent_log());
    assert!(t.contains("pipeline error") && t.contains("42501"), "{t}");
    assert!(t.contains("after 0"), "the pipeline's insert is rolled back with the transaction: {t}");
    assert!(t.contains("cursor rows 100"), "{t}");
    assert!(t.contains("done"), "{t}");
}

#[test]
fn asyncpg_prepared_statements_and_a_refusal() {
    let w = world("pgasyncpg");
    let out = w.python(
        &w.ana,
        r#"
import sys, asyncio, asyncpg
async def main():
    c = await asyncpg.connect(host=sys.argv[1], port=int(sys.argv[2]), database="appdb", user="whoever", ssl=False)
    rows = await c.fetch("SELECT id, name FROM items WHERE id <= $1 ORDER BY id", 3)
    print("rows", [r["name"] for r in rows])
    await c.executemany("INSERT INTO items VALUES ($1, $2)", [(9001, "a"), (9002, "b")])
    print("count", await c.fetchval("SELECT count(*) FROM items WHERE id > 9000"))
    try:
        await c.execute("ALTER TABLE items ADD COLUMN x int")
    except asyncpg.PostgresError as e:
        print("refused", e.sqlstate)
    print("still", await c.fetchval("SELECT 42"))
    await c.close()
asyncio.run(main())
"#,
    );
    let t = text(&out);
    assert!(t.contains("rows ['item 1', 'item 2', 'item 3']"), "{t}\n{}", w.env.agent_log());
    assert!(t.contains("count 2"), "{t}");
    assert!(t.contains("refused 42501"), "{t}");
    assert!(t.contains("still 42"), "{t}");
}

#[test]
fn cancel_of_a_long_pg_sleep_reaches_the_right_backend() {
    let w = world("pgcancel");
    let out = w.python(
        &w.ana,
        r#"
import sys, time, threading, psycopg
conn = psycopg.connect(host=sys.argv[1], port=sys.argv[2], dbname="appdb", user="whoever", autocommit=True)
threading.Timer(1.0, conn.cancel).start()
t = time.time()
try:
    conn.execute("SELECT pg_sleep(30)")
    print("not cancelled")
except psycopg.errors.QueryCanceled:
    print("cancelled after %.1f s" % (time.time() - t))
print("still", conn.execute("SELECT 7").fetchone()[0])
"#,
    );
    let t = text(&out);
    assert!(t.contains("cancelled after"), "{t}\n{}", w.env.agent_log());
    assert!(t.contains("still 7"), "{t}");
}

#[test]
fn malformed_startup_and_absurd_lengths_close_only_that_session() {
    let w = world("pgmalformed");
    let out = w.python(
        &w.ana,
        r#"
import sys, socket, struct, psycopg
host, port = sys.argv[1], int(sys.argv[2])
good = psycopg.connect(host=host, port=port, dbname="appdb", user="whoever", autocommit=True)
def attempt(payload):
    s = socket.create_connection((host, port))
    s.sendall(payload)
    s.settimeout(5)
    data = b""
    try:
        while True:
            chunk = s.recv(4096)
            if not chunk: break
            data += chunk
    except Exception as e:
        data += repr(e).encode()
    return data
# A startup packet claiming 2 GB.
print("huge", attempt(struct.pack("!ii", 0x7ffffff0, 196608)))
# A startup packet with a broken parameter list.
print("broken", attempt(struct.pack("!ii", 16, 196608) + b"user\x00x"))
# A valid startup, then a message with an absurd length.
start = b"user\x00x\x00database\x00appdb\x00\x00"
hello = struct.pack("!ii", 8 + len(start), 196608) + start
print("absurd", attempt(hello + b"Q" + struct.pack("!i", 0x7ffffff0)))
print("good", good.execute("SELECT 5").fetchone()[0])
"#,
    );
    let t = text(&out);
    assert!(t.contains("good 5"), "other sessions keep working: {t}\n{}", w.env.agent_log());
    assert!(t.contains("absurd") && t.contains("08P01"), "a protocol-native error: {t}");
    let sessions = w.env.sessions();
    let broken: Vec<&Value> =
        sessions.iter().filter(|s| s["end_reason"].as_str().is_some_and(|e| e.contains("client error"))).collect();
    assert!(broken.len() >= 3, "each bad session is recorded: {sessions:#?}");
    assert!(w.env.status()["pid"].is_number(), "the agent is still up");
}

/// A CA and a certificate for `ip`, made with openssl.
fn certs(dir: &Path, ip: &str) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl").args(args).current_dir(dir).output().unwrap();
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    std::fs::write(dir.join("san.ext"), format!("subjectAltName=IP:{ip}\n")).unwrap();
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=Gatehouse test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        &format!("/CN={ip}"),
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "san.ext",
        "-out",
        "server.crt",
    ]);
    (dir.join("ca.crt"), dir.join("server.crt"), dir.join("server.key"))
}

#[test]
fn tls_to_the_backend_is_verified_and_clients_may_demand_tls() {
    let mut env = Env::new("pgtls");
    let analyst = env.group("analyst");
    let ana = env.user("ana", &[&analyst]);
    let host = loopback(45);
    let tls_dir = env.path("tls");
    std::fs::create_dir_all(&tls_dir).unwrap();
    let (ca, cert, key) = certs(&tls_dir, &host);
    // The server's copies, readable by postgres only.
    for f in ["server.crt", "server.key"] {
        std::fs::copy(tls_dir.join(f), env.path(f)).unwrap();
        assert!(
            std::process::Command::new("chown").arg("postgres:postgres").arg(env.path(f)).status().unwrap().success()
        );
        std::fs::set_permissions(env.path(f), std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    }
    let conf = format!(
        "ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\n",
        env.path("server.crt").display(),
        env.path("server.key").display()
    );
    let pg = PgServer::start(&env.dir, &host, free_port(), &conf);
    let secret = pg::password_file(&env.dir, "appdb.secret", pg::APP_PASSWORD);
    let policy = |ca_file: &Path| {
        format!(
            r#"
[[backend]]
name = "appdb"
protocol = "postgres"
address = "{addr}"
tls = "verify"
ca_file = "{ca}"
credentials = {{ user = "{app}", password_file = "{s}" }}
client_tls = {{ cert_file = "{cert}", key_file = "{key}" }}

[[rule]]
name = "analysts read"
who = {{ groups = ["{analyst}"] }}
backend = "appdb"
statements = ["select"]
catalog = "all"
"#,
            addr = pg.addr(),
            ca = ca_file.display(),
            app = pg::APP_ROLE,
            s = secret.display(),
            cert = cert.display(),
            key = key.display(),
        )
    };
    let config = env.write_policy("policy.toml", &policy(&ca));
    env.start_agent(&config);
    let port = pg.port.to_string();
    let psql = |conninfo: String| {
        let o = env.run_as(
            &ana,
            None,
            Path::new("/usr/bin/psql"),
            &[&conninfo, "-X", "-A", "-t", "-c", "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"],
        );
        text(&o)
    };
    // Gatehouse → PostgreSQL is TLS, verified against the CA.
    let t = psql(format!("host={host} port={port} dbname=appdb sslmode=disable"));
    assert_eq!(t.trim(), "t", "the backend leg must be TLS: {t}\n{}", env.agent_log());
    // A client that demands TLS gets it from Gatehouse (client_tls)…
    let t = psql(format!("host={host} port={port} dbname=appdb sslmode=require"));
    assert_eq!(t.trim(), "t", "{t}\n{}", env.agent_log());
    // …and one that verifies the certificate succeeds when it trusts the CA.
    let ca_copy = env.path("client-ca.crt");
    std::fs::copy(&ca, &ca_copy).unwrap();
    std::fs::set_permissions(&ca_copy, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let t = psql(format!("host={host} port={port} dbname=appdb sslmode=verify-full sslrootcert={}", ca_copy.display()));
    assert_eq!(t.trim(), "t", "{t}\n{}", env.agent_log());

    // With the wrong CA, Gatehouse refuses to log in to an unverified server.
    let other = env.path("other");
    std::fs::create_dir_all(&other).unwrap();
    let (other_ca, _, _) = certs(&other, &host);
    std::fs::write(&config, policy(&other_ca)).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let t = psql(format!("host={host} port={port} dbname=appdb sslmode=disable"));
        if t.contains("could not log in") {
            assert!(t.contains("FATAL"), "{t}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the reload with the wrong CA never took effect: {t}");
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
}

/// Long values through the relay cost memory while they pass, not after:
/// sessions that read a 40 MB value each and then sit idle hold none of it
/// (before: every buffer kept its largest size, ~200 MB per idle session for
/// a 100 MB value, so a user with a few dozen sessions could exhaust the
/// bastion). And large messages of all sessions share one budget (`[agent]
/// large_message_budget`, here 128 MiB): a message past what is left ends
/// that session with a FATAL 53200 and a recorded reason, and the agent and
/// the other sessions go on.
#[test]
fn large_values_share_a_memory_budget_and_idle_sessions_give_their_memory_back() {
    let w = world_with("pgbigmsg", |pg, secret, analyst, dba| {
        format!("[agent]\nlarge_message_budget = 134217728\n{}", policy(pg, secret, analyst, dba))
    });
    let script = w.env.path("idle.py");
    std::fs::write(
        &script,
        r#"
import sys, psycopg
conns = []
for i in range(4):
    c = psycopg.connect(host=sys.argv[1], port=sys.argv[2], dbname="appdb", user="whoever", autocommit=True)
    n = c.execute("SELECT repeat('x', 40000000)").fetchone()[0]
    print("read", len(n), flush=True)
    conns.append(c)
print("idle", flush=True)
sys.stdin.readline()
for c in conns:
    print("still", c.execute("SELECT 1").fetchone()[0], flush=True)
"#,
    )
    .unwrap();
    let port = w.pg.port.to_string();
    // Four idle sessions that each passed a 40 MB value on.
    let run = w.env.idle_sessions_rss(&w.ana, &script, &[&w.pg.host, &port], 40 * 1024);
    let reads = run.until_idle.iter().filter(|l| *l == "read 40000000").count();
    assert_eq!(reads, 4, "{run:?}\n{}", w.env.agent_log());
    assert!(run.idle < run.before + 40 * 1024, "agent RSS {} KiB before, {} KiB idle", run.before, run.idle);
    assert_eq!(run.after.matches("still 1").count(), 4, "the idle sessions are still served: {run:?}");

    // Past the budget: a 150 MB value ends its session, a 20 MB one passes.
    let o = w.psql(&w.ana, &["-o", "/dev/null", "-c", "SELECT repeat('x', 150000000)"]);
    let t = text(&o);
    assert!(
        t.contains("FATAL") && t.contains("server's message is larger than the agent can hold"),
        "{t}\n{}",
        w.env.agent_log()
    );
    assert!(t.contains("large_message_budget"), "{t}");
    let o = w.psql(
        &w.ana,
        &["-c", "SELECT length(repeat('y', 20000000)), length(x) FROM (SELECT repeat('z', 20000000) x) s"],
    );
    assert!(text(&o).contains("20000000|20000000"), "{}", text(&o));
    let o = w.psql(&w.ana, &["-o", "/dev/null", "-c", "SELECT repeat('x', 20000000)"]);
    assert!(o.status.success(), "a 20 MB value passes: {}", text(&o));
    // The server's account: the refused session is recorded as cut for the budget.
    w.env.wait_session("cut for the memory budget", |s| {
        s["end_reason"].as_str().is_some_and(|r| r.contains("memory budget"))
    });
    let o = w.psql(&w.ana, &["-c", "SELECT 'served'"]);
    assert!(text(&o).contains("served"), "{}", text(&o));
}
