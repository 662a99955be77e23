//! Client → backend: every Query, Parse, Bind, Execute and FunctionCall is
//! classified and decided before the server sees it; refused ones are
//! replaced by a stand-in the server rejects.
//!
//! - Statements are parsed with PostgreSQL's grammar (cached by text), then
//!   resolved against the backend's catalog with the session's search path
//!   and the code definitions not yet read back (`crate::catalog`).
//! - A prepared statement (protocol Parse or SQL PREPARE) is usable once the
//!   server confirmed it; within the exchange that prepared it, pipelined
//!   messages may use it (if preparing failed, the server skips them). Bind
//!   of a name Gatehouse has not seen prepared is refused. Every Execute is
//!   decided again, under the policy and the time of that moment, and
//!   recorded. SQL `EXECUTE name` is decided on the text `PREPARE name` had.
//! - After a statement that may change how the server reads SQL (client
//!   encoding, standard_conforming_strings, their resets and rollbacks, or
//!   code Gatehouse cannot read), the next SQL text is held until the
//!   server has answered, so it is read with the settings it will run under.
//! - The rule's guard rails hold: a read-only session cannot be made
//!   read-write, and the rule's timeouts cannot be changed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tracing::{info, warn};

use super::{
    DescribeSlot, Fail, FillError, InFlight, Prepared, Refusal, Room, Shared, fill, lock, over_budget, settle, trim,
};
use crate::audit::{Direction, Event, StatementEnd, StatementStart, StreamRecorder, now_us};
use crate::catalog::{Catalog, SessionNames, resolve};
use crate::live::Snapshot;
use crate::policy::testcases::single_kind;
use crate::policy::{Decision, Request, Verdict};
use crate::protocol::postgres::wire::{self, Frame, PgError, Severity};
use crate::protocol::postgres::{Ctx, MAX_CLIENT_MESSAGE, SessionDb};
use crate::sql::{self, Kind, ParseOptions, Statement};

/// Handles shared with the backend direction.
pub(in crate::protocol::postgres) struct Io<'a> {
    pub shared: &'a Mutex<Shared>,
    pub nonce: &'a str,
    pub rec: &'a StreamRecorder,
    /// Bumped by the backend direction whenever it has processed messages.
    pub progress: watch::Receiver<u64>,
    /// Wakes the backend direction to send queued notices to the client.
    pub wake: &'a tokio::sync::Notify,
}

/// What the client direction knows.
#[derive(Default)]
struct ClientState {
    /// Statement records to make durable before the batch is forwarded
    /// (strict mode: one journal write for the batch).
    records: Vec<Event>,
    /// Exchanges sent so far (a Query, FunctionCall or Sync ends one).
    epoch: u64,
    seq: u64,
    /// A forwarded statement whose outcome must be known before more SQL
    /// text is read (it may change how the server reads it).
    hold: Option<u64>,
    /// Everything forwarded ended an exchange: the server answers without a Flush.
    synced: bool,
    /// Offset in the recorded stream (which redaction makes differ from the real one).
    written: u64,
    /// `standard_conforming_strings` as the statements being recorded are read.
    scs: bool,
}

pub(super) async fn client_to_backend<R, W>(
    ctx: &Ctx,
    db: &SessionDb,
    cr: &mut R,
    mut buf: BytesMut,
    bw: &mut W,
    mut io: Io<'_>,
    count: &mut u64,
) -> Result<(), Fail>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut out: Vec<u8> = Vec::with_capacity(8192);
    let mut room = Room::new(ctx.svc.settings.large_message_budget);
    let mut st = ClientState { synced: true, scs: true, ..ClientState::default() };
    // Nothing is read before the login's own answer is: it tells which
    // client encoding and string syntax the server will read SQL with.
    wait_for(&mut io, bw, &mut st, |sh| sh.login_ready).await?;
    loop {
        let mut terminated = false;
        while let Some((frame, n)) = wire::decode(&buf, MAX_CLIENT_MESSAGE)? {
            *count += n as u64;
            terminated |= frame.tag == b'X';
            if matches!(frame.tag, b'Q' | b'P')
                && let Some(seq) = st.hold.take()
            {
                forward(ctx, &io, bw, &mut out, &mut st).await?;
                wait_for(&mut io, bw, &mut st, |sh| sh.completed >= seq).await?;
            }
            if frame.tag == b'B'
                && let Some(generation) = unconfirmed(&io, frame.body, st.epoch)?
            {
                forward(ctx, &io, bw, &mut out, &mut st).await?;
                wait_for(&mut io, bw, &mut st, |sh| !sh.parses.iter().any(|(_, g, _)| *g == generation)).await?;
            }
            let before = st.seq;
            let held = on_client(ctx, db, frame, &mut out, &io, &mut st).await?;
            buf.advance(n);
            if let Some(h) = held {
                hold(ctx, db, &io, bw, &mut out, &mut st, h).await?;
            }
            if st.seq != before {
                io.rec.reset();
            }
        }
        forward(ctx, &io, bw, &mut out, &mut st).await?;
        if terminated {
            return Ok(());
        }
        settle(&mut buf, &mut room);
        let more = fill(cr, &mut buf, &mut room).await.map_err(|e| match e {
            FillError::Io(e) => Fail::ClientIo(e),
            FillError::Budget(n) => Fail::Memory(over_budget("client's", n, room.budget)),
        })?;
        if !more {
            // The client went away without Terminate: say goodbye for it.
            let _ = bw.write_all(&wire::terminate()).await;
            let _ = bw.flush().await;
            return Ok(());
        }
    }
}

/// Writes what has been decided to the backend, once it is on record (strict mode).
async fn forward<W: AsyncWrite + Unpin>(
    ctx: &Ctx,
    io: &Io<'_>,
    bw: &mut W,
    out: &mut Vec<u8>,
    st: &mut ClientState,
) -> Result<(), Fail> {
    // Recorded without secrets, parameters or COPY data (see `sql::redact`).
    let mut recorded = (!out.is_empty()).then(|| {
        let view = sql::redact::StreamView {
            rules: &ctx.svc.settings.redact,
            opts: ctx.record,
            profile: ctx.mask.as_deref(),
            scs: lock(io.shared).scs,
        };
        sql::redact::client_bytes(out, &view)
    });
    if !st.records.is_empty() {
        let mut records = std::mem::take(&mut st.records);
        // The common case: the bytes that carry the batch's statements ride on
        // its last statement record (one record, made durable with it),
        // rather than in a chunk record of their own.
        if let Some(Event::Statement(s)) = records.last_mut()
            && let Some(bytes) = recorded.take()
        {
            let (data, cut) = io.rec.fold(Direction::Up, &bytes, Some(st.seq));
            s.up_offset = Some(st.written);
            s.up = data;
            st.written += bytes.len() as u64;
            records.extend(cut);
        }
        ctx.svc.audit.commit(records).await.map_err(|e| Fail::Audit(e.to_string()))?;
    }
    if !out.is_empty() {
        bw.write_all(out).await.map_err(|e| Fail::Backend(e.to_string()))?;
        bw.flush().await.map_err(|e| Fail::Backend(e.to_string()))?;
        if let Some(recorded) = recorded {
            io.rec.chunk(&ctx.svc.audit, Direction::Up, st.written, &recorded, Some(st.seq)).await;
            st.written += recorded.len() as u64;
        }
        out.clear();
        trim(out, 8192);
    }
    Ok(())
}

