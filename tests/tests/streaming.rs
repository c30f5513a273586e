//! Live token streaming: a provider configured to stream hands the answer's pieces to the
//! monitor's subject as the model writes them, outside the log; the result goes to the log as
//! usual and is the pieces joined.

// Test code: a panic is the failure report, in helpers as in tests.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use cadre_agent_worker::ProviderConfig;
use cadre_proto::subjects;
use cadre_proto::workers::TokenDelta;
use cadre_tests::Stack;
use cadre_tests::api::{agent, pipeline};
use cadre_tests::stack::FAKE_PROVIDER;
use futures::StreamExt;

const FINISH: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_streaming_providers_answer_reaches_subscribers_piece_by_piece() {
    let mut stack = Stack::start().await;
    stack.stop_service("agent-worker").await;
    let ProviderConfig::OpenAiCompatible(mut http) = stack.fake_provider(10) else {
        unreachable!("the fake is OpenAI-compatible")
    };
    http.stream = true;
    let providers = BTreeMap::from([(
        FAKE_PROVIDER.to_owned(),
        ProviderConfig::OpenAiCompatible(http),
    )]);
    stack.run_worker("streaming", stack.worker_config("streaming", providers));
    let client = async_nats::connect(&stack.nats.url).await.unwrap();
    let mut live = client.subscribe(subjects::ALL_LIVE_TOKENS).await.unwrap();
    client.flush().await.unwrap();

    let ada = stack
        .api
        .register_agent(&agent("Ada", "analyst", &["research"], FAKE_PROVIDER))
        .await;
    let ids = vec![ada["id"].as_str().unwrap().to_owned()];
    let workflow = stack
        .api
        .create_workflow(&pipeline("Streamed", &ids, &[&["research"]], 1))
        .await;
    let (execution_id, _) = stack
        .api
        .start_execution(workflow["id"].as_str().unwrap())
        .await;
    let execution = stack.wait_until_finished(&execution_id, FINISH).await;
    assert_eq!(execution["status"], "completed", "{execution:#}");

    // Every piece was published before the result was recorded.
    let mut pieces = Vec::new();
    while let Ok(Some(message)) =
        tokio::time::timeout(Duration::from_millis(500), live.next()).await
    {
        assert!(
            message.subject.as_str().ends_with(".step.step-1")
                && message.subject.contains(&execution_id),
            "{}",
            message.subject
        );
        pieces.push(serde_json::from_slice::<TokenDelta>(&message.payload).unwrap());
    }
    assert!(pieces.len() > 3, "{} pieces", pieces.len());
    let indexes: Vec<u64> = pieces.iter().map(|p| p.index).collect();
    assert_eq!(indexes, (0..pieces.len() as u64).collect::<Vec<_>>());
    assert!(pieces.iter().all(|p| p.attempt == 1));
    let streamed: String = pieces.iter().map(|p| p.text.as_str()).collect();
    let result = &execution["stepResults"]["step-1"];
    assert!(
        streamed.contains(result["summary"].as_str().unwrap()),
        "{streamed}"
    );
    // The log is not where the pieces went: the result was recorded once, whole.
    assert!(stack.llm.requests().len() == 1);
    stack.stop().await;
}
