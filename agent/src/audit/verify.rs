//! `gatehouse verify`: checks an audit store's chain, its checkpoints'
//! signatures, its redactions and key rotations, and its query tables
//! against the chain, and reports every record that was changed, deleted,
//! inserted or reordered.
//!
//! Trust comes from outside: the keys a verification trusts are given
//! ([`Trust`]), and followed through the store's key rotations (the old key
//! signs the new one). Keys the store itself lists prove nothing (whoever
//! rewrote the store signed it with a key of their own and listed it), so a
//! verification against them is marked as such ([`TrustSource::Store`]).
//! Deleting the newest records together with the newest checkpoint leaves a
//! chain that verifies: only checkpoints published off the host
//! ([`super::anchors`]) reveal it, when given.
//!
//! The store is read as a stream, one record at a time: memory stays flat
//! whatever its size. The query tables are rebuilt from the chain into a
//! temporary on-disk SQLite database and compared row by row.

use std::path::{Path, PathBuf};

use ed25519_dalek::VerifyingKey;
use rusqlite::{Connection, OpenFlags, OptionalExtension};
use serde::Serialize;

use super::anchors::Anchor;
use super::chain::{self, Break, Record, Walker};
use super::{
    Event, KeyRotation, RecordKind, Redaction, SessionClose, SessionOpen, StatementEnd, StatementStart, hex, keys,
};

/// Where the trusted keys came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "source", content = "path")]
pub enum TrustSource {
    /// `--pubkey` on the command line.
    Given,
    /// A key file outside the store (`/etc/gatehouse/audit.pub`, `--pubkey-file`).
    KeyFile(PathBuf),
    /// `host.pub` beside the store: on the same host, rewritable with it.
    BesideStore(PathBuf),
    /// The store's own list of keys: proves nothing about who wrote it.
    Store,
    /// An export bundle's own `public_key`: proves nothing about who made it.
    Bundle,
}

impl TrustSource {
    /// Whether the keys came from outside what is being checked.
    pub fn external(&self) -> bool {
        matches!(self, Self::Given | Self::KeyFile(_))
    }

    pub fn describe(&self) -> String {
        match self {
            Self::Given => "--pubkey".into(),
            Self::KeyFile(p) => format!("key file {}", p.display()),
            Self::BesideStore(p) => format!("{} beside the store", p.display()),
            Self::Store => "the store's own list of keys".into(),
            Self::Bundle => "the bundle's own public_key file".into(),
        }
    }
}

/// The keys to trust, and where they came from.
#[derive(Debug, Clone)]
pub struct Trust {
    pub keys: Vec<VerifyingKey>,
    pub source: TrustSource,
}

/// A redaction the verification found (and checked).
#[derive(Debug, Clone, Serialize)]
pub struct RedactionNote {
    pub seq: u64,
    pub session: String,
    pub records: u64,
    pub reason: String,
    pub by_uid: u32,
    pub time_us: i64,
}

/// A key rotation the verification followed.
#[derive(Debug, Clone, Serialize)]
pub struct RotationNote {
    pub seq: u64,
    pub old_public_key: String,
    pub new_public_key: String,
    pub time_us: i64,
}

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
    /// The keys trusted, after following rotations (hex).
    pub public_keys: Vec<String>,
    /// Where the trusted keys came from.
    pub trust: TrustSource,
    pub redactions: Vec<RedactionNote>,
    pub rotations: Vec<RotationNote>,
    /// The newest published checkpoint checked (`--anchors`), if any: its head seq.
    pub anchor_seq: Option<u64>,
    /// Records after the last verified checkpoint (not yet signed).
    pub unsigned_tail: u64,
}

impl Report {
    pub fn new(trust: TrustSource) -> Self {
        Self {
            records: 0,
            first_seq: None,
            last_seq: None,
            checkpoints: 0,
            checkpoints_verified: 0,
            problems: vec![],
            public_keys: vec![],
            trust,
            redactions: vec![],
            rotations: vec![],
            anchor_seq: None,
            unsigned_tail: 0,
        }
    }

    /// No record changed, deleted, inserted or reordered; every signature valid.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }

