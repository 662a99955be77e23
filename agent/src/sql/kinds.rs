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
        NodeRef::UpdateStmt(s) => {
            if has_where(s.where_clause.as_deref()) {
                vec![Kind::Update]
            } else {
                vec![Kind::Update, Kind::UpdateWithoutWhere]
            }
        }
        NodeRef::DeleteStmt(s) => {
            if has_where(s.where_clause.as_deref()) {
                vec![Kind::Delete]
            } else {
                vec![Kind::Delete, Kind::DeleteWithoutWhere]
            }
        }
        NodeRef::MergeStmt(_) => vec![Kind::Merge],
        NodeRef::CopyStmt(s) => vec![copy_kind(s)],
        NodeRef::VariableSetStmt(s) => vec![set_kind(s)],
        NodeRef::VariableShowStmt(_) => vec![Kind::Show],
        NodeRef::DiscardStmt(s) => {
            // DISCARD ALL includes SET SESSION AUTHORIZATION DEFAULT and RESET ALL.
            if s.target == pb::DiscardMode::DiscardAll as i32 {
                vec![Kind::Discard, Kind::SetRole]
            } else {
                vec![Kind::Discard]
            }
        }
        NodeRef::GrantStmt(s) => vec![if s.is_grant { Kind::Grant } else { Kind::Revoke }],
        NodeRef::GrantRoleStmt(s) => vec![if s.is_grant { Kind::Grant } else { Kind::Revoke }],
        NodeRef::AlterDefaultPrivilegesStmt(_) => vec![Kind::Grant],

        NodeRef::IntoClause(_)
        | NodeRef::CreateStmt(_)
        | NodeRef::CreateTableAsStmt(_)
        | NodeRef::ViewStmt(_)
        | NodeRef::IndexStmt(_)
        | NodeRef::CreateSeqStmt(_)
        | NodeRef::CreateFunctionStmt(_)
        | NodeRef::CreateTrigStmt(_)
        | NodeRef::RuleStmt(_)
        | NodeRef::CreateSchemaStmt(_)
        | NodeRef::CreatedbStmt(_)
        | NodeRef::CreateRoleStmt(_)
        | NodeRef::CreateDomainStmt(_)
        | NodeRef::CompositeTypeStmt(_)
        | NodeRef::CreateEnumStmt(_)
        | NodeRef::CreateRangeStmt(_)
        | NodeRef::DefineStmt(_)
        | NodeRef::CreateExtensionStmt(_)
        | NodeRef::CreateFdwStmt(_)
        | NodeRef::CreateForeignServerStmt(_)
        | NodeRef::CreateForeignTableStmt(_)
        | NodeRef::CreateUserMappingStmt(_)
        | NodeRef::CreateTableSpaceStmt(_)
        | NodeRef::CreatePlangStmt(_)
        | NodeRef::CreateConversionStmt(_)
        | NodeRef::CreateCastStmt(_)
        | NodeRef::CreateOpClassStmt(_)
        | NodeRef::CreateOpFamilyStmt(_)
        | NodeRef::CreateEventTrigStmt(_)
        | NodeRef::CreatePolicyStmt(_)
        | NodeRef::CreateTransformStmt(_)
        | NodeRef::CreateAmStmt(_)
        | NodeRef::CreatePublicationStmt(_)
        | NodeRef::CreateSubscriptionStmt(_)
        | NodeRef::CreateStatsStmt(_)
        | NodeRef::ImportForeignSchemaStmt(_) => vec![Kind::Create],

        NodeRef::AlterTableStmt(_)
        | NodeRef::AlterDomainStmt(_)
        | NodeRef::AlterFunctionStmt(_)
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
        | NodeRef::AlterOperatorStmt(_)
        | NodeRef::AlterTypeStmt(_)
        | NodeRef::AlterEnumStmt(_)
        | NodeRef::AlterTsdictionaryStmt(_)
        | NodeRef::AlterTsconfigurationStmt(_)
        | NodeRef::AlterFdwStmt(_)
        | NodeRef::AlterForeignServerStmt(_)
        | NodeRef::AlterUserMappingStmt(_)
        | NodeRef::AlterTableSpaceOptionsStmt(_)
        | NodeRef::AlterTableMoveAllStmt(_)
        | NodeRef::AlterExtensionStmt(_)
        | NodeRef::AlterExtensionContentsStmt(_)
        | NodeRef::AlterEventTrigStmt(_)
        | NodeRef::AlterPolicyStmt(_)
        | NodeRef::AlterPublicationStmt(_)
        | NodeRef::AlterSubscriptionStmt(_)
        | NodeRef::AlterCollationStmt(_)
        | NodeRef::AlterStatsStmt(_)
        | NodeRef::AlterOpFamilyStmt(_)
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
        NodeRef::TransactionStmt(_) | NodeRef::ConstraintsSetStmt(_) => vec![Kind::Transaction],
        NodeRef::PrepareStmt(_) => vec![Kind::Prepare],
        NodeRef::ExecuteStmt(_) => vec![Kind::Execute],
        // CLOSE releases a named server-side object, like DEALLOCATE.
        NodeRef::DeallocateStmt(_) | NodeRef::ClosePortalStmt(_) => vec![Kind::Deallocate],
        NodeRef::CallStmt(_) => vec![Kind::Call],
        NodeRef::DoStmt(_) => vec![Kind::Do],
        NodeRef::ExplainStmt(_) => vec![Kind::Explain],
        NodeRef::ListenStmt(_) | NodeRef::UnlistenStmt(_) => vec![Kind::Listen],
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
        | NodeRef::AlterTableCmd(_)
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

