//! Result rows of the binary protocol (answers to `COM_STMT_EXECUTE`): a
//! 0x00 header, a NULL bitmap with offset 2 (bit `i + 2` set: column `i`
//! is NULL), then each non-NULL value encoded by its column type — fixed
//! widths for integers and floats, a length byte then the fields for
//! dates and times, a length-encoded string for everything else.
//!
//! Masking uses the same plan as the text protocol (`masking::plan`): a
//! masked string column gets its masked stand-in as a new length-encoded
//! string; a masked column of any other type (a number, a date, a BIT,
//! a DECIMAL) becomes NULL — a stand-in like `****` is no binary integer,
//! so Gatehouse never writes one there (fail closed, as the text path does).
//! Every length is checked against the bytes there are: a row that does
//! not parse as its columns is refused by the caller, never forwarded.

use crate::mask::{ColumnMask, Counts, MaskOutput, Profile, REDACTED};

use super::masking::stringy;
use super::wire;

/// The bytes the NULL bitmap of a row of `columns` columns takes.
pub fn bitmap_len(columns: usize) -> usize {
    columns.saturating_add(7 + 2) / 8
}

/// The bytes a value of column type `kind` takes at the front of `p`;
/// `None` when `p` is too short or the type is not one the server sends.
pub fn value_len(kind: u8, p: &[u8]) -> Option<usize> {
    let n = match kind {
        // MYSQL_TYPE_NULL: only ever NULL (its bitmap bit is set).
        0x06 => 0,
        // TINY.
        0x01 => 1,
        // SHORT, YEAR.
        0x02 | 0x0d => 2,
        // LONG, INT24, FLOAT.
        0x03 | 0x09 | 0x04 => 4,
        // DOUBLE, LONGLONG.
        0x05 | 0x08 => 8,
        // TIMESTAMP, DATE, DATETIME, TIME, NEWDATE: a length byte, then that many bytes.
        0x07 | 0x0a | 0x0c | 0x0b | 0x0e => 1 + usize::from(*p.first()?),
        // DECIMAL, VARCHAR, BIT, JSON, NEWDECIMAL, ENUM, SET, the BLOBs,
        // VAR_STRING, STRING, GEOMETRY: a length-encoded string.
        0x00 | 0x0f | 0x10 | 0xf5..=0xff => {
            let (v, n) = wire::lenenc_str(p)?;
            v?;
            n
        }
        _ => return None,
    };
    (n <= p.len()).then_some(n)
}

/// A binary-protocol value, decoded: numbers, dates and times as text;
/// strings (and DECIMAL, BIT, JSON, the BLOBs…) as their bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    Text(String),
    Bytes(&'a [u8]),
}

fn le<const N: usize>(v: &[u8]) -> Option<[u8; N]> {
    v.get(..N)?.try_into().ok()
}

/// Decodes one value of type `kind` as [`values`] returns it (length prefix
/// included); `unsigned`: the column's (or parameter's) UNSIGNED flag.
pub fn decode(kind: u8, unsigned: bool, v: &[u8]) -> Option<Decoded<'_>> {
    use std::fmt::Write as _;
    Some(Decoded::Text(match kind {
        0x01 if unsigned => v.first()?.to_string(),
        0x01 => i8::from_le_bytes(le(v)?).to_string(),
        0x02 | 0x0d if unsigned || kind == 0x0d => u16::from_le_bytes(le(v)?).to_string(),
        0x02 => i16::from_le_bytes(le(v)?).to_string(),
        0x03 | 0x09 if unsigned => u32::from_le_bytes(le(v)?).to_string(),
        0x03 | 0x09 => i32::from_le_bytes(le(v)?).to_string(),
        0x08 if unsigned => u64::from_le_bytes(le(v)?).to_string(),
        0x08 => i64::from_le_bytes(le(v)?).to_string(),
        0x04 => f32::from_le_bytes(le(v)?).to_string(),
        0x05 => f64::from_le_bytes(le(v)?).to_string(),
        0x06 => "NULL".into(),
        0x07 | 0x0a | 0x0c | 0x0e => {
            let (&n, d) = v.split_first()?;
            let d = d.get(..usize::from(n))?;
            let year = u16::from_le_bytes(le(d).unwrap_or([0, 0]));
            let at = |i: usize| d.get(i).copied().unwrap_or(0);
            let mut s = format!("{year:04}-{:02}-{:02}", at(2), at(3));
            if kind != 0x0a && kind != 0x0e {
                let _ = write!(s, " {:02}:{:02}:{:02}", at(4), at(5), at(6));
                if n >= 11 {
                    let _ = write!(s, ".{:06}", u32::from_le_bytes(le(d.get(7..)?)?));
                }
            }
            s
        }
        0x0b => {
            let (&n, d) = v.split_first()?;
            let d = d.get(..usize::from(n))?;
            if d.is_empty() {
                return Some(Decoded::Text("00:00:00".into()));
            }
            let neg = if d.first() == Some(&1) { "-" } else { "" };
            let days = u64::from(u32::from_le_bytes(le(d.get(1..)?)?));
            let at = |i: usize| u64::from(d.get(i).copied().unwrap_or(0));
            let mut s = format!("{neg}{:02}:{:02}:{:02}", days * 24 + at(5), at(6), at(7));
            if n >= 12 {
                let _ = write!(s, ".{:06}", u32::from_le_bytes(le(d.get(8..)?)?));
            }
            s
        }
        _ => return wire::lenenc_str(v)?.0.map(Decoded::Bytes),
    }))
}