    /// Intact and checked against keys from outside what was checked.
    pub fn proven(&self) -> bool {
        self.ok() && self.trust.external()
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
pub(crate) const RECORD_COLUMNS: &str = "seq, time_us, session, kind, body, data, content_hash, prev_hash, hash";

/// One row of `SELECT {RECORD_COLUMNS} FROM events` as a record, whatever
/// the storage class of each column: a tampered row (text where a blob was
/// written, a hash of the wrong length) is read, and then fails its check.
/// A NULL body is a record whose content was removed (redacted).
pub(crate) fn record_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Record> {
    use rusqlite::types::ValueRef;
    let hash32 = |v: Vec<u8>| <[u8; 32]>::try_from(v).unwrap_or([0xff; 32]);
    let body = r.get_ref(4)?;
    let data = r.get_ref(5)?;
    let redacted = body == ValueRef::Null;
    Ok(Record {
        seq: u64::try_from(r.get::<_, i64>(0)?).unwrap_or(0),
        time_us: r.get(1)?,
        session: r.get_ref(2)?.as_str_or_null().ok().flatten().map(str::to_owned),
        kind: String::from_utf8_lossy(&bytes(r.get_ref(3)?)).into_owned(),
        body: bytes(body),
        data: (!redacted && data != ValueRef::Null).then(|| bytes(data)),
        content_hash: hash32(bytes(r.get_ref(6)?)),
        redacted,
        prev_hash: hash32(bytes(r.get_ref(7)?)),
        hash: hash32(bytes(r.get_ref(8)?)),
    })
}

/// Reads records in order (all of them, or one session's).
pub fn read_records_where(conn: &Connection, session: Option<&str>) -> Result<Vec<Record>, String> {
    let sql = format!("SELECT {RECORD_COLUMNS} FROM events WHERE (?1 IS NULL OR session = ?1) ORDER BY seq");
    let mut st = conn.prepare(&sql).map_err(sql_err)?;
    let rows = st.query_map([session], record_from_row).map_err(sql_err)?;
    rows.collect::<Result<_, _>>().map_err(sql_err)
}

/// Reads every record in order.
pub fn read_records(conn: &Connection) -> Result<Vec<Record>, String> {
    read_records_where(conn, None)
}

/// The keys to trust for a store when none is given: the operator's key
/// file if there is one; else `host.pub` beside the store and the store's
/// own list (neither of which proves anything: the report says so).
pub fn default_trust(db: &Path, key_file: &Path) -> Result<Trust, String> {
    if key_file.exists() {
        return Ok(Trust {
            keys: keys::read_public_file(key_file)?,
            source: TrustSource::KeyFile(key_file.to_owned()),
        });
    }
    let beside = keys::public_path(&crate::settings::host_key_path(db));
    if let Ok(k) = keys::read_public_file(&beside) {
        return Ok(Trust { keys: k, source: TrustSource::BesideStore(beside) });
    }
    let conn = open(db)?;
    Ok(Trust { keys: stored_keys(&conn)?, source: TrustSource::Store })
}

fn open(path: &Path) -> Result<Connection, String> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(sql_err)?;
    let layout = conn.prepare("SELECT content_hash FROM events LIMIT 0").is_ok();
    if !layout {
        return Err(format!("{}: not an audit store of chain layout {}", path.display(), chain::LAYOUT));
    }
    Ok(conn)
}

fn stored_keys(conn: &Connection) -> Result<Vec<VerifyingKey>, String> {
    let mut st = conn.prepare("SELECT public_key FROM host_keys").map_err(sql_err)?;
    let rows = st.query_map([], |r| r.get::<_, Vec<u8>>(0)).map_err(sql_err)?;
    Ok(rows
        .filter_map(Result::ok)
        .filter_map(|b| <[u8; 32]>::try_from(b).ok())
        .filter_map(|b| VerifyingKey::from_bytes(&b).ok())
        .collect())
}

/// The trusted keys once rotations are followed, and which key signs at which point.
#[derive(Debug)]
pub(crate) struct Keys {
    pub(crate) trusted: Vec<VerifyingKey>,
    /// (seq of the rotation record, new key) in chain order, for rotations that verified.
    epochs: Vec<(u64, VerifyingKey)>,
    /// The key before the first verified rotation.
    first: Option<VerifyingKey>,
}

impl Keys {
    pub(crate) fn is_trusted(&self, k: &VerifyingKey) -> bool {
        self.trusted.contains(k)
    }

