//! `gatehouse sessions`, `statements` and `replay`: reading the audit store
//! (through the running agent, which filters by uid, or directly as root);
//! the arguments of `verify` and `export` (in `trust.rs`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;

use super::{fail, fmt_time, parse_time, print_table};
use crate::audit::query::{SessionFilter, SessionRow, sessions};
use crate::control::{self, Request, Response};
use crate::settings;

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
    /// allow, deny or approval.
    #[arg(long)]
    pub decision: Option<crate::audit::Verdict>,
    /// Show at most this many (the newest).
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Search every host's sessions in the central store (`[agent.ship]`): postgres://…
    #[arg(long)]
    pub central: Option<String>,
    #[command(flatten)]
    pub central_tls: CentralTls,
}

/// How the CLI reaches the central store: as the shipper does.
#[derive(Debug, Clone, Args)]
pub struct CentralTls {
    /// TLS to the central store: `verify` (the server's certificate checked) or `off` (plain TCP).
    #[arg(long, value_parser = ["verify", "off"], default_value = "verify", requires = "central")]
    pub central_tls: String,
    /// The CA the central server's certificate must chain to (default: the system's trust store).
    #[arg(long, requires = "central")]
    pub central_ca: Option<PathBuf>,
}

impl CentralTls {
    fn mode(&self) -> Result<crate::audit::ship::ShipTls, String> {
        use crate::audit::ship::ShipTls;
        match (self.central_tls.as_str(), &self.central_ca) {
            ("off", None) => Ok(ShipTls::Off),
            ("off", Some(_)) => Err("--central-ca needs --central-tls verify".into()),
            (_, ca) => Ok(ShipTls::Verify { ca_file: ca.clone() }),
        }
    }
}

