//! A cache of classifications by exact statement text, bounded in entries
//! and in bytes, and of one-statement classifications by template (the
//! text with its numeric constants taken out, see `template`).

use std::collections::HashMap;
use std::mem::size_of;
use std::sync::{Arc, Mutex, PoisonError};

use super::lineage::{Lineage, Output, Ref as LineageRef, SourceKind};
use super::shape::Shape;
use super::{Effects, ParseOptions, QualName, Ref, Statement, TableRef};

/// Classifications by exact text (and parse options): drivers send the same
/// statement texts again and again (prepared statements, ORMs). Only an
/// exact repeat hits, so a cached answer is always the one a fresh parse
/// would give.
///
/// Bounded in entries and in bytes (a 4 KB text of 450 `SELECT 1;` holds
/// 450 classified statements, some 90 KB): new entries go into the current
/// generation; when it is full it becomes the previous one and the older
/// one is dropped, and a hit in the previous generation moves the entry
/// back. Texts in steady use stay; the cache never holds more than two
/// generations' budgets.
#[derive(Debug, Default)]
pub struct Cache {
    inner: Mutex<Generations>,
    /// By template: a text of a cached template whose classification read
    /// no constant gets the same answer a fresh parse would (see `template`).
    /// One map per `standard_conforming_strings` setting, looked up by the
    /// template's own text (no key is built for a lookup).
    templates: Mutex<[HashMap<Box<str>, Templated>; 2]>,
}

/// A one-statement classification shared by the texts of a template, and
/// where the statement's text lies: from `start` to `tail` bytes before the end.
#[derive(Debug)]
struct Templated {
    statement: Statement,
    shape: Shape,
    start: usize,
    tail: usize,
}

#[derive(Debug, Default)]
struct Generations {
    current: Generation,
    previous: Generation,
}

/// Entries by text, one map per `standard_conforming_strings` setting.
#[derive(Debug, Default)]
struct Generation {
    maps: [HashMap<Box<str>, Entry>; 2],
    bytes: usize,
}

#[derive(Debug, Clone)]
struct Entry {
    statements: Arc<[Statement]>,
    shape: Shape,
    bytes: usize,
}

impl Generation {
    fn map(&mut self, options: ParseOptions) -> &mut HashMap<Box<str>, Entry> {
        let [on, off] = &mut self.maps;
        if options.standard_conforming_strings { on } else { off }
    }

    fn len(&self) -> usize {
        self.maps.iter().map(HashMap::len).sum()
    }
}

impl Cache {
    /// Longest text cached, in bytes.
    pub const MAX_TEXT: usize = 4096;
    /// Entries per generation.
    pub const MAX_ENTRIES: usize = 4096;
    /// Accounted bytes per generation (texts, classified statements, overhead).
    pub const MAX_BYTES: usize = 8 << 20;

    /// The classification of `sql` and its shape, when seen before.
    pub fn get(&self, sql: &str, options: ParseOptions) -> Option<(Arc<[Statement]>, Shape)> {
        if sql.len() > Self::MAX_TEXT {
            return None;
        }
        let mut g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(e) = g.current.map(options).get(sql) {
            return Some((e.statements.clone(), e.shape));
        }
        let (key, e) = g.previous.map(options).remove_entry(sql)?;
        g.previous.bytes = g.previous.bytes.saturating_sub(e.bytes);
        let found = (e.statements.clone(), e.shape);
        g.insert(key, options, e);
        Some(found)
    }

    /// Remembers the classification of `sql`.
    pub fn put(&self, sql: &str, options: ParseOptions, statements: &[Statement], shape: Shape) {
        if sql.len() > Self::MAX_TEXT {
            return;
        }
        let bytes = entry_bytes(sql, statements);
        if bytes > Self::MAX_BYTES {
            return;
        }
        let entry = Entry { statements: statements.into(), shape, bytes };
        let mut g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        g.insert(sql.into(), options, entry);
    }

    /// The classification of `sql` from a text of the same template, with
    /// its own statement text, and its shape (the same for every text of a
    /// template: the same tokens).
    pub fn get_template(&self, sql: &str, options: ParseOptions) -> Option<(Statement, Shape)> {
        let t = super::template::of(sql)?;
        let maps = self.templates.lock().unwrap_or_else(PoisonError::into_inner);
        let hit = maps.get(usize::from(options.standard_conforming_strings))?.get(t.key.as_str())?;
        let text = sql.get(hit.start..sql.len().checked_sub(hit.tail)?)?;
        Some((hit.statement.with_text(text.trim()), hit.shape))
    }

