//! Bad requests get RFC 9457 problem+json with an actionable message, and write nothing.
//! Each kind of refusal has its own test, and each test checks that the refused requests
//! added nothing to the log or the read models.

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

/// What the log and the read models hold at one moment, to show later that refused requests
/// added nothing.
struct Written {
    events: u64,
    rows: i64,
}

/// Waits until the read models hold `rows` rows (what the test wrote so far), then counts.
async fn written(stack: &Stack, rows: i64) -> Written {
    eventually(
        std::time::Duration::from_secs(30),
        "the read models to catch up",
        || async { (read_model_rows(stack).await == rows).then_some(()) },
    )
    .await;
    Written {
        events: stored_events(stack).await,
        rows,
    }
}

async fn assert_nothing_written_since(stack: &Stack, before: &Written) {
    assert_eq!(stored_events(stack).await, before.events, "the log grew");
    assert_eq!(
        read_model_rows(stack).await,
        before.rows,
        "the read models grew"
    );
}

/// The reply's only field error, as (pointer, message).
fn only_error(reply: &Reply) -> (String, String) {
    assert_eq!(reply.status, 422, "{}", reply.body);
    let errors = reply.body["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{}", reply.body);
    (
        errors[0]["pointer"].as_str().unwrap().to_owned(),
        errors[0]["message"].as_str().unwrap().to_owned(),
    )
}

/// Words that name Rust types or serde's vocabulary rather than JSON's.
const RUST_WORDS: [&str; 18] = [
    "struct",
    "enum",
    "variant",
    "identifier",
    "sequence",
    "map",
    "tuple",
    "Option",
    "u32",
    "u64",
    "f32",
    "f64",
    "Uuid",
    "StepId",
    "AgentId",
    "RegisterAgent",
    "CreateWorkflow",
    "StartExecution",
];

fn assert_plain_words(reply: &Reply) {
    let mut texts = vec![reply.body["detail"].as_str().unwrap().to_owned()];
    for error in reply.body["errors"].as_array().into_iter().flatten() {
        texts.push(error["message"].as_str().unwrap().to_owned());
    }
    for text in texts {
        let words: Vec<&str> = text.split(|c: char| !c.is_ascii_alphanumeric()).collect();
        for rust in RUST_WORDS {
            assert!(!words.contains(&rust), "{text:?} says {rust:?}");
        }
        assert!(!text.contains('`') && !text.contains("at line"), "{text:?}");
    }
}

fn removed(mut value: Value, pointer: &str) -> Value {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    value
        .pointer_mut(parent)
        .unwrap()
        .as_object_mut()
        .unwrap()
        .remove(key)
        .unwrap();
    value
}

