//! An agent: registered once, then immutable (a workflow's executions snapshot it).

use cadre_proto::events::AgentRegistered;
use cadre_proto::model::AgentProfile;
use cadre_proto::{AgentId, Event};
use chrono::{DateTime, Utc};

use super::Decider;

#[derive(Debug, Clone, Default, PartialEq)]
pub enum State {
    #[default]
    Unknown,
    Registered(Box<AgentProfile>),
}

impl State {
    pub fn profile(self) -> Option<AgentProfile> {
        match self {
            Self::Unknown => None,
            Self::Registered(profile) => Some(*profile),
        }
    }
}

/// Register a validated profile under its (fresh) id.
#[derive(Debug, Clone, PartialEq)]
pub struct Register(pub AgentProfile);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("agent {0} is already registered")]
pub struct AlreadyRegistered(pub AgentId);

pub struct Agent;

impl Decider for Agent {
    type State = State;
    type Command = Register;
    type Error = AlreadyRegistered;

    fn decide(
        Register(profile): &Register,
        state: &State,
        _now: DateTime<Utc>,
    ) -> Result<Vec<Event>, AlreadyRegistered> {
        match state {
            State::Unknown => Ok(vec![Event::AgentRegistered(AgentRegistered {
                agent: profile.clone(),
            })]),
            State::Registered(_) => Err(AlreadyRegistered(profile.id)),
        }
    }

    fn evolve(state: State, event: &Event) -> State {
        match event {
            Event::AgentRegistered(e) => State::Registered(Box::new(e.agent.clone())),
            _ => state,
        }
    }
}
