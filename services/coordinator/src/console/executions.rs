//! One execution, drawn and updated live; and the history of runs with filters.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use chrono::{DateTime, Utc};
use maud::{Markup, html};
use serde_json::{Value, json};
use uuid::Uuid;

use cadre_proto::{Event, ExecutionId, WorkflowId, subjects};

use super::dag::Graph;
use super::escalations::card;
use super::{
    Live, PageError, PageResult, agent_link, agent_names, json_attr, layout, parse_uuid, status,
    time, usage_table,
};
use crate::api::AppState;
use crate::read::{self, EscalationFilter, EscalationStatus, Page, UsageGroup, UsageScope};

/// Statuses that count as done for the progress bar: what the steps after them wait for.
const DONE: [&str; 2] = ["completed", "skipped"];

/// `GET /console/executions/{id}`.
pub(super) async fn detail(State(app): State<AppState>, Path(raw): Path<String>) -> PageResult {
    let id = parse_uuid(&raw, "execution")?;
    let Some(run) = read::execution(&app.db, &app.tenant, id).await? else {
        return Err(PageError::NotFound(format!("There is no execution {id}.")));
    };
    let workflow = read::workflow(&app.db, &app.tenant, run.workflow_id).await?;
    let configuration = workflow
        .as_ref()
        .map_or(Value::Null, |w| w.configuration.clone());
    let interactions = read::interactions(&app.db, &app.tenant, id, Page::first(1000)).await?;
    let escalations = read::escalations(
        &app.db,
        &app.tenant,
        EscalationFilter {
            status: Some(EscalationStatus::Open),
            execution_id: Some(id),
            workflow_id: None,
        },
        Page::first(1000),
    )
    .await?;
    let (usage, by) = read::usage(
        &app.db,
        &app.tenant,
        UsageScope::Execution(id),
        &[UsageGroup::Step, UsageGroup::Agent],
    )
    .await?;
    let names = agent_names(&app).await?;

    let results = &run.step_results;
    let configured = Graph::of(&configuration);
    // The plan the graph and the progress bar show: the latest re-plan's steps, else the
    // workflow's. A step shows what it did in that plan (see `StepPosition`); a step the new
    // plan keeps is pending until it is scheduled again.
    let replan = latest_replan(&app, run.workflow_id, id, results).await;
    let positions: HashMap<String, i64> = read::step_positions(&app.db, &app.tenant, id)
        .await?
        .into_iter()
        .map(|p| (p.step_id, p.sequence))
        .collect();
    let (graph, replan_sequence) = match &replan {
        Some(replan) => (
            Graph::of(&json!({ "steps": replan.steps })),
            Some(replan.sequence),
        ),
        None => (Graph::of(&configuration), None),
    };
    let in_plan = |step: &str| {
        replan_sequence.is_none_or(|r| positions.get(step).is_some_and(|&p| p > r as i64))
    };
    let step_status = |step: &str| {
        results[step]["status"]
            .as_str()
            .filter(|_| in_plan(step))
            .unwrap_or("pending")
            .to_owned()
    };
    // The configured steps, then those the run added (delegations, undoings, re-plans), with
    // the names their plans gave them.
    let mut rows: Vec<(String, String)> = Vec::new();
    for node in configured.nodes.iter().chain(&graph.nodes) {
        if !rows.iter().any(|(id, _)| *id == node.id) {
            rows.push((node.id.clone(), node.name.clone()));
        }
    }
    if let Some(extra) = results.as_object() {
        for step in extra.keys() {
            if !rows.iter().any(|(id, _)| id == step) {
                rows.push((step.clone(), step.clone()));
            }
        }
    }
    let done = graph
        .nodes
        .iter()
        .filter(|n| DONE.contains(&step_status(&n.id).as_str()))
        .count();
    let title = format!(
        "{} #{}",
        workflow.as_ref().map_or("Execution", |w| w.name.as_str()),
        run.execution_number
    );
    let content = html! {
        // The names of agents that events give by id, and the steps the progress bar counts.
        div #run hidden data-execution=(id) data-agents=(json_attr(&names))
            data-steps=(json_attr(&graph.nodes.iter().map(|n| &n.id).collect::<Vec<_>>()))
            data-replan-sequence=[replan_sequence] {}
        h1 {
            @if let Some(w) = &workflow { a href={ "/console/workflows/" (w.id) } { (w.name) } } @else { "Execution" }
            " #" (run.execution_number) " "
            span #run-status { (status(&run.status)) }
        }
        (run_actions(&run.status))
        div.progress {
            label for="progress" { "Progress" }
            progress #progress max=(graph.nodes.len().max(1)) value=(done) {}
            span #progress-text { (done) " of " (graph.nodes.len()) " steps done" }
        }
        dl.facts {
            dt { "Trigger" } dd { (run.trigger_reason) @if let Some(by) = &run.triggered_by { " by " (by) } }
            dt { "Started" } dd { (time(Some(run.started_at))) }
            dt { "Ended" } dd #run-ended { (time(run.completed_at)) }
            @if let Some(error) = &run.error_message { dt { "Error" } dd.error { (error) } }
        }
        section #escalations aria-labelledby="escalations-title" {
            h2 #escalations-title { "Waiting for a person" }
            p.empty.when-empty { "Nothing waits for a person." }
            @for e in &escalations { (card(e, &names)) }
        }
        h2 { "Steps" }
        p #plan-note.note hidden[replan.is_none()] {
            @if let Some(replan) = &replan {
                "Re-planned (" (replan.number) "): the graph and the progress show the new plan; \
                 the table keeps every step of the run."
            }
        }
        div.dag-wrap { (graph.svg(step_status)) }
        table #step-table {
            thead { tr { th scope="col" { "Step" } th scope="col" { "State" } th scope="col" { "Agent" }
                th scope="col" { "Attempt" } th scope="col" { "Started" } th scope="col" { "Ended" }
                th scope="col" { "Duration" } } }
            tbody {
                @for (step, name) in &rows {
                    @let r = &results[step.as_str()];
                    tr id={ "step-" (step) } data-step=(step)
                        data-position=[positions.get(step.as_str())] {
                        th scope="row" { (name) br; code { (step) } }
                        td.state { (status(r["status"].as_str().unwrap_or("pending"))) }
                        td.agent { (agent_link(&names, r["agentId"].as_str().and_then(|a| a.parse().ok()))) }
                        td.attempt { (r["attempt"].as_u64().map_or("—".to_owned(), |a| a.to_string())) }
                        td.started { (time(at(&r["startedAt"]))) }
                        td.ended { (time(at(&r["completedAt"]))) }
                        td.duration { (duration(r)) }
                    }
                }
            }
        }
        h2 { "Interactions" }
        p { "Who asked whom, the answers, delegations, feedback, escalations and knowledge shared, in the order recorded." }
        (timeline(&interactions.rows, &names))
        h2 { "Token use and cost" }
        (usage_table("By step", &usage, &by[0], |key| html! { code { (key) } }))
        (usage_table("By agent", &usage, &by[1], |key| agent_link(&names, key.parse().ok())))
    };
    let live = if matches!(run.status.as_str(), "completed" | "failed" | "cancelled") {
        Live::None
    } else {
        Live::Execution {
            execution_feed: format!("/v1/executions/{id}/events"),
            workflow_feed: format!("/v1/events?workflowId={}", run.workflow_id),
        }
    };
    Ok(layout(&title, live, content))
}

