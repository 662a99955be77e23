//! A `direct-tcpip` destination read as the host will dial it.
//!
//! The host's sshd hands the client's host string to `getaddrinfo`, which
//! reads IPv4 addresses the way `inet_aton` does: `127.1`, `0x7f.0.0.1`,
//! `0177.0.0.1` and `2130706433` are all 127.0.0.1. An IPv6 address mapped
//! from IPv4 (`::ffff:127.0.0.1`), or under NAT64's well-known prefix
//! (`64:ff9b::127.0.0.1`), reaches the IPv4 one. Names are resolved by
//! the host, without case and with or without a final dot. So a `forward_to`
//! glob is matched against the destination's one canonical spelling, not the
//! client's text, and what Gatehouse forwards to the host is that spelling:
//! what was decided is what gets dialed.
//!
//! A pattern whose host part is an address (digits, dots, `*`, `?`; or an
//! IPv6 address in brackets) matches addresses only, a pattern with letters
//! matches names only: `10.9.0.*:443` does not match `10.9.0.7.example.com`,
//! a name whose DNS answer is anywhere. A host that no resolver reads as one
//! host (a space, a `%scope`, a name whose last label is all digits, which a
//! resolver may read as an address) is refused.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::policy::glob_exact;

/// Where a forwarded connection goes, spelled one way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dest {
    V4(Ipv4Addr),
    V6(Ipv6Addr),
    /// A host name: lower case, without a final dot.
    Name(String),
    /// Not one host a resolver reads the same way: refused, with why.
    Unreadable(String),
}

impl Dest {
    /// Reads `host` as the host's resolver will.
    pub fn read(host: &str) -> Self {
        if host.is_empty() {
            return Self::Unreadable("an empty host".into());
        }
        if let Some(a) = inet_aton(host) {
            return Self::V4(a);
        }
        let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        if bare.contains(':') {
            if bare.contains('%') {
                return Self::Unreadable(format!("{host:?} names an interface (a scoped address)"));
            }
            return match bare.parse::<Ipv6Addr>() {
                Ok(a) => v4_inside(a).map_or(Self::V6(a), Self::V4),
                Err(_) => Self::Unreadable(format!("{host:?} is not an IPv6 address")),
            };
        }
        if bare.len() != host.len() {
            return Self::Unreadable(format!("{host:?} is not an address in brackets"));
        }
        let name = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
        let labels_ok = name.len() <= 253
            && name.split('.').all(|l| {
                !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        if !labels_ok {
            return Self::Unreadable(format!("{host:?} is not a host name"));
        }
        if name.rsplit('.').next().is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit())) {
            return Self::Unreadable(format!(
                "{host:?} ends in a number but is not an address: a resolver may read it as one"
            ));
        }
        Self::Name(name)
    }

    /// What Gatehouse forwards to the host (no brackets around IPv6).
    pub fn dial(&self) -> Option<String> {
        match self {
            Self::V4(a) => Some(a.to_string()),
            Self::V6(a) => Some(a.to_string()),
            Self::Name(n) => Some(n.clone()),
            Self::Unreadable(_) => None,
        }
    }

    /// `host:port` as patterns see it (`[::1]:22` for IPv6).
    pub fn with_port(&self, port: u32) -> String {
        match self {
            Self::V6(a) => format!("[{a}]:{port}"),
            Self::Unreadable(_) => format!("?:{port}"),
            other => format!("{}:{port}", other.dial().unwrap_or_default()),
        }
    }
}

/// What a pattern's host part can match.
#[derive(Debug, PartialEq, Eq)]
enum Class {
    Any,
    V4,
    V6,
    Name,
}

fn class(host: &str) -> Class {
    if host.bytes().all(|b| b == b'*' || b == b'?') {
        Class::Any
    } else if host.starts_with('[') {
        Class::V6
    } else if host.bytes().all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'*' | b'?')) {
        Class::V4
    } else {
        Class::Name
    }
}

