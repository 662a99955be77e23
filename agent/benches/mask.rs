//! Detector throughput in MB/s per core on a mixed corpus (`cargo xtask
//! bench mask` runs it beside the end-to-end 1M-row measurement). A
//! measurement, not a test.
#![expect(clippy::expect_used, reason = "a benchmark harness")]

use std::time::Instant;

use gatehouse::mask::{Detector, Profile, ProfileSpec, Style, bench_corpus, measure_throughput};

fn profile(custom: bool) -> Profile {
    let detectors =
        Detector::ALL.iter().copied().filter(|d| *d != Detector::Custom).map(|d| (d, Style::Partial)).collect();
    let mut spec = ProfileSpec {
        name: "bench".into(),
        detectors,
        hash_key: gatehouse::mask::MaskKey::new([7; 32]),
        ..ProfileSpec::default()
    };
    if custom {
        spec.custom.push(("employee-id".into(), "EMP-[0-9]{6}".into(), Style::Hash));
    }
    Profile::compile(&spec).expect("profile")
}

/// Best of several runs, in MB/s of one thread's CPU-bound scanning.
fn mbps(p: &Profile, corpus: &[u8]) -> (f64, u64) {
    let mut best = 0.0f64;
    let mut hits = 0;
    for _ in 0..7 {
        let t = Instant::now();
        let (bytes, h) = measure_throughput(p, corpus, 3);
        let rate = bytes as f64 / t.elapsed().as_secs_f64() / 1e6;
        best = best.max(rate);
        hits = h;
    }
    (best, hits)
}

fn main() {
    let corpus = bench_corpus(16 << 20);
    let (builtin, hits) = mbps(&profile(false), &corpus);
    let (with_regex, _) = mbps(&profile(true), &corpus);
    println!(
        "mask detectors, 16 MiB mixed corpus ({hits} hits per pass): all built-in {builtin:.0} MB/s, + 1 regex {with_regex:.0} MB/s (goal >= 600)"
    );
    println!("ratio mask_detectors builtin/goal600 = {:.2}", builtin / 600.0);
    println!("ratio mask_detectors with_regex/goal600 = {:.2}", with_regex / 600.0);
}
