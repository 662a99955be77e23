//! The masking plan of a result: how each column's values are masked,
//! decided from what the column *is* — the table column it shows
//! (RowDescription's table OID and column number, resolved in the catalog,
//! through views), or the table columns its expression reads (lineage) —
//! and never from its output name.
//!
//! - A column showing a masked column as it is stored (the server names
//!   the table column in its RowDescription) gets that column's style (the
//!   most concealing one when the statement's lineage says more), if its
//!   type is text; any other type (numbers, dates, arrays, JSON, composites,
//!   bytea) cannot hold a masked stand-in and is NULL.
//! - A column *computed* from a masked column is hidden whole: `****` for
//!   text, NULL included, and NULL for other types. The user shapes a
//!   computed value, so no style that shows part of it (`partial` of
//!   `'xxxxxxxx' || reverse(ssn)` would show the SSN's first digits, of
//!   `'a@' || replace(email, '@', '.')` its whole address) or gives a token
//!   for a value of the user's choosing (`hash` of `substr(ssn, 1, 0) ||
//!   '5'` is a dictionary for `substr(ssn, 1, 1)`) may apply, and whether it
//!   is NULL would answer a question (`nullif(substr(ssn, 1, 1), '1')`).
//! - A whole row of a table with masked columns counts as all of them.
//! - Every other text column goes through the detectors; other types pass.

use std::collections::BTreeSet;

use super::{Profile, Style, TokenKey, TokenScope};
use crate::catalog::{Bound, Catalog, Origin};

/// How one result column is masked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnMask {
    /// Not text, nothing masked: passed as is.
    Pass,
    /// Shows or derives from a masked column: the whole value gets this
    /// style; Hash tokens with the key of that table column.
    Rule(Style, TokenKey),
    /// Text computed from a masked column: `****` whatever the value, NULL
    /// included (see the module's documentation).
    Hidden,
    /// Text: the detectors look inside, after `skip` bytes of binary header (jsonb).
    Scan { skip: usize },
    /// Text that may quote values of earlier statements (MySQL's `SHOW
    /// WARNINGS`): what it quotes is redacted, then the detectors look inside.
    Quoted,
}

/// A result column as the server described it.
#[derive(Debug, Clone, Copy)]
pub struct ResultColumn<'a> {
    pub name: &'a str,
    pub table_oid: u32,
    pub attnum: i16,
    pub type_oid: u32,
    pub binary: bool,
}

/// Type OIDs whose values carry text the detectors can read: the bytes to
/// skip first, or `None`.
fn scannable(cat: &Catalog, type_oid: u32, binary: bool) -> Option<usize> {
    match (type_oid, binary) {
        (25 | 1043 | 1042 | 19 | 18 | 114 | 142 | 705, _) => Some(0),
        // jsonb: a version byte first in binary.
        (3802, false) => Some(0),
        (3802, true) => Some(1),
        // Arrays and records in text format are text too.
        (1009 | 1015 | 1014 | 199 | 3807 | 2249, false) => Some(0),
        (oid, _) if cat.is_text_type(oid) => Some(0),
        _ => None,
    }
}

/// The more concealing of two styles.
fn stricter(a: Option<Style>, b: Option<Style>) -> Option<Style> {
    match (a, b) {
        (Some(x), Some(y)) => Some(if y.concealment() > x.concealment() { y } else { x }),
        (x, None) => x,
        (None, y) => y,
    }
}

