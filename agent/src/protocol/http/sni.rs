//! Several `tls = "terminate"` HTTP backends on one address: the server
//! name a client asks for in its TLS ClientHello (SNI) picks the backend,
//! and with it the policy, credentials and certificate. The ClientHello is
//! read with `peek` (sans-IO parse of the bytes, nothing consumed), so the
//! session then goes on as for a backend with an address of its own. A
//! name none of them serves, or none at all, is refused with a TLS alert
//! (`unrecognized_name`) and recorded as a refused session.

use std::time::Duration;

use crate::policy::{Backend, Policy};

/// A ClientHello fits one TLS record (at most 16 KiB of payload).
const MAX_RECORD: usize = 16 * 1024;
/// How long a client may take to send its ClientHello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a ClientHello cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SniError {
    #[error("the client did not start a TLS handshake")]
    NotTls,
    #[error("the client's TLS ClientHello is malformed ({0})")]
    Malformed(&'static str),
}

/// Reads the server name from the start of a TLS connection: `Ok(None)`
/// while more bytes are needed, `Ok(Some(None))` for a ClientHello without
/// a host name.
pub fn server_name(buf: &[u8]) -> Result<Option<Option<String>>, SniError> {
    let Some(&[kind, _, _, hi, lo]) = buf.get(..5) else {
        return match buf.first() {
            Some(&b) if b != 0x16 => Err(SniError::NotTls),
            _ => Ok(None),
        };
    };
    if kind != 0x16 {
        return Err(SniError::NotTls);
    }
    let len = usize::from(u16::from_be_bytes([hi, lo]));
    if len > MAX_RECORD {
        return Err(SniError::Malformed("record too long"));
    }
    let Some(record) = buf.get(5..5 + len) else { return Ok(None) };
    let mut r = Reader(record);
    if r.u8("handshake type")? != 0x01 {
        return Err(SniError::Malformed("not a ClientHello"));
    }
    let hello_len = r.u24("handshake length")?;
    let mut h = Reader(r.take(hello_len, "ClientHello spans records")?);
    h.take(2 + 32, "version and random")?;
    let n = usize::from(h.u8("session id")?);
    h.take(n, "session id")?;
    let n = h.u16("cipher suites")?;
    h.take(n, "cipher suites")?;
    let n = usize::from(h.u8("compression")?);
    h.take(n, "compression")?;
    if h.0.is_empty() {
        return Ok(Some(None));
    }
    let n = h.u16("extensions")?;
    let mut ext = Reader(h.take(n, "extensions")?);
    while !ext.0.is_empty() {
        let kind = ext.u16("extension type")?;
        let n = ext.u16("extension length")?;
        let mut data = Reader(ext.take(n, "extension")?);
        if kind != 0 {
            continue;
        }
        let n = data.u16("server name list")?;
        let mut list = Reader(data.take(n, "server name list")?);
        while !list.0.is_empty() {
            let name_type = list.u8("name type")?;
            let n = list.u16("name length")?;
            let name = list.take(n, "name")?;
            if name_type == 0 {
                let name = std::str::from_utf8(name).map_err(|_| SniError::Malformed("server name not ASCII"))?;
                if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.') {
                    return Err(SniError::Malformed("server name not a host name"));
                }
                return Ok(Some(Some(name.to_ascii_lowercase())));
            }
        }
    }
    Ok(Some(None))
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], SniError> {
        let (head, rest) = self.0.split_at_checked(n).ok_or(SniError::Malformed(what))?;
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, SniError> {
        Ok(self.take(1, what)?.first().copied().unwrap_or_default())
    }

    fn u16(&mut self, what: &'static str) -> Result<usize, SniError> {
        let &[a, b] = self.take(2, what)? else { return Err(SniError::Malformed(what)) };
        Ok(usize::from(u16::from_be_bytes([a, b])))
    }

    fn u24(&mut self, what: &'static str) -> Result<usize, SniError> {
        let &[a, b, c] = self.take(3, what)? else { return Err(SniError::Malformed(what)) };
        Ok((usize::from(a) << 16) | (usize::from(b) << 8) | usize::from(c))
    }
}

