//! What a MySQL statement compares: the column names it filters, joins,
//! sorts or groups on, or whose values decide how many rows come out or what
//! a count says. A masking profile that refuses predicates on masked columns
//! (`masked_predicates = "refuse"`) checks these names against its column
//! rules (`protocol::mysql::masking::predicate_refusal`).
//!
//! There is no catalog on this path, so this works on names and errs
//! towards "compared": every name outside a select list counts (WHERE, ON,
//! USING, NATURAL, GROUP BY, HAVING, ORDER BY, LIMIT, window definitions, a
//! subquery in any of those, select lists included), and in a select list
//! the arguments of an aggregate with DISTINCT, of `COUNT` other than a bare
//! column, `GROUP_CONCAT … ORDER BY`, `OVER (…)`, every column of a DISTINCT
//! or of a UNION / INTERSECT / EXCEPT that is not UNION ALL, and items named
//! by position or alias in GROUP BY, HAVING or ORDER BY. Aliases are kept
//! with the names their expressions read, so a compared alias (a derived
//! table's column) compares what it reads; a name MySQL gives an unnamed
//! expression column (`CONCAT(ssn)`) also counts as its words.

use std::collections::BTreeSet;
use std::ops::ControlFlow;

use sqlparser::ast::{
    self, Distinct, DuplicateTreatment, Expr, FunctionArg, FunctionArgExpr, FunctionArgumentClause, FunctionArguments,
    GroupByExpr, InTarget, JoinConstraint, JoinOperator, OrderByKind, Query, SelectItem, SetExpr, SetOperator,
    SetQuantifier, TableFactor, Value, VisitMut, VisitorMut, WindowType,
};

/// The names a statement compares (see the module's documentation).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Compared {
    /// Lowercased names, and `*` for a wildcard in a comparing position.
    pub names: BTreeSet<String>,
    /// Result column aliases (select items, derived tables' and CTEs' column
    /// lists), each with the names its expression reads.
    pub aliases: Vec<(String, BTreeSet<String>)>,
    /// The statement stores values where masking does not follow them: a
    /// user variable (`SET @v = …`, `@v := …`, `SELECT … INTO @v`) or a file
    /// (`INTO OUTFILE`); a later `SELECT @v` reads no table.
    pub stores: bool,
    /// `SHOW WARNINGS` / `SHOW ERRORS` (`COUNT(*)` aside): messages that can
    /// quote values an earlier statement read.
    pub diagnostics: bool,
    /// Names whose values the statement stores in a table or a view's
    /// definition (INSERT's rows, UPDATE's and ON DUPLICATE KEY UPDATE's
    /// values, `CREATE TABLE … AS`, `CREATE`/`ALTER VIEW`, `ALTER TABLE`
    /// expressions), lowercased, `*` for a wildcard: read back later, they
    /// would not carry the masking of the column they came from.
    pub stored: BTreeSet<String>,
    /// The statement renames a table or a column (`RENAME TABLE`, `ALTER
    /// TABLE … RENAME`, `CHANGE` to another name): masking rules name them.
    pub moves: bool,
    /// Names of the common table expressions the statement defines
    /// (lowercased): the server names them as a result column's table, but
    /// what they hold is the user's query, as a derived table's is.
    pub ctes: BTreeSet<String>,
    /// Names a select list item computes with rather than passes on as it
    /// is (anything but a column, a subquery or `COUNT(column)`): its value
    /// is hidden anyway, so what it computes could only come back through
    /// errors (`Subquery returns more than 1 row`) or timing.
    pub computed: BTreeSet<String>,
}

/// How deep subqueries are followed (sqlparser's own recursion limit is 50).
const MAX_DEPTH: usize = 64;

