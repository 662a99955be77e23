//! Binding a statement's lineage (`crate::sql::lineage`) to the catalog:
//! which table columns each result column's value is computed from, by
//! relation OID and column number, through views (whose definitions are
//! parsed the same way) down to tables.
//!
//! It errs towards more origins, never fewer: a reference counts for every
//! FROM item that has a column of that name, a name that reaches nothing
//! known counts as nothing (a literal, a function's own column), and a view
//! whose definition cannot be read counts as every column of every table it
//! reads.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use super::Catalog;
use crate::sql::TableRef;
use crate::sql::lineage::{ANY_COLUMN, Lineage, Output, Position, Ref, SourceKind, Star};

/// A table column a value comes from. `attnum` 0 is the whole row.
/// `relation` 0 stands for "could not be followed": treat it as masked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Origin {
    pub relation: u32,
    pub attnum: i16,
}

impl Origin {
    /// What a chain too deep to follow stands for.
    pub const UNKNOWN: Origin = Origin { relation: 0, attnum: 0 };
}

/// A statement's lineage bound to the catalog.
#[derive(Debug, Default, Clone)]
pub struct Bound {
    /// Per target (a `*` counts once), lining up with the result when `exact`.
    pub outputs: Vec<BTreeSet<Origin>>,
    pub exact: bool,
    /// Per result column with every `*` expanded from the catalog.
    pub expanded: Vec<BTreeSet<Origin>>,
    /// Everything the top-level result columns read (`*` included).
    pub all: BTreeSet<Origin>,
    /// Columns used to filter, join, sort, group or partition.
    pub predicates: BTreeSet<Origin>,
    /// What the values the statement stores are computed from.
    pub stored: BTreeSet<Origin>,
    /// Relations (attnum 0) and columns the statement renames, moves to
    /// another schema or detaches from their parent.
    pub moved: BTreeSet<Origin>,
    /// Columns a result column computes with (the statement's own, not a
    /// view definition's).
    pub computed: BTreeSet<Origin>,
}

impl Bound {
    /// The origins of result column `index` (of `width`): by position when
    /// the statement's targets line up with the result (`*` expanded from
    /// the catalog), else everything the result reads. (`name` is not used
    /// to line columns up: output names are the user's to choose.)
    pub fn column(&self, index: usize, _name: &str, width: usize) -> &BTreeSet<Origin> {
        self.aligned(index, width).unwrap_or(&self.all)
    }

    /// The origins of result column `index` when the positions line up.
    pub fn aligned(&self, index: usize, width: usize) -> Option<&BTreeSet<Origin>> {
        if self.exact && self.outputs.len() == width {
            return self.outputs.get(index);
        }
        if self.expanded.len() == width {
            return self.expanded.get(index);
        }
        None
    }
}

/// How deep views and nested queries are followed.
const MAX_DEPTH: usize = 32;

/// How much work one binding does (outputs visited, candidates compared)
/// before it gives up and answers [`Origin::UNKNOWN`] (treated as masked).
/// A statement of 300 columns over a 300-column subquery needs about half of
/// it; the cap bounds what a hostile text or view definition can cost (tens
/// of milliseconds), whatever its shape.
const MAX_STEPS: usize = 1_000_000;

/// What one top-level binding has already worked out, shared by the
/// statement and every view definition it reaches, so a value referenced
/// many times (nested subqueries, views over views) is followed once.
#[derive(Default)]
struct Memo {
    /// A relation column's origins (a view column's, through its definition).
    columns: HashMap<(u32, i16), BTreeSet<Origin>>,
    /// A view's definition, bound.
    views: HashMap<u32, Bound>,
    steps: usize,
}

impl Memo {
    /// Counts one step; false once the binding's budget is spent.
    fn step(&mut self) -> bool {
        self.charge(1)
    }

    /// Counts `n` steps; false once the binding's budget is spent.
    fn charge(&mut self, n: usize) -> bool {
        self.steps = self.steps.saturating_add(n);
        self.steps <= MAX_STEPS
    }
}

struct Binder<'a, 'm> {
    cat: &'a Catalog,
    lineage: &'a Lineage,
    tables: &'a [TableRef],
    depth: usize,
    /// Outputs already reached by the value being bound. Its origins are
    /// everything it reaches, so each output is followed once per value
    /// (recursive CTEs and ambiguous names make cycles; several paths to
    /// one output would otherwise make the work exponential).
    seen: HashSet<*const Output>,
    /// Outputs whose every origin is known (bound as a value of their own).
    complete: HashMap<*const Output, BTreeSet<Origin>>,
    memo: &'m mut Memo,
}

