//! The PostgreSQL adapter. The client's startup is answered by Gatehouse
//! (no password is asked: identity comes from the kernel); Gatehouse logs in
//! to the backend itself with the credentials of the backend role the policy
//! names; then every statement is classified with PostgreSQL's own grammar
//! and allowed or refused before it reaches the server (see `relay`).

pub mod catalog;
pub mod io;
mod relay;
pub mod tls;
pub mod wire;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::{debug, info, warn};

use self::io::Stream;
use self::wire::{PgError, Severity, Startup, WireError};
use super::tcp::{End, RelayOutcome};
use crate::identity::Principal;
use crate::mask::Profile;
use crate::policy::{Backend, Credentials};
use crate::proxy::{Agent, LiveSession};
use crate::types::{DbRole, SessionId, Uid};

/// How long a client may take to send its startup packet.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(15);
/// Largest message accepted from a client (Bind parameters, COPY data…).
pub const MAX_CLIENT_MESSAGE: usize = 64 << 20;
/// Largest message accepted from a backend (one DataRow…).
pub const MAX_BACKEND_MESSAGE: usize = 256 << 20;

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

/// What a PostgreSQL session needs to know about itself.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub agent: Arc<Agent>,
    pub id: SessionId,
    pub principal: Principal,
    pub uid: Uid,
    pub backend: Backend,
    pub addr: SocketAddr,
    pub as_role: Option<DbRole>,
    pub mask: Option<Arc<Profile>>,
    /// Server-side guard rails from the rule that allowed the session.
    pub guard: crate::policy::Guard,
    pub live: Arc<LiveSession>,
}

