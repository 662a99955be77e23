//! Decisions: pure functions of the policy, the principal, the request and
//! the time. An index built at load time keeps a decision well under a
//! microsecond with a thousand rules: candidate rules are found by backend
//! and then by user, uid, group, OIDC group/subject/e-mail, or "everyone".
//!
//! A rule's `require` (a login to the IdP, its age, its acr) works like its
//! time window: a rule whose requirement the principal does not meet does
//! not apply, and when nothing else allows, the refusal says what to do
//! (`run gatehouse login`).

use std::collections::HashMap;
use std::time::Duration;

use serde::Serialize;
use smallvec::SmallVec;

use super::{Action, Policy, Rule, WhoMatch};
use crate::identity::Principal;
use crate::sql::{Kind, QueryLimits, Statement};
use crate::types::{BackendName, DbRole, RuleName};

/// What is being asked.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub backend: &'a BackendName,
    /// `None`: opening a connection. `Some`: one classified statement.
    pub statement: Option<&'a Statement>,
    pub now: jiff::Timestamp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Allow,
    Deny,
    /// Allowed once a member of the approver group approves.
    NeedsApproval,
}

/// The closest rule that did not apply, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Miss {
    pub rule: RuleName,
    pub why: Vec<String>,
}

/// The outcome of a decision, naming the rule that made it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub verdict: Verdict,
    /// `None` for the default deny.
    pub rule: Option<RuleName>,
    reason: String,
    /// When refused by default: the closest rule that did not match.
    pub closest: Option<Miss>,
    /// For allowed connections: the backend role to log in as.
    pub as_role: Option<DbRole>,
    /// The masking profile results pass through.
    pub mask: Option<std::sync::Arc<str>>,
    pub max_session: Option<Duration>,
    /// The winning allow rule's `query_limits` (the defaults otherwise).
    pub query_limits: QueryLimits,
    /// For `NeedsApproval`: who may approve, and how long to wait.
    pub approvers: Option<String>,
    pub approval_timeout: Option<Duration>,
    /// For allows: the server-side guard rails of the rule's sessions.
    pub guard: super::Guard,
}

impl Decision {
    pub fn allowed(&self) -> bool {
        self.verdict == Verdict::Allow
    }

    pub fn rule_label(&self) -> &str {
        self.rule.as_ref().map_or("(default deny)", RuleName::as_str)
    }

    /// Fills in the text of an allow's reason (for explanations and JSON).
    #[must_use]
    pub fn with_reason_text(mut self) -> Self {
        if self.reason.is_empty() {
            self.reason = self.reason().into_owned();
        }
        self
    }

    /// Why: the refusal's reason, or for an allow, the rule that allowed it.
    pub fn reason(&self) -> std::borrow::Cow<'_, str> {
        if self.reason.is_empty() && self.verdict == Verdict::Allow {
            format!("allowed by rule {:?}", self.rule_label()).into()
        } else {
            self.reason.as_str().into()
        }
    }

    fn new(verdict: Verdict, rule: Option<&Rule>, reason: String) -> Self {
        Self {
            verdict,
            rule: rule.map(|r| r.name.clone()),
            reason,
            closest: None,
            as_role: None,
            mask: None,
            max_session: None,
            query_limits: QueryLimits::default(),
            approvers: None,
            approval_timeout: None,
            guard: super::Guard::default(),
        }
    }

    /// A refusal that no rule made (unknown backend, parse failure…).
    pub fn refuse(reason: impl Into<String>) -> Self {
        Self::new(Verdict::Deny, None, reason.into())
    }
}

