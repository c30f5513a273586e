//! `/v1/workflows`: create, pause and resume (commands on the workflow aggregate), list, get,
//! and the workflow's shared knowledge.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::Uri;
use axum::response::IntoResponse;
use futures::future::try_join_all;
use serde::{Deserialize, Serialize};

use cadre_proto::model::{WorkflowConfiguration, WorkflowDefinition, WorkflowType};
use cadre_proto::{AgentId, TemplateId, WorkflowId, subjects};

use super::body::Body;
use super::body::OptionalBody;
use super::list::ListQuery;
use super::openapi::{
    BadRequest, Conflict, Invalid, NotFound, PageParams, TooLarge, Unavailable,
    UnsupportedMediaType,
};
use super::{
    ApiResult, AppState, Problem, agents, command_failed, control_request, created, found,
    parse_id, unavailable_db, unavailable_log, written,
};
use crate::command::{Aggregate, History};
use crate::domain::Effect;
use crate::domain::validation::{
    FieldError, referenced_agents, start_size_error, validate_workflow,
};
use crate::domain::workflow::{self, Command, Workflow};
use crate::read;
use crate::triggers;

/// The body of `POST /v1/workflows` (the seed's `CreateWorkflowRequest`).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct CreateWorkflow {
    name: String,
    description: String,
    #[serde(default)]
    workflow_type: WorkflowType,
    participating_agents: Vec<AgentId>,
    #[serde(default)]
    coordinator_agent_id: Option<AgentId>,
    configuration: WorkflowConfiguration,
}

/// A workflow as created: its definition, `draft` until its first run.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct CreatedWorkflow {
    #[serde(flatten)]
    definition: WorkflowDefinition,
    /// `draft`.
    status: &'static str,
    total_steps: usize,
    /// The template it was created from, if any.
    template_id: Option<TemplateId>,
}

/// A workflow's status after a pause or a resume.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct WorkflowStatus {
    id: WorkflowId,
    /// `draft`, `active`, `paused`, ...
    status: &'static str,
}

/// `POST /v1/workflows`: create a workflow.
#[utoipa::path(
    post,
    path = "/v1/workflows",
    tag = "workflows",
    request_body = CreateWorkflow,
    responses(
        (status = 201, description = "Created", body = CreatedWorkflow,
         headers(("Location" = String, description = "The workflow's URL"))),
        BadRequest, Conflict, TooLarge, UnsupportedMediaType, Invalid, Unavailable,
    )
)]
pub(super) async fn create(
    State(app): State<AppState>,
    Body(req): Body<CreateWorkflow>,
) -> ApiResult {
    let definition = WorkflowDefinition {
        id: WorkflowId::new(),
        name: req.name,
        description: req.description,
        workflow_type: req.workflow_type,
        participating_agents: req.participating_agents,
        coordinator_agent_id: req.coordinator_agent_id,
        configuration: req.configuration,
    };
    record(&app, definition, None).await
}

