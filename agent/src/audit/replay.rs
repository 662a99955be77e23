//! `gatehouse replay`: a recorded session, rendered as its user saw it.
//!
//! [`transcript`] is pure: it turns one session's records (chain order)
//! into timed lines. A PostgreSQL session reads like a psql transcript: each
//! statement after a prompt, then what the client received, decoded from the
//! backend→client bytes exactly as they were forwarded (already masked):
//! aligned tables, command tags, errors and notices, COPY data, and
//! Gatehouse's refusals with their reason. A TCP session shows each chunk
//! as text when it is printable, else as a `hexdump -C` style dump. Pauses,
//! truncations and missing bytes are always said, never papered over.
//! [`play`] prints the lines with their original pacing.
//!
//! Everything here reads untrusted input (the store, or an export): a body
//! that does not parse becomes a note in the transcript, every length is
//! bounded before it is shown, and control and bidirectional-formatting
//! characters from recorded data are escaped, so a replay can neither drive
//! the auditor's terminal nor hide text from them.

mod http;
mod mysql;
pub mod ssh;

use std::fmt::Write as _;
use std::io;
use std::time::Duration;

use rusqlite::Connection;

use super::chain::Record;
use super::verify::{RECORD_COLUMNS, record_from_row};
use super::{ChunkHeader, Direction, RecordKind, SessionClose, SessionOpen, StatementEnd, StatementStart, Truncation};
use crate::protocol::postgres::wire::{self, MAX_BACKEND_MESSAGE, MAX_CLIENT_MESSAGE};

/// Rows shown per result; the rest are counted, as `… N more rows`.
pub const MAX_ROWS: usize = 1000;
/// Characters shown per value.
const MAX_CELL_CHARS: usize = 1024;
/// Bytes of one chunk shown in a TCP session, and of COPY data per COPY.
const MAX_SHOWN_BYTES: usize = 64 * 1024;
/// Lines of COPY data shown per COPY.
const MAX_COPY_LINES: u64 = 1000;
/// A pause longer than this is said in the transcript.
const GAP_NOTE_US: i64 = 1_000_000;

/// Why a transcript cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The caller passed no records of any session.
    #[error("no records of a session were given")]
    Empty,
    /// The caller mixed sessions: a transcript is of one session.
    #[error("records of two sessions were given ({first} and {other})")]
    MixedSessions { first: String, other: String },
    /// The operator named a session the store does not hold.
    #[error("no recorded session matches {prefix:?}")]
    UnknownSession { prefix: String },
    /// The operator's prefix is not enough to pick one session.
    #[error("{prefix:?} matches several sessions: {candidates}")]
    Ambiguous { prefix: String, candidates: String },
    /// The store could not be read.
    #[error("reading the audit store: {source}")]
    Store {
        #[source]
        source: rusqlite::Error,
    },
}

fn store_err(source: rusqlite::Error) -> ReplayError {
    ReplayError::Store { source }
}

/// How [`play`] paces the transcript.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// 1.0 is real time; N is N times faster. Not a positive number: no waiting.
    pub speed: f64,
    /// Print everything at once.
    pub no_wait: bool,
    /// Cap on any single wait, so an idle hour replays in seconds.
    pub max_gap: Duration,
}

impl Default for ReplayOptions {
    fn default() -> Self {
        Self { speed: 1.0, no_wait: false, max_gap: Duration::from_secs(5) }
    }
}

/// One line (or block) of the transcript, with when it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// Microseconds since the Unix epoch: the time of the record it comes from.
    pub at_us: i64,
    /// The text, without a final newline (a block holds `\n` between its lines).
    pub text: String,
}

/// Finds the one session whose id is `prefix` or starts with it, among the
/// sessions of `visible_to` (a uid) or, with `None`, all of them. Someone
/// else's session answers exactly like one that does not exist, and an
/// ambiguous prefix lists only the caller's own candidates.
pub fn resolve_session(conn: &Connection, prefix: &str, visible_to: Option<u32>) -> Result<String, ReplayError> {
    let unknown = || ReplayError::UnknownSession { prefix: prefix.to_owned() };
    if prefix.is_empty() {
        return Err(unknown());
    }
    let found: Vec<String> = match visible_to {
        None => {
            let mut st = conn
                .prepare(
                    "SELECT DISTINCT session FROM events
                     WHERE session IS NOT NULL AND substr(session, 1, length(?1)) = ?1
                     ORDER BY session LIMIT 6",
                )
                .map_err(store_err)?;
            st.query_map([prefix], |r| r.get(0)).map_err(store_err)?.collect::<Result<_, _>>().map_err(store_err)?
        }
        Some(uid) => {
            let mut st = conn
                .prepare(
                    "SELECT id FROM sessions
                     WHERE uid = ?2 AND substr(id, 1, length(?1)) = ?1
                     ORDER BY id LIMIT 6",
                )
                .map_err(store_err)?;
            st.query_map(rusqlite::params![prefix, uid], |r| r.get(0))
                .map_err(store_err)?
                .collect::<Result<_, _>>()
                .map_err(store_err)?
        }
    };
    if found.iter().any(|s| s == prefix) {
        return Ok(prefix.to_owned());
    }
    match found.as_slice() {
        [] => Err(unknown()),
        [one] => Ok(one.clone()),
        many => Err(ReplayError::Ambiguous { prefix: prefix.to_owned(), candidates: many.join(", ") }),
    }
}

/// Reads one session's records, in chain order.
pub fn session_records(conn: &Connection, session: &str) -> Result<Vec<Record>, ReplayError> {
    let mut st = conn
        .prepare(&format!("SELECT {RECORD_COLUMNS} FROM events WHERE session = ?1 ORDER BY seq"))
        .map_err(store_err)?;
    let rows = st.query_map([session], record_from_row).map_err(store_err)?;
    rows.collect::<Result<_, _>>().map_err(store_err)
}

/// Builds the transcript of one session from its records (chain order).
/// Records without a session (checkpoints, agent start/stop) are skipped.
pub fn transcript(records: &[Record]) -> Result<Vec<Line>, ReplayError> {
    let mut session: Option<&str> = None;
    for s in records.iter().filter_map(|r| r.session.as_deref()) {
        match session {
            None => session = Some(s),
            Some(first) if first != s => {
                return Err(ReplayError::MixedSessions { first: first.to_owned(), other: s.to_owned() });
            }
            Some(_) => {}
        }
    }
    let Some(session) = session else { return Err(ReplayError::Empty) };
    let ours: Vec<&Record> = records.iter().filter(|r| r.session.is_some()).collect();
    let open = ours
        .iter()
        .find(|r| r.is(RecordKind::SessionOpen))
        .and_then(|r| serde_json::from_slice::<SessionOpen>(&r.body).ok());
    let postgres = match open.as_ref().and_then(|o| o.protocol.as_deref()) {
        Some(p) => p == "postgres",
        None => ours.iter().any(|r| r.is(RecordKind::Statement)),
    };
    let db = open
        .as_ref()
        .and_then(|o| o.backend.as_deref())
        .map(escape_all)
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| "db".to_owned());
    let start_us = ours.first().map_or(0, |r| r.time_us);
    let is_mysql = open.as_ref().and_then(|o| o.protocol.as_deref()) == Some("mysql");
    let mut r = Renderer::new(start_us, postgres, db);
    if is_mysql {
        r.mysql = Some(mysql::Screen::new(r.db.clone()));
    }
    if !ours.iter().any(|r| r.is(RecordKind::SessionOpen)) {
        r.push(
            start_us,
            format!("-- session {}: its opening record is not here (pruned, or not exported)", escape_all(session)),
        );
    }
    let mut screen = ssh::Screen::default();
    for rec in ours {
        if rec.is(RecordKind::Ssh) && !rec.redacted {
            for (at, text) in screen.record(rec) {
                r.push(at, text);
            }
        } else {
            r.record(rec);
        }
    }
    for (at, text) in screen.finish() {
        r.push(at, text);
    }
    r.finish();
    Ok(with_gaps(r.lines))
}

/// How long to wait before a line at `next_us` when the previous one was at `prev_us`.
pub fn wait_between(prev_us: i64, next_us: i64, opts: &ReplayOptions) -> Duration {
    if opts.no_wait || !opts.speed.is_finite() || opts.speed <= 0.0 {
        return Duration::ZERO;
    }
    let gap_us = next_us.saturating_sub(prev_us).max(0);
    let secs = gap_us as f64 / 1e6 / opts.speed;
    Duration::try_from_secs_f64(secs).unwrap_or(opts.max_gap).min(opts.max_gap)
}

