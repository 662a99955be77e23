//! `gatehouse run`, `status` and `detach`: the agent itself and what it left in the kernel.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use super::{fail, fmt_time};
use crate::control::{self, Request, Response};
use crate::policy::load::{LoadOptions, load_path, load_path_with};
use crate::redirect::{self, PinStatus};
use crate::settings::{self, Overrides, Settings};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Policy file, or directory of *.toml policy files.
    #[arg(long, short, default_value = settings::DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Proxy port on 127.0.0.1 and ::1 (default 996; below 1024 so only root can stand in for it).
    #[arg(long)]
    pub port: Option<u16>,
    /// Accept a proxy port at or above net.ipv4.ip_unprivileged_port_start. While the agent
    /// is down any local user could bind it and collect other users' connections: for tests only.
    #[arg(long)]
    pub allow_unprivileged_port: bool,
    /// Cgroup (v2) to attach to; default: the cgroup v2 root, i.e. the whole host.
    #[arg(long)]
    pub cgroup: Option<PathBuf>,
    /// bpffs directory for pinned links and maps.
    #[arg(long)]
    pub pin_dir: Option<PathBuf>,
    /// Audit database (SQLite).
    #[arg(long)]
    pub audit_db: Option<PathBuf>,
    /// Control socket the CLI talks to.
    #[arg(long)]
    pub control_socket: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[arg(long, default_value = settings::DEFAULT_CONTROL_SOCKET)]
    pub control_socket: PathBuf,
    /// Pin directory to inspect when the agent is not running.
    #[arg(long, default_value = settings::DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DetachArgs {
    #[arg(long, default_value = settings::DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,
    #[arg(long, default_value = settings::DEFAULT_CONTROL_SOCKET)]
    pub control_socket: PathBuf,
    /// Detach even though the agent is running.
    #[arg(long)]
    pub force: bool,
}

