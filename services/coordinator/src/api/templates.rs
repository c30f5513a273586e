//! `/v1/templates`: register a user's template (a command on the template aggregate), list and
//! get templates from the read model (system templates first), and create a workflow from one by
//! mapping its roles to agents, which is then recorded exactly as `POST /v1/workflows` records
//! a workflow.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::Uri;
use chrono::{DateTime, SubsecRound, Utc};
use futures::future::try_join_all;
use serde::Deserialize;
use serde_json::{Value, json};

use cadre_proto::model::WorkflowTemplate;
use cadre_proto::{AgentId, TemplateId, WorkflowId, subjects};

use super::body::Body;
use super::list::ListQuery;
use super::openapi::{
    BadRequest, Conflict, Invalid, NotFound, PageParams, TooLarge, Unavailable,
    UnsupportedMediaType,
};
use super::{
    ApiResult, AppState, Problem, agents, command_failed, created, found, parse_id, unavailable_db,
    unavailable_log, workflows, written,
};
use crate::command::{Aggregate, History};
use crate::domain::template::{
    Command, Instantiation, Template, TemplateDraft, agent_pointer, instantiate,
};
use crate::domain::validation::FieldError;
use crate::read;

/// `POST /v1/templates`: the body is a [`TemplateDraft`] → 201 with the template as
/// `GET /v1/templates/{id}` shows it.
#[utoipa::path(
    post,
    path = "/v1/templates",
    tag = "templates",
    request_body = TemplateDraft,
    responses(
        (status = 201, description = "Registered", body = read::TemplateView,
         headers(("Location" = String, description = "The template's URL"))),
        BadRequest, Conflict, TooLarge, UnsupportedMediaType, Invalid, Unavailable,
    )
)]
pub(super) async fn register(
    State(app): State<AppState>,
    Body(draft): Body<TemplateDraft>,
) -> ApiResult {
    let errors = draft.validate();
    if !errors.is_empty() {
        return Err(Problem::invalid("the template is not valid", errors));
    }
    let template = draft.into_template(TemplateId::new(), false, 1);
    let filter = subjects::template(&app.tenant, template.id, subjects::REGISTERED);
    let mut registered = Aggregate::<Template>::empty(app.tenant.clone(), filter, History::Last);
    let stored = registered
        .execute(&app.bus, &Command::Register(Box::new(template.clone())))
        .await
        .map_err(|e| command_failed(e, |refused| Problem::conflict(refused.to_string())))?;
    let at = stored.first().map_or_else(Utc::now, |(_, e)| e.meta.time);
    let response = created(
        format!("/v1/templates/{}", template.id),
        as_listed(&template, at),
    );
    Ok(written(&app, registered.version, response).await)
}

/// A template just registered, in the shape of [`read::TemplateView`]: nothing created from it
/// yet.
fn as_listed(template: &WorkflowTemplate, at: DateTime<Utc>) -> Value {
    let mut body = serde_json::to_value(template).unwrap_or_default();
    body["createdBy"] = json!(template.created_by);
    for count in ["workflowCount", "usageCount", "endedRuns", "completedRuns"] {
        body[count] = json!(0);
    }
    body["successRate"] = json!(0.0);
    // Postgres keeps microseconds: the GET that follows shows this time.
    let at = at.trunc_subsecs(6);
    body["createdAt"] = json!(at);
    body["updatedAt"] = json!(at);
    body
}

/// `GET /v1/templates?limit&cursor`: the system templates, then the users', each in the order
/// first registered.
#[utoipa::path(
    get,
    path = "/v1/templates",
    tag = "templates",
    params(PageParams),
    responses((status = 200, description = "Templates", body = Vec<read::TemplateView>, headers(("Link" = String, description = "The next page (`<…>; rel=\"next\"`), when more items follow"))), BadRequest, Unavailable)
)]
pub(super) async fn list(State(app): State<AppState>, uri: Uri) -> ApiResult {
    let query = ListQuery::read(&uri, "templates", &[])?;
    let rows = read::templates(&app.db, &app.tenant, query.page()?)
        .await
        .map_err(unavailable_db)?;
    Ok(query.answer(rows))
}