/// What `stmt` compares.
pub fn of(stmt: &ast::Statement) -> Compared {
    let mut c = Compared::default();
    let _ = ast::visit_expressions(stmt, |e| {
        if matches!(e, Expr::BinaryOp { op: ast::BinaryOperator::Assignment, .. }) {
            c.stores = true;
        }
        ControlFlow::<()>::Continue(())
    });
    if let ast::Statement::ShowVariable { variable } = stmt
        && let [first, ..] = variable.as_slice()
    {
        c.diagnostics = ["warnings", "errors"].iter().any(|w| first.value.eq_ignore_ascii_case(w));
    }
    if let ast::Statement::Set(set) = stmt {
        let user = |v: &ast::ObjectName| {
            let raw = v.to_string();
            raw.starts_with('@') && !raw.starts_with("@@")
        };
        c.stores |= match set {
            ast::Set::SingleAssignment { variable, .. } => user(variable),
            ast::Set::MultipleAssignments { assignments } => assignments.iter().any(|a| user(&a.name)),
            _ => false,
        };
        // A server variable set from a query keeps what the query read:
        // `SET SESSION sql_select_limit = (SELECT …)`, read back by `SELECT @@sql_select_limit`.
        let _ = ast::visit_expressions(stmt, |e| {
            if holds_query(e) {
                c.stores = true;
            }
            ControlFlow::<()>::Continue(())
        });
    }
    stored(stmt, &mut c);
    let mut tree = stmt.clone();
    scan(&mut tree, &mut c, 0);
    c
}

/// What a statement stores, and whether it renames (see [`Compared::stored`]).
/// Whole clauses count (a source query's WHERE too): by name, towards refusing.
fn stored(stmt: &ast::Statement, c: &mut Compared) {
    use ast::AlterTableOperation as Op;
    let names = &mut c.stored;
    match stmt {
        ast::Statement::Insert(i) => {
            if let Some(src) = &i.source {
                names_in_node_ref(src.as_ref(), names);
            }
            for a in &i.assignments {
                names_in(&a.value, names);
            }
            if let Some(on) = &i.on {
                names_in_node_ref(on, names);
            }
        }
        ast::Statement::Update(u) => {
            for a in &u.assignments {
                names_in(&a.value, names);
            }
        }
        ast::Statement::CreateTable(t) => names_in_node_ref(t, names),
        ast::Statement::CreateView(v) => names_in_node_ref(v.query.as_ref(), names),
        ast::Statement::AlterView(v) => names_in_node_ref(&v.operation, names),
        ast::Statement::AlterTable(a) => {
            names_in_node_ref(&a.operations, names);
            c.moves = a.operations.iter().any(|op| match op {
                Op::RenameTable { .. } | Op::RenameColumn { .. } => true,
                Op::ChangeColumn { old_name, new_name, .. } => !old_name.value.eq_ignore_ascii_case(&new_name.value),
                _ => false,
            });
        }
        ast::Statement::RenameTable(_) => c.moves = true,
        _ => {}
    }
    // A call outside the side-effect-free built-ins keeps or hands over its
    // arguments where masking does not follow them: `LAST_INSERT_ID(expr)`
    // (read back by `LAST_INSERT_ID()` and the OK packet), `GET_LOCK(name, …)`
    // (lock names are listed and probed by `IS_USED_LOCK`), a stored function
    // (which may write them anywhere).
    let _ = ast::visit_expressions(stmt, |e| {
        if let Expr::Function(f) = e
            && super::keeps_arguments(&f.name.to_string().to_ascii_lowercase())
        {
            for a in arguments(f) {
                names_in(a, names);
            }
        }
        ControlFlow::<()>::Continue(())
    });
}

/// The expressions a call passes as its arguments (positional or named).
fn arguments(f: &ast::Function) -> impl Iterator<Item = &Expr> {
    let list = match &f.args {
        FunctionArguments::List(l) => l.args.as_slice(),
        _ => &[],
    };
    list.iter().filter_map(|a| match a {
        FunctionArg::Unnamed(FunctionArgExpr::Expr(e))
        | FunctionArg::Named { arg: FunctionArgExpr::Expr(e), .. }
        | FunctionArg::ExprNamed { arg: FunctionArgExpr::Expr(e), .. } => Some(e),
        _ => None,
    })
}

/// Every name in any part of a tree (its expressions, subqueries included),
/// and `*` for a select list's wildcard.
fn names_in_node_ref<N: ast::Visit>(node: &N, names: &mut BTreeSet<String>) {
    struct All<'a>(&'a mut BTreeSet<String>);
    impl ast::Visitor for All<'_> {
        type Break = ();
        fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
            collect(e, self.0);
            ControlFlow::Continue(())
        }
        fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
            let mut items = BTreeSet::new();
            projection_names(q, &mut items);
            if items.contains("*") {
                self.0.insert("*".into());
            }
            ControlFlow::Continue(())
        }
    }
    let _ = node.visit(&mut All(names));
}

