//! `workflow_executions`: one row per run of a workflow, with each step's latest attempt
//! (`step_results`), who was assigned each step, the steps under way and how the run ended.
//! It is a view (migration 0013) over the run's own row (`executions`), written when the run
//! starts and when its status moves, and one row per step (`execution_steps`), written when the
//! step moves: a step's move no longer rewrites the whole run.
//!
//! An execution is `running` or `paused` until it ends `completed`, `failed` or `cancelled`;
//! an ended execution never changes status again.

use std::collections::{BTreeMap, HashMap, btree_map};

use cadre_proto::ExecutionId;
use cadre_proto::events::{
    EscalationResolved, ExecutionCancelled, ExecutionCompleted, ExecutionFailed,
    ExecutionReplanned, ExecutionStarted, QuestionsAsked, QuestionsExpired, Resolution,
    StepCompleted, StepDeferred, StepEscalated, StepFailed, StepRetryScheduled, StepReviewed,
    StepScheduled, StepSkipped, StepStarted, StepTimedOut, VotesTallied,
};
use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};
use sqlx::PgConnection;
use uuid::Uuid;

use super::{columns, object, wire_name};
use crate::plan::Origin;

const RUNNING: &str = "running";
const PAUSED: &str = "paused";
/// The run waits for a person (`escalation.afterMinutes`).
const ESCALATED_RUN: &str = "escalated";

/// How an execution ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Completed,
    Failed,
    Cancelled,
}

impl Outcome {
    /// Its `status`, in executions as in workflows.
    pub fn status(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => CANCELLED,
        }
    }
}

/// The execution's number as stored; `incoming::storable` refused numbers beyond `i32`.
pub(crate) fn number(e: &ExecutionStarted) -> i32 {
    i32::try_from(e.execution_number).unwrap_or(i32::MAX)
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ExecutionRow {
    pub id: Uuid,
    pub tenant_id: String,
    pub workflow_id: Uuid,
    pub execution_number: i32,
    pub trigger_reason: String,
    pub triggered_by: Option<String>,
    pub execution_context: Value,
    pub started_at: DateTime<Utc>,
}

/// Changes to one step's row (`execution_steps`), folded over the batch.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StepPatch {
    /// The step's entry in `step_results`, merged with [`merge_step`]: what the batch writes
    /// over no entry, one of an earlier attempt, or one of the same attempt still under way.
    pub entry: Map<String, Value>,
    /// What the batch writes over a stored entry of the same attempt that had ended: merged
    /// from the batch's first patch decided after an end ([`follows_end`]) on, since until
    /// then each of its patches changes nothing; `None` when there is none (the entry stays).
    /// Folding the batch from its first patch alone would carry that patch's fields (a
    /// worker's late report) over the ended entry with the decision that follows it.
    pub over_ended: Option<Map<String, Value>>,
    /// Its latest assignment, where the batch scheduled it.
    pub assignment: Option<Value>,
    /// The log sequence of its latest scheduling in the batch: the `workflow_executions` view
    /// orders the steps under way (`active_steps`) by it.
    pub scheduled_sequence: Option<i64>,
    /// The log sequence of the batch's first event about the step: the order of a step never
    /// scheduled (an approval waiting for a person, a skipped step).
    pub first_sequence: i64,
    /// When the batch's last event about the step was written.
    pub updated_at: DateTime<Utc>,
}

/// Changes to one execution, folded over the batch: its steps' rows, and its own row where
/// the batch moved the run itself.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ExecutionPatch {
    pub execution_id: Uuid,
    /// Step id -> the changes to its row.
    pub steps: BTreeMap<String, StepPatch>,
    pub status: ExecutionStatus,
    /// The batch's first end of the execution; it applies only if the stored one had not ended.
    pub ending: Option<Ending>,
    /// When the batch's last event about the run itself (a pause, a resume, an escalation, an
    /// end, whether or not it changed the status) was written; `None` when it had none, and
    /// the run's own row is left alone.
    pub controlled_at: Option<DateTime<Utc>>,
    /// The batch ended the run failed or cancelled: reports on its steps after that (a
    /// worker's delivery that raced the end) change nothing, as the coordinator ignores them.
    /// [`update_runs`] marks the steps then under way `cancelled`, and a later batch's reports
    /// find them ended.
    steps_closed: bool,
}

/// What a batch does to an execution's `status`, for each status it can have had before the
/// batch: only `running` and `paused` change, since an ended execution stays as it ended. Folding
/// both outcomes lets a batch be planned without reading the stored row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ExecutionStatus {
    pub if_running: &'static str,
    pub if_paused: &'static str,
    pub if_escalated: &'static str,
}

impl Default for ExecutionStatus {
    fn default() -> Self {
        Self {
            if_running: RUNNING,
            if_paused: PAUSED,
            if_escalated: ESCALATED_RUN,
        }
    }
}

/// An event that moves an execution's status.
#[derive(Debug, Clone, Copy)]
enum Control {
    Pause,
    Resume,
    /// The run waits for a person.
    Escalate,
    /// A person let the escalated run go on.
    Continue,
    End(Outcome),
}

