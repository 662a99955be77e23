//! PostgreSQL v3 wire format, sans-IO: decoders over `&[u8]` that return a
//! message and how many bytes it took, builders for the messages Gatehouse
//! writes itself, and readers for the bodies it must look into. Every
//! length is bounded before anything is allocated; malformed input is an
//! error, never a panic.

use std::fmt;

/// Largest message accepted from a client (Bind parameters, COPY data…).
pub const MAX_CLIENT_MESSAGE: usize = 64 << 20;
/// Largest message accepted from a backend (one DataRow…).
pub const MAX_BACKEND_MESSAGE: usize = 256 << 20;

/// Protocol 3.0.
pub const PROTOCOL_3_0: u32 = 196_608;
pub const SSL_REQUEST: u32 = 80_877_103;
pub const GSSENC_REQUEST: u32 = 80_877_104;
pub const CANCEL_REQUEST: u32 = 80_877_102;
/// The startup packet is small; libpq caps it at 10,000 bytes too.
pub const MAX_STARTUP: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("message of {len} bytes is over the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
    #[error("message length {len} is impossible")]
    BadLength { len: i64 },
    #[error("malformed {what}")]
    Malformed { what: &'static str },
    #[error("unsupported protocol version {major}.{minor}")]
    Version { major: u16, minor: u16 },
}

fn malformed(what: &'static str) -> WireError {
    WireError::Malformed { what }
}

fn be_u32(b: &[u8], at: usize) -> Option<u32> {
    let s: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
    Some(u32::from_be_bytes(s))
}

fn be_i32(b: &[u8], at: usize) -> Option<i32> {
    be_u32(b, at).map(u32::cast_signed)
}

fn be_i16(b: &[u8], at: usize) -> Option<i16> {
    let s: [u8; 2] = b.get(at..at + 2)?.try_into().ok()?;
    Some(i16::from_be_bytes(s))
}

/// The first message of a connection (no type byte).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Startup {
    Ssl,
    GssEnc,
    Cancel { pid: u32, secret: u32 },
    Startup { minor: u16, params: Vec<(String, String)> },
}

/// Decodes a startup-phase message; `Ok(None)` means more bytes are needed.
pub fn decode_startup(buf: &[u8]) -> Result<Option<(Startup, usize)>, WireError> {
    let Some(len) = be_i32(buf, 0) else { return Ok(None) };
    let len_us = usize::try_from(len).map_err(|_| WireError::BadLength { len: i64::from(len) })?;
    if len_us < 8 {
        return Err(WireError::BadLength { len: i64::from(len) });
    }
    if len_us > MAX_STARTUP {
        return Err(WireError::TooLarge { len: len_us, max: MAX_STARTUP });
    }
    let Some(body) = buf.get(..len_us) else { return Ok(None) };
    let code = be_u32(body, 4).ok_or_else(|| malformed("startup packet"))?;
    let msg = match code {
        SSL_REQUEST if len_us == 8 => Startup::Ssl,
        GSSENC_REQUEST if len_us == 8 => Startup::GssEnc,
        CANCEL_REQUEST if len_us == 16 => Startup::Cancel {
            pid: be_u32(body, 8).ok_or_else(|| malformed("cancel request"))?,
            secret: be_u32(body, 12).ok_or_else(|| malformed("cancel request"))?,
        },
        SSL_REQUEST | GSSENC_REQUEST | CANCEL_REQUEST => return Err(malformed("startup packet")),
        version => {
            let major = u16::try_from(version >> 16).unwrap_or(u16::MAX);
            let minor = u16::try_from(version & 0xffff).unwrap_or(u16::MAX);
            if major != 3 {
                return Err(WireError::Version { major, minor });
            }
            Startup::Startup { minor, params: startup_params(body.get(8..).unwrap_or_default())? }
        }
    };
    Ok(Some((msg, len_us)))
}

