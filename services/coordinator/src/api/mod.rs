//! The HTTP API. Commands go through [`crate::command`] (decide, then append to the log: the
//! only write); queries read the projector's Postgres read models. Errors are RFC 9457
//! problem+json. One module per resource.

mod agents;
mod alerts;
mod body;
mod collaboration;
mod escalations;
mod executions;
mod list;
mod live;
mod metrics;
pub mod openapi;
mod problem;
mod resolutions;
mod subscriptions;
mod templates;
mod usage;
mod workflows;

use std::str::FromStr;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tower_http::trace::DefaultMakeSpan;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use async_nats::jetstream::context::PublishErrorKind;
use cadre_proto::TenantId;
use cadre_proto::events::Request;
use cadre_runtime::bus::{EventBus, PublishError, ReadError};
use cadre_runtime::health::{self, Readiness};
use cadre_runtime::projection::ProjectionWatermark;

use crate::command::CommandError;
use crate::starter::Starter;
pub use problem::Problem;

pub const BODY_LIMIT_BYTES: usize = 256 * 1024;

/// What the handlers act with, shared: axum clones the state for every request, and the parts
/// (NATS streams with their cached info, pools) are costly to copy one by one.
#[derive(Clone)]
pub struct AppState(std::sync::Arc<AppContext>);

impl AppState {
    pub fn new(context: AppContext) -> Self {
        Self(std::sync::Arc::new(context))
    }
}

impl std::ops::Deref for AppState {
    type Target = AppContext;

    fn deref(&self) -> &AppContext {
        &self.0
    }
}

pub struct AppContext {
    pub bus: EventBus,
    pub db: PgPool,
    /// Until authentication arrives, every request acts for this tenant.
    pub tenant: TenantId,
    pub starter: Starter,
    /// Which workflows start after which (`triggers.afterWorkflows`).
    pub links: async_nats::jetstream::kv::Store,
    /// Step results too large for an event.
    pub results: async_nats::jetstream::object_store::ObjectStore,
    /// The live agent workers and the providers they offer.
    pub workers: crate::workers::WorkerRegistry,
    /// How far the read models have got, so a command can answer once they show its events.
    pub read_models: ProjectionWatermark,
    /// How long a command waits for that (zero: not at all).
    pub read_your_writes: Duration,
    /// Ends the live feeds when the coordinator stops, so a graceful shutdown does not wait
    /// for clients that would watch forever.
    pub shutdown: tokio_util::sync::CancellationToken,
    /// Webhook subscriptions' signing keys, outside the log.
    pub webhook_secrets: async_nats::jetstream::kv::Store,
}

/// Every operation of the API, each added with the documentation its handler declares.
fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(openapi::document))
        .routes(routes!(agents::list, agents::register))
        .routes(routes!(agents::get))
        .routes(routes!(usage::agent))
        .routes(routes!(collaboration::agent_status))
        .routes(routes!(agents::workers))
        .routes(routes!(workflows::list, workflows::create))
        .routes(routes!(workflows::get))
        .routes(routes!(workflows::pause))
        .routes(routes!(workflows::resume))
        .routes(routes!(executions::list, executions::start))
        .routes(routes!(executions::all))
        .routes(routes!(workflows::knowledge))
        .routes(routes!(usage::workflow))
        .routes(routes!(executions::get))
        .routes(routes!(usage::execution))
        .routes(routes!(executions::cancel))
        .routes(routes!(executions::pause))
        .routes(routes!(executions::resume))
        .routes(routes!(executions::interactions))
        .routes(routes!(collaboration::handoffs))
        .routes(routes!(resolutions::resolve))
        .routes(routes!(executions::step_result))
        .routes(routes!(templates::list, templates::register))
        .routes(routes!(templates::get))
        .routes(routes!(templates::create_workflow))
        .routes(routes!(escalations::list))
        .routes(routes!(escalations::get))
        .routes(routes!(metrics::agents))
        .routes(routes!(metrics::agent))
        .routes(routes!(metrics::execution))
        .routes(routes!(metrics::workflow))
        .routes(routes!(metrics::execution_history))
        .routes(routes!(metrics::workflow_history))
        .routes(routes!(alerts::list))
        .routes(routes!(live::all))
        .routes(routes!(live::execution))
        .routes(routes!(subscriptions::list, subscriptions::create))
        .routes(routes!(subscriptions::get, subscriptions::delete))
        .routes(routes!(subscriptions::deliveries))
}

