//! Gatehouse's kernel side.
//!
//! * `cgroup/connect4|6`: a TCP connect to a protected backend is rewritten to
//!   the proxy's loopback listener; who made it is recorded by socket cookie.
//!   A backend on this host is reachable through every local address, so a
//!   connect to any local address (unspecified, 127/8, `::1`, this host's
//!   interface addresses) on the port of a local backend is redirected too.
//! * `sock_ops` (active established): that record is re-keyed by the client's
//!   local (address, port), which the proxy sees as the peer of `accept()`.
//! * `cgroup/getpeername4|6`: the client still sees the backend as its peer.
//!
//! Sockets marked with the agent's SO_MARK (its own upstream connections) and
//! sockets of other network namespaces are left alone.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]
#![expect(unsafe_code, reason = "eBPF programs read and write their kernel context through raw pointers")]
#![expect(
    clippy::cast_possible_truncation,
    reason = "the kernel ABI packs u16 ports in u32 fields and uid/gid in one u64"
)]

use agent_common::{Config, Handoff, MAX_BACKENDS, MAX_INFLIGHT, MAX_LOCAL_ADDRS, MAX_LOCAL_PORTS, SockKey, stat};
use aya_ebpf::{
    bindings::{BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, bpf_sock_addr},
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        generated::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_getsockopt, bpf_ktime_get_ns},
    },
    macros::{cgroup_sock_addr, map, sock_ops},
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
    programs::{SockAddrContext, SockOpsContext},
};
use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};

const SOCK_STREAM: u32 = 1;
const SOL_SOCKET: i32 = 1;
const SO_MARK: i32 = 36;
const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
/// Returned by cgroup sock_addr programs to let the call proceed.
const PROCEED: i32 = 1;

#[map(name = "GH_BACKENDS")]
static BACKENDS: HashMap<SockKey, u32> = HashMap::pinned(MAX_BACKENDS, 0);
#[map(name = "GH_CONNECTING")]
static CONNECTING: LruHashMap<u64, Handoff> = LruHashMap::pinned(MAX_INFLIGHT, 0);
#[map(name = "GH_HANDOFF")]
static HANDOFF: LruHashMap<SockKey, Handoff> = LruHashMap::pinned(MAX_INFLIGHT, 0);
#[map(name = "GH_ORIG_DST")]
static ORIG_DST: LruHashMap<u64, SockKey> = LruHashMap::pinned(MAX_INFLIGHT, 0);
#[map(name = "GH_CONFIG")]
static CONFIG: Array<Config> = Array::pinned(1, 0);
#[map(name = "GH_STATS")]
static STATS: PerCpuArray<u64> = PerCpuArray::pinned(stat::COUNT, 0);
/// Ports (host order) of protected backends whose address is on this host.
#[map(name = "GH_LOCAL_PORTS")]
static LOCAL_PORTS: HashMap<u32, u32> = HashMap::pinned(MAX_LOCAL_PORTS, 0);
/// This host's interface addresses other than loopback (port 0), kept
/// current by the agent.
#[map(name = "GH_LOCAL_ADDRS")]
static LOCAL_ADDRS: HashMap<SockKey, u32> = HashMap::pinned(MAX_LOCAL_ADDRS, 0);

/// Network-order word of `::1`'s last four bytes.
const V6_LOOPBACK_WORD: u32 = 1_u32.to_be();

#[inline(always)]
fn count(index: u32) {
    if let Some(slot) = STATS.get_ptr_mut(index) {
        // SAFETY: the pointer comes from a per-CPU array lookup and is valid for this CPU.
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
fn config() -> Option<&'static Config> {
    let cfg = CONFIG.get(0)?;
    if cfg.enabled == 0 { None } else { Some(cfg) }
}

/// Whether this socket must be left alone: the agent's own upstream socket
/// (marked) or a socket of another network namespace.
#[inline(always)]
fn exempt(ctx: &SockAddrContext, cfg: &Config) -> bool {
    // SAFETY: the helper takes the program's own context pointer.
    let netns = unsafe { bpf_get_netns_cookie(ctx.sock_addr.cast()) };
    if netns != cfg.netns_cookie {
        count(stat::SKIPPED_NETNS);
        return true;
    }
    let mut mark: u32 = 0;
    // SAFETY: optval points at a u32 on our stack and optlen is its size.
    let rc = unsafe {
        bpf_getsockopt(
            ctx.sock_addr.cast(),
            SOL_SOCKET,
            SO_MARK,
            addr_of_mut!(mark).cast(),
            core::mem::size_of::<u32>() as i32,
        )
    };
    if rc == 0 && mark != 0 && mark == cfg.mark {
        count(stat::SKIPPED_MARK);
        return true;
    }
    false
}

/// Records who is connecting to `orig`, by socket cookie.
#[inline(always)]
fn record(ctx: &SockAddrContext, orig: SockKey) {
    let uid_gid = bpf_get_current_uid_gid();
    let pid_tgid = bpf_get_current_pid_tgid();
    let handoff = Handoff {
        // SAFETY: helper without arguments.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        cookie: 0,
        connect_ns: 0,
        established_ns: 0,
        orig,
        uid: uid_gid as u32,
        gid: (uid_gid >> 32) as u32,
        tgid: (pid_tgid >> 32) as u32,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    };
    // SAFETY: the helper takes the program's own context pointer.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    let handoff = Handoff {
        cookie,
        // SAFETY: helper without arguments.
        connect_ns: unsafe { bpf_ktime_get_ns() },
        established_ns: 0,
        ..handoff
    };
    // A full LRU map evicts the oldest record; an insert failure leaves the
    // connection redirected without a record, which the proxy refuses.
    let _ = CONNECTING.insert(cookie, handoff, 0);
    let _ = ORIG_DST.insert(cookie, orig, 0);
    count(stat::REDIRECTED);
}

