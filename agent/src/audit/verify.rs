//! `gatehouse verify`: checks an audit store's chain, its checkpoints'
//! signatures and its query tables against the chain, and reports the first
//! record that was changed, deleted, inserted or reordered.

use std::collections::BTreeMap;
use std::path::Path;

use ed25519_dalek::VerifyingKey;
use rusqlite::{Connection, OpenFlags};
use serde::Serialize;

use super::chain::{self, Break, Record};
use super::{Event, SessionClose, SessionOpen, StatementEnd, StatementStart};

/// The outcome of a verification.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub records: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    pub checkpoints: u64,
    /// Checkpoints whose signature and head hash were checked.
    pub checkpoints_verified: u64,
    pub problems: Vec<Break>,
    pub public_keys: Vec<String>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

fn sql_err(e: rusqlite::Error) -> String {
    e.to_string()
}

/// Bytes of a column whatever its storage class: a tampered row may hold
/// text or a number where a blob was written; the hash check then fails.
pub(crate) fn bytes(v: rusqlite::types::ValueRef<'_>) -> Vec<u8> {
    use rusqlite::types::ValueRef;
    match v {
        ValueRef::Blob(b) | ValueRef::Text(b) => b.to_vec(),
        ValueRef::Integer(i) => i.to_string().into_bytes(),
        ValueRef::Real(f) => f.to_string().into_bytes(),
        ValueRef::Null => Vec::new(),
    }
}

/// The columns of `events`, in the order [`record_from_row`] reads them.
pub(crate) const RECORD_COLUMNS: &str = "seq, time_us, session, kind, body, data, prev_hash, hash";

/// One row of `SELECT {RECORD_COLUMNS} FROM events` as a record, whatever
/// the storage class of each column: a tampered row (text where a blob was
/// written, a hash of the wrong length) is read, and then fails its check.
pub(crate) fn record_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Record> {
    let hash32 = |v: Vec<u8>| <[u8; 32]>::try_from(v).unwrap_or([0xff; 32]);
    let data = r.get_ref(5)?;
    Ok(Record {
        seq: u64::try_from(r.get::<_, i64>(0)?).unwrap_or(0),
        time_us: r.get(1)?,
        session: r.get_ref(2)?.as_str_or_null().ok().flatten().map(str::to_owned),
        kind: String::from_utf8_lossy(&bytes(r.get_ref(3)?)).into_owned(),
        body: bytes(r.get_ref(4)?),
        data: (data != rusqlite::types::ValueRef::Null).then(|| bytes(data)),
        prev_hash: hash32(bytes(r.get_ref(6)?)),
        hash: hash32(bytes(r.get_ref(7)?)),
    })
}

/// Reads records in order (all of them, or one session's).
pub fn read_records_where(conn: &Connection, session: Option<&str>) -> Result<Vec<Record>, String> {
    let sql = format!("SELECT {RECORD_COLUMNS} FROM events WHERE (?1 IS NULL OR session = ?1) ORDER BY rowid");
    let mut st = conn.prepare(&sql).map_err(sql_err)?;
    let rows = st.query_map([session], record_from_row).map_err(sql_err)?;
    rows.collect::<Result<_, _>>().map_err(sql_err)
}

/// Reads every record in order.
pub fn read_records(conn: &Connection) -> Result<Vec<Record>, String> {
    read_records_where(conn, None)
}

