//! The event processor: folds every execution event, in log order, into the execution's
//! state; performs the effects the stored event calls for; and appends what `decide` returns.
//! Fired timers are decided on the same way. Workflow lifecycle events keep each workflow's
//! schedule and links in step with it, and what starts runs on its own (a schedule's tick, a
//! trigger CloudEvent, a run of an upstream workflow completing) goes through the same start
//! path as the API ([`crate::starter`]).
//!
//! It reads the coordinator's inbox ([`streams::partitions_stream`]): the server copies each
//! execution's events and fired timers into one of [`streams::EXECUTION_PARTITIONS`]
//! partitions, and each partition is worked by one live replica ([`crate::partitions`]), so
//! adding replicas adds deciders. Inside a replica, events and timers of one execution always
//! go to the same lane, so each execution's state in memory is a prefix of its events in the
//! log. Appends expect the last sequence that state has seen: if anyone appended in between,
//! the command path reloads the execution and decides again.
//!
//! Effects (handing a step to the workers, arming and cancelling timers, stopping calls) are
//! performed when their event is read back and before it is acked: the log is the outbox, so
//! none is lost between an append and a crash. Nothing is acked before its effects are stored.
//! One effect also goes first: a step a lane schedules is handed to the workers as soon as the
//! log has stored it ([`hand_over_early`]), and its copy read back then skips that effect.

use std::collections::hash_map::DefaultHasher;
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, kv};
use futures::StreamExt;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use cadre_proto::control::{StopCalls, stop_calls_subject};
use cadre_proto::events::{ParentStep, StepAttempt, StepCompleted, StepFailed};
use cadre_proto::model::StepResult;
use cadre_proto::streams::{self, ACTIVE_GROUP, PINNED_PULL_EXPIRY};
use cadre_proto::timers::{self, TimerMessage};
use cadre_proto::{Envelope, Event, ExecutionId, TenantId, WorkflowId, subjects};
use cadre_runtime::bus::{self, Append, EventBus, NatsError};
use cadre_runtime::health::Readiness;
use cadre_runtime::membership::Membership;
use cadre_runtime::telemetry;

use crate::command::{Aggregate, CommandError, History};
use crate::domain::execution::{Command, ExecutionDecider, TransitionRefused, effects};
use crate::domain::workflow::{self, Workflow};
use crate::domain::{ChildOutcome, Effect};
use crate::partitions;
use crate::starter::Starter;
use crate::triggers;

/// How long a failed event waits before it is redelivered.
const RETRY_DELAY: Duration = Duration::from_secs(1);
/// How long in-flight events may take to finish once stopping.
const DRAIN_DEADLINE: Duration = Duration::from_secs(15);

type Execution = Aggregate<ExecutionDecider>;

/// What a lane processes.
enum Input {
    Delivery(Box<Delivery>),
    /// This replica gave up a partition: another may now move its executions on, so no state
    /// held in memory can be trusted any more. The lane answers once it has forgotten, that is
    /// once it has finished everything it got before.
    Forget(oneshot::Sender<()>),
}

struct Delivery {
    kind: Kind,
    message: jetstream::Message,
    origin: Origin,
}

enum Kind {
    /// An execution's state event.
    Event,
    /// A workflow's own fact (created, paused, resumed).
    Workflow,
    Timer,
    /// A CloudEvent that starts a run.
    Trigger,
}

/// Where a message was first stored: the inbox holds copies of the log's events and the
/// timers stream's fired timers.
struct Origin {
    subject: String,
    sequence: u64,
}

/// What the lanes act with.
#[derive(Clone)]
pub struct Services {
    pub bus: EventBus,
    pub starter: Starter,
    /// Which workflows start after which (`triggers.afterWorkflows`).
    pub links: kv::Store,
    /// CloudEvents that start runs.
    pub triggers: jetstream::stream::Stream,
}

impl Services {
    pub async fn open(bus: EventBus, starter: Starter, replicas: usize) -> Result<Self, NatsError> {
        let links = bus
            .jetstream()
            .create_or_update_key_value(streams::workflow_links_bucket(replicas))
            .await?;
        let triggers = bus
            .jetstream()
            .get_or_create_stream(streams::triggers_stream(replicas))
            .await?;
        Ok(Self {
            bus,
            starter,
            links,
            triggers,
        })
    }
}

