//! Built-in functions that count as [`Kind::FunctionCall`](super::Kind::FunctionCall)
//! although PostgreSQL ships them: they reach outside the statement's own
//! rows. Every other built-in is an ordinary part of a query; whether a
//! name can reach code that is *not* built in is decided against the
//! backend's catalog (`crate::catalog`), not here.
//!
//! A name only counts as one of these when written bare or qualified with
//! `pg_catalog` (the schema every session searches first for functions);
//! names are compared as the parser folded them.

use pg_query::NodeEnum;
use pg_query::protobuf as pb;

use super::QualName;

/// Built-ins with effects beyond the rows a query reads, by family.
const DANGEROUS: &[&str] = &[
    // Files on the database server.
    "pg_read_file",
    "pg_read_binary_file",
    "pg_stat_file",
    "pg_ls_dir",
    "pg_ls_logdir",
    "pg_ls_waldir",
    "pg_ls_tmpdir",
    "pg_ls_archive_statusdir",
    "pg_ls_logicalsnapdir",
    "pg_ls_logicalmapdir",
    "pg_ls_replslotdir",
    "pg_file_write",
    "pg_file_rename",
    "pg_file_unlink",
    "pg_file_sync",
    "pg_logdir_ls",
    "pg_current_logfile",
    // Large objects (server files and shared storage).
    "lo_import",
    "lo_export",
    "lo_create",
    "lo_creat",
    "lo_unlink",
    "lo_open",
    "lo_close",
    "loread",
    "lowrite",
    "lo_lseek",
    "lo_lseek64",
    "lo_tell",
    "lo_tell64",
    "lo_truncate",
    "lo_truncate64",
    "lo_get",
    "lo_put",
    "lo_from_bytea",
    // Settings.
    "set_config",
    // Other sessions and the server process.
    "pg_cancel_backend",
    "pg_terminate_backend",
    "pg_reload_conf",
    "pg_rotate_logfile",
    "pg_promote",
    "pg_log_backend_memory_contexts",
    "pg_stat_reset",
    "pg_stat_reset_shared",
    "pg_stat_reset_single_table_counters",
    "pg_stat_reset_single_function_counters",
    "pg_stat_reset_slru",
    "pg_stat_reset_replication_slot",
    "pg_stat_reset_subscription_stats",
    "pg_stat_reset_backend_stats",
    "pg_stat_clear_snapshot",
    // Waiting and locking.
    "pg_sleep",
    "pg_sleep_for",
    "pg_sleep_until",
    "pg_advisory_lock",
    "pg_advisory_lock_shared",
    "pg_advisory_xact_lock",
    "pg_advisory_xact_lock_shared",
    "pg_try_advisory_lock",
    "pg_try_advisory_lock_shared",
    "pg_try_advisory_xact_lock",
    "pg_try_advisory_xact_lock_shared",
    // Sequences: advancing one is a write.
    "nextval",
    "setval",
    // Notifications.
    "pg_notify",
    // Functions that run SQL given as text, or read a table named by a
    // value: READS_BY_VALUE, checked with this list (`is_dangerous`).
    // Replication, WAL and backups.
    "pg_create_physical_replication_slot",
    "pg_create_logical_replication_slot",
    "pg_drop_replication_slot",
    "pg_copy_physical_replication_slot",
    "pg_copy_logical_replication_slot",
    "pg_replication_slot_advance",
    "pg_logical_slot_get_changes",
    "pg_logical_slot_peek_changes",
    "pg_logical_slot_get_binary_changes",
    "pg_logical_slot_peek_binary_changes",
    "pg_logical_emit_message",
    "pg_sync_replication_slots",
    "pg_replication_origin_create",
    "pg_replication_origin_drop",
    "pg_replication_origin_session_setup",
    "pg_replication_origin_session_reset",
    "pg_replication_origin_advance",
    "pg_replication_origin_xact_setup",
    "pg_replication_origin_xact_reset",
    "pg_switch_wal",
    "pg_create_restore_point",
    "pg_backup_start",
    "pg_backup_stop",
    "pg_start_backup",
    "pg_stop_backup",
    "pg_wal_replay_pause",
    "pg_wal_replay_resume",
    "pg_import_system_collations",
    "pg_export_snapshot",
    // Index maintenance that writes.
    "brin_summarize_new_values",
    "brin_summarize_range",
    "brin_desummarize_range",
    "gin_clean_pending_list",
    // Statistics and activity of other sessions (the catalog level governs the views over them).
    "pg_stat_get_activity",
    "pg_stat_get_backend_activity",
    "pg_stat_get_backend_client_addr",
    "pg_stat_get_backend_userid",
    "pg_stat_get_backend_pid",
    "pg_stat_get_backend_wait_event",
    "pg_stat_get_progress_info",
    "pg_get_backend_memory_contexts",
    "pg_get_shmem_allocations",
    "pg_show_all_file_settings",
    "pg_hba_file_rules",
    "pg_ident_file_mappings",
    "pg_config",
    "pg_get_replication_slots",
    // Binary upgrade support.
    "binary_upgrade_set_next_pg_type_oid",
    "binary_upgrade_set_next_heap_pg_class_oid",
];

