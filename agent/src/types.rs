//! Newtypes for the values that cross module boundaries and carry security
//! meaning, so a backend name is never confused with a user name.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use agent_common::SockKey;
use serde::{Deserialize, Serialize};

macro_rules! string_newtype {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        /// Backed by `Arc<str>`: decisions and sessions clone these on hot paths.
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(std::sync::Arc<str>);

        impl $name {
            pub fn new(s: impl AsRef<str>) -> Self {
                Self(std::sync::Arc::from(s.as_ref()))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

string_newtype!(
    /// The operator-given name of a protected backend.
    BackendName
);
string_newtype!(
    /// The name of a policy rule, as written in the policy file.
    RuleName
);
string_newtype!(
    /// A Unix user name (resolved through NSS).
    UserName
);
string_newtype!(
    /// A Unix (or, after login, OIDC) group name.
    GroupName
);
string_newtype!(
    /// A role on a backend that Gatehouse logs in as.
    DbRole
);

/// A Unix user id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Uid(pub u32);

impl fmt::Display for Uid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A session's identifier: a UUIDv7, so ids sort by start time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SessionId(pub uuid::Uuid);

impl SessionId {
    pub fn new() -> Self {
        Self(uuid::Uuid::now_v7())
    }
}

impl Default for SessionId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The destination a client dialed, before the kernel redirected it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct OrigDst(pub SocketAddr);

impl fmt::Display for OrigDst {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The client's end of an accepted connection, as `accept()` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ClientAddr(pub SocketAddr);

impl fmt::Display for ClientAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The key the eBPF maps use for a socket address: IPv4 as IPv4-mapped IPv6.
pub fn sock_key(addr: SocketAddr) -> SockKey {
    let v6 = match addr.ip() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    // The kernel stores the words in network order; reading each group of
    // four bytes as native-endian gives the same in-memory representation.
    let mut words = [0u32; 4];
    for (w, chunk) in words.iter_mut().zip(v6.octets().chunks_exact(4)) {
        let mut b = [0u8; 4];
        b.copy_from_slice(chunk);
        *w = u32::from_ne_bytes(b);
    }
    SockKey { addr: words, port: addr.port(), _pad: 0 }
}

/// The socket address of a map key; IPv4-mapped keys become IPv4 addresses.
pub fn key_addr(key: &SockKey) -> SocketAddr {
    let mut o = [0u8; 16];
    for (chunk, word) in o.chunks_exact_mut(4).zip(key.addr) {
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    let v6 = Ipv6Addr::from(o);
    let ip = match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    };
    SocketAddr::new(ip, key.port)
}

/// The network-order word the kernel uses for an IPv4 address.
pub fn ip4_word(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sock_keys_round_trip_and_map_v4() {
        for s in ["127.10.0.1:5432", "[::1]:22", "[fd00::5]:80"] {
            let addr: SocketAddr = s.parse().unwrap();
            assert_eq!(key_addr(&sock_key(addr)), addr, "{s}");
        }
        let v4: SocketAddr = "127.10.0.1:5432".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:127.10.0.1]:5432".parse().unwrap();
        assert_eq!(sock_key(v4), sock_key(mapped));
        assert!(sock_key(v4).is_v4_mapped());
        // Same words the eBPF side builds from user_ip4.
        assert_eq!(sock_key(v4), SockKey::v4(ip4_word(Ipv4Addr::new(127, 10, 0, 1)), 5432));
    }
}
