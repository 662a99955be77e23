//! The policy's own `[[test]]` cases (SQL, statement kinds, SSH channel
//! requests, connections), and deciding a whole SQL string.

use serde::Serialize;

use super::decide::{Decision, Request, Verdict};
use super::{Policy, TestExpect};
use crate::identity::Principal;
use crate::sql::{self, Kind, Statement};
use crate::types::BackendName;

/// The result of one test case.
#[derive(Debug, Clone, Serialize)]
pub struct TestOutcome {
    pub name: String,
    pub passed: bool,
    pub decision: Decision,
    pub expected: String,
    pub location: String,
}

impl Policy {
    /// Decides every statement of `sql` for `p`: the first statement refused
    /// (or needing approval) decides for the whole string, as a multi-statement
    /// query runs as one unit. A string that does not parse is refused.
    pub fn decide_sql(
        &self,
        p: &Principal,
        backend: &BackendName,
        text: &str,
        now: jiff::Timestamp,
    ) -> (Decision, Vec<Statement>) {
        // A MySQL backend's statements are read with the MySQL grammar (no current database).
        let mysql = self.backend(backend).is_some_and(|b| b.protocol == super::Protocol::Mysql);
        let classified = if mysql {
            sql::mysql::classify(text.as_bytes(), &sql::mysql::Names::default())
                .map(|c| vec![c.statement])
                .map_err(|e| e.to_string())
        } else {
            sql::classify(text).map_err(|e| e.to_string())
        };
        let statements = match classified {
            Ok(s) => s,
            Err(e) => return (Decision::refuse(format!("refused (fail closed): {e}")), vec![]),
        };
        let mut last = None;
        for s in &statements {
            let d = self.decide(p, &Request { backend, statement: Some(s), now });
            if d.verdict != Verdict::Allow {
                return (d, statements);
            }
            last = Some(d);
        }
        let d = last.unwrap_or_else(|| self.decide_connect(p, backend, now));
        (d, statements)
    }

    /// Runs the policy's own `[[test]]` cases. `now` is used for cases without `at`.
    pub fn run_tests(&self, now: jiff::Timestamp) -> Vec<TestOutcome> {
        self.tests
            .iter()
            .map(|t| {
                let groups: Vec<&str> = t.groups.iter().map(String::as_str).collect();
                let mut who = Principal::named(&t.user, &groups);
                let now = t.at.unwrap_or(now);
                who.oidc = t.login.as_ref().map(|l| l.identity(now));
                let decision = match (&t.sql, t.kind, &t.ssh) {
                    (_, _, Some(x)) => {
                        let r = Request { backend: &t.backend, statement: None, now };
                        self.decide_ssh_with(&who, &r, &x.request(), &[])
                    }
                    (Some(text), _, None) => self.decide_sql(&who, &t.backend, text, now).0,
                    (None, Some(kind), None) => {
                        let s = single_kind(kind);
                        self.decide(&who, &Request { backend: &t.backend, statement: Some(&s), now })
                    }
                    (None, None, None) => self.decide_connect(&who, &t.backend, now),
                };
                let want = match t.expect {
                    TestExpect::Allow => Verdict::Allow,
                    TestExpect::Deny => Verdict::Deny,
                    TestExpect::Approval => Verdict::NeedsApproval,
                };
                let rule_ok = t.rule.as_ref().is_none_or(|r| decision.rule.as_ref() == Some(r));
                let expected = match &t.rule {
                    Some(r) => format!("{} by {:?}", verdict_name(want), r.as_str()),
                    None => verdict_name(want).to_owned(),
                };
                TestOutcome {
                    name: t.name.clone(),
                    passed: decision.verdict == want && rule_ok,
                    decision: decision.with_reason_text(),
                    expected,
                    location: t.location.to_string(),
                }
            })
            .collect()
    }
}

/// A statement of one kind touching no table, for tests and `explain --kind`.
pub fn single_kind(kind: Kind) -> Statement {
    Statement { kinds: std::iter::once(kind).collect(), ..Statement::default() }
}

pub fn verdict_name(v: Verdict) -> &'static str {
    crate::audit::Verdict::from(v).as_str()
}
