//! Queries over the projector's read models, shaped as the API returns them. Read models lag
//! the event log by the projection lag; the API says so where it matters.

pub mod metrics;
pub mod page;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use uuid::Uuid;

use cadre_proto::{KnowledgeId, TenantId};

pub use page::{Page, Paged};
use page::{earliest, latest};

/// Options of the pool these queries run on: each session plans every statement for the values
/// it is given (`SET plan_cache_mode = force_custom_plan`).
///
/// The API's lists filter on whatever a person asks for, over bounds that default to the
/// widest (a run's time range, a status left out): a generic plan, which Postgres caches for a
/// statement it runs often, can serve the common case with a plan made for an unknown
/// range (a range scan and a sort of every row where the ordered index reads one page). These
/// reads are not on a step's path, so planning each (about 0.1 ms) costs nothing that counts.
/// The projector and the workers, whose statements are keyed and run thousands of times a
/// second, let Postgres cache their plans. A `SET` rather than a startup option, which poolers
/// such as PgBouncer refuse.
pub fn pool_options() -> PgPoolOptions {
    PgPoolOptions::new().after_connect(|conn, _| {
        Box::pin(async move {
            sqlx::raw_sql("SET plan_cache_mode = force_custom_plan")
                .execute(conn)
                .await
                .map(drop)
        })
    })
}

