//! Prometheus metrics and a health endpoint, off by default
//! (`[agent] metrics = "127.0.0.1:9187"` or `"unix:/run/gatehouse/metrics.sock"`).
//!
//! Counters are atomics in one process-wide [`Metrics`]: the audit writer
//! thread and the session tasks reach it without new handles, and each hook
//! is one call. What the agent already keeps (open sessions, kernel
//! counters, approvals, reloads, store size, free disk) is read at scrape
//! time instead of being counted twice. Counted from the audit records as
//! the writer appends them to the store (its transaction commits within
//! 10 ms), so a statement or a masked value is counted once it is in the
//! audit trail, and the relay's hot path gains nothing.
//!
//! The HTTP server is minimal on purpose: one request per connection,
//! `GET /metrics` and `GET /healthz`, a bounded request head, a timeout.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::audit::Event;
use crate::proxy::Agent;

/// Where the metrics endpoint listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// A loopback TCP address (other addresses are refused: metrics name backends and rules).
    Tcp(std::net::SocketAddr),
    /// A Unix socket path (created 0660, root's group).
    Unix(PathBuf),
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp(a) => write!(f, "http://{a}/metrics"),
            Self::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

impl std::str::FromStr for Listen {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(p) = s.strip_prefix("unix:") {
            let p = PathBuf::from(p);
            if !p.is_absolute() {
                return Err(format!("{s:?}: a Unix socket path must be absolute"));
            }
            return Ok(Self::Unix(p));
        }
        let addr: std::net::SocketAddr =
            s.parse().map_err(|_| format!("{s:?}: expected ip:port on loopback, or unix:/path"))?;
        if !addr.ip().is_loopback() {
            return Err(format!("{s:?}: metrics listen on loopback only (or a Unix socket); put a proxy in front"));
        }
        Ok(Self::Tcp(addr))
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SessionLabels {
    backend: String,
    decision: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatementLabels {
    kind: String,
    decision: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SinkLabels {
    sink: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DetectorLabels {
    detector: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabels {
    backend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AlertLabels {
    rule: String,
    action: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CounterLabels {
    counter: String,
}

/// The process's metrics. Families counted as records commit live here;
/// the rest is filled from the agent at scrape time.
pub struct Metrics {
    sessions: Family<SessionLabels, Counter>,
    statements: Family<StatementLabels, Counter>,
    refusals: Family<ReasonLabels, Counter>,
    masked: Family<DetectorLabels, Counter>,
    bytes: Family<DirectionLabels, Counter>,
    trail_alerts: Family<AlertLabels, Counter>,
    commit: Histogram,
    committed: Counter,
    shipped: Counter,
    sunk: Family<SinkLabels, Counter>,
    queued: AtomicI64,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| Metrics {
    sessions: Family::default(),
    statements: Family::default(),
    refusals: Family::default(),
    masked: Family::default(),
    bytes: Family::default(),
    trail_alerts: Family::default(),
    // 50 µs … ~1.6 s, doubling.
    commit: Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(0.000_05, 2.0, 16)),
    committed: Counter::default(),
    shipped: Counter::default(),
    sunk: Family::default(),
    queued: AtomicI64::new(0),
});

/// A record was handed to the audit writer's queue.
pub fn queued() {
    METRICS.queued.fetch_add(1, Ordering::Relaxed);
}

/// The audit writer took `n` commands off its queue.
pub fn dequeued(n: usize) {
    METRICS.queued.fetch_sub(i64::try_from(n).unwrap_or(i64::MAX), Ordering::Relaxed);
}

/// `n` records reached the central store (`[agent.ship]`).
pub fn shipped(n: usize) {
    METRICS.shipped.inc_by(n as u64);
}

/// `n` records were delivered to the sink `name` (a file or a syslog collector).
pub fn sunk(name: &str, n: usize) {
    METRICS.sunk.get_or_create(&SinkLabels { sink: name.to_owned() }).inc_by(n as u64);
}

/// The audit writer's transaction was committed in `took`.
pub fn commit_took(took: Duration) {
    METRICS.commit.observe(took.as_secs_f64());
}

/// What the metrics count of one record appended to the audit store.
pub enum Counted<'a> {
    /// A statement: its first kind (`None`: it has none) and its decision.
    Statement(Option<&'a crate::sql::KindName>, crate::audit::Verdict),
    /// A statement's end: the values masked, as JSON.
    Masked(&'a str),
    /// Any other record (never a statement or its end: the writer keeps
    /// those cut down to the two above, see `audit::journal::Kept`).
    Event(&'a Event),
}

/// A batch of `count` records was appended to the audit store; `records`
/// are those of them at hand (not the ones replayed from the journal at
/// start). Statements are counted here, per label for the whole batch;
/// every other record by [`observe`].
pub fn appended<'a>(count: usize, records: impl Iterator<Item = Counted<'a>>) {
    let m = &*METRICS;
    m.committed.inc_by(count as u64);
    // Statements, the most of a busy batch, are counted per label and added
    // once per label: no label strings made and hashed per statement.
    let mut statements: Vec<(&str, crate::audit::Verdict, u64)> = Vec::new();
    for r in records {
        let (kind, decision) = match r {
            Counted::Statement(kind, decision) => (statement_kind(kind), decision),
            Counted::Masked(masked) => {
                count_masked(m, masked);
                continue;
            }
            Counted::Event(e) => {
                observe(m, e);
                continue;
            }
        };
        match statements.iter_mut().find(|(k, d, _)| *k == kind && *d == decision) {
            Some(c) => c.2 += 1,
            None => statements.push((kind, decision, 1)),
        }
    }
    let mut denied = 0;
    for (kind, decision, n) in statements {
        m.statements
            .get_or_create(&StatementLabels { kind: kind.into(), decision: decision.as_str().to_owned() })
            .inc_by(n);
        if decision == crate::audit::Verdict::Deny {
            denied += n;
        }
    }
    if denied > 0 {
        m.refusals.get_or_create(&ReasonLabels { reason: "statement_denied".into() }).inc_by(denied);
    }
}

/// The label a statement is counted under: its first kind
/// (`delete+delete_without_where` is a delete).
fn statement_kind(first: Option<&crate::sql::KindName>) -> &str {
    let kind = first.map(crate::sql::KindName::name).filter(|k| !k.is_empty()).unwrap_or("unknown");
    if kind.len() <= 32 { kind } else { "unknown" }
}

/// Values masked by a statement (its end's `masked`), per detector.
fn count_masked(m: &Metrics, masked: &str) {
    let Ok(counts) = serde_json::from_str::<BTreeMap<String, u64>>(masked) else { return };
    for (detector, n) in counts {
        m.masked.get_or_create(&DetectorLabels { detector }).inc_by(n);
    }
}

fn observe(m: &Metrics, e: &Event) {
    match e {
        Event::SessionOpen(o) => {
            let backend = o.backend.clone().unwrap_or_else(|| "-".into());
            m.sessions.get_or_create(&SessionLabels { backend, decision: o.decision.as_str().to_owned() }).inc();
            if !o.decision.allowed() {
                m.refusals.get_or_create(&ReasonLabels { reason: "session_denied".into() }).inc();
            }
        }
        Event::SessionClose(c) => {
            m.bytes.get_or_create(&DirectionLabels { direction: "up".into() }).inc_by(c.bytes_up);
            m.bytes.get_or_create(&DirectionLabels { direction: "down".into() }).inc_by(c.bytes_down);
        }
        Event::TrailAlert(a) => {
            let action = format!("{:?}", a.action).to_lowercase();
            m.trail_alerts.get_or_create(&AlertLabels { rule: a.rule.clone(), action }).inc();
        }
        Event::Approval(t) if t.event == "denied" || t.event == "timed_out" => {
            let reason = if t.event == "denied" { "approval_denied" } else { "approval_timed_out" };
            m.refusals.get_or_create(&ReasonLabels { reason: reason.into() }).inc();
        }
        _ => {}
    }
}

/// The text exposition of every family, with what the agent knows now.
pub fn render(agent: &Agent) -> String {
    let m = &*METRICS;
    let mut r = Registry::with_prefix("gatehouse");
    r.register("sessions", "Sessions by backend and decision, counted when recorded", m.sessions.clone());
    r.register("statements", "Statements by first kind and decision, counted when recorded", m.statements.clone());
    let refusals = m.refusals.clone();
    let counters = agent.counters.view();
    refusals
        .get_or_create(&ReasonLabels { reason: "not_redirected".into() })
        .inner()
        .store(counters.not_redirected, Ordering::Relaxed);
    refusals
        .get_or_create(&ReasonLabels { reason: "unverified_handoff".into() })
        .inner()
        .store(counters.unverified, Ordering::Relaxed);
    r.register("refusals", "Refusals by reason", refusals);
    r.register("masked_values", "Values masked in results, by detector or column rule", m.masked.clone());
    r.register("trail_alerts", "Row-level trail alerts ([[alert]]) fired, by rule and action", m.trail_alerts.clone());
    r.register("relayed_bytes", "Bytes relayed, by direction, counted when sessions close", m.bytes.clone());
    r.register(
        "audit_commit_seconds",
        "Time to commit the audit writer's transaction (the batches of up to 10 ms)",
        m.commit.clone(),
    );
    r.register("audit_records", "Audit records written to the store", m.committed.clone());
    r.register("audit_shipped_records", "Audit records copied to the central store", m.shipped.clone());
    r.register("audit_sink_records", "Audit records delivered to each sink (file, syslog)", m.sunk.clone());
    r.register("audit_queue_depth", "Records waiting for the audit writer", gauge(m.queued.load(Ordering::Relaxed)));

    let open: Family<BackendLabels, Gauge> = Family::default();
    for s in agent.live.lock().map(|l| l.values().cloned().collect::<Vec<_>>()).unwrap_or_default() {
        open.get_or_create(&BackendLabels { backend: s.backend.to_string() }).inc();
    }
    r.register("sessions_open", "Sessions open now, by backend", open);

    let kernel: Family<CounterLabels, Counter> = Family::default();
    let k = agent.redirect.stats();
    for (name, v) in [
        ("redirected", k.redirected),
        ("established", k.established),
        ("skipped_mark", k.skipped_mark),
        ("skipped_netns", k.skipped_netns),
        ("peername_restored", k.peername_restored),
        ("alias_redirected", k.alias_redirected),
    ] {
        kernel.get_or_create(&CounterLabels { counter: name.into() }).inc_by(v);
    }
    r.register("kernel", "The eBPF programs' counters (GH_STATS)", kernel);

    let mut root = crate::identity::Principal::named("root", &[]);
    root.uid = crate::types::Uid(0);
    let pending = agent
        .approvals
        .list(&root, false)
        .iter()
        .filter(|q| matches!(q.state, crate::approval::State::Pending))
        .count();
    r.register("approvals_pending", "Requests waiting for a human", gauge(i64::try_from(pending).unwrap_or(i64::MAX)));

    let (reloads, failures) = agent.policy_state.lock().map(|s| (s.reloads, s.failures)).unwrap_or_default();
    r.register("policy_reloads", "Policy reloads that took effect", counter(reloads));
    r.register("policy_reload_failures", "Policy reloads refused (the previous policy stayed)", counter(failures));

    r.register("audit_store_bytes", "Size of the audit store (database and WAL)", gauge(store_bytes(agent)));
    let free = agent.refusals.disk.free();
    r.register("audit_disk_free_bytes", "Free bytes on the audit store's filesystem", gauge(to_i64(free)));
    r.register(
        "up",
        "1 while the agent serves; 0 when its audit store failed",
        gauge(i64::from(healthy(agent).is_ok())),
    );

    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &r) {
        tracing::warn!(error = %e, "encoding metrics");
    }
    out
}

fn gauge(v: i64) -> Gauge {
    let g = Gauge::default();
    g.set(v);
    g
}

fn counter(v: u64) -> Counter {
    let c = Counter::default();
    c.inc_by(v);
    c
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn store_bytes(agent: &Agent) -> i64 {
    let db = &agent.settings.audit_db;
    let mut total = 0u64;
    for suffix in ["", "-wal"] {
        let mut p = db.clone().into_os_string();
        p.push(suffix);
        total += std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
    }
    to_i64(total)
}

/// Whether the agent can serve: its audit store writes and its programs are attached.
pub fn healthy(agent: &Agent) -> Result<(), String> {
    if let Some(f) = agent.audit.failure() {
        return Err(format!("audit store failed: {f}"));
    }
    if agent.refusals.disk.low() {
        return Err("audit disk below its reserve".into());
    }
    Ok(())
}

/// Serves `/metrics` and `/healthz` on `listen` until `stop`.
pub async fn serve(agent: Arc<Agent>, listen: Listen, stop: CancellationToken) -> std::io::Result<()> {
    match listen {
        Listen::Tcp(addr) => {
            let l = tokio::net::TcpListener::bind(addr).await?;
            tracing::info!(%addr, "metrics endpoint listening");
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        Ok((s, _)) = l.accept() => { tokio::spawn(answer(agent.clone(), s)); }
                    }
                }
            });
        }
        Listen::Unix(path) => {
            let _ = std::fs::remove_file(&path);
            let l = tokio::net::UnixListener::bind(&path)?;
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o660))?;
            tracing::info!(path = %path.display(), "metrics endpoint listening");
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        () = stop.cancelled() => { let _ = std::fs::remove_file(&path); return }
                        Ok((s, _)) = l.accept() => { tokio::spawn(answer(agent.clone(), s)); }
                    }
                }
            });
        }
    }
    Ok(())
}

