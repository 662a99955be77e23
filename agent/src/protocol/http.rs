//! HTTP backends (`protocol = "http"`): hyper serves the client's
//! connection (HTTP/1.1 with keep-alive, pipelining, chunked bodies and
//! `Expect: 100-continue`; HTTP/2 when the client speaks it), and every
//! request is decided on its own:
//!
//! 1. the path is decoded and checked (`policy::http::normalize_path`), the
//!    query parsed; a request the policy cannot read is answered `400`;
//! 2. the policy decides (method, path, query, headers, declared size); a
//!    refusal is a `403` with a JSON body naming the rule, and the
//!    connection stays open for the next request;
//! 3. hop-by-hop headers go; the client's `Authorization` and `Cookie` go
//!    unless the rule passes them; the backend's held credential is added;
//! 4. the request goes to the backend over a pooled HTTP/1.1 connection
//!    (`upstream`), its body capped at the rule's `max_body`;
//! 5. the response streams back, through the masking profile when the
//!    rule has one (`body`: JSON field rules and detectors, text, forms;
//!    gzip and deflate undone and redone; other codings and unreadable
//!    types refused with a `502`);
//! 6. one `http` audit record per exchange, with the bodies up to
//!    `record_max_bytes` (after masking). A WebSocket upgrade is relayed
//!    and its frames recorded (`ws`).

pub mod body;
mod echo_forms;
mod headers;
mod hold;
pub mod sni;
pub mod tls;
mod upstream;
mod ws;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tracing::{info, warn};

use self::body::{BoxError, Coding, Kind, Piped, Summary, Transform};
use self::headers::{
    header_list, host_of, is_upgrade, recorded_headers, recorded_target, relayable_upgrade, restrict_accept_encoding,
    strip_client_claims, strip_hop_by_hop, upgrade_protocols,
};
use self::upstream::{Pool, UpBody, UpstreamError};
use crate::approval::Desk as _;
use crate::audit::{self, Event, HttpExchange};
use crate::identity::Principal;
use crate::live::ConnectRefusal;
use crate::live::LiveSession;
use crate::policy::http::{HttpCredentials, HttpRequest, HttpTls, normalize_path, parse_query};
use crate::policy::{Backend, Decision, Verdict};
use crate::protocol::tcp::{End, RelayOutcome};
use crate::proxy::Agent;
use crate::secrets::Secret;
use crate::types::SessionId;

type Out = UnsyncBoxBody<Bytes, BoxError>;

/// What the session task hands the adapter.
pub struct Ctx {
    pub agent: Arc<Agent>,
    pub id: SessionId,
    pub principal: Principal,
    pub backend: Backend,
    pub addr: SocketAddr,
    pub live: Arc<LiveSession>,
    /// The session's count against `max_connections_per_user` (lent to its pool).
    pub user_slot: Option<crate::proxy::limits::UserSlot>,
}

/// A credential read from its file, as the header it is sent in.
#[derive(Clone)]
struct Held {
    name: HeaderName,
    value: HeaderValue,
    label: &'static str,
    /// What a response must not carry back: the header value and its secret
    /// parts (a backend that echoes requests — a debug endpoint, an error
    /// page — would hand the credential to the user).
    needles: Option<body::Needles>,
}

/// A secret part short enough to be an ordinary word is not looked for on
/// its own (the whole header value always is).
const SHORTEST_NEEDLE: usize = 8;

/// The needles of a held credential: the header value, and each secret part
/// of at least [`SHORTEST_NEEDLE`] bytes.
fn needles(value: &[u8], parts: &[&[u8]]) -> Option<body::Needles> {
    let mut all = vec![value.to_vec()];
    all.extend(parts.iter().filter(|p| p.len() >= SHORTEST_NEEDLE).map(|p| p.to_vec()));
    body::Needles::new(&all)
}

