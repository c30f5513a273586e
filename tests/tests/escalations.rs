//! Self-healing and a person in the loop, end to end: a step past its retries climbs the
//! workflow's escalation ladder (another agent, then a person); a person retries it or provides
//! its output; an approval step waits for a person's sign-off; every refusal is a problem.

// Test code: a panic is the failure report, in helpers as in tests.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use cadre_agent_worker::{OfflineAnswer, ProviderConfig};
use cadre_proto::Event;
use cadre_proto::events::AssignmentReason;
use cadre_proto::model::EscalationRung;
use cadre_tests::api::agent;
use cadre_tests::stack::FAKE_PROVIDER;
use cadre_tests::{Stack, eventually};
use serde_json::{Value, json};

const FINISH: Duration = Duration::from_secs(90);

fn step(id: &str, depends_on: &[&str], kind: &str) -> Value {
    json!({
        "id": id, "name": format!("Step {id}"), "description": "A part of the work.",
        "type": kind, "requiredSkills": ["research"], "dependsOn": depends_on,
        "instructions": format!("Do {id}."), "expectedOutput": "It, done."
    })
}

/// Ada and Bo on the fake LLM, and a workflow of `steps` with `configuration` extras.
async fn workflow(stack: &Stack, steps: Vec<Value>, extra: Value) -> (Vec<String>, String) {
    let mut ids = Vec::new();
    for name in ["Ada", "Bo"] {
        let created = stack
            .api
            .register_agent(&agent(name, "analyst", &["research"], FAKE_PROVIDER))
            .await;
        ids.push(created["id"].as_str().unwrap().to_owned());
    }
    let mut configuration = json!({ "steps": steps });
    for (key, value) in extra.as_object().unwrap() {
        configuration[key] = value.clone();
    }
    let body = json!({
        "name": "Release", "description": "Build and ship.", "workflowType": "pipeline",
        "participatingAgents": ids, "configuration": configuration
    });
    let id = stack.api.create_workflow(&body).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    (ids, id)
}

/// A person's decision on escalation `id`.
async fn decide(stack: &Stack, id: &str, body: &Value) -> cadre_tests::api::Reply {
    stack
        .api
        .post(&format!("/v1/escalations/{id}/resolve"), body)
        .await
}

/// The one open escalation of an execution, once the read models show it.
async fn open_escalation(stack: &Stack, execution_id: &str) -> Value {
    eventually(FINISH, "an open escalation", || async {
        let reply = stack
            .api
            .get(&format!(
                "/v1/escalations?status=open&executionId={execution_id}"
            ))
            .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        match reply.body.as_array().unwrap().as_slice() {
            [one] => Some(one.clone()),
            [] => None,
            many => panic!("expected one open escalation, got {many:?}"),
        }
    })
    .await
}

