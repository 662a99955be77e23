//! Whether an `UPDATE`/`DELETE`/`MERGE` condition can leave rows of its
//! target out. A condition restricts only if it depends on a column of the
//! target table: `WHERE 'true'`, `WHERE 1 IN (1)`, `WHERE (SELECT true)`,
//! `WHERE EXISTS (SELECT 1)` and `WHERE coalesce(true, false)` touch every
//! row whatever they evaluate to, and so does `WHERE id = 1 OR (SELECT
//! true)`: a disjunction restricts only if every branch does.
//!
//! A column written without a table name is the target's when the
//! statement reads no other table; otherwise it is ambiguous here and the
//! catalog pass decides (is it a column of the target and of no other table
//! read?). Without a catalog, ambiguous counts as not restricting: refusing
//! a statement that needed a WHERE is safer than letting one through.

use pg_query::protobuf as pb;
use pg_query::{Node, NodeEnum, NodeRef};

use super::children::children;
use super::kinds::constant_truth;

/// The answer for one condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Restricts {
    Yes,
    No,
    /// Depends on whether these unqualified columns are the target's.
    Maybe(Vec<String>),
}

impl Restricts {
    fn and(self, other: Restricts) -> Restricts {
        match (self, other) {
            (Restricts::Yes, _) | (_, Restricts::Yes) => Restricts::Yes,
            (Restricts::Maybe(mut a), Restricts::Maybe(b)) => {
                a.extend(b);
                Restricts::Maybe(a)
            }
            (m @ Restricts::Maybe(_), Restricts::No) | (Restricts::No, m @ Restricts::Maybe(_)) => m,
            (Restricts::No, Restricts::No) => Restricts::No,
        }
    }

    fn or(self, other: Restricts) -> Restricts {
        match (self, other) {
            (Restricts::No, _) | (_, Restricts::No) => Restricts::No,
            (Restricts::Yes, Restricts::Yes) => Restricts::Yes,
            (Restricts::Maybe(mut a), Restricts::Maybe(b)) => {
                a.extend(b);
                Restricts::Maybe(a)
            }
            (m @ Restricts::Maybe(_), Restricts::Yes) | (Restricts::Yes, m @ Restricts::Maybe(_)) => m,
        }
    }
}

/// The table a statement modifies, as the condition can name it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Target<'a> {
    /// The name a qualified column uses: the alias if given, else the table name.
    pub name: &'a str,
    /// Whether the statement reads other tables (FROM, USING, subqueries),
    /// so that an unqualified column may be theirs.
    pub others: bool,
}

impl<'a> Target<'a> {
    pub(super) fn of(relation: Option<&'a pb::RangeVar>, others: bool) -> Option<Self> {
        let r = relation?;
        let name = r.alias.as_ref().map_or(r.relname.as_str(), |a| a.aliasname.as_str());
        Some(Self { name, others })
    }
}

const MAX_DEPTH: usize = 200;

/// Whether `clause` restricts the rows of `target`. `None` (no clause) does not.
pub(super) fn restricts(target: Target<'_>, clause: Option<&Node>) -> Restricts {
    match clause {
        None => Restricts::No,
        Some(c) => condition(target, c, 0),
    }
}

fn condition(target: Target<'_>, node: &Node, depth: usize) -> Restricts {
    if depth > MAX_DEPTH {
        return Restricts::No;
    }
    match constant_truth(node) {
        Some(true) => return Restricts::No,
        // Constantly false or NULL: no row qualifies, which restricts.
        Some(false) => return Restricts::Yes,
        None => {}
    }
    match node.node.as_ref() {
        Some(NodeEnum::BoolExpr(b)) => match pb::BoolExprType::try_from(b.boolop) {
            Ok(pb::BoolExprType::AndExpr) => {
                b.args.iter().map(|a| condition(target, a, depth + 1)).fold(Restricts::No, Restricts::and)
            }
            Ok(pb::BoolExprType::OrExpr) => {
                let mut it = b.args.iter().map(|a| condition(target, a, depth + 1));
                let first = it.next().unwrap_or(Restricts::No);
                it.fold(first, Restricts::or)
            }
            Ok(pb::BoolExprType::NotExpr) => {
                b.args.iter().map(|a| condition(target, a, depth + 1)).fold(Restricts::No, Restricts::and)
            }
            _ => Restricts::No,
        },
        Some(NodeEnum::CurrentOfExpr(_)) => Restricts::Yes,
        Some(n) => {
            let mut deps = Deps::default();
            deps.walk(target, n.to_ref(), false, false, 0);
            if deps.target || (!deps.top.is_empty() && !target.others) {
                Restricts::Yes
            } else if deps.top.is_empty() && deps.inner.is_empty() {
                Restricts::No
            } else {
                let mut columns = deps.top;
                columns.extend(deps.inner);
                Restricts::Maybe(columns)
            }
        }
        None => Restricts::No,
    }
}

/// Column references found in an expression.
#[derive(Debug, Default)]
struct Deps {
    /// A column qualified with the target's name (not shadowed).
    target: bool,
    /// Unqualified column names outside any subquery with its own FROM.
    top: Vec<String>,
    /// Unqualified column names inside a subquery with its own FROM (may be its tables').
    inner: Vec<String>,
}

