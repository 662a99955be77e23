use super::load::{Results, Row, build};
use super::*;
use crate::sql::{Kind, ParseOptions, parse};

fn row(v: &[&str]) -> Row {
    v.iter().map(|s| if *s == "NULL" { None } else { Some((*s).to_owned()) }).collect()
}

/// A catalog with `public.lower(int)`, a one-argument `public.score`, an
/// operator `#@#(int, int)`, a domain with a CHECK, an extension-like base
/// type with its own `=`, tables `public.orders`, `public.customers`,
/// `hr.salaries`, a view `public.pay` over `hr.salaries`, and a partition
/// `public.customers_p1` of `public.customers`.
pub(crate) fn sample() -> Catalog {
    let results: Results = vec![
        vec![row(&["gh_app", "\"$user\", public", "appdb"])],
        vec![],
        vec![row(&["public", "lower", "1"]), row(&["public", "score", "1"]), row(&["public", "f", "0"])],
        vec![row(&["public", "#@#", "t"]), row(&["public", "=", "f"])],
        vec![
            row(&["20000", "checked", "d", "23", "0", "t", "f", "N"]),
            row(&["20001", "plain", "d", "23", "0", "f", "f", "N"]),
            row(&["20002", "citext", "b", "0", "0", "f", "f", "S"]),
            row(&["20003", "mood", "e", "0", "0", "f", "f", "E"]),
            row(&["20004", "email_t", "d", "20002", "0", "f", "f", "S"]),
        ],
        vec![],
        vec![
            row(&["16400", "public", "orders", "r"]),
            row(&["16401", "public", "customers", "r"]),
            row(&["16402", "hr", "salaries", "r"]),
            row(&["16403", "public", "pay", "v"]),
            row(&["16404", "public", "customers_p1", "r"]),
            row(&["1259", "pg_catalog", "pg_class", "r"]),
        ],
        vec![
            row(&["16400", "1", "id", "23"]),
            row(&["16400", "2", "customer_id", "23"]),
            row(&["16401", "1", "id", "23"]),
            row(&["16401", "2", "email", "25"]),
            row(&["16402", "1", "emp", "23"]),
            row(&["16402", "2", "amount", "23"]),
            row(&["16403", "1", "emp", "23"]),
            // A partition of customers whose columns were laid out differently.
            row(&["16404", "1", "email", "25"]),
            row(&["16404", "2", "id", "23"]),
        ],
        vec![row(&["16403", "16402"])],
        vec![row(&["16403", " SELECT salaries.emp FROM hr.salaries;"])],
        vec![row(&["16401", "1"]), row(&["16402", "1 2"])],
        vec![row(&["16404", "16401"])],
    ];
    build(&results).unwrap()
}

fn kinds(cat: &Catalog, session: &SessionNames, sql: &str) -> Vec<Kind> {
    let mut all = parse(sql, ParseOptions::default()).unwrap();
    assert_eq!(all.len(), 1);
    let s = &mut all[0];
    resolve(s, cat, session);
    s.kinds.iter().copied().collect()
}

#[test]
fn user_code_reached_without_a_call_to_a_new_name() {
    let cat = sample();
    let ses = SessionNames::default();
    for sql in [
        "SELECT lower(42)",
        "SELECT lower('A')",
        "SELECT 1 #@# 2",
        "SELECT 1::checked",
        "SELECT CAST(1 AS checked)",
        "SELECT o.score FROM orders o",
        "SELECT (o).score FROM orders o",
        "SELECT f()",
        "SELECT public.f()",
        "SELECT unknown_function(1)",
        "SELECT 1 OPERATOR(public.#@#) 2",
        "SELECT 1 !@!@! 2",
        "SELECT 'x'::citext",
        "SELECT 'x'::no_such_type",
        "SELECT * FROM orders TABLESAMPLE my_sampler (10)",
    ] {
        assert!(kinds(&cat, &ses, sql).contains(&Kind::FunctionCall), "{sql}");
    }
    for sql in [
        "SELECT pg_catalog.lower('A')",
        "SELECT upper(email), stddev(id), percentile_cont(0.5) WITHIN GROUP (ORDER BY id) FROM customers",
        "SELECT 1 + 2, 'a' LIKE 'b' ESCAPE '!', 'a' SIMILAR TO 'b', 3 BETWEEN 1 AND 4",
        "SELECT (DATE '2001-02-16', DATE '2001-12-21') OVERLAPS (DATE '2001-10-30', DATE '2002-10-30')",
        "SELECT 1::plain, 'happy'::mood, id::text FROM orders",
        "SELECT o.id, c.email FROM orders o JOIN customers c ON c.id = o.customer_id",
        "SELECT lpad('a', 3), array_to_string(ARRAY[1], ','), to_json(1), current_schema, pg_backend_pid()",
        "SELECT * FROM orders TABLESAMPLE SYSTEM (10)",
    ] {
        let k = kinds(&cat, &ses, sql);
        assert!(!k.contains(&Kind::FunctionCall), "{sql}: {k:?}");
    }
}

