//! Bodies on their way through: masked (JSON, text, form), decoded and
//! re-encoded (gzip, deflate), capped (`max_body`), counted and captured
//! for the record, all while they stream.
//!
//! [`Transform`] is sans-IO (bytes in, bytes out); [`Piped`] wraps a hyper
//! body with one, and reports what went through when the body ends (or is
//! dropped half-way) to a [`Sink`].

use std::io::Write as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::mask::json::{FieldRules, JsonMasker};
use crate::mask::{Counts, MaskOutput, Profile};

/// Boxed error for bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The text held back while waiting for a line end (a value the detectors
/// look for does not span lines).
const TEXT_CARRY: usize = 64 * 1024;
/// A form body is decoded whole, up to this size.
pub const MAX_FORM: usize = 1 << 20;
/// Compressed input is inflated this much at a time.
const INFLATE_STEP: usize = 1024;

/// Why a body could not go through.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("backend: {0}")]
    Backend(#[source] hyper::Error),
    #[error("client: {0}")]
    Client(#[source] hyper::Error),
    #[error("masking: {0}")]
    Json(#[from] crate::mask::json::JsonError),
    #[error("masking: a form body over {MAX_FORM} bytes")]
    FormTooLarge,
    #[error("masking: a form body that does not decode")]
    BadForm,
    #[error("masking: the text body holds {0}, which the client could read as text the detectors cannot")]
    NotText(&'static str),
    #[error("the {encoding} body does not decode: {message}")]
    Encoding { encoding: &'static str, message: String },
    #[error("the request body is over the rule's max_body of {max} bytes")]
    TooLarge { max: u64 },
}

/// What kind of body a masked rule lets through, from its `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Json,
    Text,
    Form,
}

impl Kind {
    /// `None`: a type masking cannot read (the response is refused on a masked rule).
    pub fn of(content_type: Option<&str>) -> Option<Self> {
        let ct = content_type.unwrap_or("").split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        if ct == "application/json" || ct.ends_with("+json") || ct == "application/x-ndjson" {
            Some(Self::Json)
        } else if ct == "application/x-www-form-urlencoded" {
            Some(Self::Form)
        } else if ct.starts_with("text/")
            || ct.is_empty()
            || matches!(ct.as_str(), "application/xml" | "application/javascript" | "application/problem+xml")
            || ct.ends_with("+xml")
        {
            Some(Self::Text)
        } else {
            None
        }
    }
}

/// The charset a masked body's `Content-Type` names, if the detectors can
/// read it: `Ok(true)` UTF-8 (or none, or ASCII), `Ok(false)` a single-byte
/// charset that keeps ASCII as ASCII; `Err(name)` any other (UTF-16, UTF-7,
/// EBCDIC…), whose bytes the client decodes into text the detectors never saw.
pub fn charset(content_type: Option<&str>) -> Result<bool, String> {
    let Some(ct) = content_type else { return Ok(true) };
    let Some(name) = ct.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim().eq_ignore_ascii_case("charset").then(|| v.trim().trim_matches('"').to_ascii_lowercase())
    }) else {
        return Ok(true);
    };
    let single = |n: &str| {
        n.strip_prefix("iso-8859-")
            .or_else(|| n.strip_prefix("iso8859-"))
            .is_some_and(|d| d.parse::<u8>().is_ok_and(|d| (1..=16).contains(&d)))
            || n.strip_prefix("windows-125").is_some_and(|d| matches!(d.as_bytes(), [b] if b.is_ascii_digit()))
            || matches!(n, "latin1" | "latin-1" | "l1" | "cp1252")
    };
    match name.as_str() {
        "utf-8" | "utf8" | "us-ascii" | "ascii" => Ok(true),
        n if single(n) => Ok(false),
        _ => Err(name),
    }
}

/// HTML or XML, whose text a reader sees rendered — or no type at all,
/// which browsers sniff (and may render as HTML).
pub fn is_markup(content_type: Option<&str>) -> bool {
    let mime = content_type.unwrap_or("").split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    mime.is_empty() || mime == "text/html" || mime.ends_with("/xml") || mime.ends_with("+xml")
}

/// What a masked text body is checked for as it streams: a NUL byte (no
/// text has one; UTF-16 and compressed bytes do), a UTF-16 byte order mark
/// at the start, and bytes that are not UTF-8 (unless the charset is a
/// single-byte one). Any of them cuts the body.
#[derive(Debug, Default)]
struct TextCheck {
    single_byte: bool,
    /// HTML or XML: values are also looked for in the text as rendered.
    markup: bool,
    /// The body's first bytes, up to 2, for the byte order mark.
    head: Vec<u8>,
    /// An unfinished UTF-8 sequence at the end of the last chunk.
    partial: Vec<u8>,
}

impl TextCheck {
    fn push(&mut self, input: &[u8]) -> Result<(), BodyError> {
        if self.head.len() < 2 {
            let take = (2 - self.head.len()).min(input.len());
            self.head.extend_from_slice(input.get(..take).unwrap_or_default());
            if matches!(self.head.as_slice(), [0xff, 0xfe] | [0xfe, 0xff]) {
                return Err(BodyError::NotText("a UTF-16 byte order mark"));
            }
        }
        if memchr::memchr(0, input).is_some() {
            return Err(BodyError::NotText("a NUL byte"));
        }
        if self.single_byte {
            return Ok(());
        }
        let mut bytes = std::mem::take(&mut self.partial);
        bytes.extend_from_slice(input);
        match std::str::from_utf8(&bytes) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_none() => {
                self.partial = bytes.get(e.valid_up_to()..).unwrap_or_default().to_vec();
                Ok(())
            }
            Err(_) => Err(BodyError::NotText("bytes that are not UTF-8")),
        }
    }

    fn finish(&mut self) -> Result<(), BodyError> {
        if self.partial.is_empty() { Ok(()) } else { Err(BodyError::NotText("bytes that are not UTF-8")) }
    }
}

