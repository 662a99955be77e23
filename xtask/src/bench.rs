//! `cargo xtask bench <workload>`: Gatehouse against baselines measured in
//! the same run, on the same machine, printed as ratios:
//! `ratio <workload> <system>/<baseline> = <x.xx>`.
//! Benchmarks are measurements, never assertions.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::util::{built, is_root, privileged, run, workspace_root};

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub workload: Workload,
    /// Skip setup and the release build: use target/release/gatehouse as it is.
    #[arg(long, global = true)]
    pub no_build: bool,
    /// Run `cargo build --release` even when target/release/gatehouse is newer than every source.
    #[arg(long, global = true, conflicts_with = "no_build")]
    pub rebuild: bool,
}

/// Builds target/release/gatehouse unless it is newer than every file it is
/// built from (cargo's own check would rerun the eBPF build script and the
/// thin-LTO link on a shared machine; an unchanged tree needs neither).
fn release_build(force: bool) -> Result<()> {
    let bin = built("release", "gatehouse");
    let root = workspace_root();
    let built_at = std::fs::metadata(&bin).and_then(|m| m.modified()).ok();
    if let (false, Some(built_at)) = (force, built_at) {
        let sources = ["agent", "agent-common", "agent-ebpf", "Cargo.toml", "Cargo.lock", "rust-toolchain.toml"];
        match newest(sources.iter().map(|s| root.join(s))) {
            Some((newest_at, path)) if newest_at > built_at => {
                eprintln!("bench: {} changed since the release build; rebuilding", path.display());
            }
            _ => {
                eprintln!(
                    "bench: reusing {} (no source changed since it was built; --rebuild to force)",
                    bin.display()
                );
                return Ok(());
            }
        }
    }
    eprintln!("bench: building the release binary (thin LTO: minutes on a busy machine)");
    run(Command::new("cargo").current_dir(&root).args(["build", "--release", "-p", "gatehouse"]))
}

/// The agent binary a benchmark runs: `target/release/gatehouse`, or the
/// one `GATEHOUSE_BENCH_BIN` names (with `--no-build`: to measure a build
/// kept aside, e.g. the one before a change, while the tree builds another).
pub(crate) fn agent_bin() -> PathBuf {
    std::env::var_os("GATEHOUSE_BENCH_BIN").map_or_else(|| built("release", "gatehouse"), PathBuf::from)
}

