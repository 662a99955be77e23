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
    /// Lowercase fragments one of which every text with a secret contains.
    prefilter: Vec<String>,
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
        prefilter.extend(["connection".to_owned(), "set_config".to_owned()]);
        Self { settings, functions, prefilter }
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
        let lower = text.to_ascii_lowercase();
        self.prefilter.iter().any(|f| lower.contains(f.as_str()))
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
pub fn redact(text: &str, rules: &Rules, opts: RecordOptions, scs: bool) -> Redacted {
    let unchanged = || Redacted { text: text.to_owned(), secrets: 0, normalized: 0 };
    if !opts.normalize && !rules.might_hold_secret(text) {
        return unchanged();
    }
    // Parsing (and the JSON view of the tree below) costs up to ~5 KB per
    // token, here on the session's task: a text over the inline parse bound
    // (or one refused for its size, which was never parsed) is redacted
    // lexically instead, every literal and comment (sql/budget.rs).
    if super::shape::measure(text, scs).tokens > super::budget::LARGE_TOKENS {
        return unparsed(text, scs);
    }
    let mut parser_options = pg_query::ParserOptions::DEFAULT;
    if !scs {
        parser_options |= pg_query::ParserOptions::DISABLE_STANDARD_CONFORMING_STRINGS;
    }
    let Ok(parsed) = pg_query::parse(text, parser_options) else {
        return unparsed(text, scs);
    };
    let mut spans: Vec<(usize, usize, Why)> = Vec::new();
    let mut max_param = 0i64;
    for raw in &parsed.protobuf.stmts {
        let start = usize::try_from(raw.stmt_location).unwrap_or(0);
        let end = match usize::try_from(raw.stmt_len) {
            Ok(0) | Err(_) => text.len(),
            Ok(n) => start.saturating_add(n).min(text.len()),
        };
        let Ok(tree) = serde_json::to_value(raw) else {
            // Cannot look inside: keep nothing of it.
            spans.push((start, end, Why::Secret));
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
    apply(text, spans, max_param)
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
    spans: &'a mut Vec<(usize, usize, Why)>,
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
        self.spans.push((at, end, why));
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
                        self.spans.push((at, self.stmt_end, Why::Secret));
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
            // set_config('app.token', 'value', false): the value is secret when the name is.
            let setting = args.and_then(|a| a.first()).map(|first| {
                let mut s = Vec::new();
                strings(first, &mut s);
                s.concat()
            });
            let s = secret || setting.is_some_and(|n| self.rules.secret_name(&n));
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
