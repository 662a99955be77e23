//! Prepared statements (the binary protocol).
//!
//! - `COM_STMT_PREPARE` is classified, decided and recorded as `COM_QUERY`
//!   is (the same refusal, ERR 1227 naming the rule); a refused prepare
//!   never reaches the server. The ids the server returns in
//!   `COM_STMT_PREPARE_OK` are the session's: with each, the statement as
//!   classified, its parameter and column counts.
//! - `COM_STMT_EXECUTE` of one of those ids is decided again (the policy and
//!   the time may have changed since the prepare, as for PostgreSQL's
//!   Execute; a statement that needs approval is held here, not at the
//!   prepare: `hold`) and recorded as a statement: the prepared text and its
//!   parameter count; the parameter values only under `record_parameters`
//!   (as PostgreSQL's Bind parameters; `record`), read with the types the
//!   execute binds or, when it sends none, the ones bound before. Its rows
//!   are binary rows, masked by `binary` on a masked session.
//! - `COM_STMT_SEND_LONG_DATA`, `COM_STMT_RESET`, `COM_STMT_CLOSE` pass for
//!   those ids only. An id this session did not prepare through Gatehouse
//!   is refused: an ERR for EXECUTE and RESET; SEND_LONG_DATA and CLOSE
//!   expect no answer, so they are dropped and recorded.
//! - Cursors are refused: an EXECUTE with a cursor flag gets an ERR, so no
//!   cursor exists and `COM_STMT_FETCH` is refused with every other
//!   unsupported command.
//! - MariaDB's id `0xffffffff` ("the statement prepared last") is resolved
//!   by Gatehouse to the id it saw prepared last, and the packet forwarded
//!   with that id; when the last prepare was refused or failed, it is
//!   refused like any unknown id.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use tracing::info;

use super::{Conn, Ctx, Fail, MaskCtx, Outcome, Session, finish, forward, forward_masked, next_packet};
use super::{payload_of, record_refusal, refuse, seq_of, start_record, wire};
use crate::audit::Event;
use crate::policy::{Decision, Verdict};
use crate::sql::Statement;

/// Statements one session may hold prepared through Gatehouse.
pub(super) const MAX_PREPARED: usize = 4096;
/// MariaDB's statement id for "the statement this connection prepared last".
const LAST_PREPARED: u32 = u32::MAX;
/// `COM_STMT_EXECUTE` flags Gatehouse passes: no cursor.
const CURSOR_TYPE_NO_CURSOR: u8 = 0;

/// What `COM_STMT_PREPARE_OK` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct PrepareOk {
    pub id: u32,
    pub columns: u16,
    pub params: u16,
}

/// Parses a `COM_STMT_PREPARE_OK` payload.
pub(super) fn parse_prepare_ok(p: &[u8]) -> Option<PrepareOk> {
    if *p.first()? != 0x00 {
        return None;
    }
    let id = u32::from_le_bytes(p.get(1..5)?.try_into().ok()?);
    let columns = u16::from_le_bytes(p.get(5..7)?.try_into().ok()?);
    let params = u16::from_le_bytes(p.get(7..9)?.try_into().ok()?);
    Some(PrepareOk { id, columns, params })
}

/// The statement id a `COM_STMT_*` payload (command byte first) names.
pub(super) fn stmt_id(payload: &[u8]) -> Option<u32> {
    Some(u32::from_le_bytes(payload.get(1..5)?.try_into().ok()?))
}

/// A statement prepared through Gatehouse in this session.
#[derive(Debug)]
pub(super) struct Prepared {
    /// The text as the client sent it (redacted when recorded).
    pub text: String,
    pub statement: Statement,
    pub params: u16,
    pub columns: u16,
}

/// The session's prepared statements, by the server's ids.
#[derive(Debug, Default)]
pub(super) struct Registry {
    by_id: HashMap<u32, Arc<Prepared>>,
    /// The id of the last prepare, if it succeeded.
    last: Option<u32>,
    /// The parameter types last bound to each statement (the server keeps
    /// them for executes that send none), to record parameter values.
    bound: HashMap<u32, Vec<u8>>,
}