    /// Whether `k` may sign at `seq`: trusted, and the key in force then.
    pub(crate) fn may_sign(&self, k: &VerifyingKey, seq: u64) -> Result<(), String> {
        if !self.is_trusted(k) {
            return Err(format!("key {} is not a trusted key", hex(&k.to_bytes())));
        }
        let active = self.epochs.iter().rev().find(|(at, _)| *at < seq).map(|(_, k)| *k).or(self.first);
        match active {
            Some(a) if a != *k => Err(format!(
                "key {} was not the host key at this point (key {} was: the other was retired by a rotation)",
                hex(&k.to_bytes()),
                hex(&a.to_bytes())
            )),
            _ => Ok(()),
        }
    }
}

fn parse_key(hex_key: &str) -> Option<VerifyingKey> {
    keys::parse_public(hex_key).ok()
}

/// A key rotation record as read: seq, body, signature.
pub(crate) type RotationRow = (u64, Vec<u8>, Vec<u8>);

/// Works out which keys to trust: the given ones, each new key a trusted
/// old key signed, and each old key a trusted new key took over from (only
/// when the first checkpoint after the rotation is validly signed by the
/// new key, which then vouches for everything before it). `next_signer(seq)`:
/// the key that validly signed the first checkpoint after `seq`.
pub(crate) fn follow_rotations(
    rows: &[RotationRow],
    trust: &Trust,
    next_signer: &dyn Fn(u64) -> Result<Option<VerifyingKey>, String>,
    report: &mut Report,
) -> Result<Keys, String> {
    let mut rotations: Vec<(u64, KeyRotation, VerifyingKey, VerifyingKey, bool)> = Vec::new();
    for (seq, body, sig) in rows {
        let seq = *seq;
        let parsed = serde_json::from_slice::<KeyRotation>(body)
            .ok()
            .and_then(|r| Some((parse_key(&r.old_public_key)?, parse_key(&r.new_public_key)?, r)));
        let Some((old, new, rot)) = parsed else {
            report.problems.push(Break { seq, what: format!("key rotation {seq} cannot be read") });
            continue;
        };
        let msg = chain::rotation_message(&old.to_bytes(), &new.to_bytes(), rot.time_us);
        let signed = chain::verify_signature(&old, &msg, sig);
        if !signed {
            report
                .problems
                .push(Break { seq, what: format!("key rotation {seq} is not signed by the key it retires") });
        }
        rotations.push((seq, rot, old, new, signed));
    }
    let mut trusted = trust.keys.clone();
    loop {
        let before = trusted.len();
        for (seq, _, old, new, signed) in &rotations {
            if !signed {
                continue;
            }
            if trusted.contains(old) && !trusted.contains(new) {
                trusted.push(*new);
            }
            if trusted.contains(new) && !trusted.contains(old) && next_signer(*seq)? == Some(*new) {
                trusted.push(*old);
            }
        }
        if trusted.len() == before {
            break;
        }
    }
    let epochs: Vec<(u64, VerifyingKey)> =
        rotations.iter().filter(|r| r.4).map(|(seq, _, _, new, _)| (*seq, *new)).collect();
    let first = rotations.iter().find(|r| r.4).map(|r| r.2);
    report.rotations = rotations
        .iter()
        .map(|(seq, r, _, _, _)| RotationNote {
            seq: *seq,
            old_public_key: r.old_public_key.clone(),
            new_public_key: r.new_public_key.clone(),
            time_us: r.time_us,
        })
        .collect();
    report.public_keys = trusted.iter().map(|k| hex(&k.to_bytes())).collect();
    Ok(Keys { trusted, epochs, first })
}

/// The key that validly signed a checkpoint body, if any.
pub(crate) fn checkpoint_signer(body: &[u8], sig: &[u8]) -> Option<VerifyingKey> {
    let (seq, hash, time, key) = checkpoint_fields(body)?;
    let k = parse_key(&key)?;
    chain::verify_signature(&k, &chain::checkpoint_message(seq, &hash, time), sig).then_some(k)
}

/// The store's key rotations and the keys to trust.
fn store_keys(conn: &Connection, trust: &Trust, report: &mut Report) -> Result<Keys, String> {
    let rows: Vec<RotationRow> = {
        let mut st = conn
            .prepare("SELECT seq, body, data FROM events WHERE kind = ?1 AND body IS NOT NULL ORDER BY seq")
            .map_err(sql_err)?;
        let rows = st
            .query_map([RecordKind::KeyRotation], |r| {
                Ok((u64::try_from(r.get::<_, i64>(0)?).unwrap_or(0), bytes(r.get_ref(1)?), bytes(r.get_ref(2)?)))
            })
            .map_err(sql_err)?;
        rows.collect::<Result<_, _>>().map_err(sql_err)?
    };
    let next_signer = |seq: u64| -> Result<Option<VerifyingKey>, String> {
        let row: Option<(Vec<u8>, Vec<u8>)> = conn
            .query_row(
                "SELECT body, data FROM events WHERE kind = ?2 AND seq > ?1 AND body IS NOT NULL ORDER BY seq LIMIT 1",
                rusqlite::params![i64::try_from(seq).unwrap_or(i64::MAX), RecordKind::Checkpoint],
                |r| Ok((bytes(r.get_ref(0)?), bytes(r.get_ref(1)?))),
            )
            .optional()
            .map_err(sql_err)?;
        Ok(row.and_then(|(body, sig)| checkpoint_signer(&body, &sig)))
    };
    follow_rotations(&rows, trust, &next_signer, report)
}

/// A checkpoint body's (head seq, head hash, time, public key).
pub(crate) fn checkpoint_fields(body: &[u8]) -> Option<(u64, [u8; 32], i64, String)> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let head_seq = v.get("head_seq")?.as_u64()?;
    let head_hash = unhex32(v.get("head_hash")?.as_str()?)?;
    let time = v.get("time_us")?.as_i64()?;
    let key = v.get("public_key").and_then(serde_json::Value::as_str).unwrap_or_default().to_owned();
    Some((head_seq, head_hash, time, key))
}

