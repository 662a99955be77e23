//! The relay of a PostgreSQL session: two directions, each reading whole
//! messages, deciding, and writing what may pass; bytes that need no change
//! are forwarded as they arrived.
//!
//! Refusing a statement without desynchronising the client: the refused
//! Query or Parse (or Execute, FunctionCall) is replaced by a message the
//! server must reject, `gatehouse_refused_<nonce>`, a syntax error. The
//! server then does exactly what it does after any error (skips the rest of
//! an extended pipeline up to Sync, aborts an open transaction, answers
//! ReadyForQuery), and the backend direction rewrites that one ErrorResponse
//! into Gatehouse's own (SQLSTATE 42501, naming the rule). Refusals are
//! matched to their ErrorResponse by the nonce, so a real error that comes
//! first is never mistaken for one.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::{debug, info, warn};

use super::io::Stream;
use super::wire::{self, Frame, PgError, Severity, WireError};
use super::{CancelTarget, Ctx, MAX_BACKEND_MESSAGE, MAX_CLIENT_MESSAGE};
use crate::audit::{AckFuture, Direction, Event, StatementEnd, StatementStart, StreamRecorder, now_us};
use crate::mask::{Counts, MaskOutput, Profile, Style};
use crate::policy::testcases::single_kind;
use crate::policy::{Decision, Request, Verdict};
use crate::protocol::tcp::{End, RelayOutcome};
use crate::proxy::Snapshot;
use crate::sql::{self, Kind, ParseOptions, Statement};

/// A statement forwarded to the backend, waiting for its outcome.
#[derive(Debug)]
struct InFlight {
    seq: u64,
    /// Tables the statement touches (`schema.table` or `table`), for
    /// table-qualified masking rules.
    tables: Arc<[String]>,
    /// Which ReadyForQuery ends the exchange it belongs to.
    epoch: u64,
    started: Instant,
    masked: Counts,
}

impl InFlight {
    fn new(seq: u64, epoch: u64, s: &Statement) -> Self {
        let tables: Vec<String> = s.reads.iter().chain(&s.writes).map(ToString::to_string).collect();
        Self { seq, tables: tables.into(), epoch, started: Instant::now(), masked: Counts::default() }
    }
}

/// A refusal waiting for the server's error on its stand-in message.
#[derive(Debug)]
struct Refusal {
    epoch: u64,
    error: PgError,
}

/// State both directions share (short critical sections, never across I/O).
#[derive(Debug, Default)]
struct Shared {
    inflight: VecDeque<InFlight>,
    refusals: VecDeque<Refusal>,
    /// ReadyForQuery messages received from the backend so far.
    epochs_done: u64,
    /// `standard_conforming_strings` as the server reports it.
    scs: bool,
}

fn lock(m: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Debug)]
enum Fail {
    /// A record could not be committed (strict mode): the session ends.
    Audit(String),
    /// The client broke the protocol: FATAL to it, session closed.
    Client(PgError),
    ClientIo(std::io::Error),
    Backend(String),
}

impl From<WireError> for Fail {
    fn from(e: WireError) -> Self {
        Fail::Client(PgError::new(Severity::Fatal, "08P01", format!("protocol violation: {e}")))
    }
}

