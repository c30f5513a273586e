//! `agent_interactions`: the execution's interaction log. Agents record their own messages
//! (`InteractionRecorded`); the other rows are derived from what happened to steps and knowledge,
//! each keyed by the id of the event it comes from.

use cadre_proto::events::{
    AssignmentReason, EscalationResolved, ExecutionEscalated, ExecutionReplanned,
    InteractionRecorded, KnowledgeShared, LeadTaken, QuestionAnswered, QuestionAssigned,
    QuestionsAsked, QuestionsExpired, Resolution, SagaStarted, StepAttempt, StepCompleted,
    StepDeferred, StepEscalated, StepFailed, StepRetryScheduled, StepScheduled, StepSkipped,
    StepStarted, StepTimedOut, VotesTallied,
};
use cadre_proto::model::InteractionType;
use cadre_proto::{ExecutionId, StepId};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::PgConnection;
use uuid::Uuid;

use super::columns;
use super::executions::Outcome;
use crate::plan::Origin;

/// How many characters of shared knowledge its interaction quotes (as the seed does).
const KNOWLEDGE_PREVIEW_CHARS: usize = 200;

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
    pub response_deadline: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub event_sequence: i64,
    /// Its place among the rows of its event (see [`Origin::position`]).
    pub event_position: i16,
}

/// What became of a question (or an escalation) that waited for an answer.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Response {
    /// The teammate answered, or (`received: false`) could not, `message` saying why; `id` is
    /// the question's row (its `QuestionAssigned` event id). An answer after the deadline is
    /// still recorded: `response_data.missedDeadline` tells it came too late for the asker; so
    /// is one after the question was closed (its run ended first), in place of the closing.
    Answered {
        id: Uuid,
        received: bool,
        message: String,
        data: Value,
        at: DateTime<Utc>,
    },
    /// The asker's deadline passed before the teammate answered.
    Missed {
        tenant_id: String,
        execution: Uuid,
        step_id: String,
        attempt: i32,
        question_id: String,
        agent: Uuid,
    },
    /// A person resolved the escalation whose interaction (`contextData.escalationId`) waited
    /// for them; `message` is their action and comment.
    Resolved {
        tenant_id: String,
        execution: Uuid,
        /// `None` for the run's own escalation.
        step_id: Option<String>,
        escalation_id: Uuid,
        message: String,
        data: Value,
        at: DateTime<Utc>,
    },
    /// Runs ended or re-planned: the questions and escalations that waited for an answer
    /// there can no longer get one their run would take. Consecutive closings are one
    /// statement (nearly every run's end is one, and a batch ends many runs), as long as each
    /// run has one closing in it: a request matched by two would take either.
    Closed(Vec<Closing>),
}

/// A run ended (every request of it closes) or was re-planned (its steps' requests close,
/// the run's own escalation stays open); the requests recorded after it, from events stored
/// after `before`, are not its to close.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Closing {
    pub tenant_id: String,
    pub execution: Uuid,
    pub steps_only: bool,
    /// Why, as the request's `response_message` says it.
    pub reason: String,
    pub before: i64,
    pub at: DateTime<Utc>,
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
            response_deadline: None,
            created_at: origin.at,
            event_sequence: origin.sequence,
            event_position: origin.position,
        }
    }
}

/// The batch's interactions, in stream order, then what became of its questions.
#[derive(Debug, Default)]
pub(crate) struct Changes {
    pub rows: Vec<InteractionRow>,
    pub responses: Vec<Response>,
}

