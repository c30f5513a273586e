//! Team metrics and agent performance: the seed's `CollaborationMetrics` of a run or a
//! workflow, seed 002's `AgentPerformanceMetrics` of an agent, and the execution records
//! (`execution_history`) they are counted from. Every score is defined in
//! [`crate::domain::performance`] and is null when nothing was measured for it.

use std::collections::{BTreeMap, HashMap};

use axum::extract::{Path, State};
use axum::http::Uri;
use axum::response::IntoResponse;
use serde::Serialize;
use uuid::Uuid;

use cadre_proto::{AgentId, ExecutionId, WorkflowId};

use super::list::ListQuery;
use super::openapi::{BadRequest, NotFound, PageParams, Unavailable};
use super::{ApiResult, AppState, Problem, parse_id, unavailable_db};
use crate::domain::performance::{AgentFacts, TeamFacts};
use crate::read::{self, metrics::RecordScope};

/// Scores and percentages to two decimals: more is noise. (Times are minutes and stay as
/// measured: a fast model's steps take hundredths of one.)
fn rounded(value: Option<f64>) -> Option<f64> {
    value.map(|v| (v * 100.0).round() / 100.0)
}

/// Seed 002's `AgentPerformanceMetrics`, without `userSatisfaction` (nothing records it), with
/// the facts they come from.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct AgentPerformance {
    agent_id: Uuid,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<String>,
    /// Percent of ended attempts that succeeded.
    task_success: Option<f64>,
    /// Minutes from a task's first handout to its completion, on average.
    avg_completion_time: Option<f64>,
    /// Percent of tasks whose failure escalated them.
    escalation_rate: Option<f64>,
    /// 0-10: 10 × the share of reviews of its work that approved it.
    quality_score: Option<f64>,
    /// 0-10: 10 × the share of questions put to it that it answered and of tasks handed off
    /// to it that it completed.
    collaboration_score: Option<f64>,
    /// Percent of their estimates its completed tasks with an estimate took together.
    time_against_estimate: Option<f64>,
    facts: AgentFactsView,
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct AgentFactsView {
    attempts: u64,
    succeeded: u64,
    failed: u64,
    timed_out: u64,
    tasks: u64,
    tasks_completed: u64,
    tasks_with_estimate: u64,
    tasks_escalated: u64,
    #[schema(value_type = BTreeMap<String, u64>)]
    escalations_by_task_type: BTreeMap<&'static str, u64>,
    reviews: u64,
    approvals: u64,
    questions_received: u64,
    questions_answered: u64,
    handoffs_received: u64,
    handoffs_completed: u64,
}

impl AgentPerformance {
    fn of(agent_id: Uuid, facts: &AgentFacts) -> Self {
        Self {
            agent_id,
            name: None,
            role: None,
            task_success: rounded(facts.task_success()),
            avg_completion_time: facts.average_completion_minutes(),
            escalation_rate: rounded(facts.escalation_rate()),
            quality_score: rounded(facts.quality_score()),
            collaboration_score: rounded(facts.collaboration_score()),
            time_against_estimate: rounded(facts.time_against_estimate()),
            facts: AgentFactsView {
                attempts: facts.attempts,
                succeeded: facts.succeeded(),
                failed: facts.failed,
                timed_out: facts.timed_out,
                tasks: facts.tasks,
                tasks_completed: facts.tasks_completed,
                tasks_with_estimate: facts.estimated_tasks,
                tasks_escalated: facts.tasks_escalated(),
                escalations_by_task_type: facts
                    .escalations_by_type
                    .iter()
                    .map(|(step_type, n)| (step_type.as_str(), *n))
                    .collect(),
                reviews: facts.reviews,
                approvals: facts.approvals,
                questions_received: facts.questions_received,
                questions_answered: facts.questions_answered,
                handoffs_received: facts.handoffs_received,
                handoffs_completed: facts.handoffs_completed,
            },
        }
    }
}

