//! Workers take only work they can do: steps are routed to the workers that offer their
//! agent's LLM provider, a step no running worker can take waits visibly until one starts, and a
//! provider that asks to be called later is called no sooner, on a durable schedule, within a
//! retry budget counted in time.

// Test code: a panic is the failure report, in helpers as in tests.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use cadre_agent_worker::{HttpProviderConfig, OfflineAnswer, ProviderConfig};
use cadre_proto::streams::agent_worker_consumer_name;
use cadre_proto::{Event, ExecutionId, TenantId, WorkflowId, subjects};
use cadre_tests::api::{agent, pipeline};
use cadre_tests::fake_llm::FakeLlm;
use cadre_tests::{Stack, eventually};
use serde_json::{Value, json};

const FINISH: Duration = Duration::from_secs(60);
/// The provider only some workers know.
const QUIRK: &str = "quirk";

fn offline_only() -> BTreeMap<String, ProviderConfig> {
    BTreeMap::from([(
        "offline".to_owned(),
        ProviderConfig::Offline {
            latency_ms: 0,
            answer: OfflineAnswer::Team,
        },
    )])
}

/// `offline`, and `quirk` served by the stack's fake OpenAI-compatible server.
fn with_quirk(stack: &Stack) -> BTreeMap<String, ProviderConfig> {
    let mut providers = offline_only();
    providers.insert(QUIRK.to_owned(), stack.fake_provider(10));
    providers
}

/// A `steps`-step pipeline for one agent on `provider`; returns the agent's registration
/// answer and the workflow id.
async fn workflow(
    stack: &Stack,
    provider: &str,
    steps: usize,
    max_retries: u32,
) -> (Value, String) {
    let registered = stack
        .api
        .register_agent(&agent("Quinn", "analyst", &["research"], provider))
        .await;
    let ids = vec![registered["id"].as_str().unwrap().to_owned()];
    let mut body = pipeline("Routed", &ids, &[&["research"]], steps);
    body["configuration"]["constraints"] = json!({ "maxRetries": max_retries });
    let workflow = stack.api.create_workflow(&body).await;
    (registered, workflow["id"].as_str().unwrap().to_owned())
}

/// A workflow `name` of `steps` steps that run side by side, all for the registered `agent`;
/// returns its id.
async fn side_by_side(stack: &Stack, name: &str, agent: &Value, steps: usize) -> String {
    let ids = vec![agent["id"].as_str().unwrap().to_owned()];
    let mut body = pipeline(name, &ids, &[&["research"]], steps);
    for step in body["configuration"]["steps"].as_array_mut().unwrap() {
        step["dependsOn"] = json!([]);
    }
    let workflow = stack.api.create_workflow(&body).await;
    workflow["id"].as_str().unwrap().to_owned()
}

async fn events(stack: &Stack, workflow: &str, execution: &str) -> Vec<Event> {
    stack
        .bus
        .read_all(&subjects::execution_state(
            &TenantId::default_tenant(),
            WorkflowId(workflow.parse().unwrap()),
            ExecutionId(execution.parse().unwrap()),
        ))
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.envelope.event)
        .collect()
}

#[tokio::test]
async fn a_mixed_fleet_runs_every_step_on_a_worker_that_offers_its_provider() {
    let mut stack = Stack::start().await;
    stack.stop_service("agent-worker").await;
    stack.run_worker("plain", stack.worker_config("plain", offline_only()));
    stack.run_worker("quirky", stack.worker_config("quirky", with_quirk(&stack)));
    let workers = eventually(FINISH, "both workers in the registry", || async {
        let reply = stack.api.get("/v1/workers").await;
        (reply.body.as_array().map(Vec::len) == Some(2)).then_some(reply.body)
    })
    .await;
    assert_eq!(workers[0]["workerId"], "plain");
    assert_eq!(workers[0]["providers"], json!(["offline"]));
    assert_eq!(workers[1]["workerId"], "quirky");
    assert_eq!(workers[1]["providers"], json!(["offline", QUIRK]));

    let (registered, workflow_id) = workflow(&stack, QUIRK, 8, 3).await;
    assert_eq!(registered["warnings"], json!([]), "a worker offers quirk");
    let (execution_id, _) = stack.api.start_execution(&workflow_id).await;
    let execution = stack.wait_until_finished(&execution_id, FINISH).await;
    assert_eq!(execution["status"], "completed", "{execution:#}");

    let log = events(&stack, &workflow_id, &execution_id).await;
    let failed = log
        .iter()
        .filter(|e| matches!(e, Event::StepFailed(_)))
        .count();
    assert_eq!(failed, 0, "no worker took a step it cannot run");
    let attempts: Vec<u32> = log
        .iter()
        .filter_map(|e| match e {
            Event::StepCompleted(c) => Some(c.attempt.number),
            _ => None,
        })
        .collect();
    assert_eq!(attempts, vec![1; 8], "every step done on its first attempt");
    assert_eq!(stack.llm.requests().len(), 8, "one call per step");
    stack.stop().await;
}

