//! `/exec` and `/attach` over WebSocket with Kubernetes' channel protocols
//! (`v5.channel.k8s.io` for kubectl 1.30+, `v4.channel.k8s.io` for the
//! Python client): each binary message starts with its channel — 0 stdin,
//! 1 stdout, 2 stderr, 3 the closing Status (Success, or Failure with reason
//! NonZeroExitCode and an ExitCode cause), 4 terminal resizes
//! `{"Width","Height"}` — and v5 adds `[255, channel]`, the client closing
//! its stdin. Exec runs the command through Docker's exec; attach joins the
//! container's own stdio. With a TTY, stdout carries the terminal.

use super::endpoint::{ContainerPath, Endpoint, Params, Refusal};
use super::websocket::{self, Socket};
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use bollard::Docker;
use bollard::container::LogOutput;
use bollard::exec::{StartExecOptions, StartExecResults};
use bollard::models::ExecConfig;
use bollard::query_parameters::{AttachContainerOptions, ResizeContainerTTYOptions, ResizeExecOptions};
use futures::{SinkExt, Stream, StreamExt};
use serde_json::{Value, json};
use std::pin::Pin;
use std::time::Duration;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

const V5: &str = "v5.channel.k8s.io";
const V4: &str = "v4.channel.k8s.io";
const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const STATUS: u8 = 3;
const RESIZE: u8 = 4;
/// v5: the client closes one of its channels (`[255, channel]`).
const CLOSE: u8 = 255;

/// Which standard streams the client wants, and whether it is a terminal.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Stdio {
    stdin: bool,
    stdout: bool,
    stderr: bool,
    tty: bool,
}

fn stdio(params: &Params) -> Result<Stdio, Refusal> {
    let tty = params.flag("tty");
    let s = Stdio { stdin: params.flag("stdin"), stdout: params.flag("stdout"), stderr: params.flag("stderr") && !tty, tty };
    if !(s.stdin || s.stdout || params.flag("stderr")) {
        return Err(Refusal::bad_request("you must specify at least 1 of stdin, stdout, stderr"));
    }
    Ok(s)
}

/// What the session runs: a command, or the container's own process.
enum Target {
    Exec(String),
    Attach(String),
}

impl Target {
    async fn resize(&self, docker: &Docker, width: i32, height: i32) {
        let result = match self {
            Target::Exec(id) => docker.resize_exec(id, ResizeExecOptions { h: height, w: width }).await,
            Target::Attach(id) => docker.resize_container_tty(id, ResizeContainerTTYOptions { h: height, w: width }).await,
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "terminal not resized");
        }
    }

    /// The Status the session ends with.
    async fn status(&self, docker: &Docker, command: &[String]) -> Value {
        let Target::Exec(id) = self else { return success() };
        // Docker may close the output a moment before it records the exit code.
        for _ in 0..40 {
            match docker.inspect_exec(id).await {
                Ok(exec) if exec.running == Some(true) => tokio::time::sleep(Duration::from_millis(50)).await,
                Ok(exec) => return exit_status(exec.exit_code.unwrap_or(0), command),
                Err(e) => return failure(format!("reading the command's exit code: {e}")),
            }
        }
        failure("the command's exit code did not become known".into())
    }
}

fn success() -> Value {
    json!({ "metadata": {}, "status": "Success" })
}

fn failure(message: String) -> Value {
    json!({ "metadata": {}, "status": "Failure", "message": message, "reason": "InternalError" })
}

/// Success for 0, else the NonZeroExitCode failure clients turn into an exit code.
fn exit_status(code: i64, command: &[String]) -> Value {
    if code == 0 {
        return success();
    }
    json!({
        "metadata": {},
        "status": "Failure",
        "message": format!("command terminated with non-zero exit code: error executing command {command:?}, exit code {code}"),
        "reason": "NonZeroExitCode",
        "details": { "causes": [{ "reason": "ExitCode", "message": code.to_string() }] },
    })
}

