//! Which [`Kind`]s a single parse-tree node contributes to its statement.
//!
//! The match over node types is exhaustive on purpose: every node type
//! pg_query knows was looked at and either names a kind, contributes none
//! (expressions, clauses, the parts of a statement), or is a node the raw
//! grammar never produces, which classifies as [`Kind::Other`] so that a
//! surprise fails closed.

use pg_query::protobuf as pb;
use pg_query::{Node, NodeEnum, NodeRef};

use super::Kind;

/// The kinds `node` itself contributes (its children are visited separately).
pub(super) fn node_kinds(node: NodeRef<'_>) -> Vec<Kind> {
    match node {
        NodeRef::SelectStmt(_) | NodeRef::FetchStmt(_) => vec![Kind::Select],
        NodeRef::InsertStmt(s) => {
            let upsert = s
                .on_conflict_clause
                .as_ref()
                .is_some_and(|c| c.action == pb::OnConflictAction::OnconflictUpdate as i32);
            if upsert { vec![Kind::Insert, Kind::Update] } else { vec![Kind::Insert] }
        }
        // The "without WHERE" flags need the target's name: the walker adds them (`restrict.rs`).
        NodeRef::UpdateStmt(_) => vec![Kind::Update],
        NodeRef::DeleteStmt(_) => vec![Kind::Delete],
        NodeRef::MergeStmt(s) => {
            let mut kinds = vec![Kind::Merge];
            for clause in &s.merge_when_clauses {
                if let Some(NodeEnum::MergeWhenClause(c)) = &clause.node {
                    match pb::CmdType::try_from(c.command_type) {
                        Ok(pb::CmdType::CmdUpdate) => kinds.push(Kind::Update),
                        Ok(pb::CmdType::CmdDelete) => kinds.push(Kind::Delete),
                        Ok(pb::CmdType::CmdInsert) => kinds.push(Kind::Insert),
                        Ok(pb::CmdType::CmdNothing) => {}
                        _ => kinds.push(Kind::Other),
                    }
                }
            }
            kinds
        }
        NodeRef::CopyStmt(s) => vec![copy_kind(s)],
        NodeRef::VariableSetStmt(s) => vec![set_kind(s)],
        NodeRef::VariableShowStmt(_) => vec![Kind::Show],
        // DISCARD ALL resets the session to what it was at login (Gatehouse's
        // own login, settings and guard rails): housekeeping, not a change of identity.
        NodeRef::DiscardStmt(_) => vec![Kind::Discard],
        NodeRef::GrantStmt(s) => vec![if s.is_grant { Kind::Grant } else { Kind::Revoke }],
        NodeRef::GrantRoleStmt(s) => vec![if s.is_grant { Kind::Grant } else { Kind::Revoke }],
        NodeRef::AlterDefaultPrivilegesStmt(_) => vec![Kind::Grant],

        // Statements that define code or attach it to data: what they make
        // runs later, inside other statements, where the text does not show it.
        NodeRef::CreateFunctionStmt(_)
        | NodeRef::CreateTrigStmt(_)
        | NodeRef::RuleStmt(_)
        | NodeRef::CreateEventTrigStmt(_)
        | NodeRef::CreateCastStmt(_)
        | NodeRef::CreateTransformStmt(_)
        | NodeRef::CreatePlangStmt(_)
        | NodeRef::CreateOpClassStmt(_)
        | NodeRef::CreateOpFamilyStmt(_)
        | NodeRef::CreateConversionStmt(_)
        | NodeRef::CreateAmStmt(_)
        | NodeRef::CreateFdwStmt(_)
        | NodeRef::CreateExtensionStmt(_) => vec![Kind::Create, Kind::DefineCode],
        NodeRef::AlterFunctionStmt(_)
        | NodeRef::AlterEventTrigStmt(_)
        | NodeRef::AlterOpFamilyStmt(_)
        | NodeRef::AlterFdwStmt(_)
        | NodeRef::AlterOperatorStmt(_)
        | NodeRef::AlterTypeStmt(_)
        | NodeRef::AlterExtensionStmt(_)
        | NodeRef::AlterExtensionContentsStmt(_) => vec![Kind::Alter, Kind::DefineCode],
        NodeRef::DefineStmt(s) => {
            if defines_code(s) {
                vec![Kind::Create, Kind::DefineCode]
            } else {
                vec![Kind::Create]
            }
        }
        NodeRef::CreateRangeStmt(s) => {
            let code = s.params.iter().any(|p| {
                matches!(&p.node, Some(NodeEnum::DefElem(d)) if matches!(d.defname.as_str(), "subtype_diff" | "canonical" | "subtype_opclass"))
            });
            if code { vec![Kind::Create, Kind::DefineCode] } else { vec![Kind::Create] }
        }
        NodeRef::RenameStmt(s) if is_code_object(s.rename_type) => vec![Kind::Alter, Kind::DefineCode],
        NodeRef::AlterObjectSchemaStmt(s) if is_code_object(s.object_type) => vec![Kind::Alter, Kind::DefineCode],
        NodeRef::AlterOwnerStmt(s) if is_code_object(s.object_type) => vec![Kind::Alter, Kind::DefineCode],
        NodeRef::AlterTableCmd(c) => alter_table_cmd_kinds(c),

        NodeRef::IntoClause(_)
        | NodeRef::CreateStmt(_)
        | NodeRef::CreateTableAsStmt(_)
        | NodeRef::ViewStmt(_)
        | NodeRef::IndexStmt(_)
        | NodeRef::CreateSeqStmt(_)
        | NodeRef::CreateSchemaStmt(_)
        | NodeRef::CreatedbStmt(_)
        | NodeRef::CreateRoleStmt(_)
        | NodeRef::CreateDomainStmt(_)
        | NodeRef::CompositeTypeStmt(_)
        | NodeRef::CreateEnumStmt(_)
        | NodeRef::CreateForeignServerStmt(_)
        | NodeRef::CreateForeignTableStmt(_)
        | NodeRef::CreateUserMappingStmt(_)
        | NodeRef::CreateTableSpaceStmt(_)
        | NodeRef::CreatePolicyStmt(_)
        | NodeRef::CreatePublicationStmt(_)
        | NodeRef::CreateSubscriptionStmt(_)
        | NodeRef::CreateStatsStmt(_)
        | NodeRef::ImportForeignSchemaStmt(_) => vec![Kind::Create],

        NodeRef::AlterTableStmt(_)
        | NodeRef::AlterDomainStmt(_)
        | NodeRef::RenameStmt(_)
        | NodeRef::AlterSeqStmt(_)
        | NodeRef::AlterRoleStmt(_)
        | NodeRef::AlterRoleSetStmt(_)
        | NodeRef::AlterDatabaseStmt(_)
        | NodeRef::AlterDatabaseSetStmt(_)
        | NodeRef::AlterDatabaseRefreshCollStmt(_)
        | NodeRef::AlterSystemStmt(_)
        | NodeRef::AlterObjectDependsStmt(_)
        | NodeRef::AlterObjectSchemaStmt(_)
        | NodeRef::AlterOwnerStmt(_)
        | NodeRef::AlterEnumStmt(_)
        | NodeRef::AlterTsdictionaryStmt(_)
        | NodeRef::AlterTsconfigurationStmt(_)
        | NodeRef::AlterForeignServerStmt(_)
        | NodeRef::AlterUserMappingStmt(_)
        | NodeRef::AlterTableSpaceOptionsStmt(_)
        | NodeRef::AlterTableMoveAllStmt(_)
        | NodeRef::AlterPolicyStmt(_)
        | NodeRef::AlterPublicationStmt(_)
        | NodeRef::AlterSubscriptionStmt(_)
        | NodeRef::AlterCollationStmt(_)
        | NodeRef::AlterStatsStmt(_)
        | NodeRef::ReplicaIdentityStmt(_)
        | NodeRef::ReassignOwnedStmt(_) => vec![Kind::Alter],

        NodeRef::DropStmt(_)
        | NodeRef::DropdbStmt(_)
        | NodeRef::DropRoleStmt(_)
        | NodeRef::DropTableSpaceStmt(_)
        | NodeRef::DropUserMappingStmt(_)
        | NodeRef::DropSubscriptionStmt(_)
        | NodeRef::DropOwnedStmt(_) => vec![Kind::Drop],

        NodeRef::TruncateStmt(_) => vec![Kind::Truncate],
        NodeRef::TransactionStmt(s) => match pb::TransactionStmtKind::try_from(s.kind) {
            // Two-phase commit acts on transactions that outlive their session.
            Ok(
                pb::TransactionStmtKind::TransStmtPrepare
                | pb::TransactionStmtKind::TransStmtCommitPrepared
                | pb::TransactionStmtKind::TransStmtRollbackPrepared,
            ) => vec![Kind::TwoPhase],
            Ok(_) => vec![Kind::Transaction],
            Err(_) => vec![Kind::Other],
        },
        NodeRef::ConstraintsSetStmt(_) => vec![Kind::Transaction],
        NodeRef::PrepareStmt(_) => vec![Kind::Prepare],
        NodeRef::ExecuteStmt(_) => vec![Kind::Execute],
        // CLOSE releases a named server-side object, like DEALLOCATE.
        // UNLISTEN, like DEALLOCATE and CLOSE, releases something the session holds.
        NodeRef::DeallocateStmt(_) | NodeRef::ClosePortalStmt(_) | NodeRef::UnlistenStmt(_) => {
            vec![Kind::Deallocate]
        }
        NodeRef::CallStmt(_) => vec![Kind::Call],
        NodeRef::DoStmt(_) => vec![Kind::Do],
        NodeRef::ExplainStmt(_) => vec![Kind::Explain],
        NodeRef::ListenStmt(_) => vec![Kind::Listen],
        NodeRef::NotifyStmt(_) => vec![Kind::Notify],
        NodeRef::LockStmt(_) | NodeRef::LockingClause(_) => vec![Kind::Lock],
        NodeRef::VacuumStmt(_)
        | NodeRef::ClusterStmt(_)
        | NodeRef::ReindexStmt(_)
        | NodeRef::CheckPointStmt(_)
        | NodeRef::RefreshMatViewStmt(_) => vec![Kind::Maintenance],
        NodeRef::LoadStmt(_) => vec![Kind::Load],
        NodeRef::CommentStmt(_) | NodeRef::SecLabelStmt(_) => vec![Kind::Comment],

        // Parts of statements and expressions: they add no kind of their own.
        // DECLARE CURSOR is classified by its query alone; RETURN only
        // appears in SQL-standard function bodies.
        NodeRef::DeclareCursorStmt(_)
        | NodeRef::ReturnStmt(_)
        | NodeRef::RawStmt(_)
        | NodeRef::Alias(_)
        | NodeRef::RangeVar(_)
        | NodeRef::GroupingFunc(_)
        | NodeRef::MergeSupportFunc(_)
        | NodeRef::NamedArgExpr(_)
        | NodeRef::BoolExpr(_)
        | NodeRef::SubLink(_)
        | NodeRef::CaseExpr(_)
        | NodeRef::CaseWhen(_)
        | NodeRef::RowExpr(_)
        | NodeRef::CoalesceExpr(_)
        | NodeRef::MinMaxExpr(_)
        | NodeRef::SqlvalueFunction(_)
        | NodeRef::XmlExpr(_)
        | NodeRef::JsonFormat(_)
        | NodeRef::JsonReturning(_)
        | NodeRef::JsonValueExpr(_)
        | NodeRef::JsonIsPredicate(_)
        | NodeRef::JsonBehavior(_)
        | NodeRef::NullTest(_)
        | NodeRef::BooleanTest(_)
        | NodeRef::SetToDefault(_)
        | NodeRef::CurrentOfExpr(_)
        | NodeRef::JoinExpr(_)
        | NodeRef::TypeName(_)
        | NodeRef::ColumnRef(_)
        | NodeRef::ParamRef(_)
        | NodeRef::AExpr(_)
        | NodeRef::TypeCast(_)
        | NodeRef::CollateClause(_)
        | NodeRef::RoleSpec(_)
        | NodeRef::FuncCall(_)
        | NodeRef::AStar(_)
        | NodeRef::AIndices(_)
        | NodeRef::AIndirection(_)
        | NodeRef::AArrayExpr(_)
        | NodeRef::ResTarget(_)
        | NodeRef::MultiAssignRef(_)
        | NodeRef::SortBy(_)
        | NodeRef::WindowDef(_)
        | NodeRef::RangeSubselect(_)
        | NodeRef::RangeFunction(_)
        | NodeRef::RangeTableFunc(_)
        | NodeRef::RangeTableFuncCol(_)
        | NodeRef::RangeTableSample(_)
        | NodeRef::ColumnDef(_)
        | NodeRef::TableLikeClause(_)
        | NodeRef::IndexElem(_)
        | NodeRef::DefElem(_)
        | NodeRef::XmlSerialize(_)
        | NodeRef::PartitionElem(_)
        | NodeRef::PartitionSpec(_)
        | NodeRef::PartitionBoundSpec(_)
        | NodeRef::PartitionRangeDatum(_)
        | NodeRef::PartitionCmd(_)
        | NodeRef::GroupingSet(_)
        | NodeRef::WithClause(_)
        | NodeRef::InferClause(_)
        | NodeRef::OnConflictClause(_)
        | NodeRef::CtesearchClause(_)
        | NodeRef::CtecycleClause(_)
        | NodeRef::CommonTableExpr(_)
        | NodeRef::MergeWhenClause(_)
        | NodeRef::ReturningOption(_)
        | NodeRef::ReturningClause(_)
        | NodeRef::TriggerTransition(_)
        | NodeRef::JsonOutput(_)
        | NodeRef::JsonArgument(_)
        | NodeRef::JsonFuncExpr(_)
        | NodeRef::JsonTablePathSpec(_)
        | NodeRef::JsonTable(_)
        | NodeRef::JsonTableColumn(_)
        | NodeRef::JsonKeyValue(_)
        | NodeRef::JsonParseExpr(_)
        | NodeRef::JsonScalarExpr(_)
        | NodeRef::JsonSerializeExpr(_)
        | NodeRef::JsonObjectConstructor(_)
        | NodeRef::JsonArrayConstructor(_)
        | NodeRef::JsonArrayQueryConstructor(_)
        | NodeRef::JsonAggConstructor(_)
        | NodeRef::JsonObjectAgg(_)
        | NodeRef::JsonArrayAgg(_)
        | NodeRef::AtalterConstraint(_)
        | NodeRef::ObjectWithArgs(_)
        | NodeRef::AccessPriv(_)
        | NodeRef::Constraint(_)
        | NodeRef::CreateOpClassItem(_)
        | NodeRef::StatsElem(_)
        | NodeRef::FunctionParameter(_)
        | NodeRef::VacuumRelation(_)
        | NodeRef::PublicationTable(_)
        | NodeRef::PublicationObjSpec(_)
        | NodeRef::Integer(_)
        | NodeRef::Float(_)
        | NodeRef::Boolean(_)
        | NodeRef::String(_)
        | NodeRef::BitString(_)
        | NodeRef::List(_)
        | NodeRef::IntList(_)
        | NodeRef::OidList(_)
        | NodeRef::AConst(_) => Vec::new(),

        // Produced by parse analysis, the planner, PL/pgSQL parse modes or the
        // executor, never by the top-level grammar: fail closed if one shows up.
        NodeRef::TableFunc(_)
        | NodeRef::Var(_)
        | NodeRef::Param(_)
        | NodeRef::Aggref(_)
        | NodeRef::WindowFunc(_)
        | NodeRef::WindowFuncRunCondition(_)
        | NodeRef::SubscriptingRef(_)
        | NodeRef::FuncExpr(_)
        | NodeRef::OpExpr(_)
        | NodeRef::DistinctExpr(_)
        | NodeRef::NullIfExpr(_)
        | NodeRef::ScalarArrayOpExpr(_)
        | NodeRef::SubPlan(_)
        | NodeRef::AlternativeSubPlan(_)
        | NodeRef::FieldSelect(_)
        | NodeRef::FieldStore(_)
        | NodeRef::RelabelType(_)
        | NodeRef::CoerceViaIo(_)
        | NodeRef::ArrayCoerceExpr(_)
        | NodeRef::ConvertRowtypeExpr(_)
        | NodeRef::CollateExpr(_)
        | NodeRef::CaseTestExpr(_)
        | NodeRef::ArrayExpr(_)
        | NodeRef::RowCompareExpr(_)
        | NodeRef::JsonConstructorExpr(_)
        | NodeRef::JsonExpr(_)
        | NodeRef::JsonTablePath(_)
        | NodeRef::JsonTablePathScan(_)
        | NodeRef::JsonTableSiblingJoin(_)
        | NodeRef::MergeAction(_)
        | NodeRef::CoerceToDomain(_)
        | NodeRef::CoerceToDomainValue(_)
        | NodeRef::NextValueExpr(_)
        | NodeRef::InferenceElem(_)
        | NodeRef::ReturningExpr(_)
        | NodeRef::TargetEntry(_)
        | NodeRef::RangeTblRef(_)
        | NodeRef::FromExpr(_)
        | NodeRef::OnConflictExpr(_)
        | NodeRef::Query(_)
        | NodeRef::RangeTblEntry(_)
        | NodeRef::RtepermissionInfo(_)
        | NodeRef::RangeTblFunction(_)
        | NodeRef::TableSampleClause(_)
        | NodeRef::WithCheckOption(_)
        | NodeRef::SortGroupClause(_)
        | NodeRef::WindowClause(_)
        | NodeRef::RowMarkClause(_)
        | NodeRef::SetOperationStmt(_)
        | NodeRef::PlassignStmt(_)
        | NodeRef::InlineCodeBlock(_)
        | NodeRef::CallContext(_) => vec![Kind::Other],
    }
}

