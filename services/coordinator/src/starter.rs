//! Starting executions: one path for the API and for triggers (schedules, events, other
//! workflows). It numbers runs through the `starts` decider and honours idempotency keys.
//!
//! Starts of one workflow are group-committed here (with the workflow's definition, agents and
//! numbering cached) instead of racing each other in the log: each start joins the workflow's
//! queue and waits for its lock; whoever holds the lock takes every start queued by then,
//! numbers them in order and appends them as one atomic batch, one round trip for all of them,
//! and answers each. A race with another coordinator replica is still caught by the batch's
//! expected-sequence append and resolved by the command path, which reloads and decides again.
//!
//! Each start records the participating agents' records ([`Records`], kept by the alert
//! watcher as it reads the log) for assignment to break ties with; read at every start, not
//! cached with the agents.
//!
//! An idempotency key is claimed in a JetStream KV bucket (entries expire after a day) before
//! the start is appended, mapping it to the execution id and a digest of what the start asked
//! for; a second start with the same key finds the claim and answers with the first execution
//! instead of starting another, or, when it asks for something else, is refused.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use async_nats::jetstream::kv;
use chrono::{DateTime, Utc};
use futures::future::try_join_all;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{Mutex, oneshot};

use cadre_proto::model::{AgentProfile, TriggerReason, WorkflowDefinition};
use cadre_proto::{AgentId, Envelope, Event, ExecutionId, TenantId, WorkflowId, streams, subjects};
use cadre_runtime::bus::{EventBus, NatsError, PublishError, ReadError, is_too_large};

use crate::command::{Aggregate, CommandError, History, registered_agent};
use crate::domain::execution::Start;
use crate::domain::starts::{StartExecution, Starts, WorkflowPaused};
use crate::domain::workflow::Workflow;
use cadre_proto::events::{AgentRecord, ParentStep};

/// How long a claimed idempotency key may wait for its start to be recorded before the claim
/// counts as abandoned (its coordinator died in between) and the next request carries it out.
const ABANDONED_CLAIM: chrono::TimeDelta = chrono::TimeDelta::seconds(30);

/// Every agent's record as far as the alert watcher (`crate::alerts`) has read the log. It lags
/// while the watcher reads the log again from its beginning (after the coordinator starts, or a
/// failed read), which is fine: each run records the records it was started with.
///
/// A write is one insert, never left half-done: a poisoned lock is still sound.
#[derive(Clone, Default)]
pub struct Records(Arc<RwLock<HashMap<AgentId, AgentRecord>>>);

impl Records {
    pub fn set(&self, agent: AgentId, record: AgentRecord) {
        self.0
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(agent, record);
    }

    /// The records of `agents` that have one.
    pub fn of(&self, agents: &[AgentProfile]) -> BTreeMap<AgentId, AgentRecord> {
        let records = self
            .0
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        agents
            .iter()
            .filter_map(|a| Some((a.id, records.get(&a.id)?.clone())))
            .collect()
    }
}

/// What an idempotency key maps to.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Claim {
    execution_id: ExecutionId,
    claimed_at: DateTime<Utc>,
    /// [`StartOrder::digest`] of the start that claimed the key; absent for a trigger's start
    /// (its key names the event, whose copies may differ in what the sender stamps on them,
    /// such as a CloudEvent's `time`) and in claims of older releases: any start with the key
    /// matches those.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    request: Option<String>,
}

impl Claim {
    fn encode(&self) -> bytes::Bytes {
        serde_json::to_vec(self).unwrap_or_default().into()
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }
}

/// What a repeated key finds.
enum Repeat {
    Started(Started),
    Abandoned(ExecutionId),
}

/// What to start.
#[derive(Debug, Clone)]
pub struct StartOrder {
    pub workflow_id: WorkflowId,
    pub trigger_reason: TriggerReason,
    pub triggered_by: Option<String>,
    pub input: Option<Value>,
    /// The same key within a day starts one execution, whatever the number of requests.
    pub idempotency_key: Option<String>,
    /// A trigger rather than a person: the workflow must have asked for it (see `permitted`).
    pub triggered: bool,
    /// The step this run is a child of.
    pub parent: Option<ParentStep>,
}

