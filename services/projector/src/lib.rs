//! Cadre's projector: folds the event log (JetStream, the source of truth) into the Postgres
//! read models that the API and the agent workers query.
//!
//! One replica is active at a time: it holds a Postgres advisory lock, and the others wait as
//! standbys. Events are applied in stream order, in batches: each batch's rows, its event ids,
//! its rejected messages and the new checkpoint commit in one transaction, which also notifies
//! `cadre_projection` with the checkpoint. Rows are built from event data only, so [`rebuild`]
//! (truncate, replay from sequence 1) reproduces them exactly.
//!
//! The projector must not decide anything or publish events: a read model that disagrees with
//! the log is fixed by replaying the log, never by writing to it.

mod feed;
mod incoming;
mod models;
mod plan;
mod store;
#[cfg(test)]
mod testing;

use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use cadre_runtime::bus::{self, EventBus};
use cadre_runtime::health::{self, Readiness};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::feed::Projector;
use crate::store::Lease;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    pub nats_url: String,
    pub database_url: String,
    /// Replicas of the event stream, should the projector be the one to create it.
    pub stream_replicas: usize,
    /// Where `/healthz` and `/readyz` are served (`run` only).
    pub health_addr: SocketAddr,
    /// Most events written in one transaction.
    pub max_batch: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            nats_url: "nats://127.0.0.1:4222".to_owned(),
            database_url: "postgres://postgres@127.0.0.1:5432/cadre".to_owned(),
            stream_replicas: 1,
            health_addr: SocketAddr::from(([0, 0, 0, 0], 9090)),
            max_batch: 1000,
        }
    }
}

/// Brings the read-model schema up to date.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    sqlx::migrate!("./migrations").run(pool).await
}

/// Serves health, then projects events as they are appended until `shutdown`. While another
/// replica holds the lock this one waits as a standby. Ready means able to take over (the event
/// stream is open): a standby that reported not ready would stall every rolling update.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let readiness = Readiness::default();
    let health = health::serve(config.health_addr, readiness.clone(), shutdown.clone())
        .await
        .with_context(|| format!("serving health on {}", config.health_addr))?;
    tracing::info!(%health, "health endpoints up");
    let Some(bus) = open_bus(&config, &shutdown).await? else {
        return Ok(());
    };
    readiness.set(true);
    let Some(lease) = Lease::acquire(&config.database_url, &shutdown).await else {
        return Ok(());
    };
    let projector = Projector {
        bus: &bus,
        database_url: &config.database_url,
        max_batch: config.max_batch.max(1),
        until: None,
    };
    let progress = projector.run(lease, &shutdown).await;
    tracing::info!(checkpoint = progress.checkpoint, "projector stopped");
    Ok(())
}

/// What [`rebuild`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RebuildReport {
    /// Stream messages applied, rejected ones included.
    pub events_replayed: u64,
    /// Of those, messages that were not readable events (now in `rejected_events`).
    pub rejected: u64,
    /// The checkpoint at the end: at least the stream's last sequence when the rebuild began.
    pub final_checkpoint: u64,
    pub elapsed: Duration,
}

impl fmt::Display for RebuildReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let seconds = self.elapsed.as_secs_f64();
        write!(
            f,
            "replayed {} events ({} rejected) up to sequence {} in {:.2}s ({:.0} events/s)",
            self.events_replayed,
            self.rejected,
            self.final_checkpoint,
            seconds,
            self.events_replayed as f64 / seconds.max(f64::EPSILON),
        )
    }
}

/// Empties the read models and replays the whole log into them, up to the stream's last
/// sequence when the rebuild takes the lock; then returns. It takes the projector lock, so it
/// waits for a running projector to stop (and keeps standbys away until it is done).
pub async fn rebuild(config: Config) -> anyhow::Result<RebuildReport> {
    let started = Instant::now();
    // Stopping a rebuild midway is safe (the next one starts over), so callers stop it by
    // dropping the future; nothing inside waits on a signal.
    let never = CancellationToken::new();
    let bus = open_bus(&config, &never)
        .await?
        .context("connecting to NATS")?;
    let mut lease = Lease::acquire(&config.database_url, &never)
        .await
        .context("taking the projector lock")?;
    let target = bus
        .stream()
        .get_info()
        .await
        .map_err(|error| anyhow::anyhow!("reading the event stream's state: {error}"))?
        .state
        .last_sequence;
    lease.reset().await.context("emptying the read models")?;
    tracing::info!(target, "read models emptied; replaying the event log");
    // The durable consumer is now ahead of checkpoint 0, so the first session recreates it
    // from the start of the log.
    let projector = Projector {
        bus: &bus,
        database_url: &config.database_url,
        max_batch: config.max_batch.max(1),
        until: Some(target),
    };
    let progress = projector.run(lease, &never).await;
    Ok(RebuildReport {
        events_replayed: progress.messages,
        rejected: progress.rejected,
        final_checkpoint: progress.checkpoint,
        elapsed: started.elapsed(),
    })
}

/// Connects to NATS (waiting for it, unless `shutdown` comes first) and opens the event stream.
async fn open_bus(
    config: &Config,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<EventBus>> {
    let client = tokio::select! {
        client = bus::connect(&config.nats_url, "cadre-projector") => {
            client.map_err(|error| anyhow::anyhow!("connecting to NATS at {}: {error}", config.nats_url))?
        }
        () = shutdown.cancelled() => return Ok(None),
    };
    let bus = EventBus::open(async_nats::jetstream::new(client), config.stream_replicas)
        .await
        .map_err(|error| anyhow::anyhow!("opening the event stream: {error}"))?;
    Ok(Some(bus))
}
