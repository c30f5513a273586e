//! `/v1/subscriptions`: webhook subscriptions (delivered by [`crate::webhooks`]). Made and
//! deleted as events; read from the log itself (subscriptions are few), so a subscription is
//! visible the moment it is made. The signing secret is shown once, in the answer that makes
//! the subscription, and kept only in a KV bucket outside the log.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use axum::response::IntoResponse;
use base64::Engine;
use serde::{Deserialize, Serialize};

use cadre_proto::events::{SubscriptionCreated, SubscriptionDeleted, types};
use cadre_proto::{Envelope, Event, SubscriptionId, subjects};
use cadre_runtime::bus::Append;

use super::body::Body;
use super::list::ListQuery;
use super::openapi::{
    BadRequest, Conflict, Invalid, NotFound, PageParams, TooLarge, Unavailable,
    UnsupportedMediaType,
};
use super::{ApiResult, AppState, Problem, created, parse_id, publish_failed, unavailable_log};
use crate::domain::validation::{FieldError, error};
use crate::read::{Page, Paged};

/// Longest URL, and most event types, a subscription may name.
const MAX_URL: usize = 2000;
const MAX_EVENT_TYPES: usize = 100;
const MAX_DESCRIPTION: usize = 1000;
/// Live subscriptions a tenant may have: each holds a consumer and a delivery task.
const MAX_SUBSCRIPTIONS: usize = 100;
/// Bytes of a signing key (Standard Webhooks asks for 24 to 64).
const KEY_BYTES: usize = 32;

/// The body of `POST /v1/subscriptions`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct NewSubscription {
    /// Where events are POSTed: an `http` or `https` URL.
    #[schema(max_length = 2000)]
    url: String,
    /// Event types to receive: exact types, or prefixes ending in `*`; none: every type.
    #[serde(default)]
    #[schema(max_items = 100)]
    event_types: Vec<String>,
    #[serde(default)]
    #[schema(max_length = 1000)]
    description: Option<String>,
}

/// The prefix of the subscriptions' own event types.
const SUBSCRIPTION_TYPES: &str = "dev.cadre.subscription.";

impl NewSubscription {
    fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        match reqwest::Url::parse(&self.url) {
            _ if self.url.len() > MAX_URL => {
                errors.push(error(
                    "/url",
                    format!("must be at most {MAX_URL} characters"),
                ));
            }
            // The URL is recorded in the event log, forever and for every reader of it.
            Ok(url) if !url.username().is_empty() || url.password().is_some() => {
                errors.push(error(
                    "/url",
                    "must not carry credentials (user:password@): it is recorded in the event \
                     log; a receiver authenticates Cadre by the webhook signature",
                ));
            }
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {}
            Ok(url) => errors.push(error(
                "/url",
                format!(
                    "must be an http or https URL with a host (this one is '{}:')",
                    url.scheme()
                ),
            )),
            Err(why) => errors.push(error("/url", format!("is not a URL: {why}"))),
        }
        if self.event_types.len() > MAX_EVENT_TYPES {
            errors.push(error(
                "/eventTypes",
                format!("must name at most {MAX_EVENT_TYPES} types"),
            ));
        }
        // A subscription's own facts are never delivered (see `crate::webhooks`).
        let deliverable = || {
            types::ALL
                .iter()
                .filter(|t| !t.starts_with(SUBSCRIPTION_TYPES))
        };
        for (i, wanted) in self.event_types.iter().enumerate() {
            let matches_one = match wanted.strip_suffix('*') {
                Some(prefix) => deliverable().any(|t| t.starts_with(prefix)),
                None => deliverable().any(|t| *t == wanted.as_str()),
            };
            if !matches_one && wanted.starts_with(SUBSCRIPTION_TYPES) {
                errors.push(error(
                    format!("/eventTypes/{i}"),
                    format!(
                        "'{wanted}' names only subscriptions' own events, which are never \
                         delivered; read a subscription's deliveries at \
                         GET /v1/subscriptions/{{id}}/deliveries"
                    ),
                ));
            } else if !matches_one {
                errors.push(error(
                    format!("/eventTypes/{i}"),
                    format!(
                        "'{wanted}' is no event type Cadre stores; name one (such as '{}') or a \
                         prefix ending in '*' (such as 'dev.cadre.execution.*'); \
                         docs/events.md lists them",
                        types::EXECUTION_COMPLETED
                    ),
                ));
            }
        }
        if self
            .description
            .as_ref()
            .is_some_and(|d| d.chars().count() > MAX_DESCRIPTION)
        {
            errors.push(error(
                "/description",
                format!("must be at most {MAX_DESCRIPTION} characters"),
            ));
        }
        errors
    }
}