impl ExecutionStatus {
    fn apply(&mut self, control: Control) {
        fn after(status: &'static str, control: Control) -> &'static str {
            let open = status == RUNNING || status == PAUSED || status == ESCALATED_RUN;
            match control {
                Control::Pause if status == RUNNING || status == PAUSED => PAUSED,
                // Defensive: events come in log order, but a resume must never reopen an
                // execution that ended.
                Control::Resume if status == PAUSED => RUNNING,
                Control::Escalate if status == RUNNING || status == PAUSED => ESCALATED_RUN,
                Control::Continue if status == ESCALATED_RUN => RUNNING,
                Control::End(outcome) if open => outcome.status(),
                _ => status,
            }
        }
        self.if_running = after(self.if_running, control);
        self.if_paused = after(self.if_paused, control);
        self.if_escalated = after(self.if_escalated, control);
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

/// A step's entry in `step_results` after `patch`: a later attempt replaces the entry, an
/// earlier one (a late message of a retried step) changes nothing, and the same attempt
/// overwrites the fields it names unless the attempt already ended (a worker's report after its
/// attempt timed out is ignored, as the coordinator ignores it) and the patch is not what was
/// decided after that end ([`follows_end`]). [`update_steps`] applies the same rule between the
/// stored entry and a batch's folded one (its [`StepPatch::over_ended`] over an ended entry),
/// so folding first gives what applying one event at a time would, however the log is cut
/// into batches.
fn merge_step(
    current: Option<Map<String, Value>>,
    patch: Map<String, Value>,
) -> Map<String, Value> {
    match current {
        None => patch,
        Some(mut current) => match attempt(&current).cmp(&attempt(&patch)) {
            std::cmp::Ordering::Greater => current,
            std::cmp::Ordering::Less => patch,
            // What was decided after the attempt's end says what comes next.
            std::cmp::Ordering::Equal if step_ended(&current) && !follows_end(&patch) => current,
            std::cmp::Ordering::Equal => {
                current.extend(patch);
                current
            }
        },
    }
}

fn attempt(entry: &Map<String, Value>) -> u64 {
    entry.get("attempt").and_then(Value::as_u64).unwrap_or(0)
}

/// [`StepPatch::over_ended`] after `patch`, for the batch's entry `entry` before it.
fn merge_over_ended(
    over_ended: Option<Map<String, Value>>,
    entry: &Map<String, Value>,
    patch: &Map<String, Value>,
) -> Option<Map<String, Value>> {
    match (attempt(entry).cmp(&attempt(patch)), over_ended) {
        (std::cmp::Ordering::Greater, kept) => kept,
        // A decision carries a status that ends the attempt, so merging after it goes by the
        // rule the stored entry would.
        (std::cmp::Ordering::Equal, Some(decided)) => {
            Some(merge_step(Some(decided), patch.clone()))
        }
        _ => follows_end(patch).then(|| patch.clone()),
    }
}

/// Step statuses that end an attempt (waiting for the retry or for the escalation's outcome is
/// an end too: the attempt's late reports change nothing); [`update_steps`] reads this list.
/// `cancelled` is written only by [`update_runs`], when the run ends under the step, and
/// `replaced` only by [`replace_steps`], when a re-plan drops it: a worker that announces or
/// finishes the attempt after that (its delivery raced the end or the re-plan) changes
/// nothing, as the coordinator ignores it, and nor does anything decided about the attempt
/// ([`CLOSED_UNDER_WAY`]).
const STEP_ENDED: [&str; 10] = [
    "completed",
    "failed",
    "timed_out",
    RETRY_WAITING,
    ESCALATED,
    ESCALATING,
    SKIPPED,
    ABORTED,
    CANCELLED,
    REPLACED,
];

/// The status of a step that was under way when its run failed or was cancelled.
const CANCELLED: &str = "cancelled";
/// The status of a step that was under way when a re-plan replaced the run's steps: the
/// coordinator forgets its attempt (a step the new plan keeps starts a new one), so nothing
/// else would ever end it.
const REPLACED: &str = "replaced";
/// What a run's end or re-plan made of a step under way: final for its attempt, even against
/// what [`follows_end`] (the coordinator refuses a resolution or a retry of such an attempt).
const CLOSED_UNDER_WAY: [&str; 2] = [CANCELLED, REPLACED];
/// Step statuses under way, which a run's end (`cancelled`) or re-plan (`replaced`) closes
/// ([`update_runs`], [`replace_steps`]), keeping what the step was doing (`cancelledWhile`,
/// `replacedWhile`).
const UNDER_WAY: [&str; 9] = [
    "scheduled",
    "running",
    "waiting",
    "awaiting_answers",
    RETRY_WAITING,
    ESCALATED,
    ESCALATING,
    VOTING,
    "changes_requested",
];

/// The status of a failed attempt's step while it waits for its retry, written over the
/// attempt's end.
const RETRY_WAITING: &str = "retry_waiting";
/// The step waits for a person to resolve its escalation (rung `person`, or an approval).
const ESCALATED: &str = "escalated";
/// The step waits for the attempt an escalation chose (a rung's agent, or what a person asked
/// for): the next scheduling replaces the entry.
const ESCALATING: &str = "escalating";
const SKIPPED: &str = "skipped";
/// A person aborted the run, or rejected the approval, at this step.
const ABORTED: &str = "aborted";
/// A panel votes on the step's work: the entry holds the last vote until the tally.
const VOTING: &str = "voting";
/// Marks an entry as a person's resolution of the attempt's escalation, whatever status it
/// gives the step.
const RESOLVED_AT: &str = "resolvedAt";

/// Whether `patch` is what the coordinator or a person decided once its attempt ended: the
/// wait for a retry, a rung of the escalation ladder, or a person's resolution. Such a patch is
/// written over the attempt's end (and over the escalation it resolves).
fn follows_end(patch: &Map<String, Value>) -> bool {
    let decided = patch
        .get("status")
        .and_then(Value::as_str)
        .is_some_and(|status| [RETRY_WAITING, ESCALATED, ESCALATING].contains(&status));
    decided || patch.contains_key(RESOLVED_AT)
}

fn step_ended(entry: &Map<String, Value>) -> bool {
    entry
        .get("status")
        .and_then(Value::as_str)
        .is_some_and(|status| STEP_ENDED.contains(&status))
}

impl ExecutionPatch {
    /// Merges `patch` into the step's entry, from the event at `origin`; `None`, changing
    /// nothing, once the batch ended the run failed or cancelled.
    fn merge_step(
        &mut self,
        step: &str,
        origin: &Origin<'_>,
        patch: Value,
    ) -> Option<&mut StepPatch> {
        if self.steps_closed {
            return None;
        }
        let patch = object(patch);
        Some(match self.steps.entry(step.to_owned()) {
            btree_map::Entry::Occupied(current) => {
                let current = current.into_mut();
                current.over_ended =
                    merge_over_ended(current.over_ended.take(), &current.entry, &patch);
                current.entry = merge_step(Some(std::mem::take(&mut current.entry)), patch);
                current.updated_at = origin.at;
                current
            }
            btree_map::Entry::Vacant(vacant) => vacant.insert(StepPatch {
                over_ended: follows_end(&patch).then(|| patch.clone()),
                entry: patch,
                assignment: None,
                scheduled_sequence: None,
                first_sequence: origin.sequence,
                updated_at: origin.at,
            }),
        })
    }

    /// Moves the run's status, from an event written `at`.
    fn control(&mut self, at: DateTime<Utc>, control: Control) {
        self.status.apply(control);
        self.controlled_at = Some(at);
    }

    /// Ends the execution; only the first end counts, as only the first would apply one event
    /// at a time.
    fn end(&mut self, outcome: Outcome, ending: Ending) {
        self.control(ending.completed_at, Control::End(outcome));
        if self.ending.is_none() && outcome != Outcome::Completed {
            self.steps_closed = true;
        }
        self.ending.get_or_insert(ending);
    }
}

/// The batch's new executions, and its changes to executions.
#[derive(Debug, Default)]
pub(crate) struct Changes {
    pub rows: Vec<ExecutionRow>,
    pub patches: Vec<ExecutionPatch>,
    index: HashMap<Uuid, usize>,
    /// The batch's re-plans, each after the patches it follows (`patches[..n]`): a re-plan
    /// closes the steps under way as the events before it left them, and the run's events
    /// after it fold into a patch of their own, written after it.
    replans: Vec<(usize, Replan)>,
}

/// A re-plan replaced an execution's steps.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Replan {
    pub execution_id: Uuid,
    /// 1 for the run's first.
    pub replan: u32,
    pub at: DateTime<Utc>,
}

impl Changes {
    pub fn started(&mut self, origin: &Origin<'_>, e: &ExecutionStarted) {
        self.rows.push(ExecutionRow {
            id: e.execution_id.0,
            tenant_id: origin.tenant.to_owned(),
            workflow_id: e.workflow_id.0,
            execution_number: number(e),
            trigger_reason: wire_name(&e.trigger_reason),
            triggered_by: e.triggered_by.clone(),
            // The seed's `executionContext`: what the run was started with.
            execution_context: e.input.clone().unwrap_or_else(|| json!({})),
            started_at: origin.at,
        });
    }

    pub fn step_scheduled(&mut self, origin: &Origin<'_>, e: &StepScheduled) {
        let mut entry =
            json!({ "status": "scheduled", "attempt": e.attempt, "agentId": e.agent.id });
        if let Some(timeout_at) = e.timeout_at {
            entry["timeoutAt"] = json!(timeout_at);
        }
        if let Some(review) = &e.review {
            // The attempt reviews the work: the entry shows that work while it is judged.
            entry["review"] =
                json!({ "round": review.round, "authorAgentId": review.author_agent_id });
            entry["summary"] = json!(review.summary);
            entry["output"] = json!(review.output);
        }
        if let Some(feedback) = &e.feedback {
            entry["feedback"] = json!(feedback);
        }
        let patch = self.patch(e.execution_id);
        let Some(step) = patch.merge_step(e.step.id.as_str(), origin, entry) else {
            return;
        };
        step.assignment = Some(json!({
            "agentId": e.agent.id,
            "agentName": e.agent.name,
            "provider": e.agent.provider,
            "reason": e.reason,
            "attempt": e.attempt,
        }));
        step.scheduled_sequence = Some(origin.sequence);
    }

    pub fn step_started(&mut self, origin: &Origin<'_>, e: &StepStarted) {
        let a = &e.attempt;
        self.patch(a.execution_id).merge_step(
            a.step_id.as_str(),
            origin,
            json!({
                "status": "running",
                "attempt": a.number,
                "agentId": a.agent_id,
                "startedAt": origin.at,
            }),
        );
    }

    /// The attempt waits for its provider: shown as `waiting`, with why and until when.
    pub fn step_deferred(&mut self, origin: &Origin<'_>, e: &StepDeferred) {
        let a = &e.attempt;
        self.patch(a.execution_id).merge_step(
            a.step_id.as_str(),
            origin,
            json!({
                "status": "waiting",
                "attempt": a.number,
                "agentId": a.agent_id,
                "waitingReason": e.error,
                "retryAt": e.retry_at,
                "deferrals": e.deferral,
                "waitingSince": e.waiting_since,
            }),
        );
    }

    /// The attempt waits for its teammates' answers: shown as `awaiting_answers`, with the
    /// questions.
    pub fn questions_asked(&mut self, origin: &Origin<'_>, e: &QuestionsAsked) {
        let a = &e.attempt;
        self.patch(a.execution_id).merge_step(
            a.step_id.as_str(),
            origin,
            json!({
                "status": "awaiting_answers",
                "attempt": a.number,
                "agentId": a.agent_id,
                "questions": e.questions,
            }),
        );
    }

    /// The failed step waits for its retry: shown as `retry_waiting`, with why and until when.
    pub fn retry_scheduled(&mut self, origin: &Origin<'_>, e: &StepRetryScheduled) {
        let a = &e.attempt;
        self.patch(a.execution_id).merge_step(
            a.step_id.as_str(),
            origin,
            json!({
                "status": RETRY_WAITING,
                "attempt": a.number,
                "agentId": a.agent_id,
                "error": e.error,
                "failures": e.failures,
                "retryAt": e.retry_at,
            }),
        );
    }

    /// The step climbed a rung of its escalation ladder, over the failed attempt's end (whose
    /// error and times stay): `escalated` while a person decides, with the escalation to
    /// resolve; `escalating` while the agent the rung chose waits for its attempt, named in
    /// `escalatedTo` (its scheduling replaces the entry).
    pub fn step_escalated(&mut self, origin: &Origin<'_>, e: &StepEscalated) {
        let mut entry = json!({
            "attempt": e.attempt,
            "rung": e.rung,
            "reason": e.reason,
            "escalatedAt": origin.at,
        });
        match e.escalation_id {
            Some(escalation_id) => {
                entry["status"] = json!(ESCALATED);
                entry["escalationId"] = json!(escalation_id);
                if e.approval {
                    entry["approval"] = json!(true);
                }
            }
            None => {
                entry["status"] = json!(ESCALATING);
                if let Some(agent) = &e.agent {
                    entry["escalatedTo"] = json!({
                        "agentId": agent.id,
                        "agentName": agent.name,
                        "provider": agent.provider,
                        "model": agent.model,
                    });
                }
            }
        }
        self.patch(e.execution_id)
            .merge_step(e.step_id.as_str(), origin, entry);
    }

    /// A person's resolution, over the `escalated` entry: the step `completed` with their
    /// result (`providedBy` them), `skipped`, `escalating` until the attempt they asked for is
    /// scheduled, or `aborted` (the run fails).
    pub fn execution_escalated(&mut self, origin: &Origin<'_>, execution: ExecutionId) {
        self.patch(execution).control(origin.at, Control::Escalate);
    }

    pub fn escalation_resolved(&mut self, origin: &Origin<'_>, e: &EscalationResolved) {
        let Some(step_id) = &e.step_id else {
            // The run's own escalation: `continue` lets it go on; an abort fails it next.
            if e.resolution == Resolution::Continue {
                self.patch(e.execution_id)
                    .control(origin.at, Control::Continue);
            }
            return;
        };
        let mut entry = json!({
            "attempt": e.attempt,
            "escalationId": e.escalation_id,
            "action": e.resolution.as_str(),
            "resolvedBy": e.request.requested_by,
            RESOLVED_AT: origin.at,
        });
        if let Some(comment) = &e.request.reason {
            entry["comment"] = json!(comment);
        }
        let status = match &e.resolution {
            Resolution::ProvideOutput { .. } | Resolution::Approve => "completed",
            Resolution::Skip => SKIPPED,
            Resolution::Retry | Resolution::Reassign { .. } => ESCALATING,
            Resolution::Abort | Resolution::Reject => ABORTED,
            // Only the run's own escalation takes it (above).
            Resolution::Continue => return,
        };
        entry["status"] = json!(status);
        if status != ESCALATING {
            entry["completedAt"] = json!(origin.at);
        }
        if let Some((summary, output)) = e.result() {
            entry["summary"] = json!(summary);
            entry["output"] = json!(output);
            entry["providedBy"] = json!(e.request.requested_by);
            // A person's result: no agent did it, and the failure it replaces is over.
            entry["agentId"] = Value::Null;
            entry["error"] = Value::Null;
        }
        if let Resolution::Reassign { agent_id } = &e.resolution {
            entry["escalatedTo"] = json!({ "agentId": agent_id });
        }
        self.patch(e.execution_id)
            .merge_step(step_id.as_str(), origin, entry);
    }

    /// A missed deadline that fails the attempt ends it like a failure; one the step goes on
    /// from changes nothing here (its next attempt's scheduling will).
    pub fn questions_expired(&mut self, origin: &Origin<'_>, e: &QuestionsExpired) {
        if !e.failed {
            return;
        }
        let a = &e.attempt;
        self.patch(a.execution_id).merge_step(
            a.step_id.as_str(),
            origin,
            json!({
                "status": "failed",
                "attempt": a.number,
                "agentId": a.agent_id,
                "error": "its questions were not all answered by the deadline",
                "failedAt": origin.at,
            }),
        );
    }

    pub fn step_completed(&mut self, origin: &Origin<'_>, e: &StepCompleted) {
        let (a, result) = (&e.attempt, &e.result);
        let mut entry = json!({
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
        });
        if let Some(full) = &result.full {
            // The texts are previews; the whole result is behind the API's result endpoint.
            entry["fullResult"] = json!(full);
        }
        if let Some(reason) = &e.fallback_reason {
            // `provider` and `model` name the fallback that answered; this says why.
            entry["fallbackReason"] = json!(reason);
        }
        self.patch(a.execution_id)
            .merge_step(a.step_id.as_str(), origin, entry);
    }

    /// A review's verdict: approval completes the step with the reviewed work (its author's);
    /// changes requested leave it for the author's next attempt.
    pub fn step_reviewed(&mut self, origin: &Origin<'_>, e: &StepReviewed) {
        let a = &e.attempt;
        let review = json!({
            "round": e.round,
            "approved": e.approved,
            "feedback": e.feedback,
            "reviewerId": a.agent_id,
            "authorAgentId": e.author_agent_id,
        });
        let patch = if let Some(ballot) = &e.ballot {
            // One vote of a panel's: the tally ([`Self::votes_tallied`]) settles the step.
            json!({
                "status": VOTING,
                "attempt": a.number,
                "vote": { "seat": ballot.seat, "seats": ballot.seats, "rule": ballot.rule, "review": review },
            })
        } else if e.approved {
            json!({
                "status": "completed",
                "attempt": a.number,
                "agentId": e.author_agent_id,
                "review": review,
                "completedAt": origin.at,
            })
        } else {
            json!({
                "status": "changes_requested",
                "attempt": a.number,
                "review": review,
            })
        };
        self.patch(a.execution_id)
            .merge_step(a.step_id.as_str(), origin, patch);
    }

    /// A panel's outcome: approved completes the step with the author's work (as a lone
    /// reviewer's approval does); rejected leaves it for the author's next attempt.
    pub fn votes_tallied(&mut self, origin: &Origin<'_>, e: &VotesTallied) {
        let ballot = json!({
            "round": e.round,
            "rule": e.rule,
            "seats": e.seats,
            "approved": e.approved,
            "votes": e.votes,
            "authorAgentId": e.author_agent_id,
        });
        let patch = if e.approved {
            json!({
                "status": "completed",
                "attempt": e.attempt,
                "agentId": e.author_agent_id,
                "ballot": ballot,
                "completedAt": origin.at,
            })
        } else {
            json!({ "status": "changes_requested", "attempt": e.attempt, "ballot": ballot })
        };
        self.patch(e.execution_id)
            .merge_step(e.step_id.as_str(), origin, patch);
    }

    pub fn step_failed(&mut self, origin: &Origin<'_>, e: &StepFailed) {
        let a = &e.attempt;
        self.patch(a.execution_id).merge_step(
            a.step_id.as_str(),
            origin,
            json!({
                "status": "failed",
                "attempt": a.number,
                "agentId": a.agent_id,
                "error": e.error,
                "failedAt": origin.at,
                "completedAt": origin.at,
            }),
        );
    }

    pub fn step_timed_out(&mut self, origin: &Origin<'_>, e: &StepTimedOut) {
        let a = &e.attempt;
        self.patch(a.execution_id).merge_step(
            a.step_id.as_str(),
            origin,
            json!({
                "status": "timed_out",
                "attempt": a.number,
                "agentId": a.agent_id,
                "error": e.error(),
                "timeoutMinutes": e.timeout_minutes,
                "completedAt": origin.at,
            }),
        );
    }

    pub fn step_skipped(&mut self, origin: &Origin<'_>, e: &StepSkipped) {
        self.patch(e.execution_id).merge_step(
            e.step_id.as_str(),
            origin,
            json!({
                "status": "skipped",
                "attempt": 0,
                "condition": e.condition,
                "completedAt": origin.at,
            }),
        );
    }

    pub fn paused(&mut self, origin: &Origin<'_>, execution: ExecutionId) {
        self.patch(execution).control(origin.at, Control::Pause);
    }

    pub fn resumed(&mut self, origin: &Origin<'_>, execution: ExecutionId) {
        self.patch(execution).control(origin.at, Control::Resume);
    }

    pub fn completed(&mut self, origin: &Origin<'_>, e: &ExecutionCompleted) {
        self.patch(e.execution_id).end(
            Outcome::Completed,
            Ending {
                final_output: Some(e.final_output.clone()),
                ..Ending::at(origin.at)
            },
        );
    }

    pub fn failed(&mut self, origin: &Origin<'_>, e: &ExecutionFailed) {
        self.patch(e.execution_id).end(
            Outcome::Failed,
            Ending {
                error_message: Some(e.error.clone()),
                failure_cause: Some(json!(e.cause)),
                ..Ending::at(origin.at)
            },
        );
    }

    pub fn cancelled(&mut self, origin: &Origin<'_>, e: &ExecutionCancelled) {
        let reason = e
            .request
            .reason
            .as_deref()
            .unwrap_or(Outcome::Cancelled.status());
        self.patch(e.execution_id).end(
            Outcome::Cancelled,
            Ending {
                error_message: Some(reason.to_owned()),
                context: object(json!({ "cancellation": e.request })),
                ..Ending::at(origin.at)
            },
        );
    }

    /// The steps under way become `replaced` (see [`REPLACED`]); the steps of the new plan are
    /// written when they are scheduled, as any step is.
    pub fn replanned(&mut self, origin: &Origin<'_>, e: &ExecutionReplanned) {
        let patch = self.patch(e.execution_id);
        // Defensive: the coordinator re-plans only a run that has not ended.
        if patch.ending.is_some() {
            return;
        }
        let replan = Replan {
            execution_id: e.execution_id.0,
            replan: e.replan,
            at: origin.at,
        };
        self.index.remove(&e.execution_id.0);
        self.replans.push((self.patches.len(), replan));
    }

    /// The batch's patch of an execution.
    fn patch(&mut self, execution: ExecutionId) -> &mut ExecutionPatch {
        let patches = &mut self.patches;
        let index = *self.index.entry(execution.0).or_insert_with(|| {
            patches.push(ExecutionPatch {
                execution_id: execution.0,
                steps: BTreeMap::new(),
                status: ExecutionStatus::default(),
                ending: None,
                controlled_at: None,
                steps_closed: false,
            });
            patches.len() - 1
        });
        &mut patches[index]
    }

    /// Inserts first, so that patches of executions started in the same batch find them.
    /// Then the patches up to each re-plan, and the re-plan, in the batch's order.
    pub async fn write(self, tx: &mut PgConnection) -> Result<(), sqlx::Error> {
        insert(tx, self.rows).await?;
        let mut patches = self.patches.into_iter();
        let mut written = 0;
        for (before, replan) in self.replans {
            update(tx, patches.by_ref().take(before - written).collect()).await?;
            written = before;
            replace_steps(tx, replan).await?;
        }
        update(tx, patches.collect()).await
    }
}

/// Writes `patches` (at most one per execution): their steps first, then their runs.
async fn update(
    tx: &mut PgConnection,
    mut patches: Vec<ExecutionPatch>,
) -> Result<(), sqlx::Error> {
    update_steps(tx, &mut patches).await?;
    update_runs(tx, patches).await
}

/// Closes the steps under way of a run still going as `replaced`.
async fn replace_steps(tx: &mut PgConnection, replan: Replan) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE execution_steps s SET
             entry = s.entry || jsonb_build_object('status', $4::text,
                                                   'replacedWhile', s.entry ->> 'status',
                                                   'replan', $2::int4),
             updated_at = $3
         FROM executions e
         WHERE e.id = $1 AND e.status IN ('running', 'paused', 'escalated')
           AND s.execution_id = e.id AND s.entry ->> 'status' = ANY($5)",
        replan.execution_id,
        i32::try_from(replan.replan).unwrap_or(i32::MAX),
        replan.at,
        REPLACED,
        &UNDER_WAY[..] as _,
    )
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// An execution started twice (two different events with one id) keeps the first: the event
/// index already keeps an event from being applied twice, and such a clash must not fail the
/// batch on every retry.
async fn insert(tx: &mut PgConnection, rows: Vec<ExecutionRow>) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    columns!(for r in rows => id, tenant_id, workflow_id, execution_number, trigger_reason,
             triggered_by, execution_context, started_at);
    sqlx::query!(
        "INSERT INTO executions (id, tenant_id, workflow_id, execution_number,
             trigger_reason, triggered_by, execution_context, status, started_at, updated_at)
         SELECT id, tenant_id, workflow_id, execution_number, trigger_reason, triggered_by,
                execution_context, 'running', started_at, started_at
         FROM UNNEST($1::uuid[], $2::text[], $3::uuid[], $4::int[], $5::text[], $6::text[],
                     $7::jsonb[], $8::timestamptz[])
              AS e(id, tenant_id, workflow_id, execution_number, trigger_reason, triggered_by,
                   execution_context, started_at)
         ON CONFLICT DO NOTHING",
        &id,
        &tenant_id,
        &workflow_id,
        &execution_number,
        &trigger_reason,
        triggered_by as _,
        &execution_context,
        &started_at,
    )
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// One statement for every step the batch touched, of executions that exist. Entries merge
/// with the stored ones by the rule of [`merge_step`]; the latest assignment and scheduling
/// win, and the first event's sequence stays.
async fn update_steps(
    tx: &mut PgConnection,
    patches: &mut [ExecutionPatch],
) -> Result<(), sqlx::Error> {
    let mut columns = StepColumns::default();
    for patch in patches {
        for (step, changes) in std::mem::take(&mut patch.steps) {
            columns.push(patch.execution_id, step, changes);
        }
    }
    if columns.execution_id.is_empty() {
        return Ok(());
    }
    let StepColumns {
        execution_id,
        step_id,
        entry,
        over_ended,
        assignment,
        scheduled_sequence,
        first_sequence,
        updated_at,
    } = columns;
    // The stored entry is read in the same statement (one writer per projection: nothing
    // changes it in between), so that an ended one takes the batch's `over_ended`.
    sqlx::query!(
        "INSERT INTO execution_steps AS s (execution_id, step_id, entry, assignment,
                                           scheduled_sequence, first_sequence, updated_at)
         SELECT p.execution_id, p.step_id,
                CASE
                    WHEN c.entry IS NULL THEN p.entry
                    WHEN coalesce((c.entry ->> 'attempt')::bigint, 0)
                         > (p.entry ->> 'attempt')::bigint THEN c.entry
                    WHEN coalesce((c.entry ->> 'attempt')::bigint, 0)
                         < (p.entry ->> 'attempt')::bigint THEN p.entry
                    WHEN c.entry ->> 'status' = ANY($10) THEN c.entry
                    WHEN c.entry ->> 'status' = ANY($9) THEN c.entry || coalesce(p.over_ended, '{}')
                    ELSE c.entry || p.entry
                END,
                p.assignment, p.scheduled_sequence, p.first_sequence, p.updated_at
         FROM UNNEST($1::uuid[], $2::text[], $3::jsonb[], $4::jsonb[], $5::jsonb[], $6::bigint[],
                     $7::bigint[], $8::timestamptz[])
              AS p(execution_id, step_id, entry, over_ended, assignment, scheduled_sequence,
                   first_sequence, updated_at)
         LEFT JOIN execution_steps c
                ON c.execution_id = p.execution_id AND c.step_id = p.step_id
         WHERE EXISTS (SELECT 1 FROM executions e WHERE e.id = p.execution_id)
         ON CONFLICT (execution_id, step_id) DO UPDATE SET
             entry = EXCLUDED.entry,
             assignment = coalesce(EXCLUDED.assignment, s.assignment),
             scheduled_sequence = coalesce(EXCLUDED.scheduled_sequence, s.scheduled_sequence),
             updated_at = EXCLUDED.updated_at",
        &execution_id,
        &step_id,
        &entry,
        over_ended as _,
        assignment as _,
        scheduled_sequence as _,
        &first_sequence,
        &updated_at,
        &STEP_ENDED[..] as _,
        &CLOSED_UNDER_WAY[..] as _,
    )
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// The batch's step patches as the columns [`update_steps`] writes.
#[derive(Default)]
struct StepColumns {
    execution_id: Vec<Uuid>,
    step_id: Vec<String>,
    entry: Vec<Value>,
    over_ended: Vec<Option<Value>>,
    assignment: Vec<Option<Value>>,
    scheduled_sequence: Vec<Option<i64>>,
    first_sequence: Vec<i64>,
    updated_at: Vec<DateTime<Utc>>,
}

