//! HTTP requests held for approval (`approval = { for = ["DELETE"], … }` on
//! an http rule). The request waits in its own service future: on HTTP/2
//! the connection's other streams go on; on HTTP/1.1 the requests pipelined
//! behind it wait, as the protocol orders them. Nothing of the request is
//! forwarded before an approver decides. Its body is read whole first (at
//! most [`MAX_HELD_BODY`]), shown to the approvers (size, SHA-256, its
//! beginning), and exactly those bytes are forwarded once approved: a client
//! cannot have a request approved and then send another body with it.
//! A request whose client goes away (a reset stream, a closed connection,
//! a cut session) is withdrawn, so nobody approves a request that will
//! never run.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::sync::{Semaphore, SemaphorePermit};
use tracing::info;

use super::Ctx;
use crate::approval::Desk as _;
use crate::approval::{RequestId, State, Subject};
use crate::audit::now_us;
use crate::policy::{Approval, Decision};
use crate::proxy::Agent;

/// The largest body a request held for approval may carry (its approvers
/// read it; it is kept in memory until they decide).
pub(super) const MAX_HELD_BODY: usize = 256 * 1024;
/// How long a held request's body may take to arrive.
const BODY_WAIT: Duration = Duration::from_secs(30);
/// How much of a held body approvers are shown.
const SHOWN: usize = 2048;
/// Room for held bodies across the agent, in KiB (64 MiB): a flood of held
/// requests is answered `503` rather than kept in memory.
pub(super) static HELD_KIB: Semaphore = Semaphore::const_new(64 * 1024);

/// A held request's body and the room it takes in [`HELD_KIB`] (given back
/// when the body is dropped, once forwarded or refused).
pub(super) struct HeldBody {
    pub bytes: Bytes,
    room: Option<SemaphorePermit<'static>>,
}

/// A request body from the client: streamed, or read whole before an
/// approval and forwarded as the approvers saw it (trailer fields dropped).
pub(super) enum ClientBody {
    Streaming(Incoming),
    /// The room is held until the body is dropped.
    Held {
        body: Option<Bytes>,
        _room: Option<SemaphorePermit<'static>>,
    },
}

