//! SSH backends, terminated (russh on both legs): Gatehouse is the SSH
//! server the client reaches and an SSH client of the backend.
//!
//! - The client leg presents a host certificate for the backend's names,
//!   signed by the agent's SSH host CA (`gatehouse ca ssh-host`; one
//!   `@cert-authority` line in the bastion's known_hosts). It accepts the
//!   `none` method or any offered key: who the user is comes from the kernel
//!   (and their OIDC login), never from the client's key.
//! - The backend leg checks the backend's host key (`host_key_file`) and
//!   logs in with a certificate signed per session with the operator's user
//!   CA (principal: the login user; key id naming the person; minutes of
//!   validity; `source-address`; `force-command` when the allowing rule or
//!   the backend sets one), or with a held key (per account: `ssh.keys`).
//! - Every channel request is decided by the policy (shell, exec command
//!   line, sftp operation, forwarding) and recorded; `approval` holds an exec
//!   or the start of a shell until an approver decides.
//!
//! The per-channel relay lives in `channel`, the connection's queue to each
//! channel in `inbox`, streaming output masking in `masking`, SFTP framing
//! and byte counts in `sftp`.

pub mod channel;
pub mod inbox;
pub mod keys;
pub mod masking;
pub mod sftp;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use russh::keys::PublicKey;
use russh::server::{Auth, ChannelOpenHandle, Msg, Session};
use russh::{Channel, ChannelId, ChannelOpenFailure, MethodKind, MethodSet, Pty, Sig};
use tokio::net::TcpStream;
use tracing::{info, warn};

use crate::audit::{self, BackendLogin, Event, SshEvent, SshWhat};
use crate::identity::Principal;
use crate::live::LiveSession;
use crate::policy::Backend;
use crate::policy::decide::{Decision, Request, Verdict};
use crate::policy::ssh::{Dest, Forward, SshAuth, SshRequest};
use crate::protocol::tcp::{End, RelayOutcome};
use crate::types::SessionId;

use channel::{Cmd, Start};
use inbox::{Inbox, Sent};