/// The backend a TLS client at a shared address asked for. `Err`: why it
/// is refused (a fatal `unrecognized_name` alert has been sent).
/// `before_wait` runs once, just before the client is waited on (only when
/// the address is shared: otherwise `b` is the answer at once).
pub async fn pick<'p>(
    policy: &'p Policy,
    b: &'p Backend,
    client: &tokio::net::TcpStream,
    before_wait: impl FnOnce(),
) -> Result<&'p Backend, String> {
    let group = crate::policy::http::sharing(policy, b);
    if group.len() < 2 {
        return Ok(b);
    }
    before_wait();
    let names = || {
        group
            .iter()
            .map(|g| format!("{} ({})", g.name, g.http.as_ref().map(|h| h.server_names.join(", ")).unwrap_or_default()))
            .collect::<Vec<_>>()
            .join("; ")
    };
    let name = match tokio::time::timeout(HELLO_TIMEOUT, peek_name(client)).await {
        Ok(Ok(name)) => name,
        Ok(Err(e)) => return Err(refuse(client, &format!("{e}: backends here are told apart by TLS server name"))),
        Err(_) => return Err(refuse(client, "no TLS ClientHello in time")),
    };
    let Some(name) = name else {
        return Err(refuse(
            client,
            &format!("the client sent no TLS server name (SNI); it must name one of {}", names()),
        ));
    };
    let found = group
        .iter()
        .copied()
        .find(|g| g.http.as_ref().is_some_and(|h| h.server_names.iter().any(|n| n.eq_ignore_ascii_case(&name))));
    found.ok_or_else(|| refuse(client, &format!("TLS server name {name:?} is none of the backends here: {}", names())))
}

async fn peek_name(client: &tokio::net::TcpStream) -> Result<Option<String>, SniError> {
    let mut buf = vec![0u8; 5 + MAX_RECORD];
    let mut last = 0;
    loop {
        let n = client.peek(&mut buf).await.map_err(|_| SniError::NotTls)?;
        if n == 0 {
            return Err(SniError::NotTls);
        }
        if let Some(name) = server_name(buf.get(..n).unwrap_or_default())? {
            return Ok(name);
        }
        if n == last {
            // `peek` returns what is already there at once: wait for more.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        last = n;
    }
}

/// Sends a fatal `unrecognized_name` alert (best effort) and returns `why`.
fn refuse(client: &tokio::net::TcpStream, why: &str) -> String {
    const ALERT: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 112];
    let _ = client.try_write(&ALERT);
    why.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello as rustls sends it, for `name`.
    fn hello(name: Option<&str>) -> Vec<u8> {
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let server = match name {
            Some(n) => rustls::pki_types::ServerName::try_from(n.to_owned()).unwrap(),
            None => rustls::pki_types::ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()),
        };
        let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(config), server).unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    #[test]
    fn the_server_name_is_read_from_a_real_client_hello() {
        let h = hello(Some("Orders.Test"));
        assert_eq!(server_name(&h), Ok(Some(Some("orders.test".into()))));
        // Every prefix asks for more, none misreads.
        for i in 0..h.len() {
            assert_eq!(server_name(&h[..i]), Ok(None), "prefix {i}");
        }
        assert_eq!(server_name(&hello(None)), Ok(Some(None)), "an IP address is sent without SNI");
    }

    #[test]
    fn what_is_not_a_client_hello_is_refused() {
        assert_eq!(server_name(b"GET / HTTP/1.1\r\n"), Err(SniError::NotTls));
        let mut h = hello(Some("a.test"));
        // A record length that promises more than the ClientHello holds is fine
        // (more bytes awaited); an inner length past the record is not.
        h[5 + 1] = 0xff;
        assert!(matches!(server_name(&h), Err(SniError::Malformed(_))));
        assert_eq!(server_name(&[0x16, 3, 1, 0xff, 0xff]), Err(SniError::Malformed("record too long")));
    }
}
