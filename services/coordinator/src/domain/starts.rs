//! A workflow's execution numbers: 1, 2, 3, ... with no gap and no repeat, even with several
//! coordinators starting runs at once. The state is the last `ExecutionStarted` of the workflow;
//! an append expects it to still be the last one.

use cadre_proto::Event;
use chrono::{DateTime, Utc};

use super::Decider;
use super::execution::{Start, started};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct State {
    pub last_number: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StartExecution {
    pub start: Start,
    /// Whether the workflow is paused (its own aggregate says so).
    pub workflow_paused: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the workflow is paused; resume it before starting executions")]
pub struct WorkflowPaused;

pub struct Starts;

impl Decider for Starts {
    type State = State;
    type Command = StartExecution;
    type Error = WorkflowPaused;

    fn decide(
        command: &StartExecution,
        state: &State,
        now: DateTime<Utc>,
    ) -> Result<Vec<Event>, WorkflowPaused> {
        if command.workflow_paused {
            return Err(WorkflowPaused);
        }
        let number = state.last_number + 1;
        Ok(vec![Event::ExecutionStarted(Box::new(started(
            &command.start,
            number,
            now,
        )))])
    }

    fn evolve(state: State, event: &Event) -> State {
        match event {
            Event::ExecutionStarted(e) => State {
                last_number: e.execution_number.max(state.last_number),
            },
            _ => state,
        }
    }
}
