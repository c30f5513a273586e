//! Agents with their performance (seed 002's `AgentPerformanceMetrics`, defined in
//! [`crate::domain::performance`]) and the alerts raised on them.

use std::collections::HashMap;

use axum::extract::{Path, State};
use maud::{Markup, html};
use uuid::Uuid;

use super::{
    Live, PageError, PageResult, agent_link, agent_names, figure, layout, parse_uuid, status, time,
    usage_table,
};
use crate::api::AppState;
use crate::domain::performance::AgentFacts;
use crate::read::metrics::{self, AlertFilter, AlertView};
use crate::read::{self, Page, UsageGroup, UsageScope};

/// As much of a list as a page of the console shows (it does not page them).
const ALL: i64 = 1000;

fn performance_head() -> Markup {
    html! {
        th scope="col" { abbr title="percent of ended attempts that succeeded" { "Task success %" } }
        th scope="col" { abbr title="minutes from handout to completion, on average" { "Avg. minutes" } }
        th scope="col" { abbr title="percent of tasks escalated" { "Escalation %" } }
        th scope="col" { abbr title="0-10, from reviews of its work" { "Quality" } }
        th scope="col" { abbr title="0-10, questions answered and handoffs completed" { "Collaboration" } }
        th scope="col" { abbr title="percent of their estimates its tasks took" { "Time vs. estimate %" } }
        th scope="col" { "Attempts" }
    }
}

fn performance_cells(facts: &AgentFacts) -> Markup {
    html! {
        td { (figure(facts.task_success())) }
        td { (figure(facts.average_completion_minutes())) }
        td { (figure(facts.escalation_rate())) }
        td { (figure(facts.quality_score())) }
        td { (figure(facts.collaboration_score())) }
        td { (figure(facts.time_against_estimate())) }
        td { (facts.attempts) }
    }
}

fn alerts_table(alerts: &[AlertView], names: &HashMap<Uuid, String>) -> Markup {
    html! {
        @if alerts.is_empty() { p.empty { "No alert." } } @else {
            table #alerts {
                thead { tr { th scope="col" { "Raised" } th scope="col" { "Agent" } th scope="col" { "Condition" }
                    th scope="col" { "Value" } th scope="col" { "Threshold" } th scope="col" { "What" }
                    th scope="col" { "Where" } } }
                tbody {
                    @for a in alerts {
                        tr.alert {
                            td { (time(Some(a.raised_at))) }
                            td { (agent_link(names, Some(a.agent_id))) }
                            td { (a.condition.replace('_', " ")) @if let Some(t) = &a.task_type { " (" (t) ")" } }
                            td { (format!("{:.2}", a.value)) }
                            td { (format!("{:.2}", a.threshold)) }
                            td { (a.message) }
                            td { a href={ "/console/executions/" (a.execution_id) } { "step " code { (a.step_id) } } }
                        }
                    }
                }
            }
        }
    }
}

/// `GET /console/agents`.
pub(super) async fn list(State(app): State<AppState>) -> PageResult {
    let agents = read::agents(&app.db, &app.tenant, Page::first(ALL)).await?;
    let ids: Vec<Uuid> = agents.iter().map(|a| a.id).collect();
    let facts: HashMap<Uuid, AgentFacts> = metrics::agent_facts(&app.db, &app.tenant, &ids)
        .await?
        .into_iter()
        .collect();
    let alerts = metrics::alerts(
        &app.db,
        &app.tenant,
        AlertFilter::default(),
        Page::first(100),
    )
    .await?;
    let names: HashMap<Uuid, String> = agents.iter().map(|a| (a.id, a.name.clone())).collect();
    let none = AgentFacts::default();
    let content = html! {
        h1 { "Agents" }
        @if agents.is_empty() { p.empty { "No agent registered yet." } } @else {
            table #agents {
                thead { tr { th scope="col" { "Agent" } th scope="col" { "Role" } th scope="col" { "Model" }
                    (performance_head()) } }
                tbody {
                    @for a in &agents {
                        tr {
                            td { a href={ "/console/agents/" (a.id) } { (a.name) } }
                            td { (a.role) }
                            td { (a.provider) "/" (a.model) }
                            (performance_cells(facts.get(&a.id).unwrap_or(&none)))
                        }
                    }
                }
            }
        }
        h2 { "Alerts" }
        (alerts_table(&alerts, &names))
    };
    Ok(layout(
        "Agents",
        Live::Reload {
            feed: "/v1/events".to_owned(),
            prefixes: "dev.cadre.agent dev.cadre.execution.completed dev.cadre.execution.failed",
        },
        content,
    ))
}

/// `GET /console/agents/{id}`: its profile, status, performance, alerts and token use.
pub(super) async fn detail(State(app): State<AppState>, Path(raw): Path<String>) -> PageResult {
    let id = parse_uuid(&raw, "agent")?;
    let agents = read::agents(&app.db, &app.tenant, Page::first(ALL)).await?;
    let Some(agent) = agents.iter().find(|a| a.id == id) else {
        return Err(PageError::NotFound(format!("There is no agent {id}.")));
    };
    let facts = metrics::agent_facts(&app.db, &app.tenant, &[id])
        .await?
        .into_iter()
        .next()
        .map(|(_, f)| f)
        .unwrap_or_default();
    let state = read::agent_status(&app.db, &app.tenant, id)
        .await?
        .unwrap_or_else(|| read::AgentStatusView::idle(id));
    let alerts = metrics::alerts(
        &app.db,
        &app.tenant,
        AlertFilter {
            agent_id: Some(id),
            ..Default::default()
        },
        Page::first(100),
    )
    .await?;
    let (usage, by) = read::usage(
        &app.db,
        &app.tenant,
        UsageScope::Agent(id),
        &[UsageGroup::Model],
    )
    .await?;
    let names = agent_names(&app).await?;
    let skills = agent
        .skills
        .as_array()
        .map(|s| {
            s.iter()
                .filter_map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    let content = html! {
        h1 { (agent.name) }
        p { (agent.backstory) }
        dl.facts {
            dt { "Role" } dd { (agent.role) }
            dt { "Skills" } dd { (skills) }
            dt { "Model" } dd { (agent.provider) "/" (agent.model) }
            dt { "State" } dd { (status(&state.state))
                @if let Some(task) = &state.current_task { " on " (task) " (" (state.progress) " %)" }
                @if let Some(execution) = state.execution_id { " in " a href={ "/console/executions/" (execution) } { "this run" } } }
        }
        h2 { "Performance" }
        table #performance { thead { tr { (performance_head()) } } tbody { tr { (performance_cells(&facts)) } } }
        h2 { "Alerts" }
        (alerts_table(&alerts, &names))
        h2 { "Token use and cost" }
        (usage_table("By model", &usage, &by[0], |key| html! { (key) }))
    };
    Ok(layout(&agent.name, Live::None, content))
}
