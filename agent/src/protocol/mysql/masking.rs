//! Masking of MySQL text-protocol result sets: the plan of a result from
//! its column definitions (schema + `org_table` + `org_name` name the table
//! column a value shows), and row packets rewritten with masked values.
//!
//! - A column showing a table column the statement reads gets that
//!   column's rule (by `schema.org_table` and `org_name`).
//! - A column with no `org_table` (an expression), or one whose
//!   `org_table` is not a table the statement names (a derived table),
//!   cannot be traced: when the statement reads a table some column rule
//!   could apply to, it gets the most concealing of those rules' styles
//!   (fail closed: `COUNT(*)` over such a table is masked too); otherwise
//!   the detectors look inside it.
//! - A masked column that is not a string type becomes NULL (a stand-in
//!   like `****` is no number or date); other string columns go through
//!   the detectors; other types pass.

use crate::mask::{ColumnMask, Counts, MaskOutput, Profile, REDACTED, Style, TokenScope};
use crate::sql::TableRef;

use super::wire;

/// What a column definition packet says about a result column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColDef {
    pub schema: String,
    pub org_table: String,
    pub name: String,
    pub org_name: String,
    pub kind: u8,
}

/// Parses a ColumnDefinition41 payload.
pub fn parse_column_def(p: &[u8]) -> Option<ColDef> {
    let mut at = 0usize;
    let mut field = || -> Option<String> {
        let (v, n) = wire::lenenc_str(p.get(at..)?)?;
        at += n;
        Some(String::from_utf8_lossy(v?).into_owned())
    };
    let _catalog = field()?;
    let schema = field()?;
    let _table = field()?;
    let org_table = field()?;
    let name = field()?;
    let org_name = field()?;
    // Fixed-length fields: 0x0c, charset (2), length (4), then the type.
    let (fixed, n) = wire::lenenc_int(p.get(at..)?)?;
    if fixed < 7 {
        return None;
    }
    let kind = *p.get(at + n + 6)?;
    Some(ColDef { schema, org_table, name, org_name, kind })
}

/// Whether a MySQL column type carries its value as a string (a masked
/// stand-in fits, and the detectors can read it).
pub(super) fn stringy(kind: u8) -> bool {
    matches!(kind, 0x0f | 0xf5 | 0xf7 | 0xf8 | 0xf9 | 0xfa | 0xfb | 0xfc | 0xfd | 0xfe)
}

/// A table as the column rules name it: `schema.table`, lower case (the
/// session's database when the name has no schema; none known: the bare
/// name, which a rule with a schema part matches by its table part).
fn qualified(t: &TableRef, database: Option<&str>) -> String {
    match t.schema.as_deref().or(database) {
        Some(s) => format!("{s}.{}", t.name).to_ascii_lowercase(),
        None => t.name.to_ascii_lowercase(),
    }
}

fn stricter(a: Option<Style>, b: Option<Style>) -> Option<Style> {
    match (a, b) {
        (Some(x), Some(y)) => Some(if y.concealment() > x.concealment() { y } else { x }),
        (x, None) => x,
        (None, y) => y,
    }
}