impl Profile {
    /// The column rules' style for a table column (by its real schema, table
    /// and column names); for a whole row, the most concealing of its
    /// columns'; for an origin that could not be followed, the most
    /// concealing style any rule has.
    pub fn origin_style(&self, cat: &Catalog, o: Origin) -> Option<Style> {
        if o == Origin::UNKNOWN {
            return self.columns.iter().map(|(_, s)| *s).fold(None, |a, s| stricter(a, Some(s)));
        }
        let rel = cat.relation(o.relation)?;
        let table = format!("{}.{}", rel.schema, rel.name);
        // A partition or inheritance child holds its parents' rows, and a
        // parent's rows include its children's: the rules of both apply to
        // its columns of the same name.
        let parents = || rel.ancestors.iter().chain(&rel.descendants).filter_map(|a| cat.relation(*a));
        if o.attnum == 0 {
            let own = rel.columns.iter().fold(None, |a, c| stricter(a, self.column_style(Some(&table), &c.name)));
            let own = parents().fold(own, |a, p| {
                let t = format!("{}.{}", p.schema, p.name);
                p.columns.iter().fold(a, |a, c| stricter(a, self.column_style(Some(&t), &c.name)))
            });
            if matches!(rel.kind, b'v' | b'm') {
                return cat
                    .column_origins(o.relation, 0)
                    .into_iter()
                    .fold(own, |a, b| stricter(a, self.origin_style(cat, b)));
            }
            return own;
        }
        let col = rel.columns.iter().find(|c| c.attnum == o.attnum)?;
        parents().fold(self.column_style(Some(&table), &col.name), |a, p| {
            stricter(a, self.column_style(Some(&format!("{}.{}", p.schema, p.name)), &col.name))
        })
    }

    /// The most concealing style among `origins`, and the origin it comes from.
    fn strongest(&self, cat: &Catalog, origins: &BTreeSet<Origin>) -> Option<(Style, Origin)> {
        let mut best: Option<(Style, Origin)> = None;
        for o in origins {
            if let Some(s) = self.origin_style(cat, *o)
                && best.is_none_or(|(b, _)| s.concealment() > b.concealment())
            {
                best = Some((s, *o));
            }
        }
        best
    }

    /// The Hash token key of a table column (its real names): a value shown
    /// as is and one computed from it share it; another column's do not.
    fn origin_key(&self, cat: &Catalog, o: Origin, name: &str) -> TokenKey {
        match cat.relation(o.relation) {
            Some(rel) => {
                let table = format!("{}.{}", rel.schema, rel.name);
                let column = rel.columns.iter().find(|c| c.attnum == o.attnum).map_or("", |c| c.name.as_str());
                self.token_key(TokenScope::Column { table: Some(&table), column })
            }
            None => self.token_key(TokenScope::Column { table: None, column: name }),
        }
    }

