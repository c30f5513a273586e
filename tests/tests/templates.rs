//! Workflow templates end to end, on one stack: seed 002's three system templates are
//! registered once when the coordinator starts (and not again by a second one), each is listed,
//! made into a workflow by mapping its roles to a team, and runs to `completed` on the fake LLM
//! (a person approves the feature's production deploy); the templates' usage count and success
//! rate follow the runs; a user's template round-trips; bad requests get problems.

// Test code: a panic is the failure report, in helpers as in tests.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use cadre_coordinator::domain::template::system;
use cadre_proto::{TemplateId, TenantId, subjects};
use cadre_tests::api::seed_team;
use cadre_tests::stack::FAKE_PROVIDER;
use cadre_tests::{Stack, eventually};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const FINISH: Duration = Duration::from_secs(120);

/// Seed 002's agents, one per role, on `provider`; role → agent id.
async fn register_team(stack: &Stack, provider: &str) -> BTreeMap<String, String> {
    let mut ids = BTreeMap::new();
    for member in seed_team(provider) {
        let created = stack.api.register_agent(&member).await;
        ids.insert(
            created["role"].as_str().unwrap().to_owned(),
            created["id"].as_str().unwrap().to_owned(),
        );
    }
    ids
}

/// The template as listed, once the read models show `check` true of it.
async fn listed(stack: &Stack, id: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    eventually(FINISH, what, || async {
        let reply = stack.api.get("/v1/templates").await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        reply
            .body
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["id"] == id && check(t))
            .cloned()
    })
    .await
}

/// Creates a workflow from template `id` with `team`'s agents for its roles; returns it.
async fn from_template(stack: &Stack, template: &Value, team: &BTreeMap<String, String>) -> Value {
    let agents: BTreeMap<&str, &str> = template["requiredAgentRoles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|role| {
            let role = role.as_str().unwrap();
            (role, team[role].as_str())
        })
        .collect();
    let reply = stack
        .api
        .post(
            &format!(
                "/v1/templates/{}/workflows",
                template["id"].as_str().unwrap()
            ),
            &json!({ "agents": agents }),
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    assert_eq!(reply.body["templateId"], template["id"]);
    reply.body
}

async fn start(stack: &Stack, workflow_id: &str, input: Value) -> String {
    let reply = stack
        .api
        .post(
            &format!("/v1/workflows/{workflow_id}/executions"),
            &json!({ "input": input }),
        )
        .await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    reply.body["executionId"].as_str().unwrap().to_owned()
}

/// Makes each template a workflow for `team`, runs each once (approving the feature's
/// production deploy) and checks that every run completed with every step accounted for;
/// returns the workflows' ids.
async fn run_each(
    stack: &Stack,
    templates: &[Value],
    team: &BTreeMap<String, String>,
) -> Vec<String> {
    let mut runs = Vec::new();
    for template in templates {
        let workflow = from_template(stack, template, team).await;
        let workflow_id = workflow["id"].as_str().unwrap().to_owned();
        let shown = stack.api.get(&format!("/v1/workflows/{workflow_id}")).await;
        assert_eq!(shown.status, 200, "read your writes: {}", shown.body);
        assert_eq!(shown.body["templateId"], template["id"]);
        assert_eq!(shown.body["name"], template["name"]);
        let input = json!({ "request": "Real-time inspection collaboration" });
        let execution_id = start(stack, &workflow_id, input).await;
        runs.push((workflow_id, execution_id));
    }
    let escalation = approve(stack, &runs[0].1).await;
    assert_eq!(escalation["stepId"], "production-approval");
    assert_eq!(escalation["approval"], true);
    for ((_, execution_id), template) in runs.iter().zip(templates) {
        let name = &template["name"];
        let execution = stack.wait_until_finished(execution_id, FINISH).await;
        assert_eq!(execution["status"], "completed", "{name}: {execution:#}");
        let steps = &execution["stepResults"];
        let total = template["templateDefinition"]["steps"].as_array().unwrap();
        assert_eq!(steps.as_object().unwrap().len(), total.len(), "{name}");
        match template["name"].as_str().unwrap() {
            "Implement a feature" => {
                let approval = &steps["production-approval"];
                assert_eq!(approval["summary"], "Approved by Release manager");
                assert_eq!(steps["deploy-production"]["status"], "completed");
            }
            "Critical production bug resolution" => assert_eq!(
                steps["security-review"]["status"], "skipped",
                "the triage raised no security concern"
            ),
            _ => {}
        }
    }
    runs.into_iter().map(|(workflow, _)| workflow).collect()
}

