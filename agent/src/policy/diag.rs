//! Diagnostics that point at a file, line and column, with a hint.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// One policy source file and its text, to turn byte offsets into lines.
#[derive(Debug, Clone)]
pub struct Source {
    pub path: PathBuf,
    pub text: String,
}

impl Source {
    /// 1-based line and column (in characters) of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = self.text.get(..offset).unwrap_or("");
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let col = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
        (line, col)
    }

    pub fn at(&self, span: Option<Range<usize>>) -> Location {
        let (line, col) = span.map_or((1, 1), |s| self.line_col(s.start));
        Location { file: self.path.clone(), line, col }
    }
}

/// Where something was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.col)
    }
}

/// An error in a policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub at: Location,
    pub message: String,
    pub hint: Option<String>,
}

impl Diagnostic {
    pub fn new(at: Location, message: impl Into<String>) -> Self {
        Self { at, message: message.into(), hint: None }
    }

    pub fn hint(mut self, hint: Option<String>) -> Self {
        self.hint = hint;
        self
    }

    /// A diagnostic about a file as a whole (unreadable, say).
    pub fn file(path: &Path, message: impl Into<String>) -> Self {
        Self::new(Location { file: path.to_owned(), line: 1, col: 1 }, message)
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.at, self.message)?;
        if let Some(h) = &self.hint {
            write!(f, " (hint: {h})")?;
        }
        Ok(())
    }
}

/// All diagnostics of a failed load, one per line.
#[derive(Debug, Clone, thiserror::Error)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

/// Longest word (in characters) a "did you mean" hint is looked for: the
/// comparison costs a table of one word's length times the other's, and
/// nothing that long is a typo of a key or a name.
pub const MAX_HINT_WORD: usize = 128;

/// The closest of `candidates` to `word`, if close enough to be a likely
/// typo. Words or candidates over [`MAX_HINT_WORD`] characters get no hint,
/// and candidates whose length alone puts them too far are not compared.
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let len = word.chars().count();
    if len > MAX_HINT_WORD {
        return None;
    }
    let limit = (len / 3).max(1);
    candidates
        .into_iter()
        .filter(|c| c.len() <= 4 * MAX_HINT_WORD && c.chars().count().abs_diff(len) <= limit)
        .map(|c| (edit_distance(word, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Edit distance counting a swap of two neighbours as one edit (typos like
/// `nmae`); three rows of the table at a time.
#[expect(clippy::indexing_slicing, reason = "indices are bounded by the loop ranges over rows of len(b)+1")]
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let w = b.len() + 1;
    // Rows i-2, i-1 and i of the (len(a)+1) x (len(b)+1) table.
    let mut older = vec![0usize; w];
    let mut prev: Vec<usize> = (0..w).collect();
    let mut row = vec![0usize; w];
    for i in 1..=a.len() {
        row[0] = i;
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (prev[j] + 1).min(row[j - 1] + 1).min(prev[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(older[j - 2] + 1);
            }
            row[j] = v;
        }
        std::mem::swap(&mut older, &mut prev);
        std::mem::swap(&mut prev, &mut row);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column() {
        let s = Source { path: "p.toml".into(), text: "a = 1\nbé = 2\n".into() };
        assert_eq!(s.line_col(0), (1, 1));
        assert_eq!(s.line_col(6), (2, 1));
        // "bé = " is 6 bytes but 5 characters.
        assert_eq!(s.line_col(12), (2, 6));
    }

    #[test]
    fn typo_hints() {
        assert_eq!(closest("protocl", ["name", "protocol", "address"]), Some("protocol"));
        assert_eq!(closest("zzz", ["name", "protocol"]), None);
        assert_eq!(closest("nmae", ["name", "who"]), Some("name"));
        assert_eq!(closest("analysts read ordres", ["analysts read orders", "dbas"]), Some("analysts read orders"));
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("ab", "ba"), 1);
    }

    #[test]
    fn hints_for_huge_words_cost_nothing() {
        // The issue's case: a 40,000-character name allocated a 12.8 GB table.
        let huge = "r".repeat(40_000);
        let near = format!("{huge}x");
        assert_eq!(closest(&near, [huge.as_str()]), None);
        assert_eq!(closest("name", [huge.as_str(), "nmae"]), Some("nmae"));
        let at_limit = "a".repeat(MAX_HINT_WORD);
        let typo = format!("{}b", "a".repeat(MAX_HINT_WORD - 1));
        assert_eq!(closest(&typo, [at_limit.as_str()]), Some(at_limit.as_str()));
    }
}