impl Changes {
    /// The delegation of a step to its agent, from the coordinator agent if there is one.
    pub fn step_scheduled(&mut self, origin: &Origin<'_>, e: &StepScheduled) {
        self.rows.push(InteractionRow {
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

    pub fn step_started(&mut self, origin: &Origin<'_>, e: &StepStarted) {
        let a = &e.attempt;
        self.step_note(
            origin,
            a,
            format!("Starting step: {}", a.step_name),
            json!({ "stepId": a.step_id, "attempt": a.number }),
        );
    }

    pub fn step_deferred(&mut self, origin: &Origin<'_>, e: &StepDeferred) {
        let a = &e.attempt;
        self.step_note(
            origin,
            a,
            format!(
                "Step waiting: {} - {} (tried again at {})",
                a.step_name, e.error, e.retry_at
            ),
            json!({ "stepId": a.step_id, "attempt": a.number, "retryAt": e.retry_at, "deferral": e.deferral }),
        );
    }

    pub fn step_completed(&mut self, origin: &Origin<'_>, e: &StepCompleted) {
        let (a, result) = (&e.attempt, &e.result);
        self.step_note(
            origin,
            a,
            format!("Completed step: {}", a.step_name),
            json!({ "stepId": a.step_id, "result": result.summary, "tokensUsed": result.tokens.total }),
        );
    }

    pub fn step_failed(&mut self, origin: &Origin<'_>, e: &StepFailed) {
        let a = &e.attempt;
        self.step_note(
            origin,
            a,
            format!("Step failed: {} - {}", a.step_name, e.error),
            json!({ "stepId": a.step_id, "error": true, "errorMessage": e.error }),
        );
    }

    /// Like a failed attempt, but the coordinator's timer, not the agent, reports it: the
    /// interaction comes from the coordinator (no agent) and is addressed to the agent.
    pub fn step_timed_out(&mut self, origin: &Origin<'_>, e: &StepTimedOut) {
        let a = &e.attempt;
        let error = e.error();
        self.rows.push(InteractionRow {
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

    pub fn step_skipped(&mut self, origin: &Origin<'_>, e: &StepSkipped) {
        self.rows.push(InteractionRow {
            context_data: json!({ "stepId": e.step_id, "condition": e.condition }),
            related_step_id: Some(e.step_id.to_string()),
            ..InteractionRow::new(
                origin,
                e.execution_id,
                InteractionType::Coordination,
                format!(
                    "Step skipped: {} - its condition is false: {}",
                    e.step_name, e.condition
                ),
            )
        });
    }

    /// A panel settled a step's work: how many voted which way, and what it means.
    pub fn votes_tallied(&mut self, origin: &Origin<'_>, e: &VotesTallied) {
        let outcome = if e.approved {
            "approved: the step completes with the work"
        } else {
            "rejected: the work goes back to its author with the dissent"
        };
        self.rows.push(InteractionRow {
            to_agent_id: Some(e.author_agent_id.0),
            context_data: json!({
                "stepId": e.step_id,
                "round": e.round,
                "rule": e.rule,
                "seats": e.seats,
                "votes": e.votes,
                "approved": e.approved,
            }),
            related_step_id: Some(e.step_id.to_string()),
            ..InteractionRow::new(
                origin,
                e.execution_id,
                InteractionType::Coordination,
                format!(
                    "Votes on {} (round {}, {} of {} seats, {}): {} approved, {} rejected - {outcome}",
                    e.step_name,
                    e.round,
                    e.votes.len(),
                    e.seats,
                    e.rule.as_str(),
                    e.approvals(),
                    e.votes.len() - e.approvals(),
                ),
            )
        });
    }

    /// A risk showed and a lead rule gave the lead to an agent (or found nobody of its role).
    pub fn lead_taken(&mut self, origin: &Origin<'_>, e: &LeadTaken) {
        let message = match &e.agent {
            Some(agent) => format!(
                "Lead taken: {} ({}) leads the remaining steps - the '{}' risk showed in step {}",
                agent.name, agent.role, e.risk, e.step_id
            ),
            None => format!(
                "Lead not taken: no participant has the role '{}' - the '{}' risk showed in step {}",
                e.role, e.risk, e.step_id
            ),
        };
        self.rows.push(InteractionRow {
            to_agent_id: e.agent.as_ref().map(|a| a.id.0),
            context_data: json!({
                "risk": e.risk,
                "role": e.role,
                "stepId": e.step_id,
                "shownBy": e.shown_by,
                "lead": e.agent,
            }),
            related_step_id: Some(e.step_id.to_string()),
            ..InteractionRow::new(
                origin,
                e.execution_id,
                InteractionType::Coordination,
                message,
            )
        });
    }

    /// The agent stops to ask: its questions follow, one row per teammate asked.
    pub fn questions_asked(&mut self, origin: &Origin<'_>, e: &QuestionsAsked) {
        let a = &e.attempt;
        self.step_note(
            origin,
            a,
            format!(
                "Step waiting for answers: {} - {} question(s) for teammates",
                a.step_name,
                e.questions.len()
            ),
            json!({ "stepId": a.step_id, "attempt": a.number, "questions": e.questions }),
        );
    }

    /// A question handed to one teammate: it requires a response by the deadline.
    pub fn question_assigned(&mut self, origin: &Origin<'_>, e: &QuestionAssigned) {
        self.rows.push(InteractionRow {
            from_agent_id: Some(e.asker.id.0),
            to_agent_id: Some(e.recipient.id.0),
            context_data: json!({
                "stepId": e.step_id,
                "attempt": e.attempt,
                "questionId": e.question_id,
                "broadcast": e.broadcast,
            }),
            related_step_id: Some(e.step_id.to_string()),
            requires_response: true,
            response_deadline: Some(e.deadline_at),
            ..InteractionRow::new(
                origin,
                e.execution_id,
                InteractionType::Question,
                format!(
                    "Question from {} to {} on {}: {}",
                    e.asker.name, e.recipient.name, e.step_name, e.question
                ),
            )
        });
    }

    pub fn question_answered(&mut self, origin: &Origin<'_>, e: &QuestionAnswered) {
        let (received, message) = match (&e.answer, &e.error) {
            (Some(answer), _) => (true, answer.clone()),
            (None, error) => (false, error.clone().unwrap_or_default()),
        };
        self.responses.push(Response::Answered {
            id: e.assigned_event_id.0,
            received,
            message,
            data: json!({
                "answeredBy": e.agent_id,
                "provider": e.usage.provider,
                "model": e.usage.model,
                "tokens": e.usage.tokens,
                "error": e.error,
            }),
            at: origin.at,
        });
    }

    pub fn questions_expired(&mut self, origin: &Origin<'_>, e: &QuestionsExpired) {
        let a = &e.attempt;
        for missed in &e.unanswered {
            self.responses.push(Response::Missed {
                tenant_id: origin.tenant.to_owned(),
                execution: a.execution_id.0,
                step_id: a.step_id.to_string(),
                attempt: i32::try_from(a.number).unwrap_or(i32::MAX),
                question_id: missed.question_id.clone(),
                agent: missed.agent_id.0,
            });
        }
        let outcome = if e.failed {
            "the attempt fails"
        } else {
            "the step goes on without them"
        };
        self.step_note(
            origin,
            a,
            format!(
                "Questions unanswered by the deadline: {} - {} answer(s) missing; {outcome}",
                a.step_name,
                e.unanswered.len()
            ),
            json!({ "stepId": a.step_id, "attempt": a.number, "unanswered": e.unanswered, "failed": e.failed }),
        );
    }

    /// The coordinator's note that a failed step will be tried again, and when.
    pub fn retry_scheduled(&mut self, origin: &Origin<'_>, e: &StepRetryScheduled) {
        let a = &e.attempt;
        self.rows.push(InteractionRow {
            to_agent_id: Some(a.agent_id.0),
            context_data: json!({
                "stepId": a.step_id,
                "attempt": a.number,
                "failures": e.failures,
                "retryAt": e.retry_at,
                "error": e.error,
            }),
            related_step_id: Some(a.step_id.to_string()),
            ..InteractionRow::new(
                origin,
                a.execution_id,
                InteractionType::Coordination,
                format!(
                    "Step retry scheduled: {} - attempt {} failed ({}); tried again at {}",
                    a.step_name, a.number, e.error, e.retry_at
                ),
            )
        });
    }

    /// The coordinator's note that a step climbed a rung of its escalation ladder, to the agent
    /// that takes it over; one a person must resolve requires a response (see
    /// [`Changes::escalation_resolved`]).
    pub fn step_escalated(&mut self, origin: &Origin<'_>, e: &StepEscalated) {
        let mut context_data = json!({
            "stepId": e.step_id,
            "attempt": e.attempt,
            "rung": e.rung,
            "reason": e.reason,
            "tried": e.context.tried,
            "failures": e.context.failures,
        });
        if let Some(escalation_id) = e.escalation_id {
            context_data["escalationId"] = json!(escalation_id);
        }
        if e.approval {
            context_data["approval"] = json!(true);
        }
        if let Some(agent) = &e.agent {
            context_data["escalatedTo"] = json!({
                "agentId": agent.id,
                "agentName": agent.name,
                "provider": agent.provider,
                "model": agent.model,
            });
        }
        self.rows.push(InteractionRow {
            to_agent_id: e.agent.as_ref().map(|agent| agent.id.0),
            context_data,
            related_step_id: Some(e.step_id.to_string()),
            requires_response: e.escalation_id.is_some(),
            ..InteractionRow::new(
                origin,
                e.execution_id,
                InteractionType::Coordination,
                format!(
                    "Step escalated: {} - {} ({})",
                    e.step_name,
                    e.rung.as_str(),
                    e.reason
                ),
            )
        });
    }

    /// The run is failing and undoes its completed steps first.
    pub fn saga_started(&mut self, origin: &Origin<'_>, e: &SagaStarted) {
        let steps: Vec<&str> = e.steps.iter().map(StepId::as_str).collect();
        self.rows.push(InteractionRow {
            context_data: json!({
                "steps": e.steps,
                "replan": e.replan,
                "cause": e.cause,
                "error": e.error,
            }),
            ..InteractionRow::new(
                origin,
                e.execution_id,
                InteractionType::Coordination,
                match (steps.is_empty(), e.replan) {
                    (false, true) => format!(
                        "Saga started: undoing {}, then re-planning ({})",
                        steps.join(", then "),
                        e.error
                    ),
                    (false, false) => format!(
                        "Saga started: undoing {} before the run fails ({})",
                        steps.join(", then "),
                        e.error
                    ),
                    (true, _) => format!("Saga started: re-planning ({})", e.error),
                },
            )
        });
    }

    /// The coordinator agent's revised steps replaced the failing run's.
    pub fn replanned(&mut self, origin: &Origin<'_>, e: &ExecutionReplanned) {
        let steps: Vec<&str> = e.steps.iter().map(|s| s.id.as_str()).collect();
        self.rows.push(InteractionRow {
            from_agent_id: Some(e.agent_id.0),
            context_data: json!({
                "replan": e.replan,
                "steps": e.steps,
                "summary": e.summary,
                "error": e.error,
            }),
            ..InteractionRow::new(
                origin,
                e.execution_id,
                InteractionType::TaskDelegation,
                format!(
                    "Execution re-planned ({}): the run goes on with {} - {}",
                    e.replan,
                    steps.join(", "),
                    e.summary
                ),
            )
        });
        // The replaced steps' questions and escalations: nobody will take an answer.
        self.close(
            origin,
            e.execution_id,
            "execution re-planned".to_owned(),
            true,
        );
    }

    /// Closes the requests of the run still waiting for an answer: nobody will take one.
    pub fn execution_ended(&mut self, origin: &Origin<'_>, execution: ExecutionId, ended: Outcome) {
        self.close(
            origin,
            execution,
            format!("execution {}", ended.status()),
            false,
        );
    }

    fn close(
        &mut self,
        origin: &Origin<'_>,
        execution: ExecutionId,
        reason: String,
        steps_only: bool,
    ) {
        let closing = Closing {
            tenant_id: origin.tenant.to_owned(),
            execution: execution.0,
            steps_only,
            reason,
            before: origin.sequence,
            at: origin.at,
        };
        match self.responses.last_mut() {
            Some(Response::Closed(closings))
                if !closings.iter().any(|c| {
                    c.execution == closing.execution && c.tenant_id == closing.tenant_id
                }) =>
            {
                closings.push(closing);
            }
            _ => self.responses.push(Response::Closed(vec![closing])),
        }
    }

    /// The run went on past `escalation.afterMinutes` and waits for a person.
    pub fn execution_escalated(&mut self, origin: &Origin<'_>, e: &ExecutionEscalated) {
        self.rows.push(InteractionRow {
            context_data: json!({
                "escalationId": e.escalation_id,
                "afterMinutes": e.after_minutes,
                "reason": e.reason,
                "failures": e.context.failures,
            }),
            requires_response: true,
            ..InteractionRow::new(
                origin,
                e.execution_id,
                InteractionType::Coordination,
                format!("Execution escalated: {}", e.reason),
            )
        });
    }

    /// A person's resolution answers the escalation's interaction (as a teammate's answer
    /// does a question's) and is noted in the log when it happened.
    pub fn escalation_resolved(&mut self, origin: &Origin<'_>, e: &EscalationResolved) {
        let action = e.resolution.as_str();
        let (by, comment) = (&e.request.requested_by, &e.request.reason);
        let mut data = json!({ "action": action, "resolvedBy": by });
        match &e.resolution {
            Resolution::Reassign { agent_id } => data["agentId"] = json!(agent_id),
            Resolution::ProvideOutput { summary, .. } => data["summary"] = json!(summary),
            _ => {}
        }
        self.responses.push(Response::Resolved {
            tenant_id: origin.tenant.to_owned(),
            execution: e.execution_id.0,
            step_id: e.step_id.as_ref().map(ToString::to_string),
            escalation_id: e.escalation_id.0,
            message: match comment {
                Some(comment) => format!("{action}: {comment}"),
                None => action.to_owned(),
            },
            data: data.clone(),
            at: origin.at,
        });
        data["stepId"] = json!(e.step_id);
        data["attempt"] = json!(e.attempt);
        data["escalationId"] = json!(e.escalation_id);
        if let Some(comment) = comment {
            data["comment"] = json!(comment);
        }
        let what = e.step_name.as_deref().unwrap_or("the run");
        let mut message = format!("Escalation resolved: {what} - {action}");
        if let Some(by) = by {
            message.push_str(&format!(" by {by}"));
        }
        if let Some(comment) = comment {
            message.push_str(&format!(" ({comment})"));
        }
        self.rows.push(InteractionRow {
            to_agent_id: match &e.resolution {
                Resolution::Reassign { agent_id } => Some(agent_id.0),
                _ => None,
            },
            context_data: data,
            related_step_id: e.step_id.as_ref().map(ToString::to_string),
            ..InteractionRow::new(
                origin,
                e.execution_id,
                InteractionType::Coordination,
                message,
            )
        });
    }

    /// The coordination note an agent leaves about its own step.
    fn step_note(
        &mut self,
        origin: &Origin<'_>,
        attempt: &StepAttempt,
        message: String,
        context_data: Value,
    ) {
        self.rows.push(InteractionRow {
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

    pub fn recorded(&mut self, origin: &Origin<'_>, e: &InteractionRecorded) {
        let context_data = match &e.context_data {
            Value::Null => json!({}),
            given => given.clone(),
        };
        self.rows.push(InteractionRow {
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

    /// The knowledge row is keyed by the knowledge id; its interaction, like every derived
    /// interaction, by the event id.
    pub fn knowledge_shared(&mut self, origin: &Origin<'_>, e: &KnowledgeShared) {
        self.rows.push(InteractionRow {
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

    /// An interaction already stored (two different events with one id) is kept: the event
    /// index already keeps an event from being applied twice, and such a clash must not fail
    /// the batch on every retry.
    pub async fn write(self, tx: &mut PgConnection) -> Result<(), sqlx::Error> {
        let rows = self.rows;
        if !rows.is_empty() {
            columns!(for r in rows => id, tenant_id, workflow_execution_id, from_agent_id,
                     to_agent_id, message, context_data, related_step_id, requires_response,
                     response_deadline, created_at, event_sequence, event_position,
                     interaction_type = r.interaction_type.to_owned());
            sqlx::query!(
                "INSERT INTO agent_interactions (id, tenant_id, workflow_execution_id,
                     from_agent_id, to_agent_id, interaction_type, message, context_data,
                     related_step_id, requires_response, response_deadline, created_at,
                     event_sequence, event_position)
                 SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::uuid[], $4::uuid[], $5::uuid[],
                                      $6::text[], $7::text[], $8::jsonb[], $9::text[],
                                      $10::bool[], $11::timestamptz[], $12::timestamptz[],
                                      $13::bigint[], $14::int2[])
                 ON CONFLICT DO NOTHING",
                &id,
                &tenant_id,
                &workflow_execution_id,
                from_agent_id as _,
                to_agent_id as _,
                &interaction_type,
                &message,
                &context_data,
                related_step_id as _,
                &requires_response,
                response_deadline as _,
                &created_at,
                &event_sequence,
                &event_position,
            )
            .execute(&mut *tx)
            .await?;
        }
        // After the rows: a question (or an escalation) and its answer may arrive in one
        // batch. Rare (a few per step that asks, one per escalation), so one statement each.
        for response in self.responses {
            match response {
                Response::Answered {
                    id,
                    received,
                    message,
                    data,
                    at,
                } => {
                    sqlx::query!(
                        "UPDATE agent_interactions SET response_received = $2,
                             response_message = $3,
                             response_data = (coalesce(response_data, '{}') - 'closed') || $4,
                             responded_at = $5
                         WHERE id = $1 AND (responded_at IS NULL OR response_data ? 'closed')",
                        id,
                        received,
                        message,
                        data,
                        at,
                    )
                    .execute(&mut *tx)
                    .await?;
                }
                Response::Missed {
                    tenant_id,
                    execution,
                    step_id,
                    attempt,
                    question_id,
                    agent,
                } => {
                    sqlx::query!(
                        "UPDATE agent_interactions
                         SET response_data = coalesce(response_data, '{}')
                                 || jsonb_build_object('missedDeadline', true)
                         WHERE tenant_id = $1 AND workflow_execution_id = $2
                           AND related_step_id = $3 AND interaction_type = 'question'
                           AND requires_response AND responded_at IS NULL
                           AND context_data ->> 'attempt' = $4::int4::text
                           AND context_data ->> 'questionId' = $5 AND to_agent_id = $6",
                        tenant_id,
                        execution,
                        step_id,
                        attempt,
                        question_id,
                        agent,
                    )
                    .execute(&mut *tx)
                    .await?;
                }
                Response::Resolved {
                    tenant_id,
                    execution,
                    step_id,
                    escalation_id,
                    message,
                    data,
                    at,
                } => {
                    sqlx::query!(
                        "UPDATE agent_interactions SET response_received = true,
                             response_message = $5,
                             response_data = coalesce(response_data, '{}') || $6,
                             responded_at = $7
                         WHERE tenant_id = $1 AND workflow_execution_id = $2
                           AND related_step_id IS NOT DISTINCT FROM $3
                           AND interaction_type = 'coordination'
                           AND requires_response AND responded_at IS NULL
                           AND context_data ->> 'escalationId' = $4::uuid::text",
                        tenant_id,
                        execution,
                        step_id,
                        escalation_id,
                        message,
                        data,
                        at,
                    )
                    .execute(&mut *tx)
                    .await?;
                }
                Response::Closed(closings) => close(tx, closings).await?,
            }
        }
        Ok(())
    }
}

async fn close(tx: &mut PgConnection, closings: Vec<Closing>) -> Result<(), sqlx::Error> {
    columns!(for c in closings => tenant_id, execution, steps_only, reason, before, at);
    sqlx::query!(
        "UPDATE agent_interactions i SET response_received = false,
             response_message = c.reason,
             response_data = coalesce(i.response_data, '{}') || jsonb_build_object('closed', true),
             responded_at = c.at
         FROM UNNEST($1::text[], $2::uuid[], $3::bool[], $4::text[], $5::bigint[],
                     $6::timestamptz[])
              AS c(tenant_id, execution, steps_only, reason, before, at)
         WHERE i.tenant_id = c.tenant_id AND i.workflow_execution_id = c.execution
           AND i.requires_response AND i.responded_at IS NULL
           AND (i.interaction_type = 'question' OR i.context_data ? 'escalationId')
           AND i.event_sequence < c.before
           AND (i.related_step_id IS NOT NULL OR NOT c.steps_only)",
        &tenant_id,
        &execution,
        &steps_only,
        &reason,
        &before,
        &at,
    )
    .execute(&mut *tx)
    .await?;
    Ok(())
}

fn delegation_message(step: &str, agent: &str, reason: &AssignmentReason) -> String {
    format!("Assigned {step} to {agent}: {}", reason.describe())
}

fn preview(content: &str) -> String {
    match content.char_indices().nth(KNOWLEDGE_PREVIEW_CHARS) {
        Some((cut, _)) => format!("{}...", &content[..cut]),
        None => content.to_owned(),
    }
}

pub(crate) async fn reset(tx: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query!("TRUNCATE agent_interactions")
        .execute(&mut *tx)
        .await?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test that unwraps fails with the value it got
mod tests {
    use cadre_proto::model::KnowledgeType;
    use cadre_proto::{Event, KnowledgeId};

    use cadre_proto::model::EscalationRung;

    use super::*;
    use crate::testing::{Fixture, TestDb, lease, plan_all, project, rows, rows_however_cut};

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

        assert_eq!(plan.knowledge.rows.len(), 2);
        assert_eq!(
            plan.knowledge.rows[0].content, long,
            "the knowledge row keeps it all"
        );
        assert_eq!(plan.knowledge.rows[0].knowledge_type, "insight");
        let quoted = plan.interactions.rows[0].context_data["content"]
            .as_str()
            .unwrap();
        assert_eq!(quoted, format!("{}...", "é".repeat(200)));
        assert_eq!(
            plan.interactions.rows[1].context_data["content"],
            exact.as_str()
        );
        assert_eq!(
            plan.interactions.rows[0].message,
            "Shared knowledge: Insights from Design"
        );
        assert_eq!(
            plan.interactions.rows[0].interaction_type,
            "knowledge_sharing"
        );
        assert_eq!(
            plan.interactions.rows[0].context_data["knowledgeType"],
            "insight"
        );
        assert_ne!(plan.interactions.rows[0].id, plan.knowledge.rows[0].id);
        assert_eq!(
            plan.interactions.rows[0].id,
            batch[0].content.as_ref().unwrap().meta.id.0
        );
    }

    #[test]
    fn a_timeout_is_noted_by_the_coordinator_to_the_agent() {
        let mut f = Fixture::new();
        let batch = f.messages([f.scheduled(1), f.step_started(1), f.step_timed_out(1, 5)]);
        let plan = plan_all(&batch);
        let timed_out = &plan.interactions.rows[2];
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
        assert_eq!(timed_out.context_data["timeoutMinutes"], 5.0);
        assert_eq!(timed_out.id, batch[2].content.as_ref().unwrap().meta.id.0);
    }

    #[test]
    fn an_escalation_is_noted_to_whoever_takes_the_step_over() {
        let mut f = Fixture::new();
        let batch = f.messages([
            f.escalated(1, EscalationRung::StrongerModel),
            f.escalated(2, EscalationRung::Person),
        ]);
        let plan = plan_all(&batch);
        let to_agent = &plan.interactions.rows[0];
        assert_eq!(to_agent.interaction_type, "coordination");
        assert_eq!(
            to_agent.message,
            "Step escalated: Design - strongerModel (retries spent: provider said 500)"
        );
        assert_eq!(to_agent.from_agent_id, None, "the coordinator decided");
        assert_eq!(to_agent.to_agent_id, Some(f.agent.id.0));
        assert!(!to_agent.requires_response);
        assert_eq!(to_agent.context_data["rung"], "strongerModel");
        assert_eq!(to_agent.context_data["escalatedTo"]["model"], "stronger");
        assert_eq!(to_agent.context_data.get("escalationId"), None);

        let to_person = &plan.interactions.rows[1];
        assert_eq!(
            to_person.message,
            "Step escalated: Design - person (retries spent: provider said 500)"
        );
        assert_eq!(to_person.to_agent_id, None);
        assert!(to_person.requires_response, "a person must resolve it");
        assert_eq!(
            to_person.context_data["escalationId"],
            json!(f.escalation(2))
        );
        assert_eq!(
            to_person.context_data["failures"][0]["error"],
            "provider said 500"
        );
        assert_eq!(to_person.related_step_id.as_deref(), Some("design"));
    }

    /// As an answer does a question's: the escalation's interaction records the person's
    /// response, in the batch of the escalation or a later one.
    #[tokio::test]
    async fn a_resolution_answers_the_escalation_and_is_noted() {
        let mut f = Fixture::new();
        let other = cadre_proto::AgentId::new();
        let log = f.messages([
            f.escalated(1, EscalationRung::Person),
            f.resolved(1, Resolution::Reassign { agent_id: other }),
            f.escalated(2, EscalationRung::Person),
        ]);
        let mut snapshots = Vec::new();
        for size in [log.len(), 1] {
            let db = TestDb::create().await;
            let mut lease = lease(&db).await;
            project(&mut lease, &log, size).await;
            snapshots.push(rows(&mut db.connect().await, "agent_interactions").await);
        }
        assert_eq!(snapshots[0], snapshots[1], "however the log is cut");
        let rows = snapshots[0].as_array().unwrap();
        let by_event = |i: usize| {
            let id = json!(log[i].content.as_ref().unwrap().meta.id);
            rows.iter().find(|row| row["id"] == id).unwrap()
        };
        let escalated = by_event(0);
        assert_eq!(escalated["response_received"], true);
        assert_eq!(escalated["response_message"], "reassign: looked at it");
        assert_eq!(
            escalated["response_data"],
            json!({ "action": "reassign", "resolvedBy": "ops", "agentId": other })
        );
        // `to_jsonb` writes the time with `+00:00`: read it back to compare.
        let responded_at: DateTime<Utc> =
            serde_json::from_value(escalated["responded_at"].clone()).unwrap();
        assert_eq!(responded_at, log[1].content.as_ref().unwrap().meta.time);
        let resolved = by_event(1);
        assert_eq!(
            resolved["message"],
            "Escalation resolved: Design - reassign by ops (looked at it)"
        );
        assert_eq!(resolved["to_agent_id"], json!(other));
        assert_eq!(resolved["requires_response"], false);
        assert_eq!(
            resolved["context_data"]["escalationId"],
            json!(f.escalation(1))
        );
        let next = by_event(2);
        assert_eq!(next["requires_response"], true);
        assert_eq!(next["responded_at"], Value::Null, "another escalation");
    }

    /// What waited for an answer closes when its run can no longer take one: at a re-plan a
    /// replaced step's requests, at the run's end all of them; a request made after that, or
    /// answered before it, keeps what it got.
    #[tokio::test]
    async fn requests_close_with_their_run_however_the_log_is_cut_and_when_replayed() {
        use cadre_proto::EscalationId;
        use cadre_proto::events::EscalationContext;

        let mut f = Fixture::new();
        let run_escalated = Event::ExecutionEscalated(Box::new(ExecutionEscalated {
            execution_id: f.execution,
            workflow_id: f.workflow,
            escalation_id: EscalationId::of_execution(f.execution),
            after_minutes: 60.0,
            reason: "over an hour".into(),
            context: EscalationContext::default(),
        }));
        let mut log = f.messages([
            f.escalated(1, EscalationRung::Person),
            run_escalated,
            f.replanned(),
            f.escalated(2, EscalationRung::Person),
            f.failed(),
        ]);
        f.execution = ExecutionId::new();
        let samples = cadre_proto::samples::every_event();
        let execution = f.execution;
        let sample = |type_name: &str| {
            let mut event = samples
                .iter()
                .find(|e| e.type_name() == type_name)
                .unwrap()
                .clone();
            match &mut event {
                Event::QuestionAssigned(q) => q.execution_id = execution,
                Event::QuestionAnswered(a) => a.execution_id = execution,
                _ => {}
            }
            event
        };
        log.extend(f.messages([
            f.escalated(1, EscalationRung::Person),
            f.resolved(1, Resolution::Retry),
            f.escalated(2, EscalationRung::Person),
        ]));
        let asked = f.message(sample(cadre_proto::events::types::QUESTION_ASSIGNED));
        let Event::QuestionAnswered(mut answered) =
            sample(cadre_proto::events::types::QUESTION_ANSWERED)
        else {
            unreachable!()
        };
        answered.assigned_event_id = asked.content.as_ref().unwrap().meta.id;
        // Review feedback asking for changes waits for the author's rework, not for an answer
        // the run must take: it is not the closing's.
        let feedback = Event::InteractionRecorded(InteractionRecorded {
            execution_id: f.execution,
            workflow_id: f.workflow,
            from_agent_id: f.agent.id,
            to_agent_id: None,
            interaction_type: InteractionType::Feedback,
            message: "Needs another pass".into(),
            context_data: json!({}),
            related_step_id: Some(f.step.id.clone()),
            requires_response: true,
        });
        log.push(asked);
        log.extend(f.messages([
            feedback,
            f.cancelled(Some("ops"), None),
            // Defensive (the coordinator refuses it): a resolution after the end.
            f.resolved(2, Resolution::Skip),
            // A teammate's answer after the end is still what they answered.
            Event::QuestionAnswered(answered),
        ]));
        let rows = rows_however_cut(&log, &[log.len(), 1, 2, 3, 4], "agent_interactions").await;
        let rows = rows.as_array().unwrap();
        let by_event = |i: usize| {
            let id = json!(log[i].content.as_ref().unwrap().meta.id);
            rows.iter().find(|row| row["id"] == id).unwrap()
        };
        let closed_by = |i: usize, closing: usize, reason: &str| {
            let row = by_event(i);
            assert_eq!(
                (
                    &row["response_received"],
                    &row["response_message"],
                    &row["response_data"]
                ),
                (&json!(false), &json!(reason), &json!({ "closed": true })),
                "request {i}: {row:#}"
            );
            let at: DateTime<Utc> = serde_json::from_value(row["responded_at"].clone()).unwrap();
            assert_eq!(at, log[closing].content.as_ref().unwrap().meta.time);
        };
        closed_by(0, 2, "execution re-planned");
        closed_by(1, 4, "execution failed");
        closed_by(3, 4, "execution failed");
        assert_eq!(by_event(5)["response_message"], "retry: looked at it");
        closed_by(7, 10, "execution cancelled");
        let answered = by_event(8);
        assert_eq!(
            (
                &answered["response_received"],
                &answered["response_message"]
            ),
            (&json!(true), &json!("Postgres")),
            "{answered:#}"
        );
        assert_eq!(answered["response_data"].get("closed"), None);
        assert_eq!(
            by_event(9)["responded_at"],
            Value::Null,
            "feedback stays open"
        );
    }
}
