//! What makes an agent or a workflow acceptable, checked before anything is written. Each
//! problem names the JSON pointer of the offending field, so a client can show it in place.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};

use cadre_proto::events::{AgentRecord, Event, ExecutionStarted};
use cadre_proto::model::{
    AgentProfile, Coordination, EscalationRung, QuestionPolicy, RetryBackoff, StepType,
    TriggerReason, WorkflowDefinition,
};
use cadre_proto::streams::MAX_EVENT_BYTES;
use cadre_proto::{AgentId, Envelope, ExecutionId, StepId, TenantId, subjects};
use serde::Serialize;

use super::condition;

/// One field at fault in a request body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    /// RFC 6901 pointer into the request body.
    pub pointer: String,
    pub message: String,
}

pub(crate) fn error(pointer: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError {
        pointer: pointer.into(),
        message: message.into(),
    }
}

/// Limits on every free-text field and list, in characters and entries. Each bounds what one
/// field may add to an event: a run's first event snapshots the workflow and all its agents'
/// profiles in one message (see [`start_size_error`]), and the steps' texts go into prompts.
pub mod limits {
    /// Names, roles, models, skills, a step's name.
    pub const NAME: usize = 200;
    pub const PROVIDER: usize = 64;
    pub const BACKSTORY: usize = 8 * 1024;
    pub const SKILLS: usize = 50;
    /// A workflow's or a step's description.
    pub const DESCRIPTION: usize = 4 * 1024;
    pub const INSTRUCTIONS: usize = 64 * 1024;
    pub const EXPECTED_OUTPUT: usize = 16 * 1024;
    pub const VALIDATION_CRITERIA: usize = 50;
    pub const VALIDATION_CRITERION: usize = 1024;
    pub const PARTICIPATING_AGENTS: usize = 100;
    pub const STEPS: usize = 500;
    /// The label a start request may give its trigger.
    pub const TRIGGERED_BY: usize = 200;
    /// Longest step attempt: a week, in minutes.
    pub const TIMEOUT_MINUTES: f64 = 7.0 * 24.0 * 60.0;
    /// Shortest step attempt: a second, in minutes. Timers fire on whole seconds, so a shorter
    /// time-out could not be kept.
    pub const MIN_TIMEOUT_MINUTES: f64 = 1.0 / 60.0;
    /// Longest run: 30 days, in seconds.
    pub const EXECUTION_SECONDS: u32 = 30 * 24 * 3600;
    pub const PHASES: usize = 50;
    /// Workflows a workflow may start after.
    pub const AFTER_WORKFLOWS: usize = 20;
    /// Retries of a failed step: each is another LLM call.
    pub const MAX_RETRIES: u32 = 20;
    /// Times a reviewer may send a step back.
    pub const MAX_REVIEW_ROUNDS: u32 = 5;
    /// Times a failing run may re-plan.
    pub const MAX_REPLANS: u32 = 5;
    /// A start's `input`, as JSON: it travels in the start event and every scheduled step.
    pub const INPUT_BYTES: usize = 64 * 1024;
}

fn too_long(max: usize, count: usize) -> String {
    format!("must be at most {max} characters (it has {count})")
}

/// A text that must say something, within `max` characters.
pub(crate) fn require_text(errors: &mut Vec<FieldError>, pointer: &str, value: &str, max: usize) {
    if value.trim().is_empty() {
        errors.push(error(pointer, "must not be empty"));
    } else {
        limit_text(errors, pointer, value, max);
    }
}

/// A text that may be empty, within `max` characters.
pub(crate) fn limit_text(errors: &mut Vec<FieldError>, pointer: &str, value: &str, max: usize) {
    let count = value.chars().count();
    if count > max {
        errors.push(error(pointer, too_long(max, count)));
    }
}

/// A list of at most `max_entries` texts, each non-empty and within `max` characters.
pub(crate) fn require_texts(
    errors: &mut Vec<FieldError>,
    pointer: &str,
    values: &[String],
    max_entries: usize,
    max: usize,
) {
    if values.len() > max_entries {
        errors.push(error(
            pointer,
            format!(
                "must have at most {max_entries} entries (it has {})",
                values.len()
            ),
        ));
    }
    for (i, value) in values.iter().enumerate() {
        require_text(errors, &format!("{pointer}/{i}"), value, max);
    }
}

pub fn validate_agent(agent: &AgentProfile) -> Vec<FieldError> {
    let mut errors = Vec::new();
    require_text(&mut errors, "/name", &agent.name, limits::NAME);
    require_text(&mut errors, "/role", &agent.role, limits::NAME);
    limit_text(
        &mut errors,
        "/backstory",
        &agent.backstory,
        limits::BACKSTORY,
    );
    require_texts(
        &mut errors,
        "/skills",
        &agent.skills,
        limits::SKILLS,
        limits::NAME,
    );
    require_text(&mut errors, "/provider", &agent.provider, limits::PROVIDER);
    provider_name(&mut errors, "/provider", &agent.provider);
    if let Some(fallback) = &agent.fallback {
        require_text(
            &mut errors,
            "/fallback/provider",
            &fallback.provider,
            limits::PROVIDER,
        );
        provider_name(&mut errors, "/fallback/provider", &fallback.provider);
        require_text(
            &mut errors,
            "/fallback/model",
            &fallback.model,
            limits::NAME,
        );
    }
    require_text(&mut errors, "/model", &agent.model, limits::NAME);
    if let Some(t) = agent.model_parameters.temperature
        && !(0.0..=2.0).contains(&t)
    {
        errors.push(error(
            "/modelParameters/temperature",
            "must be between 0 and 2",
        ));
    }
    if agent.model_parameters.max_tokens == Some(0) {
        errors.push(error("/modelParameters/maxTokens", "must be at least 1"));
    }
    errors
}

fn provider_name(errors: &mut Vec<FieldError>, pointer: &str, provider: &str) {
    if !provider.is_empty() && !subjects::is_provider_name(provider) {
        errors.push(error(
            pointer,
            "must name a provider configured on the agent workers: lowercase letters, digits, '-' \
             and '_' only (the workers' configuration lowercases provider names)",
        ));
    }
}

/// What a start request may carry besides its trigger reason.
pub fn validate_start(
    triggered_by: Option<&str>,
    input: Option<&serde_json::Map<String, serde_json::Value>>,
) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if let Some(label) = triggered_by {
        limit_text(&mut errors, "/triggeredBy", label, limits::TRIGGERED_BY);
    }
    if let Some(input) = input {
        let size = json_len(input);
        if size > limits::INPUT_BYTES {
            errors.push(error(
                "/input",
                format!(
                    "is {size} bytes as JSON; at most {} are accepted (pass large data by reference, such as a URL)",
                    limits::INPUT_BYTES
                ),
            ));
        }
    }
    errors
}

