//! The shape of a query text — how many tokens and statements it holds —
//! from one pass over its bytes, before anything is parsed.
//!
//! What a parse costs is set by the number of tokens, not bytes: pg_query
//! hands the tree over as protobuf and decodes it into 608-byte nodes, up
//! to about 2 KB of agent memory per token (`SELECT a,a,a,…`), while a
//! 200 KB string literal is one token and costs almost nothing. So the
//! budget counts tokens, and it must count them as PostgreSQL's lexer
//! (`scan.l`) will: a text that this pass reads as one long string literal
//! but the server's lexer reads as 100,000 column names would walk around
//! the budget. Where literals, quoted identifiers, dollar quotes and
//! comments begin and end is therefore followed exactly, including the
//! parts that depend on `standard_conforming_strings` (backslashes in
//! plain `'…'` strings), `E'…'` escapes, `''` doubling (not in `B'…'`/`X'…'`),
//! string continuation across a newline, nested `/* */` comments, and
//! `$tag$` quotes. Tokens outside those are counted generously (every
//! operator character, every `.` of a number apart from a decimal point),
//! so the count is an upper bound of what the server's lexer produces, and
//! the statement count (segments between `;` with at least one token) is
//! an upper bound of the statements the grammar finds.
//!
//! Tested against pg_query's own scanner and parser (unit tests here and
//! the `sql_shape` fuzz target): every token the real lexer produces, and
//! every node location of the real parse tree, starts where this pass
//! starts a token.

/// Tokens and statements of a query text, as upper bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Shape {
    pub tokens: usize,
    pub statements: usize,
}

/// Measures `sql` as the server's lexer will read it.
/// `standard_conforming_strings` is the session's setting.
pub fn measure(sql: &str, standard_conforming_strings: bool) -> Shape {
    let mut shape = Shape::default();
    let mut in_statement = false;
    for token in Lexer::new(sql.as_bytes(), standard_conforming_strings) {
        shape.tokens += 1;
        if token.kind == TokenKind::Semicolon {
            in_statement = false;
        } else if !in_statement {
            in_statement = true;
            shape.statements += 1;
        }
    }
    shape
}

/// Where every token starts, for the differential tests and the fuzz
/// target that check this lexer against PostgreSQL's.
#[doc(hidden)]
pub fn token_starts(sql: &str, standard_conforming_strings: bool) -> Vec<usize> {
    Lexer::new(sql.as_bytes(), standard_conforming_strings).map(|t| t.start).collect()
}

