//! The workflow engine's time and control, end to end: step time-outs and execution time
//! limits on durable timers (JetStream message schedules), cancel, pause and resume of
//! executions and workflows, and timers that outlive the coordinator that armed them.

// Test code: a panic is the failure report, in helpers as in tests.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use cadre_proto::events::FailureCause;
use cadre_proto::streams::{EVENTS_STREAM, PARTITIONS_STREAM};
use cadre_proto::timers::Timer;
use cadre_proto::{Envelope, Event, ExecutionId, StepId, TenantId, WorkflowId, subjects};
use cadre_runtime::bus::Append;
use cadre_tests::api::{Reply, agent, pipeline};
use cadre_tests::stack::FAKE_PROVIDER;
use cadre_tests::{Stack, StackOptions, eventually};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const FINISH: Duration = Duration::from_secs(60);
/// An LLM that answers long after any test is over: only a stopped call ends sooner.
const NEVER: Duration = Duration::from_secs(3600);

/// A stack whose worker waits for the fake LLM as long as it takes.
async fn patient_stack() -> Stack {
    Stack::start_with(StackOptions {
        llm_timeout_secs: 3600,
        ..Default::default()
    })
    .await
}

/// One agent on the fake LLM and a workflow of `steps` steps (a pipeline), with `patch`
/// merged into its first step and `constraints` as its constraints; returns the workflow id.
async fn workflow(stack: &Stack, steps: usize, patch: Value, constraints: Value) -> String {
    let ada = stack
        .api
        .register_agent(&agent("Ada", "analyst", &["research"], FAKE_PROVIDER))
        .await;
    let ids = vec![ada["id"].as_str().unwrap().to_owned()];
    let mut body = pipeline("Engine", &ids, &[&["research"]], steps);
    for (key, value) in patch.as_object().unwrap() {
        body["configuration"]["steps"][0][key] = value.clone();
    }
    body["configuration"]["constraints"] = constraints;
    stack.api.create_workflow(&body).await["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

struct Run {
    workflow: WorkflowId,
    execution: ExecutionId,
    id: String,
}

async fn start(stack: &Stack, workflow_id: &str) -> Run {
    let (id, _) = stack.api.start_execution(workflow_id).await;
    Run {
        workflow: WorkflowId(workflow_id.parse().unwrap()),
        execution: ExecutionId(id.parse().unwrap()),
        id,
    }
}

/// The execution's state events in the log, in order.
async fn events(stack: &Stack, run: &Run) -> Vec<Event> {
    stack
        .bus
        .read_all(&subjects::execution_state(
            &TenantId::default_tenant(),
            run.workflow,
            run.execution,
        ))
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.envelope.event)
        .collect()
}

/// Waits for an event of the execution that `wanted` accepts, and returns it.
async fn wait_for(stack: &Stack, run: &Run, what: &str, wanted: impl Fn(&Event) -> bool) -> Event {
    eventually(FINISH, what, || async {
        events(stack, run).await.into_iter().find(|e| wanted(e))
    })
    .await
}

fn step_started(step: &'static str) -> impl Fn(&Event) -> bool {
    move |e| matches!(e, Event::StepStarted(s) if s.attempt.step_id.as_str() == step)
}

async fn control(stack: &Stack, path: &str, body: Value) -> Reply {
    stack.api.post(path, &body).await
}

#[tokio::test]
async fn an_attempt_past_its_timeout_is_timed_out_its_call_stopped_and_the_run_fails() {
    let stack = patient_stack().await;
    stack.llm.set_latency(NEVER);
    // 0.05 minutes is 3 s; one retry, so two attempts time out.
    let workflow_id = workflow(
        &stack,
        2,
        json!({"timeoutMinutes": 0.05}),
        json!({"maxRetries": 1}),
    )
    .await;
    let run = start(&stack, &workflow_id).await;
    let execution = stack.wait_until_finished(&run.id, FINISH).await;
    assert_eq!(execution["status"], "failed", "{execution:#}");
    let error = execution["errorMessage"].as_str().unwrap();
    assert!(
        error.contains("failed after 2 attempt(s): timed out after 3 s"),
        "{error}"
    );
    let log = events(&stack, &run).await;
    let timed_out: Vec<u32> = log
        .iter()
        .filter_map(|e| match e {
            Event::StepTimedOut(t) => Some(t.attempt.number),
            _ => None,
        })
        .collect();
    assert_eq!(timed_out, vec![1, 2]);
    assert!(matches!(
        log.last(),
        Some(Event::ExecutionFailed(f)) if f.cause == FailureCause::StepFailed { step_id: StepId::parse("step-1").unwrap() }
    ));
    // Both calls were stopped by the coordinator, not left to run for the LLM's hour.
    eventually(FINISH, "both LLM calls to be stopped", || async {
        (stack.llm.abandoned() == 2).then_some(())
    })
    .await;
    assert_eq!(execution["stepResults"]["step-1"]["status"], "timed_out");
    assert!(execution["stepResults"].get("step-2").is_none());
    stack.stop().await;
}

#[tokio::test]
async fn a_run_past_its_time_limit_fails_with_reason_time_limit() {
    let stack = patient_stack().await;
    stack.llm.set_latency(NEVER);
    let workflow_id = workflow(&stack, 1, json!({}), json!({"maxExecutionTime": 2})).await;
    let run = start(&stack, &workflow_id).await;
    let execution = stack.wait_until_finished(&run.id, FINISH).await;
    assert_eq!(execution["status"], "failed", "{execution:#}");
    assert!(
        execution["errorMessage"]
            .as_str()
            .unwrap()
            .starts_with("time limit"),
        "{execution:#}"
    );
    assert!(matches!(
        events(&stack, &run).await.last(),
        Some(Event::ExecutionFailed(f)) if f.cause == FailureCause::TimeLimit { max_execution_seconds: 2 }
    ));
    eventually(FINISH, "the LLM call to be stopped", || async {
        (stack.llm.abandoned() == 1).then_some(())
    })
    .await;
    stack.stop().await;
}

#[tokio::test]
async fn cancel_ends_a_running_execution_and_stops_its_calls() {
    let stack = patient_stack().await;
    stack.llm.set_latency(NEVER);
    let workflow_id = workflow(&stack, 2, json!({}), json!({})).await;
    let run = start(&stack, &workflow_id).await;
    eventually(FINISH, "step-1's LLM call", || async {
        (stack.llm.requests().len() == 1).then_some(())
    })
    .await;

    // Workers keep reporting on the run's steps while the person cancels it (as a hundred
    // running steps would): the cancel does not depend on them, so it never loses the race.
    let started = events(&stack, &run)
        .await
        .into_iter()
        .find(|e| matches!(e, Event::StepStarted(_)))
        .unwrap();
    let reporting = CancellationToken::new();
    let reports = tokio::spawn({
        let (bus, reporting) = (stack.bus.clone(), reporting.clone());
        async move {
            let mut reported = 0_usize;
            while !reporting.is_cancelled() {
                let report = Envelope::new(
                    "test",
                    TenantId::default_tenant(),
                    chrono::Utc::now(),
                    started.clone(),
                );
                bus.publish(&report, Append::Any).await.unwrap();
                reported += 1;
            }
            reported
        }
    });
    eventually(FINISH, "the reports to flow", || async {
        (events(&stack, &run).await.len() > 50).then_some(())
    })
    .await;
    let cancel = format!("/v1/executions/{}/cancel", run.id);
    let reply = control(
        &stack,
        &cancel,
        json!({"reason": "wrong input", "requestedBy": "ops"}),
    )
    .await;
    reporting.cancel();
    assert!(reports.await.unwrap() > 50);
    assert_eq!(reply.status, 202, "{}", reply.body);
    assert_eq!(reply.body["status"], "cancelled");
    let execution = stack.wait_until_finished(&run.id, FINISH).await;
    assert_eq!(execution["status"], "cancelled", "{execution:#}");
    // The step that was running shows the run's end, not a run that goes on.
    let step = &execution["stepResults"]["step-1"];
    assert_eq!(step["status"], "cancelled", "{execution:#}");
    assert_eq!(step["cancelledWhile"], "running");
    assert_eq!(execution["activeSteps"], json!([]), "{execution:#}");

    for path in [cancel.clone(), format!("/v1/executions/{}/pause", run.id)] {
        let again = control(&stack, &path, json!({})).await;
        assert_eq!(again.status, 409, "{}", again.body);
        assert_eq!(again.content_type, "application/problem+json");
        assert_eq!(again.body["currentStatus"], "cancelled");
        assert!(
            again.body["detail"]
                .as_str()
                .unwrap()
                .contains("the execution is cancelled")
        );
    }
    eventually(FINISH, "the LLM call to be stopped", || async {
        (stack.llm.abandoned() == 1).then_some(())
    })
    .await;
    let log = events(&stack, &run).await;
    // Past the reports, which went on a moment after the cancel.
    let mut decided = log.iter().filter(|e| !matches!(e, Event::StepStarted(_)));
    assert!(
        matches!(decided.next_back(), Some(Event::ExecutionCancelled(c)) if c.request.reason.as_deref() == Some("wrong input"))
    );
    assert!(!log.iter().any(|e| matches!(e, Event::StepCompleted(_))
        || matches!(e, Event::StepScheduled(s) if s.step.id.as_str() == "step-2")));
    let ghost = format!("/v1/executions/{}/cancel", uuid::Uuid::now_v7());
    assert_eq!(control(&stack, &ghost, json!({})).await.status, 404);
    stack.stop().await;
}

#[tokio::test]
async fn pause_lets_the_running_step_finish_and_resume_carries_on() {
    let stack = Stack::start().await;
    stack.llm.set_latency(Duration::from_millis(500));
    let workflow_id = workflow(&stack, 2, json!({}), json!({})).await;
    let run = start(&stack, &workflow_id).await;
    wait_for(&stack, &run, "step-1 to start", step_started("step-1")).await;

    let reply = control(
        &stack,
        &format!("/v1/executions/{}/pause", run.id),
        json!({}),
    )
    .await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    assert_eq!(reply.body["status"], "paused");

    // Step 1 finishes; once the coordinator has acted on its completion, step 2 is still not
    // scheduled.
    wait_for(&stack, &run, "step-1 to complete", |e| {
        matches!(e, Event::StepCompleted(_))
    })
    .await;
    let completed_at = stack
        .bus
        .last_event(&subjects::execution_state(
            &TenantId::default_tenant(),
            run.workflow,
            run.execution,
        ))
        .await
        .unwrap()
        .unwrap()
        .sequence;
    eventually(
        FINISH,
        "the coordinator to process step-1's completion",
        || async {
            // Copied into the coordinators' inbox (the log's source there has reached it), and
            // the inbox empty: decided on.
            let info = stack
                .bus
                .jetstream()
                .client()
                .request(
                    format!("$JS.API.STREAM.INFO.{PARTITIONS_STREAM}"),
                    "".into(),
                )
                .await
                .ok()?;
            let info: Value = serde_json::from_slice(&info.payload).ok()?;
            let copied = info["sources"]
                .as_array()?
                .iter()
                .find(|source| source["name"] == EVENTS_STREAM)?["seq"]
                .as_u64()?;
            (copied >= completed_at && info["state"]["messages"] == 0).then_some(())
        },
    )
    .await;
    assert!(
        !events(&stack, &run)
            .await
            .iter()
            .any(|e| matches!(e, Event::StepScheduled(s) if s.step.id.as_str() == "step-2")),
        "nothing is scheduled while paused"
    );
    eventually(FINISH, "the read model to say paused", || async {
        let body = stack
            .api
            .get(&format!("/v1/executions/{}", run.id))
            .await
            .body;
        (body["status"] == "paused").then_some(())
    })
    .await;

    let reply = control(
        &stack,
        &format!("/v1/executions/{}/resume", run.id),
        json!({}),
    )
    .await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    assert_eq!(reply.body["status"], "running");
    let execution = stack.wait_until_finished(&run.id, FINISH).await;
    assert_eq!(execution["status"], "completed", "{execution:#}");
    let resume_again = control(
        &stack,
        &format!("/v1/executions/{}/resume", run.id),
        json!({}),
    )
    .await;
    assert_eq!(resume_again.status, 409);
    assert_eq!(resume_again.body["currentStatus"], "completed");
    stack.stop().await;
}

#[tokio::test]
async fn a_paused_workflow_takes_no_new_executions_until_resumed() {
    let stack = Stack::start().await;
    let workflow_id = workflow(&stack, 1, json!({}), json!({})).await;
    let pause = format!("/v1/workflows/{workflow_id}/pause");
    let reply = control(&stack, &pause, json!({"reason": "maintenance"})).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["status"], "paused");
    let again = control(&stack, &pause, json!({})).await;
    assert_eq!(again.status, 409);
    assert_eq!(again.body["currentStatus"], "paused");

    let start = format!("/v1/workflows/{workflow_id}/executions");
    let refused = stack.api.post(&start, &json!({})).await;
    assert_eq!(refused.status, 409, "{}", refused.body);
    assert_eq!(refused.body["currentStatus"], "paused");
    assert!(
        refused.body["detail"]
            .as_str()
            .unwrap()
            .contains("resume it")
    );

    let reply = control(
        &stack,
        &format!("/v1/workflows/{workflow_id}/resume"),
        json!({}),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["status"], "active");
    let run = start_and_finish(&stack, &workflow_id).await;
    assert_eq!(run["status"], "completed");
    assert_eq!(
        run["executionNumber"], 1,
        "the refused start used no number"
    );
    stack.stop().await;
}

