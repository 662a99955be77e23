use super::decide::{Request, Verdict};
use super::diag::Source;
use super::testcases::single_kind;
use super::*;
use crate::sql::{Statement, TableRef};

fn policy(text: &str) -> Result<Policy, Diagnostics> {
    load::load(&[Source { path: "t.toml".into(), text: text.into() }])
}

fn now() -> jiff::Timestamp {
    // A Wednesday, 10:00 UTC.
    "2026-12-02T10:00:00Z".parse().unwrap()
}

const BASE: &str = r#"
[[backend]]
name = "ssh"
protocol = "tcp"
address = "127.10.0.1:22"

[[backend]]
name = "db-a"
protocol = "postgres"
host = "localhost:5432"
credentials = { user = "gh_app", password_file = "/dev/null" }
roles = { readonly = { user = "gh_ro" }, dba = { user = "gh_dba" } }
"#;

fn stmt(kinds: &[Kind], tables: &[&str]) -> Statement {
    let mut s = single_kind(kinds[0]);
    s.kinds.extend(kinds.iter().copied());
    s.reads = tables
        .iter()
        .map(|t| match t.split_once('.') {
            Some((s, n)) => TableRef { schema: Some(s.into()), name: n.into() },
            None => TableRef { schema: None, name: (*t).into() },
        })
        .collect();
    s
}

fn ask(p: &Policy, who: &Principal, backend: &str, s: Option<&Statement>) -> Decision {
    p.decide(who, &Request { backend: &BackendName::new(backend), statement: s, now: now() })
}

#[test]
fn default_deny_and_deny_beats_allow() {
    let p = policy(&format!(
        r#"{BASE}
[[rule]]
name = "ops reach everything"
who = {{ groups = ["ops"] }}
backends = ["*"]
as_role = "dba"

[[rule]]
name = "no contractors on ssh"
who = {{ groups = ["contractors"] }}
backend = "ssh"
action = "deny"
"#
    ))
    .unwrap();
    let ops = Principal::named("ana", &["ops"]);
    let d = ask(&p, &ops, "ssh", None);
    assert!(d.allowed(), "{d:?}");
    assert_eq!(d.rule_label(), "ops reach everything");
    let both = Principal::named("bob", &["ops", "contractors"]);
    let d = ask(&p, &both, "ssh", None);
    assert!(!d.allowed());
    assert_eq!(d.rule_label(), "no contractors on ssh");
    let nobody = Principal::named("eve", &[]);
    let d = ask(&p, &nobody, "db-a", None);
    assert_eq!(d.verdict, Verdict::Deny);
    assert_eq!(d.rule, None);
    let miss = d.closest.expect("closest rule");
    assert_eq!(miss.rule.as_str(), "ops reach everything");
    assert!(miss.why[0].contains("eve (groups []) is not groups [ops]"), "{miss:?}");
}

#[test]
fn most_specific_allow_wins_then_file_order() {
    let p = policy(&format!(
        r#"{BASE}
[[rule]]
name = "everyone reads"
who = {{ users = ["*"] }}
backend = "db-a"
as_role = "readonly"
statements = ["select"]

[[rule]]
name = "dba group"
who = {{ groups = ["dba"] }}
backends = ["db-*"]
as_role = "dba"

[[rule]]
name = "dba group exact"
who = {{ groups = ["dba"] }}
backend = "db-a"
as_role = "dba"

[[rule]]
name = "ana herself"
who = {{ users = ["ana"] }}
backend = "db-a"
as_role = "readonly"
statements = ["select", "insert"]
"#
    ))
    .unwrap();
    let dba = Principal::named("dan", &["dba"]);
    let d = ask(&p, &dba, "db-a", None);
    assert_eq!(d.rule_label(), "dba group exact", "exact backend beats glob");
    assert_eq!(d.as_role.as_ref().map(DbRole::as_str), Some("dba"));
    let ana = Principal::named("ana", &["dba"]);
    let d = ask(&p, &ana, "db-a", Some(&stmt(&[Kind::Drop], &[])));
    assert_eq!(d.rule_label(), "ana herself", "a rule naming the user beats a group rule");
    assert_eq!(d.verdict, Verdict::Deny);
    assert!(d.reason().contains("drop is not in its statements [select, insert]"), "{}", d.reason());
    let other = Principal::named("zed", &[]);
    let d = ask(&p, &other, "db-a", Some(&stmt(&[Kind::Select], &["t"])));
    assert_eq!(d.rule_label(), "everyone reads");
    assert!(d.allowed());
}