/// Prints lines to `out`, sleeping between them per the options (speed N =
/// N× faster; `no_wait` = no sleeps; no single wait longer than `max_gap`).
pub fn play(lines: &[Line], opts: &ReplayOptions, out: &mut impl io::Write) -> io::Result<()> {
    let mut prev: Option<i64> = None;
    for l in lines {
        if let Some(p) = prev {
            let wait = wait_between(p, l.at_us, opts);
            if !wait.is_zero() {
                out.flush()?;
                std::thread::sleep(wait);
            }
        }
        out.write_all(l.text.as_bytes())?;
        out.write_all(b"\n")?;
        prev = Some(l.at_us);
    }
    out.flush()
}

/// Inserts a `-- 12.3 s later` line before any line that follows a pause.
fn with_gaps(lines: Vec<Line>) -> Vec<Line> {
    let mut out = Vec::with_capacity(lines.len());
    let mut prev: Option<i64> = None;
    for l in lines {
        if let Some(p) = prev {
            let gap = l.at_us.saturating_sub(p);
            if gap > GAP_NOTE_US {
                out.push(Line { at_us: l.at_us, text: format!("-- {} later", human_duration(gap)) });
            }
        }
        prev = Some(l.at_us);
        out.push(l);
    }
    out
}

/// `12.3 s`, `4 min 5 s`, `2 h 10 min`.
pub(crate) fn human_duration(us: i64) -> String {
    let us = us.max(0);
    if us < 60_000_000 {
        format!("{}.{} s", us / 1_000_000, (us % 1_000_000) / 100_000)
    } else if us < 3_600_000_000 {
        format!("{} min {} s", us / 60_000_000, (us % 60_000_000) / 1_000_000)
    } else {
        format!("{} h {} min", us / 3_600_000_000, (us % 3_600_000_000) / 60_000_000)
    }
}

/// A time as `2024-05-01 10:00:00.123 UTC`.
pub(crate) fn utc(us: i64) -> String {
    let fallback = || format!("{us} µs after the Unix epoch");
    let Ok(ts) = jiff::Timestamp::from_microsecond(us) else { return fallback() };
    let mut s = String::new();
    match write!(s, "{}", ts.strftime("%Y-%m-%d %H:%M:%S%.3f UTC")) {
        Ok(()) => s,
        Err(_) => fallback(),
    }
}

fn len64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

fn dir_label(d: Direction) -> &'static str {
    match d {
        Direction::Up => "client → backend",
        Direction::Down => "backend → client",
    }
}

/// Characters that must not reach a terminal as they are: controls (escape
/// sequences, carriage returns) and invisible or bidirectional formatting.
fn risky(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{ad}'
                | '\u{61c}'
                | '\u{180e}'
                | '\u{200b}'..='\u{200f}'
                | '\u{2028}'..='\u{202e}'
                | '\u{2060}'..='\u{206f}'
                | '\u{feff}'
        )
}

fn push_escaped(out: &mut String, c: char) {
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        c => out.extend(c.escape_default()),
    }
}

/// One line of recorded text: every risky character escaped. Everything a
/// CLI shows of what clients, servers or identity providers sent goes
/// through this (tables, approval requests, replays), so no recorded text
/// can move the operator's cursor, rewrite a line or reorder what it shows.
pub(crate) fn escape_all(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if risky(c) {
            push_escaped(&mut out, c);
        } else {
            out.push(c);
        }
    }
    out
}

/// A block of recorded text: line breaks and tabs kept, other risky characters escaped.
fn escape_block(s: &str) -> String {
    let s = s.replace("\r\n", "\n");
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if risky(c) && c != '\n' && c != '\t' {
            push_escaped(&mut out, c);
        } else {
            out.push(c);
        }
    }
    out
}

fn lossy(b: &[u8]) -> String {
    escape_all(&String::from_utf8_lossy(b))
}

/// A value as psql would show it, escaped and capped.
fn cell(v: Option<&[u8]>, binary: bool) -> String {
    match v {
        None => String::new(),
        Some(b) if binary => hex_value(b),
        Some(b) => match std::str::from_utf8(b) {
            Ok(s) => {
                let mut chars = s.char_indices();
                let cut = chars.nth(MAX_CELL_CHARS).map(|(i, _)| i);
                match cut.and_then(|i| s.get(..i)) {
                    Some(head) => format!("{}…", escape_all(head)),
                    None => escape_all(s),
                }
            }
            Err(_) => hex_value(b),
        },
    }
}

/// `\x0102…`, as psql shows bytea, capped.
fn hex_value(b: &[u8]) -> String {
    let shown = b.get(..MAX_CELL_CHARS / 2).unwrap_or(b);
    let mut s = format!("\\x{}", super::hex(shown));
    if shown.len() < b.len() {
        let _ = write!(s, "…({} bytes)", b.len());
    }
    s
}

/// OIDs of the types psql right-aligns.
fn numeric(type_oid: u32) -> bool {
    matches!(type_oid, 20 | 21 | 23 | 26 | 700 | 701 | 790 | 1700)
}

/// Recorded text when it is printable (UTF-8, no controls but line breaks and
/// tabs); carriage returns that are not line ends are escaped.
fn printable(bytes: &[u8], cut: bool) -> Option<String> {
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t,
        // The display cap split a character: show the whole ones.
        Err(e) if cut && e.error_len().is_none() => {
            bytes.get(..e.valid_up_to()).and_then(|b| std::str::from_utf8(b).ok())?
        }
        Err(_) => return None,
    };
    if text.chars().any(|c| risky(c) && !matches!(c, '\n' | '\r' | '\t')) {
        return None;
    }
    Some(escape_block(text))
}

/// `hexdump -C`, addressed by stream offset.
fn hexdump(out: &mut String, start: u64, bytes: &[u8]) {
    let mut off = start;
    for line in bytes.chunks(16) {
        let _ = write!(out, "\n{off:08x} ");
        for j in 0..16 {
            if j == 8 {
                out.push(' ');
            }
            match line.get(j) {
                Some(b) => {
                    let _ = write!(out, " {b:02x}");
                }
                None => out.push_str("   "),
            }
        }
        out.push_str("  |");
        out.extend(line.iter().map(|b| if b.is_ascii_graphic() || *b == b' ' { char::from(*b) } else { '.' }));
        out.push('|');
        off = off.saturating_add(16);
    }
}

/// One direction of a session's byte stream, as far as it is on record.
#[derive(Debug, Default)]
struct Stream {
    /// Offset the next chunk should start at.
    next: Option<u64>,
    /// The start of a message that continues in the next chunk (PostgreSQL).
    buf: Vec<u8>,
    /// A truncation record said the bytes up to the next chunk are missing.
    cut: bool,
}

impl Stream {
    /// Takes a chunk at `offset`; says so when bytes before it are missing
    /// (and no truncation record already did).
    fn advance(&mut self, dir: Direction, offset: u64, len: u64) -> Option<String> {
        let expected = self.next.unwrap_or(0);
        let cut = std::mem::replace(&mut self.cut, false);
        self.next = Some(offset.saturating_add(len));
        if offset == expected {
            return None;
        }
        self.buf.clear();
        if cut {
            return None;
        }
        Some(if offset > expected {
            format!(
                "-- {} bytes {} are not on record (stream offsets {expected}..{offset})",
                offset - expected,
                dir_label(dir)
            )
        } else {
            format!("-- a {} chunk at offset {offset} overlaps bytes already shown (up to {expected})", dir_label(dir))
        })
    }
}

/// A result being received: shown when it completes.
#[derive(Debug)]
struct Table {
    cols: Vec<Col>,
    rows: Vec<Vec<String>>,
    total: u64,
}

#[derive(Debug)]
struct Col {
    name: String,
    right: bool,
    binary: bool,
}

impl Table {
    fn new(cols: &[wire::Column]) -> Self {
        let cols = cols
            .iter()
            .map(|c| Col { name: escape_all(&c.name), right: numeric(c.type_oid), binary: c.format == 1 })
            .collect();
        Self { cols, rows: Vec::new(), total: 0 }
    }