/// COPY to or from the client is data transfer; to or from a server file or
/// program it acts as the server's OS user, which is classified by itself.
fn copy_kind(s: &pb::CopyStmt) -> Kind {
    if s.is_program {
        Kind::CopyProgram
    } else if !s.filename.is_empty() {
        Kind::CopyFile
    } else if s.is_from {
        Kind::CopyFrom
    } else {
        Kind::CopyTo
    }
}

/// Settings a session may change as housekeeping: they shape output,
/// planning and waiting, not who the session is, what it may touch or how
/// its SQL is read. Anything else (`role`, `session_authorization`,
/// `session_replication_role`, custom `app.*` settings that row security
/// may read…) is not housekeeping.
const ORDINARY_SETTINGS: &[&str] = &[
    "application_name",
    "datestyle",
    "timezone",
    "time zone",
    "intervalstyle",
    "extra_float_digits",
    "bytea_output",
    "xmlbinary",
    "xmloption",
    "lc_monetary",
    "lc_numeric",
    "lc_time",
    "client_min_messages",
    "statement_timeout",
    "lock_timeout",
    "idle_in_transaction_session_timeout",
    "idle_session_timeout",
    "transaction_timeout",
    "default_transaction_isolation",
    "transaction_isolation",
    "default_transaction_deferrable",
    "transaction_deferrable",
    "default_transaction_read_only",
    "transaction_read_only",
    "work_mem",
    "maintenance_work_mem",
    "hash_mem_multiplier",
    "temp_buffers",
    "effective_cache_size",
    "effective_io_concurrency",
    "random_page_cost",
    "seq_page_cost",
    "cpu_tuple_cost",
    "cpu_index_tuple_cost",
    "cpu_operator_cost",
    "parallel_setup_cost",
    "parallel_tuple_cost",
    "min_parallel_table_scan_size",
    "min_parallel_index_scan_size",
    "max_parallel_workers_per_gather",
    "max_parallel_maintenance_workers",
    "from_collapse_limit",
    "join_collapse_limit",
    "constraint_exclusion",
    "cursor_tuple_fraction",
    "plan_cache_mode",
    "geqo",
    "geqo_threshold",
    "geqo_effort",
    "geqo_pool_size",
    "geqo_generations",
    "geqo_selection_bias",
    "geqo_seed",
    "jit",
    "jit_above_cost",
    "jit_inline_above_cost",
    "jit_optimize_above_cost",
    "default_statistics_target",
    "default_text_search_config",
    "gin_fuzzy_search_limit",
    "array_nulls",
    "quote_all_identifiers",
    "escape_string_warning",
    "synchronous_commit",
    "commit_delay",
    "commit_siblings",
    "row_security",
    "search_path",
    "standard_conforming_strings",
    "client_encoding",
    "names",
    "transform_null_equals",
    "enable_async_append",
    "enable_bitmapscan",
    "enable_gathermerge",
    "enable_hashagg",
    "enable_hashjoin",
    "enable_incremental_sort",
    "enable_indexonlyscan",
    "enable_indexscan",
    "enable_material",
    "enable_memoize",
    "enable_mergejoin",
    "enable_nestloop",
    "enable_parallel_append",
    "enable_parallel_hash",
    "enable_partition_pruning",
    "enable_partitionwise_join",
    "enable_partitionwise_aggregate",
    "enable_presorted_aggregate",
    "enable_seqscan",
    "enable_sort",
    "enable_tidscan",
];

