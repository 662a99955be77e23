//! The views a MySQL backend login can see, and the tables each reads.
//!
//! A view is a name in a statement like a table's, and the server reads the
//! tables behind it with the view's definer's rights: without knowing them,
//! `deny_tables = ["*.customers"]` would not hold for `SELECT * FROM cards`
//! (`CREATE VIEW cards AS SELECT … FROM customers`), and a masked session
//! would get `customers.card` unmasked through it (the server names the
//! view, not the table, as the column's origin). As PostgreSQL's catalog
//! pass does, Gatehouse reads `information_schema.VIEWS` with the session's
//! own backend login and parses each definition with the same MySQL grammar
//! as statements: a statement that reads or writes a view also reaches the
//! tables the view reads (transitively), for `deny_tables` and masking.
//!
//! The list (with the names of the tables, to tell a new name from an old
//! one) is kept per backend and login for `catalog_refresh`, read again
//! after DDL through Gatehouse on that backend, and — on masked sessions and
//! rules with `deny_tables`, where what a view reads matters — read again
//! before every statement that names a table or view it does not hold and
//! the server has ([`exists_query`] asks first; a CTE's name, a typo, a
//! temporary table stay unknown and count as tables; the reads are budgeted
//! per Unix user, see `crate::catalog::misses`), so a view made outside
//! Gatehouse counts from the first statement that names it. A view redefined outside Gatehouse is
//! seen at the next read. A view whose definition the login
//! cannot read (no `SHOW VIEW` privilege: the server shows it empty) or
//! that does not parse is *unreadable*: what it reads is not known, so a
//! masked session, or a rule with `deny_tables`, refuses statements on it.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use crate::catalog::misses::Lookup;
use crate::sql::TableRef;
use crate::sql::mysql::{self as classify, Names};

/// Tables and views read at most (a server with more is read up to here;
/// the rest are not known to be views, said so in the log).
pub const MAX_VIEWS: usize = 100_000;
/// How deep views over views are followed.
const MAX_DEPTH: usize = 32;

/// Schemas of the server's own, whose names are never views of users.
const SYSTEM: [&str; 4] = ["information_schema", "performance_schema", "mysql", "sys"];

/// The query that reads them: every table and view outside the server's own
/// schemas, with a view's definition (empty without `SHOW VIEW`). Names and
/// definitions come hex-encoded: the session's `character_set_results`
/// (which its user may set, to `latin1` say) would otherwise convert them
/// on the way, and a name outside it would arrive as another.
pub fn query() -> String {
    format!(
        "SELECT HEX(t.TABLE_SCHEMA), HEX(t.TABLE_NAME), HEX(v.VIEW_DEFINITION), t.TABLE_TYPE FROM information_schema.TABLES t \
         LEFT JOIN information_schema.VIEWS v ON v.TABLE_SCHEMA = t.TABLE_SCHEMA AND v.TABLE_NAME = t.TABLE_NAME \
         WHERE t.TABLE_SCHEMA NOT IN ('information_schema', 'performance_schema', 'mysql', 'sys') LIMIT {}",
        MAX_VIEWS + 1
    )
}

/// Names looked up at most by one [`exists_query`] (more: the list is read).
const MAX_LOOKUPS: usize = 16;

/// A query answering whether any of `names` (tables or views the list does
/// not hold) is one the server has: a row if so. The cheap look that comes
/// before reading the whole list again, so a name that is not there — a
/// common table expression's, a typo, a temporary table's — costs no such
/// read. One lookup per name (the server answers those without reading
/// every table's definition); names go as hex literals converted to the
/// column's character set, compared in its collation (case-insensitively:
/// a false match only costs a read). `None` when it cannot tell (a name
/// without a database, too many names): read the list.
pub fn exists_query(names: &[&TableRef]) -> Option<String> {
    if names.len() > MAX_LOOKUPS {
        return None;
    }
    let lit = |v: &str| format!("CONVERT(X'{}' USING utf8mb4)", crate::audit::hex(v.as_bytes()));
    let lookups = names
        .iter()
        .map(|t| {
            let schema = t.schema.as_deref()?;
            Some(format!(
                "SELECT 1 FROM information_schema.TABLES WHERE TABLE_SCHEMA = {} AND TABLE_NAME = {}",
                lit(schema),
                lit(&t.name)
            ))
        })
        .collect::<Option<Vec<String>>>()?;
    Some(format!("SELECT 1 FROM ({}) x LIMIT 1", lookups.join(" UNION ALL ")))
}

/// A hex-encoded UTF-8 value of [`query`]'s answer.
fn unhex(v: Option<&Option<String>>) -> Option<String> {
    let bytes = crate::audit::export::unhex(v?.as_deref()?)?;
    String::from_utf8(bytes).ok()
}

/// What one view reads.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Reads {
    Tables(Vec<TableRef>),
    /// Its definition could not be read or parsed.
    Unknown,
}

/// The views of one backend login, by `schema.name` (folded to lower case
/// when the server folds names).
#[derive(Debug, Default)]
pub struct Views {
    by_name: HashMap<(String, String), Reads>,
    tables: std::collections::HashSet<(String, String)>,
    fold_case: bool,
    /// More than [`MAX_VIEWS`]: the list is cut.
    pub truncated: bool,
}

