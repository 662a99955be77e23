//! The MySQL/MariaDB adapter (first slice). Gatehouse answers the client's
//! handshake itself (no password is checked: identity comes from the
//! kernel), logs in to the backend with the credentials the policy holds
//! (`mysql_native_password`, `caching_sha2_password` fast path), then relays
//! command by command, in lockstep: each command is decided before the
//! server sees it, and the server's whole answer is forwarded, byte for
//! byte, before the next command is read.
//!
//! - `COM_QUERY`: classified by `sql::mysql` (MySQL grammar, one statement
//!   per text) and decided by the policy; refused ones get an ERR packet
//!   (1227, SQLSTATE 42000, naming the rule) and the session goes on.
//!   One that needs approval waits for it before the server sees it
//!   (`hold`; at each execute for prepared statements, not at the prepare).
//! - `COM_INIT_DB` is decided as `USE db`, `COM_FIELD_LIST` as `SHOW
//!   COLUMNS FROM db.table` (`field_list`); `COM_PING`, `COM_QUIT`,
//!   `COM_RESET_CONNECTION` pass; prepared statements (`COM_STMT_*`) are
//!   decided as `COM_QUERY` at prepare and again at each execute, for the
//!   ids this session prepared only (`prepared`); cursors (`COM_STMT_FETCH`)
//!   and every other command are refused.
//! - TLS on both legs, with the PostgreSQL adapter's rustls helpers and
//!   settings: upstream per the backend's `tls` (SSLRequest after the
//!   server's greeting, then the login inside TLS; `verify` fails closed on
//!   a server without CLIENT_SSL); towards the client only with `client_tls`
//!   (CLIENT_SSL advertised, the client's SSLRequest answered with TLS),
//!   otherwise an SSLRequest is refused.
//! - Never passed to the backend: compression, `CLIENT_LOCAL_FILES`,
//!   `CLIENT_MULTI_STATEMENTS`.
//! - A packet of 16 MiB or more from the client (a continued packet) ends
//!   the session with an ERR; the server's continued packets are relayed.
//! - On a session whose rule masks, result sets are rewritten row by row
//!   (`masking` for text rows, `binary` for the rows of prepared
//!   statements), ERR messages lose what they quote, and what cannot be
//!   read ends the session with an ERR instead of being relayed.

mod auth;
pub mod binary;
pub mod ed25519;
pub mod field_list;
mod hold;
pub mod masking;
mod prepared;
mod record;
pub mod sha2;
#[cfg(test)]
mod tests;
pub mod views;
pub mod wire;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;

use crate::protocol::budget::{FREE_PER_BUFFER, Room, over_budget};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::{info, warn};

use super::postgres::io::Stream;
use super::postgres::tls;
use super::tcp::{End, RelayOutcome};
use crate::audit::{Event, StatementEnd, StatementStart, now_us};
use crate::catalog::misses::Lookup;
use crate::identity::Principal;
use crate::live::ConnectRefusal;
use crate::live::{LiveSession, Snapshot};
use crate::policy::{Backend, Credentials, Decision, Request, TlsMode, Verdict};
use crate::sql::mysql::{self as classify, Names, Refusal};
use crate::sql::{Kind, Statement, TableRef};
use crate::types::{DbRole, SessionId, Uid};

/// How long the client may take to answer the greeting.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(15);
/// Bytes buffered for the client before a write.
const FLUSH_AT: usize = 64 << 10;
/// ER_SPECIFIC_ACCESS_DENIED_ERROR: the code of every refusal.
const ER_REFUSED: u16 = 1227;
/// Columns a result set may have (MySQL's own limit).
const MAX_COLUMNS: u64 = 4096;
/// ER_ACCESS_DENIED_ERROR: the login could not be made.
const ER_LOGIN: u16 = 1045;
/// `ER_CON_COUNT_ERROR`: too many connections (`max_connections_per_user`).
const ER_CON_COUNT: u16 = 1040;
/// ER_UNKNOWN_ERROR: the backend cannot be reached or read. (Not the
/// client-side codes 2003/2013: clients read an ERR packet with a code of
/// 2000 and up as a malformed packet and show no message.)
const ER_UNKNOWN: u16 = 1105;
/// ER_OUT_OF_RESOURCES: a packet would pass the agent's budget for large messages.
const ER_OUT_OF_RESOURCES: u16 = 1041;

/// What a MySQL session needs to know about itself.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub svc: Arc<Services>,
    pub id: SessionId,
    pub principal: Principal,
    pub uid: Uid,
    pub backend: Backend,
    pub addr: SocketAddr,
    pub as_role: Option<DbRole>,
    /// The masking profile of the session's rule: result sets are masked.
    pub mask: Option<Arc<crate::mask::Profile>>,
    pub guard: crate::policy::Guard,
    pub record: crate::sql::redact::RecordOptions,
    pub live: Arc<LiveSession>,
}

/// What a MySQL session is given of the agent: handles onto the state it
/// shares with other sessions, nothing else (see `postgres::Services`).
/// Built by the proxy (`Agent::mysql_services`) for each session.
#[derive(Debug, Clone)]
pub struct Services {
    pub settings: Arc<crate::settings::Settings>,
    /// The policy in force.
    pub snapshot: Arc<arc_swap::ArcSwap<Snapshot>>,
    /// The rules approved grants act as.
    pub grant_rules: Arc<arc_swap::ArcSwap<Vec<crate::policy::Rule>>>,
    pub audit: Arc<crate::audit::Audit>,
    /// Backends' TLS client configurations; how each was last logged in to.
    pub backends: Arc<crate::live::Backends>,
    /// Where held statements wait for a human.
    pub desk: Arc<dyn crate::approval::Desk>,
}

#[derive(Debug, thiserror::Error)]
enum Fail {
    #[error("client: {0}")]
    Client(String),
    /// A packet would pass the shared budget for large messages (see [`crate::protocol::budget`]).
    #[error("memory budget: the {0}")]
    Memory(String),
    #[error("backend: {0}")]
    Backend(String),
    #[error("audit store: {0}")]
    Audit(String),
    #[error("{0}")]
    Breach(String),
}

/// One side's packets, read whole (header included) from a buffered stream.
struct Conn {
    /// Plain TCP or TLS over it; `None` only if a TLS handshake failed
    /// (the connection is then gone).
    s: Option<Stream>,
    buf: BytesMut,
    /// A large allocation was let go: give free memory back after the command.
    trim: bool,
    /// The buffer's share of the budget large messages of all sessions
    /// share (`[agent] large_message_budget`), and whose packets it reads.
    /// Held while `buf` is past the free part: once it is empty again it
    /// starts over small (the packets handed out share its allocation,
    /// which an idle session would otherwise keep whole).
    room: Room,
    whose: &'static str,
}

fn lost() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::NotConnected, "the connection was lost in its TLS handshake")
}

impl Conn {
    /// Between commands (the packets of the last one are dropped): a large
    /// buffer let go is given back to the system.
    fn settled(&mut self) {
        if std::mem::take(&mut self.trim) {
            crate::sys::release_free_memory_soon();
        }
    }

    /// `budget`: `[agent] large_message_budget`; `whose`: "client's" or "server's".
    fn new(s: TcpStream, budget: usize, whose: &'static str) -> Self {
        Self {
            s: Some(Stream::Plain(s)),
            buf: BytesMut::with_capacity(16 << 10),
            trim: false,
            room: Room::new(budget),
            whose,
        }
    }

    /// The plain TCP stream, to be wrapped in TLS.
    fn take_plain(&mut self) -> std::io::Result<TcpStream> {
        match self.s.take() {
            Some(Stream::Plain(tcp)) => Ok(tcp),
            other => {
                self.s = other;
                Err(std::io::Error::other("TLS asked for twice"))
            }
        }
    }

    fn io(&mut self) -> std::io::Result<&mut Stream> {
        self.s.as_mut().ok_or_else(lost)
    }

    async fn shutdown(&mut self) {
        if let Some(s) = self.s.as_mut() {
            let _ = s.shutdown().await;
        }
    }

    /// Answers the client's SSLRequest with TLS (`client_tls`). The client
    /// sends its ClientHello right after the SSLRequest without waiting:
    /// what is already buffered is handed to rustls before reading on.
    async fn accept_tls(&mut self, cfg: Arc<rustls::ServerConfig>) -> std::io::Result<()> {
        let tcp = self.take_plain()?;
        let early = self.buf.split();
        let mut fed = Ok(());
        let accept = tokio_rustls::TlsAcceptor::from(cfg).accept_with(tcp, |conn| {
            fed = feed(conn, &early);
        });
        fed?;
        let tls = accept.await?;
        self.s = Some(Stream::ServerTls(Box::new(tls)));
        Ok(())
    }

