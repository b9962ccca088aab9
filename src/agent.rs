//! `rk agent`: a node agent on another machine joining a running cluster.
//! It obtains its certificates with the join token (`join.rs`), writes a
//! kubeconfig for itself under its data directory, and runs the same
//! `node::run` as the agent embedded in `rk server`, over HTTPS. The API
//! client and informers reconnect and relist on their own, so a server
//! restart costs the agent nothing but latency; its pods run on meanwhile.

use crate::join::{self, JoinError, JoinToken};
use crate::node::{AgentConfig, EndpointConfig, endpoint::ServingTls};
use std::path::PathBuf;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// How `rk agent` authenticates to the cluster.
#[derive(Clone, Debug)]
pub enum Credentials {
    /// Join with a token: fetch and verify the CA, obtain node certificates.
    Token { server: String, token: String },
    /// Use an existing kubeconfig's address and credentials. The agent then
    /// has no serving certificate, so it runs without its HTTPS endpoint
    /// (no logs, exec or port-forward for its pods).
    Kubeconfig(PathBuf),
}

/// Everything `rk agent` needs.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    pub credentials: Credentials,
    /// The node agent itself (node name, data directory, pod network, DNS).
    pub agent: AgentConfig,
    pub endpoint_port: u16,
    /// Run the service proxy too (it needs the cluster CIDR).
    pub proxy: Option<crate::net::ProxyOptions>,
}

/// Host and port of an `https://` URL.
fn host_and_port(server: &str) -> Result<(String, u16), String> {
    let uri: http::Uri = server.parse().map_err(|e| format!("--server {server:?}: {e}"))?;
    if uri.scheme_str() != Some("https") {
        return Err(format!("--server {server:?} must be an https:// URL"));
    }
    let host = uri.host().ok_or_else(|| format!("--server {server:?} names no host"))?;
    Ok((host.trim_start_matches('[').trim_end_matches(']').to_owned(), uri.port_u16().unwrap_or(6443)))
}

/// Joins, retrying while the server cannot be reached; a refusal is final.
async fn credentials(server: &str, token: &JoinToken, node: &str, shutdown: &CancellationToken) -> Result<Option<join::Credentials>, Error> {
    let (host, port) = host_and_port(server)?;
    let names = crate::node::host::endpoint_names(node);
    loop {
        match join::join(&host, port, token, node, names.clone()).await {
            Ok(credentials) => return Ok(Some(credentials)),
            Err(JoinError::Refused(message)) => return Err(message.into()),
            Err(JoinError::Unreachable(message)) => tracing::warn!(%message, "cannot join yet; retrying"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}

async fn client_from(kubeconfig: &std::path::Path) -> Result<kube::Client, Error> {
    let loaded = kube::config::Kubeconfig::read_from(kubeconfig).map_err(|e| format!("reading {}: {e}", kubeconfig.display()))?;
    Ok(kube::Client::try_from(kube::Config::from_custom_kubeconfig(loaded, &Default::default()).await?)?)
}

/// Joins the cluster and runs the node agent (and the service proxy) until `shutdown`.
pub async fn run(options: AgentOptions, shutdown: CancellationToken) -> Result<(), Error> {
    let mut config = options.agent;
    let data_dir = config.data_dir.clone();
    std::fs::create_dir_all(&data_dir).map_err(|e| format!("creating {}: {e}", data_dir.display()))?;
    let client = match &options.credentials {
        Credentials::Token { server, token } => {
            let token: JoinToken = token.parse()?;
            let Some(credentials) = credentials(server, &token, &config.node_name, &shutdown).await? else { return Ok(()) };
            let kubeconfig = data_dir.join("agent-kubeconfig.yaml");
            crate::pki::write_kubeconfig(&kubeconfig, server, &credentials.ca, &credentials.client_cert, &credentials.client_key)?;
            let tls = ServingTls { cert_pem: credentials.serving_cert, key_pem: credentials.serving_key, ca_pem: credentials.ca };
            config.endpoint = Some(EndpointConfig { port: options.endpoint_port, tls });
            tracing::info!(node = config.node_name, server, "joined the cluster");
            client_from(&kubeconfig).await?
        }
        Credentials::Kubeconfig(path) => {
            tracing::info!(node = config.node_name, kubeconfig = %path.display(), "running with an existing kubeconfig; no HTTPS endpoint for logs, exec or port-forward");
            client_from(path).await?
        }
    };
    let proxy = options.proxy.map(|proxy| {
        let informers = crate::runtime::Informers::new(client.clone(), shutdown.clone());
        tokio::spawn(crate::net::run(informers, proxy, shutdown.clone()))
    });
    let result = crate::node::run(client, config, shutdown.clone()).await;
    shutdown.cancel();
    if let Some(proxy) = proxy {
        let _ = proxy.await;
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_is_an_https_url() {
        assert_eq!(host_and_port("https://10.0.0.1:6443").unwrap(), ("10.0.0.1".to_owned(), 6443));
        assert_eq!(host_and_port("https://server.example").unwrap(), ("server.example".to_owned(), 6443));
        assert_eq!(host_and_port("https://[::1]:7443").unwrap(), ("::1".to_owned(), 7443));
        assert!(host_and_port("http://10.0.0.1:6443").is_err());
        assert!(host_and_port("not a url").is_err());
    }
}
