//! The facts behind the team metrics and agent performance, counted over the projector's read
//! models (`agent_tasks`, `execution_history`, `agent_interactions`, `collaboration_knowledge`,
//! `task_handoffs`), the execution records and the alerts. What the counts mean, and the scores
//! derived from them, is defined once in [`crate::domain::performance`].

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use cadre_proto::TenantId;
use cadre_proto::events::AlertCondition;
use cadre_proto::model::StepType;

use super::{Page, Paged};
use crate::domain::performance::{AgentFacts, TeamFacts};

/// A count from Postgres, which has no unsigned integers.
fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// The facts of each of `agents`, in the order given (an agent without any: all zero).
pub async fn agent_facts(
    db: &PgPool,
    tenant: &TenantId,
    agents: &[Uuid],
) -> sqlx::Result<Vec<(Uuid, AgentFacts)>> {
    let rows = sqlx::query!(
        r#"SELECT a.agent_id AS "agent_id!", h.attempts AS "attempts!", h.failed AS "failed!",
                  h.timed_out AS "timed_out!", r.reviews AS "reviews!",
                  r.approvals AS "approvals!", t.tasks AS "tasks!",
                  t.tasks_completed AS "tasks_completed!",
                  t.completion_seconds AS "completion_seconds!",
                  t.estimated_tasks AS "estimated_tasks!",
                  t.estimated_actual_seconds AS "estimated_actual_seconds!",
                  t.estimate_seconds AS "estimate_seconds!", e.escalations AS "escalations!",
                  q.questions AS "questions!", q.answered AS "answered!",
                  ho.handoffs AS "handoffs!", ho.completed AS "handoffs_completed!"
           FROM UNNEST($2::uuid[]) WITH ORDINALITY AS a(agent_id, position)
           CROSS JOIN LATERAL (
               SELECT count(*) AS attempts,
                      count(*) FILTER (WHERE action = 'failed') AS failed,
                      count(*) FILTER (WHERE action = 'timed_out') AS timed_out
               FROM execution_history
               WHERE tenant_id = $1 AND agent_id = a.agent_id
                 AND action IN ('completed', 'failed', 'timed_out', 'approved',
                                'changes_requested')) h
           CROSS JOIN LATERAL (
               SELECT count(*) AS reviews, count(*) FILTER (WHERE action = 'approved') AS approvals
               FROM execution_history
               WHERE tenant_id = $1 AND author_agent_id = a.agent_id
                 AND action IN ('approved', 'changes_requested')) r
           CROSS JOIN LATERAL (
               SELECT count(*) AS tasks, count(completed_at) AS tasks_completed,
                      coalesce(sum(extract(epoch FROM completed_at - handed_out_at)), 0)::float8
                          AS completion_seconds,
                      count(completed_at) FILTER (WHERE estimate_minutes IS NOT NULL)
                          AS estimated_tasks,
                      coalesce(sum(extract(epoch FROM completed_at - handed_out_at))
                          FILTER (WHERE estimate_minutes IS NOT NULL), 0)::float8
                          AS estimated_actual_seconds,
                      coalesce(sum(estimate_minutes * 60)
                          FILTER (WHERE completed_at IS NOT NULL), 0)::float8 AS estimate_seconds
               FROM agent_tasks WHERE tenant_id = $1 AND agent_id = a.agent_id) t
           CROSS JOIN LATERAL (
               SELECT coalesce(jsonb_object_agg(step_type, n), '{}') AS escalations
               FROM (SELECT step_type, count(*) AS n FROM agent_tasks
                     WHERE tenant_id = $1 AND agent_id = a.agent_id
                       AND escalated_at IS NOT NULL
                     GROUP BY step_type) by_type) e
           CROSS JOIN LATERAL (
               SELECT count(*) AS questions,
                      count(*) FILTER (WHERE response_received) AS answered
               FROM agent_interactions
               WHERE tenant_id = $1 AND to_agent_id = a.agent_id
                 AND interaction_type = 'question' AND requires_response) q
           CROSS JOIN LATERAL (
               SELECT count(*) AS handoffs, count(*) FILTER (WHERE completed) AS completed
               FROM task_handoff_outcomes
               WHERE tenant_id = $1 AND to_agent_id = a.agent_id) ho
           ORDER BY a.position"#,
        tenant.as_str(),
        agents,
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let escalations_by_type =
                serde_json::from_value::<BTreeMap<String, i64>>(r.escalations)
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|(step_type, n)| Some((StepType::parse(&step_type)?, count(n))))
                    .collect();
            let facts = AgentFacts {
                attempts: count(r.attempts),
                failed: count(r.failed),
                timed_out: count(r.timed_out),
                tasks: count(r.tasks),
                tasks_completed: count(r.tasks_completed),
                completion_seconds: r.completion_seconds,
                estimated_tasks: count(r.estimated_tasks),
                estimated_actual_seconds: r.estimated_actual_seconds,
                estimate_seconds: r.estimate_seconds,
                escalations_by_type,
                reviews: count(r.reviews),
                approvals: count(r.approvals),
                questions_received: count(r.questions),
                questions_answered: count(r.answered),
                handoffs_received: count(r.handoffs),
                handoffs_completed: count(r.handoffs_completed),
                // The API reports no cost per agent; the agents' records (kept by the alert
                // watcher, for assignment) do.
                ..AgentFacts::default()
            };
            (r.agent_id, facts)
        })
        .collect())
}

