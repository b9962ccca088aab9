//! The server side of a WebSocket upgrade on the agent's endpoint: picking a
//! sub-protocol the client offered, answering the handshake (RFC 6455), and
//! turning the upgraded connection into a message stream (tungstenite) or,
//! for SPDY tunnelled in binary messages, back into a byte stream.

use axum::body::Body;
use axum::response::Response;
use futures::{SinkExt, StreamExt};
use http::{HeaderMap, StatusCode, header};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

pub type Socket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// The GUID RFC 6455 appends to the client's key.
const ACCEPT_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Whether the request asks for a WebSocket.
pub fn is_websocket(headers: &HeaderMap) -> bool {
    let has = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    has(header::UPGRADE, "websocket") && has(header::CONNECTION, "upgrade")
}

/// The sub-protocols the client offered, in its order.
pub fn offered_protocols(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .collect()
}

/// The first of `supported` (in the server's order of preference) the client offered.
pub fn choose<'a>(headers: &HeaderMap, supported: &[&'a str]) -> Option<&'a str> {
    let offered = offered_protocols(headers);
    supported.iter().copied().find(|s| offered.iter().any(|o| o == s))
}

fn accept_key(key: &str) -> String {
    use base64::Engine;
    let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, format!("{key}{ACCEPT_GUID}").as_bytes());
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
}

/// The 101 answer to a WebSocket handshake with `protocol`, or `None` when
/// the request lacks a key.
pub fn switching_protocols(headers: &HeaderMap, protocol: &str) -> Option<Response> {
    let key = headers.get(header::SEC_WEBSOCKET_KEY)?.to_str().ok()?;
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::UPGRADE, "websocket")
        .header(header::CONNECTION, "Upgrade")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept_key(key))
        .header(header::SEC_WEBSOCKET_PROTOCOL, protocol)
        .body(Body::empty())
        .ok()
}

/// Ends a WebSocket with a normal closure (clients treat a close without a
/// status code as an error).
pub async fn close<S: futures::Sink<Message> + Unpin>(sink: &mut S) {
    use tokio_tungstenite::tungstenite::protocol::{CloseFrame, frame::coding::CloseCode};
    let _ = sink.send(Message::Close(Some(CloseFrame { code: CloseCode::Normal, reason: "".into() }))).await;
    let _ = sink.close().await;
}

/// The WebSocket once the 101 has gone out.
pub async fn accept(upgrade: OnUpgrade) -> Option<Socket> {
    match upgrade.await {
        Ok(upgraded) => Some(WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await),
        Err(e) => {
            tracing::debug!(error = %e, "upgrade failed");
            None
        }
    }
}

/// A byte stream whose reads are the payloads of the socket's binary
/// messages and whose writes become binary messages, as client-go's
/// tunnelling connection carries SPDY.
pub fn byte_stream(socket: Socket) -> DuplexStream {
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    tokio::spawn(async move {
        let (mut sink, mut messages) = socket.split();
        let (mut reader, mut writer) = tokio::io::split(theirs);
        let inbound = async {
            while let Some(Ok(message)) = messages.next().await {
                match message {
                    Message::Binary(data) if writer.write_all(&data).await.is_err() => break,
                    Message::Close(_) => break,
                    _ => {}
                }
            }
            let _ = writer.shutdown().await;
        };
        let outbound = async {
            let mut buffer = vec![0u8; 32 * 1024];
            loop {
                match reader.read(&mut buffer).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if sink.send(Message::binary(buffer[..n].to_vec())).await.is_err() {
                            break;
                        }
                    }
                }
            }
            close(&mut sink).await;
        };
        // Either side ending ends the tunnel.
        tokio::select! {
            _ = inbound => {}
            _ = outbound => {}
        }
    });
    ours
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_accept_key_follows_rfc_6455() {
        assert_eq!(accept_key("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn the_servers_preference_wins_among_offered_protocols() {
        let mut headers = HeaderMap::new();
        headers.append(header::SEC_WEBSOCKET_PROTOCOL, "v4.channel.k8s.io, v5.channel.k8s.io".parse().unwrap());
        headers.append(header::SEC_WEBSOCKET_PROTOCOL, "channel.k8s.io".parse().unwrap());
        assert_eq!(choose(&headers, &["v5.channel.k8s.io", "v4.channel.k8s.io"]), Some("v5.channel.k8s.io"));
        assert_eq!(choose(&headers, &["SPDY/3.1+portforward.k8s.io"]), None);
        headers.insert(header::UPGRADE, "WebSocket".parse().unwrap());
        headers.insert(header::CONNECTION, "keep-alive, Upgrade".parse().unwrap());
        assert!(is_websocket(&headers));
    }
}
