//! Files that hold secrets (backend passwords, the host's signing key, the
//! masking key, TLS private keys) and the state directory beside them.
//!
//! Every secret file is opened with `O_NOFOLLOW` (a symlink planted in its
//! place is refused, not followed) and checked on the open descriptor, so
//! what is checked is what is read: a regular file, owned by root, readable
//! by its owner only (no group or other bits), in a directory that others
//! cannot write to (unless it is sticky, like `/tmp`, where they cannot
//! replace root's file). Secrets read are held in [`Secret`], which wipes its
//! bytes when dropped. Keys are written atomically: a new file (exclusive,
//! 0600, no symlink followed) in the same directory, fsynced, renamed over
//! the old one, and the directory fsynced.
//!
//! The error says what is wrong with the file, for the operator's log and
//! `gatehouse policy check`; clients are never shown it (see the PostgreSQL
//! adapter's login errors).

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

/// Largest secret file read, in bytes (passwords and keys are far smaller).
pub const MAX_SECRET_FILE: u64 = 1 << 20;

/// Bytes of a secret; wiped from memory when dropped, never printed.
#[derive(Clone, Default)]
pub struct Secret(Zeroizing<Vec<u8>>);

impl Secret {
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(Zeroizing::new(bytes))
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The first line (without `\n` or `\r\n`): how password files are written.
    #[must_use]
    pub fn first_line(&self) -> Self {
        let line = self.0.split(|b| *b == b'\n').next().unwrap_or_default();
        Self::new(line.strip_suffix(b"\r").unwrap_or(line).to_vec())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<secret, {} bytes>", self.0.len())
    }
}

/// What is wrong with a file that should hold a secret (or a trusted
/// certificate authority).
#[derive(Debug, thiserror::Error)]
pub enum FileProblem {
    #[error("does not exist")]
    Missing,
    #[error("is a symbolic link (secret files are opened without following links)")]
    Symlink,
    #[error("is not a regular file")]
    NotRegular,
    #[error("is owned by uid {uid}, not root (the user Gatehouse runs as)")]
    Owner { uid: u32 },
    #[error("has mode {mode:04o}: group and others must have no access (chmod 0600)")]
    Readable { mode: u32 },
    #[error("has mode {mode:04o}: group and others must not be able to write it (chmod 0644 or 0600)")]
    Writable { mode: u32 },
    #[error("is in directory {dir}, which others may write to (mode {mode:04o}, owner uid {uid})")]
    Directory { dir: PathBuf, mode: u32, uid: u32 },
    #[error("is larger than {max} bytes")]
    TooLarge { max: u64 },
    #[error("{0}")]
    Io(io::Error),
}

/// A file that cannot be used for a secret, and why.
#[derive(Debug, thiserror::Error)]
#[error("{what} {path}: {problem}")]
pub struct FileError {
    /// What the file is for ("password file", "host signing key"…).
    pub what: &'static str,
    pub path: PathBuf,
    #[source]
    pub problem: FileProblem,
}

/// How strictly a file's mode is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A secret: readable by root only.
    Secret,
    /// Public but trusted (a CA bundle, a certificate): root-owned, writable by root only.
    Trusted,
}

fn problem_of(e: io::Error) -> FileProblem {
    match e.raw_os_error() {
        Some(libc::ELOOP) => FileProblem::Symlink,
        Some(libc::ENOENT) => FileProblem::Missing,
        _ => FileProblem::Io(e),
    }
}

/// Root, or the user Gatehouse runs as (root for the agent; the owner of a
/// test's temporary files otherwise).
fn trusted_owner(uid: u32) -> bool {
    uid == 0 || uid == nix::unistd::geteuid().as_raw()
}

/// Opens `path` without following a symlink and checks the open file and
/// its directory.
pub fn open_checked(path: &Path, what: &'static str, kind: Kind) -> Result<File, FileError> {
    let err = |problem| FileError { what, path: path.to_owned(), problem };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| err(problem_of(e)))?;
    let meta = file.metadata().map_err(|e| err(FileProblem::Io(e)))?;
    if !meta.file_type().is_file() {
        return Err(err(FileProblem::NotRegular));
    }
    if !trusted_owner(meta.uid()) {
        return Err(err(FileProblem::Owner { uid: meta.uid() }));
    }
    let mode = meta.mode() & 0o7777;
    match kind {
        Kind::Secret if mode & 0o077 != 0 => return Err(err(FileProblem::Readable { mode })),
        Kind::Trusted if mode & 0o022 != 0 => return Err(err(FileProblem::Writable { mode })),
        _ => {}
    }
    check_directory(path).map_err(err)?;
    Ok(file)
}

