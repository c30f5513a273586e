//! What an execution does next: commands in, events out. The time is an input, never read.

use cadre_proto::events::AgentRecord;
use cadre_proto::events::{
    AssignmentReason, Ballot, EscalationContext, EscalationKind, EscalationResolved,
    ExecutionCancelled, ExecutionCompleted, ExecutionEscalated, ExecutionFailed, ExecutionPaused,
    ExecutionReplanned, ExecutionResumed, ExecutionStarted, FailedAttempt, FailureCause, Handoff,
    LeadTaken, ParentStep, QuestionAnswer, QuestionAssigned, QuestionsExpired, Request, Resolution,
    ReviewRequest, RiskSource, SagaStarted, StepAttempt, StepDeadlinesChecked, StepEscalated,
    StepRetryDue, StepRetryScheduled, StepScheduled, StepSkipped, StepTimedOut, Teammate,
    Unanswered, VotesTallied,
};
use cadre_proto::model::{
    AgentProfile, DecisionMaking, EscalationRung, MissedDeadline, RiskLead, StepType,
    TriggerReason, WorkflowDefinition, WorkflowStep, hashtags,
};
use cadre_proto::streams::FIRED_TIMER_TTL;
use cadre_proto::timers::Timer;
use std::collections::{BTreeMap, HashMap};

use cadre_proto::{AgentId, EscalationId, Event, ExecutionId, StepId};
use chrono::{DateTime, TimeDelta, Utc};

use super::{
    Execution, Reply, Saga, State, Status, StepProgress, StepState, Undoing, after_minutes, handoff,
};
use crate::domain::Decider;
use crate::domain::assignment::{Judging, assign, assign_reviewer};
use crate::domain::condition::{self, StepView};
use crate::domain::validation::validate_workflow;

/// Begin a run of `workflow` with a snapshot of its agents. The workflow's execution numbers
/// are decided by `crate::domain::starts`.
#[derive(Debug, Clone, PartialEq)]
pub struct Start {
    pub execution_id: ExecutionId,
    pub trigger_reason: TriggerReason,
    pub triggered_by: Option<String>,
    pub workflow: WorkflowDefinition,
    pub agents: Vec<AgentProfile>,
    pub input: Option<serde_json::Value>,
    /// The step this run is a child of, if any.
    pub parent: Option<ParentStep>,
    /// The agents' records as known at the start (see `ExecutionStarted.records`).
    pub records: BTreeMap<AgentId, AgentRecord>,
}

