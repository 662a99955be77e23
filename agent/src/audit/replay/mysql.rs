//! A MySQL/MariaDB session, rendered as the `mariadb` client shows it:
//! `MariaDB [db]> statement;`, then its answer decoded from the recorded
//! backend→client packets (already masked): result sets as boxed tables
//! (text rows, and the binary rows of prepared statements decoded by
//! column type), `N rows in set`, `Query OK, N rows affected`,
//! `ERROR 1227 (42000): …`.
//!
//! The relay works in lockstep, so the packets recorded after one command
//! and before the next are that command's whole answer: they are gathered
//! ([`Screen::down`]) and decoded at once when the next command, the
//! statement's end record or the session's end arrives. Every length is
//! checked against the bytes there are; what does not decode becomes a
//! note, never a panic.

use std::fmt::Write as _;

use super::{MAX_CELL_CHARS, MAX_ROWS, escape_all, escape_block};
use crate::audit::StatementEnd;
use crate::protocol::mysql::{binary, wire};

/// Bytes of one answer kept for decoding; the rest is said, not shown.
const MAX_ANSWER: usize = 32 << 20;
/// Packets of one logical packet joined (16 MiB each).
const MAX_PARTS: usize = 4;
/// Status flag: another result set follows.
const MORE_RESULTS: u16 = wire::SERVER_MORE_RESULTS_EXISTS;
/// Column flag: UNSIGNED.
const UNSIGNED: u16 = 32;

/// What the replay keeps of a MySQL session between records.
#[derive(Debug, Default)]
pub(super) struct Screen {
    /// The name in the prompt: the database once a `USE` is seen, else the backend's.
    pub db: String,
    /// A `USE` that takes effect if its answer is OK.
    pending_use: Option<String>,
    /// The command whose answer is being gathered (its first byte).
    command: Option<u8>,
    /// Its parameter values, when recorded (`record_parameters`).
    params: Option<String>,
    /// Client bytes of a packet that continues in the next chunk.
    up: Vec<u8>,
    /// The answer gathered so far.
    down: Vec<u8>,
    /// Bytes of the answer not kept (over [`MAX_ANSWER`]).
    dropped: u64,
    /// The recording of the answer was cut (or bytes are missing).
    cut: bool,
}

impl Screen {
    pub(super) fn new(db: String) -> Self {
        Self { db, ..Self::default() }
    }

    /// The prompt, and `->` for the lines that continue a statement.
    pub(super) fn statement(&mut self, text: &str) -> String {
        let text = escape_block(text.trim_end());
        let mut block = String::new();
        for (i, line) in text.split('\n').enumerate() {
            if i == 0 {
                let _ = write!(block, "MariaDB [{}]> {line}", self.db);
            } else {
                let _ = write!(block, "\n    -> {line}");
            }
        }
        if !text.ends_with(';') {
            block.push(';');
        }
        self.pending_use = use_target(&text);
        block
    }

    /// Client bytes: a new command starts (its answer is decoded from what follows).
    pub(super) fn up(&mut self, data: &[u8]) {
        self.up.extend_from_slice(data);
        while let Some((p, n)) = wire::decode(&self.up) {
            self.command = p.payload.first().copied();
            self.params = p
                .payload
                .get(10..)
                .filter(|_| self.command == Some(wire::COM_STMT_EXECUTE))
                .and_then(|t| t.strip_prefix(b"[parameters: "))
                .and_then(|t| t.strip_suffix(b"]"))
                .map(|t| escape_all(&String::from_utf8_lossy(t)));
            self.up.drain(..n.min(self.up.len()));
        }
        if self.up.len() > MAX_ANSWER {
            self.up.clear();
        }
    }

    /// Backend bytes of the current answer.
    pub(super) fn down(&mut self, data: &[u8]) {
        let room = MAX_ANSWER.saturating_sub(self.down.len());
        let keep = data.get(..room.min(data.len())).unwrap_or_default();
        self.down.extend_from_slice(keep);
        self.dropped += (data.len() - keep.len()) as u64;
    }

