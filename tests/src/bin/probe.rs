//! A small TCP client for the end-to-end tests, run inside the test cgroup
//! as an unprivileged user. Prints one JSON object on stdout (per line, for
//! the modes that report progress).
//!
//! probe connect ADDR [--bind SRC]      connect, report peer and local address
//! probe echo ADDR BYTES [--bind SRC] [--fastopen] [--mptcp]
//!                                      send BYTES pseudo-random bytes, expect them echoed back;
//!                                      --fastopen: no connect(2), the first byte goes with the SYN
//!                                      (sendto with MSG_FASTOPEN, TCP Fast Open);
//!                                      --mptcp: a Multipath TCP socket (IPPROTO_MPTCP)
//! probe hold ADDR SECS                 connect, then ping every 100 ms for SECS, report when cut
//! probe park ADDR                      connect, print local/peer, wait for stdin to close, reset (RST)
//! probe bindwait SRC ADDR BYTES        bind SRC, print local and socket cookie, wait for a line on
//!                                      stdin, then connect ADDR and echo BYTES
//! probe serve ADDR                     echo server (dual-stack on [::]), prints its address
//! probe dial ADDR N                    connect and close N times; count what connected
//! probe ctlflood PATH N SECS           open N Unix connections to PATH, hold them SECS
//! probe slow ADDR N SECS               N connections that each send one byte, then wait up to SECS
//!                                      for the peer to close them; report how many it closed and when

#![expect(clippy::indexing_slicing, reason = "indexing a serde_json object by key inserts; it cannot panic here")]

use std::io::{BufRead, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use serde_json::json;
use socket2::{Domain, Socket, Type};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n = |i: usize, d: u64| args.get(i).and_then(|n| n.parse().ok()).unwrap_or(d);
    let bind = args.iter().position(|a| a == "--bind").and_then(|i| args.get(i + 1)).and_then(|a| a.parse().ok());
    if args.iter().any(|a| a == "--mptcp") {
        MPTCP.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    let out = match args.get(1).map(String::as_str) {
        Some("connect") => connect(arg_addr(&args, 2), bind).map(|(s, mut v)| {
            drop(s);
            v["ok"] = true.into();
            v
        }),
        Some("echo") if args.iter().any(|a| a == "--fastopen") => {
            fastopen_echo(arg_addr(&args, 2), usize::try_from(n(3, 1024)).unwrap_or(1024))
        }
        Some("echo") => echo(arg_addr(&args, 2), usize::try_from(n(3, 1024)).unwrap_or(1024), bind),
        Some("hold") => hold(arg_addr(&args, 2), n(3, 1)),
        Some("park") => park(arg_addr(&args, 2)),
        Some("bindwait") => bindwait(arg_addr(&args, 2), arg_addr(&args, 3), usize::try_from(n(4, 64)).unwrap_or(64)),
        Some("serve") => serve(arg_addr(&args, 2)),
        Some("dial") => Ok(dial(arg_addr(&args, 2), n(3, 1))),
        Some("ctlflood") => Ok(ctlflood(args.get(2).map(String::as_str).unwrap_or(""), n(3, 1), n(4, 1))),
        Some("slow") => Ok(slow(arg_addr(&args, 2), n(3, 1), n(4, 30))),
        _ => {
            eprintln!("usage: probe connect|echo|hold|park|bindwait|serve|dial|ctlflood|slow …");
            std::process::exit(2);
        }
    };
    let v = out.unwrap_or_else(|e| e);
    println!("{v}");
}

fn arg_addr(args: &[String], i: usize) -> SocketAddr {
    match args.get(i).and_then(|a| a.parse().ok()) {
        Some(a) => a,
        None => {
            eprintln!("probe: argument {i} must be ip:port");
            std::process::exit(2);
        }
    }
}

fn io_err(stage: &str, e: &std::io::Error) -> serde_json::Value {
    json!({ "ok": false, "stage": stage, "error": e.to_string(), "errno": e.raw_os_error() })
}

/// The client opens many sockets: lift the soft descriptor limit to the hard one.
fn raise_nofile() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// `--mptcp`: stream sockets are Multipath TCP ones.
static MPTCP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// IPPROTO_MPTCP.
const IPPROTO_MPTCP: i32 = 262;

/// A socket for `addr`'s family, bound to `bind` first if given.
fn socket_for(addr: SocketAddr, bind: Option<SocketAddr>) -> std::io::Result<Socket> {
    let proto = MPTCP.load(std::sync::atomic::Ordering::Relaxed).then_some(socket2::Protocol::from(IPPROTO_MPTCP));
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, proto)?;
    if let Some(b) = bind {
        s.set_reuse_address(true)?;
        s.bind(&b.into())?;
    }
    Ok(s)
}