/// The name of a called function as written (`schema.name` when qualified).
pub(super) fn call_name(call: &pb::FuncCall) -> String {
    let parts: Vec<&str> = call
        .funcname
        .iter()
        .map(|n| match &n.node {
            Some(NodeEnum::String(s)) => s.sval.as_str(),
            // The grammar only puts names here; anything else is shown, not trusted.
            _ => "?",
        })
        .collect();
    parts.join(".")
}

/// The called name, schema-qualified when written so; `None` if the
/// grammar put something other than names there (never seen; treated as
/// unknown code by the caller).
pub(super) fn qual_name(names: &[pg_query::Node]) -> Option<QualName> {
    let parts: Option<Vec<&str>> = names
        .iter()
        .map(|n| match &n.node {
            Some(NodeEnum::String(s)) => Some(s.sval.as_str()),
            _ => None,
        })
        .collect();
    match parts?.as_slice() {
        [name] => Some(QualName { schema: None, name: (*name).to_owned() }),
        // `db.schema.name`: the database part must be the current one; keep schema and name.
        [.., schema, name] => Some(QualName { schema: Some((*schema).to_owned()), name: (*name).to_owned() }),
        [] => None,
    }
}

/// Whether `name` (bare or `pg_catalog.`-qualified) is a dangerous built-in.
pub(crate) fn is_dangerous(name: &QualName) -> bool {
    match name.schema.as_deref() {
        None | Some("pg_catalog") => {
            DANGEROUS.contains(&name.name.as_str()) || READS_BY_VALUE.contains(&name.name.as_str())
        }
        Some(_) => false,
    }
}

/// Built-ins that read rows no lineage sees: SQL given as text, or a table,
/// schema, database or cursor named by a value (`table_to_xml('t', …)`).
/// Dangerous too (see [`is_dangerous`]); so is the two-argument
/// `ts_rewrite` (see [`runs_query_text`]).
const READS_BY_VALUE: &[&str] = &[
    "query_to_xml",
    "query_to_xmlschema",
    "query_to_xml_and_xmlschema",
    "cursor_to_xml",
    "cursor_to_xmlschema",
    "table_to_xml",
    "table_to_xmlschema",
    "table_to_xml_and_xmlschema",
    "schema_to_xml",
    "schema_to_xmlschema",
    "schema_to_xml_and_xmlschema",
    "database_to_xml",
    "database_to_xmlschema",
    "database_to_xml_and_xmlschema",
    "ts_stat",
];

/// Whether a call, named as [`call_name`] wrote it, reads rows no lineage
/// sees: one of [`READS_BY_VALUE`] or `ts_rewrite` in any form (by its last
/// part: a user function of such a name in another schema counts too,
/// towards refusing).
pub(super) fn reads_unseen(call: &str) -> bool {
    let name = call.rsplit('.').next().unwrap_or(call);
    READS_BY_VALUE.contains(&name) || name == "ts_rewrite"
}

/// A built-in that keeps its arguments where a later statement reads them
/// back: every [`is_dangerous`] one (a setting, a sequence, a notification, a
/// lock, a large object, a file…), and `setseed`, whose argument `random()`
/// gives back (it is not dangerous otherwise: rules need not grant it).
pub(crate) fn keeps_arguments(name: &QualName) -> bool {
    is_dangerous(name) || (matches!(name.schema.as_deref(), None | Some("pg_catalog")) && name.name == "setseed")
}

/// A call of a built-in that runs SQL given as text in one of its forms
/// only: `ts_rewrite(query, select text)` executes the SELECT it is given
/// (the three-`tsquery` form does not).
pub(crate) fn runs_query_text(name: &QualName, args: usize) -> bool {
    matches!(name.schema.as_deref(), None | Some("pg_catalog")) && name.name == "ts_rewrite" && args != 3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dangerous_functions_are_listed() {
        for f in [
            "set_config",
            "pg_read_file",
            "pg_read_binary_file",
            "pg_ls_dir",
            "pg_terminate_backend",
            "pg_cancel_backend",
            "lo_import",
            "lo_export",
            "pg_sleep",
            "nextval",
            "setval",
            "pg_advisory_lock",
            "pg_advisory_xact_lock",
            "pg_notify",
            "pg_reload_conf",
            "pg_switch_wal",
            "query_to_xml",
            "ts_stat",
        ] {
            assert!(is_dangerous(&QualName { schema: None, name: f.into() }), "{f}");
            assert!(is_dangerous(&QualName { schema: Some("pg_catalog".into()), name: f.into() }), "{f}");
        }
        // Unlocking one's own advisory locks is what connection pools do on release.
        assert!(!is_dangerous(&QualName { schema: None, name: "pg_advisory_unlock_all".into() }));
        // ts_rewrite runs the SELECT text of its two-argument form.
        let ts_rewrite = QualName { schema: Some("pg_catalog".into()), name: "ts_rewrite".into() };
        assert!(runs_query_text(&ts_rewrite, 2));
        assert!(!runs_query_text(&ts_rewrite, 3));
        // A user's own function of that name is decided by the catalog, not this list.
        assert!(!is_dangerous(&QualName { schema: Some("public".into()), name: "pg_sleep".into() }));
    }
}
