//! Syslog transport for audit sinks: RFC 5424 messages with octet-counted
//! framing (RFC 6587 §3.4.1), over TCP or over TLS (RFC 5425), the
//! collector's certificate verified like a backend's.
//!
//! Each message: facility authpriv, severity warning for refusals and
//! notice for other decisions, info otherwise; APP-NAME `gatehouse`, MSGID
//! the record kind, structured data `[gatehouse@32473 seq= session= hash=]`
//! (32473 is the documentation enterprise number of RFC 5612: no private
//! one is registered), and the JSON line as MSG, escaped to ASCII so no
//! BOM is needed and no collector mangles it.
//!
//! TCP syslog has no acknowledgements: a collector that stops reading
//! loses what was written to it last. The sink sends the last ten seconds
//! again after a reconnect (see `sink.rs`), so a collector restart loses
//! nothing but yields duplicates; a collector that accepts records and
//! drops them later is out of reach. RELP would give real acknowledgements
//! and is not implemented.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::io::{AsyncWrite, AsyncWriteExt, BufWriter};

use super::SinkError;
use crate::audit::RecordKind;
use crate::audit::chain::Record;

/// TLS to the collector (RFC 5425).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    /// The CA the collector's certificate must chain to (default: the system's trust store).
    pub ca_file: Option<PathBuf>,
    /// The name the certificate must carry.
    pub server_name: String,
}

/// The host part of `host:port` (brackets of an IPv6 literal removed), if
/// a port follows it.
pub fn host_of(address: &str) -> Option<&str> {
    let (host, port) = address.rsplit_once(':')?;
    port.parse::<u16>().ok().filter(|p| *p != 0)?;
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    (!host.is_empty()).then_some(host)
}

/// An open connection to a collector.
pub struct Connection {
    out: BufWriter<Box<dyn AsyncWrite + Send + Unpin>>,
    host: String,
    pid: u32,
}

fn io(what: &str) -> impl Fn(std::io::Error) -> SinkError + '_ {
    move |source| SinkError::Io { what: what.to_owned(), source }
}

impl Connection {
    /// Connects (from a socket carrying the agent's mark, which the
    /// redirect leaves alone) and, with `tls`, completes a verified handshake.
    pub async fn open(address: &str, tls: Option<&Tls>, mark: u32) -> Result<Self, SinkError> {
        let addr = tokio::net::lookup_host(address)
            .await
            .map_err(io(address))?
            .next()
            .ok_or_else(|| SinkError::Io { what: address.into(), source: std::io::Error::other("no address") })?;
        let tcp = crate::proxy::connect_upstream(addr, mark).await.map_err(io(address))?;
        let stream: Box<dyn AsyncWrite + Send + Unpin> = match tls {
            None => Box::new(tcp),
            Some(t) => {
                let config = crate::protocol::postgres::tls::verifying_config(t.ca_file.as_deref())
                    .map_err(|e| SinkError::Config(format!("syslog TLS: {e}")))?;
                let name = rustls_pki_types::ServerName::try_from(t.server_name.clone())
                    .map_err(|_| SinkError::Config(format!("server_name {:?} is not a name", t.server_name)))?;
                let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
                Box::new(connector.connect(name, tcp).await.map_err(io(address))?)
            }
        };
        Ok(Self { out: BufWriter::with_capacity(64 << 10, stream), host: hostname(), pid: std::process::id() })
    }

    /// Queues one message (written out by [`Connection::flush`] or when the buffer fills).
    pub async fn send(&mut self, r: &Record, json: &[u8]) -> Result<(), SinkError> {
        let msg = message(r, json, &self.host, self.pid);
        let mut framed = Vec::with_capacity(msg.len() + 8);
        framed.extend_from_slice(format!("{} ", msg.len()).as_bytes());
        framed.extend_from_slice(&msg);
        self.out.write_all(&framed).await.map_err(io("syslog collector"))
    }

    pub async fn flush(&mut self) -> Result<(), SinkError> {
        self.out.flush().await.map_err(io("syslog collector"))
    }
}

/// This host's name as RFC 5424 allows it (printable ASCII, at most 255), or `-`.
fn hostname() -> String {
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let h = h.trim();
    if h.is_empty() || h.len() > 255 || !h.bytes().all(|b| (33..=126).contains(&b)) { "-".into() } else { h.into() }
}

/// An SD-PARAM value with `"`, `\` and `]` escaped (RFC 5424 §6.3.3).
fn sd_value(v: &str, out: &mut String) {
    for c in v.chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
}

