//! SSH sessions in a transcript and as asciicast.
//!
//! In a transcript, each channel request is a `--` line with its decision;
//! a pty's output goes through a small line-oriented terminal (carriage
//! return, backspace, erase-line; every other escape sequence dropped) so
//! the replay shows the text lines the user saw, never the raw escape
//! sequences (a replay must not drive the auditor's terminal). Exec
//! output is shown escaped; sftp operations and exit statuses are lines.
//!
//! [`cast`] gives the pty channel's recording as asciicast v2 events:
//! output (`o`) with its timing, input (`i`) marked apart, and window
//! changes (`r`), for asciinema to play (it renders the raw output).

use std::collections::HashMap;
use std::fmt::Write as _;

use super::super::chain::Record;
use super::escape_all;
use crate::audit::{RecordKind, SshEvent, SshWhat};

/// Characters one screen line keeps.
const MAX_LINE: usize = 4096;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Escape {
    #[default]
    None,
    /// After ESC.
    Start,
    /// In a CSI sequence (`ESC [`).
    Csi,
    /// In a string (OSC, DCS…), until BEL or ESC \.
    Text,
    /// ESC inside a string.
    TextThenEsc,
}

/// One pty channel's current line.
#[derive(Debug, Default)]
struct Term {
    line: Vec<char>,
    cursor: usize,
    esc: Escape,
    csi: String,
    /// Bytes of a UTF-8 character cut between two records.
    pending: Vec<u8>,
}

impl Term {
    /// Feeds output; returns the lines it completed.
    fn feed(&mut self, data: &[u8]) -> Vec<String> {
        let mut bytes = std::mem::take(&mut self.pending);
        bytes.extend_from_slice(data);
        let (text, rest) = match std::str::from_utf8(&bytes) {
            Ok(t) => (t.to_owned(), Vec::new()),
            Err(e) if e.error_len().is_none() => {
                let (ok, cut) = bytes.split_at(e.valid_up_to());
                (String::from_utf8_lossy(ok).into_owned(), cut.to_vec())
            }
            Err(_) => (String::from_utf8_lossy(&bytes).into_owned(), Vec::new()),
        };
        self.pending = rest;
        let mut out = Vec::new();
        for c in text.chars() {
            self.char(c, &mut out);
        }
        out
    }

    fn char(&mut self, c: char, out: &mut Vec<String>) {
        match self.esc {
            Escape::Start => {
                self.esc = match c {
                    '[' => {
                        self.csi.clear();
                        Escape::Csi
                    }
                    ']' | 'P' | '_' | '^' | 'X' => Escape::Text,
                    _ => Escape::None,
                };
                return;
            }
            Escape::Csi => {
                if ('\u{40}'..='\u{7e}').contains(&c) {
                    self.esc = Escape::None;
                    self.csi_end(c);
                } else if self.csi.len() < 64 {
                    self.csi.push(c);
                }
                return;
            }
            Escape::Text => {
                self.esc = match c {
                    '\u{7}' => Escape::None,
                    '\u{1b}' => Escape::TextThenEsc,
                    _ => Escape::Text,
                };
                return;
            }
            Escape::TextThenEsc => {
                self.esc = if c == '\\' { Escape::None } else { Escape::Text };
                return;
            }
            Escape::None => {}
        }
        match c {
            '\u{1b}' => self.esc = Escape::Start,
            '\n' => out.push(self.take()),
            '\r' => self.cursor = 0,
            '\u{8}' => self.cursor = self.cursor.saturating_sub(1),
            '\t' => {
                let next = (self.cursor / 8 + 1) * 8;
                while self.cursor < next {
                    self.put(' ');
                }
            }
            c if c.is_control() => {}
            c => self.put(c),
        }
    }

