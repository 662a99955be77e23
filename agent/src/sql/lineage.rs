//! Lineage: where each result column of a statement takes its value from,
//! read from the parse tree, so masking follows the data and not the
//! column's output name.
//!
//! The result is catalog-free (names as written); `crate::catalog` binds it
//! to relation OIDs and column numbers when a result is described. It errs
//! towards masking: a column reference counts for every relation in the
//! statement that has a column of that name (qualifiers narrow it when they
//! name an alias), every column a result expression reads counts, whatever
//! the expression does with it (`replace`, `substr`, casts, `||`, `CASE`,
//! aggregates, JSON and array constructors), except the argument of
//! `count(…)`, whose value does not reach the result.
//!
//! What it records:
//! - per top-level result column, the references its value is computed from
//!   (`outputs`), and whether those positions line up with the server's
//!   RowDescription (`exact`: no `*` among them);
//! - the result columns of every nested query (subqueries, CTEs, set-operation
//!   branches), by name, so a column read through one is followed;
//! - the FROM items (relations with their aliases, and subqueries);
//! - every reference used to filter, join, sort, group or partition
//!   (`predicates`), for the profile option that refuses inference through
//!   predicates;
//! - every reference a result column computes with rather than passes on
//!   as it is (`computed`: `upper(email)`, `1 / (ascii(ssn) - 49)`): such a
//!   value is hidden anyway, so what it computes can only come back through
//!   errors or timing, and the same option refuses it;
//! - `COPY … TO` options, and the cursor a statement declares or fetches from;
//! - what a statement stores in the database or a server file (`stored`:
//!   INSERT's rows, UPDATE's and MERGE's new values, `CREATE TABLE AS`,
//!   `SELECT INTO`, a view's columns, `COPY … TO 'file'`, `ALTER TABLE`
//!   expressions), and the relations it renames or moves out of a
//!   hierarchy (`moved`), since masking rules name them.

use pg_query::protobuf as pb;
use pg_query::{NodeEnum, NodeRef};

use super::TableRef;
use super::children::children;

/// How deep the lineage walk follows the tree (pg_query's decoder limits
/// trees to about 45 levels; this bounds the walk whatever the input).
const MAX_DEPTH: usize = 200;

/// The name of a FROM function's output that stands for every column the
/// function returns: their names are the function's (`value` of
/// `jsonb_each_text`, `unnest`, an XMLTABLE's `COLUMNS`), not known here, so
/// any name may be one of them. (No identifier holds a NUL.)
pub const ANY_COLUMN: &str = "\0";

/// A reference an expression reads.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Ref {
    /// `name`, `q.name`, `s.q.name` (qualifier: the last name before the column).
    Column { qualifier: Option<String>, name: String },
    /// A whole row: `q.*` inside an expression (`ROW(c.*)`, `row_to_json(c.*)`).
    /// A bare `c` naming a FROM item is a [`Ref::Column`] the binder recognises.
    Whole(String),
}

/// One result column: its name (as PostgreSQL names it) and what it reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Output {
    pub name: String,
    pub refs: Vec<Ref>,
    /// A `*` or `q.*` target: stands for several result columns.
    pub star: Option<Star>,
}

/// A `*` (or `q.*`) target and the FROM items it stands for, in order (for
/// `q.*`, those named `q`; after a set operation, both sides').
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Star {
    pub qualifier: Option<String>,
    /// Indices into [`Lineage::sources`].
    pub level: Vec<usize>,
}

/// `ORDER BY k`, `GROUP BY k` or `DISTINCT ON (k)` naming a result column
/// at or past a `*`: which column that is depends on how many columns the
/// `*` stands for, which only the catalog knows (see the binder).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Position {
    /// The result columns of the query level the position counts in (one
    /// copy shared by every position of the level).
    pub outputs: std::sync::Arc<[Output]>,
    /// Zero-based.
    pub index: usize,
    /// `false` after a set operation: a `*` there stands for either side's
    /// columns, not both sides' in a row, so every column from the first
    /// `*` on counts.
    pub lined_up: bool,
}

/// What a FROM item is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceKind {
    Relation(TableRef),
    /// A subquery, CTE, VALUES list or function: its result columns.
    Query(Vec<Output>),
}

/// A FROM item (anywhere in the statement) and the name it is referred to by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub alias: String,
    pub kind: SourceKind,
}

/// `COPY … TO` text layout, for masking its rows by column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyFormat {
    pub csv: bool,
    pub binary: bool,
    pub delimiter: u8,
    pub header: bool,
    /// Options Gatehouse does not rewrite rows under (QUOTE, ESCAPE, NULL, FORCE_QUOTE, ENCODING…).
    pub unusual: bool,
    /// `COPY table [(columns)] TO`: each field is the column as stored (not a query's expression).
    pub relation: bool,
}

/// Where a statement's result columns come from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lineage {
    pub outputs: Vec<Output>,
    /// The outputs line up one to one with the result's columns.
    pub exact: bool,
    /// Result columns of every nested query, for references by name.
    pub inner: Vec<Output>,
    pub sources: Vec<Source>,
    pub predicates: Vec<Ref>,
    /// Positions used to filter, sort or group that the binder resolves.
    pub positions: Vec<Position>,
    pub copy: Option<CopyFormat>,
    /// `DECLARE name CURSOR FOR …` (the outputs are the cursor's).
    pub declares: Option<String>,
    /// `FETCH … FROM name`: the result is the cursor's.
    pub fetches: Option<String>,
    /// Values the statement stores (in a table, a view's definition or a
    /// server file), where they could be read back without the masking of
    /// the columns they come from.
    pub stored: Vec<Output>,
    /// Relations (`Ref::Whole`) or columns the statement renames, moves to
    /// another schema, detaches from a partitioned table or an inheritance
    /// parent: masking rules name them.
    pub moved: Vec<Output>,
    /// Schemas the statement renames (every relation in them is moved).
    pub moved_schemas: Vec<String>,
    /// References a result column computes with (anything but a bare
    /// column, a subquery's column passed on, or `count(column)`).
    pub computed: Vec<Ref>,
}

