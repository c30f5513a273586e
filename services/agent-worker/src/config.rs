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
use std::path::PathBuf;
use std::time::Duration;

use cadre_proto::model::TokenUsage;
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
    /// How long a step attempt may wait, in all, for a provider that keeps failing transiently
    /// (rate limits, overload, outages) before it fails. Counted in time, not calls: a provider
    /// asking for 30 s between calls gets as long as one that fails fast.
    pub retry_budget_secs: u64,
    /// Most characters of the results of a step's dependencies its prompt carries, shared
    /// equally among them (about four characters a token).
    pub dependency_budget_chars: usize,
    /// What each model costs, by model name, for the cost of every step in its events and
    /// read models. In the TOML file (`CADRE_CONFIG`):
    /// `[prices."gpt-4o-mini"]` `input_per_million = 0.15` `output_per_million = 0.60`.
    pub prices: BTreeMap<String, Price>,
    pub providers: BTreeMap<String, ProviderConfig>,
}

impl Config {
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
            retry_budget_secs: 900,
            dependency_budget_chars: 12_000,
            prices: BTreeMap::new(),
            providers: BTreeMap::from([(
                "offline".to_owned(),
                ProviderConfig::Offline {
                    latency_ms: 0,
                    answer: OfflineAnswer::Team,
                },
            )]),
        }
    }
}

/// What the offline provider answers a step with (`answer`: `team`, `brief` or `fail`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OfflineAnswer {
    /// The seed's sections, built from the prompt: a summary, an outline as the output, two
    /// insights and a decision (which the team shares when the workflow shares knowledge) and
    /// a concern for a person. Every step does some teamwork: what demos and tests show.
    #[default]
    Team,
    /// A one-line summary and an output of about 200 bytes, nothing else: a step that shares
    /// no knowledge and raises nothing, the benchmarks' no-op step (as a peer's no-op
    /// durable step returning a small JSON value).
    Brief,
    /// No answer: every call fails with an error no retry can fix, as a model that rejects
    /// every request would. Steps fail without an outside model, so retries, the escalation
    /// ladder (a person, an agent on another provider), sagas and re-plans can be tried
    /// offline.
    Fail,
}

/// A model's price in US dollars per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Price {
    pub input_per_million: f64,
    pub output_per_million: f64,
}

impl Price {
    /// What `usage` costs at this price.
    pub fn cost(&self, usage: &TokenUsage) -> f64 {
        (f64::from(usage.prompt) * self.input_per_million
            + f64::from(usage.completion) * self.output_per_million)
            / 1_000_000.0
    }
}

/// Unique per process, as the other services' replica names: two workers on one host with the
/// same id would overwrite each other's entry in the registry.
fn default_worker_id() -> String {
    cadre_runtime::membership::default_replica_id("agent-worker")
}

/// One configured LLM provider. A setting it does not know (a misspelt `APIKEY`, say) stops
/// the worker with its name rather than being ignored.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ProviderConfig {
    /// Answers without a model, deterministically: for demos, tests and benchmarks.
    Offline {
        /// Simulated latency of each call.
        #[serde(default)]
        latency_ms: u64,
        /// What it answers a step with.
        #[serde(default)]
        answer: OfflineAnswer,
    },
    /// Any server speaking OpenAI's `/chat/completions` (OpenAI, DeepSeek, vLLM, Ollama,
    /// llama.cpp's server, ...).
    #[serde(rename = "openai_compatible")]
    OpenAiCompatible(HttpProviderConfig),
    /// Anthropic's Messages API (`POST {base_url}/messages`).
    Anthropic(HttpProviderConfig),
}

/// A provider reached over HTTP. Every field but `base_url` (for OpenAI-compatible servers)
/// has a default.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpProviderConfig {
    /// Up to and including the version segment, e.g. `https://api.openai.com/v1`. Empty means
    /// the provider's public API (Anthropic only).
    pub base_url: String,
    /// The model for agents that name none.
    pub model: Option<String>,
    /// The API key itself. Never serialized, so it cannot end up in a dump of the config.
    #[serde(skip_serializing)]
    pub api_key: Option<SecretString>,
    /// The name of an environment variable holding the API key, read at startup.
    pub api_key_env: Option<String>,
    /// A file holding the API key (a mounted secret), read and trimmed at startup.
    pub api_key_file: Option<PathBuf>,
    /// The whole call, including reading the answer.
    pub timeout_secs: u64,
    /// No bytes from the server for this long ends the call (a hung server). A server that does
    /// not stream sends its first byte only when the whole answer is written: for such a
    /// provider keep this above the longest answer's generation time (a streaming one sends
    /// bytes as tokens come).
    pub idle_timeout_secs: u64,
    pub connect_timeout_secs: u64,
    /// Most calls in flight to this provider from this process; more wait for a turn.
    /// None: no limit.
    pub max_concurrency: Option<usize>,
    pub circuit_breaker: CircuitBreakerConfig,
    /// How many times an answer cut off at `max_tokens` is continued before the step fails.
    pub max_continuations: u32,
    /// Whether to ask for JSON against a request's schema (where the server supports it).
    pub json_schema: bool,
    /// Whether to stream the answer (server-sent events) and pass its text on as it comes.
    pub stream: bool,
}