/// Approves the execution's one approval once it waits for it.
async fn approve(stack: &Stack, execution_id: &str) -> Value {
    let escalation = eventually(FINISH, "the approval to wait for a person", || async {
        let reply = stack
            .api
            .get(&format!(
                "/v1/escalations?status=open&executionId={execution_id}"
            ))
            .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        reply.body.as_array().unwrap().first().cloned()
    })
    .await;
    let reply = stack
        .api
        .post(
            &format!(
                "/v1/escalations/{}/resolve",
                escalation["id"].as_str().unwrap()
            ),
            &json!({ "action": "approve", "requestedBy": "Release manager" }),
        )
        .await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    escalation
}

fn problem(reply: &cadre_tests::api::Reply, status: u16) -> &Value {
    assert_eq!(reply.status, status, "{}", reply.body);
    assert_eq!(reply.content_type, "application/problem+json");
    &reply.body
}

fn pointers(problem: &Value) -> Vec<&str> {
    problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["pointer"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn system_templates_run_as_workflows_and_count_their_runs_and_users_add_their_own() {
    let stack = Stack::start().await;
    let tenant = TenantId::default_tenant();
    let slugs = [
        system::IMPLEMENT_A_FEATURE,
        system::CRITICAL_PRODUCTION_BUG,
        system::PERFORMANCE_OPTIMISATION,
    ];
    let ids: Vec<String> = slugs
        .iter()
        .map(|slug| system::id(&tenant, slug).to_string())
        .collect();
    let mut templates = Vec::new();
    for id in &ids {
        let template = listed(&stack, id, "the system templates", |_| true).await;
        assert_eq!(template["isSystemTemplate"], true, "{template:#}");
        assert_eq!(template["usageCount"], 0);
        assert_eq!(template["successRate"], 0.0);
        templates.push(template);
    }
    let names: Vec<&str> = templates
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "Implement a feature",
            "Critical production bug resolution",
            "System performance optimisation"
        ]
    );
    let one = stack.api.get(&format!("/v1/templates/{}", ids[0])).await;
    assert_eq!(one.status, 200, "{}", one.body);
    assert_eq!(one.body, templates[0]);
    let phases = one.body["templateDefinition"]["phases"].as_array().unwrap();
    assert_eq!(phases.len(), 4);

    // Another coordinator starting registers nothing again.
    let stop = CancellationToken::new();
    let (second, _) = stack.second_coordinator(stop.clone()).await;
    for id in &ids {
        let registrations = stack
            .bus
            .read_all(&subjects::template(
                &tenant,
                id.parse::<TemplateId>().unwrap(),
                subjects::REGISTERED,
            ))
            .await
            .unwrap();
        assert_eq!(registrations.len(), 1, "template {id}");
    }
    stop.cancel();
    second.wait().await.unwrap();

    // Each one, made a workflow for the team, runs to the end: on the fake LLM, then on the
    // offline provider (what `make demo` runs).
    let team = register_team(&stack, FAKE_PROVIDER).await;
    let runs = run_each(&stack, &templates, &team).await;
    let offline = register_team(&stack, "offline").await;
    run_each(&stack, &templates, &offline).await;
    for template in &templates {
        let id = template["id"].as_str().unwrap();
        let counted = listed(&stack, id, "the completed runs counted", |t| {
            t["endedRuns"] == 2
        })
        .await;
        assert_eq!(counted["workflowCount"], 2, "{counted:#}");
        assert_eq!(counted["usageCount"], 2);
        assert_eq!(counted["completedRuns"], 2);
        assert_eq!(counted["successRate"], 100.0);
    }

    // A run of the bug fix that is cancelled lowers its success rate.
    let cancelled = start(&stack, &runs[1], json!({ "request": "Logins fail" })).await;
    let reply = stack
        .api
        .post(&format!("/v1/executions/{cancelled}/cancel"), &json!({}))
        .await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    let bug = listed(&stack, &ids[1], "the cancelled run counted", |t| {
        t["endedRuns"] == 3
    })
    .await;
    assert_eq!(bug["usageCount"], 3, "{bug:#}");
    assert_eq!(bug["completedRuns"], 2);
    let rate = bug["successRate"].as_f64().unwrap();
    assert!((rate - 200.0 / 3.0).abs() < 1e-9, "{bug:#}");
    // The list keeps its order as the counts change (a client paging through it would skip
    // or repeat templates otherwise): the system ones in the order registered.
    let listing = stack.api.get("/v1/templates").await.body;
    let listed_ids: Vec<&str> = listing
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed_ids, ids, "{listing:#}");

    // A user's template: the roles it lists and those its steps name; made a workflow with
    // the testing agent as its reviewer, whose role the step then names.
    let draft = json!({
        "name": "Review a change",
        "description": "A reviewer reads a change; a scribe is on the team.",
        "category": "review",
        "workflowType": "pipeline",
        "requiredAgentRoles": ["scribe"],
        "createdBy": "Pat",
        "templateDefinition": {
            "steps": [{
                "id": "review", "name": "Review the change", "description": "Read it closely.",
                "type": "review", "assignedAgentRole": "reviewer",
                "requiredSkills": ["code review"], "instructions": "Review the change in the input.",
                "expectedOutput": "Findings and a verdict"
            }]
        }
    });
    let reply = stack.api.post("/v1/templates", &draft).await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    let registered = reply.body;
    let id = registered["id"].as_str().unwrap().to_owned();
    assert_eq!(
        reply.location.as_deref(),
        Some(format!("/v1/templates/{id}").as_str())
    );
    assert_eq!(
        registered["requiredAgentRoles"],
        json!(["scribe", "reviewer"])
    );
    assert_eq!(registered["isSystemTemplate"], false);
    assert_eq!(registered["createdBy"], "Pat");
    let shown = stack.api.get(&format!("/v1/templates/{id}")).await;
    assert_eq!(shown.status, 200, "read your writes: {}", shown.body);
    assert_eq!(shown.body, registered, "as registered, as listed");
    let listing = stack.api.get("/v1/templates").await.body;
    assert_eq!(
        listing[3]["id"], id,
        "after the system templates: {listing:#}"
    );
    let reply = stack
        .api
        .post(
            &format!("/v1/templates/{id}/workflows"),
            &json!({
                "name": "Review PR 42",
                "agents": { "reviewer": team["testing"], "scribe": team["meta"] },
                "coordinatorAgentId": team["meta"]
            }),
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    assert_eq!(reply.body["name"], "Review PR 42");
    assert_eq!(
        reply.body["participatingAgents"],
        json!([team["meta"], team["testing"]])
    );
    assert_eq!(
        reply.body["configuration"]["steps"][0]["assignedAgentRole"],
        "testing"
    );
    let workflow_id = reply.body["id"].as_str().unwrap().to_owned();
    let execution_id = start(&stack, &workflow_id, json!({ "change": "PR 42" })).await;
    let execution = stack.wait_until_finished(&execution_id, FINISH).await;
    assert_eq!(execution["status"], "completed", "{execution:#}");
    assert_eq!(
        execution["agentAssignments"]["review"]["agentId"],
        team["testing"]
    );

    // Problems. The feature's team without its security agent:
    let mut agents: BTreeMap<&str, &str> = templates[0]["requiredAgentRoles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|role| role.as_str().unwrap())
        .filter(|role| *role != "security")
        .map(|role| (role, team[role].as_str()))
        .collect();
    let create = format!("/v1/templates/{}/workflows", ids[0]);
    let reply = stack.api.post(&create, &json!({ "agents": agents })).await;
    let body = problem(&reply, 422);
    assert_eq!(pointers(body), ["/agents/security"], "{body:#}");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("role 'security'"),
        "{body:#}"
    );
    let stranger = uuid::Uuid::now_v7().to_string();
    agents.insert("security", &stranger);
    let reply = stack.api.post(&create, &json!({ "agents": agents })).await;
    let body = problem(&reply, 422);
    assert_eq!(pointers(body), ["/agents/security"], "{body:#}");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("no agent has the id")
    );
    let unknown = format!("/v1/templates/{}/workflows", uuid::Uuid::now_v7());
    let reply = stack.api.post(&unknown, &json!({ "agents": {} })).await;
    problem(&reply, 404);
    let reply = stack
        .api
        .get(&format!("/v1/templates/{}", uuid::Uuid::now_v7()))
        .await;
    problem(&reply, 404);
    problem(&stack.api.get("/v1/templates/feature").await, 400);
    let mut bad = draft.clone();
    bad["category"] = json!("marketing");
    let body = problem(&stack.api.post("/v1/templates", &bad).await, 422).clone();
    assert_eq!(pointers(&body), ["/category"], "{body:#}");
    let mut bad = draft.clone();
    bad["templateDefinition"]["steps"][0]["preferredAgentId"] = json!(team["api"]);
    bad["templateDefinition"]["steps"][0]["dependsOn"] = json!(["nowhere"]);
    let body = problem(&stack.api.post("/v1/templates", &bad).await, 422).clone();
    assert_eq!(
        pointers(&body),
        [
            "/templateDefinition/steps/0/preferredAgentId",
            "/templateDefinition/steps/0/dependsOn/0"
        ],
        "{body:#}"
    );
    stack.stop().await;
}
