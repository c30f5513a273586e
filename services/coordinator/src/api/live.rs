//! Live feeds of the event log as server-sent events (`text/event-stream`): what the console
//! and `cadre run --follow` watch. Read from JetStream with an ordered consumer (nothing to
//! ack; it goes away with the client), never by polling Postgres.
//!
//! Each SSE event is one stored event: `id` is its stream sequence, `event` its CloudEvents
//! `type`, `data` the CloudEvents JSON exactly as stored (structured mode). A client that
//! reconnects with `Last-Event-ID` (or `?after=<sequence>`) goes on after that event, so a
//! dropped connection loses nothing. A message this build cannot decode is left out (the
//! services terminate such messages with their reason). Feeds end when the coordinator stops;
//! clients reconnect to another replica.

use std::collections::{BTreeSet, HashMap};
use std::convert::Infallible;
use std::time::Duration;

use async_nats::jetstream::consumer::{self, DeliverPolicy};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures::{Stream, StreamExt};

use cadre_proto::{Envelope, Event, ExecutionId, WorkflowId, subjects};

use super::executions::started;
use super::openapi::{BadRequest, NotFound, Unavailable};
use super::{ApiResult, AppState, Problem, list, parse_id};

/// One server-sent event of a feed: one stored event of the log. (The schema is each event's,
/// as OpenAPI 3.2's `itemSchema` has it: a feed is a stream of them.)
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // documentation: the feed writes these fields itself
pub(super) struct LogEvent {
    /// The event's stream sequence: send it back as `Last-Event-ID` to go on after it.
    #[schema(pattern = "^[0-9]+$")]
    id: String,
    /// Its CloudEvents `type` (`dev.cadre.execution.started.v1`, ...).
    event: String,
    /// The CloudEvents JSON as stored (structured mode).
    #[schema(content_media_type = "application/cloudevents+json")]
    data: String,
}

/// How often an idle feed sends a comment, so proxies and clients keep the connection open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// `GET /v1/executions/{id}/events`: the execution's events and its interactions from its
/// start (or after `Last-Event-ID`), then live; the feed ends after the event that ends the
/// run.
#[utoipa::path(
    get,
    path = "/v1/executions/{id}/events",
    tag = "events",
    params(
        ("id" = uuid::Uuid, Path, description = "The execution's id"),
        ("Last-Event-ID" = Option<String>, Header, pattern = "^[0-9]+$",
         description = "Go on after this event (the `id` of the last event seen)"),
        ("after" = Option<u64>, Query, description = "As `Last-Event-ID`, for clients that cannot set it"),
    ),
    responses(
        (status = 200, content_type = "text/event-stream", body = LogEvent,
         description = "Server-sent events, each one stored event of the log"),
        BadRequest, NotFound, Unavailable,
    )
)]
pub(super) async fn execution(
    State(app): State<AppState>,
    Path(raw): Path<String>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> ApiResult {
    let id: ExecutionId = parse_id(&raw, "execution id")?;
    list::refuse_unknown(params.keys().map(String::as_str), "feed", &["after"])?;
    let after = resume_after(&headers, &params)?;
    let (_, start) = started(&app, id).await?;
    let filters = vec![
        subjects::execution_state(&app.tenant, start.workflow_id, id),
        subjects::interactions(&app.tenant, start.workflow_id, id),
    ];
    let deliver = match after {
        Some(sequence) => DeliverPolicy::ByStartSequence {
            start_sequence: sequence + 1,
        },
        None => DeliverPolicy::All,
    };
    feed(&app, filters, deliver, true).await
}

/// `GET /v1/events[?workflowId=][&types=]`: every event of the tenant (or of one workflow: 404
/// for one that does not exist), or only those of the listed types, from now on, or after
/// `Last-Event-ID`; it never ends on its own. The log does the type filtering (by subject), so a client that wants a few types
/// of a busy tenant is not sent, nor does the coordinator decode, the thousands of others.
#[utoipa::path(
    get,
    path = "/v1/events",
    tag = "events",
    params(
        ("workflowId" = Option<uuid::Uuid>, Query, description = "Only this workflow's events and its executions'"),
        ("types" = Option<String>, Query,
         description = "Only events of these CloudEvents types, comma-separated (`dev.cadre.execution.completed.v1,...`)"),
        ("Last-Event-ID" = Option<String>, Header, pattern = "^[0-9]+$",
         description = "Go on after this event (the `id` of the last event seen)"),
        ("after" = Option<u64>, Query, description = "As `Last-Event-ID`, for clients that cannot set it"),
    ),
    responses(
        (status = 200, content_type = "text/event-stream", body = LogEvent,
         description = "Server-sent events, each one stored event of the log"),
        BadRequest, NotFound, Unavailable,
    )
)]
pub(super) async fn all(
    State(app): State<AppState>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> ApiResult {
    list::refuse_unknown(
        params.keys().map(String::as_str),
        "feed",
        &["workflowId", "types", "after"],
    )?;
    let after = resume_after(&headers, &params)?;
    let workflow = params
        .get("workflowId")
        .map(|raw| parse_id::<WorkflowId>(raw, "workflowId"))
        .transpose()?;
    // A feed of a workflow that does not exist would stay silent forever: ids are the API's.
    if let Some(workflow) = workflow {
        super::workflows::load(&app, workflow).await?;
    }
    let filters = match params.get("types") {
        Some(types) => of_types(&app, workflow, types)?,
        None => vec![match workflow {
            Some(workflow) => subjects::workflow_events(&app.tenant, workflow),
            None => subjects::tenant_events(&app.tenant),
        }],
    };
    let deliver = match after {
        Some(sequence) => DeliverPolicy::ByStartSequence {
            start_sequence: sequence + 1,
        },
        None => DeliverPolicy::New,
    };
    feed(&app, filters, deliver, false).await
}

/// The subjects of the comma-separated CloudEvents `types` (in `workflow`, if given).
fn of_types(
    app: &AppState,
    workflow: Option<WorkflowId>,
    types: &str,
) -> Result<Vec<String>, Problem> {
    let mut filters = BTreeSet::new();
    let mut named = 0;
    for type_name in types.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        named += 1;
        let Some(subjects) = subjects::of_type(&app.tenant, workflow, type_name) else {
            return Err(Problem::bad_request(format!(
                "'types' names '{type_name}', which is not an event type: list CloudEvents types \
                 such as dev.cadre.execution.completed.v1, separated by commas"
            )));
        };
        filters.extend(subjects);
    }
    // No filter would mean every event.
    if named == 0 {
        return Err(Problem::bad_request(
            "'types' is empty: list CloudEvents types such as dev.cadre.execution.completed.v1, \
             separated by commas, or leave it out for every event",
        ));
    }
    if filters.is_empty() {
        return Err(Problem::bad_request(
            "'types' names no event type that can occur in a workflow's feed (agents', \
             templates' and subscriptions' events are in no workflow)",
        ));
    }
    Ok(filters.into_iter().collect())
}

