//! Stream and consumer settings. Services create or update them at start-up from here, so
//! every replica and every test agrees on them.

use std::time::Duration;

use async_nats::jetstream::{consumer, kv, object_store, stream};

use crate::{subjects, timers};

/// The event log: every fact, kept forever, never edited.
pub const EVENTS_STREAM: &str = "CADRE_EVENTS";

/// How long JetStream remembers a `Nats-Msg-Id` to drop a re-published copy. Beyond it, the
/// consumers' own idempotency takes over (the projector's event index, the coordinator's state).
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// Largest event accepted; a step's LLM output is the biggest payload.
pub const MAX_EVENT_BYTES: i32 = 1024 * 1024;

pub fn events_stream(replicas: usize) -> stream::Config {
    stream::Config {
        name: EVENTS_STREAM.to_owned(),
        description: Some("Cadre event log: the source of truth".to_owned()),
        subjects: vec![subjects::ALL_EVENTS.to_owned()],
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        num_replicas: replicas,
        duplicate_window: DUPLICATE_WINDOW,
        max_message_size: MAX_EVENT_BYTES,
        allow_direct: true,
        // Group commits (a workflow's starts) are atomic batches.
        allow_atomic_publish: true,
        // The log is append-only: no message is deleted or purged, so a replay from sequence 1
        // always sees everything that happened.
        deny_delete: true,
        deny_purge: true,
        ..Default::default()
    }
}

/// The agent workers' queue: a copy of each `StepScheduled`, removed once a worker acks it.
/// Workers read it rather than the log because a JetStream consumer filtering a wildcard out
/// of a stream of many distinct subjects walks every block's subject index on each delivery;
/// a consumer whose filter is its stream's whole subject space reads sequentially.
pub const DISPATCH_STREAM: &str = "CADRE_DISPATCH";

/// The header of a step in the workers' queue that gives the log sequence of the
/// `StepScheduled` it is a copy of (decimal). A worker that finds this event still the latest
/// of the step knows nothing has happened to the step since, and need not look up each of its
/// possible outcomes; a copy without it (a deferred step handed back) gets the full check.
pub const LOG_SEQUENCE_HEADER: &str = "Cadre-Log-Sequence";

pub fn dispatch_stream(replicas: usize) -> stream::Config {
    stream::Config {
        name: DISPATCH_STREAM.to_owned(),
        description: Some("Cadre steps handed to agent workers".to_owned()),
        subjects: vec![subjects::ALL_DISPATCHED_STEPS.to_owned()],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        num_replicas: replicas,
        duplicate_window: DUPLICATE_WINDOW,
        max_message_size: MAX_EVENT_BYTES,
        // A step whose provider asked to be called later waits here as a message schedule
        // (see `subjects::deferred_step`), not in a worker's memory or a held delivery.
        allow_message_schedules: true,
        ..Default::default()
    }
}

/// Durable timers: schedule messages and the messages they fire (see [`crate::timers`]). Not
/// the source of truth: what a fired timer means is decided and recorded in the event log.
pub const TIMERS_STREAM: &str = "CADRE_TIMERS";

/// How long a fired timer stays in the timers stream; its consumer takes it within moments.
pub const FIRED_TIMER_TTL: Duration = Duration::from_secs(24 * 3600);

pub fn timers_stream(replicas: usize) -> stream::Config {
    stream::Config {
        name: TIMERS_STREAM.to_owned(),
        description: Some("Cadre durable timers (message schedules)".to_owned()),
        subjects: vec![timers::ALL.to_owned()],
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        num_replicas: replicas,
        // One message per subject: a timer armed again replaces its schedule, and a timer
        // that fired again replaces its previous firing.
        max_messages_per_subject: 1,
        allow_message_schedules: true,
        // Fired timers carry a TTL (`Nats-Schedule-TTL`) so the stream does not keep them.
        allow_message_ttl: true,
        ..Default::default()
    }
}

/// CloudEvents that start workflow runs (see [`subjects::trigger`]), removed once a run is
/// started for them.
pub const TRIGGERS_STREAM: &str = "CADRE_TRIGGERS";

/// Largest trigger event accepted.
pub const MAX_TRIGGER_BYTES: i32 = 64 * 1024;

pub fn triggers_stream(replicas: usize) -> stream::Config {
    stream::Config {
        name: TRIGGERS_STREAM.to_owned(),
        description: Some("CloudEvents that start Cadre workflow runs".to_owned()),
        subjects: vec![subjects::ALL_TRIGGERS.to_owned()],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        num_replicas: replicas,
        duplicate_window: DUPLICATE_WINDOW,
        max_message_size: MAX_TRIGGER_BYTES,
        ..Default::default()
    }
}

pub const COORDINATOR_TRIGGERS_CONSUMER: &str = "coordinator-triggers";