/// The sort key of a list ordered by a time, then by id among rows of the same time.
pub type TimeAndId = (DateTime<Utc>, Uuid);

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentView {
    pub id: Uuid,
    pub name: String,
    pub role: String,
    pub backstory: String,
    #[schema(value_type = Vec<String>)]
    pub skills: serde_json::Value,
    pub provider: String,
    pub model: String,
    #[schema(value_type = cadre_proto::model::ModelParameters)]
    pub model_parameters: serde_json::Value,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowView {
    pub id: Uuid,
    pub name: String,
    pub description: String,
    #[schema(value_type = cadre_proto::model::WorkflowType)]
    pub workflow_type: String,
    #[schema(value_type = cadre_proto::model::WorkflowConfiguration)]
    pub configuration: serde_json::Value,
    #[schema(value_type = Vec<Uuid>)]
    pub participating_agents: serde_json::Value,
    pub coordinator_agent_id: Option<Uuid>,
    pub status: String,
    pub total_steps: i32,
    pub execution_count: i32,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub actual_duration: Option<i32>,
    /// The template it was created from (`POST /v1/templates/{id}/workflows`), if any.
    pub template_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionView {
    pub id: Uuid,
    pub workflow_id: Uuid,
    pub execution_number: i32,
    pub trigger_reason: String,
    pub triggered_by: Option<String>,
    /// The most recently scheduled of `active_steps`; kept for clients of the seed's API.
    pub current_step_id: Option<String>,
    /// Every step scheduled or running, in the order they were scheduled.
    #[schema(value_type = Vec<String>)]
    pub active_steps: serde_json::Value,
    #[schema(value_type = Object)]
    pub execution_context: serde_json::Value,
    #[schema(value_type = std::collections::BTreeMap<String, Object>)]
    pub step_results: serde_json::Value,
    #[schema(value_type = Vec<String>)]
    pub active_agents: serde_json::Value,
    #[schema(value_type = std::collections::BTreeMap<String, Object>)]
    pub agent_assignments: serde_json::Value,
    pub status: String,
    pub error_message: Option<String>,
    /// Why a failed execution failed (`{"kind": "stepFailed", "stepId": ...}`).
    #[schema(value_type = Option<Object>)]
    pub failure_cause: Option<serde_json::Value>,
    pub final_output: Option<serde_json::Value>,
    pub started_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    /// Seconds from its start to its end; absent while it runs.
    pub actual_duration: Option<i32>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct InteractionView {
    pub id: Uuid,
    pub workflow_execution_id: Uuid,
    pub from_agent_id: Option<Uuid>,
    pub to_agent_id: Option<Uuid>,
    pub interaction_type: String,
    pub message: String,
    #[schema(value_type = Object)]
    pub context_data: serde_json::Value,
    pub related_step_id: Option<String>,
    pub requires_response: bool,
    /// When the asker stops waiting for the answer.
    pub response_deadline: Option<DateTime<Utc>>,
    pub response_received: bool,
    /// The answer, or why there is none.
    pub response_message: Option<String>,
    /// Who answered with which model and tokens; `missedDeadline` when it came too late;
    /// `closed` when no answer can come any more (its run ended, or a re-plan replaced its
    /// step: `responseMessage` says which).
    #[schema(value_type = Option<Object>)]
    pub response_data: Option<serde_json::Value>,
    pub responded_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    /// The list's sort key, with `event_position` and the id: where in the log the
    /// interaction was recorded.
    #[serde(skip)]
    pub event_sequence: i64,
    #[serde(skip)]
    pub event_position: i16,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct KnowledgeView {
    pub id: Uuid,
    /// How prompts and answers name the item (`K-1a2b3c4d`): `[confirms K-…]`, ...
    pub handle: String,
    pub workflow_id: Uuid,
    pub execution_id: Uuid,
    pub step_id: String,
    pub title: String,
    pub content: String,
    pub knowledge_type: String,
    pub created_by_agent_id: Uuid,
    #[schema(value_type = Vec<String>)]
    pub validated_by_agents: serde_json::Value,
    pub relevance_score: f64,
    pub usage_count: i32,
    #[schema(value_type = Vec<String>)]
    pub tags: serde_json::Value,
    pub is_active: bool,
    pub superseded_by: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    /// The list's sort key, with `event_position` and the id: where in the log the item was
    /// shared.
    #[serde(skip)]
    pub event_sequence: i64,
    #[serde(skip)]
    pub event_position: i16,
}

/// Agents, oldest first (by `(created_at, id)`).
pub async fn agents(
    db: &PgPool,
    tenant: &TenantId,
    page: Page<TimeAndId>,
) -> sqlx::Result<Paged<AgentView, TimeAndId>> {
    let (at, id) = page.after.unwrap_or((earliest(), Uuid::nil()));
    let rows = sqlx::query_as!(
        AgentView,
        "SELECT id, name, role, backstory, skills, provider, model, model_parameters, created_at
         FROM agents WHERE tenant_id = $1 AND (created_at, id) > ($2::timestamptz, $3::uuid)
         ORDER BY created_at, id LIMIT $4",
        tenant.as_str(),
        at,
        id,
        page.fetch(),
    )
    .fetch_all(db)
    .await?;
    Ok(Paged::of(rows, &page, |a| (a.created_at, a.id)))
}

// The column lists below are spelled out in each query: the query macros read SQL literals
// only. A list that misses or adds a column does not compile, since the macros build the view
// struct field by field.

/// What a workflow's `status` can be: `draft` until its first run, then `active`, or how its
/// latest run ended, or `paused`.
pub const WORKFLOW_STATUSES: [&str; 6] = [
    "draft",
    "active",
    "paused",
    "completed",
    "failed",
    "cancelled",
];

/// Workflows, the newest first (by `(created_at, id)` descending); only those in one of
/// `statuses` unless it is empty.
pub async fn workflows(
    db: &PgPool,
    tenant: &TenantId,
    statuses: &[&str],
    page: Page<TimeAndId>,
) -> sqlx::Result<Paged<WorkflowView, TimeAndId>> {
    let (at, id) = page.after.unwrap_or((latest(), Uuid::max()));
    let rows = sqlx::query_as!(
        WorkflowView,
        "SELECT id, name, description, workflow_type, configuration, participating_agents,
                coordinator_agent_id, status, total_steps, execution_count, started_at,
                completed_at, actual_duration, template_id, created_at, updated_at
         FROM collaboration_workflows
         WHERE tenant_id = $1 AND (created_at, id) < ($2::timestamptz, $3::uuid)
           AND (cardinality($4::text[]) = 0 OR status = ANY($4))
         ORDER BY created_at DESC, id DESC LIMIT $5",
        tenant.as_str(),
        at,
        id,
        statuses as &[&str],
        page.fetch(),
    )
    .fetch_all(db)
    .await?;
    Ok(Paged::of(rows, &page, |w| (w.created_at, w.id)))
}

pub async fn workflow(
    db: &PgPool,
    tenant: &TenantId,
    id: Uuid,
) -> sqlx::Result<Option<WorkflowView>> {
    sqlx::query_as!(
        WorkflowView,
        "SELECT id, name, description, workflow_type, configuration, participating_agents,
                coordinator_agent_id, status, total_steps, execution_count, started_at,
                completed_at, actual_duration, template_id, created_at, updated_at
         FROM collaboration_workflows WHERE tenant_id = $1 AND id = $2",
        tenant.as_str(),
        id,
    )
    .fetch_optional(db)
    .await
}

/// Where a run's step stands in the log: the sequence of its latest scheduling, or of the
/// first event about it if it was never scheduled (an approval, a step skipped by its
/// condition). What the step shows is of its current plan if this comes after the run's
/// latest re-plan.
pub struct StepPosition {
    pub step_id: String,
    pub sequence: i64,
}

/// The log positions of a run's steps (see [`StepPosition`]), none for an unknown run.
pub async fn step_positions(
    db: &PgPool,
    tenant: &TenantId,
    execution: Uuid,
) -> sqlx::Result<Vec<StepPosition>> {
    sqlx::query_as!(
        StepPosition,
        r#"SELECT s.step_id AS "step_id!",
                  coalesce(s.scheduled_sequence, s.first_sequence) AS "sequence!"
           FROM execution_steps s
           JOIN executions e ON e.id = s.execution_id
           WHERE e.tenant_id = $1 AND s.execution_id = $2"#,
        tenant.as_str(),
        execution,
    )
    .fetch_all(db)
    .await
}

pub async fn execution(
    db: &PgPool,
    tenant: &TenantId,
    id: Uuid,
) -> sqlx::Result<Option<ExecutionView>> {
    sqlx::query_as!(
        ExecutionView,
        r#"SELECT id AS "id!", workflow_id AS "workflow_id!", execution_number AS "execution_number!",
                trigger_reason AS "trigger_reason!", triggered_by, current_step_id,
                active_steps AS "active_steps!", execution_context AS "execution_context!",
                step_results AS "step_results!", active_agents AS "active_agents!",
                agent_assignments AS "agent_assignments!", status AS "status!", error_message,
                failure_cause, final_output, started_at AS "started_at!", completed_at,
                actual_duration, updated_at AS "updated_at!"
         FROM workflow_executions WHERE tenant_id = $1 AND id = $2"#,
        tenant.as_str(),
        id,
    )
    .fetch_optional(db)
    .await
}

/// What an execution's `status` can be.
pub const EXECUTION_STATUSES: [&str; 6] = [
    "running",
    "paused",
    "escalated",
    "completed",
    "failed",
    "cancelled",
];

/// What an execution's `triggerReason` can be.
pub const TRIGGERS: [&str; 4] = ["manual", "scheduled", "event", "dependency"];

/// Which runs to list: those every filter given matches. Times bound `started_at`, from
/// `started_after` (included) to `started_before` (excluded).
#[derive(Debug, Clone, Default)]
pub struct ExecutionFilter {
    pub workflow_id: Option<Uuid>,
    /// Any of these; any status when empty.
    pub statuses: Vec<&'static str>,
    pub trigger: Option<&'static str>,
    pub started_after: Option<DateTime<Utc>>,
    pub started_before: Option<DateTime<Utc>>,
}

/// A workflow's runs, the newest first (by `execution_number` descending).
///
/// Each list picks its page's ids first: the view assembles the step columns only for them,
/// whatever plan the filters lead to (its step rows are left out of the inner query).
pub async fn executions(
    db: &PgPool,
    tenant: &TenantId,
    workflow_id: Uuid,
    filter: &ExecutionFilter,
    page: Page<i32>,
) -> sqlx::Result<Paged<ExecutionView, i32>> {
    let rows = sqlx::query_as!(
        ExecutionView,
        r#"SELECT id AS "id!", workflow_id AS "workflow_id!", execution_number AS "execution_number!",
                trigger_reason AS "trigger_reason!", triggered_by, current_step_id,
                active_steps AS "active_steps!", execution_context AS "execution_context!",
                step_results AS "step_results!", active_agents AS "active_agents!",
                agent_assignments AS "agent_assignments!", status AS "status!", error_message,
                failure_cause, final_output, started_at AS "started_at!", completed_at,
                actual_duration, updated_at AS "updated_at!"
         FROM workflow_executions
         WHERE id IN (
             SELECT id FROM workflow_executions
             WHERE tenant_id = $1 AND workflow_id = $2 AND execution_number < $3
               AND (cardinality($4::text[]) = 0 OR status = ANY($4))
               AND ($5::text IS NULL OR trigger_reason = $5)
               AND started_at >= $6 AND started_at < $7
             ORDER BY execution_number DESC LIMIT $8)
         ORDER BY execution_number DESC"#,
        tenant.as_str(),
        workflow_id,
        page.after.unwrap_or(i32::MAX),
        &filter.statuses as &[&str],
        filter.trigger,
        filter.started_after.unwrap_or_else(earliest),
        filter.started_before.unwrap_or_else(latest),
        page.fetch(),
    )
    .fetch_all(db)
    .await?;
    Ok(Paged::of(rows, &page, |e| e.execution_number))
}

/// The list name the cursors of [`all_executions`] carry: the API's and the console's pages
/// of it are one list.
pub const ALL_EXECUTIONS: &str = "executions";

/// The runs of every workflow, the newest first (by `(started_at, id)` descending).
pub async fn all_executions(
    db: &PgPool,
    tenant: &TenantId,
    filter: &ExecutionFilter,
    page: Page<TimeAndId>,
) -> sqlx::Result<Paged<ExecutionView, TimeAndId>> {
    let (at, id) = page.after.unwrap_or((latest(), Uuid::max()));
    let rows = sqlx::query_as!(
        ExecutionView,
        r#"SELECT id AS "id!", workflow_id AS "workflow_id!", execution_number AS "execution_number!",
                trigger_reason AS "trigger_reason!", triggered_by, current_step_id,
                active_steps AS "active_steps!", execution_context AS "execution_context!",
                step_results AS "step_results!", active_agents AS "active_agents!",
                agent_assignments AS "agent_assignments!", status AS "status!", error_message,
                failure_cause, final_output, started_at AS "started_at!", completed_at,
                actual_duration, updated_at AS "updated_at!"
         FROM workflow_executions
         WHERE id IN (
             SELECT id FROM workflow_executions
             WHERE tenant_id = $1 AND (started_at, id) < ($2::timestamptz, $3::uuid)
               AND ($4::uuid IS NULL OR workflow_id = $4)
               AND (cardinality($5::text[]) = 0 OR status = ANY($5))
               AND ($6::text IS NULL OR trigger_reason = $6)
               AND started_at >= $7 AND started_at < $8
             ORDER BY started_at DESC, id DESC LIMIT $9)
         ORDER BY started_at DESC, id DESC"#,
        tenant.as_str(),
        at,
        id,
        filter.workflow_id,
        &filter.statuses as &[&str],
        filter.trigger,
        filter.started_after.unwrap_or_else(earliest),
        filter.started_before.unwrap_or_else(latest),
        page.fetch(),
    )
    .fetch_all(db)
    .await?;
    Ok(Paged::of(rows, &page, |e| (e.started_at, e.id)))
}

/// An execution's interactions, in the order recorded (by `event_sequence`, then
/// `event_position`: what a step's completion told its team in the order told, then the
/// completion's own entry).
pub async fn interactions(
    db: &PgPool,
    tenant: &TenantId,
    execution_id: Uuid,
    page: Page<(i64, i16, Uuid)>,
) -> sqlx::Result<Paged<InteractionView, (i64, i16, Uuid)>> {
    let (sequence, position, id) = page.after.unwrap_or((0, 0, Uuid::nil()));
    let rows = sqlx::query_as!(
        InteractionView,
        "SELECT id, workflow_execution_id, from_agent_id, to_agent_id, interaction_type, message,
                context_data, related_step_id, requires_response, response_deadline,
                response_received, response_message, response_data, responded_at, created_at,
                event_sequence, event_position
         FROM agent_interactions
         WHERE tenant_id = $1 AND workflow_execution_id = $2
           AND (event_sequence, event_position, id) > ($3::bigint, $4::int2, $5::uuid)
         ORDER BY event_sequence, event_position, id LIMIT $6",
        tenant.as_str(),
        execution_id,
        sequence,
        position,
        id,
        page.fetch(),
    )
    .fetch_all(db)
    .await?;
    Ok(Paged::of(rows, &page, |i| {
        (i.event_sequence, i.event_position, i.id)
    }))
}

/// A workflow's shared knowledge, in the order shared (by `event_sequence`, then
/// `event_position`: the items of one step's completion in the order told).
pub async fn knowledge(
    db: &PgPool,
    tenant: &TenantId,
    workflow_id: Uuid,
    page: Page<(i64, i16, Uuid)>,
) -> sqlx::Result<Paged<KnowledgeView, (i64, i16, Uuid)>> {
    let (sequence, position, id) = page.after.unwrap_or((0, 0, Uuid::nil()));
    let rows = sqlx::query_as!(
        KnowledgeView,
        "SELECT id, '' AS \"handle!\", workflow_id, execution_id, step_id, title, content,
                knowledge_type, created_by_agent_id, validated_by_agents, relevance_score,
                usage_count, tags, is_active, superseded_by, created_at, event_sequence,
                event_position
         FROM collaboration_knowledge
         WHERE tenant_id = $1 AND workflow_id = $2
           AND (event_sequence, event_position, id) > ($3::bigint, $4::int2, $5::uuid)
         ORDER BY event_sequence, event_position, id LIMIT $6",
        tenant.as_str(),
        workflow_id,
        sequence,
        position,
        id,
        page.fetch(),
    )
    .fetch_all(db)
    .await?;
    // The handle is derived from the id by the one rule prompts use, not spelt again in SQL.
    Ok(
        Paged::of(rows, &page, |k| (k.event_sequence, k.event_position, k.id)).map(|row| {
            KnowledgeView {
                handle: KnowledgeId(row.id).handle(),
                ..row
            }
        }),
    )
}

/// Whose LLM usage to sum.
#[derive(Debug, Clone, Copy)]
pub enum UsageScope {
    Execution(Uuid),
    Workflow(Uuid),
    Agent(Uuid),
}

/// What to break a usage sum down by.
#[derive(Debug, Clone, Copy)]
pub enum UsageGroup {
    Step,
    Agent,
    Model,
}

/// Tokens and cost of a set of recorded LLM calls.
#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageSum {
    /// What the row sums (a step id, an agent id, a `provider/model`); absent for the total.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Records of LLM calls summed: one per completed, failed or reviewed attempt whose model
    /// answered, per attempt that asked questions, and per teammate's answer.
    pub calls: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub total_tokens: i64,
    /// In US dollars; absent when no model of these calls has a price.
    pub cost_usd: Option<f64>,
    /// Whether every call's model had a price (otherwise `costUsd` covers only some of them).
    pub cost_complete: bool,
}

/// The total of `scope`'s token usage and cost, then one sum per `group`, largest first.
pub async fn usage(
    db: &PgPool,
    tenant: &TenantId,
    scope: UsageScope,
    groups: &[UsageGroup],
) -> sqlx::Result<(UsageSum, Vec<Vec<UsageSum>>)> {
    let (column, id) = match scope {
        UsageScope::Execution(id) => ("execution_id", id),
        UsageScope::Workflow(id) => ("workflow_id", id),
        UsageScope::Agent(id) => ("agent_id", id),
    };
    // Audited: only the fixed column expressions of this function are formatted in (so each
    // scope keeps its index); the tenant and the id are bound.
    let sum = |key: &str| {
        format!(
            "SELECT {key} AS key, count(*) AS calls,
                    coalesce(sum(prompt_tokens), 0)::int8 AS prompt_tokens,
                    coalesce(sum(completion_tokens), 0)::int8 AS completion_tokens,
                    coalesce(sum(total_tokens), 0)::int8 AS total_tokens,
                    sum(cost_usd) AS cost_usd,
                    count(cost_usd) = count(*) AS cost_complete
             FROM token_usage WHERE tenant_id = $1 AND {column} = $2"
        )
    };
    let total = sqlx::query_as::<_, UsageSum>(sqlx::AssertSqlSafe(sum("NULL::text")))
        .bind(tenant.as_str())
        .bind(id)
        .fetch_one(db)
        .await?;
    let mut breakdowns = Vec::with_capacity(groups.len());
    for group in groups {
        let key = match group {
            UsageGroup::Step => "step_id",
            UsageGroup::Agent => "agent_id::text",
            UsageGroup::Model => "provider || '/' || model",
        };
        let rows = sqlx::query_as::<_, UsageSum>(sqlx::AssertSqlSafe(format!(
            "{} GROUP BY 1 ORDER BY total_tokens DESC, 1",
            sum(key)
        )))
        .bind(tenant.as_str())
        .bind(id)
        .fetch_all(db)
        .await?;
        breakdowns.push(rows);
    }
    Ok((total, breakdowns))
}

/// A step handed from one agent to another (the seed's `TaskHandoff`), with where it belongs.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HandoffView {
    /// The handoff's id: derived from the `StepScheduled` event that carries it (or, in logs
    /// written before handoffs travelled in the scheduling, its `TaskHandedOff` event's id).
    pub id: Uuid,
    pub execution_id: Uuid,
    pub workflow_id: Uuid,
    pub from_agent: Uuid,
    pub to_agent: Uuid,
    /// The step handed over.
    pub task_id: String,
    pub task_name: String,
    pub context: HandoffContextView,
    pub success_criteria: String,
    /// Minutes: the step's `timeoutMinutes`; absent when it has none.
    pub estimated_time: Option<f64>,
    #[schema(value_type = Vec<String>)]
    pub escalation_conditions: serde_json::Value,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HandoffContextView {
    pub completed_work: String,
    pub remaining_work: String,
    #[schema(value_type = Vec<String>)]
    pub constraints: serde_json::Value,
    #[schema(value_type = Vec<String>)]
    pub dependencies: serde_json::Value,
}

/// An execution's handoffs, in the order they were recorded (by `event_sequence`, then by id:
/// one scheduling may carry several). A step handed over again replaces its handoff, which
/// moves to the end: a client paging through meanwhile may see it twice, never miss it.
pub async fn handoffs(
    db: &PgPool,
    tenant: &TenantId,
    execution_id: Uuid,
    page: Page<(i64, Uuid)>,
) -> sqlx::Result<Paged<HandoffView, (i64, Uuid)>> {
    let (sequence, id) = page.after.unwrap_or((0, Uuid::nil()));
    let rows = sqlx::query!(
        "SELECT id, execution_id, workflow_id, from_agent_id, to_agent_id, task_id,
                task_name, completed_work, remaining_work, constraints, dependencies,
                success_criteria, estimated_time, escalation_conditions, created_at,
                event_sequence
         FROM task_handoffs
         WHERE tenant_id = $1 AND execution_id = $2
           AND (event_sequence, id) > ($3::bigint, $4::uuid)
         ORDER BY event_sequence, id LIMIT $5",
        tenant.as_str(),
        execution_id,
        sequence,
        id,
        page.fetch(),
    )
    .fetch_all(db)
    .await?;
    Ok(
        Paged::of(rows, &page, |r| (r.event_sequence, r.id)).map(|r| HandoffView {
            id: r.id,
            execution_id: r.execution_id,
            workflow_id: r.workflow_id,
            from_agent: r.from_agent_id,
            to_agent: r.to_agent_id,
            task_id: r.task_id,
            task_name: r.task_name,
            context: HandoffContextView {
                completed_work: r.completed_work,
                remaining_work: r.remaining_work,
                constraints: r.constraints,
                dependencies: r.dependencies,
            },
            success_criteria: r.success_criteria,
            estimated_time: r.estimated_time,
            escalation_conditions: r.escalation_conditions,
            created_at: r.created_at,
        }),
    )
}

/// An agent's latest status (the seed's `AgentStatus`), with the step attempt it is about.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentStatusView {
    pub agent_id: Uuid,
    /// `idle` (no status yet), `working`, `blocked`, `completed` or `failed`.
    pub state: String,
    /// The name of the step the status is about.
    pub current_task: Option<String>,
    pub workflow_id: Option<Uuid>,
    pub execution_id: Option<Uuid>,
    pub step_id: Option<String>,
    pub attempt: Option<i32>,
    /// Percent, 0 to 100.
    pub progress: i16,
    /// When the step will be done at the latest (its attempt's time-out), or was done.
    pub estimated_completion: Option<DateTime<Utc>>,
    #[schema(value_type = Vec<String>)]
    pub blockers: serde_json::Value,
    /// `[{fromAgent?, reason, urgency}]`, `urgency` one of `low`, `medium`, `high`, `critical`.
    #[schema(value_type = Vec<Object>)]
    pub requested_support: serde_json::Value,
    /// When the status was recorded; absent while idle.
    pub updated_at: Option<DateTime<Utc>>,
}

impl AgentStatusView {
    /// An agent that has not worked on any step yet.
    pub fn idle(agent_id: Uuid) -> Self {
        Self {
            agent_id,
            state: "idle".to_owned(),
            current_task: None,
            workflow_id: None,
            execution_id: None,
            step_id: None,
            attempt: None,
            progress: 0,
            estimated_completion: None,
            blockers: serde_json::json!([]),
            requested_support: serde_json::json!([]),
            updated_at: None,
        }
    }
}

pub async fn agent_status(
    db: &PgPool,
    tenant: &TenantId,
    agent_id: Uuid,
) -> sqlx::Result<Option<AgentStatusView>> {
    sqlx::query_as!(
        AgentStatusView,
        r#"SELECT agent_id, state, current_task, workflow_id, execution_id, step_id, attempt,
                  progress, estimated_completion, blockers, requested_support,
                  updated_at AS "updated_at?"
           FROM agent_status WHERE tenant_id = $1 AND agent_id = $2"#,
        tenant.as_str(),
        agent_id,
    )
    .fetch_optional(db)
    .await
}

/// What waits, or waited, for a person (`escalations`): a step past the ladder's automatic
/// rungs, an approval, or a whole run past `escalation.afterMinutes`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EscalationView {
    /// The escalation id (`POST /v1/escalations/{id}/resolve`).
    pub id: Uuid,
    pub execution_id: Uuid,
    pub workflow_id: Uuid,
    /// `failure`, `approval` or `execution` (no step).
    pub kind: String,
    pub step_id: Option<String>,
    pub step_name: Option<String>,
    /// The attempt that failed; for an approval, the attempt the approval is; 0 for a run.
    pub attempt: i32,
    /// A sign-off (`approve` / `reject` / `abort`) rather than a failure to resolve.
    pub approval: bool,
    /// `open` (waits for a person), `resolved` or `closed` (its execution ended first).
    pub status: String,
    /// Why the step was escalated, in words.
    pub reason: String,
    /// `{failures: [{attempt, agentId, error}], tried: [rung], outputs: {stepId: summary}}`.
    #[schema(value_type = Object)]
    pub context: serde_json::Value,
    pub created_at: DateTime<Utc>,
    /// Resolved only: when, the action (`retry`, `reassign`, `skip`, `provideOutput`, `abort`,
    /// `approve`, `reject`, `continue`), the whole resolution (`{action, ...}`), who, and their comment.
    pub resolved_at: Option<DateTime<Utc>>,
    pub action: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub resolution: Option<serde_json::Value>,
    pub resolved_by: Option<String>,
    pub comment: Option<String>,
    /// Closed only: when, and why (`execution completed`, `execution failed`,
    /// `execution cancelled`, or for a step's, `execution re-planned`: the re-plan replaced it).
    pub closed_at: Option<DateTime<Utc>>,
    pub closed_reason: Option<String>,
}

/// Where an escalation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EscalationStatus {
    Open,
    Resolved,
    Closed,
}