#[test]
fn statements_tables_and_opaque_kinds() {
    let p = policy(&format!(
        r#"{BASE}
[[rule]]
name = "analysts"
who = {{ groups = ["analyst"] }}
backend = "db-a"
as_role = "readonly"
statements = ["*"]
deny_statements = ["drop", "truncate"]
tables = ["public.orders", "reporting.*"]
deny_tables = ["*.salaries"]
"#
    ))
    .unwrap();
    let a = Principal::named("ana", &["analyst"]);
    let ok = |s: &Statement| ask(&p, &a, "db-a", Some(s));
    assert!(ok(&stmt(&[Kind::Select], &["orders"])).allowed(), "unqualified = public for allow lists");
    assert!(ok(&stmt(&[Kind::Select], &["reporting.daily"])).allowed());
    assert!(!ok(&stmt(&[Kind::Select], &["private.orders"])).allowed());
    assert!(!ok(&stmt(&[Kind::Select], &["reporting.salaries"])).allowed());
    assert!(!ok(&stmt(&[Kind::Drop], &["orders"])).allowed());
    // Opaque kinds are not covered by "*".
    let d = ok(&stmt(&[Kind::Select, Kind::FunctionCall], &["orders"]));
    assert!(!d.allowed());
    assert!(d.reason().contains("does not cover it"), "{}", d.reason());
    // Session housekeeping is implicit.
    assert!(ok(&stmt(&[Kind::Transaction], &[])).allowed());
    assert!(ok(&stmt(&[Kind::Show], &[])).allowed());
    assert!(!ok(&stmt(&[Kind::SetRole], &[])).allowed());
}

#[test]
fn statement_scoped_deny_rules_leave_the_connection_open() {
    let p = policy(&format!(
        r#"{BASE}
[[rule]]
name = "devs"
who = {{ groups = ["dev"] }}
backend = "db-a"

[[rule]]
name = "nobody drops"
who = {{ users = ["*"] }}
backend = "db-a"
action = "deny"
statements = ["drop", "truncate"]
"#
    ))
    .unwrap();
    let dev = Principal::named("dee", &["dev"]);
    assert!(ask(&p, &dev, "db-a", None).allowed());
    assert!(ask(&p, &dev, "db-a", Some(&stmt(&[Kind::Insert], &["t"]))).allowed());
    let d = ask(&p, &dev, "db-a", Some(&stmt(&[Kind::Drop], &["t"])));
    assert_eq!(d.rule_label(), "nobody drops");
    assert!(!d.allowed());
}

