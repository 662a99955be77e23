//! SSH backends end to end: a real OpenSSH sshd started by the test (its
//! own config, host key and TrustedUserCAKeys) on a loopback address; the
//! real ssh, scp and sftp clients, run as unprivileged users with only the
//! `@cert-authority` line `gatehouse ca ssh-host` prints in their
//! known_hosts, through the real eBPF redirect. Assertions are on what the
//! host did (files made or not, sshd's log naming the person), what the
//! user saw, and the audit store. Needs root.
#![expect(clippy::unwrap_used, reason = "test helpers panic with context on failure")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use gatehouse_e2e::ssh::{Sshd, authorize_key, client_opts, login_account};
use gatehouse_e2e::{Env, loopback};
use serde_json::Value;

struct World {
    sshd: Sshd,
    env: Env,
    /// The account Gatehouse logs in as on the host.
    deploy: String,
    /// Operates the host: a shell, some commands, sftp read-only under share/.
    ana: String,
    /// May only touch files, and only once an approver agrees.
    eve: String,
    /// Approves eve's commands.
    lea: String,
    /// Whatever fay asks, the host runs the rule's force_command.
    fay: String,
    /// Logs in as `backup`, with the held key the backend keeps for that account.
    hal: String,
    /// An account on the host Gatehouse reaches with a held key, not a certificate.
    backup: String,
    /// Runs `tty` freely; a shell only once an approver agrees.
    gil: String,
    known_hosts: PathBuf,
    /// Files on the host the rules talk about.
    share: PathBuf,
    /// Where the clients may write locally.
    out: PathBuf,
    gatehouse: PathBuf,
    /// A listener on the host's address that every rule denies forwarding to
    /// (the "vault"): it must never see a connection. It answers `vault` and
    /// closes, so a client let through ends; its port and connections so far.
    vault: (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>),
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn world(name: &str) -> World {
    let mut env = Env::new(name);
    let ana = env.user("ana", &[]);
    let eve = env.user("eve", &[]);
    let lea = env.user("lea", &[]);
    let fay = env.user("fay", &[]);
    let hal = env.user("hal", &[]);
    let gil = env.user("gil", &[]);
    let deploy = env.user("deploy", &[]);
    let home = login_account(&env, &deploy);
    let backup = env.user("backup", &[]);
    let backup_home = login_account(&env, &backup);
    let backup_key = env.path("backup_key");
    authorize_key(&backup, &backup_home, &backup_key);
    let sshd = Sshd::start(&env, &loopback(3));
    let listener = std::net::TcpListener::bind((sshd.ip.as_str(), 0)).unwrap();
    let vault_port = listener.local_addr().unwrap().port();
    let dialed = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = dialed.clone();
    std::thread::spawn(move || {
        for c in listener.incoming().flatten() {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = std::io::Write::write_all(&mut &c, b"vault\n");
        }
    });
    let vault = (vault_port, dialed);
    let share = env.path("share");
    std::fs::create_dir_all(&share).unwrap();
    std::fs::write(share.join("report.txt"), "quarterly numbers\n").unwrap();
    let out = env.path("out");
    std::fs::create_dir_all(&out).unwrap();
    let all = std::os::unix::fs::PermissionsExt::from_mode(0o777);
    std::fs::set_permissions(&out, all).unwrap();
    let _ = home;
    let st = Command::new("chown").arg("-R").arg(format!("{deploy}:{deploy}")).arg(&share).status().unwrap();
    assert!(st.success());

    // The host CA: made once, its line in the clients' known_hosts (and nothing else).
    let db = env.db().display().to_string();
    let ca = Command::new(gatehouse_e2e::gatehouse_bin()).args(["ca", "ssh-host", "--db", &db]).output().unwrap();
    assert!(ca.status.success(), "gatehouse ca ssh-host: {}", text(&ca));
    let line = String::from_utf8_lossy(&ca.stdout).trim().to_owned();
    assert!(line.starts_with("@cert-authority * ssh-ed25519 "), "{line}");
    let known_hosts = env.path("known_hosts");
    std::fs::write(&known_hosts, format!("{line}\n")).unwrap();

    let policy = format!(
        r#"
[agent]
shutdown_grace = "1s"

[[backend]]
name = "db-admin"
protocol = "ssh"
address = "{addr}"
ssh = {{ user = "{deploy}", host_names = ["db-admin"], host_key_file = "{host_pub}", user_ca_key_file = "{ca}", cert_validity = "2m", keys = {{ "{backup}" = "{backup_key}" }} }}

[[approvers]]
name = "leads"
who = {{ users = ["{lea}"] }}

[[rule]]
name = "ana operates"
who = {{ users = ["{ana}"] }}
backends = ["db-admin"]
shell = true
exec = ["id *", "echo *", "cat *", "rm *"]
exec_regex = ["uptime( -p)?"]
sftp = "read-only"
sftp_paths = ["{share}/*", "{share}"]
mask = "cards"

[[rule]]
name = "eve touches with approval"
who = {{ users = ["{eve}"] }}
backends = ["db-admin"]
exec = ["touch {share}/*", "dd of={share}/* status=none"]
approval = {{ for = ["exec"], by = "leads", timeout = "1m" }}

[[rule]]
name = "fay runs the menu"
who = {{ users = ["{fay}"] }}
backends = ["db-admin"]
force_command = "echo forced:$SSH_ORIGINAL_COMMAND"

[[rule]]
name = "hal backs up"
who = {{ users = ["{hal}"] }}
backends = ["db-admin"]
as_role = "{backup}"
exec = ["id *", "tty"]
forward = ["direct-tcpip"]
forward_to = ["{addr}", "*:{vault_port}"]

[[rule]]
name = "nobody reaches the vault"
who = {{ users = ["*"] }}
backends = ["db-admin"]
action = "deny"
forward_to = ["{ip}:{vault_port}"]

[[rule]]
name = "gil looks, a shell with approval"
who = {{ users = ["{gil}"] }}
backends = ["db-admin"]
shell = true
exec = ["tty"]
approval = {{ for = ["shell"], by = "leads", timeout = "1m" }}

[[rule]]
name = "nobody removes"
who = {{ users = ["*"] }}
backends = ["db-admin"]
action = "deny"
exec = ["rm *"]

[[rule]]
name = "hal lists no groups"
who = {{ users = ["{hal}"] }}
backends = ["db-admin"]
action = "deny"
exec = ["id -g*", "id -G*"]

[[mask]]
name = "cards"
detectors = ["card"]
"#,
        addr = sshd.addr(),
        ip = sshd.ip,
        host_pub = sshd.host_pub.display(),
        ca = sshd.user_ca.display(),
        share = share.display(),
        backup_key = backup_key.display(),
    );
    let config = env.write_policy("policy.toml", &policy);
    env.start_agent(&config);
    let gatehouse = env.path("gatehouse-cli");
    std::fs::copy(gatehouse_e2e::gatehouse_bin(), &gatehouse).unwrap();
    std::fs::set_permissions(&gatehouse, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    World { sshd, env, deploy, ana, eve, lea, fay, hal, backup, gil, known_hosts, share, out, gatehouse, vault }
}

impl World {
    fn ssh(&self, user: &str, args: &[&str]) -> Output {
        let mut all = client_opts(&self.known_hosts);
        all.extend(["-p".into(), self.sshd.port.to_string()]);
        all.extend(args.iter().map(|s| (*s).to_owned()));
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        self.env.run_as(user, None, Path::new("/usr/bin/ssh"), &refs)
    }

    fn spawn_ssh(&self, user: &str, args: &[&str]) -> std::process::Child {
        self.spawn_ssh_fed(user, args, std::process::Stdio::null())
    }

    /// [`Self::spawn_ssh`] with its standard input from `stdin`.
    fn spawn_ssh_fed(&self, user: &str, args: &[&str], stdin: std::process::Stdio) -> std::process::Child {
        let mut all = client_opts(&self.known_hosts);
        all.extend(["-p".into(), self.sshd.port.to_string()]);
        all.extend(args.iter().map(|s| (*s).to_owned()));
        // As `Env::spawn_as`, with stderr piped too (Gatehouse talks there).
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg("echo $$ > \"$0/cgroup.procs\" && exec \"$@\"").arg(&self.env.cgroup);
        cmd.args(["setpriv", "--reuid", user, "--regid", user, "--init-groups", "--", "/usr/bin/ssh"])
            .args(&all)
            .env("HOME", &self.env.dir)
            .current_dir(&self.env.dir)
            .stdin(stdin)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        cmd.spawn().unwrap()
    }

    fn tool(&self, user: &str, program: &str, args: &[String]) -> Output {
        let mut all = client_opts(&self.known_hosts);
        all.extend(args.iter().cloned());
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        self.env.run_as(user, None, Path::new(program), &refs)
    }

    fn cli(&self, user: &str, args: &[&str]) -> Output {
        let ctl = self.env.control().display().to_string();
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--control-socket", &ctl]);
        self.env.run_as(user, None, &self.gatehouse, &all)
    }

    /// Every `ssh` record of the store, as JSON bodies with their data.
    fn ssh_events(&self) -> Vec<(Value, Vec<u8>)> {
        gatehouse_e2e::settle(&self.env.db());
        let conn = rusqlite::Connection::open(self.env.db()).unwrap();
        let mut st = conn.prepare("SELECT body, data FROM events WHERE kind = 'ssh' ORDER BY seq").unwrap();
        st.query_map([], |r| {
            let body: Vec<u8> = r.get(0)?;
            let data: Option<Vec<u8>> = r.get(1)?;
            Ok((serde_json::from_slice(&body).unwrap(), data.unwrap_or_default()))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
    }

    /// Waits for a pending ssh approval request whose command holds `needle`; returns its id.
    fn pending(&self, needle: &str) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let o = self.cli(&self.lea, &["requests", "--json"]);
            if let Some(r) = String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|r| {
                    r.pointer("/state/state").and_then(Value::as_str) == Some("pending")
                        && r.pointer("/subject/type").and_then(Value::as_str) == Some("ssh")
                        && r.pointer("/subject/request").and_then(Value::as_str).is_some_and(|q| q.contains(needle))
                })
            {
                return r.get("id").and_then(Value::as_u64).unwrap();
            }
            assert!(
                Instant::now() < deadline,
                "no pending ssh request for {needle:?}: {}\n{}",
                text(&o),
                self.env.agent_log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn wait_event(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some((v, _)) = self.ssh_events().into_iter().find(|(v, _)| pred(v)) {
                return v;
            }
            assert!(Instant::now() < deadline, "no ssh record {what}: {:#?}", self.ssh_events());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn ssh_is_terminated_decided_and_logged_in_with_a_short_certificate() {
    let w = world("ssh-policy");
    let host = w.sshd.ip.clone();

    // An allowed exec: the host ran it as the login account; no client key, no prompt.
    let o = w.ssh(&w.ana, &[&host, "id -un"]);
    assert!(o.status.success(), "{}\n{}", text(&o), w.env.agent_log());
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), w.deploy);
    // A regex-allowed command; masked output (a card number on the host).
    let o = w.ssh(&w.ana, &[&host, "uptime"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = w.ssh(&w.ana, &[&host, "echo card 4111 1111 1111 1111 end"]);
    assert!(o.status.success(), "{}", text(&o));
    let seen = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(seen.starts_with("card ") && !seen.contains("4111 1111 1111 1111"), "masked: {seen}");
    // Output as `grep --color` writes a match: colour codes inside the card's digits.
    let colored = w.share.join("colored.txt");
    std::fs::write(&colored, "card \x1b[01;31m\x1b[K4111\x1b[m\x1b[K 1111 1111 1111 end\n").unwrap();
    let o = w.ssh(&w.ana, &[&host, &format!("cat {}", colored.display())]);
    assert!(o.status.success(), "{}", text(&o));
    let seen = String::from_utf8_lossy(&o.stdout).into_owned();
    let digits: String = seen.chars().filter(char::is_ascii_digit).collect();
    assert!(seen.starts_with("card ") && !digits.contains("4111111111111111"), "masked: {seen:?}");

    // The host's sshd logged the certificate naming the person.
    let log = w.sshd.log_text();
    assert!(
        log.contains(&format!("Accepted certificate ID \"gatehouse:{}:session=", w.ana)),
        "sshd log names the person:\n{log}"
    );

    // Refused: a command no rule allows; a glob stretched over `;`; a denied rm.
    let pwned = w.share.join("pwned");
    for cmd in [
        format!("touch {}", pwned.display()),
        format!("echo hi; touch {}", pwned.display()),
        format!("echo $(touch {})", pwned.display()),
        format!("rm -rf {}", w.share.display()),
    ] {
        let o = w.ssh(&w.ana, &[&host, &cmd]);
        assert_eq!(o.status.code(), Some(126), "{cmd}: {}", text(&o));
        assert!(text(&o).contains("Gatehouse: refused"), "{cmd}: {}", text(&o));
    }
    assert!(!pwned.exists(), "a refused command ran on the host");
    assert!(w.share.join("report.txt").exists(), "the denied rm ran on the host");

    // A terminal turns an allowed command into a shell (a pager's `!sh`): it is
    // given only to a user whose rules allow a shell (ana's), not with an
    // exec-only rule (hal's); the command still runs.
    let o = w.ssh(&w.ana, &["-tt", &host, "cat /proc/self/stat"]);
    // `pid (comm) state ppid pgrp session tty_nr …`: a controlling terminal's number, 0 without one.
    let stat = String::from_utf8_lossy(&o.stdout).into_owned();
    let tty_nr = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(4)).unwrap_or("0");
    assert_ne!(
        tty_nr,
        "0",
        "ana's rules allow a shell: her command has a terminal: {}\n{}",
        text(&o),
        w.env.agent_log()
    );
    // Nor when the shell needs an approval the terminal would skip (gil's).
    for user in [&w.hal, &w.gil] {
        let o = w.ssh(user, &["-tt", &host, "tty"]);
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(out.contains("not a tty") && !out.contains("/dev/pts"), "{user}: {}\n{}", text(&o), w.env.agent_log());
    }

    // Environment variables: the host here accepts LD_PRELOAD (AcceptEnv), so
    // a client's LD_PRELOAD would run the user's code inside an allowed
    // command. Only the locale is passed on.
    let src = w.env.path("preload.c");
    std::fs::write(&src, "#include <unistd.h>\n__attribute__((constructor)) static void f(void) { write(1, \"pwned-by-preload\\n\", 17); }\n").unwrap();
    let so = w.env.path("preload.so");
    let cc = Command::new("cc").args(["-shared", "-fPIC", "-o"]).arg(&so).arg(&src).output().unwrap();
    assert!(cc.status.success(), "{}", text(&cc));
    std::fs::set_permissions(&so, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let env = format!("SetEnv=LD_PRELOAD={} LANG=C.UTF-8", so.display());
    let o = w.ssh(&w.hal, &["-o", &env, &host, "id -un"]);
    assert!(o.status.success(), "{}\n{}", text(&o), w.env.agent_log());
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), w.backup, "{}", text(&o));

    // Port forwarding (-W opens a direct-tcpip channel) is refused; so is -L's channel.
    let o = w.ssh(&w.ana, &["-W", &w.sshd.addr(), &host]);
    assert!(!o.status.success() && text(&o).contains("stdio forwarding failed"), "{}", text(&o));

    // sftp read-only under share/: a read works, a write and a read elsewhere do not.
    let batch = w.env.path("batch");
    std::fs::write(
        &batch,
        format!(
            "get {share}/report.txt {out}/got.txt\n-put {batch} {share}/up.txt\n-get /etc/hostname {out}/host.txt\n",
            share = w.share.display(),
            out = w.out.display(),
            batch = batch.display()
        ),
    )
    .unwrap();
    let args = vec!["-P".into(), w.sshd.port.to_string(), "-b".into(), batch.display().to_string(), host.clone()];
    let o = w.tool(&w.ana, "/usr/bin/sftp", &args);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(std::fs::read_to_string(w.out.join("got.txt")).unwrap(), "quarterly numbers\n");
    assert!(!w.share.join("up.txt").exists(), "a read-only rule let a write through");
    assert!(!w.out.join("host.txt").exists(), "a read outside sftp_paths got through");
    assert!(text(&o).contains("Permission denied"), "{}", text(&o));
    // scp (SFTP underneath): download allowed, upload refused.
    let scp =
        |from: String, to: String| w.tool(&w.ana, "/usr/bin/scp", &["-P".into(), w.sshd.port.to_string(), from, to]);
    let o = scp(format!("{host}:{}/report.txt", w.share.display()), format!("{}/scp.txt", w.out.display()));
    assert!(o.status.success(), "{}", text(&o));
    assert!(w.out.join("scp.txt").exists());
    let o = scp(batch.display().to_string(), format!("{host}:{}/scp-up.txt", w.share.display()));
    assert!(!o.status.success(), "{}", text(&o));
    assert!(!w.share.join("scp-up.txt").exists());

    // The audit store: each decision, exec output and exit status, sftp operations.
    let ev = w.ssh_events();
    let req =
        |r: &str, d: &str| ev.iter().any(|(v, _)| v["event"] == "request" && v["request"] == r && v["decision"] == d);
    assert!(req("exec", "allow") && req("exec", "deny") && req("direct-tcpip", "deny") && req("sftp", "allow"));
    assert!(ev.iter().any(|(v, _)| v["event"] == "request"
        && v["detail"].as_str().is_some_and(|d| d.starts_with("rm -rf"))
        && v["rule"] == "nobody removes"));
    assert!(ev.iter().any(|(v, d)| v["event"] == "io" && v["stream"] == "o" && d.starts_with(w.deploy.as_bytes())));
    assert!(ev.iter().any(|(v, _)| v["event"] == "exit" && v["status"] == 0));
    assert!(ev.iter().any(|(v, _)| v["event"] == "sftp"
        && v["op"] == "open-write"
        && v["decision"] == "deny"
        && v["path"].as_str().is_some_and(|p| p.ends_with("up.txt"))));
    assert!(ev.iter().any(|(v, _)| v["event"] == "sftp" && v["op"] == "open-read" && v["decision"] == "allow"));
    // The file read through sftp: its close says how many bytes went each way.
    assert!(
        ev.iter().any(|(v, _)| v["event"] == "sftp"
            && v["op"] == "close"
            && v["path"].as_str().is_some_and(|p| p.ends_with("/report.txt"))
            && v["read_bytes"] == 18
            && v["written_bytes"] == 0),
        "no close record with sizes: {:#?}",
        ev.iter().filter(|(v, _)| v["event"] == "sftp").map(|(v, _)| v).collect::<Vec<_>>()
    );
    // `gatehouse statements` lists channel requests and sftp operations beside statements.
    let listed = w.env.statements(None);
    assert!(
        listed.iter().any(|r| r["kinds"] == "sftp"
            && r["text"]
                .as_str()
                .is_some_and(|t| t.starts_with("close ") && t.contains("report.txt: read 18, wrote 0 bytes"))),
        "{listed:#?}"
    );
    assert!(
        listed.iter().any(|r| r["kinds"] == "ssh" && r["text"] == "exec id -un" && r["decision"] == "allow"),
        "{listed:#?}"
    );
    assert!(!ev.iter().any(|(_, d)| d.windows(19).any(|x| x == b"4111 1111 1111 1111")), "card recorded unmasked");

    // The upstream certificate: one principal, the person's key id, minutes of validity.
    gatehouse_e2e::settle(&w.env.db());
    let conn = rusqlite::Connection::open(w.env.db()).unwrap();
    let auth: String = conn
        .query_row("SELECT json_extract(body, '$.auth') FROM events WHERE kind = 'backend_login' LIMIT 1", [], |r| {
            r.get(0)
        })
        .unwrap();
    let cert = auth.split(" cert=").nth(1).unwrap();
    let cert_file = w.env.path("session-cert.pub");
    std::fs::write(&cert_file, format!("{cert}\n")).unwrap();
    let o = Command::new("ssh-keygen").arg("-L").arg("-f").arg(&cert_file).output().unwrap();
    let shown = text(&o);
    assert!(o.status.success(), "{shown}");
    assert!(shown.contains(&format!("Key ID: \"gatehouse:{}:session=", w.ana)), "{shown}");
    assert!(shown.contains(&format!("Principals: \n                {}\n", w.deploy)), "{shown}");
    assert!(shown.contains("source-address"), "{shown}");
    // Valid for 2 minutes (after a minute's allowance for clock skew): checked to expire.
    let valid = shown.lines().find(|l| l.trim_start().starts_with("Valid:")).unwrap();
    let times: Vec<&str> = valid.split_whitespace().filter(|t| t.contains('T')).collect();
    let parse = |t: &str| {
        let o = Command::new("date").args(["-d", t, "+%s"]).output().unwrap();
        String::from_utf8_lossy(&o.stdout).trim().parse::<i64>().unwrap()
    };
    assert_eq!(times.len(), 2, "{valid}");
    assert_eq!(parse(times[1]) - parse(times[0]), 180, "{valid}");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    assert!(parse(times[1]) <= now + 120, "the certificate outlives its validity: {valid}");
}

#[test]
fn held_exec_runs_only_once_approved() {
    let w = world("ssh-approval");
    let host = w.sshd.ip.clone();
    let file = w.share.join("approved");
    let cmd = format!("touch {}", file.display());
    let held = w.spawn_ssh(&w.eve, &[&host, &cmd]);
    // The approver sees it, and nothing ran yet.
    let deadline = Instant::now() + Duration::from_secs(15);
    let id = loop {
        let o = w.cli(&w.lea, &["requests", "--json"]);
        let found = String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|r| r["state"]["state"] == "pending" && r["subject"]["type"] == "ssh");
        if let Some(r) = found {
            assert!(r["subject"]["request"].as_str().unwrap().contains(&cmd), "{r}");
            break r["id"].as_u64().unwrap();
        }
        assert!(Instant::now() < deadline, "no pending ssh request: {}\n{}", text(&o), w.env.agent_log());
        std::thread::sleep(Duration::from_millis(100));
    };
    std::thread::sleep(Duration::from_millis(300));
    assert!(!file.exists(), "a held command ran before its approval");
    let o = w.cli(&w.lea, &["approve", &id.to_string()]);
    assert!(o.status.success(), "{}", text(&o));
    let out = held.wait_with_output().unwrap();
    assert!(out.status.success(), "{}\n{}", text(&out), w.env.agent_log());
    assert!(text(&out).contains("waiting for approval"), "{}", text(&out));
    assert!(file.exists(), "the approved command did not run");
    w.wait_event("held exec", |v| v["event"] == "request" && v["decision"] == "approval" && v["approval"] == id);

    // Denied: the command never runs.
    let file2 = w.share.join("denied");
    let held = w.spawn_ssh(&w.eve, &[&host, &format!("touch {}", file2.display())]);
    let deadline = Instant::now() + Duration::from_secs(15);
    let id = loop {
        let o = w.cli(&w.lea, &["requests", "--json"]);
        if let Some(r) = String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|r| r["state"]["state"] == "pending" && r["subject"]["type"] == "ssh")
        {
            break r["id"].as_u64().unwrap();
        }
        assert!(Instant::now() < deadline, "no pending ssh request");
        std::thread::sleep(Duration::from_millis(100));
    };
    let o = w.cli(&w.lea, &["deny", &id.to_string(), "--reason", "not now"]);
    assert!(o.status.success(), "{}", text(&o));
    let out = held.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(126), "{}", text(&out));
    assert!(text(&out).contains("not now"), "{}", text(&out));
    assert!(!file2.exists());
    // Eve has no shell.
    let o = w.ssh(&w.eve, &["-tt", &host]);
    assert!(!o.status.success() && text(&o).contains("does not allow a shell"), "{}", text(&o));
}

/// A held exec's input waits with it (all of it, in order) while the
/// connection goes on serving its other channels; past the bound the held
/// request is withdrawn and the client told, and nothing runs.
#[test]
fn a_held_exec_keeps_its_input_and_the_connection_goes_on() {
    let w = world("ssh-held-input");
    let host = w.sshd.ip.clone();
    // 6 MiB: far more than the 64 messages (2 MiB) that used to stall the whole connection.
    let input = w.env.path("held-input");
    let data: Vec<u8> = (0..6u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 13).to_le_bytes()[0]).collect();
    std::fs::write(&input, &data).unwrap();
    // One connection (a ControlMaster), several channels.
    let ctl = w.out.join("ctl");
    let ctl_s = ctl.display().to_string();
    let mut master = w.spawn_ssh(&w.eve, &["-M", "-S", &ctl_s, "-o", "ControlPersist=no", "-N", &host]);
    let deadline = Instant::now() + Duration::from_secs(15);
    while !ctl.exists() {
        assert!(Instant::now() < deadline, "the control master never came up: {}", w.env.agent_log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let held_file = w.share.join("held.bin");
    let held_cmd = format!("dd of={} status=none", held_file.display());
    let held = w.spawn_ssh_fed(
        &w.eve,
        &["-S", &ctl_s, &host, &held_cmd],
        std::process::Stdio::from(std::fs::File::open(&input).unwrap()),
    );
    let first = w.pending("held.bin");
    // Let the client push its input into the held channel.
    std::thread::sleep(Duration::from_secs(2));
    assert!(!held_file.exists(), "a held command ran before its approval");
    // Another channel of the same connection is served meanwhile: its request
    // reaches the approvers, and once approved it runs and ends.
    let second_file = w.share.join("second");
    let second = w.spawn_ssh(&w.eve, &["-S", &ctl_s, &host, &format!("touch {}", second_file.display())]);
    let id2 = w.pending("second");
    let o = w.cli(&w.lea, &["approve", &id2.to_string()]);
    assert!(o.status.success(), "{}", text(&o));
    let out = second.wait_with_output().unwrap();
    assert!(out.status.success(), "{}\n{}", text(&out), w.env.agent_log());
    assert!(second_file.exists(), "the second channel's command did not run");
    assert!(!held_file.exists(), "the held command ran before its approval");
    // Approved: every byte reaches the host's command, in order.
    let o = w.cli(&w.lea, &["approve", &first.to_string()]);
    assert!(o.status.success(), "{}", text(&o));
    let out = held.wait_with_output().unwrap();
    assert!(out.status.success(), "{}\n{}", text(&out), w.env.agent_log());
    let got = std::fs::read(&held_file).unwrap();
    assert_eq!(got.len(), data.len(), "bytes the host's command received");
    assert!(got == data, "the held input reached the host altered");
    let _ = Command::new("ssh").args(["-S", &ctl_s, "-O", "exit", &host]).output();
    let _ = master.kill();
    let _ = master.wait();

    // Past the bound (16 MiB) a held exec is refused: withdrawn, told, never run.
    let big = w.env.path("too-much");
    std::fs::write(&big, vec![7u8; 24 << 20]).unwrap();
    let lost = w.share.join("too-much.bin");
    let over = w.spawn_ssh_fed(
        &w.eve,
        &[&host, &format!("dd of={} status=none", lost.display())],
        std::process::Stdio::from(std::fs::File::open(&big).unwrap()),
    );
    let out = over.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(126), "{}\n{}", text(&out), w.env.agent_log());
    assert!(text(&out).contains("waiting for approval") && text(&out).contains("withdrawn"), "{}", text(&out));
    assert!(!lost.exists(), "a withdrawn command ran");
    // Its request was opened, and withdrawn.
    let o = w.cli(&w.lea, &["requests", "--json"]);
    let state = String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|r| r["subject"]["request"].as_str().is_some_and(|q| q.contains("too-much.bin")))
        .map(|r| r["state"]["state"].clone());
    assert_eq!(state, Some(Value::from("withdrawn")), "{}", text(&o));
    let _ = std::fs::remove_file(&big);
    let _ = std::fs::remove_file(&input);
}

