//! The audit store: one SQLite database (WAL, mode 0600) written by one
//! dedicated thread fed through a bounded channel, with group commit. The
//! data path never waits on disk except where it asks to (a session's opening
//! record is acknowledged before any byte is relayed).

pub mod query;

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, params};
use serde::Serialize;
use tokio::sync::oneshot;

use crate::types::SessionId;

/// How many commands one transaction takes at most.
const GROUP_COMMIT_MAX: usize = 512;
const QUEUE_DEPTH: usize = 8192;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS sessions (
    id          TEXT PRIMARY KEY,
    started_us  INTEGER NOT NULL,
    ended_us    INTEGER,
    uid         INTEGER,
    user        TEXT,
    gid         INTEGER,
    pid         INTEGER,
    comm        TEXT,
    cgroup_id   INTEGER,
    client      TEXT NOT NULL,
    backend     TEXT,
    orig_dst    TEXT,
    protocol    TEXT,
    decision    TEXT NOT NULL,
    rule        TEXT,
    reason      TEXT NOT NULL,
    bytes_up    INTEGER NOT NULL DEFAULT 0,
    bytes_down  INTEGER NOT NULL DEFAULT 0,
    end_reason  TEXT
);
CREATE INDEX IF NOT EXISTS sessions_started ON sessions(started_us);
CREATE TABLE IF NOT EXISTS statements (
    session_id  TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    started_us  INTEGER NOT NULL,
    text        TEXT NOT NULL,
    kinds       TEXT NOT NULL,
    tables      TEXT NOT NULL,
    decision    TEXT NOT NULL,
    rule        TEXT,
    reason      TEXT,
    ended_us    INTEGER,
    rows        INTEGER,
    duration_us INTEGER,
    error       TEXT,
    masked      TEXT,
    PRIMARY KEY (session_id, seq)
);
";

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit store {path}: {source}")]
    Open { path: PathBuf, source: std::io::Error },
    #[error("audit store {path}: {source}")]
    Sql { path: PathBuf, source: rusqlite::Error },
    #[error("the audit writer has stopped")]
    WriterGone,
    #[error("the audit queue is full")]
    QueueFull,
}

/// Microseconds since the Unix epoch.
pub fn now_us() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX)).unwrap_or(0)
}

/// A session's opening record: who, where, and the decision.
#[derive(Debug, Clone, Serialize)]
pub struct SessionOpen {
    pub id: SessionId,
    pub started_us: i64,
    pub uid: Option<u32>,
    pub user: Option<String>,
    pub gid: Option<u32>,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub cgroup_id: Option<u64>,
    pub client: String,
    pub backend: Option<String>,
    pub orig_dst: Option<String>,
    pub protocol: Option<String>,
    pub decision: String,
    pub rule: Option<String>,
    pub reason: String,
}

/// A session's closing record.
#[derive(Debug, Clone, Serialize)]
pub struct SessionClose {
    pub id: SessionId,
    pub ended_us: i64,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub end_reason: String,
}

/// A statement as decided: written when it is forwarded or refused.
#[derive(Debug, Clone, Serialize)]
pub struct StatementStart {
    pub session: SessionId,
    pub seq: u64,
    pub started_us: i64,
    pub text: String,
    /// Kinds joined with "+", e.g. "select" or "delete+delete_without_where".
    pub kinds: String,
    /// Tables read or written, comma-separated.
    pub tables: String,
    /// allow, deny or approval.
    pub decision: String,
    pub rule: Option<String>,
    pub reason: Option<String>,
}

/// How a forwarded statement ended.
#[derive(Debug, Clone, Serialize)]
pub struct StatementEnd {
    pub session: SessionId,
    pub seq: u64,
    pub ended_us: i64,
    pub rows: Option<u64>,
    pub duration_us: u64,
    pub error: Option<String>,
    /// Values masked, per detector or column rule, as JSON.
    pub masked: Option<String>,
}

enum Command {
    Open(Box<SessionOpen>, Option<oneshot::Sender<Result<(), String>>>),
    Close(SessionClose),
    StatementStart(Box<StatementStart>),
    StatementEnd(Box<StatementEnd>),
    Flush(oneshot::Sender<()>),
}

/// Handle to the audit writer; cheap to clone.
#[derive(Debug, Clone)]
pub struct Audit {
    tx: SyncSender<Command>,
}

/// Owns the writer thread; dropping every [`Audit`] and joining stops it.
#[derive(Debug)]
pub struct AuditWriter {
    thread: Option<JoinHandle<()>>,
}

impl AuditWriter {
    /// Waits for the writer to drain its queue and stop (after every
    /// [`Audit`] handle is dropped).
    pub fn join(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Opens (creating if needed, mode 0600) the store and starts its writer.
pub fn open(path: &Path) -> Result<(Audit, AuditWriter), AuditError> {
    let conn = open_conn(path)?;
    let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE_DEPTH);
    let path = path.to_owned();
    let thread = std::thread::Builder::new()
        .name("audit-writer".into())
        .spawn(move || writer(conn, rx, &path))
        .map_err(|source| AuditError::Open { path: PathBuf::new(), source })?;
    Ok((Audit { tx }, AuditWriter { thread: Some(thread) }))
}

fn open_conn(path: &Path) -> Result<Connection, AuditError> {
    let io_err = |source| AuditError::Open { path: path.to_owned(), source };
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
        && !dir.exists()
    {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io_err)?;
    }
    // Create the file 0600 before SQLite does; its -wal and -shm files
    // inherit the database file's mode.
    std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(path).map_err(io_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io_err)?;
    let sql_err = |source| AuditError::Sql { path: path.to_owned(), source };
    let conn = Connection::open(path).map_err(sql_err)?;
    conn.pragma_update(None, "journal_mode", "WAL").map_err(sql_err)?;
    conn.pragma_update(None, "synchronous", "NORMAL").map_err(sql_err)?;
    conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(sql_err)?;
    conn.execute_batch(SCHEMA).map_err(sql_err)?;
    Ok(conn)
}

