//! The connection's queue to one session channel.
//!
//! The client's commands reach a channel through its [`Inbox`]: a queue the
//! connection's loop never waits on while the channel is held for approval
//! (russh widens the client's SSH window as data arrives, whatever the
//! channel does with it, so the loop waiting on one channel would stall
//! every channel of the connection). What a held channel is sent is kept,
//! in order, up to [`HELD_BUFFER`] bytes, and forwarded once approved; past
//! that the held request is refused (withdrawn) and the channel closed. A
//! running channel whose queue passes [`CHANNEL_BUFFER`] makes the loop wait
//! for it to drain (TCP back-pressure for the connection), except while the
//! channel is itself waiting to write to the client: that write needs the
//! loop (the client's window adjustments come through it), so the loop goes
//! on, up to [`HELD_BUFFER`], beyond which the channel is closed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use bytes::Bytes;
use russh::{Pty, Sig};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use super::channel::Start;

/// What the client asked of a channel, in the order it asked.
pub enum Cmd {
    Pty {
        term: String,
        cols: u32,
        rows: u32,
        pw: u32,
        ph: u32,
        modes: Vec<(Pty, u32)>,
    },
    Env(String, String),
    /// Start it; with a request to wait for when the start is held, and
    /// whether the user may have a terminal (a pty) for it.
    Start(Start, Option<crate::approval::Waiting>, bool),
    Data(Bytes),
    Eof,
    Close,
    Resize {
        cols: u32,
        rows: u32,
        pw: u32,
        ph: u32,
    },
    Signal(Sig),
    /// A refused start: said on stderr, then exit status 126.
    Refuse(String),
}

impl Cmd {
    /// What the command weighs in a channel's queue: its bytes, or a flat
    /// cost for a request (so a flood of small requests is bounded too).
    pub fn cost(&self) -> usize {
        match self {
            Self::Data(d) => d.len().max(64),
            _ => 256,
        }
    }
}

/// Queued bytes past which the connection waits for a running channel.
pub const CHANNEL_BUFFER: usize = 4 << 20;
/// Queued bytes a held channel (or one that cannot write to its client) may
/// take before it is refused and closed.
pub const HELD_BUFFER: usize = 16 << 20;
/// Queued bytes all the channels of one connection may hold while they do
/// not drain (held, or waiting on the client): a channel whose send would
/// pass it is refused and closed like one past [`HELD_BUFFER`], so many held
/// channels on one connection cannot take more than this between them.
pub const CONNECTION_BUFFER: usize = 32 << 20;

/// What the connection and one channel's task share about its queue.
#[derive(Debug)]
pub struct Queue {
    /// Bytes queued and not yet taken by the channel (see [`Cmd::cost`]).
    pub(super) bytes: AtomicUsize,
    /// Signalled when the channel takes a command or starts waiting on the client.
    pub(super) drained: Notify,
    /// The channel's start is held for approval.
    pub(super) held: AtomicBool,
    /// The channel is waiting to write to the client.
    pub(super) writing: AtomicBool,
    /// Cancelled when the channel is abandoned: too much queued, or a held
    /// one closed by the client.
    pub(super) abandon: CancellationToken,
    /// Why it was abandoned, for the client.
    pub(super) overflowed: AtomicBool,
    /// Bytes queued to every channel of the connection (shared by its queues).
    pub(super) conn: Arc<AtomicUsize>,
}

impl Queue {
    /// The channel took a command off its queue.
    pub(super) fn took(&self, cost: usize) {
        self.bytes.fetch_sub(cost, Ordering::SeqCst);
        self.conn.fetch_sub(cost, Ordering::SeqCst);
        self.drained.notify_one();
    }
}

impl Drop for Queue {
    /// What was queued and never taken no longer counts for the connection.
    fn drop(&mut self) {
        self.conn.fetch_sub(*self.bytes.get_mut(), Ordering::SeqCst);
    }
}

/// The connection's end of one channel's queue.
pub struct Inbox {
    tx: mpsc::UnboundedSender<Cmd>,
    q: Arc<Queue>,
}

/// What [`Inbox::send`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Sent {
    Queued,
    /// The channel is gone (or was just abandoned): forget it.
    Gone,
}

impl Inbox {
    /// A channel's queue, counted in its connection's total `conn`.
    pub fn channel(conn: Arc<AtomicUsize>) -> (Self, mpsc::UnboundedReceiver<Cmd>, Arc<Queue>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let q = Arc::new(Queue {
            bytes: AtomicUsize::new(0),
            drained: Notify::new(),
            held: AtomicBool::new(false),
            writing: AtomicBool::new(false),
            abandon: CancellationToken::new(),
            overflowed: AtomicBool::new(false),
            conn,
        });
        (Self { tx, q: q.clone() }, rx, q)
    }

    /// Marks the channel held before its start is queued, so no data sent
    /// meanwhile ever makes the connection wait.
    pub fn hold(&self) {
        self.q.held.store(true, Ordering::SeqCst);
    }

