//! TLS on both legs of a MySQL session: real MariaDB servers serving TLS
//! with certificates made by the test (openssl), reached through the eBPF
//! redirect by the real `mariadb` client and PyMySQL. Asserts on what the
//! server saw (its session's cipher, its general log) and on what the client
//! saw. Needs root.
#![expect(clippy::unwrap_used, reason = "test helpers panic with context on failure")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use gatehouse_e2e::mysql::{self, MariaServer, ServerTls};
use gatehouse_e2e::{Env, free_port, loopback, pg};
use serde_json::Value;

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// The SHA-256 fingerprint of a PEM certificate, as lowercase hex.
fn fingerprint(cert: &Path) -> String {
    let o =
        Command::new("openssl").args(["x509", "-noout", "-fingerprint", "-sha256", "-in"]).arg(cert).output().unwrap();
    text(&o).split('=').nth(1).unwrap_or_default().trim().replace(':', "").to_lowercase()
}

/// The `mariadb` client as `user`, over TCP to `db`'s own address (the
/// redirect takes it to Gatehouse).
fn mariadb(env: &Env, user: &str, db: &MariaServer, args: &[&str]) -> Output {
    let port = db.port.to_string();
    let mut all =
        vec!["--no-defaults", "--protocol=TCP", "-h", &db.host, "-P", &port, "-u", "whoever", "-N", "-B", "-A"];
    all.extend_from_slice(args);
    env.run_as(user, None, Path::new("/usr/bin/mariadb"), &all)
}

/// A PyMySQL script as `user`, given `db`'s host and port as arguments.
fn python(env: &Env, user: &str, db: &MariaServer, script: &str) -> Output {
    let path = env.path(&format!("script-{}.py", free_port()));
    std::fs::write(&path, script).unwrap();
    let port = db.port.to_string();
    env.run_as(user, None, Path::new("/usr/bin/python3"), &[path.to_str().unwrap(), &db.host, &port])
}

/// The query that shows, on the server, whether the session is TLS.
const CIPHER: &str = "SELECT variable_value FROM information_schema.session_status WHERE variable_name = 'Ssl_cipher'";

fn backend_status(env: &Env, name: &str) -> Value {
    let st = env.status();
    let found = st
        .get("backends")
        .and_then(Value::as_array)
        .and_then(|bs| bs.iter().find(|b| b.get("name") == Some(&Value::from(name))));
    found.cloned().unwrap_or_else(|| panic!("no backend {name}: {st:#}"))
}

fn secret(env: &Env) -> PathBuf {
    pg::password_file(&env.dir, "appdb.secret", mysql::APP_PASSWORD)
}

