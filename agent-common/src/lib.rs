//! Types shared by Gatehouse's eBPF programs (`agent-ebpf`) and its userspace
//! agent. Every type is `#[repr(C)]`, `Copy`, has explicit padding and a size
//! assertion, so both sides agree on the bytes in the maps.
//!
//! Addresses are stored as four 32-bit words in network byte order, IPv4 as an
//! IPv4-mapped IPv6 address (`::ffff:a.b.c.d`), so one key type serves both
//! families. Ports are stored in host byte order.
#![no_std]

/// Names of the maps, as pinned under the agent's bpffs directory.
pub mod map_names {
    pub const BACKENDS: &str = "GH_BACKENDS";
    pub const CONNECTING: &str = "GH_CONNECTING";
    pub const HANDOFF: &str = "GH_HANDOFF";
    pub const ORIG_DST: &str = "GH_ORIG_DST";
    pub const CONFIG: &str = "GH_CONFIG";
    pub const STATS: &str = "GH_STATS";
    pub const LOCAL_PORTS: &str = "GH_LOCAL_PORTS";
    pub const LOCAL_ADDRS: &str = "GH_LOCAL_ADDRS";
}

/// Names of the eBPF programs (function names in `agent-ebpf`).
pub mod prog_names {
    pub const CONNECT4: &str = "gh_connect4";
    pub const CONNECT6: &str = "gh_connect6";
    pub const GETPEERNAME4: &str = "gh_getpeername4";
    pub const GETPEERNAME6: &str = "gh_getpeername6";
    pub const SOCK_OPS: &str = "gh_sock_ops";
}

/// Capacity of the maps. The per-connection maps are LRU so that records of
/// connections that never completed age out instead of filling the map.
pub const MAX_BACKENDS: u32 = 4096;
pub const MAX_INFLIGHT: u32 = 65536;
/// Ports of protected backends that live on this host, and this host's own
/// interface addresses (see [`Handoff`] and `GH_LOCAL_PORTS`).
pub const MAX_LOCAL_PORTS: u32 = 4096;
pub const MAX_LOCAL_ADDRS: u32 = 1024;

/// An (address, port) pair: a protected backend, or a client's local end.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockKey {
    /// IPv6 address words in network byte order; IPv4 as `::ffff:a.b.c.d`.
    pub addr: [u32; 4],
    /// Port in host byte order.
    pub port: u16,
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<SockKey>() == 20);

/// Network-order value of the third word of an IPv4-mapped IPv6 address.
pub const V4_MAPPED_WORD: u32 = 0x0000_ffff_u32.to_be();

impl SockKey {
    /// The key of an IPv4 address given as the kernel stores it (network order).
    #[inline(always)]
    pub const fn v4(ip_be: u32, port: u16) -> Self {
        Self { addr: [0, 0, V4_MAPPED_WORD, ip_be], port, _pad: 0 }
    }

    /// Whether the address is IPv4-mapped (`::ffff:a.b.c.d`).
    #[inline(always)]
    pub const fn is_v4_mapped(&self) -> bool {
        self.addr[0] == 0 && self.addr[1] == 0 && self.addr[2] == V4_MAPPED_WORD
    }
}

/// What connect4/6 learned about the process that opened a redirected
/// connection. Recorded by socket cookie at connect time and re-keyed by the
/// client's local (address, port) once the connection is established, where
/// the proxy finds it from `accept()`'s peer address.
///
/// The address is only a hint: the proxy trusts a record only for the socket
/// it was made for, by comparing `cookie` with the cookie the kernel reports
/// (sock_diag) for the client end of the connection it accepted, and only
/// while it is fresh (`established_ns`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Handoff {
    pub cgroup_id: u64,
    /// The client socket's cookie (`bpf_get_socket_cookie`), unique per boot.
    pub cookie: u64,
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC) at connect().
    pub connect_ns: u64,
    /// `bpf_ktime_get_ns` when the connection was established (0 before).
    pub established_ns: u64,
    /// The destination the client dialed.
    pub orig: SockKey,
    pub uid: u32,
    pub gid: u32,
    pub tgid: u32,
    /// The process name (`comm`), NUL padded.
    pub comm: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<Handoff>() == 80);

/// Settings the userspace agent gives the eBPF programs (array map, index 0).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// Where IPv6 clients are sent (normally `::1`), network-order words.
    pub proxy_ip6: [u32; 4],
    /// Where IPv4 and IPv4-mapped clients are sent (normally 127.0.0.1), network order.
    pub proxy_ip4: u32,
    /// The proxy's listening port, host order.
    pub proxy_port: u16,
    pub _pad: u16,
    /// SO_MARK value the proxy sets on its own upstream sockets; those are never redirected.
    pub mark: u32,
    /// Non-zero once userspace has filled this record; the programs do nothing before.
    pub enabled: u32,
    /// Network namespace cookie of the agent: only sockets of this namespace are redirected.
    pub netns_cookie: u64,
    /// Hash of the eBPF object that is attached, so a restarted agent knows whether its pinned
    /// links run the same programs it carries.
    pub prog_hash: u64,
    /// Id of the cgroup the pinned links are attached to.
    pub cgroup_id: u64,
}
const _: () = assert!(core::mem::size_of::<Config>() == 56);

/// Indices into the per-CPU statistics array.
pub mod stat {
    pub const REDIRECTED: u32 = 0;
    pub const SKIPPED_MARK: u32 = 1;
    pub const SKIPPED_NETNS: u32 = 2;
    pub const ESTABLISHED: u32 = 3;
    pub const PEERNAME_RESTORED: u32 = 4;
    /// Connects to another local address (unspecified, 127/8, ::1, this host's
    /// interface addresses) on the port of a protected backend of this host.
    pub const ALIAS_REDIRECTED: u32 = 5;
    pub const COUNT: u32 = 8;
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all three are #[repr(C)], Copy, made only of integers and arrays of
    // integers, with explicit padding fields, so every bit pattern is valid.
    #[expect(unsafe_code, reason = "aya::Pod is an unsafe marker trait")]
    unsafe impl aya::Pod for super::SockKey {}
    #[expect(unsafe_code, reason = "aya::Pod is an unsafe marker trait")]
    unsafe impl aya::Pod for super::Handoff {}
    #[expect(unsafe_code, reason = "aya::Pod is an unsafe marker trait")]
    unsafe impl aya::Pod for super::Config {}
}