struct Shared {
    ctx: Ctx,
    pool: Arc<Pool>,
    seq: AtomicU64,
    held: tokio::sync::OnceCell<Result<Option<Held>, String>>,
    /// Upgraded connections (WebSocket): the session lasts until they end.
    upgraded: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// Serves one client connection until it closes or the session is cut.
pub async fn serve(mut ctx: Ctx, client: tokio::net::TcpStream) -> RelayOutcome {
    let http = ctx.backend.http.clone().unwrap_or(crate::policy::http::HttpBackend {
        tls: HttpTls::Off,
        credentials: None,
        server_names: vec![],
    });
    let tls = if http.tls.upstream_tls() {
        let config = match ctx.agent.backends.tls_client_config(&ctx.backend) {
            Ok(c) => c,
            Err(e) => return failed(format!("backend TLS configuration: {e}")),
        };
        let name = match crate::protocol::postgres::tls::server_name(&ctx.backend, ctx.addr) {
            Ok(n) => n,
            Err(e) => return failed(format!("backend TLS: {e}")),
        };
        Some((config, name))
    } else {
        None
    };
    let pool = Pool::new(
        ctx.addr,
        ctx.agent.settings.mark,
        tls,
        (ctx.agent.per_user.clone(), ctx.principal.uid.0),
        ctx.user_slot.take(),
    );
    let cut = ctx.live.cut.clone();
    let live = ctx.live.clone();
    let up = Arc::new(AtomicU64::new(0));
    let down = Arc::new(AtomicU64::new(0));
    let shared = Arc::new(Shared {
        ctx,
        pool,
        seq: AtomicU64::new(0),
        held: tokio::sync::OnceCell::new(),
        upgraded: std::sync::Mutex::new(Vec::new()),
    });
    let tasks = shared.clone();
    let io = Counted { inner: client, up: up.clone(), down: down.clone() };
    let end = if http.tls == HttpTls::Terminate {
        let (db, backend, addr) =
            (shared.ctx.agent.settings.audit_db.clone(), shared.ctx.backend.clone(), shared.ctx.addr);
        let config = tokio::task::spawn_blocking(move || tls::server_config(&db, &backend, addr)).await;
        match config {
            Ok(Ok(config)) => match tokio_rustls::TlsAcceptor::from(config).accept(io).await {
                Ok(tls) => serve_io(shared, tls, cut).await,
                Err(e) => End::ClientError(format!("TLS handshake: {e}")),
            },
            Ok(Err(e)) => {
                warn!(error = %e, "cannot terminate TLS");
                End::Cut(format!("cannot terminate TLS: {e}"))
            }
            Err(e) => End::Cut(format!("cannot terminate TLS: {e}")),
        }
    } else {
        serve_io(shared, io, cut).await
    };
    // An upgraded connection outlives hyper's: wait for it (it ends with the session's cut too).
    let upgraded: Vec<_> = std::mem::take(&mut *crate::live::lock(&tasks.upgraded));
    for t in upgraded {
        let _ = t.await;
    }
    // Requests still held (streams whose tasks outlive the connection) are withdrawn.
    tasks.ctx.agent.withdraw_session(&tasks.ctx.id.to_string());
    let end = match end {
        End::Cut(why) if why.is_empty() => End::Cut(live.reason()),
        other => other,
    };
    RelayOutcome { up: up.load(Ordering::Relaxed), down: down.load(Ordering::Relaxed), end }
}

fn failed(why: String) -> RelayOutcome {
    warn!("{why}");
    RelayOutcome { up: 0, down: 0, end: End::BackendError(why) }
}

async fn serve_io<I>(shared: Arc<Shared>, io: I, cut: tokio_util::sync::CancellationToken) -> End
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let s = shared.clone();
        async move { Ok::<_, Infallible>(s.handle(req).await) }
    });
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => match r {
            Ok(()) => End::Closed,
            Err(e) => End::ClientError(e.to_string()),
        },
        () = cut.cancelled() => End::Cut(String::new()),
    }
}

/// What is known of a request before its response, for its record.
#[derive(Clone)]
struct Pending {
    session: SessionId,
    seq: u64,
    started_us: i64,
    started: Instant,
    version: String,
    method: String,
    target: String,
    host: Option<String>,
    request_headers: Vec<(String, String)>,
    decision: crate::audit::Verdict,
    rule: Option<String>,
    reason: Option<String>,
    credentials: Option<String>,
}

impl Pending {
    /// A cookie the backend sets in answer to the held credential is a
    /// credential of its own (a session of the service identity), usable
    /// wherever the backend is reachable: it stays here, and the record says so.
    fn drop_backend_cookies(&mut self, headers: &mut http::HeaderMap) {
        let n = headers.get_all(header::SET_COOKIE).iter().count();
        if n == 0 {
            return;
        }
        headers.remove(header::SET_COOKIE);
        let note = format!("backend Set-Cookie dropped ({n})");
        self.credentials = Some(self.credentials.take().map_or(note.clone(), |c| format!("{c}; {note}")));
    }

    fn record(
        &self,
        audit: &audit::Audit,
        status: Option<u16>,
        response_headers: Vec<(String, String)>,
        req: Summary,
        resp: Summary,
        error: Option<String>,
    ) {
        let mut masked = (resp.masked.total() > 0)
            .then(|| resp.masked.iter().map(|(k, v)| (k.to_owned(), v)).collect::<std::collections::BTreeMap<_, _>>());
        if resp.scrubbed > 0 {
            masked.get_or_insert_default().insert("held_credential".to_owned(), resp.scrubbed);
        }
        if resp.trailers_dropped > 0 {
            masked.get_or_insert_default().insert("trailers_dropped".to_owned(), resp.trailers_dropped);
        }
        if req.trailers_dropped > 0 {
            masked.get_or_insert_default().insert("request_trailers_dropped".to_owned(), req.trailers_dropped);
        }
        let mut data = req.captured;
        let request_body_recorded = data.len() as u64;
        data.extend_from_slice(&resp.captured);
        let rec = HttpExchange {
            session: self.session,
            seq: self.seq,
            started_us: self.started_us,
            version: self.version.clone(),
            method: self.method.clone(),
            target: self.target.clone(),
            host: self.host.clone(),
            request_headers: self.request_headers.clone(),
            status,
            response_headers,
            request_bytes: req.bytes,
            response_bytes: resp.bytes,
            duration_us: u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX),
            decision: self.decision,
            rule: self.rule.clone(),
            reason: self.reason.clone(),
            masked,
            request_body_recorded,
            response_body_recorded: resp.captured.len() as u64,
            truncated: req.truncated || resp.truncated,
            error: error.or(match (req.error, resp.error) {
                // Both bodies cut (a response body refused mid-stream drops the request's): both said.
                (Some(rq), Some(rs)) if rq != rs => Some(format!("request body: {rq}; response body: {rs}")),
                (rq, rs) => rq.or(rs),
            }),
            credentials: self.credentials.clone(),
        };
        info!(seq = rec.seq, method = %rec.method, target = %rec.target, status = ?rec.status, decision = %rec.decision, "http request");
        if let Err(e) = audit.record(Event::Http(Box::new(rec), data)) {
            warn!(error = %e, "cannot record an HTTP exchange");
        }
    }
}

