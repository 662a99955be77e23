//! The kernel side, seen from userspace: load the eBPF programs, attach them
//! to a cgroup, pin links and maps under bpffs so redirection outlives the
//! agent (fail closed), fill the protected-backends map and hand each
//! accepted connection its kernel record.
//!
//! A restarted agent reuses the pins when they run the same programs on the
//! same cgroup. Otherwise it attaches the new programs first and only then
//! removes the old links, so there is no moment without redirection.

pub mod local;
pub mod pins;
pub mod sockdiag;

use std::collections::{BTreeSet, HashMap as StdHashMap};
use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use agent_common::{Config, Handoff, SockKey, map_names, prog_names, stat};
use aya::maps::{Array, HashMap, IterableMap, MapData, PerCpuArray};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::{CgroupAttachMode, CgroupSockAddr, SockOps};
use aya::{Ebpf, EbpfLoader};
use serde::Serialize;
use tracing::{info, warn};

use self::pins::{HeldLink, PinHealth, Watcher};
use self::sockdiag::SockInfo;
use crate::types::{ip4_word, key_addr, sock_key};

/// The links Gatehouse pins, by program name: (pin file, program).
const LINKS: &[(&str, &str)] = &[
    ("link_connect4", prog_names::CONNECT4),
    ("link_connect6", prog_names::CONNECT6),
    ("link_getpeername4", prog_names::GETPEERNAME4),
    ("link_getpeername6", prog_names::GETPEERNAME6),
    ("link_sock_ops", prog_names::SOCK_OPS),
];
const MAPS: &[&str] = &[
    map_names::BACKENDS,
    map_names::CONNECTING,
    map_names::HANDOFF,
    map_names::ORIG_DST,
    map_names::CONFIG,
    map_names::STATS,
    map_names::LOCAL_PORTS,
    map_names::LOCAL_ADDRS,
];

/// How long a kernel record stays valid after its connection was
/// established: accept() normally follows within a millisecond; an older
/// record belongs to a connection the proxy never accepted.
pub const HANDOFF_TTL: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum RedirectError {
    #[error("no cgroup v2 mount in /proc/mounts; Gatehouse needs the unified hierarchy")]
    NoCgroup2,
    #[error("cgroup {path}: {source}")]
    Cgroup { path: PathBuf, source: io::Error },
    #[error("pin directory {path}: {message}")]
    Bpffs { path: PathBuf, message: String },
    #[error(
        "loading the eBPF object failed: {0}; if pins from another Gatehouse version are in the way, run `gatehouse detach`"
    )]
    Load(#[from] aya::EbpfError),
    #[error("eBPF program {name}: {source}")]
    Program { name: &'static str, source: aya::programs::ProgramError },
    #[error("pinning {path}: {message}")]
    Pin { path: PathBuf, message: String },
    #[error("eBPF map {name}: {source}")]
    Map { name: &'static str, source: aya::maps::MapError },
    #[error("reading the network namespace cookie: {0}")]
    Netns(io::Error),
}

/// Where and how the programs redirect.
#[derive(Debug, Clone)]
pub struct AttachOptions {
    pub pin_dir: PathBuf,
    /// `None`: the cgroup v2 root.
    pub cgroup: Option<PathBuf>,
    pub proxy_v4: Ipv4Addr,
    pub proxy_v6: Ipv6Addr,
    pub proxy_port: u16,
    pub mark: u32,
    /// CLOCK_MONOTONIC (ns) when this agent started, before it listened:
    /// in-flight records older than that belong to connections no running
    /// proxy will accept, and are removed.
    pub started_ns: u64,
}

/// What the kernel's record says about an accepted connection, once checked.
#[derive(Debug, Clone)]
pub enum Claim {
    /// The record of exactly this connection: same client socket (cookie), fresh.
    Verified(Handoff),
    /// No record for this client address: the connection was not redirected
    /// (someone dialed the proxy port). `owner`: the client socket, if the
    /// kernel still knows it.
    NotRedirected { owner: Option<SockInfo> },
    /// A record exists for this client address but not for this connection
    /// (another socket, or too old): it is not trusted.
    Mismatch { owner: Option<SockInfo>, recorded_uid: u32, why: String },
}

/// The attached programs and the maps the agent works with.
pub struct Redirect {
    pub pin_dir: PathBuf,
    pub cgroup: PathBuf,
    /// Whether existing pins were reused (a restart) rather than attached anew.
    pub reused: bool,
    /// In-flight records removed at start (left by connections no proxy accepted).
    pub cleared_at_start: usize,
    backends: Mutex<HashMap<MapData, SockKey, u32>>,
    handoff: Mutex<HashMap<MapData, SockKey, Handoff>>,
    connecting: HashMap<MapData, u64, Handoff>,
    orig_dst: HashMap<MapData, u64, SockKey>,
    config: Array<MapData, Config>,
    local_ports: Mutex<HashMap<MapData, u32, u32>>,
    local_addrs: Mutex<HashMap<MapData, SockKey, u32>>,
    /// This host's interface addresses as last written to GH_LOCAL_ADDRS.
    interfaces: Mutex<BTreeSet<IpAddr>>,
    /// The protected addresses as last written to GH_BACKENDS.
    protected: Mutex<Vec<SocketAddr>>,
    stats: PerCpuArray<MapData, u64>,
    watcher: Watcher,
}

impl std::fmt::Debug for Redirect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redirect").field("pin_dir", &self.pin_dir).field("cgroup", &self.cgroup).finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| {
            u64::try_from(t.tv_sec()).unwrap_or(0).saturating_mul(1_000_000_000)
                + u64::try_from(t.tv_nsec()).unwrap_or(0)
        })
        .unwrap_or(0)
}

