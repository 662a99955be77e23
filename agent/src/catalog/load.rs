//! The catalog query, and building a [`Catalog`] from its answer. Sans-IO:
//! the caller runs [`QUERY`] (one simple Query, several result sets, text
//! format) with the session's own backend login and passes the rows here.

use std::collections::{HashMap, HashSet};

use super::{Catalog, Column, Relation, UserObject, builtin, parse_search_path};

/// One row of text values (`None` is NULL).
pub type Row = Vec<Option<String>>;

/// Every statement's rows, in order.
pub type Results = Vec<Vec<Row>>;

/// What the catalog load reads, in one round trip. Every catalog it reads is
/// readable by any login (PUBLIC), so the session's own least-privileged
/// login suffices.
pub const QUERY: &str = "\
SELECT current_user, current_setting('search_path'), current_database(),
 (SELECT setting FROM pg_catalog.pg_settings WHERE name = 'unix_socket_directories'), current_setting('port'),
 (SELECT pg_catalog.string_agg(pg_catalog.encode(pg_catalog.convert_to(nspname, 'UTF8'), 'hex'), ',')
  FROM pg_catalog.pg_namespace WHERE nspname !~ '^pg_(toast|temp_)'),
 (SELECT pg_catalog.string_agg(pg_catalog.encode(pg_catalog.convert_to(nspname, 'UTF8'), 'hex'), ',')
  FROM pg_catalog.pg_namespace WHERE nspname !~ '^pg_(toast|temp_)' AND NOT pg_catalog.has_schema_privilege(oid, 'USAGE'));
SELECT DISTINCT 'f', proname FROM pg_catalog.pg_proc WHERE oid < 16384
 UNION ALL SELECT DISTINCT 'o', oprname FROM pg_catalog.pg_operator WHERE oid < 16384
 UNION ALL SELECT DISTINCT 't', typname FROM pg_catalog.pg_type WHERE oid < 16384;
SELECT n.nspname, p.proname, p.pronargs FROM pg_catalog.pg_proc p
 JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace WHERE p.oid >= 16384;
SELECT n.nspname, o.oprname, NOT EXISTS (SELECT 1 FROM pg_catalog.pg_type t
 WHERE t.oid IN (o.oprleft, o.oprright) AND t.oid >= 16384 AND t.typtype = 'b')
 FROM pg_catalog.pg_operator o JOIN pg_catalog.pg_namespace n ON n.oid = o.oprnamespace WHERE o.oid >= 16384;
SELECT t.oid, t.typname, t.typtype, t.typbasetype, t.typelem,
 EXISTS (SELECT 1 FROM pg_catalog.pg_constraint c WHERE c.contypid = t.oid),
 EXISTS (SELECT 1 FROM pg_catalog.pg_cast c WHERE c.casttarget = t.oid AND c.oid >= 16384),
 t.typcategory
 FROM pg_catalog.pg_type t WHERE t.oid >= 16384;
SELECT DISTINCT t.typname FROM pg_catalog.pg_cast c JOIN pg_catalog.pg_type t ON t.oid = c.casttarget
 WHERE c.oid >= 16384 AND t.oid < 16384;
SELECT c.oid, n.nspname, c.relname, c.relkind FROM pg_catalog.pg_class c
 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'v', 'm', 'f', 'p') AND n.nspname !~ '^pg_(toast|temp_)';
SELECT a.attrelid, a.attnum, a.attname, a.atttypid FROM pg_catalog.pg_attribute a
 JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
 WHERE a.attnum > 0 AND NOT a.attisdropped AND c.oid >= 16384 AND c.relkind IN ('r', 'v', 'm', 'f', 'p')
 ORDER BY a.attrelid, a.attnum;
SELECT DISTINCT r.ev_class, d.refobjid FROM pg_catalog.pg_rewrite r
 JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass AND d.objid = r.oid
 AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass
 WHERE d.refobjid <> r.ev_class AND r.ev_class >= 16384;
SELECT c.oid, pg_catalog.pg_get_viewdef(c.oid) FROM pg_catalog.pg_class c
 WHERE c.relkind IN ('v', 'm') AND c.oid >= 16384;
SELECT i.indrelid, i.indkey::pg_catalog.text FROM pg_catalog.pg_index i
 WHERE i.indisprimary AND i.indrelid >= 16384;
SELECT inhrelid, inhparent FROM pg_catalog.pg_inherits WHERE inhrelid >= 16384;
";

/// The number of result sets [`QUERY`] answers with.
pub const RESULT_SETS: usize = 12;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("the catalog query answered {got} result sets, expected {RESULT_SETS}")]
    Shape { got: usize },
    #[error("unexpected value in the catalog answer: {what}")]
    Value { what: &'static str },
}

