//! What the backend's catalog says about the names a statement uses.
//!
//! PostgreSQL resolves functions, operators, casts, attribute notation
//! (`t.f` may call `f(t)`) and unqualified table names against its catalog;
//! a policy that reads only the text is walked around by anyone who can
//! create `public.lower(int)`. So Gatehouse keeps, per backend, login and
//! database, what is *not* built in (OID ≥ 16384: everything created after
//! `initdb`, extensions included) and classifies any reference that can
//! resolve to such code as [`Kind::FunctionCall`]:
//!
//! - a function name with a user-defined overload anywhere (or unknown);
//! - an operator name with a user-defined overload whose operand types can be
//!   reached from built-in values (or unknown);
//! - a cast to a type whose input, cast function or domain CHECK is user code
//!   (or unknown);
//! - `x.f` / `(x).f` where `f` is a user function of one argument.
//!
//! Code attached to data by someone allowed to attach it (triggers,
//! defaults, CHECKs, type I/O functions of columns, view bodies) is trusted;
//! attaching it is [`Kind::DefineCode`]. The catalog also resolves
//! unqualified relation names as the session's search path does
//! (`pg_catalog` first), expands views to the tables they read (for
//! `deny_tables`), and marks the catalog relations that need `catalog =
//! "all"`.
//!
//! Loading happens in `protocol::postgres::catalog` (a side connection with
//! the session's own backend login); this module is pure.

mod builtin;
pub mod load;
pub mod misses;
mod origins;
mod resolve;

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

pub use builtin::is_sensitive_catalog_relation;
pub use origins::{Bound, Origin};
pub use resolve::resolve;

use crate::sql::{QualName, TableRef};

/// A relation the backend has.
#[derive(Debug, Clone)]
pub struct Relation {
    pub oid: u32,
    pub schema: String,
    pub name: String,
    /// `r` table, `v` view, `m` materialized view, `f` foreign table, `p` partitioned table.
    pub kind: u8,
    /// Columns by position: (attnum, name, type OID). Empty for catalog relations.
    pub columns: Vec<Column>,
    /// For views: the tables (and views) they read, transitively.
    pub reads: Vec<u32>,
    /// The primary key's columns (attnums, in key order); empty without one.
    /// An expression column of an index is attnum 0.
    pub primary_key: Vec<i16>,
    /// For a partition or an inheritance child: its parents, transitively
    /// (`pg_inherits`). Reading it reads their rows: their masking rules and
    /// `deny_tables` apply to it too.
    pub ancestors: Vec<u32>,
    /// Its partitions and inheritance children, transitively: reading it
    /// (without ONLY) reads their rows, so their rules apply to it too.
    pub descendants: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub attnum: i16,
    pub name: String,
    pub type_oid: u32,
}

/// A user-defined function or operator, by where it lives.
#[derive(Debug, Clone, PartialEq, Eq)]
struct UserObject {
    schema: String,
    /// Functions: number of arguments. Operators: unused.
    nargs: u16,
    /// Operators: every operand type can come from built-in values (not only
    /// from a column or cast of an extension's base type).
    reachable: bool,
}

/// Values by schema and name, looked up by borrowed names (no key built
/// per lookup: statements are resolved against these on the data path).
#[derive(Debug)]
struct Qualified<V>(HashMap<String, HashMap<String, V>>);

impl<V> Default for Qualified<V> {
    fn default() -> Self {
        Self(HashMap::new())
    }
}

impl<V> Qualified<V> {
    fn get(&self, schema: &str, name: &str) -> Option<&V> {
        self.0.get(schema)?.get(name)
    }

    fn insert(&mut self, schema: String, name: String, v: V) {
        self.0.entry(schema).or_default().insert(name, v);
    }
}

/// The non-built-in part of one backend database's catalog, as one login sees it.
#[derive(Debug, Default)]
pub struct Catalog {
    builtin_functions: HashSet<String>,
    builtin_operators: HashSet<String>,
    builtin_types: HashSet<String>,
    /// `pg_catalog` and `information_schema` relation names, by schema.
    builtin_relations: Qualified<()>,
    functions: HashMap<String, Vec<UserObject>>,
    operators: HashMap<String, Vec<UserObject>>,
    /// Non-built-in type names, and whether casting to them runs user code.
    types: HashMap<String, bool>,
    /// Built-in type names that a user-defined cast targets.
    cast_targets: HashSet<String>,
    relations: Qualified<u32>,
    by_oid: HashMap<u32, Relation>,
    /// Relation names by name only, for resolution when the search path is unknown.
    relation_schemas: HashMap<String, Vec<String>>,
    /// Non-built-in types by OID: (`typcategory`, base type of a domain or 0), for masking.
    type_info: HashMap<u32, (u8, u32)>,
    /// Views' (and materialized views') lineage, parsed from their definitions.
    view_lineage: HashMap<u32, std::sync::Arc<crate::sql::lineage::Lineage>>,
    /// The login's default search path (as `SHOW search_path` says).
    pub default_search_path: Vec<String>,
    /// The schemas there are (`None`: not read, as in offline tools).
    pub schemas: Option<HashSet<String>>,
    /// Schemas the login may not use (no USAGE): the server skips them on
    /// the search path, so a name there does not hide one further on.
    pub unusable_schemas: HashSet<String>,
    /// The backend login (what `$user` means in the search path).
    pub login: String,
    pub database: String,
    /// The server's Unix socket files (`unix_socket_directories`, `port`).
    pub unix_sockets: Vec<std::path::PathBuf>,
    /// Statements' lineages bound to this snapshot, recently (`bind_shared`).
    bindings: origins::Bindings,
}

