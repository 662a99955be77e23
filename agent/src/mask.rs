//! Masking engine: hides sensitive values in query results while they stream.
//!
//! A [`Profile`] is compiled once per policy profile from a [`ProfileSpec`]
//! and shared by every session (it is `Send + Sync` and holds no per-row
//! state). The protocol adapter asks it two things:
//! - per result column, [`Profile::column_style`]: does a column rule mask
//!   this whole column? If so, each value goes through
//!   [`Profile::mask_value`];
//! - for every other text value (and error/notice messages),
//!   [`Profile::scan`] runs the value detectors and rewrites only the
//!   matched spans, or reports [`MaskOutput::Unchanged`] so the original
//!   bytes are forwarded as they arrived.
//!
//! It is a pure engine: no I/O, no clock, no global state. Detection is
//! prefilter-first (the `detect` module): SWAR digit bitmasks per 64-byte
//! block for cards, SSNs, phones and IBANs; memchr for `@` and `+`; one
//! SIMD Teddy search for token prefixes; operator regexes compiled into a
//! single multi-pattern regex. Clean text costs those few passes, and the
//! hand-written validators (Luhn, SSA rules, IBAN length and mod-97) run
//! only around candidates.
//!
//! Overlapping hits (say, a custom pattern over a built-in one) are merged
//! into one span that takes the most concealing of their styles
//! (Partial < Hash < Redact < Null); a merged span that would be shown
//! partially is redacted instead, so no piece of the other hit shows.
//! A hit whose style is [`Style::Null`] turns the whole value into NULL.

mod bench;
mod column;
mod detect;
pub mod json;
mod plan;
mod render;
pub(crate) mod shown;

use std::fmt;

use regex_automata::meta;
use regex_automata::util::syntax;

pub use bench::{bench_corpus, measure_throughput};
use column::ColumnPattern;
use detect::{DigitSet, RawHit, TokenFinder};
pub use plan::{ColumnMask, ResultColumn};
use render::Norm;
/// How a redacted value looks (`****`), whatever it hid.
pub use render::REDACTED;

/// How a masked value is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Style {
    /// `****`, whatever the value's length.
    Redact,
    /// `****` then the last 4 alphanumerics (`****1234` for cards, phones,
    /// IBANs, SSNs); for an email address, `****@domain`. Values with fewer
    /// than 8 alphanumerics are fully redacted.
    Partial,
    /// `tok_` + 32 hex digits (128 bits) of a keyed BLAKE3 hash, with a key
    /// derived per profile and per column (or detector): the same value in
    /// the same column always gives the same token, so joins and grouping on
    /// that column still work; the same value elsewhere gives another.
    Hash,
    /// SQL NULL: the caller emits a NULL ([`MaskOutput::Null`]).
    Null,
}

impl Style {
    /// How much a style hides, for merging overlapping hits.
    pub(crate) fn concealment(self) -> u8 {
        match self {
            Style::Partial => 0,
            Style::Hash => 1,
            Style::Redact => 2,
            Style::Null => 3,
        }
    }
}

/// A kind of sensitive value found inside text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Detector {
    /// Payment card number: 13–19 digits, Luhn-valid.
    Card,
    /// Email address.
    Email,
    /// Phone number: international `+…` or common US formats.
    Phone,
    /// US Social Security number `ddd-dd-dddd`.
    UsSsn,
    /// IBAN, with per-country length and mod-97 check.
    Iban,
    /// JSON Web Token.
    Jwt,
    /// AWS access key id (`AKIA…`/`ASIA…`).
    AwsKey,
    /// GitHub token (`ghp_…`, `github_pat_…`).
    GithubToken,
    /// Slack token (`xoxb-…`).
    SlackToken,
    /// An operator regex ([`ProfileSpec::custom`]).
    Custom,
}

impl Detector {
    /// The style a detector gets when a profile lists it without one:
    /// partial for values whose last digits help support staff, redact for
    /// identifiers and credentials. Never `hash`: a token for a value a
    /// user can also type lets them build a dictionary.
    pub fn default_style(self) -> Style {
        match self {
            Detector::Card | Detector::Email | Detector::Phone => Style::Partial,
            Detector::UsSsn
            | Detector::Iban
            | Detector::Jwt
            | Detector::AwsKey
            | Detector::GithubToken
            | Detector::SlackToken
            | Detector::Custom => Style::Redact,
        }
    }

    /// Number of detectors.
    pub const COUNT: usize = 10;
    /// Every detector, in declaration order.
    pub const ALL: [Detector; Detector::COUNT] = [
        Detector::Card,
        Detector::Email,
        Detector::Phone,
        Detector::UsSsn,
        Detector::Iban,
        Detector::Jwt,
        Detector::AwsKey,
        Detector::GithubToken,
        Detector::SlackToken,
        Detector::Custom,
    ];

