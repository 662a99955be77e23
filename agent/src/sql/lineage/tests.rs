use super::*;

fn lineage(sql: &str) -> Lineage {
    let parsed = pg_query::parse(sql, pg_query::ParserOptions::DEFAULT).unwrap();
    let raw = parsed.protobuf.stmts.first().unwrap();
    of(raw.stmt.as_ref().unwrap().node.as_ref().unwrap().to_ref()).unwrap()
}

fn col(q: Option<&str>, name: &str) -> Ref {
    Ref::Column { qualifier: q.map(str::to_owned), name: name.into() }
}

#[test]
fn outputs_read_what_their_expressions_read() {
    let l = lineage(
        "SELECT id, replace(email, '@', ' at ') AS x, c.ssn::bytea, upper(c.name) || phone, count(ssn), \
         to_json(c), row_to_json(c.*) FROM customers c",
    );
    assert!(l.exact);
    let names: Vec<&str> = l.outputs.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, ["id", "x", "ssn", "?column?", "count", "to_json", "row_to_json"]);
    assert_eq!(l.outputs[1].refs, [col(None, "email")]);
    assert_eq!(l.outputs[2].refs, [col(Some("c"), "ssn")]);
    assert_eq!(l.outputs[3].refs, [col(Some("c"), "name"), col(None, "phone")]);
    assert!(l.outputs[4].refs.is_empty(), "count's argument does not reach its value");
    assert_eq!(l.outputs[5].refs, [col(None, "c")]);
    assert_eq!(l.outputs[6].refs, [Ref::Whole("c".into())]);
    assert_eq!(
        l.sources,
        [Source { alias: "c".into(), kind: SourceKind::Relation(TableRef { schema: None, name: "customers".into() }) }]
    );
}

#[test]
fn subqueries_ctes_and_set_operations() {
    let l = lineage(
        "WITH t(e) AS (SELECT email FROM customers) SELECT s.x, (SELECT e FROM t LIMIT 1), y \
         FROM (SELECT lower(ssn) AS x FROM customers) s, LATERAL (SELECT s.x || '' AS y) z",
    );
    assert_eq!(l.outputs[0].refs, [col(Some("s"), "x")]);
    assert_eq!(l.outputs[1].refs, [col(None, "e")]);
    assert!(l.inner.iter().any(|o| o.name == "e" && o.refs == [col(None, "email")]));
    assert!(l.inner.iter().any(|o| o.name == "x" && o.refs == [col(None, "ssn")]));
    assert!(l.sources.iter().any(|s| s.alias == "t" && matches!(s.kind, SourceKind::Query(_))));
    let u = lineage("SELECT name FROM customers UNION ALL SELECT ssn FROM customers");
    assert_eq!(u.outputs[0].refs, [col(None, "name"), col(None, "ssn")]);
    let v = lineage("SELECT x AS ssn FROM (VALUES ('123-45-6789')) v(x)");
    assert_eq!(v.outputs[0].refs, [col(None, "x")]);
    assert!(v.inner.iter().any(|o| o.name == "x" && o.refs.is_empty()), "{v:?}");
}

#[test]
fn stars_predicates_and_copy() {
    let l = lineage(
        "SELECT *, c.* FROM customers c JOIN orders o USING (email) WHERE ssn LIKE '123%' \
         GROUP BY 1 ORDER BY x, string_agg(name, ',' ORDER BY phone)",
    );
    assert!(!l.exact);
    assert_eq!(l.outputs[1].star, Some(Star { qualifier: Some("c".into()), level: vec![0] }));
    assert_eq!(l.outputs[0].star, Some(Star { qualifier: None, level: vec![0, 1] }));
    let u = lineage("SELECT * FROM orders UNION ALL SELECT * FROM customers");
    assert_eq!(u.outputs[0].star, Some(Star { qualifier: None, level: vec![0, 1] }), "both sides' stars: {u:?}");
    for r in [col(None, "email"), col(None, "ssn"), col(None, "x"), col(None, "phone")] {
        assert!(l.predicates.contains(&r), "{r:?} in {:?}", l.predicates);
    }
    let r = lineage("SELECT (ROW()).*, upper(ssn), (ROW('a', 'b')).* FROM customers");
    assert!(!r.exact, "a row expansion breaks positions: {r:?}");
    let lim = lineage("SELECT id FROM customers LIMIT (SELECT count(*) FROM customers WHERE ssn LIKE '1%')");
    assert!(lim.predicates.contains(&col(None, "ssn")), "{lim:?}");
    // A LIMIT/OFFSET constant is a count, not an output position.
    let n = lineage("SELECT name, email, card_number FROM customers ORDER BY id LIMIT 3 OFFSET 2");
    assert_eq!(n.predicates, [col(None, "id")], "{n:?}");
    let c = lineage("COPY customers (email, name) TO STDOUT WITH (FORMAT csv, HEADER)");
    assert_eq!(c.outputs[1].refs, [col(Some("customers"), "name")]);
    let f = c.copy.unwrap();
    assert!(f.csv && f.header && !f.unusual && f.delimiter == b',');
    let q = lineage("COPY (SELECT upper(email) FROM customers) TO STDOUT (DELIMITER '|')");
    assert_eq!(q.outputs[0].refs, [col(None, "email")]);
    assert_eq!(q.copy.unwrap().delimiter, b'|');
    let r = lineage("UPDATE customers SET name = 'x' WHERE ssn = '1' RETURNING email");
    assert_eq!(r.outputs[0].refs, [col(None, "email")]);
    assert!(r.predicates.contains(&col(None, "ssn")));
    let d = lineage("DECLARE cur CURSOR FOR SELECT md5(ssn) FROM customers");
    assert_eq!(d.declares.as_deref(), Some("cur"));
    assert_eq!(d.outputs[0].refs, [col(None, "ssn")]);
    assert_eq!(lineage("FETCH 5 FROM cur").fetches.as_deref(), Some("cur"));
}

