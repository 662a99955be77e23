//! Backend → client: refusals' stand-in errors rewritten into Gatehouse's
//! own, statement outcomes recorded, rows masked while streaming.

use std::sync::{Arc, Mutex};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tracing::{debug, error};

use super::client::end_record;
use super::masking::{self, CopyPlan, Trace, mask_message};
use super::{Fail, FillError, InFlight, Room, Shared, fill, lock, over_budget, settle, trim, tripwire};
use crate::audit::{Direction, Event, StatementEnd, StreamRecorder};
use crate::mask::{ColumnMask, Counts};
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
    let mut room = Room::new(ctx.svc.settings.large_message_budget);
    let mut rows = Rows::default();
    let mut scratch = Vec::new();
    let mut pending = Counts::default();
    let mut written = 0u64;
    // Statement ends seen since the last write, recorded with the bytes of
    // that write folded into the last of them (see `record_batch`).
    let mut ends: Vec<StatementEnd> = Vec::new();
    // Trail records (and alerts) of statements that ended since the last write.
    let mut trail: Vec<Event> = Vec::new();
    loop {
        // Notices the client direction queued come before what the server sent after them.
        out.extend(std::mem::take(&mut lock(io.shared).notices).into_iter().flatten());
        while let Some((frame, n)) =
            wire::decode(&buf, MAX_BACKEND_MESSAGE).map_err(|e| Fail::Backend(e.to_string()))?
        {
            *count += n as u64;
            let mut sink = Sink {
                rows: &mut rows,
                scratch: &mut scratch,
                pending: &mut pending,
                ends: &mut ends,
                trail: &mut trail,
            };
            let outcome = on_backend(ctx, db, frame, &mut out, io.shared, io.nonce, &mut sink);
            buf.advance(n);
            if let Err(e) = outcome {
                record_batch(ctx, io.rec, &mut trail, &mut ends, &out, &mut written).await;
                // What the client was sent before the failure still reaches it.
                let _ = cw.write_all(&out).await;
                return Err(e);
            }
            // Stream large results: do not hold more than this before writing.
            if out.len() >= 64 * 1024 {
                record_batch(ctx, io.rec, &mut trail, &mut ends, &out, &mut written).await;
                cw.write_all(&out).await.map_err(Fail::ClientIo)?;
                out.clear();
                trim(&mut out, 16 * 1024);
                trim(&mut scratch, 0);
            }
        }
        settle(&mut buf, &mut room);
        io.progress.send_modify(|v| *v = v.wrapping_add(1));
        if !out.is_empty() || !ends.is_empty() || !trail.is_empty() {
            // On record before the client can answer it: a statement's end
            // and its result precede, in the chain, the next statement.
            record_batch(ctx, io.rec, &mut trail, &mut ends, &out, &mut written).await;
        }
        if !out.is_empty() {
            cw.write_all(&out).await.map_err(Fail::ClientIo)?;
            cw.flush().await.map_err(Fail::ClientIo)?;
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
            more = fill(br, &mut buf, &mut room) => more,
        };
        if !matches!(more, Ok(true)) {
            // A client direction waiting on the backend must not wait forever.
            lock(io.shared).backend_closed = true;
            io.progress.send_modify(|v| *v = v.wrapping_add(1));
        }
        let more = more.map_err(|e| match e {
            FillError::Io(e) => Fail::Backend(e.to_string()),
            FillError::Budget(n) => Fail::Memory(over_budget("server's", n, room.budget)),
        })?;
        if !more {
            return Ok(());
        }
    }
}

/// Records the statement ends of a batch and the bytes about to be written
/// to the client: in the common case one record, the last end with the
/// bytes folded in (its data); a chunk record only for bytes that end no
/// statement (a large result's earlier parts, COPY, notices). The trail
/// records of those statements come first: in strict mode through the
/// journal (like the statements' own records: durable before the client
/// has the completion, never dropped for a full queue; see
/// [`crate::audit::Audit::commit_all`]).
async fn record_batch(
    ctx: &Ctx,
    rec: &StreamRecorder,
    trail: &mut Vec<Event>,
    ends: &mut Vec<StatementEnd>,
    out: &[u8],
    written: &mut u64,
) {
    let audit = &ctx.svc.audit;
    if let Err(e) = audit.commit_all(std::mem::take(trail)).await {
        tracing::warn!(error = %e, "cannot record the rows a statement returned (trail)");
    }
    let Some(mut last) = ends.pop() else {
        if !out.is_empty() {
            rec.chunk(audit, Direction::Down, *written, out, None).await;
            *written += out.len() as u64;
        }
        return;
    };
    for e in ends.drain(..) {
        rec.deliver(audit, Direction::Down, Event::StatementEnd(Box::new(e))).await;
    }
    let mut cut = None;
    if !out.is_empty() {
        let (data, c) = rec.fold(Direction::Down, out, None);
        last.down_offset = Some(*written);
        last.down = data;
        *written += out.len() as u64;
        cut = c;
    }
    rec.deliver(audit, Direction::Down, Event::StatementEnd(Box::new(last))).await;
    if let Some(cut) = cut {
        let _ = audit.record(cut);
    }
}