/// One parameter value of a `COM_STMT_EXECUTE`: its type, UNSIGNED flag
/// and bytes as sent (length prefix included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Param<'a> {
    pub kind: u8,
    pub unsigned: bool,
    pub value: &'a [u8],
}

/// The types the parameters part of a `COM_STMT_EXECUTE` (what follows
/// its 10-byte head) binds, 2 bytes per parameter (type, flags), when it
/// sends them (`new_params_bound_flag` = 1).
pub fn bound_types(params: &[u8], count: u16) -> Option<&[u8]> {
    let n = usize::from(count);
    let at = n.div_ceil(8);
    if n == 0 || *params.get(at)? != 1 {
        return None;
    }
    params.get(at + 1..at + 1 + 2 * n)
}

/// The `count` parameter values of a `COM_STMT_EXECUTE`'s parameters part:
/// a NULL bitmap (no offset), `new_params_bound_flag`, the types when
/// bound (else `earlier`: the types bound by a previous execute), then the
/// values. `None` (a NULL) per NULL parameter; `None` overall when the
/// bytes do not parse as exactly that.
pub fn params<'a>(params: &'a [u8], count: u16, earlier: Option<&'a [u8]>) -> Option<Vec<Option<Param<'a>>>> {
    let n = usize::from(count);
    let bitmap = params.get(..n.div_ceil(8))?;
    let mut rest = params.get(bitmap.len() + 1..)?;
    let types = match bound_types(params, count) {
        Some(t) => {
            rest = rest.get(t.len()..)?;
            t
        }
        None => earlier?,
    };
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        if bitmap.get(i / 8).is_some_and(|b| b & (1 << (i % 8)) != 0) {
            out.push(None);
            continue;
        }
        let (kind, flags) = (*types.get(2 * i)?, *types.get(2 * i + 1)?);
        let (value, r) = rest.split_at_checked(value_len(kind, rest)?)?;
        rest = r;
        out.push(Some(Param { kind, unsigned: flags & 0x80 != 0, value }));
    }
    rest.is_empty().then_some(out)
}

/// The values of a binary row of columns typed `kinds`: `None` for a
/// NULL, else the value's bytes as sent (length prefix included).
/// `None` when the row does not parse as exactly those columns.
pub fn values<'a>(kinds: &[u8], row: &'a [u8]) -> Option<Vec<Option<&'a [u8]>>> {
    let (bitmap, mut rest) = split(kinds.len(), row)?;
    let mut out = Vec::with_capacity(kinds.len());
    for (i, &k) in kinds.iter().enumerate() {
        if is_null(bitmap, i) {
            out.push(None);
            continue;
        }
        let n = value_len(k, rest)?;
        let (v, r) = rest.split_at_checked(n)?;
        out.push(Some(v));
        rest = r;
    }
    rest.is_empty().then_some(out)
}

/// The NULL bitmap and the values of a row, after its 0x00 header.
fn split(columns: usize, row: &[u8]) -> Option<(&[u8], &[u8])> {
    let rest = row.strip_prefix(&[0x00])?;
    rest.split_at_checked(bitmap_len(columns))
}

