//! Every fact Cadre records, in the past tense, with its CloudEvents `type` and its subject.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::{
    AgentId, EscalationId, EventId, ExecutionId, KnowledgeId, StepId, SubscriptionId, TemplateId,
    TenantId, WorkflowId,
};
use crate::model::{
    AgentProfile, CommunicationStyle, DecisionMaking, EscalationRung, InteractionType,
    KnowledgeType, StepResult, StepType, TokenUsage, TriggerReason, WorkflowDefinition,
    WorkflowStep, WorkflowTemplate,
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
    /// The template the workflow was created from (`POST /v1/templates/{id}/workflows`);
    /// absent for a workflow written out whole, and in events recorded before templates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_id: Option<TemplateId>,
}

/// A workflow template was registered: a user's (`POST /v1/templates`), or a system template
/// the coordinator registers at start (again only with a higher `revision`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TemplateRegistered {
    pub template: WorkflowTemplate,
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
    /// What the run was started with (the seed's `executionContext`); steps see it as data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<serde_json::Value>,
    /// The step of another execution this run is a child of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<ParentStep>,
    /// When the run started (absent in events recorded before it was added).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    /// When the run must have ended (`constraints.maxExecutionTime` after its start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<DateTime<Utc>>,
    /// The participating agents' records as the coordinator had read them from the log when
    /// the run started; assignment breaks ties with them. An agent with no recorded work is
    /// absent (and absent in events recorded before records were kept).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub records: BTreeMap<AgentId, AgentRecord>,
}

/// How an agent's earlier work went, over everything the log holds of it: its attempts, the
/// reviews of its work and the tasks it completed. A figure is absent when no fact backs it
/// (an agent never reviewed has no review pass rate), never a default; the count beside each
/// figure says how many facts back it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentRecord {
    /// Attempts the agent ended: completed, reviewed (as a reviewer), failed or timed out.
    pub attempts: u64,
    /// Share of those attempts that neither failed nor timed out, 0 to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_success: Option<f64>,
    /// Reviews of the agent's work (`StepReviewed` naming it the author).
    pub reviews: u64,
    /// Share of those reviews that approved the work, 0 to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub review_pass_rate: Option<f64>,
    /// Tasks (steps of a run handed to the agent) it completed.
    pub tasks_completed: u64,
    /// Minutes from a task's first handout to its completion, averaged over those tasks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub average_completion_minutes: Option<f64>,
    /// Completed attempts whose `StepCompleted` carried a `costUsd`.
    pub costed_completions: u64,
    /// US dollars per completed attempt, averaged over the costed ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub average_cost_usd: Option<f64>,
}

/// A figure of an [`AgentRecord`], in the order assignment compares them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RecordFigure {
    TaskSuccess,
    ReviewPassRate,
    AverageCompletionMinutes,
    AverageCostUsd,
}

/// The agents' records chose between agents tied on everything assignment weighs before them
/// (skills matched, load).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordTieBreak {
    /// The first figure on which the chosen agent's record beat the next best one's.
    pub figure: RecordFigure,
    /// Both agents' figures for people, e.g. "task success: Ada 90 % over 10 attempts, Bo
    /// 50 % over 2 attempts".
    pub detail: String,
}

/// The attempt of a step that runs a child execution, and how deep the child is (1 for a
/// child of a top-level run).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ParentStep {
    #[serde(flatten)]
    pub attempt: StepAttempt,
    pub depth: u32,
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
    /// The agent's role equals the step's `assignedAgentRole` (ties go to the less loaded,
    /// then to the better record).
    RoleMatch {
        role: String,
        /// Present only when the agents' records decided.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tie_break: Option<RecordTieBreak>,
    },
    /// The agent matched the most of the step's `requiredSkills` (ties go to the less loaded,
    /// then to the better record).
    SkillMatch {
        matched: Vec<String>,
        active_steps: u32,
        /// Present only when the agents' records decided.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tie_break: Option<RecordTieBreak>,
    },
    /// No agent matched any requirement; the least loaded participant was taken (ties go to
    /// the better record).
    LeastLoaded {
        active_steps: u32,
        /// Present only when the agents' records decided.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tie_break: Option<RecordTieBreak>,
    },
    /// The step's review: an agent of `reviewerRole` if there is one, else another participant
    /// than the author (the author itself only when it works alone).
    Reviewer {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        role: Option<String>,
        author_agent_id: AgentId,
    },
    /// A seat of the panel that votes on the step's work (`decisionMaking` consensus or
    /// majority): an agent of `reviewerRole` if one has not voted yet, else another
    /// participant than the author who has not.
    Voter {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        role: Option<String>,
        author_agent_id: AgentId,
        #[serde(flatten)]
        ballot: Ballot,
    },
    /// The author of the work a reviewer sent back, to rework it.
    Rework,
    /// The agent that asked its teammates questions, to finish the step with their answers.
    Answered,
    /// The step's retries were spent and its escalation ladder's `rung` chose this agent.
    Escalated { rung: EscalationRung },
    /// A risk showed in the run and the workflow's lead rule for it gave the lead to this
    /// agent ([`LeadTaken`]).
    Lead { risk: String },
    /// The workflow's coordinator agent, to re-plan a failing run.
    Replans,
    /// The workflow's coordinator agent, to choose who takes `step_id` (seed 000's
    /// coordinator-agent assignment).
    Chooses { step_id: StepId },
    /// The workflow's coordinator agent chose this agent, for this reason.
    Delegated { reasoning: String },
    /// The coordinator agent's choice could not be taken (`why`); the step went by the usual
    /// rules instead (`fallback`).
    NotDelegated {
        why: String,
        fallback: Box<AssignmentReason>,
    },
    /// The run is failing and this agent completed the step `step_id` undoes: it compensates
    /// its own work (or, when no agent did it, the best match does).
    Compensates { step_id: StepId },
    /// A person resolving the step's escalation asked for this attempt (a retry, or this
    /// agent).
    PersonDecided {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<String>,
    },
}

impl AssignmentReason {
    /// A sentence for people reading the interaction log.
    pub fn describe(&self) -> String {
        match self {
            Self::PreferredAgent => "preferred agent of the step".to_owned(),
            Self::RoleMatch { role, tie_break } => {
                format!("role matches '{role}'{}", decided_by(tie_break))
            }
            Self::SkillMatch {
                matched,
                active_steps,
                tie_break,
            } => format!(
                "best skill match ({}), {active_steps} active step(s){}",
                matched.join(", "),
                decided_by(tie_break)
            ),
            Self::LeastLoaded {
                active_steps,
                tie_break,
            } => format!(
                "no skill match; least loaded agent ({active_steps} active step(s)){}",
                decided_by(tie_break)
            ),
            Self::Reviewer {
                role: Some(role), ..
            } => format!("reviewer of role '{role}'"),
            Self::Reviewer { role: None, .. } => "reviews another agent's work".to_owned(),
            Self::Voter { role, ballot, .. } => format!(
                "votes on another agent's work{} ({})",
                role.as_ref()
                    .map(|r| format!(" as a '{r}'"))
                    .unwrap_or_default(),
                ballot.describe()
            ),
            Self::Rework => "reworks its output after review".to_owned(),
            Self::Answered => "finishes the step with its teammates' answers".to_owned(),
            Self::Escalated { rung } => {
                format!("retries spent; escalation rung '{}'", rung.as_str())
            }
            Self::Compensates { step_id } => format!("undoes step '{step_id}'"),
            Self::Replans => "the coordinator agent re-plans the failing run".to_owned(),
            Self::Chooses { step_id } => {
                format!("the coordinator agent chooses who takes step '{step_id}'")
            }
            Self::Delegated { reasoning } => {
                format!("chosen by the coordinator agent: {reasoning}")
            }
            Self::NotDelegated { why, fallback } => format!(
                "{} (the coordinator agent's choice could not be taken: {why})",
                fallback.describe()
            ),
            Self::Lead { risk } => format!("leads the run since the '{risk}' risk showed"),
            Self::PersonDecided { by: Some(by) } => format!("{by} asked for this attempt"),
            Self::PersonDecided { by: None } => "a person asked for this attempt".to_owned(),
        }
    }
}

