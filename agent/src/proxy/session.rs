//! One accepted connection, from the kernel's record to the protocol
//! adapter: confirm the record, route, decide, record, relay.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::net::TcpStream;
use tracing::{Instrument, error, info, info_span, warn};

use super::refusals::{Admit, RefusalKey, RefusalKind};
use super::{Agent, LiveSession, Route, lock, write_aggregates};
use crate::approval::Desk as _;
use crate::audit::{self, SessionClose, SessionOpen};
use crate::identity::Peer;
use crate::live::ConnectRefusal;
use crate::policy::Protocol;
use crate::protocol::tcp;
use crate::redirect::Claim;
use crate::types::{ClientAddr, OrigDst, SessionId, key_addr};

/// `ahead`: this session's opening will follow (see
/// [`audit::OpeningAhead`]); let go before the opening is sent, and before
/// anything that waits on the client.
pub(super) async fn session(agent: Arc<Agent>, client: TcpStream, peer: ClientAddr, ahead: audit::OpeningAhead) {
    let id = SessionId::new();
    agent.counters.total.fetch_add(1, Ordering::Relaxed);
    agent.counters.active.fetch_add(1, Ordering::Relaxed);
    let span = info_span!("session", id = %id, client = %peer);
    session_inner(&agent, client, peer, id, ahead).instrument(span).await;
    agent.counters.active.fetch_sub(1, Ordering::Relaxed);
}