/// The sequence a reconnecting client saw last: its `Last-Event-ID` header, else `?after=`.
fn resume_after(
    headers: &HeaderMap,
    params: &HashMap<String, String>,
) -> Result<Option<u64>, Problem> {
    let raw = headers
        .get("last-event-id")
        .map(|v| v.to_str().unwrap_or_default().to_owned())
        .or_else(|| params.get("after").cloned());
    raw.map(|raw| {
        raw.trim().parse::<u64>().map_err(|_| {
            Problem::bad_request(format!(
                "Last-Event-ID (or 'after') '{raw}' is not an event's sequence: a whole number \
                 from an earlier event's id"
            ))
        })
    })
    .transpose()
}

async fn feed(
    app: &AppState,
    filter_subjects: Vec<String>,
    deliver_policy: DeliverPolicy,
    ends_with_the_run: bool,
) -> ApiResult {
    let consumer = app
        .bus
        .stream()
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subjects,
            deliver_policy,
            ..Default::default()
        })
        .await
        .map_err(|error| unavailable(&error))?;
    let messages = consumer
        .messages()
        .await
        .map_err(|error| unavailable(&error))?;
    let until_shutdown = app.shutdown.clone().cancelled_owned();
    Ok(
        Sse::new(events(messages, ends_with_the_run).take_until(until_shutdown))
            .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
            .into_response(),
    )
}

fn unavailable(error: &dyn std::fmt::Display) -> Problem {
    tracing::error!(%error, "opening a live feed of the event log failed");
    Problem::unavailable(format!("the event log could not be read: {error}; retry"))
}

/// The SSE events of `messages`, until the run's last event (when `ends_with_the_run`) or a
/// failed read of the log (the client reconnects with the last id it saw).
fn events(
    messages: consumer::pull::Ordered,
    ends_with_the_run: bool,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    futures::stream::unfold((messages, false), move |(mut messages, ended)| async move {
        if ended {
            return None;
        }
        loop {
            let message = messages.next().await?.ok()?;
            if let Some((event, ends)) = sse_event(&message) {
                return Some((Ok(event), (messages, ends && ends_with_the_run)));
            }
        }
    })
}

/// One stored event as an SSE event, and whether it ends its run; `None` for a message this
/// build cannot decode.
fn sse_event(message: &async_nats::jetstream::Message) -> Option<(SseEvent, bool)> {
    let sequence = message.info().ok()?.stream_sequence;
    let envelope = Envelope::decode(&message.payload).ok()?;
    let ends = matches!(
        envelope.event,
        Event::ExecutionCompleted(_) | Event::ExecutionFailed(_) | Event::ExecutionCancelled(_)
    );
    let event = SseEvent::default()
        .id(sequence.to_string())
        .event(envelope.event.type_name())
        .data(String::from_utf8_lossy(&message.payload));
    Some((event, ends))
}