/// `GET /v1/agents/{id}/performance`; 404 for an unknown agent.
#[utoipa::path(
    get,
    path = "/v1/agents/{id}/performance",
    tag = "agents",
    params(("id" = uuid::Uuid, Path, description = "The agent's id")),
    responses((status = 200, description = "Its performance", body = AgentPerformance), BadRequest, NotFound, Unavailable)
)]
pub(super) async fn agent(State(app): State<AppState>, Path(raw): Path<String>) -> ApiResult {
    let id: AgentId = parse_id(&raw, "agent id")?;
    let Some(profile) = super::agents::load(&app, id).await? else {
        return Err(Problem::not_found(format!("no agent has the id {id}")));
    };
    let facts = read::metrics::agent_facts(&app.db, &app.tenant, &[id.0])
        .await
        .map_err(unavailable_db)?;
    let facts = facts.first().map(|(_, f)| f.clone()).unwrap_or_default();
    Ok(axum::Json(AgentPerformance {
        name: Some(profile.name),
        role: Some(profile.role),
        ..AgentPerformance::of(id.0, &facts)
    })
    .into_response())
}

/// `GET /v1/agents/performance?limit&cursor`: every registered agent's, in the order
/// `GET /v1/agents` lists them.
#[utoipa::path(
    get,
    path = "/v1/agents/performance",
    tag = "agents",
    params(PageParams),
    responses((status = 200, description = "Every agent's performance", body = Vec<AgentPerformance>, headers(("Link" = String, description = "The next page (`<…>; rel=\"next\"`), when more items follow"))), BadRequest, Unavailable)
)]
pub(super) async fn agents(State(app): State<AppState>, uri: Uri) -> ApiResult {
    let query = ListQuery::read(&uri, "agent-performance", &[])?;
    let agents = read::agents(&app.db, &app.tenant, query.page()?)
        .await
        .map_err(unavailable_db)?;
    let ids: Vec<Uuid> = agents.iter().map(|a| a.id).collect();
    let facts: HashMap<Uuid, AgentFacts> = read::metrics::agent_facts(&app.db, &app.tenant, &ids)
        .await
        .map_err(unavailable_db)?
        .into_iter()
        .collect();
    let performance = agents.map(|agent| AgentPerformance {
        name: Some(agent.name),
        role: Some(agent.role),
        ..AgentPerformance::of(agent.id, &facts.get(&agent.id).cloned().unwrap_or_default())
    });
    Ok(query.answer(performance))
}

/// The seed's `CollaborationMetrics`, with the facts they come from.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct CollaborationMetrics {
    #[serde(skip_serializing_if = "Option::is_none")]
    execution_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    workflow_id: Option<Uuid>,
    /// Runs counted (a workflow's).
    #[serde(skip_serializing_if = "Option::is_none")]
    executions: Option<usize>,
    /// Entries of the interaction log.
    total_interactions: u64,
    /// Minutes from a question to a teammate to its answer, on average.
    average_response_time: Option<f64>,
    knowledge_items_created: u64,
    /// 0-10: 10 × the share of questions answered and of handoffs whose task was completed.
    collaboration_score: Option<f64>,
    /// 0-10: 10 when the completed tasks took at most their estimates together, else
    /// 10 × estimate / time taken.
    efficiency_rating: Option<f64>,
    /// 0-10: 10 × the share of reviews that approved the work.
    quality_score: Option<f64>,
    facts: TeamFactsView,
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct TeamFactsView {
    questions_asked: u64,
    questions_answered: u64,
    handoffs: u64,
    handoffs_completed: u64,
    reviews: u64,
    approvals: u64,
    attempts: u64,
    failed_attempts: u64,
    tasks_completed: u64,
    tasks_with_estimate: u64,
    /// Percent of their estimates the tasks with one took together.
    time_against_estimate: Option<f64>,
}

impl CollaborationMetrics {
    fn of(facts: &TeamFacts) -> Self {
        Self {
            execution_id: None,
            workflow_id: None,
            executions: None,
            total_interactions: facts.interactions,
            average_response_time: facts.average_response_minutes(),
            knowledge_items_created: facts.knowledge_items,
            collaboration_score: rounded(facts.collaboration_score()),
            efficiency_rating: rounded(facts.efficiency_rating()),
            quality_score: rounded(facts.quality_score()),
            facts: TeamFactsView {
                questions_asked: facts.questions,
                questions_answered: facts.answers,
                handoffs: facts.handoffs,
                handoffs_completed: facts.handoffs_completed,
                reviews: facts.reviews,
                approvals: facts.approvals,
                attempts: facts.attempts,
                failed_attempts: facts.failed_attempts,
                tasks_completed: facts.tasks_completed,
                tasks_with_estimate: facts.estimated_tasks,
                time_against_estimate: rounded(facts.time_against_estimate()),
            },
        }
    }
}