/// Waits until the backend direction's state satisfies `done`. If the
/// client is in the middle of an extended-protocol exchange, a Flush makes
/// the server send what it has.
async fn wait_for<W: AsyncWrite + Unpin>(
    io: &mut Io<'_>,
    bw: &mut W,
    st: &mut ClientState,
    done: impl Fn(&Shared) -> bool,
) -> Result<(), Fail> {
    if done(&lock(io.shared)) {
        return Ok(());
    }
    if !st.synced {
        bw.write_all(&wire::flush()).await.map_err(|e| Fail::Backend(e.to_string()))?;
        bw.flush().await.map_err(|e| Fail::Backend(e.to_string()))?;
    }
    loop {
        io.progress.borrow_and_update();
        let (finished, closed) = {
            let sh = lock(io.shared);
            (done(&sh), sh.backend_closed)
        };
        if finished {
            return Ok(());
        }
        if closed {
            return Err(Fail::Backend("the backend closed the connection".into()));
        }
        if io.progress.changed().await.is_err() {
            return Err(Fail::Backend("the backend direction ended".into()));
        }
    }
}

/// A Bind of a statement prepared in an earlier exchange that the server
/// has not confirmed yet: its generation (the Bind must wait for the answer).
fn unconfirmed(io: &Io<'_>, body: &[u8], epoch: u64) -> Result<Option<u64>, Fail> {
    let (_, statement) = wire::bind_names(body)?;
    let sh = lock(io.shared);
    Ok(sh.prepared.get(statement).and_then(|p| match p.pending {
        Some(e) if e < epoch => Some(p.generation),
        _ => None,
    }))
}

fn violation(msg: impl Into<String>) -> Fail {
    Fail::Client(PgError::new(Severity::Fatal, "08P01", msg))
}

/// A statement (or query text) that waits for an approval before it is
/// forwarded or refused.
struct Hold {
    batch: Batch,
    /// The message to forward once approved.
    raw: Vec<u8>,
    /// The stand-in to forward if not.
    stand_in: Vec<u8>,
    text: String,
    epoch: u64,
    /// For an Execute: its portal and the portal's name.
    portal: Option<(Prepared, Vec<u8>)>,
}

