//! What the agent holds live and hands to the sessions it serves: the
//! policy in force and where its backends are (`Snapshot`), an open
//! session's handle (`LiveSession`), why a connection is refused
//! (`ConnectRefusal`), the dialer to backends (`connect_upstream`), the
//! backends' TLS configurations and last logins (`Backends`) and `lock`.
//! The protocol adapters take these from here, not from `proxy`, which owns
//! the agent and calls the adapters (the PostgreSQL, MySQL and SSH adapters
//! import nothing of `proxy`; HTTP still takes the `Agent` itself).

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::net::{TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::identity::Principal;
use crate::policy::{Backend, Policy, Protocol, Target};
use crate::types::BackendName;

/// How long an upstream connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The policy in force and the addresses its backends resolved to.
#[derive(Debug)]
pub struct Snapshot {
    pub policy: Policy,
    pub routes: HashMap<SocketAddr, BackendName>,
}

impl Snapshot {
    /// Resolves every backend's addresses (names through DNS/NSS).
    pub async fn resolve(policy: Policy) -> Self {
        let mut routes = HashMap::new();
        for b in &policy.backends {
            for addr in resolve_backend(b).await {
                routes.insert(addr, b.name.clone());
            }
        }
        Self { policy, routes }
    }

    /// Which backend a redirected connection to `orig` is for, and where the
    /// proxy connects upstream. A connection to another local address
    /// (unspecified, loopback, this host's interfaces) on the port of a local
    /// backend is an alias of it, when exactly one backend is local on that
    /// port; see `redirect::local`.
    pub fn route(&self, orig: SocketAddr, interfaces: &BTreeSet<IpAddr>) -> Route<'_> {
        use crate::redirect::local::is_local;
        if let Some((addr, name)) = self.routes.get_key_value(&orig) {
            return Route::Backend { name, upstream: *addr };
        }
        if !is_local(orig.ip(), interfaces) {
            return Route::Unknown;
        }
        let mut local: Vec<(&SocketAddr, &BackendName)> =
            self.routes.iter().filter(|(a, _)| a.port() == orig.port() && is_local(a.ip(), interfaces)).collect();
        local.sort();
        let mut names: Vec<&BackendName> = local.iter().map(|(_, n)| *n).collect();
        names.dedup();
        match (names.as_slice(), local.first()) {
            ([one], Some((addr, _))) => Route::Backend { name: one, upstream: **addr },
            ([], _) | (_, None) => Route::Unknown,
            (many, _) => Route::Ambiguous(many.to_vec()),
        }
    }

    pub(crate) fn protected(&self) -> HashMap<SocketAddr, u32> {
        let index: HashMap<&BackendName, u32> = self
            .policy
            .backends
            .iter()
            .enumerate()
            .map(|(i, b)| (&b.name, u32::try_from(i).unwrap_or(u32::MAX)))
            .collect();
        self.routes.iter().map(|(a, n)| (*a, index.get(n).copied().unwrap_or(u32::MAX))).collect()
    }
}

/// Where a redirected connection goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route<'a> {
    Backend {
        name: &'a BackendName,
        upstream: SocketAddr,
    },
    /// A local alias of several local backends on one port: refused.
    Ambiguous(Vec<&'a BackendName>),
    Unknown,
}

async fn resolve_backend(b: &Backend) -> Vec<SocketAddr> {
    match &b.target {
        Target::Addr(a) => vec![*a],
        Target::Host { host, port } => match tokio::net::lookup_host((host.as_str(), *port)).await {
            Ok(addrs) => addrs.collect(),
            Err(e) => {
                warn!(backend = %b.name, host = %host, error = %e, "cannot resolve backend host; keeping it unprotected until it resolves");
                vec![]
            }
        },
    }
}

/// An open session, as the agent tracks it: enough to re-check it after a
/// policy reload and to cut it with a reason.
#[derive(Debug)]
pub struct LiveSession {
    pub principal: Principal,
    pub backend: BackendName,
    pub protocol: Protocol,
    /// The rule that allowed it (a grant's rule when a grant did).
    pub rule: Option<String>,
    pub cut: CancellationToken,
    pub cut_reason: std::sync::OnceLock<String>,
}

impl LiveSession {
    /// Cuts the session; the first reason given is the one recorded.
    pub fn cut(&self, reason: impl Into<String>) {
        let _ = self.cut_reason.set(reason.into());
        self.cut.cancel();
    }

    pub fn reason(&self) -> String {
        self.cut_reason.get().cloned().unwrap_or_else(|| "agent shutdown grace period over".into())
    }
}

/// Why a connection is refused, for the error in the client's protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectRefusal {
    /// By the policy (or its state: the audit store, an unknown backend).
    Denied,
    /// Past `max_connections_per_user`: the client may try again later.
    TooManyConnections,
}