/// The backend direction's per-message state, passed to [`on_backend`].
struct Sink<'a> {
    rows: &'a mut Rows,
    scratch: &'a mut Vec<u8>,
    /// Values masked since the last statement ended.
    pending: &'a mut Counts,
    /// Statement ends not yet recorded (see [`record_batch`]).
    ends: &'a mut Vec<StatementEnd>,
    /// Trail records not yet recorded (written before the ends).
    trail: &'a mut Vec<Event>,
}

impl Sink<'_> {
    fn end(&mut self, ctx: &Ctx, fl: InFlight, rows: Option<u64>, error: Option<String>) {
        self.ends.extend(end_record(ctx, fl, rows, error));
    }
}

/// How the rows of the statement running now are masked.
#[derive(Debug, Default)]
struct Rows {
    /// The plan for its DataRows (empty: nothing to mask), once known.
    columns: Option<Vec<ColumnMask>>,
    /// How many columns its result was described with, once known: a
    /// DataRow with another count is malformed, masked or not.
    width: Option<usize>,
    /// The plan for its COPY rows, if any column is masked.
    copy: Option<CopyPlan>,
    /// The keys of trailed tables its rows return (`crate::trail`), once planned.
    trail: Option<crate::trail::Capture>,
    trail_planned: bool,
    /// An alert said `cut`: the session ends once the client has this exchange's answer.
    cut: Option<String>,
}

impl Rows {
    fn end(&mut self) {
        self.columns = None;
        self.width = None;
        self.copy = None;
        self.trail = None;
        self.trail_planned = false;
    }
}

/// Whether the policy trails any table (results are then described on unmasked sessions too).
pub(super) fn trailing(ctx: &Ctx) -> bool {
    !ctx.svc.snapshot.load().policy.trail.is_empty()
}

/// Who reads through this session, as the alert windows and holds know them.
pub(super) fn reader(ctx: &Ctx) -> crate::trail::alerts::Reader {
    crate::trail::alerts::Reader {
        uid: ctx.uid.0,
        user: ctx.principal.user.as_ref().map_or_else(|| format!("#{}", ctx.uid.0), ToString::to_string),
    }
}

/// Records what the statement returned of trailed tables and runs the
/// alert rules; an alert whose action is `cut` ends the session.
fn trail_end(ctx: &Ctx, sink: &mut Sink<'_>, fl: &InFlight) {
    let rows = &mut *sink.rows;
    let Some(cap) = rows.trail.take() else { return };
    let rules = ctx.svc.snapshot.load().policy.trail.alerts.clone();
    let who = reader(ctx);
    let (records, fired) = crate::trail::finish_statement(&ctx.svc.trail_alerts, &rules, &who, cap, ctx.id, fl.seq);
    sink.trail.extend(records);
    if !fired.is_empty() {
        let snapshot = ctx.svc.snapshot.load();
        for a in &fired {
            crate::notify::announce_alert(&snapshot.policy.notify, a);
        }
    }
    for a in fired.iter().filter(|a| a.action == crate::trail::AlertAction::Hold) {
        // The user's next statement on this backend (this session or another) waits for an approval.
        let window = rules.iter().find(|r| r.name == a.rule).map_or(std::time::Duration::from_secs(3600), |r| r.window);
        ctx.svc.trail_holds.set(&who.user, ctx.backend.name.as_str(), a, window);
    }
    if let Some(a) = fired.iter().find(|a| a.action == crate::trail::AlertAction::Cut) {
        rows.cut.get_or_insert_with(|| a.describe());
    }
}

/// What the statement at the front of the queue reads its rows from: its
/// own lineage, or, for `FETCH`, the cursor's.
fn trace(sh: &Shared) -> Trace {
    let front = sh.inflight.front();
    let lineage = front.and_then(|f| f.lineage.clone());
    let relations = front.map_or_else(|| Arc::from(Vec::new()), |f| f.relations.clone());
    match lineage.as_ref().and_then(|l| l.fetches.as_ref()).and_then(|c| sh.cursors.get(c)) {
        Some((l, r)) => Trace { lineage: Some(l.clone()), relations: r.clone() },
        None => Trace { lineage, relations },
    }
}