pub fn router(state: AppState, readiness: Readiness) -> Router {
    let (api, _) = api().split_for_parts();
    api.method_not_allowed_fallback(|| async { Problem::method_not_allowed() })
        .layer(DefaultBodyLimit::max(BODY_LIMIT_BYTES))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            commands_need_nats,
        ))
        .with_state(state)
        .merge(health::routes(readiness))
        .fallback(|| async { Problem::not_found("no such resource; the API lives under /v1") })
        // INFO, not the default DEBUG: the request span is the root of the execution's trace.
        .layer(
            tower_http::trace::TraceLayer::new_for_http()
                .make_span_with(DefaultMakeSpan::new().level(tracing::Level::INFO)),
        )
}

type ApiResult = Result<Response, Problem>;

/// Refuses a command (any request but a read) while NATS is unreachable, before it is sent:
/// the client would hold its events and store them once NATS is back, after the request had
/// been answered as failed, and a client retrying as told would record the change twice.
async fn commands_need_nats(
    State(app): State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let reads = matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    let connected =
        app.bus.jetstream().client().connection_state() == async_nats::connection::State::Connected;
    if reads || connected {
        return next.run(request).await;
    }
    Problem::unavailable("NATS is unreachable: nothing was written; retry once it is back")
        .into_response()
}

fn unavailable_log(error: ReadError) -> Problem {
    tracing::error!(%error, "event log read failed");
    Problem::unavailable(format!("the event log could not be read: {error}"))
}

fn unavailable_db(error: sqlx::Error) -> Problem {
    tracing::error!(%error, "read model query failed");
    Problem::unavailable("the read models could not be queried; retry shortly")
}

fn publish_failed(error: PublishError) -> Problem {
    match error {
        PublishError::Conflict { .. } => {
            Problem::conflict("another request changed this resource at the same time; retry")
        }
        // The same request would be refused again: the client must change it, not retry.
        PublishError::Nats(error) if cadre_runtime::bus::is_too_large(&error) => {
            tracing::warn!(%error, "event refused as too large");
            Problem::too_large_to_record(&error)
        }
        // Sent, but not confirmed: the log may store it yet.
        PublishError::Nats(error) if error.kind() == PublishErrorKind::TimedOut => {
            tracing::error!(%error, "event append not confirmed");
            Problem::unavailable(
                "the event log did not confirm the change in time: it may still be stored; look \
                 for it before you retry",
            )
        }
        PublishError::Nats(error) => {
            tracing::error!(%error, "event append failed");
            Problem::unavailable(
                "the event log did not store the change; nothing was written, retry",
            )
        }
    }
}

/// A command that did not go through: the domain's refusal as `refused` says, the
/// infrastructure's failure as a 503 or a 409 to retry.
fn command_failed<E: std::error::Error>(
    error: CommandError<E>,
    refused: impl FnOnce(E) -> Problem,
) -> Problem {
    match error {
        CommandError::Rejected(e) => refused(e),
        CommandError::Read(e) => unavailable_log(e),
        CommandError::Publish(e) => publish_failed(e),
        CommandError::Contended => {
            Problem::conflict("too many changes to this resource at once; retry")
        }
    }
}

fn parse_id<T: FromStr>(raw: &str, what: &str) -> Result<T, Problem> {
    raw.parse()
        .map_err(|_| Problem::bad_request(format!("{what} '{raw}' is not a UUID")))
}

fn created(location: String, body: impl Serialize) -> Response {
    (
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        axum::Json(body),
    )
        .into_response()
}