/// One rule's part in a decision, for `gatehouse policy explain`.
#[derive(Debug, Clone, Serialize)]
pub struct TraceEntry {
    pub rule: RuleName,
    pub action: Action,
    pub location: String,
    /// What the rule requires of the login, if anything (`login, max_age 8h`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub require: Option<String>,
    /// Empty when the rule applied.
    pub why_not: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Trace {
    pub decision: Decision,
    pub considered: Vec<TraceEntry>,
}

/// FNV-1a: the index keys are short names, where SipHash's setup dominates.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl std::hash::Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

type FastMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<Fnv>>;

/// Per backend, the rules that name it, by who they name.
#[derive(Debug, Clone, Default)]
pub(crate) struct Index {
    backends: FastMap<BackendName, WhoIndex>,
}

/// A rule naming a backend: its index, and whether it names the backend
/// exactly (not by a glob).
type Entry = (u32, bool);

#[derive(Debug, Clone, Default)]
struct WhoIndex {
    users: FastMap<String, Vec<Entry>>,
    uids: FastMap<u32, Vec<Entry>>,
    groups: FastMap<String, Vec<Entry>>,
    oidc_groups: FastMap<String, Vec<Entry>>,
    subjects: FastMap<String, Vec<Entry>>,
    emails: FastMap<String, Vec<Entry>>,
    everyone: Vec<Entry>,
}

/// A candidate rule: index, how `who` matched, whether the backend is named exactly.
type Candidate = (u32, WhoMatch, bool);

impl Index {
    pub(crate) fn build(policy: &Policy) -> Self {
        let mut backends: FastMap<BackendName, WhoIndex> = FastMap::default();
        for b in &policy.backends {
            let wi = backends.entry(b.name.clone()).or_default();
            for r in &policy.rules {
                if !r.backends.iter().any(|p| p.matches(b.name.as_str())) {
                    continue;
                }
                let exact = r.backends.iter().any(|p| !p.is_glob() && p.matches(b.name.as_str()));
                let i = (u32::try_from(r.index).unwrap_or(u32::MAX), exact);
                let w = &r.who;
                for u in &w.users {
                    wi.users.entry(u.clone()).or_default().push(i);
                }
                for u in &w.uids {
                    wi.uids.entry(*u).or_default().push(i);
                }
                for g in &w.groups {
                    wi.groups.entry(g.clone()).or_default().push(i);
                }
                for g in &w.oidc_groups {
                    wi.oidc_groups.entry(g.clone()).or_default().push(i);
                }
                for s in &w.subjects {
                    wi.subjects.entry(s.clone()).or_default().push(i);
                }
                for e in &w.emails {
                    wi.emails.entry(e.clone()).or_default().push(i);
                }
                if w.any {
                    wi.everyone.push(i);
                }
            }
        }
        Self { backends }
    }

    /// The rules naming `backend` whose `who` matches `p`, with how
    /// specifically, in file order.
    ///
    /// On the stack for up to 16 candidates: every statement is decided, and
    /// a heap list here was one allocation (and a free) of each.
    fn candidates(&self, backend: &BackendName, p: &Principal) -> SmallVec<[Candidate; 16]> {
        let mut out = SmallVec::new();
        let Some(wi) = self.backends.get(backend) else { return out };
        let mut add = |v: Option<&Vec<Entry>>, m: WhoMatch| {
            if let Some(v) = v {
                out.extend(v.iter().map(|(i, exact)| (*i, m, *exact)));
            }
        };
        if let Some(u) = &p.user {
            add(wi.users.get(u.as_str()), WhoMatch::Person);
        }
        add(wi.uids.get(&p.uid.0), WhoMatch::Person);
        for g in &p.groups {
            add(wi.groups.get(g.as_str()), WhoMatch::Group);
        }
        if let Some(o) = &p.oidc {
            add(wi.subjects.get(&o.subject), WhoMatch::Person);
            if let Some(e) = o.verified_email() {
                add(wi.emails.get(e), WhoMatch::Person);
            }
            for g in &o.groups {
                add(wi.oidc_groups.get(g.as_str()), WhoMatch::Group);
            }
        }
        add(Some(&wi.everyone), WhoMatch::Everyone);
        // File order; for a rule matched several ways keep the most specific.
        out.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        out.dedup_by_key(|c| c.0);
        out
    }
}

/// Kinds every rule allows implicitly (they can still be denied): session
/// housekeeping, and wrappers whose inner statement is checked on its own.
fn implicit(k: Kind) -> bool {
    k.is_session() || matches!(k, Kind::Explain | Kind::Prepare)
}

/// Flags that qualify another kind; they matter to deny lists and approvals only.
fn flag(k: Kind) -> bool {
    matches!(k, Kind::UpdateWithoutWhere | Kind::DeleteWithoutWhere)
}

impl Rule {
    /// Whether a deny rule's scope covers this statement.
    fn deny_scope_matches(&self, s: &Statement) -> bool {
        let kinds_ok =
            self.statements == super::KindSet::default() || s.kinds.iter().any(|k| self.statements.contains(*k));
        let tables_ok = self.tables.is_empty()
            || s.reads.iter().chain(&s.writes).any(|t| self.tables.iter().any(|p| p.matches(t, true)));
        kinds_ok && tables_ok
    }