/// The coordinator's trigger events: one replica at a time (the pinned client) starts their
/// runs; which one does not matter, since starts are appended with an expected sequence.
pub fn coordinator_triggers_consumer() -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(COORDINATOR_TRIGGERS_CONSUMER.to_owned()),
        description: Some("coordinator: CloudEvents that start runs".to_owned()),
        filter_subject: subjects::ALL_TRIGGERS.to_owned(),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: Duration::from_secs(30),
        max_ack_pending: 1_000,
        priority_policy: consumer::PriorityPolicy::PinnedClient,
        priority_groups: vec![ACTIVE_GROUP.to_owned()],
        priority_timeout: PIN_TIMEOUT,
        ..Default::default()
    }
}

/// Which workflows start when a run of another completes (`triggers.afterWorkflows`), kept
/// from the workflows' definitions so a completion finds its dependants by key prefix.
pub const WORKFLOW_LINKS_BUCKET: &str = "CADRE_WORKFLOW_LINKS";

pub fn workflow_links_bucket(replicas: usize) -> kv::Config {
    kv::Config {
        bucket: WORKFLOW_LINKS_BUCKET.to_owned(),
        description: "Cadre: workflow A's completion starts workflow B".to_owned(),
        history: 1,
        storage: stream::StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    }
}

/// Step results too large for an event (claim checks, see [`crate::model::ObjectRef`]).
pub const RESULTS_BUCKET: &str = "CADRE_RESULTS";

/// Largest step result an event carries whole, as JSON; a larger one goes to
/// [`RESULTS_BUCKET`] and the event carries previews.
pub const INLINE_RESULT_BYTES: usize = 64 * 1024;

pub fn results_object_store(replicas: usize) -> object_store::Config {
    object_store::Config {
        bucket: RESULTS_BUCKET.to_owned(),
        description: Some("Cadre step results too large for an event".to_owned()),
        storage: stream::StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    }
}

/// Start idempotency keys: each maps a client's key to the execution it started.
pub const IDEMPOTENCY_BUCKET: &str = "CADRE_IDEMPOTENCY";

/// How long an idempotency key holds: a retry within a day gets the same execution.
pub const IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(24 * 3600);

pub fn idempotency_bucket(replicas: usize) -> kv::Config {
    kv::Config {
        bucket: IDEMPOTENCY_BUCKET.to_owned(),
        description: "Cadre start idempotency keys -> execution ids".to_owned(),
        history: 1,
        max_age: IDEMPOTENCY_WINDOW,
        storage: stream::StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    }
}

/// The priority group whose single pinned client does the work of a consumer; other replicas
/// pull the same group and wait on standby, taking over when the pin times out.
pub const ACTIVE_GROUP: &str = "active";
/// How long a silent pinned client keeps its pin.
pub const PIN_TIMEOUT: Duration = Duration::from_secs(15);
/// Pull expiry for pinned consumers: well below [`PIN_TIMEOUT`], so a live client never loses it.
pub const PINNED_PULL_EXPIRY: Duration = Duration::from_secs(5);

pub const AGENT_WORKER_CONSUMER: &str = "agent-worker";

/// How many partitions the coordinator's work is split into: the most coordinator replicas
/// that can share it. Part of the wire contract: every execution's partition derives from it,
/// so changing it moves running executions between partitions.
pub const EXECUTION_PARTITIONS: u16 = 16;

/// The coordinator's inbox: what it decides on, copied by the server from the event log (every
/// execution's state events and every workflow's own facts) and from the timers stream (fired
/// timers), each on `cadre.partition.<p>.<original subject>`. An execution's events and timers
/// share a partition (the server hashes the execution id; a workflow's facts and schedule ticks
/// hash the workflow id), so the replica working a partition sees each execution in log order.
/// A work queue: a message leaves it once decided on, so each partition's consumer reads only
/// its own backlog, never filtering the whole log.
pub const PARTITIONS_STREAM: &str = "CADRE_PARTITIONS";

/// The inbox, its sources starting at `events_from` in the event log and `timers_from` in the
/// timers stream (1 on a new system; where the coordinator had got to on one upgraded from a
/// single coordinator consumer).
pub fn partitions_stream(replicas: usize, events_from: u64, timers_from: u64) -> stream::Config {
    // One source per stream, with a transform per kind of subject: the server handles two
    // sources from one stream unreliably (one of them was seen never to copy anything).
    let source = |name: &str, from: u64, keyed: &[(&str, usize)]| stream::Source {
        name: name.to_owned(),
        start_sequence: (from > 1).then_some(from),
        subject_transforms: keyed
            .iter()
            .map(|&(filter, key)| stream::SubjectTransform {
                source: filter.to_owned(),
                destination: subjects::partitioning(filter, key, EXECUTION_PARTITIONS),
            })
            .collect(),
        ..Default::default()
    };
    stream::Config {
        name: PARTITIONS_STREAM.to_owned(),
        description: Some("Cadre coordinator inbox, partitioned by execution".to_owned()),
        subjects: Vec::new(),
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        num_replicas: replicas,
        sources: Some(vec![
            source(
                EVENTS_STREAM,
                events_from,
                &[
                    (subjects::ALL_EXECUTION_STATES, 3),
                    (subjects::ALL_WORKFLOW_LIFECYCLES, 2),
                ],
            ),
            source(TIMERS_STREAM, timers_from, &[(timers::ALL_FIRED, 2)]),
        ]),
        ..Default::default()
    }
}

