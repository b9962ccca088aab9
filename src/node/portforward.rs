//! `/portForward/{namespace}/{pod}`: connections to ports on the pod's own
//! localhost. kubectl speaks SPDY — tunnelled in WebSocket binary messages
//! (sub-protocol `SPDY/3.1+portforward.k8s.io`, kubectl 1.30+) or over a
//! plain `SPDY/3.1` upgrade — opening per forwarded connection an error
//! stream and a data stream that share the headers `port` and `requestID`.
//! The Python client speaks `v4.channel.k8s.io`: the ports come in the
//! query, channel 2i carries port i's data and 2i+1 its errors, and each
//! channel's first message is the port, 2 bytes little-endian. Connections
//! are made from inside the pod's network namespace (the sandbox's, entered
//! on a thread of their own), so ports bound to 127.0.0.1 in the pod work.

use super::docker::Role;
use super::endpoint::{Endpoint, Params, Refusal};
use super::spdy::{self, Incoming, Stream};
use super::websocket::{self, Socket};
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use http::{StatusCode, header};
use k8s_openapi::api::core::v1::Pod;
use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

const SPDY_UPGRADE: &str = "SPDY/3.1";
const PROTOCOL: &str = "portforward.k8s.io";
const TUNNELLED: &str = "SPDY/3.1+portforward.k8s.io";
const V4: &str = "v4.channel.k8s.io";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where connections to the pod's ports are made from.
#[derive(Clone, Copy, Debug)]
enum Dialer {
    /// A host-network pod: the host's own localhost.
    Host,
    /// The network namespace of this process (the pod's sandbox).
    Namespace(i64),
}

impl Dialer {
    async fn connect(self, port: u16) -> io::Result<TcpStream> {
        let (done, result) = tokio::sync::oneshot::channel();
        // setns changes the calling thread for good: never a pooled one.
        std::thread::Builder::new().name("rk-port-forward".into()).spawn(move || {
            let _ = done.send(self.connect_blocking(port));
        })?;
        let stream = result.await.map_err(|_| io::Error::other("the connecting thread died"))??;
        stream.set_nonblocking(true)?;
        TcpStream::from_std(stream)
    }