/// The directory of `path` must not let others replace the file: owned by
/// root (or sticky) and not writable by group or others (unless sticky).
fn check_directory(path: &Path) -> Result<(), FileProblem> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let meta = std::fs::metadata(dir).map_err(FileProblem::Io)?;
    let mode = meta.mode() & 0o7777;
    let sticky = mode & 0o1000 != 0;
    let writable_by_others = mode & 0o022 != 0;
    if !sticky && (writable_by_others || !trusted_owner(meta.uid())) {
        return Err(FileProblem::Directory { dir: dir.to_owned(), mode, uid: meta.uid() });
    }
    Ok(())
}

/// Reads a whole secret file (at most [`MAX_SECRET_FILE`] bytes).
pub fn read_secret(path: &Path, what: &'static str) -> Result<Secret, FileError> {
    read_checked(path, what, Kind::Secret)
}

/// Reads a file checked as `kind`.
pub fn read_checked(path: &Path, what: &'static str, kind: Kind) -> Result<Secret, FileError> {
    let err = |problem| FileError { what, path: path.to_owned(), problem };
    let file = open_checked(path, what, kind)?;
    let mut buf = Zeroizing::new(Vec::new());
    file.take(MAX_SECRET_FILE + 1).read_to_end(&mut buf).map_err(|e| err(FileProblem::Io(e)))?;
    if u64::try_from(buf.len()).unwrap_or(u64::MAX) > MAX_SECRET_FILE {
        return Err(err(FileProblem::TooLarge { max: MAX_SECRET_FILE }));
    }
    Ok(Secret(buf))
}

/// Writes `bytes` to `path` atomically with `mode`: a fresh temporary file
/// in the same directory (created exclusively, never through a symlink),
/// fsynced, renamed over `path`, then the directory fsynced. Readers see
/// the old file or the new one, never a part.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}-{}", std::process::id(), uuid::Uuid::new_v4().simple()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)?;
        // The umask may have narrowed the mode; never widened it. Set it exactly.
        nix::sys::stat::fchmod(f.as_fd(), nix::sys::stat::Mode::from_bits_truncate(mode)).map_err(io::Error::from)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        File::open(&dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// What [`state_dir`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateDir {
    Created,
    /// It existed with a wider mode, which was narrowed to 0700.
    Corrected {
        was: u32,
    },
    Fine,
}

/// Makes sure the directory holding the audit store and the keys is a real
/// directory (not a symlink), owned by root, mode 0700: created so if
/// absent, corrected if its mode is wider. One owned by someone else is
/// refused: they could swap the files in it.
pub fn state_dir(dir: &Path) -> Result<StateDir, FileError> {
    let what = "state directory";
    let err = |problem| FileError { what, path: dir.to_owned(), problem };
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|e| err(FileProblem::Io(e)))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| err(FileProblem::Io(e)))?;
            Ok(StateDir::Created)
        }
        Err(e) => Err(err(FileProblem::Io(e))),
        Ok(m) if m.file_type().is_symlink() => Err(err(FileProblem::Symlink)),
        Ok(m) if !m.is_dir() => Err(err(FileProblem::NotRegular)),
        Ok(m) if !trusted_owner(m.uid()) => Err(err(FileProblem::Owner { uid: m.uid() })),
        Ok(m) if m.mode() & 0o7777 != 0o700 => {
            let was = m.mode() & 0o7777;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| err(FileProblem::Io(e)))?;
            Ok(StateDir::Corrected { was })
        }
        Ok(_) => Ok(StateDir::Fine),
    }
}

