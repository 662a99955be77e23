//! Statements held for approval on MySQL (`approval = { for = [...], by = ... }`
//! on the session's rule), as the PostgreSQL relay holds them: the command
//! (`COM_QUERY`, `COM_INIT_DB`, or `COM_STMT_EXECUTE` — a prepare is not
//! held, each execute is) waits before it reaches the server while an
//! approval request is open (the same `Subject::Statement`, audit records,
//! notifications and `gatehouse approve|deny`). Approved: forwarded as
//! decided (not decided again, as for PostgreSQL) and its answer relayed.
//! Denied, timed out, or a rule with no approval left: ERR 1227 naming the
//! rule and the outcome, and the session goes on.
//!
//! MySQL has no asynchronous notice: the client hears nothing while its
//! command waits (the request id is in `gatehouse requests`, and in the
//! agent's log). A client that closes its connection (or a session cut)
//! withdraws the request; anything a client sends meanwhile is kept for
//! after the answer, as the lockstep protocol wants.

use tracing::info;

use super::{Conn, Ctx, Fail, redacted_text};
use crate::approval::{RequestId, State, Subject};
use crate::policy::Decision;
use crate::sql::Statement;

/// Bytes a waiting client may send before Gatehouse stops reading it.
const MAX_EARLY: usize = 64 << 10;

/// Why a held statement does not run: the refusal to record and send.
pub(super) fn refusal(d: &Decision, why: &str) -> Decision {
    let mut r = Decision::refuse(format!("{}; {why}", d.reason()));
    r.rule.clone_from(&d.rule);
    r
}

/// Holds a statement whose decision `d` needs approval until an approver
/// decides: `Ok(Ok(id))` once approved, `Ok(Err(refusal))` otherwise;
/// `Err` when the client left or the session was cut (the request is
/// withdrawn).
pub(super) async fn hold(
    ctx: &Ctx,
    client: &mut Conn,
    d: &Decision,
    text: &str,
    st: &Statement,
    parameters: Vec<String>,
) -> Result<Result<RequestId, Decision>, Fail> {
    let snapshot = ctx.svc.snapshot.load_full();
    let grants = ctx.svc.grant_rules.load();
    let approval = snapshot
        .policy
        .rules
        .iter()
        .chain(grants.iter())
        .find(|r| Some(&r.name) == d.rule.as_ref())
        .and_then(|r| r.approval.clone());
    let Some(approval) = approval else {
        return Ok(Err(refusal(d, "the rule names no approvers now")));
    };
    // Approvers see the statement (its literals, which they decide on) but not its secrets.
    let (shown, secrets) = redacted_text(ctx, text, false);
    let subject = Subject::Statement {
        session: ctx.id.to_string(),
        backend: ctx.backend.name.to_string(),
        text: shown,
        kinds: crate::sql::KindList::of(&st.kinds),
        rule: d.rule_label().to_owned(),
        // A held COM_STMT_EXECUTE's parameter values, unless its text may hold a secret.
        parameters: if secrets > 0 && !parameters.is_empty() {
            vec!["(not shown: the statement may take a secret)".into()]
        } else {
            parameters
        },
    };
    let waiting = match ctx.svc.desk.request(subject, ctx.principal.clone(), &approval, None, d.approvers.clone()) {
        Ok(w) => w,
        Err(why) => return Ok(Err(refusal(d, &why))),
    };
    let id = waiting.id;
    info!(request = id, approvers = %waiting.approvers, "statement held for approval");
    let desk = ctx.svc.desk.clone();
    let outcome = waiting.clone().outcome(ctx.svc.desk.registry(), move |t| desk.transition(t));
    tokio::pin!(outcome);
    let gone = loop {
        tokio::select! {
            state = &mut outcome => {
                return Ok(match state {
                    State::Approved { .. } => {
                        info!(request = id, "approved: the held statement runs");
                        Ok(id)
                    }
                    other => Err(refusal(d, &format!("it was held for approval and {}", waiting.refusal(&other)))),
                });
            }
            r = client.fill(MAX_EARLY) => match r {
                Ok(true) => {}
                Ok(false) => break Fail::Client("the client closed its connection while its statement was held".into()),
                Err(e) => break super::io_fail(e, Fail::Client),
            },
            () = ctx.live.cut.cancelled() => break Fail::Breach(String::new()),
        }
    };
    ctx.svc.desk.withdraw(id);
    Err(gone)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_keeps_the_rule_and_says_why() {
        let d = Decision::refuse("rule \"r\" requires approval by leads for delete");
        let r = refusal(&d, "it was held for approval and request 3 was denied by lea");
        assert_eq!(r.verdict, crate::policy::Verdict::Deny);
        assert_eq!(
            r.reason(),
            "rule \"r\" requires approval by leads for delete; it was held for approval and request 3 was denied by lea"
        );
    }
}