impl StepColumns {
    fn push(&mut self, execution_id: Uuid, step_id: String, changes: StepPatch) {
        self.execution_id.push(execution_id);
        self.step_id.push(step_id);
        self.entry.push(Value::Object(changes.entry));
        self.over_ended.push(changes.over_ended.map(Value::Object));
        self.assignment.push(changes.assignment);
        self.scheduled_sequence.push(changes.scheduled_sequence);
        self.first_sequence.push(changes.first_sequence);
        self.updated_at.push(changes.updated_at);
    }
}

/// One statement for every execution whose run the batch moved (its steps are written first).
/// The status moves by the batch's [`ExecutionStatus`] from the stored one, and the batch's
/// ending applies only if that ends the execution now; a failed or cancelled execution's steps
/// still under way then read `cancelled` (`cancelledWhile` says what they were doing).
async fn update_runs(
    tx: &mut PgConnection,
    patches: Vec<ExecutionPatch>,
) -> Result<(), sqlx::Error> {
    let rows: Vec<_> = patches
        .into_iter()
        .filter(|p| p.controlled_at.is_some())
        .collect();
    if rows.is_empty() {
        return Ok(());
    }
    columns!(for r in rows => ending,
             id = r.execution_id,
             if_running = r.status.if_running.to_owned(),
             if_paused = r.status.if_paused.to_owned(),
             if_escalated = r.status.if_escalated.to_owned(),
             updated_at = r.controlled_at);
    // The ending's columns: NULL, and no context, where the batch did not end the execution.
    let (mut error_message, mut failure_cause, mut final_output, mut context, mut completed_at) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for ending in ending {
        match ending {
            Some(ending) => {
                error_message.push(ending.error_message);
                failure_cause.push(ending.failure_cause);
                final_output.push(ending.final_output);
                context.push(Value::Object(ending.context));
                completed_at.push(Some(ending.completed_at));
            }
            None => {
                error_message.push(None);
                failure_cause.push(None);
                final_output.push(None);
                context.push(json!({}));
                completed_at.push(None);
            }
        }
    }
    sqlx::query!(
        "WITH patch AS (
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[],
                                  $6::jsonb[], $7::jsonb[], $8::jsonb[], $9::timestamptz[],
                                  $10::timestamptz[])
                  AS p(id, if_running, if_paused, if_escalated, error_message, failure_cause,
                       final_output, context, completed_at, updated_at)
         ), moved AS (
             SELECT p.*,
                 CASE e.status WHEN 'running' THEN p.if_running
                               WHEN 'paused' THEN p.if_paused
                               WHEN 'escalated' THEN p.if_escalated
                               ELSE e.status END AS status,
                 e.status IN ('running', 'paused', 'escalated') AND p.completed_at IS NOT NULL
                     AS ends
             FROM patch p JOIN executions e ON e.id = p.id
         ), ended AS (
             UPDATE executions e SET
                 status = m.status,
                 error_message = CASE WHEN m.ends THEN m.error_message ELSE e.error_message END,
                 failure_cause = CASE WHEN m.ends THEN m.failure_cause ELSE e.failure_cause END,
                 final_output = CASE WHEN m.ends THEN m.final_output ELSE e.final_output END,
                 execution_context = CASE WHEN m.ends THEN e.execution_context || m.context
                                          ELSE e.execution_context END,
                 completed_at = CASE WHEN m.ends THEN m.completed_at ELSE e.completed_at END,
                 updated_at = m.updated_at
             FROM moved m
             WHERE e.id = m.id
             RETURNING e.id, m.ends AND m.status IN ('cancelled', 'failed') AS cancels
         )
         UPDATE execution_steps s SET
             entry = s.entry || jsonb_build_object('status', 'cancelled',
                                                   'cancelledWhile', s.entry ->> 'status')
         FROM ended
         WHERE s.execution_id = ended.id AND ended.cancels
           AND s.entry ->> 'status' = ANY($11)",
        &id,
        &if_running,
        &if_paused,
        &if_escalated,
        error_message as _,
        failure_cause as _,
        final_output as _,
        &context,
        completed_at as _,
        updated_at as _,
        &UNDER_WAY[..] as _,
    )
    .execute(&mut *tx)
    .await?;
    Ok(())
}

