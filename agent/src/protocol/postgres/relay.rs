//! The relay of a PostgreSQL session: two directions, each reading whole
//! messages, deciding, and writing what may pass; bytes that need no change
//! are forwarded as they arrived.
//!
//! Refusing a statement without desynchronising the client: the refused
//! Query or Parse (or Execute, FunctionCall) is replaced by a message the
//! server must reject, `gatehouse_refused_<nonce>`, a syntax error. The
//! server then does exactly what it does after any error (skips the rest of
//! an extended pipeline up to Sync, aborts an open transaction, answers
//! ReadyForQuery), and the backend direction rewrites that one ErrorResponse
//! into Gatehouse's own (SQLSTATE 42501, naming the rule). Refusals are
//! matched to their ErrorResponse by the nonce, so a real error that comes
//! first is never mistaken for one.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Instant;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tracing::{error, warn};

use self::backend::backend_to_client;
use self::client::{client_to_backend, statement_end};

mod backend;
mod client;
mod masking;
#[cfg(test)]
mod tests;
mod tripwire;

use super::io::Stream;
use super::wire::{self, PgError, Severity, WireError};
use super::{Ctx, SessionDb};
use crate::audit::StreamRecorder;
use crate::mask::Counts;
use crate::protocol::budget::{FREE_PER_BUFFER, Room, over_budget};
use crate::protocol::tcp::{End, RelayOutcome};
use crate::sql::lineage::Lineage;
use crate::sql::{Kind, Statement, TableRef};

/// A statement forwarded to the backend, waiting for its outcome.
#[derive(Debug)]
struct InFlight {
    seq: u64,
    /// Relations the statement touches, resolved, and where its result
    /// columns come from: for masking by column identity and lineage.
    relations: Arc<[TableRef]>,
    lineage: Option<Arc<Lineage>>,
    /// The portal an Execute runs: its rows come without a RowDescription.
    portal: Option<Prepared>,
    /// What the decision allowed, for the tripwire on CommandComplete.
    kinds: BTreeSet<Kind>,
    /// Which exchange (ReadyForQuery) it belongs to.
    epoch: u64,
    started: Instant,
    masked: Counts,
    /// An empty query: the server answers EmptyQueryResponse, not a record.
    empty: bool,
    /// `PREPARE name`: the prepared statement exists once this succeeds.
    prepares: Option<(Vec<u8>, u64)>,
    /// `SET search_path`: the session's path once this succeeds.
    search_path: Option<Option<Arc<[String]>>>,
    /// `ROLLBACK` or `ROLLBACK TO SAVEPOINT`: a path set in the transaction
    /// reverts once this succeeds.
    rollback: bool,
    /// DDL: the catalog is read again once it succeeds.
    ddl: bool,
    /// CommandComplete tags seen (one per statement; more is a breach).
    tags: Vec<String>,
}

impl InFlight {
    fn new(seq: u64, epoch: u64, s: &Statement) -> Self {
        // Collected straight into the shared slice: one allocation, not a Vec's and then the slice's.
        let relations: Arc<[TableRef]> = s.reads.iter().chain(&s.writes).cloned().collect();
        let ddl = s.effects.stores_settings
            || s.kinds.iter().any(|k| {
                matches!(
                    k,
                    Kind::Create
                        | Kind::Alter
                        | Kind::Drop
                        | Kind::DefineCode
                        | Kind::Grant
                        | Kind::Revoke
                        | Kind::Comment
                )
            });
        Self {
            seq,
            relations,
            lineage: s.lineage.clone(),
            portal: None,
            kinds: s.kinds.clone(),
            epoch,
            started: Instant::now(),
            masked: Counts::default(),
            empty: false,
            prepares: None,
            search_path: s.effects.search_path.as_ref().map(|p| p.as_deref().map(Arc::from)),
            rollback: s.effects.rollback,
            ddl,
            tags: Vec::new(),
        }
    }

    fn empty(epoch: u64) -> Self {
        Self {
            seq: 0,
            relations: Arc::from(Vec::new()),
            lineage: None,
            portal: None,
            kinds: BTreeSet::new(),
            epoch,
            started: Instant::now(),
            masked: Counts::default(),
            empty: true,
            prepares: None,
            search_path: None,
            rollback: false,
            ddl: false,
            tags: Vec::new(),
        }
    }
}