/// What the positions of one result level resolve to: the columns counted
/// out, and (`rest`) what a position past them may name when a `*` could
/// not be counted.
struct Counted {
    columns: Vec<BTreeSet<Origin>>,
    rest: Option<BTreeSet<Origin>>,
}

/// The last bindings made on one catalog snapshot, by lineage object and
/// relations. Each entry holds its lineage, so no other lineage can come
/// to live at its address while it is here: equal pointers are the same
/// lineage. Binding reads nothing but the snapshot, the lineage and the
/// relations, so a remembered binding is the one a fresh `bind` gives.
#[derive(Debug, Default)]
pub(crate) struct Bindings {
    recent: Mutex<VecDeque<Binding>>,
}

/// A lineage, the relations it was bound with, and the binding.
type Binding = (Arc<Lineage>, Box<[TableRef]>, Arc<Bound>);

impl Bindings {
    /// Bindings kept (the most recently used first).
    const KEEP: usize = 64;

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Binding>> {
        self.recent.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn find(&self, lineage: &Arc<Lineage>, tables: &[TableRef]) -> Option<Arc<Bound>> {
        let mut recent = self.lock();
        let i = recent.iter().position(|(l, t, _)| Arc::ptr_eq(l, lineage) && **t == *tables)?;
        let hit = recent.remove(i)?;
        let bound = hit.2.clone();
        recent.push_front(hit);
        Some(bound)
    }

    fn keep(&self, lineage: &Arc<Lineage>, tables: &[TableRef], bound: &Arc<Bound>) {
        let mut recent = self.lock();
        recent.push_front((lineage.clone(), tables.into(), bound.clone()));
        recent.truncate(Self::KEEP);
    }
}

impl Catalog {
    /// Binds `lineage` for a statement that read `tables` (schema-qualified
    /// as the session's search path resolved them).
    pub fn bind(&self, lineage: &Lineage, tables: &[TableRef]) -> Bound {
        self.bind_at(lineage, tables, 0, &mut Memo::default())
    }

    /// [`Catalog::bind`], remembered for the lineage object and relations
    /// (see [`Bindings`]): a statement run again and again, whose lineage the
    /// classification cache shares, is bound once per catalog snapshot.
    pub fn bind_shared(&self, lineage: &Arc<Lineage>, tables: &[TableRef]) -> Arc<Bound> {
        if let Some(b) = self.bindings.find(lineage, tables) {
            return b;
        }
        let bound = Arc::new(self.bind(lineage, tables));
        self.bindings.keep(lineage, tables, &bound);
        bound
    }

    fn bind_at(&self, lineage: &Lineage, tables: &[TableRef], depth: usize, memo: &mut Memo) -> Bound {
        let mut b = Binder { cat: self, lineage, tables, depth, seen: HashSet::new(), complete: HashMap::new(), memo };
        let mut bound = Bound { exact: lineage.exact, ..Bound::default() };
        for o in &lineage.outputs {
            let mut set = BTreeSet::new();
            b.seen.clear();
            b.output(o, &mut set);
            b.complete.insert(o, set.clone());
            bound.all.extend(set.iter().copied());
            bound.outputs.push(set.clone());
            match &o.star {
                Some(star) => b.expand(star, &mut bound.expanded, true),
                None => bound.expanded.push(set),
            }
        }
        // A row expansion of unknown width: positions after it are unknown.
        if lineage.outputs.iter().any(|o| o.star.as_ref().is_some_and(|s| s.level.is_empty())) {
            bound.expanded.clear();
        }
        b.seen.clear();
        for r in &lineage.predicates {
            let mut set = BTreeSet::new();
            b.reference(r, &mut set);
            bound.predicates.extend(set);
        }
        let mut levels = HashMap::new();
        for p in &lineage.positions {
            b.position(p, &mut levels, &mut bound.predicates);
        }
        for (outputs, into) in [(&lineage.stored, &mut bound.stored), (&lineage.moved, &mut bound.moved)] {
            for o in outputs {
                b.seen.clear();
                b.output(o, into);
            }
        }
        if depth == 0 {
            b.seen.clear();
            for r in &lineage.computed {
                let mut set = BTreeSet::new();
                b.reference(r, &mut set);
                bound.computed.extend(set);
            }
        }
        for schema in &lineage.moved_schemas {
            bound.moved.extend(self.relations_in(schema).map(|r| Origin { relation: r.oid, attnum: 0 }));
        }
        bound
    }

