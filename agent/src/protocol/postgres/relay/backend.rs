//! Backend → client: refusals' stand-in errors rewritten into Gatehouse's
//! own, statement outcomes recorded, rows masked while streaming.

use std::sync::{Arc, Mutex};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tracing::debug;

use super::client::statement_end;
use super::{Fail, Shared, fill, lock};
use crate::audit::{Direction, StreamRecorder};
use crate::mask::{Counts, MaskOutput, Profile, Style};
use crate::protocol::postgres::wire::{self, Frame, WireError};
use crate::protocol::postgres::{CancelTarget, Ctx, MAX_BACKEND_MESSAGE};

/// How each column of the current result is masked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ColMask {
    /// Not text (numbers, dates…): passed as is.
    Pass,
    /// A column rule: the whole value gets this style.
    Rule(Style),
    /// Text: the detectors look inside. `skip` bytes of binary header first (jsonb).
    Scan { skip: usize },
}

/// Type OIDs whose values carry text (text or binary format).
fn text_like(type_oid: u32, format: i16) -> Option<usize> {
    match (type_oid, format) {
        // text, varchar, bpchar, name, char, json, xml, unknown, citext-like domains arrive as their base type.
        (25 | 1043 | 1042 | 19 | 18 | 114 | 142 | 705, _) => Some(0),
        // jsonb: text in text format; a version byte first in binary.
        (3802, 0) => Some(0),
        (3802, 1) => Some(1),
        // Arrays and records in text format are text too.
        (1009 | 1015 | 1014 | 199 | 3807 | 2249, 0) => Some(0),
        _ => None,
    }
}

/// The masking plan for a result. A column that comes from a table
/// (`table_oid` set) is checked against the rules for each table the
/// statement touches (any match masks: with joins this errs towards
/// masking); computed columns only by name.
fn plan(profile: &Profile, cols: &[wire::Column], tables: &[String]) -> Vec<ColMask> {
    cols.iter()
        .map(|c| {
            let rule = if c.table_oid == 0 || tables.is_empty() {
                profile.column_style(None, &c.name)
            } else {
                tables.iter().find_map(|t| profile.column_style(Some(t), &c.name))
            };
            match (text_like(c.type_oid, c.format), rule) {
                (Some(_), Some(style)) => ColMask::Rule(style),
                // A number or date the rules name cannot hold "****": it becomes NULL.
                (None, Some(_)) => ColMask::Rule(Style::Null),
                (Some(skip), None) => ColMask::Scan { skip },
                (None, None) => ColMask::Pass,
            }
        })
        .collect()
}

#[expect(clippy::too_many_arguments, reason = "the direction's state, passed explicitly")]
pub(super) async fn backend_to_client<R, W>(
    ctx: &Ctx,
    br: &mut R,
    mut buf: BytesMut,
    cw: &mut W,
    shared: &Mutex<Shared>,
    nonce: &str,
    count: &mut u64,
    rec: &StreamRecorder,
) -> Result<(), Fail>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut out: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut columns: Option<Vec<ColMask>> = None;
    let mut scratch = Vec::new();
    let mut pending = Counts::default();
    let mut written = 0u64;
    loop {
        while let Some((frame, n)) =
            wire::decode(&buf, MAX_BACKEND_MESSAGE).map_err(|e| Fail::Backend(e.to_string()))?
        {
            *count += n as u64;
            on_backend(ctx, frame, &mut out, shared, nonce, &mut columns, &mut scratch, &mut pending)?;
            buf.advance(n);
            // Stream large results: do not hold more than this before writing.
            if out.len() >= 64 * 1024 {
                cw.write_all(&out).await.map_err(Fail::ClientIo)?;
                rec.chunk(&ctx.agent.audit, Direction::Down, written, &out, None);
                written += out.len() as u64;
                out.clear();
            }
        }
        if !out.is_empty() {
            cw.write_all(&out).await.map_err(Fail::ClientIo)?;
            cw.flush().await.map_err(Fail::ClientIo)?;
            rec.chunk(&ctx.agent.audit, Direction::Down, written, &out, None);
            written += out.len() as u64;
            out.clear();
        }
        if !fill(br, &mut buf).await.map_err(|e| Fail::Backend(e.to_string()))? {
            return Ok(());
        }
    }
}

