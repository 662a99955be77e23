//! Purpose-built impostor PostgreSQL servers, started by a test on a
//! 127.x address: they answer the TLS request their own way (refuse it, or
//! present a certificate of their choosing) and then ask for the password
//! in a way that would get it out of a careless client (cleartext, md5,
//! AuthenticationOk before SCRAM is finished, no authentication at all).
//! Everything they receive is kept, so a test can check that no password
//! (nor the user name, when TLS should have failed first) reached them.
#![expect(clippy::expect_used, reason = "a test server reports failures by panicking with context")]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How the impostor answers an SSLRequest.
#[derive(Debug, Clone)]
pub enum Tls {
    /// 'N': "I do not do TLS" (a downgrade).
    Refuse,
    /// 'S', then a handshake with this certificate chain and key (PEM files).
    Accept { cert: PathBuf, key: PathBuf },
}

/// How the impostor asks for the password once the startup arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// AuthenticationCleartextPassword.
    Cleartext,
    /// AuthenticationMD5Password.
    Md5,
    /// SASL SCRAM-SHA-256 offered, then AuthenticationOk right after the client's first message.
    PrematureOk,
    /// SCRAM through the server-first message, then AuthenticationOk without the server's proof.
    SkipFinal,
    /// AuthenticationOk at once, no authentication asked.
    Trust,
}

/// What the impostor saw.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    pub connections: u32,
    pub ssl_requests: u32,
    pub tls_handshakes: u32,
    pub tls_errors: Vec<String>,
    pub startups: u32,
    /// PasswordMessage / SASL responses received ('p').
    pub password_messages: u32,
    /// Every byte received after the TLS decision (decrypted when TLS was on).
    pub bytes: Vec<u8>,
}

impl Seen {
    pub fn received(&self, needle: &str) -> bool {
        self.bytes.windows(needle.len().max(1)).any(|w| w == needle.as_bytes())
    }
}

pub struct Hostile {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
}

trait Conn: Read + Write + Send {}
impl<T: Read + Write + Send> Conn for T {}