/// A refusal waiting for the server's error on its stand-in message.
#[derive(Debug)]
struct Refusal {
    epoch: u64,
    error: PgError,
}

/// A Describe forwarded, awaiting its RowDescription or NoData.
#[derive(Debug)]
struct DescribeSlot {
    epoch: u64,
    /// Where the answer is kept.
    targets: Vec<Described>,
    /// Gatehouse's own Describe (see `client::describe_for_execute`): its
    /// answer is kept, not forwarded to the client.
    own: bool,
}

/// A result's columns as the server described them (`None`: NoData).
type Shape = Option<Arc<[wire::Column]>>;

/// The server's answer to a Describe, once it has come: shared by a
/// prepared statement and the portals bound from it, kept as long as they are.
#[derive(Debug, Clone, Default)]
struct Described(Arc<OnceLock<Shape>>);

impl Described {
    fn get(&self) -> Option<&Shape> {
        self.0.get()
    }

    fn set(&self, shape: Shape) {
        let _ = self.0.set(shape);
    }

    fn is(&self, other: &Described) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// A parameter value as text, quoted as SQL quotes it, cut at 200 characters.
fn quoted(b: &[u8]) -> String {
    let t = String::from_utf8_lossy(b);
    let cut: String = t.chars().take(200).collect();
    let more = if t.chars().nth(200).is_some() { "…" } else { "" };
    format!("'{}'{more}", cut.replace('\'', "''"))
}

/// A binary-format parameter value, read by the type the Parse named where
/// that is a common one; otherwise its bytes in hex.
fn binary_value(oid: u32, b: &[u8]) -> String {
    let int = |n: usize| b.get(..n).filter(|_| b.len() == n);
    let read = match oid {
        16 => int(1).map(|x| if x == [0] { "false".to_owned() } else { "true".to_owned() }),
        21 => int(2).and_then(|x| x.try_into().ok()).map(|x| i16::from_be_bytes(x).to_string()),
        23 => int(4).and_then(|x| x.try_into().ok()).map(|x| i32::from_be_bytes(x).to_string()),
        20 => int(8).and_then(|x| x.try_into().ok()).map(|x| i64::from_be_bytes(x).to_string()),
        700 => int(4).and_then(|x| x.try_into().ok()).map(|x| f32::from_be_bytes(x).to_string()),
        701 => int(8).and_then(|x| x.try_into().ok()).map(|x| f64::from_be_bytes(x).to_string()),
        18 | 19 | 25 | 114 | 1042 | 1043 => Some(quoted(b)),
        3802 => b.split_first().filter(|(v, _)| **v == 1).map(|(_, j)| quoted(j)),
        2950 if b.len() == 16 => {
            let h = crate::audit::hex(b);
            h.get(..8)
                .zip(h.get(8..12))
                .zip(h.get(12..16))
                .zip(h.get(16..20))
                .zip(h.get(20..))
                .map(|((((a, b2), c), d), e)| format!("'{a}-{b2}-{c}-{d}-{e}'"))
        }
        _ => None,
    };
    read.unwrap_or_else(|| {
        let hex = crate::audit::hex(b.get(..100).unwrap_or(b));
        format!("\\x{hex}{} (binary)", if b.len() > 100 { "…" } else { "" })
    })
}

/// What a portal adds to its statement: the result formats its Bind asked
/// for, and its own Describe answer.
#[derive(Debug, Clone)]
struct PortalRows {
    formats: Arc<[i16]>,
    described: Described,
    /// The Bind message's body, for approvers to see its parameter values
    /// when an Execute of the portal is held (`None`: over 64 KiB, not kept).
    bind: Option<Arc<[u8]>>,
}

/// A prepared statement (protocol `Parse` or SQL `PREPARE`) as Gatehouse
/// classified it, or a portal bound from one. Every `Execute` decides it again.
#[derive(Debug, Clone)]
struct Prepared {
    text: Arc<str>,
    statements: Arc<[Statement]>,
    /// Distinguishes re-preparations of one name.
    generation: u64,
    /// `Some(epoch)` until the server confirms it: usable only by messages
    /// of that same exchange (if it failed, the server skips them).
    pending: Option<u64>,
    /// The statement's result columns, once a Describe of it was answered.
    described: Described,
    /// Set on portals.
    portal: Option<PortalRows>,
    /// The parameter types the client's Parse named (to show a held
    /// Execute's binary parameter values); empty for SQL PREPARE.
    types: Arc<[u32]>,
}

impl Prepared {
    fn new(text: Arc<str>, statements: Arc<[Statement]>, generation: u64, pending: Option<u64>) -> Self {
        Self {
            text,
            statements,
            generation,
            pending,
            described: Described::default(),
            portal: None,
            types: Arc::from(Vec::new()),
        }
    }