async fn start_and_finish(stack: &Stack, workflow_id: &str) -> Value {
    let (id, _) = stack.api.start_execution(workflow_id).await;
    stack.wait_until_finished(&id, FINISH).await
}

#[tokio::test]
async fn the_step_timer_fires_for_the_first_deadline_then_guards_the_steps_still_running() {
    let stack = Stack::start().await;
    // Each step takes 4 s; the first must end within 6 s, the others within 10 minutes. The
    // first step's deadline comes while a later step runs: nothing is due, and the timer,
    // armed once for the run, is armed again for the running step's deadline.
    stack.llm.set_latency(Duration::from_secs(4));
    let workflow_id = workflow(&stack, 3, json!({"timeoutMinutes": 0.1}), json!({})).await;
    let run = start(&stack, &workflow_id).await;
    let execution = stack.wait_until_finished(&run.id, FINISH).await;
    assert_eq!(execution["status"], "completed", "{execution:#}");
    let log = events(&stack, &run).await;
    let scheduled: Vec<_> = log
        .iter()
        .filter_map(|e| match e {
            Event::StepScheduled(s) => Some((s.arms_step_timer == Some(true), s.timeout_at)),
            _ => None,
        })
        .collect();
    assert_eq!(
        scheduled.iter().map(|(arms, _)| *arms).collect::<Vec<_>>(),
        [true, false, false],
        "only the first deadline arms the timer"
    );
    let checked: Vec<_> = log
        .iter()
        .filter_map(|e| match e {
            Event::StepDeadlinesChecked(c) => Some(c),
            _ => None,
        })
        .collect();
    let [check] = checked.as_slice() else {
        panic!("expected one check of the deadlines: {checked:?}")
    };
    assert_eq!(Some(check.due), scheduled[0].1);
    assert!(
        scheduled[1..].iter().any(|(_, at)| *at == check.next_at),
        "armed again for a later step's deadline: {check:?}, {scheduled:?}"
    );
    assert!(!log.iter().any(|e| matches!(e, Event::StepTimedOut(_))));
    let timer = Timer::StepDeadlines {
        workflow_id: run.workflow,
        execution_id: run.execution,
        due: check.due,
    };
    let timers = stack.bus.timers_stream().clone();
    eventually(FINISH, "the run's end to purge its timer", || async {
        timers
            .get_last_raw_message_by_subject(&timer.schedule_subject(&TenantId::default_tenant()))
            .await
            .is_err()
            .then_some(())
    })
    .await;
    stack.stop().await;
}

