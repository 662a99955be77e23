//! Which addresses are this host's own, the same way the kernel programs see
//! it: a backend on this host is reachable through every one of them.
//!
//! Local means: the unspecified address (`0.0.0.0`, `::`, `::ffff:0.0.0.0`;
//! the kernel connects it to loopback or to the socket's bound address),
//! 127/8, `::1`, their IPv4-mapped forms, and the addresses of the host's
//! interfaces (read with getifaddrs; the agent refreshes them every few
//! seconds).

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// The host's interface addresses, loopback and unspecified excluded (those
/// are local by rule, in the kernel programs as here).
pub fn interface_addrs() -> BTreeSet<IpAddr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else { return BTreeSet::new() };
    addrs
        .filter_map(|a| a.address)
        .filter_map(|s| {
            if let Some(v4) = s.as_sockaddr_in() {
                Some(IpAddr::V4(v4.ip()))
            } else {
                s.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
            }
        })
        .filter(|ip| !by_rule(*ip))
        .collect()
}

/// The IPv4 address behind an IPv4-mapped IPv6 one; anything else as is.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 @ IpAddr::V4(_) => v4,
    }
}

/// Local whatever the interfaces: unspecified or loopback.
fn by_rule(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(v4) => v4 == Ipv4Addr::UNSPECIFIED || v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_unspecified() || v6.is_loopback(),
    }
}

/// Whether `ip` reaches this host.
pub fn is_local(ip: IpAddr, interfaces: &BTreeSet<IpAddr>) -> bool {
    let ip = canonical(ip);
    by_rule(ip) || interfaces.contains(&ip)
}

/// The protected addresses that are on this host: their ports are guarded on
/// every local address.
pub fn local_ports<'a>(
    protected: impl IntoIterator<Item = &'a SocketAddr>,
    interfaces: &BTreeSet<IpAddr>,
) -> BTreeSet<u16> {
    protected.into_iter().filter(|a| is_local(a.ip(), interfaces)).map(SocketAddr::port).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn unspecified_loopback_and_interfaces_are_local() {
        let ifs: BTreeSet<IpAddr> = [ip("192.0.2.1"), ip("2001:db8::1")].into();
        for l in ["0.0.0.0", "::", "::ffff:0.0.0.0", "127.0.0.1", "127.10.3.4", "::1", "::ffff:127.9.9.9", "192.0.2.1"]
        {
            assert!(is_local(ip(l), &ifs), "{l}");
        }
        assert!(is_local(ip("::ffff:192.0.2.1"), &ifs));
        assert!(is_local(ip("2001:db8::1"), &ifs));
        for r in ["192.0.2.2", "198.51.100.7", "2001:db8::2", "::2", "0.0.0.1"] {
            assert!(!is_local(ip(r), &ifs), "{r}");
        }
    }

    #[test]
    fn only_local_backends_reserve_their_port() {
        let ifs: BTreeSet<IpAddr> = [ip("192.0.2.1")].into();
        let protected: Vec<SocketAddr> = ["127.10.0.1:5432", "192.0.2.1:22", "198.51.100.7:3306", "[::1]:8080"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(local_ports(&protected, &ifs), [22, 5432, 8080].into());
    }

    #[test]
    fn this_host_has_interface_addresses_without_loopback() {
        let ifs = interface_addrs();
        assert!(ifs.iter().all(|a| !a.is_loopback() && !a.is_unspecified()), "{ifs:?}");
    }
}