    fn with_types(self, types: Vec<u32>) -> Self {
        Self { types: types.into(), ..self }
    }

    /// The portal a Bind with these result formats makes of this statement.
    /// It is usable by the messages of its exchange (`epoch`) until the
    /// server's BindComplete confirms it (see `Shared::binds`).
    fn bind(&self, formats: Vec<i16>, body: &[u8], generation: u64, epoch: u64) -> Self {
        let bind = (body.len() <= 64 * 1024).then(|| Arc::from(body));
        Self {
            portal: Some(PortalRows { formats: formats.into(), described: Described::default(), bind }),
            generation,
            pending: Some(epoch),
            ..self.clone()
        }
    }

    /// The parameter values an Execute of this portal runs with, as approvers
    /// see them: text values quoted, binary ones in hex, each cut at 200
    /// characters; empty for a statement without parameters.
    fn parameters(&self) -> Vec<String> {
        let Some(portal) = &self.portal else { return Vec::new() };
        let Some(body) = &portal.bind else { return vec!["(a Bind over 64 KiB: not shown)".into()] };
        let Ok(values) = wire::bind_parameters(body) else { return vec!["(unreadable)".into()] };
        values
            .into_iter()
            .enumerate()
            .map(|(i, v)| {
                let shown = match v {
                    None => "NULL".to_owned(),
                    Some((1, b)) => binary_value(self.types.get(i).copied().unwrap_or(0), b),
                    Some((_, b)) => quoted(b),
                };
                format!("${} = {shown}", i + 1)
            })
            .collect()
    }

    /// Where the answer to a Describe of this statement or portal goes. A
    /// portal's answer also describes its statement, if nothing did yet:
    /// drivers (pgJDBC) describe a portal once, then Bind and Execute the
    /// statement again without a Describe.
    fn describe_target(&self) -> Vec<Described> {
        match &self.portal {
            Some(p) => vec![p.described.clone(), self.described.clone()],
            None => vec![self.described.clone()],
        }
    }

    /// The result columns an Execute of this portal sends rows for, with the
    /// formats its Bind asked for; `None` when no Describe was answered.
    fn shape(&self) -> Option<Shape> {
        let portal = self.portal.as_ref()?;
        if let Some(shape) = portal.described.get() {
            return Some(shape.clone());
        }
        let shape = self.described.get()?.as_ref().map(|cols| {
            let formats = &portal.formats;
            let cols: Vec<wire::Column> = cols
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let format = match formats.len() {
                        0 => 0,
                        1 => formats.first().copied().unwrap_or(0),
                        _ => formats.get(i).copied().unwrap_or(0),
                    };
                    wire::Column { format, ..c.clone() }
                })
                .collect();
            Arc::<[wire::Column]>::from(cols)
        });
        Some(shape)
    }
}

/// What the session's search path is known to be.
#[derive(Debug, Default)]
struct PathState {
    /// Set by a `SET search_path` that completed (`Some(None)`: the login's default).
    current: Option<Arc<[String]>>,
    /// Not known: set by code Gatehouse cannot read, or a SET whose
    /// transaction's outcome is not known yet.
    unknown: bool,
    /// A SET that completed in the exchange still open, and whether an error followed.
    tentative: Option<Option<Arc<[String]>>>,
    error_since: bool,
    /// SETs forwarded but not yet settled.
    in_flight: u32,
}

