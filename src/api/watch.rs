//! Watches as Kubernetes serves them: a chunked stream of one JSON event per line,
//! started from a resourceVersion (or from the current state, sent as synthetic
//! ADDED events), filtered by selectors (an object leaving a selector is DELETED
//! for that watcher), with bookmarks, a timeout, and a 410 Expired ERROR event —
//! inside an HTTP 200 — when the requested history is gone.

use super::codec::Output;
use super::error::{ApiError, ApiResult};
use super::object::ObjectExt;
use super::rest::{Ctx, Selectors, decode_stored};
use super::table::{self, IncludeObject};
use crate::store::{Event, EventKind, KeyValue, ListRequest, Revision, StoreError, WatchStream};
use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use futures::StreamExt;
use http::{StatusCode, header};
use serde_json::{Value, json};
use std::time::Duration;
use tokio::sync::mpsc;

/// How often a watch with bookmarks enabled reports its progress.
const BOOKMARK_EVERY: Duration = Duration::from_secs(60);
/// Server-side watch timeout bounds when the client gives none (upstream: 30–60 min).
const DEFAULT_TIMEOUT_MIN_SECS: u64 = 1800;

/// How events of one watch are rendered.
struct Render {
    resource: std::sync::Arc<super::registry::Resource>,
    output: Output,
    include: IncludeObject,
    selectors: Selectors,
    /// Table columns go only with the first Table event.
    columns_sent: bool,
}

impl Render {
    fn line(&mut self, kind: &str, object: &Value) -> Bytes {
        let object = match self.output {
            Output::Table(v) if kind != "BOOKMARK" && kind != "ERROR" => {
                let with_columns = !self.columns_sent;
                self.columns_sent = true;
                table::table(&self.resource, std::slice::from_ref(object), json!({}), self.include, v, with_columns)
            }
            Output::Metadata(v) if kind != "BOOKMARK" && kind != "ERROR" => table::partial_metadata(object, v),
            _ => object.clone(),
        };
        let mut line = serde_json::to_vec(&json!({ "type": kind, "object": object })).unwrap_or_default();
        line.push(b'\n');
        Bytes::from(line)
    }

    fn bookmark(&mut self, revision: Revision, initial_events_end: bool) -> Bytes {
        let mut meta = json!({ "resourceVersion": revision.to_string() });
        if initial_events_end {
            meta["annotations"] = json!({ "k8s.io/initial-events-end": "true" });
        }
        let object = json!({ "kind": self.resource.kind, "apiVersion": self.resource.api_version(), "metadata": meta });
        self.line("BOOKMARK", &object)
    }

    /// The watch events one store event becomes for this watcher.
    fn events(&mut self, event: &Event) -> ApiResult<Option<Bytes>> {
        let decode = |value: &Bytes, rev: Revision| {
            decode_stored(&KeyValue { key: event.key.clone(), value: value.clone(), mod_revision: rev })
        };
        let new = event.value.as_ref().map(|v| decode(v, event.revision)).transpose()?;
        let old = event.prev.as_ref().map(|p| decode(&p.value, p.mod_revision)).transpose()?;
        let matches = |o: &Option<Value>| o.as_ref().is_some_and(|o| self.selectors.matches(&self.resource, o));
        let (was, is) = (matches(&old), matches(&new));
        Ok(match (event.kind, was, is) {
            (EventKind::Created, _, true) | (EventKind::Updated, false, true) => Some(self.line("ADDED", new.as_ref().expect("matched"))),
            (EventKind::Updated, true, true) => Some(self.line("MODIFIED", new.as_ref().expect("matched"))),
            (EventKind::Updated, true, false) => Some(self.line("DELETED", new.as_ref().expect("updated objects exist"))),
            (EventKind::Deleted, true, _) => {
                let mut gone = old.expect("matched");
                gone.set_meta("resourceVersion", event.revision.to_string());
                Some(self.line("DELETED", &gone))
            }
            _ => None,
        })
    }
}