impl StartOrder {
    /// What the start asks for, as a SHA-256 hex digest: its input, trigger reason and who
    /// triggered it. Two requests with one idempotency key must agree on it.
    fn digest(&self) -> String {
        use sha2::{Digest, Sha256};
        let asked = serde_json::json!({
            "input": self.input,
            "triggerReason": self.trigger_reason,
            "triggeredBy": self.triggered_by,
        });
        let digest = Sha256::digest(asked.to_string().as_bytes());
        digest.iter().map(|byte| format!("{byte:02x}")).collect()
    }
}

/// A started execution (or, for a repeated idempotency key, the one started before).
#[derive(Debug, Clone, PartialEq)]
pub struct Started {
    pub execution_id: ExecutionId,
    pub execution_number: u32,
    pub workflow_id: WorkflowId,
    /// Stream sequence of its `ExecutionStarted`.
    pub sequence: u64,
    /// Whether an earlier request with the same idempotency key started it.
    pub repeated: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("no workflow has the id {0}")]
    NoWorkflow(WorkflowId),
    #[error("agent {0} of this workflow is no longer registered")]
    NoAgent(AgentId),
    #[error("{0}")]
    NotTriggerable(String),
    #[error("a child run {depth} levels deep is over the limit of {limit}")]
    TooDeep { depth: u32, limit: u32 },
    #[error(transparent)]
    Refused(CommandError<WorkflowPaused>),
    #[error(
        "a start with this idempotency key is still being recorded; retry in a moment to get its execution"
    )]
    KeyInFlight,
    #[error(
        "this Idempotency-Key was used within a day for a start that asked for something else \
         (its input, triggerReason or triggeredBy differ): use a new key for a new start"
    )]
    KeyReused,
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("the idempotency store failed: {0}")]
    Idempotency(NatsError),
}

impl StartError {
    /// Whether the start may have been stored though it failed: its append was sent and not
    /// confirmed (a timeout, a lost connection), rather than refused.
    pub fn may_be_stored(&self) -> bool {
        matches!(self, Self::Refused(CommandError::Publish(PublishError::Nats(error)))
            if !is_too_large(error))
    }

    /// The same failure again, for each start of the group commit it failed: the same kind
    /// (which the API maps to a status), the NATS errors' details as text.
    fn for_each(&self) -> Self {
        let read = |error: &ReadError| ReadError::Nats(error.to_string().into());
        match self {
            Self::NoWorkflow(id) => Self::NoWorkflow(*id),
            Self::NoAgent(id) => Self::NoAgent(*id),
            Self::NotTriggerable(why) => Self::NotTriggerable(why.clone()),
            Self::TooDeep { depth, limit } => Self::TooDeep {
                depth: *depth,
                limit: *limit,
            },
            Self::KeyInFlight => Self::KeyInFlight,
            Self::KeyReused => Self::KeyReused,
            Self::Read(error) => Self::Read(read(error)),
            Self::Idempotency(error) => Self::Idempotency(error.to_string().into()),
            Self::Refused(error) => Self::Refused(match error {
                CommandError::Rejected(paused) => CommandError::Rejected(paused.clone()),
                CommandError::Read(error) => CommandError::Read(read(error)),
                CommandError::Contended => CommandError::Contended,
                CommandError::Publish(error) => CommandError::Publish(match error {
                    PublishError::Conflict { filter, expected } => PublishError::Conflict {
                        filter: filter.clone(),
                        expected: *expected,
                    },
                    PublishError::Nats(error) => PublishError::Nats(
                        async_nats::jetstream::context::PublishError::with_source(
                            error.kind(),
                            error.to_string(),
                        ),
                    ),
                }),
            }),
        }
    }
}

/// What starting a workflow needs, kept per workflow.
struct WorkflowStarts {
    workflow: WorkflowDefinition,
    agents: Vec<AgentProfile>,
    numbering: Aggregate<Starts>,
}

/// A workflow's starts: the cache its lock guards, and the starts waiting for a commit.
#[derive(Default)]
struct StartQueue {
    cached: Mutex<Option<WorkflowStarts>>,
    waiting: std::sync::Mutex<Vec<Queued>>,
}

/// A start waiting in its workflow's queue, and where its answer goes.
struct Queued {
    order: StartOrder,
    /// The request's span: its start's event carries its trace, whoever commits it.
    span: tracing::Span,
    execution_id: ExecutionId,
    workflow_paused: bool,
    answer: oneshot::Sender<Result<Started, StartError>>,
}