/// Scans a statement or query: its select lists are taken out (values,
/// looked at for aggregates and subqueries only), and every name left in
/// the tree is in a comparing position.
fn scan<N: VisitMut>(node: &mut N, c: &mut Compared, depth: usize) {
    if depth > MAX_DEPTH {
        c.names.insert("*".into());
        return;
    }
    let mut strip = Strip { in_expr: 0, stash: Vec::new(), c };
    let _ = node.visit(&mut strip);
    let stash = std::mem::take(&mut strip.stash);
    names_in_node(node, c);
    for (item, compared) in stash {
        let expr = match &item {
            SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => e,
            SelectItem::ExprWithAliases { expr: e, .. } => e,
            SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..) => {
                if compared {
                    c.names.insert("*".into());
                }
                continue;
            }
        };
        if compared {
            names_in(expr, &mut c.names);
        }
        if !passes_on(expr) {
            names_in(expr, &mut c.computed);
        }
        value(expr, c, depth);
    }
}

/// Whether a select list item passes a value on as it is: a column, a
/// subquery (whose own select list is scanned where it is), `COUNT(column)`.
fn passes_on(expr: &Expr) -> bool {
    match expr {
        Expr::Identifier(_) | Expr::CompoundIdentifier(_) | Expr::Subquery(_) => true,
        Expr::Nested(inner) => passes_on(inner),
        Expr::Function(f) => {
            let count =
                f.name.0.last().and_then(|p| p.as_ident()).is_some_and(|i| i.value.eq_ignore_ascii_case("count"));
            count
                && f.filter.is_none()
                && f.over.is_none()
                && matches!(&f.args, FunctionArguments::List(l)
                    if l.duplicate_treatment.is_none()
                        && l.args.iter().all(|a| matches!(a,
                            FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::Identifier(_) | Expr::CompoundIdentifier(_)))
                            | FunctionArg::Unnamed(FunctionArgExpr::Wildcard))))
        }
        _ => false,
    }
}

/// A select list item's expression: what inside it compares. Only the
/// item's own level is looked at here; each subquery is scanned once, as a
/// whole, for what it holds (looking into nested subqueries from every level
/// would cost 2^depth).
fn value(expr: &Expr, c: &mut Compared, depth: usize) {
    struct Level<'a> {
        queries: usize,
        found: Vec<(Query, bool)>,
        names: &'a mut BTreeSet<String>,
    }
    impl ast::Visitor for Level<'_> {
        type Break = ();
        fn pre_visit_query(&mut self, _: &Query) -> ControlFlow<()> {
            self.queries += 1;
            ControlFlow::Continue(())
        }
        fn post_visit_query(&mut self, _: &Query) -> ControlFlow<()> {
            self.queries = self.queries.saturating_sub(1);
            ControlFlow::Continue(())
        }
        fn pre_visit_expr(&mut self, x: &Expr) -> ControlFlow<()> {
            if self.queries > 0 {
                return ControlFlow::Continue(());
            }
            match x {
                Expr::Function(f) => function(f, self.names),
                // A scalar subquery's select list is a value; its other clauses compare.
                Expr::Subquery(q) => self.found.push(((**q).clone(), false)),
                // EXISTS / IN (subquery) compare what the subquery returns.
                Expr::Exists { subquery, .. } | Expr::In { target: InTarget::Subquery(subquery), .. } => {
                    self.found.push(((**subquery).clone(), true));
                }
                _ => {}
            }
            ControlFlow::Continue(())
        }
    }
    let mut level = Level { queries: 0, found: Vec::new(), names: &mut c.names };
    let _ = ast::Visit::visit(expr, &mut level);
    let found = level.found;
    for (mut q, compared) in found {
        if compared {
            projection_names(&q, &mut c.names);
        }
        scan(&mut q, c, depth + 1);
    }
}

/// An aggregate's DISTINCT, `COUNT(x)` of anything but a bare column (it
/// counts the x that are not NULL), its ORDER BY and FILTER, and a window.
fn function(f: &ast::Function, names: &mut BTreeSet<String>) {
    let counts = f.name.0.last().and_then(|p| p.as_ident()).is_some_and(|i| i.value.eq_ignore_ascii_case("count"));
    if let FunctionArguments::List(l) = &f.args {
        let distinct = matches!(l.duplicate_treatment, Some(DuplicateTreatment::Distinct));
        for e in arguments(f) {
            let bare = matches!(e, Expr::Identifier(_) | Expr::CompoundIdentifier(_));
            if distinct || (counts && !bare) {
                names_in(e, names);
            }
        }
        for clause in &l.clauses {
            if let FunctionArgumentClause::OrderBy(list) = clause {
                for o in list {
                    names_in(&o.expr, names);
                }
            }
        }
    }
    for o in &f.within_group {
        names_in(&o.expr, names);
    }
    if let Some(filter) = &f.filter {
        names_in(filter, names);
    }
    if let Some(WindowType::WindowSpec(spec)) = &f.over {
        for e in &spec.partition_by {
            names_in(e, names);
        }
        for o in &spec.order_by {
            names_in(&o.expr, names);
        }
    }
}