/// This replica among the coordinators: its name, the streams' replicas, and where it says
/// which execution partitions it works.
pub struct Replica {
    pub id: String,
    pub replicas: usize,
    /// The partitions this replica works, as they change.
    pub owned: watch::Sender<BTreeSet<u16>>,
}

pub async fn run(
    services: Services,
    replica: Replica,
    shards: usize,
    shutdown: CancellationToken,
    readiness: Readiness,
) -> Result<(), NatsError> {
    let bus = &services.bus;
    let inbox = partitions::open_inbox(bus, replica.replicas).await?;
    let membership = Membership::join(
        bus.jetstream(),
        streams::coordinators_kv(replica.replicas),
        replica.id,
    )
    .await?;
    let me = membership.me().to_owned();
    // Heartbeats run on their own, so that a busy replica never misses one and loses its share.
    let (view_sender, mut view) = watch::channel(None);
    let heartbeats = tokio::spawn(membership.keep(view_sender, shutdown.clone()));
    let triggers = services
        .triggers
        .create_consumer(streams::coordinator_triggers_consumer())
        .await?;
    let tracker = TaskTracker::new();
    let lanes: Vec<mpsc::Sender<Input>> = (0..shards.max(1))
        .map(|_| {
            let (sender, receiver) = mpsc::channel(1024);
            tracker.spawn(lane(services.clone(), receiver));
            sender
        })
        .collect();
    let mut pulls = Pulls::new();
    let mut triggers = pinned_messages(&triggers).await?;
    // One replica records each abandoned step: the advisory goes to one member of the group.
    let mut abandoned_steps = bus
        .jetstream()
        .client()
        .queue_subscribe(
            streams::agent_worker_max_deliveries_advisory(),
            "cadre-coordinators".to_owned(),
        )
        .await?;
    readiness.set(true);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Ok(()) = view.changed() => {
                // No view: this replica may no longer count as alive; it works nothing.
                let live = view.borrow_and_update().clone();
                let owned = live
                    .as_ref()
                    .map_or_else(BTreeSet::new, |live| partitions::owned(live, &me));
                rebalance(&inbox, &lanes, &mut pulls, &owned, &shutdown).await;
                replica.owned.send_if_modified(|current| {
                    let changed = *current != owned;
                    if changed {
                        let live = live.as_ref().map(BTreeSet::len);
                        tracing::info!(replica = me, ?live, ?owned, "partitions assigned");
                        *current = owned;
                    }
                    changed
                });
            }
            Some(advisory) = abandoned_steps.next() => {
                if let Err(error) = fail_abandoned_step(bus, &advisory.payload).await {
                    tracing::warn!(%error, "could not record a step no worker finished");
                }
            }
            next = triggers.next() => match next {
                Some(Ok(message)) => {
                    let origin = Origin {
                        subject: message.subject.to_string(),
                        sequence: message.info().map_or(0, |info| info.stream_sequence),
                    };
                    let input = Input::Delivery(Box::new(Delivery { kind: Kind::Trigger, message, origin }));
                    if lanes[lane_of(&input, lanes.len())].send(input).await.is_err() {
                        break;
                    }
                }
                Some(Err(error)) => tracing::warn!(%error, "pulling trigger events failed; retrying"),
                None => break,
            },
        }
    }
    readiness.set(false);
    // Leaves the coordinators, so the others start pulling this replica's partitions.
    let _ = heartbeats.await;
    let mut held = Vec::new();
    for (partition, puller) in std::mem::take(&mut pulls) {
        held.push((partition, puller.stop().await));
    }
    drop(lanes);
    tracker.close();
    if tokio::time::timeout(DRAIN_DEADLINE, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("stopped before every in-flight event finished; they will be redelivered");
    }
    // Hand the pins to the other replicas now rather than after PIN_TIMEOUT of silence.
    drop(triggers);
    for (partition, pin) in held {
        unpin_if_held(&inbox, partition, pin).await;
    }
    if let Err(error) = services
        .triggers
        .unpin_consumer(streams::COORDINATOR_TRIGGERS_CONSUMER, ACTIVE_GROUP)
        .await
    {
        tracing::warn!(%error, "could not release the triggers' pin; another replica takes over when it expires");
    }
    Ok(())
}