/// `SET`/`RESET`. `search_path` is [`Kind::Other`] (it changes what table
/// names mean). Changing who the session is (role, session authorization,
/// or resetting everything, which resets those too) is [`Kind::SetRole`].
/// Settings that change how the *server* tokenises later statements are
/// [`Kind::Other`] unless set to the value this parser assumes: with
/// `standard_conforming_strings` off or a client encoding such as SJIS whose
/// multibyte characters can end in a backslash, the server would read quotes
/// where this parser saw string contents, and a statement classified as one
/// harmless SELECT could run a second one.
fn set_kind(s: &pb::VariableSetStmt) -> Kind {
    let Ok(kind) = pb::VariableSetKind::try_from(s.kind) else { return Kind::Other };
    let name = s.name.as_str();
    match kind {
        pb::VariableSetKind::Undefined => Kind::Other,
        pb::VariableSetKind::VarResetAll => Kind::SetRole,
        _ if name.eq_ignore_ascii_case("role") || name.eq_ignore_ascii_case("session_authorization") => Kind::SetRole,
        // search_path decides which table an unqualified name is: a rule's
        // `tables` list assumes `public`, so changing it is not housekeeping.
        _ if name.eq_ignore_ascii_case("search_path") => Kind::Other,
        pb::VariableSetKind::VarSetValue if name.eq_ignore_ascii_case("standard_conforming_strings") => {
            if single_value(&s.args).is_some_and(|v| is_true_word(&v)) { Kind::Set } else { Kind::Other }
        }
        pb::VariableSetKind::VarSetValue if name.eq_ignore_ascii_case("client_encoding") => {
            if single_value(&s.args).is_some_and(|v| is_utf8_name(&v)) { Kind::Set } else { Kind::Other }
        }
        _ => Kind::Set,
    }
}

/// The value of a `SET name = value` with exactly one constant value, as text.
fn single_value(args: &[Node]) -> Option<String> {
    match args {
        [arg] => match &arg.node {
            Some(NodeEnum::AConst(c)) => match &c.val {
                Some(pb::a_const::Val::Sval(s)) => Some(s.sval.clone()),
                Some(pb::a_const::Val::Ival(i)) => Some(i.ival.to_string()),
                Some(pb::a_const::Val::Boolval(b)) => Some(b.boolval.to_string()),
                _ => None,
            },
            _ => None,
        },
        _ => None,
    }
}

/// A boolean GUC spelling of "on" (a subset of what PostgreSQL accepts; the rest fail closed).
fn is_true_word(v: &str) -> bool {
    ["on", "true", "yes", "1"].iter().any(|w| v.trim().eq_ignore_ascii_case(w))
}

/// PostgreSQL's spellings of UTF-8 (it ignores case and punctuation in encoding names).
fn is_utf8_name(v: &str) -> bool {
    let norm: String = v.chars().filter(char::is_ascii_alphanumeric).map(|c| c.to_ascii_lowercase()).collect();
    norm == "utf8" || norm == "unicode"
}

/// Whether an UPDATE/DELETE has a WHERE clause that can leave rows out.
/// A clause this module can prove is constantly true (`WHERE true`,
/// `WHERE 1=1`, `WHERE 'a'='a' OR x`) counts as absent. `WHERE CURRENT OF`
/// counts as present.
fn has_where(clause: Option<&Node>) -> bool {
    clause.is_some_and(|c| !matches!(eval(c, 0), Some(Value::Bool(true))))
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
        NodeEnum::AConst(c) => match c.val.as_ref()? {
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
