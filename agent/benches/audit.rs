//! Audit store throughput (`cargo xtask bench audit`): records per second
//! sustained with the hash chain and group commit, from concurrent sessions,
//! strict (each waits for its commit) and queued. A measurement, not a test.
#![expect(clippy::expect_used, clippy::cast_possible_truncation, reason = "a benchmark harness over its own numbers")]

use std::time::{Duration, Instant};

use gatehouse::audit::{self, ChunkHeader, Direction, Event, Mode, StatementStart};
use gatehouse::types::SessionId;

#[path = "common/store.rs"]
mod store;

fn statement(session: SessionId, seq: u64) -> Event {
    Event::Statement(Box::new(StatementStart {
        session,
        seq,
        started_us: audit::now_us(),
        text: format!("SELECT abalance FROM pgbench_accounts WHERE aid = {seq}"),
        kinds: "select".into(),
        tables: "pgbench_accounts".into(),
        decision: gatehouse::audit::Verdict::Allow,
        rule: Some("bench".into()),
        reason: None,
        redacted: 0,
        up_offset: None,
        up: Vec::new(),
        up_len: None,
        end: None,
    }))
}

/// Records in the central store (`None` when it cannot be asked).
async fn central_count(url: &str) -> Option<i64> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.ok()?;
    tokio::spawn(conn);
    client.query_one("SELECT count(*) FROM gatehouse_events WHERE host = 'bench'", &[]).await.ok().map(|r| r.get(0))
}

/// Strict records/s as in [`run`], with `ship` a central PostgreSQL the
/// records are shipped to while they are written (`[agent.ship]`), and the
/// seconds the shipper needed after the writers finished to catch up.
fn run_shipping(sessions: usize, per_session: u64, url: &str) -> (f64, f64) {
    run_with(Mode::Strict, sessions, per_session, Some(url), false)
}

fn run(mode: Mode, sessions: usize, per_session: u64) -> f64 {
    run_with(mode, sessions, per_session, None, false).0
}

/// Strict, the way the data path records a statement: acknowledged once it
/// is in the journal (`Audit::commit`), chained into SQLite afterwards.
fn run_journal(sessions: usize, per_session: u64) -> f64 {
    run_with(Mode::Strict, sessions, per_session, None, true).0
}