impl Shared {
    async fn handle(self: &Arc<Self>, req: Request<Incoming>) -> Response<Out> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let agent = &self.ctx.agent;
        let cap = usize::try_from(agent.settings.record_max_bytes).unwrap_or(usize::MAX);
        let mut pending = Pending {
            session: self.ctx.id,
            seq,
            started_us: audit::now_us(),
            started: Instant::now(),
            version: format!("{:?}", req.version()),
            method: req.method().as_str().to_owned(),
            target: recorded_target(req.uri()),
            host: host_of(&req),
            request_headers: recorded_headers(req.headers(), self.ctx.backend.http.as_ref()),
            decision: crate::audit::Verdict::Deny,
            rule: None,
            reason: None,
            credentials: None,
        };
        // Two Host fields: this check reads the first, an upstream may route on
        // the last (RFC 9112 §3.2: a server must answer 400).
        if req.headers().get_all(header::HOST).iter().count() > 1 {
            return self.refuse(&pending, StatusCode::BAD_REQUEST, None, "the request has more than one Host header");
        }
        if let Some(why) = misdirected(&self.ctx.backend, self.ctx.addr, pending.host.as_deref()) {
            return self.refuse(&pending, StatusCode::MISDIRECTED_REQUEST, None, &why);
        }
        // Hosts a proxy or an application trusting one reads in place of Host.
        for claimed in forwarded_hosts(req.headers()) {
            if let Some(why) = misdirected(&self.ctx.backend, self.ctx.addr, Some(&claimed)) {
                return self.refuse(&pending, StatusCode::MISDIRECTED_REQUEST, None, &format!("forwarded host: {why}"));
            }
        }
        let path = match normalize_path(req.uri().path()) {
            Ok(p) => p,
            Err(e) => return self.refuse(&pending, StatusCode::BAD_REQUEST, None, &e.to_string()),
        };
        let query = match parse_query(req.uri().query().unwrap_or("")) {
            Ok(q) => q,
            Err(e) => return self.refuse(&pending, StatusCode::BAD_REQUEST, None, &e.to_string()),
        };
        // Frameworks run the method a header or `_method` parameter names in
        // place of the request's: the policy decided the request's.
        if let Some(other) = method_override(req.method().as_str(), req.headers(), &query) {
            let why = format!(
                "the request asks the backend to run {other} in place of {} (a method override), which Gatehouse does not accept",
                req.method()
            );
            return self.refuse(&pending, StatusCode::BAD_REQUEST, None, &why);
        }
        // The same for the path: IIS's URL Rewrite and Symfony route by
        // `X-Original-URL` / `X-Rewrite-URL` in place of the request's path,
        // which is what the policy decided.
        if let Some(h) = PATH_OVERRIDES.iter().find(|h| req.headers().contains_key(**h)) {
            let why =
                format!("the request names another path in {h} (a path override), which Gatehouse does not accept");
            return self.refuse(&pending, StatusCode::BAD_REQUEST, None, &why);
        }
        let body_len = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let has_body = !hyper::body::Body::is_end_stream(req.body());
        let snapshot = agent.snapshot.load_full();
        let grants = agent.grant_rules.load();
        let ask = HttpRequest {
            method: req.method().as_str(),
            path: &path,
            query: &query,
            headers: req.headers(),
            body_len,
            has_body,
        };
        let decision = snapshot.policy.decide_http_with(
            &self.ctx.principal,
            &crate::policy::Request { backend: &self.ctx.backend.name, statement: None, now: jiff::Timestamp::now() },
            &ask,
            &grants,
        );
        pending.rule = decision.rule.as_ref().map(ToString::to_string);
        let held = decision.verdict == Verdict::NeedsApproval;
        if decision.verdict != Verdict::Allow && !held {
            let why = decision.reason().into_owned();
            return self.refuse(&pending, StatusCode::FORBIDDEN, Some(&decision), &why);
        }
        let rule = decision
            .rule
            .as_ref()
            .and_then(|n| snapshot.policy.rules.iter().chain(grants.iter()).find(|r| &r.name == n))
            .cloned();
        let Some(rule) = rule else {
            return self.refuse(&pending, StatusCode::FORBIDDEN, Some(&decision), "the allowing rule is gone");
        };
        let mut req = req.map(hold::ClientBody::Streaming);
        if held {
            let Some(approval) = rule.approval.as_ref() else {
                return self.refuse(&pending, StatusCode::FORBIDDEN, Some(&decision), "the approval rule is gone");
            };
            // The body is read first: the approvers decide on it, and it is
            // what goes upstream once they approve.
            let (head, body) = req.into_parts();
            let body = match hold::read_body(body, &hold::HELD_KIB).await {
                Ok(b) => b,
                Err((status, why)) => return self.refuse(&pending, status, Some(&decision), &why),
            };
            let note = hold::body_note(&body.bytes);
            match hold::hold(&self.ctx, approval, &decision, &pending.method, &pending.target, note).await {
                Ok(note) => pending.reason = Some(note),
                Err(why) => {
                    let why = format!("this request was held for approval and {why}");
                    return self.refuse(&pending, StatusCode::FORBIDDEN, Some(&decision), &why);
                }
            }
            req = Request::from_parts(head, body.into());
        }
        pending.decision = crate::audit::Verdict::Allow;
        // Masking: the profile must exist (fail closed), and the backend is
        // asked only for codings the pipeline can undo.
        let mask = match decision.mask.as_deref() {
            None => None,
            Some(name) => match snapshot.policy.mask(name) {
                Some(p) => Some((p.clone(), snapshot.policy.mask_fields.get(name).cloned())),
                None => {
                    return self.bad_gateway(&pending, "the rule's masking profile is unavailable (fail closed)");
                }
            },
        };
        // An upgrade to a protocol Gatehouse does not relay (`h2c` above all:
        // see `relayable_upgrade`) is not passed on; the request is served as
        // HTTP/1.1, as a server that ignores `Upgrade` would serve it, and the
        // record says so.
        let (asked, ignored): (Vec<String>, Vec<String>) = if is_upgrade(req.headers()) {
            upgrade_protocols(req.headers()).into_iter().partition(|p| relayable_upgrade(p))
        } else {
            (Vec::new(), Vec::new())
        };
        if !ignored.is_empty() {
            let note = format!(
                "the client's upgrade to {} was not passed on (only websocket, SPDY/3.1 and tcp upgrades are relayed)",
                ignored.join(", ")
            );
            // After an approval's note, if there is one.
            pending.reason = Some(pending.reason.take().map_or(note.clone(), |r| format!("{r}; {note}")));
        }
        let upgrade = !asked.is_empty();
        if upgrade && mask.is_some() {
            // A WebSocket's (or any upgraded protocol's) frames are not masked:
            // the connection would carry the backend's data as it is.
            let why = "a connection upgrade (WebSocket) cannot be masked: refused on a masked rule";
            return self.refuse(&pending, StatusCode::FORBIDDEN, None, why);
        }
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        strip_hop_by_hop(&mut parts.headers, upgrade);
        if upgrade
            && !ignored.is_empty()
            && let Ok(v) = HeaderValue::from_str(&asked.join(", "))
        {
            parts.headers.insert(header::UPGRADE, v);
        }
        let mut cred_note = Vec::new();
        let claims = strip_client_claims(&mut parts.headers);
        if !claims.is_empty() {
            cred_note.push(format!("client {} dropped", claims.join(", ")));
        }
        if !rule.http.pass_client_auth {
            for h in [header::AUTHORIZATION, header::COOKIE] {
                if parts.headers.remove(&h).is_some() {
                    cred_note.push(format!("client {h} stripped"));
                }
            }
        }
        // Every response of a backend that holds a credential is searched for
        // it, whether or not this request carried it: a backend that keeps
        // requests (a request log, a stored webhook) would hand an earlier
        // request's credential to one that sent the client's own.
        let mut scrub = None;
        let mut injected = false;
        match self.held().await {
            Ok(None) => {}
            Ok(Some(held)) => {
                let client_sent = parts.headers.contains_key(&held.name);
                if !(rule.http.pass_client_auth && client_sent) {
                    parts.headers.insert(held.name.clone(), held.value.clone());
                    cred_note.push(format!("{} injected", held.label));
                    injected = true;
                    // Kubernetes impersonation (`Impersonate-User: …`, `-Group`,
                    // `-Uid`, `-Extra-*`) under the held credential would act as
                    // someone else with that credential's right to impersonate:
                    // the client's are dropped.
                    let asked: Vec<HeaderName> =
                        parts.headers.keys().filter(|k| k.as_str().starts_with("impersonate-")).cloned().collect();
                    if !asked.is_empty() {
                        for k in &asked {
                            parts.headers.remove(k);
                        }
                        cred_note.push("client impersonation headers stripped".into());
                    }
                }
                scrub = held.needles.clone();
            }
            Err(e) => {
                pending.credentials = Some("held credential unavailable".into());
                return self.bad_gateway(&pending, &format!("the backend's held credential is unavailable: {e}"));
            }
        }
        pending.credentials = (!cred_note.is_empty()).then(|| cred_note.join("; "));
        if mask.is_some() || scrub.is_some() {
            // The body is masked, or searched for the held credential (a
            // backend that echoes requests would hand it over): only codings
            // the pipeline can undo, and no byte ranges, whose fragments no
            // search or field rule would recognise.
            restrict_accept_encoding(&mut parts.headers);
            // A byte range of a body is masked without what comes before it
            // (a JSON fragment has no field names to match, a card split over two
            // ranges no detector sees whole): masked rules get the whole body.
            parts.headers.remove(header::RANGE);
            parts.headers.remove(header::IF_RANGE);
            // (Apache still honours the pre-standard spelling.)
            parts.headers.remove("request-range");
            // An upgraded connection is searched for the held credential as
            // its bytes pass (ws.rs `Blanker`): no permessage-deflate, which
            // would hide a copy inside compressed frames.
            if upgrade {
                parts.headers.remove(header::SEC_WEBSOCKET_EXTENSIONS);
            }
        }
        if !parts.headers.contains_key(header::HOST)
            && let Some(h) = parts.uri.authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            parts.headers.insert(header::HOST, h);
        }
        let origin = parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
        parts.uri = match origin.parse() {
            Ok(u) => u,
            Err(_) => return self.refuse(&pending, StatusCode::BAD_REQUEST, None, "the request target does not parse"),
        };
        parts.version = Version::HTTP_11;
        let is_head = parts.method == Method::HEAD;
        let req_summary: Arc<std::sync::Mutex<Option<Summary>>> = Arc::default();
        let slot = req_summary.clone();
        let req_body = Piped::new(
            body,
            None,
            rule.http.max_body,
            cap,
            true,
            Box::new(move |s| *crate::live::lock(&slot) = Some(s)),
        );
        let up_req = Request::from_parts(parts, UpBody::new(req_body));
        let resp = self.pool.send(up_req).await;
        let take_req = || crate::live::lock(&req_summary).take().unwrap_or_default();
        let mut resp = match resp {
            Ok(r) => r,
            Err(e) => {
                let req = take_req();
                if req.error.as_deref().is_some_and(|e| e.contains("max_body")) {
                    pending.decision = crate::audit::Verdict::Deny;
                    pending.reason = req.error.clone();
                    let msg = req.error.clone().unwrap_or_default();
                    pending.record(&agent.audit, Some(413), vec![], req, Summary::default(), None);
                    return json_error(StatusCode::PAYLOAD_TOO_LARGE, pending.rule.as_deref(), &msg, self.ctx.id);
                }
                if let UpstreamError::UserLimit(why) = &e {
                    // The user's own connections are the limit, not the backend: 503, and the client may retry.
                    return self.refuse(&pending, StatusCode::SERVICE_UNAVAILABLE, None, why);
                }
                return self.bad_gateway(&pending, &e.to_string());
            }
        };
        let status = resp.status();
        // The backend's own reason phrase is not passed on (the client gets the
        // status code's standard one): nothing searches or masks it, and a
        // backend could echo the held credential there.
        resp.extensions_mut().remove::<hyper::ext::ReasonPhrase>();
        if status == StatusCode::SWITCHING_PROTOCOLS {
            // The backend may switch only to a protocol the client asked for
            // and Gatehouse relays (above): one that switched unasked, or to
            // something else, is not relayed.
            let switched = upgrade_protocols(resp.headers());
            let agreed =
                matches!(&switched[..], [p] if relayable_upgrade(p) && asked.iter().any(|a| a.eq_ignore_ascii_case(p)));
            if !agreed {
                let why = format!(
                    "the backend switched protocols to {:?}, which the client did not ask for or Gatehouse does not relay",
                    switched.join(", ")
                );
                return self.bad_gateway(&pending, &why);
            }
            if let Some(n) = &scrub {
                scrub_headers(n, resp.headers_mut());
            }
            // As for any response (below): a cookie set in answer to the
            // held credential stays here.
            if injected {
                pending.drop_backend_cookies(resp.headers_mut());
            }
            let headers = resp.headers().clone();
            let server_upgrade = hyper::upgrade::on(&mut resp);
            // The upgraded stream stays a connection of this user's for as long as it is relayed.
            let hold = resp.extensions_mut().remove::<upstream::SlotHold>();
            pending.record(&agent.audit, Some(101), header_list(&headers), take_req(), Summary::default(), None);
            if let Some(client_upgrade) = client_upgrade {
                let task = ws::relay(
                    crate::audit::Audit::clone(&agent.audit),
                    self.ctx.id,
                    seq,
                    cap,
                    (client_upgrade, server_upgrade),
                    self.ctx.live.cut.clone(),
                    headers.get(header::UPGRADE).is_some_and(|u| u.as_bytes().eq_ignore_ascii_case(b"websocket")),
                    scrub.clone(),
                    hold,
                );
                crate::live::lock(&self.upgraded).push(task);
            }
            let mut out = Response::new(empty());
            *out.status_mut() = status;
            *out.headers_mut() = headers;
            return out;
        }
        // A transfer coding besides chunked (`gzip, chunked`) would reach the
        // client as coded bytes with nothing saying so, past every search and
        // mask: refused.
        if let Some(coding) = transfer_coding(resp.headers()) {
            let why = format!("the response's transfer coding {coding} cannot be read; refused");
            return self.bad_gateway(&pending, &why);
        }
        strip_hop_by_hop(resp.headers_mut(), false);
        if injected {
            pending.drop_backend_cookies(resp.headers_mut());
        }
        let mut scrubbed_headers = 0;
        if let Some(n) = &scrub {
            if status == StatusCode::PARTIAL_CONTENT {
                return self
                    .bad_gateway(&pending, "a partial body (206) cannot be searched for the held credential; refused");
            }
            scrubbed_headers = scrub_headers(n, resp.headers_mut());
        }
        // On a masked rule the response's header values go through the
        // detectors too: a download's file name, a redirect or a link can
        // carry what the body masks.
        let mut masked_headers = crate::mask::Counts::default();
        if let Some((profile, _)) = &mask {
            mask_headers(profile, resp.headers_mut(), &mut masked_headers);
        }
        let transform = match &mask {
            None => match &scrub {
                None => None,
                Some(n) => {
                    let coding = match content_coding(resp.headers()) {
                        Ok(c) => c,
                        Err(name) => {
                            let why = format!(
                                "the response's content encoding {name} cannot be searched for the held credential; refused"
                            );
                            return self.bad_gateway(&pending, &why);
                        }
                    };
                    if !is_head {
                        resp.headers_mut().remove(header::CONTENT_LENGTH);
                    }
                    Some(Transform::scrub_only(coding, n.clone()))
                }
            },
            Some(_) if status == StatusCode::PARTIAL_CONTENT => {
                return self.bad_gateway(&pending, "a partial body (206) cannot be masked; refused");
            }
            Some((profile, fields)) => {
                // Two Content-Type fields: the body is read as the first says, a
                // client may decode it as the last says.
                if resp.headers().get_all(header::CONTENT_TYPE).iter().count() > 1 {
                    return self.bad_gateway(&pending, "the response has more than one Content-Type; refused");
                }
                let ct = resp.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
                let Some(kind) = Kind::of(ct) else {
                    let why = format!(
                        "the response's content type {} cannot be masked (rule {}); refused",
                        ct.unwrap_or("(none)"),
                        rule.name
                    );
                    return self.bad_gateway(&pending, &why);
                };
                // Field rules name JSON fields: the same data as CSV, XML or a
                // form (which the client can often ask for) would reach it with
                // the detectors alone.
                if fields.is_some() && kind != Kind::Json {
                    let why = format!(
                        "the response's content type {} is not JSON, and the masking profile's field rules (rule {}) apply to JSON only; refused",
                        ct.unwrap_or("(none)"),
                        rule.name
                    );
                    return self.bad_gateway(&pending, &why);
                }
                let coding = match content_coding(resp.headers()) {
                    Ok(c) => c,
                    Err(name) => {
                        let why = format!("the response's content encoding {name} cannot be masked; refused");
                        return self.bad_gateway(&pending, &why);
                    }
                };
                // A charset the client decodes into other text than the bytes show
                // (UTF-16, UTF-7, EBCDIC) would carry values past the detectors.
                let utf8 = match body::charset(ct) {
                    Ok(u) => u,
                    Err(name) => {
                        let why = format!("the response's charset {name} cannot be masked; refused");
                        return self.bad_gateway(&pending, &why);
                    }
                };
                let markup = body::is_markup(ct);
                if !is_head {
                    resp.headers_mut().remove(header::CONTENT_LENGTH);
                }
                let t = Transform::new(kind, coding, profile.clone(), fields.clone()).with_scrub(scrub.clone());
                let t = if utf8 { t } else { t.single_byte_text() };
                Some(if markup { t.markup_text() } else { t })
            }
        };
        let (parts, body) = resp.into_parts();
        let audit = agent.audit.clone();
        let headers = header_list(&parts.headers);
        let code = parts.status.as_u16();
        let sink = Box::new(move |mut s: Summary| {
            let req = crate::live::lock(&req_summary).take().unwrap_or_default();
            s.scrubbed += scrubbed_headers;
            s.masked.merge(&masked_headers);
            if s.scrubbed > 0 {
                warn!(
                    seq = pending.seq,
                    removed = s.scrubbed,
                    "the backend's response carried the held credential: removed"
                );
            }
            pending.record(&audit, Some(code), headers, req, s, None);
        });
        let piped = Piped::new(body, transform, None, cap, false, sink);
        Response::from_parts(parts, Out::new(piped))
    }

    /// The backend's held credential, read once per session.
    async fn held(&self) -> Result<Option<Held>, String> {
        self.held
            .get_or_init(|| async {
                let Some(c) = self.ctx.backend.http.as_ref().and_then(|h| h.credentials.clone()) else {
                    return Ok(None);
                };
                tokio::task::spawn_blocking(move || read_held(&c))
                    .await
                    .map_err(|e| format!("reading the credential: {e}"))?
                    .map(Some)
            })
            .await
            .clone()
    }

    fn refuse(&self, p: &Pending, status: StatusCode, d: Option<&Decision>, why: &str) -> Response<Out> {
        let mut p = p.clone();
        p.decision = crate::audit::Verdict::Deny;
        p.reason = Some(why.to_owned());
        p.record(&self.ctx.agent.audit, Some(status.as_u16()), vec![], Summary::default(), Summary::default(), None);
        let rule = d.and_then(|d| d.rule.as_ref()).map(|r| r.as_str());
        json_error(status, rule, why, self.ctx.id)
    }

    fn bad_gateway(&self, p: &Pending, why: &str) -> Response<Out> {
        warn!(seq = p.seq, "{why}");
        p.record(
            &self.ctx.agent.audit,
            Some(502),
            vec![],
            Summary::default(),
            Summary::default(),
            Some(why.to_owned()),
        );
        json_error(StatusCode::BAD_GATEWAY, p.rule.as_deref(), why, self.ctx.id)
    }
}