/// The lineage of one statement of a parse tree; `None` for statements that
/// return no rows Gatehouse can trace (utility statements other than those
/// below, SQL `EXECUTE`).
pub(super) fn of(node: NodeRef<'_>) -> Option<Lineage> {
    let mut w = Walker::default();
    let outputs = match node {
        NodeRef::SelectStmt(s) if s.into_clause.is_some() => {
            // `SELECT … INTO t`: the rows go into a new table, not to the client.
            let outputs = w.query(node, 0);
            w.stored.extend(outputs);
            Vec::new()
        }
        NodeRef::SelectStmt(_) | NodeRef::InsertStmt(_) | NodeRef::UpdateStmt(_) | NodeRef::DeleteStmt(_) => {
            w.query(node, 0)
        }
        NodeRef::MergeStmt(_) => w.query(node, 0),
        NodeRef::ExplainStmt(e) => {
            // EXPLAIN ANALYZE runs the query: its predicates count; its result is the plan.
            if let Some(q) = e.query.as_deref().and_then(|n| n.node.as_ref()) {
                w.query(q.to_ref(), 1);
            }
            Vec::new()
        }
        NodeRef::CopyStmt(c) if !c.is_from => {
            let outputs = match (&c.relation, c.query.as_deref().and_then(|n| n.node.as_ref())) {
                (_, Some(q)) => w.query(q.to_ref(), 1),
                (Some(r), None) => {
                    let alias = w.relation(r);
                    if c.attlist.is_empty() {
                        let level = vec![w.sources.len() - 1];
                        vec![Output { name: "*".into(), refs: Vec::new(), star: Some(Star { qualifier: None, level }) }]
                    } else {
                        c.attlist
                            .iter()
                            .filter_map(|n| match &n.node {
                                Some(NodeEnum::String(s)) => Some(Output {
                                    name: s.sval.clone(),
                                    refs: vec![Ref::Column { qualifier: Some(alias.clone()), name: s.sval.clone() }],
                                    star: None,
                                }),
                                _ => None,
                            })
                            .collect()
                    }
                }
                (None, None) => Vec::new(),
            };
            if let Some(wh) = c.where_clause.as_deref().and_then(|n| n.node.as_ref()) {
                w.predicate(wh.to_ref(), &Level::none(), 1);
            }
            w.copy = Some(CopyFormat { relation: c.query.is_none(), ..copy_format(&c.options) });
            if c.is_program || !c.filename.is_empty() {
                // To a server file or program: stored where the masking does not follow.
                w.stored.extend(outputs.iter().cloned());
            }
            outputs
        }
        NodeRef::PrepareStmt(p) => match p.query.as_deref().and_then(|n| n.node.as_ref()) {
            Some(q) => w.query(q.to_ref(), 1),
            None => return None,
        },
        NodeRef::DeclareCursorStmt(d) => {
            w.declares = Some(d.portalname.clone());
            match d.query.as_deref().and_then(|n| n.node.as_ref()) {
                Some(q) => w.query(q.to_ref(), 1),
                None => return None,
            }
        }
        NodeRef::FetchStmt(f) if !f.ismove => {
            return Some(Lineage { fetches: Some(f.portalname.clone()), exact: true, ..Lineage::default() });
        }
        NodeRef::CreateTableAsStmt(c) => {
            if let Some(q) = c.query.as_deref().and_then(|n| n.node.as_ref()) {
                let outputs = w.query(q.to_ref(), 1);
                w.stored.extend(outputs);
            }
            Vec::new()
        }
        NodeRef::ViewStmt(v) => {
            // A view's columns show what it computes under the masking of the
            // columns it reads (a computed column keeps their style).
            if let Some(q) = v.query.as_deref().and_then(|n| n.node.as_ref()) {
                let outputs = w.query(q.to_ref(), 1);
                w.stored.extend(outputs);
            }
            Vec::new()
        }
        NodeRef::AlterTableStmt(a) => {
            let Some(r) = &a.relation else { return None };
            w.alter_table(r, &a.cmds);
            Vec::new()
        }
        NodeRef::RenameStmt(r) => {
            w.rename(r);
            Vec::new()
        }
        NodeRef::AlterObjectSchemaStmt(a) => {
            let moves_relation = matches!(
                pb::ObjectType::try_from(a.object_type),
                Ok(pb::ObjectType::ObjectTable
                    | pb::ObjectType::ObjectView
                    | pb::ObjectType::ObjectMatview
                    | pb::ObjectType::ObjectForeignTable)
            );
            match &a.relation {
                Some(r) if moves_relation => {
                    let alias = w.relation(r);
                    w.moved.push(Output { name: alias.clone(), refs: vec![Ref::Whole(alias)], star: None });
                }
                _ => return None,
            }
            Vec::new()
        }
        _ => return None,
    };
    let exact = outputs.iter().all(|o| o.star.is_none());
    Some(Lineage {
        outputs,
        exact,
        inner: w.inner,
        sources: w.sources,
        predicates: w.predicates,
        positions: w.positions,
        copy: w.copy,
        declares: w.declares,
        fetches: None,
        stored: w.stored,
        moved: w.moved,
        moved_schemas: w.moved_schemas,
        computed: w.computed,
    })
}

/// The lineage of a single query text (a view's definition).
pub fn of_sql(sql: &str) -> Option<Lineage> {
    let parsed = pg_query::parse(sql, pg_query::ParserOptions::DEFAULT).ok()?;
    match parsed.protobuf.stmts.as_slice() {
        [one] => of(one.stmt.as_ref()?.node.as_ref()?.to_ref()),
        _ => None,
    }
}

/// PostgreSQL's built-in set-returning functions (`pg_proc.proretset` in
/// `pg_catalog`, PostgreSQL 15), sorted: how many rows they yield depends on
/// their arguments. (User functions are `function_call`, never `*`.)
const SET_RETURNING: &[&str] = &[
    "aclexplode",
    "generate_series",
    "generate_subscripts",
    "json_array_elements",
    "json_array_elements_text",
    "json_each",
    "json_each_text",
    "json_object_keys",
    "json_populate_recordset",
    "json_to_recordset",
    "jsonb_array_elements",
    "jsonb_array_elements_text",
    "jsonb_each",
    "jsonb_each_text",
    "jsonb_object_keys",
    "jsonb_path_query",
    "jsonb_path_query_tz",
    "jsonb_populate_recordset",
    "jsonb_to_recordset",
    "pg_mcv_list_items",
    "pg_options_to_table",
    "pg_snapshot_xip",
    "regexp_matches",
    "regexp_split_to_table",
    "string_to_table",
    "ts_debug",
    "ts_parse",
    "ts_stat",
    "txid_snapshot_xip",
    "unnest",
];