/// Settings that change how the server reads the SQL that follows.
pub(super) fn changes_reading(name: &str) -> bool {
    matches!(name, "standard_conforming_strings" | "client_encoding" | "names")
}

/// Whether `name` (lower-case) is housekeeping a session may change.
pub(super) fn is_ordinary_setting(name: &str) -> bool {
    ORDINARY_SETTINGS.contains(&name)
}

/// `SET`/`RESET` in this session. Ordinary settings (see
/// [`ORDINARY_SETTINGS`]), `search_path` (tracked by the session for name
/// resolution) and settings that change how SQL is read (tracked, and
/// refused outright for unsafe client encodings by the caller) are
/// [`Kind::Set`]; changing who the session is (`role`, `session
/// authorization`) is [`Kind::SetRole`]; anything else is [`Kind::Other`].
/// `RESET ALL` returns every setting to its login value, which is
/// housekeeping.
fn set_kind(s: &pb::VariableSetStmt) -> Kind {
    let Ok(kind) = pb::VariableSetKind::try_from(s.kind) else { return Kind::Other };
    let name = s.name.to_ascii_lowercase();
    match kind {
        pb::VariableSetKind::Undefined => Kind::Other,
        pb::VariableSetKind::VarResetAll => Kind::Set,
        // SET TRANSACTION …, SET SESSION CHARACTERISTICS AS TRANSACTION …: the
        // read-write case is caught by the session's guard, not here.
        pb::VariableSetKind::VarSetMulti => Kind::Set,
        _ if name == "role" || name == "session_authorization" => Kind::SetRole,
        _ if is_ordinary_setting(&name) => Kind::Set,
        _ => Kind::Other,
    }
}

