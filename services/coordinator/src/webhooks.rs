//! Webhook delivery: each subscription's events POSTed to its URL as CloudEvents in HTTP
//! structured mode (`application/cloudevents+json`, the event exactly as stored), signed the
//! Standard Webhooks way (`webhook-id` = the event id, `webhook-timestamp`,
//! `webhook-signature`).
//!
//! Each subscription has its own durable JetStream consumer with one event in flight: the
//! endpoint sees events in log order, a failing or dead endpoint holds back only its own
//! deliveries, and a delivery survives a coordinator restart (any replica may deliver; the
//! consumer hands each event to one). A try that fails (not 2xx, refused, timed out) is
//! offered again after [`streams::WEBHOOK_BACKOFF`], at most [`streams::WEBHOOK_MAX_ATTEMPTS`]
//! times. Every try is recorded in the log (`WebhookDelivered`, `WebhookDeliveryFailed`): the
//! delivery log. A subscription's own facts are never delivered, so a record cannot cause a
//! delivery.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{self, DeliverPolicy};
use async_nats::jetstream::{AckKind, kv};
use chrono::Utc;
use futures::StreamExt;
use standardwebhooks::Webhook;
use tokio_util::sync::CancellationToken;

use cadre_proto::events::{SubscriptionCreated, WebhookDelivery, WebhookDeliveryFailed};
use cadre_proto::{Envelope, Event, EventId, SubscriptionId, TenantId, streams, subjects};
use cadre_runtime::bus::{Append, EventBus, NatsError};

/// The CloudEvents `source` of delivery records.
const SOURCE: &str = "/cadre/coordinator";
/// How long an endpoint has to answer.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest wait between two tries of a failed read of the log.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);

/// Delivers until `shutdown`: follows the subscriptions as they are made and deleted, one
/// delivery task each. A failed read of the log starts over (the tasks' consumers are durable:
/// nothing is delivered twice because of it, beyond at-least-once).
pub async fn run(bus: EventBus, secrets: kv::Store, shutdown: CancellationToken) {
    let http = match reqwest::Client::builder().timeout(DELIVERY_TIMEOUT).build() {
        Ok(http) => http,
        Err(error) => {
            tracing::error!(%error, "no HTTP client for webhooks; nothing will be delivered");
            return;
        }
    };
    let mut delay = Duration::from_secs(1);
    loop {
        let tasks = CancellationToken::new();
        let outcome = follow(&bus, &secrets, &http, &shutdown, &tasks).await;
        tasks.cancel();
        match outcome {
            Ok(()) => return,
            Err(error) => {
                tracing::warn!(%error, ?delay, "following webhook subscriptions failed; starting over");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(MAX_RETRY_DELAY);
            }
        }
    }
}

/// Reads every subscription's `created` and `deleted` from the log's start, keeping one
/// delivery task per live subscription.
async fn follow(
    bus: &EventBus,
    secrets: &kv::Store,
    http: &reqwest::Client,
    shutdown: &CancellationToken,
    tasks: &CancellationToken,
) -> Result<(), NatsError> {
    let consumer = bus
        .stream()
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subjects: vec![
                subjects::all_subscriptions(subjects::CREATED),
                subjects::all_subscriptions(subjects::DELETED),
            ],
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    let mut running: HashMap<SubscriptionId, CancellationToken> = HashMap::new();
    loop {
        let message = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            next = messages.next() => match next {
                Some(message) => message?,
                None => return Err("the subscriptions' consumer ended".into()),
            },
        };
        let Ok(envelope) = Envelope::decode(&message.payload) else {
            continue;
        };
        match envelope.event {
            Event::SubscriptionCreated(subscription) => {
                let sequence = message.info()?.stream_sequence;
                let stop = tasks.child_token();
                running.insert(subscription.subscription_id, stop.clone());
                tokio::spawn(deliver(
                    Delivery {
                        bus: bus.clone(),
                        secrets: secrets.clone(),
                        http: http.clone(),
                        tenant: envelope.meta.tenant,
                        subscription,
                        start_sequence: sequence + 1,
                    },
                    stop,
                ));
            }
            Event::SubscriptionDeleted(deleted) => {
                if let Some(stop) = running.remove(&deleted.subscription_id) {
                    stop.cancel();
                }
                let name = streams::webhook_consumer_name(deleted.subscription_id);
                // Gone already (another replica deleted it) is as good as deleted.
                let _ = bus.stream().delete_consumer(&name).await;
            }
            _ => {}
        }
    }
}

