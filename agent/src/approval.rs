//! Requests that wait for a human: statements held for approval, logins
//! held at connect, and just-in-time grants. A request names who may
//! decide it (an `[[approvers]]` group) and how many of them must approve;
//! nobody approves their own request. Waiters (the held session) watch the
//! request's state; every transition is returned to the caller so it can
//! be recorded and announced.
//!
//! Pure state: no I/O and no clock reads (`now_us` is passed in), so the
//! rules are unit-tested directly.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::identity::Principal;
use crate::policy::Who;

pub type RequestId = u64;

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Subject {
    /// A statement held in a session until someone approves it.
    Statement {
        session: String,
        backend: String,
        text: String,
        kinds: crate::sql::KindList,
        rule: String,
        /// An Execute's bound parameter values, as approvers see them (`$1 = '42'`).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        parameters: Vec<String>,
    },
    /// A login held until someone approves it.
    Connect { session: String, backend: String, rule: String },
    /// An SSH exec command, or the start of a shell, held until someone approves it.
    Ssh { session: String, backend: String, request: String, rule: String },
    /// Access for a while, as a `[[grant]]` describes it.
    Grant { grant: String, backend: String, duration_s: u64 },
    /// An HTTP request held until someone approves it (`target`: path and
    /// query, secret-looking parameter values redacted; `body`: its size,
    /// SHA-256 and beginning, when it has one — exactly that body is forwarded).
    HttpRequest {
        session: String,
        backend: String,
        method: String,
        target: String,
        rule: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        body: Option<String>,
    },
}

impl Subject {
    pub fn describe(&self) -> String {
        match self {
            Self::Statement { backend, text, parameters, .. } if !parameters.is_empty() => {
                format!("run on {backend}: {text} with {}", parameters.join(", "))
            }
            Self::Statement { backend, text, .. } => format!("run on {backend}: {text}"),
            Self::Connect { backend, .. } => format!("connect to {backend}"),
            Self::Ssh { backend, request, .. } => format!("run on {backend} over SSH: {request}"),
            Self::HttpRequest { backend, method, target, body, .. } => match body {
                Some(b) => format!("send {method} {target} to {backend} with body {b}"),
                None => format!("send {method} {target} to {backend}"),
            },
            Self::Grant { grant, backend, duration_s } => {
                format!("grant \"{grant}\" on {backend} for {}", crate::settings::format_duration_s(*duration_s))
            }
        }
    }
}

/// A person in a request: the requester or an approver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Person {
    pub uid: u32,
    pub user: Option<String>,
    /// The OIDC subject, when logged in.
    pub subject: Option<String>,
}

impl Person {
    pub fn of(p: &Principal) -> Self {
        Self {
            uid: p.uid.0,
            user: p.user.as_ref().map(ToString::to_string),
            subject: p.oidc.as_ref().map(|o| o.subject.clone()),
        }
    }

    /// The same human: same uid, or the same OIDC subject.
    fn same_as(&self, other: &Person) -> bool {
        self.uid == other.uid || (self.subject.is_some() && self.subject == other.subject)
    }

    pub fn label(&self) -> String {
        self.user.clone().unwrap_or_else(|| format!("uid:{}", self.uid))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum State {
    Pending,
    Approved {
        at_us: i64,
    },
    Denied {
        by: Person,
        reason: Option<String>,
        at_us: i64,
    },
    TimedOut {
        at_us: i64,
    },
    /// The requester gave up (a cancel, a closed session).
    Withdrawn {
        at_us: i64,
    },
    /// An approved grant taken back.
    Revoked {
        by: Person,
        at_us: i64,
    },
    /// An approved grant whose time is over.
    Expired {
        at_us: i64,
    },
}

impl State {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Approved { .. } => "approved",
            Self::Denied { .. } => "denied",
            Self::TimedOut { .. } => "timed_out",
            Self::Withdrawn { .. } => "withdrawn",
            Self::Revoked { .. } => "revoked",
            Self::Expired { .. } => "expired",
        }
    }

    pub fn is_final(&self) -> bool {
        !matches!(self, Self::Pending | Self::Approved { .. })
    }
}