#[test]
fn code_attached_by_ddl_is_define_code() {
    let cat = sample();
    let ses = SessionNames::default();
    for sql in [
        "ALTER TABLE orders ADD CONSTRAINT c CHECK (f() > 0)",
        "ALTER TABLE orders ALTER COLUMN id SET DEFAULT f()",
        "CREATE INDEX i ON orders ((lower(id)))",
        "CREATE VIEW v AS SELECT f()",
        "CREATE TABLE t (a int GENERATED ALWAYS AS (lower(1)) STORED)",
        "CREATE POLICY p ON orders USING (f() > 0)",
    ] {
        let k = kinds(&cat, &ses, sql);
        assert!(k.contains(&Kind::DefineCode), "{sql}: {k:?}");
    }
    // Calling user code once is not attaching it.
    let k = kinds(&cat, &ses, "CREATE TABLE t AS SELECT f()");
    assert!(k.contains(&Kind::FunctionCall) && !k.contains(&Kind::DefineCode), "{k:?}");
}

#[test]
fn pending_definitions_count_before_the_catalog_is_read_again() {
    let cat = sample();
    let mut ses = SessionNames::default();
    assert!(!kinds(&cat, &ses, "SELECT upper('a')").contains(&Kind::FunctionCall));
    ses.pending.push((
        crate::sql::Defined::Function,
        crate::sql::QualName { schema: Some("public".into()), name: "upper".into() },
    ));
    assert!(kinds(&cat, &ses, "SELECT upper('a')").contains(&Kind::FunctionCall));
}

#[test]
fn names_resolve_as_the_search_path_does() {
    let cat = sample();
    let ses = SessionNames::default();
    let resolved = |ses: &SessionNames, sql: &str| {
        let mut all = parse(sql, ParseOptions::default()).unwrap();
        resolve(&mut all[0], &cat, ses);
        all.remove(0)
    };
    let s = resolved(&ses, "SELECT * FROM pg_stats WHERE tablename = 'salaries'");
    assert_eq!(s.reads[0].schema.as_deref(), Some("pg_catalog"));
    assert_eq!(s.sensitive.len(), 1);
    let s = resolved(&ses, "SELECT * FROM orders, pg_class");
    assert_eq!(s.reads.iter().map(ToString::to_string).collect::<Vec<_>>(), ["public.orders", "pg_catalog.pg_class"]);
    assert!(s.sensitive.is_empty());
    // Set through SET search_path (tracked by the session).
    let hr = SessionNames { search_path: Some(vec!["hr".to_owned()].into()), ..SessionNames::default() };
    assert_eq!(resolved(&hr, "SELECT * FROM salaries").reads[0].to_string(), "hr.salaries");
    // Unknown path: every schema that has the name.
    let unknown = SessionNames { path_unknown: true, ..SessionNames::default() };
    assert_eq!(resolved(&unknown, "SELECT * FROM salaries").reads[0].to_string(), "hr.salaries");
    // Views read their tables.
    let s = resolved(&ses, "SELECT * FROM pay");
    assert_eq!(s.via_views.iter().map(ToString::to_string).collect::<Vec<_>>(), ["hr.salaries"]);
    // Quoted names are case-sensitive: "PUBLIC" is another schema.
    let s = resolved(&ses, "SELECT * FROM \"PUBLIC\".orders");
    assert_eq!(s.reads[0].schema.as_deref(), Some("PUBLIC"));
}