/// Relays until either side ends. `client_rest`/`backend_rest`: bytes each
/// side sent before the relay started (after startup, after login).
pub(super) async fn run(
    ctx: &Ctx,
    client: Stream,
    client_rest: BytesMut,
    backend: Stream,
    backend_rest: BytesMut,
) -> RelayOutcome {
    let (mut cr, mut cw) = tokio::io::split(client);
    let (mut br, mut bw) = tokio::io::split(backend);
    let shared = Mutex::new(Shared { scs: true, ..Shared::default() });
    let nonce = format!("gatehouse_refused_{}", uuid::Uuid::new_v4().simple());
    let (mut up, mut down) = (0u64, 0u64);
    let cap = ctx.agent.settings.record_max_bytes;
    let rec = StreamRecorder::new(ctx.id, cap, "statement");
    let result = {
        let c2b = client_to_backend(ctx, &mut cr, client_rest, &mut bw, &shared, &nonce, &mut up, &rec);
        let b2c = backend_to_client(ctx, &mut br, backend_rest, &mut cw, &shared, &nonce, &mut down, &rec);
        tokio::select! {
            r = async { tokio::try_join!(c2b, b2c) } => r.map(|_| ()),
            () = ctx.live.cut.cancelled() => Err(Fail::Backend(String::new())),
        }
    };
    let end = match result {
        Ok(()) => End::Closed,
        Err(_) if ctx.live.cut.is_cancelled() => {
            let reason = ctx.live.reason();
            let e = PgError::new(Severity::Fatal, "57P01", format!("Gatehouse ended this session: {reason}"));
            let _ = cw.write_all(&e.encode()).await;
            let _ = bw.write_all(&wire::terminate()).await;
            End::Cut(reason)
        }
        Err(Fail::Client(e)) => {
            warn!(error = %e.message, "client protocol violation: closing the session");
            let _ = cw.write_all(&e.encode()).await;
            let _ = bw.write_all(&wire::terminate()).await;
            End::ClientError(e.message)
        }
        Err(Fail::ClientIo(e)) => End::ClientError(e.to_string()),
        Err(Fail::Audit(e)) => {
            let pe = PgError::new(
                Severity::Fatal,
                "58030",
                format!("Gatehouse ended this session: the audit store cannot be written ({e})"),
            );
            let _ = cw.write_all(&pe.encode()).await;
            let _ = bw.write_all(&wire::terminate()).await;
            End::Cut(format!("audit store failure: {e}"))
        }
        Err(Fail::Backend(e)) => {
            let pe = PgError::new(Severity::Fatal, "08006", format!("Gatehouse lost the backend: {e}"));
            let _ = cw.write_all(&pe.encode()).await;
            End::BackendError(e)
        }
    };
    let _ = cw.flush().await;
    let _ = cw.shutdown().await;
    let _ = bw.shutdown().await;
    // Statements still waiting for an outcome ended with the session.
    let pending: Vec<InFlight> = lock(&shared).inflight.drain(..).collect();
    for f in pending {
        statement_end(ctx, f, None, Some(format!("session ended: {}", end.describe())));
    }
    RelayOutcome { up, down, end }
}

/// Reads into `buf` until it holds at least one whole message (reserving
/// room for a large one); `Ok(false)` on a clean EOF.
async fn fill<R: AsyncRead + Unpin>(r: &mut R, buf: &mut BytesMut) -> std::io::Result<bool> {
    if let Some(need) = wire::pending_len(buf)
        && need > buf.len()
    {
        buf.reserve(need - buf.len());
    } else if buf.capacity() - buf.len() < 4096 {
        buf.reserve(8192);
    }
    Ok(r.read_buf(buf).await? > 0)
}

// ---- client → backend ----

/// What the client side knows about prepared statements and portals.
#[derive(Default)]
struct ClientState {
    /// Commits to wait for before the batch is forwarded (strict mode).
    acks: Vec<AckFuture>,
    /// Exchanges sent so far (a Query, FunctionCall or Sync ends one).
    epoch: u64,
    seq: u64,
    prepared: HashMap<Vec<u8>, Prepared>,
    portals: HashMap<Vec<u8>, Vec<u8>>,
}

struct Prepared {
    text: String,
    statements: Vec<Statement>,
    /// The policy the statement was decided under.
    decided_under: Arc<Snapshot>,
}