/// The partitions this replica pulls.
type Pulls = BTreeMap<u16, Puller>;

/// The task handing one partition's messages to the lanes.
struct Puller {
    stop: CancellationToken,
    /// The `Nats-Pin-Id` the server last delivered with: this replica's pin on the partition.
    pin: Arc<std::sync::Mutex<Option<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Puller {
    /// Stops it; returns once it hands the lanes nothing more, with the pin it held.
    async fn stop(self) -> Option<String> {
        self.stop.cancel();
        let _ = self.task.await;
        self.pin.lock().ok().and_then(|pin| pin.clone())
    }
}

/// Starts pulling the partitions newly `owned` (and those whose puller ended) and stops
/// pulling those given up: only once the lanes have finished what those handed them does it
/// release their pins, so the next owner starts where this replica stopped.
async fn rebalance(
    inbox: &jetstream::stream::Stream,
    lanes: &[mpsc::Sender<Input>],
    pulls: &mut Pulls,
    owned: &BTreeSet<u16>,
    shutdown: &CancellationToken,
) {
    let given_up: Vec<u16> = pulls
        .iter()
        .filter(|(partition, puller)| !owned.contains(partition) || puller.task.is_finished())
        .map(|(partition, _)| *partition)
        .collect();
    let mut held = Vec::new();
    for partition in given_up {
        if let Some(puller) = pulls.remove(&partition) {
            held.push((partition, puller.stop().await));
        }
    }
    if !held.is_empty() {
        let mut forgotten = Vec::new();
        for lane in lanes {
            let (done, forgot) = oneshot::channel();
            if lane.send(Input::Forget(done)).await.is_ok() {
                forgotten.push(forgot);
            }
        }
        futures::future::join_all(forgotten).await;
        for (partition, pin) in held.into_iter().filter(|(p, _)| !owned.contains(p)) {
            unpin_if_held(inbox, partition, pin).await;
        }
    }
    for &partition in owned {
        if pulls.contains_key(&partition) {
            continue;
        }
        let name = streams::coordinator_partition_consumer_name(partition);
        let consumer = match inbox.get_consumer(&name).await {
            Ok(consumer) => consumer,
            Err(error) => {
                tracing::warn!(%error, partition, "could not open the partition's consumer; trying again at the next heartbeat");
                continue;
            }
        };
        let stop = shutdown.child_token();
        let pin = Arc::default();
        let task = tokio::spawn(pull(
            consumer,
            lanes.to_vec(),
            stop.clone(),
            Arc::clone(&pin),
        ));
        pulls.insert(partition, Puller { stop, pin, task });
    }
}

/// Hands a partition's messages to the lanes until `stop`, keeping the pin they came with.
async fn pull(
    consumer: jetstream::consumer::PullConsumer,
    lanes: Vec<mpsc::Sender<Input>>,
    stop: CancellationToken,
    pin: Arc<std::sync::Mutex<Option<String>>>,
) {
    let mut messages = loop {
        match pinned_messages(&consumer).await {
            Ok(messages) => break messages,
            Err(error) => {
                tracing::warn!(%error, "could not pull a partition; retrying");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(RETRY_DELAY) => {}
                }
            }
        }
    };
    loop {
        let message = tokio::select! {
            _ = stop.cancelled() => return,
            next = messages.next() => match next {
                Some(Ok(message)) => message,
                Some(Err(error)) => {
                    tracing::warn!(%error, "pulling a partition failed; retrying");
                    continue;
                }
                None => return,
            },
        };
        // The server's header is the last: an event published with one carries its own first.
        if let Some(id) = message
            .headers
            .as_ref()
            .and_then(|headers| headers.get_last(async_nats::header::NATS_PIN_ID))
            && let Ok(mut pin) = pin.lock()
        {
            *pin = Some(id.to_string());
        }
        let Some(input) = from_inbox(message).await else {
            continue;
        };
        if lanes[lane_of(&input, lanes.len())]
            .send(input)
            .await
            .is_err()
        {
            return;
        }
    }
}

