//! A real model: a workflow run against a real OpenAI-compatible server, llama.cpp's (through
//! llama-cpp-python) with Gemma 3 270M, both installed by `scripts/ensure-llm.sh`. Gemma's chat
//! template has no system role; the test checks the mechanics that matter whatever such a small
//! base model writes: the persona, the team context and the format reach it (its own token
//! count of the prompt says so), and its answer comes back structured (JSON under the step
//! schema) and recorded with its usage. One step: this 270M *base* model (not instruction
//! tuned) answers a longer prompt (a second step's, with the first one's results) with JSON
//! that runs on past any token budget, which Cadre rightly fails after one repair request.
//!
//! Runs when the model is installed, under CI (`CI` set: it installs it, which compiles
//! llama.cpp once per machine), or with `CADRE_REAL_LLM=1`; otherwise it says it is skipped.

// Test code: a panic is the failure report, in helpers as in tests.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cadre_agent_worker::{HttpProviderConfig, ProviderConfig};
use cadre_tests::api::{agent, pipeline};
use cadre_tests::{Stack, eventually};
use serde_json::json;

const PROVIDER: &str = "llama-cpp";
const FINISH: Duration = Duration::from_secs(900);

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

fn wanted() -> bool {
    let installed = root().join(".cadre/venv-llm/.cadre-installed").exists();
    installed || std::env::var_os("CI").is_some() || std::env::var_os("CADRE_REAL_LLM").is_some()
}

/// The model server, stopped when dropped.
struct ModelServer {
    child: Child,
    base_url: String,
    model: String,
}

impl ModelServer {
    /// Starts `scripts/llm-server.sh` (installing on first use) and waits for its two lines.
    fn start() -> Self {
        let mut child = Command::new(root().join("scripts/llm-server.sh"))
            // OpenAI's `json_schema` response format, which llama-cpp-python 0.3 does not know
            // by that name, becomes its own schema-constrained JSON mode.
            .arg("--json-schema")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("scripts/llm-server.sh starts");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let base_url = lines.next().expect("the server's URL").unwrap();
        let model = lines.next().expect("the server's model id").unwrap();
        Self {
            child,
            base_url,
            model,
        }
    }
}

impl Drop for ModelServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn a_workflow_runs_on_a_real_model_whose_template_has_no_system_role() {
    if !wanted() {
        eprintln!(
            "skipped: the local model is not installed (scripts/ensure-llm.sh installs it; \
             CI=1 or CADRE_REAL_LLM=1 makes this test install it)"
        );
        return;
    }
    let server = tokio::task::spawn_blocking(ModelServer::start)
        .await
        .unwrap();

    let mut stack = Stack::start().await;
    stack.stop_service("agent-worker").await;
    let providers = BTreeMap::from([(
        PROVIDER.to_owned(),
        ProviderConfig::OpenAiCompatible(HttpProviderConfig {
            timeout_secs: 600,
            // Not streamed: the first byte comes when the whole answer is written.
            idle_timeout_secs: 600,
            ..HttpProviderConfig::new(server.base_url.clone())
        }),
    )]);
    stack.run_worker("real", stack.worker_config("real", providers));

    let mut zed = agent("Zed", "database architect", &["research"], PROVIDER);
    zed["model"] = json!(server.model);
    zed["backstory"] = json!("Zed has designed Postgres schemas for twenty years.");
    zed["modelParameters"] = json!({"temperature": 0.0, "maxTokens": 1000});
    let registered = stack.api.register_agent(&zed).await;
    let ids = vec![registered["id"].as_str().unwrap().to_owned()];
    let workflow = stack
        .api
        .create_workflow(&pipeline("Real model", &ids, &[&["research"]], 1))
        .await;
    let workflow_id = workflow["id"].as_str().unwrap().to_owned();
    let (execution_id, _) = stack.api.start_execution(&workflow_id).await;
    let execution = stack.wait_until_finished(&execution_id, FINISH).await;
    assert_eq!(execution["status"], "completed", "{execution:#}");

    let result = &execution["stepResults"]["step-1"];
    assert_eq!(result["model"], server.model.as_str(), "{result:#}");
    assert!(!result["output"].as_str().unwrap().is_empty(), "{result:#}");
    // The model's own count: the persona, the team context and the answer format (a few hundred
    // tokens) reached it, not only the user turn (the 43-61 tokens of a template that drops the
    // system message).
    let prompt = result["tokens"]["prompt"].as_u64().unwrap();
    assert!(prompt > 250, "{prompt} prompt tokens: {result:#}");
    // The answer was JSON under the step schema, not sections.
    let whole = stack
        .api
        .get(&format!(
            "/v1/executions/{execution_id}/steps/step-1/result"
        ))
        .await;
    let raw = whole.body["result"]["rawResponse"]
        .as_str()
        .unwrap_or_default();
    assert!(
        serde_json::from_str::<serde_json::Value>(raw.trim()).is_ok(),
        "{:#}",
        whole.body
    );
    let usage = eventually(Duration::from_secs(30), "the usage read model", || async {
        let reply = stack
            .api
            .get(&format!("/v1/executions/{execution_id}/usage"))
            .await;
        (reply.body["total"]["calls"] == 1).then_some(reply.body)
    })
    .await;
    assert_eq!(
        usage["total"]["promptTokens"].as_u64(),
        Some(prompt),
        "{usage:#}"
    );
    stack.stop().await;
    drop(server);
}
