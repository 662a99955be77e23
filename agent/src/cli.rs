//! The `gatehouse` command line: the daemon (`run`) and the operator's tools.

mod approvals;
mod ca;
mod login;
mod trust;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::audit::query::{SessionFilter, SessionRow, sessions};
use crate::control::{self, Request, Response};
use crate::identity::Principal;
use crate::policy::load::{LoadOptions, load_path, load_path_with};
use crate::policy::testcases::verdict_name;
use crate::redirect::{self, PinStatus};
use crate::settings::{self, Overrides, Settings};
use crate::types::BackendName;

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
    /// List recorded statements (PostgreSQL sessions): decision, rule, rows, duration, error.
    Statements(StatementsArgs),
    /// Check an audit database (or an export bundle) for changed, deleted, inserted or reordered records.
    Verify(VerifyArgs),
    /// Print a recorded session as it happened (psql-like for PostgreSQL, text/hex for TCP).
    Replay(ReplayArgs),
    /// Write a signed, verifiable bundle of recorded sessions (jsonl, OCSF or asciicast).
    Export(ExportArgs),
    /// Remove a session's recorded content (a leaked secret, an erasure request), leaving a signed redaction record.
    Redact(trust::RedactArgs),
    /// The host's audit signing key: show it, rotate it.
    #[command(subcommand)]
    Keys(trust::KeysCommand),
    /// The agent's certificate authorities: `init` and `export` the CA for HTTPS backends (tls = "terminate").
    #[command(subcommand)]
    Ca(ca::CaCommand),
    /// Remove every program, link and map Gatehouse attached or pinned.
    Detach(DetachArgs),
    /// Check, test and explain policy files.
    #[command(subcommand, long_about = POLICY_HELP)]
    Policy(PolicyCommand),
    /// Try masking profiles.
    #[command(subcommand)]
    Mask(MaskCommand),
    /// Requests waiting for a human that you may see: held statements and logins, grants.
    Requests(approvals::RequestsArgs),
    /// Approve a request (you must be one of its approvers, and not its requester).
    Approve(approvals::DecideArgs),
    /// Deny a request (`--reason` is shown to the requester).
    Deny(approvals::DecideArgs),
    /// Ask for a just-in-time grant (a `[[grant]]` of the policy) on a backend.
    Request(approvals::GrantRequestArgs),
    /// Take back an approved grant: its open sessions are cut.
    Revoke(approvals::RevokeArgs),
    /// Log in to the organisation's identity provider (device flow) and bind the identity to your uid.
    Login(login::LoginArgs),
    /// Show your uid, groups and the identity bound to it.
    Whoami(login::WhoamiArgs),
    /// End the binding of your identity to your uid.
    Logout(login::WhoamiArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Policy file, or directory of *.toml policy files.
    #[arg(long, short, default_value = settings::DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Proxy port on 127.0.0.1 and ::1 (default 996; below 1024 so only root can stand in for it).
    #[arg(long)]
    pub port: Option<u16>,
    /// Accept a proxy port at or above net.ipv4.ip_unprivileged_port_start. While the agent
    /// is down any local user could bind it and collect other users' connections: for tests only.
    #[arg(long)]
    pub allow_unprivileged_port: bool,
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
    /// Read this audit database directly (root) instead of asking the running agent.
    #[arg(long)]
    pub db: Option<PathBuf>,
    #[arg(long, default_value = settings::DEFAULT_CONTROL_SOCKET)]
    pub control_socket: PathBuf,
    /// Sessions started at or after this time (RFC 3339, or a duration ago: 2h, 7d).
    #[arg(long)]
    pub since: Option<String>,
    /// Sessions started before this time (RFC 3339, or a duration ago).
    #[arg(long)]
    pub until: Option<String>,
    /// Sessions with a statement whose text contains this (case-insensitive).
    #[arg(long)]
    pub text: Option<String>,
    /// Only this user's sessions: a Unix user name, or the subject or e-mail of a `gatehouse login`.
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
pub struct StatementsArgs {
    /// Read this audit database directly (root) instead of asking the running agent.
    #[arg(long)]
    pub db: Option<PathBuf>,
    #[arg(long, default_value = settings::DEFAULT_CONTROL_SOCKET)]
    pub control_socket: PathBuf,
    /// Only this session's statements.
    #[arg(long)]
    pub session: Option<String>,
    #[arg(long, default_value_t = 200)]
    pub limit: u32,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The session id (or a unique prefix of it).
    pub session: String,
    /// Play N times faster than real time.
    #[arg(long, default_value_t = 1.0)]
    pub speed: f64,
    /// Print everything at once.
    #[arg(long)]
    pub no_wait: bool,
    /// Read this audit database directly (root) instead of asking the running agent.
    #[arg(long)]
    pub db: Option<PathBuf>,
    #[arg(long, default_value = settings::DEFAULT_CONTROL_SOCKET)]
    pub control_socket: PathBuf,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Sessions opened at or after this time (RFC 3339, or a duration ago: 7d).
    #[arg(long)]
    pub since: Option<String>,
    /// Sessions opened before this time.
    #[arg(long)]
    pub until: Option<String>,
    /// Only this user's sessions (name, or uid).
    #[arg(long)]
    pub user: Option<String>,
    /// jsonl, ocsf or asciicast (records.jsonl, the verifiable copy, is always written).
    #[arg(long, default_value = "jsonl")]
    pub format: String,
    /// The bundle directory to create (must not exist, or be empty).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value = settings::DEFAULT_AUDIT_DB)]
    pub db: PathBuf,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// An audit database file or an export bundle directory (default: the agent's store).
    pub path: Option<PathBuf>,
    /// Same as PATH, for a database file.
    #[arg(long, conflicts_with = "path")]
    pub db: Option<PathBuf>,
    /// A host public key to trust (hex, as `gatehouse status` printed it when you recorded it; repeatable).
    /// Default: the keys in /etc/gatehouse/audit.pub. Key rotations in the store are followed from it.
    #[arg(long)]
    pub pubkey: Vec<String>,
    /// A file of trusted public keys (hex, one per line) instead of /etc/gatehouse/audit.pub.
    #[arg(long, conflicts_with = "pubkey")]
    pub pubkey_file: Option<PathBuf>,
    /// Checkpoints published off the host (the agent's anchors file as shipped, or syslog output):
    /// the store must still reach the newest of them, or its end was cut off.
    #[arg(long)]
    pub anchors: Option<PathBuf>,
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

const POLICY_HELP: &str = "Check, test and explain policy files.

How decisions are made:
  - Default deny: nothing is reachable unless an allow rule says so.
  - Any matching deny rule beats any allow rule. A deny rule without
    `statements`/`tables` refuses the connection; with them, it refuses
    only the statements they describe.
  - Among matching allow rules the most specific wins: a rule naming the
    user (users, uids, subjects, emails) beats one naming a group, which
    beats users = [\"*\"]; a backend named exactly beats a glob. Ties go to
    the rule written first. The winning rule decides the backend role
    (as_role), the statements and tables allowed, masking and approvals.
  - `statements = [\"*\"]` covers every kind except the opaque ones
    (function_call, do, call, execute, set_role, copy_program, copy_file,
    load): their effect cannot be read from the text, so a rule must name
    them. Transaction control, show, set, discard, deallocate, explain and
    prepare are allowed implicitly (their inner statement is checked).
  - A rule with `when` applies only inside its days/hours (in its time
    zone) and validity period.
  - A rule with `require = { login, max_age, acr }` applies only to a
    connection whose user ran `gatehouse login` (recently enough, strongly
    enough); `oidc_groups`, `subjects` and `emails` match only after it.
    `groups` are Unix groups only.
  - Every decision names the rule that made it and, when refused by
    default, the closest rule that did not match and why.
  - Until approvals are enforced, a statement that needs approval is
    refused with a message saying so (fail closed).";

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Load and validate policy files; report every error as file:line:col, and check the
    /// password, key and CA files they name (root-owned, 0600 for secrets, no symlinks).
    Check {
        /// Policy file or directory.
        path: PathBuf,
        /// Do not check the files the policy names (on a machine other than the bastion, in CI).
        #[arg(long)]
        skip_secret_files: bool,
    },
    /// Run the [[test]] cases written in the policy files; exit 1 on any failure.
    Test {
        path: PathBuf,
        /// Time for cases without `at` (RFC 3339); default: now.
        #[arg(long)]
        at: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Show the decision for a user, a backend and optionally a statement, with every rule considered.
    Explain(Box<ExplainArgs>),
}

#[derive(Debug, Subcommand)]
pub enum MaskCommand {
    /// Read text on stdin and print it masked by a profile (counts on stderr).
    Test {
        /// The masking profile's name.
        #[arg(long)]
        profile: String,
        /// Policy file or directory holding the profile.
        #[arg(long, short, default_value = settings::DEFAULT_CONFIG)]
        config: PathBuf,
        /// Treat each line as a value of this column (applies the column rules too).
        #[arg(long)]
        column: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// Policy file or directory.
    #[arg(long, short, default_value = settings::DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// The Unix user (their groups come from NSS unless --group is given).
    #[arg(long)]
    pub user: String,
    /// A group of the user (repeatable); replaces the NSS lookup.
    #[arg(long = "group")]
    pub groups: Vec<String>,
    /// Decide as if the user had run `gatehouse login` as this subject.
    #[arg(long)]
    pub login_subject: Option<String>,
    /// The login's (verified) e-mail address.
    #[arg(long, requires = "login_subject")]
    pub login_email: Option<String>,
    /// A group from the IdP (repeatable).
    #[arg(long = "login-group", requires = "login_subject")]
    pub login_groups: Vec<String>,
    /// The login's acr.
    #[arg(long, requires = "login_subject")]
    pub login_acr: Option<String>,
    /// How long ago the IdP authenticated the user (default: just now).
    #[arg(long, requires = "login_subject")]
    pub login_age: Option<String>,
    #[arg(long)]
    pub backend: String,
    /// SQL to classify and decide (every statement of it).
    #[arg(long, conflicts_with = "kind")]
    pub sql: Option<String>,
    /// A statement kind instead of SQL (select, drop, …).
    #[arg(long)]
    pub kind: Option<String>,
    /// When (RFC 3339, e.g. 2026-12-01T18:00:00Z); default: now.
    #[arg(long)]
    pub at: Option<String>,
    #[arg(long)]
    pub json: bool,
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
        Command::Sessions(a) => list_sessions(&a).await,
        Command::Statements(a) => list_statements(&a).await,
        Command::Verify(a) => trust::verify(&a),
        Command::Replay(a) => replay(&a).await,
        Command::Export(a) => trust::export(&a),
        Command::Redact(a) => trust::redact(&a).await,
        Command::Keys(k) => trust::keys(k).await,
        Command::Ca(c) => ca::ca(c),
        Command::Detach(a) => detach(a).await,
        Command::Policy(PolicyCommand::Check { path, skip_secret_files }) => policy_check(&path, skip_secret_files),
        Command::Policy(PolicyCommand::Test { path, at, json }) => policy_test(&path, at.as_deref(), json),
        Command::Policy(PolicyCommand::Explain(a)) => policy_explain(&a),
        Command::Mask(MaskCommand::Test { profile, config, column }) => mask_test(&profile, &config, column.as_deref()),
        Command::Requests(a) => approvals::list(&a).await,
        Command::Approve(a) => approvals::approve(&a).await,
        Command::Deny(a) => approvals::deny(&a).await,
        Command::Request(a) => approvals::request_grant(&a).await,
        Command::Revoke(a) => approvals::revoke(&a).await,
        Command::Login(a) => login::login(&a).await,
        Command::Whoami(a) => login::whoami(&a).await,
        Command::Logout(a) => login::logout(&a).await,
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
        allow_unprivileged_port: a.allow_unprivileged_port,
    };
    let settings = match Settings::resolve(&policy.agent, &overrides) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    // Masking profiles' hash tokens are keyed by a secret of this host, kept
    // beside the audit store; the policy is loaded again with it.
    let load_options = match settings::mask_key(&settings.audit_db) {
        Ok(mask_key) => LoadOptions { mask_key },
        Err(e) => return fail(e),
    };
    let policy = match load_path_with(&a.config, &load_options) {
        Ok(p) => p,
        Err(d) => return fail(format_args!("policy {} does not load:\n{d}", a.config.display())),
    };
    let files = match crate::policy::files::check(&policy, jiff::Timestamp::now().as_second()) {
        Ok(f) => f,
        Err(d) => return fail(format_args!("policy {} names files that may not be used:\n{d}", a.config.display())),
    };
    for w in &files.warnings {
        tracing::warn!("{w}");
    }
    let failed: Vec<_> = policy.run_tests(jiff::Timestamp::now()).into_iter().filter(|o| !o.passed).collect();
    if !failed.is_empty() {
        for o in &failed {
            eprintln!("FAIL {} at {}: expected {}, got {}", o.name, o.location, o.expected, o.decision.reason());
        }
        return fail(format_args!(
            "{} policy test case(s) fail; not starting with a policy that fails its own tests",
            failed.len()
        ));
    }
    match crate::proxy::run(settings, policy, files, a.config, load_options).await {
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
        Ok(_) => fail("unexpected answer from the agent"),
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
    let health = &s.pin_health;
    let repinned = health.get("repinned").and_then(serde_json::Value::as_u64).unwrap_or(0);
    if let Some(event) = health.get("last_event").and_then(serde_json::Value::as_str) {
        println!("pins:      {repinned} restored after removal; last: {event}");
    }
    for (what, key) in [("DETACHED", "detached"), ("MISSING", "missing")] {
        if let Some(list) = health.get(key).and_then(serde_json::Value::as_array).filter(|l| !l.is_empty()) {
            println!(
                "pins:      {what}: {}",
                list.iter().filter_map(serde_json::Value::as_str).collect::<Vec<_>>().join(", ")
            );
        }
    }
    println!("refusals:  {}", s.refusals);
    println!("limits:    {} descriptors; {} control connections refused (too many open)", s.nofile, s.control_refused);
    println!("audit:     {} ({:?} mode)", s.audit_db.display(), s.audit_mode);
    if let Some(f) = &s.audit_failure {
        println!("audit:     FAILED, failing closed: {f}");
    }
    println!("host key:  {} (verifies audit checkpoints and exports)", s.public_key);
    if let Some(f) = &s.public_key_file {
        println!(
            "           also in {}; record it off this host (or in /etc/gatehouse/audit.pub by configuration management): `gatehouse verify` trusts only keys from outside the store",
            f.display()
        );
    }
    println!("rules:     {}", s.rules);
    let reloads = s.policy.get("reloads").and_then(serde_json::Value::as_u64).unwrap_or(0);
    println!(
        "policy:    loaded {}, {reloads} reload(s)",
        s.policy.get("loaded_us").and_then(serde_json::Value::as_i64).map(fmt_time).unwrap_or_default()
    );
    if let Some(err) = s.policy.get("last_error").and_then(serde_json::Value::as_str) {
        println!("policy:    LAST RELOAD REFUSED (previous policy still in force):");
        for line in err.lines() {
            println!("             {line}");
        }
    }
    println!("backends:");
    for b in &s.backends {
        let addrs = if b.addresses.is_empty() { "(unresolved)".to_owned() } else { b.addresses.join(", ") };
        let tls = b.tls.as_deref().map(|t| format!(" tls={t}")).unwrap_or_default();
        println!("  {:<20} {:<8} {addrs}{tls}", b.name, b.protocol);
        if let Some(l) = &b.last_login {
            println!(
                "  {:<20} last login: {} as {}, {}, auth {}{}",
                "",
                b.last_login_us.map(fmt_time).unwrap_or_default(),
                l.user,
                l.tls_summary(),
                l.auth,
                l.certificate_sha256.as_deref().map(|c| format!(", certificate sha256 {c}")).unwrap_or_default()
            );
        }
        if let Some(t) = b.client_tls_expires {
            println!("  {:<20} client_tls certificate valid until {}", "", fmt_time(t.saturating_mul(1_000_000)));
        }
        for w in &b.warnings {
            println!("  {:<20} WARNING: {w}", "");
        }
    }
    for w in &s.warnings {
        println!("warning:   {w}");
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

/// A time as operators write it: RFC 3339, or a duration ago (`2h`, `7d`).
fn parse_time(s: &str) -> Result<i64, String> {
    if let Ok(t) = s.parse::<jiff::Timestamp>() {
        return Ok(t.as_microsecond());
    }
    let d =
        settings::parse_duration(s).map_err(|_| format!("{s:?} is neither an RFC 3339 time nor a duration like 2h"))?;
    Ok(crate::audit::now_us() - i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// Asks the running agent (which authorises by uid); without one, root
/// reads the store directly.
async fn ask_or_read<T>(
    socket: &Path,
    db: Option<&Path>,
    req: Request,
    pick: impl FnOnce(Response) -> Option<Result<T, String>>,
    direct: impl FnOnce(&Path) -> Result<T, crate::audit::AuditError>,
) -> Result<T, String> {
    if let Some(db) = db {
        return direct(db).map_err(|e| e.to_string());
    }
    match control::request(socket, &req).await {
        Ok(Response::Error { message }) => Err(message),
        Ok(r) => pick(r).unwrap_or_else(|| Err("unexpected answer from the agent".into())),
        Err(e) => {
            if nix::unistd::geteuid().is_root() {
                direct(Path::new(settings::DEFAULT_AUDIT_DB)).map_err(|e| e.to_string())
            } else {
                Err(format!("{e}; without a running agent only root can read the audit store"))
            }
        }
    }
}

async fn list_sessions(a: &SessionsArgs) -> ExitCode {
    let time = |s: &Option<String>| s.as_deref().map(parse_time).transpose();
    let (since_us, until_us) = match (time(&a.since), time(&a.until)) {
        (Ok(s), Ok(u)) => (s, u),
        (Err(e), _) | (_, Err(e)) => return fail(e),
    };
    let filter = SessionFilter {
        user: a.user.clone(),
        uid: a.uid,
        backend: a.backend.clone(),
        decision: a.decision.clone(),
        since_us,
        until_us,
        text: a.text.clone(),
        limit: Some(a.limit),
    };
    let direct_filter = filter.clone();
    let rows = ask_or_read(
        &a.control_socket,
        a.db.as_deref(),
        Request::Sessions { filter },
        |r| match r {
            Response::Sessions { rows } => Some(Ok(rows)),
            _ => None,
        },
        |db| sessions(db, &direct_filter),
    )
    .await;
    let rows = match rows {
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

async fn list_statements(a: &StatementsArgs) -> ExitCode {
    let (session, limit) = (a.session.clone(), a.limit);
    let rows = ask_or_read(
        &a.control_socket,
        a.db.as_deref(),
        Request::Statements { session: session.clone(), limit },
        |r| match r {
            Response::Statements { rows } => Some(Ok(rows)),
            _ => None,
        },
        |db| crate::audit::query::statements(db, session.as_deref(), limit),
    )
    .await;
    let rows = match rows {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    if a.json {
        for r in &rows {
            println!("{}", serde_json::to_string(r).unwrap_or_default());
        }
        return ExitCode::SUCCESS;
    }
    let table: Vec<[String; 8]> = rows
        .iter()
        .map(|r| {
            let text: String = r.text.split_whitespace().collect::<Vec<_>>().join(" ");
            let text = if text.chars().count() > 60 {
                format!("{}…", text.chars().take(59).collect::<String>())
            } else {
                text
            };
            [
                fmt_time(r.started_us),
                r.session_id.chars().take(13).collect(),
                r.decision.clone(),
                r.rule.clone().unwrap_or_else(|| "-".into()),
                r.rows.map_or("-".into(), |n| n.to_string()),
                r.duration_us.map_or("-".into(), |d| format!("{:.1}ms", d as f64 / 1000.0)),
                text,
                r.error.clone().or_else(|| r.reason.clone()).unwrap_or_default(),
            ]
        })
        .collect();
    print_table(&["STARTED", "SESSION", "DECISION", "RULE", "ROWS", "TIME", "STATEMENT", "ERROR/REASON"], &table);
    ExitCode::SUCCESS
}

async fn replay(a: &ReplayArgs) -> ExitCode {
    use crate::audit::replay::{self, Line, ReplayOptions};
    let session = a.session.clone();
    let lines: Result<Vec<Line>, String> = ask_or_read(
        &a.control_socket,
        a.db.as_deref(),
        Request::Replay { session: session.clone() },
        |r| match r {
            Response::Replay { lines } => {
                Some(Ok(lines.into_iter().map(|(at_us, text)| Line { at_us, text }).collect()))
            }
            _ => None,
        },
        |db| {
            let conn = crate::audit::query::open_read_only(db)?;
            let fail = |e: replay::ReplayError| crate::audit::AuditError::Failed(e.to_string());
            let id = replay::resolve_session(&conn, &session, None).map_err(fail)?;
            let records = replay::session_records(&conn, &id).map_err(fail)?;
            replay::transcript(&records).map_err(fail)
        },
    )
    .await;
    let lines = match lines {
        Ok(l) => l,
        Err(e) => return fail(e),
    };
    let opts = ReplayOptions { speed: a.speed, no_wait: a.no_wait, ..ReplayOptions::default() };
    let stdout = std::io::stdout();
    match replay::play(&lines, &opts, &mut stdout.lock()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

fn print_sessions(rows: &[SessionRow]) {
    let header = [
        "STARTED",
        "USER",
        "LOGIN",
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
    let table: Vec<[String; 13]> = rows
        .iter()
        .map(|r| {
            [
                fmt_time(r.started_us),
                r.user.clone().unwrap_or_else(|| "-".into()),
                r.oidc_email.clone().or_else(|| r.oidc_subject.clone()).unwrap_or_else(|| "-".into()),
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

fn policy_check(path: &Path, skip_secret_files: bool) -> ExitCode {
    match load_path(path) {
        Ok(p) => {
            if !skip_secret_files {
                match crate::policy::files::check(&p, jiff::Timestamp::now().as_second()) {
                    Ok(report) => {
                        for w in &report.warnings {
                            println!("warning: {w}");
                        }
                    }
                    Err(d) => {
                        eprintln!("{d}");
                        eprintln!(
                            "{} error(s) (files the policy names; --skip-secret-files to check only the policy)",
                            d.0.len()
                        );
                        return ExitCode::FAILURE;
                    }
                }
            }
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

fn parse_at(at: Option<&str>) -> Result<jiff::Timestamp, String> {
    match at {
        None => Ok(jiff::Timestamp::now()),
        Some(s) => s.parse().map_err(|e| format!("--at {s:?}: not an RFC 3339 time like 2026-12-01T18:00:00Z: {e}")),
    }
}

fn policy_test(path: &Path, at: Option<&str>, json: bool) -> ExitCode {
    let now = match parse_at(at) {
        Ok(t) => t,
        Err(e) => return fail(e),
    };
    let policy = match load_path(path) {
        Ok(p) => p,
        Err(d) => {
            eprintln!("{d}");
            return ExitCode::FAILURE;
        }
    };
    let outcomes = policy.run_tests(now);
    if json {
        println!("{}", serde_json::to_string_pretty(&outcomes).unwrap_or_default());
    } else {
        let rows: Vec<[String; 4]> = outcomes
            .iter()
            .map(|o| {
                let got = format!("{} by {}", verdict_name(o.decision.verdict), o.decision.rule_label());
                [if o.passed { "pass" } else { "FAIL" }.to_owned(), o.name.clone(), o.expected.clone(), got]
            })
            .collect();
        print_table(&["RESULT", "TEST", "EXPECTED", "GOT"], &rows);
        for o in outcomes.iter().filter(|o| !o.passed) {
            println!("FAIL {} at {}: {}", o.name, o.location, o.decision.reason());
        }
    }
    let failed = outcomes.iter().filter(|o| !o.passed).count();
    println!("{} passed, {failed} failed", outcomes.len() - failed);
    if failed > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}

fn mask_test(name: &str, config: &Path, column: Option<&str>) -> ExitCode {
    use std::io::{BufRead, Write};
    let policy = match load_path(config) {
        Ok(p) => p,
        Err(d) => return fail(format_args!("policy {} does not load:\n{d}", config.display())),
    };
    let Some(profile) = policy.mask(name) else {
        let known: Vec<&str> = policy.masks.keys().map(String::as_str).collect();
        return fail(format_args!("no masking profile {name:?}; profiles: {}", known.join(", ")));
    };
    let (table, col) = match column.map(|c| c.split_once('.').map_or((None, c), |(t, c)| (Some(t), c))) {
        Some((t, c)) => (t, Some(c)),
        None => (None, None),
    };
    let rule = col.and_then(|c| profile.column_style(table, c));
    let key = profile.token_key(crate::mask::TokenScope::Column { table, column: col.unwrap_or_default() });
    eprintln!(
        "note: hash tokens here use a throwaway key made for this run; the agent's tokens (keyed by its mask.key) differ"
    );
    let mut counts = crate::mask::Counts::default();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut buf = Vec::new();
    for line in std::io::stdin().lock().split(b'\n') {
        let Ok(line) = line else { break };
        buf.clear();
        let result = match rule {
            Some(style) => {
                let r = profile.mask_value(style, &key, &line, &mut buf);
                if r != crate::mask::MaskOutput::Unchanged {
                    counts.add_columns(1);
                }
                r
            }
            None => profile.scan(&line, &mut buf, &mut counts),
        };
        let _ = match result {
            crate::mask::MaskOutput::Unchanged => out.write_all(&line),
            crate::mask::MaskOutput::Written => out.write_all(&buf),
            crate::mask::MaskOutput::Null => out.write_all(b"NULL"),
        };
        let _ = out.write_all(b"\n");
    }
    let summary: Vec<String> = counts.iter().map(|(k, v)| format!("{k}={v}")).collect();
    eprintln!("masked: {}", if summary.is_empty() { "nothing".into() } else { summary.join(" ") });
    ExitCode::SUCCESS
}

fn policy_explain(a: &ExplainArgs) -> ExitCode {
    let now = match parse_at(a.at.as_deref()) {
        Ok(t) => t,
        Err(e) => return fail(e),
    };
    let policy = match load_path(&a.config) {
        Ok(p) => p,
        Err(d) => return fail(format_args!("policy {} does not load:\n{d}", a.config.display())),
    };
    let mut who = if a.groups.is_empty() {
        nix::unistd::User::from_name(&a.user)
            .ok()
            .flatten()
            .map(|u| crate::identity::lookup(crate::types::Uid(u.uid.as_raw())))
            .unwrap_or_else(|| Principal::named(&a.user, &[]))
    } else {
        let g: Vec<&str> = a.groups.iter().map(String::as_str).collect();
        Principal::named(&a.user, &g)
    };
    who.user = Some(crate::types::UserName::new(a.user.clone()));
    if let Some(subject) = &a.login_subject {
        let age = match a.login_age.as_deref().map(crate::settings::parse_duration).transpose() {
            Ok(a) => a.unwrap_or_default(),
            Err(e) => return fail(format_args!("--login-age: {e}")),
        };
        let login = crate::policy::TestLogin {
            subject: subject.clone(),
            email: a.login_email.clone(),
            groups: a.login_groups.clone(),
            acr: a.login_acr.clone(),
            age,
        };
        who.oidc = Some(login.identity(now));
    }
    let backend = BackendName::new(a.backend.clone());
    let statements = match (&a.sql, &a.kind) {
        (Some(sql), _) => match crate::sql::classify(sql) {
            Ok(s) => s,
            Err(e) => return fail(format_args!("--sql: {e} (Gatehouse refuses what does not parse)")),
        },
        (None, Some(k)) => match crate::sql::Kind::parse(k) {
            Some(k) => vec![crate::policy::testcases::single_kind(k)],
            None => return fail(format_args!("--kind {k}: unknown statement kind")),
        },
        (None, None) => vec![],
    };
    let mut traces = Vec::new();
    if statements.is_empty() {
        traces.push((
            "(connection)".to_owned(),
            policy.explain(&who, &crate::policy::Request { backend: &backend, statement: None, now }),
        ));
    }
    for s in &statements {
        traces.push((
            s.text.clone(),
            policy.explain(&who, &crate::policy::Request { backend: &backend, statement: Some(s), now }),
        ));
    }
    if a.json {
        let v: Vec<_> = traces
            .iter()
            .zip(statements.iter().map(Some).chain(std::iter::repeat(None)))
            .map(|((text, t), s)| serde_json::json!({ "statement": text, "classified": s, "trace": t }))
            .collect();
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        let groups: Vec<&str> = who.groups.iter().map(|g| g.as_str()).collect();
        println!(
            "who:      {} (groups: {})",
            a.user,
            if groups.is_empty() { "none".into() } else { groups.join(", ") }
        );
        match &who.oidc {
            Some(o) => {
                let g: Vec<&str> = o.groups.iter().map(|g| g.as_str()).collect();
                println!(
                    "login:    {} (oidc_groups: {})",
                    o.subject,
                    if g.is_empty() { "none".into() } else { g.join(", ") }
                );
            }
            None => println!("login:    none (--login-subject decides as after `gatehouse login`)"),
        }
        println!("backend:  {backend}");
        println!("at:       {now}");
        for (i, (text, t)) in traces.iter().enumerate() {
            println!();
            if let Some(s) = statements.get(i) {
                let kinds: Vec<&str> = s.kinds.iter().map(|k| k.name()).collect();
                let tables: Vec<String> = s.reads.iter().chain(&s.writes).map(ToString::to_string).collect();
                println!("statement: {text}");
                println!("  kinds:   {}", kinds.join(", "));
                if !tables.is_empty() {
                    println!("  tables:  {}", tables.join(", "));
                }
            }
            let d = &t.decision;
            println!("decision: {} by {}", verdict_name(d.verdict).to_uppercase(), d.rule_label());
            println!("  reason: {}", d.reason());
            if let Some(r) = &d.as_role {
                println!("  as_role: {r}");
            }
            if let Some(m) = &d.mask {
                println!("  mask:    {m}");
                if let (Some(profile), Some(s)) = (policy.mask(m), statements.get(i)) {
                    let tables: Vec<String> = s.reads.iter().chain(&s.writes).map(ToString::to_string).collect();
                    let rules = profile.describe_columns(&tables);
                    if rules.is_empty() {
                        println!(
                            "           no column rule names these tables' columns; detectors scan every text value"
                        );
                    } else {
                        println!(
                            "           column rules that apply: {}; detectors scan every other text value",
                            rules.join(", ")
                        );
                    }
                }
            }
            println!("rules considered:");
            for e in &t.considered {
                let mut state =
                    if e.why_not.is_empty() { "applies".to_owned() } else { format!("no: {}", e.why_not.join("; ")) };
                if let Some(r) = &e.require {
                    state.push_str(&format!(" [requires {r}]"));
                }
                println!(
                    "  {:<40} {:<5} {}  ({})",
                    e.rule.as_str(),
                    format!("{:?}", e.action).to_lowercase(),
                    state,
                    e.location
                );
            }
        }
    }
    if !a.json {
        let mut grants = policy
            .grants
            .iter()
            .filter(|g| g.who.matches(&who).is_some() && g.backends.iter().any(|b| b.matches(backend.as_str())))
            .peekable();
        if grants.peek().is_some() {
            println!(
                "grants {who} may request here (`gatehouse request --grant NAME --backend {backend} --for D --reason R`):"
            );
            for g in grants {
                println!(
                    "  {:<40} {} for at most {}, approved by {}{}  ({})",
                    g.name,
                    g.template.statements.describe(),
                    settings::format_duration_s(g.max.as_secs()),
                    g.by_name.clone().unwrap_or_else(|| g.by.describe()),
                    if g.count > 1 { format!(" ({} of them)", g.count) } else { String::new() },
                    g.at
                );
            }
        }
    }
    let all_allowed = traces.iter().all(|(_, t)| t.decision.allowed());
    if all_allowed { ExitCode::SUCCESS } else { ExitCode::from(2) }
}
