//! Token usage and cost (`…/usage`): the `token_usage` read model summed for one execution,
//! workflow or agent, with breakdowns.

use axum::extract::{Path, State};
use axum::response::IntoResponse;
use serde::Serialize;

use cadre_proto::{AgentId, ExecutionId, WorkflowId};

use super::openapi::{BadRequest, NotFound, Unavailable};
use super::{ApiResult, AppState, Problem, parse_id, unavailable_db};
use crate::read::{self, UsageGroup, UsageScope};

/// Tokens and cost: the total and its breakdowns (each by what its scope has: an execution's
/// by step and agent, a workflow's by agent and model, an agent's by model), largest first.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct Usage {
    total: read::UsageSum,
    #[serde(skip_serializing_if = "Option::is_none")]
    by_step: Option<Vec<read::UsageSum>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    by_agent: Option<Vec<read::UsageSum>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    by_model: Option<Vec<read::UsageSum>>,
}

/// `GET /v1/executions/{id}/usage`: the total, by step and by agent.
#[utoipa::path(
    get,
    path = "/v1/executions/{id}/usage",
    tag = "executions",
    params(("id" = uuid::Uuid, Path, description = "The execution's id")),
    responses((status = 200, description = "Its usage, by step and agent", body = Usage), BadRequest, NotFound, Unavailable)
)]
pub(super) async fn execution(State(app): State<AppState>, Path(raw): Path<String>) -> ApiResult {
    let id: ExecutionId = parse_id(&raw, "execution id")?;
    super::executions::execution_must_exist(&app, id).await?;
    let (total, mut by) = sums(
        &app,
        UsageScope::Execution(id.0),
        &[UsageGroup::Step, UsageGroup::Agent],
    )
    .await?;
    let by_agent = by.pop();
    Ok(axum::Json(Usage {
        total,
        by_step: by.pop(),
        by_agent,
        by_model: None,
    })
    .into_response())
}

/// `GET /v1/workflows/{id}/usage`: the total over all its executions, by agent and by model.
#[utoipa::path(
    get,
    path = "/v1/workflows/{id}/usage",
    tag = "workflows",
    params(("id" = uuid::Uuid, Path, description = "The workflow's id")),
    responses((status = 200, description = "Its usage, by agent and model", body = Usage), BadRequest, NotFound, Unavailable)
)]
pub(super) async fn workflow(State(app): State<AppState>, Path(raw): Path<String>) -> ApiResult {
    let id: WorkflowId = parse_id(&raw, "workflow id")?;
    super::workflows::must_exist(&app, id).await?;
    let (total, mut by) = sums(
        &app,
        UsageScope::Workflow(id.0),
        &[UsageGroup::Agent, UsageGroup::Model],
    )
    .await?;
    let by_model = by.pop();
    Ok(axum::Json(Usage {
        total,
        by_step: None,
        by_agent: by.pop(),
        by_model,
    })
    .into_response())
}

/// `GET /v1/agents/{id}/usage`: the total over every step the agent did, by model.
#[utoipa::path(
    get,
    path = "/v1/agents/{id}/usage",
    tag = "agents",
    params(("id" = uuid::Uuid, Path, description = "The agent's id")),
    responses((status = 200, description = "Its usage, by model", body = Usage), BadRequest, NotFound, Unavailable)
)]
pub(super) async fn agent(State(app): State<AppState>, Path(raw): Path<String>) -> ApiResult {
    let id: AgentId = parse_id(&raw, "agent id")?;
    if super::agents::load(&app, id).await?.is_none() {
        return Err(Problem::not_found(format!("no agent has the id {id}")));
    }
    let (total, mut by) = sums(&app, UsageScope::Agent(id.0), &[UsageGroup::Model]).await?;
    Ok(axum::Json(Usage {
        total,
        by_step: None,
        by_agent: None,
        by_model: by.pop(),
    })
    .into_response())
}

async fn sums(
    app: &AppState,
    scope: UsageScope,
    groups: &[UsageGroup],
) -> Result<(read::UsageSum, Vec<Vec<read::UsageSum>>), Problem> {
    read::usage(&app.db, &app.tenant, scope, groups)
        .await
        .map_err(unavailable_db)
}