/// The runs of a workflow.
pub async fn workflow_runs(
    db: &PgPool,
    tenant: &TenantId,
    workflow_id: Uuid,
) -> sqlx::Result<Vec<Uuid>> {
    sqlx::query_scalar!(
        r#"SELECT id AS "id!" FROM workflow_executions WHERE tenant_id = $1 AND workflow_id = $2"#,
        tenant.as_str(),
        workflow_id,
    )
    .fetch_all(db)
    .await
}

/// The facts of `runs` together.
pub async fn team_facts(db: &PgPool, tenant: &TenantId, runs: &[Uuid]) -> sqlx::Result<TeamFacts> {
    let r = sqlx::query!(
        r#"SELECT
               (SELECT count(*) FROM agent_interactions
                WHERE tenant_id = $1 AND workflow_execution_id = ANY($2)) AS "interactions!",
               q.questions AS "questions!", q.answers AS "answers!",
               q.response_seconds AS "response_seconds!",
               (SELECT count(*) FROM collaboration_knowledge
                WHERE tenant_id = $1 AND execution_id = ANY($2)) AS "knowledge_items!",
               ho.handoffs AS "handoffs!", ho.completed AS "handoffs_completed!",
               h.reviews AS "reviews!", h.approvals AS "approvals!",
               h.attempts AS "attempts!", h.failed_attempts AS "failed_attempts!",
               t.tasks_completed AS "tasks_completed!", t.estimated_tasks AS "estimated_tasks!",
               t.estimated_actual_seconds AS "estimated_actual_seconds!",
               t.estimate_seconds AS "estimate_seconds!"
           FROM (SELECT count(*) AS questions,
                        count(*) FILTER (WHERE response_received) AS answers,
                        coalesce(sum(extract(epoch FROM responded_at - created_at))
                            FILTER (WHERE response_received), 0)::float8 AS response_seconds
                 FROM agent_interactions
                 WHERE tenant_id = $1 AND workflow_execution_id = ANY($2)
                   AND interaction_type = 'question' AND requires_response) q,
                (SELECT count(*) AS handoffs, count(*) FILTER (WHERE completed) AS completed
                 FROM task_handoff_outcomes
                 WHERE tenant_id = $1 AND execution_id = ANY($2)) ho,
                (SELECT count(*) FILTER (WHERE action IN ('approved', 'changes_requested'))
                            AS reviews,
                        count(*) FILTER (WHERE action = 'approved') AS approvals,
                        count(*) AS attempts,
                        count(*) FILTER (WHERE action IN ('failed', 'timed_out'))
                            AS failed_attempts
                 FROM execution_history
                 WHERE tenant_id = $1 AND execution_id = ANY($2)
                   AND action IN ('completed', 'failed', 'timed_out', 'approved',
                                  'changes_requested')) h,
                (SELECT count(completed_at) AS tasks_completed,
                        count(completed_at) FILTER (WHERE estimate_minutes IS NOT NULL)
                            AS estimated_tasks,
                        coalesce(sum(extract(epoch FROM completed_at - handed_out_at))
                            FILTER (WHERE estimate_minutes IS NOT NULL), 0)::float8
                            AS estimated_actual_seconds,
                        coalesce(sum(estimate_minutes * 60)
                            FILTER (WHERE completed_at IS NOT NULL), 0)::float8
                            AS estimate_seconds
                 FROM agent_tasks WHERE tenant_id = $1 AND execution_id = ANY($2)) t"#,
        tenant.as_str(),
        runs,
    )
    .fetch_one(db)
    .await?;
    Ok(TeamFacts {
        interactions: count(r.interactions),
        questions: count(r.questions),
        answers: count(r.answers),
        response_seconds: r.response_seconds,
        knowledge_items: count(r.knowledge_items),
        handoffs: count(r.handoffs),
        handoffs_completed: count(r.handoffs_completed),
        reviews: count(r.reviews),
        approvals: count(r.approvals),
        attempts: count(r.attempts),
        failed_attempts: count(r.failed_attempts),
        tasks_completed: count(r.tasks_completed),
        estimated_tasks: count(r.estimated_tasks),
        estimated_actual_seconds: r.estimated_actual_seconds,
        estimate_seconds: r.estimate_seconds,
    })
}