    /// Remembers a fresh classification of `sql` for its template, when it
    /// is one statement and making it read no constant (`constants_read`).
    pub fn put_template(
        &self,
        sql: &str,
        options: ParseOptions,
        statements: &[Statement],
        shape: Shape,
        constants_read: bool,
    ) {
        let [one] = statements else { return };
        if constants_read {
            return;
        }
        let Some(t) = super::template::of(sql) else { return };
        let Some(start) = sql.find(one.text.as_str()) else { return };
        if sql.rfind(one.text.as_str()) != Some(start) {
            return;
        }
        let tail = sql.len() - start - one.text.len();
        if start > t.head() || tail > t.tail() {
            return;
        }
        let mut maps = self.templates.lock().unwrap_or_else(PoisonError::into_inner);
        if maps.iter().map(HashMap::len).sum::<usize>() >= Self::MAX_ENTRIES {
            maps.iter_mut().for_each(HashMap::clear);
        }
        if let Some(map) = maps.get_mut(usize::from(options.standard_conforming_strings)) {
            map.insert(t.key.as_str().into(), Templated { statement: one.clone(), shape, start, tail });
        }
    }

    /// Accounted bytes and entries held, both generations.
    pub fn usage(&self) -> (usize, usize) {
        let g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        (g.current.bytes + g.previous.bytes, g.current.len() + g.previous.len())
    }
}

impl Generations {
    fn insert(&mut self, key: Box<str>, options: ParseOptions, entry: Entry) {
        if self.current.len() >= Cache::MAX_ENTRIES || self.current.bytes + entry.bytes > Cache::MAX_BYTES {
            self.previous = std::mem::take(&mut self.current);
        }
        self.current.bytes += entry.bytes;
        if let Some(old) = self.current.map(options).insert(key, entry) {
            self.current.bytes = self.current.bytes.saturating_sub(old.bytes);
        }
    }
}

/// What the allocator adds to every allocation, roughly.
const ALLOC: usize = 16;
/// A hash map slot: key, value and control byte, at a load factor of 7/8.
const SLOT: usize = (size_of::<Box<str>>() + size_of::<Entry>() + 1) * 8 / 7;
/// A B-tree node of up to 11 kinds, generously.
const KIND_NODE: usize = 128;

/// The memory an entry holds, estimated from capacities.
fn entry_bytes(sql: &str, statements: &[Statement]) -> usize {
    SLOT + sql.len() + ALLOC + ALLOC + statements.iter().map(statement_bytes).sum::<usize>()
}

fn statement_bytes(s: &Statement) -> usize {
    size_of::<Statement>()
        + string_bytes(&s.text)
        + s.kinds.len().div_ceil(11) * (KIND_NODE + ALLOC)
        + tables_bytes(&s.reads)
        + tables_bytes(&s.writes)
        + strings_bytes(&s.functions)
        + refs_bytes(&s.refs.calls)
        + refs_bytes(&s.refs.operators)
        + refs_bytes(&s.refs.casts)
        + strings_bytes(&s.refs.attributes)
        + effects_bytes(&s.effects)
        + vec_bytes(&s.pending_where)
        + s.pending_where.iter().map(|p| table_bytes(&p.target) + strings_bytes(&p.columns)).sum::<usize>()
        + tables_bytes(&s.via_views)
        + tables_bytes(&s.sensitive)
        + s.lineage.as_deref().map_or(0, lineage_bytes)
}

fn effects_bytes(e: &Effects) -> usize {
    let name = |n: &Option<String>| n.as_ref().map_or(0, string_bytes);
    name(&e.prepare)
        + name(&e.execute)
        + e.deallocate.as_ref().map_or(0, name)
        + strings_bytes(&e.settings)
        + e.search_path.as_ref().and_then(Option::as_ref).map_or(0, strings_bytes)
        + name(&e.unsafe_encoding)
        + vec_bytes(&e.defines)
        + e.defines.iter().map(|(_, q)| qual_bytes(q)).sum::<usize>()
}

/// Where result columns come from (masking): per output column a name and
/// its references, per nested query its outputs again, so a text of column
/// references holds several times their count in entries.
fn lineage_bytes(l: &Lineage) -> usize {
    // Behind an Arc: the counts and the allocation.
    2 * size_of::<usize>()
        + size_of::<Lineage>()
        + ALLOC
        + outputs_bytes(&l.outputs)
        + outputs_bytes(&l.inner)
        + vec_bytes(&l.sources)
        + l.sources
            .iter()
            .map(|s| {
                string_bytes(&s.alias)
                    + match &s.kind {
                        SourceKind::Relation(t) => table_bytes(t),
                        SourceKind::Query(o) => outputs_bytes(o),
                    }
            })
            .sum::<usize>()
        + lineage_refs_bytes(&l.predicates)
        + l.declares.as_ref().map_or(0, string_bytes)
        + l.fetches.as_ref().map_or(0, string_bytes)
        + outputs_bytes(&l.stored)
        + outputs_bytes(&l.moved)
        + strings_bytes(&l.moved_schemas)
        + lineage_refs_bytes(&l.computed)
}

