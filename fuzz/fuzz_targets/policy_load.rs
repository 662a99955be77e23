//! The policy loader over arbitrary text: errors with locations, never a panic.
#![no_main]

use gatehouse::policy::diag::Source;
use gatehouse::policy::load;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(p) = load::load(&[Source { path: "fuzz.toml".into(), text: text.to_owned() }]) {
        let _ = p.run_tests(jiff::Timestamp::UNIX_EPOCH);
    }
});
