//! The trust-related commands: `verify`, `export`, `redact`, `keys`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::{ExportArgs, VerifyArgs, fail, fmt_time, parse_time};
use crate::audit::verify::{Report, Trust, TrustSource};
use crate::audit::{self, keys};
use crate::control::{self, Request, Response};
use crate::settings;

#[derive(Debug, Args)]
pub struct RedactArgs {
    /// The session whose recorded content is removed (its id, or a unique prefix).
    #[arg(long)]
    pub session: String,
    /// Why (kept, signed, in the redaction record): "leaked password", "erasure request #123".
    #[arg(long)]
    pub reason: String,
    /// Work on this store directly (the agent must not be running on it).
    #[arg(long)]
    pub db: Option<PathBuf>,
    #[arg(long, default_value = settings::DEFAULT_CONTROL_SOCKET)]
    pub control_socket: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Print the host's public key and where it is kept.
    Show {
        #[arg(long, default_value = settings::DEFAULT_AUDIT_DB)]
        db: PathBuf,
    },
    /// Make a new host key; the old key signs the new one in the chain, which `verify` follows.
    Rotate {
        /// Work on this store directly (the agent must not be running on it).
        #[arg(long)]
        db: Option<PathBuf>,
        #[arg(long, default_value = settings::DEFAULT_CONTROL_SOCKET)]
        control_socket: PathBuf,
    },
}

fn need_root(what: &str) -> Result<(), ExitCode> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(fail(format_args!("`gatehouse {what}` changes the audit store and signs with the host key: it needs root")))
    }
}

/// Opens the store directly (its writer lock keeps a running agent out),
/// runs `f` on it, and stops the writer (which signs a final checkpoint).
async fn with_store<T>(
    db: &Path,
    f: impl AsyncFnOnce(&audit::Audit) -> Result<T, audit::AuditError>,
) -> Result<T, String> {
    let opts = settings::Settings::resolve(
        &settings::AgentRaw::default(),
        &settings::Overrides { audit_db: Some(db.to_owned()), ..settings::Overrides::default() },
    )
    .map_err(|e| e.to_string())?
    .audit;
    let (a, writer) =
        audit::open(db, &settings::host_key_path(db), &opts).map_err(|e| format!("{}: {e}", db.display()))?;
    let r = f(&a).await.map_err(|e| e.to_string());
    drop(a);
    writer.stop();
    r
}

pub async fn redact(a: &RedactArgs) -> ExitCode {
    crate::secrets::no_core_dumps();
    if let Err(code) = need_root("redact") {
        return code;
    }
    let result = match &a.db {
        Some(db) => {
            let session = match resolve(db, &a.session) {
                Ok(s) => s,
                Err(e) => return fail(e),
            };
            with_store(db, async |s| s.redact(&session, &a.reason, 0).await).await
        }
        None => {
            let req = Request::Redact { session: a.session.clone(), reason: a.reason.clone() };
            match control::request(&a.control_socket, &req).await {
                Ok(Response::Redacted { redaction }) => Ok(redaction),
                Ok(Response::Error { message }) => Err(message),
                Ok(_) => Err("unexpected answer from the agent".into()),
                Err(e) => Err(format!("{e} (with the agent stopped, pass --db)")),
            }
        }
    };
    match result {
        Ok(r) => {
            println!(
                "redacted session {}: the content of {} records was removed; a signed redaction record says why ({})",
                r.session,
                r.count(),
                r.reason
            );
            println!("`gatehouse verify` still passes and lists the redaction");
            ExitCode::SUCCESS
        }
        Err(e) => fail(format_args!("redact: {e}")),
    }
}

/// A session id from a unique prefix, among the store's sessions.
fn resolve(db: &Path, prefix: &str) -> Result<String, String> {
    let conn = audit::query::open_read_only(db).map_err(|e| e.to_string())?;
    audit::replay::resolve_session(&conn, prefix, None).map_err(|e| e.to_string())
}