    /// The client closed the channel: a held start waits no longer.
    pub fn closed(&self) {
        if self.q.held.load(Ordering::SeqCst) {
            self.q.abandon.cancel();
        }
    }

    /// Queues `cmd`; waits (holding up the connection) only for a running
    /// channel over [`CHANNEL_BUFFER`] that is not itself waiting on the client.
    pub async fn send(&self, cmd: Cmd) -> Sent {
        let cost = cmd.cost();
        loop {
            // Registered before the checks, so a wake-up between them is not lost.
            let drained = self.q.drained.notified();
            if self.tx.is_closed() {
                return Sent::Gone;
            }
            let queued = self.q.bytes.load(Ordering::SeqCst);
            let held = self.q.held.load(Ordering::SeqCst);
            if held || self.q.writing.load(Ordering::SeqCst) {
                // Not draining: bounded by its own limit and the connection's, never waited on.
                if queued + cost <= HELD_BUFFER && self.q.conn.load(Ordering::SeqCst) + cost <= CONNECTION_BUFFER {
                    break;
                }
                self.q.overflowed.store(true, Ordering::SeqCst);
                self.q.abandon.cancel();
                return Sent::Gone;
            }
            if queued + cost <= CHANNEL_BUFFER {
                break;
            }
            drained.await;
        }
        self.q.bytes.fetch_add(cost, Ordering::SeqCst);
        self.q.conn.fetch_add(cost, Ordering::SeqCst);
        if self.tx.send(cmd).is_err() { Sent::Gone } else { Sent::Queued }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize) -> Cmd {
        Cmd::Data(Bytes::from(vec![0u8; n]))
    }

    #[tokio::test]
    async fn a_held_channel_never_holds_up_the_connection() {
        let (inbox, mut rx, q) = Inbox::channel(Arc::default());
        inbox.hold();
        // Up to HELD_BUFFER queued at once, nobody taking: no send waits.
        let chunk = 1 << 20;
        for _ in 0..HELD_BUFFER / chunk {
            let sent = tokio::time::timeout(std::time::Duration::from_secs(1), inbox.send(data(chunk))).await;
            assert_eq!(sent.expect("a send to a held channel waited"), Sent::Queued);
        }
        assert!(!q.abandon.is_cancelled());
        // One more: the held request is abandoned, the channel forgotten.
        assert_eq!(inbox.send(data(chunk)).await, Sent::Gone);
        assert!(q.abandon.is_cancelled() && q.overflowed.load(Ordering::SeqCst));
        // What was queued is all there, in order.
        let mut n = 0;
        while let Ok(Cmd::Data(d)) = rx.try_recv() {
            n += d.len();
        }
        assert_eq!(n, HELD_BUFFER);
    }

    #[tokio::test]
    async fn a_running_channel_over_its_buffer_makes_the_connection_wait() {
        let (inbox, mut rx, q) = Inbox::channel(Arc::default());
        let chunk = 1 << 20;
        for _ in 0..CHANNEL_BUFFER / chunk {
            assert_eq!(inbox.send(data(chunk)).await, Sent::Queued);
        }
        let waiting = tokio::time::timeout(std::time::Duration::from_millis(200), inbox.send(data(chunk))).await;
        assert!(waiting.is_err(), "a send past the buffer did not wait");
        // The channel takes one: the send goes through.
        let taken = rx.recv().await.expect("queued");
        q.took(taken.cost());
        assert_eq!(inbox.send(data(chunk)).await, Sent::Queued);
        // While the channel waits to write to its client, the connection must not wait on it.
        q.writing.store(true, Ordering::SeqCst);
        let sent = tokio::time::timeout(std::time::Duration::from_secs(1), inbox.send(data(chunk))).await;
        assert_eq!(sent.expect("waited on a channel that waits on the client"), Sent::Queued);
        // A closed channel is gone.
        drop(rx);
        assert_eq!(inbox.send(data(1)).await, Sent::Gone);
    }

    #[tokio::test]
    async fn held_channels_of_one_connection_share_one_bound() {
        let conn = Arc::new(AtomicUsize::new(0));
        let chunk = 1 << 20;
        let mut kept = Vec::new();
        // Two held channels fill the connection's bound between them (each under its own).
        for _ in 0..2 {
            let (inbox, rx, q) = Inbox::channel(conn.clone());
            inbox.hold();
            for _ in 0..CONNECTION_BUFFER / 2 / chunk {
                assert_eq!(inbox.send(data(chunk)).await, Sent::Queued);
            }
            kept.push((inbox, rx, q));
        }
        assert_eq!(conn.load(Ordering::SeqCst), CONNECTION_BUFFER);
        // A third held channel cannot queue past it: refused, closed.
        let (inbox, _rx, q) = Inbox::channel(conn.clone());
        inbox.hold();
        assert_eq!(inbox.send(data(chunk)).await, Sent::Gone);
        assert!(q.overflowed.load(Ordering::SeqCst));
        // Channels that go away give their share back.
        drop((inbox, _rx, q));
        kept.clear();
        assert_eq!(conn.load(Ordering::SeqCst), 0);
    }
}
