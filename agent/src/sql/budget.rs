//! A bounded cost per query text, so the agent's peak memory is set by its
//! configuration and not by what clients send.
//!
//! Where the memory of a parse goes (measured by `cargo xtask bench
//! policy`): PostgreSQL's grammar itself is cheap (about 120 bytes per
//! token), but pg_query hands the tree over as protobuf and prost decodes
//! it into `Node`s of 608 bytes each, up to about 2 KB of agent memory per
//! token (`SELECT a,a,a,…` of 1 MiB: 2 GB). The crate offers no parse path
//! that skips the decoded tree, so the cost is bounded before parsing:
//!
//! 1. **Size.** A text longer than the rule's `query_limits.bytes` is
//!    refused before anything else is done with it.
//! 2. **Shape.** One pass over the bytes ([`super::shape`], a few ns per
//!    byte, no allocation) counts tokens and statements as PostgreSQL's
//!    lexer will; more than `query_limits.tokens` or
//!    `query_limits.statements` is refused without parsing.
//! 3. **Concurrency.** Large texts (over [`LARGE_TOKENS`] tokens or
//!    [`LARGE_BYTES`] bytes) are parsed on [`PARSE_THREADS`] dedicated
//!    threads, a few at a time; one that cannot start within [`PARSE_WAIT`]
//!    is refused. Small ones parse on the caller's thread. Dedicated threads
//!    also keep the allocator's per-thread arenas that large trees pass
//!    through to those few.
//!
//! Peak parse memory is then about `PARSE_THREADS × max tokens × 2 KB`
//! (plus the runtime's worker threads × `LARGE_TOKENS` × 2 KB for small
//! parses), whatever clients send.

use std::sync::{Arc, Mutex, OnceLock, PoisonError, mpsc};
use std::time::Duration;

use serde::Deserialize;

use super::shape::{self, Shape};
use super::{Cache, MAX_SQL_LEN, ParseOptions, SqlError, Statement, parse};

/// Default `query_limits.bytes`: well below what a 1 MiB text would cost.
pub const DEFAULT_MAX_BYTES: usize = 256 * 1024;
/// Default `query_limits.tokens`: at most about 100 MB of parse tree; an
/// `IN` list of 20,000 values or a 2,000-row INSERT of ten columns fit.
pub const DEFAULT_MAX_TOKENS: usize = 50_000;
/// Default `query_limits.statements` per Query message.
pub const DEFAULT_MAX_STATEMENTS: usize = 1_000;
/// The most `query_limits.tokens` may be raised to.
pub const MAX_TOKENS: usize = 1_000_000;
/// Texts with more tokens than this are parsed on the parse threads.
pub const LARGE_TOKENS: usize = 1_024;
/// Texts longer than this are parsed on the parse threads.
pub const LARGE_BYTES: usize = 16 * 1024;
/// Threads that parse large texts, i.e. large parses at once.
pub const PARSE_THREADS: usize = 2;
/// How long a large text waits for a parse thread before it is refused.
pub const PARSE_WAIT: Duration = Duration::from_secs(3);

/// What one Query or Parse message may cost, set per rule
/// (`query_limits = { bytes = "256KiB", tokens = 50000, statements = 1000 }`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct QueryLimits {
    /// Longest text, in bytes.
    pub bytes: usize,
    /// Most tokens (as PostgreSQL's lexer counts them; an upper bound).
    pub tokens: usize,
    /// Most statements in one text.
    pub statements: usize,
}

impl Default for QueryLimits {
    fn default() -> Self {
        Self { bytes: DEFAULT_MAX_BYTES, tokens: DEFAULT_MAX_TOKENS, statements: DEFAULT_MAX_STATEMENTS }
    }
}

/// `query_limits` as written in a policy file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryLimitsRaw {
    bytes: Option<ByteSize>,
    tokens: Option<u64>,
    statements: Option<u64>,
}

/// `262144`, or `"256KiB"`, `"1 MiB"`, `"64kB"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum ByteSize {
    Number(u64),
    Text(String),
}