/// The newest modification time under `paths` (files, or directories walked;
/// `target` and hidden entries skipped), with the file that has it.
fn newest(paths: impl Iterator<Item = PathBuf>) -> Option<(std::time::SystemTime, PathBuf)> {
    let mut best: Option<(std::time::SystemTime, PathBuf)> = None;
    let mut stack: Vec<PathBuf> = paths.collect();
    while let Some(p) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&p) else { continue };
        if meta.is_dir() {
            let Ok(entries) = std::fs::read_dir(&p) else { continue };
            for e in entries.flatten() {
                let name = e.file_name();
                if name != "target" && !name.to_string_lossy().starts_with('.') {
                    stack.push(e.path());
                }
            }
        } else if let Ok(m) = meta.modified()
            && best.as_ref().is_none_or(|(t, _)| m > *t)
        {
            best = Some((m, p));
        }
    }
    best
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum Workload {
    /// New connections per second and bulk throughput, direct vs through Gatehouse (opaque TCP).
    Connect {
        /// Seconds per connection-rate round.
        #[arg(long, default_value_t = 3)]
        secs: u64,
        /// Bytes per bulk round.
        #[arg(long, default_value_t = 1 << 30)]
        bytes: u64,
    },
    /// Policy decision cost with 10, 100 and 1,000 rules (no root needed).
    Policy,
    /// Audit store records per second with the hash chain and group commit (no root needed).
    Audit,
    /// The audit writer's CPU per statement recorded the way the PostgreSQL relay records one
    /// (start through the journal, end queued, bytes folded), against plain SQLite inserts of
    /// the same bytes (no root needed; rounds: GATEHOUSE_BENCH_ROUNDS, default 5).
    Ingest,
    /// `gatehouse verify` peak memory on a small and a large store (no root needed).
    Verify {
        /// Size of the large store, MiB.
        #[arg(long, default_value_t = 2048)]
        mb: u64,
    },
    /// Detector MB/s, and a 1M-row SELECT direct vs through Gatehouse unmasked vs masked.
    Mask {
        #[arg(long, default_value_t = 1_000_000)]
        rows: u32,
    },
    /// Row-level trail: a 1M-row SELECT with the key trailed vs not, trail bytes per million rows,
    /// and who-saw / access-report latency on a store of 100M trailed rows.
    Trail {
        #[arg(long, default_value_t = 1_000_000)]
        rows: u32,
    },
    /// wrk keep-alive GETs direct vs through Gatehouse (HTTP policy + recording) vs haproxy (HTTP
    /// mode), and a masked 10 MB JSON body.
    Http {
        /// Seconds per wrk run.
        #[arg(long, default_value_t = 10)]
        secs: u64,
    },
    /// `ssh host true` (new connections) and an scp of 100 MB, direct vs through Gatehouse.
    Ssh {
        /// Connections timed per path (the median is reported).
        #[arg(long, default_value_t = 20)]
        runs: usize,
    },
    /// mysqlslap read-only workloads through Gatehouse vs direct vs haproxy (tcp), on MariaDB.
    Mysql {
        /// Queries per mysqlslap iteration of the point-select workload (the others scale from it).
        #[arg(long, default_value_t = 40_000)]
        queries: u32,
        /// mysqlslap iterations per run (it reports their average).
        #[arg(long, default_value_t = 3)]
        iterations: u32,
    },
    /// pgbench through Gatehouse vs direct vs pgbouncer (session) vs haproxy (tcp).
    Pg {
        /// Seconds per pgbench run.
        #[arg(long, default_value_t = 10)]
        secs: u64,
        /// pgbench scale factor.
        #[arg(long, default_value_t = 10)]
        scale: u32,
        /// Only one client's latency, direct and through Gatehouse in turn, three rounds (a
        /// diagnostic for the tail; prints the added_latency lines of each round).
        #[arg(long)]
        latency_only: bool,
        /// Only select-only throughput, direct, Gatehouse and pgbouncer in turn, this many rounds
        /// (a diagnostic for work on the data path: per-round ratios and Gatehouse's CPU by thread).
        #[arg(long, value_name = "ROUNDS")]
        select_only: Option<u32>,
        /// With --select-only or --latency-only (six rounds then): a second agent binary (e.g. the
        /// build before a change, kept aside) run beside the first, each in its own cgroup, and
        /// measured in every round next to it (the order alternating round by round). On a shared
        /// machine two separate runs differ by more than most changes do; paired rounds see both
        /// under the same load.
        #[arg(long, value_name = "BINARY")]
        compare: Option<PathBuf>,
        /// Instructions per select-only statement, counted by valgrind (callgrind), for one
        /// client: Gatehouse's sessions, its audit writer and the rest, against pgbouncer's, also
        /// under valgrind. Counts do not move with the machine's load as times do, so a change
        /// of a few per cent shows (with --compare: both agents, paired). User space only: the
        /// kernel's work is not counted. Installs valgrind if it is missing.
        #[arg(long, conflicts_with_all = ["latency_only", "select_only"])]
        instructions: bool,
        /// Only select-only and the TPC-B-like mix, this many rounds, with the database on a CPU
        /// of its own (CPU 0) and pgbench and the system under test (Gatehouse, pgbouncer,
        /// haproxy) on another (CPU 1): Gatehouse on a bastion in front of a database server, as
        /// it is deployed, instead of all of them sharing the same cores. Needs two CPUs.
        #[arg(
            long,
            value_name = "ROUNDS",
            value_parser = clap::value_parser!(u32).range(1..),
            conflicts_with_all = ["latency_only", "select_only", "instructions", "compare"]
        )]
        bastion: Option<u32>,
    },
}

