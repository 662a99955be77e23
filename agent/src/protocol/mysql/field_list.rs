//! `COM_FIELD_LIST` (0x04): the column definitions of one table, which the
//! `mariadb` client asks for every table on connect (for name completion,
//! unless `-A`). It is decided as what it is, reading the table's column
//! definitions: as ``SHOW COLUMNS FROM `db`.`table` `` with the session's
//! current database (what the server uses too), and recorded under that
//! text like any statement (the packet itself in the stream).
//!
//! The payload is a NUL-terminated table name, then a column-name wildcard
//! (the rest of the packet, passed as it is: it only filters the columns).
//! A name without its NUL, empty, longer than MySQL's names can be, or with
//! bytes outside ASCII (the server reads it in the client's character
//! set) is refused. The answer — column definitions then EOF (or the OK
//! that stands for it), or an ERR — is relayed byte for byte, except on a
//! masked session: there an ERR loses what it quotes, and each column
//! definition loses its default value (see [`without_default`]).

use std::borrow::Cow;

use super::{Conn, Fail, Outcome, Session, payload_of, send_down, wire};
use crate::mask::Counts;

/// Bytes a table name may have (64 characters, in the server's limit with room).
const MAX_NAME: usize = 192;

/// A `COM_FIELD_LIST` payload (command byte first).
#[derive(Debug, PartialEq, Eq)]
pub struct FieldList<'a> {
    pub table: &'a str,
    pub wildcard: &'a [u8],
}

/// Reads a `COM_FIELD_LIST` payload; `Err` says why it is refused.
pub fn parse(payload: &[u8]) -> Result<FieldList<'_>, &'static str> {
    let rest = match payload.split_first() {
        Some((&0x04, rest)) => rest,
        _ => return Err("not a COM_FIELD_LIST"),
    };
    let nul = rest.iter().position(|&b| b == 0).ok_or("a COM_FIELD_LIST without the NUL that ends its table name")?;
    let (name, wildcard) = (rest.get(..nul).unwrap_or_default(), rest.get(nul + 1..).unwrap_or_default());
    if name.is_empty() {
        return Err("a COM_FIELD_LIST with an empty table name");
    }
    if name.len() > MAX_NAME {
        return Err("a COM_FIELD_LIST whose table name is longer than MySQL names can be");
    }
    if !name.is_ascii() {
        return Err(
            "a COM_FIELD_LIST whose table name is not ASCII (the server reads it in the client's character set)",
        );
    }
    let table = std::str::from_utf8(name).map_err(|_| "not ASCII")?;
    Ok(FieldList { table, wildcard })
}

/// The statement a `COM_FIELD_LIST` of `table` is decided and recorded as.
pub fn as_statement(table: &str, database: Option<&str>) -> String {
    let quote = |n: &str| format!("`{}`", n.replace('`', "``"));
    match database {
        Some(db) => format!("SHOW COLUMNS FROM {}.{}", quote(db), quote(table)),
        None => format!("SHOW COLUMNS FROM {}", quote(table)),
    }
}

/// The fixed-length block of a column definition (charset 2, length 4,
/// type 1, flags 2, decimals 1, filler 2), announced by its length 0x0c.
const FIXED: usize = 0x0c;

/// A `COM_FIELD_LIST` column definition (ColumnDefinition41 payload) with
/// its default value replaced by NULL (0xfb), as the server sends a column
/// that has none: a default is text from the table (`DEFAULT
/// 'secret-default-123'`) that no masking rule has read, so a masked session
/// never gets it. Everything before the default is kept as it arrived.
///
/// The six names (catalog, schema, table, org_table, name, org_name) are
/// length-encoded strings, then the fixed block (its length must be 0x0c),
/// then the default: a length-encoded string, NULL, or nothing at all (a
/// server that sends none). A definition whose default is already NULL or
/// absent comes back borrowed, unchanged. Anything else — a field that runs
/// past the packet, another fixed length, bytes after the default — is
/// refused: the caller cannot tell where the default is, so it cannot
/// vouch for the packet.
pub fn without_default(p: &[u8]) -> Result<Cow<'_, [u8]>, &'static str> {
    let mut at = 0usize;
    for _ in 0..6 {
        let rest = p.get(at..).ok_or("a column definition shorter than its names")?;
        match wire::lenenc_str(rest) {
            Some((Some(_), n)) => at += n,
            Some((None, _)) => return Err("a column definition with a NULL name"),
            None => return Err("a column definition whose names run past the packet"),
        }
    }
    match p.get(at) {
        Some(&n) if usize::from(n) == FIXED => at += 1,
        Some(_) => return Err("a column definition whose fixed-length block is not 12 bytes"),
        None => return Err("a column definition without its fixed-length block"),
    }
    let end = at.checked_add(FIXED).ok_or("a column definition too long")?;
    let (head, default) = match (p.get(..end), p.get(end..)) {
        (Some(head), Some(default)) => (head, default),
        _ => return Err("a column definition whose fixed-length block runs past the packet"),
    };
    if default.is_empty() || default == [0xfb] {
        return Ok(Cow::Borrowed(p));
    }
    match wire::lenenc_str(default) {
        Some((Some(_), n)) if n == default.len() => {
            let mut out = Vec::with_capacity(head.len() + 1);
            out.extend_from_slice(head);
            out.push(0xfb);
            Ok(Cow::Owned(out))
        }
        Some(_) => Err("a column definition with bytes after its default value"),
        None => Err("a column definition whose default value runs past the packet"),
    }
}

