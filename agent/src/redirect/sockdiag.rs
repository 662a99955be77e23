//! Asking the kernel about one TCP socket by its 4-tuple (sock_diag /
//! inet_diag over netlink, as `ss` does): its cookie, owner uid and inode.
//!
//! The proxy uses it to confirm a kernel record: the client end of the
//! connection it accepted must be the very socket connect4 recorded (same
//! cookie). It also names who dialed the proxy port directly.
//!
//! The wire format is encoded and parsed by pure functions over bytes; only
//! [`lookup`] does I/O (one request, one answer, on a netlink socket kept per thread).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// <linux/sock_diag.h>, <linux/inet_diag.h>, <linux/netlink.h>.
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLMSG_HDRLEN: usize = 16;
const REQ_LEN: usize = 56;
const MSG_LEN: usize = 72;
const IPPROTO_TCP: u8 = 6;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
/// `INET_DIAG_NOCOOKIE`: match any cookie.
const NOCOOKIE: u32 = u32::MAX;

/// What the kernel says about one socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SockInfo {
    /// The socket cookie (the value `bpf_get_socket_cookie` returns for it).
    pub cookie: u64,
    /// The socket's owner (the uid that created it).
    pub uid: u32,
    pub inode: u32,
    /// TCP state (1 = established).
    pub state: u8,
}

#[derive(Debug, thiserror::Error)]
pub enum DiagError {
    #[error("sock_diag socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("sock_diag: the kernel answered {errno}")]
    Kernel { errno: i32 },
    #[error("sock_diag: malformed answer ({0})")]
    Malformed(&'static str),
    #[error("sock_diag: the two ends of a connection must be of one address family")]
    Family,
}

/// Encodes the request for the socket whose local end is `local` and whose
/// peer is `remote`.
pub fn encode_request(local: SocketAddr, remote: SocketAddr, seq: u32) -> Result<Vec<u8>, DiagError> {
    let family = match (local.ip(), remote.ip()) {
        (IpAddr::V4(_), IpAddr::V4(_)) => AF_INET,
        (IpAddr::V6(_), IpAddr::V6(_)) => AF_INET6,
        _ => return Err(DiagError::Family),
    };
    let mut b = Vec::with_capacity(NLMSG_HDRLEN + REQ_LEN);
    // nlmsghdr
    b.extend_from_slice(&u32::try_from(NLMSG_HDRLEN + REQ_LEN).unwrap_or(u32::MAX).to_ne_bytes());
    b.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    b.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    b.extend_from_slice(&seq.to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes());
    // inet_diag_req_v2
    b.extend_from_slice(&[family, IPPROTO_TCP, 0, 0]);
    b.extend_from_slice(&u32::MAX.to_ne_bytes()); // every state
    // inet_diag_sockid: ports and addresses in network order
    b.extend_from_slice(&local.port().to_be_bytes());
    b.extend_from_slice(&remote.port().to_be_bytes());
    b.extend_from_slice(&addr16(local.ip()));
    b.extend_from_slice(&addr16(remote.ip()));
    b.extend_from_slice(&0u32.to_ne_bytes()); // any interface
    b.extend_from_slice(&NOCOOKIE.to_ne_bytes());
    b.extend_from_slice(&NOCOOKIE.to_ne_bytes());
    Ok(b)
}

/// An address as the 16 bytes of `idiag_src`/`idiag_dst` (IPv4 in the first four).
fn addr16(ip: IpAddr) -> [u8; 16] {
    let mut o = [0u8; 16];
    match ip {
        IpAddr::V4(v4) => {
            if let Some(head) = o.get_mut(..4) {
                head.copy_from_slice(&v4.octets());
            }
        }
        IpAddr::V6(v6) => o = v6.octets(),
    }
    o
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    b.get(at..at + 2).and_then(|s| s.try_into().ok()).map(u16::from_ne_bytes)
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4).and_then(|s| s.try_into().ok()).map(u32::from_ne_bytes)
}