impl EscalationStatus {
    pub const ALL: [Self; 3] = [Self::Open, Self::Resolved, Self::Closed];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Resolved => "resolved",
            Self::Closed => "closed",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == raw)
    }
}

/// Which escalations to list: every one the filters given match.
#[derive(Debug, Clone, Copy, Default)]
pub struct EscalationFilter {
    pub status: Option<EscalationStatus>,
    pub execution_id: Option<Uuid>,
    pub workflow_id: Option<Uuid>,
}

/// Escalations, oldest first (the order to resolve them in; by `(created_at, id)`).
pub async fn escalations(
    db: &PgPool,
    tenant: &TenantId,
    filter: EscalationFilter,
    page: Page<TimeAndId>,
) -> sqlx::Result<Paged<EscalationView, TimeAndId>> {
    let (at, id) = page.after.unwrap_or((earliest(), Uuid::nil()));
    let rows = sqlx::query_as!(
        EscalationView,
        "SELECT id, execution_id, workflow_id, kind, step_id, step_name, attempt, approval, status,
                reason, context, created_at, resolved_at, action, resolution, resolved_by,
                comment, closed_at, closed_reason
         FROM escalations
         WHERE tenant_id = $1 AND ($2::text IS NULL OR status = $2)
           AND ($3::uuid IS NULL OR execution_id = $3)
           AND ($4::uuid IS NULL OR workflow_id = $4)
           AND (created_at, id) > ($5::timestamptz, $6::uuid)
         ORDER BY created_at, id LIMIT $7",
        tenant.as_str(),
        filter.status.map(EscalationStatus::as_str),
        filter.execution_id,
        filter.workflow_id,
        at,
        id,
        page.fetch(),
    )
    .fetch_all(db)
    .await?;
    Ok(Paged::of(rows, &page, |e| (e.created_at, e.id)))
}

