//! The built-in value detectors: cheap prefilters that find candidate
//! positions, and hand-written validators that confirm or reject each one.
//!
//! Three passes, each run only when one of its detectors is enabled:
//! - digits ([`scan_digits`]: Card, UsSsn, Phone, Iban): SWAR bitmasks of
//!   the digits in 64-byte blocks; bit arithmetic keeps only the digit runs
//!   whose length and look-ahead fit one of the formats, and only those
//!   reach a validator (Luhn, SSA rules, IBAN length and mod-97);
//! - `@` ([`scan_emails`]): memchr, then the address is grown both ways;
//! - token prefixes ([`TokenFinder`]): one SIMD Teddy searcher (aho-corasick's
//!   packed module) over `eyJ`, `AKIA`, `ASIA`, `ghp_`… `github_pat_`,
//!   `xoxb-`…, then the token's body is checked.
//!
//! Every validator reads bytes through [`at`], which yields 0 past either end,
//! so arbitrary input never panics and "outside the value" reads as a
//! boundary. Matches start and end at ASCII bytes, so cutting them out of
//! valid UTF-8 leaves valid UTF-8.

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, Input, MatchKind, Span, packed};

use super::Detector;

/// A detector hit over `value[start..end]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RawHit {
    pub start: usize,
    pub end: usize,
    pub detector: Detector,
}

/// Which digit-anchored detectors are enabled.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct DigitSet {
    pub card: bool,
    pub ssn: bool,
    pub phone: bool,
    pub iban: bool,
}

impl DigitSet {
    pub fn any(self) -> bool {
        self.card || self.ssn || self.phone || self.iban
    }
}

/// The byte at `i`, or 0 outside the value (0 is never part of a match).
#[inline]
fn at(v: &[u8], i: usize) -> u8 {
    v.get(i).copied().unwrap_or(0)
}

/// The byte before `i`, or 0 at the start.
#[inline]
fn before(v: &[u8], i: usize) -> u8 {
    i.checked_sub(1).map_or(0, |j| at(v, j))
}

#[inline]
fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

