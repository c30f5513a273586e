//! The HTTP API. Commands validate, then append events to the log (the only write); queries
//! read the projector's Postgres read models. Errors are RFC 9457 problem+json.

mod body;
mod problem;

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::Utc;
use futures::future::try_join_all;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::PgPool;
use tokio::sync::Mutex;
use tower_http::trace::DefaultMakeSpan;

use cadre_proto::events::{AgentRegistered, WorkflowCreated};
use cadre_proto::model::{
    AgentProfile, ModelParameters, TriggerReason, WorkflowConfiguration, WorkflowDefinition,
    WorkflowType,
};
use cadre_proto::{AgentId, Envelope, Event, ExecutionId, TenantId, WorkflowId, subjects};
use cadre_runtime::bus::{Append, EventBus, PublishError, ReadError};
use cadre_runtime::health::{self, Readiness};

use crate::SOURCE;
use crate::domain::execution::{Command, Start, State as ExecutionState, decide};
use crate::domain::validation::{FieldError, referenced_agents, validate_agent, validate_workflow};
use crate::read::{self, Page};
use body::Body;
pub use problem::Problem;

pub const BODY_LIMIT_BYTES: usize = 256 * 1024;
/// How often a start is retried when another start of the same workflow wins the race for
/// the next execution number.
const START_ATTEMPTS: usize = 8;

#[derive(Clone)]
pub struct AppState {
    pub bus: EventBus,
    pub db: PgPool,
    /// Until authentication arrives, every request acts for this tenant.
    pub tenant: TenantId,
    pub starts: StartLocks,
}

pub fn router(state: AppState, readiness: Readiness) -> Router {
    Router::new()
        .route("/v1/agents", get(list_agents).post(register_agent))
        .route("/v1/agents/{id}", get(get_agent))
        .route("/v1/workflows", get(list_workflows).post(create_workflow))
        .route("/v1/workflows/{id}", get(get_workflow))
        .route(
            "/v1/workflows/{id}/executions",
            get(list_executions).post(start_execution),
        )
        .route("/v1/workflows/{id}/knowledge", get(workflow_knowledge))
        .route("/v1/executions/{id}", get(get_execution))
        .route(
            "/v1/executions/{id}/interactions",
            get(execution_interactions),
        )
        .method_not_allowed_fallback(|| async { Problem::method_not_allowed() })
        .layer(DefaultBodyLimit::max(BODY_LIMIT_BYTES))
        .with_state(state)
        .merge(health::routes(readiness))
        .fallback(|| async { Problem::not_found("no such resource; the API lives under /v1") })
        // INFO, not the default DEBUG: the request span is the root of the execution's trace.
        .layer(
            tower_http::trace::TraceLayer::new_for_http()
                .make_span_with(DefaultMakeSpan::new().level(tracing::Level::INFO)),
        )
}

type ApiResult = Result<Response, Problem>;

fn unavailable_log(error: ReadError) -> Problem {
    tracing::error!(%error, "event log read failed");
    Problem::unavailable(format!("the event log could not be read: {error}"))
}

fn unavailable_db(error: sqlx::Error) -> Problem {
    tracing::error!(%error, "read model query failed");
    Problem::unavailable("the read models could not be queried; retry shortly")
}

fn publish_failed(error: PublishError) -> Problem {
    match error {
        PublishError::Conflict { .. } => {
            Problem::conflict("another request changed this resource at the same time; retry")
        }
        PublishError::Nats(error) => {
            tracing::error!(%error, "event append failed");
            Problem::unavailable(
                "the event log did not store the change; nothing was written, retry",
            )
        }
    }
}

fn parse_id<T: FromStr>(raw: &str, what: &str) -> Result<T, Problem> {
    raw.parse()
        .map_err(|_| Problem::bad_request(format!("{what} '{raw}' is not a UUID")))
}

fn page(params: &HashMap<String, String>) -> Result<Page, Problem> {
    let number = |name: &str, default: i64, max: i64| -> Result<i64, Problem> {
        match params.get(name) {
            None => Ok(default),
            Some(raw) => raw
                .parse::<i64>()
                .ok()
                .filter(|n| (0..=max).contains(n))
                .ok_or_else(|| {
                    Problem::bad_request(format!(
                        "query parameter '{name}' must be a whole number from 0 to {max}"
                    ))
                }),
        }
    };
    Ok(Page {
        limit: number("limit", 100, 1000)?,
        offset: number("offset", 0, i64::MAX)?,
    })
}

fn created(location: String, body: impl Serialize) -> Response {
    (
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        axum::Json(body),
    )
        .into_response()
}

fn found<T: Serialize>(value: Option<T>, missing: impl FnOnce() -> String) -> ApiResult {
    value
        .map(|v| axum::Json(v).into_response())
        .ok_or_else(|| Problem::not_found(missing()))
}