    /// The table columns a relation's column shows: itself for a table; for a
    /// view, what its definition computes that column from.
    pub fn column_origins(&self, relation: u32, attnum: i16) -> BTreeSet<Origin> {
        self.column_origins_at(relation, attnum, 0, &mut Memo::default())
    }

    fn column_origins_at(&self, relation: u32, attnum: i16, depth: usize, memo: &mut Memo) -> BTreeSet<Origin> {
        if let Some(known) = memo.columns.get(&(relation, attnum)) {
            return known.clone();
        }
        let out = self.column_origins_uncached(relation, attnum, depth, memo);
        // An answer cut short by depth says UNKNOWN, which is safe to reuse.
        memo.columns.insert((relation, attnum), out.clone());
        out
    }

    fn column_origins_uncached(&self, relation: u32, attnum: i16, depth: usize, memo: &mut Memo) -> BTreeSet<Origin> {
        let mut out = BTreeSet::new();
        let Some(rel) = self.relation(relation) else {
            out.insert(Origin { relation, attnum });
            return out;
        };
        if !matches!(rel.kind, b'v' | b'm') {
            out.insert(Origin { relation, attnum });
            return out;
        }
        if depth > MAX_DEPTH || !memo.step() {
            out.insert(Origin::UNKNOWN);
            return out;
        }
        let Some(lineage) = self.view_lineage.get(&relation) else {
            // Unreadable definition: any column of anything it reads.
            for base in &rel.reads {
                if let Some(b) = self.relation(*base) {
                    out.extend(b.columns.iter().map(|c| Origin { relation: *base, attnum: c.attnum }));
                }
            }
            return out;
        };
        if !memo.views.contains_key(&relation) {
            let b = self.bind_at(lineage, &[], depth + 1, memo);
            memo.views.insert(relation, b);
        }
        let Some(bound) = memo.views.get(&relation) else {
            out.insert(Origin::UNKNOWN);
            return out;
        };
        if attnum == 0 {
            return bound.all.clone();
        }
        let index = usize::try_from(attnum).ok().and_then(|a| a.checked_sub(1)).unwrap_or(usize::MAX);
        let name = rel.columns.iter().find(|c| c.attnum == attnum).map(|c| c.name.as_str()).unwrap_or("");
        bound.column(index, name, rel.columns.len()).clone()
    }

    /// Relations a name in a statement may be: qualified, as the statement's
    /// resolved tables say, or along the login's default path.
    fn relations_for(&self, t: &TableRef, tables: &[TableRef]) -> Vec<u32> {
        if let Some(schema) = &t.schema {
            return self.relation_named(schema, &t.name).map(|r| vec![r.oid]).unwrap_or_default();
        }
        let resolved: Vec<u32> = tables
            .iter()
            .filter(|r| r.name == t.name)
            .filter_map(|r| r.schema.as_deref().and_then(|s| self.relation_named(s, &r.name)))
            .map(|r| r.oid)
            .collect();
        if !resolved.is_empty() {
            return resolved;
        }
        self.default_search_path
            .iter()
            .map(|s| if s == "$user" { self.login.as_str() } else { s.as_str() })
            .find_map(|s| self.relation_named(s, &t.name))
            .map(|r| vec![r.oid])
            .unwrap_or_default()
    }
}

impl Binder<'_, '_> {
    fn output(&mut self, o: &Output, out: &mut BTreeSet<Origin>) {
        let key: *const Output = o;
        if let Some(known) = self.complete.get(&key) {
            out.extend(known.iter().copied());
            return;
        }
        if !self.seen.insert(key) {
            // Already in (or on its way into) the value being bound.
            return;
        }
        if !self.memo.step() {
            out.insert(Origin::UNKNOWN);
            return;
        }
        for r in &o.refs {
            self.reference(r, out);
        }
        if let Some(star) = &o.star {
            let mut each = Vec::new();
            self.expand(star, &mut each, false);
            out.extend(each.into_iter().flatten());
        }
    }