impl ByteSize {
    fn bytes(&self) -> Result<u64, String> {
        let text = match self {
            Self::Number(n) => return Ok(*n),
            Self::Text(t) => t.trim(),
        };
        let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let number: u64 = number.parse().map_err(|_| format!("`{text}` is not a size like 262144 or \"256KiB\""))?;
        let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" | "kib" => 1 << 10,
            "m" | "mb" | "mib" => 1 << 20,
            other => return Err(format!("unknown size unit `{other}`; use B, KiB or MiB")),
        };
        number.checked_mul(scale).ok_or_else(|| format!("`{text}` is too large"))
    }
}

impl QueryLimits {
    /// Validates `query_limits` from a policy file; unset fields keep their defaults.
    pub fn from_raw(raw: &QueryLimitsRaw) -> Result<Self, String> {
        let mut limits = Self::default();
        if let Some(b) = &raw.bytes {
            let n = b.bytes().map_err(|e| format!("query_limits.bytes: {e}"))?;
            limits.bytes = within("bytes", n, MAX_SQL_LEN)?;
        }
        if let Some(n) = raw.tokens {
            limits.tokens = within("tokens", n, MAX_TOKENS)?;
        }
        if let Some(n) = raw.statements {
            limits.statements = within("statements", n, MAX_TOKENS)?;
        }
        Ok(limits)
    }

    /// Checks a text before it is parsed; returns its shape.
    pub fn admit(&self, sql: &str, options: ParseOptions) -> Result<Shape, OverBudget> {
        self.check_len(sql)?;
        let shape = shape::measure(sql, options.standard_conforming_strings);
        self.check_shape(shape)?;
        Ok(shape)
    }

    fn check_len(&self, sql: &str) -> Result<(), OverBudget> {
        if sql.len() > self.bytes {
            return Err(OverBudget::Bytes { len: sql.len(), limit: self.bytes });
        }
        Ok(())
    }

    fn check_shape(&self, shape: Shape) -> Result<(), OverBudget> {
        if shape.statements > self.statements {
            return Err(OverBudget::Statements { count: shape.statements, limit: self.statements });
        }
        if shape.tokens > self.tokens {
            return Err(OverBudget::Tokens { tokens: shape.tokens, limit: self.tokens });
        }
        Ok(())
    }
}

/// Longest refused text kept whole in its audit record.
pub const RECORDED_REFUSAL: usize = 64 * 1024;

/// A refused text as its audit record keeps it: whole up to
/// [`RECORDED_REFUSAL`] bytes, else that much of its start with its length
/// and blake3 hash (of the text as recorded, i.e. already redacted).
/// Refusals come as fast as a client sends texts, so each must cost the
/// audit queue a bounded amount.
pub fn recorded_refusal(text: String) -> String {
    if text.len() <= RECORDED_REFUSAL {
        return text;
    }
    let mut cut = RECORDED_REFUSAL;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    let hash = blake3::hash(text.as_bytes()).to_hex();
    let mut kept = text.get(..cut).unwrap_or_default().to_owned();
    kept.push_str(&format!("… [{} bytes in all; blake3 {hash}]", text.len()));
    kept
}

fn within(field: &str, n: u64, max: usize) -> Result<usize, String> {
    match usize::try_from(n) {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(format!("query_limits.{field} must be between 1 and {max}, not {n}")),
    }
}

/// A text refused for what parsing it would cost. The client's doing,
/// except [`OverBudget::Busy`] (everyone's large texts at once).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OverBudget {
    #[error("it is {len} bytes long, over the limit of {limit} bytes per query (query_limits.bytes)")]
    Bytes { len: usize, limit: usize },
    #[error("it holds {tokens} tokens, over the limit of {limit} per query (query_limits.tokens)")]
    Tokens { tokens: usize, limit: usize },
    #[error("it holds {count} statements, over the limit of {limit} per query (query_limits.statements)")]
    Statements { count: usize, limit: usize },
    #[error("Gatehouse is parsing other large statements and none finished within {}s; try again", waited.as_secs())]
    Busy { waited: Duration },
}