/// Checks a workflow on its own; whether its agents exist is the caller's question.
pub fn validate_workflow(workflow: &WorkflowDefinition) -> Vec<FieldError> {
    let mut errors = Vec::new();
    require_text(&mut errors, "/name", &workflow.name, limits::NAME);
    limit_text(
        &mut errors,
        "/description",
        &workflow.description,
        limits::DESCRIPTION,
    );
    for (i, step) in workflow.configuration.steps.iter().enumerate() {
        if step.child_workflow_id == Some(workflow.id) {
            errors.push(error(
                format!("/configuration/steps/{i}/childWorkflowId"),
                "a workflow cannot run itself as a child",
            ));
        }
    }

    let agents = &workflow.participating_agents;
    if agents.is_empty() {
        errors.push(error(
            "/participatingAgents",
            "must name at least one agent",
        ));
    } else if agents.len() > limits::PARTICIPATING_AGENTS {
        errors.push(error(
            "/participatingAgents",
            format!(
                "must name at most {} agents (it names {})",
                limits::PARTICIPATING_AGENTS,
                agents.len()
            ),
        ));
    }
    let mut seen_agents = HashSet::new();
    for (i, agent) in agents.iter().enumerate() {
        if !seen_agents.insert(agent) {
            errors.push(error(
                format!("/participatingAgents/{i}"),
                format!("agent {agent} is listed twice"),
            ));
        }
    }
    if let Some(coordinator) = workflow.coordinator_agent_id
        && !agents.contains(&coordinator)
    {
        errors.push(error(
            "/coordinatorAgentId",
            format!(
                "agent {coordinator} is not one of the participatingAgents; add it to them or \
                 choose one of them as the coordinator"
            ),
        ));
    }
    validate_voting(&mut errors, workflow);

    let steps = &workflow.configuration.steps;
    if steps.is_empty() {
        errors.push(error(
            "/configuration/steps",
            "must contain at least one step",
        ));
    } else if steps.len() > limits::STEPS {
        errors.push(error(
            "/configuration/steps",
            format!(
                "must contain at most {} steps (it has {})",
                limits::STEPS,
                steps.len()
            ),
        ));
    }

    if let Some(seconds) = workflow.configuration.constraints.max_execution_time
        && !(1..=limits::EXECUTION_SECONDS).contains(&seconds)
    {
        errors.push(error(
            "/configuration/constraints/maxExecutionTime",
            format!(
                "must be from 1 to {} seconds (30 days)",
                limits::EXECUTION_SECONDS
            ),
        ));
    }

    let question_deadline = workflow
        .configuration
        .coordination
        .questions
        .deadline_seconds;
    if !(1..=QuestionPolicy::MAX_DEADLINE_SECONDS).contains(&question_deadline) {
        errors.push(error(
            "/configuration/coordination/questions/deadlineSeconds",
            format!(
                "must be from 1 to {} seconds (a day)",
                QuestionPolicy::MAX_DEADLINE_SECONDS
            ),
        ));
    }

    if let Some(backoff) = workflow.configuration.constraints.retry_backoff {
        let longest = RetryBackoff::LONGEST_SECONDS;
        if !(backoff.initial_seconds > 0.0 && backoff.initial_seconds <= longest) {
            errors.push(error(
                "/configuration/constraints/retryBackoff/initialSeconds",
                format!("must be more than 0 and at most {longest} seconds (a day)"),
            ));
        }
        if !(backoff.max_seconds >= backoff.initial_seconds && backoff.max_seconds <= longest) {
            errors.push(error(
                "/configuration/constraints/retryBackoff/maxSeconds",
                format!("must be at least initialSeconds and at most {longest} seconds (a day)"),
            ));
        }
    }

    if let Some(rounds) = workflow.configuration.constraints.max_review_rounds
        && !(1..=limits::MAX_REVIEW_ROUNDS).contains(&rounds)
    {
        errors.push(error(
            "/configuration/constraints/maxReviewRounds",
            format!("must be from 1 to {}", limits::MAX_REVIEW_ROUNDS),
        ));
    }
    escalation_policy(&mut errors, workflow);
    let saga = workflow.configuration.saga;
    if saga.replan && workflow.coordinator_agent_id.is_none() {
        errors.push(error(
            "/configuration/saga/replan",
            "the workflow's coordinator agent re-plans a failing run: set coordinatorAgentId, or \
             remove replan",
        ));
    }
    if let Some(replans) = saga.max_replans {
        if !saga.replan {
            errors.push(error(
                "/configuration/saga/maxReplans",
                "only means something with replan: true; add that, or remove maxReplans",
            ));
        } else if !(1..=limits::MAX_REPLANS).contains(&replans) {
            errors.push(error(
                "/configuration/saga/maxReplans",
                format!("must be from 1 to {}", limits::MAX_REPLANS),
            ));
        }
    }
    if let Some(retries) = workflow.configuration.constraints.max_retries
        && retries > limits::MAX_RETRIES
    {
        errors.push(error(
            "/configuration/constraints/maxRetries",
            format!("must be at most {}", limits::MAX_RETRIES),
        ));
    }

    let mut index: HashMap<&StepId, usize> = HashMap::new();
    for (i, step) in steps.iter().enumerate() {
        let at = format!("/configuration/steps/{i}");
        if index.insert(&step.id, i).is_some() {
            errors.push(error(
                format!("{at}/id"),
                format!("duplicate step id '{}'", step.id),
            ));
        }
        require_text(&mut errors, &format!("{at}/name"), &step.name, limits::NAME);
        limit_text(
            &mut errors,
            &format!("{at}/description"),
            &step.description,
            limits::DESCRIPTION,
        );
        if let Some(role) = &step.assigned_agent_role {
            require_text(
                &mut errors,
                &format!("{at}/assignedAgentRole"),
                role,
                limits::NAME,
            );
        }
        require_texts(
            &mut errors,
            &format!("{at}/requiredSkills"),
            &step.required_skills,
            limits::SKILLS,
            limits::NAME,
        );
        require_text(
            &mut errors,
            &format!("{at}/instructions"),
            &step.instructions,
            limits::INSTRUCTIONS,
        );
        require_text(
            &mut errors,
            &format!("{at}/expectedOutput"),
            &step.expected_output,
            limits::EXPECTED_OUTPUT,
        );
        require_texts(
            &mut errors,
            &format!("{at}/validationCriteria"),
            &step.validation_criteria,
            limits::VALIDATION_CRITERIA,
            limits::VALIDATION_CRITERION,
        );
        for (prefix, what) in [
            (
                StepId::UNDO_PREFIX,
                "the steps that undo others (compensation)",
            ),
            (
                StepId::REPLAN_PREFIX,
                "the steps that re-plan a failing run",
            ),
            (
                StepId::DELEGATE_PREFIX,
                "the steps in which a coordinator agent chooses who takes another",
            ),
        ] {
            if step.id.as_str().starts_with(prefix) {
                errors.push(error(
                    format!("{at}/id"),
                    format!("step ids starting with '{prefix}' are reserved for {what}; rename it"),
                ));
            }
        }
        // The coordinator agent may choose who takes a step that names neither an agent nor a
        // role, in a step `delegate-<id>` that must be a step id too.
        let longest = StepId::MAX_LEN - StepId::DELEGATE_PREFIX.len();
        if workflow.coordinator_agent_id.is_some()
            && step.preferred_agent_id.is_none()
            && step.assigned_agent_role.is_none()
            && step.id.as_str().len() > longest
        {
            errors.push(error(
                format!("{at}/id"),
                format!(
                    "with a coordinator agent, a step that names no agent or role has an id of at \
                     most {longest} characters (the coordinator chooses who takes it in the step \
                     '{}<id>')",
                    StepId::DELEGATE_PREFIX
                ),
            ));
        }
        if let Some(compensation) = &step.compensation {
            require_text(
                &mut errors,
                &format!("{at}/compensation"),
                compensation,
                limits::INSTRUCTIONS,
            );
            let longest = StepId::MAX_LEN - StepId::UNDO_PREFIX.len();
            if step.id.as_str().len() > longest {
                errors.push(error(
                    format!("{at}/id"),
                    format!(
                        "a step with a compensation has an id of at most {longest} characters \
                         (its undoing is the step '{}<id>')",
                        StepId::UNDO_PREFIX
                    ),
                ));
            }
            if step.step_type == StepType::Approval {
                errors.push(error(
                    format!("{at}/compensation"),
                    "an approval step has nothing to undo; remove its compensation",
                ));
            }
        }
        if step.step_type == StepType::Approval {
            for (field, set) in [
                ("reviewRequired", step.review_required),
                ("childWorkflowId", step.child_workflow_id.is_some()),
            ] {
                if set {
                    errors.push(error(
                        format!("{at}/{field}"),
                        "an approval step is a person's sign-off: no agent or child run does it, \
                         so it takes no review and no child workflow",
                    ));
                }
            }
        }
        if let Some(role) = &step.reviewer_role {
            require_text(
                &mut errors,
                &format!("{at}/reviewerRole"),
                role,
                limits::NAME,
            );
            let rule = workflow.configuration.coordination.decision_making;
            if !step.review_required && !step.voted_on(rule) {
                errors.push(error(
                    format!("{at}/reviewerRole"),
                    "only means something with reviewRequired: true (or, under decisionMaking \
                     'consensus' or 'majority', on a review or decision step); add that, or \
                     remove reviewerRole",
                ));
            }
        }
        if let Some(preferred) = step.preferred_agent_id
            && !agents.contains(&preferred)
        {
            errors.push(error(
                format!("{at}/preferredAgentId"),
                format!("agent {preferred} is not one of the participatingAgents"),
            ));
        }
        if let Some(condition) = &step.condition
            && let Err(why) = condition::check(condition)
        {
            errors.push(error(format!("{at}/condition"), why));
        }
        if let Some(minutes) = step.timeout_minutes
            && !(limits::MIN_TIMEOUT_MINUTES..=limits::TIMEOUT_MINUTES).contains(&minutes)
        {
            errors.push(error(
                format!("{at}/timeoutMinutes"),
                format!(
                    "must be at least 1/60 (one second: timers fire on whole seconds) and at \
                     most {} (a week), got {minutes}",
                    limits::TIMEOUT_MINUTES
                ),
            ));
        }
    }
    // The cycle search follows every dependency, so it needs them all to name other steps.
    let mut graph_is_sound = index.len() == steps.len();
    for (i, step) in steps.iter().enumerate() {
        let mut seen = HashSet::new();
        for (j, dependency) in step.depends_on.iter().enumerate() {
            let at = format!("/configuration/steps/{i}/dependsOn/{j}");
            if dependency == &step.id {
                graph_is_sound = false;
                errors.push(error(at, format!("step '{}' depends on itself", step.id)));
            } else if !index.contains_key(dependency) {
                graph_is_sound = false;
                errors.push(error(at, format!("no step has the id '{dependency}'")));
            } else if !seen.insert(dependency) {
                errors.push(error(
                    at,
                    format!("step '{dependency}' is listed twice; list it once"),
                ));
            }
        }
    }
    validate_triggers(workflow, &mut errors);
    graph_is_sound &= validate_phases(workflow, &index, &mut errors);
    if graph_is_sound && let Some(cycle) = find_cycle(workflow) {
        let path: Vec<&str> = cycle.iter().map(|s| s.as_str()).collect();
        let what = if workflow.configuration.phases.is_empty() {
            "dependsOn forms"
        } else {
            "dependsOn and phases form"
        };
        errors.push(error(
            "/configuration/steps",
            format!("{what} a cycle: {}", path.join(" -> ")),
        ));
    }
    errors
}

