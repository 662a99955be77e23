//! The PostgreSQL adapter. The client's startup is answered by Gatehouse
//! (no password is asked: identity comes from the kernel); Gatehouse logs in
//! to the backend itself with the credentials of the backend role the policy
//! names; then every statement is classified with PostgreSQL's own grammar
//! and allowed or refused before it reaches the server (see `relay`).

pub mod catalog;
pub mod dynamic;
pub mod io;
mod relay;
mod scram;
pub mod tls;
pub mod wire;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::{debug, info, warn};

use self::io::Stream;
use self::wire::{PgError, Severity, Startup, WireError};
use super::tcp::{End, RelayOutcome};
use crate::audit::Audit;
use crate::identity::Principal;
use crate::live::ConnectRefusal;
use crate::live::{LiveSession, Snapshot};
use crate::mask::Profile;
use crate::policy::{AuthMethod, Backend, Credentials, TlsMode};
use crate::settings::Settings;
use crate::types::{DbRole, SessionId, Uid};

/// How long a client may take to send its startup packet.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(15);
pub use wire::{MAX_BACKEND_MESSAGE, MAX_CLIENT_MESSAGE};

/// Startup parameters passed on to the backend. Anything else is refused:
/// a startup parameter sets a server setting, and some settings (`role`,
/// `session_authorization`, `search_path`, `standard_conforming_strings`)
/// would change who the session is or how its SQL reads.
const PASSED_PARAMS: &[&str] = &[
    "application_name",
    "client_encoding",
    "datestyle",
    "timezone",
    "extra_float_digits",
    "intervalstyle",
    "statement_timeout",
    "lock_timeout",
    "idle_in_transaction_session_timeout",
    "bytea_output",
    "default_transaction_isolation",
    "default_transaction_read_only",
    "geqo",
    "work_mem",
    "jit",
];

/// Where a cancel request must go: the backend's own key for one session.
#[derive(Debug, Clone)]
pub struct CancelTarget {
    pub addr: SocketAddr,
    pub backend_pid: u32,
    pub backend_secret: u32,
    /// Only the session's own user may cancel it.
    pub uid: Uid,
    pub session: SessionId,
}

/// Gatehouse's own cancel keys (handed to clients), mapped to backends'.
#[derive(Debug, Default)]
pub struct CancelKeys {
    map: std::sync::Mutex<HashMap<(u32, u32), CancelTarget>>,
}

impl CancelKeys {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(u32, u32), CancelTarget>> {
        self.map.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Issues a fresh (pid, secret) pair for a session.
    pub fn issue(&self, target: CancelTarget) -> (u32, u32) {
        let mut map = self.lock();
        loop {
            let r = uuid::Uuid::new_v4().into_bytes();
            let pid = u32::from_be_bytes([r[0] & 0x3f, r[1], r[2], r[3]]).max(1);
            let secret = u32::from_be_bytes([r[4], r[5], r[6], r[7]]);
            if let std::collections::hash_map::Entry::Vacant(v) = map.entry((pid, secret)) {
                v.insert(target);
                return (pid, secret);
            }
        }
    }

    pub fn remove_session(&self, session: SessionId) {
        self.lock().retain(|_, t| t.session != session);
    }

    fn get(&self, pid: u32, secret: u32) -> Option<CancelTarget> {
        self.lock().get(&(pid, secret)).cloned()
    }
}

/// What a PostgreSQL session is given of the agent: handles onto the state
/// it shares with other sessions, and nothing else of the agent (its
/// listeners, the kernel redirect, the other sessions, the counters). Built
/// by the proxy (`Agent::postgres_services`) for each session.
#[derive(Debug, Clone)]
pub struct Services {
    pub settings: Arc<Settings>,
    /// The policy in force.
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    /// The rules approved grants act as.
    pub grant_rules: Arc<ArcSwap<Vec<crate::policy::Rule>>>,
    pub audit: Arc<Audit>,
    /// Statement classification within each rule's budget, with its cache.
    pub classifier: Arc<crate::sql::Classifier>,
    /// The backends' catalogs, per backend, login and database.
    pub catalogs: Arc<catalog::CatalogCache>,
    pub cancel_keys: Arc<CancelKeys>,
    /// Per-session backend roles the agent made and sessions still use.
    pub made_roles: Arc<dynamic::MadeRoles>,
    /// `[[alert]]` windows over the row-level trail, and the holds they set.
    pub trail_alerts: Arc<crate::trail::alerts::Alerts>,
    pub trail_holds: Arc<crate::trail::alerts::Holds>,
    /// Backends' TLS client configurations; how each was last logged in to.
    pub backends: Arc<crate::live::Backends>,
    /// Where held statements and logins wait for a human.
    pub desk: Arc<dyn crate::approval::Desk>,
}

/// What a PostgreSQL session needs to know about itself.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub svc: Arc<Services>,
    pub id: SessionId,
    pub principal: Principal,
    pub uid: Uid,
    pub backend: Backend,
    pub addr: SocketAddr,
    pub as_role: Option<DbRole>,
    pub mask: Option<Arc<Profile>>,
    /// Server-side guard rails from the rule that allowed the session.
    pub guard: crate::policy::Guard,
    /// How statements and parameters are recorded (from the rule).
    pub record: crate::sql::redact::RecordOptions,
    pub live: Arc<LiveSession>,
    /// The login waits for this approval (`approval = { for = ["connect"] }`).
    pub connect_approval: Option<crate::approval::Waiting>,
}

