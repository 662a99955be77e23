//! The proxy: loopback listeners the kernel sends protected connections to,
//! and one task per session that identifies the client, asks the policy,
//! records the session and hands it to a protocol adapter.

pub mod limits;
pub mod refusals;
mod reload;
pub(crate) mod session;

pub use crate::live::{LiveSession, Route, Snapshot};
pub(crate) use crate::live::{connect_upstream, lock};

pub use reload::reload;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::Serialize;
use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use self::refusals::{DiskReserve, Refusals};
use crate::approval::Desk as _;
use crate::audit::{self, Audit, SessionClose, SessionOpen};
use crate::identity::Resolver;
use crate::policy::load::LoadOptions;
use crate::policy::{Policy, Target};
use crate::redirect::{AttachOptions, Redirect, RedirectError};
use crate::settings::Settings;
use crate::types::{ClientAddr, SessionId};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(
        "port {port} is not privileged (ip_unprivileged_port_start is {start}): while the agent is down any user could bind it and stand in for the proxy, collecting other users' connections; use a port below {start}, or pass --allow-unprivileged-port if you accept that (tests do)"
    )]
    UnprivilegedPort { port: u16, start: u32 },
    #[error("listening on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Redirect(#[from] RedirectError),
    #[error(transparent)]
    Audit(#[from] audit::AuditError),
    #[error("control socket {path}: {source}")]
    Control { path: PathBuf, source: std::io::Error },
    #[error("metrics endpoint: {0}")]
    Metrics(#[source] std::io::Error),
    #[error("signal handler: {0}")]
    Signal(std::io::Error),
}

/// Session counters, for `gatehouse status`.
#[derive(Debug, Default)]
pub struct Counters {
    pub active: AtomicU64,
    pub total: AtomicU64,
    pub allowed: AtomicU64,
    pub denied: AtomicU64,
    pub not_redirected: AtomicU64,
    /// Connections whose kernel record did not belong to them (borrowed, stale).
    pub unverified: AtomicU64,
}

#[derive(Debug, Clone, Serialize)]
pub struct CountersView {
    pub active: u64,
    pub total: u64,
    pub allowed: u64,
    pub denied: u64,
    pub not_redirected: u64,
    pub unverified: u64,
}

impl Counters {
    pub fn view(&self) -> CountersView {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CountersView {
            active: g(&self.active),
            total: g(&self.total),
            allowed: g(&self.allowed),
            denied: g(&self.denied),
            not_redirected: g(&self.not_redirected),
            unverified: g(&self.unverified),
        }
    }
}

/// The state of the policy, for `gatehouse status`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PolicyState {
    pub loaded_us: i64,
    pub files: Vec<PathBuf>,
    pub reloads: u64,
    /// Reloads refused (the previous policy stayed).
    pub failures: u64,
    /// The last reload that was refused, and why (the previous policy stayed).
    pub last_error: Option<String>,
    pub last_error_us: Option<i64>,
}