/// The row description of an Execute's rows (they come without one): the
/// portal's, or its statement's with the portal's formats.
fn execute_shape(sh: &Shared) -> Option<Arc<[wire::Column]>> {
    sh.inflight.front()?.portal.as_ref()?.shape()?
}

fn on_backend(
    ctx: &Ctx,
    db: &SessionDb,
    f: Frame<'_>,
    out: &mut Vec<u8>,
    shared: &Mutex<Shared>,
    nonce: &str,
    sink: &mut Sink<'_>,
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
                let current = sh.epochs_done;
                // The error ends the exchange's statement that was running, if
                // one was (an error at Parse or Bind ends none); the server
                // skips the rest of the exchange, including sink.pending Parses.
                let running = sh.inflight.front().is_some_and(|f| f.epoch == current);
                // What it read (a FETCH: its cursor's query), for the message's masking.
                let traced = running.then(|| trace(&sh));
                let front = if running { sh.inflight.pop_front() } else { None };
                if let Some(fl) = &front {
                    sh.completed = sh.completed.max(fl.seq);
                    forget(&mut sh, fl);
                }
                drop_parses(&mut sh, |e| e == current);
                sh.describes.retain(|d| d.epoch != current);
                sh.path.error_since = true;
                drop(sh);
                if let Some(fl) = &front {
                    trail_end(ctx, sink, fl);
                }
                sink.rows.end();
                // An error of a statement that touches masked columns may
                // show their values: what could be a value is cut.
                let strict = traced.as_ref().is_some_and(|t| masking::touches_masked(ctx, db, t));
                let at = out.len();
                mask_message(ctx, f, out, strict);
                // What is recorded is what the client was sent.
                let message = out
                    .get(at + 5..)
                    .and_then(|body| wire::error_fields(body).ok())
                    .and_then(|fields| {
                        fields.iter().find(|(c, _)| *c == b'M').map(|(_, m)| String::from_utf8_lossy(m).into_owned())
                    })
                    .unwrap_or_default();
                if let Some(mut fl) = front {
                    fl.masked.merge(sink.pending);
                    *sink.pending = Counts::default();
                    // Recorded as the client sees it: after masking.
                    let recorded = crate::sql::redact::message(ctx.mask.as_deref(), &message);
                    sink.end(ctx, fl, None, Some(recorded));
                }
            }
        }
        // ParseComplete, BindComplete: the oldest Parse (Bind) forwarded is confirmed.
        b'1' | b'2' => {
            let mut sh = lock(shared);
            let sh = &mut *sh;
            let (queue, names) =
                if f.tag == b'1' { (&mut sh.parses, &mut sh.prepared) } else { (&mut sh.binds, &mut sh.portals) };
            if let Some((name, generation, _)) = queue.pop_front()
                && let Some(p) = names.get_mut(&name)
                && p.generation == generation
            {
                p.pending = None;
            }
            out.extend_from_slice(f.raw);
        }
        b'C' => {
            let tag = wire::command_tag(f.body).map_err(bad)?;
            let count = wire::command_rows(f.body);
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
                    sink.ends,
                    None,
                    format!("the server completed a command (`{tag}`) Gatehouse did not see in what it forwarded"),
                ));
            };
            sh.completed = sh.completed.max(fl.seq);
            let checked = tripwire::check(&fl.kinds, &tag);
            let declares_cursor = tag == "DECLARE CURSOR";
            fl.tags.push(tag);
            if let Err(why) = checked {
                drop(sh);
                return Err(breach(ctx, sink.ends, Some(fl), why));
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
            // Back to a savepoint, or to before the transaction: the path set in it
            // reverts to one not kept here (a savepoint's, or one a `COMMIT AND
            // CHAIN` made permanent), so it is unknown until the next SET.
            if fl.rollback && sh.path.tentative.is_some() {
                sh.path.error_since = true;
            }
            if fl.ddl {
                sh.ddl_done = true;
            }
            if declares_cursor
                && let Some(l) = &fl.lineage
                && let Some(name) = &l.declares
            {
                sh.cursors.insert(name.clone(), (l.clone(), fl.relations.clone()));
            }
            drop(sh);
            trail_end(ctx, sink, &fl);
            fl.masked.merge(sink.pending);
            *sink.pending = Counts::default();
            sink.end(ctx, fl, count, None);
            sink.rows.end();
            out.extend_from_slice(f.raw);
        }
        b'I' | b's' | b'V' => {
            // A function call's result is masked before its statement is closed, so it counts.
            // (Masked sessions refuse FunctionCall messages; one a backend sends unasked is masked all the same.)
            let mut rewritten = Vec::new();
            if let (b'V', Some(profile)) = (f.tag, &ctx.mask) {
                masking::mask_function_result(profile, f, &mut rewritten, sink.pending).map_err(bad)?;
            }
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
                trail_end(ctx, sink, &fl);
                fl.masked.merge(sink.pending);
                *sink.pending = Counts::default();
                sink.end(ctx, fl, None, None);
            }
            sink.rows.end();
            out.extend_from_slice(if rewritten.is_empty() { f.raw } else { &rewritten });
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
            sh.describes.retain(|d| d.epoch >= done);
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
                // No portal bound in a finished exchange is left.
                sh.bound.retain(|_, e| *e >= done);
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
                // Read again once what defined or moved names is settled
                // (only this exchange's and earlier ones': a pipelined
                // definition has not run yet), so that no session counts them
                // as pending for longer than that.
                refresh |= db.catalog.settle(ctx.id, done);
            }
            drop(sh);
            for f in skipped {
                sink.end(ctx, f, None, Some("not executed: an earlier statement of the exchange failed".into()));
            }
            if refresh {
                crate::protocol::postgres::catalog::refresh(ctx, &db.catalog, &db.login, &db.database);
            }
            sink.rows.end();
            out.extend_from_slice(f.raw);
            if let Some(why) = sink.rows.cut.take() {
                ctx.live.cut(why);
            }
        }
        b'K' => {
            let (pid, secret) = wire::backend_key(f.body).map_err(bad)?;
            let mine = ctx.svc.cancel_keys.issue(CancelTarget {
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
                        sink.ends,
                        None,
                        format!("the server switched client_encoding to {enc}, which Gatehouse cannot read safely"),
                    ));
                }
            }
            out.extend_from_slice(f.raw);
        }
        b'T' | b'n' => {
            // Only masked or trailed sessions need the columns (others keep the answer slots in order).
            let shape = match f.tag {
                b'T' if ctx.mask.is_some() || trailing(ctx) => {
                    Some(Arc::<[wire::Column]>::from(wire::row_description(f.body).map_err(bad)?))
                }
                _ => None,
            };
            let mut sh = lock(shared);
            let current = sh.epochs_done;
            if sh.describes.front().is_some_and(|d| d.epoch == current) {
                // The answer to a Describe: kept with its statement or portal.
                if let Some(d) = sh.describes.pop_front() {
                    for t in d.targets {
                        t.set(shape.clone());
                    }
                    if d.own {
                        return Ok(());
                    }
                }
            } else if let Some(cols) = &shape {
                // A simple query's result (or FETCH, EXECUTE): its plan now.
                let trace = trace(&sh);
                drop(sh);
                if let Some(profile) = &ctx.mask {
                    sink.rows.columns = Some(masking::result_plan(profile, db, &trace, cols));
                    sink.rows.width = Some(cols.len());
                }
                sink.rows.trail =
                    masking::trail_capture(ctx, db, &trace, cols, sink.rows.columns.as_deref().unwrap_or_default());
                sink.rows.trail_planned = true;
            }
            out.extend_from_slice(f.raw);
        }
        b'D' => {
            // Once per result: an Execute's rows were described by its portal or statement earlier.
            if !std::mem::replace(&mut sink.rows.trail_planned, true) && trailing(ctx) {
                let sh = lock(shared);
                let (shape, trace) = (execute_shape(&sh), trace(&sh));
                drop(sh);
                match shape {
                    Some(cols) => {
                        let plan = match &ctx.mask {
                            Some(profile) => sink
                                .rows
                                .columns
                                .get_or_insert_with(|| masking::result_plan(profile, db, &trace, &cols))
                                .clone(),
                            None => Vec::new(),
                        };
                        sink.rows.trail = masking::trail_capture(ctx, db, &trace, &cols, &plan);
                    }
                    // Described before the policy trailed anything: what it reads is a keyless read.
                    None => sink.rows.trail = masking::trail_capture(ctx, db, &trace, &[], &[]),
                }
            }
            on_data_row(ctx, db, f, out, shared, sink.rows, sink.pending)?;
            if let Some(t) = &mut sink.rows.trail {
                t.row(f.body);
            }
        }
        b'H' => {
            // CopyOutResponse: binary COPY cannot be masked: refuse it on masked sessions.
            if let Some(profile) = &ctx.mask {
                if f.body.first() == Some(&1) {
                    return Err(Fail::Backend(
                        "binary COPY TO cannot be masked; the session is closed (fail closed)".into(),
                    ));
                }
                let width = f.body.get(1..3).and_then(|b| <[u8; 2]>::try_from(b).ok()).map(i16::from_be_bytes);
                let width = width
                    .and_then(|w| usize::try_from(w).ok())
                    .ok_or_else(|| bad(WireError::Malformed { what: "CopyOutResponse" }))?;
                let trace = trace(&lock(shared));
                sink.rows.copy = masking::copy_plan(profile, db, &trace, width);
            }
            if trailing(ctx) {
                let width = f.body.get(1..3).and_then(|b| <[u8; 2]>::try_from(b).ok()).map(i16::from_be_bytes);
                if let Some(width) = width.and_then(|w| usize::try_from(w).ok()) {
                    let trace = trace(&lock(shared));
                    sink.rows.trail = masking::trail_copy_capture(ctx, db, &trace, width, sink.rows.copy.as_ref());
                    sink.rows.trail_planned = true;
                }
            }
            out.extend_from_slice(f.raw);
        }
        b'd' => {
            match &ctx.mask {
                Some(profile) => {
                    masking::mask_copy_data(profile, sink.rows.copy.as_mut(), f, out, sink.scratch, sink.pending)
                }
                None => out.extend_from_slice(f.raw),
            }
            if let Some(t) = &mut sink.rows.trail {
                t.copy_row(f.body);
            }
        }
        b'N' => {
            // A notice during a statement that touches masked columns (a trigger's, a function's) is cut the same way.
            let strict = ctx.mask.is_some() && masking::touches_masked(ctx, db, &trace(&lock(shared)));
            mask_message(ctx, f, out, strict)
        }
        b'A' => match &ctx.mask {
            Some(profile) => masking::mask_notification(profile, f, out, sink.pending).map_err(bad)?,
            None => out.extend_from_slice(f.raw),
        },
        _ => out.extend_from_slice(f.raw),
    }
    Ok(())
}