pub fn bench(a: &BenchArgs) -> Result<()> {
    // In-process and unprivileged: cargo runs them.
    let in_process = match a.workload {
        Workload::Policy => Some("policy"),
        Workload::Audit => Some("audit"),
        Workload::Ingest => Some("ingest"),
        _ => None,
    };
    if let Workload::Verify { mb } = a.workload {
        return run(Command::new("cargo")
            .current_dir(workspace_root())
            .env("GATEHOUSE_BENCH_VERIFY", "1")
            .env("GATEHOUSE_BENCH_VERIFY_MB", mb.to_string())
            .args(["bench", "-p", "gatehouse", "--bench", "audit"]));
    }
    if let Some(name) = in_process {
        if name == "policy" {
            // What catalog awareness adds per statement, beside the decision cost.
            run(Command::new("cargo").current_dir(workspace_root()).args([
                "bench",
                "-p",
                "gatehouse",
                "--bench",
                "catalog",
            ]))?;
        }
        let mut cmd = Command::new("cargo");
        cmd.current_dir(workspace_root()).args(["bench", "-p", "gatehouse", "--bench", name]);
        // With shipping on: a real PostgreSQL as the central store (root starts it).
        let _central = if name == "audit" && is_root() {
            let port = free_port()?;
            eprintln!("bench audit: starting a PostgreSQL as the central store for the shipping run");
            let servers = crate::bench_pg::start_servers(port, None)?;
            cmd.env(
                "GATEHOUSE_BENCH_SHIP_URL",
                format!("postgres://bench:{}@{}:{port}/bench", crate::bench_pg::PASSWORD, crate::bench_pg::DIRECT),
            );
            Some(servers)
        } else {
            if name == "audit" {
                eprintln!("bench audit: not root, so no PostgreSQL for the shipping comparison");
            }
            None
        };
        return run(&mut cmd);
    }
    if !a.no_build {
        crate::setup::setup()?;
        release_build(a.rebuild)?;
    }
    if !is_root() {
        let me = std::env::current_exe().context("current_exe")?;
        let mut cmd = privileged(me)?;
        cmd.arg("bench")
            .arg("--no-build")
            .args(std::env::args().skip(2).filter(|x| x != "--no-build" && x != "--rebuild"));
        return run(&mut cmd);
    }
    match a.workload.clone() {
        Workload::Connect { secs, bytes } => connect(secs, bytes),
        Workload::Policy | Workload::Audit | Workload::Ingest | Workload::Verify { .. } => Ok(()),
        Workload::Pg { instructions: true, scale, compare, .. } => {
            crate::bench_pg::instructions(scale, compare.as_deref())
        }
        Workload::Pg { secs, scale, bastion: Some(rounds), .. } => crate::bench_pg::bastion(secs, scale, rounds),
        Workload::Pg { secs, scale, latency_only, select_only, compare, .. } => {
            crate::bench_pg::pg(secs, scale, latency_only, select_only, compare.as_deref())
        }
        Workload::Mysql { queries, iterations } => crate::bench_mysql::mysql(queries, iterations),
        Workload::Http { secs } => crate::bench_http::http(secs),
        Workload::Trail { rows } => {
            run(Command::new("cargo").current_dir(workspace_root()).args([
                "bench",
                "-p",
                "gatehouse",
                "--bench",
                "trail",
            ]))?;
            crate::bench_trail::trail(rows)
        }
        Workload::Ssh { runs } => crate::bench_ssh::ssh(runs),
        Workload::Mask { rows } => {
            run(Command::new("cargo").current_dir(workspace_root()).args([
                "bench",
                "-p",
                "gatehouse",
                "--bench",
                "mask",
            ]))?;
            crate::bench_pg::mask(rows)
        }
    }
}

/// A child cgroup with the agent attached, torn down on drop.
pub(crate) struct Rig {
    dir: PathBuf,
    cgroup: PathBuf,
    pin_dir: PathBuf,
    agent: Option<Child>,
}

impl Rig {
    pub(crate) fn new(name: &str) -> Result<Self> {
        let id = format!("gh-bench-{name}-{}", std::process::id());
        let dir = std::env::temp_dir().join(&id);
        std::fs::create_dir_all(&dir)?;
        let cgroup = PathBuf::from("/sys/fs/cgroup/unified").join(&id);
        std::fs::create_dir_all(&cgroup).with_context(|| format!("creating {}", cgroup.display()))?;
        Ok(Self { dir, cgroup, pin_dir: PathBuf::from("/sys/fs/bpf").join(&id), agent: None })
    }

    pub(crate) fn start_agent(&mut self, policy: &str, port: u16) -> Result<()> {
        self.start_agent_bin(policy, port, &agent_bin())
    }

    /// [`Self::start_agent`] with a given agent binary.
    pub(crate) fn start_agent_bin(&mut self, policy: &str, port: u16, bin: &Path) -> Result<()> {
        self.start_agent_under(policy, port, bin, &[], Duration::from_secs(30))
    }

