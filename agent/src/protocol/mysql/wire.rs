//! MySQL/MariaDB client/server protocol: sans-IO encoders and decoders over
//! `&[u8]` for what the adapter reads or writes itself (packet framing,
//! handshake v10, HandshakeResponse41, OK/ERR/EOF, the auth scrambles).
//! Everything else is forwarded as the bytes it arrived as.
//!
//! Framing is ours (four bytes: a 24-bit length and a sequence id), like the
//! PostgreSQL adapter's: the `mysql_common` crate would bring ~40 crates
//! (decimal, chrono, serde_json…) for what is a few lines here; the scrambles
//! use `ring`, already a dependency.

use ring::digest;

/// A payload of this length continues in the next packet (16 MiB - 1).
pub const MAX_PAYLOAD: usize = 0xff_ffff;

pub const CLIENT_LONG_PASSWORD: u32 = 1;
pub const CLIENT_FOUND_ROWS: u32 = 1 << 1;
pub const CLIENT_LONG_FLAG: u32 = 1 << 2;
pub const CLIENT_CONNECT_WITH_DB: u32 = 1 << 3;
pub const CLIENT_COMPRESS: u32 = 1 << 5;
pub const CLIENT_LOCAL_FILES: u32 = 1 << 7;
pub const CLIENT_PROTOCOL_41: u32 = 1 << 9;
pub const CLIENT_INTERACTIVE: u32 = 1 << 10;
pub const CLIENT_SSL: u32 = 1 << 11;
pub const CLIENT_TRANSACTIONS: u32 = 1 << 13;
pub const CLIENT_SECURE_CONNECTION: u32 = 1 << 15;
pub const CLIENT_MULTI_STATEMENTS: u32 = 1 << 16;
pub const CLIENT_MULTI_RESULTS: u32 = 1 << 17;
pub const CLIENT_PLUGIN_AUTH: u32 = 1 << 19;
pub const CLIENT_CONNECT_ATTRS: u32 = 1 << 20;
pub const CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA: u32 = 1 << 21;
pub const CLIENT_DEPRECATE_EOF: u32 = 1 << 24;

/// What Gatehouse offers a client (and so, at most, asks of the backend).
/// CLIENT_SSL is added to the greeting only when the backend has `client_tls`.
/// Never: compression, LOAD DATA LOCAL, multi-statements, session tracking,
/// query attributes, MariaDB's extended capabilities.
pub const OFFERED: u32 = CLIENT_LONG_PASSWORD
    | CLIENT_FOUND_ROWS
    | CLIENT_LONG_FLAG
    | CLIENT_CONNECT_WITH_DB
    | CLIENT_PROTOCOL_41
    | CLIENT_INTERACTIVE
    | CLIENT_TRANSACTIONS
    | CLIENT_SECURE_CONNECTION
    | CLIENT_MULTI_RESULTS
    | CLIENT_PLUGIN_AUTH
    | CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
    | CLIENT_DEPRECATE_EOF;

/// Server status: another result set follows.
pub const SERVER_MORE_RESULTS_EXISTS: u16 = 0x0008;
pub const SERVER_STATUS_AUTOCOMMIT: u16 = 0x0002;