    /// Starts TLS with the backend after Gatehouse's SSLRequest; returns
    /// what was negotiated.
    async fn connect_tls(
        &mut self,
        cfg: Arc<rustls::ClientConfig>,
        name: rustls::pki_types::ServerName<'static>,
    ) -> std::io::Result<tls::Negotiated> {
        // The server speaks only after our ClientHello: bytes already here
        // did not come through TLS.
        if !self.buf.is_empty() {
            return Err(std::io::Error::other("the server sent data before the TLS handshake"));
        }
        let tcp = self.take_plain()?;
        let tls = tokio_rustls::TlsConnector::from(cfg).connect(name, tcp).await?;
        let n = tls::negotiated(tls.get_ref().1);
        self.s = Some(Stream::ClientTls(Box::new(tls)));
        Ok(n)
    }

    /// The next physical packet (header included), `None` at a clean EOF.
    async fn read(&mut self) -> std::io::Result<Option<BytesMut>> {
        loop {
            if let Some((_, n)) = wire::decode(&self.buf) {
                let packet = self.buf.split_to(n);
                if self.room.held > 0 && self.buf.is_empty() {
                    self.buf = BytesMut::with_capacity(16 << 10);
                    // Once the packets sharing the allocation are dropped (see [`Conn::settled`]).
                    self.trim |= self.room.held + FREE_PER_BUFFER >= 1 << 20;
                    self.room.release();
                }
                return Ok(Some(packet));
            }
            // Grow with what arrives, not with what a header claims.
            let want = wire::pending_len(&self.buf).map_or(8192, |n| (n - self.buf.len()).min(1 << 20));
            self.reserve(want.max(4096))?;
            let (s, buf) = (&mut self.s, &mut self.buf);
            if s.as_mut().ok_or_else(lost)?.read_buf(buf).await? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed mid-packet"))
                };
            }
        }
    }

    /// Reads what arrives into the buffer, kept for [`Conn::read`], while
    /// nothing is expected (a held statement): `Ok(false)` once the peer
    /// closed. Past `limit` buffered bytes it stops reading (waits forever).
    async fn fill(&mut self, limit: usize) -> std::io::Result<bool> {
        if self.buf.len() >= limit {
            return std::future::pending().await;
        }
        self.reserve(4096)?;
        let (s, buf) = (&mut self.s, &mut self.buf);
        Ok(s.as_mut().ok_or_else(lost)?.read_buf(buf).await? != 0)
    }

    /// Room in the buffer for `want` more bytes. Growth past the free part
    /// comes from the shared budget before the bytes are read (an
    /// `OutOfMemory` error when it does not have it).
    fn reserve(&mut self, want: usize) -> std::io::Result<()> {
        if self.buf.capacity() - self.buf.len() >= want {
            return Ok(());
        }
        let (whose, budget) = (self.whose, self.room.budget);
        let over = |n| std::io::Error::new(std::io::ErrorKind::OutOfMemory, over_budget(whose, n, budget));
        self.room.grow_to(self.buf.len() + want).map_err(over)?;
        self.buf.reserve(want);
        self.room.grow_to(self.buf.capacity()).map_err(over)
    }

    async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let s = self.io()?;
        s.write_all(bytes).await?;
        s.flush().await
    }
}

/// Hands TLS records that arrived with the SSLRequest to rustls.
fn feed(conn: &mut rustls::ServerConnection, mut early: &[u8]) -> std::io::Result<()> {
    while !early.is_empty() {
        if conn.read_tls(&mut early)? == 0 {
            break;
        }
        conn.process_new_packets().map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    }
    Ok(())
}

/// A packet's sequence id (packets from [`Conn::read`] always have their header).
fn seq_of(p: &[u8]) -> u8 {
    p.get(3).copied().unwrap_or(0)
}

/// A packet's payload.
fn payload_of(p: &[u8]) -> &[u8] {
    p.get(4..).unwrap_or_default()
}

fn err_packet(seq: u8, code: u16, state: &str, msg: &str) -> Vec<u8> {
    wire::frame(seq, &wire::err_payload(code, state, msg))
}

/// Refuses a connection in the client's protocol: an ERR packet in place
/// of the server's greeting (what a server does for a host it refuses).
pub async fn reject(client: TcpStream, reason: &str, refusal: ConnectRefusal) {
    let mut c = Conn::new(client, 0, "client's");
    let msg = format!("Gatehouse refused this connection: {reason}");
    let (code, state) = match refusal {
        ConnectRefusal::Denied => (ER_LOGIN, "28000"),
        ConnectRefusal::TooManyConnections => (ER_CON_COUNT, "08004"),
    };
    let _ = tokio::time::timeout(LOGIN_TIMEOUT, c.send(&err_packet(0, code, state, &msg))).await;
    c.shutdown().await;
}

/// Serves an allowed MySQL session to its end.
pub async fn serve(ctx: Ctx, client: TcpStream) -> RelayOutcome {
    let mut client = Conn::new(client, ctx.svc.settings.large_message_budget, "client's");
    let mut up = 0u64;
    let mut down = 0u64;
    let end = match start(&ctx, &mut client).await {
        Ok(mut s) => {
            let end = relay(&ctx, &mut s, &mut client, &mut up, &mut down).await;
            s.backend.shutdown().await;
            end
        }
        Err(end) => end,
    };
    // A statement still held for approval is withdrawn with the session.
    ctx.svc.desk.withdraw_session(&ctx.id.to_string());
    client.shutdown().await;
    RelayOutcome { up, down, end }
}

/// A session logged in on both sides.
struct Session {
    backend: Conn,
    deprecate_eof: bool,
    database: Option<String>,
    fold_case: bool,
    mariadb: bool,
    seq: u64,
    /// Statements prepared through Gatehouse, by the server's ids.
    prepared: prepared::Registry,
    /// The recording of both packet streams (`record`).
    rec: record::Recording,
    /// The backend login, whose views the session sees (see [`views`]).
    login: String,
}

