//! When to read a catalog again for a name it does not hold (see
//! `protocol::postgres::catalog::reread_for_unknown` and
//! `protocol::mysql::views`): a name made outside Gatehouse since the last
//! read counts from the first statement that names it, so a name not looked
//! up recently always earns a read; the same missing name (a temporary
//! table, a typo) at most once per [`WINDOW`]; and all of them together at
//! most `max` times per window, so a flood of made-up names costs the
//! backend a bounded number of catalog reads. A new name past that budget
//! is not let through unread ([`Lookup::Spent`]: the statement is refused),
//! or a flood of made-up names would open a window for a view made
//! meanwhile.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How long a name looked up and not found is not looked up again.
pub const WINDOW: Duration = Duration::from_secs(1);
/// Names remembered at most (older ones are forgotten first).
const MAX_NAMES: usize = 10_000;

/// What to do about names a catalog does not hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// Read the catalog again (the names are noted).
    Read,
    /// Each was looked up within the [`WINDOW`]: go on with the catalog as it is.
    Recent,
    /// A name not looked up recently, but this window's reads are taken:
    /// refuse the statement (it may name what was made meanwhile).
    Spent,
}

#[derive(Debug)]
pub struct Misses {
    names: HashMap<String, Instant>,
    window: Option<Instant>,
    reads: u32,
    max: u32,
}

impl Misses {
    /// At most `max` reads per [`WINDOW`].
    pub fn new(max: u32) -> Self {
        Self { names: HashMap::new(), window: None, reads: 0, max }
    }

    /// What to do about these names the catalog does not hold; a read is noted.
    pub fn check(&mut self, unknown: impl IntoIterator<Item = String>) -> Lookup {
        let now = Instant::now();
        let fresh: Vec<String> = unknown
            .into_iter()
            .filter(|n| self.names.get(n).is_none_or(|t| now.duration_since(*t) >= WINDOW))
            .collect();
        if fresh.is_empty() {
            return Lookup::Recent;
        }
        if self.window.is_none_or(|w| now.duration_since(w) >= WINDOW) {
            self.window = Some(now);
            self.reads = 0;
        }
        if self.reads >= self.max {
            return Lookup::Spent;
        }
        self.reads += 1;
        if self.names.len() + fresh.len() > MAX_NAMES {
            self.names.retain(|_, t| now.duration_since(*t) < WINDOW);
        }
        for n in fresh.into_iter().take(MAX_NAMES) {
            self.names.insert(n, now);
        }
        Lookup::Read
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_name_is_read_for_at_once_a_missing_one_once_a_second_a_flood_a_few_times() {
        let mut m = Misses::new(3);
        let n = |s: &str| [s.to_owned()];
        assert_eq!(m.check(n("public.v")), Lookup::Read, "a name never looked up");
        assert_eq!(m.check(n("public.v")), Lookup::Recent, "the same name, again at once");
        assert_eq!(m.check(["public.w".to_owned(), "public.v".to_owned()]), Lookup::Read, "another name");
        assert_eq!(m.check(n("public.x")), Lookup::Read);
        assert_eq!(m.check(n("public.y")), Lookup::Spent, "a fourth read within the window: not let through unread");
        assert_eq!(m.check(n("public.x")), Lookup::Recent, "a name read for in this window still goes on");
        assert_eq!(m.check(Vec::<String>::new()), Lookup::Recent);
        m.window = Some(Instant::now() - WINDOW);
        assert_eq!(m.check(n("public.y")), Lookup::Read, "the next window");
    }
}