async fn on_client(
    ctx: &Ctx,
    db: &SessionDb,
    f: Frame<'_>,
    out: &mut Vec<u8>,
    io: &Io<'_>,
    st: &mut ClientState,
) -> Result<Option<Hold>, Fail> {
    st.scs = lock(io.shared).scs;
    match f.tag {
        b'Q' => {
            let text = wire::query_text(f.body)?;
            let epoch = st.epoch;
            st.epoch += 1;
            st.synced = true;
            match decide_text(ctx, db, io.shared, text, epoch).await {
                Ok(batch) => {
                    if let Some((i, refusal)) = batch.refused {
                        record_refusal(ctx, st, text, batch.statements.get(i), &refusal);
                        refuse(out, io.shared, epoch, refusal.error(ctx), &wire::query(io.nonce));
                        return Ok(None);
                    }
                    if batch.held.is_some() {
                        let text = String::from_utf8_lossy(text).into_owned();
                        return Ok(Some(Hold {
                            batch,
                            raw: f.raw.to_vec(),
                            stand_in: wire::query(io.nonce),
                            text,
                            epoch,
                            portal: None,
                        }));
                    }
                    if batch.statements.is_empty() {
                        lock(io.shared).inflight.push_back(InFlight::empty(epoch));
                    }
                    forward_batch(ctx, db, io.shared, st, &batch, epoch, None);
                    out.extend_from_slice(f.raw);
                }
                Err(err) => {
                    record_refusal(ctx, st, text, None, &Refused::Error(err.clone()));
                    refuse(out, io.shared, epoch, err, &wire::query(io.nonce));
                }
            }
        }
        b'P' => {
            let (name, text) = wire::parse_body(f.body)?;
            let epoch = st.epoch;
            st.synced = false;
            // Whatever the outcome, the old statement of this name is gone
            // (or the server refuses the re-use): never bind the old one.
            lock(io.shared).prepared.remove(name);
            match decide_text(ctx, db, io.shared, text, epoch).await {
                Ok(batch) => {
                    if let Some((i, refusal)) = batch.refused {
                        record_refusal(ctx, st, text, batch.statements.get(i), &refusal);
                        refuse(out, io.shared, epoch, refusal.error(ctx), &wire::parse(io.nonce));
                        return Ok(None);
                    }
                    // A statement that needs approval is held at Execute, not at Parse.
                    let mut sh = lock(io.shared);
                    sh.next_generation += 1;
                    let generation = sh.next_generation;
                    let text = Arc::from(String::from_utf8_lossy(text).as_ref());
                    let p = Prepared::new(text, batch.statements.into(), generation, Some(epoch))
                        .with_types(wire::parse_param_types(f.body));
                    sh.prepared.insert(name.to_vec(), p);
                    sh.parses.push_back((name.to_vec(), generation, epoch));
                    drop(sh);
                    out.extend_from_slice(f.raw);
                }
                Err(err) => {
                    record_refusal(ctx, st, text, None, &Refused::Error(err.clone()));
                    refuse(out, io.shared, epoch, err, &wire::parse(io.nonce));
                }
            }
        }
        b'B' | b'E' if refused_in(io.shared, st.epoch) => {
            // The server skips everything up to Sync after the stand-in's error.
            st.synced = false;
            out.extend_from_slice(f.raw);
        }
        b'B' => {
            let (portal, statement) = wire::bind_names(f.body)?;
            let formats = wire::bind_result_formats(f.body)?;
            let epoch = st.epoch;
            st.synced = false;
            let mut sh = lock(io.shared);
            let usable = sh.prepared.get(statement).filter(|p| p.pending.is_none_or(|e| e == epoch)).cloned();
            match usable {
                Some(p) => {
                    if !portal.is_empty() {
                        sh.bound.insert(portal.to_vec(), epoch);
                    }
                    sh.next_generation += 1;
                    let generation = sh.next_generation;
                    sh.portals.insert(portal.to_vec(), p.bind(formats, f.body, generation, epoch));
                    sh.binds.push_back((portal.to_vec(), generation, epoch));
                    drop(sh);
                    out.extend_from_slice(f.raw);
                }
                None => {
                    sh.portals.remove(portal);
                    drop(sh);
                    let name = String::from_utf8_lossy(statement);
                    let why = Refused::Error(
                        PgError::new(
                            Severity::Error,
                            "26000",
                            format!("Gatehouse refused this Bind: prepared statement \"{name}\" was not prepared through Gatehouse"),
                        )
                        .hint("prepare it (Parse or PREPARE) in this session first"),
                    );
                    record_refusal(ctx, st, format!("(Bind of prepared statement \"{name}\")").as_bytes(), None, &why);
                    refuse(out, io.shared, epoch, why.error(ctx), &wire::parse(io.nonce));
                }
            }
        }
        b'E' => {
            let portal = wire::execute_portal(f.body)?;
            let epoch = st.epoch;
            st.synced = false;
            // A portal the server has not confirmed yet: only within its Bind's exchange.
            let p = lock(io.shared).portals.get(portal).filter(|p| p.pending.is_none_or(|e| e == epoch)).cloned();
            let Some(p) = p else {
                let name = String::from_utf8_lossy(portal);
                let why = Refused::Error(PgError::new(
                    Severity::Error,
                    "34000",
                    format!("Gatehouse refused this Execute: portal \"{name}\" was not bound through Gatehouse"),
                ));
                record_refusal(ctx, st, format!("(Execute of portal \"{name}\")").as_bytes(), None, &why);
                refuse(out, io.shared, epoch, why.error(ctx), &wire::parse(io.nonce));
                return Ok(None);
            };
            // Decided again now: the policy, the time and the catalog may have changed since Parse.
            let mut batch = match redecide(ctx, db, io.shared, &p.statements, epoch).await {
                Ok(batch) => batch,
                Err(err) => {
                    record_refusal(ctx, st, p.text.as_bytes(), None, &Refused::Error(err.clone()));
                    refuse(out, io.shared, epoch, err, &wire::parse(io.nonce));
                    return Ok(None);
                }
            };
            if let Some((i, refusal)) = batch.refused {
                record_refusal(ctx, st, p.text.as_bytes(), batch.statements.get(i), &refusal);
                refuse(out, io.shared, epoch, refusal.error(ctx), &wire::parse(io.nonce));
                return Ok(None);
            }
            for s in &mut batch.statements {
                s.text = p.text.to_string();
            }
            if batch.held.is_some() {
                return Ok(Some(Hold {
                    batch,
                    raw: f.raw.to_vec(),
                    stand_in: wire::parse(io.nonce),
                    text: p.text.to_string(),
                    epoch,
                    portal: Some((p.clone(), portal.to_vec())),
                }));
            }
            if batch.statements.is_empty() {
                lock(io.shared).inflight.push_back(InFlight::empty(epoch));
            }
            // Its rows come without a RowDescription: the portal's describes them.
            forward_batch(ctx, db, io.shared, st, &batch, epoch, Some(&p));
            describe_for_execute(ctx, io.shared, &p, portal, epoch, out);
            out.extend_from_slice(f.raw);
        }
        b'C' => {
            let (kind, name) = wire::target_name(f.body, "Close")?;
            let mut sh = lock(io.shared);
            if kind == b'S' {
                sh.prepared.remove(name);
            } else {
                sh.portals.remove(name);
            }
            drop(sh);
            st.synced = false;
            out.extend_from_slice(f.raw);
        }
        b'D' => {
            let (kind, name) = wire::target_name(f.body, "Describe")?;
            let mut sh = lock(io.shared);
            let found = if kind == b'S' { sh.prepared.get(name) } else { sh.portals.get(name) };
            // Unknown names get an answer slot too, so answers stay in order.
            let target = found.map(Prepared::describe_target).unwrap_or_default();
            sh.describes.push_back(DescribeSlot { epoch: st.epoch, targets: target, own: false });
            drop(sh);
            st.synced = false;
            out.extend_from_slice(f.raw);
        }
        b'S' => {
            st.epoch += 1;
            st.synced = true;
            out.extend_from_slice(f.raw);
        }
        b'F' => {
            let epoch = st.epoch;
            st.epoch += 1;
            st.synced = true;
            let current = ctx.svc.snapshot.load_full();
            let s = Statement { text: "(FunctionCall message)".into(), ..single_kind(Kind::FunctionCall) };
            let d = decide_one(ctx, &current, &s);
            if ctx.mask.is_some() {
                // A function by its OID (libpq's fast path): no statement to trace,
                // so nothing says what it reads (`table_to_xml` of a masked table).
                let why = Refused::Error(
                    PgError::new(
                        Severity::Error,
                        "42501",
                        "Gatehouse refused this function call: a FunctionCall message calls a function by its OID, whose result masking cannot follow; it is refused on masked sessions",
                    )
                    .hint("call the function in a SELECT"),
                );
                record_refusal(ctx, st, s.text.as_bytes(), Some(&s), &why);
                refuse(out, io.shared, epoch, why.error(ctx), &wire::query(io.nonce));
            } else if let Some(a) = standing_hold(ctx, &current) {
                // A FunctionCall message is not held (it has no text to show an approver): refused.
                let why = Refused::Error(PgError::new(
                    Severity::Error,
                    "42501",
                    format!("Gatehouse refused this function call: {}; your statements wait for approval", a.reason),
                ));
                record_refusal(ctx, st, s.text.as_bytes(), Some(&s), &why);
                refuse(out, io.shared, epoch, why.error(ctx), &wire::query(io.nonce));
            } else if d.verdict == Verdict::Allow {
                let seq = record_allowed(ctx, st, &s, &d);
                let flight = effects_at_forward(ctx, db, io.shared, st, &s, seq, epoch);
                lock(io.shared).inflight.push_back(flight);
                out.extend_from_slice(f.raw);
            } else {
                let why = Refused::Policy(d);
                record_refusal(ctx, st, s.text.as_bytes(), Some(&s), &why);
                refuse(out, io.shared, epoch, why.error(ctx), &wire::query(io.nonce));
            }
        }
        b'H' => out.extend_from_slice(f.raw),
        b'd' | b'c' | b'f' | b'X' => out.extend_from_slice(f.raw),
        other => return Err(violation(format!("unexpected message type {:?} from the client", char::from(other)))),
    }
    Ok(None)
}