/// The first event of an execution: the run numbered `number` of its workflow, started `now`.
pub fn started(start: &Start, number: u32, now: DateTime<Utc>) -> ExecutionStarted {
    ExecutionStarted {
        execution_id: start.execution_id,
        workflow_id: start.workflow.id,
        execution_number: number,
        trigger_reason: start.trigger_reason,
        triggered_by: start.triggered_by.clone(),
        workflow: start.workflow.clone(),
        agents: start.agents.clone(),
        input: start.input.clone(),
        parent: start.parent.clone(),
        started_at: Some(now),
        records: start.records.clone(),
        deadline: start
            .workflow
            .configuration
            .constraints
            .max_execution_time
            .map(|seconds| now + TimeDelta::seconds(i64::from(seconds))),
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Do whatever the state calls for: schedule ready steps, retry, complete or fail.
    Advance,
    /// A durable timer of this execution is due.
    TimerFired(Timer),
    Cancel(Request),
    Pause(Request),
    Resume(Request),
    /// A person resolves the escalation `escalation_id` (`request` says who and why).
    Resolve {
        escalation_id: EscalationId,
        resolution: Resolution,
        request: Request,
    },
    /// What the state called for could not be recorded, for a reason retrying cannot change
    /// (`error` says which): the run fails rather than wait forever.
    Abandon {
        error: String,
    },
}

impl Command {
    /// Whether deciding needs the run's steps, or only the run's own facts, which its status
    /// is folded from: a cancel, pause or resume needs only those, so the API loads and expects
    /// just them ([`cadre_proto::subjects::execution_facts`]) and workers reporting on a
    /// hundred running steps never make a person's cancel lose the race for the log.
    pub fn reads_steps(&self) -> bool {
        !matches!(self, Self::Cancel(_) | Self::Pause(_) | Self::Resume(_))
    }
}

/// A person asked for a change the execution's status does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitionRefused {
    #[error("no execution has this id")]
    NotStarted,
    #[error("the execution is {status}; it cannot be {wanted}")]
    Invalid {
        status: &'static str,
        wanted: &'static str,
    },
    /// No step of the execution waits on this escalation (any more).
    #[error("escalation {escalation_id} is not open: {why}")]
    NotOpen {
        escalation_id: EscalationId,
        why: String,
    },
    /// The action does not apply to this escalation (`approve` of a failure, `reassign` to an
    /// agent outside the execution); `field` names what in the request is at fault.
    #[error("{why}")]
    Unfit { field: &'static str, why: String },
}

/// The execution aggregate, for `crate::command`.
pub struct ExecutionDecider;

impl Decider for ExecutionDecider {
    type State = State;
    type Command = Command;
    type Error = TransitionRefused;

    fn decide(
        command: &Command,
        state: &State,
        now: DateTime<Utc>,
    ) -> Result<Vec<Event>, TransitionRefused> {
        decide(command, state, now)
    }

    fn evolve(state: State, event: &Event) -> State {
        super::evolve(state, event)
    }
}

pub fn decide(
    command: &Command,
    state: &State,
    now: DateTime<Utc>,
) -> Result<Vec<Event>, TransitionRefused> {
    let mut events = events_for(command, state, now)?;
    if let State::Started(execution) = state {
        mark_timer_arming(execution, &mut events, now);
    }
    Ok(events)
}

/// What `command` calls for, before [`mark_timer_arming`] marks the schedulings that arm the
/// step time-out timer.
fn events_for(
    command: &Command,
    state: &State,
    now: DateTime<Utc>,
) -> Result<Vec<Event>, TransitionRefused> {
    let State::Started(execution) = state else {
        return match command {
            // Nothing to advance before the start; a timer cannot outlive its execution's log.
            Command::Advance | Command::TimerFired(_) | Command::Abandon { .. } => Ok(vec![]),
            _ => Err(TransitionRefused::NotStarted),
        };
    };
    let (execution_id, workflow_id) = (execution.id, execution.workflow.id);
    let status = execution.status;
    let refuse = |wanted| TransitionRefused::Invalid {
        status: status.as_str(),
        wanted,
    };
    match command {
        Command::Advance => Ok(advance(execution, now)),
        Command::TimerFired(timer) => Ok(timer_fired(execution, timer)),
        Command::Abandon { error } if !status.is_finished() => {
            Ok(failed(execution, FailureCause::Unrecordable, error.clone()))
        }
        Command::Abandon { .. } => Ok(vec![]),
        Command::Cancel(request) if !status.is_finished() => {
            Ok(vec![Event::ExecutionCancelled(ExecutionCancelled {
                execution_id,
                workflow_id,
                request: request.clone(),
            })])
        }
        Command::Pause(request) if status == Status::Running => {
            Ok(vec![Event::ExecutionPaused(ExecutionPaused {
                execution_id,
                workflow_id,
                request: request.clone(),
            })])
        }
        Command::Resume(request) if status == Status::Paused => {
            Ok(vec![Event::ExecutionResumed(ExecutionResumed {
                execution_id,
                workflow_id,
                request: request.clone(),
            })])
        }
        Command::Resolve {
            escalation_id,
            resolution,
            request,
        } => match resolved(execution, *escalation_id, resolution, request) {
            // Resolved already (and the run ended since): that is what the person needs to hear.
            Err(not_open @ TransitionRefused::NotOpen { .. }) => Err(not_open),
            // Still open, but the run ended under it (cancelled while a person was to decide).
            _ if status.is_finished() => Err(refuse("resolved")),
            decided => decided.map(|e| vec![e]),
        },
        Command::Cancel(_) => Err(refuse("cancelled")),
        Command::Pause(_) => Err(refuse("paused")),
        Command::Resume(_) => Err(refuse("resumed")),
    }
}

/// A person's decision on what waits on `escalation_id` (a step, or the run), if it fits.
fn resolved(
    execution: &Execution,
    escalation_id: EscalationId,
    resolution: &Resolution,
    request: &Request,
) -> Result<Event, TransitionRefused> {
    let waiting = execution.steps.iter().find_map(|(id, p)| match p.state {
        StepState::Escalated {
            escalation_id: open,
            approval,
        } if open == escalation_id => Some((id, p, approval)),
        _ => None,
    });
    let (step, attempt, kind) = match waiting {
        Some((id, p, approval)) => (
            Some(id),
            p.attempt,
            if approval {
                EscalationKind::Approval
            } else {
                EscalationKind::Failure
            },
        ),
        None if execution.escalation == Some((escalation_id, true)) => {
            (None, 0, EscalationKind::Execution)
        }
        None => {
            return Err(TransitionRefused::NotOpen {
                escalation_id,
                why: "nothing in the execution waits on it (it was resolved already, a \
                      re-plan replaced its step, or it was never opened in this execution)"
                    .to_owned(),
            });
        }
    };
    if !resolution.fits(kind) {
        let what = match kind {
            EscalationKind::Failure => "a failed step",
            EscalationKind::Approval => "an approval",
            EscalationKind::Execution => "the run's time limit for a person",
        };
        return Err(TransitionRefused::Unfit {
            field: "action",
            why: format!(
                "'{}' does not apply to this escalation, about {what}: {} it",
                resolution.as_str(),
                kind.actions()
            ),
        });
    }
    let barred = waiting
        .map(|(_, p, _)| p.barred_from_judging())
        .unwrap_or_default();
    if let Resolution::Reassign { agent_id } = resolution
        && barred.contains(agent_id)
    {
        return Err(TransitionRefused::Unfit {
            field: "agentId",
            why: format!(
                "agent {agent_id} wrote the work under review, or already voted on it this \
                 round: its judge must be someone else; reassign to one of: {}",
                execution
                    .agents
                    .iter()
                    .filter(|a| !barred.contains(&a.id))
                    .map(|a| format!("{} ({})", a.id, a.name))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        });
    }
    if let Resolution::Reassign { agent_id } = resolution
        && !execution.agents.iter().any(|a| a.id == *agent_id)
    {
        return Err(TransitionRefused::Unfit {
            field: "agentId",
            why: format!(
                "agent {agent_id} does not take part in this execution (or does not exist); \
                 reassign to one of: {}",
                execution
                    .agents
                    .iter()
                    .map(|a| format!("{} ({})", a.id, a.name))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        });
    }
    Ok(Event::EscalationResolved(Box::new(EscalationResolved {
        execution_id: execution.id,
        workflow_id: execution.workflow.id,
        step_id: step.cloned(),
        step_name: step
            .and_then(|id| execution.workflow.step(id))
            .map(|s| s.name.clone()),
        attempt,
        escalation_id,
        resolution: resolution.clone(),
        request: request.clone(),
    })))
}

/// The run cannot go on: it fails, unless steps that completed declare how to undo them and
/// have not been undone yet, in which case a saga undoes them first (`SagaStarted`).
fn failing(execution: &Execution, cause: FailureCause, error: String) -> Vec<Event> {
    if execution.saga.is_some() {
        return failed(execution, cause, error);
    }
    // A person who aborted decided to stop, and a run past its time limit has no time left:
    // neither re-plans (both still undo their steps).
    let replan = execution.replans < execution.workflow.configuration.saga.replans_allowed()
        && coordinator(execution).is_some()
        && !matches!(
            cause,
            FailureCause::Aborted { .. } | FailureCause::TimeLimit { .. }
        );
    let steps: Vec<StepId> = execution
        .completion_order
        .iter()
        .rev()
        .filter(|id| {
            execution
                .workflow
                .step(id)
                .is_some_and(|s| s.compensation.is_some())
        })
        .cloned()
        .collect();
    if steps.is_empty() && !replan {
        return failed(execution, cause, error);
    }
    vec![Event::SagaStarted(Box::new(SagaStarted {
        execution_id: execution.id,
        workflow_id: execution.workflow.id,
        cause,
        error,
        steps,
        replan,
    }))]
}

/// Longest reasoning of a coordinator agent's choice kept with the assignment.
const REASONING_CHARS: usize = 500;

/// The step in which the coordinator agent chooses who takes `step`, when the workflow decides
/// by its coordinator and the step names neither an agent nor a role that takes it: seed 000's
/// coordinator-agent assignment. Only a step's first attempt is delegated, and only among
/// several candidates.
fn delegation_asked(
    execution: &Execution,
    step: &WorkflowStep,
    now: DateTime<Utc>,
) -> Option<Event> {
    let workflow = &execution.workflow;
    let coordinator = coordinator(execution)?;
    let progress = &execution.steps[&step.id];
    let named = step
        .preferred_agent_id
        .is_some_and(|id| execution.agents.iter().any(|a| a.id == id));
    let of_role = step.assigned_agent_role.as_deref().is_some_and(|role| {
        execution
            .agents
            .iter()
            .any(|a| a.role.trim().eq_ignore_ascii_case(role.trim()))
    });
    if workflow.configuration.coordination.decision_making != DecisionMaking::Coordinator
        || progress.attempt > 0
        || named
        || of_role
        || step.child_workflow_id.is_some()
        || execution.lead().is_some()
        || execution.agents.len() < 2
    {
        return None;
    }
    let candidates: Vec<String> = execution
        .agents
        .iter()
        .map(|a| {
            format!(
                "- {}: {} ({}), skills: {}",
                a.id,
                a.name,
                a.role,
                a.skills.join(", ")
            )
        })
        .collect();
    let choosing = coordinator_task(
        step.id.delegate(),
        format!("Choose who takes {}", step.name),
        format!(
            "As the coordinator of workflow '{}', choose the participant best placed to do step \
             '{}'.",
            workflow.name, step.name
        ),
        format!(
            "The step: {}\nIts instructions: {}\nIts required skills: {}\n\nThe participants \
             (id: name (role), skills):\n{}",
            step.name,
            step.instructions,
            step.required_skills.join(", "),
            candidates.join("\n")
        ),
        "The output is only a JSON object {\"agentId\": \"<one participant's id>\", \
         \"reasoning\": \"<why, in a sentence>\"}.",
        coordinator.id,
        step.timeout_minutes,
    );
    Some(task_scheduled(
        execution,
        &choosing,
        coordinator,
        AssignmentReason::Chooses {
            step_id: step.id.clone(),
        },
        now,
    ))
}

/// Who takes a step the coordinator agent chose for: its choice, when its answer names a
/// participant (by id, else by name) in a JSON object `{agentId, reasoning}`; otherwise the
/// usual rules, with why the choice could not be taken.
fn delegated<'a>(
    execution: &'a Execution,
    step: &WorkflowStep,
    answer: &Result<(String, String), String>,
    load: &HashMap<AgentId, u32>,
) -> Option<(&'a AgentProfile, AssignmentReason)> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Choice {
        agent_id: String,
        #[serde(default)]
        reasoning: String,
    }
    let chosen = answer
        .as_ref()
        .map_err(Clone::clone)
        .and_then(|(summary, output)| {
            let (Some(start), Some(end)) = (output.find('{'), output.rfind('}')) else {
                return Err(
                    "its answer holds no JSON object {\"agentId\", \"reasoning\"}".to_owned(),
                );
            };
            let choice: Choice = serde_json::from_str(&output[start..=end]).map_err(|e| {
                format!("its answer is not a JSON object {{\"agentId\", \"reasoning\"}}: {e}")
            })?;
            let named = choice.agent_id.trim();
            let agent = execution
                .agents
                .iter()
                .find(|a| a.id.to_string() == named)
                .or_else(|| {
                    execution
                        .agents
                        .iter()
                        .find(|a| a.name.eq_ignore_ascii_case(named))
                })
                .ok_or_else(|| {
                    format!("it chose '{named}', who does not take part in this execution")
                })?;
            let reasoning = if choice.reasoning.trim().is_empty() {
                summary.trim()
            } else {
                choice.reasoning.trim()
            };
            Ok((
                agent,
                reasoning.chars().take(REASONING_CHARS).collect::<String>(),
            ))
        });
    match chosen {
        Ok((agent, reasoning)) => Some((agent, AssignmentReason::Delegated { reasoning })),
        Err(why) => {
            assign(step, &execution.agents, load, &execution.records).map(|(agent, fallback)| {
                (
                    agent,
                    AssignmentReason::NotDelegated {
                        why,
                        fallback: Box::new(fallback),
                    },
                )
            })
        }
    }
}

/// A coordinator agent's choice that ran past its step's time-out.
fn delegation_timed_out(execution: &Execution, choosing: &StepId, attempt: u32) -> Option<Event> {
    let step_id = choosing.delegated()?;
    let step = execution.workflow.step(&step_id)?;
    let StepState::Delegating { attempt: asked } = execution.steps.get(&step_id)?.state else {
        return None;
    };
    let coordinator = coordinator(execution)?;
    (asked == attempt).then(|| {
        Event::StepTimedOut(StepTimedOut {
            attempt: attempt_of(
                execution,
                choosing.clone(),
                format!("Choose who takes {}", step.name),
                attempt,
                coordinator.id,
            ),
            timeout_minutes: step.timeout_minutes.unwrap_or_default(),
        })
    })
}

/// The workflow's coordinator agent, when it takes part in the run.
fn coordinator(execution: &Execution) -> Option<&AgentProfile> {
    let id = execution.workflow.coordinator_agent_id?;
    execution.agents.iter().find(|a| a.id == id)
}

/// What a failing run does once its undoings are done: re-plan when the workflow asks for it
/// (hand the re-planning to the coordinator agent, wait for it, then take its proposal if it is
/// valid), else fail.
fn replan(execution: &Execution, saga: &Saga, undone: &str, now: DateTime<Utc>) -> Vec<Event> {
    let error = format!("{}{undone}", saga.error);
    let fail = |why: Option<String>| {
        let error = match why {
            Some(why) => format!("{error}; re-planning failed: {why}"),
            None => error.clone(),
        };
        failed(execution, saga.cause.clone(), error)
    };
    let (Some(planning), Some(agent)) = (&saga.replan, coordinator(execution)) else {
        return fail(None);
    };
    let n = execution.replans + 1;
    match planning {
        Undoing::Scheduled { .. } => vec![],
        Undoing::Pending if matches!(execution.status, Status::Paused | Status::Escalated) => {
            vec![]
        }
        Undoing::Pending => {
            let step = replanning_step(execution, n, &error, agent.id);
            vec![task_scheduled(
                execution,
                &step,
                agent,
                AssignmentReason::Replans,
                now,
            )]
        }
        Undoing::Failed { error } => fail(Some(format!("the coordinator agent failed: {error}"))),
        Undoing::Done { summary, output } => match proposed_steps(execution, output) {
            Ok(steps) => vec![Event::ExecutionReplanned(Box::new(ExecutionReplanned {
                execution_id: execution.id,
                workflow_id: execution.workflow.id,
                replan: n,
                agent_id: agent.id,
                summary: summary.clone(),
                steps,
                error,
            }))],
            Err(why) => fail(Some(why)),
        },
    }
}

/// The step in which the coordinator agent re-plans: what failed, what was done and undone,
/// and the steps as they stood, with the answer's required shape.
fn replanning_step(
    execution: &Execution,
    n: u32,
    error: &str,
    coordinator: AgentId,
) -> WorkflowStep {
    let workflow = &execution.workflow;
    let done: Vec<String> = execution
        .completion_order
        .iter()
        .filter_map(|id| {
            let StepState::Completed { summary, .. } = &execution.steps[id].state else {
                return None;
            };
            Some(format!("- {id}: {summary}"))
        })
        .collect();
    let steps = serde_json::to_string_pretty(&workflow.configuration.steps).unwrap_or_default();
    coordinator_task(
        StepId::replan(n),
        "Re-plan the run".to_owned(),
        format!(
            "The run of workflow '{}' failed and its completed steps were undone where they \
             declare how. Propose revised steps that reach the workflow's goal another way.",
            workflow.name
        ),
        format!(
            "Why the run failed: {error}\n\nSteps completed before it failed (their effects \
             were compensated where the step says how):\n{}\n\nThe steps as they stood, as \
             JSON:\n{steps}\n\nPropose the revised steps the run goes on with, in the same \
             JSON shape. They replace every step; keep a step's id to run it again.",
            if done.is_empty() {
                "(none)".to_owned()
            } else {
                done.join("\n")
            }
        ),
        "The output is only a JSON object {\"steps\": [...]} whose steps have the shape above \
         (id, name, description, type, requiredSkills, dependsOn, instructions, expectedOutput); \
         the summary says why.",
        coordinator,
        workflow
            .configuration
            .steps
            .iter()
            .filter_map(|s| s.timeout_minutes)
            .reduce(f64::max),
    )
}

/// A decision the run asks of its coordinator agent (`coordinator`), as a step of its own.
fn coordinator_task(
    id: StepId,
    name: String,
    description: String,
    instructions: String,
    expected_output: &str,
    coordinator: AgentId,
    timeout_minutes: Option<f64>,
) -> WorkflowStep {
    WorkflowStep {
        id,
        name,
        description,
        step_type: StepType::Decision,
        assigned_agent_role: None,
        preferred_agent_id: Some(coordinator),
        required_skills: Vec::new(),
        depends_on: Vec::new(),
        can_run_in_parallel: true,
        instructions,
        expected_output: expected_output.to_owned(),
        timeout_minutes,
        validation_criteria: Vec::new(),
        review_required: false,
        reviewer_role: None,
        condition: None,
        child_workflow_id: None,
        risks: Vec::new(),
        compensation: None,
    }
}

/// The steps a re-planning proposed, if they make a valid workflow: the JSON object of the
/// answer's output (fenced or not), validated as the workflow with these steps would be.
fn proposed_steps(execution: &Execution, output: &str) -> Result<Vec<WorkflowStep>, String> {
    #[derive(serde::Deserialize)]
    struct Proposal {
        steps: Vec<WorkflowStep>,
    }
    let (Some(start), Some(end)) = (output.find('{'), output.rfind('}')) else {
        return Err("its output holds no JSON object {\"steps\": [...]}".to_owned());
    };
    let proposal: Proposal = serde_json::from_str(&output[start..=end])
        .map_err(|e| format!("its output is not a JSON object {{\"steps\": [...]}}: {e}"))?;
    if proposal.steps.is_empty() {
        return Err("it proposed no step".to_owned());
    }
    let mut workflow = execution.workflow.clone();
    workflow.configuration.steps = proposal.steps;
    workflow.configuration.phases.clear();
    let errors = validate_workflow(&workflow);
    if !errors.is_empty() {
        let errors: Vec<String> = errors
            .iter()
            .map(|e| format!("{} {}", e.pointer, e.message))
            .collect();
        return Err(format!("its steps are not valid: {}", errors.join("; ")));
    }
    Ok(workflow.configuration.steps)
}

/// The undoing `undo` of a saga ran past the time-out of the step it undoes.
fn undoing_timed_out(execution: &Execution, undo: &StepId, attempt: u32) -> Option<Event> {
    let (
        step_id,
        Undoing::Scheduled {
            attempt: running,
            agent,
        },
    ) = execution.saga.as_ref()?.current()?
    else {
        return None;
    };
    let step = execution.workflow.step(step_id)?;
    let undo_step = step.compensation_step()?;
    if *running != attempt || undo_step.id != *undo {
        return None;
    }
    Some(Event::StepTimedOut(StepTimedOut {
        attempt: attempt_of(execution, undo_step.id, undo_step.name, attempt, *agent),
        timeout_minutes: step.timeout_minutes?,
    }))
}

/// Attempt `number` of `step_id` (named `step_name`) of the execution, by `agent_id`.
fn attempt_of(
    execution: &Execution,
    step_id: StepId,
    step_name: String,
    number: u32,
    agent_id: AgentId,
) -> StepAttempt {
    StepAttempt {
        execution_id: execution.id,
        workflow_id: execution.workflow.id,
        step_id,
        step_name,
        number,
        agent_id,
    }
}

/// The attempt `attempt` of `step_id` (a step, a delegation or an undoing) timed out, if it is
/// still running; `None` once it has ended.
fn attempt_timed_out(execution: &Execution, step_id: &StepId, attempt: u32) -> Option<Event> {
    if let Some(timed_out) = undoing_timed_out(execution, step_id, attempt)
        .or_else(|| delegation_timed_out(execution, step_id, attempt))
    {
        return Some(timed_out);
    }
    let progress = execution.steps.get(step_id)?;
    let step = execution.workflow.step(step_id)?;
    let (
        true,
        StepState::Scheduled { agent }
        | StepState::Running { agent }
        | StepState::AwaitingAnswers { agent },
        Some(minutes),
    ) = (
        progress.attempt == attempt,
        &progress.state,
        step.timeout_minutes,
    )
    else {
        return None;
    };
    Some(Event::StepTimedOut(StepTimedOut {
        attempt: attempt_of(
            execution,
            step_id.clone(),
            step.name.clone(),
            attempt,
            *agent,
        ),
        timeout_minutes: minutes,
    }))
}

/// The step time-out timer fired for `due`: every running attempt due by then times out (by
/// the deadlines, not this replica's clock). When this is the firing the execution armed last,
/// the check is recorded with the next deadline to arm it for: the earliest of the attempts
/// still running (the timer was not cancelled when earlier attempts ended, so it may fire with
/// nothing due).
fn deadlines_checked(execution: &Execution, due: DateTime<Utc>) -> Vec<Event> {
    let (expired, pending): (Vec<_>, Vec<_>) = execution
        .step_deadlines
        .iter()
        .filter_map(|((step, attempt), at)| {
            attempt_timed_out(execution, step, *attempt).map(|timed_out| (timed_out, *at))
        })
        .partition(|(_, at)| *at <= due);
    let mut events: Vec<Event> = expired
        .into_iter()
        .map(|(timed_out, _)| timed_out)
        .collect();
    if execution.step_timer == Some(due) {
        events.push(Event::StepDeadlinesChecked(StepDeadlinesChecked {
            execution_id: execution.id,
            workflow_id: execution.workflow.id,
            due,
            next_at: pending.into_iter().map(|(_, at)| at).min(),
        }));
    }
    events
}

/// Marks the schedulings of a decision that arm the execution's step time-out timer: those
/// whose deadline comes before the time it is armed for. A timer due longer ago than a fired
/// timer is kept ([`FIRED_TIMER_TTL`]) may have fired unheard, so it counts as not armed.
fn mark_timer_arming(execution: &Execution, events: &mut [Event], now: DateTime<Utc>) {
    let mut armed = execution
        .step_timer
        .filter(|at| *at + FIRED_TIMER_TTL > now);
    for event in events {
        match event {
            Event::StepDeadlinesChecked(e) => armed = e.next_at,
            Event::StepScheduled(e) => {
                if let Some(at) = e.timeout_at
                    && armed.is_none_or(|armed| at < armed)
                {
                    e.arms_step_timer = Some(true);
                    armed = Some(at);
                }
            }
            _ => {}
        }
    }
}

/// A failing run undoes its completed steps, one at a time; once each is undone (or could not
/// be), it fails with the reason it was failing for.
fn compensate(execution: &Execution, saga: &Saga, now: DateTime<Utc>) -> Vec<Event> {
    match saga.current() {
        Some((_, Undoing::Scheduled { .. })) => vec![],
        Some(_) if matches!(execution.status, Status::Paused | Status::Escalated) => vec![],
        Some((step_id, _)) => {
            let Some(undo) = execution
                .workflow
                .step(step_id)
                .and_then(WorkflowStep::compensation_step)
            else {
                return failed(execution, saga.cause.clone(), saga.error.clone());
            };
            let author = match &execution.steps[step_id].state {
                StepState::Completed { agent, .. } => *agent,
                _ => None,
            };
            let reason = AssignmentReason::Compensates {
                step_id: step_id.clone(),
            };
            let agent = author
                .and_then(|id| execution.agents.iter().find(|a| a.id == id))
                .or_else(|| {
                    assign(
                        &undo,
                        &execution.agents,
                        &execution.load(),
                        &execution.records,
                    )
                    .map(|(a, _)| a)
                });
            let Some(agent) = agent else {
                return failed(execution, saga.cause.clone(), saga.error.clone());
            };
            vec![task_scheduled(execution, &undo, agent, reason, now)]
        }
        None => {
            let undone: Vec<String> = saga
                .steps
                .iter()
                .map(|(step, undoing)| match undoing {
                    Undoing::Failed { error } => format!("{step} (not undone: {error})"),
                    _ => step.to_string(),
                })
                .collect();
            let undone = if undone.is_empty() {
                String::new()
            } else {
                format!("; compensated: {}", undone.join(", "))
            };
            replan(execution, saga, &undone, now)
        }
    }
}

fn failed(execution: &Execution, cause: FailureCause, error: String) -> Vec<Event> {
    vec![Event::ExecutionFailed(ExecutionFailed {
        execution_id: execution.id,
        workflow_id: execution.workflow.id,
        cause,
        error,
    })]
}

/// A due timer ends what it guards, if that is still running.
fn timer_fired(execution: &Execution, timer: &Timer) -> Vec<Event> {
    if execution.status.is_finished() {
        return vec![];
    }
    match timer {
        Timer::StepDeadlines { due, .. } => deadlines_checked(execution, *due),
        Timer::StepTimeout {
            step_id, attempt, ..
        } => attempt_timed_out(execution, step_id, *attempt)
            .into_iter()
            .collect(),
        // A workflow's schedule is not a timer of an execution.
        Timer::Schedule { .. } => vec![],
        Timer::EscalationDue { .. } => execution_escalated(execution).into_iter().collect(),
        Timer::QuestionDeadline {
            step_id, attempt, ..
        } => questions_expired(execution, step_id, *attempt),
        Timer::StepRetry {
            step_id, attempt, ..
        } => match (
            execution.steps.get(step_id),
            execution.workflow.step(step_id),
        ) {
            (Some(progress), Some(step)) if progress.attempt == *attempt => {
                let StepState::RetryWaiting { agent, .. } = progress.state else {
                    return vec![];
                };
                vec![Event::StepRetryDue(StepRetryDue {
                    attempt: attempt_of(
                        execution,
                        step_id.clone(),
                        step.name.clone(),
                        *attempt,
                        agent,
                    ),
                })]
            }
            _ => vec![],
        },
        Timer::ExecutionDeadline { .. } => {
            let seconds = execution
                .workflow
                .configuration
                .constraints
                .max_execution_time
                .unwrap_or(0);
            failing(
                execution,
                FailureCause::TimeLimit {
                    max_execution_seconds: seconds,
                },
                format!(
                    "time limit: the execution ran longer than its maxExecutionTime of {seconds} s"
                ),
            )
        }
    }
}

fn advance(execution: &Execution, now: DateTime<Utc>) -> Vec<Event> {
    if execution.status.is_finished() {
        return vec![];
    }
    // A failing run undoes its completed steps before anything else (a saga).
    if let Some(saga) = &execution.saga {
        return compensate(execution, saga, now);
    }
    if let Some(escalated) = overdue_escalation(execution, now) {
        return vec![escalated];
    }
    let workflow = &execution.workflow;
    let max_retries = execution.max_retries();

    // A step that failed more often than retries allow climbs its escalation ladder; one with
    // no rung left, or that reviewers sent back as often as allowed, or that a person aborted,
    // fails the execution.
    let mut escalations = Vec::new();
    for step in &workflow.configuration.steps {
        let progress = &execution.steps[&step.id];
        let spent = match &progress.state {
            // Each rung of the ladder is one attempt: no retries once on it.
            StepState::Failed { retryable, .. } => {
                progress.failures > max_retries || !retryable || !progress.climbed.is_empty()
            }
            _ => false,
        };
        let mut passed_over = Vec::new();
        if spent {
            match escalated(execution, step) {
                Ok(escalated) => {
                    escalations.push(escalated);
                    continue;
                }
                Err(passed) => passed_over = passed,
            }
        }
        let error = match &progress.state {
            // Retries left cannot help an error no retry fixes (a refused key, a spent quota).
            StepState::Failed {
                error,
                retryable: false,
                ..
            } => format!(
                "step '{}' failed with an error another attempt cannot fix{}: {error}",
                step.name,
                climbed(progress, &passed_over)
            ),
            StepState::Failed { error, .. } if spent => format!(
                "step '{}' failed after {} attempt(s){}: {error}",
                step.name,
                progress.failures,
                climbed(progress, &passed_over)
            ),
            StepState::Aborted {
                escalation_id,
                resolution,
                by,
                reason,
            } => {
                let what = if *resolution == Resolution::Reject {
                    "rejected the approval of"
                } else {
                    "aborted the run at"
                };
                return failing(
                    execution,
                    FailureCause::Aborted {
                        step_id: Some(step.id.clone()),
                        escalation_id: *escalation_id,
                    },
                    format!(
                        "{} {what} step '{}'{}",
                        by.as_deref().unwrap_or("a person"),
                        step.name,
                        reason
                            .as_deref()
                            .map(|r| format!(": {r}"))
                            .unwrap_or_default()
                    ),
                );
            }
            StepState::Rejected { feedback } => format!(
                "step '{}' was rejected by its {} in {} review round(s), all that \
                 maxReviewRounds allows; the last feedback: {feedback}",
                step.name,
                if execution.seats(step).is_some() {
                    "panel"
                } else {
                    "reviewer"
                },
                progress.rounds
            ),
            _ => continue,
        };
        return failing(
            execution,
            FailureCause::StepFailed {
                step_id: step.id.clone(),
            },
            error,
        );
    }
    if !escalations.is_empty() {
        return escalations;
    }
    if let Some((escalation_id, by, reason)) = &execution.aborted {
        return failing(
            execution,
            FailureCause::Aborted {
                step_id: None,
                escalation_id: *escalation_id,
            },
            format!(
                "{} aborted the run when it escalated for its time{}",
                by.as_deref().unwrap_or("a person"),
                reason
                    .as_deref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            ),
        );
    }

    let done = |id: &StepId| execution.steps[id].state.is_done();
    if workflow.configuration.steps.iter().all(|s| done(&s.id)) {
        return vec![Event::ExecutionCompleted(ExecutionCompleted {
            execution_id: execution.id,
            workflow_id: workflow.id,
            final_output: final_output(execution),
        })];
    }
    if matches!(execution.status, Status::Paused | Status::Escalated) {
        return vec![];
    }

    // A risk that showed hands the lead to an agent of the rule's role, before anything else
    // is handed out.
    if let Some(lead) = lead_taken(execution) {
        return vec![lead];
    }

    // Steps whose dependencies are done and whose condition is false are skipped first: a
    // skip can make further steps ready, which the next decision (on the skip's return from
    // the log) takes up.
    // A failed attempt with retries left: its step waits for its backoff, on a durable timer.
    let retries: Vec<Event> = workflow
        .configuration
        .steps
        .iter()
        .filter_map(|step| retry_scheduled(execution, step, now))
        .collect();
    if !retries.is_empty() {
        return retries;
    }

    let ready: Vec<&WorkflowStep> = workflow
        .configuration
        .steps
        .iter()
        .filter(|step| {
            let progress = &execution.steps[&step.id];
            let pending = matches!(
                progress.state,
                StepState::Waiting
                    | StepState::RetryDue { .. }
                    | StepState::Escalating { .. }
                    | StepState::Delegated { .. }
                    | StepState::AwaitingReview
                    | StepState::Rework { .. }
            );
            pending && workflow.dependencies(step).into_iter().all(done)
        })
        .collect();
    let mut skipped = Vec::new();
    for step in &ready {
        let (Some(condition), StepState::Waiting) =
            (&step.condition, &execution.steps[&step.id].state)
        else {
            continue;
        };
        match evaluate_condition(execution, condition) {
            Ok(true) => {}
            Ok(false) => skipped.push(Event::StepSkipped(StepSkipped {
                execution_id: execution.id,
                workflow_id: workflow.id,
                step_id: step.id.clone(),
                step_name: step.name.clone(),
                condition: condition.clone(),
            })),
            Err(error) => {
                return failing(
                    execution,
                    FailureCause::ConditionFailed {
                        step_id: step.id.clone(),
                    },
                    format!("the condition of step '{}' {error}", step.name),
                );
            }
        }
    }
    if !skipped.is_empty() {
        return skipped;
    }
    // A panel's outcome is recorded as soon as its votes settle it, before anything else.
    let tallied: Vec<Event> = workflow
        .configuration
        .steps
        .iter()
        .filter_map(|step| votes_tallied(execution, step))
        .collect();
    if !tallied.is_empty() {
        return tallied;
    }

    let mut load = execution.load();
    let mut active: usize = load.values().map(|n| *n as usize).sum::<usize>() + execution.pending();
    let exclusive_running = workflow
        .configuration
        .steps
        .iter()
        .any(|s| !s.can_run_in_parallel && execution.steps[&s.id].is_active());
    let one_at_a_time = workflow.configuration.constraints.allow_parallel_execution == Some(false);

    // Steps whose agents asked their teammates questions: the questions not yet handed out go
    // to their addressees; once every addressee answered (or could not, or the deadline passed)
    // the asker finishes the step with the answers.
    let mut events = Vec::new();
    let mut awaiting = false;
    for step in &workflow.configuration.steps {
        let progress = &execution.steps[&step.id];
        let StepState::AwaitingAnswers { agent } = progress.state else {
            continue;
        };
        awaiting = true;
        let handed_out = questions_assigned(execution, step, progress, agent, now);
        if !handed_out.is_empty() {
            events.extend(handed_out);
        } else if progress
            .questions
            .iter()
            .all(|q| q.recipients.iter().all(|r| r.reply.is_final()))
            && let Some(asker) = execution.agents.iter().find(|a| a.id == agent)
        {
            *load.entry(agent).or_insert(0) += 1;
            events.push(scheduled(
                execution,
                Scheduling {
                    step,
                    attempt: progress.attempt + 1,
                    agent: asker,
                    reason: AssignmentReason::Answered,
                    review: None,
                    feedback: progress.feedback.clone(),
                    answers: answers(progress),
                    earlier_failures: Vec::new(),
                    handoff: None,
                },
                now,
            ));
        }
    }

    for step in ready {
        let progress = &execution.steps[&step.id];
        // A step that must run alone waits for an idle execution, and blocks the others.
        if exclusive_running || (active > 0 && (one_at_a_time || !step.can_run_in_parallel)) {
            break;
        }
        // An approval is a person's: it waits for one, holding its place in the run. A step
        // the usual rules leave open goes to the coordinator agent, who chooses who takes it.
        let asked = if progress.state != StepState::Waiting {
            None
        } else if step.step_type == StepType::Approval {
            Some(approval_requested(execution, step))
        } else {
            delegation_asked(execution, step, now)
        };
        if let Some(asked) = asked {
            active += 1;
            events.push(asked);
            if one_at_a_time || !step.can_run_in_parallel {
                break;
            }
            continue;
        }
        let review = match (&progress.state, &progress.draft) {
            // Work waiting for a review, or a review to try again (or escalated).
            (
                StepState::AwaitingReview
                | StepState::RetryDue { .. }
                | StepState::Escalating { .. },
                Some(draft),
            ) if progress.state == StepState::AwaitingReview || progress.reviewing => {
                Some(ReviewRequest {
                    round: progress.rounds + 1,
                    author_agent_id: draft.author,
                    summary: draft.summary.clone(),
                    output: draft.output.clone(),
                    ballot: execution.seats(step).map(|seats| Ballot {
                        rule: workflow.configuration.coordination.decision_making,
                        seat: progress.votes.len() as u32 + 1,
                        seats,
                    }),
                })
            }
            _ => None,
        };
        let (review, assigned) = match (&progress.state, review) {
            // Whom the escalation ladder (or a person) chose, to do or to review the work.
            (StepState::Escalating { to, reason }, review) => {
                (review, Some((to.as_ref(), reason.clone())))
            }
            (_, Some(review)) => {
                let author = review.author_agent_id;
                let voted: Vec<AgentId> = progress.votes.iter().map(|v| v.agent_id).collect();
                let failed: Vec<AgentId> = progress.failed.iter().map(|f| f.agent_id).collect();
                let reviewer = assign_reviewer(
                    step,
                    &execution.agents,
                    &load,
                    Judging {
                        author,
                        ballot: review.ballot,
                        voted: &voted,
                        failed: &failed,
                    },
                );
                (Some(review), reviewer)
            }
            (StepState::Delegated { answer }, None) => {
                (None, delegated(execution, step, answer, &load))
            }
            (StepState::Rework { author }, None) => {
                let author = execution
                    .agents
                    .iter()
                    .find(|a| a.id == *author)
                    .map(|a| (a, AssignmentReason::Rework));
                (
                    None,
                    author.or_else(|| assign(step, &execution.agents, &load, &execution.records)),
                )
            }
            _ => match execution.lead() {
                Some((lead, risk)) if step.preferred_agent_id.is_none() => (
                    None,
                    Some((
                        lead,
                        AssignmentReason::Lead {
                            risk: risk.to_owned(),
                        },
                    )),
                ),
                _ => (
                    None,
                    assign(step, &execution.agents, &load, &execution.records),
                ),
            },
        };
        let Some((agent, reason)) = assigned else {
            return failing(
                execution,
                FailureCause::Stuck,
                format!(
                    "no participating agent can take step '{}': the execution has no agents",
                    step.name
                ),
            );
        };
        *load.entry(agent.id).or_insert(0) += 1;
        active += 1;
        let handoff = handoff::handed_off(execution, step, agent);
        let feedback = review
            .is_none()
            .then(|| progress.feedback.clone())
            .flatten();
        events.push(scheduled(
            execution,
            Scheduling {
                step,
                attempt: progress.attempt + 1,
                agent,
                reason,
                review,
                feedback,
                answers: Vec::new(),
                earlier_failures: match progress.state {
                    StepState::Escalating { .. } => progress.failed.clone(),
                    _ => Vec::new(),
                },
                handoff,
            },
            now,
        ));
        if one_at_a_time || !step.can_run_in_parallel {
            break;
        }
    }
    if events.is_empty() && active == 0 && !awaiting {
        // Nothing runs, nothing can start, and not everything is done: without this the run
        // would wait forever with no record of why.
        return failing(
            execution,
            FailureCause::Stuck,
            "no step is running and none can start, yet not every step is done".to_owned(),
        );
    }
    events
}

/// The panel's outcome on a step's work, once the votes cast settle it (see
/// [`DecisionMaking::tally`]); `None` while it waits for more votes, or when no panel votes.
fn votes_tallied(execution: &Execution, step: &WorkflowStep) -> Option<Event> {
    let progress = &execution.steps[&step.id];
    let seats = execution.seats(step)?;
    let draft = progress.draft.as_ref()?;
    if progress.state != StepState::AwaitingReview || progress.votes.is_empty() {
        return None;
    }
    let rule = execution
        .workflow
        .configuration
        .coordination
        .decision_making;
    let approvals = progress.votes.iter().filter(|v| v.approved).count() as u32;
    let rejections = progress.votes.len() as u32 - approvals;
    let approved = rule.tally(seats, approvals, rejections)?;
    Some(Event::VotesTallied(Box::new(VotesTallied {
        execution_id: execution.id,
        workflow_id: execution.workflow.id,
        step_id: step.id.clone(),
        step_name: step.name.clone(),
        attempt: progress.attempt,
        round: progress.rounds + 1,
        rule,
        seats,
        votes: progress.votes.clone(),
        approved,
        author_agent_id: draft.author,
    })))
}

/// The first lead rule not yet applied whose risk a step shows: declared by a step whose
/// dependencies are done (or that ran), or carried as a `#hashtag` by a completed step's result.
fn lead_taken(execution: &Execution) -> Option<Event> {
    let workflow = &execution.workflow;
    let shows = |rule: &RiskLead| {
        let risk = rule.risk.to_lowercase();
        workflow.configuration.steps.iter().find_map(|step| {
            let progress = &execution.steps[&step.id];
            let declared = step
                .risks
                .iter()
                .any(|r| r.eq_ignore_ascii_case(&rule.risk))
                && progress.state != StepState::Skipped
                && (progress.attempt > 0
                    || workflow
                        .dependencies(step)
                        .into_iter()
                        .all(|d| execution.steps[d].state.is_done()));
            if declared {
                return Some((step, RiskSource::Declared));
            }
            let StepState::Completed {
                summary, output, ..
            } = &progress.state
            else {
                return None;
            };
            [summary, output]
                .into_iter()
                .any(|text| hashtags(text).any(|tag| tag == risk))
                .then_some((step, RiskSource::Result))
        })
    };
    let load = execution.load();
    execution
        .escalation_policy()
        .leads
        .iter()
        .filter(|rule| {
            !execution
                .leads
                .iter()
                .any(|(risk, _)| risk.eq_ignore_ascii_case(&rule.risk))
        })
        .find_map(|rule| {
            let (step, shown_by) = shows(rule)?;
            let agent = execution
                .agents
                .iter()
                .filter(|a| a.role.trim().eq_ignore_ascii_case(rule.role.trim()))
                .min_by_key(|a| load.get(&a.id).copied().unwrap_or(0));
            Some(Event::LeadTaken(Box::new(LeadTaken {
                execution_id: execution.id,
                workflow_id: workflow.id,
                risk: rule.risk.clone(),
                role: rule.role.clone(),
                agent: agent.map(Teammate::of),
                step_id: step.id.clone(),
                shown_by,
            })))
        })
}

/// The event of the next rung of the escalation ladder a step whose retries are spent climbs;
/// when none is left, the rungs passed over and why, and the run fails. A rung that cannot
/// apply (nobody else to reassign to, no stronger model named, no coordinator agent) is passed
/// over, and the event (or the run's error) says why. A ladder with `person` always has a rung left: each failure of an attempt a
/// person asked for goes back to a person.
fn escalated(execution: &Execution, step: &WorkflowStep) -> Result<Event, Vec<String>> {
    let progress = &execution.steps[&step.id];
    let StepState::Failed {
        agent,
        error,
        retryable,
    } = &progress.state
    else {
        return Err(Vec::new());
    };
    let policy = execution.escalation_policy();
    let ladder = &policy.ladder;
    // Where the step is on the ladder: past the last rung it climbed; an attempt a person
    // asked for goes back to a person.
    let from = match progress.climbed.last() {
        Some(EscalationRung::Person) => ladder.len(),
        last => last
            .and_then(|last| ladder.iter().position(|r| r == last))
            .map_or(0, |i| i + 1),
    };
    let again = ladder
        .contains(&EscalationRung::Person)
        .then_some(&EscalationRung::Person);
    let failing = execution.agents.iter().find(|a| a.id == *agent);
    let mut passed = Vec::new();
    for rung in ladder[from..].iter().chain(again) {
        match taker(execution, step, *rung, failing) {
            Ok(taker) => {
                let mut reason = if *retryable {
                    format!(
                        "step '{}' failed {} time(s), more than maxRetries allows; the last \
                         error: {error}",
                        step.name, progress.failures
                    )
                } else {
                    format!(
                        "step '{}' failed with an error another attempt cannot fix: {error}",
                        step.name
                    )
                };
                if !passed.is_empty() {
                    reason.push_str(&format!("; passed over: {}", passed.join("; ")));
                }
                return Ok(step_escalated(
                    execution,
                    step,
                    progress.attempt,
                    *rung,
                    taker,
                    reason,
                ));
            }
            Err(why) => passed.push(format!("{} ({why})", rung.as_str())),
        }
    }
    Err(passed)
}

/// Who takes the next attempt on `rung`: `Ok(None)` for a person; `Err` says why the rung
/// cannot apply.
fn taker(
    execution: &Execution,
    step: &WorkflowStep,
    rung: EscalationRung,
    failing: Option<&AgentProfile>,
) -> Result<Option<AgentProfile>, &'static str> {
    if rung == EscalationRung::Person {
        return Ok(None);
    }
    let progress = &execution.steps[&step.id];
    if step.child_workflow_id.is_some() && !progress.reviewing {
        return Err("a child workflow runs this step, not an agent");
    }
    // A review's judge is never the work's author, nor a voter who voted this round.
    let barred = progress.barred_from_judging();
    match rung {
        EscalationRung::Reassign => {
            let untried: Vec<AgentProfile> = execution
                .agents
                .iter()
                .filter(|a| !progress.failed.iter().any(|f| f.agent_id == a.id))
                .filter(|a| !barred.contains(&a.id))
                .cloned()
                .collect();
            assign(step, &untried, &execution.load(), &execution.records)
                .map(|(agent, _)| Some(agent.clone()))
                .ok_or("every participating agent has failed it")
        }
        EscalationRung::StrongerModel => {
            let failing = failing.ok_or("the failing agent is not a participant")?;
            let model = execution
                .escalation_policy()
                .stronger_model
                .clone()
                .or_else(|| failing.fallback.clone())
                .filter(|m| (&m.provider, &m.model) != (&failing.provider, &failing.model))
                .ok_or(
                    "neither escalation.strongerModel nor the agent's fallback names another model",
                )?;
            Ok(Some(AgentProfile {
                provider: model.provider,
                model: model.model,
                fallback: None,
                ..failing.clone()
            }))
        }
        EscalationRung::Coordinator => {
            let coordinator = execution
                .workflow
                .coordinator_agent_id
                .and_then(|id| execution.agents.iter().find(|a| a.id == id))
                .ok_or("the workflow names no participating coordinator agent")?;
            if barred.contains(&coordinator.id) {
                return Err("the coordinator agent wrote the work under review, or voted on it");
            }
            Ok(Some(coordinator.clone()))
        }
        EscalationRung::Person => Ok(None),
    }
}

