//! Policy reloads (SIGHUP, or a policy file changed) and the periodic
//! re-check of open sessions against the policy in force.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::{Agent, LiveSession, Snapshot, lock};
use crate::audit;
use crate::types::SessionId;

/// What identifies the policy files' current contents, cheaply.
fn fingerprint(path: &std::path::Path) -> Vec<(PathBuf, Option<std::time::SystemTime>, u64)> {
    let files = crate::policy::load::policy_files(path).unwrap_or_default();
    files
        .into_iter()
        .map(|f| {
            let meta = std::fs::metadata(&f).ok();
            let mtime = meta.as_ref().and_then(|m| m.modified().ok());
            let len = meta.map_or(0, |m| m.len());
            (f, mtime, len)
        })
        .collect()
}

/// Reloads the policy on SIGHUP and when a file of it changes (polled every
/// two seconds), and re-checks open sessions every minute.
pub(super) async fn reload_loop(agent: Arc<Agent>, stop: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            warn!(error = %e, "no SIGHUP handler: reload on file change only");
            None
        }
    };
    let mut seen = fingerprint(&agent.config_path);
    let mut poll = tokio::time::interval(Duration::from_secs(2));
    let mut recheck = tokio::time::interval(Duration::from_secs(60));
    loop {
        let why = tokio::select! {
            () = stop.cancelled() => return,
            Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => "SIGHUP",
            _ = poll.tick() => {
                let now = fingerprint(&agent.config_path);
                if now == seen { continue; }
                "policy files changed"
            }
            _ = recheck.tick() => {
                recheck_sessions(&agent, "periodic re-check");
                continue;
            }
        };
        seen = fingerprint(&agent.config_path);
        crate::service::tell(crate::service::State::Reloading);
        reload(&agent, why).await;
        crate::service::tell(crate::service::State::Ready { status: why });
    }
}

/// Loads the policy again; swaps it in only if it loads and its own test
/// cases pass. Otherwise the running policy stays and the error is kept for
/// `gatehouse status`.
pub async fn reload(agent: &Agent, why: &str) {
    let loaded = crate::policy::load::load_path_with(&agent.config_path, &agent.load_options);
    let policy = match loaded {
        Ok(p) => p,
        Err(d) => return refuse_reload(agent, why, format!("policy does not load:\n{d}")),
    };
    // Password files, keys and CAs: checked before the policy is used.
    let files = match crate::policy::files::check(&policy, jiff::Timestamp::now().as_second()) {
        Ok(f) => f,
        Err(d) => return refuse_reload(agent, why, format!("policy names files that may not be used:\n{d}")),
    };
    for w in &files.warnings {
        warn!("{w}");
    }
    let failed: Vec<String> = policy
        .run_tests(jiff::Timestamp::now())
        .into_iter()
        .filter(|o| !o.passed)
        .map(|o| {
            format!(
                "test {:?} at {}: expected {}, got {} ({})",
                o.name,
                o.location,
                o.expected,
                crate::policy::testcases::verdict_name(o.decision.verdict),
                o.decision.reason()
            )
        })
        .collect();
    if !failed.is_empty() {
        return refuse_reload(agent, why, format!("policy test cases fail:\n{}", failed.join("\n")));
    }
    if agent.snapshot.load().policy.agent != policy.agent {
        warn!("the [agent] table changed; those settings apply at the next restart");
    }
    let fresh = Snapshot::resolve(policy).await;
    if let Err(e) = agent.redirect.set_backends(&fresh.protected()) {
        return refuse_reload(agent, why, format!("updating the kernel's backend map failed: {e}"));
    }
    info!(trigger = why, backends = fresh.policy.backends.len(), rules = fresh.policy.rules.len(), "policy reloaded");
    agent.snapshot.store(Arc::new(fresh));
    agent.refresh_grants();
    agent.backends.clear_tls();
    *lock(&agent.files) = files;
    {
        let mut st = lock(&agent.policy_state);
        st.loaded_us = audit::now_us();
        st.files = crate::policy::load::policy_files(&agent.config_path).unwrap_or_default();
        st.reloads += 1;
        st.last_error = None;
        st.last_error_us = None;
    }
    recheck_sessions(agent, "policy reload");
}

fn refuse_reload(agent: &Agent, why: &str, error: String) {
    error!(trigger = why, "policy reload refused; the previous policy stays in force: {error}");
    let mut st = lock(&agent.policy_state);
    st.failures += 1;
    st.last_error = Some(error);
    st.last_error_us = Some(audit::now_us());
}

/// Re-decides every open session that has no statements of its own (opaque
/// TCP) under the current policy and time, and cuts those no longer allowed.
/// SQL sessions are re-checked on their next statement instead.
pub(super) fn recheck_sessions(agent: &Agent, why: &str) {
    let snap = agent.snapshot.load();
    let now = jiff::Timestamp::now();
    let live: Vec<(SessionId, Arc<LiveSession>)> = lock(&agent.live).iter().map(|(k, v)| (*k, v.clone())).collect();
    for (id, s) in live {
        if s.protocol.is_sql() {
            continue;
        }
        let d = snap.policy.decide_connect(&s.principal, &s.backend, now);
        if !d.allowed() {
            info!(session = %id, user = %s.principal, backend = %s.backend, trigger = why, "cutting session: {}", d.reason());
            s.cut(format!("{why}: {}", d.reason()));
        }
    }
}
