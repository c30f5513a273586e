//! Workflows with their templates and status, one workflow (its steps, runs, knowledge and
//! usage), and the builder.

use std::collections::HashMap;

use axum::extract::{Path, State};
use maud::html;
use uuid::Uuid;

use super::dag::Graph;
use super::{
    Live, PageError, PageResult, agent_link, agent_names, layout, parse_uuid, status, time,
    usage_table,
};
use crate::api::AppState;
use crate::read::{self, Page, UsageGroup, UsageScope};

/// As much of a list as a page of the console shows (it does not page them).
const ALL: i64 = 1000;

/// `GET /console`: every workflow and template; reloads as runs start and end.
pub(super) async fn list(State(app): State<AppState>) -> PageResult {
    let workflows = read::workflows(&app.db, &app.tenant, &[], Page::first(ALL)).await?;
    let templates = read::templates(&app.db, &app.tenant, Page::first(ALL)).await?;
    let template_names: HashMap<Uuid, &str> =
        templates.iter().map(|t| (t.id, t.name.as_str())).collect();
    let content = html! {
        h1 { "Workflows" }
        p { a.button href="/console/builder" { "Build a workflow" } }
        @if workflows.is_empty() {
            p.empty { "No workflow yet." }
        } @else {
            table #workflows {
                thead { tr { th scope="col" { "Name" } th scope="col" { "Type" } th scope="col" { "Status" }
                    th scope="col" { "Steps" } th scope="col" { "Runs" } th scope="col" { "Template" }
                    th scope="col" { "Created" } } }
                tbody {
                    @for w in &workflows {
                        tr data-workflow=(w.id) {
                            td { a href={ "/console/workflows/" (w.id) } { (w.name) } }
                            td { (w.workflow_type) }
                            td { (status(&w.status)) }
                            td { (w.total_steps) }
                            td { (w.execution_count) }
                            td { (w.template_id.and_then(|t| template_names.get(&t).copied()).unwrap_or("—")) }
                            td { (time(Some(w.created_at))) }
                        }
                    }
                }
            }
        }
        h2 { "Templates" }
        table #templates {
            thead { tr { th scope="col" { "Name" } th scope="col" { "Category" } th scope="col" { "Roles" }
                th scope="col" { "Workflows" } th scope="col" { "Runs" } th scope="col" { "Success rate" }
                th scope="col" { "Kind" } th scope="col" { "" } } }
            tbody {
                @for t in &templates {
                    tr data-template=(t.id) {
                        td { a href={ "/console/templates/" (t.id) } { strong { (t.name) } } br; small { (t.description) } }
                        td { (t.category) }
                        td { (joined(&t.required_agent_roles)) }
                        td { (t.workflow_count) }
                        td { (t.usage_count) }
                        td { @if t.ended_runs > 0 { (format!("{:.0} %", t.success_rate)) } @else { "—" } }
                        td { @if t.is_system_template { "system" } @else { "user" } }
                        td { a href={ "/console/templates/" (t.id) "#from-template" } { "Create a workflow" } }
                    }
                }
            }
        }
    };
    Ok(layout(
        "Workflows",
        Live::Reload {
            feed: "/v1/events".to_owned(),
            prefixes: "dev.cadre.workflow.created dev.cadre.workflow.paused \
                       dev.cadre.workflow.resumed dev.cadre.template dev.cadre.execution.started \
                       dev.cadre.execution.completed dev.cadre.execution.failed \
                       dev.cadre.execution.cancelled",
        },
        content,
    ))
}

