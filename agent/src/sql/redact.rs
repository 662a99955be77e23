//! What the audit trail may keep of a statement: the text with its secrets
//! removed, found in PostgreSQL's own parse tree (pg_query), never by
//! guessing at the text:
//!
//! - password options (`CREATE ROLE … PASSWORD '…'`, `ALTER USER … PASSWORD`,
//!   user mappings and servers with `OPTIONS (password '…')`): any option
//!   whose name matches a secret-setting pattern;
//! - settings whose names look secret (`SET app.secret = …`, `ALTER ROLE …
//!   SET`, `ALTER SYSTEM SET`, `set_config('app.token', …)`): a documented,
//!   configurable list of patterns ([`DEFAULT_SECRET_SETTINGS`], extended by
//!   `[agent] redact_settings`);
//! - every literal in the arguments of crypto and key functions
//!   (`pgp_sym_encrypt`, `crypt`, `hmac`, `dblink_connect`…:
//!   [`DEFAULT_SECRET_FUNCTIONS`], extended by `[agent] redact_functions`);
//! - subscription connection strings; function and `DO` bodies that call
//!   one of those functions or mention a password (the whole body).
//!
//! Each secret is replaced by `'[redacted]'` and counted. A statement that
//! does not parse keeps no string literal at all. For sessions whose rule
//! masks results, every literal is replaced by a placeholder (`$1`, `$2`…,
//! numbered after the statement's own parameters) unless the rule says
//! `record_literals = true`: the values a user filters on are often the
//! masked ones.
//!
//! [`client_bytes`] applies the same to the client's byte stream as it is
//! recorded: Query and Parse texts redacted; Bind parameters, FunctionCall
//! arguments and COPY FROM data recorded only when the rule says
//! `record_parameters = true`, and then through its masking profile.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::Value;

mod stream;

pub use stream::{StreamView, client_bytes};

use crate::mask::{Counts, MaskOutput, Profile};
use crate::policy::glob;

/// What replaces a secret in recorded text.
pub const REDACTED: &str = "'[redacted]'";

/// Setting and option names whose values are secrets (globs, ASCII case-insensitive).
pub const DEFAULT_SECRET_SETTINGS: &[&str] =
    &["*password*", "*passwd*", "*pwd*", "*secret*", "*token*", "*credential*", "*key*", "*passphrase*"];

/// Functions whose literal arguments are secrets (keys, passphrases, connection strings).
pub const DEFAULT_SECRET_FUNCTIONS: &[&str] = &[
    "pgp_sym_encrypt",
    "pgp_sym_encrypt_bytea",
    "pgp_sym_decrypt",
    "pgp_sym_decrypt_bytea",
    "pgp_pub_encrypt",
    "pgp_pub_encrypt_bytea",
    "pgp_pub_decrypt",
    "pgp_pub_decrypt_bytea",
    "pgp_key_id",
    "armor",
    "dearmor",
    "encrypt",
    "encrypt_iv",
    "decrypt",
    "decrypt_iv",
    "crypt",
    "hmac",
    "digest",
    "dblink_connect",
    "dblink_connect_u",
    "dblink",
    "dblink_exec",
    "dblink_send_query",
];

/// The redaction rules in force (built once from the agent's settings).
#[derive(Debug, Clone)]
pub struct Rules {
    settings: Vec<String>,
    functions: Vec<String>,
    /// Fragments one of which every text with a secret contains (ASCII case
    /// ignored), searched in one pass; `None`: every text is a candidate
    /// (an empty fragment, from a pattern like `*`).
    prefilter: Option<aho_corasick::AhoCorasick>,
    /// Redactions by template, for these rules (a reload builds new rules and a new memo).
    memo: Arc<Memo>,
}

impl Default for Rules {
    fn default() -> Self {
        Self::new(&[], &[])
    }
}

impl Rules {
    /// The built-in lists plus the operator's.
    pub fn new(extra_settings: &[String], extra_functions: &[String]) -> Self {
        let settings: Vec<String> = DEFAULT_SECRET_SETTINGS
            .iter()
            .map(|s| (*s).to_owned())
            .chain(extra_settings.iter().cloned())
            .map(|s| s.to_ascii_lowercase())
            .collect();
        let functions: Vec<String> = DEFAULT_SECRET_FUNCTIONS
            .iter()
            .map(|s| (*s).to_owned())
            .chain(extra_functions.iter().cloned())
            .map(|s| s.to_ascii_lowercase())
            .collect();
        let mut prefilter: Vec<String> = functions.clone();
        for p in &settings {
            // The longest literal run of a glob: every name it matches contains it.
            let frag = p.split(['*', '?']).max_by_key(|f| f.len()).unwrap_or_default();
            prefilter.push(frag.to_owned());
        }
        // `u&`: a Unicode-escaped name or string (`U&"app.p\0061ssword"`)
        // spells a setting without its letters; `pg_settings`: an UPDATE of
        // it sets values by a name in its WHERE (see `Walk::node`).
        prefilter.extend(["connection", "set_config", "u&", "pg_settings"].map(str::to_owned));
        // An automaton that cannot be built (none is too large for these
        // lists) leaves every text a candidate, like an empty fragment.
        let prefilter = if prefilter.iter().any(String::is_empty) {
            None
        } else {
            aho_corasick::AhoCorasick::builder().ascii_case_insensitive(true).build(&prefilter).ok()
        };
        Self { settings, functions, prefilter, memo: Arc::default() }
    }

    fn secret_name(&self, name: &str) -> bool {
        let n = name.to_ascii_lowercase();
        self.settings.iter().any(|p| glob(p.as_bytes(), n.as_bytes()))
    }

    fn secret_function(&self, name: &str) -> bool {
        let n = name.to_ascii_lowercase();
        self.functions.contains(&n)
    }

    /// Cheap test: can `text` hold anything these rules redact? (An empty
    /// fragment, from a pattern like `*`, makes every text a candidate.)
    pub fn might_hold_secret(&self, text: &str) -> bool {
        self.prefilter.as_ref().is_none_or(|p| p.is_match(text))
    }
}

/// How a session's statements are recorded (from the rule that allowed it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecordOptions {
    /// Replace every literal by a placeholder (rules with a masking profile,
    /// unless they say `record_literals = true`).
    pub normalize: bool,
    /// Record Bind parameters, FunctionCall arguments and COPY FROM data
    /// (through the masking profile, if any); off by default.
    pub parameters: bool,
}

