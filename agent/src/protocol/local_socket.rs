//! A database server on this host that also listens on a Unix socket every
//! local user can reach is reachable around Gatehouse: the kernel programs
//! redirect TCP and UDP connects, not `AF_UNIX` ones, and Debian's defaults
//! (`/var/run/postgresql`, `/run/mysqld`, sockets of mode 0777; PostgreSQL's
//! `local … peer`, MariaDB's `unix_socket` plugin) let a local user log in
//! as the role of their own name without the held password. Gatehouse asks
//! the server where its sockets are (PostgreSQL `unix_socket_directories`
//! and `port`, read with the catalog; MariaDB/MySQL `@@socket`, read at
//! login) and warns in the agent's log, once per backend and socket, when
//! one is open to every local user.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

/// The Unix sockets among `paths` that every local user can connect to: a
/// socket file others may write, in directories others may search (an
/// abstract socket, `@name`, has no permissions at all). Only for a backend
/// on this host (`addr` local): a remote server's paths say nothing here.
pub fn open_sockets(addr: SocketAddr, paths: &[PathBuf]) -> Vec<PathBuf> {
    let interfaces = crate::redirect::local::interface_addrs();
    if !crate::redirect::local::is_local(addr.ip(), &interfaces) {
        return Vec::new();
    }
    paths.iter().filter(|p| reachable_by_all(p)).cloned().collect()
}

fn reachable_by_all(path: &Path) -> bool {
    if path.as_os_str().as_encoded_bytes().first() == Some(&b'@') {
        return true;
    }
    let Ok(meta) = std::fs::metadata(path) else { return false };
    if !meta.file_type().is_socket() || meta.permissions().mode() & 0o002 == 0 {
        return false;
    }
    path.ancestors()
        .skip(1)
        .filter(|d| !d.as_os_str().is_empty())
        .all(|d| std::fs::metadata(d).is_ok_and(|m| m.permissions().mode() & 0o001 != 0))
}

/// PostgreSQL's socket files from `unix_socket_directories` (a comma-separated
/// list; `@` starts an abstract name) and `port`.
pub fn postgres_paths(directories: &str, port: &str) -> Vec<PathBuf> {
    directories
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(format!(".s.PGSQL.{port}")))
        .collect()
}

/// Warns (once per backend and socket) about each of `paths` open to every
/// local user. Each backend's sockets are looked at once a minute at most
/// (MySQL sessions report them at every login).
pub fn warn_open(backend: &str, addr: SocketAddr, paths: &[PathBuf]) {
    static CHECKED: OnceLock<Mutex<HashMap<String, Instant>>> = OnceLock::new();
    static WARNED: OnceLock<Mutex<BTreeSet<(String, PathBuf)>>> = OnceLock::new();
    {
        let mut checked = CHECKED.get_or_init(Mutex::default).lock().unwrap_or_else(PoisonError::into_inner);
        if checked.get(backend).is_some_and(|t| t.elapsed() < Duration::from_secs(60)) {
            return;
        }
        checked.insert(backend.to_owned(), Instant::now());
    }
    let open = open_sockets(addr, paths);
    let mut warned = WARNED.get_or_init(Mutex::default).lock().unwrap_or_else(PoisonError::into_inner);
    for p in &open {
        if warned.insert((backend.to_owned(), p.clone())) {
            tracing::warn!(
                backend,
                socket = %p.display(),
                "backend {backend} runs on this host and its server also listens on the Unix socket {}, which every local user can connect to: connections through it do not pass through Gatehouse (the kernel redirect sees TCP connects only). Make the socket's directory reachable only by the server's own user (and root), or turn the socket off (PostgreSQL: unix_socket_directories = '')",
                p.display()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_every_user_can_reach_is_found_and_a_closed_directory_hides_it() {
        let dir = std::env::temp_dir().join(format!("gh-sock-{}", std::process::id()));
        let inner = dir.join("run");
        std::fs::create_dir_all(&inner).unwrap();
        let path = inner.join(".s.PGSQL.5432");
        let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let set = |p: &Path, mode: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
        set(&dir, 0o755);
        set(&inner, 0o755);
        set(&path, 0o777);
        let local: SocketAddr = "127.10.0.1:5432".parse().unwrap();
        let remote: SocketAddr = "192.0.2.7:5432".parse().unwrap();
        let paths = postgres_paths(&format!(" {} , @abstract", inner.display()), "5432");
        assert_eq!(paths, [path.clone(), PathBuf::from("@abstract/.s.PGSQL.5432")]);
        assert_eq!(open_sockets(local, &paths), paths, "both open on a local backend");
        assert!(open_sockets(remote, &paths).is_empty(), "a remote backend's paths are not this host's");
        set(&path, 0o770);
        assert_eq!(open_sockets(local, &paths[..1]), Vec::<PathBuf>::new(), "the socket is not others'");
        set(&path, 0o777);
        set(&inner, 0o750);
        assert!(open_sockets(local, &paths[..1]).is_empty(), "its directory is not searchable by others");
        assert!(open_sockets(local, &[dir.join("missing")]).is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