/// The strings of a JSON array, comma separated.
pub(super) fn joined(value: &serde_json::Value) -> String {
    value
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|r| r.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

/// `GET /console/workflows/{id}`: its steps as a graph, its runs (a button starts one), its
/// knowledge with provenance, and its token use.
pub(super) async fn detail(State(app): State<AppState>, Path(raw): Path<String>) -> PageResult {
    let id = parse_uuid(&raw, "workflow")?;
    let Some(workflow) = read::workflow(&app.db, &app.tenant, id).await? else {
        return Err(PageError::NotFound(format!("There is no workflow {id}.")));
    };
    let runs = read::executions(
        &app.db,
        &app.tenant,
        id,
        &read::ExecutionFilter::default(),
        Page::first(20),
    )
    .await?;
    let knowledge = read::knowledge(&app.db, &app.tenant, id, Page::first(ALL)).await?;
    let (usage, by) = read::usage(
        &app.db,
        &app.tenant,
        UsageScope::Workflow(id),
        &[UsageGroup::Agent, UsageGroup::Model],
    )
    .await?;
    let names = agent_names(&app).await?;
    let handles: HashMap<Uuid, &str> = knowledge
        .iter()
        .map(|k| (k.id, k.handle.as_str()))
        .collect();
    let graph = Graph::of(&workflow.configuration);
    let steps = workflow.configuration["steps"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let phases = workflow.configuration["phases"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let participants: Vec<Uuid> =
        serde_json::from_value(workflow.participating_agents.clone()).unwrap_or_default();
    let template = match workflow.template_id {
        Some(t) => read::template(&app.db, &app.tenant, t).await?,
        None => None,
    };
    let paused = workflow.status == "paused";
    let content = html! {
        h1 { (workflow.name) " " span #workflow-status { (status(&workflow.status)) } }
        p { (workflow.description) }
        // The workflow decider pauses one that is not paused and resumes one that is; the page
        // reloads (with its button) when the log records either.
        div #workflow-actions.actions data-workflow=(id) {
            @if paused {
                button type="button" data-workflow-action="resume" { "Resume workflow" }
                span.meta { "Paused: it starts no new run until resumed; runs under way go on." }
            } @else {
                button type="button" data-workflow-action="pause" { "Pause workflow" }
                span.meta { "A paused workflow starts no new run; runs under way go on." }
            }
            p.error role="alert" {}
        }
        dl.facts {
            @if let Some(t) = &template {
                dt { "Template" } dd { a href={ "/console/templates/" (t.id) } { (t.name) } }
            }
            dt { "Type" } dd { (workflow.workflow_type) }
            dt { "Runs" } dd { (workflow.execution_count) }
            dt { "Participants" } dd { @for (i, a) in participants.iter().enumerate() { @if i > 0 { ", " } (agent_link(&names, Some(*a))) } }
            dt { "Coordinator" } dd { (agent_link(&names, workflow.coordinator_agent_id)) }
        }
        section aria-labelledby="start-title" {
            h2 #start-title { "Start a run" }
            form #start-run data-workflow=(id) {
                label for="run-input" { "Input (JSON object, optional)" }
                textarea #run-input name="input" rows="2" placeholder="{\"severity\": \"low\"}" {}
                button type="submit" { "Start run" }
                p.error role="alert" {}
            }
        }
        h2 { "Steps" }
        (graph.svg(|_| "pending".to_owned()))
        table #steps {
            thead { tr { th scope="col" { "Id" } th scope="col" { "Name" } th scope="col" { "Type" }
                th scope="col" { "Depends on" } th scope="col" { "Agent" } } }
            tbody {
                @for s in &steps {
                    tr {
                        td { code { (s["id"].as_str().unwrap_or_default()) } }
                        td { (s["name"].as_str().unwrap_or_default()) }
                        td { (s["type"].as_str().unwrap_or_default()) }
                        td { (joined(&s["dependsOn"])) }
                        td {
                            @if let Some(agent) = s["preferredAgentId"].as_str().and_then(|a| a.parse().ok()) {
                                (agent_link(&names, Some(agent)))
                            } @else if let Some(role) = s["assignedAgentRole"].as_str() {
                                "a " (role)
                            } @else { "assigned when it runs" }
                        }
                    }
                }
            }
        }
        @if !phases.is_empty() {
            h3 { "Phases" }
            ol.phases {
                @for p in &phases {
                    li { strong { (p["name"].as_str().unwrap_or_default()) } " (" (p["mode"].as_str().unwrap_or("parallel")) "): " (joined(&p["steps"])) }
                }
            }
        }
        h2 { "Runs" }
        @if runs.is_empty() { p.empty { "No run yet." } } @else {
            table #runs {
                thead { tr { th scope="col" { "Run" } th scope="col" { "Status" } th scope="col" { "Trigger" }
                    th scope="col" { "Started" } th scope="col" { "Ended" } th scope="col" { "Seconds" } } }
                tbody {
                    @for r in &runs {
                        tr {
                            td { a href={ "/console/executions/" (r.id) } { "#" (r.execution_number) } }
                            td { (status(&r.status)) }
                            td { (r.trigger_reason) }
                            td { (time(Some(r.started_at))) }
                            td { (time(r.completed_at)) }
                            td { (r.actual_duration.map_or("—".to_owned(), |d| d.to_string())) }
                        }
                    }
                }
            }
            p { a href={ "/console/history?workflowId=" (id) } { "All runs" } }
        }
        h2 { "Team knowledge" }
        @if knowledge.is_empty() { p.empty { "Nothing shared yet." } } @else {
            table #knowledge {
                thead { tr { th scope="col" { "Handle" } th scope="col" { "Knowledge" } th scope="col" { "Kind" }
                    th scope="col" { "Shared by" } th scope="col" { "From" } th scope="col" { "Validated by" }
                    th scope="col" { "Used" } th scope="col" { "State" } } }
                tbody {
                    @for k in &knowledge {
                        tr class=@if k.is_active { "active" } @else { "superseded" } {
                            td { code { (k.handle) } }
                            td { strong { (k.title) } br; small { (k.content) } }
                            td { (k.knowledge_type) }
                            td { (agent_link(&names, Some(k.created_by_agent_id))) }
                            td { a href={ "/console/executions/" (k.execution_id) } { "step " code { (k.step_id) } } }
                            td {
                                @let validators: Vec<Uuid> = serde_json::from_value(k.validated_by_agents.clone()).unwrap_or_default();
                                @if validators.is_empty() { "—" }
                                @for (i, v) in validators.iter().enumerate() { @if i > 0 { ", " } (agent_link(&names, Some(*v))) }
                            }
                            td { (k.usage_count) }
                            td {
                                @match k.superseded_by {
                                    Some(by) => { "superseded by " code { (handles.get(&by).copied().unwrap_or("a later item")) } }
                                    None => @if k.is_active { "active" } @else { "inactive" },
                                }
                            }
                        }
                    }
                }
            }
        }
        h2 { "Token use and cost" }
        (usage_table("By agent", &usage, &by[0], |key| agent_link(&names, key.parse().ok())))
        (usage_table("By model", &usage, &by[1], |key| html! { (key) }))
    };
    Ok(layout(
        &workflow.name,
        Live::Reload {
            feed: format!("/v1/events?workflowId={id}"),
            // A step's completion carries the knowledge its agent shared.
            prefixes: "dev.cadre.workflow dev.cadre.execution.started \
                       dev.cadre.execution.step_completed dev.cadre.execution.completed \
                       dev.cadre.execution.failed dev.cadre.execution.cancelled",
        },
        content,
    ))
}