/// `SET`/`RESET` stored for later sessions (`ALTER ROLE|DATABASE … SET`,
/// `ALTER SYSTEM`): changing identity, name resolution, how SQL is read,
/// or anything beyond housekeeping there changes every later session of
/// that login, so it counts as [`Kind::SetRole`].
pub(super) fn stored_set_kind(s: &pb::VariableSetStmt) -> Kind {
    let name = s.name.to_ascii_lowercase();
    match pb::VariableSetKind::try_from(s.kind) {
        Ok(pb::VariableSetKind::VarResetAll) => Kind::SetRole,
        Ok(_) if name == "search_path" || changes_reading(&name) => Kind::SetRole,
        Ok(_) if name == "default_transaction_read_only" || name.ends_with("_timeout") => Kind::SetRole,
        Ok(_) if is_ordinary_setting(&name) => Kind::Alter,
        _ => Kind::SetRole,
    }
}

/// `CREATE AGGREGATE`, `CREATE OPERATOR`, a base `CREATE TYPE` with I/O
/// functions, text-search parsers and templates name functions to run.
fn defines_code(s: &pb::DefineStmt) -> bool {
    match pb::ObjectType::try_from(s.kind) {
        Ok(
            pb::ObjectType::ObjectAggregate
            | pb::ObjectType::ObjectOperator
            | pb::ObjectType::ObjectTsparser
            | pb::ObjectType::ObjectTstemplate,
        ) => true,
        Ok(pb::ObjectType::ObjectType) => !s.definition.is_empty(),
        Ok(_) => false,
        Err(_) => true,
    }
}