/// Validates `definition` and records its creation (from `template`, if any), as
/// `POST /v1/workflows` does: the answer is that endpoint's, once the read models show the
/// workflow. Error pointers name the fields of that endpoint's body.
pub(super) async fn record(
    app: &AppState,
    definition: WorkflowDefinition,
    template: Option<TemplateId>,
) -> ApiResult {
    let errors = validate_workflow(&definition);
    if !errors.is_empty() {
        return Err(Problem::invalid("the workflow is not valid", errors));
    }
    let referenced = referenced_agents(&definition);
    let known = try_join_all(referenced.iter().map(|id| agents::load(app, *id))).await?;
    let unknown: Vec<FieldError> = referenced
        .iter()
        .zip(&known)
        .filter(|(_, agent)| agent.is_none())
        .map(|(id, _)| FieldError {
            pointer: match definition.participating_agents.iter().position(|a| a == id) {
                Some(i) => format!("/participatingAgents/{i}"),
                None => "/coordinatorAgentId".to_owned(),
            },
            message: format!("no agent has the id {id}; register it with POST /v1/agents first"),
        })
        .collect();
    if !unknown.is_empty() {
        return Err(Problem::invalid(
            "the workflow names agents that are not registered",
            unknown,
        ));
    }
    // Workflows it names: those it starts after, and those its steps run as children.
    let named: Vec<(String, WorkflowId)> = definition
        .configuration
        .triggers
        .after_workflows
        .iter()
        .enumerate()
        .map(|(i, id)| (format!("/configuration/triggers/afterWorkflows/{i}"), *id))
        .chain(
            definition
                .configuration
                .steps
                .iter()
                .enumerate()
                .filter_map(|(i, step)| {
                    step.child_workflow_id
                        .map(|id| (format!("/configuration/steps/{i}/childWorkflowId"), id))
                }),
        )
        .collect();
    let stored = try_join_all(named.iter().map(|(_, id)| {
        let subject = subjects::workflow(&app.tenant, *id, subjects::CREATED);
        let bus = &app.bus;
        async move { bus.last_event(&subject).await }
    }))
    .await
    .map_err(unavailable_log)?;
    let unknown: Vec<FieldError> = named
        .into_iter()
        .zip(&stored)
        .filter(|(_, stored)| stored.is_none())
        .map(|((pointer, id), _)| FieldError {
            pointer,
            message: format!("no workflow has the id {id}"),
        })
        .collect();
    if !unknown.is_empty() {
        return Err(Problem::invalid(
            "the workflow names workflows that do not exist",
            unknown,
        ));
    }
    // The participants in order (the coordinator is one of them): what a start snapshots.
    let agents: Vec<_> = known.into_iter().flatten().collect();
    let roleless: Vec<FieldError> = definition
        .configuration
        .steps
        .iter()
        .enumerate()
        .filter_map(|(i, step)| {
            let role = step.reviewer_role.as_deref()?.trim();
            (!agents.iter().any(|a| a.role.trim().eq_ignore_ascii_case(role))).then(|| FieldError {
                pointer: format!("/configuration/steps/{i}/reviewerRole"),
                message: format!(
                    "no participating agent has the role '{role}'; add one, or remove reviewerRole to let any other participant review"
                ),
            })
        })
        .collect();
    if !roleless.is_empty() {
        return Err(Problem::invalid(
            "the workflow asks for reviewers no participant can be",
            roleless,
        ));
    }
    if let Some(too_large) = start_size_error(&definition, &agents, &app.tenant) {
        return Err(Problem::invalid(
            format!("the workflow could never start: {}", too_large.message),
            vec![too_large],
        ));
    }
    let filter = subjects::workflow_lifecycle(&app.tenant, definition.id);
    let mut created_workflow =
        Aggregate::<Workflow>::empty(app.tenant.clone(), filter, History::All);
    let create = Command::Create {
        definition: Box::new(definition.clone()),
        template_id: template,
    };
    let stored = created_workflow
        .execute(&app.bus, &create)
        .await
        .map_err(|e| command_failed(e, |refused| Problem::conflict(refused.to_string())))?;
    // Its links are written before the answer too, not only once a coordinator reads the
    // creation back: a run of an upstream workflow the client starts next is decided on in
    // another partition, in no order with this creation, and must find them.
    for (_, envelope) in &stored {
        for effect in workflow::effects(&created_workflow.state, &envelope.event) {
            if let Effect::Link {
                upstream,
                downstream,
            } = effect
            {
                triggers::link(&app.links, &app.tenant, upstream, downstream)
                    .await
                    .map_err(|e| {
                        Problem::unavailable(format!("recording the workflow's links: {e}"))
                    })?;
            }
        }
    }
    let location = format!("/v1/workflows/{}", definition.id);
    let body = CreatedWorkflow {
        status: "draft",
        total_steps: definition.configuration.steps.len(),
        template_id: template,
        definition,
    };
    let response = created(location, body);
    Ok(written(app, created_workflow.version, response).await)
}

/// `GET /v1/workflows?status`: the newest first (by creation time, then id).
#[utoipa::path(
    get,
    path = "/v1/workflows",
    tag = "workflows",
    params(
        ("status" = Option<String>, Query,
         description = "Only those in one of these statuses (comma-separated): `draft`, \
                        `active`, `paused`, `completed`, `failed`, `cancelled`",
         example = "active,paused",
         pattern = "^(draft|active|paused|completed|failed|cancelled)(,(draft|active|paused|completed|failed|cancelled))*$"),
        PageParams,
    ),
    responses((status = 200, description = "Workflows", body = Vec<read::WorkflowView>, headers(("Link" = String, description = "The next page (`<…>; rel=\"next\"`), when more items follow"))), BadRequest, Unavailable)
)]
pub(super) async fn list(State(app): State<AppState>, uri: Uri) -> ApiResult {
    let query = ListQuery::read(&uri, "workflows", &["status"])?;
    let page = query.page()?;
    let statuses = query.any_of("status", &read::WORKFLOW_STATUSES)?;
    let rows = read::workflows(&app.db, &app.tenant, &statuses, page)
        .await
        .map_err(unavailable_db)?;
    Ok(query.answer(rows))
}

/// `GET /v1/workflows/{id}`.
#[utoipa::path(
    get,
    path = "/v1/workflows/{id}",
    tag = "workflows",
    params(("id" = uuid::Uuid, Path, description = "The workflow's id")),
    responses((status = 200, description = "The workflow", body = read::WorkflowView), BadRequest, NotFound, Unavailable)
)]
pub(super) async fn get(State(app): State<AppState>, Path(raw): Path<String>) -> ApiResult {
    let id: WorkflowId = parse_id(&raw, "workflow id")?;
    let row = read::workflow(&app.db, &app.tenant, id.0)
        .await
        .map_err(unavailable_db)?;
    found(row, || format!("no workflow has the id {id}"))
}