/// `GET /console/builder`: a form for `POST /v1/workflows`; the script sends it as JSON and
/// shows each problem next to the field its JSON pointer names.
pub(super) async fn builder(State(app): State<AppState>) -> PageResult {
    let agents = read::agents(&app.db, &app.tenant, Page::first(ALL)).await?;
    let options: Vec<(Uuid, String)> = agents
        .iter()
        .map(|a| (a.id, format!("{} ({})", a.name, a.role)))
        .collect();
    let content = html! {
        h1 { "Build a workflow" }
        @if agents.is_empty() {
            p.empty { "Register agents first (" code { "POST /v1/agents" } "): a workflow needs participants." }
        }
        form #builder novalidate {
            p.error.form-error role="alert" data-pointer="" {}
            fieldset {
                legend { "Workflow" }
                label for="wf-name" { "Name" }
                input #wf-name name="name" data-pointer="/name" required;
                label for="wf-description" { "Description" }
                textarea #wf-description name="description" rows="2" data-pointer="/description" {}
                label for="wf-type" { "Type" }
                select #wf-type name="workflowType" data-pointer="/workflowType" {
                    @for t in ["pipeline", "parallel", "conditional", "recursive"] { option value=(t) { (t) } }
                }
                fieldset #wf-agents data-pointer="/participatingAgents" {
                    legend { "Participating agents" }
                    @for (id, label) in &options {
                        label.check { input type="checkbox" name="agent" value=(id); " " (label) }
                    }
                }
                label for="wf-coordinator" { "Coordinator agent (optional)" }
                select #wf-coordinator name="coordinatorAgentId" data-pointer="/coordinatorAgentId" {
                    option value="" { "none" }
                    @for (id, label) in &options { option value=(id) { (label) } }
                }
            }
            fieldset {
                legend { "Steps" }
                div #steps {}
                button #add-step type="button" { "Add a step" }
            }
            fieldset {
                legend { "Phases (optional)" }
                div #phases {}
                button #add-phase type="button" { "Add a phase" }
            }
            p { button #create type="submit" { "Create workflow" } }
        }
        template #step-template {
            fieldset.step {
                legend { "Step " span.n {} }
                div.grid {
                    label { "Id" input name="id" data-field="id" required; }
                    label { "Name" input name="name" data-field="name" required; }
                    label { "Type" select name="type" data-field="type" {
                        @for t in ["analysis", "implementation", "review", "testing", "documentation", "coordination", "decision", "approval"] {
                            option value=(t) { (t) }
                        }
                    } }
                    label { "Depends on (step ids, comma separated)" input name="dependsOn" data-field="dependsOn"; }
                    label { "Required skills (comma separated)" input name="requiredSkills" data-field="requiredSkills"; }
                    label { "Preferred agent" select name="preferredAgentId" data-field="preferredAgentId" {
                        option value="" { "any" }
                        @for (id, label) in &options { option value=(id) { (label) } }
                    } }
                    label { "Timeout (minutes)" input name="timeoutMinutes" type="number" min="0.0166666" max="10080" step="any" data-field="timeoutMinutes"; }
                }
                label { "Description" textarea name="description" rows="1" data-field="description" {} }
                label { "Instructions" textarea name="instructions" rows="2" data-field="instructions" {} }
                label { "Expected output" input name="expectedOutput" data-field="expectedOutput"; }
                button.remove type="button" { "Remove this step" }
            }
        }
        template #phase-template {
            fieldset.phase {
                legend { "Phase " span.n {} }
                div.grid {
                    label { "Name" input name="name" data-field="name"; }
                    label { "Mode" select name="mode" data-field="mode" {
                        option value="parallel" { "parallel" } option value="sequential" { "sequential" }
                    } }
                    label { "Steps (ids, comma separated)" input name="steps" data-field="steps"; }
                }
                button.remove type="button" { "Remove this phase" }
            }
        }
    };
    Ok(layout("Build a workflow", Live::None, content))
}
