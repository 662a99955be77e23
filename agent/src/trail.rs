//! Row-level access trail: which rows of the operator's trailed tables
//! (`[[trail]]`) each statement returned, so `gatehouse who-saw` can answer
//! "who saw customer 42, and when?".
//!
//! While the PostgreSQL relay streams a result, a [`Capture`] knows which
//! result columns are a trailed table's key — by table OID and column number
//! from the RowDescription (PostgreSQL's own statement that the column is
//! that table column as stored), or for `COPY table TO` by the statement's
//! lineage — never by column name. It reads the key of every row sent to the
//! client and, when the statement ends, yields one `trail` record per table:
//! the key set ([`keys::KeySet`]), row count, whether the key column was
//! masked (then the keys are keyed hashes). A statement that reads a trailed
//! table without returning its key (a filter, an aggregate, an expression of
//! the key, a `COPY (query)`, a key in a binary format Gatehouse does not
//! decode) is recorded as a keyless read: table and rows, so the gap is on
//! record, not silent.
//!
//! [`alerts`] watches the captured keys per user against `[[alert]]` rules;
//! [`store`] indexes the records (key buckets → records) and answers
//! `who-saw` and `access-report`.

pub mod alerts;
pub mod keys;
pub mod store;

use std::collections::BTreeSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::catalog::{Bound, Catalog, Origin};
use crate::types::SessionId;
pub use keys::{HashKey, KeySet};

/// `[[trail]]`: a table whose rows' readers are recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrailTable {
    pub schema: String,
    pub name: String,
    /// The key column; `None`: the table's primary key (single-column).
    pub key: Option<String>,
}

impl TrailTable {
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertAction {
    /// An audit record, a log line, a metric (and a webhook with `[[notify]]`).
    Log,
    /// As `log`, and the session's next statement waits for approval.
    Hold,
    /// As `log`, and the session is ended.
    Cut,
}

/// `[[alert]]`: distinct rows of a table read by one user over a sliding
/// window above a threshold, or any read of listed keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertRule {
    pub name: String,
    /// `schema.name` of a trailed table.
    pub table: String,
    pub window: Duration,
    pub threshold: Option<u64>,
    /// Keys as typed (`"42"`, `"zoe@example.com"`).
    pub keys: Vec<String>,
    pub action: AlertAction,
}

/// The policy's trail configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    pub tables: Vec<TrailTable>,
    pub alerts: Vec<AlertRule>,
}

impl Config {
    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }
}

/// The body of a `trail` record (its data is the encoded [`KeySet`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrailRecord {
    pub session: SessionId,
    /// The statement's number in its session.
    pub statement: u64,
    pub time_us: i64,
    /// `schema.name`.
    pub table: String,
    pub table_oid: u32,
    /// The key column whose values are recorded; `None`: a keyless read.
    pub key: Option<String>,
    /// Rows of the result sent to the client.
    pub rows: u64,
    /// Distinct keys recorded.
    pub keys: u64,
    /// Keys are keyed hashes (all of them when the key column was masked).
    pub hashed: bool,
    /// The key column was masked for this client.
    pub key_masked: bool,
    /// Some column of the result was masked.
    pub masked: bool,
    /// Why no key was recorded (keyless reads).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyless: Option<String>,
}

/// The body of a `trail_alert` record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertRecord {
    pub session: SessionId,
    pub statement: u64,
    pub time_us: i64,
    pub rule: String,
    pub table: String,
    pub uid: u32,
    pub user: String,
    /// Distinct rows in the window when it fired (threshold rules).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distinct: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<u64>,
    pub window_s: u64,
    /// Listed keys the statement returned (key rules).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub listed_keys: Vec<String>,
    pub action: AlertAction,
}

/// A trailed table as this catalog knows it.
#[derive(Debug, Clone)]
struct Resolved {
    oid: u32,
    table: String,
    /// (attnum, name, type OID) of the key column, or of each column of a
    /// composite primary key in key order; `Err` with the reason.
    key: Result<Vec<(i16, String, u32)>, String>,
}