impl Redirect {
    /// Loads, attaches (or reuses) and configures the programs.
    pub fn attach(opts: &AttachOptions) -> Result<Self, RedirectError> {
        let cgroup = match &opts.cgroup {
            Some(p) => p.clone(),
            None => cgroup2_root()?,
        };
        let cg_err = |source| RedirectError::Cgroup { path: cgroup.clone(), source };
        let cg_file = File::open(&cgroup).map_err(cg_err)?;
        let cgroup_id = cg_file.metadata().map_err(cg_err)?.ino();
        pins::ensure_pin_dir(&opts.pin_dir)?;

        let mut ebpf = EbpfLoader::new().default_map_pin_directory(&opts.pin_dir).load(crate::EBPF_OBJECT)?;
        let mut config: Array<MapData, Config> = take_map(&mut ebpf, map_names::CONFIG)?;
        let previous = config.get(&0, 0).ok();
        let prog_hash = object_hash(crate::EBPF_OBJECT);
        let pins_present = LINKS.iter().all(|(pin, _)| opts.pin_dir.join(pin).exists());
        let reused = pins_present
            && previous.is_some_and(|c| c.enabled != 0 && c.prog_hash == prog_hash && c.cgroup_id == cgroup_id);

        let probe =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).map_err(RedirectError::Netns)?;
        let netns_cookie = crate::sys::netns_cookie(&probe).map_err(RedirectError::Netns)?;
        let cfg = Config {
            proxy_ip6: sock_key(SocketAddr::new(opts.proxy_v6.into(), 0)).addr,
            proxy_ip4: ip4_word(opts.proxy_v4),
            proxy_port: opts.proxy_port,
            _pad: 0,
            mark: opts.mark,
            enabled: 1,
            netns_cookie,
            prog_hash,
            cgroup_id,
        };
        // Config first: new programs must never run unconfigured, and programs
        // already attached (a restart) must send clients to the new port.
        config.set(0, cfg, 0).map_err(|source| RedirectError::Map { name: map_names::CONFIG, source })?;