pub const COM_QUIT: u8 = 0x01;
pub const COM_INIT_DB: u8 = 0x02;
pub const COM_QUERY: u8 = 0x03;
pub const COM_FIELD_LIST: u8 = 0x04;
pub const COM_PING: u8 = 0x0e;
pub const COM_STMT_PREPARE: u8 = 0x16;
pub const COM_STMT_EXECUTE: u8 = 0x17;
pub const COM_STMT_SEND_LONG_DATA: u8 = 0x18;
pub const COM_STMT_CLOSE: u8 = 0x19;
pub const COM_STMT_RESET: u8 = 0x1a;
pub const COM_STMT_FETCH: u8 = 0x1c;
pub const COM_RESET_CONNECTION: u8 = 0x1f;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("truncated {0}")]
    Truncated(&'static str),
    #[error("malformed {0}")]
    Malformed(&'static str),
    #[error("unsupported: {0}")]
    Unsupported(&'static str),
}

/// One physical packet: its sequence id and payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet<'a> {
    pub seq: u8,
    pub payload: &'a [u8],
}

/// Decodes one packet from the front of `buf`; `None` until it is whole.
/// Returns the packet and the bytes it took (header included).
pub fn decode(buf: &[u8]) -> Option<(Packet<'_>, usize)> {
    let [a, b, c, seq, ..] = *buf else { return None };
    let len = usize::from(a) | usize::from(b) << 8 | usize::from(c) << 16;
    let payload = buf.get(4..4 + len)?;
    Some((Packet { seq, payload }, 4 + len))
}

/// How many bytes the packet at the front of `buf` needs in all, if its header is there.
pub fn pending_len(buf: &[u8]) -> Option<usize> {
    let [a, b, c, ..] = *buf else { return None };
    Some(4 + (usize::from(a) | usize::from(b) << 8 | usize::from(c) << 16))
}

/// Frames `payload` (at most [`MAX_PAYLOAD`] bytes) as one packet.
pub fn frame(seq: u8, payload: &[u8]) -> Vec<u8> {
    debug_assert!(payload.len() < MAX_PAYLOAD);
    let len = payload.len().min(MAX_PAYLOAD);
    let mut out = Vec::with_capacity(4 + len);
    out.extend_from_slice(&u32::try_from(len).unwrap_or(0).to_le_bytes()[..3]);
    out.push(seq);
    out.extend_from_slice(payload.get(..len).unwrap_or_default());
    out
}

/// An ERR packet payload: code, SQLSTATE, message.
pub fn err_payload(code: u16, sqlstate: &str, message: &str) -> Vec<u8> {
    let mut p = vec![0xff];
    p.extend_from_slice(&code.to_le_bytes());
    p.push(b'#');
    let mut state = [b'H', b'Y', b'0', b'0', b'0'];
    for (d, s) in state.iter_mut().zip(sqlstate.bytes()) {
        *d = s;
    }
    p.extend_from_slice(&state);
    // Messages stay well under a packet (MySQL caps them at 512 bytes).
    let msg = message.as_bytes();
    p.extend_from_slice(msg.get(..4000).unwrap_or(msg));
    p
}

/// An OK packet payload (nothing affected).
pub fn ok_payload(status: u16) -> Vec<u8> {
    let mut p = vec![0x00, 0x00, 0x00];
    p.extend_from_slice(&status.to_le_bytes());
    p.extend_from_slice(&[0, 0]);
    p
}

/// A parsed ERR packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrPacket {
    pub code: u16,
    pub state: String,
    pub message: String,
}

pub fn parse_err(p: &[u8]) -> Option<ErrPacket> {
    let rest = p.strip_prefix(&[0xff])?;
    let code = u16::from_le_bytes([*rest.first()?, *rest.get(1)?]);
    let rest = rest.get(2..)?;
    let (state, msg) = match rest.strip_prefix(b"#") {
        Some(r) => (String::from_utf8_lossy(r.get(..5)?).into_owned(), r.get(5..)?),
        None => (String::new(), rest),
    };
    Some(ErrPacket { code, state, message: String::from_utf8_lossy(msg).into_owned() })
}

/// Reads a length-encoded integer; returns it and the bytes it took.
pub fn lenenc_int(p: &[u8]) -> Option<(u64, usize)> {
    match *p.first()? {
        n @ 0..=0xfa => Some((u64::from(n), 1)),
        0xfc => Some((u64::from(u16::from_le_bytes([*p.get(1)?, *p.get(2)?])), 3)),
        0xfd => Some((u64::from(u32::from_le_bytes([*p.get(1)?, *p.get(2)?, *p.get(3)?, 0])), 4)),
        0xfe => {
            let b: [u8; 8] = p.get(1..9)?.try_into().ok()?;
            Some((u64::from_le_bytes(b), 9))
        }
        _ => None,
    }
}

pub fn put_lenenc(out: &mut Vec<u8>, n: usize) {
    let b = (n as u64).to_le_bytes();
    match n {
        0..=0xfa => out.push(b[0]),
        0xfb..=0xffff => {
            out.push(0xfc);
            out.extend_from_slice(&b[..2]);
        }
        0x1_0000..=0xff_ffff => {
            out.push(0xfd);
            out.extend_from_slice(&b[..3]);
        }
        _ => {
            out.push(0xfe);
            out.extend_from_slice(&b);
        }
    }
}

/// Reads a length-encoded string; `None` for SQL NULL (0xfb) is `Some((None, 1))`.
pub fn lenenc_str(p: &[u8]) -> Option<(Option<&[u8]>, usize)> {
    if p.first() == Some(&0xfb) {
        return Some((None, 1));
    }
    let (n, k) = lenenc_int(p)?;
    let n = usize::try_from(n).ok()?;
    Some((Some(p.get(k..k.checked_add(n)?)?), k + n))
}