/// Objects whose renaming, moving or re-owning changes which code a name reaches.
pub(super) fn is_code_object(object_type: i32) -> bool {
    matches!(
        pb::ObjectType::try_from(object_type),
        Ok(pb::ObjectType::ObjectFunction
            | pb::ObjectType::ObjectProcedure
            | pb::ObjectType::ObjectRoutine
            | pb::ObjectType::ObjectAggregate
            | pb::ObjectType::ObjectOperator
            | pb::ObjectType::ObjectType
            | pb::ObjectType::ObjectDomain
            | pb::ObjectType::ObjectCast
            | pb::ObjectType::ObjectTransform
            | pb::ObjectType::ObjectLanguage
            | pb::ObjectType::ObjectOpclass
            | pb::ObjectType::ObjectOpfamily
            | pb::ObjectType::ObjectConversion
            | pb::ObjectType::ObjectAccessMethod
            | pb::ObjectType::ObjectFdw
            | pb::ObjectType::ObjectEventTrigger
            | pb::ObjectType::ObjectTrigger
            | pb::ObjectType::ObjectRule
            | pb::ObjectType::ObjectExtension
            | pb::ObjectType::ObjectTsparser
            | pb::ObjectType::ObjectTstemplate)
            | Err(_)
    )
}

/// What one `ALTER TABLE` subcommand adds: dropping columns or constraints
/// is [`Kind::Drop`]; `ALTER COLUMN … TYPE … USING` rewrites every row;
/// switching triggers, rules or row security on or off changes what code
/// and which policies run.
fn alter_table_cmd_kinds(c: &pb::AlterTableCmd) -> Vec<Kind> {
    use pb::AlterTableType as T;
    match T::try_from(c.subtype) {
        Ok(T::AtDropColumn | T::AtDropConstraint) => vec![Kind::Drop],
        Ok(T::AtAlterColumnType) => {
            let using = matches!(c.def.as_deref().and_then(|d| d.node.as_ref()),
                Some(NodeEnum::ColumnDef(cd)) if cd.raw_default.is_some());
            if using { vec![Kind::UpdateWithoutWhere] } else { Vec::new() }
        }
        Ok(
            T::AtEnableTrig
            | T::AtEnableAlwaysTrig
            | T::AtEnableReplicaTrig
            | T::AtDisableTrig
            | T::AtEnableTrigAll
            | T::AtDisableTrigAll
            | T::AtEnableTrigUser
            | T::AtDisableTrigUser
            | T::AtEnableRule
            | T::AtEnableAlwaysRule
            | T::AtEnableReplicaRule
            | T::AtDisableRule
            | T::AtEnableRowSecurity
            | T::AtDisableRowSecurity
            | T::AtForceRowSecurity
            | T::AtNoForceRowSecurity,
        ) => vec![Kind::DefineCode],
        Ok(_) => Vec::new(),
        Err(_) => vec![Kind::Other],
    }
}

