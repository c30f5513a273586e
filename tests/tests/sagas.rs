//! The coordinator agent end to end: a run that fails undoes the steps that declare how, in
//! reverse order of completion, then its coordinator agent re-plans and the run goes on with the
//! new steps (a saga); and the coordinator agent chooses who takes a step.

// Test code: a panic is the failure report, in helpers as in tests.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use cadre_proto::Event;
use cadre_proto::events::AssignmentReason;
use cadre_tests::api::agent;
use cadre_tests::stack::FAKE_PROVIDER;
use cadre_tests::{Stack, eventually};
use serde_json::{Value, json};

const FINISH: Duration = Duration::from_secs(90);
/// A provider only a worker started late offers.
const QUEUED_PROVIDER: &str = "late";

fn step(id: &str, depends_on: &[&str], compensation: Option<&str>) -> Value {
    let mut step = json!({
        "id": id, "name": format!("Step {id}"), "description": "A part of the release.",
        "type": "implementation", "requiredSkills": ["research"], "dependsOn": depends_on,
        "instructions": format!("Do {id}."), "expectedOutput": "It, done."
    });
    if let Some(compensation) = compensation {
        step["compensation"] = json!(compensation);
    }
    step
}

/// Ada and Bo, analysts, and Cy, who coordinates; their ids in that order.
async fn team(stack: &Stack) -> Vec<String> {
    let mut ids = Vec::new();
    for (name, role, skills) in [
        ("Ada", "analyst", ["research"]),
        ("Bo", "analyst", ["research"]),
        ("Cy", "coordinator", ["planning"]),
    ] {
        let created = stack
            .api
            .register_agent(&agent(name, role, &skills, FAKE_PROVIDER))
            .await;
        ids.push(created["id"].as_str().unwrap().to_owned());
    }
    ids
}