/// State both directions share (short critical sections, never across I/O).
#[derive(Debug, Default)]
struct Shared {
    inflight: VecDeque<InFlight>,
    refusals: VecDeque<Refusal>,
    /// Exchanges the backend has finished (ReadyForQuery after the login's own).
    epochs_done: u64,
    /// The login's ReadyForQuery has passed (it ends no client exchange).
    login_ready: bool,
    /// The transaction status of the last ReadyForQuery (`I`, `T`, `E`).
    txn: u8,
    /// `standard_conforming_strings` as the server reports it.
    scs: bool,
    /// The highest statement seq whose outcome is known.
    completed: u64,
    /// Prepared statements and portals by name.
    prepared: HashMap<Vec<u8>, Prepared>,
    portals: HashMap<Vec<u8>, Prepared>,
    /// Names under which a portal the client bound may exist on the server,
    /// with the exchange of its Bind: SQL `FETCH`/`MOVE` of them is refused.
    /// Forgotten only once the server says no transaction is open (a named
    /// portal never outlives its transaction): a Close or a DECLARE that
    /// failed, then `ROLLBACK TO` a savepoint made after the Bind, leaves the
    /// portal in place.
    bound: HashMap<Vec<u8>, u64>,
    /// Parses forwarded, awaiting ParseComplete: (name, generation, epoch).
    parses: VecDeque<(Vec<u8>, u64, u64)>,
    /// Binds forwarded, awaiting BindComplete: (portal, generation, epoch).
    /// A Bind the server refuses (a portal of that name is still open, after
    /// a failed Close and `ROLLBACK TO` a savepoint) leaves no portal here:
    /// an Execute of the name is then refused, not decided on what the
    /// refused Bind would have run.
    binds: VecDeque<(Vec<u8>, u64, u64)>,
    /// Describes forwarded, awaiting RowDescription or NoData.
    describes: VecDeque<DescribeSlot>,
    /// Cursors declared in this session (SQL `DECLARE`), for the rows `FETCH` returns.
    cursors: HashMap<String, (Arc<Lineage>, Arc<[TableRef]>)>,
    next_generation: u64,
    path: PathState,
    /// A statement that may change the current role was forwarded
    /// (`catalog::SessionNames::role_changed`); for the rest of the session.
    role_changed: bool,
    /// This session has defined code in the transaction still open.
    defined_in_txn: bool,
    /// DDL completed in the transaction still open: read the catalog again when it ends.
    ddl_done: bool,
    /// The backend direction has ended.
    backend_closed: bool,
    /// Notices for the client that the client direction queued (a held statement).
    notices: Vec<Vec<u8>>,
}

fn lock(m: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Debug)]
enum Fail {
    /// A record could not be committed (strict mode): the session ends.
    Audit(String),
    /// The client broke the protocol: FATAL to it, session closed.
    Client(PgError),
    ClientIo(std::io::Error),
    Backend(String),
    /// The server did something the decision did not allow, or changed how
    /// it reads SQL to something Gatehouse cannot read: the session ends.
    Breach(String),
    /// A message would pass the agent's shared budget for large messages.
    Memory(String),
}

impl From<WireError> for Fail {
    fn from(e: WireError) -> Self {
        Fail::Client(PgError::new(Severity::Fatal, "08P01", format!("protocol violation: {e}")))
    }
}

