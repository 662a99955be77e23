//! A real MariaDB server started by a test as a child process, on a 127.x
//! address, with its own data directory and socket; stopped and removed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The login Gatehouse holds (mysql_native_password) and its database.
pub const APP_USER: &str = "gh_app";
pub const APP_PASSWORD: &str = "app-Secret-1";
pub const DATABASE: &str = "appdb";

/// TLS for a test server: its certificate, key and CA (PEM files, e.g. from
/// `pg::certs`), and whether plaintext logins are refused.
#[derive(Debug, Clone)]
pub struct ServerTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// `--require-secure-transport=ON`: a login without TLS cannot succeed.
    pub require_secure_transport: bool,
}

pub struct MariaServer {
    pub dir: PathBuf,
    pub host: String,
    pub port: u16,
    child: Option<Child>,
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

impl MariaServer {
    /// mariadb-install-db + mariadbd on `host:port` (run as the `mysql`
    /// user), with the general query log on; login `gh_app` and database `appdb`.
    pub fn start(parent: &Path, host: &str, port: u16) -> Self {
        Self::start_with(parent, host, port, None)
    }

    /// [`MariaServer::start`], serving TLS with `tls` (`--ssl-cert`,
    /// `--ssl-key`, `--ssl-ca`; the files are copied for the `mysql` user).
    pub fn start_with(parent: &Path, host: &str, port: u16, tls: Option<&ServerTls>) -> Self {
        let dir = parent.join(format!("mariadb-{port}"));
        std::fs::create_dir_all(&dir).expect("mariadb dir");
        let mut tls_args = Vec::new();
        if let Some(t) = tls {
            for (from, name, opt) in
                [(&t.ca, "ca.pem", "ssl-ca"), (&t.cert, "cert.pem", "ssl-cert"), (&t.key, "key.pem", "ssl-key")]
            {
                let to = dir.join(name);
                std::fs::copy(from, &to).expect("copy TLS file for mariadbd");
                tls_args.push(format!("--{opt}={}", to.display()));
            }
            if t.require_secure_transport {
                tls_args.push("--require-secure-transport=ON".into());
            }
        }
        // Each server its own temporary directory: the bootstrap's temporary
        // tables otherwise share /tmp with every other server the suite runs
        // at the same time (CI saw one vanish mid-install).
        let tmp = dir.join("tmp");
        std::fs::create_dir_all(&tmp).expect("mariadb tmp dir");
        check(Command::new("chown").arg("-R").arg("mysql:mysql").arg(&dir).output().expect("chown"), "chown");
        // Its Unix socket is the server's user's (and root's) alone: the test users reach it only through Gatehouse.
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).expect("chmod mariadb dir");
        let data = dir.join("data");
        check(
            Command::new("/usr/bin/mariadb-install-db")
                .args(["--no-defaults", "--user=mysql", "--skip-test-db", "--skip-name-resolve"])
                .arg(format!("--datadir={}", data.display()))
                .arg(format!("--tmpdir={}", tmp.display()))
                .output()
                .expect("mariadb-install-db"),
            "mariadb-install-db",
        );
        let child = Command::new("/usr/sbin/mariadbd")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--tmpdir={}", tmp.display()))
            .arg(format!("--socket={}", dir.join("sock").display()))
            .arg(format!("--pid-file={}", dir.join("pid").display()))
            .arg(format!("--log-error={}", dir.join("error.log").display()))
            .arg(format!("--general-log-file={}", dir.join("general.log").display()))
            .arg(format!("--bind-address={host}"))
            .arg(format!("--port={port}"))
            .args(["--user=mysql", "--general-log=1", "--skip-name-resolve", "--skip-log-bin"])
            .args(["--innodb-buffer-pool-size=16M", "--innodb-log-file-size=8M", "--max-connections=60"])
            .args(&tls_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mariadbd");
        let s = Self { dir, host: host.to_owned(), port, child: Some(child) };
        let deadline = Instant::now() + Duration::from_secs(60);
        // Ready when both listen: mariadbd binds its Unix socket (the file
        // exists) a moment before it listens on it, and a client connecting
        // in between is refused (CI saw `ERROR 2002 … (111)` from the first
        // admin statement), so connect to it rather than look for the file.
        let sock = s.dir.join("sock");
        while std::net::TcpStream::connect((s.host.as_str(), port)).is_err()
            || std::os::unix::net::UnixStream::connect(&sock).is_err()
        {
            assert!(Instant::now() < deadline, "mariadbd did not start:\n{}", s.error_log());
            std::thread::sleep(Duration::from_millis(100));
        }
        s.admin(&format!(
            "CREATE DATABASE {DATABASE};
             CREATE USER '{APP_USER}'@'%' IDENTIFIED VIA mysql_native_password USING PASSWORD('{APP_PASSWORD}');
             GRANT ALL ON {DATABASE}.* TO '{APP_USER}'@'%';"
        ));
        s
    }

    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// Runs SQL as root over the Unix socket (not through Gatehouse); tab-separated rows.
    pub fn admin(&self, sql: &str) -> String {
        let out = Command::new("/usr/bin/mariadb")
            .arg("--no-defaults")
            .arg(format!("--socket={}", self.dir.join("sock").display()))
            .args(["-u", "root", "-N", "-B", "-e", sql])
            .output()
            .expect("mariadb admin");
        String::from_utf8_lossy(&check(out, &format!("admin SQL {sql:?}")).stdout).trim().to_owned()
    }

    /// What the server was sent (its general query log).
    pub fn general_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("general.log")).unwrap_or_default()
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }
}

impl Drop for MariaServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SIGTERM to the server this test started: a clean shutdown.
            let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).output();
            let deadline = Instant::now() + Duration::from_secs(20);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