/// Everything a session task needs, shared.
#[derive(Debug)]
pub struct Agent {
    pub settings: Arc<Settings>,
    pub config_path: PathBuf,
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    pub redirect: Redirect,
    pub audit: Arc<Audit>,
    pub resolver: Resolver,
    pub counters: Counters,
    pub listening: Vec<SocketAddr>,
    pub started_us: i64,
    /// Cancelled when the shutdown grace period is over: open sessions are cut.
    pub cut: CancellationToken,
    pub live: std::sync::Mutex<HashMap<SessionId, Arc<LiveSession>>>,
    pub policy_state: std::sync::Mutex<PolicyState>,
    pub load_options: LoadOptions,
    pub cancel_keys: Arc<crate::protocol::postgres::CancelKeys>,
    /// Statement classification within each rule's budget, with its cache.
    pub classifier: Arc<crate::sql::Classifier>,
    /// The backends' catalogs, per backend, login and database.
    pub catalogs: Arc<crate::protocol::postgres::catalog::CatalogCache>,
    /// Requests waiting for a human: held statements and logins, grants.
    pub approvals: crate::approval::Registry,
    /// The rules approved grants act as, rebuilt when grants or the policy change.
    pub grant_rules: Arc<ArcSwap<Vec<crate::policy::Rule>>>,
    /// Per-session backend roles this agent made and sessions still use.
    pub made_roles: Arc<crate::protocol::postgres::dynamic::MadeRoles>,
    /// Refusals: aggregated per uid, kind and window; dropped past the disk reserve.
    pub refusals: Refusals,
    /// A spare descriptor for accepting (and closing) under EMFILE.
    pub spare_fd: limits::Spare,
    /// Connections to backends held per local user (`max_connections_per_user`).
    pub per_user: Arc<limits::PerUser>,
    pub accept_log: limits::RateLimited,
    /// The descriptor limit in force.
    pub nofile: u64,
    /// Backends' TLS client configurations, and how each was last logged in to.
    pub backends: Arc<crate::live::Backends>,
    /// What the check of the policy's files found (warnings, client_tls expiry).
    pub files: std::sync::Mutex<crate::policy::files::FileReport>,
    /// `[[alert]]` windows over the row-level trail, per rule and user.
    pub trail_alerts: Arc<crate::trail::alerts::Alerts>,
    /// `[[alert]]`s with `action = "hold"` standing, per user and backend.
    pub trail_holds: Arc<crate::trail::alerts::Holds>,
    /// SSH host certificates presented for SSH backends' names.
    pub ssh_host_certs: Arc<crate::protocol::ssh::keys::HostCerts>,
}

impl Agent {
    /// Rebuilds the rules of the approved grants in force (after a grant
    /// changes or the policy is reloaded) and cuts sessions allowed by a
    /// grant that is no longer in force.
    pub fn refresh_grants(&self) {
        let snapshot = self.snapshot.load();
        let now = audit::now_us();
        let mut rules = Vec::new();
        for r in self.approvals.active_grants(now) {
            let crate::approval::Subject::Grant { grant, backend, .. } = &r.subject else { continue };
            let (Some(g), Some(until)) = (snapshot.policy.grants.iter().find(|g| &g.name == grant), r.until_us) else {
                continue;
            };
            let Ok(until) = jiff::Timestamp::from_microsecond(until) else { continue };
            rules.push(g.rule_for(r.id, r.requester.uid, backend, until));
        }
        let names: std::collections::HashSet<String> = rules.iter().map(|r| r.name.to_string()).collect();
        self.grant_rules.store(Arc::new(rules));
        for s in lock(&self.live).values() {
            if let Some(rule) = s.rule.as_deref().filter(|r| r.starts_with("grant ") && !names.contains(*r)) {
                s.cut(format!("the {rule} that allowed this session is no longer in force"));
            }
        }
    }
}

impl crate::approval::Desk for Agent {
    fn registry(&self) -> &crate::approval::Registry {
        &self.approvals
    }

    fn request(
        &self,
        subject: crate::approval::Subject,
        requester: crate::identity::Principal,
        approval: &crate::policy::Approval,
        reason: Option<String>,
        label: Option<String>,
    ) -> Result<crate::approval::Waiting, String> {
        let open = crate::approval::Open {
            subject,
            requester,
            reason,
            approvers: approval.by.clone(),
            approvers_label: label.or_else(|| approval.by_name.clone()).unwrap_or_else(|| approval.by.describe()),
            needed: approval.count,
            timeout_us: i64::try_from(approval.timeout.as_micros()).unwrap_or(i64::MAX),
            duration_us: None,
        };
        let (t, state) = self
            .approvals
            .open(open, crate::audit::now_us(), self.settings.max_pending_requests_per_user)
            .map_err(|over| format!("it needs an approval, and {over}"))?;
        self.transition(&t);
        Ok(crate::approval::Waiting {
            id: t.request.id,
            state,
            timeout: approval.timeout,
            approvers: t.request.approvers,
        })
    }

