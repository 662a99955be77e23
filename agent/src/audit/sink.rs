//! Audit sinks for SIEM pipelines (`[[agent.sink]]`): committed records,
//! as the chain holds them (`jsonl`) or as OCSF events (`ocsf`), appended
//! to a file a log agent tails, or sent to a syslog collector (RFC 5424
//! over TCP, or over TLS per RFC 5425, octet-counted framing).
//!
//! Like the central store (`ship.rs`), a sink reads what the writer has
//! already committed, on the blocking pool, and never touches the data
//! path. Each sink keeps its position in `sink-<name>.cursor` beside the
//! store: for a file, written once the batch is synced; for syslog, which
//! has no acknowledgements, only once a batch was sent more than ten
//! seconds ago on a connection still working, so what a collector lost
//! while it went down is sent again after the reconnect. Delivery is at
//! least once: every line carries the record's `seq` and `hash`, which
//! identify duplicates. A sink that is down (collector unreachable, disk
//! full) only falls behind and resumes where it stopped.

pub mod syslog;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::RecordKind;
use super::chain::Record;
use super::export::OcsfMapper;
use super::verify::{RECORD_COLUMNS, record_from_row};

/// `[[agent.sink]]` as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkRaw {
    /// Names the sink in logs and its cursor file (default: its kind).
    pub name: Option<String>,
    /// `file` or `syslog`.
    pub kind: String,
    /// `jsonl` (the chain's records, as `export` writes them) or `ocsf`.
    pub format: Option<String>,
    /// `file`: the file appended to (created 0640 root:auditor group, or 0600).
    pub path: Option<PathBuf>,
    /// `syslog`: the collector, `host:port`.
    pub address: Option<String>,
    /// `syslog`: `verify` (RFC 5425, the default) or `off` (plain TCP).
    pub tls: Option<String>,
    /// `syslog`: the CA the collector's certificate must chain to (root-owned).
    pub ca_file: Option<PathBuf>,
    /// `syslog`: the name the collector's certificate must carry (default: the host of `address`).
    pub server_name: Option<String>,
    /// Records per batch (default 500).
    pub batch: Option<usize>,
}

/// What a sink writes for each record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkFormat {
    Jsonl,
    Ocsf,
}

/// Where a sink writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkTarget {
    File { path: PathBuf },
    Syslog { address: String, tls: Option<syslog::Tls> },
}

/// A validated sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sink {
    pub name: String,
    pub format: SinkFormat,
    pub target: SinkTarget,
    pub batch: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("[[agent.sink]] {0}")]
    Config(String),
    #[error("local store {path}: {message}")]
    Local { path: PathBuf, message: String },
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
}