fn resolve(cfg: &Config, cat: &Catalog) -> Vec<Resolved> {
    cfg.tables
        .iter()
        .filter_map(|t| {
            let rel = cat.relation_named(&t.schema, &t.name)?;
            let key = match &t.key {
                Some(k) => rel
                    .columns
                    .iter()
                    .find(|c| &c.name == k)
                    .map(|c| vec![(c.attnum, c.name.clone(), c.type_oid)])
                    .ok_or_else(|| format!("the table has no column {k:?}")),
                None if rel.primary_key.is_empty() => {
                    Err("the table has no primary key; name one with `key`".to_owned())
                }
                // One column, or a composite key: its columns in key order (the tuple is hashed as one key).
                None => rel
                    .primary_key
                    .iter()
                    .map(|a| {
                        rel.columns
                            .iter()
                            .find(|c| c.attnum == *a)
                            .map(|c| (c.attnum, c.name.clone(), c.type_oid))
                            .ok_or_else(|| "its primary key is an expression".to_owned())
                    })
                    .collect(),
            };
            Some(Resolved { oid: rel.oid, table: t.qualified(), key })
        })
        .collect()
}

/// How a key column's values are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decode {
    /// Text format: the value as PostgreSQL prints it.
    Text,
    /// Binary int2/int4/int8.
    BinaryInt,
    /// Binary uuid (printed as PostgreSQL prints it before hashing).
    BinaryUuid,
    /// Binary text types: the bytes are the text.
    BinaryText,
}

fn decode_for(type_oid: u32, binary: bool) -> Option<Decode> {
    if !binary {
        return Some(Decode::Text);
    }
    match type_oid {
        20 | 21 | 23 => Some(Decode::BinaryInt),
        2950 => Some(Decode::BinaryUuid),
        25 | 1043 | 1042 | 19 => Some(Decode::BinaryText),
        _ => None,
    }
}

/// Integer key types: recorded in the bitmap when not masked.
fn is_int(type_oid: u32) -> bool {
    matches!(type_oid, 20 | 21 | 23)
}

/// One key column of a result.
#[derive(Debug)]
struct KeyCol {
    /// Position in the row.
    index: usize,
    /// Which of [`Capture::tables`] it feeds.
    table: usize,
    decode: Decode,
    /// Integers go to the bitmap; otherwise (or masked) hashed.
    int: bool,
    /// Its place in a composite key's tuple (0 for a single-column key).
    part: usize,
}

/// What one statement read of one trailed table.
#[derive(Debug)]
struct TableRead {
    oid: u32,
    table: String,
    key: Option<String>,
    keyless: Option<String>,
    key_masked: bool,
    rows: u64,
    set: KeySet,
    /// A composite key: the current row's values (as PostgreSQL prints
    /// them), one slot per key column; empty for a single-column key.
    tuple: Vec<Option<Vec<u8>>>,
}

impl TableRead {
    fn new(t: &Resolved) -> Self {
        TableRead {
            oid: t.oid,
            table: t.table.clone(),
            key: None,
            keyless: None,
            key_masked: false,
            rows: 0,
            set: KeySet::default(),
            tuple: Vec::new(),
        }
    }
}

/// The text a composite key's tuple is hashed as: its values as PostgreSQL
/// prints them, in key order, separated by `,`, with `,` and `\` inside a
/// value escaped by a `\` (so `who-saw --key '7,42'` finds (7, 42)).
pub fn tuple_text(values: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        for &b in *v {
            if b == b',' || b == b'\\' {
                out.push(b'\\');
            }
            out.push(b);
        }
    }
    out
}

/// The shape of a COPY's rows.
#[derive(Debug, Clone, Copy)]
struct CopyShape {
    delimiter: u8,
    csv: bool,
    header: bool,
}

/// Key capture for the result of one statement.
#[derive(Debug)]
pub struct Capture {
    hash_key: HashKey,
    cols: Vec<KeyCol>,
    /// The last key column's position: nothing after it is read.
    last: usize,
    tables: Vec<TableRead>,
    masked: bool,
    copy: Option<CopyShape>,
}

/// One result column as the relay sees it.
#[derive(Debug, Clone, Copy)]
pub struct ResultCol {
    pub table_oid: u32,
    pub attnum: i16,
    pub type_oid: u32,
    pub binary: bool,
    /// The column is masked by a rule for this client.
    pub masked: bool,
}

fn touched(cat: &Catalog, bound: Option<&Bound>, relations: &[u32]) -> BTreeSet<u32> {
    let mut out: BTreeSet<u32> = relations.iter().copied().collect();
    if let Some(b) = bound {
        let all = b.all.iter().chain(b.expanded.iter().flatten()).chain(&b.predicates);
        out.extend(all.map(|o: &Origin| o.relation));
    }
    with_ancestors(cat, out)
}

