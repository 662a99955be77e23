//! Arbitrary bytes through the MySQL decoders (packet framing, greeting,
//! client login, OK/ERR/EOF, auth switch, binary result rows and values,
//! COM_STMT_EXECUTE parameters, COM_FIELD_LIST and its column definitions'
//! defaults) and the MySQL statement classifier: none may panic, a decoded
//! packet never claims more bytes than it was given, and a column
//! definition that loses its default keeps everything before it and grows
//! no longer.
#![no_main]

use std::borrow::Cow;

use gatehouse::protocol::mysql::{binary, field_list, wire};
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
        for (k, v) in kinds.iter().zip(v.iter().flatten()) {
            let _ = binary::decode(*k, false, v);
        }
    }
    // Execute parameters: as many as the first byte says, types sent or bound before.
    let count = u16::from(data.first().copied().unwrap_or(0) % 8);
    let rest = data.get(1..).unwrap_or_default();
    let earlier = [0x08, 0x00, 0xfd, 0x00, 0x0a, 0x00, 0x05, 0x80, 0x01, 0x00, 0x0b, 0x00, 0xf6, 0x00, 0x03, 0x80];
    if let Some(p) = binary::params(rest, count, Some(&earlier)) {
        assert_eq!(p.len(), usize::from(count));
        for p in p.into_iter().flatten() {
            let _ = binary::decode(p.kind, p.unsigned, p.value);
        }
    }
    let _ = binary::bound_types(rest, count);
    if let Ok(f) = field_list::parse(data) {
        assert!(!f.table.is_empty() && f.table.is_ascii());
        let _ = field_list::as_statement(f.table, Some("db"));
    }
    match field_list::without_default(data) {
        Ok(Cow::Borrowed(same)) => assert_eq!(same, data),
        Ok(Cow::Owned(def)) => {
            assert!(def.len() <= data.len(), "a definition without its default grew");
            let Some((last, head)) = def.split_last() else { panic!("a rewritten definition is empty") };
            assert_eq!(*last, 0xfb, "the default is NULL");
            assert!(data.starts_with(head), "what precedes the default is kept");
            assert!(matches!(field_list::without_default(&def), Ok(Cow::Borrowed(_))), "nothing left to drop");
        }
        Err(_) => {}
    }
    let first = data.first().copied().unwrap_or(0);
    let names = Names { database: Some("db".into()), fold_case: first & 1 == 1, masked: first & 2 == 2 };
    if let Ok(c) = classify(data, &names) {
        assert!(!c.statement.kinds.is_empty(), "a classified statement has a kind");
    }
});