/// A DataRow: masked per the result's plan on masked sessions, else forwarded as it came.
fn on_data_row(
    ctx: &Ctx,
    db: &SessionDb,
    f: Frame<'_>,
    out: &mut Vec<u8>,
    shared: &Mutex<Shared>,
    rows: &mut Rows,
    pending: &mut Counts,
) -> Result<(), Fail> {
    let bad = |e: WireError| Fail::Backend(format!("malformed message from the backend: {e}"));
    match &ctx.mask {
        None => out.extend_from_slice(f.raw),
        Some(profile) => {
            if rows.columns.is_none() {
                // An Execute's rows: described by its portal or statement earlier.
                let sh = lock(shared);
                let (shape, trace) = (execute_shape(&sh), trace(&sh));
                drop(sh);
                let Some(cols) = shape else {
                    // Rows nobody described cannot be masked: fail closed.
                    return Err(Fail::Backend(
                            "a data row arrived for a statement whose result was never described; a masked session cannot pass it".into(),
                        ));
                };
                rows.columns = Some(masking::result_plan(profile, db, &trace, &cols));
                rows.width = Some(cols.len());
            }
            match rows.columns.as_deref() {
                Some(cols) if !cols.is_empty() => masking::mask_row(profile, cols, f, out, pending).map_err(bad)?,
                // Nothing to mask in the columns described: a row with more
                // (or fewer) than that, or bytes beyond them, is not what was
                // planned for.
                _ => {
                    let width = rows.width.ok_or(WireError::Malformed { what: "DataRow (no RowDescription)" });
                    width.and_then(|w| wire::check_data_row(f.body, w)).map_err(bad)?;
                    out.extend_from_slice(f.raw);
                }
            }
        }
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
    // And the Binds the server skipped or refused, likewise.
    for (queue, names) in [(&mut sh.parses, &mut sh.prepared), (&mut sh.binds, &mut sh.portals)] {
        queue.retain(|(name, generation, e)| {
            if !which(*e) {
                return true;
            }
            if names.get(name).is_some_and(|p| p.generation == *generation && p.pending.is_some()) {
                names.remove(name);
            }
            false
        });
    }
}

/// Records a policy breach on the statement (if known) and ends the session.
fn breach(ctx: &Ctx, ends: &mut Vec<StatementEnd>, fl: Option<InFlight>, why: String) -> Fail {
    error!(session = %ctx.id, breach = %why, "POLICY BREACH");
    if let Some(fl) = fl {
        ends.extend(end_record(ctx, fl, None, Some(format!("POLICY BREACH: {why}"))));
    }
    Fail::Breach(why)
}
