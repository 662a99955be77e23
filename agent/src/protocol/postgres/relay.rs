//! The relay of a PostgreSQL session: two directions, each reading whole
//! messages, deciding, and writing what may pass; bytes that need no change
//! are forwarded as they arrived.
//!
//! Refusing a statement without desynchronising the client: the refused
//! Query or Parse (or Execute, FunctionCall) is replaced by a message the
//! server must reject, `gatehouse_refused_<nonce>`, a syntax error. The
//! server then does exactly what it does after any error (skips the rest of
//! an extended pipeline up to Sync, aborts an open transaction, answers
//! ReadyForQuery), and the backend direction rewrites that one ErrorResponse
//! into Gatehouse's own (SQLSTATE 42501, naming the rule). Refusals are
//! matched to their ErrorResponse by the nonce, so a real error that comes
//! first is never mistaken for one.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tracing::warn;

use self::backend::backend_to_client;
use self::client::{client_to_backend, statement_end};

mod backend;
mod client;

use super::Ctx;
use super::io::Stream;
use super::wire::{self, PgError, Severity, WireError};
use crate::audit::StreamRecorder;
use crate::mask::Counts;
use crate::protocol::tcp::{End, RelayOutcome};
use crate::sql::Statement;

/// A statement forwarded to the backend, waiting for its outcome.
#[derive(Debug)]
struct InFlight {
    seq: u64,
    /// Tables the statement touches (`schema.table` or `table`), for
    /// table-qualified masking rules.
    tables: Arc<[String]>,
    /// Which ReadyForQuery ends the exchange it belongs to.
    epoch: u64,
    started: Instant,
    masked: Counts,
}

impl InFlight {
    fn new(seq: u64, epoch: u64, s: &Statement) -> Self {
        let tables: Vec<String> = s.reads.iter().chain(&s.writes).map(ToString::to_string).collect();
        Self { seq, tables: tables.into(), epoch, started: Instant::now(), masked: Counts::default() }
    }
}

/// A refusal waiting for the server's error on its stand-in message.
#[derive(Debug)]
struct Refusal {
    epoch: u64,
    error: PgError,
}

/// State both directions share (short critical sections, never across I/O).
#[derive(Debug, Default)]
struct Shared {
    inflight: VecDeque<InFlight>,
    refusals: VecDeque<Refusal>,
    /// ReadyForQuery messages received from the backend so far.
    epochs_done: u64,
    /// `standard_conforming_strings` as the server reports it.
    scs: bool,
}

fn lock(m: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Debug)]
enum Fail {
    /// A record could not be committed (strict mode): the session ends.
    Audit(String),
    /// The client broke the protocol: FATAL to it, session closed.
    Client(PgError),
    ClientIo(std::io::Error),
    Backend(String),
}

impl From<WireError> for Fail {
    fn from(e: WireError) -> Self {
        Fail::Client(PgError::new(Severity::Fatal, "08P01", format!("protocol violation: {e}")))
    }
}

/// Relays until either side ends. `client_rest`/`backend_rest`: bytes each
/// side sent before the relay started (after startup, after login).
pub(super) async fn run(
    ctx: &Ctx,
    client: Stream,
    client_rest: BytesMut,
    backend: Stream,
    backend_rest: BytesMut,
) -> RelayOutcome {
    let (mut cr, mut cw) = tokio::io::split(client);
    let (mut br, mut bw) = tokio::io::split(backend);
    let shared = Mutex::new(Shared { scs: true, ..Shared::default() });
    let nonce = format!("gatehouse_refused_{}", uuid::Uuid::new_v4().simple());
    let (mut up, mut down) = (0u64, 0u64);
    let cap = ctx.agent.settings.record_max_bytes;
    let rec = StreamRecorder::new(ctx.id, cap, "statement");
    let result = {
        let c2b = client_to_backend(ctx, &mut cr, client_rest, &mut bw, &shared, &nonce, &mut up, &rec);
        let b2c = backend_to_client(ctx, &mut br, backend_rest, &mut cw, &shared, &nonce, &mut down, &rec);
        tokio::select! {
            r = async { tokio::try_join!(c2b, b2c) } => r.map(|_| ()),
            () = ctx.live.cut.cancelled() => Err(Fail::Backend(String::new())),
        }
    };
    let end = match result {
        Ok(()) => End::Closed,
        Err(_) if ctx.live.cut.is_cancelled() => {
            let reason = ctx.live.reason();
            let e = PgError::new(Severity::Fatal, "57P01", format!("Gatehouse ended this session: {reason}"));
            let _ = cw.write_all(&e.encode()).await;
            let _ = bw.write_all(&wire::terminate()).await;
            End::Cut(reason)
        }
        Err(Fail::Client(e)) => {
            warn!(error = %e.message, "client protocol violation: closing the session");
            let _ = cw.write_all(&e.encode()).await;
            let _ = bw.write_all(&wire::terminate()).await;
            End::ClientError(e.message)
        }
        Err(Fail::ClientIo(e)) => End::ClientError(e.to_string()),
        Err(Fail::Audit(e)) => {
            let pe = PgError::new(
                Severity::Fatal,
                "58030",
                format!("Gatehouse ended this session: the audit store cannot be written ({e})"),
            );
            let _ = cw.write_all(&pe.encode()).await;
            let _ = bw.write_all(&wire::terminate()).await;
            End::Cut(format!("audit store failure: {e}"))
        }
        Err(Fail::Backend(e)) => {
            let pe = PgError::new(Severity::Fatal, "08006", format!("Gatehouse lost the backend: {e}"));
            let _ = cw.write_all(&pe.encode()).await;
            End::BackendError(e)
        }
    };
    let _ = cw.flush().await;
    let _ = cw.shutdown().await;
    let _ = bw.shutdown().await;
    // Statements still waiting for an outcome ended with the session.
    let pending: Vec<InFlight> = lock(&shared).inflight.drain(..).collect();
    for f in pending {
        statement_end(ctx, f, None, Some(format!("session ended: {}", end.describe())));
    }
    RelayOutcome { up, down, end }
}

/// Reads into `buf` until it holds at least one whole message (reserving
/// room for a large one); `Ok(false)` on a clean EOF.
async fn fill<R: AsyncRead + Unpin>(r: &mut R, buf: &mut BytesMut) -> std::io::Result<bool> {
    if let Some(need) = wire::pending_len(buf)
        && need > buf.len()
    {
        buf.reserve(need - buf.len());
    } else if buf.capacity() - buf.len() < 4096 {
        buf.reserve(8192);
    }
    Ok(r.read_buf(buf).await? > 0)
}