fn expired_event(message: String) -> Bytes {
    let status = ApiError::expired(message).status();
    let mut line = serde_json::to_vec(&json!({ "type": "ERROR", "object": status })).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

impl Ctx {
    pub async fn watch(&self) -> ApiResult<Response> {
        let selectors = self.selectors()?;
        let bookmarks = self.query.flag("allowWatchBookmarks")?;
        let include = IncludeObject::parse(self.query.get("includeObject")).map_err(ApiError::bad_request)?;
        let timeout = match self.query.number("timeoutSeconds")? {
            Some(t) if t > 0 => Duration::from_secs(t as u64),
            _ => Duration::from_secs(DEFAULT_TIMEOUT_MIN_SECS + rand_below(DEFAULT_TIMEOUT_MIN_SECS)),
        };
        let send_initial = match self.query.get("sendInitialEvents") {
            None => None,
            Some(_) => {
                if self.query.get("resourceVersionMatch") != Some("NotOlderThan") {
                    return Err(ApiError::invalid(
                        "ListOptions",
                        "meta.k8s.io",
                        "",
                        &[super::error::FieldError::forbidden(
                            "resourceVersionMatch",
                            "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
                        )],
                    ));
                }
                Some(self.query.flag("sendInitialEvents")?)
            }
        };
        let rv = self.query.get("resourceVersion").map(super::rest::parse_rv).transpose()?;
        let (prefix, _) = self.list_range(&selectors);
        let mut render = Render { resource: self.resource.clone(), output: self.output, include, selectors, columns_sent: false };
        // Legacy semantics: unset or "0" means "current state, then changes".
        let initial_state = send_initial.unwrap_or(matches!(rv, None | Some(0)));
        let mut initial = Vec::new();
        let start = if initial_state {
            if let Some(rv) = rv.filter(|rv| *rv > 0) {
                self.wait_for_revision(rv).await?;
            }
            let page = self
                .api
                .store
                .list(ListRequest { prefix: prefix.clone(), ..Default::default() })
                .await
                .map_err(|e| ApiError::from_store(e, self.resource.error_name(), ""))?;
            for kv in &page.items {
                let obj = decode_stored(kv)?;
                if render.selectors.matches(&self.resource, &obj) {
                    initial.push(render.line("ADDED", &obj));
                }
            }
            if send_initial == Some(true) && bookmarks {
                initial.push(render.bookmark(page.revision, true));
            }
            page.revision
        } else {
            rv.unwrap_or_else(|| self.api.store.revision())
        };
        let (tx, rx) = mpsc::channel::<Bytes>(64);
        match self.api.store.watch(&prefix, start) {
            Ok(stream) => {
                let shutdown = self.api.shutdown.clone();
                tokio::spawn(async move {
                    for line in initial {
                        if tx.send(line).await.is_err() {
                            return;
                        }
                    }
                    pump(stream, render, tx, bookmarks, timeout, shutdown).await;
                });
            }
            Err(StoreError::Compacted { requested, .. }) => {
                let _ = tx.try_send(expired_event(format!("too old resource version: {requested} ({})", self.api.store.compacted_revision() + 1)));
            }
            Err(e) => return Err(ApiError::from_store(e, self.resource.error_name(), "")),
        }
        let mut rx = rx;
        let body = Body::from_stream(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).map(Ok::<_, std::convert::Infallible>));
        let media = if self.output == Output::Yaml { "application/yaml" } else { "application/json" };
        Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, media)
            .header(header::CACHE_CONTROL, "no-cache, private")
            .body(body)
            .map_err(ApiError::internal)
    }
}

/// Moves events from the store to the client until the client leaves, the watch
/// times out, the server shuts down, or the history the watch needs is gone.
async fn pump(
    mut stream: WatchStream,
    mut render: Render,
    tx: mpsc::Sender<Bytes>,
    bookmarks: bool,
    timeout: Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + BOOKMARK_EVERY, BOOKMARK_EVERY);
    loop {
        let line = tokio::select! {
            _ = &mut deadline => return,
            _ = shutdown.cancelled() => return,
            _ = tx.closed() => return,
            _ = tick.tick(), if bookmarks => Some(render.bookmark(stream.progress(), false)),
            event = stream.next() => match event {
                None => return,
                Some(Ok(event)) => match render.events(&event) {
                    Ok(line) => line,
                    Err(e) => {
                        tracing::warn!(error = %e, "watch event could not be rendered");
                        None
                    }
                },
                Some(Err(StoreError::Compacted { requested, .. })) => {
                    let _ = tx.send(expired_event(format!("too old resource version: {requested}"))).await;
                    return;
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "watch failed");
                    return;
                }
            },
        };
        if let Some(line) = line
            && tx.send(line).await.is_err() {
                return;
            }
    }
}

fn rand_below(n: u64) -> u64 {
    let bytes = uuid::Uuid::new_v4();
    u64::from_le_bytes(bytes.as_bytes()[..8].try_into().expect("8 bytes")) % n.max(1)
}