/// `GET /v1/executions/{id}/metrics`; 404 for an unknown execution.
#[utoipa::path(
    get,
    path = "/v1/executions/{id}/metrics",
    tag = "executions",
    params(("id" = uuid::Uuid, Path, description = "The execution's id")),
    responses((status = 200, description = "Its collaboration metrics", body = CollaborationMetrics), BadRequest, NotFound, Unavailable)
)]
pub(super) async fn execution(State(app): State<AppState>, Path(raw): Path<String>) -> ApiResult {
    let id: ExecutionId = parse_id(&raw, "execution id")?;
    super::executions::execution_must_exist(&app, id).await?;
    let facts = read::metrics::team_facts(&app.db, &app.tenant, &[id.0])
        .await
        .map_err(unavailable_db)?;
    Ok(axum::Json(CollaborationMetrics {
        execution_id: Some(id.0),
        ..CollaborationMetrics::of(&facts)
    })
    .into_response())
}

/// `GET /v1/workflows/{id}/metrics`: over all its runs; 404 for an unknown workflow.
#[utoipa::path(
    get,
    path = "/v1/workflows/{id}/metrics",
    tag = "workflows",
    params(("id" = uuid::Uuid, Path, description = "The workflow's id")),
    responses((status = 200, description = "The collaboration metrics of its runs", body = CollaborationMetrics), BadRequest, NotFound, Unavailable)
)]
pub(super) async fn workflow(State(app): State<AppState>, Path(raw): Path<String>) -> ApiResult {
    let id: WorkflowId = parse_id(&raw, "workflow id")?;
    super::workflows::must_exist(&app, id).await?;
    let runs = read::metrics::workflow_runs(&app.db, &app.tenant, id.0)
        .await
        .map_err(unavailable_db)?;
    let facts = read::metrics::team_facts(&app.db, &app.tenant, &runs)
        .await
        .map_err(unavailable_db)?;
    Ok(axum::Json(CollaborationMetrics {
        workflow_id: Some(id.0),
        executions: Some(runs.len()),
        ..CollaborationMetrics::of(&facts)
    })
    .into_response())
}

/// `GET /v1/executions/{id}/history`: its records in the order they happened.
#[utoipa::path(
    get,
    path = "/v1/executions/{id}/history",
    tag = "executions",
    params(("id" = uuid::Uuid, Path, description = "The execution's id"), PageParams),
    responses((status = 200, description = "Its records", body = Vec<read::metrics::RecordView>, headers(("Link" = String, description = "The next page (`<…>; rel=\"next\"`), when more items follow"))), BadRequest, NotFound, Unavailable)
)]
pub(super) async fn execution_history(
    State(app): State<AppState>,
    Path(raw): Path<String>,
    uri: Uri,
) -> ApiResult {
    let id: ExecutionId = parse_id(&raw, "execution id")?;
    let query = ListQuery::read(&uri, "execution-records", &[])?;
    let page = query.page()?;
    super::executions::execution_must_exist(&app, id).await?;
    let rows = read::metrics::records(&app.db, &app.tenant, RecordScope::Execution(id.0), page)
        .await
        .map_err(unavailable_db)?;
    Ok(query.answer(rows))
}

/// `GET /v1/workflows/{id}/history`: the records of all its runs, in the order they happened.
#[utoipa::path(
    get,
    path = "/v1/workflows/{id}/history",
    tag = "workflows",
    params(("id" = uuid::Uuid, Path, description = "The workflow's id"), PageParams),
    responses((status = 200, description = "Its runs' records", body = Vec<read::metrics::RecordView>, headers(("Link" = String, description = "The next page (`<…>; rel=\"next\"`), when more items follow"))), BadRequest, NotFound, Unavailable)
)]
pub(super) async fn workflow_history(
    State(app): State<AppState>,
    Path(raw): Path<String>,
    uri: Uri,
) -> ApiResult {
    let id: WorkflowId = parse_id(&raw, "workflow id")?;
    let query = ListQuery::read(&uri, "workflow-records", &[])?;
    let page = query.page()?;
    super::workflows::must_exist(&app, id).await?;
    let rows = read::metrics::records(&app.db, &app.tenant, RecordScope::Workflow(id.0), page)
        .await
        .map_err(unavailable_db)?;
    Ok(query.answer(rows))
}