    /// The answer's recording was cut, or bytes before it are missing.
    pub(super) fn cut(&mut self) {
        self.cut = true;
    }

    /// Discards a partial client packet (bytes before it are missing).
    pub(super) fn lost_up(&mut self) {
        self.up.clear();
    }

    /// Decodes the answer gathered so far (it is complete: something else
    /// follows it), with what the statement's end record says, if any.
    pub(super) fn flush(&mut self, end: Option<&StatementEnd>) -> Option<String> {
        if self.down.is_empty() && self.dropped == 0 && end.is_none() {
            return None;
        }
        let bytes = std::mem::take(&mut self.down);
        let dropped = std::mem::take(&mut self.dropped);
        let cut = std::mem::take(&mut self.cut);
        let command = self.command.take();
        let pending_use = self.pending_use.take();
        let a = answer(command, &bytes, end.map(|e| e.duration_us));
        if a.ok
            && let Some(db) = pending_use
        {
            self.db = db;
        }
        let mut out = a.text.trim_end().to_owned();
        if let Some(p) = self.params.take() {
            out = format!("-- parameters: {p}\n{out}");
        }
        if cut || dropped > 0 {
            if dropped > 0 {
                let _ = write!(out, "\n-- {dropped} more bytes of this answer not shown");
            }
            if let Some(rows) = end.and_then(|e| e.rows).filter(|_| cut) {
                let _ = write!(out, "\n-- the backend returned {rows} rows in all");
            }
        }
        if let Some(end) = end {
            if let Some(m) = &end.masked {
                let counts = match serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(m) {
                    Ok(map) => map.iter().map(|(k, v)| format!("{} {v}", escape_all(k))).collect::<Vec<_>>().join(", "),
                    Err(_) => escape_all(m),
                };
                let _ = write!(out, "\n-- values masked by Gatehouse: {counts}");
            }
            if let Some(e) = end.error.as_deref().filter(|_| !a.error_shown) {
                let _ = write!(out, "\n-- the statement ended with: {}", escape_all(e));
            }
        }
        let mut out = out.trim_start_matches('\n').to_owned();
        // The client leaves an empty line after each answer.
        out.push('\n');
        (out.len() > 1).then_some(out)
    }
}

/// `USE db` / ``USE `db` ``: the database it names.
fn use_target(text: &str) -> Option<String> {
    let t = text.trim().trim_end_matches(';').trim();
    let (kw, rest) = t.split_at_checked(3)?;
    if !kw.eq_ignore_ascii_case("use") || !rest.starts_with(char::is_whitespace) {
        return None;
    }
    let name = rest.trim();
    let name = name
        .strip_prefix('`')
        .and_then(|n| n.strip_suffix('`'))
        .map_or_else(|| name.to_owned(), |n| n.replace("``", "`"));
    (!name.is_empty() && !name.contains(char::is_whitespace)).then(|| escape_all(&name))
}

/// What an answer shows.
#[derive(Debug, Default)]
pub(super) struct Answer {
    pub text: String,
    /// It ended with an OK (not an ERR).
    pub ok: bool,
    /// An ERR was shown.
    pub error_shown: bool,
}

/// Splits an answer into logical packets (continued packets joined).
/// Returns them and a note when the bytes end mid-packet.
fn packets(mut b: &[u8]) -> (Vec<Vec<u8>>, Option<String>) {
    let mut out = Vec::new();
    let mut parts = 0usize;
    let mut joined: Option<Vec<u8>> = None;
    while !b.is_empty() {
        let Some((p, n)) = wire::decode(b) else {
            return (out, Some(format!("-- the answer ends mid-packet ({} bytes not decoded)", b.len())));
        };
        let whole = p.payload.len() == wire::MAX_PAYLOAD;
        let buf = joined.get_or_insert_with(Vec::new);
        if parts < MAX_PARTS {
            buf.extend_from_slice(p.payload);
        }
        parts += 1;
        if !whole {
            out.extend(joined.take());
            parts = 0;
        }
        b = b.get(n..).unwrap_or_default();
    }
    out.extend(joined);
    (out, None)
}

