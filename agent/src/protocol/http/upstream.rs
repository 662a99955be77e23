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
}

/// How many requests of one session are with the backend at once (sent and
/// their response not yet read through), and so how many connections a
/// session opens to it at most. An HTTP/2 client may have 200 streams open on
/// one connection to the agent; past this, its requests wait their turn
/// rather than each opening a backend connection of its own (a local user
/// would otherwise turn one socket into hundreds at the backend).
pub const MAX_IN_FLIGHT: usize = 16;

/// Per session: where the backend is, how to reach it, idle connections.
pub struct Pool {
    addr: SocketAddr,
    mark: u32,
    tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
    idle: std::sync::Mutex<Vec<SendRequest<UpBody>>>,
    /// [`MAX_IN_FLIGHT`] permits; a request holds one until its connection
    /// can take another (its response read through, or the connection gone).
    in_flight: Arc<tokio::sync::Semaphore>,
}

impl Pool {
    pub fn new(
        addr: SocketAddr,
        mark: u32,
        tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
    ) -> Arc<Self> {
        Arc::new(Self {
            addr,
            mark,
            tls,
            idle: std::sync::Mutex::new(Vec::new()),
            in_flight: Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT)),
        })
    }

    /// Sends one request; the connection goes back to the pool once it can
    /// take another.
    pub async fn send(
        self: &Arc<Self>,
        req: http::Request<UpBody>,
    ) -> Result<http::Response<hyper::body::Incoming>, UpstreamError> {
        // The semaphore is never closed: `ok()` is always a permit.
        let permit = self.in_flight.clone().acquire_owned().await.ok();
        let mut sender = loop {
            let next = crate::proxy::lock(&self.idle).pop();
            match next {
                Some(s) if s.is_ready() => break s,
                Some(_) => continue,
                None => break self.connect().await?,
            }
        };
        let resp = sender.send_request(req).await.map_err(UpstreamError::Http)?;
        let pool = Arc::downgrade(self);
        tokio::spawn(async move {
            // Ready again once this response's body has been read.
            if sender.ready().await.is_ok()
                && let Some(pool) = pool.upgrade()
            {
                crate::proxy::lock(&pool.idle).push(sender);
            }
            drop(permit);
        });
        Ok(resp)
    }

    async fn connect(&self) -> Result<SendRequest<UpBody>, UpstreamError> {
        let tcp = crate::proxy::connect_upstream(self.addr, self.mark).await.map_err(UpstreamError::Connect)?;
        match &self.tls {
            None => handshake(tcp).await,
            Some((config, name)) => {
                let tls = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(UpstreamError::Tls)?;
                handshake(tls).await
            }
        }
    }
}

async fn handshake<I>(io: I) -> Result<SendRequest<UpBody>, UpstreamError>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) =
        hyper::client::conn::http1::Builder::new().handshake(TokioIo::new(io)).await.map_err(UpstreamError::Http)?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            debug!(error = %e, "backend connection ended");
        }
    });
    Ok(sender)
}