/// A subscription as the API shows it (never its secret).
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct SubscriptionView {
    #[schema(value_type = uuid::Uuid)]
    id: SubscriptionId,
    url: String,
    event_types: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    created_at: chrono::DateTime<chrono::Utc>,
}

impl SubscriptionView {
    fn of(created: SubscriptionCreated, at: chrono::DateTime<chrono::Utc>) -> Self {
        Self {
            id: created.subscription_id,
            url: created.url,
            event_types: created.event_types,
            description: created.description,
            created_at: at,
        }
    }
}

/// A subscription just made, with its signing secret.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct CreatedSubscription {
    #[serde(flatten)]
    subscription: SubscriptionView,
    /// The Standard Webhooks signing secret (`whsec_` and base64): shown this once.
    secret: String,
}

/// One try to deliver an event, as `GET /v1/subscriptions/{id}/deliveries` lists it.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct DeliveryView {
    #[schema(value_type = uuid::Uuid)]
    event_id: cadre_proto::EventId,
    event_type: String,
    /// 1 for the first try of the event.
    attempt: u32,
    /// `delivered` or `failed`.
    outcome: &'static str,
    /// The endpoint's HTTP status; absent when it did not answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<u16>,
    duration_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    /// When the next try comes; absent after a success or the last try allowed.
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_in_seconds: Option<u64>,
    at: chrono::DateTime<chrono::Utc>,
}

/// `POST /v1/subscriptions` `{url, eventTypes?, description?}` → 201 with the subscription and
/// its `secret` (`whsec_…`, shown this once), 422 naming each field that is wrong.
#[utoipa::path(
    post,
    path = "/v1/subscriptions",
    tag = "subscriptions",
    request_body = NewSubscription,
    responses(
        (status = 201, description = "Made; the secret is shown this once", body = CreatedSubscription,
         headers(("Location" = String, description = "The subscription's URL"))),
        BadRequest, Conflict, TooLarge, UnsupportedMediaType, Invalid, Unavailable,
    )
)]
pub(super) async fn create(
    State(app): State<AppState>,
    Body(new): Body<NewSubscription>,
) -> ApiResult {
    let errors = new.validate();
    if !errors.is_empty() {
        return Err(Problem::invalid("the subscription is not valid", errors));
    }
    if live(&app).await?.len() >= MAX_SUBSCRIPTIONS {
        return Err(Problem::conflict(format!(
            "there are {MAX_SUBSCRIPTIONS} subscriptions already, the most a tenant may have: \
             delete one first (DELETE /v1/subscriptions/{{id}})"
        )));
    }
    let mut key = [0u8; KEY_BYTES];
    getrandom::fill(&mut key).map_err(|why| {
        tracing::error!(%why, "no randomness for a signing key");
        Problem::unavailable("no signing key could be made; retry")
    })?;
    let id = SubscriptionId::new();
    // The key first: a subscription in the log always has its key.
    app.webhook_secrets
        .put(id.to_string(), key.to_vec().into())
        .await
        .map_err(|why| {
            tracing::error!(%why, "storing a webhook signing key failed");
            Problem::unavailable("the signing key could not be stored; nothing was made, retry")
        })?;
    let subscription = SubscriptionCreated {
        subscription_id: id,
        url: new.url,
        event_types: new.event_types,
        description: new.description,
    };
    let envelope = Envelope::new(
        "/cadre/coordinator",
        app.tenant.clone(),
        chrono::Utc::now(),
        Event::SubscriptionCreated(subscription.clone()),
    );
    app.bus
        .publish(&envelope, Append::Any)
        .await
        .map_err(publish_failed)?;
    let body = CreatedSubscription {
        subscription: SubscriptionView::of(subscription, envelope.meta.time),
        secret: format!(
            "whsec_{}",
            base64::engine::general_purpose::STANDARD.encode(key)
        ),
    };
    Ok(created(format!("/v1/subscriptions/{id}"), body))
}

