//! Reading the audit store back, for `gatehouse sessions`.

use std::path::Path;

use rusqlite::{Connection, OpenFlags, OptionalExtension as _};
use serde::Serialize;

use super::AuditError;

/// One row of the sessions table.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct SessionRow {
    pub id: String,
    pub started_us: i64,
    pub ended_us: Option<i64>,
    pub uid: Option<u32>,
    pub user: Option<String>,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub client: String,
    pub backend: Option<String>,
    pub orig_dst: Option<String>,
    pub decision: String,
    pub rule: Option<String>,
    pub reason: String,
    pub bytes_up: i64,
    pub bytes_down: i64,
    pub end_reason: Option<String>,
    /// How the backend was reached: `verified TLSv1.3 …`, `unverified …` or `off`.
    #[serde(default)]
    pub backend_tls: Option<String>,
    /// How Gatehouse authenticated to it (`SCRAM-SHA-256-PLUS`, …).
    #[serde(default)]
    pub backend_auth: Option<String>,
    /// Why the session's content was removed, if it was (`gatehouse redact`).
    #[serde(default)]
    pub redacted: Option<String>,
    /// The subject of the identity `gatehouse login` bound to the uid.
    #[serde(default)]
    pub oidc_subject: Option<String>,
    /// Its e-mail address, when the IdP verified it.
    #[serde(default)]
    pub oidc_email: Option<String>,
}

/// Filters for listing sessions.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct SessionFilter {
    /// A Unix user name, or the subject or (verified) e-mail of a login.
    pub user: Option<String>,
    pub uid: Option<u32>,
    pub backend: Option<String>,
    pub decision: Option<String>,
    /// Sessions that started at or after this time (µs since the epoch).
    pub since_us: Option<i64>,
    /// Sessions that started before this time.
    pub until_us: Option<i64>,
    /// Sessions with a statement whose text contains this (case-insensitive).
    pub text: Option<String>,
    pub limit: Option<u32>,
}

/// Opens the store read-only (first appending what the journal of a
/// crashed agent holds, when no agent holds the store; when one does,
/// waiting for it to ingest what its journal acknowledged).
pub fn open_read_only(path: &Path) -> Result<Connection, AuditError> {
    super::journal::recover(path).map_err(AuditError::Failed)?;
    super::journal::settle(path);
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .map_err(|source| AuditError::Sql { path: path.to_owned(), source })?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(|source| AuditError::Sql { path: path.to_owned(), source })?;
    Ok(conn)
}

/// A `LIKE` pattern that every statement body whose text holds `text`
/// matches, or `None` when there is none this simple (for
/// [`super::WITH_STATEMENTS_BODY_LIKE`]: reading every statement's body as
/// JSON is most of the work of `sessions --text`; on a million statements
/// 0.2 s with it instead of 0.6 s). A body is JSON as
/// serde_json writes it, which escapes only `"`, `\` and control characters
/// (below U+0020) and leaves every other character as it is: a text without
/// those appears in the body byte for byte wherever it appears in the
/// statement. `LIKE` folds ASCII letters only, as `lower` does; `%`, `_` and
/// the escape character `!` in the text are escaped.
/// A text past SQLite's bound on a `LIKE` pattern (50,000 bytes) is left to
/// the JSON alone.
fn raw_like(text: &str) -> Option<String> {
    if text.len() > 20_000 || text.chars().any(|c| c == '"' || c == '\\' || c < ' ') {
        return None;
    }
    let mut p = String::with_capacity(text.len() + 2);
    p.push('%');
    for c in text.chars() {
        if matches!(c, '!' | '%' | '_') {
            p.push('!');
        }
        p.push(c);
    }
    p.push('%');
    Some(p)
}

