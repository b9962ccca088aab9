//! The agent on a node of its own (`rk agent`): the node agent and the
//! service proxy of this machine, talking to the cluster's API over HTTPS
//! with the credentials of a kubeconfig, until SIGTERM or SIGINT. It is the
//! same agent `rk server` embeds; only the client differs. How the kubeconfig
//! is obtained (an admin's file today, a token-based join later) is up to the
//! caller.

use super::AgentConfig;
use std::path::Path;
use tokio_util::sync::CancellationToken;

pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// Runs the agent (and, with `proxy`, the service proxy) until a signal.
pub async fn run(kubeconfig: &Path, config: AgentConfig, proxy: Option<crate::net::ProxyOptions>) -> Result<(), Error> {
    let file = kube::config::Kubeconfig::read_from(kubeconfig).map_err(|e| format!("reading {}: {e}", kubeconfig.display()))?;
    let client_config = kube::Config::from_custom_kubeconfig(file, &Default::default()).await?;
    let client = kube::Client::try_from(client_config)?;
    let shutdown = CancellationToken::new();
    let proxy = proxy.map(|options| {
        let informers = crate::runtime::Informers::new(client.clone(), shutdown.clone());
        tokio::spawn(crate::net::run(informers, options, shutdown.clone()))
    });
    let mut agent = tokio::spawn(super::run(client, config, shutdown.clone()));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let result = tokio::select! {
        ended = &mut agent => ended.map_err(Error::from).and_then(|r| r),
        _ = term.recv() => {
            tracing::info!("SIGTERM received, shutting down");
            Ok(())
        }
        _ = tokio::signal::ctrl_c() => {
            tracing::info!("SIGINT received, shutting down");
            Ok(())
        }
    };
    shutdown.cancel();
    if !agent.is_finished() {
        let _ = agent.await;
    }
    if let Some(proxy) = proxy {
        let _ = proxy.await;
    }
    result
}