    fn transition(&self, t: &crate::approval::Transition) {
        info!(
            request = t.request.id,
            event = t.event,
            by = t.by.as_ref().map(crate::approval::Person::label).unwrap_or_default(),
            requester = t.request.requester.label(),
            "approval request: {}",
            t.request.subject.describe()
        );
        if let Err(e) = self.audit.record(audit::Event::Approval(Box::new(t.clone()))) {
            error!(error = %e, request = t.request.id, "cannot record an approval step");
        }
        if matches!(t.request.subject, crate::approval::Subject::Grant { .. }) && t.event != "requested" {
            self.refresh_grants();
        }
        crate::notify::announce(&self.snapshot.load().policy.notify, t);
    }
}

impl Agent {
    /// What an SSH session is given of the agent (its handles, not the agent).
    pub fn ssh_services(self: &Arc<Self>) -> crate::protocol::ssh::Services {
        crate::protocol::ssh::Services {
            settings: self.settings.clone(),
            snapshot: self.snapshot.clone(),
            grant_rules: self.grant_rules.clone(),
            audit: self.audit.clone(),
            ssh_host_certs: self.ssh_host_certs.clone(),
            desk: self.clone(),
        }
    }

    /// What a MySQL session is given of the agent (its handles, not the agent).
    pub fn mysql_services(self: &Arc<Self>) -> crate::protocol::mysql::Services {
        crate::protocol::mysql::Services {
            settings: self.settings.clone(),
            snapshot: self.snapshot.clone(),
            grant_rules: self.grant_rules.clone(),
            audit: self.audit.clone(),
            backends: self.backends.clone(),
            desk: self.clone(),
        }
    }

    /// What a PostgreSQL session is given of the agent (its handles, not the agent).
    pub fn postgres_services(self: &Arc<Self>) -> crate::protocol::postgres::Services {
        crate::protocol::postgres::Services {
            settings: self.settings.clone(),
            snapshot: self.snapshot.clone(),
            grant_rules: self.grant_rules.clone(),
            audit: self.audit.clone(),
            classifier: self.classifier.clone(),
            catalogs: self.catalogs.clone(),
            cancel_keys: self.cancel_keys.clone(),
            made_roles: self.made_roles.clone(),
            trail_alerts: self.trail_alerts.clone(),
            trail_holds: self.trail_holds.clone(),
            backends: self.backends.clone(),
            desk: self.clone(),
        }
    }
}

