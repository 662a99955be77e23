//! Recording a MySQL session's two packet streams, after login: the
//! commands as forwarded to the server (client → backend) and the answers
//! as sent to the client (backend → client, after masking), within
//! `record_max_bytes` per statement and direction, as the PostgreSQL relay
//! records (`audit::StreamRecorder`; the budget starts afresh with each
//! statement).
//!
//! - A statement's command packet rides on its `statement` record (`up`,
//!   `up_offset`); the last bytes of its answer on its `statement_end`
//!   (`down`, `down_offset`), recorded before they are written. Earlier
//!   parts of a large answer (written every 64 KiB), the answers to
//!   commands that are no statement (`COM_PING`, `COM_STMT_RESET`), their
//!   commands, and Gatehouse's own ERR packets (refusals) are `chunk`s.
//! - Never recorded: the login exchange (the stream starts after it), a
//!   statement text's secrets (the same redaction as the statement record:
//!   [`super::recorded_text`]), the data of `COM_STMT_SEND_LONG_DATA`, and
//!   the parameter values of `COM_STMT_EXECUTE` unless the rule says
//!   `record_parameters = true` (as the PostgreSQL stream treats Bind
//!   parameters): a marker stands in their place. With it, the values are
//!   recorded as text after the execute's head (`[parameters: 1, 'abc',
//!   NULL]`), each through the rule's masking profile when it has one;
//!   values that cannot be read are not recorded (a marker says so).
//! - Refused commands never reach the server and are not in the
//!   client → backend stream; the refusal the client receives is in the
//!   other.

use std::borrow::Cow;

use super::{Ctx, binary, payload_of, seq_of, wire};
use crate::audit::{Audit, Direction, Event, StatementEnd, StatementStart, StreamRecorder};
use crate::mask::{Counts, MaskOutput, Profile};

/// Bytes of a `COM_STMT_EXECUTE` kept before its parameters: command,
/// statement id, flags, iteration count.
const EXECUTE_HEAD: usize = 10;
/// Bytes of a `COM_STMT_SEND_LONG_DATA` kept before its data: command,
/// statement id, parameter number.
const LONG_DATA_HEAD: usize = 7;

/// One session's recording of both directions.
#[derive(Debug)]
pub(super) struct Recording {
    rec: StreamRecorder,
    audit: Audit,
    /// Offsets in the recorded streams (bytes recorded or skipped so far).
    up: u64,
    down: u64,
}

impl Recording {
    pub(super) fn new(ctx: &Ctx) -> Self {
        Self {
            rec: StreamRecorder::new(ctx.id, ctx.svc.settings.record_max_bytes, "statement"),
            audit: crate::audit::Audit::clone(&ctx.svc.audit),
            up: 0,
            down: 0,
        }
    }

    /// A recording into `audit` for session `id`, with no session context.
    #[cfg(test)]
    pub(super) fn for_test(audit: Audit, id: crate::types::SessionId) -> Self {
        Self { rec: StreamRecorder::new(id, 1 << 20, "statement"), audit, up: 0, down: 0 }
    }

    /// A new statement: both directions get a fresh budget.
    pub(super) fn reset(&self) {
        self.rec.reset();
    }

    /// Folds the recorded form of the command `bytes` onto the statement
    /// record `ev` (committed with it); returns the truncation record to
    /// write after it, if the cap was hit.
    pub(super) fn fold_up(&mut self, ev: &mut StatementStart, bytes: &[u8]) -> Option<Event> {
        let (data, cut) = self.rec.fold(Direction::Up, bytes, Some(ev.seq));
        ev.up_offset = Some(self.up);
        ev.up = data;
        self.up += bytes.len() as u64;
        cut
    }

    /// Records a command that rides on no statement record.
    pub(super) async fn up_chunk(&mut self, bytes: &[u8], statement: Option<u64>) {
        self.rec.chunk(&self.audit, Direction::Up, self.up, bytes, statement).await;
        self.up += bytes.len() as u64;
    }