type StartLock = Arc<StartQueue>;

/// Most starts one group commit takes (each is one event of the atomic batch).
const MOST_STARTS_PER_COMMIT: usize = 256;
const _: () = assert!(MOST_STARTS_PER_COMMIT <= cadre_runtime::bus::MAX_BATCH);

#[derive(Clone)]
pub struct Starter {
    bus: EventBus,
    keys: kv::Store,
    /// How deep child runs may nest.
    max_depth: u32,
    /// Keyed by tenant too: a workflow id names a workflow of one tenant only.
    locks: Arc<std::sync::Mutex<HashMap<(TenantId, WorkflowId), StartLock>>>,
    records: Records,
}

impl Starter {
    /// Opens (or creates) the idempotency bucket.
    pub async fn open(
        bus: EventBus,
        replicas: usize,
        max_depth: u32,
        records: Records,
    ) -> Result<Self, NatsError> {
        let keys = bus
            .jetstream()
            .create_or_update_key_value(streams::idempotency_bucket(replicas))
            .await?;
        Ok(Self {
            bus,
            keys,
            max_depth,
            locks: Arc::default(),
            records,
        })
    }

    fn lock_of(&self, tenant: &TenantId, workflow: WorkflowId) -> StartLock {
        self.locks()
            .entry((tenant.clone(), workflow))
            .or_default()
            .clone()
    }

    fn forget(&self, tenant: &TenantId, workflow: WorkflowId) {
        self.locks().remove(&(tenant.clone(), workflow));
    }

    fn locks(&self) -> std::sync::MutexGuard<'_, HashMap<(TenantId, WorkflowId), StartLock>> {
        // Nothing is left half-done under this lock, so a poisoned one is still sound.
        self.locks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub async fn start(&self, tenant: &TenantId, order: StartOrder) -> Result<Started, StartError> {
        if let Some(parent) = &order.parent
            && parent.depth > self.max_depth
        {
            return Err(StartError::TooDeep {
                depth: parent.depth,
                limit: self.max_depth,
            });
        }
        let execution_id = ExecutionId::new();
        let claim = match &order.idempotency_key {
            Some(key) => {
                let claim = subjects::idempotency_key(tenant, order.workflow_id, key);
                let value = Claim {
                    execution_id,
                    claimed_at: Utc::now(),
                    request: (!order.triggered).then(|| order.digest()),
                };
                match self.keys.create(&claim, value.encode()).await {
                    Ok(_) => Some(claim),
                    Err(error) if error.kind() == kv::CreateErrorKind::AlreadyExists => {
                        return match self.repeated(tenant, &claim, &order).await? {
                            Repeat::Started(started) => Ok(started),
                            // The start that claimed the key died before recording it: carry
                            // it out with the execution id the key names.
                            Repeat::Abandoned(execution_id) => {
                                self.start_new(tenant, &order, execution_id).await
                            }
                        };
                    }
                    Err(error) => return Err(StartError::Idempotency(Box::new(error))),
                }
            }
            None => None,
        };
        let started = self.start_new(tenant, &order, execution_id).await;
        if let (Err(error), Some(claim)) = (&started, &claim)
            && !error.may_be_stored()
        {
            // Nothing was started under the key: free it for the client's retry. A start that
            // may still be stored keeps it: the retry finds that run, or, once the claim counts
            // as abandoned, carries the start out under the same execution id.
            if let Err(error) = self.keys.delete(claim).await {
                tracing::warn!(%error, "could not release an idempotency key; it expires in a day");
            }
        }
        started
    }

