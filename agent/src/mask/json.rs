//! JSON bodies: field rules (`fields = ["$.customer.card", "*.ssn"]`) and
//! the profile's detectors applied while the body streams.
//!
//! [`JsonMasker`] is a sans-IO rewriter: bytes in, bytes out, holding at
//! most one string or number token (bounded by [`MAX_TOKEN`]) and the path
//! of keys to it, never the whole body. Structure, whitespace and values
//! nothing matched are forwarded as they arrived. A value a field rule
//! names is replaced whole (a string, or `null` for the `null` style);
//! an object or array a rule names has every scalar beneath it masked.
//! Every other string (and number) goes through [`Profile::scan`]. Input
//! that is not JSON is an error: the caller cuts the body (fail closed).

use std::sync::Arc;

use super::{Counts, MaskOutput, Profile, Style, TokenKey, TokenScope};

/// The longest string or number token held while it is decided on.
pub const MAX_TOKEN: usize = 4 << 20;
/// How deep objects and arrays may nest.
pub const MAX_DEPTH: usize = 512;

/// One step of a field pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Key(String),
    /// `*`: any key or index.
    Any,
    /// `[*]` or `[]`: any array index.
    AnyIndex,
    Index(u64),
}

/// `$.a.b[*].c` (anchored at the root) or `b.c`, `*.ssn` (the end of a path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldPattern {
    text: String,
    anchored: bool,
    segs: Vec<Seg>,
}

impl FieldPattern {
    pub fn parse(s: &str) -> Result<Self, String> {
        let text = s.to_owned();
        let (anchored, rest) = match s.strip_prefix('$') {
            Some(r) => (true, r.strip_prefix('.').unwrap_or(r)),
            None => (false, s),
        };
        let mut segs = Vec::new();
        for part in rest.split('.') {
            if part.is_empty() {
                if anchored && rest.is_empty() {
                    break;
                }
                return Err(format!("field pattern {s:?} has an empty step"));
            }
            let (key, mut idx) = match part.find('[') {
                Some(i) => (part.get(..i).unwrap_or(""), part.get(i..).unwrap_or("")),
                None => (part, ""),
            };
            match key {
                "" => {}
                "*" => segs.push(Seg::Any),
                k => segs.push(Seg::Key(k.to_owned())),
            }
            while !idx.is_empty() {
                let close = idx.find(']').ok_or_else(|| format!("field pattern {s:?}: unclosed `[`"))?;
                let inner = idx.get(1..close).unwrap_or("");
                segs.push(match inner {
                    "" | "*" => Seg::AnyIndex,
                    n => Seg::Index(n.parse().map_err(|_| format!("field pattern {s:?}: bad index `{n}`"))?),
                });
                idx = idx.get(close + 1..).unwrap_or("");
                if !idx.is_empty() && !idx.starts_with('[') {
                    return Err(format!("field pattern {s:?}: `{idx}` after `]`"));
                }
            }
        }
        if segs.is_empty() {
            return Err(format!("field pattern {s:?} names no field (`$` alone would mask the whole body)"));
        }
        Ok(Self { text, anchored, segs })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    fn matches(&self, path: &[Step]) -> bool {
        if path.len() < self.segs.len() || (self.anchored && path.len() != self.segs.len()) {
            return false;
        }
        let tail = path.get(path.len() - self.segs.len()..).unwrap_or_default();
        self.segs.iter().zip(tail).all(|(seg, step)| match (seg, step) {
            (Seg::Any, _) | (Seg::AnyIndex, Step::Index(_)) => true,
            (Seg::Key(k), Step::Key(s)) => k == s,
            (Seg::Index(i), Step::Index(j)) => i == j,
            _ => false,
        })
    }
}

/// A profile's field rules, first match wins, each with its token key.
#[derive(Debug, Clone)]
pub struct FieldRules {
    rules: Vec<(FieldPattern, Style, TokenKey)>,
}

impl FieldRules {
    /// Compiles `(pattern, style)` pairs against the profile they belong to
    /// (Hash tokens are keyed per pattern, like a column).
    pub fn compile(profile: &Profile, fields: &[(String, Style)]) -> Result<Self, String> {
        let rules = fields
            .iter()
            .map(|(p, style)| {
                let pat = FieldPattern::parse(p)?;
                let key = profile.token_key(TokenScope::Column { table: Some("$json"), column: pat.as_str() });
                Ok((pat, *style, key))
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Self { rules })
    }

    pub fn patterns(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|(p, _, _)| p.as_str())
    }