/// Reads a held credential's file (root-only, checked) into the header it is sent in.
fn read_held(c: &HttpCredentials) -> Result<Held, String> {
    let read = |path: &std::path::Path, what: &'static str| -> Result<Secret, String> {
        crate::secrets::read_secret(path, what).map(|s| s.first_line()).map_err(|e| e.to_string())
    };
    let value = |bytes: &[u8]| -> Result<HeaderValue, String> {
        let mut v =
            HeaderValue::from_bytes(bytes).map_err(|_| "the credential is not a valid header value".to_owned())?;
        v.set_sensitive(true);
        Ok(v)
    };
    match c {
        HttpCredentials::Bearer { token_file } => {
            let t = read(token_file, "bearer_file")?;
            let mut v = b"Bearer ".to_vec();
            v.extend_from_slice(t.expose());
            let needles = needles(&v, &[t.expose()]);
            let out = Held { name: header::AUTHORIZATION, value: value(&v)?, label: "bearer token", needles };
            zeroize::Zeroize::zeroize(&mut v);
            Ok(out)
        }
        HttpCredentials::Basic { user, password_file } => {
            use base64::Engine as _;
            let pw = read(password_file, "password_file")?;
            let mut plain = format!("{user}:").into_bytes();
            plain.extend_from_slice(pw.expose());
            let mut v = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(&plain)).into_bytes();
            zeroize::Zeroize::zeroize(&mut plain);
            let needles = needles(&v, &[v.get(6..).unwrap_or_default(), pw.expose()]);
            let out = Held { name: header::AUTHORIZATION, value: value(&v)?, label: "basic auth", needles };
            zeroize::Zeroize::zeroize(&mut v);
            Ok(out)
        }
        HttpCredentials::Header { name, value_file } => {
            let t = read(value_file, "value_file")?;
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|e| e.to_string())?;
            let needles = needles(t.expose(), &[]);
            Ok(Held { name, value: value(t.expose())?, label: "header credential", needles })
        }
    }
}

