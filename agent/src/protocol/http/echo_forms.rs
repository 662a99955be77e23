//! The forms a secret takes when a backend writes it back: a debug endpoint
//! or an error page that echoes the request puts the held credential into
//! JSON, a URL or HTML, and each of those encoders escapes some characters
//! of it. The scrubber looks for every such form, not only the verbatim one:
//! a password with a `"` is `\"` in any JSON, a base64 token's `/` and `+`
//! are `\/` (PHP), `\u002B` (.NET), `%2F`/`%2B` (a redirect's query
//! string), `&#43;` (Go's html/template).
//!
//! Each encoder writes the whole string one way, so the forms are the secret
//! through each encoder in turn, not every mix of them (sans-IO).

/// What a removed secret reads as.
pub(crate) const SCRUBBED: &[u8] = b"****";
const SCRUBBED_UTF16LE: &[u8] = b"*\0*\0*\0*\0";
const SCRUBBED_UTF16BE: &[u8] = b"\0*\0*\0*\0*";

/// Every distinct form of `secret` the encoders below write (the secret
/// itself first), each with what replaces it (`****` in the same encoding).
pub(crate) fn forms(secret: &[u8]) -> Vec<(Vec<u8>, &'static [u8])> {
    let mut out: Vec<(Vec<u8>, &'static [u8])> = vec![(secret.to_vec(), SCRUBBED)];
    let mut add_as = |f: Option<Vec<u8>>, with: &'static [u8]| {
        if let Some(f) = f
            && !out.iter().any(|(g, _)| *g == f)
        {
            out.push((f, with));
        }
    };
    let mut add = |f: Option<Vec<u8>>| add_as(f, SCRUBBED);
    for style in JSON_STYLES {
        add(json(secret, style));
    }
    for style in PERCENT_STYLES {
        for upper in [true, false] {
            add(Some(percent(secret, style, upper)));
        }
    }
    for style in HTML_STYLES {
        add(Some(html(secret, style)));
    }
    // Inside base64 (a `state` parameter or a cookie that encodes the
    // request, a body an API gateway base64-encodes): at each of the three
    // byte alignments, the characters the secret's bytes alone decide.
    for alphabet in
        [&base64::engine::general_purpose::STANDARD_NO_PAD, &base64::engine::general_purpose::URL_SAFE_NO_PAD]
    {
        for align in 0..3 {
            add(base64_core(secret, align, alphabet));
        }
    }
    // In a UTF-16 body (a .NET or Windows backend's), either byte order.
    if let Ok(text) = std::str::from_utf8(secret) {
        add_as(Some(text.encode_utf16().flat_map(u16::to_le_bytes).collect()), SCRUBBED_UTF16LE);
        add_as(Some(text.encode_utf16().flat_map(u16::to_be_bytes).collect()), SCRUBBED_UTF16BE);
    }
    out
}

/// Base64 characters shorter than this are not looked for (too likely by chance).
const SHORTEST_BASE64: usize = 8;

/// The base64 characters that encode `secret` wherever it starts `align`
/// bytes (0–2) into a group of three: the characters whose six bits all
/// come from the secret (the ones at each end also hold a neighbour's bits).
fn base64_core(secret: &[u8], align: usize, alphabet: &base64::engine::GeneralPurpose) -> Option<Vec<u8>> {
    use base64::Engine;
    let mut padded = vec![0u8; align];
    padded.extend_from_slice(secret);
    let text = alphabet.encode(&padded);
    let first = (align * 8).div_ceil(6);
    let end = padded.len() * 8 / 6;
    let core = text.as_bytes().get(first..end)?;
    (core.len() >= SHORTEST_BASE64).then(|| core.to_vec())
}

/// How `\u` escapes are spelled.
#[derive(Clone, Copy, PartialEq)]
enum Hex {
    Lower,
    Upper,
}

/// A JSON encoder's choices beyond the escapes every one makes (`"`, `\`,
/// control characters).
struct JsonStyle {
    /// `/` as `\/` (PHP's default).
    slash: bool,
    /// Characters written as `\uXXXX` although JSON does not require it.
    as_u: &'static [u8],
    /// Non-ASCII characters as `\uXXXX` (UTF-16 code units).
    non_ascii: Option<Hex>,
    hex: Hex,
    /// `"` written as `\u0022` rather than `\"` (.NET).
    quote_as_u: bool,
}

