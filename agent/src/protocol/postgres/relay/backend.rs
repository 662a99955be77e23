//! Backend → client: refusals' stand-in errors rewritten into Gatehouse's
//! own, statement outcomes recorded, rows masked while streaming.

use std::sync::{Arc, Mutex};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tracing::{debug, error};

use super::client::statement_end;
use super::{Fail, InFlight, Shared, fill, lock, tripwire};
use crate::audit::{Direction, StreamRecorder};
use crate::mask::{Counts, MaskOutput, Profile, Style, TokenKey, TokenScope};
use crate::protocol::postgres::wire::{self, Frame, WireError};
use crate::protocol::postgres::{CancelTarget, Ctx, MAX_BACKEND_MESSAGE, SessionDb};

/// Handles shared with the client direction.
pub(in crate::protocol::postgres) struct Io<'a> {
    pub shared: &'a Mutex<Shared>,
    pub nonce: &'a str,
    pub rec: &'a StreamRecorder,
    /// Bumped after every batch of messages, for a client direction waiting on an outcome.
    pub progress: &'a watch::Sender<u64>,
    /// Woken when the client direction queued notices for the client.
    pub wake: &'a tokio::sync::Notify,
}

/// How each column of the current result is masked.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ColMask {
    /// Not text (numbers, dates…): passed as is.
    Pass,
    /// A column rule: the whole value gets this style (Hash tokens with the column's key).
    Rule(Style, TokenKey),
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
                profile.column_style(None, &c.name).map(|s| (s, None))
            } else {
                tables.iter().find_map(|t| profile.column_style(Some(t), &c.name).map(|s| (s, Some(t.as_str()))))
            };
            let key = |table: Option<&str>| profile.token_key(TokenScope::Column { table, column: &c.name });
            match (text_like(c.type_oid, c.format), rule) {
                (Some(_), Some((style, table))) => ColMask::Rule(style, key(table)),
                // A number or date the rules name cannot hold "****": it becomes NULL.
                (None, Some((_, table))) => ColMask::Rule(Style::Null, key(table)),
                (Some(skip), None) => ColMask::Scan { skip },
                (None, None) => ColMask::Pass,
            }
        })
        .collect()
}

pub(super) async fn backend_to_client<R, W>(
    ctx: &Ctx,
    db: &SessionDb,
    br: &mut R,
    mut buf: BytesMut,
    cw: &mut W,
    io: Io<'_>,
    count: &mut u64,
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
        // Notices the client direction queued come before what the server sent after them.
        out.extend(std::mem::take(&mut lock(io.shared).notices).into_iter().flatten());
        while let Some((frame, n)) =
            wire::decode(&buf, MAX_BACKEND_MESSAGE).map_err(|e| Fail::Backend(e.to_string()))?
        {
            *count += n as u64;
            let outcome =
                on_backend(ctx, db, frame, &mut out, io.shared, io.nonce, &mut columns, &mut scratch, &mut pending);
            buf.advance(n);
            if let Err(e) = outcome {
                // What the client was sent before the failure still reaches it.
                let _ = cw.write_all(&out).await;
                return Err(e);
            }
            // Stream large results: do not hold more than this before writing.
            if out.len() >= 64 * 1024 {
                cw.write_all(&out).await.map_err(Fail::ClientIo)?;
                io.rec.chunk(&ctx.agent.audit, Direction::Down, written, &out, None).await;
                written += out.len() as u64;
                out.clear();
            }
        }
        io.progress.send_modify(|v| *v = v.wrapping_add(1));
        if !out.is_empty() {
            cw.write_all(&out).await.map_err(Fail::ClientIo)?;
            cw.flush().await.map_err(Fail::ClientIo)?;
            io.rec.chunk(&ctx.agent.audit, Direction::Down, written, &out, None).await;
            written += out.len() as u64;
            out.clear();
        }
        let more = tokio::select! {
            biased;
            () = io.wake.notified() => {
                let notices = std::mem::take(&mut lock(io.shared).notices);
                for n in notices {
                    cw.write_all(&n).await.map_err(Fail::ClientIo)?;
                }
                cw.flush().await.map_err(Fail::ClientIo)?;
                continue;
            }
            more = fill(br, &mut buf) => more,
        };
        if !matches!(more, Ok(true)) {
            // A client direction waiting on the backend must not wait forever.
            lock(io.shared).backend_closed = true;
            io.progress.send_modify(|v| *v = v.wrapping_add(1));
        }
        if !more.map_err(|e| Fail::Backend(e.to_string()))? {
            return Ok(());
        }
    }
}