impl Registry {
    /// The real id `id` stands for (MariaDB's "last prepared" resolved),
    /// with its statement, if this session prepared it.
    fn get(&self, id: u32) -> Option<(u32, Arc<Prepared>)> {
        let id = if id == LAST_PREPARED { self.last? } else { id };
        self.by_id.get(&id).map(|p| (id, p.clone()))
    }

    pub(super) fn insert(&mut self, id: u32, p: Prepared) {
        self.by_id.insert(id, Arc::new(p));
        self.bound.remove(&id);
        self.last = Some(id);
    }

    /// A prepare was refused or failed: "the last one" is nobody's.
    pub(super) fn forget_last(&mut self) {
        self.last = None;
    }

    /// Keeps the types an execute of `id` binds, if it sends them.
    pub(super) fn note_types(&mut self, id: u32, payload: &[u8], params: u16) {
        if let Some(t) = super::record::bound_types(payload, params)
            && self.bound.get(&id).is_none_or(|had| had.as_slice() != t)
        {
            self.bound.insert(id, t.to_vec());
        }
    }

    /// The parameter types last bound to `id`.
    pub(super) fn types(&self, id: u32) -> Option<&[u8]> {
        self.bound.get(&id).map(Vec::as_slice)
    }

    fn remove(&mut self, id: u32) {
        self.by_id.remove(&id);
        self.bound.remove(&id);
        if self.last == Some(id) {
            self.last = None;
        }
    }

    /// The server forgot them all (`COM_RESET_CONNECTION`).
    pub(super) fn clear(&mut self) {
        self.by_id.clear();
        self.bound.clear();
        self.last = None;
    }

    pub(super) fn is_full(&self) -> bool {
        self.by_id.len() >= MAX_PREPARED
    }
}

/// `pkt` with its statement id replaced by `id` (same sequence id and length).
fn with_id(pkt: &[u8], id: u32) -> Vec<u8> {
    let mut v = pkt.to_vec();
    if let Some(b) = v.get_mut(5..9) {
        b.copy_from_slice(&id.to_le_bytes());
    }
    v
}

/// Forwards an allowed `COM_STMT_PREPARE` and relays the server's answer:
/// PREPARE_OK with its parameter and column definitions, or an ERR (with
/// what it quotes redacted on a masked session).
pub(super) async fn forward_prepare(
    s: &mut Session,
    client: &mut Conn,
    pkt: &[u8],
    up: &mut u64,
    down: &mut u64,
    profile: Option<&crate::mask::Profile>,
) -> Result<Outcome, Fail> {
    s.backend.send(pkt).await.map_err(|e| Fail::Backend(e.to_string()))?;
    *up += pkt.len() as u64;
    let mut out = Vec::new();
    // Read alone (not with its continuations): nothing of an oversized answer is relayed.
    let first = super::read_backend(s).await?;
    let p = payload_of(&first);
    if p.len() >= wire::MAX_PAYLOAD {
        return Err(Fail::Backend("an oversized answer to COM_STMT_PREPARE".into()));
    }
    let mut outcome = match p.first() {
        Some(0xff) => {
            match profile {
                Some(profile) => {
                    super::masking::mask_err(profile, &first, &mut out, &mut crate::mask::Counts::default());
                }
                None => out.extend_from_slice(&first),
            }
            let e = wire::parse_err(p)
                .map_or_else(|| "error".into(), |e| format!("{} ({}): {}", e.code, e.state, e.message));
            Outcome { rows: None, error: Some(e), prepared: None, tail: Vec::new() }
        }
        Some(0x00) => {
            let ok = parse_prepare_ok(p).ok_or_else(|| Fail::Backend("malformed COM_STMT_PREPARE_OK".into()))?;
            out.extend_from_slice(&first);
            for n in [ok.params, ok.columns] {
                for _ in 0..n {
                    next_packet(s, client, &mut out, down).await?;
                }
                if n > 0 && !s.deprecate_eof {
                    next_packet(s, client, &mut out, down).await?;
                }
            }
            Outcome { rows: None, error: None, prepared: Some(ok), tail: Vec::new() }
        }
        _ => return Err(Fail::Backend("unexpected answer to COM_STMT_PREPARE".into())),
    };
    // Recorded and written by the caller, with the statement's end.
    outcome.tail = out;
    Ok(outcome)
}

