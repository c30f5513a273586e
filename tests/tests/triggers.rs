//! What starts runs on its own, end to end: a workflow's schedule (a JetStream cron schedule),
//! CloudEvents on its trigger subject, and another workflow's run completing.

// Test code: a panic is the failure report, in helpers as in tests.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use cadre_proto::timers::Timer;
use cadre_proto::{TenantId, WorkflowId, streams, subjects};
use cadre_tests::api::{agent, pipeline};
use cadre_tests::{Stack, eventually};
use serde_json::{Value, json};

const FINISH: Duration = Duration::from_secs(60);

/// A one-step workflow on the offline provider with `triggers`; returns its id.
async fn workflow(stack: &Stack, name: &str, triggers: Value) -> String {
    let ada = stack
        .api
        .register_agent(&agent("Ada", "analyst", &["research"], "offline"))
        .await;
    let ids = vec![ada["id"].as_str().unwrap().to_owned()];
    let mut body = pipeline(name, &ids, &[&["research"]], 1);
    body["configuration"]["triggers"] = triggers;
    stack.api.create_workflow(&body).await["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The workflow's runs, from the read models, once `enough` of them have finished.
async fn finished_runs(stack: &Stack, workflow_id: &str, enough: usize) -> Vec<Value> {
    eventually(FINISH, "the triggered runs to finish", || async {
        let runs = stack
            .api
            .get(&format!("/v1/workflows/{workflow_id}/executions"))
            .await
            .body;
        let runs: Vec<Value> = runs.as_array()?.clone();
        let done = runs.iter().filter(|r| r["status"] == "completed").count();
        (done >= enough).then_some(runs)
    })
    .await
}

#[tokio::test]
async fn a_schedule_starts_runs_until_its_workflow_is_paused() {
    let stack = Stack::start().await;
    let workflow_id = workflow(&stack, "Every second", json!({"schedule": "* * * * * *"})).await;
    let runs = finished_runs(&stack, &workflow_id, 2).await;
    assert!(
        runs.iter()
            .all(|r| r["triggerReason"] == "scheduled" && r["triggeredBy"] == "schedule"),
        "{runs:#?}"
    );

    let paused = stack
        .api
        .post(&format!("/v1/workflows/{workflow_id}/pause"), &json!({}))
        .await;
    assert_eq!(paused.status, 200, "{}", paused.body);
    let schedule = Timer::Schedule {
        workflow_id: WorkflowId(workflow_id.parse().unwrap()),
    }
    .schedule_subject(&TenantId::default_tenant());
    eventually(FINISH, "the schedule to be disarmed", || async {
        stack
            .bus
            .timers_stream()
            .get_last_raw_message_by_subject(&schedule)
            .await
            .is_err()
            .then_some(())
    })
    .await;
    stack.stop().await;
}

#[tokio::test]
async fn a_cloud_event_on_the_trigger_subject_starts_one_run_with_the_event_as_input() {
    let stack = Stack::start().await;
    let workflow_id = workflow(&stack, "On deploy", json!({"events": true})).await;
    let closed = workflow(&stack, "No events", json!({})).await;
    let tenant = TenantId::default_tenant();
    let js = stack.bus.jetstream();
    let subject = |id: &str| subjects::trigger(&tenant, WorkflowId(id.parse().unwrap()));
    let event = json!({
        "specversion": "1.0", "id": "deploy-77", "source": "/ci/pipeline", "type": "com.example.deployed",
        "datacontenttype": "application/json", "data": {"service": "billing", "version": "1.4.2"}
    });
    let publish = |subject: String, body: Vec<u8>, id: &'static str| async move {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", id);
        js.publish_with_headers(subject, headers, body.into())
            .await
            .unwrap()
            .await
            .unwrap();
    };
    publish(subject(&workflow_id), event.to_string().into_bytes(), "m1").await;
    // The same CloudEvent again, past JetStream's own duplicate check: still one run.
    publish(subject(&workflow_id), event.to_string().into_bytes(), "m2").await;
    // And sent again with the time the sender stamps on each send: the same event (its
    // source and id say so), so still one run, and the copy settled.
    let mut stamped = event.clone();
    stamped["time"] = json!("2026-12-06T20:00:00Z");
    publish(
        subject(&workflow_id),
        stamped.to_string().into_bytes(),
        "m2b",
    )
    .await;
    // What cannot start a run is terminated with a reason, and blocks nothing.
    publish(subject(&workflow_id), b"{\"hello\": 1}".to_vec(), "m3").await;
    publish(subject(&closed), event.to_string().into_bytes(), "m4").await;

    let runs = finished_runs(&stack, &workflow_id, 1).await;
    let run = stack
        .api
        .get(&format!(
            "/v1/executions/{}",
            runs[0]["id"].as_str().unwrap()
        ))
        .await
        .body;
    assert_eq!(run["triggerReason"], "event");
    assert_eq!(run["triggeredBy"], "com.example.deployed from /ci/pipeline");
    assert_eq!(
        run["executionContext"]["event"]["data"]["service"],
        "billing"
    );
    // Every trigger message is settled: the consumer has nothing left.
    eventually(FINISH, "every trigger message to be settled", || async {
        let info = stack
            .bus
            .jetstream()
            .get_stream(streams::TRIGGERS_STREAM)
            .await
            .ok()?
            .consumer_info(streams::COORDINATOR_TRIGGERS_CONSUMER)
            .await
            .ok()?;
        (info.num_pending == 0 && info.num_ack_pending == 0).then_some(())
    })
    .await;
    let runs = stack
        .api
        .get(&format!("/v1/workflows/{workflow_id}/executions"))
        .await
        .body;
    assert_eq!(runs.as_array().unwrap().len(), 1, "{runs:#}");
    let none = stack
        .api
        .get(&format!("/v1/workflows/{closed}/executions"))
        .await
        .body;
    assert_eq!(none.as_array().unwrap().len(), 0);
    stack.stop().await;
}

#[tokio::test]
async fn a_completed_run_starts_the_workflows_that_follow_it() {
    let stack = Stack::start().await;
    let upstream = workflow(&stack, "Build", json!({})).await;
    let downstream = workflow(&stack, "Deploy", json!({"afterWorkflows": [upstream]})).await;
    let (execution_id, _) = stack.api.start_execution(&upstream).await;
    let runs = finished_runs(&stack, &downstream, 1).await;
    let run = stack
        .api
        .get(&format!(
            "/v1/executions/{}",
            runs[0]["id"].as_str().unwrap()
        ))
        .await
        .body;
    assert_eq!(run["triggerReason"], "dependency");
    assert_eq!(
        run["executionContext"]["upstream"]["executionId"],
        execution_id.as_str()
    );
    let unknown = uuid::Uuid::now_v7();
    let ada = stack
        .api
        .register_agent(&agent("Bo", "analyst", &["research"], "offline"))
        .await;
    let mut body = pipeline(
        "Orphan",
        &[ada["id"].as_str().unwrap().to_owned()],
        &[&["research"]],
        1,
    );
    body["configuration"]["triggers"] = json!({"afterWorkflows": [unknown]});
    let refused = stack.api.post("/v1/workflows", &body).await;
    assert_eq!(refused.status, 422, "{}", refused.body);
    assert_eq!(
        refused.body["errors"][0]["pointer"],
        "/configuration/triggers/afterWorkflows/0"
    );
    stack.stop().await;
}