#[derive(Debug, Default)]
struct Walker {
    inner: Vec<Output>,
    sources: Vec<Source>,
    predicates: Vec<Ref>,
    positions: Vec<Position>,
    copy: Option<CopyFormat>,
    declares: Option<String>,
    stored: Vec<Output>,
    moved: Vec<Output>,
    moved_schemas: Vec<String>,
    computed: Vec<Ref>,
}

fn names_of(list: &[pg_query::Node]) -> Vec<String> {
    list.iter()
        .filter_map(|n| match &n.node {
            Some(NodeEnum::String(s)) => Some(s.sval.clone()),
            _ => None,
        })
        .collect()
}

/// Renames outputs by an alias's column list (`AS s(a, b)`, a CTE's `(a, b)`).
fn renamed(mut outputs: Vec<Output>, names: &[pg_query::Node]) -> Vec<Output> {
    for (o, n) in outputs.iter_mut().zip(names_of(names)) {
        o.name = n;
    }
    outputs
}

/// The result columns a clause's names and positions refer to (`ORDER BY
/// x`, `ORDER BY 2`); empty where there are none (WHERE of a DML, ON).
/// Positions past a `*` share one copy of them, made at the first: a text
/// of many positions over many columns costs their sum, not their product.
struct Level<'a> {
    outputs: &'a [Output],
    first_star: Option<usize>,
    shared: std::cell::OnceCell<std::sync::Arc<[Output]>>,
}

impl<'a> Level<'a> {
    fn new(outputs: &'a [Output]) -> Self {
        let first_star = outputs.iter().position(|o| o.star.is_some());
        Self { outputs, first_star, shared: std::cell::OnceCell::new() }
    }

    fn none() -> Level<'static> {
        Level::new(&[])
    }

    fn shared(&self) -> std::sync::Arc<[Output]> {
        self.shared.get_or_init(|| self.outputs.into()).clone()
    }
}

impl Walker {
    /// A query (SELECT, VALUES, set operation, DML with RETURNING): its
    /// result columns. Registers its FROM items and predicates.
    fn query(&mut self, node: NodeRef<'_>, depth: usize) -> Vec<Output> {
        if depth > MAX_DEPTH {
            return Vec::new();
        }
        let outputs = match node {
            NodeRef::SelectStmt(s) => self.select(s, depth),
            NodeRef::InsertStmt(s) => {
                self.with(s.with_clause.as_ref(), depth);
                let mut level = Vec::new();
                if let Some(r) = &s.relation {
                    self.relation(r);
                    level.push(self.sources.len() - 1);
                }
                if let Some(q) = s.select_stmt.as_deref().and_then(|n| n.node.as_ref()) {
                    let rows = self.query(q.to_ref(), depth + 1);
                    self.stored.extend(rows);
                }
                if let Some(c) = &s.on_conflict_clause {
                    let values = self.targets(&c.target_list, &level, depth);
                    self.stored.extend(values);
                    if let Some(wh) = c.where_clause.as_deref().and_then(|n| n.node.as_ref()) {
                        self.predicate(wh.to_ref(), &Level::none(), depth + 1);
                    }
                }
                self.returning(s.returning_clause.as_ref(), &level, depth)
            }
            NodeRef::UpdateStmt(s) => {
                self.with(s.with_clause.as_ref(), depth);
                let mut level = Vec::new();
                if let Some(r) = &s.relation {
                    self.relation(r);
                    level.push(self.sources.len() - 1);
                }
                for f in &s.from_clause {
                    self.range_item(f, depth + 1, &mut level);
                }
                let values = self.targets(&s.target_list, &level, depth);
                self.stored.extend(values);
                if let Some(wh) = s.where_clause.as_deref().and_then(|n| n.node.as_ref()) {
                    self.predicate(wh.to_ref(), &Level::none(), depth + 1);
                }
                self.returning(s.returning_clause.as_ref(), &level, depth)
            }
            NodeRef::DeleteStmt(s) => {
                self.with(s.with_clause.as_ref(), depth);
                let mut level = Vec::new();
                if let Some(r) = &s.relation {
                    self.relation(r);
                    level.push(self.sources.len() - 1);
                }
                for f in &s.using_clause {
                    self.range_item(f, depth + 1, &mut level);
                }
                if let Some(wh) = s.where_clause.as_deref().and_then(|n| n.node.as_ref()) {
                    self.predicate(wh.to_ref(), &Level::none(), depth + 1);
                }
                self.returning(s.returning_clause.as_ref(), &level, depth)
            }
            NodeRef::MergeStmt(s) => {
                self.with(s.with_clause.as_ref(), depth);
                let mut level = Vec::new();
                if let Some(r) = &s.relation {
                    self.relation(r);
                    level.push(self.sources.len() - 1);
                }
                if let Some(src) = &s.source_relation {
                    self.range_item(src, depth + 1, &mut level);
                }
                if let Some(on) = s.join_condition.as_deref().and_then(|n| n.node.as_ref()) {
                    self.predicate(on.to_ref(), &Level::none(), depth + 1);
                }
                for c in &s.merge_when_clauses {
                    let Some(NodeEnum::MergeWhenClause(m)) = &c.node else { continue };
                    if let Some(cond) = m.condition.as_deref().and_then(|n| n.node.as_ref()) {
                        self.predicate(cond.to_ref(), &Level::none(), depth + 1);
                    }
                    // UPDATE SET's values, INSERT's VALUES.
                    let values = self.targets(&m.target_list, &level, depth);
                    self.stored.extend(values);
                    for v in m.values.iter().filter_map(|n| n.node.as_ref()) {
                        let mut refs = Vec::new();
                        self.expr(v.to_ref(), &mut refs, depth + 1);
                        self.stored.push(Output { name: String::new(), refs, star: None });
                    }
                }
                self.returning(s.returning_clause.as_ref(), &level, depth)
            }
            other => {
                // Anything else that holds queries: walk them for their FROM items and predicates.
                for (_, child) in children(other) {
                    self.query(child, depth + 1);
                }
                Vec::new()
            }
        };
        self.inner.extend(outputs.iter().cloned());
        outputs
    }