    /// Records bytes about to be written to the client that end no statement.
    pub(super) async fn down_chunk(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        self.rec.chunk(&self.audit, Direction::Down, self.down, bytes, None).await;
        self.down += bytes.len() as u64;
    }

    /// Records a statement's end with the last bytes of its answer (about
    /// to be written to the client) folded in.
    pub(super) async fn end(&mut self, mut end: StatementEnd, bytes: &[u8]) {
        if !bytes.is_empty() {
            let (data, cut) = self.rec.fold(Direction::Down, bytes, Some(end.seq));
            end.down_offset = Some(self.down);
            end.down = data;
            self.down += bytes.len() as u64;
            // Before the end: a replay shows the answer it ends as cut.
            if let Some(cut) = cut {
                let _ = self.audit.record(cut);
            }
        }
        self.rec.deliver(&self.audit, Direction::Down, Event::StatementEnd(Box::new(end))).await;
    }

    /// Puts any loss not yet on record on record (the session ends).
    pub(super) fn finish(&self) {
        self.rec.finish(&self.audit);
    }
}

/// What reading a `COM_STMT_EXECUTE`'s parameters needs: how many the
/// statement has, and the types bound by an earlier execute (used when
/// this one sends none).
#[derive(Debug, Clone, Copy)]
pub(super) struct ExecuteParams<'a> {
    pub count: u16,
    pub types: Option<&'a [u8]>,
}

/// A client command packet (header included) as it is recorded: statement
/// texts redacted as their statement records are, long data and (unless
/// the rule records them) parameter values replaced with a marker.
/// Unchanged packets come back borrowed.
pub(super) fn client_packet<'a>(ctx: &Ctx, pkt: &'a [u8], params: Option<ExecuteParams<'_>>) -> Cow<'a, [u8]> {
    let redact = |text: &str| super::recorded_text(ctx, text).0;
    let params = params.filter(|_| ctx.record.parameters).map(|p| (p, ctx.mask.as_deref()));
    command_as_recorded(pkt, &redact, params)
}

/// The types a `COM_STMT_EXECUTE` payload binds, when it sends them.
pub(super) fn bound_types(payload: &[u8], count: u16) -> Option<&[u8]> {
    binary::bound_types(payload.get(EXECUTE_HEAD..)?, count)
}

/// An execute's parameter values as recorded text (`[parameters: …]`),
/// each through `profile`; `None` when they cannot be read.
fn parameters_text(payload: &[u8], x: ExecuteParams<'_>, profile: Option<&Profile>) -> Option<String> {
    Some(format!("[parameters: {}]", parameter_values(payload, x, profile)?.join(", ")))
}

/// A held execute's parameter values as its approvers see them (`?1 = 3`,
/// `?2 = 'text'`); `None` when they cannot be read.
pub(super) fn parameters_shown(payload: &[u8], x: ExecuteParams<'_>) -> Option<Vec<String>> {
    let values = parameter_values(payload, x, None)?;
    Some(values.into_iter().enumerate().map(|(i, v)| format!("?{} = {v}", i + 1)).collect())
}

/// An execute's parameter values as text, each through `profile`.
fn parameter_values(payload: &[u8], x: ExecuteParams<'_>, profile: Option<&Profile>) -> Option<Vec<String>> {
    let values = binary::params(payload.get(EXECUTE_HEAD..)?, x.count, x.types)?;
    let mut shown = Vec::with_capacity(values.len());
    for p in values {
        let Some(p) = p else {
            shown.push("NULL".to_owned());
            continue;
        };
        let (bytes, quoted) = match binary::decode(p.kind, p.unsigned, p.value)? {
            binary::Decoded::Text(t) => (t.into_bytes(), false),
            binary::Decoded::Bytes(b) => (b.to_vec(), true),
        };
        let mut v = Vec::with_capacity(bytes.len());
        match profile.map(|p| p.scan(&bytes, &mut v, &mut Counts::default())) {
            None | Some(MaskOutput::Unchanged) => v = bytes,
            Some(MaskOutput::Written) => {}
            Some(MaskOutput::Null) => v = b"****".to_vec(),
        }
        let v = String::from_utf8_lossy(&v).into_owned();
        shown.push(if quoted { format!("'{}'", v.replace('\'', "''")) } else { v });
    }
    Some(shown)
}

