//! Trust is earned, end to end: an impostor backend gets no password
//! (purpose-built hostile servers on 127.x addresses), SCRAM-SHA-256-PLUS
//! over verified TLS to a real PostgreSQL with the login recorded, `verify`
//! trusting only keys from outside the store, following a key rotation and
//! finding a cut-off tail, `export` signing only what verifies, and the
//! files that hold secrets checked. Needs root.
#![expect(clippy::unwrap_used, reason = "test helpers panic with context on failure")]

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use gatehouse_e2e::hostile::{Auth, Hostile, Tls};
use gatehouse_e2e::pg::{self, PgServer};
use gatehouse_e2e::{EchoServer, Env, free_port, gatehouse_bin, loopback};
use serde_json::Value;

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn psql(env: &Env, user: &str, host: &str, port: u16, sql: &str) -> String {
    let conninfo = format!("host={host} port={port} dbname=appdb user=whoever sslmode=disable connect_timeout=15");
    text(&env.run_as(user, None, Path::new("/usr/bin/psql"), &[&conninfo, "-X", "-A", "-t", "-c", sql]))
}

fn gh(env: &Env, args: &[&str]) -> (i32, String) {
    let o = env.gatehouse(args);
    (o.status.code().unwrap_or(-1), text(&o))
}

/// One impostor per way of getting a password out of a careless client.
struct Case {
    name: &'static str,
    tls: &'static str,
    server_tls: Tls,
    auth: Auth,
    /// What the client (and the agent's log) are told.
    expect: &'static str,
    /// The user name may reach the impostor (it did not fail at TLS).
    startup_reaches_it: bool,
}

