//! Webhook subscriptions end to end: events POSTed as signed CloudEvents, in log order, to a
//! receiver that fails twice before it succeeds; a dead endpoint beside it slows nothing; each
//! try is in the delivery log; a deleted subscription is gone.

// Test code: a panic is the failure report, in helpers as in tests.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use cadre_proto::Envelope;
use cadre_proto::events::types;
use cadre_tests::stack::FAKE_PROVIDER;
use cadre_tests::{Stack, eventually};
use serde_json::{Value, json};
use standardwebhooks::Webhook;

/// What the receiver saw: each request's event type, `webhook-id`, whether its signature held
/// and its content type, and how it answered.
#[derive(Default)]
struct Receiver {
    secret: Option<String>,
    failures_left: u32,
    seen: Vec<(String, String, bool, String, u16)>,
}

type Shared = Arc<Mutex<Receiver>>;

async fn receive(State(receiver): State<Shared>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let mut receiver = receiver.lock().unwrap();
    let verified = Webhook::new(receiver.secret.as_deref().unwrap_or_default())
        .map(|hook| hook.verify(&body, &headers).is_ok())
        .unwrap_or(false);
    let event = Envelope::decode(&body).unwrap();
    let id = headers["webhook-id"].to_str().unwrap().to_owned();
    assert_eq!(
        id,
        event.meta.id.to_string(),
        "webhook-id is the event's id"
    );
    let content_type = headers["content-type"].to_str().unwrap().to_owned();
    let status = if receiver.failures_left > 0 {
        receiver.failures_left -= 1;
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::NO_CONTENT
    };
    let ty = event.event.type_name().to_owned();
    receiver
        .seen
        .push((ty, id, verified, content_type, status.as_u16()));
    status
}

async fn start_receiver(receiver: Shared) -> String {
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new()
        .route("/hook", post(receive))
        .with_state(receiver);
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/hook")
}

/// A URL nothing answers at.
fn dead_url() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("http://127.0.0.1:{port}/gone")
}