// ----- agents -----

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RegisterAgent {
    name: String,
    role: String,
    #[serde(default)]
    backstory: String,
    #[serde(default)]
    skills: Vec<String>,
    provider: String,
    model: String,
    #[serde(default)]
    model_parameters: ModelParameters,
}

async fn register_agent(State(app): State<AppState>, Body(req): Body<RegisterAgent>) -> ApiResult {
    let agent = AgentProfile {
        id: AgentId::new(),
        name: req.name,
        role: req.role,
        backstory: req.backstory,
        skills: req.skills,
        provider: req.provider,
        model: req.model,
        model_parameters: req.model_parameters,
    };
    let errors = validate_agent(&agent);
    if !errors.is_empty() {
        return Err(Problem::invalid("the agent is not valid", errors));
    }
    let subject_filter = subjects::agent(&app.tenant, agent.id, subjects::REGISTERED);
    let envelope = Envelope::new(
        SOURCE,
        app.tenant.clone(),
        Utc::now(),
        Event::AgentRegistered(AgentRegistered {
            agent: agent.clone(),
        }),
    );
    app.bus
        .publish(
            &envelope,
            Append::ExpectLast {
                filter: subject_filter,
                sequence: 0,
            },
        )
        .await
        .map_err(publish_failed)?;
    Ok(created(format!("/v1/agents/{}", agent.id), agent))
}