/// A statement text ready for the audit trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redacted {
    pub text: String,
    /// Secrets replaced by `'[redacted]'`.
    pub secrets: u32,
    /// Literals replaced by placeholders.
    pub normalized: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Why {
    Normalize,
    Secret,
}

/// Redacts `text` for the record. `scs`: `standard_conforming_strings` of
/// the session (how backslashes in literals read).
///
/// A text with a template (`sql::template`: the same text but for the
/// values of its numeric constants) that was redacted before is redacted
/// by the recipe that redaction left (see [`Memo`]) instead of parsing it
/// again: scripts and ORMs send one statement with other numbers thousands
/// of times, and on masked sessions every one is redacted.
pub fn redact(text: &str, rules: &Rules, opts: RecordOptions, scs: bool) -> Redacted {
    if !opts.normalize && !rules.might_hold_secret(text) {
        return Redacted { text: text.to_owned(), secrets: 0, normalized: 0 };
    }
    redact_candidate(text, rules, opts, scs)
}

/// [`redact`], or `None` when the text is recorded as it is: a text the
/// prefilter passes is not copied only to be compared with itself (the
/// recorded client stream, [`client_bytes`], keeps its bytes then).
pub fn redact_if_changed(text: &str, rules: &Rules, opts: RecordOptions, scs: bool) -> Option<Redacted> {
    if !opts.normalize && !rules.might_hold_secret(text) {
        return None;
    }
    let r = redact_candidate(text, rules, opts, scs);
    (r.text != text).then_some(r)
}

/// [`redact`] for a text the prefilter did not clear.
fn redact_candidate(text: &str, rules: &Rules, opts: RecordOptions, scs: bool) -> Redacted {
    // The memo's key: the text's template or, for a text without one, the
    // text itself (a driver's Parse sends the same text with `$n` again and again).
    let t = super::template::of(text);
    let (template, consts, exact) = match &t {
        Some(t) => (t.key.as_str(), t.consts.as_slice(), false),
        None if text.len() <= Memo::MAX_TEXT => (text, &[][..], true),
        None => return fresh(text, rules, opts, scs).0,
    };
    let key = MemoKey { normalize: opts.normalize, scs, exact, template: template.into() };
    match rules.memo.get(&key) {
        Some(recipe) => match recipe.and_then(|r| r.redact(text, consts)) {
            Some(r) => r,
            None => fresh(text, rules, opts, scs).0,
        },
        None => {
            let (out, parsed) = fresh(text, rules, opts, scs);
            let recipe = parsed.and_then(|(spans, max_param)| Recipe::of(&spans, max_param, consts, scs));
            rules.memo.put(key, recipe);
            out
        }
    }
}

/// [`redact`] without the memo: what every redaction must equal.
#[cfg(test)]
fn redact_unmemoized(text: &str, rules: &Rules, opts: RecordOptions, scs: bool) -> Redacted {
    if !opts.normalize && !rules.might_hold_secret(text) {
        return Redacted { text: text.to_owned(), secrets: 0, normalized: 0 };
    }
    fresh(text, rules, opts, scs).0
}

/// `text` redacted from its own parse tree, and what was replaced (`None`:
/// not parsed, redacted lexically).
fn fresh(text: &str, rules: &Rules, opts: RecordOptions, scs: bool) -> (Redacted, Option<(Vec<Span>, i64)>) {
    match spans(text, rules, opts, scs) {
        Ok((spans, max_param)) => {
            (apply(text, spans.iter().map(Span::tuple).collect(), max_param), Some((spans, max_param)))
        }
        Err(unparsed) => (unparsed, None),
    }
}

/// What to replace in a text, from its parse tree, and the highest
/// parameter number it uses; a text that is not parsed is redacted
/// lexically instead (the `Err`).
fn spans(text: &str, rules: &Rules, opts: RecordOptions, scs: bool) -> Result<(Vec<Span>, i64), Redacted> {
    // Parsing (and the JSON view of the tree below) costs up to ~5 KB per
    // token, here on the session's task: a text over the inline parse bound
    // (or one refused for its size, which was never parsed) is redacted
    // lexically instead, every literal and comment (sql/budget.rs).
    if super::shape::measure(text, scs).tokens > super::budget::LARGE_TOKENS {
        return Err(unparsed(text, scs));
    }
    let mut parser_options = pg_query::ParserOptions::DEFAULT;
    if !scs {
        parser_options |= pg_query::ParserOptions::DISABLE_STANDARD_CONFORMING_STRINGS;
    }
    let Ok(parsed) = pg_query::parse(text, parser_options) else {
        return Err(unparsed(text, scs));
    };
    let mut spans: Vec<Span> = Vec::new();
    let mut max_param = 0i64;
    for raw in &parsed.protobuf.stmts {
        let start = usize::try_from(raw.stmt_location).unwrap_or(0);
        let end = match usize::try_from(raw.stmt_len) {
            Ok(0) | Err(_) => text.len(),
            Ok(n) => start.saturating_add(n).min(text.len()),
        };
        let Ok(tree) = serde_json::to_value(raw) else {
            // Cannot look inside: keep nothing of it.
            spans.push(Span { start, end, why: Why::Secret, literal: None });
            continue;
        };
        let mut w = Walk {
            text,
            rules,
            scs,
            stmt_end: end,
            spans: &mut spans,
            max_param: &mut max_param,
            normalize: opts.normalize,
        };
        w.node(&tree, false);
    }
    Ok((spans, max_param))
}

/// One thing to replace: bytes `start..end`, and for a constant, the end
/// of its statement (where the replacement runs to if the constant's own
/// end cannot be read).
#[derive(Debug, Clone, Copy)]
struct Span {
    start: usize,
    end: usize,
    why: Why,
    literal: Option<usize>,
}

impl Span {
    fn tuple(&self) -> (usize, usize, Why) {
        (self.start, self.end, self.why)
    }
}

/// Redactions by template, for the texts that differ from one redacted
/// before only in the values of their numeric constants (and by text, for
/// texts that have no template: the same text again gets the same answer).
///
/// Why a recipe carries over: two texts of one template lex into the same
/// tokens but for those values, so their parse trees are the same but for
/// those values and byte offsets (`sql::template`), and nothing this
/// module decides reads a numeric value: which constants are replaced, and
/// why, comes from node kinds, names and strings, all equal. What differs
/// is where things are, so a recipe keeps each place relative to the
/// numeric constants (how many lie before it, and how far past the last of
/// them it is); a place inside a numeric constant cannot be kept, and its
/// text's template gets no recipe (every text of it is parsed).
///
/// Where a replaced constant ends is read from the text (`literal_end`),
/// which for a number reads its bytes: each use of a recipe reads each
/// constant's end again in the new text and, if one differs from the
/// recipe's, parses that text instead. The memo's answers are checked
/// against fresh redactions in this module's tests.
#[derive(Debug, Default)]
pub struct Memo {
    inner: Mutex<MemoMap>,
}

