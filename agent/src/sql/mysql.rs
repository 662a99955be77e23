//! MySQL/MariaDB statement classification: a query text read with a MySQL
//! grammar (sqlparser's `MySqlDialect`) and mapped to the same [`Kind`]
//! vocabulary and [`TableRef`]s the PostgreSQL classifier produces, so one
//! policy speaks to both.
//!
//! Fails closed: a text that does not parse, that holds more than one
//! statement, that carries an executable comment (`/*! */`, `/*!50000 */`,
//! `/*M! */`, which the server runs and a parser reads as a comment), that
//! switches the client character set to one whose multi-byte characters can
//! hide a quote (SJIS, CP932, BIG5, GBK, GB18030…), that changes how the
//! server reads SQL (`sql_mode`) or sets a server variable outside a small
//! list, or that loads a client-side file (`LOAD DATA LOCAL`) is refused,
//! whatever the policy says. Calls to functions outside a list of
//! side-effect-free built-ins are [`Kind::FunctionCall`] (stored functions
//! can write; `LOAD_FILE`, `SLEEP`, `GET_LOCK` have effects).
//!
//! Not modelled (documented in README): what stored routines, triggers and
//! views do when they run, and catalog-based name resolution.

use std::collections::BTreeSet;
use std::ops::ControlFlow;

use sqlparser::ast::{
    self, Expr, ObjectName, ObjectNamePart, OnInsert, Set, SetExpr, Statement as Ast, TableFactor,
    TransactionAccessMode, TransactionMode,
};
use sqlparser::dialect::MySqlDialect;
use sqlparser::parser::Parser;

use super::{Kind, MAX_SQL_LEN, Statement, TableRef};

mod compared;
pub use compared::Compared;

/// Why a text is refused before any policy is asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the statement is longer than {MAX_SQL_LEN} bytes")]
    TooLong,
    #[error("the statement is not valid UTF-8, so it cannot be checked")]
    NotUtf8,
    #[error("the statement cannot be read with the MySQL grammar Gatehouse checks it with ({0})")]
    Unparseable(String),
    #[error("the text holds {0} statements; send one statement per query")]
    MultiStatement(usize),
    #[error(
        "the text holds an executable comment (/*! … */ or /*M! … */), which the server runs and Gatehouse cannot check"
    )]
    ExecutableComment,
    #[error(
        "character set {0} cannot be read safely (its multi-byte characters can hide quotes and backslashes); use utf8mb4"
    )]
    UnsafeCharset(String),
    #[error("setting {0} is not allowed through Gatehouse")]
    Setting(String),
    #[error("LOAD DATA LOCAL (reading a file from the client's host) is not allowed through Gatehouse")]
    LoadLocal,
    #[error("READ WRITE transactions are set by Gatehouse, not by statements")]
    ReadWrite,
}

/// A classified MySQL statement and what it does to the session.
#[derive(Debug, Clone, Default)]
pub struct Classified {
    pub statement: Statement,
    /// `USE db`: the session's database once it succeeds.
    pub uses: Option<String>,
}

/// How the session reads names, and what it needs to know of a statement.
#[derive(Debug, Clone, Default)]
pub struct Names {
    /// The current database: qualifies unqualified table names.
    pub database: Option<String>,
    /// `lower_case_table_names` is not 0: the server folds names, so does Gatehouse.
    pub fold_case: bool,
    /// The session is masked: collect what each statement compares
    /// ([`Statement::compared`]); other sessions do not pay for the walk.
    pub masked: bool,
}

/// Character sets a client may switch to (see `protocol::mysql::wire::safe_collation`).
const SAFE_CHARSETS: &[&str] = &["utf8mb4", "utf8mb3", "utf8", "latin1", "latin2", "ascii", "binary", "default"];

/// Server variables a session may set: none changes who the session is,
/// how SQL is read, what is logged or which checks run.
const SETTABLE: &[&str] = &[
    "autocommit",
    "time_zone",
    "sql_select_limit",
    "sql_safe_updates",
    "net_read_timeout",
    "net_write_timeout",
    "wait_timeout",
    "interactive_timeout",
    "transaction_isolation",
    "tx_isolation",
    "group_concat_max_len",
    "sql_quote_show_create",
    "names",
    "character_set_client",
    "character_set_connection",
    "character_set_results",
    "collation_connection",
    "profiling",
    "lc_time_names",
    "div_precision_increment",
    "max_join_size",
    "sql_big_selects",
    "sql_notes",
    "sql_warnings",
];

/// Variables whose value is a character set (or a collation named after one).
const CHARSET_VARS: &[&str] =
    &["names", "character_set_client", "character_set_connection", "character_set_results", "collation_connection"];

