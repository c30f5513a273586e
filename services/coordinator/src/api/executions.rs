//! `/v1/executions` and a workflow's executions: start (a command on the workflow's execution
//! numbering), cancel, pause and resume (commands on the execution), list, get, interactions.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use serde_json::json;

use cadre_proto::events::{Request, Resolution};
use cadre_proto::model::StepResult;
use cadre_proto::model::TriggerReason;
use cadre_proto::{AgentId, Event, ExecutionId, StepId, WorkflowId, subjects};

use super::body::OptionalBody;
use super::list::ListQuery;
use super::openapi::{
    BadRequest, Conflict, Invalid, NotFound, PageParams, TooLarge, Unavailable,
    UnsupportedMediaType,
};
use super::{
    ApiResult, AppState, Problem, command_failed, control_request, optional_body, parse_id,
    unavailable_db, unavailable_log, workflows, written, written_within,
};
use crate::command::{Aggregate, History};
use crate::domain::execution::{Command, ExecutionDecider, TransitionRefused};
use crate::domain::validation::validate_start;
use crate::read;
use crate::starter::{StartError, StartOrder};
use crate::workers::no_worker_offers;

/// The body of a start: all optional (the seed's `executionContext` is `input`).
#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct StartRequest {
    #[serde(default)]
    trigger_reason: TriggerReason,
    #[serde(default)]
    #[schema(max_length = 200)]
    triggered_by: Option<String>,
    /// The run's input (at most 64 KiB), quoted to every step.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    input: Option<serde_json::Map<String, serde_json::Value>>,
}

impl StartRequest {
    fn validate(&self) -> Result<(), Problem> {
        let errors = validate_start(self.triggered_by.as_deref(), self.input.as_ref());
        if errors.is_empty() {
            Ok(())
        } else {
            Err(Problem::invalid("the start request is not valid", errors))
        }
    }
}

/// A run accepted (or, for a repeated `Idempotency-Key`, the run that key started).
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct ExecutionAccepted {
    execution_id: ExecutionId,
    execution_number: u32,
    workflow_id: WorkflowId,
    /// `running`.
    status: &'static str,
}

/// An execution's status after a cancel, pause or resume.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct ExecutionStatus {
    execution_id: ExecutionId,
    status: &'static str,
}

/// `POST /v1/workflows/{id}/executions`: start a run.
#[utoipa::path(
    post,
    path = "/v1/workflows/{id}/executions",
    tag = "executions",
    params(
        ("id" = uuid::Uuid, Path, description = "The workflow's id"),
        ("Idempotency-Key" = Option<String>, Header,
         description = "Starts with the same key within a day return the same run; one that asks for something else (input, triggerReason, triggeredBy) is refused with 422 (1 to 255 visible ASCII characters)"),
        ("Prefer" = Option<String>, Header,
         description = "RFC 7240. `wait=<seconds>` caps how long the answer waits for the read models to show the new run (`wait=0`: answer once the log has it; `Cadre-Read-Models` says which). Other preferences are ignored"),
    ),
    request_body(content = Option<StartRequest>, description = "Optional"),
    responses(
        (status = 202, description = "Started", body = ExecutionAccepted,
         headers(("Location" = String, description = "The execution's URL"))),
        (status = 200, description = "The run an earlier start with the same Idempotency-Key started", body = ExecutionAccepted,
         headers(("Location" = String, description = "The execution's URL"))),
        BadRequest, NotFound, Conflict, TooLarge, UnsupportedMediaType, Invalid, Unavailable,
    )
)]
pub(super) async fn start(
    State(app): State<AppState>,
    Path(raw): Path<String>,
    headers: HeaderMap,
    OptionalBody(bytes): OptionalBody,
) -> ApiResult {
    let workflow_id: WorkflowId = parse_id(&raw, "workflow id")?;
    let request: StartRequest = optional_body(&bytes)?;
    request.validate()?;
    let idempotency_key = idempotency_key(&headers)?;
    let order = StartOrder {
        workflow_id,
        trigger_reason: request.trigger_reason,
        triggered_by: request.triggered_by,
        input: request.input.map(serde_json::Value::Object),
        idempotency_key,
        triggered: false,
        parent: None,
    };
    let started = app
        .starter
        .start(&app.tenant, order)
        .await
        .map_err(start_failed)?;
    let status = if started.repeated {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    let response = (
        status,
        [(
            header::LOCATION,
            format!("/v1/executions/{}", started.execution_id),
        )],
        axum::Json(ExecutionAccepted {
            execution_id: started.execution_id,
            execution_number: started.execution_number,
            workflow_id: started.workflow_id,
            status: "running",
        }),
    )
        .into_response();
    let wait = preferred_wait(&headers).unwrap_or(app.read_your_writes);
    Ok(written_within(&app, wait, started.sequence, response).await)
}

/// The client's `Prefer: wait=<seconds>` (RFC 7240), if it sent one that parses; a preference
/// that does not is ignored, as the RFC asks.
fn preferred_wait(headers: &HeaderMap) -> Option<std::time::Duration> {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .find_map(|preference| {
            let (name, seconds) = preference.split_once('=')?;
            if !name.trim().eq_ignore_ascii_case("wait") {
                return None;
            }
            let seconds: u64 = seconds.trim().trim_matches('"').parse().ok()?;
            Some(std::time::Duration::from_secs(seconds))
        })
}

/// Longest `Idempotency-Key`.
const MAX_IDEMPOTENCY_KEY: usize = 255;

/// The request's `Idempotency-Key`, if any (IETF draft-ietf-httpapi-idempotency-key-header).
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Problem> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|k| !k.is_empty() && k.len() <= MAX_IDEMPOTENCY_KEY)
        .ok_or_else(|| {
            Problem::bad_request(format!(
                "the Idempotency-Key header must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters"
            ))
        })?;
    Ok(Some(key.to_owned()))
}

