//! Statement classification: what a query string would do, read from
//! PostgreSQL's own grammar (libpg_query) so the policy can allow or deny
//! it by [`Kind`] and by the tables it touches.
//!
//! The classifier is built to be hard to fool by someone who wants to run a
//! write or a DROP through a read-only rule:
//!
//! - Every statement of a multi-statement string is classified, and a string
//!   that does not parse is an error as a whole (fail closed).
//! - The *whole* parse tree is walked (`sql/children.rs` lists the children
//!   of every node type): data-modifying CTEs, subqueries, `EXPLAIN ANALYZE`,
//!   `PREPARE`, `COPY (query)`, `CREATE TABLE AS`, rule actions and
//!   SQL-standard function bodies all contribute their inner kinds.
//! - Calls to functions outside a small allowlist of side-effect-free
//!   built-ins are [`Kind::FunctionCall`], wherever they appear.
//! - Anything the classifier does not recognise is [`Kind::Other`], and a
//!   statement always has at least one kind.
//!
//! What it cannot see: what a called function, a trigger, a rule or a
//! prepared statement does when it runs (hence [`Kind::is_opaque`]), and
//! server-side settings. The parser assumes `standard_conforming_strings =
//! on` and a UTF-8 client encoding, which is why changing either is
//! classified [`Kind::Other`]; a caller that tracks the session's
//! `standard_conforming_strings` (the server reports it in ParameterStatus)
//! can pass it with [`classify_with`]. Statements nested more than about 45
//! levels deep (a 50-term `a || b || ...` chain, some 30 nested subqueries)
//! do not parse: pg_query decodes the tree under prost's recursion limit.
//! That fails closed.

pub mod budget;
mod cache;
mod children;
pub mod encoding;
mod functions;
mod kinds;
pub mod lineage;
pub mod mysql;
mod recorded;
pub mod redact;
mod restrict;
pub mod shape;
mod template;

pub use budget::{Classifier, QueryLimits};
pub use cache::Cache;
pub use recorded::{KindList, KindName, TableList};

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::hash::Hash;

use pg_query::protobuf as pb;
use pg_query::{NodeEnum, NodeRef, ParserOptions};
use serde::Serialize;

/// Longest query string [`classify`] accepts, in bytes.
pub const MAX_SQL_LEN: usize = 1 << 20;

/// How deep the classifier follows the parse tree before giving up.
const MAX_DEPTH: usize = 1000;

macro_rules! kinds {
    ($($(#[doc = $doc:literal])* $variant:ident => $name:literal,)*) => {
        /// Kinds of statement the policy can allow or deny.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(rename_all = "snake_case")]
        pub enum Kind {
            $($(#[doc = $doc])* $variant,)*
        }

        impl Kind {
            const ALL: &'static [Kind] = &[$(Kind::$variant,)*];

            /// The name used in policy files, audit records and serde.
            pub fn name(self) -> &'static str {
                match self {
                    $(Kind::$variant => $name,)*
                }
            }

            /// The kind whose [`name`](Kind::name) is exactly `s` (as
            /// records spell it; [`Kind::parse`] reads a policy's).
            pub fn from_name(s: &str) -> Option<Kind> {
                match s {
                    $($name => Some(Kind::$variant),)*
                    _ => None,
                }
            }
        }
    };
}

kinds! {
    /// `SELECT`, `VALUES`, `TABLE`, `FETCH`/`MOVE` from a cursor.
    Select => "select",
    /// `INSERT`.
    Insert => "insert",
    /// `UPDATE`, and `INSERT ... ON CONFLICT DO UPDATE`.
    Update => "update",
    /// `DELETE`.
    Delete => "delete",
    /// `MERGE`.
    Merge => "merge",
    /// `COPY ... TO STDOUT`.
    CopyTo => "copy_to",
    /// `COPY ... FROM STDIN`.
    CopyFrom => "copy_from",
    /// `COPY ... PROGRAM`: runs a shell command as the server's OS user.
    CopyProgram => "copy_program",
    /// `COPY` to or from a file on the database server.
    CopyFile => "copy_file",
    /// `CREATE ...`, `SELECT ... INTO`, `IMPORT FOREIGN SCHEMA`.
    Create => "create",
    /// `ALTER ...`, `ALTER SYSTEM`, `REASSIGN OWNED`.
    Alter => "alter",
    /// `DROP ...`, `DROP OWNED`.
    Drop => "drop",
    /// `TRUNCATE`.
    Truncate => "truncate",
    /// `GRANT`, `ALTER DEFAULT PRIVILEGES`.
    Grant => "grant",
    /// `REVOKE`.
    Revoke => "revoke",
    /// `SET`/`RESET` of an ordinary setting (including `search_path`, which
    /// the session tracks), `RESET ALL`.
    Set => "set",
    /// Changes who the session is: `SET [LOCAL] ROLE`, `SET SESSION
    /// AUTHORIZATION`, their `RESET`s; and settings stored for later sessions
    /// (`ALTER ROLE|DATABASE … SET`, `ALTER SYSTEM`) beyond housekeeping.
    SetRole => "set_role",
    /// `SHOW`.
    Show => "show",
    /// `BEGIN`, `COMMIT`, `ROLLBACK`, savepoints, `SET CONSTRAINTS`.
    Transaction => "transaction",
    /// `PREPARE TRANSACTION`, `COMMIT PREPARED`, `ROLLBACK PREPARED`: they act
    /// on transactions that outlive their session (and can finish another's).
    TwoPhase => "two_phase",
    /// `PREPARE name AS ...`.
    Prepare => "prepare",
    /// `EXECUTE name`: runs a statement prepared earlier.
    Execute => "execute",
    /// `DEALLOCATE`, `CLOSE cursor`, `UNLISTEN`: releases what the session holds.
    Deallocate => "deallocate",
    /// `CALL procedure(...)`.
    Call => "call",
    /// `DO $$ ... $$`: an anonymous code block.
    Do => "do",
    /// Reaches code that is not built in (a function, operator, cast or
    /// attribute-notation call the backend's catalog resolves to user code),
    /// or a built-in with effects beyond the statement's rows (files,
    /// settings, signals, locks, sequences, replication; see `sql/functions.rs`).
    FunctionCall => "function_call",
    /// Defines code or attaches it to data: functions, procedures,
    /// operators, casts, aggregates, triggers, rules, event triggers,
    /// extensions, languages, base types; constraints, defaults, indexes,
    /// views and policies whose expressions call user code; switching
    /// triggers, rules or row security on or off.
    DefineCode => "define_code",
    /// `EXPLAIN` (always together with the explained statement's kinds).
    Explain => "explain",
    /// `LISTEN`.
    Listen => "listen",
    /// `NOTIFY`.
    Notify => "notify",
    /// `LOCK TABLE`, `SELECT ... FOR UPDATE/SHARE`.
    Lock => "lock",
    /// `VACUUM`, `ANALYZE`, `CLUSTER`, `REINDEX`, `CHECKPOINT`, `REFRESH MATERIALIZED VIEW`.
    Maintenance => "maintenance",
    /// `LOAD`: loads a shared library into the server.
    Load => "load",
    /// `DISCARD`.
    Discard => "discard",
    /// `COMMENT ON`, `SECURITY LABEL`.
    Comment => "comment",
    /// Anything not recognised, including settings that change how the server tokenises SQL.
    Other => "other",
    /// An `UPDATE` (or `MERGE … UPDATE`, `INSERT … ON CONFLICT DO UPDATE`,
    /// `ALTER COLUMN … TYPE … USING`) whose condition does not depend on a
    /// column of the target: it can touch every row.
    UpdateWithoutWhere => "update_without_where",
    /// A `DELETE` (or `MERGE … DELETE`) whose condition does not depend on a
    /// column of the target.
    DeleteWithoutWhere => "delete_without_where",
}

impl Kind {
    /// Parses a kind name as written in a policy (ASCII case-insensitive).
    pub fn parse(s: &str) -> Option<Kind> {
        Self::ALL.iter().copied().find(|k| k.name().eq_ignore_ascii_case(s))
    }

    /// Every kind, in declaration order.
    pub fn all() -> &'static [Kind] {
        Self::ALL
    }

    /// Kinds whose effect cannot be read from the text or that change who
    /// the session is: never covered by "*", only by a rule naming them.
    pub fn is_opaque(self) -> bool {
        matches!(
            self,
            Kind::FunctionCall
                | Kind::Do
                | Kind::Call
                | Kind::Execute
                | Kind::SetRole
                | Kind::CopyProgram
                | Kind::CopyFile
                | Kind::Load
                | Kind::DefineCode
        )
    }

    /// Session housekeeping every rule allows implicitly.
    pub fn is_session(self) -> bool {
        matches!(self, Kind::Transaction | Kind::Show | Kind::Set | Kind::Discard | Kind::Deallocate)
    }

    /// Statements whose relations are acted on rather than read: a table
    /// named directly under one of these goes into [`Statement::writes`].
    fn targets_relations(self) -> bool {
        matches!(
            self,
            Kind::Create
                | Kind::Alter
                | Kind::Drop
                | Kind::Truncate
                | Kind::Grant
                | Kind::Revoke
                | Kind::Lock
                | Kind::Maintenance
                | Kind::Comment
        )
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A table (or view, sequence, index: any relation) named by a statement,
/// as the parser folded it (unquoted names are lower-cased).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct TableRef {
    /// The schema when the statement named one; `None` means "as found on the search path".
    pub schema: Option<String>,
    pub name: String,
}

impl TableRef {
    /// The name that stands for every relation of its schema (a database
    /// dropped), or of every schema when it has none (`DROP OWNED`): it
    /// meets every deny pattern of that schema, and only `schema.*` (`*.*`)
    /// of the allow patterns. A relation really called `*` is judged the
    /// same way, which only ever refuses more.
    pub const WHOLE: &'static str = "*";
}

impl fmt::Display for TableRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.schema {
            Some(schema) => write!(f, "{schema}.{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

impl TableRef {
    /// The name as audit records list it: like [`fmt::Display`], but a part
    /// holding what separates names in a list (`,` `.` `"`, white space,
    /// control characters) or nothing is double-quoted, PostgreSQL's way, so a
    /// table named `x,public.salaries` cannot read as two tables, one of them
    /// another schema's.
    pub fn recorded(&self) -> String {
        fn part(out: &mut String, s: &str) {
            let plain = !s.is_empty()
                && !s.chars().any(|c| matches!(c, ',' | '.' | '"') || c.is_whitespace() || c.is_control());
            if plain {
                out.push_str(s);
            } else {
                out.push('"');
                out.push_str(&s.replace('"', "\"\""));
                out.push('"');
            }
        }
        let mut out = String::with_capacity(self.name.len() + self.schema.as_ref().map_or(0, |s| s.len() + 1));
        if let Some(schema) = &self.schema {
            part(&mut out, schema);
            out.push('.');
        }
        part(&mut out, &self.name);
        out
    }
}

/// The kinds of a statement as its record spells them: their names joined
/// by `+`, in their order (`delete+delete_without_where`); see [`KindList`].
pub fn kinds_text(kinds: &std::collections::BTreeSet<Kind>) -> String {
    KindList::of(kinds).to_string()
}

/// The tables of a statement record: each [`TableRef::recorded`], joined by
/// `,`; see [`TableList`].
pub fn recorded_tables<'a>(tables: impl IntoIterator<Item = &'a TableRef>) -> String {
    TableList::of(tables).to_string()
}

/// The names of a record's `tables` list, split at the commas outside quotes
/// (names stay as recorded, quotes included; blanks dropped).
pub fn split_recorded_tables(list: &str) -> Vec<&str> {
    recorded::split_table_list(list).map(str::trim).filter(|t| !t.is_empty()).collect()
}

impl Statement {
    /// This classification for another text of the same template: every
    /// field cloned but the text, which is `text` (a cache hit; cloning
    /// the cached text only to overwrite it cost an allocation). Every field
    /// is named, so one added later does not compile until it is handled.
    pub fn with_text(&self, text: &str) -> Self {
        let Self {
            text: _,
            kinds,
            reads,
            writes,
            functions,
            refs,
            effects,
            pending_where,
            via_views,
            sensitive,
            lineage,
            compared,
            written,
        } = self;
        Self {
            text: text.to_owned(),
            kinds: kinds.clone(),
            reads: reads.clone(),
            writes: writes.clone(),
            functions: functions.clone(),
            refs: refs.clone(),
            effects: effects.clone(),
            pending_where: pending_where.clone(),
            via_views: via_views.clone(),
            sensitive: sensitive.clone(),
            lineage: lineage.clone(),
            compared: compared.clone(),
            written: written.clone(),
        }
    }

    /// The first call of a built-in whose reads no lineage follows (SQL text
    /// it runs, a table or cursor named by a value): masking cannot follow
    /// what it returns.
    pub fn reads_unseen(&self) -> Option<&str> {
        self.functions.iter().map(String::as_str).find(|f| functions::reads_unseen(f))
    }

    /// Puts back the names as written (if the catalog pass qualified them),
    /// to be resolved again.
    pub fn unresolve(&mut self) {
        if let Some(w) = self.written.take() {
            self.reads = w.reads.clone();
            self.writes = w.writes.clone();
            self.pending_where = w.pending_where.clone();
        }
    }
}

/// One classified statement of a query string.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Statement {
    /// This statement's own source text, trimmed.
    pub text: String,
    /// Everything the statement does; never empty.
    pub kinds: BTreeSet<Kind>,
    /// Relations read (FROM, JOIN, subqueries, `COPY ... TO`), first-seen order, no duplicates.
    pub reads: Vec<TableRef>,
    /// Relations written or acted on (DML targets, `COPY ... FROM`, DDL targets).
    pub writes: Vec<TableRef>,
    /// Calls that made this a [`Kind::FunctionCall`], as written.
    pub functions: Vec<String>,
    /// Names the backend's catalog resolves (see `crate::catalog::resolve`).
    pub refs: Refs,
    /// What the statement does to the session, for the relay to track.
    pub effects: Effects,
    /// `UPDATE`/`DELETE` targets whose condition restricts only if these
    /// unqualified columns are the target's: the catalog pass decides, and
    /// adds the "without WHERE" flag when it cannot tell.
    pub pending_where: Vec<PendingWhere>,
    /// Tables read through views (from the catalog), checked against `deny_tables`.
    pub via_views: Vec<TableRef>,
    /// Catalog relations read that need `catalog = "all"` (statistics, activity, secrets).
    pub sensitive: Vec<TableRef>,
    /// Where its result columns come from, for masking (`None`: no rows it can trace).
    #[serde(skip)]
    pub lineage: Option<std::sync::Arc<lineage::Lineage>>,
    /// MySQL: the names it filters, joins, sorts, groups or counts rows on
    /// (PostgreSQL statements have their lineage's predicates instead).
    #[serde(skip)]
    pub compared: Option<std::sync::Arc<mysql::Compared>>,
    /// The relation names as written, before the catalog pass qualified
    /// them (`crate::catalog::resolve` keeps them): a prepared statement is
    /// resolved again from these at each execution, under the search path
    /// and catalog of that moment, as the server analyses it again.
    #[serde(skip)]
    pub written: Option<std::sync::Arc<Written>>,
}

/// What [`Statement::written`] keeps.
#[derive(Debug, Clone, Default)]
pub struct Written {
    pub reads: Vec<TableRef>,
    pub writes: Vec<TableRef>,
    pub pending_where: Vec<PendingWhere>,
}

/// A name as written: `name` or `schema.name` (as the parser folded it).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct QualName {
    pub schema: Option<String>,
    pub name: String,
}

impl fmt::Display for QualName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.schema {
            Some(s) => write!(f, "{s}.{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// One reference to something that may be code.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Ref {
    pub name: QualName,
    /// Inside a definition that stores the expression (a view, a default, a
    /// CHECK, an index, a policy, a rule): the code would be attached, not just called.
    pub attached: bool,
}

/// Everything in a statement that PostgreSQL resolves against its catalog
/// and that may reach code: the catalog pass decides which do.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Refs {
    /// Functions called by name (aggregates, window functions, `TABLESAMPLE` methods too).
    pub calls: Vec<Ref>,
    /// Operators named explicitly, and those `LIKE`, `BETWEEN`, `IN`, `CASE x WHEN` stand for.
    pub operators: Vec<Ref>,
    /// Types named in casts and typed literals.
    pub casts: Vec<Ref>,
    /// The last name of column references with two or more names (`o.score`):
    /// attribute notation calls a one-argument function of that name if no column has it.
    pub attributes: Vec<String>,
}

/// What kind of code object a statement defines, for other sessions'
/// classification until the catalog is read again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Defined {
    Function,
    Operator,
    Type,
}

/// What a statement does to the session that the relay tracks.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Effects {
    /// `PREPARE name AS …` (its kinds are the prepared statement's, already in `kinds`).
    pub prepare: Option<String>,
    /// `EXECUTE name` (also inside `EXPLAIN` and `CREATE TABLE … AS`).
    pub execute: Option<String>,
    /// `DEALLOCATE name` (`Some(Some)`) or `DEALLOCATE ALL` (`Some(None)`).
    pub deallocate: Option<Option<String>>,
    /// `DISCARD ALL`: forgets prepared statements and resets settings to their login values.
    pub discard_all: bool,
    /// `FETCH`/`MOVE … FROM name`: runs the portal (cursor) of that name.
    pub fetches: Option<String>,
    /// `DECLARE name CURSOR …`.
    pub declares: Option<String>,
    /// `ROLLBACK`, `ABORT` or `ROLLBACK TO SAVEPOINT`: settings made in the
    /// transaction revert, to values Gatehouse may not know (it keeps no
    /// savepoint stack, and a `COMMIT AND CHAIN` may have kept some).
    pub rollback: bool,
    /// Settings set or reset in this session (lower case); `*` for `RESET ALL`.
    pub settings: Vec<String>,
    /// `SET LOCAL search_path`: the path is this statement's until the
    /// transaction ends, then the one from before it; tracked as unknown.
    pub local_search_path: bool,
    /// May take a relation an unqualified name reached out of the server's
    /// way before the catalog is read again, so that the name reaches one
    /// further on the search path: a drop, rename or schema move, and what
    /// changes which schemas the current role may use (the server skips
    /// the others): `GRANT`/`REVOKE` of privileges or roles, `ALTER … OWNER
    /// TO`, `REASSIGN OWNED`, `DROP OWNED`.
    pub moves_names: bool,
    /// Stores a default setting for sessions to come (`ALTER ROLE|DATABASE
    /// … SET`, `ALTER SYSTEM`): the catalog, whose default search path new
    /// sessions are pinned to, is read again once it commits.
    pub stores_settings: bool,
    /// Schemas it renames or drops: it acts on every relation in them
    /// (the catalog pass lists those among its writes, so the rules that
    /// name them hold: `ALTER SCHEMA hr RENAME TO x` would take `hr.*`
    /// out from under `deny_tables = ["hr.*"]`).
    pub whole_schemas: Vec<String>,
    /// `search_path` as this statement sets it: `Some(None)` back to the login value.
    pub search_path: Option<Option<Vec<String>>>,
    /// Turns the session's read-only guard off (`SET TRANSACTION READ WRITE`,
    /// `BEGIN READ WRITE`, `default_transaction_read_only = off`, …).
    pub read_write: bool,
    /// Sets (or stores for later sessions) a client encoding Gatehouse cannot read.
    pub unsafe_encoding: Option<String>,
    /// May change how the server reads the next message (`client_encoding`,
    /// `standard_conforming_strings`, their resets, `ROLLBACK` of a
    /// transaction that set them): the relay waits for the server's answer
    /// before classifying what follows.
    pub changes_reading: bool,
    /// Code objects this statement defines or renames.
    pub defines: Vec<(Defined, QualName)>,
}