/// Request headers some servers route by in place of the request's path.
const PATH_OVERRIDES: &[&str] = &["x-original-url", "x-rewrite-url", "x-original-uri"];

/// Response headers that describe the message, not data: left to themselves.
const STRUCTURAL_HEADERS: &[HeaderName] = &[
    header::CONTENT_TYPE,
    header::CONTENT_LENGTH,
    header::CONTENT_ENCODING,
    header::TRANSFER_ENCODING,
    header::DATE,
    header::LAST_MODIFIED,
    header::EXPIRES,
    header::ETAG,
    header::CACHE_CONTROL,
    header::VARY,
    header::AGE,
    header::ACCEPT_RANGES,
    header::SERVER,
];

/// Every other header value through the profile's detectors; a value that
/// masking makes unfit for a header is replaced whole.
fn mask_headers(profile: &crate::mask::Profile, headers: &mut HeaderMap, counts: &mut crate::mask::Counts) {
    for (name, value) in headers.iter_mut() {
        if STRUCTURAL_HEADERS.contains(name) {
            continue;
        }
        let mut out = Vec::new();
        match profile.scan(value.as_bytes(), &mut out, counts) {
            crate::mask::MaskOutput::Unchanged => {}
            crate::mask::MaskOutput::Written => {
                *value = HeaderValue::from_bytes(&out).unwrap_or(HeaderValue::from_static("****"));
            }
            crate::mask::MaskOutput::Null => *value = HeaderValue::from_static("****"),
        }
    }
}

