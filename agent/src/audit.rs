//! The audit store: one SQLite database (WAL, mode 0600) written by one
//! dedicated thread fed through a bounded channel, with group commit.
//!
//! Every record (session opened/closed, statement decided/ended, a chunk of
//! either byte stream, a truncation, a checkpoint) is appended to the
//! `events` table, hash-chained to the previous one ([`chain`]); checkpoints
//! sign the chain head with the host's Ed25519 key. The `sessions` and
//! `trail` tables are indexes over the same records, written in the same
//! transaction, for queries, and `statements` is a view over the records
//! themselves ([`statements_select`]); `gatehouse verify` checks them against
//! the chain.
//!
//! Strict mode (the default): the data path waits for a record's commit
//! before it forwards what the record describes (a session's first byte, a
//! statement). If the store cannot be written, the agent fails closed: new
//! sessions are refused and open ones are ended, saying why.

mod admin;
pub mod anchors;
mod body;
pub mod chain;
pub mod export;
pub mod fold;
pub mod journal;
pub mod keys;
pub mod query;
mod record_kind;
pub mod replay;
pub mod ship;
pub mod sink;
mod stream;
pub mod verify;

pub use record_kind::{RecordKind, UnknownRecordKind};
pub use stream::StreamRecorder;

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use tokio::sync::{oneshot, watch};

use crate::types::SessionId;

/// The page size of a new store (see [`open_conn`]).
const PAGE_SIZE: i64 = 16_384;

/// How many records one transaction takes at most.
const GROUP_COMMIT_MAX: usize = 2048;
/// The least time between two of the writer's transactions while records
/// keep coming. Nothing on the data path waits for SQLite (strict records
/// are acknowledged from the journal), so the writer gathers a batch
/// instead of committing (and being woken) for each record as it comes.
///
/// Longer windows were measured: a fixed 20 ms cut the writer's CPU per
/// select-only statement from about 30 to 20-24 µs in one session's runs,
/// but records written without the journal (statement ends, stream chunks,
/// HTTP exchanges) then reach SQLite up to 20 ms after the client has its
/// answer, and readers of the store that wait only for the journal miss
/// them. 20 ms ended early after 1 ms without records was tried too: WAL
/// bytes per statement unchanged in an A/B run (~2 KB per select-only
/// statement either way: mostly the records' own bytes, not pages rewritten
/// per transaction). Measured again with every statement row written whole
/// (when the writer still kept a `statements` row per statement): 10 ms cut
/// the writer's CPU per TPC-B transaction from ~120 to 78 µs, but one
/// client's added p99 went from ~300 to ~620 µs (a commit of 10 ms of
/// records is a longer burst on a 2-core host); 5 ms
/// was lost in the noise. Kept at 2 ms. Again once the writer yields
/// between records (`WRITER_YIELD_AFTER`): 10 ms matched 2 ms on one
/// client's p99 (352–394 against 307–376 µs) and lost select-only
/// throughput (16,329 and 16,821 against 19,162 and 18,460 tps). And with
/// the writer's CPU per statement measured (`bench pg --select-only`, two
/// runs each): 2 ms 14.8 and 14.9 µs at 19,028 and 18,528 tps; 8 ms 13.7 and
/// 13.7 µs at 18,299 and 18,460 tps; 20 ms 12.3 and 13.6 µs at 17,032 and
/// 16,300 tps — a longer window saves the writer a little (fewer WAL frames
/// for the same pages) and costs the sessions more than that.
const GROUP_COMMIT_WINDOW: Duration = Duration::from_millis(2);
/// The writer's SQLite transaction spans batches: a batch's records are
/// inserted as it comes (every `GROUP_COMMIT_WINDOW` under load), but
/// committed only once the transaction is `COMMIT_EVERY` old, once no
/// record came for `COMMIT_IDLE`, or at once when someone waits for the
/// commit (a session's opening, a flush, an operator's command). A commit
/// writes every page the transaction touched to the WAL (the events table's
/// last leaves and its index's, 16 KiB each), however
/// few records it holds: committed every 2 ms, one busy session's
/// select-only statements cost ≈ 20 KiB of WAL each. Nothing on the data
/// path waits for it (strict records are durable in the journal first); a
/// crash loses nothing the journal does not hold, as before.
const COMMIT_EVERY: Duration = Duration::from_millis(10);
const COMMIT_IDLE: Duration = GROUP_COMMIT_WINDOW;
/// Session openings are committed to SQLite before the session may go on
/// (see [`Audit::open_session`]), each commit writing every page it touched
/// (the events and sessions tables, their indexes, the journal position):
/// with one commit per opening, new connections cost the writer ≈ 60 µs
/// each (`bench connect`, 8 clients). When openings come one after another
/// — the last commit someone waited for ended less than `URGENT_STREAM`
/// ago — the writer waits up to `URGENT_GATHER` for more of them, as long
/// as sessions accepted since have not sent theirs yet ([`OpeningAhead`])
/// and fewer than `URGENT_GATHER_MAX` are queued, so one commit serves
/// several. A lone connection, the first of a burst, or one with no other
/// session on its way, is committed at once. Under `bench connect` (8
/// clients) a fixed wait of 200 µs left the writer 48–53 µs per connection
/// (4,321–5,054 connections/s, p50 1.36–1.60 ms); waiting while sessions
/// are on their way, up to 1 ms, 45–48 µs (5,307–5,660/s, p50 1.19–1.28
/// ms). A fixed 1 ms wait saved more writer time (36–38 µs) but not more
/// connections, and every stream of openings would pay it, even a lone
/// client's.
const URGENT_STREAM: Duration = Duration::from_millis(1);
const URGENT_GATHER: Duration = Duration::from_millis(1);
const URGENT_GATHER_MAX: usize = 8;
const QUEUE_DEPTH: usize = 65_536;
/// A WAL larger than this is emptied by the next checkpoint (see `checkpointer`).
const WAL_RESTART: u64 = 1 << 30;

/// A record's session as the chain and the journal keep it (text). A
/// session id is spelled into a buffer of its own: recording a statement
/// allocates no string for it. The buffer is a string already, so reading
/// it (several times per record: the journal frame, the chain hash, the
/// writer's `events` row and its fold) validates nothing again; checking the 36
/// bytes as UTF-8 at each read cost ≈ 1.1k instructions per select-only
/// statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SessionKey {
    Id(arrayvec::ArrayString<{ uuid::fmt::Hyphenated::LENGTH }>),
    Text(String),
}

impl SessionKey {
    fn id(id: SessionId) -> Self {
        let mut b = [0; uuid::fmt::Hyphenated::LENGTH];
        let spelled: &str = id.0.hyphenated().encode_lower(&mut b);
        // A hyphenated id is exactly the buffer's length, so this cannot fail.
        match arrayvec::ArrayString::from(spelled) {
            Ok(s) => Self::Id(s),
            Err(_) => Self::Text(spelled.to_owned()),
        }
    }
}

impl std::ops::Deref for SessionKey {
    type Target = str;

    fn deref(&self) -> &str {
        match self {
            Self::Id(s) => s.as_str(),
            Self::Text(s) => s,
        }
    }
}

/// The `statements` query table, read from the chain itself: one row per
/// `statement` record (a folded one carries its end as `end`; an unfolded
/// one's end is its session's `statement_end` record of the same statement
/// number, found through `events_statement_end`). Each column is cast to
/// the type the old table held, so a body of the wrong shape (a store
/// edited by hand: `verify` reports it) cannot stop the rest being listed.
/// The writer keeps no separate row per statement: that row (15 columns and a second B-tree) was
/// ≈ 11k of the writer's instructions per select-only statement, about 7% of
/// the agent's CPU per statement (see the README's benchmark section). A
/// record whose body is not JSON has no row; a redacted one (body removed)
/// neither. The store holds it as a view for SQL of the operator's own; the
/// CLI reads its own copy of this text (`WITH statements AS (…)`), so a view
/// rewritten in the file changes nothing Gatehouse shows, and `verify`
/// reports it.
/// `$extra`: more columns; `$filter`: a further condition on the `events`
/// rows read (`AND …`, before their bodies are parsed as JSON).
macro_rules! statements_select {
    ($extra:literal, $filter:literal) => {
        concat!(
            "SELECT session AS session_id, coalesce(CAST(j ->> '$.seq' AS INTEGER), 0) AS seq,
       coalesce(CAST(j ->> '$.started_us' AS INTEGER), 0) AS started_us, coalesce(CAST(j ->> '$.text' AS TEXT), '') AS text,
       coalesce(CAST(j ->> '$.kinds' AS TEXT), '') AS kinds, coalesce(CAST(j ->> '$.tables' AS TEXT), '') AS tables,
       coalesce(CAST(j ->> '$.decision' AS TEXT), '') AS decision, CAST(j ->> '$.rule' AS TEXT) AS rule,
       CAST(j ->> '$.reason' AS TEXT) AS reason, CAST(e ->> '$.ended_us' AS INTEGER) AS ended_us,
       CAST(e ->> '$.rows' AS INTEGER) AS rows, CAST(e ->> '$.duration_us' AS INTEGER) AS duration_us,
       CAST(e ->> '$.error' AS TEXT) AS error, CAST(e ->> '$.masked' AS TEXT) AS masked,
       coalesce(CAST(j ->> '$.redacted' AS INTEGER), 0) AS redacted",
            $extra,
            "
FROM (SELECT session, record, j, coalesce(j -> '$.end',
        (SELECT CAST(x.body AS TEXT) FROM events x
         WHERE x.kind = 'statement_end' AND json_valid(CAST(x.body AS TEXT)) AND x.session = s.session
           AND (CAST(x.body AS TEXT) ->> '$.seq') = (s.j ->> '$.seq')
         ORDER BY x.seq DESC LIMIT 1)) AS e
      FROM (SELECT session, seq AS record, CAST(body AS TEXT) AS j FROM events
            WHERE kind = 'statement' AND session IS NOT NULL",
            $filter,
            " AND json_valid(CAST(body AS TEXT))) AS s)"
        )
    };
}

/// SQL reading the `statements` rows as this build defines them (see
/// [`statements_select`]), whatever the store's own view says, with each
/// row's record (`record`, its seq in the chain): put before a query that
/// reads `statements`.
pub(crate) const WITH_STATEMENTS: &str = concat!("WITH statements AS (", statements_select!(", record", ""), ")\n");

/// [`WITH_STATEMENTS`] read only from the records whose raw body matches
/// `?9` (a `LIKE` pattern, `ESCAPE '!'`) when it is set: a body that cannot
/// hold what is looked for is passed by before it is parsed as JSON, most of
/// the cost of reading every statement (see `query::raw_like`).
pub(crate) const WITH_STATEMENTS_BODY_LIKE: &str = concat!(
    "WITH statements AS (",
    statements_select!(", record", " AND (?9 IS NULL OR CAST(body AS TEXT) LIKE ?9 ESCAPE '!')"),
    ")\n"
);

pub const SCHEMA: &str = concat!(
    "
CREATE TABLE IF NOT EXISTS meta (
    key        TEXT PRIMARY KEY,
    value      TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    seq          INTEGER PRIMARY KEY,
    time_us      INTEGER NOT NULL,
    session      TEXT,
    kind         TEXT NOT NULL,
    content_hash BLOB NOT NULL,
    body         BLOB,
    data         BLOB,
    prev_hash    BLOB NOT NULL,
    hash         BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS events_session ON events(session, seq);
CREATE TABLE IF NOT EXISTS anchors (
    seq        INTEGER PRIMARY KEY,
    hash       BLOB NOT NULL,
    time_us    INTEGER NOT NULL,
    signature  BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS host_keys (
    public_key BLOB PRIMARY KEY,
    first_seen_us INTEGER NOT NULL
);
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
    end_reason  TEXT,
    backend_tls TEXT,
    backend_auth TEXT,
    redacted    TEXT,
    oidc_subject TEXT,
    oidc_email  TEXT
);
CREATE INDEX IF NOT EXISTS sessions_started ON sessions(started_us);
-- Unfolded statement ends, by session and statement number (see `statements_select`).
CREATE INDEX IF NOT EXISTS events_statement_end ON events(session, (CAST(body AS TEXT) ->> '$.seq'))
    WHERE kind = 'statement_end' AND json_valid(CAST(body AS TEXT));
CREATE VIEW IF NOT EXISTS statements AS ",
    statements_select!("", ""),
    ";
CREATE TABLE IF NOT EXISTS trail (
    seq         INTEGER PRIMARY KEY,
    session_id  TEXT NOT NULL,
    stmt        INTEGER NOT NULL,
    time_us     INTEGER NOT NULL,
    tbl         TEXT NOT NULL,
    key_column  TEXT,
    rows        INTEGER NOT NULL,
    keys        INTEGER NOT NULL,
    hashed      INTEGER NOT NULL,
    masked      INTEGER NOT NULL,
    keyless     TEXT
);
CREATE INDEX IF NOT EXISTS trail_table_time ON trail(tbl, time_us);
CREATE TABLE IF NOT EXISTS trail_buckets (
    tbl    TEXT NOT NULL,
    bucket INTEGER NOT NULL,
    seq    INTEGER NOT NULL,
    PRIMARY KEY (tbl, bucket, seq)
) WITHOUT ROWID;
"
);

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit store {path}: {source}")]
    Open { path: PathBuf, source: std::io::Error },
    #[error("audit store {path}: {source}")]
    Sql { path: PathBuf, source: rusqlite::Error },
    #[error("host key: {0}")]
    Key(String),
    #[error("the audit store failed: {0}")]
    Failed(String),
    #[error("the audit writer has stopped")]
    WriterGone,
    #[error("the audit queue is full")]
    QueueFull,
}

/// Microseconds since the Unix epoch.
pub fn now_us() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX)).unwrap_or(0)
}

