//! The seed's domain types, as they travel in events and in the HTTP API (camelCase JSON).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::{AgentId, StepId, TemplateId, WorkflowId};

/// Sampling settings an agent passes to its LLM.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct ModelParameters {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
}

/// A registered agent: who it is, what it knows, and which LLM speaks for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct AgentProfile {
    pub id: AgentId,
    pub name: String,
    pub role: String,
    pub backstory: String,
    pub skills: Vec<String>,
    /// Name of an LLM provider configured on the agent workers (`offline`, `openai`, ...).
    pub provider: String,
    pub model: String,
    #[serde(default)]
    pub model_parameters: ModelParameters,
    /// Asked when `provider` fails (rate limited, down, refusing), by a worker that offers it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<ModelChoice>,
}

/// An LLM provider (by the name the agent workers configure it under) and one of its models.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct ModelChoice {
    pub provider: String,
    pub model: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum WorkflowType {
    #[default]
    Pipeline,
    Parallel,
    Conditional,
    Recursive,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum StepType {
    Analysis,
    Implementation,
    Review,
    Testing,
    Documentation,
    Coordination,
    Decision,
    /// A person's sign-off (seed 002's production release): no agent runs it; the step waits
    /// in `escalated` until someone approves it (it completes) or rejects it (the run fails).
    Approval,
}

impl StepType {
    pub const ALL: [Self; 8] = [
        Self::Analysis,
        Self::Implementation,
        Self::Review,
        Self::Testing,
        Self::Documentation,
        Self::Coordination,
        Self::Decision,
        Self::Approval,
    ];

    /// The wire name (`analysis`, ...), also a subject token.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Analysis => "analysis",
            Self::Implementation => "implementation",
            Self::Review => "review",
            Self::Testing => "testing",
            Self::Documentation => "documentation",
            Self::Coordination => "coordination",
            Self::Decision => "decision",
            Self::Approval => "approval",
        }
    }

    /// The type of this wire name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == name)
    }
}

/// One step of a workflow (the seed's `WorkflowStep`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct WorkflowStep {
    pub id: StepId,
    pub name: String,
    pub description: String,
    #[serde(rename = "type")]
    pub step_type: StepType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assigned_agent_role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_agent_id: Option<AgentId>,
    #[serde(default)]
    pub required_skills: Vec<String>,
    #[serde(default)]
    pub depends_on: Vec<StepId>,
    #[serde(default = "yes")]
    pub can_run_in_parallel: bool,
    pub instructions: String,
    pub expected_output: String,
    /// How long one attempt may take, in minutes (fractions allowed: `0.5` is 30 s), from
    /// when it is handed to the workers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_minutes: Option<f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub validation_criteria: Vec<String>,
    #[serde(default)]
    pub review_required: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reviewer_role: Option<String>,
    /// A CEL expression over `input` (the execution's input) and `steps` (each earlier step's
    /// `status`, `summary` and `output`, by step id), evaluated when the step's dependencies
    /// are done. `false` skips the step; its dependants treat it as done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
    /// Run this workflow as a child execution instead of asking an agent: the step completes
    /// with the child's final output, or fails with its error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub child_workflow_id: Option<WorkflowId>,
    /// Risks the step is known to carry (`security`, `data-corruption`): a lead rule of the
    /// workflow's escalation policy for one of them applies once the step is ready.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub risks: Vec<String>,
    /// How to undo the step's work (a saga's compensation): when the run fails after the step
    /// completed, an agent does this, in reverse order of completion, before the run ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensation: Option<String>,
}

impl WorkflowStep {
    /// Whether a panel votes on the step's work under `decision_making` (see
    /// [`DecisionMaking`]): it requires a review, or it is a `review` or a `decision`.
    pub fn voted_on(&self, decision_making: DecisionMaking) -> bool {
        decision_making.votes()
            && (self.review_required
                || matches!(self.step_type, StepType::Review | StepType::Decision))
    }

