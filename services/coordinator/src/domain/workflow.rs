//! A workflow definition and whether it takes new executions: created (the seed's `draft`,
//! then `active`), paused, resumed. Its executions are aggregates of their own.

use cadre_proto::events::{Request, WorkflowCreated, WorkflowPaused, WorkflowResumed};
use cadre_proto::model::WorkflowDefinition;
use cadre_proto::{Event, WorkflowId};
use chrono::{DateTime, Utc};

use super::Decider;

#[derive(Debug, Clone, Default, PartialEq)]
pub enum State {
    #[default]
    Unknown,
    Created {
        definition: Box<WorkflowDefinition>,
        paused: bool,
    },
}

impl State {
    pub fn definition(&self) -> Option<&WorkflowDefinition> {
        match self {
            Self::Unknown => None,
            Self::Created { definition, .. } => Some(definition),
        }
    }

    pub fn is_paused(&self) -> bool {
        matches!(self, Self::Created { paused: true, .. })
    }

    /// The seed's `WorkflowStatus` as far as the workflow itself decides it.
    pub fn status(&self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Created { paused: true, .. } => "paused",
            Self::Created { paused: false, .. } => "active",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Create a validated definition whose agents are known to exist.
    Create(Box<WorkflowDefinition>),
    Pause(Request),
    Resume(Request),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("workflow {0} already exists")]
    AlreadyExists(WorkflowId),
    #[error("no workflow has this id")]
    NotFound,
    #[error("the workflow is {status}; it cannot be {wanted}")]
    InvalidTransition {
        status: &'static str,
        wanted: &'static str,
    },
}

pub struct Workflow;

impl Decider for Workflow {
    type State = State;
    type Command = Command;
    type Error = Error;

    fn decide(command: &Command, state: &State, _now: DateTime<Utc>) -> Result<Vec<Event>, Error> {
        let (workflow_id, paused) = match (command, state) {
            (Command::Create(definition), State::Unknown) => {
                return Ok(vec![Event::WorkflowCreated(WorkflowCreated {
                    workflow: (**definition).clone(),
                })]);
            }
            (Command::Create(definition), State::Created { .. }) => {
                return Err(Error::AlreadyExists(definition.id));
            }
            (_, State::Unknown) => return Err(Error::NotFound),
            (_, State::Created { definition, paused }) => (definition.id, *paused),
        };
        match command {
            Command::Pause(request) if !paused => Ok(vec![Event::WorkflowPaused(WorkflowPaused {
                workflow_id,
                request: request.clone(),
            })]),
            Command::Resume(request) if paused => {
                Ok(vec![Event::WorkflowResumed(WorkflowResumed {
                    workflow_id,
                    request: request.clone(),
                })])
            }
            _ => Err(Error::InvalidTransition {
                status: state.status(),
                wanted: match command {
                    Command::Pause(_) => "paused",
                    _ => "resumed",
                },
            }),
        }
    }

    fn evolve(state: State, event: &Event) -> State {
        match (state, event) {
            (State::Unknown, Event::WorkflowCreated(e)) => State::Created {
                definition: Box::new(e.workflow.clone()),
                paused: false,
            },
            (State::Created { definition, .. }, Event::WorkflowPaused(_)) => State::Created {
                definition,
                paused: true,
            },
            (State::Created { definition, .. }, Event::WorkflowResumed(_)) => State::Created {
                definition,
                paused: false,
            },
            (state, _) => state,
        }
    }
}