fn valid_name(n: &str) -> bool {
    !n.is_empty() && n.len() <= 64 && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl TryFrom<&SinkRaw> for Sink {
    type Error = SinkError;

    fn try_from(raw: &SinkRaw) -> Result<Self, SinkError> {
        let cfg = |m: String| SinkError::Config(m);
        let name = raw.name.clone().unwrap_or_else(|| raw.kind.clone());
        if !valid_name(&name) {
            return Err(cfg(format!("name {name:?}: 1 to 64 letters, digits, '-' or '_'")));
        }
        let format = match raw.format.as_deref() {
            None | Some("jsonl") => SinkFormat::Jsonl,
            Some("ocsf") => SinkFormat::Ocsf,
            Some(other) => return Err(cfg(format!("{name}: format {other:?}: \"jsonl\" or \"ocsf\""))),
        };
        let batch = raw.batch.unwrap_or(500);
        if batch == 0 || batch > 10_000 {
            return Err(cfg(format!("{name}: batch must be between 1 and 10000")));
        }
        let only = |field: &str, set: bool, kind: &str| {
            if set { Err(cfg(format!("{name}: {field} does not apply to kind = \"{kind}\""))) } else { Ok(()) }
        };
        let target = match raw.kind.as_str() {
            "file" => {
                only("address", raw.address.is_some(), "file")?;
                only("tls", raw.tls.is_some(), "file")?;
                only("ca_file", raw.ca_file.is_some(), "file")?;
                only("server_name", raw.server_name.is_some(), "file")?;
                let path = raw.path.clone().ok_or_else(|| cfg(format!("{name}: kind = \"file\" needs path")))?;
                if !path.is_absolute() {
                    return Err(cfg(format!("{name}: path {} must be absolute", path.display())));
                }
                SinkTarget::File { path }
            }
            "syslog" => {
                only("path", raw.path.is_some(), "syslog")?;
                let address =
                    raw.address.clone().ok_or_else(|| cfg(format!("{name}: kind = \"syslog\" needs address")))?;
                let host = syslog::host_of(&address)
                    .ok_or_else(|| cfg(format!("{name}: address {address:?} is not host:port")))?;
                let tls = match raw.tls.as_deref() {
                    None | Some("verify") => Some(syslog::Tls {
                        ca_file: raw.ca_file.clone(),
                        server_name: raw.server_name.clone().unwrap_or_else(|| host.to_owned()),
                    }),
                    Some("off") if raw.ca_file.is_none() && raw.server_name.is_none() => None,
                    Some("off") => return Err(cfg(format!("{name}: ca_file/server_name set but tls = \"off\""))),
                    Some(other) => return Err(cfg(format!("{name}: tls {other:?}: \"verify\" (default) or \"off\""))),
                };
                if let Some(syslog::Tls { ca_file: Some(path), .. }) = &tls {
                    crate::secrets::read_checked(path, "[[agent.sink]] ca_file", crate::secrets::Kind::Trusted)
                        .map_err(|e| cfg(format!("{name}: ca_file: {e}")))?;
                }
                SinkTarget::Syslog { address, tls }
            }
            other => return Err(cfg(format!("kind {other:?}: \"file\" or \"syslog\""))),
        };
        Ok(Self { name, format, target, batch })
    }
}

/// How long records sent to a syslog collector count as possibly lost:
/// after a reconnect or a restart they are sent again.
const RESEND_WINDOW: Duration = Duration::from_secs(10);

/// Checks a list of sinks: each valid, names unique (they name cursor files).
pub fn validate(raw: &[SinkRaw]) -> Result<Vec<Sink>, SinkError> {
    let sinks = raw.iter().map(Sink::try_from).collect::<Result<Vec<_>, _>>()?;
    let mut names = std::collections::HashSet::new();
    if let Some(dup) = sinks.iter().find(|s| !names.insert(s.name.as_str())) {
        return Err(SinkError::Config(format!("two sinks named {:?}: give each a distinct name", dup.name)));
    }
    Ok(sinks)
}

/// Where a sink keeps the last sequence it delivered.
pub fn cursor_path(db: &Path, name: &str) -> PathBuf {
    db.with_file_name(format!("sink-{name}.cursor"))
}

fn read_cursor(path: &Path) -> u64 {
    std::fs::read_to_string(path).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0)
}

fn write_cursor(path: &Path, seq: u64) -> Result<(), SinkError> {
    crate::secrets::write_atomic(path, format!("{seq}\n").as_bytes(), 0o600)
        .map_err(|e| SinkError::Io { what: path.display().to_string(), source: std::io::Error::other(e.to_string()) })
}

/// Committed records after `after`, at most `n`.
fn read_after(db: &Path, after: u64, n: usize) -> Result<Vec<Record>, SinkError> {
    let local = |e: rusqlite::Error| SinkError::Local { path: db.to_owned(), message: e.to_string() };
    let conn = super::query::open_read_only(db)
        .map_err(|e| SinkError::Local { path: db.to_owned(), message: e.to_string() })?;
    let mut st = conn
        .prepare(&format!("SELECT {RECORD_COLUMNS} FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2"))
        .map_err(local)?;
    let after = i64::try_from(after).unwrap_or(i64::MAX);
    let rows =
        st.query_map(rusqlite::params![after, i64::try_from(n).unwrap_or(500)], record_from_row).map_err(local)?;
    rows.collect::<Result<_, _>>().map_err(local)
}