    /// The step that undoes this one, `undo-<id>` (see [`StepId::undo`]), when it declares a
    /// `compensation`: an agent does the compensation's instructions, alone.
    pub fn compensation_step(&self) -> Option<WorkflowStep> {
        let instructions = self.compensation.clone()?;
        Some(WorkflowStep {
            id: self.id.undo(),
            name: format!("Undo {}", self.name),
            description: format!(
                "Compensate step '{}' ({}): the run failed after it completed, so its effects \
                 are undone.",
                self.name, self.description
            ),
            instructions,
            expected_output: "What was undone, and anything that could not be.".to_owned(),
            depends_on: Vec::new(),
            review_required: false,
            reviewer_role: None,
            condition: None,
            child_workflow_id: None,
            risks: Vec::new(),
            compensation: None,
            preferred_agent_id: None,
            validation_criteria: Vec::new(),
            ..self.clone()
        })
    }
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum CommunicationStyle {
    Formal,
    Casual,
    #[default]
    Technical,
}

/// Who settles a step's work before it completes: the one reviewer its `reviewRequired` asks
/// for (`coordinator`, the default), or a panel of agents that vote on it (`consensus`: every
/// vote approves; `majority`: more than half do). Under a panel, steps of type `review` and
/// `decision` are voted on too, whether or not they require a review.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum DecisionMaking {
    Consensus,
    #[default]
    Coordinator,
    Majority,
}

impl DecisionMaking {
    /// The wire name (`consensus`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Consensus => "consensus",
            Self::Coordinator => "coordinator",
            Self::Majority => "majority",
        }
    }

    /// Whether a panel votes (`consensus`, `majority`).
    pub fn votes(self) -> bool {
        self != Self::Coordinator
    }

    /// What `approvals` and `rejections` of a panel of `seats` decide: `Some(true)` approved,
    /// `Some(false)` rejected, `None` while the votes still to come could change it. A
    /// consensus needs every seat's approval (the first rejection settles it); a majority
    /// needs more than half, so a tie on an even panel rejects.
    pub fn tally(self, seats: u32, approvals: u32, rejections: u32) -> Option<bool> {
        match self {
            Self::Consensus | Self::Coordinator if rejections > 0 => Some(false),
            Self::Consensus | Self::Coordinator => (approvals >= seats).then_some(true),
            Self::Majority if approvals * 2 > seats => Some(true),
            Self::Majority => (rejections * 2 >= seats).then_some(false),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Coordination {
    #[serde(default)]
    pub communication_style: CommunicationStyle,
    #[serde(default)]
    pub decision_making: DecisionMaking,
    /// How many agents vote under `consensus` or `majority` (2 to
    /// [`Coordination::MAX_VOTERS`]; [`Coordination::DEFAULT_VOTERS`] when absent). A panel
    /// is never larger than the participants other than the work's author.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voters: Option<u32>,
    #[serde(default = "yes")]
    pub knowledge_sharing: bool,
    /// How long an agent waits for its teammates' answers, and what then.
    #[serde(default)]
    pub questions: QuestionPolicy,
}

impl Coordination {
    pub const DEFAULT_VOTERS: u32 = 3;
    /// A panel larger than this costs more calls than a vote is worth.
    pub const MAX_VOTERS: u32 = 9;

    /// The panel's size for work by one of `participants` agents (its author does not vote
    /// unless it works alone).
    pub fn seats(&self, participants: usize) -> u32 {
        let others = u32::try_from(participants.saturating_sub(1)).unwrap_or(u32::MAX);
        self.voters
            .unwrap_or(Self::DEFAULT_VOTERS)
            .min(others)
            .max(1)
    }
}

impl Default for Coordination {
    fn default() -> Self {
        Self {
            communication_style: CommunicationStyle::default(),
            decision_making: DecisionMaking::default(),
            voters: None,
            knowledge_sharing: true,
            questions: QuestionPolicy::default(),
        }
    }
}

/// What happens to a step whose agent asked teammates questions that need an answer: the step
/// waits (holding no worker) until every addressee answered or `deadline_seconds` passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct QuestionPolicy {
    /// Seconds the asker waits for answers, from when the questions were handed out.
    #[serde(default = "QuestionPolicy::default_deadline")]
    pub deadline_seconds: u32,
    /// What a missed deadline does to the asking step.
    #[serde(default)]
    pub on_missed_deadline: MissedDeadline,
}

impl QuestionPolicy {
    /// Five minutes: longer than most answers take, short enough not to stall a run.
    pub const DEFAULT_DEADLINE_SECONDS: u32 = 300;
    /// A day: a question is not a way to park a run.
    pub const MAX_DEADLINE_SECONDS: u32 = 86_400;

    fn default_deadline() -> u32 {
        Self::DEFAULT_DEADLINE_SECONDS
    }
}

impl Default for QuestionPolicy {
    fn default() -> Self {
        Self {
            deadline_seconds: Self::DEFAULT_DEADLINE_SECONDS,
            on_missed_deadline: MissedDeadline::default(),
        }
    }
}

/// What a step does when some of its questions are still unanswered at the deadline.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum MissedDeadline {
    /// The asker goes on with the answers it has, told which ones never came.
    #[default]
    Proceed,
    /// The attempt fails (and is retried within `maxRetries`).
    Fail,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Constraints {
    /// How long a run may take from its start, in seconds (the seed's unit: 3600 is an hour).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_execution_time: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    /// `false` runs one step at a time even where `dependsOn` would allow more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_parallel_execution: Option<bool>,
    /// How many times a reviewer may send a step back (`reviewRequired`) before the step fails
    /// with the last feedback; 2 when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_review_rounds: Option<u32>,
    /// How long a failed step waits before it is tried again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_backoff: Option<RetryBackoff>,
}

/// The wait before a failed step's next attempt: `initialSeconds` after the first failure,
/// doubling with each further one up to `maxSeconds`, each wait jittered down by up to half so
/// that steps failed together are not retried together.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct RetryBackoff {
    #[serde(default = "RetryBackoff::default_initial")]
    pub initial_seconds: f64,
    #[serde(default = "RetryBackoff::default_max")]
    pub max_seconds: f64,
}

