//! Arbitrary bytes through the MySQL decoders (packet framing, greeting,
//! client login, OK/ERR/EOF, auth switch, binary result rows) and the MySQL statement
//! classifier: none may panic, and a decoded packet never claims more
//! bytes than it was given.
#![no_main]

use gatehouse::protocol::mysql::{binary, wire};
use gatehouse::sql::mysql::{Names, classify};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some((p, n)) = wire::decode(data) {
        assert!(n <= data.len() && p.payload.len() + 4 == n);
    }
    let _ = wire::parse_greeting(data);
    let _ = wire::parse_login(data);
    let _ = wire::parse_err(data);
    let _ = wire::parse_ok(data);
    let _ = wire::parse_eof(data);
    let _ = wire::parse_auth_switch(data);
    let _ = wire::lenenc_str(data);
    // A row of LONG, VAR_STRING, DATETIME, DOUBLE, TIME, NEWDECIMAL, NULL.
    let kinds = [0x03, 0xfd, 0x0c, 0x05, 0x0b, 0xf6, 0x06];
    if let Some(v) = binary::values(&kinds, data) {
        assert_eq!(v.len(), kinds.len());
    }
    let names = Names { database: Some("db".into()), fold_case: data.first().is_some_and(|b| b & 1 == 1) };
    if let Ok(c) = classify(data, &names) {
        assert!(!c.statement.kinds.is_empty(), "a classified statement has a kind");
    }
});