/// Channels one client may have open at once.
const MAX_CHANNELS: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("backend: {0}")]
    Backend(String),
    #[error("client: {0}")]
    Client(String),
    #[error("credentials: {0}")]
    Keys(#[from] keys::KeyError),
    #[error("ssh: {0}")]
    Ssh(#[from] russh::Error),
}

/// What an allowed session needs.
pub struct Ctx {
    pub svc: Arc<Services>,
    pub id: SessionId,
    pub principal: Principal,
    pub backend: Backend,
    pub addr: SocketAddr,
    pub live: Arc<LiveSession>,
    /// The rule's `as_role`: the account to log in as instead of the backend's user.
    pub as_user: Option<String>,
    /// The masking profile terminal and exec output passes through.
    pub mask: Option<Arc<crate::mask::Profile>>,
    /// The rule that allowed the session: its `force_command` goes into the
    /// upstream certificate.
    pub rule: Option<crate::types::RuleName>,
}

/// What an SSH session is given of the agent: handles onto the state it
/// shares with other sessions, nothing else (see `postgres::Services`).
/// Built by the proxy (`Agent::ssh_services`) for each session.
#[derive(Debug, Clone)]
pub struct Services {
    pub settings: Arc<crate::settings::Settings>,
    /// The policy in force.
    pub snapshot: Arc<arc_swap::ArcSwap<crate::live::Snapshot>>,
    /// The rules approved grants act as.
    pub grant_rules: Arc<arc_swap::ArcSwap<Vec<crate::policy::Rule>>>,
    pub audit: Arc<crate::audit::Audit>,
    /// Host certificates presented for the backends' names.
    pub ssh_host_certs: Arc<keys::HostCerts>,
    /// Where held execs and shells wait for a human.
    pub desk: Arc<dyn crate::approval::Desk>,
}

/// What the channels of one session share.
pub struct Shared {
    pub ctx: Ctx,
    pub up_bytes: AtomicU64,
    pub down_bytes: AtomicU64,
}

impl Shared {
    /// Decides one channel request with the policy in force now.
    pub fn decide(&self, req: &SshRequest<'_>) -> Decision {
        let snapshot = self.ctx.svc.snapshot.load();
        let r = Request { backend: &self.ctx.backend.name, statement: None, now: jiff::Timestamp::now() };
        snapshot.policy.decide_ssh_with(&self.ctx.principal, &r, req, &self.ctx.svc.grant_rules.load())
    }

    /// Records an SSH event (best effort: a full queue drops output records,
    /// never a decision — decisions go through [`Self::record_strict`]).
    pub fn record(&self, channel: u32, what: SshWhat, data: Vec<u8>) {
        let e = SshEvent { session: self.ctx.id, channel, what };
        if let Err(err) = self.ctx.svc.audit.record(Event::Ssh(Box::new(e), data)) {
            warn!(error = %err, "cannot record an ssh event");
        }
    }

    /// Records a decision and, in strict mode, waits until it is on record.
    pub async fn record_strict(&self, channel: u32, what: SshWhat) -> Result<(), audit::AuditError> {
        let e = SshEvent { session: self.ctx.id, channel, what };
        self.ctx.svc.audit.record_strict(Event::Ssh(Box::new(e), Vec::new())).wait().await
    }

    /// Records a request's decision (strict) and says whether to go on.
    pub async fn decided(
        &self,
        channel: u32,
        request: &str,
        detail: Option<String>,
        d: &Decision,
        approval: Option<u64>,
    ) -> bool {
        let what = SshWhat::Request {
            request: request.into(),
            detail,
            decision: d.verdict.into(),
            rule: d.rule.as_ref().map(ToString::to_string),
            reason: Some(d.reason().into_owned()),
            approval,
        };
        match self.record_strict(channel, what).await {
            Ok(()) => true,
            Err(e) => {
                warn!(error = %e, "cannot record an ssh request: refused (fail closed)");
                false
            }
        }
    }

    /// Opens the approval request a held exec or shell waits for (`None`:
    /// the rule names no approvers now; an error: no request could be opened).
    pub fn hold(&self, d: &Decision, what: &SshRequest<'_>) -> Result<Option<crate::approval::Waiting>, String> {
        let svc = &self.ctx.svc;
        let snapshot = svc.snapshot.load();
        let Some(rule) = snapshot.policy.rules.iter().find(|r| Some(&r.name) == d.rule.as_ref()) else {
            return Ok(None);
        };
        let Some(approval) = rule.approval.as_ref() else { return Ok(None) };
        svc.desk
            .request(
                crate::approval::Subject::Ssh {
                    session: self.ctx.id.to_string(),
                    backend: self.ctx.backend.name.to_string(),
                    request: what.describe(),
                    rule: rule.name.to_string(),
                },
                self.ctx.principal.clone(),
                approval,
                None,
                None,
            )
            .map(Some)
    }

    pub fn record_max(&self) -> u64 {
        self.ctx.svc.settings.record_max_bytes
    }
}

/// Serves one allowed SSH session until both legs are done or it is cut.
pub async fn serve(ctx: Ctx, client: TcpStream) -> RelayOutcome {
    let done = |end: End| RelayOutcome { up: 0, down: 0, end };
    let Some(ssh) = ctx.backend.ssh.clone() else {
        return done(End::Cut("the backend has no ssh settings".into()));
    };
    // The names the client may have dialled: the backend's names and its address.
    let mut names = ssh.host_names.clone();
    names.push(ctx.addr.ip().to_string());
    let (host_key, host_cert) = match ctx.svc.ssh_host_certs.for_names(&ctx.svc.settings.audit_db, &names) {
        Ok(pair) => pair,
        Err(e) => {
            warn!(error = %e, "no SSH host certificate: the session is refused");
            return done(End::Cut(format!("no SSH host certificate: {e}")));
        }
    };
    let login = ctx.as_user.clone().unwrap_or_else(|| ssh.user.clone());
    let upstream = connect_upstream(&ctx, &ssh, &login).await;
    let banner = match &upstream {
        Ok(_) => None,
        Err(e) => {
            warn!(error = %e, "cannot log in to the ssh backend");
            Some(format!("Gatehouse: cannot reach {} for you: {e}\r\n", ctx.backend.name))
        }
    };
    let config = Arc::new(russh::server::Config {
        server_id: russh::SshId::Standard("SSH-2.0-Gatehouse".into()),
        methods: MethodSet::from(&[MethodKind::None, MethodKind::PublicKey][..]),
        auth_rejection_time: Duration::from_millis(100),
        auth_rejection_time_initial: Some(Duration::ZERO),
        keys: vec![host_key],
        certificates: vec![host_cert],
        inactivity_timeout: None,
        nodelay: true,
        ..Default::default()
    });
    let cut = ctx.live.cut.clone();
    let reason = ctx.live.clone();
    let shared = Arc::new(Shared { ctx, up_bytes: AtomicU64::new(0), down_bytes: AtomicU64::new(0) });
    let (up, end_up) = match upstream {
        Ok((h, login_rec)) => {
            let _ = shared.ctx.svc.audit.record(Event::BackendLogin(Box::new(login_rec)));
            (Some(Arc::new(h)), None)
        }
        Err(e) => (None, Some(End::BackendError(e.to_string()))),
    };
    let front = Front { s: shared.clone(), up: up.clone(), banner, chans: HashMap::new(), queued: Arc::default() };
    let end = match russh::server::run_stream(config, client, front).await {
        Ok(running) => {
            let handle = running.handle();
            tokio::select! {
                r = running => match r {
                    Ok(()) => End::Closed,
                    Err(e) => End::ClientError(e.to_string()),
                },
                () = cut.cancelled() => {
                    let why = reason.reason();
                    let _ = handle
                        .disconnect(russh::Disconnect::ByApplication, format!("Gatehouse: session cut: {why}"), "en".into())
                        .await;
                    End::Cut(why)
                }
            }
        }
        Err(e) => End::ClientError(e.to_string()),
    };
    if let Some(h) = up {
        let _ = h.disconnect(russh::Disconnect::ByApplication, "", "en").await;
    }
    shared.ctx.svc.desk.withdraw_session(&shared.ctx.id.to_string());
    RelayOutcome {
        up: shared.up_bytes.load(Ordering::Relaxed),
        down: shared.down_bytes.load(Ordering::Relaxed),
        end: end_up.filter(|_| matches!(end, End::Closed)).unwrap_or(end),
    }
}

/// Checks the backend's host key against `host_key_file`.
struct Up {
    expected: PublicKey,
}

impl russh::client::Handler for Up {
    type Error = russh::Error;

    async fn check_server_key(&mut self, key: &russh::keys::PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        Ok(match key {
            russh::keys::PublicKeyOrCertificate::PublicKey { key, .. } => key.key_data() == self.expected.key_data(),
            russh::keys::PublicKeyOrCertificate::Certificate(c) => c.public_key() == self.expected.key_data(),
        })
    }
}

type UpHandle = russh::client::Handle<Up>;

/// Connects to the backend (marked, so the redirect leaves it alone),
/// checks its host key and logs in.
async fn connect_upstream(
    ctx: &Ctx,
    ssh: &crate::policy::ssh::SshBackend,
    login: &str,
) -> Result<(UpHandle, BackendLogin), SshError> {
    let expected = keys::read_public(&ssh.host_key_file, "ssh host_key_file")?;
    let tcp = crate::live::connect_upstream(ctx.addr, ctx.svc.settings.mark)
        .await
        .map_err(|e| SshError::Backend(format!("{}: {e}", ctx.addr)))?;
    let source = tcp.local_addr().ok().map(|a| a.ip());
    let config = Arc::new(russh::client::Config {
        inactivity_timeout: None,
        nodelay: true,
        client_id: russh::SshId::Standard("SSH-2.0-Gatehouse".into()),
        ..Default::default()
    });
    let mut h = russh::client::connect_stream(config, tcp, Up { expected }).await.map_err(|e| match e {
        russh::Error::UnknownKey => {
            SshError::Backend(format!("{}: its host key is not the one in host_key_file", ctx.addr))
        }
        other => SshError::Ssh(other),
    })?;
    let person = person_label(&ctx.principal);
    let forced = forced_command(ctx, ssh);
    let (auth, result) = match ssh.auth_for(login) {
        None => return Err(SshError::Backend(format!("no key for the account {login} (ssh.keys)"))),
        Some(SshAuth::UserCa { key_file }) => {
            let ca = keys::read_private(&key_file, "ssh user_ca_key_file")?;
            let serial = u64::try_from(audit::now_us()).unwrap_or(0);
            let spec = keys::UserCert {
                principal: login,
                key_id: format!("gatehouse:{person}:session={}", ctx.id),
                validity: ssh.cert_validity,
                source_address: source,
                force_command: forced.as_deref(),
                serial,
            };
            let (key, cert) = keys::user_cert(&ca, &spec, SystemTime::now())?;
            let text = cert.to_openssh().unwrap_or_default();
            let force = forced.as_deref().map(|c| format!(" force_command={c:?}")).unwrap_or_default();
            let auth = format!(
                "ssh-cert key_id={:?} principal={login} valid_before={} serial={serial}{force} cert={text}",
                cert.key_id(),
                cert.valid_before()
            );
            (auth, h.authenticate_openssh_cert(login, Arc::new(key), cert).await?)
        }
        Some(SshAuth::Key { key_file }) => {
            let key = keys::read_private(&key_file, "ssh key_file")?;
            let fingerprint = key.public_key().fingerprint(Default::default());
            let hash = h.best_supported_rsa_hash().await?.flatten();
            let key = russh::keys::PrivateKeyWithHashAlg::new(Arc::new(key), hash);
            // force-command is a certificate option: a held key's is the host's authorized_keys `command=`.
            let force = if forced.is_some() { " force_command=not-applied(held key)" } else { "" };
            let auth = format!("ssh-key (held) account={login} fingerprint={fingerprint}{force}");
            (auth, h.authenticate_publickey(login, key).await?)
        }
    };
    if !result.success() {
        return Err(SshError::Backend(format!("{} refused the login as {login} ({auth})", ctx.addr)));
    }
    let rec = BackendLogin {
        id: ctx.id,
        user: login.to_owned(),
        tls: "ssh".into(),
        server_name: Some(ctx.addr.to_string()),
        auth,
        ..BackendLogin::default()
    };
    Ok((h, rec))
}

/// The `force-command` of this session's certificate: the allowing rule's
/// (its own `force_command`, or its one exact command), else the backend's.
fn forced_command(ctx: &Ctx, ssh: &crate::policy::ssh::SshBackend) -> Option<String> {
    let snapshot = ctx.svc.snapshot.load();
    let rule = ctx.rule.as_ref().and_then(|n| snapshot.policy.rules.iter().find(|r| &r.name == n));
    rule.and_then(|r| r.ssh.forced_command()).or(ssh.force_command.as_deref()).map(str::to_owned)
}

/// The person, for the certificate's key id: the OIDC login's e-mail or
/// subject when there is one, else the Unix user.
fn person_label(p: &Principal) -> String {
    let unix = p.user.as_ref().map_or_else(|| format!("uid{}", p.uid), ToString::to_string);
    match &p.oidc {
        Some(o) => format!("{unix}({})", o.verified_email().unwrap_or(&o.subject)),
        None => unix,
    }
}

/// The client leg of one session.
struct Front {
    s: Arc<Shared>,
    up: Option<Arc<UpHandle>>,
    /// Said before authentication when the backend cannot be reached.
    banner: Option<String>,
    chans: HashMap<ChannelId, Inbox>,
    /// Bytes queued to all of this connection's channels (see [`inbox::CONNECTION_BUFFER`]).
    queued: Arc<std::sync::atomic::AtomicUsize>,
}

impl Front {
    /// Queues a command to a channel (see [`Inbox::send`] for when this waits).
    async fn send(&mut self, channel: ChannelId, cmd: Cmd) {
        if let Some(inbox) = self.chans.get(&channel)
            && inbox.send(cmd).await == Sent::Gone
        {
            self.chans.remove(&channel);
        }
    }

    /// A refused request on a session channel: said on stderr, exit 126.
    async fn refuse(&mut self, channel: ChannelId, why: String, session: &mut Session) {
        let _ = session.channel_success(channel);
        self.send(channel, Cmd::Refuse(why)).await;
    }

    /// Decides and records a start (shell, exec, sftp); queues it if allowed or held.
    async fn start(&mut self, channel: ChannelId, req: SshRequest<'_>, start: Start, session: &mut Session) {
        let d = self.s.decide(&req);
        let (label, detail) = match req {
            SshRequest::Shell => ("shell", None),
            SshRequest::Exec(c) => ("exec", Some(c.to_owned())),
            SshRequest::Subsystem("sftp") => ("sftp", None),
            SshRequest::Subsystem(_) => ("subsystem", None),
            SshRequest::Sftp { path, .. } => ("scp", Some(path.to_owned())),
            SshRequest::Forward(f) => (f.name(), None),
            SshRequest::ForwardTo { host, port } => ("direct-tcpip", Some(host.with_port(port))),
        };
        let (held, unopened) = match d.verdict {
            Verdict::NeedsApproval => match self.s.hold(&d, &req) {
                Ok(w) => (w, None),
                Err(why) => (None, Some(why)),
            },
            _ => (None, None),
        };
        // A terminal makes an allowed command a shell (a pager's `!sh`, an
        // editor's `:!`): the pty the client asked for is given only to a user
        // whose rules give a shell anyway — without an approval, which the
        // terminal would skip.
        let terminal = matches!(req, SshRequest::Shell) || self.s.decide(&SshRequest::Shell).verdict == Verdict::Allow;
        let on_record = self.s.decided(channel.number(), label, detail, &d, held.as_ref().map(|w| w.id)).await;
        match d.verdict {
            _ if !on_record => {
                self.refuse(channel, "Gatehouse: the audit store cannot record this".into(), session).await
            }
            Verdict::Allow => {
                info!(channel = channel.number(), request = %req.describe(), rule = d.rule_label(), "ssh request allowed");
                let _ = session.channel_success(channel);
                self.send(channel, Cmd::Start(start, None, terminal)).await;
            }
            Verdict::NeedsApproval if held.is_some() => {
                info!(channel = channel.number(), request = %req.describe(), "ssh request held for approval");
                let _ = session.channel_success(channel);
                if let Some(inbox) = self.chans.get(&channel) {
                    inbox.hold();
                }
                self.send(channel, Cmd::Start(start, held, terminal)).await;
            }
            Verdict::NeedsApproval | Verdict::Deny => {
                let why = unopened.unwrap_or_else(|| d.reason().into_owned());
                info!(channel = channel.number(), request = %req.describe(), rule = d.rule_label(), "ssh request refused: {why}");
                self.refuse(channel, format!("Gatehouse: refused: {why}"), session).await;
            }
        }
    }

    /// Decides a forwarding request; records it either way.
    async fn forward(&mut self, channel: ChannelId, kind: Forward, detail: Option<String>) -> bool {
        self.forward_request(channel, kind, SshRequest::Forward(kind), detail).await
    }

    async fn forward_request(
        &mut self,
        channel: ChannelId,
        kind: Forward,
        req: SshRequest<'_>,
        detail: Option<String>,
    ) -> bool {
        let d = self.s.decide(&req);
        let ok = self.s.decided(channel.number(), kind.name(), detail, &d, None).await;
        if !(ok && d.allowed()) {
            info!(kind = kind.name(), "ssh forwarding refused: {}", d.reason());
        }
        ok && d.allowed()
    }
}

/// The environment variables a client's `SendEnv`/`SetEnv` may pass to the
/// host: the locale (`LANG`, `LC_*`) and `COLORTERM`/`NO_COLOR` (Debian's
/// sshd accepts these by default), nothing that chooses code.
fn passed_env(name: &str) -> bool {
    name == "LANG"
        || name == "COLORTERM"
        || name == "NO_COLOR"
        || name
            .strip_prefix("LC_")
            .is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_uppercase() || b == b'_'))
}