    fn push(&mut self, values: &[Option<&[u8]>]) {
        self.total += 1;
        if self.rows.len() >= MAX_ROWS {
            return;
        }
        // DataRows without their RowDescription (it was not recorded): text, unnamed.
        while self.cols.len() < values.len() {
            self.cols.push(Col { name: "?column?".into(), right: false, binary: false });
        }
        let row = values.iter().zip(&self.cols).map(|(v, c)| cell(*v, c.binary)).collect();
        self.rows.push(row);
    }

    /// psql's aligned format, with a `(N rows)` footer and an optional note.
    fn render(&self, note: Option<&str>) -> String {
        let mut out = String::new();
        if self.cols.is_empty() {
            out.push_str("--\n");
        } else {
            let width = |s: &str| s.chars().count();
            let mut widths: Vec<usize> = self.cols.iter().map(|c| width(&c.name)).collect();
            for row in &self.rows {
                for (w, v) in widths.iter_mut().zip(row) {
                    *w = (*w).max(width(v));
                }
            }
            let header: Vec<String> = self
                .cols
                .iter()
                .zip(&widths)
                .map(|(c, w)| {
                    let pad = w.saturating_sub(width(&c.name));
                    format!("{}{}{}", " ".repeat(pad / 2), c.name, " ".repeat(pad - pad / 2))
                })
                .collect();
            push_row(&mut out, &header);
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(w + 2)).collect();
            out.push_str(&rule.join("+"));
            out.push('\n');
            for row in &self.rows {
                let cells: Vec<String> = self
                    .cols
                    .iter()
                    .zip(&widths)
                    .enumerate()
                    .map(|(i, (c, w))| {
                        let v = row.get(i).map_or("", String::as_str);
                        if c.right { format!("{v:>w$}") } else { format!("{v:<w$}") }
                    })
                    .collect();
                push_row(&mut out, &cells);
            }
        }
        let shown = len64(self.rows.len());
        if self.total > shown {
            let _ = writeln!(out, "… {} more rows not shown", self.total - shown);
        }
        let _ = write!(out, "({} {})", self.total, if self.total == 1 { "row" } else { "rows" });
        if let Some(n) = note {
            out.push('\n');
            out.push_str(n);
        }
        out
    }
}

fn push_row(out: &mut String, cells: &[String]) {
    let line = format!(" {} ", cells.join(" | "));
    out.push_str(line.trim_end());
    out.push('\n');
}

/// COPY data being shown (either direction).
#[derive(Debug)]
struct CopyBlock {
    /// COPY FROM STDIN: the client sends the data.
    input: bool,
    text: String,
    lines: u64,
    hidden: u64,
}

impl CopyBlock {
    fn new(input: bool) -> Self {
        Self { input, text: String::new(), lines: 0, hidden: 0 }
    }

    fn push(&mut self, data: &[u8]) {
        let s = String::from_utf8_lossy(data);
        for line in s.split_inclusive('\n') {
            self.lines += 1;
            if self.lines <= MAX_COPY_LINES && self.text.len() < MAX_SHOWN_BYTES {
                self.text.push_str(&escape_block(line));
            } else {
                self.hidden += 1;
            }
        }
    }

    fn render(&self) -> String {
        let mut out = self.text.trim_end_matches('\n').to_owned();
        if self.hidden > 0 {
            let _ = write!(out, "\n… {} more lines not shown", self.hidden);
        }
        if self.input {
            out.push_str("\n\\.");
        }
        out
    }
}

/// What a statement's end record says, shown once its results are.
#[derive(Debug)]
struct Footer {
    end: StatementEnd,
    /// An ErrorResponse was shown since: the error need not be repeated.
    error_shown: bool,
    /// Its results were cut by the recording cap.
    truncated: bool,
}

impl Footer {
    fn render(&self) -> String {
        let d = self.end.duration_us;
        let mut out = format!("Time: {}.{:03} ms", d / 1000, d % 1000);
        if let Some(m) = &self.end.masked {
            let counts = match serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(m) {
                Ok(map) => map.iter().map(|(k, v)| format!("{} {v}", escape_all(k))).collect::<Vec<_>>().join(", "),
                Err(_) => escape_all(m),
            };
            let _ = write!(out, "\n-- values masked by Gatehouse: {counts}");
        }
        if let Some(e) = self.end.error.as_deref().filter(|_| !self.error_shown) {
            let _ = write!(out, "\n-- the statement ended with: {}", escape_all(e));
        }
        if let Some(rows) = self.end.rows.filter(|_| self.truncated) {
            let _ = write!(out, "\n-- the backend returned {rows} rows in all");
        }
        out
    }
}

/// Turns records into lines, keeping the state of both streams.
#[derive(Debug)]
struct Renderer {
    lines: Vec<Line>,
    start_us: i64,
    postgres: bool,
    /// The name in the prompt: the backend's.
    db: String,
    /// Transaction status from the last ReadyForQuery (`I`, `T` or `E`).
    txn: u8,
    up: Stream,
    down: Stream,
    table: Option<Table>,
    copy: Option<CopyBlock>,
    footers: Vec<Footer>,
    /// The backend→client recording was cut since the last statement.
    down_cut: bool,
    closed: bool,
    /// A MySQL session: statements and answers as the `mariadb` client shows them.
    mysql: Option<mysql::Screen>,
}

impl Renderer {
    fn new(start_us: i64, postgres: bool, db: String) -> Self {
        Self {
            lines: Vec::new(),
            start_us,
            postgres,
            db,
            txn: b'I',
            up: Stream::default(),
            down: Stream::default(),
            table: None,
            copy: None,
            footers: Vec::new(),
            down_cut: false,
            closed: false,
            mysql: None,
        }
    }

    fn push(&mut self, at_us: i64, text: impl Into<String>) {
        self.lines.push(Line { at_us, text: text.into() });
    }

    fn record(&mut self, r: &Record) {
        let at = r.time_us;
        let unreadable = |e: serde_json::Error| {
            format!("-- record {} ({}) is unreadable: {}", r.seq, escape_all(&r.kind), escape_all(&e.to_string()))
        };
        if r.redacted {
            if self.lines.last().is_none_or(|l| !l.text.starts_with("-- [redacted]")) {
                self.push(at, "-- [redacted] the recorded content from here was removed (gatehouse redact)");
            }
            return;
        }
        // A statement with its end folded in: shown as the two records it stands for.
        if let Some((start, end)) = super::fold::split(r) {
            self.record(&start);
            self.record(&end);
            return;
        }
        match r.record_kind() {
            Some(RecordKind::Redaction) => match serde_json::from_slice::<super::Redaction>(&r.body) {
                Ok(x) => self.push(
                    at,
                    format!(
                        "-- redaction: the content of {} records of this session was removed by uid {}: {}",
                        x.count(),
                        x.by_uid,
                        escape_all(&x.reason)
                    ),
                ),
                Err(e) => self.push(at, unreadable(e)),
            },
            Some(RecordKind::BackendLogin) => match serde_json::from_slice::<super::BackendLogin>(&r.body) {
                Ok(l) => {
                    let db = l.database.as_deref().map(escape_all);
                    // The client's login database names the prompt, as it does for the client.
                    if let (Some(m), Some(db)) = (self.mysql.as_mut(), &db) {
                        m.db.clone_from(db);
                    }
                    let db = db.map(|d| format!(", database {d}")).unwrap_or_default();
                    self.push(
                        at,
                        format!(
                            "-- logged in to the backend as {}{db} (TLS: {}; auth: {})",
                            escape_all(&l.user),
                            escape_all(&l.tls_summary()),
                            escape_all(&l.auth)
                        ),
                    );
                }
                Err(e) => self.push(at, unreadable(e)),
            },
            Some(RecordKind::SessionOpen) => match serde_json::from_slice::<SessionOpen>(&r.body) {
                Ok(o) => self.open(at, &o),
                Err(e) => self.push(at, unreadable(e)),
            },
            Some(RecordKind::SessionClose) => match serde_json::from_slice::<SessionClose>(&r.body) {
                Ok(c) => self.close(at, &c),
                Err(e) => self.push(at, unreadable(e)),
            },
            // A statement's records may carry the stream bytes sent with them
            // (folded instead of chunk records): shown as chunks, after.
            Some(RecordKind::Statement) => match serde_json::from_slice::<StatementStart>(&r.body) {
                Ok(s) => {
                    self.mysql_flush(at, None);
                    self.statement(at, &s);
                    if let Some(offset) = s.up_offset {
                        self.chunk(
                            at,
                            &ChunkHeader { dir: Direction::Up, offset },
                            r.data.as_deref().unwrap_or_default(),
                        );
                    }
                }
                Err(e) => self.push(at, unreadable(e)),
            },
            Some(RecordKind::StatementEnd) => match serde_json::from_slice::<StatementEnd>(&r.body) {
                Ok(end) if self.mysql.is_some() => {
                    if let Some(offset) = end.down_offset {
                        let h = ChunkHeader { dir: Direction::Down, offset };
                        self.chunk(at, &h, r.data.as_deref().unwrap_or_default());
                    }
                    self.mysql_flush(at, Some(&end));
                }
                Ok(end) => {
                    let folded = end.down_offset;
                    self.footers.push(Footer { end, error_shown: false, truncated: self.down_cut });
                    if let Some(offset) = folded {
                        let h = ChunkHeader { dir: Direction::Down, offset };
                        self.chunk(at, &h, r.data.as_deref().unwrap_or_default());
                    }
                }
                Err(e) => self.push(at, unreadable(e)),
            },
            Some(RecordKind::Chunk) => match serde_json::from_slice::<ChunkHeader>(&r.body) {
                Ok(h) => self.chunk(at, &h, r.data.as_deref().unwrap_or_default()),
                Err(e) => self.push(at, unreadable(e)),
            },
            Some(RecordKind::Http) => match serde_json::from_slice::<super::HttpExchange>(&r.body) {
                Ok(h) => {
                    let text = http::exchange(&h, r.data.as_deref().unwrap_or_default());
                    self.push(at, text);
                }
                Err(e) => self.push(at, unreadable(e)),
            },
            Some(RecordKind::WsFrame) => match serde_json::from_slice::<super::WsFrame>(&r.body) {
                Ok(f) => {
                    let text = http::frame(&f, r.data.as_deref().unwrap_or_default());
                    self.push(at, text);
                }
                Err(e) => self.push(at, unreadable(e)),
            },
            Some(RecordKind::Truncated) => match serde_json::from_slice::<Truncation>(&r.body) {
                Ok(t) => self.truncated(at, &t),
                Err(e) => self.push(at, unreadable(e)),
            },
            // Kinds replay does not show, and kinds this build does not know.
            _ => {
                let text = format!("-- record {}: {} (not shown)", r.seq, escape_all(&r.kind));
                self.push(at, text);
            }
        }
    }