fn startup_params(mut b: &[u8]) -> Result<Vec<(String, String)>, WireError> {
    let mut out = Vec::new();
    loop {
        let (key, rest) = cstr(b).ok_or_else(|| malformed("startup parameters"))?;
        if key.is_empty() {
            if !rest.is_empty() {
                return Err(malformed("startup parameters"));
            }
            return Ok(out);
        }
        let (value, rest) = cstr(rest).ok_or_else(|| malformed("startup parameters"))?;
        let text = |s: &[u8]| String::from_utf8(s.to_vec()).map_err(|_| malformed("startup parameters (not UTF-8)"));
        out.push((text(key)?, text(value)?));
        b = rest;
        if out.len() > 64 {
            return Err(malformed("startup parameters (too many)"));
        }
    }
}

/// Splits a NUL-terminated string off the front of `b`.
pub fn cstr(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let nul = memchr::memchr(0, b)?;
    Some((b.get(..nul)?, b.get(nul + 1..)?))
}

/// A typed message: tag, body (after the length), and the whole message bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    pub tag: u8,
    pub body: &'a [u8],
    pub raw: &'a [u8],
}

impl fmt::Debug for Frame<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Frame({:?}, {} bytes)", char::from(self.tag), self.body.len())
    }
}

/// Decodes one typed message, or `Ok(None)` when more bytes are needed.
pub fn decode(buf: &[u8], max: usize) -> Result<Option<(Frame<'_>, usize)>, WireError> {
    let Some(&tag) = buf.first() else { return Ok(None) };
    let Some(len) = be_i32(buf, 1) else { return Ok(None) };
    let len_us = usize::try_from(len).map_err(|_| WireError::BadLength { len: i64::from(len) })?;
    if len_us < 4 {
        return Err(WireError::BadLength { len: i64::from(len) });
    }
    if len_us > max {
        return Err(WireError::TooLarge { len: len_us, max });
    }
    let total = len_us + 1;
    let Some(raw) = buf.get(..total) else { return Ok(None) };
    Ok(Some((Frame { tag, body: raw.get(5..).unwrap_or_default(), raw }, total)))
}

/// How many bytes the message at the front of `buf` will take, once its
/// header is there (to reserve buffer space for large messages).
pub fn pending_len(buf: &[u8]) -> Option<usize> {
    be_i32(buf, 1).and_then(|l| usize::try_from(l).ok()).map(|l| l + 1)
}

// ---- builders ----

fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(body.len() + 5);
    v.push(tag);
    let len = u32::try_from(body.len() + 4).unwrap_or(u32::MAX);
    v.extend_from_slice(&len.to_be_bytes());
    v.extend_from_slice(body);
    v
}

fn push_cstr(v: &mut Vec<u8>, s: &str) {
    // A NUL inside would end the field early; our own texts never hold one.
    v.extend(s.bytes().filter(|b| *b != 0));
    v.push(0);
}

/// Error and notice severities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// Sent as a NoticeResponse, not an error.
    Notice,
    Error,
    Fatal,
}

/// An ErrorResponse as Gatehouse writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgError {
    pub severity: Severity,
    pub code: &'static str,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl PgError {
    pub fn new(severity: Severity, code: &'static str, message: impl Into<String>) -> Self {
        Self { severity, code, message: message.into(), detail: None, hint: None }
    }

    pub fn detail(mut self, d: impl Into<String>) -> Self {
        self.detail = Some(d.into());
        self
    }

    pub fn hint(mut self, h: impl Into<String>) -> Self {
        self.hint = Some(h.into());
        self
    }

    pub fn encode(&self) -> Vec<u8> {
        let sev = match self.severity {
            Severity::Notice => "NOTICE",
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
        };
        let mut b = Vec::with_capacity(64 + self.message.len());
        for (field, value) in [(b'S', sev), (b'V', sev), (b'C', self.code)] {
            b.push(field);
            push_cstr(&mut b, value);
        }
        b.push(b'M');
        push_cstr(&mut b, &self.message);
        if let Some(d) = &self.detail {
            b.push(b'D');
            push_cstr(&mut b, d);
        }
        if let Some(h) = &self.hint {
            b.push(b'H');
            push_cstr(&mut b, h);
        }
        b.push(0);
        message(if self.severity == Severity::Notice { b'N' } else { b'E' }, &b)
    }
}

