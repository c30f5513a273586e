//! Control messages: requests to running components that are not facts of the log. They are
//! published on core NATS (no storage): whoever is listening acts, and the log stays the
//! judge, so a lost message costs only work whose result will be ignored.

use serde::{Deserialize, Serialize};

use crate::ids::{ExecutionId, StepId, TenantId};

/// Every worker listens here for calls to stop.
pub fn stop_calls_subject(tenant: &TenantId) -> String {
    format!("cadre.control.{tenant}.stop")
}

/// Every tenant's stop requests.
pub const ALL_STOP_CALLS: &str = "cadre.control.*.stop";

/// Stop the LLM calls still running for an execution: all of them, or one attempt of one
/// step. The coordinator has already recorded why (`StepTimedOut`, `ExecutionCancelled`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StopCalls {
    pub execution_id: ExecutionId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_id: Option<StepId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
}

impl StopCalls {
    /// Whether this request covers `attempt` of `step` of `execution`.
    pub fn covers(&self, execution: ExecutionId, step: &StepId, attempt: u32) -> bool {
        self.execution_id == execution
            && self.step_id.as_ref().is_none_or(|s| s == step)
            && self.attempt.is_none_or(|a| a == attempt)
    }
}