/// One of the seed's execution records (`ExecutionRecord`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecordView {
    /// The event the record comes from.
    pub id: Uuid,
    pub timestamp: DateTime<Utc>,
    pub execution_id: Uuid,
    pub workflow_id: Uuid,
    pub step_id: String,
    pub step_name: String,
    /// The attempt (0 for a skipped step).
    pub attempt: i32,
    /// `completed`, `failed`, `timed_out`, `approved`, `changes_requested`, `escalated`,
    /// `skipped` or `resolved`.
    pub action: String,
    /// Who acted: the attempt's agent (the reviewer for a review), the agent whose failure
    /// escalated the step; absent for a person or the coordinator.
    pub agent_id: Option<Uuid>,
    /// A review's author: whose work it approved or sent back.
    pub author_agent_id: Option<Uuid>,
    /// The summary, error, feedback, reason or decision, in words.
    pub result: String,
    /// Milliseconds the attempt took, where known (completed: as its worker measured it;
    /// timed out: its time-out).
    pub duration_ms: Option<i64>,
    /// The list's sort key: where in the log the record comes from.
    #[serde(skip)]
    pub event_sequence: i64,
}

/// Which runs' records to list.
#[derive(Debug, Clone, Copy)]
pub enum RecordScope {
    Execution(Uuid),
    Workflow(Uuid),
}

/// Records in the order they happened (by `event_sequence`).
pub async fn records(
    db: &PgPool,
    tenant: &TenantId,
    scope: RecordScope,
    page: Page<i64>,
) -> sqlx::Result<Paged<RecordView, i64>> {
    let (execution_id, workflow_id) = match scope {
        RecordScope::Execution(id) => (Some(id), None),
        RecordScope::Workflow(id) => (None, Some(id)),
    };
    let rows = sqlx::query_as!(
        RecordView,
        "SELECT event_id AS id, recorded_at AS timestamp, execution_id, workflow_id, step_id,
                step_name, attempt, action, agent_id, author_agent_id, result, duration_ms,
                event_sequence
         FROM execution_history
         WHERE tenant_id = $1 AND ($2::uuid IS NULL OR execution_id = $2)
           AND ($3::uuid IS NULL OR workflow_id = $3) AND event_sequence > $4
         ORDER BY event_sequence LIMIT $5",
        tenant.as_str(),
        execution_id,
        workflow_id,
        page.after.unwrap_or(0),
        page.fetch(),
    )
    .fetch_all(db)
    .await?;
    Ok(Paged::of(rows, &page, |r| r.event_sequence))
}

/// An alert on an agent's performance.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AlertView {
    /// The `AlertRaised` event.
    pub id: Uuid,
    pub agent_id: Uuid,
    /// `failure_rate`, `slow_completion`, `repeated_escalations` or `low_quality`.
    pub condition: String,
    /// The step type whose tasks escalated (`repeated_escalations` only).
    pub task_type: Option<String>,
    /// 1 the first time the condition held, then one more each time it held again after
    /// clearing.
    pub crossing: i32,
    /// The measure, in the condition's unit: percent of attempts failed, percent of the
    /// estimates taken, tasks escalated, quality 0-10.
    pub value: f64,
    pub threshold: f64,
    /// Attempts, tasks or reviews measured.
    pub sample: i64,
    pub message: String,
    /// The step of a run that made the condition hold.
    pub workflow_id: Uuid,
    pub execution_id: Uuid,
    pub step_id: String,
    pub raised_at: DateTime<Utc>,
    /// The list's sort key: where in the log the alert was raised.
    #[serde(skip)]
    pub event_sequence: i64,
}

/// Which alerts to list: every one the filters given match.
#[derive(Debug, Clone, Copy, Default)]
pub struct AlertFilter {
    pub agent_id: Option<Uuid>,
    pub condition: Option<AlertCondition>,
    pub task_type: Option<StepType>,
    pub workflow_id: Option<Uuid>,
    pub execution_id: Option<Uuid>,
}

/// Alerts, newest first (by `event_sequence` descending).
pub async fn alerts(
    db: &PgPool,
    tenant: &TenantId,
    filter: AlertFilter,
    page: Page<i64>,
) -> sqlx::Result<Paged<AlertView, i64>> {
    let rows = sqlx::query_as!(
        AlertView,
        "SELECT id, agent_id, condition, task_type, crossing, value, threshold, sample, message,
                workflow_id, execution_id, step_id, raised_at, event_sequence
         FROM alerts
         WHERE tenant_id = $1 AND ($2::uuid IS NULL OR agent_id = $2)
           AND ($3::text IS NULL OR condition = $3)
           AND ($4::text IS NULL OR task_type = $4)
           AND ($5::uuid IS NULL OR workflow_id = $5)
           AND ($6::uuid IS NULL OR execution_id = $6) AND event_sequence < $7
         ORDER BY event_sequence DESC LIMIT $8",
        tenant.as_str(),
        filter.agent_id,
        filter.condition.map(AlertCondition::as_str),
        filter.task_type.map(StepType::as_str),
        filter.workflow_id,
        filter.execution_id,
        page.after.unwrap_or(i64::MAX),
        page.fetch(),
    )
    .fetch_all(db)
    .await?;
    Ok(Paged::of(rows, &page, |a| a.event_sequence))
}