/// The clause [`AssignmentReason::describe`] adds when the agents' records broke a tie.
fn decided_by(tie_break: &Option<RecordTieBreak>) -> String {
    tie_break
        .as_ref()
        .map(|t| format!("; its record broke the tie: {}", t.detail))
        .unwrap_or_default()
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
    /// Deprecated, always 0: workers once waited for the read models to reach this log
    /// position; they now read what a step's dependencies handed on from the log (see
    /// [`StepCompleted::knowledge_handed_on`]). Still written so that readers of
    /// `step_scheduled.v1` that require it (workers of the previous release during a rolling
    /// upgrade) can read the event.
    #[serde(default)]
    pub knowledge_watermark: u64,
    /// The execution's input, for the agent to read as data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<serde_json::Value>,
    /// Present when this attempt reviews the step's work instead of doing it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub review: Option<ReviewRequest>,
    /// A reviewer's feedback the author must address in this attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feedback: Option<String>,
    /// When this attempt times out (the step's `timeoutMinutes` after it was scheduled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_at: Option<DateTime<Utc>>,
    /// Whether `timeout_at` comes before the time the execution's step time-out timer is armed
    /// for (or it is not armed), so that the timer is armed again for `timeout_at`. One timer
    /// guards every attempt of an execution: a later deadline is checked when the earlier one
    /// fires (see [`StepDeadlinesChecked`]). Absent in logs of releases that armed one timer per
    /// attempt (`Timer::StepTimeout`), which the coordinator still arms for such an attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arms_step_timer: Option<bool>,
    /// The other participants, whom the agent may ask questions by name or role.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub team: Vec<Teammate>,
    /// The answers to the questions the step's previous attempt asked: present when this
    /// attempt finishes the step with them (it may ask no further question that waits).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub answers: Vec<QuestionAnswer>,
    /// The step's failed attempts, when its escalation ladder (or a person) handed it to this
    /// attempt: what went wrong before, so as not to do it again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub earlier_failures: Vec<FailedAttempt>,
    /// The seed's `TaskHandoff`s that go with this attempt, when other agents completed some
    /// of the step's dependencies (see [`StepScheduled::handed_off`]). Only on a step's first
    /// attempt. They travel in the scheduling rather than as events of their own (as
    /// [`TaskHandedOff`] before them): a scheduling is one append, never stored without its
    /// handoffs nor they without it, and the coordinators' inbox copies one event for it
    /// instead of two.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handoff: Option<Handoff>,
}

impl StepScheduled {
    /// The handoff as the seed's `TaskHandoff` records, one per handing agent, in dependency
    /// order: from that agent to this attempt's.
    pub fn handed_off(&self) -> impl Iterator<Item = TaskHandedOff> + '_ {
        self.handoff.iter().flat_map(move |handoff| {
            handoff.from.iter().map(move |giver| TaskHandedOff {
                execution_id: self.execution_id,
                workflow_id: self.workflow_id,
                from_agent: giver.agent_id,
                to_agent: self.agent.id,
                task_id: self.step.id.clone(),
                task_name: self.step.name.clone(),
                context: HandoffContext {
                    completed_work: giver.completed_work.clone(),
                    remaining_work: handoff.remaining_work.clone(),
                    constraints: handoff.constraints.clone(),
                    dependencies: handoff.dependencies.clone(),
                },
                success_criteria: handoff.success_criteria.clone(),
                estimated_time: self.step.timeout_minutes,
                escalation_conditions: handoff.escalation_conditions.clone(),
            })
        })
    }
}

/// A step handed over to the agent its [`StepScheduled`] names, by each other agent that
/// completed some of its dependencies: the [`TaskHandedOff`] records without what the
/// scheduling already says (the execution, the step, the receiving agent, the step's
/// `timeoutMinutes` as the estimated time), and what they share said once, so that its size
/// grows with the handing agents plus the dependencies, not with their product.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Handoff {
    /// Who hands the step over, in dependency order, each with what it did.
    pub from: Vec<HandingAgent>,
    /// What is left: the step's `instructions`, cut to a bounded length.
    pub remaining_work: String,
    /// The declared rules that bind the work, in words (see [`HandoffContext::constraints`]).
    #[serde(default)]
    pub constraints: Vec<String>,
    /// Every step the handed-over step waits for, as `<step id> (<name>): <state>`.
    #[serde(default)]
    pub dependencies: Vec<String>,
    /// The step's `expectedOutput`, then its `validationCriteria`, if any.
    pub success_criteria: String,
    /// When the step stops being the agent's alone to finish: the definition's time-out, retry
    /// and review rules, in words.
    #[serde(default)]
    pub escalation_conditions: Vec<String>,
}

/// One agent that hands a step over, and what it did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HandingAgent {
    pub agent_id: AgentId,
    /// One line per dependency it completed, `<step name>: <its summary>`, each summary cut to
    /// a few hundred characters (see [`HandoffContext::completed_work`]).
    pub completed_work: String,
}

/// A participant of an execution, as other agents see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Teammate {
    pub id: AgentId,
    pub name: String,
    pub role: String,
}

impl Teammate {
    pub fn of(agent: &AgentProfile) -> Self {
        Self {
            id: agent.id,
            name: agent.name.clone(),
            role: agent.role.clone(),
        }
    }

    /// Whether a question's addressee `to` (`@` optional) names this teammate: its id, or its
    /// name or role in any case.
    pub fn is_addressed_by(&self, to: &str) -> bool {
        let to = to.trim().trim_start_matches('@');
        self.id.to_string() == to
            || self.name.eq_ignore_ascii_case(to)
            || self.role.eq_ignore_ascii_case(to)
    }
}

/// Whether a question's addressee means the whole team: none, or `everyone`, `all`, `team`.
pub fn is_everyone(to: Option<&str>) -> bool {
    to.is_none_or(|to| {
        let to = to.trim().trim_start_matches('@');
        ["everyone", "all", "team", ""]
            .iter()
            .any(|word| to.eq_ignore_ascii_case(word))
    })
}

/// What became of one question, for the agent that asked it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QuestionAnswer {
    pub question: String,
    /// Who was asked: a teammate's name, or what the asker wrote when nobody matched.
    pub asked: String,
    /// Its answer; absent when none came (see `note`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
    /// Why there is no answer: the deadline passed, nobody on the team matched, the
    /// teammate's model failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Which attempt of which step, by which agent: what every step-attempt event shares. Its
/// fields sit at the top level of the event's JSON (`stepId`, `attempt`, ...).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepAttempt {
    pub execution_id: ExecutionId,
    pub workflow_id: WorkflowId,
    pub step_id: StepId,
    pub step_name: String,
    /// 1 for the first try of the step.
    #[serde(rename = "attempt")]
    pub number: u32,
    pub agent_id: AgentId,
}

impl StepAttempt {
    /// The attempt a `StepScheduled` hands out.
    pub fn of(scheduled: &StepScheduled) -> Self {
        Self {
            execution_id: scheduled.execution_id,
            workflow_id: scheduled.workflow_id,
            step_id: scheduled.step.id.clone(),
            step_name: scheduled.step.name.clone(),
            number: scheduled.attempt,
            agent_id: scheduled.agent.id,
        }
    }
}

/// A step's first attempt goes to another agent than the one that completed work it depends
/// on: the seed's `TaskHandoff`, from that agent to the step's agent, so the next agent's
/// starting point is on record. Not recorded for retries, reviews and reworks, nor for a step
/// a child workflow runs.
///
/// The record readers see (the read models, the API). On the log, since `handoff` was added to
/// [`StepScheduled`], handoffs travel in their step's scheduling ([`StepScheduled::handed_off`]
/// gives them in this shape). Logs written before hold it as an event of its own, stored just
/// before its `StepScheduled`, which every reader still folds.
///
/// Everything in it is taken from the workflow definition and the execution's events, as
/// bounded excerpts (see `context`): the whole results of the dependencies are at
/// `GET /v1/executions/{id}/steps/{stepId}/result`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskHandedOff {
    pub execution_id: ExecutionId,
    pub workflow_id: WorkflowId,
    /// The agent that completed the dependencies named in `context.completedWork`.
    pub from_agent: AgentId,
    /// The agent the step is now assigned to.
    pub to_agent: AgentId,
    /// The step handed over.
    pub task_id: StepId,
    pub task_name: String,
    pub context: HandoffContext,
    /// The step's `expectedOutput`, then its `validationCriteria`, if any.
    pub success_criteria: String,
    /// In minutes: the step's `timeoutMinutes`, the longest one attempt may take (a step
    /// declares no estimate of its own); absent when the step has no timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated_time: Option<f64>,
    /// When the step stops being the agent's alone to finish: the definition's time-out, retry
    /// and review rules, in words.
    #[serde(default)]
    pub escalation_conditions: Vec<String>,
}

/// What the next agent takes over (the seed's `TaskHandoff.context`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HandoffContext {
    /// What the handing agent did: one line per dependency it completed, `<step name>: <its
    /// summary>`, each summary cut to a few hundred characters.
    pub completed_work: String,
    /// What is left: the step's `instructions`, cut to a bounded length.
    pub remaining_work: String,
    /// The declared rules that bind the work (time-out, running alone, the run's deadline,
    /// review), in words.
    #[serde(default)]
    pub constraints: Vec<String>,
    /// Every step the handed-over step waits for, as `<step id> (<name>): <state>`.
    #[serde(default)]
    pub dependencies: Vec<String>,
}

