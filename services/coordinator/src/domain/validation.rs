//! What makes an agent or a workflow acceptable, checked before anything is written. Each
//! problem names the JSON pointer of the offending field, so a client can show it in place.

use std::collections::{HashMap, HashSet};

use cadre_proto::model::{AgentProfile, WorkflowDefinition};
use cadre_proto::{AgentId, StepId};
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// RFC 6901 pointer into the request body.
    pub pointer: String,
    pub message: String,
}

fn error(pointer: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError {
        pointer: pointer.into(),
        message: message.into(),
    }
}

const MAX_NAME: usize = 200;
pub const MAX_STEPS: usize = 500;
/// Longest step attempt: a week, in minutes.
const MAX_TIMEOUT_MINUTES: f64 = 7.0 * 24.0 * 60.0;
/// Longest run: 30 days, in seconds.
const MAX_EXECUTION_SECONDS: u32 = 30 * 24 * 3600;

fn require_text(errors: &mut Vec<FieldError>, pointer: &str, value: &str, max: usize) {
    if value.trim().is_empty() {
        errors.push(error(pointer, "must not be empty"));
    } else if value.chars().count() > max {
        errors.push(error(pointer, format!("must be at most {max} characters")));
    }
}

pub fn validate_agent(agent: &AgentProfile) -> Vec<FieldError> {
    let mut errors = Vec::new();
    require_text(&mut errors, "/name", &agent.name, MAX_NAME);
    require_text(&mut errors, "/role", &agent.role, MAX_NAME);
    require_text(&mut errors, "/provider", &agent.provider, 64);
    require_text(&mut errors, "/model", &agent.model, MAX_NAME);
    for (i, skill) in agent.skills.iter().enumerate() {
        require_text(&mut errors, &format!("/skills/{i}"), skill, MAX_NAME);
    }
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

/// Checks a workflow on its own; whether its agents exist is the caller's question.
pub fn validate_workflow(workflow: &WorkflowDefinition) -> Vec<FieldError> {
    let mut errors = Vec::new();
    require_text(&mut errors, "/name", &workflow.name, MAX_NAME);

    if workflow.participating_agents.is_empty() {
        errors.push(error(
            "/participatingAgents",
            "must name at least one agent",
        ));
    }
    let mut seen_agents = HashSet::new();
    for (i, agent) in workflow.participating_agents.iter().enumerate() {
        if !seen_agents.insert(agent) {
            errors.push(error(
                format!("/participatingAgents/{i}"),
                format!("agent {agent} is listed twice"),
            ));
        }
    }

    let steps = &workflow.configuration.steps;
    if steps.is_empty() {
        errors.push(error(
            "/configuration/steps",
            "must contain at least one step",
        ));
    } else if steps.len() > MAX_STEPS {
        errors.push(error(
            "/configuration/steps",
            format!("must contain at most {MAX_STEPS} steps"),
        ));
    }

    if let Some(seconds) = workflow.configuration.constraints.max_execution_time
        && !(1..=MAX_EXECUTION_SECONDS).contains(&seconds)
    {
        errors.push(error(
            "/configuration/constraints/maxExecutionTime",
            format!("must be from 1 to {MAX_EXECUTION_SECONDS} seconds (30 days)"),
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
        require_text(&mut errors, &format!("{at}/name"), &step.name, MAX_NAME);
        require_text(
            &mut errors,
            &format!("{at}/instructions"),
            &step.instructions,
            64 * 1024,
        );
        require_text(
            &mut errors,
            &format!("{at}/expectedOutput"),
            &step.expected_output,
            16 * 1024,
        );
        if let Some(preferred) = step.preferred_agent_id
            && !workflow.participating_agents.contains(&preferred)
        {
            errors.push(error(
                format!("{at}/preferredAgentId"),
                format!("agent {preferred} is not one of the participatingAgents"),
            ));
        }
        if let Some(minutes) = step.timeout_minutes
            && !(minutes > 0.0 && minutes <= MAX_TIMEOUT_MINUTES)
        {
            errors.push(error(
                format!("{at}/timeoutMinutes"),
                format!("must be more than 0 and at most {MAX_TIMEOUT_MINUTES} (a week)"),
            ));
        }
    }
    for (i, step) in steps.iter().enumerate() {
        for (j, dependency) in step.depends_on.iter().enumerate() {
            let at = format!("/configuration/steps/{i}/dependsOn/{j}");
            if dependency == &step.id {
                errors.push(error(at, format!("step '{}' depends on itself", step.id)));
            } else if !index.contains_key(dependency) {
                errors.push(error(at, format!("no step has the id '{dependency}'")));
            }
        }
    }
    if errors.is_empty()
        && let Some(cycle) = find_cycle(workflow)
    {
        let path: Vec<&str> = cycle.iter().map(|s| s.as_str()).collect();
        errors.push(error(
            "/configuration/steps",
            format!("dependsOn forms a cycle: {}", path.join(" -> ")),
        ));
    }
    errors
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
        steps: &[cadre_proto::model::WorkflowStep],
        position: &HashMap<&StepId, usize>,
        marks: &mut [Mark],
        path: &mut Vec<usize>,
    ) -> Option<Vec<StepId>> {
        marks[at] = Mark::OnPath;
        path.push(at);
        for dependency in &steps[at].depends_on {
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
                    if let Some(cycle) = visit(next, steps, position, marks, path) {
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
            visit(i, steps, &position, &mut marks, &mut path)
        } else {
            None
        }
    })
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