pub(crate) fn unhex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Reads the redaction records and checks their signatures.
fn read_redactions(conn: &Connection, keys: &Keys, report: &mut Report) -> Result<Vec<(u64, Redaction)>, String> {
    let mut out = Vec::new();
    let mut st = conn
        .prepare("SELECT seq, body, data FROM events WHERE kind = ?1 AND body IS NOT NULL ORDER BY seq")
        .map_err(sql_err)?;
    let mut rows = st.query([RecordKind::Redaction]).map_err(sql_err)?;
    while let Some(row) = rows.next().map_err(sql_err)? {
        let seq = u64::try_from(row.get::<_, i64>(0).map_err(sql_err)?).unwrap_or(0);
        let body = bytes(row.get_ref(1).map_err(sql_err)?);
        let sig = bytes(row.get_ref(2).map_err(sql_err)?);
        if let Some(red) = check_redaction(seq, &body, &sig, keys, report) {
            out.push((seq, red));
        }
    }
    Ok(out)
}

/// Reads one redaction record, checks its signature (by the key in force
/// at its point) and notes it in the report.
pub(crate) fn check_redaction(
    seq: u64,
    body: &[u8],
    sig: &[u8],
    keys: &Keys,
    report: &mut Report,
) -> Option<Redaction> {
    let Ok(red) = serde_json::from_slice::<Redaction>(body) else {
        report.problems.push(Break { seq, what: format!("redaction record {seq} cannot be read") });
        return None;
    };
    let signed = parse_key(&red.public_key).map(|k| {
        keys.may_sign(&k, seq).and_then(|()| {
            chain::verify_signature(&k, &chain::redaction_message(body), sig)
                .then_some(())
                .ok_or_else(|| "the signature is not valid".to_owned())
        })
    });
    match signed {
        Some(Ok(())) => {}
        Some(Err(e)) => report.problems.push(Break { seq, what: format!("redaction record {seq}: {e}") }),
        None => report.problems.push(Break { seq, what: format!("redaction record {seq} names no valid key") }),
    }
    report.redactions.push(RedactionNote {
        seq,
        session: red.session.clone(),
        records: red.count(),
        reason: red.reason.clone(),
        by_uid: red.by_uid,
        time_us: red.time_us,
    });
    Some(red)
}

