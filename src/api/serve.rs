//! HTTPS serving: accepts TCP connections, refuses plain HTTP with upstream's
//! message, completes the TLS handshake, records the identity of a client
//! certificate, and serves HTTP/1.1 (with upgrades, for exec and port-forward)
//! until shutdown, letting in-flight requests finish.

use super::auth::{Identity, PeerIdentity};
use axum::Router;
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// The first byte of every TLS connection (a handshake record).
const TLS_HANDSHAKE: u8 = 0x16;

/// Serves `app` over TLS on `listener` until `shutdown`, then waits (bounded) for
/// open requests to finish.
pub async fn serve_tls(listener: TcpListener, tls: Arc<rustls::ServerConfig>, app: Router, shutdown: CancellationToken) {
    let acceptor = TlsAcceptor::from(tls);
    let connections = TaskTracker::new();
    while let Some((stream, peer)) = accept(&listener, &shutdown).await {
        let acceptor = acceptor.clone();
        let app = app.clone();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let Some(tls) = handshake(stream, &acceptor).await else { return };
            let peer_identity = PeerIdentity(client_identity(&tls));
            let service = hyper::service::service_fn(move |mut request: http::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(peer_identity.clone());
                app.clone().oneshot(request.map(axum::body::Body::new))
            });
            if let Err(e) = serve_http1(TokioIo::new(tls), service, &shutdown).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    connections.close();
    tokio::select! {
        _ = connections.wait() => {}
        _ = tokio::time::sleep(Duration::from_secs(10)) => tracing::warn!("some connections did not finish within 10s"),
    }
}

/// The next connection, or None once `shutdown` is signalled; failed accepts
/// (out of file descriptors, a connection reset while queued) are retried.
pub async fn accept(listener: &TcpListener, shutdown: &CancellationToken) -> Option<(TcpStream, std::net::SocketAddr)> {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => return Some(accepted),
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// Serves HTTP/1.1 (with upgrades) on one connection until it closes; on
/// `shutdown`, lets the request in flight finish, then closes.
pub async fn serve_http1<I, S, B>(io: I, service: S, shutdown: &CancellationToken) -> Result<(), hyper::Error>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .serve_connection(io, service)
        .with_upgrades();
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => result,
        _ = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    }
}

/// Completes the TLS handshake, or answers a plain-HTTP client as upstream does.
async fn handshake(mut stream: TcpStream, acceptor: &TlsAcceptor) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let _ = stream.set_nodelay(true);
    let mut first = [0u8; 1];
    match tokio::time::timeout(Duration::from_secs(10), stream.peek(&mut first)).await {
        Ok(Ok(1)) if first[0] == TLS_HANDSHAKE => {}
        Ok(Ok(1)) => {
            // Read the request first: closing with unread bytes would reset the
            // connection before the client sees the answer.
            let mut request = [0u8; 4096];
            let _ = tokio::time::timeout(Duration::from_millis(200), stream.read(&mut request)).await;
            let _ = stream
                .write_all(b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\nClient sent an HTTP request to an HTTPS server.\n")
                .await;
            let _ = stream.shutdown().await;
            return None;
        }
        _ => return None,
    }
    match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
        Ok(Ok(tls)) => Some(tls),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "TLS handshake failed");
            None
        }
        Err(_) => None,
    }
}

fn client_identity(tls: &tokio_rustls::server::TlsStream<TcpStream>) -> Option<Identity> {
    let (_, session) = tls.get_ref();
    let cert = session.peer_certificates()?.first()?;
    let (user, groups) = crate::pki::identity_from_client_cert(cert.as_ref())?;
    let mut groups = groups;
    groups.push("system:authenticated".into());
    Some(Identity { user, groups })
}