/// How strictly the data path waits for the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Statements and sessions are forwarded only once their record is committed.
    Strict,
    /// Records are queued and written as soon as possible; nothing waits.
    BestEffort,
}

/// The store's knobs.
#[derive(Debug, Clone)]
pub struct Options {
    pub mode: Mode,
    /// fsync every commit (power-loss durability); otherwise a commit survives a killed process.
    pub fsync: bool,
    pub checkpoint_every: Duration,
    pub retention_days: Option<u32>,
    /// Where each signed checkpoint is published (see [`anchors`]).
    pub publish: anchors::Publish,
}

/// A decision as records keep it (`"allow"`, `"deny"`, `"approval"` in their
/// bodies and the query tables, as before this was a type).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Allow,
    #[default]
    Deny,
    /// Held for a human's approval.
    Approval,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
            Self::Approval => "approval",
        }
    }

    pub fn allowed(self) -> bool {
        self == Self::Allow
    }
}

impl From<crate::policy::Verdict> for Verdict {
    fn from(v: crate::policy::Verdict) -> Self {
        match v {
            crate::policy::Verdict::Allow => Self::Allow,
            crate::policy::Verdict::Deny => Self::Deny,
            crate::policy::Verdict::NeedsApproval => Self::Approval,
        }
    }
}

impl std::str::FromStr for Verdict {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "allow" => Ok(Self::Allow),
            "deny" => Ok(Self::Deny),
            "approval" => Ok(Self::Approval),
            other => Err(format!("unknown decision {other:?}: allow, deny or approval")),
        }
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A session's opening record: who, where, and the decision.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
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
    pub decision: Verdict,
    pub rule: Option<String>,
    pub reason: String,
    /// The identity `gatehouse login` bound to the uid, when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oidc: Option<crate::identity::OidcIdentity>,
}

/// A session's closing record.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct SessionClose {
    pub id: SessionId,
    pub ended_us: i64,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub end_reason: String,
}

/// A statement as decided: written when it is forwarded or refused.
/// (`Default`: for tests and benches that set only what they look at; the
/// relays spell every field.)
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct StatementStart {
    pub session: SessionId,
    pub seq: u64,
    pub started_us: i64,
    pub text: String,
    /// Its kinds, on record as one string joined with "+", e.g. "select"
    /// or "delete+delete_without_where".
    pub kinds: crate::sql::KindList,
    /// Tables read or written, on record as one comma-separated string.
    pub tables: crate::sql::TableList,
    pub decision: Verdict,
    pub rule: Option<String>,
    pub reason: Option<String>,
    /// Secrets removed from `text` (and `reason`) before recording, each
    /// shown as `'[redacted]'` (see `sql::redact`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub redacted: u32,
    /// The client's recorded bytes that carried the statement, folded into
    /// this record (its data) instead of a chunk record of their own: where
    /// they start in the client → backend stream. `None`: no bytes folded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub up_offset: Option<u64>,
    /// The folded bytes (the record's data, not its body).
    #[serde(skip)]
    pub up: Vec<u8>,
    /// Set on a record the audit writer folded the statement's end into
    /// (see [`fold`]): how many bytes of the record's data are the client's
    /// (`up`); the rest are the end's (`down`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub up_len: Option<u64>,
    /// The statement's end, when the writer folded it into this record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<Box<StatementEnd>>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// How Gatehouse reached and logged in to a session's backend: written once
/// the login succeeded, before the session's first statement.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct BackendLogin {
    pub id: SessionId,
    /// The backend role Gatehouse logged in as.
    pub user: String,
    /// `verified` (certificate and name checked), `unverified` (encrypted,
    /// server not authenticated) or `off` (plaintext).
    pub tls: String,
    pub tls_version: Option<String>,
    pub tls_cipher: Option<String>,
    /// SHA-256 of the server's certificate (DER), hex.
    pub certificate_sha256: Option<String>,
    /// The name the certificate was checked against.
    pub server_name: Option<String>,
    /// `SCRAM-SHA-256-PLUS`, `SCRAM-SHA-256`, `md5`, `password` or `none`.
    pub auth: String,
    /// The database the client chose at login (MySQL's handshake), which
    /// unqualified table names are read in until a `USE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
}

impl BackendLogin {
    /// One line for the sessions table: `verified TLSv1.3 TLS13_AES_256_GCM_SHA384`.
    pub fn tls_summary(&self) -> String {
        [Some(self.tls.as_str()), self.tls_version.as_deref(), self.tls_cipher.as_deref()]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// The content of a session's records was removed (`gatehouse redact`):
/// which records, why, by whom. Signed by the host key (the record's data).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Redaction {
    pub session: String,
    /// The records whose content was removed, as inclusive seq ranges.
    pub records: Vec<(u64, u64)>,
    pub reason: String,
    /// Who asked (uid), when.
    pub by_uid: u32,
    pub time_us: i64,
    /// The key that signed it (hex).
    pub public_key: String,
}

impl Redaction {
    /// Whether record `seq` is one this redaction removed.
    pub fn covers(&self, seq: u64) -> bool {
        self.records.iter().any(|&(a, b)| (a..=b).contains(&seq))
    }

    /// How many records it removed.
    pub fn count(&self) -> u64 {
        self.records.iter().map(|&(a, b)| b.saturating_sub(a) + 1).sum()
    }
}

/// The host key changed (`gatehouse keys rotate`): the old key signs the
/// new one (the record's data), and later checkpoints are the new key's.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct KeyRotation {
    pub old_public_key: String,
    pub new_public_key: String,
    pub time_us: i64,
}

/// How a forwarded statement ended.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct StatementEnd {
    pub session: SessionId,
    pub seq: u64,
    pub ended_us: i64,
    pub rows: Option<u64>,
    pub duration_us: u64,
    pub error: Option<String>,
    /// Values masked, per detector or column rule, as JSON.
    pub masked: Option<String>,
    /// What the server reported it did (CommandComplete tags).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<String>,
    /// The backend → client bytes (after masking) sent with the statement's
    /// outcome, folded into this record (its data) instead of a chunk record
    /// of their own: where they start in that stream. `None`: none folded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub down_offset: Option<u64>,
    /// The folded bytes (the record's data, not its body).
    #[serde(skip)]
    pub down: Vec<u8>,
}

/// Which way a chunk of a session's byte stream went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub enum Direction {
    /// Client → backend.
    #[serde(rename = "up")]
    Up,
    /// Backend → client (after masking).
    #[serde(rename = "down")]
    Down,
}

/// The header of a chunk record; the bytes are the record's data.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct ChunkHeader {
    pub dir: Direction,
    /// Position of the chunk's first byte in its direction's stream.
    pub offset: u64,
}

/// Recording of a stream stopped at a cap; never silent.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Truncation {
    pub dir: Direction,
    /// The statement whose result was capped, if any.
    pub statement: Option<u64>,
    pub cap: u64,
    pub reason: String,
}

/// One HTTP request and its response (`protocol = "http"`), written when
/// the response body ended (or the request was refused). The record's data
/// holds the recorded request body, then the response body (after
/// masking), `request_body_recorded` bytes first; each is cut at
/// `record_max_bytes`.
/// One event of an SSH channel (`protocol = "ssh"`); the record's data
/// holds the bytes of `io` events (terminal or exec output, input).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct SshEvent {
    pub session: SessionId,
    /// The client's channel number.
    pub channel: u32,
    #[serde(flatten)]
    pub what: SshWhat,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum SshWhat {
    /// A channel request and its decision: `shell`, `exec`, `sftp`,
    /// `subsystem`, `direct-tcpip`, `agent`, `x11`, `tcpip-forward`.
    Request {
        request: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
        decision: Verdict,
        rule: Option<String>,
        reason: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        approval: Option<u64>,
    },
    /// A pseudo-terminal: its type and size.
    Pty { term: String, cols: u32, rows: u32 },
    /// The window changed size.
    Resize { cols: u32, rows: u32 },
    /// Bytes: `o` output (stdout and stderr, after masking), `i` input.
    Io { stream: String, offset: u64 },
    /// A channel's command or shell ended.
    Exit {
        status: Option<u32>,
        signal: Option<String>,
        output_bytes: u64,
        input_bytes: u64,
        /// Output past `record_max_bytes` was not recorded.
        truncated: bool,
    },
    /// One sftp operation.
    Sftp {
        op: String,
        path: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        target: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        size: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mode: Option<u32>,
        decision: Verdict,
        reason: Option<String>,
        /// On `close`: bytes read from and written to the file through its handle.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        read_bytes: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        written_bytes: Option<u64>,
    },
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct HttpExchange {
    pub session: SessionId,
    pub seq: u64,
    pub started_us: i64,
    /// `HTTP/1.1` or `HTTP/2.0`.
    pub version: String,
    pub method: String,
    /// Path and query, with the values of secret-looking query parameters removed.
    pub target: String,
    pub host: Option<String>,
    /// Request headers as received; credentials' values shown as `[redacted]`.
    pub request_headers: Vec<(String, String)>,
    /// `None` when no response came (refused before the backend, or it failed).
    pub status: Option<u16>,
    pub response_headers: Vec<(String, String)>,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub duration_us: u64,
    pub decision: Verdict,
    pub rule: Option<String>,
    pub reason: Option<String>,
    /// Values masked in the response body, per detector or field rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub masked: Option<std::collections::BTreeMap<String, u64>>,
    pub request_body_recorded: u64,
    pub response_body_recorded: u64,
    /// A body was longer than what was recorded of it.
    #[serde(default)]
    pub truncated: bool,
    /// Why the exchange did not complete, if it did not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Whether the client's own Authorization/Cookie was stripped, and which credential was injected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<String>,
}

/// One WebSocket frame of an upgraded HTTP exchange; the data is its
/// payload (unmasked from the client's XOR key), cut at `record_max_bytes`.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct WsFrame {
    pub session: SessionId,
    /// The exchange that was upgraded.
    pub exchange: u64,
    pub dir: Direction,
    /// `text`, `binary`, `close`, `ping`, `pong`, `continuation`.
    pub opcode: String,
    pub fin: bool,
    /// RSV1: the payload is compressed (permessage-deflate) and recorded as sent.
    #[serde(default)]
    pub compressed: bool,
    pub len: u64,
}