    /// The result columns a `*` / `q.*` stands for, in order: every column
    /// of the FROM items of its query level. `each` when every column is a
    /// value of its own (the statement's result), not part of one value.
    fn expand(&mut self, star: &Star, out: &mut Vec<BTreeSet<Origin>>, each: bool) {
        let lineage = self.lineage;
        for s in star.level.iter().filter_map(|&i| lineage.sources.get(i)) {
            match &s.kind {
                SourceKind::Relation(t) => {
                    for oid in self.cat.relations_for(t, self.tables).into_iter().take(1) {
                        if let Some(rel) = self.cat.relation(oid) {
                            for c in &rel.columns {
                                out.push(self.cat.column_origins_at(oid, c.attnum, self.depth + 1, self.memo));
                            }
                        }
                    }
                }
                SourceKind::Query(outputs) => {
                    for o in outputs {
                        let mut set = BTreeSet::new();
                        if each {
                            self.seen.clear();
                        }
                        self.output(o, &mut set);
                        if each {
                            self.complete.insert(o, set.clone());
                        }
                        out.push(set);
                    }
                }
            }
        }
    }

    /// The origins of the result column a position names (`ORDER BY 6`
    /// after a `*`), the `*`s counted out from the catalog; each level's
    /// columns are counted once for all its positions (see [`Counted`]).
    fn position(
        &mut self,
        p: &Position,
        levels: &mut HashMap<(*const Output, bool), Counted>,
        out: &mut BTreeSet<Origin>,
    ) {
        let c = match levels.entry((p.outputs.as_ptr(), p.lined_up)) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(self.count(p)),
        };
        match (c.columns.get(p.index), &c.rest) {
            (Some(column), _) => out.extend(column.iter().copied()),
            (None, Some(rest)) => out.extend(rest.iter().copied()),
            // Past the last column: the server refuses the statement.
            (None, None) => {}
        }
    }

    /// A level's result columns, counted while each `*` stands for one
    /// table (a join's `*` merges `USING` columns, a subquery's may hold
    /// `*`s and functions of its own, a set operation's stands for either
    /// side); from the first that does not, every column from the first `*`
    /// on is what a position there may name.
    fn count(&mut self, p: &Position) -> Counted {
        let lineage = self.lineage;
        let cat = self.cat;
        let tables = self.tables;
        let one_table = |o: &Output| match &o.star {
            None => true,
            Some(star) => {
                o.refs.is_empty()
                    && matches!(star.level.as_slice(), [i] if matches!(
                        lineage.sources.get(*i).map(|s| &s.kind),
                        Some(SourceKind::Relation(t)) if cat.relations_for(t, tables).first().is_some_and(|oid| cat.relation(*oid).is_some())
                    ))
            }
        };
        let mut columns = Vec::new();
        for o in p.outputs.iter() {
            if !(p.lined_up && one_table(o)) {
                let first = p.outputs.iter().position(|o| o.star.is_some()).unwrap_or(0);
                let mut rest = BTreeSet::new();
                for o in p.outputs.iter().skip(first) {
                    self.seen.clear();
                    self.output(o, &mut rest);
                }
                return Counted { columns, rest: Some(rest) };
            }
            match &o.star {
                Some(star) => self.expand(star, &mut columns, true),
                None => {
                    let mut set = BTreeSet::new();
                    self.seen.clear();
                    self.output(o, &mut set);
                    columns.push(set);
                }
            }
        }
        Counted { columns, rest: None }
    }

    fn whole(&mut self, alias: &str, out: &mut BTreeSet<Origin>) -> bool {
        let lineage = self.lineage;
        let mut found = false;
        for s in lineage.sources.iter().filter(|s| alias.is_empty() || s.alias == alias) {
            found = true;
            match &s.kind {
                SourceKind::Relation(t) => {
                    for oid in self.cat.relations_for(t, self.tables) {
                        out.insert(Origin { relation: oid, attnum: 0 });
                    }
                }
                SourceKind::Query(outputs) => {
                    for o in outputs {
                        self.output(o, out);
                    }
                }
            }
        }
        found
    }

