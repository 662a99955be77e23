//! Refused connections must not fill the audit store: a loop of dials to the
//! proxy port (or to a backend the policy refuses) would otherwise write a
//! session per dial until the disk is full, and strict mode would then refuse
//! everyone.
//!
//! * Aggregation: the first refusal of a kind (not redirected, unverified
//!   kernel record, denied by policy) from one uid to one backend in a window
//!   (`refusal_window`, default 60 s) is recorded in full; the rest of that
//!   window are counted, and one aggregate session record (decision `deny`,
//!   `refused ×N` with first and last time) is written when the window ends
//!   or the agent stops.
//! * Disk reserve: when the audit store's filesystem has less free space than
//!   `audit_disk_reserve`, refusals are no longer recorded at all (only
//!   counted, shown in `gatehouse status`), so allowed sessions keep the
//!   space that is left.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use tracing::error;

use super::limits::RateLimited;
use crate::audit::{SessionClose, SessionOpen};
use crate::types::SessionId;

/// What kind of refusal, for aggregation and for the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalKind {
    /// Someone dialed the proxy port: no kernel record.
    NotRedirected,
    /// A kernel record exists for the client address but not for this connection.
    Unverified,
    /// The policy (or a failed audit store) refused the connection.
    Denied,
}

impl RefusalKind {
    fn label(self) -> &'static str {
        match self {
            Self::NotRedirected => "not redirected",
            Self::Unverified => "unverified kernel record",
            Self::Denied => "denied",
        }
    }
}

/// Who was refused what.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RefusalKey {
    pub uid: Option<u32>,
    pub kind: RefusalKind,
    pub backend: Option<String>,
}

/// What to do with one refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Record it in full (the first of its kind in this window).
    Record,
    /// Count it into the window's aggregate record.
    Aggregate,
    /// The disk reserve is reached: not recorded (counted in status only).
    Unrecorded,
}

#[derive(Debug)]
struct Bucket {
    window_start_us: i64,
    first_us: i64,
    last_us: i64,
    held: u64,
    /// The first record's fields, reused by the aggregate.
    sample: SessionOpen,
}

/// Free space on the audit store's filesystem, checked every second.
#[derive(Debug)]
pub struct DiskReserve {
    dir: PathBuf,
    reserve: u64,
    free: AtomicU64,
    low: AtomicBool,
}

impl DiskReserve {
    pub fn new(audit_db: &std::path::Path, reserve: u64) -> Self {
        let dir = audit_db.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(std::path::Path::new(".")).into();
        let r = Self { dir, reserve, free: AtomicU64::new(u64::MAX), low: AtomicBool::new(false) };
        r.refresh();
        r
    }

    /// Reads the free space again (a statvfs: call it off the async workers).
    pub fn refresh(&self) {
        if let Ok(s) = nix::sys::statvfs::statvfs(&self.dir) {
            let free = s.blocks_available().saturating_mul(s.fragment_size());
            self.free.store(free, Ordering::Relaxed);
            self.low.store(free < self.reserve, Ordering::Relaxed);
        }
    }

    pub fn low(&self) -> bool {
        self.low.load(Ordering::Relaxed)
    }

    pub fn free(&self) -> u64 {
        self.free.load(Ordering::Relaxed)
    }

    pub fn reserve(&self) -> u64 {
        self.reserve
    }
}

/// Counters for `gatehouse status`.
#[derive(Debug, Clone, Serialize)]
pub struct RefusalStats {
    /// Refusals counted into an aggregate record instead of a record each.
    pub aggregated: u64,
    /// Refusals not recorded at all because the disk reserve was reached.
    pub unrecorded: u64,
    pub disk_free: u64,
    pub disk_reserve: u64,
    pub disk_reserve_reached: bool,
    pub window_secs: u64,
}

