//! `GET /containerLogs/{namespace}/{pod}/{container}`: a container's output
//! from Docker's log, with the options of `kubectl logs` — `follow` (chunks
//! are sent as they come, and the stream ends when the container does),
//! `tailLines`, `sinceSeconds`/`sinceTime`, `timestamps`, `previous` (the
//! instance before the current one) and `limitBytes`.

use super::endpoint::{ContainerPath, Endpoint, Params, Refusal};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use bollard::container::LogOutput;
use bollard::query_parameters::LogsOptions;
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::mpsc;

/// What `kubectl logs` asked for, as Docker understands it.
#[derive(Debug, PartialEq)]
struct Wanted {
    options: LogsOptions,
    previous: bool,
    limit_bytes: Option<u64>,
}

fn wanted(params: &Params, now: jiff::Timestamp) -> Result<Wanted, Refusal> {
    let since_seconds = params.number("sinceSeconds")?;
    let since_time = params.get("sinceTime");
    let since = match (since_seconds, since_time) {
        (Some(_), Some(_)) => return Err(Refusal::bad_request("at most one of sinceTime or sinceSeconds may be specified")),
        (Some(s), None) if s < 1 => return Err(Refusal::bad_request("sinceSeconds must be greater than 0")),
        (Some(s), None) => now.as_second() - s,
        (None, Some(t)) => t.parse::<jiff::Timestamp>().map_err(|e| Refusal::bad_request(format!("invalid sinceTime {t:?}: {e}")))?.as_second(),
        (None, None) => 0,
    };
    let tail = match params.number("tailLines")? {
        Some(n) if n < 0 => return Err(Refusal::bad_request("tailLines must be greater than or equal to 0")),
        Some(n) => n.to_string(),
        None => "all".to_owned(),
    };
    let limit_bytes = match params.number("limitBytes")? {
        Some(n) if n < 1 => return Err(Refusal::bad_request("limitBytes must be greater than 0")),
        n => n.map(|n| n as u64),
    };
    let previous = params.flag("previous");
    Ok(Wanted {
        options: LogsOptions {
            follow: params.flag("follow") && !previous,
            stdout: true,
            stderr: true,
            since: since.clamp(0, i64::from(i32::MAX)) as i32,
            until: 0,
            timestamps: params.flag("timestamps"),
            tail,
        },
        previous,
        limit_bytes,
    })
}

pub async fn serve(State(endpoint): State<Endpoint>, path: ContainerPath, request: Request) -> Response {
    let axum::extract::Path((namespace, pod, container)) = path;
    let params = Params::parse(request.uri().query());
    match logs(&endpoint, &namespace, &pod, &container, &params).await {
        Ok(response) => response,
        Err(refusal) => refusal.into_response(),
    }
}

async fn logs(endpoint: &Endpoint, namespace: &str, name: &str, container: &str, params: &Params) -> Result<Response, Refusal> {
    let wanted = wanted(params, jiff::Timestamp::now())?;
    let pod = endpoint.pod(namespace, name)?;
    let spec = pod.spec.clone().unwrap_or_default();
    if !spec.containers.iter().chain(spec.init_containers.iter().flatten()).any(|c| c.name == container) {
        return Err(Refusal::bad_request(format!("container {container} is not valid for pod {name}")));
    }
    let instances = endpoint.instances(&pod, container).await?;
    let instance = if wanted.previous {
        instances.get(1).ok_or_else(|| Refusal::bad_request(format!("previous terminated container {container:?} in pod {name:?} not found")))?
    } else {
        instances.first().ok_or_else(|| Refusal::bad_request(format!("container {container:?} in pod {name:?} is waiting to start: ContainerCreating")))?
    };
    let mut output = Box::pin(endpoint.runtime.docker().logs(&instance.id, Some(wanted.options)));
    let (chunks, received) = mpsc::channel::<Bytes>(16);
    let mut budget = wanted.limit_bytes.unwrap_or(u64::MAX);
    tokio::spawn(async move {
        while let Some(item) = output.next().await {
            let mut bytes = match item {
                Ok(LogOutput::StdOut { message } | LogOutput::StdErr { message } | LogOutput::Console { message }) => message,
                Ok(LogOutput::StdIn { .. }) => continue,
                Err(e) => {
                    tracing::debug!(error = %e, "log stream ended");
                    break;
                }
            };
            if bytes.len() as u64 >= budget {
                bytes.truncate(budget as usize);
                let _ = chunks.send(bytes).await;
                break;
            }
            budget -= bytes.len() as u64;
            // The reader hung up: stop following.
            if chunks.send(bytes).await.is_err() {
                break;
            }
        }
    });
    let body = futures::stream::unfold(received, |mut r| async move { r.recv().await.map(|b| (Ok::<_, std::convert::Infallible>(b), r)) });
    Ok(([(http::header::CONTENT_TYPE, "text/plain")], Body::from_stream(body)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubectl_logs_options_become_dockers() {
        let now = jiff::Timestamp::from_second(1_000_000).unwrap();
        let w = wanted(&Params::parse(Some("follow=true&tailLines=5&sinceSeconds=60&timestamps=true&limitBytes=10")), now).unwrap();
        assert!(w.options.follow && w.options.timestamps && !w.previous);
        assert_eq!((w.options.tail.as_str(), w.options.since, w.limit_bytes), ("5", 1_000_000 - 60, Some(10)));
        let w = wanted(&Params::parse(Some("previous=true&follow=true&sinceTime=1970-01-02T00:00:00Z")), now).unwrap();
        assert!(w.previous && !w.options.follow, "a dead instance is not followed");
        assert_eq!((w.options.since, w.options.tail.as_str()), (86_400, "all"));
    }

    #[test]
    fn contradictory_or_malformed_options_are_refused() {
        let now = jiff::Timestamp::now();
        for query in ["sinceSeconds=5&sinceTime=2024-01-01T00:00:00Z", "tailLines=-1", "limitBytes=0", "sinceSeconds=abc", "sinceTime=yesterday"] {
            let refusal = wanted(&Params::parse(Some(query)), now).unwrap_err();
            assert_eq!(refusal.code, http::StatusCode::BAD_REQUEST, "{query}");
        }
    }
}