    /// The execution an earlier start with the same key recorded, or the claim of a start that
    /// never recorded one; refused when that start asked for something else than `order`.
    async fn repeated(
        &self,
        tenant: &TenantId,
        claim: &str,
        order: &StartOrder,
    ) -> Result<Repeat, StartError> {
        let claimed = self
            .keys
            .get(claim)
            .await
            .map_err(|e| StartError::Idempotency(Box::new(e)))?;
        let Some(claimed) = claimed.as_deref().and_then(Claim::decode) else {
            return Err(StartError::KeyInFlight);
        };
        if claimed
            .request
            .as_ref()
            .is_some_and(|asked| *asked != order.digest())
        {
            return Err(StartError::KeyReused);
        }
        let execution_id = claimed.execution_id;
        let stored = self
            .bus
            .last_event(&subjects::execution_started_in_any_workflow(
                tenant,
                execution_id,
            ))
            .await?;
        match stored.map(|s| (s.sequence, s.envelope.event)) {
            Some((sequence, Event::ExecutionStarted(e))) => Ok(Repeat::Started(Started {
                execution_id,
                execution_number: e.execution_number,
                workflow_id: e.workflow_id,
                sequence,
                repeated: true,
            })),
            _ if Utc::now() - claimed.claimed_at > ABANDONED_CLAIM => {
                Ok(Repeat::Abandoned(execution_id))
            }
            _ => Err(StartError::KeyInFlight),
        }
    }

    async fn start_new(
        &self,
        tenant: &TenantId,
        order: &StartOrder,
        execution_id: ExecutionId,
    ) -> Result<Started, StartError> {
        let workflow_id = order.workflow_id;
        // The workflow's last own event says whether it is paused. Read before queueing for the
        // workflow's lock, so starts do not wait for each other's reads; an answer a moment old
        // (or from a replica that lags) only orders this start before a concurrent pause.
        let lifecycle = subjects::workflow_lifecycle(tenant, workflow_id);
        let last = match self.bus.peek_last_event(&lifecycle).await {
            Err(ReadError::Decode { .. }) => self.bus.last_decodable_event(&lifecycle).await?.0,
            other => other?,
        };
        let workflow_paused = matches!(
            last,
            Some(stored) if matches!(stored.envelope.event, Event::WorkflowPaused(_))
        );
        let queue = self.lock_of(tenant, workflow_id);
        let (answer, answered) = oneshot::channel();
        lock_waiting(&queue.waiting).push(Queued {
            order: order.clone(),
            span: tracing::Span::current(),
            execution_id,
            workflow_paused,
            answer,
        });
        // The commit runs on a task of its own: a request dropped meanwhile (its client gone)
        // must neither leave its start queued with nobody to take it nor take with it the
        // starts of others that its commit carries.
        let (starter, tenant) = (self.clone(), tenant.clone());
        tokio::spawn(async move {
            let mut cached = queue.cached.lock().await;
            // Empty when the holder before us took our start with its own.
            let batch: Vec<Queued> = {
                let mut waiting = lock_waiting(&queue.waiting);
                let take = waiting.len().min(MOST_STARTS_PER_COMMIT);
                waiting.drain(..take).collect()
            };
            if !batch.is_empty() {
                starter
                    .commit(&tenant, workflow_id, &mut cached, batch)
                    .await;
            }
        });
        // Only a commit that panicked drops an answer.
        answered.await.map_err(|_| {
            StartError::Read(ReadError::Nats(
                "recording the start was interrupted; it may have been stored: retry with the \
                 same Idempotency-Key to find out"
                    .into(),
            ))
        })?
    }

