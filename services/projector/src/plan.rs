//! What a batch of stream messages does to the read models, decided without I/O.
//!
//! [`plan`] folds a batch in stream order into one change per row: several events for the same
//! execution or workflow become one patch, so the store can apply a whole batch with one
//! set-based statement per table. Every value comes from the events (never the clock), so
//! replaying the log gives the same rows however it is cut into batches.

use std::collections::{BTreeMap, HashMap, HashSet};

use cadre_proto::events::{
    AssignmentReason, ExecutionCancelled, ExecutionCompleted, ExecutionFailed, ExecutionStarted,
    InteractionRecorded, KnowledgeShared, StepAttempt, StepCompleted, StepFailed, StepScheduled,
    StepStarted, StepTimedOut,
};
use cadre_proto::model::{AgentProfile, InteractionType, WorkflowDefinition};
use cadre_proto::{Envelope, Event, ExecutionId, StepId};
use chrono::{DateTime, Datelike, Utc};
use serde::Serialize;
use serde_json::{Map, Value, json};
use uuid::Uuid;

/// A message read from the event stream.
#[derive(Debug)]
pub(crate) struct Incoming {
    pub sequence: u64,
    pub subject: String,
    /// When JetStream stored the message: the only time a message that is not an event has.
    pub stored_at: DateTime<Utc>,
    pub content: Result<Envelope, Unreadable>,
}

/// A message that is not an event the read models can hold, and why.
#[derive(Debug)]
pub(crate) struct Unreadable {
    pub reason: String,
    pub payload: Vec<u8>,
}

impl Incoming {
    pub fn decode(
        sequence: u64,
        subject: impl Into<String>,
        stored_at: DateTime<Utc>,
        payload: &[u8],
    ) -> Self {
        let payload = without_nul_escapes(payload);
        let content = Envelope::decode(&payload)
            .map_err(|error| error.to_string())
            .and_then(|envelope| storable(&envelope).map(|()| envelope))
            .map_err(|reason| Unreadable {
                reason,
                payload: payload.into_owned(),
            });
        Self {
            sequence,
            subject: subject.into(),
            stored_at,
            content,
        }
    }
}

/// Postgres refuses NUL in `text` and `jsonb`; one such character would fail its batch on
/// every retry and stall the projection. JSON can only carry it escaped, so the escape is
/// swapped for U+FFFD (same length) before decoding.
fn without_nul_escapes(payload: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    const NUL: &[u8] = b"u0000";
    const REPLACEMENT: &[u8] = b"ufffd";
    let mut owned: Option<Vec<u8>> = None;
    let mut i = 0;
    while i < payload.len() {
        if payload[i] != b'\\' {
            i += 1;
            continue;
        }
        // A backslash always starts an escape inside a JSON string; skip the escaped character
        // so that an escaped backslash followed by "u0000" is left alone.
        if payload.get(i + 1..i + 1 + NUL.len()) == Some(NUL) {
            owned.get_or_insert_with(|| payload.to_vec())[i + 1..i + 1 + NUL.len()]
                .copy_from_slice(REPLACEMENT);
            i += 1 + NUL.len();
        } else {
            i += 2;
        }
    }
    owned.map_or(std::borrow::Cow::Borrowed(payload), std::borrow::Cow::Owned)
}

/// Events that decode but cannot be stored would fail their batch forever; they are rejected
/// like undecodable messages instead.
fn storable(envelope: &Envelope) -> Result<(), String> {
    let year = envelope.meta.time.year();
    if !(1..=9999).contains(&year) {
        return Err(format!("event time {} is out of range", envelope.meta.time));
    }
    if let Event::ExecutionStarted(e) = &envelope.event
        && i32::try_from(e.execution_number).is_err()
    {
        return Err(format!(
            "execution number {} is out of range",
            e.execution_number
        ));
    }
    Ok(())
}

#[derive(Debug, Default)]
pub(crate) struct Plan {
    /// The batch's last stream sequence: the checkpoint once the plan is written.
    pub last_sequence: u64,
    pub agents: Vec<AgentRow>,
    pub workflows: Vec<WorkflowRow>,
    pub executions: Vec<ExecutionRow>,
    pub execution_patches: Vec<ExecutionPatch>,
    pub workflow_patches: Vec<WorkflowPatch>,
    pub interactions: Vec<InteractionRow>,
    pub knowledge: Vec<KnowledgeRow>,
    pub rejections: Vec<Rejection>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct AgentRow {
    pub id: Uuid,
    pub tenant_id: String,
    pub name: String,
    pub role: String,
    pub backstory: String,
    pub skills: Value,
    pub provider: String,
    pub model: String,
    pub model_parameters: Value,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct WorkflowRow {
    pub id: Uuid,
    pub tenant_id: String,
    pub name: String,
    pub description: String,
    pub workflow_type: String,
    pub configuration: Value,
    pub participating_agents: Value,
    pub coordinator_agent_id: Option<Uuid>,
    pub total_steps: i32,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ExecutionRow {
    pub id: Uuid,
    pub tenant_id: String,
    pub workflow_id: Uuid,
    pub execution_number: i32,
    pub trigger_reason: String,
    pub triggered_by: Option<String>,
    pub started_at: DateTime<Utc>,
}

/// Changes to one execution row, folded over the batch.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ExecutionPatch {
    pub execution_id: Uuid,
    /// Step id -> the step's entry in `step_results`, merged with [`merge_step`].
    pub steps: BTreeMap<String, Map<String, Value>>,
    /// Step id -> its latest assignment.
    pub assignments: Map<String, Value>,
    /// Steps scheduled in the batch, in the order of their latest scheduling. The store puts
    /// them after the stored `active_steps` (all scheduled earlier), so `active_steps` stays in
    /// scheduling order however the log is cut into batches.
    pub scheduled: Vec<String>,
    pub status: ExecutionStatus,
    /// The batch's first end of the execution; it applies only if the stored one had not ended.
    pub ending: Option<Ending>,
    pub updated_at: DateTime<Utc>,
}

pub(crate) const RUNNING: &str = "running";
pub(crate) const PAUSED: &str = "paused";
pub(crate) const COMPLETED: &str = "completed";
pub(crate) const FAILED: &str = "failed";
pub(crate) const CANCELLED: &str = "cancelled";
pub(crate) const ACTIVE: &str = "active";

/// What a batch does to an execution's `status`, for each status it can have had before the
/// batch: only `running` and `paused` change, since an ended execution stays as it ended. Folding
/// both outcomes lets a batch be planned without reading the stored row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ExecutionStatus {
    pub if_running: &'static str,
    pub if_paused: &'static str,
}

impl Default for ExecutionStatus {
    fn default() -> Self {
        Self {
            if_running: RUNNING,
            if_paused: PAUSED,
        }
    }
}

/// An event that moves an execution's status.
#[derive(Debug, Clone, Copy)]
enum Control {
    Pause,
    Resume,
    End(&'static str),
}

impl ExecutionStatus {
    fn apply(&mut self, control: Control) {
        fn after(status: &'static str, control: Control) -> &'static str {
            let open = status == RUNNING || status == PAUSED;
            match control {
                Control::Pause if open => PAUSED,
                // Defensive: events come in log order, but a resume must never reopen an
                // execution that ended.
                Control::Resume if status == PAUSED => RUNNING,
                Control::End(ended) if open => ended,
                _ => status,
            }
        }
        self.if_running = after(self.if_running, control);
        self.if_paused = after(self.if_paused, control);
    }
}

/// How an execution ended: completed, failed or cancelled.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Ending {
    pub error_message: Option<String>,
    pub failure_cause: Option<Value>,
    pub final_output: Option<Value>,
    /// Merged into `execution_context` (who cancelled, and why).
    pub context: Map<String, Value>,
    pub completed_at: DateTime<Utc>,
}

/// Changes to one workflow row, folded over the batch.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct WorkflowPatch {
    pub workflow_id: Uuid,
    pub status: WorkflowStatus,
    pub started_at: Option<DateTime<Utc>>,
    pub execution_count: Option<i32>,
    pub completed_at: Option<DateTime<Utc>>,
    pub duration: Option<Duration>,
    pub updated_at: DateTime<Utc>,
}

/// What a batch does to a workflow's `status`, for a stored status of `paused` and for any
/// other; `None` keeps the stored one. A workflow's status follows its latest execution
/// (`active`, then how it ended) except while it is paused.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct WorkflowStatus {
    pub if_paused: Option<&'static str>,
    pub otherwise: Option<&'static str>,
}

