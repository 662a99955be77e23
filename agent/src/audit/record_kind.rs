//! What a record of the chain is: its `kind` column, one name per
//! [`Event`](super::Event) variant and per record the writer makes itself.
//!
//! A store may hold kinds this build does not know (written by a newer
//! agent): readers parse the stored text ([`RecordKind::parse`]) and treat
//! `None` as "not mine", and the chain hashes the text exactly as stored
//! ([`chain::Record::kind`](super::chain::Record::kind) stays a string).

use std::fmt;
use std::str::FromStr;

macro_rules! record_kinds {
    ($($(#[doc = $doc:literal])* $variant:ident => $name:literal,)*) => {
        /// The kind of an audit record, as its `kind` column, the journal and
        /// exports spell it (`session_open`, `statement`, …).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum RecordKind {
            $($(#[doc = $doc])* $variant,)*
        }

        impl RecordKind {
            /// Every kind, in declaration order.
            pub const ALL: &'static [RecordKind] = &[$(RecordKind::$variant,)*];

            /// The name on record.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(RecordKind::$variant => $name,)*
                }
            }

            /// The kind named exactly `s` (as stored: case matters); `None`
            /// for a kind this build does not know.
            pub fn parse(s: &str) -> Option<RecordKind> {
                match s {
                    $($name => Some(RecordKind::$variant),)*
                    _ => None,
                }
            }
        }
    };
}

record_kinds! {
    /// A session was accepted or refused (`SessionOpen`).
    SessionOpen => "session_open",
    /// Gatehouse logged in to the session's backend (`BackendLogin`).
    BackendLogin => "backend_login",
    /// A statement as decided (`StatementStart`), possibly with its end folded in.
    Statement => "statement",
    /// A statement's outcome (`StatementEnd`).
    StatementEnd => "statement_end",
    /// Bytes of a stream that end no statement (`ChunkHeader` and data).
    Chunk => "chunk",
    /// A recording budget ran out, or records were lost (`Truncation`).
    Truncated => "truncated",
    /// A session's closing record (`SessionClose`).
    SessionClose => "session_close",
    /// An agent-level fact: start, stop, logins.
    Agent => "agent",
    /// A step of a request that waits for a human.
    Approval => "approval",
    /// An HTTP request and its response (`HttpExchange`).
    Http => "http",
    /// A WebSocket frame (`WsFrame`).
    WsFrame => "ws_frame",
    /// The keys of a trailed table one statement returned.
    Trail => "trail",
    /// An `[[alert]]` rule fired.
    TrailAlert => "trail_alert",
    /// An SSH channel event (`SshEvent`).
    Ssh => "ssh",
    /// A signature over the chain head, made by the writer.
    Checkpoint => "checkpoint",
    /// A signed record that removed other records' content.
    Redaction => "redaction",
    /// The old host key's signature over the new one.
    KeyRotation => "key_rotation",
}

impl fmt::Display for RecordKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl AsRef<str> for RecordKind {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

/// A kind name this build does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown record kind {0:?}")]
pub struct UnknownRecordKind(pub String);

impl FromStr for RecordKind {
    type Err = UnknownRecordKind;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s).ok_or_else(|| UnknownRecordKind(s.to_owned()))
    }
}

/// Bound as its name, for queries over the `kind` column.
impl rusqlite::ToSql for RecordKind {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        Ok(rusqlite::types::ToSqlOutput::Borrowed(rusqlite::types::ValueRef::Text(self.as_str().as_bytes())))
    }
}

impl serde::Serialize for RecordKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for RecordKind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Name;
        impl serde::de::Visitor<'_> for Name {
            type Value = RecordKind;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an audit record kind")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RecordKind, E> {
                RecordKind::parse(v).ok_or_else(|| E::invalid_value(serde::de::Unexpected::Str(v), &self))
            }
        }
        d.deserialize_str(Name)
    }
}

#[cfg(test)]
mod tests {
    use super::RecordKind;

    #[test]
    fn every_kind_round_trips_through_its_name_and_serde() {
        let mut names = std::collections::HashSet::new();
        for &k in RecordKind::ALL {
            assert_eq!(RecordKind::parse(k.as_str()), Some(k));
            assert_eq!(k.as_str().parse::<RecordKind>(), Ok(k));
            assert_eq!(k.to_string(), k.as_str());
            let json = serde_json::to_string(&k).unwrap();
            assert_eq!(json, format!("\"{}\"", k.as_str()));
            assert_eq!(serde_json::from_str::<RecordKind>(&json).unwrap(), k);
            assert!(names.insert(k.as_str()), "{k:?}'s name is taken twice");
        }
        assert_eq!(names.len(), 17);
    }

    #[test]
    fn a_kind_this_build_does_not_know_is_not_taken_for_another() {
        for s in ["", "Statement", "STATEMENT", "statement ", "statements", "session_opened", "tamper"] {
            assert_eq!(RecordKind::parse(s), None, "{s:?}");
            assert!(s.parse::<RecordKind>().is_err(), "{s:?}");
            assert!(serde_json::from_str::<RecordKind>(&format!("{s:?}")).is_err(), "{s:?}");
        }
    }

    #[test]
    fn the_names_are_the_ones_on_record() {
        // Stores written before this enum existed hold these names: renaming one orphans their records.
        let names: Vec<&str> = RecordKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "session_open",
                "backend_login",
                "statement",
                "statement_end",
                "chunk",
                "truncated",
                "session_close",
                "agent",
                "approval",
                "http",
                "ws_frame",
                "trail",
                "trail_alert",
                "ssh",
                "checkpoint",
                "redaction",
                "key_rotation",
            ]
        );
    }
}
