//! The catalog pass: adds to a parsed statement what only the catalog can
//! tell (see the module documentation of `crate::catalog`).

use super::{Catalog, SessionNames, is_sensitive_catalog_relation};
use crate::sql::{Defined, Kind, QualName, Statement, TableRef, Written};

/// Resolves `s`'s names against `cat` for a session with `session`'s
/// search path and pending definitions. The relation names as written are
/// kept (`Statement::written`): resolving again starts from them, so a
/// prepared statement's names are those of the path it runs under.
pub fn resolve(s: &mut Statement, cat: &Catalog, session: &SessionNames) {
    s.unresolve();
    s.written = Some(std::sync::Arc::new(Written {
        reads: s.reads.clone(),
        writes: s.writes.clone(),
        pending_where: s.pending_where.clone(),
    }));
    let pending =
        |what: Defined, name: &QualName| session.pending.iter().any(|(w, n)| *w == what && n.name == name.name);
    let mut flagged: Vec<(String, bool)> = Vec::new();
    for r in &s.refs.calls {
        if pending(Defined::Function, &r.name) || cat.call_reaches_code(&r.name) {
            flagged.push((r.name.to_string(), r.attached));
        }
    }
    for r in &s.refs.operators {
        if pending(Defined::Operator, &r.name) || cat.operator_reaches_code(&r.name) {
            flagged.push((format!("operator {}", r.name), r.attached));
        }
    }
    for r in &s.refs.casts {
        if pending(Defined::Type, &r.name) || cat.cast_reaches_code(&r.name) {
            flagged.push((format!("cast to {}", r.name), r.attached));
        }
    }
    for a in &s.refs.attributes {
        let q = QualName { schema: None, name: a.clone() };
        if pending(Defined::Function, &q) || cat.attribute_reaches_code(a) {
            flagged.push((format!("{a}(…) through attribute notation"), false));
        }
    }
    for (name, attached) in flagged {
        s.kinds.insert(Kind::FunctionCall);
        if attached {
            s.kinds.insert(Kind::DefineCode);
        }
        if !s.functions.contains(&name) {
            s.functions.push(name);
        }
    }

    let path = effective_path(cat, session);
    let skips = Skips { cat, all: session.names_moved || session.role_changed };
    s.reads = resolve_tables(std::mem::take(&mut s.reads), cat, path.as_deref(), &skips);
    s.writes = resolve_tables(std::mem::take(&mut s.writes), cat, path.as_deref(), &skips);
    // A schema renamed or dropped: every relation in it.
    for schema in &s.effects.whole_schemas {
        for rel in cat.relations_in(schema) {
            let t = TableRef { schema: Some(rel.schema.clone()), name: rel.name.clone() };
            if !s.writes.contains(&t) {
                s.writes.push(t);
            }
        }
    }

    for t in &s.reads {
        let Some(schema) = t.schema.as_deref() else { continue };
        if is_sensitive_catalog_relation(schema, &t.name) && !s.sensitive.contains(t) {
            s.sensitive.push(t.clone());
        }
    }
    // Tables reached through views, the parents of partitions and
    // inheritance children (their rows are the parents'), and the children of
    // parents (a parent's rows include theirs): `deny_tables` holds for them too.
    for t in s.reads.iter().chain(&s.writes) {
        let Some(schema) = t.schema.as_deref() else { continue };
        if let Some(rel) = cat.relation_named(schema, &t.name) {
            for oid in rel.reads.iter().chain(&rel.ancestors).chain(&rel.descendants) {
                if let Some(base) = cat.relation(*oid) {
                    let b = TableRef { schema: Some(base.schema.clone()), name: base.name.clone() };
                    if !s.via_views.contains(&b) {
                        s.via_views.push(b);
                    }
                }
            }
        }
    }

    for p in std::mem::take(&mut s.pending_where) {
        if !restricts(&p.target, &p.columns, &s.reads, cat, path.as_deref(), &skips) {
            s.kinds.insert(p.flag);
        }
    }
}