/// Lists sessions, newest last.
pub fn sessions(path: &Path, f: &SessionFilter) -> Result<Vec<SessionRow>, AuditError> {
    let conn = open_read_only(path)?;
    let sql_err = |source| AuditError::Sql { path: path.to_owned(), source };
    let mut stmt = conn
        .prepare(&format!(
            "{}SELECT id, started_us, ended_us, uid, user, pid, comm, client, backend, orig_dst,
                    decision, rule, reason, bytes_up, bytes_down, end_reason, backend_tls, backend_auth, redacted,
                    oidc_subject, oidc_email
             FROM sessions
             WHERE (?1 IS NULL OR user = ?1 OR oidc_subject = ?1 OR oidc_email = ?1) AND (?2 IS NULL OR uid = ?2)
               AND (?3 IS NULL OR backend = ?3) AND (?4 IS NULL OR decision = ?4)
               AND (?6 IS NULL OR started_us >= ?6) AND (?7 IS NULL OR started_us < ?7)
               AND (?8 IS NULL OR id IN (SELECT session_id FROM statements WHERE instr(lower(text), lower(?8)) > 0))
             ORDER BY started_us DESC, id DESC LIMIT ?5",
            super::WITH_STATEMENTS_BODY_LIKE
        ))
        .map_err(sql_err)?;
    let limit = f.limit.map_or(-1, i64::from);
    let raw = f.text.as_deref().and_then(raw_like);
    let rows = stmt
        .query_map(
            rusqlite::params![f.user, f.uid, f.backend, f.decision, limit, f.since_us, f.until_us, f.text, raw],
            |r| {
                Ok(SessionRow {
                    id: r.get(0)?,
                    started_us: r.get(1)?,
                    ended_us: r.get(2)?,
                    uid: r.get(3)?,
                    user: r.get(4)?,
                    pid: r.get(5)?,
                    comm: r.get(6)?,
                    client: r.get(7)?,
                    backend: r.get(8)?,
                    orig_dst: r.get(9)?,
                    decision: r.get(10)?,
                    rule: r.get(11)?,
                    reason: r.get(12)?,
                    bytes_up: r.get(13)?,
                    bytes_down: r.get(14)?,
                    end_reason: r.get(15)?,
                    backend_tls: r.get(16)?,
                    backend_auth: r.get(17)?,
                    redacted: r.get(18)?,
                    oidc_subject: r.get(19)?,
                    oidc_email: r.get(20)?,
                })
            },
        )
        .map_err(sql_err)?;
    let mut out: Vec<SessionRow> = rows.collect::<Result<_, _>>().map_err(sql_err)?;
    out.reverse();
    Ok(out)
}

/// One recorded statement.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct StatementRow {
    pub session_id: String,
    pub seq: i64,
    pub started_us: i64,
    pub text: String,
    pub kinds: String,
    pub tables: String,
    pub decision: String,
    pub rule: Option<String>,
    pub reason: Option<String>,
    pub rows: Option<i64>,
    pub duration_us: Option<i64>,
    pub error: Option<String>,
    pub masked: Option<String>,
    /// Secrets removed from `text` before it was recorded.
    #[serde(default)]
    pub redacted: i64,
    /// The login (OIDC subject) of the session the statement ran in.
    #[serde(default)]
    pub oidc_subject: Option<String>,
}

/// Lists statements, of one session or all, oldest first (the newest `limit`).
pub fn statements(path: &Path, session: Option<&str>, limit: u32) -> Result<Vec<StatementRow>, AuditError> {
    statements_of(path, session, None, limit)
}

/// Like [`statements`], restricted to sessions of `owner` when given.
pub fn statements_of(
    path: &Path,
    session: Option<&str>,
    owner: Option<u32>,
    limit: u32,
) -> Result<Vec<StatementRow>, AuditError> {
    let conn = open_read_only(path)?;
    let sql_err = |source| AuditError::Sql { path: path.to_owned(), source };
    // A session is named as `sessions` shows it: its id or a unique prefix.
    let session = session
        .map(|s| super::replay::resolve_session(&conn, s, owner).map_err(|e| AuditError::Failed(e.to_string())))
        .transpose()?;
    let mut out = match &session {
        // One session's: through the session index.
        Some(s) => listing(&conn, Some(s), owner, limit, (i64::MIN, i64::MAX)).map_err(sql_err)?,
        None => newest(&conn, owner, limit).map_err(sql_err)?,
    };
    out.reverse();
    Ok(out)
}

/// How far a record's time may be before an earlier record's (sessions
/// append to the journal concurrently, each timing its record before it
/// takes the journal's lock) for [`newest`] still to stop in time.
const RECORD_TIME_SLACK_US: i64 = 1_000_000;

