//! Older versions of events, read as the current version.
//!
//! The log is never rewritten, so an event stored by an older release keeps its old `type` and
//! payload forever. Readers see only current payloads: each old version is translated here,
//! once, on decode. A new version of an event adds its previous `type` and translation below.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::events::{FailureCause, types};
use crate::ids::{ExecutionId, StepId, WorkflowId};

/// `ExecutionFailed` before it carried a [`FailureCause`].
pub const EXECUTION_FAILED_V1: &str = "dev.cadre.execution.failed.v1";

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ExecutionFailedV1 {
    execution_id: ExecutionId,
    workflow_id: WorkflowId,
    #[serde(default)]
    failed_step_id: Option<StepId>,
    error: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ExecutionFailedV2 {
    execution_id: ExecutionId,
    workflow_id: WorkflowId,
    cause: FailureCause,
    error: String,
}

impl From<ExecutionFailedV1> for ExecutionFailedV2 {
    fn from(v1: ExecutionFailedV1) -> Self {
        Self {
            execution_id: v1.execution_id,
            workflow_id: v1.workflow_id,
            // v1 named a step only when a step's failure ended the run.
            cause: match v1.failed_step_id {
                Some(step_id) => FailureCause::StepFailed { step_id },
                None => FailureCause::Unspecified,
            },
            error: v1.error,
        }
    }
}

/// The current `type` and payload of an event stored as an older `event_type`; `None` when
/// `event_type` is no older version this build knows.
pub fn to_current(
    event_type: &str,
    data: &RawValue,
) -> Option<serde_json::Result<(&'static str, Box<RawValue>)>> {
    fn translate<Old: for<'de> Deserialize<'de>, New: Serialize + From<Old>>(
        current: &'static str,
        data: &RawValue,
    ) -> serde_json::Result<(&'static str, Box<RawValue>)> {
        let old: Old = serde_json::from_str(data.get())?;
        Ok((current, serde_json::value::to_raw_value(&New::from(old))?))
    }
    match event_type {
        EXECUTION_FAILED_V1 => Some(translate::<ExecutionFailedV1, ExecutionFailedV2>(
            types::EXECUTION_FAILED,
            data,
        )),
        _ => None,
    }
}
