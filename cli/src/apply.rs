//! `cadre apply -f team.yaml`: registers the agents and creates the workflows the files
//! declare, and leaves alone what is already there.
//!
//! The API has no update: an agent or a workflow, once recorded, never changes (runs snapshot
//! them, and the log is the history). So apply matches by name:
//!
//! - nothing of that kind has the name: it is created (`created`);
//! - one that has the name is equal to the document: nothing is sent (`unchanged`);
//! - those that have the name all differ: the document is refused (`refused`, naming the
//!   fields that differ), and apply goes on with the others. To change an agent or a
//!   workflow, give the new one another name (`Reviewer v2`); a workflow that names a refused
//!   agent is refused too, rather than silently using the old one.
//!
//! Every file is read and checked before anything is sent, so a mistake in one document
//! creates nothing. Agents are applied before workflows, so a workflow may name an agent
//! declared anywhere in the files. Apply exits non-zero when any document was refused or failed.
//!
//! A workflow made from a template (`template` and `agents`) is created with
//! `POST /v1/templates/{id}/workflows`. To compare it with one already made, apply works out
//! what that request makes of the template with the coordinator's own function,
//! `WorkflowTemplate::staff` (each role becomes its agent's registered role, as README
//! "Workflow templates" says), so a changed mapping, coordinator or template revision is
//! refused like any other change.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;
use serde_json::{Value, json};

use cadre_proto::AgentId;
use cadre_proto::model::{AgentProfile, Staffing, TeamMember, WorkflowTemplate, role_key};

use crate::client::{ApiError, Client};
use crate::manifest::{self, Document, FileError, FromTemplateSpec, Spec, WorkflowBody};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Result {
    Created,
    Unchanged,
    Refused,
    Failed,
}

/// What apply did with one document.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Applied {
    pub kind: &'static str,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub result: Result,
    /// Why, when refused or failed; the API's warnings, when created.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub messages: Vec<String>,
}

impl Applied {
    pub fn line(&self) -> String {
        let mut line = format!(
            "{}/{} {}",
            self.kind,
            self.name,
            serde_json::to_value(self.result)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default()
        );
        if let Some(id) = &self.id {
            line.push_str(&format!(" ({id})"));
        }
        for message in &self.messages {
            line.push_str(&format!("\n  {message}"));
        }
        line
    }

    pub fn ok(&self) -> bool {
        matches!(self.result, Result::Created | Result::Unchanged)
    }
}

/// An agent name as apply resolves it: to an id, or to the reason it cannot be used.
enum Resolved {
    Id(AgentId),
    Refused,
}

/// Reads `files`, then applies their documents; `report` is called with each outcome as it
/// happens. Errors in the files stop it before anything is sent.
pub async fn apply(
    client: &Client,
    files: &[String],
    mut report: impl FnMut(&Applied),
) -> anyhow::Result<std::result::Result<Vec<Applied>, Vec<FileError>>> {
    let documents = match manifest::load(files) {
        Ok(documents) => documents,
        Err(errors) => return Ok(Err(errors)),
    };
    let mut applied = Vec::new();

    let existing_agents = client.list_all("/v1/agents").await?;
    let mut agents: HashMap<String, Resolved> = HashMap::new();
    // Each agent's registered role, for the workflows made from templates.
    let mut roles: HashMap<AgentId, String> = existing_agents
        .iter()
        .filter_map(|agent| {
            let id = agent["id"].as_str()?.parse().ok()?;
            Some((AgentId(id), agent["role"].as_str()?.to_owned()))
        })
        .collect();
    for document in documents.iter() {
        let Spec::Agent(spec) = &document.spec else {
            continue;
        };
        let outcome = apply_agent(client, document, &existing_agents).await?;
        let resolved = match (&outcome.id, outcome.ok()) {
            (Some(id), true) => id
                .parse()
                .map(|id| Resolved::Id(AgentId(id)))
                .unwrap_or(Resolved::Refused),
            _ => Resolved::Refused,
        };
        if let Resolved::Id(id) = resolved {
            roles.insert(id, spec.role.clone());
        }
        agents.insert(document.name().to_owned(), resolved);
        report(&outcome);
        applied.push(outcome);
    }

    let existing = Existing {
        agents: existing_agents,
        roles,
        workflows: client.list_all("/v1/workflows").await?,
        templates: if documents
            .iter()
            .any(|d| matches!(d.spec, Spec::FromTemplate(_)))
        {
            client.list_all("/v1/templates").await?
        } else {
            Vec::new()
        },
    };
    for document in documents
        .iter()
        .filter(|d| d.kind() == manifest::Kind::Workflow)
    {
        let outcome = apply_workflow(client, document, &mut agents, &existing).await?;
        report(&outcome);
        applied.push(outcome);
    }
    Ok(Ok(applied))
}