/// One request and its history.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    pub id: RequestId,
    pub subject: Subject,
    pub requester: Person,
    pub reason: Option<String>,
    /// Who may decide: the approvers group's name, and how many must approve.
    pub approvers: String,
    pub needed: u32,
    pub approvals: Vec<Person>,
    pub state: State,
    pub created_us: i64,
    /// A pending request times out then.
    pub deadline_us: i64,
    /// For grants: approved access lasts until then.
    pub until_us: Option<i64>,
}

/// Why a decision was not taken.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ApprovalError {
    /// Also what a caller who may not see the request gets: no hint that it exists.
    #[error("no pending request {0} that you may decide")]
    Unknown(RequestId),
    #[error("request {id} is {state}, not pending")]
    NotPending { id: RequestId, state: &'static str },
    #[error("you cannot approve your own request {0}")]
    SelfApproval(RequestId),
    #[error("you already approved request {0}")]
    AlreadyApproved(RequestId),
    #[error("request {0} is not an approved grant")]
    NotAGrant(RequestId),
}

/// A transition to record and announce.
#[derive(Debug, Clone, Serialize)]
pub struct Transition {
    pub request: Request,
    /// `requested`, `approval` (one approver of several), `approved`, `denied`, `timed_out`, `withdrawn`, `revoked`, `expired`.
    pub event: &'static str,
    pub by: Option<Person>,
}

struct Entry {
    request: Request,
    /// Who may approve (kept out of the serialisable request).
    by: Who,
    watch: watch::Sender<State>,
}

/// Where a session takes requests for a human: what the protocol adapters
/// are given instead of the agent that implements it (`proxy::Agent`,
/// which also rebuilds grants and notifies).
pub trait Desk: Send + Sync + std::fmt::Debug {
    /// The requests and their states.
    fn registry(&self) -> &Registry;

    /// Opens a request to the approvers a rule's `approval` names, records
    /// its opening, and returns what the held session waits on (or, when
    /// the requester has `max_pending_requests_per_user` pending, why none
    /// was opened). `reason`: why it is held, when not for the rule itself
    /// (an alert); `label`: how the decision named the approvers, if it did.
    fn request(
        &self,
        subject: Subject,
        requester: Principal,
        approval: &crate::policy::Approval,
        reason: Option<String>,
        label: Option<String>,
    ) -> Result<Waiting, String>;

    /// Records, logs and announces a step of a request.
    fn transition(&self, t: &Transition);

    /// Withdraws one request if it is still pending (its waiter gave up),
    /// the step recorded; a decided request is left as it is.
    fn withdraw(&self, id: RequestId) {
        if let Some(t) = self.registry().withdraw(id, crate::audit::now_us()) {
            self.transition(&t);
        }
    }

    /// Withdraws the requests a session still waits on (it ended, or its
    /// client cancelled), each step recorded.
    fn withdraw_session(&self, session: &str) -> usize {
        let steps = self.registry().withdraw_session(session, crate::audit::now_us());
        for t in &steps {
            self.transition(t);
        }
        steps.len()
    }
}

/// Every request the agent holds (pending ones, and decided ones for a while).
#[derive(Default)]
pub struct Registry {
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").field("requests", &self.lock().requests.len()).finish()
    }
}

#[derive(Default)]
struct Inner {
    next: RequestId,
    requests: BTreeMap<RequestId, Entry>,
}

/// How long decided requests stay listed.
const KEEP_DECIDED_US: i64 = 24 * 3600 * 1_000_000;

/// What opening a request needs.
#[derive(Debug, Clone)]
pub struct Open {
    pub subject: Subject,
    pub requester: Principal,
    pub reason: Option<String>,
    pub approvers: Who,
    pub approvers_label: String,
    pub needed: u32,
    pub timeout_us: i64,
    /// For grants: how long approved access lasts.
    pub duration_us: Option<i64>,
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Continues numbering after `last` (the highest id in the audit store).
    pub fn start_after(&self, last: RequestId) {
        let mut inner = self.lock();
        inner.next = inner.next.max(last);
    }