async fn list_agents(
    State(app): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> ApiResult {
    let rows = read::agents(&app.db, &app.tenant, page(&params)?)
        .await
        .map_err(unavailable_db)?;
    Ok(axum::Json(rows).into_response())
}

async fn get_agent(State(app): State<AppState>, Path(raw): Path<String>) -> ApiResult {
    let id: AgentId = parse_id(&raw, "agent id")?;
    found(load_agent(&app, id).await?, || {
        format!("no agent has the id {id}")
    })
}

/// An agent as registered, read from the log (the read model may lag behind it).
async fn load_agent(app: &AppState, id: AgentId) -> Result<Option<AgentProfile>, Problem> {
    let stored = app
        .bus
        .last_event(&subjects::agent(&app.tenant, id, subjects::REGISTERED))
        .await
        .map_err(unavailable_log)?;
    Ok(stored.and_then(|s| match s.envelope.event {
        Event::AgentRegistered(e) => Some(e.agent),
        _ => None,
    }))
}

// ----- workflows -----

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateWorkflow {
    name: String,
    description: String,
    #[serde(default)]
    workflow_type: WorkflowType,
    participating_agents: Vec<AgentId>,
    #[serde(default)]
    coordinator_agent_id: Option<AgentId>,
    configuration: WorkflowConfiguration,
}

async fn create_workflow(
    State(app): State<AppState>,
    Body(req): Body<CreateWorkflow>,
) -> ApiResult {
    let workflow = WorkflowDefinition {
        id: WorkflowId::new(),
        name: req.name,
        description: req.description,
        workflow_type: req.workflow_type,
        participating_agents: req.participating_agents,
        coordinator_agent_id: req.coordinator_agent_id,
        configuration: req.configuration,
    };
    let errors = validate_workflow(&workflow);
    if !errors.is_empty() {
        return Err(Problem::invalid("the workflow is not valid", errors));
    }
    let referenced = referenced_agents(&workflow);
    let known = try_join_all(referenced.iter().map(|id| load_agent(&app, *id))).await?;
    let unknown: Vec<FieldError> = referenced
        .iter()
        .zip(&known)
        .filter(|(_, agent)| agent.is_none())
        .map(|(id, _)| FieldError {
            pointer: match workflow.participating_agents.iter().position(|a| a == id) {
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
    let envelope = Envelope::new(
        SOURCE,
        app.tenant.clone(),
        Utc::now(),
        Event::WorkflowCreated(WorkflowCreated {
            workflow: workflow.clone(),
        }),
    );
    app.bus
        .publish(
            &envelope,
            Append::ExpectLast {
                filter: subjects::workflow(&app.tenant, workflow.id, subjects::CREATED),
                sequence: 0,
            },
        )
        .await
        .map_err(publish_failed)?;
    let mut body = serde_json::to_value(&workflow).unwrap_or_default();
    body["status"] = json!("draft");
    body["totalSteps"] = json!(workflow.configuration.steps.len());
    Ok(created(format!("/v1/workflows/{}", workflow.id), body))
}

async fn list_workflows(
    State(app): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> ApiResult {
    let rows = read::workflows(&app.db, &app.tenant, page(&params)?)
        .await
        .map_err(unavailable_db)?;
    Ok(axum::Json(rows).into_response())
}

async fn get_workflow(State(app): State<AppState>, Path(raw): Path<String>) -> ApiResult {
    let id: WorkflowId = parse_id(&raw, "workflow id")?;
    let row = read::workflow(&app.db, &app.tenant, id.0)
        .await
        .map_err(unavailable_db)?;
    found(row, || format!("no workflow has the id {id}"))
}

async fn load_workflow(app: &AppState, id: WorkflowId) -> Result<WorkflowDefinition, Problem> {
    let stored = app
        .bus
        .last_event(&subjects::workflow(&app.tenant, id, subjects::CREATED))
        .await
        .map_err(unavailable_log)?;
    match stored.map(|s| s.envelope.event) {
        Some(Event::WorkflowCreated(e)) => Ok(e.workflow),
        _ => Err(Problem::not_found(format!("no workflow has the id {id}"))),
    }
}

// ----- executions -----

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct StartExecution {
    #[serde(default)]
    trigger_reason: TriggerReason,
    #[serde(default)]
    triggered_by: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ExecutionAccepted {
    execution_id: ExecutionId,
    execution_number: u32,
    workflow_id: WorkflowId,
    status: &'static str,
}

/// What starting an execution of a workflow needs, kept per workflow: its definition and its
/// agents (both immutable once registered) and the last execution number with the stream
/// sequence of its `started` event. Starts of one workflow queue on its lock here instead of
/// racing each other in the log; a race with another coordinator replica is still caught by
/// the expected-sequence append and resolved by re-reading.
pub struct WorkflowStarts {
    workflow: WorkflowDefinition,
    agents: Vec<AgentProfile>,
    last: Option<(u32, u64)>,
}

/// One workflow's start lock and what it guards (`None` until its first start here).
type StartLock = Arc<Mutex<Option<WorkflowStarts>>>;

#[derive(Clone, Default)]
pub struct StartLocks(Arc<std::sync::Mutex<HashMap<WorkflowId, StartLock>>>);

impl StartLocks {
    fn of(&self, workflow: WorkflowId) -> StartLock {
        self.locks().entry(workflow).or_default().clone()
    }

    fn forget(&self, workflow: WorkflowId) {
        self.locks().remove(&workflow);
    }

    fn locks(&self) -> std::sync::MutexGuard<'_, HashMap<WorkflowId, StartLock>> {
        // Nothing is left half-done under this lock, so a poisoned one is still sound.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

async fn start_execution(
    State(app): State<AppState>,
    Path(raw): Path<String>,
    bytes: Bytes,
) -> ApiResult {
    let workflow_id: WorkflowId = parse_id(&raw, "workflow id")?;
    let request: StartExecution = if bytes.iter().all(u8::is_ascii_whitespace) {
        StartExecution::default()
    } else {
        body::parse(&bytes)?
    };
    let lock = app.starts.of(workflow_id);
    let mut cached = lock.lock().await;
    let starts = match cached.as_mut() {
        Some(starts) => starts,
        None => match load_starts(&app, workflow_id).await {
            Ok(loaded) => cached.insert(loaded),
            Err(problem) => {
                // Keep no lock for ids that name no workflow: bad requests must not grow memory.
                app.starts.forget(workflow_id);
                return Err(problem);
            }
        },
    };

    let filter = subjects::execution_starts(&app.tenant, workflow_id);
    for _ in 0..START_ATTEMPTS {
        let (last_number, sequence) = match starts.last {
            Some(last) => last,
            None => last_start(&app, &filter).await?,
        };
        let execution_id = ExecutionId::new();
        let execution_number = last_number + 1;
        let started = decide(
            &Command::Start(Box::new(Start {
                execution_id,
                execution_number,
                trigger_reason: request.trigger_reason,
                triggered_by: request.triggered_by.clone(),
                workflow: starts.workflow.clone(),
                agents: starts.agents.clone(),
            })),
            &ExecutionState::NotStarted,
        )
        .map_err(|e| Problem::conflict(e.to_string()))?;
        let envelopes: Vec<Envelope> = started
            .into_iter()
            .map(|event| Envelope::new(SOURCE, app.tenant.clone(), Utc::now(), event))
            .collect();
        match app.bus.append_after(&envelopes, &filter, sequence).await {
            Ok(stored_at) => {
                starts.last = Some((execution_number, stored_at));
                return Ok((
                    StatusCode::ACCEPTED,
                    [(header::LOCATION, format!("/v1/executions/{execution_id}"))],
                    axum::Json(ExecutionAccepted {
                        execution_id,
                        execution_number,
                        workflow_id,
                        status: "pending",
                    }),
                )
                    .into_response());
            }
            // Another replica started one: forget what we knew and read the log again.
            Err(PublishError::Conflict { .. }) => starts.last = None,
            Err(other) => {
                starts.last = None;
                return Err(publish_failed(other));
            }
        }
    }
    Err(Problem::conflict(
        "too many executions of this workflow are starting at once; retry",
    ))
}

/// What starting a workflow needs, read from the log.
async fn load_starts(app: &AppState, workflow_id: WorkflowId) -> Result<WorkflowStarts, Problem> {
    let workflow = load_workflow(app, workflow_id).await?;
    let agents = try_join_all(
        workflow
            .participating_agents
            .iter()
            .map(|id| load_agent(app, *id)),
    )
    .await?
    .into_iter()
    .collect::<Option<Vec<_>>>()
    .ok_or_else(|| Problem::conflict("an agent of this workflow is no longer registered"))?;
    Ok(WorkflowStarts {
        workflow,
        agents,
        last: None,
    })
}

/// The last execution number of a workflow and the sequence of its `started` event.
async fn last_start(app: &AppState, filter: &str) -> Result<(u32, u64), Problem> {
    let last = app.bus.last_event(filter).await.map_err(unavailable_log)?;
    Ok(match last {
        Some(stored) => match stored.envelope.event {
            Event::ExecutionStarted(e) => (e.execution_number, stored.sequence),
            _ => (0, stored.sequence),
        },
        None => (0, 0),
    })
}

/// A listing under an unknown parent is a 404, not an empty list.
async fn workflow_must_exist(app: &AppState, id: WorkflowId) -> Result<(), Problem> {
    let row = read::workflow(&app.db, &app.tenant, id.0)
        .await
        .map_err(unavailable_db)?;
    row.map(drop)
        .ok_or_else(|| Problem::not_found(format!("no workflow has the id {id}")))
}

async fn execution_must_exist(app: &AppState, id: ExecutionId) -> Result<(), Problem> {
    let row = read::execution(&app.db, &app.tenant, id.0)
        .await
        .map_err(unavailable_db)?;
    row.map(drop)
        .ok_or_else(|| Problem::not_found(format!("no execution has the id {id}")))
}

async fn list_executions(
    State(app): State<AppState>,
    Path(raw): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> ApiResult {
    let id: WorkflowId = parse_id(&raw, "workflow id")?;
    let page = page(&params)?;
    workflow_must_exist(&app, id).await?;
    let rows = read::executions(&app.db, &app.tenant, id.0, page)
        .await
        .map_err(unavailable_db)?;
    Ok(axum::Json(rows).into_response())
}

async fn get_execution(State(app): State<AppState>, Path(raw): Path<String>) -> ApiResult {
    let id: ExecutionId = parse_id(&raw, "execution id")?;
    if let Some(row) = read::execution(&app.db, &app.tenant, id.0)
        .await
        .map_err(unavailable_db)?
    {
        return Ok(axum::Json(row).into_response());
    }
    // Just accepted and not yet projected: answer from the log rather than deny it exists.
    let started = app
        .bus
        .last_event(&subjects::execution_started_in_any_workflow(
            &app.tenant,
            id,
        ))
        .await
        .map_err(unavailable_log)?;
    match started.map(|s| (s.envelope.meta.time, s.envelope.event)) {
        Some((time, Event::ExecutionStarted(e))) => Ok(axum::Json(read::ExecutionView {
            id: e.execution_id.0,
            workflow_id: e.workflow_id.0,
            execution_number: i32::try_from(e.execution_number).unwrap_or(i32::MAX),
            trigger_reason: serde_json::to_value(e.trigger_reason)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            triggered_by: e.triggered_by,
            current_step_id: None,
            active_steps: json!([]),
            execution_context: json!({}),
            step_results: json!({}),
            active_agents: json!([]),
            agent_assignments: json!({}),
            status: "pending".into(),
            error_message: None,
            failure_cause: None,
            final_output: None,
            started_at: time,
            completed_at: None,
            updated_at: time,
        })
        .into_response()),
        _ => Err(Problem::not_found(format!("no execution has the id {id}"))),
    }
}

async fn execution_interactions(
    State(app): State<AppState>,
    Path(raw): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> ApiResult {
    let id: ExecutionId = parse_id(&raw, "execution id")?;
    let page = page(&params)?;
    execution_must_exist(&app, id).await?;
    let rows = read::interactions(&app.db, &app.tenant, id.0, page)
        .await
        .map_err(unavailable_db)?;
    Ok(axum::Json(rows).into_response())
}

async fn workflow_knowledge(
    State(app): State<AppState>,
    Path(raw): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> ApiResult {
    let id: WorkflowId = parse_id(&raw, "workflow id")?;
    let page = page(&params)?;
    workflow_must_exist(&app, id).await?;
    let rows = read::knowledge(&app.db, &app.tenant, id.0, page)
        .await
        .map_err(unavailable_db)?;
    Ok(axum::Json(rows).into_response())
}
