//! Agents that collaborate, end to end: a step taken over by an agent of another role is handed
//! off (the seed's `TaskHandoff`), and every agent's status (`AgentStatus`) follows its work,
//! both read through the API.

// Test code: a panic is the failure report, in helpers as in tests.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use cadre_tests::Stack;
use cadre_tests::stack::FAKE_PROVIDER;
use serde_json::json;

const FINISH: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_step_taken_over_by_another_agent_is_handed_off_and_agents_report_their_status() {
    let stack = Stack::start().await;
    // Ada (analyst) analyses, Linus (engineer) implements; Grace (reviewer) has no step.
    let (agents, workflow_id) = stack.api.team_and_pipeline(FAKE_PROVIDER, 2).await;
    let api = &stack.api;
    let status_of = |agent: &str| {
        let path = format!("/v1/agents/{agent}/status");
        async move { api.get(&path).await }
    };
    let idle = status_of(&agents[0]).await;
    assert_eq!(idle.status, 200, "{}", idle.body);
    assert_eq!(idle.body["state"], "idle", "no step yet: {}", idle.body);

    let (execution_id, _) = stack.api.start_execution(&workflow_id).await;
    let execution = stack.wait_until_finished(&execution_id, FINISH).await;
    assert_eq!(execution["status"], "completed", "{execution:#}");
    // The read models hold the run's end, so they hold everything recorded before it.

    let reply = stack
        .api
        .get(&format!("/v1/executions/{execution_id}/handoffs"))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let handoffs = reply.body.as_array().unwrap();
    assert_eq!(handoffs.len(), 1, "one step taken over: {:#}", reply.body);
    let handoff = &handoffs[0];
    assert_eq!(handoff["fromAgent"], agents[0].as_str());
    assert_eq!(handoff["toAgent"], agents[1].as_str());
    assert_eq!(handoff["taskId"], "step-2");
    assert_eq!(handoff["taskName"], "Implement the change");
    assert_eq!(handoff["executionId"], execution_id.as_str());
    let summary = execution["stepResults"]["step-1"]["summary"]
        .as_str()
        .unwrap();
    let quoted: String = summary.chars().take(300).collect();
    let context = &handoff["context"];
    assert!(
        context["completedWork"]
            .as_str()
            .unwrap()
            .starts_with(&format!("Analyse requirements: {}", quoted.trim_end())),
        "{handoff:#}"
    );
    assert_eq!(
        context["remainingWork"],
        "Implement the change. Build on what the team already shared."
    );
    assert_eq!(
        context["dependencies"],
        json!(["step-1 (Analyse requirements): completed by Ada"])
    );
    assert_eq!(
        context["constraints"],
        json!([
            "each attempt may take at most 10 minute(s) from when it is handed to the workers \
             (timeoutMinutes)"
        ])
    );
    assert_eq!(
        handoff["successCriteria"],
        "A description of the implementation"
    );
    assert_eq!(handoff["estimatedTime"], 10.0);
    let escalation = handoff["escalationConditions"].as_array().unwrap();
    assert!(
        escalation
            .iter()
            .any(|c| c.as_str().unwrap().contains("times out")),
        "{escalation:?}"
    );

    // The handoff counts for whoever took it, and as completed once its step was.
    let taker = stack
        .api
        .get(&format!("/v1/agents/{}/performance", agents[1]))
        .await;
    assert_eq!(taker.status, 200, "{}", taker.body);
    let facts = &taker.body["facts"];
    assert_eq!(
        (
            facts["handoffsReceived"].clone(),
            facts["handoffsCompleted"].clone()
        ),
        (json!(1), json!(1)),
        "{:#}",
        taker.body
    );
    let run = stack
        .api
        .get(&format!("/v1/executions/{execution_id}/metrics"))
        .await;
    assert_eq!(run.status, 200, "{}", run.body);
    assert_eq!(
        (
            run.body["facts"]["handoffs"].clone(),
            run.body["facts"]["handoffsCompleted"].clone()
        ),
        (json!(1), json!(1)),
        "{:#}",
        run.body
    );

    // Each agent's latest status is its step's completion, projected from the step's events.
    for (agent, step) in [(&agents[0], "step-1"), (&agents[1], "step-2")] {
        let status = status_of(agent).await;
        assert_eq!(status.status, 200, "{}", status.body);
        let status = status.body;
        assert_eq!(status["agentId"], agent.as_str());
        assert_eq!(status["state"], "completed", "{status:#}");
        assert_eq!(status["progress"], 100);
        assert_eq!(status["stepId"], step);
        assert_eq!(status["executionId"], execution_id.as_str());
        assert_eq!(status["blockers"], json!([]));
        assert_eq!(status["requestedSupport"], json!([]));
        assert!(status["estimatedCompletion"].is_string(), "{status:#}");
    }
    assert_eq!(status_of(&agents[2]).await.body["state"], "idle");

    // A step that waits for the work of two other agents is handed over by each: both
    // handoffs travel in its one scheduling, each listed once, page by page.
    let fan_in = stack
        .api
        .create_workflow(&json!({
            "name": "Two sources, one build",
            "description": "Research and tests, then a build that needs both.",
            "workflowType": "parallel",
            "participatingAgents": agents,
            "configuration": { "steps": [
                fan_in_step("research", &agents[0], &[]),
                fan_in_step("tests", &agents[2], &[]),
                fan_in_step("build", &agents[1], &["research", "tests"]),
            ] }
        }))
        .await;
    let (fan_in_run, _) = api.start_execution(fan_in["id"].as_str().unwrap()).await;
    let execution = stack.wait_until_finished(&fan_in_run, FINISH).await;
    assert_eq!(execution["status"], "completed", "{execution:#}");
    let mut listed = Vec::new();
    let mut next = Some(format!("/v1/executions/{fan_in_run}/handoffs?limit=1"));
    while let Some(page) = next {
        let reply = api.get(&page).await;
        assert_eq!(reply.status, 200, "{page}: {}", reply.body);
        listed.extend(reply.body.as_array().unwrap().iter().cloned());
        assert!(listed.len() <= 2, "a handoff listed twice: {listed:#?}");
        next = reply.next;
    }
    let mut from: Vec<_> = listed
        .iter()
        .map(|h| h["fromAgent"].as_str().unwrap())
        .collect();
    from.sort_unstable();
    let mut expected = [agents[0].as_str(), agents[2].as_str()];
    expected.sort_unstable();
    assert_eq!(from, expected, "{listed:#?}");
    assert!(
        listed
            .iter()
            .all(|h| h["toAgent"] == agents[1].as_str() && h["taskId"] == "build")
    );
    assert_ne!(
        listed[0]["id"], listed[1]["id"],
        "each handoff has an id of its own"
    );

    // Unknown ids are problems.
    let ghost = uuid::Uuid::now_v7();
    for path in [
        format!("/v1/agents/{ghost}/status"),
        format!("/v1/executions/{ghost}/handoffs"),
    ] {
        let reply = stack.api.get(&path).await;
        assert_eq!(reply.status, 404, "{path}: {}", reply.body);
        assert_eq!(reply.content_type, "application/problem+json", "{path}");
    }
    stack.stop().await;
}

/// A step of the fan-in workflow, for the agent `agent` (by id).
fn fan_in_step(id: &str, agent: &str, depends_on: &[&str]) -> serde_json::Value {
    json!({
        "id": id,
        "name": format!("Step {id}"),
        "description": format!("The {id} of the feature."),
        "type": "implementation",
        "requiredSkills": [],
        "instructions": format!("Do the {id}."),
        "expectedOutput": format!("The {id}"),
        "preferredAgentId": agent,
        "dependsOn": depends_on,
    })
}