/// One record to append.
#[derive(Debug, Clone)]
pub enum Event {
    SessionOpen(Box<SessionOpen>),
    SessionClose(Box<SessionClose>),
    Statement(Box<StatementStart>),
    StatementEnd(Box<StatementEnd>),
    Chunk {
        session: SessionId,
        header: ChunkHeader,
        data: Vec<u8>,
    },
    Truncated {
        session: SessionId,
        truncation: Truncation,
    },
    BackendLogin(Box<BackendLogin>),
    /// Written by the writer itself (`gatehouse redact`); here for the query tables.
    Redaction(Box<Redaction>),
    /// The agent started or stopped (body says which), or another agent-level fact.
    Agent {
        what: String,
    },
    /// A step of a request that waits for a human (`crate::approval`).
    Approval(Box<crate::approval::Transition>),
    /// An HTTP request and its response; the data holds the bodies recorded.
    Http(Box<HttpExchange>, Vec<u8>),
    /// A WebSocket frame; the data is its payload.
    WsFrame(Box<WsFrame>, Vec<u8>),
    /// The rows of a trailed table a statement returned (`crate::trail`); the data is the key set.
    Trail(Box<crate::trail::TrailRecord>, Vec<u8>),
    /// An `[[alert]]` rule fired.
    TrailAlert(Box<crate::trail::AlertRecord>),
    /// An SSH channel event; the data holds the bytes of `io` events.
    Ssh(Box<SshEvent>, Vec<u8>),
}

impl Event {
    pub fn kind(&self) -> RecordKind {
        match self {
            Self::SessionOpen(_) => RecordKind::SessionOpen,
            Self::SessionClose(_) => RecordKind::SessionClose,
            Self::Statement(_) => RecordKind::Statement,
            Self::StatementEnd(_) => RecordKind::StatementEnd,
            Self::Chunk { .. } => RecordKind::Chunk,
            Self::Truncated { .. } => RecordKind::Truncated,
            Self::BackendLogin(_) => RecordKind::BackendLogin,
            Self::Redaction(_) => RecordKind::Redaction,
            Self::Agent { .. } => RecordKind::Agent,
            Self::Approval(_) => RecordKind::Approval,
            Self::Http(..) => RecordKind::Http,
            Self::WsFrame(..) => RecordKind::WsFrame,
            Self::Trail(..) => RecordKind::Trail,
            Self::TrailAlert(_) => RecordKind::TrailAlert,
            Self::Ssh(..) => RecordKind::Ssh,
        }
    }

    pub(crate) fn session(&self) -> Option<SessionKey> {
        match self {
            Self::SessionOpen(o) => Some(SessionKey::id(o.id)),
            Self::SessionClose(c) => Some(SessionKey::id(c.id)),
            Self::Statement(s) => Some(SessionKey::id(s.session)),
            Self::StatementEnd(e) => Some(SessionKey::id(e.session)),
            Self::Chunk { session, .. } | Self::Truncated { session, .. } => Some(SessionKey::id(*session)),
            Self::BackendLogin(l) => Some(SessionKey::id(l.id)),
            Self::Redaction(r) => Some(SessionKey::Text(r.session.clone())),
            Self::Agent { .. } => None,
            Self::Http(h, _) => Some(SessionKey::id(h.session)),
            Self::WsFrame(f, _) => Some(SessionKey::id(f.session)),
            Self::Trail(t, _) => Some(SessionKey::id(t.session)),
            Self::TrailAlert(a) => Some(SessionKey::id(a.session)),
            Self::Ssh(s, _) => Some(SessionKey::id(s.session)),
            Self::Approval(t) => match &t.request.subject {
                crate::approval::Subject::Statement { session, .. }
                | crate::approval::Subject::Connect { session, .. }
                | crate::approval::Subject::Ssh { session, .. }
                | crate::approval::Subject::HttpRequest { session, .. } => Some(SessionKey::Text(session.clone())),
                crate::approval::Subject::Grant { .. } => None,
            },
        }
    }

    /// The canonical body (JSON) and the raw data, borrowed (a chunk's bytes
    /// are hashed and stored as they are, not copied again).
    #[cfg(test)]
    fn encode(&self) -> (Vec<u8>, Option<&[u8]>) {
        (self.body_then(&[]), self.data())
    }

    /// The body and, for a statement or its end, the data folded into it
    /// after the body, in one allocation (see `journal::Kept`); and where
    /// that data starts, if it has any. Any other record's data (a chunk's
    /// bytes, which may be large) stays where it is ([`Self::data`]).
    fn encode_joined(&self) -> (Vec<u8>, Option<usize>) {
        let tail = match self {
            Self::Statement(_) | Self::StatementEnd(_) => self.data(),
            _ => None,
        };
        let bytes = self.body_then(tail.unwrap_or_default());
        let at = tail.map(|t| bytes.len().saturating_sub(t.len()));
        (bytes, at)
    }

    /// The body (JSON), then `tail`, in one allocation of their size.
    fn body_then(&self, tail: &[u8]) -> Vec<u8> {
        fn json<T: Serialize>(v: &T, tail: &[u8]) -> Vec<u8> {
            scratch(
                |b| {
                    // A value that cannot be serialised leaves no half body.
                    if serde_json::to_writer(&mut *b, v).is_err() {
                        b.clear();
                    }
                },
                tail,
            )
        }
        fn scratch(write: impl Fn(&mut Vec<u8>), tail: &[u8]) -> Vec<u8> {
            // Serialised into a buffer this thread keeps, then copied out at
            // its exact size: one allocation per body. `serde_json::to_vec`
            // starts at 128 bytes and doubles, so a statement's body (≈ 250
            // bytes, its end's ≈ 200) took two reallocations, freed later on
            // the writer thread. Measured with `bench ingest` (alternating
            // runs, six each; medians): the sessions' and the journal's CPU
            // per statement 6.7 → 5.2 µs, the writer's 17.8 → 17.1 µs; with
            // `bench pg --select-only 6 --compare` (the build before as B):
            // the agent's CPU per select-only transaction 49.1 → 47.0 µs,
            // `ratio select_only_cpu gatehouse_b/gatehouse = 1.10` (rounds
            // 1.12 0.93 1.08 1.01 1.13 1.12).
            // A thread whose buffer is gone (a record made while the thread
            // exits) or in use (never: no body encodes a record) allocates
            // as before.
            JSON_SCRATCH
                .try_with(|cell| {
                    let mut b = cell.try_borrow_mut().ok()?;
                    b.clear();
                    write(&mut b);
                    let mut body = Vec::with_capacity(b.len() + tail.len());
                    body.extend_from_slice(&b);
                    body.extend_from_slice(tail);
                    if b.capacity() > JSON_SCRATCH_KEEP {
                        *b = Vec::with_capacity(JSON_SCRATCH_KEEP);
                    }
                    Some(body)
                })
                .ok()
                .flatten()
                .unwrap_or_else(|| {
                    let mut b = Vec::new();
                    write(&mut b);
                    b.extend_from_slice(tail);
                    b
                })
        }
        match self {
            Self::SessionOpen(o) => json(o, tail),
            Self::SessionClose(c) => json(c, tail),
            Self::Statement(s) => scratch(|b| s.write_json(b), tail),
            Self::StatementEnd(e) => scratch(|b| e.write_json(b), tail),
            Self::Chunk { header, .. } => json(header, tail),
            Self::Truncated { truncation, .. } => json(truncation, tail),
            Self::BackendLogin(l) => json(l, tail),
            Self::Redaction(r) => json(r, tail),
            Self::Agent { what } => json(&serde_json::json!({ "what": what }), tail),
            Self::Approval(t) => json(t, tail),
            Self::Http(h, _) => json(h, tail),
            Self::WsFrame(f, _) => json(f, tail),
            Self::Trail(t, _) => json(t, tail),
            Self::TrailAlert(a) => json(a, tail),
            Self::Ssh(s, _) => json(s, tail),
        }
    }

    /// The record's data: a chunk's bytes, an exchange's bodies, a frame's
    /// payload, or the stream bytes folded into a statement's records.
    pub(crate) fn data(&self) -> Option<&[u8]> {
        match self {
            Self::Chunk { data, .. }
            | Self::Http(_, data)
            | Self::WsFrame(_, data)
            | Self::Trail(_, data)
            | Self::Ssh(_, data) => Some(data),
            Self::Statement(s) => s.up_offset.map(|_| s.up.as_slice()),
            Self::StatementEnd(e) => e.down_offset.map(|_| e.down.as_slice()),
            _ => None,
        }
    }
}

/// What a thread's JSON scratch buffer keeps between records (a larger
/// record grows it for its own encoding and it is cut back after).
const JSON_SCRATCH_KEEP: usize = 4096;