    fn csi_end(&mut self, f: char) {
        let n = self.csi.trim_start_matches('?').split(';').next().and_then(|n| n.parse::<usize>().ok());
        match f {
            // Erase in line: from the cursor (0), to it (1), all (2).
            'K' => match n.unwrap_or(0) {
                0 => self.line.truncate(self.cursor),
                1 => self.line.iter_mut().take(self.cursor).for_each(|c| *c = ' '),
                _ => self.line.clear(),
            },
            'C' => self.cursor = (self.cursor + n.unwrap_or(1).max(1)).min(MAX_LINE),
            'D' => self.cursor = self.cursor.saturating_sub(n.unwrap_or(1).max(1)),
            'G' => self.cursor = n.unwrap_or(1).saturating_sub(1).min(MAX_LINE),
            _ => {}
        }
    }

    fn put(&mut self, c: char) {
        if self.cursor >= MAX_LINE {
            return;
        }
        while self.line.len() < self.cursor {
            self.line.push(' ');
        }
        if let Some(slot) = self.line.get_mut(self.cursor) {
            *slot = c;
        } else {
            self.line.push(c);
        }
        self.cursor += 1;
    }

    fn take(&mut self) -> String {
        self.cursor = 0;
        let s: String = std::mem::take(&mut self.line).into_iter().collect();
        s.trim_end().to_owned()
    }
}

/// The SSH part of a transcript: per channel, its terminal.
#[derive(Debug, Default)]
pub(super) struct Screen {
    terms: HashMap<u32, Term>,
    last_us: i64,
}

impl Screen {
    /// The lines one `ssh` record adds.
    pub(super) fn record(&mut self, r: &Record) -> Vec<(i64, String)> {
        let at = r.time_us;
        self.last_us = at;
        let e = match serde_json::from_slice::<SshEvent>(&r.body) {
            Ok(e) => e,
            Err(err) => {
                return vec![(
                    at,
                    format!("-- record {} (ssh) is unreadable: {}", r.seq, escape_all(&err.to_string())),
                )];
            }
        };
        let data = r.data.as_deref().unwrap_or_default();
        let ch = e.channel;
        let one = |t: String| vec![(at, t)];
        match e.what {
            SshWhat::Request { request, detail, decision, rule, reason, approval } => {
                let mut t = format!("-- ssh {}", escape_all(&request));
                if let Some(d) = detail {
                    let _ = write!(t, " {:?}", escape_all(&d));
                }
                let _ = write!(t, ": {}", decision);
                if let Some(r) = rule {
                    let _ = write!(t, " (rule \"{}\")", escape_all(&r));
                }
                if let Some(id) = approval {
                    let _ = write!(t, ", request {id}");
                }
                if !decision.allowed()
                    && let Some(why) = reason
                {
                    let _ = write!(t, ": {}", escape_all(&why));
                }
                one(t)
            }
            SshWhat::Pty { term, cols, rows } => {
                self.terms.insert(ch, Term::default());
                one(format!("-- pty {} {cols}x{rows}", escape_all(&term)))
            }
            SshWhat::Resize { cols, rows } => one(format!("-- window resized to {cols}x{rows}")),
            SshWhat::Io { stream, .. } if stream == "o" => match self.terms.get_mut(&ch) {
                Some(t) => t.feed(data).into_iter().map(|l| (at, escape_all(&l))).collect(),
                None => {
                    let text = String::from_utf8_lossy(data);
                    text.trim_end_matches('\n')
                        .split('\n')
                        .map(|l| (at, escape_all(l.trim_end_matches('\r'))))
                        .collect()
                }
            },
            SshWhat::Io { .. } => vec![],
            SshWhat::Exit { status, signal, output_bytes, truncated, .. } => {
                let mut lines = self.flush(ch, at);
                let how = match (status, signal) {
                    (Some(s), _) => format!("exit status {s}"),
                    (None, Some(sig)) => format!("killed by signal {}", escape_all(&sig)),
                    (None, None) => "ended without a status".to_owned(),
                };
                let cut = if truncated { ", recording truncated at record_max_bytes" } else { "" };
                lines.push((at, format!("-- {how} ({output_bytes} bytes of output{cut})")));
                lines
            }
            SshWhat::Sftp { op, path, target, mode, decision, reason, read_bytes, written_bytes, .. } => {
                let mut t = format!("-- sftp {} {:?}", escape_all(&op), escape_all(&path));
                if let Some(x) = target {
                    let _ = write!(t, " -> {:?}", escape_all(&x));
                }
                if let Some(m) = mode {
                    let _ = write!(t, " mode {m:o}");
                }
                if let Some(n) = read_bytes {
                    let _ = write!(t, " read {n} bytes");
                }
                if let Some(n) = written_bytes {
                    let _ = write!(t, " wrote {n} bytes");
                }
                let _ = write!(t, ": {}", decision);
                if let Some(why) = reason {
                    let _ = write!(t, ": {}", escape_all(&why));
                }
                one(t)
            }
        }
    }