#[derive(Debug, Default)]
struct MemoMap {
    /// `None`: a template whose redaction cannot be kept.
    map: HashMap<MemoKey, Option<Arc<Recipe>>>,
    bytes: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct MemoKey {
    normalize: bool,
    scs: bool,
    /// `template` is the text itself (it has no template).
    exact: bool,
    template: Box<str>,
}

/// A place in a text, relative to its numeric constants: how many end at
/// or before it, and its distance from the end of the last of those (from
/// the start of the text if none).
type Place = (usize, usize);

#[derive(Debug)]
struct Recipe {
    steps: Vec<Step>,
    max_param: i64,
    scs: bool,
}

#[derive(Debug)]
struct Step {
    start: Place,
    end: Place,
    why: Why,
    /// A constant: where its statement ends (its end is read again in each text).
    literal: Option<Place>,
}

fn place(at: usize, consts: &[(usize, usize)]) -> Option<Place> {
    let before = consts.partition_point(|c| c.1 <= at);
    if consts.get(before).is_some_and(|c| c.0 < at) {
        return None;
    }
    let base = before.checked_sub(1).and_then(|i| consts.get(i)).map_or(0, |c| c.1);
    Some((before, at - base))
}

fn at(p: Place, consts: &[(usize, usize)]) -> Option<usize> {
    let base = match p.0 {
        0 => 0,
        n => consts.get(n - 1)?.1,
    };
    base.checked_add(p.1)
}

impl Memo {
    /// Recipes kept, at most (then the memo starts over).
    const MAX_ENTRIES: usize = 4096;
    /// Longest text kept by itself (as long as a template can be).
    const MAX_TEXT: usize = 4096;
    /// Accounted bytes kept, at most.
    const MAX_BYTES: usize = 4 << 20;

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoMap> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn get(&self, key: &MemoKey) -> Option<Option<Arc<Recipe>>> {
        self.lock().map.get(key).cloned()
    }

    fn put(&self, key: MemoKey, recipe: Option<Recipe>) {
        let bytes = key.template.len()
            + recipe.as_ref().map_or(0, |r| r.steps.len() * std::mem::size_of::<Step>())
            + std::mem::size_of::<(MemoKey, Recipe)>();
        let mut m = self.lock();
        if m.map.len() >= Self::MAX_ENTRIES || m.bytes + bytes > Self::MAX_BYTES {
            m.map.clear();
            m.bytes = 0;
        }
        if m.map.insert(key, recipe.map(Arc::new)).is_none() {
            m.bytes += bytes;
        }
    }
}

impl Recipe {
    /// The recipe of a text whose constants are at `consts`, if every place it names can be kept.
    fn of(spans: &[Span], max_param: i64, consts: &[(usize, usize)], scs: bool) -> Option<Recipe> {
        let steps = spans
            .iter()
            .map(|s| {
                Some(Step {
                    start: place(s.start, consts)?,
                    end: place(s.end, consts)?,
                    why: s.why,
                    literal: match s.literal {
                        Some(e) => Some(place(e, consts)?),
                        None => None,
                    },
                })
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Recipe { steps, max_param, scs })
    }

    /// `text` (of the recipe's template, constants at `consts`) redacted;
    /// `None` if a replaced constant ends elsewhere in it (then parse it).
    fn redact(&self, text: &str, consts: &[(usize, usize)]) -> Option<Redacted> {
        let mut spans = Vec::with_capacity(self.steps.len());
        for s in &self.steps {
            let (start, end) = (at(s.start, consts)?, at(s.end, consts)?);
            if let Some(stmt_end) = s.literal {
                let stmt_end = at(stmt_end, consts)?;
                if literal_end(text.as_bytes(), start, self.scs).unwrap_or(stmt_end).max(start) != end {
                    return None;
                }
            }
            spans.push((start, end, s.why));
        }
        Some(apply(text, spans, self.max_param))
    }
}

/// A statement that does not parse: every string literal (and everything
/// after an unterminated one) is removed; identifiers, keywords and numbers stay.
fn unparsed(text: &str, scs: bool) -> Redacted {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut secrets = 0u32;
    let mut i = 0usize;
    let mut last = 0usize;
    while i < b.len() {
        let c = b.get(i).copied().unwrap_or(0);
        let string_start = match c {
            b'\'' | b'$' => true,
            b'E' | b'e' | b'B' | b'b' | b'X' | b'x' | b'N' | b'n' => {
                b.get(i + 1) == Some(&b'\'') && !ident_byte_before(b, i)
            }
            b'U' | b'u' => b.get(i + 1) == Some(&b'&') && b.get(i + 2) == Some(&b'\'') && !ident_byte_before(b, i),
            _ => false,
        };
        if c == b'-' && b.get(i + 1) == Some(&b'-') {
            // A comment may hold anything: to the end of the line, it goes.
            let end = memchr::memchr(b'\n', b.get(i..).unwrap_or_default()).map_or(b.len(), |n| i + n);
            out.push_str(text.get(last..i).unwrap_or_default());
            out.push_str("-- [redacted]");
            secrets += 1;
            i = end;
            last = end;
            continue;
        }
        if string_start {
            if c == b'$' && dollar_tag(b, i).is_none() {
                i += 1;
                continue;
            }
            let end = literal_end(b, i, scs).unwrap_or(b.len());
            out.push_str(text.get(last..i).unwrap_or_default());
            out.push_str(REDACTED);
            secrets += 1;
            i = end.max(i + 1);
            last = i;
            continue;
        }
        i += 1;
    }
    out.push_str(text.get(last..).unwrap_or_default());
    Redacted { text: out, secrets, normalized: 0 }
}

fn ident_byte_before(b: &[u8], i: usize) -> bool {
    i.checked_sub(1).and_then(|j| b.get(j)).is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_' || *c >= 0x80)
}

struct Walk<'a> {
    text: &'a str,
    rules: &'a Rules,
    scs: bool,
    stmt_end: usize,
    spans: &'a mut Vec<Span>,
    max_param: &'a mut i64,
    normalize: bool,
}

fn loc(v: &Value, field: &str) -> Option<usize> {
    v.get(field).and_then(Value::as_i64).and_then(|l| usize::try_from(l).ok())
}

/// Every `sval` under a value (names, option arguments, bodies).
fn strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, c) in m {
                if k == "sval"
                    && let Some(s) = c.as_str()
                {
                    out.push(s.to_owned());
                } else {
                    strings(c, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|c| strings(c, out)),
        _ => {}
    }
}

