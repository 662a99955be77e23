//! The relay's path for a Query or Parse message, end to end and without
//! sockets: wire decode → statement text → the rule's query_limits → the
//! budget and the parse (cache included) → name resolution against the
//! built-in catalog → a decision per statement, against a small policy. Never a panic, and what a select-only rule and a
//! rule denying drops allow must be what they say:
//!
//! - a classified text never holds more statements, or more tokens, than
//!   the budget counted before parsing (the count is an upper bound);
//! - the analyst (select, public tables, not salaries) is never allowed a
//!   write, DDL, a call, a role change or the salaries table;
//! - the developer is never allowed a drop, a truncate, a write without
//!   WHERE, or an opaque kind;
//! - a stranger is never allowed anything.
//!
//! Input: one byte choosing the user (and standard_conforming_strings), then
//! client messages as they arrive on the wire.
#![no_main]

use std::sync::OnceLock;

use gatehouse::catalog::{Catalog, SessionNames, resolve};
use gatehouse::identity::Principal;
use gatehouse::policy::diag::Source;
use gatehouse::policy::{Policy, Request, Verdict, load};
use gatehouse::protocol::postgres::wire;
use gatehouse::sql::budget::Refused;
use gatehouse::sql::shape::measure;
use gatehouse::sql::{Classifier, Kind, ParseOptions};
use gatehouse::types::BackendName;
use libfuzzer_sys::fuzz_target;

const POLICY: &str = r#"
[[backend]]
name = "db"
protocol = "postgres"
address = "127.10.0.1:5432"
credentials = { user = "gh" }

[[rule]]
name = "analysts read"
who = { users = ["ana"] }
backend = "db"
statements = ["select"]
tables = ["public.*"]
deny_tables = ["*.salaries"]
query_limits = { bytes = "8KiB", tokens = 2000, statements = 8 }

[[rule]]
name = "developers"
who = { users = ["dev"] }
backend = "db"
statements = ["*"]
deny_statements = ["drop", "truncate", "delete_without_where", "update_without_where"]
"#;

struct World {
    policy: Policy,
    classifier: Classifier,
    users: [Principal; 3],
    db: BackendName,
}

static WORLD: OnceLock<World> = OnceLock::new();

fn world() -> &'static World {
    WORLD.get_or_init(|| World {
        policy: load::load(&[Source { path: "fuzz.toml".into(), text: POLICY.into() }])
            .unwrap_or_else(|e| panic!("fuzz policy: {e}")),
        classifier: Classifier::default(),
        users: [Principal::named("ana", &[]), Principal::named("dev", &[]), Principal::named("stranger", &[])],
        db: BackendName::new("db"),
    })
}

/// What the analyst's rule must never allow.
const NOT_FOR_ANALYSTS: &[Kind] = &[
    Kind::Insert,
    Kind::Update,
    Kind::Delete,
    Kind::Merge,
    Kind::CopyFrom,
    Kind::CopyProgram,
    Kind::CopyFile,
    Kind::Create,
    Kind::Alter,
    Kind::Drop,
    Kind::Truncate,
    Kind::Grant,
    Kind::Revoke,
    Kind::SetRole,
    Kind::Call,
    Kind::Do,
    Kind::FunctionCall,
    Kind::Execute,
    Kind::Load,
    Kind::Lock,
];

fn check_text(w: &World, who: usize, text: &[u8], options: ParseOptions) {
    let Ok(text) = std::str::from_utf8(text) else { return };
    let Some(principal) = w.users.get(who) else { return };
    let now = jiff::Timestamp::UNIX_EPOCH;
    let admitted = w.policy.decide_connect(principal, &w.db, now);
    let mut statements = match w.classifier.classify_blocking(text, options, &admitted.query_limits) {
        Ok(s) => s,
        Err(Refused::Budget(_) | Refused::Sql(_)) => return,
    };
    let names = SessionNames::default();
    for s in &mut statements {
        resolve(s, Catalog::builtin(), &names);
    }
    let shape = measure(text, options.standard_conforming_strings);
    assert!(
        shape.statements >= statements.len(),
        "{text:?}: counted {} < parsed {}",
        shape.statements,
        statements.len()
    );
    assert!(shape.tokens <= admitted.query_limits.tokens, "{text:?}: admitted over the token limit");
    for s in &statements {
        assert!(!s.kinds.is_empty(), "{text:?}: a statement without a kind");
        let d = w.policy.decide(principal, &Request { backend: &w.db, statement: Some(s), now });
        if d.verdict != Verdict::Allow {
            continue;
        }
        match who {
            0 => {
                let bad = s.kinds.iter().find(|k| NOT_FOR_ANALYSTS.contains(k));
                assert!(bad.is_none(), "{text:?}: the select-only rule allowed {bad:?} in {s:?}");
                let salaries = s.reads.iter().chain(&s.writes).any(|t| t.name == "salaries");
                assert!(!salaries, "{text:?}: the analyst was allowed the salaries table: {s:?}");
            }
            1 => {
                let bad = s.kinds.iter().find(|k| {
                    k.is_opaque()
                        || matches!(
                            k,
                            Kind::Drop | Kind::Truncate | Kind::DeleteWithoutWhere | Kind::UpdateWithoutWhere
                        )
                });
                assert!(bad.is_none(), "{text:?}: the developers' rule allowed {bad:?} in {s:?}");
            }
            _ => panic!("{text:?}: a stranger was allowed {s:?}"),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, mut rest)) = data.split_first() else { return };
    let w = world();
    let who = usize::from(selector % 3);
    let options = ParseOptions { standard_conforming_strings: selector & 0x80 == 0 };
    // As the relay reads them: whole messages, each decided on its own.
    while let Ok(Some((frame, n))) = wire::decode(rest, 1 << 20) {
        match frame.tag {
            b'Q' => {
                if let Ok(text) = wire::query_text(frame.body) {
                    check_text(w, who, text, options);
                }
            }
            b'P' => {
                if let Ok((_, text)) = wire::parse_body(frame.body) {
                    check_text(w, who, text, options);
                }
            }
            _ => {}
        }
        match rest.get(n..) {
            Some(r) if !r.is_empty() => rest = r,
            _ => break,
        }
    }
});
