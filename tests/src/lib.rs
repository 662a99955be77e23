//! Harness for Gatehouse's end-to-end tests: each test gets its own child
//! cgroup, bpffs pin directory, users, groups, backends on 127.x addresses,
//! and an agent attached to that cgroup only. Everything is removed on drop,
//! also when the test fails.
//!
//! These tests need root (they attach eBPF programs). Without it they fail
//! with a message saying so; they never pass silently.
#![expect(clippy::expect_used, reason = "a test harness reports failures by panicking with context")]

pub mod hostile;
pub mod http;
pub mod mysql;
pub mod pg;
pub mod ssh;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const CGROUP2_ROOT: &str = "/sys/fs/cgroup/unified";

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn next() -> u32 {
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// Fails the test loudly unless it runs as root.
pub fn require_root() {
    // SAFETY-free: geteuid via libc would need unsafe; /proc tells us too.
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid =
        status.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|l| l.split_whitespace().nth(1)).unwrap_or("?");
    assert!(
        euid == "0",
        "this end-to-end test attaches eBPF programs and needs root (euid is {euid}); \
         run `cargo xtask test`, which uses sudo when it is not root"
    );
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

/// A binary built from this workspace: `$GATEHOUSE_<NAME>` or target/debug/<name>.
pub fn built_binary(name: &str, env: &str) -> PathBuf {
    let p = std::env::var_os(env).map(PathBuf::from).unwrap_or_else(|| {
        let target =
            std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| workspace_root().join("target"));
        target.join("debug").join(name)
    });
    assert!(p.exists(), "{} is missing: build it first (`cargo xtask test` does)", p.display());
    p
}

pub fn gatehouse_bin() -> PathBuf {
    built_binary("gatehouse", "GATEHOUSE_BIN")
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A free TCP port on 127.0.0.1 (and, almost surely, ::1).
///
/// Chosen below the kernel's ephemeral range (`ip_local_port_range`, from
/// 32768 by default): a port from that range, free when asked, can be taken
/// by an outgoing connection's source port (an ssh or psql client of a test
/// running in parallel) before the server binds it — seen as an agent that
/// exits with `Address already in use`.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768)
        .clamp(12000, 65535);
    let span = low - 10000;
    let seed = std::process::id().wrapping_mul(7919);
    for _ in 0..200 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 10000 + (seed.wrapping_add(n.wrapping_mul(104_729))) % span;
        if let Ok(port) = u16::try_from(port)
            && TcpListener::bind(("127.0.0.1", port)).is_ok()
        {
            return port;
        }
    }
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

/// A loopback address other than 127.0.0.1 for this process and test.
pub fn loopback(host: u8) -> String {
    let pid = std::process::id();
    format!("127.10.{}.{host}", pid % 250 + 1)
}

/// One test's world. Dropping it removes everything it made.
pub struct Env {
    pub name: String,
    pub dir: PathBuf,
    pub cgroup: PathBuf,
    pub pin_dir: PathBuf,
    pub port: u16,
    pub probe: PathBuf,
    pub agent: Option<Child>,
    /// Where the agent's audit store lives (default: `state/audit.db` in the
    /// test dir: the agent makes the store's directory 0700, root's).
    pub audit_db: PathBuf,
    /// Run the agent inside this network namespace (made by [`Env::netns`]).
    pub agent_netns: Option<String>,
    users: Vec<String>,
    groups: Vec<String>,
    netns: Vec<String>,
    mounts: Vec<PathBuf>,
}

impl Env {
    pub fn new(name: &str) -> Self {
        require_root();
        let id = format!("gh-e2e-{name}-{}-{}", std::process::id(), next());
        let dir = std::env::temp_dir().join(&id);
        std::fs::create_dir_all(&dir).expect("create test dir");
        set_mode(&dir, 0o755);
        let cgroup = Path::new(CGROUP2_ROOT).join(&id);
        std::fs::create_dir(&cgroup).unwrap_or_else(|e| panic!("create cgroup {}: {e}", cgroup.display()));
        let probe = dir.join("gatehouse-probe");
        std::fs::copy(built_binary("gatehouse-probe", "GATEHOUSE_PROBE"), &probe).expect("copy probe");
        set_mode(&probe, 0o755);
        Self {
            name: name.to_owned(),
            pin_dir: PathBuf::from("/sys/fs/bpf").join(&id),
            dir: dir.clone(),
            cgroup,
            port: free_port(),
            probe,
            agent: None,
            audit_db: dir.join("state").join("audit.db"),
            agent_netns: None,
            users: vec![],
            groups: vec![],
            netns: vec![],
            mounts: vec![],
        }
    }