/// An `UPDATE`/`DELETE` target whose condition depends on unqualified columns.
#[derive(Debug, Clone, Serialize)]
pub struct PendingWhere {
    pub flag: Kind,
    pub target: TableRef,
    pub columns: Vec<String>,
}

/// Why a query string could not be classified. Both are the client's doing.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    /// PostgreSQL's grammar rejects the string, or its tree is nested too
    /// deeply to classify. pg_query does not report where, so `position`
    /// is `None` for now.
    #[error("statement does not parse: {message}")]
    Parse { message: String, position: Option<usize> },
    /// Longer than [`MAX_SQL_LEN`]; refused without parsing.
    #[error("statement too long: {len} bytes")]
    TooLong { len: usize },
}

/// How the server will tokenise the query, when it differs from the defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseOptions {
    /// The session's `standard_conforming_strings` (on by default since PostgreSQL 9.1).
    pub standard_conforming_strings: bool,
}

impl Default for ParseOptions {
    fn default() -> Self {
        Self { standard_conforming_strings: true }
    }
}

/// Parses a query string (possibly several statements separated by `;`)
/// with PostgreSQL's own grammar and classifies every statement. An empty
/// string (or only comments/whitespace) gives an empty Vec. A parse error
/// is an error for the whole string (fail closed).
pub fn classify(sql: &str) -> Result<Vec<Statement>, SqlError> {
    classify_with(sql, ParseOptions::default())
}

/// [`classify`] for a session whose tokenising settings are known to differ
/// from the defaults. Names are resolved against the built-in catalog only
/// (what `gatehouse policy test` and `explain` can know offline); the relay
/// uses [`parse`] and resolves against the backend's own catalog.
pub fn classify_with(sql: &str, options: ParseOptions) -> Result<Vec<Statement>, SqlError> {
    let mut all = parse(sql, options)?;
    let catalog = crate::catalog::Catalog::builtin();
    let session = crate::catalog::SessionNames::default();
    for s in &mut all {
        crate::catalog::resolve(s, catalog, &session);
    }
    Ok(all)
}

// Set when the classifier read the value of a constant (a `SET` value, a
// folded `1 = 1`, an `ORDER BY 2`, a COPY option): such a classification
// depends on the literals and is never shared between texts that differ
// only in them (see `cache`).
thread_local! {
    static CONSTANT_READ: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Notes that the classification being made depends on a constant's value.
pub(crate) fn constant_read() {
    CONSTANT_READ.with(|c| c.set(true));
}

/// Parses like [`parse`], and says whether the classification read the
/// value of any constant.
pub(crate) fn parse_noting_constants(sql: &str, options: ParseOptions) -> (Result<Vec<Statement>, SqlError>, bool) {
    CONSTANT_READ.with(|c| c.set(false));
    let r = parse(sql, options);
    (r, CONSTANT_READ.with(std::cell::Cell::get))
}

/// Parses and classifies what the text alone tells: every kind except the
/// ones that depend on the catalog (user functions, operators and casts;
/// views; pending "without WHERE" decisions), which
/// [`crate::catalog::resolve`] adds.
pub fn parse(sql: &str, options: ParseOptions) -> Result<Vec<Statement>, SqlError> {
    if sql.len() > MAX_SQL_LEN {
        return Err(SqlError::TooLong { len: sql.len() });
    }
    let mut parser_options = ParserOptions::DEFAULT;
    if !options.standard_conforming_strings {
        parser_options |= ParserOptions::DISABLE_STANDARD_CONFORMING_STRINGS;
    }
    let parsed = pg_query::parse(sql, parser_options).map_err(parse_error)?;
    parsed.protobuf.stmts.iter().map(|raw| classify_one(sql, raw)).collect()
}

fn parse_error(e: pg_query::Error) -> SqlError {
    let message = match e {
        pg_query::Error::Parse(message) => message,
        pg_query::Error::Conversion(_) => "statement contains a NUL byte".to_owned(),
        // prost refuses trees nested deeper than its recursion limit.
        pg_query::Error::Decode(_) => "statement too deeply nested".to_owned(),
        other => other.to_string(),
    };
    SqlError::Parse { message, position: None }
}

fn classify_one(sql: &str, raw: &pb::RawStmt) -> Result<Statement, SqlError> {
    let mut walker = Walker::default();
    let mut traced = None;
    if let Some(node) = raw.stmt.as_ref().and_then(|n| n.node.as_ref()) {
        walker.visit(node.to_ref(), Role::Read, 0)?;
        traced = lineage::of(node.to_ref()).map(std::sync::Arc::new);
    }
    let mut kinds = walker.kinds;
    if kinds.is_empty() {
        kinds.insert(Kind::Other);
    }
    Ok(Statement {
        text: statement_text(sql, raw).trim().to_owned(),
        kinds,
        reads: walker.reads.list,
        writes: walker.writes.list,
        functions: walker.functions.list,
        refs: Refs {
            calls: walker.calls.list,
            operators: walker.operators.list,
            casts: walker.casts.list,
            attributes: walker.attributes.list,
        },
        effects: walker.effects,
        pending_where: walker.pending_where,
        via_views: Vec::new(),
        sensitive: Vec::new(),
        lineage: traced,
        compared: None,
        written: None,
    })
}

/// The statement's own slice of the query string. A length of 0 means "to
/// the end". Offsets that do not fall on character boundaries (which the
/// parser does not produce) give the whole string, which is never less than
/// the statement.
fn statement_text<'s>(sql: &'s str, raw: &pb::RawStmt) -> &'s str {
    let start = usize::try_from(raw.stmt_location).unwrap_or(0);
    let end = match usize::try_from(raw.stmt_len) {
        Ok(0) | Err(_) => sql.len(),
        Ok(len) => start.saturating_add(len),
    };
    sql.get(start..end).unwrap_or(sql)
}

/// How a relation named at this point of the tree is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Read,
    Write,
}

/// Items in first-seen order without duplicates.
#[derive(Debug)]
struct Ordered<T> {
    list: Vec<T>,
    seen: HashSet<T>,
}

impl<T> Default for Ordered<T> {
    fn default() -> Self {
        Self { list: Vec::new(), seen: HashSet::new() }
    }
}

impl<T: Clone + Eq + Hash> Ordered<T> {
    fn push(&mut self, item: T) {
        if self.seen.insert(item.clone()) {
            self.list.push(item);
        }
    }
}

/// The CTE names in scope, innermost last, counted per name so that a
/// lookup costs the same however many CTEs a statement defines.
#[derive(Debug, Default)]
struct CteScope<'t> {
    stack: Vec<&'t str>,
    counts: HashMap<&'t str, usize>,
}

impl<'t> CteScope<'t> {
    fn push(&mut self, name: &'t str) {
        self.stack.push(name);
        *self.counts.entry(name).or_default() += 1;
    }

    fn mark(&self) -> usize {
        self.stack.len()
    }