fn text<'r>(row: &'r Row, i: usize, what: &'static str) -> Result<&'r str, LoadError> {
    row.get(i).and_then(|v| v.as_deref()).ok_or(LoadError::Value { what })
}

fn number<T: std::str::FromStr>(row: &Row, i: usize, what: &'static str) -> Result<T, LoadError> {
    text(row, i, what)?.parse().map_err(|_| LoadError::Value { what })
}

fn flag(row: &Row, i: usize, what: &'static str) -> Result<bool, LoadError> {
    match text(row, i, what)? {
        "t" => Ok(true),
        "f" => Ok(false),
        _ => Err(LoadError::Value { what }),
    }
}

/// A comma-separated list of hex-encoded names.
fn hex_names(list: &str) -> Result<HashSet<String>, LoadError> {
    list.split(',')
        .filter(|h| !h.is_empty())
        .map(|h| {
            crate::audit::export::unhex(h)
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or(LoadError::Value { what: "schema name" })
        })
        .collect()
}

/// Builds the catalog from the answer to [`QUERY`].
pub fn build(results: &Results) -> Result<Catalog, LoadError> {
    let [
        session,
        names,
        functions,
        operators,
        types,
        cast_targets,
        relations,
        columns,
        view_deps,
        view_defs,
        keys,
        inherits,
    ] = results.as_slice()
    else {
        return Err(LoadError::Shape { got: results.len() });
    };
    let mut c = Catalog::default();
    builtin::fill(&mut c);
    if let Some(row) = session.first() {
        c.login = text(row, 0, "current_user")?.to_owned();
        c.default_search_path = parse_search_path(text(row, 1, "search_path")?);
        c.database = text(row, 2, "current_database")?.to_owned();
        // The schemas there are (hex, so any name survives the list), for
        // telling which names a new relation could shadow (`Catalog::knows_relation_on`).
        if let Some(Some(list)) = row.get(5) {
            c.schemas = Some(hex_names(list)?);
        }
        // And those the login may not use, which the server skips on the path.
        if let Some(Some(list)) = row.get(6) {
            c.unusable_schemas = hex_names(list)?;
        }
        // Where else the server listens (see `protocol::local_socket`); a
        // login without pg_read_all_settings is not told: the defaults
        // (Debian's, then PostgreSQL's own) are looked at.
        if let Some(Some(port)) = row.get(4) {
            let dirs = row.get(3).cloned().flatten().unwrap_or_else(|| "/var/run/postgresql, /tmp".into());
            c.unix_sockets = crate::protocol::local_socket::postgres_paths(&dirs, port);
        }
    }
    for row in names {
        let name = text(row, 1, "built-in name")?.to_owned();
        match text(row, 0, "built-in kind")? {
            "f" => c.builtin_functions.insert(name),
            "o" => c.builtin_operators.insert(name),
            "t" => c.builtin_types.insert(name),
            _ => return Err(LoadError::Value { what: "built-in kind" }),
        };
    }
    for row in functions {
        let f = UserObject {
            schema: text(row, 0, "function schema")?.to_owned(),
            nargs: number(row, 2, "pronargs")?,
            reachable: true,
        };
        c.functions.entry(text(row, 1, "function name")?.to_owned()).or_default().push(f);
    }
    for row in operators {
        let o = UserObject {
            schema: text(row, 0, "operator schema")?.to_owned(),
            nargs: 0,
            reachable: flag(row, 2, "operator reach")?,
        };
        c.operators.entry(text(row, 1, "operator name")?.to_owned()).or_default().push(o);
    }
    build_types(&mut c, types)?;
    for row in cast_targets {
        c.cast_targets.insert(text(row, 0, "cast target")?.to_owned());
    }
    for row in relations {
        let oid: u32 = number(row, 0, "relation oid")?;
        let schema = text(row, 1, "relation schema")?.to_owned();
        let name = text(row, 2, "relation name")?.to_owned();
        let kind = text(row, 3, "relkind")?.bytes().next().unwrap_or(b'r');
        if oid < 16384 {
            c.builtin_relations.insert(schema, name, ());
            continue;
        }
        c.relations.insert(schema.clone(), name.clone(), oid);
        c.relation_schemas.entry(name.clone()).or_default().push(schema.clone());
        c.by_oid.insert(
            oid,
            Relation {
                oid,
                schema,
                name,
                kind,
                columns: Vec::new(),
                reads: Vec::new(),
                primary_key: Vec::new(),
                ancestors: Vec::new(),
                descendants: Vec::new(),
            },
        );
    }
    for row in columns {
        let oid: u32 = number(row, 0, "attrelid")?;
        let col = Column {
            attnum: number(row, 1, "attnum")?,
            name: text(row, 2, "attname")?.to_owned(),
            type_oid: number(row, 3, "atttypid")?,
        };
        if let Some(rel) = c.by_oid.get_mut(&oid) {
            rel.columns.push(col);
        }
    }
    let mut direct: HashMap<u32, Vec<u32>> = HashMap::new();
    for row in view_deps {
        direct.entry(number(row, 0, "view oid")?).or_default().push(number(row, 1, "view dependency")?);
    }
    for (view, _) in direct.iter() {
        let reads = closure(*view, &direct);
        if let Some(rel) = c.by_oid.get_mut(view) {
            rel.reads = reads;
        }
    }
    for row in view_defs {
        let oid: u32 = number(row, 0, "view oid")?;
        // A definition that does not parse has no lineage: its columns count
        // as derived from every table the view reads (see `Catalog::column_origins`).
        if let Some(l) = row.get(1).and_then(|v| v.as_deref()).and_then(crate::sql::lineage::of_sql) {
            c.view_lineage.insert(oid, std::sync::Arc::new(l));
        }
    }
    for row in keys {
        let oid: u32 = number(row, 0, "indrelid")?;
        let cols = text(row, 1, "indkey")?
            .split_ascii_whitespace()
            .map(|n| n.parse::<i16>().map_err(|_| LoadError::Value { what: "indkey" }))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(rel) = c.by_oid.get_mut(&oid) {
            rel.primary_key = cols;
        }
    }
    // Partitions and inheritance children: their parents, transitively.
    let mut parents: HashMap<u32, Vec<u32>> = HashMap::new();
    for row in inherits {
        parents.entry(number(row, 0, "inhrelid")?).or_default().push(number(row, 1, "inhparent")?);
    }
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for (child, ps) in &parents {
        for p in ps {
            children.entry(*p).or_default().push(*child);
        }
    }
    for child in parents.keys() {
        let ancestors = closure(*child, &parents);
        if let Some(rel) = c.by_oid.get_mut(child) {
            rel.ancestors = ancestors;
        }
    }
    for parent in children.keys() {
        let descendants = closure(*parent, &children);
        if let Some(rel) = c.by_oid.get_mut(parent) {
            rel.descendants = descendants;
        }
    }
    Ok(c)
}