/// The relations and the parents of those that are partitions or
/// inheritance children (a partition's rows are its parent's).
fn with_ancestors(cat: &Catalog, mut set: BTreeSet<u32>) -> BTreeSet<u32> {
    let parents: Vec<u32> =
        set.iter().filter_map(|oid| cat.relation(*oid)).flat_map(|r| r.ancestors.iter().copied()).collect();
    set.extend(parents);
    set
}

/// The attnum in `table` of result column `c`: its own when it is a column
/// of `table`, the same-named column's when it is a column of one of
/// `table`'s partitions or inheritance children.
fn attnum_in(cat: &Catalog, c: &ResultCol, table: u32) -> Option<i16> {
    if c.table_oid == table {
        return Some(c.attnum);
    }
    let rel = cat.relation(c.table_oid)?;
    if !rel.ancestors.contains(&table) {
        return None;
    }
    let name = &rel.columns.iter().find(|x| x.attnum == c.attnum)?.name;
    cat.relation(table)?.columns.iter().find(|x| &x.name == name).map(|x| x.attnum)
}

impl Capture {
    /// The capture for a result described by `cols`, or `None` when it
    /// touches no trailed table. `relations`: the OIDs of the relations the
    /// statement names, resolved (views' base tables included).
    pub fn for_result(
        cfg: &Config,
        hash_key: HashKey,
        cat: &Catalog,
        bound: Option<&Bound>,
        relations: &[u32],
        cols: &[ResultCol],
    ) -> Option<Self> {
        let trailed = resolve(cfg, cat);
        if trailed.is_empty() {
            return None;
        }
        let mut touched = touched(cat, bound, relations);
        touched.extend(with_ancestors(cat, cols.iter().map(|c| c.table_oid).collect()));
        let mut cap = Capture {
            hash_key,
            cols: Vec::new(),
            last: 0,
            tables: Vec::new(),
            masked: cols.iter().any(|c| c.masked),
            copy: None,
        };
        for t in trailed.iter().filter(|t| touched.contains(&t.oid)) {
            let ti = cap.tables.len();
            let mut read = TableRead::new(t);
            match &t.key {
                Err(why) => read.keyless = Some(why.clone()),
                Ok(parts) if parts.len() > 1 => {
                    // A composite key: each of its columns, once, or the read is keyless.
                    let mut found = Vec::with_capacity(parts.len());
                    let mut why = None;
                    for (part, (attnum, _, _)) in parts.iter().enumerate() {
                        let col = cols.iter().enumerate().find(|(_, c)| attnum_in(cat, c, t.oid) == Some(*attnum));
                        match col.map(|(index, c)| (index, c, decode_for(c.type_oid, c.binary))) {
                            Some((index, c, Some(decode))) => found.push((index, c.masked, decode, part)),
                            Some((_, c, None)) => {
                                why = Some(format!(
                                    "a key column came in binary format of type {}, which is not decoded",
                                    c.type_oid
                                ));
                            }
                            None if why.is_none() => {
                                why = Some("the result does not return every column of the key as stored".to_owned());
                            }
                            None => {}
                        }
                    }
                    match why {
                        Some(w) => read.keyless = Some(w),
                        None => {
                            read.key = Some(key_name(parts));
                            read.tuple = vec![None; parts.len()];
                            for (index, masked, decode, part) in found {
                                read.key_masked |= masked;
                                cap.cols.push(KeyCol { index, table: ti, decode, int: false, part });
                            }
                        }
                    }
                }
                Ok(parts) => {
                    let Some((attnum, name, _)) = parts.first() else { continue };
                    let mut undecodable = None;
                    for (index, c) in cols.iter().enumerate() {
                        if attnum_in(cat, c, t.oid) != Some(*attnum) {
                            continue;
                        }
                        match decode_for(c.type_oid, c.binary) {
                            Some(decode) => {
                                read.key = Some(name.clone());
                                read.key_masked |= c.masked;
                                cap.cols.push(KeyCol {
                                    index,
                                    table: ti,
                                    decode,
                                    int: is_int(c.type_oid) && !c.masked,
                                    part: 0,
                                });
                            }
                            None => undecodable = Some(c.type_oid),
                        }
                    }
                    if read.key.is_none() {
                        read.keyless = Some(match undecodable {
                            Some(oid) => format!("the key came in binary format of type {oid}, which is not decoded"),
                            None => "the result does not return the key column as stored".to_owned(),
                        });
                    }
                }
            }
            cap.tables.push(read);
        }
        if cap.tables.is_empty() {
            return None;
        }
        cap.cols.sort_by_key(|c| c.index);
        cap.last = cap.cols.last().map_or(0, |c| c.index);
        Some(cap)
    }