fn outcome(
    document: &Document,
    id: Option<String>,
    result: Result,
    messages: Vec<String>,
) -> Applied {
    Applied {
        kind: document.kind().as_str(),
        name: document.name().to_owned(),
        id,
        result,
        messages,
    }
}

/// The items of `list` named `name`, by id.
fn named<'a>(list: &'a [Value], name: &str) -> Vec<&'a str> {
    list.iter()
        .filter(|item| item["name"].as_str() == Some(name))
        .filter_map(|item| item["id"].as_str())
        .collect()
}

async fn apply_agent(
    client: &Client,
    document: &Document,
    existing: &[Value],
) -> anyhow::Result<Applied> {
    let Spec::Agent(spec) = &document.spec else {
        unreachable!("only agents are passed here")
    };
    let mut differences = Vec::new();
    for id in named(existing, &spec.name) {
        let agent: AgentProfile = client.get(&format!("/v1/agents/{id}")).await?;
        let differ = spec.differences(&agent);
        if differ.is_empty() {
            return Ok(outcome(
                document,
                Some(id.to_owned()),
                Result::Unchanged,
                vec![],
            ));
        }
        differences.push(format!(
            "the agent {id} has this name and differs in {}",
            differ.join(", ")
        ));
    }
    if !differences.is_empty() {
        differences.push(
            "agents cannot be changed: give the changed agent another name (and name it in \
             the workflows that should use it)"
                .to_owned(),
        );
        return Ok(refused(document, differences));
    }
    let body = serde_json::to_value(spec)?;
    match client.post::<Value>("/v1/agents", &body).await {
        Ok(created) => {
            let warnings = created["warnings"]
                .as_array()
                .map(|w| {
                    w.iter()
                        .filter_map(|w| w.as_str().map(|w| format!("warning: {w}")))
                        .collect()
                })
                .unwrap_or_default();
            Ok(outcome(
                document,
                created["id"].as_str().map(str::to_owned),
                Result::Created,
                warnings,
            ))
        }
        Err(error) => failed(document, error),
    }
}

fn refused(document: &Document, messages: Vec<String>) -> Applied {
    let place = document
        .place("")
        .map(|p| format!("{}:{}: ", document.file, p.line))
        .unwrap_or_default();
    let messages = messages
        .into_iter()
        .map(|m| format!("{place}{m}"))
        .collect();
    outcome(document, None, Result::Refused, messages)
}

/// The API refused the document: its problem, each pointer placed in the file. Anything else
/// (the API unreachable) stops apply.
fn failed(document: &Document, error: ApiError) -> anyhow::Result<Applied> {
    let Some(problem) = error.problem() else {
        return Err(error.into());
    };
    let mut messages = vec![format!(
        "{}: {} ({}): {}",
        document.file, problem.title, problem.status, problem.detail
    )];
    messages.extend(problem.errors.iter().map(|e| {
        format!(
            "{} (pointer {})",
            document.error_at(&e.pointer, &e.message),
            e.pointer
        )
    }));
    Ok(outcome(document, None, Result::Failed, messages))
}