    fn connect_blocking(self, port: u16) -> io::Result<std::net::TcpStream> {
        if let Dialer::Namespace(pid) = self {
            use std::os::fd::AsRawFd;
            let namespace = std::fs::File::open(format!("/proc/{pid}/ns/net"))?;
            // SAFETY: a valid namespace descriptor; only this thread moves.
            if unsafe { libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        let v4 = std::net::TcpStream::connect_timeout(&SocketAddr::from((Ipv4Addr::LOCALHOST, port)), CONNECT_TIMEOUT);
        v4.or_else(|e| std::net::TcpStream::connect_timeout(&SocketAddr::from((Ipv6Addr::LOCALHOST, port)), CONNECT_TIMEOUT).map_err(|_| e))
    }
}

impl Endpoint {
    /// How to reach `pod`'s localhost: its sandbox's namespace, or the host's.
    async fn dialer(&self, pod: &Pod) -> Result<Dialer, Refusal> {
        if pod.spec.as_ref().and_then(|s| s.host_network) == Some(true) {
            return Ok(Dialer::Host);
        }
        let m = &pod.metadata;
        let containers = self
            .runtime
            .pod_containers(m.namespace.as_deref().unwrap_or_default(), m.name.as_deref().unwrap_or_default())
            .await
            .map_err(|e| Refusal::internal(format!("listing containers: {e}")))?;
        let sandbox = containers
            .iter()
            .find(|c| c.role == Role::Sandbox && c.running() && Some(c.pod_uid.as_str()) == m.uid.as_deref())
            .ok_or_else(|| Refusal::bad_request(format!("pod {} has no running sandbox", m.name.as_deref().unwrap_or_default())))?;
        let inspect = self.runtime.docker().inspect_container(&sandbox.id, None).await.map_err(|e| Refusal::internal(format!("inspecting the sandbox: {e}")))?;
        let pid = inspect.state.and_then(|s| s.pid).filter(|p| *p > 0).ok_or_else(|| Refusal::bad_request("the pod's sandbox has no process"))?;
        Ok(Dialer::Namespace(pid))
    }
}

pub async fn serve(State(endpoint): State<Endpoint>, Path((namespace, name)): Path<(String, String)>, mut request: Request) -> Response {
    let prepared = async {
        let pod = endpoint.pod(&namespace, &name)?;
        let dialer = endpoint.dialer(&pod).await?;
        let on_upgrade = request.extensions_mut().remove::<hyper::upgrade::OnUpgrade>().ok_or_else(|| Refusal::internal("this connection cannot be upgraded"))?;
        Ok::<_, Refusal>((dialer, on_upgrade))
    };
    let (dialer, on_upgrade) = match prepared.await {
        Ok(p) => p,
        Err(refusal) => return refusal.into_response(),
    };
    let headers = request.headers();
    if websocket::is_websocket(headers) {
        let Some(protocol) = websocket::choose(headers, &[TUNNELLED, V4]) else {
            return Refusal::bad_request(format!("port-forward over WebSocket needs sub-protocol {TUNNELLED} or {V4}")).into_response();
        };
        let Some(response) = websocket::switching_protocols(headers, protocol) else {
            return Refusal::bad_request("the WebSocket handshake lacks Sec-WebSocket-Key").into_response();
        };
        let ports = if protocol == V4 {
            match ports(&Params::parse(request.uri().query())) {
                Ok(p) => p,
                Err(refusal) => return refusal.into_response(),
            }
        } else {
            Vec::new()
        };
        tokio::spawn(async move {
            let Some(socket) = websocket::accept(on_upgrade).await else { return };
            if protocol == V4 {
                channels(socket, dialer, ports).await;
            } else {
                streams(websocket::byte_stream(socket), dialer).await;
            }
        });
        return response;
    }
    let upgrade = headers.get(header::UPGRADE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let offered = headers.get_all("x-stream-protocol-version").iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).any(|p| p.trim() == PROTOCOL);
    if !upgrade.eq_ignore_ascii_case(SPDY_UPGRADE) || !offered {
        return Refusal::bad_request(format!("port-forward needs an upgrade to {SPDY_UPGRADE} with protocol {PROTOCOL}, or a WebSocket")).into_response();
    }
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => streams(hyper_util::rt::TokioIo::new(upgraded), dialer).await,
            Err(e) => tracing::debug!(error = %e, "port-forward upgrade failed"),
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, SPDY_UPGRADE)
        .header("X-Stream-Protocol-Version", PROTOCOL)
        .body(Body::empty())
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// The `ports` of a v4 WebSocket request (repeated or comma-separated).
fn ports(params: &Params) -> Result<Vec<u16>, Refusal> {
    let mut out = Vec::new();
    for value in params.all("ports") {
        for p in value.split(',') {
            match p.trim().parse::<u16>() {
                Ok(port) if port > 0 => out.push(port),
                _ => return Err(Refusal::bad_request(format!("unable to parse {p:?} as a port"))),
            }
        }
    }
    if out.is_empty() {
        return Err(Refusal::bad_request("query parameter \"ports\" is required"));
    }
    Ok(out)
}

/// A SPDY connection: pairs each request's data and error streams and
/// forwards each complete pair to its port.
async fn streams<IO: AsyncRead + AsyncWrite + Send + 'static>(io: IO, dialer: Dialer) {
    let (accepted, mut arrivals) = mpsc::channel::<Stream>(16);
    let connection = tokio::spawn(spdy::serve(io, accepted));
    let mut pending: HashMap<String, (Option<Stream>, Option<Stream>)> = HashMap::new();
    while let Some(stream) = arrivals.recv().await {
        let port = spdy::header(&stream.headers, "port").and_then(|p| p.parse::<u16>().ok()).filter(|p| *p > 0);
        let kind = spdy::header(&stream.headers, "streamtype").map(str::to_owned);
        // Old clients send no request id; their streams come in (error, data) order.
        let request = spdy::header(&stream.headers, "requestid").map(str::to_owned).unwrap_or_else(|| {
            let id = if kind.as_deref() == Some("data") { stream.id.saturating_sub(2) } else { stream.id };
            id.to_string()
        });
        tracing::debug!(stream = stream.id, ?port, ?kind, request, "port-forward stream");
        let (Some(port), Some(kind)) = (port, kind) else {
            stream.sender.reset().await;
            continue;
        };
        let pair = pending.entry(request.clone()).or_default();
        match kind.as_str() {
            "data" if pair.0.is_none() => pair.0 = Some(stream),
            "error" if pair.1.is_none() => pair.1 = Some(stream),
            _ => {
                stream.sender.reset().await;
                continue;
            }
        }
        if pair.0.is_some() && pair.1.is_some()
            && let Some((Some(data), Some(error))) = pending.remove(&request)
        {
            tokio::spawn(forward(data, error, port, dialer));
        }
    }
    let _ = connection.await;
}

/// Copies between a data stream and a connection to `port` in the pod, then
/// closes the error stream (after writing to it what went wrong, if anything).
async fn forward(mut data: Stream, error: Stream, port: u16, dialer: Dialer) {
    let connected = dialer.connect(port).await;
    tracing::debug!(port, ?dialer, ok = connected.is_ok(), "port-forward connection");
    let connection = match connected {
        Ok(c) => c,
        Err(e) => {
            let message = format!("error forwarding port {port} to pod: {e}");
            let _ = error.sender.send(message.as_bytes()).await;
            error.sender.finish().await;
            data.sender.finish().await;
            return;
        }
    };
    let (mut from_pod, mut to_pod) = connection.into_split();
    let sender = data.sender.clone();
    let downstream = async move {
        let mut buffer = vec![0u8; 32 * 1024];
        loop {
            match from_pod.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if sender.send(&buffer[..n]).await.is_err() {
                        break;
                    }
                }
            }
        }
        sender.finish().await;
    };
    // Ok(()) when the client finished sending; Err when it gave up.
    let upstream = async {
        loop {
            match data.recv().await {
                Incoming::Data(bytes) => to_pod.write_all(&bytes).await.map_err(drop)?,
                Incoming::Finished => return to_pod.shutdown().await.map_err(drop),
                Incoming::Reset => return Err(()),
            }
        }
    };
    tokio::pin!(downstream);
    tokio::select! {
        _ = &mut downstream => {}
        half_closed = upstream => if half_closed.is_ok() { downstream.await },
    }
    error.sender.finish().await;
}