/// JSON with every non-ASCII character written as `\uXXXX` (valid JSON:
/// outside strings JSON is ASCII already).
fn ascii_json(json: &[u8], out: &mut Vec<u8>) {
    match std::str::from_utf8(json) {
        Ok(s) => {
            for c in s.chars() {
                if c.is_ascii() {
                    out.push(c as u8);
                } else {
                    let mut units = [0u16; 2];
                    for u in c.encode_utf16(&mut units) {
                        out.extend_from_slice(format!("\\u{u:04x}").as_bytes());
                    }
                }
            }
        }
        // serde_json only writes UTF-8; keep the bytes if it ever did not.
        Err(_) => out.extend_from_slice(json),
    }
}

/// authpriv (10): warning for refusals, notice for other decisions, info for the rest.
fn priority(r: &Record) -> u8 {
    let body = std::str::from_utf8(&r.body).unwrap_or_default();
    let denied = body.contains("\"decision\":\"deny\"");
    let severity = match r.record_kind() {
        _ if denied => 4,
        Some(RecordKind::Approval | RecordKind::TrailAlert) => 5,
        Some(_) => 6,
        // A kind this build does not know (a newer agent's): judged by its name.
        None if r.kind.contains("refus") => 4,
        None if r.kind.contains("approval") || r.kind.contains("alert") || r.kind.contains("tamper") => 5,
        None => 6,
    };
    10 * 8 + severity
}

/// One RFC 5424 message for a record.
pub fn message(r: &Record, json: &[u8], host: &str, pid: u32) -> Vec<u8> {
    let time = jiff::Timestamp::from_microsecond(r.time_us).map(|t| t.to_string()).unwrap_or_else(|_| "-".into());
    let msgid: String = r.kind.chars().filter(|c| c.is_ascii_graphic()).take(32).collect();
    let msgid = if msgid.is_empty() { "-".into() } else { msgid };
    let mut head =
        format!("<{}>1 {time} {host} gatehouse {pid} {msgid} [gatehouse@32473 seq=\"{}\"", priority(r), r.seq);
    if let Some(s) = &r.session {
        head.push_str(" session=\"");
        sd_value(s, &mut head);
        head.push('"');
    }
    head.push_str(" hash=\"");
    for b in r.hash {
        let _ = write!(head, "{b:02x}");
    }
    head.push_str("\"] ");
    let mut out = head.into_bytes();
    ascii_json(json, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(kind: &str, body: &str) -> Record {
        Record {
            seq: 42,
            time_us: 1_764_633_600_123_456,
            session: Some("019ad9f0-1c2b-7a11-8000-000000000001".into()),
            kind: kind.into(),
            body: body.as_bytes().to_vec(),
            data: None,
            content_hash: [0; 32],
            redacted: false,
            prev_hash: [0; 32],
            hash: [0xab; 32],
        }
    }

    #[test]
    fn messages_follow_rfc5424() {
        let r = record("statement", r#"{"decision":"deny","text":"DROP TABLE café"}"#);
        let json = "{\"text\":\"DROP TABLE caf\u{e9} \u{1f600}\"}".as_bytes();
        let m = String::from_utf8(message(&r, json, "bastion-1", 77)).unwrap_or_default();
        let expect_head = "<84>1 2025-12-02T00:00:00.123456Z bastion-1 gatehouse 77 statement [gatehouse@32473 seq=\"42\" session=\"019ad9f0-1c2b-7a11-8000-000000000001\" hash=\"";
        assert!(m.starts_with(expect_head), "{m}");
        assert!(m.ends_with(r#"] {"text":"DROP TABLE caf\u00e9 \ud83d\ude00"}"#), "{m}");
        assert!(m.is_ascii());
        let quiet = record("session_open", r#"{"decision":"allow"}"#);
        assert!(String::from_utf8_lossy(&message(&quiet, b"{}", "-", 1)).starts_with("<86>1 "));
    }

    #[test]
    fn structured_data_values_are_escaped() {
        let mut out = String::new();
        sd_value(r#"a"b\c]d"#, &mut out);
        assert_eq!(out, r#"a\"b\\c\]d"#);
    }

    #[test]
    fn addresses_have_a_host_and_a_port() {
        assert_eq!(host_of("siem.internal:6514"), Some("siem.internal"));
        assert_eq!(host_of("[::1]:6514"), Some("::1"));
        assert_eq!(host_of("127.10.0.5:514"), Some("127.10.0.5"));
        assert_eq!(host_of("siem.internal"), None);
        assert_eq!(host_of(":514"), None);
        assert_eq!(host_of("siem:0"), None);
    }
}