fn outputs_bytes(o: &Vec<Output>) -> usize {
    vec_bytes(o)
        + o.iter()
            .map(|o| {
                string_bytes(&o.name)
                    + lineage_refs_bytes(&o.refs)
                    + o.star.as_ref().map_or(0, |s| s.qualifier.as_ref().map_or(0, string_bytes) + vec_bytes(&s.level))
            })
            .sum::<usize>()
}

fn lineage_refs_bytes(r: &Vec<LineageRef>) -> usize {
    vec_bytes(r)
        + r.iter()
            .map(|r| match r {
                LineageRef::Column { qualifier, name } => {
                    qualifier.as_ref().map_or(0, string_bytes) + string_bytes(name)
                }
                LineageRef::Whole(q) => string_bytes(q),
            })
            .sum::<usize>()
}

fn refs_bytes(r: &Vec<Ref>) -> usize {
    vec_bytes(r) + r.iter().map(|r| qual_bytes(&r.name)).sum::<usize>()
}

fn qual_bytes(q: &QualName) -> usize {
    string_bytes(&q.name) + q.schema.as_ref().map_or(0, string_bytes)
}

fn tables_bytes(t: &Vec<TableRef>) -> usize {
    vec_bytes(t) + t.iter().map(table_bytes).sum::<usize>()
}

fn table_bytes(t: &TableRef) -> usize {
    string_bytes(&t.name) + t.schema.as_ref().map_or(0, string_bytes)
}

fn strings_bytes(v: &Vec<String>) -> usize {
    vec_bytes(v) + v.iter().map(string_bytes).sum::<usize>()
}

fn vec_bytes<T>(v: &Vec<T>) -> usize {
    if v.capacity() == 0 { 0 } else { v.capacity() * size_of::<T>() + ALLOC }
}

