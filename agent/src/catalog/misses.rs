//! When to read a catalog again for a name it does not hold (see
//! `protocol::postgres::catalog::reread_for_unknown` and
//! `protocol::mysql::views`): a name made outside Gatehouse since the last
//! read (a view over a table with masked columns, or over a denied one)
//! counts from the first statement that names it, so *every* statement
//! naming a relation the catalog does not hold has it read again before it
//! is decided — a read that starts after the statement arrived. A name
//! looked up a moment ago is not taken as absent still: the view may have
//! been made in between (a user polling a name a DBA is about to create
//! would otherwise read it, for up to a second, undecided).
//!
//! What bounds the cost to the backend is a budget per Unix user: at most
//! `max` such reads per [`WINDOW`] each. Past it the statement is refused
//! ([`Lookup::Spent`], "try again in a second"), never let through unread.
//! Per user, so one user's flood of made-up names refuses only that user's
//! statements, not everyone's sharing the backend login.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The budget's window.
pub const WINDOW: Duration = Duration::from_secs(1);
/// Users remembered before windows that ended are forgotten.
const MAX_USERS: usize = 4096;

/// What to do about names a catalog does not hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// Read the catalog again, then decide (the read is counted).
    Read,
    /// This user's reads of this window are taken: refuse the statement
    /// (it may name what was made since the last read).
    Spent,
}

#[derive(Debug)]
pub struct Misses {
    /// Per Unix user: when their window began, and the reads in it.
    users: HashMap<u32, (Instant, u32)>,
    max: u32,
}

impl Misses {
    /// At most `max` reads per [`WINDOW`] per user.
    pub fn new(max: u32) -> Self {
        Self { users: HashMap::new(), max }
    }

    /// Whether `uid`'s statement naming relations the catalog does not hold
    /// may have it read again now; a read is counted.
    pub fn check(&mut self, uid: u32) -> Lookup {
        let now = Instant::now();
        if self.users.len() >= MAX_USERS && !self.users.contains_key(&uid) {
            self.users.retain(|_, (w, _)| now.duration_since(*w) < WINDOW);
        }
        let (window, reads) = self.users.entry(uid).or_insert((now, 0));
        if now.duration_since(*window) >= WINDOW {
            *window = now;
            *reads = 0;
        }
        if *reads >= self.max {
            return Lookup::Spent;
        }
        *reads += 1;
        Lookup::Read
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_statement_is_read_for_within_a_budget_per_user() {
        let mut m = Misses::new(3);
        for _ in 0..3 {
            assert_eq!(m.check(1001), Lookup::Read, "the same user, the same name again: read again");
        }
        assert_eq!(m.check(1001), Lookup::Spent, "a fourth read within the window: not let through unread");
        assert_eq!(m.check(1002), Lookup::Read, "another user's budget is their own");
        m.users.get_mut(&1001).unwrap().0 = Instant::now() - WINDOW;
        assert_eq!(m.check(1001), Lookup::Read, "the next window");
    }

    #[test]
    fn the_users_remembered_stay_bounded() {
        let mut m = Misses::new(1);
        let n = u32::try_from(MAX_USERS).expect("a small number") + 10;
        for uid in 0..n {
            m.check(uid);
        }
        assert!(m.users.len() <= MAX_USERS + 10);
        for (w, _) in m.users.values_mut() {
            *w = Instant::now() - WINDOW;
        }
        m.check(999_999);
        assert!(m.users.len() <= 1, "ended windows are forgotten when the map is full");
    }
}