pub fn ready_for_query(status: u8) -> Vec<u8> {
    message(b'Z', &[status])
}

pub fn auth_ok() -> Vec<u8> {
    message(b'R', &0u32.to_be_bytes())
}

pub fn backend_key_data(pid: u32, secret: u32) -> Vec<u8> {
    let mut b = Vec::with_capacity(8);
    b.extend_from_slice(&pid.to_be_bytes());
    b.extend_from_slice(&secret.to_be_bytes());
    message(b'K', &b)
}

/// Tells a client asking for protocol 3.x (x > 0) or `_pq_` options that we speak 3.0.
pub fn negotiate_protocol_version(unsupported: &[String]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&0u32.to_be_bytes());
    b.extend_from_slice(&u32::try_from(unsupported.len()).unwrap_or(0).to_be_bytes());
    for o in unsupported {
        push_cstr(&mut b, o);
    }
    message(b'v', &b)
}

pub fn query(text: &str) -> Vec<u8> {
    let mut b = Vec::with_capacity(text.len() + 1);
    push_cstr(&mut b, text);
    message(b'Q', &b)
}

/// A Describe of the portal `name`.
pub fn describe_portal(name: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(name.len() + 2);
    b.push(b'P');
    b.extend_from_slice(name);
    b.push(0);
    message(b'D', &b)
}

/// A Parse of `text` into the unnamed statement, with no parameter types.
pub fn parse(text: &str) -> Vec<u8> {
    let mut b = Vec::with_capacity(text.len() + 4);
    b.push(0);
    push_cstr(&mut b, text);
    b.extend_from_slice(&0u16.to_be_bytes());
    message(b'P', &b)
}

pub fn startup_message(params: &[(String, String)]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&[0; 4]);
    b.extend_from_slice(&PROTOCOL_3_0.to_be_bytes());
    for (k, v) in params {
        push_cstr(&mut b, k);
        push_cstr(&mut b, v);
    }
    b.push(0);
    let len = u32::try_from(b.len()).unwrap_or(u32::MAX).to_be_bytes();
    if let Some(s) = b.get_mut(..4) {
        s.copy_from_slice(&len);
    }
    b
}

pub fn ssl_request() -> Vec<u8> {
    let mut b = 8u32.to_be_bytes().to_vec();
    b.extend_from_slice(&SSL_REQUEST.to_be_bytes());
    b
}

pub fn cancel_request(pid: u32, secret: u32) -> Vec<u8> {
    let mut b = 16u32.to_be_bytes().to_vec();
    b.extend_from_slice(&CANCEL_REQUEST.to_be_bytes());
    b.extend_from_slice(&pid.to_be_bytes());
    b.extend_from_slice(&secret.to_be_bytes());
    b
}

pub fn password_message(secret: &[u8]) -> Vec<u8> {
    let mut b = secret.to_vec();
    b.push(0);
    message(b'p', &b)
}

pub fn sasl_initial_response(mechanism: &str, data: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    push_cstr(&mut b, mechanism);
    b.extend_from_slice(&i32::try_from(data.len()).unwrap_or(i32::MAX).to_be_bytes());
    b.extend_from_slice(data);
    message(b'p', &b)
}

pub fn sasl_response(data: &[u8]) -> Vec<u8> {
    message(b'p', data)
}

pub fn terminate() -> Vec<u8> {
    message(b'X', &[])
}

/// Rebuilds a DataRow from column values (`None` = SQL NULL).
pub fn data_row<'a>(columns: impl ExactSizeIterator<Item = Option<&'a [u8]>>) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&u16::try_from(columns.len()).unwrap_or(u16::MAX).to_be_bytes());
    for c in columns {
        match c {
            None => b.extend_from_slice(&(-1i32).to_be_bytes()),
            Some(v) => {
                b.extend_from_slice(&i32::try_from(v.len()).unwrap_or(i32::MAX).to_be_bytes());
                b.extend_from_slice(v);
            }
        }
    }
    message(b'D', &b)
}

