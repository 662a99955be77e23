//! HTTP exchanges in a transcript, like `curl -v`: `>` the request line and
//! headers as received (credentials hidden), `<` the status and headers the
//! client got, the recorded bodies (after masking), and `*` notes: the
//! decision, what was done with credentials, what was masked, truncation.

use std::fmt::Write as _;

use super::{MAX_SHOWN_BYTES, escape_all, hexdump, printable};
use crate::audit::{HttpExchange, WsFrame};

/// The lines of one exchange.
pub(super) fn exchange(h: &HttpExchange, data: &[u8]) -> String {
    let mut t = String::new();
    let rule = h.rule.as_deref().map(|r| format!(" (rule \"{}\")", escape_all(r))).unwrap_or_default();
    let _ = write!(t, "* #{} {}{rule}, {} ms", h.seq, h.decision, h.duration_us / 1000);
    if let Some(r) = &h.reason {
        let _ = write!(t, ": {}", escape_all(r));
    }
    if let Some(c) = &h.credentials {
        let _ = write!(t, "\n* credentials: {}", escape_all(c));
    }
    let _ =
        write!(t, "\n> {} {} {}", escape_all(&h.method), escape_all(&h.target), escape_all(&http_version(&h.version)));
    for (k, v) in &h.request_headers {
        let _ = write!(t, "\n> {}: {}", escape_all(k), escape_all(v));
    }
    t.push_str("\n>");
    let split = usize::try_from(h.request_body_recorded).unwrap_or(usize::MAX).min(data.len());
    let (req_body, resp_body) = data.split_at(split);
    body(&mut t, req_body, h.request_bytes);
    match h.status {
        Some(s) => {
            let _ = write!(t, "\n< {} {s}", escape_all(&http_version(&h.version)));
            for (k, v) in &h.response_headers {
                let _ = write!(t, "\n< {}: {}", escape_all(k), escape_all(v));
            }
            t.push_str("\n<");
        }
        None => t.push_str("\n* no response"),
    }
    body(&mut t, resp_body, h.response_bytes);
    if let Some(m) = &h.masked {
        let list: Vec<String> = m.iter().map(|(k, v)| format!("{} {v}", escape_all(k))).collect();
        let _ = write!(t, "\n* masked: {}", list.join(", "));
    }
    if h.truncated {
        t.push_str("\n* a body was longer than record_max_bytes: only its start is on record");
    }
    if let Some(e) = &h.error {
        let _ = write!(t, "\n* error: {}", escape_all(e));
    }
    t
}

/// One WebSocket frame: `> ws text 5 bytes: hello`.
pub(super) fn frame(f: &WsFrame, data: &[u8]) -> String {
    let arrow = match f.dir {
        crate::audit::Direction::Up => '>',
        crate::audit::Direction::Down => '<',
    };
    let mut t = format!(
        "{arrow} ws {} {} bytes{}{}",
        escape_all(&f.opcode),
        f.len,
        if f.compressed { " (compressed, shown as sent)" } else { "" },
        if f.fin { "" } else { " (continued)" }
    );
    if !data.is_empty() {
        t.push_str(": ");
        let shown = data.get(..MAX_SHOWN_BYTES.min(data.len())).unwrap_or_default();
        match printable(shown, shown.len() < data.len()) {
            Some(s) => t.push_str(&s),
            None => hexdump(&mut t, 0, shown),
        }
    }
    t
}

fn http_version(v: &str) -> String {
    match v {
        "HTTP/2.0" => "HTTP/2".into(),
        other => other.to_owned(),
    }
}

fn body(t: &mut String, recorded: &[u8], total: u64) {
    if recorded.is_empty() {
        return;
    }
    let shown = recorded.get(..MAX_SHOWN_BYTES.min(recorded.len())).unwrap_or_default();
    t.push('\n');
    match printable(shown, shown.len() < recorded.len()) {
        Some(s) => t.push_str(&s),
        None => hexdump(t, 0, shown),
    }
    if (shown.len() as u64) < total {
        let _ = write!(t, "\n* ({} of {total} bytes shown)", shown.len());
    }
}