        let mut held = Vec::with_capacity(LINKS.len());
        for (pin, prog) in LINKS {
            let link = if reused {
                let path = opts.pin_dir.join(pin);
                PinnedLink::from_pin(&path)
                    .map(FdLink::from)
                    .map_err(|e| RedirectError::Pin { path, message: error_chain(&e) })?
            } else {
                attach_one(&mut ebpf, prog, pin, &cg_file, &opts.pin_dir)?
            };
            held.push(HeldLink::hold(pin, &link)?);
        }
        let handoff: HashMap<MapData, SockKey, Handoff> = take_map(&mut ebpf, map_names::HANDOFF)?;
        let mut connecting: HashMap<MapData, u64, Handoff> = take_map(&mut ebpf, map_names::CONNECTING)?;
        let mut handoff = handoff;
        let cleared_at_start = clear_stale(&mut handoff, &mut connecting, opts.started_ns);
        if cleared_at_start > 0 {
            warn!(
                records = cleared_at_start,
                "removed in-flight kernel records left by connections no running proxy accepted"
            );
        }
        Ok(Self {
            pin_dir: opts.pin_dir.clone(),
            cgroup,
            reused,
            cleared_at_start,
            backends: Mutex::new(take_map(&mut ebpf, map_names::BACKENDS)?),
            handoff: Mutex::new(handoff),
            connecting,
            orig_dst: take_map(&mut ebpf, map_names::ORIG_DST)?,
            config,
            local_ports: Mutex::new(take_map(&mut ebpf, map_names::LOCAL_PORTS)?),
            local_addrs: Mutex::new(take_map(&mut ebpf, map_names::LOCAL_ADDRS)?),
            interfaces: Mutex::new(BTreeSet::new()),
            protected: Mutex::new(Vec::new()),
            stats: take_map(&mut ebpf, map_names::STATS)?,
            watcher: Watcher::new(opts.pin_dir.clone(), held),
        })
    }

    /// Makes the protected-backends map hold exactly `want` (address → backend
    /// index), and guards the ports of the local ones on every local address.
    pub fn set_backends(&self, want: &StdHashMap<SocketAddr, u32>) -> Result<(), RedirectError> {
        let err = |source| RedirectError::Map { name: map_names::BACKENDS, source };
        {
            let mut map = lock(&self.backends);
            let keys: StdHashMap<SockKey, u32> = want.iter().map(|(a, i)| (sock_key(*a), *i)).collect();
            let stale: Vec<SockKey> = map.keys().filter_map(Result::ok).filter(|k| !keys.contains_key(k)).collect();
            for (k, v) in &keys {
                map.insert(*k, *v, 0).map_err(err)?;
            }
            for k in stale {
                map.remove(&k).map_err(err)?;
            }
        }
        *lock(&self.protected) = want.keys().copied().collect();
        self.sync_local_ports()
    }

    /// Writes the ports of local backends to GH_LOCAL_PORTS (added before removed).
    fn sync_local_ports(&self) -> Result<(), RedirectError> {
        let err = |source| RedirectError::Map { name: map_names::LOCAL_PORTS, source };
        let ports = local::local_ports(lock(&self.protected).iter(), &lock(&self.interfaces));
        let mut map = lock(&self.local_ports);
        let stale: Vec<u32> = map
            .keys()
            .filter_map(Result::ok)
            .filter(|p| u16::try_from(*p).map_or(true, |p| !ports.contains(&p)))
            .collect();
        for p in &ports {
            map.insert(u32::from(*p), 1, 0).map_err(err)?;
        }
        for p in stale {
            map.remove(&p).map_err(err)?;
        }
        Ok(())
    }

    /// Re-reads this host's interface addresses; updates the kernel's copy
    /// (and the local ports, which depend on it) when they changed.
    pub fn refresh_interfaces(&self) -> Result<bool, RedirectError> {
        let now = local::interface_addrs();
        if *lock(&self.interfaces) == now {
            return Ok(false);
        }
        let err = |source| RedirectError::Map { name: map_names::LOCAL_ADDRS, source };
        {
            let mut map = lock(&self.local_addrs);
            let keys: Vec<SockKey> = now.iter().map(|ip| sock_key(SocketAddr::new(*ip, 0))).collect();
            let stale: Vec<SockKey> = map.keys().filter_map(Result::ok).filter(|k| !keys.contains(k)).collect();
            for k in &keys {
                map.insert(*k, 1, 0).map_err(err)?;
            }
            for k in stale {
                map.remove(&k).map_err(err)?;
            }
        }
        info!(addresses = ?now, "this host's interface addresses (protected backends' local ports are guarded on each)");
        *lock(&self.interfaces) = now;
        self.sync_local_ports()?;
        Ok(true)
    }

    /// Calls `f` with this host's interface addresses, as the kernel programs know them.
    pub fn with_interfaces<T>(&self, f: impl FnOnce(&BTreeSet<IpAddr>) -> T) -> T {
        f(&lock(&self.interfaces))
    }

    /// Finds and checks the kernel's record of the connection accepted from
    /// `client` on `local`. The record is trusted only if the kernel confirms
    /// (sock_diag) that the client end of this connection is the socket the
    /// record was made for, and only while it is fresh. A verified or expired
    /// record is removed; a record that belongs to another socket is left
    /// for its own connection (and expires).
    pub fn claim(&self, client: SocketAddr, local: SocketAddr) -> Claim {
        let key = sock_key(client);
        let record = lock(&self.handoff).get(&key, 0).ok();
        let owner = match sockdiag::lookup(client, local) {
            Ok(o) => o,
            Err(e) => {
                warn!(error = %e, "sock_diag lookup failed: the connection cannot be matched to a kernel record");
                None
            }
        };
        let Some(h) = record else { return Claim::NotRedirected { owner } };
        let age_ns = monotonic_ns().saturating_sub(h.established_ns);
        let expired = h.established_ns == 0 || age_ns > u64::try_from(HANDOFF_TTL.as_nanos()).unwrap_or(u64::MAX);
        let matches = owner.is_some_and(|o| o.cookie == h.cookie);
        if expired || matches {
            let _ = lock(&self.handoff).remove(&key);
        }
        if matches && !expired {
            return Claim::Verified(h);
        }
        let why = if expired {
            format!(
                "the kernel record for this client address is {} ms old (limit {} ms)",
                age_ns / 1_000_000,
                HANDOFF_TTL.as_millis()
            )
        } else if owner.is_none() {
            "the kernel does not know the client end of this connection, so its record cannot be confirmed".into()
        } else {
            "the kernel record for this client address was made for another socket".into()
        };
        Claim::Mismatch { owner, recorded_uid: h.uid, why }
    }

    pub fn stats(&self) -> KernelStats {
        KernelStats::read(&self.stats)
    }

    /// Checks the pins; restores what was removed (see [`pins`]).
    pub fn check_pins(&self) {
        let maps: Vec<(&'static str, &MapData)> = vec![
            (map_names::CONFIG, self.config.map()),
            (map_names::STATS, self.stats.map()),
            (map_names::CONNECTING, self.connecting.map()),
            (map_names::ORIG_DST, self.orig_dst.map()),
        ];
        let backends = lock(&self.backends);
        let handoff = lock(&self.handoff);
        let ports = lock(&self.local_ports);
        let addrs = lock(&self.local_addrs);
        let mut all = maps;
        all.push((map_names::BACKENDS, backends.map()));
        all.push((map_names::HANDOFF, handoff.map()));
        all.push((map_names::LOCAL_PORTS, ports.map()));
        all.push((map_names::LOCAL_ADDRS, addrs.map()));
        self.watcher.check(&all);
    }

    pub fn pin_health(&self) -> PinHealth {
        self.watcher.health()
    }
}