impl RetryBackoff {
    /// A day: a longer wait is a schedule, not a retry.
    pub const LONGEST_SECONDS: f64 = 86_400.0;

    fn default_initial() -> f64 {
        1.0
    }

    fn default_max() -> f64 {
        300.0
    }

    /// The wait after the `failures`-th failure (1 for the first), before jitter.
    pub fn delay_seconds(&self, failures: u32) -> f64 {
        let doublings = failures.saturating_sub(1).min(30);
        (self.initial_seconds * f64::from(1u32 << doublings)).min(self.max_seconds)
    }
}

impl Default for RetryBackoff {
    fn default() -> Self {
        Self {
            initial_seconds: Self::default_initial(),
            max_seconds: Self::default_max(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct WorkflowConfiguration {
    pub steps: Vec<WorkflowStep>,
    /// The seed's phases ("Phase 1: Analysis & Design (Parallel)"): each phase starts when
    /// every step of the phase before it is done.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub phases: Vec<WorkflowPhase>,
    #[serde(default)]
    pub coordination: Coordination,
    #[serde(default)]
    pub constraints: Constraints,
    /// What starts runs besides `POST /v1/workflows/{id}/executions`.
    #[serde(default, skip_serializing_if = "Triggers::is_none")]
    pub triggers: Triggers,
    /// What happens to a step whose retries are spent, before the run fails.
    #[serde(default, skip_serializing_if = "EscalationPolicy::is_empty")]
    pub escalation: EscalationPolicy,
    /// What a failing run does after undoing its steps (seed 002: "failed agent triggers
    /// rollback and re-planning").
    #[serde(default, skip_serializing_if = "SagaPolicy::is_default")]
    pub saga: SagaPolicy,
}

/// Re-planning: once a failing run's compensations are done, the workflow's coordinator agent
/// proposes revised steps; valid ones replace the run's steps and it goes on with them, at most
/// `maxReplans` times per run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct SagaPolicy {
    #[serde(default)]
    pub replan: bool,
    /// 1 when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_replans: Option<u32>,
}

impl SagaPolicy {
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// How many times a run may re-plan.
    pub fn replans_allowed(&self) -> u32 {
        if self.replan {
            self.max_replans.unwrap_or(1)
        } else {
            0
        }
    }
}

/// A workflow's escalation ladder: once a step has failed `maxRetries + 1` times (or once with
/// an error no retry fixes), it climbs these rungs in order, one attempt per rung, and the run
/// fails only when a rung's attempt fails with no rung left. An empty ladder (the default)
/// fails the run at once.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct EscalationPolicy {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ladder: Vec<EscalationRung>,
    /// The model the `strongerModel` rung asks; when absent, the failing agent's `fallback`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stronger_model: Option<ModelChoice>,
    /// Who takes the lead when a risk shows (seed 002: "security implications → Security
    /// Agent takes lead"): a step that declares the risk, or a completed step whose result
    /// carries it as a `#hashtag`, hands the run's remaining steps to an agent of the role.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub leads: Vec<RiskLead>,
    /// Minutes after its start (fractions allowed) at which a run still going needs a person
    /// (seed 002: "> 60 minutes total → human intervention"): it stops handing out steps and
    /// waits, `escalated`, until a person lets it continue or aborts it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_minutes: Option<f64>,
}

impl EscalationPolicy {
    pub fn is_empty(&self) -> bool {
        self.ladder.is_empty()
            && self.stronger_model.is_none()
            && self.leads.is_empty()
            && self.after_minutes.is_none()
    }
}

/// A lead rule: once `risk` shows in a run, its steps not yet handed out go to an agent of
/// `role` (except a step's own `preferredAgentId`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct RiskLead {
    /// A tag, compared without case: `security`, `data-corruption`.
    pub risk: String,
    pub role: String,
}

/// The `#hashtags` of `text`, lowercased, in order (repeats included): a word starting with
/// `#` whose rest, without trailing punctuation, is letters, digits, `-` and `_`.
pub fn hashtags(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split_whitespace().filter_map(|word| {
        let tag = word.strip_prefix('#')?;
        let tag = tag.trim_end_matches(|c: char| !c.is_alphanumeric());
        let valid = !tag.is_empty()
            && tag
                .chars()
                .all(|c| c.is_alphanumeric() || c == '-' || c == '_');
        valid.then(|| tag.to_lowercase())
    })
}

/// One rung of an [`EscalationPolicy`] ladder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub enum EscalationRung {
    /// Another participating agent takes the step: the best match among those that have not
    /// tried it yet (preferred agent, role, skills, load).
    Reassign,
    /// The failing agent again, on `strongerModel` (or its own fallback model).
    StrongerModel,
    /// The workflow's coordinator agent takes the step, with the failures so far.
    Coordinator,
    /// A person decides (`POST /v1/escalations/{id}/resolve`): the step waits in `escalated`,
    /// holding no worker, with the whole context in its `StepEscalated` event. Climbed again
    /// each time an attempt a person asked for fails.
    Person,
}

