//! The operators' policy: protected backends and the rules saying who may
//! reach them. Loading ([`load`]) turns files into a validated [`Policy`];
//! deciding ([`Policy::decide_connect`]) is a pure function of the policy
//! and the principal.
//!
//! Semantics: default deny; any matching deny rule beats any allow; among
//! allows the first in file order wins; every decision names its rule.

pub mod diag;
pub mod load;

use std::net::SocketAddr;

use serde::Serialize;

use crate::identity::Principal;
use crate::settings::AgentRaw;
use crate::types::{BackendName, RuleName};
pub use diag::{Diagnostic, Diagnostics, Location};

/// A validated policy.
#[derive(Debug, Default, Clone)]
pub struct Policy {
    pub agent: AgentRaw,
    pub backends: Vec<Backend>,
    pub rules: Vec<Rule>,
    pub tests: Vec<TestCase>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
}

/// Where a backend lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Addr(SocketAddr),
    /// A name re-resolved periodically; every address it resolves to is protected.
    Host {
        host: String,
        port: u16,
    },
}

#[derive(Debug, Clone)]
pub struct Backend {
    pub name: BackendName,
    pub protocol: Protocol,
    pub target: Target,
    pub at: Location,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Deny,
}

/// Whom a rule applies to. A principal matches if any listed item matches.
#[derive(Debug, Clone, Default)]
pub struct Who {
    /// `users = ["*"]`: everyone.
    pub any: bool,
    pub users: Vec<String>,
    pub uids: Vec<u32>,
    pub groups: Vec<String>,
}

impl Who {
    pub fn is_empty(&self) -> bool {
        !self.any && self.users.is_empty() && self.uids.is_empty() && self.groups.is_empty()
    }

    pub fn matches(&self, p: &Principal) -> bool {
        self.any
            || self.uids.contains(&p.uid.0)
            || p.user.as_ref().is_some_and(|u| self.users.iter().any(|x| x == u.as_str()))
            || p.groups.iter().any(|g| self.groups.iter().any(|x| x == g.as_str()))
    }
}

/// A backend name or a glob over names (`*` any run, `?` one character).
#[derive(Debug, Clone)]
pub struct NamePattern(String);

impl NamePattern {
    pub fn new(s: &str) -> Self {
        Self(s.to_owned())
    }

    pub fn matches(&self, name: &str) -> bool {
        glob(self.0.as_bytes(), name.as_bytes())
    }
}

fn glob(p: &[u8], s: &[u8]) -> bool {
    // Iterative wildcard matching with one backtrack point: linear enough for names.
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        match p.get(pi) {
            Some(b'*') => {
                star = Some((pi, si));
                pi += 1;
            }
            Some(&c) if c == b'?' || Some(&c) == s.get(si) => {
                pi += 1;
                si += 1;
            }
            _ => match star {
                Some((sp, ss)) => {
                    pi = sp + 1;
                    si = ss + 1;
                    star = Some((sp, ss + 1));
                }
                None => return false,
            },
        }
    }
    p.get(pi..).is_some_and(|rest| rest.iter().all(|&c| c == b'*'))
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub name: RuleName,
    pub who: Who,
    pub backends: Vec<NamePattern>,
    pub action: Action,
    pub at: Location,
    /// Position in file order.
    pub index: usize,
}

impl Rule {
    fn applies_to_backend(&self, backend: &BackendName) -> bool {
        self.backends.iter().any(|p| p.matches(backend.as_str()))
    }
}

/// The outcome of a policy decision, naming the rule that made it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub allowed: bool,
    /// `None` for the default deny.
    pub rule: Option<RuleName>,
    pub reason: String,
}

impl Decision {
    pub fn rule_label(&self) -> &str {
        self.rule.as_ref().map_or("(default deny)", RuleName::as_str)
    }
}

impl Policy {
    pub fn backend(&self, name: &BackendName) -> Option<&Backend> {
        self.backends.iter().find(|b| &b.name == name)
    }

