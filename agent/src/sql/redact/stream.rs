//! The client→backend byte stream as it is recorded: whole messages, Query
//! and Parse texts through [`super::redact`], parameters and COPY data
//! replaced or masked.

use std::borrow::Cow;

use super::{RecordOptions, Rules, redact_if_changed};
use crate::mask::{Counts, MaskOutput, Profile};

/// What recording the client's byte stream needs to know.
#[derive(Debug, Clone, Copy)]
pub struct StreamView<'a> {
    pub rules: &'a Rules,
    pub opts: RecordOptions,
    pub profile: Option<&'a Profile>,
    pub scs: bool,
}

/// The client→backend bytes as they are recorded: whole messages, each
/// Query and Parse text redacted ([`super::redact`]), Bind parameters, FunctionCall
/// arguments and CopyData replaced unless the rule records parameters (and
/// then masked). Bytes that need no change come back borrowed.
pub fn client_bytes<'b>(bytes: &'b [u8], v: &StreamView<'_>) -> Cow<'b, [u8]> {
    let mut out: Option<Vec<u8>> = None;
    let mut at = 0usize;
    while let Some(rest) = bytes.get(at..).filter(|r| !r.is_empty()) {
        let Some((tag, len)) = header(rest) else {
            // Not whole messages (cannot happen for what the relay writes): record nothing of the rest.
            let o = out.get_or_insert_with(|| bytes.get(..at).unwrap_or_default().to_vec());
            o.extend_from_slice(b"[unrecorded bytes]");
            break;
        };
        let raw = rest.get(..len).unwrap_or_default();
        let body = raw.get(5..).unwrap_or_default();
        let changed = match tag {
            b'Q' => query(body, v).map(|t| frame(b'Q', &t)),
            b'P' => parse(body, v),
            b'B' => bind(body, v),
            b'F' => function_call(body, v),
            b'd' => copy_data(body, v),
            _ => None,
        };
        match (changed, out.as_mut()) {
            (Some(c), Some(o)) => o.extend_from_slice(&c),
            (Some(c), None) => {
                let mut o = bytes.get(..at).unwrap_or_default().to_vec();
                o.extend_from_slice(&c);
                out = Some(o);
            }
            (None, Some(o)) => o.extend_from_slice(raw),
            (None, None) => {}
        }
        at += len;
    }
    out.map_or(Cow::Borrowed(bytes), Cow::Owned)
}

pub(super) fn header(b: &[u8]) -> Option<(u8, usize)> {
    let tag = *b.first()?;
    let len = u32::from_be_bytes(b.get(1..5)?.try_into().ok()?);
    let total = usize::try_from(len).ok()?.checked_add(1)?;
    (total >= 5 && total <= b.len()).then_some((tag, total))
}

pub(super) fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(body.len() + 5);
    f.push(tag);
    f.extend_from_slice(&u32::try_from(body.len() + 4).unwrap_or(u32::MAX).to_be_bytes());
    f.extend_from_slice(body);
    f
}

fn cstr(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let n = memchr::memchr(0, b)?;
    Some((b.get(..n)?, b.get(n + 1..)?))
}

/// A Query body's text redacted, if that changes it.
fn query(body: &[u8], v: &StreamView<'_>) -> Option<Vec<u8>> {
    let (text, _) = cstr(body)?;
    let text = std::str::from_utf8(text).ok()?;
    let r = redact_if_changed(text, v.rules, v.opts, v.scs)?;
    let mut b = r.text.into_bytes();
    b.push(0);
    Some(b)
}

fn parse(body: &[u8], v: &StreamView<'_>) -> Option<Vec<u8>> {
    let (name, rest) = cstr(body)?;
    let (text, types) = cstr(rest)?;
    let text = std::str::from_utf8(text).ok()?;
    let r = redact_if_changed(text, v.rules, v.opts, v.scs)?;
    let mut b = Vec::with_capacity(body.len());
    b.extend_from_slice(name);
    b.push(0);
    b.extend_from_slice(r.text.as_bytes());
    b.push(0);
    b.extend_from_slice(types);
    Some(frame(b'P', &b))
}