fn start_failed(error: StartError) -> Problem {
    match error {
        StartError::NoWorkflow(id) => Problem::not_found(format!("no workflow has the id {id}")),
        StartError::NoAgent(_) | StartError::NotTriggerable(_) | StartError::TooDeep { .. } => {
            Problem::conflict(error.to_string())
        }
        StartError::Refused(error) => command_failed(error, |paused| {
            Problem::invalid_transition(paused.to_string(), "paused")
        }),
        StartError::KeyInFlight => Problem::conflict(error.to_string()),
        // The request is at fault, not its timing: retrying it cannot succeed.
        StartError::KeyReused => Problem::invalid(error.to_string(), Vec::new()),
        StartError::Read(error) => unavailable_log(error),
        StartError::Idempotency(error) => {
            tracing::error!(%error, "idempotency store failed");
            Problem::unavailable("the start could not be recorded; nothing was started, retry")
        }
    }
}

pub(super) async fn execution_must_exist(app: &AppState, id: ExecutionId) -> Result<(), Problem> {
    let row = read::execution(&app.db, &app.tenant, id.0)
        .await
        .map_err(unavailable_db)?;
    row.map(drop)
        .ok_or_else(|| Problem::not_found(format!("no execution has the id {id}")))
}

/// The filters of the lists of runs, all optional (see [`read::ExecutionFilter`]).
const RUN_FILTERS: [&str; 4] = ["status", "trigger", "startedAfter", "startedBefore"];

fn run_filter(query: &ListQuery) -> Result<read::ExecutionFilter, Problem> {
    let filter = read::ExecutionFilter {
        workflow_id: None,
        statuses: query.any_of("status", &read::EXECUTION_STATUSES)?,
        trigger: query.one_of("trigger", &read::TRIGGERS)?,
        started_after: query.time("startedAfter")?,
        started_before: query.time("startedBefore")?,
    };
    if let (Some(after), Some(before)) = (filter.started_after, filter.started_before)
        && after >= before
    {
        return Err(Problem::bad_request(format!(
            "query parameter 'startedAfter' ({}) is not before 'startedBefore' ({}): no run \
             can match (runs started at or after startedAfter and before startedBefore are \
             listed)",
            after.to_rfc3339(),
            before.to_rfc3339()
        )));
    }
    Ok(filter)
}

/// `GET /v1/workflows/{id}/executions?status&trigger&startedAfter&startedBefore`: a workflow's
/// runs, newest first (by execution number).
#[utoipa::path(
    get,
    path = "/v1/workflows/{id}/executions",
    tag = "executions",
    params(("id" = uuid::Uuid, Path, description = "The workflow's id"), RunFilters, PageParams),
    responses((status = 200, description = "Its runs", body = Vec<read::ExecutionView>, headers(("Link" = String, description = "The next page (`<…>; rel=\"next\"`), when more items follow"))), BadRequest, NotFound, Unavailable)
)]
pub(super) async fn list(
    State(app): State<AppState>,
    Path(raw): Path<String>,
    uri: Uri,
) -> ApiResult {
    let id: WorkflowId = parse_id(&raw, "workflow id")?;
    let query = ListQuery::read(&uri, "workflow-executions", &RUN_FILTERS)?;
    let page = query.page()?;
    let filter = run_filter(&query)?;
    workflows::must_exist(&app, id).await?;
    let rows = read::executions(&app.db, &app.tenant, id.0, &filter, page)
        .await
        .map_err(unavailable_db)?;
    Ok(query.answer(rows))
}