#[tokio::test]
async fn a_failure_climbs_to_another_agent_then_a_person_who_retries_it_or_provides_the_output() {
    let stack = Stack::start().await;
    let (agents, workflow_id) = workflow(
        &stack,
        vec![
            step("build", &[], "implementation"),
            step("ship", &["build"], "documentation"),
        ],
        json!({
            "constraints": { "maxRetries": 0 },
            "escalation": { "ladder": ["reassign", "person"] }
        }),
    )
    .await;

    // A rejected request: Ada's attempt fails, then Bo's, then a person is asked.
    stack.llm.fail_next(2, 400);
    let (execution_id, _) = stack.api.start_execution(&workflow_id).await;
    let escalation = open_escalation(&stack, &execution_id).await;
    assert_eq!(escalation["stepId"], "build", "{escalation:#}");
    assert_eq!(escalation["approval"], false);
    assert_eq!(escalation["status"], "open");
    let failures = escalation["context"]["failures"].as_array().unwrap();
    let failed_by: Vec<&str> = failures
        .iter()
        .map(|f| f["agentId"].as_str().unwrap())
        .collect();
    assert_eq!(
        failed_by,
        [agents[0].as_str(), agents[1].as_str()],
        "Ada, then Bo"
    );
    assert!(
        failures
            .iter()
            .all(|f| f["error"].as_str().unwrap().contains("400"))
    );
    assert_eq!(escalation["context"]["tried"], json!(["reassign"]));
    let execution = stack
        .api
        .get(&format!("/v1/executions/{execution_id}"))
        .await
        .body;
    assert_eq!(execution["status"], "running");
    assert_eq!(execution["stepResults"]["build"]["status"], "escalated");

    let log = stack.execution_events(&workflow_id, &execution_id).await;
    let reassigned = log.iter().find_map(|e| match e {
        Event::StepScheduled(s) if s.attempt == 2 => Some(s),
        _ => None,
    });
    let reassigned = reassigned.expect("a second attempt");
    assert_eq!(reassigned.agent.id.to_string(), agents[1]);
    assert_eq!(
        reassigned.reason,
        AssignmentReason::Escalated {
            rung: EscalationRung::Reassign
        }
    );
    assert_eq!(
        reassigned.earlier_failures.len(),
        1,
        "Bo sees why Ada failed"
    );

    // Refusals a person can act on.
    let id = escalation["id"].as_str().unwrap();
    let resolve = format!("/v1/escalations/{id}/resolve");
    let reply = stack
        .api
        .post(&resolve, &json!({ "action": "approve" }))
        .await;
    assert_eq!(reply.status, 422, "{}", reply.body);
    assert!(
        reply.body["detail"]
            .as_str()
            .unwrap()
            .contains("retry, reassign, skip, provideOutput or abort"),
        "{}",
        reply.body
    );
    let reply = stack
        .api
        .post(&resolve, &json!({ "action": "reassign" }))
        .await;
    assert_eq!(reply.status, 422, "{}", reply.body);
    assert_eq!(reply.body["errors"][0]["pointer"], "/agentId");
    let outsider = json!({ "action": "reassign", "agentId": uuid::Uuid::now_v7() });
    let reply = stack.api.post(&resolve, &outsider).await;
    assert_eq!(reply.status, 422, "{}", reply.body);
    assert_eq!(
        reply.body["errors"][0]["pointer"], "/agentId",
        "{}",
        reply.body
    );
    let reply = stack
        .api
        .post(&resolve, &json!({ "action": "retry", "requestedBy": " " }))
        .await;
    assert_eq!(reply.status, 422, "{}", reply.body);
    assert_eq!(reply.body["errors"][0]["pointer"], "/requestedBy");
    let reply = stack
        .api
        .post(&resolve, &json!({ "action": "dance" }))
        .await;
    assert_eq!(reply.status, 422, "{}", reply.body);
    let unknown = format!("/v1/escalations/{}/resolve", uuid::Uuid::now_v7());
    let reply = stack
        .api
        .post(&unknown, &json!({ "action": "retry" }))
        .await;
    assert_eq!(reply.status, 404, "{}", reply.body);

    // A person retries it: Bo, the last to try, takes it again and the run completes.
    let reply = stack
        .api
        .post(
            &resolve,
            &json!({ "action": "retry", "requestedBy": "Pat", "reason": "quota raised" }),
        )
        .await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    assert_eq!(reply.body["action"], "retry");
    let execution = stack.wait_until_finished(&execution_id, FINISH).await;
    assert_eq!(execution["status"], "completed", "{execution:#}");
    assert_eq!(execution["stepResults"]["build"]["attempt"], 3);
    let resolved = stack.api.get(&format!("/v1/escalations/{id}")).await.body;
    assert_eq!(resolved["status"], "resolved", "{resolved:#}");
    assert_eq!(resolved["action"], "retry");
    assert_eq!(resolved["resolvedBy"], "Pat");
    let reply = stack.api.post(&resolve, &json!({ "action": "skip" })).await;
    assert_eq!(reply.status, 409, "resolved already: {}", reply.body);
    // What the person needs to hear is that it was resolved, not that the run has ended.
    let detail = reply.body["detail"].as_str().unwrap();
    assert!(detail.contains("resolved already"), "{detail}");

    // Again, and this time the person provides the output; the next step builds on it.
    stack.llm.fail_next(2, 400);
    let (execution_id, _) = stack.api.start_execution(&workflow_id).await;
    let escalation = open_escalation(&stack, &execution_id).await;
    let id = escalation["id"].as_str().unwrap();
    let reply = decide(&stack, id, &json!({ "action": "provideOutput", "output": "Built by hand: v1.2.3", "requestedBy": "Pat" })).await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    let execution = stack.wait_until_finished(&execution_id, FINISH).await;
    assert_eq!(execution["status"], "completed", "{execution:#}");
    let build = &execution["stepResults"]["build"];
    assert_eq!(build["status"], "completed", "{build:#}");
    assert_eq!(build["summary"], "Built by hand: v1.2.3");
    assert_eq!(build["providedBy"], "Pat");
    assert!(
        build["agentId"].is_null() && build["error"].is_null(),
        "{build:#}"
    );
    let whole = stack
        .api
        .get(&format!("/v1/executions/{execution_id}/steps/build/result"))
        .await;
    assert_eq!(whole.status, 200, "{}", whole.body);
    assert_eq!(whole.body["providedBy"], "Pat");
    assert_eq!(whole.body["result"]["output"], "Built by hand: v1.2.3");
    let last = stack.llm.requests().pop().unwrap();
    assert!(
        last.user.contains("Built by hand: v1.2.3"),
        "ship sees the person's output: {}",
        last.user
    );

    // Once more, and the person skips the step: it has no result, and asking says why.
    stack.llm.fail_next(2, 400);
    let (execution_id, _) = stack.api.start_execution(&workflow_id).await;
    let escalation = open_escalation(&stack, &execution_id).await;
    let id = escalation["id"].as_str().unwrap();
    let reply = decide(
        &stack,
        id,
        &json!({ "action": "skip", "requestedBy": "Pat" }),
    )
    .await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    stack.wait_until_finished(&execution_id, FINISH).await;
    let none = stack
        .api
        .get(&format!("/v1/executions/{execution_id}/steps/build/result"))
        .await;
    assert_eq!(none.status, 404, "{}", none.body);
    let detail = none.body["detail"].as_str().unwrap();
    assert!(
        detail.ends_with("has no result: Pat skipped it when it escalated"),
        "{detail}"
    );
    stack.stop().await;
}

