//! The budget's lexer against PostgreSQL's: for arbitrary UTF-8, every
//! token pg_query's scanner produces and every node location of the real
//! parse tree (with standard_conforming_strings on and off) must start
//! where `sql::shape` starts a token, and its token and statement counts
//! must not fall short. A mismatch would let a text hide tokens from the
//! per-query budget.
#![no_main]

use gatehouse::sql::shape::differential;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(sql) = std::str::from_utf8(data) else { return };
    for scs in [true, false] {
        if let Err(e) = differential(sql, scs) {
            panic!("{e}");
        }
    }
});