/// The run went on past `escalation.afterMinutes`: unless a person was asked already, it waits
/// for one. Only a running run: a paused one is in a person's hands already, and is asked once
/// it is resumed ([`overdue_escalation`]), so that letting it go on (`continue`) never undoes
/// the pause.
fn execution_escalated(execution: &Execution) -> Option<Event> {
    let after_minutes = execution.escalation_policy().after_minutes?;
    if execution.escalation.is_some() || execution.status != Status::Running {
        return None;
    }
    let unfinished: Vec<String> = execution
        .workflow
        .configuration
        .steps
        .iter()
        .filter_map(|step| {
            let state = &execution.steps[&step.id].state;
            (!state.is_done()).then(|| format!("{} ({})", step.id, state.name()))
        })
        .collect();
    Some(Event::ExecutionEscalated(Box::new(ExecutionEscalated {
        execution_id: execution.id,
        workflow_id: execution.workflow.id,
        escalation_id: EscalationId::of_execution(execution.id),
        after_minutes,
        reason: format!(
            "the run has gone on for {after_minutes} minute(s) (escalation.afterMinutes) and needs \
             a person; steps not done: {}",
            unfinished.join(", ")
        ),
        context: EscalationContext {
            failures: execution
                .steps
                .values()
                .flat_map(|p| p.failed.iter().cloned())
                .collect(),
            tried: Vec::new(),
            outputs: completed_summaries(execution),
        },
    })))
}