const JSON_STYLES: &[JsonStyle] = &[
    // Node, Rust's serde_json, Python with ensure_ascii=False, Jackson.
    JsonStyle { slash: false, as_u: b"", non_ascii: None, hex: Hex::Lower, quote_as_u: false },
    // Python's json.dumps (ensure_ascii), Java's Gson for non-ASCII.
    JsonStyle { slash: false, as_u: b"", non_ascii: Some(Hex::Lower), hex: Hex::Lower, quote_as_u: false },
    // PHP's json_encode (and with JSON_UNESCAPED_UNICODE).
    JsonStyle { slash: true, as_u: b"", non_ascii: Some(Hex::Lower), hex: Hex::Lower, quote_as_u: false },
    JsonStyle { slash: true, as_u: b"", non_ascii: None, hex: Hex::Lower, quote_as_u: false },
    // Go's encoding/json (HTML-safe by default).
    JsonStyle { slash: false, as_u: b"<>&", non_ascii: None, hex: Hex::Lower, quote_as_u: false },
    // Gson (HTML-safe by default).
    JsonStyle { slash: false, as_u: b"<>&='", non_ascii: None, hex: Hex::Lower, quote_as_u: false },
    // .NET's System.Text.Json (its default encoder).
    JsonStyle { slash: false, as_u: b"<>&'+`", non_ascii: Some(Hex::Upper), hex: Hex::Upper, quote_as_u: true },
    // `+` alone as `\u002b` / `\u002B` (encoders that escape it without the rest).
    JsonStyle { slash: false, as_u: b"+", non_ascii: None, hex: Hex::Lower, quote_as_u: false },
    JsonStyle { slash: false, as_u: b"+", non_ascii: None, hex: Hex::Upper, quote_as_u: false },
    JsonStyle { slash: true, as_u: b"+", non_ascii: None, hex: Hex::Lower, quote_as_u: false },
    JsonStyle { slash: true, as_u: b"+", non_ascii: None, hex: Hex::Upper, quote_as_u: false },
];

fn push_u(out: &mut Vec<u8>, unit: u32, hex: Hex) {
    let s = match hex {
        Hex::Lower => format!("\\u{unit:04x}"),
        Hex::Upper => format!("\\u{unit:04X}"),
    };
    out.extend_from_slice(s.as_bytes());
}

/// `secret` as a JSON string's inside, or `None` when the style needs
/// characters and the secret is not UTF-8 (no JSON encoder writes it then).
fn json(secret: &[u8], style: &JsonStyle) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(secret.len() + 8);
    let text = match (std::str::from_utf8(secret), style.non_ascii) {
        (Ok(t), _) => t,
        (Err(_), Some(_)) => return None,
        (Err(_), None) => {
            for &b in secret {
                json_byte(&mut out, b, style);
            }
            return Some(out);
        }
    };
    for c in text.chars() {
        if c.is_ascii() {
            json_byte(&mut out, c as u8, style);
        } else if let Some(hex) = style.non_ascii {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                push_u(&mut out, u32::from(*u), hex);
            }
        } else if matches!(c, '\u{2028}' | '\u{2029}') && !style.as_u.is_empty() {
            // Go and Gson escape the JavaScript line separators too.
            push_u(&mut out, c as u32, style.hex);
        } else {
            let mut buf = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
        }
    }
    Some(out)
}

fn json_byte(out: &mut Vec<u8>, b: u8, style: &JsonStyle) {
    match b {
        b'"' if style.quote_as_u => push_u(out, u32::from(b), style.hex),
        b'"' => out.extend_from_slice(b"\\\""),
        b'\\' => out.extend_from_slice(b"\\\\"),
        b'/' if style.slash => out.extend_from_slice(b"\\/"),
        b'\n' => out.extend_from_slice(b"\\n"),
        b'\r' => out.extend_from_slice(b"\\r"),
        b'\t' => out.extend_from_slice(b"\\t"),
        0x08 => out.extend_from_slice(b"\\b"),
        0x0c => out.extend_from_slice(b"\\f"),
        0..0x20 => push_u(out, u32::from(b), style.hex),
        _ if style.as_u.contains(&b) => push_u(out, u32::from(b), style.hex),
        _ => out.push(b),
    }
}

/// A URL encoder: which bytes besides letters and digits it leaves as they are.
struct PercentStyle {
    keep: &'static [u8],
    /// A space as `+` (form encoding).
    space_plus: bool,
}