#[test]
fn approvals_and_time_windows() {
    let p = policy(&format!(
        r#"{BASE}
[[approvers]]
name = "sre-leads"
who = {{ groups = ["sre-leads"] }}

[[rule]]
name = "dba"
who = {{ groups = ["dba"] }}
backend = "db-a"
as_role = "dba"
approval = {{ for = ["drop", "delete_without_where"], by = "sre-leads", timeout = "5m" }}
when = {{ days = ["mon-fri"], hours = "08:00-18:00", tz = "Europe/Paris" }}

[[rule]]
name = "break glass"
who = {{ users = ["oncall"] }}
backend = "db-a"
as_role = "dba"
when = {{ until = "2026-12-02T12:00:00Z" }}
"#
    ))
    .unwrap();
    let dba = Principal::named("dan", &["dba"]);
    let d = ask(&p, &dba, "db-a", Some(&stmt(&[Kind::Delete, Kind::DeleteWithoutWhere], &["t"])));
    assert_eq!(d.verdict, Verdict::NeedsApproval);
    assert_eq!(d.approvers.as_deref(), Some("sre-leads"));
    assert_eq!(d.approval_timeout, Some(std::time::Duration::from_secs(300)));
    assert!(ask(&p, &dba, "db-a", Some(&stmt(&[Kind::Delete], &["t"]))).allowed());
    // Saturday: outside the window; the refusal says why.
    let sat: jiff::Timestamp = "2026-12-05T10:00:00Z".parse().unwrap();
    let d = p.decide(&dba, &Request { backend: &BackendName::new("db-a"), statement: None, now: sat });
    assert!(!d.allowed());
    assert!(d.reason().contains("Saturday is not one of its days"), "{}", d.reason());
    // 19:30 in Paris is 18:30 UTC: outside 08:00-18:00 Paris time.
    let late: jiff::Timestamp = "2026-12-02T18:30:00Z".parse().unwrap();
    let d = p.decide(&dba, &Request { backend: &BackendName::new("db-a"), statement: None, now: late });
    assert!(d.reason().contains("outside its hours"), "{}", d.reason());
    let oncall = Principal::named("oncall", &[]);
    assert!(ask(&p, &oncall, "db-a", None).allowed());
    let later: jiff::Timestamp = "2026-12-02T12:00:00Z".parse().unwrap();
    let d = p.decide(&oncall, &Request { backend: &BackendName::new("db-a"), statement: None, now: later });
    assert!(d.reason().contains("expired"), "{}", d.reason());
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
    assert!(text.contains("no backend matches `yy`"), "{text}");
}

#[test]
fn rule_references_are_checked() {
    let err = policy(&format!(
        r#"{BASE}
[[rule]]
name = "r1"
who = {{ groups = ["a"] }}
backend = "db-a"
as_role = "readonli"
mask = "pii"
statements = ["selct"]

[[rule]]
name = "r2"
who = {{ groups = ["a"] }}
backend = "ssh"
statements = ["select"]

[[rule]]
name = "r3"
who = {{ groups = ["a"] }}
backend = "db-a"
action = "deny"
mask = "pii"

[[rule]]
name = "r4"
who = {{ groups = ["a"] }}
backend = "db-a"
as_role = "dba"
approval = {{ for = ["drop"], by = "sre" }}
when = {{ days = ["mon-fry"], tz = "Mars/Olympus" }}
"#
    ))
    .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("unknown statement kind `selct`") && text.contains("did you mean `select`?"), "{text}");
    assert!(text.contains("`statements` applies to postgres backends"), "{text}");
    assert!(text.contains("`mask` has no meaning on a deny rule"), "{text}");
    assert!(text.contains("no [[approvers]] group named `sre`"), "{text}");
    let err = policy(&format!(
        "{BASE}\n[[rule]]\nname = \"r\"\nwho = {{ groups = [\"a\"] }}\nbackend = \"db-a\"\nas_role = \"readonli\"\n"
    ))
    .unwrap_err();
    assert!(err.to_string().contains("no login for role `readonli`"), "{err}");
    let err = policy(&format!(
        "{BASE}\n[[rule]]\nname = \"r\"\nwho = {{ groups = [\"a\"] }}\nbackend = \"db-a\"\nmask = \"pii\"\n"
    ))
    .unwrap_err();
    assert!(err.to_string().contains("no masking profile named `pii`"), "{err}");
    let err = policy(&format!(
        "{BASE}\n[[rule]]\nname = \"r\"\nwho = {{ groups = [\"a\"] }}\nbackend = \"db-a\"\nwhen = {{ days = [\"mon-fry\"] }}\n"
    ))
    .unwrap_err();
    assert!(err.to_string().contains("is not a day range"), "{err}");
    let err = policy(&format!(
        "{BASE}\n[[rule]]\nname = \"r\"\nwho = {{ groups = [\"a\"] }}\nbackend = \"db-a\"\nwhen = {{ tz = \"Mars/Olympus\" }}\n"
    ))
    .unwrap_err();
    assert!(err.to_string().contains("time zone `Mars/Olympus`"), "{err}");
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
    assert!(NamePattern::new("DB-*").matches("db-a"));
}