    /// `ALTER TABLE r …`: expressions that compute stored values (`USING`,
    /// `GENERATED … AS`, `SET EXPRESSION`; a CHECK's too, conservatively),
    /// and moving a table in or out of a hierarchy (detaching it from a
    /// partitioned table or an inheritance parent, or putting it under one).
    fn alter_table(&mut self, r: &pb::RangeVar, cmds: &[pg_query::Node]) {
        let alias = self.relation(r);
        for c in cmds {
            let Some(NodeEnum::AlterTableCmd(cmd)) = &c.node else { continue };
            // Out of a hierarchy, its rows no longer come under the parent's
            // rules; put under another parent, they come out of that parent's
            // name too (before the next catalog read knows the parent).
            match (pb::AlterTableType::try_from(cmd.subtype), cmd.def.as_deref().and_then(|n| n.node.as_ref())) {
                (
                    Ok(
                        pb::AlterTableType::AtDetachPartition
                        | pb::AlterTableType::AtDetachPartitionFinalize
                        | pb::AlterTableType::AtDropInherit
                        | pb::AlterTableType::AtAddInherit,
                    ),
                    _,
                ) => {
                    self.moved.push(Output { name: alias.clone(), refs: vec![Ref::Whole(alias.clone())], star: None });
                }
                (Ok(pb::AlterTableType::AtAttachPartition), Some(NodeEnum::PartitionCmd(pc))) => {
                    if let Some(part) = &pc.name {
                        let attached = self.relation(part);
                        self.moved.push(Output {
                            name: attached.clone(),
                            refs: vec![Ref::Whole(attached)],
                            star: None,
                        });
                    }
                }
                _ => {}
            }
            if let Some(def) = cmd.def.as_deref().and_then(|n| n.node.as_ref()) {
                let mut refs = Vec::new();
                self.expr(def.to_ref(), &mut refs, 1);
                if !refs.is_empty() {
                    self.stored.push(Output { name: cmd.name.clone(), refs, star: None });
                }
            }
        }
    }

    /// `ALTER … RENAME`: a relation, one of its columns, or a schema.
    fn rename(&mut self, r: &pb::RenameStmt) {
        let Ok(kind) = pb::ObjectType::try_from(r.rename_type) else { return };
        match (kind, &r.relation) {
            (pb::ObjectType::ObjectSchema, _) => self.moved_schemas.push(r.subname.clone()),
            (pb::ObjectType::ObjectColumn, Some(rel)) => {
                let alias = self.relation(rel);
                let column = Ref::Column { qualifier: Some(alias), name: r.subname.clone() };
                self.moved.push(Output { name: r.subname.clone(), refs: vec![column], star: None });
            }
            (
                pb::ObjectType::ObjectTable
                | pb::ObjectType::ObjectView
                | pb::ObjectType::ObjectMatview
                | pb::ObjectType::ObjectForeignTable,
                Some(rel),
            ) => {
                let alias = self.relation(rel);
                self.moved.push(Output { name: alias.clone(), refs: vec![Ref::Whole(alias)], star: None });
            }
            _ => {}
        }
    }

    fn returning(&mut self, r: Option<&pb::ReturningClause>, level: &[usize], depth: usize) -> Vec<Output> {
        r.map(|r| self.targets(&r.exprs, level, depth)).unwrap_or_default()
    }

    fn with(&mut self, with: Option<&pb::WithClause>, depth: usize) {
        let Some(with) = with else { return };
        for cte in &with.ctes {
            let Some(NodeEnum::CommonTableExpr(c)) = &cte.node else { continue };
            let outputs = match c.ctequery.as_deref().and_then(|n| n.node.as_ref()) {
                Some(q) => self.query(q.to_ref(), depth + 1),
                None => Vec::new(),
            };
            let outputs = renamed(outputs, &c.aliascolnames);
            // SEARCH orders by its columns, CYCLE compares them (and ends the recursion).
            let compared = c
                .search_clause
                .iter()
                .flat_map(|sc| names_of(&sc.search_col_list))
                .chain(c.cycle_clause.iter().flat_map(|cc| names_of(&cc.cycle_col_list)));
            for name in compared.collect::<Vec<_>>() {
                if let Some(o) = outputs.iter().find(|o| o.name == name) {
                    self.predicates.extend(o.refs.iter().cloned());
                }
            }
            self.inner.extend(outputs.iter().cloned());
            self.sources.push(Source { alias: c.ctename.clone(), kind: SourceKind::Query(outputs) });
        }
    }

    fn select(&mut self, s: &pb::SelectStmt, depth: usize) -> Vec<Output> {
        self.with(s.with_clause.as_ref(), depth);
        if s.op != pb::SetOperation::SetopNone as i32 && s.op != pb::SetOperation::Undefined as i32 {
            let left = s.larg.as_deref().map(|l| self.select(l, depth + 1)).unwrap_or_default();
            let right = s.rarg.as_deref().map(|r| self.select(r, depth + 1)).unwrap_or_default();
            let mut out = left;
            for (o, r) in out.iter_mut().zip(right) {
                o.refs.extend(r.refs);
                // A `*` on either side: the column is every column either side's `*` stands for.
                if o.star.is_some() || r.star.is_some() {
                    let mut level = o.star.take().map(|s| s.level).unwrap_or_default();
                    level.extend(r.star.map(|s| s.level).unwrap_or_default());
                    o.star = Some(Star { qualifier: None, level });
                }
            }
            // UNION, INTERSECT and EXCEPT (ALL or not, but UNION ALL) compare
            // rows: how many come out answers whether values are equal.
            let compares = !(s.op == pb::SetOperation::SetopUnion as i32 && s.all);
            if compares {
                self.outputs_compared(&out);
            }
            self.limits(s, depth);
            let level = Level::new(&out);
            for n in s.sort_clause.iter().filter_map(|n| n.node.as_ref()) {
                match position(n.to_ref()) {
                    Some(k) => self.position(k, &level, false),
                    None => self.predicate(n.to_ref(), &level, depth + 1),
                }
            }
            return out;
        }
        if !s.values_lists.is_empty() {
            let mut out: Vec<Output> = Vec::new();
            for row in &s.values_lists {
                let Some(NodeEnum::List(items)) = &row.node else { continue };
                for (i, item) in items.items.iter().enumerate() {
                    if out.len() <= i {
                        out.push(Output { name: format!("column{}", i + 1), ..Output::default() });
                    }
                    let mut refs = Vec::new();
                    if let Some(n) = &item.node {
                        self.expr(n.to_ref(), &mut refs, depth + 1);
                        if !passes_on(n) {
                            self.computed.extend(refs.iter().cloned());
                        }
                    }
                    if let Some(o) = out.get_mut(i) {
                        o.refs.extend(refs);
                    }
                }
            }
            // `VALUES … ORDER BY 1 LIMIT (…)` sorts and counts rows like a SELECT.
            self.limits(s, depth);
            self.order(&s.sort_clause, &Level::new(&out), depth);
            return out;
        }
        let mut level = Vec::new();
        for f in &s.from_clause {
            self.range_item(f, depth + 1, &mut level);
        }
        let out = self.targets(&s.target_list, &level, depth);
        let level = Level::new(&out);
        if let Some(wh) = s.where_clause.as_deref().and_then(|n| n.node.as_ref()) {
            self.predicate(wh.to_ref(), &level, depth + 1);
        }
        if let Some(h) = s.having_clause.as_deref().and_then(|n| n.node.as_ref()) {
            self.predicate(h.to_ref(), &level, depth + 1);
        }
        self.limits(s, depth);
        // A plain DISTINCT (its list holds one empty node) compares whole
        // result rows: how many come out answers whether values are equal.
        if s.distinct_clause.iter().any(|n| n.node.is_none()) {
            self.outputs_compared(&out);
        }
        for n in s.group_clause.iter().filter_map(|n| n.node.as_ref()) {
            self.group_item(n.to_ref(), &level, depth + 1);
        }
        for list in [&s.distinct_clause, &s.window_clause] {
            for n in list.iter().filter_map(|n| n.node.as_ref()) {
                self.predicate(n.to_ref(), &level, depth + 1);
            }
        }
        self.order(&s.sort_clause, &level, depth);
        // It borrows `out` (and has drop glue): gone before `out` is returned.
        drop(level);
        out
    }