/// A v4 WebSocket port-forward: one connection per requested port.
async fn channels(socket: Socket, dialer: Dialer, ports: Vec<u16>) {
    let (mut sink, mut messages) = socket.split();
    let (from_pods, mut outgoing) = mpsc::channel::<(u8, Option<Vec<u8>>)>(64);
    let mut to_pods = Vec::with_capacity(ports.len());
    for (index, port) in ports.iter().enumerate() {
        let (data, error) = ((2 * index) as u8, (2 * index + 1) as u8);
        for channel in [data, error] {
            let mut first = vec![channel];
            first.extend_from_slice(&port.to_le_bytes());
            if sink.send(Message::binary(first)).await.is_err() {
                return;
            }
        }
        let (writer, mut to_pod) = mpsc::channel::<Vec<u8>>(64);
        to_pods.push(writer);
        let (port, from_pods) = (*port, from_pods.clone());
        tokio::spawn(async move {
            let connection = match dialer.connect(port).await {
                Ok(c) => c,
                Err(e) => {
                    let _ = from_pods.send((error, Some(format!("error forwarding port {port} to pod: {e}").into_bytes()))).await;
                    let _ = from_pods.send((data, None)).await;
                    return;
                }
            };
            let (mut reader, mut writer) = connection.into_split();
            tokio::spawn(async move {
                while let Some(bytes) = to_pod.recv().await {
                    if writer.write_all(&bytes).await.is_err() {
                        break;
                    }
                }
            });
            let mut buffer = vec![0u8; 32 * 1024];
            while let Ok(n) = reader.read(&mut buffer).await {
                if n == 0 || from_pods.send((data, Some(buffer[..n].to_vec()))).await.is_err() {
                    break;
                }
            }
            let _ = from_pods.send((data, None)).await;
        });
    }
    drop(from_pods);
    let mut open = ports.len();
    loop {
        tokio::select! {
            message = messages.next() => match message {
                Some(Ok(Message::Binary(bytes))) => {
                    let writer = bytes.first().filter(|c| *c % 2 == 0).and_then(|c| to_pods.get(usize::from(*c) / 2));
                    if let Some(writer) = writer {
                        let _ = writer.send(bytes[1..].to_vec()).await;
                    }
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
            out = outgoing.recv() => match out {
                Some((channel, Some(bytes))) => {
                    let mut frame = vec![channel];
                    frame.extend_from_slice(&bytes);
                    if sink.send(Message::binary(frame)).await.is_err() {
                        break;
                    }
                }
                Some((_, None)) => {
                    open -= 1;
                    if open == 0 {
                        break;
                    }
                }
                None => break,
            },
        }
    }
    websocket::close(&mut sink).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_come_repeated_or_comma_separated() {
        assert_eq!(ports(&Params::parse(Some("ports=80,8080&ports=9000"))).unwrap(), [80, 8080, 9000]);
        assert!(ports(&Params::parse(Some("ports=0"))).is_err());
        assert!(ports(&Params::parse(Some("ports=http"))).is_err());
        assert!(ports(&Params::parse(None)).is_err());
    }

    #[tokio::test]
    async fn a_host_dialer_reaches_localhost() {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (connected, accepted) = tokio::join!(Dialer::Host.connect(port), listener.accept());
        assert!(connected.is_ok() && accepted.is_ok());
    }
}
