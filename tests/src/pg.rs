//! A real PostgreSQL server started by a test, on a 127.x address, with its
//! own data directory; stopped and removed on drop.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = "/usr/lib/postgresql/15/bin";

/// Roles every test server has, with their passwords and how they log in.
pub const APP_ROLE: &str = "gh_app";
pub const APP_PASSWORD: &str = "app-Secret-1";
pub const MD5_ROLE: &str = "gh_md5";
pub const CLEAR_ROLE: &str = "gh_clear";
pub const RO_ROLE: &str = "gh_readonly";

/// The start of a Python script that speaks the wire protocol itself (run
/// with the server's host and port as arguments): it logs in as `x` to
/// `appdb` and reads the answer; `msg(tag, body)` frames a message, `cstr`
/// makes a C string, `answer()` reads up to ReadyForQuery, `codes(frames)`
/// shows each message's tag (an error's SQLSTATE), and `query(label, sql)`
/// sends a simple Query and prints its codes after `label`.
pub const RAW_CLIENT_PY: &str = r#"
import sys, socket, struct
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
s.settimeout(20)
def msg(t, body): return t + struct.pack("!i", 4 + len(body)) + body
def cstr(x): return x.encode() + b"\x00"
body = b"user\x00x\x00database\x00appdb\x00\x00"
s.sendall(struct.pack("!ii", 8 + len(body), 196608) + body)
buf = b""
def answer():
    global buf
    out = []
    while True:
        while len(buf) >= 5:
            t = buf[0:1]; n = struct.unpack("!i", buf[1:5])[0]
            if len(buf) < 1 + n: break
            out.append((t, buf[5:1+n])); buf = buf[1+n:]
            if t == b"Z": return out
        c = s.recv(65536)
        if not c: return out + [(b"EOF", b"")]
        buf += c
def codes(frames): return [f[1].split(b"\x00C")[1].split(b"\x00")[0].decode() if f[0] == b"E" else f[0].decode() for f in frames]
def query(label, sql):
    s.sendall(msg(b"Q", cstr(sql)))
    print(label, codes(answer()), flush=True)
answer()
"#;

pub struct PgServer {
    pub dir: PathBuf,
    pub host: String,
    pub port: u16,
    /// The postmaster's pid, so the server is stopped even if its data
    /// directory is gone by the time this is dropped.
    pid: Option<u32>,
}

fn as_postgres(program: &str) -> Command {
    let mut c = Command::new("setpriv");
    c.args(["--reuid", "postgres", "--regid", "postgres", "--init-groups", "--"]).arg(program);
    c
}

