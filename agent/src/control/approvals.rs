//! Control-socket requests about requests that wait for a human: listing
//! them, approving or denying, asking for a grant, revoking one. The caller
//! is who SO_PEERCRED says (and, after `gatehouse login`, their identity);
//! a request the caller may not decide or see answers like one that does
//! not exist.

use super::Response;
use crate::approval::Desk as _;
use crate::approval::{Open, RequestId, Subject};
use crate::audit::now_us;
use crate::proxy::Agent;
use crate::types::Uid;

fn error(message: impl Into<String>) -> Response {
    Response::Error { message: message.into() }
}

pub(super) async fn list(agent: &Agent, uid: u32, mine: bool) -> Response {
    let caller = agent.resolver.principal(Uid(uid)).await;
    let requests = agent.approvals.list(&caller, mine);
    // What the session did before the held statement, for those who decide it.
    let mut context = Vec::new();
    for r in requests.iter().filter(|r| r.requester.uid != uid && r.state == crate::approval::State::Pending) {
        let Subject::Statement { session, .. } = &r.subject else { continue };
        let (db, session) = (agent.settings.audit_db.clone(), session.clone());
        let rows =
            tokio::task::spawn_blocking(move || crate::audit::query::statements_of(&db, Some(&session), None, 5))
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default();
        // Newest first from the store: shown newest last.
        let recent: Vec<String> = rows
            .iter()
            .rev()
            .map(|s| format!("{} {}", s.decision, s.text.chars().take(200).collect::<String>()))
            .collect();
        context.push((r.id, recent));
    }
    Response::Requests { requests, context }
}

pub(super) async fn decide(agent: &Agent, uid: u32, id: RequestId, approve: bool, reason: Option<String>) -> Response {
    let caller = agent.resolver.principal(Uid(uid)).await;
    match agent.approvals.decide(id, &caller, approve, reason, now_us()) {
        Ok(t) => {
            agent.transition(&t);
            Response::Request { event: t.event.to_owned(), request: Box::new(t.request) }
        }
        Err(e) => error(e.to_string()),
    }
}

pub(super) async fn revoke(agent: &Agent, uid: u32, id: RequestId) -> Response {
    let caller = agent.resolver.principal(Uid(uid)).await;
    match agent.approvals.revoke(id, &caller, now_us()) {
        Ok(t) => {
            agent.transition(&t);
            Response::Request { event: t.event.to_owned(), request: Box::new(t.request) }
        }
        Err(e) => error(e.to_string()),
    }
}

pub(super) async fn request_grant(
    agent: &Agent,
    uid: u32,
    grant: &str,
    backend: &str,
    duration_s: u64,
    reason: String,
) -> Response {
    let caller = agent.resolver.principal(Uid(uid)).await;
    let snapshot = agent.snapshot.load_full();
    let Some(g) = snapshot.policy.grants.iter().find(|g| g.name == grant) else {
        return error(format!("no grant named {grant:?} in the policy (`gatehouse policy explain` lists them)"));
    };
    if g.who.matches(&caller).is_none() {
        return error(format!("grant {grant:?} may not be requested by {caller}"));
    }
    if !g.backends.iter().any(|p| p.matches(backend))
        || snapshot.policy.backend(&crate::types::BackendName::new(backend)).is_none()
    {
        return error(format!("grant {grant:?} does not cover backend {backend:?}"));
    }
    if duration_s == 0 || duration_s > g.max.as_secs() {
        return error(format!("grant {grant:?} lasts at most {}", crate::settings::format_duration_s(g.max.as_secs())));
    }
    if reason.trim().is_empty() {
        return error("a reason is required (an incident or ticket, for the approvers and the audit trail)");
    }
    let open = Open {
        subject: Subject::Grant { grant: grant.to_owned(), backend: backend.to_owned(), duration_s },
        requester: caller,
        reason: Some(reason),
        approvers: g.by.clone(),
        approvers_label: g.by_name.clone().unwrap_or_else(|| g.by.describe()),
        needed: g.count,
        timeout_us: i64::try_from(g.timeout.as_micros()).unwrap_or(i64::MAX),
        duration_us: Some(i64::try_from(duration_s).unwrap_or(i64::MAX).saturating_mul(1_000_000)),
    };
    let (t, _) = match agent.approvals.open(open, now_us(), agent.settings.max_pending_requests_per_user) {
        Ok(opened) => opened,
        Err(why) => return error(why),
    };
    agent.transition(&t);
    Response::Request { event: t.event.to_owned(), request: Box::new(t.request) }
}
