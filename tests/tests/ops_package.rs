//! The Debian package end to end: `dpkg -i` the .deb `cargo xtask test`
//! built, check the unit with `systemd-analyze verify`, start the agent the
//! way the unit does (its ExecStart, with a `$NOTIFY_SOCKET` the test
//! listens on, since systemd is not PID 1 here), reach a real PostgreSQL
//! through it with psql, scrape its metrics and parse them with Python's
//! `prometheus_client` parser, reload it with SIGHUP (the unit's
//! ExecReload), stop it, purge the package, and check that nothing is left
//! attached, pinned or on disk. The agent attaches to the test's child
//! cgroup (`[agent] cgroup` in the policy the test puts in /etc/gatehouse),
//! never the root cgroup. Needs root.
#![expect(clippy::unwrap_used, clippy::expect_used, reason = "test code panics with context on failure")]

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use gatehouse_e2e::pg::{self, PgServer};
use gatehouse_e2e::{Env, free_port, loopback};
use serde_json::Value;

const UNIT: &str = "/lib/systemd/system/gatehouse.service";
const BIN: &str = "/usr/bin/gatehouse";
const STATE: &str = "/var/lib/gatehouse";
const ETC: &str = "/etc/gatehouse";

fn sh(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Purges the package (and stops the agent) even when the test fails.
struct Installed {
    agent: Option<Child>,
}

impl Drop for Installed {
    fn drop(&mut self) {
        if let Some(mut a) = self.agent.take() {
            let _ = Command::new("kill").args(["-TERM", &a.id().to_string()]).output();
            let deadline = Instant::now() + Duration::from_secs(20);
            while a.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = a.kill();
            let _ = a.wait();
        }
        let _ = Command::new("dpkg").args(["--purge", "gatehouse"]).output();
    }
}

/// The unit's ExecStart, split as systemd would (no quoting in ours).
fn exec_start(unit: &str) -> Vec<String> {
    let line = unit.lines().find_map(|l| l.strip_prefix("ExecStart=")).expect("the unit has an ExecStart");
    line.split_whitespace().map(str::to_owned).collect()
}

/// A privileged port (the unit passes no --allow-unprivileged-port) that is free now.
fn privileged_port() -> u16 {
    let pid = std::process::id();
    (0..80)
        .map(|i| u16::try_from(900 + (pid + i) % 80).unwrap())
        .find(|p| {
            std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok() && std::net::TcpListener::bind(("::1", *p)).is_ok()
        })
        .expect("a free port between 900 and 980")
}

/// Waits for a datagram on the notify socket containing `what`.
fn wait_notify(sock: &UnixDatagram, what: &str, log: &dyn Fn() -> String) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut buf = [0u8; 4096];
    loop {
        assert!(Instant::now() < deadline, "no {what} from the agent within 60 s:\n{}", log());
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(buf.get(..n).unwrap()).into_owned();
            if msg.lines().any(|l| l == what) {
                return msg;
            }
        }
    }
}