/// Whether a content-less record is one a (later) redaction removed.
pub(crate) fn redaction_covers(redactions: &[(u64, Redaction)], r: &Record) -> bool {
    redactions
        .iter()
        .any(|(at, red)| *at > r.seq && red.covers(r.seq) && r.session.as_deref() == Some(red.session.as_str()))
}

/// The record a parsed body stands for, for the query tables.
pub(crate) fn indexed_event(r: &Record) -> Option<Event> {
    if r.redacted {
        return None;
    }
    event_for_index(r.record_kind()?, &r.body)
}

/// The event a record of `kind` with `body` stands for, for the query
/// tables (the kinds that have rows there).
pub(crate) fn event_for_index(kind: RecordKind, body: &[u8]) -> Option<Event> {
    match kind {
        RecordKind::SessionOpen => {
            serde_json::from_slice::<SessionOpen>(body).ok().map(|x| Event::SessionOpen(Box::new(x)))
        }
        RecordKind::SessionClose => {
            serde_json::from_slice::<SessionClose>(body).ok().map(|x| Event::SessionClose(Box::new(x)))
        }
        RecordKind::Statement => {
            serde_json::from_slice::<StatementStart>(body).ok().map(|x| Event::Statement(Box::new(x)))
        }
        RecordKind::StatementEnd => {
            serde_json::from_slice::<StatementEnd>(body).ok().map(|x| Event::StatementEnd(Box::new(x)))
        }
        RecordKind::BackendLogin => {
            serde_json::from_slice::<super::BackendLogin>(body).ok().map(|x| Event::BackendLogin(Box::new(x)))
        }
        RecordKind::Redaction => serde_json::from_slice::<Redaction>(body).ok().map(|x| Event::Redaction(Box::new(x))),
        _ => None,
    }
}