/// The plan for a result whose columns are `cols`, for a statement that
/// reads `reads` with `database` the session's current database. An empty
/// plan means nothing in it is masked.
///
/// `ctes` (lowercased) are the common table expressions the statement
/// defines, and the views it reads (added by `protocol::mysql::views`): the
/// server gives their name as a column's table, which says no more about
/// the value than a derived table's alias would, so a column from one is
/// untraced (hidden whole) — and so is one from a table that shares such a
/// name, which a reference may mean either way.
pub fn plan(
    profile: &Profile,
    reads: &[TableRef],
    ctes: &std::collections::BTreeSet<String>,
    database: Option<&str>,
    cols: &[ColDef],
) -> Vec<ColumnMask> {
    let all_reads: Vec<String> = reads.iter().map(|t| qualified(t, database)).collect();
    let untraced = all_reads.iter().fold(None, |a, t| stricter(a, profile.table_style(t)));
    let read_names: Vec<&String> =
        all_reads.iter().filter(|t| !ctes.contains(t.rsplit('.').next().unwrap_or(t.as_str()))).collect();
    let plan: Vec<ColumnMask> = cols
        .iter()
        .map(|c| {
            let table = format!("{}.{}", c.schema, c.org_table).to_ascii_lowercase();
            let known = !c.org_table.is_empty() && read_names.contains(&&table);
            if !known {
                // An expression (or a derived table's column) over a table with
                // masked columns: hidden whole, NULL included (see `ColumnMask::Hidden`).
                return match untraced {
                    Some(_) if stringy(c.kind) => ColumnMask::Hidden,
                    Some(_) => ColumnMask::Rule(
                        Style::Null,
                        profile.token_key(TokenScope::Column { table: None, column: &c.name }),
                    ),
                    None if stringy(c.kind) => ColumnMask::Scan { skip: 0 },
                    None => ColumnMask::Pass,
                };
            }
            let column = c.org_name.to_ascii_lowercase();
            let found = profile
                .column_style(Some(&table), &column)
                .map(|s| (s, profile.token_key(TokenScope::Column { table: Some(&table), column: &column })));
            match found {
                Some((s, key)) if stringy(c.kind) => ColumnMask::Rule(s, key),
                Some((_, key)) => ColumnMask::Rule(Style::Null, key),
                None if stringy(c.kind) => ColumnMask::Scan { skip: 0 },
                None => ColumnMask::Pass,
            }
        })
        .collect();
    // Never empty, even when every column passes: on a masked session every
    // row is read against the columns it was described with, so a server
    // cannot put an undescribed value after the last one (`1`, then
    // `zoe@example.com`, in a one-INT result) and have it passed on unread.
    plan
}

/// The tables whose rules apply to a statement's result columns: those it
/// names and those it reaches through views (a column the server traces to
/// one of them gets its rule; one it traces to a view is not traced, see
/// `protocol::mysql::views`).
pub fn traced_reads(st: &crate::sql::Statement) -> Vec<TableRef> {
    let mut reads = st.reads.clone();
    reads.extend(st.via_views.iter().filter(|t| !st.reads.contains(t)).cloned());
    reads
}

/// Why a masked session refuses `st`, when its profile refuses predicates
/// (`masked_predicates = "refuse"`, the default) and the statement filters,
/// joins, sorts, groups or counts rows on a name a column rule masks in a
/// table it reads or writes (see `sql::mysql::Compared`: by name, with
/// aliases followed; a compared `*` counts as every column).
pub fn predicate_refusal(profile: &Profile, st: &crate::sql::Statement) -> Option<String> {
    if !profile.refuses_predicates() {
        return None;
    }
    let Some(c) = st.compared.as_deref() else { return Some(UNREAD.into()) };
    if let Some(what) = masked_among(profile, st, c, &c.names) {
        return Some(format!(
            "it filters, joins, sorts, groups or counts rows on the masked {what} (masking profile {} refuses this: such a condition reveals the value a little at a time)",
            profile.name()
        ));
    }
    let what = masked_among(profile, st, c, &c.computed)?;
    Some(format!(
        "it computes with the masked {what} (masking profile {} refuses this: the result would be hidden, so what it computes could only come back through errors or timing); select the column as it is",
        profile.name()
    ))
}

/// The first of `names` (aliases followed to what they read) that a column
/// rule masks in a table `st` reads or writes, as "column t.c" or, for a
/// `*`, "columns of t".
fn masked_among(
    profile: &Profile,
    st: &crate::sql::Statement,
    c: &crate::sql::mysql::Compared,
    names: &std::collections::BTreeSet<String>,
) -> Option<String> {
    let tables: Vec<String> = st.reads.iter().chain(&st.writes).map(|t| qualified(t, None)).collect();
    // A view's columns are not traced to the columns they show (a view may
    // rename them): through a view over a table with masked columns, any
    // name may be one of them.
    if !names.is_empty()
        && let Some(t) = st.via_views.iter().map(|t| qualified(t, None)).find(|t| profile.table_style(t).is_some())
    {
        return Some(format!("columns of {t}, read through a view (which may rename them)"));
    }
    let mut names = names.clone();
    // An alias reads what its expression reads (aliases of aliases too).
    for _ in 0..=c.aliases.len() {
        let before = names.len();
        for (alias, reads) in &c.aliases {
            if names.contains(alias) {
                names.extend(reads.iter().cloned());
            }
        }
        if names.len() == before {
            break;
        }
    }
    for name in &names {
        for t in &tables {
            let masked = if name == "*" {
                profile.table_style(t).is_some()
            } else {
                profile.column_style(Some(t), name).is_some()
            };
            if masked {
                return Some(if name == "*" { format!("columns of {t}") } else { format!("column {t}.{name}") });
            }
        }
    }
    None
}