/// How soon an agent needs the support it asks for (the seed's `urgency`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Urgency {
    Low,
    Medium,
    High,
    Critical,
}

/// Support an agent asks for (the seed's `requestedSupport` entry).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SupportRequest {
    /// The agent asked, when the request names one; absent: anyone on the team.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_agent: Option<AgentId>,
    pub reason: String,
    pub urgency: Urgency,
}

/// An agent says how its work goes (the seed's `AgentStatus`), for what no other event says:
/// what blocks it and the support it asks for. Its starts, waits, completions and failures are
/// already facts of their own (`StepStarted`, `StepDeferred`, `StepCompleted`, `StepFailed`,
/// ...), from which the status read model is projected without this event; a worker publishes
/// it only to add to them, with an id derived from the step's `StepScheduled` id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentStatusReported {
    pub agent_id: AgentId,
    /// The step attempt the agent works on, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_task: Option<StepAttempt>,
    /// Percent done, 0 to 100 (readers cap larger values at 100).
    pub progress: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated_completion: Option<DateTime<Utc>>,
    /// What stops the agent now, in words; empty when nothing does.
    #[serde(default)]
    pub blockers: Vec<String>,
    #[serde(default)]
    pub requested_support: Vec<SupportRequest>,
}

/// Which of seed 002's alert conditions an agent's measured performance crossed (see
/// [`AlertRaised`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertCondition {
    /// More than a fifth of the agent's ended attempts failed or timed out.
    FailureRate,
    /// The agent's completed tasks took more than one and a half times their estimates.
    SlowCompletion,
    /// The agent's failures escalated several tasks of one step type.
    RepeatedEscalations,
    /// Reviewers approved too little of the agent's work: quality under 7 of 10.
    LowQuality,
}

impl AlertCondition {
    pub const ALL: [Self; 4] = [
        Self::FailureRate,
        Self::SlowCompletion,
        Self::RepeatedEscalations,
        Self::LowQuality,
    ];

    /// The wire name (`failure_rate`, ...), also a subject token.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FailureRate => "failure_rate",
            Self::SlowCompletion => "slow_completion",
            Self::RepeatedEscalations => "repeated_escalations",
            Self::LowQuality => "low_quality",
        }
    }
}

/// An agent's measured performance crossed one of the alert conditions (seed 002's "Alert
/// Conditions"): it did not hold before the fact at `execution_id`/`step_id`, and holds after
/// it. Raised once per crossing: a condition that clears and holds again is raised again,
/// with the next `crossing`. The coordinator derives the event's id from the agent, the
/// condition (and task type) and the crossing, and appends it only where no alert of that
/// crossing is stored, so a replay of the log never raises it twice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AlertRaised {
    pub agent_id: AgentId,
    pub condition: AlertCondition,
    /// The step type whose tasks escalated (`repeatedEscalations` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_type: Option<StepType>,
    /// 1 the first time the condition held for the agent (and task type), then 2 after it
    /// cleared and held again, ...
    pub crossing: u32,
    /// What was measured, in the condition's unit: percent of attempts failed
    /// (`failureRate`), percent of the estimates taken (`slowCompletion`), tasks escalated
    /// (`repeatedEscalations`), quality score 0-10 (`lowQuality`).
    pub value: f64,
    /// The limit `value` passed, in the same unit.
    pub threshold: f64,
    /// How many facts `value` is measured over: attempts, tasks or reviews.
    pub sample: u64,
    /// What happened, in words.
    pub message: String,
    /// The fact that made the condition hold: a step of a run.
    pub workflow_id: WorkflowId,
    pub execution_id: ExecutionId,
    pub step_id: StepId,
}

impl AlertRaised {
    /// What the alert is about for its agent, as a subject token: the condition, and for
    /// `repeatedEscalations` the task type (`repeated_escalations_review`). One alert is
    /// stored per key and crossing.
    pub fn alert_key(&self) -> String {
        match self.task_type {
            Some(task_type) => format!("{}_{}", self.condition.as_str(), task_type.as_str()),
            None => self.condition.as_str().to_owned(),
        }
    }
}

/// A webhook subscription was made: Cadre's events whose `type` matches `event_types` are
/// POSTed to `url` as CloudEvents in HTTP structured mode, signed the Standard Webhooks way
/// with a secret kept outside the log. It receives what is stored after it was made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionCreated {
    pub subscription_id: SubscriptionId,
    /// An `http` or `https` URL.
    pub url: String,
    /// Event types it receives: exact types, or prefixes ending in `*`
    /// (`dev.cadre.execution.*`). Empty: every type.
    #[serde(default)]
    pub event_types: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

impl SubscriptionCreated {
    /// Whether an event of `event_type` goes to this subscription.
    pub fn wants(&self, event_type: &str) -> bool {
        self.event_types.is_empty()
            || self
                .event_types
                .iter()
                .any(|wanted| match wanted.strip_suffix('*') {
                    Some(prefix) => event_type.starts_with(prefix),
                    None => event_type == wanted,
                })
    }
}

/// A webhook subscription was deleted: nothing more is delivered to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionDeleted {
    pub subscription_id: SubscriptionId,
}

/// One try to deliver an event to a subscription, and how the endpoint answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookDelivery {
    pub subscription_id: SubscriptionId,
    /// The delivered event (also the `webhook-id` header).
    pub event_id: EventId,
    pub event_type: String,
    /// 1 for the first try.
    pub attempt: u32,
    /// The endpoint's HTTP status; absent when it did not answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Milliseconds from sending to the answer (or the failure).
    pub duration_ms: u64,
}

/// A delivery failed: a status other than 2xx, a refused connection or a time-out. It is
/// tried again after `retry_in_seconds`, or never when `retry_in_seconds` is absent (the
/// attempts allowed are spent).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookDeliveryFailed {
    #[serde(flatten)]
    pub delivery: WebhookDelivery,
    pub error: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_in_seconds: Option<u64>,
}

/// What a reviewer is asked to judge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReviewRequest {
    /// 1 for the first review of the step.
    pub round: u32,
    pub author_agent_id: AgentId,
    pub summary: String,
    pub output: String,
    /// The reviewer's seat when a panel votes on the work; absent for a lone reviewer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ballot: Option<Ballot>,
}

/// One seat of a panel voting on a step's work: seat `seat` (1-based) of `seats`, under
/// `rule`. Voters are asked one at a time and judge the work alone (no voter sees another's
/// vote); the ballot closes as soon as the votes still to come cannot change its outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Ballot {
    pub rule: DecisionMaking,
    pub seat: u32,
    pub seats: u32,
}

impl Ballot {
    /// `seat 2 of 3, majority`.
    pub fn describe(&self) -> String {
        format!(
            "seat {} of {}, {}",
            self.seat,
            self.seats,
            self.rule.as_str()
        )
    }
}

/// One vote of a panel, as its voter's `StepReviewed` gave it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Vote {
    pub agent_id: AgentId,
    pub approved: bool,
    pub feedback: String,
}

/// A panel's votes on a step's work settled its outcome (see [`DecisionMaking::tally`]):
/// approved, the step completes with the work; rejected, the work goes back to its author with
/// the dissenting voters' feedback (or, after `maxReviewRounds`, the step is rejected).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VotesTallied {
    pub execution_id: ExecutionId,
    pub workflow_id: WorkflowId,
    pub step_id: StepId,
    pub step_name: String,
    /// The attempt of the vote that settled it.
    pub attempt: u32,
    /// 1 for the first round of votes on the step.
    pub round: u32,
    pub rule: DecisionMaking,
    pub seats: u32,
    /// The votes cast, in the order they were given; fewer than `seats` when the outcome
    /// settled early.
    pub votes: Vec<Vote>,
    pub approved: bool,
    /// Whose work was voted on.
    pub author_agent_id: AgentId,
}

impl VotesTallied {
    /// How many of the votes approved.
    pub fn approvals(&self) -> usize {
        self.votes.iter().filter(|v| v.approved).count()
    }

    /// The feedback of the voters who carried the outcome, one voter to a paragraph: for a
    /// rejection, what the author reworks with.
    pub fn feedback(&self) -> String {
        self.votes
            .iter()
            .filter(|v| v.approved == self.approved)
            .map(|v| v.feedback.trim())
            .filter(|f| !f.is_empty())
            .collect::<Vec<_>>()
            .join("\n\n")
    }
}