impl EscalationRung {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reassign => "reassign",
            Self::StrongerModel => "strongerModel",
            Self::Coordinator => "coordinator",
            Self::Person => "person",
        }
    }
}

/// What starts a workflow's runs on its own (each run records its `triggerReason`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Triggers {
    /// A run on every tick of this schedule (`scheduled`): a cron expression of 6 fields,
    /// seconds first, in UTC (`0 */15 * * * *`), or `@hourly`, `@daily`, `@weekly`,
    /// `@monthly`, `@yearly`, `@every <duration>` (`@every 90s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// A run for each CloudEvent published on the workflow's trigger subject (`event`), with
    /// the event as its input.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub events: bool,
    /// A run each time a run of one of these workflows completes (`dependency`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after_workflows: Vec<WorkflowId>,
}

impl Triggers {
    pub fn is_none(&self) -> bool {
        self == &Self::default()
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum PhaseMode {
    /// The phase's steps run at the same time.
    #[default]
    Parallel,
    /// The phase's steps run one after another, in the order listed.
    Sequential,
}

/// A group of steps that runs as one stage of the workflow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct WorkflowPhase {
    pub name: String,
    #[serde(default)]
    pub mode: PhaseMode,
    /// Step ids, in order.
    pub steps: Vec<StepId>,
}

/// A workflow as created: the seed's `CreateWorkflowRequest` plus its id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct WorkflowDefinition {
    pub id: WorkflowId,
    pub name: String,
    pub description: String,
    pub workflow_type: WorkflowType,
    pub participating_agents: Vec<AgentId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coordinator_agent_id: Option<AgentId>,
    pub configuration: WorkflowConfiguration,
}

impl WorkflowDefinition {
    pub fn step(&self, id: &StepId) -> Option<&WorkflowStep> {
        self.configuration.steps.iter().find(|s| &s.id == id)
    }