/// `GET /v1/templates/{id}`.
#[utoipa::path(
    get,
    path = "/v1/templates/{id}",
    tag = "templates",
    params(("id" = uuid::Uuid, Path, description = "The template's id")),
    responses((status = 200, description = "The template", body = read::TemplateView), BadRequest, NotFound, Unavailable)
)]
pub(super) async fn get(State(app): State<AppState>, Path(raw): Path<String>) -> ApiResult {
    let id: TemplateId = parse_id(&raw, "template id")?;
    let row = read::template(&app.db, &app.tenant, id.0)
        .await
        .map_err(unavailable_db)?;
    found(row, || format!("no template has the id {id}"))
}

/// The body of `POST /v1/templates/{id}/workflows`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct CreateFromTemplate {
    /// The workflow's name and description; the template's when absent.
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    description: Option<String>,
    /// Each role the template needs, and the agent that takes it.
    agents: BTreeMap<String, AgentId>,
    #[serde(default)]
    coordinator_agent_id: Option<AgentId>,
}

/// `POST /v1/templates/{id}/workflows` → 201 as `POST /v1/workflows`, with `templateId`.
#[utoipa::path(
    post,
    path = "/v1/templates/{id}/workflows",
    tag = "templates",
    params(("id" = uuid::Uuid, Path, description = "The template's id")),
    request_body = CreateFromTemplate,
    responses(
        (status = 201, description = "Created", body = workflows::CreatedWorkflow,
         headers(("Location" = String, description = "The workflow's URL"))),
        BadRequest, NotFound, Conflict, TooLarge, UnsupportedMediaType, Invalid, Unavailable,
    )
)]
pub(super) async fn create_workflow(
    State(app): State<AppState>,
    Path(raw): Path<String>,
    Body(req): Body<CreateFromTemplate>,
) -> ApiResult {
    let id: TemplateId = parse_id(&raw, "template id")?;
    let template = load(&app, id).await?;
    // Agents are read from the log, as POST /v1/workflows reads them: one registered a moment
    // ago may not be in the read models yet.
    let named: Vec<(String, AgentId)> = req
        .agents
        .iter()
        .map(|(role, agent)| (agent_pointer(role), *agent))
        .chain(
            req.coordinator_agent_id
                .map(|agent| ("/coordinatorAgentId".to_owned(), agent)),
        )
        .collect();
    let found = try_join_all(named.iter().map(|(_, agent)| agents::load(&app, *agent))).await?;
    let unknown: Vec<FieldError> = named
        .iter()
        .zip(&found)
        .filter(|(_, agent)| agent.is_none())
        .map(|((pointer, agent), _)| FieldError {
            pointer: pointer.clone(),
            message: format!("no agent has the id {agent}; register it with POST /v1/agents first"),
        })
        .collect();
    if !unknown.is_empty() {
        return Err(Problem::invalid(
            "the request names agents that are not registered",
            unknown,
        ));
    }
    // Every agent was found: the profiles line up with the roles (the coordinator comes last).
    let team = req
        .agents
        .keys()
        .cloned()
        .zip(found.into_iter().flatten())
        .collect();
    let definition = instantiate(
        &template,
        Instantiation {
            workflow_id: WorkflowId::new(),
            name: req.name,
            description: req.description,
            agents: team,
            coordinator_agent_id: req.coordinator_agent_id,
        },
    )
    .map_err(|errors| {
        Problem::invalid(
            format!("the agents do not fit the template '{}'", template.name),
            errors,
        )
    })?;
    workflows::record(&app, definition, Some(id))
        .await
        .map_err(in_this_request)
}

/// A problem [`workflows::record`] found, pointing into this request rather than
/// `POST /v1/workflows`'s: its participants are the agents this request maps.
fn in_this_request(mut problem: Problem) -> Problem {
    for error in &mut problem.errors {
        if error.pointer.starts_with("/participatingAgents") {
            error.pointer = "/agents".to_owned();
        }
    }
    problem
}

/// A template as registered, read from the log (the read model may lag behind it); 404 for
/// an unknown id.
async fn load(app: &AppState, id: TemplateId) -> Result<WorkflowTemplate, Problem> {
    let filter = subjects::template(&app.tenant, id, subjects::REGISTERED);
    let loaded = Aggregate::<Template>::load(&app.bus, app.tenant.clone(), filter, History::Last)
        .await
        .map_err(unavailable_log)?;
    loaded
        .state
        .template()
        .cloned()
        .ok_or_else(|| Problem::not_found(format!("no template has the id {id}")))
}