    fn open(&mut self, at: i64, o: &SessionOpen) {
        let mut t = format!(
            "-- Gatehouse session {} ({})",
            o.id,
            escape_all(o.protocol.as_deref().unwrap_or(if self.postgres { "postgres" } else { "tcp" }))
        );
        let user = o.user.as_deref().map_or_else(|| "(no user name)".to_owned(), escape_all);
        let ids: Vec<String> =
            [o.uid.map(|u| format!("uid {u}")), o.gid.map(|g| format!("gid {g}"))].into_iter().flatten().collect();
        if ids.is_empty() {
            let _ = write!(t, "\n-- user:     {user}");
        } else {
            let _ = write!(t, "\n-- user:     {user} ({})", ids.join(", "));
        }
        if o.comm.is_some() || o.pid.is_some() {
            let comm = o.comm.as_deref().map_or_else(|| "?".to_owned(), escape_all);
            let pid = o.pid.map_or_else(|| "?".to_owned(), |p| p.to_string());
            let _ = write!(t, "\n-- process:  {comm} (pid {pid})");
        }
        let _ = write!(t, "\n-- client:   {}", escape_all(&o.client));
        match (o.backend.as_deref(), o.orig_dst.as_deref()) {
            (Some(b), Some(d)) => {
                let _ = write!(t, "\n-- backend:  {} at {}", escape_all(b), escape_all(d));
            }
            (Some(b), None) => {
                let _ = write!(t, "\n-- backend:  {}", escape_all(b));
            }
            (None, Some(d)) => {
                let _ = write!(t, "\n-- dialed:   {}", escape_all(d));
            }
            (None, None) => {}
        }
        let _ = write!(t, "\n-- started:  {}", utc(o.started_us));
        let rule = o.rule.as_deref().map(|r| format!(", rule \"{}\"", escape_all(r))).unwrap_or_default();
        let refused = if o.decision.allowed() { "" } else { " (the session was refused)" };
        let _ = write!(t, "\n-- decision: {}{refused}{rule}: {}", o.decision, escape_all(&o.reason));
        self.push(at, t);
    }

    fn close(&mut self, at: i64, c: &SessionClose) {
        self.mysql_flush(at, None);
        self.end_table(at, Some("(result incomplete: the session ended)"));
        self.end_copy(at);
        self.flush_footers(at);
        let text = format!(
            "-- session ended {} after {}: {}\n-- {} bytes client → backend, {} bytes backend → client",
            utc(c.ended_us),
            human_duration(c.ended_us.saturating_sub(self.start_us)),
            escape_all(&c.end_reason),
            c.bytes_up,
            c.bytes_down
        );
        self.push(at, text);
        self.closed = true;
    }

    fn finish(&mut self) {
        let at = self.lines.last().map_or(self.start_us, |l| l.at_us);
        self.mysql_flush(at, None);
        self.end_table(at, Some("(result incomplete: the recording ends here)"));
        self.end_copy(at);
        self.flush_footers(at);
        if !self.closed {
            self.push(at, "-- end of the recording: the session's end is not on record (still open, or cut off)");
        }
    }

    fn prompt(&self, continued: bool) -> String {
        let state = match self.txn {
            b'T' => "*",
            b'E' => "!",
            _ => "",
        };
        format!("{}{}{state}>", self.db, if continued { "-" } else { "=" })
    }

    /// Shows the MySQL answer gathered so far (it is complete).
    fn mysql_flush(&mut self, at: i64, end: Option<&StatementEnd>) {
        if let Some(text) = self.mysql.as_mut().and_then(|m| m.flush(end)) {
            self.push(at, text);
        }
    }

    fn statement(&mut self, at: i64, s: &StatementStart) {
        self.down_cut = false;
        let mut block = match self.mysql.as_mut() {
            Some(m) => m.statement(&s.text),
            None => {
                let text = escape_block(s.text.trim_end());
                let mut block = String::new();
                for (i, line) in text.split('\n').enumerate() {
                    if i > 0 {
                        block.push('\n');
                    }
                    let _ = write!(block, "{} {line}", self.prompt(i > 0));
                }
                if !text.ends_with(';') {
                    block.push(';');
                }
                block
            }
        };
        if s.decision == super::Verdict::Approval && s.reason.is_none() {
            // Held, then approved: it ran (the `approval` records say by whom).
            let rule = s.rule.as_deref().map(|r| format!(" (rule \"{}\")", escape_all(r))).unwrap_or_default();
            let _ = write!(block, "\n-- held for approval{rule}, and approved");
        } else if !s.decision.allowed() {
            let rule = s.rule.as_deref().map(|r| format!(" (rule \"{}\")", escape_all(r))).unwrap_or_default();
            let reason = s.reason.as_deref().map_or_else(|| "no reason recorded".to_owned(), escape_all);
            let what =
                if s.decision == super::Verdict::Approval { "held for approval" } else { "refused by Gatehouse" };
            let _ = write!(block, "\n-- {what}{rule}: {reason}");
        }
        self.push(at, block);
    }

    fn truncated(&mut self, at: i64, t: &Truncation) {
        if let Some(m) = self.mysql.as_mut() {
            match t.dir {
                Direction::Down => m.cut(),
                Direction::Up => m.lost_up(),
            }
        }
        let stream = self.stream(t.dir);
        stream.cut = true;
        stream.buf.clear();
        if t.dir == Direction::Down {
            self.end_table(at, Some("(further rows were not recorded)"));
            self.down_cut = true;
            for f in &mut self.footers {
                f.truncated = true;
            }
        }
        let stmt = t.statement.map(|s| format!(", statement {s}")).unwrap_or_default();
        let text = format!("-- recording truncated here: {} ({}{stmt})", escape_all(&t.reason), dir_label(t.dir));
        self.push(at, text);
    }

    fn stream(&mut self, dir: Direction) -> &mut Stream {
        match dir {
            Direction::Up => &mut self.up,
            Direction::Down => &mut self.down,
        }
    }

