//! When to read a catalog again for a name it does not hold (see
//! `protocol::postgres::catalog::reread_for_unknown` and
//! `protocol::mysql::views`): a name made outside Gatehouse since the last
//! read counts from the first statement that names it, so a name not looked
//! up recently always earns a read; the same missing name (a temporary
//! table, a typo) at most once per [`WINDOW`]; and all of them together at
//! most `max` times per window, so a flood of made-up names costs the
//! backend a bounded number of catalog reads.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How long a name looked up and not found is not looked up again.
pub const WINDOW: Duration = Duration::from_secs(1);
/// Names remembered at most (older ones are forgotten first).
const MAX_NAMES: usize = 10_000;

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

    /// Whether the catalog should be read again for these names it does
    /// not hold; if so, the names and the read are noted.
    pub fn allow(&mut self, unknown: impl IntoIterator<Item = String>) -> bool {
        let now = Instant::now();
        let fresh: Vec<String> = unknown
            .into_iter()
            .filter(|n| self.names.get(n).is_none_or(|t| now.duration_since(*t) >= WINDOW))
            .collect();
        if fresh.is_empty() {
            return false;
        }
        if self.window.is_none_or(|w| now.duration_since(w) >= WINDOW) {
            self.window = Some(now);
            self.reads = 0;
        }
        if self.reads >= self.max {
            return false;
        }
        self.reads += 1;
        if self.names.len() + fresh.len() > MAX_NAMES {
            self.names.retain(|_, t| now.duration_since(*t) < WINDOW);
        }
        for n in fresh.into_iter().take(MAX_NAMES) {
            self.names.insert(n, now);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_name_is_read_for_at_once_a_missing_one_once_a_second_a_flood_a_few_times() {
        let mut m = Misses::new(3);
        assert!(m.allow(["public.v".to_owned()]), "a name never looked up");
        assert!(!m.allow(["public.v".to_owned()]), "the same name, again at once");
        assert!(m.allow(["public.w".to_owned(), "public.v".to_owned()]), "another name");
        assert!(m.allow(["public.x".to_owned()]));
        assert!(!m.allow(["public.y".to_owned()]), "a fourth read within the window");
        assert!(!m.allow(Vec::<String>::new()));
        m.window = Some(Instant::now() - WINDOW);
        assert!(m.allow(["public.y".to_owned()]), "the next window");
    }
}
