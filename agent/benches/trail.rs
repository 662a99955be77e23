//! `who-saw` and `access-report` on a store of 100M trailed rows
//! (`cargo xtask bench trail` runs it beside the end-to-end 1M-row
//! measurement). A measurement, not a test.
//!
//! The store is generated directly, in one transaction: the audit schema,
//! 50 users' sessions, and 20,000 `trail` records indexed exactly as the
//! agent's writer indexes them (`trail::store::index`), over a key space of
//! 20M customers and 90 days: 900 range reads of 100,000 consecutive keys,
//! 100 scattered reads of 100,000 random keys, and 19,000 point reads of
//! 1–20 random keys (≈100.2M rows in all). The records' chain hashes are
//! zeros: `who-saw` does not read them (`verify` does).
#![expect(clippy::expect_used, reason = "a benchmark harness")]

use std::time::Instant;

use gatehouse::trail::keys::KeySet;
use gatehouse::trail::{TrailRecord, store};
use gatehouse::types::SessionId;

const KEYSPACE: u64 = 20_000_000;
const DAY_US: i64 = 86_400_000_000;

/// xorshift64*: reproducible, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn main() {
    let dir = std::env::temp_dir().join(format!("gh-bench-trail-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("audit.db");
    let mut conn = rusqlite::Connection::open(&path).expect("open");
    conn.pragma_update(None, "journal_mode", "WAL").expect("wal");
    conn.pragma_update(None, "synchronous", "OFF").expect("sync");
    conn.execute_batch(gatehouse::audit::SCHEMA).expect("schema");
    store::hash_key(&conn).expect("key");
    let t = Instant::now();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let now = gatehouse::audit::now_us();
    let sessions: Vec<SessionId> = (0..50).map(|_| SessionId::new()).collect();
    let (mut rows_total, mut data_bytes) = (0u64, 0u64);
    {
        let tx = conn.transaction().expect("tx");
        for (i, s) in sessions.iter().enumerate() {
            tx.execute(
                "INSERT INTO sessions (id, started_us, uid, user, pid, comm, client, decision, reason)
                 VALUES (?1, ?2, ?3, ?4, 4242, 'psql', '127.0.0.1:5000', 'allow', 'bench')",
                rusqlite::params![
                    s.to_string(),
                    now - 90 * DAY_US,
                    1000 + i64::try_from(i).expect("i"),
                    format!("user{i}")
                ],
            )
            .expect("session");
        }
        for n in 0..20_000u64 {
            let mut set = KeySet::default();
            if n < 900 {
                let lo = rng.below(KEYSPACE - 100_000);
                set.ints.insert_range(lo..lo + 100_000);
            } else if n < 1000 {
                for _ in 0..100_000 {
                    set.ints.insert(rng.below(KEYSPACE));
                }
            } else {
                for _ in 0..=rng.below(20) {
                    set.ints.insert(rng.below(KEYSPACE));
                }
            }
            set.seal();
            let session = *sessions.get(usize::try_from(rng.below(50)).expect("index")).expect("session");
            let time_us = now - i64::try_from(rng.below(90)).expect("day") * DAY_US;
            let rec = TrailRecord {
                session,
                statement: n,
                time_us,
                table: "public.customers".into(),
                table_oid: 16_400,
                key: Some("id".into()),
                rows: set.len(),
                keys: set.len(),
                hashed: false,
                key_masked: false,
                masked: false,
                keyless: None,
            };
            rows_total += set.len();
            let data = set.encode();
            data_bytes += data.len() as u64;
            let body = serde_json::to_vec(&rec).expect("json");
            let seq = n + 1;
            tx.execute(
                "INSERT INTO events (seq, time_us, session, kind, content_hash, body, data, prev_hash, hash)
                 VALUES (?1, ?2, ?3, 'trail', zeroblob(32), ?4, ?5, zeroblob(32), zeroblob(32))",
                rusqlite::params![i64::try_from(seq).expect("seq"), time_us, session.to_string(), body, data],
            )
            .expect("event");
            tx.execute(
                "INSERT INTO statements (session_id, seq, started_us, text, kinds, tables, decision)
                 VALUES (?1, ?2, ?3, 'SELECT * FROM customers WHERE …', 'select', 'public.customers', 'allow')",
                rusqlite::params![session.to_string(), i64::try_from(n).expect("n"), time_us],
            )
            .expect("statement");
            store::index(&tx, seq, &rec, &data).expect("index");
        }
        tx.commit().expect("commit");
    }
    conn.execute_batch("ANALYZE").expect("analyze");
    drop(conn);
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0)
        + std::fs::metadata(dir.join("audit.db-wal")).map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "bench trail: generated {rows_total} trailed rows in 20000 records in {:.1} s ({:.0} MB store, {:.0} MB of key sets)",
        t.elapsed().as_secs_f64(),
        size as f64 / 1e6,
        data_bytes as f64 / 1e6
    );

    let conn = rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).expect("ro");
    let mut lat = Vec::new();
    let (mut found, mut candidates) = (0usize, 0u64);
    for _ in 0..300 {
        let key = rng.below(KEYSPACE).to_string();
        let t = Instant::now();
        let w = store::who_saw_in(&conn, "customers", &key, None).expect("who-saw");
        lat.push(t.elapsed().as_secs_f64() * 1e3);
        found += w.rows.len();
        candidates += w.candidates;
    }
    lat.sort_by(f64::total_cmp);
    let pct = |permille: usize| lat.get((lat.len() - 1) * permille / 1000).copied().unwrap_or(f64::NAN);
    println!(
        "who_saw_100m_rows latency p50 = {:.1} ms  p99 = {:.1} ms  max = {:.1} ms  ({:.1} statements found, {:.0} records read per key)",
        pct(500),
        pct(990),
        pct(1000),
        found as f64 / 300.0,
        candidates as f64 / 300.0
    );
    let t = Instant::now();
    let w = store::who_saw_in(&conn, "customers", "12345", Some(now - 7 * DAY_US)).expect("who-saw since");
    println!("who_saw_100m_rows --since 7d = {:.1} ms ({} found)", t.elapsed().as_secs_f64() * 1e3, w.rows.len());
    let t = Instant::now();
    let r =
        store::access_report_in(&conn, "customers", store::ReportBy::User, Some(now - 30 * DAY_US)).expect("report");
    println!(
        "access_report_100m_rows --since 30d = {:.2} s ({} users, {} distinct rows for the first)",
        t.elapsed().as_secs_f64(),
        r.len(),
        r.first().map_or(0, |x| x.distinct_rows)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
