//! Connections to an HTTP backend: HTTP/1.1 over TCP (SO_MARKed, so the
//! redirect leaves them alone), or over TLS verified like a PostgreSQL
//! backend's. Kept per session and reused while they stay open; a request
//! takes an idle one or opens another, so HTTP/2 clients' concurrent
//! streams are not serialised behind one upstream connection.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tracing::debug;

use super::body::BoxError;
use crate::proxy::limits::UserSlot;

pub type UpBody = UnsyncBoxBody<Bytes, BoxError>;

/// Why the backend could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("backend unreachable: {0}")]
    Connect(#[source] std::io::Error),
    #[error("backend TLS: {0}")]
    Tls(#[source] std::io::Error),
    #[error("backend HTTP: {0}")]
    Http(#[source] hyper::Error),
    /// The user holds `max_connections_per_user` connections already.
    #[error("{0}")]
    UserLimit(String),
}

/// Per session: where the backend is, how to reach it, idle connections.
pub struct Pool {
    addr: SocketAddr,
    mark: u32,
    tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
    idle: std::sync::Mutex<Vec<(SendRequest<UpBody>, Option<SlotHold>)>>,
    /// Each connection opened counts against the session's user.
    per_user: (Arc<crate::proxy::limits::PerUser>, u32),
    /// The session's own count (every session is one connection of its
    /// user, `proxy::session`), lent to a backend connection while one is
    /// open: the session counts as one, or as the connections it holds
    /// open to its backend when they are more.
    spare: Arc<std::sync::Mutex<Option<UserSlot>>>,
}

impl Pool {
    pub fn new(
        addr: SocketAddr,
        mark: u32,
        tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
        per_user: (Arc<crate::proxy::limits::PerUser>, u32),
        session_slot: Option<UserSlot>,
    ) -> Arc<Self> {
        let spare = Arc::new(std::sync::Mutex::new(session_slot));
        Arc::new(Self { addr, mark, tls, idle: std::sync::Mutex::new(Vec::new()), per_user, spare })
    }

    /// Sends one request; the connection goes back to the pool once it can
    /// take another.
    pub async fn send(
        self: &Arc<Self>,
        req: http::Request<UpBody>,
    ) -> Result<http::Response<hyper::body::Incoming>, UpstreamError> {
        let (mut sender, hold) = loop {
            let next = crate::live::lock(&self.idle).pop();
            match next {
                Some(s) if s.0.is_ready() => break s,
                Some(_) => continue,
                None => break self.connect().await?,
            }
        };
        let mut resp = sender.send_request(req).await.map_err(UpstreamError::Http)?;
        if let Some(h) = &hold {
            // An upgraded connection outlives its hyper connection task: whoever relays it keeps this.
            resp.extensions_mut().insert(h.clone());
        }
        let pool = Arc::downgrade(self);
        tokio::spawn(async move {
            // Ready again once this response's body has been read.
            if sender.ready().await.is_ok()
                && let Some(pool) = pool.upgrade()
            {
                crate::live::lock(&pool.idle).push((sender, hold));
            }
        });
        Ok(resp)
    }

    async fn connect(&self) -> Result<(SendRequest<UpBody>, Option<SlotHold>), UpstreamError> {
        // Counted while the connection lives: its task, the pool and (once
        // upgraded) the relay of the upgraded stream each hold a share.
        let slot = self.count()?;
        let tcp = crate::proxy::connect_upstream(self.addr, self.mark).await.map_err(UpstreamError::Connect)?;
        let sender = match &self.tls {
            None => handshake(tcp, slot.clone()).await?,
            Some((config, name)) => {
                let tls = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(UpstreamError::Tls)?;
                handshake(tls, slot.clone()).await?
            }
        };
        Ok((sender, slot))
    }

    /// The count of one more backend connection: the session's own while
    /// no other connection has it, else one more for the user.
    fn count(&self) -> Result<Option<SlotHold>, UpstreamError> {
        let lent = crate::live::lock(&self.spare).take();
        let slot = match lent {
            Some(s) => Some(s),
            None => self.per_user.0.take(self.per_user.1).map_err(UpstreamError::UserLimit)?,
        };
        Ok(slot.map(|s| SlotHold(Arc::new(Lent { slot: Some(s), back: Arc::downgrade(&self.spare) }))))
    }
}

/// A share of one backend connection's count against its user
/// (`max_connections_per_user`), given back when the last share drops.
#[derive(Debug, Clone)]
pub struct SlotHold(#[expect(dead_code, reason = "held for its Drop")] Arc<Lent>);

/// One backend connection's count; when the connection ends it becomes the
/// session's own count again if the session has none (it is still open),
/// else it is given back.
#[derive(Debug)]
pub struct Lent {
    slot: Option<UserSlot>,
    back: std::sync::Weak<std::sync::Mutex<Option<UserSlot>>>,
}

impl Drop for Lent {
    fn drop(&mut self) {
        if let Some(spare) = self.back.upgrade() {
            let mut s = crate::live::lock(&spare);
            if s.is_none() {
                *s = self.slot.take();
            }
        }
    }
}

async fn handshake<I>(io: I, slot: Option<SlotHold>) -> Result<SendRequest<UpBody>, UpstreamError>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) =
        hyper::client::conn::http1::Builder::new().handshake(TokioIo::new(io)).await.map_err(UpstreamError::Http)?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            debug!(error = %e, "backend connection ended");
        }
        drop(slot);
    });
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::limits::PerUser;

    fn held(per: &PerUser) -> serde_json::Value {
        per.stats()["open_by_uid"]["1001"].clone()
    }

    /// A session counts once while it holds at most one backend connection,
    /// and once per connection past that; its count outlives the connections
    /// while the session lasts, and nothing outlives both.
    #[test]
    fn a_session_counts_once_or_once_per_backend_connection() {
        let per = PerUser::new(3);
        let session = per.take(1001).expect("session");
        let addr = "127.0.0.1:9".parse().expect("addr");
        let pool = Pool::new(addr, 0, None, (per.clone(), 1001), session);
        assert_eq!(held(&per), 1, "an idle session");
        let first = pool.count().expect("lent").expect("counted");
        assert_eq!(held(&per), 1, "its first backend connection has the session's count");
        let second = pool.count().expect("one more").expect("counted");
        let third = pool.count().expect("one more").expect("counted");
        assert_eq!(held(&per), 3);
        assert!(matches!(pool.count(), Err(UpstreamError::UserLimit(_))), "past the limit");
        // The first ends: its count goes back to the session, which still counts once.
        drop(first);
        assert_eq!(held(&per), 3);
        drop(second);
        assert_eq!(held(&per), 2, "the session holds one count, the third connection one");
        let again = pool.count().expect("the session's count, lent again").expect("counted");
        assert_eq!(held(&per), 2);
        // A connection that outlives its session (an upgraded stream) keeps its count until it ends.
        drop(pool);
        assert_eq!(held(&per), 2);
        drop(again);
        assert_eq!(held(&per), 1);
        drop(third);
        assert_eq!(per.stats()["open_by_uid"], serde_json::json!({}));
    }
}
