//! Alerts on an agent's performance (seed 002's "Alert Conditions"), decided without I/O.
//!
//! [`Watch`] folds the step outcome events of the log, in log order, into each agent's
//! [`AgentFacts`] (defined in [`super::performance`], as the API reports them) and keeps, per
//! condition, whether it holds now. [`Watch::decide`] says which alerts an event raises: each
//! condition that did not hold before the event and holds after it.
//!
//! **Once per crossing.** While a condition keeps holding, nothing more is raised. When it
//! stops holding (it cleared: say, enough successful attempts brought the failure rate back to
//! 20 %), the next time it holds is a new crossing and raises it again, with `crossing` one
//! higher. Whether a condition holds is a function of the facts alone, and the facts of the log
//! alone, so a replay crosses at the same events with the same numbers, and [`alert_id`] gives
//! the alert the same id: the adapter that appends it (`crate::alerts`) stores each crossing
//! once however often it reads the log.
//!
//! The conditions, each over all the agent's recorded facts:
//! - **failure rate** over [`MAX_FAILURE_RATE`] % of its ended attempts, once it has ended at
//!   least [`MIN_ATTEMPTS`] (so one failed attempt of one is not an alert);
//! - **completion time** over [`MAX_TIME_AGAINST_ESTIMATE`] % of the estimates, over its
//!   completed tasks with an estimate (at least [`MIN_ESTIMATED_TASKS`]);
//! - **repeated escalations**: its failures escalated [`REPEATED_ESCALATIONS`] or more tasks of
//!   one step type (one alert per type). Escalations are never undone, so this one never clears;
//! - **quality** under [`MIN_QUALITY`] of 10, over at least [`MIN_REVIEWS`] reviews of its work.
//!
//! The seed's "user satisfaction < 8/10" is left out: no event records a user's rating.

use std::collections::{BTreeMap, HashMap, HashSet};

use cadre_proto::events::{AlertCondition, AlertRaised, StepAttempt};
use cadre_proto::model::StepType;
use cadre_proto::{AgentId, Event, EventId, ExecutionId, StepId, WorkflowId};
use chrono::{DateTime, Utc};

use super::performance::AgentFacts;

/// Ended attempts an agent needs before its failure rate can raise an alert.
pub const MIN_ATTEMPTS: u64 = 5;
/// Percent of ended attempts failed or timed out above which an agent is alerted on.
pub const MAX_FAILURE_RATE: f64 = 20.0;
/// Completed tasks with an estimate an agent needs before its completion time can raise an
/// alert.
pub const MIN_ESTIMATED_TASKS: u64 = 3;
/// Percent of their estimates the agent's tasks may take together before it is alerted on.
pub const MAX_TIME_AGAINST_ESTIMATE: f64 = 150.0;
/// Escalated tasks of one step type that make an alert.
pub const REPEATED_ESCALATIONS: u64 = 2;
/// Reviews of an agent's work it needs before its quality can raise an alert.
pub const MIN_REVIEWS: u64 = 3;
/// Quality score (0 to 10) under which an agent is alerted on.
pub const MIN_QUALITY: f64 = 7.0;

/// What an alert is about for one agent: a condition, with the task type for escalations.
type Key = (AlertCondition, Option<StepType>);

/// Every agent's facts and conditions, and what the runs still going have handed out.
#[derive(Debug, Clone, Default)]
pub struct Watch {
    agents: HashMap<AgentId, Watched>,
    runs: HashMap<ExecutionId, Run>,
}

#[derive(Debug, Clone, Default)]
struct Watched {
    facts: AgentFacts,
    levels: BTreeMap<Key, Level>,
}

/// Whether a condition holds now, and how often it began to.
#[derive(Debug, Clone, Copy, Default)]
struct Level {
    holds: bool,
    crossings: u32,
}

/// A run going on: its tasks and the attempts whose outcome is recorded. Forgotten when it
/// ends; a report about it after that (a worker finishing late) is ignored.
#[derive(Debug, Clone, Default)]
struct Run {
    tasks: HashMap<(StepId, AgentId), Task>,
    ended: HashSet<(StepId, u32)>,
}

#[derive(Debug, Clone)]
struct Task {
    step_type: StepType,
    estimate_minutes: Option<f64>,
    handed_out_at: DateTime<Utc>,
    completed: bool,
    escalated: bool,
}