/// Forwards an allowed `COM_FIELD_LIST` and relays its answer; the last
/// bytes are left in [`Outcome::tail`] (`rows`: the columns listed). On a
/// masked session (`profile`) each column definition loses its default
/// ([`without_default`], counted in `counts` as a masked column value);
/// one that cannot be read ends the session.
pub(super) async fn forward(
    s: &mut Session,
    client: &mut Conn,
    pkt: &[u8],
    (up, down): (&mut u64, &mut u64),
    profile: Option<&crate::mask::Profile>,
    counts: &mut Counts,
) -> Result<Outcome, Fail> {
    s.backend.send(pkt).await.map_err(|e| Fail::Backend(e.to_string()))?;
    *up += pkt.len() as u64;
    let mut out = Vec::new();
    let mut columns = 0u64;
    loop {
        let pk = super::read_backend(s).await?;
        let p = payload_of(&pk);
        if p.len() >= wire::MAX_PAYLOAD {
            return Err(Fail::Backend("an oversized packet in the answer to COM_FIELD_LIST".into()));
        }
        match p.first() {
            Some(0xff) => {
                match profile {
                    Some(profile) => super::masking::mask_err(profile, &pk, &mut out, counts),
                    None => out.extend_from_slice(&pk),
                }
                let e = wire::parse_err(p)
                    .map_or_else(|| "error".into(), |e| format!("{} ({}): {}", e.code, e.state, e.message));
                return Ok(Outcome { rows: None, error: Some(e), prepared: None, tail: out });
            }
            // A column definition starts with its catalog ("def"), never 0xfe.
            Some(0xfe) if p.len() < 9 || s.deprecate_eof => {
                out.extend_from_slice(&pk);
                return Ok(Outcome { rows: Some(columns), error: None, prepared: None, tail: out });
            }
            _ => {
                columns += 1;
                if columns > super::MAX_COLUMNS {
                    return Err(Fail::Backend("more column definitions than MySQL allows".into()));
                }
                match profile.map(|_| without_default(p)) {
                    None | Some(Ok(Cow::Borrowed(_))) => out.extend_from_slice(&pk),
                    Some(Ok(Cow::Owned(def))) => {
                        // Shorter than the packet it replaces: one packet still, same sequence id.
                        out.extend_from_slice(&wire::frame(pk.get(3).copied().unwrap_or(0), &def));
                        counts.add_columns(1);
                    }
                    Some(Err(why)) => {
                        return Err(Fail::Backend(format!("in the answer to COM_FIELD_LIST: {why}")));
                    }
                }
                if out.len() >= super::FLUSH_AT {
                    send_down(s, client, &out, down).await?;
                    out.clear();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_name_ends_at_its_nul_and_the_wildcard_is_the_rest() {
        assert_eq!(parse(b"\x04items\0"), Ok(FieldList { table: "items", wildcard: b"" }));
        assert_eq!(parse(b"\x04items\0na%"), Ok(FieldList { table: "items", wildcard: b"na%" }));
        // The wildcard may hold anything, a NUL included: it is the rest of the packet.
        assert_eq!(parse(b"\x04t\0a\0b"), Ok(FieldList { table: "t", wildcard: b"a\0b" }));
        assert_eq!(parse(b"\x04we`ird\0"), Ok(FieldList { table: "we`ird", wildcard: b"" }));
        assert!(parse(b"\x04items").is_err(), "no NUL: refused, never read to the end");
        assert!(parse(b"\x04\0").is_err(), "empty name");
        assert!(parse(b"\x04").is_err());
        assert!(parse(b"").is_err());
        assert!(parse(b"\x03items\0").is_err(), "another command");
        assert!(parse(b"\x04caf\xc3\xa9\0").is_err(), "non-ASCII: the server reads it in the client's charset");
        let mut long = vec![0x04];
        long.extend(std::iter::repeat_n(b'a', MAX_NAME + 1));
        long.push(0);
        assert!(parse(&long).is_err());
    }

    /// `note varchar(40) DEFAULT 'secret-default-123'` of `appdb.defaults`,
    /// as MariaDB 10.11 answers a COM_FIELD_LIST (utf8mb4, length 160).
    const NOTE: &[u8] = b"\x03def\x05appdb\x08defaults\x08defaults\x04note\x04note\
        \x0c\x2d\x00\xa0\x00\x00\x00\xfd\x00\x00\x00\x00\x00\
        \x12secret-default-123";
    /// Where NOTE's default starts (after the 0x0c block).
    const NOTE_HEAD: usize = NOTE.len() - 19;

    #[test]
    fn a_default_value_is_replaced_by_null_and_the_rest_kept() {
        let out = without_default(NOTE).unwrap();
        assert!(matches!(out, Cow::Owned(_)));
        assert_eq!(out.get(..NOTE_HEAD), NOTE.get(..NOTE_HEAD), "names and fixed block kept byte for byte");
        assert_eq!(out.get(NOTE_HEAD..), Some(&[0xfb][..]), "the default is NULL");
        // What came out reads again, and has nothing left to drop.
        assert!(matches!(without_default(&out), Ok(Cow::Borrowed(_))));
        assert!(!out.windows(6).any(|w| w == b"secret"));
        // A default longer than 250 bytes (0xfc + 2-byte length) goes too.
        let mut long = NOTE.get(..NOTE_HEAD).unwrap().to_vec();
        long.extend_from_slice(&[0xfc, 0x2c, 0x01]);
        long.extend(std::iter::repeat_n(b'x', 300));
        let out = without_default(&long).unwrap();
        assert_eq!(out.len(), NOTE_HEAD + 1);
        assert_eq!(out.last(), Some(&0xfb));
        // An empty default ('') is a value as well: NULL in its place.
        let mut empty = NOTE.get(..NOTE_HEAD).unwrap().to_vec();
        empty.push(0);
        assert_eq!(without_default(&empty).unwrap().get(NOTE_HEAD..), Some(&[0xfb][..]));
    }

    #[test]
    fn a_definition_without_a_default_is_passed_as_it_is() {
        let mut null = NOTE.get(..NOTE_HEAD).unwrap().to_vec();
        null.push(0xfb);
        assert_eq!(without_default(&null), Ok(Cow::Borrowed(&null[..])));
        // No default at all (not a COM_FIELD_LIST answer's shape, but nothing to drop).
        let none = NOTE.get(..NOTE_HEAD).unwrap();
        assert_eq!(without_default(none), Ok(Cow::Borrowed(none)));
    }

    #[test]
    fn a_truncated_or_garbled_definition_is_refused_not_a_panic() {
        // Cut anywhere: refused, except right after the fixed block (no default).
        for cut in 0..NOTE.len() {
            let r = without_default(NOTE.get(..cut).unwrap());
            assert_eq!(r.is_ok(), cut == NOTE_HEAD, "cut at {cut}: {r:?}");
        }
        let with = |at: usize, b: u8| {
            let mut v = NOTE.to_vec();
            v[at] = b;
            v
        };
        // Another fixed-block length (0x0b, 0x0d): the default cannot be found.
        let fixed_at = NOTE_HEAD - 13;
        assert_eq!(NOTE[fixed_at], 0x0c);
        assert!(without_default(&with(fixed_at, 0x0b)).is_err());
        assert!(without_default(&with(fixed_at, 0x0d)).is_err());
        // A default longer or shorter than what is there.
        assert!(without_default(&with(NOTE_HEAD, 0x13)).is_err(), "runs past the packet");
        assert!(without_default(&with(NOTE_HEAD, 0x11)).is_err(), "bytes after the default");
        assert!(without_default(&with(NOTE_HEAD, 0xff)).is_err(), "no such length");
        let mut after = NOTE.to_vec();
        after.push(0);
        assert!(without_default(&after).is_err(), "bytes after the default");
        let mut null_then = NOTE.get(..NOTE_HEAD).unwrap().to_vec();
        null_then.extend_from_slice(&[0xfb, 0xfb]);
        assert!(without_default(&null_then).is_err(), "bytes after a NULL default");
        // A name whose length runs past the packet, a NULL name, huge lengths.
        assert!(without_default(&with(0, 0x7f)).is_err());
        assert!(without_default(&with(0, 0xfb)).is_err());
        assert!(without_default(b"\xfe\xff\xff\xff\xff\xff\xff\xff\xff").is_err());
        assert!(without_default(b"\xfc\xff").is_err());
        assert!(without_default(b"").is_err());
        // An EOF or ERR packet is no column definition.
        assert!(without_default(b"\xfe\x00\x00\x02\x00").is_err());
        assert!(without_default(b"\xff\x7a\x04#42S02Table 'x' doesn't exist").is_err());
    }

    #[test]
    fn it_is_decided_as_show_columns_of_the_qualified_table() {
        assert_eq!(as_statement("items", Some("appdb")), "SHOW COLUMNS FROM `appdb`.`items`");
        assert_eq!(as_statement("we`ird", Some("d`b")), "SHOW COLUMNS FROM `d``b`.`we``ird`");
        assert_eq!(as_statement("items", None), "SHOW COLUMNS FROM `items`");
        let names = crate::sql::mysql::Names { database: Some("appdb".into()), fold_case: true, masked: false };
        let c = crate::sql::mysql::classify(as_statement("we`ird", Some("appdb")).as_bytes(), &names).unwrap();
        assert_eq!(c.statement.kinds.iter().map(|k| k.name()).collect::<Vec<_>>(), ["show"]);
        // It reads the table: `tables` / `deny_tables` apply to it.
        let c = crate::sql::mysql::classify(as_statement("Items", None).as_bytes(), &names).unwrap();
        assert_eq!(c.statement.reads.iter().map(ToString::to_string).collect::<Vec<_>>(), ["appdb.items"]);
    }
}