/// Relays until either side ends. `client_rest`/`backend_rest`: bytes each
/// side sent before the relay started (after startup, after login).
pub(super) async fn run(
    ctx: &Ctx,
    db: &SessionDb,
    client: Stream,
    client_rest: BytesMut,
    backend: Stream,
    backend_rest: BytesMut,
) -> RelayOutcome {
    let (mut cr, mut cw) = tokio::io::split(client);
    let (mut br, mut bw) = tokio::io::split(backend);
    let shared = Mutex::new(Shared { scs: true, txn: b'I', ..Shared::default() });
    let (progress, watch) = tokio::sync::watch::channel(0u64);
    let wake = tokio::sync::Notify::new();
    let nonce = format!("gatehouse_refused_{}", uuid::Uuid::new_v4().simple());
    let (mut up, mut down) = (0u64, 0u64);
    let cap = ctx.svc.settings.record_max_bytes;
    let rec = StreamRecorder::new(ctx.id, cap, "statement");
    let result = {
        let io = client::Io { shared: &shared, nonce: &nonce, rec: &rec, progress: watch, wake: &wake };
        let c2b = client_to_backend(ctx, db, &mut cr, client_rest, &mut bw, io, &mut up);
        let bio = backend::Io { shared: &shared, nonce: &nonce, rec: &rec, progress: &progress, wake: &wake };
        let b2c = backend_to_client(ctx, db, &mut br, backend_rest, &mut cw, bio, &mut down);
        tokio::select! {
            r = async { tokio::try_join!(c2b, b2c) } => r.map(|_| ()),
            () = ctx.live.cut.cancelled() => Err(Fail::Backend(String::new())),
        }
    };
    let end = match result {
        Ok(()) => End::Closed,
        Err(_) if ctx.live.cut.is_cancelled() => {
            let reason = ctx.live.reason();
            let e = PgError::new(Severity::Fatal, "57P01", format!("Gatehouse ended this session: {reason}"));
            let _ = cw.write_all(&e.encode()).await;
            let _ = bw.write_all(&wire::terminate()).await;
            End::Cut(reason)
        }
        Err(Fail::Client(e)) => {
            warn!(error = %e.message, "client protocol violation: closing the session");
            let _ = cw.write_all(&e.encode()).await;
            let _ = bw.write_all(&wire::terminate()).await;
            End::ClientError(e.message)
        }
        Err(Fail::ClientIo(e)) => End::ClientError(e.to_string()),
        Err(Fail::Audit(e)) => {
            let pe = PgError::new(
                Severity::Fatal,
                "58030",
                format!("Gatehouse ended this session: the audit store cannot be written ({e})"),
            );
            let _ = cw.write_all(&pe.encode()).await;
            let _ = bw.write_all(&wire::terminate()).await;
            End::Cut(format!("audit store failure: {e}"))
        }
        Err(Fail::Backend(e)) => {
            let pe = PgError::new(Severity::Fatal, "08006", format!("Gatehouse lost the backend: {e}"));
            let _ = cw.write_all(&pe.encode()).await;
            End::BackendError(e)
        }
        Err(Fail::Memory(e)) => {
            warn!(error = %e, "message over the shared budget: closing the session");
            let pe = PgError::new(Severity::Fatal, "53200", format!("Gatehouse ended this session: the {e}"));
            let _ = cw.write_all(&pe.encode()).await;
            let _ = bw.write_all(&wire::terminate()).await;
            End::Cut(format!("memory budget: the {e}"))
        }
        Err(Fail::Breach(e)) => {
            error!(breach = %e, "POLICY BREACH: the server did what the decision did not allow; session ended");
            let pe = PgError::new(Severity::Fatal, "42501", format!("Gatehouse ended this session: {e}")).hint(
                "the operators have been alerted; the audit trail records the statement and what the server reported",
            );
            let _ = cw.write_all(&pe.encode()).await;
            let _ = bw.write_all(&wire::terminate()).await;
            End::Cut(format!("policy breach: {e}"))
        }
    };
    let _ = cw.flush().await;
    let _ = cw.shutdown().await;
    let _ = bw.shutdown().await;
    rec.finish(&ctx.svc.audit);
    // Statements still waiting for an outcome ended with the session.
    let (pending, defined) = {
        let mut sh = lock(&shared);
        (sh.inflight.drain(..).filter(|f| !f.empty).collect::<Vec<InFlight>>(), sh.defined_in_txn)
    };
    for f in pending {
        statement_end(ctx, f, None, Some(format!("session ended: {}", end.describe())));
    }
    // A statement still held for approval is withdrawn with the session.
    ctx.svc.desk.withdraw_session(&ctx.id.to_string());
    // An open transaction that defined code or moved names ended with the
    // session (settled whatever it was, so it holds no other session up).
    let settled = db.catalog.settle(ctx.id, u64::MAX);
    if defined || settled {
        super::catalog::refresh(ctx, &db.catalog, &db.login, &db.database);
    }
    RelayOutcome { up, down, end }
}

/// Why [`fill`] read nothing.
#[derive(Debug)]
enum FillError {
    Io(std::io::Error),
    /// The message being read would take the buffer past what the agent's
    /// shared budget has left (bytes the buffer would hold).
    Budget(usize),
}