/// Runs the agent until SIGTERM or SIGINT.
///
/// `control` starts the control socket's server (`control::serve`, passed
/// in by the caller so that `proxy` does not import `control`, which is
/// built on [`Agent`]).
pub async fn run<C, F>(
    settings: Settings,
    policy: Policy,
    files: crate::policy::files::FileReport,
    config_path: PathBuf,
    load_options: LoadOptions,
    control: C,
) -> Result<(), AgentError>
where
    C: FnOnce(Arc<Agent>, CancellationToken) -> F,
    F: std::future::Future<Output = Result<tokio::task::JoinHandle<()>, AgentError>>,
{
    check_port(&settings)?;
    // Files the agent creates (audit store, sockets) are private by default.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    // Keys and passwords live in this process's memory: no core dumps.
    crate::secrets::no_core_dumps();
    // Two descriptors per session: lift the limit as far as the system allows.
    let nofile = limits::raise_nofile();
    limits::log_nofile(nofile);
    // Kernel records made before this moment belong to connections no running
    // proxy will accept (see `Redirect::attach`).
    let started_ns = crate::redirect::monotonic_ns();
    let key_path = crate::settings::host_key_path(&settings.audit_db);
    let (audit, writer) = audit::open(&settings.audit_db, &key_path, &settings.audit)?;
    if settings.audit.mode == audit::Mode::BestEffort {
        warn!(
            "AUDIT MODE IS BEST-EFFORT: statements are forwarded before their record is committed; records may be lost if the agent dies or the disk fails"
        );
    }

    // Listen before attaching: the kernel must never send clients to a port
    // nobody serves because binding failed after the attach.
    let mut listeners = vec![bind(SocketAddr::new(IpAddr::V4(settings.listen_v4), settings.port))?];
    if let Some(v6) = settings.listen_v6 {
        listeners.push(bind(SocketAddr::new(IpAddr::V6(v6), settings.port))?);
    }
    let listening: Vec<SocketAddr> = listeners.iter().filter_map(|l| l.local_addr().ok()).collect();

    let redirect = Redirect::attach(&AttachOptions {
        pin_dir: settings.pin_dir.clone(),
        cgroup: settings.cgroup.clone(),
        proxy_v4: settings.listen_v4,
        proxy_v6: settings.listen_v6.unwrap_or(std::net::Ipv6Addr::LOCALHOST),
        proxy_port: settings.port,
        mark: settings.mark,
        started_ns,
    })?;
    redirect.refresh_interfaces()?;
    let snapshot = Snapshot::resolve(policy).await;
    redirect.set_backends(&snapshot.protected())?;
    info!(
        cgroup = %redirect.cgroup.display(),
        pin_dir = %redirect.pin_dir.display(),
        reused_pins = redirect.reused,
        stale_records_cleared = redirect.cleared_at_start,
        listen = ?listening,
        backends = snapshot.policy.backends.len(),
        protected_addresses = snapshot.routes.len(),
        rules = snapshot.policy.rules.len(),
        "gatehouse agent running"
    );

    let agent = Arc::new(Agent {
        resolver: Resolver::new(Duration::from_secs(30)),
        snapshot: Arc::new(ArcSwap::from_pointee(snapshot)),
        config_path: config_path.clone(),
        redirect,
        audit: Arc::new(audit),
        counters: Counters::default(),
        listening,
        started_us: audit::now_us(),
        cut: CancellationToken::new(),
        live: std::sync::Mutex::new(HashMap::new()),
        policy_state: std::sync::Mutex::new(PolicyState {
            loaded_us: audit::now_us(),
            files: crate::policy::load::policy_files(&config_path).unwrap_or_default(),
            ..PolicyState::default()
        }),
        load_options,
        cancel_keys: Arc::default(),
        classifier: Arc::default(),
        catalogs: Arc::default(),
        approvals: crate::approval::Registry::default(),
        grant_rules: Arc::new(ArcSwap::from_pointee(Vec::new())),
        made_roles: Arc::default(),
        refusals: Refusals::new(
            settings.refusal_window,
            DiskReserve::new(&settings.audit_db, settings.audit_disk_reserve),
        ),
        spare_fd: limits::Spare::new(),
        per_user: limits::PerUser::new(settings.max_connections_per_user),
        accept_log: limits::RateLimited::new(Duration::from_secs(10)),
        nofile,
        backends: Arc::default(),
        trail_alerts: Arc::default(),
        trail_holds: Arc::default(),
        files: std::sync::Mutex::new(files),
        ssh_host_certs: Arc::default(),
        settings: Arc::new(settings),
    });

    restore_requests(&agent).await;
    rebuild_alert_windows(&agent).await;

    let stop = CancellationToken::new();
    let sessions = TaskTracker::new();
    let control = control(agent.clone(), stop.clone()).await?;
    let mut accepts = Vec::new();
    for l in listeners {
        accepts.push(tokio::spawn(accept_loop(agent.clone(), l, stop.clone(), sessions.clone())));
    }
    let resolver = tokio::spawn(re_resolve(agent.clone(), stop.clone()));
    let watchdog = tokio::spawn(audit_watchdog(agent.clone(), stop.clone()));
    let reloader = tokio::spawn(reload::reload_loop(agent.clone(), stop.clone()));
    let keeper = tokio::spawn(housekeeping(agent.clone(), stop.clone()));
    let approvals = tokio::spawn(approval_clock(agent.clone(), stop.clone()));
    let reaper = tokio::spawn(role_reaper(agent.clone(), stop.clone()));
    let shipper = agent.settings.ship.clone().map(|ship| {
        let key = agent.audit.public_key_hex();
        tokio::spawn(crate::audit::ship::run(agent.settings.audit_db.clone(), ship, key, stop.clone()))
    });
    let sink_ctx = crate::audit::sink::Context {
        auditor_gid: agent.settings.auditor_group.as_deref().and_then(|g| match nix::unistd::Group::from_name(g) {
            Ok(Some(group)) => Some(group.gid.as_raw()),
            _ => {
                warn!(group = g, "auditor group not found: file sinks are created 0600");
                None
            }
        }),
        mark: agent.settings.mark,
    };
    let sinks: Vec<_> = agent
        .settings
        .sinks
        .iter()
        .map(|sink| {
            tokio::spawn(crate::audit::sink::run(agent.settings.audit_db.clone(), sink.clone(), sink_ctx, stop.clone()))
        })
        .collect();
    if let Some(listen) = agent.settings.metrics.clone() {
        crate::metrics::serve(agent.clone(), listen, stop.clone()).await.map_err(AgentError::Metrics)?;
    }
    crate::service::tell(crate::service::State::Ready { status: &format!("serving on {:?}", agent.listening) });

    wait_for_signal().await?;
    crate::service::tell(crate::service::State::Stopping);
    info!(grace = ?agent.settings.shutdown_grace, active = agent.counters.active.load(Ordering::Relaxed), "shutting down: no new sessions; open sessions may finish");
    stop.cancel();
    for a in accepts {
        let _ = a.await;
    }
    sessions.close();
    if tokio::time::timeout(agent.settings.shutdown_grace, sessions.wait()).await.is_err() {
        warn!(active = agent.counters.active.load(Ordering::Relaxed), "grace period over: cutting open sessions");
        agent.cut.cancel();
        sessions.wait().await;
    }
    let _ = resolver.await;
    let _ = watchdog.await;
    let _ = reloader.await;
    let _ = keeper.await;
    let _ = approvals.await;
    let _ = reaper.await;
    if let Some(s) = shipper {
        let _ = s.await;
    }
    for s in sinks {
        let _ = s.await;
    }
    let _ = control.await;
    write_aggregates(&agent, agent.refusals.due(audit::now_us(), true));
    if let Err(e) = agent.audit.flush().await {
        error!(error = %e, "final audit flush failed");
    }
    drop(agent);
    writer.stop();
    info!("gatehouse agent stopped; pinned programs keep protected backends closed until it returns");
    Ok(())
}