/// What an inbox message is, from the subject and sequence it was first stored on; `None` for
/// a message that was settled here (unreadable, or none of the coordinator's business).
async fn from_inbox(message: jetstream::Message) -> Option<Input> {
    let parsed = subjects::parse_partitioned(&message.subject)
        .map(|(_, original)| original.to_owned())
        .zip(bus::source_sequence(&message));
    let Some((subject, sequence)) = parsed else {
        bus::terminate(&message, "not a copy of a stored event or timer").await;
        return None;
    };
    let kind = if subject.starts_with(timers::PREFIX) {
        Kind::Timer
    } else if subjects::is_workflow_lifecycle(&subject) {
        Kind::Workflow
    } else if subjects::is_execution_state(&subject) {
        Kind::Event
    } else {
        // Another fact about a workflow: not the coordinator's business.
        settle(&message, Processed::Done).await;
        return None;
    };
    let origin = Origin { subject, sequence };
    Some(Input::Delivery(Box::new(Delivery {
        kind,
        message,
        origin,
    })))
}

/// Releases this replica's pin on a partition, so the next owner need not wait for it to
/// expire; not another replica's (this one may never have held it).
async fn unpin_if_held(inbox: &jetstream::stream::Stream, partition: u16, pin: Option<String>) {
    let Some(pin) = pin else {
        return;
    };
    let consumer = streams::coordinator_partition_consumer_name(partition);
    let pinned = match inbox.consumer_info(&consumer).await {
        Ok(info) => info.priority_groups.iter().any(|group| {
            group.group == ACTIVE_GROUP && group.pinned_client_id.as_deref() == Some(pin.as_str())
        }),
        Err(error) => {
            tracing::warn!(%error, consumer, "could not read the partition's pin; it expires on its own");
            return;
        }
    };
    if !pinned {
        return;
    }
    match inbox.unpin_consumer(&consumer, ACTIVE_GROUP).await {
        Ok(_) => tracing::debug!(consumer, pin, "released the partition's pin"),
        Err(error) => {
            tracing::warn!(%error, consumer, "could not release the partition's pin; it expires on its own");
        }
    }
}

/// A step the workers took [`streams::AGENT_WORKER_MAX_DELIVER`] times without finishing (each
/// crashed or was stopped while running it) would otherwise leave its run waiting forever:
/// record the attempt as failed, so the run follows its failure rules. The event's id derives
/// from the step's, so every coordinator that hears the advisory records it once.
async fn fail_abandoned_step(bus: &EventBus, advisory: &[u8]) -> Result<(), NatsError> {
    #[derive(serde::Deserialize)]
    struct MaxDeliveries {
        stream_seq: u64,
        deliveries: u64,
    }
    let advisory: MaxDeliveries = serde_json::from_slice(advisory)?;
    let message = bus
        .dispatch_stream()
        .get_raw_message(advisory.stream_seq)
        .await?;
    let scheduled = Envelope::decode(&message.payload)?;
    let Event::StepScheduled(step) = &scheduled.event else {
        return Ok(());
    };
    let failed = Envelope::with_id(
        scheduled.meta.id.child("abandoned"),
        crate::SOURCE,
        scheduled.meta.tenant.clone(),
        chrono::Utc::now(),
        Event::StepFailed(StepFailed {
            attempt: StepAttempt::of(step),
            retryable: true,
            error: format!(
                "no worker finished the step in {} deliveries: each one crashed or was stopped while running it",
                advisory.deliveries
            ),
            usage: None,
        }),
    );
    bus.publish(&failed, Append::Any).await?;
    // Nothing will take it any more; it must not linger in the queue.
    bus.dispatch_stream()
        .delete_message(advisory.stream_seq)
        .await?;
    Ok(())
}