#[expect(clippy::too_many_arguments, reason = "the direction's state, passed explicitly")]
async fn client_to_backend<R, W>(
    ctx: &Ctx,
    cr: &mut R,
    mut buf: BytesMut,
    bw: &mut W,
    shared: &Mutex<Shared>,
    nonce: &str,
    count: &mut u64,
    rec: &StreamRecorder,
) -> Result<(), Fail>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut out: Vec<u8> = Vec::with_capacity(8192);
    let mut st = ClientState::default();
    let mut written = 0u64;
    loop {
        let mut terminated = false;
        while let Some((frame, n)) = wire::decode(&buf, MAX_CLIENT_MESSAGE)? {
            *count += n as u64;
            terminated |= frame.tag == b'X';
            let before = st.seq;
            on_client(ctx, frame, &mut out, shared, nonce, &mut st).await?;
            if st.seq != before {
                rec.reset();
            }
            buf.advance(n);
        }
        // Strict: what is forwarded is on record first.
        for ack in st.acks.drain(..) {
            ack.wait().await.map_err(|e| Fail::Audit(e.to_string()))?;
        }
        if !out.is_empty() {
            bw.write_all(&out).await.map_err(|e| Fail::Backend(e.to_string()))?;
            bw.flush().await.map_err(|e| Fail::Backend(e.to_string()))?;
            rec.chunk(&ctx.agent.audit, Direction::Up, written, &out, Some(st.seq));
            written += out.len() as u64;
            out.clear();
        }
        if terminated {
            return Ok(());
        }
        if !fill(cr, &mut buf).await.map_err(Fail::ClientIo)? {
            // The client went away without Terminate: say goodbye for it.
            let _ = bw.write_all(&wire::terminate()).await;
            let _ = bw.flush().await;
            return Ok(());
        }
    }
}

fn violation(msg: impl Into<String>) -> Fail {
    Fail::Client(PgError::new(Severity::Fatal, "08P01", msg))
}

