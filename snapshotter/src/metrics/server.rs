//! The HTTP endpoint: `/metrics` (the registry, in the OpenMetrics text
//! format Prometheus scrapes) and `/healthz` (200 once the snapshots API
//! serves on its socket and the block store answers; 503 naming what
//! fails otherwise). Anything else is 404. Plain HTTP/1.1, GET only.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use slayerfs_chunkstore::{BlockStore, IndexDigest, ObjectKey};

/// How long a health check waits on the socket or the store.
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// What `/healthz` checks.
pub struct Health {
    /// The snapshots API's unix socket.
    pub socket: PathBuf,
    /// The store lazily pulled layers are read from.
    pub store: Arc<dyn BlockStore>,
}

struct State {
    registry: Registry,
    health: Health,
}

/// Serves on `listener` (bound early, so that an address in use stops a
/// start before anything else is opened) until the runtime ends; returns
/// the address it serves on.
pub fn serve(
    listener: tokio::net::TcpListener,
    registry: Registry,
    health: Health,
) -> std::io::Result<SocketAddr> {
    let bound = listener.local_addr()?;
    let state = Arc::new(State { registry, health });
    tokio::spawn(async move {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let state = state.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(answer(&state, req).await) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service);
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "metrics endpoint: connection ended");
                }
            });
        }
    });
    Ok(bound)
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    r
}

async fn answer(state: &State, req: Request<Incoming>) -> Response<Full<Bytes>> {
    const PLAIN: &str = "text/plain; charset=utf-8";
    if req.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, PLAIN, "GET only\n".into());
    }
    match req.uri().path() {
        "/metrics" => {
            let _span = tracing::debug_span!("metrics").entered();
            let mut body = String::new();
            match prometheus_client::encoding::text::encode(&mut body, &state.registry) {
                Ok(()) => text(
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    body,
                ),
                Err(e) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    PLAIN,
                    format!("encoding the metrics failed: {e}\n"),
                ),
            }
        }
        "/healthz" => {
            let failing = health(&state.health).await;
            if failing.is_empty() {
                text(StatusCode::OK, PLAIN, "ok\n".into())
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    PLAIN,
                    format!("{}\n", failing.join("\n")),
                )
            }
        }
        _ => text(
            StatusCode::NOT_FOUND,
            PLAIN,
            "not found: /metrics, /healthz\n".into(),
        ),
    }
}

/// What fails, one line each; empty when healthy.
async fn health(h: &Health) -> Vec<String> {
    let mut failing = Vec::new();
    let socket = tokio::time::timeout(CHECK_TIMEOUT, tokio::net::UnixStream::connect(&h.socket));
    match socket.await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => failing.push(format!(
            "grpc: the snapshots API socket {} refuses connections: {e}",
            h.socket.display()
        )),
        Err(_) => failing.push(format!(
            "grpc: no connection to {} within {CHECK_TIMEOUT:?}",
            h.socket.display()
        )),
    }
    // Any answer will do, "no such object" included: the store is there.
    let probe = ObjectKey::Index(IndexDigest::of(b"slayerfs health check"));
    match tokio::time::timeout(CHECK_TIMEOUT, h.store.exists(&probe)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => failing.push(format!(
            "store: {} fails: {}",
            h.store.location(),
            slayerfs_chunkstore::error_chain(&e)
        )),
        Err(_) => failing.push(format!(
            "store: {} did not answer within {CHECK_TIMEOUT:?}",
            h.store.location()
        )),
    }
    failing
}