    /// The capture for a `COPY … TO` of `width` columns in text or CSV.
    /// Keys are read only from `COPY table [(columns)] TO`, whose fields are
    /// the stored columns; a `COPY (query) TO` is a keyless read.
    #[expect(clippy::too_many_arguments, reason = "the COPY's shape, passed as the relay knows it")]
    pub fn for_copy(
        cfg: &Config,
        hash_key: HashKey,
        cat: &Catalog,
        bound: &Bound,
        relations: &[u32],
        width: usize,
        format: &crate::sql::lineage::CopyFormat,
        masked: &[bool],
    ) -> Option<Self> {
        let trailed = resolve(cfg, cat);
        let touched = touched(cat, Some(bound), relations);
        let mut cap = Capture {
            hash_key,
            cols: Vec::new(),
            last: 0,
            tables: Vec::new(),
            masked: masked.iter().any(|m| *m),
            copy: Some(CopyShape { delimiter: format.delimiter, csv: format.csv, header: format.header }),
        };
        for t in trailed.iter().filter(|t| touched.contains(&t.oid)) {
            let ti = cap.tables.len();
            let mut read = TableRead::new(t);
            match &t.key {
                Err(why) => read.keyless = Some(why.clone()),
                Ok(_) if !format.relation => {
                    read.keyless = Some("COPY of a query: its fields are expressions, not stored columns".into());
                }
                Ok(_) if format.binary => read.keyless = Some("binary COPY is not decoded".into()),
                Ok(parts) => {
                    let composite = parts.len() > 1;
                    let mut found = Vec::new();
                    for (part, (attnum, _, type_oid)) in parts.iter().enumerate() {
                        let key = Origin { relation: t.oid, attnum: *attnum };
                        let is_key = |index: &usize| {
                            bound.aligned(*index, width).is_some_and(|o| o.len() == 1 && o.contains(&key))
                        };
                        if composite {
                            // Each column of a composite key once (the first field that is it).
                            found.extend((0..width).find(is_key).map(|index| (index, part, false)));
                        } else {
                            found.extend((0..width).filter(is_key).map(|index| (index, part, is_int(*type_oid))));
                        }
                    }
                    let complete = if composite { found.len() == parts.len() } else { !found.is_empty() };
                    if complete {
                        read.key = Some(key_name(parts));
                        if composite {
                            read.tuple = vec![None; parts.len()];
                        }
                        for (index, part, int) in found {
                            let m = masked.get(index).copied().unwrap_or(false);
                            read.key_masked |= m;
                            cap.cols.push(KeyCol { index, table: ti, decode: Decode::Text, int: int && !m, part });
                        }
                    } else {
                        read.keyless = Some(if composite {
                            "the COPY does not include every column of the key".into()
                        } else {
                            "the COPY does not include the key column".into()
                        });
                    }
                }
            }
            cap.tables.push(read);
        }
        if cap.tables.is_empty() {
            return None;
        }
        cap.cols.sort_by_key(|c| c.index);
        cap.last = cap.cols.last().map_or(0, |c| c.index);
        Some(cap)
    }

    fn add_key(&mut self, col: usize, v: &[u8]) {
        let Some(c) = self.cols.get(col) else { return };
        let (decode, int, table, part) = (c.decode, c.int, c.table, c.part);
        let Some(t) = self.tables.get_mut(table) else { return };
        if !t.tuple.is_empty() {
            // A composite key's column: kept (as PostgreSQL prints it) until the row ends.
            if let Some(slot) = t.tuple.get_mut(part) {
                *slot = Some(printed(decode, v));
            }
            return;
        }
        match decode {
            Decode::Text if int => match parse_uint(v) {
                Some(n) => {
                    t.set.ints.insert(n);
                }
                None => t.set.hashes.push(self.hash_key.hash(v)),
            },
            Decode::Text | Decode::BinaryText => t.set.hashes.push(self.hash_key.hash(v)),
            Decode::BinaryInt => {
                let n = match v.len() {
                    2 => <[u8; 2]>::try_from(v).ok().map(|b| i64::from(i16::from_be_bytes(b))),
                    4 => <[u8; 4]>::try_from(v).ok().map(|b| i64::from(i32::from_be_bytes(b))),
                    8 => <[u8; 8]>::try_from(v).ok().map(i64::from_be_bytes),
                    _ => None,
                };
                match n {
                    Some(n) if int && n >= 0 => {
                        t.set.ints.insert(n.unsigned_abs());
                    }
                    Some(n) => t.set.hashes.push(self.hash_key.hash(n.to_string().as_bytes())),
                    None => t.set.hashes.push(self.hash_key.hash(v)),
                }
            }
            Decode::BinaryUuid => {
                let text = <[u8; 16]>::try_from(v).map(|b| uuid::Uuid::from_bytes(b).hyphenated().to_string());
                match text {
                    Ok(s) => t.set.hashes.push(self.hash_key.hash(s.as_bytes())),
                    Err(_) => t.set.hashes.push(self.hash_key.hash(v)),
                }
            }
        }
    }