/// Verifies a database file. `key`: the public key to trust; without it,
/// the keys the store itself lists are used (and the report says which).
pub fn verify_db(path: &Path, key: Option<&VerifyingKey>) -> Result<Report, String> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let records = read_records(&conn)?;
    let anchors: Vec<(u64, [u8; 32], i64, Vec<u8>)> = {
        let mut st = conn.prepare("SELECT seq, hash, time_us, signature FROM anchors ORDER BY seq").map_err(sql_err)?;
        let rows = st
            .query_map([], |r| {
                Ok((
                    u64::try_from(r.get::<_, i64>(0)?).unwrap_or(0),
                    <[u8; 32]>::try_from(r.get::<_, Vec<u8>>(1)?).unwrap_or([0xff; 32]),
                    r.get(2)?,
                    r.get(3)?,
                ))
            })
            .map_err(sql_err)?;
        rows.collect::<Result<_, _>>().map_err(sql_err)?
    };
    let stored_keys: Vec<VerifyingKey> = {
        let mut st = conn.prepare("SELECT public_key FROM host_keys").map_err(sql_err)?;
        let rows = st.query_map([], |r| r.get::<_, Vec<u8>>(0)).map_err(sql_err)?;
        rows.filter_map(Result::ok)
            .filter_map(|b| <[u8; 32]>::try_from(b).ok())
            .filter_map(|b| VerifyingKey::from_bytes(&b).ok())
            .collect()
    };
    let keys: Vec<VerifyingKey> = match key {
        Some(k) => vec![*k],
        None => stored_keys,
    };
    let mut report = Report {
        records: u64::try_from(records.len()).unwrap_or(0),
        first_seq: records.first().map(|r| r.seq),
        last_seq: records.last().map(|r| r.seq),
        checkpoints: 0,
        checkpoints_verified: 0,
        problems: vec![],
        public_keys: keys.iter().map(|k| super::hex(&k.to_bytes())).collect(),
    };
    let signed = |m: &[u8], s: &[u8]| keys.iter().any(|k| chain::verify_signature(k, m, s));
    // Where the chain starts: the genesis, or the newest pruning anchor below the first record.
    let first = records.first().map_or(1, |r| r.seq);
    let anchor = anchors.iter().rev().find(|a| a.0 < first);
    let start = match anchor {
        Some((seq, hash, time, sig)) => {
            if !signed(&chain::checkpoint_message(*seq, hash, *time), sig) {
                report.problems.push(Break {
                    seq: *seq,
                    what: format!("the pruning anchor at {seq} is not signed by the host key"),
                });
            }
            (*hash, *seq)
        }
        None => (chain::GENESIS, 0),
    };
    if let Err(b) = chain::walk(&records, start) {
        report.problems.push(b);
    }
    // Checkpoints: each signature, and the head it names.
    let by_seq: BTreeMap<u64, &Record> = records.iter().map(|r| (r.seq, r)).collect();
    for r in records.iter().filter(|r| r.kind == "checkpoint") {
        report.checkpoints += 1;
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
        let head_seq = v.get("head_seq").and_then(serde_json::Value::as_u64).unwrap_or(0);
        let time = v.get("time_us").and_then(serde_json::Value::as_i64).unwrap_or(0);
        let head_hash = by_seq.get(&head_seq).map(|h| h.hash);
        let claimed = v.get("head_hash").and_then(serde_json::Value::as_str).unwrap_or("");
        let Some(head_hash) = head_hash.filter(|h| super::hex(h) == claimed) else {
            report.problems.push(Break {
                seq: r.seq,
                what: format!(
                    "checkpoint {} names a head (record {head_seq}) that is not in the chain as signed",
                    r.seq
                ),
            });
            continue;
        };
        if signed(&chain::checkpoint_message(head_seq, &head_hash, time), r.data.as_deref().unwrap_or_default()) {
            report.checkpoints_verified += 1;
        } else {
            report.problems.push(Break {
                seq: r.seq,
                what: format!("checkpoint {} has no valid signature by the host key", r.seq),
            });
        }
    }
    check_indexes(&conn, &records, &mut report)?;
    report.problems.sort_by_key(|b| b.seq);
    Ok(report)
}

/// The query tables must say what the chain says.
fn check_indexes(conn: &Connection, records: &[Record], report: &mut Report) -> Result<(), String> {
    let db = Connection::open_in_memory().map_err(sql_err)?;
    db.execute_batch(super::SCHEMA).map_err(sql_err)?;
    let mut db = db;
    let tx = db.transaction().map_err(sql_err)?;
    for r in records {
        let e = match r.kind.as_str() {
            "session_open" => {
                serde_json::from_slice::<SessionOpen>(&r.body).ok().map(|x| Event::SessionOpen(Box::new(x)))
            }
            "session_close" => {
                serde_json::from_slice::<SessionClose>(&r.body).ok().map(|x| Event::SessionClose(Box::new(x)))
            }
            "statement" => {
                serde_json::from_slice::<StatementStart>(&r.body).ok().map(|x| Event::Statement(Box::new(x)))
            }
            "statement_end" => {
                serde_json::from_slice::<StatementEnd>(&r.body).ok().map(|x| Event::StatementEnd(Box::new(x)))
            }
            _ => None,
        };
        if let Some(e) = e {
            super::index(&tx, &e).map_err(sql_err)?;
        }
    }
    tx.commit().map_err(sql_err)?;
    for (table, key) in [("sessions", "id"), ("statements", "session_id, seq")] {
        let q = format!("SELECT * FROM {table} ORDER BY {key}");
        let dump = |c: &Connection| -> Result<Vec<String>, String> {
            let mut st = c.prepare(&q).map_err(sql_err)?;
            let n = st.column_count();
            let rows = st
                .query_map([], |r| {
                    let mut s = String::new();
                    for i in 0..n {
                        let v: rusqlite::types::Value = r.get(i)?;
                        s.push_str(&format!("{v:?}|"));
                    }
                    Ok(s)
                })
                .map_err(sql_err)?;
            rows.collect::<Result<_, _>>().map_err(sql_err)
        };
        let (want, have) = (dump(&db)?, dump(conn)?);
        if want != have {
            let i = want.iter().zip(&have).position(|(a, b)| a != b).unwrap_or(want.len().min(have.len()));
            let row = have.get(i).or(want.get(i)).cloned().unwrap_or_default();
            report.problems.push(Break {
                seq: u64::MAX,
                what: format!("the {table} table does not match the chain (row {i}: {row}); it was edited"),
            });
        }
    }
    Ok(())
}
