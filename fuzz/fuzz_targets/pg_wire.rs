//! Every PostgreSQL wire decoder over arbitrary bytes: never a panic.
#![no_main]

use gatehouse::protocol::postgres::wire;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = wire::decode_startup(data);
    let mut rest = data;
    while let Ok(Some((frame, n))) = wire::decode(rest, 1 << 20) {
        let _ = wire::query_text(frame.body);
        let _ = wire::parse_body(frame.body);
        let _ = wire::bind_names(frame.body);
        let _ = wire::bind_result_formats(frame.body);
        let _ = wire::notification(frame.body);
        let _ = wire::execute_portal(frame.body);
        let _ = wire::target_name(frame.body, "fuzz");
        let _ = wire::error_fields(frame.body);
        let _ = wire::auth(frame.body);
        let _ = wire::parameter_status(frame.body);
        let _ = wire::backend_key(frame.body);
        let _ = wire::row_description(frame.body);
        let _ = wire::data_row_values(frame.body);
        let _ = wire::command_rows(frame.body);
        match rest.get(n..) {
            Some(r) if !r.is_empty() => rest = r,
            _ => break,
        }
    }
});
