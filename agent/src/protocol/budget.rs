//! The budget all sessions' large messages share (`[agent]
//! large_message_budget`): what relay buffers may hold past a small free
//! part each, across every session together, PostgreSQL and MySQL alike.
//! A message past what is left ends its own session, not the agent.

/// What one relay buffer may hold without counting against the shared budget (see [`LARGE`]);
/// a buffer that grew past it gives the room back once its messages are
/// through (PostgreSQL: the relay's `settle`; MySQL: a connection's buffer
/// starting over small).
pub(crate) const FREE_PER_BUFFER: usize = 64 * 1024;

/// Bytes of the shared budget for large messages taken (`[agent]
/// large_message_budget`: what large messages — a long value in a row, a big
/// Query or Bind, COPY data — may take in relay buffers across every session
/// together). One session's message past what is left ends that session, not
/// the agent: a user with many sessions each reading a 200 MB value would
/// otherwise hold gigabytes (a buffer keeps its size), and the agent serves
/// everyone.
pub(crate) static LARGE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A buffer's share of the budget (of `budget` bytes): the most it grew to
/// past [`FREE_PER_BUFFER`] since it was last settled. Given back when dropped.
#[derive(Debug)]
pub(crate) struct Room {
    pub(crate) held: usize,
    pub(crate) budget: usize,
    pub(crate) pool: &'static std::sync::atomic::AtomicUsize,
}

impl Room {
    pub(crate) fn new(budget: usize) -> Self {
        Self { held: 0, budget, pool: &LARGE }
    }

    /// Takes what a buffer of `capacity` bytes needs beyond what is held;
    /// `Err(capacity)` when the shared budget does not have it.
    pub(crate) fn grow_to(&mut self, capacity: usize) -> Result<(), usize> {
        use std::sync::atomic::Ordering;
        let need = capacity.saturating_sub(FREE_PER_BUFFER);
        if need <= self.held {
            return Ok(());
        }
        let more = need - self.held;
        self.pool
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |taken| {
                taken.checked_add(more).filter(|t| *t <= self.budget)
            })
            .map_err(|_| capacity)?;
        self.held = need;
        Ok(())
    }

    pub(crate) fn release(&mut self) {
        self.pool.fetch_sub(std::mem::take(&mut self.held), std::sync::atomic::Ordering::AcqRel);
    }
}

impl Drop for Room {
    fn drop(&mut self) {
        self.release();
    }
}

/// What a session is told when a message would pass the shared budget.
pub(crate) fn over_budget(whose: &str, bytes: usize, budget: usize) -> String {
    format!(
        "{whose} message is larger than the agent can hold for it now ({} MB so far; large messages of all sessions share {} MB, [agent] large_message_budget): ask for less at once",
        bytes >> 20,
        budget >> 20
    )
}