/// Removes in-flight records made before `started_ns`: their connections
/// were made to a proxy that is gone (or never accepted them).
fn clear_stale(
    handoff: &mut HashMap<MapData, SockKey, Handoff>,
    connecting: &mut HashMap<MapData, u64, Handoff>,
    started_ns: u64,
) -> usize {
    let old: Vec<SockKey> =
        handoff.iter().filter_map(Result::ok).filter(|(_, h)| h.established_ns < started_ns).map(|(k, _)| k).collect();
    let old_c: Vec<u64> =
        connecting.iter().filter_map(Result::ok).filter(|(_, h)| h.connect_ns < started_ns).map(|(k, _)| k).collect();
    let n = old.len() + old_c.len();
    for k in old {
        let _ = handoff.remove(&k);
    }
    for k in old_c {
        let _ = connecting.remove(&k);
    }
    n
}

fn take_map<M>(ebpf: &mut Ebpf, name: &'static str) -> Result<M, RedirectError>
where
    M: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or(RedirectError::Map { name, source: aya::maps::MapError::InvalidName { name: name.into() } })?;
    M::try_from(map).map_err(|source| RedirectError::Map { name, source })
}

fn attach_one(
    ebpf: &mut Ebpf,
    prog: &'static str,
    pin: &str,
    cgroup: &File,
    pin_dir: &Path,
) -> Result<FdLink, RedirectError> {
    let perr = |source| RedirectError::Program { name: prog, source };
    let program = ebpf
        .program_mut(prog)
        .ok_or(RedirectError::Program { name: prog, source: aya::programs::ProgramError::NotLoaded })?;
    let link: FdLink = if prog == prog_names::SOCK_OPS {
        let p: &mut SockOps = program.try_into().map_err(perr)?;
        p.load().map_err(perr)?;
        let id = p.attach(cgroup, CgroupAttachMode::Single).map_err(perr)?;
        let link = p.take_link(id).map_err(perr)?;
        FdLink::try_from(link).map_err(|e| RedirectError::Pin { path: pin_dir.join(pin), message: e.to_string() })?
    } else {
        let p: &mut CgroupSockAddr = program.try_into().map_err(perr)?;
        p.load().map_err(perr)?;
        let id = p.attach(cgroup, CgroupAttachMode::Single).map_err(perr)?;
        let link = p.take_link(id).map_err(perr)?;
        FdLink::try_from(link).map_err(|e| RedirectError::Pin { path: pin_dir.join(pin), message: e.to_string() })?
    };
    let final_path = pin_dir.join(pin);
    let new_path = pin_dir.join(format!("{pin}_new"));
    let pin_err = |message: String| RedirectError::Pin { path: final_path.clone(), message };
    let _ = std::fs::remove_file(&new_path);
    let pinned = link.pin(&new_path).map_err(|e| pin_err(error_chain(&e)))?;
    // The new link is attached and pinned; now the old one may go.
    match std::fs::remove_file(&final_path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(pin_err(e.to_string())),
    }
    std::fs::rename(&new_path, &final_path).map_err(|e| pin_err(e.to_string()))?;
    Ok(FdLink::from(pinned))
}