/// A worker whose slots are all taken leaves the queue's other steps to a worker with free
/// slots. It asks for no more steps of a busy queue than it has slots: one that waited in its
/// buffer past the queue's ack deadline would be delivered again elsewhere and then run twice,
/// and meanwhile a free worker would sit idle.
#[tokio::test]
async fn a_busy_worker_leaves_the_steps_it_cannot_start_to_a_free_one() {
    let mut stack = Stack::start().await;
    stack.stop_service("agent-worker").await;
    // The busy worker's quirk answers only when the test says so.
    let held = FakeLlm::start().await.unwrap();
    held.hold_answers();
    let mut slow = offline_only();
    slow.insert(
        QUIRK.to_owned(),
        ProviderConfig::OpenAiCompatible(HttpProviderConfig {
            api_key: Some("test-key".to_owned().into()),
            timeout_secs: 120,
            ..HttpProviderConfig::new(held.base_url())
        }),
    );
    let busy = cadre_agent_worker::Config {
        concurrency: 2,
        ..stack.worker_config("busy", slow)
    };
    stack.run_worker("busy", busy);

    let registered = stack
        .api
        .register_agent(&agent("Quinn", "analyst", &["research"], QUIRK))
        .await;
    let workflow_id = side_by_side(&stack, "Side by side", &registered, 6).await;
    let (execution_id, _) = stack.api.start_execution(&workflow_id).await;

    let queue = stack.bus.dispatch_stream();
    let name = agent_worker_consumer_name(QUIRK);
    let info = eventually(FINISH, "two calls held, six steps dispatched", || async {
        let info = queue.consumer_info(name.as_str()).await.ok()?;
        (held.requests().len() == 2 && info.num_pending + info.num_ack_pending as u64 == 6)
            .then_some(info)
    })
    .await;
    assert_eq!(
        info.num_ack_pending, 2,
        "the busy worker took only what it started"
    );
    assert_eq!(info.num_pending, 4, "the other steps wait in the queue");
    assert_eq!(
        info.delivered.consumer_sequence, 2,
        "and none was handed back"
    );

    // A worker with free slots runs those four while the busy one's calls are still held.
    stack.run_worker("free", stack.worker_config("free", with_quirk(&stack)));
    eventually(FINISH, "four steps done by the free worker", || async {
        (events(&stack, &workflow_id, &execution_id)
            .await
            .iter()
            .filter(|e| matches!(e, Event::StepCompleted(_)))
            .count()
            == 4)
            .then_some(())
    })
    .await;
    assert_eq!(held.requests().len(), 2, "still only the two held calls");

    held.release_answers();
    let execution = stack.wait_until_finished(&execution_id, FINISH).await;
    assert_eq!(execution["status"], "completed", "{execution:#}");
    let log = events(&stack, &workflow_id, &execution_id).await;
    let started: Vec<u32> = log
        .iter()
        .filter_map(|e| match e {
            Event::StepStarted(s) => Some(s.attempt.number),
            _ => None,
        })
        .collect();
    assert_eq!(started, vec![1; 6], "each step started once");
    assert_eq!(held.requests().len(), 2, "no step called twice");
    assert_eq!(stack.llm.requests().len(), 4);
    let info = stack
        .bus
        .dispatch_stream()
        .consumer_info(name.as_str())
        .await
        .unwrap();
    assert_eq!(
        info.delivered.consumer_sequence, 6,
        "each step delivered once"
    );
    stack.stop().await;
}

