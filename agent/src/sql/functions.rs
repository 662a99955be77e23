//! Functions a query may call without being classified as
//! [`Kind::FunctionCall`](super::Kind::FunctionCall).
//!
//! Only built-ins without side effects are listed: no configuration
//! (`set_config`), no files (`pg_read_file`, `lo_import`), no other
//! sessions (`pg_terminate_backend`), no remote connections (`dblink`), no
//! sequences (`nextval`), no locks (`pg_advisory_lock`), no sleeping. A name
//! only counts when written bare or qualified with `pg_catalog`; names are
//! compared as the parser folded them, so a quoted `"LOWER"` is not `lower`.

use pg_query::NodeEnum;
use pg_query::protobuf as pb;

/// Side-effect-free built-ins. Besides the usual helpers this holds the
/// functions the grammar itself emits for SQL-standard syntax (`EXTRACT`,
/// `OVERLAY`, `AT TIME ZONE`, `COLLATION FOR`, `IS NORMALIZED`, `SYSTEM_USER`).
const ALLOWED: &[&str] = &[
    // Aggregates.
    "count",
    "sum",
    "avg",
    "min",
    "max",
    "array_agg",
    "string_agg",
    "bool_and",
    "bool_or",
    "every",
    "json_agg",
    "jsonb_agg",
    "json_object_agg",
    // Window functions.
    "row_number",
    "rank",
    "dense_rank",
    "lag",
    "lead",
    "first_value",
    "last_value",
    "ntile",
    "percent_rank",
    "cume_dist",
    // Strings.
    "lower",
    "upper",
    "length",
    "char_length",
    "substr",
    "substring",
    "trim",
    "btrim",
    "ltrim",
    "rtrim",
    "replace",
    "concat",
    "concat_ws",
    "left",
    "right",
    "position",
    "split_part",
    "overlay",
    "normalize",
    "is_normalized",
    "md5",
    "encode",
    "decode",
    "format",
    "regexp_replace",
    "regexp_matches",
    "regexp_split_to_array",
    // Comparison helpers (most are grammar nodes rather than calls).
    "nullif",
    "greatest",
    "least",
    // Numbers.
    "abs",
    "round",
    "ceil",
    "floor",
    "trunc",
    "mod",
    "power",
    "sqrt",
    // Dates and times.
    "now",
    "date_trunc",
    "date_part",
    "extract",
    "age",
    "timezone",
    "to_char",
    "to_date",
    "to_timestamp",
    "to_number",
    // Arrays, sets, JSON.
    "array_length",
    "unnest",
    "generate_series",
    "jsonb_build_object",
    "json_build_object",
    "jsonb_extract_path_text",
    // Session information.
    "version",
    "pg_collation_for",
    "system_user",
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

/// Whether a call is to an allowlisted, side-effect-free built-in.
pub(super) fn is_allowed(call: &pb::FuncCall) -> bool {
    let parts: Option<Vec<&str>> = call
        .funcname
        .iter()
        .map(|n| match &n.node {
            Some(NodeEnum::String(s)) => Some(s.sval.as_str()),
            _ => None,
        })
        .collect();
    match parts.as_deref() {
        Some([name]) | Some(["pg_catalog", name]) => ALLOWED.contains(name),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dangerous_functions_are_not_allowed() {
        for f in [
            "set_config",
            "current_setting",
            "pg_read_file",
            "pg_read_binary_file",
            "pg_ls_dir",
            "pg_terminate_backend",
            "pg_cancel_backend",
            "lo_import",
            "lo_export",
            "dblink",
            "dblink_exec",
            "pg_sleep",
            "nextval",
            "setval",
            "pg_advisory_lock",
            "pg_advisory_xact_lock",
            "pg_notify",
            "pg_reload_conf",
            "pg_switch_wal",
            "query_to_xml",
        ] {
            assert!(!ALLOWED.contains(&f), "{f} must not be allowlisted");
        }
    }
}