    /// Creates a Unix group; returns its name.
    pub fn group(&mut self, role: &str) -> String {
        let name = format!("ghg{}{}{role}", std::process::id() % 100_000, next());
        run(Command::new("groupadd").arg(&name));
        self.groups.push(name.clone());
        name
    }

    /// Creates an unprivileged user in `groups`; returns its name.
    pub fn user(&mut self, role: &str, groups: &[&str]) -> String {
        let name = format!("ghu{}{}{role}", std::process::id() % 100_000, next());
        let mut cmd = Command::new("useradd");
        cmd.args(["--no-create-home", "--shell", "/usr/sbin/nologin", "--user-group"]);
        if !groups.is_empty() {
            cmd.arg("--groups").arg(groups.join(","));
        }
        run(cmd.arg(&name));
        self.users.push(name.clone());
        name
    }

    pub fn uid(&self, user: &str) -> u32 {
        let out = run(Command::new("id").args(["-u", user]));
        String::from_utf8_lossy(&out.stdout).trim().parse().expect("uid")
    }

    /// A network namespace with only `lo` up, no route anywhere.
    pub fn netns(&mut self) -> String {
        let name = format!("gh-e2e-{}-{}", std::process::id(), next());
        run(Command::new("ip").args(["netns", "add", &name]));
        self.netns.push(name.clone());
        run(Command::new("ip").args(["-n", &name, "link", "set", "lo", "up"]));
        name
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    pub fn write_policy(&self, file: &str, text: &str) -> PathBuf {
        let p = self.path(file);
        std::fs::write(&p, text).expect("write policy");
        p
    }

    pub fn db(&self) -> PathBuf {
        self.audit_db.clone()
    }

    /// A small tmpfs of `size` (e.g. "2m"), unmounted on drop.
    pub fn tmpfs(&mut self, name: &str, size: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::create_dir_all(&p).expect("mkdir tmpfs");
        run(Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"]).arg(&p));
        self.mounts.push(p.clone());
        p
    }

    pub fn control(&self) -> PathBuf {
        self.path("control.sock")
    }

    /// The `gatehouse run` command line for this environment.
    pub fn agent_args(&self, config: &Path) -> Vec<String> {
        vec![
            "run".into(),
            "--config".into(),
            config.display().to_string(),
            "--port".into(),
            self.port.to_string(),
            "--cgroup".into(),
            self.cgroup.display().to_string(),
            "--pin-dir".into(),
            self.pin_dir.display().to_string(),
            "--audit-db".into(),
            self.db().display().to_string(),
            "--control-socket".into(),
            self.control().display().to_string(),
            // Tests use free high ports; the default port is privileged.
            "--allow-unprivileged-port".into(),
        ]
    }

    /// Starts the agent inside the test cgroup (so its own upstream sockets
    /// meet the connect programs and must be skipped by their SO_MARK) and
    /// waits until it answers on its control socket.
    pub fn start_agent(&mut self, config: &Path) {
        assert!(self.agent.is_none(), "agent already running");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.path("agent.log")).expect("log");
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg("echo $$ > \"$0/cgroup.procs\" && exec \"$@\"").arg(&self.cgroup);
        if let Some(ns) = &self.agent_netns {
            // nsenter changes only the network namespace (`ip netns exec`
            // would also remount /sys, hiding bpffs and the cgroup).
            cmd.arg("nsenter").arg(format!("--net=/run/netns/{ns}")).arg("--");
        }
        let child = cmd
            .arg(gatehouse_bin())
            .args(self.agent_args(config))
            .env("GATEHOUSE_LOG", "info,gatehouse=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn agent");
        self.agent = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.agent.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                self.agent = None;
                panic!("agent exited early ({status}):\n{}", self.agent_log());
            }
            if self.try_status().is_some() {
                return;
            }
            assert!(Instant::now() < deadline, "agent not ready after 30s:\n{}", self.agent_log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends `signal` to the agent and waits for it to exit.
    pub fn signal_agent(&mut self, signal: &str) -> std::process::ExitStatus {
        let mut child = self.agent.take().expect("agent not running");
        run(Command::new("kill").arg(format!("-{signal}")).arg(child.id().to_string()));
        child.wait().expect("wait agent")
    }

    pub fn agent_log(&self) -> String {
        std::fs::read_to_string(self.path("agent.log")).unwrap_or_default()
    }

    pub fn gatehouse(&self, args: &[&str]) -> Output {
        Command::new(gatehouse_bin()).args(args).output().expect("run gatehouse")
    }

    pub fn try_status(&self) -> Option<Value> {
        let ctl = self.control().display().to_string();
        let out = self.gatehouse(&["status", "--json", "--control-socket", &ctl]);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    pub fn status(&self) -> Value {
        self.try_status().unwrap_or_else(|| panic!("agent status unavailable:\n{}", self.agent_log()))
    }

    /// Every recorded session, oldest first.
    pub fn sessions(&self) -> Vec<Value> {
        let db = self.db().display().to_string();
        let out = self.gatehouse(&["sessions", "--json", "--db", &db, "--limit", "10000"]);
        assert!(out.status.success(), "gatehouse sessions: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).expect("session json")).collect()
    }

    /// Every recorded statement (of one session, if given), oldest first.
    pub fn statements(&self, session: Option<&str>) -> Vec<Value> {
        let db = self.db().display().to_string();
        let mut args = vec!["statements", "--json", "--db", &db, "--limit", "100000"];
        if let Some(s) = session {
            args.extend(["--session", s]);
        }
        let out = self.gatehouse(&args);
        assert!(out.status.success(), "gatehouse statements: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).expect("statement json")).collect()
    }

    /// Waits until a session matching `pred` has been recorded and closed.
    pub fn wait_session(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = self.sessions().into_iter().find(|s| pred(s) && !s["end_reason"].is_null()) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "no closed session {what} recorded; sessions: {:#?}\nagent log:\n{}",
                self.sessions(),
                self.agent_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs a command as `user` inside the test cgroup (and `netns`, if given).
    pub fn run_as(&self, user: &str, netns: Option<&str>, program: &Path, args: &[&str]) -> Output {
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg("echo $$ > \"$0/cgroup.procs\" && exec \"$@\"").arg(&self.cgroup);
        if let Some(ns) = netns {
            cmd.args(["ip", "netns", "exec", ns]);
        }
        cmd.args(["setpriv", "--reuid", user, "--regid", user, "--init-groups", "--"])
            .arg(program)
            .args(args)
            // The test user has no home of its own; root's is not readable to it.
            .env("HOME", &self.dir)
            .current_dir(&self.dir);
        cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
    }

    /// Starts a command as `user` inside the test cgroup (and `netns`), with
    /// stdin and stdout piped, for tests that talk to it while it runs.
    pub fn spawn_as(&self, user: &str, netns: Option<&str>, program: &Path, args: &[&str]) -> Child {
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg("echo $$ > \"$0/cgroup.procs\" && exec \"$@\"").arg(&self.cgroup);
        if let Some(ns) = netns {
            cmd.args(["ip", "netns", "exec", ns]);
        }
        cmd.args(["setpriv", "--reuid", user, "--regid", user, "--init-groups", "--"])
            .arg(program)
            .args(args)
            .env("HOME", &self.dir)
            .current_dir(&self.dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        cmd.spawn().unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"))
    }

    /// The agent's pinned map `name`, opened from its pin (root).
    pub fn pinned_map(&self, name: &str) -> aya::maps::MapData {
        aya::maps::MapData::from_pin(self.pin_dir.join(name)).unwrap_or_else(|e| panic!("open pinned {name}: {e}"))
    }

    /// The agent's in-flight records by client address (GH_HANDOFF).
    pub fn handoff_map(&self) -> aya::maps::HashMap<aya::maps::MapData, agent_common::SockKey, agent_common::Handoff> {
        let m = self.pinned_map(agent_common::map_names::HANDOFF);
        aya::maps::HashMap::try_from(aya::maps::Map::LruHashMap(m)).expect("GH_HANDOFF is a hash map")
    }

    /// Runs the probe client as `user` in the cgroup; returns its JSON report.
    pub fn probe(&self, user: &str, args: &[&str]) -> Value {
        self.probe_in(user, None, args)
    }

    pub fn probe_in(&self, user: &str, netns: Option<&str>, args: &[&str]) -> Value {
        let out = self.run_as(user, netns, &self.probe, args);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "probe {args:?} as {user}: {e}\nstdout: {}\nstderr: {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }
}

/// CLOCK_MONOTONIC in nanoseconds, the clock of the kernel records.
pub fn monotonic_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("clock_gettime");
    u64::try_from(t.tv_sec()).expect("seconds") * 1_000_000_000 + u64::try_from(t.tv_nsec()).expect("nanoseconds")
}

/// The kernel map key of a socket address (IPv4 as `::ffff:a.b.c.d`, words in network order).
pub fn sock_key(addr: SocketAddr) -> agent_common::SockKey {
    let v6 = match addr.ip() {
        std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        std::net::IpAddr::V6(v6) => v6,
    };
    let mut words = [0u32; 4];
    for (w, chunk) in words.iter_mut().zip(v6.octets().chunks_exact(4)) {
        *w = u32::from_ne_bytes(chunk.try_into().expect("four bytes"));
    }
    agent_common::SockKey { addr: words, port: addr.port(), _pad: 0 }
}

/// What [`Env::idle_sessions_rss`] saw.
#[derive(Debug)]
pub struct IdleRss {
    /// The agent's RSS before the script ran, KiB.
    pub before: u64,
    /// With the script's sessions idle, KiB: the first reading under
    /// `before + slack`, or the last within 5 s.
    pub idle: u64,
    /// What the script printed up to `idle`, and after its stdin closed.
    pub until_idle: Vec<String>,
    pub after: String,
}

impl Env {
    /// Runs a Python 3 script as `user` (`args` after its path) that opens
    /// sessions through the agent, prints `idle` while they sit idle, and
    /// goes on once its standard input closes; measures the agent's RSS
    /// before and while the sessions are idle (freed memory may take a moment
    /// to go back to the system: it waits up to 5 s for `before + slack_kib`).
    pub fn idle_sessions_rss(&self, user: &str, script: &Path, args: &[&str], slack_kib: u64) -> IdleRss {
        let pid = self.agent.as_ref().map(Child::id).expect("the agent runs");
        let before = rss_kib(pid);
        let mut all = vec![script.to_str().expect("utf-8 path")];
        all.extend_from_slice(args);
        let mut child = self.spawn_as(user, None, Path::new("/usr/bin/python3"), &all);
        let mut lines = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        let until_idle = lines_until(&mut lines, "idle");
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut idle = rss_kib(pid);
        while idle >= before + slack_kib && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
            idle = rss_kib(pid);
        }
        drop(child.stdin.take());
        let mut after = String::new();
        let _ = std::io::Read::read_to_string(&mut lines, &mut after);
        let _ = child.wait();
        IdleRss { before, idle, until_idle, after }
    }
}

/// Resident memory of process `pid` (`VmRSS`), KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS for pid {pid}"))
}

/// Lines read from `r`, trimmed, up to and including the first equal to
/// `last` (or to the end).
pub fn lines_until(r: &mut impl std::io::BufRead, last: &str) -> Vec<String> {
    let mut got = Vec::new();
    loop {
        let mut l = String::new();
        let n = r.read_line(&mut l).unwrap_or(0);
        got.push(l.trim().to_owned());
        if n == 0 || l.trim() == last {
            return got;
        }
    }
}

/// Reads one JSON line from a spawned probe's stdout.
pub fn read_json_line(child: &mut Child) -> Value {
    let out = child.stdout.as_mut().expect("piped stdout");
    let mut line = String::new();
    // One byte at a time: a BufReader would swallow later lines.
    let mut b = [0u8; 1];
    while out.read(&mut b).map(|n| n == 1).unwrap_or(false) {
        let [c] = b;
        if c == b'\n' {
            break;
        }
        line.push(char::from(c));
    }
    serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("probe line {line:?}: {e}"))
}

fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(mut c) = self.agent.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let pin = self.pin_dir.display().to_string();
        let ctl = self.control().display().to_string();
        let _ = Command::new(gatehouse_bin())
            .args(["detach", "--force", "--pin-dir", &pin, "--control-socket", &ctl])
            .output();
        // Anything still in the cgroup (a stuck client) goes with it.
        let _ = std::fs::write(self.cgroup.join("cgroup.kill"), "1");
        for _ in 0..50 {
            if std::fs::remove_dir(&self.cgroup).is_ok() || !self.cgroup.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for u in &self.users {
            let _ = Command::new("userdel").arg(u).output();
        }
        for g in &self.groups {
            let _ = Command::new("groupdel").arg(g).output();
        }
        for ns in &self.netns {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        for m in &self.mounts {
            let _ = Command::new("umount").arg("-l").arg(m).output();
        }
        if std::thread::panicking() {
            eprintln!("test {} failed; its files stay in {} for a look", self.name, self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A TCP echo server on a real socket, run by the test (outside the test
/// cgroup). Stops on drop.
pub struct EchoServer {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl EchoServer {
    pub fn start(bind: &str) -> Self {
        let l = TcpListener::bind(bind).unwrap_or_else(|e| panic!("bind echo server {bind}: {e}"));
        l.set_nonblocking(true).expect("nonblocking");
        let addr = l.local_addr().expect("local_addr");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((s, _)) => {
                        std::thread::spawn(move || echo(s));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Self { addr, stop }
    }
}

fn echo(mut s: TcpStream) {
    let _ = s.set_nonblocking(false);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if s.write_all(buf.get(..n).unwrap_or_default()).is_err() {
                    break;
                }
            }
        }
    }
    let _ = s.shutdown(std::net::Shutdown::Write);
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Waits (up to five seconds) until the agent holding the audit store at
/// `db` has ingested into SQLite everything its journal holds: strict
/// records are acknowledged once they are in the journal (`<db>.journal.N`),
/// so a client can be done before its records are in the tables a test
/// reads directly. Entries are `u32 len ‖ payload ‖ 16-byte checksum`, the
/// payload starting with the `u64` journal sequence; the store notes what it
/// ingested in `meta.journal_ingested`.
pub fn settle(db: &Path) {
    let Some(dir) = db.parent() else { return };
    let Some(name) = db.file_name().and_then(|n| n.to_str()) else { return };
    let prefix = format!("{name}.journal.");
    let mut last = None;
    let mut segs: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.strip_prefix(&prefix)?.parse().ok()?, e.path())))
        .collect();
    segs.sort();
    for (_, path) in &segs {
        let bytes = std::fs::read(path).unwrap_or_default();
        let mut at = 0usize;
        while let Some(len) = bytes.get(at..at + 4).and_then(|b| b.try_into().ok()).map(u32::from_le_bytes) {
            let len = len as usize;
            let Some(jseq) = bytes.get(at + 4..at + 12).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes) else {
                break;
            };
            if bytes.len() < at + 4 + len + 16 {
                break;
            }
            last = Some(jseq);
            at += 4 + len + 16;
        }
    }
    let Some(last) = last else { return };
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let done = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .and_then(|c| {
                c.query_row("SELECT value FROM meta WHERE key = 'journal_ingested'", [], |r| r.get::<_, String>(0))
            })
            .ok()
            .and_then(|v| v.parse::<u64>().ok());
        if done.is_some_and(|d| d >= last) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