/// A schedule the NATS server's message scheduler takes (ADR-51), and links to other
/// workflows that name each one once and not this workflow; whether they exist is the caller's
/// question.
fn validate_triggers(workflow: &WorkflowDefinition, errors: &mut Vec<FieldError>) {
    let triggers = &workflow.configuration.triggers;
    if let Some(schedule) = &triggers.schedule
        && let Err(why) = check_schedule(schedule)
    {
        errors.push(error("/configuration/triggers/schedule", why));
    }
    if triggers.after_workflows.len() > limits::AFTER_WORKFLOWS {
        errors.push(error(
            "/configuration/triggers/afterWorkflows",
            format!("must name at most {} workflows", limits::AFTER_WORKFLOWS),
        ));
    }
    let mut seen = HashSet::new();
    for (i, upstream) in triggers.after_workflows.iter().enumerate() {
        let at = format!("/configuration/triggers/afterWorkflows/{i}");
        if *upstream == workflow.id {
            errors.push(error(at, "a workflow cannot start after itself"));
        } else if !seen.insert(upstream) {
            errors.push(error(at, format!("workflow {upstream} is listed twice")));
        }
    }
}

/// Checks a schedule against ADR-51's syntax: a predefined name, `@every <Go duration>` of at
/// least a second, or six cron fields (seconds first) without the extensions the server does
/// not know.
pub fn check_schedule(schedule: &str) -> Result<(), String> {
    const NAMES: [&str; 7] = [
        "@yearly",
        "@annually",
        "@monthly",
        "@weekly",
        "@daily",
        "@midnight",
        "@hourly",
    ];
    let schedule = schedule.trim();
    if schedule.chars().count() > limits::NAME {
        return Err(format!("must be at most {} characters", limits::NAME));
    }
    if NAMES.contains(&schedule) {
        return Ok(());
    }
    if let Some(every) = schedule.strip_prefix("@every ") {
        return match go_duration_seconds(every.trim()) {
            Some(seconds) if seconds >= 1.0 => Ok(()),
            Some(_) => Err("@every must be at least 1s".to_owned()),
            None => Err(format!(
                "'{every}' is not a duration such as 90s, 5m or 1h30m"
            )),
        };
    }
    if schedule.split_whitespace().count() != 6 || schedule.contains(['L', 'W', '#', '?']) {
        return Err(
            "must be six cron fields, seconds first, in UTC (e.g. '0 */15 * * * *'), a name such as @hourly or @daily, or '@every 5m'"
                .to_owned(),
        );
    }
    let fields: Vec<&str> = schedule.split_whitespace().collect();
    let numbers = |field: &str| -> Vec<u32> {
        field
            .split([',', '-', '/'])
            .filter_map(|token| token.parse().ok())
            .collect()
    };
    // The server's scheduler (ADR-51) knows Sunday only as 0, and refuses dates no month has.
    if numbers(fields[5]).contains(&7) {
        return Err("day of week is 0-6 (0 is Sunday); the scheduler does not take 7".to_owned());
    }
    if let (Ok(day), Ok(month)) = (fields[3].parse::<u32>(), fields[4].parse::<u32>()) {
        let longest = match month {
            2 => 29,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        };
        if day > longest {
            return Err(format!("day {day} never comes in month {month}"));
        }
    }
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Required)
        .build()
        .parse(schedule)
        .map(drop)
        .map_err(|error| format!("is not a valid cron expression: {error}"))
}