/// The records, up to `upto`, of the sessions still open there: what the
/// OCSF mapper needs to know to describe what follows (who, which backend,
/// statements waiting for their end), after a restart.
fn open_sessions_before(db: &Path, upto: u64) -> Result<Vec<Record>, SinkError> {
    let local = |e: rusqlite::Error| SinkError::Local { path: db.to_owned(), message: e.to_string() };
    let conn = super::query::open_read_only(db)
        .map_err(|e| SinkError::Local { path: db.to_owned(), message: e.to_string() })?;
    let upto = i64::try_from(upto).unwrap_or(i64::MAX);
    let mut st = conn
        .prepare(&format!(
            "SELECT {RECORD_COLUMNS} FROM events WHERE seq <= ?1 AND session IN (
                 SELECT session FROM events WHERE kind = ?2 AND seq <= ?1
                 EXCEPT SELECT session FROM events WHERE kind = ?3 AND seq <= ?1)
             AND kind IN (?2, ?4, ?5, ?6)
             ORDER BY seq"
        ))
        .map_err(local)?;
    let rows = st
        .query_map(
            rusqlite::params![
                upto,
                RecordKind::SessionOpen,
                RecordKind::SessionClose,
                RecordKind::BackendLogin,
                RecordKind::Statement,
                RecordKind::StatementEnd
            ],
            record_from_row,
        )
        .map_err(local)?;
    rows.collect::<Result<_, _>>().map_err(local)
}

/// Renders records into the sink's lines (JSON, one per line, no newline).
pub struct Renderer {
    format: SinkFormat,
    /// For a syslog sink: raw bytes (stream chunks) are left out of `jsonl`
    /// lines, which collectors cap in size; their content hash stays.
    omit_data: bool,
    ocsf: OcsfMapper,
}

impl Renderer {
    pub fn new(format: SinkFormat, omit_data: bool) -> Self {
        Self { format, omit_data, ocsf: OcsfMapper::default() }
    }

    /// Teaches the OCSF mapper what it would have seen before `records`.
    pub fn prime(&mut self, records: &[Record]) {
        if self.format == SinkFormat::Ocsf {
            for r in records {
                let _ = self.ocsf.record(r);
            }
        }
    }

    /// The lines for one record (none, one, or several for OCSF).
    pub fn lines(&mut self, r: &Record) -> Result<Vec<Vec<u8>>, SinkError> {
        let enc = |e: serde_json::Error| SinkError::Io { what: "encoding a record".into(), source: e.into() };
        match self.format {
            SinkFormat::Jsonl => {
                let line = if self.omit_data && r.data.is_some() {
                    let mut v: serde_json::Value =
                        serde_json::from_slice(&super::export::record_line(r).map_err(|e| SinkError::Io {
                            what: "encoding a record".into(),
                            source: std::io::Error::other(e.to_string()),
                        })?)
                        .map_err(enc)?;
                    if let Some(o) = v.as_object_mut() {
                        o.remove("data_hex");
                        o.insert("data_omitted".into(), serde_json::Value::Bool(true));
                    }
                    serde_json::to_vec(&v).map_err(enc)?
                } else {
                    super::export::record_line(r).map_err(|e| SinkError::Io {
                        what: "encoding a record".into(),
                        source: std::io::Error::other(e.to_string()),
                    })?
                };
                Ok(vec![line])
            }
            SinkFormat::Ocsf => {
                self.ocsf.record(r).iter().map(|event| serde_json::to_vec(event).map_err(enc)).collect()
            }
        }
    }
}

/// What a running sink needs from the agent.
#[derive(Debug, Clone, Copy)]
pub struct Context {
    /// Group owner of a file sink (the auditor group), if any.
    pub auditor_gid: Option<u32>,
    /// SO_MARK of the agent's own outbound sockets.
    pub mark: u32,
}

