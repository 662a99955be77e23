//! A statement's template: its text with the numeric constants taken out,
//! as PostgreSQL's own scanner (pg_query) finds them. Scripts, ORMs and
//! pgbench send the same statement again and again with other numbers in
//! it; the classification cache keys such texts by their template.
//!
//! Sharing a classification between two texts is sound only when it cannot
//! depend on what differs between them. Two texts with one template lex
//! into the same tokens, equal except for the values of integer and
//! floating-point constants (the kind of each is kept), so their parse
//! trees differ only in those values (and in byte offsets, which the
//! classification does not keep). The cache therefore shares a
//! classification only when making it read no constant's value
//! (`sql::constant_read`: `SET` values, folded `1 = 1` tautologies,
//! `ORDER BY 2` positions, COPY options), for a text of one statement.
//! String constants stay in the template: their values name things
//! (`'t'::regclass`, `set_config('search_path', …)`).
//!
//! Texts with a backslash are not templated: how `'…\'…'` lexes depends on
//! `standard_conforming_strings`, and the scanner reads with its own
//! setting, not the session's. Without a backslash both settings lex alike.

use std::rc::Rc;

use pg_query::protobuf::Token;

/// Longest text templated, in bytes.
const MAX_TEXT: usize = 4096;

/// A text's template and where its constants start and end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Template {
    /// The text with each numeric constant replaced by `\0i` or `\0f`
    /// (a query text holds no NUL byte, so no text reads like a template).
    pub key: String,
    /// Where each numeric constant starts and ends (exclusive), in order (at least one).
    pub consts: Vec<(usize, usize)>,
    /// The text's length.
    len: usize,
}

impl Template {
    /// Bytes before the first constant: the same in every text of this template.
    pub fn head(&self) -> usize {
        self.consts.first().map_or(self.len, |c| c.0)
    }

    /// Bytes after the last constant: the same in every text of this template.
    pub fn tail(&self) -> usize {
        self.len - self.consts.last().map_or(self.len, |c| c.1)
    }
}

/// The template of `sql`, if it has numeric constants and can have one.
///
/// A statement's text is templated up to three times on its way through a
/// masked session, on one thread: the message's text for its
/// classification, the statement's own text (without its `;`) for its
/// record, the message's text again for the recorded message. The last two
/// texts templated are kept per thread and their templates handed out again
/// for the same text (compared whole: a template is a function of the text
/// alone), shared rather than copied: a repeat allocates nothing.
pub(crate) fn of(sql: &str) -> Option<Rc<Template>> {
    if sql.len() > MAX_TEXT || sql.as_bytes().contains(&b'\\') || !sql.bytes().any(|b| b.is_ascii_digit()) {
        return None;
    }
    RECENT.with_borrow_mut(|recent| {
        if recent[1].0 == sql {
            recent.swap(0, 1);
        } else if recent[0].0 != sql {
            recent.swap(0, 1);
            let [(text, t), _] = recent;
            *t = scan(sql).map(Rc::new);
            text.clear();
            text.push_str(sql);
        }
        let [(_, t), _] = recent;
        t.clone()
    })
}

thread_local! {
    /// The last two texts templated on this thread, most recent first, and their templates.
    static RECENT: std::cell::RefCell<[(String, Option<Rc<Template>>); 2]> =
        const { std::cell::RefCell::new([(String::new(), None), (String::new(), None)]) };
}