    fn chunk(&mut self, at: i64, h: &ChunkHeader, data: &[u8]) {
        if let Some(note) = self.stream(h.dir).advance(h.dir, h.offset, len64(data.len())) {
            if h.dir == Direction::Down {
                self.end_table(at, Some("(result incomplete: bytes are missing)"));
            }
            self.push(at, note);
            if let Some(m) = self.mysql.as_mut() {
                match h.dir {
                    Direction::Down => m.cut(),
                    Direction::Up => m.lost_up(),
                }
            }
        }
        if let Some(m) = self.mysql.as_mut() {
            match h.dir {
                Direction::Up => {
                    // A new command: the answer before it is complete.
                    self.mysql_flush(at, None);
                    if let Some(m) = self.mysql.as_mut() {
                        m.up(data);
                    }
                }
                Direction::Down => m.down(data),
            }
        } else if self.postgres {
            self.decode(at, h.dir, data);
        } else {
            self.raw_chunk(at, h, data);
        }
    }

    /// A TCP chunk: text when printable, else a hex dump.
    fn raw_chunk(&mut self, at: i64, h: &ChunkHeader, data: &[u8]) {
        let arrow = match h.dir {
            Direction::Up => ">>>",
            Direction::Down => "<<<",
        };
        let rel = at.saturating_sub(self.start_us).max(0);
        let mut t = format!(
            "{arrow} {} {} bytes at +{}.{:03} s",
            dir_label(h.dir),
            data.len(),
            rel / 1_000_000,
            (rel % 1_000_000) / 1000
        );
        let shown = data.get(..MAX_SHOWN_BYTES).unwrap_or(data);
        let cut = shown.len() < data.len();
        match printable(shown, cut) {
            Some(text) => {
                t.push('\n');
                t.push_str(text.trim_end_matches('\n'));
            }
            None => hexdump(&mut t, h.offset, shown),
        }
        if cut {
            let _ = write!(t, "\n… {} more bytes not shown", data.len() - shown.len());
        }
        self.push(at, t);
    }

    /// Decodes whole PostgreSQL messages; a message may continue in the next chunk.
    fn decode(&mut self, at: i64, dir: Direction, data: &[u8]) {
        let stream = self.stream(dir);
        let mut buf = std::mem::take(&mut stream.buf);
        let base = stream.next.unwrap_or(0).saturating_sub(len64(buf.len() + data.len()));
        buf.extend_from_slice(data);
        let max = match dir {
            Direction::Up => MAX_CLIENT_MESSAGE,
            Direction::Down => MAX_BACKEND_MESSAGE,
        };
        let mut pos = 0usize;
        while let Some(rest) = buf.get(pos..) {
            match wire::decode(rest, max) {
                Ok(Some((frame, n))) => {
                    match dir {
                        Direction::Down => self.backend_message(at, frame),
                        Direction::Up => self.client_message(at, frame),
                    }
                    pos += n;
                }
                Ok(None) => break,
                Err(e) => {
                    let text = format!(
                        "-- the {} stream cannot be decoded at offset {}: {e}; skipped to the next chunk",
                        dir_label(dir),
                        base.saturating_add(len64(pos))
                    );
                    self.push(at, text);
                    pos = buf.len();
                    break;
                }
            }
        }
        buf.drain(..pos.min(buf.len()));
        self.stream(dir).buf = buf;
    }

    fn end_table(&mut self, at: i64, note: Option<&str>) {
        if let Some(t) = self.table.take() {
            self.show_table(at, &t, note);
        }
    }

    /// A result, then an empty line, as psql prints it.
    fn show_table(&mut self, at: i64, t: &Table, note: Option<&str>) {
        self.push(at, t.render(note));
        self.push(at, "");
    }

    fn end_copy(&mut self, at: i64) {
        if let Some(c) = self.copy.take() {
            let text = c.render();
            self.push(at, text);
        }
    }

    fn flush_footers(&mut self, at: i64) {
        for f in std::mem::take(&mut self.footers) {
            let text = f.render();
            self.push(at, text);
        }
    }

    fn backend_message(&mut self, at: i64, f: wire::Frame<'_>) {
        match f.tag {
            b'T' => {
                self.end_table(at, Some("(result incomplete)"));
                match wire::row_description(f.body) {
                    Ok(cols) => self.table = Some(Table::new(&cols)),
                    Err(e) => self.push(at, format!("-- a RowDescription cannot be read: {e}")),
                }
            }
            b'D' => match wire::data_row_values(f.body) {
                Ok(values) => {
                    self.table.get_or_insert_with(|| Table::new(&[])).push(&values);
                }
                Err(e) => self.push(at, format!("-- a DataRow cannot be read: {e}")),
            },
            b'C' => {
                let tag = match wire::cstr(f.body) {
                    Some((t, _)) => lossy(t),
                    None => lossy(f.body),
                };
                if let Some(t) = self.table.take() {
                    self.show_table(at, &t, None);
                } else {
                    self.end_copy(at);
                    self.push(at, tag);
                }
            }
            b'E' => {
                self.end_table(at, Some("(the result ended with the error below)"));
                self.end_copy(at);
                for footer in &mut self.footers {
                    footer.error_shown = true;
                }
                self.push(at, error_text(f.body));
            }
            b'N' => self.push(at, error_text(f.body)),
            b'Z' => {
                self.txn = f.body.first().copied().unwrap_or(b'I');
                self.end_table(at, Some("(result incomplete)"));
                self.end_copy(at);
                self.flush_footers(at);
            }
            b'H' => self.copy = Some(CopyBlock::new(false)),
            b'G' => {
                self.push(at, "-- COPY FROM STDIN: the client sends the data");
                self.copy = Some(CopyBlock::new(true));
            }
            b'd' => {
                if let Some(c) = &mut self.copy {
                    c.push(f.body);
                }
            }
            b'A' => self.push(at, notification(f.body)),
            b's' => self.end_table(at, Some("(portal suspended: the client may fetch more rows)")),
            // Protocol bookkeeping psql does not show.
            b'I' | b'c' | b'1' | b'2' | b'3' | b'n' | b't' | b'S' | b'K' | b'R' | b'v' | b'W' => {}
            other => {
                let text = format!("-- backend message {:?} ({} bytes) not shown", char::from(other), f.body.len());
                self.push(at, text);
            }
        }
    }

    /// Statements come from their own records; here only what they do not say.
    fn client_message(&mut self, at: i64, f: wire::Frame<'_>) {
        match f.tag {
            b'd' => {
                if let Some(c) = self.copy.as_mut().filter(|c| c.input) {
                    c.push(f.body);
                }
            }
            b'f' => {
                self.end_copy(at);
                let msg = wire::cstr(f.body).map_or_else(|| lossy(f.body), |(m, _)| lossy(m));
                self.push(at, format!("-- the client aborted the COPY: {msg}"));
            }
            b'X' => self.push(at, "-- the client ended the session (Terminate)"),
            _ => {}
        }
    }
}

/// An ErrorResponse or NoticeResponse as psql prints it.
fn error_text(body: &[u8]) -> String {
    let fields = match wire::error_fields(body) {
        Ok(f) => f,
        Err(e) => return format!("-- an error or notice cannot be read: {e}"),
    };
    let get = |code: u8| fields.iter().find(|(c, _)| *c == code).map(|(_, v)| lossy(v));
    let severity = get(b'S').or_else(|| get(b'V')).unwrap_or_else(|| "ERROR".to_owned());
    let mut out = format!("{severity}:  {}", get(b'M').unwrap_or_default());
    if let Some(d) = get(b'D') {
        let _ = write!(out, "\nDETAIL:  {d}");
    }
    if let Some(h) = get(b'H') {
        let _ = write!(out, "\nHINT:  {h}");
    }
    out
}

