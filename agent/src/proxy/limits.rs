//! What keeps one local user from starving the agent: the descriptor limit
//! raised at start, a spare descriptor for accepting under EMFILE, accept
//! back-off, and log lines that cannot flood the disk.

use std::os::fd::OwnedFd;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tracing::{info, warn};

/// Raises RLIMIT_NOFILE: as root up to `fs.nr_open` (at most 1,048,576),
/// otherwise the soft limit up to the hard one. Returns the soft limit in force.
pub fn raise_nofile() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(1 << 20)
        .min(1 << 20);
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else { return 1024 };
    let want = nr_open.max(hard);
    if setrlimit(Resource::RLIMIT_NOFILE, want, want).is_ok() {
        return want;
    }
    if setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return hard;
    }
    soft
}

/// A log line that is written at most once per `every`, saying how many
/// were held back in between: an accept loop failing a million times a
/// second writes one line every ten seconds, not a gigabyte.
#[derive(Debug)]
pub struct RateLimited {
    every: Duration,
    last: Mutex<Option<Instant>>,
    held_back: AtomicU64,
}

impl RateLimited {
    pub const fn new(every: Duration) -> Self {
        Self { every, last: Mutex::new(None), held_back: AtomicU64::new(0) }
    }

    /// `Some(n)`: log now, `n` lines were held back since the last one.
    pub fn admit(&self) -> Option<u64> {
        let now = Instant::now();
        let mut last = self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match *last {
            Some(t) if now.duration_since(t) < self.every => {
                self.held_back.fetch_add(1, Ordering::Relaxed);
                None
            }
            _ => {
                *last = Some(now);
                Some(self.held_back.swap(0, Ordering::Relaxed))
            }
        }
    }
}

/// One descriptor kept open (on /dev/null) so that, when the process runs
/// out (EMFILE/ENFILE), an accept loop can still take the waiting connection
/// off the queue and close it instead of spinning on it.
#[derive(Debug)]
pub struct Spare(Mutex<Option<OwnedFd>>);

impl Spare {
    pub fn new() -> Self {
        Self(Mutex::new(open_spare()))
    }

    /// Frees the spare descriptor; `restore` takes it again.
    pub fn release(&self) {
        drop(self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take());
    }

    pub fn restore(&self) {
        let mut g = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if g.is_none() {
            *g = open_spare();
        }
    }
}

impl Default for Spare {
    fn default() -> Self {
        Self::new()
    }
}

fn open_spare() -> Option<OwnedFd> {
    std::fs::File::open("/dev/null").ok().map(OwnedFd::from)
}