impl russh::server::Handler for Front {
    type Error = russh::Error;

    async fn authentication_banner(&mut self) -> Result<Option<String>, Self::Error> {
        Ok(self.banner.clone())
    }

    /// The kernel said who this is; the client's account name and keys are not identity.
    async fn auth_none(&mut self, _user: &str) -> Result<Auth, Self::Error> {
        Ok(if self.up.is_some() { Auth::Accept } else { Auth::reject() })
    }

    async fn auth_publickey_offered(
        &mut self,
        _user: &str,
        _offer: russh::server::PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(if self.up.is_some() { Auth::Accept } else { Auth::reject() })
    }

    async fn auth_publickey(
        &mut self,
        _user: &str,
        _key: russh::server::VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(if self.up.is_some() { Auth::Accept } else { Auth::reject() })
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some(up) = self.up.clone() else {
            reply.reject(ChannelOpenFailure::ConnectFailed).await;
            return Ok(());
        };
        if self.chans.len() >= MAX_CHANNELS {
            reply.reject(ChannelOpenFailure::ResourceShortage).await;
            return Ok(());
        }
        let upstream = match up.channel_open_session().await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "the backend refused a session channel");
                reply.reject(ChannelOpenFailure::ConnectFailed).await;
                return Ok(());
            }
        };
        let id = channel.id();
        let (inbox, rx, q) = Inbox::channel(self.queued.clone());
        self.chans.insert(id, inbox);
        reply.accept().await;
        tokio::spawn(channel::Chan::new(self.s.clone(), channel, upstream, rx, q).run());
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host: &str,
        port: u32,
        orig_addr: &str,
        orig_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Decided, recorded and dialed as the host's resolver reads it: one
        // spelling (`2130706433`, `0x7f.1` and `::ffff:127.0.0.1` are 127.0.0.1).
        let dest = Dest::read(host);
        let mut detail = dest.with_port(port);
        if dest.dial().as_deref() != Some(host) {
            detail.push_str(&format!(" (the client wrote {host:?})"));
        }
        let req = SshRequest::ForwardTo { host: &dest, port };
        let dial = dest.dial();
        if !self.forward_request(channel.id(), Forward::DirectTcpip, req, Some(detail)).await {
            reply
                .reject(ChannelOpenFailure::Other {
                    code: 1,
                    reason: "Gatehouse: port forwarding is refused by the policy".into(),
                })
                .await;
            return Ok(());
        }
        let Some(up) = self.up.clone() else { return Ok(()) };
        let Some(dial) = dial else {
            reply.reject(ChannelOpenFailure::ConnectFailed).await;
            return Ok(());
        };
        match up.channel_open_direct_tcpip(dial, port, orig_addr, orig_port).await {
            Ok(upstream) => {
                reply.accept().await;
                tokio::spawn(channel::tunnel(self.s.clone(), channel, upstream));
            }
            Err(e) => {
                warn!(error = %e, "the backend refused a direct-tcpip channel");
                reply.reject(ChannelOpenFailure::ConnectFailed).await;
            }
        }
        Ok(())
    }

    async fn channel_open_x11(
        &mut self,
        channel: Channel<Msg>,
        _addr: &str,
        _port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.forward(channel.id(), Forward::X11, None).await;
        reply.reject(ChannelOpenFailure::AdministrativelyProhibited).await;
        Ok(())
    }

    async fn channel_open_direct_streamlocal(
        &mut self,
        channel: Channel<Msg>,
        path: &str,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let d = Decision::refuse("forwarding to Unix sockets is not supported");
        self.s.decided(channel.id().number(), "direct-streamlocal", Some(path.to_owned()), &d, None).await;
        reply.reject(ChannelOpenFailure::AdministrativelyProhibited).await;
        Ok(())
    }

    async fn tcpip_forward(&mut self, address: &str, port: &mut u32, _s: &mut Session) -> Result<bool, Self::Error> {
        let d = Decision::refuse("remote port forwarding (-R) is not supported");
        self.s.decided(u32::MAX, "tcpip-forward", Some(format!("{address}:{port}")), &d, None).await;
        Ok(false)
    }

    async fn streamlocal_forward(&mut self, path: &str, _s: &mut Session) -> Result<bool, Self::Error> {
        let d = Decision::refuse("remote forwarding of Unix sockets is not supported");
        self.s.decided(u32::MAX, "streamlocal-forward", Some(path.to_owned()), &d, None).await;
        Ok(false)
    }

    async fn agent_request(&mut self, channel: ChannelId, _session: &mut Session) -> Result<bool, Self::Error> {
        // Agent forwarding is never relayed (the policy refuses `forward = ["agent"]`).
        self.forward(channel, Forward::Agent, None).await;
        Ok(false)
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single: bool,
        _proto: &str,
        _cookie: &str,
        _screen: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.forward(channel, Forward::X11, None).await;
        let _ = session.channel_failure(channel);
        Ok(())
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        term: &str,
        cols: u32,
        rows: u32,
        pw: u32,
        ph: u32,
        modes: &[(Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let _ = session.channel_success(channel);
        self.send(channel, Cmd::Pty { term: term.to_owned(), cols, rows, pw, ph, modes: modes.to_vec() }).await;
        Ok(())
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Only the locale and colour hints are passed on (the host's sshd then
        // decides with AcceptEnv): on a host that accepts more, PATH, BASH_ENV,
        // LD_PRELOAD or a pager variable would make an allowed command run
        // another program.
        if !passed_env(name) {
            info!(channel = channel.number(), name, "ssh environment variable not passed on");
            let _ = session.channel_failure(channel);
            return Ok(());
        }
        let _ = session.channel_success(channel);
        self.send(channel, Cmd::Env(name.to_owned(), value.to_owned())).await;
        Ok(())
    }

    async fn shell_request(&mut self, channel: ChannelId, session: &mut Session) -> Result<(), Self::Error> {
        self.start(channel, SshRequest::Shell, Start::Shell, session).await;
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Ok(cmd) = std::str::from_utf8(data) else {
            let d = Decision::refuse("the command line is not UTF-8");
            self.s.decided(channel.number(), "exec", Some(String::from_utf8_lossy(data).into_owned()), &d, None).await;
            self.refuse(channel, "Gatehouse: refused: the command line is not UTF-8".into(), session).await;
            return Ok(());
        };
        // Legacy scp (`scp -O`): decided as an sftp read or write of its path.
        if let Some((path, write)) = channel::legacy_scp(cmd) {
            let start = Start::Exec(cmd.to_owned());
            self.start(channel, SshRequest::Sftp { path: &path, write }, start, session).await;
            return Ok(());
        }
        self.start(channel, SshRequest::Exec(cmd), Start::Exec(cmd.to_owned()), session).await;
        Ok(())
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let start = if name == "sftp" { Start::Sftp } else { Start::Subsystem(name.to_owned()) };
        self.start(channel, SshRequest::Subsystem(name), start, session).await;
        Ok(())
    }

    async fn window_change_request(
        &mut self,
        channel: ChannelId,
        cols: u32,
        rows: u32,
        pw: u32,
        ph: u32,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.send(channel, Cmd::Resize { cols, rows, pw, ph }).await;
        Ok(())
    }

    async fn signal(&mut self, channel: ChannelId, signal: Sig, _session: &mut Session) -> Result<(), Self::Error> {
        self.send(channel, Cmd::Signal(signal)).await;
        Ok(())
    }

    async fn data(&mut self, channel: ChannelId, data: &[u8], _session: &mut Session) -> Result<(), Self::Error> {
        self.s.up_bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
        self.send(channel, Cmd::Data(bytes::Bytes::copy_from_slice(data))).await;
        Ok(())
    }

    async fn channel_eof(&mut self, channel: ChannelId, _session: &mut Session) -> Result<(), Self::Error> {
        self.send(channel, Cmd::Eof).await;
        Ok(())
    }

    async fn channel_close(&mut self, channel: ChannelId, _session: &mut Session) -> Result<(), Self::Error> {
        if let Some(inbox) = self.chans.get(&channel) {
            inbox.closed();
        }
        self.send(channel, Cmd::Close).await;
        self.chans.remove(&channel);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::passed_env;

    #[test]
    fn only_the_locale_reaches_the_host() {
        for name in ["LANG", "LC_ALL", "LC_CTYPE", "COLORTERM", "NO_COLOR"] {
            assert!(passed_env(name), "{name}");
        }
        for name in ["PATH", "BASH_ENV", "ENV", "LD_PRELOAD", "PAGER", "LESSOPEN", "LC_", "LC_x", "lang", "TERM"] {
            assert!(!passed_env(name), "{name}");
        }
    }
}
