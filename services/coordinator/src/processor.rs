//! The event processor: folds every execution event, in log order, into the execution's state
//! and appends what `decide` returns.
//!
//! Each `StepScheduled` it reads from the log it copies to the workers' dispatch queue before
//! acking it: the log doubles as the outbox of that second write.
//!
//! One coordinator replica processes at a time (the consumer's pinned client); the others wait
//! on standby. Events of one execution always go to the same shard task, so each execution's
//! state in memory is a gap-free prefix of its events in the log. Appends expect the last
//! sequence that state has seen: if anyone appended in between, the append is refused, the
//! state is dropped, and the next delivered event (the one that got in between, at the latest)
//! rebuilds it from the log and decides again. Nothing is acked before its effects are stored.

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use chrono::Utc;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use cadre_proto::streams::{self, ACTIVE_GROUP, PINNED_PULL_EXPIRY};
use cadre_proto::{Envelope, Event, ExecutionId, TenantId, WorkflowId, subjects};
use cadre_runtime::bus::{self, EventBus, NatsError, PublishError};
use cadre_runtime::health::Readiness;
use cadre_runtime::telemetry;

use crate::SOURCE;
use crate::domain::execution::{Command, State, Status, decide, evolve};

/// How long a failed event waits before it is redelivered.
const RETRY_DELAY: Duration = Duration::from_secs(1);
/// How long in-flight events may take to finish once stopping.
const DRAIN_DEADLINE: Duration = Duration::from_secs(15);

/// An execution's state and the stream sequence of the last event folded into it.
struct Folded {
    state: State,
    last_sequence: u64,
    tenant: TenantId,
    workflow_id: WorkflowId,
}

impl Folded {
    fn is_finished(&self) -> bool {
        matches!(&self.state, State::Started(e) if e.status != Status::Running)
    }
}

pub async fn run(
    bus: EventBus,
    shards: usize,
    shutdown: CancellationToken,
    readiness: Readiness,
) -> Result<(), NatsError> {
    let consumer: jetstream::consumer::PullConsumer = bus
        .stream()
        // Create or update: a consumer left by an older release takes today's settings.
        .create_consumer(streams::coordinator_consumer())
        .await?;
    let tracker = TaskTracker::new();
    let senders: Vec<mpsc::Sender<jetstream::Message>> = (0..shards.max(1))
        .map(|_| {
            let (sender, receiver) = mpsc::channel(1024);
            tracker.spawn(shard(bus.clone(), receiver));
            sender
        })
        .collect();
    let mut messages = consumer
        .stream()
        .group(ACTIVE_GROUP)
        .expires(PINNED_PULL_EXPIRY)
        .max_messages_per_batch(1000)
        .messages()
        .await?;
    readiness.set(true);
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => break,
            next = messages.next() => next,
        };
        match next {
            Some(Ok(message)) if !subjects::is_execution_state(&message.subject) => {
                // Agents, workflows, knowledge, interactions: not the coordinator's business.
                if let Err(error) = message.ack().await {
                    tracing::warn!(%error, "ack failed; the event will be redelivered");
                }
            }
            Some(Ok(message)) => {
                let shard = shard_of(&message.subject, senders.len());
                if senders[shard].send(message).await.is_err() {
                    break;
                }
            }
            Some(Err(error)) => tracing::warn!(%error, "pulling execution events failed; retrying"),
            None => break,
        }
    }
    readiness.set(false);
    drop(senders);
    tracker.close();
    if tokio::time::timeout(DRAIN_DEADLINE, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("stopped before every in-flight event finished; they will be redelivered");
    }
    // Hand the pin to a standby now rather than after PIN_TIMEOUT of silence.
    drop(messages);
    if let Err(error) = bus
        .stream()
        .unpin_consumer(streams::COORDINATOR_CONSUMER, ACTIVE_GROUP)
        .await
    {
        tracing::warn!(%error, "could not release the consumer's pin; a standby takes over when it expires");
    }
    Ok(())
}

/// Events of one execution share a shard: the execution id is the subject's 7th token.
fn shard_of(subject: &str, shards: usize) -> usize {
    let mut hasher = DefaultHasher::new();
    subject
        .split('.')
        .nth(6)
        .unwrap_or(subject)
        .hash(&mut hasher);
    (hasher.finish() % shards as u64) as usize
}

async fn shard(bus: EventBus, mut messages: mpsc::Receiver<jetstream::Message>) {
    let mut executions: HashMap<ExecutionId, Folded> = HashMap::new();
    while let Some(message) = messages.recv().await {
        let span = tracing::info_span!("coordinator.event", subject = %message.subject);
        telemetry::extract(message.headers.as_ref(), &span);
        handle(&bus, &mut executions, message)
            .instrument(span)
            .await;
    }
}