pub(super) async fn run(a: RunArgs) -> ExitCode {
    if !nix::unistd::geteuid().is_root() {
        return fail("`gatehouse run` needs root (it attaches eBPF programs and binds a privileged port)");
    }
    let policy = match load_path(&a.config) {
        Ok(p) => p,
        Err(d) => return fail(format_args!("policy {} does not load:\n{d}", a.config.display())),
    };
    let overrides = Overrides {
        port: a.port,
        pin_dir: a.pin_dir,
        cgroup: a.cgroup,
        audit_db: a.audit_db,
        control_socket: a.control_socket,
        allow_unprivileged_port: a.allow_unprivileged_port,
    };
    let settings = match Settings::resolve(&policy.agent, &overrides) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    // Masking profiles' hash tokens are keyed by a secret of this host, kept
    // beside the audit store; the policy is loaded again with it.
    let load_options = match settings::mask_key(&settings.audit_db) {
        Ok(mask_key) => LoadOptions { mask_key },
        Err(e) => return fail(e),
    };
    let policy = match load_path_with(&a.config, &load_options) {
        Ok(p) => p,
        Err(d) => return fail(format_args!("policy {} does not load:\n{d}", a.config.display())),
    };
    let files = match crate::policy::files::check(&policy, jiff::Timestamp::now().as_second()) {
        Ok(f) => f,
        Err(d) => return fail(format_args!("policy {} names files that may not be used:\n{d}", a.config.display())),
    };
    for w in &files.warnings {
        tracing::warn!("{w}");
    }
    let failed: Vec<_> = policy.run_tests(jiff::Timestamp::now()).into_iter().filter(|o| !o.passed).collect();
    if !failed.is_empty() {
        for o in &failed {
            eprintln!("FAIL {} at {}: expected {}, got {}", o.name, o.location, o.expected, o.decision.reason());
        }
        return fail(format_args!(
            "{} policy test case(s) fail; not starting with a policy that fails its own tests",
            failed.len()
        ));
    }
    match crate::proxy::run(settings, policy, files, a.config, load_options, control::serve).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

pub(super) async fn status(a: StatusArgs) -> ExitCode {
    match control::request(&a.control_socket, &Request::Status).await {
        Ok(Response::Status(s)) => {
            if a.json {
                println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
            } else {
                print_status(&s);
            }
            ExitCode::SUCCESS
        }
        Ok(Response::Error { message }) => fail(message),
        Ok(_) => fail("unexpected answer from the agent"),
        Err(e) => {
            let pins = PinStatus::read(&a.pin_dir);
            if a.json {
                let v = serde_json::json!({ "running": false, "error": e.to_string(), "pins": pins });
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                println!("agent:     not running ({e})");
                print_pins(&pins);
                if pins.links.iter().any(|l| l.pinned) {
                    println!(
                        "note:      programs are still attached: protected backends are refused (fail closed) until the agent returns or `gatehouse detach` runs"
                    );
                }
            }
            ExitCode::from(3)
        }
    }
}

fn print_status(s: &control::AgentStatus) {
    println!("agent:     running, pid {} (version {}), since {}", s.pid, s.version, fmt_time(s.started_us));
    println!("config:    {}", s.config.display());
    println!("listening: {}", s.listening.join(", "));
    println!(
        "cgroup:    {}{}",
        s.cgroup.display(),
        if s.reused_pins { " (pins reused from a previous run)" } else { "" }
    );
    if let Ok(pins) = serde_json::from_value::<serde_json::Value>(s.pins.clone()) {
        if let Some(links) = pins.get("links").and_then(|l| l.as_array()) {
            let attached: Vec<String> = links
                .iter()
                .map(|l| {
                    format!(
                        "{}{}",
                        l.get("name").and_then(|n| n.as_str()).unwrap_or("?"),
                        l.get("program_id")
                            .and_then(serde_json::Value::as_u64)
                            .map(|p| format!("(prog {p})"))
                            .unwrap_or_else(|| "(missing)".into())
                    )
                })
                .collect();
            println!("programs:  {}", attached.join(" "));
        }
        println!("pins:      {}", pins.get("pin_dir").and_then(|p| p.as_str()).unwrap_or("?"));
    }
    let health = &s.pin_health;
    let repinned = health.get("repinned").and_then(serde_json::Value::as_u64).unwrap_or(0);
    if let Some(event) = health.get("last_event").and_then(serde_json::Value::as_str) {
        println!("pins:      {repinned} restored after removal; last: {event}");
    }
    for (what, key) in [("DETACHED", "detached"), ("MISSING", "missing")] {
        if let Some(list) = health.get(key).and_then(serde_json::Value::as_array).filter(|l| !l.is_empty()) {
            println!(
                "pins:      {what}: {}",
                list.iter().filter_map(serde_json::Value::as_str).collect::<Vec<_>>().join(", ")
            );
        }
    }
    println!("refusals:  {}", s.refusals);
    println!("limits:    {} descriptors; {} control connections refused (too many open)", s.nofile, s.control_refused);
    if let Some(max) = s.per_user.get("max_connections_per_user").and_then(serde_json::Value::as_u64) {
        let busiest = s
            .per_user
            .get("open_by_uid")
            .and_then(serde_json::Value::as_object)
            .and_then(|m| m.iter().filter_map(|(u, n)| Some((n.as_u64()?, u.clone()))).max());
        match busiest {
            Some((n, uid)) => {
                println!("           connections: at most {max} per user; uid {uid} holds the most ({n})")
            }
            None => println!("           connections: at most {max} per user; none open"),
        }
    }
    println!("audit:     {} ({:?} mode)", s.audit_db.display(), s.audit_mode);
    if let Some(f) = &s.audit_failure {
        println!("audit:     FAILED, failing closed: {f}");
    }
    println!("host key:  {} (verifies audit checkpoints and exports)", s.public_key);
    if let Some(f) = &s.public_key_file {
        println!(
            "           also in {}; record it off this host (or in /etc/gatehouse/audit.pub by configuration management): `gatehouse verify` trusts only keys from outside the store",
            f.display()
        );
    }
    println!("rules:     {}", s.rules);
    let reloads = s.policy.get("reloads").and_then(serde_json::Value::as_u64).unwrap_or(0);
    println!(
        "policy:    loaded {}, {reloads} reload(s)",
        s.policy.get("loaded_us").and_then(serde_json::Value::as_i64).map(fmt_time).unwrap_or_default()
    );
    if let Some(err) = s.policy.get("last_error").and_then(serde_json::Value::as_str) {
        println!("policy:    LAST RELOAD REFUSED (previous policy still in force):");
        for line in err.lines() {
            println!("             {line}");
        }
    }
    println!("backends:");
    for b in &s.backends {
        let addrs = if b.addresses.is_empty() { "(unresolved)".to_owned() } else { b.addresses.join(", ") };
        let tls = b.tls.as_deref().map(|t| format!(" tls={t}")).unwrap_or_default();
        println!("  {:<20} {:<8} {addrs}{tls}", b.name, b.protocol);
        if let Some(l) = &b.last_login {
            println!(
                "  {:<20} last login: {} as {}, {}, auth {}{}",
                "",
                b.last_login_us.map(fmt_time).unwrap_or_default(),
                l.user,
                // The certificate's names are the backend's to choose.
                crate::audit::replay::escape_all(&l.tls_summary()),
                l.auth,
                l.certificate_sha256.as_deref().map(|c| format!(", certificate sha256 {c}")).unwrap_or_default()
            );
        }
        if let Some(t) = b.client_tls_expires {
            println!("  {:<20} client_tls certificate valid until {}", "", fmt_time(t.saturating_mul(1_000_000)));
        }
        for w in &b.warnings {
            println!("  {:<20} WARNING: {w}", "");
        }
    }
    for w in &s.warnings {
        println!("warning:   {w}");
    }
    println!("health:    {}", s.health);
    if let Some(m) = &s.metrics {
        println!("metrics:   {m}");
    }
    println!("sessions:  {}", s.sessions);
    println!("kernel:    {}", s.kernel);
}

fn print_pins(p: &PinStatus) {
    println!("pins:      {}", p.pin_dir.display());
    for l in &p.links {
        let state = match (l.pinned, l.program_id) {
            (true, Some(id)) => format!("attached (link {}, prog {id})", l.link_id.unwrap_or(0)),
            (true, None) => "pinned, unreadable".into(),
            (false, _) => "absent".into(),
        };
        println!("  {:<20} {state}", l.name);
    }
    if let Some(port) = p.proxy_port {
        println!("redirects: to port {port}; protected: {:?}", p.protected);
    }
}

pub(super) async fn detach(a: DetachArgs) -> ExitCode {
    if !nix::unistd::geteuid().is_root() {
        return fail("`gatehouse detach` needs root");
    }
    if !a.force && control::request(&a.control_socket, &Request::Status).await.is_ok() {
        return fail("the agent is running; stop it first (or pass --force to leave it running without redirection)");
    }
    match redirect::detach(&a.pin_dir) {
        Ok(removed) if removed.is_empty() => {
            println!("nothing pinned under {}", a.pin_dir.display());
            ExitCode::SUCCESS
        }
        Ok(removed) => {
            for p in removed {
                println!("removed {}", p.display());
            }
            println!("detached: connections to protected backends now go direct, unprotected");
            ExitCode::SUCCESS
        }
        Err(e) => fail(format_args!("detach {}: {e}", a.pin_dir.display())),
    }
}
