//! Assignment weighs the agents' records end to end: of two agents tied on skills and load, the
//! one whose earlier attempts succeeded takes the step from the one whose attempts failed, and
//! the run's own events say which records it started with and why the record decided.

// Test code: a panic is the failure report, in helpers as in tests.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use cadre_proto::events::{AssignmentReason, RecordFigure};
use cadre_proto::{AgentId, Event};
use cadre_tests::Stack;
use cadre_tests::api::agent;
use cadre_tests::stack::FAKE_PROVIDER;
use serde_json::{Value, json};

const FINISH: Duration = Duration::from_secs(60);

/// Creates a one-step workflow of `agents` (in participation order) that gives up at the first
/// failure; returns its id.
async fn study(stack: &Stack, agents: &[&str]) -> String {
    let workflow = json!({
        "name": "Study", "description": "One step.", "workflowType": "pipeline",
        "participatingAgents": agents,
        "configuration": {
            "steps": [{
                "id": "study", "name": "Study", "description": "Study it.", "type": "analysis",
                "requiredSkills": ["research"], "instructions": "Study it.",
                "expectedOutput": "Findings"
            }],
            "constraints": { "maxRetries": 0 }
        }
    });
    stack.api.create_workflow(&workflow).await["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn run(stack: &Stack, workflow: &str) -> (String, Value) {
    let (id, _) = stack.api.start_execution(workflow).await;
    let run = stack.wait_until_finished(&id, FINISH).await;
    (id, run)
}

#[tokio::test]
async fn an_agent_whose_attempts_failed_loses_a_tie_to_one_whose_attempts_succeeded() {
    let stack = Stack::start().await;
    let mut ids = Vec::new();
    for name in ["Ada", "Bo"] {
        let registered = stack
            .api
            .register_agent(&agent(name, "analyst", &["research"], FAKE_PROVIDER))
            .await;
        ids.push(registered["id"].as_str().unwrap().to_owned());
    }
    let (ada, bo) = (ids[0].clone(), ids[1].clone());
    let bo_alone = study(&stack, &[&bo]).await;
    let ada_alone = study(&stack, &[&ada]).await;
    let both = study(&stack, &[&ada, &bo]).await;

    let (_, done) = run(&stack, &bo_alone).await;
    assert_eq!(done["status"], "completed", "{done:#}");
    // Ada's model refuses five requests: five runs fail at their only attempt.
    stack.llm.fail_next(5, 400);
    for _ in 0..5 {
        let (_, failed) = run(&stack, &ada_alone).await;
        assert_eq!(failed["status"], "failed", "{failed:#}");
    }
    // The watcher that keeps the records raises this alert at Ada's fifth failure: it has read
    // Bo's run and Ada's failures before the next start reads the records.
    cadre_tests::eventually(FINISH, "Ada's failure-rate alert", || async {
        let listed = stack.api.get(&format!("/v1/alerts?agentId={ada}")).await;
        (listed.body.as_array().is_some_and(|a| !a.is_empty())).then_some(())
    })
    .await;

    let (run_id, done) = run(&stack, &both).await;
    assert_eq!(done["status"], "completed", "{done:#}");
    let events = stack.execution_events(&both, &run_id).await;
    let Some(Event::ExecutionStarted(started)) = events.first() else {
        panic!("a run starts with ExecutionStarted: {events:?}")
    };
    let record = |id: &str| started.records.get(&AgentId(id.parse().unwrap())).cloned();
    let (of_ada, of_bo) = (record(&ada).unwrap(), record(&bo).unwrap());
    assert_eq!(of_ada.task_success, Some(0.0), "{of_ada:?}");
    assert!(of_ada.attempts >= 4, "{of_ada:?}");
    assert_eq!(
        (of_bo.attempts, of_bo.task_success),
        (1, Some(1.0)),
        "{of_bo:?}"
    );

    let scheduled: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::StepScheduled(s) => Some(s),
            _ => None,
        })
        .collect();
    let [scheduled] = scheduled.as_slice() else {
        panic!("one step, one attempt: {scheduled:?}")
    };
    assert_eq!(
        scheduled.agent.name, "Bo",
        "Ada comes first, but failed before"
    );
    let AssignmentReason::SkillMatch {
        tie_break: Some(tie_break),
        ..
    } = &scheduled.reason
    else {
        panic!("a skill match the record decided: {:?}", scheduled.reason)
    };
    assert_eq!(tie_break.figure, RecordFigure::TaskSuccess);

    let interactions = stack
        .api
        .get(&format!("/v1/executions/{run_id}/interactions"))
        .await;
    assert!(
        interactions.body.to_string().contains(
            "its record broke the tie: task success: Bo 100 % over 1 attempts, Ada 0 % over"
        ),
        "{:#}",
        interactions.body
    );
    stack.stop().await;
}