/// Why a text was not classified.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error(transparent)]
    Budget(#[from] OverBudget),
    #[error(transparent)]
    Sql(#[from] SqlError),
}

impl Refused {
    /// The SQLSTATE a client is told.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            Self::Budget(OverBudget::Bytes { .. } | OverBudget::Statements { .. }) => "54000", // program_limit_exceeded
            Self::Budget(OverBudget::Tokens { .. }) => "54001",                                // statement_too_complex
            Self::Budget(OverBudget::Busy { .. }) => "53000",                                  // insufficient_resources
            Self::Sql(_) => "42601",                                                           // syntax_error
        }
    }

    /// A hint for the client.
    pub fn hint(&self) -> &'static str {
        match self {
            Self::Budget(OverBudget::Busy { .. }) => {
                "large statements are parsed a few at a time, so that no client can exhaust Gatehouse's memory"
            }
            Self::Budget(_) => {
                "split the statement, or ask the operators to raise the rule's query_limits; every statement is parsed before it runs, and parsing costs memory"
            }
            Self::Sql(_) => {
                "Gatehouse parses every statement with PostgreSQL's grammar and refuses what does not parse"
            }
        }
    }
}

/// Classification within a budget: the cache of texts seen before, then
/// the shape check, then a parse on this thread (small texts) or on the
/// parse threads (large ones). One per agent.
#[derive(Debug, Default)]
pub struct Classifier {
    cache: Cache,
    pool: ParsePool,
}

/// What [`Classifier::prepare`] found: a cached answer, or a text to parse.
enum Lookup {
    Known(Vec<Statement>),
    Parse(Shape),
}

impl Classifier {
    /// Classifies `sql` if it fits `limits`.
    pub async fn classify(
        &self,
        sql: &str,
        options: ParseOptions,
        limits: &QueryLimits,
    ) -> Result<Vec<Statement>, Refused> {
        match self.prepare(sql, options, limits)? {
            Lookup::Known(statements) => Ok(statements),
            Lookup::Parse(shape) if is_large(sql, shape) => Ok(self.pool.classify(sql, options).await?),
            Lookup::Parse(shape) => self.parse_here(sql, options, shape),
        }
    }

    /// [`Classifier::classify`] with every parse on the caller's thread
    /// (the same checks; for the fuzz target and tools).
    pub fn classify_blocking(
        &self,
        sql: &str,
        options: ParseOptions,
        limits: &QueryLimits,
    ) -> Result<Vec<Statement>, Refused> {
        match self.prepare(sql, options, limits)? {
            Lookup::Known(statements) => Ok(statements),
            Lookup::Parse(shape) => self.parse_here(sql, options, shape),
        }
    }

    /// The cache's accounted bytes and entries.
    pub fn cache_usage(&self) -> (usize, usize) {
        self.cache.usage()
    }

    fn prepare(&self, sql: &str, options: ParseOptions, limits: &QueryLimits) -> Result<Lookup, OverBudget> {
        limits.check_len(sql)?;
        if let Some((statements, shape)) = self.cache.get(sql, options) {
            limits.check_shape(shape)?;
            return Ok(Lookup::Known(statements.to_vec()));
        }
        if let Some((statement, shape)) = self.cache.get_template(sql, options) {
            limits.check_shape(shape)?;
            return Ok(Lookup::Known(vec![statement]));
        }
        Ok(Lookup::Parse(limits.admit(sql, options)?))
    }

    fn parse_here(&self, sql: &str, options: ParseOptions, shape: Shape) -> Result<Vec<Statement>, Refused> {
        let (statements, constants_read) = super::parse_noting_constants(sql, options);
        let statements = statements?;
        self.cache.put(sql, options, &statements, shape);
        self.cache.put_template(sql, options, &statements, shape, constants_read);
        Ok(statements)
    }
}

fn is_large(sql: &str, shape: Shape) -> bool {
    sql.len() > LARGE_BYTES || shape.tokens > LARGE_TOKENS
}

type Reply = tokio::sync::oneshot::Sender<Result<Vec<Statement>, SqlError>>;

/// A text for a parse thread, with the permit it holds until parsed.
struct Job {
    sql: String,
    options: ParseOptions,
    reply: Reply,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

/// The threads that parse large texts, started on first use. A permit per
/// thread: a job only enters the queue when a thread is free for it.
#[derive(Debug)]
pub struct ParsePool {
    threads: usize,
    permits: Arc<tokio::sync::Semaphore>,
    jobs: OnceLock<Mutex<mpsc::Sender<Job>>>,
    wait: Duration,
}

impl Default for ParsePool {
    fn default() -> Self {
        Self::new(PARSE_THREADS, PARSE_WAIT)
    }
}

impl ParsePool {
    pub fn new(threads: usize, wait: Duration) -> Self {
        let threads = threads.max(1);
        Self { threads, permits: Arc::new(tokio::sync::Semaphore::new(threads)), jobs: OnceLock::new(), wait }
    }

