//! The children of every parse-tree node, so that the classifier can walk
//! the whole tree rather than the fields someone remembered to look at.
//!
//! The table was derived mechanically from pg_query 18.1's `protobuf.rs`: for
//! every node type it lists each field whose type can hold a node (a `Node`,
//! a typed node such as `RangeVar`, or an optional, boxed or repeated one of
//! those). The match is exhaustive, so an upgrade that adds a node type fails
//! to compile here; a field added to an existing node type is not caught by
//! the compiler, which is what the `every_tagged_node_is_reached` test is for.
//! Review this table when bumping pg_query's major version.

use pg_query::protobuf as pb;
use pg_query::{Node, NodeRef};

/// A node's children, each with the name of the field that holds it.
pub(super) type Children<'a> = Vec<(&'static str, NodeRef<'a>)>;

/// A field type that can hold nodes.
trait Field {
    fn push<'a>(&'a self, field: &'static str, out: &mut Children<'a>);
}

impl Field for Node {
    fn push<'a>(&'a self, field: &'static str, out: &mut Children<'a>) {
        if let Some(node) = &self.node {
            out.push((field, node.to_ref()));
        }
    }
}

impl<T: Field> Field for Box<T> {
    fn push<'a>(&'a self, field: &'static str, out: &mut Children<'a>) {
        T::push(self, field, out);
    }
}

impl<T: Field> Field for Option<T> {
    fn push<'a>(&'a self, field: &'static str, out: &mut Children<'a>) {
        if let Some(inner) = self {
            inner.push(field, out);
        }
    }
}

impl<T: Field> Field for Vec<T> {
    fn push<'a>(&'a self, field: &'static str, out: &mut Children<'a>) {
        for inner in self {
            inner.push(field, out);
        }
    }
}

/// Node types that some field holds directly rather than wrapped in a `Node`.
macro_rules! typed_fields {
    ($($ty:ident => $variant:ident),* $(,)?) => {
        $(
            impl Field for pb::$ty {
                fn push<'a>(&'a self, field: &'static str, out: &mut Children<'a>) {
                    out.push((field, NodeRef::$variant(self)));
                }
            }
        )*
    };
}

typed_fields! {
    Alias => Alias,
    CollateClause => CollateClause,
    CreateStmt => CreateStmt,
    CteCycleClause => CtecycleClause,
    CteSearchClause => CtesearchClause,
    FromExpr => FromExpr,
    FuncCall => FuncCall,
    FuncExpr => FuncExpr,
    GrantStmt => GrantStmt,
    InferClause => InferClause,
    IntoClause => IntoClause,
    JsonAggConstructor => JsonAggConstructor,
    JsonBehavior => JsonBehavior,
    JsonFormat => JsonFormat,
    JsonKeyValue => JsonKeyValue,
    JsonOutput => JsonOutput,
    JsonReturning => JsonReturning,
    JsonTablePath => JsonTablePath,
    JsonTablePathSpec => JsonTablePathSpec,
    JsonValueExpr => JsonValueExpr,
    ObjectWithArgs => ObjectWithArgs,
    OnConflictClause => OnConflictClause,
    OnConflictExpr => OnConflictExpr,
    PartitionBoundSpec => PartitionBoundSpec,
    PartitionSpec => PartitionSpec,
    PublicationTable => PublicationTable,
    Query => Query,
    RangeVar => RangeVar,
    ReturningClause => ReturningClause,
    RoleSpec => RoleSpec,
    SelectStmt => SelectStmt,
    String => String,
    TableFunc => TableFunc,
    TableSampleClause => TableSampleClause,
    TypeName => TypeName,
    VariableSetStmt => VariableSetStmt,
    WindowDef => WindowDef,
    WithClause => WithClause,
}

/// Pushes the listed fields of `$node` onto `$out`, named by their field name.
macro_rules! fields {
    ($out:ident, $node:ident, [$($field:ident),* $(,)?]) => {{
        $( $node.$field.push(stringify!($field), $out); )*
    }};
}