/// Whether a `forward_to` pattern (as [`normalize`] left it) matches `dest` at `port`.
pub fn matches(pattern: &str, dest: &Dest, port: u32) -> bool {
    let Some((host, port_glob)) = pattern.rsplit_once(':') else { return false };
    if !glob_exact(port_glob.as_bytes(), port.to_string().as_bytes()) {
        return false;
    }
    let fits = match (class(host), dest) {
        (_, Dest::Unreadable(_)) => false,
        (Class::Any, _) => true,
        (Class::V4, Dest::V4(_)) | (Class::Name, Dest::Name(_)) => true,
        (Class::V6, Dest::V6(_)) => true,
        _ => false,
    };
    let text = match dest {
        Dest::V6(a) => format!("[{a}]"),
        other => other.dial().unwrap_or_default(),
    };
    fits && glob_exact(host.as_bytes(), text.as_bytes())
}

/// A `forward_to` entry as the policy file wrote it, in the spelling
/// [`matches`] compares: lower case, a name without its final dot, an
/// address written one way. `Err` says what is wrong with it.
pub fn normalize(pattern: &str) -> Result<String, String> {
    let Some((host, port)) = pattern.rsplit_once(':').filter(|(h, p)| !h.is_empty() && !p.is_empty()) else {
        return Err(format!("forward_to lists host:port globs, not `{pattern}`"));
    };
    if !port.bytes().all(|b| b.is_ascii_digit() || b == b'*' || b == b'?') {
        return Err(format!("forward_to `{pattern}`: the port is a number or a glob of digits"));
    }
    let host = host.to_ascii_lowercase();
    let literal = !host.contains(['*', '?']);
    let host = match class(&host) {
        Class::Any => host,
        Class::V6 => {
            let inner = host.strip_prefix('[').and_then(|h| h.strip_suffix(']'));
            match inner {
                Some(a) if literal => match a.parse::<Ipv6Addr>() {
                    Ok(a) => v4_inside(a).map_or(format!("[{a}]"), |v4| v4.to_string()),
                    Err(_) => return Err(format!("forward_to `{pattern}`: not an IPv6 address")),
                },
                Some(a) if a.bytes().all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'*' | b'?')) => host,
                _ => return Err(format!("forward_to `{pattern}`: an IPv6 address goes in brackets, `[::1]:22`")),
            }
        }
        Class::V4 if literal => match host.parse::<Ipv4Addr>() {
            Ok(a) => a.to_string(),
            Err(_) => {
                return Err(format!("forward_to `{pattern}`: write an IPv4 address as four decimal numbers"));
            }
        },
        Class::V4 => host,
        Class::Name => {
            let name = host.strip_suffix('.').unwrap_or(&host);
            if !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'*' | b'?')) {
                return Err(format!("forward_to `{pattern}`: not a host name, an address or a glob of one"));
            }
            name.to_owned()
        }
    };
    Ok(format!("{host}:{port}"))
}

/// The IPv4 address an IPv6 one reaches: mapped (`::ffff:a.b.c.d`, the
/// kernel's own) or through NAT64's well-known prefix (`64:ff9b::a.b.c.d`,
/// where the network has a NAT64 gateway). Gatehouse then dials the IPv4
/// address itself. Other NAT64 prefixes a network may choose are not known.
fn v4_inside(a: Ipv6Addr) -> Option<Ipv4Addr> {
    a.to_ipv4_mapped().or_else(|| match a.segments() {
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => Some(Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo))),
        _ => None,
    })
}