/// A content coding the pipeline can undo and redo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    Gzip,
    Deflate,
}

impl Coding {
    /// `Ok(None)`: identity; `Err(name)`: a coding masking cannot read.
    pub fn of(content_encoding: Option<&str>) -> Result<Option<Self>, String> {
        match content_encoding.map(|s| s.trim().to_ascii_lowercase()).as_deref() {
            None | Some("" | "identity") => Ok(None),
            Some("gzip" | "x-gzip") => Ok(Some(Self::Gzip)),
            Some("deflate") => Ok(Some(Self::Deflate)),
            Some(other) => Err(other.to_owned()),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Gzip => "gzip",
            Self::Deflate => "deflate",
        }
    }
}

enum Inflate {
    Gzip(flate2::write::GzDecoder<Vec<u8>>),
    Deflate(flate2::write::ZlibDecoder<Vec<u8>>),
}

enum Deflate {
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    Deflate(flate2::write::ZlibEncoder<Vec<u8>>),
}

enum Masker {
    Json(Box<JsonMasker>),
    Text { profile: Arc<Profile>, carry: Vec<u8>, counts: Counts, check: TextCheck },
    Form { profile: Arc<Profile>, buf: Vec<u8>, counts: Counts },
}

/// Undo coding → mask → remove the held credential → redo coding, chunk by chunk.
pub struct Transform {
    coding: Option<(Coding, Inflate, Deflate)>,
    /// `None`: nothing to mask, only the held credential to look for.
    masker: Option<Masker>,
    scrub: Option<Scrub>,
}

impl Transform {
    pub fn new(kind: Kind, coding: Option<Coding>, profile: Arc<Profile>, fields: Option<Arc<FieldRules>>) -> Self {
        let masker = match kind {
            Kind::Json => Masker::Json(Box::new(JsonMasker::new(profile, fields))),
            Kind::Text => {
                Masker::Text { profile, carry: Vec::new(), counts: Counts::default(), check: TextCheck::default() }
            }
            Kind::Form => Masker::Form { profile, buf: Vec::new(), counts: Counts::default() },
        };
        Self { coding: Self::coding(coding), masker: Some(masker), scrub: None }
    }

    /// An HTML or XML body: a value the page shows whole but writes with
    /// markup inside (`4111 <span>1111</span>…`, `&#52;111`) is looked for
    /// in the rendered text too.
    #[must_use]
    pub fn markup_text(mut self) -> Self {
        if let Some(Masker::Text { check, .. }) = &mut self.masker {
            check.markup = true;
        }
        self
    }

    /// A text body in a single-byte charset (`iso-8859-1`, `windows-1252`):
    /// its bytes are not checked as UTF-8 (NULs and UTF-16 marks still are).
    #[must_use]
    pub fn single_byte_text(mut self) -> Self {
        if let Some(Masker::Text { check, .. }) = &mut self.masker {
            check.single_byte = true;
        }
        self
    }

    /// Nothing masked: the body (decoded, whatever its type) is only searched
    /// for the held credential.
    pub fn scrub_only(coding: Option<Coding>, needles: Needles) -> Self {
        Self { coding: Self::coding(coding), masker: None, scrub: Some(Scrub::new(needles)) }
    }

    /// Also removes `needles` (after masking, before coding again).
    pub fn with_scrub(mut self, needles: Option<Needles>) -> Self {
        self.scrub = needles.map(Scrub::new);
        self
    }

    /// Held-credential secrets removed so far.
    pub fn scrubbed(&self) -> u64 {
        self.scrub.as_ref().map_or(0, |s| s.hits)
    }

    fn coding(coding: Option<Coding>) -> Option<(Coding, Inflate, Deflate)> {
        let level = flate2::Compression::fast();
        coding.map(|c| match c {
            Coding::Gzip => (
                c,
                Inflate::Gzip(flate2::write::GzDecoder::new(Vec::new())),
                Deflate::Gzip(flate2::write::GzEncoder::new(Vec::new(), level)),
            ),
            Coding::Deflate => (
                c,
                Inflate::Deflate(flate2::write::ZlibDecoder::new(Vec::new())),
                Deflate::Deflate(flate2::write::ZlibEncoder::new(Vec::new(), level)),
            ),
        })
    }

    /// Values masked so far.
    pub fn counts(&self) -> Counts {
        match &self.masker {
            None => Counts::default(),
            Some(Masker::Json(j)) => j.counts.clone(),
            Some(Masker::Text { counts, .. } | Masker::Form { counts, .. }) => counts.clone(),
        }
    }

    /// Decoded bytes through the masker (if any) into `plain`.
    fn mask(masker: &mut Option<Masker>, decoded: &[u8], plain: &mut Vec<u8>) -> Result<(), BodyError> {
        match masker {
            Some(m) => m.push(decoded, plain),
            None => {
                plain.extend_from_slice(decoded);
                Ok(())
            }
        }
    }

