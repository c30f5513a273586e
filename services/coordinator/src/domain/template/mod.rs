//! Workflow templates (the seed's `workflow_templates`): reusable workflows whose steps name
//! the roles of a team rather than agents. A template is an aggregate of its own, registered
//! once (a system template again only with a higher revision). A workflow is created from it
//! by mapping each role it needs to an agent ([`instantiate`]); from then on it is an ordinary
//! workflow, validated and recorded like one written out whole.
//!
//! [`system`] holds seed 002's three team workflows, which the coordinator registers at start.

pub mod system;

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, Utc};
use serde::Deserialize;
use uuid::Uuid;

use cadre_proto::events::TemplateRegistered;
use cadre_proto::model::{
    AgentProfile, EscalationRung, Staffing, TeamMember, TemplateCategory, WorkflowConfiguration,
    WorkflowDefinition, WorkflowTemplate, WorkflowType, role_key,
};
use cadre_proto::{AgentId, Event, TemplateId, WorkflowId};

use super::Decider;
use super::validation::{self, FieldError, error, limits, validate_workflow};

#[derive(Debug, Clone, Default, PartialEq)]
pub enum State {
    #[default]
    Unknown,
    Registered(Box<WorkflowTemplate>),
}

impl State {
    pub fn template(&self) -> Option<&WorkflowTemplate> {
        match self {
            Self::Unknown => None,
            Self::Registered(template) => Some(template),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Register a validated template (see [`TemplateDraft::validate`]).
    Register(Box<WorkflowTemplate>),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("template {0} already exists")]
    AlreadyExists(TemplateId),
}

pub struct Template;

impl Decider for Template {
    type State = State;
    type Command = Command;
    type Error = Error;

    fn decide(command: &Command, state: &State, _now: DateTime<Utc>) -> Result<Vec<Event>, Error> {
        let Command::Register(template) = command;
        let registered = || {
            vec![Event::TemplateRegistered(Box::new(TemplateRegistered {
                template: (**template).clone(),
            }))]
        };
        match state {
            State::Unknown => Ok(registered()),
            // Every coordinator start registers the system templates again: only a newer
            // revision changes one, so an older build still running during a rolling update
            // cannot take a change back, and a restart records nothing.
            State::Registered(current)
                if current.is_system_template && template.is_system_template =>
            {
                Ok(if template.revision > current.revision {
                    registered()
                } else {
                    Vec::new()
                })
            }
            State::Registered(_) => Err(Error::AlreadyExists(template.id)),
        }
    }

    fn evolve(state: State, event: &Event) -> State {
        match event {
            Event::TemplateRegistered(e) => State::Registered(Box::new(e.template.clone())),
            _ => state,
        }
    }
}

/// A template as a person writes it: the body of `POST /v1/templates`, and the form of the
/// system templates' JSON files. Its id, whether it is a system template and its revision are
/// not the writer's to choose ([`TemplateDraft::into_template`]).
#[derive(Debug, Clone, PartialEq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TemplateDraft {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub category: TemplateCategory,
    #[serde(default)]
    pub workflow_type: WorkflowType,
    /// The configuration of the workflows created from it, as in `POST /v1/workflows`, with
    /// roles where a workflow would name agents.
    pub template_definition: WorkflowConfiguration,
    /// Roles the team needs besides those the configuration names (a role no step names
    /// still brings its agent into every workflow created from the template).
    #[serde(default)]
    pub required_agent_roles: Vec<String>,
    /// How many agents the team should have; the number of roles when absent.
    #[serde(default)]
    pub recommended_agent_count: Option<u32>,
    #[serde(default)]
    pub created_by: Option<String>,
}

/// `value` as one token of an RFC 6901 JSON pointer (`/` and `~` escaped).
pub fn pointer_token(value: &str) -> String {
    value.replace('~', "~0").replace('/', "~1")
}

/// The roles `configuration` names, each once (compared as assignment compares them), in the
/// order first named: the steps' `assignedAgentRole` and `reviewerRole`, then the lead rules'
/// `role`.
pub fn named_roles(configuration: &WorkflowConfiguration) -> Vec<String> {
    let steps = configuration.steps.iter().flat_map(|step| {
        [&step.assigned_agent_role, &step.reviewer_role]
            .into_iter()
            .flatten()
    });
    let leads = configuration.escalation.leads.iter().map(|lead| &lead.role);
    distinct_roles(steps.chain(leads))
}