    /// Numbers and records `batch` (starts of one workflow, in the order they came) as one
    /// group commit, and answers each.
    async fn commit(
        &self,
        tenant: &TenantId,
        workflow_id: WorkflowId,
        cached: &mut Option<WorkflowStarts>,
        batch: Vec<Queued>,
    ) {
        let starts = match cached.as_mut() {
            Some(starts) => starts,
            None => match self.load(tenant, workflow_id).await {
                Ok(loaded) => cached.insert(loaded),
                Err(error) => {
                    // Keep no queue for ids that name no workflow: bad requests must not grow
                    // memory.
                    self.forget(tenant, workflow_id);
                    answer_failed(batch, error, &mut HashMap::new());
                    return;
                }
            },
        };
        let mut admitted = Vec::with_capacity(batch.len());
        // Two requests of one execution (a key's start carried out again after its claim was
        // thought abandoned) are one start: the later ones get the first's answer.
        let mut repeats: HashMap<ExecutionId, Vec<Queued>> = HashMap::new();
        for queued in batch {
            if admitted
                .iter()
                .any(|first: &Queued| first.execution_id == queued.execution_id)
            {
                repeats.entry(queued.execution_id).or_default().push(queued);
                continue;
            }
            match queued
                .order
                .triggered
                .then(|| permitted(&queued.order, &starts.workflow))
            {
                Some(Err(why)) => reply(queued, Err(StartError::NotTriggerable(why)), &mut repeats),
                _ => admitted.push(queued),
            }
        }
        let records = self.records.of(&starts.agents);
        let commands: Vec<StartExecution> = admitted
            .iter()
            .map(|queued| StartExecution {
                start: Start {
                    execution_id: queued.execution_id,
                    trigger_reason: queued.order.trigger_reason,
                    triggered_by: queued.order.triggered_by.clone(),
                    workflow: starts.workflow.clone(),
                    agents: starts.agents.clone(),
                    input: queued.order.input.clone(),
                    parent: queued.order.parent.clone(),
                    records: records.clone(),
                },
                workflow_paused: queued.workflow_paused,
            })
            .collect();
        // Each append and how many of the starts, in order, it recorded.
        let spans: Vec<tracing::Span> = admitted.iter().map(|queued| queued.span.clone()).collect();
        let outcome = starts
            .numbering
            .execute_all(&self.bus, &commands, &spans)
            .await;
        let appends = match outcome {
            // One start too large for the log refuses the whole batch (nothing is stored):
            // record them one by one, so only that one is refused.
            Err(CommandError::Publish(PublishError::Nats(error)))
                if commands.len() > 1 && is_too_large(&error) =>
            {
                let mut appends = Vec::with_capacity(commands.len());
                for (command, span) in commands.iter().zip(&spans) {
                    let (alone, span) = (std::slice::from_ref(command), std::slice::from_ref(span));
                    appends.push((
                        1,
                        starts.numbering.execute_all(&self.bus, alone, span).await,
                    ));
                }
                appends
            }
            outcome => vec![(commands.len(), outcome)],
        };
        let mut admitted = admitted.into_iter();
        for (count, outcome) in appends {
            let queued = admitted.by_ref().take(count);
            match outcome {
                Ok(decided) => {
                    for (queued, decided) in queued.zip(decided) {
                        let started = decided
                            .map_err(|paused| StartError::Refused(CommandError::Rejected(paused)))
                            .map(|stored| started(workflow_id, &stored));
                        reply(queued, started, &mut repeats);
                    }
                }
                Err(error) => {
                    // Whether an append that failed midway was stored is unknown: read it
                    // again next time (one refused as too large stored nothing).
                    if !matches!(&error, CommandError::Publish(PublishError::Nats(e)) if is_too_large(e))
                    {
                        *cached = None;
                    }
                    answer_failed(queued.collect(), StartError::Refused(error), &mut repeats);
                }
            }
        }
    }

    /// What starting a workflow needs, read from the log.
    async fn load(
        &self,
        tenant: &TenantId,
        workflow_id: WorkflowId,
    ) -> Result<WorkflowStarts, StartError> {
        let lifecycle = Aggregate::<Workflow>::load(
            &self.bus,
            tenant.clone(),
            subjects::workflow_lifecycle(tenant, workflow_id),
            History::All,
        )
        .await?;
        let workflow = lifecycle
            .state
            .definition()
            .cloned()
            .ok_or(StartError::NoWorkflow(workflow_id))?;
        let agents = try_join_all(workflow.participating_agents.iter().map(|id| async {
            registered_agent(&self.bus, tenant, *id)
                .await?
                .ok_or(StartError::NoAgent(*id))
        }))
        .await?;
        let numbering = Aggregate::<Starts>::load(
            &self.bus,
            tenant.clone(),
            subjects::execution_starts(tenant, workflow_id),
            History::Last,
        )
        .await?;
        Ok(WorkflowStarts {
            workflow,
            agents,
            numbering,
        })
    }
}

/// Answers `queued`, and the `repeats` of its execution as repeated.
fn reply(
    queued: Queued,
    answer: Result<Started, StartError>,
    repeats: &mut HashMap<ExecutionId, Vec<Queued>>,
) {
    for repeat in repeats.remove(&queued.execution_id).unwrap_or_default() {
        let again = match &answer {
            Ok(started) => Ok(Started {
                repeated: true,
                ..started.clone()
            }),
            Err(error) => Err(error.for_each()),
        };
        let _ = repeat.answer.send(again);
    }
    let _ = queued.answer.send(answer);
}