/// Runs a sink until `stop`, resuming after any failure with back-off.
pub async fn run(db: PathBuf, sink: Sink, ctx: Context, stop: CancellationToken) {
    let mut backoff = Duration::from_secs(1);
    loop {
        match deliver(&db, &sink, ctx, &stop).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(sink = %sink.name, error = %e, retry_in = ?backoff, "audit sink paused");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

enum Out {
    File(PathBuf, Option<u32>),
    Syslog(syslog::Connection),
}

async fn deliver(db: &Path, sink: &Sink, ctx: Context, stop: &CancellationToken) -> Result<(), SinkError> {
    let cursor_file = cursor_path(db, &sink.name);
    let mut cursor = read_cursor(&cursor_file);
    let mut out = match &sink.target {
        SinkTarget::File { path } => Out::File(path.clone(), ctx.auditor_gid),
        SinkTarget::Syslog { address, tls } => {
            Out::Syslog(syslog::Connection::open(address, tls.as_ref(), ctx.mark).await?)
        }
    };
    let mut renderer = Renderer::new(sink.format, matches!(sink.target, SinkTarget::Syslog { .. }));
    if sink.format == SinkFormat::Ocsf && cursor > 0 {
        let path = db.to_owned();
        let before = blocking(db, move || open_sessions_before(&path, cursor)).await?;
        renderer.prime(&before);
    }
    tracing::info!(sink = %sink.name, from_seq = cursor + 1, "audit sink");
    // Batches sent to a collector recently: (when, their last seq). TCP
    // syslog has no acknowledgement, and a collector that stops reading
    // loses what was written to it just before; the cursor file therefore
    // lags by RESEND_WINDOW, so a reconnect (or a restart) sends those again.
    let mut recent: std::collections::VecDeque<(std::time::Instant, u64)> = std::collections::VecDeque::new();
    let mut saved = cursor;
    loop {
        if stop.is_cancelled() {
            return Ok(());
        }
        if let Out::Syslog(_) = out {
            let mut settled = None;
            while recent.front().is_some_and(|(t, _)| t.elapsed() >= RESEND_WINDOW) {
                settled = recent.pop_front().map(|(_, seq)| seq);
            }
            if let Some(seq) = settled.filter(|s| *s > saved) {
                write_cursor(&cursor_file, seq)?;
                saved = seq;
            }
        }
        let (path, n) = (db.to_owned(), sink.batch);
        let records = blocking(db, move || read_after(&path, cursor, n)).await?;
        let Some(last) = records.last().map(|r| r.seq) else {
            tokio::select! {
                () = stop.cancelled() => return Ok(()),
                () = tokio::time::sleep(Duration::from_millis(500)) => continue,
            }
        };
        let mut lines = Vec::with_capacity(records.len());
        for r in &records {
            for l in renderer.lines(r)? {
                lines.push((r, l));
            }
        }
        match &mut out {
            Out::File(path, gid) => {
                let (path, gid) = (path.clone(), *gid);
                let body: Vec<u8> = lines.iter().flat_map(|(_, l)| l.iter().copied().chain([b'\n'])).collect();
                tokio::task::spawn_blocking(move || append(&path, gid, &body))
                    .await
                    .map_err(|e| SinkError::Io { what: "sink task".into(), source: std::io::Error::other(e) })??;
            }
            Out::Syslog(conn) => {
                for (r, l) in &lines {
                    conn.send(r, l).await?;
                }
                conn.flush().await?;
                recent.push_back((std::time::Instant::now(), last));
            }
        }
        if let Out::File(..) = out {
            write_cursor(&cursor_file, last)?;
        }
        crate::metrics::sunk(&sink.name, records.len());
        cursor = last;
    }
}

async fn blocking<T: Send + 'static>(
    db: &Path,
    f: impl FnOnce() -> Result<T, SinkError> + Send + 'static,
) -> Result<T, SinkError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| SinkError::Local { path: db.to_owned(), message: e.to_string() })?
}

