//! The control socket: a Unix socket the CLI talks to, one JSON request and
//! one JSON response per connection. The caller's uid comes from
//! SO_PEERCRED; root and the auditor group see everything, others their own.
//!
//! The socket is open to every local user, so nobody may starve it: each uid
//! other than root has at most [`PER_UID`] connections open and all of them
//! together [`TOTAL`] (root has its own [`ROOT`] slots, so `gatehouse status`
//! is answered during a flood); a request must arrive whole within
//! [`REQUEST_TIMEOUT`] and within [`MAX_REQUEST`] bytes; accept errors back
//! off and log at most one line per ten seconds.
//!
//! Any user may log in (`login_start`, `login`), ask who they are
//! (`who_am_i`) and log out: each acts on the caller's own uid only.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

mod approvals;

use crate::proxy::limits::{Backoff, RateLimited, log_accept_error};
use crate::proxy::{Agent, AgentError, CountersView};
use crate::redirect::{KernelStats, PinStatus};

/// Open control connections per uid (other than root).
pub const PER_UID: usize = 8;
/// Open control connections of all uids other than root together.
pub const TOTAL: usize = 64;
/// Open control connections of root.
pub const ROOT: usize = 16;
/// A request must arrive whole within this time.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The answer must be taken within this time.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest request accepted.
pub const MAX_REQUEST: u64 = 64 * 1024;

/// Counts open control connections per uid; a slot is given back on drop.
#[derive(Debug, Default)]
struct Slots {
    open: Mutex<(usize, HashMap<u32, usize>)>,
}

struct Slot<'a> {
    slots: &'a Slots,
    uid: u32,
}

impl Slots {
    fn take(&self, uid: u32) -> Option<Slot<'_>> {
        let mut g = self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (total, per) = &mut *g;
        let mine = per.get(&uid).copied().unwrap_or(0);
        let allowed = if uid == 0 { mine < ROOT } else { mine < PER_UID && *total < TOTAL };
        if !allowed {
            return None;
        }
        per.insert(uid, mine + 1);
        if uid != 0 {
            *total += 1;
        }
        Some(Slot { slots: self, uid })
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut g = self.slots.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (total, per) = &mut *g;
        if let Some(n) = per.get_mut(&self.uid) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                per.remove(&self.uid);
            }
        }
        if self.uid != 0 {
            *total = total.saturating_sub(1);
        }
    }
}

/// Requests the CLI may send.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Status,
    Sessions {
        filter: crate::audit::query::SessionFilter,
    },
    Statements {
        session: Option<String>,
        limit: u32,
    },
    Replay {
        session: String,
    },
    /// The statements that returned a row of a trailed table (root and the auditor group).
    WhoSaw {
        table: String,
        key: String,
        since_us: Option<i64>,
    },
    /// Distinct rows of a trailed table read per user (root and the auditor group).
    AccessReport {
        table: String,
        by: crate::trail::store::ReportBy,
        since_us: Option<i64>,
    },
    /// Remove a session's recorded content (root only).
    Redact {
        session: String,
        reason: String,
    },
    /// Replace the host's signing key (root only).
    RotateKey,
    /// Requests waiting for a human that the caller may see (`mine`: only their own).
    Requests {
        mine: bool,
    },
    /// Approve (`approve`) or deny a pending request, as the caller.
    Decide {
        id: crate::approval::RequestId,
        approve: bool,
        reason: Option<String>,
    },
    /// Ask for a grant (a `[[grant]]` of the policy) on a backend, for a while.
    RequestGrant {
        grant: String,
        backend: String,
        duration_s: u64,
        reason: String,
    },
    /// Take back an approved grant (an approver of it, or root).
    Revoke {
        id: crate::approval::RequestId,
    },
    /// Start `gatehouse login`: the IdP's parameters and a fresh nonce for the caller's uid.
    LoginStart,
    /// Bind the identity of this ID token (verified by the agent) to the caller's uid.
    Login {
        id_token: String,
        #[serde(default)]
        refresh_token: Option<String>,
    },
    /// The caller's uid, user, groups and bound identity.
    WhoAmI,
    /// End the caller's binding.
    Logout,
}

