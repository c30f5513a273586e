//! Cadre's coordinator: the HTTP command API and the event-sourced execution state machine.
//!
//! [`domain`] is the pure core (decide/evolve, assignment, validation). [`api`] validates
//! commands and appends their events; [`processor`] folds execution events and appends the
//! decisions; [`alerts`] watches how agents' attempts end, appends the alerts on their
//! performance and keeps their records for [`starter`]; `console` serves the web console
//! beside the API. The coordinator never writes to
//! Postgres: it only reads the projector's models, and a command answers once they have caught
//! up with it (bounded), so a client reads its own writes.

mod alerts;
pub mod api;
pub mod command;
mod console;
pub mod domain;
pub mod partitions;
pub mod processor;
pub mod read;
pub mod starter;
pub mod system_templates;
mod triggers;
mod webhooks;
pub mod workers;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use cadre_proto::TenantId;
use cadre_runtime::bus::{self, EventBus};
use cadre_runtime::health::Readiness;
use cadre_runtime::membership;
use cadre_runtime::projection::ProjectionWatermark;

/// The CloudEvents `source` of every event the coordinator emits.
pub(crate) const SOURCE: &str = "/cadre/coordinator";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    pub nats_url: String,
    pub database_url: String,
    pub http_addr: SocketAddr,
    /// JetStream replicas of the event stream (3 in a cluster).
    pub stream_replicas: usize,
    /// This replica's name among the coordinators sharing the execution partitions; unique
    /// per running replica. Default: the host name (the pod name under Kubernetes) and a
    /// random suffix.
    pub replica_id: String,
    /// Parallel lanes of the event processor; one execution always uses the same lane. Each
    /// lane waits for its appends, so lanes, not CPU, bound throughput when there are too few.
    pub shards: usize,
    pub db_max_connections: u32,
    /// How deep child runs (steps with `childWorkflowId`) may nest.
    pub max_child_depth: u32,
    /// How long a command waits for the read models to reach the events it appended before it
    /// answers, so that the client's next query sees them; 0 answers at once. Either way the
    /// response says whether they had (`Cadre-Read-Models`).
    pub read_your_writes_timeout_ms: u64,
}

impl Config {
    pub fn read_your_writes_timeout(&self) -> Duration {
        Duration::from_millis(self.read_your_writes_timeout_ms)
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            nats_url: "nats://127.0.0.1:4222".into(),
            database_url: "postgres://postgres@127.0.0.1:5432/cadre".into(),
            http_addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            stream_replicas: 1,
            replica_id: membership::default_replica_id("coordinator"),
            shards: 128,
            db_max_connections: 16,
            max_child_depth: 5,
            read_your_writes_timeout_ms: 5000,
        }
    }
}

/// A started coordinator.
pub struct Running {
    /// Where the HTTP API listens (useful with port 0).
    pub http_addr: SocketAddr,
    owned: watch::Receiver<BTreeSet<u16>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// The execution partitions this replica works, as they change.
    pub fn partitions(&self) -> watch::Receiver<BTreeSet<u16>> {
        self.owned.clone()
    }

    /// Waits until the coordinator has stopped (after `shutdown` is cancelled).
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await.context("coordinator task panicked")?
    }
}

/// Connects, binds the API and starts the event processor; returns once serving.
pub async fn start(config: Config, shutdown: CancellationToken) -> anyhow::Result<Running> {
    let client = bus::connect(&config.nats_url, "cadre-coordinator")
        .await
        .map_err(|e| anyhow::anyhow!("connecting to NATS at {}: {e}", config.nats_url))?;
    let bus = EventBus::open(async_nats::jetstream::new(client), config.stream_replicas)
        .await
        .map_err(|e| anyhow::anyhow!("opening the event stream: {e}"))?;
    system_templates::register(&bus, &TenantId::default_tenant())
        .await
        .context("registering the system templates")?;
    // The alert watcher keeps the agents' records; the starter records them in each start.
    let records = starter::Records::default();
    let starter = starter::Starter::open(
        bus.clone(),
        config.stream_replicas,
        config.max_child_depth,
        records.clone(),
    )
    .await
    .map_err(|e| anyhow::anyhow!("opening the idempotency store: {e}"))?;
    let results = bus
        .jetstream()
        .create_object_store(cadre_proto::streams::results_object_store(
            config.stream_replicas,
        ))
        .await
        .map_err(|e| anyhow::anyhow!("opening the results store: {e}"))?;
    let services = processor::Services::open(bus.clone(), starter.clone(), config.stream_replicas)
        .await
        .map_err(|e| anyhow::anyhow!("opening the workflow links: {e}"))?;
    let webhook_secrets = bus
        .jetstream()
        .create_or_update_key_value(cadre_proto::streams::webhook_secrets_bucket(
            config.stream_replicas,
        ))
        .await
        .map_err(|e| anyhow::anyhow!("opening the webhook signing keys: {e}"))?;
    let workers = workers::WorkerRegistry::open(bus.jetstream(), config.stream_replicas)
        .await
        .map_err(|e| anyhow::anyhow!("opening the worker registry: {e}"))?;
    // Lazy: the API's commands work while Postgres is down; only its queries answer 503.
    let db = read::pool_options()
        .max_connections(config.db_max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy(&config.database_url)
        .context("parsing DATABASE_URL")?;
    // Keeps one of the pool's connections to listen for the projector's checkpoints.
    let read_models = ProjectionWatermark::start(db.clone());
    let listener = tokio::net::TcpListener::bind(config.http_addr)
        .await
        .with_context(|| format!("binding the API to {}", config.http_addr))?;
    let http_addr = listener.local_addr()?;
    // Not tied to NATS: while it is away the API still serves what Postgres holds, and refuses
    // commands with a problem that says why (a coordinator taken out of its Service could
    // say neither).
    let readiness = Readiness::default();
    let state = api::AppState::new(api::AppContext {
        bus: bus.clone(),
        db,
        tenant: TenantId::default_tenant(),
        starter: starter.clone(),
        links: services.links.clone(),
        results,
        workers,
        read_models,
        read_your_writes: config.read_your_writes_timeout(),
        shutdown: shutdown.clone(),
        webhook_secrets: webhook_secrets.clone(),
    });
    let app = api::router(state.clone(), readiness.clone()).merge(console::router(state));
    tracing::info!(%http_addr, "coordinator API listening");

    let (owned_sender, owned) = watch::channel(BTreeSet::new());
    let replica = processor::Replica {
        id: config.replica_id,
        replicas: config.stream_replicas,
        owned: owned_sender,
    };
    let task = tokio::spawn(async move {
        let processor = tokio::spawn(processor::run(
            services,
            replica,
            config.shards,
            shutdown.clone(),
            readiness,
        ));
        let alerts = tokio::spawn(alerts::run(bus.clone(), records, shutdown.clone()));
        let webhooks = tokio::spawn(webhooks::run(bus, webhook_secrets, shutdown.clone()));
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.clone().cancelled_owned())
            .await
            .context("serving the API")?;
        alerts.await.context("alert watcher panicked")?;
        webhooks.await.context("webhook delivery panicked")?;
        processor
            .await
            .context("event processor panicked")?
            .map_err(|e| anyhow::anyhow!("event processor: {e}"))
    });
    Ok(Running {
        http_addr,
        owned,
        task,
    })
}

pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    start(config, shutdown).await?.wait().await
}