/// Connects to the real backend from a socket marked with SO_MARK, which
/// the connect programs leave alone.
pub async fn connect_upstream(addr: SocketAddr, mark: u32) -> std::io::Result<TcpStream> {
    // Made non-blocking (and close-on-exec) by socket(2) itself: two
    // fcntl(2) calls fewer per connection than setting it afterwards.
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM.nonblocking(),
        Some(socket2::Protocol::TCP),
    )?;
    sock.set_mark(mark)?;
    sock.set_tcp_nodelay(true)?;
    let sock = TcpSocket::from_std_stream(std::net::TcpStream::from(sock));
    tokio::time::timeout(CONNECT_TIMEOUT, sock.connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, format!("connect to {addr} timed out")))?
}

/// What the agent keeps per backend across sessions: the TLS client
/// configurations it built, and how each backend was last logged in to
/// (for `gatehouse status`).
#[derive(Debug, Default)]
pub struct Backends {
    tls_configs: Mutex<TlsConfigs>,
    logins: Mutex<HashMap<BackendName, (i64, crate::audit::BackendLogin)>>,
}

/// TLS client configurations by backend, mode and CA file.
type TlsConfigs = HashMap<(BackendName, crate::policy::TlsMode, Option<PathBuf>), Arc<rustls::ClientConfig>>;

impl Backends {
    /// The TLS client configuration for a backend, built once per policy.
    /// Keyed by what it is built from, not only the backend's name: a session
    /// admitted under the previous policy may build its configuration after a
    /// reload cleared the cache, and must not leave the old CA in force for
    /// the sessions that follow.
    pub fn tls_client_config(
        &self,
        b: &Backend,
    ) -> Result<Arc<rustls::ClientConfig>, crate::protocol::postgres::tls::TlsError> {
        let key = (b.name.clone(), b.tls, b.ca_file.clone());
        if let Some(c) = lock(&self.tls_configs).get(&key) {
            return Ok(c.clone());
        }
        let c = crate::protocol::postgres::tls::client_config(b)?;
        lock(&self.tls_configs).insert(key, c.clone());
        Ok(c)
    }

    /// Forgets the TLS configurations (the policy was reloaded).
    pub fn clear_tls(&self) {
        lock(&self.tls_configs).clear();
    }

    /// Remembers how a backend was last logged in to.
    pub fn note_login(&self, backend: &BackendName, login: &crate::audit::BackendLogin) {
        lock(&self.logins).insert(backend.clone(), (crate::audit::now_us(), login.clone()));
    }

    /// The newest login to each backend, and when.
    pub fn logins(&self) -> HashMap<BackendName, (i64, crate::audit::BackendLogin)> {
        lock(&self.logins).clone()
    }
}

/// A mutex's guard, also after a holder panicked: the agent's shared maps
/// stay usable for every other session.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::diag::Source;

    fn snapshot(backends: &[(&str, &str)]) -> Snapshot {
        let text: String = backends
            .iter()
            .map(|(n, a)| format!("[[backend]]\nname = \"{n}\"\nprotocol = \"tcp\"\naddress = \"{a}\"\n\n"))
            .collect();
        let policy = crate::policy::load::load(&[Source { path: "t.toml".into(), text }]).unwrap();
        let routes = backends.iter().map(|(n, a)| (a.parse().unwrap(), BackendName::new(*n))).collect();
        Snapshot { policy, routes }
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn local_aliases_route_to_the_one_local_backend_on_their_port() {
        let snap = snapshot(&[("pg", "127.10.0.1:5432"), ("web", "198.51.100.7:80")]);
        let ifs: BTreeSet<IpAddr> = ["192.0.2.1".parse().unwrap()].into();
        let pg = BackendName::new("pg");
        for alias in ["127.10.0.1:5432", "0.0.0.0:5432", "[::]:5432", "127.0.0.9:5432", "[::1]:5432", "192.0.2.1:5432"]
        {
            assert_eq!(
                snap.route(addr(alias), &ifs),
                Route::Backend { name: &pg, upstream: addr("127.10.0.1:5432") },
                "{alias}"
            );
        }
        // A remote backend's port is not reserved on local addresses, nor the reverse.
        assert_eq!(snap.route(addr("127.0.0.1:80"), &ifs), Route::Unknown);
        assert_eq!(snap.route(addr("198.51.100.8:5432"), &ifs), Route::Unknown);
    }

    #[test]
    fn an_alias_of_several_local_backends_is_ambiguous() {
        let snap = snapshot(&[("a", "127.10.0.1:5432"), ("b", "127.10.0.2:5432")]);
        let ifs = BTreeSet::new();
        assert!(matches!(snap.route(addr("0.0.0.0:5432"), &ifs), Route::Ambiguous(n) if n.len() == 2));
        // Each backend's own address still routes to it.
        let b = BackendName::new("b");
        assert_eq!(
            snap.route(addr("127.10.0.2:5432"), &ifs),
            Route::Backend { name: &b, upstream: addr("127.10.0.2:5432") }
        );
    }
}
