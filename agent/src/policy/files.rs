//! The files a policy names, checked before an agent uses the policy (at
//! start and at every reload) and by `gatehouse policy check`: password
//! files and TLS private keys must be secrets (regular files, root-owned,
//! 0600, not reached through a symlink, in a directory others cannot
//! write); CA files and certificates must be root's to change. A problem is
//! an error: the agent does not start (or keeps its previous policy).
//!
//! The same pass warns about what is allowed but weak: backends reached
//! without a verified certificate, authentication methods that hand the
//! server the password, and `client_tls` certificates that are expired or
//! about to be.

use crate::policy::{Backend, Diagnostic, Diagnostics, Policy, TlsMode};
use crate::protocol::postgres::tls;
use crate::secrets::{self, Kind};
use crate::types::BackendName;

/// A `client_tls` certificate that expires within this many days is warned about.
const EXPIRY_WARNING_DAYS: i64 = 14;

/// What a check found besides errors.
#[derive(Debug, Clone, Default)]
pub struct FileReport {
    pub warnings: Vec<String>,
    /// Each `client_tls` certificate's end of validity (seconds since the epoch), or why it is unknown.
    pub client_tls: Vec<(BackendName, Result<i64, String>)>,
}

/// Checks every file the policy names; `now` in seconds since the epoch.
pub fn check(policy: &Policy, now: i64) -> Result<FileReport, Diagnostics> {
    let mut errors = Vec::new();
    let mut report = FileReport::default();
    for b in &policy.backends {
        check_backend(b, now, &mut errors, &mut report);
    }
    sni_notes(policy, &mut report.warnings);
    hold_alert_notes(policy, &mut report.warnings);
    for r in policy.rules.iter().filter(|r| r.action == crate::policy::Action::Allow) {
        if r.ssh.forward.contains(&crate::policy::ssh::Forward::DirectTcpip) && r.ssh.forward_to.is_empty() {
            report.warnings.push(format!(
                "rule `{}`: forward = [\"direct-tcpip\"] without forward_to forwards anywhere the host can reach, protected backends included (the connection starts on the host, where the redirect does not see it); list the destinations in forward_to",
                r.name
            ));
        }
    }
    // A notification's secret is a secret; its command runs as root, so only root may change it.
    for n in &policy.notify {
        if let Some(p) = &n.secret_file
            && let Err(e) = secrets::open_checked(p, "notify secret_file", Kind::Secret)
        {
            errors.push(Diagnostic::new(n.at.clone(), format!("notify `{}`: {e}", n.name)));
        }
        if let Some(program) = n.command.as_ref().and_then(|c| c.first())
            && let Err(e) = secrets::open_checked(std::path::Path::new(program), "notify command", Kind::Trusted)
        {
            errors.push(Diagnostic::new(n.at.clone(), format!("notify `{}`: {e}", n.name)));
        }
    }
    if let Some(i) = &policy.identity {
        let mut file = |path: &std::path::Path, what: &'static str, kind: Kind| {
            if let Err(e) = secrets::open_checked(path, what, kind) {
                errors.push(Diagnostic::new(i.at.clone(), format!("[identity]: {e}")));
            }
        };
        if let Some(p) = &i.client_secret_file {
            file(p, "client_secret_file", Kind::Secret);
        }
        if let Some(p) = &i.ca_file {
            file(p, "ca_file", Kind::Trusted);
        }
    }
    if errors.is_empty() { Ok(report) } else { Err(Diagnostics(errors)) }
}

