//! One template: what it is, its steps, and a form that makes a workflow of it
//! (`POST /v1/templates/{id}/workflows`, sent by the script, which shows each problem of the
//! answer at the field its JSON pointer names and goes to the new workflow's page).

use axum::extract::{Path, State};
use maud::html;

use super::dag::Graph;
use super::workflows::joined;
use super::{Live, PageError, PageResult, layout, parse_uuid};
use crate::api::AppState;
use crate::domain::template::agent_pointer;
use crate::read::{self, Page};

/// `GET /console/templates/{id}`.
pub(super) async fn detail(State(app): State<AppState>, Path(raw): Path<String>) -> PageResult {
    let id = parse_uuid(&raw, "template")?;
    let Some(template) = read::template(&app.db, &app.tenant, id).await? else {
        return Err(PageError::NotFound(format!("There is no template {id}.")));
    };
    let agents = read::agents(&app.db, &app.tenant, Page::first(1000)).await?;
    let roles: Vec<String> =
        serde_json::from_value(template.required_agent_roles.clone()).unwrap_or_default();
    let definition = &template.template_definition;
    let steps = definition["steps"].as_array().cloned().unwrap_or_default();
    let graph = Graph::of(definition);
    // A role starts on the first agent registered with that role, if any: one choice fewer
    // for the usual team, and nothing the person cannot change.
    let suggested = |role: &str| {
        agents
            .iter()
            .find(|a| a.role.trim().eq_ignore_ascii_case(role.trim()))
            .map(|a| a.id)
    };
    let content = html! {
        h1 { "Template: " (template.name) }
        p { (template.description) }
        dl.facts {
            dt { "Category" } dd { (template.category) }
            dt { "Workflow type" } dd { (template.workflow_type) }
            dt { "Roles" } dd { (roles.join(", ")) }
            dt { "Recommended agents" } dd { (template.recommended_agent_count) }
            dt { "Kind" } dd { @if template.is_system_template { "system" } @else { "user" } " template, revision " (template.revision) }
            dt { "Used by" } dd { (template.workflow_count) " workflows, " (template.usage_count) " runs"
                @if template.ended_runs > 0 { ", " (format!("{:.0} %", template.success_rate)) " of the ended ones completed" } }
        }
        section aria-labelledby="from-template-title" {
            h2 #from-template-title { "Create a workflow from it" }
            @if agents.is_empty() {
                p.empty { "Register agents first (" code { "POST /v1/agents" } "): each role needs one." }
            }
            form #from-template data-template=(id) novalidate {
                p.error.form-error role="alert" data-pointer="" {}
                label for="ft-name" { "Name (optional: the template's when empty)" }
                input #ft-name name="name" data-pointer="/name" placeholder=(template.name);
                label for="ft-description" { "Description (optional)" }
                textarea #ft-description name="description" rows="2" data-pointer="/description" {}
                fieldset #ft-roles data-pointer="/agents" {
                    legend { "An agent for each role (one agent may take several)" }
                    div.grid {
                        @for (i, role) in roles.iter().enumerate() {
                            @let chosen = suggested(role);
                            label for={ "ft-role-" (i) } { (role)
                                select id={ "ft-role-" (i) } data-role=(role) data-pointer=(agent_pointer(role)) {
                                    option value="" { "choose an agent" }
                                    @for a in &agents {
                                        option value=(a.id) selected[chosen == Some(a.id)] { (a.name) " (" (a.role) ")" }
                                    }
                                }
                            }
                        }
                    }
                }
                label for="ft-coordinator" { "Coordinator agent (optional)" }
                select #ft-coordinator name="coordinatorAgentId" data-pointer="/coordinatorAgentId" {
                    option value="" { "none" }
                    @for a in &agents { option value=(a.id) { (a.name) " (" (a.role) ")" } }
                }
                p { button #create-from-template type="submit" { "Create workflow" } }
            }
        }
        h2 { "Steps" }
        div.dag-wrap { (graph.svg(|_| "pending".to_owned())) }
        table #template-steps {
            thead { tr { th scope="col" { "Id" } th scope="col" { "Name" } th scope="col" { "Type" }
                th scope="col" { "Depends on" } th scope="col" { "Role" } } }
            tbody {
                @for s in &steps {
                    tr {
                        td { code { (s["id"].as_str().unwrap_or_default()) } }
                        td { (s["name"].as_str().unwrap_or_default()) }
                        td { (s["type"].as_str().unwrap_or_default()) }
                        td { (joined(&s["dependsOn"])) }
                        td { (s["assignedAgentRole"].as_str().unwrap_or("any")) }
                    }
                }
            }
        }
    };
    Ok(layout(&template.name, Live::None, content))
}