    /// Parses `sql` on a parse thread, waiting at most the pool's `wait` for one.
    pub async fn classify(&self, sql: &str, options: ParseOptions) -> Result<Vec<Statement>, Refused> {
        let busy = OverBudget::Busy { waited: self.wait };
        let permit = tokio::time::timeout(self.wait, self.permits.clone().acquire_owned())
            .await
            .map_err(|_| busy.clone())?
            .map_err(|_| busy)?;
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job = Job { sql: sql.to_owned(), options, reply, _permit: permit };
        self.sender().lock().unwrap_or_else(PoisonError::into_inner).send(job).map_err(|_| failed())?;
        Ok(answer.await.map_err(|_| failed())??)
    }

    fn sender(&self) -> &Mutex<mpsc::Sender<Job>> {
        self.jobs.get_or_init(|| {
            let (tx, rx) = mpsc::channel::<Job>();
            let rx = Arc::new(Mutex::new(rx));
            for i in 0..self.threads {
                let rx = rx.clone();
                // A thread that cannot start leaves the others; with none, every
                // large text is refused (the sender's receiver is gone).
                let _ = std::thread::Builder::new().name(format!("sql-parse-{i}")).spawn(move || parse_thread(&rx));
            }
            Mutex::new(tx)
        })
    }
}

fn failed() -> SqlError {
    SqlError::Parse { message: "the classifier failed".into(), position: None }
}

fn parse_thread(jobs: &Mutex<mpsc::Receiver<Job>>) {
    loop {
        let job = jobs.lock().unwrap_or_else(PoisonError::into_inner).recv();
        let Ok(job) = job else { return };
        let result = std::panic::catch_unwind(|| parse(&job.sql, job.options)).unwrap_or_else(|_| Err(failed()));
        drop(job.sql);
        let _ = job.reply.send(result);
        crate::sys::release_free_memory();
        // The permit is released here, after the tree is freed and returned.
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::Kind;

    fn opts() -> ParseOptions {
        ParseOptions::default()
    }

    fn raw(text: &str) -> QueryLimitsRaw {
        toml::from_str(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn limits_from_a_policy() {
        assert_eq!(QueryLimits::from_raw(&raw("")).unwrap(), QueryLimits::default());
        let l = QueryLimits::from_raw(&raw("bytes = \"64 KiB\"\ntokens = 500\nstatements = 1")).unwrap();
        assert_eq!(l, QueryLimits { bytes: 65536, tokens: 500, statements: 1 });
        assert_eq!(QueryLimits::from_raw(&raw("bytes = 4096")).unwrap().bytes, 4096);
        assert_eq!(QueryLimits::from_raw(&raw("bytes = \"1MiB\"")).unwrap().bytes, 1 << 20);
        for bad in ["bytes = \"2MiB\"", "bytes = 0", "bytes = \"12 parsecs\"", "tokens = 0", "statements = 0"] {
            let e = QueryLimits::from_raw(&raw(bad)).unwrap_err();
            assert!(e.contains("query_limits."), "{bad}: {e}");
        }
        assert!(toml::from_str::<QueryLimitsRaw>("byte = 1").is_err(), "unknown keys are errors");
    }

    #[test]
    fn limits_are_a_rule_key_and_decisions_carry_the_winners() {
        use crate::identity::Principal;
        use crate::policy::diag::Source;
        use crate::types::BackendName;
        let load = |rules: &str| {
            let text = format!(
                "[[backend]]\nname = \"db\"\nprotocol = \"postgres\"\naddress = \"127.10.0.1:5432\"\n\
                 credentials = {{ user = \"gh\" }}\n\n[[backend]]\nname = \"ssh\"\nprotocol = \"tcp\"\n\
                 address = \"127.10.0.1:22\"\n\n{rules}"
            );
            crate::policy::load::load(&[Source { path: "t.toml".into(), text }])
        };
        let p = load(
            "[[rule]]\nname = \"everyone\"\nwho = { users = [\"*\"] }\nbackend = \"db\"\n\n\
             [[rule]]\nname = \"ana small\"\nwho = { users = [\"ana\"] }\nbackend = \"db\"\n\
             query_limits = { bytes = \"4KiB\", statements = 1 }\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let now = jiff::Timestamp::now();
        let db = BackendName::new("db");
        let ana = p.decide_connect(&Principal::named("ana", &[]), &db, now);
        assert_eq!(ana.query_limits, QueryLimits { bytes: 4096, statements: 1, ..QueryLimits::default() });
        let bob = p.decide_connect(&Principal::named("bob", &[]), &db, now);
        assert_eq!(bob.query_limits, QueryLimits::default());
        // Wrong values, deny rules and tcp-only rules are errors at file:line:col.
        for (rule, want) in [
            ("who = { users = [\"*\"] }\nbackend = \"db\"\nquery_limits = { tokens = 0 }", "query_limits.tokens"),
            ("who = { users = [\"*\"] }\nbackend = \"db\"\nquery_limits = { bites = 1 }", "unknown field"),
            ("who = { users = [\"*\"] }\nbackend = \"db\"\naction = \"deny\"\nquery_limits = {}", "no meaning"),
            ("who = { users = [\"*\"] }\nbackend = \"ssh\"\nquery_limits = {}", "postgres backends"),
        ] {
            let e = load(&format!("[[rule]]\nname = \"r\"\n{rule}\n")).unwrap_err().to_string();
            assert!(e.contains(want) && e.contains("t.toml:"), "{rule}: {e}");
        }
        // Rule names are capped, so every hint stays cheap.
        let long = "r".repeat(129);
        let e = load(&format!("[[rule]]\nname = \"{long}\"\nwho = {{ users = [\"*\"] }}\nbackend = \"db\"\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("at most 128 characters"), "{e}");
    }

    #[test]
    fn admission_refuses_size_tokens_and_statements_before_parsing() {
        let l = QueryLimits { bytes: 1000, tokens: 100, statements: 3 };
        assert!(l.admit("SELECT 1; SELECT 2; SELECT 3", opts()).is_ok());
        assert_eq!(l.admit(&"x".repeat(1001), opts()).unwrap_err(), OverBudget::Bytes { len: 1001, limit: 1000 });
        assert_eq!(
            l.admit("SELECT 1; SELECT 2; SELECT 3; SELECT 4", opts()).unwrap_err(),
            OverBudget::Statements { count: 4, limit: 3 }
        );
        let many = format!("SELECT a{}", ",a".repeat(60));
        assert!(matches!(l.admit(&many, opts()), Err(OverBudget::Tokens { limit: 100, .. })));
        // A long literal is one token.
        let literal = format!("SELECT '{}'", "x".repeat(900));
        assert_eq!(l.admit(&literal, opts()).unwrap().tokens, 2);
        // Messages say which key set the limit.
        let e = Refused::from(OverBudget::Tokens { tokens: 121, limit: 100 });
        assert_eq!(e.sqlstate(), "54001");
        assert!(e.to_string().contains("query_limits.tokens"), "{e}");
    }

    /// The issue's inputs: refused by the default limits from their shape
    /// alone, whether over the size limit or cut to fit under it.
    #[test]
    fn the_hostile_inputs_are_refused_without_a_parse() {
        fn repeat(head: &str, item: &str, len: usize) -> String {
            let mut s = head.to_owned();
            while s.len() + item.len() <= len {
                s.push_str(item);
            }
            s
        }
        let l = QueryLimits::default();
        let mib = 1 << 20;
        let fit = 250 * 1024;
        for (head, item) in [("SELECT a", ",a"), ("SELECT f()", ",f()"), ("VALUES (1)", ",(1)"), ("", "SELECT 1;")] {
            let big = repeat(head, item, mib);
            assert!(matches!(l.admit(&big, opts()), Err(OverBudget::Bytes { .. })), "{head}{item}…");
            let under = repeat(head, item, fit);
            match l.admit(&under, opts()) {
                Err(OverBudget::Tokens { tokens, .. }) => assert!(tokens > DEFAULT_MAX_TOKENS),
                Err(OverBudget::Statements { count, .. }) => assert!(count > DEFAULT_MAX_STATEMENTS),
                other => panic!("{head}{item}… of {} bytes: {other:?}", under.len()),
            }
        }
        let one_hundred_thousand = "SELECT 1;".repeat(100_000);
        let few = QueryLimits { bytes: 1 << 20, ..l };
        assert_eq!(
            few.admit(&one_hundred_thousand, opts()).unwrap_err(),
            OverBudget::Statements { count: 100_000, limit: DEFAULT_MAX_STATEMENTS }
        );
    }

    #[test]
    fn refused_texts_are_recorded_whole_or_cut_with_their_length_and_hash() {
        assert_eq!(recorded_refusal("SELECT 1".into()), "SELECT 1");
        let big = format!("SELECT 'é{}'", "x".repeat(RECORDED_REFUSAL));
        let r = recorded_refusal(big.clone());
        assert!(r.len() < RECORDED_REFUSAL + 200, "{}", r.len());
        assert!(r.starts_with("SELECT 'é"));
        let hash = blake3::hash(big.as_bytes()).to_hex();
        assert!(r.ends_with(&format!("[{} bytes in all; blake3 {hash}]", big.len())), "{r}");
    }

    /// The audit redactor parses what it records; a text over the inline
    /// bound (a refused 1 MiB one, say) is redacted lexically instead:
    /// every literal and comment goes, nothing is parsed.
    #[test]
    fn the_redactor_does_not_parse_large_texts() {
        use crate::sql::redact::{RecordOptions, Rules, redact};
        let small = "ALTER ROLE app PASSWORD 'hunter2' -- note";
        let r = redact(small, &Rules::default(), RecordOptions::default(), true);
        assert!(!r.text.contains("hunter2") && r.text.contains("-- note"), "parsed: only the secret goes: {}", r.text);
        let big = format!("SELECT 'x'{} FROM t -- password", ",a".repeat(1 << 19));
        let r = redact(&big, &Rules::default(), RecordOptions::default(), true);
        assert!(r.text.ends_with("-- [redacted]") && !r.text.contains("'x'"), "{}", r.text.get(..80).unwrap_or(""));
        let lexical = big.replace("'x'", crate::sql::redact::REDACTED).replace("-- password", "-- [redacted]");
        assert!(r.text == lexical, "not the lexical redaction");
    }

    #[test]
    fn cached_texts_are_held_to_the_same_limits() {
        let c = Classifier::default();
        let text = "SELECT 1; SELECT 2";
        let generous = QueryLimits::default();
        assert_eq!(c.classify_blocking(text, opts(), &generous).unwrap().len(), 2);
        // Now cached; a stricter rule still refuses it.
        let strict = QueryLimits { statements: 1, ..QueryLimits::default() };
        assert!(matches!(
            c.classify_blocking(text, opts(), &strict),
            Err(Refused::Budget(OverBudget::Statements { count: 2, limit: 1 }))
        ));
        let short = QueryLimits { bytes: 5, ..QueryLimits::default() };
        assert!(matches!(c.classify_blocking(text, opts(), &short), Err(Refused::Budget(OverBudget::Bytes { .. }))));
    }

    #[tokio::test]
    async fn large_texts_parse_on_the_pool_and_agree_with_a_direct_parse() {
        let c = Classifier::default();
        let sql = format!("SELECT a{} FROM t; DELETE FROM u", ",a".repeat(5_000));
        let got = c.classify(&sql, opts(), &QueryLimits::default()).await.unwrap();
        let direct = parse(&sql, opts()).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(
            got.iter().map(|s| s.kinds.clone()).collect::<Vec<_>>(),
            direct.iter().map(|s| s.kinds.clone()).collect::<Vec<_>>()
        );
        assert!(got.get(1).is_some_and(|s| s.kinds.contains(&Kind::Delete)));
        // Parse errors come back as such.
        let bad = format!("SELECT a{} FROM", ",a".repeat(5_000));
        assert!(matches!(c.classify(&bad, opts(), &QueryLimits::default()).await, Err(Refused::Sql(_))));
    }

    #[tokio::test]
    async fn a_busy_pool_refuses_after_its_wait() {
        // No thread to run on: every permit is taken, so the wait runs out.
        let pool = ParsePool::new(1, Duration::from_millis(50));
        let held = pool.permits.clone().acquire_owned().await.unwrap();
        let sql = format!("SELECT a{}", ",a".repeat(5_000));
        let e = pool.classify(&sql, opts()).await.unwrap_err();
        assert!(matches!(e, Refused::Budget(OverBudget::Busy { .. })), "{e}");
        assert_eq!(e.sqlstate(), "53000");
        drop(held);
        assert!(pool.classify(&sql, opts()).await.is_ok(), "served once a thread is free");
    }
}
