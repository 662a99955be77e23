//! Running as a systemd service: readiness and state notifications
//! (`sd_notify`, written to `$NOTIFY_SOCKET` ourselves: one datagram, no
//! library), and whether stderr goes to the journal.
//!
//! Outside systemd (no `$NOTIFY_SOCKET`) every call is a no-op.

use std::os::unix::net::UnixDatagram;
use std::path::Path;

/// What the service manager is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State<'a> {
    /// Programs attached, listeners and control socket up: `READY=1`.
    Ready { status: &'a str },
    /// A policy reload is under way: `RELOADING=1` (followed by `Ready`).
    Reloading,
    /// SIGTERM received, draining sessions: `STOPPING=1`.
    Stopping,
    /// A free-form status line (`systemctl status` shows it).
    Status(&'a str),
}

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("NOTIFY_SOCKET {socket:?}: {source}")]
    Socket {
        socket: String,
        #[source]
        source: std::io::Error,
    },
    #[error("NOTIFY_SOCKET {socket:?} is neither an absolute path nor an abstract name")]
    Address { socket: String },
}

/// Tells the service manager `state`, if one listens. Returns whether a
/// message was sent.
pub fn notify(state: State<'_>) -> Result<bool, NotifyError> {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    let socket = socket.to_string_lossy().into_owned();
    let message = match state {
        State::Ready { status } => format!("READY=1\nSTATUS={}\nMAINPID={}", one_line(status), std::process::id()),
        State::Reloading => format!("RELOADING=1\nMONOTONIC_USEC={}", crate::redirect::monotonic_ns() / 1000),
        State::Stopping => "STOPPING=1".to_owned(),
        State::Status(s) => format!("STATUS={}", one_line(s)),
    };
    send(&socket, message.as_bytes())?;
    Ok(true)
}

/// Like [`notify`], logging a failure instead of returning it: a service
/// manager that cannot be told is no reason to stop serving.
pub fn tell(state: State<'_>) {
    if let Err(e) = notify(state) {
        tracing::warn!(error = %e, "cannot notify the service manager");
    }
}

fn send(socket: &str, message: &[u8]) -> Result<(), NotifyError> {
    let io = |source| NotifyError::Socket { socket: socket.to_owned(), source };
    let sock = UnixDatagram::unbound().map_err(io)?;
    if let Some(name) = socket.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).map_err(io)?;
        sock.send_to_addr(message, &addr).map_err(io)?;
    } else if socket.starts_with('/') {
        sock.send_to(message, Path::new(socket)).map_err(io)?;
    } else {
        return Err(NotifyError::Address { socket: socket.to_owned() });
    }
    Ok(())
}

fn one_line(s: &str) -> String {
    s.replace('\n', " ")
}

/// Whether stderr is connected to the journal (`$JOURNAL_STREAM` names the
/// device and inode of stderr, as systemd sets it for services).
pub fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else { return false };
    let stream = stream.to_string_lossy();
    let Some((dev, ino)) = stream.split_once(':') else { return false };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else { return false };
    dev.parse::<u64>().is_ok_and(|d| d == meta.dev()) && ino.parse::<u64>().is_ok_and(|i| i == meta.ino())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagrams_reach_a_path_socket() {
        let dir = std::env::temp_dir().join(format!("gh-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("notify.sock");
        let rx = UnixDatagram::bind(&path).expect("bind");
        send(path.to_str().expect("utf-8"), b"READY=1").expect("send");
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).expect("recv");
        assert_eq!(buf.get(..n), Some(&b"READY=1"[..]));
        assert!(matches!(send("relative", b"x"), Err(NotifyError::Address { .. })));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