#[expect(clippy::too_many_arguments, reason = "the per-direction state, passed explicitly rather than bundled")]
fn on_backend(
    ctx: &Ctx,
    db: &SessionDb,
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
                let current = sh.epochs_done;
                drop_parses(&mut sh, |e| e == current);
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
                let current = sh.epochs_done;
                // The error ends the exchange's statement that was running, if
                // one was (an error at Parse or Bind ends none); the server
                // skips the rest of the exchange, including pending Parses.
                let front = if sh.inflight.front().is_some_and(|f| f.epoch == current) {
                    sh.inflight.pop_front()
                } else {
                    None
                };
                if let Some(fl) = &front {
                    sh.completed = sh.completed.max(fl.seq);
                    forget(&mut sh, fl);
                }
                drop_parses(&mut sh, |e| e == current);
                sh.path.error_since = true;
                drop(sh);
                if let Some(mut fl) = front {
                    fl.masked.merge(pending);
                    *pending = Counts::default();
                    // Recorded as the client sees it: after masking.
                    let recorded = crate::sql::redact::message(ctx.mask.as_deref(), &message);
                    statement_end(ctx, fl, None, Some(recorded));
                }
                mask_message(ctx, f, out);
            }
        }
        b'1' => {
            let mut sh = lock(shared);
            if let Some((name, generation, _)) = sh.parses.pop_front()
                && let Some(p) = sh.prepared.get_mut(&name)
                && p.generation == generation
            {
                p.pending = None;
            }
            drop(sh);
            out.extend_from_slice(f.raw);
        }
        b'C' => {
            let tag = wire::command_tag(f.body).map_err(bad)?;
            let rows = wire::command_rows(f.body);
            let mut sh = lock(shared);
            let current = sh.epochs_done;
            let front = match sh.inflight.front() {
                Some(fl) if fl.epoch == current && !fl.empty => sh.inflight.pop_front(),
                _ => None,
            };
            let Some(mut fl) = front else {
                drop(sh);
                return Err(breach(
                    ctx,
                    None,
                    format!("the server completed a command (`{tag}`) Gatehouse did not see in what it forwarded"),
                ));
            };
            sh.completed = sh.completed.max(fl.seq);
            fl.tags.push(tag.clone());
            if let Err(why) = tripwire::check(&fl.kinds, &tag) {
                drop(sh);
                return Err(breach(ctx, Some(fl), why));
            }
            if let Some((name, generation)) = &fl.prepares
                && let Some(p) = sh.prepared.get_mut(name)
                && p.generation == *generation
            {
                p.pending = None;
            }
            if let Some(path) = fl.search_path.take() {
                sh.path.tentative = Some(path);
                sh.path.error_since = false;
                sh.path.in_flight = sh.path.in_flight.saturating_sub(1);
            }
            if fl.ddl {
                sh.ddl_done = true;
            }
            drop(sh);
            fl.masked.merge(pending);
            *pending = Counts::default();
            statement_end(ctx, fl, rows, None);
            *columns = None;
            out.extend_from_slice(f.raw);
        }
        b'I' | b's' | b'V' => {
            let mut sh = lock(shared);
            let current = sh.epochs_done;
            let front =
                if sh.inflight.front().is_some_and(|fl| fl.epoch == current) { sh.inflight.pop_front() } else { None };
            if let Some(fl) = &front {
                sh.completed = sh.completed.max(fl.seq);
                forget(&mut sh, fl);
            }
            drop(sh);
            if let Some(mut fl) = front {
                fl.masked.merge(pending);
                *pending = Counts::default();
                statement_end(ctx, fl, None, None);
            }
            *columns = None;
            out.extend_from_slice(f.raw);
        }
        b'Z' => {
            let status = f.body.first().copied().unwrap_or(b'I');
            let mut sh = lock(shared);
            sh.txn = status;
            if !sh.login_ready {
                // The login's own ReadyForQuery ends no client exchange.
                sh.login_ready = true;
                drop(sh);
                out.extend_from_slice(f.raw);
                return Ok(());
            }
            sh.epochs_done += 1;
            let done = sh.epochs_done;
            // Refusals whose stand-in was skipped (an earlier error in the same
            // exchange) and statements that never ran end with the exchange.
            sh.refusals.retain(|r| r.epoch >= done);
            drop_parses(&mut sh, |e| e < done);
            let mut skipped = Vec::new();
            while sh.inflight.front().is_some_and(|f| f.epoch < done) {
                if let Some(f) = sh.inflight.pop_front() {
                    sh.completed = sh.completed.max(f.seq);
                    forget(&mut sh, &f);
                    skipped.push(f);
                }
            }
            let mut refresh = false;
            if status == b'I' {
                // Outside a transaction: what the last one did is settled.
                if let Some(path) = sh.path.tentative.take() {
                    if sh.path.error_since {
                        sh.path.unknown = true;
                    } else {
                        sh.path.current = path;
                        sh.path.unknown = false;
                    }
                }
                sh.path.error_since = false;
                refresh = std::mem::take(&mut sh.defined_in_txn) | std::mem::take(&mut sh.ddl_done);
            }
            drop(sh);
            for f in skipped {
                statement_end(ctx, f, None, Some("not executed: an earlier statement of the exchange failed".into()));
            }
            if refresh {
                db.catalog.settle(ctx.id);
                crate::protocol::postgres::catalog::refresh(ctx, &db.catalog, &db.login, &db.database);
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
            let (k, v) = wire::parameter_status(f.body).map_err(bad)?;
            if k == b"standard_conforming_strings" {
                lock(shared).scs = v == b"on";
            }
            if k == b"client_encoding" {
                let enc = String::from_utf8_lossy(v);
                if crate::sql::encoding::is_unsafe_client_encoding(&enc) {
                    return Err(breach(
                        ctx,
                        None,
                        format!("the server switched client_encoding to {enc}, which Gatehouse cannot read safely"),
                    ));
                }
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

/// A statement that ended its exchange without running leaves nothing behind.
fn forget(sh: &mut Shared, fl: &InFlight) {
    if let Some((name, generation)) = &fl.prepares
        && sh.prepared.get(name).is_some_and(|p| p.generation == *generation && p.pending.is_some())
    {
        sh.prepared.remove(name);
    }
    if fl.search_path.is_some() {
        sh.path.in_flight = sh.path.in_flight.saturating_sub(1);
    }
}

/// Drops the Parses of exchanges `which` selects: the server skipped them.
fn drop_parses(sh: &mut Shared, which: impl Fn(u64) -> bool) {
    let gone: Vec<(Vec<u8>, u64)> =
        sh.parses.iter().filter(|(_, _, e)| which(*e)).map(|(n, g, _)| (n.clone(), *g)).collect();
    sh.parses.retain(|(_, _, e)| !which(*e));
    for (name, generation) in gone {
        if sh.prepared.get(&name).is_some_and(|p| p.generation == generation && p.pending.is_some()) {
            sh.prepared.remove(&name);
        }
    }
}

/// Records a policy breach on the statement (if known) and ends the session.
fn breach(ctx: &Ctx, fl: Option<InFlight>, why: String) -> Fail {
    error!(session = %ctx.id, breach = %why, "POLICY BREACH");
    if let Some(fl) = fl {
        statement_end(ctx, fl, None, Some(format!("POLICY BREACH: {why}")));
    }
    Fail::Breach(why)
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
        let result = match c {
            ColMask::Pass => MaskOutput::Unchanged,
            ColMask::Rule(style, key) => {
                let r = profile.mask_value(*style, key, v, out);
                if r != MaskOutput::Unchanged {
                    counts.add_columns(1);
                }
                r
            }
            ColMask::Scan { skip } => {
                let (head, tail) = v.split_at((*skip).min(v.len()));
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