/// The tenant's live subscriptions, oldest first, as the log holds them now.
async fn live(app: &AppState) -> Result<BTreeMap<SubscriptionId, SubscriptionView>, Problem> {
    let fact = |fact| subjects::tenant_subscriptions(&app.tenant, fact);
    let made = app
        .bus
        .read_all(&fact(subjects::CREATED))
        .await
        .map_err(unavailable_log)?;
    let deleted = app
        .bus
        .read_all(&fact(subjects::DELETED))
        .await
        .map_err(unavailable_log)?;
    let mut live: BTreeMap<SubscriptionId, SubscriptionView> = made
        .into_iter()
        .filter_map(|stored| match stored.envelope.event {
            Event::SubscriptionCreated(e) => Some((
                e.subscription_id,
                SubscriptionView::of(e, stored.envelope.meta.time),
            )),
            _ => None,
        })
        .collect();
    for stored in deleted {
        if let Event::SubscriptionDeleted(e) = stored.envelope.event {
            live.remove(&e.subscription_id);
        }
    }
    Ok(live)
}

/// The page of `rows` (in list order, each with its sort key) that `page` asks for.
fn page_of<T, K: PartialOrd + Copy>(
    rows: impl IntoIterator<Item = (K, T)>,
    page: &Page<K>,
) -> Paged<T, K> {
    let limit = usize::try_from(page.fetch()).unwrap_or(usize::MAX);
    let rows: Vec<(K, T)> = rows
        .into_iter()
        .filter(|(key, _)| page.after.is_none_or(|after| *key > after))
        .take(limit)
        .collect();
    Paged::of(rows, page, |(key, _)| *key).map(|(_, row)| row)
}

/// `GET /v1/subscriptions`: the live subscriptions, oldest first (by id, which grows with time).
#[utoipa::path(
    get,
    path = "/v1/subscriptions",
    tag = "subscriptions",
    params(PageParams),
    responses((status = 200, description = "Subscriptions", body = Vec<SubscriptionView>, headers(("Link" = String, description = "The next page (`<…>; rel=\"next\"`), when more items follow"))), BadRequest, Unavailable)
)]
pub(super) async fn list(State(app): State<AppState>, uri: Uri) -> ApiResult {
    let query = ListQuery::read(&uri, "subscriptions", &[])?;
    let page = query.page()?;
    let all = live(&app).await?;
    Ok(query.answer(page_of(all.into_iter().map(|(id, s)| (id.0, s)), &page)))
}

async fn one(app: &AppState, raw: &str) -> Result<SubscriptionView, Problem> {
    let id: SubscriptionId = parse_id(raw, "subscription id")?;
    live(app)
        .await?
        .remove(&id)
        .ok_or_else(|| Problem::not_found(format!("no live subscription has the id {id}")))
}

/// `GET /v1/subscriptions/{id}`.
#[utoipa::path(
    get,
    path = "/v1/subscriptions/{id}",
    tag = "subscriptions",
    params(("id" = uuid::Uuid, Path, description = "The subscription's id")),
    responses((status = 200, description = "The subscription", body = SubscriptionView), BadRequest, NotFound, Unavailable)
)]
pub(super) async fn get(State(app): State<AppState>, Path(raw): Path<String>) -> ApiResult {
    Ok(axum::Json(one(&app, &raw).await?).into_response())
}