    /// The name used in policy files and audit records.
    pub fn name(self) -> &'static str {
        match self {
            Detector::Card => "card",
            Detector::Email => "email",
            Detector::Phone => "phone",
            Detector::UsSsn => "us_ssn",
            Detector::Iban => "iban",
            Detector::Jwt => "jwt",
            Detector::AwsKey => "aws_key",
            Detector::GithubToken => "github_token",
            Detector::SlackToken => "slack_token",
            Detector::Custom => "custom",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Detector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A profile as written in the policy file (already deserialized by the
/// policy loader).
#[derive(Clone, Default)]
pub struct ProfileSpec {
    pub name: String,
    /// Column rules, first match wins: glob patterns (`*` any run, `?` one
    /// character, ASCII case-insensitive) over `column` (any table) or
    /// `table.column` / `schema.table.column`; see [`column`] for how
    /// qualified and bare table names meet.
    pub columns: Vec<(String, Style)>,
    /// Value detectors applied inside every text value of columns no column
    /// rule masked (and to error/notice messages). Each detector at most
    /// once; [`Detector::Custom`] is configured through `custom` instead.
    pub detectors: Vec<(Detector, Style)>,
    /// Operator regexes (detector Custom): (name, pattern, style).
    pub custom: Vec<(String, String, Style)>,
    /// The secret Hash tokens are keyed from (the host's `mask.key`, or the
    /// profile's `hash_key_file`); per-profile and per-column keys derive from it.
    pub hash_key: MaskKey,
    /// Refuse statements that filter, join, sort or group on a masked
    /// column (the policy file's `masked_predicates = "refuse"`, its default).
    pub refuse_predicates: bool,
}

/// A masking secret: wiped from memory when dropped, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct MaskKey(zeroize::Zeroizing<[u8; 32]>);

impl MaskKey {
    pub fn new(bytes: [u8; 32]) -> Self {
        Self(zeroize::Zeroizing::new(bytes))
    }

    /// A random key for one run (`gatehouse mask test`, policy checks):
    /// its tokens match nothing the agent produces.
    pub fn throwaway() -> Self {
        let mut b = [0u8; 32];
        // Without /dev/urandom the key is fixed per process id and time: still not the agent's.
        match crate::secrets::random32() {
            Ok(r) => b.copy_from_slice(r.as_ref()),
            Err(_) => {
                b = blake3::derive_key(
                    "gatehouse throwaway mask key",
                    format!("{}{:?}", std::process::id(), std::time::SystemTime::now()).as_bytes(),
                );
            }
        }
        Self::new(b)
    }

    fn bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl Default for MaskKey {
    fn default() -> Self {
        Self::throwaway()
    }
}

impl fmt::Debug for MaskKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<mask key>")
    }
}

/// What a Hash token is scoped to: one result column, or one detector's
/// finds in free text. The column is named by its table and column names
/// for now; when results are masked by column identity (table OID and
/// column number), that identity goes here and nothing else changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenScope<'a> {
    Column {
        table: Option<&'a str>,
        column: &'a str,
    },
    Detector(Detector),
    /// An operator regex, by its name.
    Custom(&'a str),
}

/// The key Hash tokens of one scope are made with (see [`Profile::token_key`]).
#[derive(Clone, PartialEq, Eq)]
pub struct TokenKey(zeroize::Zeroizing<[u8; 32]>);

impl fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<token key>")
    }
}

impl fmt::Debug for ProfileSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProfileSpec")
            .field("name", &self.name)
            .field("columns", &self.columns)
            .field("detectors", &self.detectors)
            .field("custom", &self.custom)
            .field("hash_key", &self.hash_key)
            .field("refuse_predicates", &self.refuse_predicates)
            .finish()
    }
}

/// A profile that cannot be compiled. Always the policy author's doing.
#[derive(Debug, thiserror::Error)]
pub enum MaskError {
    #[error("masking profile {profile}: regex {name:?}: {message}")]
    BadRegex { profile: String, name: String, message: String },
    #[error("masking profile {profile}: column pattern {pattern:?}: {reason}")]
    BadColumnPattern { profile: String, pattern: String, reason: &'static str },
    #[error("masking profile {profile}: detector {detector} is listed more than once")]
    DuplicateDetector { profile: String, detector: Detector },
    #[error(
        "masking profile {profile}: detector `custom` takes its patterns from the custom list, not the detector list"
    )]
    CustomInDetectors { profile: String },
}

/// What a mask function did with a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaskOutput {
    /// Nothing to mask: forward the original bytes; `out` was not touched.
    Unchanged,
    /// The masked value was appended to `out`.
    Written,
    /// The value must be sent as SQL NULL; `out` was not touched.
    Null,
}

/// Hits per detector and masked column values, for the audit record.
/// Serializes as a map of the non-zero counters (`{"card": 2, "columns": 10}`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    detectors: [u64; Detector::COUNT],
    columns: u64,
}

impl Counts {
    /// Adds `n` hits of `detector`.
    pub fn add(&mut self, detector: Detector, n: u64) {
        if let Some(c) = self.detectors.get_mut(detector.index()) {
            *c = c.saturating_add(n);
        }
    }

    /// Adds `n` values masked by column rules (the adapter calls this when
    /// it uses [`Profile::mask_value`] for a column).
    pub fn add_columns(&mut self, n: u64) {
        self.columns = self.columns.saturating_add(n);
    }

    /// Hits of one detector.
    pub fn get(&self, detector: Detector) -> u64 {
        self.detectors.get(detector.index()).copied().unwrap_or(0)
    }

    /// Values masked by column rules.
    pub fn columns(&self) -> u64 {
        self.columns
    }

    pub fn merge(&mut self, other: &Counts) {
        for (a, b) in self.detectors.iter_mut().zip(other.detectors) {
            *a = a.saturating_add(b);
        }
        self.columns = self.columns.saturating_add(other.columns);
    }

    /// All hits and column values together.
    pub fn total(&self) -> u64 {
        self.detectors.iter().fold(self.columns, |acc, &c| acc.saturating_add(c))
    }

    /// The non-zero counters as `(name, count)`: detectors by their policy
    /// names, then `"columns"`.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        Detector::ALL
            .iter()
            .map(|&d| (d.name(), self.get(d)))
            .chain(std::iter::once(("columns", self.columns)))
            .filter(|&(_, n)| n > 0)
    }
}