#[tokio::test]
async fn a_failing_run_undoes_two_steps_in_reverse_order_then_re_plans_and_completes() {
    let mut stack = Stack::start().await;
    let mut ids = team(&stack).await;
    // Dee's provider has no worker yet: her step waits in its queue while the run re-plans.
    let dee = stack
        .api
        .register_agent(&agent("Dee", "analyst", &["research"], QUEUED_PROVIDER))
        .await;
    ids.push(dee["id"].as_str().unwrap().to_owned());
    let mut docs = step("docs", &[], None);
    docs["preferredAgentId"] = dee["id"].clone();
    // A person's sign-off, waiting when the run re-plans: the new plan drops it.
    let mut sign_off = step("sign-off", &[], None);
    sign_off["type"] = json!("approval");
    sign_off["requiredSkills"] = json!([]);
    let workflow = stack
        .api
        .create_workflow(&json!({
            "name": "Release", "description": "Migrate, deploy, verify.",
            "workflowType": "pipeline", "participatingAgents": ids, "coordinatorAgentId": ids[2],
            "configuration": {
                "steps": [
                    step("migrate", &[], Some("Restore the snapshot taken before the migration.")),
                    step("deploy", &["migrate"], Some("Roll the deployment back.")),
                    step("verify", &["deploy"], None),
                    sign_off,
                    docs,
                ],
                "constraints": { "maxRetries": 0 },
                "saga": { "replan": true }
            }
        }))
        .await;
    let workflow_id = workflow["id"].as_str().unwrap().to_owned();

    stack.llm.fail_step("Step verify", 400);
    stack.llm.propose_plan(
        r#"{"steps": [{"id": "canary", "name": "Canary release", "description": "Release to 5% first.", "type": "implementation", "requiredSkills": ["research"], "dependsOn": [], "instructions": "Deploy to the canary pool and watch the error rate.", "expectedOutput": "A healthy canary."}]}"#,
    );
    let (execution_id, _) = stack.api.start_execution(&workflow_id).await;
    let execution = stack.wait_until_finished(&execution_id, FINISH).await;
    assert_eq!(execution["status"], "completed", "{execution:#}");
    let results = &execution["stepResults"];
    for step in ["undo-deploy", "undo-migrate", "replan-1", "canary"] {
        assert_eq!(results[step]["status"], "completed", "{step}: {results:#}");
    }
    assert_eq!(results["verify"]["status"], "failed");
    assert_eq!(
        (
            &results["sign-off"]["status"],
            &results["sign-off"]["replacedWhile"]
        ),
        (&json!("replaced"), &json!("escalated")),
        "{results:#}"
    );
    assert_eq!(
        (
            &results["docs"]["status"],
            &results["docs"]["replacedWhile"]
        ),
        (&json!("replaced"), &json!("scheduled")),
        "{results:#}"
    );
    assert!(
        execution["finalOutput"]["canary"].is_object(),
        "{execution:#}"
    );

    let log = stack.execution_events(&workflow_id, &execution_id).await;
    let saga = log
        .iter()
        .find_map(|e| match e {
            Event::SagaStarted(s) => Some(s),
            _ => None,
        })
        .expect("a saga");
    let order: Vec<&str> = saga.steps.iter().map(|s| s.as_str()).collect();
    assert_eq!(order, ["deploy", "migrate"], "reverse order of completion");
    assert!(saga.replan);
    let scheduled: Vec<(String, String)> = log
        .iter()
        .filter_map(|e| match e {
            Event::StepScheduled(s) => Some((s.step.id.to_string(), s.agent.id.to_string())),
            _ => None,
        })
        .collect();
    let position = |step: &str| scheduled.iter().position(|(s, _)| s == step).unwrap();
    assert!(position("undo-deploy") < position("undo-migrate"));
    assert!(position("undo-migrate") < position("replan-1"));
    assert!(position("replan-1") < position("canary"));
    let author = |step: &str| {
        log.iter()
            .find_map(|e| match e {
                Event::StepCompleted(c) if c.attempt.step_id.as_str() == step => {
                    Some(c.attempt.agent_id.to_string())
                }
                _ => None,
            })
            .unwrap()
    };
    assert_eq!(
        scheduled[position("undo-deploy")].1,
        author("deploy"),
        "whoever deployed rolls back"
    );
    assert_eq!(
        scheduled[position("replan-1")].1,
        ids[2],
        "the coordinator re-plans"
    );
    let replanning = log.iter().find_map(|e| match e {
        Event::StepScheduled(s) if s.step.id.as_str() == "replan-1" => Some(s),
        _ => None,
    });
    assert_eq!(replanning.unwrap().reason, AssignmentReason::Replans);
    assert!(
        log.iter()
            .any(|e| matches!(e, Event::ExecutionReplanned(r) if r.steps.len() == 1))
    );

    // The console draws the new plan and counts its steps; the table keeps the whole run.
    let path = format!("/console/executions/{execution_id}");
    let page = stack.api.get(&path).await;
    let page = page.body.as_str().unwrap_or_default();
    for shown in [
        "1 of 1 steps done",
        "Re-planned (1)",
        r#"id="node-canary" class="node st-completed""#,
        r#"id="step-verify""#,
    ] {
        assert!(page.contains(shown), "{path} shows {shown:?}:\n{page}");
    }
    assert!(!page.contains(r#"id="node-verify""#), "{page}");

    let interactions = stack
        .api
        .get(&format!("/v1/executions/{execution_id}/interactions"))
        .await
        .body;
    let messages: Vec<&str> = interactions
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["message"].as_str().unwrap())
        .collect();
    assert!(
        messages
            .iter()
            .any(|m| m.starts_with("Saga started: undoing deploy, then migrate, then re-planning")),
        "{messages:#?}"
    );
    assert!(
        messages
            .iter()
            .any(|m| m.starts_with("Execution re-planned (1): the run goes on with canary")),
        "{messages:#?}"
    );
    // Nobody can sign off a step the run no longer has: its request and escalation are closed,
    // and nothing of the ended run waits for an answer.
    let requests: Vec<&Value> = interactions
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["requiresResponse"] == true)
        .collect();
    assert!(
        requests.iter().all(|i| i["respondedAt"].is_string()),
        "{requests:#?}"
    );
    let sign_off = requests
        .iter()
        .find(|i| i["relatedStepId"] == "sign-off")
        .unwrap();
    assert_eq!(
        (&sign_off["responseReceived"], &sign_off["responseMessage"]),
        (&json!(false), &json!("execution re-planned")),
    );
    let escalations = stack
        .api
        .get(&format!("/v1/escalations?executionId={execution_id}"))
        .await
        .body;
    let sign_off = escalations
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["stepId"] == "sign-off")
        .unwrap();
    assert_eq!(
        (&sign_off["status"], &sign_off["closedReason"]),
        (&json!("closed"), &json!("execution re-planned")),
        "{escalations:#}"
    );

    // A worker for Dee's provider starts after the re-plan dropped her step: it takes the step
    // from its queue and gives it up, calling no model and recording nothing.
    let providers = BTreeMap::from([(QUEUED_PROVIDER.to_owned(), stack.fake_provider(10))]);
    stack.run_worker("late", stack.worker_config("late", providers));
    eventually(FINISH, "the queued step taken and given up", || async {
        let queue = stack.provider_queue(QUEUED_PROVIDER).await?;
        (queue.delivered.consumer_sequence >= 1
            && queue.num_pending == 0
            && queue.num_ack_pending == 0)
            .then_some(())
    })
    .await;
    assert!(
        !stack
            .llm
            .requests()
            .iter()
            .any(|r| r.step_name() == Some("Step docs")),
        "a dropped step's model call"
    );
    let log = stack.execution_events(&workflow_id, &execution_id).await;
    assert!(
        !log.iter()
            .any(|e| matches!(e, Event::StepStarted(s) if s.attempt.step_id.as_str() == "docs")),
        "a dropped step started"
    );
    stack.stop().await;
}

