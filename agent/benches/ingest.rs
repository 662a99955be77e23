//! The audit writer's CPU per statement (`cargo xtask bench ingest`): what
//! the `audit-writer` thread spends to chain and index one statement the way
//! the PostgreSQL relay records it (its start through the journal, with the
//! client's bytes folded in; its end queued, with the result's bytes folded
//! in), and what the sessions spend on the journal. A measurement of the
//! writer alone, on a quiet thread, where `bench pg` cannot resolve a few
//! per cent. Its baseline, measured in the same run: the same bytes (each
//! statement's start and end bodies and folded data) inserted into a plain
//! SQLite table by one thread in transactions of the same size, without the
//! chain, its hashes, the index or the query tables. A measurement, not a test.
#![expect(clippy::expect_used, clippy::cast_possible_truncation, reason = "a benchmark harness over its own numbers")]

use std::time::{Duration, Instant};

use gatehouse::audit::{self, Event, Mode, StatementEnd, StatementStart};
use gatehouse::types::SessionId;

#[path = "common/store.rs"]
mod store;

const SESSIONS: u64 = 8;

/// Statements per session (`GATEHOUSE_BENCH_INGEST_STATEMENTS`, default 25,000).
fn per_session() -> u64 {
    std::env::var("GATEHOUSE_BENCH_INGEST_STATEMENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(25_000).max(1)
}

/// With `GATEHOUSE_BENCH_INGEST_BATCH=N`, each session journals N
/// statements' starts and ends in one commit, so every writer batch holds at
/// least N whole statements whatever the timing: the shape of a busy agent's
/// batches (≈ 35 statements under `bench pg`), also under valgrind, where
/// everything runs ~50× slower and the 2-ms window would otherwise catch one
/// statement at a time. For counting the writer's instructions per statement
/// (see the README's benchmark section).
fn fixed_batch() -> Option<u64> {
    std::env::var("GATEHOUSE_BENCH_INGEST_BATCH").ok().and_then(|v| v.parse().ok()).filter(|&n| n > 0)
}

fn start(session: SessionId, seq: u64) -> Event {
    Event::Statement(Box::new(start_record(session, seq)))
}

fn start_record(session: SessionId, seq: u64) -> StatementStart {
    let text = format!("SELECT abalance FROM pgbench_accounts WHERE aid = {};", 1 + seq * 7919 % 100_000);
    let mut up = vec![b'Q'];
    up.extend_from_slice(&(text.len() as u32 + 5).to_be_bytes());
    up.extend_from_slice(text.as_bytes());
    up.push(0);
    StatementStart {
        session,
        seq,
        started_us: audit::now_us(),
        text,
        kinds: "select".into(),
        tables: "public.pgbench_accounts".into(),
        decision: gatehouse::audit::Verdict::Allow,
        rule: Some("bench".into()),
        reason: None,
        redacted: 0,
        up_offset: Some(seq * 70),
        up,
        up_len: None,
        end: None,
    }
}

fn end(session: SessionId, seq: u64) -> StatementEnd {
    StatementEnd {
        session,
        seq,
        ended_us: audit::now_us(),
        rows: Some(1),
        duration_us: 40,
        error: None,
        masked: None,
        tags: Some("SELECT 1".into()),
        down_offset: Some(seq * 80),
        down: vec![b'D'; 80],
    }
}

/// Nanoseconds on CPU so far, from a `schedstat` file (0 if unreadable).
fn on_cpu_ns(schedstat: &std::path::Path) -> u64 {
    std::fs::read_to_string(schedstat)
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

/// Nanoseconds on CPU of this process's threads, or of those named `name`.
fn threads_cpu_ns(name: Option<&str>) -> u64 {
    std::fs::read_dir("/proc/self/task")
        .expect("tasks")
        .flatten()
        .filter(|t| {
            name.is_none_or(|n| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim_end() == n))
        })
        .map(|t| on_cpu_ns(&t.path().join("schedstat")))
        .sum()
}

/// One round: (writer µs per statement, the rest of the process µs per statement, statements/s).
fn round() -> (f64, f64, f64) {
    let (dir, audit, writer) = store::open("ingest", Mode::Strict, Duration::from_secs(10));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("bench-session")
        .enable_all()
        .build()
        .expect("runtime");
    let (w0, p0) = (threads_cpu_ns(Some("audit-writer")), threads_cpu_ns(None));
    let t0 = Instant::now();
    let (per, batch) = (per_session(), fixed_batch());
    rt.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..SESSIONS {
            let a = audit.clone();
            tasks.push(tokio::spawn(async move {
                let s = SessionId::new();
                if let Some(b) = batch {
                    let mut i = 0;
                    while i < per {
                        let k = (per - i).min(b);
                        let mut events = Vec::with_capacity(2 * k as usize);
                        for j in i..i + k {
                            events.push(start(s, j));
                            events.push(Event::StatementEnd(Box::new(end(s, j))));
                        }
                        a.commit(events).await.expect("statements");
                        i += k;
                    }
                    return;
                }
                for i in 0..per {
                    a.commit(vec![start(s, i)]).await.expect("statement");
                    while let Err(audit::AuditError::QueueFull) = a.statement_end(end(s, i)) {
                        tokio::task::yield_now().await;
                    }
                }
            }));
        }
        for t in tasks {
            t.await.expect("task");
        }
        audit.flush().await.expect("flush");
    });
    let secs = t0.elapsed().as_secs_f64();
    let (w1, p1) = (threads_cpu_ns(Some("audit-writer")), threads_cpu_ns(None));
    drop(audit);
    writer.stop();
    let _ = std::fs::remove_dir_all(&dir);
    let n = (SESSIONS * per) as f64;
    let writer_us = (w1 - w0) as f64 / 1e3 / n;
    let rest_us = (p1 - p0).saturating_sub(w1 - w0) as f64 / 1e3 / n;
    (writer_us, rest_us, n / secs)
}