impl Walk<'_> {
    /// Marks the literal starting at byte `at`; if its end cannot be read,
    /// everything to the end of the statement (fail closed).
    fn literal(&mut self, at: usize, why: Why) {
        let end = literal_end(self.text.as_bytes(), at, self.scs).unwrap_or(self.stmt_end).max(at);
        self.spans.push(Span { start: at, end, why, literal: Some(self.stmt_end) });
    }

    fn node(&mut self, v: &Value, secret: bool) {
        match v {
            Value::Array(a) => {
                for c in a {
                    self.node(c, secret);
                }
            }
            Value::Object(m) => {
                for (k, c) in m {
                    match k.as_str() {
                        "AConst" => {
                            let null = c.get("isnull").and_then(Value::as_bool).unwrap_or(false);
                            if let (Some(at), false) = (loc(c, "location"), null) {
                                if secret {
                                    self.literal(at, Why::Secret);
                                } else if self.normalize {
                                    self.literal(at, Why::Normalize);
                                }
                            }
                        }
                        "ParamRef" => {
                            let n = c.get("number").and_then(Value::as_i64).unwrap_or(0);
                            *self.max_param = (*self.max_param).max(n);
                        }
                        "DefElem" => self.def_elem(c, secret),
                        "FuncCall" => self.func_call(c, secret),
                        // A SET on its own, or inside ALTER ROLE/DATABASE/SYSTEM (`setstmt`).
                        "VariableSetStmt" | "setstmt" => {
                            let name = c.get("name").and_then(Value::as_str).unwrap_or_default();
                            let s = secret || self.rules.secret_name(name);
                            if let Some(args) = c.get("args") {
                                self.node(args, s);
                            }
                        }
                        // `UPDATE pg_settings SET setting = …` calls set_config for
                        // each row: which setting the WHERE picks is not known
                        // here, so every value in it is kept out.
                        "UpdateStmt" => {
                            let rel = c.get("relation").and_then(|r| r.get("relname")).and_then(Value::as_str);
                            self.node(c, secret || rel == Some("pg_settings"));
                        }
                        "CreateSubscriptionStmt" | "AlterSubscriptionStmt" => {
                            if let Some(at) = loc(c, "conninfo_location") {
                                self.literal(at, Why::Secret);
                            }
                            self.node(c, secret);
                        }
                        _ => self.node(c, secret),
                    }
                }
            }
            _ => {}
        }
    }

    fn def_elem(&mut self, c: &Value, secret: bool) {
        let name = c.get("defname").and_then(Value::as_str).unwrap_or_default();
        let arg = c.get("arg");
        let mut texts = Vec::new();
        if let Some(a) = arg {
            strings(a, &mut texts);
        }
        // A function or DO body: removed whole when it may hold a secret.
        let body = name.eq_ignore_ascii_case("as") && texts.iter().any(|t| self.rules.might_hold_secret(t));
        let s = secret || self.rules.secret_name(name) || body;
        if s && !texts.is_empty() {
            match loc(c, "arg_location") {
                Some(at) => self.literal(at, Why::Secret),
                // No location for the value: from the option's name to the end of the statement.
                None => {
                    if let Some(at) = loc(c, "location") {
                        self.spans.push(Span { start: at, end: self.stmt_end, why: Why::Secret, literal: None });
                    }
                }
            }
        }
        if let Some(a) = arg {
            self.node(a, s);
        }
    }

    fn func_call(&mut self, c: &Value, secret: bool) {
        let mut names = Vec::new();
        if let Some(f) = c.get("funcname") {
            strings(f, &mut names);
        }
        let name = names.last().map(String::as_str).unwrap_or_default();
        let args = c.get("args").and_then(Value::as_array);
        if self.rules.secret_function(name) {
            if let Some(a) = args {
                for x in a {
                    self.node(x, true);
                }
            }
        } else if name.eq_ignore_ascii_case("set_config") {
            // set_config('app.token', 'value', false): the value is secret
            // when the name is, or when the name is not a string written out
            // (`'app.pass' || 'word'`, `$1`, a cast): then it is not known here.
            let setting = args
                .and_then(|a| a.first())
                .map(|first| first.pointer("/node/AConst/val/Sval/sval").and_then(Value::as_str));
            let s = secret || setting.is_some_and(|n| n.is_none_or(|n| self.rules.secret_name(n)));
            for (i, x) in args.into_iter().flatten().enumerate() {
                self.node(x, secret || (s && i == 1));
            }
        } else if let Some(a) = args {
            for x in a {
                self.node(x, secret);
            }
        }
        for (k, v) in c.as_object().into_iter().flatten() {
            if k != "args" && k != "funcname" {
                self.node(v, secret);
            }
        }
    }
}

/// Replaces the spans (secrets win over placeholders; overlaps merged).
fn apply(text: &str, mut spans: Vec<(usize, usize, Why)>, max_param: i64) -> Redacted {
    spans.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)).then(b.2.cmp(&a.2)));
    let mut merged: Vec<(usize, usize, Why)> = Vec::with_capacity(spans.len());
    for s in spans {
        match merged.last_mut() {
            Some(m) if s.0 < m.1 => {
                m.1 = m.1.max(s.1);
                m.2 = m.2.max(s.2);
            }
            _ => merged.push(s),
        }
    }
    let mut out = String::with_capacity(text.len());
    let (mut secrets, mut normalized) = (0u32, 0u32);
    let mut last = 0usize;
    let mut next_param = max_param;
    for (start, end, why) in merged {
        // Spans come from byte offsets into `text`; off a character boundary, widen to the boundaries.
        let (Some(head), true) = (text.get(last..start), text.is_char_boundary(end.min(text.len()))) else {
            continue;
        };
        out.push_str(head);
        match why {
            Why::Secret => {
                out.push_str(REDACTED);
                secrets += 1;
            }
            Why::Normalize => {
                next_param += 1;
                out.push_str(&format!("${next_param}"));
                normalized += 1;
            }
        }
        last = end.min(text.len());
    }
    out.push_str(text.get(last..).unwrap_or_default());
    Redacted { text: out, secrets, normalized }
}

