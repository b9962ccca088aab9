//! The ingress proxy (an ingress controller's role, in-process): Ingresses of
//! rk's IngressClass become routes from hosts and paths to the ready
//! endpoints of Services, served over HTTP and HTTPS (certificates from the
//! Ingresses' TLS Secrets) on the node, with the node's address published in
//! each Ingress's status. The IngressClass `rk` is created at start-up as the
//! cluster's default.

mod proxy;
pub mod routes;
mod status;
mod tls;
mod view;

use crate::runtime::Informers;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::networking::v1::{IngressClass, IngressClassSpec};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use view::View;

/// How long a client may take to finish a TLS handshake.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long open connections may finish after shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the ingress proxy listens.
#[derive(Clone, Debug)]
pub struct IngressOptions {
    pub enabled: bool,
    pub http: SocketAddr,
    pub https: SocketAddr,
}

pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// The bound listeners.
pub struct Listening {
    pub http: SocketAddr,
    pub https: SocketAddr,
}

/// Binds both listeners, then serves them, keeps routes current and writes
/// Ingress status (`address` is the node's address) until `shutdown`.
pub async fn start(
    options: &IngressOptions,
    client: kube::Client,
    informers: Arc<Informers>,
    address: IpAddr,
    shutdown: CancellationToken,
    tasks: &mut tokio::task::JoinSet<()>,
) -> Result<Listening, Error> {
    let http = TcpListener::bind(options.http).await.map_err(|e| format!("listening for ingress HTTP on {}: {e}", options.http))?;
    let https = TcpListener::bind(options.https).await.map_err(|e| format!("listening for ingress HTTPS on {}: {e}", options.https))?;
    let listening = Listening { http: http.local_addr()?, https: https.local_addr()? };
    create_class(&client).await?;
    let view = Arc::new(View::new(&informers)?);
    let tls = TlsAcceptor::from(Arc::new(view.certificates.server_config()?));
    tasks.spawn(view::keep_current(view.clone(), informers.clone(), shutdown.clone()));
    tasks.spawn(status::run(client, informers, address, shutdown.clone()));
    tasks.spawn(serve(http, None, view.clone(), shutdown.clone()));
    tasks.spawn(serve(https, Some(tls), view, shutdown));
    tracing::info!(http = %listening.http, https = %listening.https, "ingress proxy is serving");
    Ok(listening)
}

/// The IngressClass `rk`, the default class, unless it exists already (an
/// administrator's changes to it are kept).
async fn create_class(client: &kube::Client) -> Result<(), Error> {
    let class = IngressClass {
        metadata: kube::api::ObjectMeta {
            name: Some(routes::CLASS_NAME.into()),
            annotations: Some([(crate::api::kinds::networking::DEFAULT_CLASS_ANNOTATION.to_owned(), "true".to_owned())].into()),
            ..Default::default()
        },
        spec: Some(IngressClassSpec { controller: Some(routes::CONTROLLER.into()), parameters: None }),
    };
    match kube::Api::<IngressClass>::all(client.clone()).create(&kube::api::PostParams::default(), &class).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(format!("creating the IngressClass {}: {e}", routes::CLASS_NAME).into()),
    }
}

/// Accepts connections (TLS ones when `tls` is set) and serves HTTP/1.1 on
/// each until `shutdown`, then lets open requests finish (bounded).
async fn serve(listener: TcpListener, tls: Option<TlsAcceptor>, view: Arc<View>, shutdown: CancellationToken) {
    let connections = TaskTracker::new();
    let scheme = if tls.is_some() { "https" } else { "http" };
    while let Some((stream, peer)) = crate::api::serve::accept(&listener, &shutdown).await {
        let _ = stream.set_nodelay(true);
        let (tls, view, shutdown) = (tls.clone(), view.clone(), shutdown.clone());
        connections.spawn(async move {
            match tls {
                None => serve_connection(TokioIo::new(stream), peer, scheme, view, shutdown).await,
                Some(acceptor) => match tokio::time::timeout(CLIENT_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => serve_connection(TokioIo::new(stream), peer, scheme, view, shutdown).await,
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "ingress TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "ingress TLS handshake timed out"),
                },
            }
        });
    }
    drop(listener);
    connections.close();
    if tokio::time::timeout(DRAIN_TIMEOUT, connections.wait()).await.is_err() {
        tracing::warn!("some ingress connections did not finish in time");
    }
}

async fn serve_connection<S>(io: TokioIo<S>, peer: SocketAddr, scheme: &'static str, view: Arc<View>, shutdown: CancellationToken)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |request| {
        let view = view.clone();
        async move { Ok::<_, std::convert::Infallible>(proxy::handle(view, request, peer, scheme).await) }
    });
    let result = crate::api::serve::serve_http1(io, service, &shutdown).await;
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "ingress connection ended with an error");
    }
}