struct Delivery {
    bus: EventBus,
    secrets: kv::Store,
    http: reqwest::Client,
    tenant: TenantId,
    subscription: SubscriptionCreated,
    start_sequence: u64,
}

/// One subscription's deliveries, until `stop`; a failure of the log starts it over.
async fn deliver(delivery: Delivery, stop: CancellationToken) {
    let mut delay = Duration::from_secs(1);
    loop {
        match deliver_from_consumer(&delivery, &stop).await {
            Ok(()) => return,
            Err(error) => {
                tracing::warn!(%error, subscription = %delivery.subscription.subscription_id,
                    ?delay, "webhook delivery interrupted; starting over");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(MAX_RETRY_DELAY);
            }
        }
    }
}

async fn deliver_from_consumer(
    delivery: &Delivery,
    stop: &CancellationToken,
) -> Result<(), NatsError> {
    // Deleted while this task was starting (its `created` and `deleted` read together): do
    // not create the consumer the deletion removed.
    if stop.is_cancelled() {
        return Ok(());
    }
    let id = delivery.subscription.subscription_id;
    let key = delivery
        .secrets
        .get(id.to_string())
        .await?
        .ok_or("the subscription's signing key is missing")?;
    let signer = Webhook::from_bytes(key.to_vec())?;
    let consumer = delivery
        .bus
        .stream()
        .get_or_create_consumer(
            &streams::webhook_consumer_name(id),
            streams::webhook_consumer(&delivery.tenant, id, delivery.start_sequence),
        )
        .await?;
    let mut messages = consumer.messages().await?;
    loop {
        let message = tokio::select! {
            () = stop.cancelled() => return Ok(()),
            next = messages.next() => match next {
                Some(message) => message?,
                None => return Err("the subscription's consumer ended".into()),
            },
        };
        let wanted = (!subjects::is_subscription_fact(&message.subject))
            .then(|| Stored::read(&message.payload))
            .flatten()
            .filter(|stored| delivery.subscription.wants(&stored.event_type));
        let Some(stored) = wanted else {
            message.ack().await?;
            continue;
        };
        let attempt = u32::try_from(message.info()?.delivered).unwrap_or(u32::MAX);
        let outcome = post(delivery, &signer, &stored, &message.payload).await;
        let record = record(delivery, &stored, attempt, outcome);
        let retry = match &record {
            Event::WebhookDeliveryFailed(failed) => Some(failed.retry_in_seconds),
            _ => None,
        };
        // The try is in the delivery log before its message is settled.
        let envelope = Envelope::with_id(
            EventId::derive(Utc::now(), id.0, &format!("{}/{attempt}", stored.event_id)),
            SOURCE,
            delivery.tenant.clone(),
            Utc::now(),
            record,
        );
        delivery
            .bus
            .publish(&envelope, Append::Any)
            .await
            .map_err(|error| error.to_string())?;
        let settle = match retry {
            None => AckKind::Ack,
            Some(Some(seconds)) => AckKind::Nak(Some(Duration::from_secs(seconds))),
            Some(None) => AckKind::Term,
        };
        message.ack_with(settle).await?;
    }
}

/// What a delivery needs of a stored event; `None` for a message that is not a CloudEvent.
struct Stored {
    event_id: EventId,
    event_type: String,
}