#[test]
fn verified_tls_to_a_mariadb_that_refuses_plaintext() {
    let mut env = Env::new("mytlsok");
    let analyst = env.group("analyst");
    let ana = env.user("ana", &[&analyst]);
    let host = loopback(44);
    let (ca, cert, key) = pg::certs(&env.path("tls"), &host, 2);
    let tls = ServerTls { ca: ca.clone(), cert: cert.clone(), key, require_secure_transport: true };
    let db = MariaServer::start_with(&env.dir, &host, free_port(), Some(&tls));
    db.admin("CREATE TABLE appdb.victim (id int); INSERT INTO appdb.victim VALUES (1);");
    // The server really refuses a plaintext login (the test runs outside the
    // redirected cgroup: this goes straight to it).
    let port = db.port.to_string();
    let password = format!("-p{}", mysql::APP_PASSWORD);
    let direct = |ssl: &str| {
        Command::new("/usr/bin/mariadb")
            .args(["--no-defaults", "--protocol=TCP", "-h", &host, "-P", &port, "-u", mysql::APP_USER, &password])
            .args([ssl, "-N", "-e", "SELECT 'direct'"])
            .output()
            .unwrap()
    };
    let plain = direct("--skip-ssl");
    assert!(!plain.status.success() && text(&plain).contains("Access denied"), "{}", text(&plain));
    let over_tls = direct("--ssl");
    assert!(text(&over_tls).contains("direct"), "the same login over TLS works: {}", text(&over_tls));

    let policy = format!(
        r#"
[[backend]]
name = "shop"
protocol = "mysql"
address = "{addr}"
tls = "verify"
ca_file = "{ca}"
credentials = {{ user = "{user}", password_file = "{s}" }}

[[rule]]
name = "analysts read"
who = {{ groups = ["{analyst}"] }}
backend = "shop"
statements = ["select"]
"#,
        addr = db.addr(),
        ca = ca.display(),
        user = mysql::APP_USER,
        s = secret(&env).display(),
    );
    let config = env.write_policy("policy.toml", &policy);
    env.start_agent(&config);

    // The mariadb client (plaintext to Gatehouse on this host): the server's session is TLS.
    let out =
        mariadb(&env, &ana, &db, &["--skip-ssl", "appdb", "-e", &format!("{CIPHER}; SELECT count(*) FROM victim")]);
    let t = text(&out);
    assert!(out.status.success(), "{t}\n{}", env.agent_log());
    let lines: Vec<&str> = t.lines().collect();
    assert_eq!(lines.len(), 2, "{t}");
    assert!(!lines[0].trim().is_empty() && lines[0] != "NULL", "the server's session has a cipher: {t}");
    assert_eq!(lines[1], "1", "{t}");
    // A refused DROP is still refused, and never reaches the server.
    let t = text(&mariadb(&env, &ana, &db, &["--skip-ssl", "appdb", "-e", "DROP TABLE victim"]));
    assert!(t.contains("ERROR 1227 (42000)") && t.contains("analysts read"), "{t}");
    assert_eq!(db.admin("SELECT count(*) FROM appdb.victim"), "1", "victim must survive");
    assert!(!db.general_log().contains("DROP TABLE"), "{}", db.general_log());

    // PyMySQL too.
    let out = python(
        &env,
        &ana,
        &db,
        &format!(
            r#"
import json, sys
import pymysql
c = pymysql.connect(host=sys.argv[1], port=int(sys.argv[2]), user="whoever", password="", database="appdb", autocommit=True)
cur = c.cursor()
def run(sql):
    try:
        cur.execute(sql)
        print(json.dumps({{"rows": [list(r) for r in cur.fetchall()]}}))
    except pymysql.MySQLError as e:
        print(json.dumps({{"error": e.args[0], "message": e.args[1]}}))
run("{CIPHER}")
run("DROP TABLE victim")
run("SELECT count(*) FROM victim")
"#
        ),
    );
    let t = text(&out);
    let lines: Vec<Value> =
        String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    assert_eq!(lines.len(), 3, "{t}\n{}", env.agent_log());
    let cipher = lines[0]["rows"][0][0].as_str().unwrap_or_default();
    assert!(!cipher.is_empty(), "{t}");
    assert_eq!(lines[1]["error"], 1227, "{t}");
    assert_eq!(lines[2]["rows"], serde_json::json!([[1]]), "{t}");
    assert_eq!(db.admin("SELECT count(*) FROM appdb.victim"), "1", "victim must survive");

    // The login is recorded as verified TLS, with the server's certificate.
    let b = backend_status(&env, "shop");
    assert_eq!(b["last_login"]["tls"], "verified", "{b:#}");
    assert_eq!(b["last_login"]["server_name"], host.as_str(), "{b:#}");
    assert_eq!(b["last_login"]["certificate_sha256"].as_str().unwrap_or_default(), fingerprint(&cert), "{b:#}");
    assert!(b["last_login"]["tls_cipher"].as_str().is_some_and(|c| !c.is_empty()), "{b:#}");
    assert!(b["warnings"].as_array().unwrap().is_empty(), "{b:#}");
}

