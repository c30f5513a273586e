//! Test fixtures shared by the worker's unit tests.

use cadre_proto::model::{AgentProfile, ModelParameters, StepType, WorkflowStep};
use cadre_proto::{AgentId, StepId};

pub(crate) fn agent() -> AgentProfile {
    AgentProfile {
        id: AgentId::new(),
        name: "Ada".to_owned(),
        role: "software architect".to_owned(),
        backstory: "Ada has designed distributed systems for twenty years.".to_owned(),
        skills: vec!["architecture".to_owned()],
        provider: "offline".to_owned(),
        model: "none".to_owned(),
        model_parameters: ModelParameters::default(),
        fallback: None,
    }
}

pub(crate) fn step() -> WorkflowStep {
    WorkflowStep {
        id: StepId::parse("design").unwrap(),
        name: "Design the API".to_owned(),
        description: "Design the public HTTP API.".to_owned(),
        step_type: StepType::Analysis,
        assigned_agent_role: None,
        preferred_agent_id: None,
        required_skills: vec!["architecture".to_owned(), "http".to_owned()],
        depends_on: vec![StepId::parse("research").unwrap()],
        can_run_in_parallel: true,
        instructions: "List the endpoints.".to_owned(),
        expected_output: "An endpoint table".to_owned(),
        timeout_minutes: None,
        validation_criteria: vec!["covers CRUD".to_owned()],
        review_required: false,
        reviewer_role: None,
        condition: None,
        child_workflow_id: None,
        risks: Vec::new(),
        compensation: None,
    }
}