/// One fact about one agent that an event records.
#[derive(Debug, Clone, PartialEq)]
enum Fact {
    Task,
    Attempt(Outcome),
    TaskCompleted {
        seconds: f64,
        estimate_seconds: Option<f64>,
    },
    TaskEscalated(StepType),
    Reviewed {
        approved: bool,
    },
    /// A completed attempt's cost, in US dollars.
    Costed {
        usd: f64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// `StepCompleted`: the work is done (the agent's task, if it is its first completion).
    Completed,
    /// `StepReviewed`: a reviewer's attempt, done.
    Reviewed,
    Failed,
    TimedOut,
}

/// What an event changes in the memory of the runs.
#[derive(Debug)]
enum Change {
    None,
    TaskHandedOut {
        execution: ExecutionId,
        step: StepId,
        agent: AgentId,
        task: Task,
    },
    AttemptEnded {
        execution: ExecutionId,
        step: StepId,
        attempt: u32,
        /// The agent whose task the attempt completed.
        completed: Option<AgentId>,
    },
    TaskEscalated {
        execution: ExecutionId,
        step: StepId,
        agent: AgentId,
    },
    RunEnded(ExecutionId),
}

/// What an event means to the watch: the agents' facts it records, where it happened, and
/// what it changes in the runs' memory. [`Watch::decide`] and [`Watch::evolve`] both start
/// from it, so they cannot disagree.
struct Observation {
    facts: Vec<(AgentId, Fact)>,
    /// The step of a run the facts happened at: where an alert they raise points to.
    step: Option<(WorkflowId, ExecutionId, StepId)>,
    change: Change,
}

impl Observation {
    fn nothing() -> Self {
        Self {
            facts: Vec::new(),
            step: None,
            change: Change::None,
        }
    }
}

/// A condition that holds, as measured.
#[derive(Debug, Clone, PartialEq)]
struct Measure {
    value: f64,
    threshold: f64,
    sample: u64,
    message: String,
}

impl Watch {
    /// The alerts `event` (stored at `at`) raises: the conditions it makes hold that did not
    /// hold before.
    pub fn decide(&self, event: &Event, at: DateTime<Utc>) -> Vec<AlertRaised> {
        let observation = self.observe(event, at);
        let Some((workflow_id, execution_id, step_id)) = observation.step else {
            return Vec::new();
        };
        let mut alerts = Vec::new();
        for (agent, facts) in by_agent(observation.facts) {
            let watched = self.agents.get(&agent).cloned().unwrap_or_default();
            let mut after = watched.facts.clone();
            facts.iter().for_each(|fact| record(&mut after, fact));
            for ((condition, task_type), measure) in holding(&after) {
                let level = watched
                    .levels
                    .get(&(condition, task_type))
                    .copied()
                    .unwrap_or_default();
                if !level.holds {
                    alerts.push(AlertRaised {
                        agent_id: agent,
                        condition,
                        task_type,
                        crossing: level.crossings + 1,
                        value: measure.value,
                        threshold: measure.threshold,
                        sample: measure.sample,
                        message: measure.message,
                        workflow_id,
                        execution_id,
                        step_id: step_id.clone(),
                    });
                }
            }
        }
        alerts
    }

    /// The watch after `event` (stored at `at`); returns the agents whose facts it changed.
    pub fn evolve(&mut self, event: &Event, at: DateTime<Utc>) -> Vec<AgentId> {
        let observation = self.observe(event, at);
        self.remember(observation.change);
        let grouped = by_agent(observation.facts);
        let changed = grouped.iter().map(|(agent, _)| *agent).collect();
        for (agent, facts) in grouped {
            let watched = self.agents.entry(agent).or_default();
            facts
                .iter()
                .for_each(|fact| record(&mut watched.facts, fact));
            let holding = holding(&watched.facts);
            // A condition that stopped holding has cleared; one that begins to hold crosses.
            for (key, level) in &mut watched.levels {
                level.holds &= holding.contains_key(key);
            }
            for key in holding.into_keys() {
                let level = watched.levels.entry(key).or_default();
                if !level.holds {
                    level.holds = true;
                    level.crossings += 1;
                }
            }
        }
        changed
    }

    /// The facts an agent has shown so far.
    pub fn facts(&self, agent: AgentId) -> Option<&AgentFacts> {
        self.agents.get(&agent).map(|w| &w.facts)
    }

    /// Runs whose tasks and attempts are remembered (those not ended).
    pub fn runs_going(&self) -> usize {
        self.runs.len()
    }

