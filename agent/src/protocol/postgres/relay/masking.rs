//! Masking on the PostgreSQL relay: the plan for each result (from the
//! server's row description and the statement's lineage, see
//! `crate::mask::plan`), rows rewritten while streaming, `COPY … TO` rows by
//! column, and detectors over errors, notices, notifications and function
//! call results.

use std::sync::Arc;

use crate::catalog::{Bound, Catalog};
use crate::mask::{ColumnMask, Counts, MaskOutput, Profile, REDACTED, ResultColumn, Style, TokenKey};
use crate::protocol::postgres::Ctx;
use crate::protocol::postgres::wire::{self, Frame, PgError, Severity, WireError};
use crate::sql::lineage::Lineage;
use crate::sql::{Statement, TableRef};

/// Why a statement is refused on a masked session, if it is (see
/// [`Profile::refusal`]), and `COPY … TO` options whose rows Gatehouse
/// cannot rewrite by column.
pub(super) fn refusal(ctx: &Ctx, cat: &Catalog, s: &Statement) -> Option<PgError> {
    let profile = ctx.mask.as_ref()?;
    if let Some(f) = s.reads_unseen() {
        return Some(
            PgError::new(
                Severity::Error,
                "42501",
                format!(
                    "Gatehouse refused this statement: it calls {f}, which reads rows by a name or SQL text it is given, where masking cannot follow them"
                ),
            )
            .hint("select the columns from the table itself"),
        );
    }
    let lineage = s.lineage.as_ref()?;
    let tables: Vec<TableRef> = s.reads.iter().chain(&s.writes).cloned().collect();
    let bound = cat.bind_shared(lineage, &tables);
    let why = profile.refusal(cat, &bound).or_else(|| {
        let copy = lineage.copy.as_ref()?;
        let masked = bound.all.iter().chain(bound.expanded.iter().flatten()).any(|o| profile.origin_style(cat, *o).is_some());
        (masked && copy.unusual).then(|| {
            "its COPY options (QUOTE, ESCAPE, NULL, FORCE_QUOTE, ENCODING or an unusual delimiter) prevent masking by column; use the defaults".to_owned()
        })
    })?;
    Some(
        PgError::new(Severity::Error, "42501", format!("Gatehouse refused this statement: {why}"))
            .hint("masking follows the data: see `gatehouse policy explain` and the README's masking section"),
    )
}

/// What a result's rows are traced to: the statement's lineage and the relations it resolved.
pub(super) struct Trace {
    pub lineage: Option<Arc<Lineage>>,
    pub relations: Arc<[TableRef]>,
}

fn catalog(db: &crate::protocol::postgres::SessionDb) -> Arc<Catalog> {
    db.catalog.snapshot().map_or_else(|| Arc::new(Catalog::default()), |(c, _)| c)
}

fn bound(cat: &Catalog, trace: &Trace) -> Option<Arc<Bound>> {
    trace.lineage.as_ref().map(|l| cat.bind_shared(l, &trace.relations))
}

/// The plan for a result described by `cols`. An empty plan means nothing
/// in it is masked (rows are forwarded untouched).
pub(super) fn result_plan(
    profile: &Profile,
    db: &crate::protocol::postgres::SessionDb,
    trace: &Trace,
    cols: &[wire::Column],
) -> Vec<ColumnMask> {
    let cat = catalog(db);
    let bound = bound(&cat, trace);
    let cols: Vec<ResultColumn<'_>> = cols
        .iter()
        .map(|c| ResultColumn {
            name: &c.name,
            table_oid: c.table_oid,
            attnum: c.attnum,
            type_oid: c.type_oid,
            binary: c.format == 1,
        })
        .collect();
    let plan = profile.plan(&cat, bound.as_deref(), &cols);
    if plan.iter().all(|c| matches!(c, ColumnMask::Pass)) { Vec::new() } else { plan }
}

