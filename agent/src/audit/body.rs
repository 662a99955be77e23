//! The bodies of the two records every statement makes (its start, and its
//! end), written field by field instead of through serde's map machinery.
//!
//! Every value is still written by serde_json itself (strings escaped,
//! numbers formatted, the kind and table lists, the session id), so a body
//! is byte for byte what `serde_json::to_vec` gives for the same record; a
//! test holds the two together over every optional field and hostile
//! strings. Only the braces, keys and commas are spelled here: serde_json
//! escapes each key again and drives a state machine per field, which cost
//! about 3.8k instructions per statement start in the sessions and 3.4k per
//! end in the audit writer (callgrind, `bench pg --instructions`).

use super::{StatementEnd, StatementStart};

/// Appends `v` as serde_json writes it. Writing to a `Vec` cannot fail, and
/// every value here serialises.
fn value<T: serde::Serialize + ?Sized>(b: &mut Vec<u8>, v: &T) {
    let _ = serde_json::to_writer(&mut *b, v);
}

fn field<T: serde::Serialize + ?Sized>(b: &mut Vec<u8>, key: &[u8], v: &T) {
    b.extend_from_slice(key);
    value(b, v);
}

impl StatementStart {
    /// The body as `serde_json::to_vec(self)` writes it (field order and
    /// the `skip_serializing_if` rules of the struct's derive).
    pub(super) fn write_json(&self, b: &mut Vec<u8>) {
        // Every field named: one added to the struct does not compile here
        // until it is written (or, like the folded bytes, left out) on purpose.
        let Self {
            session,
            seq,
            started_us,
            text,
            kinds,
            tables,
            decision,
            rule,
            reason,
            redacted,
            up_offset,
            up: _,
            up_len,
            end,
        } = self;
        field(b, b"{\"session\":", session);
        field(b, b",\"seq\":", seq);
        field(b, b",\"started_us\":", started_us);
        field(b, b",\"text\":", text.as_str());
        field(b, b",\"kinds\":", kinds);
        field(b, b",\"tables\":", tables);
        field(b, b",\"decision\":", decision.as_str());
        field(b, b",\"rule\":", rule);
        field(b, b",\"reason\":", reason);
        if *redacted != 0 {
            field(b, b",\"redacted\":", redacted);
        }
        if let Some(o) = up_offset {
            field(b, b",\"up_offset\":", o);
        }
        if let Some(l) = up_len {
            field(b, b",\"up_len\":", l);
        }
        if let Some(end) = end {
            b.extend_from_slice(b",\"end\":");
            end.write_json(b);
        }
        b.push(b'}');
    }
}

impl StatementEnd {
    /// The body as `serde_json::to_vec(self)` writes it.
    pub(super) fn write_json(&self, b: &mut Vec<u8>) {
        // Every field named, as in `StatementStart::write_json`.
        let Self { session, seq, ended_us, rows, duration_us, error, masked, tags, down_offset, down: _ } = self;
        field(b, b"{\"session\":", session);
        field(b, b",\"seq\":", seq);
        field(b, b",\"ended_us\":", ended_us);
        field(b, b",\"rows\":", rows);
        field(b, b",\"duration_us\":", duration_us);
        field(b, b",\"error\":", error);
        field(b, b",\"masked\":", masked);
        if let Some(t) = tags {
            field(b, b",\"tags\":", t.as_str());
        }
        if let Some(o) = down_offset {
            field(b, b",\"down_offset\":", o);
        }
        b.push(b'}');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::Verdict;
    use crate::types::SessionId;

    fn ends() -> Vec<StatementEnd> {
        let base = StatementEnd {
            session: SessionId::new(),
            seq: 7,
            ended_us: -3,
            rows: None,
            duration_us: 0,
            error: None,
            masked: None,
            tags: None,
            down_offset: None,
            down: b"not in the body".to_vec(),
        };
        vec![
            base.clone(),
            StatementEnd {
                seq: u64::MAX,
                ended_us: i64::MAX,
                rows: Some(u64::MAX),
                duration_us: 12_345,
                error: Some("ERROR: \"quoted\" \\ back\nslash\t\u{1}\u{7f}\u{2028} é 😀".into()),
                masked: Some(r#"{"email":3}"#.into()),
                tags: Some("SELECT 1".into()),
                down_offset: Some(0),
                ..base.clone()
            },
            StatementEnd { rows: Some(0), tags: Some(String::new()), down_offset: Some(1 << 40), ..base },
        ]
    }

    fn starts() -> Vec<StatementStart> {
        let base = StatementStart {
            session: SessionId::new(),
            seq: 1,
            started_us: 1_796_626_597_075_626,
            text: "SELECT abalance FROM pgbench_accounts WHERE aid = 42;".into(),
            kinds: crate::sql::KindList::from("select"),
            tables: crate::sql::TableList::from("public.pgbench_accounts"),
            decision: Verdict::Allow,
            ..StatementStart::default()
        };
        let mut all = vec![
            base.clone(),
            StatementStart {
                text: String::new(),
                kinds: crate::sql::KindList::default(),
                tables: crate::sql::TableList::default(),
                decision: Verdict::Deny,
                ..base.clone()
            },
            StatementStart {
                seq: u64::MAX,
                started_us: i64::MIN,
                text: "select '\"\\\u{0}\u{1f}</script>' -- é 😀\r\n".into(),
                kinds: crate::sql::KindList::from("delete+delete_without_where+not_a_kind"),
                tables: crate::sql::TableList::from("a,\"b,\"\"c\".d,e"),
                decision: Verdict::Approval,
                rule: Some("rule \"one\"".into()),
                reason: Some("held: \\ \n".into()),
                redacted: 3,
                up_offset: Some(99),
                up_len: Some(5),
                up: b"not in the body".to_vec(),
                ..base.clone()
            },
        ];
        for end in ends() {
            all.push(StatementStart { end: Some(Box::new(end)), up_offset: Some(0), ..base.clone() });
        }
        all
    }

    #[test]
    fn bodies_are_byte_for_byte_what_serde_json_writes() {
        for s in starts() {
            let mut b = Vec::new();
            s.write_json(&mut b);
            assert_eq!(String::from_utf8_lossy(&b), String::from_utf8_lossy(&serde_json::to_vec(&s).unwrap()));
        }
        for e in ends() {
            let mut b = vec![b'x'];
            e.write_json(&mut b);
            assert_eq!(b.first(), Some(&b'x'), "appends to what the buffer holds");
            assert_eq!(
                String::from_utf8_lossy(b.get(1..).unwrap()),
                String::from_utf8_lossy(&serde_json::to_vec(&e).unwrap())
            );
        }
    }
}