/// What the audit trail says of a command naming a statement id this
/// session never prepared through Gatehouse.
fn unknown(name: &str, id: Option<u32>) -> (String, Decision) {
    let id = id.map_or_else(|| "no statement id".to_owned(), |i| format!("statement id {i}"));
    let reason = format!("{name} of {id}, which this session did not prepare through Gatehouse");
    (format!("({name} of {id})"), Decision::refuse(reason))
}

/// `COM_STMT_EXECUTE`: decided again and recorded as the prepared statement.
pub(super) async fn execute(
    ctx: &Ctx,
    s: &mut Session,
    client: &mut Conn,
    pkt: &[u8],
    up: &mut u64,
    down: &mut u64,
) -> Result<(), Fail> {
    let seq = seq_of(pkt).wrapping_add(1);
    let payload = payload_of(pkt);
    let asked = stmt_id(payload);
    s.seq += 1;
    s.rec.reset();
    let Some((id, p)) = asked.and_then(|i| s.prepared.get(i)) else {
        let (text, why) = unknown("COM_STMT_EXECUTE", asked);
        return refuse(ctx, s, client, seq, &text, None, &why).await;
    };
    if payload.get(5) != Some(&CURSOR_TYPE_NO_CURSOR) {
        let why = Decision::refuse("cursors (COM_STMT_EXECUTE with a cursor flag) are not supported through Gatehouse");
        return refuse(ctx, s, client, seq, &p.text, Some(&p.statement), &why).await;
    }
    // Decided again now: the policy and the time may have changed since the prepare.
    // What it reaches through views is as the views are now.
    let mut st = p.statement.clone();
    let d = super::decide_now(ctx, s, &mut st).await?;
    let held = d.verdict == Verdict::NeedsApproval;
    // The types an execute binds are kept (a copy only when they change):
    // a later execute's values are read with them, for its record or its approvers.
    s.prepared.note_types(id, payload, p.params);
    if held {
        let x = super::record::ExecuteParams { count: p.params, types: s.prepared.types(id) };
        let parameters = if p.params == 0 {
            Vec::new()
        } else {
            super::record::parameters_shown(payload, x).unwrap_or_else(|| vec!["(unreadable: not shown)".into()])
        };
        if let Err(why) = super::hold::hold(ctx, client, &d, &p.text, &st, parameters).await? {
            return refuse(ctx, s, client, seq, &p.text, Some(&st), &why).await;
        }
    } else if d.verdict != Verdict::Allow {
        return refuse(ctx, s, client, seq, &p.text, Some(&st), &d).await;
    }
    let pkt = if asked == Some(id) { pkt.to_vec() } else { with_id(pkt, id) };
    let mut ev = start_record(ctx, s.seq, p.text.clone(), Some(&st), &d);
    if held {
        // Approved (the approval's records say by whom), as PostgreSQL records it.
        ev.reason = None;
    }
    let params = super::record::ExecuteParams { count: p.params, types: s.prepared.types(id) };
    let recorded = super::record::client_packet(ctx, &pkt, Some(params));
    let cut = s.rec.fold_up(&mut ev, &recorded);
    let mut records = vec![Event::Statement(Box::new(ev))];
    records.extend(cut);
    ctx.svc.audit.commit(records).await.map_err(|e| Fail::Audit(e.to_string()))?;
    let started = Instant::now();
    let mut counts = crate::mask::Counts::default();
    let reads = super::masking::traced_reads(&st);
    let masking = ctx.mask.as_deref().map(|profile| MaskCtx {
        profile,
        reads: &reads,
        ctes: st.compared.as_deref().map_or(&super::NO_CTES, |c| &c.ctes),
        counts: &mut counts,
        binary: true,
        diagnostics: st.compared.as_deref().is_some_and(|c| c.diagnostics),
    });
    let out = forward_masked(s, client, &pkt, up, down, masking).await;
    let tags = format!("EXECUTE statement {id} ({} parameters, {} columns)", p.params, p.columns);
    finish(ctx, s, client, down, (started, out), &counts, Some(tags)).await
}