/// A Go `time.ParseDuration` string (`1h30m`, `90s`, `1.5h`) in seconds.
fn go_duration_seconds(text: &str) -> Option<f64> {
    let mut total = 0.0;
    let mut rest = text;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..number_end].parse().ok()?;
        rest = &rest[number_end..];
        let (unit, seconds) = [
            ("ns", 1e-9),
            ("us", 1e-6),
            ("µs", 1e-6),
            ("ms", 1e-3),
            ("s", 1.0),
            ("m", 60.0),
            ("h", 3600.0),
        ]
        .into_iter()
        // Longest first where one unit is a prefix of another ("ms" before "m").
        .filter(|(unit, _)| rest.starts_with(unit))
        .max_by_key(|(unit, _)| unit.len())?;
        total += number * seconds;
        rest = &rest[unit.len()..];
    }
    Some(total)
}

/// Each phase names steps that exist, each step in at most one phase. Returns whether the
/// phases are sound enough to follow.
fn validate_phases(
    workflow: &WorkflowDefinition,
    index: &HashMap<&StepId, usize>,
    errors: &mut Vec<FieldError>,
) -> bool {
    let phases = &workflow.configuration.phases;
    let before = errors.len();
    if phases.len() > limits::PHASES {
        errors.push(error(
            "/configuration/phases",
            format!("must contain at most {} phases", limits::PHASES),
        ));
    }
    let mut phase_of: HashMap<&StepId, usize> = HashMap::new();
    for (i, phase) in phases.iter().enumerate() {
        let at = format!("/configuration/phases/{i}");
        require_text(errors, &format!("{at}/name"), &phase.name, limits::NAME);
        if phase.steps.is_empty() {
            errors.push(error(format!("{at}/steps"), "must name at least one step"));
        }
        for (j, step) in phase.steps.iter().enumerate() {
            let at = format!("{at}/steps/{j}");
            if !index.contains_key(step) {
                errors.push(error(at, format!("no step has the id '{step}'")));
            } else if let Some(other) = phase_of.insert(step, i) {
                errors.push(error(
                    at,
                    format!(
                        "step '{step}' is already in phase '{}'; a step belongs to one phase",
                        phases[other].name
                    ),
                ));
            }
        }
    }
    errors.len() == before
}

/// Room a start needs beyond what its event holds when the workflow is created: the NATS
/// headers (message id, traceparent, content type, the expected-sequence filter), a longer
/// timestamp, a `triggeredBy` label of up to [`limits::TRIGGERED_BY`] characters that JSON
/// may escape to six bytes each, the deadline, and an `input` of up to [`limits::INPUT_BYTES`].
const START_HEADROOM: usize = 4 * 1024 + limits::INPUT_BYTES;

/// A record as long as JSON can write one: every count and figure at its widest.
fn widest_record() -> AgentRecord {
    // JSON writes it "-2.2250738585072014e-308": a sign, 17 digits and a three-digit exponent,
    // as long as an f64 gets.
    let widest = Some(-f64::MIN_POSITIVE);
    AgentRecord {
        attempts: u64::MAX,
        task_success: widest,
        reviews: u64::MAX,
        review_pass_rate: widest,
        tasks_completed: u64::MAX,
        average_completion_minutes: widest,
        costed_completions: u64::MAX,
        average_cost_usd: widest,
    }
}

/// Why `workflow` could never start, if so. A run's first event snapshots the workflow and
/// every participating agent's profile (`agents`) in one message, and the event log refuses a
/// message over [`MAX_EVENT_BYTES`]. Checked when the workflow is created: the same start
/// would fail every time, which is a property of the workflow, not an outage.
pub fn start_size_error(
    workflow: &WorkflowDefinition,
    agents: &[AgentProfile],
    tenant: &TenantId,
) -> Option<FieldError> {
    let limit = usize::try_from(MAX_EVENT_BYTES).unwrap_or(usize::MAX);
    // The event `decide` makes of a `Start`, with the widest number and trigger reason; a new
    // field on the event stops this from compiling until it is accounted for here.
    let started = Event::ExecutionStarted(Box::new(ExecutionStarted {
        execution_id: ExecutionId(uuid::Uuid::nil()),
        workflow_id: workflow.id,
        execution_number: u32::MAX,
        trigger_reason: TriggerReason::Dependency,
        triggered_by: None,
        workflow: workflow.clone(),
        agents: agents.to_vec(),
        input: None,
        parent: None,
        started_at: Some(DateTime::<Utc>::default()),
        deadline: None,
        records: agents.iter().map(|a| (a.id, widest_record())).collect(),
    }));
    let envelope = Envelope::new(
        crate::SOURCE,
        tenant.clone(),
        DateTime::<Utc>::default(),
        started,
    );
    let size = envelope.encode().len() + START_HEADROOM;
    if size <= limit {
        return None;
    }
    let workflow_size = json_len(workflow);
    let agents_size: usize = agents.iter().map(json_len).sum();
    let largest = agents
        .iter()
        .map(|a| (json_len(a), a))
        .max_by_key(|(len, _)| *len);
    let kib = |bytes: usize| bytes.div_ceil(1024);
    let mut message = format!(
        "starting this workflow records it and its agents' profiles in one event of about {} KiB, \
         and the event log takes at most {} KiB per event: the workflow takes {} KiB and the \
         profiles of its {} agents {} KiB",
        kib(size),
        kib(limit),
        kib(workflow_size),
        agents.len(),
        kib(agents_size),
    );
    if let Some((len, agent)) = largest {
        message.push_str(&format!(
            " (the largest, '{}' {}, {} KiB)",
            agent.name,
            agent.id,
            kib(len)
        ));
    }
    message.push_str(
        "; name fewer agents, shorten their backstories or skills, or shorten the steps' texts",
    );
    let pointer = if agents_size >= workflow_size {
        "/participatingAgents"
    } else {
        "/configuration/steps"
    };
    Some(error(pointer, message))
}

