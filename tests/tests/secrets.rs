//! The audit trail keeps no secrets, end to end: passwords, secret
//! settings, crypto keys (allowed, refused, unparseable), COPY data, Bind
//! parameters and values a masked user filtered on go through the real
//! agent to a real PostgreSQL, which does what it was asked; then the
//! audit store's files, every export format and the agent's log are
//! searched for each secret, and none is there. A session is redacted and
//! the chain still verifies. Masking tokens are 128 bits, keyed per column.
//! Needs root.
#![expect(clippy::unwrap_used, reason = "test helpers panic with context on failure")]

use std::path::{Path, PathBuf};
use std::process::Output;

use gatehouse_e2e::pg::{self, PgServer};
use gatehouse_e2e::{Env, free_port, loopback};
use serde_json::Value;

/// Fields drop in order: the server stops before the test directory goes.
struct World {
    pg: PgServer,
    env: Env,
    dan: String,
    eve: String,
    sam: String,
}

const SECRETS: &[&str] = &[
    "Secret-Alter-1",
    "Secret-Create-2",
    "Secret-Set-3",
    "Secret-Key-4",
    "Secret-Refused-5",
    "Secret-Unparsed-6",
    "Secret-Copy-7",
    "Secret-Bind-8",
    "Secret-Mapping-9",
    // Secret settings named without writing the name out.
    "Secret-Escape-10",
    "Secret-Expr-11",
    "Secret-Settings-12",
    // Values a masked user filtered on and provoked an error with.
    "jane.doe@example.com",
    "123-45-6789",
    // The login Gatehouse holds.
    pg::APP_PASSWORD,
];

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn world() -> World {
    let mut env = Env::new("secrets");
    let dba = env.group("dba");
    let analyst = env.group("analyst");
    let support = env.group("support");
    let dan = env.user("dan", &[&dba]);
    let eve = env.user("eve", &[&analyst]);
    let sam = env.user("sam", &[&support]);
    let pg = PgServer::start(&env.dir, &loopback(48), free_port(), "");
    pg.admin(&format!("ALTER ROLE {} CREATEROLE", pg::APP_ROLE));
    pg.admin_db(
        "appdb",
        &format!(
            "CREATE EXTENSION pgcrypto;
             CREATE TABLE items (id int PRIMARY KEY, name text);
             CREATE TABLE customers (id int PRIMARY KEY, name text, nickname text, email text, ssn text);
             INSERT INTO customers VALUES (1, 'Jane Doe', 'Jane Doe', 'jane.doe@example.com', '123-45-6789');
             ALTER TABLE items OWNER TO {app}; ALTER TABLE customers OWNER TO {app};",
            app = pg::APP_ROLE
        ),
    );
    let secret = pg::password_file(&env.dir, "appdb.secret", pg::APP_PASSWORD);
    let policy = format!(
        r#"
[agent]
anchors_syslog = false

[[backend]]
name = "appdb"
protocol = "postgres"
address = "{addr}"
tls = "off"
credentials = {{ user = "{app}", password_file = "{s}" }}

[[mask]]
name = "pii"
columns = [{{ column = "name", style = "hash" }}, {{ column = "nickname", style = "hash" }}, {{ column = "ssn", style = "redact" }}]
detectors = ["email", "us_ssn"]

[[rule]]
name = "dbas"
who = {{ groups = ["{dba}"] }}
backend = "appdb"
statements = ["*", "function_call"]

[[rule]]
name = "analysts read"
who = {{ groups = ["{analyst}"] }}
backend = "appdb"
statements = ["select"]

[[rule]]
name = "support masked"
who = {{ groups = ["{support}"] }}
backend = "appdb"
statements = ["select"]
mask = "pii"
"#,
        addr = pg.addr(),
        app = pg::APP_ROLE,
        s = secret.display(),
    );
    let config = env.write_policy("policy.toml", &policy);
    env.start_agent(&config);
    World { pg, env, dan, eve, sam }
}

impl World {
    fn psql(&self, user: &str, args: &[&str]) -> String {
        let port = self.pg.port.to_string();
        let mut all = vec!["-h", &self.pg.host, "-p", &port, "-U", "whoever", "-d", "appdb", "-X", "-A", "-t"];
        all.extend_from_slice(args);
        text(&self.env.run_as(user, None, Path::new("/usr/bin/psql"), &all))
    }

