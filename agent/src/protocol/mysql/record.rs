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
//!   [`super::recorded_text`]), the parameter values of
//!   `COM_STMT_EXECUTE` and the data of `COM_STMT_SEND_LONG_DATA` (replaced
//!   with a marker, as the PostgreSQL stream replaces Bind parameters).
//! - Refused commands never reach the server and are not in the
//!   client → backend stream; the refusal the client receives is in the
//!   other.

use std::borrow::Cow;

use super::{Ctx, payload_of, seq_of, wire};
use crate::audit::{Audit, Direction, Event, StatementEnd, StatementStart, StreamRecorder};

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
            rec: StreamRecorder::new(ctx.id, ctx.agent.settings.record_max_bytes, "statement"),
            audit: ctx.agent.audit.clone(),
            up: 0,
            down: 0,
        }
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

/// A client command packet (header included) as it is recorded: statement
/// texts redacted as their statement records are, parameter values and
/// long data replaced with a marker. Unchanged packets come back borrowed.
pub(super) fn client_packet<'a>(ctx: &Ctx, pkt: &'a [u8]) -> Cow<'a, [u8]> {
    let redact = |text: &str| super::recorded_text(ctx, text).0;
    command_as_recorded(pkt, &redact)
}

/// [`client_packet`] with the text redaction passed in (sans-IO, testable).
pub(super) fn command_as_recorded<'a>(pkt: &'a [u8], redact: &dyn Fn(&str) -> String) -> Cow<'a, [u8]> {
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
            let marker = format!("[parameters not recorded: {} bytes]", p.len() - EXECUTE_HEAD);
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
    fn statement_texts_are_redacted_and_parameters_never_recorded() {
        let q = wire::frame(0, b"\x03SELECT 1");
        assert!(matches!(command_as_recorded(&q, &no_secrets), Cow::Borrowed(_)));
        let q = wire::frame(0, b"\x03SET PASSWORD = 's3cret'");
        let r = command_as_recorded(&q, &no_secrets);
        assert_eq!(payload_of(&r), b"\x03SET PASSWORD = '[redacted]'");
        assert_eq!(seq_of(&r), 0);

        // EXECUTE id 7, no cursor, 1 iteration, then a NULL bitmap, types and a value.
        let mut exec = vec![wire::COM_STMT_EXECUTE, 7, 0, 0, 0, 0, 1, 0, 0, 0];
        exec.extend_from_slice(&[0, 1, 0xfe, 0, 6, b's', b'3', b'c', b'r', b'e', b't']);
        let framed = wire::frame(0, &exec);
        let r = command_as_recorded(&framed, &no_secrets);
        let p = payload_of(&r);
        assert_eq!(p.get(..10), exec.get(..10), "the head is kept");
        assert_eq!(p.get(10..), Some(&b"[parameters not recorded: 11 bytes]"[..]));
        assert!(!r.windows(6).any(|w| w == b"s3cret"));

        let mut long = vec![wire::COM_STMT_SEND_LONG_DATA, 7, 0, 0, 0, 0, 0];
        long.extend_from_slice(b"s3cret blob");
        let framed = wire::frame(0, &long);
        let r = command_as_recorded(&framed, &no_secrets);
        assert_eq!(payload_of(&r).get(7..), Some(&b"[data not recorded: 11 bytes]"[..]));

        // Malformed or empty packets are recorded as they are (they were forwarded as they are).
        let odd = wire::frame(0, &[wire::COM_STMT_SEND_LONG_DATA, 1]);
        assert_eq!(payload_of(&command_as_recorded(&odd, &no_secrets)), b"\x18\x01[data not recorded: 0 bytes]");
        assert_eq!(command_as_recorded(&[], &no_secrets).as_ref(), &[] as &[u8]);
    }
}
