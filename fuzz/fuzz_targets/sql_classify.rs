//! Arbitrary UTF-8 into the statement classifier: it must return a result
//! (usually a parse error), never panic, and never give a statement no kind;
//! the lineage of what parses binds without a panic.
#![no_main]

use gatehouse::sql::{ParseOptions, classify, classify_with};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(sql) = std::str::from_utf8(data) else { return };
    let legacy = ParseOptions { standard_conforming_strings: false };
    for statements in [classify(sql), classify_with(sql, legacy)].into_iter().flatten() {
        assert!(statements.iter().all(|s| !s.kinds.is_empty()), "statement without a kind: {sql:?}");
        // Lineage is computed with every classification; binding it never panics either.
        for s in &statements {
            if let Some(l) = &s.lineage {
                let _ = gatehouse::catalog::Catalog::builtin().bind(l, &s.reads);
            }
        }
    }
});