thread_local! {
    static JSON_SCRATCH: std::cell::RefCell<Vec<u8>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

enum Command {
    Append(Event, Option<oneshot::Sender<Result<(), String>>>),
    /// Records already in the journal (acknowledged), in journal order.
    Journaled(journal::Entries),
    Flush(oneshot::Sender<Result<(), String>>),
    Redact {
        session: String,
        reason: String,
        by_uid: u32,
        ack: oneshot::Sender<Result<Redaction, String>>,
    },
    RotateKey(oneshot::Sender<Result<KeyRotation, String>>),
    Stop,
}

impl Command {
    /// Someone waits for this command's commit (a session's opening, a
    /// flush): the writer does not hold it back to gather a batch.
    fn waited(&self) -> bool {
        !matches!(self, Command::Append(_, None) | Command::Journaled(_))
    }
}

/// How a waited command cuts the writer's gathering window short: the flag
/// says one is queued, the unpark ends the writer's sleep. Records nobody
/// waits for (the journal's, best-effort ones) neither set it nor wake the
/// writer, so they cost no wake-up each.
#[derive(Debug, Default)]
struct Wake {
    urgent: AtomicBool,
    /// Waited commands sent since the writer last took its queue.
    waiting: AtomicUsize,
    /// Sessions accepted whose opening is not sent yet (see [`OpeningAhead`]).
    ahead: AtomicUsize,
    thread: std::sync::OnceLock<std::thread::Thread>,
}

/// A session accepted whose opening will follow shortly: while any is
/// held, a writer gathering openings (see `URGENT_GATHER`) waits for them;
/// once none is, it commits at once. Dropped when the session sends its
/// opening, or ends without one.
#[derive(Debug)]
pub struct OpeningAhead(Arc<Wake>);

impl Drop for OpeningAhead {
    fn drop(&mut self) {
        if self.0.ahead.fetch_sub(1, Ordering::AcqRel) == 1
            && let Some(t) = self.0.thread.get()
        {
            t.unpark();
        }
    }
}

impl Wake {
    fn raise(&self) {
        self.waiting.fetch_add(1, Ordering::Relaxed);
        self.urgent.store(true, Ordering::Release);
        if let Some(t) = self.thread.get() {
            t.unpark();
        }
    }
}

/// Handle to the audit writer; cheap to clone.
#[derive(Debug, Clone)]
pub struct Audit {
    tx: Sender<Command>,
    /// Commands queued and not yet taken by the writer, bounded by `depth`.
    queued: Arc<AtomicUsize>,
    depth: usize,
    mode: Mode,
    failure: watch::Receiver<Option<String>>,
    fail_tx: Arc<watch::Sender<Option<String>>>,
    public_key: std::sync::Arc<Mutex<[u8; 32]>>,
    /// Strict mode's durability point (see [`journal`]).
    journal: Option<Arc<journal::Journal>>,
    /// The store's key for hashed trail keys (`crate::trail::keys`).
    trail_key: crate::trail::HashKey,
    wake: Arc<Wake>,
}

/// Owns the writer and checkpointer threads.
#[derive(Debug)]
pub struct AuditWriter {
    thread: Option<JoinHandle<()>>,
    checkpointer: Option<(JoinHandle<()>, std::sync::Arc<std::sync::atomic::AtomicBool>)>,
    tx: Sender<Command>,
    journal: Option<Arc<journal::Journal>>,
}

impl AuditWriter {
    /// Writes a final checkpoint, drains the queue and stops the writer.
    pub fn stop(mut self) {
        let _ = self.tx.send(Command::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Some(j) = &self.journal {
            j.close();
        }
        if let Some((t, stop)) = self.checkpointer.take() {
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            let _ = t.join();
        }
    }
}

/// Opens (creating if needed, mode 0600) the store and starts its writer.
/// `key_path`: the host's Ed25519 key (made on first start, 0600; its
/// public half is written beside it as `host.pub`). The store's directory is
/// made (or corrected to) 0700, and the store is locked against a second
/// writer (an agent, or `gatehouse redact` run while the agent is down).
pub fn open(path: &Path, key_path: &Path, opts: &Options) -> Result<(Audit, AuditWriter), AuditError> {
    let sql_err = |source| AuditError::Sql { path: path.to_owned(), source };
    match crate::secrets::state_dir(crate::secrets::dir_of(path)).map_err(|e| AuditError::Key(e.to_string()))? {
        crate::secrets::StateDir::Corrected { was } => tracing::warn!(
            dir = %crate::secrets::dir_of(path).display(),
            "the audit store's directory had mode {was:04o}; narrowed to 0700"
        ),
        crate::secrets::StateDir::Created | crate::secrets::StateDir::Fine => {}
    }
    let lock = lock_store(path)?;
    let conn = open_conn(path, opts.fsync)?;
    rewind_wal(&conn).map_err(|source| AuditError::Sql { path: path.to_owned(), source })?;
    let key = keys::load_or_create(key_path).map_err(AuditError::Key)?;
    let key = finish_rotation(&conn, key_path, key).map_err(AuditError::Key)?;
    let public_key = key.verifying_key().to_bytes();
    keys::write_public(&keys::public_path(key_path), &key.verifying_key()).map_err(AuditError::Key)?;
    conn.execute(
        "INSERT OR IGNORE INTO host_keys (public_key, first_seen_us) VALUES (?1, ?2)",
        params![public_key.to_vec(), now_us()],
    )
    .map_err(sql_err)?;
    let head = head(&conn).map_err(sql_err)?;
    let trail_key = crate::trail::store::hash_key(&conn).map_err(sql_err)?;
    // A rotation whose record was never written (the agent died between the
    // two) leaves its new key file behind: drop it.
    let _ = std::fs::remove_file(keys::pending_path(key_path));
    conn.pragma_update(None, "secure_delete", "OFF").map_err(sql_err)?;
    let mut conn = conn;
    // What a crashed agent acknowledged from its journal joins the chain before anything new.
    let (head, next_jseq, _) = journal::replay(&mut conn, path, head).map_err(AuditError::Failed)?;
    let (tx, rx) = std::sync::mpsc::channel();
    let queued = Arc::new(AtomicUsize::new(0));
    let journal = match opts.mode {
        Mode::Strict => Some(Arc::new(
            journal::Journal::create(path, next_jseq, opts.fsync, tx.clone(), queued.clone())
                .map_err(AuditError::Failed)?,
        )),
        Mode::BestEffort => None,
    };
    let (fail_tx, failure) = watch::channel(None);
    let fail_tx = Arc::new(fail_tx);
    let public = std::sync::Arc::new(Mutex::new(public_key));
    let wake = Arc::new(Wake::default());
    let mut w = Writer {
        wake: wake.clone(),
        queued: queued.clone(),
        ingested: journal.as_ref().map(|j| j.ingested.clone()),
        spares: journal.as_ref().map(|j| j.spares()),
        conn,
        path: path.to_owned(),
        key_path: key_path.to_owned(),
        head,
        key,
        public: public.clone(),
        publisher: anchors::Publisher::new(opts.publish.clone()),
        checkpoint_every: opts.checkpoint_every,
        retention: opts.retention_days.map(|d| Duration::from_secs(u64::from(d) * 86_400)),
        last_checkpoint: Instant::now(),
        dirty: false,
        failed: None,
        fail_tx: fail_tx.clone(),
        _lock: lock,
        open_since: None,
        pending_jseq: 0,
    };
    let thread = std::thread::Builder::new()
        .name("audit-writer".into())
        .spawn(move || w.run(&rx))
        .map_err(|source| AuditError::Open { path: PathBuf::new(), source })?;
    let _ = wake.thread.set(thread.thread().clone());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ck = {
        let (path, stop) = (path.to_owned(), stop.clone());
        std::thread::Builder::new()
            .name("audit-checkpoint".into())
            .spawn(move || checkpointer(path, stop, WAL_RESTART))
            .map_err(|source| AuditError::Open { path: PathBuf::new(), source })?
    };
    let audit = Audit {
        tx: tx.clone(),
        queued,
        depth: QUEUE_DEPTH,
        mode: opts.mode,
        failure,
        fail_tx,
        public_key: public,
        journal: journal.clone(),
        trail_key,
        wake,
    };
    Ok((audit, AuditWriter { thread: Some(thread), checkpointer: Some((ck, stop)), tx, journal }))
}

/// Takes the store's writer lock (`<store>.lock`, flock): one writer at a
/// time, or two would each extend the chain from the head they know.
fn lock_store(path: &Path) -> Result<nix::fcntl::Flock<std::fs::File>, AuditError> {
    let lock_path = PathBuf::from(format!("{}.lock", path.display()));
    let io_err = |source| AuditError::Open { path: lock_path.clone(), source };
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&lock_path)
        .map_err(io_err)?;
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
        AuditError::Failed(format!(
            "the audit store {} is in use by another writer (a running agent?): {e}",
            path.display()
        ))
    })
}

/// A rotation interrupted after its record was committed but before the new
/// key replaced the old file is finished here; otherwise the key as loaded.
fn finish_rotation(
    conn: &Connection,
    key_path: &Path,
    key: ed25519_dalek::SigningKey,
) -> Result<ed25519_dalek::SigningKey, String> {
    let pending = keys::pending_path(key_path);
    if !pending.exists() {
        return Ok(key);
    }
    let new = keys::load(&pending)?;
    let last = admin::last_rotation(conn).map_err(|e| e.to_string())?;
    if last.is_some_and(|r| r.new_public_key == hex(&new.verifying_key().to_bytes())) {
        std::fs::rename(&pending, key_path).map_err(|e| format!("{}: {e}", key_path.display()))?;
        tracing::warn!("finished a host key rotation that was interrupted");
        return Ok(new);
    }
    Ok(key)
}

fn open_conn(path: &Path, fsync: bool) -> Result<Connection, AuditError> {
    let io_err = |source| AuditError::Open { path: path.to_owned(), source };
    // Create the file 0600 before SQLite does (never through a symlink);
    // its -wal and -shm files inherit the database file's mode.
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(io_err)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600)).map_err(io_err)?;
    let sql_err = |source| AuditError::Sql { path: path.to_owned(), source };
    let conn = Connection::open(path).map_err(sql_err)?;
    // A new store's pages are 16 KiB (SQLite's default is 4 KiB; an existing
    // store keeps its own). Each commit writes every page it touched to the
    // WAL, a 24-byte header and the page in two `pwrite`s, and the batch's
    // records fill fewer, larger pages: the writer's CPU per select-only
    // statement was 5–7% lower than with 4 KiB pages in 10 of 12 paired
    // rounds of `bench pg --select-only` (e.g. 12.3 against 12.9 µs).
    conn.pragma_update(None, "page_size", PAGE_SIZE).map_err(sql_err)?;
    conn.pragma_update(None, "journal_mode", "WAL").map_err(sql_err)?;
    conn.pragma_update(None, "synchronous", if fsync { "FULL" } else { "NORMAL" }).map_err(sql_err)?;
    conn.busy_timeout(Duration::from_secs(5)).map_err(sql_err)?;
    // No checkpoint at commit here; the agent's writer connection rewinds
    // the WAL itself ([`rewind_wal`]), and `checkpointer` bounds it.
    conn.pragma_update(None, "wal_autocheckpoint", 0).map_err(sql_err)?;
    // The index pages the writer touches stay in memory (default: 2 MiB).
    conn.pragma_update(None, "cache_size", -16_384).map_err(sql_err)?;
    check_layout(&conn).map_err(|e| AuditError::Failed(format!("{}: {e}", path.display())))?;
    replace_stale_statements(&conn).map_err(sql_err)?;
    conn.execute_batch(SCHEMA).map_err(sql_err)?;
    add_columns(&conn).map_err(sql_err)?;
    conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('layout', ?1)", [chain::LAYOUT.to_string()])
        .map_err(sql_err)?;
    Ok(conn)
}

/// The `statements` view as SQLite keeps it in `sqlite_schema`.
pub(crate) const STATEMENTS_VIEW_SQL: &str = concat!("CREATE VIEW statements AS ", statements_select!("", ""));