fn run_with(mode: Mode, sessions: usize, per_session: u64, ship: Option<&str>, journal: bool) -> (f64, f64) {
    let (dir, audit, writer) = store::open(&format!("audit-{mode:?}-{journal}"), mode, Duration::from_secs(10));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let stop = tokio_util::sync::CancellationToken::new();
    let shipper = ship.map(|url| {
        let ship = audit::ship::Ship {
            url: url.to_owned(),
            host: "bench".into(),
            batch: audit::ship::DEFAULT_BATCH,
            tls: audit::ship::ShipTls::Off,
        };
        rt.spawn(audit::ship::run(dir.join("audit.db"), ship, audit.public_key_hex(), stop.clone()))
    });
    let start = Instant::now();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..sessions {
            let a = audit.clone();
            tasks.push(tokio::spawn(async move {
                let s = SessionId::new();
                for i in 0..per_session {
                    // A statement (waited for in strict mode) and its result chunk.
                    loop {
                        let r = if journal {
                            a.commit(vec![statement(s, i)]).await
                        } else {
                            a.record_strict(statement(s, i)).wait().await
                        };
                        match r {
                            Err(audit::AuditError::QueueFull) => tokio::task::yield_now().await,
                            r => {
                                r.expect("record");
                                break;
                            }
                        }
                    }
                    let chunk = Event::Chunk {
                        session: s,
                        header: ChunkHeader { dir: Direction::Down, offset: i * 200 },
                        data: vec![b'x'; 200],
                    };
                    while let Err(audit::AuditError::QueueFull) = a.record(chunk.clone()) {
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
    let secs = start.elapsed().as_secs_f64();
    let total = sessions as f64 * per_session as f64 * 2.0;
    // How long the shipper needs to catch up once the writers are done.
    let catch_up = match (ship, shipper) {
        (Some(url), Some(task)) => rt.block_on(async {
            let done = Instant::now();
            let db = dir.join("audit.db");
            loop {
                let local: i64 = rusqlite::Connection::open(&db)
                    .and_then(|c| c.query_row("SELECT count(*) FROM events", [], |r| r.get(0)))
                    .unwrap_or(i64::MAX);
                if local as f64 >= total && central_count(url).await.unwrap_or(0) >= local {
                    break;
                }
                if done.elapsed() > Duration::from_secs(300) {
                    eprintln!("bench audit: the shipper did not catch up in 300 s");
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            stop.cancel();
            let _ = task.await;
            done.elapsed().as_secs_f64()
        }),
        _ => 0.0,
    };
    drop(audit);
    writer.stop();
    let _ = std::fs::remove_dir_all(&dir);
    (total / secs, catch_up)
}

/// One session, strict: how long a statement waits for its commit.
fn latency(journal: bool) -> (f64, f64) {
    let (dir, audit, writer) = store::open(&format!("audit-lat-{journal}"), Mode::Strict, Duration::from_secs(10));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let mut lat: Vec<f64> = rt.block_on(async {
        let s = SessionId::new();
        let mut lat = Vec::new();
        for i in 0..5_000u64 {
            let t = Instant::now();
            if journal {
                audit.commit(vec![statement(s, i)]).await.expect("record");
            } else {
                audit.record_strict(statement(s, i)).wait().await.expect("record");
            }
            lat.push(t.elapsed().as_secs_f64() * 1e6);
            let chunk = Event::Chunk {
                session: s,
                header: ChunkHeader { dir: Direction::Down, offset: i * 200 },
                data: vec![b'x'; 200],
            };
            let _ = audit.record(chunk);
        }
        lat
    });
    drop(audit);
    writer.stop();
    let _ = std::fs::remove_dir_all(&dir);
    lat.sort_by(f64::total_cmp);
    let p = |q: f64| lat.get((lat.len() as f64 * q) as usize).copied().unwrap_or(0.0);
    (p(0.5), p(0.99))
}

/// Writes a store of about `mb` MiB (1 MiB chunks and a statement each),
/// then runs `gatehouse verify` on it and returns its peak RSS in KiB.
fn verify_rss(mb: u64) -> (u64, f64) {
    let (dir, audit, writer) = store::open(&format!("verify-{mb}"), Mode::Strict, Duration::from_secs(1));
    let db = dir.join("audit.db");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let s = SessionId::new();
        let mut data = vec![0u8; 1 << 20];
        for i in 0..mb {
            if mb >= 512 && i % (mb / 10) == 0 && i > 0 {
                eprintln!("  {i}/{mb} MiB written");
            }
            for (j, b) in data.iter_mut().enumerate() {
                *b = (i as usize).wrapping_mul(31).wrapping_add(j) as u8;
            }
            audit.record_strict(statement(s, i)).wait().await.expect("record");
            let chunk = Event::Chunk {
                session: s,
                header: ChunkHeader { dir: Direction::Down, offset: i << 20 },
                data: data.clone(),
            };
            audit.record_strict(chunk).wait().await.expect("record");
        }
    });
    let public = audit.public_key_hex();
    drop(audit);
    writer.stop();
    let start = Instant::now();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(["verify", db.to_str().expect("path"), "--pubkey", &public])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("gatehouse verify");
    let mut peak = 0u64;
    loop {
        if let Ok(status) = std::fs::read_to_string(format!("/proc/{}/status", child.id())) {
            let hwm = status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            peak = peak.max(hwm);
        }
        if let Some(st) = child.try_wait().expect("wait") {
            assert!(st.success(), "verify failed on the bench store");
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let secs = start.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&dir);
    (peak, secs)
}

fn main() {
    if std::env::args().any(|a| a == "verify") || std::env::var_os("GATEHOUSE_BENCH_VERIFY").is_some() {
        let big: u64 = std::env::var("GATEHOUSE_BENCH_VERIFY_MB").ok().and_then(|v| v.parse().ok()).unwrap_or(2048);
        eprintln!("bench verify: writing a 128 MiB store, then verifying it");
        let (small_rss, small_s) = verify_rss(128);
        eprintln!("bench verify: writing a {big} MiB store, then verifying it (progress every 10%)");
        let (big_rss, big_s) = verify_rss(big);
        println!(
            "gatehouse verify peak RSS: {:.1} MiB on a 128 MiB store ({small_s:.1} s), {:.1} MiB on a {big} MiB store ({big_s:.1} s)",
            small_rss as f64 / 1024.0,
            big_rss as f64 / 1024.0
        );
        println!("ratio verify_rss {big}mb/128mb = {:.2}", big_rss as f64 / small_rss.max(1) as f64);
        println!("ratio verify_rss {big}mb/goal64mb = {:.2}", big_rss as f64 / (64.0 * 1024.0));
        return;
    }
    eprintln!("bench audit: 1/5 strict commit latency, one session");
    let (p50, p99) = latency(false);
    println!("audit strict commit wait (SQLite), one session: p50 {p50:.0} µs, p99 {p99:.0} µs");
    let (p50, p99) = latency(true);
    println!("audit strict commit wait (journal, the data path), one session: p50 {p50:.0} µs, p99 {p99:.0} µs");
    eprintln!("bench audit: 2/5 strict records/s through the journal, 32 sessions x 5,000 records");
    let journaled = run_journal(32, 5_000);
    eprintln!("bench audit: 3/5 strict records/s (SQLite commit), 32 sessions x 5,000 records");
    let strict = run(Mode::Strict, 32, 5_000);
    eprintln!("bench audit: 4/5 best-effort records/s, 32 sessions x 5,000 records");
    let queued = run(Mode::BestEffort, 32, 5_000);
    println!(
        "audit records/s, 32 sessions, hash chain + group commit: strict {strict:>9.0}  strict via journal {journaled:>9.0}  best-effort {queued:>9.0}  (goal >= 50000)"
    );
    println!("ratio audit_records strict_journal/best-effort = {:.2}", journaled / queued);
    println!("ratio audit_records strict/best-effort = {:.2}", strict / queued);
    match std::env::var("GATEHOUSE_BENCH_SHIP_URL") {
        Ok(url) => {
            eprintln!("bench audit: 5/5 strict records/s while shipping to a central PostgreSQL");
            let (shipping, catch_up) = run_shipping(32, 5_000, &url);
            println!(
                "audit records/s, 32 sessions, strict, shipping to PostgreSQL: {shipping:>9.0} (shipper caught up {catch_up:.1} s after the writers)"
            );
            println!("ratio audit_records strict_shipping/strict = {:.2}", shipping / strict);
        }
        Err(_) => eprintln!(
            "bench audit: GATEHOUSE_BENCH_SHIP_URL unset (run as root through `cargo xtask bench audit`): no shipping run"
        ),
    }
    println!("ratio audit_records strict/goal50k = {:.2}", strict / 50_000.0);
    println!("ratio audit_records strict_journal/goal50k = {:.2}", journaled / 50_000.0);
}