/// Records and tracks every statement of an allowed batch. `portal`: the
/// portal an Execute runs (its rows are described by it, not by a RowDescription).
fn forward_batch(
    ctx: &Ctx,
    db: &SessionDb,
    shared: &Mutex<Shared>,
    st: &mut ClientState,
    batch: &Batch,
    epoch: u64,
    portal: Option<&Prepared>,
) {
    for (s, d) in batch.statements.iter().zip(&batch.decisions) {
        let seq = record_allowed(ctx, st, s, d);
        let mut flight = effects_at_forward(ctx, db, shared, st, s, seq, epoch);
        flight.portal = portal.cloned();
        lock(shared).inflight.push_back(flight);
    }
}

/// On masked and trailed sessions, an Execute's rows are described by its
/// portal as the server bound it. The server analyses a prepared statement
/// again at Bind when the search path or a relation it reads changed since
/// it was prepared, so the statement's own earlier description may be
/// another relation's (`SET search_path` between Parse and Bind: the same
/// name, a masked view). Unless the client described the portal itself,
/// Gatehouse sends a Describe of it before the Execute and keeps the answer.
fn describe_for_execute(ctx: &Ctx, shared: &Mutex<Shared>, p: &Prepared, name: &[u8], epoch: u64, out: &mut Vec<u8>) {
    let Some(rows) = &p.portal else { return };
    if (ctx.mask.is_none() && !super::backend::trailing(ctx)) || rows.described.get().is_some() {
        return;
    }
    let mut sh = lock(shared);
    if sh.describes.iter().any(|d| d.targets.iter().any(|t| t.is(&rows.described))) {
        return;
    }
    sh.describes.push_back(DescribeSlot { epoch, targets: vec![rows.described.clone()], own: true });
    drop(sh);
    out.extend_from_slice(&wire::describe_portal(name));
}

/// Holds a statement for approval: what was decided before it goes to the
/// server first; the client is told who must approve (a NoticeResponse);
/// then it waits — the rest of a pipeline waits behind it — until an
/// approver decides, the request times out, or the client cancels.
async fn hold<W: AsyncWrite + Unpin>(
    ctx: &Ctx,
    db: &SessionDb,
    io: &Io<'_>,
    bw: &mut W,
    out: &mut Vec<u8>,
    st: &mut ClientState,
    h: Hold,
) -> Result<(), Fail> {
    forward(ctx, io, bw, out, st).await?;
    let Some(i) = h.batch.held else { return Ok(()) };
    let (Some(s), Some(d)) = (h.batch.statements.get(i), h.batch.decisions.get(i)) else { return Ok(()) };
    let snapshot = ctx.svc.snapshot.load_full();
    let approval =
        snapshot.policy.rules.iter().find(|r| Some(&r.name) == d.rule.as_ref()).and_then(|r| r.approval.clone());
    let alert = h.batch.alert.clone();
    let Some(approval) = approval else {
        let why = match &alert {
            // Nobody to ask: refused (the hold stands, so is every statement after it, until it lapses).
            Some(a) => Refused::Error(
                PgError::new(
                    Severity::Error,
                    "42501",
                    format!(
                        "Gatehouse refused this statement: {}; its action holds your statements for approval, and rule {:?} names no approvers",
                        a.reason,
                        d.rule_label()
                    ),
                )
                .hint("the operators give the rule an approval (approval = { …, by = \"…\" }), or the hold lapses at the end of the alert's window"),
            ),
            None => Refused::Policy(d.clone()),
        };
        record_refusal(ctx, st, h.text.as_bytes(), Some(s), &why);
        refuse(out, io.shared, h.epoch, why.error(ctx), &h.stand_in);
        return Ok(());
    };
    // Approvers see the statement (its literals, which they decide on) but not its secrets; so does the record.
    let secrets_only = sql::redact::RecordOptions::default();
    // And the values an Execute's parameters are bound to (the Bind reached
    // the server already: the Execute runs with exactly these), unless the
    // text may put one where a secret goes.
    let mut parameters = h.portal.as_ref().map(|(p, _)| p.parameters()).unwrap_or_default();
    if !parameters.is_empty() && ctx.svc.settings.redact.might_hold_secret(&h.text) {
        parameters = vec!["(not shown: the statement may take a secret)".into()];
    }
    let subject = crate::approval::Subject::Statement {
        session: ctx.id.to_string(),
        backend: ctx.backend.name.to_string(),
        text: sql::redact::redact(&h.text, &ctx.svc.settings.redact, secrets_only, st.scs).text,
        kinds: kind_list(s),
        rule: d.rule_label().to_owned(),
        parameters,
    };
    let reason = alert.as_ref().map(|a| a.reason.clone());
    let waiting = match ctx.svc.desk.request(subject, ctx.principal.clone(), &approval, reason, d.approvers.clone()) {
        Ok(w) => w,
        Err(unopened) => {
            // configuration_limit_exceeded: the request was not opened; the session goes on.
            let why = Refused::Error(PgError::new(
                Severity::Error,
                "53400",
                format!("Gatehouse refused this statement: {unopened}"),
            ));
            record_refusal(ctx, st, h.text.as_bytes(), Some(s), &why);
            refuse(out, io.shared, h.epoch, why.error(ctx), &h.stand_in);
            return Ok(());
        }
    };
    let id = waiting.id;
    info!(request = id, approvers = %waiting.approvers, alert = ?alert.as_ref().map(|a| a.rule.as_str()), "statement held for approval");
    let because = alert.as_ref().map(|a| format!(" ({})", a.reason)).unwrap_or_default();
    let notice = PgError::new(
        Severity::Notice,
        "01000",
        format!(
            "Gatehouse is holding this statement for approval by {}{because}: request {id} (an approver runs `gatehouse approve {id}`)",
            waiting.approvers
        ),
    )
    .hint(format!(
        "it waits up to {}; cancelling the query withdraws the request",
        crate::settings::format_duration_s(approval.timeout.as_secs())
    ));
    lock(io.shared).notices.push(notice.encode());
    io.wake.notify_one();
    let desk = &ctx.svc.desk;
    let state = waiting.clone().outcome(desk.registry(), |t| desk.transition(t)).await;
    if matches!(state, crate::approval::State::Approved { .. }) {
        info!(request = id, "approved: the held statement runs");
        if let Some(a) = &alert {
            let who = super::backend::reader(ctx);
            ctx.svc.trail_holds.lift(&who.user, ctx.backend.name.as_str(), a.since_us);
        }
        forward_batch(ctx, db, io.shared, st, &h.batch, h.epoch, h.portal.as_ref().map(|(p, _)| p));
        if let Some((p, name)) = &h.portal {
            describe_for_execute(ctx, io.shared, p, name, h.epoch, out);
        }
        out.extend_from_slice(&h.raw);
    } else {
        let code = if matches!(state, crate::approval::State::Withdrawn { .. }) { "57014" } else { "42501" };
        let why = Refused::Error(PgError::new(
            Severity::Error,
            code,
            format!("Gatehouse refused this statement: {}", waiting.refusal(&state)),
        ));
        record_refusal(ctx, st, h.text.as_bytes(), Some(s), &why);
        refuse(out, io.shared, h.epoch, why.error(ctx), &h.stand_in);
    }
    Ok(())
}