    /// Opens a request; the receiver follows its state. A requester (by
    /// uid; root is not counted) with `max_pending` requests pending gets
    /// none: every request is a record and a notification to the approvers,
    /// and a local user must not be able to flood them (or the agent's
    /// memory) with requests. The error says so and names the setting.
    pub fn open(
        &self,
        o: Open,
        now_us: i64,
        max_pending: usize,
    ) -> Result<(Transition, watch::Receiver<State>), String> {
        let mut inner = self.lock();
        let uid = o.requester.uid.0;
        if uid != 0 {
            let pending = inner
                .requests
                .values()
                .filter(|e| e.request.requester.uid == uid && e.request.state == State::Pending)
                .count();
            if pending >= max_pending {
                return Err(format!(
                    "uid {uid} already has {pending} approval requests pending ([agent] max_pending_requests_per_user = {max_pending}); wait for them to be decided, or withdraw one"
                ));
            }
        }
        inner.next += 1;
        let id = inner.next;
        let request = Request {
            id,
            subject: o.subject,
            requester: Person::of(&o.requester),
            reason: o.reason,
            approvers: o.approvers_label,
            needed: o.needed.max(1),
            approvals: Vec::new(),
            state: State::Pending,
            created_us: now_us,
            deadline_us: now_us.saturating_add(o.timeout_us),
            until_us: o.duration_us,
        };
        let (tx, rx) = watch::channel(State::Pending);
        inner.requests.insert(id, Entry { request: request.clone(), by: o.approvers, watch: tx });
        Ok((Transition { request, event: "requested", by: None }, rx))
    }

    /// Whether `caller` may decide request `id` (an approver, not the requester).
    fn may_decide(entry: &Entry, caller: &Principal) -> bool {
        entry.by.matches(caller).is_some()
    }

    /// Approves (`approve`) or denies a pending request as `caller`.
    pub fn decide(
        &self,
        id: RequestId,
        caller: &Principal,
        approve: bool,
        reason: Option<String>,
        now_us: i64,
    ) -> Result<Transition, ApprovalError> {
        let mut inner = self.lock();
        let entry =
            inner.requests.get_mut(&id).filter(|e| Self::may_decide(e, caller)).ok_or(ApprovalError::Unknown(id))?;
        if entry.request.state != State::Pending {
            return Err(ApprovalError::NotPending { id, state: entry.request.state.name() });
        }
        let who = Person::of(caller);
        if who.same_as(&entry.request.requester) {
            return Err(ApprovalError::SelfApproval(id));
        }
        let event = if approve {
            if entry.request.approvals.iter().any(|a| a.same_as(&who)) {
                return Err(ApprovalError::AlreadyApproved(id));
            }
            entry.request.approvals.push(who.clone());
            if entry.request.approvals.len() < entry.request.needed as usize {
                "approval"
            } else {
                entry.request.state = State::Approved { at_us: now_us };
                if let Some(d) =
                    entry.request.until_us.filter(|_| matches!(entry.request.subject, Subject::Grant { .. }))
                {
                    // A grant's clock starts when it is approved.
                    entry.request.until_us = Some(now_us.saturating_add(d));
                }
                "approved"
            }
        } else {
            entry.request.state = State::Denied { by: who.clone(), reason, at_us: now_us };
            "denied"
        };
        entry.watch.send_replace(entry.request.state.clone());
        Ok(Transition { request: entry.request.clone(), event, by: Some(who) })
    }

    /// Ends a pending request the requester no longer waits for.
    pub fn withdraw(&self, id: RequestId, now_us: i64) -> Option<Transition> {
        self.finish(id, State::Withdrawn { at_us: now_us }, "withdrawn", None)
    }

    /// Ends a pending request whose time is up.
    pub fn time_out(&self, id: RequestId, now_us: i64) -> Option<Transition> {
        self.finish(id, State::TimedOut { at_us: now_us }, "timed_out", None)
    }

    fn finish(&self, id: RequestId, state: State, event: &'static str, by: Option<Person>) -> Option<Transition> {
        let mut inner = self.lock();
        let entry = inner.requests.get_mut(&id)?;
        if entry.request.state != State::Pending {
            return None;
        }
        entry.request.state = state;
        entry.watch.send_replace(entry.request.state.clone());
        Some(Transition { request: entry.request.clone(), event, by })
    }