/// The consumers a single coordinator replica used before the work was partitioned; a
/// coordinator that finds them starts the inbox where they had got to, then deletes them.
pub const RETIRED_COORDINATOR_CONSUMERS: [(&str, &str); 2] = [
    (EVENTS_STREAM, "coordinator"),
    (TIMERS_STREAM, "coordinator-timers"),
];

pub fn coordinator_partition_consumer_name(partition: u16) -> String {
    format!("coordinator-p{partition}")
}

/// One partition of the coordinator's inbox. The replica that owns the partition (see
/// [`COORDINATORS_BUCKET`]) pulls it as the pinned client, so even while replicas disagree for
/// a moment on who owns what, one replica at a time folds a partition's executions.
pub fn coordinator_partition_consumer(partition: u16) -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(coordinator_partition_consumer_name(partition)),
        description: Some(format!(
            "coordinator: partition {partition} of the executions, folded and decided"
        )),
        filter_subject: subjects::partition(partition),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: Duration::from_secs(30),
        max_ack_pending: 5_000,
        priority_policy: consumer::PriorityPolicy::PinnedClient,
        priority_groups: vec![ACTIVE_GROUP.to_owned()],
        priority_timeout: PIN_TIMEOUT,
        ..Default::default()
    }
}

/// How often a replica of a service that shares its work (coordinators, projectors) rewrites
/// its key in the service's membership bucket.
pub const MEMBERSHIP_HEARTBEAT: Duration = Duration::from_secs(3);
/// How long a replica's key outlives its last heartbeat: a replica that stops heartbeating
/// drops out after this, and its work passes to the others. One that stops cleanly deletes its
/// key, and its work passes at once.
pub const MEMBERSHIP_TTL: Duration = Duration::from_secs(10);

/// The live coordinator replicas, which share the execution partitions.
pub const COORDINATORS_BUCKET: &str = "CADRE_COORDINATORS";
/// The live projector replicas, which share the projections.
pub const PROJECTORS_BUCKET: &str = "CADRE_PROJECTORS";

/// A membership bucket: one key per live replica, expiring [`MEMBERSHIP_TTL`] after its last
/// heartbeat. In memory: it only says who is alive now.
pub fn membership_kv(bucket: &str, description: &str, replicas: usize) -> kv::Config {
    kv::Config {
        bucket: bucket.to_owned(),
        description: description.to_owned(),
        history: 1,
        max_age: MEMBERSHIP_TTL,
        storage: stream::StorageType::Memory,
        num_replicas: replicas,
        ..Default::default()
    }
}

pub fn coordinators_kv(replicas: usize) -> kv::Config {
    membership_kv(
        COORDINATORS_BUCKET,
        "Cadre coordinator replicas sharing the execution partitions",
        replicas,
    )
}

pub fn projectors_kv(replicas: usize) -> kv::Config {
    membership_kv(
        PROJECTORS_BUCKET,
        "Cadre projector replicas sharing the projections",
        replicas,
    )
}

/// How often a step is delivered without being settled (each worker that took it crashed or
/// was stopped while running it) before the coordinator records its attempt as failed. A
/// provider's transient failure does not count: the worker settles that delivery and lets the
/// step wait on a message schedule (see `subjects::deferred_step`).
pub const AGENT_WORKER_MAX_DELIVER: i64 = 5;

/// How long a delivered step may go unsettled, with no word from its worker, before the server
/// hands it to another: a worker sends in-progress acks three times per period while it runs a
/// step (or waits for a slot for one), so only a worker that crashed, hung or lost NATS holds a
/// step this long, and its steps run elsewhere this soon after.
pub const AGENT_WORKER_ACK_WAIT: Duration = Duration::from_secs(10);

/// Where the server announces a step that reached [`AGENT_WORKER_MAX_DELIVER`] deliveries with
/// none acked, for the queue of any provider.
pub fn agent_worker_max_deliveries_advisory() -> String {
    format!("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{DISPATCH_STREAM}.*")
}

/// The name of the queue of steps for `provider`'s agents.
pub fn agent_worker_consumer_name(provider: &str) -> String {
    format!("{AGENT_WORKER_CONSUMER}-{provider}")
}

