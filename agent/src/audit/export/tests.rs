//! Export bundles: written from a store, verified, and every tampering found.

use ed25519_dalek::VerifyingKey;

use super::check::*;
use super::*;
use crate::audit::verify::Report;
use crate::audit::{ChunkHeader, Direction, Event, Mode, Options, SCHEMA, index, insert_event};
use crate::audit::{SessionClose, StatementEnd, StatementStart, keys};
use crate::protocol::postgres::wire;
use crate::types::SessionId;

const T0: i64 = 1_714_557_600_000_000;
const S_A: &str = "0192e0c4-5b7a-7cc0-8d1e-00000000000a";
const S_B: &str = "0192e0c4-5b7a-7cc0-8d1e-00000000000b";
const S_C: &str = "0192e0c4-5b7a-7cc0-8d1e-00000000000c";

fn temp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gatehouse-export-{}-{name}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    d
}

fn key() -> SigningKey {
    SigningKey::from_bytes(&[7; 32])
}

fn sid(s: &str) -> SessionId {
    SessionId(s.parse().unwrap())
}

fn open(s: &str, user: &str, protocol: &str, at: i64) -> Event {
    Event::SessionOpen(Box::new(SessionOpen {
        id: sid(s),
        started_us: at,
        uid: Some(if user == "alice" { 1000 } else { 1001 }),
        user: Some(user.into()),
        gid: Some(100),
        pid: Some(4242),
        comm: Some("psql".into()),
        cgroup_id: Some(9),
        client: "127.0.0.1:51234".into(),
        backend: Some("appdb".into()),
        orig_dst: Some("127.10.0.5:5432".into()),
        protocol: Some(protocol.into()),
        decision: crate::audit::Verdict::Allow,
        rule: Some("dba".into()),
        reason: "allowed by rule dba".into(),
        oidc: None,
    }))
}

fn close(s: &str, at: i64) -> Event {
    Event::SessionClose(Box::new(SessionClose {
        id: sid(s),
        ended_us: at,
        bytes_up: 10,
        bytes_down: 20,
        end_reason: "closed".into(),
    }))
}

fn statement(seq: u64, text: &str, kinds: &str, decision: &str, at: i64) -> Event {
    Event::Statement(Box::new(StatementStart {
        session: sid(S_A),
        seq,
        started_us: at,
        text: text.into(),
        kinds: kinds.into(),
        tables: "users".into(),
        decision: decision.parse().unwrap(),
        rule: Some("dba".into()),
        reason: (decision != "allow").then(|| "deleting is not allowed".into()),
        redacted: 0,
        up_offset: None,
        up: Vec::new(),
        up_len: None,
        end: None,
    }))
}

fn chunk(s: &str, dir: Direction, offset: u64, data: Vec<u8>) -> Event {
    Event::Chunk { session: sid(s), header: ChunkHeader { dir, offset }, data }
}