    fn find(&self, path: &[Step]) -> Option<usize> {
        self.rules.iter().position(|(p, _, _)| p.matches(path))
    }
}

/// A step of the path to the current value.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(u64),
}

#[derive(Debug)]
enum Frame {
    /// `key`: the current member's name once read.
    Object {
        key: Option<String>,
        want_key: bool,
    },
    Array {
        index: u64,
        empty: bool,
    },
}

#[derive(Debug, PartialEq, Eq)]
enum Lex {
    Between,
    /// Inside a string; `escape`: the previous byte was a backslash.
    Str {
        key: bool,
        escape: bool,
    },
    /// A number or literal.
    Scalar,
}

/// Why a body could not be masked as JSON.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonError {
    #[error("the body is not JSON (unexpected byte {byte:#04x} at offset {offset})")]
    Syntax { byte: u8, offset: u64 },
    #[error("a JSON token of more than {MAX_TOKEN} bytes")]
    TokenTooLong,
    #[error("JSON nested deeper than {MAX_DEPTH}")]
    TooDeep,
    #[error("the JSON body ended in the middle of a value")]
    Truncated,
}

/// Streams a JSON body through field rules and detectors.
#[derive(Debug)]
pub struct JsonMasker {
    profile: Arc<Profile>,
    fields: Option<Arc<FieldRules>>,
    stack: Vec<Frame>,
    lex: Lex,
    token: Vec<u8>,
    /// Depth at which a field rule matched a container, and the rule.
    masked_from: Option<(usize, usize)>,
    offset: u64,
    pub counts: Counts,
    scratch: Vec<u8>,
}

impl JsonMasker {
    pub fn new(profile: Arc<Profile>, fields: Option<Arc<FieldRules>>) -> Self {
        Self {
            profile,
            fields,
            stack: Vec::new(),
            lex: Lex::Between,
            token: Vec::new(),
            masked_from: None,
            offset: 0,
            counts: Counts::default(),
            scratch: Vec::new(),
        }
    }