/// What [`SCHEMA`] makes as `statements` (`CREATE … IF NOT EXISTS`) unless
/// the store has something of that name: a store made before statements
/// were read from the chain (see [`statements_select`]) holds them as a
/// table, which the writer no longer fills, and one last opened by another
/// build (or edited) may hold another view. Either is dropped, so that the
/// schema makes this build's view. Nothing is lost: each row was made from a
/// `statement` record still in the chain (or pruned with it); an edited
/// view is what `verify` reports until then, and the log says so here.
fn replace_stale_statements(conn: &Connection) -> rusqlite::Result<()> {
    match statements_object(conn)? {
        StatementsObject::Table => {
            conn.execute_batch("DROP TABLE statements")?;
            tracing::info!("the audit store's statements table is now a view over the chain's records");
        }
        StatementsObject::OtherView => {
            conn.execute_batch("DROP VIEW statements")?;
            tracing::warn!(
                "the audit store's statements view was not this build's (another Gatehouse's, or edited); made again"
            );
        }
        StatementsObject::Missing | StatementsObject::ThisBuilds => {}
    }
    Ok(())
}

/// What a store holds under the name `statements`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StatementsObject {
    Missing,
    /// This build's view ([`STATEMENTS_VIEW_SQL`]).
    ThisBuilds,
    /// Another view: another build's, or edited.
    OtherView,
    /// A table (an older Gatehouse's layout), or anything else of that name.
    Table,
}

pub(crate) fn statements_object(conn: &Connection) -> rusqlite::Result<StatementsObject> {
    use rusqlite::OptionalExtension as _;
    let have: Option<(String, Option<String>)> = conn
        .query_row("SELECT type, sql FROM sqlite_schema WHERE name = 'statements'", [], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    Ok(match have {
        None => StatementsObject::Missing,
        Some((kind, sql)) if kind == "view" && sql.as_deref() == Some(STATEMENTS_VIEW_SQL) => {
            StatementsObject::ThisBuilds
        }
        Some((kind, _)) if kind == "view" => StatementsObject::OtherView,
        Some(_) => StatementsObject::Table,
    })
}

/// Query-table columns added since a store was made (at the end, in the
/// order [`SCHEMA`] has them, so `verify`'s rebuilt tables compare).
fn add_columns(conn: &Connection) -> rusqlite::Result<()> {
    for (table, column) in [("sessions", "oidc_subject"), ("sessions", "oidc_email")] {
        if conn.prepare(&format!("SELECT {column} FROM {table} LIMIT 0")).is_err() {
            conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} TEXT"))?;
        }
    }
    Ok(())
}

/// A store written by an older Gatehouse (chain layout 1) is refused, not
/// rewritten: its chain is evidence as it is.
fn check_layout(conn: &Connection) -> Result<(), String> {
    let has =
        |table: &str, column: &str| -> bool { conn.prepare(&format!("SELECT {column} FROM {table} LIMIT 0")).is_ok() };
    if has("events", "seq") && !has("events", "content_hash") {
        return Err(format!(
            "this store uses chain layout 1; this Gatehouse writes layout {}. Move it aside (verify and export it with the Gatehouse that wrote it) and start a new one",
            chain::LAYOUT
        ));
    }
    Ok(())
}

/// Bytes of WAL after which the writer copies it into the database itself,
/// between two of its transactions (see [`rewind_wal`]); in pages of the
/// store's own size (8192 of 4 KiB, 2048 of 16 KiB).
const WAL_REWIND_BYTES: i64 = 32 << 20;
/// What a rewound WAL file keeps of its size (blocks the writer reuses).
/// Larger than [`WAL_REWIND_BYTES`] plus a transaction, so a rewound WAL is
/// never cut: once a store's pages became 16 KiB and the rewind point stayed
/// at 8192 pages (128 MiB), every rewind cut the WAL from 128 to 64 MiB (an
/// `ftruncate` of ≈ 5 ms) and the next 64 MiB went to new blocks again; the
/// writer spent 55–65 µs per new connection under `bench connect`, 47–55
/// with the rewind at 32 MiB.
const WAL_KEEP_BYTES: i64 = 64 << 20;

/// Makes the writer's connection rewind the WAL: after a commit that leaves
/// [`WAL_REWIND_BYTES`] or more in it, SQLite checkpoints (PASSIVE) in the
/// writer's own thread. Nothing else writes, so the checkpoint completes
/// and the next transaction starts the WAL again from its beginning,
/// overwriting blocks the file already has (kept up to [`WAL_KEEP_BYTES`]).
/// A WAL only ever appended to (until the checkpoint thread emptied it past
/// 1 GiB) put every frame (a page and a 24-byte header, never block-aligned)
/// into new file blocks, which the kernel zeroes first: 13% of the agent's
/// samples in a `perf` profile of a 20-s `bench pg` select-only run. In the
/// 10-s runs of `bench pg` the difference is within the noise (writer 10.2
/// against 10.4 µs per select-only statement, agent 258 against 267 µs per
/// TPC-B transaction); what is sure is that the WAL now stays near 32 MiB
/// instead of reaching 1 GiB between truncations.
fn rewind_wal(conn: &Connection) -> rusqlite::Result<()> {
    let page: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    conn.pragma_update(None, "wal_autocheckpoint", WAL_REWIND_BYTES / page.max(512))?;
    conn.pragma_update(None, "journal_size_limit", WAL_KEEP_BYTES)
}

/// Copies the WAL into the database every second from its own connection
/// (PASSIVE: it never blocks the writer), until `stop` is set; and every
/// [`WAL_WRITEBACK_EVERY`] starts writing the WAL's dirty pages out.
///
/// The writer rewinds the WAL itself ([`rewind_wal`]); a reader holding an
/// old snapshot (a long `gatehouse statements`) can keep it from doing so,
/// and a passive checkpoint from here never catches up with a writer that
/// commits every few milliseconds, so the WAL could grow. Past [`WAL_RESTART`]
/// the checkpoint is TRUNCATE instead: it holds the writer back while it
/// copies (nothing on the data path waits for the writer; the journal takes
/// the records meanwhile) and empties the WAL, which the writer then starts
/// again. Rarely, because it costs the writer: emptied past 256 MiB (every
/// few seconds under `bench pg`), the writer spent 188 µs per pgbench TPC-B
/// transaction against 141 µs with PASSIVE alone, in the same session
/// (likely its page cache, discarded when another connection resets the
/// WAL). Past 1 GiB it happens a quarter as often; the WAL stays bounded.
fn checkpointer(path: PathBuf, stop: std::sync::Arc<std::sync::atomic::AtomicBool>, truncate_past: u64) {
    let Ok(conn) = Connection::open(&path) else { return };
    let _ = conn.busy_timeout(Duration::from_millis(100));
    let wal = PathBuf::from(format!("{}-wal", path.display()));
    let per_checkpoint = (WAL_CHECKPOINT_EVERY.as_millis() / WAL_WRITEBACK_EVERY.as_millis()).max(1);
    let mut tick = 0u128;
    let mut written_back = None;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        std::thread::sleep(WAL_WRITEBACK_EVERY);
        // Only a WAL written to since (an idle agent opens nothing).
        let changed = std::fs::metadata(&wal).and_then(|m| m.modified()).ok();
        if changed.is_some() && changed != written_back {
            if let Ok(f) = std::fs::File::open(&wal) {
                let _ = crate::sys::start_writeback(&f);
            }
            written_back = changed;
        }
        tick += 1;
        if !tick.is_multiple_of(per_checkpoint) {
            continue;
        }
        let big = std::fs::metadata(&wal).is_ok_and(|m| m.len() > truncate_past);
        let mode = if big { "TRUNCATE" } else { "PASSIVE" };
        if let Err(e) = conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |_| Ok(())) {
            tracing::debug!(error = %e, "audit checkpoint skipped");
        }
    }
    let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
}

/// How often the checkpoint thread copies the WAL into the database.
const WAL_CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// How often the checkpoint thread starts writing the WAL's dirty pages to
/// the disk (`sync_file_range`, without waiting). A checkpoint syncs the WAL
/// before it copies it into the database, and the writer's own checkpoint
/// (after 32 MiB, see [`rewind_wal`]) did so with every frame written since
/// the last one still dirty: `fsync` took 14–18 ms, twice a second under
/// `bench connect`, and every session opening waited for it (the opening is
/// committed before the session goes on): connect p99 17–19 ms against
/// haproxy's 1.7–2.3 ms. Written out in the background, the WAL's `fsync`
/// finds at most 50 ms of frames: p99 4.4–5.7 ms in four runs alternating
/// with the build before (16–20 ms), connections per second the same within
/// the noise, this thread ≈ 5 µs per connection; select-only CPU per
/// statement and one client's latency unchanged (paired rounds).
const WAL_WRITEBACK_EVERY: Duration = Duration::from_millis(50);