#[test]
fn an_impostor_backend_gets_no_password() {
    let mut env = Env::new("impostor");
    let team = env.group("team");
    let ana = env.user("ana", &[&team]);
    let secret = pg::password_file(&env.dir, "appdb.secret", pg::APP_PASSWORD);
    let good = pg::certs(&env.path("ca-good"), &loopback(92), 2);
    let other_ca = pg::certs(&env.path("ca-other"), &loopback(93), 2);
    // A certificate from a trusted CA, but for another address than the backend's.
    let wrong_name = pg::certs(&env.path("ca-name"), "127.0.0.1", 2);
    let cases = vec![
        Case {
            name: "downgrade-verify",
            tls: "verify",
            server_tls: Tls::Refuse,
            auth: Auth::Cleartext,
            expect: "does not accept TLS",
            startup_reaches_it: false,
        },
        Case {
            name: "downgrade-prefer",
            tls: "prefer",
            server_tls: Tls::Refuse,
            auth: Auth::Cleartext,
            expect: "password authentication, which this backend does not allow over plaintext",
            startup_reaches_it: true,
        },
        Case {
            name: "cleartext",
            tls: "off",
            server_tls: Tls::Refuse,
            auth: Auth::Cleartext,
            expect: "does not allow over plaintext",
            startup_reaches_it: true,
        },
        Case {
            name: "md5-unverified",
            tls: "prefer",
            server_tls: Tls::Accept { cert: other_ca.1.clone(), key: other_ca.2.clone() },
            auth: Auth::Md5,
            expect: "md5 authentication, which this backend does not allow over TLS whose certificate is not verified",
            startup_reaches_it: true,
        },
        Case {
            name: "premature-ok",
            tls: "off",
            server_tls: Tls::Refuse,
            auth: Auth::PrematureOk,
            expect: "before it proved it knows the password",
            startup_reaches_it: true,
        },
        Case {
            name: "skip-final",
            tls: "off",
            server_tls: Tls::Refuse,
            auth: Auth::SkipFinal,
            expect: "before it proved it knows the password",
            startup_reaches_it: true,
        },
        Case {
            name: "trust",
            tls: "off",
            server_tls: Tls::Refuse,
            auth: Auth::Trust,
            expect: "a password is held, so a server that asks for none may be an impostor",
            startup_reaches_it: true,
        },
        Case {
            name: "wrong-ca",
            tls: "verify",
            server_tls: Tls::Accept { cert: other_ca.1.clone(), key: other_ca.2.clone() },
            auth: Auth::Cleartext,
            expect: "certificate",
            startup_reaches_it: false,
        },
        Case {
            name: "wrong-name",
            tls: "verify",
            server_tls: Tls::Accept { cert: wrong_name.1.clone(), key: wrong_name.2.clone() },
            auth: Auth::Cleartext,
            expect: "certificate",
            startup_reaches_it: false,
        },
    ];
    let mut servers = Vec::new();
    let mut policy = String::new();
    for (i, c) in cases.iter().enumerate() {
        let host = loopback(100 + u8::try_from(i).unwrap());
        let s = Hostile::start(&format!("{host}:0"), c.server_tls.clone(), c.auth);
        let ca = match c.name {
            "wrong-name" => &wrong_name.0,
            _ => &good.0,
        };
        let ca_line = if c.tls == "verify" { format!("ca_file = \"{}\"\n", ca.display()) } else { String::new() };
        policy.push_str(&format!(
            "[[backend]]\nname = \"imp-{}\"\nprotocol = \"postgres\"\naddress = \"{}\"\ntls = \"{}\"\n{ca_line}credentials = {{ user = \"{}\", password_file = \"{}\" }}\n\n",
            c.name,
            s.addr,
            c.tls,
            pg::APP_ROLE,
            secret.display()
        ));
        servers.push(s);
    }
    policy.push_str(&format!(
        "[[rule]]\nname = \"team\"\nwho = {{ groups = [\"{team}\"] }}\nbackends = [\"imp-*\"]\nstatements = [\"select\"]\n"
    ));
    let config = env.write_policy("policy.toml", &policy);
    env.start_agent(&config);

    for (c, s) in cases.iter().zip(&servers) {
        let out = psql(&env, &ana, &s.addr.ip().to_string(), s.addr.port(), "SELECT 1");
        assert!(out.contains("FATAL") && out.contains("could not log in"), "{}: {out}\n{}", c.name, env.agent_log());
        assert!(out.contains(c.expect), "{}: the client is told why ({:?}): {out}", c.name, c.expect);
        assert!(
            !out.contains(&secret.display().to_string()),
            "{}: the client never sees the password file: {out}",
            c.name
        );
        let seen = s.seen();
        assert!(seen.connections >= 1, "{}: the agent did dial the impostor: {seen:?}", c.name);
        assert!(!seen.received(pg::APP_PASSWORD), "{}: the impostor got the password: {seen:?}", c.name);
        match c.auth {
            Auth::Cleartext | Auth::Md5 | Auth::Trust => {
                assert_eq!(seen.password_messages, 0, "{}: no password message at all: {seen:?}", c.name);
            }
            Auth::PrematureOk | Auth::SkipFinal => {}
        }
        if c.startup_reaches_it {
            assert_eq!(seen.startups, 1, "{}: {seen:?}", c.name);
        } else {
            assert_eq!(seen.startups, 0, "{}: not even the user name may reach an unverified server: {seen:?}", c.name);
            assert!(!seen.received(pg::APP_ROLE), "{}: {seen:?}", c.name);
        }
        if matches!(c.name, "wrong-ca" | "wrong-name") {
            assert_eq!(seen.tls_handshakes, 0, "{}: the handshake must fail: {seen:?}", c.name);
        }
    }
    // The log has the detail; every failed login is on record, closed with its reason.
    let log = env.agent_log();
    assert!(log.contains("backend login failed"), "{log}");
    assert!(!log.contains(pg::APP_PASSWORD), "the agent never logs the password");
    let sessions = env.sessions();
    for c in &cases {
        let backend = format!("imp-{}", c.name);
        let s = sessions
            .iter()
            .find(|s| s["backend"] == backend.as_str())
            .unwrap_or_else(|| panic!("{backend}: {sessions:#?}"));
        assert!(s["end_reason"].as_str().unwrap_or("").contains("could not log in"), "{s:#}");
    }
    // `gatehouse status` says which backends are reached without a verified certificate.
    let st = env.status();
    for b in st["backends"].as_array().unwrap() {
        let warned = !b["warnings"].as_array().unwrap().is_empty();
        assert_eq!(warned, b["tls"] != "verify", "{b:#}");
    }
    let ctl = env.control().display().to_string();
    let (_, human) = gh(&env, &["status", "--control-socket", &ctl]);
    assert!(human.contains("WARNING: tls = off") && human.contains("WARNING: tls = prefer"), "{human}");
}