/// A startup parameter that makes a connection run as its login: `SET ROLE
/// NONE`. A default role stored for the login (`ALTER ROLE x SET role = y`)
/// would otherwise make a session's current role — `$user` on its search
/// path, and whose USAGE decides which schemas the server passes by — one
/// the login chose when it logged in, while Gatehouse resolves names as the
/// catalog's connection saw them at its last read; a login can store it for
/// itself. (The client may not send `role` itself.)
pub(crate) const AS_LOGIN: [&str; 2] = ["role", "none"];

/// The backend login and database a session uses, and their catalog.
#[derive(Debug, Clone)]
pub(crate) struct SessionDb {
    pub login: Credentials,
    pub database: String,
    pub catalog: Arc<catalog::Entry>,
    /// The search path the session began with, which Gatehouse sent as a
    /// startup parameter (the catalog's default when the session logged
    /// in): `RESET search_path` returns to it. `None` when the catalog could
    /// not be read before the login (then the catalog's default). Shared:
    /// each statement's view of the session's names holds it.
    pub search_path: Option<Arc<[String]>>,
}

#[derive(Debug, thiserror::Error)]
enum StartError {
    #[error("client: {0}")]
    Io(#[from] std::io::Error),
    #[error("client: {0}")]
    Wire(#[from] WireError),
    #[error("client sent no startup packet within {0:?}")]
    Timeout(Duration),
    #[error("client: {0}")]
    Protocol(&'static str),
}

/// A client's opening: a cancel request, or a session to start.
enum Opening {
    Cancel {
        pid: u32,
        secret: u32,
    },
    /// `rest`: bytes the client sent after its startup packet (pipelined).
    Session {
        stream: Stream,
        minor: u16,
        params: Vec<(String, String)>,
        rest: BytesMut,
    },
}

/// Reads the client's startup, answering SSLRequest (TLS if the backend has
/// `client_tls`, else 'N') and GSSENCRequest ('N').
async fn read_opening(client: TcpStream, backend: Option<&Backend>) -> Result<Opening, StartError> {
    let mut stream = Stream::Plain(client);
    let mut buf = BytesMut::with_capacity(512);
    let fut = async {
        loop {
            let msg = loop {
                if let Some((m, n)) = wire::decode_startup(&buf)? {
                    let _ = buf.split_to(n);
                    break m;
                }
                if stream.read_buf(&mut buf).await? == 0 {
                    return Err(StartError::Protocol("closed the connection during startup"));
                }
            };
            match msg {
                Startup::Ssl => {
                    // Bytes after the SSLRequest would be read as if they had
                    // come over TLS: refuse that (CVE-2021-23214).
                    if !buf.is_empty() {
                        return Err(StartError::Protocol("sent data after SSLRequest before the TLS handshake"));
                    }
                    let tls = backend.and_then(|b| b.client_tls.as_ref());
                    match (tls, stream) {
                        (Some(c), Stream::Plain(mut tcp)) => match tls::server_config(c) {
                            Ok(cfg) => {
                                tcp.write_all(b"S").await?;
                                let tls = tokio_rustls::TlsAcceptor::from(cfg).accept(tcp).await?;
                                stream = Stream::ServerTls(Box::new(tls));
                            }
                            Err(e) => {
                                warn!(error = %e, "client_tls is configured but unusable; answering SSLRequest with N");
                                tcp.write_all(b"N").await?;
                                stream = Stream::Plain(tcp);
                            }
                        },
                        (_, mut s) => {
                            s.write_all(b"N").await?;
                            stream = s;
                        }
                    }
                }
                Startup::GssEnc => stream.write_all(b"N").await?,
                Startup::Cancel { pid, secret } => return Ok(Opening::Cancel { pid, secret }),
                Startup::Startup { minor, params } => {
                    if !buf.is_empty() {
                        debug!(bytes = buf.len(), "client pipelined messages after its startup packet");
                    }
                    return Ok(Opening::Session { stream, minor, params, rest: buf });
                }
            }
        }
    };
    tokio::time::timeout(STARTUP_TIMEOUT, fut).await.map_err(|_| StartError::Timeout(STARTUP_TIMEOUT))?
}

async fn send(stream: &mut (impl AsyncWrite + Unpin), bytes: &[u8]) {
    let _ = stream.write_all(bytes).await;
    let _ = stream.flush().await;
}

/// Refuses a connection the policy does not allow: a FATAL 28000 with the
/// reason, in the protocol the client speaks. A cancel request is still
/// honoured (for the caller's own sessions only).
pub async fn reject(svc: &Services, client: TcpStream, uid: Uid, reason: &str, refusal: ConnectRefusal) -> String {
    match read_opening(client, None).await {
        Ok(Opening::Session { mut stream, .. }) => {
            let (code, hint) = match refusal {
                ConnectRefusal::Denied => {
                    ("28000", "ask the operators for access; `gatehouse policy explain` shows why")
                }
                // too_many_connections, which pools and drivers treat as "try again later".
                ConnectRefusal::TooManyConnections => (
                    "53300",
                    "close some of your other connections through Gatehouse, or ask the operators for a higher limit",
                ),
            };
            let e =
                PgError::new(Severity::Fatal, code, format!("Gatehouse refused this connection: {reason}")).hint(hint);
            send(&mut stream, &e.encode()).await;
            "refused".into()
        }
        Ok(Opening::Cancel { pid, secret }) => cancel(svc, uid, pid, secret).await,
        Err(e) => format!("refused ({e})"),
    }
}

/// Forwards a cancel request to the backend session it names, if the
/// requester owns it. As in PostgreSQL, the requester gets no answer.
async fn cancel(svc: &Services, uid: Uid, pid: u32, secret: u32) -> String {
    let Some(t) = svc.cancel_keys.get(pid, secret) else {
        warn!(pid, "cancel request with an unknown key: ignored");
        return "cancel request: unknown key, ignored".into();
    };
    if t.uid != uid {
        warn!(pid, session = %t.session, requester = %uid, owner = %t.uid, "cancel request for another user's session: ignored");
        return format!("cancel request for session {} of another user: ignored", t.session);
    }
    // A statement held for approval is withdrawn: nothing runs on the server yet.
    if svc.desk.withdraw_session(&t.session.to_string()) > 0 {
        return format!("cancel request withdrew the held statement of session {}", t.session);
    }
    match crate::live::connect_upstream(t.addr, svc.settings.mark).await {
        Ok(mut s) => {
            send(&mut s, &wire::cancel_request(t.backend_pid, t.backend_secret)).await;
            info!(session = %t.session, "cancel request forwarded to the backend");
            format!("cancel request forwarded for session {}", t.session)
        }
        Err(e) => format!("cancel request for session {}: backend unreachable: {e}", t.session),
    }
}

/// Serves an allowed PostgreSQL session to its end.
pub async fn serve(ctx: Ctx, client: TcpStream) -> RelayOutcome {
    let done = |end: End| RelayOutcome { up: 0, down: 0, end };
    let opening = match read_opening(client, Some(&ctx.backend)).await {
        Ok(o) => o,
        Err(e) => return done(End::ClientError(e.to_string())),
    };
    let (mut client, minor, params, client_rest) = match opening {
        Opening::Session { stream, minor, params, rest } => (stream, minor, params, rest),
        Opening::Cancel { pid, secret } => {
            let what = cancel(&ctx.svc, ctx.uid, pid, secret).await;
            return done(End::Cut(what));
        }
    };
    let mut backend_params = match check_params(&params) {
        Ok(p) => p,
        Err(e) => {
            send(&mut client, &e.encode()).await;
            return done(End::ClientError(e.message));
        }
    };
    // The rule's guard rails go last, as plain startup parameters: the server
    // applies those after `options`, and the client's own values for them are dropped.
    let guard = ctx.guard.startup_settings();
    backend_params.retain(|(k, _)| !guard.iter().any(|(g, _)| k.eq_ignore_ascii_case(g)));
    backend_params.extend(guard.into_iter().map(|(k, v)| (k.to_owned(), v)));
    // The session runs as its login, whatever role a stored default names
    // (`ALTER ROLE … SET role`), as the catalog's connection does: `$user`
    // on the path and the schemas the server passes by are the login's.
    backend_params.push(AS_LOGIN.map(str::to_owned).into());
    let database = backend_params.iter().find(|(k, _)| k == "database").map(|(_, v)| v.clone()).unwrap_or_default();
    // A login that waits for an approval: the client is told who decides, then waits.
    let held_login = ctx.connect_approval.is_some();
    if let Some(w) = ctx.connect_approval.clone() {
        // libpq reads only authentication messages before AuthenticationOk:
        // the client is let in first, then told to wait (its first query waits too).
        send(&mut client, &wire::auth_ok()).await;
        let notice = PgError::new(
            Severity::Notice,
            "01000",
            format!(
                "Gatehouse is holding this login for approval by {}: request {} (an approver runs `gatehouse approve {}`)",
                w.approvers, w.id, w.id
            ),
        );
        send(&mut client, &notice.encode()).await;
        let desk = &ctx.svc.desk;
        let state = w.clone().outcome(desk.registry(), |t| desk.transition(t)).await;
        if !matches!(state, crate::approval::State::Approved { .. }) {
            let why = w.refusal(&state);
            let e = PgError::new(Severity::Fatal, "28000", format!("Gatehouse refused this connection: {why}"));
            send(&mut client, &e.encode()).await;
            return done(End::Cut(format!("login not approved: {why}")));
        }
    }
    let unsupported: Vec<String> =
        params.iter().filter(|(k, _)| k.starts_with("_pq_.")).map(|(k, _)| k.clone()).collect();
    if minor > 0 || !unsupported.is_empty() {
        send(&mut client, &wire::negotiate_protocol_version(&unsupported)).await;
    }
    let login = match ctx.backend.login(ctx.as_role.as_ref()) {
        Some(l) => l.clone(),
        None => {
            let e = PgError::new(Severity::Fatal, "28000", "Gatehouse holds no login for this backend role");
            send(&mut client, &e.encode()).await;
            return done(End::Cut("no login for the backend role".into()));
        }
    };
    // A per-session role when the backend's login is dynamic.
    let made = match &login.dynamic {
        Some(d) => {
            let user = ctx.principal.user.as_ref().map_or_else(|| ctx.uid.to_string(), ToString::to_string);
            match dynamic::make(&ctx.svc, &ctx.backend, ctx.addr, d, &user, &ctx.id.to_string()).await {
                Ok(m) => Some(m),
                Err(e) => {
                    warn!(error = %e, backend = %ctx.backend.name, "cannot make a login role for this session");
                    let e = PgError::new(
                        Severity::Fatal,
                        "08006",
                        format!(
                            "Gatehouse could not make a login role on backend {} for this session",
                            ctx.backend.name
                        ),
                    );
                    send(&mut client, &e.encode()).await;
                    return done(End::BackendError("dynamic login role not made".into()));
                }
            }
        }
        None => None,
    };
    let login = made.as_ref().map_or(login, |m| m.login.clone());
    // Boxed: a connection still in its startup (the slowloris `bench connect`
    // holds 10,000 of) carries no relay state, 15 instead of 30 KiB of RSS.
    let out = Box::pin(serve_as(ctx.clone(), client, client_rest, backend_params, login, database, held_login)).await;
    if let Some(m) = &made {
        dynamic::retire(&ctx.svc, &ctx.backend, ctx.addr, m).await;
    }
    out
}

/// The rest of a session once the login to use is known.
async fn serve_as(
    ctx: Ctx,
    client: Stream,
    client_rest: BytesMut,
    backend_params: Vec<(String, String)>,
    login: Credentials,
    database: String,
    held_login: bool,
) -> RelayOutcome {
    // A per-session role lives no longer than its validity: the session is cut then.
    let ttl_cut = login.issued.as_ref().and(login.dynamic.as_ref()).map(|d| {
        let live = ctx.live.clone();
        let ttl = d.ttl;
        tokio::spawn(async move {
            tokio::time::sleep(ttl).await;
            live.cut(format!(
                "the session's login role expired after {}",
                crate::settings::format_duration_s(ttl.as_secs())
            ));
        })
    });
    let out = serve_relay(ctx, client, client_rest, backend_params, login, database, held_login).await;
    if let Some(t) = ttl_cut {
        t.abort();
    }
    out
}

async fn serve_relay(
    ctx: Ctx,
    mut client: Stream,
    client_rest: BytesMut,
    backend_params: Vec<(String, String)>,
    login: Credentials,
    database: String,
    held_login: bool,
) -> RelayOutcome {
    let done = |end: End| RelayOutcome { up: 0, down: 0, end };
    // The catalog first when it can be read: the session's search path is
    // then pinned to the default Gatehouse resolves names with. A default
    // stored for the role or database (`ALTER ROLE … SET search_path`)
    // otherwise gives a session whatever path was stored when it logged in,
    // while Gatehouse resolves with the one its catalog read last. A startup
    // parameter outranks those stored defaults, and is what RESET returns to.
    // A refused login is the session's (one attempt, as the server sees
    // it); a read that fails otherwise is tried again after the login.
    let login_failed = |public: &str| {
        format!("Gatehouse could not log in to backend {} as role {}: {public}", ctx.backend.name, login.user)
    };
    let early = match catalog::for_session(&ctx, &login, &database).await {
        Ok(e) => Some(e),
        Err(e) if e.login => {
            warn!(error = %e, backend = %ctx.backend.name, login = %login.user, "backend login failed");
            let msg = login_failed(&e.message);
            send(&mut client, &PgError::new(Severity::Fatal, "08006", msg.clone()).encode()).await;
            return done(End::BackendError(msg));
        }
        Err(_) => None,
    };
    let search_path = early
        .as_ref()
        .and_then(|e| e.snapshot())
        .map(|(cat, _)| Arc::<[String]>::from(cat.default_search_path.as_slice()));
    let mut backend_params = backend_params;
    if let Some(path) = &search_path {
        backend_params.push(("search_path".to_owned(), crate::catalog::format_search_path(path)));
    }
    let (backend, backend_rest, how) = match connect_backend(&ctx, &login, backend_params).await {
        Ok(b) => b,
        Err(e) => {
            warn!(error = %e, backend = %ctx.backend.name, login = %login.user, "backend login failed");
            let msg = login_failed(&e.public());
            send(&mut client, &PgError::new(Severity::Fatal, "08006", msg.clone()).encode()).await;
            return done(End::BackendError(msg));
        }
    };
    record_login(&ctx, &login, &how);
    info!(login = %login.user, database = %database, tls = how.tls, auth = how.auth.name(), "logged in to the backend");
    let found = match early {
        Some(e) => Ok(e),
        None => catalog::for_session(&ctx, &login, &database).await,
    };
    let entry = match found {
        Ok(e) => e,
        Err(e) => {
            warn!(error = %e, "cannot read the backend catalog: session refused (fail closed)");
            let msg = format!(
                "Gatehouse could not read the catalog of backend {} (it is needed to check statements): {e}",
                ctx.backend.name
            );
            send(&mut client, &PgError::new(Severity::Fatal, "08006", msg.clone()).encode()).await;
            return done(End::BackendError(msg));
        }
    };
    if !held_login {
        send(&mut client, &wire::auth_ok()).await;
    }
    let db = SessionDb { login, database, catalog: entry, search_path };
    let out = relay::run(&ctx, &db, client, client_rest, backend, backend_rest).await;
    ctx.svc.cancel_keys.remove_session(ctx.id);
    out
}

/// Records how the session's backend was reached (TLS, certificate, auth
/// method) and keeps it for `gatehouse status`.
fn record_login(ctx: &Ctx, login: &Credentials, how: &LoginInfo) {
    let n = how.negotiated.clone().unwrap_or_default();
    let rec = crate::audit::BackendLogin {
        id: ctx.id,
        user: login.user.clone(),
        tls: how.tls.into(),
        tls_version: n.version,
        tls_cipher: n.cipher,
        certificate_sha256: n.certificate_sha256,
        server_name: how.server_name.clone(),
        auth: how.auth.name().into(),
        database: None,
    };
    if how.tls != "verified" || how.auth.reveals_secret() {
        warn!(backend = %ctx.backend.name, tls = how.tls, auth = how.auth.name(), "backend reached without a verified TLS certificate, or with a method that reveals the password");
    }
    ctx.svc.backends.note_login(&ctx.backend.name, &rec);
    if let Err(e) = ctx.svc.audit.record(crate::audit::Event::BackendLogin(Box::new(rec))) {
        warn!(error = %e, "cannot record the backend login");
    }
}

/// Validates the client's startup parameters; returns those to pass on.
fn check_params(params: &[(String, String)]) -> Result<Vec<(String, String)>, PgError> {
    let refuse = |m: String| {
        PgError::new(Severity::Fatal, "28000", m).hint("Gatehouse passes only ordinary session settings at startup")
    };
    let mut out = Vec::new();
    let mut user = None;
    let mut database = None;
    for (k, v) in params {
        let key = k.to_ascii_lowercase();
        match key.as_str() {
            "user" => user = Some(v.clone()),
            "database" => database = Some(v.clone()),
            "replication" => {
                return Err(PgError::new(
                    Severity::Fatal,
                    "0A000",
                    "replication connections are not allowed through Gatehouse",
                ));
            }
            "options" => {
                for (name, value) in parse_options(v).map_err(refuse)? {
                    if !PASSED_PARAMS.contains(&name.as_str()) {
                        return Err(refuse(format!(
                            "setting {name:?} in the startup options is not allowed through Gatehouse"
                        )));
                    }
                    if name == "client_encoding" && crate::sql::encoding::is_unsafe_client_encoding(&value) {
                        return Err(refuse(format!(
                            "client_encoding {value} is not supported through Gatehouse; use UTF8"
                        )));
                    }
                }
                if !v.trim().is_empty() {
                    out.push((k.clone(), v.clone()));
                }
            }
            "client_encoding" if crate::sql::encoding::is_unsafe_client_encoding(v) => {
                return Err(refuse(format!("client_encoding {v} is not supported through Gatehouse; use UTF8")));
            }
            _ if key.starts_with("_pq_.") => {}
            _ if PASSED_PARAMS.contains(&key.as_str()) => out.push((k.clone(), v.clone())),
            _ => return Err(refuse(format!("startup parameter {k:?} is not allowed through Gatehouse"))),
        }
    }
    // PostgreSQL's default database is the user's name; the client's user
    // name, not Gatehouse's login, is what the client meant.
    if let Some(db) = database.or(user) {
        out.push(("database".into(), db));
    }
    Ok(out)
}

/// Parses `-c name=value` / `--name=value` words of the `options` parameter.
fn parse_options(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut words = s.split_whitespace();
    while let Some(w) = words.next() {
        let setting = if w == "-c" {
            words.next().ok_or_else(|| "startup options: -c without a setting".to_owned())?
        } else if let Some(rest) = w.strip_prefix("--") {
            rest
        } else if let Some(rest) = w.strip_prefix("-c") {
            rest
        } else {
            return Err(format!("startup options: {w:?} is not allowed through Gatehouse"));
        };
        let (name, value) =
            setting.split_once('=').ok_or_else(|| format!("startup options: {setting:?} is not name=value"))?;
        out.push((name.to_ascii_lowercase().replace('-', "_"), value.to_owned()));
    }
    Ok(out)
}

/// Why logging in to a backend failed. The detail goes to the agent's log;
/// a client (and the session's record, which its user may read) gets
/// [`BackendError::public`], which names no file and no secret.
#[derive(Debug, thiserror::Error)]
enum BackendError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Wire(#[from] WireError),
    #[error("{0}")]
    Tls(#[from] tls::TlsError),
    #[error("the server does not accept TLS, and tls = \"verify\" requires it")]
    TlsRefused,
    #[error("the server answered the TLS request with {0:?}, not S or N")]
    TlsAnswer(u8),
    #[error("{0}")]
    Secret(#[from] crate::secrets::FileError),
    #[error("the server refused the login: {0}")]
    Refused(String),
    #[error("the server asked for {method} authentication, which this backend does not allow over {over} ({why})")]
    NotAllowed { method: &'static str, over: &'static str, why: &'static str },
    #[error("unsupported authentication request {0}")]
    Unsupported(String),
    #[error("authentication exchange failed: {0}")]
    Sasl(String),
    #[error(
        "the server said the login succeeded before it proved it knows the password (SCRAM not finished): an impostor"
    )]
    PrematureOk,
    #[error("the server closed the connection during login")]
    Closed,
}

impl BackendError {
    /// What a client may be told.
    fn public(&self) -> String {
        match self {
            Self::Secret(_) => "the agent cannot use this login's secret (see the agent's log)".into(),
            Self::Tls(tls::TlsError::File { .. }) => {
                "the agent's TLS files for this backend are unusable (see the agent's log)".into()
            }
            other => other.to_string(),
        }
    }
}

/// How the login went, for the session's `backend_login` record.
#[derive(Debug, Clone)]
struct LoginInfo {
    /// verified | unverified | off.
    tls: &'static str,
    negotiated: Option<tls::Negotiated>,
    server_name: Option<String>,
    auth: AuthMethod,
}

/// What `authenticate` needs to know about the connection.
struct AuthCtx<'a> {
    backend: &'a Backend,
    user: &'a str,
    password: Option<&'a [u8]>,
    tls_on: bool,
    verified: bool,
    end_point: Option<&'a [u8]>,
}

/// Connects to the backend (SO_MARK), negotiates TLS as configured, sends
/// the startup and authenticates with the held credentials. Returns the
/// stream, whatever the backend sent after AuthenticationOk, and how it went.
async fn connect_backend(
    ctx: &Ctx,
    login: &Credentials,
    params: Vec<(String, String)>,
) -> Result<(Stream, BytesMut, LoginInfo), BackendError> {
    login_to(&ctx.svc, &ctx.backend, ctx.addr, login, params).await
}

/// Connects to `backend` at `addr` (SO_MARK), negotiates TLS as configured,
/// sends the startup and authenticates as `login`.
async fn login_to(
    svc: &Services,
    backend: &Backend,
    addr: SocketAddr,
    login: &Credentials,
    mut params: Vec<(String, String)>,
) -> Result<(Stream, BytesMut, LoginInfo), BackendError> {
    let tcp = crate::live::connect_upstream(addr, svc.settings.mark).await?;
    let mut info = LoginInfo { tls: "off", negotiated: None, server_name: None, auth: AuthMethod::None };
    let mut stream = match backend.tls {
        TlsMode::Off => Stream::Plain(tcp),
        mode => {
            let mut tcp = tcp;
            tcp.write_all(&wire::ssl_request()).await?;
            // One byte only: anything the server sends after it must come inside TLS (CVE-2021-23222).
            let mut answer = [0u8; 1];
            tcp.read_exact(&mut answer).await?;
            match (answer[0], mode) {
                (b'S', _) => {
                    let cfg = svc.backends.tls_client_config(backend)?;
                    let name = tls::server_name(backend, addr)?;
                    let tls = tokio_rustls::TlsConnector::from(cfg).connect(name.clone(), tcp).await?;
                    info.tls = if mode == TlsMode::Verify { "verified" } else { "unverified" };
                    info.negotiated = Some(tls::negotiated(tls.get_ref().1));
                    info.server_name = (mode == TlsMode::Verify).then(|| name.to_str().into_owned());
                    Stream::ClientTls(Box::new(tls))
                }
                (b'N', TlsMode::Verify) => return Err(BackendError::TlsRefused),
                (b'N', _) => {
                    warn!(backend = %backend.name, "the backend refused TLS; logging in over plaintext (tls = \"prefer\"): only SCRAM is allowed");
                    Stream::Plain(tcp)
                }
                (other, _) => return Err(BackendError::TlsAnswer(other)),
            }
        }
    };
    let password = match (&login.issued, &login.password_file) {
        (Some(issued), _) => Some(crate::secrets::Secret::new(issued.0.expose().to_vec())),
        (None, Some(p)) => Some(crate::secrets::read_secret(p, "password file")?.first_line()),
        (None, None) => None,
    };
    params.insert(0, ("user".into(), login.user.clone()));
    stream.write_all(&wire::startup_message(&params)).await?;
    let end_point = info.negotiated.as_ref().and_then(|n| n.end_point.clone());
    let auth = AuthCtx {
        backend,
        user: &login.user,
        password: password.as_ref().map(crate::secrets::Secret::expose),
        tls_on: info.tls != "off",
        verified: info.tls == "verified",
        end_point: end_point.as_deref(),
    };
    let (rest, method) = authenticate(&mut stream, &auth).await?;
    info.auth = method;
    Ok((stream, rest, info))
}

async fn read_frame(stream: &mut (impl AsyncRead + Unpin), buf: &mut BytesMut) -> Result<BytesMut, BackendError> {
    loop {
        if let Some((_, n)) = wire::decode(buf, 1 << 20)? {
            return Ok(buf.split_to(n));
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(BackendError::Closed);
        }
    }
}

/// Checks that the backend may ask for `method` on this connection.
fn allowed(a: &AuthCtx<'_>, method: AuthMethod) -> Result<(), BackendError> {
    if a.backend.allows_auth(method, a.verified, a.password.is_some()) {
        return Ok(());
    }
    let over = if a.verified {
        "this connection"
    } else if a.tls_on {
        "TLS whose certificate is not verified"
    } else {
        "plaintext"
    };
    let why = match (method, &a.backend.require_auth) {
        (_, Some(_)) => "require_auth does not list it",
        (AuthMethod::None, None) => "a password is held, so a server that asks for none may be an impostor",
        _ => {
            "it would hand the password (or a replayable hash of it) to whoever answers; verify TLS or list it in require_auth"
        }
    };
    Err(BackendError::NotAllowed { method: method.name(), over, why })
}

/// SCRAM's progress: AuthenticationOk is accepted only once the server's
/// final message (its proof that it knows the password) was verified.
enum Scram {
    NotStarted,
    Started(Box<scram::Client>, AuthMethod),
    Verified(AuthMethod),
}

/// Answers the backend's authentication requests until AuthenticationOk;
/// returns the bytes already read past it (ParameterStatus, BackendKeyData…)
/// and the method used.
async fn authenticate(stream: &mut Stream, a: &AuthCtx<'_>) -> Result<(BytesMut, AuthMethod), BackendError> {
    const SCRAM_SHA_256: &str = "SCRAM-SHA-256";
    const SCRAM_SHA_256_PLUS: &str = "SCRAM-SHA-256-PLUS";
    let mut buf = BytesMut::with_capacity(1024);
    let mut scram = Scram::NotStarted;
    let mut sent_password: Option<AuthMethod> = None;
    let need = || {
        a.password.ok_or_else(|| BackendError::Refused("the server asks for a password and none is configured".into()))
    };
    loop {
        let raw = read_frame(stream, &mut buf).await?;
        let Some((frame, _)) = wire::decode(&raw, usize::MAX)? else { return Err(BackendError::Closed) };
        match frame.tag {
            b'R' => match wire::auth(frame.body)? {
                // Whatever follows (ParameterStatus, BackendKeyData…) is the relay's.
                wire::Auth::Ok => {
                    let method = match (&scram, sent_password) {
                        (Scram::Started(..), _) => return Err(BackendError::PrematureOk),
                        (Scram::Verified(m), _) => *m,
                        (Scram::NotStarted, Some(m)) => m,
                        (Scram::NotStarted, None) => {
                            allowed(a, AuthMethod::None)?;
                            AuthMethod::None
                        }
                    };
                    return Ok((buf, method));
                }
                wire::Auth::Cleartext => {
                    allowed(a, AuthMethod::Password)?;
                    stream.write_all(&wire::password_message(need()?)).await?;
                    sent_password = Some(AuthMethod::Password);
                }
                wire::Auth::Md5 { salt } => {
                    allowed(a, AuthMethod::Md5)?;
                    let hash = zeroize::Zeroizing::new(postgres_protocol::authentication::md5_hash(
                        a.user.as_bytes(),
                        need()?,
                        salt,
                    ));
                    stream.write_all(&wire::password_message(hash.as_bytes())).await?;
                    sent_password = Some(AuthMethod::Md5);
                }
                wire::Auth::Sasl { mechanisms } => {
                    if !matches!(scram, Scram::NotStarted) {
                        return Err(BackendError::Sasl("a second SASL exchange".into()));
                    }
                    let offers = |m: &str| mechanisms.contains(&m.as_bytes());
                    let plus = a.tls_on && offers(SCRAM_SHA_256_PLUS) && a.end_point.is_some();
                    let (mechanism, binding, method) = if plus && allowed(a, AuthMethod::ScramPlus).is_ok() {
                        let ep = a.end_point.map(<[u8]>::to_vec).unwrap_or_default();
                        (SCRAM_SHA_256_PLUS, scram::Binding::EndPoint(ep), AuthMethod::ScramPlus)
                    } else if offers(SCRAM_SHA_256) {
                        allowed(a, AuthMethod::Scram)?;
                        // "y": we could bind but the server did not offer it (a
                        // real server then refuses, if a middleman stripped it).
                        let binding = if a.tls_on && !offers(SCRAM_SHA_256_PLUS) {
                            scram::Binding::Unrequested
                        } else {
                            scram::Binding::Unsupported
                        };
                        (SCRAM_SHA_256, binding, AuthMethod::Scram)
                    } else {
                        return Err(BackendError::Unsupported(
                            "SASL without a SCRAM-SHA-256 mechanism Gatehouse may use".into(),
                        ));
                    };
                    let s = scram::Client::new(need()?, binding).map_err(|e| BackendError::Sasl(e.to_string()))?;
                    stream.write_all(&wire::sasl_initial_response(mechanism, s.first().as_bytes())).await?;
                    scram = Scram::Started(Box::new(s), method);
                }
                wire::Auth::SaslContinue(data) => {
                    let Scram::Started(mut s, method) = std::mem::replace(&mut scram, Scram::NotStarted) else {
                        return Err(BackendError::Sasl("SASL continue before start".into()));
                    };
                    let last = if s.will_derive(data) {
                        // Thousands of HMAC rounds (up to scram::MAX_ITERATIONS):
                        // not on a worker that other sessions share.
                        let data = data.to_vec();
                        let (back, last) = tokio::task::spawn_blocking(move || {
                            let last = s.update(&data);
                            (s, last)
                        })
                        .await
                        .map_err(|e| BackendError::Sasl(format!("the SCRAM key derivation failed: {e}")))?;
                        s = back;
                        last
                    } else {
                        s.update(data)
                    };
                    let last = last.map_err(|e| BackendError::Sasl(e.to_string()))?;
                    scram = Scram::Started(s, method);
                    stream.write_all(&wire::sasl_response(last.as_bytes())).await?;
                }
                wire::Auth::SaslFinal(data) => {
                    let Scram::Started(s, method) = &mut scram else {
                        return Err(BackendError::Sasl("SASL final before start".into()));
                    };
                    s.finish(data).map_err(|e| BackendError::Sasl(format!("server signature: {e}")))?;
                    scram = Scram::Verified(*method);
                }
                wire::Auth::Other(code) => return Err(BackendError::Unsupported(format!("code {code}"))),
            },
            b'E' => {
                let fields = wire::error_fields(frame.body)?;
                let msg = fields
                    .iter()
                    .find(|(c, _)| *c == b'M')
                    .map_or_else(String::new, |(_, m)| String::from_utf8_lossy(m).into_owned());
                return Err(BackendError::Refused(msg));
            }
            b'v' | b'N' => {}
            other => return Err(BackendError::Unsupported(format!("message {:?} during login", char::from(other)))),
        }
        stream.flush().await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_parameters_are_screened() {
        let p = |v: &[(&str, &str)]| v.iter().map(|(a, b)| ((*a).to_owned(), (*b).to_owned())).collect::<Vec<_>>();
        let ok =
            check_params(&p(&[("user", "ana"), ("application_name", "psql"), ("client_encoding", "UTF8")])).unwrap();
        assert!(ok.contains(&("database".into(), "ana".into())), "the default database is the client's user name");
        assert!(!ok.iter().any(|(k, _)| k == "user"), "the client's user is never passed on");
        assert!(check_params(&p(&[("user", "a"), ("role", "postgres")])).is_err());
        assert!(check_params(&p(&[("user", "a"), ("options", "-c role=postgres")])).is_err());
        assert!(check_params(&p(&[("user", "a"), ("options", "--session_authorization=postgres")])).is_err());
        assert!(check_params(&p(&[("user", "a"), ("options", "-c standard_conforming_strings=off")])).is_err());
        assert!(check_params(&p(&[("user", "a"), ("options", "-c statement_timeout=5s")])).is_ok());
        assert!(check_params(&p(&[("user", "a"), ("replication", "database")])).is_err());
        assert!(check_params(&p(&[("user", "a"), ("client_encoding", "SJIS")])).is_err());
        assert!(check_params(&p(&[("user", "a"), ("client_encoding", "Shift-JIS")])).is_err());
        assert!(check_params(&p(&[("user", "a"), ("client_encoding", "windows936")])).is_err());
        assert!(check_params(&p(&[("user", "a"), ("options", "-c client_encoding=WIN932")])).is_err());
        assert!(check_params(&p(&[("user", "a"), ("options", "-c client_encoding=UTF8")])).is_ok());
        assert!(check_params(&p(&[("user", "a"), ("search_path", "secret")])).is_err());
    }

    #[test]
    fn cancel_keys_are_unique_and_removed_with_their_session() {
        let keys = CancelKeys::default();
        let s = SessionId::new();
        let t = CancelTarget {
            addr: "127.10.0.1:5432".parse().unwrap(),
            backend_pid: 1,
            backend_secret: 2,
            uid: Uid(1000),
            session: s,
        };
        let a = keys.issue(t.clone());
        let b = keys.issue(t);
        assert_ne!(a, b);
        assert!(keys.get(a.0, a.1).is_some());
        keys.remove_session(s);
        assert!(keys.get(a.0, a.1).is_none());
    }
}