#[expect(clippy::too_many_arguments, reason = "the per-direction state, passed explicitly rather than bundled")]
fn on_backend(
    ctx: &Ctx,
    f: Frame<'_>,
    out: &mut Vec<u8>,
    shared: &Mutex<Shared>,
    nonce: &str,
    columns: &mut Option<Vec<ColMask>>,
    scratch: &mut Vec<u8>,
    pending: &mut Counts,
) -> Result<(), Fail> {
    let bad = |e: WireError| Fail::Backend(format!("malformed message from the backend: {e}"));
    match f.tag {
        b'E' => {
            let fields = wire::error_fields(f.body).map_err(bad)?;
            let mine = fields.iter().any(|(c, v)| *c == b'M' && memchr::memmem::find(v, nonce.as_bytes()).is_some());
            let mut sh = lock(shared);
            if mine {
                let r = sh.refusals.pop_front();
                drop(sh);
                match r {
                    Some(r) => out.extend_from_slice(&r.error.encode()),
                    None => out.extend_from_slice(f.raw),
                }
            } else {
                let message = fields
                    .iter()
                    .find(|(c, _)| *c == b'M')
                    .map(|(_, m)| String::from_utf8_lossy(m).into_owned())
                    .unwrap_or_default();
                let front = sh.inflight.pop_front();
                drop(sh);
                if let Some(mut fl) = front {
                    fl.masked.merge(pending);
                    *pending = Counts::default();
                    statement_end(ctx, fl, None, Some(message));
                }
                mask_message(ctx, f, out);
            }
        }
        b'C' | b'I' | b's' | b'V' => {
            let rows = if f.tag == b'C' { wire::command_rows(f.body) } else { None };
            let front = lock(shared).inflight.pop_front();
            if let Some(mut fl) = front {
                fl.masked.merge(pending);
                *pending = Counts::default();
                statement_end(ctx, fl, rows, None);
            }
            *columns = None;
            out.extend_from_slice(f.raw);
        }
        b'Z' => {
            let mut sh = lock(shared);
            sh.epochs_done += 1;
            let done = sh.epochs_done;
            // Refusals whose stand-in was skipped (an earlier error in the same
            // exchange) and statements that never ran end with the exchange.
            sh.refusals.retain(|r| r.epoch >= done);
            let mut skipped = Vec::new();
            while sh.inflight.front().is_some_and(|f| f.epoch < done) {
                if let Some(f) = sh.inflight.pop_front() {
                    skipped.push(f);
                }
            }
            drop(sh);
            for f in skipped {
                statement_end(ctx, f, None, Some("not executed: an earlier statement of the exchange failed".into()));
            }
            *columns = None;
            out.extend_from_slice(f.raw);
        }
        b'K' => {
            let (pid, secret) = wire::backend_key(f.body).map_err(bad)?;
            let mine = ctx.agent.cancel_keys.issue(CancelTarget {
                addr: ctx.addr,
                backend_pid: pid,
                backend_secret: secret,
                uid: ctx.uid,
                session: ctx.id,
            });
            debug!(backend_pid = pid, "issued the client a Gatehouse cancel key");
            out.extend_from_slice(&wire::backend_key_data(mine.0, mine.1));
        }
        b'S' => {
            if let Ok((k, v)) = wire::parameter_status(f.body)
                && k == b"standard_conforming_strings"
            {
                lock(shared).scs = v == b"on";
            }
            out.extend_from_slice(f.raw);
        }
        b'T' => {
            *columns = match &ctx.mask {
                Some(p) => {
                    let tables = lock(shared)
                        .inflight
                        .front()
                        .map(|f| f.tables.clone())
                        .unwrap_or_else(|| Arc::from(Vec::new()));
                    let cols = plan(p, &wire::row_description(f.body).map_err(bad)?, &tables);
                    // Nothing to mask in this result: an empty plan, checked once, not per row.
                    Some(if cols.iter().all(|c| *c == ColMask::Pass) { Vec::new() } else { cols })
                }
                None => None,
            };
            out.extend_from_slice(f.raw);
        }
        b'D' => match (&ctx.mask, columns.as_ref()) {
            (Some(profile), Some(cols)) if !cols.is_empty() => {
                mask_row(profile, cols, f, out, pending).map_err(bad)?;
            }
            (Some(_), None) => {
                // A DataRow without its description (should not happen): fail closed.
                return Err(Fail::Backend("a data row arrived without a row description on a masked session".into()));
            }
            _ => out.extend_from_slice(f.raw),
        },
        b'H' => {
            // CopyOutResponse: binary COPY cannot be masked: refuse it on masked sessions.
            if ctx.mask.is_some() && f.body.first() == Some(&1) {
                return Err(Fail::Backend(
                    "binary COPY TO cannot be masked; the session is closed (fail closed)".into(),
                ));
            }
            out.extend_from_slice(f.raw);
        }
        b'd' if ctx.mask.is_some() => {
            let Some(profile) = &ctx.mask else { return Ok(()) };
            scratch.clear();
            let result = profile.scan(f.body, scratch, pending);
            if result == MaskOutput::Null {
                // A null-style hit inside a COPY row: the row is redacted whole (fail closed).
                scratch.clear();
                scratch.extend_from_slice(b"****\n");
            }
            match result {
                MaskOutput::Written | MaskOutput::Null => {
                    out.push(b'd');
                    out.extend_from_slice(&u32::try_from(scratch.len() + 4).unwrap_or(u32::MAX).to_be_bytes());
                    out.extend_from_slice(scratch);
                }
                MaskOutput::Unchanged => out.extend_from_slice(f.raw),
            }
        }
        b'N' => mask_message(ctx, f, out),
        _ => out.extend_from_slice(f.raw),
    }
    Ok(())
}

