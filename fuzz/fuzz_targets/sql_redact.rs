//! Arbitrary bytes into what the audit trail keeps of a statement and of
//! the client's byte stream, and into the certificate reader: never a
//! panic; a redacted text never grows a secret it did not have; the
//! recorded stream is still whole messages.
#![no_main]

use gatehouse::protocol::postgres::tls::der;
use gatehouse::sql::redact::{RecordOptions, Rules, StreamView, client_bytes, redact};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let rules = Rules::default();
    if let Ok(sql) = std::str::from_utf8(data) {
        for scs in [true, false] {
            for normalize in [false, true] {
                let r = redact(sql, &rules, RecordOptions { normalize, parameters: false }, scs);
                assert!(r.secrets > 0 || r.normalized > 0 || r.text == sql, "changed without counting: {sql:?}");
            }
        }
    }
    let view = StreamView { rules: &rules, opts: RecordOptions::default(), profile: None, scs: true };
    let _ = client_bytes(data, &view);
    let _ = der::not_after(data);
    let _ = der::end_point_hash(data);
});
