//! The API's OpenAPI 3.1 document, generated from the handlers: each route is added to the
//! router by `utoipa_axum::routes!` from its handler's `#[utoipa::path]`, so a route and its
//! documentation cannot drift apart. Served at `GET /openapi.json`; the console, the CLI and
//! the schema fuzzer (`scripts/schemathesis.sh`) read the same document.

use std::sync::LazyLock;

use axum::http::header;
use axum::response::IntoResponse;
use utoipa::{IntoParams, IntoResponses, OpenApi};

use super::problem::Problem;
use crate::domain::validation::FieldError;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Cadre coordinator API",
        description = "Teams of AI agents as event-sourced workflows. Commands append events to \
                       the log and answer once the read models show them (`Cadre-Log-Position`, \
                       `Cadre-Read-Models`); queries read the read models. Errors are RFC 9457 \
                       `application/problem+json`.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    components(schemas(Problem, FieldError)),
    tags(
        (name = "agents", description = "Agents, their status, performance and workers"),
        (name = "workflows", description = "Workflows, their knowledge, metrics and history"),
        (name = "executions", description = "Runs of a workflow and their control"),
        (name = "templates", description = "Workflow templates"),
        (name = "escalations", description = "What waits for a person"),
        (name = "alerts", description = "Alerts on agents' performance"),
        (name = "events", description = "Live feeds of the event log (server-sent events)"),
        (name = "subscriptions", description = "Webhook subscriptions and their delivery log"),
        (name = "meta", description = "This document"),
    )
)]
pub(super) struct ApiDoc;

/// The document, built once from the router's routes.
static DOCUMENT: LazyLock<String> = LazyLock::new(|| {
    let mut document = serde_json::to_value(super::api().into_openapi()).unwrap_or_default();
    close_request_bodies(&mut document);
    serde_json::to_string_pretty(&document).unwrap_or_default()
});

/// The document as `GET /openapi.json` serves it.
pub fn json() -> &'static str {
    &DOCUMENT
}

/// Says of every object a request body is made of what the body parser enforces: a field it
/// does not know is refused (`additionalProperties: false`), at any depth. Response objects
/// stay open, as clients should read them (some are extended by flattening).
fn close_request_bodies(document: &mut serde_json::Value) {
    let mut pending: Vec<String> = Vec::new();
    for item in document["paths"].as_object().into_iter().flatten() {
        for operation in item.1.as_object().into_iter().flatten() {
            collect_refs(&operation.1["requestBody"], &mut pending);
        }
    }
    let mut closed = std::collections::BTreeSet::new();
    while let Some(name) = pending.pop() {
        if !closed.insert(name.clone()) {
            continue;
        }
        let schema = &mut document["components"]["schemas"][&name];
        collect_refs(schema, &mut pending);
        close(schema);
    }
}

/// Closes `schema` and the inline object schemas in it (not those it refers to).
fn close(schema: &mut serde_json::Value) {
    let Some(object) = schema.as_object_mut() else {
        return;
    };
    if object.contains_key("properties") && !object.contains_key("additionalProperties") {
        object.insert("additionalProperties".to_owned(), false.into());
    }
    for (key, value) in object.iter_mut() {
        match (key.as_str(), value) {
            ("properties", serde_json::Value::Object(properties)) => {
                properties.values_mut().for_each(close);
            }
            ("items" | "additionalProperties", value) => close(value),
            ("oneOf" | "anyOf" | "allOf", serde_json::Value::Array(parts)) => {
                parts.iter_mut().for_each(close);
            }
            _ => {}
        }
    }
}

/// The names of the component schemas `value` refers to.
fn collect_refs(value: &serde_json::Value, names: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(object) => {
            if let Some(name) = object
                .get("$ref")
                .and_then(|r| r.as_str())
                .and_then(|r| r.strip_prefix("#/components/schemas/"))
            {
                names.push(name.to_owned());
            }
            object.values().for_each(|v| collect_refs(v, names));
        }
        serde_json::Value::Array(values) => values.iter().for_each(|v| collect_refs(v, names)),
        _ => {}
    }
}

/// `GET /openapi.json`.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "meta",
    responses((status = 200, description = "This API's OpenAPI 3.1 document", content_type = "application/json", body = Object))
)]
pub(super) async fn document() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        DOCUMENT.as_str(),
    )
}

/// `limit` and `cursor` of a list (see [`super::list`]). Documentation only: the handlers read
/// the query themselves so that a bad value is answered with a problem naming the parameter.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub(super) struct PageParams {
    /// At most this many items (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
    /// Where the page starts: the `cursor` of the URL the previous page's `Link` header names
    /// (`rel="next"`). Opaque; absent for the first page.
    #[param(pattern = "^[A-Za-z0-9_-]+$")]
    cursor: Option<String>,
}

// The problems an operation may answer with, one type per status, listed in each handler's
// `responses(...)`.