/// The newest `limit` statements, requests and SSH operations of every
/// session (newest first), read from the newest records back, a window of
/// records at a time, until no earlier record can hold a newer one: a row
/// started no later than its record was written (a statement's record is
/// written when it starts, or with its end; an exchange's when it ends), and
/// records were written in order, so once `limit` rows started after the
/// time of the last record before the window (and [`RECORD_TIME_SLACK_US`]),
/// the records before it hold nothing newer. Reading every record of a
/// large store instead took ≈ 2 s per million statements.
fn newest(conn: &Connection, owner: Option<u32>, limit: u32) -> rusqlite::Result<Vec<StatementRow>> {
    let want = usize::try_from(limit).unwrap_or(usize::MAX);
    let span: (Option<i64>, Option<i64>) =
        conn.query_row("SELECT min(seq), max(seq) FROM events", [], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let (Some(first), Some(mut hi), true) = (span.0, span.1, want > 0) else { return Ok(Vec::new()) };
    let mut width = 4096i64;
    let mut best: Vec<StatementRow> = Vec::new();
    let newest_first = |a: &StatementRow, b: &StatementRow| (b.started_us, b.seq).cmp(&(a.started_us, a.seq));
    loop {
        let lo = hi.saturating_sub(width - 1).max(first);
        best.extend(listing(conn, None, owner, limit, (lo, hi))?);
        best.sort_by(newest_first);
        best.truncate(want);
        if lo <= first {
            break;
        }
        let before: Option<i64> = conn
            .query_row("SELECT time_us FROM events WHERE seq < ?1 ORDER BY seq DESC LIMIT 1", [lo], |r| r.get(0))
            .optional()?;
        let Some(before) = before else { break };
        if best.len() >= want && best.last().is_some_and(|r| r.started_us > before.saturating_add(RECORD_TIME_SLACK_US))
        {
            break;
        }
        hi = lo - 1;
        width = width.saturating_mul(2);
    }
    Ok(best)
}

/// Statements, HTTP requests and SSH operations of the records `window`
/// (seqs, inclusive), of `session` or every session, newest first (at most `limit`).
pub(super) fn listing(
    conn: &Connection,
    session: Option<&str>,
    owner: Option<u32>,
    limit: u32,
    window: (i64, i64),
) -> rusqlite::Result<Vec<StatementRow>> {
    // `x IS NULL OR session = x` would read every record of the store, of every session.
    let (of_session, of_session_events) = match session {
        Some(_) => ("session_id = ?1", "session = ?1"),
        None => ("?1 IS NULL", "?1 IS NULL"),
    };
    let mut stmt = conn.prepare_cached(&format!(
            "{}SELECT session_id, seq, started_us, text, kinds, tables, decision, rule, reason, rows, duration_us, error, masked, redacted,
                    (SELECT oidc_subject FROM sessions WHERE sessions.id = statements.session_id)
             FROM statements WHERE {of_session} AND record BETWEEN ?6 AND ?7
               AND (?3 IS NULL OR session_id IN (SELECT id FROM sessions WHERE uid = ?3))
             UNION ALL
             -- HTTP exchanges are requests, shown beside statements: \"GET /path\", kind http.
             SELECT session, coalesce(CAST(j ->> '$.seq' AS INTEGER), 0), coalesce(CAST(j ->> '$.started_us' AS INTEGER), 0),
                    coalesce((j ->> '$.method') || ' ' || (j ->> '$.target'), ''),
                    'http', coalesce(CAST(j ->> '$.host' AS TEXT), ''), coalesce(CAST(j ->> '$.decision' AS TEXT), ''),
                    CAST(j ->> '$.rule' AS TEXT), CAST(j ->> '$.reason' AS TEXT),
                    NULL, CAST(j ->> '$.duration_us' AS INTEGER),
                    CAST(coalesce(j ->> '$.error', CASE WHEN (j ->> '$.status') >= 400 THEN 'HTTP ' || (j ->> '$.status') END) AS TEXT),
                    j -> '$.masked', 0,
                    (SELECT oidc_subject FROM sessions WHERE sessions.id = h.session)
             FROM (SELECT session, CAST(body AS TEXT) AS j FROM events
                   WHERE kind = ?4 AND session IS NOT NULL AND json_valid(CAST(body AS TEXT)) AND {of_session_events} AND seq BETWEEN ?6 AND ?7
                     AND (?3 IS NULL OR session IN (SELECT id FROM sessions WHERE uid = ?3))) AS h
             UNION ALL
             -- SSH channel requests (\"exec uptime\", kind ssh) and sftp operations
             -- (\"close /srv/a.bin: read 0, wrote 1048576 bytes, mode 640\", kind sftp).
             SELECT session, seq, time_us,
                    coalesce(CASE j ->> '$.event'
                      WHEN 'sftp' THEN (j ->> '$.op') || ' ' || (j ->> '$.path')
                           || coalesce(' -> ' || (j ->> '$.target'), '')
                           || coalesce(': read ' || (j ->> '$.read_bytes') || ', wrote ' || (j ->> '$.written_bytes') || ' bytes', '')
                           || coalesce(', mode ' || printf('%o', j ->> '$.mode'), '')
                      ELSE (j ->> '$.request') || coalesce(' ' || (j ->> '$.detail'), '') END, ''),
                    CASE j ->> '$.event' WHEN 'sftp' THEN 'sftp' ELSE 'ssh' END, '',
                    coalesce(CAST(j ->> '$.decision' AS TEXT), ''), CAST(j ->> '$.rule' AS TEXT),
                    CAST(j ->> '$.reason' AS TEXT), NULL, NULL, NULL, NULL, 0,
                    (SELECT oidc_subject FROM sessions WHERE sessions.id = x.session)
             FROM (SELECT session, seq, time_us, CAST(body AS TEXT) AS j FROM events
                   WHERE kind = ?5 AND session IS NOT NULL AND json_valid(CAST(body AS TEXT)) AND {of_session_events} AND seq BETWEEN ?6 AND ?7
                     AND (?3 IS NULL OR session IN (SELECT id FROM sessions WHERE uid = ?3))) AS x
             WHERE j ->> '$.event' IN ('request', 'sftp')
             ORDER BY 3 DESC, 2 DESC LIMIT ?2",
        super::WITH_STATEMENTS
    ))?;
    let rows = stmt.query_map(
        rusqlite::params![
            session,
            i64::from(limit),
            owner,
            super::RecordKind::Http,
            super::RecordKind::Ssh,
            window.0,
            window.1
        ],
        |r| {
            Ok(StatementRow {
                session_id: r.get(0)?,
                seq: r.get(1)?,
                started_us: r.get(2)?,
                text: r.get(3)?,
                kinds: r.get(4)?,
                tables: r.get(5)?,
                decision: r.get(6)?,
                rule: r.get(7)?,
                reason: r.get(8)?,
                rows: r.get(9)?,
                duration_us: r.get(10)?,
                error: r.get(11)?,
                masked: r.get(12)?,
                redacted: r.get(13)?,
                oidc_subject: r.get(14)?,
            })
        },
    )?;
    rows.collect()
}

/// The owner (uid) of a session, if it exists.
pub fn session_owner(path: &Path, session: &str) -> Result<Option<Option<u32>>, AuditError> {
    let conn = open_read_only(path)?;
    conn.query_row("SELECT uid FROM sessions WHERE id = ?1", [session], |r| r.get::<_, Option<u32>>(0))
        .optional()
        .map_err(|source| AuditError::Sql { path: path.to_owned(), source })
}

/// Every recorded request that waits for a human, in its latest recorded
/// state (from the `approval` records), for a restarted agent to carry on
/// grants and numbering. Records whose content was redacted are skipped.
pub fn approval_requests(path: &Path) -> Result<Vec<crate::approval::Request>, AuditError> {
    let conn = open_read_only(path)?;
    let err = |source| AuditError::Sql { path: path.to_owned(), source };
    let mut st = conn.prepare("SELECT body FROM events WHERE kind = ?1 ORDER BY seq").map_err(err)?;
    let rows = st.query_map([super::RecordKind::Approval], |r| r.get::<_, Option<Vec<u8>>>(0)).map_err(err)?;
    let mut latest: std::collections::BTreeMap<u64, crate::approval::Request> = std::collections::BTreeMap::new();
    for body in rows {
        let Some(body) = body.map_err(err)? else { continue };
        #[derive(serde::Deserialize)]
        struct Step {
            request: crate::approval::Request,
        }
        if let Ok(step) = serde_json::from_slice::<Step>(&body) {
            latest.insert(step.request.id, step.request);
        }
    }
    Ok(latest.into_values().collect())
}