#[test]
fn test_cases_run_with_kinds_and_times() {
    let p = policy(&format!(
        r#"{BASE}
[[rule]]
name = "ops"
who = {{ groups = ["ops"] }}
backend = "ssh"

[[rule]]
name = "readers"
who = {{ groups = ["ops"] }}
backend = "db-a"
as_role = "readonly"
statements = ["select"]
when = {{ days = ["mon-fri"] }}

[[test]]
who = {{ user = "ana", groups = ["ops"] }}
backend = "ssh"
expect = "allow"
rule = "ops"

[[test]]
who = {{ user = "ana", groups = ["ops"] }}
backend = "db-a"
kind = "drop"
at = "2026-12-02T10:00:00Z"
expect = "deny"
rule = "readers"

[[test]]
who = {{ user = "ana", groups = ["ops"] }}
backend = "db-a"
kind = "select"
at = "2026-12-05T10:00:00Z"
expect = "deny"

[[test]]
who = {{ user = "eve" }}
backend = "ssh"
expect = "allow"
"#
    ))
    .unwrap();
    let out = p.run_tests(now());
    assert!(out[0].passed, "{:?}", out[0]);
    assert!(out[1].passed, "{:?}", out[1]);
    assert!(out[2].passed, "{:?}", out[2]);
    assert!(!out[3].passed);
}

const IDENTITY: &str = r#"
[identity]
issuer = "https://idp.example.test"
client_id = "gatehouse"
scopes = ["groups", "offline_access"]
max_binding = "8h"
"#;

fn logged_in(user: &str, groups: &[&str], login: TestLogin) -> Principal {
    let mut p = Principal::named(user, groups);
    p.oidc = Some(login.identity(now()));
    p
}

fn login(subject: &str, groups: &[&str]) -> TestLogin {
    TestLogin {
        subject: subject.into(),
        email: Some(format!("{subject}@example.test")),
        groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        acr: None,
        age: std::time::Duration::from_secs(60),
    }
}