/// Whether a message of exchange `epoch` was already refused: the server
/// then skips the rest of the exchange.
fn refused_in(shared: &Mutex<Shared>, epoch: u64) -> bool {
    lock(shared).refusals.back().is_some_and(|r| r.epoch == epoch)
}

/// Replaces a refused message by `stand_in` and queues the error to show.
fn refuse(out: &mut Vec<u8>, shared: &Mutex<Shared>, epoch: u64, error: PgError, stand_in: &[u8]) {
    lock(shared).refusals.push_back(Refusal { epoch, error });
    out.extend_from_slice(stand_in);
}

/// Why a statement was refused.
#[derive(Debug, Clone)]
enum Refused {
    /// The policy said no (or needs an approval).
    Policy(Decision),
    /// Gatehouse itself refuses, whatever the policy (unreadable text,
    /// unsafe encoding, a guard rail, an unknown prepared statement).
    Error(PgError),
}

impl Refused {
    fn error(&self, ctx: &Ctx) -> PgError {
        match self {
            Self::Policy(d) => refusal_error(ctx, d),
            Self::Error(e) => e.clone(),
        }
    }

    fn rule(&self) -> Option<String> {
        match self {
            Self::Policy(d) => d.rule.as_ref().map(ToString::to_string),
            Self::Error(_) => None,
        }
    }

    fn reason(&self) -> String {
        match self {
            Self::Policy(d) => d.reason().into_owned(),
            Self::Error(e) => e.message.clone(),
        }
    }

    fn verdict(&self) -> crate::audit::Verdict {
        match self {
            Self::Policy(d) => d.verdict.into(),
            Self::Error(_) => crate::audit::Verdict::Deny,
        }
    }
}

/// A query text classified and decided, statement by statement.
struct Batch {
    statements: Vec<Statement>,
    decisions: Vec<Decision>,
    /// The first statement refused, and why: the whole text is refused.
    refused: Option<(usize, Refused)>,
    /// Otherwise, the first statement that needs a human's approval: the
    /// whole text waits for it.
    held: Option<usize>,
    /// A trail alert's hold that stands for the user (then `held` is set):
    /// the request names it, and approving it lifts the hold.
    alert: Option<crate::trail::alerts::Standing>,
}

/// What a session classifies with: the catalog and its names.
fn session_view(db: &SessionDb, shared: &Mutex<Shared>, ctx: &Ctx) -> (Arc<Catalog>, SessionNames) {
    let interval = ctx.svc.settings.catalog_refresh;
    if db.catalog.is_stale(interval) {
        crate::protocol::postgres::catalog::refresh(ctx, &db.catalog, &db.login, &db.database);
    }
    // With whether a statement of this session or another of the login may
    // have moved names since this catalog was read (one look at the entry).
    let ((cat, pending), names_moved) =
        db.catalog.snapshot_for_names().unwrap_or_else(|| ((Arc::new(Catalog::default()), Vec::new()), false));
    let sh = lock(shared);
    let names = SessionNames {
        // The login's default is the path the session began with.
        search_path: sh.path.current.clone().or_else(|| db.search_path.clone()),
        path_unknown: sh.path.unknown || sh.path.in_flight > 0 || sh.path.tentative.is_some(),
        pending,
        names_moved,
        role_changed: sh.role_changed,
    };
    (cat, names)
}

/// Classifies and decides a query text under the current policy.
async fn decide_text(
    ctx: &Ctx,
    db: &SessionDb,
    shared: &Mutex<Shared>,
    text: &[u8],
    epoch: u64,
) -> Result<Batch, PgError> {
    let text = std::str::from_utf8(text).map_err(|_| {
        PgError::new(
            Severity::Error,
            "22021",
            "Gatehouse refused this statement: it is not valid UTF-8, so it cannot be checked",
        )
        .hint("connect with client_encoding UTF8")
    })?;
    let opts = ParseOptions { standard_conforming_strings: lock(shared).scs };
    // What the text may cost is the rule's to say, before it is parsed (sql/budget.rs).
    let snapshot = ctx.svc.snapshot.load_full();
    let admitted = admitted(ctx, &snapshot);
    let statements = ctx.svc.classifier.classify(text, opts, &admitted.query_limits).await.map_err(|e| {
        let rule = admitted.rule.as_ref().map(|r| format!(" (rule {:?})", r.as_str())).unwrap_or_default();
        PgError::new(Severity::Error, e.sqlstate(), format!("Gatehouse refused this statement: {e}{rule}"))
            .hint(e.hint())
    })?;
    look_up_unknown(ctx, db, shared, &statements, &snapshot, &admitted).await?;
    Ok(decide_statements(ctx, db, shared, statements, epoch))
}