/// `roles` trimmed, empty ones dropped, each once (the first spelling kept).
fn distinct_roles<'a>(roles: impl Iterator<Item = &'a String>) -> Vec<String> {
    let mut seen = HashSet::new();
    roles
        .map(|role| role.trim())
        .filter(|role| !role.is_empty() && seen.insert(role_key(role)))
        .map(str::to_owned)
        .collect()
}

/// A stand-in agent, for checking a template as a workflow: a template has roles, not agents.
const STAND_IN: AgentId = AgentId(Uuid::nil());

impl TemplateDraft {
    /// Every reason the draft cannot be registered, each at the JSON pointer of its field. The
    /// configuration must be a valid workflow (checked with [`validate_workflow`], pointers
    /// under `/templateDefinition`), and must name roles, not particular agents or workflows.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        let mut configuration = self.template_definition.clone();
        for (i, step) in configuration.steps.iter_mut().enumerate() {
            let at = format!("/templateDefinition/steps/{i}");
            if step.preferred_agent_id.take().is_some() {
                errors.push(error(
                    format!("{at}/preferredAgentId"),
                    "a template names roles, not agents: use assignedAgentRole, which is mapped \
                     to an agent when a workflow is created from the template",
                ));
            }
            if step.child_workflow_id.take().is_some() {
                errors.push(error(
                    format!("{at}/childWorkflowId"),
                    "a template cannot name a particular workflow yet; create a workflow that \
                     runs a child with POST /v1/workflows",
                ));
            }
        }
        if !configuration.triggers.after_workflows.is_empty() {
            configuration.triggers.after_workflows.clear();
            errors.push(error(
                "/templateDefinition/triggers/afterWorkflows",
                "a template cannot name a particular workflow yet; create a workflow that starts \
                 after others with POST /v1/workflows",
            ));
        }
        let needs_coordinator = needs_coordinator(&configuration);
        let workflow = WorkflowDefinition {
            id: WorkflowId(Uuid::nil()),
            name: self.name.clone(),
            description: self.description.clone(),
            workflow_type: self.workflow_type,
            participating_agents: vec![STAND_IN],
            coordinator_agent_id: needs_coordinator.then_some(STAND_IN),
            configuration,
        };
        errors.extend(
            validate_workflow(&workflow)
                .into_iter()
                .map(|found| FieldError {
                    pointer: match found.pointer.strip_prefix("/configuration") {
                        Some(rest) => format!("/templateDefinition{rest}"),
                        None => found.pointer,
                    },
                    message: found.message,
                }),
        );

        validation::require_texts(
            &mut errors,
            "/requiredAgentRoles",
            &self.required_agent_roles,
            limits::PARTICIPATING_AGENTS,
            limits::NAME,
        );
        let mut seen = HashSet::new();
        for (i, role) in self.required_agent_roles.iter().enumerate() {
            if !role.trim().is_empty() && !seen.insert(role_key(role)) {
                errors.push(error(
                    format!("/requiredAgentRoles/{i}"),
                    format!("role '{role}' is listed twice (roles are compared without case)"),
                ));
            }
        }
        let roles = self.roles().len();
        if roles == 0 {
            errors.push(error(
                "/requiredAgentRoles",
                "a template needs at least one role, to map to an agent: give a step an \
                 assignedAgentRole, or list the role here",
            ));
        } else if roles > limits::PARTICIPATING_AGENTS {
            errors.push(error(
                "/requiredAgentRoles",
                format!(
                    "a template may need at most {} roles (it needs {roles}, counting those its \
                     steps and lead rules name)",
                    limits::PARTICIPATING_AGENTS
                ),
            ));
        }
        if let Some(count) = self.recommended_agent_count
            && !(1..=limits::PARTICIPATING_AGENTS).contains(&(count as usize))
        {
            errors.push(error(
                "/recommendedAgentCount",
                format!("must be from 1 to {}", limits::PARTICIPATING_AGENTS),
            ));
        }
        if let Some(by) = &self.created_by {
            validation::limit_text(&mut errors, "/createdBy", by, limits::NAME);
        }
        errors
    }

    /// The roles the team needs: those listed, then those the configuration names.
    fn roles(&self) -> Vec<String> {
        let named = named_roles(&self.template_definition);
        distinct_roles(self.required_agent_roles.iter().chain(&named))
    }

    /// The template this draft registers as.
    pub fn into_template(
        self,
        id: TemplateId,
        is_system_template: bool,
        revision: u32,
    ) -> WorkflowTemplate {
        let required_agent_roles = self.roles();
        let recommended_agent_count = self
            .recommended_agent_count
            .unwrap_or_else(|| u32::try_from(required_agent_roles.len()).unwrap_or(u32::MAX))
            .max(1);
        WorkflowTemplate {
            id,
            name: self.name,
            description: self.description,
            category: self.category,
            workflow_type: self.workflow_type,
            template_definition: self.template_definition,
            required_agent_roles,
            recommended_agent_count,
            is_system_template,
            created_by: self.created_by,
            revision,
        }
    }
}

