//! The pin directory and the links in it.
//!
//! `/sys/fs/bpf` may be world-writable (sticky, 1777): whoever creates the
//! pin directory first owns it. The agent creates it itself, root-owned and
//! 0700, and refuses one that exists with another owner, a group- or
//! world-accessible mode, or that is not a plain directory.
//!
//! The agent keeps its own descriptor of every link it attached or reused,
//! so removing a pin cannot detach a running agent. Every few seconds it
//! checks that each pin is still there and still names its link; a missing
//! pin is logged loudly and pinned again from the held descriptor, and the
//! event is kept for `gatehouse status`.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use aya::maps::MapData;
use aya::programs::links::{FdLink, PinnedLink};
use serde::{Deserialize, Serialize};
use tracing::{error, warn};

use super::RedirectError;

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const BPFFS_MOUNT: &str = "/sys/fs/bpf";

fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).is_ok_and(|s| s.filesystem_type().0 == BPF_FS_MAGIC)
}

/// Why an existing pin directory is not trusted, if it is not.
pub fn untrusted(meta: &std::fs::Metadata) -> Option<String> {
    if meta.file_type().is_symlink() {
        return Some("is a symbolic link".into());
    }
    if !meta.is_dir() {
        return Some("is not a directory".into());
    }
    if meta.uid() != 0 {
        return Some(format!("is owned by uid {}, not root", meta.uid()));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Some(format!("has mode {mode:04o}; only root may have access (0700)"));
    }
    None
}

/// Makes sure `pin_dir` exists on a bpffs (mounting bpffs at /sys/fs/bpf if
/// absent), created by us root-owned 0700, or refuses it.
pub fn ensure_pin_dir(pin_dir: &Path) -> Result<(), RedirectError> {
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
    let bad = |message: String| RedirectError::Bpffs { path: pin_dir.into(), message };
    match std::fs::DirBuilder::new().mode(0o700).create(pin_dir) {
        Ok(()) => {
            // The umask may have narrowed it further; never wider.
            std::fs::set_permissions(pin_dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| bad(e.to_string()))?;
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(bad(e.to_string())),
    }
    let meta = std::fs::symlink_metadata(pin_dir).map_err(|e| bad(e.to_string()))?;
    if let Some(why) = untrusted(&meta) {
        return Err(bad(format!(
            "{why}: refusing to pin into a directory someone else may control; \
             remove it (after checking who made it) and start again"
        )));
    }
    Ok(())
}

fn cpath(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::other("NUL byte in a pin path"))
}

/// A link the agent attached or reused, held by its own descriptor.
#[derive(Debug)]
pub struct HeldLink {
    pub pin: &'static str,
    pub id: u32,
    fd: OwnedFd,
}

impl HeldLink {
    /// Takes a descriptor of its own for `link` (which the caller may drop).
    pub fn hold(pin: &'static str, link: &FdLink) -> Result<Self, RedirectError> {
        let err = |message: String| RedirectError::Pin { path: pin.into(), message };
        let id = link.info().map_err(|e| err(super::error_chain(&e)))?.id();
        let fd = crate::sys::bpf_link_fd_by_id(id).map_err(|e| err(e.to_string()))?;
        Ok(Self { pin, id, fd })
    }

    /// Whether the link is still attached to a cgroup (`gatehouse detach
    /// --force` detaches it in the kernel).
    pub fn attached(&self) -> bool {
        let fdinfo = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", self.fd.as_raw_fd())).unwrap_or_default();
        fdinfo
            .lines()
            .find_map(|l| l.strip_prefix("cgroup_id:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .is_none_or(|id| id != 0)
    }

    fn pin_at(&self, path: &Path) -> io::Result<()> {
        crate::sys::bpf_obj_pin(self.fd.as_fd(), &cpath(path)?)
    }
}

/// The id of the link pinned at `path`, if any.
pub fn pinned_link_id(path: &Path) -> Option<u32> {
    PinnedLink::from_pin(path).ok().and_then(|l| FdLink::from(l).info().ok()).map(|i| i.id())
}

/// What the pin watcher saw, for `gatehouse status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PinHealth {
    /// Pins found missing (or replaced) and pinned again from the agent's own descriptors.
    pub repinned: u64,
    /// Links the kernel no longer has attached (e.g. `gatehouse detach --force`).
    pub detached: Vec<String>,
    /// Pins that are missing and could not be restored.
    pub missing: Vec<String>,
    /// The last thing that happened, and when (µs).
    pub last_event: Option<String>,
    pub last_event_us: Option<i64>,
}

/// Checks every pin against what the agent holds; restores what is missing.
pub struct Watcher {
    pub pin_dir: PathBuf,
    pub links: Vec<HeldLink>,
    /// Maps by pin name (descriptors held by aya's map handles in `Redirect`).
    health: Mutex<PinHealth>,
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher").field("pin_dir", &self.pin_dir).field("links", &self.links).finish_non_exhaustive()
    }
}

