//! Every fact Cadre records, in the past tense, with its CloudEvents `type` and its subject.

use serde::{Deserialize, Serialize};

use crate::ids::{AgentId, EventId, ExecutionId, KnowledgeId, StepId, TenantId, WorkflowId};
use crate::model::{
    AgentProfile, CommunicationStyle, InteractionType, KnowledgeType, StepResult, TriggerReason,
    WorkflowDefinition, WorkflowStep,
};
use crate::subjects;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentRegistered {
    pub agent: AgentProfile,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowCreated {
    pub workflow: WorkflowDefinition,
}

/// An execution began. It carries a snapshot of the workflow and of its agents, so the
/// execution's state machine needs nothing outside its own events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionStarted {
    pub execution_id: ExecutionId,
    pub workflow_id: WorkflowId,
    /// 1 for a workflow's first execution, then 2, 3, ...
    pub execution_number: u32,
    pub trigger_reason: TriggerReason,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub triggered_by: Option<String>,
    pub workflow: WorkflowDefinition,
    pub agents: Vec<AgentProfile>,
}

/// Why the coordinator chose an agent for a step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    rename_all = "camelCase",
    rename_all_fields = "camelCase",
    tag = "kind"
)]
pub enum AssignmentReason {
    /// The step named this agent as `preferredAgentId`.
    PreferredAgent,
    /// The agent's role equals the step's `assignedAgentRole`.
    RoleMatch { role: String },
    /// The agent matched the most of the step's `requiredSkills` (ties go to the less loaded).
    SkillMatch {
        matched: Vec<String>,
        active_steps: u32,
    },
    /// No agent matched any requirement; the least loaded participant was taken.
    LeastLoaded { active_steps: u32 },
}

impl AssignmentReason {
    /// A sentence for people reading the interaction log.
    pub fn describe(&self) -> String {
        match self {
            Self::PreferredAgent => "preferred agent of the step".to_owned(),
            Self::RoleMatch { role } => format!("role matches '{role}'"),
            Self::SkillMatch {
                matched,
                active_steps,
            } => format!(
                "best skill match ({}), {active_steps} active step(s)",
                matched.join(", ")
            ),
            Self::LeastLoaded { active_steps } => {
                format!("no skill match; least loaded agent ({active_steps} active step(s))")
            }
        }
    }
}

/// The coordinator handed a step to an agent. It carries everything the worker needs, so a
/// worker reads no other event to do the step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepScheduled {
    pub execution_id: ExecutionId,
    pub workflow_id: WorkflowId,
    pub workflow_name: String,
    pub step: WorkflowStep,
    /// 1 for the first try of a step; a retry schedules the next attempt.
    pub attempt: u32,
    pub agent: AgentProfile,
    pub reason: AssignmentReason,
    /// The coordinator agent, if the workflow has one; it is the delegating party.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coordinator_agent_id: Option<AgentId>,
    pub knowledge_sharing: bool,
    /// How the workflow wants its agents to write.
    #[serde(default)]
    pub communication_style: CommunicationStyle,
    /// Stream sequence the coordinator had seen when it scheduled the step. Knowledge shared
    /// by the steps this one depends on was stored at or before it, so a worker that waits
    /// until the read models reach it sees that knowledge.
    pub knowledge_watermark: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepStarted {
    pub execution_id: ExecutionId,
    pub workflow_id: WorkflowId,
    pub step_id: StepId,
    pub step_name: String,
    pub attempt: u32,
    pub agent_id: AgentId,
    /// The `StepScheduled` event this attempt answers.
    pub scheduled_event_id: EventId,
}

/// A message between agents, or from an agent to the team (`toAgentId` absent).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InteractionRecorded {
    pub execution_id: ExecutionId,
    pub workflow_id: WorkflowId,
    pub from_agent_id: AgentId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_agent_id: Option<AgentId>,
    pub interaction_type: InteractionType,
    pub message: String,
    #[serde(default)]
    pub context_data: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub related_step_id: Option<StepId>,
    #[serde(default)]
    pub requires_response: bool,
}