    /// One chunk of the body as it arrived; returns what may be sent.
    pub fn push(&mut self, input: &[u8]) -> Result<Vec<u8>, BodyError> {
        let mut plain = Vec::new();
        match &mut self.coding {
            None => Self::mask(&mut self.masker, input, &mut plain)?,
            Some((c, inflate, _)) => {
                let name = c.name();
                for step in input.chunks(INFLATE_STEP) {
                    let decoded = inflate.write(step, name)?;
                    Self::mask(&mut self.masker, &decoded, &mut plain)?;
                }
            }
        }
        if let Some(s) = &mut self.scrub {
            plain = s.push(&plain);
        }
        self.encode(&plain, false)
    }

    /// The body ended: what is left to send.
    pub fn finish(&mut self) -> Result<Vec<u8>, BodyError> {
        let mut plain = Vec::new();
        if let Some((c, inflate, _)) = &mut self.coding {
            let name = c.name();
            let rest = inflate.finish(name)?;
            Self::mask(&mut self.masker, &rest, &mut plain)?;
        }
        if let Some(m) = &mut self.masker {
            m.finish(&mut plain)?;
        }
        if let Some(s) = &mut self.scrub {
            plain = s.push(&plain);
            plain.extend_from_slice(&s.finish());
        }
        self.encode(&plain, true)
    }

    fn encode(&mut self, plain: &[u8], last: bool) -> Result<Vec<u8>, BodyError> {
        let Some((c, _, deflate)) = &mut self.coding else { return Ok(plain.to_vec()) };
        let err = |e: std::io::Error| BodyError::Encoding { encoding: c.name(), message: e.to_string() };
        match deflate {
            Deflate::Gzip(g) => {
                g.write_all(plain).map_err(err)?;
                if last {
                    g.try_finish().map_err(err)?
                } else {
                    g.flush().map_err(err)?
                }
                Ok(std::mem::take(g.get_mut()))
            }
            Deflate::Deflate(z) => {
                z.write_all(plain).map_err(err)?;
                if last {
                    z.try_finish().map_err(err)?
                } else {
                    z.flush().map_err(err)?
                }
                Ok(std::mem::take(z.get_mut()))
            }
        }
    }
}

impl Inflate {
    fn write(&mut self, input: &[u8], name: &'static str) -> Result<Vec<u8>, BodyError> {
        let err = |e: std::io::Error| BodyError::Encoding { encoding: name, message: e.to_string() };
        match self {
            Self::Gzip(d) => {
                d.write_all(input).map_err(err)?;
                Ok(std::mem::take(d.get_mut()))
            }
            Self::Deflate(d) => {
                d.write_all(input).map_err(err)?;
                Ok(std::mem::take(d.get_mut()))
            }
        }
    }

    fn finish(&mut self, name: &'static str) -> Result<Vec<u8>, BodyError> {
        let err = |e: std::io::Error| BodyError::Encoding { encoding: name, message: e.to_string() };
        match self {
            Self::Gzip(d) => {
                d.try_finish().map_err(err)?;
                Ok(std::mem::take(d.get_mut()))
            }
            Self::Deflate(d) => {
                d.try_finish().map_err(err)?;
                Ok(std::mem::take(d.get_mut()))
            }
        }
    }
}

impl Masker {
    fn push(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), BodyError> {
        match self {
            Self::Json(j) => j.feed(input, out)?,
            Self::Text { profile, carry, counts, check } => {
                check.push(input)?;
                carry.extend_from_slice(input);
                // Scan up to the last line end (values the detectors find
                // do not span lines; a card's groups do span spaces); past
                // the carry bound, up to a space with no digit beside it.
                let cut = match memchr::memrchr(b'\n', carry) {
                    Some(i) => i + 1,
                    None if carry.len() > TEXT_CARRY => carry
                        .windows(3)
                        .rposition(|w| {
                            matches!(w, [a, s, b] if s.is_ascii_whitespace() && !a.is_ascii_digit() && !b.is_ascii_digit())
                        })
                        .map_or(carry.len(), |i| i + 2),
                    None => 0,
                };
                if cut > 0 {
                    let rest = carry.split_off(cut);
                    scan_text(profile, carry, check.markup, out, counts);
                    *carry = rest;
                }
            }
            Self::Form { buf, .. } => {
                if buf.len() + input.len() > MAX_FORM {
                    return Err(BodyError::FormTooLarge);
                }
                buf.extend_from_slice(input);
            }
        }
        Ok(())
    }

    fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), BodyError> {
        match self {
            Self::Json(j) => j.finish(out)?,
            Self::Text { profile, carry, counts, check } => {
                check.finish()?;
                let rest = std::mem::take(carry);
                scan_text(profile, &rest, check.markup, out, counts);
            }
            Self::Form { profile, buf, counts } => {
                let text = std::str::from_utf8(buf).map_err(|_| BodyError::BadForm)?;
                let mut first = true;
                for pair in text.split('&') {
                    if !first {
                        out.push(b'&');
                    }
                    first = false;
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    out.extend_from_slice(k.as_bytes());
                    if !pair.contains('=') {
                        continue;
                    }
                    out.push(b'=');
                    let value = crate::policy::http::percent_decode(v.as_bytes(), true).ok_or(BodyError::BadForm)?;
                    let mut masked = Vec::new();
                    match profile.scan(&value, &mut masked, counts) {
                        MaskOutput::Unchanged => out.extend_from_slice(v.as_bytes()),
                        MaskOutput::Written => form_encode(&masked, out),
                        MaskOutput::Null => out.extend_from_slice(b"****"),
                    }
                }
            }
        }
        Ok(())
    }
}