/// An event that moves a workflow's status.
#[derive(Debug, Clone, Copy)]
enum WorkflowControl {
    RunStarted,
    RunEnded(&'static str),
    Paused,
    Resumed,
}

impl WorkflowStatus {
    fn apply(&mut self, control: WorkflowControl) {
        fn after(
            status: Option<&'static str>,
            paused_before: bool,
            control: WorkflowControl,
        ) -> Option<&'static str> {
            let paused = status.map_or(paused_before, |s| s == PAUSED);
            match (paused, control) {
                (true, WorkflowControl::Resumed) => Some(ACTIVE),
                // Runs go on while their workflow is paused; their outcome must not unpause it.
                (true, _) | (false, WorkflowControl::Resumed) => status,
                (false, WorkflowControl::RunStarted) => Some(ACTIVE),
                (false, WorkflowControl::RunEnded(outcome)) => Some(outcome),
                (false, WorkflowControl::Paused) => Some(PAUSED),
            }
        }
        self.if_paused = after(self.if_paused, true, control);
        self.otherwise = after(self.otherwise, false, control);
    }
}

/// `actual_duration` of a completed run: from `started_at` (the batch's own start, or the stored
/// one when the run started in an earlier batch) to `completed_at`. Postgres does the
/// subtraction in both cases, so the result does not depend on where a batch was cut.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Duration {
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct InteractionRow {
    pub id: Uuid,
    pub tenant_id: String,
    pub workflow_execution_id: Uuid,
    pub from_agent_id: Option<Uuid>,
    pub to_agent_id: Option<Uuid>,
    pub interaction_type: &'static str,
    pub message: String,
    pub context_data: Value,
    pub related_step_id: Option<String>,
    pub requires_response: bool,
    pub created_at: DateTime<Utc>,
    pub event_sequence: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct KnowledgeRow {
    pub id: Uuid,
    pub tenant_id: String,
    pub workflow_id: Uuid,
    pub execution_id: Uuid,
    pub step_id: String,
    pub title: String,
    pub content: String,
    pub knowledge_type: &'static str,
    pub created_by_agent_id: Uuid,
    pub relevance_score: f64,
    pub tags: Value,
    pub created_at: DateTime<Utc>,
    pub event_sequence: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Rejection {
    pub stream_sequence: i64,
    pub subject: String,
    pub reason: String,
    pub payload: Vec<u8>,
    pub rejected_at: DateTime<Utc>,
}

/// Folds `batch` into row changes. `fresh` holds the ids of the batch's events that the
/// projection had not applied before; any other event is a re-published copy and changes nothing.
pub(crate) fn plan(batch: &[Incoming], fresh: &HashSet<Uuid>) -> Plan {
    let mut planner = Planner::default();
    let mut seen = HashSet::new();
    for incoming in batch {
        planner.plan.last_sequence = planner.plan.last_sequence.max(incoming.sequence);
        match &incoming.content {
            Ok(envelope) => {
                let id = envelope.meta.id.0;
                // `seen` catches two copies inside one batch: both ids were new to the table.
                if fresh.contains(&id) && seen.insert(id) {
                    planner.apply(incoming.sequence, envelope);
                }
            }
            Err(unreadable) => planner.plan.rejections.push(Rejection {
                stream_sequence: sequence(incoming.sequence),
                subject: incoming.subject.clone(),
                reason: unreadable.reason.clone(),
                payload: unreadable.payload.clone(),
                rejected_at: incoming.stored_at,
            }),
        }
    }
    planner.plan
}

fn sequence(stream_sequence: u64) -> i64 {
    // Stream sequences count stored messages; they stay far below i64::MAX.
    i64::try_from(stream_sequence).unwrap_or(i64::MAX)
}

/// A step's entry in `step_results` after `patch`: a later attempt replaces the entry, an
/// earlier one (a late message of a retried step) changes nothing, and the same attempt
/// overwrites the fields it names unless the attempt already ended (a worker's report after its
/// attempt timed out is ignored, as the coordinator ignores it). The store applies the same
/// rule between the stored entry and a batch's folded one, so folding first gives what applying
/// one event at a time would.
fn merge_step(
    current: Option<Map<String, Value>>,
    patch: Map<String, Value>,
) -> Map<String, Value> {
    fn attempt(entry: &Map<String, Value>) -> u64 {
        entry.get("attempt").and_then(Value::as_u64).unwrap_or(0)
    }
    match current {
        None => patch,
        Some(mut current) => match attempt(&current).cmp(&attempt(&patch)) {
            std::cmp::Ordering::Greater => current,
            std::cmp::Ordering::Less => patch,
            std::cmp::Ordering::Equal if step_ended(&current) => current,
            std::cmp::Ordering::Equal => {
                current.extend(patch);
                current
            }
        },
    }
}

/// Step statuses that end an attempt; the store's SQL lists the same ones.
const STEP_ENDED: [&str; 3] = ["completed", "failed", "timed_out"];

fn step_ended(entry: &Map<String, Value>) -> bool {
    entry
        .get("status")
        .and_then(Value::as_str)
        .is_some_and(|status| STEP_ENDED.contains(&status))
}

/// How many characters of shared knowledge its interaction quotes (as the seed does).
const KNOWLEDGE_PREVIEW_CHARS: usize = 200;

fn preview(content: &str) -> String {
    match content.char_indices().nth(KNOWLEDGE_PREVIEW_CHARS) {
        Some((cut, _)) => format!("{}...", &content[..cut]),
        None => content.to_owned(),
    }
}

/// The serde name of a unit enum variant (`"pipeline"`, `"manual"`).
fn wire_name<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(Value::String(name)) => name,
        _ => String::new(),
    }
}

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// Where a derived row came from.
struct Origin<'a> {
    event_id: Uuid,
    tenant: &'a str,
    at: DateTime<Utc>,
    sequence: i64,
}

