//! Column rules: glob patterns over `column` or `table.column`.
//!
//! Semantics (ASCII case-insensitive; `*` any run of characters including
//! dots, `?` exactly one character):
//! - a pattern without a dot (`email`, `*_token`) matches the column name in
//!   any table, including when the table is unknown;
//! - a pattern with a dot is split at its last dot into a table part and a
//!   column part (`customers.phone`, `public.customers.phone`, `*.ssn`). The
//!   table part is matched against the table the adapter resolved: when both
//!   are schema-qualified (or both bare) they are compared whole; when only
//!   one side is schema-qualified, the bare table names are compared, so a
//!   rule errs on the side of masking. A table part made only of `*` matches
//!   even when the table is unknown (computed columns): `*.ssn` masks every
//!   column named `ssn`. Any other table part never matches an unknown table.

/// A compiled column rule's pattern.
#[derive(Debug, Clone)]
pub(crate) struct ColumnPattern {
    table: Option<TablePattern>,
    column: Vec<u8>,
}

#[derive(Debug, Clone)]
struct TablePattern {
    /// Lowercased pattern for the table part, possibly schema-qualified.
    pat: Vec<u8>,
    /// Only `*`: matches any table, known or not.
    any: bool,
    /// The pattern names a schema (`schema.table`).
    qualified: bool,
}

/// Why a column pattern was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PatternProblem {
    Empty,
    EmptyPart,
}

impl PatternProblem {
    pub fn describe(self) -> &'static str {
        match self {
            PatternProblem::Empty => "the pattern is empty",
            PatternProblem::EmptyPart => "a table or column part is empty (leading, trailing or doubled dot)",
        }
    }
}

impl ColumnPattern {
    pub fn parse(pattern: &str) -> Result<Self, PatternProblem> {
        let pattern = pattern.trim().to_ascii_lowercase();
        if pattern.is_empty() {
            return Err(PatternProblem::Empty);
        }
        if pattern.split('.').any(str::is_empty) {
            return Err(PatternProblem::EmptyPart);
        }
        match pattern.rsplit_once('.') {
            None => Ok(Self { table: None, column: pattern.into_bytes() }),
            Some((table, column)) => Ok(Self {
                table: Some(TablePattern {
                    any: table.bytes().all(|b| b == b'*'),
                    qualified: table.contains('.'),
                    pat: table.as_bytes().to_vec(),
                }),
                column: column.as_bytes().to_vec(),
            }),
        }
    }

    pub fn matches(&self, table: Option<&str>, column: &str) -> bool {
        glob(&self.column, column.as_bytes()) && self.applies_to_table(table)
    }

    /// Whether the rule's table part admits `table` (any column).
    pub fn applies_to_table(&self, table: Option<&str>) -> bool {
        let Some(tp) = &self.table else { return true };
        if tp.any {
            return true;
        }
        let Some(table) = table else { return false };
        let t_qualified = table.contains('.');
        if tp.qualified == t_qualified {
            return glob(&tp.pat, table.as_bytes());
        }
        glob(bare(&tp.pat), bare(table.as_bytes()))
    }
}

impl std::fmt::Display for ColumnPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(t) = &self.table {
            write!(f, "{}.", String::from_utf8_lossy(&t.pat))?;
        }
        f.write_str(&String::from_utf8_lossy(&self.column))
    }
}

/// The table name without its schema.
fn bare(name: &[u8]) -> &[u8] {
    name.rsplit(|&b| b == b'.').next().unwrap_or_default()
}

/// Number of bytes of the UTF-8 character at `t[i]` (1 for stray bytes).
fn char_len(t: &[u8], i: usize) -> usize {
    1 + t.get(i + 1..).map_or(0, |rest| rest.iter().take(3).take_while(|&&b| b & 0xC0 == 0x80).count())
}

/// Glob match of a lowercased pattern against `text`, ASCII case-insensitively.
/// Iterative with one backtrack point: linear in practice, never exponential.
pub(crate) fn glob(pat: &[u8], text: &[u8]) -> bool {
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    loop {
        let t = text.get(ti).copied();
        match pat.get(pi) {
            Some(b'*') => {
                star = Some((pi, ti));
                pi += 1;
                continue;
            }
            Some(b'?') if t.is_some_and(|b| b & 0xC0 != 0x80) => {
                pi += 1;
                ti += char_len(text, ti);
                continue;
            }
            Some(&c) if c != b'?' && t.is_some_and(|b| b.to_ascii_lowercase() == c) => {
                pi += 1;
                ti += 1;
                continue;
            }
            None if t.is_none() => return true,
            _ => {}
        }
        match star {
            Some((sp, st)) if st < text.len() => {
                star = Some((sp, st + 1));
                pi = sp + 1;
                ti = st + 1;
            }
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, table: Option<&str>, column: &str) -> bool {
        ColumnPattern::parse(pattern).unwrap().matches(table, column)
    }

    #[test]
    fn globs() {
        assert!(glob(b"email", b"EMAIL"));
        assert!(glob(b"*_token", b"api_token"));
        assert!(glob(b"*_token", b"_token"));
        assert!(!glob(b"*_token", b"api_tokens"));
        assert!(glob(b"*", b""));
        assert!(glob(b"a*b*c", b"aXXbYYbZc"));
        assert!(!glob(b"a*b*c", b"aXXbYYbZ"));
        assert!(glob(b"ph?ne", b"phone"));
        assert!(glob(b"ph?ne", "phöne".as_bytes()));
        assert!(!glob(b"ph?ne", b"phne"));
        assert!(!glob(b"ph?ne", b"phoone"));
        assert!(glob("naïve*".as_bytes(), "NAïVE_col".as_bytes()));
        assert!(!glob(b"", b"x"));
        assert!(glob(b"", b""));
        // Pathological patterns stay fast.
        let text = "a".repeat(10_000);
        assert!(!glob(b"*a*a*a*a*a*a*b", text.as_bytes()));
    }

    #[test]
    fn bare_column_patterns_match_any_table() {
        assert!(m("email", None, "email"));
        assert!(m("email", Some("public.customers"), "Email"));
        assert!(!m("email", Some("customers"), "emails"));
        assert!(m("*_token", Some("sessions"), "refresh_token"));
    }

    #[test]
    fn table_patterns() {
        assert!(m("customers.phone", Some("customers"), "phone"));
        assert!(m("customers.phone", Some("public.customers"), "phone"));
        assert!(m("CUSTOMERS.PHONE", Some("Public.Customers"), "Phone"));
        assert!(!m("customers.phone", Some("orders"), "phone"));
        assert!(!m("customers.phone", None, "phone"));
        assert!(!m("customers.phone", Some("customers"), "email"));
        assert!(m("public.customers.phone", Some("public.customers"), "phone"));
        assert!(m("public.customers.phone", Some("customers"), "phone"));
        assert!(!m("public.customers.phone", Some("archive.customers"), "phone"));
        assert!(m("*.customers.phone", Some("archive.customers"), "phone"));
        assert!(m("cust*.phone", Some("customers_eu"), "phone"));
        assert!(m("*.ssn", None, "ssn"));
        assert!(m("*.ssn", Some("hr.people"), "SSN"));
        assert!(!m("*.ssn", Some("hr.people"), "ssn_hash"));
    }

    #[test]
    fn bad_patterns() {
        assert_eq!(ColumnPattern::parse("  ").unwrap_err(), PatternProblem::Empty);
        for p in [".ssn", "ssn.", "a..b", "."] {
            assert_eq!(ColumnPattern::parse(p).unwrap_err(), PatternProblem::EmptyPart, "{p}");
        }
    }
}