/// Answers.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    Status(Box<AgentStatus>),
    Sessions {
        rows: Vec<crate::audit::query::SessionRow>,
    },
    Statements {
        rows: Vec<crate::audit::query::StatementRow>,
    },
    WhoSaw(Box<crate::trail::store::WhoSaw>),
    AccessReport {
        rows: Vec<crate::trail::store::ReportRow>,
    },
    /// The transcript: (time µs, text) per line.
    Replay {
        lines: Vec<(i64, String)>,
    },
    Redacted {
        redaction: crate::audit::Redaction,
    },
    Rotated {
        rotation: crate::audit::KeyRotation,
    },
    Requests {
        requests: Vec<crate::approval::Request>,
        /// For held statements the caller may decide: the session's latest
        /// statements before it (decision and text), newest last.
        #[serde(default)]
        context: Vec<(crate::approval::RequestId, Vec<String>)>,
    },
    Request {
        request: Box<crate::approval::Request>,
        /// What happened: `requested`, `approval`, `approved`, `denied`, `revoked`.
        event: String,
    },
    LoginParams(crate::identity::oidc::LoginParams),
    LoggedIn {
        binding: crate::identity::oidc::BindingView,
    },
    WhoAmI {
        uid: u32,
        user: Option<String>,
        groups: Vec<String>,
        /// Whether the policy has an `[identity]` (whether anyone can log in).
        identity_configured: bool,
        binding: Option<crate::identity::oidc::BindingView>,
    },
    LoggedOut {
        was_logged_in: bool,
    },
    Error {
        message: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackendStatus {
    pub name: String,
    pub protocol: String,
    pub addresses: Vec<String>,
    /// off | prefer | verify (postgres backends).
    #[serde(default)]
    pub tls: Option<String>,
    /// How the newest session logged in to it: TLS, certificate, auth method.
    #[serde(default)]
    pub last_login: Option<crate::audit::BackendLogin>,
    #[serde(default)]
    pub last_login_us: Option<i64>,
    /// When its `client_tls` certificate expires (seconds since the epoch).
    #[serde(default)]
    pub client_tls_expires: Option<i64>,
    /// Why this backend is not reached with a verified certificate, or is weak otherwise.
    #[serde(default)]
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentStatus {
    pub pid: u32,
    pub version: String,
    pub started_us: i64,
    pub config: PathBuf,
    pub listening: Vec<String>,
    pub cgroup: PathBuf,
    pub reused_pins: bool,
    pub pins: serde_json::Value,
    pub backends: Vec<BackendStatus>,
    pub rules: usize,
    pub sessions: serde_json::Value,
    pub kernel: serde_json::Value,
    pub audit_db: PathBuf,
    pub policy: serde_json::Value,
    pub audit_mode: crate::audit::Mode,
    /// Set when the audit store cannot be written (the agent then fails closed).
    pub audit_failure: Option<String>,
    /// The host's Ed25519 public key (hex): verifies checkpoints and exports elsewhere.
    pub public_key: String,
    /// The same key, in a file beside the store (`host.pub`).
    #[serde(default)]
    pub public_key_file: Option<PathBuf>,
    /// What the check of the policy's files found (expiring certificates, weak backends).
    #[serde(default)]
    pub warnings: Vec<String>,
    /// Pins removed under the running agent and restored, links detached.
    #[serde(default)]
    pub pin_health: serde_json::Value,
    /// Refusals aggregated or left unrecorded (disk reserve).
    #[serde(default)]
    pub refusals: serde_json::Value,
    /// The descriptor limit in force.
    #[serde(default)]
    pub nofile: u64,
    /// `max_connections_per_user` and the connections each uid holds now (see `proxy::limits::PerUser`).
    #[serde(default)]
    pub per_user: serde_json::Value,
    /// Control connections refused because a uid or all uids had too many open.
    #[serde(default)]
    pub control_refused: u64,
    /// What `/healthz` answers: `ok`, or why not.
    #[serde(default)]
    pub health: String,
    /// Where `/metrics` is served, if anywhere.
    #[serde(default)]
    pub metrics: Option<String>,
}

fn status(agent: &Agent) -> AgentStatus {
    let snap = agent.snapshot.load();
    let logins = agent.backends.logins();
    let files = agent.files.lock().map(|f| f.clone()).unwrap_or_default();
    let backends = snap
        .policy
        .backends
        .iter()
        .map(|b| {
            let mut addresses: Vec<String> =
                snap.routes.iter().filter(|(_, n)| **n == b.name).map(|(a, _)| a.to_string()).collect();
            addresses.sort();
            let login = logins.get(&b.name);
            let client_tls_expires =
                files.client_tls.iter().find(|(n, _)| *n == b.name).and_then(|(_, e)| e.as_ref().ok().copied());
            BackendStatus {
                name: b.name.to_string(),
                protocol: format!("{:?}", b.protocol).to_lowercase(),
                addresses,
                tls: b.protocol.is_sql().then(|| format!("{:?}", b.tls).to_lowercase()),
                warnings: backend_warnings(b, login.map(|(_, l)| l), client_tls_expires),
                last_login_us: login.map(|(t, _)| *t),
                last_login: login.map(|(_, l)| l.clone()),
                client_tls_expires,
            }
        })
        .collect();
    let counters: CountersView = agent.counters.view();
    let kernel: KernelStats = agent.redirect.stats();
    AgentStatus {
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").into(),
        started_us: agent.started_us,
        config: agent.config_path.clone(),
        listening: agent.listening.iter().map(ToString::to_string).collect(),
        cgroup: agent.redirect.cgroup.clone(),
        reused_pins: agent.redirect.reused,
        pins: serde_json::to_value(PinStatus::read(&agent.redirect.pin_dir)).unwrap_or_default(),
        backends,
        rules: snap.policy.rules.len(),
        sessions: serde_json::to_value(counters).unwrap_or_default(),
        kernel: serde_json::to_value(kernel).unwrap_or_default(),
        audit_db: agent.settings.audit_db.clone(),
        policy: serde_json::to_value(agent.policy_state.lock().map(|s| s.clone()).unwrap_or_default())
            .unwrap_or_default(),
        audit_mode: agent.audit.mode(),
        audit_failure: agent.audit.failure(),
        public_key: agent.audit.public_key_hex(),
        public_key_file: Some(crate::audit::keys::public_path(&crate::settings::host_key_path(
            &agent.settings.audit_db,
        ))),
        warnings: files.warnings,
        pin_health: serde_json::to_value(agent.redirect.pin_health()).unwrap_or_default(),
        refusals: serde_json::to_value(agent.refusals.stats()).unwrap_or_default(),
        nofile: agent.nofile,
        per_user: agent.per_user.stats(),
        control_refused: CONTROL_REFUSED.load(std::sync::atomic::Ordering::Relaxed),
        health: crate::metrics::healthy(agent).err().unwrap_or_else(|| "ok".into()),
        metrics: agent.settings.metrics.as_ref().map(ToString::to_string),
    }
}

static CONTROL_REFUSED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// What `gatehouse status` says is weak about a backend: reached without a
/// verified certificate (by its setting, or as the newest login found), a
/// method that reveals the password, an expired `client_tls` certificate.
fn backend_warnings(
    b: &crate::policy::Backend,
    login: Option<&crate::audit::BackendLogin>,
    client_tls_expires: Option<i64>,
) -> Vec<String> {
    let mut w = Vec::new();
    if !b.protocol.is_sql() {
        return w;
    }
    match b.tls {
        crate::policy::TlsMode::Verify => {}
        crate::policy::TlsMode::Prefer => w.push("tls = prefer: the server's certificate is not verified".to_owned()),
        crate::policy::TlsMode::Off => w.push("tls = off: plaintext, the server is not authenticated".to_owned()),
    }
    if let Some(l) = login {
        if l.tls != "verified" {
            w.push(format!("the newest login went over {} TLS", if l.tls == "off" { "no" } else { "unverified" }));
        }
        if l.auth == "md5" || l.auth == "password" {
            w.push(format!(
                "the newest login used {}, which hands the server the password or a replayable hash",
                l.auth
            ));
        }
    }
    if client_tls_expires.is_some_and(|t| t <= jiff::Timestamp::now().as_second()) {
        w.push("the client_tls certificate has EXPIRED".to_owned());
    }
    w
}

/// Binds the control socket (root-only, 0600) and serves it until `stop`.
pub async fn serve(agent: Arc<Agent>, stop: CancellationToken) -> Result<JoinHandle<()>, AgentError> {
    let path = agent.settings.control_socket.clone();
    let err = |source| AgentError::Control { path: path.clone(), source };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let listener = UnixListener::bind(&path).map_err(err)?;
    // Anyone may connect; every request is authorised by the caller's uid
    // (SO_PEERCRED): root and the auditor group see everything, others their own sessions.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).map_err(err)?;
    info!(path = %path.display(), "control socket ready");
    Ok(tokio::spawn(async move {
        let slots = Arc::new(Slots::default());
        let accept_log = RateLimited::new(Duration::from_secs(10));
        let busy_log = Arc::new(RateLimited::new(Duration::from_secs(10)));
        let fail_log = Arc::new(RateLimited::new(Duration::from_secs(10)));
        let mut backoff = Backoff::default();
        loop {
            let conn = tokio::select! {
                c = listener.accept() => c,
                () = stop.cancelled() => break,
            };
            let stream = match conn {
                Ok((stream, _)) => {
                    backoff.reset();
                    stream
                }
                Err(e) => {
                    log_accept_error(&accept_log, "control", &e);
                    if crate::proxy::limits::out_of_descriptors(&e) {
                        agent.spare_fd.release();
                        if let Ok(Ok((s, _))) = tokio::time::timeout(Duration::from_millis(1), listener.accept()).await
                        {
                            drop(s);
                        }
                        agent.spare_fd.restore();
                    }
                    tokio::time::sleep(backoff.delay()).await;
                    continue;
                }
            };
            let Ok(uid) = stream.peer_cred().map(|c| c.uid()) else { continue };
            let (agent, slots, busy_log, fail_log) = (agent.clone(), slots.clone(), busy_log.clone(), fail_log.clone());
            tokio::spawn(async move {
                let Some(_slot) = slots.take(uid) else {
                    CONTROL_REFUSED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if let Some(held) = busy_log.admit() {
                        warn!(uid, held_back = held, "control connection refused: too many open");
                    }
                    let busy = Response::Error { message: "busy: too many open control connections".into() };
                    if let Ok(mut out) = serde_json::to_vec(&busy) {
                        out.push(b'\n');
                        let _ = stream.try_write(&out);
                    }
                    return;
                };
                if let Err(e) = answer(&agent, stream, uid).await
                    && let Some(held) = fail_log.admit()
                {
                    warn!(uid, error = %e, held_back = held, "control request failed");
                }
            });
        }
        let _ = std::fs::remove_file(&path);
    }))
}

async fn answer(agent: &Agent, stream: UnixStream, uid: u32) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(r.take(MAX_REQUEST));
    let read = reader.read_line(&mut line);
    match tokio::time::timeout(REQUEST_TIMEOUT, read).await {
        Ok(r) => {
            r?;
        }
        Err(_) => return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "no whole request in time")),
    }
    if !line.ends_with('\n') {
        let too_big = u64::try_from(line.len()).unwrap_or(u64::MAX) >= MAX_REQUEST;
        let message = if too_big { "request too large" } else { "incomplete request" };
        let mut out =
            serde_json::to_vec(&Response::Error { message: message.into() }).map_err(std::io::Error::other)?;
        out.push(b'\n');
        let _ = tokio::time::timeout(RESPONSE_TIMEOUT, w.write_all(&out)).await;
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, message));
    }
    let all = sees_everything(agent, uid).await;
    let db = agent.settings.audit_db.clone();
    let denied =
        || Response::Error { message: "permission denied: only root and the auditor group may do this".into() };
    let response = match serde_json::from_str::<Request>(&line) {
        Ok(Request::Status) if all => Response::Status(Box::new(status(agent))),
        Ok(Request::Status) => denied(),
        Ok(Request::Sessions { mut filter }) => {
            if !all {
                filter.uid = Some(uid);
            }
            match tokio::task::spawn_blocking(move || crate::audit::query::sessions(&db, &filter)).await {
                Ok(Ok(rows)) => Response::Sessions { rows },
                Ok(Err(e)) => Response::Error { message: e.to_string() },
                Err(e) => Response::Error { message: e.to_string() },
            }
        }
        Ok(Request::Statements { session, limit }) => {
            let owner = (!all).then_some(uid);
            let q = move || crate::audit::query::statements_of(&db, session.as_deref(), owner, limit);
            match tokio::task::spawn_blocking(q).await {
                Ok(Ok(rows)) => Response::Statements { rows },
                Ok(Err(e)) => Response::Error { message: e.to_string() },
                Err(e) => Response::Error { message: e.to_string() },
            }
        }
        Ok(Request::WhoSaw { .. } | Request::AccessReport { .. }) if !all => denied(),
        Ok(Request::WhoSaw { table, key, since_us }) => {
            match tokio::task::spawn_blocking(move || crate::trail::store::who_saw(&db, &table, &key, since_us)).await {
                Ok(Ok(w)) => Response::WhoSaw(Box::new(w)),
                Ok(Err(e)) => Response::Error { message: e.to_string() },
                Err(e) => Response::Error { message: e.to_string() },
            }
        }
        Ok(Request::AccessReport { table, by, since_us }) => {
            let q = move || crate::trail::store::access_report(&db, &table, by, since_us);
            match tokio::task::spawn_blocking(q).await {
                Ok(Ok(rows)) => Response::AccessReport { rows },
                Ok(Err(e)) => Response::Error { message: e.to_string() },
                Err(e) => Response::Error { message: e.to_string() },
            }
        }
        Ok(Request::Replay { session }) => {
            let q = move || -> Result<Vec<(i64, String)>, String> {
                use crate::audit::replay;
                let conn = crate::audit::query::open_read_only(&db).map_err(|e| e.to_string())?;
                // Only sessions the caller may see are matched: an id of
                // someone else's answers exactly like one that does not exist.
                let visible = (!all).then_some(uid);
                let id = replay::resolve_session(&conn, &session, visible).map_err(|e| e.to_string())?;
                let records = replay::session_records(&conn, &id).map_err(|e| e.to_string())?;
                let lines = replay::transcript(&records).map_err(|e| e.to_string())?;
                Ok(lines.into_iter().map(|l| (l.at_us, l.text)).collect())
            };
            match tokio::task::spawn_blocking(q).await {
                Ok(Ok(lines)) => Response::Replay { lines },
                Ok(Err(message)) => Response::Error { message },
                Err(e) => Response::Error { message: e.to_string() },
            }
        }
        Ok(Request::Redact { session, reason }) if uid == 0 => match agent.audit.redact(&session, &reason, uid).await {
            Ok(redaction) => Response::Redacted { redaction },
            Err(e) => Response::Error { message: e.to_string() },
        },
        Ok(Request::RotateKey) if uid == 0 => match agent.audit.rotate_key().await {
            Ok(rotation) => Response::Rotated { rotation },
            Err(e) => Response::Error { message: e.to_string() },
        },
        Ok(Request::Redact { .. } | Request::RotateKey) => {
            Response::Error { message: "permission denied: only root may redact records or rotate the host key".into() }
        }
        Ok(Request::Requests { mine }) => approvals::list(agent, uid, mine).await,
        Ok(Request::Decide { id, approve, reason }) => approvals::decide(agent, uid, id, approve, reason).await,
        Ok(Request::RequestGrant { grant, backend, duration_s, reason }) => {
            approvals::request_grant(agent, uid, &grant, &backend, duration_s, reason).await
        }
        Ok(Request::Revoke { id }) => approvals::revoke(agent, uid, id).await,
        Ok(Request::LoginStart) => login_start(agent, uid),
        Ok(Request::Login { id_token, refresh_token }) => login(agent, uid, &id_token, refresh_token).await,
        Ok(Request::WhoAmI) => {
            let p = agent.resolver.principal(crate::types::Uid(uid)).await;
            let snap = agent.snapshot.load();
            let identity = snap.policy.identity.as_ref();
            Response::WhoAmI {
                uid,
                user: p.user.map(|u| u.to_string()),
                groups: p.groups.iter().map(ToString::to_string).collect(),
                identity_configured: identity.is_some(),
                binding: agent.resolver.logins.view(crate::types::Uid(uid), identity, jiff::Timestamp::now()),
            }
        }
        Ok(Request::Logout) => {
            let was_logged_in = agent.resolver.logins.logout(crate::types::Uid(uid));
            if was_logged_in {
                info!(uid, "logout: identity unbound from uid");
                record_login_event(agent, format!("logout uid={uid}"));
            }
            Response::LoggedOut { was_logged_in }
        }
        Err(e) => Response::Error { message: format!("bad request: {e}") },
    };
    let mut out = serde_json::to_vec(&response).map_err(std::io::Error::other)?;
    out.push(b'\n');
    tokio::time::timeout(RESPONSE_TIMEOUT, w.write_all(&out))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "the answer was not taken in time"))?
}