#[derive(Debug, Args)]
pub struct StatementsArgs {
    /// Read this audit database directly (root) instead of asking the running agent.
    #[arg(long)]
    pub db: Option<PathBuf>,
    #[arg(long, default_value = settings::DEFAULT_CONTROL_SOCKET)]
    pub control_socket: PathBuf,
    /// Only this session's statements: its id, or a unique prefix as `gatehouse sessions` shows it.
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

#[derive(Debug, Clone, Args)]
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
    /// Verify a host's records in the central store (`[agent.ship]`): postgres://… (needs --host).
    #[arg(long, requires = "host", conflicts_with_all = ["path", "db"])]
    pub central: Option<String>,
    /// The host whose records to verify in the central store.
    #[arg(long, requires = "central")]
    pub host: Option<String>,
    #[command(flatten)]
    pub central_tls: CentralTls,
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

/// Asks the running agent (which authorises by uid); without one, root
/// reads the store directly.
pub(super) async fn ask_or_read<T>(
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

pub(super) async fn list_sessions(a: &SessionsArgs) -> ExitCode {
    if let Some(url) = &a.central {
        return central_sessions(url, a).await;
    }
    let time = |s: &Option<String>| s.as_deref().map(parse_time).transpose();
    let (since_us, until_us) = match (time(&a.since), time(&a.until)) {
        (Ok(s), Ok(u)) => (s, u),
        (Err(e), _) | (_, Err(e)) => return fail(e),
    };
    let filter = SessionFilter {
        user: a.user.clone(),
        uid: a.uid,
        backend: a.backend.clone(),
        decision: a.decision.map(|d| d.as_str().to_owned()),
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

pub(super) async fn list_statements(a: &StatementsArgs) -> ExitCode {
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
    let ids: Vec<&str> = rows.iter().map(|r| r.session_id.as_str()).collect();
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
                short_id(&r.session_id, &ids),
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

pub(super) async fn replay(a: &ReplayArgs) -> ExitCode {
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
        "SESSION",
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
    let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
    let table: Vec<[String; 14]> = rows
        .iter()
        .map(|r| {
            [
                short_id(&r.id, &ids),
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

/// The shortest prefix of `id` (at least [`SHORT_ID`] characters) that no
/// other id in `ids` starts with: what `replay` and `statements --session`
/// accept. Ids are UUIDv7, whose first 13 characters are the millisecond,
/// so the prefix reaches into the random part.
fn short_id(id: &str, ids: &[&str]) -> String {
    let chars: Vec<char> = id.chars().collect();
    let mut n = SHORT_ID.min(chars.len());
    while n < chars.len() {
        let prefix: String = chars.iter().take(n).collect();
        if !ids.iter().any(|other| *other != id && other.starts_with(&prefix)) {
            break;
        }
        n += 1;
    }
    chars.iter().take(n).collect()
}

/// Characters of a session id shown by default: the millisecond and the
/// version and first random digits of the UUIDv7.
const SHORT_ID: usize = 18;

/// `sessions --central`: the newest sessions of every host in the central store.
async fn central_sessions(url: &str, a: &SessionsArgs) -> ExitCode {
    use crate::audit::ship;
    let tls = match a.central_tls.mode() {
        Ok(t) => t,
        Err(e) => return fail(e),
    };
    let rows = match ship::sessions(url, &tls, a.user.as_deref(), a.limit).await {
        Ok(r) => r,
        Err(e) => return fail(format_args!("{}: {e}", ship::redact_url(url))),
    };
    if a.json {
        for r in &rows {
            println!("{}", serde_json::to_string(r).unwrap_or_default());
        }
        return ExitCode::SUCCESS;
    }
    let field = |r: &ship::CentralSession, k: &str| r.open.get(k).and_then(|v| v.as_str()).unwrap_or("-").to_owned();
    let table: Vec<[String; 7]> = rows
        .iter()
        .map(|r| {
            [
                r.host.clone(),
                r.session.clone(),
                fmt_time(r.time_us),
                field(r, "user"),
                field(r, "backend"),
                field(r, "decision"),
                field(r, "rule"),
            ]
        })
        .collect();
    print_table(&["HOST", "SESSION", "STARTED", "USER", "BACKEND", "DECISION", "RULE"], &table);
    ExitCode::SUCCESS
}

/// `verify --central URL --host H`: the host's records copied from the
/// central store into a temporary store, verified like a local one.
pub(super) async fn verify_central(a: &VerifyArgs) -> ExitCode {
    use crate::audit::ship;
    let (Some(url), Some(host)) = (a.central.as_deref(), a.host.as_deref()) else {
        return fail("--central needs --host");
    };
    let tls = match a.central_tls.mode() {
        Ok(t) => t,
        Err(e) => return fail(e),
    };
    let dir = std::env::temp_dir().join(format!("gatehouse-verify-central-{}", std::process::id()));
    // A fresh directory only this user can enter: /tmp is shared, and a
    // directory someone else made there first could swap the copy verified.
    if let Err(e) = std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700).create(&dir) {
        return fail(format_args!("{}: {e}", dir.display()));
    }
    let copy = dir.join(format!("{host}.db"));
    let _ = std::fs::remove_file(&copy);
    let code = match ship::materialize(url, &tls, host, &copy).await {
        Ok(0) => fail(format_args!("the central store {} holds no records of host {host:?}", ship::redact_url(url))),
        Ok(n) => {
            println!("central store {}: {n} records of host {host}", ship::redact_url(url));
            let mut local = a.clone();
            local.central = None;
            local.host = None;
            local.db = Some(copy.clone());
            super::trust::verify(&local)
        }
        Err(e) => fail(format_args!("{}: {e}", ship::redact_url(url))),
    };
    let _ = std::fs::remove_dir_all(&dir);
    code
}

#[cfg(test)]
mod tests {
    use super::short_id;

    #[test]
    fn short_ids_are_unique_prefixes() {
        let a = "019ad9f0-1c2b-7a11-8000-000000000001";
        let b = "019ad9f0-1c2b-7a11-8000-000000000002";
        let c = "019ad9f0-1c2c-7b00-8000-000000000003";
        let ids = [a, b, c];
        assert_eq!(short_id(c, &ids), "019ad9f0-1c2c-7b00");
        assert_eq!(short_id(a, &ids), a);
        assert_eq!(short_id(b, &ids), b);
        for id in ids {
            let p = short_id(id, &ids);
            assert_eq!(ids.iter().filter(|o| o.starts_with(&p)).count(), 1, "{p} is not unique");
        }
        assert_eq!(short_id("abc", &["abc"]), "abc");
    }

    #[test]
    fn tables_show_recorded_text_without_its_terminal_controls() {
        // What a user can put in a statement, a process name or an error:
        // carriage returns, erase-line and cursor-up sequences, a C1 CSI,
        // bidirectional overrides.
        let forged = "DROP TABLE t /*\r\x1b[2K\x1b[1A\u{9b}2K\u{202e}\u{2028}*/";
        let rows = [[String::from("x\x1bcomm"), forged.to_owned()]];
        let lines = crate::cli::format_table(&["COMM", "STATEMENT"], &rows);
        let all = lines.join("\n");
        assert!(!all.chars().any(|c| c.is_control() && c != '\n' || c == '\u{202e}'), "{all:?}");
        assert!(lines[1].contains(r"DROP TABLE t /*\r\u{1b}[2K\u{1b}[1A\u{9b}2K\u{202e}\u{2028}*/"), "{all}");
        assert!(lines[1].starts_with(r"x\u{1b}comm"), "{all}");
        assert_eq!(lines.len(), 2);
    }
}