/// Checks this lexer against PostgreSQL's own (pg_query's scanner and
/// parser) on one text: every real token, and every node location of the
/// real parse tree, must start where a token starts here, and the counts
/// must not fall short. For the unit tests and the `sql_shape` fuzz target.
#[doc(hidden)]
pub fn differential(sql: &str, standard_conforming_strings: bool) -> Result<(), String> {
    use pg_query::protobuf::Token as T;
    let mine: std::collections::HashSet<usize> = token_starts(sql, standard_conforming_strings).into_iter().collect();
    let shape = measure(sql, standard_conforming_strings);
    // pg_query's scanner reads with the thread's current setting, which a
    // parse sets, but a parse that fails with it off leaves off: a parse
    // that succeeds puts it back on. (`scan`, not `scan_tokens`: the latter
    // builds a slice from a null pointer when a text has no tokens.)
    let _ = pg_query::parse("SELECT", pg_query::ParserOptions::DEFAULT);
    if standard_conforming_strings && let Ok(real) = pg_query::scan(sql) {
        let mut count = 0;
        for t in &real.tokens {
            if t.token == T::SqlComment as i32 || t.token == T::CComment as i32 {
                continue;
            }
            count += 1;
            let start = usize::try_from(t.start).unwrap_or(usize::MAX);
            if !mine.contains(&start) {
                return Err(format!("{sql:?}: the scanner's token at {start} ({t:?}) does not start a token here"));
            }
        }
        if shape.tokens < count {
            return Err(format!("{sql:?}: {} tokens counted, the scanner found {count}", shape.tokens));
        }
    }
    let mut options = pg_query::ParserOptions::DEFAULT;
    if !standard_conforming_strings {
        options |= pg_query::ParserOptions::DISABLE_STANDARD_CONFORMING_STRINGS;
    }
    let Ok(parsed) = pg_query::parse(sql, options) else { return Ok(()) };
    if shape.statements < parsed.protobuf.stmts.len() {
        return Err(format!(
            "{sql:?} (scs {standard_conforming_strings}): {} statements counted, the parser found {}",
            shape.statements,
            parsed.protobuf.stmts.len()
        ));
    }
    let tree = serde_json::to_value(&parsed.protobuf).map_err(|e| e.to_string())?;
    let mut stack = vec![&tree];
    while let Some(v) = stack.pop() {
        match v {
            serde_json::Value::Object(map) => {
                if let Some(at) = map.get("location").and_then(serde_json::Value::as_u64) {
                    let at = usize::try_from(at).unwrap_or(usize::MAX);
                    if !mine.contains(&at) {
                        return Err(format!(
                            "{sql:?} (scs {standard_conforming_strings}): a node at {at} does not start a token here"
                        ));
                    }
                }
                stack.extend(map.values());
            }
            serde_json::Value::Array(items) => stack.extend(items),
            _ => {}
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TokenKind {
    Word,
    Number,
    Literal,
    Semicolon,
    Other,
}

#[derive(Debug, Clone, Copy)]
struct Token {
    start: usize,
    kind: TokenKind,
}

/// How a quoted string reads its body (`scan.l`'s states).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quoted {
    /// `'…'` with standard_conforming_strings on, `U&'…'`: `''` is a quote.
    Plain,
    /// `E'…'`, and `'…'` with standard_conforming_strings off: `\` escapes
    /// the next byte, `''` is a quote.
    Escaped,
    /// `B'…'`, `X'…'`: the first `'` ends it.
    Bits,
}

struct Lexer<'a> {
    b: &'a [u8],
    i: usize,
    scs: bool,
}

fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

fn is_newline(c: u8) -> bool {
    matches!(c, b'\n' | b'\r')
}

fn ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

fn ident_cont(c: u8) -> bool {
    ident_start(c) || c.is_ascii_digit() || c == b'$'
}

fn dolq_cont(c: u8) -> bool {
    ident_start(c) || c.is_ascii_digit()
}

impl<'a> Lexer<'a> {
    fn new(b: &'a [u8], scs: bool) -> Self {
        Self { b, i: 0, scs }
    }

    fn at(&self, i: usize) -> Option<u8> {
        self.b.get(i).copied()
    }

    /// Skips a `--` comment starting at `i`; returns where its newline (or the end) is.
    fn line_comment_end(&self, i: usize) -> usize {
        let rest = self.b.get(i..).unwrap_or_default();
        memchr::memchr2(b'\n', b'\r', rest).map_or(self.b.len(), |n| i + n)
    }

    /// Skips a `/* */` comment whose `/*` starts at `i` (nested, as
    /// PostgreSQL's are); unterminated runs to the end.
    fn block_comment_end(&self, i: usize) -> usize {
        let mut depth = 0usize;
        let mut j = i + 2;
        while let Some(c) = self.at(j) {
            match (c, self.at(j + 1)) {
                (b'/', Some(b'*')) => {
                    depth += 1;
                    j += 2;
                }
                (b'*', Some(b'/')) => {
                    if depth == 0 {
                        return j + 2;
                    }
                    depth -= 1;
                    j += 2;
                }
                _ => j += 1,
            }
        }
        self.b.len()
    }

    /// The end of a string literal whose body starts at `j`.
    fn quoted_end(&self, mut j: usize, how: Quoted) -> usize {
        loop {
            let rest = self.b.get(j..).unwrap_or_default();
            let next = match how {
                Quoted::Escaped => memchr::memchr2(b'\'', b'\\', rest),
                Quoted::Plain | Quoted::Bits => memchr::memchr(b'\'', rest),
            };
            let Some(n) = next else { return self.b.len() };
            j += n;
            if self.at(j) == Some(b'\\') {
                // `\` and whatever follows it (a quote included) belong to the string.
                j = (j + 2).min(self.b.len());
                continue;
            }
            // A quote: doubled (`''`) it is part of the string, except in B'' and X''.
            if how != Quoted::Bits && self.at(j + 1) == Some(b'\'') {
                j += 2;
                continue;
            }
            j += 1;
            match self.continuation(j) {
                Some(quote) => j = quote + 1,
                None => return j,
            }
        }
    }

    /// `scan.l`'s `{quotecontinue}`: after a closing quote, whitespace that
    /// holds a newline (and perhaps `--` comments) then another quote
    /// continues the same string. Returns that quote's position.
    fn continuation(&self, mut k: usize) -> Option<usize> {
        // {horiz_whitespace}*: spaces, tabs, form feeds, `--` comments.
        loop {
            match (self.at(k), self.at(k + 1)) {
                (Some(b' ' | b'\t' | 0x0c), _) => k += 1,
                (Some(b'-'), Some(b'-')) => k = self.line_comment_end(k),
                _ => break,
            }
        }
        // {newline}
        if !self.at(k).is_some_and(is_newline) {
            return None;
        }
        k += 1;
        // {special_whitespace}*: whitespace, or a `--` comment with its newline.
        loop {
            match (self.at(k), self.at(k + 1)) {
                (Some(c), _) if is_space(c) => k += 1,
                (Some(b'-'), Some(b'-')) => {
                    let end = self.line_comment_end(k);
                    if end >= self.b.len() {
                        return None;
                    }
                    k = end + 1;
                }
                _ => break,
            }
        }
        (self.at(k) == Some(b'\'')).then_some(k)
    }

    /// The end of a quoted identifier whose body starts at `j`.
    fn identifier_end(&self, mut j: usize) -> usize {
        loop {
            let rest = self.b.get(j..).unwrap_or_default();
            let Some(n) = memchr::memchr(b'"', rest) else { return self.b.len() };
            j += n + 1;
            if self.at(j) == Some(b'"') {
                j += 1;
            } else {
                return j;
            }
        }
    }

    /// A `$tag$` delimiter at `i`: its length.
    fn dollar_delimiter(&self, i: usize) -> Option<usize> {
        let mut j = i + 1;
        if self.at(j).is_some_and(ident_start) {
            while self.at(j).is_some_and(dolq_cont) {
                j += 1;
            }
        }
        (self.at(j) == Some(b'$')).then_some(j + 1 - i)
    }

    fn run_while(&self, mut j: usize, f: impl Fn(u8) -> bool) -> usize {
        while self.at(j).is_some_and(&f) {
            j += 1;
        }
        j
    }

    /// Digits from `j` (which holds one), with single `_` between them, as
    /// `scan.l`'s `{decinteger}`: where the run ends.
    fn digits_end(&self, mut j: usize, digit: impl Fn(u8) -> bool) -> usize {
        loop {
            match (self.at(j), self.at(j + 1)) {
                (Some(c), _) if digit(c) => j += 1,
                (Some(b'_'), Some(c)) if digit(c) => j += 2,
                _ => return j,
            }
        }
    }

    /// A number whose first digit is at `i` (`after_point`: just after a
    /// leading `.`): an integer (decimal, or `0x`/`0o`/`0b`), a decimal
    /// point and fraction, an exponent. Letters that follow are a token of
    /// their own here and an error to the server.
    fn number_end(&self, i: usize, after_point: bool) -> usize {
        let dec = |c: u8| c.is_ascii_digit();
        if !after_point && self.at(i) == Some(b'0') {
            let radix: Option<fn(u8) -> bool> = match self.at(i + 1) {
                Some(b'x' | b'X') => Some(|c: u8| c.is_ascii_hexdigit()),
                Some(b'o' | b'O') => Some(|c: u8| matches!(c, b'0'..=b'7')),
                Some(b'b' | b'B') => Some(|c: u8| matches!(c, b'0' | b'1')),
                _ => None,
            };
            if let Some(digit) = radix {
                let first = if self.at(i + 2) == Some(b'_') { i + 3 } else { i + 2 };
                if self.at(first).is_some_and(digit) {
                    return self.digits_end(first, digit);
                }
            }
        }
        let mut j = self.digits_end(i, dec);
        if !after_point && self.at(j) == Some(b'.') && self.at(j + 1) != Some(b'.') {
            j += 1;
            if self.at(j).is_some_and(dec) {
                j = self.digits_end(j, dec);
            }
        }
        if matches!(self.at(j), Some(b'e' | b'E')) {
            let k = if matches!(self.at(j + 1), Some(b'+' | b'-')) { j + 2 } else { j + 1 };
            if self.at(k).is_some_and(dec) {
                j = self.digits_end(k, dec);
            }
        }
        j
    }
}

impl Iterator for Lexer<'_> {
    type Item = Token;

    fn next(&mut self) -> Option<Token> {
        loop {
            let i = self.i;
            let c = self.at(i)?;
            let next = self.at(i + 1);
            let (end, kind) = match c {
                c if is_space(c) => {
                    self.i += 1;
                    continue;
                }
                b'-' if next == Some(b'-') => {
                    self.i = self.line_comment_end(i);
                    continue;
                }
                b'/' if next == Some(b'*') => {
                    self.i = self.block_comment_end(i);
                    continue;
                }
                b'\'' => {
                    let how = if self.scs { Quoted::Plain } else { Quoted::Escaped };
                    (self.quoted_end(i + 1, how), TokenKind::Literal)
                }
                b'"' => (self.identifier_end(i + 1), TokenKind::Word),
                b'e' | b'E' if next == Some(b'\'') => (self.quoted_end(i + 2, Quoted::Escaped), TokenKind::Literal),
                b'b' | b'B' | b'x' | b'X' if next == Some(b'\'') => {
                    (self.quoted_end(i + 2, Quoted::Bits), TokenKind::Literal)
                }
                b'u' | b'U' if next == Some(b'&') && self.at(i + 2) == Some(b'\'') => {
                    // With standard_conforming_strings off the server refuses U&'…' outright.
                    (self.quoted_end(i + 3, Quoted::Plain), TokenKind::Literal)
                }
                b'u' | b'U' if next == Some(b'&') && self.at(i + 2) == Some(b'"') => {
                    (self.identifier_end(i + 3), TokenKind::Word)
                }
                c if ident_start(c) => (self.run_while(i, ident_cont), TokenKind::Word),
                c if c.is_ascii_digit() => (self.number_end(i, false), TokenKind::Number),
                // `..` is one token: its second `.` does not start `.5`.
                b'.' if next == Some(b'.') => (i + 2, TokenKind::Other),
                b'.' if next.is_some_and(|c| c.is_ascii_digit()) => (self.number_end(i + 1, true), TokenKind::Number),
                // `$1`: a parameter, plain digits. What follows is a token of its
                // own (`$1_0` is `$1` then `_0`); a `$` after it may open a dollar
                // quote, so it is not swallowed.
                b'$' if next.is_some_and(|c| c.is_ascii_digit()) => {
                    (self.run_while(i + 1, |c| c.is_ascii_digit()), TokenKind::Word)
                }
                b'$' => match self.dollar_delimiter(i) {
                    Some(len) => {
                        let tag = self.b.get(i..i + len).unwrap_or_default();
                        let body = i + len;
                        let rest = self.b.get(body..).unwrap_or_default();
                        let end = memchr::memmem::find(rest, tag).map_or(self.b.len(), |n| body + n + len);
                        (end, TokenKind::Literal)
                    }
                    None => (i + 1, TokenKind::Other),
                },
                b';' => (i + 1, TokenKind::Semicolon),
                // Operators and punctuation: one token per byte, an upper bound.
                _ => (i + 1, TokenKind::Other),
            };
            self.i = end.max(i + 1);
            return Some(Token { start: i, kind });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(sql: &str) -> usize {
        measure(sql, true).tokens
    }

    #[test]
    fn counts_tokens_and_statements() {
        assert_eq!(measure("", true), Shape { tokens: 0, statements: 0 });
        assert_eq!(measure("  -- nothing\n /* at all */ ", true), Shape { tokens: 0, statements: 0 });
        assert_eq!(measure("SELECT 1", true), Shape { tokens: 2, statements: 1 });
        assert_eq!(measure("SELECT 1;", true), Shape { tokens: 3, statements: 1 });
        assert_eq!(measure(";;SELECT 1;; SELECT 2;", true).statements, 2);
        assert_eq!(measure(&"SELECT 1;".repeat(1000), true).statements, 1000);
        assert_eq!(tokens("SELECT a, b FROM t WHERE x >= 1.5e-3"), 11);
        assert_eq!(tokens("SELECT 'it''s', E'a\\'b', $$x$$, $q$ $$ $q$, \"Col\"\"x\", B'01', X'FF', U&'\\0041'"), 16);
    }

    #[test]
    fn literals_and_comments_hide_what_is_inside_them() {
        let hidden = ";SELECT a, b, c FROM t; DROP TABLE t;";
        for sql in [
            format!("SELECT '{hidden}'"),
            format!("SELECT \"{hidden}\""),
            format!("SELECT $$ {hidden} $$"),
            format!("SELECT $tag$ $x$ {hidden} $tag$"),
            format!("SELECT 1 -- {hidden}"),
            format!("SELECT 1 /* {hidden} /* nested */ {hidden} */"),
        ] {
            assert_eq!(measure(&sql, true).statements, 1, "{sql}");
            assert!(tokens(&sql) <= 3, "{sql}: {}", tokens(&sql));
        }
    }

    #[test]
    fn backslashes_are_read_as_the_session_reads_them() {
        // standard_conforming_strings on: `\` is an ordinary character, the
        // string ends at the second quote and the rest is three statements.
        let sql = r"SELECT 'a\'; SELECT 1; SELECT 2; --'";
        assert_eq!(measure(sql, true).statements, 3);
        // Off: `\'` is an escaped quote and everything is one string.
        assert_eq!(measure(sql, false).statements, 1);
        // E'' strings escape either way.
        assert_eq!(measure(r"SELECT E'a\'; SELECT 1; --'", true).statements, 1);
        // And the other way round: hidden from an "on" reading, visible to "off".
        let sql = r"SELECT '\' '; SELECT 1; SELECT 2";
        assert_eq!(measure(sql, true).statements, 1);
        assert_eq!(measure(sql, false).statements, 3);
    }

    #[test]
    fn string_continuation_keeps_the_first_part_rules() {
        // An E'' string continued on the next line is still an E'' string.
        let sql = "SELECT E'a'\n'\\'; SELECT 1; --'";
        assert_eq!(measure(sql, true).statements, 1, "continued E-string");
        // Without a newline it is not a continuation.
        assert_eq!(measure("SELECT E'a' '\\'; SELECT 1; --'", true).statements, 2);
        // A comment before the newline and between continuation lines.
        assert_eq!(measure("SELECT E'a' -- c\n -- d\n'\\'; SELECT 1; --'", true).statements, 1);
        // B'' does not double quotes, even when continued.
        assert_eq!(measure("SELECT B'1'\n'1''; SELECT 2", true).statements, 1);
        assert_eq!(measure("SELECT B'1'''; SELECT 2; --'", true).statements, 2);
    }

    #[test]
    fn identifiers_numbers_and_parameters_do_not_open_quotes() {
        // `$` continues an identifier, so `a$$` opens no dollar quote.
        assert_eq!(measure("SELECT a$$, 1; SELECT 2", true).statements, 2);
        assert_eq!(measure("SELECT $1, $2; SELECT 3", true).statements, 2);
        // A letter before a quote is an identifier unless it is the whole prefix.
        assert_eq!(measure("SELECT xe'a\\'; SELECT 1; --'", true).statements, 2);
        assert_eq!(measure("SELECT n'a''b'; SELECT 1", true).statements, 2);
        assert_eq!(tokens("SELECT 1..2"), 4);
    }

    /// The differential test: every token pg_query's own scanner produces
    /// starts where this lexer starts one, and the count never falls short.
    #[test]
    fn agrees_with_the_real_scanner() {
        let corpus = [
            "SELECT a, b FROM t WHERE x >= 1.5e-3 AND y <> 'it''s' OR z::int = $1",
            "SELECT E'a\\'b' || U&'\\0041' UESCAPE '!' || B'0101' || X'ff' || N'nat'",
            "SELECT $f$ body with 'quotes' and $g$ $f$, $$x$$, a$b, \"Quo\"\"ted\"",
            "SELECT 'a'\n'b' -- comment\n, 'c' /* x /* y */ z */ FROM t;;; SELECT 0x1F, 1_000, .5, 1., 1e10",
            "CREATE FUNCTION f() RETURNS int BEGIN ATOMIC SELECT 1; SELECT 2; END",
            "SELECT a[1:2], b->>'k', c #>> '{a}', d @> e, f !~~* g, -1, +2, 3--x\n, 4/**/5",
            "SELECT '\\' ; SELECT 1; -- '",
            "COPY t FROM STDIN WITH (FORMAT csv); NOTIFY ch, 'payload'",
            "SELECT 1 ::int, x:=1, y=>2, 1..2, E'\\\\', E'\\x41\\101\\u0041'",
        ];
        for sql in corpus {
            assert_agrees(sql);
        }
    }

    fn assert_agrees(sql: &str) {
        for scs in [true, false] {
            if let Err(e) = differential(sql, scs) {
                panic!("{e}");
            }
        }
    }

    #[test]
    fn a_parameter_does_not_swallow_a_dollar_quote() {
        let sql = "SELECT $1$$ x $$, a, a, a; SELECT 2";
        assert_eq!(measure(sql, true).statements, 2);
        assert!(tokens(sql) >= 11, "{}", tokens(sql));
        assert_agrees(sql);
    }

    /// Random texts built from the pieces that decide where literals and
    /// comments start and end, checked against PostgreSQL's lexer and
    /// parser with both settings of standard_conforming_strings.
    #[test]
    fn agrees_with_postgres_on_generated_texts() {
        let pieces: &[&str] = &[
            "SELECT ",
            "a",
            "1",
            ".5",
            "..",
            ",",
            ";",
            " ",
            "\n",
            "\r",
            "\t",
            "'",
            "''",
            "\\",
            "\\'",
            "E'",
            "e'",
            "B'",
            "X'",
            "N'",
            "U&'",
            "U&\"",
            "\"",
            "\"\"",
            "$$",
            "$a$",
            "$1",
            "$",
            "--",
            "/*",
            "*/",
            "-",
            "*",
            "/",
            "x",
            "::",
            "(",
            ")",
            "é",
            "UESCAPE '!'",
            "FROM t",
            "+",
            "<>",
            "e",
            "1e",
            "0x1F",
            "_",
            "\u{b}",
            "\u{c}",
            "&",
            "-- c\n",
            "\n'",
        ];
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = |n: usize| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            usize::try_from(x % u64::try_from(n).unwrap_or(1)).unwrap_or(0)
        };
        for _ in 0..4000 {
            let len = 1 + next(20);
            let sql: String = (0..len).map(|_| pieces.get(next(pieces.len())).copied().unwrap_or("")).collect();
            assert_agrees(&sql);
            // The same after a statement that parses, so the parser gets further.
            assert_agrees(&format!("SELECT 'a', \"b\", $$c$$ {sql}"));
        }
    }
}
