//! The web console under `/console`: HTML pages rendered on the server with maud from the same
//! read-model queries the API answers with (and, for a re-planned run, its plan from the
//! log's `ExecutionReplanned`, which no read model keeps), and one small hand-written script
//! (`assets/console.js`) that applies the event log's live feeds (`/v1/.../events`) to the
//! page. Forms and buttons call the JSON API, so the console can do nothing the API cannot.
//!
//! It must not write anything itself, nor poll Postgres for changes: a page learns what changed
//! from the log, then patches itself from the event or (for lists) reloads its own HTML.

mod agents;
mod dag;
mod escalations;
mod executions;
mod templates;
mod workflows;

use std::collections::HashMap;

use axum::Router;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, html};
use uuid::Uuid;

use crate::api::AppState;
use crate::read::{self, Page};

/// The console's routes, `/` redirecting to it; merged beside the API's.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::to("/console") }))
        .route("/console", get(workflows::list))
        .route("/console/builder", get(workflows::builder))
        .route("/console/workflows/{id}", get(workflows::detail))
        .route("/console/templates/{id}", get(templates::detail))
        .route("/console/executions/{id}", get(executions::detail))
        .route(
            "/console/executions/{id}/timeline",
            get(executions::timeline_fragment),
        )
        .route("/console/history", get(executions::history))
        .route("/console/escalations", get(escalations::list))
        .route("/console/escalations/{id}/card", get(escalations::fragment))
        .route("/console/agents", get(agents::list))
        .route("/console/agents/{id}", get(agents::detail))
        .route("/console/assets/console.js", get(script))
        .route("/console/assets/console.css", get(stylesheet))
        .layer(middleware::from_fn_with_state(state.clone(), read_at))
        .with_state(state)
}

#[derive(serde::Deserialize)]
struct At {
    at: u64,
}

/// `?at=<sequence>` on any console URL: answers once the read models cover that event of the
/// log (bounded, as a command's answer waits), so a page or card fetched because the live feed
/// brought an event shows what the event changed. `Cadre-Read-Models` says whether they did
/// (`current`) or the wait gave up (`behind`), and `Cadre-Log-Position` how far into the log
/// they had got when the page was read: every event up to it is on the page.
async fn read_at(State(app): State<AppState>, request: Request, next: Next) -> Response {
    let Ok(Query(At { at })) = Query::<At>::try_from_uri(request.uri()) else {
        return next.run(request).await;
    };
    let current = app
        .read_models
        .wait_while_readable(at, app.read_your_writes)
        .await;
    // Read before the page's queries, which see at least this much.
    let position = app.read_models.checkpoint();
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        crate::api::READ_MODELS,
        HeaderValue::from_static(if current { "current" } else { "behind" }),
    );
    headers.insert(crate::api::LOG_POSITION, HeaderValue::from(position));
    response
}

const SCRIPT: &str = include_str!("assets/console.js");
const STYLESHEET: &str = include_str!("assets/console.css");

async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

async fn stylesheet() -> Response {
    asset("text/css; charset=utf-8", STYLESHEET)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // Short: a new build's script must not be shadowed for long by an old one.
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        body,
    )
        .into_response()
}

/// Why a page could not be shown, as an HTML page with its status.
pub(crate) enum PageError {
    NotFound(String),
    BadRequest(String),
    Unavailable,
}

impl From<sqlx::Error> for PageError {
    fn from(error: sqlx::Error) -> Self {
        tracing::error!(%error, "console: read model query failed");
        Self::Unavailable
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            Self::NotFound(m) => (StatusCode::NOT_FOUND, m),
            Self::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            Self::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "The read models could not be queried; retry shortly.".to_owned(),
            ),
        };
        let title = status.canonical_reason().unwrap_or("Error");
        let body = layout(
            title,
            Live::None,
            html! { h1 { (title) } p.error { (message) } },
        );
        (status, body).into_response()
    }
}

pub(crate) type PageResult = Result<Markup, PageError>;

fn parse_uuid(raw: &str, what: &str) -> Result<Uuid, PageError> {
    raw.parse()
        .map_err(|_| PageError::NotFound(format!("There is no {what} '{raw}'.")))
}

/// Which live feed a page listens to, and what it does with it.
pub(crate) enum Live {
    None,
    /// Reload the page's `main` when an event whose type starts with one of `prefixes` arrives
    /// on `feed`.
    Reload {
        feed: String,
        prefixes: &'static str,
    },
    /// The execution view: its own feed (from its start) patches the steps; the workflow's
    /// feed brings the interactions and knowledge, kept apart from the execution's state.
    Execution {
        execution_feed: String,
        workflow_feed: String,
    },
}