/// [`client_packet`] with the text redaction passed in (sans-IO,
/// testable); `params`: record an execute's parameters (the rule's
/// `record_parameters`), through this masking profile.
pub(super) fn command_as_recorded<'a>(
    pkt: &'a [u8],
    redact: &dyn Fn(&str) -> String,
    params: Option<(ExecuteParams<'_>, Option<&Profile>)>,
) -> Cow<'a, [u8]> {
    let seq = seq_of(pkt);
    let p = payload_of(pkt);
    let Some(&command) = p.first() else { return Cow::Borrowed(pkt) };
    let rest = p.get(1..).unwrap_or_default();
    let reframe = |head: &[u8], tail: &[u8]| {
        let mut payload = head.to_vec();
        payload.extend_from_slice(tail);
        payload.truncate(wire::MAX_PAYLOAD - 1);
        Cow::Owned(wire::frame(seq, &payload))
    };
    match command {
        wire::COM_QUERY | wire::COM_STMT_PREPARE => {
            let text = String::from_utf8_lossy(rest);
            let shown = redact(&text);
            if shown.as_bytes() == rest { Cow::Borrowed(pkt) } else { reframe(&[command], shown.as_bytes()) }
        }
        wire::COM_STMT_EXECUTE if p.len() > EXECUTE_HEAD => {
            let bytes = p.len() - EXECUTE_HEAD;
            let marker = match params {
                Some((x, profile)) => parameters_text(p, x, profile)
                    .unwrap_or_else(|| format!("[parameters not recorded: {bytes} bytes that cannot be read]")),
                None => format!("[parameters not recorded: {bytes} bytes]"),
            };
            reframe(p.get(..EXECUTE_HEAD).unwrap_or_default(), marker.as_bytes())
        }
        wire::COM_STMT_SEND_LONG_DATA => {
            let head = p.get(..LONG_DATA_HEAD.min(p.len())).unwrap_or_default();
            let marker = format!("[data not recorded: {} bytes]", p.len() - head.len());
            reframe(head, marker.as_bytes())
        }
        _ => Cow::Borrowed(pkt),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_secrets(t: &str) -> String {
        t.replace("'s3cret'", "'[redacted]'")
    }

    #[test]
    fn statement_texts_are_redacted_and_parameters_recorded_only_when_the_rule_says() {
        let q = wire::frame(0, b"\x03SELECT 1");
        assert!(matches!(command_as_recorded(&q, &no_secrets, None), Cow::Borrowed(_)));
        let q = wire::frame(0, b"\x03SET PASSWORD = 's3cret'");
        let r = command_as_recorded(&q, &no_secrets, None);
        assert_eq!(payload_of(&r), b"\x03SET PASSWORD = '[redacted]'");
        assert_eq!(seq_of(&r), 0);

        // EXECUTE id 7, no cursor, 1 iteration, then a NULL bitmap, types and a value.
        let mut exec = vec![wire::COM_STMT_EXECUTE, 7, 0, 0, 0, 0, 1, 0, 0, 0];
        exec.extend_from_slice(&[0, 1, 0xfe, 0, 6, b's', b'3', b'c', b'r', b'e', b't']);
        let framed = wire::frame(0, &exec);
        let r = command_as_recorded(&framed, &no_secrets, None);
        let p = payload_of(&r);
        assert_eq!(p.get(..10), exec.get(..10), "the head is kept");
        assert_eq!(p.get(10..), Some(&b"[parameters not recorded: 11 bytes]"[..]));
        assert!(!r.windows(6).any(|w| w == b"s3cret"));

        let mut long = vec![wire::COM_STMT_SEND_LONG_DATA, 7, 0, 0, 0, 0, 0];
        long.extend_from_slice(b"s3cret blob");
        let framed = wire::frame(0, &long);
        let r = command_as_recorded(&framed, &no_secrets, None);
        assert_eq!(payload_of(&r).get(7..), Some(&b"[data not recorded: 11 bytes]"[..]));

        // With record_parameters: the values as text (types from this packet, or bound before).
        let with_params = |payload: &[u8], x: ExecuteParams<'_>| -> Vec<u8> {
            let framed = wire::frame(0, payload);
            payload_of(&command_as_recorded(&framed, &no_secrets, Some((x, None)))).to_vec()
        };
        let one = ExecuteParams { count: 1, types: None };
        let r = with_params(&exec, one);
        assert_eq!(r.get(10..), Some(&b"[parameters: 's3cret']"[..]));
        let x = ExecuteParams { count: 2, types: None };
        let r = with_params(&exec, x);
        assert!(r.ends_with(b"that cannot be read]"), "read as two parameters, it does not parse");
        let mut two = vec![wire::COM_STMT_EXECUTE, 7, 0, 0, 0, 0, 1, 0, 0, 0];
        // NULL bitmap (the second is NULL), bound, types LONGLONG + VAR_STRING, then 42.
        two.extend_from_slice(&[0b10, 1, 0x08, 0, 0xfd, 0]);
        two.extend_from_slice(&42i64.to_le_bytes());
        let framed = wire::frame(0, &two);
        let r = with_params(&two, x);
        assert_eq!(r.get(10..), Some(&b"[parameters: 42, NULL]"[..]));
        assert_eq!(bound_types(payload_of(&framed), 2), Some(&[0x08, 0, 0xfd, 0][..]));
        let mut three = vec![wire::COM_STMT_EXECUTE, 7, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0xfd, 0, 0x03, 0x80];
        three.extend_from_slice(&[4, b'i', b't', b'\'', b's']);
        three.extend_from_slice(&7u32.to_le_bytes());
        let x = ExecuteParams { count: 2, types: None };
        let r = with_params(&three, x);
        assert_eq!(r.get(10..), Some(&b"[parameters: 'it''s', 7]"[..]));
        // Not bound here: the types of an earlier execute; none known: not recorded.
        let mut again = vec![wire::COM_STMT_EXECUTE, 7, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0];
        again.extend_from_slice(&[2, b'o', b'k']);
        again.extend_from_slice(&9u32.to_le_bytes());
        let types = [0xfd, 0, 0x03, 0x80];
        let x = ExecuteParams { count: 2, types: Some(&types) };
        let r = with_params(&again, x);
        assert_eq!(r.get(10..), Some(&b"[parameters: 'ok', 9]"[..]));
        let x = ExecuteParams { count: 2, types: None };
        let r = with_params(&again, x);
        assert_eq!(r.get(10..), Some(&b"[parameters not recorded: 9 bytes that cannot be read]"[..]));
        // Truncated values: not recorded, never a panic.
        let x = ExecuteParams { count: 2, types: None };
        let r = with_params(three.get(..three.len() - 2).unwrap_or_default(), x);
        assert!(r.ends_with(b"that cannot be read]"));

        // Malformed or empty packets are recorded as they are (they were forwarded as they are).
        let odd = wire::frame(0, &[wire::COM_STMT_SEND_LONG_DATA, 1]);
        assert_eq!(payload_of(&command_as_recorded(&odd, &no_secrets, None)), b"\x18\x01[data not recorded: 0 bytes]");
        assert_eq!(command_as_recorded(&[], &no_secrets, None).as_ref(), &[] as &[u8]);
    }
}