impl serde::Serialize for Counts {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

/// Longest accepted operator regex, in bytes.
const MAX_REGEX_LEN: usize = 4096;
/// Cap on the compiled size of one operator regex (its Thompson NFA).
const MAX_REGEX_NFA: usize = 1 << 20;
/// Cap on the compiled size of all of a profile's operator regexes together.
const MAX_REGEX_NFA_ALL: usize = 8 << 20;

/// The operator regexes, compiled into one multi-pattern regex so a value
/// is searched once whatever their number.
struct CustomSet {
    regex: meta::Regex,
    styles: Vec<Style>,
    /// Token key per pattern.
    keys: Vec<TokenKey>,
}

/// A compiled profile: built once per profile at policy load, shared across
/// sessions (`Send + Sync`, cheap to use per row).
pub struct Profile {
    name: String,
    columns: Vec<(ColumnPattern, Style)>,
    styles: [Option<Style>; Detector::COUNT],
    digits: DigitSet,
    email: bool,
    tokens: Option<TokenFinder>,
    custom: Option<CustomSet>,
    /// Derived from the masking secret and the profile's name.
    profile_key: zeroize::Zeroizing<[u8; 32]>,
    /// Token key per detector, for finds in free text.
    detector_keys: Vec<TokenKey>,
    refuse_predicates: bool,
}

impl fmt::Debug for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Profile")
            .field("name", &self.name)
            .field("columns", &self.columns.len())
            .field("detectors", &Detector::ALL.iter().filter(|&&d| self.style_of(d).is_some()).collect::<Vec<_>>())
            .field("custom", &self.custom.as_ref().map_or(0, |c| c.styles.len()))
            .finish_non_exhaustive()
    }
}

/// A hit with the style it is shown in.
#[derive(Debug, Clone, Copy)]
struct Hit {
    start: usize,
    end: usize,
    detector: Detector,
    style: Style,
    /// The operator regex, for Custom hits.
    pattern: Option<usize>,
}