/// The handshake with the client and the login to the backend.
async fn start(ctx: &Ctx, client: &mut Conn) -> Result<Session, End> {
    let refuse_greeting = async |client: &mut Conn, msg: String| {
        let _ = client.send(&err_packet(0, ER_LOGIN, "28000", &msg)).await;
        End::Cut(msg)
    };
    let login = match ctx.backend.login(ctx.as_role.as_ref()) {
        Some(l) if l.dynamic.is_none() => l.clone(),
        Some(_) => {
            return Err(refuse_greeting(
                client,
                "Gatehouse: dynamic logins are not supported for MySQL backends".into(),
            )
            .await);
        }
        None => return Err(refuse_greeting(client, "Gatehouse holds no login for this backend role".into()).await),
    };
    let tcp = match crate::live::connect_upstream(ctx.addr, ctx.svc.settings.mark).await {
        Ok(t) => t,
        Err(e) => {
            warn!(error = %e, "backend unreachable");
            let _ = client
                .send(&err_packet(
                    0,
                    ER_UNKNOWN,
                    "HY000",
                    &format!("Gatehouse cannot reach backend {}", ctx.backend.name),
                ))
                .await;
            return Err(End::BackendError(format!("backend unreachable: {e}")));
        }
    };
    let mut backend = Conn::new(tcp, ctx.svc.settings.large_message_budget, "server's");
    let greeting = match backend.read().await {
        Ok(Some(p)) => wire::parse_greeting(payload_of(&p)).map_err(|e| e.to_string()),
        Ok(None) => Err("closed before its greeting".into()),
        Err(e) => Err(e.to_string()),
    };
    let greeting = match greeting {
        Ok(g) => g,
        Err(e) => {
            let msg = format!("Gatehouse could not read the greeting of backend {}: {e}", ctx.backend.name);
            let _ = client.send(&err_packet(0, ER_UNKNOWN, "HY000", &msg)).await;
            return Err(End::BackendError(msg));
        }
    };
    // Our own greeting: the server's version, our capabilities and nonce;
    // CLIENT_SSL when the backend has a usable `client_tls`.
    let client_tls = client_tls_config(ctx).await;
    let mut offered = wire::OFFERED & (greeting.capabilities | wire::CLIENT_LONG_PASSWORD);
    if client_tls.is_some() {
        offered |= wire::CLIENT_SSL;
    }
    let mut nonce = [0u8; 20];
    let r = [uuid::Uuid::new_v4().into_bytes(), uuid::Uuid::new_v4().into_bytes()].concat();
    for (n, b) in nonce.iter_mut().zip(r) {
        *n = (b & 0x7f).max(1);
    }
    if let Err(e) = client.send(&wire::frame(0, &wire::greeting_payload(&greeting, offered, &nonce))).await {
        return Err(End::ClientError(e.to_string()));
    }
    let mut reply = read_login(client).await?;
    // SSLRequest (client_tls): TLS, then the login inside it with the next sequence id.
    let mut client_on_tls = false;
    if let Some(cfg) = client_tls
        && wire::parse_login(payload_of(&reply)).is_ok_and(|l| l.ssl)
    {
        match tokio::time::timeout(LOGIN_TIMEOUT, client.accept_tls(cfg)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(End::ClientError(format!("TLS handshake: {e}"))),
            Err(_) => return Err(End::ClientError(format!("no TLS handshake within {LOGIN_TIMEOUT:?}"))),
        }
        client_on_tls = true;
        reply = read_login(client).await?;
    }
    let seq = seq_of(&reply).wrapping_add(1);
    let refuse_login = async |client: &mut Conn, code: u16, msg: String| {
        let _ = client.send(&err_packet(seq, code, "28000", &msg)).await;
        End::Cut(msg)
    };
    let hello = match wire::parse_login(payload_of(&reply)) {
        Ok(l) => l,
        Err(e) => return Err(refuse_login(client, ER_LOGIN, format!("Gatehouse could not read the login: {e}")).await),
    };
    if hello.ssl {
        let msg = if client_on_tls {
            "Gatehouse refused a second TLS request inside TLS"
        } else {
            "Gatehouse does not offer TLS to clients of this backend (it has no client_tls; the connection to it stays on this host): connect with --skip-ssl / ssl-mode=DISABLED"
        };
        return Err(refuse_login(client, ER_LOGIN, msg.into()).await);
    }
    if !wire::safe_collation(hello.charset) {
        let msg = format!(
            "Gatehouse refused client character set #{}: its multi-byte characters can hide quotes and backslashes; use utf8mb4",
            hello.charset
        );
        return Err(refuse_login(client, 1115, msg).await);
    }
    let caps = hello.capabilities & offered;
    let password = match &login.password_file {
        // Read on the worker, as the PostgreSQL adapter does: a small file
        // of root's in the page cache (open, fstat, read), cheaper than the
        // two thread hops of spawn_blocking on every new connection.
        Some(p) => match crate::secrets::read_secret(p, "password file") {
            Ok(s) => Some(s.first_line()),
            Err(e) => {
                warn!(error = %e, "cannot read the backend password");
                return Err(refuse_login(
                    client,
                    ER_LOGIN,
                    "Gatehouse cannot read the password of this backend login".into(),
                )
                .await);
            }
        },
        None => None,
    };
    let link = match secure(ctx, &mut backend, &greeting, caps, hello.charset, hello.database.as_deref()).await {
        Ok(l) => l,
        Err(e) => {
            warn!(error = %e.detail, backend = %ctx.backend.name, "backend TLS failed (session refused)");
            let msg = format!("Gatehouse could not reach backend {} over TLS: {}", ctx.backend.name, e.public);
            return Err(refuse_login(client, ER_LOGIN, msg).await);
        }
    };
    let pw = password.as_ref().map_or(&[][..], crate::secrets::Secret::expose);
    let keys = match rsa_keys(ctx).await {
        Ok(k) => k,
        Err(e) => {
            warn!(error = %e, backend = %ctx.backend.name, "server_public_key is unusable (session refused)");
            let msg = format!(
                "Gatehouse could not log in to backend {}: its server_public_key is unusable (see the agent's log)",
                ctx.backend.name
            );
            return Err(refuse_login(client, ER_LOGIN, msg).await);
        }
    };
    let secured = match link.tls {
        "verified" => sha2::Link::Verified,
        "unverified" => sha2::Link::Unverified,
        _ => sha2::Link::Plain,
    };
    let login_args =
        LoginArgs { caps, charset: hello.charset, database: hello.database.as_deref(), link: secured, keys: &keys };
    let auth = match log_in(&mut backend, &greeting, &login, pw, &login_args).await {
        Ok(a) => a,
        Err(e) => {
            warn!(error = %e, backend = %ctx.backend.name, login = %login.user, "backend login failed");
            let msg = format!("Gatehouse could not log in to backend {} as {}: {e}", ctx.backend.name, login.user);
            return Err(refuse_login(client, ER_LOGIN, msg).await);
        }
    };
    record_login(ctx, &login, auth, &link, hello.database.as_deref().filter(|d| !d.is_empty()));
    let mut s = Session {
        backend,
        deprecate_eof: caps & wire::CLIENT_DEPRECATE_EOF != 0,
        database: hello.database.clone(),
        fold_case: true,
        mariadb: greeting.version.contains("MariaDB"),
        seq: 0,
        prepared: prepared::Registry::default(),
        rec: record::Recording::new(ctx),
        login: login.user.clone(),
    };
    if let Err(e) = prepare(ctx, &mut s).await {
        warn!(error = %e, "session refused (fail closed)");
        let msg = format!("Gatehouse refused this session on backend {}: {e}", ctx.backend.name);
        return Err(refuse_login(client, ER_REFUSED, msg).await);
    }
    if let Err(e) = client.send(&wire::frame(seq, &wire::ok_payload(wire::SERVER_STATUS_AUTOCOMMIT))).await {
        return Err(End::ClientError(e.to_string()));
    }
    info!(login = %login.user, auth, tls = link.tls, client_tls = client_on_tls, "logged in to the backend");
    Ok(s)
}

/// The client's next login packet (its SSLRequest or HandshakeResponse).
async fn read_login(client: &mut Conn) -> Result<BytesMut, End> {
    match tokio::time::timeout(LOGIN_TIMEOUT, client.read()).await {
        Ok(Ok(Some(p))) => Ok(p),
        Ok(Ok(None)) => Err(End::ClientError("closed before logging in".into())),
        Ok(Err(e)) => Err(End::ClientError(e.to_string())),
        Err(_) => Err(End::ClientError(format!("no login within {LOGIN_TIMEOUT:?}"))),
    }
}

/// The TLS configuration offered to clients, when the backend has a usable
/// `client_tls` (read off the runtime threads; an unusable one is logged
/// and TLS is not offered, as for PostgreSQL).
async fn client_tls_config(ctx: &Ctx) -> Option<Arc<rustls::ServerConfig>> {
    let c = ctx.backend.client_tls.clone()?;
    match tokio::task::spawn_blocking(move || tls::server_config(&c)).await {
        Ok(Ok(cfg)) => Some(cfg),
        Ok(Err(e)) => {
            warn!(error = %e, "client_tls is configured but unusable; TLS is not offered to the client");
            None
        }
        Err(e) => {
            warn!(error = %e, "client_tls: internal error; TLS is not offered to the client");
            None
        }
    }
}

/// How the backend was reached, for the session's `backend_login` record.
struct Link {
    /// verified | unverified | off (as for PostgreSQL).
    tls: &'static str,
    negotiated: Option<tls::Negotiated>,
    server_name: Option<String>,
}

/// Why TLS to the backend failed: what the client is told, what the log says.
struct TlsFailure {
    public: String,
    detail: String,
}

impl From<String> for TlsFailure {
    fn from(m: String) -> Self {
        Self { public: m.clone(), detail: m }
    }
}