/// How many bytes `value` takes as JSON.
fn json_len<T: Serialize>(value: &T) -> usize {
    serde_json::to_vec(value).map_or(0, |json| json.len())
}

/// A panel (`decisionMaking` consensus or majority) needs something to vote on and enough
/// agents to vote: two or more besides the work's author, as many as `voters` asks for.
fn validate_voting(errors: &mut Vec<FieldError>, workflow: &WorkflowDefinition) {
    let coordination = &workflow.configuration.coordination;
    let rule = coordination.decision_making;
    let participants = workflow.participating_agents.len();
    if let Some(voters) = coordination.voters {
        let at = "/configuration/coordination/voters";
        if !rule.votes() {
            errors.push(error(
                at,
                "only means something with decisionMaking 'consensus' or 'majority'; add that, \
                 or remove voters",
            ));
        } else if !(2..=Coordination::MAX_VOTERS).contains(&voters) {
            errors.push(error(
                at,
                format!(
                    "must be between 2 and {} (it is {voters})",
                    Coordination::MAX_VOTERS
                ),
            ));
        } else if voters as usize >= participants {
            errors.push(error(
                at,
                format!(
                    "{voters} voters need {} participating agents (the voters and the work's \
                     author); this workflow has {participants}: add agents, or ask for fewer \
                     voters",
                    voters + 1
                ),
            ));
        }
    }
    if !rule.votes() {
        return;
    }
    let at = "/configuration/coordination/decisionMaking";
    if participants < 3 {
        errors.push(error(
            at,
            format!(
                "'{}' asks a panel of at least two agents besides the work's author; this \
                 workflow has {participants} participating agent(s): add agents, or use \
                 'coordinator'",
                rule.as_str()
            ),
        ));
    }
    if !workflow
        .configuration
        .steps
        .iter()
        .any(|step| step.voted_on(rule))
    {
        errors.push(error(
            at,
            format!(
                "'{}' has nothing to vote on: no step has reviewRequired: true or type review or \
                 decision; add one, or use 'coordinator'",
                rule.as_str()
            ),
        ));
    }
}

/// A dependency cycle as a path that starts and ends on the same step, if there is one.
fn find_cycle(workflow: &WorkflowDefinition) -> Option<Vec<StepId>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    let steps = &workflow.configuration.steps;
    let position: HashMap<&StepId, usize> =
        steps.iter().enumerate().map(|(i, s)| (&s.id, i)).collect();
    let mut marks = vec![Mark::New; steps.len()];
    let mut path: Vec<usize> = Vec::new();

    fn visit(
        at: usize,
        workflow: &WorkflowDefinition,
        steps: &[cadre_proto::model::WorkflowStep],
        position: &HashMap<&StepId, usize>,
        marks: &mut [Mark],
        path: &mut Vec<usize>,
    ) -> Option<Vec<StepId>> {
        marks[at] = Mark::OnPath;
        path.push(at);
        for dependency in workflow.dependencies(&steps[at]) {
            let next = position[dependency];
            match marks[next] {
                Mark::OnPath => {
                    let start = path.iter().position(|p| *p == next).unwrap_or(0);
                    let mut cycle: Vec<StepId> =
                        path[start..].iter().map(|i| steps[*i].id.clone()).collect();
                    cycle.push(steps[next].id.clone());
                    // Present it in execution order (a runs before b) rather than dependency order.
                    cycle.reverse();
                    return Some(cycle);
                }
                Mark::New => {
                    if let Some(cycle) = visit(next, workflow, steps, position, marks, path) {
                        return Some(cycle);
                    }
                }
                Mark::Done => {}
            }
        }
        path.pop();
        marks[at] = Mark::Done;
        None
    }

    (0..steps.len()).find_map(|i| {
        if marks[i] == Mark::New {
            visit(i, workflow, steps, &position, &mut marks, &mut path)
        } else {
            None
        }
    })
}

/// The escalation ladder: each rung once, and what a rung needs named.
fn escalation_policy(errors: &mut Vec<FieldError>, workflow: &WorkflowDefinition) {
    let policy = &workflow.configuration.escalation;
    let at = "/configuration/escalation";
    let mut seen = HashSet::new();
    for (i, rung) in policy.ladder.iter().enumerate() {
        if !seen.insert(rung) {
            errors.push(error(
                format!("{at}/ladder/{i}"),
                format!(
                    "'{}' is listed twice; each rung is climbed once, in order (a person is \
                     asked again after each failed attempt they asked for)",
                    rung.as_str()
                ),
            ));
        }
        if *rung == EscalationRung::Coordinator && workflow.coordinator_agent_id.is_none() {
            errors.push(error(
                format!("{at}/ladder/{i}"),
                "the coordinator rung hands the step to the workflow's coordinator agent: set \
                 coordinatorAgentId, or remove the rung",
            ));
        }
    }
    if let Some(minutes) = policy.after_minutes
        && !(limits::MIN_TIMEOUT_MINUTES..=f64::from(limits::EXECUTION_SECONDS) / 60.0)
            .contains(&minutes)
    {
        errors.push(error(
            format!("{at}/afterMinutes"),
            format!(
                "must be at least 1/60 (one second: timers fire on whole seconds) and at most \
                 {} minutes (30 days), got {minutes}",
                limits::EXECUTION_SECONDS / 60
            ),
        ));
    }
    let mut risks = HashSet::new();
    for (i, lead) in policy.leads.iter().enumerate() {
        let at = format!("{at}/leads/{i}");
        require_text(errors, &format!("{at}/risk"), &lead.risk, limits::NAME);
        require_text(errors, &format!("{at}/role"), &lead.role, limits::NAME);
        if !risks.insert(lead.risk.trim().to_lowercase()) {
            errors.push(error(
                format!("{at}/risk"),
                format!("risk '{}' has a lead rule already", lead.risk),
            ));
        }
    }
    if let Some(model) = &policy.stronger_model {
        provider_name(
            errors,
            &format!("{at}/strongerModel/provider"),
            &model.provider,
        );
        require_text(
            errors,
            &format!("{at}/strongerModel/provider"),
            &model.provider,
            limits::NAME,
        );
        require_text(
            errors,
            &format!("{at}/strongerModel/model"),
            &model.model,
            limits::NAME,
        );
        if !policy.ladder.contains(&EscalationRung::StrongerModel) {
            errors.push(error(
                format!("{at}/strongerModel"),
                "only means something with 'strongerModel' in the ladder; add it, or remove \
                 strongerModel",
            ));
        }
    }
}

