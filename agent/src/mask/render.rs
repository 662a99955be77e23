//! Rendering a masked value in a [`Style`](super::Style): the fixed redaction
//! mark, the partial forms and the keyed hash token. Everything written is
//! ASCII or whole UTF-8 characters taken from the input, so output is valid
//! UTF-8 whenever the input was.

use super::Detector;

/// What a redacted value (and the hidden part of a partial one) looks like.
/// Fixed width, so the length of the secret does not leak.
pub const REDACTED: &[u8] = b"****";

/// Characters a partial value keeps.
const KEEP: usize = 4;
/// A partial value keeps its tail only when at least this many
/// alphanumerics are there, so at most half of a short value is shown.
const MIN_FOR_PARTIAL: usize = 2 * KEEP;

/// How a detector's match is normalised before hashing, so the same card,
/// phone or address written two ways gets the same token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Norm {
    /// The bytes as they are (column values, tokens, custom matches).
    Raw,
    /// ASCII digits only (cards, phones, SSNs).
    Digits,
    /// ASCII alphanumerics, uppercased (IBANs).
    AlnumUpper,
    /// ASCII-lowercased (email addresses).
    Lower,
}

impl Norm {
    pub fn for_detector(d: Detector) -> Self {
        match d {
            Detector::Card | Detector::Phone | Detector::UsSsn => Norm::Digits,
            Detector::Iban => Norm::AlnumUpper,
            Detector::Email => Norm::Lower,
            Detector::Jwt | Detector::AwsKey | Detector::GithubToken | Detector::SlackToken | Detector::Custom => {
                Norm::Raw
            }
        }
    }

    fn map(self, b: u8) -> Option<u8> {
        match self {
            Norm::Raw => Some(b),
            Norm::Digits => b.is_ascii_digit().then_some(b),
            Norm::AlnumUpper => b.is_ascii_alphanumeric().then(|| b.to_ascii_uppercase()),
            Norm::Lower => Some(b.to_ascii_lowercase()),
        }
    }
}

fn hex_digit(n: u8) -> u8 {
    if n < 10 { b'0' + n } else { b'a' + (n - 10) }
}

/// Hex digits of a token: 128 bits, so a token space cannot be enumerated
/// even for values from a small set once the key is known to be one of few.
const TOKEN_BYTES: usize = 16;

/// Appends `tok_` and 32 hex digits (128 bits) of the keyed BLAKE3 hash of
/// `text` (normalised by `norm`) under a scope's key (per profile and
/// column or detector, see `Profile::token_key`): deterministic per key,
/// unlinkable across keys.
pub(crate) fn push_token(key: &[u8; 32], text: &[u8], norm: Norm, out: &mut Vec<u8>) {
    let mut hasher = blake3::Hasher::new_keyed(key);
    if norm == Norm::Raw {
        hasher.update(text);
    } else {
        let mut buf = [0u8; 64];
        let mut n = 0usize;
        for x in text.iter().filter_map(|&b| norm.map(b)) {
            if let Some(slot) = buf.get_mut(n) {
                *slot = x;
                n += 1;
            } else {
                hasher.update(&buf);
                buf[0] = x;
                n = 1;
            }
        }
        hasher.update(buf.get(..n).unwrap_or_default());
    }
    out.extend_from_slice(b"tok_");
    for &b in hasher.finalize().as_bytes().iter().take(TOKEN_BYTES) {
        out.push(hex_digit(b >> 4));
        out.push(hex_digit(b & 0x0f));
    }
}

/// Appends the partial form of a detected email address: the mark, then
/// `@domain`.
pub(crate) fn push_partial_email(text: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(REDACTED);
    if let Some(at) = memchr::memrchr(b'@', text) {
        out.extend_from_slice(text.get(at..).unwrap_or_default());
    }
}

/// Appends the mark then the last four alphanumeric characters of `text`
/// (separators dropped: `4111-1111-1111-1234` → `****1234`), or the mark
/// alone when `text` has fewer than eight. Valid UTF-8 is read as
/// characters (Unicode alphanumerics); anything else as ASCII bytes.
pub(crate) fn push_partial_tail(text: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(REDACTED);
    let mut keep = ['\0'; KEEP];
    let mut seen = 0usize;
    let mut collect = |c: char| {
        if let Some(slot) = KEEP.checked_sub(seen + 1).and_then(|i| keep.get_mut(i)) {
            *slot = c;
        }
        seen += 1;
        seen >= MIN_FOR_PARTIAL
    };
    match std::str::from_utf8(text) {
        Ok(s) => {
            for c in s.chars().rev().filter(|c| c.is_alphanumeric()) {
                if collect(c) {
                    break;
                }
            }
        }
        Err(_) => {
            for &b in text.iter().rev().filter(|b| b.is_ascii_alphanumeric()) {
                if collect(char::from(b)) {
                    break;
                }
            }
        }
    }
    if seen >= MIN_FOR_PARTIAL {
        let mut buf = [0u8; 4];
        for c in keep {
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tail(s: &[u8]) -> String {
        let mut out = Vec::new();
        push_partial_tail(s, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn partial_tail() {
        assert_eq!(tail(b"4111-1111-1111-1234"), "****1234");
        assert_eq!(tail(b"(555) 123-4567"), "****4567");
        assert_eq!(tail(b"123-45-6789"), "****6789");
        assert_eq!(tail(b"DE89 3704 0044 0532 0130 00"), "****3000");
        assert_eq!(tail("José García".as_bytes()), "****rcía");
        assert_eq!(tail("東京都千代田区丸の内".as_bytes()), "****区丸の内");
        // Too short to show a tail: nothing but the mark.
        assert_eq!(tail(b"1234567"), "****");
        assert_eq!(tail(b"12-34-56"), "****");
        assert_eq!(tail(b""), "****");
        // Invalid UTF-8: ASCII alphanumerics only, output still UTF-8.
        assert_eq!(tail(b"\xff12345\xfe678\x80"), "****5678");
    }

    #[test]
    fn partial_email() {
        let mut out = Vec::new();
        push_partial_email(b"jane.doe@Example.com", &mut out);
        assert_eq!(out, b"****@Example.com");
    }

    #[test]
    fn tokens() {
        let k1 = [1u8; 32];
        let k2 = [2u8; 32];
        let tok = |key: &[u8; 32], text: &[u8], norm: Norm| {
            let mut out = Vec::new();
            push_token(key, text, norm, &mut out);
            String::from_utf8(out).unwrap()
        };
        let a = tok(&k1, b"4111 1111 1111 1111", Norm::Digits);
        assert!(a.starts_with("tok_") && a.len() == 4 + 32, "{a}");
        assert!(a[4..].bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_eq!(a, tok(&k1, b"4111-1111-1111-1111", Norm::Digits));
        assert_eq!(a, tok(&k1, b"4111111111111111", Norm::Raw));
        assert_ne!(a, tok(&k2, b"4111111111111111", Norm::Raw));
        assert_ne!(a, tok(&k1, b"4111111111111112", Norm::Raw));
        assert_eq!(tok(&k1, b"Ann@Example.COM", Norm::Lower), tok(&k1, b"ann@example.com", Norm::Raw));
        assert_eq!(tok(&k1, b"de89 3704", Norm::AlnumUpper), tok(&k1, b"DE893704", Norm::Raw));
        // Normalised input longer than the stack buffer.
        let long = "9".repeat(1000);
        assert_eq!(tok(&k1, long.as_bytes(), Norm::Digits), tok(&k1, long.as_bytes(), Norm::Raw));
    }
}