/// Starts TLS with the backend as its `tls` setting says: after the
/// server's greeting, an SSLRequest (the login's first 32 bytes with
/// CLIENT_SSL, sequence id 1), then the TLS handshake; the login follows
/// inside TLS with sequence id 2. `verify` fails closed on a server that
/// does not offer TLS; `prefer` goes on in plaintext.
async fn secure(
    ctx: &Ctx,
    backend: &mut Conn,
    g: &wire::Greeting,
    caps: u32,
    charset: u8,
    database: Option<&str>,
) -> Result<Link, TlsFailure> {
    let off = Link { tls: "off", negotiated: None, server_name: None };
    let mode = ctx.backend.tls;
    if mode == TlsMode::Off {
        return Ok(off);
    }
    if g.capabilities & wire::CLIENT_SSL == 0 {
        if mode == TlsMode::Verify {
            return Err(
                "the server does not offer TLS (no CLIENT_SSL in its greeting), and tls = \"verify\" requires it"
                    .to_owned()
                    .into(),
            );
        }
        warn!(backend = %ctx.backend.name, "the backend does not offer TLS; logging in over plaintext (tls = \"prefer\")");
        return Ok(off);
    }
    let (backends, b) = (ctx.svc.backends.clone(), ctx.backend.clone());
    let cfg = match tokio::task::spawn_blocking(move || backends.tls_client_config(&b)).await {
        Ok(Ok(c)) => c,
        Ok(Err(e @ tls::TlsError::File { .. })) => {
            return Err(TlsFailure {
                public: "the agent's TLS files for this backend are unusable (see the agent's log)".into(),
                detail: e.to_string(),
            });
        }
        Ok(Err(e)) => return Err(e.to_string().into()),
        Err(e) => return Err(format!("internal error: {e}").into()),
    };
    let name = tls::server_name(&ctx.backend, ctx.addr).map_err(|e| e.to_string())?;
    let request = wire::frame(1, &wire::ssl_request_payload(caps, charset, database));
    backend.send(&request).await.map_err(|e| e.to_string())?;
    let n = match tokio::time::timeout(LOGIN_TIMEOUT, backend.connect_tls(cfg, name.clone())).await {
        Ok(Ok(n)) => n,
        Ok(Err(e)) => return Err(format!("TLS handshake: {e}").into()),
        Err(_) => return Err(format!("no TLS handshake within {LOGIN_TIMEOUT:?}").into()),
    };
    let verified = mode == TlsMode::Verify;
    Ok(Link {
        tls: if verified { "verified" } else { "unverified" },
        negotiated: Some(n),
        server_name: verified.then(|| name.to_str().into_owned()),
    })
}

/// The backend's `server_public_key`, read and parsed off the runtime
/// threads (checked when the policy loaded; read again here, as `ca_file` is).
async fn rsa_keys(ctx: &Ctx) -> Result<sha2::KeyPolicy, String> {
    let fetch = ctx.backend.get_server_public_key;
    let Some(path) = ctx.backend.server_public_key.clone() else {
        return Ok(sha2::KeyPolicy { pinned: None, fetch });
    };
    let key = tokio::task::spawn_blocking(move || server_public_key(&path))
        .await
        .map_err(|e| format!("internal error: {e}"))??;
    Ok(sha2::KeyPolicy { pinned: Some(key), fetch })
}

/// Reads and parses a `server_public_key` file (root's to change, as a CA file).
pub fn server_public_key(path: &std::path::Path) -> Result<rsa::RsaPublicKey, String> {
    let pem = crate::secrets::read_checked(path, "server_public_key", crate::secrets::Kind::Trusted)
        .map_err(|e| e.to_string())?;
    sha2::parse_public_key(pem.expose()).map_err(|e| format!("server_public_key {}: {e}", path.display()))
}

/// What a backend login needs besides the credentials.
struct LoginArgs<'a> {
    caps: u32,
    charset: u8,
    database: Option<&'a str>,
    link: sha2::Link,
    keys: &'a sha2::KeyPolicy,
}

/// Logs in to the backend; returns the authentication plugin that succeeded.
async fn log_in(
    backend: &mut Conn,
    g: &wire::Greeting,
    login: &Credentials,
    password: &[u8],
    a: &LoginArgs<'_>,
) -> Result<&'static str, String> {
    let mut auth = auth::Auth::new(g, password, a.link, a.keys);
    let scrambled = wire::scramble(auth.plugin(), &g.nonce, password).map_err(|e| e.to_string())?;
    let hello = wire::login_payload(a.caps, a.charset, &login.user, &scrambled, a.database, auth.plugin());
    // Inside TLS the login carries CLIENT_SSL and follows the SSLRequest (sequence id 1).
    let (hello, seq) =
        if matches!(backend.s, Some(Stream::ClientTls(_))) { (wire::with_ssl(hello), 2) } else { (hello, 1) };
    backend.send(&wire::frame(seq, &hello)).await.map_err(|e| e.to_string())?;
    // At most: auth switch, full path, public key, OK.
    for _ in 0..6 {
        let p = backend.read().await.map_err(|e| e.to_string())?.ok_or("the backend closed the connection")?;
        match auth.on_packet(&p)? {
            auth::Answer::Done(plugin) => return Ok(plugin),
            auth::Answer::Send(bytes) => backend.send(&bytes).await.map_err(|e| e.to_string())?,
            auth::Answer::Wait => {}
        }
    }
    Err("authentication did not finish".into())
}

/// Reads how the server reads SQL, and applies the rule's guard rails.
async fn prepare(ctx: &Ctx, s: &mut Session) -> Result<(), String> {
    let rows = simple_query(s, "SELECT @@SESSION.sql_mode, @@lower_case_table_names, @@socket").await?;
    let row = rows.first().ok_or("no answer to the sql_mode query")?;
    let mode = row.first().cloned().flatten().unwrap_or_default().to_ascii_uppercase();
    for bad in ["ANSI_QUOTES", "NO_BACKSLASH_ESCAPES"] {
        if mode.split(',').any(|m| m == bad) {
            return Err(format!(
                "the server's sql_mode has {bad}, which changes how SQL is read; Gatehouse reads it without"
            ));
        }
    }
    s.fold_case = row.get(1).cloned().flatten().as_deref() != Some("0");
    if let Some(Some(socket)) = row.get(2) {
        let path = std::path::PathBuf::from(socket);
        crate::protocol::local_socket::warn_open(ctx.backend.name.as_str(), ctx.addr, &[path]);
    }
    current_views(ctx, s).await?;
    apply_guard(ctx, s).await
}

/// The views the session's login sees, read again when the list is older
/// than `catalog_refresh` or DDL went through on the backend (see [`views`]).
async fn current_views(ctx: &Ctx, s: &mut Session) -> Result<Arc<views::Views>, String> {
    match views::cached(ctx.backend.name.as_str(), &s.login, ctx.svc.settings.catalog_refresh) {
        Some(v) => Ok(v),
        None => read_views(ctx, s).await,
    }
}

/// Reads the views (and tables) the session's login sees, for every session of that login.
async fn read_views(ctx: &Ctx, s: &mut Session) -> Result<Arc<views::Views>, String> {
    let rows = simple_query(s, &views::query()).await.map_err(|e| format!("reading the views: {e}"))?;
    let v = Arc::new(views::Views::from_rows(&rows, s.fold_case));
    if v.truncated {
        warn!(backend = %ctx.backend.name, max = views::MAX_VIEWS, "more views than Gatehouse reads: the rest are taken for tables");
    }
    views::store(ctx.backend.name.as_str(), &s.login, v.clone());
    Ok(v)
}

async fn apply_guard(ctx: &Ctx, s: &mut Session) -> Result<(), String> {
    if ctx.guard.idle_in_transaction_timeout.is_some() {
        return Err("the rule sets idle_in_transaction_timeout, which is not enforced on MySQL backends yet".into());
    }
    if ctx.guard.read_only {
        simple_query(s, "SET SESSION TRANSACTION READ ONLY").await?;
    }
    if let Some(t) = ctx.guard.statement_timeout {
        if !s.mariadb {
            return Err(
                "the rule sets statement_timeout, which is enforced on MariaDB backends only (max_statement_time)"
                    .into(),
            );
        }
        simple_query(s, &format!("SET SESSION max_statement_time = {:.3}", t.as_secs_f64())).await?;
    }
    Ok(())
}

/// Runs a query of Gatehouse's own; returns its text rows (none for an OK).
async fn simple_query(s: &mut Session, sql: &str) -> Result<Vec<Vec<Option<String>>>, String> {
    let mut q = vec![wire::COM_QUERY];
    q.extend_from_slice(sql.as_bytes());
    s.backend.send(&wire::frame(0, &q)).await.map_err(|e| e.to_string())?;
    let mut rows = Vec::new();
    let deprecate = s.deprecate_eof;
    let mut next = async || -> Result<BytesMut, String> {
        let p = s.backend.read().await.map_err(|e| e.to_string())?.ok_or("the backend closed the connection")?;
        if p.len() - 4 >= wire::MAX_PAYLOAD {
            return Err("oversized answer".into());
        }
        Ok(p)
    };
    let first = next().await?;
    match first.get(4) {
        Some(0x00) => return Ok(rows),
        Some(0xff) => {
            return Err(wire::parse_err(payload_of(&first))
                .map_or_else(|| "error".into(), |e| format!("the server said: {}", e.message)));
        }
        _ => {}
    }
    let (cols, _) = wire::lenenc_int(payload_of(&first)).ok_or("malformed result")?;
    for _ in 0..cols {
        next().await?;
    }
    if !deprecate {
        next().await?;
    }
    loop {
        let p = next().await?;
        let payload = payload_of(&p);
        match payload.first() {
            Some(0xfe) if payload.len() < 9 || deprecate => return Ok(rows),
            Some(0xff) => return Err("error in result".into()),
            _ => {
                let mut row = Vec::new();
                let mut at = 0;
                while at < payload.len() {
                    let (v, n) = wire::lenenc_str(payload.get(at..).unwrap_or_default()).ok_or("malformed row")?;
                    row.push(v.map(|b| String::from_utf8_lossy(b).into_owned()));
                    at += n;
                }
                rows.push(row);
            }
        }
    }
}