impl Default for HttpProviderConfig {
    fn default() -> Self {
        Self {
            base_url: String::new(),
            model: None,
            api_key: None,
            api_key_env: None,
            api_key_file: None,
            timeout_secs: 120,
            idle_timeout_secs: 60,
            connect_timeout_secs: 10,
            max_concurrency: None,
            circuit_breaker: CircuitBreakerConfig::default(),
            max_continuations: 2,
            json_schema: true,
            stream: false,
        }
    }
}

impl HttpProviderConfig {
    /// An OpenAI-compatible or Anthropic provider at `base_url` with every other setting at
    /// its default.
    pub fn new(base_url: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into(),
            ..Self::default()
        }
    }

    /// The API key from whichever of `api_key`, `api_key_env` and `api_key_file` is set.
    /// At most one may be; a named variable or file that is missing or empty is an error
    /// (at startup, rather than a 401 on every step).
    pub fn resolve_api_key(&self) -> Result<Option<SecretString>, String> {
        let sources = [
            self.api_key.is_some(),
            self.api_key_env.is_some(),
            self.api_key_file.is_some(),
        ];
        if sources.iter().filter(|set| **set).count() > 1 {
            return Err("set only one of api_key, api_key_env and api_key_file".to_owned());
        }
        if let Some(key) = &self.api_key {
            return Ok(Some(key.clone()));
        }
        if let Some(name) = &self.api_key_env {
            let value = std::env::var(name).map_err(|_| {
                format!("api_key_env names the environment variable {name:?}, which is not set")
            })?;
            let value = value.trim();
            if value.is_empty() {
                return Err(format!(
                    "api_key_env names the environment variable {name:?}, which is empty"
                ));
            }
            return Ok(Some(SecretString::from(value.to_owned())));
        }
        if let Some(path) = &self.api_key_file {
            let value = std::fs::read_to_string(path).map_err(|error| {
                format!("api_key_file {} cannot be read: {error}", path.display())
            })?;
            let value = value.trim();
            if value.is_empty() {
                return Err(format!("api_key_file {} is empty", path.display()));
            }
            return Ok(Some(SecretString::from(value.to_owned())));
        }
        Ok(None)
    }
}