    /// Why this allow rule refuses `s`, if it does.
    fn refuses(&self, s: &Statement) -> Option<String> {
        if let Some(k) = s.kinds.iter().find(|k| self.deny_statements.contains(k)) {
            return Some(format!("{} statements are denied by its deny_statements", k.name()));
        }
        if let Some(k) = s.kinds.iter().find(|k| !implicit(**k) && !flag(**k) && !self.statements.contains(**k)) {
            let hint = if k.is_opaque() && self.statements.star {
                " (\"*\" does not cover it: its effect cannot be read from the text; a rule must name it)"
            } else {
                ""
            };
            return Some(format!("{} is not in its statements {}{hint}", k.name(), self.statements.describe()));
        }
        if self.catalog != super::CatalogAccess::All
            && let Some(t) = s.sensitive.first()
        {
            let t = t.recorded();
            return Some(format!(
                "catalog relation {t} needs catalog = \"all\" (it holds statistics, activity, secrets or configuration); the rule has catalog = \"{}\"",
                self.catalog.name()
            ));
        }
        if self.catalog == super::CatalogAccess::None
            && let Some(t) = s.reads.iter().find(|t| is_catalog(t))
        {
            let t = t.recorded();
            return Some(format!("catalog relation {t} is not readable under catalog = \"none\""));
        }
        // Tables read through views count for deny_tables: a view over a denied table is denied.
        let touched = || s.reads.iter().chain(&s.writes).chain(&s.via_views);
        if let Some(t) = touched().find(|t| self.deny_tables.iter().any(|p| p.matches(t, true))) {
            let how = if s.via_views.contains(t) && !s.reads.contains(t) {
                " (read through a view, a partition or an inheritance parent)"
            } else {
                ""
            };
            return Some(format!("table {} is in its deny_tables{how}", t.recorded()));
        }
        // Catalog relations read are governed by `catalog`, not `tables`.
        let listed = || s.reads.iter().filter(|t| !is_catalog(t)).chain(&s.writes);
        if !self.tables.is_empty()
            && let Some(t) = listed().find(|t| !self.tables.iter().any(|p| p.matches(t, false)))
        {
            let list: Vec<String> = self.tables.iter().map(ToString::to_string).collect();
            return Some(format!("table {} is not in its tables [{}]", t.recorded(), list.join(", ")));
        }
        None
    }
}

/// A relation of `pg_catalog` or `information_schema` (as resolved by the catalog pass).
fn is_catalog(t: &crate::sql::TableRef) -> bool {
    matches!(t.schema.as_deref(), Some("pg_catalog" | "information_schema"))
}

/// Why `rule` does not apply to `p` on `req` (empty: it applies).
fn mismatches(rule: &Rule, p: &Principal, req: &Request<'_>) -> Vec<String> {
    let mut why = Vec::new();
    if !rule.backends.iter().any(|b| b.matches(req.backend.as_str())) {
        let list: Vec<&str> = rule.backends.iter().map(super::NamePattern::as_str).collect();
        why.push(format!("backend {} is not in [{}]", req.backend, list.join(", ")));
    }
    if rule.who.matches(p).is_none() {
        let groups: Vec<&str> = p.groups.iter().map(|g| g.as_str()).collect();
        match &p.oidc {
            None if rule.who.needs_login() => {
                why.push(format!(
                    "{p} has no login to the identity provider, and the rule names {}",
                    rule.who.describe()
                ));
            }
            None => why.push(format!("{p} (groups [{}]) is not {}", groups.join(", "), rule.who.describe())),
            Some(o) => {
                let g: Vec<&str> = o.groups.iter().map(|g| g.as_str()).collect();
                why.push(format!(
                    "{p} (groups [{}], oidc_groups [{}]) is not {}",
                    groups.join(", "),
                    g.join(", "),
                    rule.who.describe()
                ));
            }
        }
    }
    if let Some(w) = &rule.when
        && let Err(e) = w.check(req.now)
    {
        why.push(e);
    }
    if let Some(q) = &rule.require
        && let Some(e) = q.unmet(p, req.now)
    {
        why.push(e);
    }
    why
}

impl Policy {
    /// Whether the rule that decided `d` has `deny_tables` (a rule not in
    /// the policy files, from a grant: assumed to), so what a statement
    /// reaches through views matters to it.
    pub fn may_deny_tables(&self, d: &Decision) -> bool {
        self.rules.iter().find(|r| Some(&r.name) == d.rule.as_ref()).is_none_or(|r| !r.deny_tables.is_empty())
    }