/// The affected-rows count and the status flags of an OK packet (header 0x00 or 0xfe).
pub fn parse_ok(p: &[u8]) -> Option<(u64, u16)> {
    let rest = p.get(1..)?;
    let (affected, a) = lenenc_int(rest)?;
    let (_, b) = lenenc_int(rest.get(a..)?)?;
    let s: [u8; 2] = rest.get(a + b..a + b + 2)?.try_into().ok()?;
    Some((affected, u16::from_le_bytes(s)))
}

/// The status flags of a (pre-4.1-deprecation) EOF packet.
pub fn parse_eof(p: &[u8]) -> Option<u16> {
    let s: [u8; 2] = p.get(3..5)?.try_into().ok()?;
    Some(u16::from_le_bytes(s))
}

/// The server's greeting (handshake v10), as far as Gatehouse uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Greeting {
    pub version: String,
    pub connection_id: u32,
    pub capabilities: u32,
    pub charset: u8,
    pub status: u16,
    /// The 20-byte nonce (both parts, without the trailing NUL).
    pub nonce: Vec<u8>,
    pub plugin: String,
}

fn take_cstr<'a>(p: &'a [u8], what: &'static str) -> Result<(&'a [u8], &'a [u8]), WireError> {
    let nul = p.iter().position(|&b| b == 0).ok_or(WireError::Malformed(what))?;
    Ok((p.get(..nul).unwrap_or_default(), p.get(nul + 1..).unwrap_or_default()))
}

pub fn parse_greeting(p: &[u8]) -> Result<Greeting, WireError> {
    let t = WireError::Truncated("server greeting");
    if p.first() == Some(&0xff) {
        return Err(WireError::Malformed("server greeting: the server sent an error"));
    }
    if p.first() != Some(&10) {
        return Err(WireError::Unsupported("server handshake protocol other than v10"));
    }
    let (version, rest) = take_cstr(p.get(1..).unwrap_or_default(), "server version")?;
    let id: [u8; 4] = rest.get(..4).ok_or(t.clone())?.try_into().map_err(|_| t.clone())?;
    let part1 = rest.get(4..12).ok_or(t.clone())?;
    let rest = rest.get(13..).ok_or(t.clone())?;
    let cap_lo = u16::from_le_bytes([*rest.first().ok_or(t.clone())?, *rest.get(1).ok_or(t.clone())?]);
    let charset = *rest.get(2).ok_or(t.clone())?;
    let status = u16::from_le_bytes([*rest.get(3).ok_or(t.clone())?, *rest.get(4).ok_or(t.clone())?]);
    let cap_hi = u16::from_le_bytes([*rest.get(5).ok_or(t.clone())?, *rest.get(6).ok_or(t.clone())?]);
    let capabilities = u32::from(cap_lo) | u32::from(cap_hi) << 16;
    let auth_len = usize::from(*rest.get(7).ok_or(t.clone())?);
    let rest = rest.get(18..).ok_or(t.clone())?;
    if capabilities & CLIENT_PROTOCOL_41 == 0 || capabilities & CLIENT_SECURE_CONNECTION == 0 {
        return Err(WireError::Unsupported("server without protocol 4.1 authentication"));
    }
    let n2 = auth_len.saturating_sub(8).max(13);
    let part2 = rest.get(..n2).ok_or(t.clone())?;
    let rest = rest.get(n2..).unwrap_or_default();
    let mut nonce = part1.to_vec();
    nonce.extend_from_slice(part2.strip_suffix(&[0]).unwrap_or(part2));
    let plugin = if capabilities & CLIENT_PLUGIN_AUTH != 0 {
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        String::from_utf8_lossy(rest.get(..end).unwrap_or_default()).into_owned()
    } else {
        "mysql_native_password".into()
    };
    Ok(Greeting {
        version: String::from_utf8_lossy(version).into_owned(),
        connection_id: u32::from_le_bytes(id),
        capabilities,
        charset,
        status,
        nonce,
        plugin,
    })
}