    /// Leaves scope: forgets every name pushed since `mark`.
    fn truncate(&mut self, mark: usize) {
        while self.stack.len() > mark {
            let Some(name) = self.stack.pop() else { break };
            if let Some(count) = self.counts.get_mut(name) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    self.counts.remove(name);
                }
            }
        }
    }

    fn contains(&self, name: &str) -> bool {
        self.counts.contains_key(name)
    }
}

/// Walks one statement's tree, collecting what it does.
#[derive(Debug, Default)]
struct Walker<'t> {
    kinds: BTreeSet<Kind>,
    reads: Ordered<TableRef>,
    writes: Ordered<TableRef>,
    functions: Ordered<String>,
    calls: Ordered<Ref>,
    operators: Ordered<Ref>,
    casts: Ordered<Ref>,
    attributes: Ordered<String>,
    effects: Effects,
    pending_where: Vec<PendingWhere>,
    /// Names of the CTEs in scope at this point.
    ctes: CteScope<'t>,
    /// Inside `ALTER SYSTEM`/`ALTER ROLE ... SET`: a SET there is stored
    /// for later sessions, not run in this one.
    stored_settings: bool,
    /// Inside function options (`CREATE FUNCTION … SET x = y`): applies
    /// while the function runs, which is `define_code` already.
    function_settings: bool,
    /// Inside an expression that is stored and run later (view, default,
    /// CHECK, index, policy, rule, trigger condition).
    attaching: bool,
}

impl<'t> Walker<'t> {
    fn visit(&mut self, node: NodeRef<'t>, role: Role, depth: usize) -> Result<(), SqlError> {
        if depth > MAX_DEPTH {
            return Err(SqlError::Parse { message: "statement too deeply nested".to_owned(), position: None });
        }
        let own = kinds::node_kinds(node);
        let role = if own.iter().any(|k| k.targets_relations()) { Role::Write } else { role };
        match node {
            NodeRef::VariableSetStmt(s) if self.stored_settings => {
                self.kinds.insert(kinds::stored_set_kind(s));
                if s.name.eq_ignore_ascii_case("client_encoding")
                    && let Some(v) = kinds::single_value(&s.args)
                    && encoding::is_unsafe_client_encoding(&v)
                {
                    self.effects.unsafe_encoding = Some(v);
                }
            }
            NodeRef::VariableSetStmt(_) if self.function_settings => {}
            NodeRef::VariableSetStmt(s) => {
                self.kinds.extend(own);
                self.session_setting(s);
            }
            NodeRef::GrantStmt(_)
            | NodeRef::GrantRoleStmt(_)
            | NodeRef::AlterOwnerStmt(_)
            | NodeRef::ReassignOwnedStmt(_)
            | NodeRef::DropOwnedStmt(_)
            | NodeRef::DropStmt(_)
            | NodeRef::RenameStmt(_)
            | NodeRef::AlterObjectSchemaStmt(_) => {
                self.kinds.extend(own);
                self.effects.moves_names = true;
                if matches!(node, NodeRef::DropOwnedStmt(_)) {
                    // Whatever the roles own, in every schema.
                    self.writes.push(TableRef { schema: None, name: TableRef::WHOLE.to_owned() });
                }
            }
            _ => self.kinds.extend(own),
        }
        match node {
            NodeRef::RangeVar(r) => {
                self.relation(r, role);
                Ok(())
            }
            NodeRef::FuncCall(call) => {
                match functions::qual_name(&call.funcname) {
                    Some(name) => {
                        if functions::is_dangerous(&name) || functions::runs_query_text(&name, call.args.len()) {
                            self.kinds.insert(Kind::FunctionCall);
                            self.functions.push(functions::call_name(call));
                        }
                        self.calls.push(Ref { name, attached: self.attaching });
                    }
                    None => {
                        self.kinds.insert(Kind::FunctionCall);
                        self.functions.push(functions::call_name(call));
                    }
                }
                self.children(node, depth, |_| Some(Role::Read))
            }
            NodeRef::AExpr(e) => {
                let between = matches!(
                    pb::AExprKind::try_from(e.kind),
                    Ok(pb::AExprKind::AexprBetween
                        | pb::AExprKind::AexprNotBetween
                        | pb::AExprKind::AexprBetweenSym
                        | pb::AExprKind::AexprNotBetweenSym)
                );
                if between {
                    self.operator(QualName { schema: None, name: ">=".into() });
                    self.operator(QualName { schema: None, name: "<=".into() });
                } else {
                    self.operator_names(&e.name);
                }
                self.children(node, depth, |field| (field != "name").then_some(Role::Read))
            }
            NodeRef::SubLink(l) => {
                self.operator_names(&l.oper_name);
                self.children(node, depth, |field| (field != "oper_name").then_some(Role::Read))
            }
            NodeRef::SortBy(b) => {
                self.operator_names(&b.use_op);
                self.children(node, depth, |field| (field != "use_op").then_some(Role::Read))
            }
            NodeRef::CaseExpr(c) => {
                if c.arg.is_some() {
                    self.operator(QualName { schema: None, name: "=".into() });
                }
                self.children(node, depth, |_| Some(Role::Read))
            }
            NodeRef::TypeCast(t) => {
                if let Some(tn) = &t.type_name {
                    self.cast_to(tn);
                }
                self.children(node, depth, |field| (field != "type_name").then_some(Role::Read))
            }
            NodeRef::ColumnRef(c) => {
                let names: Vec<&str> = c
                    .fields
                    .iter()
                    .filter_map(|f| match &f.node {
                        Some(NodeEnum::String(s)) => Some(s.sval.as_str()),
                        _ => None,
                    })
                    .collect();
                if let [_, .., last] = names.as_slice()
                    && !c.fields.iter().any(|f| matches!(f.node, Some(NodeEnum::AStar(_))))
                {
                    self.attributes.push((*last).to_owned());
                }
                Ok(())
            }
            NodeRef::AIndirection(ind) => {
                // `(row).f`: like attribute notation, may call `f(row)`.
                for f in &ind.indirection {
                    if let Some(NodeEnum::String(s)) = &f.node {
                        self.attributes.push(s.sval.clone());
                    }
                }
                self.children(node, depth, |_| Some(Role::Read))
            }
            NodeRef::RangeTableSample(t) => {
                if let Some(name) = functions::qual_name(&t.method) {
                    self.calls.push(Ref { name, attached: self.attaching });
                }
                self.children(node, depth, |field| (field != "method").then_some(Role::Read))
            }
            NodeRef::SelectStmt(s) => self.query(node, s.with_clause.as_ref(), Role::Read, depth),
            NodeRef::InsertStmt(s) => {
                if let Some(c) = &s.on_conflict_clause
                    && c.action == pb::OnConflictAction::OnconflictUpdate as i32
                    && let Some(target) = restrict::Target::of(s.relation.as_ref(), false)
                {
                    self.where_flag(Kind::UpdateWithoutWhere, target, s.relation.as_ref(), c.where_clause.as_deref());
                }
                self.insert(node, s, depth)
            }
            NodeRef::UpdateStmt(s) => {
                if let Some(target) = restrict::Target::of(s.relation.as_ref(), !s.from_clause.is_empty()) {
                    self.where_flag(Kind::UpdateWithoutWhere, target, s.relation.as_ref(), s.where_clause.as_deref());
                }
                self.query(node, s.with_clause.as_ref(), Role::Write, depth)
            }
            NodeRef::DeleteStmt(s) => {
                if let Some(target) = restrict::Target::of(s.relation.as_ref(), !s.using_clause.is_empty()) {
                    self.where_flag(Kind::DeleteWithoutWhere, target, s.relation.as_ref(), s.where_clause.as_deref());
                }
                self.query(node, s.with_clause.as_ref(), Role::Write, depth)
            }
            NodeRef::MergeStmt(s) => {
                self.merge_flags(s);
                self.query(node, s.with_clause.as_ref(), Role::Write, depth)
            }
            NodeRef::CopyStmt(s) => self.query(node, None, if s.is_from { Role::Write } else { Role::Read }, depth),
            // `FOR UPDATE OF a`: `a` names a FROM item (often an alias), not a table.
            NodeRef::LockingClause(_) => Ok(()),
            // REFERENCES and LIKE name tables that are read, not altered;
            // CHECK and DEFAULT expressions are stored.
            NodeRef::Constraint(_) | NodeRef::TableLikeClause(_) => {
                self.attached(|w| w.children(node, depth, |_| Some(Role::Read)))
            }
            NodeRef::ColumnDef(_)
            | NodeRef::IndexStmt(_)
            | NodeRef::CreateStatsStmt(_)
            | NodeRef::CreatePolicyStmt(_)
            | NodeRef::AlterPolicyStmt(_)
            | NodeRef::CreateDomainStmt(_)
            | NodeRef::AlterDomainStmt(_)
            | NodeRef::RuleStmt(_)
            | NodeRef::CreateTrigStmt(_)
            | NodeRef::ViewStmt(_)
            | NodeRef::PartitionSpec(_)
            | NodeRef::PartitionBoundSpec(_) => {
                self.defines_from(node);
                self.attached(|w| w.children(node, depth, |_| Some(role)))
            }
            NodeRef::CreateTableAsStmt(s) => {
                let matview = s.objtype == pb::ObjectType::ObjectMatview as i32;
                if matview {
                    self.attached(|w| w.children(node, depth, |_| Some(role)))
                } else {
                    self.children(node, depth, |_| Some(role))
                }
            }
            NodeRef::AlterTableCmd(c) => {
                // `ALTER COLUMN … TYPE … USING expr` runs once; the rest is stored.
                if c.subtype == pb::AlterTableType::AtAlterColumnType as i32 {
                    self.children(node, depth, |_| Some(role))
                } else {
                    self.attached(|w| w.children(node, depth, |_| Some(role)))
                }
            }
            NodeRef::CallStmt(s) => {
                // The procedure itself is the CALL; its arguments may call functions.
                self.children(node, depth, |field| (field != "funccall").then_some(Role::Read))?;
                match &s.funccall {
                    Some(call) => self.children(NodeRef::FuncCall(call), depth + 1, |_| Some(Role::Read)),
                    None => Ok(()),
                }
            }
            NodeRef::DropStmt(s) => {
                for object in &s.objects {
                    self.object(s.remove_type, object.node.as_ref());
                    if s.remove_type == pb::ObjectType::ObjectSchema as i32
                        && let Some(NodeEnum::String(name)) = &object.node
                    {
                        self.effects.whole_schemas.push(name.sval.clone());
                    }
                }
                self.children(node, depth, |_| Some(role))
            }
            NodeRef::CommentStmt(s) => {
                self.object(s.objtype, s.object.as_ref().and_then(|o| o.node.as_ref()));
                self.children(node, depth, |_| Some(role))
            }
            NodeRef::SecLabelStmt(s) => {
                self.object(s.objtype, s.object.as_ref().and_then(|o| o.node.as_ref()));
                self.children(node, depth, |_| Some(role))
            }
            NodeRef::AlterSystemStmt(_) | NodeRef::AlterRoleSetStmt(_) | NodeRef::AlterDatabaseSetStmt(_) => {
                self.effects.stores_settings = true;
                let outer = std::mem::replace(&mut self.stored_settings, true);
                let result = self.children(node, depth, |_| Some(role));
                self.stored_settings = outer;
                result
            }
            NodeRef::CreateFunctionStmt(_) | NodeRef::AlterFunctionStmt(_) => {
                self.defines_from(node);
                let outer = std::mem::replace(&mut self.function_settings, true);
                let result = self.attached(|w| w.children(node, depth, |_| Some(role)));
                self.function_settings = outer;
                result
            }
            NodeRef::DefineStmt(_)
            | NodeRef::CreateCastStmt(_)
            | NodeRef::RenameStmt(_)
            | NodeRef::AlterObjectSchemaStmt(_) => {
                self.defines_from(node);
                if let NodeRef::RenameStmt(r) = node
                    && r.rename_type == pb::ObjectType::ObjectSchema as i32
                {
                    self.effects.whole_schemas.push(r.subname.clone());
                }
                self.children(node, depth, |_| Some(role))
            }
            NodeRef::TransactionStmt(t) => {
                self.transaction(t);
                self.children(node, depth, |_| Some(role))
            }
            NodeRef::PrepareStmt(p) => {
                self.effects.prepare = Some(p.name.clone());
                self.children(node, depth, |_| Some(role))
            }
            NodeRef::ExecuteStmt(e) => {
                self.effects.execute = Some(e.name.clone());
                self.children(node, depth, |_| Some(role))
            }
            NodeRef::DeallocateStmt(d) => {
                self.effects.deallocate = Some((!d.isall && !d.name.is_empty()).then(|| d.name.clone()));
                Ok(())
            }
            NodeRef::FetchStmt(f) => {
                self.effects.fetches = Some(f.portalname.clone());
                Ok(())
            }
            NodeRef::DeclareCursorStmt(d) => {
                self.effects.declares = Some(d.portalname.clone());
                self.children(node, depth, |_| Some(role))
            }
            NodeRef::DiscardStmt(d) => {
                if d.target == pb::DiscardMode::DiscardAll as i32 {
                    self.effects.discard_all = true;
                    self.effects.settings.push("*".into());
                    self.effects.search_path = Some(None);
                    self.effects.changes_reading = true;
                    self.effects.deallocate = Some(None);
                }
                Ok(())
            }
            _ => self.children(node, depth, |_| Some(role)),
        }
    }