/// An expression with a query of its own.
fn holds_query(e: &Expr) -> bool {
    matches!(e, Expr::Subquery(_) | Expr::Exists { .. } | Expr::In { target: InTarget::Subquery(_), .. })
}

/// Takes the select lists out of the queries that are not inside an
/// expression (the statement's, derived tables', CTEs'), noting which items
/// compare; a subquery inside a WHERE, ON, HAVING… keeps its select list,
/// which that clause compares.
struct Strip<'a> {
    in_expr: usize,
    stash: Vec<(SelectItem, bool)>,
    c: &'a mut Compared,
}

impl VisitorMut for Strip<'_> {
    type Break = ();

    fn pre_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
        if holds_query(expr) {
            self.in_expr += 1;
        }
        ControlFlow::Continue(())
    }

    fn post_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
        if holds_query(expr) {
            self.in_expr = self.in_expr.saturating_sub(1);
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<()> {
        // `(SELECT …) AS d(a, b)`: each column name reads what the select list reads.
        if let TableFactor::Derived { subquery, alias: Some(alias), .. } = factor
            && !alias.columns.is_empty()
        {
            let mut reads = BTreeSet::new();
            projection_names(subquery, &mut reads);
            for col in &alias.columns {
                self.c.aliases.push((col.name.value.to_lowercase(), reads.clone()));
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_query(&mut self, q: &mut Query) -> ControlFlow<()> {
        if let Some(with) = &q.with {
            for cte in &with.cte_tables {
                self.c.ctes.insert(cte.alias.name.value.to_lowercase());
                let mut reads = BTreeSet::new();
                projection_names(&cte.query, &mut reads);
                for col in &cte.alias.columns {
                    self.c.aliases.push((col.name.value.to_lowercase(), reads.clone()));
                }
            }
        }
        if self.in_expr > 0 {
            return ControlFlow::Continue(());
        }
        let order = order_of(q);
        self.set(&mut q.body, false, &order);
        ControlFlow::Continue(())
    }
}

impl Strip<'_> {
    fn set(&mut self, body: &mut SetExpr, compared: bool, order: &[Expr]) {
        match body {
            SetExpr::Select(sel) => self.select(sel, compared, order),
            SetExpr::SetOperation { op, set_quantifier, left, right } => {
                let all = matches!(set_quantifier, SetQuantifier::All);
                let compares = compared || !(matches!(op, SetOperator::Union) && all);
                self.set(left, compares, order);
                self.set(right, compares, &[]);
            }
            SetExpr::Query(q) => {
                let order = [order, &order_of(q)[..]].concat();
                self.set(&mut q.body, compared, &order);
            }
            _ => {}
        }
    }

    fn select(&mut self, sel: &mut ast::Select, compared: bool, order: &[Expr]) {
        if sel.into.is_some() {
            self.c.stores = true;
        }
        let items = std::mem::take(&mut sel.projection);
        let distinct = matches!(sel.distinct, Some(Distinct::Distinct));
        let mut flags = vec![compared || distinct; items.len()];
        let aliases: Vec<Option<String>> = items
            .iter()
            .map(|i| match i {
                SelectItem::ExprWithAlias { alias, .. } => Some(alias.value.to_lowercase()),
                SelectItem::UnnamedExpr(Expr::Identifier(id)) => Some(id.value.to_lowercase()),
                SelectItem::UnnamedExpr(Expr::CompoundIdentifier(parts)) => {
                    parts.last().map(|p| p.value.to_lowercase())
                }
                _ => None,
            })
            .collect();
        for (item, alias) in items.iter().zip(&aliases) {
            if let (SelectItem::ExprWithAlias { expr, .. }, Some(a)) = (item, alias) {
                let mut reads = BTreeSet::new();
                names_in(expr, &mut reads);
                self.c.aliases.push((a.clone(), reads));
            }
        }
        // Items named by position or alias where rows are sorted, grouped or filtered.
        // A position at or past a `*` may be any column from the first `*` on
        // (how many columns a `*` stands for is not known here).
        let first_star =
            items.iter().position(|i| matches!(i, SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..)));
        // Marked once (a text may hold thousands of positions over thousands of items).
        let mut past_star_marked = false;
        let mut mark = |e: &Expr| match e {
            Expr::Value(v) => {
                let k = match &v.value {
                    Value::Number(n, _) => n.parse::<usize>().ok().and_then(|k| k.checked_sub(1)),
                    _ => None,
                };
                match (k, first_star) {
                    (Some(k), Some(s)) if s <= k => {
                        if !std::mem::replace(&mut past_star_marked, true) {
                            flags.iter_mut().skip(s).for_each(|f| *f = true);
                        }
                    }
                    (Some(k), _) => {
                        if let Some(f) = flags.get_mut(k) {
                            *f = true;
                        }
                    }
                    (None, _) => {}
                }
            }
            Expr::Wildcard(_) => flags.iter_mut().for_each(|f| *f = true),
            other => {
                let mut used = BTreeSet::new();
                names_in(other, &mut used);
                for (f, a) in flags.iter_mut().zip(&aliases) {
                    if a.as_ref().is_some_and(|a| used.contains(a)) {
                        *f = true;
                    }
                }
            }
        };
        order.iter().for_each(&mut mark);
        match &sel.group_by {
            GroupByExpr::Expressions(list, _) => list.iter().for_each(&mut mark),
            GroupByExpr::All(_) => mark(&wildcard()),
        }
        if let Some(h) = &sel.having {
            mark(h);
        }
        if let Some(q) = &sel.qualify {
            mark(q);
        }
        for twj in &sel.from {
            for j in &twj.joins {
                let constraint = match &j.join_operator {
                    JoinOperator::Join(c)
                    | JoinOperator::Inner(c)
                    | JoinOperator::Left(c)
                    | JoinOperator::LeftOuter(c)
                    | JoinOperator::Right(c)
                    | JoinOperator::RightOuter(c)
                    | JoinOperator::FullOuter(c)
                    | JoinOperator::CrossJoin(c)
                    | JoinOperator::Semi(c)
                    | JoinOperator::LeftSemi(c)
                    | JoinOperator::RightSemi(c)
                    | JoinOperator::Anti(c)
                    | JoinOperator::LeftAnti(c)
                    | JoinOperator::RightAnti(c)
                    | JoinOperator::StraightJoin(c) => Some(c),
                    JoinOperator::AsOf { constraint, .. } => Some(constraint),
                    _ => None,
                };
                match constraint {
                    Some(JoinConstraint::Using(cols) | JoinConstraint::UsingAlias(cols, _)) => {
                        for name in cols {
                            if let Some(last) = name.0.last().and_then(|p| p.as_ident()) {
                                insert_name(&last.value, &mut self.c.names);
                            }
                        }
                    }
                    // The joined columns are not named: every column of both sides may be one.
                    Some(JoinConstraint::Natural) => {
                        self.c.names.insert("*".into());
                    }
                    _ => {}
                }
            }
        }
        self.stash.extend(items.into_iter().zip(flags));
    }
}

/// What a query's ORDER BY sorts by (`ORDER BY ALL`: every result column, as `*`).
fn order_of(q: &Query) -> Vec<Expr> {
    match q.order_by.as_ref().map(|o| &o.kind) {
        Some(OrderByKind::Expressions(list)) => list.iter().map(|o| o.expr.clone()).collect(),
        Some(OrderByKind::All(_)) => vec![wildcard()],
        None => Vec::new(),
    }
}

/// A `*`, for "every result column".
fn wildcard() -> Expr {
    Expr::Wildcard(ast::helpers::attached_token::AttachedToken::empty())
}

/// The names the select lists of `q`'s body read (all of them).
fn projection_names(q: &Query, names: &mut BTreeSet<String>) {
    fn set(body: &SetExpr, names: &mut BTreeSet<String>) {
        match body {
            SetExpr::Select(sel) => {
                for item in &sel.projection {
                    match item {
                        SelectItem::UnnamedExpr(e)
                        | SelectItem::ExprWithAlias { expr: e, .. }
                        | SelectItem::ExprWithAliases { expr: e, .. } => names_in(e, names),
                        SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..) => {
                            names.insert("*".into());
                        }
                    }
                }
            }
            SetExpr::SetOperation { left, right, .. } => {
                set(left, names);
                set(right, names);
            }
            SetExpr::Query(q) => set(&q.body, names),
            // `TABLE t`: every column.
            SetExpr::Table(_) => {
                names.insert("*".into());
            }
            _ => {}
        }
    }
    set(&q.body, names);
}