/// A relation the catalog does not hold (made outside Gatehouse since it
/// was read) is looked up before deciding where what it reads matters:
/// masking, and rules with deny_tables. `statements` carry their names as
/// written (not yet resolved).
async fn look_up_unknown(
    ctx: &Ctx,
    db: &SessionDb,
    shared: &Mutex<Shared>,
    statements: &[Statement],
    snapshot: &Snapshot,
    admitted: &Decision,
) -> Result<(), PgError> {
    if !(ctx.mask.is_some() || snapshot.policy.may_deny_tables(admitted)) {
        return Ok(());
    }
    let Some((cat, _)) = db.catalog.snapshot() else { return Ok(()) };
    // The search paths the text's names may be read with: the session's
    // and those its own SETs make (none when the path is not known, so
    // every unqualified name is looked up).
    let session_path = {
        let sh = lock(shared);
        let known = !(sh.path.unknown || sh.path.in_flight > 0 || sh.path.tentative.is_some() || sh.role_changed);
        known.then(|| sh.path.current.clone())
    };
    // `None` (the login's default) is the path the session began with.
    let began = db.search_path.as_deref();
    let paths: Vec<Option<&[String]>> = match &session_path {
        None => Vec::new(),
        Some(current) => std::iter::once(current.as_deref())
            .chain(statements.iter().filter_map(|s| s.effects.search_path.as_ref()).map(Option::as_deref))
            .map(|p| p.or(began))
            .collect(),
    };
    // What a CREATE makes does not exist yet (what it reads is in its reads).
    let unknown = statements.iter().any(|s| {
        let created = s.kinds.contains(&crate::sql::Kind::Create);
        s.reads.iter().chain(s.writes.iter().filter(|_| !created)).any(|t| !cat.knows_relation_on(t, &paths))
    });
    // SQL `EXECUTE name`: the names of the statement it runs, as written.
    let unknown = unknown
        || statements.iter().filter_map(|s| s.effects.execute.as_deref()).any(|name| {
            let sh = lock(shared);
            let Some(p) = sh.prepared.get(name.as_bytes()) else { return false };
            p.statements
                .iter()
                .filter_map(|s| s.written.as_deref())
                .any(|w| w.reads.iter().chain(&w.writes).any(|t| !cat.knows_relation_on(t, &paths)))
        });
    if unknown
        && crate::protocol::postgres::catalog::reread_for_unknown(
            ctx,
            &db.catalog,
            &db.login,
            &db.database,
            ctx.principal.uid.0,
        )
        .await
        .is_err()
    {
        return Err(PgError::new(
            Severity::Error,
            "53400",
            "Gatehouse refused this statement: it names a relation the backend catalog does not hold, and the catalog has been read for such names too often for you in the last second",
        )
        .hint("try again in a second"));
    }
    Ok(())
}

/// Decides statements prepared earlier, again, for an Execute: under the
/// policy, time, catalog and search path of this moment (a name the
/// catalog does not hold is looked up first, as for a text).
async fn redecide(
    ctx: &Ctx,
    db: &SessionDb,
    shared: &Mutex<Shared>,
    statements: &[Statement],
    epoch: u64,
) -> Result<Batch, PgError> {
    let mut statements = statements.to_vec();
    for s in &mut statements {
        s.unresolve();
    }
    let snapshot = ctx.svc.snapshot.load_full();
    look_up_unknown(ctx, db, shared, &statements, &snapshot, &admitted(ctx, &snapshot)).await?;
    Ok(decide_statements(ctx, db, shared, statements, epoch))
}

/// The rule this session's user is admitted by on its backend now.
fn admitted(ctx: &Ctx, snapshot: &Snapshot) -> Decision {
    snapshot.policy.decide_connect_with(
        &ctx.principal,
        &ctx.backend.name,
        jiff::Timestamp::now(),
        &ctx.svc.grant_rules.load(),
    )
}

/// Resolves each statement against the catalog (from its names as
/// written) with the names the earlier statements of the same text set,
/// then decides it.
fn decide_statements(
    ctx: &Ctx,
    db: &SessionDb,
    shared: &Mutex<Shared>,
    mut statements: Vec<Statement>,
    epoch: u64,
) -> Batch {
    let (cat, mut names) = session_view(db, shared, ctx);
    let snapshot = ctx.svc.snapshot.load_full();
    let mut local: HashMap<String, Statement> = HashMap::new();
    let mut declared: Vec<&str> = Vec::new();
    let mut decisions = Vec::with_capacity(statements.len());
    let mut refused = None;
    for (i, s) in statements.iter_mut().enumerate() {
        // Resolved from the names as written every time, a prepared
        // statement's included: the server analyses it again when the
        // search path changed or a relation it reads did, and reads what the
        // names mean then.
        s.unresolve();
        if let Some(name) = s.effects.execute.clone() {
            substitute_execute(s, &name, &local, shared, epoch);
        }
        resolve(s, &cat, &names);
        if let Some(name) = &s.effects.prepare {
            local.insert(name.clone(), prepared_part(s));
        }
        // What this statement changes, for the ones after it in the same text.
        match &s.effects.search_path {
            Some(path) => {
                names.search_path = path.as_deref().map(Arc::from).or_else(|| db.search_path.clone());
                names.path_unknown = false;
            }
            None if unsettles_path(s) => names.path_unknown = true,
            // Back to a savepoint or to before the transaction: a path set
            // since reverts to one this text cannot know.
            None if s.effects.rollback => names.path_unknown = true,
            None => {}
        }
        names.pending.extend(s.effects.defines.iter().cloned());
        names.names_moved |= s.effects.moves_names;
        names.role_changed |= changes_role(s);
        if refused.is_some() {
            continue;
        }
        if let Some(e) = fetch_of_portal(shared, s, &declared) {
            refused = Some((i, Refused::Error(e)));
            continue;
        }
        if let Some(name) = &s.effects.declares {
            declared.push(name);
        }
        if let Some(e) = gatehouse_refusal(ctx, s).or_else(|| super::masking::refusal(ctx, &cat, s)) {
            refused = Some((i, Refused::Error(e)));
            continue;
        }
        let d = decide_one(ctx, &snapshot, s);
        if d.verdict == Verdict::Deny {
            refused = Some((i, Refused::Policy(d.clone())));
        }
        decisions.push(d);
    }
    let mut held =
        if refused.is_some() { None } else { decisions.iter().position(|d| d.verdict == Verdict::NeedsApproval) };
    // An `[[alert]]` with `action = "hold"` stands for this user on this
    // backend: the text waits for an approval naming it.
    let alert = if refused.is_none() && !decisions.is_empty() { standing_hold(ctx, &snapshot) } else { None };
    if alert.is_some() {
        held = held.or(Some(0));
    }
    Batch { statements, decisions, refused, held, alert }
}

/// SQL `FETCH`/`MOVE` from a portal the client bound with the extended
/// protocol (one namespace on the server): it would run the portal's
/// statement — a `DELETE … RETURNING` included — as a FETCH, past the
/// decision, approval and masking its Execute gets. Refused until the
/// transaction of the Bind has ended (see `Shared::bound`); a cursor the
/// session declared with SQL under another name is fetched as usual.
fn fetch_of_portal(shared: &Mutex<Shared>, s: &Statement, declared: &[&str]) -> Option<PgError> {
    let name = s.effects.fetches.as_deref()?;
    if declared.contains(&name) || !lock(shared).bound.contains_key(name.as_bytes()) {
        return None;
    }
    Some(
        PgError::new(
            Severity::Error,
            "0A000",
            format!(
                "Gatehouse refused this statement: \"{name}\" is a portal bound with the extended protocol, and FETCH or MOVE would run its statement without the decision an Execute gets"
            ),
        )
        .hint("send an Execute message for it, or DECLARE a cursor"),
    )
}

