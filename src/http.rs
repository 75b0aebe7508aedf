//! The operator's HTTP endpoints (axum):
//!
//! - `GET /metrics`: [`Metrics::encode`] in OpenMetrics text format;
//! - `GET /healthz`: liveness, `200 ok` while the process serves requests;
//! - `GET /readyz`: readiness, `200 ok` once [`Readiness::set_ready`] was called with `true`,
//!   else `503` with the reason given to the last `set_ready(false, reason)`.

use std::future::Future;
use std::sync::{Arc, RwLock};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::metrics::{Metrics, OPENMETRICS_CONTENT_TYPE};

/// A shared readiness flag with a reason. Cloning is cheap; all clones share the flag.
/// Starts not ready, with the reason `starting`.
#[derive(Clone, Debug)]
pub struct Readiness {
    inner: Arc<RwLock<ReadyState>>,
}

#[derive(Debug)]
struct ReadyState {
    ready: bool,
    reason: String,
}

impl Default for Readiness {
    fn default() -> Self {
        Self::new()
    }
}

impl Readiness {
    /// A new flag: not ready, reason `starting`.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(RwLock::new(ReadyState {
                ready: false,
                reason: "starting".to_owned(),
            })),
        }
    }

    /// Sets the flag. `reason` is shown by `/readyz` while not ready (keep it short, one line).
    pub fn set_ready(&self, ready: bool, reason: impl Into<String>) {
        let mut state = self
            .inner
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        state.ready = ready;
        state.reason = reason.into();
    }

    /// Whether the flag is set.
    pub fn is_ready(&self) -> bool {
        self.status().0
    }

    /// The flag and its reason.
    pub fn status(&self) -> (bool, String) {
        let state = self.inner.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        (state.ready, state.reason.clone())
    }
}

/// What the HTTP handlers need.
#[derive(Clone, Debug)]
pub struct HttpState {
    pub metrics: Metrics,
    pub ready: Readiness,
}

/// The routes, for embedding or testing without a socket.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// Serves the endpoints on `listener` until `shutdown` completes, then finishes the requests
/// in flight and returns.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: HttpState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
    }
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn metrics(State(state): State<HttpState>) -> Response {
    (
        [(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)],
        state.metrics.encode(),
    )
        .into_response()
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(state): State<HttpState>) -> Response {
    match state.ready.status() {
        (true, _) => (StatusCode::OK, "ok").into_response(),
        (false, reason) => {
            let reason = if reason.is_empty() {
                "not ready".to_owned()
            } else {
                reason
            };
            (StatusCode::SERVICE_UNAVAILABLE, reason).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    struct Reply {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    }

    impl Reply {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(key, _)| key.eq_ignore_ascii_case(name))
                .map(|(_, value)| value.as_str())
        }
    }

    /// A minimal HTTP/1.1 client: one request per connection, `Connection: close`.
    async fn get(addr: SocketAddr, path: &str) -> Reply {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("send request");
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.expect("read response");
        let raw = String::from_utf8(raw).expect("UTF-8 response");
        let (head, body) = raw.split_once("\r\n\r\n").expect("HTTP head");
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|line| line.split(' ').nth(1))
            .and_then(|code| code.parse().ok())
            .expect("status line");
        let headers: Vec<(String, String)> = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(key, value)| (key.trim().to_owned(), value.trim().to_owned()))
            .collect();
        let chunked = headers
            .iter()
            .any(|(key, value)| key.eq_ignore_ascii_case("transfer-encoding") && value.contains("chunked"));
        let body = if chunked { dechunk(body) } else { body.to_owned() };
        Reply {
            status,
            headers,
            body,
        }
    }

    fn dechunk(mut data: &str) -> String {
        let mut out = String::new();
        loop {
            let (size, rest) = data.split_once("\r\n").expect("chunk size");
            let size = usize::from_str_radix(size.trim(), 16).expect("hex chunk size");
            if size == 0 {
                return out;
            }
            out.push_str(&rest[..size]);
            data = &rest[size + 2..];
        }
    }

    async fn start() -> (
        SocketAddr,
        HttpState,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<std::io::Result<()>>,
    ) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let state = HttpState {
            metrics: Metrics::new(),
            ready: Readiness::new(),
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, state.clone(), async move {
            let _ = stopped.await;
        }));
        (addr, state, stop, server)
    }

    #[tokio::test]
    async fn healthz_is_ok() {
        let (addr, _state, stop, server) = start().await;
        let reply = get(addr, "/healthz").await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body, "ok");
        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn readyz_follows_the_flag() {
        let (addr, state, stop, server) = start().await;

        let reply = get(addr, "/readyz").await;
        assert_eq!(reply.status, 503);
        assert_eq!(reply.body, "starting");

        state.ready.set_ready(true, "");
        let reply = get(addr, "/readyz").await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body, "ok");

        state.ready.set_ready(false, "caches not synced");
        let reply = get(addr, "/readyz").await;
        assert_eq!(reply.status, 503);
        assert_eq!(reply.body, "caches not synced");

        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn metrics_are_openmetrics() {
        let (addr, state, stop, server) = start().await;
        state.metrics.ceph_write("create_image");
        state.metrics.reconcile_timer("VirtualMachine").ok();

        let reply = get(addr, "/metrics").await;
        assert_eq!(reply.status, 200);
        assert_eq!(
            reply.header("content-type"),
            Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
        );
        assert!(
            reply
                .body
                .contains(r#"seapath_ceph_write_calls_total{op="create_image"} 1"#),
            "{}",
            reply.body
        );
        assert!(
            reply
                .body
                .contains(r#"seapath_reconciles_total{kind="VirtualMachine",result="ok"} 1"#),
            "{}",
            reply.body
        );
        assert!(reply.body.ends_with("# EOF\n"), "{}", reply.body);

        let reply = get(addr, "/nope").await;
        assert_eq!(reply.status, 404);

        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn shutdown_stops_the_server() {
        let (addr, _state, stop, server) = start().await;
        stop.send(()).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), server)
            .await
            .expect("server stops after shutdown")
            .unwrap()
            .unwrap();
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }
}
