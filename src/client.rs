//! How rk's own components reach the API: a `kube::Client` whose transport is the
//! API server's router, called in-process with the component's identity. The
//! same component code runs against a remote server with an HTTPS client, so
//! embedded and joined components share one code path.

use crate::api::auth::Identity;
use axum::Router;

/// A client that calls `app` directly, authenticated as `identity`.
pub fn in_process(app: Router, identity: Identity) -> kube::Client {
    let service = tower::ServiceBuilder::new()
        .map_request(move |mut request: http::Request<kube::client::Body>| {
            request.extensions_mut().insert(identity.clone());
            request.map(axum::body::Body::new)
        })
        .service(app);
    kube::Client::new(service, "default")
}