/// The SHA-256 fingerprint of a PEM certificate, as lowercase hex.
fn fingerprint(cert: &Path) -> String {
    let o =
        Command::new("openssl").args(["x509", "-noout", "-fingerprint", "-sha256", "-in"]).arg(cert).output().unwrap();
    text(&o).split('=').nth(1).unwrap_or_default().trim().replace(':', "").to_lowercase()
}

#[test]
fn scram_plus_over_verified_tls_is_used_and_recorded() {
    let mut env = Env::new("scramplus");
    let team = env.group("team");
    let ana = env.user("ana", &[&team]);
    let host = loopback(46);
    let (ca, cert, key) = pg::certs(&env.path("tls"), &host, 2);
    let conf = pg::ssl_conf(&env.dir, &cert, &key);
    let pg = PgServer::start(&env.dir, &host, free_port(), &conf);
    let secret = pg::password_file(&env.dir, "appdb.secret", pg::APP_PASSWORD);
    // A certificate for clients that demand TLS, expired since yesterday: status and log say so.
    let (_, expired_cert, expired_key) = pg::certs(&env.path("client-tls"), &host, -1);
    let policy = format!(
        r#"
[[backend]]
name = "appdb"
protocol = "postgres"
address = "{addr}"
ca_file = "{ca}"
require_auth = ["scram-sha-256-plus"]
credentials = {{ user = "{app}", password_file = "{s}" }}
client_tls = {{ cert_file = "{cc}", key_file = "{ck}" }}

[[rule]]
name = "team reads"
who = {{ groups = ["{team}"] }}
backend = "appdb"
statements = ["select", "function_call"]
catalog = "all"
"#,
        addr = pg.addr(),
        ca = ca.display(),
        app = pg::APP_ROLE,
        s = secret.display(),
        cc = expired_cert.display(),
        ck = expired_key.display(),
    );
    let config = env.write_policy("policy.toml", &policy);
    env.start_agent(&config);
    // tls defaults to "verify"; require_auth allows only channel-bound SCRAM:
    // the login succeeds only if PostgreSQL accepted the binding to this TLS connection.
    let out = psql(&env, &ana, &host, pg.port, "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()");
    assert_eq!(out.trim(), "t", "{out}\n{}", env.agent_log());
    let s = env.wait_session("to appdb", |s| s["backend"] == "appdb");
    assert_eq!(s["backend_auth"], "SCRAM-SHA-256-PLUS", "{s:#}");
    let tls = s["backend_tls"].as_str().unwrap_or_default();
    assert!(tls.starts_with("verified TLSv1."), "{s:#}");
    // The login record names the certificate the server presented.
    let st = env.status();
    let b = &st["backends"][0];
    assert_eq!(b["last_login"]["certificate_sha256"].as_str().unwrap(), fingerprint(&cert), "{b:#}");
    assert_eq!(b["last_login"]["server_name"], host.as_str());
    let warnings: Vec<&str> = b["warnings"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert_eq!(warnings, vec!["the client_tls certificate has EXPIRED"], "{b:#}");
    assert!(env.agent_log().contains("EXPIRED"), "{}", env.agent_log());
}

fn tcp_policy(addr: &str, group: &str) -> String {
    format!(
        "[agent]\ncheckpoint_interval = \"1s\"\nanchors_syslog = false\n\n[[backend]]\nname = \"echo\"\nprotocol = \"tcp\"\naddress = \"{addr}\"\n\n\
         [[rule]]\nname = \"team\"\nwho = {{ groups = [\"{group}\"] }}\nbackend = \"echo\"\n"
    )
}

fn copy_store(from: &Path, to_dir: &Path) -> PathBuf {
    std::fs::create_dir_all(to_dir).unwrap();
    std::fs::set_permissions(to_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), to_dir.join(e.file_name())).unwrap();
        }
    }
    to_dir.join("audit.db")
}

fn sql(db: &Path, statements: &str) {
    let out = Command::new("python3")
        .args(["-c", "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.executescript(sys.argv[2]); c.commit()"])
        .arg(db)
        .arg(statements)
        .output()
        .unwrap();
    assert!(out.status.success(), "{statements}: {}", text(&out));
}

