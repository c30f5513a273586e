//! The seed's `TaskHandoff`: when a step's first attempt goes to another agent than the one
//! that completed work it depends on, that agent hands the step over ([`Handoff`], carried by
//! the step's `StepScheduled`).
//!
//! Built from the workflow definition and the execution's state only (no clock, no I/O): what
//! was done (the dependencies' summaries), what is left (the step's instructions), and the
//! rules the definition declares for the step, in words. Texts are cut to fixed lengths so a
//! handoff stays small beside the rest of the `StepScheduled` that carries it.

use cadre_proto::AgentId;
use cadre_proto::events::{HandingAgent, Handoff};
use cadre_proto::model::{AgentProfile, WorkflowStep};
use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};

use super::{Execution, StepState};

/// Characters of each dependency's summary a handoff quotes in `completedWork`.
pub const COMPLETED_WORK_CHARS: usize = 300;
/// Characters of the step's instructions a handoff quotes as `remainingWork`.
pub const REMAINING_WORK_CHARS: usize = 1000;
/// Characters of the step's expected output and validation criteria (`successCriteria`).
pub const SUCCESS_CRITERIA_CHARS: usize = 1000;

/// The handoff that goes with scheduling `step` on `agent`: from each other agent that
/// completed some of the step's dependencies, in dependency order; `None` when there is none.
/// Only for the step's first attempt (a retry, a review or a rework hands nothing over) and
/// never for a step a child workflow runs. Handoffs already recorded for the same pair of
/// agents are left out (in logs written before handoffs travelled in the scheduling, a
/// `TaskHandedOff` may be stored without the `StepScheduled` that followed it in its
/// decision): each is recorded once.
pub(super) fn handed_off(
    execution: &Execution,
    step: &WorkflowStep,
    agent: &AgentProfile,
) -> Option<Handoff> {
    let progress = &execution.steps[&step.id];
    if progress.attempt != 0 || step.child_workflow_id.is_some() {
        return None;
    }
    let workflow = &execution.workflow;
    let dependencies = workflow.dependencies(step);
    // Who completed which dependency, grouped by agent in the order first met.
    let mut done_by: Vec<(AgentId, Vec<String>)> = Vec::new();
    for id in &dependencies {
        let (Some(dependency), Some(progress)) = (workflow.step(id), execution.steps.get(*id))
        else {
            continue;
        };
        // A result a person provided is handed off by nobody.
        let StepState::Completed {
            agent: Some(author),
            summary,
            ..
        } = &progress.state
        else {
            continue;
        };
        if *author == agent.id {
            continue;
        }
        let line = format!(
            "{}: {}",
            dependency.name,
            excerpt(summary, COMPLETED_WORK_CHARS)
        );
        match done_by.iter_mut().find(|(a, _)| a == author) {
            Some((_, lines)) => lines.push(line),
            None => done_by.push((*author, vec![line])),
        }
    }
    done_by.retain(|(from, _)| !progress.handoffs.contains(&(*from, agent.id)));
    if done_by.is_empty() {
        return None;
    }
    Some(Handoff {
        from: done_by
            .into_iter()
            .map(|(agent_id, lines)| HandingAgent {
                agent_id,
                completed_work: lines.join("\n"),
            })
            .collect(),
        remaining_work: excerpt(&step.instructions, REMAINING_WORK_CHARS),
        constraints: constraints(execution, step),
        dependencies: dependencies
            .iter()
            .filter_map(|id| {
                let dependency = workflow.step(id)?;
                let state = &execution.steps.get(*id)?.state;
                Some(format!(
                    "{} ({}): {}",
                    dependency.id,
                    dependency.name,
                    describe(execution, state)
                ))
            })
            .collect(),
        success_criteria: excerpt(&success_criteria(step), SUCCESS_CRITERIA_CHARS),
        escalation_conditions: escalation_conditions(execution, step),
    })
}