    /// LIMIT and OFFSET choose rows too (a subquery there can count masked values).
    /// Their constants are row counts, not output positions (`LIMIT 3` is
    /// not `ORDER BY 3`).
    fn limits(&mut self, s: &pb::SelectStmt, depth: usize) {
        for n in [&s.limit_count, &s.limit_offset].into_iter().flatten().filter_map(|n| n.node.as_ref()) {
            self.rows_from(n.to_ref(), depth + 1);
        }
    }

    /// Result columns that the query compares (DISTINCT, UNION, INTERSECT,
    /// EXCEPT): what they are computed from counts as a predicate.
    fn outputs_compared(&mut self, out: &[Output]) {
        for o in out {
            self.predicates.extend(o.refs.iter().cloned());
            if let Some(star) = &o.star {
                self.predicates.push(Ref::Whole(star.qualifier.clone().unwrap_or_default()));
            }
        }
    }

    /// An expression that decides how many rows come out (LIMIT, a
    /// set-returning or table function's arguments, TABLESAMPLE, a frame
    /// offset): a predicate, since the count of rows answers a question
    /// about it (`SELECT count(*) FROM generate_series(1, ascii(ssn))`).
    fn rows_from(&mut self, node: NodeRef<'_>, depth: usize) {
        let mut refs = Vec::new();
        self.expr(node, &mut refs, depth);
        self.predicates.extend(refs);
    }

    fn order(&mut self, sort: &[pg_query::Node], out: &Level<'_>, depth: usize) {
        for n in sort.iter().filter_map(|n| n.node.as_ref()) {
            self.predicate(n.to_ref(), out, depth + 1);
        }
    }

    fn targets(&mut self, list: &[pg_query::Node], level: &[usize], depth: usize) -> Vec<Output> {
        let mut out = Vec::with_capacity(list.len());
        for t in list {
            let Some(NodeEnum::ResTarget(rt)) = &t.node else { continue };
            let Some(val) = rt.val.as_deref().and_then(|n| n.node.as_ref()) else { continue };
            if let NodeEnum::ColumnRef(c) = val
                && c.fields.last().is_some_and(|f| matches!(f.node, Some(NodeEnum::AStar(_))))
            {
                let names = names_of(&c.fields);
                let qualifier = names.last().cloned();
                let level = match &qualifier {
                    None => level.to_vec(),
                    Some(q) => {
                        let alias = |i: &usize| self.sources.get(*i).is_some_and(|s| &s.alias == q);
                        let own: Vec<usize> = level.iter().copied().filter(alias).collect();
                        // `q` from an enclosing query (LATERAL): wherever it is.
                        if own.is_empty() { (0..self.sources.len()).filter(alias).collect() } else { own }
                    }
                };
                let star = Star { qualifier, level };
                out.push(Output { name: "*".into(), refs: Vec::new(), star: Some(star) });
                continue;
            }
            let mut refs = Vec::new();
            self.expr(val.to_ref(), &mut refs, depth + 1);
            if !passes_on(val) {
                self.computed.extend(refs.iter().cloned());
            }
            let name = if rt.name.is_empty() { figure_name(val.to_ref()) } else { rt.name.clone() };
            // `(row).*` stands for as many columns as the row has (none, or
            // several): the positions after it no longer line up.
            let star = match val {
                NodeEnum::AIndirection(i)
                    if i.indirection.iter().any(|f| matches!(f.node, Some(NodeEnum::AStar(_)))) =>
                {
                    Some(Star { qualifier: None, level: Vec::new() })
                }
                _ => None,
            };
            out.push(Output { name, refs, star });
        }
        out
    }

