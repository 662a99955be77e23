//! The `gatehouse` command line: the daemon (`run`) and the operator's tools.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::audit::query::{SessionFilter, SessionRow, sessions};
use crate::control::{self, Request, Response};
use crate::policy::load::load_path;
use crate::redirect::{self, PinStatus};
use crate::settings::{self, Overrides, Settings};

#[derive(Debug, Parser)]
#[command(
    name = "gatehouse",
    version,
    about = "Gatehouse: transparent, audited access to protected backends from a bastion host",
    long_about = "Gatehouse runs on a bastion host. eBPF programs send every connection to a \
protected backend into Gatehouse's proxy, which knows the Unix user behind it, applies the \
operators' policy and records the session. Clients keep their configuration."
)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent: attach the eBPF programs, serve protected backends until SIGTERM/SIGINT.
    Run(RunArgs),
    /// Show the running agent (or, if it is down, what is pinned in the kernel).
    Status(StatusArgs),
    /// List recorded sessions from the audit store.
    Sessions(SessionsArgs),
    /// Remove every program, link and map Gatehouse attached or pinned.
    Detach(DetachArgs),
    /// Check and test policy files.
    #[command(subcommand)]
    Policy(PolicyCommand),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Policy file, or directory of *.toml policy files.
    #[arg(long, short, default_value = settings::DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Proxy port on 127.0.0.1 and ::1 (default 996; below 1024 so only root can stand in for it).
    #[arg(long)]
    pub port: Option<u16>,
    /// Cgroup (v2) to attach to; default: the cgroup v2 root, i.e. the whole host.
    #[arg(long)]
    pub cgroup: Option<PathBuf>,
    /// bpffs directory for pinned links and maps.
    #[arg(long)]
    pub pin_dir: Option<PathBuf>,
    /// Audit database (SQLite).
    #[arg(long)]
    pub audit_db: Option<PathBuf>,
    /// Control socket the CLI talks to.
    #[arg(long)]
    pub control_socket: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[arg(long, default_value = settings::DEFAULT_CONTROL_SOCKET)]
    pub control_socket: PathBuf,
    /// Pin directory to inspect when the agent is not running.
    #[arg(long, default_value = settings::DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SessionsArgs {
    #[arg(long, default_value = settings::DEFAULT_AUDIT_DB)]
    pub db: PathBuf,
    /// Only this user's sessions.
    #[arg(long)]
    pub user: Option<String>,
    #[arg(long)]
    pub uid: Option<u32>,
    #[arg(long)]
    pub backend: Option<String>,
    /// allow or deny.
    #[arg(long)]
    pub decision: Option<String>,
    /// Show at most this many (the newest).
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DetachArgs {
    #[arg(long, default_value = settings::DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,
    #[arg(long, default_value = settings::DEFAULT_CONTROL_SOCKET)]
    pub control_socket: PathBuf,
    /// Detach even though the agent is running.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Load and validate policy files; report every error as file:line:col.
    Check {
        /// Policy file or directory.
        path: PathBuf,
    },
    /// Run the [[test]] cases written in the policy files.
    Test {
        path: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

/// Entry point used by `main`.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gatehouse: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(dispatch(cli.command))
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("GATEHOUSE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).init(),
    }
}

async fn dispatch(cmd: Command) -> ExitCode {
    match cmd {
        Command::Run(a) => run(a).await,
        Command::Status(a) => status(a).await,
        Command::Sessions(a) => list_sessions(&a),
        Command::Detach(a) => detach(a).await,
        Command::Policy(PolicyCommand::Check { path }) => policy_check(&path),
        Command::Policy(PolicyCommand::Test { path, json }) => policy_test(&path, json),
    }
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("gatehouse: {msg}");
    ExitCode::FAILURE
}

async fn run(a: RunArgs) -> ExitCode {
    if !nix::unistd::geteuid().is_root() {
        return fail("`gatehouse run` needs root (it attaches eBPF programs and binds a privileged port)");
    }
    let policy = match load_path(&a.config) {
        Ok(p) => p,
        Err(d) => return fail(format_args!("policy {} does not load:\n{d}", a.config.display())),
    };
    let overrides = Overrides {
        port: a.port,
        pin_dir: a.pin_dir,
        cgroup: a.cgroup,
        audit_db: a.audit_db,
        control_socket: a.control_socket,
    };
    let settings = match Settings::resolve(&policy.agent, &overrides) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    match crate::proxy::run(settings, policy, a.config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

async fn status(a: StatusArgs) -> ExitCode {
    match control::request(&a.control_socket, &Request::Status).await {
        Ok(Response::Status(s)) => {
            if a.json {
                println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
            } else {
                print_status(&s);
            }
            ExitCode::SUCCESS
        }
        Ok(Response::Error { message }) => fail(message),
        Err(e) => {
            let pins = PinStatus::read(&a.pin_dir);
            if a.json {
                let v = serde_json::json!({ "running": false, "error": e.to_string(), "pins": pins });
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                println!("agent:     not running ({e})");
                print_pins(&pins);
                if pins.links.iter().any(|l| l.pinned) {
                    println!(
                        "note:      programs are still attached: protected backends are refused (fail closed) until the agent returns or `gatehouse detach` runs"
                    );
                }
            }
            ExitCode::from(3)
        }
    }
}

fn print_status(s: &control::AgentStatus) {
    println!("agent:     running, pid {} (version {}), since {}", s.pid, s.version, fmt_time(s.started_us));
    println!("config:    {}", s.config.display());
    println!("listening: {}", s.listening.join(", "));
    println!(
        "cgroup:    {}{}",
        s.cgroup.display(),
        if s.reused_pins { " (pins reused from a previous run)" } else { "" }
    );
    if let Ok(pins) = serde_json::from_value::<serde_json::Value>(s.pins.clone()) {
        if let Some(links) = pins.get("links").and_then(|l| l.as_array()) {
            let attached: Vec<String> = links
                .iter()
                .map(|l| {
                    format!(
                        "{}{}",
                        l.get("name").and_then(|n| n.as_str()).unwrap_or("?"),
                        l.get("program_id")
                            .and_then(serde_json::Value::as_u64)
                            .map(|p| format!("(prog {p})"))
                            .unwrap_or_else(|| "(missing)".into())
                    )
                })
                .collect();
            println!("programs:  {}", attached.join(" "));
        }
        println!("pins:      {}", pins.get("pin_dir").and_then(|p| p.as_str()).unwrap_or("?"));
    }
    println!("audit:     {}", s.audit_db.display());
    println!("rules:     {}", s.rules);
    println!("backends:");
    for b in &s.backends {
        let addrs = if b.addresses.is_empty() { "(unresolved)".to_owned() } else { b.addresses.join(", ") };
        println!("  {:<20} {:<8} {addrs}", b.name, b.protocol);
    }
    println!("sessions:  {}", s.sessions);
    println!("kernel:    {}", s.kernel);
}

fn print_pins(p: &PinStatus) {
    println!("pins:      {}", p.pin_dir.display());
    for l in &p.links {
        let state = match (l.pinned, l.program_id) {
            (true, Some(id)) => format!("attached (link {}, prog {id})", l.link_id.unwrap_or(0)),
            (true, None) => "pinned, unreadable".into(),
            (false, _) => "absent".into(),
        };
        println!("  {:<20} {state}", l.name);
    }
    if let Some(port) = p.proxy_port {
        println!("redirects: to port {port}; protected: {:?}", p.protected);
    }
}

fn fmt_time(us: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000)
        .ok()
        .and_then(|t| {
            t.format(&time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]")).ok()
        })
        .unwrap_or_else(|| us.to_string())
}

fn list_sessions(a: &SessionsArgs) -> ExitCode {
    let filter = SessionFilter {
        user: a.user.clone(),
        uid: a.uid,
        backend: a.backend.clone(),
        decision: a.decision.clone(),
        limit: Some(a.limit),
    };
    let rows = match sessions(&a.db, &filter) {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    if a.json {
        for r in &rows {
            println!("{}", serde_json::to_string(r).unwrap_or_default());
        }
    } else {
        print_sessions(&rows);
    }
    ExitCode::SUCCESS
}

fn print_sessions(rows: &[SessionRow]) {
    let header = [
        "STARTED",
        "USER",
        "UID",
        "PID",
        "COMM",
        "BACKEND",
        "DESTINATION",
        "DECISION",
        "RULE",
        "BYTES_UP",
        "BYTES_DOWN",
        "END",
    ];
    let table: Vec<[String; 12]> = rows
        .iter()
        .map(|r| {
            [
                fmt_time(r.started_us),
                r.user.clone().unwrap_or_else(|| "-".into()),
                r.uid.map_or("-".into(), |u| u.to_string()),
                r.pid.map_or("-".into(), |p| p.to_string()),
                r.comm.clone().unwrap_or_else(|| "-".into()),
                r.backend.clone().unwrap_or_else(|| "-".into()),
                r.orig_dst.clone().unwrap_or_else(|| r.client.clone()),
                r.decision.clone(),
                r.rule.clone().unwrap_or_else(|| "(default deny)".into()),
                r.bytes_up.to_string(),
                r.bytes_down.to_string(),
                r.end_reason.clone().unwrap_or_else(|| "open".into()),
            ]
        })
        .collect();
    print_table(&header, &table);
}

/// Prints left-aligned columns sized to their widest cell (numbers right-aligned).
fn print_table<const N: usize>(header: &[&str; N], rows: &[[String; N]]) {
    let mut width = [0usize; N];
    for (w, h) in width.iter_mut().zip(header) {
        *w = h.chars().count();
    }
    for row in rows {
        for (w, cell) in width.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(width).enumerate() {
            let numeric = !cell.is_empty() && cell.chars().all(|c| c.is_ascii_digit());
            let last = i + 1 == N;
            if numeric {
                out.push_str(&format!("{cell:>w$}"));
            } else if last {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}"));
            }
            if !last {
                out.push_str("  ");
            }
        }
        println!("{}", out.trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

async fn detach(a: DetachArgs) -> ExitCode {
    if !nix::unistd::geteuid().is_root() {
        return fail("`gatehouse detach` needs root");
    }
    if !a.force && control::request(&a.control_socket, &Request::Status).await.is_ok() {
        return fail("the agent is running; stop it first (or pass --force to leave it running without redirection)");
    }
    match redirect::detach(&a.pin_dir) {
        Ok(removed) if removed.is_empty() => {
            println!("nothing pinned under {}", a.pin_dir.display());
            ExitCode::SUCCESS
        }
        Ok(removed) => {
            for p in removed {
                println!("removed {}", p.display());
            }
            println!("detached: connections to protected backends now go direct, unprotected");
            ExitCode::SUCCESS
        }
        Err(e) => fail(format_args!("detach {}: {e}", a.pin_dir.display())),
    }
}

fn policy_check(path: &Path) -> ExitCode {
    match load_path(path) {
        Ok(p) => {
            println!(
                "{}: ok ({} backends, {} rules, {} tests)",
                path.display(),
                p.backends.len(),
                p.rules.len(),
                p.tests.len()
            );
            ExitCode::SUCCESS
        }
        Err(d) => {
            eprintln!("{d}");
            eprintln!("{} error(s)", d.0.len());
            ExitCode::FAILURE
        }
    }
}

fn policy_test(path: &Path, json: bool) -> ExitCode {
    let policy = match load_path(path) {
        Ok(p) => p,
        Err(d) => {
            eprintln!("{d}");
            return ExitCode::FAILURE;
        }
    };
    let outcomes = policy.run_tests();
    if json {
        println!("{}", serde_json::to_string_pretty(&outcomes).unwrap_or_default());
    } else {
        println!("{:<6} {:<44} {:<28} GOT", "RESULT", "TEST", "EXPECTED");
        for o in &outcomes {
            let got = format!("{} by {}", if o.decision.allowed { "allow" } else { "deny" }, o.decision.rule_label());
            println!("{:<6} {:<44} {:<28} {got}", if o.passed { "pass" } else { "FAIL" }, o.name, o.expected);
            if !o.passed {
                println!("       at {}: {}", o.location, o.decision.reason);
            }
        }
    }
    let failed = outcomes.iter().filter(|o| !o.passed).count();
    println!("{} passed, {failed} failed", outcomes.len() - failed);
    if failed > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}