/// The tag of a dollar quote starting at `i` (`$$` or `$tag$`): its length.
fn dollar_tag(b: &[u8], i: usize) -> Option<usize> {
    if b.get(i) != Some(&b'$') {
        return None;
    }
    let mut j = i + 1;
    while let Some(&c) = b.get(j) {
        if c == b'$' {
            return Some(j + 1 - i);
        }
        let ok = c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 || (j > i + 1 && c.is_ascii_digit());
        if !ok {
            return None;
        }
        j += 1;
    }
    None
}

/// The end (exclusive) of the constant that starts at byte `i`: a quoted
/// string (with its `E`, `B`, `X`, `N`, `U&` prefix, doubled quotes,
/// backslash escapes where they apply, and SQL's continuation of a string
/// on a following line), a dollar-quoted string, a number (with its sign),
/// a quoted identifier or a word. `None` if none starts there or it never ends.
pub(crate) fn literal_end(b: &[u8], i: usize, scs: bool) -> Option<usize> {
    let c = *b.get(i)?;
    match c {
        b'\'' => quoted(b, i, !scs),
        b'E' | b'e' if b.get(i + 1) == Some(&b'\'') => quoted(b, i + 1, true),
        b'B' | b'b' | b'X' | b'x' | b'N' | b'n' if b.get(i + 1) == Some(&b'\'') => quoted(b, i + 1, !scs),
        b'U' | b'u' if b.get(i + 1) == Some(&b'&') && b.get(i + 2) == Some(&b'\'') => quoted(b, i + 2, false),
        b'$' => {
            let tag_len = dollar_tag(b, i)?;
            let tag = b.get(i..i + tag_len)?;
            let body = i + tag_len;
            let rest = b.get(body..)?;
            memchr::memmem::find(rest, tag).map(|n| body + n + tag_len)
        }
        b'"' => {
            let mut j = i + 1;
            loop {
                match b.get(j) {
                    Some(b'"') if b.get(j + 1) == Some(&b'"') => j += 2,
                    Some(b'"') => return Some(j + 1),
                    Some(_) => j += 1,
                    None => return None,
                }
            }
        }
        b'-' | b'+' | b'.' | b'0'..=b'9' => {
            let mut j = i;
            if matches!(c, b'-' | b'+') {
                j += 1;
                while b.get(j).is_some_and(u8::is_ascii_whitespace) {
                    j += 1;
                }
            }
            let start = j;
            while let Some(&d) = b.get(j) {
                let exp_sign = matches!(d, b'+' | b'-') && j > start && matches!(b.get(j - 1), Some(b'e' | b'E'));
                if d.is_ascii_alphanumeric() || d == b'.' || d == b'_' || exp_sign {
                    j += 1;
                } else {
                    break;
                }
            }
            (j > start).then_some(j)
        }
        _ if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 => {
            let mut j = i;
            while b.get(j).is_some_and(|&d| d.is_ascii_alphanumeric() || d == b'_' || d == b'$' || d >= 0x80) {
                j += 1;
            }
            Some(j)
        }
        _ => None,
    }
}

/// A `'…'` string from the quote at `q`; then any continuation (whitespace
/// holding a newline, then another quote) is part of the same constant.
fn quoted(b: &[u8], q: usize, backslashes: bool) -> Option<usize> {
    let mut j = q + 1;
    loop {
        match b.get(j) {
            Some(b'\\') if backslashes => j += 2,
            Some(b'\'') if b.get(j + 1) == Some(&b'\'') => j += 2,
            Some(b'\'') => {
                let end = j + 1;
                let mut k = end;
                let mut newline = false;
                while let Some(&w) = b.get(k) {
                    match w {
                        b'\n' | b'\r' => newline = true,
                        b' ' | b'\t' | b'\x0c' => {}
                        _ => break,
                    }
                    k += 1;
                }
                if newline && b.get(k) == Some(&b'\'') {
                    j = k + 1;
                    continue;
                }
                return Some(end);
            }
            Some(_) => j += 1,
            None => return None,
        }
    }
}

/// A refusal reason or parse error as recorded and logged: PostgreSQL's
/// parser quotes the text near an error (`at or near "'hunter2'"`), which
/// may be a secret; the quote is dropped.
pub fn reason(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("at or near \"") {
        out.push_str(rest.get(..i).unwrap_or_default());
        out.push_str("at or near [redacted]");
        let after = rest.get(i + "at or near \"".len()..).unwrap_or_default();
        // The quoted text ends at the last quote before the end of the message or the next sentence.
        rest = match after.rfind('"') {
            Some(j) => after.get(j + 1..).unwrap_or_default(),
            None => "",
        };
    }
    out.push_str(rest);
    out
}