/// The trail alert hold standing for this session's user on its backend, if any.
fn standing_hold(ctx: &Ctx, snapshot: &Snapshot) -> Option<crate::trail::alerts::Standing> {
    let rules = &snapshot.policy.trail.alerts;
    if !rules.iter().any(|r| r.action == crate::trail::AlertAction::Hold) {
        return None;
    }
    let who = super::backend::reader(ctx);
    ctx.svc.trail_holds.standing(&who.user, ctx.backend.name.as_str(), rules, now_us())
}

/// The statement `PREPARE name AS …` prepares: its kinds without `prepare`.
fn prepared_part(s: &Statement) -> Statement {
    let mut p = s.clone();
    p.kinds.remove(&Kind::Prepare);
    if p.kinds.is_empty() {
        p.kinds.insert(Kind::Other);
    }
    p.effects = Default::default();
    p
}

/// `EXECUTE name` of a statement whose text Gatehouse decided in this
/// session is what that statement does (plus whatever the EXECUTE's own
/// parameters do); of an unknown one, it stays the opaque `execute`.
fn substitute_execute(
    s: &mut Statement,
    name: &str,
    local: &HashMap<String, Statement>,
    shared: &Mutex<Shared>,
    epoch: u64,
) {
    let found = local.get(name).cloned().or_else(|| {
        let sh = lock(shared);
        let p = sh.prepared.get(name.as_bytes()).filter(|p| p.pending.is_none_or(|e| e == epoch))?;
        match p.statements.as_ref() {
            [one] => Some(one.clone()),
            _ => None,
        }
    });
    let Some(p) = found else { return };
    // `CREATE TABLE … AS EXECUTE name`: the prepared query's rows are stored, not returned.
    let stores = s.kinds.contains(&Kind::Create);
    s.kinds.remove(&Kind::Execute);
    s.kinds.extend(p.kinds.iter().copied());
    // Its names as written: resolved with the path the EXECUTE runs under
    // (the server analyses the prepared statement again if it changed).
    let written = p.written.clone().unwrap_or_else(|| {
        Arc::new(sql::Written {
            reads: p.reads.clone(),
            writes: p.writes.clone(),
            pending_where: p.pending_where.clone(),
        })
    });
    for (into, from) in [
        (&mut s.reads, &written.reads),
        (&mut s.writes, &written.writes),
        (&mut s.via_views, &p.via_views),
        (&mut s.sensitive, &p.sensitive),
    ] {
        for t in from {
            if !into.contains(t) {
                into.push(t.clone());
            }
        }
    }
    s.pending_where.extend(written.pending_where.iter().cloned());
    for f in &p.functions {
        if !s.functions.contains(f) {
            s.functions.push(f.clone());
        }
    }
    s.effects.changes_reading |= p.effects.changes_reading;
    s.lineage = match (&p.lineage, stores) {
        (Some(l), true) => {
            let mut l = (**l).clone();
            let rows = std::mem::take(&mut l.outputs);
            l.stored.extend(rows);
            l.exact = false;
            Some(std::sync::Arc::new(l))
        }
        (l, _) => l.clone(),
    };
}

/// Kinds whose effect on the session cannot be read from the text.
fn opaque(s: &Statement) -> bool {
    s.kinds.iter().any(|k| matches!(k, Kind::FunctionCall | Kind::Do | Kind::Call | Kind::Execute))
}

/// Whether the search path the server reads names with may change in ways
/// the text does not say: code Gatehouse cannot read, `SET LOCAL
/// search_path` (it ends with the transaction), and `SET ROLE` / `SET
/// SESSION AUTHORIZATION` (`$user` is the current role, and the schemas
/// the server skips are those the current role may not use). Statements
/// that drop, rename or move relations or change what the role may use
/// leave the path known but let a name reach past any schema holding it
/// (the catalog entry's `moving` list), until the catalog is read again.
fn unsettles_path(s: &Statement) -> bool {
    changes_role(s) || s.effects.local_search_path
}

/// Whether the current role may change: `SET ROLE`, `SET SESSION
/// AUTHORIZATION`, or code Gatehouse cannot read (`set_config('role', …)`).
/// A `SET search_path` after it settles the path but not who `$user` is.
fn changes_role(s: &Statement) -> bool {
    opaque(s) || s.kinds.contains(&Kind::SetRole)
}

/// Refusals that no policy can lift.
fn gatehouse_refusal(ctx: &Ctx, s: &Statement) -> Option<PgError> {
    if let Some(enc) = &s.effects.unsafe_encoding {
        return Some(
            PgError::new(
                Severity::Error,
                "22023",
                format!("Gatehouse refused this statement: client encoding {enc} cannot be read safely"),
            )
            .hint("its multi-byte characters can hide quotes and backslashes; use UTF8"),
        );
    }
    if ctx.guard.read_only && s.effects.read_write {
        return Some(
            PgError::new(
                Severity::Error,
                "25006",
                "Gatehouse refused this statement: this session is read-only (its rule allows no writes)",
            )
            .hint("the rule's statements cannot write, so Gatehouse logged in with default_transaction_read_only = on"),
        );
    }
    if let Some(setting) = s.effects.settings.iter().find(|n| ctx.guard.protects(n)) {
        return Some(PgError::new(
            Severity::Error,
            "42501",
            format!("Gatehouse refused this statement: {setting} is set by the rule that allowed this session"),
        ));
    }
    None
}

/// What a forwarded statement does to the session state.
fn effects_at_forward(
    ctx: &Ctx,
    db: &SessionDb,
    shared: &Mutex<Shared>,
    st: &mut ClientState,
    s: &Statement,
    seq: u64,
    epoch: u64,
) -> InFlight {
    let mut flight = InFlight::new(seq, epoch, s);
    let mut sh = lock(shared);
    if let Some(name) = &s.effects.prepare {
        sh.next_generation += 1;
        let generation = sh.next_generation;
        let p = Prepared::new(Arc::from(s.text.as_str()), Arc::from(vec![prepared_part(s)]), generation, Some(epoch));
        sh.prepared.insert(name.as_bytes().to_vec(), p);
        flight.prepares = Some((name.as_bytes().to_vec(), generation));
    }
    match &s.effects.deallocate {
        Some(Some(name)) => {
            sh.prepared.remove(name.as_bytes());
        }
        Some(None) => sh.prepared.clear(),
        None => {}
    }
    if s.effects.discard_all {
        sh.portals.clear();
    }
    sh.role_changed |= changes_role(s);
    if s.effects.search_path.is_some() {
        sh.path.in_flight += 1;
    } else if unsettles_path(s) {
        sh.path.unknown = true;
    }
    if !s.effects.defines.is_empty() || s.kinds.contains(&Kind::DefineCode) {
        sh.defined_in_txn = true;
    }
    drop(sh);
    if !s.effects.defines.is_empty() {
        db.catalog.add_pending(ctx.id, epoch, &s.effects.defines);
    }
    if s.effects.moves_names {
        db.catalog.add_moving(ctx.id, epoch);
    }
    if s.effects.changes_reading || opaque(s) {
        st.hold = Some(seq);
    }
    flight
}