/// An error and its sources, joined: aya's errors keep the OS error in the source.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// The cgroup v2 mount point: `/sys/fs/cgroup` on unified hosts,
/// `/sys/fs/cgroup/unified` on hybrid ones.
pub fn cgroup2_root() -> Result<PathBuf, RedirectError> {
    let mounts = std::fs::read_to_string("/proc/mounts")
        .map_err(|source| RedirectError::Cgroup { path: "/proc/mounts".into(), source })?;
    cgroup2_from_mounts(&mounts).ok_or(RedirectError::NoCgroup2)
}

fn cgroup2_from_mounts(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut f = line.split_whitespace();
        let (_dev, dir, fstype) = (f.next()?, f.next()?, f.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(dir))
    })
}

/// FNV-1a over the object: stable across runs and builds of the same bytes.
fn object_hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// Counters kept by the eBPF programs, summed over CPUs.
#[derive(Debug, Default, Clone, Serialize)]
pub struct KernelStats {
    pub redirected: u64,
    pub established: u64,
    pub skipped_mark: u64,
    pub skipped_netns: u64,
    pub peername_restored: u64,
    /// Connects to another local address on a local backend's port, redirected.
    pub alias_redirected: u64,
}

impl KernelStats {
    fn read(map: &PerCpuArray<MapData, u64>) -> Self {
        let sum = |i: u32| map.get(&i, 0).map(|v| v.iter().sum()).unwrap_or(0);
        Self {
            redirected: sum(stat::REDIRECTED),
            established: sum(stat::ESTABLISHED),
            skipped_mark: sum(stat::SKIPPED_MARK),
            skipped_netns: sum(stat::SKIPPED_NETNS),
            peername_restored: sum(stat::PEERNAME_RESTORED),
            alias_redirected: sum(stat::ALIAS_REDIRECTED),
        }
    }
}