#[test]
fn oidc_groups_and_require_decide_after_login() {
    let p = policy(&format!(
        r#"{BASE}{IDENTITY}
[[rule]]
name = "idp dbas"
who = {{ oidc_groups = ["db-admins"] }}
backend = "db-a"
as_role = "dba"
require = {{ login = true, max_age = "8h" }}

[[rule]]
name = "staff read with a fresh strong login"
who = {{ groups = ["staff"] }}
backend = "db-a"
as_role = "readonly"
statements = ["select"]
require = {{ max_age = "1h", acr = "mfa" }}
"#
    ))
    .unwrap();
    assert_eq!(p.identity.as_ref().map(|i| i.scopes.clone()).unwrap(), ["openid", "groups", "offline_access"]);
    // No login: refused, and told what to do.
    let ana = Principal::named("ana", &["staff"]);
    let d = ask(&p, &ana, "db-a", None);
    assert_eq!(d.verdict, Verdict::Deny);
    assert!(d.reason().contains("run `gatehouse login`"), "{}", d.reason());
    // Someone no Unix rule names is told to log in too: IdP rules might name them.
    let d = ask(&p, &Principal::named("zed", &[]), "db-a", None);
    assert!(d.reason().contains("run `gatehouse login`"), "{}", d.reason());
    // A Unix group named like the IdP's grants nothing, nor the reverse.
    let unix_dba = Principal::named("eve", &["db-admins"]);
    assert!(!ask(&p, &unix_dba, "db-a", None).allowed());
    let idp_staff = logged_in("eve", &[], TestLogin { acr: Some("mfa".into()), ..login("eve", &["staff"]) });
    assert!(!ask(&p, &idp_staff, "db-a", None).allowed());
    // Logged in with the IdP group.
    let dba = logged_in("bob", &[], login("bob", &["db-admins"]));
    let d = ask(&p, &dba, "db-a", None);
    assert!(d.allowed(), "{}", d.reason());
    assert_eq!(d.rule.as_ref().map(RuleName::as_str), Some("idp dbas"));
    assert_eq!(d.as_role.as_ref().map(DbRole::as_str), Some("dba"));
    // Staff: the login must be strong (acr) and recent (max_age).
    let weak = logged_in("ana", &["staff"], login("ana", &[]));
    let d = ask(&p, &weak, "db-a", None);
    assert!(!d.allowed() && d.reason().contains("acr [mfa]"), "{}", d.reason());
    let old = logged_in(
        "ana",
        &["staff"],
        TestLogin { acr: Some("mfa".into()), age: std::time::Duration::from_secs(7200), ..login("ana", &[]) },
    );
    let d = ask(&p, &old, "db-a", None);
    assert!(!d.allowed() && d.reason().contains("max_age"), "{}", d.reason());
    let fresh = logged_in("ana", &["staff"], TestLogin { acr: Some("mfa".into()), ..login("ana", &[]) });
    assert!(ask(&p, &fresh, "db-a", Some(&stmt(&[Kind::Select], &["t"]))).allowed());
    assert!(!ask(&p, &fresh, "db-a", Some(&stmt(&[Kind::Delete], &["t"]))).allowed());
    // explain names the requirement of every rule.
    let t = p.explain(&ana, &Request { backend: &BackendName::new("db-a"), statement: None, now: now() });
    assert_eq!(t.considered[0].require.as_deref(), Some("login, max_age 8h"));
    assert_eq!(t.considered[1].require.as_deref(), Some("login, max_age 1h, acr [mfa]"));
}

#[test]
fn emails_match_only_when_verified() {
    let p = policy(&format!(
        r#"{BASE}{IDENTITY}
[[rule]]
name = "by email"
who = {{ emails = ["bob@example.test"] }}
backend = "db-a"
"#
    ))
    .unwrap();
    let mut bob = logged_in("mallory", &[], login("bob", &[]));
    assert!(ask(&p, &bob, "db-a", None).allowed());
    if let Some(o) = bob.oidc.as_mut() {
        o.email_verified = false;
    }
    assert!(!ask(&p, &bob, "db-a", None).allowed());
}

#[test]
fn identity_and_require_are_validated() {
    let errs = |extra: &str| match policy(&format!("{BASE}{extra}")) {
        Ok(_) => String::new(),
        Err(d) => d.to_string(),
    };
    let e = errs(
        r#"
[[rule]]
name = "needs idp"
who = { oidc_groups = ["x"] }
backend = "db-a"
"#,
    );
    assert!(e.contains("no [identity] table"), "{e}");
    let e = errs(&format!(
        r#"{IDENTITY}
[[rule]]
name = "r"
who = {{ users = ["ana"] }}
backend = "db-a"
require = {{ login = true, max_age = "soon" }}
"#
    ));
    assert!(e.contains("t.toml:") && e.contains("require.max_age"), "{e}");
    let e = errs(
        r#"
[identity]
issuer = "http://idp.example.test"
client_id = "gatehouse"
client_secret = "inline"
"#,
    );
    assert!(e.contains("unknown field `client_secret`"), "{e}");
    let e = errs(
        r#"
[identity]
issuer = "http://idp.example.test"
client_id = "gatehouse"
"#,
    );
    assert!(e.contains("must be an https:// URL"), "{e}");
    let e = errs(&format!(
        r#"{IDENTITY}
[[rule]]
name = "deny"
who = {{ users = ["ana"] }}
backend = "db-a"
action = "deny"
require = {{ login = true }}
"#
    ));
    assert!(e.contains("`require` has no meaning on a deny rule"), "{e}");
}

