//! Recording a session's two byte streams: chunks within a cap, the cap
//! and any loss themselves on record.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use super::{Audit, ChunkHeader, Direction, Event, Mode, Offer, Truncation};
use crate::types::SessionId;

/// How much of one direction of a stream may still be recorded. The data
/// path and a resetting task share it, hence the mutex (never held across I/O).
#[derive(Debug)]
struct Budget {
    cap: u64,
    /// Bytes recorded so far, and whether the cut was already recorded.
    used: Mutex<(u64, bool)>,
}

impl Budget {
    fn new(cap: u64) -> Self {
        Self { cap, used: Mutex::new((0, false)) }
    }

    /// A fresh budget; except a budget of nothing (`record_max_bytes = 0`),
    /// which stays spent: its one truncation record per session and
    /// direction says nothing is recorded. (Refilled, it made two truncation
    /// records per statement, saying the same thing each time.)
    fn reset(&self) {
        if self.cap > 0 {
            *self.used.lock().unwrap_or_else(PoisonError::into_inner) = (0, false);
        }
    }

    /// The cap was reached and that is on record: nothing more is recorded.
    fn spent(&self) -> bool {
        self.used.lock().unwrap_or_else(PoisonError::into_inner).1
    }

    /// How many of `n` bytes may be recorded; `true` the first time the cap is hit.
    fn take(&self, n: u64) -> (u64, bool) {
        let mut g = self.used.lock().unwrap_or_else(PoisonError::into_inner);
        let allowed = n.min(self.cap.saturating_sub(g.0));
        g.0 += allowed;
        let first_cut = allowed < n && !g.1;
        g.1 |= allowed < n;
        (allowed, first_cut)
    }
}

/// Records a session's two byte streams as chunks, each direction within a
/// cap (per statement for PostgreSQL, which resets it; per session for TCP).
/// Reaching the cap is itself recorded, once per budget: never silent.
///
/// When the writer's queue is full, strict mode waits for room (the relay
/// reads nothing more meanwhile: backpressure); best-effort mode drops the
/// chunk and records the loss (bytes and chunks, per direction) as soon as
/// the queue takes records again, or when the session ends ([`Self::finish`]).
#[derive(Debug)]
pub struct StreamRecorder {
    session: SessionId,
    up: Budget,
    down: Budget,
    /// What the cap applies to, for the truncation record.
    per: &'static str,
    /// Bytes and chunks dropped (queue full) and not yet on record: [up, down].
    lost: Mutex<[(u64, u64); 2]>,
}

/// How long strict mode waits between offers while the queue is full.
const QUEUE_FULL_WAIT: Duration = Duration::from_millis(1);

impl StreamRecorder {
    pub fn new(session: SessionId, cap: u64, per: &'static str) -> Self {
        Self { session, up: Budget::new(cap), down: Budget::new(cap), per, lost: Mutex::new([(0, 0); 2]) }
    }

    /// Whether direction `dir` has spent its budget (and its truncation
    /// record is written): until a reset, nothing more of it is recorded.
    pub fn spent(&self, dir: Direction) -> bool {
        match dir {
            Direction::Up => self.up.spent(),
            Direction::Down => self.down.spent(),
        }
    }

    /// A new statement starts: both directions get a fresh budget (see `Budget::reset`).
    pub fn reset(&self) {
        self.up.reset();
        self.down.reset();
    }

    /// Records `bytes` (as written to the other side) at `offset` in direction `dir`.
    pub async fn chunk(&self, audit: &Audit, dir: Direction, offset: u64, bytes: &[u8], statement: Option<u64>) {
        let (data, cut) = self.fold(dir, bytes, statement);
        if !data.is_empty() {
            self.deliver(audit, dir, Event::Chunk { session: self.session, header: ChunkHeader { dir, offset }, data })
                .await;
        }
        if let Some(cut) = cut {
            let _ = audit.record(cut);
        }
    }

    /// Queues a record that carries bytes of direction `dir` (a chunk, or a
    /// statement's end with the result bytes folded in). When the queue is
    /// full, strict mode waits for room; best-effort mode drops it and
    /// counts the bytes lost, to be put on record.
    pub async fn deliver(&self, audit: &Audit, dir: Direction, mut e: Event) {
        let n = e.data().map_or(0, |d| d.len() as u64);
        if n > 0 {
            self.report_loss(audit);
        }
        loop {
            match audit.offer(e) {
                Ok(()) => break,
                Err(Offer::Full(back)) if audit.mode() == Mode::Strict => {
                    e = back;
                    tokio::time::sleep(QUEUE_FULL_WAIT).await;
                }
                Err(Offer::Full(_)) => {
                    if n > 0 {
                        let mut lost = self.lost.lock().unwrap_or_else(PoisonError::into_inner);
                        if let Some(slot) = lost.get_mut(usize::from(dir == Direction::Down)) {
                            slot.0 += n;
                            slot.1 += 1;
                        }
                    }
                    break;
                }
                // A failed store ends the session (audit watchdog); nothing to add.
                Err(Offer::Failed(_)) => break,
            }
        }
    }