/// A run past its time for a person whose timer found it paused: it waits for one as soon as
/// it runs again.
fn overdue_escalation(execution: &Execution, now: DateTime<Utc>) -> Option<Event> {
    let due = after_minutes(
        execution.started_at?,
        execution.escalation_policy().after_minutes?,
    );
    if now < due {
        return None;
    }
    execution_escalated(execution)
}

/// The summary of each completed step, by step id.
fn completed_summaries(execution: &Execution) -> std::collections::BTreeMap<StepId, String> {
    execution
        .steps
        .iter()
        .filter_map(|(id, p)| match &p.state {
            StepState::Completed { summary, .. } => Some((id.clone(), summary.clone())),
            _ => None,
        })
        .collect()
}

/// An approval step is ready: it waits for a person.
fn approval_requested(execution: &Execution, step: &WorkflowStep) -> Event {
    let progress = &execution.steps[&step.id];
    step_escalated(
        execution,
        step,
        progress.attempt + 1,
        EscalationRung::Person,
        None,
        format!(
            "step '{}' is an approval: a person signs it off ({})",
            step.name, step.instructions
        ),
    )
}

fn step_escalated(
    execution: &Execution,
    step: &WorkflowStep,
    attempt: u32,
    rung: EscalationRung,
    agent: Option<AgentProfile>,
    reason: String,
) -> Event {
    let progress = &execution.steps[&step.id];
    let outputs = completed_summaries(execution);
    Event::StepEscalated(Box::new(StepEscalated {
        execution_id: execution.id,
        workflow_id: execution.workflow.id,
        step_id: step.id.clone(),
        step_name: step.name.clone(),
        attempt,
        rung,
        escalation_id: agent
            .is_none()
            .then(|| EscalationId::of(execution.id, &step.id, attempt)),
        agent,
        approval: step.step_type == StepType::Approval,
        reason,
        context: EscalationContext {
            failures: progress.failed.clone(),
            tried: progress.climbed.clone(),
            outputs,
        },
    }))
}