    fn observe(&self, event: &Event, at: DateTime<Utc>) -> Observation {
        match event {
            Event::StepScheduled(e) if e.review.is_none() => {
                let key = (e.step.id.clone(), e.agent.id);
                if self
                    .runs
                    .get(&e.execution_id)
                    .is_some_and(|run| run.tasks.contains_key(&key))
                {
                    return Observation::nothing();
                }
                Observation {
                    facts: vec![(e.agent.id, Fact::Task)],
                    step: Some((e.workflow_id, e.execution_id, e.step.id.clone())),
                    change: Change::TaskHandedOut {
                        execution: e.execution_id,
                        step: e.step.id.clone(),
                        agent: e.agent.id,
                        task: Task {
                            step_type: e.step.step_type,
                            estimate_minutes: e.step.timeout_minutes,
                            handed_out_at: at,
                            completed: false,
                            escalated: false,
                        },
                    },
                }
            }
            Event::StepCompleted(e) => {
                let mut observation = self.attempt_ended(&e.attempt, Outcome::Completed, at);
                if let Some(usd) = e.cost_usd
                    && observation.step.is_some()
                {
                    observation
                        .facts
                        .push((e.attempt.agent_id, Fact::Costed { usd }));
                }
                observation
            }
            Event::StepFailed(e) => self.attempt_ended(&e.attempt, Outcome::Failed, at),
            Event::StepTimedOut(e) => self.attempt_ended(&e.attempt, Outcome::TimedOut, at),
            Event::StepReviewed(e) => {
                let mut observation = self.attempt_ended(&e.attempt, Outcome::Reviewed, at);
                if observation.step.is_some() {
                    observation.facts.push((
                        e.author_agent_id,
                        Fact::Reviewed {
                            approved: e.approved,
                        },
                    ));
                }
                observation
            }
            // An approval waits for a person's sign-off: nobody failed.
            Event::StepEscalated(e) if !e.approval => {
                let failing = e
                    .context
                    .failures
                    .iter()
                    .rev()
                    .find(|f| f.attempt == e.attempt)
                    .map(|f| f.agent_id);
                let task = failing.and_then(|agent| {
                    let task = self
                        .runs
                        .get(&e.execution_id)?
                        .tasks
                        .get(&(e.step_id.clone(), agent))?;
                    (!task.escalated).then_some((agent, task.step_type))
                });
                let Some((agent, step_type)) = task else {
                    return Observation::nothing();
                };
                Observation {
                    facts: vec![(agent, Fact::TaskEscalated(step_type))],
                    step: Some((e.workflow_id, e.execution_id, e.step_id.clone())),
                    change: Change::TaskEscalated {
                        execution: e.execution_id,
                        step: e.step_id.clone(),
                        agent,
                    },
                }
            }
            Event::ExecutionCompleted(e) => Self::run_ended(e.execution_id),
            Event::ExecutionFailed(e) => Self::run_ended(e.execution_id),
            Event::ExecutionCancelled(e) => Self::run_ended(e.execution_id),
            _ => Observation::nothing(),
        }
    }

    fn run_ended(execution: ExecutionId) -> Observation {
        Observation {
            change: Change::RunEnded(execution),
            ..Observation::nothing()
        }
    }

    /// An attempt's first outcome; a later one (reported after its time-out) is ignored.
    fn attempt_ended(&self, a: &StepAttempt, outcome: Outcome, at: DateTime<Utc>) -> Observation {
        let Some(run) = self.runs.get(&a.execution_id) else {
            return Observation::nothing();
        };
        if run.ended.contains(&(a.step_id.clone(), a.number)) {
            return Observation::nothing();
        }
        let mut facts = vec![(a.agent_id, Fact::Attempt(outcome))];
        let task = run
            .tasks
            .get(&(a.step_id.clone(), a.agent_id))
            .filter(|task| outcome == Outcome::Completed && !task.completed);
        let completed = task.map(|task| {
            facts.push((
                a.agent_id,
                Fact::TaskCompleted {
                    seconds: seconds_between(task.handed_out_at, at),
                    estimate_seconds: task.estimate_minutes.map(|m| m * 60.0),
                },
            ));
            a.agent_id
        });
        Observation {
            facts,
            step: Some((a.workflow_id, a.execution_id, a.step_id.clone())),
            change: Change::AttemptEnded {
                execution: a.execution_id,
                step: a.step_id.clone(),
                attempt: a.number,
                completed,
            },
        }
    }

