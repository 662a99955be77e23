//! Changes an operator makes to the store through the writer: removing a
//! session's content (`gatehouse redact`) and rotating the host key
//! (`gatehouse keys rotate`). Both append a signed record to the chain, so
//! `verify` shows what was done, when, why and by which key.

use ed25519_dalek::SigningKey;
use rusqlite::{Connection, params};

use super::chain;
use super::{Event, KeyRotation, RecordKind, Redaction, hex, index, insert_event, now_us};

/// The kinds of record a redaction removes the content of: what the session
/// said and saw. Who, when, where and the decision (`session_open`,
/// `session_close`, `backend_login`) stay.
pub const REDACTABLE: &[RecordKind] =
    &[RecordKind::Statement, RecordKind::StatementEnd, RecordKind::Chunk, RecordKind::Truncated];

/// Consecutive numbers as inclusive ranges.
fn ranges(seqs: &[u64]) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &s in seqs {
        match out.last_mut() {
            Some((_, end)) if *end + 1 == s => *end = s,
            _ => out.push((s, s)),
        }
    }
    out
}

/// Removes the content of `session`'s records (body and data, overwritten
/// on disk: `secure_delete`) and appends a `redaction` record signed by
/// `key`. Returns the new head and the redaction.
pub(super) fn redact(
    conn: &mut Connection,
    head: (u64, [u8; 32]),
    key: &SigningKey,
    session: &str,
    reason: &str,
    by_uid: u32,
) -> Result<((u64, [u8; 32]), Redaction), String> {
    let reason = reason.trim();
    if reason.is_empty() {
        return Err("a redaction needs a reason (--reason)".into());
    }
    let sql = |e: rusqlite::Error| e.to_string();
    conn.pragma_update(None, "secure_delete", "ON").map_err(sql)?;
    let result = (|| {
        let tx = conn.transaction().map_err(sql)?;
        let exists: i64 = tx
            .query_row(
                "SELECT count(*) FROM events WHERE session = ?1 AND kind = ?2",
                params![session, RecordKind::SessionOpen],
                |r| r.get(0),
            )
            .map_err(sql)?;
        if exists == 0 {
            return Err(format!("no session {session} in the store"));
        }
        let kinds = REDACTABLE.iter().map(|k| format!("'{k}'")).collect::<Vec<_>>().join(", ");
        let seqs: Vec<u64> = {
            let mut st = tx
                .prepare(&format!(
                    "SELECT seq FROM events WHERE session = ?1 AND kind IN ({kinds}) AND body IS NOT NULL ORDER BY seq"
                ))
                .map_err(sql)?;
            let rows = st.query_map([session], |r| r.get::<_, i64>(0)).map_err(sql)?;
            rows.map(|r| r.map(|s| u64::try_from(s).unwrap_or(0))).collect::<Result<_, _>>().map_err(sql)?
        };
        if seqs.is_empty() {
            return Err(format!("session {session} has no content left to redact"));
        }
        tx.execute(
            &format!(
                "UPDATE events SET body = NULL, data = NULL WHERE session = ?1 AND kind IN ({kinds}) AND body IS NOT NULL"
            ),
            [session],
        )
        .map_err(sql)?;
        let red = Redaction {
            session: session.to_owned(),
            records: ranges(&seqs),
            reason: reason.to_owned(),
            by_uid,
            time_us: now_us(),
            public_key: hex(&key.verifying_key().to_bytes()),
        };
        let body = serde_json::to_vec(&red).map_err(|e| e.to_string())?;
        let sig = chain::sign(key, &chain::redaction_message(&body));
        let new =
            insert_event(&tx, head, now_us(), Some(session), RecordKind::Redaction, &body, Some(&sig)).map_err(sql)?;
        index(&tx, &Event::Redaction(Box::new(red.clone()))).map_err(sql)?;
        tx.commit().map_err(sql)?;
        Ok((new, red))
    })();
    let _ = conn.pragma_update(None, "secure_delete", "OFF");
    // The old pages also sit in the write-ahead log until it is checkpointed: truncate it.
    if result.is_ok() {
        let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
    }
    result
}

/// Appends a `key_rotation` record: `old` signs `new`.
pub(super) fn rotate(
    conn: &mut Connection,
    head: (u64, [u8; 32]),
    old: &SigningKey,
    new: &SigningKey,
) -> Result<((u64, [u8; 32]), KeyRotation), String> {
    let sql = |e: rusqlite::Error| e.to_string();
    let (o, n) = (old.verifying_key().to_bytes(), new.verifying_key().to_bytes());
    let time_us = now_us();
    let rot = KeyRotation { old_public_key: hex(&o), new_public_key: hex(&n), time_us };
    let body = serde_json::to_vec(&rot).map_err(|e| e.to_string())?;
    let sig = chain::sign(old, &chain::rotation_message(&o, &n, time_us));
    let tx = conn.transaction().map_err(sql)?;
    let new_head = insert_event(&tx, head, time_us, None, RecordKind::KeyRotation, &body, Some(&sig)).map_err(sql)?;
    tx.execute(
        "INSERT OR IGNORE INTO host_keys (public_key, first_seen_us) VALUES (?1, ?2)",
        params![n.to_vec(), time_us],
    )
    .map_err(sql)?;
    tx.commit().map_err(sql)?;
    Ok((new_head, rot))
}

/// The newest key rotation recorded, if any: (old, new) public keys.
pub(super) fn last_rotation(conn: &Connection) -> rusqlite::Result<Option<KeyRotation>> {
    use rusqlite::OptionalExtension;
    let body: Option<Option<Vec<u8>>> = conn
        .query_row(
            "SELECT body FROM events WHERE kind = ?1 ORDER BY seq DESC LIMIT 1",
            [RecordKind::KeyRotation],
            |r| r.get(0),
        )
        .optional()?;
    Ok(body.flatten().and_then(|b| serde_json::from_slice(&b).ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seqs_become_ranges() {
        assert_eq!(ranges(&[3, 4, 5, 9, 11, 12]), vec![(3, 5), (9, 9), (11, 12)]);
        assert!(ranges(&[]).is_empty());
    }
}