#[test]
fn verify_trusts_outside_keys_follows_rotation_and_finds_a_cut_tail() {
    let mut env = Env::new("trustverify");
    let team = env.group("team");
    let ana = env.user("ana", &[&team]);
    let echo = EchoServer::start(&format!("{}:0", loopback(72)));
    let addr = echo.addr.to_string();
    let config = env.write_policy("policy.toml", &tcp_policy(&addr, &team));
    env.start_agent(&config);
    for _ in 0..2 {
        assert_eq!(env.probe(&ana, &["echo", &addr, "1000"])["ok"], true);
    }
    let old = env.status()["public_key"].as_str().unwrap().to_owned();
    let ctl = env.control().display().to_string();
    let (code, out) = gh(&env, &["keys", "rotate", "--control-socket", &ctl]);
    assert_eq!(code, 0, "{out}");
    let new = env.status()["public_key"].as_str().unwrap().to_owned();
    assert_ne!(old, new);
    assert!(out.contains(&old) && out.contains(&new), "{out}");
    for _ in 0..2 {
        assert_eq!(env.probe(&ana, &["echo", &addr, "1000"])["ok"], true);
    }
    assert!(env.signal_agent("TERM").success());
    let db = env.db().display().to_string();
    let state = env.db().parent().unwrap().to_owned();
    // The state directory, the keys and the store: root's alone.
    assert_eq!(std::fs::metadata(&state).unwrap().mode() & 0o7777, 0o700);
    for f in ["host.key", "mask.key", "audit.db"] {
        assert_eq!(std::fs::metadata(state.join(f)).unwrap().mode() & 0o7777, 0o600, "{f}");
    }
    assert_eq!(std::fs::read_to_string(state.join("host.pub")).unwrap().trim(), new, "host.pub follows the rotation");

    // The old key, the new key, a key file: proven; the rotation is shown.
    for args in [vec!["--pubkey", old.as_str()], vec!["--pubkey", new.as_str()]] {
        let mut a = vec!["verify", db.as_str()];
        a.extend(args);
        let (code, out) = gh(&env, &a);
        assert_eq!(code, 0, "{out}");
        assert!(out.contains("key rotation at record") && out.contains("ok: the chain is intact"), "{out}");
    }
    let keyfile = env.path("trusted.pub");
    std::fs::write(&keyfile, format!("# recorded at install\n{old}\n")).unwrap();
    let (code, out) = gh(&env, &["verify", &db, "--pubkey-file", &keyfile.display().to_string()]);
    assert_eq!(code, 0, "{out}");
    // Without a key from outside: intact but unproven, said loudly, exit 2.
    assert!(!Path::new("/etc/gatehouse/audit.pub").exists(), "this test needs a host without /etc/gatehouse/audit.pub");
    let (code, out) = gh(&env, &["verify", &db]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("UNPROVEN") && out.contains("beside the store"), "{out}");
    // Another key: no.
    let (code, out) =
        gh(&env, &["verify", &db, "--pubkey", "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"]);
    assert_eq!(code, 1, "{out}");

    // The newest session and the newest checkpoints deleted: the chain alone cannot tell…
    let cut = copy_store(&state, &env.path("cut"));
    let cut_s = cut.display().to_string();
    let last_session = env.sessions().last().unwrap()["id"].as_str().unwrap().to_owned();
    sql(
        &cut,
        &format!(
            "DELETE FROM events WHERE seq >= (SELECT min(seq) FROM events WHERE session = '{last_session}');
             DELETE FROM sessions WHERE id = '{last_session}';"
        ),
    );
    let (code, out) = gh(&env, &["verify", &cut_s, "--pubkey", &old]);
    assert_eq!(code, 0, "a clean cut is invisible to the chain alone: {out}");
    assert!(out.contains("without --anchors"), "{out}");
    // …the checkpoints published off the host can.
    let anchors = state.join("anchors.jsonl").display().to_string();
    let (code, out) = gh(&env, &["verify", &cut_s, "--pubkey", &old, "--anchors", &anchors]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("deleted from the end"), "{out}");
    let (code, out) = gh(&env, &["verify", &db, "--pubkey", &old, "--anchors", &anchors]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("reaches the newest published checkpoint"), "{out}");

    // Export verifies before it signs…
    let bundle = env.path("bundle").display().to_string();
    let (code, out) = gh(&env, &["export", "--db", &db, "--out", &bundle, "--format", "ocsf"]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = gh(&env, &["verify", &bundle, "--pubkey", &old]);
    assert_eq!(code, 0, "a bundle made after a rotation verifies from the old key: {out}");
    let tampered = copy_store(&state, &env.path("tampered"));
    sql(&tampered, "UPDATE events SET body = replace(body, 'allow', 'deny') WHERE kind = 'session_open';");
    let (code, out) =
        gh(&env, &["export", "--db", &tampered.display().to_string(), "--out", &env.path("b2").display().to_string()]);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("does not verify"), "{out}");
    assert!(!env.path("b2").join("signature").exists());
    // …and does not follow a host.key that is a symlink.
    let linked = copy_store(&state, &env.path("linked"));
    let key = linked.parent().unwrap().join("host.key");
    std::fs::rename(&key, env.path("elsewhere.key")).unwrap();
    std::os::unix::fs::symlink(env.path("elsewhere.key"), &key).unwrap();
    let (code, out) =
        gh(&env, &["export", "--db", &linked.display().to_string(), "--out", &env.path("b3").display().to_string()]);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("symbolic link"), "{out}");
}

