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
    let run = stack.wait_until_finished(&execution_id, FINISH).await;
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
        format!("/console/templates/{ghost}"),
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

/// A workflow whose runs build, then wait for a person to sign off: they stay running.
async fn release(stack: &Stack, agents: &[String]) -> Value {
    let step = |id: &str, kind: &str, depends_on: &[&str]| {
        json!({
            "id": id, "name": format!("Step {id}"), "description": "A part of the work.",
            "type": kind, "dependsOn": depends_on,
            "instructions": format!("Do {id}."), "expectedOutput": "It, done."
        })
    };
    stack
        .api
        .create_workflow(&json!({
            "name": "Release", "description": "Build, then sign off.", "workflowType": "pipeline",
            "participatingAgents": agents,
            "configuration": { "steps": [
                step("build", "implementation", &[]),
                step("sign-off", "approval", &["build"]),
            ] }
        }))
        .await
}

#[tokio::test]
async fn an_approval_waiting_for_a_person_shows_with_its_actions() {
    let stack = Stack::start().await;
    let (agents, _) = stack.api.team_and_pipeline(FAKE_PROVIDER, 1).await;
    let workflow = release(&stack, &agents).await;
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

/// The tag of the element with `attribute` (`name="value"`) in `html`, up to its `>`.
fn tag<'a>(html: &'a str, attribute: &str) -> &'a str {
    let at = html
        .find(attribute)
        .unwrap_or_else(|| panic!("no {attribute} in:\n{html}"));
    let start = html[..at].rfind('<').unwrap();
    let end = at + html[at..].find('>').unwrap();
    &html[start..=end]
}

/// Which of the run's control buttons the page shows (the others are `hidden`).
fn run_actions_shown(html: &str) -> Vec<&'static str> {
    ["pause", "resume", "cancel"]
        .into_iter()
        .filter(|a| !tag(html, &format!(r#"data-run-action="{a}""#)).contains(" hidden"))
        .collect()
}

#[tokio::test]
async fn run_and_workflow_controls_show_as_their_status_allows() {
    let stack = Stack::start().await;
    let (agents, _) = stack.api.team_and_pipeline(FAKE_PROVIDER, 1).await;
    let workflow = release(&stack, &agents).await;
    let workflow_id = workflow["id"].as_str().unwrap();
    let (execution_id, _) = stack.api.start_execution(workflow_id).await;

    // A command answers once the read models have its effect: the page read next shows it.
    let path = format!("/console/executions/{execution_id}");
    let control = |action: &'static str| {
        let stack = &stack;
        let execution_id = &execution_id;
        async move {
            let reply = stack
                .api
                .post(
                    &format!("/v1/executions/{execution_id}/{action}"),
                    &json!({ "requestedBy": "console test", "reason": "checking the page" }),
                )
                .await;
            assert_eq!(reply.status, 202, "{action}: {}", reply.body);
        }
    };
    let running = page(&stack, &path).await;
    assert_eq!(
        run_actions_shown(&running),
        ["pause", "cancel"],
        "{running}"
    );
    contains_all(
        &running,
        &[r#"<dialog id="cancel-dialog""#, r#"data-pointer="/reason""#],
        &path,
    );
    control("pause").await;
    let paused = page(&stack, &path).await;
    assert_eq!(run_actions_shown(&paused), ["resume", "cancel"], "{paused}");
    assert!(
        paused.contains(r#"<span class="badge st-paused">"#),
        "{paused}"
    );
    control("resume").await;
    let resumed = page(&stack, &path).await;
    assert_eq!(
        run_actions_shown(&resumed),
        ["pause", "cancel"],
        "{resumed}"
    );
    control("cancel").await;
    let cancelled = page(&stack, &path).await;
    assert!(run_actions_shown(&cancelled).is_empty(), "{cancelled}");
    assert!(!cancelled.contains("data-feed="), "{cancelled}");

    let path = format!("/console/workflows/{workflow_id}");
    let workflow_page = page(&stack, &path).await;
    assert!(
        tag(&workflow_page, r#"id="workflow-actions""#)
            .contains(&format!(r#"data-workflow="{workflow_id}""#)),
        "{workflow_page}"
    );
    tag(&workflow_page, r#"data-workflow-action="pause""#);
    let reply = stack
        .api
        .post(&format!("/v1/workflows/{workflow_id}/pause"), &json!({}))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    // As the script reloads it for the pause's event: once the read models have reached it.
    let paused = page(&stack, &format!("{path}?at=1")).await;
    tag(&paused, r#"data-workflow-action="resume""#);
    assert!(
        !paused.contains(r#"data-workflow-action="pause""#),
        "{paused}"
    );
    assert!(
        paused.contains(r#"<span class="badge st-paused">"#),
        "{paused}"
    );
    stack.stop().await;
}

#[tokio::test]
async fn a_template_has_a_form_mapping_its_roles_to_agents() {
    let stack = Stack::start().await;
    let (agents, _) = stack.api.team_and_pipeline(FAKE_PROVIDER, 1).await;
    let templates = stack.api.get("/v1/templates").await.body;
    let template = templates
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "Critical production bug resolution")
        .unwrap();
    let id = template["id"].as_str().unwrap();
    let roles: Vec<&str> = template["requiredAgentRoles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    assert!(!roles.is_empty());

    let home = page(&stack, "/console").await;
    assert!(
        home.contains(&format!(r#"href="/console/templates/{id}#from-template""#)),
        "{home}"
    );
    let path = format!("/console/templates/{id}");
    let form = page(&stack, &path).await;
    contains_all(
        &form,
        &[
            &format!(r#"form id="from-template" data-template="{id}""#),
            r#"data-pointer="/coordinatorAgentId""#,
            r#"id="template-steps""#,
            &format!(r#"option value="{}""#, agents[2]),
        ],
        &path,
    );
    // One select per role, named by the pointer a problem with it would carry.
    for role in &roles {
        tag(
            &form,
            &format!(r#"data-role="{role}" data-pointer="/agents/{role}""#),
        );
    }

    // What the form sends; the workflow's page then names its template.
    let mapping: serde_json::Map<String, Value> = roles
        .iter()
        .map(|r| ((*r).to_owned(), json!(agents[0])))
        .collect();
    let reply = stack
        .api
        .post(
            &format!("/v1/templates/{id}/workflows"),
            &json!({ "name": "Outage drill", "agents": mapping }),
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    let path = format!("/console/workflows/{}", reply.body["id"].as_str().unwrap());
    contains_all(
        &page(&stack, &path).await,
        &[
            "Outage drill",
            &format!(r#"<a href="/console/templates/{id}">Critical production bug resolution</a>"#),
        ],
        &path,
    );
    stack.stop().await;
}