/// What a statement reaches through the views it names.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reached {
    /// Tables (and views) read through views, not named by the statement.
    pub via: Vec<TableRef>,
    /// Views the statement names (directly or through other views).
    pub views: BTreeSet<String>,
    /// Views whose definitions are not known.
    pub unreadable: Vec<String>,
}

impl Views {
    /// Builds the list from the rows of [`query`].
    pub fn from_rows(rows: &[Vec<Option<String>>], fold_case: bool) -> Self {
        let mut v = Views { fold_case, truncated: rows.len() > MAX_VIEWS, ..Views::default() };
        for row in rows.iter().take(MAX_VIEWS) {
            // A name that does not decode is not held: it counts as unknown (and a statement naming it reads the list again).
            let (Some(schema), Some(name)) = (unhex(row.first()), unhex(row.get(1))) else { continue };
            let (schema, name) = (&schema, &name);
            if row.get(3).cloned().flatten().is_some_and(|t| t != "VIEW") {
                let key = v.key(Some(schema), name);
                v.tables.insert(key);
                continue;
            }
            let definition = unhex(row.get(2)).unwrap_or_default();
            let reads = if definition.trim().is_empty() {
                Reads::Unknown
            } else {
                let names = Names { database: Some(schema.clone()), fold_case, masked: false };
                match classify::classify(definition.as_bytes(), &names) {
                    Ok(c) => Reads::Tables(c.statement.reads),
                    Err(_) => Reads::Unknown,
                }
            };
            v.by_name.insert(v.key(Some(schema), name), reads);
        }
        v
    }

    fn key(&self, schema: Option<&str>, name: &str) -> (String, String) {
        let fold = |s: &str| if self.fold_case { s.to_lowercase() } else { s.to_owned() };
        (fold(schema.unwrap_or_default()), fold(name))
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// Whether `t` is a table or view this list holds (or of the server's own schemas).
    pub fn knows(&self, t: &TableRef) -> bool {
        let key = self.key(t.schema.as_deref(), &t.name);
        SYSTEM.contains(&key.0.to_ascii_lowercase().as_str())
            || self.tables.contains(&key)
            || self.by_name.contains_key(&key)
    }

    /// The tables `tables` reach through views, transitively.
    pub fn reach<'a>(&self, tables: impl IntoIterator<Item = &'a TableRef>) -> Reached {
        let mut out = Reached::default();
        if self.by_name.is_empty() {
            return out;
        }
        let named: Vec<&TableRef> = tables.into_iter().collect();
        let mut seen: BTreeSet<(String, String)> = BTreeSet::new();
        let mut level: Vec<TableRef> = named.iter().map(|t| (*t).clone()).collect();
        for _ in 0..MAX_DEPTH {
            let mut next = Vec::new();
            for t in &level {
                let key = self.key(t.schema.as_deref(), &t.name);
                if !seen.insert(key.clone()) {
                    continue;
                }
                let Some(reads) = self.by_name.get(&key) else { continue };
                out.views.insert(format!("{}.{}", key.0, key.1));
                match reads {
                    Reads::Unknown => out.unreadable.push(format!("{}.{}", key.0, key.1)),
                    Reads::Tables(ts) => {
                        for b in ts {
                            if !named.contains(&b) && !out.via.contains(b) {
                                out.via.push(b.clone());
                            }
                            next.push(b.clone());
                        }
                    }
                }
            }
            if next.is_empty() {
                return out;
            }
            level = next;
        }
        // Deeper than followed: what lies beyond is not known.
        out.unreadable.push("(views nested too deep)".into());
        out
    }
}

/// A list, and when it was read.
type Entry = (Instant, Arc<Views>);

/// Views lists per backend and login, shared by the agent's sessions, and
/// the budgets of reads for names a list did not hold.
#[derive(Debug, Default)]
struct Cache {
    entries: Mutex<HashMap<(String, String), Entry>>,
    misses: Mutex<HashMap<(String, String), crate::catalog::misses::Misses>>,
}

fn cache() -> &'static Cache {
    static CACHE: OnceLock<Cache> = OnceLock::new();
    CACHE.get_or_init(Cache::default)
}

/// Reads of a list for names it does not hold, per backend, login and Unix
/// user, at most per second (see `crate::catalog::misses`).
const REREADS_PER_SECOND: u32 = 5;

/// Whether `uid`'s statement naming tables or views the list of `backend`
/// and `login` does not hold may have it read again now (see [`Lookup`]).
pub fn lookup(backend: &str, login: &str, uid: u32) -> Lookup {
    let mut misses = cache().misses.lock().unwrap_or_else(PoisonError::into_inner);
    let m = misses
        .entry((backend.to_owned(), login.to_owned()))
        .or_insert_with(|| crate::catalog::misses::Misses::new(REREADS_PER_SECOND));
    m.check(uid)
}