/// Refuses a proxy port that an unprivileged user could bind while the agent
/// is down (and so stand in for it), unless explicitly allowed.
fn check_port(settings: &Settings) -> Result<(), AgentError> {
    let start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|v| v.trim().parse::<u32>().ok())
        .unwrap_or(1024);
    if u32::from(settings.port) < start {
        return Ok(());
    }
    if settings.allow_unprivileged_port {
        warn!(
            port = settings.port,
            ip_unprivileged_port_start = start,
            "PROXY PORT IS NOT PRIVILEGED (--allow-unprivileged-port): while the agent is down, any local user can bind it and receive other users' redirected connections, passwords included"
        );
        return Ok(());
    }
    Err(AgentError::UnprivilegedPort { port: settings.port, start })
}

/// Periodic chores: free disk space (every second), aggregate refusal
/// records whose window ended, pins and interface addresses (every 2 s).
async fn housekeeping(agent: Arc<Agent>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        n += 1;
        let a = agent.clone();
        let pins = n.is_multiple_of(2);
        let changed = tokio::task::spawn_blocking(move || {
            a.refusals.disk.refresh();
            if !pins {
                return false;
            }
            a.redirect.check_pins();
            match a.redirect.refresh_interfaces() {
                Ok(changed) => changed,
                Err(e) => {
                    error!(error = %e, "updating this host's interface addresses in the kernel failed");
                    false
                }
            }
        })
        .await
        .unwrap_or(false);
        if changed {
            info!("interface addresses changed; local backend ports re-guarded");
        }
        write_aggregates(&agent, agent.refusals.due(audit::now_us(), false));
    }
}