/// A store of three sessions (A: alice, postgres; B: bob, tcp,
/// interleaved with A; C: alice, tcp) and two checkpoints, written with
/// the writer's own functions.
fn build_store(dir: &Path) -> PathBuf {
    let db = dir.join("audit.db");
    let mut conn = Connection::open(&db).unwrap();
    conn.execute_batch(SCHEMA).unwrap();
    let tx = conn.transaction().unwrap();
    let mut head = (0u64, chain::GENESIS);
    let sec = 1_000_000;
    let mut result = Vec::new();
    result.extend(wire::data_row([Some(&b"1"[..])].into_iter()));
    result.extend(b"C\0\0\0\x0dSELECT 1\0");
    result.extend(wire::ready_for_query(b'I'));
    let refusal = wire::PgError::new(wire::Severity::Error, "42501", "refused").encode();
    let events = [
        (T0, Event::Agent { what: "start".into() }),
        (T0 + sec, open(S_A, "alice", "postgres", T0 + sec)),
        (T0 + sec + 100, statement(1, "SELECT id FROM users", "select", "allow", T0 + sec + 100)),
        (T0 + 2 * sec, open(S_B, "bob", "tcp", T0 + 2 * sec)),
        (T0 + 2 * sec + 1, chunk(S_A, Direction::Up, 0, wire::query("SELECT id FROM users"))),
        (T0 + 2 * sec + 2, chunk(S_B, Direction::Up, 0, b"hello\n".to_vec())),
        (
            T0 + 2 * sec + 3,
            Event::StatementEnd(Box::new(StatementEnd {
                session: sid(S_A),
                seq: 1,
                ended_us: T0 + 2 * sec + 3,
                rows: Some(1),
                duration_us: 2500,
                error: None,
                masked: Some(r#"{"email":1}"#.into()),
                tags: None,
                down_offset: None,
                down: Vec::new(),
            })),
        ),
        (T0 + 2 * sec + 4, chunk(S_A, Direction::Down, 0, result.clone())),
        (T0 + 2 * sec + 5, chunk(S_B, Direction::Down, 0, vec![0, 1, 2, 3])),
        (T0 + 3 * sec, statement(2, "DELETE FROM users", "delete+delete_without_where", "deny", T0 + 3 * sec)),
        (T0 + 3 * sec + 1, chunk(S_A, Direction::Down, u64::try_from(result.len()).unwrap(), refusal)),
        (T0 + 4 * sec, close(S_B, T0 + 4 * sec)),
        (T0 + 5 * sec, close(S_A, T0 + 5 * sec)),
    ];
    for (at, e) in &events {
        let (body, data) = e.encode();
        head = insert_event(&tx, head, *at, e.session().as_deref(), e.kind(), &body, data).unwrap();
        index(&tx, e).unwrap();
    }
    checkpoint(&tx, &mut head, T0 + 6 * sec);
    for (at, e) in [
        (T0 + 20 * sec, open(S_C, "alice", "tcp", T0 + 20 * sec)),
        (T0 + 20 * sec + 1, chunk(S_C, Direction::Up, 0, b"ping\n".to_vec())),
        (T0 + 21 * sec, close(S_C, T0 + 21 * sec)),
        (T0 + 22 * sec, Event::Agent { what: "stop".into() }),
    ] {
        let (body, data) = e.encode();
        head = insert_event(&tx, head, at, e.session().as_deref(), e.kind(), &body, data).unwrap();
        index(&tx, &e).unwrap();
    }
    checkpoint(&tx, &mut head, T0 + 23 * sec);
    tx.commit().unwrap();
    db
}

fn checkpoint(tx: &rusqlite::Transaction<'_>, head: &mut (u64, [u8; 32]), at: i64) {
    let (seq, hash) = *head;
    let sig = chain::sign(&key(), &chain::checkpoint_message(seq, &hash, at));
    let body = json!({
        "head_seq": seq,
        "head_hash": hex(&hash),
        "time_us": at,
        "public_key": hex(&key().verifying_key().to_bytes()),
    })
    .to_string()
    .into_bytes();
    *head = insert_event(tx, *head, at, None, "checkpoint", &body, Some(&sig)).unwrap();
}

fn all(format: Format) -> ExportOptions {
    ExportOptions { since_us: None, until_us: None, user: None, format }
}

fn export_to(db: &Path, out: &Path, opts: &ExportOptions) -> Manifest {
    export(db, out, opts, &key(), &mut |_, _| {}).unwrap()
}

fn copy_bundle(src: &Path, dst: &Path) {
    let _ = fs::remove_dir_all(dst);
    fs::create_dir_all(dst).unwrap();
    for e in fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
}

fn lines(dir: &Path) -> Vec<String> {
    fs::read_to_string(dir.join(RECORDS)).unwrap().lines().map(str::to_owned).collect()
}

fn set_lines(dir: &Path, lines: &[String]) {
    fs::write(dir.join(RECORDS), lines.join("\n") + "\n").unwrap();
}

fn trust(k: VerifyingKey) -> Trust {
    Trust { keys: vec![k], source: TrustSource::Given }
}

fn verify_ok(dir: &Path) -> Report {
    let r = verify_export(dir, Some(&trust(key().verifying_key()))).unwrap();
    assert!(r.ok(), "{:#?}", r.problems);
    r
}

#[track_caller]
fn assert_found(r: &Report, seq: u64, word: &str) {
    assert!(!r.ok());
    assert!(
        r.problems.iter().any(|p| p.seq == seq && p.what.contains(word)),
        "no problem at record {seq} saying {word:?}: {:#?}",
        r.problems
    );
}

#[test]
fn an_untouched_export_verifies_with_the_right_key_and_not_another() {
    let dir = temp("untouched");
    let db = build_store(&dir);
    let out = dir.join("bundle");
    let mut calls = Vec::new();
    let m = export(&db, &out, &all(Format::Jsonl), &key(), &mut |d, t| calls.push((d, t))).unwrap();
    assert_eq!((m.records, m.sessions, m.first_seq, m.last_seq), (19, 3, Some(1), Some(19)));
    assert!(m.complete);
    assert_eq!(m.anchor.as_deref(), Some(hex(&chain::GENESIS).as_str()));
    assert_eq!(calls.last(), Some(&(19, 19)));
    assert_eq!(calls.len(), 19);

    let r = verify_ok(&out);
    assert_eq!((r.records, r.checkpoints, r.checkpoints_verified), (19, 2, 2));
    assert_eq!(r.public_keys, vec![hex(&key().verifying_key().to_bytes())]);

    let other = SigningKey::from_bytes(&[8; 32]).verifying_key();
    let r = verify_export(&out, Some(&trust(other))).unwrap();
    assert_found(&r, 0, "signature is not valid");
    assert_found(&r, 14, "not a trusted key");

    // Without a trusted key, the bundle's own key is used, and named.
    let r = verify_export(&out, None).unwrap();
    assert!(r.ok(), "{:#?}", r.problems);
    assert_eq!(r.public_keys, vec![hex(&key().verifying_key().to_bytes())]);

    // Every record is in the file, re-verifiable on its own.
    let first: Value = serde_json::from_str(&lines(&out)[1]).unwrap();
    assert_eq!(first["kind"], "session_open");
    assert_eq!(first["body"]["user"], "alice");
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn every_tampering_is_reported_at_its_record() {
    let dir = temp("tamper");
    let db = build_store(&dir);
    let clean = dir.join("clean");
    export_to(&db, &clean, &all(Format::Jsonl));
    let work = dir.join("work");
    let original = lines(&clean);
    let verify = |d: &Path| verify_export(d, Some(&trust(key().verifying_key()))).unwrap();

    // A body edited (readable and hashed copies alike), hash left alone.
    copy_bundle(&clean, &work);
    let mut l = original.clone();
    l[2] = l[2].replace("SELECT id FROM users", "SELECT 1 FROM users");
    assert_ne!(l[2], original[2]);
    set_lines(&work, &l);
    let r = verify(&work);
    assert_found(&r, 3, "was changed");
    assert_found(&r, 0, "records.jsonl was changed");

    // Only the readable copy of a body edited: what people read must be what is hashed.
    copy_bundle(&clean, &work);
    let mut l = original.clone();
    let mut v: Value = serde_json::from_str(&l[1]).unwrap();
    v["body"]["user"] = "mallory".into();
    l[1] = v.to_string();
    set_lines(&work, &l);
    let r = verify(&work);
    assert_found(&r, 2, "readable body does not say what its hashed body says");
    assert!(!r.problems.iter().any(|p| p.what.contains("record 2 was changed")), "{:#?}", r.problems);

    // The same edit with the record's hash recomputed.
    copy_bundle(&clean, &work);
    let (mut rec, _) = parse_record(original[2].as_bytes()).unwrap();
    rec.body = String::from_utf8(rec.body).unwrap().replace("SELECT id", "SELECT 1").into_bytes();
    rec.content_hash = chain::content_hash(&rec.body, rec.data.as_deref());
    rec.hash = rec.computed_hash();
    let mut l = original.clone();
    l[2] = String::from_utf8(record_line(&rec).unwrap()).unwrap();
    set_lines(&work, &l);
    let r = verify(&work);
    assert_found(&r, 3, "was changed (its hash is not the one the manifest signs)");
    assert_found(&r, 4, "does not chain from record 3");

    // A record deleted.
    copy_bundle(&clean, &work);
    let mut l = original.clone();
    l.remove(4);
    set_lines(&work, &l);
    let r = verify(&work);
    assert_found(&r, 5, "was deleted");
    assert_found(&r, 6, "records 5..5 were deleted");

    // A forged record inserted.
    copy_bundle(&clean, &work);
    let (mut fake, _) = parse_record(original[5].as_bytes()).unwrap();
    fake.data = Some(b"rm -rf /\n".to_vec());
    fake.content_hash = chain::content_hash(&fake.body, fake.data.as_deref());
    fake.hash = fake.computed_hash();
    let mut l = original.clone();
    l.insert(5, String::from_utf8(record_line(&fake).unwrap()).unwrap());
    set_lines(&work, &l);
    let r = verify(&work);
    assert_found(&r, 6, "was inserted before record 6");

    // Two records swapped.
    copy_bundle(&clean, &work);
    let mut l = original.clone();
    l.swap(7, 8);
    set_lines(&work, &l);
    let r = verify(&work);
    assert_found(&r, 8, "reordered");

    // The manifest changed.
    copy_bundle(&clean, &work);
    let m = fs::read_to_string(work.join(MANIFEST)).unwrap();
    fs::write(work.join(MANIFEST), m.replace("\"records\": 19", "\"records\": 18")).unwrap();
    let r = verify(&work);
    assert_found(&r, 0, "signature is not valid");
    assert_found(&r, 0, "the manifest lists 18 records");

    // A file added, and one of the signed ones changed.
    copy_bundle(&clean, &work);
    fs::write(work.join("extra.txt"), "hi").unwrap();
    fs::write(work.join(INDEX), "1 00\n").unwrap();
    let r = verify(&work);
    assert_found(&r, 0, "extra.txt is not part of the signed bundle");
    assert_found(&r, 0, "index.txt was changed");

    // A thorough forger rewrites a record, the index, the manifest and re-signs with their own key.
    copy_bundle(&clean, &work);
    let mut l = original.clone();
    l[2] = String::from_utf8(record_line(&rec).unwrap()).unwrap();
    set_lines(&work, &l);
    let list: Vec<(u64, [u8; 32])> =
        l.iter().map(|x| parse_record(x.as_bytes()).unwrap().0).map(|r| (r.seq, r.hash)).collect();
    let index_text: String = list.iter().map(|(s, h)| format!("{s} {}\n", hex(h))).collect();
    fs::write(work.join(INDEX), &index_text).unwrap();
    let mut m: Manifest = serde_json::from_slice(&fs::read(work.join(MANIFEST)).unwrap()).unwrap();
    m.records_digest = digest_of(&list);
    for f in &mut m.files {
        let (bytes, h) = hash_file(&work.join(&f.name)).unwrap();
        (f.bytes, f.blake3) = (bytes, h);
    }
    let forger = SigningKey::from_bytes(&[9; 32]);
    m.host_public_key = hex(&forger.verifying_key().to_bytes());
    let bytes = serde_json::to_vec_pretty(&m).unwrap();
    fs::write(work.join(MANIFEST), &bytes).unwrap();
    fs::write(work.join(SIGNATURE), hex(&chain::sign(&forger, &bytes))).unwrap();
    fs::write(work.join(PUBLIC_KEY), &m.host_public_key).unwrap();
    let r = verify(&work);
    assert_found(&r, 0, "signature is not valid");
    assert!(r.problems.iter().any(|p| p.what.contains(&m.host_public_key)), "{:#?}", r.problems);
    // Trusting the bundle's own key, the report names the forger's key.
    let r = verify_export(&work, None).unwrap();
    assert_eq!(r.public_keys, vec![m.host_public_key.clone()]);
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn filters_select_whole_sessions_and_their_checkpoints() {
    let dir = temp("filters");
    let db = build_store(&dir);
    let alice = dir.join("alice");
    let opts = ExportOptions { user: Some("alice".into()), ..all(Format::Jsonl) };
    let m = export_to(&db, &alice, &opts);
    assert!(!m.complete);
    assert_eq!((m.records, m.sessions), (13, 2), "A: 8 records, C: 3, and both checkpoints: {m:#?}");
    let kinds: Vec<(Option<String>, String)> =
        lines(&alice).iter().map(|l| parse_record(l.as_bytes()).unwrap().0).map(|r| (r.session, r.kind)).collect();
    assert!(kinds.iter().all(|(s, k)| s.as_deref() != Some(S_B) && k != "agent"), "{kinds:?}");
    let r = verify_ok(&alice);
    assert_eq!(r.checkpoints_verified, 2);

    // By uid, and by time: only B opened in [+1.5 s, +10 s), with the checkpoint at +6 s.
    let by_uid = dir.join("uid");
    assert_eq!(export_to(&db, &by_uid, &ExportOptions { user: Some("1000".into()), ..all(Format::Jsonl) }).records, 13);
    let window = dir.join("window");
    let opts = ExportOptions { since_us: Some(T0 + 1_500_000), until_us: Some(T0 + 10_000_000), ..all(Format::Jsonl) };
    let m = export_to(&db, &window, &opts);
    assert_eq!((m.records, m.sessions), (5, 1));
    verify_ok(&window);
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn ocsf_maps_sessions_and_statements() {
    let dir = temp("ocsf");
    let db = build_store(&dir);
    let out = dir.join("bundle");
    let m = export_to(&db, &out, &all(Format::Ocsf));
    assert_eq!(m.ocsf_version.as_deref(), Some("1.1.0"));
    assert!(m.files.iter().any(|f| f.name == OCSF));
    verify_ok(&out);
    let events: Vec<Value> =
        fs::read_to_string(out.join(OCSF)).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let of = |type_uid: u64| events.iter().filter(move |e| e["type_uid"] == type_uid).collect::<Vec<_>>();
    let logons = of(300_201);
    assert_eq!(logons.len(), 3);
    let a = logons.iter().find(|e| e["session"]["uid"] == S_A).unwrap();
    assert_eq!(a["class_uid"], 3002);
    assert_eq!(a["category_uid"], 3);
    assert_eq!(a["status_id"], 1);
    assert_eq!(a["actor"]["user"]["name"], "alice");
    assert_eq!(a["actor"]["user"]["uid"], "1000");
    assert_eq!(a["actor"]["process"]["name"], "psql");
    assert_eq!(a["src_endpoint"]["ip"], "127.0.0.1");
    assert_eq!(a["dst_endpoint"]["port"], 5432);
    assert_eq!(a["metadata"]["product"]["name"], "Gatehouse");
    assert_eq!(a["metadata"]["version"], "1.1.0");
    assert_eq!(a["metadata"]["uid"].as_str().unwrap().len(), 64);
    assert_eq!(a["time"], (T0 + 1_000_000) / 1000);
    assert_eq!(of(300_202).len(), 3);

    let query = of(600_504);
    assert_eq!(query.len(), 1, "{events:#?}");
    let q = query[0];
    assert_eq!(q["activity_name"], "Query");
    assert_eq!(q["query_info"]["query_string"], "SELECT id FROM users");
    assert_eq!(q["status_id"], 1);
    assert_eq!(q["duration"], 2);
    assert_eq!(q["database"]["name"], "appdb");
    assert_eq!(q["table"]["name"], "users");
    assert_eq!(q["unmapped"]["decision"], "allow");
    assert_eq!(q["unmapped"]["masked"]["email"], 1);

    let delete = of(600_507);
    assert_eq!(delete.len(), 1);
    assert_eq!(delete[0]["status_id"], 2);
    assert_eq!(delete[0]["status_detail"], "deleting is not allowed");
    assert_eq!(delete[0]["unmapped"]["rule"], "dba");
    assert_eq!(delete[0]["severity_id"], 3);

    assert_eq!(of(600_203).len(), 1, "agent start");
    assert_eq!(of(600_204).len(), 1, "agent stop");
    let _ = fs::remove_dir_all(&dir);
}

/// A statement and its end chained as one record (the writer's fold) map to
/// the same OCSF events as the two records, but for what names the records.
#[test]
fn ocsf_maps_a_folded_statement_as_the_two_records_it_stands_for() {
    use crate::audit::journal::Entry;
    let end = Event::StatementEnd(Box::new(StatementEnd {
        session: sid(S_A),
        seq: 1,
        ended_us: T0 + 2600,
        rows: Some(3),
        duration_us: 2500,
        error: None,
        masked: Some(r#"{"email":2}"#.into()),
        tags: Some("SELECT 3".into()),
        down_offset: Some(0),
        down: b"C\0\0\0\x0dSELECT 3\0".to_vec(),
    }));
    let (s, x) = (Entry::now(statement(1, "SELECT id FROM users", "select", "allow", T0 + 100)), Entry::now(end));
    let rec = |seq: u64, time_us: i64, kind: &str, body: Vec<u8>, data: Option<Vec<u8>>| Record {
        seq,
        time_us,
        session: Some(S_A.into()),
        kind: kind.into(),
        body,
        data,
        content_hash: [0; 32],
        redacted: false,
        prev_hash: [0; 32],
        hash: [u8::try_from(seq).unwrap(); 32],
    };
    let json = |e: Event| e.encode().0;
    let two = vec![
        rec(1, T0, "session_open", json(open(S_A, "alice", "postgres", T0)), None),
        rec(2, T0 + 100, "statement", s.body().to_vec(), s.data().map(<[u8]>::to_vec)),
        rec(3, T0 + 2600, "statement_end", x.body().to_vec(), x.data().map(<[u8]>::to_vec)),
        rec(4, T0 + 9000, "session_close", json(close(S_A, T0 + 9000)), None),
    ];
    let one = vec![
        rec(1, T0, "session_open", json(open(S_A, "alice", "postgres", T0)), None),
        rec(2, T0 + 2600, "statement", crate::audit::fold::body(&s, &x), crate::audit::fold::data(&s, &x)),
        rec(3, T0 + 9000, "session_close", json(close(S_A, T0 + 9000)), None),
    ];
    let map = |records: &[Record]| {
        let mut m = ocsf::OcsfMapper::default();
        let mut out: Vec<Value> = records.iter().flat_map(|r| m.record(r)).collect();
        out.extend(m.finish());
        out
    };
    let (mut a, mut b) = (map(&two), map(&one));
    let q = b.iter().find(|e| e["type_uid"] == 600_504).expect("a query event");
    assert_eq!((q["unmapped"]["rows"].as_u64(), q["unmapped"]["masked"]["email"].as_u64()), (Some(3), Some(2)), "{q}");
    assert_eq!((q["unmapped"]["record_seq"].as_u64(), q["unmapped"]["end_record_seq"].as_u64()), (Some(2), Some(2)));
    // What names the records differs (their seq and hash); nothing else.
    for e in a.iter_mut().chain(b.iter_mut()) {
        e["metadata"]["uid"] = Value::Null;
        for k in ["record_seq", "end_record_seq", "end_record_hash"] {
            if let Some(u) = e["unmapped"].as_object_mut() {
                u.remove(k);
            }
        }
    }
    assert_eq!(a, b);
}

#[test]
fn asciicast_has_a_header_and_the_transcript_with_crlf() {
    let dir = temp("cast");
    let db = build_store(&dir);
    let out = dir.join("bundle");
    let m = export_to(&db, &out, &all(Format::Asciicast));
    verify_ok(&out);
    assert_eq!(m.files.iter().filter(|f| f.name.ends_with(".cast")).count(), 3);
    let cast = fs::read_to_string(out.join(format!("{S_A}.cast"))).unwrap();
    let mut it = cast.lines();
    let header: Value = serde_json::from_str(it.next().unwrap()).unwrap();
    assert_eq!(header["version"], 2);
    assert_eq!((header["width"].as_u64(), header["height"].as_u64()), (Some(120), Some(40)));
    assert_eq!(header["timestamp"], (T0 + 1_000_000) / 1_000_000);
    assert_eq!(header["title"], format!("Gatehouse session {S_A}: alice@appdb"));
    let events: Vec<(f64, String, String)> = it.map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(events.iter().all(|(_, kind, text)| kind == "o" && text.ends_with("\r\n")));
    assert!(events.windows(2).all(|w| w[0].0 <= w[1].0));
    let all_text: String = events.iter().map(|e| e.2.as_str()).collect();
    assert!(all_text.contains("appdb=> SELECT id FROM users;\r\n"), "{all_text}");
    assert!(all_text.contains(" ?column?\r\n----------\r\n 1\r\n(1 row)\r\n"), "{all_text}");
    assert!(!all_text.replace("\r\n", "").contains('\n'), "{all_text}");
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn the_output_directory_must_be_new_or_empty() {
    let dir = temp("outdir");
    let db = build_store(&dir);
    let e = export(&db, &dir, &all(Format::Jsonl), &key(), &mut |_, _| {}).unwrap_err();
    assert!(matches!(e, ExportError::NotEmpty { .. }), "{e}");
    let empty = dir.join("empty");
    fs::create_dir(&empty).unwrap();
    export_to(&db, &empty, &all(Format::Jsonl));
    verify_ok(&empty);
    assert!(verify_export(&dir.join("missing"), None).is_err());
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn a_store_written_by_the_real_writer_exports_and_verifies() {
    let dir = temp("writer");
    let db = dir.join("audit.db");
    let key_path = dir.join("host.key");
    let opts = Options {
        mode: Mode::BestEffort,
        fsync: false,
        checkpoint_every: std::time::Duration::from_secs(3600),
        retention_days: None,
        publish: crate::audit::anchors::Publish::default(),
    };
    let (audit, writer) = crate::audit::open(&db, &key_path, &opts).unwrap();
    let at = now_us();
    audit.record(open(S_A, "alice", "tcp", at)).unwrap();
    audit.record(chunk(S_A, Direction::Up, 0, b"hello".to_vec())).unwrap();
    audit.record(close(S_A, at + 1)).unwrap();
    writer.stop();
    let key = keys::load_or_create(&key_path).unwrap();
    let out = dir.join("bundle");
    let m = export(&db, &out, &all(Format::Asciicast), &key, &mut |_, _| {}).unwrap();
    assert_eq!(m.records, 6, "agent start, 3 session records, agent stop, checkpoint");
    let r = verify_export(&out, Some(&trust(key.verifying_key()))).unwrap();
    assert!(r.ok(), "{:#?}", r.problems);
    assert_eq!(r.checkpoints_verified, 1);
    // The store itself verifies too: the export read it without changing it.
    assert!(crate::audit::verify::verify_db(&db, &trust(key.verifying_key()), None).unwrap().ok());
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn names_and_hex_from_the_bundle_are_checked() {
    assert!(!plain_name("../x") && !plain_name("a/b") && !plain_name(MANIFEST) && !plain_name(""));
    assert!(plain_name("records.jsonl"));
    assert_eq!(unhex("00ffA0"), Some(vec![0, 255, 160]));
    assert_eq!(unhex("0"), None);
    assert_eq!(unhex("zz"), None);
    let mut taken = HashSet::new();
    assert_eq!(cast_name("../../etc/passwd", &mut taken), "etcpasswd.cast");
    assert_eq!(cast_name("etc/passwd", &mut taken), "etcpasswd-2.cast");
    assert_eq!(cast_name("///", &mut taken), "session.cast");
}