/// The messages of a consumer whose pinned client does the work.
async fn pinned_messages(
    consumer: &jetstream::consumer::PullConsumer,
) -> Result<jetstream::consumer::pull::Stream, NatsError> {
    Ok(consumer
        .stream()
        .group(ACTIVE_GROUP)
        .expires(PINNED_PULL_EXPIRY)
        .max_messages_per_batch(1000)
        .messages()
        .await?)
}

/// Events and timers of one execution share a lane: the execution id is the 7th token of an
/// event's subject and the 5th of a fired timer's (a workflow's own timer, lifecycle events
/// and triggers go by the workflow id, their 5th token).
fn lane_of(input: &Input, lanes: usize) -> usize {
    let Input::Delivery(delivery) = input else {
        return 0;
    };
    let token = match delivery.kind {
        Kind::Event => 6,
        Kind::Workflow | Kind::Timer | Kind::Trigger => 4,
    };
    let subject = delivery.origin.subject.as_str();
    let mut hasher = DefaultHasher::new();
    subject
        .split('.')
        .nth(token)
        .unwrap_or(subject)
        .hash(&mut hasher);
    (hasher.finish() % lanes as u64) as usize
}

async fn lane(services: Services, mut inputs: mpsc::Receiver<Input>) {
    let mut memory = LaneMemory::default();
    while let Some(input) = inputs.recv().await {
        let delivery = match input {
            Input::Delivery(delivery) => delivery,
            Input::Forget(done) => {
                memory = LaneMemory::default();
                let _ = done.send(());
                continue;
            }
        };
        let Delivery {
            kind,
            message,
            origin,
        } = *delivery;
        let span = tracing::info_span!("coordinator.event", subject = %origin.subject);
        telemetry::extract(message.headers.as_ref(), &span);
        // Rare and costly (an unsettled delivery waits out the ack wait): worth a line each.
        if let Ok(info) = message.info()
            && info.delivered > 1
        {
            tracing::warn!(
                subject = %origin.subject,
                delivery = info.delivered,
                "an event delivered again: an earlier delivery failed or was not settled in time"
            );
        }
        let processed = async {
            match kind {
                Kind::Event => on_event(&services, &mut memory, &message, origin.sequence).await,
                Kind::Workflow => on_workflow_event(&services, &message).await,
                Kind::Timer => on_timer(&services, &mut memory, &message, origin.sequence).await,
                Kind::Trigger => triggers::on_trigger(&services.starter, &message).await,
            }
        }
        .instrument(span)
        .await;
        settle(&message, processed).await;
    }
}

/// What became of a message.
pub(crate) enum Processed {
    Done,
    /// It can never be processed: terminate it with the reason.
    Unreadable(String),
    /// Something outside failed; deliver it again.
    Retry(String),
}

async fn settle(message: &jetstream::Message, processed: Processed) {
    match processed {
        Processed::Done => {
            if let Err(error) = message.ack().await {
                tracing::warn!(%error, "ack failed; the message will be redelivered");
            }
        }
        Processed::Unreadable(reason) => bus::terminate(message, &reason).await,
        Processed::Retry(error) => {
            tracing::warn!(error, "message not processed; redelivering");
            let _ = message.ack_with(AckKind::Nak(Some(RETRY_DELAY))).await;
        }
    }
}

/// The execution's state, from this lane's memory or else from the log.
async fn execution<'a>(
    bus: &EventBus,
    executions: &'a mut HashMap<ExecutionId, Execution>,
    tenant: &TenantId,
    workflow_id: WorkflowId,
    execution_id: ExecutionId,
) -> Result<&'a mut Execution, bus::ReadError> {
    Ok(match executions.entry(execution_id) {
        Entry::Occupied(cached) => cached.into_mut(),
        Entry::Vacant(missing) => {
            let filter = subjects::execution_state(tenant, workflow_id, execution_id);
            missing.insert(Execution::load(bus, tenant.clone(), filter, History::All).await?)
        }
    })
}