impl Deps {
    fn walk(&mut self, target: Target<'_>, node: NodeRef<'_>, shadowed: bool, inner: bool, depth: usize) {
        if depth > MAX_DEPTH {
            return;
        }
        match node {
            NodeRef::ColumnRef(c) => {
                let names: Vec<&str> = c
                    .fields
                    .iter()
                    .filter_map(|f| match &f.node {
                        Some(NodeEnum::String(s)) => Some(s.sval.as_str()),
                        _ => None,
                    })
                    .collect();
                let star = c.fields.iter().any(|f| matches!(f.node, Some(NodeEnum::AStar(_))));
                match (names.as_slice(), star) {
                    ([col], false) if inner => self.inner.push((*col).to_owned()),
                    ([col], false) => self.top.push((*col).to_owned()),
                    ([.., qualifier, _], false) | ([.., qualifier], true) if *qualifier == target.name && !shadowed => {
                        self.target = true;
                    }
                    _ => {}
                }
            }
            NodeRef::SelectStmt(s) => {
                // A subquery's own FROM items may shadow the target's name,
                // and its unqualified columns may be its own tables'.
                let inner_names = from_names(&s.from_clause);
                let shadow = shadowed || inner_names.contains(&target.name);
                let inner = inner || !s.from_clause.is_empty();
                for (_, child) in children(node) {
                    self.walk(target, child, shadow, inner, depth + 1);
                }
            }
            _ => {
                for (_, child) in children(node) {
                    self.walk(target, child, shadowed, inner, depth + 1);
                }
            }
        }
    }
}

/// The names FROM items are known by (aliases, else table names).
fn from_names(from: &[Node]) -> Vec<&str> {
    let mut out = Vec::new();
    for item in from {
        collect_from_name(item.node.as_ref(), &mut out, 0);
    }
    out
}

fn collect_from_name<'a>(node: Option<&'a NodeEnum>, out: &mut Vec<&'a str>, depth: usize) {
    if depth > MAX_DEPTH {
        return;
    }
    match node {
        Some(NodeEnum::RangeVar(r)) => {
            out.push(r.alias.as_ref().map_or(r.relname.as_str(), |a| a.aliasname.as_str()));
        }
        Some(NodeEnum::RangeSubselect(s)) => {
            if let Some(a) = &s.alias {
                out.push(a.aliasname.as_str());
            }
        }
        Some(NodeEnum::RangeFunction(f)) => {
            if let Some(a) = &f.alias {
                out.push(a.aliasname.as_str());
            }
        }
        Some(NodeEnum::JoinExpr(j)) => {
            if let Some(a) = &j.alias {
                out.push(a.aliasname.as_str());
            }
            collect_from_name(j.larg.as_ref().and_then(|n| n.node.as_ref()), out, depth + 1);
            collect_from_name(j.rarg.as_ref().and_then(|n| n.node.as_ref()), out, depth + 1);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(sql: &str) -> Restricts {
        let parsed = pg_query::parse(sql, pg_query::ParserOptions::DEFAULT).unwrap();
        let stmt = parsed.protobuf.stmts[0].stmt.as_ref().unwrap().node.as_ref().unwrap();
        match stmt {
            NodeEnum::DeleteStmt(d) => {
                let t = Target::of(d.relation.as_ref(), !d.using_clause.is_empty()).unwrap();
                restricts(t, d.where_clause.as_deref())
            }
            NodeEnum::UpdateStmt(u) => {
                let t = Target::of(u.relation.as_ref(), !u.from_clause.is_empty()).unwrap();
                restricts(t, u.where_clause.as_deref())
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn conditions_that_touch_every_row() {
        for clause in [
            "'true'",
            "1 = 1.0",
            "1 IN (1)",
            "2 BETWEEN 1 AND 3",
            "1 IS DISTINCT FROM 2",
            "(SELECT true)",
            "coalesce(true, false)",
            "EXISTS (SELECT 1)",
            "EXISTS (SELECT 1 FROM u)",
            "id = 1 OR (SELECT true)",
            "now() > '2000-01-01'",
            "random() < 2",
        ] {
            assert_eq!(check(&format!("DELETE FROM t WHERE {clause}")), Restricts::No, "{clause}");
        }
    }

    #[test]
    fn conditions_on_the_target() {
        for clause in [
            "id = 1",
            "t.id = 1",
            "id = 1 AND (SELECT true)",
            "NOT (id = 1)",
            "id IN (SELECT tid FROM u)",
            "EXISTS (SELECT 1 FROM u WHERE u.tid = t.id)",
            "false",
            "id = 1 OR t.x > 2",
        ] {
            assert_eq!(check(&format!("DELETE FROM t WHERE {clause}")), Restricts::Yes, "{clause}");
        }
        assert_eq!(check("DELETE FROM t AS a WHERE a.id = 1"), Restricts::Yes);
        // The alias hides the table's name.
        assert_eq!(check("DELETE FROM t AS a WHERE t.id = 1"), Restricts::No);
        // A subquery's own `t` shadows the target.
        assert_eq!(check("DELETE FROM t WHERE EXISTS (SELECT 1 FROM u AS t WHERE t.id = 1)"), Restricts::No);
    }

    #[test]
    fn other_tables_make_bare_columns_ambiguous() {
        assert_eq!(check("DELETE FROM t USING u WHERE flag"), Restricts::Maybe(vec!["flag".into()]));
        assert_eq!(check("DELETE FROM t USING u WHERE t.id = u.id"), Restricts::Yes);
        assert_eq!(check("UPDATE t SET x = 1 FROM u WHERE u.x = 1"), Restricts::No);
        assert_eq!(
            check("DELETE FROM t WHERE EXISTS (SELECT 1 FROM u WHERE tid = id)"),
            Restricts::Maybe(vec!["tid".into(), "id".into()])
        );
    }
}