    /// Takes what the budget of direction `dir` allows of `bytes`, for a
    /// record that carries them itself (a statement's, folding the bytes sent
    /// with it instead of a chunk record of their own). Returns the bytes to
    /// carry and, the first time the cap is hit, the truncation record to
    /// write after that record.
    pub fn fold(&self, dir: Direction, bytes: &[u8], statement: Option<u64>) -> (Vec<u8>, Option<Event>) {
        let budget = match dir {
            Direction::Up => &self.up,
            Direction::Down => &self.down,
        };
        let (n, first_cut) = budget.take(bytes.len() as u64);
        let data = bytes.get(..usize::try_from(n).unwrap_or(0)).unwrap_or_default().to_vec();
        let cut = first_cut.then(|| Event::Truncated {
            session: self.session,
            truncation: Truncation {
                dir,
                statement,
                cap: budget.cap,
                reason: if budget.cap == 0 {
                    "bytes not recorded: record_max_bytes is 0".to_owned()
                } else {
                    format!("recording capped at {} bytes per {} (record_max_bytes)", budget.cap, self.per)
                },
            },
        });
        (data, cut)
    }

    /// Puts any loss not yet on record on record (call when the session ends).
    pub fn finish(&self, audit: &Audit) {
        self.report_loss(audit);
    }

