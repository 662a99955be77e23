//! Audit sinks for SIEM pipelines (`[[agent.sink]]`): an agent delivers its
//! committed records to a real rsyslog collector over TLS (RFC 5425,
//! octet-counted RFC 5424 messages), verified against the collector's CA,
//! and appends them to files as the chain's JSONL records and as OCSF events.
//! The collector is stopped mid-stream and started again: every record
//! reaches it (at least once), and a sink whose CA does not match the
//! collector's certificate delivers nothing. Needs root.
#![expect(clippy::unwrap_used, clippy::expect_used, reason = "test code panics with context on failure")]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gatehouse_e2e::pg::{self, PgServer};
use gatehouse_e2e::{Env, free_port, loopback};

/// A real rsyslogd accepting RFC 5425 (syslog over TLS) on `addr:port`,
/// writing each message as received (`%rawmsg%`) to `out`.
struct Collector {
    child: Option<Child>,
    conf: PathBuf,
    pidfile: PathBuf,
    pub out: PathBuf,
}

impl Collector {
    fn start(dir: &Path, addr: &str, port: u16, ca: &Path, cert: &Path, key: &Path) -> Self {
        let work = dir.join("rsyslog-work");
        std::fs::create_dir_all(&work).unwrap();
        let out = dir.join("collector.log");
        let conf = dir.join("rsyslog.conf");
        std::fs::write(
            &conf,
            format!(
                r#"global(workDirectory="{work}" maxMessageSize="1m"
       defaultNetstreamDriver="gtls"
       defaultNetstreamDriverCAFile="{ca}"
       defaultNetstreamDriverCertFile="{cert}"
       defaultNetstreamDriverKeyFile="{key}")
module(load="imtcp" streamDriver.name="gtls" streamDriver.mode="1" streamDriver.authMode="anon")
input(type="imtcp" address="{addr}" port="{port}")
template(name="raw" type="string" string="%rawmsg%\n")
*.* action(type="omfile" file="{out}" template="raw")
"#,
                work = work.display(),
                ca = ca.display(),
                cert = cert.display(),
                key = key.display(),
                out = out.display(),
            ),
        )
        .unwrap();
        let mut c = Self { child: None, conf, pidfile: dir.join("rsyslog.pid"), out };
        c.resume(addr, port);
        c
    }

    fn resume(&mut self, addr: &str, port: u16) {
        let child = Command::new("rsyslogd")
            .args(["-n", "-f"])
            .arg(&self.conf)
            .arg("-i")
            .arg(&self.pidfile)
            .stdin(Stdio::null())
            .spawn()
            .expect("rsyslogd (cargo xtask setup installs rsyslog and rsyslog-gnutls)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect((addr, port)).is_err() {
            assert!(Instant::now() < deadline, "rsyslogd is not listening on {addr}:{port}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").arg(c.id().to_string()).status();
            let _ = c.wait();
        }
    }

    /// (seq, hash, priority, message JSON) of each message received.
    fn messages(&self) -> Vec<(u64, String, String, serde_json::Value)> {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        // Only whole lines: rsyslogd may be writing the last one.
        let whole = text.rfind('\n').and_then(|end| text.get(..end)).unwrap_or_default();
        whole
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| {
                let pri = l.split('>').next().unwrap().trim_start_matches('<').to_owned();
                assert!(l.contains(">1 ") && l.contains(" gatehouse "), "an RFC 5424 message from gatehouse: {l}");
                let seq = l.split("seq=\"").nth(1).unwrap().split('"').next().unwrap().parse().unwrap();
                let hash = l.split("hash=\"").nth(1).unwrap().split('"').next().unwrap().to_owned();
                let json = l.split_once("\"] ").unwrap().1;
                (seq, hash, pri, serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {json}")))
            })
            .collect()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop();
    }
}

