//! The API's contract as served: `GET /openapi.json` is an OpenAPI 3.1 document, every
//! operation it lists is routed (none falls to the "no such resource" fallback or a 405), and
//! real answers read as it says. The fuzzing against it is `scripts/schemathesis.sh`.

// Test code: a panic is the failure report, in helpers as in tests.
#![allow(clippy::unwrap_used)]

use cadre_tests::Stack;
use cadre_tests::api::{PIPELINE_SKILLS, agent, pipeline};
use serde_json::Value;

#[tokio::test]
async fn every_documented_operation_is_served_and_answers_as_documented() {
    let stack = Stack::start().await;
    let document = stack.api.get("/openapi.json").await;
    assert_eq!(document.status, 200);
    assert_eq!(document.content_type, "application/json");
    let document = document.body;
    assert_eq!(document["openapi"], "3.1.0");

    let unknown = uuid::Uuid::now_v7().to_string();
    let mut operations = 0;
    for (path, item) in document["paths"].as_object().unwrap() {
        // The tenant's live feed never ends; the execution feed stands for both.
        if path == "/v1/events" {
            continue;
        }
        let concrete = path.replace("{id}", &unknown).replace("{step}", "design");
        for (method, operation) in item.as_object().unwrap() {
            let reply = match method.as_str() {
                "get" => stack.api.get(&concrete).await,
                "post" => stack.api.post_raw(&concrete, None, Vec::new()).await,
                "delete" => stack.api.delete(&concrete).await,
                other => panic!("{other} {path}: a method the test does not know"),
            };
            operations += 1;
            assert_ne!(reply.status, 405, "{method} {path}: {}", reply.body);
            let fallback = reply.body["detail"]
                .as_str()
                .is_some_and(|d| d.starts_with("no such resource"));
            assert!(!fallback, "{method} {path} is not routed");
            let status = reply.status.to_string();
            let documented = &operation["responses"][&status];
            assert!(
                documented.is_object(),
                "{method} {path} answered {status}, which it does not document: {}",
                reply.body
            );
            let content_type = reply.content_type.split(';').next().unwrap().trim();
            assert!(
                documented["content"][content_type].is_object(),
                "{method} {path} answered {status} as {content_type}: {}",
                documented["content"]
            );
        }
    }
    assert!(operations >= 40, "{operations}");

    // A real answer has every field its schema requires.
    let id = stack
        .api
        .register_agent(&agent("Ada", "analyst", PIPELINE_SKILLS[0], "offline"))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let workflow = stack
        .api
        .create_workflow(&pipeline("Contract", &[id], &PIPELINE_SKILLS[..1], 1))
        .await;
    let schemas = &document["components"]["schemas"];
    assert_has_required(schemas, "CreatedWorkflow", &workflow);
    let listed = stack.api.get("/v1/workflows").await.body;
    assert_has_required(schemas, "WorkflowView", &listed[0]);
    stack.stop().await;
}

/// Every property `name`'s schema (or the schemas it is made of) requires is in `value`.
fn assert_has_required(schemas: &Value, name: &str, value: &Value) {
    let schema = &schemas[name];
    let parts: Vec<&Value> = match schema["allOf"].as_array() {
        Some(parts) => parts
            .iter()
            .map(|part| match part["$ref"].as_str() {
                Some(reference) => &schemas[reference.rsplit('/').next().unwrap()],
                None => part,
            })
            .collect(),
        None => vec![schema],
    };
    for part in parts {
        for required in part["required"].as_array().into_iter().flatten() {
            let field = required.as_str().unwrap();
            assert!(
                value.get(field).is_some(),
                "{name} requires '{field}', which {value} lacks"
            );
        }
    }
}
