//! What starts runs besides the API: a workflow's schedule ticking, a CloudEvent on its trigger
//! subject, a run of a workflow it follows completing. Each becomes a start through
//! [`crate::starter`], with an idempotency key derived from what triggered it, so a trigger
//! delivered twice starts one run.

use async_nats::jetstream::{self, kv};
use cloudevents::AttributesReader;
use serde_json::json;

use cadre_proto::events::ParentStep;
use cadre_proto::model::TriggerReason;
use cadre_proto::{ExecutionId, TenantId, WorkflowId, subjects};
use cadre_runtime::bus::{self, NatsError};

use crate::command::CommandError;
use crate::domain::validation::{limits, validate_start};
use crate::processor::{Processed, Services};
use crate::starter::{StartError, StartOrder, Starter};

/// Whether a start that did not happen should be tried again (`Err`) or will never happen
/// (`Ok` with the reason).
fn classify(error: StartError) -> Result<String, String> {
    match error {
        StartError::NoWorkflow(_)
        | StartError::NoAgent(_)
        | StartError::NotTriggerable(_)
        | StartError::TooDeep { .. }
        | StartError::KeyReused => Ok(error.to_string()),
        StartError::Refused(CommandError::Rejected(paused)) => Ok(paused.to_string()),
        other => Err(other.to_string()),
    }
}

/// A tick of `workflow`'s schedule, the `sequence`-th message of the timers stream.
pub async fn start_scheduled(
    starter: &Starter,
    tenant: &TenantId,
    workflow_id: WorkflowId,
    sequence: u64,
) -> Processed {
    let order = StartOrder {
        workflow_id,
        trigger_reason: TriggerReason::Scheduled,
        triggered_by: Some("schedule".to_owned()),
        input: None,
        idempotency_key: Some(format!("schedule:{sequence}")),
        triggered: true,
        parent: None,
    };
    match starter.start(tenant, order).await.map_err(classify) {
        Ok(started) => {
            tracing::info!(%workflow_id, execution = %started.execution_id, "scheduled run started");
            Processed::Done
        }
        Err(Ok(why)) => {
            tracing::info!(%workflow_id, why, "schedule ticked; no run started");
            Processed::Done
        }
        Err(Err(error)) => Processed::Retry(error),
    }
}

/// A CloudEvent published on a workflow's trigger subject.
pub async fn on_trigger(starter: &Starter, message: &jetstream::Message) -> Processed {
    let Some((tenant, workflow_id)) = subjects::parse_trigger(&message.subject) else {
        return Processed::Unreadable(format!(
            "{} is not a trigger subject (cadre.triggers.<tenant>.workflow.<workflow id>)",
            message.subject
        ));
    };
    let event: serde_json::Value = match serde_json::from_slice(&message.payload) {
        Ok(event) => event,
        Err(error) => return Processed::Unreadable(format!("not JSON: {error}")),
    };
    let cloud_event: cloudevents::Event = match serde_json::from_value(event.clone()) {
        Ok(cloud_event) => cloud_event,
        Err(error) => {
            return Processed::Unreadable(format!(
                "not a CloudEvent in structured JSON mode (specversion 1.0 with id, source, type): {error}"
            ));
        }
    };
    let triggered_by: String = format!("{} from {}", cloud_event.ty(), cloud_event.source())
        .chars()
        .take(limits::TRIGGERED_BY)
        .collect();
    let input = serde_json::Map::from_iter([("event".to_owned(), event)]);
    if let Some(error) = validate_start(Some(&triggered_by), Some(&input)).first() {
        return Processed::Unreadable(format!(
            "the event cannot start a run: {} {}",
            error.pointer, error.message
        ));
    }
    let order = StartOrder {
        workflow_id,
        trigger_reason: TriggerReason::Event,
        triggered_by: Some(triggered_by),
        input: Some(serde_json::Value::Object(input)),
        // CloudEvents: source and id identify an event.
        idempotency_key: Some(format!(
            "event:{}:{}",
            cloud_event.source(),
            cloud_event.id()
        )),
        triggered: true,
        parent: None,
    };
    match starter.start(&tenant, order).await.map_err(classify) {
        Ok(started) => {
            tracing::info!(%workflow_id, execution = %started.execution_id, "event-triggered run started");
            Processed::Done
        }
        Err(Ok(why)) => Processed::Unreadable(format!("no run started: {why}")),
        Err(Err(error)) => Processed::Retry(error),
    }
}

/// Starts a run of every workflow that follows `upstream`, for its completed run `execution`.
pub async fn start_dependants(
    services: &Services,
    tenant: &TenantId,
    upstream: WorkflowId,
    execution: ExecutionId,
) -> Result<(), NatsError> {
    let links = &services.links;
    let filter = format!(
        "{}{}",
        links.prefix,
        subjects::after_links_of(tenant, upstream)
    );
    for subject in bus::subjects_under(&links.stream, &filter).await? {
        let Some(downstream) = subject.rsplit('.').next().and_then(|id| id.parse().ok()) else {
            continue;
        };
        let order = StartOrder {
            workflow_id: downstream,
            trigger_reason: TriggerReason::Dependency,
            triggered_by: Some(format!("workflow {upstream} run {execution}")),
            input: Some(
                json!({ "upstream": { "workflowId": upstream, "executionId": execution } }),
            ),
            idempotency_key: Some(format!("after:{execution}")),
            triggered: true,
            parent: None,
        };
        match services
            .starter
            .start(tenant, order)
            .await
            .map_err(classify)
        {
            Ok(started) => {
                tracing::info!(%downstream, execution = %started.execution_id, "dependent run started");
            }
            Err(Ok(why)) => tracing::info!(%downstream, why, "no dependent run started"),
            Err(Err(error)) => return Err(error.into()),
        }
    }
    Ok(())
}

/// Starts `workflow_id` as the child of `parent`; `Ok(Some(reason))` when it never can.
pub async fn start_child(
    starter: &Starter,
    tenant: &TenantId,
    workflow_id: WorkflowId,
    parent: &ParentStep,
    input: Option<serde_json::Value>,
) -> Result<Option<String>, NatsError> {
    let a = &parent.attempt;
    let order = StartOrder {
        workflow_id,
        trigger_reason: TriggerReason::Dependency,
        triggered_by: Some(format!(
            "step {} of execution {}",
            a.step_id, a.execution_id
        )),
        input,
        // One child per attempt of the parent step, however often this is performed.
        idempotency_key: Some(format!(
            "child:{}:{}:{}",
            a.execution_id, a.step_id, a.number
        )),
        triggered: true,
        parent: Some(parent.clone()),
    };
    match starter.start(tenant, order).await {
        Ok(started) => {
            tracing::info!(%workflow_id, execution = %started.execution_id, "child run started");
            Ok(None)
        }
        Err(error) => match classify(error) {
            Ok(why) => Ok(Some(format!(
                "the child run of workflow {workflow_id} cannot start: {why}"
            ))),
            Err(error) => Err(error.into()),
        },
    }
}

/// Records that a completed run of `upstream` starts `downstream` (idempotent).
pub(crate) async fn link(
    links: &kv::Store,
    tenant: &TenantId,
    upstream: WorkflowId,
    downstream: WorkflowId,
) -> Result<(), NatsError> {
    links
        .put(
            subjects::after_link(tenant, upstream, downstream),
            "".into(),
        )
        .await?;
    Ok(())
}