/// Gatehouse's greeting to a client: the backend's version, Gatehouse's
/// own capabilities and nonce, `mysql_native_password` (no password is checked).
pub fn greeting_payload(g: &Greeting, capabilities: u32, nonce: &[u8; 20]) -> Vec<u8> {
    let mut p = vec![10];
    p.extend_from_slice(g.version.as_bytes());
    p.push(0);
    p.extend_from_slice(&g.connection_id.to_le_bytes());
    p.extend_from_slice(&nonce[..8]);
    p.push(0);
    let caps = capabilities.to_le_bytes();
    p.extend_from_slice(&caps[..2]);
    p.push(g.charset);
    p.extend_from_slice(&g.status.to_le_bytes());
    p.extend_from_slice(&caps[2..]);
    p.push(21);
    p.extend_from_slice(&[0; 10]);
    p.extend_from_slice(&nonce[8..]);
    p.push(0);
    p.extend_from_slice(b"mysql_native_password\0");
    p
}

/// A client's HandshakeResponse41 (or its SSLRequest, `ssl`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Login {
    pub capabilities: u32,
    pub max_packet: u32,
    pub charset: u8,
    pub user: String,
    pub database: Option<String>,
    /// The client asked for TLS first (an SSLRequest, 32 bytes).
    pub ssl: bool,
}

pub fn parse_login(p: &[u8]) -> Result<Login, WireError> {
    let t = WireError::Truncated("client login");
    let head: [u8; 4] = p.get(..4).ok_or(t.clone())?.try_into().map_err(|_| t.clone())?;
    let capabilities = u32::from_le_bytes(head);
    if capabilities & CLIENT_PROTOCOL_41 == 0 {
        return Err(WireError::Unsupported("client without protocol 4.1"));
    }
    let mp: [u8; 4] = p.get(4..8).ok_or(t.clone())?.try_into().map_err(|_| t.clone())?;
    let charset = *p.get(8).ok_or(t.clone())?;
    let rest = p.get(32..).ok_or(t.clone())?;
    let base = Login {
        capabilities,
        max_packet: u32::from_le_bytes(mp),
        charset,
        user: String::new(),
        database: None,
        ssl: false,
    };
    if rest.is_empty() && capabilities & CLIENT_SSL != 0 {
        return Ok(Login { ssl: true, ..base });
    }
    let (user, rest) = take_cstr(rest, "client login: user")?;
    let rest = if capabilities & CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA != 0 {
        let (_, k) = lenenc_str(rest).ok_or(t.clone())?;
        rest.get(k..).unwrap_or_default()
    } else if capabilities & CLIENT_SECURE_CONNECTION != 0 {
        let n = usize::from(*rest.first().ok_or(t.clone())?);
        rest.get(1 + n..).ok_or(t.clone())?
    } else {
        take_cstr(rest, "client login: auth data")?.1
    };
    let database = if capabilities & CLIENT_CONNECT_WITH_DB != 0 && !rest.is_empty() {
        let (db, _) = take_cstr(rest, "client login: database")?;
        let db = std::str::from_utf8(db).map_err(|_| WireError::Malformed("client login: database name"))?;
        (!db.is_empty()).then(|| db.to_owned())
    } else {
        None
    };
    Ok(Login { user: String::from_utf8_lossy(user).into_owned(), database, ..base })
}

/// Gatehouse's own HandshakeResponse41 to the backend.
pub fn login_payload(
    capabilities: u32,
    charset: u8,
    user: &str,
    auth: &[u8],
    database: Option<&str>,
    plugin: &str,
) -> Vec<u8> {
    let mut caps = capabilities | CLIENT_PROTOCOL_41 | CLIENT_SECURE_CONNECTION | CLIENT_PLUGIN_AUTH;
    caps &= !(CLIENT_CONNECT_ATTRS | CLIENT_SSL | CLIENT_COMPRESS | CLIENT_LOCAL_FILES | CLIENT_MULTI_STATEMENTS);
    if database.is_some() {
        caps |= CLIENT_CONNECT_WITH_DB;
    } else {
        caps &= !CLIENT_CONNECT_WITH_DB;
    }
    let mut p = Vec::with_capacity(128);
    p.extend_from_slice(&caps.to_le_bytes());
    p.extend_from_slice(&[0xff, 0xff, 0xff, 0x00]);
    p.push(charset);
    p.extend_from_slice(&[0; 23]);
    p.extend_from_slice(user.as_bytes());
    p.push(0);
    if caps & CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA != 0 {
        put_lenenc(&mut p, auth.len());
    } else {
        p.push(u8::try_from(auth.len()).unwrap_or(0));
    }
    p.extend_from_slice(auth);
    if let Some(db) = database {
        p.extend_from_slice(db.as_bytes());
        p.push(0);
    }
    p.extend_from_slice(plugin.as_bytes());
    p.push(0);
    p
}

