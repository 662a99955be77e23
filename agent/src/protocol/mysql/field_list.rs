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
//! that stands for it), or an ERR — is relayed byte for byte; on a masked
//! session an ERR loses what it quotes.

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

/// Forwards an allowed `COM_FIELD_LIST` and relays its answer; the last
/// bytes are left in [`Outcome::tail`] (`rows`: the columns listed).
pub(super) async fn forward(
    s: &mut Session,
    client: &mut Conn,
    pkt: &[u8],
    (up, down): (&mut u64, &mut u64),
    profile: Option<&crate::mask::Profile>,
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
                    Some(profile) => super::masking::mask_err(profile, &pk, &mut out, &mut Counts::default()),
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
                out.extend_from_slice(&pk);
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

    #[test]
    fn it_is_decided_as_show_columns_of_the_qualified_table() {
        assert_eq!(as_statement("items", Some("appdb")), "SHOW COLUMNS FROM `appdb`.`items`");
        assert_eq!(as_statement("we`ird", Some("d`b")), "SHOW COLUMNS FROM `d``b`.`we``ird`");
        assert_eq!(as_statement("items", None), "SHOW COLUMNS FROM `items`");
        let names = crate::sql::mysql::Names { database: Some("appdb".into()), fold_case: true };
        let c = crate::sql::mysql::classify(as_statement("we`ird", Some("appdb")).as_bytes(), &names).unwrap();
        assert_eq!(c.statement.kinds.iter().map(|k| k.name()).collect::<Vec<_>>(), ["show"]);
        // It reads the table: `tables` / `deny_tables` apply to it.
        let c = crate::sql::mysql::classify(as_statement("Items", None).as_bytes(), &names).unwrap();
        assert_eq!(c.statement.reads.iter().map(ToString::to_string).collect::<Vec<_>>(), ["appdb.items"]);
    }
}
