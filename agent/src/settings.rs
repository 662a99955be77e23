//! The agent's own settings: where it listens, pins, records and answers the
//! CLI. Each has a safe default, may be set in an `[agent]` table of a policy
//! file, and may be overridden by a command-line flag.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// Default proxy port. Below 1024 on purpose: while the agent is down the
/// kernel still sends protected connections to this port, and only root may
/// bind a privileged port, so no user can stand in for the proxy.
pub const DEFAULT_PORT: u16 = 996;
/// SO_MARK set on the proxy's own upstream sockets ("gate" in ASCII).
pub const DEFAULT_MARK: u32 = 0x6761_7465;
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/gatehouse";
pub const DEFAULT_AUDIT_DB: &str = "/var/lib/gatehouse/audit.db";
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/gatehouse/control.sock";
pub const DEFAULT_CONFIG: &str = "/etc/gatehouse";

/// The `[agent]` table as written in a policy file.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentRaw {
    pub listen_port: Option<u16>,
    pub listen_ipv6: Option<bool>,
    pub pin_dir: Option<PathBuf>,
    pub cgroup: Option<PathBuf>,
    pub audit_db: Option<PathBuf>,
    pub control_socket: Option<PathBuf>,
    pub mark: Option<u32>,
    pub shutdown_grace: Option<String>,
    pub resolve_interval: Option<String>,
    /// How often each backend's catalog is read again (default 30 s).
    pub catalog_refresh: Option<String>,
    /// "strict" (default) or "best-effort".
    pub audit_mode: Option<String>,
    /// fsync every audit commit (power-loss durability).
    pub audit_fsync: Option<bool>,
    pub retention_days: Option<u32>,
    /// Recorded bytes per statement result (PostgreSQL) or per session and direction (TCP).
    pub record_max_bytes: Option<u64>,
    pub checkpoint_interval: Option<String>,
    /// Members of this Unix group may read every session's records (root always may).
    pub auditor_group: Option<String>,
    /// Where each signed audit checkpoint is appended, for shipping off the
    /// host (default: `anchors.jsonl` beside the audit store).
    pub anchors_file: Option<PathBuf>,
    /// Also send each checkpoint to syslog (default true).
    pub anchors_syslog: Option<bool>,
    /// Setting-name patterns whose values are redacted from recorded
    /// statements, in addition to the built-in list (`sql::redact`).
    pub redact_settings: Option<Vec<String>>,
    /// Function names whose arguments are redacted from recorded
    /// statements, in addition to the built-in list.
    pub redact_functions: Option<Vec<String>>,
    /// Refusals of one kind from one uid to one backend are recorded once per
    /// window, the rest counted into one aggregate record (default "60s").
    pub refusal_window: Option<String>,
    /// Free bytes the audit store's filesystem keeps for allowed sessions:
    /// below it, refusals are no longer recorded (default 64 MiB).
    pub audit_disk_reserve: Option<u64>,
    /// Bytes that large PostgreSQL messages (a long value in a row, a big
    /// Query, Bind or COPY data) and MySQL packets may take in relay buffers
    /// across every session together (default 1 GiB).
    pub large_message_budget: Option<u64>,
    /// Connections the agent holds for one local user at once (default
    /// 1024; root is not counted): a session is one, an HTTP session one
    /// more per backend connection past its first; see `proxy::limits::PerUser`.
    pub max_connections_per_user: Option<u32>,
    /// Approval requests one local user may have pending at once (default
    /// 16; root is not counted): see `approval::Registry::open`.
    pub max_pending_requests_per_user: Option<u32>,
    /// Prometheus metrics and `/healthz`: `"127.0.0.1:9187"` (loopback
    /// only) or `"unix:/run/gatehouse/metrics.sock"`. Off when absent.
    pub metrics: Option<String>,
    /// `[agent.ship]`: copy committed audit records to a central PostgreSQL.
    pub ship: Option<crate::audit::ship::ShipRaw>,
    /// `[[agent.sink]]`: append committed records to a file or send them to syslog.
    pub sink: Option<Vec<crate::audit::sink::SinkRaw>>,
}

/// A count setting that must be at least 1: `default` when absent.
fn at_least_one(v: Option<u32>, default: usize, field: &'static str) -> Result<usize, SettingsError> {
    match v {
        None => Ok(default),
        Some(0) => Err(SettingsError::Invalid { field, message: "must be at least 1".into() }),
        Some(n) => Ok(n as usize),
    }
}