/// `DELETE /v1/subscriptions/{id}` → 204; nothing more is delivered to it.
#[utoipa::path(
    delete,
    path = "/v1/subscriptions/{id}",
    tag = "subscriptions",
    params(("id" = uuid::Uuid, Path, description = "The subscription's id")),
    responses((status = 204, description = "Deleted"), BadRequest, NotFound, Unavailable)
)]
pub(super) async fn delete(State(app): State<AppState>, Path(raw): Path<String>) -> ApiResult {
    let subscription = one(&app, &raw).await?;
    let envelope = Envelope::new(
        "/cadre/coordinator",
        app.tenant.clone(),
        chrono::Utc::now(),
        Event::SubscriptionDeleted(SubscriptionDeleted {
            subscription_id: subscription.id,
        }),
    );
    app.bus
        .publish(&envelope, Append::Any)
        .await
        .map_err(publish_failed)?;
    if let Err(why) = app.webhook_secrets.purge(subscription.id.to_string()).await {
        // Harmless: nothing signs with it any more. Say so for whoever cleans up.
        tracing::warn!(%why, subscription = %subscription.id, "the deleted subscription's key stays");
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /v1/subscriptions/{id}/deliveries`: every try to deliver to it, in the order tried.
#[utoipa::path(
    get,
    path = "/v1/subscriptions/{id}/deliveries",
    tag = "subscriptions",
    params(("id" = uuid::Uuid, Path, description = "The subscription's id"), PageParams),
    responses((status = 200, description = "The delivery log", body = Vec<DeliveryView>, headers(("Link" = String, description = "The next page (`<…>; rel=\"next\"`), when more items follow"))), BadRequest, NotFound, Unavailable)
)]
pub(super) async fn deliveries(
    State(app): State<AppState>,
    Path(raw): Path<String>,
    uri: Uri,
) -> ApiResult {
    let query = ListQuery::read(&uri, "deliveries", &[])?;
    let page = query.page()?;
    let id: SubscriptionId = parse_id(&raw, "subscription id")?;
    let made = app
        .bus
        .last_event(&subjects::subscription(&app.tenant, id, subjects::CREATED))
        .await
        .map_err(unavailable_log)?;
    if made.is_none() {
        return Err(Problem::not_found(format!(
            "no subscription has the id {id}"
        )));
    }
    let tries = app
        .bus
        .read_all(&subjects::subscription(&app.tenant, id, "*"))
        .await
        .map_err(unavailable_log)?;
    let rows = tries.into_iter().filter_map(|stored| {
        let sequence = i64::try_from(stored.sequence).unwrap_or(i64::MAX);
        let at = stored.envelope.meta.time;
        let (tried, outcome, error, retry_in_seconds) = match stored.envelope.event {
            Event::WebhookDelivered(d) => (d, "delivered", None, None),
            Event::WebhookDeliveryFailed(f) => {
                (f.delivery, "failed", Some(f.error), f.retry_in_seconds)
            }
            _ => return None,
        };
        Some((
            sequence,
            DeliveryView {
                event_id: tried.event_id,
                event_type: tried.event_type,
                attempt: tried.attempt,
                outcome,
                status: tried.status,
                duration_ms: tried.duration_ms,
                error,
                retry_in_seconds,
                at,
            },
        ))
    });
    Ok(query.answer(page_of(rows, &page)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_unknown_field_of_a_subscription_is_named() {
        let body = br#"{"url": "http://127.0.0.1:9/x", "secret": "mine", "colour": "red"}"#;
        let Err(problem) = super::super::body::parse::<NewSubscription>(body) else {
            panic!("accepted")
        };
        let pointers: Vec<&str> = problem.errors.iter().map(|e| e.pointer.as_str()).collect();
        assert_eq!(pointers, ["/secret", "/colour"]);
    }
}
