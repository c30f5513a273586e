//! The guarantees of the event log that Cadre's design rests on, checked on a real server.

// Test code: a panic is the failure report, in helpers as in tests.
#![allow(clippy::unwrap_used)]

use cadre_proto::events::{AgentRegistered, ExecutionFailed};
use cadre_proto::model::{AgentProfile, ModelParameters};
use cadre_proto::{AgentId, Envelope, Event, ExecutionId, TenantId, WorkflowId, subjects};
use cadre_runtime::bus::{self, Append, EventBus, PublishError};
use cadre_tests::nats::NatsServer;
use chrono::Utc;

async fn open(nats: &NatsServer) -> EventBus {
    let client = bus::connect(&nats.url, "event-log-test").await.unwrap();
    EventBus::open(async_nats::jetstream::new(client), 1)
        .await
        .unwrap()
}

fn failed(workflow_id: WorkflowId, execution_id: ExecutionId, error: &str) -> Envelope {
    Envelope::new(
        "/test",
        TenantId::default_tenant(),
        Utc::now(),
        Event::ExecutionFailed(ExecutionFailed {
            execution_id,
            workflow_id,
            cause: cadre_proto::events::FailureCause::Stuck,
            error: error.into(),
        }),
    )
}

#[tokio::test]
async fn republishing_an_event_id_stores_it_once() {
    let nats = NatsServer::start();
    let bus = open(&nats).await;
    let agent = AgentProfile {
        id: AgentId::new(),
        name: "Ada".into(),
        role: "analyst".into(),
        backstory: String::new(),
        skills: vec![],
        provider: "offline".into(),
        model: "m".into(),
        model_parameters: ModelParameters::default(),
        fallback: None,
    };
    let envelope = Envelope::new(
        "/test",
        TenantId::default_tenant(),
        Utc::now(),
        Event::AgentRegistered(AgentRegistered { agent }),
    );
    let first = bus.publish(&envelope, Append::Any).await.unwrap();
    let again = bus.publish(&envelope, Append::Any).await.unwrap();
    assert!(!first.duplicate);
    assert!(
        again.duplicate,
        "same Nats-Msg-Id inside the duplicate window"
    );
    assert_eq!(again.sequence, first.sequence);
    let info = bus.stream().clone().info().await.unwrap().state.messages;
    assert_eq!(info, 1);
}

#[tokio::test]
async fn an_expected_sequence_over_a_filter_stops_a_second_writer() {
    let nats = NatsServer::start();
    let bus = open(&nats).await;
    let tenant = TenantId::default_tenant();
    let (workflow, execution) = (WorkflowId::new(), ExecutionId::new());
    let filter = subjects::execution_state(&tenant, workflow, execution);

    // Two writers both saw "nothing yet" (sequence 0); only the first append lands.
    let a = failed(workflow, execution, "writer a");
    let b = failed(workflow, execution, "writer b");
    let stored = bus
        .append_after(std::slice::from_ref(&a), &filter, 0)
        .await
        .unwrap()[0];
    let refused = bus.append_after(std::slice::from_ref(&b), &filter, 0).await;
    assert!(
        matches!(refused, Err(PublishError::Conflict { expected: 0, .. })),
        "{refused:?}"
    );

    // The filter's last event, found with a wildcard, is the one that landed.
    let last = bus.last_event(&filter).await.unwrap().expect("an event");
    assert_eq!(last.sequence, stored);
    assert_eq!(last.envelope, a);
    let by_wildcard = bus
        .last_event(&format!(
            "cadre.events.{tenant}.workflow.*.execution.{execution}.*"
        ))
        .await
        .unwrap()
        .expect("an event");
    assert_eq!(by_wildcard.sequence, stored);

    // Appending after the right sequence works, and a reader sees both in order.
    let c = failed(workflow, execution, "writer b, after re-reading");
    bus.append_after(std::slice::from_ref(&c), &filter, stored)
        .await
        .unwrap();
    let all = bus.read_all(&filter).await.unwrap();
    assert_eq!(
        all.iter().map(|s| s.envelope.clone()).collect::<Vec<_>>(),
        vec![a, c]
    );
    assert!(
        bus.last_event(&subjects::execution_state(
            &tenant,
            workflow,
            ExecutionId::new()
        ))
        .await
        .unwrap()
        .is_none()
    );
}

