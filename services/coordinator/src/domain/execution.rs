//! One workflow execution as a state machine: `evolve` folds its events, `decide` says what
//! happens next.
//!
//! Decisions are level-triggered: `Advance` looks at the whole state (which steps are ready,
//! whether all are done) rather than at the event that woke the coordinator. Deciding twice on
//! the same state yields the same events, so a redelivered or replayed event is harmless, and
//! `evolve` ignores events that no longer apply (a second completion of a step, a stale attempt).

use std::collections::{BTreeMap, HashMap};

use cadre_proto::events::{ExecutionCompleted, ExecutionFailed, ExecutionStarted, StepScheduled};
use cadre_proto::model::{AgentProfile, TriggerReason, WorkflowDefinition};
use cadre_proto::{AgentId, Event, ExecutionId, StepId, WorkflowId};

use super::assignment::assign;

#[derive(Debug, Clone, PartialEq)]
pub enum Phase {
    /// Not yet handed to an agent (or failed with retries left).
    Waiting,
    Scheduled {
        agent: AgentId,
    },
    Running {
        agent: AgentId,
    },
    Completed {
        agent: AgentId,
        summary: String,
        output: String,
    },
    Failed {
        agent: AgentId,
        error: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct StepProgress {
    /// The attempt the phase belongs to; 0 before the first scheduling.
    pub attempt: u32,
    pub phase: Phase,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Running,
    Completed,
    Failed,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Execution {
    pub id: ExecutionId,
    pub workflow: WorkflowDefinition,
    /// Participating agents, in participation order.
    pub agents: Vec<AgentProfile>,
    pub status: Status,
    pub steps: BTreeMap<StepId, StepProgress>,
}

/// An execution's state: nothing before its `ExecutionStarted`.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum State {
    #[default]
    NotStarted,
    Started(Box<Execution>),
}

/// Begin a run of `workflow` with a snapshot of its agents.
#[derive(Debug, Clone, PartialEq)]
pub struct Start {
    pub execution_id: ExecutionId,
    pub execution_number: u32,
    pub trigger_reason: TriggerReason,
    pub triggered_by: Option<String>,
    pub workflow: WorkflowDefinition,
    pub agents: Vec<AgentProfile>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Start(Box<Start>),
    /// Do whatever the state calls for: schedule ready steps, retry, complete or fail.
    /// `watermark` is the last stream sequence folded into the state.
    Advance {
        watermark: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    #[error("execution {0} has already started")]
    AlreadyStarted(ExecutionId),
    #[error("workflow {workflow} has no participating agent to run step '{step}'")]
    NoAgent { workflow: WorkflowId, step: StepId },
}

pub fn evolve(state: State, event: &Event) -> State {
    match (state, event) {
        (State::NotStarted, Event::ExecutionStarted(started)) => {
            let steps = started
                .workflow
                .configuration
                .steps
                .iter()
                .map(|s| {
                    (
                        s.id.clone(),
                        StepProgress {
                            attempt: 0,
                            phase: Phase::Waiting,
                        },
                    )
                })
                .collect();
            State::Started(Box::new(Execution {
                id: started.execution_id,
                workflow: started.workflow.clone(),
                agents: started.agents.clone(),
                status: Status::Running,
                steps,
            }))
        }
        (State::Started(mut execution), event) => {
            execution.apply(event);
            State::Started(execution)
        }
        (state, _) => state,
    }
}

impl Execution {
    fn apply(&mut self, event: &Event) {
        match event {
            Event::StepScheduled(e) => self.step_event(&e.step.id, |p| {
                // A newer attempt always takes over; the same attempt only schedules once.
                if e.attempt > p.attempt {
                    *p = StepProgress {
                        attempt: e.attempt,
                        phase: Phase::Scheduled { agent: e.agent.id },
                    };
                }
            }),
            Event::StepStarted(e) => self.step_event(&e.step_id, |p| {
                if p.attempt == e.attempt && matches!(p.phase, Phase::Scheduled { .. }) {
                    p.phase = Phase::Running { agent: e.agent_id };
                }
            }),
            Event::StepCompleted(e) => self.step_event(&e.step_id, |p| {
                if p.attempt == e.attempt && p.is_active() {
                    p.phase = Phase::Completed {
                        agent: e.agent_id,
                        summary: e.result.summary.clone(),
                        output: e.result.output.clone(),
                    };
                }
            }),
            Event::StepFailed(e) => self.step_event(&e.step_id, |p| {
                if p.attempt == e.attempt && p.is_active() {
                    p.phase = Phase::Failed {
                        agent: e.agent_id,
                        error: e.error.clone(),
                    };
                }
            }),
            Event::ExecutionCompleted(_) => self.status = Status::Completed,
            Event::ExecutionFailed(_) => self.status = Status::Failed,
            // Facts about other aggregates, or the start (already applied).
            Event::AgentRegistered(_)
            | Event::WorkflowCreated(_)
            | Event::KnowledgeShared(_)
            | Event::InteractionRecorded(_)
            | Event::ExecutionStarted(_) => {}
        }
    }

    fn step_event(&mut self, step: &StepId, change: impl FnOnce(&mut StepProgress)) {
        if self.status == Status::Running
            && let Some(progress) = self.steps.get_mut(step)
        {
            change(progress);
        }
    }

    /// How many tries a step gets: one plus the workflow's `maxRetries`.
    fn max_attempts(&self) -> u32 {
        1 + self
            .workflow
            .configuration
            .constraints
            .max_retries
            .unwrap_or(0)
    }

    fn load(&self) -> HashMap<AgentId, u32> {
        let mut load = HashMap::new();
        for progress in self.steps.values() {
            if let Phase::Scheduled { agent } | Phase::Running { agent } = progress.phase {
                *load.entry(agent).or_insert(0) += 1;
            }
        }
        load
    }
}

impl StepProgress {
    fn is_active(&self) -> bool {
        matches!(self.phase, Phase::Scheduled { .. } | Phase::Running { .. })
    }
}

pub fn decide(command: &Command, state: &State) -> Result<Vec<Event>, DomainError> {
    match (command, state) {
        (Command::Start(start), State::NotStarted) => {
            Ok(vec![Event::ExecutionStarted(Box::new(ExecutionStarted {
                execution_id: start.execution_id,
                workflow_id: start.workflow.id,
                execution_number: start.execution_number,
                trigger_reason: start.trigger_reason,
                triggered_by: start.triggered_by.clone(),
                workflow: start.workflow.clone(),
                agents: start.agents.clone(),
            }))])
        }
        (Command::Start(start), State::Started(_)) => {
            Err(DomainError::AlreadyStarted(start.execution_id))
        }
        (Command::Advance { .. }, State::NotStarted) => Ok(vec![]),
        (Command::Advance { watermark }, State::Started(execution)) => {
            advance(execution, *watermark)
        }
    }
}

fn advance(execution: &Execution, watermark: u64) -> Result<Vec<Event>, DomainError> {
    if execution.status != Status::Running {
        return Ok(vec![]);
    }
    let workflow = &execution.workflow;
    let max_attempts = execution.max_attempts();

    // A step that failed its last allowed attempt fails the execution.
    for step in &workflow.configuration.steps {
        let progress = &execution.steps[&step.id];
        if let Phase::Failed { error, .. } = &progress.phase
            && progress.attempt >= max_attempts
        {
            return Ok(vec![Event::ExecutionFailed(ExecutionFailed {
                execution_id: execution.id,
                workflow_id: workflow.id,
                failed_step_id: Some(step.id.clone()),
                error: format!(
                    "step '{}' failed after {} attempt(s): {error}",
                    step.name, progress.attempt
                ),
            })]);
        }
    }

    let done = |id: &StepId| matches!(execution.steps[id].phase, Phase::Completed { .. });
    if workflow.configuration.steps.iter().all(|s| done(&s.id)) {
        return Ok(vec![Event::ExecutionCompleted(ExecutionCompleted {
            execution_id: execution.id,
            workflow_id: workflow.id,
            final_output: final_output(execution),
        })]);
    }

    let mut load = execution.load();
    let mut active: usize = load.values().map(|n| *n as usize).sum();
    let exclusive_running = workflow
        .configuration
        .steps
        .iter()
        .any(|s| !s.can_run_in_parallel && execution.steps[&s.id].is_active());
    let one_at_a_time = workflow.configuration.constraints.allow_parallel_execution == Some(false);

    let mut events = Vec::new();
    for step in &workflow.configuration.steps {
        let progress = &execution.steps[&step.id];
        let retry = matches!(progress.phase, Phase::Failed { .. });
        let ready = (progress.phase == Phase::Waiting || retry) && step.depends_on.iter().all(done);
        if !ready {
            continue;
        }
        // A step that must run alone waits for an idle execution, and blocks the others.
        if exclusive_running || (active > 0 && (one_at_a_time || !step.can_run_in_parallel)) {
            break;
        }
        let (agent, reason) =
            assign(step, &execution.agents, &load).ok_or_else(|| DomainError::NoAgent {
                workflow: workflow.id,
                step: step.id.clone(),
            })?;
        *load.entry(agent.id).or_insert(0) += 1;
        active += 1;
        events.push(Event::StepScheduled(Box::new(StepScheduled {
            execution_id: execution.id,
            workflow_id: workflow.id,
            workflow_name: workflow.name.clone(),
            step: step.clone(),
            attempt: progress.attempt + 1,
            agent: agent.clone(),
            reason,
            coordinator_agent_id: workflow.coordinator_agent_id,
            knowledge_sharing: workflow.configuration.coordination.knowledge_sharing,
            communication_style: workflow.configuration.coordination.communication_style,
            knowledge_watermark: watermark,
        })));
        if one_at_a_time || !step.can_run_in_parallel {
            break;
        }
    }
    Ok(events)
}

/// The results of the steps nothing depends on: what the workflow delivers.
fn final_output(execution: &Execution) -> serde_json::Value {
    let steps = &execution.workflow.configuration.steps;
    let sinks = steps
        .iter()
        .filter(|s| !steps.iter().any(|other| other.depends_on.contains(&s.id)));
    let mut out = serde_json::Map::new();
    for step in sinks {
        if let Phase::Completed {
            agent,
            summary,
            output,
        } = &execution.steps[&step.id].phase
        {
            out.insert(
                step.id.to_string(),
                serde_json::json!({ "agentId": agent, "summary": summary, "output": output }),
            );
        }
    }
    serde_json::Value::Object(out)
}
