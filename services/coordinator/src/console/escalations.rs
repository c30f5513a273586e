//! What waits for a person, with the actions that resolve it (`POST
//! /v1/escalations/{id}/resolve`, sent by the script).

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use maud::{Markup, html};
use uuid::Uuid;

use super::{Live, PageError, PageResult, agent_link, agent_names, layout, parse_uuid, time};
use crate::api::AppState;
use crate::read::{self, EscalationFilter, EscalationStatus, EscalationView, Page};

#[derive(serde::Deserialize, Default)]
pub(super) struct ListFilter {
    #[serde(default)]
    status: Option<String>,
}

/// `GET /console/escalations[?status=]`: open ones by default, oldest first.
pub(super) async fn list(
    State(app): State<AppState>,
    Query(filter): Query<ListFilter>,
) -> PageResult {
    let wanted = match filter.status.as_deref().unwrap_or("open") {
        "" | "all" => None,
        raw => Some(EscalationStatus::parse(raw).ok_or_else(|| {
            PageError::BadRequest(format!(
                "status '{raw}' is none of open, resolved, closed, all"
            ))
        })?),
    };
    let escalations = read::escalations(
        &app.db,
        &app.tenant,
        EscalationFilter {
            status: wanted,
            ..Default::default()
        },
        Page::first(200),
    )
    .await?;
    let names = agent_names(&app).await?;
    let content = html! {
        h1 { "Escalations" }
        nav.tabs aria-label="Which escalations" {
            @for (label, value) in [("Open", "open"), ("Resolved", "resolved"), ("Closed", "closed"), ("All", "all")] {
                @let current = wanted.map_or("all", EscalationStatus::as_str) == value;
                a href={ "/console/escalations?status=" (value) } aria-current=[current.then_some("page")] { (label) }
            }
        }
        section #escalations {
            @if escalations.is_empty() { p.empty { "Nothing here." } }
            @for e in &escalations { (card(e, &names)) }
        }
    };
    Ok(layout(
        "Escalations",
        Live::Reload {
            feed: "/v1/events".to_owned(),
            prefixes: "dev.cadre.execution.step_escalated dev.cadre.execution.escalated \
                       dev.cadre.execution.escalation_resolved dev.cadre.execution.completed \
                       dev.cadre.execution.failed dev.cadre.execution.cancelled",
        },
        content,
    ))
}

/// `GET /console/escalations/{id}/card[?at=<sequence>]`: one escalation as the execution view
/// shows it, for the script to add when the log says a step escalated (with `at`, once the
/// read models have reached that event: see `read_at`).
pub(super) async fn fragment(State(app): State<AppState>, Path(raw): Path<String>) -> PageResult {
    let id = parse_uuid(&raw, "escalation")?;
    let Some(escalation) = read::escalation(&app.db, &app.tenant, id).await? else {
        return Err(PageError::NotFound(format!("There is no escalation {id}.")));
    };
    let names = agent_names(&app).await?;
    Ok(card(&escalation, &names))
}

/// The actions a person may take on an escalation of `kind`.
fn actions(escalation: &EscalationView) -> &'static [(&'static str, &'static str)] {
    match escalation.kind.as_str() {
        "approval" => &[
            ("approve", "Approve"),
            ("reject", "Reject"),
            ("abort", "Abort the run"),
        ],
        "execution" => &[("continue", "Let it continue"), ("abort", "Abort the run")],
        _ => &[
            ("retry", "Retry"),
            ("reassign", "Reassign"),
            ("skip", "Skip"),
            ("provideOutput", "Provide the output"),
            ("abort", "Abort the run"),
        ],
    }
}

pub(super) fn card(e: &EscalationView, names: &HashMap<Uuid, String>) -> Markup {
    let open = e.status == "open";
    let failures = e.context["failures"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    html! {
        article.escalation id={ "esc-" (e.id) } data-escalation=(e.id) data-kind=(e.kind)
            aria-labelledby={ "esc-title-" (e.id) } {
            h3 id={ "esc-title-" (e.id) } {
                @match e.kind.as_str() {
                    "approval" => "Approval",
                    "execution" => "Run over its time",
                    _ => "Failed step",
                }
                @if let Some(step) = &e.step_name { ": " (step) }
                " " span class={ "badge st-" (e.status) } { (e.status) }
            }
            p.meta {
                a href={ "/console/executions/" (e.execution_id) } { "the run" } " · since " (time(Some(e.created_at)))
            }
            p.reason { (e.reason) }
            @if !failures.is_empty() {
                details {
                    summary { (failures.len()) " failed attempt(s)" }
                    ul { @for f in &failures {
                        li { "attempt " (f["attempt"]) " by "
                            (agent_link(names, f["agentId"].as_str().and_then(|a| a.parse().ok())))
                            ": " (f["error"].as_str().unwrap_or_default()) }
                    } }
                }
            }
            @if open {
                form.resolve data-escalation=(e.id) {
                    label for={ "comment-" (e.id) } { "Comment (optional)" }
                    input id={ "comment-" (e.id) } name="reason" placeholder="why";
                    @if e.kind == "failure" {
                        label for={ "agent-" (e.id) } { "Agent, to reassign to" }
                        select id={ "agent-" (e.id) } name="agentId" {
                            @for (id, name) in names { option value=(id) { (name) } }
                        }
                        label for={ "output-" (e.id) } { "Output, to provide" }
                        textarea id={ "output-" (e.id) } name="output" rows="2" {}
                    }
                    div.actions {
                        @for (action, label) in actions(e) {
                            button type="button" data-action=(action) { (label) }
                        }
                    }
                    p.error role="alert" {}
                }
            } @else {
                p.outcome {
                    @if let Some(action) = &e.action {
                        "Resolved: " strong { (action) }
                        @if let Some(by) = &e.resolved_by { " by " (by) }
                        " at " (time(e.resolved_at))
                        @if let Some(c) = &e.comment { " (" (c) ")" }
                    }
                    @if let Some(reason) = &e.closed_reason { "Closed: " (reason) }
                }
            }
        }
    }
}