/// A worker with fewer slots than queues (one slot; offline and quirk) runs the steps of both,
/// each delivered once: a step that reaches an idle queue while the slot is taken waits for it
/// rather than going back to the server, where every delivery counts towards the queue's limit.
#[tokio::test]
async fn a_worker_with_fewer_slots_than_queues_runs_each_step_on_its_first_delivery() {
    let mut stack = Stack::start().await;
    stack.stop_service("agent-worker").await;
    stack.llm.hold_answers();
    // No call ends for a timeout while it is held.
    let mut providers = offline_only();
    providers.insert(QUIRK.to_owned(), stack.fake_provider(120));
    let solo = cadre_agent_worker::Config {
        concurrency: 1,
        ..stack.worker_config("solo", providers)
    };
    stack.run_worker("solo", solo);

    let quirky = stack
        .api
        .register_agent(&agent("Quinn", "analyst", &["research"], QUIRK))
        .await;
    let plain = stack
        .api
        .register_agent(&agent("Otto", "analyst", &["research"], "offline"))
        .await;
    let mut runs = Vec::new();
    for (name, agent, steps) in [("Held", &quirky, 1), ("Plain", &plain, 3)] {
        let workflow_id = side_by_side(&stack, name, agent, steps).await;
        let (execution_id, _) = stack.api.start_execution(&workflow_id).await;
        runs.push((workflow_id, execution_id));
        if name == "Held" {
            // The quirk call holds the only slot while the plain steps come.
            eventually(FINISH, "the quirk call held", || async {
                (stack.llm.requests().len() == 1).then_some(())
            })
            .await;
        }
    }
    let queue = stack.bus.dispatch_stream();
    let offline = agent_worker_consumer_name("offline");
    eventually(FINISH, "the plain steps dispatched", || async {
        let info = queue.consumer_info(offline.as_str()).await.ok()?;
        (info.num_pending + info.num_ack_pending as u64 == 3).then_some(())
    })
    .await;

    stack.llm.release_answers();
    for (workflow_id, execution_id) in &runs {
        let execution = stack.wait_until_finished(execution_id, FINISH).await;
        assert_eq!(execution["status"], "completed", "{execution:#}");
        let log = events(&stack, workflow_id, execution_id).await;
        assert!(
            !log.iter().any(|e| matches!(e, Event::StepFailed(_))),
            "{log:#?}"
        );
    }
    for (provider, steps) in [(QUIRK, 1), ("offline", 3)] {
        let info = queue
            .consumer_info(agent_worker_consumer_name(provider).as_str())
            .await
            .unwrap();
        assert_eq!(
            info.delivered.consumer_sequence, steps,
            "the {provider} queue delivered each step once"
        );
    }
    assert_eq!(stack.llm.requests().len(), 1);
    stack.stop().await;
}

/// A queue with nothing to do holds no slot: it held the only slot of a worker until its pull
/// request expired (5 s), so each of the other provider's steps waited 5 s (a trial's 40
/// one-second steps took 236 s, not 41). Twenty steps one after another would take over 100 s
/// so; the run must finish well within [`FINISH`].
#[tokio::test]
async fn a_worker_with_one_slot_runs_one_providers_steps_back_to_back() {
    let mut stack = Stack::start().await;
    stack.stop_service("agent-worker").await;
    let solo = cadre_agent_worker::Config {
        concurrency: 1,
        ..stack.worker_config("solo", with_quirk(&stack))
    };
    stack.run_worker("solo", solo);
    let (_, workflow_id) = workflow(&stack, "offline", 20, 0).await;
    let (execution_id, _) = stack.api.start_execution(&workflow_id).await;
    let execution = stack.wait_until_finished(&execution_id, FINISH).await;
    assert_eq!(execution["status"], "completed", "{execution:#}");
    stack.stop().await;
}

#[tokio::test]
async fn a_step_no_running_worker_can_take_waits_visibly_until_one_starts() {
    let mut stack = Stack::start().await;
    stack.stop_service("agent-worker").await;
    stack.run_worker("plain", stack.worker_config("plain", offline_only()));
    eventually(FINISH, "the worker in the registry", || async {
        let reply = stack.api.get("/v1/workers").await;
        (reply.body.as_array().map(Vec::len) == Some(1)).then_some(())
    })
    .await;

    let (registered, workflow_id) = workflow(&stack, QUIRK, 1, 0).await;
    let warning = registered["warnings"][0].as_str().unwrap();
    assert!(
        warning.contains("no live agent worker offers provider \"quirk\""),
        "{warning}"
    );
    let (execution_id, _) = stack.api.start_execution(&workflow_id).await;
    let waiting = eventually(FINISH, "the step shown waiting for a worker", || async {
        let reply = stack
            .api
            .get(&format!("/v1/executions/{execution_id}"))
            .await;
        let waiting = &reply.body["waiting"];
        (waiting.as_array().map(Vec::len) == Some(1)).then(|| reply.body.clone())
    })
    .await;
    assert_eq!(waiting["status"], "running");
    assert_eq!(waiting["waiting"][0]["stepId"], "step-1");
    assert_eq!(waiting["waiting"][0]["provider"], QUIRK);
    assert!(stack.llm.requests().is_empty(), "nobody called quirk");

    // A worker that offers quirk starts: the waiting step runs, nothing was lost.
    stack.run_worker("quirky", stack.worker_config("quirky", with_quirk(&stack)));
    let execution = stack.wait_until_finished(&execution_id, FINISH).await;
    assert_eq!(execution["status"], "completed", "{execution:#}");
    let after = stack
        .api
        .get(&format!("/v1/executions/{execution_id}"))
        .await;
    assert_eq!(after.body["waiting"], json!([]));
    assert_eq!(stack.llm.requests().len(), 1);
    stack.stop().await;
}