    /// A FROM item: registers it (and walks what it holds).
    fn range_item(&mut self, node: &pg_query::Node, depth: usize, level: &mut Vec<usize>) {
        let Some(n) = &node.node else { return };
        if depth > MAX_DEPTH {
            return;
        }
        match n {
            NodeEnum::RangeVar(r) => {
                self.relation(r);
                level.push(self.sources.len() - 1);
            }
            NodeEnum::RangeSubselect(r) => {
                let outputs = match r.subquery.as_deref().and_then(|n| n.node.as_ref()) {
                    Some(q) => self.query(q.to_ref(), depth + 1),
                    None => Vec::new(),
                };
                let (alias, cols) =
                    r.alias.as_ref().map_or((String::new(), &[][..]), |a| (a.aliasname.clone(), &a.colnames[..]));
                let outputs = renamed(outputs, cols);
                self.inner.extend(outputs.iter().cloned());
                self.sources.push(Source { alias, kind: SourceKind::Query(outputs) });
                level.push(self.sources.len() - 1);
            }
            NodeEnum::JoinExpr(j) => {
                if let Some(l) = &j.larg {
                    self.range_item(l, depth + 1, level);
                }
                if let Some(r) = &j.rarg {
                    self.range_item(r, depth + 1, level);
                }
                if let Some(q) = j.quals.as_deref().and_then(|n| n.node.as_ref()) {
                    self.predicate(q.to_ref(), &Level::none(), depth + 1);
                }
                for name in names_of(&j.using_clause) {
                    self.predicates.push(Ref::Column { qualifier: None, name });
                }
                if j.is_natural {
                    // The join columns are not named: every column of both sides may be one.
                    let sides: Vec<String> = [&j.larg, &j.rarg]
                        .into_iter()
                        .flatten()
                        .filter_map(|n| match &n.node {
                            Some(NodeEnum::RangeVar(r)) => {
                                Some(r.alias.as_ref().map_or_else(|| r.relname.clone(), |a| a.aliasname.clone()))
                            }
                            _ => None,
                        })
                        .collect();
                    self.predicates.extend(sides.into_iter().map(Ref::Whole));
                }
            }
            NodeEnum::RangeFunction(f) => {
                let mut refs = Vec::new();
                for item in &f.functions {
                    if let Some(n) = &item.node {
                        self.expr(n.to_ref(), &mut refs, depth + 1);
                    }
                }
                // How many rows a function in FROM yields depends on its arguments.
                self.predicates.extend(refs.iter().cloned());
                let alias = f.alias.as_ref().map(|a| a.aliasname.clone()).unwrap_or_default();
                let mut outputs = vec![Output { name: ANY_COLUMN.into(), refs: refs.clone(), star: None }];
                if let Some(a) = &f.alias {
                    for c in names_of(&a.colnames) {
                        outputs.push(Output { name: c, refs: refs.clone(), star: None });
                    }
                }
                self.inner.extend(outputs.iter().cloned());
                self.sources.push(Source { alias, kind: SourceKind::Query(outputs) });
                level.push(self.sources.len() - 1);
            }
            NodeEnum::RangeTableSample(t) => {
                if let Some(r) = &t.relation {
                    self.range_item(r, depth + 1, level);
                }
                // The sampling method's arguments and seed choose rows.
                for n in t.args.iter().chain(t.repeatable.as_deref()).filter_map(|n| n.node.as_ref()) {
                    self.rows_from(n.to_ref(), depth + 1);
                }
            }
            other => {
                // Table functions (XMLTABLE, JSON_TABLE) and anything else: what they read,
                // which also decides how many rows they yield.
                let mut refs = Vec::new();
                self.expr(other.to_ref(), &mut refs, depth + 1);
                self.predicates.extend(refs.iter().cloned());
                let alias = match other {
                    NodeEnum::RangeTableFunc(t) => t.alias.as_ref(),
                    NodeEnum::JsonTable(t) => t.alias.as_ref(),
                    _ => None,
                };
                let alias = alias.map(|a| a.aliasname.clone()).unwrap_or_default();
                let outputs = vec![Output { name: ANY_COLUMN.into(), refs, star: None }];
                self.inner.extend(outputs.iter().cloned());
                self.sources.push(Source { alias, kind: SourceKind::Query(outputs) });
                level.push(self.sources.len() - 1);
            }
        }
    }

    /// Registers a relation (or a reference to a CTE) under its alias; returns the alias.
    fn relation(&mut self, r: &pb::RangeVar) -> String {
        let alias = r.alias.as_ref().map_or_else(|| r.relname.clone(), |a| a.aliasname.clone());
        let unqualified = r.schemaname.is_empty() && r.catalogname.is_empty();
        let cte = unqualified
            .then(|| {
                self.sources.iter().rev().find_map(|s| match &s.kind {
                    SourceKind::Query(o) if s.alias == r.relname => Some(o.clone()),
                    _ => None,
                })
            })
            .flatten();
        let kind = match cte {
            Some(outputs) => {
                let cols = r.alias.as_ref().map_or(&[][..], |a| &a.colnames[..]);
                SourceKind::Query(renamed(outputs, cols))
            }
            None => SourceKind::Relation(TableRef {
                schema: (!r.schemaname.is_empty()).then(|| r.schemaname.clone()),
                name: r.relname.clone(),
            }),
        };
        self.sources.push(Source { alias: alias.clone(), kind });
        alias
    }

    /// References in a filtering, joining, sorting or grouping expression.
    /// A bare name or position in ORDER BY / GROUP BY may name a result column.
    fn predicate(&mut self, node: NodeRef<'_>, outputs: &Level<'_>, depth: usize) {
        let inner = match node {
            NodeRef::SortBy(s) => s.node.as_deref().and_then(|n| n.node.as_ref()).map(NodeEnum::to_ref),
            other => Some(other),
        };
        let Some(inner) = inner else { return };
        match inner {
            NodeRef::AConst(_) => {
                if let Some(k) = position(inner) {
                    self.position(k, outputs, true);
                }
            }
            NodeRef::ColumnRef(c) if c.fields.len() == 1 => {
                let names = names_of(&c.fields);
                if let Some(o) = names.first().and_then(|n| outputs.outputs.iter().find(|o| &o.name == n)) {
                    self.predicates.extend(o.refs.iter().cloned());
                }
                let mut refs = Vec::new();
                self.expr(inner, &mut refs, depth);
                self.predicates.extend(refs);
            }
            other => {
                let mut refs = Vec::new();
                self.expr(other, &mut refs, depth);
                self.predicates.extend(refs);
            }
        }
    }

    /// A `GROUP BY` item. Inside `ROLLUP`, `CUBE`, `GROUPING SETS` and a
    /// parenthesised list, each element is an item of its own, so a number
    /// there is a position too (`GROUP BY ROLLUP (1)` groups by the first
    /// result column).
    fn group_item(&mut self, node: NodeRef<'_>, outputs: &Level<'_>, depth: usize) {
        if depth > MAX_DEPTH {
            return;
        }
        let items = match node {
            NodeRef::GroupingSet(g) => &g.content,
            NodeRef::RowExpr(r) => &r.args,
            other => return self.predicate(other, outputs, depth),
        };
        for n in items.iter().filter_map(|n| n.node.as_ref()) {
            self.group_item(n.to_ref(), outputs, depth + 1);
        }
    }

