//! Opaque TCP relay: bytes both ways, byte-exact, with half-close passed on
//! and totals counted, until both sides are done or the session is cut.

use std::io;
use std::os::fd::AsFd;

use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_util::sync::CancellationToken;

use crate::audit::{Audit, Direction, StreamRecorder};

/// Per-direction buffer: none while the direction is idle (an idle session
/// holds no buffer at all), 4 KiB when bytes are waiting, doubling up to
/// `MAX_BUF` while reads fill it (bulk transfers).
const MIN_BUF: usize = 4 * 1024;
const MAX_BUF: usize = 128 * 1024;

/// How a relay ended and what it carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayOutcome {
    /// Client → backend bytes.
    pub up: u64,
    /// Backend → client bytes.
    pub down: u64,
    pub end: End,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// Both sides closed their end.
    Closed,
    ClientError(String),
    BackendError(String),
    /// The agent cut the session (shutdown grace expired, policy reload…).
    Cut(String),
}

impl End {
    pub fn describe(&self) -> String {
        match self {
            Self::Closed => "closed".into(),
            Self::ClientError(e) => format!("client error: {e}"),
            Self::BackendError(e) => format!("backend error: {e}"),
            Self::Cut(why) => format!("cut: {why}"),
        }
    }
}

#[derive(Clone, Copy)]
enum Side {
    Client,
    Backend,
}

/// Relays until both directions finish, one fails, or `cut` fires (with the
/// reason it gives). `record`, if given, records every chunk relayed.
pub async fn relay(
    client: TcpStream,
    backend: TcpStream,
    cut: CancellationToken,
    cut_reason: impl Fn() -> String,
    record: Option<(&StreamRecorder, &Audit)>,
) -> RelayOutcome {
    let (mut cr, mut cw) = client.into_split();
    let (mut br, mut bw) = backend.into_split();
    let (mut up, mut down) = (0u64, 0u64);
    let end = {
        let a = pipe(&mut cr, &mut bw, &mut up, Side::Client, Side::Backend, record, Direction::Up);
        let b = pipe(&mut br, &mut cw, &mut down, Side::Backend, Side::Client, record, Direction::Down);
        tokio::select! {
            r = async { tokio::try_join!(a, b) } => match r {
                Ok(_) => End::Closed,
                Err((Side::Client, e)) => End::ClientError(e.to_string()),
                Err((Side::Backend, e)) => End::BackendError(e.to_string()),
            },
            () = cut.cancelled() => End::Cut(cut_reason()),
        }
    };
    if let Some((rec, audit)) = record {
        rec.finish(audit);
    }
    RelayOutcome { up, down, end }
}

/// Copies `from` → `to` until EOF, then half-closes `to`. Once nothing
/// more of this direction is recorded (its budget is spent, or the session
/// records nothing), the rest is moved with `splice(2)` instead.
async fn pipe(
    from: &mut OwnedReadHalf,
    to: &mut OwnedWriteHalf,
    count: &mut u64,
    rside: Side,
    wside: Side,
    record: Option<(&StreamRecorder, &Audit)>,
    dir: Direction,
) -> Result<(), (Side, io::Error)> {
    let mut buf: Vec<u8> = Vec::new();
    let mut size = MIN_BUF;
    loop {
        if record.is_none_or(|(rec, _)| rec.spent(dir)) {
            drop(buf);
            return splice_rest(from, to, count, rside, wside).await;
        }
        if let Err(e) = from.readable().await {
            return Err((rside, e));
        }
        if buf.len() < size {
            buf.resize(size, 0);
        }
        let n = match from.try_read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // Nothing waiting: hold no large buffer while idle.
                if buf.len() > MIN_BUF {
                    buf = Vec::new();
                }
                continue;
            }
            Err(e) => return Err((rside, e)),
        };
        let full = n == buf.len();
        if n == 0 {
            // Half-close: the peer may still send the other way.
            let _ = to.shutdown().await;
            return Ok(());
        }
        let chunk = buf.get(..n).unwrap_or_default();
        if let Err(e) = to.write_all(chunk).await {
            return Err((wside, e));
        }
        if let Some((rec, audit)) = record {
            rec.chunk(audit, dir, *count, chunk, None).await;
        }
        *count += n as u64;
        if full && size < MAX_BUF {
            size *= 2;
        }
    }
}

/// Bytes moved per `splice(2)`, and the pipe's size asked for.
const PIPE_SIZE: usize = 1 << 20;

/// Moves `from` → `to` through a pipe in the kernel until EOF, then
/// half-closes `to`. The pipe is drained before the next read, so a read
/// never waits on it and a write never on the socket it reads.
async fn splice_rest(
    from: &OwnedReadHalf,
    to: &mut OwnedWriteHalf,
    count: &mut u64,
    rside: Side,
    wside: Side,
) -> Result<(), (Side, io::Error)> {
    let (pipe_r, pipe_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| (rside, io::Error::from(e)))?;
    // A larger pipe moves more per call; the default (64 KiB) also works.
    let _ = nix::fcntl::fcntl(&pipe_w, nix::fcntl::FcntlArg::F_SETPIPE_SZ(i32::try_from(PIPE_SIZE).unwrap_or(65_536)));
    let src: &TcpStream = from.as_ref();
    loop {
        let n = loop {
            src.readable().await.map_err(|e| (rside, e))?;
            match src.try_io(Interest::READABLE, || crate::sys::splice(src.as_fd(), pipe_w.as_fd(), PIPE_SIZE)) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err((rside, e)),
            }
        };
        if n == 0 {
            let _ = to.shutdown().await;
            return Ok(());
        }
        let mut left = n;
        while left > 0 {
            let dst: &TcpStream = to.as_ref();
            dst.writable().await.map_err(|e| (wside, e))?;
            match dst.try_io(Interest::WRITABLE, || crate::sys::splice(pipe_r.as_fd(), dst.as_fd(), left)) {
                Ok(m) => left = left.saturating_sub(m),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err((wside, e)),
            }
        }
        *count += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (a, b)
    }

    #[tokio::test]
    async fn relays_both_ways_with_half_close_and_counts() {
        let (mut client, proxy_client_side) = pair().await;
        let (proxy_backend_side, mut backend) = pair().await;
        let task =
            tokio::spawn(relay(proxy_client_side, proxy_backend_side, CancellationToken::new(), String::new, None));
        client.write_all(b"hello").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        backend.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hello");
        // The other direction still works after the client's half-close.
        backend.write_all(b"world!").await.unwrap();
        backend.shutdown().await.unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"world!");
        let out = task.await.unwrap();
        assert_eq!(out, RelayOutcome { up: 5, down: 6, end: End::Closed });
    }

    #[tokio::test]
    async fn cut_ends_the_relay_with_its_reason() {
        let (_client, a) = pair().await;
        let (b, _backend) = pair().await;
        let cut = CancellationToken::new();
        let task = tokio::spawn(relay(a, b, cut.clone(), || "shutdown".into(), None));
        cut.cancel();
        assert_eq!(task.await.unwrap().end, End::Cut("shutdown".into()));
    }
}