/// The schemas an unqualified relation name is looked up in, in order
/// (`pg_catalog` first unless the path places it), or `None` when the
/// session's path is not known — or names `$user` after the role may have
/// changed (it is the current role, not the login).
fn effective_path<'a>(cat: &'a Catalog, session: &'a SessionNames) -> Option<Vec<&'a str>> {
    if session.path_unknown {
        return None;
    }
    let path = session.search_path.as_deref().unwrap_or(cat.default_search_path.as_slice());
    if session.role_changed && path.iter().any(|s| s == "$user") {
        return None;
    }
    let mut out: Vec<&str> = Vec::with_capacity(path.len() + 1);
    if !path.iter().any(|s| s == "pg_catalog") {
        out.push("pg_catalog");
    }
    for s in path {
        if s == "$user" {
            if !cat.login.is_empty() {
                out.push(&cat.login);
            }
        } else {
            out.push(s);
        }
    }
    Some(out)
}

/// Which schemas on the path holding a name the server may pass by: those
/// the current role may not use, or any, after a statement that may have
/// moved names or privileges since the catalog was read.
struct Skips<'a> {
    cat: &'a Catalog,
    all: bool,
}

impl Skips<'_> {
    fn may_skip(&self, schema: &str) -> bool {
        self.all || self.cat.unusable_schemas.contains(schema)
    }
}

/// Qualifies unqualified relation names as the server will: the first
/// schema on the path that has one, and any before it that the server may
/// pass by (`Skips`). With the path unknown, every schema
/// that has one is listed (the policy then needs all of them allowed, and
/// refuses if any is denied). A name the catalog does not know stays
/// unqualified (see `TablePattern::matches`).
fn resolve_tables(tables: Vec<TableRef>, cat: &Catalog, path: Option<&[&str]>, skips: &Skips<'_>) -> Vec<TableRef> {
    let mut out: Vec<TableRef> = Vec::with_capacity(tables.len());
    let mut push = |t: TableRef| {
        if !out.contains(&t) {
            out.push(t);
        }
    };
    for t in tables {
        if t.schema.is_some() {
            push(t);
            continue;
        }
        match path {
            Some(path) => {
                // The first schema that holds it and that the login may use;
                // one it may not use (the server skips it) counts too.
                let mut found = false;
                for schema in path.iter().filter(|s| cat.has_relation(s, &t.name)) {
                    push(TableRef { schema: Some((*schema).to_owned()), name: t.name.clone() });
                    found = true;
                    if !skips.may_skip(schema) {
                        break;
                    }
                }
                if !found {
                    push(t);
                }
            }
            None => {
                let schemas = cat.schemas_with(&t.name);
                if schemas.is_empty() {
                    push(t);
                } else {
                    for schema in schemas {
                        push(TableRef { schema: Some(schema.to_owned()), name: t.name.clone() });
                    }
                }
            }
        }
    }
    out
}

/// Whether one of `columns` is certainly the target's: a column of the
/// target and of no other table the statement reads.
fn restricts(
    target: &TableRef,
    columns: &[String],
    reads: &[TableRef],
    cat: &Catalog,
    path: Option<&[&str]>,
    skips: &Skips<'_>,
) -> bool {
    let resolved = resolve_tables(vec![target.clone()], cat, path, skips);
    let [target] = resolved.as_slice() else { return false };
    let Some(rel) = cat.resolve_table(target) else { return false };
    let others: Vec<&super::Relation> =
        reads.iter().filter(|t| *t != target).filter_map(|t| cat.resolve_table(t)).collect();
    // An unknown other table might have any column: then nothing is certain.
    if others.len() != reads.iter().filter(|t| *t != target).count() {
        return false;
    }
    columns.iter().any(|c| {
        rel.columns.iter().any(|col| &col.name == c)
            && !others.iter().any(|o| o.columns.iter().any(|col| &col.name == c))
    })
}