/// force_command on a rule: the upstream certificate carries it and the
/// host runs it whatever the client asks. A held key per account: the rule's
/// as_role picks the account, and so the key the host's authorized_keys lists.
#[test]
fn forced_commands_and_held_keys_per_account() {
    let w = world("ssh-force");
    let host = w.sshd.ip.clone();
    let o = w.ssh(&w.fay, &[&host, "id -un"]);
    assert!(o.status.success(), "{}\n{}", text(&o), w.env.agent_log());
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "forced:id -un", "{}", text(&o));
    let o = w.ssh(&w.fay, &[&host, "touch /tmp/nope"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "forced:touch /tmp/nope", "{}", text(&o));
    // The certificate sshd accepted says so.
    gatehouse_e2e::settle(&w.env.db());
    let conn = rusqlite::Connection::open(w.env.db()).unwrap();
    let auths: Vec<String> = conn
        .prepare("SELECT json_extract(body, '$.auth') FROM events WHERE kind = 'backend_login'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let cert = auths
        .iter()
        .filter(|a| a.contains(" force_command="))
        .find_map(|a| a.split(" cert=").nth(1))
        .unwrap_or_else(|| panic!("no certificate login with a force_command: {auths:?}"));
    let cert_file = w.env.path("forced-cert.pub");
    std::fs::write(&cert_file, format!("{cert}\n")).unwrap();
    let shown = Command::new("ssh-keygen").arg("-L").arg("-f").arg(&cert_file).output().unwrap();
    assert!(text(&shown).contains("force-command echo forced:$SSH_ORIGINAL_COMMAND"), "{}", text(&shown));
    assert!(w.sshd.log_text().contains(&format!("Accepted certificate ID \"gatehouse:{}:session=", w.fay)));

    // hal: as_role = backup, whose held key the backend keeps in ssh.keys.
    let o = w.ssh(&w.hal, &[&host, "id -un"]);
    assert!(o.status.success(), "{}\n{}", text(&o), w.env.agent_log());
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), w.backup);
    // hal may forward to the host's own sshd only (forward_to): a forwarded
    // connection starts on the host, where the bastion's redirect cannot see
    // it. -W there gets the sshd's banner; -W anywhere else is refused and
    // never opened on the host.
    let o = w.ssh(&w.hal, &["-W", &w.sshd.addr(), &host]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("SSH-2.0-"), "{}\n{}", text(&o), w.env.agent_log());
    let elsewhere = format!("{}:1", w.sshd.ip);
    let o = w.ssh(&w.hal, &["-W", &elsewhere, &host]);
    assert!(!o.status.success() && text(&o).contains("stdio forwarding failed"), "{}", text(&o));
    let recorded = || -> Vec<String> {
        conn.prepare("SELECT CAST(body AS TEXT) FROM events WHERE kind = 'ssh'")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    let is_refusal = |b: &String| b.contains(&elsewhere) && b.contains("\"deny\"") && b.contains("forward_to");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !recorded().iter().any(is_refusal) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(recorded().iter().any(is_refusal), "{:#?}", recorded());
    // The vault is denied in every spelling the host's resolver reads as its
    // address (hal's own rule allows any host on the vault's port): decided
    // on the address, not the text, so the host never dials it.
    let ip: std::net::Ipv4Addr = w.sshd.ip.parse().unwrap();
    let n = u32::from(ip);
    let (vault_port, dialed) = &w.vault;
    let [first, ..] = ip.octets();
    for spelling in [
        ip.to_string(),
        n.to_string(),
        format!("{n:#x}"),
        format!("{first}.{}", n & 0x00ff_ffff),
        format!("0{first:o}.{}", n & 0x00ff_ffff),
        format!("[::ffff:{ip}]"),
    ] {
        let o = w.ssh(&w.hal, &["-W", &format!("{spelling}:{vault_port}"), &host]);
        assert!(!o.status.success() && text(&o).contains("stdio forwarding failed"), "{spelling}: {}", text(&o));
    }
    assert_eq!(dialed.load(std::sync::atomic::Ordering::SeqCst), 0, "the host dialed the vault");
    // An allowed destination in another spelling is dialed as the address it is.
    let o = w.ssh(&w.hal, &["-W", &format!("{n}:{}", w.sshd.port), &host]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("SSH-2.0-"), "{}\n{}", text(&o), w.env.agent_log());
    // hal's `id *` is allowed, `id -g*` denied: the deny pattern reads the
    // line as the host's shell will (quotes removed, the command's path and
    // `env` dropped), so a quoted or wrapped `-g` does not get past it.
    for cmd in ["id -g", "id '-g'", "id -\"\"G", "id \"-g\" -n"] {
        let o = w.ssh(&w.hal, &[&host, cmd]);
        assert_eq!(o.status.code(), Some(126), "{cmd}: {}\n{}", text(&o), w.env.agent_log());
        assert!(text(&o).contains("hal lists no groups"), "{cmd}: {}", text(&o));
        assert!(o.stdout.is_empty(), "{cmd}: the host ran it: {}", text(&o));
    }
    let log = w.sshd.log_text();
    assert!(log.contains(&format!("Accepted publickey for {}", w.backup)), "sshd log:\n{log}");
    let auths: Vec<String> = conn
        .prepare("SELECT json_extract(body, '$.auth') FROM events WHERE kind = 'backend_login'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(auths.iter().any(|a| a.starts_with(&format!("ssh-key (held) account={} ", w.backup))), "{auths:?}");
}

/// A tmux server on the test's own socket, killed (through that socket) on drop.
struct Tmux {
    sock: PathBuf,
}

impl Tmux {
    fn run(&self, args: &[&str]) -> Output {
        Command::new("tmux").arg("-S").arg(&self.sock).args(args).output().unwrap()
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.run(&["capture-pane", "-p", "-t", "gh"]).stdout).into_owned()
    }

    fn wait_for(&self, what: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let s = self.screen();
            if s.contains(what) {
                return s;
            }
            assert!(Instant::now() < deadline, "tmux never showed {what:?}; screen:\n{s}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

#[test]
fn an_interactive_shell_is_recorded_and_replays_as_tmux_showed_it() {
    let w = world("ssh-tmux");
    assert!(Path::new("/usr/bin/tmux").exists(), "tmux is not installed (cargo xtask setup)");
    let mut ssh = client_opts(&w.known_hosts);
    ssh.extend(["-p".into(), w.sshd.port.to_string(), w.sshd.ip.clone()]);
    // The pane's process joins the test cgroup, then becomes ana running ssh (a pty: no command).
    let inner = format!(
        "echo $$ > {cg}/cgroup.procs && exec setpriv --reuid {u} --regid {u} --init-groups -- env HOME={home} /usr/bin/ssh {args}",
        cg = w.env.cgroup.display(),
        u = w.ana,
        home = w.env.dir.display(),
        args = ssh.join(" "),
    );
    let tmux = Tmux { sock: w.env.path("tmux.sock") };
    let o = tmux.run(&["new-session", "-d", "-s", "gh", "-x", "100", "-y", "30", "sh", "-c", &inner]);
    assert!(o.status.success(), "{}", text(&o));
    tmux.wait_for("$");
    tmux.run(&["send-keys", "-t", "gh", "echo hello-$((6*7))", "Enter"]);
    tmux.wait_for("hello-42");
    tmux.run(&["resize-window", "-t", "gh", "-x", "120", "-y", "40"]);
    tmux.run(&["send-keys", "-t", "gh", "stty size", "Enter"]);
    tmux.wait_for("40 120");
    tmux.run(&["send-keys", "-t", "gh", "echo card 4111 1111 1111 1111", "Enter"]);
    let shown = tmux.wait_for("card ****");
    tmux.run(&["send-keys", "-t", "gh", "exit", "Enter"]);
    let session = w.env.wait_session("ssh shell", |s| s["backend"] == "db-admin");
    let id = session["id"].as_str().unwrap().to_owned();

    // The replay shows, in order, every line tmux showed.
    let db = w.env.db().display().to_string();
    let replay = w.env.gatehouse(&["replay", &id, "--no-wait", "--db", &db]);
    assert!(replay.status.success(), "{}", text(&replay));
    let replayed = String::from_utf8_lossy(&replay.stdout).into_owned();
    let mut from = 0;
    for line in shown.lines().map(str::trim_end).filter(|l| !l.is_empty()) {
        let at = replayed.get(from..).and_then(|r| r.find(line)).unwrap_or_else(|| {
            panic!("tmux showed {line:?}, the replay does not (after byte {from}):\n{replayed}\n--- tmux:\n{shown}")
        });
        from += at + line.len();
    }
    assert!(replayed.contains("-- ssh shell: allow (rule \"ana operates\")"), "{replayed}");
    assert!(replayed.contains("-- window resized to 120x40"), "{replayed}");
    assert!(!replayed.contains("4111 1111 1111 1111") && !replayed.contains('\u{1b}'), "{replayed}");

    // asciicast: the pty's size, output with timing, input marked apart, the resize.
    let out = w.env.path("export");
    let o = w.env.gatehouse(&["export", "--format", "asciicast", "--out", &out.display().to_string(), "--db", &db]);
    assert!(o.status.success(), "{}", text(&o));
    let cast = std::fs::read_dir(&out)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with(&id))
        .unwrap_or_else(|| panic!("no cast for {id} in {}", out.display()));
    let cast = std::fs::read_to_string(cast).unwrap();
    let mut lines = cast.lines();
    let header: Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(
        (header["version"].as_u64(), header["width"].as_u64(), header["height"].as_u64()),
        (Some(2), Some(100), Some(30))
    );
    let events: Vec<Value> = lines.map(|l| serde_json::from_str(l).unwrap()).collect();
    let has = |kind: &str, needle: &str| events.iter().any(|e| e[1] == kind && e[2].as_str().unwrap().contains(needle));
    assert!(has("o", "hello-42") && has("i", "e") && has("r", "120x40"), "{cast}");
    let times: Vec<f64> = events.iter().map(|e| e[0].as_f64().unwrap()).collect();
    assert!(times.windows(2).all(|p| p[0] <= p[1]) && times.last() > times.first(), "timed: {times:?}");
    // Typed input is recorded through the rule's masking too.
    assert!(!cast.contains("4111 1111 1111 1111"), "{cast}");
}