/// IPv4 as glibc's `inet_aton` reads it (exactly, nothing after): one to
/// four parts, each decimal, octal (`0…`) or hex (`0x…`); the last part
/// fills the bytes the others leave.
fn inet_aton(s: &str) -> Option<Ipv4Addr> {
    let parts: Vec<&str> = s.split('.').collect();
    if parts.len() > 4 {
        return None;
    }
    let mut values = Vec::with_capacity(4);
    for p in &parts {
        if !p.bytes().next().is_some_and(|b| b.is_ascii_digit()) {
            return None;
        }
        let (digits, radix) = match (p.strip_prefix("0x").or_else(|| p.strip_prefix("0X")), p.strip_prefix('0')) {
            (Some(h), _) => (h, 16),
            (None, Some(o)) if !o.is_empty() => (o, 8),
            _ => (*p, 10),
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let v = u32::from_str_radix(digits, radix).ok()?;
        values.push(v);
    }
    let (last, head) = values.split_last()?;
    if head.iter().any(|v| *v > 0xff) {
        return None;
    }
    let room = 32 - 8 * u32::try_from(head.len()).ok()?;
    if room < 32 && *last >= 1u32 << room {
        return None;
    }
    let high = head.iter().zip([24u32, 16, 8]).fold(0u32, |n, (v, shift)| n | (v << shift));
    Some(Ipv4Addr::from(high | last))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(s: &str) -> Dest {
        Dest::V4(s.parse().unwrap())
    }

    /// Every spelling the host's resolver reads as 127.10.0.9 is 127.10.0.9.
    #[test]
    fn addresses_are_read_as_inet_aton_reads_them() {
        for s in [
            "127.10.0.9",
            "2131361801",
            "0x7f0a0009",
            "127.10.9",
            "127.655369",
            "0177.012.0.011",
            "0x7f.0xa.0.0x9",
            "0X7F.10.0.9",
            "::ffff:127.10.0.9",
            "[::ffff:127.10.0.9]",
            "[::ffff:7f0a:9]",
            "64:ff9b::127.10.0.9",
            "[64:ff9b::7f0a:9]",
        ] {
            assert_eq!(Dest::read(s), v4("127.10.0.9"), "{s}");
        }
        assert_eq!(Dest::read("0"), v4("0.0.0.0"));
        assert_eq!(Dest::read("01.1"), v4("1.0.0.1"));
        assert_eq!(Dest::read("0XA.1"), v4("10.0.0.1"));
        assert_eq!(Dest::read("[::1]"), Dest::V6(Ipv6Addr::LOCALHOST));
        assert_eq!(Dest::read("::1").with_port(22), "[::1]:22");
        for s in [
            "256.0.0.1",
            "1.2.3.4.5",
            "08.1.1.1",
            "0x1g.1.1.1",
            "127.0.0.1.",
            "1..2",
            "",
            "fe80::1%eth0",
            "[127.0.0.1]",
            "db internal",
            "db;rm",
            "0x.1",
            "1.+2",
            "+1",
            "127.0.0.1 ",
            "4294967296",
            "a.b.123",
        ] {
            assert!(matches!(Dest::read(s), Dest::Unreadable(_)), "{s}: {:?}", Dest::read(s));
        }
        assert_eq!(Dest::read("DB.Internal."), Dest::Name("db.internal".into()));
        assert_eq!(Dest::read("1.cafe"), Dest::Name("1.cafe".into()));
    }

    #[test]
    fn patterns_match_the_canonical_destination_of_their_class() {
        let p = |s: &str| normalize(s).unwrap();
        let vault = p("10.1.2.3:*");
        for s in ["10.1.2.3", "0x0a010203", "10.66051", "012.1.2.3", "::ffff:10.1.2.3", "167838211"] {
            assert!(matches(&vault, &Dest::read(s), 22), "{s}");
        }
        // An address glob matches addresses only: a name under it could resolve anywhere.
        let net = p("10.9.0.*:443");
        assert!(matches(&net, &Dest::read("10.9.0.7"), 443));
        assert!(matches(&net, &Dest::read("10.9.7"), 443), "10.9.7 is 10.9.0.7");
        assert!(!matches(&net, &Dest::read("10.9.0.7.example.com"), 443));
        assert!(!matches(&net, &Dest::read("10.9.0.7"), 4430));
        // A name glob matches names only, without case or final dot.
        let names = p("*.Internal.:5432");
        assert_eq!(names, "*.internal:5432");
        assert!(matches(&names, &Dest::read("DB.internal."), 5432));
        assert!(!matches(&names, &Dest::read("10.0.0.5"), 5432));
        assert!(matches(&p("*:22"), &Dest::read("0x7f.1"), 22));
        assert!(!matches(&p("*:22"), &Dest::read("fe80::1%lo"), 22), "unreadable matches nothing");
        let six = p("[0:0::1]:22");
        assert_eq!(six, "[::1]:22");
        assert!(matches(&six, &Dest::read("0::0:1"), 22));
        assert!(!matches(&six, &Dest::read("127.0.0.1"), 22));
        assert_eq!(p("[::ffff:10.1.2.3]:1"), "10.1.2.3:1");
        assert_eq!(p("[64:ff9b::a01:203]:1"), "10.1.2.3:1");
        for bad in ["10.1.2.03:1", "10.1.2:1", "db internal:1", "[zz::1]:1", "db:x", "db", ":1", "::1:22"] {
            assert!(normalize(bad).is_err(), "{bad}");
        }
    }
}
