//! Cadre's agent worker: it runs the workflow steps the coordinator schedules.
//!
//! Steps are routed by capability: each LLM provider has its own queue (`agent-worker-<provider>`)
//! and a replica reads only the queues of the providers it is configured with, so it never takes
//! a step it cannot run; a step whose provider no running replica offers waits in its queue. Each
//! replica announces what it offers in the live worker registry.
//!
//! Each scheduled step is done by one replica: it announces the step (`StepStarted`), reads
//! its dependencies' results and the knowledge they hand on from the log, asks the agent's LLM
//! with the seed's prompt (carrying the workflow's knowledge most relevant to the step, within a
//! token budget), and records what came back in one `StepCompleted`: the result, the knowledge
//! used, and what the agent told its team (`told`: its questions as an `InteractionRecorded`,
//! its insights and decisions as `KnowledgeShared`, the knowledge it confirmed or replaced as
//! `KnowledgeValidated` and `KnowledgeSuperseded`) — or `StepFailed` when the provider refuses
//! for good. The message is acked only after that is stored, and every event id derives from
//! the scheduled event's id, so a redelivered step changes nothing.
//!
//! The worker decides nothing about the execution (which step comes next, retries of a failed
//! step, the execution's outcome: that is the coordinator's), and it writes no read model
//! (that is the projector's); it only reads them.

// In tests a panic is the failure report.
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod calls;
mod claim;
pub mod config;
#[cfg(test)]
mod fixtures;
mod knowledge;
pub mod llm;
pub mod prompt;
mod pull;
mod registry;
mod step;
mod worker;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::consumer::PullConsumer;
use cadre_proto::{streams, subjects};
use cadre_runtime::bus::{self, EventBus};
use cadre_runtime::health::Readiness;
use cadre_runtime::membership::LivenessBucket;
use sqlx::postgres::PgPoolOptions;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::{CircuitBreakerConfig, Config, HttpProviderConfig, OfflineAnswer, ProviderConfig};

use crate::calls::RunningCalls;
use crate::knowledge::KnowledgeView;
use crate::llm::Providers;
use crate::pull::{Pulling, StepQueue};
use crate::worker::Worker;
use cadre_proto::workers::WorkerRecord;

/// How long shutdown waits for running steps; below Kubernetes' default 30 s grace period.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the last acknowledgements may take to reach NATS once stopping.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(3);
/// How long steps handed back at the drain deadline get to send their nak.
const ABANDON_TIMEOUT: Duration = Duration::from_secs(2);
/// Read-model connections; one of them listens for checkpoint notifications.
const DATABASE_CONNECTIONS: u32 = 16;

/// Runs the worker until `shutdown`, then lets running steps finish (for up to 20 s).
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    run_with_readiness(config, Readiness::default(), shutdown).await
}

/// [`run`], reporting on `readiness` whether the worker is consuming.
pub async fn run_with_readiness(
    config: Config,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let providers =
        Providers::from_config(&config.providers).context("configuring LLM providers")?;
    let pool = PgPoolOptions::new()
        .max_connections(DATABASE_CONNECTIONS)
        .connect_lazy(&config.database_url)
        .context("parsing database_url")?;
    let knowledge = KnowledgeView::start(pool);

    let client_name = format!("cadre-agent-worker/{}", config.worker_id);
    let Some(client) = shutdown
        .run_until_cancelled(bus::connect(&config.nats_url, &client_name))
        .await
    else {
        return Ok(());
    };
    let client = client.map_err(|error| anyhow::anyhow!(error).context("connecting to NATS"))?;
    let bus = EventBus::open(async_nats::jetstream::new(client), config.stream_replicas)
        .await
        .map_err(|error| anyhow::anyhow!(error).context("opening the event stream"))?;
    let offered: Vec<String> = providers.names().map(str::to_owned).collect();
    if let Some(bad) = offered
        .iter()
        .find(|name| !subjects::is_provider_name(name))
    {
        anyhow::bail!(
            "provider name {bad:?} cannot name a step queue: use lowercase letters, digits, '-' \
             and '_' only"
        );
    }
    let consumers = provider_queues(&bus, &offered).await?;
    let registry =
        LivenessBucket::open(bus.jetstream(), streams::workers_kv(config.stream_replicas))
            .await
            .map_err(|error| anyhow::anyhow!(error).context("opening the worker registry"))?;
    let record = WorkerRecord {
        worker_id: config.worker_id.clone(),
        providers: offered.clone(),
        concurrency: config.concurrency,
        started_at: chrono::Utc::now(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
    };
    let announcing = CancellationToken::new();
    let announcer = tokio::spawn(registry::announce(registry, record, announcing.clone()));

    let results = bus
        .jetstream()
        .create_object_store(streams::results_object_store(config.stream_replicas))
        .await
        .context("opening the results store")?;
    let calls = RunningCalls::default();
    let stop_listener = tokio::spawn(
        calls
            .clone()
            .listen(bus.jetstream().client(), shutdown.clone()),
    );
    let worker = Arc::new(Worker {
        bus,
        results,
        calls,
        providers,
        knowledge,
        knowledge_limit: config.knowledge_limit,
        retry_budget: config.retry_budget(),
        dependency_budget: config.dependency_budget_chars,
        prices: config.prices.clone(),
    });
    tracing::info!(
        worker_id = config.worker_id,
        concurrency = config.concurrency,
        providers = ?offered,
        "agent worker consuming scheduled steps"
    );
    readiness.needs_nats(worker.bus.jetstream().client());
    let consumed = consume(
        worker,
        consumers,
        config.concurrency.max(1),
        readiness,
        shutdown,
    )
    .await;
    announcing.cancel();
    if let Err(error) = announcer.await {
        tracing::warn!(%error, "the registry announcer panicked");
    }
    match stop_listener.await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::warn!(%error, "could not listen for stop requests"),
        Err(error) => tracing::warn!(%error, "the stop listener panicked"),
    }
    consumed
}