#[inline]
fn is_b64url(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// Punctuation that glues digit groups into one larger number (`1.5`, `12-34`, `10:30`).
#[inline]
fn is_number_glue(b: u8) -> bool {
    matches!(b, b'.' | b',' | b'-' | b'/' | b':')
}

/// A numeric match may start at `s`: not inside a word, not the tail of a larger number.
fn left_ok(v: &[u8], s: usize) -> bool {
    let p = before(v, s);
    if is_word(p) {
        return false;
    }
    !(is_number_glue(p) && before(v, s.saturating_sub(1)).is_ascii_digit())
}

/// A numeric match may end at `e`: not inside a word, not the head of a larger number.
fn right_ok(v: &[u8], e: usize) -> bool {
    let n = at(v, e);
    if is_word(n) {
        return false;
    }
    !(is_number_glue(n) && at(v, e.saturating_add(1)).is_ascii_digit())
}

const LO: u64 = 0x0101_0101_0101_0101;
const HI: u64 = 0x8080_8080_8080_8080;

/// The high bit of every byte of `x` in `lo..=hi` (ASCII bounds; exact).
#[inline]
fn range_mask(x: u64, lo: u8, hi: u8) -> u64 {
    let low7 = x & !HI;
    // low7 + (0x80 - lo) carries into bit 7 iff low7 >= lo; low7 + (0x7f - hi)
    // iff low7 > hi. Neither sum can overflow a byte, so lanes stay independent.
    let ge = low7 + LO * u64::from(0x80 - lo);
    let gt = low7 + LO * u64::from(0x7f - hi);
    ge & !gt & !x & HI
}

/// The high bit of every byte of `x` that is an ASCII digit.
#[inline]
fn digit_mask(x: u64) -> u64 {
    range_mask(x, b'0', b'9')
}

/// Bit `i` for each byte `i` (0..8) whose high bit is set in the lane mask `m`.
#[inline]
fn lane_bits(m: u64) -> u64 {
    // Gathers the eight lane flags (bits 0, 8, …, 56 after the shift) into the top byte.
    ((m >> 7).wrapping_mul(0x0102_0408_1020_4080)) >> 56
}

/// Bit `i` set when byte `i` (0..8, little-endian) of `word` is an ASCII digit.
#[inline]
fn digit_bits(word: u64) -> u64 {
    lane_bits(digit_mask(word))
}

/// End of the digit run that starts at `s`.
#[inline]
fn run_end(v: &[u8], s: usize) -> usize {
    let mut e = s;
    while at(v, e).is_ascii_digit() {
        e += 1;
    }
    e
}

/// Bytes of the value the digit scanner classifies per step.
const BLOCK: usize = 64;

/// Bit `i` set when byte `base + i` of `v` is an ASCII digit (`i` in 0..64).
#[inline]
fn block_digits(v: &[u8], base: usize) -> u64 {
    let word_bits =
        |k: usize, chunk: &[u8]| digit_bits(u64::from_le_bytes(chunk.try_into().unwrap_or_default())) << (8 * k);
    if let Some(bytes) = v.get(base..base + BLOCK).and_then(|b| <&[u8; BLOCK]>::try_from(b).ok()) {
        return bytes.chunks_exact(8).enumerate().fold(0, |acc, (k, chunk)| acc | word_bits(k, chunk));
    }
    // The last, partial block: only the words that hold bytes of `v`.
    let rest = v.get(base..).unwrap_or_default();
    let mut padded = [0u8; BLOCK];
    if let Some(dst) = padded.get_mut(..rest.len()) {
        dst.copy_from_slice(rest);
    }
    padded.chunks_exact(8).take(rest.len().div_ceil(8)).enumerate().fold(0, |acc, (k, chunk)| acc | word_bits(k, chunk))
}

/// Finds cards, SSNs, phone numbers and IBANs, anchored on digit runs.
///
/// Works on 64-byte blocks. A SWAR pass turns each block into a bitmask of
/// digits; bit arithmetic on it (with the next block's mask as look-ahead)
/// keeps only the run starts whose shape can begin or lie in a match: a
/// 3-digit run with a digit two bytes after it (SSN, US phone,
/// `(555) 123…`), a 4-digit run followed by a separator and a 3+ digit
/// group (cards, IBANs in groups), a run of 13+ (cards) or 10+ (IBANs,
/// whose head is then looked for before the run). Runs after a `+` (found
/// with memchr) are kept for international phones. Only the survivors
/// reach the validators, so clean text and numbers cost a few instructions
/// per 8 bytes, not a validator call per number.
pub(crate) fn scan_digits(v: &[u8], set: DigitSet, hits: &mut Vec<RawHit>) {
    let mut plus = set.phone.then(|| memchr::memchr_iter(b'+', v).peekable());
    // Run starts before `resume` lie inside an earlier match.
    let mut resume = 0usize;
    let mut base = 0usize;
    let mut cur = block_digits(v, 0);
    // Whether the byte before the block is a digit.
    let mut digit_before = 0u64;
    while base < v.len() {
        let next = block_digits(v, base + BLOCK);
        // Bit i: byte base + i + k is a digit (1 <= k < 64).
        let la = |k: u32| (cur >> k) | (next << (64 - k));
        let starts = cur & !((cur << 1) | digit_before);

        let (d1, d2, d3, d4, d5) = (la(1), la(2), la(3), la(4), la(5));
        let exact3 = cur & d1 & d2 & !d3;
        let ge4 = cur & d1 & d2 & d3;
        let mut keep = 0u64;
        if set.ssn || set.phone {
            // ddd-dd-dddd, ddd-ddd-dddd, ddd.ddd.dddd, (ddd)ddd-dddd, (ddd) ddd-dddd
            keep |= exact3 & d5;
        }
        if set.card || set.iban {
            let grouped = ge4 & !d4 & d5 & la(6) & la(7);
            let ge10 = (4..=9).fold(ge4, |acc, k| acc & la(k));
            if set.card {
                keep |= grouped | (ge10 & la(10) & la(11) & la(12));
            }
            if set.iban {
                keep |= grouped | ge10;
            }
        }
        // A `+` at p announces a run at p + 1 (in this block if p + 1 < base + 64).
        while let Some(plus) = plus.as_mut()
            && let Some(i) = plus.peek().and_then(|&p| (p + 1).checked_sub(base)).filter(|&i| i < BLOCK)
        {
            keep |= 1 << i;
            plus.next();
        }
        keep &= starts;
        while keep != 0 {
            let i = keep.trailing_zeros();
            keep &= keep - 1;
            let s = base + i as usize;
            // Most candidates are 3-digit groups of amounts and addresses
            // (`1,234,567.89`, `10.100.1.2`); a glance at the separator
            // spares the validators (which would say no) for those.
            let sep = at(v, s + 3);
            let plain3 = (exact3 >> i) & 1 == 1
                && before(v, s) != b'+'
                && (sep == b',' || (sep == b'.' && at(v, s + 7) != b'.'));
            if s < resume || plain3 {
                continue;
            }
            match classify_run(v, s, set) {
                Run::Hit(hit) => {
                    resume = hit.end;
                    hits.push(hit);
                }
                Run::Skip(end) => resume = end,
                Run::Nothing => {}
            }
        }
        digit_before = cur >> 63;
        cur = next;
        base += BLOCK;
    }
}

/// What a digit run turned out to be.
enum Run {
    /// A sensitive value.
    Hit(RawHit),
    /// Something shaped like a sensitive value that failed its check (an
    /// IBAN failing mod-97): nothing inside it is looked at again, so its
    /// digits are not mistaken for a card.
    Skip(usize),
    Nothing,
}

/// Tries every enabled digit detector on the run starting at `s`. Most
/// runs are rejected by their length and neighbours alone. Kept out of line
/// so the scanner's loop stays small.
#[inline(never)]
fn classify_run(v: &[u8], s: usize, set: DigitSet) -> Run {
    let e = run_end(v, s);
    let len = e - s;
    let prev = before(v, s);
    let next = at(v, e);
    let hit = |start: usize, end: usize, detector: Detector| Run::Hit(RawHit { start, end, detector });

    // Every IBAN holds a run of 10+ digits or, printed in groups, a group of
    // four digits followed by another starting with three.
    let grouped = len == 4 && (1..=3).all(|k| at(v, e + k).is_ascii_digit());
    if set.iban && (len >= 10 || grouped) {
        match iban_around(v, s) {
            Some((start, end, true)) => return hit(start, end, Detector::Iban),
            Some((_, end, false)) => return Run::Skip(end),
            None => {}
        }
    }
    if set.phone
        && prev == b'+'
        && let Some(end) = phone_intl_at(v, s - 1)
    {
        return hit(s - 1, end, Detector::Phone);
    }
    if set.card
        && (len == 4 || (13..=19).contains(&len))
        && let Some(end) = card_at(v, s)
    {
        return hit(s, end, Detector::Card);
    }
    if len == 3 && matches!(next, b'-' | b'.' | b')') {
        if set.ssn
            && next == b'-'
            && let Some(end) = ssn_at(v, s)
        {
            return hit(s, end, Detector::UsSsn);
        }
        if set.phone {
            let found = if prev == b'(' {
                phone_us_paren_at(v, s - 1).map(|end| (s - 1, end))
            } else if left_ok(v, s) {
                phone_us_at(v, s).map(|end| (s, end))
            } else if matches!(prev, b'-' | b'.' | b' ') && before(v, s - 1) == b'1' && left_ok(v, s - 2) {
                // `1-800-555-0199`: the leading 1 is the NANP country code.
                phone_us_at(v, s).map(|end| (s - 2, end))
            } else {
                None
            };
            if let Some((start, end)) = found {
                return hit(start, end, Detector::Phone);
            }
        }
    }
    Run::Nothing
}

/// Luhn checksum over digit values (0–9).
pub(crate) fn luhn_ok(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            let d = u32::from(d);
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 { x - 9 } else { x }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// A payment card number starting at `s`: 13–19 digits, either unbroken or
/// in groups (first group of 4, then groups of 3–6) separated by one kind of
/// single space or dash; Luhn-valid, first digit 2–6 (the issuer ranges of
/// Visa, Mastercard, Amex, Diners, JCB, Discover, UnionPay, Maestro), not all
/// zeros, not glued to a longer number or word. When space-separated groups
/// run on (`4111 1111 1111 1111 2024-03-05`), the longest valid prefix
/// ending at a space is taken.
fn card_at(v: &[u8], s: usize) -> Option<usize> {
    if !left_ok(v, s) || !(b'2'..=b'6').contains(&at(v, s)) {
        return None;
    }
    let valid = |d: &[u8]| (13..=19).contains(&d.len()) && d.iter().any(|&x| x != 0) && luhn_ok(d);
    let mut digits = [0u8; 19];
    let mut n = 0usize;
    let mut i = s;
    let mut sep: Option<u8> = None;
    let mut group = 0usize;
    let mut groups = 0usize;
    // (end, digits so far) at each space between groups.
    let mut cuts = [(0usize, 0usize); 8];
    let mut broken = false;
    loop {
        let b = at(v, i);
        if b.is_ascii_digit() {
            let Some(slot) = digits.get_mut(n) else {
                broken = true;
                break;
            };
            *slot = b - b'0';
            n += 1;
            group += 1;
            i += 1;
        } else if (b == b' ' || b == b'-') && sep.is_none_or(|x| x == b) && at(v, i + 1).is_ascii_digit() {
            let ok = if groups == 0 { group == 4 } else { (3..=6).contains(&group) };
            if !ok {
                broken = true;
                break;
            }
            if b == b' '
                && let Some(cut) = cuts.get_mut(groups)
            {
                *cut = (i, n);
            }
            sep = Some(b);
            groups += 1;
            group = 0;
            i += 1;
        } else {
            break;
        }
    }
    let whole_ok = !broken && (groups == 0 || (1..=6).contains(&group)) && right_ok(v, i);
    if whole_ok && valid(digits.get(..n)?) {
        return Some(i);
    }
    let cuts = cuts.get(..groups.min(cuts.len()))?;
    cuts.iter().rev().find(|&&(_, k)| digits.get(..k).is_some_and(valid)).map(|&(end, _)| end)
}

/// Reads exactly `n` ASCII digits at `i` as a number.
fn digits_at(v: &[u8], i: usize, n: usize) -> Option<u32> {
    let mut x = 0u32;
    for k in 0..n {
        let b = at(v, i + k);
        if !b.is_ascii_digit() {
            return None;
        }
        x = x * 10 + u32::from(b - b'0');
    }
    Some(x)
}

/// A US Social Security number `ddd-dd-dddd` at `s`, valid under the SSA
/// rules: area not 000, 666 or 900–999; group not 00; serial not 0000.
fn ssn_at(v: &[u8], s: usize) -> Option<usize> {
    if !left_ok(v, s) || at(v, s + 3) != b'-' || at(v, s + 6) != b'-' {
        return None;
    }
    let area = digits_at(v, s, 3)?;
    let group = digits_at(v, s + 4, 2)?;
    let serial = digits_at(v, s + 7, 4)?;
    let end = s + 11;
    let valid = area != 0 && area != 666 && area < 900 && group != 0 && serial != 0;
    (valid && right_ok(v, end)).then_some(end)
}

/// A US number `ddd-ddd-dddd` or `ddd.ddd.dddd` at `s` (area code 2–9…);
/// the caller checks what comes before.
fn phone_us_at(v: &[u8], s: usize) -> Option<usize> {
    let sep = at(v, s + 3);
    if !matches!(sep, b'-' | b'.') || at(v, s + 7) != sep || !(b'2'..=b'9').contains(&at(v, s)) {
        return None;
    }
    digits_at(v, s, 3)?;
    digits_at(v, s + 4, 3)?;
    digits_at(v, s + 8, 4)?;
    let end = s + 12;
    right_ok(v, end).then_some(end)
}

/// A US number `(ddd) ddd-dddd` (space optional, `-`, `.` or space before the last four) at `p` = the `(`.
fn phone_us_paren_at(v: &[u8], p: usize) -> Option<usize> {
    if is_word(before(v, p)) || at(v, p + 4) != b')' || !(b'2'..=b'9').contains(&at(v, p + 1)) {
        return None;
    }
    digits_at(v, p + 1, 3)?;
    let mut i = p + 5;
    if at(v, i) == b' ' {
        i += 1;
    }
    digits_at(v, i, 3)?;
    if !matches!(at(v, i + 3), b'-' | b'.' | b' ') {
        return None;
    }
    digits_at(v, i + 4, 4)?;
    let end = i + 8;
    right_ok(v, end).then_some(end)
}

/// An international number at `p` = the `+`: a country code not starting
/// with 0, then 8–15 digits in all, with single spaces, dashes or dots
/// between groups and at most one parenthesised group (`+44 (0) 20 7946 0958`).
/// When space-separated groups run on past 15 digits or into something
/// else, the longest valid prefix ending at a space is taken.
fn phone_intl_at(v: &[u8], p: usize) -> Option<usize> {
    let prev = before(v, p);
    if is_word(prev) || prev == b'+' || !(b'1'..=b'9').contains(&at(v, p + 1)) {
        return None;
    }
    let mut i = p + 1;
    let mut digits = 0usize;
    let mut end = i;
    let mut after_sep = false;
    let mut paren: Option<bool> = None; // Some(true) while open, Some(false) once closed
    let mut at_space: Option<usize> = None; // end of a valid number followed by a space
    let mut overflow = false;
    loop {
        let b = at(v, i);
        if b.is_ascii_digit() {
            digits += 1;
            if digits > 15 {
                overflow = true;
                break;
            }
            after_sep = false;
            i += 1;
            end = i;
        } else if matches!(b, b' ' | b'-' | b'.') && !after_sep && paren != Some(true) {
            if b == b' ' && (8..=15).contains(&digits) {
                at_space = Some(i);
            }
            after_sep = true;
            i += 1;
        } else if b == b'(' && paren.is_none() && at(v, i + 1).is_ascii_digit() {
            paren = Some(true);
            after_sep = false;
            i += 1;
        } else if b == b')' && paren == Some(true) && before(v, i).is_ascii_digit() {
            paren = Some(false);
            after_sep = false;
            i += 1;
            end = i;
        } else {
            break;
        }
    }
    if overflow || paren == Some(true) || !(8..=15).contains(&digits) || !right_ok(v, end) {
        return at_space;
    }
    Some(end)
}

/// IBAN length per country (ISO 13616 registry).
fn iban_len(cc: [u8; 2]) -> Option<usize> {
    let n = match &cc {
        b"NO" => 15,
        b"BE" => 16,
        b"DK" | b"FI" | b"FO" | b"GL" | b"NL" | b"SD" | b"FK" => 18,
        b"MK" | b"SI" => 19,
        b"AT" | b"BA" | b"EE" | b"KZ" | b"LT" | b"LU" | b"XK" | b"MN" => 20,
        b"CH" | b"HR" | b"LI" | b"LV" => 21,
        b"BG" | b"BH" | b"CR" | b"DE" | b"GB" | b"GE" | b"IE" | b"ME" | b"RS" | b"VA" => 22,
        b"AE" | b"GI" | b"IL" | b"IQ" | b"TL" | b"SO" | b"OM" => 23,
        b"AD" | b"CZ" | b"ES" | b"MD" | b"PK" | b"RO" | b"SA" | b"SE" | b"SK" | b"TN" | b"VG" => 24,
        b"LY" | b"PT" | b"ST" => 25,
        b"IS" | b"TR" => 26,
        b"FR" | b"GR" | b"IT" | b"MC" | b"MR" | b"SM" | b"BI" | b"DJ" => 27,
        b"AL" | b"AZ" | b"BY" | b"CY" | b"DO" | b"GT" | b"HU" | b"LB" | b"PL" | b"SV" | b"HN" | b"NI" => 28,
        b"BR" | b"EG" | b"PS" | b"QA" | b"UA" => 29,
        b"JO" | b"KW" | b"MU" | b"YE" => 30,
        b"MT" | b"SC" => 31,
        b"LC" => 32,
        b"RU" => 33,
        _ => return None,
    };
    Some(n)
}

/// The IBAN-shaped value (start, end, passes mod-97) that contains the
/// digit run at `s`, if any: looks back up to 40 bytes of uppercase
/// letters, digits and spaces for its head (`CC` + check digits).
fn iban_around(v: &[u8], s: usize) -> Option<(usize, usize, bool)> {
    let lo = s.saturating_sub(40);
    let mut p = s;
    while p > lo && matches!(before(v, p), b'A'..=b'Z' | b'0'..=b'9' | b' ') {
        p -= 1;
    }
    (p..s).find_map(|h| {
        let head = at(v, h).is_ascii_uppercase()
            && at(v, h + 1).is_ascii_uppercase()
            && at(v, h + 2).is_ascii_digit()
            && at(v, h + 3).is_ascii_digit();
        let (end, valid) = if head { iban_at(v, h)? } else { return None };
        (end > s).then_some((h, end, valid))
    })
}

/// IBAN mod-97 check over the electronic form (country, check digits, BBAN).
pub(crate) fn iban_mod97_ok(iban: &[u8]) -> bool {
    let (head, bban) = iban.split_at(iban.len().min(4));
    let mut rem = 0u32;
    for &c in bban.iter().chain(head) {
        rem = match c {
            b'0'..=b'9' => (rem * 10 + u32::from(c - b'0')) % 97,
            b'A'..=b'Z' => (rem * 100 + u32::from(c - b'A') + 10) % 97,
            _ => return false,
        };
    }
    rem == 1
}

/// An IBAN-shaped value at `p` (its country code): the registered length
/// for the country, check digits 02–98, uppercase alphanumerics either
/// unbroken or printed in groups of four separated by single spaces.
/// Returns its end and whether it passes mod-97.
fn iban_at(v: &[u8], p: usize) -> Option<(usize, bool)> {
    if is_word(before(v, p)) {
        return None;
    }
    let len = iban_len([at(v, p), at(v, p + 1)])?;
    let check = digits_at(v, p + 2, 2)?;
    if !(2..=98).contains(&check) {
        return None;
    }
    let spaced = at(v, p + 4) == b' ';
    let mut buf = [0u8; 34];
    let mut n = 0usize;
    let mut i = p;
    while n < len {
        if spaced && n > 0 && n.is_multiple_of(4) {
            if at(v, i) != b' ' {
                return None;
            }
            i += 1;
        }
        let b = at(v, i);
        if !(b.is_ascii_digit() || b.is_ascii_uppercase()) {
            return None;
        }
        *buf.get_mut(n)? = b;
        n += 1;
        i += 1;
    }
    if is_word(at(v, i)) {
        return None;
    }
    Some((i, iban_mod97_ok(buf.get(..n)?)))
}

#[inline]
fn is_local(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'%' | b'+' | b'-')
}

#[inline]
fn is_domain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'.' || b == b'-'
}