    /// Withdraws what a session was waiting for (it ended, or its client cancelled).
    pub fn withdraw_session(&self, session: &str, now_us: i64) -> Vec<Transition> {
        let ids: Vec<RequestId> = self
            .lock()
            .requests
            .values()
            .filter(|e| e.request.state == State::Pending)
            .filter(|e| match &e.request.subject {
                Subject::Statement { session: s, .. }
                | Subject::Connect { session: s, .. }
                | Subject::Ssh { session: s, .. }
                | Subject::HttpRequest { session: s, .. } => s == session,
                Subject::Grant { .. } => false,
            })
            .map(|e| e.request.id)
            .collect();
        ids.into_iter().filter_map(|id| self.withdraw(id, now_us)).collect()
    }

    /// Takes an approved grant back (an approver of it, or root).
    pub fn revoke(&self, id: RequestId, caller: &Principal, now_us: i64) -> Result<Transition, ApprovalError> {
        let mut inner = self.lock();
        let entry = inner
            .requests
            .get_mut(&id)
            .filter(|e| caller.uid.0 == 0 || Self::may_decide(e, caller))
            .ok_or(ApprovalError::Unknown(id))?;
        if !matches!(entry.request.subject, Subject::Grant { .. })
            || !matches!(entry.request.state, State::Approved { .. })
        {
            return Err(ApprovalError::NotAGrant(id));
        }
        let who = Person::of(caller);
        entry.request.state = State::Revoked { by: who.clone(), at_us: now_us };
        entry.watch.send_replace(entry.request.state.clone());
        Ok(Transition { request: entry.request.clone(), event: "revoked", by: Some(who) })
    }

    /// Times out pending requests past their deadline and expires grants
    /// past their end; forgets requests decided long ago.
    pub fn tick(&self, now_us: i64) -> Vec<Transition> {
        let mut inner = self.lock();
        let mut out = Vec::new();
        for entry in inner.requests.values_mut() {
            let r = &mut entry.request;
            let next = match &r.state {
                State::Pending if now_us >= r.deadline_us => Some((State::TimedOut { at_us: now_us }, "timed_out")),
                State::Approved { .. } if r.until_us.is_some_and(|u| now_us >= u) => {
                    Some((State::Expired { at_us: now_us }, "expired"))
                }
                _ => None,
            };
            if let Some((state, event)) = next {
                r.state = state;
                entry.watch.send_replace(r.state.clone());
                out.push(Transition { request: r.clone(), event, by: None });
            }
        }
        inner
            .requests
            .retain(|_, e| !e.request.state.is_final() || decided_at(&e.request.state) + KEEP_DECIDED_US > now_us);
        out
    }

    /// Requests `caller` may see: their own, and those they may decide
    /// (root sees all). `mine`: only their own.
    pub fn list(&self, caller: &Principal, mine: bool) -> Vec<Request> {
        let inner = self.lock();
        let me = Person::of(caller);
        inner
            .requests
            .values()
            .filter(|e| {
                let own = e.request.requester.same_as(&me);
                own || (!mine && (caller.uid.0 == 0 || Self::may_decide(e, caller)))
            })
            .map(|e| e.request.clone())
            .collect()
    }

    /// Approved grants in force at `now_us`.
    pub fn active_grants(&self, now_us: i64) -> Vec<Request> {
        self.lock()
            .requests
            .values()
            .filter(|e| {
                matches!(e.request.subject, Subject::Grant { .. })
                    && matches!(e.request.state, State::Approved { .. })
                    && e.request.until_us.is_some_and(|u| now_us < u)
            })
            .map(|e| e.request.clone())
            .collect()
    }

    /// Puts back a grant approved before a restart (from the audit store).
    pub fn restore(&self, request: Request, by: Who) {
        let (tx, _) = watch::channel(request.state.clone());
        let mut inner = self.lock();
        inner.next = inner.next.max(request.id);
        inner.requests.insert(request.id, Entry { request, by, watch: tx });
    }

    pub fn get(&self, id: RequestId) -> Option<Request> {
        self.lock().requests.get(&id).map(|e| e.request.clone())
    }
}

/// A request being waited for: its id, its state, when to give up, and
/// who decides (for the message to the waiting client).
#[derive(Debug, Clone)]
pub struct Waiting {
    pub id: RequestId,
    pub state: watch::Receiver<State>,
    pub timeout: std::time::Duration,
    pub approvers: String,
}

