//! The read side of escalations, end to end: steps escalated to a person and their resolutions,
//! appended to the log as the coordinator records them, are listed and read through
//! `GET /v1/escalations` once projected, with their filters and problems.

// Test code: a panic is the failure report, in helpers as in tests.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use cadre_proto::events::{
    EscalationContext, EscalationResolved, ExecutionCancelled, FailedAttempt, Request, Resolution,
    StepEscalated,
};
use cadre_proto::model::EscalationRung;
use cadre_proto::{
    AgentId, Envelope, EscalationId, Event, ExecutionId, StepId, TenantId, WorkflowId,
};
use cadre_runtime::bus::Append;
use cadre_tests::{Stack, eventually};
use serde_json::{Value, json};

const PROJECTED: Duration = Duration::from_secs(20);

fn escalated(
    execution: ExecutionId,
    workflow: WorkflowId,
    step: &str,
    approval: bool,
    agent: AgentId,
) -> Event {
    let step_id = StepId::parse(step).unwrap();
    Event::StepEscalated(Box::new(StepEscalated {
        execution_id: execution,
        workflow_id: workflow,
        escalation_id: Some(EscalationId::of(execution, &step_id, 2)),
        step_id,
        step_name: format!("Step {step}"),
        attempt: 2,
        rung: EscalationRung::Person,
        agent: None,
        approval,
        reason: "retries spent".to_owned(),
        context: EscalationContext {
            failures: vec![FailedAttempt {
                attempt: 2,
                agent_id: agent,
                error: "provider said 500".to_owned(),
            }],
            tried: vec![EscalationRung::Reassign],
            outputs: Default::default(),
        },
    }))
}

#[tokio::test]
async fn escalations_are_listed_filtered_and_read_once_projected() {
    let stack = Stack::start().await;
    let api = &stack.api;
    let append = |event: Event| {
        let envelope = Envelope::new(
            "/cadre/coordinator",
            TenantId::default_tenant(),
            chrono::Utc::now(),
            event,
        );
        let bus = stack.bus.clone();
        async move { bus.publish(&envelope, Append::Any).await.unwrap() }
    };
    let (workflow, other_workflow) = (WorkflowId::new(), WorkflowId::new());
    let (execution, other_execution) = (ExecutionId::new(), ExecutionId::new());
    let agent = AgentId::new();
    let design = EscalationId::of(execution, &StepId::parse("design").unwrap(), 2);
    let release = EscalationId::of(execution, &StepId::parse("release").unwrap(), 2);
    let other = EscalationId::of(other_execution, &StepId::parse("design").unwrap(), 2);
    append(escalated(execution, workflow, "design", false, agent)).await;
    append(escalated(execution, workflow, "release", true, agent)).await;
    append(escalated(
        other_execution,
        other_workflow,
        "design",
        false,
        agent,
    ))
    .await;
    append(Event::EscalationResolved(Box::new(EscalationResolved {
        execution_id: execution,
        workflow_id: workflow,
        step_id: Some(StepId::parse("design").unwrap()),
        step_name: Some("Step design".to_owned()),
        attempt: 2,
        escalation_id: design,
        resolution: Resolution::Retry,
        request: Request {
            requested_by: Some("ops".to_owned()),
            reason: Some("the provider is back".to_owned()),
        },
    })))
    .await;

    let ids = |reply: &Value| -> Vec<Value> {
        reply
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].clone())
            .collect()
    };
    let open = eventually(PROJECTED, "two open escalations", || async {
        let reply = api.get("/v1/escalations?status=open").await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        (reply.body.as_array().unwrap().len() == 2).then_some(reply.body)
    })
    .await;
    assert_eq!(ids(&open), [json!(release), json!(other)], "oldest first");
    let approval = &open[0];
    assert_eq!(approval["executionId"], json!(execution));
    assert_eq!(approval["workflowId"], json!(workflow));
    assert_eq!(approval["stepId"], "release");
    assert_eq!(approval["stepName"], "Step release");
    assert_eq!(approval["attempt"], 2);
    assert_eq!(approval["approval"], true);
    assert_eq!(approval["status"], "open");
    assert_eq!(approval["reason"], "retries spent");
    assert_eq!(
        approval["context"],
        json!({
            "failures": [{ "attempt": 2, "agentId": agent, "error": "provider said 500" }],
            "tried": ["reassign"],
            "outputs": {},
        })
    );
    assert!(approval["createdAt"].is_string());
    for absent in [
        "resolvedAt",
        "action",
        "resolution",
        "resolvedBy",
        "comment",
        "closedAt",
        "closedReason",
    ] {
        assert_eq!(approval[absent], Value::Null, "{absent}");
    }

    let reply = api.get(&format!("/v1/escalations/{design}")).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let resolved = &reply.body;
    assert_eq!(resolved["status"], "resolved");
    assert_eq!(resolved["action"], "retry");
    assert_eq!(resolved["resolution"], json!({ "action": "retry" }));
    assert_eq!(resolved["resolvedBy"], "ops");
    assert_eq!(resolved["comment"], "the provider is back");
    assert!(resolved["resolvedAt"].is_string());

    let reply = api
        .get(&format!("/v1/escalations?executionId={execution}"))
        .await;
    assert_eq!(ids(&reply.body), [json!(design), json!(release)]);
    let reply = api
        .get(&format!("/v1/escalations?workflowId={other_workflow}"))
        .await;
    assert_eq!(ids(&reply.body), [json!(other)]);
    let reply = api
        .get(&format!(
            "/v1/escalations?status=resolved&workflowId={workflow}&limit=1"
        ))
        .await;
    assert_eq!(ids(&reply.body), [json!(design)]);
    let reply = api.get("/v1/escalations?limit=1").await;
    assert_eq!(ids(&reply.body), [json!(design)]);
    let next = reply.next.expect("a link to the second page");
    assert_eq!(ids(&api.get(&next).await.body), [json!(release)]);

    // The run ends: what still waited for a person closes, saying why.
    append(Event::ExecutionCancelled(ExecutionCancelled {
        execution_id: execution,
        workflow_id: workflow,
        request: Request::default(),
    }))
    .await;
    let closed = eventually(PROJECTED, "the approval closed", || async {
        let reply = api.get(&format!("/v1/escalations/{release}")).await;
        (reply.body["status"] == "closed").then_some(reply.body)
    })
    .await;
    assert_eq!(closed["closedReason"], "execution cancelled");
    assert!(closed["closedAt"].is_string());
    let reply = api.get(&format!("/v1/escalations/{design}")).await;
    assert_eq!(reply.body["status"], "resolved", "a resolved one stays");

    for (path, status, parameter) in [
        ("/v1/escalations?status=waiting", 400, "'status'"),
        ("/v1/escalations?executionId=42", 400, "'executionId'"),
        ("/v1/escalations?workflowId=x", 400, "'workflowId'"),
        ("/v1/escalations?limit=-1", 400, "'limit'"),
        ("/v1/escalations/42", 400, "escalation id '42'"),
    ] {
        let reply = api.get(path).await;
        assert_eq!(reply.status, status, "{path}: {}", reply.body);
        assert_eq!(reply.content_type, "application/problem+json");
        let detail = reply.body["detail"].as_str().unwrap();
        assert!(detail.contains(parameter), "{path}: {detail}");
    }
    let unknown = EscalationId::of(ExecutionId::new(), &StepId::parse("x").unwrap(), 1);
    let reply = api.get(&format!("/v1/escalations/{unknown}")).await;
    assert_eq!(reply.status, 404, "{}", reply.body);
    assert_eq!(reply.content_type, "application/problem+json");
    stack.stop().await;
}