/// An execution's state event, stored at `sequence` in the log.
async fn on_event(
    services: &Services,
    memory: &mut LaneMemory,
    message: &jetstream::Message,
    sequence: u64,
) -> Processed {
    let LaneMemory {
        executions,
        handed_over,
    } = memory;
    let bus = &services.bus;
    let envelope = match Envelope::decode(&message.payload) {
        Ok(envelope) => envelope,
        Err(error) => return Processed::Unreadable(error.to_string()),
    };
    let (Some(execution_id), Some(workflow_id)) =
        (envelope.event.execution_id(), envelope.event.workflow_id())
    else {
        return Processed::Unreadable("not an execution event".to_owned());
    };
    let tenant = envelope.meta.tenant.clone();
    // The first event of an execution needs no replay. A copy of it stored again (re-published
    // past the duplicate window) is not the first: an empty state would start the run over, so
    // the execution is loaded from the log as for any other event.
    if let Event::ExecutionStarted(_) = &envelope.event
        && let Entry::Vacant(missing) = executions.entry(execution_id)
    {
        match bus.is_copy(sequence, &envelope).await {
            Ok(false) => {
                let filter = subjects::execution_state(&tenant, workflow_id, execution_id);
                missing.insert(Execution::empty(tenant.clone(), filter, History::All));
            }
            Ok(true) => {}
            Err(error) => return Processed::Retry(error.to_string()),
        }
    }
    let aggregate = match execution(bus, executions, &tenant, workflow_id, execution_id).await {
        Ok(aggregate) => aggregate,
        Err(error) => return Processed::Retry(error.to_string()),
    };
    aggregate.fold(sequence, &envelope.event);
    let handed = handed_over.remove(&sequence);
    // An event's effects are independent of each other (handing a step over and arming its
    // timer): perform them at once.
    let performed = futures::future::join_all(
        effects(&aggregate.state, &envelope.event, envelope.meta.time)
            .into_iter()
            .filter(|effect| !(handed && matches!(effect, Effect::Dispatch { .. })))
            .map(|effect| perform(services, &envelope, effect)),
    )
    .await;
    if let Some(Err(error)) = performed.into_iter().find(Result::is_err) {
        return Processed::Retry(format!("performing an effect of event {sequence}: {error}"));
    }
    let outcome = decide_or_abandon(bus, aggregate, &Command::Advance).await;
    if let Ok(appended) = &outcome {
        hand_over_early(services, aggregate, appended, handed_over).await;
    }
    // A finished execution leaves memory once its end has come back from the log (its effects
    // are performed) and nothing more was decided.
    if aggregate.state.is_finished() && is_end(&envelope.event) {
        executions.remove(&execution_id);
    }
    decided(outcome, executions, execution_id)
}

/// What a lane keeps in memory, all of it forgotten when its replica gives up a partition.
#[derive(Default)]
struct LaneMemory {
    /// The executions it decides on, as folded so far.
    executions: HashMap<ExecutionId, Execution>,
    /// The log sequences of the events (scheduled steps, questions assigned) it handed to the
    /// workers as soon as it appended them, until their copies come back through the inbox,
    /// each of which removes its own. Forgotten, they go to another replica, which hands them
    /// over again, and the duplicate window (two minutes) keeps a second copy out of the
    /// workers' queue, as it does for a replica that stops between a hand-over and its ack.
    handed_over: HashSet<u64>,
}

/// Hands what a decision just appended for the workers (`appended`, as stored: its scheduled
/// steps, its questions for teammates) to them at once, rather than when it comes back through
/// the inbox: at low load that round (the server's copy into the inbox, its delivery, the
/// lane's turn) was most of a step's hand-over. The outbox guarantee is unchanged: what is not
/// handed over here, because this failed or the replica stopped first, is handed over when its
/// copy is read back, as before.
async fn hand_over_early(
    services: &Services,
    execution: &Execution,
    appended: &[(u64, Envelope)],
    handed_over: &mut HashSet<u64>,
) {
    let dispatches = appended.iter().flat_map(|(sequence, envelope)| {
        effects(&execution.state, &envelope.event, envelope.meta.time)
            .into_iter()
            .filter_map(move |effect| match effect {
                Effect::Dispatch { provider } => Some(async move {
                    let handed = services
                        .bus
                        .dispatch(envelope, Some(*sequence), &provider)
                        .await;
                    (*sequence, handed)
                }),
                _ => None,
            })
    });
    for (sequence, handed) in futures::future::join_all(dispatches).await {
        match handed {
            Ok(()) => {
                handed_over.insert(sequence);
            }
            Err(error) => {
                tracing::debug!(%error, sequence, "a step's early hand-over failed; it is handed over when read back");
            }
        }
    }
}