async fn session_inner(
    agent: &Arc<Agent>,
    client: TcpStream,
    peer: ClientAddr,
    id: SessionId,
    ahead: audit::OpeningAhead,
) {
    let started_us = audit::now_us();
    let mut ahead = Some(ahead);
    let local = match client.local_addr() {
        Ok(l) => l,
        Err(e) => {
            warn!(error = %e, "accepted connection has no local address; dropped");
            return;
        }
    };
    let bare = |uid: Option<u32>, reason: String| SessionOpen {
        id,
        started_us,
        uid,
        user: None,
        gid: None,
        pid: None,
        comm: None,
        cgroup_id: None,
        client: peer.to_string(),
        backend: None,
        orig_dst: None,
        protocol: None,
        decision: crate::audit::Verdict::Deny,
        rule: None,
        reason,
        oidc: None,
    };
    let handoff = match agent.redirect.claim(peer.0, local) {
        Claim::Verified(h) => h,
        Claim::NotRedirected { owner } => {
            agent.counters.not_redirected.fetch_add(1, Ordering::Relaxed);
            let uid = owner.map(|o| o.uid);
            if let Some(held) = agent.accept_log.admit() {
                warn!(uid = ?uid, held_back = held, "connection not redirected by the kernel: refused (nobody may dial the proxy port directly)");
            }
            let rec =
                bare(uid, "not redirected by the kernel: direct connections to the proxy port are refused".into());
            let key = RefusalKey { uid, kind: RefusalKind::NotRedirected, backend: None };
            drop(ahead.take());
            refuse(agent, key, rec, client).await;
            return;
        }
        Claim::Mismatch { owner, recorded_uid, why } => {
            agent.counters.unverified.fetch_add(1, Ordering::Relaxed);
            let uid = owner.map(|o| o.uid);
            warn!(uid = ?uid, recorded_uid, "kernel record not confirmed for this connection: refused ({why})");
            let rec = bare(
                uid,
                format!(
                    "kernel record not confirmed for this connection: {why}; the record named uid {recorded_uid} and is not trusted for another socket"
                ),
            );
            let key = RefusalKey { uid, kind: RefusalKind::Unverified, backend: None };
            drop(ahead.take());
            refuse(agent, key, rec, client).await;
            return;
        }
    };
    let who = Peer::from(&handoff);
    let orig = OrigDst(key_addr(&handoff.orig));
    let snapshot = agent.snapshot.load_full();
    let principal = agent.resolver.principal_for(who.uid, snapshot.policy.identity.as_ref()).await;
    let route = agent.redirect.with_interfaces(|ifs| snapshot.route(orig.0, ifs));
    let (backend, upstream) = match &route {
        Route::Backend { name, upstream } => (snapshot.policy.backend(name), Some(*upstream)),
        Route::Ambiguous(_) | Route::Unknown => (None, None),
    };
    // Several HTTPS backends on one address: the TLS server name picks one.
    // That waits on the client: its opening is no longer counted on.
    let (backend, sni_refused) = match backend {
        Some(b) => match crate::protocol::http::sni::pick(&snapshot.policy, b, &client, || drop(ahead.take())).await {
            Ok(b) => (Some(b), None),
            Err(why) => (None, Some(why)),
        },
        None => (None, None),
    };
    let (decision, backend_name, protocol) = match backend {
        Some(b) => (
            snapshot.policy.decide_connect_with(&principal, &b.name, jiff::Timestamp::now(), &agent.grant_rules.load()),
            Some(b.name.clone()),
            Some(b.protocol),
        ),
        None => (
            crate::policy::Decision::refuse(match &route {
                _ if sni_refused.is_some() => sni_refused.clone().unwrap_or_default(),
                Route::Ambiguous(names) => format!(
                    "{orig} is a local address of several protected backends on port {} ({}): refused, dial the backend's own address",
                    orig.0.port(),
                    names.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
                ),
                _ => format!("{orig} is no longer a protected backend in the current policy"),
            }),
            None,
            None,
        ),
    };
    // Fail closed: nothing starts while the audit store cannot be written.
    let decision = match agent.audit.failure() {
        Some(why) if agent.audit.mode() == audit::Mode::Strict => {
            crate::policy::Decision::refuse(format!("the audit store cannot be written ({why}); no session may start"))
        }
        _ => decision,
    };
    // One more connection for this user, within `max_connections_per_user`.
    // An HTTP session lends its count to the connections its pool opens to
    // the backend and counts each one past the first (`protocol::http::upstream`):
    // one while idle, so idle client connections are bounded too.
    // HTTPS that Gatehouse does not terminate is opaque bytes.
    let passthrough = backend.is_some_and(|b| {
        b.protocol == Protocol::Http
            && b.http.as_ref().is_some_and(|h| h.tls == crate::policy::http::HttpTls::Passthrough)
    });
    let mut user_slot = None;
    let mut refusal = ConnectRefusal::Denied;
    let decision = if decision.allowed() || decision.verdict == crate::policy::Verdict::NeedsApproval {
        match agent.per_user.take(who.uid.0) {
            Ok(slot) => {
                user_slot = slot;
                decision
            }
            Err(why) => {
                refusal = ConnectRefusal::TooManyConnections;
                crate::policy::Decision::refuse(why)
            }
        }
    } else {
        decision
    };
    let rec = SessionOpen {
        id,
        started_us,
        uid: Some(who.uid.0),
        user: principal.user.as_ref().map(|u| u.to_string()),
        gid: Some(who.gid),
        pid: Some(who.pid),
        comm: Some(who.comm.clone()),
        cgroup_id: Some(who.cgroup_id),
        client: peer.to_string(),
        backend: backend_name.as_ref().map(ToString::to_string),
        orig_dst: Some(orig.to_string()),
        protocol: protocol.map(|p| format!("{p:?}").to_lowercase()),
        decision: decision.verdict.into(),
        rule: decision.rule.as_ref().map(ToString::to_string),
        reason: decision.reason().into_owned(),
        oidc: principal.oidc.clone(),
    };
    let held = decision.verdict == crate::policy::Verdict::NeedsApproval;
    let (Some(backend_name), Some(upstream), true) = (backend_name.clone(), upstream, decision.allowed() || held)
    else {
        agent.counters.denied.fetch_add(1, Ordering::Relaxed);
        info!(user = %principal, uid = %who.uid, pid = who.pid, comm = %who.comm, dst = %orig, rule = decision.rule_label(), "refused: {}", decision.reason());
        let key = RefusalKey { uid: Some(who.uid.0), kind: RefusalKind::Denied, backend: rec.backend.clone() };
        let (admit, closed) = agent.refusals.admit(key, &rec);
        write_aggregates(agent, closed);
        let recorded = admit == Admit::Record;
        if protocol == Some(Protocol::Postgres) {
            // Its record ends with how the refusal went (a cancel request is honoured, see `refuse_in_protocol`).
            drop(ahead.take());
            if recorded {
                record_open(agent, rec).await;
            }
            let end =
                Box::pin(refuse_in_protocol(agent, client, backend, who.uid, id, &decision.reason(), refusal)).await;
            if recorded {
                close_record(agent, id, 0, 0, end);
            }
        } else {
            drop(ahead.take());
            if recorded {
                record_refusal(agent, rec).await;
            }
            Box::pin(refuse_in_protocol(agent, client, backend, who.uid, id, &decision.reason(), refusal)).await;
        }
        return;
    };
    // Strict: the session is on record before a byte reaches the backend.
    drop(ahead.take());
    if let Err(e) = agent.audit.open_session(rec).await {
        error!(error = %e, "cannot record the session: refused (fail closed)");
        return;
    }
    agent.counters.allowed.fetch_add(1, Ordering::Relaxed);
    info!(user = %principal, uid = %who.uid, pid = who.pid, comm = %who.comm, backend = %backend_name, dst = %orig, rule = decision.rule_label(), "allowed");

    let _ = client.set_nodelay(true);
    let protocol = protocol.unwrap_or(Protocol::Tcp);
    let live = Arc::new(LiveSession {
        principal: principal.clone(),
        backend: backend_name.clone(),
        protocol,
        rule: decision.rule.as_ref().map(ToString::to_string),
        cut: agent.cut.child_token(),
        cut_reason: std::sync::OnceLock::new(),
    });
    lock(&agent.live).insert(id, live.clone());
    // A login that needs an approval waits for it (PostgreSQL tells the client first).
    let connect_approval =
        held.then(|| open_connect_request(agent, &snapshot, &decision, &principal, id, &backend_name));
    let unopened = match connect_approval {
        Some(Some(Ok(w))) => Ok(Some(w)),
        Some(Some(Err(why))) => Err(why),
        Some(None) => Err("the approval rule is gone from the policy".to_owned()),
        None => Ok(None),
    };
    let connect_approval = match unopened {
        Ok(w) => w,
        Err(why) => {
            lock(&agent.live).remove(&id);
            let end =
                Box::pin(refuse_in_protocol(agent, client, backend, who.uid, id, &why, ConnectRefusal::Denied)).await;
            close_record(agent, id, 0, 0, format!("{end}: {why}"));
            return;
        }
    };
    let limit = decision.max_session.map(|max| {
        let live = live.clone();
        let rule = decision.rule_label().to_owned();
        tokio::spawn(async move {
            tokio::time::sleep(max).await;
            live.cut(format!("max_session of {max:?} reached (rule {rule})"));
        })
    });
    if protocol != Protocol::Postgres
        && let Some(w) = connect_approval.clone()
    {
        let state = w.clone().outcome(&agent.approvals, |t| agent.transition(t)).await;
        if !matches!(state, crate::approval::State::Approved { .. }) {
            lock(&agent.live).remove(&id);
            close_record(agent, id, 0, 0, format!("login not approved: {}", w.refusal(&state)));
            return;
        }
    }
    // Each protocol's future is boxed (here and in `refuse_in_protocol`):
    // inline, the session's task would be as large as the largest of them
    // (25 KB, PostgreSQL's relay) from its accept on, for every session of
    // any protocol; boxed, ≈ 5 KB plus the one protocol it serves. Idle
    // opaque TCP sessions went from 38 to 19 KiB of RSS each (`bench connect`).
    let out = match protocol {
        Protocol::Http if !passthrough => {
            let Some(backend) = snapshot.policy.backend(&backend_name).cloned() else { return };
            let ctx = crate::protocol::http::Ctx {
                agent: agent.clone(),
                id,
                principal: principal.clone(),
                backend,
                addr: upstream,
                live: live.clone(),
                user_slot: user_slot.take(),
            };
            Box::pin(crate::protocol::http::serve(ctx, client)).await
        }
        Protocol::Ssh => {
            let Some(backend) = snapshot.policy.backend(&backend_name).cloned() else { return };
            let mask = decision.mask.as_deref().and_then(|m| snapshot.policy.mask(m).cloned());
            if decision.mask.is_some() && mask.is_none() {
                lock(&agent.live).remove(&id);
                close_record(agent, id, 0, 0, "refused: masking profile unavailable (fail closed)".into());
                return;
            }
            let ctx = crate::protocol::ssh::Ctx {
                svc: Arc::new(agent.ssh_services()),
                id,
                principal: principal.clone(),
                backend,
                addr: upstream,
                live: live.clone(),
                as_user: decision.as_role.as_ref().map(ToString::to_string),
                mask,
                rule: decision.rule.clone(),
            };
            Box::pin(crate::protocol::ssh::serve(ctx, client)).await
        }
        Protocol::Tcp | Protocol::Http => match crate::live::connect_upstream(upstream, agent.settings.mark).await {
            Ok(upstream) => {
                let streams = audit::StreamRecorder::new(id, agent.settings.record_max_bytes, "session and direction");
                Box::pin(tcp::relay(
                    client,
                    upstream,
                    live.cut.clone(),
                    || live.reason(),
                    Some((&streams, &agent.audit)),
                ))
                .await
            }
            Err(e) => {
                warn!(error = %e, "backend unreachable");
                tcp::RelayOutcome { up: 0, down: 0, end: tcp::End::BackendError(format!("backend unreachable: {e}")) }
            }
        },
        Protocol::Mysql => {
            let Some(backend) = snapshot.policy.backend(&backend_name).cloned() else { return };
            let mask = decision.mask.as_deref().and_then(|m| snapshot.policy.mask(m).cloned());
            if decision.mask.is_some() && mask.is_none() {
                // A rule names a profile the policy lacks: never return unmasked results.
                lock(&agent.live).remove(&id);
                close_record(agent, id, 0, 0, "refused: masking profile unavailable (fail closed)".into());
                crate::protocol::mysql::reject(client, "masking profile unavailable", ConnectRefusal::Denied).await;
                return;
            }
            let ctx = crate::protocol::mysql::Ctx {
                svc: Arc::new(agent.mysql_services()),
                id,
                principal: principal.clone(),
                uid: who.uid,
                backend,
                addr: upstream,
                as_role: decision.as_role.clone(),
                mask,
                guard: decision.guard.clone(),
                record: snapshot.policy.record_options(decision.rule.as_ref()),
                live: live.clone(),
            };
            Box::pin(crate::protocol::mysql::serve(ctx, client)).await
        }
        Protocol::Postgres => {
            let Some(backend) = snapshot.policy.backend(&backend_name).cloned() else { return };
            let mask = decision.mask.as_deref().and_then(|m| snapshot.policy.mask(m).cloned());
            if decision.mask.is_some() && mask.is_none() {
                // A rule names a profile the policy lacks: never return unmasked results.
                lock(&agent.live).remove(&id);
                close_record(agent, id, 0, 0, "refused: masking profile unavailable (fail closed)".into());
                return;
            }
            let ctx = crate::protocol::postgres::Ctx {
                svc: Arc::new(agent.postgres_services()),
                id,
                principal: principal.clone(),
                uid: who.uid,
                backend,
                addr: upstream,
                as_role: decision.as_role.clone(),
                mask,
                guard: decision.guard.clone(),
                record: snapshot.policy.record_options(decision.rule.as_ref()),
                live: live.clone(),
                connect_approval,
            };
            Box::pin(crate::protocol::postgres::serve(ctx, client)).await
        }
    };
    lock(&agent.live).remove(&id);
    if let Some(l) = limit {
        l.abort();
    }
    let end = out.end.describe();
    info!(bytes_up = out.up, bytes_down = out.down, end = %end, "session closed");
    close_record(agent, id, out.up, out.down, end);
}