// ---- readers for the bodies Gatehouse looks into ----

/// The text of a Query message.
pub fn query_text(body: &[u8]) -> Result<&[u8], WireError> {
    let (text, rest) = cstr(body).ok_or_else(|| malformed("Query"))?;
    if !rest.is_empty() {
        return Err(malformed("Query"));
    }
    Ok(text)
}

/// A Parse message: statement name and query text.
pub fn parse_body(body: &[u8]) -> Result<(&[u8], &[u8]), WireError> {
    let (name, rest) = cstr(body).ok_or_else(|| malformed("Parse"))?;
    let (text, rest) = cstr(rest).ok_or_else(|| malformed("Parse"))?;
    let n = be_i16(rest, 0).ok_or_else(|| malformed("Parse"))?;
    let n = usize::try_from(n).map_err(|_| malformed("Parse"))?;
    if rest.len() != 2 + 4 * n {
        return Err(malformed("Parse"));
    }
    Ok((name, text))
}

/// A Bind message: portal and statement names (the rest is forwarded unread).
pub fn bind_names(body: &[u8]) -> Result<(&[u8], &[u8]), WireError> {
    let (portal, rest) = cstr(body).ok_or_else(|| malformed("Bind"))?;
    let (statement, _) = cstr(rest).ok_or_else(|| malformed("Bind"))?;
    Ok((portal, statement))
}

/// A Parse message's parameter type OIDs, as the client gave them (0:
/// unspecified); empty when there are none or the message is short.
pub fn parse_param_types(body: &[u8]) -> Vec<u32> {
    let Some((_, rest)) = cstr(body) else { return Vec::new() };
    let Some((_, rest)) = cstr(rest) else { return Vec::new() };
    let n = be_i16(rest, 0).and_then(|n| usize::try_from(n).ok()).unwrap_or(0);
    (0..n)
        .map_while(|i| rest.get(2 + 4 * i..6 + 4 * i).and_then(|b| b.try_into().ok()).map(u32::from_be_bytes))
        .collect()
}

/// One Bind parameter: `None` for NULL, else its format code (0 text, 1
/// binary) and value.
pub type BindValue<'a> = Option<(i16, &'a [u8])>;

/// A Bind message's parameters.
pub fn bind_parameters(body: &[u8]) -> Result<Vec<BindValue<'_>>, WireError> {
    let bad = || malformed("Bind");
    let (_, rest) = cstr(body).ok_or_else(bad)?;
    let (_, rest) = cstr(rest).ok_or_else(bad)?;
    let nfmt = usize::try_from(be_i16(rest, 0).ok_or_else(bad)?).map_err(|_| bad())?;
    let formats: Vec<i16> = (0..nfmt).map(|i| be_i16(rest, 2 + 2 * i).ok_or_else(bad)).collect::<Result<_, _>>()?;
    let mut at = 2 + 2 * nfmt;
    let n = usize::try_from(be_i16(rest, at).ok_or_else(bad)?).map_err(|_| bad())?;
    at += 2;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let format = match formats.len() {
            0 => 0,
            1 => formats.first().copied().unwrap_or(0),
            _ => formats.get(i).copied().ok_or_else(bad)?,
        };
        let len = be_i32(rest, at).ok_or_else(bad)?;
        at += 4;
        if len < 0 {
            out.push(None);
            continue;
        }
        let end = at.checked_add(usize::try_from(len).map_err(|_| bad())?).ok_or_else(bad)?;
        out.push(Some((format, rest.get(at..end).ok_or_else(bad)?)));
        at = end;
    }
    Ok(out)
}

