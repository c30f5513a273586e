//! Liveness and readiness over HTTP for the services without an API of their own
//! (`/healthz`: the process runs; `/readyz`: it is connected and consuming).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

/// Set once a service is ready to do its work; cleared while it drains. Not ready either while
/// its NATS connection, once given ([`Readiness::needs_nats`]), is down: what it would do then
/// waits or fails.
#[derive(Clone, Default)]
pub struct Readiness(Arc<Inner>);

#[derive(Default)]
struct Inner {
    ready: AtomicBool,
    nats: OnceLock<async_nats::Client>,
}

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.ready.store(ready, Ordering::Relaxed);
    }

    /// Counts the service ready only while `client` is connected.
    pub fn needs_nats(&self, client: async_nats::Client) {
        let _ = self.0.nats.set(client);
    }

    pub fn is_ready(&self) -> bool {
        self.0.ready.load(Ordering::Relaxed)
            && self.0.nats.get().is_none_or(|client| {
                client.connection_state() == async_nats::connection::State::Connected
            })
    }
}

/// The `/healthz` and `/readyz` routes, for services that merge them into a larger router.
pub fn routes(readiness: Readiness) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .with_state(readiness)
}

async fn ready(State(readiness): State<Readiness>) -> (StatusCode, &'static str) {
    if readiness.is_ready() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

/// Serves [`routes`] on `addr` until `shutdown`; returns the bound address (port 0 picks one).
pub async fn serve(
    addr: SocketAddr,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        let served = axum::serve(listener, routes(readiness))
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(error) = served {
            tracing::error!(%error, "health server stopped");
        }
    });
    Ok(bound)
}
