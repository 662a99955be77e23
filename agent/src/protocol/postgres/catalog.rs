//! Reading and caching the backend's catalog (see `crate::catalog`): one
//! entry per backend, login and database, read over a side connection with
//! the session's own held credentials, refreshed on an interval and after
//! DDL that passes through Gatehouse. Names a session is defining in a
//! transaction not yet read back are kept as *pending* and count as user
//! code for every session on that entry until a later read sees them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{info, warn};

use super::io::Stream;
use super::wire::{self, Frame};
use super::{Ctx, connect_backend};
use crate::catalog::Catalog;
use crate::catalog::load::{QUERY, Results, Row, build};
use crate::catalog::misses::Lookup;
use crate::policy::Credentials;
use crate::sql::{Defined, QualName};
use crate::types::{BackendName, SessionId};

/// How long a catalog read may take before the session is refused.
const LOAD_TIMEOUT: Duration = Duration::from_secs(20);
/// Largest answer accepted from the catalog query.
const MAX_ANSWER: usize = 256 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    backend: BackendName,
    login: String,
    database: String,
}

/// A definition not yet read back from the catalog.
#[derive(Debug, Clone)]
struct Pending {
    session: SessionId,
    /// The session's exchange that carried it (see [`Entry::settle`]).
    epoch: u64,
    what: Defined,
    name: QualName,
    /// When the defining session's transaction ended (committed or not).
    settled: Option<Instant>,
}

/// See `State::moving`.
#[derive(Debug, Clone, Copy)]
struct Moving {
    session: SessionId,
    epoch: u64,
    settled: Option<Instant>,
}

#[derive(Debug, Default)]
struct State {
    catalog: Option<Arc<Catalog>>,
    loaded: Option<Instant>,
    /// Names the catalog did not hold that it was read again for (see `crate::catalog::misses`).
    misses: Option<crate::catalog::misses::Misses>,
    pending: Vec<Pending>,
    /// Statements that may move what a name reaches
    /// (`sql::Effects::moves_names`), by session and exchange (epoch), with
    /// when their transaction ended: until a read that began after that,
    /// every session of this login resolves names as moved (another
    /// session's committed rename reaches the server before Gatehouse has
    /// read the catalog again).
    moving: Vec<Moving>,
    last_error: Option<String>,
}

/// A catalog and the definitions not yet read back into it.
pub type Snapshot = (Arc<Catalog>, Vec<(Defined, QualName)>);