impl Waiting {
    /// Waits until the request is decided, or times it out at its deadline.
    pub async fn outcome(mut self, registry: &Registry, on_timeout: impl Fn(&Transition)) -> State {
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            let now = self.state.borrow_and_update().clone();
            if now != State::Pending {
                return now;
            }
            tokio::select! {
                changed = self.state.changed() => if changed.is_err() {
                    return State::Withdrawn { at_us: crate::audit::now_us() };
                },
                () = tokio::time::sleep_until(deadline) => {
                    if let Some(t) = registry.time_out(self.id, crate::audit::now_us()) {
                        on_timeout(&t);
                    }
                }
            }
        }
    }

    /// What to tell someone whose request ended in `state`.
    pub fn refusal(&self, state: &State) -> String {
        let id = self.id;
        match state {
            State::Denied { by, reason, .. } => format!(
                "request {id} was denied by {}{}",
                by.label(),
                reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default()
            ),
            State::TimedOut { .. } => format!("request {id} was not approved in time"),
            _ => format!("request {id} was withdrawn"),
        }
    }
}

fn decided_at(s: &State) -> i64 {
    match s {
        State::Pending => i64::MAX,
        State::Approved { at_us }
        | State::TimedOut { at_us }
        | State::Withdrawn { at_us }
        | State::Expired { at_us }
        | State::Denied { at_us, .. }
        | State::Revoked { at_us, .. } => *at_us,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Uid;

    fn person(uid: u32, user: &str, groups: &[&str]) -> Principal {
        let mut p = Principal::named(user, groups);
        p.uid = Uid(uid);
        p
    }

    fn leads() -> Who {
        Who { groups: vec!["sre-leads".into()], ..Who::default() }
    }

    fn open(
        reg: &Registry,
        requester: &Principal,
        needed: u32,
        subject: Subject,
    ) -> (RequestId, watch::Receiver<State>) {
        let (t, rx) = reg
            .open(
                Open {
                    subject,
                    requester: requester.clone(),
                    reason: Some("INC-1".into()),
                    approvers: leads(),
                    approvers_label: "sre-leads".into(),
                    needed,
                    timeout_us: 1_000,
                    duration_us: Some(10_000),
                },
                100,
                16,
            )
            .expect("opened");
        assert_eq!(t.event, "requested");
        (t.request.id, rx)
    }

    /// A requester has at most `max_pending` requests pending; decided ones
    /// do not count, other users and root are not held back.
    #[test]
    fn a_requester_has_at_most_max_pending_requests() {
        let reg = Registry::default();
        let dan = person(1001, "dan", &["dba"]);
        let lea = person(1002, "lea", &["sre-leads"]);
        let ask = |who: &Principal| {
            let o = Open {
                subject: stmt(),
                requester: who.clone(),
                reason: None,
                approvers: leads(),
                approvers_label: "sre-leads".into(),
                needed: 1,
                timeout_us: 1_000,
                duration_us: None,
            };
            reg.open(o, 100, 2).map(|(t, _)| t.request.id)
        };
        let first = ask(&dan).expect("first");
        ask(&dan).expect("second");
        let why = ask(&dan).expect_err("third while two are pending");
        assert!(why.contains("uid 1001 already has 2") && why.contains("max_pending_requests_per_user = 2"), "{why}");
        assert_eq!(reg.lock().requests.len(), 2, "the refused one was not opened");
        ask(&person(1003, "eve", &[])).expect("another user");
        for _ in 0..5 {
            ask(&person(0, "root", &[])).expect("root is not counted");
        }
        reg.decide(first, &lea, false, None, 200).expect("denied");
        ask(&dan).expect("a decided request no longer counts");
    }

    fn stmt() -> Subject {
        Subject::Statement {
            session: "s".into(),
            backend: "db".into(),
            text: "DROP TABLE t".into(),
            kinds: "drop".into(),
            rule: "r".into(),
            parameters: Vec::new(),
        }
    }

    #[test]
    fn approvers_decide_and_the_waiter_sees_it() {
        let reg = Registry::default();
        let dan = person(1001, "dan", &["dba"]);
        let lea = person(1002, "lea", &["sre-leads"]);
        let (id, rx) = open(&reg, &dan, 1, stmt());
        assert_eq!(*rx.borrow(), State::Pending);
        // Not an approver: the request does not exist for them.
        let eve = person(1003, "eve", &[]);
        assert_eq!(reg.decide(id, &eve, true, None, 200).err(), Some(ApprovalError::Unknown(id)));
        assert!(reg.list(&eve, false).is_empty());
        let t = reg.decide(id, &lea, true, None, 200).unwrap();
        assert_eq!(t.event, "approved");
        assert!(matches!(*rx.borrow(), State::Approved { .. }));
        assert!(matches!(reg.decide(id, &lea, false, None, 300), Err(ApprovalError::NotPending { .. })));
    }

    #[test]
    fn nobody_approves_their_own_request_and_quorums_count_people() {
        let reg = Registry::default();
        let lea = person(1002, "lea", &["sre-leads"]);
        let sam = person(1004, "sam", &["sre-leads"]);
        let kim = person(1005, "kim", &["sre-leads"]);
        let (id, rx) = open(&reg, &lea, 2, stmt());
        assert_eq!(reg.decide(id, &lea, true, None, 200).err(), Some(ApprovalError::SelfApproval(id)));
        assert_eq!(reg.decide(id, &sam, true, None, 200).unwrap().event, "approval");
        assert_eq!(reg.decide(id, &sam, true, None, 210).err(), Some(ApprovalError::AlreadyApproved(id)));
        assert_eq!(*rx.borrow(), State::Pending);
        assert_eq!(reg.decide(id, &kim, true, None, 220).unwrap().event, "approved");
        // The same person under another uid (OIDC subject) is still themselves.
        let (id2, _) = open(&reg, &lea, 1, stmt());
        let mut lea_again = person(2002, "lea2", &["sre-leads"]);
        lea_again.oidc = Some(crate::identity::OidcIdentity { subject: "lea@idp".into(), ..Default::default() });
        let mut lea_oidc = lea.clone();
        lea_oidc.oidc = lea_again.oidc.clone();
        let (id3, _) = open(&reg, &lea_oidc, 1, stmt());
        assert!(reg.decide(id2, &lea_again, true, None, 300).is_ok());
        assert_eq!(reg.decide(id3, &lea_again, true, None, 300).err(), Some(ApprovalError::SelfApproval(id3)));
    }

    #[test]
    fn denials_timeouts_withdrawals_and_grant_lifetimes() {
        let reg = Registry::default();
        let dan = person(1001, "dan", &["dba"]);
        let lea = person(1002, "lea", &["sre-leads"]);
        let (a, rx) = open(&reg, &dan, 1, stmt());
        let t = reg.decide(a, &lea, false, Some("not now".into()), 200).unwrap();
        assert_eq!(t.event, "denied");
        assert!(matches!(&*rx.borrow(), State::Denied { reason: Some(r), .. } if r == "not now"));
        let (b, _) = open(&reg, &dan, 1, stmt());
        assert!(reg.withdraw(b, 150).is_some());
        assert!(reg.withdraw(b, 160).is_none(), "only once");
        let (c, rx) = open(&reg, &dan, 1, stmt());
        let ts = reg.tick(100 + 1_000);
        assert!(ts.iter().any(|t| t.request.id == c && t.event == "timed_out"));
        assert!(matches!(*rx.borrow(), State::TimedOut { .. }));
        // A grant: its clock starts at approval; expiry and revocation end it.
        let g = Subject::Grant { grant: "orders admin".into(), backend: "db".into(), duration_s: 10 };
        let (d, _) = open(&reg, &dan, 1, g.clone());
        reg.decide(d, &lea, true, None, 500).unwrap();
        assert_eq!(reg.active_grants(600).len(), 1);
        assert_eq!(reg.get(d).unwrap().until_us, Some(10_500));
        assert!(reg.tick(10_500).iter().any(|t| t.request.id == d && t.event == "expired"));
        assert!(reg.active_grants(10_600).is_empty());
        let (e, _) = open(&reg, &dan, 1, g);
        reg.decide(e, &lea, true, None, 700).unwrap();
        assert_eq!(reg.revoke(e, &dan, 800).err(), Some(ApprovalError::Unknown(e)), "the requester cannot revoke");
        assert_eq!(reg.revoke(e, &lea, 800).unwrap().event, "revoked");
        assert!(reg.active_grants(900).is_empty());
        assert_eq!(reg.revoke(a, &lea, 900).err(), Some(ApprovalError::NotAGrant(a)));
    }
}