fn check(out: Output, what: &str) -> Output {
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl PgServer {
    /// initdb + start on `host:port`; roles gh_app (SCRAM), gh_md5 (md5),
    /// gh_clear (cleartext password), gh_readonly (SCRAM); database appdb.
    pub fn start(parent: &Path, host: &str, port: u16, extra_conf: &str) -> Self {
        let dir = parent.join(format!("pg-{port}"));
        std::fs::create_dir_all(&dir).expect("pg dir");
        check(Command::new("chown").arg("postgres:postgres").arg(&dir).output().expect("chown"), "chown");
        // Its Unix socket (local logins are trusted) is the server's user's alone:
        // the test users reach the server only through Gatehouse.
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).expect("chmod pg dir");
        let data = dir.join("data");
        check(
            as_postgres(&format!("{BIN}/initdb"))
                .arg("-D")
                .arg(&data)
                .args([
                    "--username=postgres",
                    "--auth-local=trust",
                    "--auth-host=reject",
                    "--encoding=UTF8",
                    "--locale=C",
                    "--no-sync",
                ])
                .output()
                .expect("initdb"),
            "initdb",
        );
        let conf = format!(
            "listen_addresses = '{host}'\nport = {port}\nunix_socket_directories = '{}'\nfsync = off\n\
             password_encryption = 'scram-sha-256'\nmax_connections = 120\nlog_min_messages = warning\n{extra_conf}\n",
            dir.display()
        );
        append(&data.join("postgresql.conf"), &conf);
        let hba = format!(
            "local all all trust\nhost all {MD5_ROLE} 127.0.0.0/8 md5\nhost all {CLEAR_ROLE} 127.0.0.0/8 password\n\
             host all all 127.0.0.0/8 scram-sha-256\nhost all all ::1/128 scram-sha-256\n"
        );
        std::fs::write(data.join("pg_hba.conf"), hba).expect("pg_hba");
        check(
            as_postgres(&format!("{BIN}/pg_ctl"))
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(dir.join("server.log"))
                .args(["-w", "-t", "30", "start"])
                .output()
                .expect("pg_ctl start"),
            "pg_ctl start",
        );
        let pid = std::fs::read_to_string(data.join("postmaster.pid"))
            .ok()
            .and_then(|t| t.lines().next().and_then(|l| l.trim().parse().ok()));
        let s = Self { dir, host: host.to_owned(), port, pid };
        s.admin(&format!(
            "SET password_encryption = 'scram-sha-256';
             CREATE ROLE {APP_ROLE} LOGIN PASSWORD '{APP_PASSWORD}';
             CREATE ROLE {RO_ROLE} LOGIN PASSWORD '{APP_PASSWORD}';
             CREATE ROLE {CLEAR_ROLE} LOGIN PASSWORD '{APP_PASSWORD}';
             SET password_encryption = 'md5';
             CREATE ROLE {MD5_ROLE} LOGIN PASSWORD '{APP_PASSWORD}';"
        ));
        s.admin(&format!("CREATE DATABASE appdb OWNER {APP_ROLE}"));
        s
    }

    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// Runs SQL as the superuser over the Unix socket (not through Gatehouse).
    pub fn admin(&self, sql: &str) -> String {
        self.admin_db("postgres", sql)
    }

    pub fn admin_db(&self, db: &str, sql: &str) -> String {
        let out = as_postgres("/usr/bin/psql")
            .arg("-h")
            .arg(&self.dir)
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                db,
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ])
            .output()
            .expect("psql admin");
        String::from_utf8_lossy(&check(out, &format!("admin SQL {sql:?}")).stdout).trim().to_owned()
    }

    /// Stops the server (fast shutdown), as an outage would; [`Self::resume`] starts it again.
    pub fn stop(&self) {
        check(
            as_postgres(&format!("{BIN}/pg_ctl"))
                .arg("-D")
                .arg(self.dir.join("data"))
                .args(["-m", "fast", "-w", "stop"])
                .output()
                .expect("pg_ctl stop"),
            "pg_ctl stop",
        );
    }

    /// Starts a server [`Self::stop`] stopped.
    pub fn resume(&self) {
        check(
            as_postgres(&format!("{BIN}/pg_ctl"))
                .arg("-D")
                .arg(self.dir.join("data"))
                .arg("-l")
                .arg(self.dir.join("server.log"))
                .args(["-w", "-t", "30", "start"])
                .output()
                .expect("pg_ctl start"),
            "pg_ctl start",
        );
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(path).expect("open conf");
    f.write_all(text.as_bytes()).expect("write conf");
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let stopped = as_postgres(&format!("{BIN}/pg_ctl"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "stop"])
            .output()
            .is_ok_and(|o| o.status.success());
        if let (false, Some(pid)) = (stopped, self.pid) {
            // SIGQUIT: PostgreSQL's immediate shutdown, sent to the server we started.
            let _ = Command::new("kill").args(["-QUIT", &pid.to_string()]).output();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Writes a password file Gatehouse reads (root-only, 0600).
pub fn password_file(dir: &Path, name: &str, password: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, format!("{password}\n")).expect("write secret");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod secret");
    p
}

/// A CA (`ca.crt`, `ca.key`) and a certificate for `ip` signed by it
/// (`server.crt`, `server.key`, valid `days`, which may be -1 for one
/// already expired), made with openssl in `dir`. Returns (ca, cert, key).
pub fn certs(dir: &Path, ip: &str, days: i32) -> (PathBuf, PathBuf, PathBuf) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl").args(args).current_dir(dir).output().expect("openssl");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    std::fs::create_dir_all(dir).expect("cert dir");
    std::fs::write(dir.join("san.ext"), format!("subjectAltName=IP:{ip}\n")).expect("san");
    let days = days.to_string();
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
        &days,
        "-extfile",
        "san.ext",
        "-out",
        "server.crt",
    ]);
    (dir.join("ca.crt"), dir.join("server.crt"), dir.join("server.key"))
}

/// `postgresql.conf` lines serving TLS with `cert` and `key`, copied into
/// `dir` for the postgres user (who must own a key it reads).
pub fn ssl_conf(dir: &Path, cert: &Path, key: &Path) -> String {
    use std::os::unix::fs::PermissionsExt;
    let copy = |from: &Path, name: &str| {
        let to = dir.join(name);
        std::fs::copy(from, &to).expect("copy for postgres");
        let ok = Command::new("chown").arg("postgres:postgres").arg(&to).status().expect("chown");
        assert!(ok.success(), "chown postgres {}", to.display());
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        to
    };
    format!(
        "ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\n",
        copy(cert, "pg.crt").display(),
        copy(key, "pg.key").display()
    )
}