/// The SSLRequest Gatehouse sends the backend before TLS: the first 32
/// bytes of the HandshakeResponse41 that follows inside TLS (same
/// capabilities, plus CLIENT_SSL), as the protocol requires.
pub fn ssl_request_payload(capabilities: u32, charset: u8, database: Option<&str>) -> Vec<u8> {
    let mut p = login_payload(capabilities, charset, "", &[], database, "");
    p.truncate(32);
    with_ssl(p)
}

/// A HandshakeResponse41 (or its prefix) with CLIENT_SSL set: what a client
/// sends inside TLS after its SSLRequest.
pub fn with_ssl(mut payload: Vec<u8>) -> Vec<u8> {
    if let Some(b) = payload.get_mut(1) {
        *b |= CLIENT_SSL.to_le_bytes()[1];
    }
    payload
}

/// What an authentication plugin answers to `nonce` with `password`.
pub fn scramble(plugin: &str, nonce: &[u8], password: &[u8]) -> Result<Vec<u8>, WireError> {
    if password.is_empty() {
        return Ok(Vec::new());
    }
    match plugin {
        // SHA1(pw) XOR SHA1(nonce + SHA1(SHA1(pw)))
        "mysql_native_password" => {
            let alg = &digest::SHA1_FOR_LEGACY_USE_ONLY;
            let h1 = digest::digest(alg, password);
            let h2 = digest::digest(alg, h1.as_ref());
            let mut ctx = digest::Context::new(alg);
            ctx.update(nonce.get(..20).unwrap_or(nonce));
            ctx.update(h2.as_ref());
            let h3 = ctx.finish();
            Ok(h1.as_ref().iter().zip(h3.as_ref()).map(|(a, b)| a ^ b).collect())
        }
        // SHA256(pw) XOR SHA256(SHA256(SHA256(pw)) + nonce)
        "caching_sha2_password" => {
            let alg = &digest::SHA256;
            let h1 = digest::digest(alg, password);
            let h2 = digest::digest(alg, h1.as_ref());
            let mut ctx = digest::Context::new(alg);
            ctx.update(h2.as_ref());
            ctx.update(nonce.get(..20).unwrap_or(nonce));
            let h3 = ctx.finish();
            Ok(h1.as_ref().iter().zip(h3.as_ref()).map(|(a, b)| a ^ b).collect())
        }
        _ => {
            Err(WireError::Unsupported("authentication plugin (only mysql_native_password and caching_sha2_password)"))
        }
    }
}

/// An AuthSwitchRequest (0xfe): the plugin the server wants and its nonce.
pub fn parse_auth_switch(p: &[u8]) -> Result<(String, Vec<u8>), WireError> {
    let rest = p.strip_prefix(&[0xfe]).ok_or(WireError::Malformed("auth switch"))?;
    let (plugin, rest) = take_cstr(rest, "auth switch: plugin")?;
    let nonce = rest.strip_suffix(&[0]).unwrap_or(rest).to_vec();
    Ok((String::from_utf8_lossy(plugin).into_owned(), nonce))
}

