//! Every message carries W3C trace context, and one execution is one trace: from the HTTP
//! request that started it, through the coordinator and the workers, to its last event.

// Test code: a panic is the failure report, in helpers as in tests.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use async_nats::jetstream::consumer::pull::OrderedConfig;
use cadre_tests::Stack;
use futures::StreamExt;

#[tokio::test]
async fn one_execution_is_one_trace_across_every_service() {
    // The services' own telemetry set-up (OpenTelemetry SDK, no exporter), as in production.
    let _telemetry = cadre_runtime::telemetry::init("cadre-tests");
    let stack = Stack::start().await;
    let (_, workflow_id) = stack.api.team_and_pipeline("offline", 3).await;
    let workflow_id = workflow_id.as_str();
    let (execution_id, _) = stack.api.start_execution(workflow_id).await;
    let done = stack
        .wait_until_finished(&execution_id, Duration::from_secs(60))
        .await;
    assert_eq!(done["status"], "completed");

    let last = stack.log_state().await.last_sequence;
    let consumer = stack
        .bus
        .stream()
        .create_consumer(OrderedConfig {
            filter_subject: format!("cadre.events.default.workflow.{workflow_id}.>"),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let mut traces = BTreeSet::new();
    let mut seen = 0;
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .expect("the workflow's events")
            .unwrap()
            .unwrap();
        let traceparent = message
            .headers
            .as_ref()
            .and_then(|h| h.get("traceparent"))
            .map(|v| v.as_str().to_owned())
            .unwrap_or_else(|| panic!("no traceparent on {}", message.subject));
        // 00-<32 hex trace id>-<16 hex span id>-<flags>
        let parts: Vec<&str> = traceparent.split('-').collect();
        assert_eq!((parts.len(), parts[1].len()), (4, 32), "{traceparent}");
        if message.subject.contains(&execution_id) {
            traces.insert(parts[1].to_owned());
            seen += 1;
        }
        let info = message.info().unwrap();
        if info.stream_sequence >= last || info.pending == 0 {
            break;
        }
    }
    // Its start and end, and each step's scheduling, start and completion.
    assert!(seen >= 11, "only {seen} events of the execution were read");
    assert_eq!(
        traces.len(),
        1,
        "the execution spans several traces: {traces:?}"
    );
    stack.stop().await;
}