/// A Bind message's result-column format codes (none: all text; one: all
/// columns; else one per column).
pub fn bind_result_formats(body: &[u8]) -> Result<Vec<i16>, WireError> {
    let bad = || malformed("Bind");
    let (_, rest) = cstr(body).ok_or_else(bad)?;
    let (_, rest) = cstr(rest).ok_or_else(bad)?;
    let n = usize::try_from(be_i16(rest, 0).ok_or_else(bad)?).map_err(|_| bad())?;
    let mut at = 2usize.checked_add(n.checked_mul(2).ok_or_else(bad)?).ok_or_else(bad)?;
    let params = usize::try_from(be_i16(rest, at).ok_or_else(bad)?).map_err(|_| bad())?;
    at += 2;
    for _ in 0..params {
        let len = be_i32(rest, at).ok_or_else(bad)?;
        at += 4;
        if len > 0 {
            at = at.checked_add(usize::try_from(len).map_err(|_| bad())?).ok_or_else(bad)?;
        }
    }
    let n = usize::try_from(be_i16(rest, at).ok_or_else(bad)?).map_err(|_| bad())?;
    at += 2;
    let formats = (0..n).map(|i| be_i16(rest, at + 2 * i).ok_or_else(bad)).collect::<Result<Vec<_>, _>>()?;
    if rest.len() != at + 2 * n {
        return Err(bad());
    }
    Ok(formats)
}

/// The pid, channel and payload of a NotificationResponse.
pub fn notification(body: &[u8]) -> Result<(u32, &[u8], &[u8]), WireError> {
    let bad = || malformed("NotificationResponse");
    let pid = be_u32(body, 0).ok_or_else(bad)?;
    let (channel, rest) = cstr(body.get(4..).unwrap_or_default()).ok_or_else(bad)?;
    let (payload, rest) = cstr(rest).ok_or_else(bad)?;
    if !rest.is_empty() {
        return Err(bad());
    }
    Ok((pid, channel, payload))
}

/// An Execute message's portal name.
pub fn execute_portal(body: &[u8]) -> Result<&[u8], WireError> {
    let (portal, rest) = cstr(body).ok_or_else(|| malformed("Execute"))?;
    if rest.len() != 4 {
        return Err(malformed("Execute"));
    }
    Ok(portal)
}

/// A Close or Describe message: 'S' (statement) or 'P' (portal), and the name.
pub fn target_name<'a>(body: &'a [u8], what: &'static str) -> Result<(u8, &'a [u8]), WireError> {
    let (&kind, rest) = body.split_first().ok_or_else(|| malformed(what))?;
    let (name, rest) = cstr(rest).ok_or_else(|| malformed(what))?;
    if !matches!(kind, b'S' | b'P') || !rest.is_empty() {
        return Err(malformed(what));
    }
    Ok((kind, name))
}

/// The fields of an ErrorResponse or NoticeResponse, as (code, value).
pub fn error_fields(body: &[u8]) -> Result<Vec<(u8, &[u8])>, WireError> {
    let mut out = Vec::new();
    let mut rest = body;
    loop {
        let (&code, after) = rest.split_first().ok_or_else(|| malformed("ErrorResponse"))?;
        if code == 0 {
            return Ok(out);
        }
        let (value, after) = cstr(after).ok_or_else(|| malformed("ErrorResponse"))?;
        out.push((code, value));
        rest = after;
    }
}

/// Rows affected or returned, from a CommandComplete tag ("SELECT 5", "INSERT 0 3").
/// A Flush message: the server sends what it has buffered.
pub fn flush() -> Vec<u8> {
    vec![b'H', 0, 0, 0, 4]
}

/// The tag of a CommandComplete message (`DELETE 5`, `ALTER ROLE`).
pub fn command_tag(body: &[u8]) -> Result<String, WireError> {
    let (tag, _) = cstr(body).ok_or_else(|| malformed("CommandComplete"))?;
    Ok(String::from_utf8_lossy(tag).into_owned())
}

pub fn command_rows(body: &[u8]) -> Option<u64> {
    let (tag, _) = cstr(body)?;
    let tag = std::str::from_utf8(tag).ok()?;
    tag.rsplit(' ').next()?.parse().ok()
}