#[test]
fn ambiguous_columns_are_settled_by_the_catalog() {
    let cat = sample();
    let ses = SessionNames::default();
    // `customer_id` is only the target's column: restricting.
    assert!(
        !kinds(&cat, &ses, "DELETE FROM orders USING customers WHERE customer_id = customers.id")
            .contains(&Kind::DeleteWithoutWhere)
    );
    // `email` belongs to the other table: every order is deleted.
    assert!(
        kinds(&cat, &ses, "DELETE FROM orders USING customers WHERE email = 'x'").contains(&Kind::DeleteWithoutWhere)
    );
    // Offline, nothing is known about the tables: ambiguous counts as touching every row.
    let offline = Catalog::builtin();
    assert!(
        kinds(offline, &ses, "DELETE FROM orders USING customers WHERE customer_id = customers.id")
            .contains(&Kind::DeleteWithoutWhere)
    );
}

#[test]
#[ignore = "timing probe, run by hand"]
fn resolve_cost_probe() {
    let cat = sample();
    let ses = SessionNames::default();
    let cache = crate::sql::Classifier::default();
    let limits = crate::sql::QueryLimits::default();
    let sql = "SELECT o.id, c.email FROM orders o JOIN customers c ON c.id = o.customer_id WHERE o.id = 42";
    let n = 200_000;
    let t = std::time::Instant::now();
    for _ in 0..n {
        let mut v = cache.classify_blocking(sql, ParseOptions::default(), &limits).unwrap();
        for s in &mut v {
            resolve(s, &cat, &ses);
        }
        std::hint::black_box(v);
    }
    eprintln!("cache hit + resolve: {:.0} ns", t.elapsed().as_nanos() as f64 / f64::from(n));
    let mut v = cache.classify_blocking(sql, ParseOptions::default(), &limits).unwrap();
    let t = std::time::Instant::now();
    for _ in 0..n {
        let mut s = v[0].clone();
        resolve(&mut s, &cat, &ses);
        std::hint::black_box(s);
    }
    eprintln!("clone + resolve: {:.0} ns", t.elapsed().as_nanos() as f64 / f64::from(n));
    v.clear();
}

#[test]
fn primary_keys_are_read() {
    let c = sample();
    assert_eq!(c.relation_named("public", "customers").unwrap().primary_key, vec![1]);
    assert_eq!(c.relation_named("hr", "salaries").unwrap().primary_key, vec![1, 2], "composite keys keep every column");
    assert!(c.relation_named("public", "orders").unwrap().primary_key.is_empty());
}

#[test]
fn a_partition_counts_as_its_parent_for_deny_tables_and_a_parent_as_its_partitions() {
    let cat = sample();
    assert_eq!(cat.relation(16404).map(|r| r.ancestors.clone()), Some(vec![16401]));
    assert_eq!(cat.relation(16401).map(|r| r.descendants.clone()), Some(vec![16404]));
    for sql in ["SELECT id FROM customers_p1", "DELETE FROM public.customers_p1 WHERE id = 1"] {
        let mut all = parse(sql, ParseOptions::default()).unwrap();
        let s = &mut all[0];
        resolve(s, &cat, &SessionNames::default());
        assert!(s.via_views.iter().any(|t| t.to_string() == "public.customers"), "{sql}: {:?}", s.via_views);
    }
    let mut all = parse("SELECT id FROM customers", ParseOptions::default()).unwrap();
    let s = &mut all[0];
    resolve(s, &cat, &SessionNames::default());
    assert!(s.via_views.iter().any(|t| t.to_string() == "public.customers_p1"), "{:?}", s.via_views);
}