/// Decides one statement for this session under `snapshot`.
fn decide_one(ctx: &Ctx, snapshot: &Snapshot, s: &Statement) -> Decision {
    let d = snapshot.policy.decide_with(
        &ctx.principal,
        &Request { backend: &ctx.backend.name, statement: Some(s), now: jiff::Timestamp::now() },
        &ctx.svc.grant_rules.load(),
    );
    // The login cannot change mid-session: a policy that now maps this user
    // to another backend role refuses until they reconnect.
    if d.verdict == Verdict::Allow && d.as_role != ctx.as_role {
        let role = d.as_role.as_ref().map_or("the default login", |r| r.as_str());
        return Decision::refuse(format!(
            "the policy changed: rule {:?} now maps you to backend role {role}; reconnect",
            d.rule_label()
        ));
    }
    if d.verdict == Verdict::Allow && d.mask.as_deref() != ctx.mask.as_ref().map(|m| m.name()) {
        return Decision::refuse(format!(
            "the policy changed the masking of this session (rule {:?}); reconnect",
            d.rule_label()
        ));
    }
    if d.verdict == Verdict::Allow && d.guard != ctx.guard {
        return Decision::refuse(format!(
            "the policy changed the guard rails of this session (rule {:?}); reconnect",
            d.rule_label()
        ));
    }
    d
}

fn refusal_error(ctx: &Ctx, d: &Decision) -> PgError {
    let user = ctx.principal.user.as_ref().map_or_else(|| ctx.uid.to_string(), ToString::to_string);
    let hint = format!(
        "ask the operators; `gatehouse policy explain --user {user} --backend {} --sql '…'` shows the rules considered",
        ctx.backend.name
    );
    match d.verdict {
        Verdict::NeedsApproval => PgError::new(
            Severity::Error,
            "42501",
            format!(
                "Gatehouse refused this statement: it needs approval by {} (rule {:?}), and approvals are not enforced by this agent yet",
                d.approvers.as_deref().unwrap_or("an approver"),
                d.rule_label()
            ),
        )
        .hint(hint),
        _ => PgError::new(Severity::Error, "42501", format!("Gatehouse refused this statement: {}", d.reason())).hint(hint),
    }
}

fn kind_list(s: &Statement) -> sql::KindList {
    sql::KindList::of(&s.kinds)
}

fn table_list(s: &Statement) -> sql::TableList {
    sql::TableList::of(s.reads.iter().chain(&s.writes))
}

/// A statement's text as recorded: secrets removed, literals replaced on
/// masked sessions, read with the session's `standard_conforming_strings`.
fn recorded_text(ctx: &Ctx, st: &ClientState, text: &str) -> sql::redact::Redacted {
    sql::redact::redact(text, &ctx.svc.settings.redact, ctx.record, st.scs)
}

fn record_allowed(ctx: &Ctx, st: &mut ClientState, s: &Statement, d: &Decision) -> u64 {
    st.seq += 1;
    let text = recorded_text(ctx, st, &s.text);
    let ev = StatementStart {
        session: ctx.id,
        seq: st.seq,
        started_us: now_us(),
        text: text.text,
        redacted: text.secrets,
        kinds: kind_list(s),
        tables: table_list(s),
        decision: d.verdict.into(),
        rule: d.rule.as_ref().map(|r| r.as_str().to_owned()),
        reason: None,
        up_offset: None,
        up: Vec::new(),
        up_len: None,
        end: None,
    };
    st.records.push(Event::Statement(Box::new(ev)));
    st.seq
}

fn record_refusal(ctx: &Ctx, st: &mut ClientState, text: &[u8], s: Option<&Statement>, why: &Refused) {
    st.seq += 1;
    // Refused statements keep no secret either, and a parse error never echoes the text.
    let mut text = recorded_text(ctx, st, &String::from_utf8_lossy(text));
    // And a refused text of any length costs the audit queue at most 64 KiB.
    text.text = sql::budget::recorded_refusal(text.text);
    let reason = sql::redact::reason(&why.reason());
    info!(
        rule = why.rule().as_deref().unwrap_or("(gatehouse)"),
        kinds = s.map(kind_list).unwrap_or_default().to_string(),
        "statement refused: {reason}"
    );
    let ev = StatementStart {
        session: ctx.id,
        seq: st.seq,
        started_us: now_us(),
        kinds: s.map(kind_list).unwrap_or_default(),
        tables: s.map(table_list).unwrap_or_default(),
        text: text.text,
        redacted: text.secrets,
        decision: why.verdict(),
        rule: why.rule(),
        reason: Some(reason),
        up_offset: None,
        up: Vec::new(),
        up_len: None,
        end: None,
    };
    // Waited for like an allowed statement's record (a client whose texts are
    // refused as fast as it sends them must not outrun the audit store), and
    // in order with them: made durable with the batch that carries the refusal.
    st.records.push(Event::Statement(Box::new(ev)));
}

pub(super) fn statement_end(ctx: &Ctx, f: InFlight, rows: Option<u64>, error: Option<String>) {
    if let Some(ev) = end_record(ctx, f, rows, error)
        && let Err(e) = ctx.svc.audit.statement_end(ev)
    {
        warn!(error = %e, "cannot record the end of a statement");
    }
}

/// The record of how a statement ended (`None` for an empty query, which has none).
pub(super) fn end_record(ctx: &Ctx, f: InFlight, rows: Option<u64>, error: Option<String>) -> Option<StatementEnd> {
    if f.empty {
        return None;
    }
    let masked = (f.masked.total() > 0).then(|| {
        let m: serde_json::Map<String, serde_json::Value> =
            f.masked.iter().map(|(k, v)| (k.to_owned(), v.into())).collect();
        serde_json::Value::Object(m).to_string()
    });
    Some(StatementEnd {
        session: ctx.id,
        seq: f.seq,
        ended_us: now_us(),
        rows,
        duration_us: u64::try_from(f.started.elapsed().as_micros()).unwrap_or(u64::MAX),
        error,
        masked,
        tags: (!f.tags.is_empty()).then(|| f.tags.join("; ")),
        down_offset: None,
        down: Vec::new(),
    })
}