impl InteractionRow {
    fn new(
        origin: &Origin<'_>,
        execution: ExecutionId,
        kind: InteractionType,
        message: String,
    ) -> Self {
        Self {
            id: origin.event_id,
            tenant_id: origin.tenant.to_owned(),
            workflow_execution_id: execution.0,
            from_agent_id: None,
            to_agent_id: None,
            interaction_type: kind.as_str(),
            message,
            context_data: json!({}),
            related_step_id: None,
            requires_response: false,
            created_at: origin.at,
            event_sequence: origin.sequence,
        }
    }
}

#[derive(Default)]
struct Planner {
    plan: Plan,
    agents: HashMap<Uuid, usize>,
    executions: HashMap<Uuid, usize>,
    workflows: HashMap<Uuid, usize>,
}

impl Planner {
    fn apply(&mut self, stream_sequence: u64, envelope: &Envelope) {
        let origin = Origin {
            event_id: envelope.meta.id.0,
            tenant: envelope.meta.tenant.as_str(),
            at: envelope.meta.time,
            sequence: sequence(stream_sequence),
        };
        match &envelope.event {
            Event::AgentRegistered(e) => self.agent_registered(&origin, &e.agent),
            Event::WorkflowCreated(e) => self.workflow_created(&origin, &e.workflow),
            Event::ExecutionStarted(e) => self.execution_started(&origin, e),
            Event::StepScheduled(e) => self.step_scheduled(&origin, e),
            Event::StepStarted(e) => self.step_started(&origin, e),
            Event::InteractionRecorded(e) => self.interaction_recorded(&origin, e),
            Event::KnowledgeShared(e) => self.knowledge_shared(&origin, e),
            Event::StepCompleted(e) => self.step_completed(&origin, e),
            Event::StepFailed(e) => self.step_failed(&origin, e),
            Event::StepTimedOut(e) => self.step_timed_out(&origin, e),
            Event::ExecutionPaused(e) => {
                self.execution(e.execution_id.0, origin.at)
                    .status
                    .apply(Control::Pause);
            }
            Event::ExecutionResumed(e) => {
                self.execution(e.execution_id.0, origin.at)
                    .status
                    .apply(Control::Resume);
            }
            Event::ExecutionCompleted(e) => self.execution_completed(&origin, e),
            Event::ExecutionFailed(e) => self.execution_failed(&origin, e),
            Event::ExecutionCancelled(e) => self.execution_cancelled(&origin, e),
            Event::WorkflowPaused(e) => self
                .workflow(e.workflow_id.0, origin.at)
                .status
                .apply(WorkflowControl::Paused),
            Event::WorkflowResumed(e) => self
                .workflow(e.workflow_id.0, origin.at)
                .status
                .apply(WorkflowControl::Resumed),
        }
    }

    /// A registration of a known agent updates its profile; it keeps its first `created_at`.
    fn agent_registered(&mut self, origin: &Origin<'_>, agent: &AgentProfile) {
        let row = AgentRow {
            id: agent.id.0,
            tenant_id: origin.tenant.to_owned(),
            name: agent.name.clone(),
            role: agent.role.clone(),
            backstory: agent.backstory.clone(),
            skills: json!(agent.skills),
            provider: agent.provider.clone(),
            model: agent.model.clone(),
            model_parameters: json!(agent.model_parameters),
            created_at: origin.at,
            updated_at: origin.at,
        };
        match self.agents.get(&row.id) {
            Some(&index) => {
                let created_at = self.plan.agents[index].created_at;
                self.plan.agents[index] = AgentRow { created_at, ..row };
            }
            None => {
                self.agents.insert(row.id, self.plan.agents.len());
                self.plan.agents.push(row);
            }
        }
    }

    fn workflow_created(&mut self, origin: &Origin<'_>, workflow: &WorkflowDefinition) {
        self.plan.workflows.push(WorkflowRow {
            id: workflow.id.0,
            tenant_id: origin.tenant.to_owned(),
            name: workflow.name.clone(),
            description: workflow.description.clone(),
            workflow_type: wire_name(&workflow.workflow_type),
            configuration: json!(workflow.configuration),
            participating_agents: json!(workflow.participating_agents),
            coordinator_agent_id: workflow.coordinator_agent_id.map(|id| id.0),
            total_steps: i32::try_from(workflow.configuration.steps.len()).unwrap_or(i32::MAX),
            created_at: origin.at,
        });
    }