    /// Runs `body` with stored (attached) expressions in scope.
    fn attached(&mut self, body: impl FnOnce(&mut Self) -> Result<(), SqlError>) -> Result<(), SqlError> {
        let outer = std::mem::replace(&mut self.attaching, true);
        let result = body(self);
        self.attaching = outer;
        result
    }

    fn operator(&mut self, name: QualName) {
        self.operators.push(Ref { name, attached: self.attaching });
    }

    fn operator_names(&mut self, names: &[pg_query::Node]) {
        if names.is_empty() {
            return;
        }
        match functions::qual_name(names) {
            Some(name) => self.operator(name),
            None => {
                self.kinds.insert(Kind::FunctionCall);
                self.functions.push("(operator)".into());
            }
        }
    }

    fn cast_to(&mut self, tn: &pb::TypeName) {
        match functions::qual_name(&tn.names) {
            // `x::%TYPE` and friends name a column's type: not a cast to a named type.
            Some(name) if tn.pct_type => drop(name),
            Some(name) => self.casts.push(Ref { name, attached: self.attaching }),
            None => {
                self.kinds.insert(Kind::FunctionCall);
                self.functions.push("(cast)".into());
            }
        }
    }

    /// A `SET`/`RESET` run in this session: what the relay must track.
    fn session_setting(&mut self, s: &pb::VariableSetStmt) {
        let Ok(kind) = pb::VariableSetKind::try_from(s.kind) else { return };
        let name = s.name.to_ascii_lowercase();
        if s.is_local && name == "search_path" {
            // Until the transaction ends, then back to a path not tracked here.
            self.effects.local_search_path = true;
            self.effects.settings.push(name);
            return;
        }
        match kind {
            pb::VariableSetKind::VarResetAll => {
                self.effects.settings.push("*".into());
                self.effects.search_path = Some(None);
                self.effects.changes_reading = true;
            }
            pb::VariableSetKind::VarSetMulti => {
                // SET TRANSACTION / SET SESSION CHARACTERISTICS AS TRANSACTION.
                if read_write_option(&s.args) {
                    self.effects.read_write = true;
                }
                if name.contains("characteristics") {
                    self.effects.settings.push("default_transaction_read_only".into());
                }
            }
            pb::VariableSetKind::VarSetValue => {
                let value = kinds::single_value(&s.args);
                match name.as_str() {
                    "search_path" => {
                        self.effects.search_path = Some(kinds::all_values(&s.args));
                    }
                    "client_encoding" | "names" => match value.as_deref() {
                        Some(v) if encoding::is_unsafe_client_encoding(v) => {
                            self.effects.unsafe_encoding = Some(v.to_owned());
                        }
                        Some(v) if encoding::is_utf8(v) => {}
                        _ => self.effects.changes_reading = true,
                    },
                    "standard_conforming_strings" if !value.as_deref().is_some_and(kinds::is_true_word) => {
                        self.effects.changes_reading = true;
                    }
                    "default_transaction_read_only" | "transaction_read_only"
                        if !value.as_deref().is_some_and(kinds::is_true_word) =>
                    {
                        self.effects.read_write = true;
                    }
                    _ => {}
                }
                self.effects.settings.push(name);
            }
            pb::VariableSetKind::VarSetDefault | pb::VariableSetKind::VarReset => {
                if name == "search_path" {
                    self.effects.search_path = Some(None);
                }
                if kinds::changes_reading(&name) {
                    self.effects.changes_reading = true;
                }
                self.effects.settings.push(name);
            }
            pb::VariableSetKind::VarSetCurrent | pb::VariableSetKind::Undefined => {
                self.effects.settings.push(name);
            }
        }
    }

    fn transaction(&mut self, t: &pb::TransactionStmt) {
        match pb::TransactionStmtKind::try_from(t.kind) {
            Ok(pb::TransactionStmtKind::TransStmtBegin | pb::TransactionStmtKind::TransStmtStart)
                if read_write_option(&t.options) =>
            {
                self.effects.read_write = true;
            }
            // Settings made in the rolled-back part revert, perhaps to ones that read SQL differently.
            Ok(pb::TransactionStmtKind::TransStmtRollback | pb::TransactionStmtKind::TransStmtRollbackTo) => {
                self.effects.changes_reading = true;
                self.effects.rollback = true;
            }
            _ => {}
        }
    }

    /// Records the "without WHERE" flag for a DML target, now or for the catalog pass.
    fn where_flag(
        &mut self,
        flag: Kind,
        target: restrict::Target<'_>,
        relation: Option<&pb::RangeVar>,
        clause: Option<&pg_query::Node>,
    ) {
        match restrict::restricts(target, clause) {
            restrict::Restricts::Yes => {}
            restrict::Restricts::No => {
                self.kinds.insert(flag);
            }
            restrict::Restricts::Maybe(columns) => {
                if let Some(r) = relation {
                    self.pending_where.push(PendingWhere { flag, target: table_ref(r), columns });
                } else {
                    self.kinds.insert(flag);
                }
            }
        }
    }

    /// `MERGE`: `WHEN MATCHED … UPDATE|DELETE` touches the rows its ON
    /// condition (and the clause's own AND condition) select; `WHEN NOT
    /// MATCHED BY SOURCE` those its AND condition selects.
    fn merge_flags(&mut self, s: &pb::MergeStmt) {
        let Some(target) = restrict::Target::of(s.relation.as_ref(), false) else { return };
        for clause in &s.merge_when_clauses {
            let Some(NodeEnum::MergeWhenClause(c)) = &clause.node else { continue };
            let flag = match pb::CmdType::try_from(c.command_type) {
                Ok(pb::CmdType::CmdUpdate) => Kind::UpdateWithoutWhere,
                Ok(pb::CmdType::CmdDelete) => Kind::DeleteWithoutWhere,
                _ => continue,
            };
            let own = restrict::restricts(target, c.condition.as_deref());
            let on = if c.match_kind == pb::MergeMatchKind::MergeWhenMatched as i32 {
                restrict::restricts(target, s.join_condition.as_deref())
            } else {
                restrict::Restricts::No
            };
            if own != restrict::Restricts::Yes && on != restrict::Restricts::Yes {
                self.kinds.insert(flag);
            }
        }
    }

    /// Code objects a DDL statement defines, renames or moves.
    fn defines_from(&mut self, node: NodeRef<'_>) {
        let mut add = |what: Defined, names: &[pg_query::Node]| {
            if let Some(n) = functions::qual_name(names) {
                self.effects.defines.push((what, n));
            }
        };
        match node {
            NodeRef::CreateFunctionStmt(f) => add(Defined::Function, &f.funcname),
            NodeRef::DefineStmt(d) => match pb::ObjectType::try_from(d.kind) {
                Ok(pb::ObjectType::ObjectAggregate) => add(Defined::Function, &d.defnames),
                Ok(pb::ObjectType::ObjectOperator) => add(Defined::Operator, &d.defnames),
                Ok(pb::ObjectType::ObjectType) => add(Defined::Type, &d.defnames),
                _ => {}
            },
            NodeRef::CreateDomainStmt(d) => add(Defined::Type, &d.domainname),
            NodeRef::CreateCastStmt(c) => {
                if let Some(t) = &c.targettype {
                    add(Defined::Type, &t.names);
                }
            }
            NodeRef::RenameStmt(r) if kinds::is_code_object(r.rename_type) => {
                let what = match pb::ObjectType::try_from(r.rename_type) {
                    Ok(pb::ObjectType::ObjectOperator) => Defined::Operator,
                    Ok(pb::ObjectType::ObjectType | pb::ObjectType::ObjectDomain) => Defined::Type,
                    _ => Defined::Function,
                };
                self.effects.defines.push((what, QualName { schema: None, name: r.newname.clone() }));
            }
            NodeRef::AlterObjectSchemaStmt(a) if kinds::is_code_object(a.object_type) => {
                if let Some(name) = object_last_name(a.object.as_deref()) {
                    let what = match pb::ObjectType::try_from(a.object_type) {
                        Ok(pb::ObjectType::ObjectOperator) => Defined::Operator,
                        Ok(pb::ObjectType::ObjectType | pb::ObjectType::ObjectDomain) => Defined::Type,
                        _ => Defined::Function,
                    };
                    self.effects.defines.push((what, QualName { schema: Some(a.newschema.clone()), name }));
                }
            }
            _ => {}
        }
    }

    /// Visits the children of `node`, each with the role `role_of(field)`
    /// gives it, or not at all for `None`.
    fn children(
        &mut self,
        node: NodeRef<'t>,
        depth: usize,
        role_of: impl Fn(&str) -> Option<Role>,
    ) -> Result<(), SqlError> {
        for (field, child) in children::children(node) {
            if let Some(role) = role_of(field) {
                self.visit(child, role, depth + 1)?;
            }
        }
        Ok(())
    }

    /// A statement that may carry a WITH clause and a target `relation`.
    fn query(
        &mut self,
        node: NodeRef<'t>,
        with: Option<&'t pb::WithClause>,
        target: Role,
        depth: usize,
    ) -> Result<(), SqlError> {
        self.scoped(with, depth, |w| {
            w.children(node, depth, |field| match field {
                "with_clause" => None,
                "relation" => Some(target),
                _ => Some(Role::Read),
            })
        })
    }

    /// `INSERT`. Its rows usually come as a VALUES list, which the grammar
    /// writes as a SELECT; that is not a query of its own, but whatever
    /// the rows contain (subqueries, calls) is walked as usual.
    fn insert(&mut self, node: NodeRef<'t>, s: &'t pb::InsertStmt, depth: usize) -> Result<(), SqlError> {
        self.scoped(s.with_clause.as_ref(), depth, |w| {
            w.children(node, depth, |field| match field {
                "with_clause" | "select_stmt" => None,
                "relation" => Some(Role::Write),
                _ => Some(Role::Read),
            })?;
            match s.select_stmt.as_deref().and_then(|n| n.node.as_ref()) {
                Some(NodeEnum::SelectStmt(rows)) if !rows.values_lists.is_empty() => {
                    let rows_node = NodeRef::SelectStmt(rows);
                    w.scoped(rows.with_clause.as_ref(), depth + 1, |w| {
                        w.children(rows_node, depth + 1, |field| (field != "with_clause").then_some(Role::Read))
                    })
                }
                Some(query) => w.visit(query.to_ref(), Role::Read, depth + 1),
                None => Ok(()),
            }
        })
    }

    /// Runs `body` with the CTEs of `with` in scope. As PostgreSQL scopes
    /// them, a CTE is visible to the statement's body and to later CTEs (to
    /// all of them under `RECURSIVE`), and to nothing outside the statement.
    fn scoped(
        &mut self,
        with: Option<&'t pb::WithClause>,
        depth: usize,
        body: impl FnOnce(&mut Self) -> Result<(), SqlError>,
    ) -> Result<(), SqlError> {
        let mark = self.ctes.mark();
        let result = self.with_clause(with, depth).and_then(|()| body(self));
        self.ctes.truncate(mark);
        result
    }

    fn with_clause(&mut self, with: Option<&'t pb::WithClause>, depth: usize) -> Result<(), SqlError> {
        let Some(with) = with else { return Ok(()) };
        let name = |n: &'t pg_query::Node| match &n.node {
            Some(NodeEnum::CommonTableExpr(cte)) => Some(cte.ctename.as_str()),
            _ => None,
        };
        if with.recursive {
            with.ctes.iter().filter_map(name).for_each(|n| self.ctes.push(n));
        }
        for cte in &with.ctes {
            if let Some(node) = &cte.node {
                self.visit(node.to_ref(), Role::Read, depth + 2)?;
            }
            if let (false, Some(n)) = (with.recursive, name(cte)) {
                self.ctes.push(n);
            }
        }
        Ok(())
    }

    fn relation(&mut self, r: &pb::RangeVar, role: Role) {
        let unqualified = r.schemaname.is_empty() && r.catalogname.is_empty();
        let table =
            TableRef { schema: (!r.schemaname.is_empty()).then(|| r.schemaname.clone()), name: r.relname.clone() };
        match role {
            Role::Write => self.writes.push(table),
            Role::Read if unqualified && self.ctes.contains(&r.relname) => {}
            Role::Read => self.reads.push(table),
        }
    }

    /// The relation named by a `DROP`/`COMMENT ON`/`SECURITY LABEL` object,
    /// which the grammar gives as a list of names rather than a `RangeVar`.
    fn object(&mut self, object_type: i32, object: Option<&NodeEnum>) {
        let Some(NodeEnum::List(list)) = object else { return };
        let names: Option<Vec<&str>> = list
            .items
            .iter()
            .map(|n| match &n.node {
                Some(NodeEnum::String(s)) => Some(s.sval.as_str()),
                _ => None,
            })
            .collect();
        let Some(names) = names else { return };
        let relation = match pb::ObjectType::try_from(object_type) {
            Ok(
                pb::ObjectType::ObjectTable
                | pb::ObjectType::ObjectView
                | pb::ObjectType::ObjectMatview
                | pb::ObjectType::ObjectForeignTable
                | pb::ObjectType::ObjectSequence
                | pb::ObjectType::ObjectIndex,
            ) => names.as_slice(),
            Ok(pb::ObjectType::ObjectColumn) => names.split_last().map_or(&[][..], |(_, relation)| relation),
            _ => return,
        };
        let table = match relation {
            [name] => TableRef { schema: None, name: (*name).to_owned() },
            [.., schema, name] => TableRef { schema: Some((*schema).to_owned()), name: (*name).to_owned() },
            [] => return,
        };
        self.writes.push(table);
    }
}