#[derive(Debug)]
pub struct Refusals {
    window_us: i64,
    buckets: Mutex<HashMap<RefusalKey, Bucket>>,
    aggregated: AtomicU64,
    unrecorded: AtomicU64,
    pub disk: DiskReserve,
    log: RateLimited,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Refusals {
    pub fn new(window: Duration, disk: DiskReserve) -> Self {
        Self {
            window_us: i64::try_from(window.as_micros()).unwrap_or(i64::MAX).max(1),
            buckets: Mutex::new(HashMap::new()),
            aggregated: AtomicU64::new(0),
            unrecorded: AtomicU64::new(0),
            disk,
            log: RateLimited::new(Duration::from_secs(10)),
        }
    }

    /// Decides how one refusal is recorded. `rec`: its full record, kept as
    /// the sample of a new window.
    pub fn admit(&self, key: RefusalKey, rec: &SessionOpen) -> (Admit, Vec<(SessionOpen, SessionClose)>) {
        if self.disk.low() {
            self.unrecorded.fetch_add(1, Ordering::Relaxed);
            if let Some(held) = self.log.admit() {
                error!(
                    free = self.disk.free(),
                    reserve = self.disk.reserve(),
                    held_back = held,
                    "audit disk reserve reached: refused connections are no longer recorded, so allowed sessions keep the space"
                );
            }
            return (Admit::Unrecorded, Vec::new());
        }
        let now = rec.started_us;
        let mut b = lock(&self.buckets);
        let mut closed = Vec::new();
        let admit = match b.get_mut(&key) {
            Some(bucket) if now - bucket.window_start_us < self.window_us => {
                if bucket.held == 0 {
                    bucket.first_us = now;
                }
                bucket.held += 1;
                bucket.last_us = now;
                self.aggregated.fetch_add(1, Ordering::Relaxed);
                Admit::Aggregate
            }
            _ => {
                let fresh = Bucket { window_start_us: now, first_us: now, last_us: now, held: 0, sample: rec.clone() };
                if let Some(old) = b.insert(key.clone(), fresh) {
                    closed.extend(aggregate(&key, old));
                }
                Admit::Record
            }
        };
        (admit, closed)
    }

    /// The aggregate records of windows that have ended (all of them when
    /// `all`, at shutdown); their buckets are forgotten.
    pub fn due(&self, now_us: i64, all: bool) -> Vec<(SessionOpen, SessionClose)> {
        let mut b = lock(&self.buckets);
        let ended: Vec<RefusalKey> = b
            .iter()
            .filter(|(_, v)| all || now_us - v.window_start_us >= self.window_us)
            .map(|(k, _)| k.clone())
            .collect();
        let mut out = Vec::new();
        let mut held = 0;
        for k in ended {
            if let Some(v) = b.remove(&k) {
                held += v.held;
                out.extend(aggregate(&k, v));
            }
        }
        if self.disk.low() {
            // The refusals these records would count go unrecorded after all.
            self.unrecorded.fetch_add(held, Ordering::Relaxed);
            return Vec::new();
        }
        out
    }

    pub fn stats(&self) -> RefusalStats {
        RefusalStats {
            aggregated: self.aggregated.load(Ordering::Relaxed),
            unrecorded: self.unrecorded.load(Ordering::Relaxed),
            disk_free: self.disk.free(),
            disk_reserve: self.disk.reserve(),
            disk_reserve_reached: self.disk.low(),
            window_secs: u64::try_from(self.window_us / 1_000_000).unwrap_or(0),
        }
    }
}

/// One session-shaped record for the refusals a window held back.
fn aggregate(key: &RefusalKey, b: Bucket) -> Option<(SessionOpen, SessionClose)> {
    if b.held == 0 {
        return None;
    }
    let id = SessionId::new();
    let reason = format!(
        "{} more refusal(s) ({}) like the one recorded at {}, aggregated: one record per uid, kind and backend per window",
        b.held,
        key.kind.label(),
        b.sample.started_us
    );
    let open = SessionOpen {
        id,
        started_us: b.first_us,
        client: format!("{} connections", b.held),
        decision: crate::audit::Verdict::Deny,
        reason,
        ..b.sample
    };
    let close = SessionClose {
        id,
        ended_us: b.last_us,
        bytes_up: 0,
        bytes_down: 0,
        end_reason: format!("refused ×{}", b.held),
    };
    Some((open, close))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(at: i64, uid: u32) -> SessionOpen {
        SessionOpen {
            id: SessionId::new(),
            started_us: at,
            uid: Some(uid),
            user: None,
            gid: None,
            pid: None,
            comm: None,
            cgroup_id: None,
            client: "127.0.0.1:4000".into(),
            backend: None,
            orig_dst: None,
            protocol: None,
            decision: crate::audit::Verdict::Deny,
            rule: None,
            reason: "not redirected".into(),
            oidc: None,
        }
    }

    fn refusals(reserve: u64) -> Refusals {
        Refusals::new(Duration::from_secs(60), DiskReserve::new(&std::env::temp_dir().join("x.db"), reserve))
    }

    #[test]
    fn one_record_per_window_and_one_aggregate_with_the_count() {
        let r = refusals(0);
        let key = RefusalKey { uid: Some(1001), kind: RefusalKind::NotRedirected, backend: None };
        assert_eq!(r.admit(key.clone(), &rec(0, 1001)).0, Admit::Record);
        for i in 1..=999 {
            assert_eq!(r.admit(key.clone(), &rec(i, 1001)).0, Admit::Aggregate);
        }
        // Another uid has its own window.
        let other = RefusalKey { uid: Some(1002), ..key.clone() };
        assert_eq!(r.admit(other, &rec(5, 1002)).0, Admit::Record);
        assert!(r.due(59_000_000, false).is_empty(), "the window is still open");
        // A refusal after the window starts a new one and closes the old.
        let (admit, closed) = r.admit(key.clone(), &rec(61_000_000, 1001));
        assert_eq!(admit, Admit::Record);
        assert_eq!(closed.len(), 1);
        let (open, close) = &closed[0];
        assert_eq!(close.end_reason, "refused ×999");
        assert_eq!(open.uid, Some(1001));
        assert_eq!((open.started_us, close.ended_us), (1, 999));
        assert!(open.reason.starts_with("999 more refusal(s) (not redirected)"), "{}", open.reason);
        // At shutdown everything left is flushed; empty windows write nothing.
        assert!(r.due(0, true).is_empty());
        assert_eq!(r.stats().aggregated, 999);
    }

    #[test]
    fn past_the_disk_reserve_refusals_are_only_counted() {
        let r = refusals(u64::MAX);
        let key = RefusalKey { uid: Some(1), kind: RefusalKind::Denied, backend: Some("db".into()) };
        assert_eq!(r.admit(key, &rec(0, 1)).0, Admit::Unrecorded);
        assert_eq!(r.stats().unrecorded, 1);
        assert!(r.stats().disk_reserve_reached);
    }
}