/// One backend database's catalog as one login sees it.
#[derive(Debug, Default)]
pub struct Entry {
    state: Mutex<State>,
    /// One read at a time.
    loading: tokio::sync::Mutex<()>,
    refreshing: AtomicBool,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Entry {
    /// An entry holding `catalog`, read just now (for tests of the relay).
    #[cfg(test)]
    pub(crate) fn loaded(catalog: Catalog) -> Self {
        let state = State { catalog: Some(Arc::new(catalog)), loaded: Some(Instant::now()), ..State::default() };
        Self { state: Mutex::new(state), ..Self::default() }
    }

    /// The catalog and the pending definitions to classify with.
    pub fn snapshot(&self) -> Option<Snapshot> {
        let st = lock(&self.state);
        let cat = st.catalog.clone()?;
        Some((cat, st.pending.iter().map(|p| (p.what, p.name.clone())).collect()))
    }

    /// Whether the catalog is older than `interval`.
    pub fn is_stale(&self, interval: Duration) -> bool {
        lock(&self.state).loaded.is_none_or(|t| t.elapsed() >= interval)
    }

    /// Notes names `session` is defining in exchange `epoch` (before the
    /// statement runs).
    pub fn add_pending(&self, session: SessionId, epoch: u64, defs: &[(Defined, QualName)]) {
        let mut st = lock(&self.state);
        for (what, name) in defs {
            st.pending.push(Pending { session, epoch, what: *what, name: name.clone(), settled: None });
        }
    }

    /// Notes that `session` forwarded, in exchange `epoch`, a statement
    /// that may move names.
    pub fn add_moving(&self, session: SessionId, epoch: u64) {
        lock(&self.state).moving.push(Moving { session, epoch, settled: None });
    }

    /// `session` is outside a transaction with the exchanges before `done`
    /// answered (`u64::MAX`: the session ended): its definitions and moving
    /// statements of those exchanges are final (or gone), and a read that
    /// begins from now on has them. A pipelined one of a later exchange has
    /// not run yet and stays unsettled. Whether any was settled.
    pub fn settle(&self, session: SessionId, done: u64) -> bool {
        let mut guard = lock(&self.state);
        let st = &mut *guard;
        let now = Instant::now();
        let mut any = false;
        let mine =
            |s: SessionId, epoch: u64, settled: Option<Instant>| s == session && settled.is_none() && epoch < done;
        for p in st.pending.iter_mut().filter(|p| mine(p.session, p.epoch, p.settled)) {
            p.settled = Some(now);
            any = true;
        }
        for m in st.moving.iter_mut().filter(|m| mine(m.session, m.epoch, m.settled)) {
            m.settled = Some(now);
            any = true;
        }
        any
    }

    /// Whether some session's statement may have moved what a name reaches
    /// since the catalog was read (see `State::moving`).
    pub fn names_moved(&self) -> bool {
        !lock(&self.state).moving.is_empty()
    }

    /// [`Entry::snapshot`] with [`Entry::names_moved`], read together: a
    /// read installed between the two would otherwise pair the older
    /// catalog with a list it pruned.
    pub fn snapshot_for_names(&self) -> Option<(Snapshot, bool)> {
        let st = lock(&self.state);
        let cat = st.catalog.clone()?;
        Some(((cat, st.pending.iter().map(|p| (p.what, p.name.clone())).collect()), !st.moving.is_empty()))
    }

    fn install(&self, catalog: Catalog, started: Instant) {
        let mut st = lock(&self.state);
        st.catalog = Some(Arc::new(catalog));
        st.loaded = Some(started);
        st.last_error = None;
        // What was settled before this read began is in it (or was rolled back).
        st.pending.retain(|p| p.settled.is_none_or(|t| t >= started));
        st.moving.retain(|m| m.settled.is_none_or(|t| t >= started));
    }

    pub fn last_error(&self) -> Option<String> {
        lock(&self.state).last_error.clone()
    }
}

/// Every catalog entry the agent holds.
#[derive(Debug, Default)]
pub struct CatalogCache {
    entries: Mutex<HashMap<Key, Arc<Entry>>>,
}

impl CatalogCache {
    fn entry(&self, key: Key) -> Arc<Entry> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner).entry(key).or_default().clone()
    }

    /// Forgets `entry` if it is still `key`'s and was never read: a login
    /// refused, or a database that does not exist, leaves nothing behind
    /// (the catalog is read before a session's own login, so a client
    /// naming a new database at every connection would otherwise grow the
    /// cache without bound).
    fn forget_unread(&self, key: &Key, entry: &Arc<Entry>) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.get(key).is_some_and(|e| Arc::ptr_eq(e, entry)) && entry.snapshot().is_none() {
            entries.remove(key);
        }
    }

    /// How many catalogs are cached (for `status`).
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The catalog entry for a session, read now if it was never read (or the
/// last read failed). An error means the session must not start: without
/// the catalog, statements cannot be classified safely.
pub(super) async fn for_session(ctx: &Ctx, login: &Credentials, database: &str) -> Result<Arc<Entry>, ReadError> {
    let key = Key { backend: ctx.backend.name.clone(), login: login.cache_key(), database: database.to_owned() };
    let entry = ctx.svc.catalogs.entry(key.clone());
    if entry.snapshot().is_some() {
        return Ok(entry);
    }
    let outcome = {
        let _one = entry.loading.lock().await;
        if entry.snapshot().is_some() {
            Ok(())
        } else {
            let started = Instant::now();
            match read(ctx, login, database).await {
                Ok(c) => {
                    info!(
                        relations = c.relation_count(),
                        user_functions = c.user_function_count(),
                        ms = started.elapsed().as_millis(),
                        "read the backend catalog"
                    );
                    entry.install(c, started);
                    Ok(())
                }
                Err(e) => {
                    lock(&entry.state).last_error = Some(e.message.clone());
                    ctx.svc.catalogs.forget_unread(&key, &entry);
                    Err(e)
                }
            }
        }
    };
    outcome.map(|()| entry)
}

/// A statement names relations the catalog does not hold — one made
/// outside Gatehouse since the last read (a view over a table with masked
/// columns would otherwise be read by column name, a view over a denied
/// table pass `deny_tables`, until the next read), or a temporary table, or
/// one that does not exist: the catalog is read again before the statement
/// is decided (see `crate::catalog::misses`). `Err` when `uid`'s reads of
/// this second ([`REREADS_PER_SECOND`]) are taken: the statement is refused.
pub(super) async fn reread_for_unknown(
    ctx: &Ctx,
    entry: &Arc<Entry>,
    login: &Credentials,
    database: &str,
    uid: u32,
) -> Result<(), ()> {
    {
        let mut st = lock(&entry.state);
        let misses = st.misses.get_or_insert_with(|| crate::catalog::misses::Misses::new(REREADS_PER_SECOND));
        if misses.check(uid) == Lookup::Spent {
            return Err(());
        }
    }
    let _one = entry.loading.lock().await;
    let started = Instant::now();
    match read(ctx, login, database).await {
        Ok(c) => {
            info!(
                ms = started.elapsed().as_millis(),
                "read the backend catalog again: a statement named a relation it did not hold"
            );
            entry.install(c, started);
        }
        Err(e) => {
            warn!(error = %e, backend = %ctx.backend.name, "reading the backend catalog again failed; keeping the previous one");
            lock(&entry.state).last_error = Some(e.message);
        }
    }
    Ok(())
}

/// Catalog reads for names it did not hold, per entry and Unix user, at most per second.
pub const REREADS_PER_SECOND: u32 = 4;

/// Reads the catalog again in the background (at most one read at a time
/// per entry; a request during a read is folded into it).
pub(super) fn refresh(ctx: &Ctx, entry: &Arc<Entry>, login: &Credentials, database: &str) {
    if entry.refreshing.swap(true, Ordering::AcqRel) {
        return;
    }
    let (ctx, entry, login, database) = (ctx.clone(), entry.clone(), login.clone(), database.to_owned());
    tokio::spawn(async move {
        let _one = entry.loading.lock().await;
        entry.refreshing.store(false, Ordering::Release);
        let started = Instant::now();
        match read(&ctx, &login, &database).await {
            Ok(c) => entry.install(c, started),
            Err(e) => {
                warn!(error = %e, backend = %ctx.backend.name, "reading the backend catalog again failed; keeping the previous one");
                lock(&entry.state).last_error = Some(e.message);
            }
        }
    });
}

/// Why the catalog could not be read: what a client may be told, and
/// whether the backend refused the login itself (the session's own login
/// would fail the same way).
#[derive(Debug, Clone)]
pub(super) struct ReadError {
    pub message: String,
    pub login: bool,
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<String> for ReadError {
    fn from(message: String) -> Self {
        Self { message, login: false }
    }
}

async fn read(ctx: &Ctx, login: &Credentials, database: &str) -> Result<Catalog, ReadError> {
    let params = vec![
        ("database".to_owned(), database.to_owned()),
        ("application_name".to_owned(), "gatehouse-catalog".to_owned()),
        super::AS_LOGIN.map(str::to_owned).into(),
    ];
    let work = async {
        // The detail (which may name a file) goes to the log; the error, which a client sees, does not carry it.
        let (mut stream, mut rest, _) = connect_backend(ctx, login, params).await.map_err(|e| {
            tracing::warn!(error = %e, "backend login for the catalog failed");
            ReadError { message: e.public(), login: true }
        })?;
        // The server may still end the session it authenticated (a database
        // that does not exist): the session's own login would end the same way.
        login_answer(&mut stream, &mut rest).await.map_err(|message| ReadError { message, login: true })?;
        let results = query_after_login(&mut stream, rest, QUERY).await;
        let _ = stream.write_all(&wire::terminate()).await;
        let _ = stream.flush().await;
        let c = build(&results?).map_err(|e| e.to_string())?;
        crate::protocol::local_socket::warn_open(ctx.backend.name.as_str(), ctx.addr, &c.unix_sockets);
        Ok(c)
    };
    tokio::time::timeout(LOAD_TIMEOUT, work)
        .await
        .map_err(|_| ReadError::from(format!("reading the catalog took longer than {LOAD_TIMEOUT:?}")))?
}

/// Waits for the login's ReadyForQuery, runs one simple Query and collects
/// every result set (text format).
pub(super) async fn simple_query(stream: &mut Stream, mut buf: BytesMut, sql: &str) -> Result<Results, String> {
    login_answer(stream, &mut buf).await?;
    query_after_login(stream, buf, sql).await
}

/// The login's own answer after AuthenticationOk: ParameterStatus,
/// BackendKeyData, ReadyForQuery. `Err` with the server's message when it
/// ends the session instead (a database that does not exist, too many
/// connections).
async fn login_answer(stream: &mut Stream, buf: &mut BytesMut) -> Result<(), String> {
    loop {
        let mut refused: Option<String> = None;
        let ready = next_frame(stream, buf, |f| {
            if f.tag == b'E' {
                refused = Some(error_message(f.body));
            }
            f.tag == b'Z'
        })
        .await;
        if let Some(m) = refused {
            return Err(m);
        }
        if ready? {
            return Ok(());
        }
    }
}

fn error_message(body: &[u8]) -> String {
    wire::error_fields(body)
        .ok()
        .and_then(|fields| {
            fields.iter().find(|(c, _)| *c == b'M').map(|(_, m)| String::from_utf8_lossy(m).into_owned())
        })
        .unwrap_or_else(|| "error".into())
}

/// Runs one simple Query on a connection whose login answer was read.
async fn query_after_login(stream: &mut Stream, mut buf: BytesMut, sql: &str) -> Result<Results, String> {
    stream.write_all(&wire::query(sql)).await.map_err(|e| e.to_string())?;
    stream.flush().await.map_err(|e| e.to_string())?;
    let mut results: Results = Vec::new();
    let mut rows: Vec<Row> = Vec::new();
    let mut error: Option<String> = None;
    loop {
        let mut done = false;
        let mut failed: Option<String> = None;
        next_frame(stream, &mut buf, |f| {
            match f.tag {
                b'Z' => done = true,
                b'D' => match wire::data_row_values(f.body) {
                    Ok(values) => rows
                        .push(values.into_iter().map(|v| v.map(|b| String::from_utf8_lossy(b).into_owned())).collect()),
                    Err(e) => failed = Some(e.to_string()),
                },
                b'C' => results.push(std::mem::take(&mut rows)),
                b'E' => error = Some(error_message(f.body)),
                _ => {}
            }
            false
        })
        .await?;
        if let Some(e) = failed {
            return Err(e);
        }
        if done {
            return match error {
                Some(e) => Err(format!("the catalog query failed: {e}")),
                None => Ok(results),
            };
        }
    }
}

/// Reads until one whole message is buffered, hands it to `f` and drops it.
async fn next_frame(
    stream: &mut Stream,
    buf: &mut BytesMut,
    mut f: impl FnMut(Frame<'_>) -> bool,
) -> Result<bool, String> {
    loop {
        if let Some((frame, n)) = wire::decode(buf, MAX_ANSWER).map_err(|e| e.to_string())? {
            let out = f(frame);
            let _ = buf.split_to(n);
            return Ok(out);
        }
        if stream.read_buf(buf).await.map_err(|e| e.to_string())? == 0 {
            return Err("the backend closed the catalog connection".into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{CatalogCache, Key};
    use crate::catalog::Catalog;
    use std::sync::Arc;
    use std::time::Instant;

    fn key(database: &str) -> Key {
        Key { backend: crate::types::BackendName::new("b"), login: "app".into(), database: database.into() }
    }

    /// A failed first read leaves no entry behind (one per database name a
    /// client tries would add up); a catalog once read stays.
    #[test]
    fn an_entry_never_read_is_forgotten_and_one_read_is_kept() {
        let cache = CatalogCache::default();
        let tried = cache.entry(key("no_such_db"));
        cache.forget_unread(&key("no_such_db"), &tried);
        assert!(cache.is_empty());
        let read = cache.entry(key("appdb"));
        read.install(Catalog::default(), Instant::now());
        cache.forget_unread(&key("appdb"), &read);
        assert_eq!(cache.len(), 1);
        // Another session's newer entry under the same key is not someone else's to forget.
        let newer = cache.entry(key("other"));
        cache.forget_unread(&key("other"), &Arc::new(super::Entry::default()));
        assert!(Arc::ptr_eq(&cache.entry(key("other")), &newer));
    }

    /// A name defined in a pipelined exchange is not settled by an earlier
    /// exchange's end: a read that begins then may not have it yet (the
    /// definition has not run), so it stays pending for every session until
    /// a read that began after its own exchange ended.
    #[test]
    fn a_pipelined_definition_stays_pending_until_its_own_exchange_ends() {
        let entry = super::Entry::default();
        let a = crate::types::SessionId::new();
        let lower = crate::sql::QualName { schema: Some("public".into()), name: "lower".into() };
        entry.install(Catalog::default(), Instant::now());
        entry.add_pending(a, 7, &[(crate::sql::Defined::Function, lower.clone())]);
        let pending = |e: &super::Entry| e.snapshot().map(|(_, p)| p).unwrap_or_default();
        assert!(!entry.settle(a, 7), "exchange 6's end says nothing of exchange 7");
        std::thread::sleep(std::time::Duration::from_millis(2));
        entry.install(Catalog::default(), Instant::now());
        assert_eq!(pending(&entry), [(crate::sql::Defined::Function, lower)]);
        assert!(entry.settle(a, 8));
        std::thread::sleep(std::time::Duration::from_millis(2));
        entry.install(Catalog::default(), Instant::now());
        assert!(pending(&entry).is_empty());
    }

    /// A session's rename counts for every session of the login until a
    /// read that began after its transaction ended.
    #[test]
    fn names_moved_by_one_session_count_until_a_later_read() {
        let entry = super::Entry::default();
        let (a, b) = (crate::types::SessionId::new(), crate::types::SessionId::new());
        assert!(!entry.names_moved());
        let before = Instant::now();
        entry.add_moving(a, 4);
        assert!(entry.names_moved());
        entry.install(Catalog::default(), before);
        assert!(entry.names_moved(), "still open");
        assert!(!entry.settle(a, 4), "an earlier exchange's end says nothing of exchange 4");
        assert!(!entry.settle(b, 9));
        assert!(entry.settle(a, 5));
        entry.install(Catalog::default(), before);
        assert!(entry.names_moved(), "a read that began before it ended");
        std::thread::sleep(std::time::Duration::from_millis(2));
        entry.install(Catalog::default(), Instant::now());
        assert!(!entry.names_moved());
    }
}