/// An Authentication message from the backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth<'a> {
    Ok,
    Cleartext,
    Md5 { salt: [u8; 4] },
    Sasl { mechanisms: Vec<&'a [u8]> },
    SaslContinue(&'a [u8]),
    SaslFinal(&'a [u8]),
    Other(u32),
}

pub fn auth(body: &[u8]) -> Result<Auth<'_>, WireError> {
    let code = be_u32(body, 0).ok_or_else(|| malformed("Authentication"))?;
    let rest = body.get(4..).unwrap_or_default();
    Ok(match code {
        0 => Auth::Ok,
        3 => Auth::Cleartext,
        5 => Auth::Md5 { salt: rest.try_into().map_err(|_| malformed("AuthenticationMD5Password"))? },
        10 => {
            let mut mechanisms = Vec::new();
            let mut r = rest;
            loop {
                let (m, after) = cstr(r).ok_or_else(|| malformed("AuthenticationSASL"))?;
                if m.is_empty() {
                    break;
                }
                mechanisms.push(m);
                r = after;
            }
            Auth::Sasl { mechanisms }
        }
        11 => Auth::SaslContinue(rest),
        12 => Auth::SaslFinal(rest),
        other => Auth::Other(other),
    })
}

/// A ParameterStatus message: name and value.
pub fn parameter_status(body: &[u8]) -> Result<(&[u8], &[u8]), WireError> {
    let (k, rest) = cstr(body).ok_or_else(|| malformed("ParameterStatus"))?;
    let (v, _) = cstr(rest).ok_or_else(|| malformed("ParameterStatus"))?;
    Ok((k, v))
}

/// A BackendKeyData message.
pub fn backend_key(body: &[u8]) -> Result<(u32, u32), WireError> {
    if body.len() != 8 {
        return Err(malformed("BackendKeyData"));
    }
    Ok((
        be_u32(body, 0).ok_or_else(|| malformed("BackendKeyData"))?,
        be_u32(body, 4).ok_or_else(|| malformed("BackendKeyData"))?,
    ))
}

/// One column of a RowDescription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    /// The table the column comes from as is (0: computed).
    pub table_oid: u32,
    /// Its column number there (0: computed, or the whole row when `table_oid` is set).
    pub attnum: i16,
    pub type_oid: u32,
    /// 0 text, 1 binary.
    pub format: i16,
}

pub fn row_description(body: &[u8]) -> Result<Vec<Column>, WireError> {
    let n = be_i16(body, 0).ok_or_else(|| malformed("RowDescription"))?;
    let n = usize::try_from(n).map_err(|_| malformed("RowDescription"))?;
    let mut rest = body.get(2..).unwrap_or_default();
    let mut cols = Vec::with_capacity(n.min(1600));
    for _ in 0..n {
        let (name, after) = cstr(rest).ok_or_else(|| malformed("RowDescription"))?;
        let fixed = after.get(..18).ok_or_else(|| malformed("RowDescription"))?;
        cols.push(Column {
            name: String::from_utf8_lossy(name).into_owned(),
            table_oid: be_u32(fixed, 0).ok_or_else(|| malformed("RowDescription"))?,
            attnum: be_i16(fixed, 4).ok_or_else(|| malformed("RowDescription"))?,
            type_oid: be_u32(fixed, 6).ok_or_else(|| malformed("RowDescription"))?,
            format: be_i16(fixed, 16).ok_or_else(|| malformed("RowDescription"))?,
        });
        rest = after.get(18..).unwrap_or_default();
    }
    if !rest.is_empty() {
        return Err(malformed("RowDescription"));
    }
    Ok(cols)
}

/// Checks that a DataRow body holds exactly `width` columns and nothing
/// beyond them (what a relay passing the row unread vouches for).
pub fn check_data_row(body: &[u8], width: usize) -> Result<(), WireError> {
    let bad = || malformed("DataRow (its columns differ from the RowDescription)");
    let n = be_i16(body, 0).and_then(|n| usize::try_from(n).ok()).ok_or_else(bad)?;
    if n != width {
        return Err(bad());
    }
    let mut at = 2usize;
    for _ in 0..n {
        let len = be_i32(body, at).ok_or_else(bad)?;
        at += 4;
        // -1 is NULL; no other length is below zero.
        if len != -1 {
            at = at.checked_add(usize::try_from(len).map_err(|_| bad())?).ok_or_else(bad)?;
        }
    }
    if at == body.len() { Ok(()) } else { Err(bad()) }
}