/// A masked session's statement classified without what it compares
/// (never expected: the session's classification asks for it): refused.
const UNREAD: &str = "Gatehouse did not read what this statement compares, which a masked session needs";

/// Why a masked session refuses `st` whatever its profile says about
/// predicates: it stores values of masked columns where masking cannot
/// follow them — a user variable (a later `SELECT @v` names no table) or a
/// file (by table: any value the statement reads), another table, column or
/// view (by name, see `Compared::stored`) — or it renames a table with
/// masked columns, or a column of one (the rules name them).
pub fn stored_refusal(profile: &Profile, st: &crate::sql::Statement) -> Option<String> {
    let Some(c) = st.compared.as_deref() else { return Some(UNREAD.into()) };
    let name = profile.name();
    if c.stores
        && let Some(t) =
            st.reads.iter().chain(&st.via_views).map(|t| qualified(t, None)).find(|t| profile.table_style(t).is_some())
    {
        return Some(format!(
            "it stores values read from {t}, which has masked columns (masking profile {name}), in a user variable, a server variable or a file, where masking cannot follow them"
        ));
    }
    if c.moves
        && let Some(t) = st.writes.iter().map(|t| qualified(t, None)).find(|t| profile.table_style(t).is_some())
    {
        return Some(format!(
            "it renames {t} or one of its columns, whose masking rules name them (masking profile {name})"
        ));
    }
    let what = masked_among(profile, st, c, &c.stored)?;
    Some(format!(
        "it stores values of the masked {what} (masking profile {name}) in a table or a view, where they would be read back unmasked"
    ))
}

/// Rewrites one text-protocol row payload per `plan` into `out` (appended).
/// `None` when the row does not parse as `plan.len()` values (the caller
/// fails closed).
pub fn mask_row(
    profile: &Profile,
    plan: &[ColumnMask],
    row: &[u8],
    out: &mut Vec<u8>,
    counts: &mut Counts,
) -> Option<()> {
    let mut at = 0usize;
    let mut value = Vec::new();
    for c in plan {
        let (v, n) = wire::lenenc_str(row.get(at..)?)?;
        let raw = row.get(at..at + n)?;
        at += n;
        let Some(v) = v else {
            // A computed value's NULL is hidden too (`NULLIF(ssn, '…')` would answer).
            if matches!(c, ColumnMask::Hidden) {
                wire::put_lenenc(out, REDACTED.len());
                out.extend_from_slice(REDACTED);
                counts.add_columns(1);
            } else {
                out.push(0xfb);
            }
            continue;
        };
        value.clear();
        let result = match c {
            ColumnMask::Pass => MaskOutput::Unchanged,
            ColumnMask::Hidden => {
                value.extend_from_slice(REDACTED);
                counts.add_columns(1);
                MaskOutput::Written
            }
            ColumnMask::Rule(style, key) => {
                let r = profile.mask_value(*style, key, v, &mut value);
                if r != MaskOutput::Unchanged {
                    counts.add_columns(1);
                }
                r
            }
            ColumnMask::Scan { .. } => profile.scan(v, &mut value, counts),
            ColumnMask::Quoted => mask_quoted(profile, v, &mut value, counts),
        };
        match result {
            MaskOutput::Unchanged => out.extend_from_slice(raw),
            MaskOutput::Written => {
                wire::put_lenenc(out, value.len());
                out.extend_from_slice(&value);
            }
            MaskOutput::Null => out.push(0xfb),
        }
    }
    (at == row.len()).then_some(())
}