fn writer(mut conn: Connection, rx: Receiver<Command>, path: &Path) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < GROUP_COMMIT_MAX {
            match rx.try_recv() {
                Ok(c) => batch.push(c),
                Err(_) => break,
            }
        }
        let result = write_batch(&mut conn, &batch);
        if let Err(e) = &result {
            tracing::error!(db = %path.display(), error = %e, "audit write failed");
        }
        for c in batch {
            match c {
                Command::Open(_, Some(ack)) => {
                    let _ = ack.send(result.as_ref().map(|_| ()).map_err(|e| e.to_string()));
                }
                Command::Flush(ack) => {
                    let _ = ack.send(());
                }
                Command::Open(_, None) | Command::Close(_) | Command::StatementStart(_) | Command::StatementEnd(_) => {}
            }
        }
    }
}

fn write_batch(conn: &mut Connection, batch: &[Command]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    for c in batch {
        match c {
            Command::Open(o, _) => {
                tx.prepare_cached(
                    "INSERT INTO sessions (id, started_us, uid, user, gid, pid, comm, cgroup_id, client,
                         backend, orig_dst, protocol, decision, rule, reason)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
                )?
                .execute(params![
                    o.id.to_string(),
                    o.started_us,
                    o.uid,
                    o.user,
                    o.gid,
                    o.pid,
                    o.comm,
                    o.cgroup_id.map(|c| c.cast_signed()),
                    o.client,
                    o.backend,
                    o.orig_dst,
                    o.protocol,
                    o.decision,
                    o.rule,
                    o.reason,
                ])?;
            }
            Command::Close(c) => {
                tx.prepare_cached(
                    "UPDATE sessions SET ended_us = ?2, bytes_up = ?3, bytes_down = ?4, end_reason = ?5
                     WHERE id = ?1",
                )?
                .execute(params![
                    c.id.to_string(),
                    c.ended_us,
                    i64::try_from(c.bytes_up).unwrap_or(i64::MAX),
                    i64::try_from(c.bytes_down).unwrap_or(i64::MAX),
                    c.end_reason,
                ])?;
            }
            Command::StatementStart(s) => {
                tx.prepare_cached(
                    "INSERT OR REPLACE INTO statements (session_id, seq, started_us, text, kinds, tables, decision, rule, reason)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                )?
                .execute(params![
                    s.session.to_string(),
                    i64::try_from(s.seq).unwrap_or(i64::MAX),
                    s.started_us,
                    s.text,
                    s.kinds,
                    s.tables,
                    s.decision,
                    s.rule,
                    s.reason,
                ])?;
            }
            Command::StatementEnd(e) => {
                tx.prepare_cached(
                    "UPDATE statements SET ended_us = ?3, rows = ?4, duration_us = ?5, error = ?6, masked = ?7
                     WHERE session_id = ?1 AND seq = ?2",
                )?
                .execute(params![
                    e.session.to_string(),
                    i64::try_from(e.seq).unwrap_or(i64::MAX),
                    e.ended_us,
                    e.rows.map(|r| i64::try_from(r).unwrap_or(i64::MAX)),
                    i64::try_from(e.duration_us).unwrap_or(i64::MAX),
                    e.error,
                    e.masked,
                ])?;
            }
            Command::Flush(_) => {}
        }
    }
    tx.commit()
}

impl Audit {
    /// Records a session's opening and waits until it is committed.
    pub async fn open_session(&self, rec: SessionOpen) -> Result<(), AuditError> {
        let (ack, done) = oneshot::channel();
        self.send(Command::Open(Box::new(rec), Some(ack)))?;
        match done.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) | Err(_) => Err(AuditError::WriterGone),
        }
    }

    /// Records a session's end (not awaited: nothing waits on it).
    pub fn close_session(&self, rec: SessionClose) -> Result<(), AuditError> {
        self.send(Command::Close(rec))
    }

    /// Records a statement's decision (not awaited).
    pub fn statement_start(&self, s: StatementStart) -> Result<(), AuditError> {
        self.send(Command::StatementStart(Box::new(s)))
    }

    /// Records how a statement ended (not awaited).
    pub fn statement_end(&self, e: StatementEnd) -> Result<(), AuditError> {
        self.send(Command::StatementEnd(Box::new(e)))
    }

    /// Waits until everything queued so far is committed.
    pub async fn flush(&self) -> Result<(), AuditError> {
        let (ack, done) = oneshot::channel();
        self.send(Command::Flush(ack))?;
        done.await.map_err(|_| AuditError::WriterGone)
    }

    fn send(&self, c: Command) -> Result<(), AuditError> {
        self.tx.try_send(c).map_err(|e| match e {
            TrySendError::Full(_) => AuditError::QueueFull,
            TrySendError::Disconnected(_) => AuditError::WriterGone,
        })
    }
}
