//! A statement's kinds and tables as its audit record keeps them: typed
//! lists that are written as the one string each that records have always
//! held (`delete+delete_without_where`, `public.t,"a,b"`), in JSON bodies
//! and so in the `statements` view alike.
//!
//! Reading a list back gives exactly the text it was read from when written
//! again (the chain hashes bodies as stored, and the `statements` view reads
//! them as stored): a name this build does not know (a store
//! written by a newer agent) is kept as it is, not dropped or refused.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::fmt;

use super::{Kind, TableRef};

/// One name of a [`KindList`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KindName {
    Known(Kind),
    /// A name this build has no [`Kind`] for, as recorded.
    Unknown(Box<str>),
}

impl KindName {
    /// The name as recorded.
    pub fn name(&self) -> &str {
        match self {
            Self::Known(k) => k.name(),
            Self::Unknown(s) => s,
        }
    }

    /// The kind, when this build knows it.
    pub fn known(&self) -> Option<Kind> {
        match self {
            Self::Known(k) => Some(*k),
            Self::Unknown(_) => None,
        }
    }
}

/// A statement's kinds on record, in their order; written as their names
/// joined by `+` (`delete+delete_without_where`, `""` for none).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KindList(Vec<KindName>);

impl KindList {
    /// The kinds of a classified statement, in their (`Ord`) order.
    pub fn of(kinds: &BTreeSet<Kind>) -> Self {
        Self(kinds.iter().map(|&k| KindName::Known(k)).collect())
    }

    pub fn iter(&self) -> std::slice::Iter<'_, KindName> {
        self.0.iter()
    }

    pub fn first(&self) -> Option<&KindName> {
        self.0.first()
    }

    /// The list as recorded; borrowed unless it has two kinds or more.
    pub fn text(&self) -> Cow<'_, str> {
        self.whole().map_or_else(|| Cow::Owned(self.to_string()), Cow::Borrowed)
    }

    /// The recorded text when it is one name or none (no joining needed).
    fn whole(&self) -> Option<&str> {
        match self.0.as_slice() {
            [] => Some(""),
            [one] => Some(one.name()),
            _ => None,
        }
    }
}

/// Reads a recorded list; every string is one (see the module's doc).
impl From<&str> for KindList {
    fn from(s: &str) -> Self {
        if s.is_empty() {
            return Self::default();
        }
        Self(
            s.split('+')
                .map(|n| Kind::from_name(n).map_or_else(|| KindName::Unknown(n.into()), KindName::Known))
                .collect(),
        )
    }
}

impl fmt::Display for KindList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        joined(f, self.0.iter().map(KindName::name), '+')
    }
}

/// A statement's tables on record, each its [`TableRef::recorded`] name (a
/// name holding `,` `.` `"` or white space quoted); written joined by `,`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableList(Vec<String>);

impl TableList {
    pub fn of<'a>(tables: impl IntoIterator<Item = &'a TableRef>) -> Self {
        Self(tables.into_iter().map(TableRef::recorded).collect())
    }

    /// The names, as recorded (quotes included), blanks left out.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|t| t.trim()).filter(|t| !t.is_empty())
    }

    /// The list as recorded; borrowed unless it has two tables or more.
    pub fn text(&self) -> Cow<'_, str> {
        self.whole().map_or_else(|| Cow::Owned(self.to_string()), Cow::Borrowed)
    }

    /// The recorded text when it is one name or none (no joining needed).
    fn whole(&self) -> Option<&str> {
        match self.0.as_slice() {
            [] => Some(""),
            [one] => Some(one),
            _ => None,
        }
    }
}

/// Reads a recorded list, split at the commas outside double quotes; every
/// string is one (see the module's doc).
impl From<&str> for TableList {
    fn from(s: &str) -> Self {
        if s.is_empty() {
            return Self::default();
        }
        Self(split_table_list(s).map(str::to_owned).collect())
    }
}

