//! The kernel side, seen from userspace: load the eBPF programs, attach them
//! to a cgroup, pin links and maps under bpffs so redirection outlives the
//! agent (fail closed), fill the protected-backends map and hand each
//! accepted connection its kernel record.
//!
//! A restarted agent reuses the pins when they run the same programs on the
//! same cgroup. Otherwise it attaches the new programs first and only then
//! removes the old links, so there is no moment without redirection.

use std::collections::HashMap as StdHashMap;
use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use agent_common::{Config, Handoff, SockKey, map_names, prog_names, stat};
use aya::maps::{Array, HashMap, MapData, PerCpuArray};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::{CgroupAttachMode, CgroupSockAddr, SockOps};
use aya::{Ebpf, EbpfLoader};
use serde::Serialize;

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
];
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const BPFFS_MOUNT: &str = "/sys/fs/bpf";

#[derive(Debug, thiserror::Error)]
pub enum RedirectError {
    #[error("no cgroup v2 mount in /proc/mounts; Gatehouse needs the unified hierarchy")]
    NoCgroup2,
    #[error("cgroup {path}: {source}")]
    Cgroup { path: PathBuf, source: io::Error },
    #[error("bpffs at {path}: {message}")]
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
}

/// The attached programs and the maps the agent works with.
pub struct Redirect {
    pub pin_dir: PathBuf,
    pub cgroup: PathBuf,
    /// Whether existing pins were reused (a restart) rather than attached anew.
    pub reused: bool,
    backends: Mutex<HashMap<MapData, SockKey, u32>>,
    handoff: Mutex<HashMap<MapData, SockKey, Handoff>>,
    stats: PerCpuArray<MapData, u64>,
}

impl std::fmt::Debug for Redirect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redirect").field("pin_dir", &self.pin_dir).field("cgroup", &self.cgroup).finish_non_exhaustive()
    }
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
        ensure_pin_dir(&opts.pin_dir)?;

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

        if !reused {
            for (pin, prog) in LINKS {
                attach_one(&mut ebpf, prog, pin, &cg_file, &opts.pin_dir)?;
            }
        }
        let backends = take_map(&mut ebpf, map_names::BACKENDS)?;
        let handoff = take_map(&mut ebpf, map_names::HANDOFF)?;
        let stats = take_map(&mut ebpf, map_names::STATS)?;
        Ok(Self {
            pin_dir: opts.pin_dir.clone(),
            cgroup,
            reused,
            backends: Mutex::new(backends),
            handoff: Mutex::new(handoff),
            stats,
        })
    }

    /// Makes the protected-backends map hold exactly `want` (address → backend index).
    pub fn set_backends(&self, want: &StdHashMap<SocketAddr, u32>) -> Result<(), RedirectError> {
        let err = |source| RedirectError::Map { name: map_names::BACKENDS, source };
        let mut map = self.backends.lock().unwrap_or_else(|e| e.into_inner());
        let want: StdHashMap<SockKey, u32> = want.iter().map(|(a, i)| (sock_key(*a), *i)).collect();
        let stale: Vec<SockKey> = map.keys().filter_map(Result::ok).filter(|k| !want.contains_key(k)).collect();
        for (k, v) in &want {
            map.insert(*k, *v, 0).map_err(err)?;
        }
        for k in stale {
            map.remove(&k).map_err(err)?;
        }
        Ok(())
    }

    /// Takes (looks up and deletes) the kernel's record of the connection
    /// whose client end is `client`. `None`: it was not redirected.
    pub fn take_handoff(&self, client: SocketAddr) -> Option<Handoff> {
        let key = sock_key(client);
        let mut map = self.handoff.lock().unwrap_or_else(|e| e.into_inner());
        let h = map.get(&key, 0).ok()?;
        // An entry that cannot be removed would be evicted by the LRU later.
        let _ = map.remove(&key);
        Some(h)
    }

    pub fn stats(&self) -> KernelStats {
        KernelStats::read(&self.stats)
    }
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
) -> Result<(), RedirectError> {
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
    drop(pinned);
    Ok(())
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

fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).is_ok_and(|s| s.filesystem_type().0 == BPF_FS_MAGIC)
}

/// Makes sure `pin_dir` exists on a bpffs, mounting bpffs at /sys/fs/bpf if absent.
fn ensure_pin_dir(pin_dir: &Path) -> Result<(), RedirectError> {
    let parent = pin_dir.parent().unwrap_or(Path::new("/"));
    if !is_bpffs(parent) {
        if parent == Path::new(BPFFS_MOUNT) {
            nix::mount::mount(Some("bpf"), BPFFS_MOUNT, Some("bpf"), nix::mount::MsFlags::empty(), None::<&str>)
                .map_err(|e| RedirectError::Bpffs { path: parent.into(), message: format!("mount failed: {e}") })?;
        } else {
            return Err(RedirectError::Bpffs {
                path: parent.into(),
                message: "not a bpffs mount; put the pin directory under /sys/fs/bpf".into(),
            });
        }
    }
    match std::fs::create_dir(pin_dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(RedirectError::Bpffs { path: pin_dir.into(), message: e.to_string() }),
    }
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
/// directory. Removing a link's pin detaches it. Returns what was removed.
pub fn detach(pin_dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
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