const PERCENT_STYLES: &[PercentStyle] = &[
    // RFC 3986 unreserved (Python's quote(safe=''), Go's QueryEscape but for the space).
    PercentStyle { keep: b"-._~", space_plus: false },
    // Python's quote() default (`/` kept).
    PercentStyle { keep: b"-._~/", space_plus: false },
    // JavaScript's encodeURIComponent.
    PercentStyle { keep: b"-_.!~*'()", space_plus: false },
    // JavaScript's encodeURI.
    PercentStyle { keep: b"-_.!~*'();/?:@&=+$,#", space_plus: false },
    // Forms: Java's URLEncoder, URLSearchParams, Python's quote_plus/urlencode.
    PercentStyle { keep: b"-._*", space_plus: true },
    PercentStyle { keep: b"-._~", space_plus: true },
];

fn percent(secret: &[u8], style: &PercentStyle, upper: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(secret.len() * 3);
    for &b in secret {
        if b.is_ascii_alphanumeric() || style.keep.contains(&b) {
            out.push(b);
        } else if b == b' ' && style.space_plus {
            out.push(b'+');
        } else if upper {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        } else {
            out.extend_from_slice(format!("%{b:02x}").as_bytes());
        }
    }
    out
}

/// An HTML escaper: the characters it replaces, and with what.
type HtmlStyle = &'static [(u8, &'static str)];

const HTML_STYLES: &[HtmlStyle] = &[
    // Python's html.escape, Rails, OWASP's encoder without `/`.
    &[(b'&', "&amp;"), (b'<', "&lt;"), (b'>', "&gt;"), (b'"', "&quot;"), (b'\'', "&#x27;")],
    // OWASP's (and ESAPI's) HTML encoder.
    &[(b'&', "&amp;"), (b'<', "&lt;"), (b'>', "&gt;"), (b'"', "&quot;"), (b'\'', "&#x27;"), (b'/', "&#x2F;")],
    // Go's html/template and html.EscapeString.
    &[(b'"', "&#34;"), (b'&', "&amp;"), (b'\'', "&#39;"), (b'+', "&#43;"), (b'<', "&lt;"), (b'>', "&gt;")],
    // PHP's htmlspecialchars (ENT_QUOTES), Jinja2 / MarkupSafe.
    &[(b'&', "&amp;"), (b'<', "&lt;"), (b'>', "&gt;"), (b'"', "&quot;"), (b'\'', "&#039;")],
    &[(b'&', "&amp;"), (b'<', "&lt;"), (b'>', "&gt;"), (b'"', "&#34;"), (b'\'', "&#39;")],
];