/// A reviewer judged a step's work: approved, or sent back with feedback.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepReviewed {
    /// The review attempt (its agent is the reviewer).
    #[serde(flatten)]
    pub attempt: StepAttempt,
    pub round: u32,
    /// Whose work was reviewed.
    pub author_agent_id: AgentId,
    pub approved: bool,
    pub feedback: String,
    /// The voter's seat when a panel votes ([`ReviewRequest::ballot`]): the vote alone does
    /// not settle the step; [`VotesTallied`] does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ballot: Option<Ballot>,
    /// What the reviewer's call used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<CallUsage>,
}

/// A worker took the attempt and began it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepStarted {
    #[serde(flatten)]
    pub attempt: StepAttempt,
    /// The `StepScheduled` event this attempt answers.
    pub scheduled_event_id: EventId,
    /// When the attempt times out, copied from its `StepScheduled` (absent when the step has no
    /// `timeoutMinutes`, and in events recorded before it was added): the agent's estimated
    /// completion in its status read model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_at: Option<DateTime<Utc>>,
}

/// The attempt's LLM provider could not answer now (rate limited, overloaded, unreachable,
/// its circuit open): the step waits, holding no worker, until `retry_at`, when it is handed to
/// the workers again. The attempt goes on; it fails only when its retry budget (time, counted
/// from `waiting_since`) runs out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepDeferred {
    #[serde(flatten)]
    pub attempt: StepAttempt,
    /// What the provider said, naming the provider, model and URL.
    pub error: String,
    /// When the step is handed to the workers again: the provider's `Retry-After`, else a
    /// jittered backoff.
    pub retry_at: DateTime<Utc>,
    /// 1 for the attempt's first wait, then 2, 3, ...
    pub deferral: u32,
    /// When the attempt's first transient failure happened.
    pub waiting_since: DateTime<Utc>,
}

/// One question an agent's answer asks, as the agent wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AskedQuestion {
    /// `q1`, `q2`, ... in the order of the answer.
    pub question_id: String,
    /// Whom it is for, by agent id, name or role; absent (or `everyone`) for every other
    /// participant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    pub text: String,
}

/// An attempt's agent asked its teammates questions it needs answered before it can finish the
/// step. The attempt holds no worker while it waits: the coordinator hands each question to
/// its addressees (`QuestionAssigned`) and, once all have answered or the workflow's deadline
/// passed, schedules the next attempt of the step with the answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QuestionsAsked {
    #[serde(flatten)]
    pub attempt: StepAttempt,
    pub questions: Vec<AskedQuestion>,
    /// The model that wrote them and what its call used, for the usage read models.
    #[serde(flatten)]
    pub usage: CallUsage,
}

/// Which model an LLM call went to and what it used and cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CallUsage {
    pub provider: String,
    pub model: String,
    pub tokens: TokenUsage,
    /// In US dollars, from the workers' price table; absent when the model has no price there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
}

/// The coordinator handed one question to one teammate (a question for everyone is handed to
/// each of them). Carries everything the worker needs to answer as that teammate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QuestionAssigned {
    pub execution_id: ExecutionId,
    pub workflow_id: WorkflowId,
    pub step_id: StepId,
    pub step_name: String,
    /// The asking attempt.
    pub attempt: u32,
    pub question_id: String,
    pub question: String,
    pub asker: Teammate,
    /// Who answers: the teammate the question was for.
    pub recipient: AgentProfile,
    /// Whether the question was for everyone.
    pub broadcast: bool,
    /// When the asker stops waiting.
    pub deadline_at: DateTime<Utc>,
    #[serde(default)]
    pub communication_style: CommunicationStyle,
}

/// A teammate answered a question, or could not (`answer` absent, `error` says why).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QuestionAnswered {
    pub execution_id: ExecutionId,
    pub workflow_id: WorkflowId,
    pub step_id: StepId,
    /// The asking attempt.
    pub attempt: u32,
    pub question_id: String,
    /// The teammate who answered.
    pub agent_id: AgentId,
    /// The `QuestionAssigned` event this answers: the interaction it completes.
    pub assigned_event_id: EventId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(flatten)]
    pub usage: CallUsage,
}

/// The asker's deadline passed with questions unanswered. With `failed` the attempt failed
/// (`onMissedDeadline: fail`); otherwise the step goes on with the answers it has.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QuestionsExpired {
    #[serde(flatten)]
    pub attempt: StepAttempt,
    /// Who did not answer which question.
    pub unanswered: Vec<Unanswered>,
    pub failed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Unanswered {
    pub question_id: String,
    pub agent_id: AgentId,
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

/// Another agent confirmed a piece of the workflow's knowledge while working on a step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KnowledgeValidated {
    pub knowledge_id: KnowledgeId,
    pub workflow_id: WorkflowId,
    pub execution_id: ExecutionId,
    pub step_id: StepId,
    pub agent_id: AgentId,
}

/// An agent replaced a piece of the workflow's knowledge with newer knowledge; the old piece is
/// no longer offered to steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KnowledgeSuperseded {
    /// The knowledge replaced.
    pub knowledge_id: KnowledgeId,
    /// The knowledge that replaces it.
    pub superseded_by: KnowledgeId,
    pub workflow_id: WorkflowId,
    pub execution_id: ExecutionId,
    pub step_id: StepId,
    pub agent_id: AgentId,
    #[serde(default)]
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepCompleted {
    #[serde(flatten)]
    pub attempt: StepAttempt,
    pub result: StepResult,
    pub provider: String,
    pub model: String,
    pub duration_ms: u64,
    /// What the step's LLM calls cost in US dollars, from the workers' price table; absent
    /// when the model has no price there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
    /// The workflow knowledge the step's prompt carried: each use counts once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub knowledge_used: Vec<KnowledgeId>,
    /// What the steps that depend on this one are to see, read with its result from the log
    /// so that none of them waits for the read models: the knowledge the step shared (its
    /// `KnowledgeShared` events, stored before this one), then the knowledge its own
    /// dependencies handed on to it that its prompt showed (so it reaches their dependents
    /// too, within each prompt's knowledge limit).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub knowledge_handed_on: Vec<SharedKnowledge>,
    /// Why the agent's own model did not answer, when its fallback (`provider`, `model`) did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_reason: Option<String>,
    /// What the agent told its team as it finished, in the order it said it: its questions and
    /// concerns, the knowledge it shared, its confirmations and supersessions of knowledge its
    /// prompt showed, and the conflicts it flagged. Stored with the result, so that a step's
    /// end is one event; each keeps the id and the payload it has as an event of its own, and
    /// readers apply it as that event. Logs written before the step's end was one event store
    /// these as events of their own, just before the completion.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "known_told"
    )]
    pub told: Vec<Told>,
}

/// The entries of a completion's `told` of a type this build knows: one of a kind added later
/// is skipped, as an event of an unknown type is, rather than failing the whole completion.
/// (Events are JSON: each entry's `data` is read as raw JSON, then as its type says.)
fn known_told<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<Told>, D::Error> {
    use serde_json::value::RawValue;
    #[derive(Deserialize)]
    struct Entry {
        id: EventId,
        #[serde(rename = "type")]
        event_type: String,
        data: Box<RawValue>,
    }
    fn read<'a, T: Deserialize<'a>, E: serde::de::Error>(data: &'a RawValue) -> Result<T, E> {
        serde_json::from_str(data.get()).map_err(E::custom)
    }
    let mut told = Vec::new();
    for Entry {
        id,
        event_type,
        data,
    } in Vec::<Entry>::deserialize(deserializer)?
    {
        let event = match event_type.as_str() {
            types::INTERACTION_RECORDED => ToldEvent::InteractionRecorded(read(&data)?),
            types::KNOWLEDGE_SHARED => ToldEvent::KnowledgeShared(read(&data)?),
            types::KNOWLEDGE_VALIDATED => ToldEvent::KnowledgeValidated(read(&data)?),
            types::KNOWLEDGE_SUPERSEDED => ToldEvent::KnowledgeSuperseded(read(&data)?),
            _ => continue,
        };
        told.push(Told { id, event });
    }
    Ok(told)
}

/// One thing a step told its team, inside its [`StepCompleted`]: the CloudEvent it stands for
/// without the attributes it shares with the completion (`source`, `time`, the tenant) —
/// `{"id", "type", "data"}`, where `type` is the event type of its own (`..._shared.v1`).
/// Read only as part of a completion, which skips entries of a type it does not know.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Told {
    /// Its event id: derived from the step's scheduling, so that a redelivered step tells the
    /// same, and a read model keyed by event id keeps one row for it.
    pub id: EventId,
    #[serde(flatten)]
    pub event: ToldEvent,
}

