//! Client encodings Gatehouse cannot read the way the server does.
//!
//! In SJIS, BIG5, GBK, UHC, GB18030, JOHAB and SHIFT_JIS_2004 the second byte
//! of a multi-byte character can be `\` or `'`: the server would end a string
//! literal where a UTF-8 reading sees string contents, so a statement
//! classified as one harmless SELECT could run a second one. These are
//! client-only encodings in PostgreSQL; Gatehouse refuses them wherever they
//! can be set. Every other encoding keeps ASCII bytes ASCII, and a query
//! that is not valid UTF-8 is refused before it is classified.

/// PostgreSQL's spelling-insensitive form of an encoding name: lower case,
/// only ASCII letters and digits (`Shift-JIS` and `shift_jis` are `shiftjis`).
pub fn normalize(name: &str) -> String {
    name.chars().filter(char::is_ascii_alphanumeric).map(|c| c.to_ascii_lowercase()).collect()
}

/// Every name (and alias) PostgreSQL accepts for the unsafe encodings, normalized.
const UNSAFE: &[&str] = &[
    "sjis",
    "shiftjis",
    "mskanji",
    "win932",
    "windows932",
    "shiftjis2004",
    "big5",
    "win950",
    "windows950",
    "gbk",
    "win936",
    "windows936",
    "uhc",
    "win949",
    "windows949",
    "gb18030",
    "johab",
];

/// Whether the client encoding `name` (as a client or the server spells it)
/// is one whose multi-byte characters can hide a quote or a backslash.
pub fn is_unsafe_client_encoding(name: &str) -> bool {
    UNSAFE.contains(&normalize(name).as_str())
}

/// Whether `name` is UTF-8 (`UTF8`, `utf-8`, `Unicode`).
pub fn is_utf8(name: &str) -> bool {
    matches!(normalize(name).as_str(), "utf8" | "unicode")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_are_matched_as_postgresql_does() {
        for n in [
            "SJIS",
            "sjis",
            "Shift_JIS",
            "Shift-JIS",
            "S_JIS",
            "MSKANJI",
            "WIN932",
            "Windows932",
            "BIG5",
            "WIN950",
            "GBK",
            "windows936",
            "UHC",
            "WIN949",
            "GB18030",
            "JOHAB",
            "SHIFT_JIS_2004",
            "shiftjis2004",
        ] {
            assert!(is_unsafe_client_encoding(n), "{n}");
        }
        for n in ["UTF8", "utf-8", "LATIN1", "EUC_JP", "SQL_ASCII", "WIN1252", "cp932"] {
            assert!(!is_unsafe_client_encoding(n), "{n}");
        }
        assert!(is_utf8("utf-8") && is_utf8("UNICODE") && !is_utf8("LATIN1"));
    }
}