/// A run's statuses in which each control command is accepted, as the execution decider
/// accepts them: pause a running run, resume a paused one, cancel any that has not ended. Each
/// button carries its statuses, for the script to show or hide it as the run's status changes.
const RUN_ACTIONS: [(&str, &str, &[&str]); 3] = [
    ("pause", "Pause", &["running"]),
    ("resume", "Resume", &["paused"]),
    ("cancel", "Cancel run…", &["running", "paused", "escalated"]),
];

/// The buttons that pause, resume and cancel the run (`POST /v1/executions/{id}/pause|resume|
/// cancel`, sent by the script), those its `status` allows shown; cancelling asks first.
fn run_actions(status: &str) -> Markup {
    html! {
        div #run-actions.actions {
            @for (action, label, statuses) in RUN_ACTIONS {
                button type="button" class={ "run-action " (action) } data-run-action=(action)
                    data-statuses=(statuses.join(" ")) hidden[!statuses.contains(&status)] { (label) }
            }
            p.error role="alert" {}
            p.note aria-live="polite" {}
        }
        dialog #cancel-dialog aria-labelledby="cancel-title" {
            form #cancel-form novalidate {
                h2 #cancel-title { "Cancel this run?" }
                p { "Its running steps are stopped and nothing more is scheduled. A cancelled run cannot be resumed." }
                p.error.form-error role="alert" data-pointer="" {}
                label for="cancel-reason" { "Reason (optional)" }
                textarea #cancel-reason name="reason" rows="2" data-pointer="/reason" {}
                div.actions {
                    button.danger type="submit" { "Cancel the run" }
                    button #cancel-keep type="button" { "Keep it running" }
                }
            }
        }
    }
}

/// A run's latest re-plan, as its `ExecutionReplanned` in the log says.
struct Replan {
    number: u32,
    /// Its position in the log.
    sequence: u64,
    steps: Vec<cadre_proto::model::WorkflowStep>,
}