    fn execution_started(&mut self, origin: &Origin<'_>, e: &ExecutionStarted) {
        // `storable` refused execution numbers beyond i32 before planning.
        let number = i32::try_from(e.execution_number).unwrap_or(i32::MAX);
        self.plan.executions.push(ExecutionRow {
            id: e.execution_id.0,
            tenant_id: origin.tenant.to_owned(),
            workflow_id: e.workflow_id.0,
            execution_number: number,
            trigger_reason: wire_name(&e.trigger_reason),
            triggered_by: e.triggered_by.clone(),
            started_at: origin.at,
        });
        let workflow = self.workflow(e.workflow_id.0, origin.at);
        workflow.status.apply(WorkflowControl::RunStarted);
        workflow.started_at = Some(origin.at);
        workflow.execution_count = Some(workflow.execution_count.map_or(number, |n| n.max(number)));
    }

    fn step_scheduled(&mut self, origin: &Origin<'_>, e: &StepScheduled) {
        let step = e.step.id.to_string();
        let execution = self.execution(e.execution_id.0, origin.at);
        let mut entry =
            json!({ "status": "scheduled", "attempt": e.attempt, "agentId": e.agent.id });
        if let Some(timeout_at) = e.timeout_at {
            entry["timeoutAt"] = json!(timeout_at);
        }
        execution.merge_step(&step, entry);
        execution.assignments.insert(
            step.clone(),
            json!({
                "agentId": e.agent.id,
                "agentName": e.agent.name,
                "reason": e.reason,
                "attempt": e.attempt,
            }),
        );
        execution.scheduled.retain(|scheduled| *scheduled != step);
        execution.scheduled.push(step);
        self.plan.interactions.push(InteractionRow {
            from_agent_id: e.coordinator_agent_id.map(|id| id.0),
            to_agent_id: Some(e.agent.id.0),
            context_data: json!({ "stepId": e.step.id, "attempt": e.attempt, "reason": e.reason }),
            related_step_id: Some(e.step.id.to_string()),
            ..InteractionRow::new(
                origin,
                e.execution_id,
                InteractionType::TaskDelegation,
                delegation_message(&e.step.name, &e.agent.name, &e.reason),
            )
        });
    }

    fn step_started(&mut self, origin: &Origin<'_>, e: &StepStarted) {
        let a = &e.attempt;
        self.execution(a.execution_id.0, origin.at).merge_step(
            a.step_id.as_str(),
            json!({
                "status": "running",
                "attempt": a.number,
                "agentId": a.agent_id,
                "startedAt": origin.at,
            }),
        );
        self.step_interaction(
            origin,
            a,
            format!("Starting step: {}", a.step_name),
            json!({ "stepId": a.step_id, "attempt": a.number }),
        );
    }

    fn step_completed(&mut self, origin: &Origin<'_>, e: &StepCompleted) {
        let (a, result) = (&e.attempt, &e.result);
        self.execution(a.execution_id.0, origin.at).merge_step(
            a.step_id.as_str(),
            json!({
                "status": "completed",
                "attempt": a.number,
                "agentId": a.agent_id,
                "summary": result.summary,
                "output": result.output,
                "insights": result.insights,
                "decisions": result.decisions,
                "questions": result.questions,
                "tokens": result.tokens,
                "provider": e.provider,
                "model": e.model,
                "durationMs": e.duration_ms,
                "completedAt": origin.at,
            }),
        );
        self.step_interaction(
            origin,
            a,
            format!("Completed step: {}", a.step_name),
            json!({ "stepId": a.step_id, "result": result.summary, "tokensUsed": result.tokens.total }),
        );
    }

    fn step_failed(&mut self, origin: &Origin<'_>, e: &StepFailed) {
        let a = &e.attempt;
        self.execution(a.execution_id.0, origin.at).merge_step(
            a.step_id.as_str(),
            json!({
                "status": "failed",
                "attempt": a.number,
                "agentId": a.agent_id,
                "error": e.error,
                "failedAt": origin.at,
                "completedAt": origin.at,
            }),
        );
        self.step_interaction(
            origin,
            a,
            format!("Step failed: {} - {}", a.step_name, e.error),
            json!({ "stepId": a.step_id, "error": true, "errorMessage": e.error }),
        );
    }

    /// Like a failed attempt, but the coordinator's timer, not the agent, reports it: the
    /// interaction comes from the coordinator (no agent) and is addressed to the agent.
    fn step_timed_out(&mut self, origin: &Origin<'_>, e: &StepTimedOut) {
        let a = &e.attempt;
        let error = format!("timed out after {} minute(s)", e.timeout_minutes);
        self.execution(a.execution_id.0, origin.at).merge_step(
            a.step_id.as_str(),
            json!({
                "status": "timed_out",
                "attempt": a.number,
                "agentId": a.agent_id,
                "error": error,
                "timeoutMinutes": e.timeout_minutes,
                "completedAt": origin.at,
            }),
        );
        self.plan.interactions.push(InteractionRow {
            to_agent_id: Some(a.agent_id.0),
            context_data: json!({
                "stepId": a.step_id,
                "attempt": a.number,
                "error": true,
                "errorMessage": error,
                "timeoutMinutes": e.timeout_minutes,
            }),
            related_step_id: Some(a.step_id.to_string()),
            ..InteractionRow::new(
                origin,
                a.execution_id,
                InteractionType::Coordination,
                format!("Step timed out: {} - {error}", a.step_name),
            )
        });
    }

    /// The coordination note an agent leaves about its own step.
    fn step_interaction(
        &mut self,
        origin: &Origin<'_>,
        attempt: &StepAttempt,
        message: String,
        context_data: Value,
    ) {
        self.plan.interactions.push(InteractionRow {
            from_agent_id: Some(attempt.agent_id.0),
            context_data,
            related_step_id: Some(attempt.step_id.to_string()),
            ..InteractionRow::new(
                origin,
                attempt.execution_id,
                InteractionType::Coordination,
                message,
            )
        });
    }

    fn interaction_recorded(&mut self, origin: &Origin<'_>, e: &InteractionRecorded) {
        let context_data = match &e.context_data {
            Value::Null => json!({}),
            given => given.clone(),
        };
        self.plan.interactions.push(InteractionRow {
            from_agent_id: Some(e.from_agent_id.0),
            to_agent_id: e.to_agent_id.map(|id| id.0),
            context_data,
            related_step_id: e.related_step_id.as_ref().map(StepId::to_string),
            requires_response: e.requires_response,
            ..InteractionRow::new(
                origin,
                e.execution_id,
                e.interaction_type,
                e.message.clone(),
            )
        });
    }