fn string_bytes(s: &String) -> usize {
    if s.capacity() == 0 { 0 } else { s.capacity() + ALLOC }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::shape::measure;
    use crate::sql::{Kind, parse};

    fn through(cache: &Cache, sql: &str, opts: ParseOptions) -> Vec<Vec<Kind>> {
        let statements = match cache.get(sql, opts) {
            Some((s, _)) => s.to_vec(),
            None => {
                let s = parse(sql, opts).unwrap();
                cache.put(sql, opts, &s, measure(sql, opts.standard_conforming_strings));
                s
            }
        };
        statements.iter().map(|s| s.kinds.iter().copied().collect()).collect()
    }

    /// As the classifier uses the cache: exact text, then template, then a parse.
    fn classify(cache: &Cache, sql: &str, opts: ParseOptions) -> Vec<Statement> {
        if let Some((s, _)) = cache.get(sql, opts) {
            return s.to_vec();
        }
        if let Some((s, _)) = cache.get_template(sql, opts) {
            return vec![s];
        }
        let (s, read) = crate::sql::parse_noting_constants(sql, opts);
        let s = s.unwrap();
        let shape = measure(sql, opts.standard_conforming_strings);
        cache.put(sql, opts, &s, shape);
        cache.put_template(sql, opts, &s, shape, read);
        s
    }

    #[test]
    fn a_template_hit_answers_what_a_fresh_parse_does() {
        let cache = Cache::default();
        let opts = ParseOptions::default();
        // Pairs of texts of one template: the second is answered from the
        // first's classification only where that is the same answer.
        let pairs = [
            (
                "SELECT abalance FROM pgbench_accounts WHERE aid = 1;",
                "SELECT abalance FROM pgbench_accounts WHERE aid = 99;",
            ),
            ("UPDATE t SET a = a + -5 WHERE id = 3", "UPDATE t SET a = a + -7 WHERE id = 4"),
            ("  /* c */ SELECT 1.5 FROM t  ", "  /* c */ SELECT 2.5 FROM t  "),
            // The classification reads these constants: never shared.
            ("DELETE FROM t WHERE 1 = 1", "DELETE FROM t WHERE 1 = 2"),
            ("SELECT a, b FROM t ORDER BY 1", "SELECT a, b FROM t ORDER BY 2"),
            ("SET search_path = 1", "SET search_path = 2"),
            ("SET statement_timeout = 1", "SET statement_timeout = 0"),
            ("SELECT 1; SELECT 2 FROM t", "SELECT 3; SELECT 4 FROM t"),
        ];
        for (first, second) in pairs {
            let _ = classify(&cache, first, opts);
            let cached = classify(&cache, second, opts);
            let fresh = parse(second, opts).unwrap();
            assert_eq!(format!("{cached:?}"), format!("{fresh:?}"), "{second}");
        }
        let templates: usize = cache.templates.lock().unwrap().iter().map(HashMap::len).sum();
        assert_eq!(templates, 3, "only the texts whose constants do not matter");
    }

    #[test]
    fn the_cache_answers_exactly_what_a_fresh_parse_does() {
        let cache = Cache::default();
        let opts = ParseOptions::default();
        for sql in ["SELECT 1", "SELECT 1", "DELETE FROM t", "SELECT 1; DROP TABLE t", "DELETE FROM t"] {
            let fresh: Vec<Vec<Kind>> =
                parse(sql, opts).unwrap().iter().map(|s| s.kinds.iter().copied().collect()).collect();
            assert_eq!(through(&cache, sql, opts), fresh, "{sql}");
        }
        assert_eq!(cache.usage().1, 3);
        // The parse options are part of the key.
        let legacy = ParseOptions { standard_conforming_strings: false };
        let sql = "SELECT 'a\\'' ; DROP TABLE t; --'";
        assert!(!through(&cache, sql, opts).iter().flatten().any(|k| *k == Kind::Drop));
        assert!(through(&cache, sql, legacy).iter().flatten().any(|k| *k == Kind::Drop));
        assert!(!through(&cache, sql, opts).iter().flatten().any(|k| *k == Kind::Drop), "cached per setting");
    }

    #[test]
    fn the_cache_is_bounded_in_bytes_not_only_entries() {
        // The case: many distinct ~4 KB texts of many statements each.
        let cache = Cache::default();
        let opts = ParseOptions::default();
        let mut accounted_one = 0;
        for i in 0..600 {
            let sql = format!("SELECT {i};{}", "SELECT 1;".repeat(450));
            let statements = parse(&sql, opts).unwrap();
            accounted_one = entry_bytes(&sql, &statements);
            cache.put(&sql, opts, &statements, measure(&sql, true));
            let (bytes, entries) = cache.usage();
            assert!(bytes <= 2 * Cache::MAX_BYTES, "{bytes} bytes after {i} texts");
            assert!(entries <= 2 * Cache::MAX_ENTRIES);
        }
        // 451 statements of text, kinds and vectors: well over 30 KB each by the estimate.
        assert!(accounted_one > 30_000, "{accounted_one}");
        let (bytes, entries) = cache.usage();
        assert!(entries < 600, "an 8 MB generation cannot hold 600 of them: {entries} ({bytes} bytes)");
        // Texts in steady use survive a generation change.
        let hot = "SELECT * FROM hot";
        through(&cache, hot, opts);
        for i in 0..3 * Cache::MAX_ENTRIES {
            let sql = format!("SELECT {i}");
            through(&cache, &sql, opts);
            if i % 1000 == 0 {
                assert!(cache.get(hot, opts).is_some(), "the hot text was dropped after {i} others");
            }
        }
    }

    #[test]
    fn what_masking_and_the_catalog_pass_keep_is_accounted() {
        // 4 KB of column references: ~2,000 result columns, each with its
        // name and reference in the lineage; of calls: as many refs.
        let opts = ParseOptions::default();
        for (sql, least) in [
            (format!("SELECT a{} FROM t", ",a".repeat(2_000)), 2_000 * (size_of::<Output>() + size_of::<LineageRef>())),
            (format!("SELECT 1{}", (0..500).map(|i| format!(",f{i}()")).collect::<String>()), 500 * size_of::<Ref>()),
        ] {
            let statements = parse(&sql, opts).unwrap();
            let lineage = statements.iter().filter_map(|s| s.lineage.as_deref()).map(lineage_bytes).sum::<usize>();
            let bytes = entry_bytes(&sql, &statements);
            assert!(bytes > sql.len() + least, "{} accounted for {} bytes of text", bytes, sql.len());
            if sql.contains(",a") {
                assert!(lineage > least, "lineage accounted {lineage}");
            }
        }
    }

    #[test]
    fn long_texts_are_not_cached() {
        let cache = Cache::default();
        let opts = ParseOptions::default();
        let sql = format!("SELECT '{}'", "x".repeat(Cache::MAX_TEXT));
        let s = parse(&sql, opts).unwrap();
        cache.put(&sql, opts, &s, measure(&sql, true));
        assert!(cache.get(&sql, opts).is_none());
        assert_eq!(cache.usage(), (0, 0));
    }
}
