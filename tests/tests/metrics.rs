//! Team metrics and alerts end to end: an agent whose model keeps refusing its requests raises
//! one failure-rate alert, listed by `GET /v1/alerts`, however often the log is read again;
//! and the metrics read models show what was measured.

// Test code: a panic is the failure report, in helpers as in tests.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use cadre_proto::{AgentId, Event, TenantId};
use cadre_tests::Stack;
use cadre_tests::api::agent;
use cadre_tests::stack::FAKE_PROVIDER;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const FINISH: Duration = Duration::from_secs(60);

/// The alert events stored for `agent`, read from the log itself.
async fn alerts_in_log(stack: &Stack, agent: &str) -> Vec<Event> {
    let agent = AgentId(agent.parse().unwrap());
    let filter = format!(
        "{}.>",
        cadre_proto::subjects::agent(
            &TenantId::default_tenant(),
            agent,
            cadre_proto::subjects::ALERT_RAISED
        )
    );
    stack
        .bus
        .read_all(&filter)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.envelope.event)
        .collect()
}

async fn get(stack: &Stack, path: &str) -> Value {
    let reply = stack.api.get(path).await;
    assert_eq!(reply.status, 200, "{path}: {}", reply.body);
    reply.body
}

#[tokio::test]
async fn an_agent_that_keeps_failing_raises_one_failure_rate_alert_and_the_metrics_show_it() {
    let stack = Stack::start().await;
    let ada = stack
        .api
        .register_agent(&agent("Ada", "analyst", &["research"], FAKE_PROVIDER))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let bo = stack
        .api
        .register_agent(&agent("Bo", "reviewer", &["code review"], FAKE_PROVIDER))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let workflow = stack
        .api
        .create_workflow(&json!({
            "name": "Study", "description": "One reviewed step.", "workflowType": "pipeline",
            "participatingAgents": [ada, bo],
            "configuration": {
                "steps": [{
                    "id": "study", "name": "Study", "description": "Study it.", "type": "analysis",
                    "requiredSkills": ["research"], "preferredAgentId": ada,
                    "instructions": "Study it.", "expectedOutput": "Findings",
                    "timeoutMinutes": 5, "reviewRequired": true, "reviewerRole": "reviewer"
                }],
                "constraints": { "maxRetries": 0 }
            }
        }))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // Ada's model refuses five requests: five runs fail at their only attempt, which is an
    // error no retry fixes.
    stack.llm.fail_next(5, 400);
    let mut failed = Vec::new();
    for _ in 0..5 {
        let (id, _) = stack.api.start_execution(&workflow).await;
        let run = stack.wait_until_finished(&id, FINISH).await;
        assert_eq!(run["status"], "failed", "{run:#}");
        failed.push(id);
    }
    let alerts = cadre_tests::eventually(FINISH, "the failure-rate alert", || async {
        let listed = get(&stack, &format!("/v1/alerts?agentId={ada}")).await;
        (listed.as_array().unwrap().len() == 1).then_some(listed)
    })
    .await;
    let alert = &alerts[0];
    assert_eq!(alert["condition"], "failure_rate");
    assert_eq!(alert["crossing"], 1);
    assert_eq!(
        (alert["value"].as_f64(), alert["threshold"].as_f64()),
        (Some(100.0), Some(20.0))
    );
    assert_eq!(
        alert["sample"], 5,
        "raised at the fifth attempt, not before"
    );
    assert_eq!(alert["executionId"], json!(failed[4]));
    assert_eq!(alert["stepId"], "study");
    assert!(
        alert["message"]
            .as_str()
            .unwrap()
            .contains("5 of its 5 ended attempts"),
        "{alert}"
    );

    // A run that goes well: Ada's work, approved by Bo. The rate stays over the limit (5 of
    // 6): nothing new is raised.
    let (done, _) = stack.api.start_execution(&workflow).await;
    let run = stack.wait_until_finished(&done, FINISH).await;
    assert_eq!(run["status"], "completed", "{run:#}");
    assert!(run["actualDuration"].is_i64(), "{run:#}");
    assert!(get(&stack, &format!("/v1/executions/{}", failed[0])).await["actualDuration"].is_i64());

    let performance = cadre_tests::eventually(FINISH, "Ada's sixth attempt counted", || async {
        let body = get(&stack, &format!("/v1/agents/{ada}/performance")).await;
        (body["facts"]["attempts"] == 6 && body["qualityScore"] == 10.0).then_some(body)
    })
    .await;
    assert_eq!(performance["name"], "Ada");
    assert_eq!(performance["taskSuccess"], 16.67, "{performance:#}");
    assert_eq!(performance["escalationRate"], 0.0);
    assert!(performance["avgCompletionTime"].as_f64().unwrap() > 0.0);
    assert!(
        performance["timeAgainstEstimate"].as_f64().unwrap() < 100.0,
        "well within 5 minutes"
    );
    assert_eq!(
        performance["collaborationScore"],
        Value::Null,
        "nobody asked or handed off"
    );
    assert!(performance.get("userSatisfaction").is_none());
    let facts = &performance["facts"];
    assert_eq!(
        (facts["failed"].clone(), facts["tasks"].clone()),
        (json!(5), json!(6))
    );
    assert_eq!(
        (facts["tasksCompleted"].clone(), facts["reviews"].clone()),
        (json!(1), json!(1))
    );

    let everyone = get(&stack, "/v1/agents/performance").await;
    let reviewer = everyone
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["agentId"] == json!(bo))
        .unwrap();
    assert_eq!(reviewer["facts"]["attempts"], 1, "its review");
    assert_eq!(reviewer["taskSuccess"], 100.0);
    assert_eq!(
        reviewer["qualityScore"],
        Value::Null,
        "nobody reviewed its work"
    );

    let metrics = get(&stack, &format!("/v1/executions/{done}/metrics")).await;
    let interactions = get(&stack, &format!("/v1/executions/{done}/interactions")).await;
    assert_eq!(
        metrics["totalInteractions"],
        json!(interactions.as_array().unwrap().len()),
        "{metrics:#}"
    );
    assert_eq!(metrics["qualityScore"], 10.0);
    assert_eq!(
        metrics["efficiencyRating"], 10.0,
        "done within its estimate"
    );
    assert_eq!(metrics["averageResponseTime"], Value::Null);
    assert_eq!(metrics["collaborationScore"], Value::Null);
    let knowledge = get(&stack, &format!("/v1/workflows/{workflow}/knowledge")).await;
    assert_eq!(
        metrics["knowledgeItemsCreated"],
        json!(knowledge.as_array().unwrap().len())
    );
    let whole = get(&stack, &format!("/v1/workflows/{workflow}/metrics")).await;
    assert_eq!(whole["executions"], 6);
    assert_eq!(
        (
            whole["facts"]["attempts"].clone(),
            whole["facts"]["failedAttempts"].clone()
        ),
        (json!(7), json!(5)),
        "{whole:#}"
    );

    let history = get(&stack, &format!("/v1/executions/{}/history", failed[0])).await;
    let records = history.as_array().unwrap();
    assert_eq!(records.len(), 1, "{history:#}");
    assert_eq!(records[0]["action"], "failed");
    assert_eq!(records[0]["agentId"], json!(ada));
    assert!(
        records[0]["result"].as_str().unwrap().contains("400"),
        "{history:#}"
    );
    let actions: Vec<Value> = get(&stack, &format!("/v1/executions/{done}/history"))
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["action"].clone())
        .collect();
    assert_eq!(actions, ["completed", "approved"]);

    let bad = stack.api.get("/v1/alerts?condition=slow").await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.content_type, "application/problem+json");
    assert!(
        bad.body["detail"]
            .as_str()
            .unwrap()
            .contains("failure_rate"),
        "{}",
        bad.body
    );
    assert_eq!(
        get(&stack, &format!("/v1/alerts?agentId={bo}")).await,
        json!([])
    );

    // A second coordinator reads the whole log again and decides the same alert: it is not
    // stored twice.
    let stop = CancellationToken::new();
    let (second, _) = stack.second_coordinator(stop.clone()).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(alerts_in_log(&stack, &ada).await.len(), 1);
    stop.cancel();
    second.wait().await.unwrap();
    stack.stop().await;
}