/// The address around the `@` at `a`, as `(start, end)`: local part of
/// `[A-Za-z0-9._%+-]` (1–64 bytes, no leading, trailing or doubled dot;
/// leading dots in the text are left out), domain of at least two
/// `[A-Za-z0-9-]` labels (1–63 bytes, not starting or ending with `-`,
/// 253 bytes in all) whose last is alphabetic (2+ letters) or punycode.
pub(crate) fn email_at(v: &[u8], a: usize) -> Option<(usize, usize)> {
    const MAX_LOCAL: usize = 64;
    const MAX_DOMAIN: usize = 253;
    let mut l = a;
    while l > 0 && is_local(before(v, l)) {
        if a - l == MAX_LOCAL {
            return None;
        }
        l -= 1;
    }
    while at(v, l) == b'.' && l < a {
        l += 1;
    }
    let local = v.get(l..a)?;
    if local.is_empty() || local.last() == Some(&b'.') || local.windows(2).any(|w| w == b"..") {
        return None;
    }
    let d = a + 1;
    let mut r = d;
    while is_domain(at(v, r)) {
        if r - d == MAX_DOMAIN {
            return None;
        }
        r += 1;
    }
    while r > d && matches!(before(v, r), b'.' | b'-') {
        r -= 1;
    }
    let domain = v.get(d..r)?;
    let mut labels = 0usize;
    let mut last: &[u8] = &[];
    for label in domain.split(|&b| b == b'.') {
        let edge_ok = label.first() != Some(&b'-') && label.last() != Some(&b'-');
        if label.is_empty() || label.len() > 63 || !edge_ok {
            return None;
        }
        labels += 1;
        last = label;
    }
    let tld_ok = (last.len() >= 2 && last.iter().all(u8::is_ascii_alphabetic))
        || (last.len() >= 5 && last.get(..4).is_some_and(|p| p.eq_ignore_ascii_case(b"xn--")));
    (labels >= 2 && tld_ok).then_some((l, r))
}

