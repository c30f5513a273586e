//! `/v1/agents`: register (a command on the agent aggregate), list and get.

use axum::extract::{Path, State};
use axum::http::Uri;
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};

use cadre_proto::model::{AgentProfile, ModelChoice, ModelParameters};
use cadre_proto::{AgentId, subjects};

use super::body::Body;
use super::list::ListQuery;
use super::openapi::{
    BadRequest, Conflict, Invalid, NotFound, PageParams, TooLarge, Unavailable,
    UnsupportedMediaType,
};
use super::{
    ApiResult, AppState, Problem, command_failed, created, found, parse_id, unavailable_db,
    unavailable_log, written,
};
use crate::command::{Aggregate, History, registered_agent};
use crate::domain::agent::{Agent, Register};
use crate::domain::validation::validate_agent;
use crate::read;
use crate::workers::no_worker_offers;

/// The body of `POST /v1/agents`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct RegisterAgent {
    #[schema(max_length = 200, pattern = r"\S")]
    name: String,
    #[schema(max_length = 200, pattern = r"\S")]
    role: String,
    #[serde(default)]
    #[schema(max_length = 8192)]
    backstory: String,
    #[serde(default)]
    /// At most 50, each not blank and at most 200 characters.
    #[schema(max_items = 50)]
    skills: Vec<String>,
    /// A provider configured on the agent workers.
    #[schema(max_length = 64, pattern = "^[a-z0-9_-]+$")]
    provider: String,
    #[schema(max_length = 200, pattern = r"\S")]
    model: String,
    #[serde(default)]
    model_parameters: ModelParameters,
    #[serde(default)]
    fallback: Option<ModelChoice>,
}

/// An agent as registered, with what the person registering it should know.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct RegisteredAgent {
    #[serde(flatten)]
    agent: AgentProfile,
    /// Its provider (or fallback) no running worker offers: its steps will wait.
    warnings: Vec<String>,
}

/// `POST /v1/agents`: register an agent.
#[utoipa::path(
    post,
    path = "/v1/agents",
    tag = "agents",
    request_body = RegisterAgent,
    responses(
        (status = 201, description = "Registered", body = RegisteredAgent,
         headers(("Location" = String, description = "The agent's URL"))),
        BadRequest, Conflict, TooLarge, UnsupportedMediaType, Invalid, Unavailable,
    )
)]
pub(super) async fn register(
    State(app): State<AppState>,
    Body(req): Body<RegisterAgent>,
) -> ApiResult {
    let agent = AgentProfile {
        id: AgentId::new(),
        name: req.name,
        role: req.role,
        backstory: req.backstory,
        skills: req.skills,
        provider: req.provider,
        model: req.model,
        model_parameters: req.model_parameters,
        fallback: req.fallback,
    };
    let errors = validate_agent(&agent);
    if !errors.is_empty() {
        return Err(Problem::invalid("the agent is not valid", errors));
    }
    let filter = subjects::agent(&app.tenant, agent.id, subjects::REGISTERED);
    let mut registered = Aggregate::<Agent>::empty(app.tenant.clone(), filter, History::Last);
    registered
        .execute(&app.bus, &Register(agent.clone()))
        .await
        .map_err(|e| command_failed(e, |refused| Problem::conflict(refused.to_string())))?;
    let warnings = provider_warnings(&app, &agent).await;
    let location = format!("/v1/agents/{}", agent.id);
    let response = created(location, RegisteredAgent { agent, warnings });
    Ok(written(&app, registered.version, response).await)
}

/// What a person registering an agent should know about its providers: the agent is
/// registered either way (workers may start later), but its steps wait until one offers its
/// provider, and its fallback is only asked by a worker that offers both.
async fn provider_warnings(app: &AppState, agent: &AgentProfile) -> Vec<String> {
    let offered = match app.workers.offered().await {
        Ok(offered) => offered,
        Err(error) => {
            tracing::warn!(%error, "could not read the worker registry");
            return vec![];
        }
    };
    std::iter::once(&agent.provider)
        .chain(agent.fallback.as_ref().map(|f| &f.provider))
        .filter(|provider| !offered.contains(*provider))
        .map(|provider| no_worker_offers(provider))
        .collect()
}

/// `GET /v1/workers`: the live agent workers, what providers they offer and how much they run
/// at once.
#[utoipa::path(
    get,
    path = "/v1/workers",
    tag = "agents",
    responses(
        (status = 200, description = "The live workers", body = Vec<cadre_proto::workers::WorkerRecord>),
        Unavailable,
    )
)]
pub(super) async fn workers(State(app): State<AppState>) -> ApiResult {
    let live = app.workers.live().await.map_err(|error| {
        tracing::error!(%error, "worker registry read failed");
        Problem::unavailable(format!("the worker registry could not be read: {error}"))
    })?;
    Ok(axum::Json(live).into_response())
}

/// `GET /v1/agents`: registered agents, oldest first (by registration time, then id).
#[utoipa::path(
    get,
    path = "/v1/agents",
    tag = "agents",
    params(PageParams),
    responses((status = 200, description = "Agents", body = Vec<read::AgentView>, headers(("Link" = String, description = "The next page (`<…>; rel=\"next\"`), when more items follow"))), BadRequest, Unavailable)
)]
pub(super) async fn list(State(app): State<AppState>, uri: Uri) -> ApiResult {
    let query = ListQuery::read(&uri, "agents", &[])?;
    let rows = read::agents(&app.db, &app.tenant, query.page()?)
        .await
        .map_err(unavailable_db)?;
    Ok(query.answer(rows))
}

/// `GET /v1/agents/{id}`: an agent as registered.
#[utoipa::path(
    get,
    path = "/v1/agents/{id}",
    tag = "agents",
    params(("id" = uuid::Uuid, Path, description = "The agent's id")),
    responses((status = 200, description = "The agent", body = AgentProfile), BadRequest, NotFound, Unavailable)
)]
pub(super) async fn get(State(app): State<AppState>, Path(raw): Path<String>) -> ApiResult {
    let id: AgentId = parse_id(&raw, "agent id")?;
    found(load(&app, id).await?, || {
        format!("no agent has the id {id}")
    })
}

/// An agent as registered, read from the log (the read model may lag behind it).
pub(super) async fn load(app: &AppState, id: AgentId) -> Result<Option<AgentProfile>, Problem> {
    registered_agent(&app.bus, &app.tenant, id)
        .await
        .map_err(unavailable_log)
}
