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

/// Everything `rk agent` needs.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    /// `https://host:port` of the API server.
    pub server: String,
    pub token: String,
    pub node_name: String,
    pub data_dir: PathBuf,
    pub endpoint_port: u16,
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
async fn credentials(options: &AgentOptions, token: &JoinToken, shutdown: &CancellationToken) -> Result<Option<join::Credentials>, Error> {
    let (host, port) = host_and_port(&options.server)?;
    let names = crate::node::host::endpoint_names(&options.node_name);
    loop {
        match join::join(&host, port, token, &options.node_name, names.clone()).await {
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

/// Joins the cluster and runs the node agent until `shutdown`.
pub async fn run(options: AgentOptions, shutdown: CancellationToken) -> Result<(), Error> {
    let token: JoinToken = options.token.parse()?;
    let Some(credentials) = credentials(&options, &token, &shutdown).await? else { return Ok(()) };
    std::fs::create_dir_all(&options.data_dir).map_err(|e| format!("creating {}: {e}", options.data_dir.display()))?;
    let kubeconfig = options.data_dir.join("agent-kubeconfig.yaml");
    crate::pki::write_kubeconfig(&kubeconfig, &options.server, &credentials.ca, &credentials.client_cert, &credentials.client_key)?;
    let loaded = kube::config::Kubeconfig::read_from(&kubeconfig)?;
    let client = kube::Client::try_from(kube::Config::from_custom_kubeconfig(loaded, &Default::default()).await?)?;
    let mut config = AgentConfig::new(&options.node_name, options.data_dir.clone());
    let tls = ServingTls { cert_pem: credentials.serving_cert, key_pem: credentials.serving_key, ca_pem: credentials.ca };
    config.endpoint = Some(EndpointConfig { port: options.endpoint_port, tls });
    tracing::info!(node = options.node_name, server = options.server, "joined the cluster");
    crate::node::run(client, config, shutdown).await?;
    Ok(())
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