    /// The steps `step` waits for: its own `dependsOn`, every step of the phase before its
    /// phase, and in a sequential phase the step listed before it. Duplicates removed, in a
    /// stable order.
    pub fn dependencies<'a>(&'a self, step: &'a WorkflowStep) -> Vec<&'a StepId> {
        let mut all: Vec<&StepId> = step.depends_on.iter().collect();
        let phases = &self.configuration.phases;
        if let Some(at) = phases.iter().position(|p| p.steps.contains(&step.id)) {
            if let Some(before) = at.checked_sub(1) {
                all.extend(&phases[before].steps);
            }
            let phase = &phases[at];
            if phase.mode == PhaseMode::Sequential
                && let Some(i) = phase.steps.iter().position(|s| s == &step.id)
                && let Some(previous) = i.checked_sub(1)
            {
                all.push(&phase.steps[previous]);
            }
        }
        let mut seen = std::collections::HashSet::new();
        all.retain(|id| seen.insert(*id));
        all
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum TriggerReason {
    #[default]
    Manual,
    Scheduled,
    Event,
    Dependency,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum InteractionType {
    TaskDelegation,
    KnowledgeSharing,
    Coordination,
    Feedback,
    Question,
}

impl InteractionType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TaskDelegation => "task_delegation",
            Self::KnowledgeSharing => "knowledge_sharing",
            Self::Coordination => "coordination",
            Self::Feedback => "feedback",
            Self::Question => "question",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum KnowledgeType {
    Insight,
    Decision,
    Resource,
    Constraint,
    BestPractice,
}

impl KnowledgeType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Insight => "insight",
            Self::Decision => "decision",
            Self::Resource => "resource",
            Self::Constraint => "constraint",
            Self::BestPractice => "best_practice",
        }
    }
}

/// Token counts reported by the LLM (or estimated by the offline provider).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct TokenUsage {
    pub prompt: u32,
    pub completion: u32,
    pub total: u32,
}

impl TokenUsage {
    /// The usage of two calls made for one result (an answer and its repair, say).
    pub fn plus(self, other: Self) -> Self {
        Self {
            prompt: self.prompt.saturating_add(other.prompt),
            completion: self.completion.saturating_add(other.completion),
            total: self.total.saturating_add(other.total),
        }
    }
}

/// What an agent produced for a step, parsed from the seed's response sections.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct StepResult {
    pub summary: String,
    pub output: String,
    #[serde(default)]
    pub insights: Vec<String>,
    #[serde(default)]
    pub decisions: Vec<String>,
    #[serde(default)]
    pub questions: Vec<String>,
    pub raw_response: String,
    pub tokens: TokenUsage,
    /// Where the whole result is when it was too large for an event (a claim check): the
    /// texts above are then previews, each ending with a note that says so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full: Option<ObjectRef>,
}

/// A value kept in a JetStream Object Store because it is too large for an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct ObjectRef {
    pub bucket: String,
    pub name: String,
    /// Bytes.
    pub size: u64,
}

/// What a workflow template is for (the seed's `TemplateCategory`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum TemplateCategory {
    Development,
    Review,
    Analysis,
    Research,
    Testing,
}

impl TemplateCategory {
    pub const ALL: [Self; 5] = [
        Self::Development,
        Self::Review,
        Self::Analysis,
        Self::Research,
        Self::Testing,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Development => "development",
            Self::Review => "review",
            Self::Analysis => "analysis",
            Self::Research => "research",
            Self::Testing => "testing",
        }
    }
}

/// A reusable workflow (the seed's `WorkflowTemplate`, without its usage figures, which the
/// read model counts from runs): a workflow configuration whose steps name the roles of the
/// team (`assignedAgentRole`, `reviewerRole`, `escalation.leads[].role`) rather than agents.
/// A workflow is created from it by mapping each of `required_agent_roles` to an agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct WorkflowTemplate {
    pub id: TemplateId,
    pub name: String,
    pub description: String,
    pub category: TemplateCategory,
    /// The `workflowType` of the workflows created from it.
    #[serde(default)]
    pub workflow_type: WorkflowType,
    /// The `configuration` of the workflows created from it, roles still unmapped.
    pub template_definition: WorkflowConfiguration,
    /// Every role the configuration names, and any other the team needs, each to be mapped to
    /// an agent (one agent may take several), in the order they are first named.
    pub required_agent_roles: Vec<String>,
    pub recommended_agent_count: u32,
    /// Registered by Cadre itself (seed 002's team workflows), not by a user.
    pub is_system_template: bool,
    /// Who registered it, as they said (there are no user accounts yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    /// 1 when first registered; a system template registered again with a changed definition
    /// has a higher one, and a lower or equal one never replaces it.
    #[serde(default = "first_revision")]
    pub revision: u32,
}