/// How the rows of a `COPY … TO` in text or CSV format are masked.
#[derive(Debug)]
pub(super) struct CopyPlan {
    styles: Vec<Option<(Style, TokenKey)>>,
    delimiter: u8,
    csv: bool,
    /// The next row is the header line.
    header: bool,
    /// A query's fields may be computed: a masked field's NULL is hidden too.
    hide_nulls: bool,
}

/// The plan for a `COPY … TO` of `width` columns.
pub(super) fn copy_plan(
    profile: &Profile,
    db: &crate::protocol::postgres::SessionDb,
    trace: &Trace,
    width: usize,
) -> Option<CopyPlan> {
    let lineage = trace.lineage.as_ref()?;
    let format = lineage.copy.as_ref()?;
    let cat = catalog(db);
    let bound = cat.bind(lineage, &trace.relations);
    let styles = profile.copy_plan(&cat, &bound, width, format.relation);
    if !styles.iter().any(Option::is_some) {
        return None;
    }
    Some(CopyPlan {
        styles,
        delimiter: format.delimiter,
        csv: format.csv,
        header: format.header,
        hide_nulls: !format.relation,
    })
}

/// The trail's key capture for a result described by `cols` (`plan`: its
/// masking plan, empty when nothing is masked), when the policy trails a
/// table the result touches.
pub(super) fn trail_capture(
    ctx: &Ctx,
    db: &crate::protocol::postgres::SessionDb,
    trace: &Trace,
    cols: &[wire::Column],
    plan: &[ColumnMask],
) -> Option<crate::trail::Capture> {
    let cfg = ctx.svc.snapshot.load().policy.trail.clone();
    if cfg.is_empty() {
        return None;
    }
    let cat = catalog(db);
    let bound = bound(&cat, trace);
    let relations = crate::trail::relation_oids(&cat, &trace.relations);
    let cols: Vec<crate::trail::ResultCol> = cols
        .iter()
        .enumerate()
        .map(|(i, c)| crate::trail::ResultCol {
            table_oid: c.table_oid,
            attnum: c.attnum,
            type_oid: c.type_oid,
            binary: c.format == 1,
            masked: matches!(plan.get(i), Some(ColumnMask::Rule(..) | ColumnMask::Hidden)),
        })
        .collect();
    crate::trail::Capture::for_result(&cfg, ctx.svc.audit.trail_key(), &cat, bound.as_deref(), &relations, &cols)
}

/// The trail's key capture for a `COPY … TO` of `width` columns.
pub(super) fn trail_copy_capture(
    ctx: &Ctx,
    db: &crate::protocol::postgres::SessionDb,
    trace: &Trace,
    width: usize,
    plan: Option<&CopyPlan>,
) -> Option<crate::trail::Capture> {
    let cfg = ctx.svc.snapshot.load().policy.trail.clone();
    if cfg.is_empty() {
        return None;
    }
    let lineage = trace.lineage.as_ref()?;
    let format = lineage.copy.as_ref()?;
    let cat = catalog(db);
    let bound = cat.bind(lineage, &trace.relations);
    let relations = crate::trail::relation_oids(&cat, &trace.relations);
    let masked: Vec<bool> = match plan {
        Some(p) => p.styles.iter().map(Option::is_some).collect(),
        None => vec![false; width],
    };
    crate::trail::Capture::for_copy(&cfg, ctx.svc.audit.trail_key(), &cat, &bound, &relations, width, format, &masked)
}

/// Splits one COPY text/CSV row (without its line end) into fields: byte
/// ranges, and whether each is NULL.
fn copy_fields(row: &[u8], delimiter: u8, csv: bool) -> Vec<(usize, usize, bool)> {
    let mut out = Vec::new();
    let mut start = 0usize;
    let mut i = 0usize;
    let mut quoted = false;
    while let Some(&b) = row.get(i) {
        if csv {
            if b == b'"' {
                quoted = !quoted;
            } else if b == delimiter && !quoted {
                out.push((start, i, false));
                start = i + 1;
            }
        } else if b == b'\\' {
            i += 1;
        } else if b == delimiter {
            out.push((start, i, false));
            start = i + 1;
        }
        i += 1;
    }
    out.push((start, row.len().max(start), false));
    for f in &mut out {
        let v = row.get(f.0..f.1).unwrap_or_default();
        f.2 = if csv { v.is_empty() } else { v == b"\\N" };
    }
    out
}