fn login_start(agent: &Agent, uid: u32) -> Response {
    let snap = agent.snapshot.load();
    let Some(cfg) = snap.policy.identity.as_ref() else {
        return Response::Error { message: crate::identity::oidc::OidcError::NotConfigured.to_string() };
    };
    match agent.resolver.logins.start(crate::types::Uid(uid), cfg) {
        Ok(p) => Response::LoginParams(p),
        Err(e) => {
            warn!(uid, error = %e, "login cannot start");
            Response::Error { message: e.to_string() }
        }
    }
}

async fn login(agent: &Agent, uid: u32, id_token: &str, refresh_token: Option<String>) -> Response {
    let cfg = agent.snapshot.load().policy.identity.clone();
    let Some(cfg) = cfg else {
        return Response::Error { message: crate::identity::oidc::OidcError::NotConfigured.to_string() };
    };
    match agent.resolver.logins.login(crate::types::Uid(uid), &cfg, id_token, refresh_token).await {
        Ok(binding) => {
            let i = &binding.identity;
            let groups: Vec<&str> = i.groups.iter().map(|g| g.as_str()).collect();
            record_login_event(
                agent,
                format!(
                    "login uid={uid} issuer={} subject={} email={} groups=[{}] acr={} until={}",
                    i.issuer,
                    i.subject,
                    i.verified_email().unwrap_or("-"),
                    groups.join(","),
                    i.acr.as_deref().unwrap_or("-"),
                    i.expires
                ),
            );
            Response::LoggedIn { binding }
        }
        Err(e) => {
            // Any user can make refusals: on record at most one per second, with a count of the rest.
            static REFUSALS: RateLimited = RateLimited::new(Duration::from_secs(1));
            if let Some(held) = REFUSALS.admit() {
                warn!(uid, error = %e, held_back = held, "login refused");
                record_login_event(
                    agent,
                    format!("login refused uid={uid} ({held} refusals held back before it): {e}"),
                );
            }
            Response::Error { message: e.to_string() }
        }
    }
}