/// The agent-worker replicas that offer `provider` share this queue on [`DISPATCH_STREAM`];
/// each step goes to one of them. A replica offering several providers reads several queues.
/// A step for a provider no replica offers waits in the stream until one starts.
pub fn agent_worker_consumer(provider: &str) -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(agent_worker_consumer_name(provider)),
        description: Some(format!(
            "agent workers offering provider {provider}: run its scheduled steps"
        )),
        filter_subject: subjects::dispatched_steps_for(provider),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: AGENT_WORKER_ACK_WAIT,
        max_deliver: AGENT_WORKER_MAX_DELIVER,
        max_ack_pending: 20_000,
        ..Default::default()
    }
}

/// The live registry of agent workers and the providers they offer: one key per worker,
/// rewritten every [`WORKER_HEARTBEAT`]; a worker that stops heartbeating drops out after
/// [`WORKER_TTL`]. The coordinator reads it to warn about agents no worker can serve.
pub const WORKERS_BUCKET: &str = "CADRE_WORKERS";
pub const WORKER_HEARTBEAT: Duration = Duration::from_secs(5);
pub const WORKER_TTL: Duration = Duration::from_secs(15);

pub fn workers_kv(replicas: usize) -> kv::Config {
    kv::Config {
        bucket: WORKERS_BUCKET.to_owned(),
        description: "Cadre agent workers and the LLM providers they offer".to_owned(),
        history: 1,
        max_age: WORKER_TTL,
        storage: stream::StorageType::Memory,
        num_replicas: replicas,
        ..Default::default()
    }
}

/// The projections: groups of read models that the projector folds the log into, each with
/// its own Postgres lock and checkpoint (the row of `projection_checkpoints` of that name), so
/// projector replicas can share them; a replica reads the log once, through an ephemeral
/// consumer, for all the projections it holds. Read models that read each other's rows are in
/// the same group. The read models as a whole cover the lowest of their checkpoints.
pub const PROJECTIONS: [&str; 4] = [
    RUNS_PROJECTION,
    INTERACTIONS_PROJECTION,
    KNOWLEDGE_PROJECTION,
    CATALOG_PROJECTION,
];
pub const RUNS_PROJECTION: &str = "runs";
pub const INTERACTIONS_PROJECTION: &str = "interactions";
/// `collaboration_knowledge` alone: what workers rank the team's knowledge from.
pub const KNOWLEDGE_PROJECTION: &str = "knowledge";
pub const CATALOG_PROJECTION: &str = "catalog";

/// The durable consumer every read model was folded through before they were split into
/// [`PROJECTIONS`]; a projector deletes it.
pub const RETIRED_PROJECTOR_CONSUMER: &str = "projector";

/// Webhook subscriptions' signing secrets (the raw key bytes), by subscription id: outside the
/// event log, which subscribers read.
pub const WEBHOOK_SECRETS_BUCKET: &str = "CADRE_WEBHOOK_SECRETS";

pub fn webhook_secrets_bucket(replicas: usize) -> kv::Config {
    kv::Config {
        bucket: WEBHOOK_SECRETS_BUCKET.to_owned(),
        description: "Cadre webhook subscription id -> signing key".to_owned(),
        history: 1,
        storage: stream::StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    }
}

/// How many times one event is offered to a subscription's endpoint before it is given up
/// (the last failure is recorded with no retry).
pub const WEBHOOK_MAX_ATTEMPTS: u32 = 8;

/// The wait before each next try of a failed delivery, by the number of the try that failed;
/// the last is repeated. About 2 h 10 min from the first try to the eighth.
pub const WEBHOOK_BACKOFF: [Duration; 7] = [
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(5),
    Duration::from_secs(30),
    Duration::from_secs(120),
    Duration::from_secs(600),
    Duration::from_secs(3600),
];

pub fn webhook_consumer_name(subscription: crate::SubscriptionId) -> String {
    format!("webhook-{subscription}")
}

/// The durable consumer that delivers to one subscription, from the event stored after the
/// subscription (`start_sequence`): one event at a time, so the endpoint sees them in log
/// order and a failing endpoint holds back only its own deliveries.
pub fn webhook_consumer(
    tenant: &crate::TenantId,
    subscription: crate::SubscriptionId,
    start_sequence: u64,
) -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(webhook_consumer_name(subscription)),
        description: Some(format!("webhook subscription {subscription}")),
        filter_subject: subjects::tenant_events(tenant),
        deliver_policy: consumer::DeliverPolicy::ByStartSequence { start_sequence },
        ack_policy: consumer::AckPolicy::Explicit,
        // Longer than a delivery's time-out, so a slow endpoint is not offered the event twice.
        ack_wait: Duration::from_secs(60),
        max_ack_pending: 1,
        max_deliver: i64::from(WEBHOOK_MAX_ATTEMPTS),
        ..Default::default()
    }
}