fn record_login(ctx: &Ctx, login: &Credentials, auth: &str, link: &Link, database: Option<&str>) {
    let n = link.negotiated.clone().unwrap_or_default();
    let rec = crate::audit::BackendLogin {
        id: ctx.id,
        user: login.user.clone(),
        tls: link.tls.into(),
        tls_version: n.version,
        tls_cipher: n.cipher,
        certificate_sha256: n.certificate_sha256,
        server_name: link.server_name.clone(),
        auth: auth.into(),
        database: database.map(str::to_owned),
    };
    if link.tls != "verified" {
        warn!(backend = %ctx.backend.name, tls = link.tls, auth, "MySQL backend reached without a verified TLS certificate");
    }
    ctx.svc.backends.note_login(&ctx.backend.name, &rec);
    if let Err(e) = ctx.svc.audit.record(Event::BackendLogin(Box::new(rec))) {
        warn!(error = %e, "cannot record the backend login");
    }
}

/// The command loop.
async fn relay(ctx: &Ctx, s: &mut Session, client: &mut Conn, up: &mut u64, down: &mut u64) -> End {
    let r = async {
        loop {
            s.backend.settled();
            let pkt = tokio::select! {
                r = client.read() => r.map_err(|e| io_fail(e, Fail::Client))?,
                () = ctx.live.cut.cancelled() => return Err(Fail::Breach(String::new())),
            };
            let Some(pkt) = pkt else { return Ok(()) };
            let seq = seq_of(&pkt).wrapping_add(1);
            if pkt.len() - 4 >= wire::MAX_PAYLOAD {
                let msg = "Gatehouse refused a command of 16 MiB or more (continued packets are not supported yet)";
                let _ = client.send(&err_packet(seq, 1153, "08S01", msg)).await;
                return Err(Fail::Client(msg.into()));
            }
            let payload = payload_of(&pkt);
            match payload.first().copied() {
                Some(wire::COM_QUIT) => {
                    s.rec.up_chunk(&pkt, None).await;
                    *up += pkt.len() as u64;
                    let _ = s.backend.send(&pkt).await;
                    return Ok(());
                }
                Some(wire::COM_QUERY) => {
                    let text = payload.get(1..).unwrap_or_default().to_vec();
                    statement(ctx, s, client, &pkt, &text, Command::Query, up, down).await?;
                }
                Some(wire::COM_INIT_DB) => {
                    let db = String::from_utf8_lossy(payload.get(1..).unwrap_or_default()).replace('`', "``");
                    let text = format!("USE `{db}`").into_bytes();
                    statement(ctx, s, client, &pkt, &text, Command::InitDb, up, down).await?;
                }
                Some(wire::COM_STMT_PREPARE) => {
                    let text = payload.get(1..).unwrap_or_default().to_vec();
                    statement(ctx, s, client, &pkt, &text, Command::Prepare, up, down).await?;
                }
                Some(wire::COM_FIELD_LIST) => match field_list::parse(payload) {
                    Ok(f) => {
                        let text = field_list::as_statement(f.table, s.database.as_deref()).into_bytes();
                        statement(ctx, s, client, &pkt, &text, Command::FieldList, up, down).await?;
                    }
                    Err(why) => {
                        s.seq += 1;
                        s.rec.reset();
                        refuse(ctx, s, client, seq, "(COM_FIELD_LIST)", None, &Decision::refuse(why)).await?;
                    }
                },
                Some(wire::COM_STMT_EXECUTE) => prepared::execute(ctx, s, client, &pkt, up, down).await?,
                Some(wire::COM_STMT_SEND_LONG_DATA | wire::COM_STMT_RESET | wire::COM_STMT_CLOSE) => {
                    prepared::by_id(ctx, s, client, &pkt, up, down).await?;
                }
                Some(wire::COM_PING) => {
                    forward(s, client, &pkt, up, down).await?;
                }
                Some(wire::COM_RESET_CONNECTION) => {
                    let r = forward(s, client, &pkt, up, down).await?;
                    if r.error.is_none() {
                        // The server forgot the session's prepared statements too.
                        s.prepared.clear();
                        // The server forgot the session's settings: the guard rails go back on.
                        apply_guard(ctx, s).await.map_err(|e| {
                            Fail::Breach(format!("cannot restore the guard rails after COM_RESET_CONNECTION: {e}"))
                        })?;
                    }
                }
                other => {
                    let name = command_name(other);
                    let reason = format!("{name} is not supported through Gatehouse yet");
                    let why = Decision::refuse(reason.clone());
                    s.seq += 1;
                    s.rec.reset();
                    let ev = start_record(ctx, s.seq, format!("({name})"), None, &why);
                    ctx.svc
                        .audit
                        .commit(vec![Event::Statement(Box::new(ev))])
                        .await
                        .map_err(|e| Fail::Audit(e.to_string()))?;
                    let msg = format!("Gatehouse refused this command: {reason}");
                    let err = err_packet(seq, ER_REFUSED, "42000", &msg);
                    send_down(s, client, &err, down).await?;
                }
            }
        }
    };
    let r = r.await;
    s.rec.finish();
    match r {
        Ok(()) => End::Closed,
        Err(_) if ctx.live.cut.is_cancelled() => End::Cut(ctx.live.reason()),
        Err(Fail::Client(e)) => End::ClientError(e),
        Err(Fail::Backend(e)) => End::BackendError(e),
        Err(Fail::Memory(e)) => {
            warn!(error = %e, "packet over the shared budget: closing the session");
            let msg = format!("Gatehouse ended this session: the {e}");
            let _ = client.send(&err_packet(0, ER_OUT_OF_RESOURCES, "HY000", &msg)).await;
            End::Cut(format!("memory budget: the {e}"))
        }
        Err(Fail::Audit(e)) => {
            let msg = format!("Gatehouse ended this session: the audit store cannot be written ({e})");
            let _ = client.send(&err_packet(0, 1180, "HY000", &msg)).await;
            End::Cut(format!("audit store failure: {e}"))
        }
        Err(Fail::Breach(e)) => {
            warn!(breach = %e, "session ended");
            End::Cut(e)
        }
    }
}

fn command_name(c: Option<u8>) -> String {
    match c {
        Some(0x11) => "COM_CHANGE_USER".into(),
        Some(0x12) => "COM_BINLOG_DUMP".into(),
        Some(wire::COM_STMT_FETCH) => "COM_STMT_FETCH (cursors)".into(),
        Some(0xfa) => "COM_STMT_BULK_EXECUTE".into(),
        Some(0x1b) => "COM_SET_OPTION".into(),
        Some(c) => format!("command 0x{c:02x}"),
        None => "an empty command".into(),
    }
}

/// How a forwarded command ended.
#[derive(Debug, Default)]
struct Outcome {
    rows: Option<u64>,
    error: Option<String>,
    /// What the server's COM_STMT_PREPARE_OK said.
    prepared: Option<prepared::PrepareOk>,
    /// The answer's last bytes, not yet recorded nor written to the client.
    tail: Vec<u8>,
}

/// The commands that carry a statement's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Command {
    Query,
    /// `COM_INIT_DB`, decided as `USE db`.
    InitDb,
    /// `COM_STMT_PREPARE`: decided as the text, which is run later by execute.
    Prepare,
    /// `COM_FIELD_LIST`, decided as ``SHOW COLUMNS FROM `db`.`table` ``.
    FieldList,
}