    fn knowledge_shared(&mut self, origin: &Origin<'_>, e: &KnowledgeShared) {
        self.plan.knowledge.push(KnowledgeRow {
            id: e.knowledge_id.0,
            tenant_id: origin.tenant.to_owned(),
            workflow_id: e.workflow_id.0,
            execution_id: e.execution_id.0,
            step_id: e.step_id.to_string(),
            title: e.title.clone(),
            content: e.content.clone(),
            knowledge_type: e.knowledge_type.as_str(),
            created_by_agent_id: e.created_by_agent_id.0,
            relevance_score: e.relevance_score,
            tags: json!(e.tags),
            created_at: origin.at,
            event_sequence: origin.sequence,
        });
        // The knowledge row is keyed by the knowledge id; its interaction, like every derived
        // interaction, by the event id.
        self.plan.interactions.push(InteractionRow {
            from_agent_id: Some(e.created_by_agent_id.0),
            context_data: json!({
                "knowledgeType": e.knowledge_type,
                "content": preview(&e.content),
            }),
            related_step_id: Some(e.step_id.to_string()),
            ..InteractionRow::new(
                origin,
                e.execution_id,
                InteractionType::KnowledgeSharing,
                format!("Shared knowledge: {}", e.title),
            )
        });
    }

    fn execution_completed(&mut self, origin: &Origin<'_>, e: &ExecutionCompleted) {
        self.execution(e.execution_id.0, origin.at).end(
            COMPLETED,
            Ending {
                final_output: Some(e.final_output.clone()),
                ..Ending::at(origin.at)
            },
        );
        let workflow = self.workflow(e.workflow_id.0, origin.at);
        workflow.run_ended(COMPLETED, origin.at);
        workflow.duration = Some(Duration {
            started_at: workflow.started_at,
            completed_at: origin.at,
        });
    }

    fn execution_failed(&mut self, origin: &Origin<'_>, e: &ExecutionFailed) {
        self.execution(e.execution_id.0, origin.at).end(
            FAILED,
            Ending {
                error_message: Some(e.error.clone()),
                failure_cause: Some(json!(e.cause)),
                ..Ending::at(origin.at)
            },
        );
        self.workflow(e.workflow_id.0, origin.at)
            .run_ended(FAILED, origin.at);
    }

    fn execution_cancelled(&mut self, origin: &Origin<'_>, e: &ExecutionCancelled) {
        let reason = e.request.reason.as_deref().unwrap_or(CANCELLED);
        self.execution(e.execution_id.0, origin.at).end(
            CANCELLED,
            Ending {
                error_message: Some(reason.to_owned()),
                context: object(json!({ "cancellation": e.request })),
                ..Ending::at(origin.at)
            },
        );
        self.workflow(e.workflow_id.0, origin.at)
            .run_ended(CANCELLED, origin.at);
    }

    /// The batch's patch of an execution, touched at `at`.
    fn execution(&mut self, id: Uuid, at: DateTime<Utc>) -> &mut ExecutionPatch {
        let patches = &mut self.plan.execution_patches;
        let index = *self.executions.entry(id).or_insert_with(|| {
            patches.push(ExecutionPatch {
                execution_id: id,
                steps: BTreeMap::new(),
                assignments: Map::new(),
                scheduled: Vec::new(),
                status: ExecutionStatus::default(),
                ending: None,
                updated_at: at,
            });
            patches.len() - 1
        });
        let patch = &mut patches[index];
        patch.updated_at = at;
        patch
    }

    /// The batch's patch of a workflow, touched at `at`.
    fn workflow(&mut self, id: Uuid, at: DateTime<Utc>) -> &mut WorkflowPatch {
        let patches = &mut self.plan.workflow_patches;
        let index = *self.workflows.entry(id).or_insert_with(|| {
            patches.push(WorkflowPatch {
                workflow_id: id,
                status: WorkflowStatus::default(),
                started_at: None,
                execution_count: None,
                completed_at: None,
                duration: None,
                updated_at: at,
            });
            patches.len() - 1
        });
        let patch = &mut patches[index];
        patch.updated_at = at;
        patch
    }
}

impl ExecutionPatch {
    fn merge_step(&mut self, step: &str, patch: Value) {
        let current = self.steps.remove(step);
        self.steps
            .insert(step.to_owned(), merge_step(current, object(patch)));
    }

    /// Ends the execution as `status`; only the first end counts, as only the first would
    /// apply one event at a time.
    fn end(&mut self, status: &'static str, ending: Ending) {
        self.status.apply(Control::End(status));
        self.ending.get_or_insert(ending);
    }
}

impl Ending {
    fn at(completed_at: DateTime<Utc>) -> Self {
        Self {
            error_message: None,
            failure_cause: None,
            final_output: None,
            context: Map::new(),
            completed_at,
        }
    }
}

impl WorkflowPatch {
    /// A run of the workflow ended as `outcome`.
    fn run_ended(&mut self, outcome: &'static str, at: DateTime<Utc>) {
        self.status.apply(WorkflowControl::RunEnded(outcome));
        self.completed_at = Some(at);
    }
}