/// Every name in what is left of a statement (its comparing positions).
fn names_in_node<N: VisitMut>(node: &mut N, c: &mut Compared) {
    let mut names = std::mem::take(&mut c.names);
    let _ = ast::visit_expressions_mut(node, |e| {
        collect(e, &mut names);
        ControlFlow::<()>::Continue(())
    });
    c.names = names;
}

/// Every name in an expression (subqueries included).
fn names_in(expr: &Expr, names: &mut BTreeSet<String>) {
    let _ = ast::visit_expressions(expr, |e| {
        collect(e, names);
        ControlFlow::<()>::Continue(())
    });
}

fn collect(e: &Expr, names: &mut BTreeSet<String>) {
    match e {
        Expr::Identifier(id) => insert_name(&id.value, names),
        Expr::CompoundIdentifier(parts) => {
            if let Some(last) = parts.last() {
                insert_name(&last.value, names);
            }
        }
        Expr::Wildcard(_) | Expr::QualifiedWildcard(..) => {
            names.insert("*".into());
        }
        // `MATCH (col, …) AGAINST (…)` names its columns outside any expression.
        Expr::MatchAgainst { columns, .. } => {
            for c in columns {
                if let Some(last) = c.0.last().and_then(|p| p.as_ident()) {
                    insert_name(&last.value, names);
                }
            }
        }
        _ => {}
    }
}