/// The run's latest re-plan, read from the event log (the read models keep which steps it
/// replaced, not the plan), looked up only for a run that shows one (its re-planning step, or
/// a step it replaced). If the log cannot be read, the page shows the workflow's plan.
async fn latest_replan(
    app: &AppState,
    workflow: Uuid,
    execution: Uuid,
    results: &Value,
) -> Option<Replan> {
    let replanned = results.as_object().is_some_and(|steps| {
        steps
            .iter()
            .any(|(id, entry)| id.starts_with("replan-") || entry.get("replan").is_some())
    });
    if !replanned {
        return None;
    }
    let subject = subjects::execution(
        &app.tenant,
        WorkflowId(workflow),
        ExecutionId(execution),
        subjects::REPLANNED,
    );
    match app.bus.last_event(&subject).await {
        Ok(stored) => stored.and_then(|stored| match stored.envelope.event {
            Event::ExecutionReplanned(e) => Some(Replan {
                number: e.replan,
                sequence: stored.sequence,
                steps: e.steps,
            }),
            _ => None,
        }),
        Err(error) => {
            tracing::warn!(%error, %execution, "console: reading a run's re-plan failed; showing its workflow's plan");
            None
        }
    }
}

fn at(value: &Value) -> Option<DateTime<Utc>> {
    value.as_str().and_then(|s| s.parse().ok())
}

fn duration(result: &Value) -> String {
    match (at(&result["startedAt"]), at(&result["completedAt"])) {
        (Some(start), Some(end)) => {
            format!("{:.1} s", (end - start).num_milliseconds() as f64 / 1000.0)
        }
        _ => "—".to_owned(),
    }
}

/// `GET /console/executions/{id}/timeline[?at=<sequence>]`: the execution's interaction
/// timeline as its page shows it, for the script to put in place when the live feed brings an
/// event (with `at`, once the read models have reached it: see `read_at`). The timeline's rows
/// are the projector's, most of them derived from what happened to the steps: the page shows
/// them as the read models have them rather than spelling each again.
pub(super) async fn timeline_fragment(
    State(app): State<AppState>,
    Path(raw): Path<String>,
) -> PageResult {
    let id = parse_uuid(&raw, "execution")?;
    let interactions = read::interactions(&app.db, &app.tenant, id, Page::first(1000)).await?;
    let names = agent_names(&app).await?;
    Ok(timeline(&interactions.rows, &names))
}

fn timeline(interactions: &[read::InteractionView], names: &HashMap<Uuid, String>) -> Markup {
    html! {
        ol #timeline.timeline {
            @for i in interactions {
                (timeline_row(i, names))
            }
        }
    }
}

fn timeline_row(i: &read::InteractionView, names: &HashMap<Uuid, String>) -> Markup {
    html! {
        li class={ "interaction " (i.interaction_type) } {
            (time(Some(i.created_at))) " "
            span.kind { (i.interaction_type.replace('_', " ")) } " "
            (agent_link(names, i.from_agent_id))
            " → "
            @if i.to_agent_id.is_some() { (agent_link(names, i.to_agent_id)) } @else { "the team" }
            @if let Some(step) = &i.related_step_id { " on " code { (step) } }
            p.message { (i.message) }
            @if i.requires_response || i.response_received {
                p.answer {
                    @if let Some(answer) = &i.response_message {
                        @if closed(i) { "Closed: " } @else { "Answer: " }
                        (answer)
                    }
                    @else { "Waiting for an answer" }
                }
            }
        }
    }
}

/// Whether the request was closed unanswered: its run can no longer take an answer.
fn closed(i: &read::InteractionView) -> bool {
    i.response_data
        .as_ref()
        .is_some_and(|data| data["closed"] == true)
}

#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(super) struct HistoryFilter {
    #[serde(default)]
    workflow_id: Option<String>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    trigger: Option<String>,
    /// Where the page starts: after the last run of the page before (`GET /v1/executions`'s
    /// cursors).
    #[serde(default)]
    cursor: Option<String>,
    /// Runs on a page (1 to 1000).
    #[serde(default)]
    limit: Option<String>,
}

/// Runs the history shows at once unless the URL says otherwise; "Older runs" pages on.
const HISTORY_PAGE: i64 = 100;