fn connect(addr: SocketAddr, bind: Option<SocketAddr>) -> Result<(TcpStream, serde_json::Value), serde_json::Value> {
    let s = socket_for(addr, bind).map_err(|e| io_err("bind", &e))?;
    s.connect_timeout(&addr.into(), Duration::from_secs(5)).map_err(|e| io_err("connect", &e))?;
    let s = TcpStream::from(s);
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

fn echo(addr: SocketAddr, n: usize, bind: Option<SocketAddr>) -> Result<serde_json::Value, serde_json::Value> {
    let (s, v) = connect(addr, bind)?;
    echo_on(s, v, n)
}

/// Connects without connect(2): `sendto(MSG_FASTOPEN)` carries the first
/// byte in the SYN (TCP Fast Open, the kernel's other way to start a
/// connection), then echoes the rest as [`echo`] does.
fn fastopen_echo(addr: SocketAddr, n: usize) -> Result<serde_json::Value, serde_json::Value> {
    let s = socket_for(addr, None).map_err(|e| io_err("socket", &e))?;
    let data = pattern(n.max(1));
    let first = data.get(..1).unwrap_or_default();
    s.send_to_with_flags(first, &addr.into(), libc::MSG_FASTOPEN).map_err(|e| io_err("connect", &e))?;
    let s = TcpStream::from(s);
    let peer = s.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let local = s.local_addr().map(|a| a.to_string()).unwrap_or_default();
    echo_from(s, json!({ "peer": peer, "local": local, "fastopen": true }), n, 1)
}

fn echo_on(s: TcpStream, v: serde_json::Value, n: usize) -> Result<serde_json::Value, serde_json::Value> {
    echo_from(s, v, n, 0)
}

/// Echoes `n` pattern bytes, of which the first `sent` are already on their way.
fn echo_from(
    s: TcpStream,
    mut v: serde_json::Value,
    n: usize,
    sent: usize,
) -> Result<serde_json::Value, serde_json::Value> {
    s.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| io_err("setup", &e))?;
    let data = pattern(n);
    let mut w = s.try_clone().map_err(|e| io_err("setup", &e))?;
    let to_send = data.get(sent..).unwrap_or_default().to_vec();
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
    let (mut s, mut v) = connect(addr, None)?;
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

/// Connects and parks the connection until stdin closes, then resets it, so
/// the local port is free at once (no TIME_WAIT).
fn park(addr: SocketAddr) -> Result<serde_json::Value, serde_json::Value> {
    let (s, mut v) = connect(addr, None)?;
    v["ok"] = true.into();
    println!("{v}");
    let _ = std::io::stdout().flush();
    let mut sink = String::new();
    let _ = std::io::stdin().read_to_string(&mut sink);
    let s = Socket::from(s);
    let _ = s.set_linger(Some(Duration::ZERO));
    drop(s);
    Ok(json!({ "ok": true, "closed": true }))
}

/// Binds `src`, tells its local address and socket cookie, waits for a line
/// on stdin, then connects to `addr` and echoes.
fn bindwait(src: SocketAddr, addr: SocketAddr, n: usize) -> Result<serde_json::Value, serde_json::Value> {
    let s = socket_for(addr, Some(src)).map_err(|e| io_err("bind", &e))?;
    let local = s.local_addr().ok().and_then(|a| a.as_socket()).map(|a| a.to_string()).unwrap_or_default();
    let cookie = s.cookie().map_err(|e| io_err("cookie", &e))?;
    println!("{}", json!({ "local": local, "cookie": cookie }));
    let _ = std::io::stdout().flush();
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
    s.connect_timeout(&addr.into(), Duration::from_secs(5)).map_err(|e| io_err("connect", &e))?;
    echo_on(TcpStream::from(s), json!({ "local": local, "cookie": cookie }), n)
}

fn serve(addr: SocketAddr) -> Result<serde_json::Value, serde_json::Value> {
    let l = TcpListener::bind(addr).map_err(|e| io_err("bind", &e))?;
    let local = l.local_addr().map(|a| a.to_string()).unwrap_or_default();
    println!("{}", json!({ "listening": local }));
    let _ = std::io::stdout().flush();
    for s in l.incoming().flatten() {
        std::thread::spawn(move || {
            let mut s = s;
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 || s.write_all(buf.get(..n).unwrap_or_default()).is_err() {
                    break;
                }
            }
            let _ = s.shutdown(std::net::Shutdown::Write);
        });
    }
    Ok(json!({ "ok": true }))
}