fn found<T: Serialize>(value: Option<T>, missing: impl FnOnce() -> String) -> ApiResult {
    value
        .map(|v| axum::Json(v).into_response())
        .ok_or_else(|| Problem::not_found(missing()))
}

/// The optional body of a control request (cancel, pause, resume): who asks, and why (each at
/// most 1000 characters, not blank).
#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct ControlRequest {
    #[serde(default)]
    #[schema(max_length = 1000, pattern = r"\S")]
    reason: Option<String>,
    #[serde(default)]
    #[schema(max_length = 1000, pattern = r"\S")]
    requested_by: Option<String>,
}

/// Longest `reason` or `requestedBy` of a control request.
const MAX_CONTROL_TEXT: usize = 1000;

/// Reads an optional JSON object body: empty means no fields.
fn optional_body<T: serde::de::DeserializeOwned + Default>(bytes: &[u8]) -> Result<T, Problem> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        Ok(T::default())
    } else {
        body::parse(bytes)
    }
}

fn control_request(bytes: &[u8]) -> Result<Request, Problem> {
    let request: ControlRequest = optional_body(bytes)?;
    let mut errors = Vec::new();
    let request = who_and_why(request.requested_by, request.reason, &mut errors);
    if !errors.is_empty() {
        return Err(Problem::invalid("the request is not valid", errors));
    }
    Ok(request)
}

/// Who asks for a change and why, each at most [`MAX_CONTROL_TEXT`] characters (else an error
/// at `/requestedBy` or `/reason`).
fn who_and_why(
    requested_by: Option<String>,
    reason: Option<String>,
    errors: &mut Vec<crate::domain::validation::FieldError>,
) -> Request {
    for (pointer, text) in [("/reason", &reason), ("/requestedBy", &requested_by)] {
        let message = match text.as_deref() {
            Some(t) if t.chars().count() > MAX_CONTROL_TEXT => {
                format!("must be at most {MAX_CONTROL_TEXT} characters")
            }
            Some(t) if t.trim().is_empty() => "must not be blank; leave it out instead".to_owned(),
            _ => continue,
        };
        errors.push(crate::domain::validation::FieldError {
            pointer: pointer.to_owned(),
            message,
        });
    }
    Request {
        requested_by,
        reason,
    }
}

/// The stream sequence of the last event a command's answer rests on: what it appended, or,
/// when it had nothing to append, the last event of the state it reports.
pub const LOG_POSITION: HeaderName = HeaderName::from_static("cadre-log-position");
/// `current` if the read models covered [`LOG_POSITION`] when the command answered (a query
/// sent now sees the command's effect), `behind` if not.
pub const READ_MODELS: HeaderName = HeaderName::from_static("cadre-read-models");

/// Answers a command whose effect is stored at `position` once the read models cover it, so
/// that the client can read its own write; waits at most `read_your_writes` and not at all
/// while the read models cannot be read (Postgres down: the command has succeeded all the
/// same). Call it with no lock held: others would queue behind the projector.
async fn written(app: &AppState, position: u64, response: Response) -> Response {
    written_within(app, app.read_your_writes, position, response).await
}

/// [`written`], waiting at most `wait` (at most the configured read-your-writes wait).
async fn written_within(
    app: &AppState,
    wait: std::time::Duration,
    position: u64,
    mut response: Response,
) -> Response {
    let wait = wait.min(app.read_your_writes);
    let current = app.read_models.wait_while_readable(position, wait).await;
    if !current {
        let checkpoint = app.read_models.checkpoint();
        if app.read_models.unreadable() {
            tracing::debug!(
                position,
                checkpoint,
                "read models unreadable; answering without them"
            );
        } else if !wait.is_zero() {
            tracing::warn!(
                position,
                checkpoint,
                timeout = ?wait,
                "read models did not reach the command's events in time; answering without them"
            );
        }
    }
    let headers = response.headers_mut();
    headers.insert(LOG_POSITION, HeaderValue::from(position));
    headers.insert(
        READ_MODELS,
        HeaderValue::from_static(if current { "current" } else { "behind" }),
    );
    response
}