pub async fn keys(k: KeysCommand) -> ExitCode {
    crate::secrets::no_core_dumps();
    match k {
        KeysCommand::Show { db } => {
            let pub_path = keys::public_path(&settings::host_key_path(&db));
            match keys::read_public_file(&pub_path) {
                Ok(k) => {
                    for key in k {
                        println!("{}", audit::hex(&key.to_bytes()));
                    }
                    eprintln!(
                        "(from {}; `gatehouse verify` trusts keys you keep outside the store: --pubkey, or {})",
                        pub_path.display(),
                        keys::TRUSTED_KEYS
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        KeysCommand::Rotate { db, control_socket } => {
            if let Err(code) = need_root("keys rotate") {
                return code;
            }
            let r = match db {
                Some(db) => with_store(&db, async |s| s.rotate_key().await).await,
                None => match control::request(&control_socket, &Request::RotateKey).await {
                    Ok(Response::Rotated { rotation }) => Ok(rotation),
                    Ok(Response::Error { message }) => Err(message),
                    Ok(_) => Err("unexpected answer from the agent".into()),
                    Err(e) => Err(format!("{e} (with the agent stopped, pass --db)")),
                },
            };
            match r {
                Ok(rot) => {
                    println!("old key: {}", rot.old_public_key);
                    println!("new key: {}", rot.new_public_key);
                    println!(
                        "the old key signed the new one in the audit chain; `gatehouse verify --pubkey <old>` follows the rotation. Add the new key where you keep trusted keys ({}).",
                        keys::TRUSTED_KEYS
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => fail(format_args!("keys rotate: {e}")),
            }
        }
    }
}

pub fn export(a: &ExportArgs) -> ExitCode {
    use crate::audit::export::{ExportOptions, Format};
    crate::secrets::no_core_dumps();
    if !nix::unistd::geteuid().is_root() {
        return fail("`gatehouse export` reads the audit store and signs with the host key: it needs root");
    }
    let time = |s: &Option<String>| s.as_deref().map(parse_time).transpose();
    let (since_us, until_us) = match (time(&a.since), time(&a.until)) {
        (Ok(s), Ok(u)) => (s, u),
        (Err(e), _) | (_, Err(e)) => return fail(e),
    };
    let format: Format = match a.format.parse() {
        Ok(f) => f,
        Err(e) => return fail(format_args!("--format: {e}")),
    };
    // The key is read like every secret: no symlink followed, root's, 0600.
    let key = match keys::load(&settings::host_key_path(&a.db)) {
        Ok(k) => k,
        Err(e) => return fail(format_args!("host key: {e}")),
    };
    let opts = ExportOptions { since_us, until_us, user: a.user.clone(), format };
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut last = std::time::Instant::now();
    let mut progress = |done: u64, total: u64| {
        if tty && (done == total || last.elapsed() > std::time::Duration::from_millis(100)) {
            last = std::time::Instant::now();
            let width = 40u64;
            let filled = done.saturating_mul(width).checked_div(total).unwrap_or(width);
            let bar: String = (0..width).map(|i| if i < filled { '#' } else { '-' }).collect();
            eprint!("\r[{bar}] {done}/{total} records");
            if done == total {
                eprintln!();
            }
        }
    };
    match crate::audit::export::export(&a.db, &a.out, &opts, &key, &mut progress) {
        Ok(m) => {
            println!(
                "wrote {} ({} records of {} sessions; the store verified before it was signed); verify anywhere with: gatehouse verify {} --pubkey {}",
                a.out.display(),
                m.records,
                m.sessions,
                a.out.display(),
                audit::hex(&key.verifying_key().to_bytes())
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(format_args!("export: {e}")),
    }
}

/// The keys `verify` trusts: `--pubkey`, `--pubkey-file`, then the
/// operator's key file; for a store without either, `host.pub` beside it
/// or the store's own list (which the report marks as proving nothing).
fn trust_for(a: &VerifyArgs, path: &Path) -> Result<Option<Trust>, String> {
    if !a.pubkey.is_empty() {
        let keys = a.pubkey.iter().map(|k| keys::parse_public(k)).collect::<Result<Vec<_>, _>>()?;
        return Ok(Some(Trust { keys, source: TrustSource::Given }));
    }
    if let Some(f) = &a.pubkey_file {
        return Ok(Some(Trust { keys: keys::read_public_file(f)?, source: TrustSource::KeyFile(f.clone()) }));
    }
    let operator = Path::new(keys::TRUSTED_KEYS);
    if path.is_dir() {
        if operator.exists() {
            return Ok(Some(Trust {
                keys: keys::read_public_file(operator)?,
                source: TrustSource::KeyFile(operator.to_owned()),
            }));
        }
        return Ok(None);
    }
    crate::audit::verify::default_trust(path, operator).map(Some)
}

pub fn verify(a: &VerifyArgs) -> ExitCode {
    let path = a.path.clone().or_else(|| a.db.clone()).unwrap_or_else(|| PathBuf::from(settings::DEFAULT_AUDIT_DB));
    let trust = match trust_for(a, &path) {
        Ok(t) => t,
        Err(e) => return fail(format_args!("trusted keys: {e}")),
    };
    let published = match a.anchors.as_deref().map(crate::audit::anchors::read).transpose() {
        Ok(p) => p,
        Err(e) => return fail(format_args!("--anchors: {e}")),
    };
    let report = if path.is_dir() {
        if published.is_some() {
            return fail("--anchors checks a store, not an export bundle");
        }
        crate::audit::export::verify_export(&path, trust.as_ref())
    } else {
        match &trust {
            Some(t) => crate::audit::verify::verify_db(&path, t, published.as_deref()),
            None => Err("no key to trust".into()),
        }
    };
    let report = match report {
        Ok(r) => r,
        Err(e) => return fail(format_args!("{}: {e}", path.display())),
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
    } else {
        print_report(&path, &report, a.anchors.is_some());
    }
    if !report.ok() {
        ExitCode::FAILURE
    } else if !report.proven() {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    }
}

fn print_report(path: &Path, report: &Report, anchors_given: bool) {
    let seq = |s: Option<u64>| s.map_or("-".into(), |s| s.to_string());
    println!(
        "{}: {} records ({}..{}), {} checkpoints ({} verified)",
        path.display(),
        report.records,
        seq(report.first_seq),
        seq(report.last_seq),
        report.checkpoints,
        report.checkpoints_verified
    );
    println!("trusted keys, from {}: {}", report.trust.describe(), report.public_keys.join(", "));
    if !report.trust.external() {
        println!(
            "UNPROVEN: these keys come from {} — whoever rewrote it could have signed it with a key of their own. \
             Pass --pubkey with the key you recorded elsewhere (gatehouse status prints it), or keep it in {}.",
            if matches!(report.trust, TrustSource::Bundle) { "the bundle itself" } else { "the store's own host" },
            keys::TRUSTED_KEYS
        );
    }
    for r in &report.rotations {
        println!(
            "key rotation at record {} ({}): {} → {}",
            r.seq,
            fmt_time(r.time_us),
            r.old_public_key,
            r.new_public_key
        );
    }
    for r in &report.redactions {
        println!(
            "redaction at record {} ({}, by uid {}): the content of {} records of session {} was removed: {}",
            r.seq,
            fmt_time(r.time_us),
            r.by_uid,
            r.records,
            r.session,
            r.reason
        );
    }
    if report.unsigned_tail > 0 {
        println!("note: the last {} records come after the last signed checkpoint", report.unsigned_tail);
    }
    match (report.anchor_seq, anchors_given) {
        (Some(s), _) if report.ok() => println!("the store reaches the newest published checkpoint (record {s})"),
        (None, true) => println!("note: no validly signed published checkpoint was found in --anchors"),
        (None, false) => println!(
            "note: without --anchors, records deleted from the end together with the newest checkpoint cannot be detected"
        ),
        _ => {}
    }
    for p in &report.problems {
        if p.seq == u64::MAX {
            println!("TAMPERED: {}", p.what);
        } else {
            println!("TAMPERED at record {}: {}", p.seq, p.what);
        }
    }
    if report.proven() {
        println!("ok: the chain is intact and every checkpoint is signed by a trusted key");
    } else if report.ok() {
        println!("intact but UNPROVEN (exit 2): see above");
    }
}
