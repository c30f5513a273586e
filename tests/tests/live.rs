//! Live feeds of the event log as server-sent events: an execution's events (and its
//! interactions) from its start,
//! resumed after `Last-Event-ID`, ending with the run; and the tenant's feed, live, whole or
//! of some types.

// Test code: a panic is the failure report, in helpers as in tests.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use cadre_proto::Envelope;
use cadre_proto::events::types;
use cadre_tests::Stack;
use cadre_tests::stack::FAKE_PROVIDER;
use eventsource_stream::Event as SseEvent;
use futures::StreamExt;

const FINISH: Duration = Duration::from_secs(60);

/// Every event of a feed that ends on its own, within the time a run takes.
async fn to_the_end(feed: impl futures::Stream<Item = SseEvent> + Unpin) -> Vec<SseEvent> {
    tokio::time::timeout(FINISH, feed.collect::<Vec<_>>())
        .await
        .expect("the feed ends with the run")
}

#[tokio::test]
async fn an_execution_feed_replays_then_follows_resumes_after_an_id_and_ends_with_the_run() {
    let stack = Stack::start().await;
    let (_, workflow_id) = stack.api.team_and_pipeline(FAKE_PROVIDER, 3).await;

    // The tenant's feed is live: it shows what happens after it was opened.
    let mut tenant = stack.api.events("/v1/events", None).await.unwrap();
    // Or only the types a client asks for: a run's start and end, nothing between.
    let typed = format!(
        "/v1/events?workflowId={workflow_id}&types={},{}",
        types::EXECUTION_STARTED,
        types::EXECUTION_COMPLETED
    );
    let mut typed = stack.api.events(&typed, None).await.unwrap();
    let (execution_id, _) = stack.api.start_execution(&workflow_id).await;
    let first = tokio::time::timeout(FINISH, tenant.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.event, types::EXECUTION_STARTED);

    let path = format!("/v1/executions/{execution_id}/events");
    let events = to_the_end(stack.api.events(&path, None).await.unwrap()).await;
    let kinds: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(kinds.first(), Some(&types::EXECUTION_STARTED));
    assert_eq!(kinds.last(), Some(&types::EXECUTION_COMPLETED), "{kinds:?}");
    assert_eq!(
        kinds
            .iter()
            .filter(|k| **k == types::STEP_COMPLETED)
            .count(),
        3
    );
    // What the agents told their team comes with each step's completion.
    let told: Vec<String> = events
        .iter()
        .filter(|e| e.event == types::STEP_COMPLETED)
        .flat_map(|e| {
            let data: serde_json::Value = serde_json::from_str(&e.data).unwrap();
            data["data"]["told"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(|t| t["type"].as_str().unwrap().to_owned())
        })
        .collect();
    assert!(
        told.iter().any(|t| t == types::INTERACTION_RECORDED),
        "the run's interactions are in its feed: {told:?}"
    );
    let ids: Vec<u64> = events.iter().map(|e| e.id.parse().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "in log order: {ids:?}");
    for event in &events {
        // Each is the stored CloudEvent itself.
        let envelope = Envelope::decode(event.data.as_bytes()).unwrap();
        assert_eq!(envelope.event.type_name(), event.event);
    }

    let mut ends = Vec::new();
    for _ in 0..2 {
        let event = tokio::time::timeout(FINISH, typed.next())
            .await
            .unwrap()
            .unwrap();
        ends.push(event.event);
    }
    assert_eq!(ends, [types::EXECUTION_STARTED, types::EXECUTION_COMPLETED]);

    // A client that reconnects goes on after the last id it saw, missing nothing.
    let resumed = to_the_end(stack.api.events(&path, Some(&events[2].id)).await.unwrap()).await;
    let resumed_ids: Vec<&str> = resumed.iter().map(|e| e.id.as_str()).collect();
    let expected: Vec<&str> = events[3..].iter().map(|e| e.id.as_str()).collect();
    assert_eq!(resumed_ids, expected);

    // Refusals are problems, not feeds.
    let Err(reply) = stack.api.events(&path, Some("yesterday")).await else {
        panic!("a bad Last-Event-ID is refused")
    };
    assert_eq!(reply.status, 400);
    assert!(
        reply.body["detail"]
            .as_str()
            .unwrap()
            .contains("'yesterday' is not an event's sequence"),
        "{}",
        reply.body
    );
    let Err(reply) = stack
        .api
        .events("/v1/events?types=dev.cadre.execution.finished.v1", None)
        .await
    else {
        panic!("an unknown type is refused")
    };
    assert_eq!(reply.status, 400);
    // No type at all would follow every event: refused as empty, workflow or not.
    let Err(reply) = stack.api.events("/v1/events?types=,", None).await else {
        panic!("an empty list of types is refused")
    };
    assert_eq!(reply.status, 400);
    assert!(
        reply.body["detail"]
            .as_str()
            .unwrap()
            .contains("'types' is empty"),
        "{}",
        reply.body
    );
    // A misspelt parameter would follow every event of the tenant: refused, naming it.
    let Err(reply) = stack.api.events("/v1/events?workflowID=x", None).await else {
        panic!("an unknown parameter is refused")
    };
    assert_eq!(reply.status, 400);
    assert!(
        reply.body["detail"]
            .as_str()
            .unwrap()
            .contains("unknown query parameter 'workflowID'"),
        "{}",
        reply.body
    );
    let ghost = uuid::Uuid::now_v7();
    let Err(reply) = stack
        .api
        .events(&format!("/v1/executions/{ghost}/events"), None)
        .await
    else {
        panic!("an unknown execution has no feed")
    };
    assert_eq!(reply.status, 404);
    // Nor has an unknown workflow: its feed would stay silent forever.
    let Err(reply) = stack
        .api
        .events(&format!("/v1/events?workflowId={ghost}"), None)
        .await
    else {
        panic!("an unknown workflow has no feed")
    };
    assert_eq!(reply.status, 404);
    assert!(
        reply.body["detail"]
            .as_str()
            .unwrap()
            .contains(&format!("no workflow has the id {ghost}")),
        "{}",
        reply.body
    );
    stack.stop().await;
}