/// A malformed id, query parameter or header, or a body that is not JSON.
#[derive(IntoResponses)]
#[response(status = 400, content_type = "application/problem+json")]
pub(super) struct BadRequest(#[allow(dead_code)] Problem);

/// No such resource.
#[derive(IntoResponses)]
#[response(status = 404, content_type = "application/problem+json")]
pub(super) struct NotFound(#[allow(dead_code)] Problem);

/// The resource's state does not allow it, or another request changed it at the same time
/// (retry); a refused transition carries `currentStatus`.
#[derive(IntoResponses)]
#[response(status = 409, content_type = "application/problem+json")]
pub(super) struct Conflict(#[allow(dead_code)] Problem);

/// The body is larger than the API accepts (256 KiB).
#[derive(IntoResponses)]
#[response(status = 413, content_type = "application/problem+json")]
pub(super) struct TooLarge(#[allow(dead_code)] Problem);

/// The body is not sent as `application/json`.
#[derive(IntoResponses)]
#[response(status = 415, content_type = "application/problem+json")]
pub(super) struct UnsupportedMediaType(#[allow(dead_code)] Problem);

/// The body is not valid: `errors[]` has the JSON pointer of each field at fault.
#[derive(IntoResponses)]
#[response(status = 422, content_type = "application/problem+json")]
pub(super) struct Invalid(#[allow(dead_code)] Problem);

/// The event log or the read models could not be reached; retry.
#[derive(IntoResponses)]
#[response(status = 503, content_type = "application/problem+json")]
pub(super) struct Unavailable(#[allow(dead_code)] Problem);

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test that unwraps fails with the value it got
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// Routes that are not API operations: Kubernetes' probes.
    const NOT_IN_THE_SPEC: [&str; 1] = [".merge(health::routes(readiness))"];

    /// The router is built from `routes!` only, each documented by its handler; a plain
    /// `.route(...)` (or a nested or merged router) would serve a path the document does not
    /// know. Every path `routes!` adds is in the document by construction.
    #[test]
    fn every_route_is_in_the_spec() {
        let source = include_str!("mod.rs");
        let body = |function: &str| {
            source
                .split(function)
                .nth(1)
                .and_then(|rest| rest.split("\n}\n").next())
                .unwrap()
                .to_owned()
        };
        let (api, mut router) = (body("fn api() "), body("pub fn router("));
        for allowed in NOT_IN_THE_SPEC {
            router = router.replace(allowed, "");
        }
        for undocumented in [
            ".route(",
            ".route_service(",
            ".nest(",
            ".nest_service(",
            ".merge(",
        ] {
            assert!(
                !api.contains(undocumented) && !router.contains(undocumented),
                "the router adds routes with `{undocumented}`: add them with `routes!` and a \
                 `#[utoipa::path]` on the handler, so that /openapi.json documents them"
            );
        }
        // One path per `routes!`, each documented.
        let spec = super::super::api().into_openapi();
        assert_eq!(spec.paths.paths.len(), api.matches("routes!(").count());
    }

    #[test]
    fn the_document_is_openapi_3_1_and_every_operation_says_how_it_fails() {
        let document: serde_json::Value = serde_json::from_str(&DOCUMENT).unwrap();
        assert_eq!(document["openapi"], "3.1.0");
        let mut operations = BTreeSet::new();
        for (path, item) in document["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                operations.insert(format!("{method} {path}"));
                let responses = operation["responses"].as_object().unwrap();
                if path != "/openapi.json" {
                    assert!(
                        responses
                            .keys()
                            .any(|status| status.starts_with('4') || status.starts_with('5')),
                        "{method} {path} documents no problem"
                    );
                }
                for (status, response) in responses {
                    if status.starts_with('4') || status.starts_with('5') {
                        assert!(
                            response["content"][super::super::problem::CONTENT_TYPE].is_object(),
                            "{method} {path} {status} is not a problem"
                        );
                    }
                }
            }
        }
        for expected in [
            "get /v1/agents",
            "post /v1/agents",
            "post /v1/workflows/{id}/executions",
            "get /v1/executions/{id}/events",
            "get /v1/events",
            "post /v1/escalations/{id}/resolve",
            "get /openapi.json",
        ] {
            assert!(operations.contains(expected), "{expected} is missing");
        }
        let feed = &document["paths"]["/v1/events"]["get"]["responses"]["200"]["content"];
        assert!(feed["text/event-stream"].is_object(), "{feed}");
    }

    /// Every list pages by cursor and says so: `limit` and `cursor` in, a `Link` header out;
    /// no `offset` is left, and the sort keys kept for cursors are not shown.
    #[test]
    fn every_list_documents_its_cursor_and_next_link() {
        let document: serde_json::Value = serde_json::from_str(&DOCUMENT).unwrap();
        let mut lists = BTreeSet::new();
        for (path, item) in document["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                let names: Vec<&str> = operation["parameters"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|p| p["name"].as_str())
                    .collect();
                assert!(!names.contains(&"offset"), "{method} {path}");
                if names.contains(&"cursor") {
                    assert!(names.contains(&"limit"), "{method} {path}");
                    let link = &operation["responses"]["200"]["headers"]["Link"];
                    assert!(link.is_object(), "{method} {path} documents no Link");
                    lists.insert(format!("{method} {path}"));
                }
            }
        }
        assert!(lists.contains("get /v1/executions"), "{lists:?}");
        assert_eq!(lists.len(), 15, "{lists:?}");
        for view in [
            "InteractionView",
            "KnowledgeView",
            "RecordView",
            "AlertView",
        ] {
            let properties = &document["components"]["schemas"][view]["properties"];
            assert!(properties.is_object(), "{view}");
            assert!(properties["eventSequence"].is_null(), "{view}");
        }
    }

    /// The body parser refuses unknown fields at any depth; the document says so of request
    /// bodies only: responses may be extended (`RegisteredAgent` flattens `AgentProfile`).
    #[test]
    fn request_bodies_refuse_unknown_fields_and_responses_stay_open() {
        let document: serde_json::Value = serde_json::from_str(&DOCUMENT).unwrap();
        let schemas = &document["components"]["schemas"];
        for closed in [
            "RegisterAgent",
            "ModelParameters",
            "CreateWorkflow",
            "WorkflowStep",
        ] {
            assert_eq!(schemas[closed]["additionalProperties"], false, "{closed}");
        }
        for open in [
            "AgentProfile",
            "WorkflowDefinition",
            "ExecutionView",
            "Problem",
        ] {
            assert!(schemas[open]["additionalProperties"].is_null(), "{open}");
        }
    }
}