    fn remember(&mut self, change: Change) {
        match change {
            Change::None => {}
            Change::TaskHandedOut {
                execution,
                step,
                agent,
                task,
            } => {
                let run = self.runs.entry(execution).or_default();
                run.tasks.entry((step, agent)).or_insert(task);
            }
            Change::AttemptEnded {
                execution,
                step,
                attempt,
                completed,
            } => {
                if let Some(run) = self.runs.get_mut(&execution) {
                    if let Some(task) =
                        completed.and_then(|a| run.tasks.get_mut(&(step.clone(), a)))
                    {
                        task.completed = true;
                    }
                    run.ended.insert((step, attempt));
                }
            }
            Change::TaskEscalated {
                execution,
                step,
                agent,
            } => {
                if let Some(task) = self
                    .runs
                    .get_mut(&execution)
                    .and_then(|run| run.tasks.get_mut(&(step, agent)))
                {
                    task.escalated = true;
                }
            }
            Change::RunEnded(execution) => {
                self.runs.remove(&execution);
            }
        }
    }
}

/// The id of an alert raised at `at`: derived from its agent, key and crossing, so that
/// deciding it again (a replay, a second coordinator) names the same event.
pub fn alert_id(alert: &AlertRaised, at: DateTime<Utc>) -> EventId {
    EventId::derive(
        at,
        alert.agent_id.0,
        &format!("alert/{}/{}", alert.alert_key(), alert.crossing),
    )
}

fn seconds_between(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    (to - from).num_milliseconds().max(0) as f64 / 1000.0
}

/// The facts of each agent, in the order first named.
fn by_agent(facts: Vec<(AgentId, Fact)>) -> Vec<(AgentId, Vec<Fact>)> {
    let mut grouped: Vec<(AgentId, Vec<Fact>)> = Vec::new();
    for (agent, fact) in facts {
        match grouped.iter_mut().find(|(a, _)| *a == agent) {
            Some((_, facts)) => facts.push(fact),
            None => grouped.push((agent, vec![fact])),
        }
    }
    grouped
}

fn record(facts: &mut AgentFacts, fact: &Fact) {
    match fact {
        Fact::Task => facts.tasks += 1,
        Fact::Attempt(outcome) => {
            facts.attempts += 1;
            match outcome {
                Outcome::Completed | Outcome::Reviewed => {}
                Outcome::Failed => facts.failed += 1,
                Outcome::TimedOut => facts.timed_out += 1,
            }
        }
        Fact::TaskCompleted {
            seconds,
            estimate_seconds,
        } => {
            facts.tasks_completed += 1;
            facts.completion_seconds += seconds;
            if let Some(estimate) = estimate_seconds {
                facts.estimated_tasks += 1;
                facts.estimated_actual_seconds += seconds;
                facts.estimate_seconds += estimate;
            }
        }
        Fact::TaskEscalated(step_type) => {
            *facts.escalations_by_type.entry(*step_type).or_default() += 1;
        }
        Fact::Reviewed { approved } => {
            facts.reviews += 1;
            facts.approvals += u64::from(*approved);
        }
        Fact::Costed { usd } => {
            facts.costed_completions += 1;
            facts.completion_cost_usd += usd;
        }
    }
}

/// The conditions that hold for `facts`, as measured.
fn holding(facts: &AgentFacts) -> BTreeMap<Key, Measure> {
    let mut holding = BTreeMap::new();
    let failures = facts.failed + facts.timed_out;
    if let Some(rate) = facts.failure_rate()
        && facts.attempts >= MIN_ATTEMPTS
        && rate > MAX_FAILURE_RATE
    {
        holding.insert(
            (AlertCondition::FailureRate, None),
            Measure {
                value: rate,
                threshold: MAX_FAILURE_RATE,
                sample: facts.attempts,
                message: format!(
                    "{failures} of its {} ended attempts failed or timed out ({rate:.0} %, over {MAX_FAILURE_RATE} %)",
                    facts.attempts
                ),
            },
        );
    }
    if let Some(percent) = facts.time_against_estimate()
        && facts.estimated_tasks >= MIN_ESTIMATED_TASKS
        && percent > MAX_TIME_AGAINST_ESTIMATE
    {
        holding.insert(
            (AlertCondition::SlowCompletion, None),
            Measure {
                value: percent,
                threshold: MAX_TIME_AGAINST_ESTIMATE,
                sample: facts.estimated_tasks,
                message: format!(
                    "its {} completed tasks with an estimate took {percent:.0} % of their estimates (over {MAX_TIME_AGAINST_ESTIMATE} %)",
                    facts.estimated_tasks
                ),
            },
        );
    }
    for (step_type, &escalated) in &facts.escalations_by_type {
        if escalated >= REPEATED_ESCALATIONS {
            holding.insert(
                (AlertCondition::RepeatedEscalations, Some(*step_type)),
                Measure {
                    value: escalated as f64,
                    threshold: REPEATED_ESCALATIONS as f64,
                    sample: escalated,
                    message: format!(
                        "its failures escalated {escalated} tasks of type {} ({REPEATED_ESCALATIONS} or more of one type make an alert)",
                        step_type.as_str()
                    ),
                },
            );
        }
    }
    if let Some(quality) = facts.quality_score()
        && facts.reviews >= MIN_REVIEWS
        && quality < MIN_QUALITY
    {
        holding.insert(
            (AlertCondition::LowQuality, None),
            Measure {
                value: quality,
                threshold: MIN_QUALITY,
                sample: facts.reviews,
                message: format!(
                    "reviewers approved {} of {} reviews of its work: quality {quality:.1} of 10 (under {MIN_QUALITY})",
                    facts.approvals, facts.reviews
                ),
            },
        );
    }
    holding
}

#[cfg(test)]
mod tests;
