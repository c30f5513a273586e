//! The web console, end to end: every page answers with real data from a run, an approval
//! waiting for a person shows with its actions, and unknown ids are 404 pages. (The browser
//! test, `scripts/browser-test.sh`, drives the pages and their live updates in Chromium.)

// Test code: a panic is the failure report, in helpers as in tests.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use cadre_tests::api::Reply;
use cadre_tests::stack::FAKE_PROVIDER;
use cadre_tests::{Stack, eventually};
use serde_json::{Value, json};

const FINISH: Duration = Duration::from_secs(90);

/// A page that answered 200 with HTML; its text.
async fn page(stack: &Stack, path: &str) -> String {
    let reply = stack.api.get(path).await;
    assert_eq!(reply.status, 200, "{path}: {}", reply.body);
    assert!(
        reply.content_type.starts_with("text/html"),
        "{path}: {}",
        reply.content_type
    );
    html(&reply)
}

fn html(reply: &Reply) -> String {
    reply.body.as_str().unwrap().to_owned()
}

fn contains_all(text: &str, what: &[&str], path: &str) {
    for needle in what {
        assert!(text.contains(needle), "{path} shows {needle:?}:\n{text}");
    }
}

#[tokio::test]
async fn every_page_shows_a_finished_run_and_unknown_ids_are_not_found() {
    let stack = Stack::start().await;
    let (agents, workflow_id) = stack.api.team_and_pipeline(FAKE_PROVIDER, 3).await;
    let (execution_id, _) = stack.api.start_execution(&workflow_id).await;
    let run = stack.api.wait_until_finished(&execution_id, FINISH).await;
    assert_eq!(run["status"], "completed", "{run:#}");

    // `/` leads to the console, which lists the workflow and the system templates.
    let home = stack.api.get("/").await;
    assert_eq!(home.status, 200);
    contains_all(
        &html(&home),
        &["Feature pipeline", "Implement a feature", "completed"],
        "/",
    );

    let path = format!("/console/workflows/{workflow_id}");
    let workflow = page(&stack, &path).await;
    contains_all(
        &workflow,
        &[
            "Analyse requirements",
            r#"id="node-step-3" class="node st-pending""#,
            "Start run",
            &format!("/console/executions/{execution_id}"),
            "Team knowledge",
            "By agent",
        ],
        &path,
    );

    let path = format!("/console/executions/{execution_id}");
    let execution = page(&stack, &path).await;
    contains_all(
        &execution,
        &[
            r#"id="node-step-1" class="node st-completed""#,
            r#"id="step-step-3""#,
            "3 of 3 steps done",
            "Ada",
            "task delegation",
            "By step",
            "Nothing waits for a person.",
        ],
        &path,
    );
    // A finished run's page opens no feed.
    assert!(!execution.contains("data-feed="), "{execution}");

    let path = format!("/console/history?workflowId={workflow_id}&status=completed");
    let history = page(&stack, &path).await;
    contains_all(
        &history,
        &[&format!("/console/executions/{execution_id}"), "#1"],
        &path,
    );
    let history = page(&stack, "/console/history?status=failed").await;
    assert!(history.contains("No run matches."), "{history}");

    let agents_page = page(&stack, "/console/agents").await;
    contains_all(
        &agents_page,
        &["Ada", "Linus", "Grace", "Task success %", "Alerts"],
        "/console/agents",
    );
    let path = format!("/console/agents/{}", agents[0]);
    contains_all(
        &page(&stack, &path).await,
        &["Ada", "Performance", "By model"],
        &path,
    );

    let builder = page(&stack, "/console/builder").await;
    contains_all(
        &builder,
        &[r#"form id="builder""#, &format!(r#"value="{}""#, agents[1])],
        "/console/builder",
    );

    let script = stack.api.get("/console/assets/console.js").await;
    assert_eq!(script.status, 200);
    assert!(script.content_type.starts_with("text/javascript"));

    let ghost = uuid::Uuid::now_v7();
    for path in [
        format!("/console/workflows/{ghost}"),
        format!("/console/executions/{ghost}"),
        format!("/console/agents/{ghost}"),
        format!("/console/escalations/{ghost}/card"),
        "/console/executions/not-a-uuid".to_owned(),
    ] {
        let reply = stack.api.get(&path).await;
        assert_eq!(reply.status, 404, "{path}: {}", reply.body);
        assert!(html(&reply).contains("Not Found"), "{path}");
    }
    let reply = stack.api.get("/console/history?workflowId=nope").await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    stack.stop().await;
}

#[tokio::test]
async fn an_approval_waiting_for_a_person_shows_with_its_actions() {
    let stack = Stack::start().await;
    let (agents, _) = stack.api.team_and_pipeline(FAKE_PROVIDER, 1).await;
    let step = |id: &str, kind: &str, depends_on: &[&str]| {
        json!({
            "id": id, "name": format!("Step {id}"), "description": "A part of the work.",
            "type": kind, "dependsOn": depends_on,
            "instructions": format!("Do {id}."), "expectedOutput": "It, done."
        })
    };
    let workflow = stack
        .api
        .create_workflow(&json!({
            "name": "Release", "description": "Build, then sign off.", "workflowType": "pipeline",
            "participatingAgents": agents,
            "configuration": { "steps": [
                step("build", "implementation", &[]),
                step("sign-off", "approval", &["build"]),
            ] }
        }))
        .await;
    let (execution_id, _) = stack
        .api
        .start_execution(workflow["id"].as_str().unwrap())
        .await;
    let escalation: Value = eventually(FINISH, "an open escalation", || async {
        let reply = stack
            .api
            .get(&format!(
                "/v1/escalations?status=open&executionId={execution_id}"
            ))
            .await;
        reply.body.as_array().and_then(|a| a.first().cloned())
    })
    .await;
    let id = escalation["id"].as_str().unwrap();

    let escalations = page(&stack, "/console/escalations").await;
    contains_all(
        &escalations,
        &[
            &format!(r#"id="esc-{id}""#),
            "Approval: Step sign-off",
            r#"data-action="approve""#,
            r#"data-action="reject""#,
        ],
        "/console/escalations",
    );
    let path = format!("/console/executions/{execution_id}");
    let execution = page(&stack, &path).await;
    contains_all(
        &execution,
        &[
            &format!(r#"id="esc-{id}""#),
            r#"id="node-sign-off" class="node st-escalated""#,
            &format!(r#"data-feed="/v1/executions/{execution_id}/events""#),
        ],
        &path,
    );
    let path = format!("/console/escalations/{id}/card");
    contains_all(
        &page(&stack, &path).await,
        &[r#"data-action="abort""#],
        &path,
    );
    let resolved = page(&stack, "/console/escalations?status=resolved").await;
    assert!(resolved.contains("Nothing here."), "{resolved}");
    stack.stop().await;
}