/// The page around `content`: navigation, styles, the script and the live feed it opens.
pub(crate) fn layout(title: &str, live: Live, content: Markup) -> Markup {
    let (feed, reload_on, workflow_feed) = match &live {
        Live::None => (None, None, None),
        Live::Reload { feed, prefixes } => (Some(feed.as_str()), Some(*prefixes), None),
        Live::Execution {
            execution_feed,
            workflow_feed,
        } => (
            Some(execution_feed.as_str()),
            None,
            Some(workflow_feed.as_str()),
        ),
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Cadre" }
                link rel="stylesheet" href="/console/assets/console.css";
                link rel="icon" href="data:,";
                script src="/console/assets/console.js" defer {}
            }
            body data-feed=[feed] data-reload-on=[reload_on] data-workflow-feed=[workflow_feed] {
                header.top {
                    a.brand href="/console" { "Cadre" }
                    nav aria-label="Console" {
                        a href="/console" { "Workflows" }
                        a href="/console/builder" { "New workflow" }
                        a href="/console/history" { "History" }
                        a href="/console/escalations" { "Escalations" }
                        a href="/console/agents" { "Agents" }
                    }
                    span #live.live aria-live="polite" {}
                }
                main { (content) }
            }
        }
    }
}

/// Agents' names by id, for the pages that show who did what.
pub(crate) async fn agent_names(app: &AppState) -> Result<HashMap<Uuid, String>, PageError> {
    let agents = read::agents(&app.db, &app.tenant, Page::first(1000)).await?;
    Ok(agents.into_iter().map(|a| (a.id, a.name)).collect())
}

fn agent_link(names: &HashMap<Uuid, String>, id: Option<Uuid>) -> Markup {
    match id {
        Some(id) => {
            html! { a href={ "/console/agents/" (id) } { (names.get(&id).map_or("an unknown agent", String::as_str)) } }
        }
        None => html! { "—" },
    }
}

fn time(at: Option<DateTime<Utc>>) -> Markup {
    match at {
        Some(at) => html! { time datetime=(at.to_rfc3339()) { (at.format("%Y-%m-%d %H:%M:%S")) } },
        None => html! { "—" },
    }
}

fn status(status: &str) -> Markup {
    html! { span class={ "badge st-" (status) } { (status.replace('_', " ")) } }
}

/// `None` as a dash, a number to two decimals.
fn figure(value: Option<f64>) -> Markup {
    match value {
        Some(v) => html! { (format!("{v:.2}")) },
        None => html! { "—" },
    }
}

fn cost(sum: &read::UsageSum) -> Markup {
    match sum.cost_usd {
        Some(usd) if sum.cost_complete => html! { (format!("${usd:.4}")) },
        Some(usd) => html! { (format!("${usd:.4}")) " (some models have no price)" },
        None => html! { "—" },
    }
}

/// A usage table: the total, then one row per `key` (named by `name`).
fn usage_table(
    caption: &str,
    total: &read::UsageSum,
    rows: &[read::UsageSum],
    name: impl Fn(&str) -> Markup,
) -> Markup {
    html! {
        table.usage {
            caption { (caption) }
            thead { tr { th scope="col" { "" } th scope="col" { "Calls" } th scope="col" { "Prompt tokens" }
                th scope="col" { "Completion tokens" } th scope="col" { "Total tokens" } th scope="col" { "Cost" } } }
            tbody {
                @for row in rows {
                    tr { th scope="row" { (name(row.key.as_deref().unwrap_or(""))) } td { (row.calls) }
                        td { (row.prompt_tokens) } td { (row.completion_tokens) }
                        td { (row.total_tokens) } td { (cost(row)) } }
                }
                tr.total { th scope="row" { "Total" } td { (total.calls) } td { (total.prompt_tokens) }
                    td { (total.completion_tokens) } td { (total.total_tokens) } td { (cost(total)) } }
            }
        }
    }
}

/// JSON to put in an HTML attribute (maud escapes it; the parser unescapes it).
fn json_attr(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    /// EventSource delivers only the event names it listens to: the script must name them all.
    #[test]
    fn the_script_listens_to_every_event_type() {
        for event_type in cadre_proto::events::types::ALL {
            let short = event_type.trim_start_matches("dev.cadre.");
            assert!(
                super::SCRIPT.contains(&format!("\"{short}\"")),
                "console.js does not listen to {event_type}"
            );
        }
    }
}