#[test]
fn secret_files_are_checked_and_never_shown_to_clients() {
    let mut env = Env::new("secretfiles");
    let team = env.group("team");
    let ana = env.user("ana", &[&team]);
    let pg = PgServer::start(&env.dir, &loopback(47), free_port(), "");
    let secret = pg::password_file(&env.dir, "appdb.secret", pg::APP_PASSWORD);
    let policy = |pw: &Path| {
        format!(
            "[[backend]]\nname = \"appdb\"\nprotocol = \"postgres\"\naddress = \"{}\"\ntls = \"off\"\n\
             credentials = {{ user = \"{}\", password_file = \"{}\" }}\n\n\
             [[rule]]\nname = \"team\"\nwho = {{ groups = [\"{team}\"] }}\nbackend = \"appdb\"\nstatements = [\"select\"]\n",
            pg.addr(),
            pg::APP_ROLE,
            pw.display()
        )
    };
    let run_agent = |config: &Path| -> (bool, String) {
        let mut child = Command::new(gatehouse_bin())
            .args(env.agent_args(config))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // A refused policy ends the agent at once; a good one keeps it running.
        for _ in 0..100 {
            if let Some(status) = child.try_wait().unwrap() {
                let out = child.wait_with_output().unwrap();
                return (status.success(), text(&out));
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        (true, text(&out))
    };
    // Readable by others: refused at load, and by `policy check`.
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let config = env.write_policy("policy.toml", &policy(&secret));
    let (ok, out) = run_agent(&config);
    assert!(!ok && out.contains("has mode 0644"), "{out}");
    let (code, out) = gh(&env, &["policy", "check", &config.display().to_string()]);
    assert!(code != 0 && out.contains("has mode 0644"), "{out}");
    // A symlink in its place: refused.
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let link = env.path("linked.secret");
    std::os::unix::fs::symlink(&secret, &link).unwrap();
    let linked = env.write_policy("linked.toml", &policy(&link));
    let (ok, out) = run_agent(&linked);
    assert!(!ok && out.contains("symbolic link"), "{out}");
    // Owned by someone else: refused.
    let theirs = pg::password_file(&env.dir, "theirs.secret", pg::APP_PASSWORD);
    nix_chown(&theirs, &ana);
    let theirs_cfg = env.write_policy("theirs.toml", &policy(&theirs));
    let (code, out) = gh(&env, &["policy", "check", &theirs_cfg.display().to_string()]);
    assert!(code != 0 && out.contains("not root"), "{out}");

    // A good file: the agent runs, with core dumps off.
    env.start_agent(&config);
    let pid = env.agent.as_ref().unwrap().id();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let core = limits.lines().find(|l| l.starts_with("Max core file size")).unwrap_or_default();
    assert!(core.split_whitespace().filter(|w| *w == "0").count() >= 2, "{core}");
    assert_eq!(psql(&env, &ana, &pg.host, pg.port, "SELECT 1").trim(), "1");
    // The file goes bad while the agent runs: the client gets a generic error, the log the detail.
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = psql(&env, &ana, &pg.host, pg.port, "SELECT 1");
    assert!(out.contains("could not log in") && out.contains("cannot use this login's secret"), "{out}");
    assert!(!out.contains(&secret.display().to_string()) && !out.contains("0644"), "{out}");
    let log = env.agent_log();
    assert!(log.contains(&secret.display().to_string()) && log.contains("has mode 0644"), "{log}");
}

fn nix_chown(path: &Path, user: &str) {
    assert!(Command::new("chown").arg(user).arg(path).status().unwrap().success());
}