/// A column of a result set.
#[derive(Debug, Clone)]
struct Column {
    name: String,
    kind: u8,
    flags: u16,
}

/// Parses a ColumnDefinition41 payload (name, type, flags).
fn column(p: &[u8]) -> Option<Column> {
    let mut at = 0usize;
    let mut name = String::new();
    for i in 0..6 {
        let (v, n) = wire::lenenc_str(p.get(at..)?)?;
        if i == 4 {
            name = String::from_utf8_lossy(v?).into_owned();
        }
        at += n;
    }
    let (fixed, n) = wire::lenenc_int(p.get(at..)?)?;
    if fixed < 9 {
        return None;
    }
    let f = p.get(at + n..)?;
    let kind = *f.get(6)?;
    let flags = u16::from_le_bytes([*f.get(7)?, *f.get(8)?]);
    Some(Column { name: escape_all(&name), kind, flags })
}

/// Types the client right-aligns.
fn numeric(kind: u8) -> bool {
    matches!(kind, 0x00..=0x05 | 0x08 | 0x09 | 0x0d | 0xf6)
}

fn show(v: &[u8]) -> String {
    let s = String::from_utf8_lossy(v);
    match s.char_indices().nth(MAX_CELL_CHARS) {
        Some((i, _)) => format!("{}…", escape_all(s.get(..i).unwrap_or_default())),
        None => escape_all(&s),
    }
}

fn le<const N: usize>(v: &[u8]) -> Option<[u8; N]> {
    v.get(..N)?.try_into().ok()
}

/// A binary-protocol value (as [`binary::values`] returns it) as text.
fn binary_value(c: &Column, v: &[u8]) -> Option<String> {
    Some(match binary::decode(c.kind, c.flags & UNSIGNED != 0, v)? {
        binary::Decoded::Text(t) => t,
        binary::Decoded::Bytes(b) => show(b),
    })
}

/// A result set being shown.
#[derive(Debug)]
struct Table {
    cols: Vec<Column>,
    rows: Vec<Vec<String>>,
    total: u64,
}

impl Table {
    fn render(&self, out: &mut String) {
        let width = |s: &str| s.chars().count();
        let mut widths: Vec<usize> = self.cols.iter().map(|c| width(&c.name)).collect();
        for row in &self.rows {
            for (w, v) in widths.iter_mut().zip(row) {
                *w = (*w).max(width(v));
            }
        }
        let rule: String = widths.iter().map(|w| format!("+{}", "-".repeat(w + 2))).collect::<String>() + "+";
        let line = |cells: &mut dyn Iterator<Item = (String, bool)>| {
            let mut l = String::new();
            for ((v, right), w) in cells.zip(&widths) {
                if right {
                    let _ = write!(l, "| {v:>w$} ");
                } else {
                    let _ = write!(l, "| {v:<w$} ");
                }
            }
            l.push('|');
            l
        };
        let _ = writeln!(out, "{rule}");
        let _ = writeln!(out, "{}", line(&mut self.cols.iter().map(|c| (c.name.clone(), false))));
        let _ = writeln!(out, "{rule}");
        for row in &self.rows {
            let mut cells = self.cols.iter().enumerate().map(|(i, c)| {
                let v = row.get(i).cloned().unwrap_or_default();
                let right = numeric(c.kind) && v != "NULL";
                (v, right)
            });
            let _ = writeln!(out, "{}", line(&mut cells));
        }
        let _ = writeln!(out, "{rule}");
        let shown = self.rows.len() as u64;
        if self.total > shown {
            let _ = writeln!(out, "… {} more rows not shown", self.total - shown);
        }
    }
}

fn seconds(us: Option<u64>) -> String {
    us.map(|d| format!(" ({}.{:03} sec)", d / 1_000_000, (d % 1_000_000) / 1000)).unwrap_or_default()
}

fn plural(n: u64, one: &str) -> String {
    if n == 1 { format!("1 {one}") } else { format!("{n} {one}s") }
}