/// When a provider is given a rest: after `failure_threshold` retryable failures in a row,
/// calls fail at once for `cool_down_secs`; then one trial call decides.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CircuitBreakerConfig {
    /// 0 turns the breaker off.
    pub failure_threshold: u32,
    pub cool_down_secs: u64,
}

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            cool_down_secs: 30,
        }
    }
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
            jail.set_env("CADRE_PROVIDERS__NOOP__KIND", "offline");
            jail.set_env("CADRE_PROVIDERS__NOOP__ANSWER", "brief");
            jail.set_env("CADRE_PROVIDERS__BROKEN__KIND", "offline");
            jail.set_env("CADRE_PROVIDERS__BROKEN__ANSWER", "fail");
            jail.set_env("CADRE_CONCURRENCY", "8");
            jail.set_env("CADRE_PROVIDERS__CLAUDE__KIND", "anthropic");
            jail.set_env("CADRE_PROVIDERS__CLAUDE__API_KEY_ENV", "ANTHROPIC_KEY");
            jail.set_env("CADRE_PROVIDERS__CLAUDE__IDLE_TIMEOUT_SECS", "15");
            jail.set_env("CADRE_PROVIDERS__CLAUDE__MAX_CONCURRENCY", "4");
            jail.set_env(
                "CADRE_PROVIDERS__CLAUDE__CIRCUIT_BREAKER__FAILURE_THRESHOLD",
                "3",
            );
            jail.set_env("CADRE_PROVIDERS__CLAUDE__STREAM", "true");
            let config: Config =
                cadre_runtime::config::load().map_err(|error| error.to_string())?;

            assert_eq!(config.concurrency, 8);
            assert_eq!(config.knowledge_limit, 5);
            assert!(matches!(
                config.providers.get("offline"),
                Some(ProviderConfig::Offline {
                    latency_ms: 25,
                    answer: OfflineAnswer::Team
                })
            ));
            assert!(matches!(
                config.providers.get("noop"),
                Some(ProviderConfig::Offline {
                    latency_ms: 0,
                    answer: OfflineAnswer::Brief
                })
            ));
            assert!(matches!(
                config.providers.get("broken"),
                Some(ProviderConfig::Offline {
                    answer: OfflineAnswer::Fail,
                    ..
                })
            ));
            match config.providers.get("openai") {
                Some(ProviderConfig::OpenAiCompatible(http)) => {
                    assert_eq!(http.base_url, "https://api.openai.com/v1");
                    assert_eq!(
                        http.api_key.as_ref().map(|key| key.expose_secret()),
                        Some("sk-test")
                    );
                    assert_eq!(http.timeout_secs, 120);
                    assert_eq!(http.max_continuations, 2);
                    assert!(http.json_schema && !http.stream);
                }
                other => panic!("expected an openai_compatible provider, got {other:?}"),
            }
            match config.providers.get("claude") {
                Some(ProviderConfig::Anthropic(http)) => {
                    assert_eq!(http.api_key_env.as_deref(), Some("ANTHROPIC_KEY"));
                    assert_eq!(http.idle_timeout_secs, 15);
                    assert_eq!(http.max_concurrency, Some(4));
                    assert_eq!(http.circuit_breaker.failure_threshold, 3);
                    assert!(http.stream);
                }
                other => panic!("expected an anthropic provider, got {other:?}"),
            }
            assert!(!format!("{config:?}").contains("sk-test"));
            Ok(())
        });
    }

    #[test]
    fn api_keys_come_from_one_source_and_missing_ones_are_startup_errors() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("key");
        std::fs::write(&file, "  sk-from-file\n").unwrap();
        let from_file = HttpProviderConfig {
            api_key_file: Some(file),
            ..HttpProviderConfig::new("http://x")
        };
        let key = from_file.resolve_api_key().unwrap().unwrap();
        assert_eq!(key.expose_secret(), "sk-from-file");

        let missing_file = HttpProviderConfig {
            api_key_file: Some(dir.path().join("absent")),
            ..HttpProviderConfig::new("http://x")
        };
        let error = missing_file.resolve_api_key().unwrap_err();
        assert!(error.contains("absent"), "{error}");

        let missing_env = HttpProviderConfig {
            api_key_env: Some("CADRE_TEST_SURELY_UNSET_KEY".to_owned()),
            ..HttpProviderConfig::new("http://x")
        };
        let error = missing_env.resolve_api_key().unwrap_err();
        assert!(error.contains("CADRE_TEST_SURELY_UNSET_KEY"), "{error}");

        let both = HttpProviderConfig {
            api_key: Some(SecretString::from("sk-a")),
            api_key_env: Some("X".to_owned()),
            ..HttpProviderConfig::new("http://x")
        };
        let error = both.resolve_api_key().unwrap_err();
        assert!(
            error.contains("only one") && !error.contains("sk-a"),
            "{error}"
        );
        assert!(!format!("{both:?}").contains("sk-a"));
        let serialized = serde_json::to_string(&both).unwrap();
        assert!(!serialized.contains("sk-a"), "{serialized}");
    }

    #[test]
    // figment's `Jail` closures return its (large) error type.
    #[allow(clippy::result_large_err)]
    fn prices_come_from_the_config_file_and_price_a_steps_tokens() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "cadre.toml",
                "[prices.\"gpt-4o-mini\"]\ninput_per_million = 0.15\noutput_per_million = 0.6\n",
            )?;
            jail.set_env("CADRE_CONFIG", "cadre.toml");
            let config: Config =
                cadre_runtime::config::load().map_err(|error| error.to_string())?;
            let price = config.prices["gpt-4o-mini"];
            let usage = TokenUsage {
                prompt: 2_000_000,
                completion: 500_000,
                total: 2_500_000,
            };
            assert!((price.cost(&usage) - 0.6).abs() < 1e-9);
            Ok(())
        });
    }

    #[test]
    // figment's `Jail` closures return its (large) error type.
    #[allow(clippy::result_large_err)]
    fn a_misspelt_provider_setting_is_refused_by_name() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("CADRE_PROVIDERS__Z__KIND", "openai_compatible");
            jail.set_env("CADRE_PROVIDERS__Z__BASE_URL", "http://127.0.0.1:1/v1");
            jail.set_env("CADRE_PROVIDERS__Z__APIKEY", "sk-typo");
            let error = cadre_runtime::config::load::<Config>()
                .unwrap_err()
                .to_string();
            assert!(error.contains("apikey"), "{error}");
            assert!(!error.contains("sk-typo"), "{error}");

            jail.clear_env();
            jail.set_env("CADRE_PROVIDERS__OFFLINE__LATENCYMS", "5");
            let error = cadre_runtime::config::load::<Config>()
                .unwrap_err()
                .to_string();
            assert!(error.contains("latencyms"), "{error}");
            Ok(())
        });
    }
}
