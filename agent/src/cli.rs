//! The `gatehouse` command line: the daemon (`run`) and the operator's tools.

mod agent;
mod approvals;
mod audit;
mod ca;
mod login;
mod policy;
mod trail;
mod trust;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use crate::settings;

pub use agent::{DetachArgs, RunArgs, StatusArgs};
pub use audit::{ExportArgs, ReplayArgs, SessionsArgs, StatementsArgs, VerifyArgs};
pub use policy::{ExplainArgs, MaskCommand, PolicyCommand};

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
    /// Which sessions and statements returned a row of a trailed table (`[[trail]]`): user, identity, time, process.
    WhoSaw(trail::WhoSawArgs),
    /// Distinct rows of a trailed table read per user (and day).
    AccessReport(trail::AccessReportArgs),
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
    #[command(subcommand, long_about = policy::POLICY_HELP)]
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
    /// (packaging) Write the man pages and shell completions into a directory.
    #[command(hide = true)]
    GenerateDocs {
        /// Directory to write `man/*.1` and `completions/{gatehouse.bash,_gatehouse,gatehouse.fish}` into.
        out: std::path::PathBuf,
    },
}

/// Entry point used by `main`.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    crate::sys::tune_allocator();
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
    // Under systemd, human-format logs go to the journal with their fields
    // (SESSION, USER, BACKEND, … as journal fields, `journalctl -o verbose`).
    if matches!(format, LogFormat::Human) && crate::service::stderr_is_journal() {
        use tracing_subscriber::layer::SubscriberExt as _;
        use tracing_subscriber::util::SubscriberInitExt as _;
        if let Ok(journal) = tracing_journald::layer() {
            let journal = journal.with_syslog_identifier("gatehouse".to_owned()).with_field_prefix(None);
            tracing_subscriber::registry().with(filter).with(journal).init();
            return;
        }
    }
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).init(),
    }
}

async fn dispatch(cmd: Command) -> ExitCode {
    match cmd {
        Command::Run(a) => agent::run(a).await,
        Command::Status(a) => agent::status(a).await,
        Command::Sessions(a) => audit::list_sessions(&a).await,
        Command::Statements(a) => audit::list_statements(&a).await,
        Command::WhoSaw(a) => trail::who_saw(&a).await,
        Command::AccessReport(a) => trail::access_report(&a).await,
        Command::Verify(a) if a.central.is_some() => audit::verify_central(&a).await,
        Command::Verify(a) => trust::verify(&a),
        Command::Replay(a) => audit::replay(&a).await,
        Command::Export(a) => trust::export(&a),
        Command::Redact(a) => trust::redact(&a).await,
        Command::Keys(k) => trust::keys(k).await,
        Command::Ca(c) => ca::ca(c),
        Command::Detach(a) => agent::detach(a).await,
        Command::Policy(PolicyCommand::Check { path, skip_secret_files }) => policy::check(&path, skip_secret_files),
        Command::Policy(PolicyCommand::Test { path, at, json }) => policy::test(&path, at.as_deref(), json),
        Command::Policy(PolicyCommand::Explain(a)) => policy::explain(&a),
        Command::Mask(MaskCommand::Test { profile, config, column }) => {
            policy::mask_test(&profile, &config, column.as_deref())
        }
        Command::Requests(a) => approvals::list(&a).await,
        Command::Approve(a) => approvals::approve(&a).await,
        Command::Deny(a) => approvals::deny(&a).await,
        Command::Request(a) => approvals::request_grant(&a).await,
        Command::Revoke(a) => approvals::revoke(&a).await,
        Command::Login(a) => login::login(&a).await,
        Command::Whoami(a) => login::whoami(&a).await,
        Command::Logout(a) => login::logout(&a).await,
        Command::GenerateDocs { out } => match generate_docs(&out) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(format_args!("writing docs into {}: {e}", out.display())),
        },
    }
}

pub(crate) fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("gatehouse: {msg}");
    ExitCode::FAILURE
}

pub(crate) fn fmt_time(us: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000)
        .ok()
        .and_then(|t| {
            t.format(&time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]")).ok()
        })
        .unwrap_or_else(|| us.to_string())
}

/// A time as operators write it: RFC 3339, or a duration ago (`2h`, `7d`).
pub(crate) fn parse_time(s: &str) -> Result<i64, String> {
    if let Ok(t) = s.parse::<jiff::Timestamp>() {
        return Ok(t.as_microsecond());
    }
    let d =
        settings::parse_duration(s).map_err(|_| format!("{s:?} is neither an RFC 3339 time nor a duration like 2h"))?;
    Ok(crate::audit::now_us() - i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// Prints left-aligned columns sized to their widest cell (numbers right-aligned).
pub(crate) fn print_table<const N: usize>(header: &[&str; N], rows: &[[String; N]]) {
    for line in format_table(header, rows) {
        println!("{line}");
    }
}

/// The lines of a table; cells are recorded or user-supplied text, shown
/// with their control and invisible characters escaped
/// ([`crate::audit::replay::escape_all`]): a statement, a process name or a
/// reason holding `\r` or an escape sequence would otherwise rewrite what
/// the operator's terminal shows.
pub(crate) fn format_table<const N: usize>(header: &[&str; N], rows: &[[String; N]]) -> Vec<String> {
    let rows: Vec<[String; N]> =
        rows.iter().map(|r| r.clone().map(|cell| crate::audit::replay::escape_all(&cell))).collect();
    let rows = &rows;
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
        out.trim_end().to_owned()
    };
    let mut lines = vec![line(header.to_vec())];
    for row in rows {
        lines.push(line(row.iter().map(String::as_str).collect()));
    }
    lines
}

/// Man pages (one per command, from the same clap definitions as `--help`)
/// and shell completions, for the Debian package.
fn generate_docs(out: &std::path::Path) -> std::io::Result<()> {
    use clap::CommandFactory;
    use clap_complete::Shell;
    let cmd = Cli::command();
    let man = out.join("man");
    std::fs::create_dir_all(&man)?;
    clap_mangen::generate_to(cmd.clone(), &man)?;
    let completions = out.join("completions");
    std::fs::create_dir_all(&completions)?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let mut cmd = cmd.clone();
        clap_complete::generate_to(shell, &mut cmd, "gatehouse", &completions)?;
    }
    Ok(())
}