/// Masks one COPY row by column, then runs the detectors over the rest.
/// A row that does not split into the expected columns is redacted whole.
pub(super) fn mask_copy_row(
    profile: &Profile,
    plan: &mut CopyPlan,
    data: &[u8],
    out: &mut Vec<u8>,
    counts: &mut Counts,
) {
    if std::mem::take(&mut plan.header) {
        scan_into(profile, data, out, counts);
        return;
    }
    let (row, end) = match data.strip_suffix(b"\r\n") {
        Some(r) => (r, &b"\r\n"[..]),
        None => match data.strip_suffix(b"\n") {
            Some(r) => (r, &b"\n"[..]),
            None => (data, &b""[..]),
        },
    };
    let fields = copy_fields(row, plan.delimiter, plan.csv);
    if fields.len() != plan.styles.len() {
        out.extend_from_slice(b"****\n");
        counts.add_columns(1);
        return;
    }
    let mut masked = Vec::with_capacity(data.len());
    for (i, ((s, e, null), style)) in fields.iter().zip(&plan.styles).enumerate() {
        if i > 0 {
            masked.push(plan.delimiter);
        }
        let v = row.get(*s..*e).unwrap_or_default();
        match style {
            Some((style, key)) if !null || (plan.hide_nulls && *style != Style::Null) => {
                counts.add_columns(1);
                let at = masked.len();
                if plan.csv {
                    masked.push(b'"');
                }
                let raw =
                    if plan.csv { v.strip_prefix(b"\"").and_then(|v| v.strip_suffix(b"\"")).unwrap_or(v) } else { v };
                if profile.mask_value(*style, key, raw, &mut masked) == MaskOutput::Null {
                    masked.truncate(at);
                    masked.extend_from_slice(if plan.csv { b"" } else { b"\\N" });
                } else if plan.csv {
                    masked.push(b'"');
                }
            }
            _ => masked.extend_from_slice(v),
        }
    }
    masked.extend_from_slice(end);
    scan_into(profile, &masked, out, counts);
}

/// Appends `data` with the detectors applied (a null-style hit redacts it whole).
fn scan_into(profile: &Profile, data: &[u8], out: &mut Vec<u8>, counts: &mut Counts) {
    let at = out.len();
    match profile.scan(data, out, counts) {
        MaskOutput::Unchanged => out.extend_from_slice(data),
        MaskOutput::Written => {}
        MaskOutput::Null => {
            out.truncate(at);
            out.extend_from_slice(b"****\n");
        }
    }
}