/// Registers an agent; returns a valid one-agent pipeline over it (not created).
async fn one_agent_and_a_pipeline(stack: &Stack) -> Value {
    let ada = stack
        .api
        .register_agent(&agent("Ada", "analyst", &["research"], "offline"))
        .await;
    let ada_id = ada["id"].as_str().unwrap().to_owned();
    pipeline(
        "Pipeline",
        std::slice::from_ref(&ada_id),
        &PIPELINE_SKILLS,
        3,
    )
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
    assert_problem(&reply, 422, "'/role': this field is required");
    assert_eq!(pointers(&reply), vec!["/role"]);

    let mut wrong_type = agent("Bo", "x", &[], "offline");
    wrong_type["skills"] = json!("rust");
    let reply = api.post("/v1/agents", &wrong_type).await;
    assert_problem(&reply, 422, "expected a list, got the string \"rust\"");
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
    let reply = api.post("/v1/workflows", &no_name).await;
    assert_problem(&reply, 422, "'/name': this field is required");
    assert_eq!(pointers(&reply), vec!["/name"]);

    let mut bad_type = valid.clone();
    bad_type["configuration"]["steps"][0]["type"] = json!("dancing");
    let reply = api.post("/v1/workflows", &bad_type).await;
    assert_problem(
        &reply,
        422,
        "must be one of: analysis, implementation, review, testing, documentation, \
         coordination, decision, approval; got \"dancing\"",
    );
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
        "'limit' must be a whole number from 1 to 1000",
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

#[tokio::test]
async fn a_missing_field_points_at_the_field_itself() {
    let stack = Stack::start().await;
    let api = &stack.api;
    let valid = one_agent_and_a_pipeline(&stack).await;
    let before = written(&stack, 1).await;

    let ada = agent("Ada", "analyst", &[], "offline");
    for field in ["/name", "/role", "/provider", "/model"] {
        let reply = api.post("/v1/agents", &removed(ada.clone(), field)).await;
        assert_problem(&reply, 422, &format!("'{field}': this field is required"));
        assert_eq!(
            only_error(&reply),
            (field.to_owned(), "this field is required".to_owned())
        );
    }
    for field in [
        "/name",
        "/description",
        "/participatingAgents",
        "/configuration",
        "/configuration/steps",
        "/configuration/steps/0/id",
        "/configuration/steps/0/name",
        "/configuration/steps/1/type",
        "/configuration/steps/2/expectedOutput",
    ] {
        let reply = api
            .post("/v1/workflows", &removed(valid.clone(), field))
            .await;
        assert_eq!(only_error(&reply).0, field);
    }

    // A field given twice is as much the field's fault.
    let reply = api
        .post_raw(
            "/v1/agents",
            Some("application/json"),
            br#"{"name":"Ada","name":"Bo","role":"r","provider":"offline","model":"m"}"#.to_vec(),
        )
        .await;
    assert_eq!(
        only_error(&reply),
        (
            "/name".to_owned(),
            "this field appears more than once; give it once".to_owned()
        )
    );

    assert_nothing_written_since(&stack, &before).await;
    stack.stop().await;
}

#[tokio::test]
async fn a_wrong_shape_is_described_in_json_terms_without_rust_type_names() {
    let stack = Stack::start().await;
    let api = &stack.api;
    let valid = one_agent_and_a_pipeline(&stack).await;
    let workflow = api.create_workflow(&valid).await;
    let executions = format!(
        "/v1/workflows/{}/executions",
        workflow["id"].as_str().unwrap()
    );
    let before = written(&stack, 2).await;

    let ada = agent("Bo", "analyst", &[], "offline");
    let with = |mut body: Value, pointer: &str, value: Value| {
        *body.pointer_mut(pointer).unwrap() = value;
        body
    };
    let cases: Vec<(&str, Value, &str, &str)> = vec![
        (
            "/v1/agents",
            json!([]),
            "",
            "expected an object, got a list",
        ),
        (
            "/v1/agents",
            with(ada.clone(), "/skills", json!("rust")),
            "/skills",
            "expected a list, got the string \"rust\"",
        ),
        (
            "/v1/agents",
            with(ada.clone(), "/skills", json!([["rust"]])),
            "/skills/0",
            "expected a string, got a list",
        ),
        (
            "/v1/agents",
            with(ada.clone(), "/modelParameters", json!([0.3, 1200])),
            "/modelParameters",
            "expected an object, got a list",
        ),
        (
            "/v1/agents",
            with(ada.clone(), "/modelParameters/maxTokens", json!(-5)),
            "/modelParameters/maxTokens",
            "expected a whole number from 0 to 4294967295, got -5",
        ),
        (
            "/v1/agents",
            with(ada.clone(), "/modelParameters/temperature", json!("hot")),
            "/modelParameters/temperature",
            "expected a number, got the string \"hot\"",
        ),
        (
            "/v1/workflows",
            with(valid.clone(), "/participatingAgents/0", json!("ada")),
            "/participatingAgents/0",
            "expected a UUID such as 0196b4a2-7e0c-7d21-9f3a-2b5c8d1e4f60",
        ),
        (
            "/v1/workflows",
            with(valid.clone(), "/workflowType", json!(7)),
            "/workflowType",
            "must be one of: pipeline, parallel, conditional, recursive",
        ),
        (
            "/v1/workflows",
            with(valid.clone(), "/configuration/steps", json!({})),
            "/configuration/steps",
            "expected a list, got an object",
        ),
        (
            "/v1/workflows",
            with(
                valid.clone(),
                "/configuration/steps/1/dependsOn",
                json!("step-1"),
            ),
            "/configuration/steps/1/dependsOn",
            "expected a list, got the string \"step-1\"",
        ),
        (
            "/v1/workflows",
            with(
                valid.clone(),
                "/configuration/constraints/maxRetries",
                json!(1.5),
            ),
            "/configuration/constraints/maxRetries",
            "expected a whole number from 0 to 4294967295, got 1.5",
        ),
        (
            "/v1/workflows",
            with(
                valid.clone(),
                "/configuration/coordination",
                json!("technical"),
            ),
            "/configuration/coordination",
            "expected an object, got the string \"technical\"",
        ),
        (
            "/v1/workflows",
            with(
                valid.clone(),
                "/configuration/coordination/communicationStyle",
                json!("shouting"),
            ),
            "/configuration/coordination/communicationStyle",
            "must be one of: formal, casual, technical; got \"shouting\"",
        ),
        (
            &executions,
            json!({"triggerReason": "whenever"}),
            "/triggerReason",
            "must be one of: manual, scheduled, event, dependency; got \"whenever\"",
        ),
        (
            &executions,
            json!({"triggeredBy": 5}),
            "/triggeredBy",
            "expected a string, got 5",
        ),
    ];
    for (path, body, pointer, message) in cases {
        let reply = api.post(path, &body).await;
        assert_eq!(
            only_error(&reply),
            (pointer.to_owned(), message.to_owned()),
            "{path} {body}"
        );
        assert_plain_words(&reply);
    }
    assert_nothing_written_since(&stack, &before).await;
    stack.stop().await;
}

#[tokio::test]
async fn references_repeats_and_overlong_texts_are_refused_at_their_field() {
    let stack = Stack::start().await;
    let api = &stack.api;
    let valid = one_agent_and_a_pipeline(&stack).await;
    let bo = api
        .register_agent(&agent("Bo", "engineer", &["rust"], "offline"))
        .await;
    let workflow = api.create_workflow(&valid).await;
    let executions = format!(
        "/v1/workflows/{}/executions",
        workflow["id"].as_str().unwrap()
    );
    let before = written(&stack, 3).await;

    // A coordinator that is registered but does not take part.
    let mut outsider = valid.clone();
    outsider["coordinatorAgentId"] = bo["id"].clone();
    let reply = api.post("/v1/workflows", &outsider).await;
    assert_problem(&reply, 422, "the workflow is not valid");
    let (pointer, message) = only_error(&reply);
    assert_eq!(pointer, "/coordinatorAgentId");
    assert!(
        message.contains("is not one of the participatingAgents"),
        "{message}"
    );

    let mut twice = valid.clone();
    twice["configuration"]["steps"][2]["dependsOn"] = json!(["step-2", "step-1", "step-2"]);
    assert_eq!(
        only_error(&api.post("/v1/workflows", &twice).await),
        (
            "/configuration/steps/2/dependsOn/2".to_owned(),
            "step 'step-2' is listed twice; list it once".to_owned()
        )
    );

    let long = |n: usize| json!("x".repeat(n + 1));
    let agent_texts = [
        ("/name", 200),
        ("/role", 200),
        ("/backstory", 8 * 1024),
        ("/skills/0", 200),
        ("/provider", 64),
        ("/model", 200),
    ];
    for (field, max) in agent_texts {
        let mut body = agent("Cy", "tester", &["testing"], "offline");
        *body.pointer_mut(field).unwrap() = long(max);
        let reply = api.post("/v1/agents", &body).await;
        assert_problem(&reply, 422, "the agent is not valid");
        assert_eq!(
            only_error(&reply),
            (
                field.to_owned(),
                format!("must be at most {max} characters (it has {})", max + 1)
            )
        );
    }
    let skills: Vec<String> = (0..51).map(|i| format!("skill {i}")).collect();
    let mut many_skills = agent("Cy", "tester", &[], "offline");
    many_skills["skills"] = json!(skills);
    assert_eq!(
        only_error(&api.post("/v1/agents", &many_skills).await),
        (
            "/skills".to_owned(),
            "must have at most 50 entries (it has 51)".to_owned()
        )
    );

    let step = "/configuration/steps/0";
    let workflow_texts = [
        ("/name".to_owned(), 200),
        ("/description".to_owned(), 4 * 1024),
        (format!("{step}/name"), 200),
        (format!("{step}/description"), 4 * 1024),
        (format!("{step}/assignedAgentRole"), 200),
        (format!("{step}/requiredSkills/0"), 200),
        (format!("{step}/expectedOutput"), 16 * 1024),
        (format!("{step}/validationCriteria/0"), 1024),
    ];
    for (field, max) in workflow_texts {
        let mut body = valid.clone();
        body["configuration"]["steps"][0]["assignedAgentRole"] = json!("analyst");
        body["configuration"]["steps"][0]["validationCriteria"] = json!(["cites sources"]);
        *body.pointer_mut(&field).unwrap() = long(max);
        let reply = api.post("/v1/workflows", &body).await;
        assert_eq!(
            only_error(&reply),
            (
                field.clone(),
                format!("must be at most {max} characters (it has {})", max + 1)
            )
        );
    }

    let reply = api
        .post(&executions, &json!({"triggeredBy": "x".repeat(201)}))
        .await;
    assert_problem(&reply, 422, "the start request is not valid");
    assert_eq!(only_error(&reply).0, "/triggeredBy");

    assert_nothing_written_since(&stack, &before).await;

    // At the limit is fine.
    let mut at_limit = agent("Cy", "tester", &["testing"], "offline");
    at_limit["backstory"] = json!("x".repeat(8 * 1024));
    api.register_agent(&at_limit).await;
    stack.stop().await;
}

/// The issue's case: five agents with 230 KB backstories registered, their workflow was
/// created, and every start answered 503 "retry" because the start event (the workflow and all
/// its agents' profiles) could never fit in the log's 1 MiB message.
#[tokio::test]
async fn sizes_are_refused_where_the_request_is_made_not_at_start() {
    let stack = Stack::start().await;
    let api = &stack.api;
    let before = written(&stack, 0).await;

    // (a) A profile is small by construction: the 230 KB backstory is refused at registration.
    for name in ["A", "B", "C", "D", "E"] {
        let mut big = agent(name, "analyst", &["research"], "offline");
        big["backstory"] = json!("x".repeat(230 * 1024));
        let reply = api.post("/v1/agents", &big).await;
        assert_problem(&reply, 422, "the agent is not valid");
        assert_eq!(
            only_error(&reply),
            (
                "/backstory".to_owned(),
                "must be at most 8192 characters (it has 235520)".to_owned()
            )
        );
    }
    assert_nothing_written_since(&stack, &before).await;

    // (b) Profiles within their limits can still add up: 40 backstories of 8192 four-byte
    // characters. The workflow naming all of them could never start, so creating it is refused.
    let mut ids = Vec::new();
    for i in 0..40 {
        let mut member = agent(&format!("Agent {i}"), "analyst", &["research"], "offline");
        member["backstory"] = json!("🦀".repeat(8 * 1024));
        let registered = api.register_agent(&member).await;
        ids.push(registered["id"].as_str().unwrap().to_owned());
    }
    let before = written(&stack, 40).await;
    let too_many = pipeline("Everyone", &ids, &PIPELINE_SKILLS, 3);
    let reply = api.post("/v1/workflows", &too_many).await;
    assert_problem(&reply, 422, "the workflow could never start: ");
    let (pointer, message) = only_error(&reply);
    assert_eq!(pointer, "/participatingAgents");
    for part in [
        "at most 1024 KiB per event",
        "the profiles of its 40 agents",
        "shorten their backstories",
    ] {
        assert!(message.contains(part), "{message:?} should say {part:?}");
    }
    assert_plain_words(&reply);
    assert_nothing_written_since(&stack, &before).await;

    // The largest such team that fits is created and starts.
    let fitting = pipeline("Most", &ids[..25], &PIPELINE_SKILLS, 3);
    let created = api.create_workflow(&fitting).await;
    let (execution_id, _) = api.start_execution(created["id"].as_str().unwrap()).await;
    assert!(!execution_id.is_empty());
    stack.stop().await;
}

/// Workflows created before creation checked the start's size still exist in logs: starting
/// one is refused as the request's own problem (422, do not retry), never as an outage (503).
#[tokio::test]
async fn a_start_too_large_for_the_log_is_refused_as_such_not_as_an_outage() {
    use cadre_proto::events::{AgentRegistered, WorkflowCreated};
    use cadre_proto::model::{AgentProfile, WorkflowDefinition};
    use cadre_proto::{Envelope, Event, TenantId};
    use cadre_runtime::bus::Append;

    let stack = Stack::start().await;
    let fact = |event: Event| {
        Envelope::new(
            "/cadre/coordinator",
            TenantId::default_tenant(),
            chrono::Utc::now(),
            event,
        )
    };
    // What the old coordinator accepted: five agents with 230 KB backstories and a workflow.
    let mut ids = Vec::new();
    for name in ["A", "B", "C", "D", "E"] {
        let mut profile = agent(name, "analyst", &["research"], "offline");
        profile["id"] = json!(uuid::Uuid::now_v7());
        profile["backstory"] = json!("x".repeat(230 * 1024));
        let profile: AgentProfile = serde_json::from_value(profile).unwrap();
        ids.push(profile.id.to_string());
        let registered = fact(Event::AgentRegistered(AgentRegistered { agent: profile }));
        stack.bus.publish(&registered, Append::Any).await.unwrap();
    }
    let mut workflow = pipeline("Legacy", &ids, &PIPELINE_SKILLS, 3);
    workflow["id"] = json!(uuid::Uuid::now_v7());
    let workflow: WorkflowDefinition = serde_json::from_value(workflow).unwrap();
    let workflow_id = workflow.id;
    let created = fact(Event::WorkflowCreated(WorkflowCreated {
        workflow,
        template_id: None,
    }));
    stack.bus.publish(&created, Append::Any).await.unwrap();
    let before = written(&stack, 6).await;

    for _ in 0..2 {
        let reply = stack
            .api
            .post(
                &format!("/v1/workflows/{workflow_id}/executions"),
                &json!({}),
            )
            .await;
        assert_problem(&reply, 422, "retrying will not help");
        assert_eq!(
            reply.body["type"],
            "https://cadre.dev/problems/too-large-to-record"
        );
        assert!(
            reply.body["detail"]
                .as_str()
                .unwrap()
                .contains("its definition and its agents' profiles must fit in 1024 KiB")
        );
    }
    assert_nothing_written_since(&stack, &before).await;
    stack.stop().await;
}

#[tokio::test]
async fn a_start_body_must_be_a_json_object_or_nothing() {
    let stack = Stack::start().await;
    let api = &stack.api;
    let valid = one_agent_and_a_pipeline(&stack).await;
    let workflow = api.create_workflow(&valid).await;
    let executions = format!(
        "/v1/workflows/{}/executions",
        workflow["id"].as_str().unwrap()
    );
    let before = written(&stack, 2).await;

    for (body, got) in [
        ("null", "null"),
        ("[]", "a list"),
        ("[1]", "a list"),
        (r#"["manual"]"#, "a list"),
        (r#""manual""#, "the string \"manual\""),
        ("7", "7"),
        ("true", "true"),
    ] {
        let reply = api
            .post_raw(
                &executions,
                Some("application/json"),
                body.as_bytes().to_vec(),
            )
            .await;
        assert_problem(
            &reply,
            422,
            &format!("the body must be a JSON object, got {got}"),
        );
        assert_eq!(pointers(&reply), vec![""], "{body}");
    }
    assert_nothing_written_since(&stack, &before).await;

    // No body, or an empty object, starts with the defaults.
    for body in ["", "  \n", "{}"] {
        let reply = api
            .post_raw(
                &executions,
                Some("application/json"),
                body.as_bytes().to_vec(),
            )
            .await;
        assert_eq!(reply.status, 202, "{body:?}: {}", reply.body);
    }
    stack.stop().await;
}

#[tokio::test]
async fn fields_that_do_nothing_are_refused_and_say_so() {
    let stack = Stack::start().await;
    let api = &stack.api;
    let valid = one_agent_and_a_pipeline(&stack).await;
    let before = written(&stack, 1).await;

    // (field, value, what the message starts with, what it says to do)
    let cases: [(&str, Value, &str, &str); 4] = [
        (
            "/configuration/steps/1/reviewerRole",
            json!("reviewer"),
            "only means something with reviewRequired: true",
            "remove reviewerRole",
        ),
        (
            "/configuration/coordination/voters",
            json!(3),
            "only means something with decisionMaking 'consensus' or 'majority'",
            "remove voters",
        ),
        (
            "/configuration/coordination/decisionMaking",
            json!("consensus"),
            "'consensus' asks a panel of at least two agents besides the work's author; this \
             workflow has 1",
            "add agents, or use 'coordinator'",
        ),
        (
            "/configuration/coordination/decisionMaking",
            json!("majority"),
            "'majority' asks a panel of at least two agents",
            "add agents, or use 'coordinator'",
        ),
    ];
    for (field, value, says, remedy) in cases {
        let mut body = valid.clone();
        let (parent, key) = field.rsplit_once('/').unwrap();
        body.pointer_mut(parent).unwrap()[key] = value;
        let reply = api.post("/v1/workflows", &body).await;
        assert_problem(&reply, 422, "the workflow is not valid");
        let (pointer, message) = only_error(&reply);
        assert_eq!(pointer, field);
        assert!(
            message.starts_with(says) && message.contains(remedy),
            "{message}"
        );
    }
    assert_nothing_written_since(&stack, &before).await;

    // Being made real elsewhere, or real already: accepted.
    let mut real = valid.clone();
    real["workflowType"] = json!("parallel");
    real["configuration"]["steps"][0]["reviewRequired"] = json!(false);
    real["configuration"]["steps"][0]["canRunInParallel"] = json!(false);
    real["configuration"]["steps"][0]["timeoutMinutes"] = json!(5);
    real["configuration"]["constraints"]["maxExecutionTime"] = json!(30);
    real["configuration"]["constraints"]["allowParallelExecution"] = json!(false);
    real["configuration"]["coordination"]["decisionMaking"] = json!("coordinator");
    api.create_workflow(&real).await;
    stack.stop().await;
}

#[tokio::test]
async fn control_requests_refuse_what_is_not_json_and_what_is_too_large_as_problems() {
    let stack = Stack::start().await;
    let api = &stack.api;
    let ghost = uuid::Uuid::now_v7();
    for path in [
        format!("/v1/executions/{ghost}/cancel"),
        format!("/v1/workflows/{ghost}/pause"),
        format!("/v1/workflows/{ghost}/executions"),
    ] {
        let reply = api
            .post_raw(&path, Some("text/plain"), b"stop it".to_vec())
            .await;
        assert_problem(&reply, 415, "Content-Type: application/json");
        let reply = api
            .post_raw(&path, Some("application/json"), vec![b' '; 300 * 1024])
            .await;
        assert_problem(&reply, 413, "larger than the 256 KiB");
    }
    stack.stop().await;
}

/// Postgres keeps a JSON number as an exact decimal and writes it back in full (f64::MAX as a
/// 309-digit integer): whatever number the API accepted must read back as the same number,
/// from the run and from the list of runs, not fail the whole list as undecodable.
#[tokio::test]
async fn numbers_at_the_edges_of_json_read_back_as_sent() {
    let stack = Stack::start().await;
    let api = &stack.api;
    let edges = json!({
        "max": f64::MAX, "min": f64::MIN, "belowMax": 1.797_693_134_862_315_5e308,
        "tiny": 5e-324, "negativeTiny": -5e-324, "smallestNormal": 2.225_073_858_507_201_4e-308,
        "beyondU64": 18_446_744_073_709_551_616.0, "beyondF64Integers": 9_007_199_254_740_993_u64,
        "largeDecimal": 123.456e300,
    });
    let ada = api
        .register_agent(&agent("Ada", "analyst", &["research"], "offline"))
        .await;
    let ada_id = ada["id"].as_str().unwrap().to_owned();
    let workflow = api
        .create_workflow(&pipeline(
            "Edges",
            std::slice::from_ref(&ada_id),
            &PIPELINE_SKILLS,
            1,
        ))
        .await;
    let workflow_id = workflow["id"].as_str().unwrap();
    let started = api
        .post(
            &format!("/v1/workflows/{workflow_id}/executions"),
            &json!({"input": edges}),
        )
        .await;
    assert_eq!(started.status, 202, "{}", started.body);
    let execution_id = started.body["executionId"].as_str().unwrap();
    let run = stack
        .wait_until_finished(execution_id, std::time::Duration::from_secs(30))
        .await;
    assert_eq!(run["executionContext"], edges, "{run}");

    let listed = api
        .get(&format!("/v1/workflows/{workflow_id}/executions"))
        .await;
    assert_eq!(listed.status, 200, "{}", listed.body);
    assert_eq!(listed.body[0]["executionContext"], edges);
    stack.stop().await;
}
