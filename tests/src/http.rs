//! HTTP backends for the end-to-end tests: a Python http.server that logs
//! what it receives, a WebSocket echo server, and hypercorn (which takes
//! `Upgrade: h2c`), each a real process on a loopback address, killed (by
//! pid) on drop.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

const BACKEND_PY: &str = include_str!("http/backend.py");
const WS_ECHO_PY: &str = include_str!("http/ws_echo.py");
const H2C_BACKEND_PY: &str = include_str!("http/h2c_backend.py");

/// A Python server started by the test; stops on drop.
pub struct PyServer {
    pub addr: String,
    pub log: PathBuf,
    child: Child,
}

impl PyServer {
    /// The HTTP backend on `host`, logging requests under `dir`.
    pub fn http(dir: &Path, host: &str) -> Self {
        Self::start(dir, host, "backend.py", BACKEND_PY, &[])
    }

    /// The HTTP backend speaking HTTPS with `cert` and `key`.
    pub fn https(dir: &Path, host: &str, cert: &Path, key: &Path) -> Self {
        Self::start(dir, host, "backend.py", BACKEND_PY, &[cert, key])
    }

    /// The WebSocket echo server on `host`.
    pub fn ws_echo(dir: &Path, host: &str) -> Self {
        Self::start(dir, host, "ws_echo.py", WS_ECHO_PY, &[])
    }

    /// A backend that switches a connection to HTTP/2 when asked with
    /// `Upgrade: h2c` (hypercorn), logging method, path and HTTP version.
    pub fn h2c(dir: &Path, host: &str) -> Self {
        Self::start(dir, host, "h2c_backend.py", H2C_BACKEND_PY, &[])
    }

    fn start(dir: &Path, host: &str, name: &str, code: &str, tls: &[&Path]) -> Self {
        let script = dir.join(name);
        std::fs::write(&script, code).expect("write server script");
        let log = dir.join(format!("{name}.log"));
        let mut child = Command::new("/usr/bin/python3")
            .arg(&script)
            .arg(host)
            .arg(&log)
            .args(tls)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start python server");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("stdout");
        BufReader::new(stdout).read_line(&mut line).expect("server port");
        let port: u16 = line.trim().parse().unwrap_or_else(|_| panic!("{name} did not print its port: {line:?}"));
        Self { addr: format!("{host}:{port}"), log, child }
    }

    /// Every request the server received, oldest first.
    pub fn requests(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("request log json"))
            .collect()
    }
}

impl Drop for PyServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `http` and `ws_frame` records at `db` once `done` holds of them, or
/// after 5 s, whichever is first: an exchange is recorded when its response
/// ends, which can be just after the client has read the response and left,
/// so a test that asserts on the exchange it just made waits for it here and
/// then asserts on what it got (a record that never comes still fails).
pub fn http_records_until(
    db: &Path,
    done: impl Fn(&[(String, Value, Vec<u8>)]) -> bool,
) -> Vec<(String, Value, Vec<u8>)> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let recs = http_records(db);
        if done(&recs) || std::time::Instant::now() > deadline {
            return recs;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// The `http` and `ws_frame` records of the audit store at `db`, as (kind, body JSON, data).
pub fn http_records(db: &Path) -> Vec<(String, Value, Vec<u8>)> {
    crate::settle(db);
    let conn = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .expect("open audit store");
    let mut stmt = conn
        .prepare("SELECT kind, body, data FROM events WHERE kind IN ('http', 'ws_frame') ORDER BY seq")
        .expect("query");
    stmt.query_map([], |r| {
        let body: Vec<u8> = r.get(1)?;
        let data: Option<Vec<u8>> = r.get(2)?;
        Ok((r.get::<_, String>(0)?, serde_json::from_slice(&body).unwrap_or(Value::Null), data.unwrap_or_default()))
    })
    .expect("rows")
    .map(|r| r.expect("row"))
    .collect()
}