/// Parses the kernel's answer: `Ok(None)` when no such socket exists.
pub fn parse_response(buf: &[u8], seq: u32) -> Result<Option<SockInfo>, DiagError> {
    let mut rest = buf;
    while !rest.is_empty() {
        let len = u32_at(rest, 0).ok_or(DiagError::Malformed("short header"))?;
        let len = usize::try_from(len).map_err(|_| DiagError::Malformed("length"))?;
        if len < NLMSG_HDRLEN || len > rest.len() {
            return Err(DiagError::Malformed("message length"));
        }
        let kind = u16_at(rest, 4).ok_or(DiagError::Malformed("short header"))?;
        let msg_seq = u32_at(rest, 8).ok_or(DiagError::Malformed("short header"))?;
        let body = rest.get(NLMSG_HDRLEN..len).ok_or(DiagError::Malformed("body"))?;
        // Messages are padded to four bytes.
        rest = rest.get(len.next_multiple_of(4).min(rest.len())..).unwrap_or_default();
        if msg_seq != seq {
            continue;
        }
        match kind {
            NLMSG_ERROR => {
                let errno = u32_at(body, 0).ok_or(DiagError::Malformed("error body"))?.cast_signed();
                return match -errno {
                    0 => Ok(None),
                    libc::ENOENT => Ok(None),
                    e => Err(DiagError::Kernel { errno: e }),
                };
            }
            NLMSG_DONE => return Ok(None),
            SOCK_DIAG_BY_FAMILY => {
                if body.len() < MSG_LEN {
                    return Err(DiagError::Malformed("short inet_diag_msg"));
                }
                let state = *body.get(1).ok_or(DiagError::Malformed("state"))?;
                // idiag_cookie[2] sits at the end of the 48-byte sockid (offset 4 + 40).
                let lo = u32_at(body, 44).ok_or(DiagError::Malformed("cookie"))?;
                let hi = u32_at(body, 48).ok_or(DiagError::Malformed("cookie"))?;
                let uid = u32_at(body, 64).ok_or(DiagError::Malformed("uid"))?;
                let inode = u32_at(body, 68).ok_or(DiagError::Malformed("inode"))?;
                return Ok(Some(SockInfo { cookie: (u64::from(hi) << 32) | u64::from(lo), uid, inode, state }));
            }
            _ => {}
        }
    }
    Err(DiagError::Malformed("no answer"))
}

/// Looks up the TCP socket whose local end is `local` and whose peer is
/// `remote`, in the caller's network namespace (the agent never changes it).
///
/// Each thread keeps one netlink socket for its lookups instead of opening
/// one per connection (a `socket`, `setsockopt` and `close` saved on every
/// accepted connection). The kernel answers a sock_diag request while the
/// request is being sent, so each answer is read before the next request
/// goes out; a socket on which anything went wrong is closed, not reused,
/// so no late answer can be read as another connection's.
pub fn lookup(local: SocketAddr, remote: SocketAddr) -> Result<Option<SockInfo>, DiagError> {
    thread_local! {
        static SOCKET: std::cell::RefCell<Option<(socket2::Socket, u32)>> = const { std::cell::RefCell::new(None) };
    }
    SOCKET.with(|cell| {
        let mut slot = cell.borrow_mut();
        let (sock, seq) = match slot.take() {
            Some(s) => s,
            None => (open_socket()?, 0),
        };
        let seq = seq.wrapping_add(1);
        let answer = ask(&sock, local, remote, seq);
        if answer.is_ok() {
            *slot = Some((sock, seq));
        }
        answer
    })
}

fn open_socket() -> Result<socket2::Socket, DiagError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(Domain::from(libc::AF_NETLINK), Type::DGRAM, Some(Protocol::from(libc::NETLINK_SOCK_DIAG)))?;
    sock.set_read_timeout(Some(Duration::from_secs(1)))?;
    Ok(sock)
}