/// Answers every start of a group commit that failed with `error`: the first with the error
/// itself, the others with copies ([`StartError::for_each`]).
fn answer_failed(
    starts: Vec<Queued>,
    error: StartError,
    repeats: &mut HashMap<ExecutionId, Vec<Queued>>,
) {
    let mut starts = starts.into_iter();
    let first = starts.next();
    for queued in starts {
        reply(queued, Err(error.for_each()), repeats);
    }
    if let Some(first) = first {
        reply(first, Err(error), repeats);
    }
}

/// The waiting starts of a workflow. Nothing is left half-done under this lock, so a poisoned
/// one is still sound.
fn lock_waiting(waiting: &std::sync::Mutex<Vec<Queued>>) -> std::sync::MutexGuard<'_, Vec<Queued>> {
    waiting
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A start as the numbering recorded it: `stored` is its one `ExecutionStarted`.
fn started(workflow_id: WorkflowId, stored: &[(u64, Envelope)]) -> Started {
    let (sequence, execution_id, execution_number) = stored
        .iter()
        .find_map(|(sequence, envelope)| match &envelope.event {
            Event::ExecutionStarted(e) => Some((*sequence, e.execution_id, e.execution_number)),
            _ => None,
        })
        .unwrap_or_else(|| {
            unreachable!("a start that was not refused recorded its ExecutionStarted")
        });
    Started {
        execution_id,
        execution_number,
        workflow_id,
        sequence,
        repeated: false,
    }
}

/// Whether the workflow takes runs from what triggered `order`: events and schedules only when
/// its configuration asks for them.
fn permitted(order: &StartOrder, workflow: &WorkflowDefinition) -> Result<(), String> {
    let triggers = &workflow.configuration.triggers;
    match order.trigger_reason {
        TriggerReason::Event if !triggers.events => Err(format!(
            "workflow {} takes no event triggers; set configuration.triggers.events to true",
            workflow.id
        )),
        TriggerReason::Scheduled if triggers.schedule.is_none() => Err(format!(
            "workflow {} has no schedule (configuration.triggers.schedule)",
            workflow.id
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_nats::jetstream::context::{PublishError as NatsPublishError, PublishErrorKind};

    fn publish_failed(kind: PublishErrorKind, text: &str) -> StartError {
        StartError::Refused(CommandError::Publish(PublishError::Nats(
            NatsPublishError::with_source(kind, text.to_owned()),
        )))
    }

    #[test]
    fn only_a_start_sent_and_not_confirmed_may_be_stored() {
        assert!(publish_failed(PublishErrorKind::TimedOut, "no ack").may_be_stored());
        assert!(publish_failed(PublishErrorKind::BrokenPipe, "connection lost").may_be_stored());
        let too_large = publish_failed(PublishErrorKind::MaxPayloadExceeded, "max payload");
        assert!(!too_large.may_be_stored(), "refused before it was stored");
        let conflict = StartError::Refused(CommandError::Publish(PublishError::Conflict {
            filter: "f".to_owned(),
            expected: 1,
        }));
        assert!(!conflict.may_be_stored());
        for refused in [
            StartError::NoWorkflow(WorkflowId::new()),
            StartError::KeyInFlight,
            StartError::KeyReused,
            StartError::Read(ReadError::Nats("unreachable".into())),
        ] {
            assert!(!refused.may_be_stored(), "{refused}");
        }
    }

    fn order(input: Option<Value>, triggered: bool) -> StartOrder {
        StartOrder {
            workflow_id: WorkflowId::new(),
            trigger_reason: TriggerReason::Manual,
            triggered_by: Some("ci".to_owned()),
            input,
            idempotency_key: Some("k".to_owned()),
            triggered,
            parent: None,
        }
    }

    #[test]
    fn the_digest_is_what_the_start_asks_for() {
        let a = order(Some(serde_json::json!({"a": 1, "b": 2})), false);
        // The same request, its keys in another order.
        let same = order(Some(serde_json::json!({"b": 2, "a": 1})), false);
        assert_eq!(a.digest(), same.digest());
        let other = order(Some(serde_json::json!({"a": 2, "b": 2})), false);
        assert_ne!(a.digest(), other.digest());
        assert_eq!(a.digest().len(), 64, "SHA-256 in hex");
    }
}