/// A piece of a text body through the detectors. Markup (HTML, XML) is
/// masked as written, and that result is kept only if its rendered text —
/// tags and comments out, character references decoded, what a reader
/// sees — holds nothing the detectors find; otherwise the piece goes out as
/// its rendered text, masked (its markup lost: the safe side). Comparing
/// counts would not do: a value in an attribute (raw only) can hide one
/// that only the rendered text shows.
fn scan_text(profile: &Profile, text: &[u8], markup: bool, out: &mut Vec<u8>, counts: &mut Counts) {
    if !markup || !text.iter().any(|&b| b == b'<' || b == b'&') {
        return scan_into(profile, text, out, counts);
    }
    let (mut as_is, mut as_is_counts) = (Vec::new(), Counts::default());
    scan_into(profile, text, &mut as_is, &mut as_is_counts);
    let (mut probe, mut probe_counts) = (Vec::new(), Counts::default());
    let seen = crate::mask::shown::scan_shown(profile, &render_markup(&as_is), &mut probe, &mut probe_counts);
    if matches!(seen, MaskOutput::Unchanged) {
        out.extend_from_slice(&as_is);
        counts.merge(&as_is_counts);
    } else {
        scan_into(profile, &render_markup(text), out, counts);
    }
}

/// Markup as a reader sees its text: tags, comments and CDATA brackets
/// removed, character references (`&#52;`, `&#x34;`, `&amp;`, `&nbsp;`…) decoded.
fn render_markup(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while let Some(&b) = text.get(i) {
        let rest = text.get(i..).unwrap_or_default();
        if rest.starts_with(b"<!--") {
            i += memchr::memmem::find(rest, b"-->").map_or(rest.len(), |e| e + 3);
        } else if rest.starts_with(b"<![CDATA[") {
            i += 9;
        } else if rest.starts_with(b"]]>") {
            i += 3;
        } else if b == b'<'
            && rest.get(1).is_some_and(|c| c.is_ascii_alphabetic() || *c == b'/' || *c == b'!' || *c == b'?')
        {
            i += memchr::memchr(b'>', rest).map_or(rest.len(), |e| e + 1);
        } else if b == b'&' {
            match char_reference(rest) {
                Some((c, len)) => {
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                    i += len;
                }
                None => {
                    out.push(b);
                    i += 1;
                }
            }
        } else {
            out.push(b);
            i += 1;
        }
    }
    out
}

/// The character a reference at the start of `rest` stands for, and its
/// length, read as browsers do: a numeric reference ends at its last digit,
/// `;` or not (`&#52<b></b>111` shows `4111`), and the legacy names (`&amp`,
/// `&lt`, `&nbsp`…) need no `;` either.
fn char_reference(rest: &[u8]) -> Option<(char, usize)> {
    let body = rest.get(1..)?;
    let semi = |at: usize| usize::from(body.get(at) == Some(&b';'));
    if let Some(num) = body.strip_prefix(b"#") {
        let hex = matches!(num.first(), Some(b'x' | b'X'));
        let digits = num.get(usize::from(hex)..)?;
        let len = digits.iter().take_while(|c| if hex { c.is_ascii_hexdigit() } else { c.is_ascii_digit() }).count();
        if len == 0 {
            return None;
        }
        let text = std::str::from_utf8(digits.get(..len)?).ok()?;
        // Out of range or not a character: what a browser shows instead.
        let c =
            u32::from_str_radix(text, if hex { 16 } else { 10 }).ok().and_then(char::from_u32).unwrap_or('\u{fffd}');
        let at = 1 + usize::from(hex) + len;
        return Some((c, 1 + at + semi(at)));
    }
    // (name, character, recognised without `;`)
    const NAMED: &[(&[u8], char, bool)] = &[
        (b"amp", '&', true),
        (b"lt", '<', true),
        (b"gt", '>', true),
        (b"quot", '"', true),
        (b"nbsp", ' ', true),
        (b"apos", '\'', false),
        (b"ensp", ' ', false),
        (b"emsp", ' ', false),
        (b"thinsp", ' ', false),
    ];
    NAMED.iter().find_map(|&(name, c, legacy)| {
        let ends = semi(name.len()) == 1;
        (body.starts_with(name) && (ends || legacy)).then(|| (c, 1 + name.len() + semi(name.len())))
    })
}

/// Text bodies are scanned as a terminal shows them (`kubectl logs`, `curl`
/// print an application's colour codes): see [`crate::mask::shown`].
fn scan_into(profile: &Profile, text: &[u8], out: &mut Vec<u8>, counts: &mut Counts) {
    crate::mask::shown::scan_as_shown(profile, text, out, counts);
}