/// What was registered when apply started, and each agent's role since.
struct Existing {
    agents: Vec<Value>,
    roles: HashMap<AgentId, String>,
    workflows: Vec<Value>,
    templates: Vec<Value>,
}

async fn apply_workflow(
    client: &Client,
    document: &Document,
    agents: &mut HashMap<String, Resolved>,
    existing: &Existing,
) -> anyhow::Result<Applied> {
    // Each agent reference: an id as written, else a name from this apply, else a registered one.
    let mut ids: HashMap<String, AgentId> = HashMap::new();
    let mut problems = Vec::new();
    for reference in document.agent_refs() {
        let name = reference.reference.as_str();
        let id = match (manifest::as_agent_id(name), agents.get(name)) {
            (Some(id), _) => Ok(id),
            (None, Some(Resolved::Id(id))) => Ok(*id),
            (None, Some(Resolved::Refused)) => Err(format!(
                "the agent '{name}' was refused or failed above; this workflow is not created \
                 with an older agent of that name"
            )),
            (None, None) => match named(&existing.agents, name).as_slice() {
                [id] => id
                    .parse()
                    .map(AgentId)
                    .map_err(|_| format!("the agent '{name}' has a malformed id {id}")),
                [] => Err(format!(
                    "no agent is named '{name}': declare it in these files or register it first"
                )),
                several => Err(format!(
                    "several agents are named '{name}' ({}): name one by its id",
                    several.join(", ")
                )),
            },
        };
        match id {
            Ok(id) => {
                ids.insert(name.to_owned(), id);
            }
            Err(message) => {
                problems.push(document.error_at(&reference.pointer, message).to_string())
            }
        }
    }
    match &document.spec {
        Spec::Workflow(spec) => {
            if !problems.is_empty() {
                return Ok(outcome(document, None, Result::Refused, problems));
            }
            let body: WorkflowBody = spec.body(|reference| ids[reference])?;
            if let Some(done) = same_name(client, document, &existing.workflows, |current| {
                Ok(body.differences(&serde_json::from_value(current)?))
            })
            .await?
            {
                return Ok(done);
            }
            match client
                .post::<Value>("/v1/workflows", &serde_json::to_value(&body)?)
                .await
            {
                Ok(created) => Ok(created_outcome(document, &created)),
                Err(error) => failed(document, error),
            }
        }
        Spec::FromTemplate(spec) => {
            let template = match named_or_id(&existing.templates, &spec.template) {
                Ok(template) => Some(template),
                Err(message) => {
                    problems.push(document.error_at("/template", message).to_string());
                    None
                }
            };
            let Some(template) = template.filter(|_| problems.is_empty()) else {
                return Ok(outcome(document, None, Result::Refused, problems));
            };
            let template_id = template["id"].as_str().unwrap_or_default();
            let mut roles = existing.roles.clone();
            for id in ids.values() {
                if !roles.contains_key(id) {
                    let agent: AgentProfile = client.get(&format!("/v1/agents/{id}")).await?;
                    roles.insert(*id, agent.role);
                }
            }
            // Unmapped or unknown roles: the API says which when the request is sent.
            if let Some(expected) = from_template(template, spec, &ids, &roles)
                && let Some(done) = same_name(client, document, &existing.workflows, |current| {
                    let mut differ = Vec::new();
                    if current["templateId"].as_str() != Some(template_id) {
                        differ.push("template");
                    }
                    differ.extend(expected.differences(&serde_json::from_value(current)?));
                    Ok(differ)
                })
                .await?
            {
                return Ok(done);
            }
            let mut body = json!({
                "name": spec.name,
                "agents": spec.agents.iter()
                    .map(|(role, reference)| (role.clone(), json!(ids[reference])))
                    .collect::<serde_json::Map<String, Value>>(),
            });
            if let Some(description) = &spec.description {
                body["description"] = json!(description);
            }
            if let Some(coordinator) = &spec.coordinator_agent_id {
                body["coordinatorAgentId"] = json!(ids[coordinator]);
            }
            match client
                .post::<Value>(&format!("/v1/templates/{template_id}/workflows"), &body)
                .await
            {
                Ok(created) => Ok(created_outcome(document, &created)),
                Err(error) => failed(document, error),
            }
        }
        Spec::Agent(_) => unreachable!("only workflows are passed here"),
    }
}