pub(crate) async fn reset(tx: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query!("TRUNCATE executions, execution_steps")
        .execute(&mut *tx)
        .await?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test that unwraps fails with the value it got
mod tests {
    use cadre_proto::model::EscalationRung;
    use cadre_proto::{AgentId, Event};

    use super::*;
    use crate::incoming::Incoming;
    use crate::plan::{Plan, sequence};
    use crate::testing::{Fixture, TestDb, execution, lease, plan_all, project};

    /// Folds `patches` as a batch does: the entry, and what it writes over an ended one.
    fn fold(patches: &[Value]) -> (Map<String, Value>, Option<Map<String, Value>>) {
        let mut patches = patches.iter().cloned().map(super::super::object);
        let first = patches.next().unwrap();
        let mut over_ended = follows_end(&first).then(|| first.clone());
        let mut entry = first;
        for patch in patches {
            over_ended = merge_over_ended(over_ended, &entry, &patch);
            entry = merge_step(Some(entry), patch);
        }
        (entry, over_ended)
    }

    #[test]
    fn over_an_ended_entry_a_batch_writes_what_was_decided_and_nothing_before_it() {
        let late = json!({"attempt": 1, "status": "completed", "output": "late"});
        let escalated = json!({"attempt": 1, "status": ESCALATED, "escalationId": "e1"});
        let resolved =
            json!({"attempt": 1, "status": "completed", RESOLVED_AT: "t", "output": "by hand"});
        // A late report, then decisions, then another late report.
        let (entry, over_ended) = fold(&[late.clone(), escalated.clone(), resolved, late.clone()]);
        assert_eq!(entry["output"], "by hand");
        let over_ended = over_ended.unwrap();
        assert_eq!(over_ended["escalationId"], "e1");
        assert_eq!(
            over_ended["output"], "by hand",
            "nothing of the reports: {over_ended:?}"
        );
        // No decision: an ended entry stays as it is.
        assert_eq!(fold(std::slice::from_ref(&late)).1, None);
        // A decision, then the next attempt, then the first attempt's late report: the next
        // attempt decided nothing yet.
        let next = json!({"attempt": 2, "status": "scheduled"});
        let (entry, over_ended) = fold(&[escalated, next, late]);
        assert_eq!(entry["attempt"], 2);
        assert_eq!(over_ended, None);
    }

    fn only_patch(plan: &Plan) -> &ExecutionPatch {
        assert_eq!(plan.executions.patches.len(), 1, "{plan:?}");
        &plan.executions.patches[0]
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
        let step = &plan.executions.patches[0].steps["design"].entry;
        assert_eq!(
            Value::Object(step.clone()),
            json!({ "status": "running", "attempt": 2, "agentId": f.agent.id, "startedAt": f.clock })
        );
        assert_eq!(
            plan.executions.patches[0].steps["design"]
                .assignment
                .as_ref()
                .unwrap()["attempt"],
            2
        );
        assert_eq!(
            plan.interactions.rows.len(),
            5,
            "every event is still logged"
        );
    }

    #[test]
    fn a_failed_attempt_waiting_for_its_retry_reads_retry_waiting() {
        let mut f = Fixture::new();
        let retry = Event::StepRetryScheduled(StepRetryScheduled {
            attempt: f.attempt(1),
            failures: 1,
            retry_at: f.clock,
            error: "provider said 500".to_owned(),
        });
        let late = f.step_completed(1);
        let batch = f.messages([f.scheduled(1), f.step_failed(1), retry, late]);
        let plan = plan_all(&batch);
        let step = &only_patch(&plan).steps["design"].entry;
        assert_eq!(step["status"], "retry_waiting", "{step:?}");
        assert_eq!(step["error"], "provider said 500");
        assert_eq!(step["failures"], 1);
    }

    #[test]
    fn a_step_escalated_to_a_person_waits_escalated_and_ignores_late_reports() {
        let mut f = Fixture::new();
        let batch = f.messages([
            f.scheduled(1),
            f.step_failed(1),
            f.escalated(1, EscalationRung::Person),
            // The failed attempt's worker reports after all.
            f.step_completed(1),
        ]);
        let at = |i: usize| json!(batch[i].content.as_ref().unwrap().meta.time);
        let plan = plan_all(&batch);
        let step = &only_patch(&plan).steps["design"].entry;
        assert_eq!(
            Value::Object(step.clone()),
            json!({
                "status": "escalated",
                "attempt": 1,
                "agentId": f.agent.id,
                "error": "provider said 500",
                "failedAt": at(1),
                "completedAt": at(1),
                "rung": "person",
                "reason": "retries spent: provider said 500",
                "escalationId": f.escalation(1),
                "escalatedAt": at(2),
            })
        );
    }

    #[test]
    fn a_step_escalated_to_an_agent_reads_escalating_until_its_attempt_is_scheduled() {
        let mut f = Fixture::new();
        let batch = f.messages([
            f.scheduled(1),
            f.step_failed(1),
            f.escalated(1, EscalationRung::StrongerModel),
            f.step_completed(1),
        ]);
        let plan = plan_all(&batch);
        let step = &only_patch(&plan).steps["design"].entry;
        assert_eq!(step["status"], "escalating", "{step:?}");
        assert_eq!(step["rung"], "strongerModel");
        assert_eq!(
            step["escalatedTo"],
            json!({
                "agentId": f.agent.id,
                "agentName": "Ada",
                "provider": "offline",
                "model": "stronger",
            })
        );
        assert_eq!(step.get("escalationId"), None);

        let batch = f.messages([f.scheduled(2)]);
        let plan = plan_all(&batch);
        assert_eq!(
            only_patch(&plan).steps["design"].entry["status"],
            "scheduled"
        );
    }

    #[test]
    fn a_person_s_resolution_gives_the_escalated_step_its_status() {
        let mut f = Fixture::new();
        let other = AgentId::new();
        let cases = [
            (
                Resolution::ProvideOutput {
                    summary: "Done by hand".to_owned(),
                    output: "The design, by hand".to_owned(),
                },
                "completed",
            ),
            (Resolution::Skip, "skipped"),
            (Resolution::Retry, "escalating"),
            (Resolution::Reassign { agent_id: other }, "escalating"),
            (Resolution::Abort, "aborted"),
        ];
        for (resolution, status) in cases {
            let action = resolution.as_str();
            let batch = f.messages([
                f.scheduled(1),
                f.step_failed(1),
                f.escalated(1, EscalationRung::Person),
                f.resolved(1, resolution),
                f.step_completed(1),
            ]);
            let resolved_at = json!(batch[3].content.as_ref().unwrap().meta.time);
            let plan = plan_all(&batch);
            let step = &only_patch(&plan).steps["design"].entry;
            assert_eq!(step["status"], status, "{action}: {step:?}");
            assert_eq!(step["action"], action);
            assert_eq!(step["resolvedBy"], "ops");
            assert_eq!(step["comment"], "looked at it");
            assert_eq!(step["resolvedAt"], resolved_at);
            assert_eq!(step["escalationId"], json!(f.escalation(1)));
            let ends = status != "escalating";
            assert_eq!(
                step.get("completedAt") == Some(&resolved_at),
                ends,
                "{step:?}"
            );
            match action {
                "provideOutput" => {
                    assert_eq!(step["summary"], "Done by hand");
                    assert_eq!(step["output"], "The design, by hand");
                    assert_eq!(step["providedBy"], "ops");
                }
                "reassign" => assert_eq!(step["escalatedTo"], json!({ "agentId": other })),
                _ => assert_eq!(step.get("summary"), None, "{action}"),
            }
        }
    }

    #[test]
    fn an_approval_waits_escalated_and_completes_with_who_approved() {
        let mut f = Fixture::new();
        let batch = f.messages([f.approval_requested(1), f.resolved(1, Resolution::Approve)]);
        let plan = plan_all(&batch);
        let step = &only_patch(&plan).steps["design"].entry;
        assert_eq!(step["status"], "completed", "{step:?}");
        assert_eq!(step["approval"], true);
        assert_eq!(step["summary"], "Approved by ops");
        assert_eq!(step["output"], "looked at it");
        assert_eq!(step["providedBy"], "ops");
        assert!(step["agentId"].is_null(), "no agent ran it");

        let batch = f.messages([f.approval_requested(1)]);
        let plan = plan_all(&batch);
        assert_eq!(
            only_patch(&plan).steps["design"].entry["status"],
            "escalated"
        );
        let batch = f.messages([f.resolved(1, Resolution::Reject)]);
        let plan = plan_all(&batch);
        assert_eq!(only_patch(&plan).steps["design"].entry["status"], "aborted");
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
        assert_eq!(steps["design"].entry["startedAt"], at(2));
        assert_eq!(steps["design"].entry["completedAt"], at(4));
        assert_eq!(steps["review"].entry["status"], "failed");
        assert_eq!(steps["review"].entry["startedAt"], at(3));
        assert_eq!(steps["review"].entry["completedAt"], at(5));
        assert_eq!(
            steps["review"].entry["failedAt"],
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
        let step = &only_patch(&plan).steps["design"].entry;
        assert_eq!(
            Value::Object(step.clone()),
            json!({
                "status": "timed_out",
                "attempt": 1,
                "agentId": f.agent.id,
                "startedAt": time(1),
                "error": "timed out after 5 minute(s)",
                "timeoutMinutes": 5.0,
                "completedAt": time(2),
            })
        );
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
        assert_eq!(patch.steps["design"].entry["status"], "scheduled");
        assert_eq!(patch.steps["design"].entry["attempt"], 2);
        assert_eq!(
            patch.steps["design"].scheduled_sequence,
            Some(sequence(batch[2].sequence))
        );
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
        let mut steps: Vec<_> = only_patch(&plan).steps.iter().collect();
        steps.sort_by_key(|(_, step)| step.scheduled_sequence);
        let order: Vec<_> = steps.into_iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(order, ["review", "test", "design"]);
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
        assert_eq!(plan.workflows.patches[0].status.otherwise, Some("failed"));
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
        assert_eq!(
            plan.workflows.patches[0].status.otherwise,
            Some("cancelled")
        );

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

    #[tokio::test]
    async fn every_scheduled_or_running_step_is_listed_while_the_execution_runs() {
        let db = TestDb::create().await;
        let mut lease = lease(&db).await;
        let mut conn = db.connect().await;
        let mut f = Fixture::with_steps(&["design", "review", "test"]);
        let (design, review, test) = (f.on("design"), f.on("review"), f.on("test"));
        let mut step = async |events: Vec<Event>| {
            project(&mut lease, &f.messages(events), 1).await;
            let row = execution(&mut conn, f.execution).await;
            (
                row["active_steps"].clone(),
                row["current_step_id"].clone(),
                row["active_agents"].clone(),
            )
        };
        let agents = json!([design.agent.id]);

        let (active, current, working) = step(vec![
            design.created(),
            design.started(1),
            design.scheduled(1),
            review.scheduled(1),
            test.scheduled(1),
        ])
        .await;
        assert_eq!(active, json!(["design", "review", "test"]));
        assert_eq!(current, "test", "the most recently scheduled");
        assert_eq!(working, json!([]), "none has started");

        let (active, current, working) =
            step(vec![design.step_started(1), review.step_started(1)]).await;
        assert_eq!(active, json!(["design", "review", "test"]));
        assert_eq!(current, "test");
        assert_eq!(working, agents);

        let (active, current, _) = step(vec![review.step_completed(1)]).await;
        assert_eq!(active, json!(["design", "test"]));
        assert_eq!(current, "test");

        let (active, current, _) = step(vec![design.step_timed_out(1, 5)]).await;
        assert_eq!(active, json!(["test"]));
        assert_eq!(current, "test");

        let (active, current, working) = step(vec![design.scheduled(2)]).await;
        assert_eq!(active, json!(["test", "design"]));
        assert_eq!(current, "design", "the retry is the latest scheduled");
        assert_eq!(working, json!([]));

        let (active, current, _) = step(vec![test.step_started(1), test.step_failed(1)]).await;
        assert_eq!(active, json!(["design"]));
        assert_eq!(current, "design");

        // A step still scheduled when the execution ends is not active any more.
        let (active, current, working) = step(vec![test.failed()]).await;
        assert_eq!(active, json!([]));
        assert_eq!(current, Value::Null);
        assert_eq!(working, json!([]));
    }

    #[tokio::test]
    async fn a_run_projected_before_steps_had_rows_reads_the_same_after_the_upgrade_and_goes_on() {
        // Migration 0013 gave steps their own rows.
        let db = TestDb::create_to(Some(12)).await;
        let mut conn = db.connect().await;
        let mut f = Fixture::with_steps(&["design", "review", "test"]);
        let design = f.on("design");
        let agent = json!(f.agent.id);
        let assignment = |attempt: u32| json!({ "agentId": agent, "attempt": attempt });
        // As the previous release projected it: design done, then test and review scheduled
        // in that order, review running.
        sqlx::query(
            "INSERT INTO workflow_executions (id, tenant_id, workflow_id, execution_number,
                 trigger_reason, execution_context, step_results, active_steps, current_step_id,
                 active_agents, agent_assignments, status, started_at, updated_at)
             VALUES ($1, 'default', $2, 1, 'manual', '{}', $3, '[\"test\", \"review\"]',
                     'review', $4, $5, 'running', $6, $6)",
        )
        .bind(f.execution.0)
        .bind(f.workflow.0)
        .bind(json!({
            "design": { "status": "completed", "attempt": 1, "agentId": agent },
            "review": { "status": "running", "attempt": 1, "agentId": agent },
            "test": { "status": "scheduled", "attempt": 1, "agentId": agent },
        }))
        .bind(json!([agent]))
        .bind(json!({
            "design": assignment(1),
            "review": assignment(1),
            "test": assignment(1),
        }))
        .bind(f.clock)
        .execute(&mut conn)
        .await
        .unwrap();
        let before = execution(&mut conn, f.execution).await;

        let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
        crate::migrate(&pool).await.unwrap();
        assert_eq!(execution(&mut conn, f.execution).await, before);

        // A step scheduled after the upgrade comes after those scheduled before it.
        let mut lease = lease(&db).await;
        project(&mut lease, &f.messages([design.scheduled(2)]), 10).await;
        let row = execution(&mut conn, f.execution).await;
        assert_eq!(row["active_steps"], json!(["test", "review", "design"]));
        assert_eq!(row["current_step_id"], "design");
        assert_eq!(row["agent_assignments"]["design"]["attempt"], 2);
        assert_eq!(row["agent_assignments"]["test"], assignment(1));
    }

    #[tokio::test]
    async fn a_step_waiting_for_a_person_without_a_scheduling_is_listed_when_it_was_first_named() {
        let mut f = Fixture::with_steps(&["design", "approve", "test"]);
        let (design, approve, test) = (f.on("design"), f.on("approve"), f.on("test"));
        let retry = Event::StepRetryScheduled(StepRetryScheduled {
            attempt: design.attempt(1),
            failures: 1,
            retry_at: f.clock,
            error: "provider said 500".to_owned(),
        });
        let log = f.messages([
            design.started(1),
            design.scheduled(1),
            // An approval waits for a person without ever being scheduled.
            approve.approval_requested(1),
            test.scheduled(1),
            design.step_failed(1),
            retry,
        ]);
        let mut rows = Vec::new();
        for size in [1, 2, log.len()] {
            let db = TestDb::create().await;
            let mut lease = lease(&db).await;
            project(&mut lease, &log, size).await;
            let row = execution(&mut db.connect().await, f.execution).await;
            assert_eq!(
                row["active_steps"],
                json!(["design", "approve", "test"]),
                "batches of {size}: a step waiting for its retry keeps its scheduling's place"
            );
            assert_eq!(row["current_step_id"], "test");
            rows.push(row);
        }
        assert!(rows.windows(2).all(|pair| pair[0] == pair[1]), "{rows:#?}");
    }

    #[tokio::test]
    async fn a_batch_adds_the_steps_it_schedules_after_the_stored_ones() {
        let db = TestDb::create().await;
        let mut lease = lease(&db).await;
        let mut conn = db.connect().await;
        let mut f = Fixture::with_steps(&["design", "review", "test"]);
        let (design, review, test) = (f.on("design"), f.on("review"), f.on("test"));
        let first = f.messages([design.started(1), design.scheduled(1), review.scheduled(1)]);
        project(&mut lease, &first, 10).await;
        let second = f.messages([
            test.scheduled(1),
            review.step_failed(1),
            review.scheduled(2),
        ]);
        project(&mut lease, &second, 10).await;
        let row = execution(&mut conn, f.execution).await;
        assert_eq!(row["active_steps"], json!(["design", "test", "review"]));
        assert_eq!(row["current_step_id"], "review");
    }

    #[tokio::test]
    async fn a_report_after_a_timeout_changes_nothing_in_a_later_batch() {
        let db = TestDb::create().await;
        let mut lease = lease(&db).await;
        let mut conn = db.connect().await;
        let mut f = Fixture::new();
        let e = f.clone();
        let log = f.messages([
            e.started(1),
            e.scheduled(1),
            e.step_started(1),
            e.step_timed_out(1, 2),
            e.step_completed(1),
        ]);
        project(&mut lease, &log, 1).await;
        let row = execution(&mut conn, f.execution).await;
        let step = &row["step_results"]["design"];
        assert_eq!(step["status"], "timed_out");
        assert_eq!(step["error"], "timed out after 2 minute(s)");
        assert_eq!(
            step["startedAt"],
            json!(log[2].content.as_ref().unwrap().meta.time)
        );
        assert_eq!(
            step["completedAt"],
            json!(log[3].content.as_ref().unwrap().meta.time)
        );
        assert_eq!(step.get("summary"), None);
        assert_eq!(row["active_steps"], json!([]));
        assert_eq!(
            row["status"], "running",
            "the coordinator decides what comes next"
        );
    }

    /// The stored entry and a batch's folded one merge in SQL by the rule the fold follows:
    /// each event in its own batch gives what one batch does.
    #[tokio::test]
    async fn escalations_give_the_same_step_results_however_the_log_is_cut() {
        let mut f = Fixture::with_steps(&["design", "review", "test"]);
        let (design, review, test) = (f.on("design"), f.on("review"), f.on("test"));
        let log = f.messages([
            design.started(1),
            design.scheduled(1),
            design.step_failed(1),
            design.escalated(1, EscalationRung::Person),
            design.step_completed(1),
            design.resolved(1, Resolution::Retry),
            design.scheduled(2),
            design.step_failed(2),
            design.escalated(2, EscalationRung::Person),
            design.resolved(
                2,
                Resolution::ProvideOutput {
                    summary: "Done by hand".to_owned(),
                    output: "The design".to_owned(),
                },
            ),
            design.step_started(2),
            review.scheduled(1),
            review.step_failed(1),
            review.escalated(1, EscalationRung::Reassign),
            review.step_started(1),
            test.approval_requested(1),
        ]);
        let mut results = Vec::new();
        for size in [log.len(), 1, 2] {
            let db = TestDb::create().await;
            let mut lease = lease(&db).await;
            let mut conn = db.connect().await;
            project(&mut lease, &log, size).await;
            results.push(execution(&mut conn, f.execution).await);
        }
        let row = &results[0];
        let steps = &row["step_results"];
        assert_eq!(steps["design"]["status"], "completed", "{steps:#}");
        assert_eq!(steps["design"]["attempt"], 2);
        assert_eq!(steps["design"]["summary"], "Done by hand");
        assert_eq!(steps["review"]["status"], "escalating");
        assert_eq!(steps["test"]["status"], "escalated");
        assert_eq!(row["active_steps"], json!(["review", "test"]));
        for (size, other) in [1, 2].iter().zip(&results[1..]) {
            assert_eq!(
                other["step_results"], row["step_results"],
                "batches of {size}"
            );
            assert_eq!(other["active_steps"], row["active_steps"]);
        }
    }

    #[tokio::test]
    async fn a_step_waiting_for_a_person_is_cancelled_with_its_execution() {
        let db = TestDb::create().await;
        let mut lease = lease(&db).await;
        let mut conn = db.connect().await;
        let mut f = Fixture::with_steps(&["design", "review"]);
        let (design, review) = (f.on("design"), f.on("review"));
        let log = f.messages([
            design.started(1),
            design.approval_requested(1),
            review.scheduled(1),
            review.step_failed(1),
            review.escalated(1, EscalationRung::Person),
            review.resolved(1, Resolution::Abort),
            review.aborted(1),
        ]);
        project(&mut lease, &log, 3).await;
        let row = execution(&mut conn, f.execution).await;
        let steps = &row["step_results"];
        assert_eq!(steps["design"]["status"], "cancelled", "{steps:#}");
        assert_eq!(steps["design"]["cancelledWhile"], "escalated");
        assert_eq!(
            steps["review"]["status"], "aborted",
            "an end, not cancelled"
        );
        assert_eq!(row["status"], "failed");
        assert_eq!(row["failure_cause"]["kind"], "aborted");
        assert_eq!(
            row["failure_cause"]["escalationId"],
            json!(review.escalation(1))
        );
        assert_eq!(row["active_steps"], json!([]));
    }

    /// A re-plan closes the steps under way as the events before it left them; the new plan's
    /// attempts, and reports of the replaced ones that raced it, fold as usual after it.
    #[tokio::test]
    async fn a_replan_replaces_the_steps_under_way_however_the_log_is_cut_and_when_replayed() {
        let mut f = Fixture::with_steps(&["design", "review", "test"]);
        let (design, review, test) = (f.on("design"), f.on("review"), f.on("test"));
        let mut log = f.messages([
            design.started(1),
            design.scheduled(1),
            design.step_started(1),
            design.step_completed(1),
            review.scheduled(1),
            review.step_started(1),
            test.approval_requested(1),
            review.replanned(),
            // The replaced attempt's worker finished after the re-plan: it changes nothing.
            review.step_completed(1),
            review.scheduled(2),
            review.step_started(2),
        ]);
        let replanned = f.execution;
        // Defensive (the coordinator re-plans only a run still going): after the end.
        f.execution = ExecutionId::new();
        let ended = f.on("design");
        log.extend(f.messages([
            ended.started(2),
            ended.scheduled(1),
            ended.cancelled(Some("ops"), None),
            ended.replanned(),
        ]));
        let cancelled_run = f.execution;
        // Re-planned twice: each re-plan closes what was under way then.
        f.execution = ExecutionId::new();
        let (twice, other) = (f.on("design"), f.on("review"));
        let mut second_replan = twice.replanned();
        if let Event::ExecutionReplanned(e) = &mut second_replan {
            e.replan = 2;
        }
        log.extend(f.messages([
            twice.started(3),
            twice.scheduled(1),
            other.scheduled(1),
            other.step_started(1),
            twice.replanned(),
            twice.scheduled(2),
            twice.step_started(2),
            second_replan,
        ]));
        let mut runs = Vec::new();
        for size in [log.len(), 1, 2, 3, 5, 8] {
            let db = TestDb::create().await;
            let mut lease = lease(&db).await;
            let mut conn = db.connect().await;
            project(&mut lease, &log, size).await;
            let projected = (
                execution(&mut conn, replanned).await,
                execution(&mut conn, cancelled_run).await,
                execution(&mut conn, f.execution).await,
            );
            lease.reset().await.unwrap();
            project(&mut lease, &log, size).await;
            let replayed = (
                execution(&mut conn, replanned).await,
                execution(&mut conn, cancelled_run).await,
                execution(&mut conn, f.execution).await,
            );
            assert_eq!(replayed, projected, "replayed in batches of {size}");
            runs.push((size, projected));
        }
        let (_, (run, cancelled, twice)) = &runs[0];
        let steps = &run["step_results"];
        assert_eq!(steps["design"]["status"], "completed", "{steps:#}");
        assert_eq!(
            (&steps["test"]["status"], &steps["test"]["replacedWhile"]),
            (&json!("replaced"), &json!("escalated")),
            "{steps:#}"
        );
        assert_eq!(steps["test"]["replan"], 1);
        assert_eq!(
            (&steps["review"]["status"], &steps["review"]["attempt"]),
            (&json!("running"), &json!(2)),
            "the new plan's attempt: {steps:#}"
        );
        assert_eq!(run["active_steps"], json!(["review"]));
        assert_eq!(run["status"], "running");
        assert_eq!(
            (
                &cancelled["step_results"]["design"]["status"],
                &cancelled["step_results"]["design"]["cancelledWhile"]
            ),
            (&json!("cancelled"), &json!("scheduled")),
        );
        let steps = &twice["step_results"];
        let replaced = |step: &str| {
            let entry = &steps[step];
            (
                entry["status"].clone(),
                entry["replacedWhile"].clone(),
                entry["replan"].clone(),
                entry["attempt"].clone(),
            )
        };
        assert_eq!(
            replaced("review"),
            (json!("replaced"), json!("running"), json!(1), json!(1)),
            "{steps:#}"
        );
        assert_eq!(
            replaced("design"),
            (json!("replaced"), json!("running"), json!(2), json!(2)),
            "{steps:#}"
        );
        assert_eq!(twice["active_steps"], json!([]));
        for (size, other) in &runs[1..] {
            assert_eq!(other, &runs[0].1, "batches of {size}");
        }
    }

    #[tokio::test]
    async fn a_run_cancelled_under_a_step_shows_what_it_was_doing_whatever_the_batch() {
        type Story = fn(&Fixture) -> Vec<Event>;
        let stories: [(Story, &str); 3] = [
            // Reports of a worker's delivery that raced the cancel change nothing.
            (
                |f| {
                    vec![
                        f.started(1),
                        f.scheduled(1),
                        f.cancelled(Some("ops"), None),
                        f.step_started(1),
                        f.step_completed(1),
                    ]
                },
                "scheduled",
            ),
            (
                |f| {
                    vec![
                        f.started(1),
                        f.scheduled(1),
                        f.step_started(1),
                        f.cancelled(Some("ops"), None),
                        f.step_completed(1),
                    ]
                },
                "running",
            ),
            // Waiting for a person when the run was cancelled.
            (
                |f| {
                    vec![
                        f.started(1),
                        f.scheduled(1),
                        f.step_failed(1),
                        f.escalated(1, EscalationRung::Person),
                        f.cancelled(Some("ops"), None),
                    ]
                },
                "escalated",
            ),
        ];
        let db = TestDb::create().await;
        let mut conn = db.connect().await;
        for (story, doing) in stories {
            // Every way of cutting the five events into batches: bit i cuts after event i.
            for cuts in 0..16_u32 {
                // Each cutting projected from the start: the fixture numbers events from 1.
                sqlx::query("DELETE FROM projection_checkpoints")
                    .execute(&mut conn)
                    .await
                    .unwrap();
                let mut lease = lease(&db).await;
                let mut f = Fixture::new();
                let log = f.messages(story(&f));
                let mut batch = Vec::new();
                for (i, message) in log.into_iter().enumerate() {
                    batch.push(message);
                    if i == 4 || cuts & (1 << i) != 0 {
                        lease.project(&std::mem::take(&mut batch)).await.unwrap();
                    }
                }
                let row = execution(&mut conn, f.execution).await;
                let step = &row["step_results"][f.step.id.as_str()];
                assert_eq!(step["status"], "cancelled", "cuts {cuts:04b}: {step:#}");
                assert_eq!(step["cancelledWhile"], doing, "cuts {cuts:04b}");
                assert_eq!(row["status"], "cancelled");
                assert_eq!(row["active_steps"], json!([]), "cuts {cuts:04b}");
            }
        }
    }

    #[tokio::test]
    async fn a_resume_never_reopens_an_ended_execution() {
        let db = TestDb::create().await;
        let mut lease = lease(&db).await;
        let mut conn = db.connect().await;
        let mut f = Fixture::new();
        let e = f.clone();
        for (events, status) in [
            (vec![e.started(1)], "running"),
            (vec![e.paused()], "paused"),
            (vec![e.paused()], "paused"),
            (vec![e.resumed()], "running"),
            (vec![e.completed()], "completed"),
            (vec![e.resumed()], "completed"),
            (vec![e.paused(), e.resumed()], "completed"),
            (vec![e.cancelled(Some("ops"), None)], "completed"),
        ] {
            project(&mut lease, &f.messages(events), 10).await;
            assert_eq!(execution(&mut conn, f.execution).await["status"], status);
        }
        let row = execution(&mut conn, f.execution).await;
        assert_eq!(row["error_message"], Value::Null);
        assert_eq!(row["execution_context"], json!({}));
    }
}