    /// Decides `req` for `p`.
    pub fn decide(&self, p: &Principal, req: &Request<'_>) -> Decision {
        self.decide_inner(p, req, None, None, &[], None)
    }

    /// Decides one HTTP request on `req.backend` (whose `statement` is
    /// `None`) for `p`, with `grants` in force.
    pub fn decide_http_with(
        &self,
        p: &Principal,
        req: &Request<'_>,
        http: &super::http::HttpRequest<'_>,
        grants: &[Rule],
    ) -> Decision {
        self.decide_inner(p, req, Some(http), None, grants, None)
    }

    /// Decides one SSH channel request on `req.backend` (whose `statement`
    /// is `None`) for `p`, with `grants` in force.
    pub fn decide_ssh_with(
        &self,
        p: &Principal,
        req: &Request<'_>,
        ssh: &super::ssh::SshRequest<'_>,
        grants: &[Rule],
    ) -> Decision {
        self.decide_inner(p, req, None, Some(ssh), grants, None)
    }

    /// Decides `req` for `p` with `grants` (rules made from approved
    /// just-in-time grants) in force besides the policy's own rules. A
    /// grant wins over an allow rule as specific as it; any deny rule still
    /// beats it.
    pub fn decide_with(&self, p: &Principal, req: &Request<'_>, grants: &[Rule]) -> Decision {
        self.decide_inner(p, req, None, None, grants, None)
    }

    /// May `p` open a connection to `backend` at `now`?
    pub fn decide_connect(&self, p: &Principal, backend: &BackendName, now: jiff::Timestamp) -> Decision {
        self.decide(p, &Request { backend, statement: None, now })
    }

    /// [`Self::decide_connect`] with grants in force.
    pub fn decide_connect_with(
        &self,
        p: &Principal,
        backend: &BackendName,
        now: jiff::Timestamp,
        grants: &[Rule],
    ) -> Decision {
        self.decide_with(p, &Request { backend, statement: None, now }, grants)
    }

    /// Decides and records every rule considered, for `explain`.
    pub fn explain(&self, p: &Principal, req: &Request<'_>) -> Trace {
        let mut considered = Vec::new();
        let decision = self.decide_inner(p, req, None, None, &[], Some(&mut considered)).with_reason_text();
        Trace { decision, considered }
    }