/// Validated settings of a running agent.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen_v4: Ipv4Addr,
    /// `::1`, unless IPv6 is switched off.
    pub listen_v6: Option<Ipv6Addr>,
    pub port: u16,
    pub pin_dir: PathBuf,
    /// The cgroup to attach to; `None` means the cgroup v2 root.
    pub cgroup: Option<PathBuf>,
    pub audit_db: PathBuf,
    pub control_socket: PathBuf,
    pub mark: u32,
    pub shutdown_grace: Duration,
    pub resolve_interval: Duration,
    pub catalog_refresh: Duration,
    pub audit: crate::audit::Options,
    pub record_max_bytes: u64,
    pub auditor_group: Option<String>,
    /// What is removed from recorded statements (`sql::redact`).
    pub redact: crate::sql::redact::Rules,
    /// The operator accepts a proxy port any user may bind while the agent is down.
    pub allow_unprivileged_port: bool,
    pub refusal_window: Duration,
    pub audit_disk_reserve: u64,
    /// See [`AgentRaw::large_message_budget`].
    pub large_message_budget: usize,
    /// See [`AgentRaw::max_connections_per_user`].
    pub max_connections_per_user: usize,
    /// See [`AgentRaw::max_pending_requests_per_user`].
    pub max_pending_requests_per_user: usize,
    /// Where `/metrics` and `/healthz` are served; `None`: not at all.
    pub metrics: Option<crate::metrics::Listen>,
    /// Where committed audit records are shipped, if anywhere.
    pub ship: Option<crate::audit::ship::Ship>,
    /// Files and syslog collectors committed records are delivered to.
    pub sinks: Vec<crate::audit::sink::Sink>,
}

/// Command-line overrides; `None` keeps the file's value or the default.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub port: Option<u16>,
    pub pin_dir: Option<PathBuf>,
    pub cgroup: Option<PathBuf>,
    pub audit_db: Option<PathBuf>,
    pub control_socket: Option<PathBuf>,
    /// `--allow-unprivileged-port`: only on the command line, never in a file.
    pub allow_unprivileged_port: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("[agent] {field}: {message}")]
    Invalid { field: &'static str, message: String },
}

impl Settings {
    pub fn resolve(raw: &AgentRaw, cli: &Overrides) -> Result<Self, SettingsError> {
        let port = cli.port.or(raw.listen_port).unwrap_or(DEFAULT_PORT);
        if port == 0 {
            return Err(SettingsError::Invalid { field: "listen_port", message: "must not be 0".into() });
        }
        let mark = raw.mark.unwrap_or(DEFAULT_MARK);
        if mark == 0 {
            return Err(SettingsError::Invalid { field: "mark", message: "must not be 0".into() });
        }
        let duration = |field, value: &Option<String>, default| match value {
            None => Ok(default),
            Some(s) => parse_duration(s).map_err(|message| SettingsError::Invalid { field, message }),
        };
        Ok(Self {
            listen_v4: Ipv4Addr::LOCALHOST,
            listen_v6: raw.listen_ipv6.unwrap_or(true).then_some(Ipv6Addr::LOCALHOST),
            port,
            pin_dir: pick(&cli.pin_dir, &raw.pin_dir, DEFAULT_PIN_DIR),
            cgroup: cli.cgroup.clone().or_else(|| raw.cgroup.clone()),
            audit_db: pick(&cli.audit_db, &raw.audit_db, DEFAULT_AUDIT_DB),
            control_socket: pick(&cli.control_socket, &raw.control_socket, DEFAULT_CONTROL_SOCKET),
            mark,
            shutdown_grace: duration("shutdown_grace", &raw.shutdown_grace, Duration::from_secs(10))?,
            resolve_interval: duration("resolve_interval", &raw.resolve_interval, Duration::from_secs(30))?,
            catalog_refresh: duration("catalog_refresh", &raw.catalog_refresh, Duration::from_secs(30))?,
            audit: crate::audit::Options {
                publish: crate::audit::anchors::Publish {
                    file: Some(raw.anchors_file.clone().unwrap_or_else(|| {
                        crate::secrets::dir_of(&pick(&cli.audit_db, &raw.audit_db, DEFAULT_AUDIT_DB))
                            .join("anchors.jsonl")
                    })),
                    syslog: raw.anchors_syslog.unwrap_or(true),
                },
                mode: match raw.audit_mode.as_deref() {
                    None | Some("strict") => crate::audit::Mode::Strict,
                    Some("best-effort") => crate::audit::Mode::BestEffort,
                    Some(other) => {
                        return Err(SettingsError::Invalid {
                            field: "audit_mode",
                            message: format!("{other:?}: use \"strict\" or \"best-effort\""),
                        });
                    }
                },
                fsync: raw.audit_fsync.unwrap_or(false),
                checkpoint_every: duration("checkpoint_interval", &raw.checkpoint_interval, Duration::from_secs(10))?,
                retention_days: raw.retention_days,
            },
            record_max_bytes: raw.record_max_bytes.unwrap_or(1 << 20),
            auditor_group: raw.auditor_group.clone(),
            redact: crate::sql::redact::Rules::new(
                raw.redact_settings.as_deref().unwrap_or_default(),
                raw.redact_functions.as_deref().unwrap_or_default(),
            ),
            allow_unprivileged_port: cli.allow_unprivileged_port,
            refusal_window: duration("refusal_window", &raw.refusal_window, Duration::from_secs(60))?,
            audit_disk_reserve: raw.audit_disk_reserve.unwrap_or(64 << 20),
            large_message_budget: match raw.large_message_budget {
                None => 1 << 30,
                Some(b) if b < 1 << 20 => {
                    return Err(SettingsError::Invalid {
                        field: "large_message_budget",
                        message: format!("{b} bytes: at least 1 MiB (1048576)"),
                    });
                }
                Some(b) => usize::try_from(b).unwrap_or(usize::MAX),
            },
            max_connections_per_user: at_least_one(raw.max_connections_per_user, 1024, "max_connections_per_user")?,
            max_pending_requests_per_user: at_least_one(
                raw.max_pending_requests_per_user,
                16,
                "max_pending_requests_per_user",
            )?,
            metrics: raw
                .metrics
                .as_deref()
                .map(str::parse)
                .transpose()
                .map_err(|message| SettingsError::Invalid { field: "metrics", message })?,
            ship: raw
                .ship
                .as_ref()
                .map(crate::audit::ship::Ship::try_from)
                .transpose()
                .map_err(|e| SettingsError::Invalid { field: "ship", message: e.to_string() })?,
            sinks: crate::audit::sink::validate(raw.sink.as_deref().unwrap_or_default())
                .map_err(|e| SettingsError::Invalid { field: "sink", message: e.to_string() })?,
        })
    }
}