/// Whether a connect to `dst` must be redirected: `Some(false)` for a
/// protected backend's own address, `Some(true)` for another local address
/// on the port of a backend of this host (the kernel would deliver it to the
/// same listener when that listens on a wildcard or the same address),
/// `None` otherwise.
#[inline(always)]
fn protected(dst: SockKey) -> Option<bool> {
    // SAFETY: read-only lookups of plain values.
    unsafe {
        if BACKENDS.get(dst).is_some() {
            return Some(false);
        }
        if LOCAL_PORTS.get(u32::from(dst.port)).is_none() {
            return None;
        }
    }
    is_local(&dst).then_some(true)
}

/// Whether `dst` (port ignored) is an address of this host: the unspecified
/// address (the kernel connects it to loopback or to the socket's own bound
/// address), 127/8, `::1`, or one of the interface addresses the agent keeps
/// in `GH_LOCAL_ADDRS`. IPv4-mapped addresses count as their IPv4 address.
#[inline(always)]
fn is_local(dst: &SockKey) -> bool {
    let [w0, w1, w2, w3] = dst.addr;
    if dst.is_v4_mapped() {
        if w3 == 0 || u32::from_be(w3) >> 24 == 127 {
            return true;
        }
    } else if w0 == 0 && w1 == 0 && w2 == 0 && (w3 == 0 || w3 == V6_LOOPBACK_WORD) {
        return true;
    }
    let key = SockKey { addr: dst.addr, port: 0, _pad: 0 };
    // SAFETY: read-only lookup of a plain value.
    unsafe { LOCAL_ADDRS.get(key) }.is_some()
}

#[inline(always)]
fn is_stream(sa: *mut bpf_sock_addr) -> bool {
    // SAFETY: `type_` is a readable field of the context.
    unsafe { read_volatile(addr_of!((*sa).type_)) == SOCK_STREAM }
}

#[cgroup_sock_addr(connect4)]
pub fn gh_connect4(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    if !is_stream(sa) {
        return PROCEED;
    }
    // SAFETY: user_ip4 and user_port are readable fields of a connect4 context.
    let (ip, port) = unsafe { (read_volatile(addr_of!((*sa).user_ip4)), read_volatile(addr_of!((*sa).user_port))) };
    let orig = SockKey::v4(ip, u16::from_be(port as u16));
    let Some(alias) = protected(orig) else { return PROCEED };
    let Some(cfg) = config() else { return PROCEED };
    if exempt(&ctx, cfg) {
        return PROCEED;
    }
    record(&ctx, orig);
    if alias {
        count(stat::ALIAS_REDIRECTED);
    }
    // SAFETY: user_ip4 and user_port are writable in connect4.
    unsafe {
        write_volatile(addr_of_mut!((*sa).user_ip4), cfg.proxy_ip4);
        write_volatile(addr_of_mut!((*sa).user_port), u32::from(cfg.proxy_port.to_be()));
    }
    PROCEED
}

#[cgroup_sock_addr(connect6)]
pub fn gh_connect6(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    if !is_stream(sa) {
        return PROCEED;
    }
    // SAFETY: user_ip6 (word by word, as the verifier requires) and user_port
    // are readable fields of a connect6 context.
    let (w0, w1, w2, w3, port) = unsafe {
        (
            read_volatile(addr_of!((*sa).user_ip6[0])),
            read_volatile(addr_of!((*sa).user_ip6[1])),
            read_volatile(addr_of!((*sa).user_ip6[2])),
            read_volatile(addr_of!((*sa).user_ip6[3])),
            read_volatile(addr_of!((*sa).user_port)),
        )
    };
    let orig = SockKey { addr: [w0, w1, w2, w3], port: u16::from_be(port as u16), _pad: 0 };
    let Some(alias) = protected(orig) else { return PROCEED };
    let Some(cfg) = config() else { return PROCEED };
    if exempt(&ctx, cfg) {
        return PROCEED;
    }
    record(&ctx, orig);
    if alias {
        count(stat::ALIAS_REDIRECTED);
    }
    let target = if orig.is_v4_mapped() { SockKey::v4(cfg.proxy_ip4, cfg.proxy_port).addr } else { cfg.proxy_ip6 };
    // SAFETY: user_ip6 (word by word) and user_port are writable in connect6.
    unsafe {
        write_volatile(addr_of_mut!((*sa).user_ip6[0]), target[0]);
        write_volatile(addr_of_mut!((*sa).user_ip6[1]), target[1]);
        write_volatile(addr_of_mut!((*sa).user_ip6[2]), target[2]);
        write_volatile(addr_of_mut!((*sa).user_ip6[3]), target[3]);
        write_volatile(addr_of_mut!((*sa).user_port), u32::from(cfg.proxy_port.to_be()));
    }
    PROCEED
}

