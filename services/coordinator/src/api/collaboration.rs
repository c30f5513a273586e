//! How agents collaborate, from the read models: the handoffs of an execution's steps from one
//! agent to the next (the seed's `TaskHandoff`) and each agent's latest status (`AgentStatus`).

use axum::extract::{Path, State};
use axum::http::Uri;
use axum::response::IntoResponse;

use cadre_proto::{AgentId, ExecutionId};

use super::list::ListQuery;
use super::openapi::{BadRequest, NotFound, PageParams, Unavailable};
use super::{ApiResult, AppState, Problem, parse_id, unavailable_db};
use crate::read;

/// `GET /v1/executions/{id}/handoffs`: in the order recorded; 404 for an unknown execution.
#[utoipa::path(
    get,
    path = "/v1/executions/{id}/handoffs",
    tag = "executions",
    params(("id" = uuid::Uuid, Path, description = "The execution's id"), PageParams),
    responses((status = 200, description = "Its handoffs", body = Vec<read::HandoffView>, headers(("Link" = String, description = "The next page (`<…>; rel=\"next\"`), when more items follow"))), BadRequest, NotFound, Unavailable)
)]
pub(super) async fn handoffs(
    State(app): State<AppState>,
    Path(raw): Path<String>,
    uri: Uri,
) -> ApiResult {
    let id: ExecutionId = parse_id(&raw, "execution id")?;
    let query = ListQuery::read(&uri, "handoffs", &[])?;
    let page = query.page()?;
    super::executions::execution_must_exist(&app, id).await?;
    let rows = read::handoffs(&app.db, &app.tenant, id.0, page)
        .await
        .map_err(unavailable_db)?;
    Ok(query.answer(rows))
}

/// `GET /v1/agents/{id}/status`: the agent's latest status; `idle` for a registered agent that
/// has not worked on a step yet, 404 for an unknown agent.
#[utoipa::path(
    get,
    path = "/v1/agents/{id}/status",
    tag = "agents",
    params(("id" = uuid::Uuid, Path, description = "The agent's id")),
    responses((status = 200, description = "Its latest status", body = read::AgentStatusView), BadRequest, NotFound, Unavailable)
)]
pub(super) async fn agent_status(
    State(app): State<AppState>,
    Path(raw): Path<String>,
) -> ApiResult {
    let id: AgentId = parse_id(&raw, "agent id")?;
    let status = read::agent_status(&app.db, &app.tenant, id.0)
        .await
        .map_err(unavailable_db)?;
    let status = match status {
        Some(status) => status,
        // The registration is read from the log: the agents read model may lag behind it.
        None if super::agents::load(&app, id).await?.is_some() => read::AgentStatusView::idle(id.0),
        None => return Err(Problem::not_found(format!("no agent has the id {id}"))),
    };
    Ok(axum::Json(status).into_response())
}