    /// Result column `k` (zero-based) used to sort, group or pick rows. At
    /// or past a `*`, the binder counts the `*`'s columns from the catalog.
    fn position(&mut self, k: usize, level: &Level<'_>, lined_up: bool) {
        if level.first_star.is_some_and(|s| s <= k) {
            self.positions.push(Position { outputs: level.shared(), index: k, lined_up });
        } else if let Some(o) = level.outputs.get(k) {
            self.predicates.extend(o.refs.iter().cloned());
        }
    }

    /// Every reference an expression's value is computed from.
    fn expr(&mut self, node: NodeRef<'_>, refs: &mut Vec<Ref>, depth: usize) {
        if depth > MAX_DEPTH {
            return;
        }
        match node {
            NodeRef::ColumnRef(c) => {
                let names = names_of(&c.fields);
                let star = c.fields.last().is_some_and(|f| matches!(f.node, Some(NodeEnum::AStar(_))));
                match (star, names.as_slice()) {
                    (true, [.., q]) => refs.push(Ref::Whole(q.clone())),
                    // A bare `*` inside an expression (`count(*)` is not a ColumnRef): every FROM item.
                    (true, []) => refs.push(Ref::Whole(String::new())),
                    (false, [name]) => refs.push(Ref::Column { qualifier: None, name: name.clone() }),
                    (false, [.., q, name]) => {
                        refs.push(Ref::Column { qualifier: Some(q.clone()), name: name.clone() });
                    }
                    (false, []) => {}
                }
            }
            NodeRef::AIndirection(ind) => {
                // `(c).email`: the field of a row.
                let fields = names_of(&ind.indirection);
                match (ind.arg.as_deref().and_then(|n| n.node.as_ref()), fields.first()) {
                    (Some(NodeEnum::ColumnRef(c)), Some(field)) if c.fields.len() == 1 => {
                        let q = names_of(&c.fields).pop();
                        refs.push(Ref::Column { qualifier: q, name: field.clone() });
                        for (_, child) in children(node).into_iter().filter(|(f, _)| *f != "arg") {
                            self.expr(child, refs, depth + 1);
                        }
                    }
                    _ => {
                        for (_, child) in children(node) {
                            self.expr(child, refs, depth + 1);
                        }
                    }
                }
            }
            NodeRef::FuncCall(f) => {
                let name = super::functions::qual_name(&f.funcname);
                let builtin = |n: &str| {
                    name.as_ref().is_some_and(|q| q.name == n && q.schema.as_deref().is_none_or(|s| s == "pg_catalog"))
                };
                let counts = builtin("count");
                let rows = name.as_ref().is_some_and(|q| {
                    q.schema.as_deref().is_none_or(|s| s == "pg_catalog")
                        && SET_RETURNING.binary_search(&q.name.as_str()).is_ok()
                });
                // A built-in with side effects (`set_config`, `setval`,
                // `pg_notify`, large objects, advisory locks, server files, SQL
                // text it runs, `setseed`…) keeps or hands its arguments somewhere the
                // masking does not follow: a setting `SHOW` reads back, a
                // sequence, a notification, `pg_locks`. Its arguments count as
                // stored.
                let keeps = name.as_ref().is_some_and(super::functions::keeps_arguments);
                let mut kept = Vec::new();
                for a in f.args.iter().filter_map(|n| n.node.as_ref()) {
                    // `count(x)` shows how many `x` are not NULL: of a column
                    // itself, no more than its rows show; of anything computed
                    // (`count(nullif(ssn, '…'))`) or DISTINCT, an answer about
                    // the values. An aggregate's DISTINCT compares them; a
                    // set-returning function's arguments decide how many rows
                    // come out. (The argument is walked once: walking it twice
                    // per level would cost 2^depth for nested calls.)
                    let bare = matches!(a, NodeEnum::ColumnRef(_));
                    let compares = (counts && !bare) || f.agg_distinct || rows;
                    if !compares && counts {
                        continue;
                    }
                    let mut arefs = Vec::new();
                    self.expr(a.to_ref(), &mut arefs, depth + 1);
                    if compares {
                        self.predicates.extend(arefs.iter().cloned());
                    }
                    if keeps {
                        kept.extend(arefs.iter().cloned());
                    }
                    if !counts {
                        refs.extend(arefs);
                    }
                }
                if !kept.is_empty() {
                    self.stored.push(Output { name: String::new(), refs: kept, star: None });
                }
                // FILTER, ORDER BY inside the aggregate and OVER (…) choose and order rows.
                if let Some(filter) = f.agg_filter.as_deref().and_then(|n| n.node.as_ref()) {
                    self.predicate(filter.to_ref(), &Level::none(), depth + 1);
                }
                for o in f.agg_order.iter().filter_map(|n| n.node.as_ref()) {
                    self.predicate(o.to_ref(), &Level::none(), depth + 1);
                }
                // `mode() WITHIN GROUP (ORDER BY ssn)`, `percentile_disc(…)`:
                // the value is one of those the group is ordered by.
                if f.agg_within_group {
                    for o in f.agg_order.iter().filter_map(|n| n.node.as_ref()) {
                        let sorted = match o {
                            NodeEnum::SortBy(s) => s.node.as_deref().and_then(|n| n.node.as_ref()),
                            other => Some(other),
                        };
                        if let Some(v) = sorted {
                            self.expr(v.to_ref(), refs, depth + 1);
                        }
                    }
                }
                if let Some(over) = &f.over {
                    for n in over.partition_clause.iter().chain(&over.order_clause).filter_map(|n| n.node.as_ref()) {
                        self.predicate(n.to_ref(), &Level::none(), depth + 1);
                    }
                    // A frame's offsets choose the rows a window aggregate counts.
                    for n in
                        [&over.start_offset, &over.end_offset].into_iter().flatten().filter_map(|n| n.node.as_ref())
                    {
                        self.rows_from(n.to_ref(), depth + 1);
                    }
                }
            }
            NodeRef::SubLink(s) => {
                if let Some(t) = s.testexpr.as_deref().and_then(|n| n.node.as_ref()) {
                    self.expr(t.to_ref(), refs, depth + 1);
                }
                if let Some(q) = s.subselect.as_deref().and_then(|n| n.node.as_ref()) {
                    let outputs = self.query(q.to_ref(), depth + 1);
                    refs.extend(outputs.into_iter().flat_map(|o| {
                        let star = o.star.clone();
                        o.refs.into_iter().chain(star.map(|s| Ref::Whole(s.qualifier.unwrap_or_default())))
                    }));
                }
            }
            NodeRef::SelectStmt(_) => {
                let outputs = self.query(node, depth + 1);
                refs.extend(outputs.into_iter().flat_map(|o| o.refs));
            }
            other => {
                for (_, child) in children(other) {
                    self.expr(child, refs, depth + 1);
                }
            }
        }
    }
}