/// Whether a call (its lowercased name) keeps or hands over its arguments
/// where masking does not follow them: anything outside [`SAFE_FUNCTIONS`],
/// and `LAST_INSERT_ID(expr)`, which sets what `LAST_INSERT_ID()` and the OK
/// packet give back (without an argument it only reads).
fn keeps_arguments(name: &str) -> bool {
    name == "last_insert_id" || !SAFE_FUNCTIONS.contains(&name)
}

/// Built-in functions without effects beyond the statement's rows.
const SAFE_FUNCTIONS: &[&str] = &[
    "abs",
    "acos",
    "adddate",
    "addtime",
    "ascii",
    "asin",
    "atan",
    "atan2",
    "avg",
    "bin",
    "bit_and",
    "bit_count",
    "bit_length",
    "bit_or",
    "bit_xor",
    "ceil",
    "ceiling",
    "char",
    "char_length",
    "character_length",
    "coalesce",
    "concat",
    "concat_ws",
    "conv",
    "convert_tz",
    "cos",
    "cot",
    "count",
    "crc32",
    "curdate",
    "current_date",
    "current_time",
    "current_timestamp",
    "curtime",
    "database",
    "date",
    "date_add",
    "date_format",
    "date_sub",
    "datediff",
    "day",
    "dayname",
    "dayofmonth",
    "dayofweek",
    "dayofyear",
    "degrees",
    "elt",
    "exp",
    "field",
    "find_in_set",
    "floor",
    "format",
    "from_days",
    "from_unixtime",
    "greatest",
    "group_concat",
    "hex",
    "hour",
    "if",
    "ifnull",
    "instr",
    "isnull",
    "json_array",
    "json_contains",
    "json_extract",
    "json_object",
    "json_unquote",
    "json_valid",
    "last_day",
    "lcase",
    "least",
    "left",
    "length",
    "ln",
    "locate",
    "log",
    "log10",
    "log2",
    "lower",
    "lpad",
    "ltrim",
    "makedate",
    "maketime",
    "max",
    "md5",
    "microsecond",
    "mid",
    "min",
    "minute",
    "mod",
    "month",
    "monthname",
    "now",
    "nullif",
    "oct",
    "octet_length",
    "ord",
    "period_add",
    "period_diff",
    "pi",
    "position",
    "pow",
    "power",
    "quarter",
    "quote",
    "radians",
    "rand",
    "repeat",
    "replace",
    "reverse",
    "right",
    "round",
    "row_number",
    "rank",
    "dense_rank",
    "rpad",
    "rtrim",
    "schema",
    "sec_to_time",
    "second",
    "sha1",
    "sha2",
    "sign",
    "sin",
    "soundex",
    "space",
    "sqrt",
    "std",
    "stddev",
    "stddev_pop",
    "stddev_samp",
    "str_to_date",
    "strcmp",
    "subdate",
    "substr",
    "substring",
    "substring_index",
    "subtime",
    "sum",
    "sysdate",
    "tan",
    "time",
    "time_format",
    "time_to_sec",
    "timediff",
    "timestamp",
    "timestampadd",
    "timestampdiff",
    "to_days",
    "trim",
    "truncate",
    "ucase",
    "unhex",
    "unix_timestamp",
    "upper",
    "utc_date",
    "utc_time",
    "utc_timestamp",
    "uuid",
    "var_pop",
    "var_samp",
    "variance",
    "version",
    "week",
    "weekday",
    "weekofyear",
    "year",
    "yearweek",
    "user",
    "current_user",
    "session_user",
    "system_user",
    "connection_id",
    "last_insert_id",
    "row_count",
    "found_rows",
    "cast",
    "convert",
    "extract",
];

/// Does the text carry an executable comment? Read on the raw bytes, so a
/// `/*!` inside a string literal is refused too (fail closed).
fn executable_comment(text: &str) -> bool {
    let b = text.as_bytes();
    b.windows(3)
        .enumerate()
        .any(|(i, w)| matches!(w, [b'/', b'*', c] if *c == b'!' || (*c | 0x20 == b'm' && b.get(i + 3) == Some(&b'!'))))
}

/// `LOAD DATA LOCAL …` / `LOAD XML LOCAL …`, read from the first words
/// (the grammar does not know MySQL's form of it).
fn load_local(text: &str) -> bool {
    use sqlparser::tokenizer::{Token, Tokenizer};
    let Ok(tokens) = Tokenizer::new(&MySqlDialect {}, text).tokenize() else { return false };
    let words: Vec<String> = tokens
        .iter()
        .filter_map(|t| match t {
            Token::Word(w) => Some(w.value.to_ascii_uppercase()),
            _ => None,
        })
        .take(5)
        .collect();
    words.first().is_some_and(|w| w == "LOAD") && words.iter().any(|w| w == "LOCAL")
}