/// An agent added to its workflow's shared knowledge. Knowledge belongs to the workflow: every
/// later step, of this execution or of the next ones, may read it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KnowledgeShared {
    pub knowledge_id: KnowledgeId,
    pub workflow_id: WorkflowId,
    pub execution_id: ExecutionId,
    pub step_id: StepId,
    pub title: String,
    pub content: String,
    pub knowledge_type: KnowledgeType,
    pub created_by_agent_id: AgentId,
    pub relevance_score: f64,
    #[serde(default)]
    pub tags: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepCompleted {
    pub execution_id: ExecutionId,
    pub workflow_id: WorkflowId,
    pub step_id: StepId,
    pub step_name: String,
    pub attempt: u32,
    pub agent_id: AgentId,
    pub result: StepResult,
    pub provider: String,
    pub model: String,
    pub duration_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepFailed {
    pub execution_id: ExecutionId,
    pub workflow_id: WorkflowId,
    pub step_id: StepId,
    pub step_name: String,
    pub attempt: u32,
    pub agent_id: AgentId,
    pub error: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionCompleted {
    pub execution_id: ExecutionId,
    pub workflow_id: WorkflowId,
    /// Summary and output of each step no other step depends on, by step id.
    pub final_output: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionFailed {
    pub execution_id: ExecutionId,
    pub workflow_id: WorkflowId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_step_id: Option<StepId>,
    pub error: String,
}

/// Every event type. The CloudEvents `type` of each is `dev.cadre.<aggregate>.<fact>.v<N>`.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    AgentRegistered(AgentRegistered),
    WorkflowCreated(WorkflowCreated),
    KnowledgeShared(KnowledgeShared),
    ExecutionStarted(Box<ExecutionStarted>),
    StepScheduled(Box<StepScheduled>),
    StepStarted(StepStarted),
    InteractionRecorded(InteractionRecorded),
    StepCompleted(Box<StepCompleted>),
    StepFailed(StepFailed),
    ExecutionCompleted(ExecutionCompleted),
    ExecutionFailed(ExecutionFailed),
}

/// The CloudEvents `type` strings, one per variant; a new payload version adds a new string
/// and an upcast in [`crate::envelope`].
pub mod types {
    pub const AGENT_REGISTERED: &str = "dev.cadre.agent.registered.v1";
    pub const WORKFLOW_CREATED: &str = "dev.cadre.workflow.created.v1";
    pub const KNOWLEDGE_SHARED: &str = "dev.cadre.workflow.knowledge_shared.v1";
    pub const EXECUTION_STARTED: &str = "dev.cadre.execution.started.v1";
    pub const STEP_SCHEDULED: &str = "dev.cadre.execution.step_scheduled.v1";
    pub const STEP_STARTED: &str = "dev.cadre.execution.step_started.v1";
    pub const INTERACTION_RECORDED: &str = "dev.cadre.execution.interaction_recorded.v1";
    pub const STEP_COMPLETED: &str = "dev.cadre.execution.step_completed.v1";
    pub const STEP_FAILED: &str = "dev.cadre.execution.step_failed.v1";
    pub const EXECUTION_COMPLETED: &str = "dev.cadre.execution.completed.v1";
    pub const EXECUTION_FAILED: &str = "dev.cadre.execution.failed.v1";
}

impl Event {
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::AgentRegistered(_) => types::AGENT_REGISTERED,
            Self::WorkflowCreated(_) => types::WORKFLOW_CREATED,
            Self::KnowledgeShared(_) => types::KNOWLEDGE_SHARED,
            Self::ExecutionStarted(_) => types::EXECUTION_STARTED,
            Self::StepScheduled(_) => types::STEP_SCHEDULED,
            Self::StepStarted(_) => types::STEP_STARTED,
            Self::InteractionRecorded(_) => types::INTERACTION_RECORDED,
            Self::StepCompleted(_) => types::STEP_COMPLETED,
            Self::StepFailed(_) => types::STEP_FAILED,
            Self::ExecutionCompleted(_) => types::EXECUTION_COMPLETED,
            Self::ExecutionFailed(_) => types::EXECUTION_FAILED,
        }
    }

    /// The NATS subject this event is stored under.
    pub fn nats_subject(&self, tenant: &TenantId) -> String {
        use subjects::{agent, execution, step, workflow};
        match self {
            Self::AgentRegistered(e) => agent(tenant, e.agent.id, subjects::REGISTERED),
            Self::WorkflowCreated(e) => workflow(tenant, e.workflow.id, subjects::CREATED),
            Self::KnowledgeShared(e) => subjects::knowledge(tenant, e.workflow_id),
            Self::ExecutionStarted(e) => {
                execution(tenant, e.workflow_id, e.execution_id, subjects::STARTED)
            }
            Self::StepScheduled(e) => step(
                tenant,
                e.workflow_id,
                e.execution_id,
                &e.step.id,
                subjects::SCHEDULED,
            ),
            Self::StepStarted(e) => step(
                tenant,
                e.workflow_id,
                e.execution_id,
                &e.step_id,
                subjects::STARTED,
            ),
            Self::InteractionRecorded(e) => {
                subjects::interactions(tenant, e.workflow_id, e.execution_id)
            }
            Self::StepCompleted(e) => step(
                tenant,
                e.workflow_id,
                e.execution_id,
                &e.step_id,
                subjects::COMPLETED,
            ),
            Self::StepFailed(e) => step(
                tenant,
                e.workflow_id,
                e.execution_id,
                &e.step_id,
                subjects::FAILED,
            ),
            Self::ExecutionCompleted(e) => {
                execution(tenant, e.workflow_id, e.execution_id, subjects::COMPLETED)
            }
            Self::ExecutionFailed(e) => {
                execution(tenant, e.workflow_id, e.execution_id, subjects::FAILED)
            }
        }
    }

    /// The CloudEvents `subject`: the execution for execution events, else the entity.
    pub fn ce_subject(&self) -> String {
        match self {
            Self::AgentRegistered(e) => e.agent.id.to_string(),
            Self::WorkflowCreated(e) => e.workflow.id.to_string(),
            Self::KnowledgeShared(e) => e.execution_id.to_string(),
            Self::ExecutionStarted(e) => e.execution_id.to_string(),
            Self::StepScheduled(e) => e.execution_id.to_string(),
            Self::StepStarted(e) => e.execution_id.to_string(),
            Self::InteractionRecorded(e) => e.execution_id.to_string(),
            Self::StepCompleted(e) => e.execution_id.to_string(),
            Self::StepFailed(e) => e.execution_id.to_string(),
            Self::ExecutionCompleted(e) => e.execution_id.to_string(),
            Self::ExecutionFailed(e) => e.execution_id.to_string(),
        }
    }

    /// The workflow an event belongs to, if any.
    pub fn workflow_id(&self) -> Option<WorkflowId> {
        match self {
            Self::AgentRegistered(_) => None,
            Self::WorkflowCreated(e) => Some(e.workflow.id),
            Self::KnowledgeShared(e) => Some(e.workflow_id),
            Self::ExecutionStarted(e) => Some(e.workflow_id),
            Self::StepScheduled(e) => Some(e.workflow_id),
            Self::StepStarted(e) => Some(e.workflow_id),
            Self::InteractionRecorded(e) => Some(e.workflow_id),
            Self::StepCompleted(e) => Some(e.workflow_id),
            Self::StepFailed(e) => Some(e.workflow_id),
            Self::ExecutionCompleted(e) => Some(e.workflow_id),
            Self::ExecutionFailed(e) => Some(e.workflow_id),
        }
    }

    /// The execution an event belongs to, if any.
    pub fn execution_id(&self) -> Option<ExecutionId> {
        match self {
            Self::AgentRegistered(_) | Self::WorkflowCreated(_) => None,
            Self::KnowledgeShared(e) => Some(e.execution_id),
            Self::ExecutionStarted(e) => Some(e.execution_id),
            Self::StepScheduled(e) => Some(e.execution_id),
            Self::StepStarted(e) => Some(e.execution_id),
            Self::InteractionRecorded(e) => Some(e.execution_id),
            Self::StepCompleted(e) => Some(e.execution_id),
            Self::StepFailed(e) => Some(e.execution_id),
            Self::ExecutionCompleted(e) => Some(e.execution_id),
            Self::ExecutionFailed(e) => Some(e.execution_id),
        }
    }
}
