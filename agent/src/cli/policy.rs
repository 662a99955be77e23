//! `gatehouse policy check|test|explain` and `mask test`: the operator's
//! tools for policy files, without a running agent.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::{fail, print_table};
use crate::identity::Principal;
use crate::policy::load::load_path;
use crate::policy::testcases::verdict_name;
use crate::settings;
use crate::types::BackendName;

pub(super) const POLICY_HELP: &str = "Check, test and explain policy files.

How decisions are made:
  - Default deny: nothing is reachable unless an allow rule says so.
  - Any matching deny rule beats any allow rule. A deny rule without
    `statements`/`tables` refuses the connection; with them, it refuses
    only the statements they describe.
  - Among matching allow rules the most specific wins: a rule naming the
    user (users, uids, subjects, emails) beats one naming a group, which
    beats users = [\"*\"]; a backend named exactly beats a glob. Ties go to
    the rule written first. The winning rule decides the backend role
    (as_role), the statements and tables allowed, masking and approvals.
  - `statements = [\"*\"]` covers every kind except the opaque ones
    (function_call, do, call, execute, set_role, copy_program, copy_file,
    load): their effect cannot be read from the text, so a rule must name
    them. Transaction control, show, set, discard, deallocate, explain and
    prepare are allowed implicitly (their inner statement is checked).
  - A rule with `when` applies only inside its days/hours (in its time
    zone) and validity period.
  - A rule with `require = { login, max_age, acr }` applies only to a
    connection whose user ran `gatehouse login` (recently enough, strongly
    enough); `oidc_groups`, `subjects` and `emails` match only after it.
    `groups` are Unix groups only.
  - Every decision names the rule that made it and, when refused by
    default, the closest rule that did not match and why.
  - Until approvals are enforced, a statement that needs approval is
    refused with a message saying so (fail closed).";

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Load and validate policy files; report every error as file:line:col, and check the
    /// password, key and CA files they name (root-owned, 0600 for secrets, no symlinks).
    Check {
        /// Policy file or directory.
        path: PathBuf,
        /// Do not check the files the policy names (on a machine other than the bastion, in CI).
        #[arg(long)]
        skip_secret_files: bool,
    },
    /// Run the [[test]] cases written in the policy files; exit 1 on any failure.
    Test {
        path: PathBuf,
        /// Time for cases without `at` (RFC 3339); default: now.
        #[arg(long)]
        at: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Show the decision for a user, a backend and optionally a statement, with every rule considered.
    Explain(Box<ExplainArgs>),
}

#[derive(Debug, Subcommand)]
pub enum MaskCommand {
    /// Read text on stdin and print it masked by a profile (counts on stderr).
    Test {
        /// The masking profile's name.
        #[arg(long)]
        profile: String,
        /// Policy file or directory holding the profile.
        #[arg(long, short, default_value = settings::DEFAULT_CONFIG)]
        config: PathBuf,
        /// Treat each line as a value of this column (applies the column rules too).
        #[arg(long)]
        column: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// Policy file or directory.
    #[arg(long, short, default_value = settings::DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// The Unix user (their groups come from NSS unless --group is given).
    #[arg(long)]
    pub user: String,
    /// A group of the user (repeatable); replaces the NSS lookup.
    #[arg(long = "group")]
    pub groups: Vec<String>,
    /// Decide as if the user had run `gatehouse login` as this subject.
    #[arg(long)]
    pub login_subject: Option<String>,
    /// The login's (verified) e-mail address.
    #[arg(long, requires = "login_subject")]
    pub login_email: Option<String>,
    /// A group from the IdP (repeatable).
    #[arg(long = "login-group", requires = "login_subject")]
    pub login_groups: Vec<String>,
    /// The login's acr.
    #[arg(long, requires = "login_subject")]
    pub login_acr: Option<String>,
    /// How long ago the IdP authenticated the user (default: just now).
    #[arg(long, requires = "login_subject")]
    pub login_age: Option<String>,
    #[arg(long)]
    pub backend: String,
    /// SQL to classify and decide (every statement of it).
    #[arg(long, conflicts_with = "kind")]
    pub sql: Option<String>,
    /// A statement kind instead of SQL (select, drop, …).
    #[arg(long)]
    pub kind: Option<String>,
    /// When (RFC 3339, e.g. 2026-12-01T18:00:00Z); default: now.
    #[arg(long)]
    pub at: Option<String>,
    #[arg(long)]
    pub json: bool,
}

pub(super) fn check(path: &Path, skip_secret_files: bool) -> ExitCode {
    match load_path(path) {
        Ok(p) => {
            if !skip_secret_files {
                match crate::policy::files::check(&p, jiff::Timestamp::now().as_second()) {
                    Ok(report) => {
                        for w in &report.warnings {
                            println!("warning: {w}");
                        }
                    }
                    Err(d) => {
                        eprintln!("{d}");
                        eprintln!(
                            "{} error(s) (files the policy names; --skip-secret-files to check only the policy)",
                            d.0.len()
                        );
                        return ExitCode::FAILURE;
                    }
                }
            }
            println!(
                "{}: ok ({} backends, {} rules, {} tests)",
                path.display(),
                p.backends.len(),
                p.rules.len(),
                p.tests.len()
            );
            ExitCode::SUCCESS
        }
        Err(d) => {
            eprintln!("{d}");
            eprintln!("{} error(s)", d.0.len());
            ExitCode::FAILURE
        }
    }
}

fn parse_at(at: Option<&str>) -> Result<jiff::Timestamp, String> {
    match at {
        None => Ok(jiff::Timestamp::now()),
        Some(s) => s.parse().map_err(|e| format!("--at {s:?}: not an RFC 3339 time like 2026-12-01T18:00:00Z: {e}")),
    }
}

pub(super) fn test(path: &Path, at: Option<&str>, json: bool) -> ExitCode {
    let now = match parse_at(at) {
        Ok(t) => t,
        Err(e) => return fail(e),
    };
    let policy = match load_path(path) {
        Ok(p) => p,
        Err(d) => {
            eprintln!("{d}");
            return ExitCode::FAILURE;
        }
    };
    let outcomes = policy.run_tests(now);
    if json {
        println!("{}", serde_json::to_string_pretty(&outcomes).unwrap_or_default());
    } else {
        let rows: Vec<[String; 4]> = outcomes
            .iter()
            .map(|o| {
                let got = format!("{} by {}", verdict_name(o.decision.verdict), o.decision.rule_label());
                [if o.passed { "pass" } else { "FAIL" }.to_owned(), o.name.clone(), o.expected.clone(), got]
            })
            .collect();
        print_table(&["RESULT", "TEST", "EXPECTED", "GOT"], &rows);
        for o in outcomes.iter().filter(|o| !o.passed) {
            println!("FAIL {} at {}: {}", o.name, o.location, o.decision.reason());
        }
    }
    let failed = outcomes.iter().filter(|o| !o.passed).count();
    println!("{} passed, {failed} failed", outcomes.len() - failed);
    if failed > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}

pub(super) fn mask_test(name: &str, config: &Path, column: Option<&str>) -> ExitCode {
    use std::io::{BufRead, Write};
    let policy = match load_path(config) {
        Ok(p) => p,
        Err(d) => return fail(format_args!("policy {} does not load:\n{d}", config.display())),
    };
    let Some(profile) = policy.mask(name) else {
        let known: Vec<&str> = policy.masks.keys().map(String::as_str).collect();
        return fail(format_args!("no masking profile {name:?}; profiles: {}", known.join(", ")));
    };
    let (table, col) = match column.map(|c| c.split_once('.').map_or((None, c), |(t, c)| (Some(t), c))) {
        Some((t, c)) => (t, Some(c)),
        None => (None, None),
    };
    let rule = col.and_then(|c| profile.column_style(table, c));
    let key = profile.token_key(crate::mask::TokenScope::Column { table, column: col.unwrap_or_default() });
    eprintln!(
        "note: hash tokens here use a throwaway key made for this run; the agent's tokens (keyed by its mask.key) differ"
    );
    let mut counts = crate::mask::Counts::default();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut buf = Vec::new();
    for line in std::io::stdin().lock().split(b'\n') {
        let Ok(line) = line else { break };
        buf.clear();
        let result = match rule {
            Some(style) => {
                let r = profile.mask_value(style, &key, &line, &mut buf);
                if r != crate::mask::MaskOutput::Unchanged {
                    counts.add_columns(1);
                }
                r
            }
            None => profile.scan(&line, &mut buf, &mut counts),
        };
        let _ = match result {
            crate::mask::MaskOutput::Unchanged => out.write_all(&line),
            crate::mask::MaskOutput::Written => out.write_all(&buf),
            crate::mask::MaskOutput::Null => out.write_all(b"NULL"),
        };
        let _ = out.write_all(b"\n");
    }
    let summary: Vec<String> = counts.iter().map(|(k, v)| format!("{k}={v}")).collect();
    eprintln!("masked: {}", if summary.is_empty() { "nothing".into() } else { summary.join(" ") });
    ExitCode::SUCCESS
}

pub(super) fn explain(a: &ExplainArgs) -> ExitCode {
    let now = match parse_at(a.at.as_deref()) {
        Ok(t) => t,
        Err(e) => return fail(e),
    };
    let policy = match load_path(&a.config) {
        Ok(p) => p,
        Err(d) => return fail(format_args!("policy {} does not load:\n{d}", a.config.display())),
    };
    let mut who = if a.groups.is_empty() {
        nix::unistd::User::from_name(&a.user)
            .ok()
            .flatten()
            .map(|u| crate::identity::lookup(crate::types::Uid(u.uid.as_raw())))
            .unwrap_or_else(|| Principal::named(&a.user, &[]))
    } else {
        let g: Vec<&str> = a.groups.iter().map(String::as_str).collect();
        Principal::named(&a.user, &g)
    };
    who.user = Some(crate::types::UserName::new(a.user.clone()));
    if let Some(subject) = &a.login_subject {
        let age = match a.login_age.as_deref().map(crate::settings::parse_duration).transpose() {
            Ok(a) => a.unwrap_or_default(),
            Err(e) => return fail(format_args!("--login-age: {e}")),
        };
        let login = crate::policy::TestLogin {
            subject: subject.clone(),
            email: a.login_email.clone(),
            groups: a.login_groups.clone(),
            acr: a.login_acr.clone(),
            age,
        };
        who.oidc = Some(login.identity(now));
    }
    let backend = BackendName::new(a.backend.clone());
    let statements = match (&a.sql, &a.kind) {
        (Some(sql), _) if policy.backend(&backend).is_some_and(|b| b.protocol == crate::policy::Protocol::Mysql) => {
            match crate::sql::mysql::classify(sql.as_bytes(), &crate::sql::mysql::Names::default()) {
                Ok(c) => vec![c.statement],
                Err(e) => return fail(format_args!("--sql: {e} (Gatehouse refuses it on MySQL backends)")),
            }
        }
        (Some(sql), _) => match crate::sql::classify(sql) {
            Ok(s) => s,
            Err(e) => return fail(format_args!("--sql: {e} (Gatehouse refuses what does not parse)")),
        },
        (None, Some(k)) => match crate::sql::Kind::parse(k) {
            Some(k) => vec![crate::policy::testcases::single_kind(k)],
            None => return fail(format_args!("--kind {k}: unknown statement kind")),
        },
        (None, None) => vec![],
    };
    let mut traces = Vec::new();
    if statements.is_empty() {
        traces.push((
            "(connection)".to_owned(),
            policy.explain(&who, &crate::policy::Request { backend: &backend, statement: None, now }),
        ));
    }
    for s in &statements {
        traces.push((
            s.text.clone(),
            policy.explain(&who, &crate::policy::Request { backend: &backend, statement: Some(s), now }),
        ));
    }
    if a.json {
        let v: Vec<_> = traces
            .iter()
            .zip(statements.iter().map(Some).chain(std::iter::repeat(None)))
            .map(|((text, t), s)| serde_json::json!({ "statement": text, "classified": s, "trace": t }))
            .collect();
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        let groups: Vec<&str> = who.groups.iter().map(|g| g.as_str()).collect();
        println!(
            "who:      {} (groups: {})",
            a.user,
            if groups.is_empty() { "none".into() } else { groups.join(", ") }
        );
        match &who.oidc {
            Some(o) => {
                let g: Vec<&str> = o.groups.iter().map(|g| g.as_str()).collect();
                println!(
                    "login:    {} (oidc_groups: {})",
                    o.subject,
                    if g.is_empty() { "none".into() } else { g.join(", ") }
                );
            }
            None => println!("login:    none (--login-subject decides as after `gatehouse login`)"),
        }
        println!("backend:  {backend}");
        println!("at:       {now}");
        for (i, (text, t)) in traces.iter().enumerate() {
            println!();
            if let Some(s) = statements.get(i) {
                let kinds: Vec<&str> = s.kinds.iter().map(|k| k.name()).collect();
                let tables: Vec<String> = s.reads.iter().chain(&s.writes).map(ToString::to_string).collect();
                println!("statement: {text}");
                println!("  kinds:   {}", kinds.join(", "));
                if !tables.is_empty() {
                    println!("  tables:  {}", tables.join(", "));
                }
            }
            let d = &t.decision;
            println!("decision: {} by {}", verdict_name(d.verdict).to_uppercase(), d.rule_label());
            println!("  reason: {}", d.reason());
            if let Some(r) = &d.as_role {
                println!("  as_role: {r}");
            }
            if let Some(m) = &d.mask {
                println!("  mask:    {m}");
                if let (Some(profile), Some(s)) = (policy.mask(m), statements.get(i)) {
                    let tables: Vec<String> = s.reads.iter().chain(&s.writes).map(ToString::to_string).collect();
                    let rules = profile.describe_columns(&tables);
                    if rules.is_empty() {
                        println!(
                            "           no column rule names these tables' columns; detectors scan every text value"
                        );
                    } else {
                        println!(
                            "           column rules that apply: {}; detectors scan every other text value",
                            rules.join(", ")
                        );
                    }
                }
            }
            println!("rules considered:");
            for e in &t.considered {
                let mut state =
                    if e.why_not.is_empty() { "applies".to_owned() } else { format!("no: {}", e.why_not.join("; ")) };
                if let Some(r) = &e.require {
                    state.push_str(&format!(" [requires {r}]"));
                }
                println!(
                    "  {:<40} {:<5} {}  ({})",
                    e.rule.as_str(),
                    format!("{:?}", e.action).to_lowercase(),
                    state,
                    e.location
                );
            }
        }
    }
    if !a.json {
        let mut grants = policy
            .grants
            .iter()
            .filter(|g| g.who.matches(&who).is_some() && g.backends.iter().any(|b| b.matches(backend.as_str())))
            .peekable();
        if grants.peek().is_some() {
            println!(
                "grants {who} may request here (`gatehouse request --grant NAME --backend {backend} --for D --reason R`):"
            );
            for g in grants {
                println!(
                    "  {:<40} {} for at most {}, approved by {}{}  ({})",
                    g.name,
                    g.template.statements.describe(),
                    settings::format_duration_s(g.max.as_secs()),
                    g.by_name.clone().unwrap_or_else(|| g.by.describe()),
                    if g.count > 1 { format!(" ({} of them)", g.count) } else { String::new() },
                    g.at
                );
            }
        }
    }
    let all_allowed = traces.iter().all(|(_, t)| t.decision.allowed());
    if all_allowed { ExitCode::SUCCESS } else { ExitCode::from(2) }
}
