//! The built-in catalog of PostgreSQL 15 (what `initdb` creates, OID <
//! 16384), embedded for offline classification. A live catalog adds the
//! server's own built-in names, so newer servers' functions are known too.
//! Regenerate the lists from a fresh cluster with
//! `SELECT DISTINCT proname FROM pg_proc WHERE oid < 16384` (and likewise
//! `oprname`, `typname`, and `nspname || '.' || relname` for `pg_catalog`
//! and `information_schema`).

use super::Catalog;

const FUNCTIONS: &str = include_str!("builtin/functions.txt");
const OPERATORS: &str = include_str!("builtin/operators.txt");
const TYPES: &str = include_str!("builtin/types.txt");
const RELATIONS: &str = include_str!("builtin/relations.txt");

/// Functions the grammar emits for SQL syntax that newer servers define
/// (PostgreSQL 16–18) and that are built in wherever they exist.
const GRAMMAR_FUNCTIONS: &[&str] = &["system_user", "merge_action", "any_value"];

pub(super) fn fill(c: &mut Catalog) {
    c.builtin_functions.extend(FUNCTIONS.lines().map(str::to_owned));
    c.builtin_functions.extend(GRAMMAR_FUNCTIONS.iter().map(|s| (*s).to_owned()));
    c.builtin_operators.extend(OPERATORS.lines().map(str::to_owned));
    c.builtin_types.extend(TYPES.lines().map(str::to_owned));
    for (s, n) in RELATIONS.lines().filter_map(|l| l.split_once('.')) {
        c.builtin_relations.insert(s.to_owned(), n.to_owned(), ());
    }
}

/// Catalog relations a rule reaches only with `catalog = "all"`: other
/// sessions' activity and queries, statistics (value distributions of
/// tables a rule may deny), user mappings and role secrets, configuration
/// files, replication and subscription connection strings, large objects.
/// Everything else in `pg_catalog` and `information_schema` is metadata
/// (names, types, definitions) that clients read to work.
pub fn is_sensitive_catalog_relation(schema: &str, name: &str) -> bool {
    if schema != "pg_catalog" {
        return false;
    }
    name.starts_with("pg_stat_")
        || name.starts_with("pg_statio_")
        || matches!(
            name,
            "pg_stats"
                | "pg_stats_ext"
                | "pg_stats_ext_exprs"
                | "pg_statistic"
                | "pg_statistic_ext_data"
                | "pg_authid"
                | "pg_shadow"
                | "pg_user_mapping"
                | "pg_user_mappings"
                | "pg_db_role_setting"
                | "pg_file_settings"
                | "pg_hba_file_rules"
                | "pg_ident_file_mappings"
                | "pg_config"
                | "pg_subscription"
                | "pg_subscription_rel"
                | "pg_replication_slots"
                | "pg_replication_origin"
                | "pg_replication_origin_status"
                | "pg_largeobject"
                | "pg_largeobject_metadata"
                | "pg_locks"
                | "pg_prepared_xacts"
                | "pg_backend_memory_contexts"
                | "pg_shmem_allocations"
                | "pg_wait_events"
                | "pg_aios"
        )
}