impl Catalog {
    /// The built-in catalog alone (PostgreSQL 15's, embedded): what offline
    /// tools (`policy test`, `explain`) know. Names not in it are unknown,
    /// which counts as user code.
    pub fn builtin() -> &'static Catalog {
        static BUILTIN: OnceLock<Catalog> = OnceLock::new();
        BUILTIN.get_or_init(|| {
            let mut c = Catalog { default_search_path: vec!["$user".into(), "public".into()], ..Catalog::default() };
            builtin::fill(&mut c);
            c
        })
    }

    /// A relation by OID (for masking by column identity).
    pub fn relation(&self, oid: u32) -> Option<&Relation> {
        self.by_oid.get(&oid)
    }

    /// Whether values of a type are plain text a masking style can stand in
    /// for: the built-in string types, and user types in the string category
    /// (citext) or domains over one.
    pub fn is_text_type(&self, oid: u32) -> bool {
        let mut oid = oid;
        for _ in 0..8 {
            match oid {
                25 | 1043 | 1042 | 19 | 18 | 705 => return true,
                o if o < 16384 => return false,
                o => match self.type_info.get(&o) {
                    Some((_, base)) if *base != 0 => oid = *base,
                    Some((category, _)) => return *category == b'S',
                    None => return false,
                },
            }
        }
        false
    }

    /// A relation by schema and name.
    pub fn relation_named(&self, schema: &str, name: &str) -> Option<&Relation> {
        self.relations.get(schema, name).and_then(|oid| self.by_oid.get(oid))
    }

    /// The relations a name may be: the one in `schema`, or without one,
    /// every schema's of that name (for deciding towards masking).
    pub fn relations_for_name(&self, schema: Option<&str>, name: &str) -> Vec<u32> {
        match schema {
            Some(s) => self.relation_named(s, name).map(|r| vec![r.oid]).unwrap_or_default(),
            None => self
                .relation_schemas
                .get(name)
                .into_iter()
                .flatten()
                .filter_map(|s| self.relation_named(s, name))
                .map(|r| r.oid)
                .collect(),
        }
    }

    /// The relations of a schema, in no particular order.
    pub fn relations_in<'a>(&'a self, schema: &'a str) -> impl Iterator<Item = &'a Relation> + 'a {
        self.by_oid.values().filter(move |r| r.schema == schema)
    }

    pub fn relation_count(&self) -> usize {
        self.by_oid.len()
    }

    pub fn user_function_count(&self) -> usize {
        self.functions.values().map(Vec::len).sum()
    }

    fn is_builtin_relation(&self, schema: &str, name: &str) -> bool {
        self.builtin_relations.get(schema, name).is_some()
    }

    /// Whether a call to `name` can reach a function that is not built in.
    fn call_reaches_code(&self, name: &QualName) -> bool {
        let user = self.functions.get(&name.name);
        match name.schema.as_deref() {
            // Only pg_catalog is searched: user functions placed there count.
            Some("pg_catalog") => {
                user.is_some_and(|v| v.iter().any(|f| f.schema == "pg_catalog"))
                    || !self.builtin_functions.contains(&name.name)
            }
            Some(schema) => {
                user.is_some_and(|v| v.iter().any(|f| f.schema == schema))
                    || !(schema == "information_schema" && self.builtin_functions.contains(&name.name))
            }
            // Overload resolution looks at every schema on the path and prefers
            // the best argument match, not pg_catalog: any user overload counts.
            None => user.is_some() || !self.builtin_functions.contains(&name.name),
        }
    }

    fn operator_reaches_code(&self, name: &QualName) -> bool {
        let user = self.operators.get(&name.name);
        let reachable = |o: &&UserObject| o.reachable;
        match name.schema.as_deref() {
            // Built-in operators live only in pg_catalog: any other schema is user code.
            Some("pg_catalog") => {
                user.is_some_and(|v| v.iter().filter(reachable).any(|o| o.schema == "pg_catalog"))
                    || !self.builtin_operators.contains(&name.name)
            }
            Some(_) => true,
            None => user.is_some_and(|v| v.iter().any(|o| o.reachable)) || !self.builtin_operators.contains(&name.name),
        }
    }

    fn cast_reaches_code(&self, name: &QualName) -> bool {
        if self.cast_targets.contains(&name.name) {
            return true;
        }
        match self.types.get(&name.name) {
            Some(code) => *code,
            None => !self.builtin_types.contains(&name.name),
        }
    }

    fn attribute_reaches_code(&self, name: &str) -> bool {
        self.functions.get(name).is_some_and(|v| v.iter().any(|f| f.nargs == 1))
    }

    /// Schemas that hold a relation called `name` (user and catalog ones).
    fn schemas_with(&self, name: &str) -> Vec<&str> {
        let mut out: Vec<&str> =
            self.relation_schemas.get(name).map(|v| v.iter().map(String::as_str).collect()).unwrap_or_default();
        for schema in ["pg_catalog", "information_schema"] {
            if self.is_builtin_relation(schema, name) && !out.contains(&schema) {
                out.push(schema);
            }
        }
        out
    }

    /// Whether a relation a statement names (unresolved: without a schema,
    /// in any schema) is one this catalog holds.
    pub fn knows_relation(&self, t: &TableRef) -> bool {
        match t.schema.as_deref() {
            Some(schema) => self.has_relation(schema, &t.name),
            None => {
                self.relation_schemas.contains_key(&t.name)
                    || ["pg_catalog", "information_schema"].iter().any(|s| self.is_builtin_relation(s, &t.name))
            }
        }
    }

    /// [`Catalog::knows_relation`], for a session whose search path is one
    /// of `paths` (each `None` for the login's default; no paths: not
    /// known): an unqualified name is known only where no relation made
    /// since the read could take its place — it is in the first schema of
    /// every path that exists (`pg_catalog` aside: nobody makes relations
    /// there), not merely somewhere. `SET search_path = public, other` and
    /// `other.t`: a view `public.t` made later is what the server reads.
    pub fn knows_relation_on(&self, t: &TableRef, paths: &[Option<&[String]>]) -> bool {
        if !self.knows_relation(t) {
            return false;
        }
        if t.schema.is_some() {
            return true;
        }
        if paths.is_empty() {
            return false;
        }
        paths.iter().all(|p| {
            let path = p.unwrap_or(&self.default_search_path);
            if !path.iter().any(|s| s == "pg_catalog") && self.has_relation("pg_catalog", &t.name) {
                return true;
            }
            for s in path {
                let schema = if s == "$user" { self.login.as_str() } else { s.as_str() };
                if self.unusable_schemas.contains(schema) {
                    continue;
                }
                if self.has_relation(schema, &t.name) {
                    return true;
                }
                let exists = schema != "pg_catalog"
                    && self
                        .schemas
                        .as_ref()
                        .map_or_else(|| self.relations_in(schema).next().is_some(), |all| all.contains(schema));
                if exists {
                    return false;
                }
            }
            false
        })
    }

    fn has_relation(&self, schema: &str, name: &str) -> bool {
        self.relations.get(schema, name).is_some() || self.is_builtin_relation(schema, name)
    }

    fn resolve_table(&self, t: &TableRef) -> Option<&Relation> {
        let schema = t.schema.as_deref()?;
        self.relation_named(schema, &t.name)
    }
}