/// The directory a state file (the audit store, a key) lives in.
pub fn dir_of(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// Reads 32 random bytes from the kernel.
pub fn random32() -> io::Result<Zeroizing<[u8; 32]>> {
    let mut b = Zeroizing::new([0u8; 32]);
    File::open("/dev/urandom")?.read_exact(b.as_mut())?;
    Ok(b)
}

/// No core dumps and no ptrace by other users: a crash must not write the
/// keys and passwords in memory to disk.
pub fn no_core_dumps() {
    use nix::sys::resource::{Resource, setrlimit};
    if let Err(e) = setrlimit(Resource::RLIMIT_CORE, 0, 0) {
        tracing::warn!(error = %e, "cannot switch core dumps off (RLIMIT_CORE)");
    }
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        tracing::warn!(error = %e, "cannot switch core dumps off (PR_SET_DUMPABLE)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("gatehouse-secrets-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
        d
    }

    fn root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    #[test]
    fn secret_files_are_checked_on_the_open_file() {
        let d = temp("check");
        let p = d.join("pw");
        write_atomic(&p, b"hunter2\nignored\n", 0o600).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o7777, 0o600);
        let s = read_secret(&p, "password file").unwrap();
        assert_eq!(s.first_line().expose(), b"hunter2");
        assert_eq!(format!("{s:?}"), "<secret, 16 bytes>");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = read_secret(&p, "password file").unwrap_err();
        assert!(matches!(e.problem, FileProblem::Readable { mode: 0o644 }), "{e}");
        assert!(read_checked(&p, "CA file", Kind::Trusted).is_ok());
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert!(matches!(
            read_checked(&p, "CA file", Kind::Trusted).unwrap_err().problem,
            FileProblem::Writable { .. }
        ));
        if root() {
            nix::unistd::chown(&p, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
            let e = read_secret(&p, "password file").unwrap_err();
            assert!(matches!(e.problem, FileProblem::Owner { uid: 65534 }), "{e}");
        }

        let link = d.join("link");
        std::os::unix::fs::symlink(&p, &link).unwrap();
        let e = read_secret(&link, "password file").unwrap_err();
        assert!(matches!(e.problem, FileProblem::Symlink), "{e}");
        assert!(e.to_string().contains("symbolic link"), "{e}");

        let e = read_secret(&d.join("absent"), "password file").unwrap_err();
        assert!(matches!(e.problem, FileProblem::Missing), "{e}");
        let e = read_secret(&d, "password file").unwrap_err();
        assert!(matches!(e.problem, FileProblem::NotRegular | FileProblem::Io(_)), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_directory_others_can_write_is_refused() {
        if !root() {
            return;
        }
        let d = temp("dir");
        let p = d.join("pw");
        write_atomic(&p, b"x", 0o600).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = read_secret(&p, "password file").unwrap_err();
        assert!(matches!(e.problem, FileProblem::Directory { .. }), "{e}");
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o1777)).unwrap();
        assert!(read_secret(&p, "password file").is_ok(), "a sticky directory keeps root's file root's");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn atomic_writes_replace_and_never_follow_links() {
        let d = temp("atomic");
        let p = d.join("key");
        write_atomic(&p, b"one", 0o600).unwrap();
        write_atomic(&p, b"two", 0o600).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        // A symlink at the key's path is replaced, its target untouched.
        let target = d.join("target");
        std::fs::write(&target, b"keep").unwrap();
        let link = d.join("linked");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        write_atomic(&link, b"new", 0o600).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
        assert!(!std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
        let leftovers: Vec<_> = std::fs::read_dir(&d)
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
            .collect();
        assert!(leftovers.is_empty());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn the_state_directory_is_made_and_narrowed_to_0700() {
        if !root() {
            return;
        }
        let d = temp("state");
        let s = d.join("var/lib/gh");
        assert_eq!(state_dir(&s).unwrap(), StateDir::Created);
        assert_eq!(std::fs::metadata(&s).unwrap().mode() & 0o7777, 0o700);
        std::fs::set_permissions(&s, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(state_dir(&s).unwrap(), StateDir::Corrected { was: 0o755 });
        assert_eq!(state_dir(&s).unwrap(), StateDir::Fine);
        let link = d.join("link");
        std::os::unix::fs::symlink(&s, &link).unwrap();
        assert!(matches!(state_dir(&link).unwrap_err().problem, FileProblem::Symlink));
        nix::unistd::chown(&s, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
        assert!(matches!(state_dir(&s).unwrap_err().problem, FileProblem::Owner { uid: 65534 }));
        let _ = std::fs::remove_dir_all(&d);
    }
}