fn scan(sql: &str) -> Option<Template> {
    // `scan_tokens` reads the C scanner's tokens without the protobuf round
    // trip `scan` makes (half the cost of a template). It must not see a
    // text without tokens (it would build a slice from a null pointer):
    // this one has a digit (see `of`), which is in a token (a comment is
    // one too) or makes the scan fail.
    let tokens = pg_query::scan_tokens(sql).ok()?;
    let mut key = String::with_capacity(sql.len() + 2);
    let mut at = 0usize;
    let mut consts = Vec::new();
    for t in &tokens {
        let mark = match Token::try_from(t.token) {
            Ok(Token::Iconst) => "\0i",
            Ok(Token::Fconst) => "\0f",
            _ => continue,
        };
        let start = usize::try_from(t.start).ok()?;
        let end = usize::try_from(t.end).ok()?;
        if start < at || end <= start {
            return None;
        }
        key.push_str(sql.get(at..start)?);
        key.push_str(mark);
        consts.push((start, end));
        at = end;
    }
    if consts.is_empty() {
        return None;
    }
    key.push_str(sql.get(at..)?);
    Some(Template { key, consts, len: sql.len() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kept_templates_are_those_of_their_own_texts() {
        // Three texts in turn (the classification, record, message pattern),
        // repeats, texts one another's prefix, and one that fails the scan:
        // each answer equals a fresh scan of that very text.
        let texts = [
            "SELECT a FROM t WHERE id = 1;",
            "SELECT a FROM t WHERE id = 1",
            "SELECT a FROM t WHERE id = 1;",
            "SELECT a FROM t WHERE id = 2;",
            "SELECT a FROM t WHERE id = 2",
            "SELECT a FROM t WHERE id = 12",
            "SELECT a FROM t WHERE id = 2",
            "SELECT 1 /* 2",
            "SELECT a FROM t WHERE id = 2;",
            "SELECT 1 /* 2",
            "SELECT 1.5",
            "SELECT 1.5",
        ];
        for round in 0..2 {
            for sql in texts {
                assert_eq!(of(sql).as_deref(), scan(sql).as_ref(), "round {round}: {sql:?}");
            }
            for sql in texts.iter().rev() {
                assert_eq!(of(sql).as_deref(), scan(sql).as_ref(), "round {round}, reversed: {sql:?}");
            }
        }
        assert_eq!(of("SELECT 1 /* 2"), None);
    }

    #[test]
    fn numbers_are_taken_out_and_everything_else_stays() {
        let a = of("SELECT abalance FROM pgbench_accounts WHERE aid = 12345;").unwrap();
        let b = of("SELECT abalance FROM pgbench_accounts WHERE aid = 7;").unwrap();
        assert_eq!(a.key, b.key);
        assert_eq!(a.key, "SELECT abalance FROM pgbench_accounts WHERE aid = \0i;");
        assert_eq!((a.head(), a.tail()), (50, 1));
        assert_eq!((a.consts.as_slice(), b.consts.as_slice()), (&[(50, 55)][..], &[(50, 51)][..]));
        // The kind of constant is kept: 1 is an integer, 1.5 and 3000000000 are numeric.
        assert_ne!(of("SELECT 1").unwrap().key, of("SELECT 1.5").unwrap().key);
        assert_ne!(of("SELECT 1").unwrap().key, of("SELECT 3000000000").unwrap().key);
        // Strings, identifiers, comments and spacing stay.
        assert_ne!(of("SELECT 1, 'a'").unwrap().key, of("SELECT 1, 'b'").unwrap().key);
        assert_ne!(of("SELECT 1 FROM t1").unwrap().key, of("SELECT 1 FROM t2").unwrap().key);
        assert_ne!(of("SELECT 1 /* 2 */").unwrap().key, of("SELECT 1 /* 3 */").unwrap().key);
        assert_ne!(of("SELECT  1").unwrap().key, of("SELECT 1").unwrap().key);
        // Digits inside strings, quoted names and dollar quotes are not constants.
        assert_eq!(of("SELECT 'x1', \"c2\", $$3$$"), None);
        // Nothing to take out, or a backslash: no template.
        assert_eq!(of("SELECT a FROM t"), None);
        assert_eq!(of("SELECT 1, E'\\\\'"), None);
        // A digit only in a comment is in a token of its own (scan_tokens is
        // never given a text without tokens: see `of`); an unterminated
        // comment or string fails the scan. Neither has a template.
        for sql in ["-- 1", "/* 1 */", "  -- 12\n", "/* 1", "'1", "SELECT 1 /* 2"] {
            assert_eq!(of(sql), None, "{sql:?}");
        }
    }
}
