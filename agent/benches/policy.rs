//! Decision cost with 10, 100 and 1,000 rules (`cargo xtask bench policy`),
//! then what classifying statement texts costs per KiB of SQL and what the
//! per-query budget saves (`policy/parse.rs`). A measurement, not a test:
//! it prints nanoseconds per decision and the scaling ratios against the
//! 10-rule policy measured in the same run.
#![expect(clippy::expect_used, clippy::indexing_slicing, reason = "a benchmark harness over its own data")]

#[path = "policy/parse.rs"]
mod parse;

use std::hint::black_box;
use std::time::Instant;

use gatehouse::identity::Principal;
use gatehouse::policy::diag::Source;
use gatehouse::policy::{Policy, Request, load};
use gatehouse::sql::{Kind, Statement, TableRef};
use gatehouse::types::BackendName;

/// A policy with `n` rules over 10 backends: per-group allows with statement
/// lists and tables, some per-user rules, some globs, some deny rules.
fn policy(n: usize) -> Policy {
    let mut text = String::new();
    for b in 0..10 {
        text.push_str(&format!(
            "[[backend]]\nname = \"db-{b}\"\nprotocol = \"postgres\"\naddress = \"127.10.50.{b}:5432\"\ntls = \"off\"\n\
             credentials = {{ user = \"gh\" }}\nroles = {{ ro = {{ user = \"ro\" }} }}\n\n"
        ));
    }
    for i in 0..n {
        let b = i % 10;
        let who = match i % 4 {
            0 => format!("who = {{ users = [\"user{i}\"] }}"),
            _ => format!("who = {{ groups = [\"group{i}\", \"team{}\"] }}", i % 50),
        };
        let backend = if i % 7 == 0 { "backends = [\"db-*\"]".to_owned() } else { format!("backend = \"db-{b}\"") };
        let action = if i % 13 == 0 {
            "action = \"deny\"\nstatements = [\"drop\"]"
        } else {
            "as_role = \"ro\"\nstatements = [\"select\", \"insert\"]\ntables = [\"public.*\"]"
        };
        text.push_str(&format!("[[rule]]\nname = \"rule {i}\"\n{who}\n{backend}\n{action}\n\n"));
    }
    load::load(&[Source { path: format!("bench-{n}.toml").into(), text }]).expect("bench policy loads")
}

fn time(iters: u32, mut f: impl FnMut()) -> f64 {
    for _ in 0..iters / 10 {
        f();
    }
    let t = Instant::now();
    for _ in 0..iters {
        f();
    }
    t.elapsed().as_nanos() as f64 / f64::from(iters)
}

fn main() {
    if parse::is_child() {
        return;
    }
    let who = Principal::named(
        "user5",
        &["group5", "team5", "group13", "staff", "wheel", "adm", "users", "ops", "dev", "qa"],
    );
    let statement = Statement {
        text: "SELECT * FROM orders".into(),
        kinds: [Kind::Select].into_iter().collect(),
        reads: vec![TableRef { schema: None, name: "orders".into() }],
        writes: vec![],
        functions: vec![],
        ..Statement::default()
    };
    let backend = BackendName::new("db-5");
    let now = jiff::Timestamp::now();
    let mut results = Vec::new();
    for n in [10, 100, 1000] {
        eprintln!("bench policy: {n} rules (200,000 decisions each for connect and statement)");
        let p = policy(n);
        let connect = time(200_000, || {
            black_box(p.decide(black_box(&who), &Request { backend: &backend, statement: None, now }));
        });
        let stmt = time(200_000, || {
            black_box(p.decide(black_box(&who), &Request { backend: &backend, statement: Some(&statement), now }));
        });
        let denied = Principal::named("stranger", &["nobody"]);
        let default_deny = time(20_000, || {
            black_box(p.decide(black_box(&denied), &Request { backend: &backend, statement: Some(&statement), now }));
        });
        println!(
            "policy {n:>5} rules: connect {connect:>8.0} ns   statement {stmt:>8.0} ns   default-deny (with closest-rule search) {default_deny:>9.0} ns"
        );
        results.push((n, connect, stmt, default_deny));
    }
    let (_, c10, s10, d10) = results[0];
    for (n, c, s, d) in &results[1..] {
        println!("ratio decide_connect rules{n}/rules10 = {:.2}", c / c10);
        println!("ratio decide_statement rules{n}/rules10 = {:.2}", s / s10);
        println!("ratio decide_default_deny rules{n}/rules10 = {:.2}", d / d10);
    }
    parse::run();
}