/// Appends `msg` with what it quotes ('…', "…") replaced by `****`;
/// whether anything was.
fn redact_quotes(msg: &[u8], out: &mut Vec<u8>) -> bool {
    let mut q: Option<u8> = None;
    let mut changed = false;
    for &b in msg {
        match q {
            Some(c) if b == c => {
                out.extend_from_slice(b"****");
                out.push(b);
                q = None;
                changed = true;
            }
            Some(_) => {}
            None => {
                out.push(b);
                if b == b'\'' || b == b'"' {
                    q = Some(b);
                }
            }
        }
    }
    if q.is_some() {
        out.extend_from_slice(b"****");
        changed = true;
    }
    changed
}

/// A diagnostics message (`SHOW WARNINGS`, `SHOW ERRORS`) on a masked
/// session: what it quotes redacted, as an ERR's would be, then the detectors.
pub(super) fn mask_quoted(profile: &Profile, value: &[u8], out: &mut Vec<u8>, counts: &mut Counts) -> MaskOutput {
    let mut quoted = Vec::new();
    let changed = redact_quotes(value, &mut quoted);
    match profile.scan(&quoted, out, counts) {
        MaskOutput::Unchanged if changed => {
            out.extend_from_slice(&quoted);
            counts.add_columns(1);
            MaskOutput::Written
        }
        other => other,
    }
}

/// An ERR packet (whole, header included) on a masked session: what its
/// message quotes ('…', "…") is redacted — errors echo values ("Duplicate
/// entry '…'", "Truncated incorrect … value: '…'") — and the detectors run
/// over the rest. Same sequence id.
pub fn mask_err(profile: &Profile, pkt: &[u8], out: &mut Vec<u8>, counts: &mut Counts) {
    let seq = pkt.get(3).copied().unwrap_or(0);
    let p = pkt.get(4..).unwrap_or_default();
    let Some(e) = wire::parse_err(p) else {
        out.extend_from_slice(&wire::frame(
            seq,
            &wire::err_payload(1227, "42000", "Gatehouse: an error was withheld (masked session)"),
        ));
        return;
    };
    let mut quoted = Vec::new();
    redact_quotes(e.message.as_bytes(), &mut quoted);
    let mut scanned = Vec::new();
    let msg = match profile.scan(&quoted, &mut scanned, counts) {
        MaskOutput::Unchanged => quoted,
        MaskOutput::Written => scanned,
        MaskOutput::Null => b"****".to_vec(),
    };
    let state = if e.state.is_empty() { "HY000" } else { e.state.as_str() };
    out.extend_from_slice(&wire::frame(seq, &wire::err_payload(e.code, state, &String::from_utf8_lossy(&msg))));
}

/// Packets the tests of the MySQL relay and its masking build.
#[cfg(test)]
pub(super) mod fixtures {
    use super::wire;

    /// `s` as a length-encoded string.
    pub fn lenenc(s: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        wire::put_lenenc(&mut v, s.len());
        v.extend_from_slice(s);
        v
    }

