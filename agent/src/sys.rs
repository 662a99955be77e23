//! The few socket options that neither `nix` nor `socket2` wraps. The only
//! module of the agent allowed to use `unsafe`.
#![expect(unsafe_code, reason = "getsockopt(SO_NETNS_COOKIE) has no safe wrapper")]

use std::io;
use std::os::fd::AsRawFd;

/// `SO_NETNS_COOKIE` from <asm-generic/socket.h> (Linux 5.14+).
const SO_NETNS_COOKIE: libc::c_int = 71;

/// The cookie of the network namespace `sock` lives in: the same value
/// `bpf_get_netns_cookie` returns in the kernel.
pub fn netns_cookie(sock: &impl AsRawFd) -> io::Result<u64> {
    let mut cookie: u64 = 0;
    let mut len: libc::socklen_t = 8; // size of u64
    // SAFETY: `cookie` is a valid, writable u64 for the duration of the call
    // and `len` holds its size; the fd is borrowed from a live socket.
    let rc = unsafe {
        libc::getsockopt(sock.as_raw_fd(), libc::SOL_SOCKET, SO_NETNS_COOKIE, (&raw mut cookie).cast(), &raw mut len)
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}