/// The column values of a DataRow (`None` = NULL).
pub fn data_row_values(body: &[u8]) -> Result<Vec<Option<&[u8]>>, WireError> {
    let n = be_i16(body, 0).ok_or_else(|| malformed("DataRow"))?;
    let n = usize::try_from(n).map_err(|_| malformed("DataRow"))?;
    let mut at = 2usize;
    let mut out = Vec::with_capacity(n.min(1600));
    for _ in 0..n {
        let len = be_i32(body, at).ok_or_else(|| malformed("DataRow"))?;
        at += 4;
        if len < 0 {
            out.push(None);
            continue;
        }
        let len = usize::try_from(len).map_err(|_| malformed("DataRow"))?;
        let end = at.checked_add(len).ok_or_else(|| malformed("DataRow"))?;
        out.push(Some(body.get(at..end).ok_or_else(|| malformed("DataRow"))?));
        at = end;
    }
    if at != body.len() {
        return Err(malformed("DataRow"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_row_is_checked_against_its_width_whole() {
        let row = data_row([Some(&b"1"[..]), None].into_iter());
        let body = &row[5..];
        assert!(check_data_row(body, 2).is_ok());
        assert!(check_data_row(body, 1).is_err(), "one column more than described");
        assert!(check_data_row(body, 3).is_err(), "one column fewer than described");
        let trailing = [body, b"zoe@example.com"].concat();
        assert!(check_data_row(&trailing, 2).is_err(), "bytes beyond the last column");
        assert!(check_data_row(&body[..body.len() - 1], 2).is_err(), "cut short");
        // A length below -1 is no NULL.
        let mut odd = 1i16.to_be_bytes().to_vec();
        odd.extend((-2i32).to_be_bytes());
        assert!(check_data_row(&odd, 1).is_err());
        assert!(check_data_row(&[], 0).is_err(), "no column count");
    }

    #[test]
    fn bind_result_formats_and_notifications() {
        // portal "p", statement "s", 1 param format (binary), 2 params (one NULL), 3 result formats.
        let mut b = b"p\0s\0".to_vec();
        b.extend_from_slice(&[0, 1, 0, 1, 0, 2]);
        b.extend_from_slice(&3i32.to_be_bytes());
        b.extend_from_slice(b"abc");
        b.extend_from_slice(&(-1i32).to_be_bytes());
        b.extend_from_slice(&[0, 3, 0, 0, 0, 1, 0, 0]);
        assert_eq!(bind_result_formats(&b).unwrap(), vec![0, 1, 0]);
        assert_eq!(bind_parameters(&b).unwrap(), vec![Some((1, &b"abc"[..])), None]);
        assert!(bind_parameters(&b[..12]).is_err());
        assert!(bind_result_formats(&b[..b.len() - 1]).is_err());
        let mut extra = b.clone();
        extra.push(0);
        assert!(bind_result_formats(&extra).is_err());
        let mut huge = b"\0\0".to_vec();
        huge.extend_from_slice(&[0, 0, 0, 1]);
        huge.extend_from_slice(&0x7fff_ffffi32.to_be_bytes());
        assert!(bind_result_formats(&huge).is_err());

        // Parse: name "s", text, two parameter types.
        let mut p = b"s\0SELECT $1, $2\0".to_vec();
        p.extend_from_slice(&[0, 2, 0, 0, 0, 23, 0, 0, 0, 25]);
        assert_eq!(parse_param_types(&p), vec![23, 25]);
        assert_eq!(parse_param_types(&p[..p.len() - 2]), vec![23]);
        assert!(parse_param_types(b"s\0").is_empty());

        let mut n = 7u32.to_be_bytes().to_vec();
        n.extend_from_slice(b"chan\0pay load\0");
        assert_eq!(notification(&n).unwrap(), (7, &b"chan"[..], &b"pay load"[..]));
        assert!(notification(&n[..n.len() - 1]).is_err());
    }

    #[test]
    fn startup_round_trip() {
        let params = vec![("user".to_owned(), "ana".to_owned()), ("database".to_owned(), "app".to_owned())];
        let raw = startup_message(&params);
        let (msg, n) = decode_startup(&raw).unwrap().unwrap();
        assert_eq!(n, raw.len());
        assert_eq!(msg, Startup::Startup { minor: 0, params });
        assert_eq!(decode_startup(raw.get(..5).unwrap()).unwrap(), None);
        assert_eq!(decode_startup(&ssl_request()).unwrap(), Some((Startup::Ssl, 8)));
        assert_eq!(decode_startup(&cancel_request(7, 9)).unwrap(), Some((Startup::Cancel { pid: 7, secret: 9 }, 16)));
    }

    #[test]
    fn absurd_lengths_are_errors_not_allocations() {
        let mut huge = 0x7fff_ffffu32.to_be_bytes().to_vec();
        huge.extend_from_slice(&PROTOCOL_3_0.to_be_bytes());
        assert!(matches!(decode_startup(&huge), Err(WireError::TooLarge { .. })));
        assert!(matches!(decode_startup(&[0, 0, 0, 2, 0, 0, 0, 0]), Err(WireError::BadLength { .. })));
        assert!(matches!(decode_startup(&[0xff, 0xff, 0xff, 0xff]), Err(WireError::BadLength { .. })));
        let mut q = vec![b'Q'];
        q.extend_from_slice(&0x7fff_fff0u32.to_be_bytes());
        assert!(matches!(decode(&q, 1 << 20), Err(WireError::TooLarge { .. })));
        assert!(matches!(decode(&[b'Q', 0, 0, 0, 3], 100), Err(WireError::BadLength { .. })));
        // Unterminated parameters.
        let mut bad = startup_message(&[("user".into(), "x".into())]);
        bad.truncate(bad.len() - 2);
        let len = u32::try_from(bad.len()).unwrap().to_be_bytes();
        bad[..4].copy_from_slice(&len);
        assert!(decode_startup(&bad).is_err());
    }

    #[test]
    fn frames_and_bodies() {
        let q = query("SELECT 1");
        let (f, n) = decode(&q, 1000).unwrap().unwrap();
        assert_eq!((f.tag, n), (b'Q', q.len()));
        assert_eq!(query_text(f.body).unwrap(), b"SELECT 1");
        let p = parse("SELECT $1");
        let (f, _) = decode(&p, 1000).unwrap().unwrap();
        assert_eq!(parse_body(f.body).unwrap(), (&b""[..], &b"SELECT $1"[..]));
        let e = PgError::new(Severity::Error, "42501", "no").hint("ask").encode();
        let (f, _) = decode(&e, 1000).unwrap().unwrap();
        let fields = error_fields(f.body).unwrap();
        assert!(fields.contains(&(b'C', &b"42501"[..])));
        assert!(fields.contains(&(b'H', &b"ask"[..])));
        let row = data_row([Some(&b"a"[..]), None, Some(&b""[..])].into_iter());
        let (f, _) = decode(&row, 1000).unwrap().unwrap();
        assert_eq!(data_row_values(f.body).unwrap(), vec![Some(&b"a"[..]), None, Some(&b""[..])]);
        assert_eq!(command_rows(b"INSERT 0 3\0"), Some(3));
        assert_eq!(command_rows(b"SELECT 12\0"), Some(12));
        assert_eq!(command_rows(b"BEGIN\0"), None);
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut x: u32 = 0x9e37_79b9;
        for len in 0..400usize {
            let buf: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x.to_le_bytes()[0]
                })
                .collect();
            let _ = decode_startup(&buf);
            if let Ok(Some((f, _))) = decode(&buf, 1 << 16) {
                let _ = row_description(f.body);
                let _ = data_row_values(f.body);
                let _ = error_fields(f.body);
                let _ = auth(f.body);
                let _ = parse_body(f.body);
                let _ = bind_names(f.body);
            }
            let _ = row_description(&buf);
            let _ = data_row_values(&buf);
            let _ = error_fields(&buf);
            let _ = auth(&buf);
        }
    }
}
