//! Token usage and cost (`…/usage`): the `token_usage` read model summed for one execution,
//! workflow or agent, with breakdowns.

use axum::extract::{Path, State};
use axum::response::IntoResponse;
use serde_json::json;

use cadre_proto::{AgentId, ExecutionId, WorkflowId};

use super::{ApiResult, AppState, Problem, parse_id, unavailable_db};
use crate::read::{self, UsageGroup, UsageScope};

/// `GET /v1/executions/{id}/usage`: the total, by step and by agent.
pub(super) async fn execution(State(app): State<AppState>, Path(raw): Path<String>) -> ApiResult {
    let id: ExecutionId = parse_id(&raw, "execution id")?;
    super::executions::execution_must_exist(&app, id).await?;
    let (total, by) = sums(
        &app,
        UsageScope::Execution(id.0),
        &[UsageGroup::Step, UsageGroup::Agent],
    )
    .await?;
    Ok(axum::Json(json!({ "total": total, "byStep": by[0], "byAgent": by[1] })).into_response())
}

/// `GET /v1/workflows/{id}/usage`: the total over all its executions, by agent and by model.
pub(super) async fn workflow(State(app): State<AppState>, Path(raw): Path<String>) -> ApiResult {
    let id: WorkflowId = parse_id(&raw, "workflow id")?;
    super::workflows::must_exist(&app, id).await?;
    let (total, by) = sums(
        &app,
        UsageScope::Workflow(id.0),
        &[UsageGroup::Agent, UsageGroup::Model],
    )
    .await?;
    Ok(axum::Json(json!({ "total": total, "byAgent": by[0], "byModel": by[1] })).into_response())
}

/// `GET /v1/agents/{id}/usage`: the total over every step the agent did, by model.
pub(super) async fn agent(State(app): State<AppState>, Path(raw): Path<String>) -> ApiResult {
    let id: AgentId = parse_id(&raw, "agent id")?;
    if super::agents::load(&app, id).await?.is_none() {
        return Err(Problem::not_found(format!("no agent has the id {id}")));
    }
    let (total, by) = sums(&app, UsageScope::Agent(id.0), &[UsageGroup::Model]).await?;
    Ok(axum::Json(json!({ "total": total, "byModel": by[0] })).into_response())
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