    /// Masks `input`, appending what may be sent to `out`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), JsonError> {
        let mut run_start = 0usize;
        let mut i = 0usize;
        while let Some(&b) = input.get(i) {
            match self.lex {
                Lex::Str { key, escape } => {
                    if escape {
                        self.lex = Lex::Str { key, escape: false };
                    } else if b == b'\\' {
                        self.lex = Lex::Str { key, escape: true };
                    } else if b == b'"' {
                        self.push_token(input.get(run_start..i).unwrap_or_default())?;
                        self.lex = Lex::Between;
                        self.end_string(key, out)?;
                        run_start = i + 1;
                    }
                }
                Lex::Scalar => {
                    if matches!(b, b'0'..=b'9' | b'a'..=b'z' | b'A'..=b'Z' | b'.' | b'+' | b'-') {
                        // still in the token
                    } else {
                        self.push_token(input.get(run_start..i).unwrap_or_default())?;
                        self.lex = Lex::Between;
                        self.end_scalar(out);
                        run_start = i;
                        continue;
                    }
                }
                Lex::Between => {
                    match b {
                        b' ' | b'\t' | b'\r' | b'\n' => out.push(b),
                        b'{' | b'[' => {
                            self.value_starts();
                            if self.stack.len() >= MAX_DEPTH {
                                return Err(JsonError::TooDeep);
                            }
                            if self.masked_from.is_none()
                                && let Some(r) = self.field_here()
                            {
                                self.masked_from = Some((self.stack.len(), r));
                            }
                            self.stack.push(if b == b'{' {
                                Frame::Object { key: None, want_key: true }
                            } else {
                                Frame::Array { index: 0, empty: true }
                            });
                            out.push(b);
                        }
                        b'}' | b']' => {
                            let ok = matches!(
                                (self.stack.pop(), b),
                                (Some(Frame::Object { .. }), b'}') | (Some(Frame::Array { .. }), b']')
                            );
                            if !ok {
                                return Err(self.syntax(b));
                            }
                            if self.masked_from.is_some_and(|(d, _)| d == self.stack.len()) {
                                self.masked_from = None;
                            }
                            out.push(b);
                        }
                        b':' => match self.stack.last_mut() {
                            Some(Frame::Object { key: Some(_), want_key: false }) => out.push(b),
                            _ => return Err(self.syntax(b)),
                        },
                        b',' => {
                            match self.stack.last_mut() {
                                Some(Frame::Object { key, want_key }) => {
                                    *key = None;
                                    *want_key = true;
                                }
                                Some(Frame::Array { index, .. }) => *index += 1,
                                None => return Err(self.syntax(b)),
                            }
                            out.push(b);
                        }
                        b'"' => {
                            let key = matches!(self.stack.last(), Some(Frame::Object { want_key: true, .. }));
                            if !key {
                                self.value_starts();
                            }
                            self.lex = Lex::Str { key, escape: false };
                            self.token.clear();
                            run_start = i + 1;
                        }
                        b'-' | b'0'..=b'9' | b't' | b'f' | b'n' => {
                            self.value_starts();
                            self.lex = Lex::Scalar;
                            self.token.clear();
                            run_start = i;
                        }
                        _ => return Err(self.syntax(b)),
                    }
                    self.offset += 1;
                    i += 1;
                    continue;
                }
            }
            self.offset += 1;
            i += 1;
        }
        if self.lex != Lex::Between {
            self.push_token(input.get(run_start..).unwrap_or_default())?;
        }
        Ok(())
    }

    /// The body ended: a token still open is finished (a top-level number)
    /// or the body was cut.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), JsonError> {
        match self.lex {
            Lex::Scalar => {
                self.lex = Lex::Between;
                self.end_scalar(out);
            }
            Lex::Str { .. } => return Err(JsonError::Truncated),
            Lex::Between => {}
        }
        if self.stack.is_empty() { Ok(()) } else { Err(JsonError::Truncated) }
    }

    fn syntax(&self, byte: u8) -> JsonError {
        JsonError::Syntax { byte, offset: self.offset }
    }

    fn push_token(&mut self, part: &[u8]) -> Result<(), JsonError> {
        if self.token.len() + part.len() > MAX_TOKEN {
            return Err(JsonError::TokenTooLong);
        }
        self.token.extend_from_slice(part);
        Ok(())
    }

    /// A value starts in the current container (arrays: it is the one at `index`).
    fn value_starts(&mut self) {
        if let Some(Frame::Array { empty, .. }) = self.stack.last_mut() {
            *empty = false;
        }
    }

    fn path(&self) -> Vec<Step> {
        self.stack
            .iter()
            .map(|f| match f {
                Frame::Object { key, .. } => Step::Key(key.clone().unwrap_or_default()),
                Frame::Array { index, .. } => Step::Index(*index),
            })
            .collect()
    }

    fn field_here(&self) -> Option<usize> {
        let fields = self.fields.as_ref()?;
        fields.find(&self.path())
    }

    /// The rule masking the value about to end, if any.
    fn rule_for_value(&self) -> Option<usize> {
        self.masked_from.map(|(_, r)| r).or_else(|| self.field_here())
    }

    fn end_string(&mut self, key: bool, out: &mut Vec<u8>) -> Result<(), JsonError> {
        let raw = std::mem::take(&mut self.token);
        if key {
            let name = unescape(&raw).map(|b| String::from_utf8_lossy(&b).into_owned()).ok_or(JsonError::Truncated)?;
            if let Some(Frame::Object { key, want_key }) = self.stack.last_mut() {
                *key = Some(name);
                *want_key = false;
            }
            out.push(b'"');
            out.extend_from_slice(&raw);
            out.push(b'"');
            self.token = raw;
            return Ok(());
        }
        let decoded = unescape(&raw);
        self.emit_value(&raw, decoded.as_deref(), true, out);
        self.token = raw;
        Ok(())
    }

    fn end_scalar(&mut self, out: &mut Vec<u8>) {
        let raw = std::mem::take(&mut self.token);
        let literal = matches!(raw.as_slice(), b"true" | b"false" | b"null");
        if literal && self.rule_for_value().is_none() {
            out.extend_from_slice(&raw);
        } else {
            self.emit_value(&raw, Some(&raw), false, out);
        }
        self.token = raw;
    }

    /// Writes one scalar: masked whole by a field rule, through the
    /// detectors, or as it arrived.
    fn emit_value(&mut self, raw: &[u8], decoded: Option<&[u8]>, quoted: bool, out: &mut Vec<u8>) {
        let original = |out: &mut Vec<u8>| {
            if quoted {
                out.push(b'"');
            }
            out.extend_from_slice(raw);
            if quoted {
                out.push(b'"');
            }
        };
        // A string whose escapes do not decode is masked whole: it cannot be scanned.
        let value = decoded.unwrap_or(raw);
        let fields = self.fields.clone();
        let rule = self.rule_for_value();
        if let Some((_, style, key)) = rule.and_then(|r| fields.as_deref()?.rules.get(r)) {
            self.scratch.clear();
            self.counts.add_columns(1);
            match self.profile.mask_value(*style, key, value, &mut self.scratch) {
                MaskOutput::Null => out.extend_from_slice(b"null"),
                _ => push_json_string(&self.scratch, out),
            }
            return;
        }
        if decoded.is_none() {
            out.extend_from_slice(b"\"****\"");
            return;
        }
        self.scratch.clear();
        // As a terminal shows it (`jq -r` prints a log line's colour codes).
        match super::shown::scan_shown(&self.profile, value, &mut self.scratch, &mut self.counts) {
            MaskOutput::Unchanged => original(out),
            MaskOutput::Written => push_json_string(&self.scratch, out),
            MaskOutput::Null => out.extend_from_slice(b"null"),
        }
    }
}