/// Agents a workflow names: its participants and its coordinator.
pub fn referenced_agents(workflow: &WorkflowDefinition) -> Vec<AgentId> {
    let mut agents = workflow.participating_agents.clone();
    if let Some(coordinator) = workflow.coordinator_agent_id
        && !agents.contains(&coordinator)
    {
        agents.push(coordinator);
    }
    agents
}

#[cfg(test)]
mod tests {
    use super::*;
    use cadre_proto::WorkflowId;
    use cadre_proto::model::{
        Constraints, DecisionMaking, ModelChoice, ModelParameters, StepType, WorkflowConfiguration,
        WorkflowStep, WorkflowType,
    };

    fn agent(name: &str) -> AgentProfile {
        AgentProfile {
            id: AgentId::new(),
            name: name.into(),
            role: "analyst".into(),
            backstory: "Has shipped many projects.".into(),
            skills: vec!["research".into()],
            provider: "offline".into(),
            model: "offline-deterministic".into(),
            model_parameters: ModelParameters::default(),
            fallback: None,
        }
    }

    fn step(id: &str, deps: &[&str]) -> WorkflowStep {
        WorkflowStep {
            id: StepId::parse(id).unwrap(),
            name: format!("Step {id}"),
            description: "What it is for.".into(),
            step_type: StepType::Analysis,
            assigned_agent_role: None,
            preferred_agent_id: None,
            required_skills: vec!["research".into()],
            depends_on: deps.iter().map(|d| StepId::parse(*d).unwrap()).collect(),
            can_run_in_parallel: true,
            instructions: "Do it.".into(),
            expected_output: "It, done.".into(),
            timeout_minutes: None,
            validation_criteria: vec![],
            review_required: false,
            reviewer_role: None,
            condition: None,
            child_workflow_id: None,
            risks: Vec::new(),
            compensation: None,
        }
    }

    fn workflow(agents: &[AgentProfile]) -> WorkflowDefinition {
        WorkflowDefinition {
            id: WorkflowId::new(),
            name: "Ship it".into(),
            description: "Analyse and build.".into(),
            workflow_type: WorkflowType::Pipeline,
            participating_agents: agents.iter().map(|a| a.id).collect(),
            coordinator_agent_id: None,
            configuration: WorkflowConfiguration {
                steps: vec![step("a", &[]), step("b", &["a"])],
                phases: vec![],
                coordination: Coordination::default(),
                constraints: Constraints::default(),
                triggers: Default::default(),
                escalation: Default::default(),
                saga: Default::default(),
            },
        }
    }

    fn pointers(errors: &[FieldError]) -> Vec<&str> {
        errors.iter().map(|e| e.pointer.as_str()).collect()
    }

    #[test]
    fn an_invalid_condition_is_refused_at_its_field() {
        let team = [agent("Ada")];
        let mut wf = workflow(&team);
        wf.configuration.steps[1].condition = Some("steps.a.status == 'completed'".into());
        assert_eq!(validate_workflow(&wf), vec![]);
        wf.configuration.steps[0].condition = Some("input.priority ==".into());
        let errors = validate_workflow(&wf);
        assert_eq!(pointers(&errors), vec!["/configuration/steps/0/condition"]);
        assert!(
            errors[0]
                .message
                .starts_with("is not a valid CEL expression")
        );
    }

    #[test]
    fn phases_name_existing_steps_once_and_join_the_cycle_check() {
        let team = [agent("Ada")];
        let phase = |name: &str, steps: &[&str]| cadre_proto::model::WorkflowPhase {
            name: name.into(),
            mode: cadre_proto::model::PhaseMode::Parallel,
            steps: steps.iter().map(|s| StepId::parse(*s).unwrap()).collect(),
        };
        let mut wf = workflow(&team);
        wf.configuration.phases = vec![phase("One", &["a", "nope"]), phase("Two", &["a"])];
        let errors = validate_workflow(&wf);
        assert_eq!(
            pointers(&errors),
            vec![
                "/configuration/phases/0/steps/1",
                "/configuration/phases/1/steps/0"
            ]
        );
        assert!(errors[1].message.contains("already in phase 'One'"));

        // b depends on a, but the phases put b's phase first: a cycle through the phases.
        wf.configuration.phases = vec![phase("First", &["b"]), phase("Second", &["a"])];
        let errors = validate_workflow(&wf);
        assert_eq!(
            errors[0].message,
            "dependsOn and phases form a cycle: a -> b -> a"
        );
    }

    #[test]
    fn schedules_follow_the_servers_syntax() {
        for ok in [
            "0 */15 * * * *",
            "* * * * * *",
            "0 0 9 * * mon-fri",
            "@hourly",
            "@every 90s",
            "@every 1h30m",
        ] {
            assert_eq!(check_schedule(ok), Ok(()), "{ok}");
        }
        for bad in [
            "*/15 * * * *",
            "61 * * * * *",
            "0 0 L * * *",
            "@every 500ms",
            "@every soon",
            "0 0 0 * * 7",
            "0 0 0 * * 0-7",
            "0 0 0 31 4 *",
            "0 0 0 30 2 *",
            "@fortnightly",
        ] {
            assert!(check_schedule(bad).is_err(), "{bad}");
        }
        let team = [agent("Ada")];
        let mut wf = workflow(&team);
        wf.configuration.triggers.schedule = Some("every day".into());
        wf.configuration.triggers.after_workflows = vec![wf.id, WorkflowId::new()];
        let errors = validate_workflow(&wf);
        assert_eq!(
            pointers(&errors),
            vec![
                "/configuration/triggers/schedule",
                "/configuration/triggers/afterWorkflows/0"
            ]
        );
    }

    #[test]
    fn the_fixtures_are_valid() {
        let team = [agent("Ada")];
        assert_eq!(validate_agent(&team[0]), vec![]);
        assert_eq!(validate_workflow(&workflow(&team)), vec![]);
    }

    #[test]
    fn the_coordinator_must_be_a_participant() {
        let team = [agent("Ada"), agent("Bo")];
        let mut wf = workflow(&team[..1]);
        wf.coordinator_agent_id = Some(team[1].id);
        let errors = validate_workflow(&wf);
        assert_eq!(pointers(&errors), vec!["/coordinatorAgentId"]);
        assert!(
            errors[0]
                .message
                .contains("not one of the participatingAgents")
        );
        wf.coordinator_agent_id = Some(team[0].id);
        assert_eq!(validate_workflow(&wf), vec![]);
    }

    #[test]
    fn a_dependency_listed_twice_is_refused_where_it_repeats() {
        let team = [agent("Ada")];
        let mut wf = workflow(&team);
        wf.configuration.steps.push(step("c", &["a", "b", "a"]));
        let errors = validate_workflow(&wf);
        assert_eq!(
            pointers(&errors),
            vec!["/configuration/steps/2/dependsOn/2"]
        );
        assert_eq!(errors[0].message, "step 'a' is listed twice; list it once");
    }