/// The kinds of event a step's completion may carry (see [`Told`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", content = "data")]
pub enum ToldEvent {
    #[serde(rename = "dev.cadre.execution.interaction_recorded.v1")]
    InteractionRecorded(InteractionRecorded),
    #[serde(rename = "dev.cadre.workflow.knowledge_shared.v1")]
    KnowledgeShared(KnowledgeShared),
    #[serde(rename = "dev.cadre.workflow.knowledge_validated.v1")]
    KnowledgeValidated(KnowledgeValidated),
    #[serde(rename = "dev.cadre.workflow.knowledge_superseded.v1")]
    KnowledgeSuperseded(KnowledgeSuperseded),
}

impl From<ToldEvent> for Event {
    fn from(told: ToldEvent) -> Self {
        match told {
            ToldEvent::InteractionRecorded(e) => Self::InteractionRecorded(e),
            ToldEvent::KnowledgeShared(e) => Self::KnowledgeShared(e),
            ToldEvent::KnowledgeValidated(e) => Self::KnowledgeValidated(e),
            ToldEvent::KnowledgeSuperseded(e) => Self::KnowledgeSuperseded(e),
        }
    }
}

/// A piece of knowledge as a step's [`StepCompleted`] repeats it from its `KnowledgeShared`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SharedKnowledge {
    pub knowledge_id: KnowledgeId,
    pub title: String,
    pub knowledge_type: KnowledgeType,
    pub content: String,
}

impl From<&KnowledgeShared> for SharedKnowledge {
    fn from(shared: &KnowledgeShared) -> Self {
        Self {
            knowledge_id: shared.knowledge_id,
            title: shared.title.clone(),
            knowledge_type: shared.knowledge_type,
            content: shared.content.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepFailed {
    #[serde(flatten)]
    pub attempt: StepAttempt,
    /// Whether another attempt may succeed. False for an error a retry cannot fix (the
    /// provider refused the key, the quota is spent, the request is invalid): the step is not
    /// retried, whatever `maxRetries` allows. Absent in events recorded before it existed: true.
    #[serde(default = "retryable_by_default")]
    pub retryable: bool,
    pub error: String,
    /// What the attempt's LLM calls used before it failed (an answer that had to be repaired,
    /// then still fit no structure): paid for all the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<CallUsage>,
}

fn retryable_by_default() -> bool {
    true
}

/// The attempt ran past its step's `timeoutMinutes`. It counts as a failed attempt: the step is
/// retried within `maxRetries`, else the execution fails. Whatever the attempt reports later
/// is ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepTimedOut {
    #[serde(flatten)]
    pub attempt: StepAttempt,
    pub timeout_minutes: f64,
}

impl StepTimedOut {
    /// The attempt's error as people read it: "timed out after 5 minute(s)", or in whole
    /// seconds under a minute ("timed out after 30 s"; time-outs are at least a second).
    pub fn error(&self) -> String {
        if self.timeout_minutes < 1.0 {
            format!("timed out after {:.0} s", self.timeout_minutes * 60.0)
        } else {
            format!("timed out after {} minute(s)", self.timeout_minutes)
        }
    }
}

/// The execution's step time-out timer fired, armed for `due`: the attempts due by then were
/// timed out (`StepTimedOut`, decided with it), and the timer is armed again for `next_at`, the
/// earliest deadline of the attempts still running, if any.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepDeadlinesChecked {
    pub execution_id: ExecutionId,
    pub workflow_id: WorkflowId,
    pub due: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_at: Option<DateTime<Utc>>,
}

/// A failed attempt's step waits for its retry backoff: its next attempt is handed out after
/// `retry_at` (a durable timer), unless the run ends first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepRetryScheduled {
    /// The attempt that failed.
    #[serde(flatten)]
    pub attempt: StepAttempt,
    /// Failed attempts so far (this one included).
    pub failures: u32,
    pub retry_at: DateTime<Utc>,
    /// Why the attempt failed.
    pub error: String,
}

/// A step's retry backoff is over: its next attempt may be handed out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepRetryDue {
    /// The attempt that failed.
    #[serde(flatten)]
    pub attempt: StepAttempt,
}

/// A step climbed a rung of its workflow's escalation ladder: its retries were spent (or its
/// error was one no retry fixes). For `person`, and for an `approval` step, it waits in
/// `escalated` until a person resolves it ([`EscalationResolved`]); for the other rungs,
/// `agent` takes its next attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepEscalated {
    pub execution_id: ExecutionId,
    pub workflow_id: WorkflowId,
    pub step_id: StepId,
    pub step_name: String,
    /// The attempt that failed; for an approval, the attempt the approval is (nothing ran).
    pub attempt: u32,
    pub rung: EscalationRung,
    /// Who takes the next attempt (`reassign`, `strongerModel` with its model swapped in,
    /// `coordinator`); absent for `person`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentProfile>,
    /// What a person resolves (`person` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalation_id: Option<EscalationId>,
    /// The step is an `approval`: a person's sign-off, not a failure.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub approval: bool,
    /// Why, in words.
    pub reason: String,
    pub context: EscalationContext,
}

/// A run went on longer than its workflow's `escalation.afterMinutes`: it hands out no new
/// step (those running finish) and waits, `escalated`, until a person resolves `escalation_id`
/// with `continue` or `abort`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionEscalated {
    pub execution_id: ExecutionId,
    pub workflow_id: WorkflowId,
    pub escalation_id: EscalationId,
    pub after_minutes: f64,
    /// Why, in words: how long, and where each unfinished step is.
    pub reason: String,
    pub context: EscalationContext,
}

/// What whoever takes an escalated step needs to know: what failed, what was tried, and what
/// the run has produced so far.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EscalationContext {
    /// The step's failed attempts, oldest first (the last [`EscalationContext::MAX_FAILURES`]).
    pub failures: Vec<FailedAttempt>,
    /// The rungs climbed before this one.
    pub tried: Vec<EscalationRung>,
    /// The summary of each completed step, by step id.
    pub outputs: std::collections::BTreeMap<StepId, String>,
}

impl EscalationContext {
    /// Failed attempts an escalation carries: the most recent.
    pub const MAX_FAILURES: usize = 20;
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FailedAttempt {
    pub attempt: u32,
    pub agent_id: AgentId,
    pub error: String,
}

/// A risk showed in a run (a step declares it, or a completed step's result carries it as a
/// `#hashtag`) and the workflow's lead rule for it applies: the run's steps not yet handed out
/// go to `agent`, of the rule's `role` (a step's own `preferredAgentId` still wins). `agent` is
/// absent when no participant has the role: the rule could not apply, and assignment goes on
/// as before. Each rule applies once per run; the latest lead taken leads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeadTaken {
    pub execution_id: ExecutionId,
    pub workflow_id: WorkflowId,
    pub risk: String,
    pub role: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<Teammate>,
    /// The step that showed the risk.
    pub step_id: StepId,
    pub shown_by: RiskSource,
}

/// How a step showed a risk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RiskSource {
    /// Its `risks` name it, and it is ready to run.
    Declared,
    /// Its result carries the risk as a `#hashtag`.
    Result,
}

/// The run is failing (a saga): first each completed step that declares a `compensation` is
/// undone, one at a time in `steps`' order (reverse order of completion), by a step
/// `undo-<id>` scheduled like any other; then, when `replan`, the coordinator agent proposes
/// revised steps in a step `replan-<n>` ([`ExecutionReplanned`]); otherwise (or when that
/// fails) the run fails with `cause` and `error`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SagaStarted {
    pub execution_id: ExecutionId,
    pub workflow_id: WorkflowId,
    pub cause: FailureCause,
    pub error: String,
    /// The completed steps to undo, in the order they are undone.
    pub steps: Vec<StepId>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub replan: bool,
}

/// A failing run's coordinator agent proposed revised steps, valid as a workflow's: they
/// replace the run's steps (a step keeping its id keeps counting its attempts) and the run goes
/// on with them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionReplanned {
    pub execution_id: ExecutionId,
    pub workflow_id: WorkflowId,
    /// 1 for the run's first re-planning.
    pub replan: u32,
    pub agent_id: AgentId,
    /// Why, as the agent summarised it.
    pub summary: String,
    pub steps: Vec<WorkflowStep>,
    /// Why the run was failing.
    pub error: String,
}

/// A person resolved an escalation: a step's (or its approval), or the run's own
/// (`step_id` absent).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EscalationResolved {
    pub execution_id: ExecutionId,
    pub workflow_id: WorkflowId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_id: Option<StepId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_name: Option<String>,
    /// The attempt that was escalated (0 for the run's own escalation).
    pub attempt: u32,
    pub escalation_id: EscalationId,
    pub resolution: Resolution,
    /// Who resolved it, and why (free text).
    #[serde(flatten)]
    pub request: Request,
}