/// A dependency's state as the next agent needs to know it.
fn describe(execution: &Execution, state: &StepState) -> String {
    match state {
        StepState::Completed { agent: None, .. } => "completed by a person".to_owned(),
        StepState::Completed {
            agent: Some(agent), ..
        } => {
            let name = execution
                .agents
                .iter()
                .find(|a| a.id == *agent)
                .map_or_else(|| agent.to_string(), |a| a.name.clone());
            format!("completed by {name}")
        }
        StepState::Skipped => "skipped: its condition was false".to_owned(),
        other => other.name().to_owned(),
    }
}

fn success_criteria(step: &WorkflowStep) -> String {
    if step.validation_criteria.is_empty() {
        step.expected_output.clone()
    } else {
        format!(
            "{}\nValidation criteria: {}",
            step.expected_output,
            step.validation_criteria.join("; ")
        )
    }
}

/// When the run must end, if `maxExecutionTime` bounds it and its start is known.
fn deadline(execution: &Execution) -> Option<(u32, Option<DateTime<Utc>>)> {
    let seconds = execution
        .workflow
        .configuration
        .constraints
        .max_execution_time?;
    let at = execution
        .started_at
        .map(|started| started + TimeDelta::seconds(i64::from(seconds)));
    Some((seconds, at))
}

fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The rules of the definition that bind how the step is done.
fn constraints(execution: &Execution, step: &WorkflowStep) -> Vec<String> {
    let mut rules = Vec::new();
    if let Some(minutes) = step.timeout_minutes {
        rules.push(format!(
            "each attempt may take at most {minutes} minute(s) from when it is handed to the \
             workers (timeoutMinutes)"
        ));
    }
    if !step.can_run_in_parallel {
        rules.push(
            "runs alone: no other step of the execution runs at the same time \
             (canRunInParallel: false)"
                .to_owned(),
        );
    }
    if execution
        .workflow
        .configuration
        .constraints
        .allow_parallel_execution
        == Some(false)
    {
        rules.push(
            "the workflow runs one step at a time (allowParallelExecution: false)".to_owned(),
        );
    }
    match deadline(execution) {
        Some((seconds, Some(at))) => rules.push(format!(
            "the execution must end by {} (maxExecutionTime: {seconds} s)",
            timestamp(at)
        )),
        Some((seconds, None)) => rules.push(format!(
            "the execution must end within {seconds} s of its start (maxExecutionTime)"
        )),
        None => {}
    }
    if step.review_required {
        let by = step
            .reviewer_role
            .as_ref()
            .map_or_else(String::new, |role| format!(" of role '{role}'"));
        rules.push(format!(
            "the work counts as done only once another agent{by} approves it (reviewRequired)"
        ));
    }
    rules
}

/// When the step stops being the agent's alone to finish: what fails it, or the execution.
fn escalation_conditions(execution: &Execution, step: &WorkflowStep) -> Vec<String> {
    let mut conditions = Vec::new();
    if let Some(minutes) = step.timeout_minutes {
        conditions.push(format!(
            "an attempt still running after {minutes} minute(s) times out and counts as a \
             failed attempt"
        ));
    }
    let retries = execution.max_retries();
    conditions.push(if retries == 0 {
        "a failed attempt fails the execution (maxRetries: 0)".to_owned()
    } else {
        format!(
            "a failed attempt is retried; after {} failed attempts the execution fails \
             (maxRetries: {retries})",
            u64::from(retries) + 1
        )
    });
    conditions.push(
        "an error no retry fixes (a refused key, a spent quota, an invalid request) fails the \
         execution at once"
            .to_owned(),
    );
    if step.review_required {
        conditions.push(format!(
            "a reviewer may send the work back {} time(s) (maxReviewRounds); then the step \
             fails with the last feedback, and the execution with it",
            execution.max_review_rounds()
        ));
    }
    match deadline(execution) {
        Some((seconds, Some(at))) => conditions.push(format!(
            "the execution fails with 'time limit' if it is still running at {} \
             (maxExecutionTime: {seconds} s)",
            timestamp(at)
        )),
        Some((seconds, None)) => conditions.push(format!(
            "the execution fails with 'time limit' if it runs longer than {seconds} s \
             (maxExecutionTime)"
        )),
        None => {}
    }
    conditions
}

/// `text` cut to `max` characters, marked with an ellipsis when cut.
fn excerpt(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", text[..cut].trim_end()),
        None => text.to_owned(),
    }
}