    fn reference(&mut self, r: &Ref, out: &mut BTreeSet<Origin>) {
        if self.depth > MAX_DEPTH || !self.memo.step() {
            out.insert(Origin::UNKNOWN);
            return;
        }
        match r {
            Ref::Whole(alias) => {
                self.whole(alias, out);
            }
            Ref::Column { qualifier, name } => {
                let lineage = self.lineage;
                let candidates: usize = lineage
                    .sources
                    .iter()
                    .map(|s| match &s.kind {
                        SourceKind::Query(outputs) => outputs.len() + 1,
                        SourceKind::Relation(_) => 1,
                    })
                    .sum::<usize>()
                    + lineage.inner.len();
                if !self.memo.charge(candidates) {
                    out.insert(Origin::UNKNOWN);
                    return;
                }
                let mut found = false;
                for s in lineage.sources.iter().filter(|s| qualifier.as_deref().is_none_or(|q| s.alias == q)) {
                    match &s.kind {
                        SourceKind::Relation(t) => {
                            for oid in self.cat.relations_for(t, self.tables) {
                                let Some(rel) = self.cat.relation(oid) else { continue };
                                if let Some(c) = rel.columns.iter().find(|c| &c.name == name) {
                                    out.extend(self.cat.column_origins_at(oid, c.attnum, self.depth + 1, self.memo));
                                    found = true;
                                }
                            }
                        }
                        SourceKind::Query(outputs) => {
                            for o in outputs {
                                if &o.name == name {
                                    self.output(o, out);
                                    found = true;
                                } else if o.name == ANY_COLUMN {
                                    // A function's column may have any name: it may be this one
                                    // (which may still name a FROM item's whole row, below).
                                    self.output(o, out);
                                }
                            }
                        }
                    }
                }
                if found {
                    return;
                }
                // A bare name that is a FROM item: the whole row (`to_json(c)`).
                if qualifier.is_none() && self.whole(name, out) {
                    return;
                }
                // A name from an enclosing or sibling query (LATERAL, correlated subqueries).
                for o in lineage.inner.iter().filter(|o| &o.name == name) {
                    self.output(o, out);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::tests::sample;
    use crate::sql::lineage::of_sql;

    fn origins(sql: &str) -> Bound {
        let cat = sample();
        let l = of_sql(sql).unwrap();
        cat.bind(&l, &[TableRef { schema: Some("public".into()), name: "customers".into() }])
    }

    const EMAIL: Origin = Origin { relation: 16401, attnum: 2 };
    const ID: Origin = Origin { relation: 16401, attnum: 1 };

    #[test]
    fn expressions_subqueries_and_whole_rows() {
        let b = origins(
            "SELECT id, replace(email, '@', '') AS x, to_json(c), (SELECT max(email) FROM customers) FROM customers c",
        );
        assert_eq!(b.outputs[0], [ID].into());
        assert_eq!(b.outputs[1], [EMAIL].into());
        assert_eq!(b.outputs[2], [Origin { relation: 16401, attnum: 0 }].into());
        assert_eq!(b.outputs[3], [EMAIL].into());
        let s = origins("SELECT * FROM (SELECT upper(email) AS u FROM customers) s");
        assert!(!s.exact);
        assert_eq!(s.column(0, "u", 1), &BTreeSet::from([EMAIL]));
        // Positions that do not line up: everything the result reads, whatever the names.
        let m = origins("SELECT id AS email, (ROW()).*, upper(email) AS id FROM customers");
        assert_eq!(m.column(0, "email", 2), &BTreeSet::from([ID, EMAIL]));
        let t = origins("SELECT *, 1 FROM customers");
        assert_eq!(t.expanded, [BTreeSet::from([ID]), BTreeSet::from([EMAIL]), BTreeSet::new()]);
        assert_eq!(t.column(1, "email", 3), &BTreeSet::from([EMAIL]));
        let r = origins(
            "WITH RECURSIVE t(n, e) AS (SELECT 1, email FROM customers UNION ALL SELECT n + 1, e FROM t) SELECT n, e FROM t",
        );
        assert_eq!(r.outputs[1], [EMAIL].into());
        let v = origins("SELECT x AS email FROM (VALUES ('a@b.co')) v(x)");
        assert!(v.outputs[0].is_empty(), "a literal is no column: {v:?}");
        let p = origins("SELECT id FROM customers WHERE email LIKE 'a%' ORDER BY 1");
        assert_eq!(p.predicates, [ID, EMAIL].into());
    }

    #[test]
    fn a_remembered_binding_is_the_fresh_one_for_the_same_lineage_and_relations_only() {
        let cat = sample();
        let customers = [TableRef { schema: Some("public".into()), name: "customers".into() }];
        let pay = of_sql("SELECT lower(emp::text) FROM pay").unwrap();
        let email = Arc::new(of_sql("SELECT email FROM customers").unwrap());
        let first = cat.bind_shared(&email, &customers);
        assert_eq!(first.outputs, cat.bind(&email, &customers).outputs);
        assert_eq!(first.outputs[0], [EMAIL].into());
        // The same lineage and relations: the same binding, not bound again.
        assert!(Arc::ptr_eq(&first, &cat.bind_shared(&email, &customers)));
        // Other relations, or another lineage (even one read from the same
        // text): bound afresh.
        let none = cat.bind_shared(&email, &[]);
        assert!(!Arc::ptr_eq(&first, &none));
        assert_eq!(none.outputs, cat.bind(&email, &[]).outputs);
        let other = Arc::new(pay);
        let views = cat.bind_shared(&other, &[]);
        assert_eq!(views.outputs[0], [Origin { relation: 16402, attnum: 1 }].into());
        let again = Arc::new(of_sql("SELECT email FROM customers").unwrap());
        assert!(!Arc::ptr_eq(&first, &cat.bind_shared(&again, &customers)));
        // A lineage dropped cannot be mistaken for one made later at its
        // address: the memo holds it while it remembers it.
        let weak = Arc::downgrade(&email);
        drop(email);
        assert!(weak.upgrade().is_some());
        // Bounded: old entries go (and release their lineages).
        for i in 0..2 * Bindings::KEEP {
            let l = Arc::new(of_sql(&format!("SELECT id + {i} FROM customers")).unwrap());
            let _ = cat.bind_shared(&l, &customers);
        }
        assert!(weak.upgrade().is_none());
        assert_eq!(cat.bindings.lock().len(), Bindings::KEEP);
    }

    #[test]
    fn views_are_followed_to_their_tables() {
        let cat = sample();
        // public.pay (16403) shows hr.salaries.emp (16402, 1).
        assert_eq!(cat.column_origins(16403, 1), [Origin { relation: 16402, attnum: 1 }].into());
        assert_eq!(cat.column_origins(16401, 2), [EMAIL].into());
        let l = of_sql("SELECT lower(emp::text) FROM pay").unwrap();
        let b = cat.bind(&l, &[]);
        assert_eq!(b.outputs[0], [Origin { relation: 16402, attnum: 1 }].into());
        assert!(cat.is_text_type(25) && cat.is_text_type(20002) && cat.is_text_type(20004));
        assert!(!cat.is_text_type(20003) && !cat.is_text_type(23) && !cat.is_text_type(114));
    }

    #[test]
    fn values_referenced_many_times_are_followed_once() {
        // Every level reads all four columns of the one below, four times:
        // without the memo, following it costs 4^(levels+1) (this test would
        // take hours). Deeper nesting is refused by the parser's own limits.
        let mut sql = "SELECT email AS a, id AS b, email AS c, id AS d FROM customers".to_owned();
        for i in 0..12 {
            sql = format!(
                "SELECT concat(a,b,c,d) AS a, concat(b,a,c,d) AS b, concat(c,a,b,d) AS c, concat(d,a,b,c) AS d FROM ({sql}) t{i}"
            );
        }
        let b = origins(&sql);
        // Deeper than MAX_DEPTH or not, nothing is lost: the origins or UNKNOWN (masked).
        let first = &b.outputs[0];
        assert!(first.contains(&EMAIL) || first.contains(&Origin::UNKNOWN), "{first:?}");
        assert!(first.contains(&ID) || first.contains(&Origin::UNKNOWN), "{first:?}");
    }

    #[test]
    fn a_wide_query_over_a_wide_subquery_stays_within_the_budget() {
        let inner: Vec<String> = (0..300).map(|i| format!("email AS c{i}")).collect();
        let outer: Vec<String> = (0..300).map(|i| format!("c{i}")).collect();
        let sql = format!("SELECT {} FROM (SELECT {} FROM customers) t", outer.join(","), inner.join(","));
        let b = origins(&sql);
        assert!(b.outputs.iter().all(|o| o == &BTreeSet::from([EMAIL])), "{:?}", b.outputs.last());
    }

    #[test]
    fn a_binding_too_costly_to_follow_is_unknown_and_so_masked() {
        // 3,000 outputs each naming 3,000 candidates: past the step budget.
        let inner: Vec<String> = (0..3000).map(|_| "email AS a".to_owned()).collect();
        let outer: Vec<String> = (0..3000).map(|_| "a".to_owned()).collect();
        let sql = format!("SELECT {} FROM (SELECT {} FROM customers) t", outer.join(","), inner.join(","));
        let b = origins(&sql);
        let last = b.outputs.last().unwrap();
        assert!(last.contains(&Origin::UNKNOWN), "{last:?}");
        // Nothing comes out unmasked: every output is EMAIL or UNKNOWN.
        assert!(b.outputs.iter().all(|o| o.contains(&EMAIL) || o.contains(&Origin::UNKNOWN)));
    }
}