/// Classifies one COM_QUERY text.
pub fn classify(text: &[u8], names: &Names) -> Result<Classified, Refusal> {
    if text.len() > MAX_SQL_LEN {
        return Err(Refusal::TooLong);
    }
    let text = std::str::from_utf8(text).map_err(|_| Refusal::NotUtf8)?;
    if executable_comment(text) {
        return Err(Refusal::ExecutableComment);
    }
    // The server and the grammar disagree on these: MySQL ends a `#` comment
    // at a NUL and takes a no-break space for part of a name, the grammar
    // does not. Refused rather than guessed.
    if let Some(c) = text.chars().find(|&c| {
        (c.is_control() && !matches!(c, '\t' | '\n' | '\r' | '\x0b' | '\x0c')) || (c.is_whitespace() && !c.is_ascii())
    }) {
        return Err(Refusal::Unparseable(format!("the text holds the character U+{:04X}", u32::from(c))));
    }
    if load_local(text) {
        return Err(Refusal::LoadLocal);
    }
    let parsed = Parser::parse_sql(&MySqlDialect {}, text).map_err(|e| Refusal::Unparseable(short(&e.to_string())))?;
    let [ast] = parsed.as_slice() else {
        return Err(if parsed.is_empty() {
            Refusal::Unparseable("no statement".into())
        } else {
            Refusal::MultiStatement(parsed.len())
        });
    };
    let mut kinds = BTreeSet::new();
    let mut writes: Vec<TableRef> = Vec::new();
    let mut uses = None;
    let mut refusal = None;
    let _ = ast::visit_statements(ast, |s| {
        match statement_kinds(s, names, &mut kinds, &mut writes) {
            Ok(Some(db)) => uses = Some(db),
            Ok(None) => {}
            Err(r) => {
                refusal = Some(r);
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    });
    if let Some(r) = refusal {
        return Err(r);
    }
    let mut reads = Vec::new();
    let mut read = |t: TableRef| {
        if !writes.contains(&t) && !reads.contains(&t) {
            reads.push(t);
        }
    };
    let _ = ast::visit_relations(ast, |rel| {
        read(table_ref(rel, names));
        ControlFlow::<()>::Continue(())
    });
    // MySQL 8's `TABLE t` (a query of its own, in INSERT, CREATE … AS, a
    // derived table or a set operation) names its table outside any FROM.
    for name in table_commands(ast) {
        read(table_ref(&name, names));
    }
    // `SHOW CREATE TABLE t` shows what `SHOW COLUMNS FROM t` does and more
    // (defaults, partitioning, a view's query): a read of `t`, like it.
    if let Ast::ShowCreate { obj_type: ast::ShowCreateObject::Table | ast::ShowCreateObject::View, obj_name } = ast {
        read(table_ref(obj_name, names));
    }
    let mut functions = Vec::new();
    let _ = ast::visit_expressions(ast, |e| {
        if let Expr::Function(f) = e {
            let name = f.name.to_string().to_ascii_lowercase();
            if !SAFE_FUNCTIONS.contains(&name.as_str()) && !functions.contains(&name) {
                functions.push(name);
            }
        }
        ControlFlow::<()>::Continue(())
    });
    if !functions.is_empty() {
        kinds.insert(Kind::FunctionCall);
    }
    if kinds.is_empty() {
        kinds.insert(Kind::Other);
    }
    // The server's own schemas (grants, password hashes, other sessions'
    // statements) need `catalog = "all"`, as pg_catalog's secrets do.
    // So do the views of other sessions' statements (every Gatehouse user of
    // a backend shares its login, and a login sees its own sessions without
    // PROCESS): information_schema.PROCESSLIST / INNODB_TRX and SHOW PROCESSLIST;
    // and MySQL 8's histograms (COLUMN_STATISTICS: column values, as pg_stats).
    let mut sensitive: Vec<TableRef> = reads
        .iter()
        .chain(&writes)
        .filter(|t| {
            t.schema.as_deref().is_some_and(|s| {
                ["mysql", "performance_schema", "sys"].iter().any(|x| s.eq_ignore_ascii_case(x))
                    || (s.eq_ignore_ascii_case("information_schema")
                        && ["processlist", "innodb_trx", "column_statistics"]
                            .iter()
                            .any(|x| t.name.eq_ignore_ascii_case(x)))
            })
        })
        .cloned()
        .collect();
    if matches!(ast, Ast::ShowProcessList { .. }) {
        sensitive.push(TableRef { schema: Some("information_schema".into()), name: "processlist".into() });
    }
    let compared = names.masked.then(|| std::sync::Arc::new(compared::of(ast)));
    let statement = Statement {
        text: text.trim().to_owned(),
        kinds,
        reads,
        writes,
        functions,
        sensitive,
        compared,
        ..Statement::default()
    };
    Ok(Classified { statement, uses })
}

/// The text with every string literal replaced by `'[redacted]'` (and, with
/// `numbers`, every number by `0`): for records of texts that may hold a
/// secret. A text that cannot be tokenized is withheld whole.
pub fn redact_literals(text: &str, numbers: bool) -> (String, u32) {
    use sqlparser::tokenizer::{Token, Tokenizer};
    let Ok(tokens) = Tokenizer::new(&MySqlDialect {}, text).tokenize() else {
        return ("(text withheld: it may hold a secret and cannot be tokenized)".into(), 1);
    };
    let mut out = String::with_capacity(text.len());
    let mut n = 0;
    for t in tokens {
        match t {
            Token::SingleQuotedString(_)
            | Token::DoubleQuotedString(_)
            | Token::NationalStringLiteral(_)
            | Token::EscapedStringLiteral(_)
            | Token::HexStringLiteral(_)
            | Token::SingleQuotedByteStringLiteral(_)
            | Token::DoubleQuotedByteStringLiteral(_) => {
                n += 1;
                out.push_str("'[redacted]'");
            }
            Token::Number(..) if numbers => out.push('0'),
            other => out.push_str(&other.to_string()),
        }
    }
    (out, n)
}

fn short(s: &str) -> String {
    s.chars().take(200).collect()
}

/// A relation name as the server resolves it: `db.name`, or `name` in the current database.
/// The tables of every `TABLE t` query in a statement.
fn table_commands(ast: &Ast) -> Vec<ObjectName> {
    struct Tables(Vec<ObjectName>);
    fn body(b: &SetExpr, out: &mut Vec<ObjectName>) {
        match b {
            SetExpr::Table(t) => {
                if let Some(name) = &t.table_name {
                    let parts = t.schema_name.iter().chain([name]).map(|i| ObjectNamePart::Identifier(i.clone()));
                    out.push(ObjectName(parts.collect()));
                }
            }
            SetExpr::SetOperation { left, right, .. } => {
                body(left, out);
                body(right, out);
            }
            // A nested query is visited as a query of its own.
            _ => {}
        }
    }
    impl ast::Visitor for Tables {
        type Break = ();
        fn pre_visit_query(&mut self, q: &ast::Query) -> ControlFlow<()> {
            body(&q.body, &mut self.0);
            ControlFlow::Continue(())
        }
    }
    let mut t = Tables(Vec::new());
    let _ = ast::Visit::visit(ast, &mut t);
    t.0
}

fn table_ref(n: &ObjectName, names: &Names) -> TableRef {
    let fold = |s: &str| if names.fold_case { s.to_lowercase() } else { s.to_owned() };
    let parts: Vec<String> =
        n.0.iter()
            .map(|p| match p {
                ObjectNamePart::Identifier(i) => fold(&i.value),
                other => fold(&other.to_string()),
            })
            .collect();
    match parts.as_slice() {
        [.., schema, name] => TableRef { schema: Some(schema.clone()), name: name.clone() },
        [name] => TableRef { schema: names.database.as_deref().map(fold), name: name.clone() },
        [] => TableRef { schema: None, name: String::new() },
    }
}

fn targets(list: impl IntoIterator<Item = TableRef>, writes: &mut Vec<TableRef>) {
    for t in list {
        if !writes.contains(&t) {
            writes.push(t);
        }
    }
}

fn factor_names(f: &TableFactor, names: &Names) -> Vec<TableRef> {
    match f {
        TableFactor::Table { name, .. } => vec![table_ref(name, names)],
        _ => Vec::new(),
    }
}

fn with_joins(t: &ast::TableWithJoins, names: &Names) -> Vec<TableRef> {
    let mut v = factor_names(&t.relation, names);
    for j in &t.joins {
        v.extend(factor_names(&j.relation, names));
    }
    v
}

/// The kinds one statement node adds; `Ok(Some(db))` for `USE db`.
fn statement_kinds(
    s: &Ast,
    names: &Names,
    kinds: &mut BTreeSet<Kind>,
    writes: &mut Vec<TableRef>,
) -> Result<Option<String>, Refusal> {
    let one = |n: &ObjectName| table_ref(n, names);
    match s {
        Ast::Query(q) => {
            kinds.insert(Kind::Select);
            if !q.locks.is_empty() {
                kinds.insert(Kind::Lock);
            }
            if let SetExpr::Select(sel) = q.body.as_ref()
                && sel.into.is_some()
            {
                kinds.insert(Kind::CopyFile);
            }
        }
        Ast::Insert(i) => {
            kinds.insert(Kind::Insert);
            if i.replace_into {
                kinds.insert(Kind::Delete);
            }
            if matches!(i.on, Some(OnInsert::DuplicateKeyUpdate(_))) {
                kinds.insert(Kind::Update);
            }
            if let ast::TableObject::TableName(n) = &i.table {
                targets([one(n)], writes);
            }
        }
        Ast::Update(u) => {
            kinds.insert(Kind::Update);
            if !restricts(u.selection.as_ref()) {
                kinds.insert(Kind::UpdateWithoutWhere);
            }
            targets(with_joins(&u.table, names), writes);
        }
        Ast::Delete(d) => {
            kinds.insert(Kind::Delete);
            if !restricts(d.selection.as_ref()) {
                kinds.insert(Kind::DeleteWithoutWhere);
            }
            if d.tables.is_empty() {
                let from = match &d.from {
                    ast::FromTable::WithFromKeyword(v) | ast::FromTable::WithoutKeyword(v) => v,
                };
                targets(from.iter().flat_map(|t| with_joins(t, names)), writes);
            } else {
                targets(d.tables.iter().map(one), writes);
            }
        }
        Ast::CreateTable(c) => {
            kinds.insert(Kind::Create);
            targets([one(&c.name)], writes);
        }
        Ast::CreateView(v) => {
            kinds.insert(Kind::Create);
            targets([one(&v.name)], writes);
        }
        Ast::CreateIndex(c) => {
            kinds.insert(Kind::Create);
            targets([one(&c.table_name)], writes);
        }
        Ast::CreateDatabase { .. }
        | Ast::CreateSchema { .. }
        | Ast::CreateRole(_)
        | Ast::CreateUser(_)
        | Ast::CreateSequence { .. }
        | Ast::CreateType { .. } => {
            kinds.insert(Kind::Create);
        }
        Ast::CreateFunction(_) | Ast::CreateProcedure { .. } | Ast::CreateTrigger(_) | Ast::CreateMacro { .. } => {
            kinds.insert(Kind::DefineCode);
        }
        Ast::AlterTable(a) => {
            kinds.insert(Kind::Alter);
            targets([one(&a.name)], writes);
        }
        Ast::AlterView(a) => {
            kinds.insert(Kind::Alter);
            targets([one(&a.name)], writes);
        }
        Ast::AlterIndex { .. } | Ast::AlterSchema(_) | Ast::AlterUser(_) | Ast::AlterRole { .. } => {
            kinds.insert(Kind::Alter);
        }
        Ast::RenameTable(list) => {
            kinds.insert(Kind::Alter);
            targets(list.iter().flat_map(|r| [one(&r.old_name), one(&r.new_name)]), writes);
        }
        Ast::Drop { names: dropped, object_type, .. } => {
            kinds.insert(Kind::Drop);
            if matches!(object_type, ast::ObjectType::Table | ast::ObjectType::View | ast::ObjectType::Index) {
                targets(dropped.iter().map(one), writes);
            }
            // A database dropped: every table in it (Gatehouse does not list
            // them), which `TableRef::WHOLE` stands for.
            if matches!(object_type, ast::ObjectType::Database | ast::ObjectType::Schema) {
                targets(
                    dropped.iter().map(|n| {
                        let db = table_ref(n, names).name;
                        TableRef { schema: Some(db), name: TableRef::WHOLE.to_owned() }
                    }),
                    writes,
                );
            }
        }
        Ast::DropFunction(_) | Ast::DropProcedure { .. } | Ast::DropTrigger(_) => {
            kinds.insert(Kind::Drop);
        }
        Ast::Truncate(t) => {
            kinds.insert(Kind::Truncate);
            targets(t.table_names.iter().map(|t| one(&t.name)), writes);
        }
        Ast::Grant(_) | Ast::GrantRole(_) => {
            kinds.insert(Kind::Grant);
        }
        Ast::Revoke(_) | Ast::RevokeRole(_) => {
            kinds.insert(Kind::Revoke);
        }
        Ast::Set(set) => set_kinds(set, kinds)?,
        Ast::Use(u) => {
            kinds.insert(Kind::Set);
            return match u {
                ast::Use::Object(n) | ast::Use::Database(n) | ast::Use::Schema(n) => match n.0.as_slice() {
                    [ObjectNamePart::Identifier(i)] => {
                        Ok(Some(if names.fold_case { i.value.to_lowercase() } else { i.value.clone() }))
                    }
                    _ => Err(Refusal::Unparseable("USE of something other than one database name".into())),
                },
                _ => Err(Refusal::Unparseable("USE of something other than a database".into())),
            };
        }
        Ast::StartTransaction { modes, .. } => {
            read_write(modes)?;
            kinds.insert(Kind::Transaction);
        }
        Ast::Commit { .. } | Ast::Rollback { .. } | Ast::Savepoint { .. } | Ast::ReleaseSavepoint { .. } => {
            kinds.insert(Kind::Transaction);
        }
        Ast::Explain { .. } => {
            kinds.insert(Kind::Explain);
        }
        Ast::ExplainTable { table_name, .. } => {
            kinds.insert(Kind::Show);
            let _ = table_name;
        }
        Ast::ShowFunctions { .. }
        | Ast::ShowVariable { .. }
        | Ast::ShowStatus { .. }
        | Ast::ShowVariables { .. }
        | Ast::ShowCreate { .. }
        | Ast::ShowColumns { .. }
        | Ast::ShowDatabases { .. }
        | Ast::ShowSchemas { .. }
        | Ast::ShowCharset(_)
        | Ast::ShowTables { .. }
        | Ast::ShowViews { .. }
        | Ast::ShowCollation { .. }
        | Ast::ShowProcessList { .. } => {
            kinds.insert(Kind::Show);
        }
        Ast::Call(_) => {
            kinds.insert(Kind::Call);
        }
        Ast::LockTables { .. } | Ast::UnlockTables | Ast::Lock(_) => {
            kinds.insert(Kind::Lock);
        }
        Ast::LoadData { local: true, .. } => return Err(Refusal::LoadLocal),
        Ast::LoadData { table_name, .. } => {
            kinds.insert(Kind::CopyFile);
            targets([one(table_name)], writes);
        }
        Ast::Flush { .. } | Ast::Analyze(_) | Ast::OptimizeTable { .. } => {
            kinds.insert(Kind::Maintenance);
        }
        Ast::Prepare { .. } => {
            kinds.insert(Kind::Prepare);
        }
        Ast::Execute { .. } => {
            kinds.insert(Kind::Execute);
        }
        Ast::Deallocate { .. } => {
            kinds.insert(Kind::Deallocate);
        }
        _ => {
            kinds.insert(Kind::Other);
        }
    }
    Ok(None)
}

/// Does a WHERE condition name a column at all? (`WHERE 1=1` does not.)
fn restricts(selection: Option<&Expr>) -> bool {
    let Some(e) = selection else { return false };
    let mut found = false;
    let _ = ast::visit_expressions(e, |x| {
        if matches!(x, Expr::Identifier(_) | Expr::CompoundIdentifier(_)) {
            found = true;
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    });
    found
}

fn read_write(modes: &[TransactionMode]) -> Result<(), Refusal> {
    if modes.iter().any(|m| matches!(m, TransactionMode::AccessMode(TransactionAccessMode::ReadWrite))) {
        return Err(Refusal::ReadWrite);
    }
    Ok(())
}

fn charset_ok(value: &str) -> bool {
    let v = value.trim_matches(|c| c == '\'' || c == '"' || c == '`').to_ascii_lowercase();
    SAFE_CHARSETS.iter().any(|c| v == *c || v.starts_with(&format!("{c}_")))
}

/// `SET` statements: user variables, a few session variables, safe character sets.
fn set_kinds(set: &Set, kinds: &mut BTreeSet<Kind>) -> Result<(), Refusal> {
    let assign = |scope: Option<&ast::ContextModifier>, var: &ObjectName, value: &Expr| -> Result<(), Refusal> {
        let raw = var.to_string();
        if raw.starts_with('@') && !raw.starts_with("@@") {
            return Ok(());
        }
        let lower = raw.to_ascii_lowercase();
        let mut name = lower.trim_start_matches("@@");
        let mut global = matches!(scope, Some(ast::ContextModifier::Global));
        for prefix in ["session.", "local."] {
            name = name.strip_prefix(prefix).unwrap_or(name);
        }
        if let Some(n) = name.strip_prefix("global.") {
            global = true;
            name = n;
        }
        if global || !SETTABLE.contains(&name) {
            return Err(Refusal::Setting(raw));
        }
        if CHARSET_VARS.contains(&name) && !charset_ok(&value.to_string()) {
            return Err(Refusal::UnsafeCharset(value.to_string()));
        }
        Ok(())
    };
    match set {
        Set::SingleAssignment { scope, variable, values, .. } => {
            for v in values {
                assign(scope.as_ref(), variable, v)?;
            }
            kinds.insert(Kind::Set);
        }
        Set::MultipleAssignments { assignments } => {
            for a in assignments {
                assign(a.scope.as_ref(), &a.name, &a.value)?;
            }
            kinds.insert(Kind::Set);
        }
        Set::SetNames { charset_name, collation_name } => {
            if !charset_ok(&charset_name.value) {
                return Err(Refusal::UnsafeCharset(charset_name.value.clone()));
            }
            if let Some(c) = collation_name
                && !charset_ok(c)
            {
                return Err(Refusal::UnsafeCharset(c.clone()));
            }
            kinds.insert(Kind::Set);
        }
        Set::SetNamesDefault {} | Set::SetTimeZone { .. } => {
            kinds.insert(Kind::Set);
        }
        Set::SetTransaction { modes, .. } => {
            read_write(modes)?;
            kinds.insert(Kind::Transaction);
        }
        Set::SetRole { .. } => {
            kinds.insert(Kind::SetRole);
        }
        other => return Err(Refusal::Setting(other.to_string())),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Names {
        Names { database: Some("shop".into()), fold_case: false, masked: false }
    }

    fn kinds(sql: &str) -> Vec<&'static str> {
        let c = classify(sql.as_bytes(), &names()).unwrap_or_else(|e| panic!("{sql}: {e}"));
        c.statement.kinds.iter().map(|k| k.name()).collect()
    }

    fn refused(sql: &str) -> Refusal {
        match classify(sql.as_bytes(), &names()) {
            Err(r) => r,
            Ok(c) => panic!("{sql} was not refused: {:?}", c.statement.kinds),
        }
    }

    #[test]
    fn kinds_map_to_the_policy_vocabulary() {
        assert_eq!(kinds("SELECT id FROM orders WHERE id = 1"), ["select"]);
        assert_eq!(kinds("DROP TABLE orders"), ["drop"]);
        assert_eq!(kinds("DELETE FROM orders"), ["delete", "delete_without_where"]);
        assert_eq!(kinds("DELETE FROM orders WHERE 1=1"), ["delete", "delete_without_where"]);
        assert_eq!(kinds("DELETE FROM orders WHERE id = 3"), ["delete"]);
        assert_eq!(kinds("UPDATE orders SET x = 1"), ["update", "update_without_where"]);
        assert_eq!(kinds("INSERT INTO orders VALUES (1) ON DUPLICATE KEY UPDATE id = 2"), ["insert", "update"]);
        assert_eq!(kinds("REPLACE INTO orders VALUES (1)"), ["insert", "delete"]);
        assert_eq!(kinds("TRUNCATE TABLE orders"), ["truncate"]);
        assert_eq!(kinds("SHOW TABLES"), ["show"]);
        for sql in ["SHOW CREATE TABLE secret", "SHOW CREATE VIEW secret", "SHOW COLUMNS FROM secret"] {
            let c = classify(sql.as_bytes(), &names()).unwrap();
            assert_eq!(c.statement.reads.iter().map(ToString::to_string).collect::<Vec<_>>(), ["shop.secret"], "{sql}");
        }
        assert_eq!(kinds("BEGIN"), ["transaction"]);
        assert_eq!(kinds("SET autocommit = 0"), ["set"]);
        assert_eq!(kinds("SET NAMES utf8mb4"), ["set"]);
        assert_eq!(kinds("CALL p()"), ["call"]);
        assert_eq!(kinds("SELECT * FROM t FOR UPDATE"), ["select", "lock"]);
        assert_eq!(kinds("EXPLAIN DELETE FROM orders WHERE id = 1"), ["delete", "explain"]);
        assert_eq!(kinds("SELECT * FROM (SELECT 1) AS x WHERE 1 IN (SELECT id FROM t)"), ["select"]);
    }

    #[test]
    fn tables_are_qualified_with_the_current_database() {
        let c = classify(b"INSERT INTO orders SELECT * FROM other.items JOIN `Mixed` m", &names()).expect("parses");
        let w: Vec<String> = c.statement.writes.iter().map(ToString::to_string).collect();
        let r: Vec<String> = c.statement.reads.iter().map(ToString::to_string).collect();
        assert_eq!(w, ["shop.orders"]);
        assert_eq!(r, ["other.items", "shop.Mixed"]);
        let folded = Names { database: Some("Shop".into()), fold_case: true, masked: false };
        let c = classify(b"SELECT * FROM `Mixed`", &folded).expect("parses");
        assert_eq!(c.statement.reads[0].to_string(), "shop.mixed");
        let c = classify(b"DROP TABLE a, other.b", &names()).expect("parses");
        assert_eq!(c.statement.writes.iter().map(ToString::to_string).collect::<Vec<_>>(), ["shop.a", "other.b"]);
        assert_eq!(classify(b"USE other", &names()).expect("use").uses.as_deref(), Some("other"));
    }

    /// MySQL 8's `TABLE t` names its table outside any FROM: still a read of it.
    #[test]
    fn table_queries_read_their_table() {
        for sql in [
            &b"INSERT INTO loot TABLE other.secret"[..],
            b"CREATE TABLE loot AS TABLE other.secret",
            b"SELECT * FROM (TABLE other.secret) t",
            b"SELECT 1 UNION TABLE other.secret",
        ] {
            let c = classify(sql, &names()).expect("parses");
            let r: Vec<String> = c.statement.reads.iter().map(ToString::to_string).collect();
            assert!(r.contains(&"other.secret".to_owned()), "{}: {r:?}", String::from_utf8_lossy(sql));
        }
        let c = classify(b"SELECT * FROM (TABLE secret) t", &names()).expect("parses");
        assert_eq!(c.statement.reads.iter().map(ToString::to_string).collect::<Vec<_>>(), ["shop.secret"]);
    }

    #[test]
    fn functions_outside_the_builtins_are_function_calls() {
        assert_eq!(kinds("SELECT count(*), upper(name) FROM t"), ["select"]);
        assert_eq!(kinds("SELECT load_file('/etc/shadow')"), ["select", "function_call"]);
        assert_eq!(kinds("SELECT shop.my_func(1)"), ["select", "function_call"]);
        assert_eq!(kinds("SELECT sleep(10)"), ["select", "function_call"]);
    }

    #[test]
    fn what_cannot_be_checked_is_refused() {
        assert_eq!(refused("SELECT 1; DROP TABLE t"), Refusal::MultiStatement(2));
        assert_eq!(refused("SELECT 1 /*!50000 ; DROP TABLE t */"), Refusal::ExecutableComment);
        assert_eq!(refused("SELECT 1 /*! , (SELECT x FROM secret) */"), Refusal::ExecutableComment);
        assert_eq!(refused("SELECT 1 /*M!100000 , 2 */"), Refusal::ExecutableComment);
        assert_eq!(refused("SELECT 1 /*m! , 2 */"), Refusal::ExecutableComment);
        assert!(matches!(refused("SELEC 1"), Refusal::Unparseable(_)));
        assert!(matches!(refused(""), Refusal::Unparseable(_)));
        assert_eq!(refused("LOAD DATA LOCAL INFILE '/etc/passwd' INTO TABLE t"), Refusal::LoadLocal);
        assert!(matches!(refused("SET NAMES sjis"), Refusal::UnsafeCharset(_)));
        assert!(matches!(refused("SET NAMES 'gbk'"), Refusal::UnsafeCharset(_)));
        assert!(matches!(refused("SET character_set_client = big5"), Refusal::UnsafeCharset(_)));
        assert!(matches!(refused("SET @@session.character_set_client = 'cp932'"), Refusal::UnsafeCharset(_)));
        assert!(matches!(refused("SET sql_mode = 'ANSI_QUOTES'"), Refusal::Setting(_)));
        assert!(matches!(refused("SET @@sql_mode = 'NO_BACKSLASH_ESCAPES'"), Refusal::Setting(_)));
        assert!(matches!(refused("SET GLOBAL autocommit = 0"), Refusal::Setting(_)));
        assert!(matches!(refused("SET @@global.autocommit = 0"), Refusal::Setting(_)));
        assert!(matches!(refused("SET foreign_key_checks = 0"), Refusal::Setting(_)));
        assert_eq!(refused("SET SESSION TRANSACTION READ WRITE"), Refusal::ReadWrite);
        assert_eq!(refused("START TRANSACTION READ WRITE"), Refusal::ReadWrite);
        assert_eq!(refused(&"x".repeat(MAX_SQL_LEN + 1)), Refusal::TooLong);
        assert_eq!(classify(b"SELECT '\xff'", &names()).map(|_| ()), Err(Refusal::NotUtf8));
    }

    #[test]
    fn secrets_are_redacted_from_records() {
        let (t, n) = redact_literals("CREATE USER x IDENTIFIED BY 's3cret' -- note", false);
        assert!(!t.contains("s3cret"), "{t}");
        assert_eq!(n, 1);
        let (t, _) = redact_literals("SELECT * FROM t WHERE id = 42", true);
        assert!(!t.contains("42"), "{t}");
    }

    #[test]
    fn comments_read_as_the_server_reads_them() {
        // `--x` is not a comment in MySQL (minus minus x): the JOIN is seen.
        let c = classify(b"SELECT 1--1, (SELECT s FROM secret)\nFROM t", &names()).expect("parses");
        assert!(c.statement.reads.iter().any(|t| t.name == "secret"), "{:?}", c.statement.reads);
        // Characters the two read differently are refused.
        assert!(matches!(refused("SELECT 1 # x\0, (SELECT s FROM secret)\nFROM t"), Refusal::Unparseable(_)));
        assert!(matches!(refused("SELECT 1 --\u{a0}, (SELECT s FROM secret)\nFROM t"), Refusal::Unparseable(_)));
        let c = classify(b"SELECT * FROM mysql.user", &names()).expect("parses");
        assert_eq!(c.statement.sensitive.len(), 1);
        // Other sessions' statements (the login is shared by every Gatehouse user).
        for sql in [
            "SELECT INFO FROM information_schema.PROCESSLIST",
            "SELECT trx_query FROM INFORMATION_SCHEMA.innodb_trx",
            "SELECT HISTOGRAM FROM information_schema.COLUMN_STATISTICS",
            "SHOW FULL PROCESSLIST",
        ] {
            let c = classify(sql.as_bytes(), &names()).expect("parses");
            assert_eq!(c.statement.sensitive.len(), 1, "{sql}");
        }
        // `# …` is a comment to the end of the line for both.
        assert_eq!(kinds("SELECT 1 # DROP TABLE t"), ["select"]);
        // A user variable set from a subquery reads its tables.
        let c = classify(b"SET @x = (SELECT s FROM secret)", &names()).expect("parses");
        assert!(c.statement.reads.iter().any(|t| t.name == "secret"));
    }
}
