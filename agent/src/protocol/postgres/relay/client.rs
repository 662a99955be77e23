//! Client → backend: every Query, Parse, Execute and FunctionCall is
//! classified and decided before the server sees it; refused ones are
//! replaced by a stand-in the server rejects.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tracing::{info, warn};

use super::{Fail, InFlight, Refusal, Shared, fill, lock};
use crate::audit::{AckFuture, Direction, Event, StatementEnd, StatementStart, StreamRecorder, now_us};
use crate::policy::testcases::single_kind;
use crate::policy::{Decision, Request, Verdict};
use crate::protocol::postgres::wire::{self, Frame, PgError, Severity};
use crate::protocol::postgres::{Ctx, MAX_CLIENT_MESSAGE};
use crate::proxy::Snapshot;
use crate::sql::{self, Kind, ParseOptions, Statement};

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
pub(super) async fn client_to_backend<R, W>(
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

pub(super) fn statement_end(ctx: &Ctx, f: InFlight, rows: Option<u64>, error: Option<String>) {
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