/// Says why a connection is refused in the client's own protocol where it
/// has one to say it in, else closes it; returns how it ended, for the
/// record. PostgreSQL: a FATAL after its startup (a cancel request for the
/// caller's own session is honoured instead); MySQL: an error packet in
/// place of the greeting; HTTP from a plain-HTTP client: each request
/// answered 403/503 (HTTPS the agent terminates or passes through cannot be
/// answered before a handshake: closed, as TCP and SSH are).
async fn refuse_in_protocol(
    agent: &Arc<Agent>,
    client: TcpStream,
    backend: Option<&crate::policy::Backend>,
    uid: crate::types::Uid,
    id: SessionId,
    why: &str,
    refusal: ConnectRefusal,
) -> String {
    use crate::policy::http::HttpTls;
    match backend {
        Some(b) if b.protocol == Protocol::Postgres => {
            crate::protocol::postgres::reject(&agent.postgres_services(), client, uid, why, refusal).await
        }
        Some(b) if b.protocol == Protocol::Mysql => {
            crate::protocol::mysql::reject(client, why, refusal).await;
            "refused".into()
        }
        Some(b)
            if b.protocol == Protocol::Http
                && b.http.as_ref().is_none_or(|h| matches!(h.tls, HttpTls::Off | HttpTls::Upstream)) =>
        {
            crate::protocol::http::reject(client, id, why, refusal).await;
            "refused".into()
        }
        _ => "refused".into(),
    }
}