/// Non-built-in types: casting to one runs user code when its input is a
/// user function (base types), a user cast targets it, or it is a domain
/// (over a domain) with a constraint, or a range (canonical and subtype
/// functions). Enums and composites use built-in I/O.
fn build_types(c: &mut Catalog, rows: &[Row]) -> Result<(), LoadError> {
    struct T {
        name: String,
        kind: u8,
        base: u32,
        elem: u32,
        constrained: bool,
        cast: bool,
        category: u8,
    }
    let mut by_oid: HashMap<u32, T> = HashMap::new();
    for row in rows {
        let t = T {
            name: text(row, 1, "typname")?.to_owned(),
            kind: text(row, 2, "typtype")?.bytes().next().unwrap_or(b'b'),
            base: number(row, 3, "typbasetype")?,
            elem: number(row, 4, "typelem")?,
            constrained: flag(row, 5, "domain constraint")?,
            cast: flag(row, 6, "user cast")?,
            category: text(row, 7, "typcategory")?.bytes().next().unwrap_or(b'U'),
        };
        by_oid.insert(number(row, 0, "type oid")?, t);
    }
    fn code(oid: u32, all: &HashMap<u32, T>, depth: usize) -> bool {
        let Some(t) = all.get(&oid) else { return false };
        if depth > 32 {
            return true;
        }
        t.cast
            || matches!(t.kind, b'b' if t.elem == 0)
            || matches!(t.kind, b'r' | b'm')
            || (t.kind == b'd' && (t.constrained || code(t.base, all, depth + 1)))
            || (t.elem != 0 && code(t.elem, all, depth + 1))
    }
    for (oid, t) in &by_oid {
        c.type_info.insert(*oid, (t.category, if t.kind == b'd' { t.base } else { 0 }));
    }
    let names: Vec<(String, bool)> = by_oid.iter().map(|(oid, t)| (t.name.clone(), code(*oid, &by_oid, 0))).collect();
    for (name, is_code) in names {
        let e = c.types.entry(name).or_insert(false);
        *e |= is_code;
    }
    Ok(())
}

/// Everything a view reads, following views through views (or every
/// ancestor of a partition or inheritance child).
fn closure(start: u32, direct: &HashMap<u32, Vec<u32>>) -> Vec<u32> {
    let mut seen: HashSet<u32> = HashSet::new();
    let mut stack = vec![start];
    let mut out = Vec::new();
    while let Some(v) = stack.pop() {
        for dep in direct.get(&v).into_iter().flatten() {
            if *dep != start && seen.insert(*dep) {
                out.push(*dep);
                stack.push(*dep);
            }
        }
        if seen.len() > 10_000 {
            break;
        }
    }
    out
}
