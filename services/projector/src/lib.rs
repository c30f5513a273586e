//! Cadre's projector: folds the event log (JetStream, the source of truth) into the Postgres
//! read models that the API and the agent workers query.
//!
//! The read models are folded as independent projections (see [`projection`]), each with its
//! own checkpoint. Each projection has one writer at a time, the replica that holds its
//! Postgres advisory lock; the live replicas share the projections out between them (see
//! [`assigned`]) and stand by for the others'. A replica reads the log once for all the
//! projections it holds, in stream order, in batches: each batch's rows, event ids, rejected
//! messages and new checkpoints commit in one transaction, which also notifies
//! `cadre_projection` with each projection's checkpoint. Rows are built from event data only,
//! so [`rebuild`] (truncate, replay from sequence 1) reproduces them exactly.
//!
//! The projector must not decide anything or publish events: a read model that disagrees with
//! the log is fixed by replaying the log, never by writing to it.

mod analyze;
mod feed;
mod incoming;
mod models;
mod plan;
mod projection;
mod store;
#[cfg(test)]
mod testing;

use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use cadre_proto::streams;
use cadre_runtime::bus::{self, EventBus};
use cadre_runtime::health::{self, Readiness};
use cadre_runtime::membership::{self, Membership, View};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::feed::Projector;
use crate::projection::Projection;
use crate::store::Lease;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    pub nats_url: String,
    pub database_url: String,
    /// Replicas of the event stream, should the projector be the one to create it.
    pub stream_replicas: usize,
    /// This replica's name among the projectors sharing the projections; unique per running
    /// replica. Default: the host name (the pod name under Kubernetes) and a random suffix.
    pub replica_id: String,
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
            replica_id: membership::default_replica_id("projector"),
            health_addr: SocketAddr::from(([0, 0, 0, 0], 9090)),
            max_batch: 1000,
        }
    }
}

/// Brings the read-model schema up to date.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    sqlx::migrate!("./migrations").run(pool).await
}

/// Serves health, then projects events as they are appended until `shutdown`: this replica
/// writes the projections assigned to it, each once it holds that projection's lock, and waits
/// as a standby for the others. Ready means able to take over (the event stream is open): a
/// standby that reported not ready would stall every rolling update.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let readiness = Readiness::default();
    let health = health::serve(config.health_addr, readiness.clone(), shutdown.clone())
        .await
        .with_context(|| format!("serving health on {}", config.health_addr))?;
    tracing::info!(%health, "health endpoints up");
    let Some(bus) = open_bus(&config, &shutdown).await? else {
        return Ok(());
    };
    let membership = Membership::join(
        bus.jetstream(),
        streams::projectors_kv(config.stream_replicas),
        config.replica_id.clone(),
    )
    .await
    .map_err(|error| anyhow::anyhow!("joining the projectors: {error}"))?;
    readiness.needs_nats(bus.jetstream().client());
    readiness.set(true);
    let me = membership.me().to_owned();
    let (view_sender, view) = watch::channel(None);
    let heartbeats = tokio::spawn(membership.keep(view_sender, shutdown.clone()));
    let (wanted_sender, wanted) = watch::channel(BTreeSet::new());
    tokio::spawn(follow_assignment(view, me.clone(), wanted_sender));
    let projector = Projector {
        bus,
        database_url: config.database_url.clone(),
        writer: me,
        max_batch: config.max_batch.max(1),
        until: None,
    };
    let progress = projector.run(None, wanted, &shutdown).await;
    let _ = heartbeats.await;
    tracing::info!(checkpoint = progress.checkpoint, "projector stopped");
    Ok(())
}

/// Keeps `wanted` on the projections [`assigned`] to `me` by each view of the live replicas,
/// until the views end (shutdown).
async fn follow_assignment(
    mut view: watch::Receiver<View>,
    me: String,
    wanted: watch::Sender<BTreeSet<Projection>>,
) {
    loop {
        let share: BTreeSet<Projection> = {
            let view = view.borrow_and_update();
            Projection::ALL
                .into_iter()
                .filter(|projection| assigned(&view, &me, *projection))
                .collect()
        };
        wanted.send_if_modified(|current| std::mem::replace(current, share.clone()) != share);
        if view.changed().await.is_err() {
            return;
        }
    }
}