/// Masks one DataRow per the plan, rewriting lengths, in one pass straight
/// into `out` with no allocation per row. A row nothing in was masked comes
/// out byte-identical to the one received.
fn mask_row(
    profile: &Profile,
    cols: &[ColMask],
    f: Frame<'_>,
    out: &mut Vec<u8>,
    counts: &mut Counts,
) -> Result<(), WireError> {
    let malformed = || WireError::Malformed { what: "DataRow" };
    let body = f.body;
    let n = body.get(..2).and_then(|b| <[u8; 2]>::try_from(b).ok()).map(i16::from_be_bytes).ok_or_else(malformed)?;
    if usize::try_from(n).ok() != Some(cols.len()) {
        return Err(WireError::Malformed { what: "DataRow (column count differs from RowDescription)" });
    }
    let row_start = out.len();
    out.push(b'D');
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(body.get(..2).unwrap_or_default());
    let mut at = 2usize;
    for c in cols {
        let len = body
            .get(at..at + 4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(i32::from_be_bytes)
            .ok_or_else(malformed)?;
        at += 4;
        if len < 0 {
            out.extend_from_slice(&(-1i32).to_be_bytes());
            continue;
        }
        let end = at.checked_add(usize::try_from(len).map_err(|_| malformed())?).ok_or_else(malformed)?;
        let v = body.get(at..end).ok_or_else(malformed)?;
        at = end;
        let len_at = out.len();
        out.extend_from_slice(&[0; 4]);
        let value_at = out.len();
        let result = match *c {
            ColMask::Pass => MaskOutput::Unchanged,
            ColMask::Rule(style) => {
                let r = profile.mask_value(style, v, out);
                if r != MaskOutput::Unchanged {
                    counts.add_columns(1);
                }
                r
            }
            ColMask::Scan { skip } => {
                let (head, tail) = v.split_at(skip.min(v.len()));
                out.extend_from_slice(head);
                match profile.scan(tail, out, counts) {
                    MaskOutput::Unchanged => {
                        out.truncate(value_at);
                        MaskOutput::Unchanged
                    }
                    other => other,
                }
            }
        };
        let written = match result {
            MaskOutput::Unchanged => {
                out.extend_from_slice(v);
                i32::try_from(v.len()).map_err(|_| malformed())?
            }
            MaskOutput::Written => i32::try_from(out.len() - value_at).map_err(|_| malformed())?,
            MaskOutput::Null => {
                out.truncate(value_at);
                -1
            }
        };
        if let Some(slot) = out.get_mut(len_at..len_at + 4) {
            slot.copy_from_slice(&written.to_be_bytes());
        }
    }
    if at != body.len() {
        out.truncate(row_start);
        return Err(malformed());
    }
    let total = u32::try_from(out.len() - row_start - 1).map_err(|_| malformed())?;
    if let Some(slot) = out.get_mut(row_start + 1..row_start + 5) {
        slot.copy_from_slice(&total.to_be_bytes());
    }
    Ok(())
}

/// Errors and notices can echo values ("Key (email)=(…) already exists"):
/// on masked sessions their text fields go through the detectors.
fn mask_message(ctx: &Ctx, f: Frame<'_>, out: &mut Vec<u8>) {
    let Some(profile) = &ctx.mask else {
        out.extend_from_slice(f.raw);
        return;
    };
    let Ok(fields) = wire::error_fields(f.body) else {
        out.extend_from_slice(f.raw);
        return;
    };
    let mut counts = Counts::default();
    let mut body = Vec::with_capacity(f.body.len());
    let mut changed = false;
    for (code, value) in fields {
        body.push(code);
        let start = body.len();
        let result = if matches!(code, b'M' | b'D' | b'H' | b'W' | b'q') {
            profile.scan(value, &mut body, &mut counts)
        } else {
            MaskOutput::Unchanged
        };
        match result {
            MaskOutput::Written => changed = true,
            // A null-style hit cannot be a NULL inside a message: redact the field.
            MaskOutput::Null => {
                changed = true;
                body.truncate(start);
                body.extend_from_slice(b"****");
            }
            MaskOutput::Unchanged => {
                body.truncate(start);
                body.extend_from_slice(value);
            }
        }
        body.push(0);
    }
    body.push(0);
    if !changed {
        out.extend_from_slice(f.raw);
        return;
    }
    out.push(f.tag);
    out.extend_from_slice(&u32::try_from(body.len() + 4).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(&body);
}