/// How far a failed step climbed its ladder, for the run's error.
fn climbed(progress: &StepProgress, passed_over: &[String]) -> String {
    let mut said = String::new();
    if !progress.climbed.is_empty() {
        let rungs: Vec<&str> = progress.climbed.iter().map(|r| r.as_str()).collect();
        said.push_str(&format!(
            ", past its escalation ladder ({})",
            rungs.join(" → ")
        ));
    }
    if !passed_over.is_empty() {
        said.push_str(&format!(" (rungs passed over: {})", passed_over.join("; ")));
    }
    said
}

/// A step whose attempt failed with retries left waits for its backoff: the wait after the
/// n-th failure, jittered down by up to half by a fraction drawn from the execution, step and
/// attempt (the same decision every time it is taken, and steps that failed together spread).
fn retry_scheduled(
    execution: &Execution,
    step: &WorkflowStep,
    now: DateTime<Utc>,
) -> Option<Event> {
    let progress = &execution.steps[&step.id];
    let StepState::Failed {
        agent,
        error,
        retryable: true,
    } = &progress.state
    else {
        return None;
    };
    // Past its retries, or on its escalation ladder (each rung is one attempt): no backoff.
    if progress.failures > execution.max_retries() || !progress.climbed.is_empty() {
        return None;
    }
    let delay = execution.retry_backoff().delay_seconds(progress.failures)
        * (0.5 + 0.5 * jitter(execution.id, &step.id, progress.attempt));
    // Validation bounds the backoff to a day, so the cast cannot overflow.
    #[allow(clippy::cast_possible_truncation)]
    let retry_at = now + TimeDelta::milliseconds((delay * 1000.0).round() as i64);
    Some(Event::StepRetryScheduled(StepRetryScheduled {
        attempt: attempt_of(
            execution,
            step.id.clone(),
            step.name.clone(),
            progress.attempt,
            *agent,
        ),
        failures: progress.failures,
        retry_at,
        error: error.clone(),
    }))
}

