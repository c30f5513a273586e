//! Token usage and cost: every completed step carries its tokens and (with a price for its
//! model) its cost, and the read API sums them per step, agent, execution and workflow.

// Test code: a panic is the failure report, in helpers as in tests.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use cadre_agent_worker::config::Price;
use cadre_tests::api::{agent, pipeline};
use cadre_tests::stack::FAKE_PROVIDER;
use cadre_tests::{Stack, eventually};
use serde_json::Value;

const FINISH: Duration = Duration::from_secs(60);

#[tokio::test]
async fn tokens_and_cost_are_summed_per_step_agent_execution_and_workflow() {
    let mut stack = Stack::start().await;
    stack.stop_service("agent-worker").await;
    let price = Price {
        input_per_million: 2.0,
        output_per_million: 8.0,
    };
    let providers = BTreeMap::from([(FAKE_PROVIDER.to_owned(), stack.fake_provider(10))]);
    let config = cadre_agent_worker::Config {
        prices: BTreeMap::from([("gpt-4o-mini".to_owned(), price)]),
        ..stack.worker_config("priced", providers)
    };
    stack.run_worker("priced", config);

    let ada = stack
        .api
        .register_agent(&agent("Ada", "analyst", &["research"], FAKE_PROVIDER))
        .await;
    let ada_id = ada["id"].as_str().unwrap().to_owned();
    let body = pipeline("Costed", std::slice::from_ref(&ada_id), &[&["research"]], 2);
    let workflow_id = stack.api.create_workflow(&body).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (execution_id, _) = stack.api.start_execution(&workflow_id).await;
    let execution = stack.wait_until_finished(&execution_id, FINISH).await;
    assert_eq!(execution["status"], "completed", "{execution:#}");

    let tokens = |step: &str, kind: &str| {
        execution["stepResults"][step]["tokens"][kind]
            .as_i64()
            .unwrap()
    };
    let (prompt, completion) = (
        tokens("step-1", "prompt") + tokens("step-2", "prompt"),
        tokens("step-1", "completion") + tokens("step-2", "completion"),
    );
    assert!(prompt > 0 && completion > 0);
    let cost = (prompt as f64 * 2.0 + completion as f64 * 8.0) / 1e6;

    let usage = eventually(FINISH, "the usage read model", || async {
        let reply = stack
            .api
            .get(&format!("/v1/executions/{execution_id}/usage"))
            .await;
        (reply.body["total"]["calls"] == 2).then_some(reply.body)
    })
    .await;
    let check = |sum: &Value, calls: i64| {
        assert_eq!(sum["calls"], calls, "{sum}");
        assert_eq!(sum["promptTokens"].as_i64().unwrap(), prompt, "{sum}");
        assert_eq!(
            sum["completionTokens"].as_i64().unwrap(),
            completion,
            "{sum}"
        );
        assert_eq!(
            sum["totalTokens"].as_i64().unwrap(),
            prompt + completion,
            "{sum}"
        );
        assert!(
            (sum["costUsd"].as_f64().unwrap() - cost).abs() < 1e-12,
            "{sum}"
        );
        assert_eq!(sum["costComplete"], true);
    };
    check(&usage["total"], 2);
    assert_eq!(usage["byStep"].as_array().unwrap().len(), 2);
    assert_eq!(usage["byAgent"][0]["key"], ada_id.as_str());
    check(&usage["byAgent"][0], 2);

    let workflow = stack
        .api
        .get(&format!("/v1/workflows/{workflow_id}/usage"))
        .await;
    check(&workflow.body["total"], 2);
    assert_eq!(
        workflow.body["byModel"][0]["key"],
        "fake-openai/gpt-4o-mini"
    );
    let agent = stack.api.get(&format!("/v1/agents/{ada_id}/usage")).await;
    check(&agent.body["total"], 2);

    let missing = stack
        .api
        .get(&format!("/v1/executions/{}/usage", uuid::Uuid::now_v7()))
        .await;
    assert_eq!(missing.status, 404);
    stack.stop().await;
}