    /// The plan for a result: per column, from its identity when the server
    /// names the table column it shows, else from the statement's lineage
    /// (`bound`; `None` when the statement's rows cannot be traced, e.g. a
    /// function's result, in which case only identities and detectors apply).
    pub fn plan(&self, cat: &Catalog, bound: Option<&Bound>, cols: &[ResultColumn<'_>]) -> Vec<ColumnMask> {
        let empty = BTreeSet::new();
        cols.iter()
            .enumerate()
            .map(|(i, c)| {
                // The server names the table column a result column shows
                // only when the column is that column's stored value.
                let stored = c.table_oid != 0;
                let found = if stored {
                    let own = Origin { relation: c.table_oid, attnum: c.attnum };
                    let mut origins = cat.column_origins(c.table_oid, c.attnum);
                    origins.insert(own);
                    let known = cat.relation(c.table_oid).is_some();
                    // A table the catalog has not read yet: its rules by column name alone.
                    let by_name = if known { None } else { self.column_style(None, c.name).map(|s| (s, own)) };
                    // The statement's own account too, where it lines up: the
                    // server's identity must never make a column less masked.
                    let traced = bound.and_then(|b| b.aligned(i, cols.len())).and_then(|o| self.strongest(cat, o));
                    [self.strongest(cat, &origins), by_name, traced].into_iter().flatten().fold(
                        None,
                        |a: Option<(Style, Origin)>, b| match a {
                            Some(x) if x.0.concealment() >= b.0.concealment() => Some(x),
                            _ => Some(b),
                        },
                    )
                } else {
                    let origins = bound.map_or(&empty, |b| b.column(i, c.name, cols.len()));
                    self.strongest(cat, origins)
                };
                let found = found.map(|(s, o)| (s, self.origin_key(cat, o, c.name)));
                match (found, cat.is_text_type(c.type_oid)) {
                    (Some((s, key)), true) if stored || s == Style::Null => ColumnMask::Rule(s, key),
                    (Some(_), true) => ColumnMask::Hidden,
                    (Some((_, key)), false) => ColumnMask::Rule(Style::Null, key),
                    (None, _) => match scannable(cat, c.type_oid, c.binary) {
                        Some(skip) => ColumnMask::Scan { skip },
                        None => ColumnMask::Pass,
                    },
                }
            })
            .collect()
    }

    /// The most concealing style of the column rules that could apply to
    /// some column of `table` (a rule with no table part applies to every
    /// table): what a value computed from that table's columns gets when the
    /// adapter cannot tell which columns it reads (MySQL).
    pub fn table_style(&self, table: &str) -> Option<Style> {
        self.columns
            .iter()
            .filter(|(p, _)| p.applies_to_table(Some(table)))
            .fold(None, |a, (_, s)| stricter(a, Some(*s)))
    }

    /// The style per column of a `COPY … TO` of `width` columns (text or
    /// CSV: every value is text, so a style always fits). `stored`: the
    /// fields are the table's columns as stored (`COPY table TO`); else they
    /// are a query's and may be computed, so a masked one is hidden whole
    /// (`Redact`, which the caller also applies to NULL; see [`ColumnMask::Hidden`]).
    pub fn copy_plan(
        &self,
        cat: &Catalog,
        bound: &Bound,
        width: usize,
        stored: bool,
    ) -> Vec<Option<(Style, TokenKey)>> {
        (0..width)
            .map(|i| {
                let origins = if bound.expanded.len() == width {
                    bound.expanded.get(i)
                } else if bound.exact && bound.outputs.len() == width {
                    bound.outputs.get(i)
                } else {
                    Some(&bound.all)
                };
                origins.and_then(|o| self.strongest(cat, o)).map(|(s, o)| {
                    let s = if stored || s == Style::Null { s } else { Style::Redact };
                    (s, self.origin_key(cat, o, ""))
                })
            })
            .collect()
    }

    /// Why this profile refuses a statement, if it does: a result that is a
    /// whole row of a table with masked columns (`SELECT c FROM customers
    /// c`, `to_json(c)`: Gatehouse cannot mask inside composites or JSON
    /// built from rows), or, when the profile refuses predicates, filtering,
    /// joining, sorting or grouping on a masked column.
    pub fn refusal(&self, cat: &Catalog, bound: &Bound) -> Option<String> {
        let name = |o: &Origin| {
            cat.relation(o.relation).map_or_else(
                || "a column Gatehouse cannot follow".to_owned(),
                |r| match r.columns.iter().find(|c| c.attnum == o.attnum) {
                    Some(c) => format!("{}.{}.{}", r.schema, r.name, c.name),
                    None => format!("{}.{}", r.schema, r.name),
                },
            )
        };
        // The first masked origin of `set`, named.
        let masked = |set: &BTreeSet<Origin>| set.iter().find(|o| self.origin_style(cat, **o).is_some()).map(name);
        let p = &self.name;
        let whole: BTreeSet<Origin> = bound.all.iter().filter(|o| o.attnum == 0).copied().collect();
        if let Some(t) = masked(&whole) {
            return Some(format!(
                "it returns whole rows of {t}, which has masked columns (masking profile {p}); select the columns you need"
            ));
        }
        if let Some(c) = masked(&bound.stored) {
            return Some(format!(
                "it stores values computed from the masked column {c} (masking profile {p}) in a table, a view, a file, a setting, a sequence, a notification or a lock, where they would be read back unmasked"
            ));
        }
        if let Some(t) = masked(&bound.moved) {
            return Some(format!(
                "it renames, moves or detaches {t}, whose masking rules name it (masking profile {p})"
            ));
        }
        if !self.refuse_predicates {
            return None;
        }
        if let Some(c) = masked(&bound.predicates) {
            return Some(format!(
                "it filters, joins, sorts or groups on the masked column {c} (masking profile {p} refuses this: such a condition reveals the value a little at a time)"
            ));
        }
        masked(&bound.computed).map(|c| {
            format!(
                "it computes with the masked column {c} (masking profile {p} refuses this: the result would be hidden, so what it computes could only come back through errors or timing); select the column as it is"
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::tests::sample;
    use crate::mask::ProfileSpec;
    use crate::sql::TableRef;
    use crate::sql::lineage::of_sql;

    fn profile(refuse_predicates: bool) -> Profile {
        Profile::compile(&ProfileSpec {
            name: "pii".into(),
            columns: vec![("customers.email".into(), Style::Partial), ("hr.salaries.emp".into(), Style::Hash)],
            refuse_predicates,
            ..ProfileSpec::default()
        })
        .unwrap()
    }

    fn col(name: &str, table_oid: u32, attnum: i16, type_oid: u32) -> ResultColumn<'_> {
        ResultColumn { name, table_oid, attnum, type_oid, binary: false }
    }

    /// A plan as (style or "scan"/"pass") per column, keys left out.
    fn show(plan: &[ColumnMask]) -> Vec<String> {
        plan.iter()
            .map(|c| match c {
                ColumnMask::Rule(s, _) => format!("{s:?}"),
                ColumnMask::Hidden => "Hidden".into(),
                ColumnMask::Quoted => "Quoted".into(),
                ColumnMask::Scan { skip } => format!("scan {skip}"),
                ColumnMask::Pass => "pass".into(),
            })
            .collect()
    }

    fn bound(sql: &str) -> Bound {
        let cat = sample();
        cat.bind(&of_sql(sql).unwrap(), &[TableRef { schema: Some("public".into()), name: "customers".into() }])
    }

    #[test]
    fn identity_lineage_and_types() {
        let cat = sample();
        let p = profile(false);
        // By identity: the output name does not matter.
        let plan = p.plan(&cat, None, &[col("x", 16401, 2, 25), col("email", 16401, 1, 23), col("id", 16401, 1, 23)]);
        assert_eq!(show(&plan), ["Partial", "pass", "pass"]);
        // A view column shows its table's column.
        let via_view = p.plan(&cat, None, &[col("emp", 16403, 1, 25)]);
        assert_eq!(show(&via_view), ["Hash"]);
        // The view's column and its table's column share one token key.
        let direct = p.plan(&cat, None, &[col("emp", 16402, 1, 25)]);
        assert_eq!(via_view, direct);
        assert_ne!(
            via_view,
            p.plan(&cat, None, &[col("email", 16401, 2, 25)])
                .into_iter()
                .map(|c| match c {
                    ColumnMask::Rule(_, k) => ColumnMask::Rule(Style::Hash, k),
                    other => other,
                })
                .collect::<Vec<_>>()
        );
        // By lineage: computed text gets the style, anything else is NULL, unrelated text is scanned.
        let b = bound("SELECT replace(email, '@', ''), length(email), array_agg(email), 'x' AS email FROM customers");
        let cols =
            [col("replace", 0, 0, 25), col("length", 0, 0, 23), col("array_agg", 0, 0, 1009), col("email", 0, 0, 25)];
        assert_eq!(show(&p.plan(&cat, Some(&b), &cols)), ["Hidden", "Null", "Null", "scan 0"]);
        // A computed value never gets a style that shows part of it or a token
        // (the user shapes it): hash and partial columns alike are hidden whole.
        let b = bound("SELECT 'xxxxxxxx' || reverse(email), substr(emp, 1, 0) || '5' FROM customers, hr.salaries");
        let cols = [col("a", 0, 0, 25), col("b", 0, 0, 25)];
        assert_eq!(show(&p.plan(&cat, Some(&b), &cols)), ["Hidden", "Hidden"]);
        // A function's columns in FROM may have any name (`value`, `unnest`, an
        // XMLTABLE's COLUMNS): each is computed from the function's arguments.
        // And an ordered-set aggregate's value is one of those it orders.
        for sql in [
            "SELECT value FROM customers c, jsonb_each_text(jsonb_build_object('k', c.email))",
            "SELECT j.value FROM customers c, jsonb_each_text(jsonb_build_object('k', c.email)) j",
            "SELECT unnest FROM customers c, unnest(ARRAY[c.email])",
            "SELECT a FROM customers c, json_to_record(json_build_object('a', c.email)) AS r(a text)",
            "SELECT t.x FROM customers c, XMLTABLE('/a' PASSING xmlelement(name a, c.email) COLUMNS x text PATH '.') t",
            "SELECT mode() WITHIN GROUP (ORDER BY email) FROM customers",
            "SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY email DESC) FROM customers",
        ] {
            assert_eq!(show(&p.plan(&cat, Some(&bound(sql)), &[col("v", 0, 0, 25)])), ["Hidden"], "{sql}");
        }
        let b = bound("SELECT id, value FROM customers c, jsonb_each_text('{\"a\": \"b\"}')");
        assert_eq!(
            show(&p.plan(&cat, Some(&b), &[col("id", 16401, 1, 23), col("value", 0, 0, 25)])),
            ["pass", "scan 0"]
        );
        let whole = bound("SELECT key, value FROM customers c, json_each_text(row_to_json(c))");
        assert!(p.refusal(&cat, &whole).is_some_and(|w| w.contains("whole rows")), "{whole:?}");
        // A domain over citext counts as text.
        assert_eq!(show(&p.plan(&cat, None, &[col("e", 16401, 2, 20004)])), ["Partial"]);
        // A parent's column gets its partitions' rules, and a partition's its parent's (by name: attnums differ).
        assert_eq!(
            show(&p.plan(&cat, None, &[col("email", 16404, 1, 25), col("id", 16404, 2, 23)])),
            ["Partial", "pass"]
        );
        // ...and a rule on a partition masks the parent's column, whose rows include the partition's.
        let on_child = Profile::compile(&ProfileSpec {
            name: "child".into(),
            columns: vec![("customers_p1.email".into(), Style::Redact)],
            ..ProfileSpec::default()
        })
        .unwrap();
        assert_eq!(show(&on_child.plan(&cat, None, &[col("email", 16401, 2, 25)])), ["Redact"]);
    }

    #[test]
    fn refusals() {
        let cat = sample();
        let p = profile(true);
        assert!(
            p.refusal(&cat, &bound("SELECT c FROM customers c")).unwrap().contains("whole rows of public.customers")
        );
        assert!(p.refusal(&cat, &bound("SELECT row_to_json(c.*) FROM customers c")).is_some());
        assert!(p.refusal(&cat, &bound("SELECT count(c) FROM customers c")).is_none());
        assert!(
            p.refusal(&cat, &bound("SELECT id FROM customers WHERE email LIKE 'a%'"))
                .unwrap()
                .contains("public.customers.email")
        );
        assert!(p.refusal(&cat, &bound("SELECT id FROM customers ORDER BY email")).is_some());
        // A VALUES list sorts and counts rows like a SELECT.
        for sql in [
            "VALUES ((SELECT email FROM customers WHERE id = 1), 1), ('m', 2) ORDER BY 1",
            "VALUES ((SELECT email FROM customers WHERE id = 1), 1), ('m', 2) ORDER BY column1 DESC",
            "VALUES (1), (2), (3) LIMIT (SELECT ascii(email) - 96 FROM customers WHERE id = 1)",
            "VALUES (1), (2), (3) OFFSET (SELECT length(email) FROM customers WHERE id = 1)",
        ] {
            assert!(p.refusal(&cat, &bound(sql)).is_some_and(|w| w.contains("customers.email")), "{sql}");
        }
        assert_eq!(p.refusal(&cat, &bound("VALUES ((SELECT email FROM customers WHERE id = 1), 1) ORDER BY 2")), None);
        // Positions inside grouping sets and a parenthesised GROUP BY list are positions too.
        for sql in [
            "SELECT email, count(*) FROM customers GROUP BY ROLLUP (1)",
            "SELECT email, count(*) FROM customers GROUP BY CUBE (1)",
            "SELECT email, count(*) FROM customers GROUP BY GROUPING SETS ((1), ())",
            "SELECT id, email FROM customers GROUP BY GROUPING SETS ((1, 2))",
            "SELECT id, email FROM customers GROUP BY GROUPING SETS (ROLLUP (2))",
            "SELECT id, email FROM customers GROUP BY (1, 2)",
        ] {
            assert!(p.refusal(&cat, &bound(sql)).is_some_and(|w| w.contains("customers.email")), "{sql}");
        }
        assert!(p.refusal(&cat, &bound("SELECT id, email FROM customers GROUP BY ROLLUP (1), 2")).is_some());
        assert_eq!(p.refusal(&cat, &bound("SELECT id, count(*) FROM customers GROUP BY ROLLUP (1)")), None);
        assert!(p.refusal(&cat, &bound("SELECT email FROM customers WHERE id = 1 ORDER BY id")).is_none());
        assert!(profile(false).refusal(&cat, &bound("SELECT id FROM customers WHERE email LIKE 'a%'")).is_none());
        // Computing with a masked column: its result is hidden, only errors or timing would carry it.
        for sql in [
            "SELECT upper(email) FROM customers",
            "SELECT 1 / (ascii(email) - 49) FROM customers",
            "SELECT CASE WHEN email LIKE 'a%' THEN 1 / 0 END FROM customers",
            "SELECT id, email::int FROM customers",
            "SELECT max(email) FROM customers",
            "SELECT (SELECT lower(email) FROM customers LIMIT 1)",
            "SELECT x FROM (SELECT email || '' AS x FROM customers) s",
            "VALUES ((SELECT email FROM customers LIMIT 1) || 'x')",
            "WITH t AS (SELECT length(email) AS n FROM customers) SELECT n FROM t",
        ] {
            let why = p.refusal(&cat, &bound(sql)).unwrap_or_else(|| panic!("not refused: {sql}"));
            assert!(why.contains("computes with the masked column public.customers.email"), "{sql}: {why}");
            assert!(profile(false).refusal(&cat, &bound(sql)).is_none(), "allowed when predicates are: {sql}");
        }
        for sql in [
            "SELECT email, c.email, id + 1 FROM customers c",
            "SELECT count(email), count(*) FROM customers",
            "SELECT (SELECT email FROM customers LIMIT 1), ARRAY(SELECT email FROM customers)",
            "SELECT x FROM (SELECT email AS x FROM customers) s",
            "SELECT * FROM customers",
            "SELECT upper(amount::text) FROM hr.salaries",
        ] {
            assert_eq!(p.refusal(&cat, &bound(sql)), None, "{sql}");
        }
        // A position past a `*` names the column the catalog counts out (customers: id, email).
        for sql in [
            "SELECT * FROM customers ORDER BY 2",
            "TABLE customers ORDER BY 2 DESC",
            "SELECT id, * FROM customers ORDER BY 3",
            "SELECT c.* FROM customers c ORDER BY 2",
            "SELECT * FROM customers GROUP BY 1, 2",
            "SELECT DISTINCT ON (2) * FROM customers",
            "SELECT * FROM customers GROUP BY ROLLUP (1, 2)",
            "SELECT * FROM customers GROUP BY GROUPING SETS ((1, 2), ())",
            "SELECT id FROM (SELECT * FROM customers ORDER BY 2 LIMIT 1) s",
            // Not counted (a join's `*`, a subquery's, a set operation's): every column from the first `*` on.
            "SELECT * FROM customers c, hr.salaries s ORDER BY 1",
            "SELECT * FROM (SELECT id, email FROM customers) s ORDER BY 1",
            "SELECT * FROM customers UNION ALL SELECT * FROM customers ORDER BY 1",
        ] {
            let why = p.refusal(&cat, &bound(sql)).unwrap_or_else(|| panic!("not refused: {sql}"));
            assert!(why.contains("sorts or groups on the masked column public.customers.email"), "{sql}: {why}");
        }
        for sql in [
            "SELECT * FROM customers ORDER BY 1",
            "SELECT id, * FROM customers ORDER BY 2",
            "SELECT c.*, 1 FROM customers c ORDER BY 3",
            "SELECT * FROM customers ORDER BY 9",
        ] {
            assert_eq!(p.refusal(&cat, &bound(sql)), None, "{sql}");
        }
    }

    /// Values of a masked column stored where they are read back unmasked,
    /// and renames or moves of what the rules name: refused whatever the
    /// profile says about predicates.
    #[test]
    fn stored_values_and_moves() {
        let cat = sample();
        let p = profile(false);
        let stores = [
            "UPDATE orders SET customer_id = length(c.email) FROM customers c WHERE c.id = orders.id",
            "UPDATE customers SET id = ascii(email)",
            "UPDATE customers SET (id) = (SELECT ascii(email) FROM customers c2 LIMIT 1)",
            "INSERT INTO orders SELECT id, ascii(email) FROM customers",
            "INSERT INTO orders SELECT * FROM customers",
            "INSERT INTO orders VALUES (1, (SELECT ascii(email) FROM customers LIMIT 1))",
            "INSERT INTO customers (id) VALUES (1) ON CONFLICT (id) DO UPDATE SET id = ascii(customers.email)",
            "WITH x AS (INSERT INTO orders SELECT id, ascii(email) FROM customers RETURNING 1) SELECT * FROM x",
            "MERGE INTO orders o USING customers c ON o.id = c.id WHEN MATCHED THEN UPDATE SET customer_id = ascii(c.email)",
            "MERGE INTO orders o USING customers c ON o.id = c.id WHEN NOT MATCHED THEN INSERT VALUES (c.id, ascii(c.email))",
            "CREATE TABLE t AS SELECT lower(email) FROM customers",
            "CREATE MATERIALIZED VIEW t AS SELECT email FROM customers",
            "SELECT email INTO TEMP t FROM customers",
            "CREATE VIEW v AS SELECT 'x' || reverse(email) AS e FROM customers",
            "COPY (SELECT email FROM customers) TO '/tmp/x'",
            "COPY customers TO PROGRAM 'cat'",
            "PREPARE p AS INSERT INTO orders SELECT id, ascii(email) FROM customers",
            "EXPLAIN ANALYZE INSERT INTO orders SELECT id, ascii(email) FROM customers",
            "ALTER TABLE customers ADD COLUMN e2 text GENERATED ALWAYS AS (lower(email)) STORED",
            "ALTER TABLE customers ALTER COLUMN id TYPE int USING ascii(email)",
            // Built-ins that keep their arguments where they are read back.
            "SELECT set_config('application_name', email, false) FROM customers",
            "SELECT pg_catalog.set_config('app.x', upper(email), true) FROM customers",
            "SELECT pg_notify('c', email) FROM customers",
            "SELECT setval('s', ascii(email)) FROM customers",
            "SELECT pg_advisory_lock(hashtext(email)) FROM customers",
            "SELECT lo_from_bytea(0, convert_to(email, 'UTF8')) FROM customers",
            "SELECT id FROM customers WHERE set_config('app.x', email, false) IS NOT NULL",
            "SELECT (SELECT set_config('app.x', email, false) FROM customers LIMIT 1)",
            "SELECT setseed(ascii(email) / 256.0) FROM customers",
        ];
        for sql in stores {
            let why = p.refusal(&cat, &bound(sql)).unwrap_or_else(|| panic!("not refused: {sql}"));
            assert!(
                why.contains("stores values computed from the masked column public.customers.email"),
                "{sql}: {why}"
            );
        }
        // The same built-ins on other values are not stores of anything masked.
        for sql in [
            "SELECT set_config('application_name', 'x' || id, false) FROM customers",
            "SELECT pg_notify('c', id::text) FROM customers",
        ] {
            assert!(p.refusal(&cat, &bound(sql)).is_none(), "{sql}");
        }
        let moves = [
            "ALTER TABLE customers RENAME COLUMN email TO e",
            "ALTER TABLE customers RENAME TO c2",
            "ALTER TABLE customers SET SCHEMA hr",
            "ALTER SCHEMA public RENAME TO p2",
            "ALTER TABLE customers DETACH PARTITION customers_p1",
            "ALTER TABLE customers_p1 NO INHERIT customers",
            "ALTER TABLE customers INHERIT orders",
            "ALTER TABLE orders ATTACH PARTITION customers FOR VALUES IN (1)",
        ];
        for sql in moves {
            let why = p.refusal(&cat, &bound(sql)).unwrap_or_else(|| panic!("not refused: {sql}"));
            assert!(why.contains("renames, moves or detaches public.customers"), "{sql}: {why}");
        }
        let fine = [
            "UPDATE customers SET id = 2 WHERE id = 1",
            "INSERT INTO orders SELECT id, id FROM customers",
            "INSERT INTO customers VALUES (1, 'new@example.com')",
            "UPDATE customers SET email = 'new@example.com' WHERE id = 1",
            "CREATE TABLE t AS SELECT id FROM customers",
            "COPY (SELECT email FROM customers) TO STDOUT",
            "ALTER TABLE customers RENAME COLUMN id TO n",
            "ALTER TABLE orders RENAME TO o2",
            "ALTER SCHEMA scratch RENAME TO s2",
            "ALTER TABLE customers ADD COLUMN z int",
        ];
        for sql in fine {
            assert_eq!(p.refusal(&cat, &bound(sql)), None, "{sql}");
        }
    }
}