/// Whether a result expression passes a value on as it is: a column, a
/// subquery's single column (`(SELECT ssn …)`, `ARRAY(SELECT ssn …)`: the
/// subquery's own select list is looked at where it is walked), or
/// `count(column)` (its argument does not reach the value).
fn passes_on(node: &NodeEnum) -> bool {
    match node {
        NodeEnum::ColumnRef(_) => true,
        NodeEnum::SubLink(s) => s.testexpr.is_none(),
        NodeEnum::FuncCall(f) => {
            let count = super::functions::qual_name(&f.funcname)
                .is_some_and(|q| q.name == "count" && q.schema.as_deref().is_none_or(|s| s == "pg_catalog"));
            count && !f.agg_distinct && f.args.iter().all(|a| matches!(a.node, Some(NodeEnum::ColumnRef(_))))
        }
        _ => false,
    }
}

/// The name PostgreSQL gives a result column without an alias (a subset of
/// `FigureColname`; anything else is `?column?`).
fn figure_name(node: NodeRef<'_>) -> String {
    match node {
        NodeRef::ColumnRef(c) => names_of(&c.fields).pop().unwrap_or_else(|| "?column?".into()),
        NodeRef::AIndirection(i) => match names_of(&i.indirection).pop() {
            Some(n) => n,
            None => i
                .arg
                .as_deref()
                .and_then(|n| n.node.as_ref())
                .map_or_else(|| "?column?".into(), |n| figure_name(n.to_ref())),
        },
        NodeRef::FuncCall(f) => super::functions::qual_name(&f.funcname).map_or_else(|| "?column?".into(), |q| q.name),
        NodeRef::TypeCast(t) => {
            let inner = t.arg.as_deref().and_then(|n| n.node.as_ref()).map(|n| figure_name(n.to_ref()));
            match inner {
                Some(n) if n != "?column?" => n,
                _ => t
                    .type_name
                    .as_ref()
                    .and_then(|tn| super::functions::qual_name(&tn.names))
                    .map_or_else(|| "?column?".into(), |q| q.name),
            }
        }
        NodeRef::CaseExpr(_) => "case".into(),
        NodeRef::CoalesceExpr(_) => "coalesce".into(),
        NodeRef::AArrayExpr(_) => "array".into(),
        NodeRef::RowExpr(_) => "row".into(),
        NodeRef::MinMaxExpr(m) => {
            if m.op == pb::MinMaxOp::IsGreatest as i32 {
                "greatest".into()
            } else {
                "least".into()
            }
        }
        NodeRef::NullIfExpr(_) => "nullif".into(),
        NodeRef::SubLink(s) => match pb::SubLinkType::try_from(s.sub_link_type) {
            Ok(pb::SubLinkType::ExistsSublink) => "exists".into(),
            Ok(pb::SubLinkType::ArraySublink) => "array".into(),
            Ok(pb::SubLinkType::ExprSublink) => match s.subselect.as_deref().and_then(|n| n.node.as_ref()) {
                Some(NodeEnum::SelectStmt(q)) => q
                    .target_list
                    .first()
                    .and_then(|t| match &t.node {
                        Some(NodeEnum::ResTarget(rt)) if !rt.name.is_empty() => Some(rt.name.clone()),
                        Some(NodeEnum::ResTarget(rt)) => {
                            rt.val.as_deref().and_then(|n| n.node.as_ref()).map(|n| figure_name(n.to_ref()))
                        }
                        _ => None,
                    })
                    .unwrap_or_else(|| "?column?".into()),
                _ => "?column?".into(),
            },
            _ => "?column?".into(),
        },
        _ => "?column?".into(),
    }
}

/// The result column (zero-based) an integer constant names where it counts
/// as a position (`ORDER BY 2`, `GROUP BY 2`, `DISTINCT ON (2)`).
fn position(node: NodeRef<'_>) -> Option<usize> {
    let node = match node {
        NodeRef::SortBy(s) => s.node.as_deref().and_then(|n| n.node.as_ref()).map(NodeEnum::to_ref)?,
        other => other,
    };
    let NodeRef::AConst(c) = node else { return None };
    super::constant_read();
    match &c.val {
        Some(pb::a_const::Val::Ival(i)) => usize::try_from(i.ival).ok().and_then(|k| k.checked_sub(1)),
        _ => None,
    }
}

/// The layout options of `COPY … TO`.
fn copy_format(options: &[pg_query::Node]) -> CopyFormat {
    let mut f =
        CopyFormat { csv: false, binary: false, delimiter: b'\t', header: false, unusual: false, relation: false };
    let mut delimiter = None;
    for o in options {
        let Some(NodeEnum::DefElem(d)) = &o.node else { continue };
        let value = d.arg.as_deref().and_then(|n| n.node.as_ref()).and_then(|n| match n {
            NodeEnum::String(s) => Some(s.sval.clone()),
            NodeEnum::Boolean(b) => Some(if b.boolval { "true".into() } else { "false".into() }),
            NodeEnum::Integer(i) => {
                super::constant_read();
                Some(i.ival.to_string())
            }
            _ => None,
        });
        match d.defname.as_str() {
            "format" => match value.as_deref().map(str::to_ascii_lowercase).as_deref() {
                Some("csv") => f.csv = true,
                Some("binary") => f.binary = true,
                Some("text") => {}
                _ => f.unusual = true,
            },
            "delimiter" => delimiter = value,
            "header" => {
                f.header =
                    !matches!(value.as_deref().map(str::to_ascii_lowercase).as_deref(), Some("false" | "off" | "0"))
            }
            "freeze" => {}
            _ => f.unusual = true,
        }
    }
    if f.csv {
        f.delimiter = b',';
    }
    match delimiter.as_deref().map(str::as_bytes) {
        Some([b]) if !b.is_ascii_alphanumeric() && !matches!(b, b'\\' | b'"' | b'\r' | b'\n' | b'.') => {
            f.delimiter = *b
        }
        Some(_) => f.unusual = true,
        None => {}
    }
    f
}

#[cfg(test)]
mod tests;