/// The list for `backend` and `login`, if read within `fresh`.
pub fn cached(backend: &str, login: &str, fresh: Duration) -> Option<Arc<Views>> {
    let entries = cache().entries.lock().unwrap_or_else(PoisonError::into_inner);
    let (at, v) = entries.get(&(backend.to_owned(), login.to_owned()))?;
    (at.elapsed() < fresh).then(|| v.clone())
}

pub fn store(backend: &str, login: &str, views: Arc<Views>) {
    let mut entries = cache().entries.lock().unwrap_or_else(PoisonError::into_inner);
    entries.insert((backend.to_owned(), login.to_owned()), (Instant::now(), views));
}

/// DDL went through on `backend`: every login's list is read again at its next statement.
pub fn forget(backend: &str) {
    let mut entries = cache().entries.lock().unwrap_or_else(PoisonError::into_inner);
    entries.retain(|(b, _), _| b != backend);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_looked_up_one_by_one_as_hex() {
        let a = t("appdb", "soon");
        let b = t("app'db", "x) OR 1=1 --");
        let q = exists_query(&[&a, &b]).unwrap();
        assert!(q.contains("TABLE_SCHEMA = CONVERT(X'6170706462' USING utf8mb4)"), "{q}");
        assert_eq!(q.matches("SELECT 1 FROM information_schema.TABLES").count(), 2, "{q}");
        assert!(!q.contains("OR 1=1") && !q.contains("app'db"), "names go as hex only: {q}");
        let bare = TableRef { schema: None, name: "t".into() };
        assert_eq!(exists_query(&[&bare]), None, "a name without a database: read the list");
        let many: Vec<TableRef> = (0..=MAX_LOOKUPS).map(|i| t("appdb", &format!("t{i}"))).collect();
        assert_eq!(exists_query(&many.iter().collect::<Vec<_>>()), None);
    }

    fn row(schema: &str, name: &str, def: &str) -> Vec<Option<String>> {
        let h = |s: &str| Some(crate::audit::hex(s.as_bytes()).to_ascii_uppercase());
        vec![h(schema), h(name), h(def), Some("VIEW".into())]
    }

    fn t(schema: &str, name: &str) -> TableRef {
        TableRef { schema: Some(schema.into()), name: name.into() }
    }

    #[test]
    fn views_reach_their_tables_transitively_and_unreadable_ones_say_so() {
        let rows = vec![
            row(
                "appdb",
                "cards",
                "select `appdb`.`customers`.`id` AS `id`,`appdb`.`customers`.`card` AS `card` from `appdb`.`customers`",
            ),
            row("appdb", "cards2", "select `appdb`.`cards`.`card` AS `k` from `appdb`.`cards`"),
            row("appdb", "loop_a", "select 1 AS `x` from `appdb`.`loop_b`"),
            row("appdb", "loop_b", "select 1 AS `x` from `appdb`.`loop_a`"),
            row("appdb", "hidden", ""),
            row("appdb", "odd", "this is not sql"),
            vec![Some("6170706462".into()), Some("637573746F6D657273".into()), None, Some("BASE TABLE".into())],
            // Names in any script arrive whole.
            row("appdb", "kündigung_v", "select `appdb`.`kündigung`.`id` AS `id` from `appdb`.`kündigung`"),
        ];
        let v = Views::from_rows(&rows, true);
        assert!(v.knows(&t("appdb", "customers")) && v.knows(&t("AppDB", "CARDS")));
        assert!(v.knows(&t("mysql", "user")) && !v.knows(&t("appdb", "new_one")));
        assert_eq!(v.reach(&[t("appdb", "kündigung_v")]).via, [t("appdb", "kündigung")]);
        let r = v.reach(&[t("appdb", "cards2")]);
        assert_eq!(r.via, [t("appdb", "cards"), t("appdb", "customers")]);
        assert_eq!(r.views.iter().collect::<Vec<_>>(), ["appdb.cards", "appdb.cards2"]);
        assert!(r.unreadable.is_empty());
        // Names fold as the server folds them.
        assert_eq!(v.reach(&[t("APPDB", "Cards")]).via, [t("appdb", "customers")]);
        // A table is not a view; a cycle ends.
        assert_eq!(v.reach(&[t("appdb", "customers")]), Reached::default());
        assert_eq!(v.reach(&[t("appdb", "loop_a")]).via, [t("appdb", "loop_b")]);
        for name in ["hidden", "odd"] {
            let r = v.reach(&[t("appdb", name)]);
            assert_eq!(r.unreadable, [format!("appdb.{name}")]);
        }
        // Without case folding, names are compared as they are.
        let exact = Views::from_rows(&rows, false);
        assert_eq!(exact.reach(&[t("appdb", "Cards")]), Reached::default());
    }

    #[test]
    fn a_chain_deeper_than_followed_is_unreadable() {
        let rows: Vec<_> =
            (0..40).map(|i| row("d", &format!("v{i}"), &format!("select * from `d`.`v{}`", i + 1))).collect();
        let v = Views::from_rows(&rows, true);
        let r = v.reach(&[t("d", "v0")]);
        assert!(!r.unreadable.is_empty(), "{r:?}");
    }
}