#[test]
fn verify_refuses_another_ca_another_name_and_a_server_without_tls() {
    let mut env = Env::new("mytlsbad");
    let analyst = env.group("analyst");
    let ana = env.user("ana", &[&analyst]);
    // Signed by a CA the backend does not trust.
    let h1 = loopback(45);
    let (_, cert1, key1) = pg::certs(&env.path("ca-a"), &h1, 2);
    let (other_ca, _, _) = pg::certs(&env.path("ca-b"), &h1, 2);
    let tls1 = ServerTls { ca: env.path("ca-a/ca.crt"), cert: cert1, key: key1, require_secure_transport: false };
    let s1 = MariaServer::start_with(&env.dir, &h1, free_port(), Some(&tls1));
    // Signed by the trusted CA, for another address.
    let h2 = loopback(46);
    let (ca2, cert2, key2) = pg::certs(&env.path("ca-n"), "127.0.0.1", 2);
    let tls2 = ServerTls { ca: ca2.clone(), cert: cert2, key: key2, require_secure_transport: false };
    let s2 = MariaServer::start_with(&env.dir, &h2, free_port(), Some(&tls2));
    // No TLS at all (no CLIENT_SSL in its greeting); the backend says nothing of tls: verify.
    let h3 = loopback(47);
    let s3 = MariaServer::start(&env.dir, &h3, free_port());
    // Nothing listens here.
    let gone = format!("{}:{}", loopback(50), free_port());
    let s = secret(&env);
    let policy = format!(
        r#"
[[backend]]
name = "other-ca"
protocol = "mysql"
address = "{a1}"
tls = "verify"
ca_file = "{other_ca}"
credentials = {{ user = "{user}", password_file = "{s}" }}

[[backend]]
name = "wrong-name"
protocol = "mysql"
address = "{a2}"
tls = "verify"
ca_file = "{ca2}"
credentials = {{ user = "{user}", password_file = "{s}" }}

[[backend]]
name = "no-tls"
protocol = "mysql"
address = "{a3}"
credentials = {{ user = "{user}", password_file = "{s}" }}

[[rule]]
name = "r1"
who = {{ groups = ["{analyst}"] }}
backend = "other-ca"
statements = ["select"]

[[rule]]
name = "r2"
who = {{ groups = ["{analyst}"] }}
backend = "wrong-name"
statements = ["select"]

[[rule]]
name = "r3"
who = {{ groups = ["{analyst}"] }}
backend = "no-tls"
statements = ["select"]

[[backend]]
name = "gone"
protocol = "mysql"
address = "{a4}"
tls = "off"
credentials = {{ user = "{user}", password_file = "{s}" }}

[[rule]]
name = "r4"
who = {{ groups = ["{analyst}"] }}
backend = "gone"
statements = ["select"]
"#,
        a1 = s1.addr(),
        a2 = s2.addr(),
        a3 = s3.addr(),
        a4 = gone,
        other_ca = other_ca.display(),
        ca2 = ca2.display(),
        user = mysql::APP_USER,
        s = s.display(),
    );
    let config = env.write_policy("policy.toml", &policy);
    env.start_agent(&config);
    for (db, why) in [
        (&s1, "invalid peer certificate"),
        (&s2, "not valid for name"),
        (&s3, "does not offer TLS (no CLIENT_SSL in its greeting), and tls = \"verify\" requires it"),
    ] {
        let out = mariadb(&env, &ana, db, &["--skip-ssl", "-e", "SELECT 'reached'"]);
        let t = text(&out);
        assert!(!out.status.success() && !t.contains("reached"), "{t}");
        assert!(
            t.contains("ERROR 1045") && t.contains("over TLS") && t.contains(why),
            "{why}: {t}\n{}",
            env.agent_log()
        );
        // Nothing reached the server: no login, no statement.
        let log = db.general_log();
        let login = format!("Connect\t{}@", mysql::APP_USER);
        assert!(!log.contains(&login) && !log.contains("reached"), "{why}: {log}");
    }
    // A backend that cannot be reached: the client is told so (a server error
    // code: a client-side one such as 2003 would read as a malformed packet).
    let port = gone.rsplit(':').next().unwrap().to_owned();
    let args = ["--no-defaults", "--protocol=TCP", "-h", &loopback(50), "-P", &port, "-u", "whoever", "--skip-ssl"];
    let t = text(&env.run_as(&ana, None, Path::new("/usr/bin/mariadb"), &[&args[..], &["-e", "SELECT 1"]].concat()));
    assert!(t.contains("ERROR 1105") && t.contains("cannot reach backend gone"), "{t}");
}