/// What is pinned under a pin directory, read without the agent.
#[derive(Debug, Default, Clone, Serialize)]
pub struct PinStatus {
    pub pin_dir: PathBuf,
    pub links: Vec<LinkStatus>,
    pub maps_pinned: Vec<String>,
    pub proxy_port: Option<u16>,
    pub protected: Vec<SocketAddr>,
    pub kernel: Option<KernelStats>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LinkStatus {
    pub name: String,
    pub pinned: bool,
    pub link_id: Option<u32>,
    pub program_id: Option<u32>,
}

impl PinStatus {
    pub fn read(pin_dir: &Path) -> Self {
        let links = LINKS
            .iter()
            .map(|(pin, _)| {
                let path = pin_dir.join(pin);
                let info = PinnedLink::from_pin(&path).ok().and_then(|l| FdLink::from(l).info().ok());
                LinkStatus {
                    name: (*pin).to_owned(),
                    pinned: path.exists(),
                    link_id: info.as_ref().map(|i| i.id()),
                    program_id: info.as_ref().map(|i| i.program_id()),
                }
            })
            .collect();
        let maps_pinned = MAPS.iter().filter(|m| pin_dir.join(m).exists()).map(|m| (*m).to_owned()).collect();
        let config = MapData::from_pin(pin_dir.join(map_names::CONFIG))
            .ok()
            .and_then(|m| Array::<_, Config>::try_from(aya::maps::Map::Array(m)).ok())
            .and_then(|a| a.get(&0, 0).ok())
            .filter(|c| c.enabled != 0);
        let protected = MapData::from_pin(pin_dir.join(map_names::BACKENDS))
            .ok()
            .and_then(|m| HashMap::<_, SockKey, u32>::try_from(aya::maps::Map::HashMap(m)).ok())
            .map(|h| h.keys().filter_map(Result::ok).map(|k| key_addr(&k)).collect())
            .unwrap_or_default();
        let kernel = MapData::from_pin(pin_dir.join(map_names::STATS))
            .ok()
            .and_then(|m| PerCpuArray::<_, u64>::try_from(aya::maps::Map::PerCpuArray(m)).ok())
            .map(|a| KernelStats::read(&a));
        Self {
            pin_dir: pin_dir.into(),
            links,
            maps_pinned,
            proxy_port: config.map(|c| c.proxy_port),
            protected,
            kernel,
        }
    }
}

/// Removes every link and map Gatehouse pinned under `pin_dir`, and the
/// directory. Each link is first detached in the kernel, so a process that
/// still holds it (a running or hung agent) no longer redirects through it.
/// Returns what was removed. A directory Gatehouse would not have made
/// (another owner, open mode, a symlink) is refused.
pub fn detach(pin_dir: &Path) -> io::Result<Vec<PathBuf>> {
    match std::fs::symlink_metadata(pin_dir) {
        Ok(meta) => {
            if let Some(why) = pins::untrusted(&meta) {
                return Err(io::Error::other(format!(
                    "{} {why}: not Gatehouse's; remove it by hand after checking who made it",
                    pin_dir.display()
                )));
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    }
    let mut removed = Vec::new();
    for (pin, _) in LINKS {
        for name in [(*pin).to_owned(), format!("{pin}_new")] {
            let path = pin_dir.join(name);
            if let Err(e) = pins::detach_link(&path) {
                warn!(pin = %path.display(), error = %e, "could not detach the link in the kernel; removing its pin");
            }
        }
    }
    let names = LINKS
        .iter()
        .flat_map(|(pin, _)| [(*pin).to_owned(), format!("{pin}_new")])
        .chain(MAPS.iter().map(|m| (*m).to_owned()));
    for name in names {
        let path = pin_dir.join(name);
        match std::fs::remove_file(&path) {
            Ok(()) => removed.push(path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    match std::fs::remove_dir(pin_dir) {
        Ok(()) => removed.push(pin_dir.to_owned()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", pin_dir.display()))),
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_on_hybrid_and_unified_hosts() {
        let hybrid = "cgroup /sys/fs/cgroup/cpu cgroup rw 0 0\ncgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        assert_eq!(cgroup2_from_mounts(hybrid), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        assert_eq!(cgroup2_from_mounts("cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n"), Some("/sys/fs/cgroup".into()));
        assert_eq!(cgroup2_from_mounts("proc /proc proc rw 0 0\n"), None);
    }

    #[test]
    fn object_hash_is_stable() {
        assert_eq!(object_hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_ne!(object_hash(b"a"), object_hash(b"b"));
    }
}