#[test]
fn test_cases_may_state_a_login() {
    let p = policy(&format!(
        r#"{BASE}{IDENTITY}
[[rule]]
name = "idp dbas"
who = {{ oidc_groups = ["db-admins"] }}
backend = "db-a"
require = {{ login = true, max_age = "8h" }}

[[test]]
who = {{ user = "bob" }}
backend = "db-a"
expect = "deny"

[[test]]
who = {{ user = "bob" }}
login = {{ subject = "bob-1", groups = ["db-admins"] }}
backend = "db-a"
expect = "allow"
rule = "idp dbas"

[[test]]
who = {{ user = "bob" }}
login = {{ subject = "bob-1", groups = ["db-admins"], age = "9h" }}
backend = "db-a"
expect = "deny"
"#
    ))
    .unwrap();
    let out = p.run_tests(now());
    assert_eq!(out.len(), 3);
    assert!(out.iter().all(|o| o.passed), "{out:#?}");
    let e = match policy(&format!(
        r#"{BASE}{IDENTITY}
[[test]]
who = {{ user = "bob" }}
login = {{ subject = "bob-1", group = ["x"] }}
backend = "db-a"
expect = "deny"
"#
    )) {
        Ok(_) => String::new(),
        Err(d) => d.to_string(),
    };
    assert!(e.contains("unknown field `group`"), "{e}");
}

#[test]
fn mysql_backends_load_fail_closed_and_their_tests_use_the_mysql_grammar() {
    let p = policy(
        r#"
[[backend]]
name = "shop"
protocol = "mysql"
address = "127.10.0.9:3306"
tls = "off"
credentials = { user = "gh_app", password_file = "/dev/null" }

[[rule]]
name = "readers"
who = { groups = ["ops"] }
backend = "shop"
statements = ["select"]

[[test]]
who = { user = "ana", groups = ["ops"] }
backend = "shop"
sql = "SELECT `id` FROM orders WHERE note = \"x\""
expect = "allow"

[[test]]
who = { user = "ana", groups = ["ops"] }
backend = "shop"
sql = "SELECT 1 /*!50000 , (SELECT x FROM secret) */"
expect = "deny"

[[test]]
who = { user = "ana", groups = ["ops"] }
backend = "shop"
sql = "DROP TABLE orders"
expect = "deny"
"#,
    )
    .unwrap();
    assert_eq!(p.backend(&BackendName::new("shop")).map(|b| b.protocol), Some(Protocol::Mysql));
    for o in p.run_tests(now()) {
        assert!(o.passed, "{o:?}");
    }
    let text = |extra: &str| {
        format!(
            "[[backend]]\nname = \"shop\"\nprotocol = \"mysql\"\naddress = \"127.10.0.9:3306\"\n{extra}credentials = {{ user = \"u\", password_file = \"/dev/null\" }}\n"
        )
    };
    // TLS on both legs, with PostgreSQL's settings: verified by default.
    for (extra, mode, client_tls) in [
        ("", TlsMode::Verify, false),
        ("tls = \"verify\"\nca_file = \"/etc/gatehouse/shop-ca.pem\"\n", TlsMode::Verify, false),
        ("tls = \"prefer\"\n", TlsMode::Prefer, false),
        ("tls = \"off\"\nclient_tls = { cert_file = \"/x\", key_file = \"/y\" }\n", TlsMode::Off, true),
    ] {
        let p = policy(&text(extra)).unwrap_or_else(|e| panic!("{extra}: {e:?}"));
        let b = p.backend(&BackendName::new("shop")).expect("backend");
        assert_eq!((b.tls, b.client_tls.is_some()), (mode, client_tls), "{extra}");
    }
    // What does not apply (or is not done yet) is refused at load, not skipped at run time.
    for (extra, why) in [
        ("tls = \"prefer\"\nca_file = \"/x\"\n", "ca_file is used only with tls = \"verify\""),
        ("require_auth = [\"scram-sha-256\"]\n", "require_auth applies to postgres backends"),
        ("tls = \"maybe\"\n", "tls must be off, prefer or verify"),
    ] {
        let e = policy(&text(extra)).expect_err("refused").to_string();
        assert!(e.contains(why), "{extra}: {e}");
    }
}