/// The step queues of the `providers` this replica offers, created or brought to today's
/// settings.
async fn provider_queues(
    bus: &EventBus,
    providers: &[String],
) -> anyhow::Result<Vec<PullConsumer>> {
    let queue = bus.dispatch_stream();
    // Releases before capability routing had one queue over every dispatched step; a work
    // queue refuses overlapping consumers, so it goes (its steps' subjects are no longer used).
    if queue
        .consumer_info(streams::AGENT_WORKER_CONSUMER)
        .await
        .is_ok()
    {
        tracing::info!("removing the single agent-worker queue of an older release");
        queue
            .delete_consumer(streams::AGENT_WORKER_CONSUMER)
            .await
            .context("removing the old agent-worker queue")?;
    }
    let mut consumers = Vec::with_capacity(providers.len());
    for provider in providers {
        // Create or update: a consumer left by an older release takes today's settings.
        let consumer = queue
            .create_consumer(streams::agent_worker_consumer(provider))
            .await
            .with_context(|| format!("creating the step queue of provider {provider:?}"))?;
        consumers.push(consumer);
    }
    Ok(consumers)
}

/// Pulls steps from every queue for the slots that are free, each step in its own task; on
/// shutdown stops pulling and drains.
async fn consume(
    worker: Arc<Worker>,
    consumers: Vec<PullConsumer>,
    concurrency: usize,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let pulling = Pulling {
        worker: worker.clone(),
        slots: Arc::new(Semaphore::new(concurrency)),
        steps: TaskTracker::new(),
        abandon: CancellationToken::new(),
        shutdown: shutdown.child_token(),
    };
    let queues: Vec<StepQueue> = consumers
        .into_iter()
        .map(|consumer| StepQueue::new(consumer, worker.bus.jetstream()))
        .collect();
    readiness.set(true);
    // A queue that fails stops the others too, each handing back what it holds.
    let pulled = futures::future::join_all(queues.into_iter().map(|queue| async {
        let pulled = queue.pull(&pulling).await;
        if pulled.is_err() {
            pulling.shutdown.cancel();
        }
        pulled
    }))
    .await;
    let outcome = pulled
        .into_iter()
        .collect::<anyhow::Result<Vec<()>>>()
        .map(drop);

    readiness.set(false);
    let Pulling { steps, abandon, .. } = pulling;
    steps.close();
    tracing::info!(running = steps.len(), "draining running steps");
    if tokio::time::timeout(DRAIN_TIMEOUT, steps.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            running = steps.len(),
            "steps still running at the drain deadline; handing them back"
        );
        abandon.cancel();
        if tokio::time::timeout(ABANDON_TIMEOUT, steps.wait())
            .await
            .is_err()
        {
            tracing::warn!(running = steps.len(), "steps did not stop in time");
        }
    }
    // Acks are only queued by the client: send them before the connection goes away, or the
    // steps they settle would wait out their ack deadline and run again.
    // Bounded: with NATS gone the flush would wait for ever, and a stopping pod must stop.
    match tokio::time::timeout(FLUSH_TIMEOUT, worker.bus.jetstream().client().flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::warn!(%error, "could not flush the last acknowledgements"),
        Err(_) => tracing::warn!(
            "NATS did not take the last acknowledgements in time; their steps will be redelivered and found done"
        ),
    }
    outcome
}