/// `GET /v1/executions?workflowId&status&trigger&startedAfter&startedBefore`: the runs of
/// every workflow, newest first (by start time, then id).
#[utoipa::path(
    get,
    path = "/v1/executions",
    tag = "executions",
    params(
        ("workflowId" = Option<uuid::Uuid>, Query, description = "Only this workflow's"),
        RunFilters,
        PageParams,
    ),
    responses((status = 200, description = "Runs", body = Vec<read::ExecutionView>, headers(("Link" = String, description = "The next page (`<…>; rel=\"next\"`), when more items follow"))), BadRequest, Unavailable)
)]
pub(super) async fn all(State(app): State<AppState>, uri: Uri) -> ApiResult {
    let mut filters = vec!["workflowId"];
    filters.extend(RUN_FILTERS);
    let query = ListQuery::read(&uri, read::ALL_EXECUTIONS, &filters)?;
    let page = query.page()?;
    let filter = read::ExecutionFilter {
        workflow_id: query.uuid("workflowId")?,
        ..run_filter(&query)?
    };
    let rows = read::all_executions(&app.db, &app.tenant, &filter, page)
        .await
        .map_err(unavailable_db)?;
    Ok(query.answer(rows))
}

/// The filters of the lists of runs. Documentation only, as [`PageParams`].
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query, rename_all = "camelCase")]
#[allow(dead_code)]
struct RunFilters {
    /// Only those in one of these statuses (comma-separated): `running`, `paused`,
    /// `escalated`, `completed`, `failed`, `cancelled`.
    #[param(
        example = "failed,cancelled",
        pattern = "^(running|paused|escalated|completed|failed|cancelled)(,(running|paused|escalated|completed|failed|cancelled))*$"
    )]
    status: Option<String>,
    /// Only those started so.
    #[param(pattern = "^(manual|scheduled|event|dependency)$")]
    trigger: Option<String>,
    /// Only those started at or after this time (RFC 3339).
    started_after: Option<chrono::DateTime<chrono::Utc>>,
    /// Only those started before this time (RFC 3339); later than `startedAfter`.
    started_before: Option<chrono::DateTime<chrono::Utc>>,
}

/// An execution's start, read from the log (the read models may not have it yet).
pub(super) async fn started(
    app: &AppState,
    id: ExecutionId,
) -> Result<
    (
        chrono::DateTime<chrono::Utc>,
        cadre_proto::events::ExecutionStarted,
    ),
    Problem,
> {
    let started = app
        .bus
        .last_event(&subjects::execution_started_in_any_workflow(
            &app.tenant,
            id,
        ))
        .await
        .map_err(unavailable_log)?;
    match started.map(|s| (s.envelope.meta.time, s.envelope.event)) {
        Some((time, Event::ExecutionStarted(e))) => Ok((time, *e)),
        _ => Err(Problem::not_found(format!("no execution has the id {id}"))),
    }
}

/// `GET /v1/executions/{id}`: status, steps, assignments, output, and the steps no running
/// worker can take.
#[utoipa::path(
    get,
    path = "/v1/executions/{id}",
    tag = "executions",
    params(("id" = uuid::Uuid, Path, description = "The execution's id")),
    responses((status = 200, description = "The execution", body = ExecutionDetail), BadRequest, NotFound, Unavailable)
)]
pub(super) async fn get(State(app): State<AppState>, Path(raw): Path<String>) -> ApiResult {
    let id: ExecutionId = parse_id(&raw, "execution id")?;
    if let Some(row) = read::execution(&app.db, &app.tenant, id.0)
        .await
        .map_err(unavailable_db)?
    {
        let waiting = waiting_for_workers(&app, &row).await;
        return Ok(axum::Json(ExecutionDetail { row, waiting }).into_response());
    }
    // Just accepted and not yet projected: answer from the log rather than deny it exists.
    let (time, e) = started(&app, id).await?;
    let row = read::ExecutionView {
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
        actual_duration: None,
        updated_at: time,
    };
    Ok(axum::Json(ExecutionDetail {
        row,
        waiting: vec![],
    })
    .into_response())
}