/// Writes a message `tag` with `body`.
fn message(tag: u8, body: &[u8], out: &mut Vec<u8>) {
    out.push(tag);
    out.extend_from_slice(&u32::try_from(body.len() + 4).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(body);
}

/// A CopyData of a masked `COPY … TO`: by column when there is a plan, else the detectors.
pub(super) fn mask_copy_data(
    profile: &Profile,
    plan: Option<&mut CopyPlan>,
    f: Frame<'_>,
    out: &mut Vec<u8>,
    scratch: &mut Vec<u8>,
    counts: &mut Counts,
) {
    scratch.clear();
    match plan {
        Some(plan) => mask_copy_row(profile, plan, f.body, scratch, counts),
        None => scan_into(profile, f.body, scratch, counts),
    }
    if scratch.as_slice() == f.body {
        out.extend_from_slice(f.raw);
    } else {
        message(b'd', scratch, out);
    }
}

/// A NotificationResponse: the detectors over its payload.
pub(super) fn mask_notification(
    profile: &Profile,
    f: Frame<'_>,
    out: &mut Vec<u8>,
    counts: &mut Counts,
) -> Result<(), WireError> {
    let (pid, channel, payload) = wire::notification(f.body)?;
    let mut masked = Vec::new();
    match profile.scan(payload, &mut masked, counts) {
        MaskOutput::Unchanged => {
            out.extend_from_slice(f.raw);
            return Ok(());
        }
        MaskOutput::Written => {}
        MaskOutput::Null => masked = b"****".to_vec(),
    }
    let mut body = pid.to_be_bytes().to_vec();
    body.extend_from_slice(channel);
    body.push(0);
    body.extend_from_slice(&masked);
    body.push(0);
    message(b'A', &body, out);
    Ok(())
}

/// A FunctionCallResponse: the detectors over its value.
pub(super) fn mask_function_result(
    profile: &Profile,
    f: Frame<'_>,
    out: &mut Vec<u8>,
    counts: &mut Counts,
) -> Result<(), WireError> {
    let malformed = || WireError::Malformed { what: "FunctionCallResponse" };
    let len =
        f.body.get(..4).and_then(|b| <[u8; 4]>::try_from(b).ok()).map(i32::from_be_bytes).ok_or_else(malformed)?;
    let value = f.body.get(4..).unwrap_or_default();
    if len < 0 || usize::try_from(len).ok() != Some(value.len()) {
        if len < 0 && value.is_empty() {
            out.extend_from_slice(f.raw);
            return Ok(());
        }
        return Err(malformed());
    }
    let mut masked = Vec::new();
    let body = match profile.scan(value, &mut masked, counts) {
        MaskOutput::Unchanged => {
            out.extend_from_slice(f.raw);
            return Ok(());
        }
        MaskOutput::Written => {
            let mut b = i32::try_from(masked.len()).map_err(|_| malformed())?.to_be_bytes().to_vec();
            b.extend_from_slice(&masked);
            b
        }
        MaskOutput::Null => (-1i32).to_be_bytes().to_vec(),
    };
    message(b'V', &body, out);
    Ok(())
}

/// Masks one DataRow per the plan, rewriting lengths, in one pass straight
/// into `out` with no allocation per row. A row nothing in was masked comes
/// out byte-identical to the one received.
pub(super) fn mask_row(
    profile: &Profile,
    cols: &[ColumnMask],
    f: Frame<'_>,
    out: &mut Vec<u8>,
    counts: &mut Counts,
) -> Result<(), WireError> {
    let malformed = || WireError::Malformed { what: "DataRow" };
    let body = f.body;
    let n = body.get(..2).and_then(|b| <[u8; 2]>::try_from(b).ok()).map(i16::from_be_bytes).ok_or_else(malformed)?;
    if usize::try_from(n).ok() != Some(cols.len()) {
        return Err(WireError::Malformed { what: "DataRow (column count differs from RowDescription)" });
    }
    let row_start = out.len();
    out.push(b'D');
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(body.get(..2).unwrap_or_default());
    let mut at = 2usize;
    for c in cols {
        let len = body
            .get(at..at + 4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(i32::from_be_bytes)
            .ok_or_else(malformed)?;
        at += 4;
        if len < 0 {
            // A computed value's NULL is hidden too (`nullif(ssn, '…')` would answer).
            if matches!(c, ColumnMask::Hidden) {
                out.extend_from_slice(&i32::try_from(REDACTED.len()).unwrap_or(4).to_be_bytes());
                out.extend_from_slice(REDACTED);
                counts.add_columns(1);
            } else {
                out.extend_from_slice(&(-1i32).to_be_bytes());
            }
            continue;
        }
        let end = at.checked_add(usize::try_from(len).map_err(|_| malformed())?).ok_or_else(malformed)?;
        let v = body.get(at..end).ok_or_else(malformed)?;
        at = end;
        let len_at = out.len();
        out.extend_from_slice(&[0; 4]);
        let value_at = out.len();
        let result = match c {
            ColumnMask::Pass => MaskOutput::Unchanged,
            ColumnMask::Hidden => {
                out.extend_from_slice(REDACTED);
                counts.add_columns(1);
                MaskOutput::Written
            }
            ColumnMask::Rule(style, key) => {
                let r = profile.mask_value(*style, key, v, out);
                if r != MaskOutput::Unchanged {
                    counts.add_columns(1);
                }
                r
            }
            // (Not planned on PostgreSQL: its notices are masked as messages.)
            ColumnMask::Quoted => profile.scan(v, out, counts),
            ColumnMask::Scan { skip } => {
                let (head, tail) = v.split_at((*skip).min(v.len()));
                out.extend_from_slice(head);
                match profile.scan(tail, out, counts) {
                    MaskOutput::Unchanged => {
                        out.truncate(value_at);
                        MaskOutput::Unchanged
                    }
                    other => other,
                }
            }
        };
        let written = match result {
            MaskOutput::Unchanged => {
                out.extend_from_slice(v);
                i32::try_from(v.len()).map_err(|_| malformed())?
            }
            MaskOutput::Written => i32::try_from(out.len() - value_at).map_err(|_| malformed())?,
            MaskOutput::Null => {
                out.truncate(value_at);
                -1
            }
        };
        if let Some(slot) = out.get_mut(len_at..len_at + 4) {
            slot.copy_from_slice(&written.to_be_bytes());
        }
    }
    if at != body.len() {
        out.truncate(row_start);
        return Err(malformed());
    }
    let total = u32::try_from(out.len() - row_start - 1).map_err(|_| malformed())?;
    if let Some(slot) = out.get_mut(row_start + 1..row_start + 5) {
        slot.copy_from_slice(&total.to_be_bytes());
    }
    Ok(())
}

/// Whether a statement's messages may echo masked values: it reads,
/// filters on or stores a masked column, or it touches (reads or writes) a
/// relation with masked columns — a constraint's "Failing row contains
/// (…)" shows the whole row whatever the statement named. `trace` is the
/// statement's, or for `FETCH` its cursor's.
pub(super) fn touches_masked(ctx: &Ctx, db: &crate::protocol::postgres::SessionDb, trace: &Trace) -> bool {
    let Some(profile) = &ctx.mask else { return false };
    let cat = catalog(db);
    let masked = |o: &crate::catalog::Origin| profile.origin_style(&cat, *o).is_some();
    if let Some(b) = bound(&cat, trace)
        && b.all.iter().chain(b.expanded.iter().flatten()).chain(&b.predicates).chain(&b.stored).any(masked)
    {
        return true;
    }
    trace
        .relations
        .iter()
        .flat_map(|t| cat.relations_for_name(t.schema.as_deref(), &t.name))
        .any(|oid| masked(&crate::catalog::Origin { relation: oid, attnum: 0 }))
}

/// What a message field of a statement that touches masked columns keeps:
/// its text up to the first place a value could start — a quote, a
/// parenthesis, a bracket, a brace, a colon, `=` or a digit — and `****`
/// for the rest. PostgreSQL puts values after such a mark (`…: "12x"`,
/// `Failing row contains (…)`, `Key (email)=(…)`, `date field value out of
/// range: 2020-01-49`, `JSON data, line 1: …`); matching quotes is not
/// enough, since the value itself may hold a quote or a parenthesis that
/// would end the redaction early. `false` when nothing was cut.
fn cut_values(value: &[u8], out: &mut Vec<u8>) -> bool {
    let mark = |b: &u8| matches!(b, b'"' | b'\'' | b'(' | b'[' | b'{' | b':' | b'=') || b.is_ascii_digit();
    let Some(at) = value.iter().position(mark) else { return false };
    // A colon stays (`…: ****`); a quote, bracket or digit may be the value's own.
    let keep = if value.get(at) == Some(&b':') { at + 1 } else { at };
    let kept = value.get(..keep).unwrap_or_default();
    out.extend_from_slice(kept);
    out.extend_from_slice(if kept.is_empty() || kept.ends_with(b" ") { b"****" } else { b" ****" });
    true
}

/// Errors and notices can echo values ("Key (email)=(…) already exists"):
/// on masked sessions their text fields go through the detectors, and with
/// `strict` (the statement touches masked columns, [`touches_masked`]) the
/// message, detail, hint, context and internal query lose everything from
/// where a value could start ([`cut_values`]).
pub(super) fn mask_message(ctx: &Ctx, f: Frame<'_>, out: &mut Vec<u8>, strict: bool) {
    let Some(profile) = &ctx.mask else {
        out.extend_from_slice(f.raw);
        return;
    };
    let Ok(fields) = wire::error_fields(f.body) else {
        out.extend_from_slice(f.raw);
        return;
    };
    let mut counts = Counts::default();
    let mut body = Vec::with_capacity(f.body.len());
    let mut changed = false;
    for (code, value) in fields {
        body.push(code);
        let start = body.len();
        let mut redacted = Vec::new();
        let value = if strict && matches!(code, b'M' | b'D' | b'H' | b'W' | b'q') && cut_values(value, &mut redacted) {
            changed = true;
            &redacted[..]
        } else {
            value
        };
        let result = if matches!(code, b'M' | b'D' | b'H' | b'W' | b'q') {
            profile.scan(value, &mut body, &mut counts)
        } else {
            MaskOutput::Unchanged
        };
        match result {
            MaskOutput::Written => changed = true,
            // A null-style hit cannot be a NULL inside a message: redact the field.
            MaskOutput::Null => {
                changed = true;
                body.truncate(start);
                body.extend_from_slice(b"****");
            }
            MaskOutput::Unchanged => {
                body.truncate(start);
                body.extend_from_slice(value);
            }
        }
        body.push(0);
    }
    body.push(0);
    if !changed {
        out.extend_from_slice(f.raw);
        return;
    }
    message(f.tag, &body, out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mask::ProfileSpec;

    fn profile() -> Profile {
        Profile::compile(&ProfileSpec {
            name: "p".into(),
            detectors: vec![(crate::mask::Detector::UsSsn, Style::Redact)],
            ..ProfileSpec::default()
        })
        .unwrap()
    }

    #[test]
    fn copy_rows_are_masked_by_column() {
        let p = profile();
        let mut counts = Counts::default();
        let k = || p.token_key(crate::mask::TokenScope::Column { table: None, column: "c" });
        let mut plan = CopyPlan {
            styles: vec![None, Some((Style::Partial, k())), Some((Style::Null, k()))],
            delimiter: b'\t',
            csv: false,
            header: false,
            hide_nulls: false,
        };
        let mut out = Vec::new();
        mask_copy_row(&p, &mut plan, b"1\tzoe@example.com\tx\\ty\n", &mut out, &mut counts);
        assert_eq!(out, b"1\t****@example.com\t\\N\n");
        out.clear();
        mask_copy_row(&p, &mut plan, b"2\t\\N\t123-45-6789\n", &mut out, &mut counts);
        assert_eq!(out, b"2\t\\N\t\\N\n", "NULL stays NULL, a masked column hides the detector's hit too");
        out.clear();
        mask_copy_row(&p, &mut plan, b"3\tonly two\n", &mut out, &mut counts);
        assert_eq!(out, b"****\n", "a row that does not split is redacted whole");
        let mut csv = CopyPlan {
            styles: vec![None, Some((Style::Redact, k()))],
            delimiter: b',',
            csv: true,
            header: true,
            hide_nulls: false,
        };
        out.clear();
        mask_copy_row(&p, &mut csv, b"id,email\n", &mut out, &mut counts);
        assert_eq!(out, b"id,email\n");
        out.clear();
        mask_copy_row(&p, &mut csv, b"1,\"a,\"\"b\"\"\"\n", &mut out, &mut counts);
        assert_eq!(out, b"1,\"****\"\n");
        out.clear();
        mask_copy_row(&p, &mut csv, b"2,123-45-6789\n", &mut out, &mut counts);
        assert_eq!(out, b"2,\"****\"\n");
        // A query's fields may be computed: a masked field's NULL is hidden as well.
        for (csv, row, want) in [(false, &b"4\t\\N\n"[..], &b"4\t****\n"[..]), (true, b"4,\n", b"4,\"****\"\n")] {
            let mut q = CopyPlan {
                styles: vec![None, Some((Style::Redact, k()))],
                delimiter: if csv { b',' } else { b'\t' },
                csv,
                header: false,
                hide_nulls: true,
            };
            out.clear();
            mask_copy_row(&p, &mut q, row, &mut out, &mut counts);
            assert_eq!(String::from_utf8_lossy(&out), String::from_utf8_lossy(want));
        }
    }

    #[test]
    fn values_are_cut_from_messages() {
        let cut = |m: &[u8]| {
            let mut out = Vec::new();
            cut_values(m, &mut out).then(|| String::from_utf8(out).unwrap())
        };
        assert_eq!(
            cut(b"invalid input syntax for type integer: \"123456789x\"").unwrap(),
            "invalid input syntax for type integer: ****"
        );
        // A value holding quotes or parentheses cannot end the redaction early.
        assert_eq!(
            cut(b"invalid input syntax for type integer: \"\"x123-45-6789\"").unwrap(),
            "invalid input syntax for type integer: ****"
        );
        assert_eq!(cut(b"Failing row contains (1, x), ZETA-SECRET, 3).").unwrap(), "Failing row contains ****");
        assert_eq!(cut(b"Key (email)=(zoe@example.com) already exists.").unwrap(), "Key ****");
        assert_eq!(cut(b"\"x\" is not a number").unwrap(), "****");
        // Values PostgreSQL does not quote.
        assert_eq!(cut(b"date field value out of range: 2020-01-49").unwrap(), "date field value out of range: ****");
        assert_eq!(
            cut(b"requested character too large for encoding: 49000000").unwrap(),
            "requested character too large for encoding: ****"
        );
        assert_eq!(cut(b"value 49000000 is out of range").unwrap(), "value ****");
        assert_eq!(cut(b"division by zero"), None);
    }

    #[test]
    fn notifications_and_function_results_are_scanned() {
        let p = profile();
        let mut counts = Counts::default();
        let mut body = 9u32.to_be_bytes().to_vec();
        body.extend_from_slice(b"ch\0ssn 123-45-6789\0");
        let mut raw = vec![b'A'];
        raw.extend_from_slice(&u32::try_from(body.len() + 4).unwrap().to_be_bytes());
        raw.extend_from_slice(&body);
        let mut out = Vec::new();
        mask_notification(&p, Frame { tag: b'A', body: &body, raw: &raw }, &mut out, &mut counts).unwrap();
        let (_, channel, payload) = wire::notification(out.get(5..).unwrap()).unwrap();
        assert_eq!((channel, payload), (&b"ch"[..], &b"ssn ****"[..]));
        let mut v = 11i32.to_be_bytes().to_vec();
        v.extend_from_slice(b"123-45-6789");
        let mut out = Vec::new();
        mask_function_result(&p, Frame { tag: b'V', body: &v, raw: &v }, &mut out, &mut counts).unwrap();
        assert_eq!(out.get(5..).unwrap(), [&4i32.to_be_bytes()[..], b"****"].concat());
        assert!(mask_function_result(&p, Frame { tag: b'V', body: &v[..6], raw: &v }, &mut out, &mut counts).is_err());
    }
}