/// A fraction in `[0, 1)` drawn from its inputs (FNV-1a), stable across builds.
fn jitter(execution: ExecutionId, step: &StepId, attempt: u32) -> f64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let bytes = execution
        .0
        .as_bytes()
        .iter()
        .chain(step.as_str().as_bytes())
        .chain(&attempt.to_le_bytes())
        .copied()
        .collect::<Vec<u8>>();
    for byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    // The top 53 bits: exactly representable.
    #[allow(clippy::cast_precision_loss)]
    let fraction = (hash >> 11) as f64 / (1u64 << 53) as f64;
    fraction
}

/// The first and only attempt of a step the run makes for itself (an undoing, a re-planning, a
/// coordinator agent's choice): no review, feedback, answers or earlier failures.
fn task_scheduled(
    execution: &Execution,
    step: &WorkflowStep,
    agent: &AgentProfile,
    reason: AssignmentReason,
    now: DateTime<Utc>,
) -> Event {
    scheduled(
        execution,
        Scheduling {
            step,
            attempt: 1,
            agent,
            reason,
            review: None,
            feedback: None,
            answers: Vec::new(),
            earlier_failures: Vec::new(),
            handoff: None,
        },
        now,
    )
}

/// What a `StepScheduled` says beyond the execution's own facts.
struct Scheduling<'a> {
    step: &'a WorkflowStep,
    attempt: u32,
    agent: &'a AgentProfile,
    reason: AssignmentReason,
    review: Option<ReviewRequest>,
    feedback: Option<String>,
    answers: Vec<QuestionAnswer>,
    earlier_failures: Vec<FailedAttempt>,
    handoff: Option<Handoff>,
}