fn write_aggregates(agent: &Agent, records: Vec<(SessionOpen, SessionClose)>) {
    for (open, close) in records {
        let _ = agent.audit.record(audit::Event::SessionOpen(Box::new(open)));
        let _ = agent.audit.close_session(close);
    }
}

fn bind(addr: SocketAddr) -> Result<TcpListener, AgentError> {
    let err = |source| AgentError::Listen { addr, source };
    let sock = if addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }.map_err(err)?;
    sock.set_reuseaddr(true).map_err(err)?;
    sock.bind(addr).map_err(err)?;
    sock.listen(1024).map_err(err)
}

async fn wait_for_signal() -> Result<(), AgentError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(AgentError::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(AgentError::Signal)?;
    tokio::select! {
        _ = term.recv() => info!("SIGTERM"),
        _ = int.recv() => info!("SIGINT"),
    }
    Ok(())
}

async fn accept_loop(agent: Arc<Agent>, listener: TcpListener, stop: CancellationToken, sessions: TaskTracker) {
    let mut backoff = limits::Backoff::default();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = stop.cancelled() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff.reset();
                let agent = agent.clone();
                // Counted from the accept, before its task first runs.
                let ahead = agent.audit.opening_ahead();
                sessions.spawn(async move { session::session(agent, stream, ClientAddr(peer), ahead).await });
            }
            Err(e) => {
                limits::log_accept_error(&agent.accept_log, "proxy", &e);
                if limits::out_of_descriptors(&e) {
                    // Take the waiting connection off the queue with the
                    // spare descriptor and close it, rather than leave it to
                    // time out while the loop spins.
                    agent.spare_fd.release();
                    if let Ok(Ok((s, _))) = tokio::time::timeout(Duration::from_millis(1), listener.accept()).await {
                        drop(s);
                    }
                    agent.spare_fd.restore();
                }
                tokio::time::sleep(backoff.delay()).await;
            }
        }
    }
}

/// Re-resolves `host = …` backends periodically and updates the kernel map.
/// Carries on after a restart: request numbers continue, grants approved
/// (and still in force) or still waiting for approvers come back. Held
/// statements and logins ended with their sessions.
async fn restore_requests(agent: &Arc<Agent>) {
    let db = agent.settings.audit_db.clone();
    let found = tokio::task::spawn_blocking(move || crate::audit::query::approval_requests(&db)).await;
    let requests = match found {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return warn!(error = %e, "cannot read earlier requests from the audit store"),
        Err(e) => return warn!(error = %e, "cannot read earlier requests from the audit store"),
    };
    let snapshot = agent.snapshot.load();
    let now = audit::now_us();
    let mut restored = 0;
    for r in requests {
        agent.approvals.start_after(r.id);
        let crate::approval::Subject::Grant { grant, .. } = &r.subject else { continue };
        let live = match &r.state {
            crate::approval::State::Approved { .. } => r.until_us.is_some_and(|u| u > now),
            crate::approval::State::Pending => r.deadline_us > now,
            _ => false,
        };
        let Some(g) = snapshot.policy.grants.iter().find(|g| &g.name == grant) else { continue };
        if live {
            agent.approvals.restore(r, g.by.clone());
            restored += 1;
        }
    }
    if restored > 0 {
        info!(grants = restored, "restored grant requests from the audit store");
    }
    agent.refresh_grants();
}

