//! Bad requests get RFC 9457 problem+json with an actionable message, and write nothing.

// Test code: a panic is the failure report, in helpers as in tests.
#![allow(clippy::unwrap_used)]

use cadre_tests::api::{PIPELINE_SKILLS, Reply, agent, pipeline};
use cadre_tests::{Stack, eventually};
use serde_json::{Value, json};

fn assert_problem(reply: &Reply, status: u16, detail_contains: &str) {
    assert_eq!(reply.status, status, "{}", reply.body);
    assert_eq!(
        reply.content_type, "application/problem+json",
        "{}",
        reply.body
    );
    assert_eq!(reply.body["status"], status);
    assert!(
        reply.body["type"]
            .as_str()
            .unwrap()
            .starts_with("https://cadre.dev/problems/")
    );
    assert!(reply.body["title"].is_string());
    let detail = reply.body["detail"].as_str().unwrap();
    assert!(
        detail.contains(detail_contains),
        "detail {detail:?} should mention {detail_contains:?}"
    );
}

fn pointers(reply: &Reply) -> Vec<String> {
    reply.body["errors"]
        .as_array()
        .map(|errors| {
            errors
                .iter()
                .map(|e| e["pointer"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

async fn stored_events(stack: &Stack) -> u64 {
    stack.log_state().await.messages
}

async fn read_model_rows(stack: &Stack) -> i64 {
    sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM agents) + (SELECT count(*) FROM collaboration_workflows)
              + (SELECT count(*) FROM workflow_executions)",
    )
    .fetch_one(&stack.db.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn bad_requests_are_refused_with_problem_details_and_write_nothing() {
    let stack = Stack::start().await;
    let api = &stack.api;
    let ada = api
        .register_agent(&agent("Ada", "analyst", &["research"], "offline"))
        .await;
    let ada_id = ada["id"].as_str().unwrap().to_owned();
    let valid = pipeline(
        "Pipeline",
        std::slice::from_ref(&ada_id),
        &PIPELINE_SKILLS,
        3,
    );
    // The one agent is in the read models before we start counting.
    eventually(
        std::time::Duration::from_secs(30),
        "the agent row",
        || async { (read_model_rows(&stack).await == 1).then_some(()) },
    )
    .await;
    let events_before = stored_events(&stack).await;

    // --- agents ---
    let mut missing_role = agent("Bo", "x", &[], "offline");
    missing_role.as_object_mut().unwrap().remove("role");
    let reply = api.post("/v1/agents", &missing_role).await;
    assert_problem(&reply, 422, "missing field `role`");

    let mut wrong_type = agent("Bo", "x", &[], "offline");
    wrong_type["skills"] = json!("rust");
    let reply = api.post("/v1/agents", &wrong_type).await;
    assert_problem(
        &reply,
        422,
        "invalid type: string \"rust\", expected a sequence",
    );
    assert_eq!(pointers(&reply), vec!["/skills"]);

    let mut typo = agent("Bo", "x", &[], "offline");
    typo["skils"] = json!(["rust"]);
    let reply = api.post("/v1/agents", &typo).await;
    assert_problem(&reply, 422, "/skils");

    let mut hot = agent("Bo", "x", &[], "offline");
    hot["modelParameters"]["temperature"] = json!(7.5);
    let reply = api.post("/v1/agents", &hot).await;
    assert_problem(&reply, 422, "the agent is not valid");
    assert_eq!(pointers(&reply), vec!["/modelParameters/temperature"]);

    let mut blank = agent("Bo", "x", &[], "offline");
    blank["name"] = json!("   ");
    assert_eq!(
        pointers(&api.post("/v1/agents", &blank).await),
        vec!["/name"]
    );

    let reply = api
        .post_raw(
            "/v1/agents",
            Some("application/json"),
            b"{\"name\": ".to_vec(),
        )
        .await;
    assert_problem(&reply, 400, "not valid JSON");

    let reply = api
        .post_raw("/v1/agents", Some("text/plain"), b"name=Bo".to_vec())
        .await;
    assert_problem(&reply, 415, "Content-Type: application/json");

    let mut huge = agent("Bo", "x", &[], "offline");
    huge["backstory"] = json!("x".repeat(300 * 1024));
    let reply = api.post("/v1/agents", &huge).await;
    assert_problem(&reply, 413, "larger than the 256 KiB");

    // --- workflows ---
    let ghost = uuid::Uuid::now_v7().to_string();
    let mut unknown_agent = valid.clone();
    unknown_agent["participatingAgents"] = json!([ada_id, ghost]);
    let reply = api.post("/v1/workflows", &unknown_agent).await;
    assert_problem(&reply, 422, "agents that are not registered");
    assert_eq!(pointers(&reply), vec!["/participatingAgents/1"]);
    assert!(
        reply.body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains(&ghost)
    );

    let mut unknown_coordinator = valid.clone();
    unknown_coordinator["coordinatorAgentId"] = json!(ghost);
    assert_eq!(
        pointers(&api.post("/v1/workflows", &unknown_coordinator).await),
        vec!["/coordinatorAgentId"]
    );

    let mut duplicate = valid.clone();
    duplicate["configuration"]["steps"][2]["id"] = json!("step-1");
    let reply = api.post("/v1/workflows", &duplicate).await;
    assert_problem(&reply, 422, "the workflow is not valid");
    assert!(pointers(&reply).contains(&"/configuration/steps/2/id".to_owned()));
    assert!(
        reply.body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("duplicate step id 'step-1'")
    );

    let mut cycle = valid.clone();
    cycle["configuration"]["steps"][0]["dependsOn"] = json!(["step-3"]);
    let reply = api.post("/v1/workflows", &cycle).await;
    assert_problem(&reply, 422, "the workflow is not valid");
    assert_eq!(
        reply.body["errors"][0]["message"],
        "dependsOn forms a cycle: step-1 -> step-2 -> step-3 -> step-1"
    );

    let mut dangling = valid.clone();
    dangling["configuration"]["steps"][1]["dependsOn"] = json!(["step-9"]);
    let reply = api.post("/v1/workflows", &dangling).await;
    assert_eq!(pointers(&reply), vec!["/configuration/steps/1/dependsOn/0"]);

    let mut bad_step_id = valid.clone();
    bad_step_id["configuration"]["steps"][0]["id"] = json!("step one");
    let reply = api.post("/v1/workflows", &bad_step_id).await;
    assert_problem(&reply, 422, "a step id must be 1 to 64 characters");
    assert_eq!(pointers(&reply), vec!["/configuration/steps/0/id"]);

    let mut no_steps = valid.clone();
    no_steps["configuration"]["steps"] = json!([]);
    assert_eq!(
        pointers(&api.post("/v1/workflows", &no_steps).await),
        vec!["/configuration/steps"]
    );

    let mut no_name = valid.clone();
    no_name.as_object_mut().unwrap().remove("name");
    assert_problem(
        &api.post("/v1/workflows", &no_name).await,
        422,
        "missing field `name`",
    );

    let mut bad_type = valid.clone();
    bad_type["configuration"]["steps"][0]["type"] = json!("dancing");
    let reply = api.post("/v1/workflows", &bad_type).await;
    assert_problem(&reply, 422, "unknown variant `dancing`");
    assert_eq!(pointers(&reply), vec!["/configuration/steps/0/type"]);

    // --- executions and unknown ids ---
    let reply = api
        .post(&format!("/v1/workflows/{ghost}/executions"), &json!({}))
        .await;
    assert_problem(&reply, 404, &format!("no workflow has the id {ghost}"));
    assert_problem(
        &api.get(&format!("/v1/executions/{ghost}")).await,
        404,
        "no execution has the id",
    );
    assert_problem(
        &api.get(&format!("/v1/workflows/{ghost}")).await,
        404,
        "no workflow has the id",
    );
    assert_problem(
        &api.get(&format!("/v1/workflows/{ghost}/knowledge")).await,
        404,
        "no workflow",
    );
    assert_problem(
        &api.get(&format!("/v1/executions/{ghost}/interactions"))
            .await,
        404,
        "no execution",
    );
    assert_problem(
        &api.get("/v1/executions/not-a-uuid").await,
        400,
        "execution id 'not-a-uuid' is not a UUID",
    );
    assert_problem(
        &api.get("/v1/agents?limit=5000").await,
        400,
        "'limit' must be a whole number from 0 to 1000",
    );
    assert_problem(
        &api.get("/v2/anything").await,
        404,
        "the API lives under /v1",
    );
    let reply = reqwest::Client::new()
        .delete(format!("{}/v1/agents", api.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 405);
    assert_eq!(reply.headers()["content-type"], "application/problem+json");

    // Nothing reached the log, so nothing can reach the read models.
    assert_eq!(stored_events(&stack).await, events_before);
    assert_eq!(read_model_rows(&stack).await, 1);

    // The valid request still works after all that.
    let created: Value = api.create_workflow(&valid).await;
    assert_eq!(created["status"], "draft");
    assert_eq!(stored_events(&stack).await, events_before + 1);
    stack.stop().await;
}