/// Opens the request a held login waits for.
fn open_connect_request(
    agent: &Agent,
    snapshot: &crate::proxy::Snapshot,
    decision: &crate::policy::Decision,
    principal: &crate::identity::Principal,
    id: SessionId,
    backend: &crate::types::BackendName,
) -> Option<Result<crate::approval::Waiting, String>> {
    let rule = snapshot.policy.rules.iter().find(|r| Some(&r.name) == decision.rule.as_ref())?;
    let approval = rule.approval.as_ref()?;
    Some(agent.request(
        crate::approval::Subject::Connect {
            session: id.to_string(),
            backend: backend.to_string(),
            rule: rule.name.to_string(),
        },
        principal.clone(),
        approval,
        None,
        None,
    ))
}

async fn record_open(agent: &Agent, rec: SessionOpen) {
    if let Err(e) = agent.audit.open_session(rec).await {
        error!(error = %e, "cannot record the session");
    }
}

fn close_record(agent: &Agent, id: SessionId, up: u64, down: u64, end: String) {
    let rec = SessionClose { id, ended_us: audit::now_us(), bytes_up: up, bytes_down: down, end_reason: end };
    if let Err(e) = agent.audit.close_session(rec) {
        error!(error = %e, "cannot record the end of the session");
    }
}

/// Records a refusal (aggregated per uid, kind and window; not at all past
/// the disk reserve) and closes the client's connection.
async fn refuse(agent: &Agent, key: RefusalKey, rec: SessionOpen, client: TcpStream) {
    let (admit, closed) = agent.refusals.admit(key, &rec);
    write_aggregates(agent, closed);
    if admit == Admit::Record {
        record_refusal(agent, rec).await;
    }
    drop(client);
}

async fn record_refusal(agent: &Agent, rec: SessionOpen) {
    let id = rec.id;
    if let Err(e) = agent.audit.open_session(rec).await {
        error!(error = %e, "cannot record the refusal");
    }
    let _ = agent.audit.close_session(SessionClose {
        id,
        ended_us: audit::now_us(),
        bytes_up: 0,
        bytes_down: 0,
        end_reason: "refused".into(),
    });
}
