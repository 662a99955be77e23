//! HTTP requests held for approval (`approval = { for = ["DELETE"], … }` on
//! an http rule). The request waits in its own service future: on HTTP/2
//! the connection's other streams go on; on HTTP/1.1 the requests pipelined
//! behind it wait, as the protocol orders them. Nothing of the request
//! (not even its body) is read or forwarded before an approver decides.
//! A request whose client goes away (a reset stream, a closed connection,
//! a cut session) is withdrawn, so nobody approves a request that will
//! never run.

use std::sync::Arc;

use tracing::info;

use super::Ctx;
use crate::approval::{RequestId, State, Subject};
use crate::audit::now_us;
use crate::policy::{Approval, Decision};
use crate::proxy::Agent;

/// Withdraws the request when the wait ends without a decision (the future
/// dropped). A decided request is left as it is.
struct Withdraw {
    agent: Arc<Agent>,
    id: RequestId,
}

impl Drop for Withdraw {
    fn drop(&mut self) {
        if let Some(t) = self.agent.approvals.withdraw(self.id, now_us()) {
            self.agent.approval_transition(&t);
        }
    }
}

/// Opens an approval request for `method target` and waits for its
/// outcome: `Ok` with a note for the record once approved, `Err` with what
/// to tell the client otherwise (denied, timed out, withdrawn).
pub(super) async fn hold(
    ctx: &Ctx,
    approval: &Approval,
    decision: &Decision,
    method: &str,
    target: &str,
) -> Result<String, String> {
    let subject = Subject::HttpRequest {
        session: ctx.id.to_string(),
        backend: ctx.backend.name.to_string(),
        method: method.to_owned(),
        target: target.to_owned(),
        rule: decision.rule_label().to_owned(),
    };
    let waiting =
        ctx.agent.request_approval(subject, ctx.principal.clone(), approval, None, decision.approvers.clone());
    let id = waiting.id;
    info!(request = id, approvers = %waiting.approvers, method, target, "HTTP request held for approval");
    let guard = Withdraw { agent: ctx.agent.clone(), id };
    let agent = ctx.agent.clone();
    let state = tokio::select! {
        s = waiting.clone().outcome(&ctx.agent.approvals, |t| agent.approval_transition(t)) => s,
        () = ctx.live.cut.cancelled() => State::Withdrawn { at_us: now_us() },
    };
    drop(guard);
    match state {
        State::Approved { .. } => {
            info!(request = id, "approved: the held request goes to the backend");
            Ok(format!("held for approval by {}: request {id} approved", waiting.approvers))
        }
        other => Err(waiting.refusal(&other)),
    }
}