/// An execution as the read models show it, with what they cannot know: which of its
/// scheduled steps no live worker can take.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct ExecutionDetail {
    #[serde(flatten)]
    row: read::ExecutionView,
    waiting: Vec<WaitingStep>,
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct WaitingStep {
    step_id: String,
    provider: String,
    reason: String,
}

/// The execution's steps that are scheduled but not started and whose agent's provider no live
/// worker offers: they wait, visibly, rather than fail.
async fn waiting_for_workers(app: &AppState, row: &read::ExecutionView) -> Vec<WaitingStep> {
    let Some(steps) = row.step_results.as_object() else {
        return vec![];
    };
    let queued: Vec<(&String, &str)> = steps
        .iter()
        .filter(|(_, entry)| entry["status"] == "scheduled")
        .filter_map(|(step, _)| Some((step, row.agent_assignments[step]["provider"].as_str()?)))
        .collect();
    if queued.is_empty() {
        return vec![];
    }
    let offered = match app.workers.offered().await {
        Ok(offered) => offered,
        Err(error) => {
            tracing::warn!(%error, "could not read the worker registry");
            return vec![];
        }
    };
    queued
        .into_iter()
        .filter(|(_, provider)| !offered.contains(*provider))
        .map(|(step, provider)| WaitingStep {
            step_id: step.clone(),
            provider: provider.to_owned(),
            reason: no_worker_offers(provider),
        })
        .collect()
}

/// `GET /v1/executions/{id}/interactions`: in the order recorded.
#[utoipa::path(
    get,
    path = "/v1/executions/{id}/interactions",
    tag = "executions",
    params(("id" = uuid::Uuid, Path, description = "The execution's id"), PageParams),
    responses((status = 200, description = "Its interactions", body = Vec<read::InteractionView>, headers(("Link" = String, description = "The next page (`<…>; rel=\"next\"`), when more items follow"))), BadRequest, NotFound, Unavailable)
)]
pub(super) async fn interactions(
    State(app): State<AppState>,
    Path(raw): Path<String>,
    uri: Uri,
) -> ApiResult {
    let id: ExecutionId = parse_id(&raw, "execution id")?;
    let query = ListQuery::read(&uri, "interactions", &[])?;
    let page = query.page()?;
    execution_must_exist(&app, id).await?;
    let rows = read::interactions(&app.db, &app.tenant, id.0, page)
        .await
        .map_err(unavailable_db)?;
    Ok(query.answer(rows))
}

async fn control(
    app: AppState,
    raw: String,
    bytes: Bytes,
    command: fn(Request) -> Command,
) -> ApiResult {
    let id: ExecutionId = parse_id(&raw, "execution id")?;
    let command = command(control_request(&bytes)?);
    let execution = execute(&app, id, &command).await?;
    let status = match &execution.state {
        crate::domain::execution::State::Started(e) => e.status.as_str(),
        crate::domain::execution::State::NotStarted => "pending",
    };
    let response = (
        StatusCode::ACCEPTED,
        axum::Json(ExecutionStatus {
            execution_id: id,
            status,
        }),
    )
        .into_response();
    Ok(written(&app, execution.version, response).await)
}

/// Runs `command` on execution `id`, loaded from the log; a refusal is a problem a person can
/// act on.
pub(super) async fn execute(
    app: &AppState,
    id: ExecutionId,
    command: &Command,
) -> Result<Aggregate<ExecutionDecider>, Problem> {
    let (_, started) = started(app, id).await?;
    let filter = if command.reads_steps() {
        subjects::execution_state(&app.tenant, started.workflow_id, id)
    } else {
        subjects::execution_facts(&app.tenant, started.workflow_id, id)
    };
    let mut execution =
        Aggregate::<ExecutionDecider>::load(&app.bus, app.tenant.clone(), filter, History::All)
            .await
            .map_err(unavailable_log)?;
    execution.execute(&app.bus, command).await.map_err(|e| {
        command_failed(e, |refused| match refused {
            TransitionRefused::Invalid { status, .. } => {
                Problem::invalid_transition(refused.to_string(), status)
            }
            TransitionRefused::NotStarted => {
                Problem::not_found(format!("no execution has the id {id}"))
            }
            TransitionRefused::NotOpen { .. } => Problem::conflict(refused.to_string()),
            TransitionRefused::Unfit { field, why } => Problem::invalid(
                why.clone(),
                vec![crate::domain::validation::FieldError {
                    pointer: format!("/{field}"),
                    message: why.clone(),
                }],
            ),
        })
    })?;
    Ok(execution)
}