fn scheduled(execution: &Execution, scheduling: Scheduling<'_>, now: DateTime<Utc>) -> Event {
    let workflow = &execution.workflow;
    let Scheduling {
        step,
        attempt,
        agent,
        reason,
        review,
        feedback,
        answers,
        earlier_failures,
        handoff,
    } = scheduling;
    Event::StepScheduled(Box::new(StepScheduled {
        execution_id: execution.id,
        workflow_id: workflow.id,
        workflow_name: workflow.name.clone(),
        step: step.clone(),
        attempt,
        agent: agent.clone(),
        reason,
        coordinator_agent_id: workflow.coordinator_agent_id,
        knowledge_sharing: workflow.configuration.coordination.knowledge_sharing,
        communication_style: workflow.configuration.coordination.communication_style,
        knowledge_watermark: 0,
        input: execution.input.clone(),
        feedback,
        review,
        timeout_at: step.timeout_minutes.map(|m| after_minutes(now, m)),
        // Whether it arms the timer is known once the whole decision is (`mark_timer_arming`).
        arms_step_timer: Some(false),
        team: execution
            .agents
            .iter()
            .filter(|a| a.id != agent.id)
            .map(Teammate::of)
            .collect(),
        answers,
        earlier_failures,
        handoff,
    }))
}