fn first_revision() -> u32 {
    1
}

/// A role as assignment compares it: without case or surrounding spaces (`" Reviewer"` and
/// `"reviewer"` are one role), in templates, in the agents mapped to their roles, and in the
/// registered roles steps reach their agents by.
pub fn role_key(role: &str) -> String {
    role.trim().to_lowercase()
}

/// The agent a template's role is mapped to, as [`WorkflowTemplate::staff`] needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TeamMember {
    pub id: AgentId,
    /// The role the agent is registered with ([`AgentProfile::role`]).
    pub role: String,
}

impl From<&AgentProfile> for TeamMember {
    fn from(agent: &AgentProfile) -> Self {
        Self {
            id: agent.id,
            role: agent.role.clone(),
        }
    }
}

/// What a workflow made from a template has where the template has roles
/// ([`WorkflowTemplate::staff`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Staffing {
    pub participating_agents: Vec<AgentId>,
    pub configuration: WorkflowConfiguration,
}

impl WorkflowTemplate {
    /// The participants and configuration of a workflow made from this template, its roles
    /// mapped to the agents of `team` (each role, compared by [`role_key`], to one agent; an
    /// agent may take several). This is what `POST /v1/templates/{id}/workflows` records once
    /// the request is checked, and what `cadre apply` compares an existing workflow with.
    ///
    /// - The participants are the mapped agents in the order of `required_agent_roles` (an
    ///   agent mapped to several roles once), then `coordinator_agent_id` unless already there.
    /// - Each role the configuration names (a step's `assignedAgentRole` and `reviewerRole`, a
    ///   lead rule's `role`) becomes the registered role of the agent mapped to it, so steps
    ///   reach their agents by role as in any workflow.
    /// - Where two roles are mapped to different agents that share a registered role, a step
    ///   assigned to either is pinned to its agent (`preferredAgentId`): by role alone they
    ///   would share each other's steps.
    ///
    /// It checks nothing: the caller makes sure first that `team` maps exactly the template's
    /// roles (a role left unmapped stays as written and brings no agent).
    pub fn staff(
        &self,
        team: &BTreeMap<String, TeamMember>,
        coordinator_agent_id: Option<AgentId>,
    ) -> Staffing {
        let mapped: BTreeMap<String, &TeamMember> = team
            .iter()
            .map(|(role, member)| (role_key(role), member))
            .collect();
        let member = |role: &str| mapped.get(&role_key(role)).copied();

        let mut participating_agents = Vec::new();
        let agents = self
            .required_agent_roles
            .iter()
            .filter_map(|role| member(role));
        for id in agents.map(|m| m.id).chain(coordinator_agent_id) {
            if !participating_agents.contains(&id) {
                participating_agents.push(id);
            }
        }

        let shares_its_role = |agent: &TeamMember| {
            mapped
                .values()
                .any(|other| other.id != agent.id && role_key(&other.role) == role_key(&agent.role))
        };
        let registered_role = |role: &mut String| {
            if let Some(agent) = member(role) {
                role.clone_from(&agent.role);
            }
        };
        let mut configuration = self.template_definition.clone();
        for step in &mut configuration.steps {
            if let Some(agent) = step.assigned_agent_role.as_deref().and_then(member)
                && shares_its_role(agent)
            {
                step.preferred_agent_id = Some(agent.id);
            }
            step.assigned_agent_role
                .iter_mut()
                .for_each(registered_role);
            step.reviewer_role.iter_mut().for_each(registered_role);
        }
        for lead in &mut configuration.escalation.leads {
            registered_role(&mut lead.role);
        }
        Staffing {
            participating_agents,
            configuration,
        }
    }
}

#[cfg(test)]
mod tests;
