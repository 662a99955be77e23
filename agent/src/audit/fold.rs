//! One record per statement: the audit writer folds a statement's end into
//! its `statement` record when both are in one batch with no record of the
//! same session between them (the common case: a statement and its answer).
//!
//! The journal still holds the two entries (a statement is durable before
//! it is forwarded, its end before its answer reaches the client); only the
//! chain keeps one record. The folded record:
//! - is of kind `statement`, at the end's place and time in the chain (so
//!   the chain's times still only go forward; the statement's own time is
//!   its body's `started_us`);
//! - has the statement's body with two fields added, `up_len` (how many
//!   bytes of the data are the client's, when the statement carried some)
//!   and `end` (the end's body, whole);
//! - has as data the statement's bytes (`up`), then the end's (`down`).
//!
//! Readers see a folded record as the two records it stands for
//! ([`split`]), so replay, export and the query tables read a store the
//! same whether or not its statements were folded (a journal replayed after
//! a crash is not folded, nor is a statement whose end came in a later
//! batch or after a trail record or a chunk of its own session).

use super::chain::Record;
use super::journal::{Entry, Kept};
use super::{RecordKind, StatementEnd, StatementStart};

/// No partner: the entry is written as it is.
pub(super) const ALONE: usize = usize::MAX;

/// For each entry of a batch, the index of the entry it folds with, or
/// [`ALONE`]: a statement (before) and its end (after), the end being the
/// next entry of that session in the batch.
pub(super) fn pairs(entries: &[Entry]) -> Vec<usize> {
    let mut partner = vec![ALONE; entries.len()];
    // The last entry of each session seen so far (a batch may hold records
    // of a thousand sessions: a map, not a list searched per record).
    let mut last: std::collections::HashMap<Tail<'_>, usize, super::WordHash> =
        std::collections::HashMap::with_capacity_and_hasher(64, super::WordHash::default());
    for (j, e) in entries.iter().enumerate() {
        let Some(session) = e.session.as_deref() else { continue };
        // `i` cannot be paired yet: a pair is made only at its end, after
        // which the end is the session's last entry.
        if let Some(i) = last.insert(Tail(session), j)
            && let Some(start) = entries.get(i)
            && foldable(start, e)
        {
            if let Some(p) = partner.get_mut(i) {
                *p = j;
            }
            if let Some(p) = partner.get_mut(j) {
                *p = i;
            }
        }
    }
    partner
}

/// A session in [`pairs`]' map: hashed by its last 8 bytes (a session id's
/// random end), compared whole.
#[derive(PartialEq, Eq)]
struct Tail<'a>(&'a str);

impl std::hash::Hash for Tail<'_> {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        let b = self.0.as_bytes();
        let mut w = [0u8; 8];
        let tail = b.get(b.len().saturating_sub(8)..).unwrap_or_default();
        if let Some(to) = w.get_mut(..tail.len()) {
            to.copy_from_slice(tail);
        }
        h.write_u64(u64::from_le_bytes(w));
    }
}

/// A statement and the end of that same statement, both as the session
/// made them, with bodies the fold can join.
fn foldable(start: &Entry, end: &Entry) -> bool {
    match (&start.kept, &end.kept) {
        (Kept::Statement { seq, fresh: true, .. }, Kept::End { seq: ended, .. }) => {
            start.session.is_some()
                && start.session == end.session
                && seq == ended
                && start.body().last() == Some(&b'}')
                && end.body().first() == Some(&b'{')
        }
        _ => false,
    }
}

/// The folded record's body: the statement's, with `up_len` (when it has
/// data) and the end's body as `end`, before its closing brace.
pub(super) fn body(start: &Entry, end: &Entry) -> Vec<u8> {
    let open = start.body().get(..start.body().len().saturating_sub(1)).unwrap_or_default();
    let mut b = Vec::with_capacity(start.body().len() + end.body().len() + 32);
    b.extend_from_slice(open);
    if let Some(up) = start.data() {
        b.extend_from_slice(b",\"up_len\":");
        decimal(&mut b, up.len());
    }
    b.extend_from_slice(b",\"end\":");
    b.extend_from_slice(end.body());
    b.push(b'}');
    b
}

/// `n` in decimal (what `write!` does, without its formatting machinery:
/// a fifth of the fold's cost).
fn decimal(b: &mut Vec<u8>, mut n: usize) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    while at > 0 {
        at -= 1;
        if let Some(d) = digits.get_mut(at) {
            *d = b'0' + u8::try_from(n % 10).unwrap_or(0);
        }
        n /= 10;
        if n == 0 {
            break;
        }
    }
    b.extend_from_slice(digits.get(at..).unwrap_or_default());
}