/// Verifies a database file against `trust`; with `published`, also that
/// the store reaches the newest validly signed published checkpoint.
pub fn verify_db(path: &Path, trust: &Trust, published: Option<&[Anchor]>) -> Result<Report, String> {
    // A crashed agent's journal is part of its record: appended first (when no agent holds the store).
    super::journal::recover(path)?;
    let conn = open(path)?;
    let mut report = Report::new(trust.source.clone());
    let keys = store_keys(&conn, trust, &mut report)?;
    let redactions = read_redactions(&conn, &keys, &mut report)?;

    // Where the chain starts: the genesis, or the newest pruning anchor below the first record.
    let first: Option<i64> = conn.query_row("SELECT min(seq) FROM events", [], |r| r.get(0)).map_err(sql_err)?;
    let first = first.and_then(|s| u64::try_from(s).ok()).unwrap_or(1);
    let pruned: Option<(i64, Vec<u8>, i64, Vec<u8>)> = conn
        .query_row(
            "SELECT seq, hash, time_us, signature FROM anchors WHERE seq < ?1 ORDER BY seq DESC LIMIT 1",
            [i64::try_from(first).unwrap_or(i64::MAX)],
            |r| Ok((r.get(0)?, bytes(r.get_ref(1)?), r.get(2)?, bytes(r.get_ref(3)?))),
        )
        .optional()
        .map_err(sql_err)?;
    let start = match pruned {
        Some((seq, hash, time, sig)) => {
            let seq = u64::try_from(seq).unwrap_or(0);
            let hash = <[u8; 32]>::try_from(hash).unwrap_or([0xff; 32]);
            let m = chain::checkpoint_message(seq, &hash, time);
            if !keys.trusted.iter().any(|k| chain::verify_signature(k, &m, &sig)) {
                report
                    .problems
                    .push(Break { seq, what: format!("the pruning anchor at {seq} is not signed by a trusted key") });
            }
            (hash, seq)
        }
        None => (chain::GENESIS, 0),
    };

    // The published checkpoint to reach: the newest one validly signed by a trusted key.
    let target = published.and_then(|list| newest_valid_anchor(list, &keys, &mut report));
    report.anchor_seq = target.as_ref().map(|t| t.0);

    // The query tables, rebuilt from the chain in a temporary on-disk database.
    let mut rebuilt = Connection::open("").map_err(sql_err)?;
    rebuilt.execute_batch(super::SCHEMA).map_err(sql_err)?;
    let tx = rebuilt.transaction().map_err(sql_err)?;

    let mut walker = Walker::new(start);
    let mut first_break = true;
    let mut last_signed = 0u64;
    let mut prev: Option<(u64, [u8; 32])> = None;
    {
        let mut st = conn.prepare(&format!("SELECT {RECORD_COLUMNS} FROM events ORDER BY seq")).map_err(sql_err)?;
        let mut rows = st.query([]).map_err(sql_err)?;
        while let Some(row) = rows.next().map_err(sql_err)? {
            let r = record_from_row(row).map_err(sql_err)?;
            report.records += 1;
            report.first_seq.get_or_insert(r.seq);
            report.last_seq = Some(r.seq);
            if let Err(b) = walker.step(&r) {
                // The first break is the one that matters; later ones follow from it
                // unless the chain was repaired, so they are reported too, once each.
                if first_break || !b.what.contains("does not chain") {
                    report.problems.push(b);
                }
                first_break = false;
            }
            if let Some((seq, hash)) = &target
                && r.seq == *seq
                && r.hash != *hash
            {
                report.problems.push(Break {
                    seq: r.seq,
                    what: format!(
                        "record {} is not the one a published checkpoint names: the store was rewritten after it was published",
                        r.seq
                    ),
                });
            }
            if r.redacted && !redaction_covers(&redactions, &r) {
                report.problems.push(Break {
                    seq: r.seq,
                    what: format!(
                        "record {}'s content was removed, and no signed redaction record says so (deleted)",
                        r.seq
                    ),
                });
            }
            if r.is(RecordKind::Checkpoint) && !r.redacted {
                report.checkpoints += 1;
                match check_checkpoint(&conn, &r, prev, &keys) {
                    Ok(()) => {
                        report.checkpoints_verified += 1;
                        last_signed = r.seq;
                    }
                    Err(what) => report.problems.push(Break { seq: r.seq, what }),
                }
            }
            if let Some(e) = indexed_event(&r) {
                super::index(&tx, &e).map_err(sql_err)?;
            }
            if r.is(RecordKind::Trail)
                && !r.redacted
                && let Ok(t) = serde_json::from_slice::<crate::trail::TrailRecord>(&r.body)
            {
                crate::trail::store::index(&tx, r.seq, &t, r.data.as_deref().unwrap_or_default()).map_err(sql_err)?;
            }
            prev = Some((r.seq, r.hash));
        }
    }
    tx.commit().map_err(sql_err)?;
    let last = report.last_seq.unwrap_or(start.1);
    report.unsigned_tail = last.saturating_sub(last_signed.max(start.1));
    if let Some((seq, _)) = target
        && last < seq
    {
        report.problems.push(Break {
            seq: last.saturating_add(1),
            what: format!(
                "the store ends at record {last}, but a checkpoint published off the host names record {seq}: records {}..{seq} or more were deleted from the end",
                last.saturating_add(1)
            ),
        });
    }
    compare_tables(&rebuilt, &conn, &mut report)?;
    compare_statements_view(&conn, &mut report)?;
    report.problems.sort_by_key(|b| b.seq);
    Ok(report)
}

/// The newest published anchor signed by a trusted key; badly signed ones are problems.
fn newest_valid_anchor(list: &[Anchor], keys: &Keys, report: &mut Report) -> Option<(u64, [u8; 32])> {
    let mut best: Option<(u64, [u8; 32])> = None;
    for a in list {
        let hash = unhex32(&a.head_hash);
        let sig = super::export::unhex(&a.signature);
        let key = parse_key(&a.public_key);
        let valid = match (hash, sig, key) {
            (Some(h), Some(s), Some(k)) => {
                keys.is_trusted(&k)
                    && chain::verify_signature(&k, &chain::checkpoint_message(a.head_seq, &h, a.time_us), &s)
            }
            _ => false,
        };
        match (valid, hash) {
            (true, Some(h)) => {
                if best.is_none_or(|(s, _)| a.head_seq > s) {
                    best = Some((a.head_seq, h));
                }
            }
            _ => report.problems.push(Break {
                seq: 0,
                what: format!(
                    "a published checkpoint (record {}) is not signed by a trusted key; it was ignored",
                    a.head_seq
                ),
            }),
        }
    }
    best
}