/// The value of a `SET name = value` with exactly one constant value, as text.
pub(super) fn single_value(args: &[Node]) -> Option<String> {
    super::constant_read();
    match args {
        [arg] => match &arg.node {
            Some(NodeEnum::AConst(c)) => match &c.val {
                Some(pb::a_const::Val::Sval(s)) => Some(s.sval.clone()),
                Some(pb::a_const::Val::Ival(i)) => Some(i.ival.to_string()),
                Some(pb::a_const::Val::Boolval(b)) => Some(b.boolval.to_string()),
                Some(pb::a_const::Val::Fval(f)) => Some(f.fval.clone()),
                _ => None,
            },
            _ => None,
        },
        _ => None,
    }
}

/// Every constant value of a `SET name = a, b, …`, as text (`None` if one is not a constant).
pub(super) fn all_values(args: &[Node]) -> Option<Vec<String>> {
    args.iter().map(|a| single_value(std::slice::from_ref(a))).collect()
}

/// A boolean GUC spelling of "on" (a subset of what PostgreSQL accepts; the rest fail closed).
pub(super) fn is_true_word(v: &str) -> bool {
    ["on", "true", "yes", "1"].iter().any(|w| v.trim().eq_ignore_ascii_case(w))
}

/// Whether a condition is constantly true (`Some(true)`), constantly false
/// or NULL (`Some(false)`: no row qualifies), or not known here (`None`).
/// `WHERE CURRENT OF` is not constant.
pub(super) fn constant_truth(clause: &Node) -> Option<bool> {
    match eval(clause, 0)? {
        Value::Null => Some(false),
        v => as_bool(&v),
    }
}