/// The questions of a waiting step not yet handed out, each to each of its addressees, all
/// with the same deadline.
fn questions_assigned(
    execution: &Execution,
    step: &WorkflowStep,
    progress: &StepProgress,
    asker: cadre_proto::AgentId,
    now: DateTime<Utc>,
) -> Vec<Event> {
    let Some(asker) = execution.agents.iter().find(|a| a.id == asker) else {
        return vec![];
    };
    let coordination = &execution.workflow.configuration.coordination;
    let deadline_at = now + TimeDelta::seconds(i64::from(coordination.questions.deadline_seconds));
    let mut events = Vec::new();
    for question in &progress.questions {
        for recipient in &question.recipients {
            let Some(profile) = execution.agents.iter().find(|a| a.id == recipient.agent) else {
                continue;
            };
            if recipient.reply != Reply::Pending {
                continue;
            }
            events.push(Event::QuestionAssigned(Box::new(QuestionAssigned {
                execution_id: execution.id,
                workflow_id: execution.workflow.id,
                step_id: step.id.clone(),
                step_name: step.name.clone(),
                attempt: progress.attempt,
                question_id: question.question_id.clone(),
                question: question.text.clone(),
                asker: Teammate::of(asker),
                recipient: profile.clone(),
                broadcast: question.is_broadcast(),
                deadline_at,
                communication_style: coordination.communication_style,
            })));
        }
    }
    events
}

/// What became of each question, for the asker's next attempt.
fn answers(progress: &StepProgress) -> Vec<QuestionAnswer> {
    let mut answers = Vec::new();
    for question in &progress.questions {
        if question.recipients.is_empty() {
            let asked = question.to.clone().unwrap_or_else(|| "everyone".to_owned());
            let note = if question.is_broadcast() {
                "nobody else takes part in this execution".to_owned()
            } else {
                format!("no participant of this execution has the id, name or role '{asked}'")
            };
            answers.push(QuestionAnswer {
                question: question.text.clone(),
                asked,
                answer: None,
                note: Some(note),
            });
        }
        for recipient in &question.recipients {
            let (answer, note) = match &recipient.reply {
                Reply::Answered(answer) => (Some(answer.clone()), None),
                Reply::Failed(error) => (None, Some(format!("could not answer: {error}"))),
                Reply::Missed | Reply::Pending | Reply::Assigned => {
                    (None, Some("did not answer by the deadline".to_owned()))
                }
            };
            answers.push(QuestionAnswer {
                question: question.text.clone(),
                asked: recipient.name.clone(),
                answer,
                note,
            });
        }
    }
    answers
}

/// The deadline of an attempt's questions passed: what is still unanswered is recorded, and
/// the attempt fails if the workflow says so.
fn questions_expired(execution: &Execution, step_id: &StepId, attempt: u32) -> Vec<Event> {
    let (Some(progress), Some(step)) = (
        execution.steps.get(step_id),
        execution.workflow.step(step_id),
    ) else {
        return vec![];
    };
    let StepState::AwaitingAnswers { agent } = progress.state else {
        return vec![];
    };
    if progress.attempt != attempt {
        return vec![];
    }
    let unanswered: Vec<Unanswered> = progress
        .questions
        .iter()
        .flat_map(|q| {
            q.recipients
                .iter()
                .filter(|r| !r.reply.is_final())
                .map(|r| Unanswered {
                    question_id: q.question_id.clone(),
                    agent_id: r.agent,
                })
        })
        .collect();
    if unanswered.is_empty() {
        return vec![];
    }
    let policy = execution.workflow.configuration.coordination.questions;
    vec![Event::QuestionsExpired(QuestionsExpired {
        attempt: attempt_of(
            execution,
            step_id.clone(),
            step.name.clone(),
            attempt,
            agent,
        ),
        unanswered,
        failed: policy.on_missed_deadline == MissedDeadline::Fail,
    })]
}

/// A step's condition, over the execution's input and its steps as they are now.
fn evaluate_condition(execution: &Execution, condition: &str) -> Result<bool, String> {
    let steps = execution.steps.iter().map(|(id, progress)| {
        let (summary, output) = match &progress.state {
            StepState::Completed {
                summary, output, ..
            } => (summary.as_str(), output.as_str()),
            _ => ("", ""),
        };
        (
            id.as_str(),
            StepView {
                status: progress.state.name(),
                summary,
                output,
            },
        )
    });
    condition::evaluate(condition, execution.input.as_ref(), steps)
}

/// Largest `finalOutput`, as JSON: it travels in the execution's last event.
const FINAL_OUTPUT_BYTES: usize = 256 * 1024;
/// Characters of a summary kept when the outputs themselves do not fit.
const SHORT_SUMMARY_CHARS: usize = 200;

/// The results of the completed steps no completed step depends on: what the workflow
/// delivers (the last steps, or, where one was skipped, the steps before it). Each carries its
/// whole result's reference when it has one; when the outputs together would not fit in an
/// event, each keeps a short summary and where its whole result is.
fn final_output(execution: &Execution) -> serde_json::Value {
    let workflow = &execution.workflow;
    let steps = &workflow.configuration.steps;
    let completed = |id: &StepId| matches!(execution.steps[id].state, StepState::Completed { .. });
    let sinks: Vec<(&StepId, &StepState)> = steps
        .iter()
        .filter(|s| {
            !steps
                .iter()
                .any(|d| completed(&d.id) && workflow.dependencies(d).contains(&&s.id))
        })
        .map(|s| (&s.id, &execution.steps[&s.id].state))
        .collect();
    let entry = |state: &StepState, whole: bool| match state {
        StepState::Completed {
            agent,
            summary,
            output,
            full,
        } => {
            let mut entry = if whole {
                serde_json::json!({ "agentId": agent, "summary": summary, "output": output })
            } else {
                let short: String = summary.chars().take(SHORT_SUMMARY_CHARS).collect();
                serde_json::json!({ "agentId": agent, "summary": short, "outputOmitted": true })
            };
            if let Some(full) = full {
                entry["fullResult"] = serde_json::json!(full);
            }
            Some(entry)
        }
        _ => None,
    };
    let build = |whole: bool| {
        let out: serde_json::Map<String, serde_json::Value> = sinks
            .iter()
            .filter_map(|(id, state)| entry(state, whole).map(|e| (id.to_string(), e)))
            .collect();
        serde_json::Value::Object(out)
    };
    let whole = build(true);
    if serde_json::to_vec(&whole).map_or(0, |json| json.len()) <= FINAL_OUTPUT_BYTES {
        whole
    } else {
        build(false)
    }
}