    fn flush(&mut self, ch: u32, at: i64) -> Vec<(i64, String)> {
        match self.terms.get_mut(&ch) {
            Some(t) if !t.line.is_empty() => vec![(at, escape_all(&t.take()))],
            _ => vec![],
        }
    }

    /// Lines still open at the end of the records.
    pub(super) fn finish(&mut self) -> Vec<(i64, String)> {
        let at = self.last_us;
        let mut chans: Vec<u32> = self.terms.keys().copied().collect();
        chans.sort_unstable();
        chans.into_iter().flat_map(|c| self.flush(c, at)).collect()
    }
}

/// A pty channel's recording, for asciicast v2.
#[derive(Debug, Clone, PartialEq)]
pub struct Cast {
    pub width: u32,
    pub height: u32,
    pub term: String,
    /// (time µs, `o`/`i`/`r`, data).
    pub events: Vec<(i64, &'static str, String)>,
}

/// The first pty channel of an SSH session's records, if it had one.
pub fn cast(records: &[Record]) -> Option<Cast> {
    let mut chosen: Option<(u32, Cast)> = None;
    let mut pending: HashMap<&'static str, Vec<u8>> = HashMap::new();
    for r in records.iter().filter(|r| r.is(RecordKind::Ssh) && !r.redacted) {
        let Ok(e) = serde_json::from_slice::<SshEvent>(&r.body) else { continue };
        match (&mut chosen, e.what) {
            (None, SshWhat::Pty { term, cols, rows }) => {
                chosen = Some((e.channel, Cast { width: cols, height: rows, term, events: Vec::new() }));
            }
            (Some((ch, c)), SshWhat::Resize { cols, rows }) if *ch == e.channel => {
                c.events.push((r.time_us, "r", format!("{cols}x{rows}")));
            }
            (Some((ch, c)), SshWhat::Io { stream, .. }) if *ch == e.channel => {
                let kind = if stream == "i" { "i" } else { "o" };
                let buf = pending.entry(kind).or_default();
                buf.extend_from_slice(r.data.as_deref().unwrap_or_default());
                // Keep a UTF-8 character cut between records for the next event.
                let keep = match std::str::from_utf8(buf) {
                    Ok(_) => 0,
                    Err(err) if err.error_len().is_none() => buf.len() - err.valid_up_to(),
                    Err(_) => 0,
                };
                let rest = buf.split_off(buf.len() - keep);
                let text = String::from_utf8_lossy(buf).into_owned();
                *buf = rest;
                if !text.is_empty() {
                    c.events.push((r.time_us, kind, text));
                }
            }
            _ => {}
        }
    }
    chosen.map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::Term;

    #[test]
    fn the_terminal_keeps_text_and_drops_escapes() {
        let mut t = Term::default();
        let mut lines = t.feed(b"\x1b[?2004h$ echo hi\r\n");
        lines.extend(t.feed(b"hi\r\n\x1b]0;title\x07$ ab\x08c\x1b[K\r\n"));
        lines.extend(t.feed("caf\u{e9}".as_bytes().get(..4).unwrap_or_default()));
        lines.extend(t.feed("caf\u{e9}\n".as_bytes().get(4..).unwrap_or_default()));
        assert_eq!(lines, ["$ echo hi", "hi", "$ ac", "caf\u{e9}"]);
    }
}
