//! The store as the writer keeps it: redactions, key rotations, published
//! checkpoints and what `verify` makes of them (and of forgeries).

use std::path::{Path, PathBuf};
use std::time::Duration;

use ed25519_dalek::SigningKey;

use super::anchors::{self, Publish};
use super::verify::{Trust, TrustSource, verify_db};
use super::*;
use crate::settings;

/// A test's own directory, removed when the test ends (passing or not).
struct TempDir(PathBuf);

impl std::ops::Deref for TempDir {
    type Target = PathBuf;
    fn deref(&self) -> &PathBuf {
        &self.0
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn temp(name: &str) -> TempDir {
    let d = std::env::temp_dir().join(format!("gatehouse-audit-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(d.join("state")).unwrap();
    TempDir(d)
}

fn opts(anchors: Option<PathBuf>) -> Options {
    Options {
        mode: Mode::Strict,
        fsync: false,
        checkpoint_every: Duration::from_secs(3600),
        retention_days: None,
        publish: Publish { file: anchors, syslog: false },
    }
}

fn trust(k: &SigningKey) -> Trust {
    Trust { keys: vec![k.verifying_key()], source: TrustSource::Given }
}

fn sid(n: u8) -> SessionId {
    SessionId(uuid::Uuid::from_bytes([n; 16]))
}

/// An allowed PostgreSQL session's opening.
fn opening(id: SessionId) -> SessionOpen {
    SessionOpen {
        id,
        started_us: now_us(),
        uid: Some(1000),
        user: Some("ana".into()),
        gid: None,
        pid: None,
        comm: None,
        cgroup_id: None,
        client: "127.0.0.1:1".into(),
        backend: Some("db".into()),
        orig_dst: None,
        protocol: Some("postgres".into()),
        decision: crate::audit::Verdict::Allow,
        rule: Some("r".into()),
        reason: "allowed".into(),
        oidc: None,
    }
}

fn session(audit: &Audit, id: SessionId, secret: &str) {
    audit.record(Event::SessionOpen(Box::new(opening(id)))).unwrap();
    audit
        .record(Event::Statement(Box::new(StatementStart {
            session: id,
            seq: 1,
            started_us: now_us(),
            text: format!("SELECT '{secret}'"),
            kinds: "select".into(),
            tables: Default::default(),
            decision: crate::audit::Verdict::Allow,
            rule: Some("r".into()),
            reason: None,
            redacted: 0,
            up_offset: None,
            up: Vec::new(),
            up_len: None,
            end: None,
        })))
        .unwrap();
    audit
        .record(Event::Chunk {
            session: id,
            header: ChunkHeader { dir: Direction::Up, offset: 0 },
            data: format!("Q{secret}").into_bytes(),
        })
        .unwrap();
    audit
        .record(Event::SessionClose(Box::new(SessionClose {
            id,
            ended_us: now_us(),
            bytes_up: 1,
            bytes_down: 1,
            end_reason: "closed".into(),
        })))
        .unwrap();
}

fn run<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
}

fn file_contains(path: &Path, needle: &[u8]) -> bool {
    ["", "-wal"].iter().any(|s| {
        std::fs::read(format!("{}{s}", path.display())).is_ok_and(|b| memchr::memmem::find(&b, needle).is_some())
    })
}

#[test]
fn a_redacted_session_still_verifies_shows_the_redaction_and_its_bytes_are_gone() {
    let dir = temp("redact");
    let db = dir.join("state/audit.db");
    let key_path = settings::host_key_path(&db);
    let (audit, writer) = open(&db, &key_path, &opts(None)).unwrap();
    session(&audit, sid(1), "hunter2-leaked");
    session(&audit, sid(2), "kept-value");
    run(audit.flush()).unwrap();
    // A second writer is refused while the first holds the store.
    assert!(open(&db, &key_path, &opts(None)).unwrap_err().to_string().contains("in use"));
    let red = run(audit.redact(&sid(1).to_string(), "leaked password, ticket 42", 0)).unwrap();
    assert_eq!(red.count(), 2, "the statement and the chunk");
    assert!(run(audit.redact(&sid(1).to_string(), "again", 0)).is_err(), "nothing left to redact");
    assert!(run(audit.redact(&sid(2).to_string(), " ", 0)).is_err(), "a reason is required");
    drop(audit);
    writer.stop();

    let key = keys::load(&key_path).unwrap();
    let r = verify_db(&db, &trust(&key), None).unwrap();
    assert!(r.ok(), "{:#?}", r.problems);
    assert!(r.proven());
    assert_eq!(r.redactions.len(), 1);
    assert_eq!(r.redactions[0].reason, "leaked password, ticket 42");
    assert!(!file_contains(&db, b"hunter2-leaked"), "the redacted bytes are overwritten on disk");
    assert!(file_contains(&db, b"kept-value"));
    // The query tables follow: the session is marked, its statements gone.
    let rows = query::statements(&db, Some(&sid(1).to_string()), 10).unwrap();
    assert!(rows.is_empty());

    // Content removed without a redaction record is a deletion.
    let copy = dir.join("state/copy.db");
    std::fs::copy(&db, &copy).unwrap();
    let c = rusqlite::Connection::open(&copy).unwrap();
    c.execute("UPDATE events SET body = NULL, data = NULL WHERE session = ?1 AND kind = 'chunk'", [sid(2).to_string()])
        .unwrap();
    drop(c);
    let r = verify_db(&copy, &trust(&key), None).unwrap();
    assert!(r.problems.iter().any(|p| p.what.contains("no signed redaction record")), "{:#?}", r.problems);
    // A forged redaction record (signed by another key) is not accepted.
    let other = SigningKey::from_bytes(&[9; 32]);
    let r = verify_db(&db, &trust(&other), None).unwrap();
    assert!(!r.ok());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn verify_follows_key_rotations_and_refuses_retired_or_foreign_keys() {
    let dir = temp("rotate");
    let db = dir.join("state/audit.db");
    let key_path = settings::host_key_path(&db);
    let (audit, writer) = open(&db, &key_path, &opts(None)).unwrap();
    session(&audit, sid(1), "a");
    run(audit.flush()).unwrap();
    let old = keys::load(&key_path).unwrap();
    let rot = run(audit.rotate_key()).unwrap();
    assert_eq!(rot.old_public_key, hex(&old.verifying_key().to_bytes()));
    assert_eq!(audit.public_key_hex(), rot.new_public_key);
    session(&audit, sid(2), "b");
    drop(audit);
    writer.stop();
    let new = keys::load(&key_path).unwrap();
    assert_eq!(hex(&new.verifying_key().to_bytes()), rot.new_public_key);
    assert_eq!(
        std::fs::read_to_string(keys::public_path(&key_path)).unwrap().trim(),
        rot.new_public_key,
        "host.pub follows"
    );
    assert!(!keys::pending_path(&key_path).exists());

    // Trusting the old key: the rotation is followed forward.
    let r = verify_db(&db, &trust(&old), None).unwrap();
    assert!(r.ok(), "{:#?}", r.problems);
    assert_eq!(r.rotations.len(), 1);
    assert!(r.checkpoints_verified >= 2);
    // Trusting the new key: the old one is trusted back, through the checkpoint the new key signed.
    let r = verify_db(&db, &trust(&new), None).unwrap();
    assert!(r.ok(), "{:#?}", r.problems);

    // A checkpoint signed after the rotation by the retired key is refused.
    let copy = dir.join("state/retired.db");
    std::fs::copy(&db, &copy).unwrap();
    {
        let mut c = rusqlite::Connection::open(&copy).unwrap();
        let h = head(&c).unwrap();
        let time = now_us();
        let sig = chain::sign(&old, &chain::checkpoint_message(h.0, &h.1, time));
        let body = serde_json::json!({ "head_seq": h.0, "head_hash": hex(&h.1), "time_us": time, "public_key": hex(&old.verifying_key().to_bytes()) });
        write_raw(&mut c, h, "checkpoint", None, body.to_string().into_bytes(), Some(sig.to_vec())).unwrap();
    }
    let r = verify_db(&copy, &trust(&old), None).unwrap();
    assert!(r.problems.iter().any(|p| p.what.contains("retired")), "{:#?}", r.problems);

    // A whole store rewritten and signed by another key: not proven, whichever way it is asked.
    let forged = dir.join("state/forged.db");
    let forged_key = dir.join("state/forged.key");
    let (a, w) = open(&forged, &forged_key, &opts(None)).unwrap();
    session(&a, sid(3), "c");
    drop(a);
    w.stop();
    let r = verify_db(&forged, &trust(&old), None).unwrap();
    assert!(!r.ok(), "another key's store does not verify against the host key");
    let r = verify::default_trust(&forged, &dir.join("no-operator-key"))
        .and_then(|t| verify_db(&forged, &t, None))
        .unwrap();
    assert!(r.ok() && !r.proven(), "keys from beside the store prove nothing: {:?}", r.trust);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The old layout's `statements` table, as stores made before the rows were
/// read from the chain hold it.
const OLD_STATEMENTS_TABLE: &str = "CREATE TABLE statements (
    session_id TEXT NOT NULL, seq INTEGER NOT NULL, started_us INTEGER NOT NULL, text TEXT NOT NULL,
    kinds TEXT NOT NULL, tables TEXT NOT NULL, decision TEXT NOT NULL, rule TEXT, reason TEXT,
    ended_us INTEGER, rows INTEGER, duration_us INTEGER, error TEXT, masked TEXT,
    redacted INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (session_id, seq));";

/// A store (in a new directory `name`) the writer made with one session
/// whose statement selects `secret`: the directory, the store, its key.
fn one_session_store(name: &str, secret: &str) -> (TempDir, PathBuf, PathBuf) {
    let dir = temp(name);
    let db = dir.join("state/audit.db");
    let key_path = settings::host_key_path(&db);
    let (audit, writer) = open(&db, &key_path, &opts(None)).unwrap();
    session(&audit, sid(1), secret);
    run(audit.flush()).unwrap();
    drop(audit);
    writer.stop();
    (dir, db, key_path)
}

#[test]
fn a_statements_view_rewritten_in_the_store_is_reported_and_changes_nothing_gatehouse_shows() {
    let (dir, db, key_path) = one_session_store("view", "the-real-text");
    let key = keys::load(&key_path).unwrap();
    let r = verify_db(&db, &trust(&key), None).unwrap();
    assert!(r.ok(), "{:#?}", r.problems);
    let texts = |db: &Path| -> Vec<String> {
        query::statements(db, None, 10).unwrap().into_iter().map(|r| r.text).collect::<Vec<_>>()
    };
    assert_eq!(texts(&db), ["SELECT 'the-real-text'"]);
    for (name, sql) in [
        ("hidden", "DROP VIEW statements; CREATE VIEW statements AS SELECT * FROM events WHERE 0;"),
        ("table", &*format!("DROP VIEW statements; {OLD_STATEMENTS_TABLE}")),
    ] {
        let copy = dir.join(format!("state/{name}.db"));
        std::fs::copy(&db, &copy).unwrap();
        rusqlite::Connection::open(&copy).unwrap().execute_batch(sql).unwrap();
        let r = verify_db(&copy, &trust(&key), None).unwrap();
        assert!(
            r.problems.iter().any(|p| p.what.contains("statements view is not the one")),
            "{name}: {:#?}",
            r.problems
        );
        // The CLI reads the statements from the chain with its own copy of the view.
        assert_eq!(texts(&copy), ["SELECT 'the-real-text'"], "{name}");
        // The agent's next open makes the view again.
        let conn = open_conn(&copy, false).unwrap();
        let sql: String =
            conn.query_row("SELECT sql FROM sqlite_schema WHERE name = 'statements'", [], |r| r.get(0)).unwrap();
        assert_eq!(sql, STATEMENTS_VIEW_SQL, "{name}");
        drop(conn);
        let r = verify_db(&copy, &trust(&key), None).unwrap();
        assert!(r.ok(), "{name}: {:#?}", r.problems);
    }
    // SQLite keeps this build's view as the text it is compared with, so a
    // store this build made is left as it is at each open (not dropped and
    // made again, with a warning, every time).
    let conn = open_conn(&db, false).unwrap();
    assert_eq!(statements_object(&conn).unwrap(), StatementsObject::ThisBuilds);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_newest_statements_of_every_session_are_the_newest_of_a_whole_listing() {
    // 9,000 statements of 9 sessions, one record a second (so the listing of
    // every session stops after the newest records), each started up to
    // thirty seconds before its record was written, some ending later
    // (unfolded), in record order but not in start order.
    let dir = temp("newest");
    let db = dir.join("state/audit.db");
    let conn = open_conn(&db, false).unwrap();
    let t0 = 1_700_000_000_000_000i64;
    let mut head = (0, chain::GENESIS);
    let mut entries = Vec::new();
    for i in 0..9_000u64 {
        let at = t0 + i64::try_from(i).unwrap() * 1_000_000;
        let s = u8::try_from(i % 9).unwrap() + 1;
        let mut e = statement_event(sid(s), i / 9 + 1, &format!("SELECT {i}"));
        if let Event::Statement(st) = &mut e {
            st.started_us = at - i64::try_from((i * 2_654_435_761) % 30_000_000).unwrap();
        }
        let mut start = journal::Entry::now(e);
        start.time_us = at;
        entries.push(start);
        if i % 5 == 0 {
            // Its end in the next batch: a record of its own.
            head = write(&conn, head, &entries).unwrap().0;
            entries.clear();
        }
        {
            let mut end = journal::Entry::now(Event::StatementEnd(Box::new(StatementEnd {
                session: sid(s),
                seq: i / 9 + 1,
                ended_us: at,
                rows: Some(i),
                duration_us: 1,
                error: None,
                masked: None,
                tags: None,
                down_offset: None,
                down: Vec::new(),
            })));
            end.time_us = at;
            entries.push(end);
        }
        if entries.len() >= 64 {
            head = write(&conn, head, &entries).unwrap().0;
            entries.clear();
        }
    }
    head = write(&conn, head, &entries).unwrap().0;
    assert_eq!(head.0, 9_000 + 9_000 / 5, "ends folded into their statements but every fifth");
    let unfolded: i64 = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row("SELECT count(*) FROM events WHERE kind = 'statement_end'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(unfolded, 1_800);
    drop(conn);
    let read = rusqlite::Connection::open(&db).unwrap();
    let all = query::listing(&read, None, None, u32::MAX, (i64::MIN, i64::MAX)).unwrap();
    assert_eq!(all.len(), 9_000);
    for limit in [1u32, 7, 200, 4_500, 9_000, 20_000].into_iter().chain(3_405..3_420) {
        let mut got = query::statements(&db, None, limit).unwrap();
        got.reverse();
        let want: Vec<_> = all.iter().take(usize::try_from(limit).unwrap()).collect();
        let key = |r: &query::StatementRow| (r.session_id.clone(), r.seq, r.started_us, r.text.clone(), r.rows);
        let (got, want): (Vec<_>, Vec<_>) = (got.iter().map(key).collect(), want.into_iter().map(key).collect());
        let first_apart = got.iter().zip(&want).position(|(g, w)| g != w);
        assert!(
            got.len() == want.len() && first_apart.is_none(),
            "limit {limit}: {} rows against {}, first apart at {first_apart:?}",
            got.len(),
            want.len()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn records_of_the_wrong_shape_do_not_stop_the_statements_listing() {
    // Edited by hand (the chain no longer verifies): an HTTP exchange, an SSH
    // request and a statement whose bodies are not JSON, or JSON of another
    // shape. The listing shows what can be read and skips the rest.
    let (dir, db, _) = one_session_store("shapes", "listed");
    let c = rusqlite::Connection::open(&db).unwrap();
    let session = sid(1).to_string();
    for (kind, body) in [
        ("http", "{\"method\": 7, \"seq\": \"x\"}"),
        ("http", "not json"),
        ("ssh", "{\"event\": \"request\", \"decision\": [1]}"),
        ("ssh", "{\"event\": \"request\""),
        ("statement", "{\"text\": {\"a\": 1}}"),
    ] {
        c.execute(
            "INSERT INTO events (seq, time_us, session, kind, content_hash, body, data, prev_hash, hash)
             SELECT max(seq) + 1, 1, ?1, ?2, x'', CAST(?3 AS BLOB), NULL, x'', x'' FROM events",
            rusqlite::params![session, kind, body],
        )
        .unwrap();
    }
    drop(c);
    for of in [None, Some(session.as_str())] {
        let rows = query::statements(&db, of, 10).unwrap();
        let texts: Vec<&str> = rows.iter().map(|r| r.text.as_str()).collect();
        assert_eq!(texts.len(), 4, "the statement, one of each edited kind read as it could be: {texts:?}");
        assert!(texts.contains(&"SELECT 'listed'") && texts.contains(&"{\"a\":1}"), "{texts:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_store_with_the_older_statements_table_has_it_replaced_by_the_view_when_opened() {
    let (dir, db, key_path) = one_session_store("oldtable", "from-the-chain");
    let c = rusqlite::Connection::open(&db).unwrap();
    c.execute_batch(&format!(
        "DROP VIEW statements; {OLD_STATEMENTS_TABLE}
         INSERT INTO statements (session_id, seq, started_us, text, kinds, tables, decision)
         VALUES ('{}', 1, 1, 'a stale row', 'select', '', 'allow');",
        sid(1)
    ))
    .unwrap();
    drop(c);
    let conn = open_conn(&db, false).unwrap();
    let kind: String =
        conn.query_row("SELECT type FROM sqlite_schema WHERE name = 'statements'", [], |r| r.get(0)).unwrap();
    assert_eq!(kind, "view");
    let texts: Vec<String> = conn
        .prepare("SELECT text FROM statements")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(texts, ["SELECT 'from-the-chain'"]);
    drop(conn);
    let r = verify_db(&db, &trust(&keys::load(&key_path).unwrap()), None).unwrap();
    assert!(r.ok(), "{:#?}", r.problems);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_cut_off_tail_is_found_with_the_published_checkpoints() {
    let dir = temp("anchors");
    let db = dir.join("state/audit.db");
    let shipped = dir.join("anchors.jsonl");
    let key_path = settings::host_key_path(&db);
    let (audit, writer) = open(&db, &key_path, &opts(Some(shipped.clone()))).unwrap();
    session(&audit, sid(1), "a");
    session(&audit, sid(2), "b");
    drop(audit);
    writer.stop();
    let key = keys::load(&key_path).unwrap();
    let published = anchors::read(&shipped).unwrap();
    assert!(!published.is_empty());
    let r = verify_db(&db, &trust(&key), Some(&published)).unwrap();
    assert!(r.ok(), "{:#?}", r.problems);
    assert!(r.anchor_seq.is_some());

    // Delete the newest session with the final checkpoint (and fix up the query tables):
    // the chain alone still verifies…
    let c = rusqlite::Connection::open(&db).unwrap();
    let cut: i64 =
        c.query_row("SELECT min(seq) FROM events WHERE session = ?1", [sid(2).to_string()], |r| r.get(0)).unwrap();
    c.execute("DELETE FROM events WHERE seq >= ?1", [cut]).unwrap();
    c.execute("DELETE FROM sessions WHERE id = ?1", [sid(2).to_string()]).unwrap();
    drop(c);
    let r = verify_db(&db, &trust(&key), None).unwrap();
    assert!(r.ok(), "without anchors a clean cut is invisible: {:#?}", r.problems);
    // …but not against what was published off the host.
    let r = verify_db(&db, &trust(&key), Some(&published)).unwrap();
    assert!(r.problems.iter().any(|p| p.what.contains("deleted from the end")), "{:#?}", r.problems);
    // A forged anchor (another key) is ignored and said to be.
    let mut forged = published.clone();
    if let Some(a) = forged.last_mut() {
        a.public_key = hex(&SigningKey::from_bytes(&[3; 32]).verifying_key().to_bytes());
    }
    let r = verify_db(&db, &trust(&key), Some(&forged)).unwrap();
    assert!(r.problems.iter().any(|p| p.what.contains("not signed by a trusted key")), "{:#?}", r.problems);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_new_store_has_large_pages_and_an_existing_one_keeps_its_own() {
    let dir = temp("pagesize");
    let page_size = |c: &Connection| c.query_row("PRAGMA page_size", [], |r| r.get::<_, i64>(0)).unwrap();
    let new = dir.join("state/new.db");
    assert_eq!(page_size(&open_conn(&new, false).unwrap()), PAGE_SIZE);
    let old = dir.join("state/old.db");
    Connection::open(&old).unwrap().execute_batch("CREATE TABLE before_us (x)").unwrap();
    let reopened = open_conn(&old, false).unwrap();
    assert_eq!(page_size(&reopened), 4096);
    assert_eq!(reopened.query_row("SELECT count(*) FROM events", [], |r| r.get::<_, i64>(0)).unwrap(), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_journal_position_is_one_row_rewritten_in_place_one_wal_page_per_commit() {
    let dir = temp("ingested");
    let db = dir.join("state/audit.db");
    let conn = open_conn(&db, false).unwrap();
    // (busy, frames in the WAL, frames checkpointed)
    let checkpoint =
        |mode: &str| conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| r.get::<_, i64>(1)).unwrap();
    assert_eq!(journal::ingested(&conn).unwrap(), 0);
    for jseq in [1u64, 7, 8, 1 << 40] {
        checkpoint("TRUNCATE");
        conn.execute_batch("BEGIN").unwrap();
        journal::set_ingested(&conn, jseq).unwrap();
        conn.execute_batch("COMMIT").unwrap();
        // The first commit adds the row; every later one rewrites its one
        // page (INSERT OR REPLACE wrote its key's index page as well).
        if jseq != 1 {
            assert_eq!(checkpoint("PASSIVE"), 1, "WAL frames for jseq {jseq}");
        }
        assert_eq!(journal::ingested(&conn).unwrap(), jseq);
    }
    let rows: i64 =
        conn.query_row("SELECT count(*) FROM meta WHERE key = 'journal_ingested'", [], |r| r.get(0)).unwrap();
    assert_eq!(rows, 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_state_directory_is_narrowed_and_keys_are_not_read_through_links() {
    let dir = temp("state");
    let state = dir.join("state");
    std::fs::set_permissions(&state, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let db = state.join("audit.db");
    let key_path = settings::host_key_path(&db);
    let (audit, writer) = open(&db, &key_path, &opts(None)).unwrap();
    drop(audit);
    writer.stop();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&state).unwrap().mode() & 0o7777, 0o700);
    assert_eq!(std::fs::metadata(&key_path).unwrap().mode() & 0o7777, 0o600);
    assert_eq!(std::fs::metadata(&db).unwrap().mode() & 0o7777, 0o600);
    // host.key replaced by a symlink to another key: refused.
    let elsewhere = dir.join("elsewhere.key");
    std::fs::rename(&key_path, &elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &key_path).unwrap();
    let e = open(&db, &key_path, &opts(None)).unwrap_err().to_string();
    assert!(e.contains("symbolic link"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn statement_event(id: SessionId, seq: u64, text: &str) -> Event {
    Event::Statement(Box::new(StatementStart {
        session: id,
        seq,
        started_us: now_us(),
        text: text.into(),
        kinds: "select".into(),
        tables: Default::default(),
        decision: crate::audit::Verdict::Allow,
        rule: Some("r".into()),
        reason: None,
        redacted: 0,
        up_offset: None,
        up: Vec::new(),
        up_len: None,
        end: None,
    }))
}

fn statement_texts(db: &Path) -> Vec<String> {
    let c = rusqlite::Connection::open(db).unwrap();
    let mut st = c.prepare("SELECT text FROM statements ORDER BY seq").unwrap();
    st.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect()
}

/// A journal entry as the data path writes one for statement `seq` of
/// session `id` (read back from its body only, as replay does).
fn journal_statement(id: SessionId, jseq: u64, seq: u64, text: &str) -> journal::Entry {
    let Event::Statement(s) = statement_event(id, seq, text) else { unreachable!() };
    let mut e = journal::Entry::bare(jseq, now_us(), RecordKind::Statement, None, &serde_json::to_vec(&s).unwrap());
    e.session = Some(super::SessionKey::id(id));
    e
}

/// The journal segments beside the store at `db`, oldest first.
fn journal_segments(db: &Path) -> Vec<PathBuf> {
    journal::segments(db).into_iter().map(|(_, p)| p).collect()
}

/// The journal's segments, each checked to be allocated whole (at least a
/// segment's size, on the device, not sparse: a copy into a hole on a full
/// disk would be a SIGBUS) and to hold entries, then zeros.
fn whole_segments(db: &Path) -> Vec<PathBuf> {
    let segs = journal_segments(db);
    for p in &segs {
        let bytes = std::fs::read(p).unwrap();
        assert!(bytes.len() >= journal::SEGMENT_BYTES, "{} holds {} bytes", p.display(), bytes.len());
        let blocks = std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(p).unwrap());
        assert!(blocks * 512 >= bytes.len() as u64, "{}: {blocks} blocks", p.display());
        let end = journal::entries_end(&bytes);
        assert!(end > 0 && bytes[end..].iter().all(|b| *b == 0), "{}: entries, then zeros", p.display());
    }
    segs
}

fn journal_files(db: &Path) -> usize {
    journal_segments(db).len()
}

#[test]
fn what_the_journal_acknowledged_survives_a_crash_and_a_torn_tail_does_not_count() {
    let dir = temp("journal");
    let db = dir.join("state/audit.db");
    let key_path = settings::host_key_path(&db);
    let (audit, writer) = open(&db, &key_path, &opts(None)).unwrap();
    let id = sid(9);
    run(audit.open_session(opening(id))).unwrap();
    run(audit.commit(vec![statement_event(id, 1, "SELECT 1"), statement_event(id, 2, "SELECT 2")])).unwrap();
    run(audit.flush()).unwrap();
    writer.stop();
    assert_eq!(journal_files(&db), 0, "a clean stop leaves no journal");
    assert_eq!(statement_texts(&db), ["SELECT 1", "SELECT 2"]);

    // A crash: entries acknowledged from the journal, not yet in SQLite, and
    // a last entry torn by the crash (never acknowledged).
    let conn = rusqlite::Connection::open(&db).unwrap();
    let done = journal::ingested(&conn).unwrap();
    drop(conn);
    let mut bytes = Vec::new();
    for (i, text) in [(done, "SELECT stale"), (done + 1, "SELECT 3"), (done + 2, "SELECT 4")] {
        journal::encode_for_test(&mut bytes, &journal_statement(id, i, i + 2, text));
    }
    let whole = bytes.len();
    journal::encode_for_test(&mut bytes, &journal_statement(id, done + 3, 9, "SELECT torn"));
    bytes.truncate(whole + 20);
    std::fs::write(format!("{}.journal.{:020}", db.display(), done), &bytes).unwrap();

    // The CLI's view of a store no agent holds replays it first.
    let _ = query::open_read_only(&db).unwrap();
    assert_eq!(statement_texts(&db), ["SELECT 1", "SELECT 2", "SELECT 3", "SELECT 4"]);
    assert_eq!(journal_files(&db), 0);
    let report = verify_db(&db, &trust(&keys::load(&key_path).unwrap()), None).unwrap();
    assert!(report.ok(), "{report:?}");
    // And an agent starting on it goes on from there.
    let (audit, writer) = open(&db, &key_path, &opts(None)).unwrap();
    // Numbered past what the journal held.
    run(audit.commit(vec![statement_event(id, done + 5, "SELECT 5")])).unwrap();
    run(audit.flush()).unwrap();
    writer.stop();
    assert_eq!(statement_texts(&db), ["SELECT 1", "SELECT 2", "SELECT 3", "SELECT 4", "SELECT 5"]);
    let report = verify_db(&db, &trust(&keys::load(&key_path).unwrap()), None).unwrap();
    assert!(report.ok(), "{report:?}");
}

/// With `audit_fsync`, a strict batch is acknowledged once its segment is
/// synced (`fdatasync` of a file whose bytes were copied in through its
/// mapping), across segments; every batch lands, in order.
#[test]
fn strict_batches_with_audit_fsync_are_synced_across_mapped_segments_and_all_land() {
    let dir = temp("fsync");
    let db = dir.join("state/audit.db");
    let key_path = settings::host_key_path(&db);
    let (audit, writer) = open(&db, &key_path, &Options { fsync: true, ..opts(None) }).unwrap();
    let id = sid(6);
    run(audit.open_session(opening(id))).unwrap();
    let seg = journal::SEGMENT_BYTES;
    let mut texts = Vec::new();
    let mut seq = 0u64;
    // Two and a half segments' worth, in batches of two.
    while texts.iter().map(String::len).sum::<usize>() < seg * 5 / 2 {
        let batch: Vec<Event> = (0..2)
            .map(|_| {
                seq += 1;
                let t = format!("SELECT {seq} /* {} */", "f".repeat(20_000));
                texts.push(t.clone());
                statement_event(id, seq, &t)
            })
            .collect();
        run(audit.commit(batch)).unwrap();
    }
    run(audit.flush()).unwrap();
    drop(audit);
    writer.stop();
    assert_eq!(statement_texts(&db), texts);
    assert_eq!(journal_files(&db), 0, "a clean stop leaves no journal");
    let report = verify_db(&db, &trust(&keys::load(&key_path).unwrap()), None).unwrap();
    assert!(report.ok(), "{report:?}");
}

/// `sessions --text` passes by statement bodies whose bytes cannot hold the
/// text before it reads them as JSON: it finds exactly the sessions the
/// `statements` view's texts name, whatever the text holds (characters JSON
/// escapes, `LIKE`'s own, case, other scripts).
#[test]
fn sessions_found_by_statement_text_are_those_whose_statements_hold_it() {
    let dir = temp("bytext");
    let db = dir.join("state/audit.db");
    let key_path = settings::host_key_path(&db);
    let (audit, writer) = open(&db, &key_path, &opts(None)).unwrap();
    let secrets = [
        "plain words",
        "Mixed CASE Words",
        "say \"hi\" there",
        "back\\slash and \\n",
        "tab\there\nand newline",
        "50% of a_b!c",
        "naïve Ünïcode 😀",
        "</script>",
    ];
    for (i, secret) in secrets.iter().enumerate() {
        session(&audit, sid(u8::try_from(i).unwrap() + 1), secret);
    }
    run(audit.flush()).unwrap();
    drop(audit);
    writer.stop();
    let conn = rusqlite::Connection::open(&db).unwrap();
    let patterns = [
        "words",
        "WORDS",
        "mixed case",
        "\"hi\"",
        "say \"",
        "\\",
        "\\n",
        "slash and \\",
        "\t",
        "\n",
        "tab",
        "50%",
        "%",
        "_",
        "a_b",
        "b!c",
        "!",
        "%_!",
        "naïve",
        "ÜNÏCODE",
        "ünïcode",
        "😀",
        "</",
        "'",
        "SELECT '",
        "x",
        "",
    ];
    for p in patterns {
        let mut want: Vec<String> = conn
            .prepare("SELECT DISTINCT session_id FROM statements WHERE instr(lower(text), lower(?1)) > 0")
            .unwrap()
            .query_map([p], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        want.sort();
        let filter = query::SessionFilter { text: Some(p.to_owned()), ..Default::default() };
        let mut got: Vec<String> = query::sessions(&db, &filter).unwrap().into_iter().map(|s| s.id).collect();
        got.sort();
        assert_eq!(got, want, "sessions with a statement holding {p:?}");
    }
    // The patterns above do reach both paths and find something on each.
    let found = |p: &str| {
        let filter = query::SessionFilter { text: Some(p.to_owned()), ..Default::default() };
        query::sessions(&db, &filter).unwrap().len()
    };
    assert_eq!(found("\"hi\""), 1, "a text JSON escapes is found (no raw prefilter)");
    assert_eq!(found("b!C"), 1, "a text with LIKE's characters is found through the prefilter");
    assert_eq!(found("ÜNÏCODE"), 0, "only ASCII letters fold, as lower() does");
    assert_eq!(found("nomatch"), 0);
}

/// The journal as the data path writes it (segments allocated whole and
/// mapped), left as a killed agent leaves it: nothing ingested, no segment
/// closed, a copy cut short after the last entry.
#[test]
fn a_killed_agents_journal_of_many_segments_replays_every_acknowledged_entry_and_no_more() {
    let dir = temp("segments");
    let db = dir.join("state/audit.db");
    let mut conn = open_conn(&db, false).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let queued = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let j = journal::Journal::create(&db, 1, false, tx, queued).unwrap();
    let id = sid(5);
    // A first batch larger than a segment (the empty first segment is made
    // again, larger), three segments' worth of batches of two, then a batch
    // larger than a segment (a segment of its own), then a few more.
    let filler = "x".repeat(3000);
    let seg = journal::SEGMENT_BYTES;
    let mut texts = Vec::new();
    let mut seq = 0u64;
    {
        seq += 1;
        let t = format!("SELECT {seq} /* {} */", "z".repeat(seg * 2));
        texts.push(t.clone());
        assert_eq!(j.append(vec![statement_event(id, seq, &t)], usize::MAX).unwrap(), 1);
    }
    let batch = |texts: &mut Vec<String>, seq: &mut u64, n: usize, len: usize| {
        let events: Vec<Event> = (0..n)
            .map(|_| {
                *seq += 1;
                let t = format!("SELECT {seq} /* {} */", filler.get(..len.min(filler.len())).unwrap_or_default());
                texts.push(t.clone());
                statement_event(id, *seq, &t)
            })
            .collect();
        j.append(events, usize::MAX).unwrap()
    };
    while texts.iter().skip(1).map(String::len).sum::<usize>() < 3 * seg {
        batch(&mut texts, &mut seq, 2, 3000);
    }
    let big = {
        seq += 1;
        let t = format!("SELECT {seq} /* {} */", "y".repeat(seg + seg / 2));
        texts.push(t.clone());
        j.append(vec![statement_event(id, seq, &t)], usize::MAX).unwrap()
    };
    assert_eq!(big, seq);
    let last = batch(&mut texts, &mut seq, 3, 100);
    assert_eq!(last, seq);
    // Killed: the journal is neither closed nor ingested.
    drop(j);
    drop(rx);
    let segs = whole_segments(&db);
    assert!(segs.len() >= 6, "the first, three segments, one for the large batch and the last: {segs:?}");
    // A copy the kill cut short: the start of one more entry after the last.
    let tail = segs.last().unwrap();
    let mut bytes = std::fs::read(tail).unwrap();
    let end = journal::entries_end(&bytes);
    let mut torn = Vec::new();
    journal::encode_for_test(&mut torn, &journal_statement(id, seq + 1, seq + 1, "SELECT torn"));
    bytes[end..end + torn.len() - 30].copy_from_slice(&torn[..torn.len() - 30]);
    std::fs::write(tail, &bytes).unwrap();

    let head = super::head(&conn).unwrap();
    let (_, next, count) = journal::replay(&mut conn, &db, head).unwrap();
    assert_eq!((count, next), (texts.len(), seq + 1), "every acknowledged entry, and not the torn one");
    assert_eq!(statement_texts(&db), texts);
    assert_eq!(journal_files(&db), 0, "a replayed journal is removed");
}

#[test]
fn segments_made_ahead_by_the_writer_are_taken_whole_and_replay_reads_every_entry_and_no_spare() {
    let dir = temp("spares");
    let db = dir.join("state/audit.db");
    let mut conn = open_conn(&db, false).unwrap();
    let spare = PathBuf::from(format!("{}.journal.spare", db.display()));
    // One a killed agent left behind: removed when a journal starts (it holds nothing).
    std::fs::write(&spare, b"left behind").unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let queued = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let j = journal::Journal::create(&db, 1, false, tx, queued).unwrap();
    assert!(!spare.exists(), "a stale spare is removed");
    let spares = j.spares();
    let seg = journal::SEGMENT_BYTES;
    let id = sid(6);
    let filler = "s".repeat(2000);
    let mut texts = Vec::new();
    let mut taken = 0;
    let mut seq = 0u64;
    // Four segments' worth of batches, the writer making a spare between them.
    while texts.iter().map(String::len).sum::<usize>() < 4 * seg {
        let had = spare.exists();
        spares.prepare();
        assert!(spare.exists(), "the writer made a spare");
        if !had {
            let meta = std::fs::metadata(&spare).unwrap();
            assert_eq!(meta.len(), seg as u64);
            let blocks = std::os::unix::fs::MetadataExt::blocks(&meta);
            assert!(blocks * 512 >= seg as u64, "allocated whole, not sparse: {blocks} blocks");
        }
        let before = journal_segments(&db).len();
        seq += 1;
        let t = format!("SELECT {seq} /* {filler} */");
        texts.push(t.clone());
        assert_eq!(j.append(vec![statement_event(id, seq, &t)], usize::MAX).unwrap(), seq);
        if journal_segments(&db).len() > before {
            taken += 1;
            assert!(!spare.exists(), "the new segment is the spare, renamed into place");
        }
    }
    assert!(taken >= 3, "{taken} segments taken from spares");
    // A batch larger than a segment gets one of its own size, made there and then.
    spares.prepare();
    seq += 1;
    let big = format!("SELECT {seq} /* {} */", "b".repeat(seg + 10));
    texts.push(big.clone());
    j.append(vec![statement_event(id, seq, &big)], usize::MAX).unwrap();
    assert!(spare.exists(), "a spare too small for the batch is kept for the next segment");
    seq += 1;
    texts.push(format!("SELECT {seq}"));
    j.append(vec![statement_event(id, seq, &format!("SELECT {seq}"))], usize::MAX).unwrap();
    // Killed: neither closed nor ingested; the spare is still there.
    drop(j);
    drop(rx);
    let segs = whole_segments(&db);
    assert!(segs.len() >= 6, "{segs:?}");
    let head = super::head(&conn).unwrap();
    let (_, next, count) = journal::replay(&mut conn, &db, head).unwrap();
    assert_eq!((count, next), (texts.len(), seq + 1));
    assert_eq!(statement_texts(&db), texts);
    assert_eq!(journal_files(&db), 0, "a replayed journal is removed");
    assert!(!spare.exists(), "and its spare");
    // A clean stop removes the spare too.
    let (tx, _rx) = std::sync::mpsc::channel();
    let j = journal::Journal::create(&db, next, false, tx, std::sync::Arc::default()).unwrap();
    j.spares().prepare();
    assert!(spare.exists());
    j.close();
    assert!(!spare.exists(), "a clean stop leaves no spare");
    assert_eq!(journal_files(&db), 0);
}

#[test]
fn the_wal_is_emptied_once_past_its_bound_while_records_keep_coming() {
    let dir = temp("wal");
    let db = dir.join("state/audit.db");
    let key_path = settings::host_key_path(&db);
    let (audit, writer) = open(&db, &key_path, &opts(None)).unwrap();
    // A second checkpointer with a bound of 1 MiB (the agent's is 1 GiB).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ck = {
        let (db, stop) = (db.clone(), stop.clone());
        std::thread::spawn(move || checkpointer(db, stop, 1 << 20))
    };
    let wal = PathBuf::from(format!("{}-wal", db.display()));
    let size = || std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    let id = sid(4);
    let (mut peak, mut shrank) = (0u64, false);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut seq = 0u64;
    while std::time::Instant::now() < deadline && !shrank {
        for _ in 0..200 {
            seq += 1;
            audit.record(statement_event(id, seq, &format!("SELECT '{}'", "x".repeat(400)))).unwrap();
        }
        run(audit.flush()).unwrap();
        let now = size();
        peak = peak.max(now);
        shrank = peak > (1 << 20) && now < peak / 2;
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    ck.join().unwrap();
    assert!(peak > 1 << 20, "the test wrote too little to pass the bound (peak {peak} bytes)");
    assert!(shrank, "the WAL never shrank while records kept coming (peak {peak} bytes, now {})", size());
    drop(audit);
    writer.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

/// The writer rewinds the WAL at 32 MiB, whatever its page size, and a
/// rewound WAL keeps its blocks: while far more than that is written, the
/// file never grows far past the rewind point and never
/// shrinks (a cut WAL is written into new blocks again).
#[test]
fn the_writer_rewinds_the_wal_at_its_bound_and_never_cuts_it() {
    let dir = temp("rewind");
    let db = dir.join("state/audit.db");
    let key_path = settings::host_key_path(&db);
    let (audit, writer) = open(&db, &key_path, &opts(None)).unwrap();
    let wal = PathBuf::from(format!("{}-wal", db.display()));
    let size = || std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    let id = sid(8);
    let text = format!("SELECT '{}'", "x".repeat(8 << 10));
    let (mut seq, mut peak, mut last) = (0u64, 0u64, 0u64);
    // Each record holds its text at least once: 96 MiB of texts are three
    // rewinds' worth of WAL.
    while seq * (text.len() as u64) < 96 << 20 {
        for _ in 0..64 {
            seq += 1;
            audit.record(statement_event(id, seq, &text)).unwrap();
        }
        run(audit.flush()).unwrap();
        let now = size();
        assert!(now >= last, "the WAL was cut from {last} to {now} bytes after {seq} records");
        (peak, last) = (peak.max(now), now);
    }
    // Past the rewind point by a few transactions at most: while the
    // checkpoint thread copies the WAL (every second, its own connection),
    // the writer's own checkpoint is refused and the WAL grows until the
    // next commit after it (a 128 MiB rewind point would still be far past).
    let bound = u64::try_from(WAL_REWIND_BYTES).unwrap() + (16 << 20);
    assert!(peak > 16 << 20, "the test wrote too little WAL to reach the rewind point (peak {peak} bytes)");
    assert!(peak <= bound, "the WAL grew to {peak} bytes, past the rewind point ({bound} with a transaction)");
    assert_eq!(statement_texts(&db).len() as u64, seq, "every record is in the store");
    drop(audit);
    writer.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Openings one after another wait for sessions still on their way
/// (`OpeningAhead`), but never longer than the gather: with one held and
/// never let go, a stream of openings is still committed, each in time, and
/// counted in the store.
#[test]
fn a_stream_of_openings_is_committed_while_a_session_on_its_way_never_comes() {
    let dir = temp("ahead");
    let db = dir.join("state/audit.db");
    let key_path = settings::host_key_path(&db);
    let (audit, writer) = open(&db, &key_path, &opts(None)).unwrap();
    let held = audit.opening_ahead();
    run(async {
        for n in 0..50u8 {
            tokio::time::timeout(Duration::from_secs(5), audit.open_session(opening(sid(n))))
                .await
                .unwrap_or_else(|_| panic!("opening {n} was held while a session was on its way"))
                .unwrap();
        }
    });
    drop(held);
    let c = rusqlite::Connection::open(&db).unwrap();
    let n: i64 = c.query_row("SELECT count(*) FROM sessions", [], |r| r.get(0)).unwrap();
    assert_eq!(n, 50);
    drop(audit);
    writer.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

/// The writer's transaction spans batches, but what it appends reaches
/// SQLite without anyone asking: while records keep coming (every
/// transaction then commits by age, `COMMIT_EVERY`), and once they stop
/// (`COMMIT_IDLE`). A reader sees them in another connection, as `gatehouse
/// statements` does.
#[test]
fn records_nobody_waits_for_are_committed_while_they_keep_coming_and_once_they_stop() {
    let dir = temp("commit-by-age");
    let db = dir.join("state/audit.db");
    let key_path = settings::host_key_path(&db);
    let (audit, writer) = open(&db, &key_path, &opts(None)).unwrap();
    let id = sid(6);
    let seen = || statement_texts(&db).len();
    // One record every 200 µs for up to 2 s: no pause long enough for an
    // idle commit, so what shows meanwhile was committed by age.
    let (mut seq, mut seen_while_coming) = (0u64, 0usize);
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(2) && seen_while_coming == 0 {
        for _ in 0..50 {
            seq += 1;
            audit.record(statement_event(id, seq, "SELECT 1")).unwrap();
            std::thread::sleep(Duration::from_micros(200));
        }
        seen_while_coming = seen();
    }
    assert!(seen_while_coming > 0, "none of {seq} records sent over 2 s was committed while they kept coming");
    // The last ones: committed once no more come.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while seen() < usize::try_from(seq).unwrap() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(seen(), usize::try_from(seq).unwrap(), "the last records were not committed once they stopped");
    drop(audit);
    writer.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

/// The writer runs at `WRITER_NICE` when it may (with `CAP_SYS_NICE`), and
/// at the sessions' priority when it may not: either way it runs.
#[test]
fn the_writer_runs_ahead_of_the_sessions_when_it_may() {
    let dir = temp("nice");
    let db = dir.join("state/audit.db");
    let (audit, writer) = open(&db, &settings::host_key_path(&db), &opts(None)).unwrap();
    run(audit.flush()).unwrap();
    // CAP_SYS_NICE (bit 23) in the effective set: root has it, unless a
    // container took it away.
    let cap_sys_nice = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << 23) != 0);
    let want = if cap_sys_nice { WRITER_NICE } else { 0 };
    // Every audit writer of this process, by its thread name: other tests'
    // too, which run in parallel (one just spawned may not have set its own
    // yet: looked at again, a few times).
    let writers = || {
        let mut nices = Vec::new();
        for t in std::fs::read_dir("/proc/self/task").unwrap() {
            let t = t.unwrap().path();
            if std::fs::read_to_string(t.join("comm")).unwrap_or_default().trim() != "audit-writer" {
                continue;
            }
            let stat = std::fs::read_to_string(t.join("stat")).unwrap_or_default();
            // After the parenthesised name: state is field 3, nice field 19.
            let rest = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or_default();
            nices.push(rest.split(' ').nth(16).and_then(|n| n.parse::<i32>().ok()));
        }
        nices
    };
    let mut nices = writers();
    for _ in 0..50 {
        if !nices.is_empty() && nices.iter().all(|n| *n == Some(want)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
        nices = writers();
    }
    assert!(!nices.is_empty(), "no audit-writer thread found");
    assert!(nices.iter().all(|n| *n == Some(want)), "nice values of the writers: {nices:?}, want {want}");
    drop(audit);
    writer.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A batch inserts a statement whose end is in it as one whole row; the
/// tables come out as indexing each record on its own makes them (as a
/// journal replay does), whatever the batch holds: ends of earlier batches'
/// statements, a statement started twice, a redaction between a statement
/// and its end, an end without a statement.
#[test]
fn a_statements_row_reads_the_same_whether_its_end_was_folded_into_its_record_or_not() {
    let start = |s: u8, seq: u64, text: &str| {
        // Fixed times and tables: both stores are built from the records made twice.
        let mut e = statement_event(sid(s), seq, text);
        if let Event::Statement(st) = &mut e {
            st.started_us = 1_000 + i64::from(s);
            st.tables = "public.t".into();
        }
        e
    };
    let end = |s: u8, seq: u64, rows: Option<u64>, error: Option<&str>| {
        Event::StatementEnd(Box::new(StatementEnd {
            session: sid(s),
            seq,
            ended_us: 2_000 + i64::try_from(seq).unwrap(),
            rows,
            duration_us: 7 * seq,
            error: error.map(str::to_owned),
            masked: Some("{\"email\":1}".into()),
            tags: None,
            down_offset: None,
            down: Vec::new(),
        }))
    };
    let batches = || {
        vec![
            vec![
                start(1, 1, "SELECT 1"),
                end(1, 1, Some(1), None),
                start(1, 2, "SELECT 2"),
                start(2, 1, "first"),
                end(2, 1, Some(5), None),
                start(3, 1, "SELECT 'secret'"),
                end(3, 1, Some(1), None),
                start(3, 2, "SELECT 'more'"),
                end(3, 2, None, Some("boom")),
            ],
            vec![end(1, 2, Some(2), None), end(9, 1, Some(1), None), start(4, 1, "alone")],
        ]
    };
    let dir = temp("rows");
    let rows_of = |conn: &Connection| -> Vec<String> {
        let mut q = conn
            .prepare(
                "SELECT session_id, seq, started_us, text, kinds, tables, decision, rule, reason, redacted,
                        ended_us, rows, duration_us, error, masked FROM statements ORDER BY session_id, seq",
            )
            .unwrap();
        q.query_map([], |r| {
            let cell = |i: usize| match r.get_ref(i).unwrap() {
                rusqlite::types::ValueRef::Null => "Null".to_owned(),
                rusqlite::types::ValueRef::Integer(n) => n.to_string(),
                rusqlite::types::ValueRef::Text(t) => format!("{:?}", String::from_utf8_lossy(t)),
                v => format!("{v:?}"),
            };
            Ok((0..15).map(cell).collect::<Vec<_>>().join("|"))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect()
    };
    let kinds_of = |conn: &Connection| -> Vec<String> {
        conn.prepare("SELECT kind FROM events ORDER BY seq")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };

    // Batched as the writer does (ends folded into their statements' records)…
    let batched = open_conn(&dir.join("state/batched.db"), false).unwrap();
    let mut head = (0, chain::GENESIS);
    for b in batches() {
        let entries: Vec<_> = b.into_iter().map(journal::Entry::now).collect();
        head = write(&batched, head, &entries).unwrap().0;
    }
    // …and one record per batch (nothing folded: every end a record of its own).
    let single = open_conn(&dir.join("state/single.db"), false).unwrap();
    let mut head = (0, chain::GENESIS);
    for e in batches().into_iter().flatten() {
        head = write(&single, head, &[journal::Entry::now(e)]).unwrap().0;
    }
    let (statement, end_) = ("statement", "statement_end");
    assert_eq!(
        kinds_of(&batched),
        [statement, statement, statement, statement, statement, end_, end_, statement],
        "1/1, 2/1, 3/1 and 3/2 folded (each end the next record of its session in the batch); 1/2's end came later"
    );
    assert_eq!(kinds_of(&single).iter().filter(|k| *k == end_).count(), 6);
    let (got, want) = (rows_of(&batched), rows_of(&single));
    assert_eq!(got, want);
    assert_eq!(got.len(), 6, "1/1, 1/2, 2/1, 3/1, 3/2, 4/1 (an end without its statement has no row): {got:#?}");
    assert!(got.iter().any(|r| r.contains("\"alone\"") && r.ends_with("Null|Null|Null|Null|Null")), "{got:#?}");
    assert!(got.iter().any(|r| r.contains("\"SELECT 'more'\"") && r.contains("\"boom\"")), "{got:#?}");
    assert!(got.iter().any(|r| r.contains("\"SELECT 2\"|") && r.contains("|2|14|Null|")), "{got:#?}");
    assert!(got.iter().any(|r| r.contains("\"first\"") && r.contains("|5|7|Null|\"{\\\"email\\\":1}\"")), "{got:#?}");
    // A redaction removes the records' content (`admin::redact`), and so their rows;
    // a body that is not JSON has none, and does not stop the rest being read.
    for c in [&batched, &single] {
        c.execute(
            "UPDATE events SET body = NULL, data = NULL WHERE session = ?1 AND kind IN ('statement', 'statement_end')",
            [sid(3).to_string()],
        )
        .unwrap();
        c.execute("UPDATE events SET body = CAST('{\"seq\": 1' AS BLOB) WHERE session = ?1", [sid(4).to_string()])
            .unwrap();
        // JSON of the wrong shape (by hand: the chain no longer verifies) is listed as what it can be read as.
        c.execute(
            "UPDATE events SET body = CAST('{\"seq\":\"x\",\"text\":7,\"end\":{\"rows\":\"many\"}}' AS BLOB)
             WHERE session = ?1 AND kind = 'statement'",
            [sid(2).to_string()],
        )
        .unwrap();
    }
    let (got, want) = (rows_of(&batched), rows_of(&single));
    assert_eq!(got, want);
    assert_eq!(got.len(), 3, "1/1, 1/2, 2/1: {got:#?}");
    assert!(got.iter().any(|r| r.contains("|0|0|\"7\"|\"\"|")), "2/1 by hand: {got:#?}");
    let listed = query::statements(&dir.join("state/batched.db"), None, 10).unwrap();
    assert_eq!(listed.len(), 3, "{listed:#?}");
    assert!(!got.iter().any(|r| r.contains("secret") || r.contains("alone")), "{got:#?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_body_encoded_through_the_scratch_buffer_is_the_plain_json() {
    // Large then small then large again: the kept buffer never leaks bytes
    // of an earlier record into a later one, and is cut back after a large one.
    let statement = |text: String| {
        Event::Statement(Box::new(StatementStart {
            session: SessionId::new(),
            seq: 1,
            started_us: 2,
            text,
            kinds: "select".into(),
            tables: "t".into(),
            decision: Verdict::Allow,
            rule: Some("r".into()),
            reason: None,
            redacted: 0,
            up_offset: None,
            up: Vec::new(),
            up_len: None,
            end: None,
        }))
    };
    for text in ["x".repeat(10_000), "SELECT 1".into(), String::new(), "\"quoted\" \u{1}".repeat(900)] {
        let e = statement(text);
        let Event::Statement(s) = &e else { panic!("a statement") };
        let (body, _) = e.encode();
        assert_eq!(body, serde_json::to_vec(s).unwrap());
        assert!(JSON_SCRATCH.with_borrow(Vec::capacity) <= JSON_SCRATCH_KEEP);
    }
}

#[test]
fn a_session_key_spells_a_session_id_as_its_display_does() {
    // The chain hashes and the query tables join on this text: it must be the id's usual spelling.
    for id in [SessionId::new(), sid(0), sid(255), SessionId(uuid::Uuid::max())] {
        let k = super::SessionKey::id(id);
        assert_eq!(&*k, id.to_string(), "{id:?}");
        assert_eq!(k.len(), 36);
    }
    assert_eq!(&*super::SessionKey::Text("abc".into()), "abc");
}

/// A statement of several kinds and tables (one of them named to read as
/// two), as the relays record it.
fn many_kinds_and_tables() -> StatementStart {
    use crate::sql::{Kind, TableRef};
    let kinds = [Kind::DeleteWithoutWhere, Kind::Select, Kind::FunctionCall, Kind::Delete].into_iter().collect();
    let table = |schema: Option<&str>, name: &str| TableRef { schema: schema.map(Into::into), name: name.into() };
    let tables = [
        table(Some("public"), "t"),
        table(Some("scratch"), "x,public.salaries"),
        table(None, "Mixed Case"),
        table(None, "a\"b"),
    ];
    StatementStart {
        session: sid(7),
        seq: 3,
        started_us: 1_700_000_000_123_456,
        text: "DELETE FROM t USING …".into(),
        kinds: crate::sql::KindList::of(&kinds),
        tables: crate::sql::TableList::of(&tables),
        decision: Verdict::Deny,
        rule: Some("no-deletes".into()),
        reason: Some("delete without where".into()),
        redacted: 1,
        up_offset: Some(12),
        up: b"Q...".to_vec(),
        up_len: None,
        end: None,
    }
}

#[test]
fn a_statements_kinds_and_tables_are_recorded_as_the_text_they_always_were() {
    // This statement's body as stores hold it and the chain hashed it (kinds
    // joined by `+` in their order, tables by `,` with names quoted).
    const BODY: &str = r#"{"session":"07070707-0707-0707-0707-070707070707","seq":3,"started_us":1700000000123456,"text":"DELETE FROM t USING …","kinds":"select+delete+function_call+delete_without_where","tables":"public.t,scratch.\"x,public.salaries\",\"Mixed Case\",\"a\"\"b\"","decision":"deny","rule":"no-deletes","reason":"delete without where","redacted":1,"up_offset":12}"#;
    let s = many_kinds_and_tables();
    let (body, _) = Event::Statement(Box::new(s.clone())).encode();
    assert_eq!(String::from_utf8(body).unwrap(), BODY);
    // Read back (verify's rebuild, replay, a folded record's split) and written again: the same bytes.
    let back: StatementStart = serde_json::from_str(BODY).unwrap();
    assert_eq!(serde_json::to_string(&back).unwrap(), BODY);
    // The `statements` row, read from the record, holds the same texts.
    let conn = Connection::open_in_memory().unwrap();
    conn.execute_batch(SCHEMA).unwrap();
    write(&conn, (0, chain::GENESIS), &[journal::Entry::now(Event::Statement(Box::new(s)))]).unwrap();
    let row: (String, String) =
        conn.query_row("SELECT kinds, tables FROM statements", [], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
    assert_eq!(row.0, "select+delete+function_call+delete_without_where");
    assert_eq!(row.1, r#"public.t,scratch."x,public.salaries","Mixed Case","a""b""#);
}