fn delegation_message(step: &str, agent: &str, reason: &AssignmentReason) -> String {
    format!("Assigned {step} to {agent}: {}", reason.describe())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test that unwraps fails with the value it got
mod tests {
    use super::*;
    use crate::testing::{Fixture, plan_all};
    use cadre_proto::KnowledgeId;
    use cadre_proto::events::AgentRegistered;
    use cadre_proto::model::KnowledgeType;

    #[test]
    fn events_for_one_execution_fold_into_one_patch_in_order() {
        let mut f = Fixture::new();
        let batch = vec![
            f.message(Event::WorkflowCreated(
                cadre_proto::events::WorkflowCreated {
                    workflow: f.definition(),
                },
            )),
            f.message(f.started(1)),
            f.message(f.scheduled(1)),
            f.message(f.step_started(1)),
            f.message(f.step_completed(1)),
            f.message(Event::ExecutionCompleted(ExecutionCompleted {
                execution_id: f.execution,
                workflow_id: f.workflow,
                final_output: json!({ "design": "The design" }),
            })),
        ];
        let plan = plan_all(&batch);

        assert_eq!(plan.last_sequence, 6);
        assert_eq!(plan.workflows.len(), 1);
        assert_eq!(plan.workflows[0].total_steps, 1);
        assert_eq!(plan.workflows[0].workflow_type, "pipeline");
        assert_eq!(plan.executions.len(), 1);
        assert_eq!(plan.executions[0].trigger_reason, "manual");

        assert_eq!(plan.execution_patches.len(), 1);
        let patch = &plan.execution_patches[0];
        let step = &patch.steps["design"];
        assert_eq!(step["status"], "completed");
        assert_eq!(step["attempt"], 1);
        assert_eq!(step["agentId"], json!(f.agent.id));
        assert_eq!(step["summary"], "Designed");
        assert_eq!(step["tokens"]["total"], 15);
        assert_eq!(step["durationMs"], 42);
        assert_eq!(patch.assignments["design"]["agentName"], "Ada");
        assert_eq!(patch.assignments["design"]["reason"]["kind"], "roleMatch");
        assert_eq!(patch.scheduled, ["design"]);
        assert_eq!(
            patch.status,
            ExecutionStatus {
                if_running: "completed",
                if_paused: "completed"
            }
        );
        let ending = patch.ending.as_ref().unwrap();
        assert_eq!(ending.final_output, Some(json!({ "design": "The design" })));
        assert_eq!(ending.completed_at, f.clock);
        assert_eq!(patch.updated_at, f.clock);

        assert_eq!(plan.workflow_patches.len(), 1);
        let workflow = &plan.workflow_patches[0];
        let started_at = batch[1].content.as_ref().unwrap().meta.time;
        assert_eq!(
            workflow.status,
            WorkflowStatus {
                if_paused: None,
                otherwise: Some("completed")
            },
            "a paused workflow stays paused"
        );
        assert_eq!(workflow.started_at, Some(started_at));
        assert_eq!(workflow.execution_count, Some(1));
        assert_eq!(
            workflow.duration,
            Some(Duration {
                started_at: Some(started_at),
                completed_at: f.clock
            })
        );

        let messages: Vec<_> = plan
            .interactions
            .iter()
            .map(|i| i.message.as_str())
            .collect();
        assert_eq!(
            messages,
            [
                "Assigned Design to Ada: role matches 'architect'",
                "Starting step: Design",
                "Completed step: Design",
            ]
        );
        let delegation = &plan.interactions[0];
        assert_eq!(delegation.interaction_type, "task_delegation");
        assert_eq!(delegation.from_agent_id, None);
        assert_eq!(delegation.to_agent_id, Some(f.agent.id.0));
        assert_eq!(delegation.event_sequence, 3);
        assert_eq!(delegation.id, batch[2].content.as_ref().unwrap().meta.id.0);
        assert_eq!(plan.interactions[2].context_data["tokensUsed"], 15);
    }

    #[test]
    fn a_later_attempt_replaces_a_step_and_a_stale_one_changes_nothing() {
        let mut f = Fixture::new();
        let batch = vec![
            f.message(f.scheduled(1)),
            f.message(f.step_failed(1)),
            f.message(f.scheduled(2)),
            // A slow worker's report about attempt 1 arrives after attempt 2 was scheduled.
            f.message(f.step_completed(1)),
            f.message(f.step_started(2)),
        ];
        let plan = plan_all(&batch);
        let step = &plan.execution_patches[0].steps["design"];
        assert_eq!(
            Value::Object(step.clone()),
            json!({ "status": "running", "attempt": 2, "agentId": f.agent.id, "startedAt": f.clock })
        );
        assert_eq!(
            plan.execution_patches[0].assignments["design"]["attempt"],
            2
        );
        assert_eq!(plan.interactions.len(), 5, "every event is still logged");
    }

    #[test]
    fn malformed_and_unknown_messages_become_rejections() {
        let mut f = Fixture::new();
        let good = f.message(f.scheduled(1));
        let stored_at = f.clock;
        let mut unknown: Value = serde_json::from_slice(&good_payload(&good)).unwrap();
        unknown["type"] = "dev.cadre.execution.exploded.v9".into();
        let batch = vec![
            Incoming::decode(7, "cadre.events.x", stored_at, b"{not json"),
            good,
            Incoming::decode(
                9,
                "cadre.events.y",
                stored_at,
                &serde_json::to_vec(&unknown).unwrap(),
            ),
        ];
        let plan = plan_all(&batch);

        assert_eq!(plan.last_sequence, 9);
        assert_eq!(
            plan.execution_patches.len(),
            1,
            "the good event is still applied"
        );
        assert_eq!(plan.rejections.len(), 2);
        let malformed = &plan.rejections[0];
        assert_eq!(malformed.stream_sequence, 7);
        assert_eq!(malformed.subject, "cadre.events.x");
        assert!(
            malformed
                .reason
                .starts_with("not a CloudEvents JSON envelope"),
            "{}",
            malformed.reason
        );
        assert_eq!(malformed.payload, b"{not json");
        assert_eq!(malformed.rejected_at, stored_at);
        assert_eq!(
            plan.rejections[1].reason,
            "unknown event type \"dev.cadre.execution.exploded.v9\""
        );
    }

    fn good_payload(incoming: &Incoming) -> Vec<u8> {
        incoming.content.as_ref().unwrap().encode()
    }

    #[test]
    fn knowledge_interaction_quotes_at_most_200_characters() {
        let mut f = Fixture::new();
        let shared = |content: String| {
            Event::KnowledgeShared(KnowledgeShared {
                knowledge_id: KnowledgeId::new(),
                workflow_id: f.workflow,
                execution_id: f.execution,
                step_id: f.step.id.clone(),
                title: "Insights from Design".to_owned(),
                content,
                knowledge_type: KnowledgeType::Insight,
                created_by_agent_id: f.agent.id,
                relevance_score: 0.8,
                tags: vec!["design".to_owned()],
            })
        };
        let long = "é".repeat(250);
        let exact = "x".repeat(200);
        let (long_event, exact_event) = (shared(long.clone()), shared(exact.clone()));
        let batch = vec![f.message(long_event), f.message(exact_event)];
        let plan = plan_all(&batch);

        assert_eq!(plan.knowledge.len(), 2);
        assert_eq!(
            plan.knowledge[0].content, long,
            "the knowledge row keeps it all"
        );
        assert_eq!(plan.knowledge[0].knowledge_type, "insight");
        let quoted = plan.interactions[0].context_data["content"]
            .as_str()
            .unwrap();
        assert_eq!(quoted, format!("{}...", "é".repeat(200)));
        assert_eq!(plan.interactions[1].context_data["content"], exact.as_str());
        assert_eq!(
            plan.interactions[0].message,
            "Shared knowledge: Insights from Design"
        );
        assert_eq!(plan.interactions[0].interaction_type, "knowledge_sharing");
        assert_eq!(
            plan.interactions[0].context_data["knowledgeType"],
            "insight"
        );
        assert_ne!(plan.interactions[0].id, plan.knowledge[0].id);
        assert_eq!(
            plan.interactions[0].id,
            batch[0].content.as_ref().unwrap().meta.id.0
        );
    }

    #[test]
    fn copies_of_applied_events_change_nothing() {
        let mut f = Fixture::new();
        let first = f.message(f.scheduled(1));
        let copy = Incoming::decode(2, first.subject.clone(), f.clock, &good_payload(&first));
        let batch = vec![first, copy];
        let both_new = plan_all(&batch);
        assert_eq!(
            both_new.interactions.len(),
            1,
            "a copy inside the batch is dropped"
        );
        assert_eq!(both_new.last_sequence, 2);

        let both_applied = plan(&batch, &HashSet::new());
        assert!(both_applied.execution_patches.is_empty() && both_applied.interactions.is_empty());
        assert_eq!(
            both_applied.last_sequence, 2,
            "the checkpoint still moves past them"
        );
    }

    #[test]
    fn agent_registered_twice_keeps_first_creation_time() {
        let mut f = Fixture::new();
        let mut renamed = f.agent.clone();
        renamed.name = "Ada Lovelace".to_owned();
        let register = |agent: AgentProfile| Event::AgentRegistered(AgentRegistered { agent });
        let batch = vec![
            f.message(register(f.agent.clone())),
            f.message(register(renamed)),
        ];
        let plan = plan_all(&batch);
        assert_eq!(plan.agents.len(), 1);
        assert_eq!(plan.agents[0].name, "Ada Lovelace");
        assert_eq!(
            plan.agents[0].created_at + chrono::Duration::seconds(1),
            plan.agents[0].updated_at
        );
    }

    #[test]
    fn nul_characters_are_replaced_not_fatal() {
        let mut f = Fixture::new();
        let mut failed = f.step_failed(1);
        if let Event::StepFailed(e) = &mut failed {
            e.error = "bad\u{0}byte and a literal \\u0000".to_owned();
        }
        let incoming = f.message(failed);
        let envelope = incoming.content.as_ref().unwrap();
        let Event::StepFailed(e) = &envelope.event else {
            panic!("decoded as {envelope:?}")
        };
        assert_eq!(e.error, "bad\u{fffd}byte and a literal \\u0000");
    }

    #[test]
    fn unstorable_events_are_rejected() {
        let mut f = Fixture::new();
        let incoming = f.message(f.started(u32::MAX));
        let reason = &incoming.content.as_ref().unwrap_err().reason;
        assert_eq!(reason, "execution number 4294967295 is out of range");
    }

    fn only_patch(plan: &Plan) -> &ExecutionPatch {
        assert_eq!(plan.execution_patches.len(), 1, "{plan:?}");
        &plan.execution_patches[0]
    }

    #[test]
    fn every_step_entry_records_when_it_started_and_ended() {
        let mut f = Fixture::with_steps(&["design", "review"]);
        let review = f.on("review");
        let batch = f.messages([
            f.scheduled(1),
            review.scheduled(1),
            f.step_started(1),
            review.step_started(1),
            f.step_completed(1),
            review.step_failed(1),
        ]);
        let at = |i: usize| json!(batch[i].content.as_ref().unwrap().meta.time);
        let plan = plan_all(&batch);
        let steps = &only_patch(&plan).steps;
        assert_eq!(steps["design"]["startedAt"], at(2));
        assert_eq!(steps["design"]["completedAt"], at(4));
        assert_eq!(steps["review"]["status"], "failed");
        assert_eq!(steps["review"]["startedAt"], at(3));
        assert_eq!(steps["review"]["completedAt"], at(5));
        assert_eq!(
            steps["review"]["failedAt"],
            at(5),
            "kept for existing readers"
        );
    }

    #[test]
    fn a_timed_out_attempt_keeps_its_start_and_ignores_what_it_reports_later() {
        let mut f = Fixture::new();
        let batch = f.messages([
            f.scheduled(1),
            f.step_started(1),
            f.step_timed_out(1, 5),
            // The worker finishes after the coordinator gave up on it.
            f.step_completed(1),
        ]);
        let time = |i: usize| batch[i].content.as_ref().unwrap().meta.time;
        let plan = plan_all(&batch);
        let step = &only_patch(&plan).steps["design"];
        assert_eq!(
            Value::Object(step.clone()),
            json!({
                "status": "timed_out",
                "attempt": 1,
                "agentId": f.agent.id,
                "startedAt": time(1),
                "error": "timed out after 5 minute(s)",
                "timeoutMinutes": 5,
                "completedAt": time(2),
            })
        );

        let timed_out = &plan.interactions[2];
        assert_eq!(timed_out.interaction_type, "coordination");
        assert_eq!(
            timed_out.message,
            "Step timed out: Design - timed out after 5 minute(s)"
        );
        assert_eq!(
            timed_out.from_agent_id, None,
            "the coordinator's timer said so"
        );
        assert_eq!(timed_out.to_agent_id, Some(f.agent.id.0));
        assert_eq!(timed_out.related_step_id.as_deref(), Some("design"));
        assert_eq!(timed_out.context_data["error"], true);
        assert_eq!(timed_out.context_data["timeoutMinutes"], 5);
        assert_eq!(timed_out.id, batch[2].content.as_ref().unwrap().meta.id.0);
    }

    #[test]
    fn a_retry_after_a_timeout_replaces_the_entry() {
        let mut f = Fixture::new();
        let batch = f.messages([
            f.scheduled(1),
            f.step_timed_out(1, 1),
            f.scheduled(2),
            f.step_started(1),
        ]);
        let plan = plan_all(&batch);
        let patch = only_patch(&plan);
        assert_eq!(patch.steps["design"]["status"], "scheduled");
        assert_eq!(patch.steps["design"]["attempt"], 2);
        assert_eq!(patch.scheduled, ["design"]);
    }

    #[test]
    fn steps_scheduled_in_a_batch_are_listed_by_their_latest_scheduling() {
        let mut f = Fixture::with_steps(&["design", "review", "test"]);
        let (review, test) = (f.on("review"), f.on("test"));
        let batch = f.messages([
            f.scheduled(1),
            review.scheduled(1),
            test.scheduled(1),
            f.step_failed(1),
            f.scheduled(2),
        ]);
        let plan = plan_all(&batch);
        assert_eq!(only_patch(&plan).scheduled, ["review", "test", "design"]);
    }

    #[test]
    fn a_failed_execution_records_its_cause() {
        let mut f = Fixture::new();
        let batch = f.messages([f.failed()]);
        let plan = plan_all(&batch);
        let patch = only_patch(&plan);
        assert_eq!(patch.status.if_running, "failed");
        assert_eq!(patch.status.if_paused, "failed");
        let ending = patch.ending.as_ref().unwrap();
        assert_eq!(
            ending.failure_cause,
            Some(json!({ "kind": "stepFailed", "stepId": "design" }))
        );
        assert_eq!(
            ending.error_message.as_deref(),
            Some("step 'Design' failed after 1 attempt(s)")
        );
        assert_eq!(plan.workflow_patches[0].status.otherwise, Some("failed"));
    }

    #[test]
    fn a_failure_recorded_before_causes_existed_reads_as_the_current_version() {
        let mut f = Fixture::new();
        let current = f.message(f.failed());
        let mut v1: Value =
            serde_json::from_slice(&current.content.as_ref().unwrap().encode()).unwrap();
        v1["type"] = cadre_proto::upcast::EXECUTION_FAILED_V1.into();
        v1["data"] = json!({
            "executionId": f.execution,
            "workflowId": f.workflow,
            "failedStepId": "design",
            "error": "it broke",
        });
        let old = Incoming::decode(
            2,
            current.subject.clone(),
            f.clock,
            &serde_json::to_vec(&v1).unwrap(),
        );
        let plan = plan_all(&[old]);
        let ending = only_patch(&plan).ending.clone().unwrap();
        assert_eq!(
            ending.failure_cause,
            Some(json!({ "kind": "stepFailed", "stepId": "design" }))
        );
        assert_eq!(ending.error_message.as_deref(), Some("it broke"));
    }

    #[test]
    fn a_cancellation_ends_the_execution_with_its_reason_and_requester() {
        let mut f = Fixture::new();
        let batch = f.messages([f.cancelled(Some("ops"), Some("wrong input"))]);
        let plan = plan_all(&batch);
        let patch = only_patch(&plan);
        assert_eq!(patch.status.if_running, "cancelled");
        assert_eq!(patch.status.if_paused, "cancelled");
        let ending = patch.ending.as_ref().unwrap();
        assert_eq!(ending.error_message.as_deref(), Some("wrong input"));
        assert_eq!(ending.completed_at, f.clock);
        assert_eq!(
            Value::Object(ending.context.clone()),
            json!({ "cancellation": { "requestedBy": "ops", "reason": "wrong input" } })
        );
        assert_eq!(plan.workflow_patches[0].status.otherwise, Some("cancelled"));

        let batch = f.messages([f.cancelled(None, None)]);
        let plan = plan_all(&batch);
        let ending = only_patch(&plan).ending.clone().unwrap();
        assert_eq!(ending.error_message.as_deref(), Some("cancelled"));
        assert_eq!(Value::Object(ending.context), json!({ "cancellation": {} }));
    }

    #[test]
    fn pause_and_resume_move_only_an_execution_that_has_not_ended() {
        let mut f = Fixture::new();
        let e = f.clone();
        let mut status = |events: Vec<Event>| {
            let plan = plan_all(&f.messages(events));
            let patch = only_patch(&plan);
            (
                patch.status.if_running,
                patch.status.if_paused,
                patch.ending.is_some(),
            )
        };
        assert_eq!(status(vec![e.paused()]), ("paused", "paused", false));
        assert_eq!(status(vec![e.resumed()]), ("running", "running", false));
        assert_eq!(
            status(vec![e.paused(), e.resumed()]),
            ("running", "running", false)
        );
        assert_eq!(
            status(vec![e.paused(), e.completed()]),
            ("completed", "completed", true)
        );
        assert_eq!(
            status(vec![e.completed(), e.resumed(), e.paused()]),
            ("completed", "completed", true),
            "an ended execution is never resurrected"
        );

        // Only the first end counts.
        let plan = plan_all(&f.messages([e.cancelled(Some("ops"), None), e.completed()]));
        let patch = only_patch(&plan);
        assert_eq!(patch.status.if_running, "cancelled");
        let ending = patch.ending.as_ref().unwrap();
        assert_eq!(ending.final_output, None);
        assert_eq!(ending.error_message.as_deref(), Some("cancelled"));
    }

    #[test]
    fn a_paused_workflow_stays_paused_while_its_runs_start_and_end() {
        let mut f = Fixture::new();
        let e = f.clone();
        let mut status = |events: Vec<Event>| {
            let plan = plan_all(&f.messages(events));
            assert_eq!(plan.workflow_patches.len(), 1);
            plan.workflow_patches[0].status
        };
        let unless_paused = |otherwise| WorkflowStatus {
            if_paused: None,
            otherwise,
        };
        assert_eq!(
            status(vec![e.workflow_paused()]),
            unless_paused(Some("paused"))
        );
        assert_eq!(
            status(vec![e.workflow_paused(), e.started(2), e.completed()]),
            unless_paused(Some("paused"))
        );
        assert_eq!(
            status(vec![e.started(2), e.completed()]),
            unless_paused(Some("completed"))
        );
        assert_eq!(
            status(vec![e.workflow_resumed()]),
            WorkflowStatus {
                if_paused: Some("active"),
                otherwise: None,
            },
            "resuming a workflow that is not paused changes nothing"
        );
        assert_eq!(
            status(vec![e.workflow_resumed(), e.failed()]),
            WorkflowStatus {
                if_paused: Some("failed"),
                otherwise: Some("failed"),
            }
        );
        assert_eq!(
            status(vec![e.workflow_paused(), e.workflow_resumed()]),
            WorkflowStatus {
                if_paused: Some("active"),
                otherwise: Some("active"),
            }
        );
    }
}
