//! `POST /v1/escalations/{id}/resolve`: a person decides about what waits for one: a step (a
//! failure past its escalation ladder's other rungs, or an approval step) or a whole run (past
//! `escalation.afterMinutes`). The decision is a
//! command on the step's execution, refused when the escalation is no longer open.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};

use cadre_proto::events::Resolution;
use cadre_proto::{AgentId, EscalationId, ExecutionId};

use super::body::Body;
use super::openapi::{
    BadRequest, Conflict, Invalid, NotFound, TooLarge, Unavailable, UnsupportedMediaType,
};
use super::{
    ApiResult, AppState, Problem, executions, parse_id, unavailable_db, who_and_why, written,
};
use crate::domain::execution::{Command, State as ExecutionState};
use crate::domain::validation::FieldError;
use crate::read;

/// What a person may do about an escalation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
enum Action {
    Retry,
    Reassign,
    Skip,
    ProvideOutput,
    Abort,
    Approve,
    Reject,
    Continue,
}

/// The body of a resolution.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct ResolveRequest {
    action: Action,
    /// For `reassign`: the participating agent that takes the next attempt.
    #[serde(default)]
    agent_id: Option<AgentId>,
    /// For `provideOutput`: the step's result; `summary` defaults to the output's first line.
    #[serde(default)]
    output: Option<String>,
    #[serde(default)]
    #[schema(max_length = 2000)]
    summary: Option<String>,
    #[serde(default)]
    #[schema(max_length = 1000, pattern = r"\S")]
    requested_by: Option<String>,
    #[serde(default)]
    #[schema(max_length = 1000, pattern = r"\S")]
    reason: Option<String>,
}

/// Largest output a person may provide: it travels in an event, like an agent's preview.
const MAX_OUTPUT_BYTES: usize = 256 * 1024;
const MAX_SUMMARY_CHARS: usize = 2000;
/// Characters of the output's first line taken as the summary when none is given.
const DEFAULT_SUMMARY_CHARS: usize = 200;

impl ResolveRequest {
    /// The resolution it asks for, or every field in error.
    fn resolution(self) -> Result<(Resolution, cadre_proto::events::Request), Problem> {
        let mut errors = Vec::new();
        let field = |pointer: &str, message: String| FieldError {
            pointer: pointer.to_owned(),
            message,
        };
        let only_for =
            |name: &str, action: &str| format!("only applies to action '{action}'; remove {name}");
        if self.action != Action::Reassign && self.agent_id.is_some() {
            errors.push(field("/agentId", only_for("agentId", "reassign")));
        }
        if self.action != Action::ProvideOutput {
            for (pointer, set) in [
                ("/output", self.output.is_some()),
                ("/summary", self.summary.is_some()),
            ] {
                if set {
                    errors.push(field(pointer, only_for(&pointer[1..], "provideOutput")));
                }
            }
        }
        let resolution = match self.action {
            Action::Retry => Some(Resolution::Retry),
            Action::Skip => Some(Resolution::Skip),
            Action::Abort => Some(Resolution::Abort),
            Action::Approve => Some(Resolution::Approve),
            Action::Reject => Some(Resolution::Reject),
            Action::Continue => Some(Resolution::Continue),
            Action::Reassign => match self.agent_id {
                Some(agent_id) => Some(Resolution::Reassign { agent_id }),
                None => {
                    errors.push(field(
                        "/agentId",
                        "reassign needs the id of the participating agent to hand the step to"
                            .to_owned(),
                    ));
                    None
                }
            },
            Action::ProvideOutput => {
                provided(self.output.as_deref(), self.summary.as_deref(), &mut errors)
            }
        };
        let request = who_and_why(self.requested_by, self.reason, &mut errors);
        match resolution {
            Some(resolution) if errors.is_empty() => Ok((resolution, request)),
            _ => Err(Problem::invalid("the resolution is not valid", errors)),
        }
    }
}

/// A person's own result for the step, within the limits an event allows.
fn provided(
    output: Option<&str>,
    summary: Option<&str>,
    errors: &mut Vec<FieldError>,
) -> Option<Resolution> {
    let Some(output) = output.filter(|o| !o.trim().is_empty()) else {
        errors.push(FieldError {
            pointer: "/output".to_owned(),
            message: "provideOutput needs the step's output, as text".to_owned(),
        });
        return None;
    };
    if output.len() > MAX_OUTPUT_BYTES {
        errors.push(FieldError {
            pointer: "/output".to_owned(),
            message: format!(
                "must be at most {} KiB (it has {} bytes); put a larger result somewhere the team \
                 can reach and provide a reference to it",
                MAX_OUTPUT_BYTES / 1024,
                output.len()
            ),
        });
        return None;
    }
    let summary = match summary {
        Some(summary) if summary.chars().count() > MAX_SUMMARY_CHARS => {
            errors.push(FieldError {
                pointer: "/summary".to_owned(),
                message: format!("must be at most {MAX_SUMMARY_CHARS} characters"),
            });
            return None;
        }
        Some(summary) if !summary.trim().is_empty() => summary.to_owned(),
        _ => output
            .trim()
            .lines()
            .next()
            .unwrap_or_default()
            .chars()
            .take(DEFAULT_SUMMARY_CHARS)
            .collect(),
    };
    Some(Resolution::ProvideOutput {
        summary,
        output: output.to_owned(),
    })
}

/// A resolution accepted, with the statuses it left.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct ResolutionAccepted {
    escalation_id: EscalationId,
    execution_id: ExecutionId,
    /// The step it was about; null for a whole run.
    step_id: Option<String>,
    action: &'static str,
    /// The step's status now; null for a whole run.
    step_status: Option<&'static str>,
    execution_status: &'static str,
}

/// `POST /v1/escalations/{id}/resolve`: a person decides.
#[utoipa::path(
    post,
    path = "/v1/escalations/{id}/resolve",
    tag = "escalations",
    params(("id" = uuid::Uuid, Path, description = "The escalation's id")),
    request_body = ResolveRequest,
    responses(
        (status = 202, description = "Recorded", body = ResolutionAccepted),
        BadRequest, NotFound, Conflict, TooLarge, UnsupportedMediaType, Invalid, Unavailable,
    )
)]
pub(super) async fn resolve(
    State(app): State<AppState>,
    Path(raw): Path<String>,
    Body(request): Body<ResolveRequest>,
) -> ApiResult {
    let id: EscalationId = parse_id(&raw, "escalation id")?;
    let (resolution, request) = request.resolution()?;
    let escalation = read::escalation(&app.db, &app.tenant, id.0)
        .await
        .map_err(unavailable_db)?
        .ok_or_else(|| Problem::not_found(format!("no escalation has the id {id}")))?;
    let execution_id = ExecutionId(escalation.execution_id);
    let command = Command::Resolve {
        escalation_id: id,
        resolution: resolution.clone(),
        request,
    };
    let execution = executions::execute(&app, execution_id, &command).await?;
    let ExecutionState::Started(state) = &execution.state else {
        return Err(Problem::not_found(format!(
            "no execution has the id {execution_id}"
        )));
    };
    let step = escalation.step_id.as_deref().and_then(|id| {
        state
            .steps
            .iter()
            .find(|(step, _)| step.as_str() == id)
            .map(|(_, p)| p.state.name())
    });
    let response = (
        StatusCode::ACCEPTED,
        axum::Json(ResolutionAccepted {
            escalation_id: id,
            execution_id,
            step_id: escalation.step_id,
            action: resolution.as_str(),
            step_status: step,
            execution_status: state.status.as_str(),
        }),
    )
        .into_response();
    Ok(written(&app, execution.version, response).await)
}
