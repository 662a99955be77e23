//! The trail's query tables in the audit store, and the questions asked of
//! them.
//!
//! `trail` has one row per trail record (its event `seq`, session,
//! statement, table, counts); `trail_buckets` maps (table, bucket) to the
//! records whose key set touches the bucket: integer keys by `key >> 16`
//! (65,536 keys per bucket), hashed keys by their top 12 bits. `who-saw`
//! reads the records of one bucket and tests membership in each record's
//! key set (the chained record's data); `access-report` unions the sets per
//! user. Both tables are rebuilt from the chain and compared by `verify`, and
//! pruned with the records.

use std::collections::BTreeMap;
use std::path::Path;

use rusqlite::{Connection, OptionalExtension, Transaction, params};
use serde::{Deserialize, Serialize};

use super::TrailRecord;
use super::keys::{HashKey, KeySet, hash_bucket, int_bucket, parse_query_key};
use crate::audit::AuditError;

/// The store's hashing key for trail keys: made once, kept in `meta`.
pub fn hash_key(conn: &Connection) -> rusqlite::Result<HashKey> {
    let have: Option<String> =
        conn.query_row("SELECT value FROM meta WHERE key = 'trail_hash_key'", [], |r| r.get(0)).optional()?;
    if let Some(k) = have.as_deref().and_then(parse_hex32) {
        return Ok(HashKey(k));
    }
    let mut k = [0u8; 32];
    k[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    k[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('trail_hash_key', ?1)", [crate::audit::hex(&k)])?;
    Ok(HashKey(k))
}

fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if s.len() != 64 {
        return None;
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Indexes a trail record committed as event `seq`.
pub fn index(tx: &Connection, seq: u64, rec: &TrailRecord, data: &[u8]) -> rusqlite::Result<()> {
    let seq = i64::try_from(seq).unwrap_or(i64::MAX);
    let big = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    tx.prepare_cached(
        "INSERT OR REPLACE INTO trail (seq, session_id, stmt, time_us, tbl, key_column, rows, keys, hashed, masked, keyless)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )?
    .execute(params![
        seq,
        rec.session.to_string(),
        big(rec.statement),
        rec.time_us,
        rec.table,
        rec.key,
        big(rec.rows),
        big(rec.keys),
        rec.hashed,
        rec.masked || rec.key_masked,
        rec.keyless,
    ])?;
    if rec.key.is_some() {
        // An undecodable set indexes nothing; `verify` reports the record through the chain.
        let set = KeySet::decode(data).unwrap_or_default();
        let mut st = tx.prepare_cached("INSERT OR IGNORE INTO trail_buckets (tbl, bucket, seq) VALUES (?1, ?2, ?3)")?;
        for b in set.buckets() {
            st.execute(params![rec.table, b, seq])?;
        }
    }
    Ok(())
}

/// Drops the index rows of records at or below `seq` (pruning).
pub fn prune(tx: &Transaction<'_>, seq: i64) -> rusqlite::Result<()> {
    tx.execute("DELETE FROM trail_buckets WHERE seq <= ?1", [seq])?;
    tx.execute("DELETE FROM trail WHERE seq <= ?1", [seq])?;
    Ok(())
}

/// Drops a session's index rows (its records' content was redacted).
pub fn redact(tx: &Connection, session: &str) -> rusqlite::Result<()> {
    tx.execute("DELETE FROM trail_buckets WHERE seq IN (SELECT seq FROM trail WHERE session_id = ?1)", [session])?;
    tx.execute("DELETE FROM trail WHERE session_id = ?1", [session])?;
    Ok(())
}

/// One statement that returned the row asked about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SawRow {
    pub time_us: i64,
    pub session: String,
    pub statement: u64,
    pub table: String,
    pub user: Option<String>,
    pub uid: Option<u32>,
    pub oidc_subject: Option<String>,
    pub oidc_email: Option<String>,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub backend: Option<String>,
    pub text: Option<String>,
    /// The result had masked columns (`key_masked`: the key itself).
    pub masked: bool,
}

/// The answer to `who-saw`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WhoSaw {
    pub rows: Vec<SawRow>,
    /// Keyless reads of the table in the period: they may have returned the row.
    pub keyless_reads: u64,
    /// Records read to answer (for `bench trail`).
    pub candidates: u64,
}

/// The tables a `--table` names: `schema.name` exactly, or `name` in any schema.
fn tables(conn: &Connection, table: &str) -> rusqlite::Result<Vec<String>> {
    if table.contains('.') {
        return Ok(vec![table.to_owned()]);
    }
    let mut st = conn.prepare_cached("SELECT DISTINCT tbl FROM trail")?;
    let all: Vec<String> = st.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
    Ok(all.into_iter().filter(|t| t.rsplit_once('.').is_some_and(|(_, n)| n == table)).collect())
}

fn sql(path: &Path) -> impl Fn(rusqlite::Error) -> AuditError + '_ {
    move |source| AuditError::Sql { path: path.to_owned(), source }
}

/// The keyed reads of `table` recorded since `since_us`, newest first:
/// (reader as the alert windows name them, time, key set). Stops once
/// `max_keys` keys were handed out (the newest reads are the ones kept);
/// returns whether it stopped there.
pub fn recent_reads(
    conn: &Connection,
    table: &str,
    since_us: i64,
    max_keys: u64,
    mut f: impl FnMut(String, i64, KeySet),
) -> rusqlite::Result<bool> {
    let mut st = conn.prepare(
        "SELECT t.time_us, COALESCE(s.user, '#' || s.uid), e.data
         FROM trail t JOIN events e ON e.seq = t.seq LEFT JOIN sessions s ON s.id = t.session_id
         WHERE t.tbl = ?1 AND t.time_us >= ?2 AND t.key_column IS NOT NULL AND t.keys > 0
         ORDER BY t.time_us DESC",
    )?;
    let mut rows = st.query(params![table, since_us])?;
    let mut handed = 0u64;
    while let Some(r) = rows.next()? {
        if handed >= max_keys {
            return Ok(true);
        }
        let (time_us, user, data): (i64, Option<String>, Option<Vec<u8>>) = (r.get(0)?, r.get(1)?, r.get(2)?);
        // A record without its session's row (pruned apart) or its data (redacted) counts for nobody.
        let (Some(user), Some(data)) = (user, data) else { continue };
        let Ok(set) = KeySet::decode(&data) else { continue };
        handed += set.len();
        f(user, time_us, set);
    }
    Ok(false)
}

/// Every statement since `since_us` that returned the row of `table` whose key is `key`.
pub fn who_saw(path: &Path, table: &str, key: &str, since_us: Option<i64>) -> Result<WhoSaw, AuditError> {
    let conn = crate::audit::query::open_read_only(path)?;
    who_saw_in(&conn, table, key, since_us).map_err(sql(path))
}

pub fn who_saw_in(conn: &Connection, table: &str, key: &str, since_us: Option<i64>) -> rusqlite::Result<WhoSaw> {
    let hk = hash_key_read(conn)?;
    let int = parse_query_key(key);
    let hashed = hk.map(|k| k.hash(key.as_bytes()));
    let mut buckets = Vec::new();
    if let Some(v) = int {
        buckets.push(int_bucket(v));
    }
    if let Some(h) = hashed {
        buckets.push(hash_bucket(h));
    }
    let since = since_us.unwrap_or(i64::MIN);
    let mut out = WhoSaw::default();
    let mut data_st = conn.prepare_cached("SELECT data FROM events WHERE seq = ?1")?;
    let mut cand = conn.prepare_cached(
        "SELECT t.seq, t.time_us, t.session_id, t.stmt, t.masked, s.user, s.uid, s.oidc_subject, s.oidc_email,
                s.pid, s.comm, s.backend
         FROM trail_buckets b JOIN trail t ON t.seq = b.seq
         LEFT JOIN sessions s ON s.id = t.session_id
         WHERE b.tbl = ?1 AND b.bucket = ?2 AND t.time_us >= ?3 ORDER BY t.seq",
    )?;
    // The statement's text, from its own record: the session's `statement`
    // record of that number, which the chain holds before the trail record
    // (a statement is recorded before it is forwarded, what it returned
    // after), usually a few records back — found going back through the
    // session's records from the trail record, not by reading every
    // statement of the session.
    let mut text_st = conn.prepare_cached(
        "SELECT CAST(CAST(body AS TEXT) ->> '$.text' AS TEXT) FROM events
         WHERE session = ?1 AND seq < ?2 AND kind = 'statement' AND json_valid(CAST(body AS TEXT))
           AND (CAST(body AS TEXT) ->> '$.seq') = ?3
         ORDER BY seq DESC LIMIT 1",
    )?;
    for tbl in tables(conn, table)? {
        for b in &buckets {
            let mut rows = cand.query(params![tbl, b, since])?;
            while let Some(r) = rows.next()? {
                out.candidates += 1;
                let seq: i64 = r.get(0)?;
                let data: Option<Vec<u8>> = data_st.query_row([seq], |d| d.get(0)).optional()?.flatten();
                let Some(set) = data.as_deref().and_then(|d| KeySet::decode(d).ok()) else { continue };
                let hit = int.is_some_and(|v| set.contains_int(v)) || hashed.is_some_and(|h| set.contains_hash(h));
                if !hit {
                    continue;
                }
                out.rows.push(SawRow {
                    time_us: r.get(1)?,
                    session: r.get(2)?,
                    statement: u64::try_from(r.get::<_, i64>(3)?).unwrap_or(0),
                    table: tbl.clone(),
                    masked: r.get(4)?,
                    user: r.get(5)?,
                    uid: r.get(6)?,
                    oidc_subject: r.get(7)?,
                    oidc_email: r.get(8)?,
                    pid: r.get(9)?,
                    comm: r.get(10)?,
                    backend: r.get(11)?,
                    text: text_st
                        .query_row(params![r.get::<_, String>(2)?, seq, r.get::<_, i64>(3)?], |t| t.get(0))
                        .optional()?
                        .flatten(),
                });
            }
        }
        out.keyless_reads += conn
            .query_row(
                "SELECT count(*) FROM trail WHERE tbl = ?1 AND key_column IS NULL AND time_us >= ?2",
                params![tbl, since],
                |r| r.get::<_, i64>(0),
            )?
            .unsigned_abs();
    }
    out.rows.sort_by(|a, b| (a.time_us, &a.session, a.statement).cmp(&(b.time_us, &b.session, b.statement)));
    out.rows.dedup_by(|a, b| a.session == b.session && a.statement == b.statement && a.table == b.table);
    Ok(out)
}

fn hash_key_read(conn: &Connection) -> rusqlite::Result<Option<HashKey>> {
    let have: Option<String> =
        conn.query_row("SELECT value FROM meta WHERE key = 'trail_hash_key'", [], |r| r.get(0)).optional()?;
    Ok(have.as_deref().and_then(parse_hex32).map(HashKey))
}

/// How `access-report` groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReportBy {
    #[default]
    User,
    /// Per user and day (UTC).
    Day,
}