/// The content coding of a body, from every Content-Encoding field (a
/// backend may send several, and the client applies them all): `identity`
/// parts drop out; more than one coding left is refused like an unknown one.
fn content_coding(headers: &HeaderMap) -> Result<Option<Coding>, String> {
    let codings: Vec<String> =
        list_tokens(headers, &header::CONTENT_ENCODING).into_iter().filter(|c| c != "identity").collect();
    match codings.as_slice() {
        [] => Ok(None),
        [one] => Coding::of(Some(one)),
        several => Err(several.join(", ")),
    }
}

/// The first transfer coding other than `chunked` a message names, if any.
fn transfer_coding(headers: &HeaderMap) -> Option<String> {
    list_tokens(headers, &header::TRANSFER_ENCODING).into_iter().find(|c| c != "chunked")
}

/// The comma-separated tokens of every field `name` has, lowercased, empty ones left out.
fn list_tokens(headers: &HeaderMap, name: &HeaderName) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .flat_map(|v| {
            String::from_utf8_lossy(v.as_bytes()).split(',').map(|c| c.trim().to_ascii_lowercase()).collect::<Vec<_>>()
        })
        .filter(|c| !c.is_empty())
        .collect()
}

/// Replaces the held credential in response header values; how many times.
fn scrub_headers(n: &body::Needles, headers: &mut HeaderMap) -> u64 {
    let mut hits = 0;
    for v in headers.values_mut() {
        let (clean, found) = n.replace_all(v.as_bytes());
        if found > 0 {
            *v = HeaderValue::from_bytes(&clean).unwrap_or(HeaderValue::from_static("****"));
            hits += found;
        }
    }
    hits
}

