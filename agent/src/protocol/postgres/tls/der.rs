//! Just enough DER to read two fields of an X.509 certificate: the
//! signature algorithm (which hash SCRAM channel binding uses) and the end
//! of the validity period (so an expiring `client_tls` certificate is
//! noticed). Sans-IO, every length bounded by the input; anything
//! unexpected is `None`.

fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = b.split_first()?;
    let (&l0, rest) = rest.split_first()?;
    let (len, rest) = if l0 < 0x80 {
        (usize::from(l0), rest)
    } else {
        let n = usize::from(l0 & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let (lb, rest) = rest.split_at_checked(n)?;
        (lb.iter().fold(0usize, |a, &x| (a << 8) | usize::from(x)), rest)
    };
    let (content, rest) = rest.split_at_checked(len)?;
    Some((tag, content, rest))
}

fn expect(b: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (t, content, rest) = tlv(b)?;
    (t == tag).then_some((content, rest))
}

const SEQUENCE: u8 = 0x30;

/// The signature algorithm's OID (DER content bytes) of a certificate.
pub fn signature_algorithm(cert: &[u8]) -> Option<&[u8]> {
    let (cert, _) = expect(cert, SEQUENCE)?;
    let (_tbs, rest) = expect(cert, SEQUENCE)?;
    let (alg, _) = expect(rest, SEQUENCE)?;
    let (oid, _) = expect(alg, 0x06)?;
    Some(oid)
}

/// The hash RFC 5929's tls-server-end-point uses for a certificate: the
/// signature's own hash, SHA-256 in place of MD5 and SHA-1; `None` when the
/// signature has no single hash (Ed25519, RSA-PSS) or one not supported here.
pub fn end_point_hash(cert: &[u8]) -> Option<&'static ring::digest::Algorithm> {
    const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
    const ECDSA: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04];
    let oid = signature_algorithm(cert)?;
    if let Some(last) = oid.strip_prefix(RSA) {
        return match last {
            // md5, sha1 → SHA-256; sha256; sha384; sha512.
            [0x04] | [0x05] | [0x0b] => Some(&ring::digest::SHA256),
            [0x0c] => Some(&ring::digest::SHA384),
            [0x0d] => Some(&ring::digest::SHA512),
            _ => None,
        };
    }
    if let Some(rest) = oid.strip_prefix(ECDSA) {
        return match rest {
            [0x01] | [0x03, 0x02] => Some(&ring::digest::SHA256),
            [0x03, 0x03] => Some(&ring::digest::SHA384),
            [0x03, 0x04] => Some(&ring::digest::SHA512),
            _ => None,
        };
    }
    None
}

/// The end of a certificate's validity (`notAfter`), in seconds since the epoch.
pub fn not_after(cert: &[u8]) -> Option<i64> {
    let (cert, _) = expect(cert, SEQUENCE)?;
    let (tbs, _) = expect(cert, SEQUENCE)?;
    let mut rest = tbs;
    // [0] version, if present.
    if let Some((0xa0, _, r)) = tlv(rest) {
        rest = r;
    }
    let (_serial, r) = expect(rest, 0x02)?;
    let (_sig, r) = expect(r, SEQUENCE)?;
    let (_issuer, r) = expect(r, SEQUENCE)?;
    let (validity, _) = expect(r, SEQUENCE)?;
    let (_, _not_before, r) = tlv(validity)?;
    let (tag, t, _) = tlv(r)?;
    let text = std::str::from_utf8(t).ok()?;
    let text = text.strip_suffix('Z')?;
    let (year, rest) = match tag {
        0x17 => {
            let yy: i16 = text.get(..2)?.parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, text.get(2..)?)
        }
        0x18 => (text.get(..4)?.parse().ok()?, text.get(4..)?),
        _ => return None,
    };
    let num = |a: usize| -> Option<i8> { rest.get(a..a + 2)?.parse().ok() };
    if rest.len() != 10 || !rest.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let dt = jiff::civil::DateTime::new(year, num(0)?, num(2)?, num(4)?, num(6)?, num(8)?, 0).ok()?;
    Some(jiff::tz::TimeZone::UTC.to_timestamp(dt).ok()?.as_second())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_none_not_a_panic() {
        for b in [&b""[..], b"\x30", b"\x30\x84\xff\xff\xff\xff", b"\x30\x03\x30\x01", &[0x30; 64]] {
            assert!(signature_algorithm(b).is_none());
            assert!(not_after(b).is_none());
        }
    }

    #[test]
    fn a_real_certificate_is_read() {
        // openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -sha384 -days 1 -subj /CN=t -nodes
        let pem = "MIIBbjCCAROgAwIBAgIUGn2o4vSnclf0n7iyNK+RDcF8QqwwCgYIKoZIzj0EAwMwDDEKMAgGA1UEAwwBdDAeFw0yNjEyMDEyMjIwMjVaFw0yNjEyMDIyMjIwMjVaMAwxCjAIBgNVBAMMAXQwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAAQVLMEVKvxGBWM4nO8CtxRTL+pn85e5kBjOleaRPgB11Q5wYDjC9Ay1X5les++/tNhyQjvVKxwFOV6YEbpIUH0so1MwUTAdBgNVHQ4EFgQU+p7VfIA2CL/V4GLSuyJ4vYTN4nAwHwYDVR0jBBgwFoAU+p7VfIA2CL/V4GLSuyJ4vYTN4nAwDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAwNJADBGAiEAkmjI+dciS35olRh2guO7gVGGld8zuKLMz2ZeNgHHqx4CIQCPIaXZS4ueQQqarWj1Abza331RJ/mIkMNcUjyDEHo7cQ==";
        let der = base64_decode(pem);
        assert_eq!(signature_algorithm(&der), Some(&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03][..]));
        assert!(std::ptr::eq(end_point_hash(&der).unwrap(), &ring::digest::SHA384));
        assert_eq!(not_after(&der), Some(1796250025), "2026-12-02T22:20:25Z");
    }

    fn base64_decode(s: &str) -> Vec<u8> {
        let val = |c: u8| match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            _ => 63,
        };
        let mut out = Vec::new();
        let (mut acc, mut bits) = (0u32, 0u32);
        for c in s.bytes().filter(|&c| c != b'=') {
            acc = (acc << 6) | u32::from(val(c));
            bits += 6;
            if bits >= 8 {
                bits -= 8;
                out.push(u8::try_from((acc >> bits) & 0xff).unwrap());
            }
        }
        out
    }
}