async fn on_client(
    ctx: &Ctx,
    f: Frame<'_>,
    out: &mut Vec<u8>,
    shared: &Mutex<Shared>,
    nonce: &str,
    st: &mut ClientState,
) -> Result<(), Fail> {
    match f.tag {
        b'Q' => {
            let text = wire::query_text(f.body)?;
            let epoch = st.epoch;
            st.epoch += 1;
            match decide_text(ctx, shared, text).await {
                Ok((_, statements, decisions)) => {
                    if let Some(i) = decisions.iter().position(|d| d.verdict != Verdict::Allow) {
                        let d = decisions.get(i).cloned().unwrap_or_else(|| Decision::refuse("refused"));
                        record_refusal(ctx, st, text, statements.get(i), &d);
                        refuse(out, shared, epoch, refusal_error(ctx, &d), &wire::query(nonce));
                    } else {
                        let mut sh = lock(shared);
                        for (s, d) in statements.iter().zip(&decisions) {
                            let seq = record_allowed(ctx, st, s, d);
                            sh.inflight.push_back(InFlight::new(seq, epoch, s));
                        }
                        drop(sh);
                        out.extend_from_slice(f.raw);
                    }
                }
                Err(err) => {
                    record_refusal(ctx, st, text, None, &Decision::refuse(err.message.clone()));
                    refuse(out, shared, epoch, err, &wire::query(nonce));
                }
            }
        }
        b'P' => {
            let (name, text) = wire::parse_body(f.body)?;
            let epoch = st.epoch;
            match decide_text(ctx, shared, text).await {
                Ok((snapshot, statements, decisions)) => {
                    if let Some(i) = decisions.iter().position(|d| d.verdict != Verdict::Allow) {
                        let d = decisions.get(i).cloned().unwrap_or_else(|| Decision::refuse("refused"));
                        record_refusal(ctx, st, text, statements.get(i), &d);
                        st.prepared.remove(name);
                        refuse(out, shared, epoch, refusal_error(ctx, &d), &wire::parse(nonce));
                    } else {
                        let text = String::from_utf8_lossy(text).into_owned();
                        st.prepared.insert(name.to_vec(), Prepared { text, statements, decided_under: snapshot });
                        out.extend_from_slice(f.raw);
                    }
                }
                Err(err) => {
                    record_refusal(ctx, st, text, None, &Decision::refuse(err.message.clone()));
                    st.prepared.remove(name);
                    refuse(out, shared, epoch, err, &wire::parse(nonce));
                }
            }
        }
        b'B' => {
            let (portal, statement) = wire::bind_names(f.body)?;
            st.portals.insert(portal.to_vec(), statement.to_vec());
            out.extend_from_slice(f.raw);
        }
        b'E' => {
            let portal = wire::execute_portal(f.body)?;
            let epoch = st.epoch;
            let stmt_name = st.portals.get(portal).cloned().unwrap_or_default();
            let current = ctx.agent.snapshot.load_full();
            let Some(p) = st.prepared.get(&stmt_name) else {
                // Not prepared through us: the server will say it does not exist.
                out.extend_from_slice(f.raw);
                return Ok(());
            };
            // Prepared under an older policy: decide again (sessions are
            // re-checked on their next statement after a reload).
            let (decisions, text, statements) = if Arc::ptr_eq(&p.decided_under, &current) {
                (None, p.text.clone(), p.statements.clone())
            } else {
                let ds: Vec<Decision> = p.statements.iter().map(|s| decide_one(ctx, &current, s)).collect();
                (Some(ds), p.text.clone(), p.statements.clone())
            };
            if let Some(d) = decisions.as_ref().and_then(|ds| ds.iter().find(|d| d.verdict != Verdict::Allow)) {
                record_refusal(ctx, st, text.as_bytes(), statements.first(), d);
                refuse(out, shared, epoch, refusal_error(ctx, d), &wire::parse(nonce));
                return Ok(());
            }
            let d = decisions
                .and_then(|mut v| v.pop())
                .unwrap_or_else(|| decide_one(ctx, &current, statements.first().unwrap_or(&single_kind(Kind::Other))));
            let s = statements
                .first()
                .cloned()
                .unwrap_or_else(|| Statement { text: text.clone(), ..single_kind(Kind::Other) });
            let s = Statement { text, ..s };
            let seq = record_allowed(ctx, st, &s, &d);
            lock(shared).inflight.push_back(InFlight::new(seq, epoch, &s));
            out.extend_from_slice(f.raw);
        }
        b'C' => {
            let (kind, name) = wire::target_name(f.body, "Close")?;
            if kind == b'S' {
                st.prepared.remove(name);
            } else {
                st.portals.remove(name);
            }
            out.extend_from_slice(f.raw);
        }
        b'D' => {
            wire::target_name(f.body, "Describe")?;
            out.extend_from_slice(f.raw);
        }
        b'S' => {
            st.epoch += 1;
            out.extend_from_slice(f.raw);
        }
        b'F' => {
            let epoch = st.epoch;
            st.epoch += 1;
            let current = ctx.agent.snapshot.load_full();
            let s = Statement { text: "(FunctionCall message)".into(), ..single_kind(Kind::FunctionCall) };
            let d = decide_one(ctx, &current, &s);
            if d.verdict == Verdict::Allow {
                let seq = record_allowed(ctx, st, &s, &d);
                lock(shared).inflight.push_back(InFlight::new(seq, epoch, &s));
                out.extend_from_slice(f.raw);
            } else {
                record_refusal(ctx, st, s.text.as_bytes(), Some(&s), &d);
                refuse(out, shared, epoch, refusal_error(ctx, &d), &wire::query(nonce));
            }
        }
        b'H' | b'd' | b'c' | b'f' | b'X' => out.extend_from_slice(f.raw),
        other => return Err(violation(format!("unexpected message type {:?} from the client", char::from(other)))),
    }
    Ok(())
}

/// Replaces a refused message by `stand_in` and queues the error to show.
fn refuse(out: &mut Vec<u8>, shared: &Mutex<Shared>, epoch: u64, error: PgError, stand_in: &[u8]) {
    lock(shared).refusals.push_back(Refusal { epoch, error });
    out.extend_from_slice(stand_in);
}