    /// A ColumnDefinition41 payload of MySQL type `kind`.
    pub fn coldef(schema: &str, org_table: &str, name: &str, org_name: &str, kind: u8) -> Vec<u8> {
        let mut p = Vec::new();
        for f in ["def", schema, "c", org_table, name, org_name] {
            p.extend(lenenc(f.as_bytes()));
        }
        p.push(0x0c);
        p.extend_from_slice(&45u16.to_le_bytes());
        p.extend_from_slice(&100u32.to_le_bytes());
        p.push(kind);
        p.extend_from_slice(&[0, 0, 0, 0, 0]);
        p
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::{coldef, lenenc};
    use super::*;
    use crate::mask::{Detector, ProfileSpec};

    fn profile() -> Profile {
        Profile::compile(&ProfileSpec {
            name: "p".into(),
            columns: vec![("shop.customers.card".into(), Style::Partial), ("email".into(), Style::Redact)],
            detectors: vec![(Detector::UsSsn, Style::Redact)],
            ..ProfileSpec::default()
        })
        .unwrap()
    }

    fn reads() -> Vec<TableRef> {
        vec![TableRef { schema: None, name: "customers".into() }]
    }

    #[test]
    fn errors_lose_what_they_quote() {
        let p = profile();
        let pkt =
            wire::frame(1, &wire::err_payload(1062, "23000", "Duplicate entry 'zoe@example.com' for key 'PRIMARY'"));
        let mut out = Vec::new();
        mask_err(&p, &pkt, &mut out, &mut Counts::default());
        let e = wire::parse_err(out.get(4..).unwrap()).unwrap();
        assert_eq!((e.code, e.message.as_str()), (1062, "Duplicate entry '****' for key '****'"));
        assert_eq!(out[3], 1, "the sequence id is kept");
        let pkt = wire::frame(2, &wire::err_payload(1292, "22007", "bad value 123-45-6789 'unterminated"));
        out.clear();
        mask_err(&p, &pkt, &mut out, &mut Counts::default());
        assert_eq!(wire::parse_err(out.get(4..).unwrap()).unwrap().message, "bad value **** '****");
    }

    #[test]
    fn column_definitions_parse() {
        let d = parse_column_def(&coldef("shop", "customers", "c", "card", 0xfd)).unwrap();
        assert_eq!(
            d,
            ColDef {
                schema: "shop".into(),
                org_table: "customers".into(),
                name: "c".into(),
                org_name: "card".into(),
                kind: 0xfd
            }
        );
        assert!(parse_column_def(&coldef("shop", "customers", "c", "card", 0xfd)[..20]).is_none());
    }

    #[test]
    fn rows_are_rewritten_by_column() {
        let p = profile();
        let cols: Vec<ColDef> = [
            coldef("shop", "customers", "id", "id", 0x03),
            coldef("shop", "customers", "c", "card", 0xfd),
            coldef("shop", "customers", "email", "email", 0xfd),
            coldef("shop", "customers", "note", "note", 0xfc),
        ]
        .iter()
        .map(|c| parse_column_def(c).unwrap())
        .collect();
        let plan = plan(&p, &reads(), &Default::default(), Some("shop"), &cols);
        assert!(matches!(plan[0], ColumnMask::Pass));
        assert!(matches!(plan[1], ColumnMask::Rule(Style::Partial, _)));
        assert!(matches!(plan[2], ColumnMask::Rule(Style::Redact, _)));
        assert!(matches!(plan[3], ColumnMask::Scan { .. }));
        // `WITH t AS (SELECT card FROM customers) SELECT * FROM t`: the server names the
        // CTE as the column's table; its value is the user's query's, hidden whole.
        let via_cte = parse_column_def(&coldef("shop", "t", "card", "card", 0xfd)).unwrap();
        let mut with_t = reads();
        with_t.push(TableRef { schema: None, name: "t".into() });
        let ctes = std::collections::BTreeSet::from(["t".to_owned()]);
        assert!(matches!(
            super::plan(&p, &with_t, &ctes, Some("shop"), std::slice::from_ref(&via_cte))[0],
            ColumnMask::Hidden
        ));
        assert!(matches!(
            super::plan(&p, &with_t, &Default::default(), Some("shop"), std::slice::from_ref(&via_cte))[0],
            ColumnMask::Scan { .. }
        ));
        let row = [lenenc(b"7"), lenenc(b"4111111111111111"), lenenc(b"zoe@example.com"), lenenc(b"ssn 123-45-6789")]
            .concat();
        let mut out = Vec::new();
        let mut counts = Counts::default();
        mask_row(&p, &plan, &row, &mut out, &mut counts).unwrap();
        let mut at = 0;
        let mut got = Vec::new();
        while at < out.len() {
            let (v, n) = wire::lenenc_str(&out[at..]).unwrap();
            got.push(v.map(|v| String::from_utf8_lossy(v).into_owned()));
            at += n;
        }
        assert_eq!(got[0].as_deref(), Some("7"));
        assert!(!got[1].as_deref().unwrap().contains("411111111111"), "{got:?}");
        assert!(got[1].as_deref().unwrap().ends_with("1111"), "{got:?}");
        assert_eq!(got[2].as_deref(), Some("****"));
        assert_eq!(got[3].as_deref(), Some("ssn ****"));
        assert!(counts.columns() >= 2);
        // NULL stays NULL.
        let row = [lenenc(b"8"), vec![0xfb], vec![0xfb], lenenc(b"x")].concat();
        out.clear();
        mask_row(&p, &plan, &row, &mut out, &mut counts).unwrap();
        assert_eq!(out, row);
        // A row that does not parse as the plan's columns fails.
        out.clear();
        assert!(mask_row(&p, &plan, &row[..row.len() - 1], &mut out, &mut counts).is_none());
        assert!(mask_row(&p, &plan, &[row.clone(), lenenc(b"extra")].concat(), &mut out, &mut counts).is_none());
    }

    /// A result no rule or detector reaches (one INT column) still has a
    /// plan on a masked session: its rows are read, and one with a value
    /// after the described column is refused, not passed on.
    #[test]
    fn a_result_with_nothing_to_mask_is_still_read_against_its_columns() {
        let p = profile();
        let id = parse_column_def(&coldef("shop", "customers", "id", "id", 0x03)).unwrap();
        let plan = plan(&p, &reads(), &Default::default(), Some("shop"), std::slice::from_ref(&id));
        assert!(matches!(plan[..], [ColumnMask::Pass]), "{plan:?}");
        let (mut out, mut counts) = (Vec::new(), Counts::default());
        mask_row(&p, &plan, &lenenc(b"1"), &mut out, &mut counts).unwrap();
        assert_eq!(out, lenenc(b"1"));
        let smuggled = [lenenc(b"1"), lenenc(b"zoe@example.com")].concat();
        assert!(mask_row(&p, &plan, &smuggled, &mut out, &mut counts).is_none());
        // The binary protocol's row (a prepared statement's) likewise.
        let (mut out, mut counts) = (Vec::new(), Counts::default());
        let row = [vec![0x00, 0x00], 1i32.to_le_bytes().to_vec()].concat();
        super::super::binary::mask_row(&p, &plan, &[0x03], &row, &mut out, &mut counts).unwrap();
        assert_eq!(out, row);
        let smuggled = [row, lenenc(b"zoe@example.com")].concat();
        assert!(super::super::binary::mask_row(&p, &plan, &[0x03], &smuggled, &mut out, &mut counts).is_none());
    }

    #[test]
    fn untraced_columns_are_masked_when_the_statement_reads_a_masked_table() {
        let p = profile();
        let computed = parse_column_def(&coldef("", "", "concat(card,'')", "", 0xfd)).unwrap();
        let count = parse_column_def(&coldef("", "", "count(*)", "", 0x08)).unwrap();
        let plan = plan(&p, &reads(), &Default::default(), Some("shop"), &[computed.clone(), count.clone()]);
        assert!(matches!(plan[0], ColumnMask::Hidden), "{plan:?}");
        assert!(matches!(plan[1], ColumnMask::Rule(Style::Null, _)), "{plan:?}");
        // Hidden whole, NULL included: no part of a value the user shaped, and no answer in its NULLs.
        let mut out = Vec::new();
        let mut counts = Counts::default();
        let row = [lenenc(b"AAAAAAAA4111"), vec![0xfb]].concat();
        let one = [plan[0].clone()];
        mask_row(&p, &one, &row[..13], &mut out, &mut counts).unwrap();
        assert_eq!(out, lenenc(b"****"));
        out.clear();
        mask_row(&p, &one, &[0xfb], &mut out, &mut counts).unwrap();
        assert_eq!(out, lenenc(b"****"));
        // A derived table's column is not traced either.
        let derived = parse_column_def(&coldef("shop", "d", "card", "card", 0xfd)).unwrap();
        assert!(matches!(
            super::plan(&p, &reads(), &Default::default(), Some("shop"), &[derived])[0],
            ColumnMask::Hidden
        ));
        // No table read: the detectors only.
        let plan = super::plan(&p, &[], &Default::default(), Some("shop"), &[computed, count]);
        assert!(matches!(plan[0], ColumnMask::Scan { .. }));
        assert!(matches!(plan[1], ColumnMask::Pass));
    }
}