    #[test]
    fn a_provider_name_must_be_usable_as_a_queue_name() {
        for bad in ["open.ai", "open ai", "q*", ">", "QUIRK"] {
            let mut a = agent("Ada");
            a.provider = bad.to_owned();
            assert_eq!(pointers(&validate_agent(&a)), vec!["/provider"], "{bad}");
        }
        let mut a = agent("Ada");
        a.provider = "llama_cpp-2".to_owned();
        assert_eq!(validate_agent(&a), vec![]);
        a.fallback = Some(ModelChoice {
            provider: "open.ai".to_owned(),
            model: String::new(),
        });
        assert_eq!(
            pointers(&validate_agent(&a)),
            vec!["/fallback/provider", "/fallback/model"]
        );
    }

    #[test]
    fn every_free_text_field_has_a_limit() {
        let long = |n: usize| "x".repeat(n + 1);
        type AgentEdit = fn(&mut AgentProfile, String);
        let agent_fields: [(&str, usize, AgentEdit); 6] = [
            ("/name", limits::NAME, |a, t| a.name = t),
            ("/role", limits::NAME, |a, t| a.role = t),
            ("/backstory", limits::BACKSTORY, |a, t| a.backstory = t),
            ("/skills/0", limits::NAME, |a, t| a.skills[0] = t),
            ("/provider", limits::PROVIDER, |a, t| a.provider = t),
            ("/model", limits::NAME, |a, t| a.model = t),
        ];
        for (pointer, max, edit) in agent_fields {
            let mut a = agent("Ada");
            // A provider name is a subject token: ASCII only.
            let widest = if pointer == "/provider" { "x" } else { "é" };
            edit(&mut a, widest.repeat(max));
            assert_eq!(validate_agent(&a), vec![], "{pointer} at its limit");
            edit(&mut a, long(max));
            let errors = validate_agent(&a);
            assert_eq!(pointers(&errors), vec![pointer]);
            assert_eq!(
                errors[0].message,
                format!("must be at most {max} characters (it has {})", max + 1)
            );
        }
        let mut a = agent("Ada");
        a.skills = vec!["s".into(); limits::SKILLS + 1];
        assert_eq!(pointers(&validate_agent(&a)), vec!["/skills"]);

        let team = [agent("Ada")];
        type WorkflowEdit = fn(&mut WorkflowDefinition, String);
        let workflow_fields: [(&str, usize, WorkflowEdit); 9] = [
            ("/name", limits::NAME, |w, t| w.name = t),
            ("/description", limits::DESCRIPTION, |w, t| {
                w.description = t
            }),
            ("/configuration/steps/0/name", limits::NAME, |w, t| {
                w.configuration.steps[0].name = t
            }),
            (
                "/configuration/steps/0/description",
                limits::DESCRIPTION,
                |w, t| w.configuration.steps[0].description = t,
            ),
            (
                "/configuration/steps/0/assignedAgentRole",
                limits::NAME,
                |w, t| w.configuration.steps[0].assigned_agent_role = Some(t),
            ),
            (
                "/configuration/steps/0/requiredSkills/0",
                limits::NAME,
                |w, t| w.configuration.steps[0].required_skills[0] = t,
            ),
            (
                "/configuration/steps/0/instructions",
                limits::INSTRUCTIONS,
                |w, t| w.configuration.steps[0].instructions = t,
            ),
            (
                "/configuration/steps/0/expectedOutput",
                limits::EXPECTED_OUTPUT,
                |w, t| w.configuration.steps[0].expected_output = t,
            ),
            (
                "/configuration/steps/0/validationCriteria/0",
                limits::VALIDATION_CRITERION,
                |w, t| w.configuration.steps[0].validation_criteria = vec![t],
            ),
        ];
        for (pointer, max, edit) in workflow_fields {
            let mut wf = workflow(&team);
            edit(&mut wf, "é".repeat(max));
            assert_eq!(validate_workflow(&wf), vec![], "{pointer} at its limit");
            edit(&mut wf, long(max));
            assert_eq!(pointers(&validate_workflow(&wf)), vec![pointer]);
        }
        let mut wf = workflow(&team);
        wf.configuration.steps[0].required_skills = vec!["s".into(); limits::SKILLS + 1];
        wf.configuration.steps[1].validation_criteria =
            vec!["c".into(); limits::VALIDATION_CRITERIA + 1];
        assert_eq!(
            pointers(&validate_workflow(&wf)),
            vec![
                "/configuration/steps/0/requiredSkills",
                "/configuration/steps/1/validationCriteria"
            ]
        );
        let mut wf = workflow(&team);
        wf.configuration.steps[0].reviewer_role = Some(long(limits::NAME));
        assert_eq!(
            pointers(&validate_workflow(&wf)),
            vec![
                "/configuration/steps/0/reviewerRole",
                "/configuration/steps/0/reviewerRole"
            ]
        );
        let many: Vec<AgentProfile> = (0..=limits::PARTICIPATING_AGENTS)
            .map(|i| agent(&format!("A{i}")))
            .collect();
        assert_eq!(
            pointers(&validate_workflow(&workflow(&many))),
            vec!["/participatingAgents"]
        );

        assert_eq!(
            validate_start(Some(&"é".repeat(limits::TRIGGERED_BY)), None),
            vec![]
        );
        assert_eq!(
            pointers(&validate_start(Some(&long(limits::TRIGGERED_BY)), None)),
            vec!["/triggeredBy"]
        );
        let big = serde_json::Map::from_iter([(
            "blob".to_owned(),
            serde_json::Value::String("x".repeat(limits::INPUT_BYTES)),
        )]);
        assert_eq!(pointers(&validate_start(None, Some(&big))), vec!["/input"]);
    }

    #[test]
    fn fields_that_do_nothing_are_refused_and_say_so() {
        let team = [agent("Ada")];
        let mut wf = workflow(&team);
        wf.configuration.coordination.voters = Some(3);
        wf.configuration.steps[1].reviewer_role = Some("reviewer".into());
        wf.configuration.saga.max_replans = Some(2);
        let errors = validate_workflow(&wf);
        assert_eq!(
            pointers(&errors),
            vec![
                "/configuration/coordination/voters",
                "/configuration/saga/maxReplans",
                "/configuration/steps/1/reviewerRole",
            ]
        );
        assert!(
            errors[1]
                .message
                .contains("only means something with replan: true")
        );
        assert!(
            errors[0]
                .message
                .contains("only means something with decisionMaking")
        );
        assert!(
            errors[2]
                .message
                .contains("only means something with reviewRequired")
        );

        // Real now: accepted.
        let mut wf = workflow(&team);
        wf.configuration.steps[0].review_required = true;
        wf.configuration.steps[0].reviewer_role = Some("reviewer".into());
        wf.workflow_type = WorkflowType::Recursive;
        wf.configuration.steps[1].child_workflow_id = Some(WorkflowId::new());
        wf.configuration.steps[0].timeout_minutes = Some(5.0);
        wf.configuration.steps[0].can_run_in_parallel = false;
        wf.configuration.constraints.max_execution_time = Some(30);
        wf.configuration.constraints.allow_parallel_execution = Some(false);
        assert_eq!(validate_workflow(&wf), vec![]);
    }