impl fmt::Display for TableList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        joined(f, self.0.iter().map(String::as_str), ',')
    }
}

/// A recorded table list's parts, split at each comma outside double
/// quotes, nothing trimmed: joining them with `,` gives `list` back.
pub(super) fn split_table_list(list: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(list);
    std::iter::from_fn(move || {
        let s = rest?;
        let mut quoted = false;
        for (i, c) in s.char_indices() {
            match c {
                '"' => quoted = !quoted,
                ',' if !quoted => {
                    rest = s.get(i + 1..);
                    return s.get(..i);
                }
                _ => {}
            }
        }
        rest = None;
        Some(s)
    })
}

fn joined<'a>(f: &mut fmt::Formatter<'_>, parts: impl Iterator<Item = &'a str>, sep: char) -> fmt::Result {
    for (i, p) in parts.enumerate() {
        if i > 0 {
            fmt::Write::write_char(f, sep)?;
        }
        f.write_str(p)?;
    }
    Ok(())
}

/// Serde as the recorded string: one name (the common case) as a plain
/// string, a longer list without building the string first (`collect_str`
/// escapes as it goes: byte for byte what the string would give); read
/// from a borrowed `&str` when the input allows.
macro_rules! serde_as_text {
    ($ty:ty, $what:literal) => {
        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                match self.whole() {
                    Some(text) => s.serialize_str(text),
                    None => s.collect_str(self),
                }
            }
        }

        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct Text;
                impl serde::de::Visitor<'_> for Text {
                    type Value = $ty;

                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($what)
                    }

                    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<$ty, E> {
                        Ok(<$ty>::from(v))
                    }
                }
                d.deserialize_str(Text)
            }
        }
    };
}

serde_as_text!(KindList, "statement kinds joined by `+`");
serde_as_text!(TableList, "table names joined by `,`");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recorded_list_is_written_back_as_it_was_read() {
        // Lists this build writes, lists with names it does not know, and
        // ones no Gatehouse writes: each reads and writes back unchanged.
        for s in ["", "select", "delete+delete_without_where", "select+frobnicate", "+", "a++b", "Select", " select"] {
            let k = KindList::from(s);
            assert_eq!(k.to_string(), s);
            assert_eq!(k.text(), s);
            let json = serde_json::to_string(&k).unwrap();
            assert_eq!(json, serde_json::to_string(s).unwrap());
            assert_eq!(serde_json::from_str::<KindList>(&json).unwrap(), k);
        }
        for s in
            ["", "public.t", r#"scratch."x,public.salaries",t"#, "a, b,", ",", r#""unclosed,x"#, "t\u{e9}\n,\"\\\""]
        {
            let t = TableList::from(s);
            assert_eq!(t.to_string(), s);
            assert_eq!(t.text(), s);
            let json = serde_json::to_string(&t).unwrap();
            assert_eq!(json, serde_json::to_string(s).unwrap());
            assert_eq!(serde_json::from_str::<TableList>(&json).unwrap(), t);
        }
    }

    #[test]
    fn kinds_read_back_are_typed_and_unknown_ones_kept() {
        let k = KindList::from("delete+frobnicate");
        let names: Vec<(&str, Option<Kind>)> = k.iter().map(|n| (n.name(), n.known())).collect();
        assert_eq!(names, [("delete", Some(Kind::Delete)), ("frobnicate", None)]);
        // A policy's spelling is not a record's.
        assert_eq!(KindList::from("SELECT").first().and_then(KindName::known), None);
        assert_eq!(
            KindList::of(&[Kind::DeleteWithoutWhere, Kind::Delete].into()),
            KindList::from("delete+delete_without_where")
        );
    }

    #[test]
    fn table_names_are_the_recorded_ones() {
        let t = TableList::from(r#"scratch."x,public.salaries", orders,,"a""b""#);
        assert_eq!(t.names().collect::<Vec<_>>(), [r#"scratch."x,public.salaries""#, "orders", r#""a""b""#]);
    }
}