/// The longest request head read.
const MAX_HEAD: usize = 8192;

async fn answer<S: AsyncRead + AsyncWrite + Unpin>(agent: Arc<Agent>, mut s: S) {
    let mut head = Vec::with_capacity(512);
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => head.extend_from_slice(buf.get(..n).unwrap_or_default()),
            }
        }
        true
    })
    .await;
    if !matches!(read, Ok(true)) {
        return;
    }
    let (status, ctype, body) = route(&agent, &head);
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = s.write_all(reply.as_bytes()).await;
    let _ = s.shutdown().await;
}

/// The answer to one request head (sans-IO).
fn route(agent: &Agent, head: &[u8]) -> (&'static str, &'static str, String) {
    let line = head.split(|b| *b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split(' ');
    let (method, path) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    let path = path.split('?').next().unwrap_or_default();
    const TEXT: &str = "text/plain; charset=utf-8";
    match (method, path) {
        ("GET", "/metrics") => ("200 OK", "application/openmetrics-text; version=1.0.0; charset=utf-8", render(agent)),
        ("GET", "/healthz") => match healthy(agent) {
            Ok(()) => ("200 OK", TEXT, "ok\n".into()),
            Err(e) => ("503 Service Unavailable", TEXT, format!("{e}\n")),
        },
        ("GET", _) => ("404 Not Found", TEXT, "try /metrics or /healthz\n".into()),
        _ => ("405 Method Not Allowed", TEXT, "GET only\n".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::Listen;

    /// A batch's statements are counted per (first kind, decision), each
    /// label once with the batch's count; other records as before.
    #[test]
    fn a_batch_counts_its_statements_per_kind_and_decision() {
        use crate::audit::Verdict;
        use crate::sql::KindList;
        let m = &*super::METRICS;
        let count = |kind: &str, decision: &str| {
            m.statements.get_or_create(&super::StatementLabels { kind: kind.into(), decision: decision.into() }).get()
        };
        let denied = || m.refusals.get_or_create(&super::ReasonLabels { reason: "statement_denied".into() }).get();
        let before = (count("mtest_read", "allow"), count("mtest_write", "deny"), count("mtest_write", "allow"));
        let denied_before = denied();
        let batch = [
            (KindList::from("mtest_read"), Verdict::Allow),
            (KindList::from("mtest_write+delete_without_where"), Verdict::Deny),
            (KindList::from("mtest_read"), Verdict::Allow),
            (KindList::from("mtest_write"), Verdict::Allow),
            (KindList::from("mtest_read"), Verdict::Allow),
        ];
        super::appended(batch.len(), batch.iter().map(|(k, d)| super::Counted::Statement(k.first(), *d)));
        let after = (count("mtest_read", "allow"), count("mtest_write", "deny"), count("mtest_write", "allow"));
        assert_eq!((after.0 - before.0, after.1 - before.1, after.2 - before.2), (3, 1, 1));
        assert!(denied() > denied_before, "a denied statement is a refusal");
        // A statement's end counts the values it masked, per detector.
        let masked = |d: &str| m.masked.get_or_create(&super::DetectorLabels { detector: d.into() }).get();
        let before = (masked("mtest_email"), masked("mtest_card"));
        let ends = [r#"{"mtest_email":2,"mtest_card":1}"#, r#"{"mtest_email":3}"#, "not json"];
        super::appended(ends.len(), ends.iter().map(|j| super::Counted::Masked(j)));
        assert_eq!((masked("mtest_email") - before.0, masked("mtest_card") - before.1), (5, 1));
    }

    #[test]
    fn listen_addresses_are_local() {
        assert_eq!(
            "127.0.0.1:9187".parse::<Listen>(),
            Ok(Listen::Tcp("127.0.0.1:9187".parse().unwrap_or_else(|_| unreachable!())))
        );
        assert!("[::1]:9187".parse::<Listen>().is_ok());
        assert!("0.0.0.0:9187".parse::<Listen>().is_err());
        assert!("10.1.2.3:9187".parse::<Listen>().is_err());
        assert_eq!(
            "unix:/run/gatehouse/metrics.sock".parse::<Listen>(),
            Ok(Listen::Unix("/run/gatehouse/metrics.sock".into()))
        );
        assert!("unix:relative.sock".parse::<Listen>().is_err());
    }
}