    /// [`Self::start_agent_bin`] run by `prefix` (a program and its arguments,
    /// e.g. valgrind's), ready within `ready`.
    pub(crate) fn start_agent_under(
        &mut self,
        policy: &str,
        port: u16,
        bin: &Path,
        prefix: &[String],
        ready: Duration,
    ) -> Result<()> {
        let config = self.dir.join("policy.toml");
        std::fs::write(&config, policy)?;
        let log = std::fs::File::create(self.dir.join("agent.log"))?;
        let mut cmd = match prefix.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        let child = cmd
            .arg("run")
            .arg("--config")
            .arg(&config)
            .args(["--port", &port.to_string(), "--allow-unprivileged-port"])
            .arg("--cgroup")
            .arg(&self.cgroup)
            .arg("--pin-dir")
            .arg(&self.pin_dir)
            .arg("--audit-db")
            .arg(self.dir.join("state").join("audit.db"))
            .arg("--control-socket")
            .arg(self.dir.join("control.sock"))
            .env("GATEHOUSE_LOG", "warn")
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.agent = Some(child);
        let deadline = Instant::now() + ready;
        while !self.dir.join("control.sock").exists() {
            if Instant::now() > deadline {
                bail!("agent not ready: {}", std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Stops the agent (SIGTERM) and waits for it; pins stay.
    pub(crate) fn stop_agent(&mut self) {
        if let Some(mut a) = self.agent.take() {
            let _ = Command::new("kill").args(["-TERM", &a.id().to_string()]).status();
            let _ = a.wait();
        }
        let _ = std::fs::remove_file(self.dir.join("control.sock"));
    }

    pub(crate) fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// A command that runs inside the benchmark cgroup.
    pub(crate) fn in_cgroup(&self, program: &str) -> Command {
        let mut c = Command::new("sh");
        c.arg("-c").arg("echo $$ > \"$0/cgroup.procs\" && exec \"$@\"").arg(&self.cgroup).arg(program);
        c
    }

    pub(crate) fn agent_pid(&self) -> Option<u32> {
        self.agent.as_ref().map(Child::id)
    }

    /// Runs `xtask bench-client …` inside the cgroup; returns its stdout.
    fn client(&self, args: &[String]) -> Result<String> {
        let out = self.client_cmd(args)?.output()?;
        if !out.status.success() {
            bail!("bench client {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn client_cmd(&self, args: &[String]) -> Result<Command> {
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg("echo $$ > \"$0/cgroup.procs\" && exec \"$@\"")
            .arg(&self.cgroup)
            .arg(std::env::current_exe()?)
            .arg("bench-client")
            .args(args);
        Ok(c)
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if let Some(mut a) = self.agent.take() {
            let _ = Command::new("kill").args(["-TERM", &a.id().to_string()]).status();
            let _ = a.wait();
        }
        let _ = Command::new(agent_bin())
            .args(["detach", "--force", "--pin-dir"])
            .arg(&self.pin_dir)
            .stdout(Stdio::null())
            .status();
        let _ = std::fs::write(self.cgroup.join("cgroup.kill"), "1");
        for _ in 0..50 {
            if std::fs::remove_dir(&self.cgroup).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Test servers: a one-byte request/response server and a byte sink, each on
/// two addresses (one protected, one not), run in this process.
struct Servers {
    rr: [SocketAddr; 2],
    sink: [SocketAddr; 2],
    stop: Arc<AtomicBool>,
}

impl Servers {
    fn start() -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut rr = Vec::new();
        let mut sink = Vec::new();
        for host in ["127.10.200.1", "127.10.200.2"] {
            rr.push(serve(host, stop.clone(), rr_conn)?);
            sink.push(serve(host, stop.clone(), sink_conn)?);
        }
        Ok(Self { rr: [rr[0], rr[1]], sink: [sink[0], sink[1]], stop })
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve(host: &str, stop: Arc<AtomicBool>, handler: impl Fn(TcpStream) + Copy + Send + 'static) -> Result<SocketAddr> {
    let l = TcpListener::bind((host, 0))?;
    l.set_nonblocking(true)?;
    let addr = l.local_addr()?;
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            match l.accept() {
                Ok((s, _)) => {
                    let _ = s.set_nonblocking(false);
                    std::thread::spawn(move || handler(s));
                }
                Err(_) => std::thread::sleep(Duration::from_micros(200)),
            }
        }
    });
    Ok(addr)
}

fn rr_conn(mut s: TcpStream) {
    let _ = s.set_nodelay(true);
    let mut b = [0u8; 1];
    while matches!(s.read(&mut b), Ok(1)) {
        if s.write_all(&b).is_err() {
            break;
        }
    }
}

fn sink_conn(mut s: TcpStream) {
    let mut buf = vec![0u8; 256 * 1024];
    let mut n: u64 = 0;
    while let Ok(k) = s.read(&mut buf) {
        if k == 0 {
            break;
        }
        n += k as u64;
    }
    let _ = s.write_all(&n.to_le_bytes());
}

/// The bulk baseline for a relay: a bare `splice(2)` relay, the mechanism
/// Gatehouse moves opaque TCP with once it records no more, without anything
/// else. Per connection one blocking thread moves client → server through a
/// pipe of Gatehouse's size (1 MiB), another copies the answer back. What it
/// reaches in the same run is the ceiling of that mechanism on the machine.
fn splice_conn(client: TcpStream, to: SocketAddr) {
    let Ok(server) = TcpStream::connect(to) else { return };
    let (Ok(mut client_w), Ok(mut server_r)) = (client.try_clone(), server.try_clone()) else { return };
    let back = std::thread::spawn(move || {
        let _ = std::io::copy(&mut server_r, &mut client_w);
        let _ = client_w.shutdown(std::net::Shutdown::Write);
    });
    if let Err(e) = splice_copy(&client, &server) {
        eprintln!("splice relay: {e}");
    }
    let _ = server.shutdown(std::net::Shutdown::Write);
    let _ = back.join();
}

fn splice_copy(from: &TcpStream, to: &TcpStream) -> Result<()> {
    use nix::fcntl::{FcntlArg, OFlag, SpliceFFlags, fcntl, splice};
    const PIPE: usize = 1 << 20;
    let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    fcntl(&w, FcntlArg::F_SETPIPE_SZ(i32::try_from(PIPE)?))?;
    loop {
        let n = splice(from, None, &w, None, PIPE, SpliceFFlags::SPLICE_F_MOVE)?;
        if n == 0 {
            return Ok(());
        }
        let mut left = n;
        while left > 0 {
            let moved = splice(&r, None, to, None, left, SpliceFFlags::SPLICE_F_MOVE)?;
            // A blocking socket takes at least a byte or fails; zero would spin here forever.
            anyhow::ensure!(moved > 0, "splice into the server's socket moved nothing");
            left = left.saturating_sub(moved);
        }
    }
}

fn rss_kib(pid: u32) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("VmRSS")
}

/// The middle value; for an even count the mean of the middle two (0 for none).
pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match (v.get(n.saturating_sub(1) / 2), v.get(n / 2)) {
        (Some(a), Some(b)) => (a + b) / 2.0,
        _ => 0.0,
    }
}

fn connect(secs: u64, bytes: u64) -> Result<()> {
    let servers = Servers::start()?;
    let mut rig = Rig::new("connect")?;
    let port = crate::bench::free_port()?;
    // A PostgreSQL backend nobody serves: slow startups never get that far.
    let secret = rig.dir().join("slow.secret");
    std::fs::write(&secret, "unused")?;
    // Password files must be root's alone: the agent refuses others.
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let slow_addr = "127.10.200.3:5432";
    let policy = format!(
        "[[backend]]\nname = \"rr\"\nprotocol = \"tcp\"\naddress = \"{}\"\n\n\
         [[backend]]\nname = \"sink\"\nprotocol = \"tcp\"\naddress = \"{}\"\n\n\
         [[backend]]\nname = \"slow\"\nprotocol = \"postgres\"\naddress = \"{slow_addr}\"\n\
         credentials = {{ user = \"nobody\", password_file = \"{}\" }}\n\n\
         [[rule]]\nname = \"bench\"\nwho = {{ users = [\"root\"] }}\nbackends = [\"*\"]\nstatements = [\"select\"]\n",
        servers.rr[0],
        servers.sink[0],
        secret.display()
    );
    rig.start_agent(&policy, port)?;
    // The baseline a user-space relay reaches on this machine: haproxy in tcp
    // mode (splicing, as Gatehouse does once it records no more), on an
    // address no rule protects, in front of the unprotected servers.
    let (hp_rr, hp_sink) =
        (SocketAddr::from(([127, 10, 200, 4], free_port()?)), SocketAddr::from(([127, 10, 200, 4], free_port()?)));
    let haproxy = Reaped(haproxy(
        rig.dir(),
        &format!(
            "global\n  maxconn 4000\ndefaults\n  mode tcp\n  option splice-auto\n  timeout connect 5s\n  timeout client 1h\n  timeout server 1h\n\
             frontend rr\n  bind {hp_rr}\n  default_backend rr\nbackend rr\n  server s {}\n\
             frontend sink\n  bind {hp_sink}\n  default_backend sink\nbackend sink\n  server s {}\n",
            servers.rr[1], servers.sink[1]
        ),
    )?);
    crate::util::wait_port(&hp_sink.to_string())?;
    let sink_direct = servers.sink[1];
    let splice_sink = serve("127.10.200.5", servers.stop.clone(), move |s| splice_conn(s, sink_direct))?;
    let names = ["direct", "gatehouse", "haproxy", "splice"];
    let conc = "8".to_owned();
    let mut rate = [Vec::new(), Vec::new(), Vec::new()];
    let mut lat = [Vec::new(), Vec::new(), Vec::new()];
    // CPU (user + system) the process in between used per connection: the
    // steadier number on a shared machine, where the rates move with the load.
    let mut cpu = [Vec::new(), Vec::new(), Vec::new()];
    let pids = [None, rig.agent_pid(), Some(haproxy.0.id())];
    eprintln!("connection rate: {secs}s rounds, 8 concurrent clients, connect + 1-byte round trip + close");
    for round in 0..3 {
        for (i, target) in [servers.rr[1], servers.rr[0], hp_rr].iter().enumerate() {
            let pid = pids.get(i).copied().flatten();
            let threads_before = crate::bench_pg::thread_cpu(pid);
            let before = crate::bench_pg::cpu_secs(pid);
            let out = rig.client(&["rate".into(), target.to_string(), secs.to_string(), conc.clone()])?;
            let used = crate::bench_pg::cpu_secs(pid) - before;
            let v: serde_json::Value = serde_json::from_str(out.trim())?;
            let r = v["rate"].as_f64().unwrap_or(0.0);
            let conns = v["conns"].as_f64().unwrap_or(0.0);
            let per = if conns > 0.0 { used * 1e6 / conns } else { f64::NAN };
            let split = if i == 1 {
                format!(
                    " ({})",
                    crate::bench_pg::thread_split(&threads_before, &crate::bench_pg::thread_cpu(pid), conns)
                )
            } else {
                String::new()
            };
            eprintln!(
                "  round {round} {:<9} {r:>9.0} conn/s  p50 {:>6.0} µs  p99 {:>6.0} µs{}",
                names[i],
                v["p50_us"].as_f64().unwrap_or(0.0),
                v["p99_us"].as_f64().unwrap_or(0.0),
                if pid.is_some() { format!("  cpu {per:.1} µs/conn{split}") } else { String::new() }
            );
            rate[i].push(r);
            lat[i].push(v["p50_us"].as_f64().unwrap_or(0.0));
            cpu[i].push(per);
        }
    }
    eprintln!("bulk: {bytes} bytes one way, one connection");
    let mut bulk = [Vec::new(), Vec::new(), Vec::new(), Vec::new()];
    for round in 0..2 {
        for (i, target) in [servers.sink[1], servers.sink[0], hp_sink, splice_sink].iter().enumerate() {
            let out = rig.client(&["bulk".into(), target.to_string(), bytes.to_string()])?;
            let v: serde_json::Value = serde_json::from_str(out.trim())?;
            let mbs = v["mb_per_s"].as_f64().unwrap_or(0.0);
            eprintln!("  round {round} {:<9} {mbs:>9.0} MB/s", names[i]);
            bulk[i].push(mbs);
        }
    }
    drop(haproxy);
    // Slowloris: connections that sent one byte of a PostgreSQL startup and
    // then nothing, held open by the agent until its startup timeout.
    let slow_n = 10_000usize;
    eprintln!("idle connections: agent RSS before and while {slow_n} half-sent PostgreSQL startups are open");
    // Each idle round starts from a fresh agent, so its baseline holds no
    // memory freed by earlier rounds (which the allocator would hand out again).
    rig.stop_agent();
    rig.start_agent(&policy, port)?;
    let pid = rig.agent_pid().context("agent pid")?;
    let (slow_open, slow_kib) = idle_rss(&rig, pid, "slow", slow_addr, slow_n)?;
    // Established opaque TCP sessions, idle: two descriptors each in the
    // agent, so as many as its descriptor limit allows, up to 10,000.
    let tcp_n = (nofile_limit().saturating_sub(512) / 2).min(10_000);
    eprintln!("idle connections: agent RSS before and while {tcp_n} idle TCP sessions are open");
    rig.stop_agent();
    rig.start_agent(&policy, port)?;
    let pid = rig.agent_pid().context("agent pid")?;
    let (tcp_open, tcp_kib) = idle_rss(&rig, pid, "idle", &servers.rr[0].to_string(), tcp_n)?;
    let per_slow = if slow_open > 0.0 { slow_kib / slow_open } else { f64::NAN };
    let per_tcp = if tcp_open > 0.0 { tcp_kib / tcp_open } else { f64::NAN };

    let [rd, rg, rh] = rate.map(median);
    let [ld, lg, lh] = lat.map(median);
    let [bd, bg, bh, bs] = bulk.map(median);
    let [_, cg, ch] = cpu.map(median);
    println!();
    println!("connect_rate      direct    {rd:>10.0} conn/s   p50 {ld:>6.0} µs");
    println!("connect_rate      gatehouse {rg:>10.0} conn/s   p50 {lg:>6.0} µs");
    println!("connect_rate      haproxy   {rh:>10.0} conn/s   p50 {lh:>6.0} µs");
    println!("cpu_per_conn      gatehouse {cg:>10.1} µs       haproxy {ch:.1} µs");
    println!("bulk              direct    {bd:>10.0} MB/s");
    println!("bulk              gatehouse {bg:>10.0} MB/s");
    println!("bulk              haproxy   {bh:>10.0} MB/s");
    println!("bulk              splice    {bs:>10.0} MB/s   (a bare splice(2) relay: the mechanism's ceiling)");
    println!(
        "idle_rss          gatehouse {per_slow:>10.1} KiB per idle connection, {:.1} MiB with {slow_open} half-sent startups (goal ≤ 64 KiB each)",
        slow_kib / 1024.0
    );
    println!(
        "idle_rss_tcp      gatehouse {per_tcp:>10.1} KiB per idle TCP session, {:.1} MiB with {tcp_open} sessions",
        tcp_kib / 1024.0
    );
    println!("ratio connect_rate gatehouse/direct = {:.2}", rg / rd);
    println!("ratio connect_rate haproxy/direct = {:.2}", rh / rd);
    println!("ratio connect_rate gatehouse/haproxy = {:.2}", rg / rh);
    println!("ratio cpu_per_conn gatehouse/haproxy = {:.2}", cg / ch);
    println!("ratio bulk gatehouse/direct = {:.2}", bg / bd);
    println!("ratio bulk haproxy/direct = {:.2}", bh / bd);
    println!("ratio bulk gatehouse/haproxy = {:.2}", bg / bh);
    println!("ratio bulk splice_relay/direct = {:.2}", bs / bd);
    println!("ratio bulk gatehouse/splice_relay = {:.2}", bg / bs);
    println!("ratio idle_rss gatehouse/goal64k = {:.2}", per_slow / 64.0);
    println!("ratio idle_rss_tcp gatehouse/goal64k = {:.2}", per_tcp / 64.0);
    drop(servers);
    Ok(())
}

/// The agent's RSS growth (KiB) while the bench client holds `n` connections
/// of `mode` (idle | slow) to `addr`; returns (connections open, KiB).
fn idle_rss(rig: &Rig, pid: u32, mode: &str, addr: &str, n: usize) -> Result<(f64, f64)> {
    let before = rss_kib(pid)?;
    let mut idle = rig.client_cmd(&[mode.into(), addr.into(), n.to_string()])?.stdout(Stdio::piped()).spawn()?;
    let mut line = String::new();
    BufReader::new(idle.stdout.take().context("stdout")?).read_line(&mut line)?;
    std::thread::sleep(Duration::from_millis(500));
    let during = rss_kib(pid)?;
    let _ = idle.kill();
    let _ = idle.wait();
    let opened: f64 = line.trim().parse().unwrap_or(0.0);
    eprintln!("  {opened} open; agent RSS {before} KiB before, {during} KiB during");
    // Let the agent close them before the next measurement.
    std::thread::sleep(Duration::from_secs(2));
    Ok((opened, during.saturating_sub(before) as f64))
}

fn nofile_limit() -> usize {
    use nix::sys::resource::{Resource, getrlimit};
    getrlimit(Resource::RLIMIT_NOFILE).map_or(1024, |(_, hard)| usize::try_from(hard).unwrap_or(usize::MAX))
}

/// haproxy started with `config` (written to `dir/haproxy.cfg`), in the foreground (`-db`).
pub(crate) fn haproxy(dir: &Path, config: &str) -> Result<Child> {
    let cfg = dir.join("haproxy.cfg");
    std::fs::write(&cfg, config)?;
    Command::new("/usr/sbin/haproxy")
        .arg("-f")
        .arg(&cfg)
        .arg("-db")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("haproxy")
}

/// A child process ended (by its pid) when this goes out of scope, an error included.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A tcp-mode haproxy configuration: `bind` (host:port) relayed to `server` (host:port).
pub(crate) fn haproxy_tcp(bind: &str, server: &str) -> String {
    format!(
        "global\n  maxconn 2000\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 1h\n  timeout server 1h\n\
         frontend f\n  bind {bind}\n  default_backend b\nbackend b\n  server s {server}\n"
    )
}

pub(crate) fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

// ---- the client side, run inside the benchmark cgroup ----

#[derive(Debug, clap::Args)]
pub struct ClientArgs {
    /// rate ADDR SECS CONC | bulk ADDR BYTES | idle ADDR N | slow ADDR N
    #[arg(num_args = 1..)]
    pub args: Vec<String>,
}

pub fn client(a: &ClientArgs) -> Result<()> {
    raise_nofile();
    let arg = |i: usize| a.args.get(i).cloned().context("missing argument");
    match arg(0)?.as_str() {
        "rate" => client_rate(arg(1)?.parse()?, arg(2)?.parse()?, arg(3)?.parse()?),
        "bulk" => client_bulk(arg(1)?.parse()?, arg(2)?.parse()?),
        "idle" => client_idle(arg(1)?.parse()?, arg(2)?.parse()?),
        "slow" => client_slow(arg(1)?.parse()?, arg(2)?.parse()?),
        other => bail!("unknown client mode {other}"),
    }
}

/// The client opens many sockets: lift the soft descriptor limit to the hard one.
fn raise_nofile() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

fn client_rate(addr: SocketAddr, secs: u64, conc: usize) -> Result<()> {
    let lat = Arc::new(Mutex::new(Vec::new()));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let start = Instant::now();
    let threads: Vec<_> = (0..conc)
        .map(|_| {
            let lat = lat.clone();
            std::thread::spawn(move || {
                let mut mine = Vec::new();
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let Ok(mut s) = TcpStream::connect(addr) else { continue };
                    let _ = s.set_nodelay(true);
                    let mut b = [7u8];
                    if s.write_all(&b).is_ok() && s.read_exact(&mut b).is_ok() {
                        mine.push(t.elapsed().as_micros() as f64);
                    }
                }
                lat.lock().map(|mut l| l.extend(mine)).ok();
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    let elapsed = start.elapsed().as_secs_f64();
    let mut l = lat.lock().map(|l| l.clone()).unwrap_or_default();
    l.sort_by(f64::total_cmp);
    let pct = |p: f64| l.get(((l.len() as f64) * p) as usize).copied().unwrap_or(0.0);
    println!(
        "{}",
        serde_json::json!({ "conns": l.len(), "rate": l.len() as f64 / elapsed, "p50_us": pct(0.5), "p99_us": pct(0.99) })
    );
    Ok(())
}

fn client_bulk(addr: SocketAddr, bytes: u64) -> Result<()> {
    let mut s = TcpStream::connect(addr)?;
    let buf = vec![0x5au8; 256 * 1024];
    let start = Instant::now();
    let mut left = bytes;
    while left > 0 {
        let n = usize::try_from(left.min(buf.len() as u64))?;
        s.write_all(buf.get(..n).unwrap_or_default())?;
        left -= n as u64;
    }
    s.shutdown(std::net::Shutdown::Write)?;
    let mut got = [0u8; 8];
    s.read_exact(&mut got)?;
    let secs = start.elapsed().as_secs_f64();
    if u64::from_le_bytes(got) != bytes {
        bail!("sink received {} of {bytes} bytes", u64::from_le_bytes(got));
    }
    println!("{}", serde_json::json!({ "bytes": bytes, "secs": secs, "mb_per_s": bytes as f64 / secs / 1e6 }));
    Ok(())
}

fn client_idle(addr: SocketAddr, n: usize) -> Result<()> {
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = TcpStream::connect(addr)?;
        // One round trip so the session is fully set up on the proxy.
        let mut b = [1u8];
        s.write_all(&b)?;
        s.read_exact(&mut b)?;
        conns.push(s);
    }
    println!("{}", conns.len());
    std::io::stdout().flush()?;
    std::thread::sleep(Duration::from_secs(60));
    Ok(())
}

/// Opens `n` connections that each send one byte (of a PostgreSQL startup
/// packet's length) and then nothing; prints how many are open and holds them.
fn client_slow(addr: SocketAddr, n: usize) -> Result<()> {
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = TcpStream::connect(addr)?;
        s.write_all(&[0])?;
        conns.push(s);
    }
    println!("{}", conns.len());
    std::io::stdout().flush()?;
    std::thread::sleep(Duration::from_secs(60));
    Ok(())
}