/// Decides `command`; when the log refuses what it decided as too large, retrying would fail
/// the same way forever, so the run fails with that reason instead.
async fn decide_or_abandon(
    bus: &EventBus,
    aggregate: &mut Execution,
    command: &Command,
) -> Result<Vec<(u64, Envelope)>, CommandError<TransitionRefused>> {
    match aggregate.execute(bus, command).await {
        Err(CommandError::Publish(error)) if error.is_too_large() => {
            tracing::error!(%error, "a decision is too large to record; failing the execution");
            let abandon = Command::Abandon {
                error: format!(
                    "the execution could not go on: what it decided next is larger than the event log accepts ({error})"
                ),
            };
            aggregate.execute(bus, &abandon).await
        }
        outcome => outcome,
    }
}

fn is_end(event: &Event) -> bool {
    matches!(
        event,
        Event::ExecutionCompleted(_) | Event::ExecutionFailed(_) | Event::ExecutionCancelled(_)
    )
}

/// Settles a decision; on an infrastructure error the execution's state is dropped, so the
/// redelivery rebuilds it from the log.
fn decided(
    outcome: Result<Vec<(u64, Envelope)>, CommandError<TransitionRefused>>,
    executions: &mut HashMap<ExecutionId, Execution>,
    execution_id: ExecutionId,
) -> Processed {
    match outcome {
        Ok(_) => Processed::Done,
        // Advance and timers never refuse; a refusal would be a bug in the core, and retrying
        // cannot fix it.
        Err(CommandError::Rejected(refused)) => {
            tracing::error!(%refused, %execution_id, "the execution refused its own command");
            Processed::Done
        }
        Err(error) => {
            executions.remove(&execution_id);
            Processed::Retry(error.to_string())
        }
    }
}

/// A workflow's lifecycle event, read back from the log: its schedule and links follow its
/// state.
async fn on_workflow_event(services: &Services, message: &jetstream::Message) -> Processed {
    let envelope = match Envelope::decode(&message.payload) {
        Ok(envelope) => envelope,
        Err(error) => return Processed::Unreadable(error.to_string()),
    };
    let Some(workflow_id) = envelope.event.workflow_id() else {
        return Processed::Unreadable("not a workflow event".to_owned());
    };
    let tenant = envelope.meta.tenant.clone();
    let workflow = match Aggregate::<Workflow>::load(
        &services.bus,
        tenant.clone(),
        subjects::workflow_lifecycle(&tenant, workflow_id),
        History::All,
    )
    .await
    {
        Ok(workflow) => workflow,
        Err(error) => return Processed::Retry(error.to_string()),
    };
    for effect in workflow::effects(&workflow.state, &envelope.event) {
        if let Err(error) = perform(services, &envelope, effect).await {
            return Processed::Retry(format!("performing an effect of a workflow event: {error}"));
        }
    }
    Processed::Done
}

/// A fired timer, stored at `sequence` in the timers stream.
async fn on_timer(
    services: &Services,
    memory: &mut LaneMemory,
    message: &jetstream::Message,
    sequence: u64,
) -> Processed {
    let LaneMemory {
        executions,
        handed_over,
    } = memory;
    let fired: TimerMessage = match serde_json::from_slice(&message.payload) {
        Ok(fired) => fired,
        Err(error) => return Processed::Unreadable(format!("not a Cadre timer: {error}")),
    };
    tracing::info!(timer = ?fired.timer, "timer fired");
    let Some(execution_id) = fired.timer.execution_id() else {
        // A workflow's schedule ticked: one run per tick, even if the tick is delivered twice.
        return triggers::start_scheduled(
            &services.starter,
            &fired.tenant,
            fired.timer.workflow_id(),
            sequence,
        )
        .await;
    };
    let aggregate = match execution(
        &services.bus,
        executions,
        &fired.tenant,
        fired.timer.workflow_id(),
        execution_id,
    )
    .await
    {
        Ok(aggregate) => aggregate,
        Err(error) => return Processed::Retry(error.to_string()),
    };
    let outcome =
        decide_or_abandon(&services.bus, aggregate, &Command::TimerFired(fired.timer)).await;
    if let Ok(appended) = &outcome {
        hand_over_early(services, aggregate, appended, handed_over).await;
    }
    decided(outcome, executions, execution_id)
}