/// (seq, hash hex) of every record in the local store.
fn local_records(env: &Env) -> Vec<(u64, String)> {
    gatehouse_e2e::settle(&env.db());
    let conn = rusqlite::Connection::open_with_flags(env.db(), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let mut st = conn.prepare("SELECT seq, hash FROM events ORDER BY seq").unwrap();
    st.query_map([], |r| {
        let h: Vec<u8> = r.get(1)?;
        Ok((r.get::<_, i64>(0)? as u64, h.iter().map(|b| format!("{b:02x}")).collect()))
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

fn wait_for(what: &str, env: &Env, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not after 60 s\n{}", env.agent_log());
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn records_reach_syslog_over_tls_and_files_as_jsonl_and_ocsf() {
    let mut env = Env::new("opssink");
    let analyst = env.group("analyst");
    let ana = env.user("ana", &[&analyst]);
    let app = PgServer::start(&env.dir, &loopback(44), free_port(), "");
    let secret = pg::password_file(&env.dir, "appdb.secret", pg::APP_PASSWORD);
    let host = loopback(45);
    let port = free_port();
    let (ca, cert, key) = pg::certs(&env.path("collector-tls"), &host, 2);
    let (other_ca, _, _) = pg::certs(&env.path("other-tls"), &host, 2);
    let mut collector = Collector::start(&env.dir, &host, port, &ca, &cert, &key);
    let jsonl = env.path("sink/audit.jsonl");
    let ocsf = env.path("sink/audit.ocsf.jsonl");
    std::fs::create_dir_all(jsonl.parent().unwrap()).unwrap();
    let config = env.write_policy(
        "policy.toml",
        &format!(
            r#"[agent]
checkpoint_interval = "1s"

[[agent.sink]]
name = "siem"
kind = "syslog"
address = "{host}:{port}"
ca_file = "{ca}"
batch = 5

[[agent.sink]]
name = "wrong-ca"
kind = "syslog"
address = "{host}:{port}"
ca_file = "{other_ca}"

[[agent.sink]]
name = "records"
kind = "file"
path = "{jsonl}"

[[agent.sink]]
name = "ocsf"
kind = "file"
format = "ocsf"
path = "{ocsf}"

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
            ca = ca.display(),
            other_ca = other_ca.display(),
            jsonl = jsonl.display(),
            ocsf = ocsf.display(),
            addr = app.addr(),
            role = pg::APP_ROLE,
            secret = secret.display(),
        ),
    );
    env.start_agent(&config);
    let pg_port = app.port.to_string();
    let psql = |sql: &str| {
        let out = env.run_as(
            &ana,
            None,
            Path::new("/usr/bin/psql"),
            &["-h", &app.host, "-p", &pg_port, "-U", "x", "-d", "appdb", "-X", "-A", "-t", "-c", sql],
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!(psql("SELECT 'café' AS greeting"), "café");
    assert_eq!(psql("DELETE FROM pg_class"), "", "refused");

    let delivered = |c: &Collector| c.messages().into_iter().map(|m| m.0).collect::<BTreeSet<u64>>();
    let all_local = || local_records(&env).into_iter().map(|r| r.0).collect::<BTreeSet<u64>>();
    wait_for("the collector has every record", &env, || all_local().is_subset(&delivered(&collector)));

    // The collector goes away; users keep working; it comes back and catches up.
    collector.stop();
    for i in 0..5 {
        assert_eq!(psql(&format!("SELECT {i}")), i.to_string(), "sessions go on while the collector is down");
    }
    std::thread::sleep(Duration::from_secs(2));
    collector.resume(&host, port);
    wait_for("the collector caught up after its outage", &env, || all_local().is_subset(&delivered(&collector)));
    assert!(env.agent_log().contains("audit sink paused"), "the sink saw the outage:\n{}", env.agent_log());

    // Each message carries its record: the same seq and chain hash as the store, the JSON record in it.
    let local: std::collections::HashMap<u64, String> = local_records(&env).into_iter().collect();
    let msgs = collector.messages();
    for (seq, hash, pri, json) in &msgs {
        assert_eq!(local.get(seq), Some(hash), "record {seq}'s hash");
        assert_eq!(json["seq"].as_u64(), Some(*seq));
        assert_eq!(json["hash"].as_str(), Some(hash.as_str()));
        assert!(json["data_hex"].is_null(), "raw stream bytes stay out of syslog: {json}");
        if json["kind"] == "statement" && json["body"]["decision"] == "deny" {
            assert_eq!(pri, "84", "a refusal is authpriv.warning");
        }
    }
    let texts: Vec<&str> = msgs.iter().filter_map(|m| m.3["body"]["text"].as_str()).collect();
    assert!(texts.contains(&"SELECT 'café' AS greeting"), "non-ASCII text arrives intact: {texts:?}");
    assert!(texts.contains(&"DELETE FROM pg_class"), "{texts:?}");

    // The sink whose CA does not match the collector's certificate sent nothing.
    let log = env.agent_log();
    assert!(
        log.lines().any(|l| l.contains("audit sink paused") && l.contains("wrong-ca")),
        "the unverifiable collector is refused:\n{log}"
    );

    // Files: every record once, as `export` writes them (seq and hash match the store), and OCSF events.
    wait_for("the JSONL file has every record", &env, || {
        let text = std::fs::read_to_string(&jsonl).unwrap_or_default();
        let seqs: BTreeSet<u64> = text
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"].as_u64().unwrap())
            .collect();
        all_local().is_subset(&seqs)
    });
    let text = std::fs::read_to_string(&jsonl).unwrap();
    let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let seqs: Vec<u64> = lines.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order, each once: {seqs:?}");
    for l in &lines {
        let seq = l["seq"].as_u64().unwrap();
        assert_eq!(local.get(&seq).map(String::as_str), l["hash"].as_str(), "record {seq}");
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&jsonl).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "no auditor group: the file is root's alone");
    wait_for("OCSF events for the sessions", &env, || {
        std::fs::read_to_string(&ocsf).unwrap_or_default().lines().any(|l| l.contains("DELETE FROM pg_class"))
    });
    let events: Vec<serde_json::Value> =
        std::fs::read_to_string(&ocsf).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let classes: BTreeSet<u64> = events.iter().filter_map(|e| e["class_uid"].as_u64()).collect();
    assert!(classes.contains(&3002), "authentication (logon) events: {classes:?}");
    assert!(events.iter().any(|e| e["metadata"]["version"].is_string()), "OCSF metadata");
    let cursor = std::fs::read_to_string(env.db().with_file_name("sink-records.cursor")).unwrap();
    assert!(cursor.trim().parse::<u64>().unwrap() >= *seqs.last().unwrap() - 1, "the cursor follows: {cursor}");
}
