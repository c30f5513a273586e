//! The worker's settings, loaded with [`cadre_runtime::config::load`].
//!
//! LLM providers are named entries under `providers`; an agent's `provider` field picks one.
//! From the environment, for example:
//!
//! ```text
//! CADRE_PROVIDERS__OPENAI__KIND=openai_compatible
//! CADRE_PROVIDERS__OPENAI__BASE_URL=https://api.openai.com/v1
//! CADRE_PROVIDERS__OPENAI__API_KEY=sk-...
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    pub nats_url: String,
    pub database_url: String,
    pub stream_replicas: usize,
    pub health_addr: String,
    /// Names this process in logs and in its NATS connection.
    pub worker_id: String,
    /// Most steps this process runs at once.
    pub concurrency: usize,
    /// Most knowledge items put in a step's prompt (the seed's "top 5").
    pub knowledge_limit: u32,
    /// How long a step waits for the read models to reach its knowledge watermark before it
    /// proceeds with the knowledge that is visible.
    pub knowledge_wait_secs: u64,
    /// How long a step attempt may wait, in all, for a provider that keeps failing transiently
    /// (rate limits, overload, outages) before it fails. Counted in time, not calls: a provider
    /// asking for 30 s between calls gets as long as one that fails fast.
    pub retry_budget_secs: u64,
    /// Most characters of the results of a step's dependencies its prompt carries, shared
    /// equally among them (about four characters a token).
    pub dependency_budget_chars: usize,
    pub providers: BTreeMap<String, ProviderConfig>,
}

impl Config {
    pub fn knowledge_wait(&self) -> Duration {
        Duration::from_secs(self.knowledge_wait_secs)
    }

    pub fn retry_budget(&self) -> Duration {
        Duration::from_secs(self.retry_budget_secs)
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            nats_url: "nats://127.0.0.1:4222".to_owned(),
            database_url: "postgres://postgres@127.0.0.1:5432/cadre".to_owned(),
            stream_replicas: 1,
            health_addr: "0.0.0.0:9091".to_owned(),
            worker_id: default_worker_id(),
            concurrency: 256,
            knowledge_limit: 5,
            knowledge_wait_secs: 30,
            retry_budget_secs: 900,
            dependency_budget_chars: 12_000,
            providers: BTreeMap::from([(
                "offline".to_owned(),
                ProviderConfig::Offline { latency_ms: 0 },
            )]),
        }
    }
}

/// The pod name under Kubernetes; a random name where the host has none.
fn default_worker_id() -> String {
    hostname::get()
        .ok()
        .and_then(|name| name.into_string().ok())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| format!("agent-worker-{}", uuid::Uuid::now_v7()))
}

/// One configured LLM provider.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ProviderConfig {
    /// Answers without a model, deterministically: for demos, tests and benchmarks.
    Offline {
        /// Simulated latency of each call.
        #[serde(default)]
        latency_ms: u64,
    },
    /// Any server speaking OpenAI's `/chat/completions` (OpenAI, DeepSeek, vLLM, Ollama, ...).
    #[serde(rename = "openai_compatible")]
    OpenAiCompatible {
        /// Up to and including the version segment, e.g. `https://api.openai.com/v1`.
        base_url: String,
        /// Sent as a bearer token. Never serialized, so it cannot end up in a dump of the config.
        #[serde(default, skip_serializing)]
        api_key: Option<SecretString>,
        #[serde(default = "default_timeout_secs")]
        timeout_secs: u64,
    },
}

fn default_timeout_secs() -> u64 {
    120
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    #[test]
    // figment's `Jail` closures return its (large) error type.
    #[allow(clippy::result_large_err)]
    fn providers_come_from_environment_nesting() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("CADRE_PROVIDERS__OPENAI__KIND", "openai_compatible");
            jail.set_env(
                "CADRE_PROVIDERS__OPENAI__BASE_URL",
                "https://api.openai.com/v1",
            );
            jail.set_env("CADRE_PROVIDERS__OPENAI__API_KEY", "sk-test");
            jail.set_env("CADRE_PROVIDERS__OFFLINE__LATENCY_MS", "25");
            jail.set_env("CADRE_CONCURRENCY", "8");
            let config: Config =
                cadre_runtime::config::load().map_err(|error| error.to_string())?;

            assert_eq!(config.concurrency, 8);
            assert_eq!(config.knowledge_limit, 5);
            assert!(matches!(
                config.providers.get("offline"),
                Some(ProviderConfig::Offline { latency_ms: 25 })
            ));
            match config.providers.get("openai") {
                Some(ProviderConfig::OpenAiCompatible {
                    base_url,
                    api_key,
                    timeout_secs,
                }) => {
                    assert_eq!(base_url, "https://api.openai.com/v1");
                    assert_eq!(
                        api_key.as_ref().map(|key| key.expose_secret()),
                        Some("sk-test")
                    );
                    assert_eq!(*timeout_secs, 120);
                }
                other => panic!("expected an openai_compatible provider, got {other:?}"),
            }
            assert!(!format!("{config:?}").contains("sk-test"));
            Ok(())
        });
    }
}