/// A checkpoint must name a head that is in the chain as signed, and carry
/// a valid signature by the key in force at that point.
fn check_checkpoint(conn: &Connection, r: &Record, prev: Option<(u64, [u8; 32])>, keys: &Keys) -> Result<(), String> {
    let Some((head_seq, head_hash, time, key_hex)) = checkpoint_fields(&r.body) else {
        return Err(format!("checkpoint {} cannot be read", r.seq));
    };
    let stored = match prev {
        Some((s, h)) if s == head_seq => Some(h),
        _ => conn
            .query_row("SELECT hash FROM events WHERE seq = ?1", [i64::try_from(head_seq).unwrap_or(i64::MAX)], |x| {
                Ok(bytes(x.get_ref(0)?))
            })
            .optional()
            .map_err(sql_err)?
            .and_then(|h| <[u8; 32]>::try_from(h).ok()),
    };
    if stored != Some(head_hash) {
        return Err(format!(
            "checkpoint {} names a head (record {head_seq}) that is not in the chain as signed",
            r.seq
        ));
    }
    let m = chain::checkpoint_message(head_seq, &head_hash, time);
    let sig = r.data.as_deref().unwrap_or_default();
    let signer = parse_key(&key_hex).filter(|k| chain::verify_signature(k, &m, sig));
    match signer {
        Some(k) => keys.may_sign(&k, r.seq).map_err(|e| format!("checkpoint {}: {e}", r.seq)),
        // An older checkpoint body without its key: any trusted key will do.
        None if keys.trusted.iter().any(|k| chain::verify_signature(k, &m, sig)) => Ok(()),
        None => Err(format!("checkpoint {} has no valid signature by a trusted key", r.seq)),
    }
}

/// `statements` is read from the chain's records (`audit::statements_select`):
/// the store's view must be the one this build makes, or SQL of an
/// operator's own reading it could be shown other rows than the chain
/// holds. (Gatehouse's own commands read their copy of the view's text, not
/// the store's.)
fn compare_statements_view(store: &Connection, report: &mut Report) -> Result<(), String> {
    use super::StatementsObject::{Missing, ThisBuilds};
    if !matches!(super::statements_object(store).map_err(sql_err)?, Missing | ThisBuilds) {
        report.problems.push(Break {
            seq: u64::MAX,
            what: "the statements view is not the one Gatehouse makes over the chain's records; it was edited \
                   (a store last opened by another Gatehouse may hold a table or another view there, which this \
                   build's agent replaces when it opens the store)"
                .to_owned(),
        });
    }
    Ok(())
}

/// The query tables must say what the chain says: compared row by row,
/// both in key order, without holding either in memory.
fn compare_tables(rebuilt: &Connection, store: &Connection, report: &mut Report) -> Result<(), String> {
    for (table, key) in [("sessions", "id"), ("trail", "seq"), ("trail_buckets", "tbl, bucket, seq")] {
        let q = format!("SELECT * FROM {table} ORDER BY {key}");
        let (mut want_st, mut have_st) = (rebuilt.prepare(&q).map_err(sql_err)?, store.prepare(&q).map_err(sql_err)?);
        let n = want_st.column_count();
        if have_st.column_count() != n {
            report.problems.push(Break { seq: u64::MAX, what: format!("the {table} table's columns were changed") });
            continue;
        }
        let row_text = |r: &rusqlite::Row<'_>| -> rusqlite::Result<String> {
            let mut s = String::new();
            for i in 0..n {
                let v: rusqlite::types::Value = r.get(i)?;
                s.push_str(&format!("{v:?}|"));
            }
            Ok(s)
        };
        let (mut want, mut have) = (want_st.query([]).map_err(sql_err)?, have_st.query([]).map_err(sql_err)?);
        let mut i = 0u64;
        loop {
            let w = want.next().map_err(sql_err)?.map(row_text).transpose().map_err(sql_err)?;
            let h = have.next().map_err(sql_err)?.map(row_text).transpose().map_err(sql_err)?;
            match (w, h) {
                (None, None) => break,
                (w, h) if w == h => {}
                (w, h) => {
                    let row = h.or(w).unwrap_or_default();
                    report.problems.push(Break {
                        seq: u64::MAX,
                        what: format!("the {table} table does not match the chain (row {i}: {row}); it was edited"),
                    });
                    break;
                }
            }
            i += 1;
        }
    }
    Ok(())
}