/// Whether an accept error means the process or system is out of descriptors.
pub fn out_of_descriptors(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// Back-off after accept errors: 10 ms doubling to 640 ms, reset on success.
#[derive(Debug, Default)]
pub struct Backoff(u32);

impl Backoff {
    pub fn delay(&mut self) -> Duration {
        self.0 = (self.0 + 1).min(7);
        Duration::from_millis(10 << (self.0 - 1))
    }

    pub fn reset(&mut self) {
        self.0 = 0;
    }
}

/// Logs an accept failure, rate-limited.
pub fn log_accept_error(limit: &RateLimited, what: &str, e: &std::io::Error) {
    if let Some(held) = limit.admit() {
        if held > 0 {
            warn!(error = %e, held_back = held, "{what} accept failed (repeated failures held back)");
        } else {
            warn!(error = %e, "{what} accept failed");
        }
    }
}

/// Logs the descriptor limit in force.
pub fn log_nofile(limit: u64) {
    info!(nofile = limit, "descriptor limit");
}

/// How many connections the agent holds for each local user at once
/// (`[agent] max_connections_per_user`): a session of PostgreSQL, MySQL,
/// SSH or opaque TCP is one (its client's connection and its backend's),
/// and an HTTP session is one while it holds at most one connection to its
/// backend and counts each one more (one per request in flight; an HTTP/2
/// client's streams on one socket would otherwise become as many backend
/// connections): it lends its own count to its first backend connection
/// (`protocol::http::upstream`), so an idle client connection counts too.
/// The agent's source ports towards one backend address are
/// shared by every user (about 28,000 with Linux's default
/// `ip_local_port_range`): without a bound, one user could take them all.
/// Root is not counted (it can detach the programs anyway).
#[derive(Debug)]
pub struct PerUser {
    max: usize,
    open: Mutex<std::collections::HashMap<u32, usize>>,
}

/// The setting's name, which every refusal for it names.
const PER_USER_SETTING: &str = "max_connections_per_user";

/// One connection counted against a user; given back when dropped.
#[derive(Debug)]
pub struct UserSlot {
    of: std::sync::Arc<PerUser>,
    uid: u32,
}

impl PerUser {
    pub fn new(max: usize) -> std::sync::Arc<Self> {
        std::sync::Arc::new(Self { max, open: Mutex::new(std::collections::HashMap::new()) })
    }

    /// A slot for one more connection of `uid`, or why there is none.
    pub fn take(self: &std::sync::Arc<Self>, uid: u32) -> Result<Option<UserSlot>, String> {
        if uid == 0 {
            return Ok(None);
        }
        let mut open = crate::proxy::lock(&self.open);
        let n = open.entry(uid).or_insert(0);
        if *n >= self.max {
            return Err(format!(
                "uid {uid} already holds {} connections through the agent ([agent] {PER_USER_SETTING} = {})",
                *n, self.max
            ));
        }
        *n += 1;
        Ok(Some(UserSlot { of: self.clone(), uid }))
    }

    /// For `gatehouse status`: the limit and what each uid holds now.
    pub fn stats(&self) -> serde_json::Value {
        let open = crate::proxy::lock(&self.open);
        let by_uid: std::collections::BTreeMap<String, usize> = open.iter().map(|(u, n)| (u.to_string(), *n)).collect();
        serde_json::json!({ "max_connections_per_user": self.max, "open_by_uid": by_uid })
    }
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        let mut open = crate::proxy::lock(&self.of.open);
        if let Some(n) = open.get_mut(&self.uid) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.uid);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_user_holds_at_most_max_connections() {
        let per = PerUser::new(2);
        let a = per.take(1001).expect("first").expect("counted");
        let b = per.take(1001).expect("second").expect("counted");
        let why = per.take(1001).expect_err("third");
        assert!(why.contains("uid 1001 already holds 2") && why.contains(PER_USER_SETTING), "{why}");
        // Another user has slots of its own; root is not counted.
        assert!(per.take(1002).expect("another user").is_some());
        for _ in 0..10 {
            assert!(per.take(0).expect("root").is_none());
        }
        drop(a);
        let c = per.take(1001).expect("a slot given back").expect("counted");
        drop((b, c));
        assert_eq!(per.stats()["open_by_uid"], serde_json::json!({}), "emptied counts are removed");
    }

    #[test]
    fn rate_limited_lines_count_what_they_held_back() {
        let r = RateLimited::new(Duration::from_secs(3600));
        assert_eq!(r.admit(), Some(0));
        for _ in 0..1000 {
            assert_eq!(r.admit(), None);
        }
        let r2 = RateLimited::new(Duration::ZERO);
        assert_eq!(r2.admit(), Some(0));
        assert_eq!(r2.admit(), Some(0));
    }

    #[test]
    fn backoff_grows_to_a_second_and_resets() {
        let mut b = Backoff::default();
        let first = b.delay();
        assert_eq!(first, Duration::from_millis(10));
        let mut last = first;
        for _ in 0..20 {
            last = b.delay();
        }
        assert_eq!(last, Duration::from_millis(640));
        b.reset();
        assert_eq!(b.delay(), Duration::from_millis(10));
    }
}