impl Stored {
    /// Read without decoding the payload: a type this build does not know is delivered too.
    fn read(payload: &[u8]) -> Option<Self> {
        #[derive(serde::Deserialize)]
        struct Head {
            id: EventId,
            #[serde(rename = "type")]
            event_type: String,
        }
        let head: Head = serde_json::from_slice(payload).ok()?;
        Some(Self {
            event_id: head.id,
            event_type: head.event_type,
        })
    }
}

/// How the endpoint answered: its status, or why there was none; and how long it took.
struct Answer {
    status: Option<u16>,
    error: Option<String>,
    took: Duration,
}

async fn post(delivery: &Delivery, signer: &Webhook, stored: &Stored, payload: &[u8]) -> Answer {
    let started = Instant::now();
    let timestamp = Utc::now().timestamp();
    let signature = match signer.sign(&stored.event_id.to_string(), timestamp, payload) {
        Ok(signature) => signature,
        Err(error) => {
            return Answer {
                status: None,
                error: Some(format!("the event could not be signed: {error}")),
                took: started.elapsed(),
            };
        }
    };
    let sent = delivery
        .http
        .post(&delivery.subscription.url)
        .header("content-type", "application/cloudevents+json")
        .header(
            standardwebhooks::HEADER_WEBHOOK_ID,
            stored.event_id.to_string(),
        )
        .header(
            standardwebhooks::HEADER_WEBHOOK_TIMESTAMP,
            timestamp.to_string(),
        )
        .header(standardwebhooks::HEADER_WEBHOOK_SIGNATURE, signature)
        .body(payload.to_vec())
        .send()
        .await;
    let took = started.elapsed();
    match sent {
        Ok(response) if response.status().is_success() => Answer {
            status: Some(response.status().as_u16()),
            error: None,
            took,
        },
        Ok(response) => Answer {
            status: Some(response.status().as_u16()),
            error: Some(format!(
                "{} answered HTTP {}",
                delivery.subscription.url,
                response.status()
            )),
            took,
        },
        Err(error) => Answer {
            status: None,
            error: Some(format!(
                "{} did not answer: {}",
                delivery.subscription.url,
                if error.is_timeout() {
                    format!("no answer within {} s", DELIVERY_TIMEOUT.as_secs())
                } else {
                    error.to_string()
                }
            )),
            took,
        },
    }
}

/// The delivery log's record of try `attempt`.
fn record(delivery: &Delivery, stored: &Stored, attempt: u32, answer: Answer) -> Event {
    let tried = WebhookDelivery {
        subscription_id: delivery.subscription.subscription_id,
        event_id: stored.event_id,
        event_type: stored.event_type.clone(),
        attempt,
        status: answer.status,
        duration_ms: u64::try_from(answer.took.as_millis()).unwrap_or(u64::MAX),
    };
    match answer.error {
        None => Event::WebhookDelivered(tried),
        Some(error) => Event::WebhookDeliveryFailed(Box::new(WebhookDeliveryFailed {
            delivery: tried,
            error,
            retry_in_seconds: retry_after(attempt).map(|wait| wait.as_secs()),
        })),
    }
}

/// The wait before the try after `attempt`, or `None` when that was the last allowed.
fn retry_after(attempt: u32) -> Option<Duration> {
    let backoff = &streams::WEBHOOK_BACKOFF;
    (attempt < streams::WEBHOOK_MAX_ATTEMPTS).then(|| {
        let index = usize::try_from(attempt.saturating_sub(1)).unwrap_or(usize::MAX);
        backoff[index.min(backoff.len() - 1)]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_tries_wait_longer_each_time_until_the_last_allowed() {
        let waits: Vec<Option<u64>> = (1..=streams::WEBHOOK_MAX_ATTEMPTS)
            .map(|attempt| retry_after(attempt).map(|d| d.as_secs()))
            .collect();
        assert_eq!(
            waits,
            [
                Some(1),
                Some(2),
                Some(5),
                Some(30),
                Some(120),
                Some(600),
                Some(3600),
                None
            ]
        );
    }
}