/// Whether transaction options ask for READ WRITE (or anything but an explicit read-only).
fn read_write_option(options: &[pg_query::Node]) -> bool {
    options.iter().any(|o| match &o.node {
        Some(NodeEnum::DefElem(d)) if d.defname == "transaction_read_only" => {
            let value = d.arg.as_deref().map(std::slice::from_ref).and_then(kinds::single_value);
            !value.as_deref().is_some_and(kinds::is_true_word)
        }
        _ => false,
    })
}

fn table_ref(r: &pb::RangeVar) -> TableRef {
    TableRef { schema: (!r.schemaname.is_empty()).then(|| r.schemaname.clone()), name: r.relname.clone() }
}

/// The last name of an object reference (`ObjectWithArgs` or a name list).
fn object_last_name(object: Option<&pg_query::Node>) -> Option<String> {
    match object?.node.as_ref()? {
        NodeEnum::ObjectWithArgs(o) => functions::qual_name(&o.objname).map(|q| q.name),
        NodeEnum::List(l) => functions::qual_name(&l.items).map(|q| q.name),
        NodeEnum::TypeName(t) => functions::qual_name(&t.names).map(|q| q.name),
        NodeEnum::String(s) => Some(s.sval.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::Kind::*;
    use super::*;

    /// Classifies `sql`, which must be exactly one statement.
    fn one(sql: &str) -> Statement {
        let mut all = classify(sql).unwrap_or_else(|e| panic!("{sql:?}: {e}"));
        assert_eq!(all.len(), 1, "{sql:?} should be one statement: {all:?}");
        all.remove(0)
    }

    #[test]
    fn defaults_stored_for_sessions_to_come() {
        for sql in [
            "ALTER ROLE CURRENT_USER SET search_path = hr, mine",
            "ALTER ROLE CURRENT_USER SET role = 'hr_reader'",
            "ALTER ROLE r IN DATABASE d RESET ALL",
            "ALTER DATABASE d SET search_path TO DEFAULT",
            "ALTER SYSTEM SET work_mem = '8MB'",
        ] {
            assert!(one(sql).effects.stores_settings, "{sql}");
        }
        for sql in ["SET search_path = a", "SET ROLE r", "RESET ALL", "ALTER ROLE r RENAME TO s"] {
            assert!(!one(sql).effects.stores_settings, "{sql}");
        }
    }

    #[test]
    fn statements_that_may_move_what_a_name_reaches() {
        for sql in [
            "DROP TABLE mine.bonuses",
            "DROP SCHEMA mine CASCADE",
            "ALTER TABLE mine.bonuses RENAME TO gone",
            "ALTER SCHEMA mine RENAME TO mine2",
            "ALTER TABLE mine.bonuses SET SCHEMA public",
            "ALTER VIEW v SET SCHEMA other",
            "REVOKE USAGE ON SCHEMA mine FROM CURRENT_USER",
            "GRANT USAGE ON SCHEMA mine TO r",
            "REVOKE hr_reader FROM gh_app",
            "ALTER SCHEMA mine OWNER TO r",
            "REASSIGN OWNED BY a TO b",
            "DROP OWNED BY a",
        ] {
            assert!(one(sql).effects.moves_names, "{sql}");
        }
        for sql in ["SELECT 1", "ALTER TABLE t ADD COLUMN c int", "CREATE TABLE t (a int)", "SET search_path = a, b"] {
            assert!(!one(sql).effects.moves_names, "{sql}");
        }
        assert_eq!(one("ALTER SCHEMA hr RENAME TO x").effects.whole_schemas, ["hr"]);
        assert_eq!(one("DROP SCHEMA hr, \"Other\" CASCADE").effects.whole_schemas, ["hr", "Other"]);
        assert!(one("ALTER TABLE hr.t RENAME TO x").effects.whole_schemas.is_empty());
    }

    fn kinds_of(sql: &str) -> Vec<Kind> {
        one(sql).kinds.into_iter().collect()
    }

    /// Asserts the exact kinds of each single-statement query.
    fn check(cases: &[(&str, &[Kind])]) {
        for (sql, want) in cases {
            let mut want = want.to_vec();
            want.sort();
            assert_eq!(kinds_of(sql), want, "{sql:?}");
        }
    }

    fn tables(names: &[&str]) -> Vec<TableRef> {
        names
            .iter()
            .map(|n| match n.split_once('.') {
                Some((schema, name)) => TableRef { schema: Some(schema.to_owned()), name: name.to_owned() },
                None => TableRef { schema: None, name: (*n).to_owned() },
            })
            .collect()
    }

    fn reads(sql: &str) -> Vec<TableRef> {
        one(sql).reads
    }

    #[test]
    fn calls_that_read_unseen_rows_are_named() {
        for (sql, f) in [
            ("SELECT table_to_xml('t', true, false, '')", "table_to_xml"),
            ("SELECT pg_catalog.query_to_xml('SELECT 1', true, false, '')", "pg_catalog.query_to_xml"),
            ("SELECT * FROM ts_stat('SELECT v FROM t')", "ts_stat"),
            ("SELECT ts_rewrite('a'::tsquery, 'SELECT x, y FROM t')", "ts_rewrite"),
        ] {
            assert_eq!(one(sql).reads_unseen(), Some(f), "{sql}");
        }
        for sql in
            ["SELECT ts_rewrite('a'::tsquery, 'a'::tsquery, 'b'::tsquery)", "SELECT set_config('a.b', 'c', false)"]
        {
            assert_eq!(one(sql).reads_unseen(), None, "{sql}");
        }
    }

    #[test]
    fn recorded_table_lists_cannot_be_forged_by_a_table_name() {
        // A table a user may create, named to read as another schema's table
        // in a comma-joined list, is quoted there; ordinary names are not.
        let s = one(r#"SELECT * FROM scratch."x,public.salaries", "Mixed Case", orders, "a""b", "tab	name""#);
        let list = recorded_tables(&s.reads);
        assert_eq!(list, r#"scratch."x,public.salaries","Mixed Case",orders,"a""b","tab	name""#);
        assert_eq!(
            split_recorded_tables(&list),
            [r#"scratch."x,public.salaries""#, r#""Mixed Case""#, "orders", r#""a""b""#, "\"tab\tname\""]
        );
        // Not one of them reads as public.salaries.
        assert!(!split_recorded_tables(&list).contains(&"public.salaries"));
        assert_eq!(recorded_tables(&tables(&["public.t", "t"])), "public.t,t");
        assert_eq!(split_recorded_tables("public.t, t,"), ["public.t", "t"]);
        assert_eq!(TableRef { schema: Some("a.b".into()), name: String::new() }.recorded(), r#""a.b"."""#);
    }

    fn writes(sql: &str) -> Vec<TableRef> {
        one(sql).writes
    }

    fn parse_error(sql: &str) {
        match classify(sql) {
            Err(SqlError::Parse { .. }) => {}
            other => panic!("{sql:?} should not parse: {other:?}"),
        }
    }

    #[test]
    fn kind_names_round_trip() {
        assert_eq!(Kind::all().len(), 38);
        for &k in Kind::all() {
            assert_eq!(Kind::parse(k.name()), Some(k));
            assert_eq!(serde_json::to_string(&k).unwrap(), format!("\"{}\"", k.name()));
            assert_eq!(k.to_string(), k.name());
        }
        assert_eq!(Kind::parse("SET_ROLE"), Some(SetRole));
        assert_eq!(Kind::parse("update_without_where"), Some(UpdateWithoutWhere));
        assert_eq!(Kind::parse("*"), None);
        assert_eq!(Kind::parse("selects"), None);
    }

    #[test]
    fn opaque_and_session_kinds() {
        let opaque: Vec<Kind> = Kind::all().iter().copied().filter(|k| k.is_opaque()).collect();
        assert_eq!(opaque, [CopyProgram, CopyFile, SetRole, Execute, Call, Do, FunctionCall, DefineCode, Load]);
        let session: Vec<Kind> = Kind::all().iter().copied().filter(|k| k.is_session()).collect();
        assert_eq!(session, [Set, Show, Transaction, Deallocate, Discard]);
    }

    #[test]
    fn table_ref_display() {
        assert_eq!(tables(&["public.t", "t"]).iter().map(ToString::to_string).collect::<Vec<_>>(), ["public.t", "t"]);
    }

    #[test]
    fn empty_input_is_no_statements() {
        for sql in ["", "   \n\t", "-- only a comment", "/* block */", ";", " ; ;; "] {
            assert!(classify(sql).unwrap().is_empty(), "{sql:?}");
        }
    }

    #[test]
    fn syntax_errors_fail_the_whole_string() {
        parse_error("SELEC 1");
        parse_error("SELECT 1; DROPP TABLE t");
        parse_error("SELECT 'unterminated");
        parse_error("SELECT 1 FROM");
        parse_error("SELECT \0 1");
        parse_error("DROP TABLE t; SELECT (");
    }

    #[test]
    fn too_long_is_refused_before_parsing() {
        let sql = format!("SELECT 1{}", " ".repeat(MAX_SQL_LEN));
        assert!(matches!(classify(&sql), Err(SqlError::TooLong { len }) if len == MAX_SQL_LEN + 8));
        let fits = format!("SELECT 1{}", " ".repeat(MAX_SQL_LEN - 8));
        assert_eq!(classify(&fits).unwrap().len(), 1);
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let deep = format!("SELECT {}", vec!["1"; 20_000].join("+"));
        parse_error(&deep);
        let deep_subqueries = format!("SELECT {}1{}", "(SELECT ".repeat(2_000), ")".repeat(2_000));
        parse_error(&deep_subqueries);
        // Ordinary nesting is fine.
        let nested = format!("SELECT {}1{}", "(SELECT ".repeat(10), ")".repeat(10));
        assert_eq!(kinds_of(&nested), [Select]);
    }

    #[test]
    fn multiple_statements_are_classified_separately() {
        let all = classify("SELECT 1; DROP TABLE t").unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].text, "SELECT 1");
        assert_eq!(all[0].kinds.iter().copied().collect::<Vec<_>>(), [Select]);
        assert_eq!(all[1].text, "DROP TABLE t");
        assert_eq!(all[1].kinds.iter().copied().collect::<Vec<_>>(), [Drop]);
        assert_eq!(all[1].writes, tables(&["t"]));

        let all = classify("  select 1 ;\n  DELETE FROM t WHERE id = 1  ;  select 'é;ü' ; ").unwrap();
        let texts: Vec<&str> = all.iter().map(|s| s.text.as_str()).collect();
        assert_eq!(texts, ["select 1", "DELETE FROM t WHERE id = 1", "select 'é;ü'"]);
    }

    #[test]
    fn text_that_only_looks_like_sql_is_not_a_statement() {
        check(&[
            ("SELECT 'DROP TABLE t'", &[Select]),
            ("SELECT 1 -- ; DROP TABLE t", &[Select]),
            ("SELECT $$; DROP TABLE t; $$", &[Select]),
            ("SELECT $x$ ' ; DROP TABLE t; $x$", &[Select]),
            ("SELECT \"DROP\" FROM \"DELETE\"", &[Select]),
            ("SELECT 1 /* ; DROP TABLE t; */", &[Select]),
            ("/* comment */ DROP TABLE t", &[Drop]),
            ("-- comment\nDELETE FROM t WHERE id = 1", &[Delete]),
            ("dRoP tAbLe T", &[Drop]),
            ("DROP TABLE \"DROP\"", &[Drop]),
        ]);
        assert_eq!(reads("SELECT \"DROP\" FROM \"DELETE\""), tables(&["DELETE"]));
        assert_eq!(writes("DROP TABLE \"DROP\""), tables(&["DROP"]));
        assert_eq!(writes("dRoP tAbLe T"), tables(&["t"]));
    }

    #[test]
    fn queries() {
        check(&[
            ("SELECT 1", &[Select]),
            ("select * from t where a = 1 order by b limit 3", &[Select]),
            ("VALUES (1), (2)", &[Select]),
            ("TABLE t", &[Select]),
            ("SELECT 1 UNION SELECT 2 EXCEPT SELECT 3", &[Select]),
            ("SELECT * FROM t WHERE id IN (SELECT id FROM u)", &[Select]),
            ("SELECT * FROM t FOR UPDATE", &[Select, Lock]),
            ("SELECT * FROM t FOR SHARE SKIP LOCKED", &[Select, Lock]),
            ("SELECT * FROM (SELECT * FROM t FOR NO KEY UPDATE) s", &[Select, Lock]),
        ]);
    }

    #[test]
    fn dml() {
        check(&[
            ("INSERT INTO t VALUES (1)", &[Insert]),
            ("INSERT INTO t SELECT * FROM u", &[Insert, Select]),
            ("INSERT INTO t VALUES ((SELECT secret FROM s))", &[Insert, Select]),
            ("INSERT INTO t VALUES (f())", &[Insert, FunctionCall]),
            ("INSERT INTO t WITH x AS (SELECT 1) VALUES ((SELECT * FROM x))", &[Insert, Select]),
            ("INSERT INTO t VALUES (1) ON CONFLICT DO NOTHING", &[Insert]),
            ("INSERT INTO t VALUES (1) ON CONFLICT (id) DO UPDATE SET x = 1", &[Insert, Update, UpdateWithoutWhere]),
            ("INSERT INTO t VALUES (1) ON CONFLICT (id) DO UPDATE SET x = 1 WHERE t.x < 5", &[Insert, Update]),
            ("UPDATE t SET x = 1 WHERE id = 1", &[Update]),
            ("UPDATE t SET x = 1", &[Update, UpdateWithoutWhere]),
            ("UPDATE t SET x = 1 WHERE 1=1", &[Update, UpdateWithoutWhere]),
            ("DELETE FROM t WHERE id=1", &[Delete]),
            ("DELETE FROM t", &[Delete, DeleteWithoutWhere]),
            ("DELETE FROM t WHERE true", &[Delete, DeleteWithoutWhere]),
            ("DELETE FROM t WHERE CURRENT OF c", &[Delete]),
            ("UPDATE t SET x = 1 WHERE CURRENT OF c", &[Update]),
            (
                "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE \
                 WHEN NOT MATCHED THEN INSERT VALUES (s.id)",
                &[Merge, Delete, Insert],
            ),
            ("MERGE INTO t USING s ON true WHEN MATCHED THEN DELETE", &[Merge, Delete, DeleteWithoutWhere]),
            (
                "MERGE INTO t USING s ON s.x = 1 WHEN MATCHED THEN UPDATE SET x = 1",
                &[Merge, Update, UpdateWithoutWhere],
            ),
            (
                "MERGE INTO t USING s ON t.id = s.id WHEN NOT MATCHED BY SOURCE THEN DELETE",
                &[Merge, Delete, DeleteWithoutWhere],
            ),
            ("MERGE INTO t USING s ON t.id = s.id WHEN NOT MATCHED BY SOURCE AND t.old THEN DELETE", &[Merge, Delete]),
        ]);
    }

    #[test]
    fn constant_true_where_counts_as_none() {
        for clause in [
            "true",
            "TRUE",
            "1=1",
            "1 = '1'::int",
            "'a' = 'a'",
            "2 > 1",
            "1 <> 2",
            "NOT false",
            "true AND 2 >= 2",
            "1=1 OR id = 2",
            "'t'::boolean",
            "'yes'::bool",
            "1::boolean",
            "NULL IS NULL",
            "1 IS NOT NULL",
            "true IS TRUE",
            "NULL IS NOT TRUE",
            "(((1=1)))",
            "NULL = NULL",
            "'a' < 'b'",
            "'true'",
            "1 = 1.0",
            "1 IN (1)",
            "(SELECT true)",
            "coalesce(true, false)",
            "EXISTS (SELECT 1)",
            "id = 1 OR (SELECT true)",
        ] {
            let sql = format!("DELETE FROM t WHERE {clause}");
            assert!(kinds_of(&sql).contains(&DeleteWithoutWhere), "{sql}");
        }
        for clause in
            ["false", "id = 1", "id = id", "1 = 2", "NULL", "1=1 AND id = 2", "false OR id = 2", "x", "id IS NOT NULL"]
        {
            let sql = format!("DELETE FROM t WHERE {clause}");
            assert_eq!(kinds_of(&sql), [Delete], "{sql}");
        }
    }

    #[test]
    fn copy() {
        check(&[
            ("COPY t FROM STDIN", &[CopyFrom]),
            ("COPY t (a, b) FROM STDIN WITH (FORMAT csv)", &[CopyFrom]),
            ("COPY t TO STDOUT", &[CopyTo]),
            ("COPY (SELECT * FROM t) TO STDOUT", &[CopyTo, Select]),
            ("COPY (DELETE FROM t RETURNING *) TO STDOUT", &[CopyTo, Delete, DeleteWithoutWhere]),
            ("COPY t FROM PROGRAM 'curl http://x'", &[CopyProgram]),
            ("COPY t TO PROGRAM 'cat > /tmp/x'", &[CopyProgram]),
            ("COPY (SELECT 1) TO PROGRAM 'sh'", &[CopyProgram, Select]),
            ("COPY t FROM '/etc/passwd'", &[CopyFile]),
            ("COPY t TO '/tmp/out'", &[CopyFile]),
            ("COPY t FROM STDIN WHERE pg_sleep(1) IS NULL", &[CopyFrom, FunctionCall]),
        ]);
        assert_eq!(writes("COPY s.t FROM STDIN"), tables(&["s.t"]));
        assert!(reads("COPY s.t FROM STDIN").is_empty());
        assert_eq!(reads("COPY t TO STDOUT"), tables(&["t"]));
        assert!(writes("COPY t TO STDOUT").is_empty());
        assert_eq!(writes("COPY (DELETE FROM t RETURNING *) TO STDOUT"), tables(&["t"]));
    }

    #[test]
    fn ddl() {
        check(&[
            ("CREATE TABLE t (id int primary key)", &[Create]),
            ("CREATE TEMP TABLE t (id int)", &[Create]),
            ("CREATE INDEX i ON t (lower(name))", &[Create]),
            ("CREATE VIEW v AS SELECT * FROM t", &[Create, Select]),
            ("CREATE MATERIALIZED VIEW m AS SELECT 1", &[Create, Select]),
            ("CREATE TABLE x AS SELECT 1", &[Create, Select]),
            ("SELECT * INTO x FROM t", &[Create, Select]),
            ("CREATE TABLE x AS EXECUTE p", &[Create, Execute]),
            ("CREATE SCHEMA s", &[Create]),
            ("CREATE SCHEMA s CREATE TABLE t (id int)", &[Create]),
            ("CREATE ROLE r LOGIN", &[Create]),
            ("CREATE DATABASE d", &[Create]),
            ("CREATE EXTENSION dblink", &[Create, DefineCode]),
            ("CREATE SEQUENCE s", &[Create]),
            ("CREATE TYPE mood AS ENUM ('a', 'b')", &[Create]),
            ("CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$ DELETE FROM t; SELECT 1 $$", &[Create, DefineCode]),
            ("CREATE FUNCTION f() RETURNS int LANGUAGE sql SET role = 'x' AS 'select 1'", &[Create, DefineCode]),
            (
                "CREATE FUNCTION f() RETURNS void LANGUAGE sql BEGIN ATOMIC DELETE FROM t; END",
                &[Create, DefineCode, Delete, DeleteWithoutWhere],
            ),
            ("CREATE TRIGGER tr AFTER INSERT ON t FOR EACH ROW EXECUTE FUNCTION f()", &[Create, DefineCode]),
            ("CREATE RULE r AS ON INSERT TO t DO INSTEAD NOTHING", &[Create, DefineCode]),
            (
                "CREATE RULE r AS ON INSERT TO t DO ALSO DELETE FROM u",
                &[Create, DefineCode, Delete, DeleteWithoutWhere],
            ),
            ("CREATE POLICY p ON t USING (owner = current_user)", &[Create]),
            ("IMPORT FOREIGN SCHEMA s FROM SERVER srv INTO public", &[Create]),
            ("ALTER TABLE t ADD COLUMN c int", &[Alter]),
            ("ALTER TABLE t RENAME TO u", &[Alter]),
            ("ALTER ROLE r PASSWORD 'x'", &[Alter]),
            ("ALTER ROLE r SET role TO 'admin'", &[Alter, SetRole]),
            ("ALTER DATABASE d SET work_mem = '1GB'", &[Alter]),
            ("ALTER TABLE t DROP COLUMN c", &[Alter, Drop]),
            ("ALTER TABLE t DROP CONSTRAINT c", &[Alter, Drop]),
            ("ALTER TABLE t ALTER COLUMN c TYPE int USING 0", &[Alter, UpdateWithoutWhere]),
            ("ALTER TABLE t ALTER COLUMN c TYPE bigint", &[Alter]),
            ("ALTER TABLE t DISABLE TRIGGER ALL", &[Alter, DefineCode]),
            ("ALTER TABLE t DISABLE ROW LEVEL SECURITY", &[Alter, DefineCode]),
            ("ALTER FUNCTION f(int) RENAME TO lower", &[Alter, DefineCode]),
            ("ALTER FUNCTION f(int) SET SCHEMA pg_catalog", &[Alter, DefineCode]),
            ("ALTER TABLE t RENAME TO u2", &[Alter]),
            ("CREATE OPERATOR #@# (LEFTARG = int, RIGHTARG = int, FUNCTION = f)", &[Create, DefineCode]),
            ("CREATE CAST (int AS text) WITH FUNCTION f(int)", &[Create, DefineCode]),
            ("CREATE AGGREGATE a (int) (SFUNC = f, STYPE = int)", &[Create, DefineCode]),
            ("CREATE DOMAIN d AS int CHECK (VALUE > 0)", &[Create]),
            ("CREATE TYPE t2 AS (a int)", &[Create]),
            ("CREATE EVENT TRIGGER e ON ddl_command_start EXECUTE FUNCTION f()", &[Create, DefineCode]),
            ("ALTER SYSTEM SET work_mem = '1GB'", &[Alter]),
            ("ALTER SYSTEM RESET ALL", &[Alter, SetRole]),
            ("ALTER FUNCTION f() SET search_path = public", &[Alter, DefineCode]),
            ("REASSIGN OWNED BY a TO b", &[Alter]),
            ("DROP TABLE t", &[Drop]),
            ("DROP TABLE IF EXISTS a, b CASCADE", &[Drop]),
            ("DROP FUNCTION f(int)", &[Drop]),
            ("DROP DATABASE d", &[Drop]),
            ("DROP ROLE r", &[Drop]),
            ("DROP OWNED BY r", &[Drop]),
            ("TRUNCATE t", &[Truncate]),
            ("TRUNCATE TABLE a, b RESTART IDENTITY", &[Truncate]),
            ("GRANT SELECT ON t TO r", &[Grant]),
            ("GRANT admin TO r", &[Grant]),
            ("REVOKE SELECT ON t FROM r", &[Revoke]),
            ("REVOKE admin FROM r", &[Revoke]),
            ("ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO r", &[Grant]),
            ("ALTER DEFAULT PRIVILEGES REVOKE SELECT ON TABLES FROM r", &[Grant, Revoke]),
            ("COMMENT ON TABLE t IS 'x'", &[Comment]),
            ("SECURITY LABEL ON TABLE t IS 'x'", &[Comment]),
        ]);
    }

    #[test]
    fn set_show_and_identity() {
        check(&[
            ("SET work_mem = '64MB'", &[Set]),
            ("SET search_path TO public, pg_catalog", &[Set]),
            ("SET app.tenant = '42'", &[Other]),
            ("SET session_replication_role = replica", &[Other]),
            ("SET LOCAL statement_timeout = 5", &[Set]),
            ("RESET work_mem", &[Set]),
            ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", &[Set]),
            ("SET TIME ZONE 'UTC'", &[Set]),
            ("SHOW work_mem", &[Show]),
            ("SHOW ALL", &[Show]),
            ("SET ROLE postgres", &[SetRole]),
            ("set role postgres", &[SetRole]),
            ("SET LOCAL ROLE postgres", &[SetRole]),
            ("SET SESSION ROLE postgres", &[SetRole]),
            ("SET ROLE NONE", &[SetRole]),
            ("set session authorization 'x'", &[SetRole]),
            ("SET SESSION AUTHORIZATION DEFAULT", &[SetRole]),
            ("RESET ROLE", &[SetRole]),
            ("RESET SESSION AUTHORIZATION", &[SetRole]),
            ("RESET ALL", &[Set]),
            ("SET role = 'postgres'", &[SetRole]),
            ("SET \"ROLE\" TO postgres", &[SetRole]),
            ("SET session_authorization = 'x'", &[SetRole]),
            ("SET \"Session_Authorization\" = 'x'", &[SetRole]),
            ("RESET \"role\"", &[SetRole]),
            ("DISCARD ALL", &[Discard]),
            ("DISCARD PLANS", &[Discard]),
            ("DISCARD TEMP", &[Discard]),
            ("DISCARD SEQUENCES", &[Discard]),
        ]);
    }

    #[test]
    fn settings_that_change_how_sql_is_read_are_tracked() {
        let eff = |sql: &str| one(sql).effects;
        for sql in [
            "SET standard_conforming_strings = off",
            "SET standard_conforming_strings TO false",
            "RESET standard_conforming_strings",
            "SET client_encoding = 'LATIN1'",
            "RESET client_encoding",
            "SET client_encoding TO DEFAULT",
            "RESET ALL",
            "DISCARD ALL",
            "ROLLBACK",
            "ROLLBACK TO SAVEPOINT s",
        ] {
            assert!(eff(sql).changes_reading, "{sql}");
            assert!(eff(sql).unsafe_encoding.is_none(), "{sql}");
        }
        for sql in
            ["SET standard_conforming_strings = on", "SET client_encoding TO 'UTF8'", "SET NAMES 'unicode'", "COMMIT"]
        {
            assert!(!eff(sql).changes_reading, "{sql}");
        }
        for sql in [
            "SET client_encoding = 'SJIS'",
            "SET NAMES 'BIG5'",
            "set client_encoding to 'Shift-JIS'",
            "SET client_encoding = 'windows936'",
            "ALTER ROLE gh SET client_encoding = 'sjis'",
            "ALTER DATABASE d SET client_encoding TO 'GBK'",
            "ALTER SYSTEM SET client_encoding = 'uhc'",
        ] {
            assert!(eff(sql).unsafe_encoding.is_some(), "{sql}");
        }
        assert_eq!(eff("SET search_path = hr, \"$user\"").search_path, Some(Some(vec!["hr".into(), "$user".into()])));
        assert_eq!(eff("RESET search_path").search_path, Some(None));
        assert_eq!(eff("SET search_path TO DEFAULT").search_path, Some(None));
    }

    #[test]
    fn turning_the_read_only_guard_off_is_noticed() {
        for sql in [
            "SET default_transaction_read_only = off",
            "SET SESSION default_transaction_read_only TO false",
            "SET transaction_read_only = 0",
            "SET TRANSACTION READ WRITE",
            "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
            "BEGIN READ WRITE",
            "START TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ WRITE",
        ] {
            assert!(one(sql).effects.read_write, "{sql}");
        }
        for sql in [
            "SET default_transaction_read_only = on",
            "BEGIN READ ONLY",
            "BEGIN",
            "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
        ] {
            assert!(!one(sql).effects.read_write, "{sql}");
        }
    }

    #[test]
    fn settings_stored_for_later_sessions() {
        check(&[
            ("ALTER ROLE gatehouse SET role = 'postgres'", &[Alter, SetRole]),
            ("ALTER ROLE gatehouse SET session_authorization = 'postgres'", &[Alter, SetRole]),
            ("ALTER ROLE gatehouse SET search_path = evil", &[Alter, SetRole]),
            ("ALTER ROLE gatehouse SET default_transaction_read_only = off", &[Alter, SetRole]),
            ("ALTER ROLE ALL SET standard_conforming_strings = off", &[Alter, SetRole]),
            ("ALTER ROLE gatehouse RESET ALL", &[Alter, SetRole]),
            ("ALTER DATABASE d SET app.secret = 'x'", &[Alter, SetRole]),
            ("ALTER SYSTEM SET shared_preload_libraries = 'evil'", &[Alter, SetRole]),
            ("ALTER ROLE gatehouse IN DATABASE d SET work_mem = '64MB'", &[Alter]),
            ("ALTER DATABASE d SET timezone = 'UTC'", &[Alter]),
        ]);
    }

    #[test]
    fn standard_conforming_strings_off_is_honoured_when_known() {
        // With standard_conforming_strings off the server ends the string
        // after `\'` and runs the DROP; with it on, all of this is a string.
        let sql = r"SELECT 'a\'' ; DROP TABLE t; --'";
        assert_eq!(kinds_of(sql), [Select]);
        let off = ParseOptions { standard_conforming_strings: false };
        let all = classify_with(sql, off).unwrap();
        assert_eq!(all.len(), 2, "{all:?}");
        assert!(all[1].kinds.contains(&Drop));
    }

    #[test]
    fn session_and_cursors() {
        check(&[
            ("BEGIN", &[Transaction]),
            ("START TRANSACTION READ ONLY", &[Transaction]),
            ("COMMIT", &[Transaction]),
            ("END", &[Transaction]),
            ("ROLLBACK", &[Transaction]),
            ("ABORT", &[Transaction]),
            ("SAVEPOINT s", &[Transaction]),
            ("RELEASE SAVEPOINT s", &[Transaction]),
            ("ROLLBACK TO SAVEPOINT s", &[Transaction]),
            ("PREPARE TRANSACTION 'x'", &[TwoPhase]),
            ("COMMIT PREPARED 'x'", &[TwoPhase]),
            ("ROLLBACK PREPARED 'x'", &[TwoPhase]),
            ("SET CONSTRAINTS ALL DEFERRED", &[Transaction]),
            ("PREPARE p AS SELECT 1", &[Prepare, Select]),
            ("PREPARE p (int) AS UPDATE t SET x = $1 WHERE id = 1", &[Prepare, Update]),
            ("EXECUTE p", &[Execute]),
            ("EXECUTE p (1, 'a')", &[Execute]),
            ("EXECUTE p (pg_sleep(1))", &[Execute, FunctionCall]),
            ("DEALLOCATE p", &[Deallocate]),
            ("DEALLOCATE ALL", &[Deallocate]),
            ("DECLARE c CURSOR FOR SELECT * FROM t", &[Select]),
            ("FETCH 10 FROM c", &[Select]),
            ("MOVE NEXT IN c", &[Select]),
            ("CLOSE c", &[Deallocate]),
            ("CALL p()", &[Call]),
            ("CALL s.p(1, 'a')", &[Call]),
            ("CALL p(pg_sleep(1))", &[Call, FunctionCall]),
            ("DO $$ BEGIN PERFORM 1; END $$", &[Do]),
            ("DO LANGUAGE plpgsql 'BEGIN END'", &[Do]),
            ("LISTEN ch", &[Listen]),
            ("UNLISTEN *", &[Deallocate]),
            ("NOTIFY ch, 'payload'", &[Notify]),
            ("LOCK TABLE t", &[Lock]),
            ("LOCK t IN ACCESS SHARE MODE", &[Lock]),
            ("VACUUM", &[Maintenance]),
            ("VACUUM FULL t", &[Maintenance]),
            ("ANALYZE t", &[Maintenance]),
            ("CLUSTER t USING i", &[Maintenance]),
            ("REINDEX TABLE t", &[Maintenance]),
            ("CHECKPOINT", &[Maintenance]),
            ("REFRESH MATERIALIZED VIEW m", &[Maintenance]),
            ("LOAD 'auto_explain'", &[Load]),
        ]);
        assert!(one("CALL p()").functions.is_empty());
        assert_eq!(one("CALL p(pg_sleep(1))").functions, ["pg_sleep"]);
    }

    #[test]
    fn explain_includes_the_explained_statement() {
        check(&[
            ("EXPLAIN SELECT 1", &[Explain, Select]),
            ("EXPLAIN ANALYZE DELETE FROM t", &[Explain, Delete, DeleteWithoutWhere]),
            ("EXPLAIN (ANALYZE, BUFFERS) UPDATE t SET x = 1 WHERE id = 1", &[Explain, Update]),
            ("EXPLAIN INSERT INTO t VALUES (1)", &[Explain, Insert]),
            ("EXPLAIN EXECUTE p", &[Explain, Execute]),
            ("EXPLAIN CREATE TABLE x AS SELECT 1", &[Explain, Create, Select]),
        ]);
        assert_eq!(writes("EXPLAIN ANALYZE DELETE FROM t"), tables(&["t"]));
    }

    #[test]
    fn data_modifying_ctes() {
        check(&[
            ("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", &[Select, Delete, DeleteWithoutWhere]),
            ("WITH u AS (UPDATE t SET x = 1 WHERE id = 1 RETURNING *) SELECT 1", &[Select, Update]),
            ("WITH i AS (INSERT INTO t VALUES (1) RETURNING *) SELECT * FROM i", &[Select, Insert]),
            ("WITH x AS (SELECT 1) DELETE FROM t WHERE id IN (SELECT * FROM x)", &[Select, Delete]),
            (
                "SELECT * FROM (WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d) s",
                &[Select, Delete, DeleteWithoutWhere],
            ),
            (
                "WITH a AS (WITH b AS (UPDATE t SET x = 1 RETURNING *) SELECT * FROM b) SELECT * FROM a",
                &[Select, Update, UpdateWithoutWhere],
            ),
        ]);
        let s = one("WITH d AS (DELETE FROM t RETURNING *) INSERT INTO archive SELECT * FROM d");
        assert_eq!(s.writes, tables(&["t", "archive"]));
        assert!(s.reads.is_empty(), "{:?}", s.reads);
    }

    #[test]
    fn function_calls_anywhere() {
        let cases: &[(&str, &[&str])] = &[
            ("SELECT set_config('role', 'postgres', false)", &["set_config"]),
            ("SELECT * FROM t WHERE id = (SELECT pg_sleep(1))", &["pg_sleep"]),
            ("SELECT pg_read_file('/etc/passwd')", &["pg_read_file"]),
            ("SELECT pg_terminate_backend(123)", &["pg_terminate_backend"]),
            ("SELECT lo_import('/etc/passwd'), lo_export(1, '/tmp/x')", &["lo_import", "lo_export"]),
            ("SELECT * FROM dblink('conn', 'DELETE FROM t') AS x(a int)", &["dblink"]),
            ("SELECT nextval('s')", &["nextval"]),
            ("SELECT pg_advisory_lock(1)", &["pg_advisory_lock"]),
            ("SELECT public.lower('A')", &["public.lower"]),
            ("SELECT \"LOWER\"('A')", &["LOWER"]),
            ("SELECT count(*) FILTER (WHERE pg_sleep(1) IS NULL) FROM t", &["pg_sleep"]),
            ("SELECT 1 UNION SELECT f()", &["f"]),
            ("SELECT * FROM t ORDER BY f(x)", &["f"]),
            ("SELECT * FROM t GROUP BY g(x) HAVING h(1) > 0", &["g", "h"]),
            ("SELECT * FROM t, LATERAL (SELECT f(t.x)) s", &["f"]),
            ("SELECT * FROM t JOIN u ON f(t.id) = u.id", &["f"]),
            ("SELECT CASE WHEN f() THEN 1 END", &["f"]),
            ("SELECT ARRAY[f()]", &["f"]),
            ("SELECT xmlelement(name x, f())", &["f"]),
            ("SELECT lower(f(x)) FROM t", &["f"]),
            ("SELECT sum(x) OVER (PARTITION BY f(y)) FROM t", &["f"]),
            ("SELECT f(a => 1)", &["f"]),
            ("SELECT pg_sleep(1), nextval('s'), pg_sleep(2)", &["pg_sleep", "nextval"]),
            ("INSERT INTO t (a) VALUES (nextval('s'))", &["nextval"]),
            ("UPDATE t SET a = f() WHERE id = 1", &["f"]),
            ("DELETE FROM t WHERE id = 1 RETURNING f(id)", &["f"]),
            ("CREATE TABLE t (id int DEFAULT nextval('s'))", &["nextval"]),
            ("WITH x AS (SELECT f()) SELECT * FROM x", &["f"]),
            ("SELECT 1 WHERE EXISTS (SELECT 1 FROM t WHERE f(t.a))", &["f"]),
            ("VALUES (f())", &["f"]),
        ];
        for (sql, want) in cases {
            let s = one(sql);
            assert!(s.kinds.contains(&FunctionCall), "{sql}: {:?}", s.kinds);
            assert_eq!(s.functions, *want, "{sql}");
        }
    }

    #[test]
    fn side_effect_free_builtins_are_not_function_calls() {
        for sql in [
            "SELECT count(*), lower(name), upper(name), length(name) FROM t",
            "SELECT pg_catalog.lower('A'), pg_catalog.now()",
            "SELECT coalesce(a, b), nullif(a, b), greatest(a, b), least(a, b) FROM t",
            "SELECT extract(year FROM now()), date_trunc('day', now()), current_date, current_user",
            "SELECT substring('abc' FROM 1 FOR 2), trim(both ' ' FROM 'x'), position('a' IN 'abc')",
            "SELECT now() AT TIME ZONE 'utc', overlay('abc' PLACING 'x' FROM 1)",
            "SELECT * FROM generate_series(1, 3)",
            "SELECT row_number() OVER (ORDER BY a), lag(a) OVER w FROM t WINDOW w AS (ORDER BY a)",
            "SELECT jsonb_build_object('a', 1), json_agg(t) FROM t",
            "SELECT to_char(now(), 'YYYY'), md5('x'), format('%s', 1), version()",
            "SELECT CAST(x AS int), x::text, x IS NULL FROM t",
        ] {
            let s = one(sql);
            assert_eq!(s.kinds.iter().copied().collect::<Vec<_>>(), [Select], "{sql}");
            assert!(s.functions.is_empty(), "{sql}: {:?}", s.functions);
        }
    }

    #[test]
    fn reads_and_writes() {
        assert_eq!(
            reads("SELECT * FROM a JOIN b.c ON true, (SELECT * FROM d) x WHERE x.id IN (SELECT id FROM e)"),
            tables(&["a", "b.c", "d", "e"])
        );
        assert!(writes("SELECT * FROM a").is_empty());
        let s = one("INSERT INTO t SELECT * FROM u");
        assert_eq!((s.writes, s.reads), (tables(&["t"]), tables(&["u"])));
        let s = one("INSERT INTO t VALUES ((SELECT secret FROM s))");
        assert_eq!((s.writes, s.reads), (tables(&["t"]), tables(&["s"])));
        let s = one("INSERT INTO t WITH x AS (SELECT 1) VALUES ((SELECT * FROM x))");
        assert_eq!((s.writes, s.reads), (tables(&["t"]), vec![]));
        let s = one("UPDATE t SET x = u.x FROM u WHERE t.id = u.id");
        assert_eq!((s.writes, s.reads), (tables(&["t"]), tables(&["u"])));
        let s = one("DELETE FROM s.t USING u WHERE s.t.id = u.id");
        assert_eq!((s.writes, s.reads), (tables(&["s.t"]), tables(&["u"])));
        let s = one("MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN UPDATE SET x = s.x");
        assert_eq!((s.writes, s.reads), (tables(&["t"]), tables(&["s"])));
        let s = one("SELECT * INTO x FROM t");
        assert_eq!((s.writes, s.reads), (tables(&["x"]), tables(&["t"])));
        let s = one("CREATE TABLE x AS SELECT * FROM t");
        assert_eq!((s.writes, s.reads), (tables(&["x"]), tables(&["t"])));
        let s = one("CREATE VIEW v AS SELECT * FROM t");
        assert_eq!((s.writes, s.reads), (tables(&["v"]), tables(&["t"])));
        let s = one("CREATE TABLE n (id int REFERENCES p (id), LIKE q)");
        assert_eq!((s.writes, s.reads), (tables(&["n"]), tables(&["p", "q"])));
        assert_eq!(writes("DROP TABLE a, s.b"), tables(&["a", "s.b"]));
        assert_eq!(writes("DROP VIEW IF EXISTS v"), tables(&["v"]));
        assert!(writes("DROP FUNCTION f(int)").is_empty());
        assert_eq!(writes("TRUNCATE a, b"), tables(&["a", "b"]));
        assert_eq!(writes("ALTER TABLE t ADD COLUMN c int"), tables(&["t"]));
        assert_eq!(writes("CREATE INDEX i ON t (c)"), tables(&["t"]));
        assert_eq!(writes("COMMENT ON TABLE s.t IS 'x'"), tables(&["s.t"]));
        assert_eq!(writes("COMMENT ON COLUMN s.t.c IS 'x'"), tables(&["s.t"]));
        assert_eq!(writes("GRANT SELECT ON t TO r"), tables(&["t"]));
        assert_eq!(writes("LOCK TABLE t"), tables(&["t"]));
        assert_eq!(writes("VACUUM t"), tables(&["t"]));
        // Deduplicated, in first-seen order.
        assert_eq!(reads("SELECT * FROM t, t AS t2, u, t t3, public.t"), tables(&["t", "u", "public.t"]));
        // FOR UPDATE OF names a FROM item, not a table.
        assert_eq!(reads("SELECT * FROM t a FOR UPDATE OF a"), tables(&["t"]));
    }

    #[test]
    fn cte_names_are_not_tables() {
        assert_eq!(reads("WITH x AS (SELECT * FROM t) SELECT * FROM x"), tables(&["t"]));
        assert_eq!(reads("WITH t AS (SELECT 1) SELECT * FROM public.t"), tables(&["public.t"]));
        // A CTE is only in scope inside the statement that defines it.
        assert_eq!(reads("SELECT * FROM (WITH s AS (SELECT 1) SELECT * FROM s) a, s"), tables(&["s"]));
        // An inner CTE of the same name shadows, then goes out of scope.
        assert!(reads("WITH s AS (SELECT 1) SELECT * FROM (WITH s AS (SELECT 2) SELECT * FROM s) a, s").is_empty());
        assert_eq!(reads("WITH x AS (SELECT 1) SELECT * FROM (WITH y AS (SELECT 1) SELECT 1) a, x, y"), tables(&["y"]));
        // Without RECURSIVE, a CTE cannot see those defined after it.
        assert_eq!(reads("WITH a AS (SELECT * FROM b), b AS (SELECT 1) SELECT * FROM a, b"), tables(&["b"]));
        assert!(reads("WITH a AS (SELECT 1), b AS (SELECT * FROM a) SELECT * FROM b").is_empty());
        assert!(
            reads("WITH RECURSIVE r AS (SELECT 1 AS n UNION ALL SELECT n + 1 FROM r WHERE n < 3) SELECT * FROM r")
                .is_empty()
        );
        // DML targets are always tables, even when a CTE has the same name.
        assert_eq!(writes("WITH t AS (SELECT 1) DELETE FROM t WHERE id = 1"), tables(&["t"]));
    }

    /// Every node the parser emits in a `Node` wrapper must be reachable
    /// through [`children`]; catches fields the table forgot.
    #[test]
    fn every_tagged_node_is_reached() {
        fn tags(v: &serde_json::Value, out: &mut std::collections::HashMap<String, usize>) {
            match v {
                serde_json::Value::Object(map) => {
                    // A `Node` wrapper serialises as {"node": {"Variant": {...}}}.
                    if let (1, Some(serde_json::Value::Object(inner))) = (map.len(), map.get("node"))
                        && inner.len() == 1
                    {
                        for k in inner.keys() {
                            *out.entry(k.clone()).or_default() += 1;
                        }
                    }
                    map.values().for_each(|x| tags(x, out));
                }
                serde_json::Value::Array(items) => items.iter().for_each(|x| tags(x, out)),
                _ => {}
            }
        }
        fn walk(node: NodeRef<'_>, out: &mut std::collections::HashMap<String, usize>) {
            let debug = format!("{node:?}");
            let name = debug.split('(').next().unwrap_or_default().to_owned();
            *out.entry(name).or_default() += 1;
            for (_, child) in children::children(node) {
                walk(child, out);
            }
        }
        for sql in CORPUS {
            let parsed = pg_query::parse(sql, ParserOptions::DEFAULT).unwrap_or_else(|e| panic!("{sql}: {e}"));
            for raw in &parsed.protobuf.stmts {
                let mut tagged = Default::default();
                tags(&serde_json::to_value(raw).unwrap(), &mut tagged);
                let mut reached = Default::default();
                walk(raw.stmt.as_ref().and_then(|n| n.node.as_ref()).unwrap().to_ref(), &mut reached);
                for (name, count) in &tagged {
                    let got = reached.get(name).copied().unwrap_or(0);
                    assert!(got >= *count, "{sql}: {name} tagged {count} times, reached {got}");
                }
            }
        }
    }

    /// Statements covering much of the grammar, for the coverage and robustness tests.
    const CORPUS: &[&str] = &[
        "SELECT DISTINCT ON (a) a, b FROM t WHERE a > 1 GROUP BY ROLLUP (a, b) HAVING count(*) > 1 ORDER BY a NULLS FIRST LIMIT 1 OFFSET 2",
        "SELECT * FROM t TABLESAMPLE SYSTEM (10) REPEATABLE (1), ROWS FROM (f(1), g(2)) WITH ORDINALITY AS r(a, b)",
        "SELECT * FROM XMLTABLE('/r' PASSING x COLUMNS a int PATH 'a' DEFAULT f()) AS xt",
        "SELECT * FROM JSON_TABLE(j, '$[*]' COLUMNS (a int PATH '$.a' DEFAULT f() ON EMPTY, NESTED PATH '$.b[*]' COLUMNS (b text PATH '$'))) jt",
        "SELECT JSON_OBJECT('a' VALUE f()), JSON_ARRAY(1, g()), JSON_QUERY(j, '$.a' PASSING h() AS x), j IS JSON OBJECT, JSON_SCALAR(1), JSON_SERIALIZE(j)",
        "SELECT JSON_OBJECTAGG(k VALUE v), JSON_ARRAYAGG(v ORDER BY k) FROM t",
        "SELECT x[1], (x).y, x[1:2], ARRAY(SELECT 1), ROW(1, 2), a IS DISTINCT FROM b, a BETWEEN 1 AND f(), a LIKE 'x%', a = ANY(ARRAY[1]) FROM t",
        "SELECT CASE a WHEN 1 THEN f() ELSE g() END, COALESCE(a, h()), GREATEST(1, i()), NULLIF(1, j()), a COLLATE \"C\" FROM t",
        "SELECT XMLELEMENT(NAME x, XMLATTRIBUTES(f() AS a), g()), XMLSERIALIZE(DOCUMENT x AS text), XMLPARSE(DOCUMENT '<a/>')",
        "SELECT GROUPING(a), merge_action() FROM t GROUP BY CUBE (a), GROUPING SETS ((a), ())",
        "SELECT * FROM t WHERE (a, b) = (SELECT 1, 2) AND EXISTS (SELECT 1) AND a IN (SELECT 1) AND a > ALL (SELECT 1)",
        "SELECT * FROM t FOR UPDATE OF t NOWAIT",
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SEARCH DEPTH FIRST BY n SET o CYCLE n SET c USING p SELECT * FROM r",
        "INSERT INTO t (a, b) OVERRIDING SYSTEM VALUE VALUES (DEFAULT, f()) ON CONFLICT (a) WHERE b > 0 DO UPDATE SET b = EXCLUDED.b WHERE t.a > g() RETURNING *",
        "INSERT INTO t DEFAULT VALUES RETURNING OLD AS o, NEW AS n, o.a",
        "UPDATE t SET (a, b) = (SELECT 1, 2), c = DEFAULT FROM u WHERE t.id = u.id RETURNING f(t.a)",
        "MERGE INTO t USING (SELECT * FROM s) s ON t.id = s.id WHEN MATCHED AND s.x > 0 THEN UPDATE SET x = f() WHEN NOT MATCHED BY SOURCE THEN DELETE WHEN NOT MATCHED THEN INSERT (id) VALUES (g()) RETURNING merge_action()",
        "COPY t (a) FROM STDIN WITH (FORMAT csv, FORCE_NULL (a)) WHERE a > f()",
        "CREATE TABLE t (a int GENERATED ALWAYS AS (f(b)) STORED, b int CHECK (b > g()), c text COLLATE \"C\" DEFAULT h(), EXCLUDE USING gist (a WITH =), FOREIGN KEY (a) REFERENCES u (id)) PARTITION BY RANGE (a)",
        "CREATE TABLE p1 PARTITION OF t FOR VALUES FROM (MINVALUE) TO (f())",
        "CREATE INDEX CONCURRENTLY i ON t USING btree (lower(a) DESC, (f(b))) INCLUDE (c) WHERE g(d)",
        "CREATE STATISTICS s (dependencies) ON a, (f(b)) FROM t",
        "CREATE FUNCTION f(a int DEFAULT g()) RETURNS SETOF int LANGUAGE sql STABLE AS 'select 1'",
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql RETURN g() + 1",
        "CREATE TRIGGER tr BEFORE UPDATE ON t REFERENCING NEW TABLE AS n FOR EACH ROW WHEN (f(NEW.a)) EXECUTE FUNCTION g()",
        "CREATE POLICY p ON t FOR SELECT TO r USING (f(a)) WITH CHECK (g(b))",
        "CREATE DOMAIN d AS int CHECK (VALUE > f())",
        "CREATE AGGREGATE a (int) (SFUNC = f, STYPE = int)",
        "CREATE OPERATOR CLASS c FOR TYPE int USING btree AS OPERATOR 1 <, FUNCTION 1 f(int, int)",
        "CREATE PUBLICATION p FOR TABLE t (a) WHERE (f(a)), TABLES IN SCHEMA s",
        "ALTER TABLE t ALTER COLUMN a SET DEFAULT f(), ADD CONSTRAINT c CHECK (g(a))",
        "ALTER TABLE t ATTACH PARTITION p FOR VALUES IN (1)",
        "ALTER TABLE t ALTER COLUMN a TYPE bigint USING f(a)",
        "ALTER TABLE t REPLICA IDENTITY FULL",
        "GRANT SELECT (a), UPDATE ON t TO r WITH GRANT OPTION",
        "DECLARE c SCROLL CURSOR WITH HOLD FOR SELECT f() FROM t",
        "EXPLAIN (ANALYZE, FORMAT json) SELECT f()",
        "PREPARE p (int) AS SELECT f($1)",
        "EXECUTE p (g())",
        "CALL p(f(), g => 1)",
        "VACUUM (ANALYZE) t (a), u",
        "CREATE RULE r AS ON UPDATE TO t WHERE f(NEW.a) DO INSTEAD (INSERT INTO u VALUES (NEW.a); NOTIFY ch)",
        "CREATE SCHEMA s CREATE TABLE t (a int DEFAULT f()) CREATE VIEW v AS SELECT g()",
        "SELECT 'a' || f() FROM t WHERE a IS NOT TRUE AND b IS NULL",
    ];

    /// A small deterministic generator; no dependency for a test's randomness.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            usize::try_from(self.next() % u64::try_from(n).unwrap()).unwrap()
        }
    }

    #[test]
    fn arbitrary_input_never_panics() {
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let pieces: &[&str] = &[
            "SELECT",
            "DELETE",
            "FROM",
            "WITH",
            "(",
            ")",
            "'",
            "\"",
            "$$",
            ";",
            "--",
            "/*",
            "*/",
            "\\",
            "E'",
            "t",
            "1",
            ",",
            "=",
            "AS",
            "RETURNING",
            " ",
            "\n",
            "é",
            "\u{0}",
        ];
        for i in 0..10_000 {
            let sql = if i % 2 == 0 {
                let len = rng.below(64);
                let bytes: Vec<u8> = (0..len).map(|_| rng.next().to_le_bytes()[0]).collect();
                String::from_utf8_lossy(&bytes).into_owned()
            } else {
                (0..rng.below(24)).map(|_| pieces[rng.below(pieces.len())]).collect()
            };
            if let Ok(all) = classify(&sql) {
                assert!(all.iter().all(|s| !s.kinds.is_empty()), "{sql:?}");
            }
        }
    }

    #[test]
    fn truncated_statements_never_panic() {
        for sql in CORPUS {
            for end in (0..=sql.len()).filter(|&e| sql.is_char_boundary(e)) {
                if let Ok(all) = classify(&sql[..end]) {
                    assert!(all.iter().all(|s| !s.kinds.is_empty()), "{:?}", &sql[..end]);
                }
            }
        }
    }

    #[test]
    fn corpus_classifies() {
        for sql in CORPUS {
            let all = classify(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
            assert!(!all.is_empty());
            assert!(all.iter().all(|s| !s.kinds.contains(&Other)), "{sql}: {all:?}");
        }
    }

    #[test]
    fn kinds_are_recorded_joined_with_plus_in_their_order() {
        let mut s = parse("DELETE FROM t", ParseOptions::default()).unwrap().remove(0);
        assert_eq!(kinds_text(&s.kinds), "delete+delete_without_where");
        s.kinds = [Kind::Select].into_iter().collect();
        assert_eq!(kinds_text(&s.kinds), "select");
        s.kinds.clear();
        assert_eq!(kinds_text(&s.kinds), "");
    }
}