impl EscalationResolved {
    /// The step's result, as `(summary, output)`, when the resolution completes the step: the
    /// person's own output, or an approval (its summary names who approved, its output is the
    /// reason they gave).
    pub fn result(&self) -> Option<(String, String)> {
        match &self.resolution {
            Resolution::ProvideOutput { summary, output } => {
                Some((summary.clone(), output.clone()))
            }
            Resolution::Approve => Some((
                format!(
                    "Approved by {}",
                    self.request.requested_by.as_deref().unwrap_or("a person")
                ),
                self.request.reason.clone().unwrap_or_default(),
            )),
            _ => None,
        }
    }
}

/// What a person decided about an escalated step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    rename_all = "camelCase",
    rename_all_fields = "camelCase",
    tag = "action"
)]
pub enum Resolution {
    /// Another attempt by the agent that last tried it.
    Retry,
    /// Another attempt by this participating agent.
    Reassign { agent_id: AgentId },
    /// The step does not run; its dependants treat it as done.
    Skip,
    /// The person's own result completes the step.
    ProvideOutput { summary: String, output: String },
    /// The run fails (cause `aborted`).
    Abort,
    /// An approval step is signed off: it completes.
    Approve,
    /// An approval step is refused: the run fails (cause `aborted`).
    Reject,
    /// The run escalated for its time goes on handing out steps.
    Continue,
}

/// What an escalation is about, and so which [`Resolution`]s fit it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum EscalationKind {
    /// A step failed past its ladder's other rungs.
    Failure,
    /// An `approval` step waits for its sign-off.
    Approval,
    /// The run went on past `escalation.afterMinutes`.
    Execution,
}

impl EscalationKind {
    /// The actions that fit, for people reading a refusal.
    pub fn actions(self) -> &'static str {
        match self {
            Self::Failure => "retry, reassign, skip, provideOutput or abort",
            Self::Approval => "approve, reject or abort",
            Self::Execution => "continue or abort",
        }
    }
}

impl Resolution {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Retry => "retry",
            Self::Reassign { .. } => "reassign",
            Self::Skip => "skip",
            Self::ProvideOutput { .. } => "provideOutput",
            Self::Abort => "abort",
            Self::Approve => "approve",
            Self::Reject => "reject",
            Self::Continue => "continue",
        }
    }

    /// Whether it is an answer to an escalation of `kind` ([`EscalationKind::actions`]).
    pub fn fits(&self, kind: EscalationKind) -> bool {
        match self {
            Self::Abort => true,
            Self::Approve | Self::Reject => kind == EscalationKind::Approval,
            Self::Continue => kind == EscalationKind::Execution,
            Self::Retry | Self::Reassign { .. } | Self::Skip | Self::ProvideOutput { .. } => {
                kind == EscalationKind::Failure
            }
        }
    }
}

/// The step's condition was false when its dependencies were done: it does not run, and the
/// steps that depend on it treat it as done.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepSkipped {
    pub execution_id: ExecutionId,
    pub workflow_id: WorkflowId,
    pub step_id: StepId,
    pub step_name: String,
    /// The condition that was false.
    pub condition: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionCompleted {
    pub execution_id: ExecutionId,
    pub workflow_id: WorkflowId,
    /// Summary and output of each step no other step depends on, by step id.
    pub final_output: serde_json::Value,
}

/// Why an execution failed, as data a dashboard can group by.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    rename_all = "camelCase",
    rename_all_fields = "camelCase",
    tag = "kind"
)]
pub enum FailureCause {
    /// A step failed its last allowed attempt.
    StepFailed { step_id: StepId },
    /// The execution ran past `constraints.maxExecutionTime` (seconds).
    TimeLimit { max_execution_seconds: u32 },
    /// A step's condition could not be evaluated to true or false.
    ConditionFailed { step_id: StepId },
    /// A decision's event was larger than the log accepts, so the run could not go on.
    Unrecordable,
    /// The execution's state allows no way forward (for example no agent can take a step).
    Stuck,
    /// A person aborted the run while resolving an escalation (a step's, or the run's own
    /// without `stepId`), or rejected an approval.
    Aborted {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        step_id: Option<StepId>,
        escalation_id: EscalationId,
    },
    /// Recorded before causes existed (`failed.v1`).
    Unspecified,
}

/// The execution ended without completing. `error` says why in words; `cause` as data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionFailed {
    pub execution_id: ExecutionId,
    pub workflow_id: WorkflowId,
    pub cause: FailureCause,
    pub error: String,
}

/// Who asked for a change of an execution or workflow, and why; both free text.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Request {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// An execution is cancelled: nothing new is scheduled and running LLM calls are stopped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionCancelled {
    pub execution_id: ExecutionId,
    pub workflow_id: WorkflowId,
    #[serde(flatten)]
    pub request: Request,
}

/// Running steps finish; nothing new is scheduled until `ExecutionResumed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionPaused {
    pub execution_id: ExecutionId,
    pub workflow_id: WorkflowId,
    #[serde(flatten)]
    pub request: Request,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionResumed {
    pub execution_id: ExecutionId,
    pub workflow_id: WorkflowId,
    #[serde(flatten)]
    pub request: Request,
}

/// The workflow takes no new executions until `WorkflowResumed`; running ones go on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowPaused {
    pub workflow_id: WorkflowId,
    #[serde(flatten)]
    pub request: Request,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowResumed {
    pub workflow_id: WorkflowId,
    #[serde(flatten)]
    pub request: Request,
}

/// Declares [`Event`] with one variant per payload and its CloudEvents `type`, so that a new
/// event is named in one place. `Box` the large payloads: an `Event` is moved a lot.
macro_rules! events {
    ($($variant:ident($payload:ty) = $type_const:ident: $type_name:literal,)+) => {
        /// Every event type. The CloudEvents `type` of each is
        /// `dev.cadre.<aggregate>.<fact>.v<N>`.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Event {
            $($variant($payload),)+
        }

        /// The CloudEvents `type` strings of the current versions; an older version is read
        /// through [`crate::upcast`].
        pub mod types {
            $(pub const $type_const: &str = $type_name;)+
            /// Every current type, for tests that must cover them all.
            pub const ALL: &[&str] = &[$($type_const,)+];
        }

        impl Event {
            pub fn type_name(&self) -> &'static str {
                match self {
                    $(Self::$variant(_) => types::$type_const,)+
                }
            }

            /// The payload as JSON.
            pub fn data(&self) -> serde_json::Result<Box<serde_json::value::RawValue>> {
                match self {
                    $(Self::$variant(e) => serde_json::value::to_raw_value(e),)+
                }
            }

            /// Reads a payload of the current version of `event_type`; `None` for a type this
            /// build does not know.
            pub fn from_data(event_type: &str, data: &str) -> Option<serde_json::Result<Self>> {
                match event_type {
                    $(types::$type_const => Some(serde_json::from_str(data).map(Self::$variant)),)+
                    _ => None,
                }
            }
        }
    };
}