    /// May `who` open a connection to `backend`?
    pub fn decide_connect(&self, who: &Principal, backend: &BackendName) -> Decision {
        let mut allow: Option<&Rule> = None;
        for rule in &self.rules {
            if !rule.applies_to_backend(backend) || !rule.who.matches(who) {
                continue;
            }
            match rule.action {
                Action::Deny => {
                    return Decision {
                        allowed: false,
                        rule: Some(rule.name.clone()),
                        reason: format!("rule {:?} denies {who} access to {backend}", rule.name.as_str()),
                    };
                }
                Action::Allow => {
                    allow.get_or_insert(rule);
                }
            }
        }
        match allow {
            Some(rule) => Decision {
                allowed: true,
                rule: Some(rule.name.clone()),
                reason: format!("rule {:?} allows {who} to reach {backend}", rule.name.as_str()),
            },
            None => Decision {
                allowed: false,
                rule: None,
                reason: format!("no rule allows {who} to reach {backend} (default deny)"),
            },
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TestExpect {
    Allow,
    Deny,
}

/// A `[[test]]` case written beside the rules.
#[derive(Debug, Clone)]
pub struct TestCase {
    pub name: String,
    pub user: String,
    pub groups: Vec<String>,
    pub backend: BackendName,
    pub expect: TestExpect,
    /// The rule expected to make the decision, if given.
    pub rule: Option<RuleName>,
    pub at: Location,
}

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
    /// Runs the policy's own `[[test]]` cases.
    pub fn run_tests(&self) -> Vec<TestOutcome> {
        self.tests
            .iter()
            .map(|t| {
                let groups: Vec<&str> = t.groups.iter().map(String::as_str).collect();
                let who = Principal::named(&t.user, &groups);
                let decision = self.decide_connect(&who, &t.backend);
                let verdict_ok = decision.allowed == (t.expect == TestExpect::Allow);
                let rule_ok = t.rule.as_ref().is_none_or(|r| decision.rule.as_ref() == Some(r));
                let expected = match &t.rule {
                    Some(r) => format!("{:?} by {:?}", t.expect, r.as_str()),
                    None => format!("{:?}", t.expect),
                }
                .to_lowercase();
                TestOutcome {
                    name: t.name.clone(),
                    passed: verdict_ok && rule_ok,
                    decision,
                    expected,
                    location: t.at.to_string(),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::diag::Source;
    use super::*;

    fn policy(text: &str) -> Result<Policy, Diagnostics> {
        load::load(&[Source { path: "t.toml".into(), text: text.into() }])
    }

    const BASE: &str = r#"
[[backend]]
name = "ssh"
protocol = "tcp"
address = "127.10.0.1:22"

[[backend]]
name = "db-a"
protocol = "tcp"
host = "localhost:5432"
"#;

    #[test]
    fn default_deny_and_deny_beats_allow() {
        let p = policy(&format!(
            r#"{BASE}
[[rule]]
name = "ops reach everything"
who = {{ groups = ["ops"] }}
backends = ["*"]

[[rule]]
name = "no contractors on ssh"
who = {{ groups = ["contractors"] }}
backend = "ssh"
action = "deny"
"#
        ))
        .unwrap();
        let ops = Principal::named("ana", &["ops"]);
        let d = p.decide_connect(&ops, &BackendName::new("ssh"));
        assert!(d.allowed);
        assert_eq!(d.rule_label(), "ops reach everything");
        let both = Principal::named("bob", &["ops", "contractors"]);
        let d = p.decide_connect(&both, &BackendName::new("ssh"));
        assert!(!d.allowed);
        assert_eq!(d.rule_label(), "no contractors on ssh");
        let nobody = Principal::named("eve", &[]);
        let d = p.decide_connect(&nobody, &BackendName::new("db-a"));
        assert!(!d.allowed);
        assert_eq!(d.rule, None);
    }

    #[test]
    fn every_error_has_a_location_and_hint() {
        let err = policy(
            r#"
[[backend]]
nmae = "x"
protocol = "tcp"

[[backend]]
name = "y"
protocol = "tpc"
address = "127.10.0.1:22"

[[backend]]
name = "z"
protocol = "tcp"
address = "not-an-address"

[[rule]]
name = "r"
who = { groups = ["ops"] }
backend = "yy"
action = "alow"

[rulez]
"#,
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("t.toml:3:1: unknown field `nmae`"), "{text}");
        assert!(text.contains("did you mean `name`?"), "{text}");
        assert!(text.contains("t.toml:8:12: unknown protocol `tpc`"), "{text}");
        assert!(text.contains("t.toml:14:11: `not-an-address` is not ip:port"), "{text}");
        assert!(text.contains("t.toml:22:2: unknown section `rulez`"), "{text}");
        assert!(text.contains("did you mean `rule`?"), "{text}");
        // The rule names no valid backend (y was rejected), so it fails too.
        assert!(text.contains("no backend matches `yy`"), "{text}");
    }

    #[test]
    fn syntax_errors_point_at_the_line() {
        let err = policy("[[backend]]\nname = \"x\nprotocol = \"tcp\"\n").unwrap_err();
        assert!(err.to_string().starts_with("t.toml:2:"), "{err}");
    }

    #[test]
    fn duplicates_are_errors() {
        let err =
            policy(&format!("{BASE}\n[[backend]]\nname = \"ssh\"\nprotocol = \"tcp\"\naddress = \"127.10.0.1:22\"\n"))
                .unwrap_err();
        assert!(err.to_string().contains("backend `ssh` is defined twice"), "{err}");
    }

    #[test]
    fn globs() {
        assert!(NamePattern::new("db-*").matches("db-a"));
        assert!(NamePattern::new("*").matches(""));
        assert!(NamePattern::new("d?-a").matches("db-a"));
        assert!(!NamePattern::new("db-*").matches("ssh"));
        assert!(NamePattern::new("*-a*").matches("db-a"));
        assert!(!NamePattern::new("db").matches("db-a"));
    }

    #[test]
    fn test_cases_run() {
        let p = policy(&format!(
            r#"{BASE}
[[rule]]
name = "ops"
who = {{ groups = ["ops"] }}
backend = "ssh"

[[test]]
who = {{ user = "ana", groups = ["ops"] }}
backend = "ssh"
expect = "allow"
rule = "ops"

[[test]]
who = {{ user = "eve" }}
backend = "ssh"
expect = "allow"
"#
        ))
        .unwrap();
        let out = p.run_tests();
        assert!(out[0].passed);
        assert!(!out[1].passed);
    }
}