/// `GET /console/history`: runs of every workflow, newest first, filtered by workflow, status
/// and trigger, a page at a time (as `GET /v1/executions` lists them).
pub(super) async fn history(
    State(app): State<AppState>,
    Query(filter): Query<HistoryFilter>,
) -> PageResult {
    let blank = |v: Option<String>| v.filter(|s| !s.is_empty());
    let workflow_id = match blank(filter.workflow_id) {
        Some(raw) => Some(
            raw.parse::<Uuid>()
                .map_err(|_| PageError::BadRequest(format!("workflowId '{raw}' is not a UUID")))?,
        ),
        None => None,
    };
    let known = |name: &str, raw: Option<String>, allowed: &[&'static str]| {
        raw.map(|raw| {
            allowed
                .iter()
                .copied()
                .find(|a| *a == raw)
                .ok_or_else(|| PageError::BadRequest(format!("There is no {name} '{raw}'.")))
        })
        .transpose()
    };
    let status_filter = known("status", blank(filter.status), &read::EXECUTION_STATUSES)?;
    let trigger = known("trigger", blank(filter.trigger), &read::TRIGGERS)?;
    let after = blank(filter.cursor)
        .map(|raw| read::page::decode(read::ALL_EXECUTIONS, &raw))
        .transpose()
        .map_err(|_| {
            PageError::BadRequest(
                "That link to older runs is not valid; start again from the newest.".to_owned(),
            )
        })?;
    let limit = match blank(filter.limit) {
        None => HISTORY_PAGE,
        Some(raw) => raw
            .parse()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| PageError::BadRequest(format!("limit '{raw}' is not 1 to 1000")))?,
    };
    let workflows = read::workflows(&app.db, &app.tenant, &[], Page::first(1000)).await?;
    let names: HashMap<Uuid, &str> = workflows.iter().map(|w| (w.id, w.name.as_str())).collect();
    let runs = read::all_executions(
        &app.db,
        &app.tenant,
        &read::ExecutionFilter {
            workflow_id,
            statuses: status_filter.into_iter().collect(),
            trigger,
            ..Default::default()
        },
        Page { limit, after },
    )
    .await?;
    // This page's filters, from the newest run or from a cursor.
    let link = |cursor: Option<String>| {
        let mut query = form_urlencoded::Serializer::new(String::new());
        let workflow_id = workflow_id.map(|id| id.to_string());
        let limit = (limit != HISTORY_PAGE).then(|| limit.to_string());
        for (name, value) in [
            ("workflowId", workflow_id.as_deref()),
            ("status", status_filter),
            ("trigger", trigger),
            ("limit", limit.as_deref()),
            ("cursor", cursor.as_deref()),
        ] {
            if let Some(value) = value {
                query.append_pair(name, value);
            }
        }
        format!("/console/history?{}", query.finish())
    };
    let older = runs
        .next
        .map(|key| link(Some(read::page::encode(read::ALL_EXECUTIONS, &key))));
    let newest = after.is_some().then(|| link(None));
    let content = html! {
        h1 { "Execution history" }
        form.filters method="get" action="/console/history" {
            label for="f-workflow" { "Workflow" }
            select #f-workflow name="workflowId" {
                option value="" { "any" }
                @for w in &workflows { option value=(w.id) selected[workflow_id == Some(w.id)] { (w.name) } }
            }
            label for="f-status" { "Status" }
            select #f-status name="status" {
                option value="" { "any" }
                @for s in read::EXECUTION_STATUSES { option value=(s) selected[status_filter == Some(s)] { (s) } }
            }
            label for="f-trigger" { "Trigger" }
            select #f-trigger name="trigger" {
                option value="" { "any" }
                @for t in read::TRIGGERS { option value=(t) selected[trigger == Some(t)] { (t) } }
            }
            button type="submit" { "Filter" }
        }
        @if runs.is_empty() { p.empty { "No run matches." } } @else {
            table #history {
                thead { tr { th scope="col" { "Workflow" } th scope="col" { "Run" } th scope="col" { "Status" }
                    th scope="col" { "Trigger" } th scope="col" { "Started" } th scope="col" { "Ended" }
                    th scope="col" { "Seconds" } } }
                tbody {
                    @for r in &runs {
                        tr {
                            td { a href={ "/console/workflows/" (r.workflow_id) } {
                                (names.get(&r.workflow_id).map_or_else(|| r.workflow_id.to_string(), |n| (*n).to_owned()))
                            } }
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
        }
        nav.pages aria-label="More runs" {
            @if let Some(newest) = &newest { a href=(newest) { "Newest runs" } " " }
            @if let Some(older) = &older { a #older href=(older) rel="next" { "Older runs" } }
        }
    };
    Ok(layout(
        "History",
        Live::Reload {
            feed: "/v1/events".to_owned(),
            prefixes: "dev.cadre.execution.started dev.cadre.execution.completed \
                       dev.cadre.execution.failed dev.cadre.execution.cancelled \
                       dev.cadre.execution.paused dev.cadre.execution.resumed \
                       dev.cadre.execution.escalated",
        },
        content,
    ))
}