fn check_backend(b: &Backend, now: i64, errors: &mut Vec<Diagnostic>, report: &mut FileReport) {
    // Read and parsed now, so a bad key stops the policy, not the first login that needs it.
    if let Some(k) = &b.server_public_key
        && let Err(e) = crate::protocol::mysql::server_public_key(k)
    {
        errors.push(Diagnostic::new(b.at.clone(), format!("backend `{}`: {e}", b.name)));
    }
    let mut file = |path: &std::path::Path, what: &'static str, kind: Kind| {
        if let Err(e) = secrets::open_checked(path, what, kind) {
            errors.push(Diagnostic::new(b.at.clone(), format!("backend `{}`: {e}", b.name)));
        }
    };
    for login in b.credentials.iter().chain(b.roles.values()) {
        if let Some(p) = &login.password_file {
            file(p, "password file", Kind::Secret);
        }
        if let Some(d) = &login.dynamic {
            file(&d.admin_password_file, "dynamic admin_password_file", Kind::Secret);
        }
    }
    if let Some(ca) = &b.ca_file {
        file(ca, "ca_file", Kind::Trusted);
    }
    if let Some(c) = &b.client_tls {
        file(&c.key_file, "client_tls key_file", Kind::Secret);
        file(&c.cert_file, "client_tls cert_file", Kind::Trusted);
        let expiry = tls::certificate_expiry(&c.cert_file).map_err(|e| e.to_string());
        match &expiry {
            Ok(t) if *t <= now => report.warnings.push(format!(
                "backend `{}`: the client_tls certificate {} EXPIRED at {}; clients that verify it will refuse to connect",
                b.name,
                c.cert_file.display(),
                when(*t)
            )),
            Ok(t) if *t - now < EXPIRY_WARNING_DAYS * 86_400 => report.warnings.push(format!(
                "backend `{}`: the client_tls certificate {} expires at {}",
                b.name,
                c.cert_file.display(),
                when(*t)
            )),
            Ok(_) => {}
            Err(e) => report.warnings.push(format!("backend `{}`: client_tls certificate: {e}", b.name)),
        }
        report.client_tls.push((b.name.clone(), expiry));
    }
    if let Some(s) = &b.ssh {
        for (f, what) in s.key_files() {
            file(f, what, Kind::Secret);
        }
        file(&s.host_key_file, "ssh host_key_file", Kind::Trusted);
    }
    if let Some(h) = &b.http {
        for f in h.credentials.iter().flat_map(|c| c.files()) {
            file(f, "http credential file", Kind::Secret);
        }
        http_warnings(b, h, &mut report.warnings);
    }
    if b.get_server_public_key && b.server_public_key.is_none() && b.tls != TlsMode::Verify {
        report.warnings.push(format!(
            "backend `{}`: get_server_public_key = true takes the RSA key whoever answers at the backend's address sends: an impostor gets the password (pin the key with server_public_key)",
            b.name
        ));
    }
    if b.protocol.is_sql() {
        match b.tls {
            TlsMode::Verify => {}
            TlsMode::Prefer => report.warnings.push(format!(
                "backend `{}`: tls = \"prefer\" encrypts without checking the server's certificate: an impostor is not detected ({})",
                b.name,
                if b.protocol == crate::policy::Protocol::Mysql {
                    "and gets the login's password scramble, which it can attack offline"
                } else {
                    "only SCRAM logins are allowed to it"
                }
            )),
            TlsMode::Off => report.warnings.push(format!(
                "backend `{}`: tls = \"off\": statements, results and the login travel in plaintext and the server is not authenticated",
                b.name
            )),
        }
        if b.tls != TlsMode::Verify
            && let Some(weak) = b.require_auth.iter().flatten().find(|m| m.reveals_secret())
        {
            report.warnings.push(format!(
                "backend `{}`: require_auth allows {} without a verified certificate: whoever answers at its address gets the password (or a replayable hash)",
                b.name,
                weak.name()
            ));
        }
    }
}

/// What an HTTP backend's TLS mode leaves out, and which hosts it serves.
fn http_warnings(b: &Backend, h: &crate::policy::http::HttpBackend, warnings: &mut Vec<String>) {
    use crate::policy::http::HttpTls;
    if h.tls != HttpTls::Passthrough
        && h.server_names.is_empty()
        && b.tls_server_name.is_none()
        && let crate::policy::Target::Addr(a) = &b.target
    {
        warnings.push(format!(
            "backend `{}`: it has no names, so requests must name its address ({}) in Host; a request for a name (a client using http://orders.internal/) gets 421 — list the names clients use in server_names",
            b.name,
            a.ip()
        ));
    }
    match h.tls {
        HttpTls::Passthrough => warnings.push(format!(
            "backend `{}`: tls = \"passthrough\": HTTPS is relayed as opaque TCP: only the connection is decided and only byte counts are recorded (no request policy, credentials, masking or request records); write tls = \"terminate\" for those",
            b.name
        )),
        HttpTls::Off => {
            let port = match &b.target {
                crate::policy::Target::Addr(a) => a.port(),
                crate::policy::Target::Host { port, .. } => *port,
            };
            if port == 443 {
                warnings.push(format!(
                    "backend `{}`: tls = \"off\" on port 443: if clients speak HTTPS there, their requests cannot be read; write tls = \"terminate\" (or \"passthrough\" to relay them opaquely)",
                    b.name
                ));
            }
        }
        HttpTls::Upstream | HttpTls::Terminate => {}
    }
}

/// Backends sharing an address: which TLS server name reaches which.
fn sni_notes(policy: &crate::policy::Policy, warnings: &mut Vec<String>) {
    let mut seen = std::collections::BTreeSet::new();
    for b in &policy.backends {
        let group = crate::policy::http::sharing(policy, b);
        let crate::policy::Target::Addr(addr) = b.target else { continue };
        if group.len() < 2 || !seen.insert(addr) {
            continue;
        }
        let each: Vec<String> = group
            .iter()
            .map(|g| {
                let names = g.http.as_ref().map(|h| h.server_names.join(", ")).unwrap_or_default();
                format!("{names} → `{}`", g.name)
            })
            .collect();
        warnings.push(format!(
            "backends share {addr}: the TLS server name (SNI) a client asks for picks the backend, its rules, credentials and certificate ({}); any other name, or none, is refused with a TLS alert",
            each.join("; ")
        ));
    }
}

/// A `hold` alert needs an approver to ask: without any rule that names
/// one, every statement after the alert fires is refused.
fn hold_alert_notes(policy: &crate::policy::Policy, warnings: &mut Vec<String>) {
    if policy.rules.iter().any(|r| r.approval.is_some()) {
        return;
    }
    for a in policy.trail.alerts.iter().filter(|a| a.action == crate::trail::AlertAction::Hold) {
        warnings.push(format!(
            "alert `{}` holds the reader's next statement for approval, but no rule names approvers: once it fires, that statement is refused instead",
            a.name
        ));
    }
}

fn when(t: i64) -> String {
    jiff::Timestamp::from_second(t).map(|t| t.to_string()).unwrap_or_else(|_| t.to_string())
}