/// One escalation, with the execution and workflow it belongs to.
pub async fn escalation(
    db: &PgPool,
    tenant: &TenantId,
    id: Uuid,
) -> sqlx::Result<Option<EscalationView>> {
    sqlx::query_as!(
        EscalationView,
        "SELECT id, execution_id, workflow_id, kind, step_id, step_name, attempt, approval, status,
                reason, context, created_at, resolved_at, action, resolution, resolved_by,
                comment, closed_at, closed_reason
         FROM escalations WHERE tenant_id = $1 AND id = $2",
        tenant.as_str(),
        id,
    )
    .fetch_optional(db)
    .await
}

/// A workflow template (the seed's `WorkflowTemplate`) with how the workflows created from it
/// did.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TemplateView {
    pub id: Uuid,
    pub name: String,
    pub description: String,
    #[schema(value_type = cadre_proto::model::TemplateCategory)]
    pub category: String,
    #[schema(value_type = cadre_proto::model::WorkflowType)]
    pub workflow_type: String,
    #[schema(value_type = cadre_proto::model::WorkflowConfiguration)]
    pub template_definition: serde_json::Value,
    #[schema(value_type = Vec<String>)]
    pub required_agent_roles: serde_json::Value,
    pub recommended_agent_count: i32,
    pub is_system_template: bool,
    pub created_by: Option<String>,
    pub revision: i32,
    /// Workflows created from it.
    pub workflow_count: i32,
    /// Runs of those workflows.
    pub usage_count: i32,
    /// Of those runs, how many ended (completed, failed or cancelled), and how many completed.
    pub ended_runs: i32,
    pub completed_runs: i32,
    /// Percent of the ended runs that completed; 0 while none has ended.
    pub success_rate: f64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The sort key of the templates: whether it is a user's (system templates first), when it
