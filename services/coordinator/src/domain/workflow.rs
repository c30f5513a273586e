//! A workflow definition and whether it takes new executions: created (the seed's `draft`,
//! then `active`), paused, resumed. Its executions are aggregates of their own.

use cadre_proto::events::{Request, WorkflowCreated, WorkflowPaused, WorkflowResumed};
use cadre_proto::model::WorkflowDefinition;
use cadre_proto::{Event, TemplateId, WorkflowId};
use chrono::{DateTime, Utc};

use cadre_proto::timers::{Timer, When};

use super::{Decider, Effect};

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
    /// Create a validated definition whose agents are known to exist, made from the template
    /// `template_id` if any.
    Create {
        definition: Box<WorkflowDefinition>,
        template_id: Option<TemplateId>,
    },
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
            (
                Command::Create {
                    definition,
                    template_id,
                },
                State::Unknown,
            ) => {
                return Ok(vec![Event::WorkflowCreated(WorkflowCreated {
                    workflow: (**definition).clone(),
                    template_id: *template_id,
                })]);
            }
            (Command::Create { definition, .. }, State::Created { .. }) => {
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

/// What a workflow's stored lifecycle event calls for, given the workflow's state (which may
/// already hold later events): its schedule armed while it is active and disarmed while it is
/// paused, and, once created, its links after the workflows that trigger it. Level-triggered:
/// the same effects whichever lifecycle event is read, so order and repeats do not matter.
pub fn effects(state: &State, event: &Event) -> Vec<Effect> {
    let State::Created { definition, paused } = state else {
        return vec![];
    };
    let triggers = &definition.configuration.triggers;
    let mut effects = Vec::new();
    if let Some(schedule) = &triggers.schedule {
        let timer = Timer::Schedule {
            workflow_id: definition.id,
        };
        effects.push(if *paused {
            Effect::CancelTimer(timer)
        } else {
            Effect::StartTimer {
                timer,
                when: When::Cron(schedule.clone()),
            }
        });
    }
    if let Event::WorkflowCreated(_) = event {
        effects.extend(
            triggers
                .after_workflows
                .iter()
                .map(|upstream| Effect::Link {
                    upstream: *upstream,
                    downstream: definition.id,
                }),
        );
    }
    effects
}

#[cfg(test)]
mod tests {
    use cadre_proto::model::{Triggers, WorkflowConfiguration};

    use super::*;

    fn created(triggers: Triggers) -> (State, Event) {
        let definition = WorkflowDefinition {
            id: WorkflowId::new(),
            name: "Nightly".into(),
            description: String::new(),
            workflow_type: Default::default(),
            participating_agents: vec![],
            coordinator_agent_id: None,
            configuration: WorkflowConfiguration {
                steps: vec![],
                phases: vec![],
                coordination: Default::default(),
                constraints: Default::default(),
                triggers,
                escalation: Default::default(),
                saga: Default::default(),
            },
        };
        let event = Event::WorkflowCreated(WorkflowCreated {
            workflow: definition,
            template_id: None,
        });
        (Workflow::evolve(State::Unknown, &event), event)
    }

    #[test]
    fn a_schedule_is_armed_while_active_and_disarmed_while_paused() {
        let upstream = WorkflowId::new();
        let (state, event) = created(Triggers {
            schedule: Some("@hourly".into()),
            events: false,
            after_workflows: vec![upstream],
        });
        let id = state.definition().unwrap().id;
        let timer = Timer::Schedule { workflow_id: id };
        assert_eq!(
            effects(&state, &event),
            vec![
                Effect::StartTimer {
                    timer: timer.clone(),
                    when: When::Cron("@hourly".into())
                },
                Effect::Link {
                    upstream,
                    downstream: id
                }
            ]
        );
        let now = chrono::Utc::now();
        let paused = Workflow::decide(&Command::Pause(Request::default()), &state, now).unwrap();
        let state = Workflow::evolve(state, &paused[0]);
        assert_eq!(
            effects(&state, &paused[0]),
            vec![Effect::CancelTimer(timer.clone())]
        );
        // Read late, the creation follows the state: no schedule armed for a paused workflow.
        assert_eq!(effects(&state, &event)[0], Effect::CancelTimer(timer));
        let (plain, event) = created(Triggers::default());
        assert!(effects(&plain, &event).is_empty());
    }
}