events! {
    AgentRegistered(AgentRegistered) = AGENT_REGISTERED: "dev.cadre.agent.registered.v1",
    AgentStatusReported(Box<AgentStatusReported>) = AGENT_STATUS_REPORTED: "dev.cadre.agent.status_reported.v1",
    AlertRaised(Box<AlertRaised>) = ALERT_RAISED: "dev.cadre.agent.alert_raised.v1",
    WorkflowCreated(WorkflowCreated) = WORKFLOW_CREATED: "dev.cadre.workflow.created.v1",
    WorkflowPaused(WorkflowPaused) = WORKFLOW_PAUSED: "dev.cadre.workflow.paused.v1",
    WorkflowResumed(WorkflowResumed) = WORKFLOW_RESUMED: "dev.cadre.workflow.resumed.v1",
    TemplateRegistered(Box<TemplateRegistered>) = TEMPLATE_REGISTERED: "dev.cadre.template.registered.v1",
    SubscriptionCreated(SubscriptionCreated) = SUBSCRIPTION_CREATED: "dev.cadre.subscription.created.v1",
    SubscriptionDeleted(SubscriptionDeleted) = SUBSCRIPTION_DELETED: "dev.cadre.subscription.deleted.v1",
    WebhookDelivered(WebhookDelivery) = WEBHOOK_DELIVERED: "dev.cadre.subscription.delivered.v1",
    WebhookDeliveryFailed(Box<WebhookDeliveryFailed>) = WEBHOOK_DELIVERY_FAILED: "dev.cadre.subscription.delivery_failed.v1",
    KnowledgeShared(KnowledgeShared) = KNOWLEDGE_SHARED: "dev.cadre.workflow.knowledge_shared.v1",
    KnowledgeValidated(KnowledgeValidated) = KNOWLEDGE_VALIDATED: "dev.cadre.workflow.knowledge_validated.v1",
    KnowledgeSuperseded(KnowledgeSuperseded) = KNOWLEDGE_SUPERSEDED: "dev.cadre.workflow.knowledge_superseded.v1",
    ExecutionStarted(Box<ExecutionStarted>) = EXECUTION_STARTED: "dev.cadre.execution.started.v1",
    StepScheduled(Box<StepScheduled>) = STEP_SCHEDULED: "dev.cadre.execution.step_scheduled.v1",
    TaskHandedOff(Box<TaskHandedOff>) = TASK_HANDED_OFF: "dev.cadre.execution.task_handed_off.v1",
    StepStarted(StepStarted) = STEP_STARTED: "dev.cadre.execution.step_started.v1",
    StepDeferred(StepDeferred) = STEP_DEFERRED: "dev.cadre.execution.step_deferred.v1",
    InteractionRecorded(InteractionRecorded) = INTERACTION_RECORDED: "dev.cadre.execution.interaction_recorded.v1",
    StepCompleted(Box<StepCompleted>) = STEP_COMPLETED: "dev.cadre.execution.step_completed.v1",
    StepFailed(StepFailed) = STEP_FAILED: "dev.cadre.execution.step_failed.v1",
    StepTimedOut(StepTimedOut) = STEP_TIMED_OUT: "dev.cadre.execution.step_timed_out.v1",
    StepSkipped(StepSkipped) = STEP_SKIPPED: "dev.cadre.execution.step_skipped.v1",
    StepDeadlinesChecked(StepDeadlinesChecked) = STEP_DEADLINES_CHECKED: "dev.cadre.execution.step_deadlines_checked.v1",
    StepRetryScheduled(StepRetryScheduled) = STEP_RETRY_SCHEDULED: "dev.cadre.execution.step_retry_scheduled.v1",
    StepRetryDue(StepRetryDue) = STEP_RETRY_DUE: "dev.cadre.execution.step_retry_due.v1",
    StepEscalated(Box<StepEscalated>) = STEP_ESCALATED: "dev.cadre.execution.step_escalated.v1",
    EscalationResolved(Box<EscalationResolved>) = ESCALATION_RESOLVED: "dev.cadre.execution.escalation_resolved.v1",
    LeadTaken(Box<LeadTaken>) = LEAD_TAKEN: "dev.cadre.execution.lead_taken.v1",
    ExecutionEscalated(Box<ExecutionEscalated>) = EXECUTION_ESCALATED: "dev.cadre.execution.escalated.v1",
    SagaStarted(Box<SagaStarted>) = SAGA_STARTED: "dev.cadre.execution.saga_started.v1",
    ExecutionReplanned(Box<ExecutionReplanned>) = EXECUTION_REPLANNED: "dev.cadre.execution.replanned.v1",
    StepReviewed(StepReviewed) = STEP_REVIEWED: "dev.cadre.execution.step_reviewed.v1",
    VotesTallied(Box<VotesTallied>) = VOTES_TALLIED: "dev.cadre.execution.votes_tallied.v1",
    QuestionsAsked(QuestionsAsked) = QUESTIONS_ASKED: "dev.cadre.execution.questions_asked.v1",
    QuestionAssigned(Box<QuestionAssigned>) = QUESTION_ASSIGNED: "dev.cadre.execution.question_assigned.v1",
    QuestionAnswered(QuestionAnswered) = QUESTION_ANSWERED: "dev.cadre.execution.question_answered.v1",
    QuestionsExpired(QuestionsExpired) = QUESTIONS_EXPIRED: "dev.cadre.execution.questions_expired.v1",
    ExecutionPaused(ExecutionPaused) = EXECUTION_PAUSED: "dev.cadre.execution.paused.v1",
    ExecutionResumed(ExecutionResumed) = EXECUTION_RESUMED: "dev.cadre.execution.resumed.v1",
    ExecutionCompleted(ExecutionCompleted) = EXECUTION_COMPLETED: "dev.cadre.execution.completed.v1",
    ExecutionFailed(ExecutionFailed) = EXECUTION_FAILED: "dev.cadre.execution.failed.v2",
    ExecutionCancelled(ExecutionCancelled) = EXECUTION_CANCELLED: "dev.cadre.execution.cancelled.v1",
}

impl Event {
    /// The NATS subject this event is stored under.
    pub fn nats_subject(&self, tenant: &TenantId) -> String {
        use subjects::{agent, execution, step, workflow};
        let step_fact =
            |a: &StepAttempt, fact| step(tenant, a.workflow_id, a.execution_id, &a.step_id, fact);
        match self {
            Self::AgentRegistered(e) => agent(tenant, e.agent.id, subjects::REGISTERED),
            Self::AgentStatusReported(e) => agent(tenant, e.agent_id, subjects::STATUS_REPORTED),
            Self::AlertRaised(e) => {
                subjects::alert_raised(tenant, e.agent_id, &e.alert_key(), e.crossing)
            }
            Self::WorkflowCreated(e) => workflow(tenant, e.workflow.id, subjects::CREATED),
            Self::WorkflowPaused(e) => workflow(tenant, e.workflow_id, subjects::PAUSED),
            Self::WorkflowResumed(e) => workflow(tenant, e.workflow_id, subjects::RESUMED),
            Self::TemplateRegistered(e) => {
                subjects::template(tenant, e.template.id, subjects::REGISTERED)
            }
            Self::SubscriptionCreated(e) => {
                subjects::subscription(tenant, e.subscription_id, subjects::CREATED)
            }
            Self::SubscriptionDeleted(e) => {
                subjects::subscription(tenant, e.subscription_id, subjects::DELETED)
            }
            Self::WebhookDelivered(e) => {
                subjects::subscription(tenant, e.subscription_id, subjects::DELIVERED)
            }
            Self::WebhookDeliveryFailed(e) => subjects::subscription(
                tenant,
                e.delivery.subscription_id,
                subjects::DELIVERY_FAILED,
            ),
            Self::KnowledgeShared(e) => subjects::knowledge(tenant, e.workflow_id),
            Self::KnowledgeValidated(e) => {
                subjects::knowledge_fact(tenant, e.workflow_id, subjects::VALIDATED)
            }
            Self::KnowledgeSuperseded(e) => {
                subjects::knowledge_fact(tenant, e.workflow_id, subjects::SUPERSEDED)
            }
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
            Self::TaskHandedOff(e) => step(
                tenant,
                e.workflow_id,
                e.execution_id,
                &e.task_id,
                subjects::HANDED_OFF,
            ),
            Self::StepStarted(e) => step_fact(&e.attempt, subjects::STARTED),
            Self::StepDeferred(e) => step_fact(&e.attempt, subjects::DEFERRED),
            Self::InteractionRecorded(e) => {
                subjects::interactions(tenant, e.workflow_id, e.execution_id)
            }
            Self::StepCompleted(e) => step_fact(&e.attempt, subjects::COMPLETED),
            Self::StepFailed(e) => step_fact(&e.attempt, subjects::FAILED),
            Self::StepTimedOut(e) => step_fact(&e.attempt, subjects::TIMED_OUT),
            Self::StepReviewed(e) => step_fact(&e.attempt, subjects::REVIEWED),
            Self::QuestionsAsked(e) => step_fact(&e.attempt, subjects::QUESTIONS_ASKED),
            Self::QuestionAssigned(e) => step(
                tenant,
                e.workflow_id,
                e.execution_id,
                &e.step_id,
                subjects::QUESTION_ASSIGNED,
            ),
            Self::QuestionAnswered(e) => step(
                tenant,
                e.workflow_id,
                e.execution_id,
                &e.step_id,
                subjects::QUESTION_ANSWERED,
            ),
            Self::QuestionsExpired(e) => step_fact(&e.attempt, subjects::QUESTIONS_EXPIRED),
            Self::StepRetryScheduled(e) => step_fact(&e.attempt, subjects::RETRY_SCHEDULED),
            Self::StepRetryDue(e) => step_fact(&e.attempt, subjects::RETRY_DUE),
            Self::StepEscalated(e) => step(
                tenant,
                e.workflow_id,
                e.execution_id,
                &e.step_id,
                subjects::ESCALATED,
            ),
            Self::EscalationResolved(e) => match &e.step_id {
                Some(step_id) => step(
                    tenant,
                    e.workflow_id,
                    e.execution_id,
                    step_id,
                    subjects::ESCALATION_RESOLVED,
                ),
                None => execution(
                    tenant,
                    e.workflow_id,
                    e.execution_id,
                    subjects::ESCALATION_RESOLVED,
                ),
            },
            Self::ExecutionEscalated(e) => {
                execution(tenant, e.workflow_id, e.execution_id, subjects::ESCALATED)
            }
            Self::ExecutionReplanned(e) => {
                execution(tenant, e.workflow_id, e.execution_id, subjects::REPLANNED)
            }
            Self::SagaStarted(e) => execution(
                tenant,
                e.workflow_id,
                e.execution_id,
                subjects::SAGA_STARTED,
            ),
            Self::StepSkipped(e) => step(
                tenant,
                e.workflow_id,
                e.execution_id,
                &e.step_id,
                subjects::SKIPPED,
            ),
            Self::StepDeadlinesChecked(e) => execution(
                tenant,
                e.workflow_id,
                e.execution_id,
                subjects::STEP_DEADLINES_CHECKED,
            ),
            Self::LeadTaken(e) => {
                execution(tenant, e.workflow_id, e.execution_id, subjects::LEAD_TAKEN)
            }
            Self::VotesTallied(e) => step(
                tenant,
                e.workflow_id,
                e.execution_id,
                &e.step_id,
                subjects::TALLIED,
            ),
            Self::ExecutionPaused(e) => {
                execution(tenant, e.workflow_id, e.execution_id, subjects::PAUSED)
            }
            Self::ExecutionResumed(e) => {
                execution(tenant, e.workflow_id, e.execution_id, subjects::RESUMED)
            }
            Self::ExecutionCompleted(e) => {
                execution(tenant, e.workflow_id, e.execution_id, subjects::COMPLETED)
            }
            Self::ExecutionFailed(e) => {
                execution(tenant, e.workflow_id, e.execution_id, subjects::FAILED)
            }
            Self::ExecutionCancelled(e) => {
                execution(tenant, e.workflow_id, e.execution_id, subjects::CANCELLED)
            }
        }
    }