#[test]
fn client_tls_answers_the_clients_ssl_request() {
    let mut env = Env::new("mytlscl");
    let analyst = env.group("analyst");
    let ana = env.user("ana", &[&analyst]);
    // A backend with client_tls, itself reached over verified TLS: both legs.
    let h1 = loopback(48);
    let (server_ca, cert1, key1) = pg::certs(&env.path("server"), &h1, 2);
    let tls1 = ServerTls { ca: server_ca.clone(), cert: cert1, key: key1, require_secure_transport: true };
    let s1 = MariaServer::start_with(&env.dir, &h1, free_port(), Some(&tls1));
    // The certificate Gatehouse shows clients, from another CA, for the address they dial.
    let (agent_ca, agent_cert, agent_key) = pg::certs(&env.path("agent"), &h1, 2);
    std::fs::set_permissions(env.path("agent"), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&agent_ca, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    // A backend without client_tls, and without TLS itself (reached with tls = "prefer").
    let h2 = loopback(49);
    let s2 = MariaServer::start(&env.dir, &h2, free_port());
    let s = secret(&env);
    let policy = format!(
        r#"
[[backend]]
name = "shop"
protocol = "mysql"
address = "{a1}"
tls = "verify"
ca_file = "{server_ca}"
client_tls = {{ cert_file = "{cert}", key_file = "{key}" }}
credentials = {{ user = "{user}", password_file = "{s}" }}

[[backend]]
name = "plain"
protocol = "mysql"
address = "{a2}"
tls = "prefer"
credentials = {{ user = "{user}", password_file = "{s}" }}

[[rule]]
name = "r1"
who = {{ groups = ["{analyst}"] }}
backend = "shop"
statements = ["select"]

[[rule]]
name = "r2"
who = {{ groups = ["{analyst}"] }}
backend = "plain"
statements = ["select"]
"#,
        a1 = s1.addr(),
        a2 = s2.addr(),
        server_ca = server_ca.display(),
        cert = agent_cert.display(),
        key = agent_key.display(),
        user = mysql::APP_USER,
        s = s.display(),
    );
    let config = env.write_policy("policy.toml", &policy);
    env.start_agent(&config);
    let ssl_ca = format!("--ssl-ca={}", agent_ca.display());
    let strict = ["--ssl", "--ssl-verify-server-cert", ssl_ca.as_str()];

    // The client demands TLS and checks Gatehouse's certificate against its CA.
    let mut args: Vec<&str> = strict.to_vec();
    let both = format!("\\s\n{CIPHER}");
    args.extend(["-e", &both]);
    let out = mariadb(&env, &ana, &s1, &args);
    let t = text(&out);
    assert!(out.status.success(), "{t}\n{}", env.agent_log());
    let ssl_line = t.lines().find(|l| l.starts_with("SSL:")).unwrap_or_default();
    assert!(ssl_line.contains("Cipher in use"), "the client's leg is TLS: {t}");
    let last = t.lines().last().unwrap_or_default();
    assert!(!last.is_empty() && last != "NULL" && !last.starts_with('-'), "the server's leg is TLS too: {t}");
    // A client that does not ask for TLS still gets in.
    let out = mariadb(&env, &ana, &s1, &["--skip-ssl", "-e", "SELECT 'plain client'"]);
    assert!(text(&out).contains("plain client"), "{}", text(&out));
    // PyMySQL, checking the certificate and its name.
    let out = python(
        &env,
        &ana,
        &s1,
        &format!(
            r#"
import sys
import pymysql
c = pymysql.connect(host=sys.argv[1], port=int(sys.argv[2]), user="whoever", password="",
                    ssl={{"ca": "{ca}", "check_hostname": True}})
print("tls", c._sock.version())
cur = c.cursor()
cur.execute("SELECT 'py over tls'")
print(cur.fetchall()[0][0])
"#,
            ca = agent_ca.display()
        ),
    );
    let t = text(&out);
    assert!(t.contains("tls TLSv1.") && t.contains("py over tls"), "{t}\n{}", env.agent_log());

    // Without client_tls, a client that requires TLS fails, clearly, before logging in.
    let out = mariadb(&env, &ana, &s2, &[strict[0], strict[1], strict[2], "-e", "SELECT 'reached'"]);
    let t = text(&out);
    assert!(!out.status.success() && t.contains("SSL"), "{t}");
    assert!(!s2.general_log().contains("reached"), "{}", s2.general_log());
    // …and without asking for TLS it works as before.
    let out = mariadb(&env, &ana, &s2, &["--skip-ssl", "-e", "SELECT 'reached'"]);
    assert!(text(&out).contains("reached"), "{}", text(&out));
    // tls = "prefer" went on in plaintext with a server that offers no TLS, and says so.
    let b = backend_status(&env, "plain");
    assert_eq!(b["last_login"]["tls"], "off", "{b:#}");
    let warnings = b["warnings"].to_string();
    assert!(warnings.contains("tls = prefer") && warnings.contains("no TLS"), "{b:#}");
    let b = backend_status(&env, "shop");
    assert_eq!(b["last_login"]["tls"], "verified", "{b:#}");
}