    fn decide_inner(
        &self,
        p: &Principal,
        req: &Request<'_>,
        http: Option<&super::http::HttpRequest<'_>>,
        ssh: Option<&super::ssh::SshRequest<'_>>,
        grants: &[Rule],
        mut trace: Option<&mut Vec<TraceEntry>>,
    ) -> Decision {
        if self.backend(req.backend).is_none() {
            return Decision::refuse(format!("{} is not a backend of this policy", req.backend));
        }
        if let Some(t) = trace.as_mut() {
            for r in &self.rules {
                t.push(TraceEntry {
                    rule: r.name.clone(),
                    action: r.action,
                    location: r.at.to_string(),
                    require: r.require.as_ref().map(super::Require::describe),
                    why_not: mismatches(r, p, req),
                });
            }
        }
        let mut best: Option<(&Rule, (WhoMatch, u8))> = None;
        for (i, who, exact) in self.index.candidates(req.backend, p) {
            let Some(r) = self.rules.get(usize::try_from(i).unwrap_or(usize::MAX)) else { continue };
            if r.when.as_ref().is_some_and(|w| w.check(req.now).is_err()) {
                continue;
            }
            if r.require.as_ref().is_some_and(|q| !q.is_met(p, req.now)) {
                continue;
            }
            match r.action {
                Action::Deny => {
                    let applies = match (req.statement, http, ssh) {
                        (_, _, Some(x)) => r.denies_connection() || (!r.ssh.is_unscoped() && r.ssh.deny_matches(x)),
                        (Some(s), _, None) => r.denies_connection() || r.deny_scope_matches(s),
                        (None, Some(h), None) => {
                            r.denies_connection() || (!r.http.is_unscoped() && r.http.deny_matches(h))
                        }
                        (None, None, None) => r.denies_connection(),
                    };
                    if applies {
                        let what = match (req.statement, http, ssh) {
                            (_, _, Some(x)) => x.describe(),
                            (Some(s), _, None) => format!("this statement ({})", crate::sql::kinds_text(&s.kinds)),
                            (None, Some(h), None) => format!("this request ({})", h.line()),
                            (None, None, None) => format!("access to {}", req.backend),
                        };
                        return Decision::new(
                            Verdict::Deny,
                            Some(r),
                            format!("rule {:?} denies {p} {what}", r.name.as_str()),
                        );
                    }
                }
                Action::Allow => {
                    let score = (who, u8::from(exact));
                    // Between HTTP rules as specific as each other, one whose
                    // request scope admits the request beats one that refuses it.
                    let admits_instead =
                        |b: &Rule| http.is_some_and(|h| b.http.refuses(h).is_some() && r.http.refuses(h).is_none());
                    if best.is_none_or(|(b, s)| score > s || (score == s && admits_instead(b))) {
                        best = Some((r, score));
                    }
                }
            }
        }
        for r in grants {
            let (Some(who), true) = (r.who.matches(p), r.backends.iter().any(|b| b.matches(req.backend.as_str())))
            else {
                continue;
            };
            if r.action != Action::Allow || r.when.as_ref().is_some_and(|w| w.check(req.now).is_err()) {
                continue;
            }
            let score = (who, 1);
            if best.is_none_or(|(_, s)| score >= s) {
                best = Some((r, score));
            }
        }
        let Some((rule, _)) = best else {
            let mut d = Decision::refuse(format!("no rule allows {p} to reach {} (default deny)", req.backend));
            d.closest = self.closest_miss(p, req);
            if let Some(m) = &d.closest {
                d.reason.push_str(&format!("; closest rule {:?}: {}", m.rule.as_str(), m.why.join("; ")));
            }
            if self.login_would_help(p, req) && !d.reason.contains("gatehouse login") {
                d.reason.push_str(
                    "; rules for this backend apply only after a login to the identity provider: run `gatehouse login`",
                );
            }
            return d;
        };
        let mut d = Decision::new(Verdict::Allow, Some(rule), String::new());
        d.as_role = rule.as_role.clone();
        d.mask = rule.mask.clone();
        d.max_session = rule.max_session;
        d.guard = rule.guard();
        d.query_limits = rule.query_limits;
        // Allows carry no text: it is built on demand (see `Decision::reason`),
        // keeping the common path free of allocation.
        if let Some(x) = ssh {
            if let Some(why) = rule.ssh.refuses(x) {
                d.verdict = Verdict::Deny;
                d.reason = format!("rule {:?} refuses {}: {why}", rule.name.as_str(), x.describe());
                return d;
            }
            let held = rule.approval.as_ref().filter(|a| match x {
                super::ssh::SshRequest::Exec(_) => a.ssh_exec,
                super::ssh::SshRequest::Shell => a.ssh_shell,
                _ => false,
            });
            if let Some(a) = held {
                d.verdict = Verdict::NeedsApproval;
                let by = a.by_name.clone().unwrap_or_else(|| a.by.describe());
                d.reason = format!("rule {:?} requires approval by {by} for {}", rule.name.as_str(), x.describe());
                d.approvers = Some(by);
                d.approval_timeout = Some(a.timeout);
            }
            return d;
        }
        if let Some(h) = http {
            if let Some(why) = rule.http.refuses(h) {
                d.verdict = Verdict::Deny;
                d.reason = format!("rule {:?} refuses this request: {why}", rule.name.as_str());
            } else if let Some(a) = &rule.approval
                && let Some(held) = a.methods.iter().find(|m| {
                    *m == "*"
                        || m.eq_ignore_ascii_case(h.method)
                        || (m.contains('/')
                            && super::http::k8s::parse(h.method, h.path, h.query).is_some_and(|k| k.resource == **m))
                })
            {
                d.verdict = Verdict::NeedsApproval;
                let by = a.by_name.clone().unwrap_or_else(|| a.by.describe());
                let what = if held.contains('/') { held.as_str() } else { h.method };
                d.reason = format!("rule {:?} requires approval by {by} for {what} requests", rule.name.as_str());
                d.approvers = Some(by);
                d.approval_timeout = Some(a.timeout);
            }
            return d;
        }
        let Some(s) = req.statement else {
            if let Some(a) = rule.approval.as_ref().filter(|a| a.connect) {
                d.verdict = Verdict::NeedsApproval;
                let by = a.by_name.clone().unwrap_or_else(|| a.by.describe());
                d.reason = format!("rule {:?} requires approval by {by} to connect", rule.name.as_str());
                d.approvers = Some(by);
                d.approval_timeout = Some(a.timeout);
            }
            return d;
        };
        if let Some(why) = rule.refuses(s) {
            d.verdict = Verdict::Deny;
            d.reason = format!("rule {:?} refuses this statement: {why}", rule.name.as_str());
            return d;
        }
        if let Some(a) = &rule.approval
            && let Some(k) = s.kinds.iter().find(|k| a.kinds.contains(k))
        {
            d.verdict = Verdict::NeedsApproval;
            let by = a.by_name.clone().unwrap_or_else(|| a.by.describe());
            d.reason = format!("rule {:?} requires approval by {by} for {} statements", rule.name.as_str(), k.name());
            d.approvers = Some(by);
            d.approval_timeout = Some(a.timeout);
            return d;
        }
        d
    }