/// Classifies, decides, records and (if allowed) forwards one statement.
#[expect(clippy::too_many_arguments, reason = "the relay's handles, passed down as they are")]
async fn statement(
    ctx: &Ctx,
    s: &mut Session,
    client: &mut Conn,
    pkt: &[u8],
    text: &[u8],
    command: Command,
    up: &mut u64,
    down: &mut u64,
) -> Result<(), Fail> {
    let seq = seq_of(pkt).wrapping_add(1);
    if command == Command::Prepare {
        // Until the server says otherwise, "the statement prepared last" is none.
        s.prepared.forget_last();
    }
    let names = Names { database: s.database.clone(), fold_case: s.fold_case, masked: ctx.mask.is_some() };
    // A large text is parsed off the runtime's threads.
    let classified = if text.len() > 64 << 10 {
        let t = text.to_vec();
        tokio::task::spawn_blocking(move || classify::classify(&t, &names))
            .await
            .map_err(|e| Fail::Client(format!("internal error: {e}")))?
    } else {
        classify::classify(text, &names)
    };
    let shown = String::from_utf8_lossy(text).into_owned();
    s.seq += 1;
    s.rec.reset();
    let mut c = match classified {
        Ok(c) => c,
        Err(r) => {
            let why = Decision::refuse(refusal_reason(&r));
            return refuse(ctx, s, client, seq, &shown, None, &why).await;
        }
    };
    let d = decide_now(ctx, s, &mut c.statement).await?;
    // Held for approval at each execute, not at the prepare (as PostgreSQL holds at Execute).
    let held = match d.verdict {
        Verdict::Allow => false,
        Verdict::NeedsApproval if command == Command::Prepare => false,
        Verdict::NeedsApproval => {
            if let Err(why) = hold::hold(ctx, client, &d, &shown, &c.statement, Vec::new()).await? {
                return refuse(ctx, s, client, seq, &shown, Some(&c.statement), &why).await;
            }
            true
        }
        Verdict::Deny => return refuse(ctx, s, client, seq, &shown, Some(&c.statement), &d).await,
    };
    if command == Command::Prepare {
        // A prepared USE would change the database behind Gatehouse's back (servers refuse it anyway).
        let why = if c.uses.is_some() {
            Some(Decision::refuse("USE cannot be prepared through Gatehouse"))
        } else {
            s.prepared.is_full().then(prepared::too_many)
        };
        if let Some(why) = why {
            return refuse(ctx, s, client, seq, &shown, Some(&c.statement), &why).await;
        }
    }
    let mut ev = start_record(ctx, s.seq, shown.clone(), Some(&c.statement), &d);
    if held {
        // Approved (the approval's records say by whom), as PostgreSQL records it.
        ev.reason = None;
    } else if d.verdict == Verdict::NeedsApproval {
        ev.reason = Some(format!("{}: prepared; each execute is held for approval", ev.reason.unwrap_or_default()));
    }
    let recorded = record::client_packet(ctx, pkt, None);
    let cut = s.rec.fold_up(&mut ev, &recorded);
    let mut records = vec![Event::Statement(Box::new(ev))];
    records.extend(cut);
    ctx.svc.audit.commit(records).await.map_err(|e| Fail::Audit(e.to_string()))?;
    let started = Instant::now();
    let mut counts = crate::mask::Counts::default();
    let out = if command == Command::Prepare {
        prepared::forward_prepare(s, client, pkt, up, down, ctx.mask.as_deref()).await
    } else if command == Command::FieldList {
        field_list::forward(s, client, pkt, (up, down), ctx.mask.as_deref(), &mut counts).await
    } else {
        let reads = masking::traced_reads(&c.statement);
        let masking = ctx.mask.as_deref().map(|p| MaskCtx {
            profile: p,
            reads: &reads,
            ctes: c.statement.compared.as_deref().map_or(&NO_CTES, |c| &c.ctes),
            counts: &mut counts,
            binary: false,
            diagnostics: c.statement.compared.as_deref().is_some_and(|c| c.diagnostics),
        });
        forward_masked(s, client, pkt, up, down, masking).await
    };
    let mut tags = (command == Command::FieldList).then(|| "COM_FIELD_LIST".to_owned());
    if let Ok(o) = &out
        && o.error.is_none()
    {
        if c.statement.kinds.iter().any(|k| matches!(k, Kind::Create | Kind::Alter | Kind::Drop)) {
            // A view may have been made, changed or dropped: read them again.
            views::forget(ctx.backend.name.as_str());
        }
        if let Some(ok) = o.prepared {
            tags = Some(format!("PREPARE statement {} ({} parameters, {} columns)", ok.id, ok.params, ok.columns));
            let p = prepared::Prepared { text: shown, statement: c.statement, params: ok.params, columns: ok.columns };
            s.prepared.insert(ok.id, p);
        } else if let Some(db) = c.uses {
            s.database = Some(db);
        } else if command == Command::InitDb {
            s.database = Some(String::from_utf8_lossy(pkt.get(5..).unwrap_or_default()).into_owned());
        }
    }
    finish(ctx, s, client, down, (started, out), &counts, tags).await
}

/// Records the end of a forwarded statement, with the rest of its answer
/// folded in, then writes that rest to the client.
async fn finish(
    ctx: &Ctx,
    s: &mut Session,
    client: &mut Conn,
    down: &mut u64,
    (started, out): (Instant, Result<Outcome, Fail>),
    counts: &crate::mask::Counts,
    tags: Option<String>,
) -> Result<(), Fail> {
    let (rows, error) = match &out {
        Ok(o) => (o.rows, o.error.clone()),
        Err(e) => (None, Some(format!("session ended: {e}"))),
    };
    let end = StatementEnd {
        session: ctx.id,
        seq: s.seq,
        ended_us: now_us(),
        rows,
        duration_us: u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
        error,
        masked: (counts.total() > 0).then(|| {
            let m: serde_json::Map<String, serde_json::Value> =
                counts.iter().map(|(k, v)| (k.to_owned(), v.into())).collect();
            serde_json::Value::Object(m).to_string()
        }),
        tags,
        down_offset: None,
        down: Vec::new(),
    };
    let tail = out.as_ref().map(|o| o.tail.as_slice()).unwrap_or_default();
    s.rec.end(end, tail).await;
    let o = out?;
    if !o.tail.is_empty() {
        *down += o.tail.len() as u64;
        client.send(&o.tail).await.map_err(|e| Fail::Client(e.to_string()))?;
    }
    Ok(())
}

/// Records bytes that end no statement, then writes them to the client.
async fn send_down(s: &mut Session, client: &mut Conn, bytes: &[u8], down: &mut u64) -> Result<(), Fail> {
    s.rec.down_chunk(bytes).await;
    *down += bytes.len() as u64;
    client.send(bytes).await.map_err(|e| Fail::Client(e.to_string()))
}

fn refusal_reason(r: &Refusal) -> String {
    crate::sql::redact::reason(&r.to_string())
}

async fn refuse(
    ctx: &Ctx,
    s: &mut Session,
    client: &mut Conn,
    seq: u8,
    text: &str,
    st: Option<&Statement>,
    d: &Decision,
) -> Result<(), Fail> {
    record_refusal(ctx, s, text, st, d).await?;
    let msg = format!("Gatehouse refused this statement: {}", d.reason());
    let err = err_packet(seq, ER_REFUSED, "42000", &msg);
    s.rec.down_chunk(&err).await;
    client.send(&err).await.map_err(|e| Fail::Client(e.to_string()))
}

/// Records a refused statement (before the client hears of it).
async fn record_refusal(ctx: &Ctx, s: &Session, text: &str, st: Option<&Statement>, d: &Decision) -> Result<(), Fail> {
    let ev = start_record(ctx, s.seq, text.to_owned(), st, d);
    info!(rule = d.rule_label(), kinds = ev.kinds.to_string(), "statement refused: {}", d.reason());
    ctx.svc.audit.commit(vec![Event::Statement(Box::new(ev))]).await.map_err(|e| Fail::Audit(e.to_string()))
}

/// Adds to `st` what it reaches through the views it names (`via_views`,
/// for `deny_tables`; the views' names join the names whose result columns
/// are not traced, for masking). Returns the views whose definitions are
/// not known.
fn through_views(views: &views::Views, st: &mut Statement) -> Vec<String> {
    if views.is_empty() {
        return Vec::new();
    }
    let reached = views.reach(st.reads.iter().chain(&st.writes));
    if reached.views.is_empty() {
        return Vec::new();
    }
    for t in reached.via {
        if !st.via_views.contains(&t) {
            st.via_views.push(t);
        }
    }
    if let Some(c) = st.compared.as_mut() {
        let c = Arc::make_mut(c);
        c.ctes.extend(reached.views.iter().map(|v| v.rsplit('.').next().unwrap_or(v).to_lowercase()));
    }
    reached.unreadable
}