/// Ways to learn about a value from how many rows come out, or from a count,
/// without a WHERE: each must register the column as a predicate.
#[test]
fn row_counts_that_depend_on_values_are_predicates() {
    for sql in [
        // count(x) counts the x that are not NULL.
        "SELECT count(nullif(substr(ssn, 1, 1), '1')) FROM customers",
        "SELECT count(CASE WHEN ssn LIKE '1%' THEN 1 END) FROM customers",
        "SELECT count(DISTINCT ssn) FROM customers",
        "SELECT string_agg(DISTINCT ssn, ',') FROM customers",
        // Rows compared.
        "SELECT DISTINCT substr(ssn, 1, 1) FROM customers",
        "SELECT ssn FROM customers UNION SELECT '123-45-6789'",
        "SELECT ssn FROM customers INTERSECT ALL SELECT '123-45-6789'",
        "SELECT ssn FROM customers EXCEPT SELECT '123-45-6789'",
        "SELECT DISTINCT * FROM customers",
        // Set-returning functions: how many rows depends on the arguments.
        "SELECT count(*) FROM customers c, generate_series(1, ascii(c.ssn))",
        "SELECT count(*) FROM (SELECT generate_series(1, ascii(ssn)) FROM customers) s",
        "SELECT count(*) FROM (SELECT regexp_matches(ssn, '1', 'g') FROM customers) s",
        "SELECT 1 FROM customers c, LATERAL unnest(string_to_array(c.ssn, '1')) u",
        "SELECT count(*) FROM customers c, ROWS FROM (generate_series(1, length(c.ssn))) g",
        "SELECT count(*) FROM XMLTABLE('/a' PASSING (SELECT xmlparse(content ssn) FROM customers) COLUMNS x int PATH '.')",
        "SELECT count(*) FROM orders TABLESAMPLE BERNOULLI ((SELECT ascii(ssn) FROM customers LIMIT 1))",
        // LIMIT of a set operation.
        "SELECT id FROM orders UNION ALL SELECT 1 LIMIT (SELECT ascii(ssn) FROM customers LIMIT 1)",
        // A window frame's offset.
        "SELECT count(*) OVER (ROWS BETWEEN (SELECT ascii(ssn) FROM customers LIMIT 1) PRECEDING AND CURRENT ROW) FROM orders",
        // A recursive CTE's CYCLE compares its columns.
        "WITH RECURSIVE r(s) AS (SELECT ssn FROM customers UNION ALL SELECT s FROM r) CYCLE s SET c USING p SELECT 1 FROM r",
    ] {
        let l = lineage(sql);
        assert!(
            l.predicates
                .iter()
                .any(|r| matches!(r, Ref::Column { name, .. } if name == "ssn" ) || matches!(r, Ref::Whole(_))),
            "{sql}: {:?}",
            l.predicates
        );
    }
    // What stays allowed: counting rows or a column itself, UNION ALL, functions that keep the row count.
    for sql in [
        "SELECT count(*), count(ssn), count(c.ssn) FROM customers c",
        "SELECT ssn FROM customers UNION ALL SELECT '1'",
        "SELECT upper(ssn), replace(ssn, '-', '') FROM customers",
    ] {
        let l = lineage(sql);
        assert!(!l.predicates.iter().any(|r| matches!(r, Ref::Column { name, .. } if name == "ssn")), "{sql}: {l:?}");
    }
}

#[test]
fn the_set_returning_list_is_sorted_for_its_binary_search() {
    assert!(SET_RETURNING.windows(2).all(|w| w[0] < w[1]));
}

/// Nested counts, DISTINCT aggregates and set-returning calls walk each
/// argument once (twice per level cost 2^depth).
#[test]
fn nested_counting_calls_cost_linear_time() {
    let mut expr = String::from("ssn");
    for _ in 0..40 {
        expr = format!("count(DISTINCT {expr})");
    }
    let started = std::time::Instant::now();
    let l = lineage(&format!("SELECT {expr} FROM customers"));
    assert!(l.predicates.iter().any(|r| matches!(r, Ref::Column { name, .. } if name == "ssn")));
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "{:?}", started.elapsed());
}

/// Positions past a `*` keep one copy of their level's columns: a text of
/// many positions over many columns costs their sum, not their product
/// (12 000 of each took a minute to walk when each position had its own).
#[test]
fn positions_of_a_level_share_its_columns() {
    let l = lineage("SELECT id, *, * FROM customers ORDER BY 1, 2, 3 DESC, 4");
    assert_eq!(l.positions.iter().map(|p| p.index).collect::<Vec<_>>(), [1, 2, 3], "position 1 is `id`: {l:?}");
    assert!(l.positions.windows(2).all(|w| std::sync::Arc::ptr_eq(&w[0].outputs, &w[1].outputs)), "{l:?}");
    let inner = lineage("SELECT * FROM (SELECT * FROM customers ORDER BY 2) s ORDER BY 1");
    assert_eq!(inner.positions.len(), 2);
    assert!(!std::sync::Arc::ptr_eq(&inner.positions[0].outputs, &inner.positions[1].outputs), "two levels: {inner:?}");
}