/// was first registered, its id.
pub type TemplateKey = (bool, DateTime<Utc>, Uuid);

/// The tenant's templates: the system ones, then the users', each oldest first. (The seed
/// listed the most used first; a count that changes under a client paging through the list
/// would skip or repeat templates.)
pub async fn templates(
    db: &PgPool,
    tenant: &TenantId,
    page: Page<TemplateKey>,
) -> sqlx::Result<Paged<TemplateView, TemplateKey>> {
    let (user, at, id) = page.after.unwrap_or((false, earliest(), Uuid::nil()));
    let rows = sqlx::query_as!(
        TemplateView,
        r#"SELECT id, name, description, category, workflow_type, template_definition,
                  required_agent_roles, recommended_agent_count, is_system_template, created_by,
                  revision, workflow_count, usage_count, ended_runs, completed_runs,
                  success_rate AS "success_rate!", created_at, updated_at
           FROM workflow_templates
           WHERE tenant_id = $1
             AND (NOT is_system_template, created_at, id) > ($2::bool, $3::timestamptz, $4::uuid)
           ORDER BY NOT is_system_template, created_at, id LIMIT $5"#,
        tenant.as_str(),
        user,
        at,
        id,
        page.fetch(),
    )
    .fetch_all(db)
    .await?;
    Ok(Paged::of(rows, &page, |t| {
        (!t.is_system_template, t.created_at, t.id)
    }))
}

pub async fn template(
    db: &PgPool,
    tenant: &TenantId,
    id: Uuid,
) -> sqlx::Result<Option<TemplateView>> {
    sqlx::query_as!(
        TemplateView,
        r#"SELECT id, name, description, category, workflow_type, template_definition,
                  required_agent_roles, recommended_agent_count, is_system_template, created_by,
                  revision, workflow_count, usage_count, ended_runs, completed_runs,
                  success_rate AS "success_rate!", created_at, updated_at
           FROM workflow_templates WHERE tenant_id = $1 AND id = $2"#,
        tenant.as_str(),
        id,
    )
    .fetch_optional(db)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_api_s_sessions_plan_every_statement_for_its_values() {
        let url = std::env::var("CADRE_ADMIN_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let pool = pool_options()
            .max_connections(1)
            .connect(&url)
            .await
            .unwrap_or_else(|e| panic!("Postgres at {url}: {e} (run `make test`)"));
        let mode: String = sqlx::query_scalar("SHOW plan_cache_mode")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(mode, "force_custom_plan");
    }
}