/// An unqualified name is known only where a relation made since the read
/// could not take its place on the session's path.
#[test]
fn a_name_a_new_relation_could_shadow_is_not_known() {
    let mut cat = sample();
    let t = |name: &str| TableRef { schema: None, name: name.into() };
    let path = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let (public_hr, hr_public) = (path(&["public", "hr"]), path(&["hr", "public"]));
    // The default path: `$user` (gh_app) has no relations, so it is not there.
    assert!(cat.knows_relation_on(&t("orders"), &[None]));
    assert!(!cat.knows_relation_on(&t("salaries"), &[Some(&public_hr)]), "public.salaries made later would be read");
    assert!(cat.knows_relation_on(&t("salaries"), &[Some(&hr_public)]));
    assert!(
        !cat.knows_relation_on(&t("salaries"), &[Some(&hr_public), Some(&public_hr)]),
        "every path the text may use"
    );
    assert!(cat.knows_relation_on(&t("pg_class"), &[Some(&public_hr)]), "pg_catalog comes first unless placed");
    assert!(!cat.knows_relation_on(&t("orders"), &[]), "a path not known: looked up");
    let q = TableRef { schema: Some("hr".into()), name: "salaries".into() };
    assert!(cat.knows_relation_on(&q, &[]), "qualified names need no path");
    assert!(!cat.knows_relation_on(&t("nothing"), &[None]));
    // With the schemas read, an empty schema early on the path counts too.
    cat.schemas = Some(["public", "hr", "empty"].iter().map(|s| (*s).to_owned()).collect());
    assert!(!cat.knows_relation_on(&t("orders"), &[Some(&path(&["empty", "public"]))]));
    assert!(cat.knows_relation_on(&t("orders"), &[Some(&path(&["gone", "public"]))]), "a schema that is not there");
}

#[test]
fn a_schema_the_login_may_not_use_does_not_hide_a_name() {
    let mut cat = sample();
    cat.unusable_schemas = ["hr".to_owned()].into_iter().collect();
    let t = |name: &str| TableRef { schema: None, name: name.into() };
    let hr_public = vec!["hr".to_owned(), "public".to_owned()];
    // The server skips `hr`: a `public.salaries` made later is what it reads.
    assert!(!cat.knows_relation_on(&t("salaries"), &[Some(&hr_public)]));
    // Resolved: `hr.salaries` still counts (USAGE may be granted since the
    // read), and so would the next schema that holds the name (the
    // end-to-end test in bypass.rs has one).
    let mut all = parse("SELECT * FROM salaries, orders", ParseOptions::default()).unwrap();
    let ses = SessionNames { search_path: Some(hr_public.into()), ..SessionNames::default() };
    resolve(&mut all[0], &cat, &ses);
    let reads: Vec<String> = all[0].reads.iter().map(ToString::to_string).collect();
    assert_eq!(reads, ["hr.salaries", "public.orders"]);
}

/// After a role change `$user` is the current role, which the catalog does
/// not know: a path naming it is unknown, so a name counts in every schema
/// holding it (`hr` could be the role's own schema).
#[test]
fn after_a_role_change_user_on_the_path_could_be_any_schema() {
    let cat = sample();
    let reads = |ses: &SessionNames| {
        let mut all = parse("SELECT * FROM salaries", ParseOptions::default()).unwrap();
        resolve(&mut all[0], &cat, ses);
        all[0].reads.iter().map(ToString::to_string).collect::<Vec<String>>()
    };
    // The login's `$user` is gh_app, which has no schema: public has none.
    assert_eq!(reads(&SessionNames::default()), ["salaries"]);
    let changed = SessionNames { role_changed: true, ..SessionNames::default() };
    assert_eq!(reads(&changed), ["hr.salaries"]);
    let set_again = SessionNames {
        role_changed: true,
        search_path: Some(vec!["$user".to_owned(), "public".to_owned()].into()),
        ..SessionNames::default()
    };
    assert_eq!(reads(&set_again), ["hr.salaries"]);
    // A path without `$user` stays known.
    let public = SessionNames {
        role_changed: true,
        search_path: Some(vec!["public".to_owned()].into()),
        ..SessionNames::default()
    };
    assert_eq!(reads(&public), ["salaries"]);
}

/// The path a session is pinned to reads back as the same schemas, whatever
/// their names hold.
#[test]
fn a_search_path_formatted_reads_back_as_the_same_schemas() {
    for path in [
        vec!["$user".to_owned(), "public".to_owned()],
        vec!["Mixed".to_owned(), "with space".to_owned(), "quo\"te".to_owned()],
        vec![],
    ] {
        assert_eq!(crate::catalog::parse_search_path(&crate::catalog::format_search_path(&path)), path);
    }
    assert_eq!(crate::catalog::format_search_path(&["$user".into(), "public".into()]), "\"$user\", \"public\"");
}