#[tokio::test]
async fn a_timer_armed_before_a_coordinator_stopped_fires_for_the_next_one() {
    let mut stack = patient_stack().await;
    stack.llm.set_latency(NEVER);
    let workflow_id = workflow(&stack, 1, json!({"timeoutMinutes": 0.05}), json!({})).await;
    let run = start(&stack, &workflow_id).await;
    wait_for(&stack, &run, "step-1 to start", step_started("step-1")).await;
    let tenant = TenantId::default_tenant();
    // The execution's one step time-out timer (its subjects do not depend on when it is due).
    let timer = Timer::StepDeadlines {
        workflow_id: run.workflow,
        execution_id: run.execution,
        due: chrono::Utc::now(),
    };
    let timers = stack.bus.timers_stream().clone();
    eventually(FINISH, "the step's timer to be armed", || async {
        timers
            .get_last_raw_message_by_subject(&timer.schedule_subject(&tenant))
            .await
            .ok()
    })
    .await;
    stack.stop_service("coordinator").await;

    // The schedule lives in JetStream: it fires with no coordinator running.
    eventually(FINISH, "the timer to fire", || async {
        timers
            .get_last_raw_message_by_subject(&timer.fired_subject(&tenant))
            .await
            .ok()
    })
    .await;
    assert!(
        !events(&stack, &run)
            .await
            .iter()
            .any(|e| matches!(e, Event::StepTimedOut(_))),
        "nobody decided on it yet"
    );

    let stop = tokio_util::sync::CancellationToken::new();
    let (next, next_api) = stack.second_coordinator(stop.clone()).await;
    let execution = next_api.wait_until_finished(&run.id, FINISH).await;
    assert_eq!(execution["status"], "failed", "{execution:#}");
    assert!(
        execution["errorMessage"]
            .as_str()
            .unwrap()
            .contains("timed out after 3 s")
    );
    stop.cancel();
    next.wait().await.unwrap();
    stack.stop().await;
}