/// Decides `st` under the policy of this moment, with what it reaches
/// through views as the server's views are now.
async fn decide_now(ctx: &Ctx, s: &mut Session, st: &mut Statement) -> Result<Decision, Fail> {
    let mut views = current_views(ctx, s).await.map_err(Fail::Backend)?;
    let snapshot = ctx.svc.snapshot.load_full();
    st.via_views.clear();
    // A name the list does not hold (a view made outside Gatehouse since it
    // was read?) is looked up where what a view reads matters: masking, and
    // rules with deny_tables.
    // What a CREATE makes does not exist yet (what it reads is in its reads).
    let created = st.kinds.contains(&Kind::Create);
    let unknown: Vec<&TableRef> =
        st.reads.iter().chain(st.writes.iter().filter(|_| !created)).filter(|t| !views.knows(t)).collect();
    if !unknown.is_empty()
        && (ctx.mask.is_some() || snapshot.policy.may_deny_tables(&decide_one(ctx, &snapshot, st)))
        // Only a name the server has is worth reading the list again for
        // (not a CTE's, say); asked on the session's own connection, now.
        && match views::exists_query(&unknown) {
            Some(q) => !simple_query(s, &q).await.map_err(Fail::Backend)?.is_empty(),
            None => true,
        }
    {
        match views::lookup(ctx.backend.name.as_str(), &s.login, ctx.principal.uid.0) {
            Lookup::Read => views = read_views(ctx, s).await.map_err(Fail::Backend)?,
            Lookup::Spent => {
                return Ok(Decision::refuse(
                    "it names a table or view the backend's list does not hold, and the list has been read for such names too often for you in the last second; try again in a second",
                ));
            }
        }
    }
    let unreadable = through_views(&views, st);
    let d = decide_one(ctx, &snapshot, st);
    if let Some(view) = unreadable.first()
        && d.verdict != Verdict::Deny
        && (ctx.mask.is_some() || snapshot.policy.may_deny_tables(&d))
    {
        return Ok(Decision::refuse(format!(
            "rule {:?} refuses this statement: it reads view {view}, whose definition the backend login cannot read (grant it SHOW VIEW), so which tables it reads is not known",
            d.rule_label()
        )));
    }
    Ok(d)
}

/// Decides one statement for this session under `snapshot` (as the
/// PostgreSQL relay does: a policy that now changes the session's login,
/// masking or guard rails refuses until the user reconnects).
fn decide_one(ctx: &Ctx, snapshot: &Snapshot, s: &Statement) -> Decision {
    let d = snapshot.policy.decide_with(
        &ctx.principal,
        &Request { backend: &ctx.backend.name, statement: Some(s), now: jiff::Timestamp::now() },
        &ctx.svc.grant_rules.load(),
    );
    // What an approval would let run must fit the session too.
    let runs = d.verdict != Verdict::Deny;
    if runs && d.as_role != ctx.as_role {
        return Decision::refuse(format!(
            "the policy changed: rule {:?} now maps you to another backend login; reconnect",
            d.rule_label()
        ));
    }
    if runs && d.mask.as_deref() != ctx.mask.as_ref().map(|m| m.name()) {
        return Decision::refuse(format!(
            "the policy changed the masking of this session (rule {:?}); reconnect",
            d.rule_label()
        ));
    }
    if runs && d.guard != ctx.guard {
        return Decision::refuse(format!(
            "the policy changed the guard rails of this session (rule {:?}); reconnect",
            d.rule_label()
        ));
    }
    if runs
        && let Some(profile) = ctx.mask.as_deref()
        && let Some(why) = masking::stored_refusal(profile, s).or_else(|| masking::predicate_refusal(profile, s))
    {
        return Decision::refuse(format!("rule {:?} refuses this statement: {why}", d.rule_label()));
    }
    d
}

/// A statement's text as recorded: string literals replaced when it may
/// hold a secret (or when the rule normalizes literals).
fn recorded_text(ctx: &Ctx, text: &str) -> (String, u32) {
    redacted_text(ctx, text, ctx.record.normalize)
}

/// A statement's text without its secrets (and with every literal
/// replaced when `normalize`): what records and approvers see.
fn redacted_text(ctx: &Ctx, text: &str, normalize: bool) -> (String, u32) {
    let lower = text.to_ascii_lowercase();
    let secret = ctx.svc.settings.redact.might_hold_secret(text)
        || ["identified", "password", "aes_", "des_", "encode(", "decode("].iter().any(|k| lower.contains(k));
    if !secret && !normalize {
        return (crate::sql::budget::recorded_refusal(text.to_owned()), 0);
    }
    classify::redact_literals(text, normalize)
}

fn start_record(ctx: &Ctx, seq: u64, text: String, s: Option<&Statement>, d: &Decision) -> StatementStart {
    let (text, redacted) = recorded_text(ctx, &text);
    StatementStart {
        session: ctx.id,
        seq,
        started_us: now_us(),
        text,
        redacted,
        kinds: s.map(|s| crate::sql::KindList::of(&s.kinds)).unwrap_or_default(),
        tables: s.map(|s| crate::sql::TableList::of(s.reads.iter().chain(&s.writes))).unwrap_or_default(),
        decision: d.verdict.into(),
        rule: d.rule.as_ref().map(ToString::to_string),
        reason: (d.verdict != Verdict::Allow).then(|| crate::sql::redact::reason(&d.reason())),
        up_offset: None,
        up: Vec::new(),
        up_len: None,
        end: None,
    }
}

/// A statement that defines no common table expression.
pub(crate) static NO_CTES: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();

/// What masks a statement's result sets.
struct MaskCtx<'a> {
    profile: &'a crate::mask::Profile,
    reads: &'a [crate::sql::TableRef],
    /// The common table expressions the statement defines (see `masking::plan`).
    ctes: &'a std::collections::BTreeSet<String>,
    counts: &'a mut crate::mask::Counts,
    /// Rows are binary rows (answers to COM_STMT_EXECUTE).
    binary: bool,
    /// `SHOW WARNINGS` / `SHOW ERRORS`: string columns are messages that may quote values.
    diagnostics: bool,
}

/// Forwards one command and relays the server's whole answer to the client.
async fn forward(
    s: &mut Session,
    client: &mut Conn,
    pkt: &[u8],
    up: &mut u64,
    down: &mut u64,
) -> Result<Outcome, Fail> {
    s.rec.up_chunk(pkt, None).await;
    let mut o = forward_masked(s, client, pkt, up, down, None).await?;
    let tail = std::mem::take(&mut o.tail);
    if !tail.is_empty() {
        send_down(s, client, &tail, down).await?;
    }
    Ok(o)
}

/// [`forward`], masking result sets when `masking` is given; the last
/// bytes of the answer are left in [`Outcome::tail`] for the caller to
/// record and write (the command itself is recorded by the caller).
async fn forward_masked(
    s: &mut Session,
    client: &mut Conn,
    pkt: &[u8],
    up: &mut u64,
    down: &mut u64,
    masking: Option<MaskCtx<'_>>,
) -> Result<Outcome, Fail> {
    s.backend.send(pkt).await.map_err(|e| Fail::Backend(e.to_string()))?;
    *up += pkt.len() as u64;
    let mut out: Vec<u8> = Vec::new();
    let mut masking = masking;
    let r = answer(s, client, &mut out, down, masking.as_mut()).await;
    if let Err(Fail::Breach(e)) = &r
        && masking.is_some()
    {
        // Nothing unmasked was sent: end with an ERR in place of the rest.
        out.clear();
        let msg = format!("Gatehouse ended this session: {e}");
        let _ = send_down(s, client, &err_packet(0, ER_REFUSED, "42000", &msg), down).await;
        return r;
    }
    match r {
        Ok(mut o) => {
            o.tail = out;
            Ok(o)
        }
        Err(e) => {
            if !out.is_empty() {
                send_down(s, client, &out, down).await?;
            }
            Err(e)
        }
    }
}

/// Reads one logical packet from the backend into `out` (continuations
/// included); returns its first physical packet.
/// The backend's next packet; its end of the connection is an error here.
/// An I/O error reading one side, or the shared budget refusing its packet.
fn io_fail(e: std::io::Error, side: fn(String) -> Fail) -> Fail {
    if e.kind() == std::io::ErrorKind::OutOfMemory { Fail::Memory(e.to_string()) } else { side(e.to_string()) }
}

async fn read_backend(s: &mut Session) -> Result<BytesMut, Fail> {
    s.backend
        .read()
        .await
        .map_err(|e| io_fail(e, Fail::Backend))?
        .ok_or_else(|| Fail::Backend("the backend closed the connection".into()))
}