/// One line of `access-report`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportRow {
    pub table: String,
    pub user: String,
    /// `YYYY-MM-DD` with `--by day`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub day: Option<String>,
    /// Distinct rows returned (by key).
    pub distinct_rows: u64,
    pub statements: u64,
    pub sessions: u64,
    pub keyless_reads: u64,
    /// Rows returned by keyless reads (not attributable to keys).
    pub keyless_rows: u64,
    pub first_us: i64,
    pub last_us: i64,
}

pub fn access_report(
    path: &Path,
    table: &str,
    by: ReportBy,
    since_us: Option<i64>,
) -> Result<Vec<ReportRow>, AuditError> {
    let conn = crate::audit::query::open_read_only(path)?;
    access_report_in(&conn, table, by, since_us).map_err(sql(path))
}

pub fn access_report_in(
    conn: &Connection,
    table: &str,
    by: ReportBy,
    since_us: Option<i64>,
) -> rusqlite::Result<Vec<ReportRow>> {
    struct Acc {
        set: KeySet,
        statements: u64,
        sessions: std::collections::BTreeSet<String>,
        keyless: u64,
        keyless_rows: u64,
        first: i64,
        last: i64,
    }
    let since = since_us.unwrap_or(i64::MIN);
    let mut out = Vec::new();
    let mut st = conn.prepare_cached(
        "SELECT t.seq, t.time_us, t.session_id, t.key_column IS NULL, t.rows, coalesce(s.user, '#' || s.uid, '?'), e.data
         FROM trail t LEFT JOIN sessions s ON s.id = t.session_id LEFT JOIN events e ON e.seq = t.seq
         WHERE t.tbl = ?1 AND t.time_us >= ?2 ORDER BY t.seq",
    )?;
    for tbl in tables(conn, table)? {
        let mut groups: BTreeMap<(String, Option<String>), Acc> = BTreeMap::new();
        let mut rows = st.query(params![tbl, since])?;
        while let Some(r) = rows.next()? {
            let time: i64 = r.get(1)?;
            let user: String = r.get(5)?;
            let day = (by == ReportBy::Day).then(|| {
                jiff::Timestamp::from_microsecond(time).map(|t| t.strftime("%Y-%m-%d").to_string()).unwrap_or_default()
            });
            let acc = groups.entry((user, day)).or_insert_with(|| Acc {
                set: KeySet::default(),
                statements: 0,
                sessions: Default::default(),
                keyless: 0,
                keyless_rows: 0,
                first: time,
                last: time,
            });
            acc.statements += 1;
            acc.first = acc.first.min(time);
            acc.last = acc.last.max(time);
            acc.sessions.insert(r.get(2)?);
            if r.get::<_, bool>(3)? {
                acc.keyless += 1;
                acc.keyless_rows += r.get::<_, i64>(4)?.unsigned_abs();
                continue;
            }
            let data: Option<Vec<u8>> = r.get(6)?;
            if let Some(set) = data.as_deref().and_then(|d| KeySet::decode(d).ok()) {
                acc.set.union_with(&set);
            }
        }
        for ((user, day), mut acc) in groups {
            acc.set.seal();
            out.push(ReportRow {
                table: tbl.clone(),
                user,
                day,
                distinct_rows: acc.set.len(),
                statements: acc.statements,
                sessions: acc.sessions.len() as u64,
                keyless_reads: acc.keyless,
                keyless_rows: acc.keyless_rows,
                first_us: acc.first,
                last_us: acc.last,
            });
        }
    }
    Ok(out)
}