/// The backend login and database a session uses, and their catalog.
#[derive(Debug, Clone)]
pub(crate) struct SessionDb {
    pub login: Credentials,
    pub database: String,
    pub catalog: Arc<catalog::Entry>,
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
pub async fn reject(agent: &Agent, client: TcpStream, uid: Uid, reason: &str) -> String {
    match read_opening(client, None).await {
        Ok(Opening::Session { mut stream, .. }) => {
            let e = PgError::new(Severity::Fatal, "28000", format!("Gatehouse refused this connection: {reason}"))
                .hint("ask the operators for access; `gatehouse policy explain` shows why");
            send(&mut stream, &e.encode()).await;
            "refused".into()
        }
        Ok(Opening::Cancel { pid, secret }) => cancel(agent, uid, pid, secret).await,
        Err(e) => format!("refused ({e})"),
    }
}

/// Forwards a cancel request to the backend session it names, if the
/// requester owns it. As in PostgreSQL, the requester gets no answer.
async fn cancel(agent: &Agent, uid: Uid, pid: u32, secret: u32) -> String {
    let Some(t) = agent.cancel_keys.get(pid, secret) else {
        warn!(pid, "cancel request with an unknown key: ignored");
        return "cancel request: unknown key, ignored".into();
    };
    if t.uid != uid {
        warn!(pid, session = %t.session, requester = %uid, owner = %t.uid, "cancel request for another user's session: ignored");
        return format!("cancel request for session {} of another user: ignored", t.session);
    }
    match crate::proxy::connect_upstream(t.addr, agent.settings.mark).await {
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
            let what = cancel(&ctx.agent, ctx.uid, pid, secret).await;
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
    let database = backend_params.iter().find(|(k, _)| k == "database").map(|(_, v)| v.clone()).unwrap_or_default();
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
    let (backend, backend_rest) = match connect_backend(&ctx, &login, backend_params).await {
        Ok(b) => b,
        Err(e) => {
            warn!(error = %e, "backend login failed");
            let msg = format!("Gatehouse could not log in to backend {} as role {}: {e}", ctx.backend.name, login.user);
            send(&mut client, &PgError::new(Severity::Fatal, "08006", msg.clone()).encode()).await;
            return done(End::BackendError(msg));
        }
    };
    info!(login = %login.user, database = %database, "logged in to the backend");
    let entry = match catalog::for_session(&ctx, &login, &database).await {
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
    send(&mut client, &wire::auth_ok()).await;
    let db = SessionDb { login, database, catalog: entry };
    let out = relay::run(&ctx, &db, client, client_rest, backend, backend_rest).await;
    ctx.agent.cancel_keys.remove_session(ctx.id);
    out
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
    #[error("reading the password file {path}: {source}")]
    Secret { path: String, source: std::io::Error },
    #[error("the server refused the login: {0}")]
    Refused(String),
    #[error("unsupported authentication request {0}")]
    Unsupported(String),
    #[error("authentication exchange failed: {0}")]
    Sasl(String),
    #[error("the server closed the connection during login")]
    Closed,
}

/// Connects to the backend (SO_MARK), negotiates TLS as configured, sends
/// the startup and authenticates with the held credentials.
/// Returns the stream and whatever the backend sent after AuthenticationOk.
async fn connect_backend(
    ctx: &Ctx,
    login: &Credentials,
    mut params: Vec<(String, String)>,
) -> Result<(Stream, BytesMut), BackendError> {
    let tcp = crate::proxy::connect_upstream(ctx.addr, ctx.agent.settings.mark).await?;
    let mut stream = match ctx.backend.tls {
        crate::policy::TlsMode::Off => Stream::Plain(tcp),
        mode => {
            let mut tcp = tcp;
            tcp.write_all(&wire::ssl_request()).await?;
            let mut answer = [0u8; 1];
            tcp.read_exact(&mut answer).await?;
            match (answer[0], mode) {
                (b'S', _) => {
                    let cfg = ctx.agent.tls_client_config(&ctx.backend)?;
                    let name = tls::server_name(&ctx.backend, ctx.addr)?;
                    let tls = tokio_rustls::TlsConnector::from(cfg).connect(name, tcp).await?;
                    Stream::ClientTls(Box::new(tls))
                }
                (_, crate::policy::TlsMode::Verify) => return Err(BackendError::TlsRefused),
                _ => Stream::Plain(tcp),
            }
        }
    };
    let password = match &login.password_file {
        Some(p) => Some(read_secret(p)?),
        None => None,
    };
    params.insert(0, ("user".into(), login.user.clone()));
    stream.write_all(&wire::startup_message(&params)).await?;
    let rest = authenticate(&mut stream, login, password.as_deref()).await?;
    Ok((stream, rest))
}

/// Reads a password file (first line). Warns when others may read it.
fn read_secret(path: &std::path::Path) -> Result<Vec<u8>, BackendError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |source| BackendError::Secret { path: path.display().to_string(), source };
    let meta = std::fs::metadata(path).map_err(err)?;
    if meta.permissions().mode() & 0o077 != 0 {
        warn!(path = %path.display(), "password file is readable by group or others; make it 0600, owned by root");
    }
    let bytes = std::fs::read(path).map_err(err)?;
    let line = bytes.split(|b| *b == b'\n').next().unwrap_or_default();
    Ok(line.strip_suffix(b"\r").unwrap_or(line).to_vec())
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

/// Answers the backend's authentication requests until AuthenticationOk;
/// returns the bytes already read past it (ParameterStatus, BackendKeyData…).
async fn authenticate(
    stream: &mut Stream,
    login: &Credentials,
    password: Option<&[u8]>,
) -> Result<BytesMut, BackendError> {
    use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256};
    let mut buf = BytesMut::with_capacity(1024);
    let mut scram: Option<ScramSha256> = None;
    let need = || {
        password.ok_or_else(|| BackendError::Refused("the server asks for a password and none is configured".into()))
    };
    loop {
        let raw = read_frame(stream, &mut buf).await?;
        let Some((frame, _)) = wire::decode(&raw, usize::MAX)? else { return Err(BackendError::Closed) };
        match frame.tag {
            b'R' => match wire::auth(frame.body)? {
                // Whatever follows (ParameterStatus, BackendKeyData…) is the relay's.
                wire::Auth::Ok => return Ok(buf),
                wire::Auth::Cleartext => stream.write_all(&wire::password_message(need()?)).await?,
                wire::Auth::Md5 { salt } => {
                    let hash = postgres_protocol::authentication::md5_hash(login.user.as_bytes(), need()?, salt);
                    stream.write_all(&wire::password_message(hash.as_bytes())).await?;
                }
                wire::Auth::Sasl { mechanisms } => {
                    if !mechanisms.iter().any(|m| *m == SCRAM_SHA_256.as_bytes()) {
                        return Err(BackendError::Unsupported("SASL without SCRAM-SHA-256".into()));
                    }
                    let s = ScramSha256::new(need()?, ChannelBinding::unsupported());
                    stream.write_all(&wire::sasl_initial_response(SCRAM_SHA_256, s.message())).await?;
                    scram = Some(s);
                }
                wire::Auth::SaslContinue(data) => {
                    let s = scram.as_mut().ok_or_else(|| BackendError::Sasl("continue before start".into()))?;
                    s.update(data).map_err(|e| BackendError::Sasl(e.to_string()))?;
                    stream.write_all(&wire::sasl_response(s.message())).await?;
                }
                wire::Auth::SaslFinal(data) => {
                    let s = scram.as_mut().ok_or_else(|| BackendError::Sasl("final before start".into()))?;
                    s.finish(data).map_err(|e| BackendError::Sasl(format!("server signature: {e}")))?;
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