/// The value of a constant expression, as far as this small folder can tell.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Bool(bool),
    Int(i64),
    /// An untyped string literal, or a numeric literal kept as written.
    Text(String),
    Null,
}

/// Enough to see through `1=1`-style tautologies; deeper trees are "not constant".
const MAX_FOLD_DEPTH: usize = 32;

fn eval(node: &Node, depth: usize) -> Option<Value> {
    if depth > MAX_FOLD_DEPTH {
        return None;
    }
    match node.node.as_ref()? {
        NodeEnum::AConst(c) if c.isnull => Some(Value::Null),
        NodeEnum::AConst(c) => match c.val.as_ref().inspect(|_| super::constant_read())? {
            pb::a_const::Val::Ival(i) => Some(Value::Int(i64::from(i.ival))),
            pb::a_const::Val::Fval(f) => Some(Value::Text(f.fval.clone())),
            pb::a_const::Val::Boolval(b) => Some(Value::Bool(b.boolval)),
            pb::a_const::Val::Sval(s) => Some(Value::Text(s.sval.clone())),
            pb::a_const::Val::Bsval(_) => None,
        },
        NodeEnum::TypeCast(t) => {
            let value = eval(t.arg.as_deref()?, depth + 1)?;
            let type_name = t.type_name.as_ref()?.names.last()?;
            let Some(NodeEnum::String(ty)) = &type_name.node else { return None };
            match ty.sval.as_str() {
                "bool" | "boolean" => as_bool(&value).map(Value::Bool),
                "int2" | "int4" | "int8" | "integer" | "smallint" | "bigint" => as_int(&value).map(Value::Int),
                "text" => Some(value),
                _ => None,
            }
        }
        NodeEnum::BoolExpr(b) => {
            let args: Vec<Option<bool>> =
                b.args.iter().map(|a| eval(a, depth + 1).as_ref().and_then(as_bool)).collect();
            match pb::BoolExprType::try_from(b.boolop).ok()? {
                pb::BoolExprType::AndExpr if args.iter().all(|a| *a == Some(true)) => Some(Value::Bool(true)),
                pb::BoolExprType::AndExpr if args.contains(&Some(false)) => Some(Value::Bool(false)),
                pb::BoolExprType::OrExpr if args.contains(&Some(true)) => Some(Value::Bool(true)),
                pb::BoolExprType::OrExpr if args.iter().all(|a| *a == Some(false)) => Some(Value::Bool(false)),
                pb::BoolExprType::NotExpr => match args.as_slice() {
                    [Some(v)] => Some(Value::Bool(!v)),
                    _ => None,
                },
                _ => None,
            }
        }
        NodeEnum::AExpr(e) if e.kind == pb::AExprKind::AexprOp as i32 => {
            let [op] = e.name.as_slice() else { return None };
            let Some(NodeEnum::String(op)) = &op.node else { return None };
            let left = eval(e.lexpr.as_deref()?, depth + 1)?;
            let right = eval(e.rexpr.as_deref()?, depth + 1)?;
            compare(op.sval.as_str(), &left, &right).map(Value::Bool)
        }
        NodeEnum::NullTest(t) => {
            let is_null = eval(t.arg.as_deref()?, depth + 1)? == Value::Null;
            match pb::NullTestType::try_from(t.nulltesttype).ok()? {
                pb::NullTestType::IsNull => Some(Value::Bool(is_null)),
                pb::NullTestType::IsNotNull => Some(Value::Bool(!is_null)),
                pb::NullTestType::Undefined => None,
            }
        }
        NodeEnum::BooleanTest(t) => {
            let value = eval(t.arg.as_deref()?, depth + 1)?;
            let b = if value == Value::Null { None } else { Some(as_bool(&value)?) };
            Some(Value::Bool(match pb::BoolTestType::try_from(t.booltesttype).ok()? {
                pb::BoolTestType::IsTrue => b == Some(true),
                pb::BoolTestType::IsNotTrue => b != Some(true),
                pb::BoolTestType::IsFalse => b == Some(false),
                pb::BoolTestType::IsNotFalse => b != Some(false),
                pb::BoolTestType::IsUnknown => b.is_none(),
                pb::BoolTestType::IsNotUnknown => b.is_some(),
                pb::BoolTestType::Undefined => return None,
            }))
        }
        _ => None,
    }
}