fn err_line(p: &[u8]) -> String {
    match wire::parse_err(p) {
        Some(e) if e.state.is_empty() => format!("ERROR {}: {}", e.code, escape_all(&e.message)),
        Some(e) => format!("ERROR {} ({}): {}", e.code, escape_all(&e.state), escape_all(&e.message)),
        None => "-- an ERR packet that cannot be read".into(),
    }
}

/// Decodes one command's whole answer: `command` is the command's first
/// byte (`None`: not on record, read as a query), `duration_us` from the
/// statement's end record.
pub(super) fn answer(command: Option<u8>, bytes: &[u8], duration_us: Option<u64>) -> Answer {
    let (pk, tail_note) = packets(bytes);
    if command == Some(wire::COM_FIELD_LIST) {
        return field_list(&pk, tail_note);
    }
    let mut a = Answer::default();
    let mut out = String::new();
    let time = seconds(duration_us);
    let mut i = 0usize;
    let mut affected = 0u64;
    let next = |i: &mut usize| {
        let p = pk.get(*i);
        *i += 1;
        p
    };
    'sets: while let Some(p) = next(&mut i) {
        match p.first() {
            Some(0x00) if command == Some(wire::COM_STMT_PREPARE) => {
                let id = p.get(1..5).and_then(le::<4>).map(u32::from_le_bytes);
                let cols = p.get(5..7).and_then(le::<2>).map(u16::from_le_bytes);
                let params = p.get(7..9).and_then(le::<2>).map(u16::from_le_bytes);
                match (id, cols, params) {
                    (Some(id), Some(c), Some(n)) => {
                        let _ = write!(out, "-- statement {id} prepared ({n} parameters, {c} columns){time}");
                    }
                    _ => out.push_str("-- a PREPARE_OK that cannot be read"),
                }
                a.ok = true;
                break;
            }
            Some(0x00) => {
                let Some((n, status)) = wire::parse_ok(p) else {
                    out.push_str("-- an OK packet that cannot be read");
                    break;
                };
                affected += n;
                if status & MORE_RESULTS == 0 {
                    a.ok = true;
                    if !out.is_empty() && !out.ends_with('\n') {
                        out.push('\n');
                    }
                    let _ = write!(out, "Query OK, {} affected{time}", plural(affected, "row"));
                    break;
                }
            }
            Some(0xff) => {
                if !out.is_empty() && !out.ends_with('\n') {
                    out.push('\n');
                }
                out.push_str(&err_line(p));
                a.error_shown = true;
                break;
            }
            Some(0xfb) => {
                out.push_str("-- the server asked for a local file (LOAD DATA LOCAL); Gatehouse ended the session");
                break;
            }
            _ => {
                let Some(n) = wire::lenenc_int(p).map(|(n, _)| n).filter(|n| (1..=4096).contains(n)) else {
                    out.push_str("-- a result set header that cannot be read");
                    break;
                };
                let mut cols = Vec::new();
                for _ in 0..n {
                    match next(&mut i).and_then(|c| column(c)) {
                        Some(c) => cols.push(c),
                        None => {
                            out.push_str("-- a column definition that cannot be read (or is not on record)");
                            break 'sets;
                        }
                    }
                }
                // Without CLIENT_DEPRECATE_EOF an EOF (5 bytes) follows the
                // columns; with it, rows come at once (an OK with a 0xfe
                // header, 7 bytes or more, ends them).
                if pk.get(i).is_some_and(|p| p.first() == Some(&0xfe) && p.len() == 5) {
                    i += 1;
                }
                let mut t = Table { cols, rows: Vec::new(), total: 0 };
                let kinds: Vec<u8> = t.cols.iter().map(|c| c.kind).collect();
                let status = loop {
                    let Some(row) = next(&mut i) else { break None };
                    match row.first() {
                        Some(0xfe) if row.len() < wire::MAX_PAYLOAD => {
                            break Some(if row.len() == 5 {
                                wire::parse_eof(row).unwrap_or(0)
                            } else {
                                wire::parse_ok(row).map_or(0, |(_, s)| s)
                            });
                        }
                        Some(0xff) => {
                            t.render(&mut out);
                            out.push_str(&err_line(row));
                            a.error_shown = true;
                            break 'sets;
                        }
                        _ => {
                            t.total += 1;
                            if t.rows.len() >= MAX_ROWS {
                                continue;
                            }
                            let cells = if command == Some(wire::COM_STMT_EXECUTE) {
                                binary::values(&kinds, row).map(|vs| {
                                    vs.iter()
                                        .zip(&t.cols)
                                        .map(|(v, c)| {
                                            v.map_or_else(
                                                || "NULL".to_owned(),
                                                |v| binary_value(c, v).unwrap_or_else(|| "?".into()),
                                            )
                                        })
                                        .collect()
                                })
                            } else {
                                text_row(row, t.cols.len())
                            };
                            match cells {
                                Some(c) => t.rows.push(c),
                                None => t.rows.push(vec!["(a row that cannot be read)".into()]),
                            }
                        }
                    }
                };
                if t.total == 0 && status.is_some() {
                    let _ = write!(out, "Empty set{time}");
                } else {
                    t.render(&mut out);
                    match status {
                        Some(_) => {
                            let _ = write!(out, "{} in set{time}", plural(t.total, "row"));
                        }
                        None => out.push_str("(result incomplete: the rest is not on record)"),
                    }
                }
                match status {
                    Some(s) if s & MORE_RESULTS != 0 => out.push_str("\n\n"),
                    Some(_) => {
                        a.ok = true;
                        break;
                    }
                    None => break,
                }
            }
        }
    }
    if let Some(n) = tail_note {
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(&n);
    }
    if !out.is_empty() {
        out.push('\n');
    }
    a.text = out;
    a
}