    /// The CloudEvents `subject`: the execution for execution events, else the entity.
    pub fn ce_subject(&self) -> String {
        match self {
            Self::AgentRegistered(e) => e.agent.id.to_string(),
            Self::AgentStatusReported(e) => e.agent_id.to_string(),
            Self::AlertRaised(e) => e.agent_id.to_string(),
            Self::WorkflowCreated(e) => e.workflow.id.to_string(),
            Self::WorkflowPaused(e) => e.workflow_id.to_string(),
            Self::WorkflowResumed(e) => e.workflow_id.to_string(),
            Self::TemplateRegistered(e) => e.template.id.to_string(),
            Self::SubscriptionCreated(e) => e.subscription_id.to_string(),
            Self::SubscriptionDeleted(e) => e.subscription_id.to_string(),
            Self::WebhookDelivered(e) => e.subscription_id.to_string(),
            Self::WebhookDeliveryFailed(e) => e.delivery.subscription_id.to_string(),
            _ => self
                .execution_id()
                .map(|id| id.to_string())
                .unwrap_or_default(),
        }
    }

    /// The workflow an event belongs to, if any.
    pub fn workflow_id(&self) -> Option<WorkflowId> {
        match self {
            Self::AgentRegistered(_)
            | Self::TemplateRegistered(_)
            | Self::SubscriptionCreated(_)
            | Self::SubscriptionDeleted(_)
            | Self::WebhookDelivered(_)
            | Self::WebhookDeliveryFailed(_) => None,
            Self::AgentStatusReported(e) => e.current_task.as_ref().map(|t| t.workflow_id),
            Self::AlertRaised(e) => Some(e.workflow_id),
            Self::WorkflowCreated(e) => Some(e.workflow.id),
            Self::WorkflowPaused(e) => Some(e.workflow_id),
            Self::WorkflowResumed(e) => Some(e.workflow_id),
            Self::KnowledgeShared(e) => Some(e.workflow_id),
            Self::KnowledgeValidated(e) => Some(e.workflow_id),
            Self::KnowledgeSuperseded(e) => Some(e.workflow_id),
            Self::ExecutionStarted(e) => Some(e.workflow_id),
            Self::StepScheduled(e) => Some(e.workflow_id),
            Self::TaskHandedOff(e) => Some(e.workflow_id),
            Self::StepStarted(e) => Some(e.attempt.workflow_id),
            Self::StepDeferred(e) => Some(e.attempt.workflow_id),
            Self::InteractionRecorded(e) => Some(e.workflow_id),
            Self::StepCompleted(e) => Some(e.attempt.workflow_id),
            Self::StepFailed(e) => Some(e.attempt.workflow_id),
            Self::StepTimedOut(e) => Some(e.attempt.workflow_id),
            Self::StepReviewed(e) => Some(e.attempt.workflow_id),
            Self::QuestionsAsked(e) => Some(e.attempt.workflow_id),
            Self::QuestionAssigned(e) => Some(e.workflow_id),
            Self::QuestionAnswered(e) => Some(e.workflow_id),
            Self::QuestionsExpired(e) => Some(e.attempt.workflow_id),
            Self::StepRetryScheduled(e) => Some(e.attempt.workflow_id),
            Self::StepRetryDue(e) => Some(e.attempt.workflow_id),
            Self::StepEscalated(e) => Some(e.workflow_id),
            Self::EscalationResolved(e) => Some(e.workflow_id),
            Self::LeadTaken(e) => Some(e.workflow_id),
            Self::VotesTallied(e) => Some(e.workflow_id),
            Self::ExecutionEscalated(e) => Some(e.workflow_id),
            Self::SagaStarted(e) => Some(e.workflow_id),
            Self::ExecutionReplanned(e) => Some(e.workflow_id),
            Self::StepSkipped(e) => Some(e.workflow_id),
            Self::StepDeadlinesChecked(e) => Some(e.workflow_id),
            Self::ExecutionPaused(e) => Some(e.workflow_id),
            Self::ExecutionResumed(e) => Some(e.workflow_id),
            Self::ExecutionCompleted(e) => Some(e.workflow_id),
            Self::ExecutionFailed(e) => Some(e.workflow_id),
            Self::ExecutionCancelled(e) => Some(e.workflow_id),
        }
    }

    /// The execution an event belongs to, if any.
    pub fn execution_id(&self) -> Option<ExecutionId> {
        match self {
            Self::AgentStatusReported(e) => e.current_task.as_ref().map(|t| t.execution_id),
            Self::AlertRaised(e) => Some(e.execution_id),
            Self::AgentRegistered(_)
            | Self::WorkflowCreated(_)
            | Self::WorkflowPaused(_)
            | Self::WorkflowResumed(_)
            | Self::TemplateRegistered(_)
            | Self::SubscriptionCreated(_)
            | Self::SubscriptionDeleted(_)
            | Self::WebhookDelivered(_)
            | Self::WebhookDeliveryFailed(_) => None,
            Self::KnowledgeShared(e) => Some(e.execution_id),
            Self::KnowledgeValidated(e) => Some(e.execution_id),
            Self::KnowledgeSuperseded(e) => Some(e.execution_id),
            Self::ExecutionStarted(e) => Some(e.execution_id),
            Self::StepScheduled(e) => Some(e.execution_id),
            Self::TaskHandedOff(e) => Some(e.execution_id),
            Self::StepStarted(e) => Some(e.attempt.execution_id),
            Self::StepDeferred(e) => Some(e.attempt.execution_id),
            Self::InteractionRecorded(e) => Some(e.execution_id),
            Self::StepCompleted(e) => Some(e.attempt.execution_id),
            Self::StepFailed(e) => Some(e.attempt.execution_id),
            Self::StepTimedOut(e) => Some(e.attempt.execution_id),
            Self::StepReviewed(e) => Some(e.attempt.execution_id),
            Self::QuestionsAsked(e) => Some(e.attempt.execution_id),
            Self::QuestionAssigned(e) => Some(e.execution_id),
            Self::QuestionAnswered(e) => Some(e.execution_id),
            Self::QuestionsExpired(e) => Some(e.attempt.execution_id),
            Self::StepRetryScheduled(e) => Some(e.attempt.execution_id),
            Self::StepRetryDue(e) => Some(e.attempt.execution_id),
            Self::StepEscalated(e) => Some(e.execution_id),
            Self::EscalationResolved(e) => Some(e.execution_id),
            Self::LeadTaken(e) => Some(e.execution_id),
            Self::VotesTallied(e) => Some(e.execution_id),
            Self::ExecutionEscalated(e) => Some(e.execution_id),
            Self::SagaStarted(e) => Some(e.execution_id),
            Self::ExecutionReplanned(e) => Some(e.execution_id),
            Self::StepSkipped(e) => Some(e.execution_id),
            Self::StepDeadlinesChecked(e) => Some(e.execution_id),
            Self::ExecutionPaused(e) => Some(e.execution_id),
            Self::ExecutionResumed(e) => Some(e.execution_id),
            Self::ExecutionCompleted(e) => Some(e.execution_id),
            Self::ExecutionFailed(e) => Some(e.execution_id),
            Self::ExecutionCancelled(e) => Some(e.execution_id),
        }
    }
}