impl Profile {
    /// Validates and compiles a profile: column patterns, the detector list
    /// (each at most once) and the operator regexes (which must not match
    /// the empty string, are at most 4 KiB, and compile within a size cap).
    pub fn compile(spec: &ProfileSpec) -> Result<Self, MaskError> {
        let profile = || spec.name.clone();
        let columns = spec
            .columns
            .iter()
            .map(|(pattern, style)| {
                ColumnPattern::parse(pattern).map(|p| (p, *style)).map_err(|problem| MaskError::BadColumnPattern {
                    profile: profile(),
                    pattern: pattern.clone(),
                    reason: problem.describe(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;

        let mut styles = [None; Detector::COUNT];
        for &(detector, style) in &spec.detectors {
            if detector == Detector::Custom {
                return Err(MaskError::CustomInDetectors { profile: profile() });
            }
            match styles.get_mut(detector.index()) {
                Some(slot @ None) => *slot = Some(style),
                _ => return Err(MaskError::DuplicateDetector { profile: profile(), detector }),
            }
        }
        let on = |d: Detector| styles.get(d.index()).copied().flatten().is_some();
        let digits = DigitSet {
            card: on(Detector::Card),
            ssn: on(Detector::UsSsn),
            phone: on(Detector::Phone),
            iban: on(Detector::Iban),
        };
        let email = on(Detector::Email);
        let tokens = TokenFinder::new(on);
        let mut material = spec.hash_key.bytes().to_vec();
        material.extend_from_slice(spec.name.as_bytes());
        let profile_key = zeroize::Zeroizing::new(blake3::derive_key("gatehouse mask profile key v2", &material));
        zeroize::Zeroize::zeroize(&mut material);
        let detector_keys = Detector::ALL.iter().map(|&d| token_key(&profile_key, TokenScope::Detector(d))).collect();
        let mut custom = compile_custom(&spec.name, &spec.custom)?;
        if let Some(c) = custom.as_mut() {
            c.keys = spec.custom.iter().map(|(name, _, _)| token_key(&profile_key, TokenScope::Custom(name))).collect();
        }
        if let (Some(slot), Some(_)) = (styles.get_mut(Detector::Custom.index()), &custom) {
            // Marks Custom as enabled; its real styles are per pattern.
            *slot = Some(Style::Redact);
        }
        Ok(Self {
            name: spec.name.clone(),
            columns,
            digits,
            email,
            tokens,
            custom,
            styles,
            profile_key,
            detector_keys,
            refuse_predicates: spec.refuse_predicates,
        })
    }

    /// The key for Hash tokens in `scope` (compute it once per result
    /// column, not per value).
    pub fn token_key(&self, scope: TokenScope<'_>) -> TokenKey {
        token_key(&self.profile_key, scope)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether statements that filter, join, sort or group on a masked column are refused.
    pub fn refuses_predicates(&self) -> bool {
        self.refuse_predicates
    }

    fn style_of(&self, d: Detector) -> Option<Style> {
        self.styles.get(d.index()).copied().flatten()
    }

    /// Which style a column gets from the column rules, if any (first
    /// matching rule wins). `table` is the source table name when known,
    /// bare or schema-qualified, else `None`.
    /// The column rules that can apply to results from `tables` (for
    /// `gatehouse policy explain`), as `pattern (style)`.
    pub fn describe_columns(&self, tables: &[String]) -> Vec<String> {
        self.columns
            .iter()
            .filter(|(p, _)| tables.is_empty() || tables.iter().any(|t| p.applies_to_table(Some(t))))
            .map(|(p, s)| format!("{p} ({s:?})").to_lowercase())
            .collect()
    }

    pub fn column_style(&self, table: Option<&str>, column: &str) -> Option<Style> {
        self.columns.iter().find(|(p, _)| p.matches(table, column)).map(|&(_, style)| style)
    }

    /// Masks a whole value with a style (used for column rules), appending
    /// the result to `out`. `value` is the value's text; any bytes are
    /// accepted. Partial keeps `@domain` when the whole value is an email
    /// address, else the last 4 alphanumerics; Hash tokens the raw bytes
    /// with the column's `key` ([`Profile::token_key`]).
    pub fn mask_value(&self, style: Style, key: &TokenKey, value: &[u8], out: &mut Vec<u8>) -> MaskOutput {
        match style {
            Style::Null => return MaskOutput::Null,
            Style::Redact => out.extend_from_slice(REDACTED),
            Style::Hash => render::push_token(&key.0, value, Norm::Raw, out),
            Style::Partial => {
                let trimmed = value.trim_ascii();
                let whole_email = memchr::memrchr(b'@', trimmed)
                    .and_then(|a| detect::email_at(trimmed, a))
                    .is_some_and(|(s, e)| s == 0 && e == trimmed.len());
                if whole_email {
                    render::push_partial_email(trimmed, out);
                } else {
                    render::push_partial_tail(value, out);
                }
            }
        }
        MaskOutput::Written
    }

    /// Runs the detectors over a text value; appends the masked text to
    /// `out` and counts hits in `counts`. Returns [`MaskOutput::Unchanged`]
    /// (leaving `out` untouched) when nothing matched, so the caller can
    /// forward the original bytes, and [`MaskOutput::Null`] when a hit's
    /// style is Null (an error or notice message cannot be NULL: the caller
    /// then sends `****` instead).
    pub fn scan(&self, value: &[u8], out: &mut Vec<u8>, counts: &mut Counts) -> MaskOutput {
        let mut raw: Vec<RawHit> = Vec::new();
        if self.digits.any() {
            detect::scan_digits(value, self.digits, &mut raw);
        }
        if self.email {
            detect::scan_emails(value, &mut raw);
        }
        if let Some(tokens) = &self.tokens {
            tokens.scan(value, &mut raw);
        }
        let first_custom = self.custom.as_ref().and_then(|c| c.regex.find(value).map(|m| (c, m)));
        if raw.is_empty() && first_custom.is_none() {
            return MaskOutput::Unchanged;
        }
        let mut hits: Vec<Hit> = Vec::with_capacity(raw.len() + 1);
        for h in &raw {
            if let Some(style) = self.style_of(h.detector) {
                hits.push(Hit { start: h.start, end: h.end, detector: h.detector, style, pattern: None });
            }
        }
        if let Some((custom, first)) = first_custom {
            let rest = custom.regex.find_iter(regex_automata::Input::new(value).range(first.end()..));
            for m in std::iter::once(first).chain(rest) {
                let pattern = m.pattern().as_usize();
                if let Some(&style) = custom.styles.get(pattern) {
                    hits.push(Hit {
                        start: m.start(),
                        end: m.end(),
                        detector: Detector::Custom,
                        style,
                        pattern: Some(pattern),
                    });
                }
            }
        }
        for h in &hits {
            counts.add(h.detector, 1);
        }
        let custom_keys = self.custom.as_ref().map(|c| c.keys.as_slice()).unwrap_or_default();
        let merged = merge(hits);
        if merged.iter().any(|h| h.style == Style::Null) {
            return MaskOutput::Null;
        }
        out.reserve(value.len());
        let mut last = 0;
        for h in &merged {
            out.extend_from_slice(value.get(last..h.start).unwrap_or_default());
            let text = value.get(h.start..h.end).unwrap_or_default();
            match h.style {
                Style::Redact | Style::Null => out.extend_from_slice(REDACTED),
                Style::Hash => {
                    let key = match h.pattern {
                        Some(i) => custom_keys.get(i),
                        None => self.detector_keys.get(h.detector.index()),
                    };
                    // Keys exist for every detector and pattern; without one, redact (fail closed).
                    match key {
                        Some(k) => render::push_token(&k.0, text, Norm::for_detector(h.detector), out),
                        None => out.extend_from_slice(REDACTED),
                    }
                }
                Style::Partial if h.detector == Detector::Email => render::push_partial_email(text, out),
                Style::Partial => render::push_partial_tail(text, out),
            }
            last = h.end;
        }
        out.extend_from_slice(value.get(last..).unwrap_or_default());
        MaskOutput::Written
    }
}

/// A scope's token key: keyed BLAKE3 (the profile key) over the scope,
/// length-prefixed, so no two scopes share a key.
fn token_key(profile_key: &[u8; 32], scope: TokenScope<'_>) -> TokenKey {
    let mut h = blake3::Hasher::new_keyed(profile_key);
    h.update(b"gatehouse token scope v2\0");
    let mut part = |b: &[u8]| {
        h.update(&u64::try_from(b.len()).unwrap_or(u64::MAX).to_be_bytes());
        h.update(b);
    };
    match scope {
        TokenScope::Column { table, column } => {
            part(b"column");
            part(table.unwrap_or_default().to_ascii_lowercase().as_bytes());
            part(column.to_ascii_lowercase().as_bytes());
        }
        TokenScope::Detector(d) => {
            part(b"detector");
            part(d.name().as_bytes());
        }
        TokenScope::Custom(name) => {
            part(b"custom");
            part(name.as_bytes());
        }
    }
    TokenKey(zeroize::Zeroizing::new(*h.finalize().as_bytes()))
}

/// Sorts hits and merges overlapping ones (see the module doc).
fn merge(mut hits: Vec<Hit>) -> Vec<Hit> {
    hits.sort_unstable_by(|a, b| a.start.cmp(&b.start).then(b.end.cmp(&a.end)));
    let mut merged: Vec<Hit> = Vec::with_capacity(hits.len());
    for h in hits {
        match merged.last_mut() {
            Some(m) if h.start < m.end => {
                let same_span = h.start == m.start && h.end == m.end;
                m.end = m.end.max(h.end);
                if h.style.concealment() > m.style.concealment() {
                    m.style = h.style;
                }
                if m.style == Style::Partial && !same_span {
                    m.style = Style::Redact;
                }
            }
            _ => merged.push(h),
        }
    }
    merged
}

/// Parses, checks and compiles the operator regexes.
fn compile_custom(profile: &str, custom: &[(String, String, Style)]) -> Result<Option<CustomSet>, MaskError> {
    if custom.is_empty() {
        return Ok(None);
    }
    let bad = |name: &str, message: String| MaskError::BadRegex {
        profile: profile.to_owned(),
        name: name.to_owned(),
        message,
    };
    let config = |limit: usize| meta::Config::new().nfa_size_limit(Some(limit)).dfa_size_limit(Some(limit));
    let mut hirs = Vec::with_capacity(custom.len());
    for (name, pattern, _) in custom {
        if pattern.len() > MAX_REGEX_LEN {
            return Err(bad(
                name,
                format!("pattern is {} bytes, more than the {MAX_REGEX_LEN} allowed", pattern.len()),
            ));
        }
        let hir = syntax::parse(pattern).map_err(|e| bad(name, e.to_string()))?;
        if hir.properties().minimum_len() == Some(0) {
            return Err(bad(name, "pattern can match the empty string".to_owned()));
        }
        meta::Builder::new()
            .configure(config(MAX_REGEX_NFA))
            .build_from_hir(&hir)
            .map_err(|e| bad(name, e.to_string()))?;
        hirs.push(hir);
    }
    let regex = meta::Builder::new()
        .configure(config(MAX_REGEX_NFA_ALL))
        .build_many_from_hir(&hirs)
        .map_err(|e| bad("(all custom patterns together)", e.to_string()))?;
    Ok(Some(CustomSet { regex, styles: custom.iter().map(|(_, _, s)| *s).collect(), keys: Vec::new() }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> MaskKey {
        MaskKey::new([b; 32])
    }

    fn all_detectors(style: Style) -> ProfileSpec {
        ProfileSpec {
            name: "test".into(),
            columns: vec![],
            detectors: Detector::ALL.iter().filter(|&&d| d != Detector::Custom).map(|&d| (d, style)).collect(),
            custom: vec![],
            hash_key: key(7),
            refuse_predicates: false,
        }
    }

    fn col(p: &Profile, column: &str) -> TokenKey {
        p.token_key(TokenScope::Column { table: None, column })
    }

    fn profile(spec: &ProfileSpec) -> Profile {
        Profile::compile(spec).unwrap_or_else(|e| panic!("compile {spec:?}: {e}"))
    }

    /// Scans `value`; returns the output text (the input when unchanged) and the counts.
    fn scan(p: &Profile, value: &str) -> (String, Counts) {
        let mut out = Vec::new();
        let mut counts = Counts::default();
        let text = match p.scan(value.as_bytes(), &mut out, &mut counts) {
            MaskOutput::Unchanged => {
                assert!(out.is_empty(), "Unchanged must leave out untouched");
                value.to_owned()
            }
            MaskOutput::Written => String::from_utf8(out).expect("valid UTF-8 in, valid UTF-8 out"),
            MaskOutput::Null => "<NULL>".to_owned(),
        };
        (text, counts)
    }

    fn redact(value: &str) -> String {
        scan(&profile(&all_detectors(Style::Redact)), value).0
    }

    #[test]
    fn each_detector_positive() {
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.c2lnbmF0dXJlX2hlcmU";
        let ghp = format!("ghp_{}", "x1Y2".repeat(9));
        for (value, detector) in [
            ("card 4111 1111 1111 1111 ok", Detector::Card),
            ("mail jane.doe@example.com ok", Detector::Email),
            ("tel +44 20 7946 0958 ok", Detector::Phone),
            ("tel (555) 123-4567 ok", Detector::Phone),
            ("ssn 123-45-6789 ok", Detector::UsSsn),
            ("iban DE89 3704 0044 0532 0130 00 ok", Detector::Iban),
            (&format!("auth {jwt} ok"), Detector::Jwt),
            ("key AKIAIOSFODNN7EXAMPLE ok", Detector::AwsKey),
            (&format!("gh {ghp} ok"), Detector::GithubToken),
            ("slack xoxb-123456789012-abcdefABCDEF ok", Detector::SlackToken),
        ] {
            let (text, counts) = scan(&profile(&all_detectors(Style::Redact)), value);
            let prefix = value.split(' ').next().unwrap();
            assert_eq!(text, format!("{prefix} **** ok"), "{detector}");
            assert_eq!(counts.get(detector), 1, "{detector}: {counts:?}");
            assert_eq!(counts.total(), 1, "{detector}: {counts:?}");
        }
    }

    #[test]
    fn each_detector_negative() {
        for value in [
            "card 4111 1111 1111 1112 fails Luhn",
            "order 4111111111111112",
            "ssn 000-12-3456 and 666-12-3456 and 123-00-6789",
            "iban DE89 3704 0044 0532 0130 01 fails mod-97",
            "date 2024-01-01, ts 2024-01-01T10:00:00+01:00, day 20240101",
            "ip 198.51.100.200 and 203.0.113.1, version 1.2.3",
            "id 12345678901234 and 9876543210",
            "price 1,234.56 EUR, pi 3.14159265358979",
            "uuid 123e4567-e89b-12d3-a456-426614174000",
            "handle @jane and user@localhost and a@b",
            "AKIA but too short AKIAABC, eyJ alone, ghp_short, xoxb-",
            "Zürich café 東京 Москва",
        ] {
            assert_eq!(redact(value), value);
        }
    }

    #[test]
    fn disabled_detectors_do_not_fire() {
        let spec = ProfileSpec { detectors: vec![(Detector::Email, Style::Redact)], ..all_detectors(Style::Redact) };
        let p = profile(&spec);
        let v = "4111 1111 1111 1111 AKIAIOSFODNN7EXAMPLE 123-45-6789 +44 20 7946 0958 a@b.co";
        assert_eq!(scan(&p, v).0, "4111 1111 1111 1111 AKIAIOSFODNN7EXAMPLE 123-45-6789 +44 20 7946 0958 ****");
        let none = profile(&ProfileSpec { name: "none".into(), ..ProfileSpec::default() });
        assert_eq!(scan(&none, v).0, v);
    }

    #[test]
    fn styles_in_scan() {
        let p = profile(&all_detectors(Style::Partial));
        assert_eq!(
            scan(&p, "card 4242-4242-4242-4242? mail bob@example.com, ssn 123-45-6789").0,
            "card ****4242? mail ****@example.com, ssn ****6789"
        );
        assert_eq!(scan(&p, "card 4111 1111 1111 1111").0, "card ****1111");
        assert_eq!(scan(&p, "call +1 (555) 123-4567").0, "call ****4567");
        assert_eq!(scan(&p, "GB82 WEST 1234 5698 7654 32").0, "****5432");

        let h = profile(&all_detectors(Style::Hash));
        let (a, _) = scan(&h, "card 4111 1111 1111 1111");
        let (b, _) = scan(&h, "paid with 4111-1111-1111-1111 yesterday");
        let tok = a.strip_prefix("card ").unwrap();
        assert!(tok.starts_with("tok_") && tok.len() == 4 + 32, "{tok}");
        assert_eq!(b, format!("paid with {tok} yesterday"));

        let n = profile(&all_detectors(Style::Null));
        let mut out = Vec::new();
        let mut counts = Counts::default();
        assert_eq!(n.scan(b"ssn 123-45-6789", &mut out, &mut counts), MaskOutput::Null);
        assert!(out.is_empty());
        assert_eq!(counts.get(Detector::UsSsn), 1);
    }

    #[test]
    fn hash_is_deterministic_and_keyed() {
        let p1 = profile(&all_detectors(Style::Hash));
        let p1b = profile(&all_detectors(Style::Hash));
        let p2 = profile(&ProfileSpec { hash_key: key(8), ..all_detectors(Style::Hash) });
        let v = "jane.doe@example.com";
        let t1 = scan(&p1, v).0;
        assert_eq!(t1, scan(&p1b, v).0);
        assert_eq!(t1, scan(&p1, "Jane.Doe@Example.com").0, "emails are case-folded before hashing");
        assert_ne!(t1, scan(&p2, v).0);
        assert_ne!(t1, scan(&p1, "john.doe@example.com").0);

        let mut a = Vec::new();
        let mut b = Vec::new();
        let mut c = Vec::new();
        assert_eq!(p1.mask_value(Style::Hash, &col(&p1, "name"), b"alice", &mut a), MaskOutput::Written);
        p1b.mask_value(Style::Hash, &col(&p1b, "name"), b"alice", &mut b);
        p2.mask_value(Style::Hash, &col(&p2, "name"), b"alice", &mut c);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.len(), 4 + 32, "128-bit tokens");
        // Keys are per column and per profile: the same value elsewhere is another token,
        // so tokens from one column are no dictionary for another.
        let mut other_col = Vec::new();
        p1.mask_value(Style::Hash, &col(&p1, "nickname"), b"alice", &mut other_col);
        assert_ne!(a, other_col);
        let renamed = profile(&ProfileSpec { name: "other".into(), ..all_detectors(Style::Hash) });
        let mut other_profile = Vec::new();
        renamed.mask_value(Style::Hash, &col(&renamed, "name"), b"alice", &mut other_profile);
        assert_ne!(a, other_profile);
        // A column's token and a detector's token for the same value differ.
        let mut card_col = Vec::new();
        p1.mask_value(Style::Hash, &col(&p1, "card"), b"4111111111111111", &mut card_col);
        assert_ne!(scan(&p1, "4111 1111 1111 1111").0.as_bytes(), card_col.as_slice());
    }

    fn mv(style: Style, value: &[u8]) -> (MaskOutput, Vec<u8>) {
        let p = profile(&all_detectors(Style::Redact));
        let mut out = b"prefix:".to_vec();
        let r = p.mask_value(style, &col(&p, "c"), value, &mut out);
        (r, out)
    }

    #[test]
    fn mask_value_styles() {
        assert_eq!(mv(Style::Redact, b"secret value"), (MaskOutput::Written, b"prefix:****".to_vec()));
        assert_eq!(mv(Style::Partial, b"4111111111111234"), (MaskOutput::Written, b"prefix:****1234".to_vec()));
        assert_eq!(mv(Style::Partial, b"(555) 123-4567"), (MaskOutput::Written, b"prefix:****4567".to_vec()));
        assert_eq!(
            mv(Style::Partial, b" jane@example.com "),
            (MaskOutput::Written, b"prefix:****@example.com".to_vec())
        );
        assert_eq!(
            mv(Style::Partial, b"not an email @ all, 12345678"),
            (MaskOutput::Written, b"prefix:****5678".to_vec())
        );
        assert_eq!(mv(Style::Partial, b"1234"), (MaskOutput::Written, b"prefix:****".to_vec()));
        assert_eq!(mv(Style::Null, b"x"), (MaskOutput::Null, b"prefix:".to_vec()));
        let (r, out) = mv(Style::Hash, b"x");
        assert_eq!(r, MaskOutput::Written);
        assert_eq!(out.len(), "prefix:tok_".len() + 32);
    }

    #[test]
    fn utf8_around_hits_stays_valid() {
        let p = profile(&all_detectors(Style::Partial));
        let v = "Zürich→4111111111111111←東京 ✉jane@example.com✉ ☎+41 44 668 18 00☎ ünï";
        let (text, counts) = scan(&p, v);
        assert_eq!(text, "Zürich→****1111←東京 ✉****@example.com✉ ☎****1800☎ ünï");
        assert_eq!(counts.total(), 3);
        // Every style, hits glued to multi-byte characters on both sides.
        for style in [Style::Redact, Style::Partial, Style::Hash] {
            let p = profile(&all_detectors(style));
            for v in ["é123-45-6789é", "日AKIAIOSFODNN7EXAMPLE日", "ß+4915123456789ß", "€DE89370400440532013000€"]
            {
                let (text, counts) = scan(&p, v);
                assert_eq!(counts.total(), 1, "{v} {style:?}");
                assert_ne!(text, v);
            }
        }
        // Custom regexes match on character boundaries too.
        let spec = ProfileSpec {
            custom: vec![("emp".into(), r"EMP-\d{6}".into(), Style::Partial)],
            ..all_detectors(Style::Redact)
        };
        assert_eq!(scan(&profile(&spec), "ÄEMP-123456Ö").0, "Ä****3456Ö");
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let p = profile(&ProfileSpec {
            custom: vec![("any".into(), r"[a-z]+\d".into(), Style::Hash)],
            ..all_detectors(Style::Partial)
        });
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut out = Vec::new();
        let alphabet = b"0123456789-+() .@eyJAKIASghp_xoxb-DEGB\xff\xc3\xa9\x80";
        for len in 0..300usize {
            let v: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    if state.is_multiple_of(3) {
                        state.to_le_bytes()[3]
                    } else {
                        alphabet[usize::try_from(state >> 40).unwrap() % alphabet.len()]
                    }
                })
                .collect();
            out.clear();
            let mut counts = Counts::default();
            if p.scan(&v, &mut out, &mut counts) == MaskOutput::Written && std::str::from_utf8(&v).is_ok() {
                assert!(std::str::from_utf8(&out).is_ok(), "scan broke UTF-8 of {v:?}");
            }
            for style in [Style::Redact, Style::Partial, Style::Hash, Style::Null] {
                out.clear();
                p.mask_value(style, &col(&p, "c"), &v, &mut out);
                if style != Style::Null {
                    assert!(std::str::from_utf8(&out).is_ok(), "{style:?} of {v:?}");
                }
            }
        }
        // Invalid UTF-8 next to a hit: the hit is still found and masked.
        let (mut out, mut counts) = (Vec::new(), Counts::default());
        assert_eq!(p.scan(b"\xff\xfe4111111111111111\xc3", &mut out, &mut counts), MaskOutput::Written);
        assert_eq!(out, b"\xff\xfe****1111\xc3");
    }

    #[test]
    fn very_long_values() {
        let p = profile(&all_detectors(Style::Redact));
        let mut v = "lorem ipsum 12345 dolor ".repeat(43_700).into_bytes();
        v.truncate(1 << 20);
        let mut out = Vec::new();
        let mut counts = Counts::default();
        assert_eq!(p.scan(&v, &mut out, &mut counts), MaskOutput::Unchanged);
        // Hits at the start, the middle and the very end.
        let mut w = b"4111111111111111 ".to_vec();
        w.extend_from_slice(&v[..v.len() / 2]);
        w.extend_from_slice(b" bob@example.com ");
        w.extend_from_slice(&v[v.len() / 2..]);
        w.extend_from_slice(b" 123-45-6789");
        assert_eq!(p.scan(&w, &mut out, &mut counts), MaskOutput::Written);
        assert_eq!(counts.total(), 3);
        assert_eq!(out.len(), w.len() - 16 + 4 - 15 + 4 - 11 + 4);
        assert!(out.starts_with(b"**** lorem") && out.ends_with(b"ipsum 1234 ****"));
        // One enormous token-like run and one enormous digit run.
        for big in [vec![b'7'; 1 << 20], [b"AKIA".to_vec(), vec![b'A'; 1 << 20]].concat(), vec![b'@'; 1 << 20]] {
            out.clear();
            assert_eq!(p.scan(&big, &mut out, &mut counts), MaskOutput::Unchanged);
        }
        let many = "a@b.co ".repeat(150_000);
        out.clear();
        let mut counts = Counts::default();
        assert_eq!(p.scan(many.as_bytes(), &mut out, &mut counts), MaskOutput::Written);
        assert_eq!(counts.get(Detector::Email), 150_000);
        assert_eq!(out, "**** ".repeat(150_000).as_bytes());
    }

    #[test]
    fn column_rules_first_match_wins() {
        let p = profile(&ProfileSpec {
            name: "cols".into(),
            columns: vec![
                ("customers.email".into(), Style::Partial),
                ("email".into(), Style::Hash),
                ("*.ssn".into(), Style::Null),
                ("*_token".into(), Style::Redact),
                ("billing.cards.pan".into(), Style::Partial),
            ],
            ..ProfileSpec::default()
        });
        assert_eq!(p.column_style(Some("customers"), "email"), Some(Style::Partial));
        assert_eq!(p.column_style(Some("public.customers"), "EMAIL"), Some(Style::Partial));
        assert_eq!(p.column_style(Some("orders"), "email"), Some(Style::Hash));
        assert_eq!(p.column_style(None, "email"), Some(Style::Hash));
        assert_eq!(p.column_style(None, "ssn"), Some(Style::Null));
        assert_eq!(p.column_style(Some("hr.staff"), "ssn"), Some(Style::Null));
        assert_eq!(p.column_style(Some("sessions"), "refresh_token"), Some(Style::Redact));
        assert_eq!(p.column_style(Some("cards"), "pan"), Some(Style::Partial));
        assert_eq!(p.column_style(Some("billing.cards"), "pan"), Some(Style::Partial));
        assert_eq!(p.column_style(Some("archive.cards"), "pan"), None);
        assert_eq!(p.column_style(None, "pan"), None);
        assert_eq!(p.column_style(Some("customers"), "name"), None);
        assert_eq!(p.name(), "cols");
    }

    #[test]
    fn custom_regexes() {
        let p = profile(&ProfileSpec {
            custom: vec![
                ("employee".into(), r"\bEMP-\d{6}\b".into(), Style::Redact),
                ("ticket".into(), r"(?i)\bticket#\d+".into(), Style::Hash),
            ],
            ..all_detectors(Style::Redact)
        });
        let (text, counts) = scan(&p, "EMP-123456 filed TICKET#42 and EMP-1234567");
        assert!(text.starts_with("**** filed tok_"), "{text}");
        assert!(text.ends_with(" and EMP-1234567"), "{text}");
        assert_eq!(counts.get(Detector::Custom), 2);
        assert_eq!(counts.iter().collect::<Vec<_>>(), [("custom", 2)]);
    }

    #[test]
    fn overlapping_hits_merge_to_the_most_concealing_style() {
        let p = profile(&ProfileSpec {
            custom: vec![("domain".into(), r"example\.com/\w+".into(), Style::Hash)],
            ..all_detectors(Style::Partial)
        });
        // Email (Partial) overlapping a custom hit (Hash) extending past it: one Hash token.
        let (text, counts) = scan(&p, "see bob@example.com/path now");
        assert!(text.starts_with("see tok_") && text.ends_with(" now") && !text.contains("path"), "{text}");
        assert_eq!(counts.get(Detector::Email), 1);
        assert_eq!(counts.get(Detector::Custom), 1);
        // Two Partial hits overlapping: redacted, so neither shows a tail.
        let q = profile(&ProfileSpec {
            custom: vec![("digits".into(), r"\d{4} \d{4}".into(), Style::Partial)],
            ..all_detectors(Style::Partial)
        });
        assert_eq!(scan(&q, "pan 4111 1111 1111 1111").0, "pan ****");
    }

    #[test]
    fn compile_errors() {
        let err = |spec: ProfileSpec| Profile::compile(&spec).map(|_| ()).unwrap_err().to_string();
        let base = ProfileSpec { name: "p".into(), ..ProfileSpec::default() };
        let custom =
            |pattern: &str| ProfileSpec { custom: vec![("r1".into(), pattern.into(), Style::Redact)], ..base.clone() };
        assert_eq!(err(custom("a*")), r#"masking profile p: regex "r1": pattern can match the empty string"#);
        assert!(err(custom(r"\b")).contains("empty string"));
        assert!(err(custom("x|")).contains("empty string"));
        assert!(err(custom("(unclosed")).starts_with(r#"masking profile p: regex "r1": "#));
        assert!(err(custom(&"a".repeat(5000))).contains("more than the 4096 allowed"));
        assert!(err(custom(r"\w{1000}\w{1000}")).starts_with(r#"masking profile p: regex "r1": "#));
        assert!(
            err(ProfileSpec { columns: vec![("a..b".into(), Style::Redact)], ..base.clone() })
                .contains("column pattern \"a..b\"")
        );
        assert_eq!(
            err(ProfileSpec {
                detectors: vec![(Detector::Card, Style::Redact), (Detector::Card, Style::Hash)],
                ..base.clone()
            }),
            "masking profile p: detector card is listed more than once"
        );
        assert!(err(ProfileSpec { detectors: vec![(Detector::Custom, Style::Redact)], ..base }).contains("custom"));
    }

    #[test]
    fn counts_merge_total_iter_serialize() {
        let p = profile(&all_detectors(Style::Redact));
        let mut a = Counts::default();
        let mut out = Vec::new();
        p.scan(b"4111111111111111 and 5555555555554444, a@b.co", &mut out, &mut a);
        assert_eq!(a.get(Detector::Card), 2);
        assert_eq!(a.get(Detector::Email), 1);
        let mut b = Counts::default();
        b.add(Detector::Card, 3);
        b.add_columns(5);
        a.merge(&b);
        assert_eq!(a.total(), 11);
        assert_eq!(a.columns(), 5);
        assert_eq!(a.iter().collect::<Vec<_>>(), [("card", 5), ("email", 1), ("columns", 5)]);
        assert_eq!(serde_json::to_string(&a).unwrap(), r#"{"card":5,"email":1,"columns":5}"#);
        assert_eq!(serde_json::to_string(&Counts::default()).unwrap(), "{}");
    }

    #[test]
    fn names_and_serde_agree() {
        for d in Detector::ALL {
            assert_eq!(serde_json::to_string(&d).unwrap(), format!("\"{}\"", d.name()));
            assert_eq!(Detector::ALL[d.index()], d);
        }
        assert_eq!(serde_json::from_str::<Style>("\"partial\"").unwrap(), Style::Partial);
    }

    #[test]
    fn profile_is_shareable_and_secret_free_in_debug() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Profile>();
        let spec = ProfileSpec { hash_key: key(0xAB), ..all_detectors(Style::Hash) };
        assert!(!format!("{spec:?}").contains("171"));
        assert!(!format!("{:?}", profile(&spec)).contains("171"));
    }

    #[test]
    fn bench_helpers() {
        let corpus = bench_corpus(64 * 1024);
        assert_eq!(corpus.len(), 64 * 1024);
        assert_eq!(corpus, bench_corpus(64 * 1024), "deterministic");
        assert!(std::str::from_utf8(&corpus).is_ok());
        let p = profile(&all_detectors(Style::Redact));
        let (bytes, hits) = measure_throughput(&p, &corpus, 2);
        assert_eq!(bytes, 2 * 64 * 1024 - 2 * corpus.iter().filter(|&&b| b == b'\n').count() as u64);
        // About one hit every few KB.
        assert!((10..=100).contains(&(hits / 2)), "{hits} hits in 2 x 64 KiB");
    }
}