fn html(secret: &[u8], style: HtmlStyle) -> Vec<u8> {
    let mut out = Vec::with_capacity(secret.len() + 8);
    for &b in secret {
        match style.iter().find(|(c, _)| *c == b) {
            Some((_, with)) => out.extend_from_slice(with.as_bytes()),
            None => out.push(b),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(secret: &[u8]) -> Vec<Vec<u8>> {
        forms(secret).into_iter().map(|(f, _)| f).collect()
    }

    const SECRET: &str = "Bearer p@ss/w+rd\"<&>é'=~(x) y\\z";

    /// Written by the real encoders (Python 3.11, Node 20) for `SECRET`, or
    /// as their documentation says (Go, PHP, .NET, OWASP), each of which must
    /// be among the forms.
    #[test]
    fn the_forms_include_what_real_encoders_write() {
        let all = bytes(SECRET.as_bytes());
        for written in [
            // json.dumps (ensure_ascii), JSON.stringify / json.dumps(ensure_ascii=False)
            r#"Bearer p@ss/w+rd\"<&>\u00e9'=~(x) y\\z"#,
            r#"Bearer p@ss/w+rd\"<&>é'=~(x) y\\z"#,
            // PHP json_encode
            r#"Bearer p@ss\/w+rd\"<&>\u00e9'=~(x) y\\z"#,
            // Go encoding/json
            r#"Bearer p@ss/w+rd\"\u003c\u0026\u003eé'=~(x) y\\z"#,
            // .NET System.Text.Json
            r#"Bearer p@ss/w\u002Brd\u0022\u003C\u0026\u003E\u00E9\u0027=~(x) y\\z"#,
            // urllib.parse.quote, quote(safe=''), quote_plus, urlencode
            "Bearer%20p%40ss/w%2Brd%22%3C%26%3E%C3%A9%27%3D~%28x%29%20y%5Cz",
            "Bearer%20p%40ss%2Fw%2Brd%22%3C%26%3E%C3%A9%27%3D~%28x%29%20y%5Cz",
            "Bearer+p%40ss%2Fw%2Brd%22%3C%26%3E%C3%A9%27%3D~%28x%29+y%5Cz",
            // encodeURIComponent, encodeURI, URLSearchParams
            "Bearer%20p%40ss%2Fw%2Brd%22%3C%26%3E%C3%A9'%3D~(x)%20y%5Cz",
            "Bearer%20p@ss/w+rd%22%3C&%3E%C3%A9'=~(x)%20y%5Cz",
            "Bearer+p%40ss%2Fw%2Brd%22%3C%26%3E%C3%A9%27%3D%7E%28x%29+y%5Cz",
            // html.escape, Go's html/template, OWASP, htmlspecialchars
            "Bearer p@ss/w+rd&quot;&lt;&amp;&gt;é&#x27;=~(x) y\\z",
            "Bearer p@ss/w&#43;rd&#34;&lt;&amp;&gt;é&#39;=~(x) y\\z",
            "Bearer p@ss&#x2F;w+rd&quot;&lt;&amp;&gt;é&#x27;=~(x) y\\z",
            "Bearer p@ss/w+rd&quot;&lt;&amp;&gt;é&#039;=~(x) y\\z",
        ] {
            assert!(all.iter().any(|f| f == written.as_bytes()), "missing: {written}");
        }
        // Distinct, the secret itself first.
        assert_eq!(all.first().map(Vec::as_slice), Some(SECRET.as_bytes()));
        for (i, f) in all.iter().enumerate() {
            assert!(!all[i + 1..].contains(f), "{}", String::from_utf8_lossy(f));
        }
    }

    /// A plain token has one form; a base64 one a handful; bytes that are
    /// not UTF-8 are still escaped where an encoder would pass them through.
    #[test]
    fn forms_of_simple_and_odd_secrets() {
        let plain = bytes(b"tok-12345678");
        assert_eq!(
            plain.len(),
            6,
            "as is, base64 at three alignments (both alphabets agree here), UTF-16LE, UTF-16BE: {plain:?}"
        );
        assert!(plain.iter().any(|f| f.as_slice() == b"t\0o\0k\0-\x001\x002\x003\x004\x005\x006\x007\x008\0"));
        let b64 = bytes(b"dXNl/ci+x=");
        for f in [&b"dXNl\\/ci+x="[..], b"dXNl/ci\\u002Bx=", b"dXNl/ci%2Bx%3D", b"dXNl%2Fci%2Bx%3D", b"dXNl/ci&#43;x="]
        {
            assert!(b64.iter().any(|g| g == f), "{}", String::from_utf8_lossy(f));
        }
        let odd = bytes(b"a\xff\"b");
        assert!(odd.iter().any(|g| g == b"a\xff\\\"b"), "{odd:?}");
        assert!(odd.iter().any(|g| g == b"a%FF%22b"), "{odd:?}");
        // A character outside the BMP as a surrogate pair.
        assert!(bytes("k\u{1F511}".as_bytes()).iter().any(|g| g == b"k\\ud83d\\udd11"));
    }

    /// A secret inside base64, wherever it starts in a three-byte group and
    /// in either alphabet, contains one of its base64 forms.
    #[test]
    fn base64_forms_are_found_at_every_alignment() {
        use base64::Engine;
        let secret = b"Bearer held-token-8f3a+Zk/q=";
        let forms = bytes(secret);
        for engine in [&base64::engine::general_purpose::STANDARD, &base64::engine::general_purpose::URL_SAFE] {
            for before in ["", "{", "{\"", "{\"authorization\": \""] {
                let blob = engine.encode([before.as_bytes(), secret, b"\", \"x\": 1}"].concat());
                assert!(
                    forms.iter().any(|f| blob.as_bytes().windows(f.len()).any(|w| w == f.as_slice())),
                    "{before:?}: {blob}"
                );
            }
        }
        // Short secrets have no base64 form of their own (too likely by chance).
        assert_eq!(base64_core(b"abcd", 1, &base64::engine::general_purpose::STANDARD_NO_PAD), None);
    }
}