/// A request for another host than the backend's is refused: the backend
/// chose the rules and the held credential, and an upstream routing on `Host`
/// (an ingress or a virtual-hosting server on the backend's address) must not
/// take them to another service (domain fronting). The backend's names are
/// its `server_names`, else its `tls_server_name` and `host` name; its
/// address (and the address the client dialed) always serve. A request
/// without a host (HTTP/1.0) names nothing to route on, except on a backend
/// told apart by SNI, which must be named.
fn misdirected(b: &Backend, dialed: SocketAddr, host: Option<&str>) -> Option<String> {
    let h = b.http.as_ref()?;
    let sni = h.tls == HttpTls::Terminate && !h.server_names.is_empty();
    let names: Vec<&str> = if h.server_names.is_empty() {
        let host_name = match &b.target {
            crate::policy::Target::Host { host, .. } => Some(host.as_str()),
            crate::policy::Target::Addr(_) => None,
        };
        b.tls_server_name.as_deref().into_iter().chain(host_name).collect()
    } else {
        h.server_names.iter().map(String::as_str).collect()
    };
    let Some(host) = host else {
        return sni.then(|| format!("the request names no host; this backend serves {}", names.join(", ")));
    };
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').filter(|(_, p)| p.parse::<u16>().is_ok()).map_or(host, |(n, _)| n),
    };
    let own_ip = match &b.target {
        crate::policy::Target::Addr(a) => a.ip().to_string() == name,
        crate::policy::Target::Host { .. } => false,
    } || dialed.ip().to_string() == name;
    if own_ip || names.iter().any(|n| n.trim_end_matches('.').eq_ignore_ascii_case(name.trim_end_matches('.'))) {
        return None;
    }
    let serves = match &b.target {
        crate::policy::Target::Addr(a) => std::iter::once(a.ip().to_string())
            .chain(names.iter().map(|n| (*n).to_owned()))
            .collect::<Vec<_>>()
            .join(", "),
        crate::policy::Target::Host { .. } => names.join(", "),
    };
    Some(format!(
        "the request is for host {host:?}, which this backend does not serve ({serves}): an upstream routing on Host would take this rule and the backend's credential to another service (operators: list the names clients use in the backend's server_names)"
    ))
}