/// Appends `body` to the sink file and syncs it. The file is opened again
/// for each batch, so a log rotation that renames it (logrotate `create`)
/// is followed. Created 0640 and group-owned by the auditor group when
/// there is one (log agents run in it), else 0600; never through a symlink.
fn append(path: &Path, gid: Option<u32>, body: &[u8]) -> Result<(), SinkError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| SinkError::Io { what: path.display().to_string(), source };
    let mode = if gid.is_some() { 0o640 } else { 0o600 };
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(mode)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
        .open(path)
        .map_err(io)?;
    let meta = f.metadata().map_err(io)?;
    if std::os::unix::fs::MetadataExt::uid(&meta) != nix::unistd::geteuid().as_raw() {
        return Err(io(std::io::Error::other("the sink file belongs to another user")));
    }
    if let Some(g) = gid
        && std::os::unix::fs::MetadataExt::gid(&meta) != g
    {
        std::os::unix::fs::fchown(&f, None, Some(g)).map_err(io)?;
    }
    f.write_all(body).map_err(io)?;
    f.sync_data().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(kind: &str) -> SinkRaw {
        SinkRaw { kind: kind.into(), ..SinkRaw::default() }
    }

    #[test]
    fn sinks_are_checked() {
        let file = SinkRaw { path: Some("/var/log/gatehouse/audit.jsonl".into()), ..raw("file") };
        let s = Sink::try_from(&file).ok();
        assert_eq!(s.map(|s| (s.name, s.format)), Some(("file".to_owned(), SinkFormat::Jsonl)));
        assert!(Sink::try_from(&raw("file")).is_err(), "a file sink needs a path");
        let relative = SinkRaw { path: Some("audit.jsonl".into()), ..raw("file") };
        assert!(Sink::try_from(&relative).is_err());
        let stray = SinkRaw { address: Some("siem:6514".into()), ..file.clone() };
        assert!(Sink::try_from(&stray).is_err(), "address on a file sink is a mistake, not ignored");

        let syslog = SinkRaw { address: Some("siem.internal:6514".into()), ..raw("syslog") };
        let s = Sink::try_from(&syslog).ok().map(|s| s.target);
        assert_eq!(
            s,
            Some(SinkTarget::Syslog {
                address: "siem.internal:6514".into(),
                tls: Some(syslog::Tls { ca_file: None, server_name: "siem.internal".into() })
            }),
            "TLS verified by default"
        );
        let plain = SinkRaw { tls: Some("off".into()), ..syslog.clone() };
        assert!(matches!(Sink::try_from(&plain).map(|s| s.target), Ok(SinkTarget::Syslog { tls: None, .. })));
        let odd = SinkRaw { tls: Some("prefer".into()), ..syslog.clone() };
        assert!(Sink::try_from(&odd).is_err());
        let noport = SinkRaw { address: Some("siem.internal".into()), ..raw("syslog") };
        assert!(Sink::try_from(&noport).is_err());
        assert!(Sink::try_from(&SinkRaw { format: Some("cef".into()), ..file.clone() }).is_err());
        assert!(Sink::try_from(&SinkRaw { name: Some("../x".into()), ..file.clone() }).is_err());
        assert!(validate(&[file.clone(), file]).is_err(), "names must be unique");
    }

    #[test]
    fn a_restarted_sink_reads_the_records_of_sessions_still_open() {
        let dir = std::env::temp_dir().join(format!("gatehouse-sink-open-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let db = dir.join("audit.db");
        let mut conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch(crate::audit::SCHEMA).unwrap();
        let tx = conn.transaction().unwrap();
        let mut head = (0, crate::audit::chain::GENESIS);
        for (session, kind) in [
            ("a", "session_open"),
            ("b", "session_open"),
            ("a", "backend_login"),
            ("a", "statement"),
            ("a", "chunk"),
            ("b", "statement"),
            ("b", "session_close"),
            ("a", "statement_end"),
            ("a", "a_kind_from_a_newer_agent"),
            ("c", "session_open"),
        ] {
            head = crate::audit::insert_event(&tx, head, 1, Some(session), kind, b"{}", None).unwrap();
        }
        tx.commit().unwrap();
        drop(conn);
        // Up to seq 9: `a` is open (its opening, login, statement and end), `b` closed, `c` not yet opened.
        let got: Vec<(u64, String)> =
            open_sessions_before(&db, 9).unwrap().into_iter().map(|r| (r.seq, r.kind)).collect();
        let want = [(1, "session_open"), (3, "backend_login"), (4, "statement"), (8, "statement_end")];
        assert_eq!(got, want.map(|(seq, kind)| (seq, kind.to_owned())));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