#[tokio::test]
async fn a_rate_limited_call_is_repeated_no_sooner_than_retry_after_and_each_wait_is_recorded() {
    let stack = Stack::start().await;
    stack.llm.rate_limit_next(2, 2);
    let (_, workflow_id) = workflow(&stack, cadre_tests::stack::FAKE_PROVIDER, 1, 0).await;
    let (execution_id, _) = stack.api.start_execution(&workflow_id).await;
    let execution = stack.wait_until_finished(&execution_id, FINISH).await;
    assert_eq!(execution["status"], "completed", "{execution:#}");

    let calls = stack.llm.requests();
    assert_eq!(
        calls.iter().map(|c| c.status).collect::<Vec<_>>(),
        vec![429, 429, 200]
    );
    for pair in calls.windows(2) {
        let gap = pair[1].received_at - pair[0].received_at;
        assert!(gap >= Duration::from_secs(2), "called again after {gap:?}");
    }
    let waits: Vec<_> = events(&stack, &workflow_id, &execution_id)
        .await
        .into_iter()
        .filter_map(|e| match e {
            Event::StepDeferred(d) => Some(d),
            _ => None,
        })
        .collect();
    assert_eq!(
        waits.iter().map(|d| d.deferral).collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert!(waits[0].error.contains("429"), "{}", waits[0].error);
    assert_eq!(waits[0].waiting_since, waits[1].waiting_since);
    assert_eq!(
        execution["stepResults"]["step-1"]["status"], "completed",
        "{execution:#}"
    );
    stack.stop().await;
}

#[tokio::test]
async fn a_provider_that_keeps_failing_fails_the_step_when_its_time_budget_runs_out() {
    let mut stack = Stack::start().await;
    stack.stop_service("agent-worker").await;
    let config = cadre_agent_worker::Config {
        retry_budget_secs: 3,
        ..stack.worker_config("impatient", with_quirk(&stack))
    };
    stack.run_worker("impatient", config);
    stack.llm.fail_next(100, 503);
    let (_, workflow_id) = workflow(&stack, QUIRK, 1, 0).await;
    let (execution_id, _) = stack.api.start_execution(&workflow_id).await;
    let execution = stack.wait_until_finished(&execution_id, FINISH).await;
    assert_eq!(execution["status"], "failed", "{execution:#}");
    let error = execution["errorMessage"].as_str().unwrap();
    assert!(error.contains("retry budget of 3s"), "{error}");
    assert!(error.contains("503"), "{error}");
    let calls = stack.llm.requests().len();
    // Doubling waits of at least 0.5, 1 and 2 s fit about three calls into 3 s.
    assert!((2..=4).contains(&calls), "{calls} calls");
    stack.stop().await;
}

#[tokio::test]
async fn an_agent_whose_provider_refuses_is_answered_by_its_fallback() {
    let mut stack = Stack::start().await;
    stack.stop_service("agent-worker").await;
    stack.run_worker("quirky", stack.worker_config("quirky", with_quirk(&stack)));
    // An authentication error: retrying the same provider cannot help; the fallback can.
    stack.llm.fail_next(1, 401);
    let mut body = agent("Quinn", "analyst", &["research"], QUIRK);
    body["fallback"] = json!({"provider": "offline", "model": "offline-deterministic"});
    let registered = stack.api.register_agent(&body).await;
    assert_eq!(registered["fallback"]["provider"], "offline");
    let ids = vec![registered["id"].as_str().unwrap().to_owned()];
    let workflow = stack
        .api
        .create_workflow(&pipeline("Fallback", &ids, &[&["research"]], 1))
        .await;
    let workflow_id = workflow["id"].as_str().unwrap();
    let (execution_id, _) = stack.api.start_execution(workflow_id).await;
    let execution = stack.wait_until_finished(&execution_id, FINISH).await;
    assert_eq!(execution["status"], "completed", "{execution:#}");
    let step = &execution["stepResults"]["step-1"];
    assert_eq!(step["provider"], "offline", "{step:#}");
    assert_eq!(step["model"], "offline-deterministic");
    let reason = step["fallbackReason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("401") && reason.contains("quirk"),
        "why the fallback answered is recorded: {step:#}"
    );
    assert!(
        step["summary"]
            .as_str()
            .unwrap()
            .starts_with("[offline provider]")
    );
    let calls = stack.llm.requests();
    assert_eq!(calls.len(), 1, "quirk was asked once");
    assert_eq!(calls[0].status, 401);
    stack.stop().await;
}