/// Finds email addresses, anchored on `@`.
pub(crate) fn scan_emails(v: &[u8], hits: &mut Vec<RawHit>) {
    let mut pos = 0;
    while let Some(off) = v.get(pos..).and_then(|rest| memchr::memchr(b'@', rest)) {
        let a = pos + off;
        match email_at(v, a) {
            Some((start, end)) => {
                hits.push(RawHit { start, end, detector: Detector::Email });
                pos = end;
            }
            None => pos = a + 1,
        }
    }
}

/// The token detectors and the literal prefix each is anchored on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    Jwt,
    Aws,
    GithubClassic,
    GithubFine,
    Slack,
}

const TOKEN_PREFIXES: &[(&str, Token)] = &[
    ("eyJ", Token::Jwt),
    ("AKIA", Token::Aws),
    ("ASIA", Token::Aws),
    ("ghp_", Token::GithubClassic),
    ("gho_", Token::GithubClassic),
    ("ghu_", Token::GithubClassic),
    ("ghs_", Token::GithubClassic),
    ("ghr_", Token::GithubClassic),
    ("github_pat_", Token::GithubFine),
    ("xoxa-", Token::Slack),
    ("xoxb-", Token::Slack),
    ("xoxp-", Token::Slack),
    ("xoxr-", Token::Slack),
    ("xoxs-", Token::Slack),
];

