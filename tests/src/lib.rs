//! The harness for Cadre's end-to-end tests and benchmark.
//!
//! Every test gets its own `nats-server` (a free port, a temporary JetStream store) and its own
//! Postgres database, and runs the three services in-process against them. Only the LLM is
//! replaced, by [`fake_llm::FakeLlm`], a local server that speaks the OpenAI protocol.

pub mod api;
pub mod audit;
pub mod fake_llm;
pub mod nats;
pub mod pg;
pub mod services;
pub mod stack;

pub use api::Api;
pub use stack::{Stack, StackOptions};

/// Polls `probe` until it yields `Some`, or fails after `timeout` with `what` in the message.
pub async fn eventually<T, F, Fut>(timeout: std::time::Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
}