/// The nodes directly below `node`, in field order.
pub(super) fn children(node: NodeRef<'_>) -> Children<'_> {
    let mut children = Vec::new();
    let out = &mut children;
    match node {
        NodeRef::Alias(n) => fields!(out, n, [colnames]),
        NodeRef::RangeVar(n) => fields!(out, n, [alias]),
        NodeRef::TableFunc(n) => fields!(
            out,
            n,
            [
                ns_uris,
                ns_names,
                docexpr,
                rowexpr,
                colnames,
                coltypes,
                coltypmods,
                colcollations,
                colexprs,
                coldefexprs,
                colvalexprs,
                passingvalexprs,
                plan
            ]
        ),
        NodeRef::IntoClause(n) => fields!(out, n, [rel, col_names, options, view_query]),
        NodeRef::Var(n) => fields!(out, n, [xpr]),
        NodeRef::Param(n) => fields!(out, n, [xpr]),
        NodeRef::Aggref(n) => {
            fields!(out, n, [xpr, aggargtypes, aggdirectargs, args, aggorder, aggdistinct, aggfilter])
        }
        NodeRef::GroupingFunc(n) => fields!(out, n, [xpr, args, refs]),
        NodeRef::WindowFunc(n) => fields!(out, n, [xpr, args, aggfilter, run_condition]),
        NodeRef::WindowFuncRunCondition(n) => fields!(out, n, [xpr, arg]),
        NodeRef::MergeSupportFunc(n) => fields!(out, n, [xpr]),
        NodeRef::SubscriptingRef(n) => fields!(out, n, [xpr, refupperindexpr, reflowerindexpr, refexpr, refassgnexpr]),
        NodeRef::FuncExpr(n) => fields!(out, n, [xpr, args]),
        NodeRef::NamedArgExpr(n) => fields!(out, n, [xpr, arg]),
        NodeRef::OpExpr(n) => fields!(out, n, [xpr, args]),
        NodeRef::DistinctExpr(n) => fields!(out, n, [xpr, args]),
        NodeRef::NullIfExpr(n) => fields!(out, n, [xpr, args]),
        NodeRef::ScalarArrayOpExpr(n) => fields!(out, n, [xpr, args]),
        NodeRef::BoolExpr(n) => fields!(out, n, [xpr, args]),
        NodeRef::SubLink(n) => fields!(out, n, [xpr, testexpr, oper_name, subselect]),
        NodeRef::SubPlan(n) => fields!(out, n, [xpr, testexpr, param_ids, set_param, par_param, args]),
        NodeRef::AlternativeSubPlan(n) => fields!(out, n, [xpr, subplans]),
        NodeRef::FieldSelect(n) => fields!(out, n, [xpr, arg]),
        NodeRef::FieldStore(n) => fields!(out, n, [xpr, arg, newvals, fieldnums]),
        NodeRef::RelabelType(n) => fields!(out, n, [xpr, arg]),
        NodeRef::CoerceViaIo(n) => fields!(out, n, [xpr, arg]),
        NodeRef::ArrayCoerceExpr(n) => fields!(out, n, [xpr, arg, elemexpr]),
        NodeRef::ConvertRowtypeExpr(n) => fields!(out, n, [xpr, arg]),
        NodeRef::CollateExpr(n) => fields!(out, n, [xpr, arg]),
        NodeRef::CaseExpr(n) => fields!(out, n, [xpr, arg, args, defresult]),
        NodeRef::CaseWhen(n) => fields!(out, n, [xpr, expr, result]),
        NodeRef::CaseTestExpr(n) => fields!(out, n, [xpr]),
        NodeRef::ArrayExpr(n) => fields!(out, n, [xpr, elements]),
        NodeRef::RowExpr(n) => fields!(out, n, [xpr, args, colnames]),
        NodeRef::RowCompareExpr(n) => fields!(out, n, [xpr, opnos, opfamilies, inputcollids, largs, rargs]),
        NodeRef::CoalesceExpr(n) => fields!(out, n, [xpr, args]),
        NodeRef::MinMaxExpr(n) => fields!(out, n, [xpr, args]),
        NodeRef::SqlvalueFunction(n) => fields!(out, n, [xpr]),
        NodeRef::XmlExpr(n) => fields!(out, n, [xpr, named_args, arg_names, args]),
        NodeRef::JsonReturning(n) => fields!(out, n, [format]),
        NodeRef::JsonValueExpr(n) => fields!(out, n, [raw_expr, formatted_expr, format]),
        NodeRef::JsonConstructorExpr(n) => fields!(out, n, [xpr, args, func, coercion, returning]),
        NodeRef::JsonIsPredicate(n) => fields!(out, n, [expr, format]),
        NodeRef::JsonBehavior(n) => fields!(out, n, [expr]),
        NodeRef::JsonExpr(n) => fields!(
            out,
            n,
            [xpr, formatted_expr, format, path_spec, returning, passing_names, passing_values, on_empty, on_error]
        ),
        NodeRef::JsonTablePathScan(n) => fields!(out, n, [plan, path, child]),
        NodeRef::JsonTableSiblingJoin(n) => fields!(out, n, [plan, lplan, rplan]),
        NodeRef::NullTest(n) => fields!(out, n, [xpr, arg]),
        NodeRef::BooleanTest(n) => fields!(out, n, [xpr, arg]),
        NodeRef::MergeAction(n) => fields!(out, n, [qual, target_list, update_colnos]),
        NodeRef::CoerceToDomain(n) => fields!(out, n, [xpr, arg]),
        NodeRef::CoerceToDomainValue(n) => fields!(out, n, [xpr]),
        NodeRef::SetToDefault(n) => fields!(out, n, [xpr]),
        NodeRef::CurrentOfExpr(n) => fields!(out, n, [xpr]),
        NodeRef::NextValueExpr(n) => fields!(out, n, [xpr]),
        NodeRef::InferenceElem(n) => fields!(out, n, [xpr, expr]),
        NodeRef::ReturningExpr(n) => fields!(out, n, [xpr, retexpr]),
        NodeRef::TargetEntry(n) => fields!(out, n, [xpr, expr]),
        NodeRef::JoinExpr(n) => fields!(out, n, [larg, rarg, using_clause, join_using_alias, quals, alias]),
        NodeRef::FromExpr(n) => fields!(out, n, [fromlist, quals]),
        NodeRef::OnConflictExpr(n) => {
            fields!(out, n, [arbiter_elems, arbiter_where, on_conflict_set, on_conflict_where, excl_rel_tlist])
        }
        NodeRef::Query(n) => fields!(
            out,
            n,
            [
                utility_stmt,
                cte_list,
                rtable,
                rteperminfos,
                jointree,
                merge_action_list,
                merge_join_condition,
                target_list,
                on_conflict,
                returning_list,
                group_clause,
                grouping_sets,
                having_qual,
                window_clause,
                distinct_clause,
                sort_clause,
                limit_offset,
                limit_count,
                row_marks,
                set_operations,
                constraint_deps,
                with_check_options
            ]
        ),
        NodeRef::TypeName(n) => fields!(out, n, [names, typmods, array_bounds]),
        NodeRef::ColumnRef(n) => fields!(out, n, [fields]),
        NodeRef::AExpr(n) => fields!(out, n, [name, lexpr, rexpr]),
        NodeRef::TypeCast(n) => fields!(out, n, [arg, type_name]),
        NodeRef::CollateClause(n) => fields!(out, n, [arg, collname]),
        NodeRef::FuncCall(n) => fields!(out, n, [funcname, args, agg_order, agg_filter, over]),
        NodeRef::AIndices(n) => fields!(out, n, [lidx, uidx]),
        NodeRef::AIndirection(n) => fields!(out, n, [arg, indirection]),
        NodeRef::AArrayExpr(n) => fields!(out, n, [elements]),
        NodeRef::ResTarget(n) => fields!(out, n, [indirection, val]),
        NodeRef::MultiAssignRef(n) => fields!(out, n, [source]),
        NodeRef::SortBy(n) => fields!(out, n, [node, use_op]),
        NodeRef::WindowDef(n) => fields!(out, n, [partition_clause, order_clause, start_offset, end_offset]),
        NodeRef::RangeSubselect(n) => fields!(out, n, [subquery, alias]),
        NodeRef::RangeFunction(n) => fields!(out, n, [functions, alias, coldeflist]),
        NodeRef::RangeTableFunc(n) => fields!(out, n, [docexpr, rowexpr, namespaces, columns, alias]),
        NodeRef::RangeTableFuncCol(n) => fields!(out, n, [type_name, colexpr, coldefexpr]),
        NodeRef::RangeTableSample(n) => fields!(out, n, [relation, method, args, repeatable]),
        NodeRef::ColumnDef(n) => fields!(
            out,
            n,
            [type_name, raw_default, cooked_default, identity_sequence, coll_clause, constraints, fdwoptions]
        ),
        NodeRef::TableLikeClause(n) => fields!(out, n, [relation]),
        NodeRef::IndexElem(n) => fields!(out, n, [expr, collation, opclass, opclassopts]),
        NodeRef::DefElem(n) => fields!(out, n, [arg]),
        NodeRef::LockingClause(n) => fields!(out, n, [locked_rels]),
        NodeRef::XmlSerialize(n) => fields!(out, n, [expr, type_name]),
        NodeRef::PartitionElem(n) => fields!(out, n, [expr, collation, opclass]),
        NodeRef::PartitionSpec(n) => fields!(out, n, [part_params]),
        NodeRef::PartitionBoundSpec(n) => fields!(out, n, [listdatums, lowerdatums, upperdatums]),
        NodeRef::PartitionRangeDatum(n) => fields!(out, n, [value]),
        NodeRef::PartitionCmd(n) => fields!(out, n, [name, bound]),
        NodeRef::RangeTblEntry(n) => fields!(
            out,
            n,
            [
                alias,
                eref,
                tablesample,
                subquery,
                joinaliasvars,
                joinleftcols,
                joinrightcols,
                join_using_alias,
                functions,
                tablefunc,
                values_lists,
                coltypes,
                coltypmods,
                colcollations,
                groupexprs,
                security_quals
            ]
        ),
        NodeRef::RangeTblFunction(n) => {
            fields!(out, n, [funcexpr, funccolnames, funccoltypes, funccoltypmods, funccolcollations])
        }
        NodeRef::TableSampleClause(n) => fields!(out, n, [args, repeatable]),
        NodeRef::WithCheckOption(n) => fields!(out, n, [qual]),
        NodeRef::GroupingSet(n) => fields!(out, n, [content]),
        NodeRef::WindowClause(n) => fields!(out, n, [partition_clause, order_clause, start_offset, end_offset]),
        NodeRef::WithClause(n) => fields!(out, n, [ctes]),
        NodeRef::InferClause(n) => fields!(out, n, [index_elems, where_clause]),
        NodeRef::OnConflictClause(n) => fields!(out, n, [infer, target_list, where_clause]),
        NodeRef::CtesearchClause(n) => fields!(out, n, [search_col_list]),
        NodeRef::CtecycleClause(n) => fields!(out, n, [cycle_col_list, cycle_mark_value, cycle_mark_default]),
        NodeRef::CommonTableExpr(n) => fields!(
            out,
            n,
            [
                aliascolnames,
                ctequery,
                search_clause,
                cycle_clause,
                ctecolnames,
                ctecoltypes,
                ctecoltypmods,
                ctecolcollations
            ]
        ),
        NodeRef::MergeWhenClause(n) => fields!(out, n, [condition, target_list, values]),
        NodeRef::ReturningClause(n) => fields!(out, n, [options, exprs]),
        NodeRef::JsonOutput(n) => fields!(out, n, [type_name, returning]),
        NodeRef::JsonArgument(n) => fields!(out, n, [val]),
        NodeRef::JsonFuncExpr(n) => fields!(out, n, [context_item, pathspec, passing, output, on_empty, on_error]),
        NodeRef::JsonTablePathSpec(n) => fields!(out, n, [string]),
        NodeRef::JsonTable(n) => fields!(out, n, [context_item, pathspec, passing, columns, on_error, alias]),
        NodeRef::JsonTableColumn(n) => fields!(out, n, [type_name, pathspec, format, columns, on_empty, on_error]),
        NodeRef::JsonKeyValue(n) => fields!(out, n, [key, value]),
        NodeRef::JsonParseExpr(n) => fields!(out, n, [expr, output]),
        NodeRef::JsonScalarExpr(n) => fields!(out, n, [expr, output]),
        NodeRef::JsonSerializeExpr(n) => fields!(out, n, [expr, output]),
        NodeRef::JsonObjectConstructor(n) => fields!(out, n, [exprs, output]),
        NodeRef::JsonArrayConstructor(n) => fields!(out, n, [exprs, output]),
        NodeRef::JsonArrayQueryConstructor(n) => fields!(out, n, [query, output, format]),
        NodeRef::JsonAggConstructor(n) => fields!(out, n, [output, agg_filter, agg_order, over]),
        NodeRef::JsonObjectAgg(n) => fields!(out, n, [constructor, arg]),
        NodeRef::JsonArrayAgg(n) => fields!(out, n, [constructor, arg]),
        NodeRef::RawStmt(n) => fields!(out, n, [stmt]),
        NodeRef::InsertStmt(n) => {
            fields!(out, n, [relation, cols, select_stmt, on_conflict_clause, returning_clause, with_clause])
        }
        NodeRef::DeleteStmt(n) => {
            fields!(out, n, [relation, using_clause, where_clause, returning_clause, with_clause])
        }
        NodeRef::UpdateStmt(n) => {
            fields!(out, n, [relation, target_list, where_clause, from_clause, returning_clause, with_clause])
        }
        NodeRef::MergeStmt(n) => fields!(
            out,
            n,
            [relation, source_relation, join_condition, merge_when_clauses, returning_clause, with_clause]
        ),
        NodeRef::SelectStmt(n) => fields!(
            out,
            n,
            [
                distinct_clause,
                into_clause,
                target_list,
                from_clause,
                where_clause,
                group_clause,
                having_clause,
                window_clause,
                values_lists,
                sort_clause,
                limit_offset,
                limit_count,
                locking_clause,
                with_clause,
                larg,
                rarg
            ]
        ),
        NodeRef::SetOperationStmt(n) => {
            fields!(out, n, [larg, rarg, col_types, col_typmods, col_collations, group_clauses])
        }
        NodeRef::ReturnStmt(n) => fields!(out, n, [returnval]),
        NodeRef::PlassignStmt(n) => fields!(out, n, [indirection, val]),
        NodeRef::CreateSchemaStmt(n) => fields!(out, n, [authrole, schema_elts]),
        NodeRef::AlterTableStmt(n) => fields!(out, n, [relation, cmds]),
        NodeRef::AlterTableCmd(n) => fields!(out, n, [newowner, def]),
        NodeRef::AlterCollationStmt(n) => fields!(out, n, [collname]),
        NodeRef::AlterDomainStmt(n) => fields!(out, n, [type_name, def]),
        NodeRef::GrantStmt(n) => fields!(out, n, [objects, privileges, grantees, grantor]),
        NodeRef::ObjectWithArgs(n) => fields!(out, n, [objname, objargs, objfuncargs]),
        NodeRef::AccessPriv(n) => fields!(out, n, [cols]),
        NodeRef::GrantRoleStmt(n) => fields!(out, n, [granted_roles, grantee_roles, opt, grantor]),
        NodeRef::AlterDefaultPrivilegesStmt(n) => fields!(out, n, [options, action]),
        NodeRef::CopyStmt(n) => fields!(out, n, [relation, query, attlist, options, where_clause]),
        NodeRef::VariableSetStmt(n) => fields!(out, n, [args]),
        NodeRef::CreateStmt(n) => fields!(
            out,
            n,
            [
                relation,
                table_elts,
                inh_relations,
                partbound,
                partspec,
                of_typename,
                constraints,
                nnconstraints,
                options
            ]
        ),
        NodeRef::Constraint(n) => fields!(
            out,
            n,
            [
                raw_expr,
                keys,
                including,
                exclusions,
                options,
                where_clause,
                pktable,
                fk_attrs,
                pk_attrs,
                fk_del_set_cols,
                old_conpfeqop
            ]
        ),
        NodeRef::CreateTableSpaceStmt(n) => fields!(out, n, [owner, options]),
        NodeRef::AlterTableSpaceOptionsStmt(n) => fields!(out, n, [options]),
        NodeRef::AlterTableMoveAllStmt(n) => fields!(out, n, [roles]),
        NodeRef::CreateExtensionStmt(n) => fields!(out, n, [options]),
        NodeRef::AlterExtensionStmt(n) => fields!(out, n, [options]),
        NodeRef::AlterExtensionContentsStmt(n) => fields!(out, n, [object]),
        NodeRef::CreateFdwStmt(n) => fields!(out, n, [func_options, options]),
        NodeRef::AlterFdwStmt(n) => fields!(out, n, [func_options, options]),
        NodeRef::CreateForeignServerStmt(n) => fields!(out, n, [options]),
        NodeRef::AlterForeignServerStmt(n) => fields!(out, n, [options]),
        NodeRef::CreateForeignTableStmt(n) => fields!(out, n, [base_stmt, options]),
        NodeRef::CreateUserMappingStmt(n) => fields!(out, n, [user, options]),
        NodeRef::AlterUserMappingStmt(n) => fields!(out, n, [user, options]),
        NodeRef::DropUserMappingStmt(n) => fields!(out, n, [user]),
        NodeRef::ImportForeignSchemaStmt(n) => fields!(out, n, [table_list, options]),
        NodeRef::CreatePolicyStmt(n) => fields!(out, n, [table, roles, qual, with_check]),
        NodeRef::AlterPolicyStmt(n) => fields!(out, n, [table, roles, qual, with_check]),
        NodeRef::CreateAmStmt(n) => fields!(out, n, [handler_name]),
        NodeRef::CreateTrigStmt(n) => {
            fields!(out, n, [relation, funcname, args, columns, when_clause, transition_rels, constrrel])
        }
        NodeRef::CreateEventTrigStmt(n) => fields!(out, n, [whenclause, funcname]),
        NodeRef::CreatePlangStmt(n) => fields!(out, n, [plhandler, plinline, plvalidator]),
        NodeRef::CreateRoleStmt(n) => fields!(out, n, [options]),
        NodeRef::AlterRoleStmt(n) => fields!(out, n, [role, options]),
        NodeRef::AlterRoleSetStmt(n) => fields!(out, n, [role, setstmt]),
        NodeRef::DropRoleStmt(n) => fields!(out, n, [roles]),
        NodeRef::CreateSeqStmt(n) => fields!(out, n, [sequence, options]),
        NodeRef::AlterSeqStmt(n) => fields!(out, n, [sequence, options]),
        NodeRef::DefineStmt(n) => fields!(out, n, [defnames, args, definition]),
        NodeRef::CreateDomainStmt(n) => fields!(out, n, [domainname, type_name, coll_clause, constraints]),
        NodeRef::CreateOpClassStmt(n) => fields!(out, n, [opclassname, opfamilyname, datatype, items]),
        NodeRef::CreateOpClassItem(n) => fields!(out, n, [name, order_family, class_args, storedtype]),
        NodeRef::CreateOpFamilyStmt(n) => fields!(out, n, [opfamilyname]),
        NodeRef::AlterOpFamilyStmt(n) => fields!(out, n, [opfamilyname, items]),
        NodeRef::DropStmt(n) => fields!(out, n, [objects]),
        NodeRef::TruncateStmt(n) => fields!(out, n, [relations]),
        NodeRef::CommentStmt(n) => fields!(out, n, [object]),
        NodeRef::SecLabelStmt(n) => fields!(out, n, [object]),
        NodeRef::DeclareCursorStmt(n) => fields!(out, n, [query]),
        NodeRef::IndexStmt(n) => {
            fields!(out, n, [relation, index_params, index_including_params, options, where_clause, exclude_op_names])
        }
        NodeRef::CreateStatsStmt(n) => fields!(out, n, [defnames, stat_types, exprs, relations]),
        NodeRef::StatsElem(n) => fields!(out, n, [expr]),
        NodeRef::AlterStatsStmt(n) => fields!(out, n, [defnames, stxstattarget]),
        NodeRef::CreateFunctionStmt(n) => fields!(out, n, [funcname, parameters, return_type, options, sql_body]),
        NodeRef::FunctionParameter(n) => fields!(out, n, [arg_type, defexpr]),
        NodeRef::AlterFunctionStmt(n) => fields!(out, n, [func, actions]),
        NodeRef::DoStmt(n) => fields!(out, n, [args]),
        NodeRef::CallStmt(n) => fields!(out, n, [funccall, funcexpr, outargs]),
        NodeRef::RenameStmt(n) => fields!(out, n, [relation, object]),
        NodeRef::AlterObjectDependsStmt(n) => fields!(out, n, [relation, object, extname]),
        NodeRef::AlterObjectSchemaStmt(n) => fields!(out, n, [relation, object]),
        NodeRef::AlterOwnerStmt(n) => fields!(out, n, [relation, object, newowner]),
        NodeRef::AlterOperatorStmt(n) => fields!(out, n, [opername, options]),
        NodeRef::AlterTypeStmt(n) => fields!(out, n, [type_name, options]),
        NodeRef::RuleStmt(n) => fields!(out, n, [relation, where_clause, actions]),
        NodeRef::TransactionStmt(n) => fields!(out, n, [options]),
        NodeRef::CompositeTypeStmt(n) => fields!(out, n, [typevar, coldeflist]),
        NodeRef::CreateEnumStmt(n) => fields!(out, n, [type_name, vals]),
        NodeRef::CreateRangeStmt(n) => fields!(out, n, [type_name, params]),
        NodeRef::AlterEnumStmt(n) => fields!(out, n, [type_name]),
        NodeRef::ViewStmt(n) => fields!(out, n, [view, aliases, query, options]),
        NodeRef::CreatedbStmt(n) => fields!(out, n, [options]),
        NodeRef::AlterDatabaseStmt(n) => fields!(out, n, [options]),
        NodeRef::AlterDatabaseSetStmt(n) => fields!(out, n, [setstmt]),
        NodeRef::DropdbStmt(n) => fields!(out, n, [options]),
        NodeRef::AlterSystemStmt(n) => fields!(out, n, [setstmt]),
        NodeRef::ClusterStmt(n) => fields!(out, n, [relation, params]),
        NodeRef::VacuumStmt(n) => fields!(out, n, [options, rels]),
        NodeRef::VacuumRelation(n) => fields!(out, n, [relation, va_cols]),
        NodeRef::ExplainStmt(n) => fields!(out, n, [query, options]),
        NodeRef::CreateTableAsStmt(n) => fields!(out, n, [query, into]),
        NodeRef::RefreshMatViewStmt(n) => fields!(out, n, [relation]),
        NodeRef::LockStmt(n) => fields!(out, n, [relations]),
        NodeRef::ConstraintsSetStmt(n) => fields!(out, n, [constraints]),
        NodeRef::ReindexStmt(n) => fields!(out, n, [relation, params]),
        NodeRef::CreateConversionStmt(n) => fields!(out, n, [conversion_name, func_name]),
        NodeRef::CreateCastStmt(n) => fields!(out, n, [sourcetype, targettype, func]),
        NodeRef::CreateTransformStmt(n) => fields!(out, n, [type_name, fromsql, tosql]),
        NodeRef::PrepareStmt(n) => fields!(out, n, [argtypes, query]),
        NodeRef::ExecuteStmt(n) => fields!(out, n, [params]),
        NodeRef::DropOwnedStmt(n) => fields!(out, n, [roles]),
        NodeRef::ReassignOwnedStmt(n) => fields!(out, n, [roles, newrole]),
        NodeRef::AlterTsdictionaryStmt(n) => fields!(out, n, [dictname, options]),
        NodeRef::AlterTsconfigurationStmt(n) => fields!(out, n, [cfgname, tokentype, dicts]),
        NodeRef::PublicationTable(n) => fields!(out, n, [relation, where_clause, columns]),
        NodeRef::PublicationObjSpec(n) => fields!(out, n, [pubtable]),
        NodeRef::CreatePublicationStmt(n) => fields!(out, n, [options, pubobjects]),
        NodeRef::AlterPublicationStmt(n) => fields!(out, n, [options, pubobjects]),
        NodeRef::CreateSubscriptionStmt(n) => fields!(out, n, [publication, options]),
        NodeRef::AlterSubscriptionStmt(n) => fields!(out, n, [publication, options]),
        NodeRef::List(n) => fields!(out, n, [items]),
        NodeRef::IntList(n) => fields!(out, n, [items]),
        NodeRef::OidList(n) => fields!(out, n, [items]),
        NodeRef::JsonFormat(_)
        | NodeRef::JsonTablePath(_)
        | NodeRef::RangeTblRef(_)
        | NodeRef::ParamRef(_)
        | NodeRef::RoleSpec(_)
        | NodeRef::AStar(_)
        | NodeRef::RtepermissionInfo(_)
        | NodeRef::SortGroupClause(_)
        | NodeRef::RowMarkClause(_)
        | NodeRef::ReturningOption(_)
        | NodeRef::TriggerTransition(_)
        | NodeRef::AtalterConstraint(_)
        | NodeRef::ReplicaIdentityStmt(_)
        | NodeRef::VariableShowStmt(_)
        | NodeRef::DropTableSpaceStmt(_)
        | NodeRef::AlterEventTrigStmt(_)
        | NodeRef::ClosePortalStmt(_)
        | NodeRef::FetchStmt(_)
        | NodeRef::InlineCodeBlock(_)
        | NodeRef::CallContext(_)
        | NodeRef::NotifyStmt(_)
        | NodeRef::ListenStmt(_)
        | NodeRef::UnlistenStmt(_)
        | NodeRef::LoadStmt(_)
        | NodeRef::AlterDatabaseRefreshCollStmt(_)
        | NodeRef::CheckPointStmt(_)
        | NodeRef::DiscardStmt(_)
        | NodeRef::DeallocateStmt(_)
        | NodeRef::DropSubscriptionStmt(_)
        | NodeRef::Integer(_)
        | NodeRef::Float(_)
        | NodeRef::Boolean(_)
        | NodeRef::String(_)
        | NodeRef::BitString(_)
        | NodeRef::AConst(_) => {}
    }
    children
}