async fn handle(
    bus: &EventBus,
    executions: &mut HashMap<ExecutionId, Folded>,
    message: jetstream::Message,
) {
    let sequence = match message.info() {
        Ok(info) => info.stream_sequence,
        Err(error) => {
            bus::terminate(&message, &format!("no JetStream metadata: {error}")).await;
            return;
        }
    };
    let envelope = match Envelope::decode(&message.payload) {
        Ok(envelope) => envelope,
        Err(error) => {
            bus::terminate(&message, &error.to_string()).await;
            return;
        }
    };
    let (Some(execution_id), Some(workflow_id)) =
        (envelope.event.execution_id(), envelope.event.workflow_id())
    else {
        bus::terminate(&message, "not an execution event").await;
        return;
    };
    // The log is the workers' outbox: every scheduled step stored in it is handed to them
    // before its delivery is acked, so none is lost between the two writes.
    if let Event::StepScheduled(_) = &envelope.event
        && let Err(error) = bus.dispatch(&envelope).await
    {
        tracing::warn!(%error, sequence, "dispatching a step failed; redelivering");
        let _ = message.ack_with(AckKind::Nak(Some(RETRY_DELAY))).await;
        return;
    }
    match fold_and_decide(
        bus,
        executions,
        sequence,
        envelope,
        execution_id,
        workflow_id,
    )
    .await
    {
        Ok(()) => {
            if let Err(error) = message.ack().await {
                tracing::warn!(%error, sequence, "ack failed; the event will be redelivered");
            }
        }
        Err(error) => {
            // The execution's state was dropped with the error: the redelivery rebuilds it.
            tracing::warn!(%error, sequence, %execution_id, "event not processed; redelivering");
            let _ = message.ack_with(AckKind::Nak(Some(RETRY_DELAY))).await;
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum ProcessError {
    #[error(transparent)]
    Read(#[from] bus::ReadError),
    #[error(transparent)]
    Publish(#[from] PublishError),
}

async fn fold_and_decide(
    bus: &EventBus,
    executions: &mut HashMap<ExecutionId, Folded>,
    sequence: u64,
    envelope: Envelope,
    execution_id: ExecutionId,
    workflow_id: WorkflowId,
) -> Result<(), ProcessError> {
    let tenant = envelope.meta.tenant;
    let mut folded = match executions.remove(&execution_id) {
        Some(mut folded) => {
            // At or below what we folded already: a redelivery or our own append coming back.
            if sequence > folded.last_sequence {
                folded.state = evolve(folded.state, &envelope.event);
                folded.last_sequence = sequence;
            }
            folded
        }
        // An execution's end decides nothing more; most often it is our own append coming
        // back after we dropped the finished state. Replaying the execution to learn that
        // would cost a scan of the log per execution.
        None if matches!(
            envelope.event,
            Event::ExecutionCompleted(_) | Event::ExecutionFailed(_)
        ) =>
        {
            return Ok(());
        }
        // The first event of an execution needs no replay.
        None if matches!(envelope.event, Event::ExecutionStarted(_)) => Folded {
            state: evolve(State::NotStarted, &envelope.event),
            last_sequence: sequence,
            tenant,
            workflow_id,
        },
        None => replay(bus, tenant, workflow_id, execution_id).await?,
    };
    let filter = subjects::execution_state(&folded.tenant, folded.workflow_id, execution_id);
    let decided = match decide(
        &Command::Advance {
            watermark: folded.last_sequence,
        },
        &folded.state,
    ) {
        Ok(events) => events,
        Err(error) => {
            tracing::error!(%error, %execution_id, "the execution cannot advance");
            Vec::new()
        }
    };
    let now = Utc::now();
    let envelopes: Vec<Envelope> = decided
        .into_iter()
        .map(|event| Envelope::new(SOURCE, folded.tenant.clone(), now, event))
        .collect();
    match bus
        .append_after(&envelopes, &filter, folded.last_sequence)
        .await
    {
        Ok(last_sequence) => {
            folded.state = envelopes
                .iter()
                .fold(folded.state, |state, e| evolve(state, &e.event));
            folded.last_sequence = last_sequence;
        }
        Err(PublishError::Conflict { .. }) => {
            // Someone appended after what we saw; that event is on its way to us and will
            // rebuild the state from the log, which also holds whatever of ours got in.
            tracing::debug!(%execution_id, "append raced another writer; will rebuild");
            return Ok(());
        }
        Err(error) => return Err(error.into()),
    }
    if !folded.is_finished() {
        executions.insert(execution_id, folded);
    }
    Ok(())
}

/// Rebuilds an execution's state from its events in the log.
async fn replay(
    bus: &EventBus,
    tenant: TenantId,
    workflow_id: WorkflowId,
    execution_id: ExecutionId,
) -> Result<Folded, bus::ReadError> {
    let stored = bus
        .read_all(&subjects::execution_state(
            &tenant,
            workflow_id,
            execution_id,
        ))
        .await?;
    let last_sequence = stored.last().map(|s| s.sequence).unwrap_or(0);
    let state = stored.iter().fold(State::NotStarted, |state, s| {
        evolve(state, &s.envelope.event)
    });
    Ok(Folded {
        state,
        last_sequence,
        tenant,
        workflow_id,
    })
}