#[tokio::test]
async fn events_reach_a_flaky_endpoint_signed_and_in_order_and_a_dead_one_slows_nothing() {
    let stack = Stack::start().await;
    let api = &stack.api;

    // Refused: what cannot be delivered to, or matches no event.
    let reply = api
        .post(
            "/v1/subscriptions",
            &json!({"url": "ftp://example.com/x", "eventTypes": ["dev.cadre.nothing.v1"]}),
        )
        .await;
    assert_eq!(reply.status, 422, "{}", reply.body);
    let pointers: Vec<&str> = reply.body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["pointer"].as_str().unwrap())
        .collect();
    assert_eq!(pointers, ["/url", "/eventTypes/0"]);
    // Nor credentials in the URL (the log keeps it), nor only subscriptions' own events.
    let reply = api
        .post(
            "/v1/subscriptions",
            &json!({"url": "http://user:secret@127.0.0.1:9/hook",
                    "eventTypes": ["dev.cadre.subscription.*", types::SUBSCRIPTION_CREATED]}),
        )
        .await;
    assert_eq!(reply.status, 422, "{}", reply.body);
    let errors = reply.body["errors"].as_array().unwrap();
    let at = |pointer: &str| {
        errors
            .iter()
            .find(|e| e["pointer"] == pointer)
            .map(|e| e["message"].as_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    assert!(at("/url").contains("credentials"), "{errors:?}");
    assert!(!reply.body.to_string().contains("secret"), "{}", reply.body);
    for i in 0..2 {
        assert!(
            at(&format!("/eventTypes/{i}")).contains("never delivered"),
            "{errors:?}"
        );
    }

    let receiver = Shared::new(Mutex::new(Receiver {
        failures_left: 2,
        ..Receiver::default()
    }));
    let url = start_receiver(receiver.clone()).await;
    let made = api
        .post(
            "/v1/subscriptions",
            &json!({
                "url": url,
                "eventTypes": [types::EXECUTION_STARTED, "dev.cadre.execution.comp*"],
                "description": "the run's start and end"
            }),
        )
        .await;
    assert_eq!(made.status, 201, "{}", made.body);
    let flaky = made.body["id"].as_str().unwrap().to_owned();
    let secret = made.body["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"));
    receiver.lock().unwrap().secret = Some(secret);
    let dead = api
        .post("/v1/subscriptions", &json!({"url": dead_url()}))
        .await;
    assert_eq!(dead.status, 201, "{}", dead.body);
    let dead = dead.body["id"].as_str().unwrap().to_owned();
    let listed = api.get("/v1/subscriptions").await.body;
    assert_eq!(listed.as_array().unwrap().len(), 2);
    assert!(
        listed.to_string().find("whsec_").is_none(),
        "the secret is shown once"
    );

    let (_, workflow_id) = api.team_and_pipeline(FAKE_PROVIDER, 2).await;
    let (execution_id, _) = api.start_execution(&workflow_id).await;
    stack
        .wait_until_finished(&execution_id, Duration::from_secs(60))
        .await;

    // The start failed twice (1 s, then 2 s later), then it and the completion arrived.
    eventually(Duration::from_secs(60), "four deliveries", || {
        let seen = receiver.lock().unwrap().seen.len();
        async move { (seen >= 4).then_some(()) }
    })
    .await;
    let seen: Vec<(String, String, bool, String, u16)> = receiver.lock().unwrap().seen.clone();
    let kinds: Vec<(&str, u16)> = seen.iter().map(|s| (s.0.as_str(), s.4)).collect();
    assert_eq!(
        kinds,
        [
            (types::EXECUTION_STARTED, 503),
            (types::EXECUTION_STARTED, 503),
            (types::EXECUTION_STARTED, 204),
            (types::EXECUTION_COMPLETED, 204),
        ]
    );
    assert_eq!(seen[0].1, seen[2].1, "the same event, offered again");
    for (_, _, verified, content_type, _) in &seen {
        assert!(
            verified,
            "every request carries a valid Standard Webhooks signature"
        );
        assert_eq!(content_type, "application/cloudevents+json");
    }

    // The delivery log: each try, with its outcome.
    let log = |id: String| async move {
        api.get(&format!("/v1/subscriptions/{id}/deliveries"))
            .await
            .body
    };
    let tries = log(flaky.clone()).await;
    let tried: Vec<(Value, Value, Value)> = tries
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["attempt"].clone(),
                t["outcome"].clone(),
                t["status"].clone(),
            )
        })
        .collect();
    assert_eq!(
        tried,
        [
            (json!(1), json!("failed"), json!(503)),
            (json!(2), json!("failed"), json!(503)),
            (json!(3), json!("delivered"), json!(204)),
            (json!(1), json!("delivered"), json!(204)),
        ]
    );
    assert_eq!(tries[0]["retryInSeconds"], 1);
    assert_eq!(tries[1]["retryInSeconds"], 2);
    // The dead endpoint's tries failed, with why, while the other was served.
    let dead_tries = log(dead.clone()).await;
    let first = &dead_tries.as_array().unwrap()[0];
    assert_eq!(first["outcome"], "failed");
    assert!(
        first["error"].as_str().unwrap().contains("did not answer"),
        "{first}"
    );

    // Deleted: gone from the list, 404 on its own.
    assert_eq!(
        api.delete(&format!("/v1/subscriptions/{flaky}"))
            .await
            .status,
        204
    );
    assert_eq!(
        api.get(&format!("/v1/subscriptions/{flaky}")).await.status,
        404
    );
    assert_eq!(
        api.delete(&format!("/v1/subscriptions/{flaky}"))
            .await
            .status,
        404
    );
    let listed = api.get("/v1/subscriptions").await.body;
    assert_eq!(listed.as_array().unwrap().len(), 1);
    stack.stop().await;
}