/// Carries out one effect of an event read back from the log.
async fn perform(services: &Services, stored: &Envelope, effect: Effect) -> Result<(), NatsError> {
    let (bus, tenant) = (&services.bus, &stored.meta.tenant);
    match effect {
        // The log is the workers' outbox: a scheduled step stored in it is handed to them
        // before its delivery is acked, so none is lost between the two writes. Read back, it
        // may be a copy stored again: the worker checks everything (no log sequence).
        Effect::Dispatch { provider } => bus.dispatch(stored, None, &provider).await?,
        Effect::StartTimer { timer, when } => match bus.arm_timer(tenant, &timer, &when).await {
            // Validation keeps such schedules out; one the server still refuses (an older
            // definition) would be refused forever, so it is reported and left unarmed.
            Err(error) if error.is_refused_schedule() => {
                tracing::error!(%error, ?timer, schedule = when.header(), "the server refused the schedule; it is not armed");
            }
            armed => armed?,
        },
        Effect::CancelTimer(timer) => bus.disarm_timer(tenant, &timer).await?,
        Effect::StopCalls { execution_id, step } => {
            let (step_id, attempt) = step.map_or((None, None), |(s, a)| (Some(s), Some(a)));
            let request = StopCalls {
                execution_id,
                step_id,
                attempt,
            };
            bus.jetstream()
                .client()
                .publish(
                    stop_calls_subject(tenant),
                    serde_json::to_vec(&request)?.into(),
                )
                .await?;
        }
        Effect::Link {
            upstream,
            downstream,
        } => triggers::link(&services.links, tenant, upstream, downstream).await?,
        Effect::StartDependants {
            upstream,
            execution_id,
        } => triggers::start_dependants(services, tenant, upstream, execution_id).await?,
        Effect::StartChild {
            workflow_id,
            parent,
            input,
        } => {
            if let Some(refused) =
                triggers::start_child(&services.starter, tenant, workflow_id, &parent, input)
                    .await?
            {
                // The child can never start: the parent's step fails with the reason.
                report_to_parent(bus, stored, parent, ChildOutcome::Failed { error: refused })
                    .await?;
            }
        }
        Effect::ReportToParent { parent, outcome } => {
            report_to_parent(bus, stored, parent, outcome).await?;
        }
    }
    Ok(())
}

/// Records a child run's end as its parent step's completion or failure. The event's id
/// derives from the stored event that caused it, so reporting twice stores it once.
async fn report_to_parent(
    bus: &EventBus,
    cause: &Envelope,
    parent: ParentStep,
    outcome: ChildOutcome,
) -> Result<(), NatsError> {
    let event = match outcome {
        ChildOutcome::Completed {
            summary,
            final_output,
            duration_ms,
        } => Event::StepCompleted(Box::new(StepCompleted {
            attempt: parent.attempt,
            result: StepResult {
                summary,
                output: serde_json::to_string_pretty(&final_output)?,
                ..StepResult::default()
            },
            provider: "cadre".to_owned(),
            model: "child-execution".to_owned(),
            duration_ms: duration_ms.unwrap_or_default(),
            cost_usd: None,
            knowledge_used: Vec::new(),
            knowledge_handed_on: Vec::new(),
            fallback_reason: None,
            told: Vec::new(),
        })),
        ChildOutcome::Failed { error } => Event::StepFailed(StepFailed {
            attempt: parent.attempt,
            retryable: true,
            error,
            usage: None,
        }),
    };
    let envelope = Envelope::with_id(
        cause.meta.id.child("parent-report"),
        crate::SOURCE,
        cause.meta.tenant.clone(),
        cause.meta.time,
        event,
    );
    bus.publish(&envelope, Append::Any).await?;
    Ok(())
}
