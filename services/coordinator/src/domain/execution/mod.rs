//! One workflow execution as a state machine: [`evolve`] folds its events, [`decide`] says
//! what happens next, and [`effects`] says what the world outside the log must do because an
//! event was stored (hand a step to the workers, arm or cancel a timer, stop an LLM call).
//!
//! Decisions are level-triggered: `Advance` looks at the whole state (which steps are ready,
//! whether all are done) rather than at the event that woke the coordinator. Deciding twice on
//! the same state yields the same events, so a redelivered or replayed event is harmless, and
//! `evolve` ignores events that no longer apply (a second completion of a step, a stale attempt).

mod decide;
mod effects;
mod handoff;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};

use cadre_proto::events::AgentRecord;
use cadre_proto::events::{
    AssignmentReason, EscalationContext, FailedAttempt, FailureCause, ParentStep, Resolution,
    StepAttempt, Teammate, Vote, is_everyone,
};
use cadre_proto::model::{
    AgentProfile, EscalationPolicy, EscalationRung, ObjectRef, RetryBackoff, WorkflowDefinition,
    WorkflowStep,
};
use cadre_proto::{AgentId, EscalationId, Event, ExecutionId, StepId};
use chrono::{DateTime, Utc};

pub use decide::{Command, ExecutionDecider, Start, TransitionRefused, decide, started};
pub use effects::effects;

#[derive(Debug, Clone, PartialEq)]
pub enum StepState {
    /// Not yet handed to an agent (or failed with retries left).
    Waiting,
    Scheduled {
        agent: AgentId,
    },
    Running {
        agent: AgentId,
    },
    Completed {
        /// `None` when a person provided the result (or approved the step).
        agent: Option<AgentId>,
        summary: String,
        output: String,
        /// Where the whole result is, when `summary` and `output` are previews.
        full: Option<ObjectRef>,
    },
    /// The attempt failed or timed out.
    Failed {
        agent: AgentId,
        error: String,
        /// Whether another attempt may succeed.
        retryable: bool,
    },
    /// Its condition was false: it will not run, and counts as done for its dependants.
    Skipped,
    /// Its work is done and waits for a review (`reviewRequired`).
    AwaitingReview,
    /// A reviewer sent it back: its author does it again with the feedback.
    Rework {
        author: AgentId,
    },
    /// Reviewers sent it back as many times as allowed.
    Rejected {
        feedback: String,
    },
    /// The attempt failed and the step waits for its retry backoff, until `at`.
    RetryWaiting {
        agent: AgentId,
        at: DateTime<Utc>,
    },
    /// The backoff is over: the next attempt is handed out as soon as the run allows.
    RetryDue {
        agent: AgentId,
    },
    /// Its agent asked teammates questions ([`StepProgress::questions`]) and finishes the step
    /// in a next attempt, with their answers; no worker is held meanwhile.
    AwaitingAnswers {
        agent: AgentId,
    },
    /// Its retries are spent and a rung of the escalation ladder chose who takes its next
    /// attempt, handed out as soon as the run allows.
    Escalating {
        to: Box<AgentProfile>,
        reason: AssignmentReason,
    },
    /// It waits for a person ([`Command::Resolve`]): a failure past the ladder's other rungs,
    /// or an `approval` step. No worker is held.
    Escalated {
        escalation_id: EscalationId,
        approval: bool,
    },
    /// The coordinator agent chooses who takes it, in its step `delegate-<id>` (this attempt).
    Delegating {
        attempt: u32,
    },
    /// The coordinator agent answered (its summary and output), or could not (why): the step
    /// is handed out next, to its choice if that holds.
    Delegated {
        answer: Result<(String, String), String>,
    },
    /// A person aborted the run from its escalation (or rejected the approval): the run fails.
    Aborted {
        escalation_id: EscalationId,
        resolution: Resolution,
        by: Option<String>,
        reason: Option<String>,
    },
}