/// The chain head: (seq, hash) of the last record, or the genesis.
fn head(conn: &Connection) -> rusqlite::Result<(u64, [u8; 32])> {
    let last: Option<(i64, Vec<u8>)> = conn
        .query_row("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1", [], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    if let Some((seq, hash)) = last {
        return Ok((u64::try_from(seq).unwrap_or(0), hash.try_into().unwrap_or(chain::GENESIS)));
    }
    // Everything pruned: the newest anchor is the head.
    let anchor: Option<(i64, Vec<u8>)> = conn
        .query_row("SELECT seq, hash FROM anchors ORDER BY seq DESC LIMIT 1", [], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    Ok(anchor
        .map_or((0, chain::GENESIS), |(s, h)| (u64::try_from(s).unwrap_or(0), h.try_into().unwrap_or(chain::GENESIS))))
}

/// Parks the writer until `done()` holds (checked after each wake-up) or
/// `deadline` passes; says whether `done()` held.
fn park_until(deadline: Instant, mut done: impl FnMut() -> bool) -> bool {
    loop {
        if done() {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        std::thread::park_timeout(deadline - now);
    }
}

struct Writer {
    conn: Connection,
    /// The queue's length, shared with the senders.
    queued: Arc<AtomicUsize>,
    /// The journal position committed so far (strict mode).
    ingested: Option<Arc<AtomicU64>>,
    path: PathBuf,
    key_path: PathBuf,
    head: (u64, [u8; 32]),
    key: ed25519_dalek::SigningKey,
    /// The current public key, as [`Audit::public_key_hex`] shows it.
    public: std::sync::Arc<Mutex<[u8; 32]>>,
    publisher: anchors::Publisher,
    checkpoint_every: Duration,
    retention: Option<Duration>,
    last_checkpoint: Instant,
    /// Records appended since the last checkpoint.
    dirty: bool,
    /// Once a write fails, the store stays failed: the chain's state on disk is uncertain.
    failed: Option<String>,
    fail_tx: Arc<watch::Sender<Option<String>>>,
    /// Held while the writer runs: no second writer on this store.
    _lock: nix::fcntl::Flock<std::fs::File>,
    wake: Arc<Wake>,
    /// When the open transaction began: batches are appended to it and
    /// committed together (see [`COMMIT_EVERY`]).
    open_since: Option<Instant>,
    /// The journal position the open transaction reaches.
    pending_jseq: u64,
    /// The journal's next segment, made here ahead of need (strict mode).
    spares: Option<Arc<journal::Spares>>,
}

impl Writer {
    fn run(&mut self, rx: &Receiver<Command>) {
        if let Err(e) = crate::sys::set_thread_nice(WRITER_NICE) {
            tracing::warn!(
                error = %e,
                nice = WRITER_NICE,
                "the audit writer cannot raise its priority (needs CAP_SYS_NICE): under CPU contention, \
                 new connections wait longer for their opening's commit"
            );
        }
        let _ = self.append_batch(vec![journal::Entry::now(Event::Agent { what: "start".into() })]);
        if let Some(s) = &self.spares {
            s.prepare();
        }
        let mut last_prune = Instant::now() - Duration::from_secs(3600);
        // When the last batch was appended (a commit may come later).
        let mut last_batch = Instant::now();
        // When the last commit someone waited for (a session's opening) ended.
        let mut last_waited: Option<Instant> = None;
        loop {
            // An open transaction is committed once no record came for
            // `COMMIT_IDLE`: a lone statement's records are in SQLite within
            // a few milliseconds, as before transactions spanned batches.
            let timeout = if self.open_since.is_some() { COMMIT_IDLE } else { self.checkpoint_every };
            let first = match rx.recv_timeout(timeout) {
                Ok(c) => c,
                Err(RecvTimeoutError::Timeout) if self.open_since.is_some() => {
                    let _ = self.commit();
                    continue;
                }
                Err(RecvTimeoutError::Timeout) => {
                    self.maybe_checkpoint(false);
                    if last_prune.elapsed() > Duration::from_secs(3600) {
                        self.prune();
                        last_prune = Instant::now();
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            // A sleeping writer is not woken by each send: sessions do not
            // pay a wake-up per record, and the transaction takes them all.
            // Unless someone waits for this very commit (a session's opening,
            // a flush): then it commits at once, with whatever else is queued.
            // A command sent while the writer sleeps wakes it early the same
            // way (see [`Wake`]).
            // A first record at an idle writer waits the window too (from its
            // arrival): a statement's end, which usually follows within it,
            // is then chained with it as one record (`fold`), and one commit
            // serves both. Under load the two deadlines are the same.
            let gather = last_batch.max(Instant::now()) + GROUP_COMMIT_WINDOW;
            let waited = first.waited() || park_until(gather, || self.wake.urgent.swap(false, Ordering::AcqRel));
            if waited && last_waited.is_some_and(|t| t.elapsed() < URGENT_STREAM) {
                // Sessions opening one after another: let a few more
                // openings join this commit (see `URGENT_GATHER`).
                park_until(Instant::now() + URGENT_GATHER, || {
                    self.wake.waiting.load(Ordering::Relaxed) >= URGENT_GATHER_MAX
                        || self.wake.ahead.load(Ordering::Acquire) == 0
                });
            }
            // Whatever raised the flag until now is in the queue, taken below;
            // a command raised after this keeps it up for the next batch.
            self.wake.waiting.store(0, Ordering::Relaxed);
            self.wake.urgent.store(false, Ordering::Release);
            let mut cmds = vec![first];
            while cmds.len() < GROUP_COMMIT_MAX {
                match rx.try_recv() {
                    Ok(c) => cmds.push(c),
                    Err(_) => break,
                }
            }
            self.queued.fetch_sub(cmds.len(), Ordering::Relaxed);
            crate::metrics::dequeued(cmds.len());
            let stop = cmds.iter().any(|c| matches!(c, Command::Stop));
            let mut events = Vec::with_capacity(cmds.len());
            let mut acks = Vec::new();
            for c in cmds {
                match c {
                    Command::Append(e, ack) => {
                        events.push(journal::Entry::now(e));
                        if let Some(a) = ack {
                            acks.push(a);
                        }
                    }
                    Command::Journaled(entries) => events.extend(entries),
                    Command::Flush(a) => acks.push(a),
                    // Operator commands run after the records queued before them.
                    Command::Redact { session, reason, by_uid, ack } => {
                        let r = self
                            .append_batch(std::mem::take(&mut events))
                            .and_then(|()| self.commit())
                            .and_then(|()| self.redact(&session, &reason, by_uid));
                        let _ = ack.send(r);
                    }
                    Command::RotateKey(ack) => {
                        let r = self
                            .append_batch(std::mem::take(&mut events))
                            .and_then(|()| self.commit())
                            .and_then(|()| self.rotate_key());
                        let _ = ack.send(r);
                    }
                    Command::Stop => {}
                }
            }
            let wrote = !events.is_empty();
            let mut result = if wrote { self.append_batch(events) } else { self.failed.clone().map_or(Ok(()), Err) };
            // Someone waits for this commit, or the transaction is old enough.
            if result.is_ok()
                && (waited || stop || !acks.is_empty() || self.open_since.is_some_and(|t| t.elapsed() >= COMMIT_EVERY))
            {
                result = self.commit();
            }
            last_batch = Instant::now();
            if waited {
                last_waited = Some(last_batch);
            }
            for a in acks {
                let _ = a.send(result.clone());
            }
            if let Some(s) = &self.spares {
                s.prepare();
            }
            // A batch that appended nothing (a flush) calls for no checkpoint
            // of its own: the idle timeout, or the next records, sign the head.
            if wrote && self.last_checkpoint.elapsed() >= self.checkpoint_every {
                self.maybe_checkpoint(false);
            }
            if stop {
                let _ = self.append_batch(vec![journal::Entry::now(Event::Agent { what: "stop".into() })]);
                self.maybe_checkpoint(true);
                break;
            }
        }
        // Every sender gone (or a stop): what is appended is committed.
        let _ = self.commit();
    }

    fn fail(&mut self, e: String) -> String {
        tracing::error!(db = %self.path.display(), error = %e, "audit store write failed: failing closed");
        self.failed = Some(e.clone());
        let _ = self.fail_tx.send(Some(e.clone()));
        e
    }

    /// Appends records to the open transaction (beginning one if none is):
    /// chain, events table, indexes. [`Self::commit`] makes them, and the
    /// journal position they reach, durable in SQLite.
    fn append_batch(&mut self, events: Vec<journal::Entry>) -> Result<(), String> {
        if let Some(f) = &self.failed {
            return Err(f.clone());
        }
        if events.is_empty() {
            return Ok(());
        }
        RAN_SINCE.with(|since| since.set(Some(Instant::now())));
        if self.open_since.is_none() {
            if let Err(e) = self.conn.prepare_cached("BEGIN").and_then(|mut b| b.execute([])) {
                return Err(self.fail(e.to_string()));
            }
            self.open_since = Some(Instant::now());
        }
        match write(&self.conn, self.head, &events) {
            Ok((new_head, written)) => {
                self.head = new_head;
                self.dirty = true;
                let jseq = events.iter().map(|e| e.jseq).max().unwrap_or(0);
                self.pending_jseq = self.pending_jseq.max(jseq);
                crate::metrics::appended(written, events.iter().filter_map(|e| e.kept.counted()));
                Ok(())
            }
            Err(e) => Err(self.fail(e.to_string())),
        }
    }

    /// Commits the open transaction, if any, with the journal position it
    /// reaches; the journal's segments up to there may then go. A failed
    /// commit fails the store (what it held is still in the journal).
    fn commit(&mut self) -> Result<(), String> {
        if let Some(f) = &self.failed {
            return Err(f.clone());
        }
        if self.open_since.is_none() {
            return Ok(());
        }
        let jseq = std::mem::take(&mut self.pending_jseq);
        offer_cpu();
        let started = Instant::now();
        let r = if jseq > 0 { journal::set_ingested(&self.conn, jseq) } else { Ok(()) }
            .and_then(|()| self.conn.prepare_cached("COMMIT").and_then(|mut c| c.execute([])))
            .map(drop);
        self.open_since = None;
        match r {
            Ok(()) => {
                crate::metrics::commit_took(started.elapsed());
                if jseq > 0
                    && let Some(i) = &self.ingested
                {
                    i.fetch_max(jseq, Ordering::AcqRel);
                }
                Ok(())
            }
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                Err(self.fail(e.to_string()))
            }
        }
    }

    /// Signs the chain head (at intervals when something was written, and at shutdown).
    fn maybe_checkpoint(&mut self, always: bool) {
        if self.failed.is_some() || (!self.dirty && !always) {
            return;
        }
        // The head signed is a committed one.
        if self.commit().is_err() {
            return;
        }
        let (seq, hash) = self.head;
        let time = now_us();
        let sig = chain::sign(&self.key, &chain::checkpoint_message(seq, &hash, time));
        let body = serde_json::json!({
            "head_seq": seq,
            "head_hash": hex(&hash),
            "time_us": time,
            "public_key": hex(&self.key.verifying_key().to_bytes()),
        });
        let r = write_raw(
            &mut self.conn,
            self.head,
            RecordKind::Checkpoint,
            None,
            body.to_string().into_bytes(),
            Some(sig.to_vec()),
        );
        match r {
            Ok(h) => {
                self.head = h;
                self.dirty = false;
                self.last_checkpoint = Instant::now();
                self.publisher.publish(&anchors::Anchor {
                    gatehouse_checkpoint: 1,
                    head_seq: seq,
                    head_hash: hex(&hash),
                    time_us: time,
                    public_key: hex(&self.key.verifying_key().to_bytes()),
                    signature: hex(&sig),
                });
            }
            Err(e) => {
                let _ = self.fail(e.to_string());
            }
        }
    }

    /// Removes a session's content (see [`admin::redact`]) and signs a checkpoint at once.
    fn redact(&mut self, session: &str, reason: &str, by_uid: u32) -> Result<Redaction, String> {
        if let Some(f) = &self.failed {
            return Err(f.clone());
        }
        let (head, red) = admin::redact(&mut self.conn, self.head, &self.key, session, reason, by_uid)?;
        self.head = head;
        self.dirty = true;
        tracing::warn!(session, records = red.count(), by_uid, reason, "audit content redacted");
        self.maybe_checkpoint(true);
        Ok(red)
    }

    /// Makes a new host key: written beside the old one first, the rotation
    /// (signed by the old key) committed, then the new key put in place and
    /// a checkpoint signed with it. An interruption leaves either the old key
    /// and no record, or a record and the new key finished at the next start.
    fn rotate_key(&mut self) -> Result<KeyRotation, String> {
        if let Some(f) = &self.failed {
            return Err(f.clone());
        }
        let new = keys::generate().map_err(|e| format!("making a key: {e}"))?;
        let pending = keys::pending_path(&self.key_path);
        keys::write_secret_key(&pending, &new)?;
        let (head, rot) = match admin::rotate(&mut self.conn, self.head, &self.key, &new) {
            Ok(x) => x,
            Err(e) => {
                let _ = std::fs::remove_file(&pending);
                return Err(e);
            }
        };
        self.head = head;
        std::fs::rename(&pending, &self.key_path)
            .map_err(|e| self.fail(format!("installing the new host key {}: {e}", self.key_path.display())))?;
        if let Ok(d) = std::fs::File::open(crate::secrets::dir_of(&self.key_path)) {
            let _ = d.sync_all();
        }
        keys::write_public(&keys::public_path(&self.key_path), &new.verifying_key())?;
        *self.public.lock().unwrap_or_else(PoisonError::into_inner) = new.verifying_key().to_bytes();
        self.key = new;
        self.dirty = true;
        tracing::warn!(old = %rot.old_public_key, new = %rot.new_public_key, "host key rotated; the old key signed the new one");
        self.maybe_checkpoint(true);
        Ok(rot)
    }

    /// Deletes records older than the retention period, leaving a signed
    /// anchor so the rest still verifies.
    fn prune(&mut self) {
        let Some(keep) = self.retention else { return };
        if self.commit().is_err() {
            return;
        }
        // A prune deletes a day's records at once: at the sessions' priority,
        // not the writer's (see `WRITER_NICE`).
        let _ = crate::sys::set_thread_nice(0);
        self.prune_expired(keep);
        let _ = crate::sys::set_thread_nice(WRITER_NICE);
    }

    fn prune_expired(&mut self, keep: Duration) {
        let cutoff = now_us() - i64::try_from(keep.as_micros()).unwrap_or(i64::MAX);
        let r: rusqlite::Result<()> = (|| {
            let last: Option<(i64, Vec<u8>)> = self
                .conn
                .query_row("SELECT seq, hash FROM events WHERE time_us < ?1 ORDER BY seq DESC LIMIT 1", [cutoff], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .optional()?;
            let Some((seq, hash)) = last else { return Ok(()) };
            let h: [u8; 32] = hash.clone().try_into().unwrap_or(chain::GENESIS);
            let time = now_us();
            let sig = chain::sign(&self.key, &chain::checkpoint_message(u64::try_from(seq).unwrap_or(0), &h, time));
            let tx = self.conn.transaction()?;
            tx.execute(
                "INSERT OR REPLACE INTO anchors (seq, hash, time_us, signature) VALUES (?1, ?2, ?3, ?4)",
                params![seq, hash, time, sig.to_vec()],
            )?;
            let sessions: Vec<String> = {
                let mut st =
                    tx.prepare("SELECT DISTINCT session FROM events WHERE seq <= ?1 AND session IS NOT NULL")?;
                st.query_map([seq], |r| r.get(0))?.collect::<Result<_, _>>()?
            };
            tx.execute("DELETE FROM events WHERE seq <= ?1", [seq])?;
            crate::trail::store::prune(&tx, seq)?;
            for s in sessions {
                let still: i64 = tx.query_row("SELECT count(*) FROM events WHERE session = ?1", [&s], |r| r.get(0))?;
                if still == 0 {
                    tx.execute("DELETE FROM sessions WHERE id = ?1", [&s])?;
                }
            }
            tx.commit()?;
            tracing::info!(through_seq = seq, "pruned audit records older than the retention period; anchor kept");
            Ok(())
        })();
        if let Err(e) = r {
            tracing::error!(error = %e, "pruning the audit store failed");
        }
    }
}

pub fn hex(b: &[u8]) -> String {
    use std::fmt::Write;
    b.iter().fold(String::with_capacity(b.len() * 2), |mut s, x| {
        let _ = write!(s, "{x:02x}");
        s
    })
}

fn write_raw(
    conn: &mut Connection,
    head: (u64, [u8; 32]),
    kind: impl AsRef<str>,
    session: Option<&str>,
    body: Vec<u8>,
    data: Option<Vec<u8>>,
) -> rusqlite::Result<(u64, [u8; 32])> {
    let tx = conn.transaction()?;
    let new = insert_event(&tx, head, now_us(), session, kind, &body, data.as_deref())?;
    tx.commit()?;
    Ok(new)
}

/// Chains one record. `kind` is the text the chain hashes and stores: a
/// [`RecordKind`] for a record made here, or a kind's text exactly as it
/// was read (a replayed journal may hold kinds this build does not know).
pub(crate) fn insert_event(
    tx: &Connection,
    head: (u64, [u8; 32]),
    time_us: i64,
    session: Option<&str>,
    kind: impl AsRef<str>,
    body: &[u8],
    data: Option<&[u8]>,
) -> rusqlite::Result<(u64, [u8; 32])> {
    let mut stmt = tx.prepare_cached(INSERT_EVENT)?;
    insert_event_with(&mut stmt, head, time_us, session, kind.as_ref(), body, data)
}

const INSERT_EVENT: &str = "INSERT INTO events (seq, time_us, session, kind, content_hash, body, data, prev_hash, hash)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)";

/// [`insert_event`] with the statement prepared by the caller (a batch prepares it once).
fn insert_event_with(
    stmt: &mut rusqlite::Statement<'_>,
    (seq, prev): (u64, [u8; 32]),
    time_us: i64,
    session: Option<&str>,
    kind: &str,
    body: &[u8],
    data: Option<&[u8]>,
) -> rusqlite::Result<(u64, [u8; 32])> {
    let seq = seq + 1;
    let content = chain::content_hash(body, data);
    let hash = chain::hash(&prev, seq, time_us, session, kind, &content);
    stmt.execute(params![
        i64::try_from(seq).unwrap_or(i64::MAX),
        time_us,
        session,
        kind,
        &content[..],
        body,
        data,
        &prev[..],
        &hash[..]
    ])?;
    Ok((seq, hash))
}

/// The writer offers its CPU (`sched_yield`) once it has run this long
/// since it last did or since its batch began, between records and before
/// its commit. On two
/// cores the writer's batch (one SQLite transaction, ≈ 200 µs every 2 ms
/// for one busy session) ran whole while the session's next step — the
/// agent's worker, PostgreSQL's backend, the client — waited on the same
/// CPU: the scheduler does not preempt a running thread for a waking one
/// before its slice is out (`perf sched timehist`: the writer was the task
/// running before most wake-ups delayed past 100 µs). Yielding lets them in
/// between records. One client's select-only p99 through Gatehouse went
/// from ≈ 500 to ≈ 330–410 µs (direct ≈ 170–300 in the same runs); the
/// yield is a no-op when nothing waits, and select-only throughput did not
/// drop (17,492 and 17,472 tps against 15,988 and 16,768 without). Every
/// record instead of every fourth measured the same. (`SCHED_IDLE` for the
/// writer, tried instead, made the tail worse: ≈ 530–580 µs.) For the
/// writer's priority see [`WRITER_NICE`].
///
/// Yielding every fourth record (as the writer did before) made it switch
/// out ≈ 4,100 times a second under `bench pg` select-only (8 clients,
/// ≈ 24,000 statements a second), each a switch out and back; after 40 µs
/// of running instead, ≈ 2,600. Paired with the build before (`bench pg
/// --select-only 6 --compare`), the writer's CPU per statement was
/// 0.86–1.00 of it (median 0.94) and throughput the same within the noise;
/// one client's added latency (`--latency-only`, two sets of three rounds
/// alternating) p50 20–24 against 20–25 µs, p99 63–101 against 52–92 µs.
const WRITER_YIELD_AFTER: Duration = Duration::from_micros(40);

/// Yields the writer's CPU once it has run [`WRITER_YIELD_AFTER`] since it
/// last did (or since its batch began: see [`Writer::append_batch`]).
fn offer_cpu() {
    let now = Instant::now();
    RAN_SINCE.with(|since| {
        if since.get().is_none_or(|t| now.saturating_duration_since(t) >= WRITER_YIELD_AFTER) {
            std::thread::yield_now();
            since.set(Some(Instant::now()));
        }
    });
}

thread_local! {
    /// When the writer last yielded or began a batch (see [`offer_cpu`]).
    static RAN_SINCE: std::cell::Cell<Option<Instant>> = const { std::cell::Cell::new(None) };
}

/// The writer thread's nice value: it runs ahead of the sessions (and of
/// every local user's processes) when it wakes. A session's opening waits
/// for the writer's commit (see [`Audit::open_session`]), so with two
/// CPU-bound processes of any local user running, the writer at the
/// sessions' priority waited ≈ 1.6 ms on average for a CPU at each wake-up
/// (`perf sched latency`) and new connections fell to 458–462 per second
/// (p50 ≈ 17 ms; haproxy 4,363–5,415, `bench connect`); at −10, 1,954–2,070
/// (p50 3.2–3.7 ms). Without that contention nothing measurable changed:
/// one client's added latency p50 21–25 against 20–27 µs and p99 52–89
/// against 56–86 µs (`bench pg --latency-only`, four sets of three rounds
/// alternating), select-only 23,363–24,816 against 22,700–26,133 tps, new
/// connections 4,038–4,651 against 4,148–4,606 per second. The writer's work
/// is what the sessions (at nice 0) send it, so a user cannot use it to
/// outrun others by more than the records of their own statements cost; a
/// retention prune, which deletes in bulk, runs at nice 0. Lowering a nice
/// value needs `CAP_SYS_NICE`; without it the writer runs at the sessions'
/// priority, said once in the log. (At +10 instead, tried for one client's
/// p99, new connections under the same contention fell 3×.)
pub(crate) const WRITER_NICE: i32 = -10;

/// Appends `entries` to the chain and the query tables inside the writer's
/// open transaction (see [`Writer::commit`]).
fn write(
    tx: &Connection,
    mut head: (u64, [u8; 32]),
    entries: &[journal::Entry],
) -> rusqlite::Result<((u64, [u8; 32]), usize)> {
    let mut insert = tx.prepare_cached(INSERT_EVENT)?;
    let partner = fold::pairs(entries);
    let mut written = 0usize;
    for (i, e) in entries.iter().enumerate() {
        offer_cpu();
        match partner.get(i).copied().unwrap_or(fold::ALONE) {
            fold::ALONE => {
                head = insert_event_with(
                    &mut insert,
                    head,
                    e.time_us,
                    e.session.as_deref(),
                    e.kind.as_str(),
                    e.body(),
                    e.data(),
                )?;
                written += 1;
            }
            // A statement whose end comes later in the batch: written with it.
            p if p > i => {}
            p => {
                let Some(start) = entries.get(p) else { continue };
                let (body, data) = (fold::body(start, e), fold::data(start, e));
                head = insert_event_with(
                    &mut insert,
                    head,
                    e.time_us,
                    e.session.as_deref(),
                    start.kind.as_str(),
                    &body,
                    data.as_deref(),
                )?;
                written += 1;
            }
        }
        if let journal::Kept::Event(ev) = &e.kept {
            index(tx, ev)?;
        }
    }
    Ok((head, written))
}

/// Maps keyed by what the agent itself made (see [`WordHasher`]).
type WordHash = std::hash::BuildHasherDefault<WordHasher>;

/// The writer's batch maps are keyed by the agent's own values (session ids
/// it made, sequence numbers it counts), which nobody can choose to
/// collide: a word-at-a-time multiply (FxHash's) instead of SipHash, which
/// took 1.4k of the writer's 54k instructions per statement.
#[derive(Default)]
struct WordHasher(u64);

impl std::hash::Hasher for WordHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for w in words.by_ref() {
            self.write_u64(u64::from_le_bytes(w.try_into().unwrap_or_default()));
        }
        let rest = words.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            if let Some(head) = w.get_mut(..rest.len()) {
                head.copy_from_slice(rest);
            }
            self.write_u64(u64::from_le_bytes(w));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

/// Keeps the query tables in step with the chain (same transaction).
pub(crate) fn index(tx: &Connection, e: &Event) -> rusqlite::Result<()> {
    let big = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    match e {
        Event::SessionOpen(o) => {
            tx.prepare_cached(
                "INSERT INTO sessions (id, started_us, uid, user, gid, pid, comm, cgroup_id, client,
                     backend, orig_dst, protocol, decision, rule, reason, oidc_subject, oidc_email)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
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
                o.decision.as_str(),
                o.rule,
                o.reason,
                o.oidc.as_ref().map(|i| i.subject.as_str()),
                o.oidc.as_ref().and_then(|i| i.verified_email()),
            ])?;
        }
        Event::SessionClose(c) => {
            tx.prepare_cached(
                "UPDATE sessions SET ended_us = ?2, bytes_up = ?3, bytes_down = ?4, end_reason = ?5 WHERE id = ?1",
            )?
            .execute(params![
                c.id.to_string(),
                c.ended_us,
                big(c.bytes_up),
                big(c.bytes_down),
                c.end_reason
            ])?;
        }
        Event::BackendLogin(l) => {
            tx.prepare_cached("UPDATE sessions SET backend_tls = ?2, backend_auth = ?3 WHERE id = ?1")?
                .execute(params![l.id.to_string(), l.tls_summary(), l.auth])?;
        }
        Event::Redaction(r) => {
            // The statements' records lost their content, and with it their
            // `statements` rows (read from the records).
            tx.prepare_cached("UPDATE sessions SET redacted = ?2 WHERE id = ?1")?
                .execute(params![r.session, r.reason])?;
            crate::trail::store::redact(tx, &r.session)?;
        }
        // Indexed right after its insert_event on the same transaction: its seq is the last rowid.
        Event::Trail(t, data) => {
            crate::trail::store::index(tx, tx.last_insert_rowid().unsigned_abs(), t, data)?;
        }
        // `statements` is read from these records themselves.
        Event::Statement(_)
        | Event::StatementEnd(_)
        | Event::Chunk { .. }
        | Event::Truncated { .. }
        | Event::Agent { .. }
        | Event::Approval(_)
        | Event::Http(..)
        | Event::WsFrame(..)
        | Event::TrailAlert(_)
        | Event::Ssh(..) => {}
    }
    Ok(())
}

impl Audit {
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The host's public key (hex), for verifying exports elsewhere.
    pub fn public_key_hex(&self) -> String {
        hex(&*self.public_key.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Removes the content of a session's records, leaving a signed
    /// redaction record (see `admin::redact`).
    pub async fn redact(&self, session: &str, reason: &str, by_uid: u32) -> Result<Redaction, AuditError> {
        let (ack, done) = oneshot::channel();
        self.send(Command::Redact { session: session.to_owned(), reason: reason.to_owned(), by_uid, ack })?;
        match done.await {
            Ok(r) => r.map_err(AuditError::Failed),
            Err(_) => Err(AuditError::WriterGone),
        }
    }

    /// Replaces the host key; the old key signs the new one in the chain.
    pub async fn rotate_key(&self) -> Result<KeyRotation, AuditError> {
        let (ack, done) = oneshot::channel();
        self.send(Command::RotateKey(ack))?;
        match done.await {
            Ok(r) => r.map_err(AuditError::Failed),
            Err(_) => Err(AuditError::WriterGone),
        }
    }

    /// Why the store failed, if it did (the agent then fails closed).
    pub fn failure(&self) -> Option<String> {
        self.failure.borrow().clone()
    }

    /// Notified when the store fails.
    pub fn failure_watch(&self) -> watch::Receiver<Option<String>> {
        self.failure.clone()
    }

    /// The store's key for hashed trail keys.
    pub fn trail_key(&self) -> crate::trail::HashKey {
        self.trail_key
    }

    /// Appends a record without waiting.
    pub fn record(&self, e: Event) -> Result<(), AuditError> {
        if let Some(f) = self.failure() {
            return Err(AuditError::Failed(f));
        }
        self.send(Command::Append(e, None))
    }

    /// Offers a record to the writer without waiting; a full queue hands it back.
    pub fn offer(&self, e: Event) -> Result<(), Offer> {
        if let Some(f) = self.failure() {
            return Err(Offer::Failed(AuditError::Failed(f)));
        }
        if self.queued.load(Ordering::Relaxed) >= self.depth {
            return Err(Offer::Full(e));
        }
        self.send(Command::Append(e, None)).map_err(Offer::Failed)
    }

    /// Records a batch of strict records (the statements a session is about
    /// to forward) and, in strict mode, returns once they are durable: in the
    /// journal with one write, and with `audit_fsync` after a shared
    /// `fdatasync`. While the writer's queue is three quarters full, it
    /// first waits for room: the data path goes no faster than the chain is
    /// written, and the records that follow a statement (its end, its
    /// bytes) keep room in the queue. Best-effort mode queues them, after
    /// the same wait: a writer starved of CPU by the traffic it records
    /// slows the sessions rather than losing their statements or ending them.
    pub async fn commit(&self, events: Vec<Event>) -> Result<(), AuditError> {
        while self.queued.load(Ordering::Relaxed) >= (self.depth / 4 * 3).max(1) {
            if let Some(f) = self.failure() {
                return Err(AuditError::Failed(f));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        self.commit_now(events).wait().await
    }

    /// Records a batch that must not be lost: in strict mode like
    /// [`Self::commit`] (durable in the journal when it returns), and a full
    /// queue is waited out instead of dropping the batch (the journal takes
    /// a batch whole or not at all, so a retry duplicates nothing). The
    /// trail's records go this way, so they are as durable as the statements
    /// whose rows they list. Best-effort mode queues them (a full queue drops
    /// them: the error says so).
    pub async fn commit_all(&self, events: Vec<Event>) -> Result<(), AuditError> {
        if events.is_empty() {
            return Ok(());
        }
        if self.mode == Mode::BestEffort {
            return self.commit_now(events).wait().await;
        }
        let mut events = events;
        loop {
            if let Some(f) = self.failure() {
                return Err(AuditError::Failed(f));
            }
            if self.queued.load(Ordering::Relaxed) < self.depth {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        loop {
            // Kept for a retry only when the queue filled meanwhile (rare: the wait above left room).
            let again = events.clone();
            match self.commit(events).await {
                Err(AuditError::QueueFull) => {
                    events = again;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                r => return r,
            }
        }
    }

    fn commit_now(&self, events: Vec<Event>) -> AckFuture {
        if events.is_empty() {
            return AckFuture::Ready(Ok(()));
        }
        let Some(journal) = &self.journal else {
            for e in events {
                if let Err(e) = self.record(e) {
                    return AckFuture::Ready(Err(e));
                }
            }
            return AckFuture::Ready(Ok(()));
        };
        if let Some(f) = self.failure() {
            return AckFuture::Ready(Err(AuditError::Failed(f)));
        }
        match journal.append(events, self.depth) {
            Ok(jseq) => AckFuture::Journal(journal.clone(), jseq),
            Err(journal::AppendError::QueueFull) => AckFuture::Ready(Err(AuditError::QueueFull)),
            Err(journal::AppendError::Failed(why)) => {
                tracing::error!(error = %why, "audit journal write failed: failing closed");
                self.fail_tx.send_if_modified(|f| {
                    if f.is_none() {
                        *f = Some(why.clone());
                        true
                    } else {
                        false
                    }
                });
                AckFuture::Ready(Err(AuditError::Failed(why)))
            }
        }
    }

    /// Appends a record and, in strict mode, waits until it is committed.
    /// In best-effort mode it returns at once (failures are logged by the writer).
    pub fn record_strict(&self, e: Event) -> AckFuture {
        if self.mode == Mode::BestEffort {
            return AckFuture::Ready(self.record(e));
        }
        if let Some(f) = self.failure() {
            return AckFuture::Ready(Err(AuditError::Failed(f)));
        }
        let (ack, done) = oneshot::channel();
        match self.send(Command::Append(e, Some(ack))) {
            Ok(()) => AckFuture::Waiting(done),
            Err(e) => AckFuture::Ready(Err(e)),
        }
    }

    /// Says that a session was accepted and its opening will follow (see
    /// [`OpeningAhead`]).
    pub fn opening_ahead(&self) -> OpeningAhead {
        self.wake.ahead.fetch_add(1, Ordering::AcqRel);
        OpeningAhead(self.wake.clone())
    }

    /// Records a session's opening and waits until it is committed (in
    /// best-effort mode, until it is queued). Not acknowledged from the
    /// journal: a copy of the store's SQLite files alone (the disk-full
    /// test's) must hold every session that went through.
    pub async fn open_session(&self, rec: SessionOpen) -> Result<(), AuditError> {
        self.record_strict(Event::SessionOpen(Box::new(rec))).wait().await
    }

    /// Records a session's end (not awaited: nothing waits on it). In
    /// strict mode it goes through the journal like the session's opening,
    /// so a reader of the store that waits for the journal to be ingested
    /// (see [`journal::settle`]) finds the session closed once its client
    /// has seen the end.
    pub fn close_session(&self, rec: SessionClose) -> Result<(), AuditError> {
        match self.commit_now(vec![Event::SessionClose(Box::new(rec))]) {
            AckFuture::Ready(r) => r,
            AckFuture::Waiting(_) | AckFuture::Journal(..) => Ok(()),
        }
    }

    /// Records how a statement ended (not awaited).
    pub fn statement_end(&self, e: StatementEnd) -> Result<(), AuditError> {
        self.record(Event::StatementEnd(Box::new(e)))
    }

    /// Waits until everything queued so far is committed.
    pub async fn flush(&self) -> Result<(), AuditError> {
        let (ack, done) = oneshot::channel();
        self.send(Command::Flush(ack))?;
        match done.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(AuditError::Failed(e)),
            Err(_) => Err(AuditError::WriterGone),
        }
    }

    fn send(&self, c: Command) -> Result<(), AuditError> {
        if self.queued.load(Ordering::Relaxed) >= self.depth {
            return Err(AuditError::QueueFull);
        }
        self.queued.fetch_add(1, Ordering::Relaxed);
        crate::metrics::queued();
        let waited = c.waited();
        self.tx.send(c).map_err(|_| AuditError::WriterGone)?;
        if waited {
            self.wake.raise();
        }
        Ok(())
    }
}

/// Why [`Audit::offer`] did not take a record.
#[derive(Debug)]
pub enum Offer {
    /// The queue is full: here is the record back.
    Full(Event),
    Failed(AuditError),
}

/// A pending acknowledgement of a strict record.
#[derive(Debug)]
pub enum AckFuture {
    Ready(Result<(), AuditError>),
    Waiting(oneshot::Receiver<Result<(), String>>),
    /// In the journal; durable once synced (with `audit_fsync`).
    Journal(Arc<journal::Journal>, u64),
}

impl AckFuture {
    pub async fn wait(self) -> Result<(), AuditError> {
        match self {
            Self::Ready(r) => r,
            Self::Waiting(rx) => match rx.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(AuditError::Failed(e)),
                Err(_) => Err(AuditError::WriterGone),
            },
            Self::Journal(j, jseq) => j.sync(jseq).await.map_err(AuditError::Failed),
        }
    }
}

#[cfg(test)]
mod tests;