/// A name, lowercased; a name that is not one word (MySQL names an unnamed
/// expression column by its text, `CONCAT(ssn)`) also counts as its words.
fn insert_name(name: &str, names: &mut BTreeSet<String>) {
    let lower = name.to_lowercase();
    if !lower.chars().all(|ch| ch.is_alphanumeric() || ch == '_' || ch == '$') {
        for word in lower.split(|ch: char| !(ch.is_alphanumeric() || ch == '_' || ch == '$')) {
            if !word.is_empty() {
                names.insert(word.to_owned());
            }
        }
    }
    names.insert(lower);
}

#[cfg(test)]
mod tests {
    use sqlparser::dialect::MySqlDialect;
    use sqlparser::parser::Parser;

    use super::*;

    fn compared(sql: &str) -> Compared {
        let parsed = Parser::parse_sql(&MySqlDialect {}, sql).unwrap();
        of(parsed.first().unwrap())
    }

    /// The names that compare, with aliases followed.
    fn closure(c: &Compared) -> BTreeSet<String> {
        let mut s = c.names.clone();
        for _ in 0..=c.aliases.len() {
            for (a, reads) in &c.aliases {
                if s.contains(a) {
                    s.extend(reads.iter().cloned());
                }
            }
        }
        s
    }

    /// Subqueries nested in select lists are scanned once each: a chain of
    /// 40 took 2^40 scans before.
    #[test]
    fn nested_subqueries_cost_linear_time() {
        // As deep as the grammar's recursion limit lets a text go.
        let mut sql = String::from("SELECT ssn FROM customers");
        let mut levels = 0;
        loop {
            let deeper = format!("SELECT ({sql} LIMIT 1) AS x");
            if Parser::parse_sql(&MySqlDialect {}, &deeper).is_err() {
                break;
            }
            sql = deeper;
            levels += 1;
        }
        assert!(levels >= 15, "{levels} levels");
        let started = std::time::Instant::now();
        let c = compared(&sql);
        assert!(!c.names.contains("ssn"), "{c:?}");
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "{:?}", started.elapsed());
    }

    #[test]
    fn computed_select_items() {
        for (sql, name) in [
            ("SELECT UPPER(card) FROM customers", "card"),
            ("SELECT IF(card LIKE '4%', (SELECT 1 UNION SELECT 2), 1) FROM customers", "card"),
            ("SELECT id, card + 0 FROM customers", "card"),
            ("SELECT COUNT(DISTINCT card) FROM customers", "card"),
            ("SELECT UPPER(x) FROM (SELECT card AS x FROM customers) d", "x"),
            ("SELECT (SELECT LOWER(card) FROM customers LIMIT 1)", "card"),
        ] {
            assert!(compared(sql).computed.contains(name), "{sql}: {:?}", compared(sql));
        }
        for sql in [
            "SELECT card, c.card, (card) FROM customers c",
            "SELECT COUNT(card), COUNT(*) FROM customers",
            "SELECT (SELECT card FROM customers LIMIT 1)",
            "SELECT x FROM (SELECT card AS x FROM customers) d",
            "SELECT id + 1 FROM customers",
        ] {
            assert!(!compared(sql).computed.contains("card"), "{sql}: {:?}", compared(sql));
        }
    }

    #[test]
    fn values_stored_in_tables_and_renames() {
        for (sql, names) in [
            ("INSERT INTO notes (body) SELECT card FROM customers", &["card"][..]),
            ("INSERT INTO notes SELECT * FROM customers", &["*"]),
            ("INSERT INTO notes (body) VALUES ((SELECT REVERSE(card) FROM customers LIMIT 1))", &["card"]),
            ("REPLACE INTO notes SET body = (SELECT card FROM customers LIMIT 1)", &["card"]),
            ("INSERT INTO customers (id) VALUES (2) ON DUPLICATE KEY UPDATE name = card", &["card"]),
            ("UPDATE customers SET name = CONCAT('x', card) WHERE id = 2", &["card"]),
            ("UPDATE customers c JOIN orders o ON o.id = c.id SET o.note = c.card", &["card"]),
            ("CREATE TABLE loot AS SELECT card FROM customers", &["card"]),
            ("CREATE VIEW peek AS SELECT LEFT(card, 6) AS bin FROM customers", &["card"]),
            ("ALTER VIEW peek AS SELECT card FROM customers", &["card"]),
            ("ALTER TABLE customers ADD COLUMN c2 VARCHAR(32) AS (card) STORED", &["card"]),
            ("INSERT INTO notes TABLE customers", &["*"]),
            ("CREATE TABLE loot AS TABLE customers", &["*"]),
        ] {
            let c = compared(sql);
            for n in names {
                assert!(c.stored.contains(*n), "{sql}: {c:?}");
            }
            assert!(!c.moves, "{sql}");
        }
        for sql in [
            "UPDATE customers SET name = 'x' WHERE card = '1'",
            "INSERT INTO customers (id, card) VALUES (5, '4111')",
            "UPDATE customers SET card = NULL WHERE id = 2",
            "SELECT card FROM customers",
        ] {
            let c = compared(sql);
            assert!(!c.stored.contains("card"), "{sql}: {c:?}");
        }
        for (sql, moves) in [
            ("RENAME TABLE customers TO clients", true),
            ("ALTER TABLE customers RENAME TO clients", true),
            ("ALTER TABLE customers RENAME COLUMN card TO c", true),
            ("ALTER TABLE customers CHANGE card c VARCHAR(32)", true),
            ("ALTER TABLE customers CHANGE card CARD VARCHAR(64)", false),
            ("ALTER TABLE customers ADD COLUMN z INT", false),
        ] {
            assert_eq!(compared(sql).moves, moves, "{sql}");
        }
    }

    #[test]
    fn values_stored_out_of_masking_s_sight() {
        for sql in [
            "SELECT @x := card FROM customers WHERE id = 1",
            "SET @x = (SELECT card FROM customers WHERE id = 1)",
            "SET @a = 1, @x = (SELECT card FROM customers WHERE id = 1)",
            "SELECT card INTO @x FROM customers WHERE id = 1",
        ] {
            assert!(compared(sql).stores, "{sql}");
        }
        for sql in [
            "SET SESSION sql_select_limit = (SELECT CAST(LEFT(card, 9) AS UNSIGNED) FROM customers WHERE id = 1)",
            "SET @@session.group_concat_max_len = 1024 + (SELECT length(card) FROM customers LIMIT 1)",
        ] {
            assert!(compared(sql).stores, "{sql}");
        }
        for sql in ["SELECT @x", "SET @@session.time_zone = '+00:00'", "SELECT card FROM customers"] {
            assert!(!compared(sql).stores, "{sql}");
        }
        // Calls that keep their arguments: their names count as stored.
        for sql in [
            "SELECT LAST_INSERT_ID(CAST(LEFT(card, 9) AS UNSIGNED)) FROM customers WHERE id = 1",
            "SELECT GET_LOCK(card, 0) FROM customers",
            "SELECT id FROM customers WHERE shop.audit_fn(lower(card)) = 1",
        ] {
            assert!(compared(sql).stored.contains("card"), "{sql}: {:?}", compared(sql));
        }
        for sql in ["SELECT lower(card), concat(card, 'x') FROM customers", "SELECT GET_LOCK('job', 0)"] {
            assert!(!compared(sql).stored.contains("card"), "{sql}");
        }
        for (sql, diag) in [
            ("SHOW WARNINGS", true),
            ("show errors limit 5", true),
            ("SHOW COUNT(*) WARNINGS", false),
            ("SHOW VARIABLES", false),
        ] {
            assert_eq!(compared(sql).diagnostics, diag, "{sql}");
        }
    }

    #[test]
    fn names_in_comparing_positions() {
        for sql in [
            "SELECT id FROM customers WHERE ssn LIKE '1%'",
            "SELECT id FROM customers c JOIN orders o ON o.ssn = c.ssn",
            "SELECT id FROM customers JOIN orders USING (ssn)",
            "SELECT COUNT(*) FROM customers GROUP BY ssn",
            "SELECT id FROM customers ORDER BY ssn",
            "SELECT ssn AS x FROM customers ORDER BY x",
            "SELECT id, ssn FROM customers ORDER BY 2",
            "SELECT ssn AS x, COUNT(*) FROM customers GROUP BY x",
            "SELECT ssn AS x FROM customers HAVING x > '1'",
            "SELECT COUNT(NULLIF(SUBSTR(ssn, 1, 1), '1')) FROM customers",
            "SELECT COUNT(DISTINCT ssn) FROM customers",
            "SELECT GROUP_CONCAT(name ORDER BY ssn) FROM customers",
            "SELECT ROW_NUMBER() OVER (ORDER BY ssn) FROM customers",
            "SELECT DISTINCT SUBSTR(ssn, 1, 1) FROM customers",
            "SELECT ssn FROM customers UNION SELECT '123-45-6789'",
            "SELECT ssn FROM customers INTERSECT SELECT '123-45-6789'",
            "SELECT (SELECT name FROM orders WHERE orders.ssn = customers.ssn) FROM customers",
            "SELECT id FROM customers WHERE id IN (SELECT id FROM customers WHERE ssn = '1')",
            "SELECT EXISTS (SELECT ssn FROM customers WHERE id = 1 HAVING ssn > '1')",
            "SELECT id IN (SELECT ssn FROM customers) FROM customers",
            "SELECT * FROM (SELECT ssn AS x FROM customers) d WHERE x LIKE '1%'",
            "SELECT * FROM (SELECT CONCAT(ssn) FROM customers) d WHERE `CONCAT(ssn)` LIKE '1%'",
            "WITH t (x) AS (SELECT ssn FROM customers) SELECT * FROM t WHERE x LIKE '1%'",
            "SELECT * FROM (SELECT ssn FROM customers) AS d (x) ORDER BY x",
            "SELECT * FROM customers NATURAL JOIN orders",
            "SELECT DISTINCT * FROM customers",
            // A position at or past a `*`: any column the `*` stands for.
            "SELECT * FROM customers ORDER BY 6",
            "SELECT id, customers.* FROM customers ORDER BY 7 DESC",
            "SELECT * FROM customers GROUP BY 6",
            "SELECT id FROM customers WHERE MATCH (name, ssn) AGAINST ('123')",
        ] {
            let c = compared(sql);
            let s = closure(&c);
            assert!(s.contains("ssn") || s.contains("*"), "{sql}: {c:?}");
        }
        for sql in [
            "SELECT ssn, UPPER(ssn), COUNT(ssn), COUNT(*) FROM customers WHERE id = 1",
            "SELECT ssn FROM customers UNION ALL SELECT '1'",
            "SELECT (SELECT ssn FROM customers WHERE id = 1)",
            "SELECT * FROM (SELECT ssn FROM customers) d WHERE id = 1",
            "SELECT ssn AS x FROM customers ORDER BY id",
            "SELECT id, * FROM customers ORDER BY 1",
        ] {
            let c = compared(sql);
            assert!(!closure(&c).contains("ssn"), "{sql}: {c:?}");
        }
    }
}
