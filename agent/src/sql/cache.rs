//! A cache of classifications by exact statement text.

use super::{ParseOptions, SqlError, Statement};

/// A cache of classifications by exact text (and parse options): drivers
/// send the same statement texts again and again (prepared statements,
/// ORMs). Only an exact repeat hits, so a cached answer is always the one a
/// fresh parse would give. Bounded: when full it starts over.
#[derive(Debug, Default)]
pub struct Cache {
    map: std::sync::Mutex<std::collections::HashMap<CacheKey, std::sync::Arc<[Statement]>>>,
}

/// (standard_conforming_strings, exact text).
type CacheKey = (bool, Box<str>);

impl Cache {
    const MAX_ENTRIES: usize = 4096;
    const MAX_TEXT: usize = 4096;

    /// Like [`classify_with`], from the cache when the same text was seen.
    pub fn classify(&self, sql: &str, options: ParseOptions) -> Result<Vec<Statement>, SqlError> {
        let key_ok = sql.len() <= Self::MAX_TEXT;
        if key_ok {
            let map = self.map.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(hit) = map.get(&(options.standard_conforming_strings, Box::from(sql))) {
                return Ok(hit.to_vec());
            }
        }
        let fresh = super::parse(sql, options)?;
        if key_ok {
            let mut map = self.map.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if map.len() >= Self::MAX_ENTRIES {
                map.clear();
            }
            map.insert((options.standard_conforming_strings, Box::from(sql)), fresh.clone().into());
        }
        Ok(fresh)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::{Kind, classify};

    #[test]
    fn the_cache_answers_exactly_what_a_fresh_parse_does() {
        let cache = Cache::default();
        let opts = ParseOptions::default();
        for sql in ["SELECT 1", "SELECT 1", "DELETE FROM t", "SELECT 1; DROP TABLE t", "DELETE FROM t"] {
            let cached: Vec<Vec<Kind>> =
                cache.classify(sql, opts).unwrap().iter().map(|s| s.kinds.iter().copied().collect()).collect();
            let fresh: Vec<Vec<Kind>> =
                classify(sql).unwrap().iter().map(|s| s.kinds.iter().copied().collect()).collect();
            assert_eq!(cached, fresh, "{sql}");
        }
        // The parse options are part of the key.
        let legacy = ParseOptions { standard_conforming_strings: false };
        assert!(cache.classify("SELECT 'a\\'' ; DROP TABLE t; --'", opts).is_ok());
        let l = cache.classify("SELECT 'a\\'' ; DROP TABLE t; --'", legacy).unwrap();
        assert!(l.iter().any(|s| s.kinds.contains(&Kind::Drop)), "{l:?}");
        assert!(cache.classify("SELEC nonsense", opts).is_err(), "errors are not cached as successes");
    }
}