#[tokio::test]
async fn the_same_idempotency_key_starts_one_execution() {
    let stack = Stack::start().await;
    let workflow_id = workflow(&stack, 1, json!({}), json!({})).await;
    let path = format!("/v1/workflows/{workflow_id}/executions");
    let start_with = |key: &'static str| {
        let request = reqwest::Client::new()
            .post(format!("{}{path}", stack.api.base()))
            .header("content-type", "application/json")
            .header("idempotency-key", key)
            .body(r#"{"triggeredBy":"ci"}"#);
        async move {
            let reply = request.send().await.unwrap();
            let status = reply.status().as_u16();
            (status, reply.json::<Value>().await.unwrap())
        }
    };
    // Eight at once with one key: one run, the others told about it.
    let replies = futures::future::join_all((0..8).map(|_| start_with("deploy-41"))).await;
    let ids: std::collections::BTreeSet<String> = replies
        .iter()
        .filter(|(status, _)| *status != 409)
        .map(|(_, body)| body["executionId"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 1, "{replies:?}");
    assert_eq!(
        replies.iter().filter(|(status, _)| *status == 202).count(),
        1,
        "{replies:?}"
    );
    for (status, body) in &replies {
        assert!(matches!(status, 200 | 202 | 409), "{status} {body}");
    }
    // Once recorded, a repeat gets the same execution and number.
    let (status, again) = start_with("deploy-41").await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["executionId"].as_str().unwrap(), ids.first().unwrap());
    assert_eq!(again["executionNumber"], 1);
    let (status, other) = start_with("deploy-42").await;
    assert_eq!(status, 202);
    assert_eq!(other["executionNumber"], 2);
    let starts = stack
        .bus
        .read_all(&subjects::execution_starts(
            &TenantId::default_tenant(),
            WorkflowId(workflow_id.parse().unwrap()),
        ))
        .await
        .unwrap();
    assert_eq!(starts.len(), 2, "one run per key");
    // The key of a recorded start, with a start that asks for something else: refused, as
    // the client's mistake, rather than answered with a run it did not ask for.
    let reused = reqwest::Client::new()
        .post(format!("{}{path}", stack.api.base()))
        .header("content-type", "application/json")
        .header("idempotency-key", "deploy-41")
        .body(r#"{"triggeredBy":"ci","input":{"release":"v2"}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(reused.status().as_u16(), 422);
    let problem: Value = reused.json().await.unwrap();
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("use a new key"),
        "{problem}"
    );
    let reply = stack
        .api
        .post_raw(&path, Some("application/json"), b"{}".to_vec())
        .await;
    assert_eq!(reply.status, 202, "no key, a new run");
    stack.stop().await;
}

