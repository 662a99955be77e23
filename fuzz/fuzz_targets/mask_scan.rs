//! Arbitrary bytes through the masking engine with every detector enabled
//! (and an operator regex): `scan` and `mask_value` must never panic,
//! `Unchanged`/`Null` must leave the output buffer alone, and valid UTF-8
//! in must give valid UTF-8 out.
#![no_main]

use std::sync::OnceLock;

use gatehouse::mask::{Counts, Detector, MaskKey, MaskOutput, Profile, ProfileSpec, Style, TokenScope};
use libfuzzer_sys::fuzz_target;

fn profile(style: Style) -> Profile {
    let spec = ProfileSpec {
        name: "fuzz".into(),
        columns: vec![("*.ssn".into(), Style::Redact)],
        detectors: Detector::ALL.iter().filter(|&&d| d != Detector::Custom).map(|&d| (d, style)).collect(),
        custom: vec![("employee".into(), r"\bEMP-\d{4,8}\b".into(), style)],
        hash_key: MaskKey::new([0x5a; 32]),
        refuse_predicates: false,
    };
    Profile::compile(&spec).unwrap_or_else(|e| panic!("fuzz profile does not compile: {e}"))
}

static PROFILES: OnceLock<[Profile; 3]> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let profiles = PROFILES.get_or_init(|| [profile(Style::Redact), profile(Style::Partial), profile(Style::Hash)]);
    let utf8_in = std::str::from_utf8(data).is_ok();
    let mut out = Vec::new();
    for p in profiles {
        out.clear();
        let mut counts = Counts::default();
        match p.scan(data, &mut out, &mut counts) {
            MaskOutput::Unchanged | MaskOutput::Null => assert!(out.is_empty()),
            MaskOutput::Written => {
                assert!(counts.total() > 0, "written without a hit");
                assert!(!utf8_in || std::str::from_utf8(&out).is_ok(), "scan broke UTF-8");
            }
        }
        let key = p.token_key(TokenScope::Column { table: Some("t"), column: "c" });
        for style in [Style::Redact, Style::Partial, Style::Hash, Style::Null] {
            out.clear();
            match p.mask_value(style, &key, data, &mut out) {
                MaskOutput::Null => assert!(out.is_empty()),
                MaskOutput::Written => assert!(std::str::from_utf8(&out).is_ok(), "mask_value output is not UTF-8"),
                MaskOutput::Unchanged => panic!("mask_value never leaves a value unchanged"),
            }
        }
    }
});