fn form_encode(v: &[u8], out: &mut Vec<u8>) {
    for &b in v {
        if b.is_ascii_alphanumeric() || matches!(b, b'*' | b'-' | b'.' | b'_') {
            out.push(b);
        } else if b == b' ' {
            out.push(b'+');
        } else {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
    }
}

/// The secrets a scrubber removes (a held credential: its header value and
/// its secret parts), matched exactly.
#[derive(Debug, Clone)]
pub struct Needles {
    ac: Arc<aho_corasick::AhoCorasick>,
    /// What replaces each pattern (`****`, in UTF-16 for a UTF-16 form).
    with: Arc<[&'static [u8]]>,
    /// The patterns themselves (each needle in each of its forms).
    patterns: Arc<[Vec<u8>]>,
    longest: usize,
}

impl Needles {
    /// `None` without any needle (or one the automaton cannot take). Each
    /// needle is also looked for as JSON, URL and HTML encoders write it
    /// (`super::echo_forms`): `\/` (PHP), `\u002B` (.NET), `%2B`, `&#43;`.
    pub fn new(needles: &[Vec<u8>]) -> Option<Self> {
        let mut all: Vec<Vec<u8>> = Vec::new();
        let mut with: Vec<&'static [u8]> = Vec::new();
        for n in needles.iter().filter(|n| !n.is_empty()) {
            for (form, stand_in) in super::echo_forms::forms(n) {
                if !all.contains(&form) {
                    all.push(form);
                    with.push(stand_in);
                }
            }
        }
        let longest = all.iter().map(Vec::len).max()?;
        let ac = aho_corasick::AhoCorasick::builder()
            .match_kind(aho_corasick::MatchKind::LeftmostLongest)
            .build(&all)
            .ok()?;
        Some(Self { ac: Arc::new(ac), with: with.into(), patterns: all.into(), longest })
    }

    fn stand_in(&self, m: &aho_corasick::Match) -> &'static [u8] {
        self.with.get(m.pattern().as_usize()).copied().unwrap_or(super::echo_forms::SCRUBBED)
    }

    /// `value` with every needle replaced, and how many were.
    pub fn replace_all(&self, value: &[u8]) -> (Vec<u8>, u64) {
        let mut out = Vec::with_capacity(value.len());
        let mut last = 0;
        let mut hits = 0;
        for m in self.ac.find_iter(value) {
            out.extend_from_slice(value.get(last..m.start()).unwrap_or_default());
            out.extend_from_slice(self.stand_in(&m));
            last = m.end();
            hits += 1;
        }
        out.extend_from_slice(value.get(last..).unwrap_or_default());
        (out, hits)
    }

    /// Every needle in `buf` overwritten where it lies, with its stand-in's
    /// characters repeated to the needle's length: the bytes around it (a
    /// WebSocket frame's length, the framing after it) stay as they were.
    /// How many were.
    pub fn blank_in_place(&self, buf: &mut [u8]) -> u64 {
        let found: Vec<(usize, usize, &'static [u8])> =
            self.ac.find_iter(&*buf).map(|m| (m.start(), m.end(), self.stand_in(&m))).collect();
        for &(start, end, with) in &found {
            if let Some(span) = buf.get_mut(start..end) {
                for (b, w) in span.iter_mut().zip(with.iter().cycle()) {
                    *b = *w;
                }
            }
        }
        found.len() as u64
    }

    /// How many bytes at the end of `buf` are the beginning of a needle
    /// (which the bytes still to come may complete).
    pub fn partial_tail(&self, buf: &[u8]) -> usize {
        let most = self.longest.saturating_sub(1).min(buf.len());
        (1..=most)
            .rev()
            .find(|&k| {
                let tail = buf.get(buf.len() - k..).unwrap_or_default();
                self.patterns.iter().any(|p| p.starts_with(tail))
            })
            .unwrap_or(0)
    }
}

/// Removes needles from a body streamed in chunks: bytes at the end of a
/// chunk that begin a needle wait for the next chunk, so a secret split
/// across chunks is still found whole. Only those: a streamed response (a
/// watch, server-sent events, a log followed) whose chunk ends otherwise is
/// sent whole at once, not `longest - 1` bytes short until the next event.
#[derive(Debug)]
pub struct Scrub {
    needles: Needles,
    carry: Vec<u8>,
    hits: u64,
}

impl Scrub {
    pub fn new(needles: Needles) -> Self {
        Self { needles, carry: Vec::new(), hits: 0 }
    }

    /// One chunk in; what may be sent.
    pub fn push(&mut self, input: &[u8]) -> Vec<u8> {
        let mut buf = std::mem::take(&mut self.carry);
        buf.extend_from_slice(input);
        // A needle starting before `hold` ends inside `buf`; one starting at
        // or after it (its first bytes end `buf`) may still be arriving.
        let hold = buf.len() - self.needles.partial_tail(&buf);
        let mut out = Vec::with_capacity(buf.len());
        let mut last = 0;
        for m in self.needles.ac.find_iter(&buf) {
            if m.start() >= hold {
                break;
            }
            out.extend_from_slice(buf.get(last..m.start()).unwrap_or_default());
            out.extend_from_slice(self.needles.stand_in(&m));
            last = m.end();
            self.hits += 1;
        }
        let sent = last.max(hold);
        out.extend_from_slice(buf.get(last..sent).unwrap_or_default());
        self.carry = buf.get(sent..).unwrap_or_default().to_vec();
        out
    }

    /// The body ended: what is left.
    pub fn finish(&mut self) -> Vec<u8> {
        let rest = std::mem::take(&mut self.carry);
        let (out, hits) = self.needles.replace_all(&rest);
        self.hits += hits;
        out
    }
}

/// What went through a body, reported once when it ends or is dropped.
#[derive(Debug, Default, Clone)]
pub struct Summary {
    /// Bytes sent on (after masking).
    pub bytes: u64,
    /// The first bytes sent on, up to the capture cap.
    pub captured: Vec<u8>,
    /// Whether more was sent than captured.
    pub truncated: bool,
    pub masked: Counts,
    /// Why the body was cut, if it was.
    pub error: Option<String>,
    /// The body ended (false: dropped half-way).
    pub complete: bool,
    /// Held-credential secrets removed from it.
    pub scrubbed: u64,
    /// Trailer sections dropped (a request's, or a transformed body's).
    pub trailers_dropped: u64,
}

/// Receives a body's [`Summary`].
pub type Sink = Box<dyn FnOnce(Summary) + Send>;

/// A body passed through a transform (or not), capped, counted and captured.
pub struct Piped<B> {
    inner: B,
    transform: Option<Transform>,
    /// Request bodies: the rule's `max_body`.
    max: Option<u64>,
    cap: usize,
    summary: Summary,
    sink: Option<Sink>,
    done: bool,
    client_side: bool,
}

impl<B> Piped<B> {
    /// `client_side`: the body comes from the client (errors are the client's,
    /// and its trailer section is dropped).
    pub fn new(
        inner: B,
        transform: Option<Transform>,
        max: Option<u64>,
        cap: usize,
        client_side: bool,
        sink: Sink,
    ) -> Self {
        Self { inner, transform, max, cap, summary: Summary::default(), sink: Some(sink), done: false, client_side }
    }

    fn capture(&mut self, data: &[u8]) {
        self.summary.bytes += data.len() as u64;
        let room = self.cap.saturating_sub(self.summary.captured.len());
        let take = room.min(data.len());
        self.summary.captured.extend_from_slice(data.get(..take).unwrap_or_default());
        if take < data.len() {
            self.summary.truncated = true;
        }
    }

    fn report(&mut self) {
        if let Some(sink) = self.sink.take() {
            if let Some(t) = &self.transform {
                self.summary.masked = t.counts();
                self.summary.scrubbed += t.scrubbed();
            }
            sink(std::mem::take(&mut self.summary));
        }
    }

    fn fail(&mut self, e: BodyError) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.summary.error = Some(e.to_string());
        self.done = true;
        self.report();
        Poll::Ready(Some(Err(Box::new(e))))
    }
}

impl<B> Drop for Piped<B> {
    fn drop(&mut self) {
        if self.sink.is_some() && self.summary.error.is_none() && !self.summary.complete {
            self.summary.error = Some("the body was not read to its end".into());
        }
        self.report();
    }
}

impl<B> Body for Piped<B>
where
    B: Body<Data = Bytes, Error = hyper::Error> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        loop {
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => {
                    let e = if this.client_side { BodyError::Client(e) } else { BodyError::Backend(e) };
                    return this.fail(e);
                }
                Poll::Ready(Some(Ok(frame))) => {
                    let frame = match frame.into_data() {
                        Ok(data) => data,
                        // Trailer fields of a body that is masked or searched for a
                        // held credential are dropped: nothing reads them (a backend
                        // could echo the credential there), and the transform's held
                        // tail must still come before the body ends. So are a
                        // request's: Gatehouse takes client claims (`X-Forwarded-For`,
                        // `Impersonate-*`, the client's `Authorization`) out of the
                        // header section, and a server that merges trailer fields into
                        // the headers (Apache's `MergeTrailers`; CVE-2013-5704) would
                        // take them from the trailer section instead.
                        Err(_) if this.transform.is_some() || this.client_side => {
                            this.summary.trailers_dropped += 1;
                            continue;
                        }
                        Err(other) => return Poll::Ready(Some(Ok(other))),
                    };
                    if let Some(max) = this.max
                        && this.summary.bytes + frame.len() as u64 > max
                    {
                        return this.fail(BodyError::TooLarge { max });
                    }
                    let out = match &mut this.transform {
                        None => frame,
                        Some(t) => match t.push(&frame) {
                            Ok(v) => Bytes::from(v),
                            Err(e) => return this.fail(e),
                        },
                    };
                    if out.is_empty() {
                        continue;
                    }
                    this.capture(&out);
                    return Poll::Ready(Some(Ok(Frame::data(out))));
                }
                Poll::Ready(None) => {
                    this.done = true;
                    let rest = match &mut this.transform {
                        None => Vec::new(),
                        Some(t) => match t.finish() {
                            Ok(v) => v,
                            Err(e) => return this.fail(e),
                        },
                    };
                    this.capture(&rest);
                    this.summary.complete = true;
                    this.report();
                    return Poll::Ready((!rest.is_empty()).then(|| Ok(Frame::data(Bytes::from(rest)))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        if self.transform.is_some() { SizeHint::default() } else { self.inner.size_hint() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A secret split across chunks anywhere is still removed whole; what
    /// is not a secret comes out byte for byte.
    #[test]
    fn scrub_finds_secrets_split_across_chunks() {
        let needles = Needles::new(&[b"Bearer tok-12345678".to_vec(), b"tok-12345678".to_vec()]).unwrap();
        let body =
            b"{\"authorization\": \"Bearer tok-12345678\", \"again\": \"tok-12345678\", \"tail\": \"tok-1234567\"}";
        let want = b"{\"authorization\": \"****\", \"again\": \"****\", \"tail\": \"tok-1234567\"}";
        for size in 1..body.len() {
            let mut s = Scrub::new(needles.clone());
            let mut out = Vec::new();
            for chunk in body.chunks(size) {
                out.extend(s.push(chunk));
            }
            out.extend(s.finish());
            assert_eq!(String::from_utf8_lossy(&out), String::from_utf8_lossy(want), "chunks of {size}");
            assert_eq!(s.hits, 2, "chunks of {size}");
        }
        assert_eq!(needles.replace_all(b"x-Bearer tok-12345678-y").0, b"x-****-y");
        // A streamed event that ends in nothing like the start of a secret goes out whole, at once.
        let mut s = Scrub::new(needles.clone());
        assert_eq!(s.push(b"{\"type\":\"ADDED\",\"object\":{}}\n"), b"{\"type\":\"ADDED\",\"object\":{}}\n");
        assert_eq!(s.push(b"data: next Bear"), b"data: next ");
        assert_eq!(s.push(b"ing\n"), b"Bearing\n");
        // As JSON encoders escape it.
        let b64 = Needles::new(&[b"Basic dXNl/ci+x".to_vec()]).unwrap();
        for echoed in [
            &br#"{"a":"Basic dXNl\/ci+x"}"#[..],
            br#"{"a":"Basic dXNl/ci\u002Bx"}"#,
            br#"{"a":"Basic dXNl\/ci\u002bx"}"#,
        ] {
            let (out, hits) = b64.replace_all(echoed);
            assert_eq!((out.as_slice(), hits), (&br#"{"a":"****"}"#[..], 1), "{}", String::from_utf8_lossy(echoed));
        }
        // A password as JSON, a URL and HTML write it back.
        let pw = Needles::new(&[br#"pa"ss+w/rd"#.to_vec()]).unwrap();
        for echoed in [&br#"{"p":"pa\"ss+w/rd"}"#[..], b"next=pa%22ss%2Bw%2Frd;", b"<b>pa&#34;ss&#43;w/rd</b>"] {
            let (out, hits) = pw.replace_all(echoed);
            assert!(hits == 1 && !String::from_utf8_lossy(&out).contains("ss"), "{}", String::from_utf8_lossy(echoed));
        }
        assert!(Needles::new(&[]).is_none());
    }
    use crate::mask::{Detector, ProfileSpec, Style};
    use std::io::Read as _;

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

    fn run(t: &mut Transform, input: &[u8], chunk: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for c in input.chunks(chunk) {
            out.extend(t.push(c).unwrap());
        }
        out.extend(t.finish().unwrap());
        out
    }

    #[test]
    fn gzip_json_is_inflated_masked_and_deflated_again() {
        let json = format!("[{}]", vec![r#"{"card":"4111 1111 1111 1111","name":"Ann"}"#; 50].join(","));
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(json.as_bytes()).unwrap();
        let gz = enc.finish().unwrap();
        let mut t = Transform::new(Kind::Json, Some(Coding::Gzip), profile(), None);
        let out = run(&mut t, &gz, 17);
        let mut plain = String::new();
        flate2::read::GzDecoder::new(out.as_slice()).read_to_string(&mut plain).unwrap();
        assert!(!plain.contains("4111 1111 1111 1111"));
        assert_eq!(plain.matches("****1111").count(), 50, "{plain}");
        assert_eq!(t.counts().get(Detector::Card), 50);
    }

    #[test]
    fn text_hits_across_chunk_boundaries_are_found() {
        let text = b"pay with 4111 1111 1111 1111 or mail ann@example.com today\n";
        let mut t = Transform::new(Kind::Text, None, profile(), None);
        let out = String::from_utf8(run(&mut t, text, 5)).unwrap();
        assert!(!out.contains("4111 1111 1111 1111"), "{out}");
        assert!(!out.contains("ann@example.com"), "{out}");
        assert!(out.starts_with("pay with ") && out.ends_with("today\n"), "{out}");
        // An application's colour codes in a log (`kubectl logs`) do not split a value.
        let mut t = Transform::new(Kind::Text, None, profile(), None);
        let out =
            String::from_utf8(run(&mut t, b"paid \x1b[01;31m\x1b[K4111\x1b[m\x1b[K 1111 1111 1111\n", 4)).unwrap();
        let digits: String = out.chars().filter(char::is_ascii_digit).collect();
        assert!(!digits.contains("4111111111111111"), "{out:?}");
    }

    /// A value a page shows whole but writes with markup inside is found in
    /// the rendered text; a page without such a value keeps its markup.
    #[test]
    fn markup_inside_a_value_does_not_hide_it() {
        for page in [
            &b"<td><span>4111</span> <span>1111</span> <span>1111</span> <span>1111</span></td>\n"[..],
            b"<p>card &#52;111 1111 1111 1111</p>\n",
            // Browsers end a numeric reference at its last digit, `;` or not.
            b"<p>card &#52<b></b>111 1111 1111 1111</p>\n",
            b"<p>card &#x34<i></i>111&nbsp1111 1111 1111</p>\n",
            b"<p>ann<!-- x -->&#64;example.com</p>\n",
            b"<card><![CDATA[4111]]> 1111 1111 1111</card>\n",
            // A finding in an attribute (raw) and another only the rendered text shows.
            b"<a href=\"mailto:ann@example.com\">mail</a> <span>4111</span> 1111 1111 1111\n",
        ] {
            let mut t = Transform::new(Kind::Text, None, profile(), None).markup_text();
            let out = String::from_utf8(run(&mut t, page, 7)).unwrap();
            let digits: String = out.chars().filter(char::is_ascii_digit).collect();
            assert!(!digits.contains("4111111111111111") && !out.contains("ann@"), "{out}");
        }
        let plain = b"<p class=\"x\">Hello &amp; welcome</p>\n<td>4111 1111 1111 1111 ann@example.com</td>\n";
        let mut t = Transform::new(Kind::Text, None, profile(), None).markup_text();
        let out = String::from_utf8(run(&mut t, plain, 5)).unwrap();
        assert!(
            out.starts_with("<p class=\"x\">Hello &amp; welcome</p>\n<td>")
                && out.ends_with("</td>\n")
                && !out.contains("4111 1111")
                && !out.contains("ann@"),
            "{out}"
        );
        assert!(is_markup(Some("text/html; charset=utf-8")) && is_markup(Some("application/atom+xml")));
        assert!(!is_markup(Some("text/plain")) && is_markup(None) && is_markup(Some("")));
    }

    /// Text the client would decode otherwise than the detectors read it is
    /// cut wherever it is split; UTF-8 split across chunks is not.
    #[test]
    fn text_that_is_not_text_is_cut() {
        let card = "card 4111 1111 1111 1111\n";
        let utf16: Vec<u8> = [0xff, 0xfe].into_iter().chain(card.encode_utf16().flat_map(u16::to_le_bytes)).collect();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(card.as_bytes()).unwrap();
        let gz = gz.finish().unwrap();
        let latin1 = b"caf\xe9 4111 1111 1111 1111\n".to_vec();
        for (body, what, single_byte) in [
            (utf16.clone(), "byte order mark", false),
            (utf16[2..].to_vec(), "NUL", false),
            (gz, "NUL", true),
            (latin1.clone(), "not UTF-8", false),
        ] {
            for size in [1, 2, 3, 1000] {
                let mut t = Transform::new(Kind::Text, None, profile(), None);
                if single_byte {
                    t = t.single_byte_text();
                }
                let mut out = Vec::new();
                let mut err = None;
                for chunk in body.chunks(size) {
                    match t.push(chunk) {
                        Ok(v) => out.extend(v),
                        Err(e) => {
                            err = Some(e.to_string());
                            break;
                        }
                    }
                }
                let err = err.or_else(|| t.finish().err().map(|e| e.to_string()));
                // (Which check fires first depends on where the chunks split.)
                let fired =
                    err.as_deref().is_some_and(|e| e.contains(what) || (size < 3 && e.contains("text body holds")));
                assert!(fired, "{what} in chunks of {size}: {err:?}");
                assert!(!String::from_utf8_lossy(&out).contains("4111"), "{what}");
            }
        }
        // The same Latin-1 text under its own charset, and UTF-8 split anywhere, pass scanned.
        let mut t = Transform::new(Kind::Text, None, profile(), None).single_byte_text();
        let out = run(&mut t, &latin1, 3);
        assert!(out.starts_with(b"caf\xe9 ") && !String::from_utf8_lossy(&out).contains("4111"));
        for size in 1..6 {
            let mut t = Transform::new(Kind::Text, None, profile(), None);
            let out = String::from_utf8(run(&mut t, "café ☕ 4111 1111 1111 1111\n".as_bytes(), size)).unwrap();
            assert!(out.starts_with("café ☕ ") && !out.contains("4111 1111"), "{out}");
        }
        assert_eq!(charset(Some("text/plain")), Ok(true));
        assert_eq!(charset(Some("text/plain; charset=\"UTF-8\"")), Ok(true));
        assert_eq!(charset(Some("text/csv; header=present; charset=ISO-8859-1")), Ok(false));
        assert_eq!(charset(Some("text/plain; charset=windows-1252")), Ok(false));
        for other in ["utf-16", "UTF-16LE", "utf-7", "ibm037", "utf-32", "shift_jis"] {
            assert!(charset(Some(&format!("text/plain; charset={other}"))).is_err(), "{other}");
        }
    }

    #[test]
    fn form_values_are_decoded_before_scanning() {
        let mut t = Transform::new(Kind::Form, None, profile(), None);
        let out = String::from_utf8(run(&mut t, b"email=ann%40example.com&x=1", 4)).unwrap();
        assert!(!out.contains("ann"), "{out}");
        assert!(out.ends_with("&x=1"), "{out}");
    }

    #[test]
    fn kinds_and_codings() {
        assert_eq!(Kind::of(Some("application/json; charset=utf-8")), Some(Kind::Json));
        assert_eq!(Kind::of(Some("application/vnd.api+json")), Some(Kind::Json));
        assert_eq!(Kind::of(Some("image/png")), None);
        assert_eq!(Coding::of(Some("br")), Err("br".into()));
        assert_eq!(Coding::of(Some("gzip")), Ok(Some(Coding::Gzip)));
    }
}