#[tokio::test]
async fn an_unreadable_message_in_a_runs_history_blocks_neither_the_run_nor_its_control() {
    let stack = Stack::start().await;
    stack.llm.set_latency(Duration::from_millis(300));
    let workflow_id = workflow(&stack, 2, json!({}), json!({})).await;
    let run = start(&stack, &workflow_id).await;
    wait_for(&stack, &run, "step-1 to start", step_started("step-1")).await;
    let tenant = TenantId::default_tenant();
    let js = stack.bus.jetstream();
    // Garbage, and an event of a version this build does not know, on the run's own subjects
    // and on its workflow's.
    let newer = json!({
        "specversion": "1.0", "id": uuid::Uuid::now_v7(), "source": "/future", "type": "dev.cadre.execution.step_failed.v9",
        "time": chrono::Utc::now(), "tenantid": "default", "data": {}
    });
    for (subject, body) in [
        (
            subjects::execution(&tenant, run.workflow, run.execution, subjects::PAUSED),
            b"not an event".to_vec(),
        ),
        (
            subjects::step(
                &tenant,
                run.workflow,
                run.execution,
                &StepId::parse("step-1").unwrap(),
                subjects::FAILED,
            ),
            newer.to_string().into_bytes(),
        ),
        (
            subjects::workflow(&tenant, run.workflow, subjects::PAUSED),
            b"{}".to_vec(),
        ),
    ] {
        js.publish(subject, body.into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let paused = control(
        &stack,
        &format!("/v1/executions/{}/pause", run.id),
        json!({}),
    )
    .await;
    assert_eq!(paused.status, 202, "{}", paused.body);
    let resumed = control(
        &stack,
        &format!("/v1/executions/{}/resume", run.id),
        json!({}),
    )
    .await;
    assert_eq!(resumed.status, 202, "{}", resumed.body);
    let execution = stack.wait_until_finished(&run.id, FINISH).await;
    assert_eq!(execution["status"], "completed", "{execution:#}");
    // The workflow still takes runs.
    let (second, _) = stack.api.start_execution(&workflow_id).await;
    assert_eq!(
        stack.wait_until_finished(&second, FINISH).await["status"],
        "completed"
    );
    stack.stop().await;
}

#[tokio::test]
async fn a_key_whose_start_died_before_it_was_recorded_is_carried_out_by_the_next_request() {
    let stack = Stack::start().await;
    let workflow_id = workflow(&stack, 1, json!({}), json!({})).await;
    let tenant = TenantId::default_tenant();
    let workflow = WorkflowId(workflow_id.parse().unwrap());
    // What a coordinator killed between claiming the key and recording the start leaves.
    let claimed = ExecutionId::new();
    let keys = stack
        .bus
        .jetstream()
        .get_key_value(cadre_proto::streams::IDEMPOTENCY_BUCKET)
        .await
        .unwrap();
    let claim = json!({"executionId": claimed, "claimedAt": chrono::Utc::now() - chrono::TimeDelta::minutes(5)});
    keys.create(
        subjects::idempotency_key(&tenant, workflow, "deploy-9"),
        claim.to_string().into(),
    )
    .await
    .unwrap();
    let reply = reqwest::Client::new()
        .post(format!(
            "{}/v1/workflows/{workflow_id}/executions",
            stack.api.base()
        ))
        .header("idempotency-key", "deploy-9")
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 202);
    let body: Value = reply.json().await.unwrap();
    assert_eq!(body["executionId"], claimed.to_string());
    assert_eq!(
        stack
            .wait_until_finished(&claimed.to_string(), FINISH)
            .await["status"],
        "completed"
    );
    stack.stop().await;
}

#[tokio::test]
async fn a_step_no_worker_finishes_fails_its_attempt_instead_of_waiting_forever() {
    let mut stack = Stack::start().await;
    stack.stop_service("agent-worker").await;
    let workflow_id = workflow(&stack, 1, json!({}), json!({})).await;
    let run = start(&stack, &workflow_id).await;
    // A worker that takes the step and dies every time, as many times as the queue allows.
    let consumer: async_nats::jetstream::consumer::PullConsumer = stack
        .bus
        .dispatch_stream()
        .create_consumer(cadre_proto::streams::agent_worker_consumer(FAKE_PROVIDER))
        .await
        .unwrap();
    for _ in 0..cadre_proto::streams::AGENT_WORKER_MAX_DELIVER {
        let mut batch = consumer
            .fetch()
            .max_messages(1)
            .expires(Duration::from_secs(10))
            .messages()
            .await
            .unwrap();
        let message = futures::StreamExt::next(&mut batch).await.unwrap().unwrap();
        message
            .ack_with(async_nats::jetstream::AckKind::Nak(None))
            .await
            .unwrap();
    }
    // Workers keep asking for work; that is when the server finds the step exhausted.
    let mut idle = consumer
        .fetch()
        .max_messages(1)
        .expires(Duration::from_secs(2))
        .messages()
        .await
        .unwrap();
    while futures::StreamExt::next(&mut idle).await.is_some() {}
    let execution = stack.wait_until_finished(&run.id, FINISH).await;
    assert_eq!(execution["status"], "failed", "{execution:#}");
    assert!(
        execution["errorMessage"]
            .as_str()
            .unwrap()
            .contains("no worker finished the step in 5 deliveries"),
        "{execution:#}"
    );
    stack.stop().await;
}