impl Token {
    fn detector(self) -> Detector {
        match self {
            Token::Jwt => Detector::Jwt,
            Token::Aws => Detector::AwsKey,
            Token::GithubClassic | Token::GithubFine => Detector::GithubToken,
            Token::Slack => Detector::SlackToken,
        }
    }
}

/// The prefix automaton: SIMD Teddy straight away when the platform has it
/// (no automaton indirection per call: DB cells are short), else
/// Aho-Corasick.
#[derive(Debug, Clone)]
enum Prefixes {
    Packed(packed::Searcher),
    Automaton(AhoCorasick),
}

/// Finds secret tokens by their literal prefixes.
#[derive(Debug, Clone)]
pub(crate) struct TokenFinder {
    prefixes: Prefixes,
    kinds: Vec<Token>,
}

impl TokenFinder {
    /// A finder for the token detectors `enabled` accepts; `None` when it accepts none.
    pub fn new(enabled: impl Fn(Detector) -> bool) -> Option<Self> {
        let (prefixes, kinds): (Vec<&str>, Vec<Token>) =
            TOKEN_PREFIXES.iter().copied().filter(|(_, t)| enabled(t.detector())).unzip();
        if prefixes.is_empty() {
            return None;
        }
        let packed =
            packed::Config::new().match_kind(packed::MatchKind::LeftmostFirst).builder().extend(&prefixes).build();
        let prefixes = match packed {
            Some(searcher) => Prefixes::Packed(searcher),
            None => Prefixes::Automaton(
                AhoCorasickBuilder::new().match_kind(MatchKind::LeftmostFirst).build(&prefixes).ok()?,
            ),
        };
        Some(Self { prefixes, kinds })
    }

    /// The next prefix at or after `pos`: (start, token kind).
    fn next(&self, v: &[u8], pos: usize) -> Option<(usize, Token)> {
        let (start, pattern) = match &self.prefixes {
            Prefixes::Packed(searcher) => {
                let m = searcher.find_in(v, Span { start: pos, end: v.len() })?;
                (m.start(), m.pattern())
            }
            Prefixes::Automaton(ac) => {
                let m = ac.find(Input::new(v).range(pos..))?;
                (m.start(), m.pattern())
            }
        };
        Some((start, *self.kinds.get(pattern.as_usize())?))
    }

    /// Appends a hit for every validated token in `v`.
    pub fn scan(&self, v: &[u8], hits: &mut Vec<RawHit>) {
        let mut pos = 0;
        while pos < v.len() {
            let Some((s, kind)) = self.next(v, pos) else { break };
            let end = match kind {
                Token::Jwt => jwt_at(v, s),
                Token::Aws => aws_at(v, s),
                Token::GithubClassic => run_at(v, s, 4, 36, |b| b.is_ascii_alphanumeric(), is_word),
                Token::GithubFine => run_at(v, s, 11, 82, is_word, is_word),
                Token::Slack => slack_at(v, s),
            };
            match end {
                Some(end) => {
                    hits.push(RawHit { start: s, end, detector: kind.detector() });
                    pos = end;
                }
                None => pos = s + 1,
            }
        }
    }
}