impl StepState {
    /// The name a condition and the read models see.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Waiting => "waiting",
            Self::Scheduled { .. } => "scheduled",
            Self::Running { .. } => "running",
            Self::Completed { .. } => "completed",
            Self::Failed { .. } => "failed",
            Self::Skipped => "skipped",
            Self::AwaitingReview => "awaiting_review",
            Self::Rework { .. } => "rework",
            Self::Rejected { .. } => "rejected",
            Self::AwaitingAnswers { .. } => "awaiting_answers",
            Self::RetryWaiting { .. } => "retry_waiting",
            Self::RetryDue { .. } => "retry_due",
            Self::Escalating { .. } => "escalating",
            Self::Escalated { .. } => "escalated",
            Self::Aborted { .. } => "aborted",
            Self::Delegating { .. } => "delegating",
            Self::Delegated { .. } => "delegated",
        }
    }

    /// Done, as far as the steps that depend on it are concerned.
    pub fn is_done(&self) -> bool {
        matches!(self, Self::Completed { .. } | Self::Skipped)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct StepProgress {
    /// The attempt the state belongs to; 0 before the first scheduling. Reviews and reworks are
    /// attempts too.
    pub attempt: u32,
    pub state: StepState,
    /// Attempts that failed or timed out: more than `maxRetries` fail the execution.
    pub failures: u32,
    /// Whether the current attempt reviews the step's work rather than doing it.
    pub reviewing: bool,
    /// Reviews so far.
    pub rounds: u32,
    /// Work done and waiting for (or under) review.
    pub draft: Option<Draft>,
    /// The votes cast so far on the draft in this round, when a panel votes on it.
    pub votes: Vec<Vote>,
    /// The last reviewer's feedback, for the author's next attempt.
    pub feedback: Option<String>,
    /// The questions the current attempt asked, while it waits for their answers.
    pub questions: Vec<Question>,
    /// Whether the current attempt was handed its questions' answers: it may not ask again.
    pub answered: bool,
    /// The handoffs recorded for the step's first attempt, as (from, to) agents.
    pub handoffs: Vec<(AgentId, AgentId)>,
    /// The failed attempts, oldest first (the last [`EscalationContext::MAX_FAILURES`]).
    pub failed: Vec<FailedAttempt>,
    /// The escalation rungs climbed, in order.
    pub climbed: Vec<EscalationRung>,
}

/// A question an attempt asked, and what became of it for each teammate it went to.
#[derive(Debug, Clone, PartialEq)]
pub struct Question {
    pub question_id: String,
    pub text: String,
    /// Whom the agent asked, as it wrote it (`None`: everyone).
    pub to: Option<String>,
    /// The teammates it goes to: one, every other participant for a broadcast, none when
    /// nobody matched `to`.
    pub recipients: Vec<Recipient>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Recipient {
    pub agent: AgentId,
    pub name: String,
    pub reply: Reply,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// Not handed out yet.
    Pending,
    /// Handed out; no answer yet.
    Assigned,
    Answered(String),
    /// The teammate could not answer (its model failed), with why.
    Failed(String),
    /// The deadline passed first.
    Missed,
}

impl Reply {
    fn is_final(&self) -> bool {
        matches!(self, Self::Answered(_) | Self::Failed(_) | Self::Missed)
    }
}

impl Question {
    /// Whom `to` names among `agents` (never the asker): an agent by id, name or role, the
    /// first in participation order when several share a role; everyone for no addressee or
    /// `everyone`/`all`/`team`; nobody when nothing matches.
    fn addressed(
        asked: &cadre_proto::events::AskedQuestion,
        asker: AgentId,
        agents: &[AgentProfile],
    ) -> Self {
        let mut others = agents.iter().filter(|a| a.id != asker);
        let recipients: Vec<&AgentProfile> = match asked.to.as_deref() {
            to if is_everyone(to) => others.collect(),
            Some(to) => others
                .find(|a| Teammate::of(a).is_addressed_by(to))
                .into_iter()
                .collect(),
            None => vec![],
        };
        Self {
            question_id: asked.question_id.clone(),
            text: asked.text.clone(),
            to: asked.to.clone(),
            recipients: recipients
                .into_iter()
                .map(|a| Recipient {
                    agent: a.id,
                    name: a.name.clone(),
                    reply: Reply::Pending,
                })
                .collect(),
        }
    }

    fn is_broadcast(&self) -> bool {
        is_everyone(self.to.as_deref())
    }

    fn recipient(&mut self, agent: AgentId) -> Option<&mut Recipient> {
        self.recipients.iter_mut().find(|r| r.agent == agent)
    }
}

/// A step's work before its review approves it.
#[derive(Debug, Clone, PartialEq)]
pub struct Draft {
    pub author: AgentId,
    pub summary: String,
    pub output: String,
    pub full: Option<ObjectRef>,
}

impl StepProgress {
    fn new() -> Self {
        Self {
            attempt: 0,
            state: StepState::Waiting,
            failures: 0,
            reviewing: false,
            rounds: 0,
            draft: None,
            votes: Vec::new(),
            feedback: None,
            questions: Vec::new(),
            answered: false,
            handoffs: Vec::new(),
            failed: Vec::new(),
            climbed: Vec::new(),
        }
    }
}

impl StepProgress {
    /// Records that `from` handed the step to `to`, once per pair.
    fn handed_off(&mut self, from: AgentId, to: AgentId) {
        if !self.handoffs.contains(&(from, to)) {
            self.handoffs.push((from, to));
        }
    }

    /// Whether an attempt is under way: handed out, running, or waiting for its questions'
    /// answers.
    pub fn is_active(&self) -> bool {
        matches!(
            self.state,
            StepState::Scheduled { .. }
                | StepState::Running { .. }
                | StepState::AwaitingAnswers { .. }
        )
    }

    /// Whether the step holds its place in the run without holding an agent: it waits for
    /// answers or for its retry. A run that allows one step at a time starts no other then.
    fn is_pending(&self) -> bool {
        matches!(
            self.state,
            StepState::AwaitingAnswers { .. }
                | StepState::RetryWaiting { .. }
                | StepState::Escalated { .. }
                | StepState::Delegating { .. }
        )
    }

    /// Records a failed attempt and leaves the step `Failed`.
    fn fail(&mut self, attempt: &StepAttempt, error: String, retryable: bool) {
        self.failures += 1;
        if self.failed.len() == EscalationContext::MAX_FAILURES {
            self.failed.remove(0);
        }
        self.failed.push(FailedAttempt {
            attempt: attempt.number,
            agent_id: attempt.agent_id,
            error: error.clone(),
        });
        self.state = StepState::Failed {
            agent: attempt.agent_id,
            error,
            retryable,
        };
    }

    /// Who may not judge the work the current attempt reviews: its author, and the voters who
    /// voted on it this round. Empty when the attempt does not review.
    fn barred_from_judging(&self) -> Vec<AgentId> {
        if !self.reviewing {
            return Vec::new();
        }
        self.draft
            .iter()
            .map(|d| d.author)
            .chain(self.votes.iter().map(|v| v.agent_id))
            .collect()
    }

    /// Whether `attempt` is this step's current attempt and still running.
    fn runs(&self, attempt: u32) -> bool {
        self.attempt == attempt && self.is_active()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Running,
    /// Running steps finish; nothing new is scheduled.
    Paused,
    /// Like paused, until a person resolves the run's escalation (`escalation.afterMinutes`).
    Escalated,
    Completed,
    Failed,
    Cancelled,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Escalated => "escalated",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn is_finished(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Execution {
    pub id: ExecutionId,
    pub workflow: WorkflowDefinition,
    /// Participating agents, in participation order.
    pub agents: Vec<AgentProfile>,
    /// What the run was started with.
    pub input: Option<serde_json::Value>,
    /// The step of another execution this run is a child of.
    pub parent: Option<ParentStep>,
    pub started_at: Option<DateTime<Utc>>,
    /// The agents' records when the run started: assignment breaks ties of load with them.
    pub records: BTreeMap<AgentId, AgentRecord>,
    pub status: Status,
    pub steps: BTreeMap<StepId, StepProgress>,
    /// The lead rules applied, in order: the risk, and the agent that took the lead (none
    /// when no participant had the rule's role). The last with an agent leads.
    pub leads: Vec<(String, Option<AgentId>)>,
    /// The run's own escalation (`escalation.afterMinutes`), once raised: its id, and whether
    /// it is still open.
    pub escalation: Option<(EscalationId, bool)>,
    /// A person aborted the run from its own escalation (who, why): it fails next.
    pub aborted: Option<(EscalationId, Option<String>, Option<String>)>,
    /// The steps in the order they completed: a saga undoes them in reverse.
    pub completion_order: Vec<StepId>,
    /// How many times the run re-planned.
    pub replans: u32,
    /// The run is failing and undoing its completed steps first.
    pub saga: Option<Saga>,
    /// When each attempt handed out with a time-out (a step's, a delegation's, an undoing's; a
    /// re-planning's is kept but never times out) must end by, until it completes, fails, is
    /// reviewed or times out: what the execution's step time-out timer guards. An attempt that
    /// ends otherwise (it asked questions, a saga or a re-plan stopped it) keeps its entry,
    /// which the timer's checks pass over.
    pub step_deadlines: BTreeMap<(StepId, u32), DateTime<Utc>>,
    /// When the execution's step time-out timer is armed to fire, until its firing is checked
    /// (`StepDeadlinesChecked`): armed by a scheduling whose deadline comes first
    /// (`StepScheduled::arms_step_timer`), never cancelled when the attempt ends early.
    pub step_timer: Option<DateTime<Utc>>,
}

/// A failing run's compensations (see `SagaStarted`).
#[derive(Debug, Clone, PartialEq)]
pub struct Saga {
    /// Why the run fails once its compensations are done.
    pub cause: FailureCause,
    pub error: String,
    /// The steps to undo, in order, and what became of each undoing.
    pub steps: Vec<(StepId, Undoing)>,
    /// The re-planning that follows the undoings, when the workflow asks for it.
    pub replan: Option<Undoing>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Undoing {
    /// Not handed out yet.
    Pending,
    /// Handed out as this attempt of `undo-<id>`, to this agent.
    Scheduled {
        attempt: u32,
        agent: AgentId,
    },
    /// Done: for a re-planning, `output` is the proposal.
    Done {
        summary: String,
        output: String,
    },
    Failed {
        error: String,
    },
}

impl Saga {
    /// The step whose undoing is handed out or next, if any is left.
    pub fn current(&self) -> Option<&(StepId, Undoing)> {
        self.steps
            .iter()
            .find(|(_, u)| matches!(u, Undoing::Pending | Undoing::Scheduled { .. }))
    }

    /// The undoing `undo` (an `undo-<id>` step) is, while handed out as `attempt`.
    fn undoing(&mut self, undo: &StepId, attempt: u32) -> Option<&mut Undoing> {
        self.steps
            .iter_mut()
            .find(|(step, u)| {
                step.undo() == *undo
                    && matches!(u, Undoing::Scheduled { attempt: a, .. } if *a == attempt)
            })
            .map(|(_, u)| u)
    }
}

/// An execution's state: nothing before its `ExecutionStarted`.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum State {
    #[default]
    NotStarted,
    Started(Box<Execution>),
}

impl State {
    pub fn is_finished(&self) -> bool {
        matches!(self, Self::Started(e) if e.status.is_finished())
    }
}

pub fn evolve(state: State, event: &Event) -> State {
    match (state, event) {
        (State::NotStarted, Event::ExecutionStarted(started)) => {
            let steps = started
                .workflow
                .configuration
                .steps
                .iter()
                .map(|s| (s.id.clone(), StepProgress::new()))
                .collect();
            State::Started(Box::new(Execution {
                id: started.execution_id,
                workflow: started.workflow.clone(),
                agents: started.agents.clone(),
                input: started.input.clone(),
                parent: started.parent.clone(),
                started_at: started.started_at,
                records: started.records.clone(),
                status: Status::Running,
                steps,
                leads: Vec::new(),
                escalation: None,
                aborted: None,
                completion_order: Vec::new(),
                replans: 0,
                saga: None,
                step_deadlines: BTreeMap::new(),
                step_timer: None,
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
        self.track_step_deadlines(event);
        if self.undo(event) || self.delegation(event) {
            return;
        }
        self.apply_to_steps(event);
        // A person who aborts while the run undoes its steps decided to stop: no re-planning.
        if let (Event::EscalationResolved(e), Some(saga)) = (event, self.saga.as_mut())
            && matches!(e.resolution, Resolution::Abort | Resolution::Reject)
        {
            saga.replan = None;
        }
        // At most one step completes per event: the order of completions is exact.
        if matches!(
            event,
            Event::StepCompleted(_)
                | Event::StepReviewed(_)
                | Event::VotesTallied(_)
                | Event::EscalationResolved(_)
        ) {
            for step in &self.workflow.configuration.steps {
                if matches!(self.steps[&step.id].state, StepState::Completed { .. })
                    && !self.completion_order.contains(&step.id)
                {
                    self.completion_order.push(step.id.clone());
                }
            }
        }
    }

    /// Keeps [`Execution::step_deadlines`] and [`Execution::step_timer`] up to date.
    fn track_step_deadlines(&mut self, event: &Event) {
        let ended = match event {
            Event::StepScheduled(e) => {
                if let Some(at) = e.timeout_at {
                    self.step_deadlines
                        .insert((e.step.id.clone(), e.attempt), at);
                    if e.arms_step_timer == Some(true) {
                        self.step_timer = Some(at);
                    }
                }
                return;
            }
            // A copy of an earlier check (stored again) is not about the timer as armed now.
            Event::StepDeadlinesChecked(e) => {
                if self.step_timer == Some(e.due) {
                    self.step_timer = e.next_at;
                }
                return;
            }
            Event::StepCompleted(e) => &e.attempt,
            Event::StepFailed(e) => &e.attempt,
            Event::StepReviewed(e) => &e.attempt,
            Event::StepTimedOut(e) => &e.attempt,
            _ => return,
        };
        self.step_deadlines
            .remove(&(ended.step_id.clone(), ended.number));
    }

    /// Applies an event of the run's saga: its start, or one about an `undo-<id>` step.
    /// Returns whether it was one.
    fn undo(&mut self, event: &Event) -> bool {
        if let Event::SagaStarted(e) = event {
            if self.saga.is_none() && !self.status.is_finished() {
                self.saga = Some(Saga {
                    cause: e.cause.clone(),
                    error: e.error.clone(),
                    steps: e
                        .steps
                        .iter()
                        .map(|s| (s.clone(), Undoing::Pending))
                        .collect(),
                    replan: e.replan.then_some(Undoing::Pending),
                });
            }
            return true;
        }
        if let Event::ExecutionReplanned(e) = event {
            if self.saga.is_some() && !self.status.is_finished() {
                self.replanned(e);
            }
            return true;
        }
        // Only `undo-<id>` steps are the saga's; no workflow step has that prefix.
        let step = match event {
            Event::StepScheduled(e) => &e.step.id,
            Event::StepCompleted(e) => &e.attempt.step_id,
            Event::StepFailed(e) => &e.attempt.step_id,
            Event::StepTimedOut(e) => &e.attempt.step_id,
            Event::QuestionsAsked(e) => &e.attempt.step_id,
            _ => return false,
        };
        let replanning = step.as_str().starts_with(StepId::REPLAN_PREFIX);
        if !step.as_str().starts_with(StepId::UNDO_PREFIX) && !replanning {
            return false;
        }
        let Some(saga) = self.saga.as_mut().filter(|_| !self.status.is_finished()) else {
            return true;
        };
        let outcome = match event {
            Event::StepScheduled(e) if replanning => {
                if saga.replan == Some(Undoing::Pending) {
                    saga.replan = Some(Undoing::Scheduled {
                        attempt: e.attempt,
                        agent: e.agent.id,
                    });
                }
                return true;
            }
            Event::StepScheduled(e) => {
                if let Some((_, undoing)) = saga
                    .steps
                    .iter_mut()
                    .find(|(step, u)| step.undo() == e.step.id && *u == Undoing::Pending)
                {
                    *undoing = Undoing::Scheduled {
                        attempt: e.attempt,
                        agent: e.agent.id,
                    };
                }
                return true;
            }
            Event::StepCompleted(e) => (
                &e.attempt,
                Undoing::Done {
                    summary: e.result.summary.clone(),
                    output: e.result.output.clone(),
                },
            ),
            Event::StepFailed(e) => (
                &e.attempt,
                Undoing::Failed {
                    error: e.error.clone(),
                },
            ),
            Event::StepTimedOut(e) => (&e.attempt, Undoing::Failed { error: e.error() }),
            // An undoing waits for no answer: asking instead of undoing leaves it undone.
            Event::QuestionsAsked(e) => (
                &e.attempt,
                Undoing::Failed {
                    error: "asked teammates questions instead of undoing the step".to_owned(),
                },
            ),
            _ => return true,
        };
        let (attempt, result) = outcome;
        let undoing = if replanning {
            saga.replan.as_mut().filter(
                |u| matches!(u, Undoing::Scheduled { attempt: a, .. } if *a == attempt.number),
            )
        } else {
            saga.undoing(&attempt.step_id, attempt.number)
        };
        if let Some(undoing) = undoing {
            *undoing = result;
        }
        true
    }

    /// Applies an event of a `delegate-<id>` step, in which the coordinator agent chooses who
    /// takes step `<id>`. Returns whether it was one.
    fn delegation(&mut self, event: &Event) -> bool {
        let (id, attempt, answer) = match event {
            Event::StepScheduled(e) => (&e.step.id, e.attempt, None),
            Event::StepCompleted(e) => (
                &e.attempt.step_id,
                e.attempt.number,
                Some(Ok((e.result.summary.clone(), e.result.output.clone()))),
            ),
            Event::StepFailed(e) => (
                &e.attempt.step_id,
                e.attempt.number,
                Some(Err(e.error.clone())),
            ),
            Event::StepTimedOut(e) => (&e.attempt.step_id, e.attempt.number, Some(Err(e.error()))),
            Event::QuestionsAsked(e) => (
                &e.attempt.step_id,
                e.attempt.number,
                Some(Err(
                    "it asked teammates questions instead of choosing".to_owned()
                )),
            ),
            _ => return false,
        };
        let Some(step) = id.delegated() else {
            return false;
        };
        self.step_event(&step, |p| match (&p.state, answer) {
            (StepState::Waiting, None) => p.state = StepState::Delegating { attempt },
            (StepState::Delegating { attempt: asked }, Some(answer)) if *asked == attempt => {
                p.state = StepState::Delegated { answer };
            }
            _ => {}
        });
        true
    }

    /// The run goes on with the steps its coordinator agent proposed: a step keeping its id
    /// keeps its attempt count (its next attempt is a new one), everything else starts afresh.
    fn replanned(&mut self, e: &cadre_proto::events::ExecutionReplanned) {
        let old = std::mem::take(&mut self.steps);
        self.steps = e
            .steps
            .iter()
            .map(|step| {
                let mut progress = StepProgress::new();
                progress.attempt = old.get(&step.id).map_or(0, |p| p.attempt);
                (step.id.clone(), progress)
            })
            .collect();
        self.workflow.configuration.steps = e.steps.clone();
        self.workflow.configuration.phases.clear();
        self.completion_order.clear();
        self.replans = e.replan;
        self.saga = None;
    }

    fn apply_to_steps(&mut self, event: &Event) {
        match event {
            Event::StepScheduled(e) => self.step_event(&e.step.id, |p| {
                // A newer attempt always takes over; the same attempt only schedules once.
                if e.attempt > p.attempt {
                    p.attempt = e.attempt;
                    p.state = StepState::Scheduled { agent: e.agent.id };
                    p.reviewing = e.review.is_some();
                    p.questions.clear();
                    p.answered = !e.answers.is_empty();
                }
                for giver in e.handoff.iter().flat_map(|handoff| &handoff.from) {
                    p.handed_off(giver.agent_id, e.agent.id);
                }
            }),
            // Logs written before handoffs travelled in the scheduling.
            Event::TaskHandedOff(e) => {
                self.step_event(&e.task_id, |p| p.handed_off(e.from_agent, e.to_agent));
            }
            Event::StepStarted(e) => self.step_event(&e.attempt.step_id, |p| {
                if p.attempt == e.attempt.number && matches!(p.state, StepState::Scheduled { .. }) {
                    p.state = StepState::Running {
                        agent: e.attempt.agent_id,
                    };
                }
            }),
            Event::StepCompleted(e) => {
                let review_required = self
                    .workflow
                    .step(&e.attempt.step_id)
                    .is_some_and(|s| s.review_required || self.seats(s).is_some());
                self.step_event(&e.attempt.step_id, |p| {
                    // A review attempt answers with `StepReviewed`, never with this.
                    if !p.runs(e.attempt.number) || p.reviewing {
                        return;
                    }
                    let draft = Draft {
                        author: e.attempt.agent_id,
                        summary: e.result.summary.clone(),
                        output: e.result.output.clone(),
                        full: e.result.full.clone(),
                    };
                    if review_required {
                        p.draft = Some(draft);
                        p.state = StepState::AwaitingReview;
                    } else {
                        p.state = draft.completed();
                    }
                });
            }
            Event::StepReviewed(e) => {
                let max_rounds = self.max_review_rounds();
                let voted = self
                    .workflow
                    .step(&e.attempt.step_id)
                    .and_then(|s| self.seats(s))
                    .is_some();
                self.step_event(&e.attempt.step_id, |p| {
                    if !p.runs(e.attempt.number) || !p.reviewing {
                        return;
                    }
                    if voted {
                        // One vote of the panel's: the decider tallies them.
                        p.votes.push(Vote {
                            agent_id: e.attempt.agent_id,
                            approved: e.approved,
                            feedback: e.feedback.clone(),
                        });
                        p.state = StepState::AwaitingReview;
                        return;
                    }
                    p.rounds = e.round;
                    match p.draft.take() {
                        Some(draft) if e.approved => p.state = draft.completed(),
                        Some(_) if e.round >= max_rounds => {
                            p.state = StepState::Rejected {
                                feedback: e.feedback.clone(),
                            };
                        }
                        Some(draft) => {
                            p.feedback = Some(e.feedback.clone());
                            p.state = StepState::Rework {
                                author: draft.author,
                            };
                        }
                        // A review of no work cannot be: leave the step as it is.
                        None => {}
                    }
                });
            }
            Event::VotesTallied(e) => {
                let max_rounds = self.max_review_rounds();
                self.step_event(&e.step_id, |p| {
                    if p.state != StepState::AwaitingReview || e.round != p.rounds + 1 {
                        return;
                    }
                    p.rounds = e.round;
                    p.votes.clear();
                    match p.draft.take() {
                        Some(draft) if e.approved => p.state = draft.completed(),
                        Some(_) if e.round >= max_rounds => {
                            p.state = StepState::Rejected {
                                feedback: e.feedback(),
                            };
                        }
                        Some(draft) => {
                            p.feedback = Some(e.feedback());
                            p.state = StepState::Rework {
                                author: draft.author,
                            };
                        }
                        None => {}
                    }
                });
            }
            Event::StepFailed(e) => self.step_event(&e.attempt.step_id, |p| {
                if p.runs(e.attempt.number) {
                    p.fail(&e.attempt, e.error.clone(), e.retryable);
                }
            }),
            Event::StepTimedOut(e) => self.step_event(&e.attempt.step_id, |p| {
                if p.runs(e.attempt.number) {
                    p.fail(&e.attempt, e.error(), true);
                }
            }),
            Event::QuestionsAsked(e) => {
                let agents = &self.agents;
                let asker = e.attempt.agent_id;
                let questions: Vec<Question> = e
                    .questions
                    .iter()
                    .map(|q| Question::addressed(q, asker, agents))
                    .collect();
                self.step_event(&e.attempt.step_id, |p| {
                    if p.runs(e.attempt.number)
                        && !p.reviewing
                        && !p.answered
                        && !matches!(p.state, StepState::AwaitingAnswers { .. })
                    {
                        p.state = StepState::AwaitingAnswers { agent: asker };
                        p.questions = questions;
                    }
                });
            }
            Event::QuestionAssigned(e) => self.reply(&e.step_id, e.attempt, |p| {
                if let Some(r) = p
                    .questions
                    .iter_mut()
                    .find(|q| q.question_id == e.question_id)
                    .and_then(|q| q.recipient(e.recipient.id))
                    && r.reply == Reply::Pending
                {
                    r.reply = Reply::Assigned;
                }
            }),
            Event::QuestionAnswered(e) => self.reply(&e.step_id, e.attempt, |p| {
                if let Some(r) = p
                    .questions
                    .iter_mut()
                    .find(|q| q.question_id == e.question_id)
                    .and_then(|q| q.recipient(e.agent_id))
                    && !r.reply.is_final()
                {
                    r.reply = match (&e.answer, &e.error) {
                        (Some(answer), _) => Reply::Answered(answer.clone()),
                        (None, error) => {
                            Reply::Failed(error.clone().unwrap_or_else(|| "no answer".to_owned()))
                        }
                    };
                }
            }),
            Event::QuestionsExpired(e) => self.reply(&e.attempt.step_id, e.attempt.number, |p| {
                for missed in &e.unanswered {
                    if let Some(r) = p
                        .questions
                        .iter_mut()
                        .find(|q| q.question_id == missed.question_id)
                        .and_then(|q| q.recipient(missed.agent_id))
                        && !r.reply.is_final()
                    {
                        r.reply = Reply::Missed;
                    }
                }
                if e.failed {
                    let error = "its questions were not all answered by the deadline".to_owned();
                    p.fail(&e.attempt, error, true);
                    p.questions.clear();
                }
            }),
            Event::StepRetryScheduled(e) => self.step_event(&e.attempt.step_id, |p| {
                if p.attempt == e.attempt.number && matches!(p.state, StepState::Failed { .. }) {
                    p.state = StepState::RetryWaiting {
                        agent: e.attempt.agent_id,
                        at: e.retry_at,
                    };
                }
            }),
            Event::StepRetryDue(e) => self.step_event(&e.attempt.step_id, |p| {
                if p.attempt == e.attempt.number
                    && matches!(p.state, StepState::RetryWaiting { .. })
                {
                    p.state = StepState::RetryDue {
                        agent: e.attempt.agent_id,
                    };
                }
            }),
            Event::StepEscalated(e) => self.step_event(&e.step_id, |p| {
                let from = if e.approval {
                    // An approval is an attempt of its own; nothing ran before it.
                    p.state == StepState::Waiting && e.attempt == p.attempt + 1
                } else {
                    p.attempt == e.attempt && matches!(p.state, StepState::Failed { .. })
                };
                if !from {
                    return;
                }
                p.attempt = e.attempt;
                p.climbed.push(e.rung);
                p.state = match (&e.escalation_id, &e.agent) {
                    (Some(escalation_id), _) => StepState::Escalated {
                        escalation_id: *escalation_id,
                        approval: e.approval,
                    },
                    (None, Some(agent)) => StepState::Escalating {
                        to: Box::new(agent.clone()),
                        reason: AssignmentReason::Escalated { rung: e.rung },
                    },
                    // Neither a person nor an agent: not a rung this build climbs.
                    (None, None) => return,
                };
            }),
            Event::ExecutionEscalated(e)
                if matches!(self.status, Status::Running | Status::Paused)
                    && self.escalation.is_none() =>
            {
                self.status = Status::Escalated;
                self.escalation = Some((e.escalation_id, true));
            }
            // The run's own escalation, while it is open.
            Event::EscalationResolved(e)
                if e.step_id.is_none()
                    && self.status == Status::Escalated
                    && self.escalation == Some((e.escalation_id, true)) =>
            {
                self.escalation = Some((e.escalation_id, false));
                match e.resolution {
                    Resolution::Continue => self.status = Status::Running,
                    _ => {
                        self.aborted = Some((
                            e.escalation_id,
                            e.request.requested_by.clone(),
                            e.request.reason.clone(),
                        ));
                    }
                }
            }
            // One for no open escalation of the run changes nothing.
            Event::EscalationResolved(e) if e.step_id.is_none() => {}
            Event::EscalationResolved(e) => {
                // Resolutions are rare: a copy of the team beats a split borrow.
                let agents = self.agents.clone();
                let Some(step_id) = &e.step_id else {
                    return;
                };
                self.step_event(step_id, |p| {
                    let StepState::Escalated { escalation_id, .. } = p.state else {
                        return;
                    };
                    if escalation_id != e.escalation_id {
                        return;
                    }
                    let by = e.request.requested_by.clone();
                    let agent = |id: Option<AgentId>| {
                        id.and_then(|id| agents.iter().find(|a| a.id == id))
                            .map(|a| StepState::Escalating {
                                to: Box::new(a.clone()),
                                reason: AssignmentReason::PersonDecided { by: by.clone() },
                            })
                            .unwrap_or(StepState::Waiting)
                    };
                    p.state = match &e.resolution {
                        Resolution::Retry => agent(p.failed.last().map(|f| f.agent_id)),
                        Resolution::Reassign { agent_id } => agent(Some(*agent_id)),
                        Resolution::Skip => StepState::Skipped,
                        Resolution::ProvideOutput { .. } | Resolution::Approve => {
                            let (summary, output) = e.result().unwrap_or_default();
                            StepState::Completed {
                                agent: None,
                                summary,
                                output,
                                full: None,
                            }
                        }
                        // Not an answer to a step's escalation: the decider never records it.
                        Resolution::Continue => return,
                        Resolution::Abort | Resolution::Reject => StepState::Aborted {
                            escalation_id,
                            resolution: e.resolution.clone(),
                            by: by.clone(),
                            reason: e.request.reason.clone(),
                        },
                    };
                });
            }
            Event::StepSkipped(e) => self.step_event(&e.step_id, |p| {
                if p.state == StepState::Waiting {
                    p.state = StepState::Skipped;
                }
            }),
            Event::LeadTaken(e)
                if !self.status.is_finished()
                    && !self
                        .leads
                        .iter()
                        .any(|(risk, _)| risk.eq_ignore_ascii_case(&e.risk)) =>
            {
                self.leads
                    .push((e.risk.clone(), e.agent.as_ref().map(|a| a.id)));
            }
            Event::ExecutionPaused(_) if self.status == Status::Running => {
                self.status = Status::Paused;
            }
            Event::ExecutionResumed(_) if self.status == Status::Paused => {
                self.status = Status::Running;
            }
            Event::ExecutionCompleted(_) if !self.status.is_finished() => {
                self.status = Status::Completed;
            }
            Event::ExecutionFailed(_) if !self.status.is_finished() => {
                self.status = Status::Failed;
            }
            Event::ExecutionCancelled(_) if !self.status.is_finished() => {
                self.status = Status::Cancelled;
            }
            // Facts about other aggregates, the start (already applied), or no longer
            // applicable (a pause of a finished run).
            _ => {}
        }
    }

    fn step_event(&mut self, step: &StepId, change: impl FnOnce(&mut StepProgress)) {
        if !self.status.is_finished()
            && let Some(progress) = self.steps.get_mut(step)
        {
            change(progress);
        }
    }

    /// A change to the questions of `attempt`, while it waits for their answers.
    fn reply(&mut self, step: &StepId, attempt: u32, change: impl FnOnce(&mut StepProgress)) {
        self.step_event(step, |p| {
            if p.attempt == attempt && matches!(p.state, StepState::AwaitingAnswers { .. }) {
                change(p);
            }
        });
    }

    /// How many failed attempts a step may have before the execution fails.
    fn max_retries(&self) -> u32 {
        self.workflow
            .configuration
            .constraints
            .max_retries
            .unwrap_or(0)
    }

    /// The agent leading the run since a risk showed, and the risk.
    fn lead(&self) -> Option<(&AgentProfile, &str)> {
        self.leads.iter().rev().find_map(|(risk, agent)| {
            let agent = self.agents.iter().find(|a| Some(a.id) == *agent)?;
            Some((agent, risk.as_str()))
        })
    }

    fn escalation_policy(&self) -> &EscalationPolicy {
        &self.workflow.configuration.escalation
    }

    fn retry_backoff(&self) -> RetryBackoff {
        self.workflow
            .configuration
            .constraints
            .retry_backoff
            .unwrap_or_default()
    }

    /// Steps that hold their place without an agent (see [`StepProgress::is_pending`]).
    fn pending(&self) -> usize {
        self.steps.values().filter(|p| p.is_pending()).count()
    }

    /// How many agents vote on `step`'s work, when a panel does: under `decisionMaking`
    /// consensus or majority, for a step that requires a review or decides (`review`,
    /// `decision`).
    fn seats(&self, step: &WorkflowStep) -> Option<u32> {
        let coordination = &self.workflow.configuration.coordination;
        step.voted_on(coordination.decision_making)
            .then(|| coordination.seats(self.agents.len()))
    }

    /// How many times a reviewer (or a panel) may send a step back.
    fn max_review_rounds(&self) -> u32 {
        self.workflow
            .configuration
            .constraints
            .max_review_rounds
            .unwrap_or(DEFAULT_REVIEW_ROUNDS)
    }

    fn load(&self) -> HashMap<AgentId, u32> {
        let mut load = HashMap::new();
        for progress in self.steps.values() {
            if let StepState::Scheduled { agent } | StepState::Running { agent } = progress.state {
                *load.entry(agent).or_insert(0) += 1;
            }
        }
        load
    }
}

/// Reviews a step may fail before it fails, when `maxReviewRounds` is absent.
const DEFAULT_REVIEW_ROUNDS: u32 = 2;

impl Draft {
    fn completed(self) -> StepState {
        StepState::Completed {
            agent: Some(self.author),
            summary: self.summary,
            output: self.output,
            full: self.full,
        }
    }
}

/// The time `minutes` (fractions allowed) after `from`, to the millisecond.
fn after_minutes(from: DateTime<Utc>, minutes: f64) -> DateTime<Utc> {
    // Validation bounds `minutes`, so the cast cannot overflow.
    #[allow(clippy::cast_possible_truncation)]
    let millis = (minutes * 60_000.0).round() as i64;
    from + chrono::TimeDelta::milliseconds(millis)
}