fn dial(addr: SocketAddr, n: u64) -> serde_json::Value {
    raise_nofile();
    let (mut connected, mut failed) = (0u64, 0u64);
    for _ in 0..n {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(s) => {
                connected += 1;
                // Wait for the proxy's answer (it closes): one dial at a time.
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let mut b = [0u8; 1];
                let _ = (&s).read(&mut b);
            }
            Err(_) => failed += 1,
        }
    }
    json!({ "ok": true, "connected": connected, "failed": failed })
}

fn ctlflood(path: &str, n: u64, secs: u64) -> serde_json::Value {
    raise_nofile();
    let mut held = Vec::new();
    let mut failed = 0u64;
    for _ in 0..n {
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(s) => held.push(s),
            Err(_) => failed += 1,
        }
    }
    println!("{}", json!({ "connected": held.len(), "failed": failed }));
    let _ = std::io::stdout().flush();
    std::thread::sleep(Duration::from_secs(secs));
    // How many the agent closed meanwhile (read returns 0 or an error at once).
    let closed = held
        .iter()
        .filter(|s| {
            let _ = s.set_nonblocking(true);
            let mut b = [0u8; 256];
            !matches!((&**s).read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        })
        .count();
    json!({ "ok": true, "connected": held.len(), "failed": failed, "closed_by_agent": closed })
}

fn slow(addr: SocketAddr, n: u64, secs: u64) -> serde_json::Value {
    raise_nofile();
    let start = Instant::now();
    let mut conns = Vec::new();
    for _ in 0..n {
        if let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
            // One byte of a startup packet's length, then nothing.
            let _ = s.write_all(&[0]);
            let _ = s.set_nonblocking(true);
            conns.push(s);
        }
    }
    let opened = conns.len();
    let mut closed_at = Vec::new();
    while start.elapsed() < Duration::from_secs(secs) && !conns.is_empty() {
        conns.retain(|s| {
            let mut b = [0u8; 512];
            match (&*s).read(&mut b) {
                Ok(0) => {
                    closed_at.push(start.elapsed().as_millis());
                    false
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => true,
                // Bytes (an error message) or a reset: it ends here either way.
                Ok(_) => true,
                Err(_) => {
                    closed_at.push(start.elapsed().as_millis());
                    false
                }
            }
        });
        std::thread::sleep(Duration::from_millis(200));
    }
    let first = closed_at.iter().min().copied().unwrap_or(0);
    let last = closed_at.iter().max().copied().unwrap_or(0);
    json!({ "ok": true, "opened": opened, "closed": closed_at.len(), "still_open": conns.len(),
            "first_closed_ms": u64::try_from(first).unwrap_or(u64::MAX), "last_closed_ms": u64::try_from(last).unwrap_or(u64::MAX) })
}