/// The baseline: µs of CPU per statement to insert the same bytes, two rows
/// per statement, into a plain table (WAL, `synchronous = NORMAL`, as the
/// store), `batch` statements per transaction, on this thread.
fn plain_sqlite(batch: u64) -> f64 {
    let dir = std::env::temp_dir().join(format!("gh-bench-ingest-plain-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let mut conn = rusqlite::Connection::open(dir.join("plain.db")).expect("open");
    conn.pragma_update(None, "journal_mode", "WAL").expect("wal");
    conn.pragma_update(None, "synchronous", "NORMAL").expect("sync");
    conn.execute_batch("CREATE TABLE r (seq INTEGER PRIMARY KEY, body BLOB, data BLOB)").expect("table");
    let session = SessionId::new();
    // The bodies as the store gets them, made before the clock starts.
    let records: Vec<(String, Vec<u8>, String, Vec<u8>)> = (0..SESSIONS * per_session())
        .map(|i| {
            let (s, e) = (start_record(session, i), end(session, i));
            (serde_json::to_string(&s).expect("json"), s.up, serde_json::to_string(&e).expect("json"), e.down)
        })
        .collect();
    let t0 = on_cpu_ns(std::path::Path::new("/proc/thread-self/schedstat"));
    let mut seq = 0i64;
    for chunk in records.chunks(batch as usize) {
        let tx = conn.transaction().expect("tx");
        {
            let mut ins = tx.prepare_cached("INSERT INTO r (seq, body, data) VALUES (?1, ?2, ?3)").expect("prepare");
            for (sb, up, eb, down) in chunk {
                seq += 1;
                ins.execute(rusqlite::params![seq, sb, up]).expect("insert");
                seq += 1;
                ins.execute(rusqlite::params![seq, eb, down]).expect("insert");
            }
        }
        tx.commit().expect("commit");
    }
    let spent = on_cpu_ns(std::path::Path::new("/proc/thread-self/schedstat")) - t0;
    drop(conn);
    let _ = std::fs::remove_dir_all(&dir);
    spent as f64 / 1e3 / (SESSIONS * per_session()) as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let at = |i: usize| v.get(i).copied().unwrap_or(0.0);
    if n % 2 == 1 { at(n / 2) } else { (at((n / 2).saturating_sub(1)) + at(n / 2)) / 2.0 }
}

fn main() {
    let rounds: usize = std::env::var("GATEHOUSE_BENCH_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(5).max(1);
    let (mut w, mut r, mut t, mut p) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 1..=rounds {
        let (writer_us, rest_us, per_s) = round();
        // The baseline in transactions of the statements the writer took per
        // commit on average (a 2-ms group commit at this rate).
        let batch = ((per_s * 0.002).round() as u64).max(1);
        let plain_us = plain_sqlite(batch);
        eprintln!(
            "bench ingest: round {i}/{rounds}: writer {writer_us:.2} µs/statement, sessions+journal {rest_us:.2} µs/statement, {per_s:.0} statements/s; plain SQLite {plain_us:.2} µs/statement ({batch} per transaction)"
        );
        w.push(writer_us);
        r.push(rest_us);
        t.push(per_s);
        p.push(plain_us);
    }
    let (writer, plain) = (median(w), median(p));
    println!(
        "ingest {SESSIONS} sessions x {} statements (start + end, bytes folded): writer {writer:.2} µs/statement, sessions+journal {:.2} µs/statement, {:.0} statements/s; plain SQLite inserts of the same bytes {plain:.2} µs/statement (medians of {rounds})",
        per_session(),
        median(r),
        median(t)
    );
    println!("ratio ingest_cpu writer/plain_sqlite = {:.2}", writer / plain.max(1e-9));
}