/// The hosts a request names besides `Host`, which proxies and applications
/// behind one may read in its place (`X-Forwarded-Host`, `X-Host`,
/// `X-Original-Host`, `X-Forwarded-Server`, `Forwarded: host=`), every value
/// of each (comma-separated lists included); `_` in a name as `-` (CGI reads
/// `X_Forwarded_Host` as `HTTP_X_FORWARDED_HOST`).
fn forwarded_hosts(headers: &HeaderMap) -> Vec<String> {
    const LISTS: [&str; 4] = ["x-forwarded-host", "x-host", "x-original-host", "x-forwarded-server"];
    let mut out = Vec::new();
    for (name, v) in headers {
        let name = name.as_str().replace('_', "-");
        let v = String::from_utf8_lossy(v.as_bytes());
        if LISTS.contains(&name.as_str()) {
            out.extend(v.split(',').map(|h| h.trim().to_owned()).filter(|h| !h.is_empty()));
        } else if name == "forwarded" {
            for pair in v.split([',', ';']) {
                if let Some((k, h)) = pair.split_once('=')
                    && k.trim().eq_ignore_ascii_case("host")
                {
                    out.push(h.trim().trim_matches('"').to_owned());
                }
            }
        }
    }
    out
}

fn empty() -> Out {
    Out::new(http_body_util::Empty::new().map_err(|never| match never {}))
}

/// Refuses a connection in HTTP, for clients that speak plain HTTP to the
/// agent (`tls = "off"` or `"upstream"`): each request on it is answered
/// with the refusal as JSON — `403`, or `503` past `max_connections_per_user`
/// (clients read it as "retry later") — and the connection closes; within
/// 5 s, so a client that sends nothing does not keep it.
pub async fn reject(client: tokio::net::TcpStream, id: SessionId, reason: &str, refusal: ConnectRefusal) {
    let status = match refusal {
        ConnectRefusal::Denied => StatusCode::FORBIDDEN,
        ConnectRefusal::TooManyConnections => StatusCode::SERVICE_UNAVAILABLE,
    };
    let why = format!("Gatehouse refused this connection: {reason}");
    let svc = hyper::service::service_fn(move |_req: Request<Incoming>| {
        let mut r = json_error(status, None, &why, id);
        r.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        async move { Ok::<_, Infallible>(r) }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder.http1().keep_alive(false);
    let conn = builder.serve_connection(TokioIo::new(client), svc);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), conn).await;
}

/// A refusal or failure in the client's protocol: a JSON body naming the rule.
fn json_error(status: StatusCode, rule: Option<&str>, why: &str, session: SessionId) -> Response<Out> {
    let body = serde_json::json!({
        "error": status.canonical_reason().unwrap_or("error").to_lowercase(),
        "status": status.as_u16(),
        "rule": rule,
        "reason": why,
        "session": session.to_string(),
        "by": "gatehouse",
    });
    let bytes = serde_json::to_vec(&body).unwrap_or_default();
    let mut r = Response::new(Out::new(Full::new(Bytes::from(bytes)).map_err(|never| match never {})));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// The client's stream, counting bytes each way.
struct Counted<I> {
    inner: I,
    up: Arc<AtomicU64>,
    down: Arc<AtomicU64>,
}

impl<I: AsyncRead + Unpin> AsyncRead for Counted<I> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before);
        self.up.fetch_add(n as u64, Ordering::Relaxed);
        r
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Counted<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            self.down.fetch_add(*n as u64, Ordering::Relaxed);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = &r {
            self.down.fetch_add(*n as u64, Ordering::Relaxed);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A method the request asks the backend to run in place of its own
/// (`method`): any value of `X-HTTP-Method-Override`, `X-HTTP-Method`,
/// `X-Method-Override` or of a `_method` query parameter (Rails, Laravel,
/// Express's method-override, Google APIs honour them) that differs from it.
/// Every value counts: a backend may read the last of two where a check of
/// the first would pass.
fn method_override<'a>(method: &str, headers: &'a HeaderMap, query: &'a [(String, String)]) -> Option<&'a str> {
    let headers = ["x-http-method-override", "x-http-method", "x-method-override"]
        .iter()
        .flat_map(|h| headers.get_all(*h).iter())
        .map(|v| v.to_str().unwrap_or("(not text)"));
    let params = query.iter().filter(|(k, _)| k.eq_ignore_ascii_case("_method")).map(|(_, v)| v.as_str());
    headers.chain(params).find(|v| !v.trim().eq_ignore_ascii_case(method))
}