async fn next_packet(s: &mut Session, client: &mut Conn, out: &mut Vec<u8>, down: &mut u64) -> Result<BytesMut, Fail> {
    let first = read_backend(s).await?;
    out.extend_from_slice(&first);
    let mut last_len = first.len() - 4;
    while last_len == wire::MAX_PAYLOAD {
        let more = read_backend(s).await?;
        last_len = more.len() - 4;
        out.extend_from_slice(&more);
        if out.len() >= FLUSH_AT {
            send_down(s, client, out, down).await?;
            out.clear();
        }
    }
    if out.len() >= FLUSH_AT {
        send_down(s, client, out, down).await?;
        out.clear();
    }
    Ok(first)
}

/// Relays a command's answer: OK, ERR, or result sets (more while the
/// server says SERVER_MORE_RESULTS_EXISTS).
async fn answer(
    s: &mut Session,
    client: &mut Conn,
    out: &mut Vec<u8>,
    down: &mut u64,
    mut masking: Option<&mut MaskCtx<'_>>,
) -> Result<Outcome, Fail> {
    let mut total = 0u64;
    loop {
        let first = match masking.as_deref_mut() {
            Some(m) => masked_first(s, out, m).await?,
            None => next_packet(s, client, out, down).await?,
        };
        let p = payload_of(&first);
        match p.first() {
            Some(0x00) if p.len() < wire::MAX_PAYLOAD => {
                let (affected, status) =
                    wire::parse_ok(p).ok_or_else(|| Fail::Backend("malformed OK packet".into()))?;
                total += affected;
                if status & wire::SERVER_MORE_RESULTS_EXISTS == 0 {
                    return Ok(Outcome { rows: Some(total), error: None, prepared: None, tail: Vec::new() });
                }
            }
            Some(0xff) => {
                let e = wire::parse_err(p)
                    .map_or_else(|| "error".into(), |e| format!("{} ({}): {}", e.code, e.state, e.message));
                return Ok(Outcome { rows: None, error: Some(e), prepared: None, tail: Vec::new() });
            }
            Some(0xfb) => {
                // LOCAL INFILE was never negotiated: a server asking for a client file is not followed.
                return Err(Fail::Breach(
                    "the server asked the client for a local file (LOAD DATA LOCAL), which was never allowed".into(),
                ));
            }
            Some(0xfe) => return Err(Fail::Backend("unexpected 0xfe packet as an answer".into())),
            _ => {
                let cols = match wire::lenenc_int(p) {
                    Some((n, _)) if (1..=MAX_COLUMNS).contains(&n) => n,
                    _ => return Err(Fail::Backend("malformed result set header".into())),
                };
                let mut defs = Vec::new();
                for _ in 0..cols {
                    let pk = next_packet(s, client, out, down).await?;
                    if masking.is_some() {
                        let d = (pk.len() - 4 < wire::MAX_PAYLOAD)
                            .then(|| masking::parse_column_def(payload_of(&pk)))
                            .flatten()
                            .ok_or_else(|| {
                                Fail::Breach("a column definition Gatehouse cannot read on a masked session".into())
                            })?;
                        defs.push(d);
                    }
                }
                if !s.deprecate_eof && masking.is_some() {
                    // On a masked session nothing unread reaches the client: the
                    // definitions end with an EOF, not a packet that could carry a value.
                    let pk = read_backend(s).await?;
                    let p = payload_of(&pk);
                    if !(p.first() == Some(&0xfe) && p.len() < 9) {
                        return Err(Fail::Breach(
                            "a result's column definitions did not end with an EOF on a masked session".into(),
                        ));
                    }
                    out.extend_from_slice(&pk);
                } else if !s.deprecate_eof {
                    next_packet(s, client, out, down).await?;
                }
                let plan = match masking.as_deref() {
                    // What a warning quotes can be a value an earlier statement read (`Truncated
                    // incorrect DOUBLE value: '…'`): redacted as an ERR's is.
                    Some(m) if m.diagnostics => defs
                        .iter()
                        .map(|d| {
                            if masking::stringy(d.kind) {
                                crate::mask::ColumnMask::Quoted
                            } else {
                                crate::mask::ColumnMask::Pass
                            }
                        })
                        .collect(),
                    Some(m) => masking::plan(m.profile, m.reads, m.ctes, s.database.as_deref(), &defs),
                    None => Vec::new(),
                };
                let kinds: Vec<u8> = defs.iter().map(|d| d.kind).collect();
                let mut rows = 0u64;
                let status = loop {
                    let pk = if plan.is_empty() {
                        next_packet(s, client, out, down).await?
                    } else {
                        masked_packet(s, client, out, down, (&plan, &kinds), masking.as_deref_mut()).await?
                    };
                    let p = payload_of(&pk);
                    match p.first() {
                        Some(0xfe) if !s.deprecate_eof && p.len() < 9 => break wire::parse_eof(p).unwrap_or(0),
                        Some(0xfe) if s.deprecate_eof && p.len() < wire::MAX_PAYLOAD => {
                            break wire::parse_ok(p).map_or(0, |(_, st)| st);
                        }
                        Some(0xff) => {
                            let e = wire::parse_err(p)
                                .map_or_else(|| "error".into(), |e| format!("{} ({}): {}", e.code, e.state, e.message));
                            return Ok(Outcome {
                                rows: Some(total + rows),
                                error: Some(e),
                                prepared: None,
                                tail: Vec::new(),
                            });
                        }
                        _ => rows += 1,
                    }
                };
                total += rows;
                if status & wire::SERVER_MORE_RESULTS_EXISTS == 0 {
                    return Ok(Outcome { rows: Some(total), error: None, prepared: None, tail: Vec::new() });
                }
            }
        }
    }
}

/// Reads one packet of a masked result set's rows: a row is rewritten
/// into `out` with its values masked (same sequence id, new length); an
/// EOF/OK/ERR is appended as is. Returns the packet as received.
async fn masked_packet(
    s: &mut Session,
    client: &mut Conn,
    out: &mut Vec<u8>,
    down: &mut u64,
    (plan, kinds): (&[crate::mask::ColumnMask], &[u8]),
    masking: Option<&mut MaskCtx<'_>>,
) -> Result<BytesMut, Fail> {
    let m = masking.ok_or_else(|| Fail::Breach("internal error: a masking plan with no profile".into()))?;
    let pk = read_backend(s).await?;
    let p = payload_of(&pk);
    if p.len() >= wire::MAX_PAYLOAD {
        return Err(Fail::Breach("a row of 16 MiB or more on a masked session (cannot be masked)".into()));
    }
    let end = match p.first() {
        Some(0xfe) => p.len() < 9 || s.deprecate_eof,
        Some(0xff) => true,
        _ => false,
    };
    if p.first() == Some(&0xff) {
        masking::mask_err(m.profile, &pk, out, m.counts);
    } else if end {
        out.extend_from_slice(&pk);
    } else {
        let at = out.len();
        out.extend_from_slice(&[0; 4]);
        let masked = if m.binary {
            binary::mask_row(m.profile, plan, kinds, p, out, m.counts)
        } else {
            masking::mask_row(m.profile, plan, p, out, m.counts)
        };
        if masked.is_none() {
            out.truncate(at);
            return Err(Fail::Breach("a row Gatehouse cannot read on a masked session".into()));
        }
        let len = out.len() - at - 4;
        if len >= wire::MAX_PAYLOAD {
            out.truncate(at);
            return Err(Fail::Breach("a masked row of 16 MiB or more".into()));
        }
        let l = u32::try_from(len).unwrap_or(0).to_le_bytes();
        if let Some(h) = out.get_mut(at..at + 4) {
            h.copy_from_slice(&[l[0], l[1], l[2], seq_of(&pk)]);
        }
    }
    if out.len() >= FLUSH_AT {
        send_down(s, client, out, down).await?;
        out.clear();
    }
    Ok(pk)
}

/// The first packet of an answer on a masked session: an ERR has what it
/// quotes redacted; a continued packet (16 MiB or more) is refused.
async fn masked_first(s: &mut Session, out: &mut Vec<u8>, m: &mut MaskCtx<'_>) -> Result<BytesMut, Fail> {
    let pk = read_backend(s).await?;
    let p = payload_of(&pk);
    if p.len() >= wire::MAX_PAYLOAD {
        return Err(Fail::Breach("a packet of 16 MiB or more on a masked session (cannot be masked)".into()));
    }
    if p.first() == Some(&0xff) {
        masking::mask_err(m.profile, &pk, out, m.counts);
    } else {
        out.extend_from_slice(&pk);
    }
    Ok(pk)
}
