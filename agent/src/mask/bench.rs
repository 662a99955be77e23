//! A deterministic benchmark corpus and the scan loop the benchmark
//! harness times. Kept in the library (not behind `cfg(test)`) so the
//! harness and the engine agree on what "realistic" means.

use super::{Counts, Profile};

/// Longest value [`measure_throughput`] hands to `scan`, like a DB cell.
const MAX_VALUE: usize = 256;

/// xorshift64: deterministic, good enough to shuffle fragments.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number in `0..n` (0 when `n` is 0).
    fn below(&mut self, n: usize) -> usize {
        let n64 = u64::try_from(n).unwrap_or(u64::MAX).max(1);
        usize::try_from(self.next() % n64).unwrap_or(0)
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items.get(self.below(items.len())).copied().unwrap_or_default()
    }
}

const WORDS: &[&str] = &[
    "the",
    "order",
    "was",
    "shipped",
    "to",
    "customer",
    "warehouse",
    "invoice",
    "pending",
    "approved",
    "refund",
    "status",
    "account",
    "balance",
    "transfer",
    "delivery",
    "address",
    "street",
    "note",
    "please",
    "contact",
    "support",
    "regarding",
    "ticket",
    "update",
    "payment",
    "received",
    "thank",
    "you",
    "for",
    "your",
    "patience",
    "backorder",
    "quantity",
    "discount",
    "renewal",
    "subscription",
    "cancelled",
    "and",
    "with",
    "from",
    "Zürich",
    "café",
    "naïve",
    "São",
    "Paulo",
    "東京",
    "Москва",
    "Kraków",
    "résumé",
    "über",
    "Ελλάδα",
    "d'Alene",
    "O'Brien",
];

const CITIES: &[&str] = &["London NW1 6XE", "Berlin 10115", "Paris 75002", "Austin TX 78701", "Zürich 8001"];

/// Sensitive values sprinkled into the corpus, one kind per detector.
const SECRETS: &[&str] = &[
    "4111 1111 1111 1111",
    "5555555555554444",
    "378282246310005",
    "6011-1111-1111-1117",
    "jane.doe@example.com",
    "ops+alerts@mail.example.org",
    "+44 20 7946 0958",
    "(555) 123-4567",
    "+1 415-555-0132",
    "123-45-6789",
    "DE89 3704 0044 0532 0130 00",
    "GB82WEST12345698765432",
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.c2lnbmF0dXJlX2hlcmU",
    "AKIAIOSFODNN7EXAMPLE",
    "ghp_x1Y2x1Y2x1Y2x1Y2x1Y2x1Y2x1Y2x1Y2x1Y2",
    "xoxb-123456789012-1234567890123-AbCdEfGhIjKl",
];

/// One clean fragment: prose, identifiers, numbers, dates, addresses, JSON.
fn fragment(rng: &mut XorShift, line: &mut String) {
    use std::fmt::Write;
    let hex = |rng: &mut XorShift, n: usize| -> String {
        (0..n).map(|_| char::from_digit(u32::from(rng.next().to_le_bytes()[2] & 0x0f), 16).unwrap_or('0')).collect()
    };
    let n = rng.next();
    let small = n % 1000;
    let mid = (n >> 10) % 100_000;
    let _ = match rng.below(14) {
        0..=3 => {
            let words: Vec<&str> = (0..3 + rng.below(6)).map(|_| rng.pick(WORDS)).collect();
            write!(line, "{}", words.join(" "))
        }
        4 => write!(line, "id={mid}"),
        5 => write!(line, "EUR {},{:03}.{:02}", small, mid % 1000, n % 100),
        6 => write!(line, "2024-{:02}-{:02}", 1 + n % 12, 1 + small % 28),
        7 => write!(
            line,
            "2024-{:02}-{:02} {:02}:{:02}:{:02}.{:03}+00",
            1 + n % 12,
            1 + small % 28,
            n % 24,
            small % 60,
            mid % 60,
            small
        ),
        8 => write!(line, "10.{}.{}.{}", n % 256, small % 256, mid % 256),
        9 => {
            let h = hex(rng, 32);
            let (a, rest) = h.split_at(8);
            let (b, rest) = rest.split_at(4);
            let (c, rest) = rest.split_at(4);
            let (d, e) = rest.split_at(4);
            write!(line, "{a}-{b}-{c}-{d}-{e}")
        }
        10 => write!(line, "ORD-{:08}", mid * 7),
        11 => write!(line, "sha={}", hex(rng, 32)),
        12 => {
            write!(line, r#"{{"qty":{},"sku":"AB-{:04}","price":{}.{:02}}}"#, small % 20, mid % 10_000, small, n % 100)
        }
        _ => write!(line, "{} {} Street, {}", 1 + small, rng.pick(&["Baker", "Main", "Hauptstraße"]), rng.pick(CITIES)),
    };
}

/// A deterministic mixed corpus of exactly `size` bytes for throughput
/// benchmarks: newline-separated "cells" of 80–240 bytes of prose (with
/// some non-ASCII), ids, amounts, dates, timestamps, IPs, UUIDs, hashes and
/// JSON, with a sensitive value in about one cell in twenty (one hit per
/// ~3 KB). Valid UTF-8.
pub fn bench_corpus(size: usize) -> Vec<u8> {
    let mut rng = XorShift(0x2545_F491_4F6C_DD1D);
    let mut corpus = Vec::with_capacity(size);
    let mut line = String::new();
    loop {
        line.clear();
        let target = 80 + rng.below(140);
        let secret_at = (rng.below(20) == 0).then(|| rng.below(3));
        let mut k = 0;
        while line.len() < target {
            if !line.is_empty() {
                line.push_str(if rng.below(3) == 0 { ", " } else { " " });
            }
            if secret_at == Some(k) {
                line.push_str(rng.pick(SECRETS));
                line.push(' ');
            }
            fragment(&mut rng, &mut line);
            k += 1;
        }
        if corpus.len() + line.len() + 1 > size {
            break;
        }
        corpus.extend_from_slice(line.as_bytes());
        corpus.push(b'\n');
    }
    // Fill the rest with ASCII so the corpus is exactly `size` bytes.
    let filler = b"lorem ipsum dolor sit amet ";
    while corpus.len() < size {
        corpus.push(filler.get(corpus.len() % filler.len()).copied().unwrap_or(b' '));
    }
    corpus
}

/// Runs [`Profile::scan`] over `corpus` `iterations` times, cut into values
/// the way a result set arrives: one value per line, lines longer than
/// 256 bytes cut into 256-byte values. Returns (bytes scanned, hits); the
/// caller times it. Splitting happens once, before the loop.
pub fn measure_throughput(profile: &Profile, corpus: &[u8], iterations: usize) -> (u64, u64) {
    let mut values: Vec<&[u8]> = Vec::with_capacity(corpus.len() / 64);
    let mut start = 0;
    for end in memchr::memchr_iter(b'\n', corpus).chain(std::iter::once(corpus.len())) {
        values.extend(corpus.get(start..end).unwrap_or_default().chunks(MAX_VALUE));
        start = end + 1;
    }
    let per_pass: u64 = values.iter().map(|v| v.len() as u64).sum();
    let mut out = Vec::with_capacity(2 * MAX_VALUE);
    let mut counts = Counts::default();
    let mut bytes = 0u64;
    for _ in 0..iterations {
        for value in &values {
            out.clear();
            let r = profile.scan(value, &mut out, &mut counts);
            std::hint::black_box((r, &out));
        }
        bytes = bytes.saturating_add(per_pass);
    }
    (bytes, counts.total())
}