type Output = Pin<Box<dyn Stream<Item = Result<LogOutput, bollard::errors::Error>> + Send>>;
type Input = Pin<Box<dyn AsyncWrite + Send>>;

pub async fn exec(State(endpoint): State<Endpoint>, path: ContainerPath, request: Request) -> Response {
    let axum::extract::Path((namespace, pod, container)) = path;
    let params = Params::parse(request.uri().query());
    let command = params.all("command");
    let prepared = async {
        let stdio = stdio(&params)?;
        if command.is_empty() {
            return Err(Refusal::bad_request("you must specify at least one command for the container"));
        }
        let target = endpoint.running(&namespace, &pod, &container).await?;
        let docker = endpoint.runtime.docker();
        let config = ExecConfig {
            attach_stdin: Some(stdio.stdin),
            attach_stdout: Some(stdio.stdout),
            attach_stderr: Some(stdio.stderr),
            tty: Some(stdio.tty),
            cmd: Some(command.clone()),
            ..Default::default()
        };
        let id = docker.create_exec(&target.id, config).await.map_err(|e| Refusal::internal(format!("creating the exec: {e}")))?.id;
        Ok((stdio, id))
    };
    let (stdio, id) = match prepared.await {
        Ok(p) => p,
        Err(refusal) => return refusal.into_response(),
    };
    let docker = endpoint.runtime.docker().clone();
    upgrade(request, stdio, move || async move {
        let options = StartExecOptions { detach: false, tty: stdio.tty, output_capacity: None };
        match docker.start_exec(&id, Some(options)).await {
            Ok(StartExecResults::Attached { output, input }) => Ok((docker, Target::Exec(id), output, input, command)),
            Ok(StartExecResults::Detached) => Err("the exec started detached".to_owned()),
            Err(e) => Err(format!("starting the exec: {e}")),
        }
    })
}

pub async fn attach(State(endpoint): State<Endpoint>, path: ContainerPath, request: Request) -> Response {
    let axum::extract::Path((namespace, pod, container)) = path;
    let params = Params::parse(request.uri().query());
    let prepared = async {
        let stdio = stdio(&params)?;
        Ok::<_, Refusal>((stdio, endpoint.running(&namespace, &pod, &container).await?.id))
    };
    let (stdio, id) = match prepared.await {
        Ok(p) => p,
        Err(refusal) => return refusal.into_response(),
    };
    let docker = endpoint.runtime.docker().clone();
    upgrade(request, stdio, move || async move {
        let options = AttachContainerOptions { stdin: stdio.stdin, stdout: stdio.stdout, stderr: stdio.stderr, stream: true, logs: false, detach_keys: None };
        match docker.attach_container(&id, Some(options)).await {
            Ok(attached) => Ok((docker, Target::Attach(id), attached.output, attached.input, Vec::new())),
            Err(e) => Err(format!("attaching: {e}")),
        }
    })
}

type Started = Result<(Docker, Target, Output, Input, Vec<String>), String>;

/// Answers the WebSocket handshake and runs the session once upgraded.
fn upgrade<F, Fut>(mut request: Request, stdio: Stdio, start: F) -> Response
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Started> + Send,
{
    let headers = request.headers();
    if !websocket::is_websocket(headers) {
        return Refusal::bad_request("exec and attach are served over WebSocket (v5.channel.k8s.io or v4.channel.k8s.io)").into_response();
    }
    let Some(protocol) = websocket::choose(headers, &[V5, V4]) else {
        let offered = websocket::offered_protocols(headers).join(", ");
        return Refusal::bad_request(format!("requested protocol(s) are not supported: [{offered}]; supports [{V5} {V4}]")).into_response();
    };
    let Some(response) = websocket::switching_protocols(headers, protocol) else {
        return Refusal::bad_request("the WebSocket handshake lacks Sec-WebSocket-Key").into_response();
    };
    let Some(on_upgrade) = request.extensions_mut().remove::<hyper::upgrade::OnUpgrade>() else {
        return Refusal::internal("this connection cannot be upgraded").into_response();
    };
    let v5 = protocol == V5;
    tokio::spawn(async move {
        let Some(socket) = websocket::accept(on_upgrade).await else { return };
        match start().await {
            Ok((docker, target, output, input, command)) => session(socket, &docker, target, output, input, stdio, v5, &command).await,
            Err(message) => {
                let mut socket = socket;
                let _ = send(&mut socket, STATUS, failure(message).to_string().as_bytes()).await;
                websocket::close(&mut socket).await;
            }
        }
    });
    response
}