#[tokio::test]
async fn the_coordinator_agent_chooses_who_takes_a_step_and_the_log_says_why() {
    let stack = Stack::start().await;
    let ids = team(&stack).await;
    let workflow = stack
        .api
        .create_workflow(&json!({
            "name": "Research", "description": "One step, chosen for.",
            "workflowType": "pipeline", "participatingAgents": ids, "coordinatorAgentId": ids[2],
            "configuration": { "steps": [step("survey", &[], None)] }
        }))
        .await;
    stack.llm.delegate_to("Bo");
    let (execution_id, _) = stack
        .api
        .start_execution(workflow["id"].as_str().unwrap())
        .await;
    let execution = stack.wait_until_finished(&execution_id, FINISH).await;
    assert_eq!(execution["status"], "completed", "{execution:#}");
    assert_eq!(
        execution["stepResults"]["survey"]["agentId"],
        ids[1].as_str()
    );
    assert_eq!(
        execution["agentAssignments"]["survey"]["reason"],
        json!({ "kind": "delegated", "reasoning": "Bo knows this code best." })
    );
    let interactions = stack
        .api
        .get(&format!("/v1/executions/{execution_id}/interactions"))
        .await
        .body;
    let delegation = interactions
        .as_array()
        .unwrap()
        .iter()
        .find(|i| {
            i["interactionType"] == "task_delegation"
                && i["message"]
                    .as_str()
                    .unwrap()
                    .starts_with("Assigned Step survey to Bo")
        })
        .expect("the delegation in the interaction log");
    assert!(
        delegation["message"]
            .as_str()
            .unwrap()
            .ends_with("chosen by the coordinator agent: Bo knows this code best."),
        "{delegation:#}"
    );
    assert_eq!(delegation["fromAgentId"], ids[2].as_str());
    stack.stop().await;
}