/// A value as recorded: not at all, or through the masking profile.
fn value(v: &StreamView<'_>, data: &[u8], out: &mut Vec<u8>) {
    if !v.opts.parameters {
        out.extend_from_slice(b"[redacted]");
        return;
    }
    let Some(p) = v.profile else {
        out.extend_from_slice(data);
        return;
    };
    let mut counts = Counts::default();
    let start = out.len();
    match p.scan(data, out, &mut counts) {
        MaskOutput::Unchanged => out.extend_from_slice(data),
        MaskOutput::Written => {}
        MaskOutput::Null => {
            out.truncate(start);
            out.extend_from_slice(b"****");
        }
    }
}

fn be16(b: &[u8], at: usize) -> Option<i16> {
    Some(i16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn be32(b: &[u8], at: usize) -> Option<i32> {
    Some(i32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Re-encodes `n` length-prefixed values starting at `at`, each through [`value`].
fn values(b: &[u8], mut at: usize, n: usize, v: &StreamView<'_>, out: &mut Vec<u8>) -> Option<usize> {
    for _ in 0..n {
        let len = be32(b, at)?;
        at += 4;
        if len < 0 {
            out.extend_from_slice(&(-1i32).to_be_bytes());
            continue;
        }
        let data = b.get(at..at.checked_add(usize::try_from(len).ok()?)?)?;
        at += data.len();
        let len_at = out.len();
        out.extend_from_slice(&[0; 4]);
        value(v, data, out);
        let written = i32::try_from(out.len() - len_at - 4).ok()?;
        out.get_mut(len_at..len_at + 4)?.copy_from_slice(&written.to_be_bytes());
    }
    Some(at)
}

fn bind(body: &[u8], v: &StreamView<'_>) -> Option<Vec<u8>> {
    if v.opts.parameters && v.profile.is_none() {
        return None;
    }
    let (portal, rest) = cstr(body)?;
    let (stmt, rest) = cstr(rest)?;
    let nfmt = usize::try_from(be16(rest, 0)?).ok()?;
    let mut at = 2 + 2 * nfmt;
    let nparams = usize::try_from(be16(rest, at)?).ok()?;
    let mut b = Vec::with_capacity(body.len());
    b.extend_from_slice(portal);
    b.push(0);
    b.extend_from_slice(stmt);
    b.push(0);
    b.extend_from_slice(rest.get(..at + 2)?);
    at += 2;
    at = values(rest, at, nparams, v, &mut b)?;
    b.extend_from_slice(rest.get(at..)?);
    Some(frame(b'B', &b))
}

fn function_call(body: &[u8], v: &StreamView<'_>) -> Option<Vec<u8>> {
    if v.opts.parameters && v.profile.is_none() {
        return None;
    }
    let nfmt = usize::try_from(be16(body, 4)?).ok()?;
    let mut at = 6 + 2 * nfmt;
    let nargs = usize::try_from(be16(body, at)?).ok()?;
    let mut b = body.get(..at + 2)?.to_vec();
    at += 2;
    at = values(body, at, nargs, v, &mut b)?;
    b.extend_from_slice(body.get(at..)?);
    Some(frame(b'F', &b))
}

fn copy_data(body: &[u8], v: &StreamView<'_>) -> Option<Vec<u8>> {
    if v.opts.parameters && v.profile.is_none() {
        return None;
    }
    if !v.opts.parameters {
        return Some(frame(b'd', format!("[COPY data not recorded: {} bytes]\n", body.len()).as_bytes()));
    }
    let mut out = Vec::with_capacity(body.len());
    value(v, body, &mut out);
    Some(frame(b'd', &out))
}