/// Classifies and decides a query text under the current policy.
async fn decide_text(
    ctx: &Ctx,
    shared: &Mutex<Shared>,
    text: &[u8],
) -> Result<(Arc<Snapshot>, Vec<Statement>, Vec<Decision>), PgError> {
    let text = std::str::from_utf8(text).map_err(|_| {
        PgError::new(
            Severity::Error,
            "22021",
            "Gatehouse refused this statement: it is not valid UTF-8, so it cannot be checked",
        )
        .hint("connect with client_encoding UTF8")
    })?;
    let opts = ParseOptions { standard_conforming_strings: lock(shared).scs };
    // Large statements are parsed off the async workers.
    let statements = if text.len() > 16 * 1024 {
        let owned = text.to_owned();
        tokio::task::spawn_blocking(move || sql::classify_with(&owned, opts))
            .await
            .unwrap_or_else(|_| Err(sql::SqlError::Parse { message: "classifier failed".into(), position: None }))
    } else {
        ctx.agent.sql_cache.classify(text, opts)
    };
    let statements = statements.map_err(|e| {
        PgError::new(Severity::Error, "42601", format!("Gatehouse refused this statement: {e}"))
            .hint("Gatehouse parses every statement with PostgreSQL's grammar and refuses what does not parse")
    })?;
    let snapshot = ctx.agent.snapshot.load_full();
    let decisions = statements.iter().map(|s| decide_one(ctx, &snapshot, s)).collect();
    Ok((snapshot, statements, decisions))
}

/// Decides one statement for this session under `snapshot`.
fn decide_one(ctx: &Ctx, snapshot: &Snapshot, s: &Statement) -> Decision {
    let d = snapshot.policy.decide(
        &ctx.principal,
        &Request { backend: &ctx.backend.name, statement: Some(s), now: jiff::Timestamp::now() },
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

fn verdict_text(v: Verdict) -> &'static str {
    crate::policy::testcases::verdict_name(v)
}

fn kinds_text(s: &Statement) -> String {
    s.kinds.iter().map(|k| k.name()).collect::<Vec<_>>().join("+")
}

fn tables_text(s: &Statement) -> String {
    s.reads.iter().chain(&s.writes).map(ToString::to_string).collect::<Vec<_>>().join(",")
}

fn record_allowed(ctx: &Ctx, st: &mut ClientState, s: &Statement, d: &Decision) -> u64 {
    st.seq += 1;
    let ev = StatementStart {
        session: ctx.id,
        seq: st.seq,
        started_us: now_us(),
        text: s.text.clone(),
        kinds: kinds_text(s),
        tables: tables_text(s),
        decision: verdict_text(d.verdict).into(),
        rule: d.rule.as_ref().map(ToString::to_string),
        reason: None,
    };
    st.acks.push(ctx.agent.audit.record_strict(Event::Statement(Box::new(ev))));
    st.seq
}

fn record_refusal(ctx: &Ctx, st: &mut ClientState, text: &[u8], s: Option<&Statement>, d: &Decision) {
    st.seq += 1;
    let text = String::from_utf8_lossy(text).into_owned();
    info!(rule = d.rule_label(), kinds = s.map(kinds_text).unwrap_or_default(), "statement refused: {}", d.reason());
    let ev = StatementStart {
        session: ctx.id,
        seq: st.seq,
        started_us: now_us(),
        kinds: s.map(kinds_text).unwrap_or_default(),
        tables: s.map(tables_text).unwrap_or_default(),
        text,
        decision: verdict_text(d.verdict).into(),
        rule: d.rule.as_ref().map(ToString::to_string),
        reason: Some(d.reason().into_owned()),
    };
    if let Err(e) = ctx.agent.audit.record(Event::Statement(Box::new(ev))) {
        warn!(error = %e, "cannot record a refused statement");
    }
}

fn statement_end(ctx: &Ctx, f: InFlight, rows: Option<u64>, error: Option<String>) {
    let masked = (f.masked.total() > 0).then(|| {
        let m: serde_json::Map<String, serde_json::Value> =
            f.masked.iter().map(|(k, v)| (k.to_owned(), v.into())).collect();
        serde_json::Value::Object(m).to_string()
    });
    let ev = StatementEnd {
        session: ctx.id,
        seq: f.seq,
        ended_us: now_us(),
        rows,
        duration_us: u64::try_from(f.started.elapsed().as_micros()).unwrap_or(u64::MAX),
        error,
        masked,
    };
    if let Err(e) = ctx.agent.audit.statement_end(ev) {
        warn!(error = %e, "cannot record the end of a statement");
    }
}

// ---- backend → client ----

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
async fn backend_to_client<R, W>(
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