/// Reads more bytes into `buf`; `Ok(false)` on a clean EOF. The buffer grows
/// with the bytes that actually arrive (at most doubling per read), never by
/// what a message header claims: a 5-byte header announcing a 1 GB message
/// costs a few kilobytes until the peer really sends that much. Growth past
/// [`FREE_PER_BUFFER`] is taken from the budget all sessions share
/// (see [`LARGE`]) before the bytes are read.
async fn fill<R: AsyncRead + Unpin>(r: &mut R, buf: &mut BytesMut, room: &mut Room) -> Result<bool, FillError> {
    let spare = buf.capacity() - buf.len();
    let want = match wire::pending_len(buf) {
        Some(need) if need > buf.len() => (need - buf.len()).min(buf.len().max(READ_CHUNK)),
        _ => READ_CHUNK,
    };
    if spare < want.min(READ_CHUNK) {
        room.grow_to(buf.len() + want).map_err(FillError::Budget)?;
        buf.reserve(want);
        room.grow_to(buf.capacity()).map_err(FillError::Budget)?;
    }
    Ok(r.read_buf(buf).await.map_err(FillError::Io)? > 0)
}

/// The least a read asks room for.
const READ_CHUNK: usize = 8192;

/// After a buffer's complete messages are through: one that grew past
/// [`FREE_PER_BUFFER`] moves what is left of a message into a small
/// allocation and gives its room back (a buffer keeps its largest size
/// otherwise, and an idle session would hold the 200 MB its last row took).
fn settle(buf: &mut BytesMut, room: &mut Room) {
    if room.held > 0 && buf.len() <= FREE_PER_BUFFER / 2 {
        let large = room.held >= 1 << 20;
        let mut fresh = BytesMut::with_capacity(buf.len().max(READ_CHUNK));
        fresh.extend_from_slice(buf);
        *buf = fresh;
        room.release();
        if large {
            crate::sys::release_free_memory_soon();
        }
    }
}

/// A vector of bytes written out keeps at most this much room.
fn trim(v: &mut Vec<u8>, keep: usize) {
    if v.is_empty() && v.capacity() > FREE_PER_BUFFER {
        *v = Vec::with_capacity(keep);
    }
}

#[cfg(test)]
mod fill_tests {
    use super::*;

    #[tokio::test]
    async fn a_header_claiming_a_huge_message_does_not_reserve_it() {
        let (mut tx, mut rx) = tokio::io::duplex(1 << 16);
        // 'Q' with a length of 1 GiB, then nothing more for now.
        tokio::io::AsyncWriteExt::write_all(&mut tx, &[b'Q', 0x40, 0, 0, 0]).await.unwrap();
        let mut buf = BytesMut::new();
        let mut room = Room::new(1 << 30);
        assert!(fill(&mut rx, &mut buf, &mut room).await.unwrap());
        assert!(fill_ready(&mut rx, &mut buf, &mut room).await.is_none(), "no more bytes have arrived");
        assert!(buf.capacity() < 64 * 1024, "capacity {} for a 5-byte header", buf.capacity());
        // As bytes arrive, the buffer grows with them (at most doubling).
        let chunk = vec![b'x'; 1 << 16];
        let mut sent = 5usize;
        for _ in 0..16 {
            tokio::io::AsyncWriteExt::write_all(&mut tx, &chunk).await.unwrap();
            sent += chunk.len();
            while buf.len() < sent {
                assert!(fill(&mut rx, &mut buf, &mut room).await.unwrap());
            }
            assert!(
                buf.capacity() <= 4 * buf.len().max(READ_CHUNK),
                "capacity {} for {} bytes",
                buf.capacity(),
                buf.len()
            );
        }
    }