/// `COM_STMT_SEND_LONG_DATA`, `COM_STMT_RESET`, `COM_STMT_CLOSE`: passed
/// for a statement this session prepared; otherwise refused (RESET) or
/// dropped (the others expect no answer), and recorded.
pub(super) async fn by_id(
    ctx: &Ctx,
    s: &mut Session,
    client: &mut Conn,
    pkt: &[u8],
    up: &mut u64,
    down: &mut u64,
) -> Result<(), Fail> {
    let payload = payload_of(pkt);
    let command = payload.first().copied().unwrap_or_default();
    let name = match command {
        wire::COM_STMT_SEND_LONG_DATA => "COM_STMT_SEND_LONG_DATA",
        wire::COM_STMT_RESET => "COM_STMT_RESET",
        _ => "COM_STMT_CLOSE",
    };
    let asked = stmt_id(payload);
    let Some((id, _)) = asked.and_then(|i| s.prepared.get(i)) else {
        s.seq += 1;
        s.rec.reset();
        let (text, why) = unknown(name, asked);
        if command == wire::COM_STMT_RESET {
            return refuse(ctx, s, client, seq_of(pkt).wrapping_add(1), &text, None, &why).await;
        }
        info!(command = name, "dropped: {}", why.reason());
        return record_refusal(ctx, s, &text, None, &why).await;
    };
    let pkt = if asked == Some(id) { pkt.to_vec() } else { with_id(pkt, id) };
    match command {
        wire::COM_STMT_RESET => {
            forward(s, client, &pkt, up, down).await?;
        }
        _ => {
            // No answer comes.
            let recorded = super::record::client_packet(ctx, &pkt, None);
            s.rec.up_chunk(&recorded, None).await;
            s.backend.send(&pkt).await.map_err(|e| Fail::Backend(e.to_string()))?;
            *up += pkt.len() as u64;
            if command == wire::COM_STMT_CLOSE {
                s.prepared.remove(id);
            }
        }
    }
    Ok(())
}

/// Refuses a prepare Gatehouse cannot track (the session holds too many).
pub(super) fn too_many() -> Decision {
    Decision::refuse(format!(
        "this session holds {MAX_PREPARED} prepared statements, the most Gatehouse tracks; close some (COM_STMT_CLOSE / DEALLOCATE)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prepare_ok_and_statement_ids_parse() {
        let ok = [0x00, 7, 0, 0, 0, 3, 0, 2, 0, 0, 0, 0];
        assert_eq!(parse_prepare_ok(&ok), Some(PrepareOk { id: 7, columns: 3, params: 2 }));
        assert_eq!(parse_prepare_ok(&ok[..8]), None);
        assert_eq!(parse_prepare_ok(&[0xff, 0, 0, 0, 0, 0, 0, 0, 0]), None);
        assert_eq!(stmt_id(&[wire::COM_STMT_EXECUTE, 1, 1, 0, 0, 0]), Some(257));
        assert_eq!(stmt_id(&[wire::COM_STMT_CLOSE, 1, 1, 0]), None);
        let pkt = wire::frame(0, &[wire::COM_STMT_EXECUTE, 0xff, 0xff, 0xff, 0xff, 0, 1, 0, 0, 0]);
        let out = with_id(&pkt, 9);
        assert_eq!(stmt_id(payload_of(&out)), Some(9));
        assert_eq!(out.len(), pkt.len());
    }

    #[test]
    fn the_registry_resolves_mariadbs_last_prepared_id_only_after_a_successful_prepare() {
        let st = || Prepared { text: "SELECT 1".into(), statement: Statement::default(), params: 0, columns: 1 };
        let mut r = Registry::default();
        assert!(r.get(LAST_PREPARED).is_none());
        r.insert(3, st());
        assert_eq!(r.get(LAST_PREPARED).map(|(i, _)| i), Some(3));
        assert_eq!(r.get(3).map(|(i, _)| i), Some(3));
        assert!(r.get(4).is_none());
        r.forget_last();
        assert!(r.get(LAST_PREPARED).is_none(), "a refused prepare is the last one: -1 names nothing");
        assert!(r.get(3).is_some());
        r.insert(5, st());
        r.remove(5);
        assert!(r.get(LAST_PREPARED).is_none() && r.get(5).is_none());
        r.clear();
        assert!(r.get(3).is_none());
    }
}