/// A NotificationResponse (LISTEN/NOTIFY) as psql prints it.
fn notification(body: &[u8]) -> String {
    let pid = body.get(..4).and_then(|b| <[u8; 4]>::try_from(b).ok()).map(i32::from_be_bytes);
    let rest = body.get(4..).unwrap_or_default();
    let parsed = wire::cstr(rest).and_then(|(chan, after)| wire::cstr(after).map(|(payload, _)| (chan, payload)));
    match (pid, parsed) {
        (Some(pid), Some((chan, payload))) => format!(
            "Asynchronous notification \"{}\" with payload \"{}\" received from server process with PID {pid}.",
            lossy(chan),
            lossy(payload)
        ),
        _ => "-- a notification cannot be read".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::chain;
    use crate::protocol::postgres::wire::{PgError, Severity};
    use crate::types::SessionId;

    const SID: &str = "0192e0c4-5b7a-7cc0-8d1e-0123456789ab";
    const T0: i64 = 1_714_557_600_000_000; // 2024-05-01 10:00:00 UTC

    fn sid() -> SessionId {
        SessionId(SID.parse().unwrap())
    }

    /// Builds records as the writer would, chained.
    #[derive(Default)]
    struct Builder {
        records: Vec<Record>,
        up: u64,
        down: u64,
    }

    impl Builder {
        fn push(&mut self, time_us: i64, kind: &str, body: Vec<u8>, data: Option<Vec<u8>>) {
            let prev = self.records.last().map_or(chain::GENESIS, |r| r.hash);
            let seq = self.records.len() as u64 + 1;
            let content = chain::content_hash(&body, data.as_deref());
            let hash = chain::hash(&prev, seq, time_us, Some(SID), kind, &content);
            self.records.push(Record {
                seq,
                time_us,
                session: Some(SID.into()),
                kind: kind.into(),
                body,
                data,
                content_hash: content,
                redacted: false,
                prev_hash: prev,
                hash,
            });
        }

        fn json(&mut self, time_us: i64, kind: &str, v: &impl serde::Serialize) {
            self.push(time_us, kind, serde_json::to_vec(v).unwrap(), None);
        }

        fn open(&mut self, time_us: i64, protocol: &str) {
            let o = SessionOpen {
                id: sid(),
                started_us: time_us,
                uid: Some(1000),
                user: Some("alice".into()),
                gid: Some(1000),
                pid: Some(4242),
                comm: Some("psql".into()),
                cgroup_id: Some(77),
                client: "127.0.0.1:51234".into(),
                backend: Some("appdb".into()),
                orig_dst: Some("127.10.0.5:5432".into()),
                protocol: Some(protocol.into()),
                decision: crate::audit::Verdict::Allow,
                rule: Some("dba-read".into()),
                reason: "allowed by rule dba-read".into(),
                oidc: None,
            };
            self.json(time_us, "session_open", &o);
        }

        fn statement(&mut self, time_us: i64, seq: u64, text: &str, decision: &str, reason: Option<&str>) {
            let s = StatementStart {
                session: sid(),
                seq,
                started_us: time_us,
                text: text.into(),
                kinds: "select".into(),
                tables: "users".into(),
                decision: decision.parse().unwrap(),
                rule: Some("r1".into()),
                reason: reason.map(Into::into),
                redacted: 0,
                up_offset: None,
                up: Vec::new(),
                up_len: None,
                end: None,
            };
            self.json(time_us, "statement", &s);
        }

        fn end(&mut self, time_us: i64, seq: u64, rows: Option<u64>, masked: Option<&str>) {
            let e = StatementEnd {
                session: sid(),
                seq,
                ended_us: time_us,
                rows,
                duration_us: 1234,
                error: None,
                masked: masked.map(Into::into),
                tags: None,
                down_offset: None,
                down: Vec::new(),
            };
            self.json(time_us, "statement_end", &e);
        }

        fn chunk(&mut self, time_us: i64, dir: Direction, data: Vec<u8>) {
            let counter = match dir {
                Direction::Up => &mut self.up,
                Direction::Down => &mut self.down,
            };
            let offset = *counter;
            *counter += data.len() as u64;
            let body = serde_json::to_vec(&ChunkHeader { dir, offset }).unwrap();
            self.push(time_us, "chunk", body, Some(data));
        }

        fn close(&mut self, time_us: i64) {
            let c = SessionClose {
                id: sid(),
                ended_us: time_us,
                bytes_up: self.up,
                bytes_down: self.down,
                end_reason: "closed".into(),
            };
            self.json(time_us, "session_close", &c);
        }
    }

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&u32::try_from(body.len() + 4).unwrap().to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    /// A RowDescription: (name, type oid, format).
    fn row_description(cols: &[(&str, u32, i16)]) -> Vec<u8> {
        let mut b = i16::try_from(cols.len()).unwrap().to_be_bytes().to_vec();
        for (name, oid, format) in cols {
            b.extend_from_slice(name.as_bytes());
            b.push(0);
            b.extend_from_slice(&0u32.to_be_bytes()); // table oid
            b.extend_from_slice(&0i16.to_be_bytes()); // attnum
            b.extend_from_slice(&oid.to_be_bytes());
            b.extend_from_slice(&(-1i16).to_be_bytes()); // typlen
            b.extend_from_slice(&(-1i32).to_be_bytes()); // typmod
            b.extend_from_slice(&format.to_be_bytes());
        }
        msg(b'T', &b)
    }

    fn row(values: &[Option<&[u8]>]) -> Vec<u8> {
        wire::data_row(values.iter().copied())
    }

    fn complete(tag: &str) -> Vec<u8> {
        let mut b = tag.as_bytes().to_vec();
        b.push(0);
        msg(b'C', &b)
    }

    fn text(lines: &[Line]) -> String {
        lines.iter().map(|l| l.text.as_str()).collect::<Vec<_>>().join("\n")
    }

    #[test]
    fn a_postgres_session_reads_like_psql() {
        let mut b = Builder::default();
        b.open(T0, "postgres");
        b.statement(T0 + 100_000, 1, "SELECT id, name, avatar\nFROM users", "allow", None);
        b.chunk(T0 + 100_100, Direction::Up, wire::query("SELECT id, name, avatar FROM users"));
        b.end(T0 + 110_000, 1, Some(2), Some(r#"{"email":2}"#));
        let mut down = row_description(&[("id", 23, 0), ("name", 25, 0), ("avatar", 17, 1)]);
        down.extend(row(&[Some(b"1"), Some(b"alice"), Some(&[1, 2])]));
        down.extend(row(&[Some(b"10"), None, None]));
        down.extend(complete("SELECT 2"));
        down.extend(wire::ready_for_query(b'I'));
        // A message split across two chunks is still read.
        let (first, second) = down.split_at(down.len() - 9);
        b.chunk(T0 + 120_000, Direction::Down, first.to_vec());
        b.chunk(T0 + 120_500, Direction::Down, second.to_vec());
        // 12 s later, an INSERT inside a transaction.
        b.statement(T0 + 12_200_000, 2, "BEGIN", "allow", None);
        b.chunk(T0 + 12_200_100, Direction::Down, [complete("BEGIN"), wire::ready_for_query(b'T')].concat());
        b.statement(T0 + 12_300_000, 3, "INSERT INTO t VALUES (1);", "allow", None);
        b.chunk(T0 + 12_300_100, Direction::Down, [complete("INSERT 0 1"), wire::ready_for_query(b'T')].concat());
        // A refused statement: Gatehouse's reason, then the error the client got.
        b.statement(T0 + 12_400_000, 4, "DELETE FROM users", "deny", Some("deleting is not allowed"));
        let err = PgError::new(Severity::Error, "42501", "Gatehouse refused this statement").hint("ask a DBA");
        b.chunk(T0 + 12_400_100, Direction::Down, [err.encode(), wire::ready_for_query(b'E')].concat());
        b.close(T0 + 13_000_000);

        let lines = transcript(&b.records).unwrap();
        let out = text(&lines);
        for want in [
            "-- Gatehouse session 0192e0c4-5b7a-7cc0-8d1e-0123456789ab (postgres)",
            "-- user:     alice (uid 1000, gid 1000)",
            "-- process:  psql (pid 4242)",
            "-- backend:  appdb at 127.10.0.5:5432",
            "-- started:  2024-05-01 10:00:00.000 UTC",
            "-- decision: allow, rule \"dba-read\": allowed by rule dba-read",
            "appdb=> SELECT id, name, avatar\nappdb-> FROM users;",
            " id | name  | avatar\n----+-------+--------\n  1 | alice | \\x0102\n 10 |       |\n(2 rows)",
            " 10 |       |\n(2 rows)\n\nTime: 1.234 ms\n-- values masked by Gatehouse: email 2",
            "-- 12.0 s later",
            "appdb=> BEGIN;\nBEGIN",
            "appdb=*> INSERT INTO t VALUES (1);\nINSERT 0 1",
            "appdb=*> DELETE FROM users;\n-- refused by Gatehouse (rule \"r1\"): deleting is not allowed",
            "ERROR:  Gatehouse refused this statement\nHINT:  ask a DBA",
            "-- session ended 2024-05-01 10:00:13.000 UTC after 13.0 s: closed",
        ] {
            assert!(out.contains(want), "missing {want:?} in:\n{out}");
        }
        // The table comes after its statement, the timing after the table.
        let at = |s: &str| out.find(s).unwrap();
        assert!(at("appdb=> SELECT") < at("(2 rows)") && at("(2 rows)") < at("Time: 1.234 ms"));
        // Lines keep their record's time; the gap line sits at the later one.
        let gap = lines.iter().find(|l| l.text == "-- 12.0 s later").unwrap();
        assert_eq!(gap.at_us, T0 + 12_200_000);
    }

    #[test]
    fn results_are_capped_and_truncations_said() {
        let mut b = Builder::default();
        b.open(T0, "postgres");
        b.statement(T0 + 1, 1, "SELECT n FROM big", "allow", None);
        let mut down = row_description(&[("n", 23, 0)]);
        for n in 0..MAX_ROWS + 5 {
            down.extend(row(&[Some(n.to_string().as_bytes())]));
        }
        down.extend(complete("SELECT 1005"));
        down.extend(wire::ready_for_query(b'I'));
        b.chunk(T0 + 2, Direction::Down, down);
        // The next result is cut by the recording cap mid-message.
        b.statement(T0 + 3, 2, "SELECT n FROM bigger", "allow", None);
        b.end(T0 + 4, 2, Some(50_000), None);
        let mut down = row_description(&[("n", 23, 0)]);
        down.extend(row(&[Some(b"7")]));
        down.extend(row(&[Some(b"8")]));
        down.truncate(down.len() - 3);
        b.chunk(T0 + 5, Direction::Down, down);
        let t = Truncation {
            dir: Direction::Down,
            statement: Some(2),
            cap: 64,
            reason: "recording capped at 64 bytes per statement (record_max_bytes)".into(),
        };
        b.json(T0 + 6, "truncated", &t);
        // The next statement's results are on record again, further on.
        b.down += 1000;
        b.statement(T0 + 7, 3, "SELECT 1", "allow", None);
        b.chunk(T0 + 8, Direction::Down, [complete("SELECT 0"), wire::ready_for_query(b'I')].concat());
        let out = text(&transcript(&b.records).unwrap());
        assert!(out.contains("\n 999\n… 5 more rows not shown\n(1005 rows)"), "{out}");
        assert!(!out.contains("\n 1000\n"), "{out}");
        assert!(out.contains(" n\n---\n 7\n(1 row)\n(further rows were not recorded)"), "{out}");
        assert!(out.contains("-- recording truncated here: recording capped at 64 bytes"), "{out}");
        assert!(out.contains("-- the backend returned 50000 rows in all"), "{out}");
        assert!(!out.contains("not on record (stream offsets"), "the truncation explains the gap: {out}");
        assert!(out.contains("-- end of the recording: the session's end is not on record"), "{out}");
    }

    #[test]
    fn missing_bytes_and_garbage_are_said_not_hidden() {
        let mut b = Builder::default();
        b.open(T0, "postgres");
        b.chunk(T0 + 1, Direction::Down, [complete("SELECT 0")].concat());
        b.down += 40;
        b.chunk(T0 + 2, Direction::Down, vec![b'D', 0xff, 0xff, 0xff, 0xff]);
        b.chunk(T0 + 3, Direction::Down, complete("UPDATE 3"));
        b.close(T0 + 4);
        let out = text(&transcript(&b.records).unwrap());
        assert!(out.contains("-- 40 bytes backend → client are not on record (stream offsets 14..54)"), "{out}");
        assert!(out.contains("cannot be decoded at offset 54"), "{out}");
        assert!(out.contains("UPDATE 3"), "the next chunk is read again: {out}");
    }

    #[test]
    fn recorded_control_characters_are_escaped() {
        let mut b = Builder::default();
        b.open(T0, "postgres");
        b.statement(T0 + 1, 1, "SELECT '\u{1b}[2J' -- \u{202e}evil\r", "allow", None);
        let mut down = row_description(&[("x\u{1b}", 25, 0)]);
        down.extend(row(&[Some("a\u{1b}]0;pwned\u{7}\nb".as_bytes())]));
        down.extend(complete("SELECT 1"));
        b.chunk(T0 + 2, Direction::Down, down);
        let out = text(&transcript(&b.records).unwrap());
        assert!(!out.chars().any(|c| c == '\u{1b}' || c == '\u{7}' || c == '\u{202e}' || c == '\r'), "{out:?}");
        assert!(out.contains("a\\u{1b}]0;pwned\\u{7}\\nb"), "{out}");
        assert!(out.contains("\\u{202e}evil"), "{out}");
    }

    #[test]
    fn a_tcp_session_shows_text_and_hex() {
        let mut b = Builder::default();
        b.open(T0, "tcp");
        b.chunk(T0 + 120_000, Direction::Up, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec());
        b.chunk(T0 + 130_000, Direction::Down, (0u8..20).collect());
        b.chunk(T0 + 140_000, Direction::Down, b"\x1b[31mred".to_vec());
        b.close(T0 + 200_000);
        let out = text(&transcript(&b.records).unwrap());
        assert!(out.contains(">>> client → backend 27 bytes at +0.120 s\nGET / HTTP/1.1\nHost: x"), "{out}");
        assert!(out.contains("<<< backend → client 20 bytes at +0.130 s"), "{out}");
        let dump = format!(
            "\n00000000  00 01 02 03 04 05 06 07  08 09 0a 0b 0c 0d 0e 0f  |................|\n00000010  10 11 12 13{}|....|",
            " ".repeat(39)
        );
        assert!(out.contains(&dump), "{out}");
        // An escape sequence is never printed as text.
        assert!(out.contains("00000014  1b 5b 33 31 6d 72 65 64"), "{out}");
        assert!(out.contains("-- 27 bytes client → backend, 28 bytes backend → client"), "{out}");
    }

    #[test]
    fn one_session_at_a_time() {
        assert!(matches!(transcript(&[]), Err(ReplayError::Empty)));
        let mut b = Builder::default();
        b.open(T0, "tcp");
        let mut other = b.records[0].clone();
        other.session = Some("another".into());
        b.records.push(other);
        assert!(matches!(transcript(&b.records), Err(ReplayError::MixedSessions { .. })));
    }

    #[test]
    fn arbitrary_chunk_bytes_never_panic() {
        let mut x: u32 = 0x1234_5678;
        let mut b = Builder::default();
        b.open(T0, "postgres");
        for i in 0..300i64 {
            let len = usize::try_from(x % 64).unwrap();
            let data: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x.to_le_bytes()[0]
                })
                .collect();
            let dir = if i % 3 == 0 { Direction::Up } else { Direction::Down };
            b.chunk(T0 + i, dir, data);
        }
        b.push(T0 + 400, "chunk", b"{not json".to_vec(), None);
        let out = text(&transcript(&b.records).unwrap());
        assert!(out.contains("is unreadable"), "{out}");
    }

    #[test]
    fn arbitrary_mysql_packets_never_panic() {
        use crate::protocol::mysql::wire as my;
        let mut x: u32 = 0x9e37_79b9;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        };
        let mut b = Builder::default();
        b.open(T0, "mysql");
        for i in 0..400i64 {
            let mut data = Vec::new();
            for _ in 0..(next() % 6) {
                // Payloads that start like real ones (OK, ERR, EOF, column counts, lengths) more often than not.
                let len = usize::try_from(next() % 48).unwrap();
                let mut p: Vec<u8> = (0..len).map(|_| next().to_le_bytes()[0]).collect();
                if let Some(first) = p.first_mut() {
                    *first = [0x00, 0xff, 0xfe, 0x01, 0x02, 0xfb, 0xfc, 0x03][usize::try_from(next() % 8).unwrap()];
                }
                data.extend_from_slice(&my::frame(u8::try_from(next() % 4).unwrap(), &p));
            }
            // Cut anywhere, sometimes.
            if next() % 4 == 0 {
                data.truncate(usize::try_from(next()).unwrap() % (data.len() + 1));
            }
            match i % 5 {
                0 => b.statement(T0 + i, u64::try_from(i).unwrap(), "SELECT 1", "allow", None),
                1 => b.chunk(T0 + i, Direction::Up, data),
                4 => b.end(T0 + i, u64::try_from(i).unwrap(), Some(1), None),
                _ => b.chunk(T0 + i, Direction::Down, data),
            }
        }
        let out = text(&transcript(&b.records).unwrap());
        assert!(out.contains("MariaDB [appdb]> SELECT 1;"), "{out}");
    }

    #[test]
    fn play_paces_lines() {
        let lines = vec![
            Line { at_us: 0, text: "a".into() },
            Line { at_us: 2_000_000, text: "b\nc".into() },
            Line { at_us: 3_600_000_000, text: "d".into() },
        ];
        let opts = ReplayOptions { speed: 4.0, no_wait: false, max_gap: Duration::from_secs(5) };
        assert_eq!(wait_between(0, 2_000_000, &opts), Duration::from_millis(500));
        assert_eq!(wait_between(2_000_000, 3_600_000_000, &opts), Duration::from_secs(5));
        assert_eq!(wait_between(5, 1, &opts), Duration::ZERO);
        let never = ReplayOptions { speed: f64::NAN, ..opts.clone() };
        assert_eq!(wait_between(0, 2_000_000, &never), Duration::ZERO);
        let mut out = Vec::new();
        play(&lines, &ReplayOptions { no_wait: true, ..opts }, &mut out).unwrap();
        assert_eq!(out, b"a\nb\nc\nd\n");
    }

    #[test]
    fn stream_bytes_folded_into_a_statements_records_replay_like_chunks() {
        let up = wire::query("SELECT id FROM users");
        let down =
            [row_description(&[("id", 23, 0)]), row(&[Some(b"7")]), complete("SELECT 1"), wire::ready_for_query(b'I')]
                .concat();
        let mut chunked = Builder::default();
        chunked.open(T0, "postgres");
        chunked.statement(T0 + 100, 1, "SELECT id FROM users", "allow", None);
        chunked.chunk(T0 + 150, Direction::Up, up.clone());
        chunked.end(T0 + 200, 1, Some(1), Some(r#"{"email":1}"#));
        chunked.chunk(T0 + 250, Direction::Down, down.clone());
        chunked.close(T0 + 300);

        let mut folded = Builder::default();
        folded.open(T0, "postgres");
        let s = StatementStart {
            session: sid(),
            seq: 1,
            started_us: T0 + 100,
            text: "SELECT id FROM users".into(),
            kinds: "select".into(),
            tables: "users".into(),
            decision: crate::audit::Verdict::Allow,
            rule: Some("r1".into()),
            reason: None,
            redacted: 0,
            up_offset: Some(0),
            up: Vec::new(),
            up_len: None,
            end: None,
        };
        folded.push(T0 + 100, "statement", serde_json::to_vec(&s).unwrap(), Some(up.clone()));
        folded.up += up.len() as u64;
        let e = StatementEnd {
            session: sid(),
            seq: 1,
            ended_us: T0 + 200,
            rows: Some(1),
            duration_us: 1234,
            error: None,
            masked: Some(r#"{"email":1}"#.into()),
            tags: None,
            down_offset: Some(0),
            down: Vec::new(),
        };
        folded.push(T0 + 200, "statement_end", serde_json::to_vec(&e).unwrap(), Some(down.clone()));
        folded.down += down.len() as u64;
        folded.close(T0 + 300);

        // The statement and its end chained as one record, as the audit writer folds them.
        let mut one = Builder::default();
        one.open(T0, "postgres");
        let start_entry = super::super::journal::Entry::now(crate::audit::Event::Statement(Box::new(StatementStart {
            up: up.clone(),
            ..s.clone()
        })));
        let end_entry = super::super::journal::Entry::now(crate::audit::Event::StatementEnd(Box::new(StatementEnd {
            down: down.clone(),
            ..e.clone()
        })));
        let body = super::super::fold::body(&start_entry, &end_entry);
        one.push(T0 + 200, "statement", body, super::super::fold::data(&start_entry, &end_entry));
        one.up += up.len() as u64;
        one.down += down.len() as u64;
        one.close(T0 + 300);
        assert_eq!(one.records.len(), 3);

        let want = text(&transcript(&chunked.records).unwrap());
        let got = text(&transcript(&folded.records).unwrap());
        assert!(want.contains("(1 row)") && want.contains("SELECT id FROM users"), "{want}");
        assert!(want.contains("-- values masked by Gatehouse: email 1"), "{want}");
        // The only difference a reader may see is none: the same lines.
        let strip = |t: &str| t.lines().map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(strip(&got), strip(&want));
        assert_eq!(strip(&text(&transcript(&one.records).unwrap())), strip(&want));
    }

    /// A MySQL session: the query and its masked rows in a box, a refusal's ERR, a USE in the prompt.
    #[test]
    fn a_mysql_session_reads_like_the_mariadb_client() {
        use crate::protocol::mysql::wire as my;
        let put = |b: &mut Vec<u8>, s: u8, p: &[u8]| b.extend_from_slice(&my::frame(s, p));
        let lenenc = |p: &mut Vec<u8>, v: &[u8]| {
            my::put_lenenc(p, v.len());
            p.extend_from_slice(v);
        };
        let col = |name: &str, kind: u8| {
            let mut p = Vec::new();
            for f in ["def", "shop", "customers", "customers", name, name] {
                lenenc(&mut p, f.as_bytes());
            }
            p.extend_from_slice(&[0x0c, 45, 0, 0, 1, 0, 0, kind, 0, 0, 0, 0, 0]);
            p
        };
        let mut b = Builder::default();
        b.open(T0, "mysql");
        b.statement(T0 + 10, 1, "SELECT id, email FROM customers", "allow", None);
        b.chunk(T0 + 10, Direction::Up, my::frame(0, b"\x03SELECT id, email FROM customers"));
        let mut ans = Vec::new();
        put(&mut ans, 1, &[2]);
        put(&mut ans, 2, &col("id", 0x03));
        put(&mut ans, 3, &col("email", 0xfd));
        let mut row = Vec::new();
        lenenc(&mut row, b"1");
        lenenc(&mut row, b"****");
        put(&mut ans, 4, &row);
        put(&mut ans, 5, &[0xfe, 0, 0, 2, 0, 0, 0]);
        b.chunk(T0 + 20, Direction::Down, ans);
        b.end(T0 + 20, 1, Some(1), Some(r#"{"columns":1}"#));
        b.statement(T0 + 30, 2, "DROP TABLE victim", "deny", Some("drop is not allowed"));
        let err =
            my::frame(1, &my::err_payload(1227, "42000", "Gatehouse refused this statement: drop is not allowed"));
        b.chunk(T0 + 30, Direction::Down, err);
        b.statement(T0 + 40, 3, "USE shop", "allow", None);
        b.chunk(T0 + 40, Direction::Up, my::frame(0, b"\x03USE shop"));
        b.chunk(T0 + 40, Direction::Down, my::frame(1, &[0, 0, 0, 2, 0, 0, 0]));
        b.end(T0 + 40, 3, Some(0), None);
        b.statement(T0 + 50, 4, "SELECT 1", "allow", None);
        b.close(T0 + 60);
        let text: Vec<String> = transcript(&b.records).unwrap().into_iter().map(|l| l.text).collect();
        let all = text.join("\n");
        assert!(all.contains("MariaDB [appdb]> SELECT id, email FROM customers;"), "{all}");
        assert!(
            all.contains(
                "+----+-------+\n| id | email |\n+----+-------+\n|  1 | ****  |\n+----+-------+\n1 row in set (0.001 sec)\n-- values masked by Gatehouse: columns 1"
            ),
            "{all}"
        );
        assert!(
            all.contains(
                "MariaDB [appdb]> DROP TABLE victim;\n-- refused by Gatehouse (rule \"r1\"): drop is not allowed"
            ),
            "{all}"
        );
        assert!(all.contains("ERROR 1227 (42000): Gatehouse refused this statement: drop is not allowed"), "{all}");
        assert!(all.contains("Query OK, 0 rows affected (0.001 sec)"), "{all}");
        assert!(all.contains("MariaDB [shop]> SELECT 1;"), "the prompt follows USE: {all}");
    }
}