/// Fills the `[[alert]]` windows from the trail records in the store (within
/// each threshold rule's window), before the agent serves: a restart does
/// not reset a slow reader's count. Costs one indexed scan of the trail
/// records of the window and memory for their distinct keys, bounded by
/// `trail::alerts::REBUILD_MAX_KEYS` (the newest kept).
async fn rebuild_alert_windows(agent: &Arc<Agent>) {
    let rules = agent.snapshot.load().policy.trail.alerts.clone();
    if !rules.iter().any(|r| r.threshold.is_some()) {
        return;
    }
    let agent2 = agent.clone();
    let db = agent.settings.audit_db.clone();
    let started = std::time::Instant::now();
    let done = tokio::task::spawn_blocking(move || {
        let conn = crate::audit::query::open_read_only(&db).map_err(|e| e.to_string())?;
        agent2
            .trail_alerts
            .rebuild(&conn, &rules, audit::now_us(), crate::trail::alerts::REBUILD_MAX_KEYS)
            .map_err(|e| e.to_string())
    })
    .await;
    match done {
        Ok(Ok(r)) => {
            if r.capped {
                warn!(
                    keys = r.keys,
                    "alert windows rebuilt only in part: too many keys read within the windows; the older reads are left out"
                );
            }
            info!(
                records = r.records,
                windows = r.windows,
                keys = r.keys,
                ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                "alert windows rebuilt from the audit store"
            );
        }
        Ok(Err(e)) => warn!(error = %e, "cannot rebuild the alert windows from the audit store; they start empty"),
        Err(e) => warn!(error = %e, "cannot rebuild the alert windows from the audit store; they start empty"),
    }
}

/// Drops per-session backend roles left over (a crash, a restart) or expired:
/// at start, then every minute.
async fn role_reaper(agent: Arc<Agent>, stop: CancellationToken) {
    loop {
        crate::protocol::postgres::dynamic::reap(&agent.postgres_services()).await;
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(60)) => {}
            () = stop.cancelled() => return,
        }
    }
}

/// Times out requests nobody decided and ends grants whose time is up.
async fn approval_clock(agent: Arc<Agent>, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            () = stop.cancelled() => return,
        }
        for t in agent.approvals.tick(audit::now_us()) {
            agent.transition(&t);
        }
    }
}

async fn re_resolve(agent: Arc<Agent>, stop: CancellationToken) {
    let has_hosts =
        |a: &Agent| a.snapshot.load().policy.backends.iter().any(|b| matches!(b.target, Target::Host { .. }));
    loop {
        tokio::select! {
            () = tokio::time::sleep(agent.settings.resolve_interval) => {}
            () = stop.cancelled() => return,
        }
        if !has_hosts(&agent) {
            continue;
        }
        let current = agent.snapshot.load_full();
        let fresh = Snapshot::resolve(current.policy.clone()).await;
        if fresh.routes != current.routes {
            match agent.redirect.set_backends(&fresh.protected()) {
                Ok(()) => {
                    info!(addresses = fresh.routes.len(), "backend addresses changed; kernel map updated");
                    agent.snapshot.store(Arc::new(fresh));
                }
                Err(e) => error!(error = %e, "updating the protected-backends map failed"),
            }
        }
    }
}

/// When the audit store fails, every open session is ended (fail closed);
/// new ones are refused at accept time.
async fn audit_watchdog(agent: Arc<Agent>, stop: CancellationToken) {
    let mut w = agent.audit.failure_watch();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            r = w.changed() => if r.is_err() { return },
        }
        let Some(why) = w.borrow().clone() else { continue };
        if agent.audit.mode() == audit::Mode::BestEffort {
            error!("audit store failed ({why}); best-effort mode: sessions continue unrecorded");
            continue;
        }
        let live: Vec<Arc<LiveSession>> = lock(&agent.live).values().cloned().collect();
        error!(sessions = live.len(), "audit store failed ({why}): ending every open session");
        for s in live {
            s.cut(format!("the audit store cannot be written ({why})"));
        }
    }
}