/// Whether `me` should write `projection` while it sees `view`: with the live replicas known,
/// the projections go round the replicas in name order (`me` counts as live), so each writes
/// an even share. While this replica cannot tell whether the others count it live, none: the
/// others may have taken its projections over, and holding their locks (say, cut off from
/// NATS but not from Postgres) would stall them. The lock, not this rule, keeps two replicas
/// from writing one projection while their views differ.
fn assigned(view: &View, me: &str, projection: Projection) -> bool {
    let Some(live) = view else {
        return false;
    };
    let mut replicas: Vec<&str> = live.iter().map(String::as_str).collect();
    if let Err(place) = replicas.binary_search(&me) {
        replicas.insert(place, me);
    }
    replicas[projection as usize % replicas.len()] == me
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
/// sequence when the rebuild began; then returns. It takes every projection's lock first, so
/// it waits for running projectors to stop (and keeps standbys away until it is done).
pub async fn rebuild(config: Config) -> anyhow::Result<RebuildReport> {
    let started = Instant::now();
    // Stopping a rebuild midway is safe (the next one starts over), so callers stop it by
    // dropping the future; nothing inside waits on a signal.
    let never = CancellationToken::new();
    let bus = open_bus(&config, &never)
        .await?
        .context("connecting to NATS")?;
    let target = bus
        .stream()
        .get_info()
        .await
        .map_err(|error| anyhow::anyhow!("reading the event stream's state: {error}"))?
        .state
        .last_sequence;
    let projector = Projector {
        bus,
        database_url: config.database_url.clone(),
        writer: "rebuild".to_owned(),
        max_batch: config.max_batch.max(1),
        until: Some(target),
    };
    let every: BTreeSet<Projection> = Projection::ALL.into();
    let mut lease = Lease::connect(&projector.database_url, &projector.writer, &never)
        .await
        .context("connecting to Postgres")?;
    loop {
        lease
            .hold(&every)
            .await
            .context("taking the projection locks")?;
        if lease.projections() == every {
            break;
        }
        tracing::info!("waiting for the running projectors to stop");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    lease.reset().await.context("emptying the read models")?;
    tracing::info!(target, "read models emptied; replaying the event log");
    let (_every, wanted) = watch::channel(every);
    let progress = projector.run(Some(lease), wanted, &never).await;
    // The tables were emptied and filled again faster than autovacuum's analyze follows: until
    // it does, the planner has no statistics for them, and some reads then walk or sort whole
    // tables (see migration 0018). The rebuild owes the planner what it wrote: every table of
    // the database, which holds the read models and their bookkeeping.
    analyze::analyze(&config.database_url, analyze::Another::Wait)
        .await
        .context("analyzing the rebuilt read models")?;
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn view(names: &[&str]) -> View {
        Some(names.iter().map(|name| (*name).to_owned()).collect())
    }

    fn share(view: &View, me: &str) -> BTreeSet<Projection> {
        Projection::ALL
            .into_iter()
            .filter(|projection| assigned(view, me, *projection))
            .collect()
    }

    #[test]
    fn replicas_that_agree_write_every_projection_once_and_evenly() {
        for names in [
            &["a"][..],
            &["a", "b"],
            &["a", "b", "c"],
            &["a", "b", "c", "d", "e"],
        ] {
            let live = view(names);
            let shares: Vec<_> = names.iter().map(|me| share(&live, me)).collect();
            let mut all: Vec<_> = shares.iter().flatten().copied().collect();
            all.sort_unstable();
            assert_eq!(all, Projection::ALL, "{names:?}");
            let sizes: BTreeSet<_> = shares.iter().map(BTreeSet::len).collect();
            assert!(
                sizes.last().unwrap_or(&0) - sizes.first().unwrap_or(&0) <= 1,
                "{names:?}: {shares:?}"
            );
        }
    }

    #[test]
    fn a_replica_counts_itself_live_and_writes_nothing_while_it_cannot_tell() {
        assert_eq!(share(&view(&[]), "a").len(), Projection::ALL.len());
        assert!(share(&None, "a").is_empty());
        // Before the others see it, a joining replica already takes its share by its own view.
        assert_eq!(share(&view(&["a"]), "b").len(), Projection::ALL.len() / 2);
    }
}