/// The original destination of this socket, if connect4/6 redirected it.
#[inline(always)]
fn orig_dst(ctx: &SockAddrContext) -> Option<SockKey> {
    // SAFETY: the helper takes the program's own context pointer.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    // SAFETY: read-only lookup of a plain value, copied out at once.
    unsafe { ORIG_DST.get(cookie) }.copied()
}

#[cgroup_sock_addr(getpeername4)]
pub fn gh_getpeername4(ctx: SockAddrContext) -> i32 {
    if let Some(orig) = orig_dst(&ctx) {
        let sa = ctx.sock_addr;
        // SAFETY: user_ip4 and user_port are writable in getpeername4.
        unsafe {
            write_volatile(addr_of_mut!((*sa).user_ip4), orig.addr[3]);
            write_volatile(addr_of_mut!((*sa).user_port), u32::from(orig.port.to_be()));
        }
        count(stat::PEERNAME_RESTORED);
    }
    PROCEED
}

#[cgroup_sock_addr(getpeername6)]
pub fn gh_getpeername6(ctx: SockAddrContext) -> i32 {
    if let Some(orig) = orig_dst(&ctx) {
        let sa = ctx.sock_addr;
        // SAFETY: user_ip6 (word by word) and user_port are writable in getpeername6.
        unsafe {
            write_volatile(addr_of_mut!((*sa).user_ip6[0]), orig.addr[0]);
            write_volatile(addr_of_mut!((*sa).user_ip6[1]), orig.addr[1]);
            write_volatile(addr_of_mut!((*sa).user_ip6[2]), orig.addr[2]);
            write_volatile(addr_of_mut!((*sa).user_ip6[3]), orig.addr[3]);
            write_volatile(addr_of_mut!((*sa).user_port), u32::from(orig.port.to_be()));
        }
        count(stat::PEERNAME_RESTORED);
    }
    PROCEED
}

/// Named `gh_sock_ops`, not `sockops`: a function named like its section
/// symbol collides with it at link time.
#[sock_ops]
pub fn gh_sock_ops(ctx: SockOpsContext) -> u32 {
    let ops = ctx.ops;
    // SAFETY: op is a readable field of the context.
    let op = unsafe { read_volatile(addr_of!((*ops).op)) };
    if op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB {
        return 1;
    }
    // SAFETY: the helper takes the program's own context pointer.
    let cookie = unsafe { bpf_get_socket_cookie(ops.cast()) };
    // SAFETY: read-only lookup of a plain value, copied out at once.
    let Some(mut handoff) = (unsafe { CONNECTING.get(cookie) }).copied() else {
        return 1;
    };
    // SAFETY: helper without arguments.
    handoff.established_ns = unsafe { bpf_ktime_get_ns() };
    // Read every field before branching: choosing between two context fields
    // in a branch compiles into a load at a computed offset, which the verifier
    // rejects ("dereference of modified ctx ptr").
    // SAFETY: all of these are readable fields of a sock_ops context.
    let (family, ip4, a0, a1, a2, a3, port) = unsafe {
        (
            read_volatile(addr_of!((*ops).family)),
            read_volatile(addr_of!((*ops).local_ip4)),
            read_volatile(addr_of!((*ops).local_ip6[0])),
            read_volatile(addr_of!((*ops).local_ip6[1])),
            read_volatile(addr_of!((*ops).local_ip6[2])),
            read_volatile(addr_of!((*ops).local_ip6[3])),
            read_volatile(addr_of!((*ops).local_port)),
        )
    };
    // local_port is in host byte order in sock_ops.
    let port = port as u16;
    let client = match family {
        AF_INET => SockKey::v4(ip4, port),
        AF_INET6 => SockKey { addr: [a0, a1, a2, a3], port, _pad: 0 },
        _ => return 1,
    };
    let _ = HANDOFF.insert(client, handoff, 0);
    let _ = CONNECTING.remove(cookie);
    count(stat::ESTABLISHED);
    1
}

/// Host builds (`cargo clippy --workspace`) only type-check the programs.
#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