/// The folded record's data: the statement's bytes, then the end's.
pub(super) fn data(start: &Entry, end: &Entry) -> Option<Vec<u8>> {
    match (start.data(), end.data()) {
        (None, None) => None,
        (up, down) => {
            let (up, down) = (up.unwrap_or_default(), down.unwrap_or_default());
            let mut d = Vec::with_capacity(up.len() + down.len());
            d.extend_from_slice(up);
            d.extend_from_slice(down);
            Some(d)
        }
    }
}

/// The two records a folded `statement` record stands for — the statement
/// (timed at its `started_us`), then its end — each with its own body and
/// data, and the folded record's seq and hashes. `None` for any other
/// record (an unfolded statement, a redacted one, another kind).
pub fn split(r: &Record) -> Option<(Record, Record)> {
    if !r.is(RecordKind::Statement) || r.redacted {
        return None;
    }
    let mut s: StatementStart = serde_json::from_slice(&r.body).ok()?;
    let end: StatementEnd = *s.end.take()?;
    let data = r.data.as_deref().unwrap_or_default();
    let up_len = s.up_len.take().and_then(|n| usize::try_from(n).ok()).unwrap_or(0);
    let (up, down) = data.split_at_checked(up_len).unwrap_or((data, &[]));
    let start = Record {
        time_us: if s.started_us > 0 { s.started_us } else { r.time_us },
        body: serde_json::to_vec(&s).ok()?,
        data: s.up_offset.map(|_| up.to_vec()),
        ..r.clone()
    };
    let end_rec = Record {
        kind: RecordKind::StatementEnd.as_str().to_owned(),
        body: serde_json::to_vec(&end).ok()?,
        data: end.down_offset.map(|_| down.to_vec()),
        ..r.clone()
    };
    Some((start, end_rec))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{ChunkHeader, Direction, Event, Verdict};
    use crate::types::SessionId;

    fn sid(n: u8) -> SessionId {
        SessionId(uuid::Uuid::from_bytes([n; 16]))
    }

    fn start(s: u8, seq: u64, up: Option<&[u8]>) -> Event {
        Event::Statement(Box::new(StatementStart {
            session: sid(s),
            seq,
            started_us: 1_000,
            text: format!("SELECT {seq} /* \"}}\" */"),
            kinds: "select".into(),
            tables: "public.t".into(),
            decision: Verdict::Allow,
            rule: Some("r".into()),
            up_offset: up.map(|_| 40),
            up: up.unwrap_or_default().to_vec(),
            ..StatementStart::default()
        }))
    }

    fn end(s: u8, seq: u64, down: Option<&[u8]>) -> Event {
        Event::StatementEnd(Box::new(StatementEnd {
            session: sid(s),
            seq,
            ended_us: 2_000,
            rows: Some(1),
            duration_us: 1_000,
            error: None,
            masked: Some("{\"email\":1}".into()),
            tags: Some("SELECT 1".into()),
            down_offset: down.map(|_| 90),
            down: down.unwrap_or_default().to_vec(),
        }))
    }

    fn chunk(s: u8) -> Event {
        Event::Chunk { session: sid(s), header: ChunkHeader { dir: Direction::Down, offset: 0 }, data: vec![1] }
    }

    fn entries(events: Vec<Event>) -> Vec<Entry> {
        events.into_iter().map(Entry::now).collect()
    }

    #[test]
    fn an_entry_keeps_the_body_and_the_folded_bytes_and_what_the_writer_reads() {
        // A statement's and its end's bytes ride in the entry's own buffer
        // after the body; a chunk's stay in its event.
        let chunk = || Event::Chunk {
            session: sid(1),
            header: ChunkHeader { dir: Direction::Down, offset: 0 },
            data: vec![7; 3],
        };
        let events =
            [start(1, 4, Some(b"Q-bytes")), end(1, 4, Some(b"D-bytes")), start(1, 5, None), end(1, 5, None), chunk()];
        let bodies: Vec<Vec<u8>> = events.iter().map(|e| e.encode().0).collect();
        let datas: Vec<Option<Vec<u8>>> = events.iter().map(|e| e.data().map(<[u8]>::to_vec)).collect();
        let kept = entries(events.into());
        for (i, e) in kept.iter().enumerate() {
            assert_eq!((e.body(), e.data().map(<[u8]>::to_vec)), (bodies[i].as_slice(), datas[i].clone()), "entry {i}");
        }
        assert_eq!(datas[0].as_deref(), Some(&b"Q-bytes"[..]));
        assert_eq!((datas[2].as_deref(), datas[4].as_deref()), (None, Some(&[7u8; 3][..])));
        assert!(matches!(kept[0].kept, Kept::Statement { seq: 4, fresh: true, .. }));
        assert!(matches!(&kept[1].kept, Kept::End { seq: 4, masked: Some(m) } if m == "{\"email\":1}"));
        assert!(matches!(kept[3].kept, Kept::End { seq: 5, .. }));
        assert!(matches!(kept[4].kept, Kept::Event(Event::Chunk { .. })));
        let Some(crate::metrics::Counted::Statement(Some(kind), Verdict::Allow)) = kept[0].kept.counted() else {
            panic!("a statement is counted by its first kind and decision")
        };
        assert_eq!(kind.name(), "select");
    }

    #[test]
    fn a_statement_folds_with_its_own_end_only_when_nothing_of_its_session_comes_between() {
        let n = ALONE;
        let cases: Vec<(Vec<Event>, Vec<usize>)> = vec![
            (vec![start(1, 1, None), end(1, 1, None)], vec![1, 0]),
            // Other sessions between: still folded, each with its own.
            (
                vec![start(1, 1, None), start(2, 1, None), chunk(3), end(1, 1, None), end(2, 1, None)],
                vec![3, 4, n, 0, 1],
            ),
            // A chunk (or any record) of the same session between: not folded.
            (vec![start(1, 1, None), chunk(1), end(1, 1, None)], vec![n, n, n]),
            // A pipeline: each statement's next record is the next statement.
            (vec![start(1, 1, None), start(1, 2, None), end(1, 1, None), end(1, 2, None)], vec![n, n, n, n]),
            // Another statement's end, another session's end of the same seq.
            (vec![start(1, 1, None), end(1, 2, None)], vec![n, n]),
            (vec![start(1, 1, None), end(2, 1, None)], vec![n, n]),
            // An end alone, a start alone, an end before its start.
            (vec![end(1, 1, None), start(1, 2, None)], vec![n, n]),
            (vec![end(1, 1, None), start(1, 1, None)], vec![n, n]),
            // A statement started twice: the second start folds with the end.
            (vec![start(1, 1, None), start(1, 1, None), end(1, 1, None)], vec![n, 2, 1]),
            (vec![start(1, 1, None), end(1, 1, None), end(1, 1, None)], vec![1, 0, n]),
        ];
        for (i, (events, want)) in cases.into_iter().enumerate() {
            assert_eq!(pairs(&entries(events)), want, "case {i}");
        }
    }

    #[test]
    fn decimal_is_what_display_writes() {
        for n in [0, 7, 10, 99, 100, 65_536, 1 << 40, usize::MAX] {
            let mut b = b"x".to_vec();
            decimal(&mut b, n);
            assert_eq!(b, format!("x{n}").into_bytes());
        }
    }

    #[test]
    fn a_folded_record_splits_into_the_two_records_as_the_session_made_them() {
        let up: &[u8] = b"Q\0\0\0\x0dSELECT 1\0";
        let down: &[u8] = b"T\0\0\0\x06\0\0C\0\0\0\x0dSELECT 1\0Z\0\0\0\x05I";
        for (u, d) in
            [(Some(up), Some(down)), (Some(up), None), (None, Some(down)), (None, None), (Some(&b""[..]), Some(down))]
        {
            let e = entries(vec![start(1, 7, u), end(1, 7, d)]);
            let (s, x) = (&e[0], &e[1]);
            let body = body(s, x);
            assert!(serde_json::from_slice::<serde_json::Value>(&body).is_ok(), "{}", String::from_utf8_lossy(&body));
            let folded = Record {
                seq: 12,
                time_us: 3_000,
                session: Some(sid(1).to_string()),
                kind: "statement".into(),
                body,
                data: data(s, x),
                content_hash: [1; 32],
                redacted: false,
                prev_hash: [2; 32],
                hash: [3; 32],
            };
            let (a, b) = split(&folded).expect("folded");
            assert_eq!(
                (a.kind.as_str(), &a.body, a.data.as_deref()),
                ("statement", &s.body().to_vec(), s.data()),
                "{u:?} {d:?}"
            );
            assert_eq!(
                (b.kind.as_str(), &b.body, b.data.as_deref()),
                ("statement_end", &x.body().to_vec(), x.data()),
                "{u:?} {d:?}"
            );
            // The statement at its own time (`started_us`), the end at the record's.
            assert_eq!((a.seq, a.hash, b.seq, b.hash, a.time_us, b.time_us), (12, [3; 32], 12, [3; 32], 1_000, 3_000));
            // Not folded: an unfolded statement, a redacted record, another kind.
            let plain = Record { body: s.body().to_vec(), data: s.data().map(<[u8]>::to_vec), ..folded.clone() };
            assert!(split(&plain).is_none());
            assert!(split(&Record { redacted: true, body: Vec::new(), data: None, ..folded.clone() }).is_none());
            assert!(split(&Record { kind: "statement_end".into(), ..folded }).is_none());
        }
    }
}