/// The workflow aggregate as stored in the log.
pub(super) async fn load(app: &AppState, id: WorkflowId) -> Result<Aggregate<Workflow>, Problem> {
    let filter = subjects::workflow_lifecycle(&app.tenant, id);
    let loaded = Aggregate::<Workflow>::load(&app.bus, app.tenant.clone(), filter, History::All)
        .await
        .map_err(unavailable_log)?;
    if loaded.state.definition().is_none() {
        return Err(Problem::not_found(format!("no workflow has the id {id}")));
    }
    Ok(loaded)
}

async fn control(
    app: AppState,
    raw: String,
    bytes: Bytes,
    command: fn(cadre_proto::events::Request) -> Command,
) -> ApiResult {
    let id: WorkflowId = parse_id(&raw, "workflow id")?;
    let command = command(control_request(&bytes)?);
    let mut aggregate = load(&app, id).await?;
    aggregate.execute(&app.bus, &command).await.map_err(|e| {
        command_failed(e, |refused| match refused {
            workflow::Error::InvalidTransition { status, .. } => {
                Problem::invalid_transition(refused.to_string(), status)
            }
            workflow::Error::NotFound => Problem::not_found(format!("no workflow has the id {id}")),
            workflow::Error::AlreadyExists(_) => Problem::conflict(refused.to_string()),
        })
    })?;
    let response = axum::Json(WorkflowStatus {
        id,
        status: aggregate.state.status(),
    });
    Ok(written(&app, aggregate.version, response.into_response()).await)
}

/// `POST /v1/workflows/{id}/pause`: stop taking new runs.
#[utoipa::path(
    post,
    path = "/v1/workflows/{id}/pause",
    tag = "workflows",
    params(("id" = uuid::Uuid, Path, description = "The workflow's id")),
    request_body(content = Option<super::ControlRequest>, description = "Optional: who asks, and why"),
    responses(
        (status = 200, description = "Its status now", body = WorkflowStatus),
        BadRequest, NotFound, Conflict, TooLarge, UnsupportedMediaType, Invalid, Unavailable,
    )
)]
pub(super) async fn pause(
    State(app): State<AppState>,
    Path(raw): Path<String>,
    OptionalBody(bytes): OptionalBody,
) -> ApiResult {
    control(app, raw, bytes, Command::Pause).await
}

/// `POST /v1/workflows/{id}/resume`: take new runs again.
#[utoipa::path(
    post,
    path = "/v1/workflows/{id}/resume",
    tag = "workflows",
    params(("id" = uuid::Uuid, Path, description = "The workflow's id")),
    request_body(content = Option<super::ControlRequest>, description = "Optional: who asks, and why"),
    responses(
        (status = 200, description = "Its status now", body = WorkflowStatus),
        BadRequest, NotFound, Conflict, TooLarge, UnsupportedMediaType, Invalid, Unavailable,
    )
)]
pub(super) async fn resume(
    State(app): State<AppState>,
    Path(raw): Path<String>,
    OptionalBody(bytes): OptionalBody,
) -> ApiResult {
    control(app, raw, bytes, Command::Resume).await
}

/// A listing under an unknown parent is a 404, not an empty list.
pub(super) async fn must_exist(app: &AppState, id: WorkflowId) -> Result<(), Problem> {
    let row = read::workflow(&app.db, &app.tenant, id.0)
        .await
        .map_err(unavailable_db)?;
    row.map(drop)
        .ok_or_else(|| Problem::not_found(format!("no workflow has the id {id}")))
}

/// `GET /v1/workflows/{id}/knowledge`: its shared knowledge, in the order shared.
#[utoipa::path(
    get,
    path = "/v1/workflows/{id}/knowledge",
    tag = "workflows",
    params(("id" = uuid::Uuid, Path, description = "The workflow's id"), PageParams),
    responses((status = 200, description = "Its knowledge", body = Vec<read::KnowledgeView>, headers(("Link" = String, description = "The next page (`<…>; rel=\"next\"`), when more items follow"))), BadRequest, NotFound, Unavailable)
)]
pub(super) async fn knowledge(
    State(app): State<AppState>,
    Path(raw): Path<String>,
    uri: Uri,
) -> ApiResult {
    let id: WorkflowId = parse_id(&raw, "workflow id")?;
    let query = ListQuery::read(&uri, "knowledge", &[])?;
    let page = query.page()?;
    must_exist(&app, id).await?;
    let rows = read::knowledge(&app.db, &app.tenant, id.0, page)
        .await
        .map_err(unavailable_db)?;
    Ok(query.answer(rows))
}
