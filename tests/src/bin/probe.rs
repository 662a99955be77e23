//! A small TCP client for the end-to-end tests, run inside the test cgroup
//! as an unprivileged user. Prints one JSON object on stdout.
//!
//! probe connect ADDR               connect, report peer and local address
//! probe echo ADDR BYTES            send BYTES pseudo-random bytes, expect them echoed back
//! probe hold ADDR SECS             connect, then ping every 100 ms for SECS, report when cut

#![expect(clippy::indexing_slicing, reason = "indexing a serde_json object by key inserts; it cannot panic here")]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::json;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let out = match args.get(1).map(String::as_str) {
        Some("connect") => connect(arg_addr(&args)).map(|(s, mut v)| {
            drop(s);
            v["ok"] = true.into();
            v
        }),
        Some("echo") => echo(arg_addr(&args), args.get(3).and_then(|n| n.parse().ok()).unwrap_or(1024)),
        Some("hold") => hold(arg_addr(&args), args.get(3).and_then(|n| n.parse().ok()).unwrap_or(1)),
        _ => {
            eprintln!("usage: probe connect|echo|hold ADDR [N]");
            std::process::exit(2);
        }
    };
    let v = out.unwrap_or_else(|e| e);
    println!("{v}");
}

fn arg_addr(args: &[String]) -> SocketAddr {
    match args.get(2).and_then(|a| a.parse().ok()) {
        Some(a) => a,
        None => {
            eprintln!("probe: ADDR must be ip:port");
            std::process::exit(2);
        }
    }
}

fn io_err(stage: &str, e: &std::io::Error) -> serde_json::Value {
    json!({ "ok": false, "stage": stage, "error": e.to_string(), "errno": e.raw_os_error() })
}

fn connect(addr: SocketAddr) -> Result<(TcpStream, serde_json::Value), serde_json::Value> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| io_err("connect", &e))?;
    let peer = s.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let local = s.local_addr().map(|a| a.to_string()).unwrap_or_default();
    Ok((s, json!({ "peer": peer, "local": local })))
}

/// Deterministic bytes covering every value, so corruption or reordering shows.
fn pattern(n: usize) -> Vec<u8> {
    let mut x: u32 = 0x1234_5678;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x.to_le_bytes()[0]
        })
        .collect()
}

fn echo(addr: SocketAddr, n: usize) -> Result<serde_json::Value, serde_json::Value> {
    let (s, mut v) = connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| io_err("setup", &e))?;
    let data = pattern(n);
    let mut w = s.try_clone().map_err(|e| io_err("setup", &e))?;
    let to_send = data.clone();
    let writer = std::thread::spawn(move || {
        let r = w.write_all(&to_send);
        let _ = w.shutdown(std::net::Shutdown::Write);
        r
    });
    let mut got = Vec::with_capacity(n);
    let read = (&s).read_to_end(&mut got);
    let wrote = writer.join().unwrap_or_else(|_| Err(std::io::Error::other("writer panicked")));
    v["sent"] = n.into();
    v["received"] = got.len().into();
    v["identical"] = (got == data).into();
    v["ok"] = (read.is_ok() && wrote.is_ok() && got == data).into();
    if let Err(e) = read {
        v["error"] = e.to_string().into();
        v["errno"] = e.raw_os_error().into();
    } else if let Err(e) = wrote {
        v["error"] = e.to_string().into();
        v["errno"] = e.raw_os_error().into();
    }
    Ok(v)
}

fn hold(addr: SocketAddr, secs: u64) -> Result<serde_json::Value, serde_json::Value> {
    let (mut s, mut v) = connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| io_err("setup", &e))?;
    let start = Instant::now();
    let mut pings = 0u64;
    let mut buf = [0u8; 4];
    while start.elapsed() < Duration::from_secs(secs) {
        let alive = s.write_all(b"ping").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"ping";
        if !alive {
            v["ok"] = false.into();
            v["cut_after_ms"] = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX).into();
            v["pings"] = pings.into();
            return Ok(v);
        }
        pings += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    v["ok"] = true.into();
    v["pings"] = pings.into();
    Ok(v)
}