/// A token at `s`: a prefix of `prefix` bytes, then exactly `len` bytes
/// accepted by `body`, then a byte that `stop` rejects. The byte before `s`
/// must not be a word byte.
fn run_at(v: &[u8], s: usize, prefix: usize, len: usize, body: fn(u8) -> bool, stop: fn(u8) -> bool) -> Option<usize> {
    if is_word(before(v, s)) {
        return None;
    }
    let start = s + prefix;
    let n = v.get(start..)?.iter().take(len + 1).take_while(|&&b| body(b)).count();
    let end = start + n;
    (n == len && !stop(at(v, end))).then_some(end)
}

/// An AWS access key id: `AKIA`/`ASIA` + 16 of `[A-Z0-9]`.
fn aws_at(v: &[u8], s: usize) -> Option<usize> {
    run_at(v, s, 4, 16, |b| b.is_ascii_uppercase() || b.is_ascii_digit(), |b| b.is_ascii_alphanumeric())
}

/// A Slack token: `xox[abprs]-` + at least 10 of `[A-Za-z0-9-]`.
fn slack_at(v: &[u8], s: usize) -> Option<usize> {
    if before(v, s).is_ascii_alphanumeric() {
        return None;
    }
    let start = s + 5;
    let n = v.get(start..)?.iter().take_while(|&&b| b.is_ascii_alphanumeric() || b == b'-').count();
    let mut end = start + n;
    while end > start && before(v, end) == b'-' {
        end -= 1;
    }
    (end - start >= 10).then_some(end)
}