#[tokio::test]
async fn an_approval_step_waits_for_a_persons_sign_off_and_a_rejection_fails_the_run() {
    let stack = Stack::start().await;
    let mut approval = step("approve", &["build"], "approval");
    approval["instructions"] = json!("Sign off the production release.");
    approval["requiredSkills"] = json!([]);
    let (_, workflow_id) = workflow(
        &stack,
        vec![
            step("build", &[], "implementation"),
            approval,
            step("release", &["approve"], "implementation"),
        ],
        json!({}),
    )
    .await;

    let (execution_id, _) = stack.api.start_execution(&workflow_id).await;
    let escalation = open_escalation(&stack, &execution_id).await;
    assert_eq!(escalation["approval"], true, "{escalation:#}");
    assert_eq!(escalation["stepId"], "approve");
    assert!(
        escalation["reason"]
            .as_str()
            .unwrap()
            .contains("Sign off the production release.")
    );
    assert!(
        escalation["context"]["outputs"]["build"].is_string(),
        "what is to be approved"
    );
    let requests = stack.llm.requests().len();
    assert_eq!(
        requests, 1,
        "only the build ran: no model is asked to approve"
    );
    let id = escalation["id"].as_str().unwrap();
    let reply = decide(&stack, id, &json!({ "action": "retry" })).await;
    assert_eq!(reply.status, 422, "{}", reply.body);
    let reply = decide(
        &stack,
        id,
        &json!({ "action": "approve", "requestedBy": "Release manager" }),
    )
    .await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    let execution = stack.wait_until_finished(&execution_id, FINISH).await;
    assert_eq!(execution["status"], "completed", "{execution:#}");
    assert_eq!(
        execution["stepResults"]["approve"]["summary"],
        "Approved by Release manager"
    );
    assert_eq!(execution["stepResults"]["release"]["status"], "completed");

    let (execution_id, _) = stack.api.start_execution(&workflow_id).await;
    let escalation = open_escalation(&stack, &execution_id).await;
    let id = escalation["id"].as_str().unwrap();
    let reply = decide(&stack, id, &json!({ "action": "reject", "requestedBy": "Release manager", "reason": "the change freeze" })).await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    let execution = stack.wait_until_finished(&execution_id, FINISH).await;
    assert_eq!(execution["status"], "failed", "{execution:#}");
    assert_eq!(execution["failureCause"]["kind"], "aborted");
    assert_eq!(
        execution["errorMessage"],
        "Release manager rejected the approval of step 'Step approve': the change freeze"
    );
    assert!(
        execution["stepResults"].get("release").is_none(),
        "nothing ran after the rejection"
    );
    let never = stack
        .api
        .get(&format!(
            "/v1/executions/{execution_id}/steps/release/result"
        ))
        .await;
    assert_eq!(never.status, 404, "{}", never.body);
    let detail = never.body["detail"].as_str().unwrap();
    assert!(
        detail.ends_with("has no result: the run failed before it completed"),
        "{detail}"
    );
    stack.stop().await;
}