fn created_outcome(document: &Document, created: &Value) -> Applied {
    outcome(
        document,
        created["id"].as_str().map(str::to_owned),
        Result::Created,
        vec![],
    )
}

/// What to do when workflows named as the document exist: `unchanged` when one has no
/// `differences` from it, else `refused` naming them; `None` when none has the name.
async fn same_name(
    client: &Client,
    document: &Document,
    workflows: &[Value],
    differences: impl Fn(Value) -> serde_json::Result<Vec<&'static str>>,
) -> anyhow::Result<Option<Applied>> {
    let mut messages = Vec::new();
    for id in named(workflows, document.name()) {
        let current: Value = client.get(&format!("/v1/workflows/{id}")).await?;
        match differences(current) {
            Ok(differ) if differ.is_empty() => {
                return Ok(Some(outcome(
                    document,
                    Some(id.to_owned()),
                    Result::Unchanged,
                    vec![],
                )));
            }
            Ok(differ) => messages.push(format!(
                "the workflow {id} has this name and differs in {}",
                differ.join(", ")
            )),
            Err(error) => messages.push(format!(
                "the workflow {id} has this name (and reads differently: {error})"
            )),
        }
    }
    if messages.is_empty() {
        return Ok(None);
    }
    messages.push(
        "workflows cannot be changed: give the changed workflow another name (its runs \
         stay with the old one)"
            .to_owned(),
    );
    Ok(Some(refused(document, messages)))
}

/// The one item of `list` whose id or name is `reference`.
fn named_or_id<'a>(list: &'a [Value], reference: &str) -> std::result::Result<&'a Value, String> {
    let found: Vec<&Value> = list
        .iter()
        .filter(|item| item["id"].as_str() == Some(reference))
        .chain(
            list.iter()
                .filter(|item| item["name"].as_str() == Some(reference)),
        )
        .collect();
    match found.as_slice() {
        [one] => Ok(one),
        [] => Err(format!(
            "no template is named '{reference}' (`cadre get templates` lists them)"
        )),
        several => Err(format!(
            "several templates are named '{reference}': name one by its id ({})",
            several
                .iter()
                .filter_map(|t| t["id"].as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// The workflow `POST /v1/templates/{id}/workflows` makes of `template` (a template as the API
/// lists it) for `spec`: the API's own [`WorkflowTemplate::staff`], each agent with its
/// registered role in `roles`. `None` when the roles are not mapped as the template needs (the
/// API says how when the request is sent).
fn from_template(
    template: &Value,
    spec: &FromTemplateSpec,
    ids: &HashMap<String, AgentId>,
    roles: &HashMap<AgentId, String>,
) -> Option<WorkflowBody> {
    let template: WorkflowTemplate = serde_json::from_value(template.clone()).ok()?;
    let mut team = BTreeMap::new();
    for (role, reference) in &spec.agents {
        let id = *ids.get(reference)?;
        let member = TeamMember {
            id,
            role: roles.get(&id)?.clone(),
        };
        if team.insert(role_key(role), member).is_some() {
            return None;
        }
    }
    let needed: BTreeSet<String> = template
        .required_agent_roles
        .iter()
        .map(|role| role_key(role))
        .collect();
    if !team.keys().eq(&needed) {
        return None;
    }
    let coordinator = match &spec.coordinator_agent_id {
        Some(reference) => Some(*ids.get(reference)?),
        None => None,
    };
    let Staffing {
        participating_agents,
        configuration,
    } = template.staff(&team, coordinator);
    Some(WorkflowBody {
        name: spec.name.clone(),
        description: spec.description.clone().unwrap_or(template.description),
        workflow_type: template.workflow_type,
        participating_agents,
        coordinator_agent_id: coordinator,
        configuration,
    })
}
