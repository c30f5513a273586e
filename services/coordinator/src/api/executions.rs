//! `/v1/executions` and a workflow's executions: start (a command on the workflow's execution
//! numbering), cancel, pause and resume (commands on the execution), list, get, interactions.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use futures::future::try_join_all;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::Mutex;

use cadre_proto::events::Request;
use cadre_proto::model::{AgentProfile, TriggerReason, WorkflowDefinition};
use cadre_proto::{Event, ExecutionId, WorkflowId, subjects};

use super::{
    ApiResult, AppState, Problem, agents, command_failed, control_request, optional_body, page,
    parse_id, unavailable_db, unavailable_log, workflows, written,
};
use crate::command::{Aggregate, History};
use crate::domain::execution::{Command, ExecutionDecider, Start, TransitionRefused};
use crate::domain::starts::{StartExecution, Starts};
use crate::domain::validation::validate_start;
use crate::read;

/// The body of a start: all optional (the seed's `executionContext` is `input`).
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(super) struct StartRequest {
    #[serde(default)]
    trigger_reason: TriggerReason,
    #[serde(default)]
    triggered_by: Option<String>,
    #[serde(default)]
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

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ExecutionAccepted {
    execution_id: ExecutionId,
    execution_number: u32,
    workflow_id: WorkflowId,
    status: &'static str,
}

/// What starting an execution of a workflow needs, kept per workflow: its definition and its
/// agents (both immutable once registered) and its execution numbering as last seen. Starts
/// of one workflow queue on its lock here instead of racing each other in the log; a race
/// with another coordinator replica is still caught by the expected-sequence append and
/// resolved by the command path, which reloads and decides again.
struct WorkflowStarts {
    workflow: WorkflowDefinition,
    agents: Vec<AgentProfile>,
    numbering: Aggregate<Starts>,
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

pub(super) async fn start(
    State(app): State<AppState>,
    Path(raw): Path<String>,
    bytes: Bytes,
) -> ApiResult {
    let workflow_id: WorkflowId = parse_id(&raw, "workflow id")?;
    let request: StartRequest = optional_body(&bytes)?;
    request.validate()?;
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
    // The workflow's last own event says whether it is paused; a replica's answer that lags by
    // a moment only orders this start before a concurrent pause.
    let workflow_paused = matches!(
        app.bus
            .peek_last_event(&subjects::workflow_lifecycle(&app.tenant, workflow_id))
            .await
            .map_err(unavailable_log)?,
        Some(stored) if matches!(stored.envelope.event, Event::WorkflowPaused(_))
    );
    let command = StartExecution {
        start: Start {
            execution_id: ExecutionId::new(),
            trigger_reason: request.trigger_reason,
            triggered_by: request.triggered_by,
            workflow: starts.workflow.clone(),
            agents: starts.agents.clone(),
            input: request.input.map(serde_json::Value::Object),
        },
        workflow_paused,
    };
    if let Err(error) = starts.numbering.execute(&app.bus, &command).await {
        // Whether an append that failed midway was stored is unknown: read it again next time.
        *cached = None;
        return Err(command_failed(error, |paused| {
            Problem::invalid_transition(paused.to_string(), "paused")
        }));
    }
    let execution_number = starts.numbering.state.last_number;
    let position = starts.numbering.version;
    // Other starts of this workflow must not queue behind the projector.
    drop(cached);
    let execution_id = command.start.execution_id;
    let response = (
        StatusCode::ACCEPTED,
        [(header::LOCATION, format!("/v1/executions/{execution_id}"))],
        axum::Json(ExecutionAccepted {
            execution_id,
            execution_number,
            workflow_id,
            status: "pending",
        }),
    )
        .into_response();
    Ok(written(&app, position, response).await)
}

/// What starting a workflow needs, read from the log.
async fn load_starts(app: &AppState, workflow_id: WorkflowId) -> Result<WorkflowStarts, Problem> {
    let workflow = workflows::load(app, workflow_id)
        .await?
        .state
        .definition()
        .cloned()
        .ok_or_else(|| Problem::not_found(format!("no workflow has the id {workflow_id}")))?;
    let agents = try_join_all(
        workflow
            .participating_agents
            .iter()
            .map(|id| agents::load(app, *id)),
    )
    .await?
    .into_iter()
    .collect::<Option<Vec<_>>>()
    .ok_or_else(|| Problem::conflict("an agent of this workflow is no longer registered"))?;
    let numbering = Aggregate::<Starts>::load(
        &app.bus,
        app.tenant.clone(),
        subjects::execution_starts(&app.tenant, workflow_id),
        History::Last,
    )
    .await
    .map_err(unavailable_log)?;
    Ok(WorkflowStarts {
        workflow,
        agents,
        numbering,
    })
}

async fn execution_must_exist(app: &AppState, id: ExecutionId) -> Result<(), Problem> {
    let row = read::execution(&app.db, &app.tenant, id.0)
        .await
        .map_err(unavailable_db)?;
    row.map(drop)
        .ok_or_else(|| Problem::not_found(format!("no execution has the id {id}")))
}

pub(super) async fn list(
    State(app): State<AppState>,
    Path(raw): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> ApiResult {
    let id: WorkflowId = parse_id(&raw, "workflow id")?;
    let page = page(&params)?;
    workflows::must_exist(&app, id).await?;
    let rows = read::executions(&app.db, &app.tenant, id.0, page)
        .await
        .map_err(unavailable_db)?;
    Ok(axum::Json(rows).into_response())
}

/// An execution's start, read from the log (the read models may not have it yet).
async fn started(
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

pub(super) async fn get(State(app): State<AppState>, Path(raw): Path<String>) -> ApiResult {
    let id: ExecutionId = parse_id(&raw, "execution id")?;
    if let Some(row) = read::execution(&app.db, &app.tenant, id.0)
        .await
        .map_err(unavailable_db)?
    {
        return Ok(axum::Json(row).into_response());
    }
    // Just accepted and not yet projected: answer from the log rather than deny it exists.
    let (time, e) = started(&app, id).await?;
    Ok(axum::Json(read::ExecutionView {
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
    .into_response())
}

pub(super) async fn interactions(
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

async fn control(
    app: AppState,
    raw: String,
    bytes: Bytes,
    command: fn(Request) -> Command,
) -> ApiResult {
    let id: ExecutionId = parse_id(&raw, "execution id")?;
    let command = command(control_request(&bytes)?);
    let (_, started) = started(&app, id).await?;
    let filter = subjects::execution_state(&app.tenant, started.workflow_id, id);
    let mut execution =
        Aggregate::<ExecutionDecider>::load(&app.bus, app.tenant.clone(), filter, History::All)
            .await
            .map_err(unavailable_log)?;
    execution.execute(&app.bus, &command).await.map_err(|e| {
        command_failed(e, |refused| match refused {
            TransitionRefused::Invalid { status, .. } => {
                Problem::invalid_transition(refused.to_string(), status)
            }
            TransitionRefused::NotStarted => {
                Problem::not_found(format!("no execution has the id {id}"))
            }
        })
    })?;
    let status = match &execution.state {
        crate::domain::execution::State::Started(e) => e.status.as_str(),
        crate::domain::execution::State::NotStarted => "pending",
    };
    let response = (
        StatusCode::ACCEPTED,
        axum::Json(json!({ "executionId": id, "status": status })),
    )
        .into_response();
    Ok(written(&app, execution.version, response).await)
}

pub(super) async fn cancel(
    State(app): State<AppState>,
    Path(raw): Path<String>,
    bytes: Bytes,
) -> ApiResult {
    control(app, raw, bytes, Command::Cancel).await
}

pub(super) async fn pause(
    State(app): State<AppState>,
    Path(raw): Path<String>,
    bytes: Bytes,
) -> ApiResult {
    control(app, raw, bytes, Command::Pause).await
}

pub(super) async fn resume(
    State(app): State<AppState>,
    Path(raw): Path<String>,
    bytes: Bytes,
) -> ApiResult {
    control(app, raw, bytes, Command::Resume).await
}