fn lock(m: &Mutex<Seen>) -> std::sync::MutexGuard<'_, Seen> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Hostile {
    pub fn start(bind: &str, tls: Tls, auth: Auth) -> Self {
        let l = TcpListener::bind(bind).unwrap_or_else(|e| panic!("bind impostor {bind}: {e}"));
        l.set_nonblocking(true).expect("nonblocking");
        let addr = l.local_addr().expect("local_addr");
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let config = match &tls {
            Tls::Accept { cert, key } => Some(server_config(cert, key)),
            Tls::Refuse => None,
        };
        let (s, flag) = (seen.clone(), stop.clone());
        std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((c, _)) => {
                        let (s, config) = (s.clone(), config.clone());
                        std::thread::spawn(move || {
                            lock(&s).connections += 1;
                            serve(c, config, auth, &s);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Self { addr, seen, stop }
    }

    pub fn seen(&self) -> Seen {
        lock(&self.seen).clone()
    }
}

impl Drop for Hostile {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn server_config(cert: &PathBuf, key: &PathBuf) -> Arc<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(cert).expect("cert").collect::<Result<_, _>>().expect("cert pem");
    let key = PrivateKeyDer::from_pem_file(key).expect("key pem");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("server config"),
    )
}

/// Reads one length-prefixed startup-phase packet (no tag); returns its body.
fn read_untagged(c: &mut dyn Conn, seen: &Mutex<Seen>) -> Option<Vec<u8>> {
    let mut len = [0u8; 4];
    c.read_exact(&mut len).ok()?;
    let n = usize::try_from(u32::from_be_bytes(len)).ok()?.checked_sub(4)?;
    if n > 1 << 20 {
        return None;
    }
    let mut body = vec![0u8; n];
    c.read_exact(&mut body).ok()?;
    let mut s = lock(seen);
    s.bytes.extend_from_slice(&len);
    s.bytes.extend_from_slice(&body);
    Some(body)
}

/// Reads one tagged message; returns (tag, body).
fn read_msg(c: &mut dyn Conn, seen: &Mutex<Seen>) -> Option<(u8, Vec<u8>)> {
    let mut tag = [0u8; 1];
    c.read_exact(&mut tag).ok()?;
    lock(seen).bytes.push(tag[0]);
    if tag[0] == b'p' {
        lock(seen).password_messages += 1;
    }
    read_untagged(c, seen).map(|b| (tag[0], b))
}

fn auth_msg(code: i32, extra: &[u8]) -> Vec<u8> {
    let mut m = vec![b'R'];
    m.extend_from_slice(&u32::try_from(8 + extra.len()).expect("len").to_be_bytes());
    m.extend_from_slice(&code.to_be_bytes());
    m.extend_from_slice(extra);
    m
}

fn ok_and_ready() -> Vec<u8> {
    let mut m = auth_msg(0, &[]);
    m.extend_from_slice(b"Z\0\0\0\x05I");
    m
}

fn serve(tcp: TcpStream, config: Option<Arc<rustls::ServerConfig>>, auth: Auth, seen: &Mutex<Seen>) {
    let _ = tcp.set_nonblocking(false);
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(10)));
    let mut tcp = tcp;
    // The first packet: an SSLRequest or the startup itself.
    let mut head = [0u8; 8];
    if tcp.read_exact(&mut head).is_err() {
        return;
    }
    let is_ssl = head == [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
    let mut conn: Box<dyn Conn> = if is_ssl {
        lock(seen).ssl_requests += 1;
        match config {
            None => {
                let _ = tcp.write_all(b"N");
                Box::new(tcp)
            }
            Some(cfg) => {
                let _ = tcp.write_all(b"S");
                let Ok(server) = rustls::ServerConnection::new(cfg) else { return };
                let mut tls = rustls::StreamOwned::new(server, tcp);
                // Drive the handshake; a client that rejects the certificate ends it here.
                while tls.conn.is_handshaking() {
                    if let Err(e) = tls.conn.complete_io(&mut tls.sock) {
                        lock(seen).tls_errors.push(e.to_string());
                        return;
                    }
                }
                lock(seen).tls_handshakes += 1;
                Box::new(tls)
            }
        }
    } else {
        // No SSLRequest: these 8 bytes began the startup packet.
        let len = usize::try_from(u32::from_be_bytes([head[0], head[1], head[2], head[3]])).unwrap_or(0);
        let mut rest = vec![0u8; len.saturating_sub(8).min(1 << 20)];
        if tcp.read_exact(&mut rest).is_err() {
            return;
        }
        let mut s = lock(seen);
        s.startups += 1;
        s.bytes.extend_from_slice(&head);
        s.bytes.extend_from_slice(&rest);
        drop(s);
        return impostor(Box::new(tcp), auth, seen);
    };
    if read_untagged(conn.as_mut(), seen).is_none() {
        return;
    }
    lock(seen).startups += 1;
    impostor(conn, auth, seen);
}

fn impostor(mut c: Box<dyn Conn>, auth: Auth, seen: &Mutex<Seen>) {
    let c = c.as_mut();
    let send = |c: &mut dyn Conn, b: &[u8]| {
        let _ = c.write_all(b);
        let _ = c.flush();
    };
    match auth {
        Auth::Cleartext => send(c, &auth_msg(3, &[])),
        Auth::Md5 => send(c, &auth_msg(5, b"salt")),
        Auth::Trust => send(c, &ok_and_ready()),
        Auth::PrematureOk | Auth::SkipFinal => {
            send(c, &auth_msg(10, b"SCRAM-SHA-256\0\0"));
            let Some((_, first)) = read_msg(c, seen) else { return };
            if auth == Auth::PrematureOk {
                send(c, &ok_and_ready());
            } else {
                // The client's nonce, from "n,,n=,r=<nonce>": after the one
                // ",r=" (a nonce has no comma, but may hold "r=": its
                // characters are any printable ASCII but ',').
                let text = String::from_utf8_lossy(&first);
                let nonce = text.split_once(",r=").map_or("", |(_, n)| n).trim_end_matches('\0').to_owned();
                let server_first = format!("r={nonce}impostor,s=c2FsdHNhbHRzYWx0c2FsdA==,i=4096");
                send(c, &auth_msg(11, server_first.as_bytes()));
                if read_msg(c, seen).is_none() {
                    return;
                }
                // No AuthenticationSASLFinal: the impostor cannot prove it knows the password.
                send(c, &ok_and_ready());
            }
        }
    }
    // Keep whatever the client sends next (a password, a query), until it leaves.
    while read_msg(c, seen).is_some() {}
}