/// A workflow to create from a template: the body of `POST /v1/templates/{id}/workflows`,
/// with the agents it maps looked up.
#[derive(Debug, Clone)]
pub struct Instantiation {
    pub workflow_id: WorkflowId,
    /// The workflow's name; the template's when absent.
    pub name: Option<String>,
    pub description: Option<String>,
    /// Each role as the request spells it, and the registered agent it maps to.
    pub agents: BTreeMap<String, AgentProfile>,
    pub coordinator_agent_id: Option<AgentId>,
}

/// Where the request maps `role`: `/agents/<role>`.
pub fn agent_pointer(role: &str) -> String {
    format!("/agents/{}", pointer_token(role))
}

/// The workflow `request` makes of `template`, to be validated and recorded like any other.
///
/// Every role the template needs must be mapped to an agent, and only those, and a template
/// that hands work to the coordinator needs one named. The participants and configuration are
/// then [`WorkflowTemplate::staff`]'s. Errors point into the request: `/agents/<role>`,
/// `/coordinatorAgentId`.
pub fn instantiate(
    template: &WorkflowTemplate,
    request: Instantiation,
) -> Result<WorkflowDefinition, Vec<FieldError>> {
    let mut errors = Vec::new();
    let needed: HashSet<String> = template
        .required_agent_roles
        .iter()
        .map(|r| role_key(r))
        .collect();
    let mut mapped: BTreeMap<String, TeamMember> = BTreeMap::new();
    for (role, agent) in &request.agents {
        if !needed.contains(&role_key(role)) {
            errors.push(error(
                agent_pointer(role),
                format!(
                    "the template has no role '{role}'; its roles are {}",
                    template.required_agent_roles.join(", ")
                ),
            ));
        } else if mapped.insert(role_key(role), agent.into()).is_some() {
            errors.push(error(
                agent_pointer(role),
                format!("role '{role}' is mapped twice (roles are compared without case)"),
            ));
        }
    }
    for role in &template.required_agent_roles {
        if !mapped.contains_key(&role_key(role)) {
            errors.push(error(
                agent_pointer(role),
                format!(
                    "the template needs an agent for the role '{role}': map it to one, as \
                     \"agents\": {{\"{role}\": \"<agent id>\"}}"
                ),
            ));
        }
    }
    if request.coordinator_agent_id.is_none() && needs_coordinator(&template.template_definition) {
        errors.push(error(
            "/coordinatorAgentId",
            "the template hands work to the coordinator agent (its escalation ladder's \
             coordinator rung, or re-planning a failing run): name the coordinator agent",
        ));
    }
    if !errors.is_empty() {
        return Err(errors);
    }

    let Staffing {
        participating_agents,
        configuration,
    } = template.staff(&mapped, request.coordinator_agent_id);
    Ok(WorkflowDefinition {
        id: request.workflow_id,
        name: request.name.unwrap_or_else(|| template.name.clone()),
        description: request
            .description
            .unwrap_or_else(|| template.description.clone()),
        workflow_type: template.workflow_type,
        participating_agents,
        coordinator_agent_id: request.coordinator_agent_id,
        configuration,
    })
}

/// Whether a template's configuration hands work to the workflow's coordinator agent: the
/// escalation ladder's `coordinator` rung, or re-planning a failing run.
fn needs_coordinator(configuration: &WorkflowConfiguration) -> bool {
    configuration.saga.replan
        || configuration
            .escalation
            .ladder
            .contains(&EscalationRung::Coordinator)
}

#[cfg(test)]
mod tests;