#[test]
fn a_hold_alert_without_any_approver_is_warned_about() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = std::env::temp_dir().join(format!("gh-hold-warn-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let secret = dir.join("s");
    std::fs::write(&secret, "pw").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let base = format!(
        r#"
[[backend]]
name = "appdb"
protocol = "postgres"
address = "127.10.0.9:5432"
credentials = {{ user = "app", password_file = "{}" }}

[[rule]]
name = "r"
who = {{ users = ["root"] }}
backend = "appdb"
statements = ["select"]
"#,
        secret.display()
    );
    let alert = r#"
[[trail]]
table = "public.customers"

[[alert]]
name = "vip-hold"
table = "public.customers"
keys = ["42"]
action = "hold"
"#;
    let warned = |text: &str| {
        let p = policy(text).unwrap();
        crate::policy::files::check(&p, 0).unwrap().warnings.iter().any(|w| w.contains("alert `vip-hold`"))
    };
    assert!(warned(&format!("{base}{alert}")));
    let with_approver = base.replace(
        "statements = [\"select\"]",
        "statements = [\"select\", \"drop\"]\napproval = { for = [\"drop\"], by = \"leads\" }",
    ) + "\n[[approvers]]\nname = \"leads\"\nwho = { users = [\"root\"] }\n";
    assert!(!warned(&format!("{with_approver}{alert}")));
    assert!(!warned(&base));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn mysql_server_public_key_is_read_and_checked_when_the_policy_loads() {
    use rsa::pkcs8::{EncodePublicKey, LineEnding};
    use std::os::unix::fs::PermissionsExt as _;
    let dir = std::env::temp_dir().join(format!("gh-sha2-key-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let secret = dir.join("pw");
    std::fs::write(&secret, "pw").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 1024).unwrap().to_public_key();
    let good = dir.join("good.pem");
    std::fs::write(&good, key.to_public_key_pem(LineEnding::LF).unwrap()).unwrap();
    let garbled = dir.join("garbled.pem");
    std::fs::write(&garbled, "-----BEGIN PUBLIC KEY-----\nnot base64 at all\n-----END PUBLIC KEY-----\n").unwrap();
    let backend = |protocol: &str, extra: &str| {
        format!(
            "[[backend]]\nname = \"shop\"\nprotocol = \"{protocol}\"\naddress = \"127.10.0.9:3306\"\ntls = \"off\"\n{extra}credentials = {{ user = \"u\", password_file = \"{}\" }}\n",
            secret.display()
        )
    };
    let key_line = |p: &std::path::Path| format!("server_public_key = \"{}\"\n", p.display());

    // A pinned key and the opt-in: read, parsed, kept on the backend.
    let p = policy(&backend("mysql", &format!("{}get_server_public_key = true\n", key_line(&good)))).unwrap();
    let b = p.backend(&BackendName::new("shop")).unwrap();
    assert_eq!((b.server_public_key.as_deref(), b.get_server_public_key), (Some(good.as_path()), true));
    let report = files::check(&p, 0).unwrap();
    assert!(!report.warnings.iter().any(|w| w.contains("get_server_public_key")), "{:?}", report.warnings);
    // Neither: nothing set.
    let p = policy(&backend("mysql", "")).unwrap();
    let b = p.backend(&BackendName::new("shop")).unwrap();
    assert_eq!((b.server_public_key.as_deref(), b.get_server_public_key), (None, false));
    // The opt-in alone without TLS is allowed, and warned about.
    let p = policy(&backend("mysql", "get_server_public_key = true\n")).unwrap();
    let w = files::check(&p, 0).unwrap().warnings;
    assert!(w.iter().any(|w| w.contains("get_server_public_key = true") && w.contains("impostor")), "{w:?}");

    // A missing file and a garbled PEM stop the policy, naming the setting.
    for (path, why) in [(dir.join("absent.pem"), "server_public_key"), (garbled.clone(), "not an RSA")] {
        let p = policy(&backend("mysql", &key_line(&path))).unwrap();
        let e = files::check(&p, 0).expect_err("refused").to_string();
        assert!(e.contains("server_public_key") && e.contains(why), "{e}");
    }
    // A file that is not a public key at all (the password file, not PEM).
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let p = policy(&backend("mysql", &key_line(&secret))).unwrap();
    let e = files::check(&p, 0).expect_err("refused").to_string();
    assert!(e.contains("server_public_key") && e.contains("PEM"), "{e}");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();

    // Only mysql backends take the settings.
    for (protocol, extra) in [
        ("postgres", key_line(&good)),
        ("postgres", "get_server_public_key = true\n".to_owned()),
        ("tcp", "get_server_public_key = false\n".to_owned()),
    ] {
        let text = backend(protocol, &extra).replace("tls = \"off\"\n", "");
        let text = if protocol == "tcp" { text.replace("credentials", "#credentials") } else { text };
        let e = policy(&text).expect_err("refused").to_string();
        assert!(e.contains("apply to mysql backends"), "{protocol}: {e}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// An http backend by IP address alone serves only that address (a request
/// for another host gets 421): `policy check` says so, until the names
/// clients use are listed in `server_names` (any http backend but passthrough).
#[test]
fn http_backends_without_names_are_warned_about_and_server_names_load_on_any_tls() {
    let backend = |extra: &str| {
        format!(
            "[[backend]]\nname = \"api\"\nprotocol = \"http\"\naddress = \"127.10.0.9:8080\"\ntls = \"off\"\n{extra}\n[[rule]]\nname = \"r\"\nwho = {{ users = [\"ana\"] }}\nbackends = [\"api\"]\n"
        )
    };
    let warned =
        |w: &[String]| w.iter().any(|w| w.contains("backend `api`: it has no names") && w.contains("server_names"));
    let p = policy(&backend("")).unwrap();
    assert!(warned(&files::check(&p, 0).unwrap().warnings));
    let p = policy(&backend("server_names = [\"api.internal\"]\n")).unwrap();
    assert!(!warned(&files::check(&p, 0).unwrap().warnings));
    assert_eq!(p.backend(&BackendName::new("api")).unwrap().http.as_ref().unwrap().server_names, ["api.internal"]);
    let e = policy(&backend("server_names = [\"api.internal\"]\n").replace("tls = \"off\"", "tls = \"passthrough\""))
        .expect_err("passthrough has no requests")
        .to_string();
    assert!(e.contains("server_names does not apply"), "{e}");
}

#[test]
fn a_whole_schema_meets_every_deny_pattern_of_it() {
    let whole = |db: &str| TableRef { schema: Some(db.into()), name: TableRef::WHOLE.into() };
    let p = |s: &str| TablePattern::parse(s).unwrap();
    // Deny: any pattern whose schema part covers it.
    assert!(p("*.customers").matches(&whole("scratch"), true));
    assert!(p("shop.cards").matches(&whole("shop"), true));
    assert!(p("customers").matches(&whole("scratch"), true));
    assert!(!p("shop.cards").matches(&whole("scratch"), true));
    // Allow: only `schema.*` (or `*`) covers every table of it.
    assert!(p("shop.*").matches(&whole("shop"), false));
    assert!(!p("shop.items").matches(&whole("shop"), false));
    assert!(!p("other.*").matches(&whole("shop"), false));
    // Every schema (DROP OWNED): every deny pattern; only `*.*` or `*` allows it.
    let all = TableRef { schema: None, name: TableRef::WHOLE.into() };
    assert!(p("hr.bonuses").matches(&all, true));
    assert!(!p("public.*").matches(&all, false));
    assert!(p("*.*").matches(&all, false) && p("*").matches(&all, false));
}