    fn count_row(&mut self) {
        for t in &mut self.tables {
            t.rows += 1;
        }
    }

    /// A row ended: each composite key whose columns were all there (none
    /// NULL) is hashed as one key.
    fn end_row(&mut self) {
        for t in &mut self.tables {
            if t.tuple.is_empty() {
                continue;
            }
            let values: Option<Vec<&[u8]>> = t.tuple.iter().map(|v| v.as_deref()).collect();
            if let Some(values) = values {
                t.set.hashes.push(self.hash_key.hash(&tuple_text(&values)));
            }
            t.tuple.iter_mut().for_each(|v| *v = None);
        }
    }

    /// A DataRow's body (as the backend sent it) that was sent to the client.
    pub fn row(&mut self, body: &[u8]) {
        self.count_row();
        if self.cols.is_empty() {
            return;
        }
        let mut at = 2usize;
        let mut next = 0usize;
        for index in 0..=self.last {
            let Some(len) = body.get(at..at + 4).and_then(|b| <[u8; 4]>::try_from(b).ok()).map(i32::from_be_bytes)
            else {
                break;
            };
            at += 4;
            let len = usize::try_from(len).ok();
            let value = len.and_then(|l| body.get(at..at + l));
            at += len.unwrap_or(0);
            while let Some(c) = self.cols.get(next)
                && c.index == index
            {
                // A NULL key identifies no row.
                if let Some(v) = value {
                    self.add_key(next, v);
                }
                next += 1;
            }
        }
        self.end_row();
    }

    /// A CopyData row (text or CSV, as the backend sent it) that was sent to the client.
    pub fn copy_row(&mut self, data: &[u8]) {
        let Some(shape) = &mut self.copy else { return };
        if std::mem::take(&mut shape.header) {
            return;
        }
        let shape = *shape;
        self.count_row();
        if self.cols.is_empty() {
            return;
        }
        let row = data.strip_suffix(b"\n").unwrap_or(data);
        let row = row.strip_suffix(b"\r").unwrap_or(row);
        let mut next = 0usize;
        for (index, field) in copy_fields(row, shape.delimiter, shape.csv).into_iter().enumerate() {
            while let Some(c) = self.cols.get(next)
                && c.index == index
            {
                let null = if shape.csv { field.is_empty() } else { field == b"\\N" };
                if !null {
                    let v = if shape.csv {
                        field.strip_prefix(b"\"").and_then(|f| f.strip_suffix(b"\"")).unwrap_or(field)
                    } else {
                        field
                    };
                    self.add_key(next, v);
                }
                next += 1;
            }
            if index >= self.last {
                break;
            }
        }
        self.end_row();
    }

    /// The records of the statement: one per trailed table it read.
    pub fn finish(self, session: SessionId, statement: u64, time_us: i64) -> Vec<(TrailRecord, KeySet)> {
        let masked = self.masked;
        self.tables
            .into_iter()
            .map(|mut t| {
                t.set.seal();
                let rec = TrailRecord {
                    session,
                    statement,
                    time_us,
                    table: t.table,
                    table_oid: t.oid,
                    key: t.key,
                    rows: t.rows,
                    keys: t.set.len(),
                    hashed: !t.set.hashes.is_empty() || t.key_masked,
                    key_masked: t.key_masked,
                    masked,
                    keyless: t.keyless,
                };
                (rec, t.set)
            })
            .collect()
    }
}

/// A key value as PostgreSQL prints it in text format.
fn printed(decode: Decode, v: &[u8]) -> Vec<u8> {
    match decode {
        Decode::Text | Decode::BinaryText => v.to_vec(),
        Decode::BinaryInt => {
            let n = match v.len() {
                2 => <[u8; 2]>::try_from(v).ok().map(|b| i64::from(i16::from_be_bytes(b))),
                4 => <[u8; 4]>::try_from(v).ok().map(|b| i64::from(i32::from_be_bytes(b))),
                8 => <[u8; 8]>::try_from(v).ok().map(i64::from_be_bytes),
                _ => None,
            };
            n.map_or_else(|| v.to_vec(), |n| n.to_string().into_bytes())
        }
        Decode::BinaryUuid => <[u8; 16]>::try_from(v)
            .map_or_else(|_| v.to_vec(), |b| uuid::Uuid::from_bytes(b).hyphenated().to_string().into_bytes()),
    }
}