fn as_bool(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::Int(i) => Some(*i != 0),
        Value::Text(t) => match t.trim().to_ascii_lowercase().as_str() {
            "t" | "true" | "y" | "yes" | "on" | "1" => Some(true),
            "f" | "false" | "n" | "no" | "off" | "0" => Some(false),
            _ => None,
        },
        Value::Null => None,
    }
}

fn as_int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        Value::Text(t) => t.trim().parse().ok(),
        Value::Bool(_) | Value::Null => None,
    }
}

/// `left op right` for constants of comparable types; `None` when unsure.
fn compare(op: &str, left: &Value, right: &Value) -> Option<bool> {
    let ordering = match (left, right) {
        (Value::Null, _) | (_, Value::Null) => return None,
        (Value::Int(_), _) | (_, Value::Int(_)) => as_int(left)?.cmp(&as_int(right)?),
        (Value::Bool(_), _) | (_, Value::Bool(_)) => as_bool(left)?.cmp(&as_bool(right)?),
        (Value::Text(l), Value::Text(r)) if op == "=" || op == "<>" || op == "!=" => l.cmp(r),
        (Value::Text(_), Value::Text(_)) => return None,
    };
    match op {
        "=" => Some(ordering.is_eq()),
        "<>" | "!=" => Some(ordering.is_ne()),
        "<" => Some(ordering.is_lt()),
        ">" => Some(ordering.is_gt()),
        "<=" => Some(ordering.is_le()),
        ">=" => Some(ordering.is_ge()),
        _ => None,
    }
}