    /// Sessions share the budget: growth past the free part takes from it,
    /// a buffer settled after its message gives it back (and is small again),
    /// a message past what is left fails before its bytes are read.
    #[tokio::test]
    async fn large_messages_share_one_budget_and_give_it_back() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static POOL: AtomicUsize = AtomicUsize::new(0);
        let budget = 4 << 20;
        let mut a = Room { held: 0, budget, pool: &POOL };
        let mut b = Room { held: 0, budget, pool: &POOL };
        a.grow_to(FREE_PER_BUFFER).unwrap();
        assert_eq!(POOL.load(Ordering::Acquire), 0, "the free part is free");
        a.grow_to(3 << 20).unwrap();
        assert_eq!(POOL.load(Ordering::Acquire), (3 << 20) - FREE_PER_BUFFER);
        assert_eq!(b.grow_to(2 << 20), Err(2 << 20), "what is left is not enough");
        b.grow_to(1 << 20).unwrap();
        // a's message is through: a small buffer again, its room given back.
        let mut buf = BytesMut::with_capacity(3 << 20);
        buf.extend_from_slice(b"tail");
        settle(&mut buf, &mut a);
        assert_eq!(&buf[..], b"tail");
        assert!(buf.capacity() < FREE_PER_BUFFER, "{}", buf.capacity());
        assert_eq!(POOL.load(Ordering::Acquire), (1 << 20) - FREE_PER_BUFFER);
        b.grow_to(3 << 20).unwrap();
        drop(b);
        assert_eq!(POOL.load(Ordering::Acquire), 0);
        // fill: a message whose next read passes the budget fails before reading it.
        let mut small = Room { held: 0, budget: 1 << 20, pool: &POOL };
        let (mut tx, mut rx) = tokio::io::duplex(1 << 16);
        let mut msg = vec![b'D'];
        msg.extend_from_slice(&(64u32 << 20).to_be_bytes());
        let mut buf = BytesMut::new();
        let reader = tokio::spawn(async move {
            let mut err = None;
            for _ in 0..10_000 {
                match fill(&mut rx, &mut buf, &mut small).await {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(e) => {
                        err = Some(e);
                        break;
                    }
                }
            }
            (err, buf.len())
        });
        tokio::io::AsyncWriteExt::write_all(&mut tx, &msg).await.unwrap();
        let chunk = vec![b'x'; 1 << 16];
        while !reader.is_finished() {
            if tokio::io::AsyncWriteExt::write_all(&mut tx, &chunk).await.is_err() {
                break;
            }
        }
        let (err, read) = reader.await.unwrap();
        assert!(matches!(err, Some(FillError::Budget(n)) if n > 1 << 20), "{err:?}");
        assert!(read <= 2 << 20, "read {read} bytes past a 1 MiB budget");
        assert_eq!(POOL.load(Ordering::Acquire), 0, "the failed session's room is back");
    }

    /// `fill`, unless it would wait.
    async fn fill_ready(r: &mut tokio::io::DuplexStream, buf: &mut BytesMut, room: &mut Room) -> Option<bool> {
        tokio::time::timeout(std::time::Duration::from_millis(20), fill(r, buf, room)).await.ok().and_then(Result::ok)
    }
}

#[cfg(test)]
mod parameter_tests {
    use super::*;

    #[test]
    fn held_parameters_are_shown_by_their_types() {
        assert_eq!(binary_value(23, &42i32.to_be_bytes()), "42");
        assert_eq!(binary_value(20, &(-7i64).to_be_bytes()), "-7");
        assert_eq!(binary_value(16, &[1]), "true");
        assert_eq!(binary_value(701, &1.5f64.to_be_bytes()), "1.5");
        assert_eq!(binary_value(25, b"it's"), "'it''s'");
        assert_eq!(binary_value(3802, b"\x01{\"a\": 1}"), "'{\"a\": 1}'");
        assert_eq!(binary_value(2950, &[0x12; 16]), "'12121212-1212-1212-1212-121212121212'");
        // A wrong length or an unknown type: the bytes.
        assert_eq!(binary_value(23, &[0, 1]), "\\x0001 (binary)");
        assert_eq!(binary_value(0, &[0xff]), "\\xff (binary)");
        assert_eq!(quoted("x".repeat(300).as_bytes()), format!("'{}'…", "x".repeat(200)));

        let mut bind = b"\0s\0".to_vec();
        // Three parameter formats (text, binary, text), three values.
        bind.extend_from_slice(&[0, 3, 0, 0, 0, 1, 0, 0, 0, 3]);
        bind.extend_from_slice(&2i32.to_be_bytes());
        bind.extend_from_slice(b"10");
        bind.extend_from_slice(&4i32.to_be_bytes());
        bind.extend_from_slice(&7i32.to_be_bytes());
        bind.extend_from_slice(&(-1i32).to_be_bytes());
        bind.extend_from_slice(&[0, 0]);
        let p = Prepared::new(Arc::from("SELECT $1, $2, $3"), Arc::from(Vec::new()), 1, None)
            .with_types(vec![0, 23, 25])
            .bind(Vec::new(), &bind, 2, 0);
        assert_eq!(p.parameters(), ["$1 = '10'", "$2 = 7", "$3 = NULL"]);
        let unbound = Prepared::new(Arc::from("SELECT 1"), Arc::from(Vec::new()), 1, None);
        assert!(unbound.parameters().is_empty());
    }
}