impl Watcher {
    pub fn new(pin_dir: PathBuf, links: Vec<HeldLink>) -> Self {
        Self { pin_dir, links, health: Mutex::new(PinHealth::default()) }
    }

    pub fn health(&self) -> PinHealth {
        self.health.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    fn event(&self, h: &mut PinHealth, what: String) {
        h.last_event = Some(what);
        h.last_event_us = Some(crate::audit::now_us());
    }

    /// One round: links first, then maps (`maps`: pin name → the agent's handle).
    pub fn check(&self, maps: &[(&'static str, &MapData)]) {
        let mut h = self.health.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut missing = Vec::new();
        let mut detached = Vec::new();
        if !self.links.is_empty() && self.links.iter().all(|l| !l.attached()) {
            // Detached on purpose (`gatehouse detach --force`): pin nothing again.
            if h.detached.len() != self.links.len() {
                error!(
                    "EVERY LINK WAS DETACHED in the kernel (gatehouse detach --force?): protected connections are no longer redirected"
                );
                self.event(&mut h, "every link detached in the kernel; nothing re-pinned".into());
            }
            h.detached = self.links.iter().map(|l| l.pin.to_owned()).collect();
            return;
        }
        if let Err(e) = ensure_pin_dir(&self.pin_dir) {
            error!(error = %e, "the pin directory is gone or no longer trusted; redirection holds while the agent runs, but would not survive it");
            missing.push(self.pin_dir.display().to_string());
        }
        for l in &self.links {
            if !l.attached() {
                if !h.detached.iter().any(|d| d == l.pin) {
                    error!(
                        link = l.pin,
                        "LINK DETACHED in the kernel (gatehouse detach --force?): protected connections are no longer redirected by it"
                    );
                    self.event(&mut h, format!("{} detached in the kernel", l.pin));
                }
                detached.push(l.pin.to_owned());
                continue;
            }
            let path = self.pin_dir.join(l.pin);
            if pinned_link_id(&path) == Some(l.id) {
                continue;
            }
            error!(pin = %path.display(), "PIN REMOVED OR REPLACED under the running agent: pinning the agent's own link again");
            let _ = std::fs::remove_file(&path);
            match l.pin_at(&path) {
                Ok(()) => {
                    h.repinned += 1;
                    self.event(&mut h, format!("{} was removed or replaced; pinned again", l.pin));
                }
                Err(e) => {
                    error!(pin = %path.display(), error = %e, "re-pinning failed: redirection holds only while this agent runs");
                    self.event(&mut h, format!("{} missing; re-pinning failed: {e}", l.pin));
                    missing.push(l.pin.to_owned());
                }
            }
        }
        for (name, map) in maps {
            let path = self.pin_dir.join(name);
            let same = MapData::from_pin(&path).ok().and_then(|m| m.info().ok()).map(|i| i.id());
            if same.is_some() && same == map.info().ok().map(|i| i.id()) {
                continue;
            }
            warn!(pin = %path.display(), "map pin removed or replaced under the running agent: pinning it again");
            let _ = std::fs::remove_file(&path);
            match map.pin(&path) {
                Ok(()) => {
                    h.repinned += 1;
                    self.event(&mut h, format!("{name} was removed or replaced; pinned again"));
                }
                Err(e) => {
                    self.event(&mut h, format!("{name} missing; re-pinning failed: {e}"));
                    missing.push((*name).to_owned());
                }
            }
        }
        h.missing = missing;
        h.detached = detached;
    }
}

/// Detaches (in the kernel, whoever holds them) and unpins the link pinned at `path`.
pub fn detach_link(path: &Path) -> io::Result<bool> {
    let Some(id) = pinned_link_id(path) else { return Ok(false) };
    let fd = crate::sys::bpf_link_fd_by_id(id)?;
    crate::sys::bpf_link_detach(fd.as_fd())?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_root_owned_private_directory_is_trusted() {
        let dir = std::env::temp_dir().join(format!("gh-pins-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let private = dir.join("private");
        std::fs::create_dir(&private).unwrap();
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
        let open = dir.join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
        let link = dir.join("link");
        std::os::unix::fs::symlink(&private, &link).unwrap();
        let meta = |p: &Path| std::fs::symlink_metadata(p).unwrap();
        let root = nix::unistd::geteuid().is_root();
        assert_eq!(untrusted(&meta(&private)).is_none(), root);
        assert!(untrusted(&meta(&open)).is_some());
        assert!(untrusted(&meta(&link)).unwrap().contains("symbolic link"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