/// Collation ids (the handshake's charset byte) a client may use: character
/// sets whose multi-byte characters never contain an ASCII byte, so the
/// statement Gatehouse reads is the one the server reads. SJIS, CP932,
/// BIG5, GBK and GB18030 are not among them.
pub fn safe_collation(id: u8) -> bool {
    matches!(id,
        // latin1, latin2, ascii, binary
        5 | 8 | 15 | 31 | 47 | 48 | 49 | 94 | 2 | 9 | 21 | 27 | 77 | 11 | 65 | 63
        // utf8mb3
        | 33 | 83 | 192..=215 | 223
        // utf8mb4
        | 45 | 46 | 224..=247 | 255)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_decode_and_continuations_are_seen_by_length() {
        let f = frame(3, b"\x03select 1");
        let (p, n) = decode(&f).expect("whole");
        assert_eq!((p.seq, p.payload, n), (3, &b"\x03select 1"[..], f.len()));
        assert!(decode(&f[..f.len() - 1]).is_none());
        let big = [0xff, 0xff, 0xff, 0];
        assert_eq!(pending_len(&big), Some(4 + MAX_PAYLOAD));
    }

    #[test]
    fn err_and_ok_round_trip() {
        let e = err_payload(1142, "42000", "Gatehouse refused");
        assert_eq!(
            parse_err(&e),
            Some(ErrPacket { code: 1142, state: "42000".into(), message: "Gatehouse refused".into() })
        );
        assert_eq!(parse_ok(&ok_payload(SERVER_STATUS_AUTOCOMMIT)), Some((0, SERVER_STATUS_AUTOCOMMIT)));
        assert_eq!(parse_ok(&[0, 0xfc, 0x10, 0x27, 0, 8, 0, 0, 0]), Some((10000, SERVER_MORE_RESULTS_EXISTS)));
    }

    #[test]
    fn greeting_round_trips_and_login_parses() {
        let g = Greeting {
            version: "5.5.5-10.11.6-MariaDB".into(),
            connection_id: 7,
            capabilities: OFFERED,
            charset: 45,
            status: 2,
            nonce: vec![1; 20],
            plugin: "mysql_native_password".into(),
        };
        let nonce = [9u8; 20];
        let back = parse_greeting(&greeting_payload(&g, OFFERED, &nonce)).expect("parses");
        assert_eq!(back.nonce, nonce.to_vec());
        assert_eq!(back.version, g.version);
        assert_eq!(back.capabilities, OFFERED);
        let auth = scramble("mysql_native_password", &nonce, b"pw").expect("native");
        let l = login_payload(OFFERED, 45, "app", &auth, Some("shop"), "mysql_native_password");
        let parsed = parse_login(&l).expect("login parses");
        assert_eq!(parsed.user, "app");
        assert_eq!(parsed.database.as_deref(), Some("shop"));
        assert_eq!(parsed.capabilities & CLIENT_MULTI_STATEMENTS, 0);
        assert!(!parsed.ssl);
        let mut ssl = l[..32].to_vec();
        ssl[1] |= CLIENT_SSL.to_le_bytes()[1];
        assert!(parse_login(&ssl).expect("ssl request").ssl);
        // Gatehouse's own SSLRequest is the prefix of the login that follows it in TLS.
        let req = ssl_request_payload(OFFERED, 45, Some("shop"));
        assert_eq!(req, ssl);
        let inside = with_ssl(l.clone());
        assert_eq!(inside.get(..32), Some(&req[..]));
        let parsed = parse_login(&inside).expect("login inside TLS");
        assert!(!parsed.ssl, "a whole login is not an SSLRequest");
        assert_eq!(parsed.user, "app");
        assert_ne!(parsed.capabilities & CLIENT_SSL, 0);
    }

    #[test]
    fn native_scramble_matches_a_known_answer() {
        // mysql_native_password of "password" against a nonce of 20 zero-free bytes,
        // computed independently: SHA1("password") xor SHA1(nonce . SHA1(SHA1("password"))).
        let nonce: Vec<u8> = (1..=20).collect();
        let hex = |v: Vec<u8>| v.iter().map(|b| format!("{b:02x}")).collect::<String>();
        let s = scramble("mysql_native_password", &nonce, b"password").expect("native");
        assert_eq!(hex(s), "c17d6009a5cb47e59f7483fcf05553bbbf7dd0d6");
        let s = scramble("caching_sha2_password", &nonce, b"password").expect("sha2");
        assert_eq!(hex(s), "f7ab1c623a6e98dceab35e926290e5746a3141116115f4dd8ccca994393eccdd");
        assert!(scramble("mysql_native_password", &nonce, b"").expect("empty").is_empty());
        assert!(scramble("mysql_clear_password", &nonce, b"pw").is_err());
    }

    #[test]
    fn unsafe_client_charsets_are_not_safe() {
        // sjis, cp932, big5, gbk, gb18030 collations
        for id in [13, 88, 95, 96, 1, 84, 28, 87, 248, 249, 250] {
            assert!(!safe_collation(id), "{id}");
        }
        for id in [33, 45, 8, 63, 224, 255] {
            assert!(safe_collation(id), "{id}");
        }
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        for cut in 0..40 {
            let g = vec![10u8; cut];
            let _ = parse_greeting(&g);
            let _ = parse_login(&g);
            let _ = parse_err(&g);
            let _ = parse_ok(&g);
            let _ = lenenc_str(&g);
        }
        assert!(lenenc_str(&[0xfc, 0xff]).is_none());
    }
}