/// Logins, refusals and logouts go on record (agent-level records).
fn record_login_event(agent: &Agent, what: String) {
    if let Err(e) = agent.audit.record(crate::audit::Event::Agent { what }) {
        warn!(error = %e, "cannot record a login event");
    }
}

/// Root, and members of the configured auditor group, see every session.
async fn sees_everything(agent: &Agent, uid: u32) -> bool {
    if uid == 0 {
        return true;
    }
    let Some(group) = &agent.settings.auditor_group else { return false };
    let p = agent.resolver.principal(crate::types::Uid(uid)).await;
    p.groups.iter().any(|g| g.as_str() == group)
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no control socket at {path}: {source}")]
    NotRunning { path: PathBuf, source: std::io::Error },
    #[error("control socket {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("control socket {path}: unreadable answer: {source}")]
    Decode { path: PathBuf, source: serde_json::Error },
}

/// Sends one request to a running agent.
pub async fn request(path: &Path, req: &Request) -> Result<Response, ClientError> {
    let stream =
        UnixStream::connect(path).await.map_err(|source| ClientError::NotRunning { path: path.into(), source })?;
    let io = |source| ClientError::Io { path: path.into(), source };
    let (r, mut w) = stream.into_split();
    let mut body = serde_json::to_vec(req).map_err(|source| ClientError::Decode { path: path.into(), source })?;
    body.push(b'\n');
    w.write_all(&body).await.map_err(io)?;
    let mut line = String::new();
    BufReader::new(r).read_line(&mut line).await.map_err(io)?;
    serde_json::from_str(&line).map_err(|source| ClientError::Decode { path: path.into(), source })
}