fn http_get(port: u16, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to the metrics endpoint");
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

/// Parses an exposition with Python's prometheus_client (Debian's
/// python3-prometheus-client) and returns {sample name: [[labels, value]]}.
fn parse_metrics(env: &Env, body: &str) -> Value {
    let file = env.path("scrape.txt");
    std::fs::write(&file, body).unwrap();
    let script = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = {}
for fam in text_string_to_metric_families(open(sys.argv[1]).read()):
    for s in fam.samples:
        out.setdefault(s.name, []).append([s.labels, s.value])
print(json.dumps(out))
"#;
    let out = sh(Command::new("/usr/bin/python3").arg("-c").arg(script).arg(&file));
    assert!(out.status.success(), "the Prometheus text parser rejected the scrape: {}\n{body}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn sample(m: &Value, name: &str, labels: &[(&str, &str)]) -> f64 {
    m[name]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| labels.iter().all(|(k, v)| s.get(0).and_then(|l| l.get(*k)).and_then(Value::as_str) == Some(*v)))
        .map(|s| s.get(1).and_then(Value::as_f64).unwrap_or(0.0))
        .sum()
}

#[test]
fn the_package_installs_serves_psql_exposes_metrics_and_purges_clean() {
    gatehouse_e2e::require_root();
    let deb = PathBuf::from(std::env::var_os("GATEHOUSE_DEB").expect(
        "GATEHOUSE_DEB is not set: run `cargo xtask test`, which builds the .deb of this tree and passes its path",
    ));
    assert!(deb.exists(), "{} is missing", deb.display());
    let st = sh(Command::new("dpkg-query").args(["-W", "-f=${Status}", "gatehouse"]));
    assert!(
        !String::from_utf8_lossy(&st.stdout).contains("installed")
            || String::from_utf8_lossy(&st.stdout).contains("not-installed"),
        "a gatehouse package is already installed on this machine; this test installs and purges its own"
    );
    assert!(!Path::new(STATE).exists(), "{STATE} exists: this test would remove someone's audit store on purge");

    let mut env = Env::new("opspkg");
    let analyst = env.group("analyst");
    let ana = env.user("ana", &[&analyst]);
    let pg = PgServer::start(&env.dir, &loopback(41), free_port(), "");
    pg.admin_db(
        "appdb",
        &format!(
            "CREATE TABLE items (id int PRIMARY KEY, name text);
             INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 10) g;
             ALTER TABLE items OWNER TO {};",
            pg::APP_ROLE
        ),
    );
    let secret = pg::password_file(&env.dir, "appdb.secret", pg::APP_PASSWORD);

    // 1. Install.
    let mut installed = Installed { agent: None };
    let out = sh(Command::new("dpkg").arg("-i").arg(&deb));
    assert!(out.status.success(), "dpkg -i: {}", text(&out));
    for p in [BIN, UNIT, "/etc/gatehouse/gatehouse.toml", "/usr/share/man/man1/gatehouse.1.gz"] {
        assert!(Path::new(p).exists(), "{p} was not installed");
    }
    assert!(Path::new("/usr/share/bash-completion/completions/gatehouse").exists());
    let mode = std::fs::metadata(STATE).expect("the state directory").permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "{STATE} must be 0700");
    assert!(sh(Command::new("getent").args(["group", "gatehouse-auditors"])).status.success(), "auditors' group");
    // The starter policy loads as it is (nothing in force).
    let out = sh(Command::new(BIN).args(["policy", "check", ETC]));
    assert!(out.status.success(), "the starter policy: {}", text(&out));

    // 2. The unit as systemd reads it.
    let out = sh(Command::new("systemd-analyze").args(["verify", UNIT]));
    let verify = text(&out);
    assert!(out.status.success(), "systemd-analyze verify: {verify}");
    for bad in ["Unknown", "Invalid", "Failed to parse", "ignoring"] {
        assert!(!verify.contains(bad), "systemd-analyze verify complains: {verify}");
    }
    let unit = std::fs::read_to_string(UNIT).unwrap();
    assert!(unit.contains("Type=notify") && unit.contains("ExecReload=/bin/kill -HUP $MAINPID"), "{unit}");

    // 3. An operator's policy file, with this test's cgroup, pins, port and sockets.
    let port = privileged_port();
    let metrics_port = free_port();
    let control = env.control();
    std::fs::write(
        Path::new(ETC).join("zz-e2e.toml"),
        format!(
            r#"[agent]
cgroup = "{cgroup}"
pin_dir = "{pins}"
listen_port = {port}
control_socket = "{control}"
metrics = "127.0.0.1:{metrics_port}"

[[backend]]
name = "appdb"
protocol = "postgres"
address = "{addr}"
tls = "off"
credentials = {{ user = "{app}", password_file = "{secret}" }}

[[rule]]
name = "analysts read items"
who = {{ groups = ["{analyst}"] }}
backend = "appdb"
statements = ["select"]
"#,
            cgroup = env.cgroup.display(),
            pins = env.pin_dir.display(),
            control = control.display(),
            addr = pg.addr(),
            app = pg::APP_ROLE,
            secret = secret.display(),
        ),
    )
    .unwrap();

    // 4. Start it as the unit does: its ExecStart, a notify socket, in the test cgroup.
    let notify_path = env.path("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let argv = exec_start(&unit);
    assert_eq!(argv.first().map(String::as_str), Some(BIN), "{argv:?}");
    let log_path = env.path("agent.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let agent = Command::new("sh")
        .arg("-c")
        .arg("echo $$ > \"$0/cgroup.procs\" && exec \"$@\"")
        .arg(&env.cgroup)
        .args(&argv)
        .env("NOTIFY_SOCKET", &notify_path)
        .env("GATEHOUSE_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let pid = agent.id();
    installed.agent = Some(agent);
    let agent_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let ready = wait_notify(&notify, "READY=1", &agent_log);
    assert!(ready.contains(&format!("MAINPID={pid}")), "{ready}");

    let ctl = control.display().to_string();
    let status: Value =
        serde_json::from_slice(&sh(Command::new(BIN).args(["status", "--json", "--control-socket", &ctl])).stdout)
            .expect("status --json");
    assert_eq!(status["cgroup"], env.cgroup.display().to_string(), "attached to the test cgroup only: {status:#}");
    assert_eq!(status["audit_db"], format!("{STATE}/audit.db"), "{status:#}");
    assert_eq!(status["health"], "ok", "{status:#}");
    assert_eq!(status["metrics"], format!("http://127.0.0.1:{metrics_port}/metrics"), "{status:#}");

    // 5. psql through it, as a user of the policy.
    let port_s = pg.port.to_string();
    let psql = |sql: &str| {
        env.run_as(
            &ana,
            None,
            Path::new("/usr/bin/psql"),
            &["-h", &pg.host, "-p", &port_s, "-U", "whoever", "-d", "appdb", "-X", "-A", "-t", "-c", sql],
        )
    };
    let out = psql("SELECT count(*) FROM items");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "10", "{}\n{}", text(&out), agent_log());
    let out = psql("DELETE FROM items");
    assert!(text(&out).contains("Gatehouse refused"), "{}", text(&out));
    assert_eq!(pg.admin_db("appdb", "SELECT count(*) FROM items"), "10", "the server deleted nothing");

    // 6. Sessions show ids that replay and statements accept.
    let db = format!("{STATE}/audit.db");
    let out = sh(Command::new(BIN).args(["sessions", "--db", &db]));
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(table.starts_with("SESSION"), "{table}");
    let short = table.lines().nth(1).and_then(|l| l.split_whitespace().next()).expect("a session row").to_owned();
    assert!(short.len() >= 18 && short.len() < 36, "a prefix, not the whole id: {short}");
    let out = sh(Command::new(BIN).args(["replay", &short, "--no-wait", "--db", &db]));
    assert!(out.status.success() && text(&out).contains("items"), "replay {short}: {}", text(&out));
    let out = sh(Command::new(BIN).args(["statements", "--session", &short, "--json", "--db", &db]));
    assert!(out.status.success(), "statements --session {short}: {}", text(&out));
    assert!(!String::from_utf8_lossy(&out.stdout).trim().is_empty(), "statements of {short}: {}", text(&out));

    // 7. Metrics: parsed by the Prometheus text parser, and they moved.
    let (code, health) = http_get(metrics_port, "/healthz");
    assert_eq!((code, health.trim()), (200, "ok"));
    // Session ends are recorded after the client saw them: wait for them.
    let allow = [("backend", "appdb"), ("decision", "allow")];
    let deadline = Instant::now() + Duration::from_secs(15);
    let (body, m) = loop {
        let (code, body) = http_get(metrics_port, "/metrics");
        assert_eq!(code, 200, "{body}");
        let m = parse_metrics(&env, &body);
        if sample(&m, "gatehouse_relayed_bytes_total", &[("direction", "down")]) > 0.0 || Instant::now() > deadline {
            break (body, m);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(sample(&m, "gatehouse_sessions_total", &allow) >= 2.0, "{body}");
    assert!(sample(&m, "gatehouse_statements_total", &[("kind", "select"), ("decision", "allow")]) >= 1.0, "{body}");
    assert!(sample(&m, "gatehouse_statements_total", &[("kind", "delete"), ("decision", "deny")]) >= 1.0, "{body}");
    assert!(sample(&m, "gatehouse_refusals_total", &[("reason", "statement_denied")]) >= 1.0, "{body}");
    assert!(sample(&m, "gatehouse_kernel_total", &[("counter", "redirected")]) >= 2.0, "{body}");
    assert!(sample(&m, "gatehouse_relayed_bytes_total", &[("direction", "down")]) > 0.0, "{body}");
    assert!(sample(&m, "gatehouse_audit_records_total", &[]) > 0.0, "{body}");
    assert!(sample(&m, "gatehouse_audit_commit_seconds_count", &[]) > 0.0, "{body}");
    assert!(sample(&m, "gatehouse_audit_store_bytes", &[]) > 0.0, "{body}");
    assert!(sample(&m, "gatehouse_audit_disk_free_bytes", &[]) > 0.0, "{body}");
    assert_eq!(sample(&m, "gatehouse_up", &[]), 1.0, "{body}");
    assert_eq!(sample(&m, "gatehouse_policy_reloads_total", &[]), 0.0, "{body}");

    // 8. Reload as the unit's ExecReload does.
    assert!(sh(Command::new("kill").args(["-HUP", &pid.to_string()])).status.success());
    wait_notify(&notify, "RELOADING=1", &agent_log);
    wait_notify(&notify, "READY=1", &agent_log);
    let (_, body) = http_get(metrics_port, "/metrics");
    assert_eq!(sample(&parse_metrics(&env, &body), "gatehouse_policy_reloads_total", &[]), 1.0, "{body}");

    // 9. Stop as systemd does: SIGTERM. The pins stay (fail closed) until removal.
    assert!(sh(Command::new("kill").args(["-TERM", &pid.to_string()])).status.success());
    wait_notify(&notify, "STOPPING=1", &agent_log);
    let status = installed.agent.take().unwrap().wait().unwrap();
    assert!(status.success(), "the agent exited with {status}:\n{}", agent_log());
    assert!(env.pin_dir.join("link_connect4").exists(), "pins stay while the package is installed");

    // 10. Purge: prerm detaches and unpins, postrm removes the state.
    let out = sh(Command::new("dpkg").args(["--purge", "gatehouse"]));
    assert!(out.status.success(), "dpkg --purge: {}", text(&out));
    let left: Vec<_> =
        std::fs::read_dir(&env.pin_dir).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    assert!(left.is_empty(), "pins left after removal: {left:?}");
    for p in [BIN, UNIT, STATE, ETC] {
        assert!(!Path::new(p).exists(), "{p} is left after purge");
    }
    assert!(!sh(Command::new("getent").args(["group", "gatehouse-auditors"])).status.success(), "group left");
    // And psql reaches the server directly again (which wants a password
    // Gatehouse used to supply), instead of a closed port.
    let out = psql("SELECT 1");
    assert!(text(&out).contains("no password supplied"), "direct again: {}", text(&out));
}
