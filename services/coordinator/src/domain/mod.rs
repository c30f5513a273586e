//! The coordinator's pure core: no clock, no I/O, no randomness. Everything here is a function
//! of its arguments (the time comes in as one), so it is tested as given events, when a
//! command, then events.
//!
//! Each aggregate is a [`Decider`]: [`agent`], [`workflow`], [`starts`] (a workflow's execution
//! numbers), [`execution`] (one run, with the effects its events call for) and [`template`] (a
//! reusable workflow whose steps name roles). [`alerts`] watches how agents' attempts end and
//! decides the alerts on their [`performance`].

pub mod agent;
pub mod alerts;
pub mod assignment;
pub mod condition;
pub mod execution;
pub mod performance;
pub mod starts;
pub mod template;
pub mod validation;
pub mod workflow;

use cadre_proto::events::ParentStep;
use cadre_proto::timers::{Timer, When};
use cadre_proto::{Event, ExecutionId, StepId, WorkflowId};
use chrono::{DateTime, Utc};

/// What the world outside the log must do because an event is stored: the deciders' effects,
/// as data, performed by the coordinator when it reads the event back (see
/// [`execution::effects`] and [`workflow::effects`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Hand the stored `StepScheduled` to the agent workers that offer its agent's LLM
    /// `provider`.
    Dispatch { provider: String },
    /// Arm a durable timer.
    StartTimer { timer: Timer, when: When },
    /// Disarm a timer that has nothing left to guard.
    CancelTimer(Timer),
    /// Stop the LLM calls still running for the execution (`step: None`: all of them) or for
    /// one attempt of one step.
    StopCalls {
        execution_id: ExecutionId,
        step: Option<(StepId, u32)>,
    },
    /// Record that a run of `upstream` completing starts a run of `downstream`.
    Link {
        upstream: WorkflowId,
        downstream: WorkflowId,
    },
    /// Start a run of every workflow linked after `upstream`, for its run `execution_id`.
    StartDependants {
        upstream: WorkflowId,
        execution_id: ExecutionId,
    },
    /// Start a run of `workflow_id` as the child of `parent`, with the parent's input.
    StartChild {
        workflow_id: WorkflowId,
        parent: ParentStep,
        input: Option<serde_json::Value>,
    },
    /// Tell the parent step how its child run ended (a `StepCompleted` or `StepFailed` of it).
    ReportToParent {
        parent: ParentStep,
        outcome: ChildOutcome,
    },
}

/// How a child run ended, as its parent step records it.
#[derive(Debug, Clone, PartialEq)]
pub enum ChildOutcome {
    Completed {
        summary: String,
        final_output: serde_json::Value,
        /// How long the child ran, in milliseconds, when its start time is known.
        duration_ms: Option<u64>,
    },
    Failed {
        error: String,
    },
}

/// An aggregate's rules: what its events make of its state, and which events a command
/// produces from a state. Both are pure; `crate::command` loads, decides and appends.
pub trait Decider {
    type State: Default + Send;
    type Command: Sync;
    /// The domain's "no": a 4xx for the API, never a reason to retry.
    type Error: std::error::Error + Send + Sync + 'static;

    fn decide(
        command: &Self::Command,
        state: &Self::State,
        now: DateTime<Utc>,
    ) -> Result<Vec<Event>, Self::Error>;

    fn evolve(state: Self::State, event: &Event) -> Self::State;
}