/// A JWT (or JWE): base64url segments separated by dots, three (or five),
/// the first starting with `eyJ` (`{"`) and at least 10 long, the second at
/// least 2, the last possibly empty (unsigned tokens).
fn jwt_at(v: &[u8], s: usize) -> Option<usize> {
    let p = before(v, s);
    if is_b64url(p) || p == b'.' {
        return None;
    }
    let seg = |i: usize| -> usize { v.get(i..).map_or(0, |r| r.iter().take_while(|&&b| is_b64url(b)).count()) };
    let h = seg(s);
    if h < 10 || at(v, s + h) != b'.' {
        return None;
    }
    let p_start = s + h + 1;
    let pl = seg(p_start);
    if pl < 2 || at(v, p_start + pl) != b'.' {
        return None;
    }
    let sig_start = p_start + pl + 1;
    let mut end = sig_start + seg(sig_start);
    // JWE compact form has five segments.
    for _ in 0..2 {
        if at(v, end) == b'.' && is_b64url(at(v, end + 1)) {
            end = end + 1 + seg(end + 1);
        } else {
            break;
        }
    }
    Some(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digits(v: &str) -> Vec<(String, Detector)> {
        let mut hits = Vec::new();
        scan_digits(v.as_bytes(), DigitSet { card: true, ssn: true, phone: true, iban: true }, &mut hits);
        hits.iter().map(|h| (v[h.start..h.end].to_owned(), h.detector)).collect()
    }

    fn one(v: &str, d: Detector) -> String {
        let hits = digits(v);
        assert_eq!(hits.len(), 1, "{v:?}: {hits:?}");
        assert_eq!(hits[0].1, d, "{v:?}");
        hits[0].0.clone()
    }

    fn none(v: &str) {
        assert_eq!(digits(v), vec![], "{v:?} should have no hit");
    }

    #[test]
    fn digit_mask_is_exact() {
        for b in 0..=255u8 {
            let w = u64::from_le_bytes([b, b'a', b, 0, 0xff, b, b'/', b':']);
            let upper = if b.is_ascii_uppercase() { 0x0000_8000_0080_0080 } else { 0 };
            assert_eq!(range_mask(w, b'A', b'Z'), upper, "byte {b:#x}");
            let phone = if (b'('..=b'+').contains(&b) { 0x0000_8000_0080_0080 } else { 0 };
            assert_eq!(range_mask(w, b'(', b'+'), phone, "byte {b:#x}");
            let m = digit_mask(w);
            let expect = if b.is_ascii_digit() { 0x0000_8000_0080_0080 } else { 0 };
            assert_eq!(m, expect, "byte {b:#x}");
        }
        for b in 0..=255u8 {
            let word = u64::from_le_bytes([b, 0, 0, 0, 0, 0, b'7', 0xb9]);
            let expect = if b.is_ascii_digit() { 0b0100_0001 } else { 0b0100_0000 };
            assert_eq!(digit_bits(word), expect, "byte {b:#x}");
        }
    }

    /// The plain loop the windowed scanner must agree with: every run start
    /// goes to the validators.
    fn scan_digits_reference(v: &[u8], set: DigitSet) -> Vec<RawHit> {
        let mut hits = Vec::new();
        let mut pos = 0;
        while let Some(s) = v.get(pos..).and_then(|r| r.iter().position(u8::is_ascii_digit)).map(|p| p + pos) {
            let e = run_end(v, s);
            match classify_run(v, s, set) {
                Run::Hit(hit) => {
                    pos = hit.end.max(e);
                    hits.push(hit);
                }
                Run::Skip(end) => pos = end.max(e),
                Run::Nothing => pos = e,
            }
        }
        hits
    }

    #[test]
    fn windowed_scanner_matches_reference() {
        let pieces: &[&[u8]] = &[
            b"4111 1111 1111 1111",
            b"4111111111111111",
            b"123-45-6789",
            b"(555) 123-4567",
            b"555.123.4567",
            b"+44 20 7946 0958",
            b"DE89 3704 0044 0532 0130 00",
            b"DE89370400440532013000",
            b"1-800-555-0199",
            b"2024-01-01",
            b"127.10.0.1",
            b"EUR 1,234.56",
            b" ",
            b"-",
            b".",
            b"(",
            b")",
            b"+",
            b"x",
            b"GB",
            b"\xc3\xa9",
            b"0",
            b"12",
            b"555",
            b"4111",
            b"\n",
        ];
        let mut state = 0x1234_5678_9abc_def1u64;
        for set in [
            DigitSet { card: true, ssn: true, phone: true, iban: true },
            DigitSet { card: true, ..DigitSet::default() },
            DigitSet { phone: true, ..DigitSet::default() },
            DigitSet { ssn: true, iban: true, ..DigitSet::default() },
        ] {
            for _ in 0..3000 {
                let mut v = Vec::new();
                while v.len() < 200 {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    v.extend_from_slice(pieces[usize::try_from(state >> 40).unwrap() % pieces.len()]);
                }
                let mut hits = Vec::new();
                scan_digits(&v, set, &mut hits);
                assert_eq!(hits, scan_digits_reference(&v, set), "{set:?} {:?}", String::from_utf8_lossy(&v));
            }
        }
    }

    #[test]
    fn luhn() {
        assert!(luhn_ok(&[4, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]));
        assert!(!luhn_ok(&[4, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2]));
        assert!(luhn_ok(&[7, 9, 9, 2, 7, 3, 9, 8, 7, 1, 3]));
    }

    #[test]
    fn cards() {
        assert_eq!(one("pay 4111111111111111 now", Detector::Card), "4111111111111111");
        assert_eq!(one("4111 1111 1111 1111", Detector::Card), "4111 1111 1111 1111");
        assert_eq!(one("card=4111-1111-1111-1111;", Detector::Card), "4111-1111-1111-1111");
        assert_eq!(one("amex 3782 822463 10005.", Detector::Card), "3782 822463 10005");
        assert_eq!(one("mc 5555555555554444", Detector::Card), "5555555555554444");
        assert_eq!(one("(6011111111111117)", Detector::Card), "6011111111111117");
        assert_eq!(one("19-digit 6304000000000000018 x", Detector::Card), "6304000000000000018");
        assert_eq!(one("4111 1111 1111 1111 2024-03-05", Detector::Card), "4111 1111 1111 1111");
        assert_eq!(one("4111 1111 1111 1111 12 34", Detector::Card), "4111 1111 1111 1111");
        // Luhn failures, wrong shapes, longer runs, decimals, words, all zeros.
        none("4111111111111112");
        none("4111 1111 1111 1112");
        none("4111 1111 1111 1112 2024");
        none("4111-1111-1111-1111-2024");
        none("41111111111111111111");
        none("1234-4111111111111111");
        none("3.4111111111111111");
        none("x4111111111111111");
        none("4111111111111111abc");
        none("4111 1111-1111 1111");
        none("41 11 11 11 11 11 11 11");
        none("0000000000000000");
        none("9111111111111111");
        none("4111111111111111.25");
    }

    #[test]
    fn ssns() {
        assert_eq!(one("ssn: 123-45-6789.", Detector::UsSsn), "123-45-6789");
        assert_eq!(one("078-05-1120", Detector::UsSsn), "078-05-1120");
        none("000-12-3456");
        none("666-12-3456");
        none("900-12-3456");
        none("123-00-4567");
        none("123-45-0000");
        none("123-45-67890");
        none("1123-45-6789");
        none("9-123-45-6789");
        none("a123-45-6789");
    }

    #[test]
    fn phones() {
        assert_eq!(one("call +44 20 7946 0958 today", Detector::Phone), "+44 20 7946 0958");
        assert_eq!(one("+1 (555) 123-4567", Detector::Phone), "+1 (555) 123-4567");
        assert_eq!(one("+49-30-1234567", Detector::Phone), "+49-30-1234567");
        assert_eq!(one("+44 (0) 20 7946 0958,", Detector::Phone), "+44 (0) 20 7946 0958");
        assert_eq!(one("tel:+33123456789", Detector::Phone), "+33123456789");
        assert_eq!(one("(555) 123-4567", Detector::Phone), "(555) 123-4567");
        assert_eq!(one("(555)123-4567", Detector::Phone), "(555)123-4567");
        assert_eq!(one("555-123-4567", Detector::Phone), "555-123-4567");
        assert_eq!(one("555.123.4567", Detector::Phone), "555.123.4567");
        assert_eq!(one("1-800-555-0199", Detector::Phone), "1-800-555-0199");
        assert_eq!(one("+44 20 7946 0958 2024-03-05", Detector::Phone), "+44 20 7946 0958");
        assert_eq!(one("+44 20 7946 0958 (home)", Detector::Phone), "+44 20 7946 0958");
        // Dates, times, IPs, plain integers, versions, short numbers.
        none("2024-01-01");
        none("2024-01-01T12:00:00+01:00");
        none("2024-01-01T12:00:00+0100");
        none("20240101");
        none("12345678901");
        none("198.51.100.200");
        none("203.0.113.1");
        none("+123");
        none("+0 20 7946 0958");
        none("1+44207946095");
        none("+1234567890123456");
        none("+44 (20 7946 0958");
        none("155-123-4567");
        none("555-123-45678");
        none("555-123.4567");
        none("v1.555.123.4567");
        none("12:30:45");
        none("3.14159");
    }

    #[test]
    fn ibans() {
        for iban in [
            "DE89370400440532013000",
            "DE89 3704 0044 0532 0130 00",
            "GB82 WEST 1234 5698 7654 32",
            "GB82WEST12345698765432",
            "FR1420041010050500013M02606",
            "ES9121000418450200051332",
            "IT60X0542811101000000123456",
            "NL91ABNA0417164300",
            "BE68539007547034",
            "CH9300762011623852957",
            "AT611904300234573201",
            "NO9386011117947",
        ] {
            assert_eq!(one(&format!("iban: {iban}."), Detector::Iban), iban);
        }
        none("DE89370400440532013001"); // mod-97 fails
        none("DE89 3704 0044 0532 0130 01");
        none("DE8937040044053201300"); // too short for DE
        none("DE893704004405320130000"); // too long for DE
        none("QQ89370400440532013000"); // no such country
        none("DE89 37040044 0532 0130 00"); // broken grouping
        none("XDE89370400440532013000"); // inside a word
        none("de89370400440532013000"); // lowercase country
    }

    fn emails(v: &str) -> Vec<&str> {
        let mut hits = Vec::new();
        scan_emails(v.as_bytes(), &mut hits);
        hits.iter().map(|h| &v[h.start..h.end]).collect()
    }

    #[test]
    fn email() {
        assert_eq!(emails("mail jane.doe@example.com today"), ["jane.doe@example.com"]);
        assert_eq!(emails("<a+b_c%d-e@sub.example.co.uk>."), ["a+b_c%d-e@sub.example.co.uk"]);
        assert_eq!(emails("x@y.io, z@w.xn--p1ai"), ["x@y.io", "z@w.xn--p1ai"]);
        assert_eq!(emails("...bob@example.org."), ["bob@example.org"]);
        assert_eq!(emails("mailto:ANN@EXAMPLE.COM"), ["ANN@EXAMPLE.COM"]);
        assert!(emails("user@localhost").is_empty());
        assert!(emails("@decorator and a@ and @b.com").is_empty());
        assert!(emails("a..b@example.com").is_empty());
        assert!(emails("a.@example.com").is_empty());
        assert!(emails("a@-example.com").is_empty());
        assert!(emails("a@example.c0m").is_empty());
        assert!(emails("a@example..com").is_empty());
        assert!(emails("1@2.3").is_empty());
        let long_local = format!("{}@example.com", "a".repeat(65));
        assert!(emails(&long_local).is_empty());
    }

    fn tokens(v: &str) -> Vec<(&str, Detector)> {
        let f = TokenFinder::new(|_| true).unwrap();
        let mut hits = Vec::new();
        f.scan(v.as_bytes(), &mut hits);
        hits.iter().map(|h| (&v[h.start..h.end], h.detector)).collect()
    }

    #[test]
    fn secret_tokens() {
        let jwt = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U";
        assert_eq!(tokens(&format!("Bearer {jwt}\n")), [(jwt, Detector::Jwt)]);
        let unsigned = "eyJhbGciOiJub25lIn0.eyJzdWIiOiIxIn0.";
        assert_eq!(tokens(unsigned), [(unsigned, Detector::Jwt)]);
        assert!(tokens("eyJhbGciOiJIUzI1NiJ9 no dots").is_empty());
        assert!(tokens("xeyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.abc").is_empty());

        assert_eq!(tokens("key=AKIAIOSFODNN7EXAMPLE;"), [("AKIAIOSFODNN7EXAMPLE", Detector::AwsKey)]);
        assert_eq!(tokens("ASIAY34FZKBOKMUTVV7A"), [("ASIAY34FZKBOKMUTVV7A", Detector::AwsKey)]);
        assert!(tokens("AKIAIOSFODNN7EXAMPLEX").is_empty());
        assert!(tokens("AKIAIOSFODNN7EXAMPL").is_empty());
        assert!(tokens("AKIAiosfodnn7example").is_empty());
        assert!(tokens("MAKIAIOSFODNN7EXAMPLE").is_empty());

        let ghp = format!("ghp_{}", "aB3".repeat(12));
        assert_eq!(tokens(&format!("token {ghp}.")), [(ghp.as_str(), Detector::GithubToken)]);
        let ghs = format!("ghs_{}", "Z9".repeat(18));
        assert_eq!(tokens(&ghs), [(ghs.as_str(), Detector::GithubToken)]);
        assert!(tokens(&format!("ghp_{}", "a".repeat(35))).is_empty());
        assert!(tokens(&format!("ghp_{}", "a".repeat(37))).is_empty());
        assert!(tokens(&format!("ghx_{}", "a".repeat(36))).is_empty());
        let pat = format!("github_pat_{}_{}", "A1b2".repeat(5) + "xy", "Q".repeat(59));
        assert_eq!(tokens(&pat), [(pat.as_str(), Detector::GithubToken)]);
        assert!(tokens(&format!("github_pat_{}", "a".repeat(40))).is_empty());

        let slack = "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx";
        assert_eq!(tokens(&format!("{slack}-")), [(slack, Detector::SlackToken)]);
        assert!(tokens("xoxb-short").is_empty());
        assert!(tokens("xoxz-123456789012-1234567890123").is_empty());
    }

    #[test]
    fn token_finder_respects_enabled_set() {
        assert!(TokenFinder::new(|_| false).is_none());
        let f = TokenFinder::new(|d| d == Detector::AwsKey).unwrap();
        let mut hits = Vec::new();
        f.scan(format!("AKIAIOSFODNN7EXAMPLE ghp_{}", "a".repeat(36)).as_bytes(), &mut hits);
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].detector, Detector::AwsKey);
    }

    #[test]
    fn validators_never_panic_near_edges() {
        let probes: &[&[u8]] = &[
            b"",
            b"+",
            b"(",
            b"@",
            b"1",
            b"12",
            b"123-",
            b"123-4",
            b"123-45-",
            b"(555",
            b"(555)",
            b"+1 (",
            b"DE",
            b"DE8",
            b"DE89 ",
            b"eyJ",
            b"eyJabcdefghij.",
            b"AKIA",
            b"ghp_",
            b"github_pat_",
            b"xoxb-",
            b"a@",
            b"@a",
            b"a@b.",
            b"4111 ",
            b"4111-1111-",
            b"1-",
            b"1-555-",
        ];
        for p in probes {
            let mut hits = Vec::new();
            scan_digits(p, DigitSet { card: true, ssn: true, phone: true, iban: true }, &mut hits);
            scan_emails(p, &mut hits);
            TokenFinder::new(|_| true).unwrap().scan(p, &mut hits);
            assert!(hits.is_empty(), "{p:?}");
        }
    }
}
