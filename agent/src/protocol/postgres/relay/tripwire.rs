//! The tripwire: the server says what it did in every CommandComplete tag
//! (`DELETE 5`, `ALTER ROLE`, `SELECT 1`). A tag the decision did not allow
//! (a `DELETE` for a statement classified as a `select`), or a command the
//! classification did not see at all, means the classifier read the text
//! differently from the server: the session is ended and the breach recorded.

use std::collections::BTreeSet;

use crate::sql::Kind;

/// The statement kinds a CommandComplete tag is consistent with; `None`
/// for a tag Gatehouse does not know (judged consistent only with opaque kinds).
fn tag_kinds(tag: &str) -> Option<&'static [Kind]> {
    let word = |w: &str| tag.strip_prefix(w).is_some_and(|rest| rest.is_empty() || rest.starts_with(' '));
    Some(if word("SELECT") {
        // CREATE TABLE AS and SELECT INTO report SELECT n.
        &[Kind::Select, Kind::Create, Kind::Explain]
    } else if word("INSERT") {
        &[Kind::Insert]
    } else if word("UPDATE") {
        &[Kind::Update]
    } else if word("DELETE") {
        &[Kind::Delete]
    } else if word("MERGE") {
        &[Kind::Merge]
    } else if word("COPY") {
        &[Kind::CopyTo, Kind::CopyFrom, Kind::CopyFile, Kind::CopyProgram]
    } else if word("FETCH") || word("MOVE") || tag == "DECLARE CURSOR" {
        &[Kind::Select]
    } else if tag.starts_with("CREATE ") {
        &[Kind::Create, Kind::DefineCode]
    } else if tag.starts_with("ALTER ") || tag == "REASSIGN OWNED" {
        &[Kind::Alter, Kind::SetRole, Kind::DefineCode]
    } else if tag.starts_with("DROP ") {
        &[Kind::Drop]
    } else if tag == "IMPORT FOREIGN SCHEMA" {
        &[Kind::Create]
    } else if word("TRUNCATE") {
        &[Kind::Truncate]
    } else if matches!(tag, "GRANT" | "GRANT ROLE") {
        &[Kind::Grant]
    } else if matches!(tag, "REVOKE" | "REVOKE ROLE") {
        &[Kind::Revoke, Kind::Grant]
    } else if matches!(tag, "SET" | "RESET") {
        &[Kind::Set, Kind::SetRole, Kind::Other]
    } else if tag == "SHOW" {
        &[Kind::Show]
    } else if matches!(
        tag,
        "BEGIN" | "START TRANSACTION" | "COMMIT" | "ROLLBACK" | "SAVEPOINT" | "RELEASE" | "SET CONSTRAINTS"
    ) {
        &[Kind::Transaction]
    } else if matches!(tag, "PREPARE TRANSACTION" | "COMMIT PREPARED" | "ROLLBACK PREPARED") {
        &[Kind::TwoPhase]
    } else if tag == "PREPARE" {
        &[Kind::Prepare]
    } else if word("DEALLOCATE") || word("CLOSE CURSOR") || tag == "UNLISTEN" {
        &[Kind::Deallocate]
    } else if word("DISCARD") {
        &[Kind::Discard]
    } else if tag == "LISTEN" {
        &[Kind::Listen]
    } else if tag == "NOTIFY" {
        &[Kind::Notify]
    } else if tag == "LOCK TABLE" {
        &[Kind::Lock]
    } else if matches!(tag, "VACUUM" | "ANALYZE" | "CLUSTER" | "REINDEX" | "CHECKPOINT" | "REFRESH MATERIALIZED VIEW") {
        &[Kind::Maintenance]
    } else if tag == "EXPLAIN" {
        &[Kind::Explain]
    } else if tag == "DO" {
        &[Kind::Do]
    } else if tag == "CALL" {
        &[Kind::Call]
    } else if tag == "LOAD" {
        &[Kind::Load]
    } else if matches!(tag, "COMMENT" | "SECURITY LABEL") {
        &[Kind::Comment]
    } else {
        return None;
    })
}

/// Why the tag `tag` is not what a statement of `kinds` may produce, if it is not.
pub(super) fn check(kinds: &BTreeSet<Kind>, tag: &str) -> Result<(), String> {
    // SQL EXECUTE of a statement Gatehouse did not see prepared runs
    // whatever it was: the decision allowed the opaque kind itself.
    if kinds.contains(&Kind::Execute) {
        return Ok(());
    }
    match tag_kinds(tag) {
        Some(allowed) if allowed.iter().any(|k| kinds.contains(k)) => Ok(()),
        Some(_) | None => {
            Err(format!("the server reported `{tag}` for a statement classified as {}", crate::sql::kinds_text(kinds)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(v: &[Kind]) -> BTreeSet<Kind> {
        v.iter().copied().collect()
    }

    #[test]
    fn consistent_tags_pass() {
        for (kinds, tag) in [
            (k(&[Kind::Select]), "SELECT 1"),
            (k(&[Kind::Create, Kind::Select]), "SELECT 10"),
            (k(&[Kind::Insert]), "INSERT 0 1"),
            (k(&[Kind::Insert, Kind::Update]), "INSERT 0 3"),
            (k(&[Kind::Delete, Kind::DeleteWithoutWhere]), "DELETE 5"),
            (k(&[Kind::Alter, Kind::SetRole]), "ALTER ROLE"),
            (k(&[Kind::SetRole]), "SET"),
            (k(&[Kind::Set]), "RESET"),
            (k(&[Kind::Transaction]), "ROLLBACK"),
            (k(&[Kind::Explain, Kind::Delete]), "EXPLAIN"),
            (k(&[Kind::Execute]), "DELETE 2"),
            (k(&[Kind::CopyTo]), "COPY 3"),
            (k(&[Kind::Deallocate]), "UNLISTEN"),
            (k(&[Kind::Create, Kind::DefineCode]), "CREATE FUNCTION"),
        ] {
            assert!(check(&kinds, tag).is_ok(), "{kinds:?} {tag}");
        }
    }

    #[test]
    fn inconsistent_tags_trip() {
        for (kinds, tag) in [
            (k(&[Kind::Select]), "DELETE 5"),
            (k(&[Kind::Select]), "ALTER ROLE"),
            (k(&[Kind::Select, Kind::FunctionCall]), "UPDATE 1"),
            (k(&[Kind::Set]), "DROP TABLE"),
            (k(&[Kind::Select]), "SOMETHING NEW"),
            // A known word must be the tag's whole first word.
            (k(&[Kind::Insert]), "INSERTED 0 1"),
            (k(&[Kind::Select]), "SELECT1"),
        ] {
            assert!(check(&kinds, tag).is_err(), "{kinds:?} {tag}");
        }
    }
}