/// One request and its answer on `sock`. Only the kernel's answer counts:
/// the socket lives as long as its thread, so a datagram another process
/// queued on it (sending to a sock_diag socket's port needs CAP_NET_ADMIN
/// in the agent's network namespace) must not be read as the kernel's.
fn ask(sock: &socket2::Socket, local: SocketAddr, remote: SocketAddr, seq: u32) -> Result<Option<SockInfo>, DiagError> {
    use std::os::fd::AsRawFd;
    let req = encode_request(local, remote, seq)?;
    // An unconnected netlink socket sends to the kernel (port id 0).
    // One datagram: the kernel takes it whole or fails the call.
    if sock.send(&req)? != req.len() {
        return Err(DiagError::Malformed("the request was cut short"));
    }
    let mut buf = [0u8; 1024];
    let (n, from) = nix::sys::socket::recvfrom::<nix::sys::socket::NetlinkAddr>(sock.as_raw_fd(), &mut buf)
        .map_err(std::io::Error::from)?;
    if from.map(|a| a.pid()) != Some(0) {
        return Err(DiagError::Malformed("an answer not sent by the kernel"));
    }
    parse_response(buf.get(..n).unwrap_or_default(), seq)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_layout_matches_the_kernel_structs() {
        let r = encode_request("127.10.0.1:40000".parse().unwrap(), "127.0.0.1:996".parse().unwrap(), 7).unwrap();
        assert_eq!(r.len(), 72);
        assert_eq!(u32_at(&r, 0), Some(72));
        assert_eq!(u16_at(&r, 4), Some(SOCK_DIAG_BY_FAMILY));
        assert_eq!(r[16], AF_INET);
        assert_eq!(r[17], IPPROTO_TCP);
        assert_eq!(&r[24..26], &40000u16.to_be_bytes());
        assert_eq!(&r[26..28], &996u16.to_be_bytes());
        assert_eq!(&r[28..32], &[127, 10, 0, 1]);
        assert_eq!(&r[44..48], &[127, 0, 0, 1]);
        assert!(encode_request("[::1]:1".parse().unwrap(), "127.0.0.1:2".parse().unwrap(), 1).is_err());
    }

    fn answer(kind: u16, seq: u32, body: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&u32::try_from(16 + body.len()).unwrap().to_ne_bytes());
        b.extend_from_slice(&kind.to_ne_bytes());
        b.extend_from_slice(&0u16.to_ne_bytes());
        b.extend_from_slice(&seq.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        b.extend_from_slice(body);
        b
    }

    #[test]
    fn parses_a_socket_an_absence_and_errors() {
        let mut msg = vec![0u8; MSG_LEN];
        msg[0] = AF_INET;
        msg[1] = 1;
        msg[44..48].copy_from_slice(&0xdead_beef_u32.to_ne_bytes());
        msg[48..52].copy_from_slice(&0x12_u32.to_ne_bytes());
        msg[64..68].copy_from_slice(&1001_u32.to_ne_bytes());
        msg[68..72].copy_from_slice(&4242_u32.to_ne_bytes());
        let got = parse_response(&answer(SOCK_DIAG_BY_FAMILY, 3, &msg), 3).unwrap().unwrap();
        assert_eq!(got, SockInfo { cookie: 0x12_dead_beef, uid: 1001, inode: 4242, state: 1 });

        let enoent = (-libc::ENOENT).to_ne_bytes();
        assert_eq!(parse_response(&answer(NLMSG_ERROR, 3, &enoent), 3).unwrap(), None);
        let eperm = (-libc::EPERM).to_ne_bytes();
        assert!(matches!(parse_response(&answer(NLMSG_ERROR, 3, &eperm), 3), Err(DiagError::Kernel { .. })));
        // Truncated or lying lengths are errors, never panics.
        assert!(parse_response(&answer(SOCK_DIAG_BY_FAMILY, 3, &msg[..10]), 3).is_err());
        let mut lying = answer(SOCK_DIAG_BY_FAMILY, 3, &msg);
        lying[0] = 200;
        assert!(parse_response(&lying, 3).is_err());
        assert!(parse_response(&[1, 2, 3], 3).is_err());
    }

    #[test]
    fn finds_a_real_connection_and_its_cookie() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        c.connect(&l.local_addr().unwrap().into()).unwrap();
        let (_s, peer) = l.accept().unwrap();
        // The thread's socket is reused: every answer is the one asked for,
        // also after an absent socket's.
        for _ in 0..3 {
            let info = lookup(peer, l.local_addr().unwrap()).unwrap().expect("the client socket exists");
            assert_eq!(info.cookie, c.cookie().unwrap());
            assert_eq!(info.uid, nix::unistd::geteuid().as_raw());
            assert_eq!(lookup("127.0.0.1:1".parse().unwrap(), "127.0.0.1:2".parse().unwrap()).unwrap(), None);
        }
        let c2 = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        c2.connect(&l.local_addr().unwrap().into()).unwrap();
        let (_s2, peer2) = l.accept().unwrap();
        let info2 = lookup(peer2, l.local_addr().unwrap()).unwrap().expect("the second client socket exists");
        assert_eq!(info2.cookie, c2.cookie().unwrap());
        assert_ne!(info2.cookie, c.cookie().unwrap());
    }

    /// A forged answer queued on the socket (with the very sequence number
    /// the next request will carry) is refused, not taken for the kernel's.
    /// Sending to another netlink socket's port needs CAP_NET_ADMIN: root only.
    #[test]
    fn an_answer_from_another_process_is_refused() {
        use nix::sys::socket::{MsgFlags, NetlinkAddr, sendto};
        use std::os::fd::AsRawFd;
        assert!(nix::unistd::geteuid().is_root(), "this test forges a netlink answer: run it as root");
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (_s, peer) = l.accept().unwrap();
        let victim = open_socket().unwrap();
        // The first request binds the socket to a port id; learn it.
        assert!(ask(&victim, peer, l.local_addr().unwrap(), 1).unwrap().is_some());
        let port = nix::sys::socket::getsockname::<NetlinkAddr>(victim.as_raw_fd()).unwrap().pid();
        let mut msg = vec![0u8; MSG_LEN];
        msg[0] = AF_INET;
        msg[1] = 1;
        msg[44..48].copy_from_slice(&0x0bad_c0de_u32.to_ne_bytes());
        let forged = answer(SOCK_DIAG_BY_FAMILY, 2, &msg);
        let forger = open_socket().unwrap();
        sendto(forger.as_raw_fd(), &forged, &NetlinkAddr::new(port, 0), MsgFlags::empty())
            .expect("root may send to the port");
        let got = ask(&victim, peer, l.local_addr().unwrap(), 2);
        assert!(matches!(got, Err(DiagError::Malformed(_))), "the forged answer was taken: {got:?}");
        drop(c);
    }
}