/// Decodes a JSON string's escapes; `None` if they are malformed.
fn unescape(raw: &[u8]) -> Option<Vec<u8>> {
    if memchr::memchr(b'\\', raw).is_none() {
        return Some(raw.to_vec());
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while let Some(&b) = raw.get(i) {
        if b != b'\\' {
            out.push(b);
            i += 1;
            continue;
        }
        let e = *raw.get(i + 1)?;
        i += 2;
        match e {
            b'"' | b'\\' | b'/' => out.push(e),
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'u' => {
                let hex = |at: usize| -> Option<u32> {
                    let h = raw.get(at..at + 4)?;
                    u32::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok()
                };
                let mut cp = hex(i)?;
                i += 4;
                if (0xD800..0xDC00).contains(&cp) && raw.get(i) == Some(&b'\\') && raw.get(i + 1) == Some(&b'u') {
                    let lo = hex(i + 2)?;
                    if (0xDC00..0xE000).contains(&lo) {
                        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                        i += 6;
                    }
                }
                let c = char::from_u32(cp).unwrap_or('\u{FFFD}');
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
            _ => return None,
        }
    }
    Some(out)
}

/// Writes `s` as a JSON string.
fn push_json_string(s: &[u8], out: &mut Vec<u8>) {
    out.push(b'"');
    for &b in s {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0..=0x1f => {
                out.extend_from_slice(format!("\\u{b:04x}").as_bytes());
            }
            _ => out.push(b),
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mask::{Detector, ProfileSpec};

    fn profile() -> Arc<Profile> {
        Arc::new(
            Profile::compile(&ProfileSpec {
                name: "t".into(),
                detectors: vec![(Detector::Card, Style::Partial), (Detector::Email, Style::Partial)],
                ..ProfileSpec::default()
            })
            .unwrap(),
        )
    }

    fn run(p: &Arc<Profile>, f: Option<&FieldRules>, input: &[u8], chunk: usize) -> Result<String, JsonError> {
        let mut m = JsonMasker::new(p.clone(), f.cloned().map(Arc::new));
        let mut out = Vec::new();
        for c in input.chunks(chunk) {
            m.feed(c, &mut out)?;
        }
        m.finish(&mut out)?;
        Ok(String::from_utf8(out).unwrap())
    }

    #[test]
    fn detectors_mask_strings_and_numbers_in_any_chunking() {
        let p = profile();
        let body = br#"{"customer": {"name": "Ann", "card": "4111 1111 1111 1111", "n": 4111111111111111}, "ok": true, "list": [1, "x@example.com"]}"#;
        for chunk in [1, 3, 7, 1000] {
            let out = run(&p, None, body, chunk).unwrap();
            assert!(!out.contains("4111 1111 1111 1111"), "{out}");
            assert!(!out.contains("4111111111111111"), "{out}");
            assert!(out.contains(r#""name": "Ann""#), "{out}");
            assert!(out.contains(r#""ok": true"#), "{out}");
            assert!(out.contains("1111"), "{out}");
            assert!(!out.contains("x@example.com"), "{out}");
            serde_json::from_str::<serde_json::Value>(&out).unwrap();
        }
    }

    #[test]
    fn field_rules_mask_named_values_and_whole_containers() {
        let p = profile();
        let f = FieldRules::compile(
            &p,
            &[
                ("$.customer.secret".into(), Style::Redact),
                ("*.ssn".into(), Style::Null),
                ("$.items[*].pin".into(), Style::Redact),
                ("$.hidden".into(), Style::Redact),
            ],
        )
        .unwrap();
        let body = br#"{"customer":{"secret":"abc","ssn":"123-45-6789"},"items":[{"pin":1234},{"pin":"9"}],"hidden":{"a":[1,"b"]},"secret":"shown"}"#;
        for chunk in [1, 5, 1000] {
            let out = run(&p, Some(&f), body, chunk).unwrap();
            let v: serde_json::Value = serde_json::from_str(&out).unwrap();
            assert_eq!(v["customer"]["secret"], "****");
            assert_eq!(v["customer"]["ssn"], serde_json::Value::Null);
            assert_eq!(v["items"][0]["pin"], "****");
            assert_eq!(v["items"][1]["pin"], "****");
            assert_eq!(v["hidden"], serde_json::json!({"a": ["****", "****"]}));
            assert_eq!(v["secret"], "shown");
        }
    }

    #[test]
    fn field_names_are_matched_as_the_client_reads_them() {
        let p = profile();
        let f =
            FieldRules::compile(&p, &[("*.ssn".into(), Style::Redact), ("$.customer.secret".into(), Style::Redact)])
                .unwrap();
        for body in [
            &br#"{"c":{"s\u0073n":"123-45-6789"}}"#[..],
            br#"{"customer":{"s\u0065cret":"abc"}}"#,
            br#"{"c":{"ssn":"x","ssn":"123-45-6789"}}"#,
            br#"{"customer":{"a":1},"customer":{"secret":"abc"}}"#,
        ] {
            for chunk in [1, 3, 1000] {
                let out = run(&p, Some(&f), body, chunk).unwrap();
                assert!(
                    !out.contains("123-45-6789") && !out.contains("abc"),
                    "{} -> {out}",
                    String::from_utf8_lossy(body)
                );
            }
        }
    }

    #[test]
    fn colour_codes_inside_a_value_do_not_hide_it() {
        let p = profile();
        let body = br#"{"msg":"paid \u001b[01;31m\u001b[K4111\u001b[m\u001b[K 1111 1111 1111","ok":"\u001b[32mfine\u001b[0m"}"#;
        let out = run(&p, None, body, 3).unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let digits: String = v["msg"].as_str().unwrap_or_default().chars().filter(char::is_ascii_digit).collect();
        assert!(!digits.contains("4111111111111111"), "{out}");
        assert_eq!(v["ok"], "\u{1b}[32mfine\u{1b}[0m", "a value without a finding keeps its codes");
    }

    #[test]
    fn escapes_are_decoded_before_scanning() {
        let p = profile();
        let body = br#"["\u0034111 1111 1111 1111", "a\"b"]"#;
        let out = run(&p, None, body, 4).unwrap();
        assert!(!out.contains("111 1111 1111"), "{out}");
        assert!(out.contains(r#""a\"b""#), "{out}");
    }

    #[test]
    fn malformed_json_is_an_error() {
        let p = profile();
        assert!(run(&p, None, b"{\"a\": 1]", 3).is_err());
        assert!(run(&p, None, b"{\"a\": \"x", 3).is_err());
        assert!(run(&p, None, b"<html>", 3).is_err());
    }

    #[test]
    fn patterns_parse() {
        assert!(FieldPattern::parse("$").is_err());
        assert!(FieldPattern::parse("a..b").is_err());
        assert!(FieldPattern::parse("$.a[2].b").is_ok());
        assert!(FieldPattern::parse("$.a[x]").is_err());
    }
}