/// What a session knows about its own name resolution.
#[derive(Debug, Clone, Default)]
pub struct SessionNames {
    /// The session's search path as set by a `SET search_path` Gatehouse
    /// saw; `None` for the login's default.
    pub search_path: Option<std::sync::Arc<[String]>>,
    /// The path is not known (set by code Gatehouse cannot read, or inside a
    /// transaction whose outcome is not known yet).
    pub path_unknown: bool,
    /// Names being defined as code in transactions not yet committed or
    /// not yet read back (this session's or others' on the same backend).
    pub pending: Vec<(crate::sql::Defined, QualName)>,
    /// Relations may have been dropped, renamed or moved, or what the
    /// current role may use changed, since the catalog was read
    /// (`sql::Effects::moves_names`): an unqualified name may reach past
    /// any schema on the path that holds it.
    pub names_moved: bool,
    /// The current role may not be the login any more (`SET ROLE`, or code
    /// Gatehouse cannot read, which may call `set_config('role', …)`):
    /// `$user` on the path names a schema Gatehouse does not know, and the
    /// schemas the server passes by are those the current role may not use.
    pub role_changed: bool,
}

/// A `search_path` value naming exactly `path`'s schemas: each quoted
/// (`"$user"` keeps its meaning quoted).
pub fn format_search_path(path: &[String]) -> String {
    path.iter().map(|s| format!("\"{}\"", s.replace('"', "\"\""))).collect::<Vec<_>>().join(", ")
}

/// Splits a `search_path` value (`"$user", public`) into schema names.
pub fn parse_search_path(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| match s.strip_prefix('"').and_then(|x| x.strip_suffix('"')) {
            Some(quoted) => quoted.replace("\"\"", "\""),
            None => s.to_ascii_lowercase(),
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests;