#[tokio::test]
async fn a_run_past_its_time_for_a_person_waits_escalated_until_one_lets_it_continue() {
    let stack = Stack::start().await;
    // The first step outlasts the run's time for a person (1/60 minute, the shortest: 1 s) by
    // far, so a busy machine that handles the timer late still finds it running.
    stack.llm.set_latency(Duration::from_millis(4000));
    let (_, workflow_id) = workflow(
        &stack,
        vec![
            step("build", &[], "implementation"),
            step("ship", &["build"], "documentation"),
        ],
        json!({ "escalation": { "afterMinutes": 1.0 / 60.0 } }),
    )
    .await;
    let (execution_id, _) = stack.api.start_execution(&workflow_id).await;
    let escalation = open_escalation(&stack, &execution_id).await;
    assert_eq!(escalation["kind"], "execution", "{escalation:#}");
    assert!(escalation["stepId"].is_null());
    assert!(
        escalation["reason"]
            .as_str()
            .unwrap()
            .contains("build (running)"),
        "{escalation:#}"
    );

    // The running step finishes; the next one is not handed out while the run waits.
    let waiting = eventually(FINISH, "the build to complete", || async {
        let view = stack
            .api
            .get(&format!("/v1/executions/{execution_id}"))
            .await
            .body;
        (view["stepResults"]["build"]["status"] == "completed").then_some(view)
    })
    .await;
    assert_eq!(waiting["status"], "escalated");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let view = stack
        .api
        .get(&format!("/v1/executions/{execution_id}"))
        .await
        .body;
    assert!(view["stepResults"].get("ship").is_none(), "{view:#}");
    let reply = stack
        .api
        .post(&format!("/v1/executions/{execution_id}/resume"), &json!({}))
        .await;
    assert_eq!(reply.status, 409, "resolve it instead: {}", reply.body);

    stack.llm.set_latency(Duration::ZERO);
    let id = escalation["id"].as_str().unwrap();
    let reply = decide(
        &stack,
        id,
        &json!({ "action": "continue", "requestedBy": "Pat" }),
    )
    .await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    assert_eq!(reply.body["executionStatus"], "running");
    let execution = stack.wait_until_finished(&execution_id, FINISH).await;
    assert_eq!(execution["status"], "completed", "{execution:#}");
    stack.stop().await;
}

/// The offline provider set to fail: a step fails without an outside model, is not retried
/// (nothing can fix the error) and climbs the ladder to a person.
#[tokio::test]
async fn an_agent_on_an_offline_provider_set_to_fail_reaches_a_person_without_retries() {
    let mut stack = Stack::start().await;
    let broken = BTreeMap::from([(
        "broken".to_owned(),
        ProviderConfig::Offline {
            latency_ms: 0,
            answer: OfflineAnswer::Fail,
        },
    )]);
    stack.run_worker("broken", stack.worker_config("broken", broken));
    let cy = stack
        .api
        .register_agent(&agent("Cy", "analyst", &["research"], "broken"))
        .await;
    let body = json!({
        "name": "Offline failure", "description": "A step that cannot succeed.",
        "workflowType": "pipeline", "participatingAgents": [cy["id"]],
        "configuration": {
            "steps": [step("build", &[], "implementation")],
            "constraints": { "maxRetries": 3 },
            "escalation": { "ladder": ["person"] }
        }
    });
    let workflow_id = stack.api.create_workflow(&body).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (execution_id, _) = stack.api.start_execution(&workflow_id).await;
    let escalation = open_escalation(&stack, &execution_id).await;
    let failures = escalation["context"]["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 1, "one attempt, no retry: {escalation:#}");
    let error = failures[0]["error"].as_str().unwrap();
    assert!(error.contains("answer = fail"), "{error}");
    let log = stack.execution_events(&workflow_id, &execution_id).await;
    let attempts = log
        .iter()
        .filter(|e| matches!(e, Event::StepScheduled(_)))
        .count();
    assert_eq!(attempts, 1);
    stack.stop().await;
}