async fn send<S: futures::Sink<Message> + Unpin>(sink: &mut S, channel: u8, data: &[u8]) -> Result<(), S::Error> {
    let mut frame = Vec::with_capacity(data.len() + 1);
    frame.push(channel);
    frame.extend_from_slice(data);
    sink.send(Message::binary(frame)).await
}

#[allow(clippy::too_many_arguments)]
async fn session(socket: Socket, docker: &Docker, target: Target, mut output: Output, mut input: Input, stdio: Stdio, v5: bool, command: &[String]) {
    let (mut sink, mut messages) = socket.split();
    let client = async {
        while let Some(Ok(message)) = messages.next().await {
            let data = match message {
                Message::Binary(data) => data,
                Message::Close(_) => break,
                _ => continue,
            };
            match (data.first().copied(), data.get(1).copied()) {
                (Some(STDIN), _) if stdio.stdin && (input.write_all(&data[1..]).await.is_err() || input.flush().await.is_err()) => break,
                (Some(RESIZE), _) => {
                    if let Ok(size) = serde_json::from_slice::<Value>(&data[1..]) {
                        let dimension = |k: &str| size.get(k).and_then(Value::as_i64).unwrap_or(0) as i32;
                        target.resize(docker, dimension("Width"), dimension("Height")).await;
                    }
                }
                (Some(CLOSE), Some(STDIN)) if v5 => {
                    let _ = input.shutdown().await;
                }
                _ => {}
            }
        }
    };
    let process = async {
        while let Some(Ok(chunk)) = output.next().await {
            let (channel, bytes) = match chunk {
                LogOutput::StdOut { message } | LogOutput::Console { message } => (STDOUT, message),
                LogOutput::StdErr { message } => (STDERR, message),
                LogOutput::StdIn { .. } => continue,
            };
            if send(&mut sink, channel, &bytes).await.is_err() {
                return None;
            }
        }
        Some(sink)
    };
    // The session ends when the process's output does, or when the client leaves.
    let sink = tokio::select! {
        sink = process => sink,
        _ = client => None,
    };
    if let Some(mut sink) = sink {
        let status = target.status(docker, command).await;
        let _ = send(&mut sink, STATUS, status.to_string().as_bytes()).await;
        websocket::close(&mut sink).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_become_the_status_clients_read() {
        assert_eq!(exit_status(0, &[])["status"], "Success");
        let failed = exit_status(3, &["sh".into(), "-c".into(), "exit 3".into()]);
        assert_eq!((failed["status"].as_str(), failed["reason"].as_str()), (Some("Failure"), Some("NonZeroExitCode")));
        assert_eq!(failed["details"]["causes"][0], json!({ "reason": "ExitCode", "message": "3" }));
    }

    #[test]
    fn a_terminal_merges_stderr_and_some_stream_is_required() {
        let s = stdio(&Params::parse(Some("stdin=true&stdout=true&stderr=true&tty=true"))).unwrap();
        assert_eq!(s, Stdio { stdin: true, stdout: true, stderr: false, tty: true });
        let s = stdio(&Params::parse(Some("stdout=True&stderr=True"))).unwrap();
        assert!(s.stdout && s.stderr && !s.tty);
        assert!(stdio(&Params::parse(Some("tty=true"))).is_err());
    }
}