    fn file(&self, name: &str, content: &str) -> PathBuf {
        let p = self.env.path(name);
        std::fs::write(&p, content).unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
        p
    }
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files_under(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// Each secret as it would appear: as is, and hex-encoded (how exports carry raw bytes).
fn forms(secret: &str) -> [String; 2] {
    [secret.to_owned(), secret.bytes().map(|b| format!("{b:02x}")).collect()]
}

#[track_caller]
fn assert_no_secret(what: &str, bytes: &[u8]) {
    for s in SECRETS {
        for form in forms(s) {
            assert!(
                !bytes.windows(form.len()).any(|w| w == form.as_bytes()),
                "{what} holds the secret {s:?} (as {form:?}):\n{}",
                String::from_utf8_lossy(bytes).chars().take(4000).collect::<String>()
            );
        }
    }
}

#[test]
fn the_audit_trail_keeps_no_secrets() {
    let mut w = world();
    let before = w.pg.admin(&format!("SELECT rolpassword FROM pg_authid WHERE rolname = '{}'", pg::RO_ROLE));

    // A DBA changes passwords, sets a secret setting, uses a key, maps a user…
    let script = w.file(
        "dba.sql",
        &format!(
            "ALTER ROLE {ro} PASSWORD 'Secret-Alter-1';\n\
             CREATE USER gh_tmp WITH PASSWORD 'Secret-Create-2';\n\
             SET app.secret = 'Secret-Set-3';\n\
             SELECT length(current_setting('app.secret'));\n\
             SELECT pgp_sym_decrypt(pgp_sym_encrypt('plain data', 'Secret-Key-4'), 'Secret-Key-4');\n\
             SELEC pgp_sym_encrypt('x', 'Secret-Unparsed-6');\n\
             SELECT set_config('app.token', 'Secret-Mapping-9', false) IS NOT NULL;\n\
             SET U&\"app.p\\0061ssword\" = 'Secret-Escape-10';\n\
             SELECT 'escape=' || length(current_setting('app.password'));\n\
             SELECT set_config('app.pass' || 'phrase', 'Secret-Expr-11', false) IS NOT NULL;\n\
             SELECT 'expr=' || length(current_setting('app.passphrase'));\n\
             UPDATE pg_settings SET setting = 'Secret-Settings-12' WHERE name = 'app.token';\n\
             \\copy items FROM '{copy}' WITH (FORMAT csv)\n\
             SELECT count(*) FROM items;\n",
            ro = pg::RO_ROLE,
            copy = w.file("rows.csv", "7,Secret-Copy-7\n").display(),
        ),
    );
    let out = w.psql(&w.dan, &["-f", script.to_str().unwrap()]);
    assert!(out.contains("ALTER ROLE") && out.contains("CREATE ROLE"), "{out}\n{}", w.env.agent_log());
    assert!(out.contains("12\n"), "the setting was set to its 12-character value: {out}\n{}", w.env.agent_log());
    assert!(out.contains("plain data"), "the key worked: {out}");
    assert!(out.contains("does not parse"), "{out}");
    assert!(out.contains("\nt\n") && out.contains("1\n"), "{out}");
    // The server set both (the values' lengths), however the name was spelled.
    // (`UPDATE pg_settings` is there for its record: custom settings are not
    // rows of `pg_settings` here, the server reports `UPDATE 0`.)
    for (tag, len) in [("escape", 16), ("expr", 14)] {
        assert!(out.contains(&format!("{tag}={len}\n")), "{tag}: {out}\n{}", w.env.agent_log());
    }
    // PostgreSQL did it all.
    let after = w.pg.admin(&format!("SELECT rolpassword FROM pg_authid WHERE rolname = '{}'", pg::RO_ROLE));
    assert_ne!(before, after, "the password changed");
    assert_eq!(w.pg.admin("SELECT count(*) FROM pg_roles WHERE rolname = 'gh_tmp'"), "1");
    assert_eq!(w.pg.admin_db("appdb", "SELECT count(*) FROM items WHERE name = 'Secret-Copy-7'"), "1");

    // Bind parameters (psycopg 3 binds on the server side).
    let py = w.file(
        "bind.py",
        "import sys, psycopg\nc = psycopg.connect(host=sys.argv[1], port=sys.argv[2], dbname='appdb', user='x')\n\
         print('len', c.execute('SELECT length(%s::text)', ('Secret-Bind-8',)).fetchone()[0])\n",
    );
    let port = w.pg.port.to_string();
    let out =
        text(&w.env.run_as(&w.dan, None, Path::new("/usr/bin/python3"), &[py.to_str().unwrap(), &w.pg.host, &port]));
    assert!(out.contains("len 13"), "{out}\n{}", w.env.agent_log());

    // A refused statement with a key in it.
    let out = w.psql(&w.eve, &["-c", "SELECT pgp_sym_encrypt('x', 'Secret-Refused-5')"]);
    assert!(out.contains("Gatehouse refused this statement"), "{out}");

    // A masked user filters on a masked value and provokes an error that echoes one.
    let out = w.psql(&w.sam, &["-c", "SELECT email, ssn FROM customers WHERE email = 'jane.doe@example.com'"]);
    assert!(out.contains("****@example.com|****"), "{out}\n{}", w.env.agent_log());
    let out = w.psql(&w.sam, &["-c", "SELECT '123-45-6789'::int"]);
    assert!(out.contains("invalid input syntax") && out.contains("****"), "{out}");
    // Hash tokens: 128 bits, and the same value in two columns gives two tokens.
    let out = w.psql(&w.sam, &["-F", "|", "-c", "SELECT name, nickname FROM customers WHERE id = 1"]);
    let toks: Vec<&str> = out.trim().split('|').collect();
    assert_eq!(toks.len(), 2, "{out}");
    for t in &toks {
        assert!(t.starts_with("tok_") && t.len() == 36 && t[4..].bytes().all(|b| b.is_ascii_hexdigit()), "{out}");
    }
    assert_ne!(toks[0], toks[1], "keyed per column: {out}");
    assert!(!out.contains("Jane"), "{out}");
    // `mask test` uses a throwaway key, and says so: its token is not the agent's.
    let policy = w.env.path("policy.toml").display().to_string();
    let mut child = std::process::Command::new(gatehouse_e2e::gatehouse_bin())
        .args(["mask", "test", "--profile", "pii", "--config", &policy, "--column", "nickname"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), b"Jane Doe\n").unwrap();
    let mt = child.wait_with_output().unwrap();
    let (mt_out, mt_err) = (String::from_utf8_lossy(&mt.stdout), String::from_utf8_lossy(&mt.stderr));
    assert!(mt_out.trim().starts_with("tok_") && mt_out.trim() != toks[1], "{mt_out}");
    assert!(mt_err.contains("throwaway key"), "{mt_err}");

    // What the trail says: redacted, counted, placeholders for the masked user.
    let statements = w.env.statements(None);
    let texts: Vec<&str> = statements.iter().filter_map(|s| s["text"].as_str()).collect();
    // Checked here too: the erasure below removes dan's session from the store.
    assert_no_secret("gatehouse statements", serde_json::to_string(&statements).unwrap().as_bytes());
    assert!(texts.iter().any(|t| *t == format!("ALTER ROLE {} PASSWORD '[redacted]'", pg::RO_ROLE)), "{texts:#?}");
    assert!(texts.contains(&"SET app.secret = '[redacted]'"), "{texts:#?}");
    assert!(texts.contains(&"SELECT pgp_sym_encrypt('[redacted]', '[redacted]')"), "refused, redacted: {texts:#?}");
    assert!(
        texts.contains(&"SELECT email, ssn FROM customers WHERE email = $1"),
        "literals of masked sessions are placeholders: {texts:#?}"
    );
    let alter = statements.iter().find(|s| s["text"].as_str().is_some_and(|t| t.starts_with("ALTER ROLE"))).unwrap();
    assert_eq!(alter["redacted"], 1, "{alter:#}");
    let err = statements.iter().find(|s| s["error"].as_str().is_some_and(|e| e.contains("invalid input"))).unwrap();
    assert!(err["error"].as_str().unwrap().contains("****"), "errors are recorded after masking: {err:#}");

    // Remove one session's content on request: the chain still verifies and says so.
    let dan_session = w
        .env
        .sessions()
        .iter()
        .find(|s| s["user"] == w.dan.as_str())
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .unwrap();
    let ctl = w.env.control().display().to_string();
    let out = text(&w.env.gatehouse(&[
        "redact",
        "--session",
        &dan_session,
        "--reason",
        "erasure request #42",
        "--control-socket",
        &ctl,
    ]));
    assert!(out.contains("redacted session"), "{out}");
    let pubkey = w.env.status()["public_key"].as_str().unwrap().to_owned();
    let db = w.env.db().display().to_string();
    let replay = text(&w.env.gatehouse(&["replay", &dan_session, "--no-wait", "--db", &db]));
    assert!(replay.contains("[redacted]") && replay.contains("erasure request #42"), "{replay}");
    let redacted_row = w.env.sessions().into_iter().find(|s| s["id"] == dan_session.as_str()).unwrap();
    assert_eq!(redacted_row["redacted"], "erasure request #42", "{redacted_row:#}");

    // Stop (the last checkpoint is signed, the WAL folded in), then search everything.
    assert!(w.env.signal_agent("TERM").success());
    let env = &w.env;
    let out = text(&env.gatehouse(&["verify", &db, "--pubkey", &pubkey]));
    assert!(out.contains("ok: the chain is intact") && out.contains("erasure request #42"), "{out}");
    for format in ["jsonl", "ocsf", "asciicast"] {
        let out_dir = env.path(&format!("export-{format}"));
        let o = env.gatehouse(&["export", "--db", &db, "--format", format, "--out", out_dir.to_str().unwrap()]);
        assert!(o.status.success(), "{format}: {}", text(&o));
        let v = text(&env.gatehouse(&["verify", out_dir.to_str().unwrap(), "--pubkey", &pubkey]));
        assert!(v.contains("ok:"), "{format}: {v}");
        let mut files = Vec::new();
        files_under(&out_dir, &mut files);
        assert!(files.len() >= 5, "{files:?}");
        for f in files {
            assert_no_secret(&format!("export {format} {}", f.display()), &std::fs::read(&f).unwrap());
        }
    }
    let mut store = Vec::new();
    files_under(env.db().parent().unwrap(), &mut store);
    for f in store {
        assert_no_secret(&format!("the store's {}", f.display()), &std::fs::read(&f).unwrap_or_default());
    }
    assert_no_secret("the agent's log", env.agent_log().as_bytes());
    // The statement list a user or auditor reads, too.
    let listed: Vec<Value> = env.statements(None);
    assert_no_secret("gatehouse statements", serde_json::to_string(&listed).unwrap().as_bytes());
}