/// An error or notice message as recorded: through the session's masking
/// profile (what the client was shown), never the raw text.
pub fn message(profile: Option<&Profile>, text: &str) -> String {
    let Some(p) = profile else { return text.to_owned() };
    let mut out = Vec::with_capacity(text.len());
    let mut counts = Counts::default();
    match p.scan(text.as_bytes(), &mut out, &mut counts) {
        MaskOutput::Unchanged => text.to_owned(),
        MaskOutput::Written => String::from_utf8_lossy(&out).into_owned(),
        MaskOutput::Null => "****".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::stream::{frame, header};
    use super::*;

    fn r(sql: &str) -> Redacted {
        redact(sql, &Rules::default(), RecordOptions::default(), true)
    }

    #[track_caller]
    fn hides(sql: &str, secret: &str, expect: &str) {
        let got = r(sql);
        assert!(!got.text.contains(secret), "{sql:?} kept {secret:?}: {:?}", got.text);
        assert_eq!(got.text, expect, "{sql:?}");
        assert!(got.secrets > 0);
    }

    #[test]
    fn the_prefilter_ignores_ascii_case_and_an_empty_fragment_passes_everything() {
        let rules = Rules::default();
        for sql in ["SELECT SET_CONFIG('a.b', 'c', false)", "alter role x PassWord 'y'", "SELECT DbLink('x')"] {
            assert!(rules.might_hold_secret(sql), "{sql:?}");
        }
        assert!(!rules.might_hold_secret("SELECT abalance FROM pgbench_accounts WHERE aid = 1"));
        // An operator's glob: its longest literal run is the fragment.
        let rules = Rules::new(&["app.*token*".to_owned()], &[]);
        assert!(rules.might_hold_secret("SET APP.API_TOKEN = 'x'"));
        assert!(!rules.might_hold_secret("SET app.api_name = 'x'"));
        // `*` has no literal run: every text is a candidate.
        let rules = Rules::new(&["*".to_owned()], &[]);
        assert!(rules.might_hold_secret("SELECT 1"));
    }

    /// The recorded stream's shortcut says "unchanged" exactly when
    /// redaction leaves the text as it is, and otherwise gives what
    /// redaction gives: with and without secrets, normalized or not.
    #[test]
    fn redact_if_changed_is_none_exactly_when_redact_changes_nothing() {
        let rules = Rules::default();
        let texts = [
            "SELECT abalance FROM pgbench_accounts WHERE aid = 1",
            "select 1",
            "ALTER ROLE app PASSWORD 'hunter2'",
            "SELECT set_config('app.token', 'tok-1', false)",
            "SELECT password FROM users",
            "SELECT pgp_sym_encrypt('x', 'k')",
            "SET app.secret = 'x'; SELECT 1",
        ];
        for normalize in [false, true] {
            let opts = RecordOptions { normalize, ..RecordOptions::default() };
            for text in texts {
                let full = redact(text, &rules, opts, true);
                match redact_if_changed(text, &rules, opts, true) {
                    None => assert_eq!(full.text, text, "{text:?} normalize {normalize}"),
                    Some(r) => {
                        assert_ne!(r.text, text, "{text:?} normalize {normalize}");
                        assert_eq!(r, full, "{text:?} normalize {normalize}");
                    }
                }
            }
        }
        // Both kinds of answer are met above.
        assert!(redact_if_changed(texts[0], &rules, RecordOptions::default(), true).is_none());
        assert!(redact_if_changed(texts[2], &rules, RecordOptions::default(), true).is_some());
    }

    /// Ways to set a secret setting without writing its name out: each value
    /// is kept out of the record, under both string settings, memoized or not.
    #[test]
    fn a_secret_setting_named_by_escapes_expressions_or_pg_settings_is_redacted() {
        let texts = [
            "SET U&\"app.p\\0061ssword\" = 'hunter2'",
            "SET U&\"app.p!0061ssword\" UESCAPE '!' = 'hunter2'",
            "ALTER ROLE bob SET U&\"app.p\\0061ssword\" TO 'hunter2'",
            "SELECT set_config('app.pass' || 'word', 'hunter2', false)",
            "SELECT set_config($1, 'hunter2', false)",
            "SELECT set_config('app.secret'::text, 'hunter2', false)",
            "SELECT set_config(U&'app.p\\0061ssword', 'hunter2', false)",
            "UPDATE pg_settings SET setting = 'hunter2' WHERE name = 'app.password'",
            "UPDATE pg_catalog.pg_settings SET setting = 'hunter2' WHERE name = U&'app.p\\0061ssword'",
        ];
        for scs in [true, false] {
            let rules = Rules::default();
            for text in texts {
                for round in ["first", "again"] {
                    let got = redact(text, &rules, RecordOptions::default(), scs);
                    assert!(!got.text.contains("hunter2"), "scs {scs}, {round}: {text:?} kept it: {:?}", got.text);
                    assert!(got.secrets > 0, "{text:?}");
                }
            }
        }
        // A setting named outright that is not secret keeps its value.
        assert_eq!(r("SELECT set_config('app.tz', 'UTC', false)").text, "SELECT set_config('app.tz', 'UTC', false)");
        assert_eq!(r("UPDATE t SET a = 'x' WHERE b = 1").text, "UPDATE t SET a = 'x' WHERE b = 1");
    }

    #[test]
    fn passwords_settings_and_keys_are_redacted_from_the_tree() {
        hides("ALTER ROLE bob PASSWORD 'hunter2'", "hunter2", "ALTER ROLE bob PASSWORD '[redacted]'");
        hides(
            "CREATE USER app WITH LOGIN ENCRYPTED PASSWORD 'Sup3r$ecret' VALID UNTIL '2030-01-01'",
            "Sup3r$ecret",
            "CREATE USER app WITH LOGIN ENCRYPTED PASSWORD '[redacted]' VALID UNTIL '2030-01-01'",
        );
        hides("alter user bob with password $pw$x'y$pw$;", "x'y", "alter user bob with password '[redacted]';");
        hides("SET app.secret = 'tok-123'", "tok-123", "SET app.secret = '[redacted]'");
        hides("set session app.api_key to abc123", "abc123", "set session app.api_key to '[redacted]'");
        hides("ALTER ROLE x SET app.token = 'zzz'", "zzz", "ALTER ROLE x SET app.token = '[redacted]'");
        hides("ALTER SYSTEM SET app.password TO 'p1'", "p1", "ALTER SYSTEM SET app.password TO '[redacted]'");
        hides(
            "SELECT set_config('app.secret', 'v4lue', false)",
            "v4lue",
            "SELECT set_config('app.secret', '[redacted]', false)",
        );
        hides(
            "SELECT pgp_sym_encrypt(data, 'k3y', 'cipher-algo=aes256') FROM t",
            "k3y",
            "SELECT pgp_sym_encrypt(data, '[redacted]', '[redacted]') FROM t",
        );
        hides(
            "select public.PGP_SYM_DECRYPT(x::bytea, E'k\\'ey') from t",
            "ey",
            "select public.PGP_SYM_DECRYPT(x::bytea, '[redacted]') from t",
        );
        hides(
            "SELECT dblink_connect('c', 'host=db password=pw9')",
            "pw9",
            "SELECT dblink_connect('[redacted]', '[redacted]')",
        );
        hides(
            "CREATE USER MAPPING FOR bob SERVER s OPTIONS (user 'bob', password 'mapped')",
            "mapped",
            "CREATE USER MAPPING FOR bob SERVER s OPTIONS (user 'bob', password '[redacted]')",
        );
        hides(
            "CREATE SUBSCRIPTION s CONNECTION 'host=a password=subpw' PUBLICATION p",
            "subpw",
            "CREATE SUBSCRIPTION s CONNECTION '[redacted]' PUBLICATION p",
        );
        hides("DO $$BEGIN PERFORM pgp_sym_encrypt('x', 'dokey'); END$$", "dokey", "DO '[redacted]'");
        // Several statements, multi-byte text before the secret.
        hides("SELECT 'héllo'; ALTER ROLE r PASSWORD 'p2'", "p2", "SELECT 'héllo'; ALTER ROLE r PASSWORD '[redacted]'");
        // String continuation across lines is one constant.
        hides("ALTER ROLE r PASSWORD 'ab'\n  'cd'", "cd", "ALTER ROLE r PASSWORD '[redacted]'");
    }

    #[test]
    fn ordinary_statements_are_left_alone() {
        for sql in [
            "SELECT * FROM items WHERE name = 'x'",
            "SET search_path = public",
            "SELECT md5('not a secret function')",
            "UPDATE keys_table SET v = 1",
        ] {
            let got = r(sql);
            assert_eq!((got.text.as_str(), got.secrets), (sql, 0), "{sql}");
        }
    }

    #[test]
    fn statements_that_do_not_parse_keep_no_literal() {
        let got = r("ALTER ROLE bob PASSWORD 'hunter2' GARBAGE");
        assert_eq!(got.text, "ALTER ROLE bob PASSWORD '[redacted]' GARBAGE");
        let got = r("SELEC pgp_sym_encrypt('d', 'unterminated");
        assert!(!got.text.contains("unterminated") && !got.text.contains('d'.to_string().repeat(2).as_str()));
        assert_eq!(got.text, "SELEC pgp_sym_encrypt('[redacted]', '[redacted]'");
        let got = r("nonsense -- password hunter2\n;");
        assert!(!got.text.contains("hunter2"), "{}", got.text);
        let got = r("SELEC $$dollar secret$$ x");
        assert!(!got.text.contains("dollar secret"), "{}", got.text);
    }

    #[test]
    fn masked_sessions_record_placeholders() {
        let opts = RecordOptions { normalize: true, parameters: false };
        let got = redact(
            "SELECT * FROM customers WHERE ssn = '123-45-6789' AND id > $1 AND n = -5 LIMIT 10",
            &Rules::default(),
            opts,
            true,
        );
        assert_eq!(got.text, "SELECT * FROM customers WHERE ssn = $2 AND id > $1 AND n = $3 LIMIT $4", "{got:?}");
        assert_eq!((got.normalized, got.secrets), (3, 0));
        let got = redact("SELECT pgp_sym_encrypt(x, 'k') FROM t WHERE a = 'b'", &Rules::default(), opts, true);
        assert_eq!(got.text, "SELECT pgp_sym_encrypt(x, '[redacted]') FROM t WHERE a = $1");
    }

    /// Texts that differ only in their numbers, each redacted after another
    /// of its template left a recipe: every answer is a fresh parse's.
    #[test]
    fn a_template_redacts_every_text_of_it_as_a_fresh_parse_would() {
        let shapes = [
            "SELECT abalance FROM pgbench_accounts WHERE aid = {};",
            "SELECT {}, 'x', -{}, - {}, +{} FROM t WHERE a = {} AND b IN ({}, {}) AND c = 'y'",
            "UPDATE t SET a = a + {} WHERE id = {} RETURNING {}",
            "INSERT INTO t VALUES ({}, 'a', NULL, {}::numeric({}, {}), interval '1 day' * {})",
            "SELECT pgp_sym_encrypt('data', 'key'), crypt('pw', gen_salt('bf', {})), pgp_sym_encrypt({}, 'k')",
            "CREATE ROLE r PASSWORD 'x' CONNECTION LIMIT {}",
            "ALTER ROLE r SET app.secret = {}",
            "SET statement_timeout = {}",
            "SELECT set_config('app.token', 'v', false), {}",
            "SELECT $1 + {}, $3 * {}",
            "SELECT {}::float({})",
            "SELECT {} LIMIT {} OFFSET {}",
            "SELECT {}; SELECT {} ; SELECT 'z', {}",
            "SELECT {}-{}, {}+{}, {}e",
            "SELECT ARRAY[{},{}][{}], {}.{}",
            "SELECT * FROM t WHERE a BETWEEN {} AND {} /* c */ ORDER BY {} -- d\n",
            "SELECT dblink_connect('host=x password=y'), {}",
            "CREATE SUBSCRIPTION s CONNECTION 'password=p' PUBLICATION p WITH (slot_name = 'a{}'), {}",
            "SELECT {} FROM t WHERE a = 'it''s' AND b = E'x'",
            "SELECT 'a' 'b', {}",
            "SELECT {} WHERE (",
        ];
        let values = [
            "0",
            "1",
            "7",
            "42",
            "12345",
            "1.5",
            ".5",
            "1.",
            "1e5",
            "1.5e-3",
            "0x1F",
            "0xE",
            "0XAE",
            "0b101",
            "0o17",
            "1_000",
            "3000000000",
            "99999999999999999999",
        ];
        let fill = |shape: &str, pick: &dyn Fn(usize) -> &'static str| {
            let mut out = String::new();
            for (i, part) in shape.split("{}").enumerate() {
                if i > 0 {
                    out.push_str(pick(i));
                }
                out.push_str(part);
            }
            out
        };
        let mut recipes = 0usize;
        for shape in shapes {
            let shape = shape.replace("\\n", "\n");
            let mut texts: Vec<String> = values.iter().map(|v| fill(&shape, &|_| *v)).collect();
            for k in 0..values.len() {
                texts.push(fill(&shape, &|i| values.get((i * 7 + k) % values.len()).copied().unwrap_or("1")));
            }
            for normalize in [false, true] {
                for scs in [true, false] {
                    let opts = RecordOptions { normalize, parameters: false };
                    let want: Vec<Redacted> =
                        texts.iter().map(|t| redact_unmemoized(t, &Rules::default(), opts, scs)).collect();
                    for seed in &texts {
                        let rules = Rules::default();
                        let _ = redact(seed, &rules, opts, scs);
                        recipes += rules.memo.lock().map.values().filter(|r| r.is_some()).count();
                        for (text, want) in texts.iter().zip(&want) {
                            let got = redact(text, &rules, opts, scs);
                            if &got != want && pg_query::parse(text, pg_query::ParserOptions::DEFAULT).is_err() {
                                // The one grammar rule that refuses a text for a number's value:
                                // see below.
                                assert!(text.contains("::float("), "{text:?} after {seed:?}: {got:?}");
                                continue;
                            }
                            assert_eq!(&got, want, "{text:?} after {seed:?} ({opts:?}, scs {scs})");
                        }
                    }
                }
            }
        }
        // The memo was used (not every template fell back to parsing).
        assert!(recipes > 1000, "{recipes} recipes");
        // pgbench's statement: one recipe, and its texts are redacted by it.
        let rules = Rules::default();
        let opts = RecordOptions { normalize: true, parameters: false };
        let a = redact("SELECT abalance FROM pgbench_accounts WHERE aid = 12345;", &rules, opts, true);
        assert_eq!(a.text, "SELECT abalance FROM pgbench_accounts WHERE aid = $1;");
        let recipe = rules.memo.lock().map.values().next().cloned().flatten().expect("a recipe");
        let b = recipe.redact("SELECT abalance FROM pgbench_accounts WHERE aid = 7;", &[(50, 51)]).expect("it applies");
        assert_eq!(b, a);
        // `float(p)` with p outside 1..53 is the grammar's only refusal that
        // reads a number's value: such a text, after a sibling that parsed, is
        // recorded as the sibling was (its constants replaced), not lexically
        // (which keeps numbers, drops every string and comment). The server
        // refuses it the same way; it never runs.
        let rules = Rules::default();
        let _ = redact("SELECT 1e5::float(7), 'a'", &rules, opts, true);
        assert_eq!(redact("SELECT 1e5::float(1_000), 'a'", &rules, opts, true).text, "SELECT $1::float(1_000), $2");
        assert_eq!(
            redact_unmemoized("SELECT 1e5::float(1_000), 'a'", &rules, opts, true).text,
            "SELECT 1e5::float(1_000), '[redacted]'"
        );
    }

    /// Texts without a template (no numeric constant, or a backslash) are
    /// remembered by themselves: the same text again, under the same
    /// settings, gets a fresh parse's answer without one.
    #[test]
    fn a_text_without_a_template_is_remembered_by_itself() {
        let texts = [
            "SELECT * FROM customers WHERE email = $1 AND name = 'x'",
            "SELECT pgp_sym_encrypt($1, 'key'), crypt('pw', gen_salt('bf'))",
            "SET app.secret = 'abc'",
            "SELECT E'a\\'' || 'b\\', $2 FROM t WHERE c = 'd'",
            "SELECT 'it''s', $$x$$ -- note",
            "SELECT 'unterminated",
            "CREATE ROLE r PASSWORD 'x'",
        ];
        for normalize in [false, true] {
            for scs in [true, false] {
                let opts = RecordOptions { normalize, parameters: false };
                let rules = Rules::default();
                for text in texts {
                    let want = redact_unmemoized(text, &rules, opts, scs);
                    assert_eq!(redact(text, &rules, opts, scs), want, "{text:?} first");
                    assert_eq!(redact(text, &rules, opts, scs), want, "{text:?} again");
                }
                // Every text that parses left a recipe (the unterminated one did not).
                let m = rules.memo.lock();
                let kept = m.map.iter().filter(|(k, r)| k.exact && r.is_some()).count();
                let remembered = m.map.len();
                drop(m);
                let candidates: Vec<&str> =
                    texts.iter().copied().filter(|t| normalize || rules.might_hold_secret(t)).collect();
                let parsed = candidates.iter().filter(|t| spans(t, &rules, opts, scs).is_ok()).count();
                assert_eq!(remembered, candidates.len(), "normalize {normalize}, scs {scs}");
                assert_eq!(kept, parsed, "normalize {normalize}, scs {scs}");
                assert!(parsed >= 2, "normalize {normalize}, scs {scs}");
            }
        }
    }

    #[test]
    fn operators_extend_the_lists() {
        let rules = Rules::new(&["app.pin".into()], &["my_decrypt".into()]);
        let got = redact("SET app.pin = 1234; SELECT my_decrypt(c, 'zz')", &rules, RecordOptions::default(), true);
        assert_eq!(got.text, "SET app.pin = '[redacted]'; SELECT my_decrypt(c, '[redacted]')");
    }

    #[test]
    fn backslashes_read_as_the_session_reads_them() {
        let sql = "ALTER ROLE r PASSWORD 'a\\' b'";
        // standard_conforming_strings off: \' escapes the quote.
        let got = redact(sql, &Rules::default(), RecordOptions::default(), false);
        assert_eq!(got.text, "ALTER ROLE r PASSWORD '[redacted]'");
    }

    #[test]
    fn parse_errors_do_not_echo_the_text() {
        assert_eq!(
            reason("statement does not parse: syntax error at or near \"'hunter2'\""),
            "statement does not parse: syntax error at or near [redacted]"
        );
        assert_eq!(reason("drop is not in its statements"), "drop is not in its statements");
    }

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        frame(tag, body)
    }

    #[test]
    fn the_client_stream_is_recorded_without_secrets_or_parameters() {
        let rules = Rules::default();
        let view = StreamView { rules: &rules, opts: RecordOptions::default(), profile: None, scs: true };
        let mut stream = msg(b'Q', b"ALTER ROLE r PASSWORD 'pw1'\0");
        stream.extend(msg(b'P', b"s1\0SELECT pgp_sym_decrypt(c, 'pw2') FROM t WHERE id = $1\0\0\0"));
        let mut bind = b"\0s1\0\0\0\0\x01".to_vec();
        bind.extend(&4i32.to_be_bytes());
        bind.extend(b"pw3!");
        bind.extend(b"\0\0");
        stream.extend(msg(b'B', &bind));
        stream.extend(msg(b'd', b"1,card 4111111111111111,pw4\n"));
        stream.extend(msg(b'S', b""));
        let rec = client_bytes(&stream, &view);
        let text = String::from_utf8_lossy(&rec);
        for s in ["pw1", "pw2", "pw3", "pw4", "4111"] {
            assert!(!text.contains(s), "{s} recorded: {text:?}");
        }
        assert!(text.contains("[redacted]") && text.contains("COPY data not recorded: 28 bytes"), "{text:?}");
        // Framing stays valid: every message header adds up.
        let mut at = 0;
        let mut tags = Vec::new();
        while at < rec.len() {
            let (tag, len) = header(&rec[at..]).unwrap();
            tags.push(tag);
            at += len;
        }
        assert_eq!(tags, b"QPBdS");
        // Nothing to change: the same bytes, borrowed.
        let clean = msg(b'Q', b"SELECT 1\0");
        assert!(matches!(client_bytes(&clean, &view), Cow::Borrowed(_)));
        // A rule that records parameters gets them, masked by its profile.
        let spec = crate::mask::ProfileSpec {
            name: "p".into(),
            detectors: vec![(crate::mask::Detector::Card, crate::mask::Style::Partial)],
            ..crate::mask::ProfileSpec::default()
        };
        let profile = Profile::compile(&spec).unwrap();
        let view = StreamView {
            rules: &rules,
            opts: RecordOptions { normalize: false, parameters: true },
            profile: Some(&profile),
            scs: true,
        };
        let rec = client_bytes(&stream, &view);
        let text = String::from_utf8_lossy(&rec);
        assert!(
            text.contains("pw3!") && text.contains("card ****1111") && !text.contains("4111111111111111"),
            "{text:?}"
        );
    }
}