/// The answer to `COM_FIELD_LIST` (the client's name completion): column
/// definitions then EOF, or an ERR; shown as the list of names.
fn field_list(pk: &[Vec<u8>], tail_note: Option<String>) -> Answer {
    let mut a = Answer::default();
    let mut names = Vec::new();
    let mut ended = false;
    for p in pk {
        match p.first() {
            Some(0xff) => {
                a.text = err_line(p);
                a.error_shown = true;
                ended = true;
                break;
            }
            Some(0xfe) => {
                a.ok = true;
                ended = true;
                break;
            }
            _ => names.push(column(p).map_or_else(|| "?".to_owned(), |c| c.name)),
        }
    }
    if !a.error_shown {
        let what = if ended { "" } else { " (incomplete: the rest is not on record)" };
        a.text = format!("-- columns listed (COM_FIELD_LIST): {}{what}", names.join(", "));
    }
    if let Some(n) = tail_note {
        a.text.push('\n');
        a.text.push_str(&n);
    }
    a.text.push('\n');
    a
}

/// A text-protocol row: one length-encoded string (or 0xfb NULL) per column.
fn text_row(row: &[u8], columns: usize) -> Option<Vec<String>> {
    let mut at = 0usize;
    let mut cells = Vec::with_capacity(columns);
    while at < row.len() {
        let (v, n) = wire::lenenc_str(row.get(at..)?)?;
        cells.push(v.map_or_else(|| "NULL".to_owned(), show));
        at += n;
    }
    (cells.len() == columns).then_some(cells)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lenenc(out: &mut Vec<u8>, s: &[u8]) {
        wire::put_lenenc(out, s.len());
        out.extend_from_slice(s);
    }

    fn coldef(name: &str, kind: u8, flags: u16) -> Vec<u8> {
        let mut p = Vec::new();
        for f in ["def", "shop", "customers", "customers", name, name] {
            lenenc(&mut p, f.as_bytes());
        }
        p.push(0x0c);
        p.extend_from_slice(&45u16.to_le_bytes());
        p.extend_from_slice(&255u32.to_le_bytes());
        p.push(kind);
        p.extend_from_slice(&flags.to_le_bytes());
        p.extend_from_slice(&[0, 0, 0]);
        p
    }

    /// A text result: id (LONG), email (VAR_STRING), EOF after the columns unless `deprecate`.
    fn result(deprecate: bool, rows: &[(&str, Option<&str>)]) -> Vec<u8> {
        let mut b = Vec::new();
        let mut seq = 1u8;
        let mut put = |b: &mut Vec<u8>, p: &[u8]| {
            b.extend_from_slice(&wire::frame(seq, p));
            seq = seq.wrapping_add(1);
        };
        put(&mut b, &[2]);
        put(&mut b, &coldef("id", 0x03, 0));
        put(&mut b, &coldef("email", 0xfd, 0));
        if !deprecate {
            put(&mut b, &[0xfe, 0, 0, 2, 0]);
        }
        for (id, email) in rows {
            let mut r = Vec::new();
            lenenc(&mut r, id.as_bytes());
            match email {
                Some(e) => lenenc(&mut r, e.as_bytes()),
                None => r.push(0xfb),
            }
            put(&mut b, &r);
        }
        if deprecate {
            put(&mut b, &[0xfe, 0, 0, 2, 0, 0, 0]);
        } else {
            put(&mut b, &[0xfe, 0, 0, 2, 0]);
        }
        b
    }

    #[test]
    fn a_text_result_is_a_box_like_the_mariadb_client_draws() {
        for deprecate in [false, true] {
            let b = result(deprecate, &[("1", Some("a****@example.com")), ("10", None)]);
            let a = answer(Some(wire::COM_QUERY), &b, Some(1500));
            assert_eq!(
                a.text,
                "+----+-------------------+\n\
                 | id | email             |\n\
                 +----+-------------------+\n\
                 |  1 | a****@example.com |\n\
                 | 10 | NULL              |\n\
                 +----+-------------------+\n\
                 2 rows in set (0.001 sec)\n",
                "deprecate_eof {deprecate}"
            );
            assert!(a.ok);
            let empty = answer(Some(wire::COM_QUERY), &result(deprecate, &[]), Some(0));
            assert_eq!(empty.text, "Empty set (0.000 sec)\n", "deprecate_eof {deprecate}");
        }
    }

    #[test]
    fn recorded_parameters_are_shown_before_the_answer() {
        let mut screen = Screen::new("shop".into());
        let mut exec = vec![wire::COM_STMT_EXECUTE, 1, 0, 0, 0, 0, 1, 0, 0, 0];
        exec.extend_from_slice(b"[parameters: 7, 'zoe']");
        screen.up(&wire::frame(0, &exec));
        screen.down(&wire::frame(1, &wire::ok_payload(2)));
        let shown = screen.flush(None).unwrap_or_default();
        assert!(shown.starts_with("-- parameters: 7, 'zoe'\nQuery OK, 0 rows affected"), "{shown}");
        // Not recorded (the marker): nothing shown.
        let mut exec = vec![wire::COM_STMT_EXECUTE, 1, 0, 0, 0, 0, 1, 0, 0, 0];
        exec.extend_from_slice(b"[parameters not recorded: 9 bytes]");
        screen.up(&wire::frame(0, &exec));
        screen.down(&wire::frame(1, &wire::ok_payload(2)));
        assert!(!screen.flush(None).unwrap_or_default().contains("parameters"));
    }

    #[test]
    fn a_field_list_answer_is_the_list_of_its_columns() {
        // Column definitions as COM_FIELD_LIST sends them (a default value after each), then EOF.
        let mut b = Vec::new();
        for (seq, p) in [coldef("id", 0x03, 0), coldef("name", 0xfd, 0), vec![0xfe, 0, 0, 2, 0]].iter().enumerate() {
            let mut p = p.clone();
            if p.first() != Some(&0xfe) {
                p.push(0xfb);
            }
            b.extend_from_slice(&wire::frame(u8::try_from(seq + 1).unwrap_or(0), &p));
        }
        let a = answer(Some(wire::COM_FIELD_LIST), &b, None);
        assert_eq!(a.text, "-- columns listed (COM_FIELD_LIST): id, name\n");
        assert!(a.ok);
        let e = wire::frame(1, &wire::err_payload(1146, "42S02", "Table 'appdb.nope' doesn't exist"));
        let a = answer(Some(wire::COM_FIELD_LIST), &e, None);
        assert!(a.error_shown && a.text.starts_with("ERROR 1146 (42S02)"), "{}", a.text);
    }

    #[test]
    fn ok_and_err_answers() {
        let ok = wire::frame(1, &[0x00, 3, 0, 2, 0, 0, 0]);
        assert_eq!(answer(Some(wire::COM_QUERY), &ok, Some(20_000)).text, "Query OK, 3 rows affected (0.020 sec)\n");
        let ok = wire::frame(1, &[0x00, 1, 0, 2, 0, 0, 0]);
        assert_eq!(answer(Some(wire::COM_QUERY), &ok, None).text, "Query OK, 1 row affected\n");
        let err = wire::frame(1, &wire::err_payload(1227, "42000", "Gatehouse refused this statement: no"));
        let a = answer(Some(wire::COM_QUERY), &err, None);
        assert_eq!(a.text, "ERROR 1227 (42000): Gatehouse refused this statement: no\n");
        assert!(a.error_shown && !a.ok);
        let prep = wire::frame(1, &[0x00, 7, 0, 0, 0, 1, 0, 2, 0, 0, 0, 0]);
        assert_eq!(
            answer(Some(wire::COM_STMT_PREPARE), &prep, None).text,
            "-- statement 7 prepared (2 parameters, 1 columns)\n"
        );
    }

    #[test]
    fn binary_rows_are_decoded_by_column_type() {
        let mut b = Vec::new();
        b.extend_from_slice(&wire::frame(1, &[4]));
        b.extend_from_slice(&wire::frame(2, &coldef("n", 0x08, 0)));
        b.extend_from_slice(&wire::frame(3, &coldef("u", 0x01, UNSIGNED)));
        b.extend_from_slice(&wire::frame(4, &coldef("d", 0x0c, 0)));
        b.extend_from_slice(&wire::frame(5, &coldef("s", 0xfd, 0)));
        // Header, bitmap (4 columns + 2 bits: 1 byte), values: -5, 200, 2024-05-01 10:00:00, NULL s (bit 5).
        let mut row = vec![0x00, 1 << 5];
        row.extend_from_slice(&(-5i64).to_le_bytes());
        row.push(200);
        row.extend_from_slice(&[7, 0xe8, 0x07, 5, 1, 10, 0, 0]);
        b.extend_from_slice(&wire::frame(6, &row));
        b.extend_from_slice(&wire::frame(7, &[0xfe, 0, 0, 2, 0, 0, 0]));
        let a = answer(Some(wire::COM_STMT_EXECUTE), &b, None);
        assert!(a.text.contains("| -5 | 200 | 2024-05-01 10:00:00 | NULL |"), "{}", a.text);
        assert!(a.text.ends_with("1 row in set\n"), "{}", a.text);
    }

    #[test]
    fn malformed_and_cut_answers_are_notes_never_panics() {
        let good = result(false, &[("1", Some("x"))]);
        for n in 0..good.len() {
            let a = answer(Some(wire::COM_QUERY), &good[..n], None);
            assert!(n == 0 || !a.text.is_empty(), "cut at {n}");
        }
        // Every single-byte corruption, text and binary.
        for i in 0..good.len() {
            for v in [0x00, 0xfb, 0xfc, 0xfe, 0xff] {
                let mut b = good.clone();
                b[i] = v;
                let _ = answer(Some(wire::COM_QUERY), &b, None);
                let _ = answer(Some(wire::COM_STMT_EXECUTE), &b, None);
                let _ = answer(Some(wire::COM_STMT_PREPARE), &b, None);
            }
        }
        assert_eq!(use_target("USE `my``db`;").as_deref(), Some("my`db"));
        assert_eq!(use_target("use shop").as_deref(), Some("shop"));
        assert_eq!(use_target("user()"), None);
    }
}