fn pick(cli: &Option<PathBuf>, file: &Option<PathBuf>, default: &str) -> PathBuf {
    cli.clone().or_else(|| file.clone()).unwrap_or_else(|| PathBuf::from(default))
}

/// The host's audit signing key, beside the audit store.
pub fn host_key_path(audit_db: &std::path::Path) -> std::path::PathBuf {
    audit_db.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(std::path::Path::new(".")).join("host.key")
}

/// The host's secret for masking hash tokens: 32 random bytes in `mask.key`
/// beside the audit store, made on first start (0600, written atomically,
/// read without following a symlink, root-owned; see `secrets`).
pub fn mask_key(audit_db: &std::path::Path) -> Result<crate::mask::MaskKey, SettingsError> {
    let dir = crate::secrets::dir_of(audit_db);
    let path = dir.join("mask.key");
    let err = |message: String| SettingsError::Invalid { field: "mask key", message };
    crate::secrets::state_dir(dir).map_err(|e| err(e.to_string()))?;
    match crate::secrets::read_secret(&path, "masking key") {
        Ok(s) => {
            let bytes: [u8; 32] = s
                .expose()
                .try_into()
                .map_err(|_| err(format!("{}: holds {} bytes, not 32", path.display(), s.len())))?;
            Ok(crate::mask::MaskKey::new(bytes))
        }
        Err(e) if matches!(e.problem, crate::secrets::FileProblem::Missing) => {
            let key = crate::secrets::random32().map_err(|e| err(e.to_string()))?;
            crate::secrets::write_atomic(&path, key.as_ref(), 0o600)
                .map_err(|e| err(format!("{}: {e}", path.display())))?;
            Ok(crate::mask::MaskKey::new(*key))
        }
        Err(e) => Err(err(e.to_string())),
    }
}

/// A whole number of seconds as people write it: `90s`, `10m`, `2h`, `1d`.
pub fn format_duration_s(secs: u64) -> String {
    match secs {
        s if s >= 86_400 && s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s >= 3_600 && s % 3_600 == 0 => format!("{}h", s / 3_600),
        s if s >= 60 && s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// Parses durations as operators write them: `500ms`, `30s`, `10m`, `2h`, `1d`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits.parse().map_err(|_| format!("{s:?} is not a duration; write e.g. \"30s\", \"10m\", \"2h\""))?;
    let secs = match unit {
        "ms" => return Ok(Duration::from_millis(n)),
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("{s:?}: unknown unit {unit:?}; use ms, s, m, h or d")),
    };
    n.checked_mul(secs).map(Duration::from_secs).ok_or_else(|| format!("{s:?} is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("m").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
    }

    #[test]
    fn cli_beats_file_beats_default() {
        let raw = AgentRaw { listen_port: Some(1500), audit_db: Some("/a.db".into()), ..Default::default() };
        let cli = Overrides { port: Some(1600), ..Default::default() };
        let s = Settings::resolve(&raw, &cli).unwrap();
        assert_eq!(s.port, 1600);
        assert_eq!(s.audit_db, PathBuf::from("/a.db"));
        assert_eq!(s.pin_dir, PathBuf::from(DEFAULT_PIN_DIR));
    }
}