    #[test]
    fn a_time_out_is_between_a_second_and_a_week() {
        let team = [agent("Ada")];
        for (minutes, refused) in [
            (1e-12, true),
            (0.0, true),
            (-1.0, true),
            (0.5 / 60.0, true),
            (f64::NAN, true),
            (f64::INFINITY, true),
            (limits::TIMEOUT_MINUTES + 1.0, true),
            (1.0 / 60.0, false),
            (0.05, false),
            (limits::TIMEOUT_MINUTES, false),
        ] {
            let mut wf = workflow(&team);
            wf.configuration.steps[0].timeout_minutes = Some(minutes);
            let errors = validate_workflow(&wf);
            if refused {
                assert_eq!(
                    pointers(&errors),
                    ["/configuration/steps/0/timeoutMinutes"],
                    "{minutes}"
                );
                assert!(errors[0].message.contains("one second"), "{minutes}");
            } else {
                assert_eq!(errors, vec![], "{minutes}");
            }
        }
    }

    /// The run's time for a person is a timer too: from a second, to the longest run.
    #[test]
    fn the_time_for_a_person_is_between_a_second_and_thirty_days() {
        let team = [agent("Ada")];
        let longest = f64::from(limits::EXECUTION_SECONDS) / 60.0;
        for (minutes, refused) in [
            (1e-320, true),
            (0.0, true),
            (-1.0, true),
            (0.5 / 60.0, true),
            (f64::NAN, true),
            (longest + 1.0, true),
            (1.0 / 60.0, false),
            (0.1, false),
            (longest, false),
        ] {
            let mut wf = workflow(&team);
            wf.configuration.escalation.after_minutes = Some(minutes);
            let errors = validate_workflow(&wf);
            if refused {
                assert_eq!(
                    pointers(&errors),
                    ["/configuration/escalation/afterMinutes"],
                    "{minutes}"
                );
                assert!(errors[0].message.contains("one second"), "{minutes}");
            } else {
                assert_eq!(errors, vec![], "{minutes}");
            }
        }
    }

    #[test]
    fn a_panel_needs_voters_and_something_to_vote_on() {
        let team = [agent("Ada"), agent("Bo")];
        let mut wf = workflow(&team);
        wf.configuration.coordination.decision_making = DecisionMaking::Majority;
        let errors = validate_workflow(&wf);
        assert_eq!(
            pointers(&errors),
            vec![
                "/configuration/coordination/decisionMaking",
                "/configuration/coordination/decisionMaking",
            ]
        );
        assert!(
            errors[0]
                .message
                .contains("'majority' asks a panel of at least two agents")
        );
        assert!(
            errors[0]
                .message
                .contains("this workflow has 2 participating agent(s)")
        );
        assert!(
            errors[1]
                .message
                .contains("'majority' has nothing to vote on")
        );

        // Three agents and a decision step: a panel of two (the default three is capped by
        // the team), and a reviewer role means something on the decision step.
        let team = [agent("Ada"), agent("Bo"), agent("Cy")];
        let mut wf = workflow(&team);
        wf.configuration.coordination.decision_making = DecisionMaking::Consensus;
        wf.configuration.steps[1].step_type = StepType::Decision;
        wf.configuration.steps[1].reviewer_role = Some("architect".into());
        assert_eq!(validate_workflow(&wf), vec![]);

        for (voters, says) in [
            (1, "must be between 2 and 9 (it is 1)"),
            (10, "must be between 2 and 9 (it is 10)"),
            (3, "3 voters need 4 participating agents"),
        ] {
            wf.configuration.coordination.voters = Some(voters);
            let errors = validate_workflow(&wf);
            assert_eq!(
                pointers(&errors),
                vec!["/configuration/coordination/voters"]
            );
            assert!(errors[0].message.contains(says), "{}", errors[0].message);
        }
        wf.configuration.coordination.voters = Some(2);
        assert_eq!(validate_workflow(&wf), vec![]);
    }

    #[test]
    fn a_workflow_whose_start_event_cannot_fit_is_refused_naming_what_is_large() {
        let tenant = TenantId::default_tenant();
        let mut team: Vec<AgentProfile> = (0..5).map(|i| agent(&format!("A{i}"))).collect();
        let wf = workflow(&team);
        assert_eq!(start_size_error(&wf, &team, &tenant), None);

        // Within every per-field limit, but 40 agents of 4-byte-character backstories add up.
        team = (0..40).map(|i| agent(&format!("A{i}"))).collect();
        for member in &mut team {
            member.backstory = "🦀".repeat(limits::BACKSTORY);
        }
        team[7].skills = vec!["a skill".into(); limits::SKILLS];
        for member in &team {
            assert_eq!(validate_agent(member), vec![]);
        }
        let wf = workflow(&team);
        assert_eq!(validate_workflow(&wf), vec![]);
        let error = start_size_error(&wf, &team, &tenant).unwrap();
        assert_eq!(error.pointer, "/participatingAgents");
        assert!(
            error.message.contains("at most 1024 KiB per event"),
            "{}",
            error.message
        );
        assert!(error.message.contains("profiles of its 40 agents"));
        assert!(error.message.contains(&format!("'A7' {}", team[7].id)));

        // The limit leaves room for the largest start: just under it fits.
        let fits = |count: usize| {
            let team: Vec<AgentProfile> = team.iter().take(count).cloned().collect();
            start_size_error(&workflow(&team), &team, &tenant).is_none()
        };
        let largest_fitting = (1..=40).take_while(|n| fits(*n)).last().unwrap();
        let team: Vec<AgentProfile> = team.into_iter().take(largest_fitting).collect();
        let started = Envelope::new(
            crate::SOURCE,
            tenant.clone(),
            Utc::now(),
            Event::ExecutionStarted(Box::new(ExecutionStarted {
                execution_id: ExecutionId::new(),
                workflow_id: WorkflowId::new(),
                execution_number: 1,
                trigger_reason: TriggerReason::Manual,
                triggered_by: Some("\u{1}".repeat(limits::TRIGGERED_BY)),
                workflow: workflow(&team),
                records: team.iter().map(|a| (a.id, widest_record())).collect(),
                agents: team,
                input: None,
                parent: None,
                started_at: Some(Utc::now()),
                deadline: Some(Utc::now()),
            })),
        );
        let limit = usize::try_from(MAX_EVENT_BYTES).unwrap();
        assert!(started.encode().len() + 1024 <= limit);
    }
}