    /// Bytes and chunks lost so far and not yet on record, per direction [up, down].
    pub fn pending_loss(&self) -> [(u64, u64); 2] {
        *self.lost.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn report_loss(&self, audit: &Audit) {
        let mut lost = self.lost.lock().unwrap_or_else(PoisonError::into_inner);
        for (i, dir) in [Direction::Up, Direction::Down].into_iter().enumerate() {
            let Some(slot) = lost.get_mut(i) else { continue };
            let (bytes, chunks) = *slot;
            if bytes == 0 {
                continue;
            }
            let truncation = Truncation {
                dir,
                statement: None,
                cap: 0,
                reason: format!(
                    "{bytes} bytes in {chunks} chunk(s) not recorded: the audit queue was full (best-effort mode)"
                ),
            };
            if audit.offer(Event::Truncated { session: self.session, truncation }).is_ok() {
                *slot = (0, 0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc::{Receiver, channel};

    /// An `Audit` whose queue holds one record and is drained by the test.
    fn audit(mode: Mode) -> (Audit, Receiver<super::super::Command>, Arc<AtomicUsize>) {
        let (tx, rx) = channel();
        let (fail_tx, failure) = tokio::sync::watch::channel(None);
        let queued = Arc::new(AtomicUsize::new(0));
        let audit = Audit {
            tx,
            queued: queued.clone(),
            depth: 1,
            mode,
            failure,
            fail_tx: Arc::new(fail_tx),
            public_key: Arc::new(std::sync::Mutex::new([0; 32])),
            journal: None,
            trail_key: crate::trail::HashKey([0; 32]),
            wake: Arc::default(),
        };
        (audit, rx, queued)
    }

    /// Takes a command off the queue, as the writer does.
    fn take(rx: &Receiver<super::super::Command>, queued: &AtomicUsize) -> super::super::Command {
        let c = rx.recv().unwrap();
        queued.fetch_sub(1, Ordering::Relaxed);
        c
    }

    fn event(c: super::super::Command) -> Event {
        match c {
            super::super::Command::Append(e, _) => e,
            _ => panic!("not an append"),
        }
    }

    #[tokio::test]
    async fn best_effort_records_what_a_full_queue_dropped() {
        let (audit, rx, queued) = audit(Mode::BestEffort);
        let rec = StreamRecorder::new(SessionId::new(), 1 << 20, "session and direction");
        rec.chunk(&audit, Direction::Up, 0, b"first", None).await;
        rec.chunk(&audit, Direction::Up, 5, b"dropped!", None).await;
        rec.chunk(&audit, Direction::Down, 0, b"also dropped", None).await;
        assert_eq!(rec.pending_loss(), [(8, 1), (12, 1)]);
        assert!(matches!(event(take(&rx, &queued)), Event::Chunk { .. }));
        rec.finish(&audit);
        let Event::Truncated { truncation: t, .. } = event(take(&rx, &queued)) else { panic!("a loss record") };
        assert_eq!(t.dir, Direction::Up);
        assert!(t.reason.starts_with("8 bytes in 1 chunk(s) not recorded"), "{}", t.reason);
        // The queue was full again: the other direction's loss waits, still counted.
        assert_eq!(rec.pending_loss(), [(0, 0), (12, 1)]);
        rec.finish(&audit);
        let Event::Truncated { truncation: t, .. } = event(take(&rx, &queued)) else { panic!("a loss record") };
        assert_eq!(t.dir, Direction::Down);
        assert_eq!(rec.pending_loss(), [(0, 0), (0, 0)]);
    }

    #[test]
    fn a_budget_of_nothing_is_put_on_record_once_and_never_refilled() {
        let rec = StreamRecorder::new(SessionId::new(), 0, "statement and direction");
        let (data, cut) = rec.fold(Direction::Down, b"rows", Some(1));
        assert!(data.is_empty());
        let Some(Event::Truncated { truncation: t, .. }) = cut else { panic!("a truncation record") };
        assert_eq!(
            (t.dir, t.cap, t.reason.as_str()),
            (Direction::Down, 0, "bytes not recorded: record_max_bytes is 0")
        );
        rec.reset();
        assert!(rec.spent(Direction::Down), "a new statement does not refill a budget of nothing");
        let (data, cut) = rec.fold(Direction::Down, b"more rows", Some(2));
        assert!(data.is_empty() && cut.is_none());
        // The other direction is put on record once too.
        assert!(matches!(rec.fold(Direction::Up, b"SELECT 1", Some(2)).1, Some(Event::Truncated { .. })));
        // A budget of some bytes is refilled per statement, and its cut recorded each time.
        let rec = StreamRecorder::new(SessionId::new(), 2, "statement and direction");
        for statement in 1..=2 {
            let (data, cut) = rec.fold(Direction::Down, b"rows", Some(statement));
            assert_eq!(data, b"ro");
            assert!(matches!(cut, Some(Event::Truncated { .. })), "statement {statement}");
            rec.reset();
            assert!(!rec.spent(Direction::Down));
        }
    }

    fn trail_record() -> Event {
        let rec = crate::trail::TrailRecord {
            session: SessionId::new(),
            statement: 1,
            time_us: 0,
            table: "public.customers".into(),
            table_oid: 1,
            key: Some("id".into()),
            rows: 3,
            keys: 3,
            hashed: false,
            key_masked: false,
            masked: false,
            keyless: None,
        };
        Event::Trail(Box::new(rec), vec![1, 2, 3])
    }

    #[tokio::test]
    async fn trail_records_wait_for_room_in_strict_mode_and_are_dropped_only_in_best_effort() {
        // Best effort: a full queue drops the trail record, and says so.
        let (best, rx, queued) = audit(Mode::BestEffort);
        best.commit_all(vec![trail_record()]).await.unwrap();
        assert!(matches!(best.commit_all(vec![trail_record()]).await, Err(super::super::AuditError::QueueFull)));
        assert!(matches!(event(take(&rx, &queued)), Event::Trail(..)));
        assert!(rx.try_recv().is_err(), "the second was dropped");

        // Strict: it waits until the writer takes the one before it.
        let (strict, rx, queued) = audit(Mode::Strict);
        strict.commit_all(vec![trail_record()]).await.unwrap();
        let drained = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = drained.clone();
        let drain = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            flag.store(true, Ordering::SeqCst);
            (event(take(&rx, &queued)), event(take(&rx, &queued)))
        });
        strict.commit_all(vec![trail_record()]).await.unwrap();
        assert!(drained.load(Ordering::SeqCst), "the second trail record waited for room");
        let (a, b) = drain.join().unwrap();
        assert!(matches!((a, b), (Event::Trail(..), Event::Trail(..))), "both reached the writer");
    }

    #[tokio::test]
    async fn strict_waits_for_room_instead_of_dropping() {
        let (audit, rx, queued) = audit(Mode::Strict);
        let rec = StreamRecorder::new(SessionId::new(), 1 << 20, "session and direction");
        rec.chunk(&audit, Direction::Up, 0, b"first", None).await;
        let drained = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = drained.clone();
        let drain = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
            let a = event(take(&rx, &queued));
            let b = event(take(&rx, &queued));
            (a, b)
        });
        rec.chunk(&audit, Direction::Up, 5, b"second", None).await;
        assert!(drained.load(std::sync::atomic::Ordering::SeqCst), "the second chunk must wait for room");
        let (_, second) = drain.join().unwrap();
        let Event::Chunk { data, header, .. } = second else { panic!("the second chunk") };
        assert_eq!((data.as_slice(), header.offset), (&b"second"[..], 5));
        assert_eq!(rec.pending_loss(), [(0, 0), (0, 0)]);
    }
}