/// How a record names its key: the column, or a composite key's columns joined by `,`.
fn key_name(parts: &[(i16, String, u32)]) -> String {
    parts.iter().map(|(_, n, _)| n.as_str()).collect::<Vec<_>>().join(",")
}

fn parse_uint(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 {
        return None;
    }
    let mut n = 0u64;
    for b in v {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n * 10 + u64::from(b - b'0');
    }
    Some(n)
}

/// Splits a COPY text/CSV row into its fields (CSV quotes and text escapes respected).
fn copy_fields(row: &[u8], delimiter: u8, csv: bool) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut start = 0usize;
    let mut i = 0usize;
    let mut quoted = false;
    while let Some(&b) = row.get(i) {
        if csv {
            if b == b'"' {
                quoted = !quoted;
            } else if b == delimiter && !quoted {
                out.push(row.get(start..i).unwrap_or_default());
                start = i + 1;
            }
        } else if b == b'\\' {
            i += 1;
        } else if b == delimiter {
            out.push(row.get(start..i).unwrap_or_default());
            start = i + 1;
        }
        i += 1;
    }
    out.push(row.get(start..).unwrap_or_default());
    out
}

#[cfg(test)]
mod tests;

/// The OIDs of the relations a statement names (schema-qualified as the
/// relay resolved them), with the tables views read.
pub fn relation_oids(cat: &Catalog, relations: &[crate::sql::TableRef]) -> Vec<u32> {
    let mut out = Vec::new();
    for t in relations {
        let rel = match t.schema.as_deref() {
            Some(schema) => cat.relation_named(schema, &t.name),
            // Not resolved: the login's default path (errs towards more tables touched).
            None => cat
                .default_search_path
                .iter()
                .map(|s| if s == "$user" { cat.login.as_str() } else { s.as_str() })
                .find_map(|s| cat.relation_named(s, &t.name)),
        };
        if let Some(rel) = rel {
            out.push(rel.oid);
            out.extend_from_slice(&rel.reads);
        }
    }
    out
}

/// What a statement returned of trailed tables, as records to write (one
/// `trail` record per table, then one `trail_alert` per alert fired), and
/// the alerts the `[[alert]]` rules raised over it (logged here), for their
/// actions. The caller writes the records before the statement's completion
/// reaches the client (strict mode: through the journal, as durable as the
/// statement's own record; see `relay/backend.rs`).
pub fn finish_statement(
    alerts: &alerts::Alerts,
    rules: &[AlertRule],
    who: &alerts::Reader,
    cap: Capture,
    session: SessionId,
    statement: u64,
) -> (Vec<crate::audit::Event>, Vec<AlertRecord>) {
    let now = crate::audit::now_us();
    let hash_key = cap.hash_key;
    let mut fired = Vec::new();
    let mut records = Vec::new();
    for (rec, set) in cap.finish(session, statement, now) {
        if !rules.is_empty() && rec.key.is_some() {
            fired.extend(alerts.observe(rules, hash_key, who, &rec, &set, now));
        }
        let data = set.encode();
        records.push(crate::audit::Event::Trail(Box::new(rec), data));
    }
    for a in &fired {
        tracing::warn!(
            alert = %a.rule,
            table = %a.table,
            user = %a.user,
            uid = a.uid,
            distinct = a.distinct,
            listed = ?a.listed_keys,
            action = ?a.action,
            "TRAIL ALERT"
        );
        records.push(crate::audit::Event::TrailAlert(Box::new(a.clone())));
    }
    (records, fired)
}

impl AlertRecord {
    /// What the alert says, in a sentence.
    pub fn describe(&self) -> String {
        match self.distinct {
            Some(n) => format!(
                "alert `{}`: {} read {n} distinct rows of {} within {}s (threshold {})",
                self.rule,
                self.user,
                self.table,
                self.window_s,
                self.threshold.unwrap_or(0)
            ),
            None => format!(
                "alert `{}`: {} read listed rows of {}: {}",
                self.rule,
                self.user,
                self.table,
                self.listed_keys.join(", ")
            ),
        }
    }
}