impl From<HeldBody> for ClientBody {
    fn from(h: HeldBody) -> Self {
        Self::Held { body: Some(h.bytes), _room: h.room }
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            Self::Streaming(b) => Pin::new(b).poll_frame(cx),
            Self::Held { body: b, .. } => Poll::Ready(b.take().filter(|b| !b.is_empty()).map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Streaming(b) => b.is_end_stream(),
            Self::Held { body: b, .. } => b.as_ref().is_none_or(Bytes::is_empty),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Streaming(b) => b.size_hint(),
            Self::Held { body: b, .. } => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}

/// Reads a held request's body whole, within the room `pool` has left;
/// `Err((status, why))` refuses the request.
pub(super) async fn read_body<B>(body: B, pool: &'static Semaphore) -> Result<HeldBody, (http::StatusCode, String)>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let most = u32::try_from(MAX_HELD_BODY / 1024).unwrap_or(u32::MAX);
    let Ok(mut room) = pool.try_acquire_many(most) else {
        return Err((
            http::StatusCode::SERVICE_UNAVAILABLE,
            "too many request bodies are waiting for approval now; try again later".into(),
        ));
    };
    let limited = http_body_util::Limited::new(body, MAX_HELD_BODY);
    match tokio::time::timeout(BODY_WAIT, limited.collect()).await {
        Ok(Ok(all)) => {
            let bytes = all.to_bytes();
            // Keep the room the body takes; the rest goes back at once.
            let room = room.split(bytes.len().div_ceil(1024)).filter(|_| !bytes.is_empty());
            Ok(HeldBody { bytes, room })
        }
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err((
            http::StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "a request held for approval carries at most {} KiB of body (its approvers read it first)",
                MAX_HELD_BODY / 1024
            ),
        )),
        Ok(Err(e)) => Err((http::StatusCode::BAD_REQUEST, format!("reading the request body failed: {e}"))),
        Err(_) => Err((
            http::StatusCode::REQUEST_TIMEOUT,
            format!("the body of a request held for approval did not arrive within {} s", BODY_WAIT.as_secs()),
        )),
    }
}

/// What approvers see of a body: its size, SHA-256 and beginning (as text;
/// the CLI shows control characters escaped). `None` for no body.
pub(super) fn body_note(body: &[u8]) -> Option<String> {
    if body.is_empty() {
        return None;
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, body);
    let hex = crate::audit::hex(digest.as_ref());
    let shown = String::from_utf8_lossy(body.get(..SHOWN.min(body.len())).unwrap_or_default()).into_owned();
    let more = if body.len() > SHOWN { " …" } else { "" };
    Some(format!("{} bytes, sha256 {hex}: {shown}{more}", body.len()))
}

/// Withdraws the request when the wait ends without a decision (the future
/// dropped). A decided request is left as it is.
struct Withdraw {
    agent: Arc<Agent>,
    id: RequestId,
}

impl Drop for Withdraw {
    fn drop(&mut self) {
        self.agent.withdraw(self.id);
    }
}

/// Opens an approval request for `method target` and waits for its
/// outcome: `Ok` with a note for the record once approved, `Err` with what
/// to tell the client otherwise (denied, timed out, withdrawn).
pub(super) async fn hold(
    ctx: &Ctx,
    approval: &Approval,
    decision: &Decision,
    method: &str,
    target: &str,
    body: Option<String>,
) -> Result<String, String> {
    let subject = Subject::HttpRequest {
        session: ctx.id.to_string(),
        backend: ctx.backend.name.to_string(),
        method: method.to_owned(),
        target: target.to_owned(),
        rule: decision.rule_label().to_owned(),
        body,
    };
    let waiting = ctx.agent.request(subject, ctx.principal.clone(), approval, None, decision.approvers.clone())?;
    let id = waiting.id;
    info!(request = id, approvers = %waiting.approvers, method, target, "HTTP request held for approval");
    let guard = Withdraw { agent: ctx.agent.clone(), id };
    let agent = ctx.agent.clone();
    let state = tokio::select! {
        s = waiting.clone().outcome(&ctx.agent.approvals, |t| agent.transition(t)) => s,
        () = ctx.live.cut.cancelled() => State::Withdrawn { at_us: now_us() },
    };
    drop(guard);
    match state {
        State::Approved { .. } => {
            info!(request = id, "approved: the held request goes to the backend");
            Ok(format!("held for approval by {}: request {id} approved", waiting.approvers))
        }
        other => Err(waiting.refusal(&other)),
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::Full;

    use super::*;

    #[tokio::test]
    async fn held_bodies_are_bounded_in_size_and_in_total() {
        // 300 KiB of room: one 200 KiB body held leaves too little for another.
        static POOL: Semaphore = Semaphore::const_new(300);
        let big = Full::new(Bytes::from(vec![b'x'; 200 * 1024]));
        let first = read_body(big, &POOL).await.map_err(|e| e.1).unwrap();
        assert_eq!((first.bytes.len(), POOL.available_permits()), (200 * 1024, 100), "only what it takes is kept");
        let refused = read_body(Full::new(Bytes::from_static(b"{}")), &POOL).await.err().unwrap();
        assert_eq!(refused.0, http::StatusCode::SERVICE_UNAVAILABLE, "{}", refused.1);
        // Forwarded (dropped): its room comes back.
        drop(ClientBody::from(first));
        assert_eq!(POOL.available_permits(), 300);
        let small = read_body(Full::new(Bytes::from_static(b"{\"refund\": 1}")), &POOL).await.map_err(|e| e.1).unwrap();
        assert_eq!(POOL.available_permits(), 299);
        let empty = read_body(Full::new(Bytes::new()), &POOL).await.map_err(|e| e.1).unwrap();
        assert!(empty.bytes.is_empty() && POOL.available_permits() == 299, "an empty body takes no room");
        drop(small);
        // Over the limit: 413, and the room is given back.
        let over = read_body(Full::new(Bytes::from(vec![0u8; MAX_HELD_BODY + 1])), &POOL).await.err().unwrap();
        assert_eq!(over.0, http::StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(POOL.available_permits(), 300);
        assert!(body_note(b"").is_none());
        let note = body_note(b"{\"refund\": 1}").unwrap();
        assert!(note.starts_with("13 bytes, sha256 ") && note.ends_with(": {\"refund\": 1}"), "{note}");
    }
}