    /// Whether `p` has no (fresh enough) login while an allow rule for this
    /// backend could apply only after one: then the refusal says to log in.
    fn login_would_help(&self, p: &Principal, req: &Request<'_>) -> bool {
        self.identity.is_some()
            && self.rules.iter().any(|r| {
                r.action == Action::Allow
                    && r.backends.iter().any(|b| b.matches(req.backend.as_str()))
                    && ((p.oidc.is_none() && r.who.needs_login())
                        || r.require.as_ref().is_some_and(|q| !q.is_met(p, req.now)))
            })
    }

    /// The allow rule that came closest to applying: one naming this user and
    /// backend but outside its time window beats one naming someone else;
    /// then fewest reasons not to apply; ties to the rule written first.
    ///
    /// Scored without building any text (a refused connection must stay
    /// cheap); only the winner's reasons are spelled out.
    fn closest_miss(&self, p: &Principal, req: &Request<'_>) -> Option<Miss> {
        let rule = self
            .rules
            .iter()
            .filter(|r| r.action == Action::Allow)
            .filter_map(|r| {
                let who = r.who.matches(p).is_none();
                let backend = !r.backends.iter().any(|b| b.matches(req.backend.as_str()));
                let time = r.when.as_ref().is_some_and(|w| w.check(req.now).is_err());
                let login = r.require.as_ref().is_some_and(|q| !q.is_met(p, req.now));
                let n = usize::from(who) + usize::from(backend) + usize::from(time) + usize::from(login);
                (n > 0).then_some((r, usize::from(who) + usize::from(backend), n))
            })
            .min_by_key(|(r, ww, n)| (*ww, *n, r.index))?
            .0;
        Some(Miss { rule: rule.name.clone(), why: mismatches(rule, p, req) })
    }
}