#[tokio::test]
async fn an_atomic_batch_lands_whole_at_consecutive_sequences_or_not_at_all() {
    let nats = NatsServer::start();
    let bus = open(&nats).await;
    let tenant = TenantId::default_tenant();
    let workflow = WorkflowId::new();
    // Each on a subject of its own (another execution's failure), all under one filter.
    let batch = |what: &str| -> Vec<Envelope> {
        (0..5)
            .map(|i| failed(workflow, ExecutionId::new(), &format!("{what} {i}")))
            .collect()
    };
    let all = format!("cadre.events.{tenant}.workflow.{workflow}.execution.*.*");

    // Something else lands in between, on another workflow: the batch is still contiguous.
    bus.append_after(
        &[failed(WorkflowId::new(), ExecutionId::new(), "elsewhere")],
        &subjects::execution_starts(&tenant, WorkflowId::new()),
        0,
    )
    .await
    .unwrap();
    let first = batch("first");
    let last = bus.append_batch_after(&first, &[], &all, 0).await.unwrap();
    let stored = bus.read_all(&all).await.unwrap();
    assert_eq!(
        stored.iter().map(|s| s.sequence).collect::<Vec<_>>(),
        (last - 4..=last).collect::<Vec<_>>(),
        "consecutive, ending at the sequence returned"
    );
    assert_eq!(
        stored.into_iter().map(|s| s.envelope).collect::<Vec<_>>(),
        first
    );

    // A writer that read before the first batch landed stores none of its own.
    let refused = bus.append_batch_after(&batch("stale"), &[], &all, 0).await;
    assert!(
        matches!(refused, Err(PublishError::Conflict { expected: 0, .. })),
        "{refused:?}"
    );
    assert_eq!(
        bus.read_all(&all).await.unwrap().len(),
        5,
        "nothing of it stored"
    );

    // After the right sequence, the next batch lands.
    let next = bus
        .append_batch_after(&batch("next"), &[], &all, last)
        .await
        .unwrap();
    assert_eq!(next, last + 5);
}

/// On a cluster, a writer whose append expects on a filter while another append expecting on
/// the same filter is still being replicated is refused without a sequence (JetStream's
/// "wrong last sequence", 10164): that is a conflict to decide again, as when the other append
/// has landed, never an outage to retry after a pause. Many pairs of writers race here; every
/// refusal must be a conflict, and of each pair exactly one lands.
#[tokio::test]
async fn on_a_cluster_every_refused_expectation_is_a_conflict() {
    let logs = tempfile::tempdir().unwrap();
    let cluster = cadre_tests::nats::NatsCluster::start(logs.path())
        .await
        .unwrap();
    let client = bus::connect(&cluster.nats_url(0), "event-log-test")
        .await
        .unwrap();
    let bus = EventBus::open(async_nats::jetstream::new(client), 3)
        .await
        .unwrap();
    let tenant = TenantId::default_tenant();
    for round in 0..40 {
        let (workflow, execution) = (WorkflowId::new(), ExecutionId::new());
        let filter = subjects::execution_state(&tenant, workflow, execution);
        let writers = ["a", "b"].map(|writer| {
            let envelope = failed(workflow, execution, &format!("writer {writer}"));
            let (bus, filter) = (bus.clone(), filter.clone());
            tokio::spawn(async move { bus.append_after(&[envelope], &filter, 0).await })
        });
        let mut landed = 0;
        for writer in writers {
            match writer.await.unwrap() {
                Ok(_) => landed += 1,
                Err(PublishError::Conflict { expected: 0, .. }) => {}
                Err(error) => panic!("round {round}: {error:?}"),
            }
        }
        assert_eq!(landed, 1, "round {round}");
    }
}