fn is_null(bitmap: &[u8], column: usize) -> bool {
    let bit = column + 2;
    bitmap.get(bit / 8).is_some_and(|b| b & (1 << (bit % 8)) != 0)
}

fn clear_null(bitmap: &mut [u8], column: usize) {
    let bit = column + 2;
    if let Some(b) = bitmap.get_mut(bit / 8) {
        *b &= !(1 << (bit % 8));
    }
}

fn set_null(bitmap: &mut [u8], column: usize) {
    let bit = column + 2;
    if let Some(b) = bitmap.get_mut(bit / 8) {
        *b |= 1 << (bit % 8);
    }
}

/// Rewrites one binary row payload of columns typed `kinds` per `plan`
/// into `out` (appended). `None` when the row does not parse as those
/// columns, or the plan and the columns disagree (the caller fails closed).
pub fn mask_row(
    profile: &Profile,
    plan: &[ColumnMask],
    kinds: &[u8],
    row: &[u8],
    out: &mut Vec<u8>,
    counts: &mut Counts,
) -> Option<()> {
    if plan.len() != kinds.len() {
        return None;
    }
    let (bitmap, mut rest) = split(kinds.len(), row)?;
    out.push(0x00);
    let bm_at = out.len();
    out.extend_from_slice(bitmap);
    let mut value = Vec::new();
    for (i, (c, &k)) in plan.iter().zip(kinds).enumerate() {
        if is_null(bitmap, i) {
            // A computed value's NULL is hidden too (`NULLIF(ssn, '…')` would answer).
            if matches!(c, ColumnMask::Hidden) && stringy(k) {
                clear_null(out.get_mut(bm_at..)?, i);
                wire::put_lenenc(out, REDACTED.len());
                out.extend_from_slice(REDACTED);
                counts.add_columns(1);
            }
            continue;
        }
        let n = value_len(k, rest)?;
        let (raw, r) = rest.split_at_checked(n)?;
        rest = r;
        let result = match c {
            ColumnMask::Pass => MaskOutput::Unchanged,
            // Only string values are rewritten: any other masked value is nulled.
            ColumnMask::Rule(..) if !stringy(k) => {
                counts.add_columns(1);
                MaskOutput::Null
            }
            ColumnMask::Scan { .. } | ColumnMask::Quoted if !stringy(k) => MaskOutput::Unchanged,
            ColumnMask::Quoted => {
                let (Some(v), _) = wire::lenenc_str(raw)? else { return None };
                value.clear();
                super::masking::mask_quoted(profile, v, &mut value, counts)
            }
            ColumnMask::Hidden if !stringy(k) => {
                counts.add_columns(1);
                MaskOutput::Null
            }
            ColumnMask::Hidden => {
                value.clear();
                value.extend_from_slice(REDACTED);
                counts.add_columns(1);
                MaskOutput::Written
            }
            ColumnMask::Rule(style, key) => {
                let (Some(v), _) = wire::lenenc_str(raw)? else { return None };
                value.clear();
                let r = profile.mask_value(*style, key, v, &mut value);
                if r != MaskOutput::Unchanged {
                    counts.add_columns(1);
                }
                r
            }
            ColumnMask::Scan { .. } => {
                let (Some(v), _) = wire::lenenc_str(raw)? else { return None };
                value.clear();
                profile.scan(v, &mut value, counts)
            }
        };
        match result {
            MaskOutput::Unchanged => out.extend_from_slice(raw),
            MaskOutput::Written => {
                wire::put_lenenc(out, value.len());
                out.extend_from_slice(&value);
            }
            MaskOutput::Null => set_null(out.get_mut(bm_at..)?, i),
        }
    }
    rest.is_empty().then_some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mask::{Detector, ProfileSpec, Style};
    use crate::protocol::mysql::masking::{ColDef, plan};
    use crate::sql::TableRef;

    const LONG: u8 = 0x03;
    const LONGLONG: u8 = 0x08;
    const DOUBLE: u8 = 0x05;
    const DATETIME: u8 = 0x0c;
    const TIME: u8 = 0x0b;
    const VAR_STRING: u8 = 0xfd;
    const BLOB: u8 = 0xfc;
    const NEWDECIMAL: u8 = 0xf6;

    fn lenenc(s: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        wire::put_lenenc(&mut v, s.len());
        v.extend_from_slice(s);
        v
    }

    fn profile() -> Profile {
        Profile::compile(&ProfileSpec {
            name: "p".into(),
            columns: vec![
                ("shop.customers.card".into(), Style::Partial),
                ("email".into(), Style::Redact),
                ("shop.customers.balance".into(), Style::Partial),
                ("shop.customers.born".into(), Style::Redact),
            ],
            detectors: vec![(Detector::UsSsn, Style::Redact)],
            ..ProfileSpec::default()
        })
        .unwrap()
    }

    fn col(name: &str, kind: u8) -> ColDef {
        ColDef { schema: "shop".into(), org_table: "customers".into(), name: name.into(), org_name: name.into(), kind }
    }

    /// id LONG, email VAR_STRING, card VAR_STRING, note BLOB, balance NEWDECIMAL,
    /// born DATETIME, score DOUBLE, seen TIME, big LONGLONG.
    fn columns() -> Vec<ColDef> {
        vec![
            col("id", LONG),
            col("email", VAR_STRING),
            col("card", VAR_STRING),
            col("note", BLOB),
            col("balance", NEWDECIMAL),
            col("born", DATETIME),
            col("score", DOUBLE),
            col("seen", TIME),
            col("big", LONGLONG),
        ]
    }

    fn kinds() -> Vec<u8> {
        columns().iter().map(|c| c.kind).collect()
    }

    /// A row with every value present but `nulls`.
    fn row(nulls: &[usize]) -> Vec<u8> {
        let mut bitmap = vec![0u8; bitmap_len(9)];
        for &i in nulls {
            set_null(&mut bitmap, i);
        }
        let mut r = vec![0x00];
        r.extend_from_slice(&bitmap);
        let values: Vec<Vec<u8>> = vec![
            7i32.to_le_bytes().to_vec(),
            lenenc(b"zoe@example.com"),
            lenenc(b"4111111111111111"),
            lenenc(b"ssn 123-45-6789"),
            lenenc(b"1234.50"),
            vec![7, 0xea, 0x07, 12, 2, 13, 14, 15],
            2.5f64.to_le_bytes().to_vec(),
            vec![8, 0, 1, 0, 0, 0, 2, 3, 4],
            (-1i64).to_le_bytes().to_vec(),
        ];
        for (i, v) in values.into_iter().enumerate() {
            if !nulls.contains(&i) {
                r.extend(v);
            }
        }
        r
    }

    #[test]
    fn rows_parse_by_type_with_the_null_bitmap_at_offset_two() {
        let r = row(&[]);
        let v = values(&kinds(), &r).unwrap();
        assert_eq!(v.len(), 9);
        assert_eq!(v[0], Some(&7i32.to_le_bytes()[..]));
        assert_eq!(v[1], Some(&lenenc(b"zoe@example.com")[..]));
        assert_eq!(v[5].unwrap().len(), 8);
        assert_eq!(v[7].unwrap().len(), 9);
        assert_eq!(v[8], Some(&(-1i64).to_le_bytes()[..]));
        // Bit 2 of the first byte is column 0; column 6 is bit 0 of the second byte.
        let r = row(&[0, 6]);
        assert_eq!(r[1], 0b0000_0100);
        assert_eq!(r[2], 0b0000_0001);
        let v = values(&kinds(), &r).unwrap();
        assert_eq!((v[0], v[6]), (None, None));
        assert_eq!(v[1], Some(&lenenc(b"zoe@example.com")[..]));
    }

    #[test]
    fn malformed_rows_are_refused_not_guessed() {
        let r = row(&[]);
        // Every truncation fails, none panics.
        for n in 0..r.len() {
            assert!(values(&kinds(), &r[..n]).is_none(), "truncated at {n}");
        }
        // Bytes past the last value, a text row's header, a wrong column count.
        assert!(values(&kinds(), &[r.clone(), vec![0]].concat()).is_none());
        assert!(values(&kinds(), &[&[0x01], &r[1..]].concat()).is_none());
        assert!(values(&kinds()[..8], &r).is_none());
        // A string length past the end; a date whose length byte lies.
        assert!(values(&[VAR_STRING], &[0x00, 0x00, 0xfc, 0xff, 0xff, b'a']).is_none());
        assert!(values(&[DATETIME], &[0x00, 0x00, 11, 1, 2]).is_none());
        // A type the server never sends in rows.
        assert!(values(&[0x11], &[0x00, 0x00, 1]).is_none());
        // NULL marked as a string value (0xfb) is no value of the binary protocol.
        assert!(values(&[VAR_STRING], &[0x00, 0x00, 0xfb]).is_none());
    }

    #[test]
    fn masked_rows_rewrite_strings_and_null_other_types() {
        let p = profile();
        let reads = vec![TableRef { schema: Some("shop".into()), name: "customers".into() }];
        let plan = plan(&p, &reads, &Default::default(), Some("shop"), &columns());
        let mut out = Vec::new();
        let mut counts = Counts::default();
        mask_row(&p, &plan, &kinds(), &row(&[]), &mut out, &mut counts).unwrap();
        let v = values(&kinds(), &out).expect("the masked row is a well-formed binary row");
        let s =
            |x: Option<&[u8]>| String::from_utf8_lossy(wire::lenenc_str(x.unwrap()).unwrap().0.unwrap()).into_owned();
        assert_eq!(v[0], Some(&7i32.to_le_bytes()[..]), "unmasked number passes");
        assert_eq!(s(v[1]), "****");
        let card = s(v[2]);
        assert!(card.ends_with("1111") && !card.contains("41111111"), "{card}");
        assert_eq!(s(v[3]), "ssn ****", "the detectors read strings");
        assert_eq!(v[4], None, "a masked DECIMAL becomes NULL");
        assert_eq!(v[5], None, "a masked DATETIME becomes NULL");
        assert_eq!(v[6], Some(&2.5f64.to_le_bytes()[..]));
        assert_eq!(v[8], Some(&(-1i64).to_le_bytes()[..]));
        assert!(counts.columns() >= 4);
        // NULLs stay NULL; nothing else moves.
        out.clear();
        mask_row(&p, &plan, &kinds(), &row(&[1, 2, 4]), &mut out, &mut counts).unwrap();
        let v = values(&kinds(), &out).unwrap();
        assert_eq!((v[1], v[2], v[4], v[5]), (None, None, None, None));
        // A row that does not parse fails whole.
        let r = row(&[]);
        for n in 0..r.len() {
            out.clear();
            assert!(mask_row(&p, &plan, &kinds(), &r[..n], &mut out, &mut counts).is_none(), "truncated at {n}");
        }
        assert!(mask_row(&p, &plan[..8], &kinds(), &r, &mut out, &mut counts).is_none());
    }

    #[test]
    fn computed_columns_over_a_masked_table_are_masked() {
        let p = profile();
        let reads = vec![TableRef { schema: Some("shop".into()), name: "customers".into() }];
        let computed = ColDef {
            schema: String::new(),
            org_table: String::new(),
            name: "u".into(),
            org_name: String::new(),
            kind: VAR_STRING,
        };
        let count = ColDef { kind: LONGLONG, name: "n".into(), ..computed.clone() };
        let plan = plan(&p, &reads, &Default::default(), Some("shop"), &[computed, count]);
        let r = [vec![0x00, 0x00], lenenc(b"ZOE@EXAMPLE.COM"), 2i64.to_le_bytes().to_vec()].concat();
        let mut out = Vec::new();
        mask_row(&p, &plan, &[VAR_STRING, LONGLONG], &r, &mut out, &mut Counts::default()).unwrap();
        let v = values(&[VAR_STRING, LONGLONG], &out).unwrap();
        assert!(!String::from_utf8_lossy(v[0].unwrap()).contains("ZOE"), "{out:?}");
        assert_eq!(v[1], None);
        // A computed string's NULL is hidden too: its bitmap bit cleared, `****` written.
        let r = [vec![0x00, 0b0000_0100], 2i64.to_le_bytes().to_vec()].concat();
        out.clear();
        mask_row(&p, &plan, &[VAR_STRING, LONGLONG], &r, &mut out, &mut Counts::default()).unwrap();
        let v = values(&[VAR_STRING, LONGLONG], &out).expect("a well-formed binary row");
        assert_eq!(v[0], Some(&lenenc(b"****")[..]), "{out:?}");
        assert_eq!(v[1], None);
    }
}