/// `POST /v1/executions/{id}/cancel`: end the run and stop its running LLM calls.
#[utoipa::path(
    post,
    path = "/v1/executions/{id}/cancel",
    tag = "executions",
    params(("id" = uuid::Uuid, Path, description = "The execution's id")),
    request_body(content = Option<super::ControlRequest>, description = "Optional: who asks, and why"),
    responses(
        (status = 202, description = "Its status now", body = ExecutionStatus),
        BadRequest, NotFound, Conflict, TooLarge, UnsupportedMediaType, Invalid, Unavailable,
    )
)]
pub(super) async fn cancel(
    State(app): State<AppState>,
    Path(raw): Path<String>,
    OptionalBody(bytes): OptionalBody,
) -> ApiResult {
    control(app, raw, bytes, Command::Cancel).await
}

/// `POST /v1/executions/{id}/pause`: schedule nothing new until resumed.
#[utoipa::path(
    post,
    path = "/v1/executions/{id}/pause",
    tag = "executions",
    params(("id" = uuid::Uuid, Path, description = "The execution's id")),
    request_body(content = Option<super::ControlRequest>, description = "Optional: who asks, and why"),
    responses(
        (status = 202, description = "Its status now", body = ExecutionStatus),
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

/// `POST /v1/executions/{id}/resume`: go on after a pause.
#[utoipa::path(
    post,
    path = "/v1/executions/{id}/resume",
    tag = "executions",
    params(("id" = uuid::Uuid, Path, description = "The execution's id")),
    request_body(content = Option<super::ControlRequest>, description = "Optional: who asks, and why"),
    responses(
        (status = 202, description = "Its status now", body = ExecutionStatus),
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

/// The whole result of a completed step: what its `StepCompleted` carries, or, when that holds
/// previews, the result it refers to in the results store.
#[utoipa::path(
    get,
    path = "/v1/executions/{id}/steps/{step}/result",
    tag = "executions",
    params(
        ("id" = uuid::Uuid, Path, description = "The execution's id"),
        ("step" = String, Path, description = "The step's id", pattern = "^[A-Za-z0-9_-]{1,64}$"),
    ),
    responses((status = 200, description = "The step's whole result", body = CompletedStep), BadRequest, NotFound, Unavailable)
)]
pub(super) async fn step_result(
    State(app): State<AppState>,
    Path((raw, step)): Path<(String, String)>,
) -> ApiResult {
    let id: ExecutionId = parse_id(&raw, "execution id")?;
    let step_id = StepId::parse(step.as_str())
        .map_err(|error| Problem::bad_request(format!("step id '{step}': {error}")))?;
    let (_, started) = started(&app, id).await?;
    let fact = |fact| subjects::step(&app.tenant, started.workflow_id, id, &step_id, fact);
    let (completed, resolved) = (
        fact(subjects::COMPLETED),
        fact(subjects::ESCALATION_RESOLVED),
    );
    let (stored, resolution) = futures::try_join!(
        app.bus.last_event(&completed),
        app.bus.last_event(&resolved)
    )
    .map_err(unavailable_log)?;
    let resolution = resolution.and_then(|s| match s.envelope.event {
        Event::EscalationResolved(e) => Some(e),
        _ => None,
    });
    // A person's own result (or sign-off) of a later attempt than any agent's completion.
    if let Some(e) = &resolution
        && let Some((summary, output)) = e.result()
        && stored.as_ref().is_none_or(|s| match &s.envelope.event {
            Event::StepCompleted(done) => done.attempt.number <= e.attempt,
            _ => true,
        })
    {
        return Ok(axum::Json(CompletedStep::Provided(ProvidedResult {
            execution_id: id,
            step_id,
            attempt: e.attempt,
            provided_by: e.request.requested_by.clone(),
            result: ProvidedOutput {
                summary: summary.to_owned(),
                output: output.to_owned(),
            },
        }))
        .into_response());
    }
    let Some(Event::StepCompleted(done)) = stored.map(|s| s.envelope.event) else {
        let steps = &started.workflow.configuration.steps;
        // Why there is none: skipped (by its condition, or by a person), or not done yet.
        let skipped = match resolution.as_deref() {
            Some(e) if e.resolution == Resolution::Skip => Some(format!(
                "{} skipped it when it escalated",
                e.request.requested_by.as_deref().unwrap_or("a person")
            )),
            _ => match app
                .bus
                .last_event(&fact(subjects::SKIPPED))
                .await
                .map_err(unavailable_log)?
                .map(|s| s.envelope.event)
            {
                Some(Event::StepSkipped(skipped)) => Some(format!(
                    "it was skipped: its condition '{}' was false",
                    skipped.condition
                )),
                _ => run_ended(&app, &started.workflow_id, id).await?,
            },
        };
        return Err(Problem::not_found(if let Some(why) = skipped {
            format!("step '{step_id}' of execution {id} has no result: {why}")
        } else if steps.iter().any(|s| s.id == step_id) {
            format!("step '{step_id}' of execution {id} has no result: it has not completed")
        } else {
            // A run may add steps of its own (delegated, undoing, re-planned): those have
            // results too once completed, so the answer names what the workflow has.
            format!(
                "execution {id} has completed no step '{step_id}', and its workflow has no such \
                     step (its steps: {})",
                steps
                    .iter()
                    .map(|s| s.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }));
    };
    let result = match &done.result.full {
        None => done.result.clone(),
        Some(full) => {
            let mut object = app.results.get(&full.name).await.map_err(|error| {
                tracing::error!(%error, name = full.name, "results store read failed");
                Problem::unavailable(
                    "the step's result could not be read from the results store; retry",
                )
            })?;
            let mut bytes = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut object, &mut bytes)
                .await
                .map_err(|error| {
                    tracing::error!(%error, name = full.name, "results store read failed");
                    Problem::unavailable(
                        "the step's result could not be read from the results store; retry",
                    )
                })?;
            serde_json::from_slice(&bytes).map_err(|error| {
                tracing::error!(%error, name = full.name, "stored result unreadable");
                Problem::unavailable("the step's stored result is unreadable")
            })?
        }
    };
    Ok(axum::Json(CompletedStep::Agent(AgentResult {
        execution_id: id,
        step_id,
        attempt: done.attempt.number,
        agent_id: done.attempt.agent_id,
        result,
    }))
    .into_response())
}

/// Why a step of run `id` will not complete, if the run ended without it: failed or cancelled.
async fn run_ended(
    app: &AppState,
    workflow_id: &WorkflowId,
    id: ExecutionId,
) -> Result<Option<String>, Problem> {
    let end = |fact| subjects::execution(&app.tenant, *workflow_id, id, fact);
    let (failed, cancelled) = (end(subjects::FAILED), end(subjects::CANCELLED));
    let (failed, cancelled) =
        futures::try_join!(app.bus.last_event(&failed), app.bus.last_event(&cancelled))
            .map_err(unavailable_log)?;
    Ok(match (failed, cancelled) {
        (Some(_), _) => Some("the run failed before it completed".to_owned()),
        (None, Some(_)) => Some("the run was cancelled before it completed".to_owned()),
        (None, None) => None,
    })
}

/// A completed step's result: an agent's, or one a person provided when resolving its
/// escalation.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub(super) enum CompletedStep {
    Agent(AgentResult),
    Provided(ProvidedResult),
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct AgentResult {
    execution_id: ExecutionId,
    step_id: StepId,
    attempt: u32,
    /// The agent whose attempt completed the step.
    agent_id: AgentId,
    result: StepResult,
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct ProvidedResult {
    execution_id: ExecutionId,
    step_id: StepId,
    attempt: u32,
    /// Who provided it, as they said (`requestedBy`), if they did.
    #[schema(required = true)]
    provided_by: Option<String>,
    result: ProvidedOutput,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct ProvidedOutput {
    summary: String,
    output: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefer(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append("prefer", value.parse().unwrap_or_else(|_| unreachable!()));
        }
        headers
    }

    #[test]
    fn the_wait_preference_is_read_from_any_prefer_header_and_nonsense_is_ignored() {
        let secs = std::time::Duration::from_secs;
        assert_eq!(preferred_wait(&prefer(&["wait=0"])), Some(secs(0)));
        assert_eq!(
            preferred_wait(&prefer(&["respond-async, Wait = \"3\""])),
            Some(secs(3))
        );
        assert_eq!(
            preferred_wait(&prefer(&["return=minimal", "wait=2"])),
            Some(secs(2))
        );
        assert_eq!(preferred_wait(&prefer(&["wait=soon", "wait=-1"])), None);
        assert_eq!(preferred_wait(&prefer(&["handling=lenient"])), None);
        assert_eq!(preferred_wait(&HeaderMap::new()), None);
    }
}
