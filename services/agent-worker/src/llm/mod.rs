//! The LLM providers a worker can call, and how their answers and failures are read.
//!
//! Real servers send more than their documentation says: token counts in any shape or none,
//! text cut off at `max_tokens`, reasoning beside (or inside) the answer, broken text, streams
//! nobody asked for, errors inside a 200, proxy pages. Every provider here reads all of that
//! leniently and keeps a good answer; what cannot be an answer becomes an [`LlmError`] that
//! says whether another try may help ([`LlmError::is_retryable`], with the server's
//! [`LlmError::retry_after`]) and what a person can do.
//!
//! An answer cut off at `max_tokens` is never a silent success: it is continued (the partial
//! answer goes back as the assistant's message with a short request to go on) up to the
//! provider's `max_continuations`, then the call fails for good.
//!
//! Each provider limits its calls in flight (`max_concurrency`) and has a circuit breaker;
//! each call is a tracing span following the OpenTelemetry GenAI conventions (never with a
//! prompt or a key in it).

mod anthropic;
mod breaker;
mod error;
mod http;
mod offline;
mod openai;
#[cfg(test)]
mod testing;
mod wire;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cadre_proto::model::{AgentProfile, TokenUsage};
use serde_json::Value;
use tokio::sync::Semaphore;
use tracing::Instrument as _;
use tracing::field::Empty;

use crate::config::{HttpProviderConfig, ProviderConfig};
use crate::prompt::StepPrompt;

pub use self::error::{LlmError, LlmErrorKind};

use self::anthropic::Anthropic;
use self::breaker::Breaker;
use self::http::Timeouts;
use self::offline::Offline;
use self::openai::OpenAiCompatible;
use self::wire::ReportedUsage;

/// The seed's sampling defaults, for agents that set none.
const DEFAULT_TEMPERATURE: f32 = 0.5;
const DEFAULT_MAX_TOKENS: u32 = 2000;

/// What a continuation call asks after the cut-off answer.
const CONTINUE_PROMPT: &str = "Your answer was cut off. Continue exactly where it stopped: \
                               do not repeat anything and add no preamble.";

/// One chat completion: an optional system message and a user message.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    /// Empty: the provider's configured `model`.
    pub model: String,
    /// Empty: no system message at all (for models whose chat template has no system role,
    /// the caller puts the persona into `user`).
    pub system: String,
    pub user: String,
    pub temperature: f32,
    pub max_tokens: u32,
    /// Ask for JSON against this schema, where the provider supports it (OpenAI-compatible:
    /// `response_format` `json_schema`, dropped for good if the server refuses it; Anthropic:
    /// a forced tool whose input schema this is, its input being the answer).
    pub json_schema: Option<Value>,
}

impl ChatRequest {
    /// The agent's model and sampling settings around a step's prompt.
    pub fn for_agent(agent: &AgentProfile, prompt: StepPrompt) -> Self {
        let parameters = &agent.model_parameters;
        Self {
            model: agent.model.clone(),
            system: prompt.system,
            user: prompt.user,
            temperature: parameters.temperature.unwrap_or(DEFAULT_TEMPERATURE),
            max_tokens: parameters.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
            json_schema: None,
        }
    }
}

/// An answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// The answer, without any reasoning before it.
    pub text: String,
    /// Summed over the continuations; estimated where the server did not count.
    pub usage: TokenUsage,
    /// The last call's, as the server said it (`stop`, `end_turn`, ...).
    pub finish_reason: Option<String>,
    /// The model that answered, as the server named it.
    pub response_model: Option<String>,
    /// How many continuation calls the answer took (see the module's documentation).
    pub continuations: u32,
}

/// Receives the answer's text as it streams in (providers with `stream: true`; others hand
/// over each call's text whole). Continuations follow on; reasoning is not filtered out.
pub type TextSink<'a> = &'a (dyn Fn(&str) + Sync);

/// A provider's configuration is unusable: the worker does not start.
#[derive(Debug, thiserror::Error)]
#[error("LLM provider {provider:?}: {reason}")]
pub struct SetupError {
    pub provider: String,
    pub reason: String,
}

/// The providers configured on this worker, by the name agents use.
pub struct Providers(BTreeMap<String, Provider>);

impl Providers {
    /// Builds every provider, reading API keys from the environment or files now, so that a
    /// missing one stops the worker at startup rather than failing every step.
    pub fn from_config(configs: &BTreeMap<String, ProviderConfig>) -> Result<Self, SetupError> {
        configs
            .iter()
            .map(|(name, config)| Ok((name.clone(), Provider::from_config(name, config)?)))
            .collect::<Result<_, _>>()
            .map(Self)
    }

    pub fn get(&self, name: &str) -> Result<&Provider, LlmError> {
        self.0.get(name).ok_or_else(|| {
            LlmError::unknown_provider(name, self.names().map(str::to_owned).collect())
        })
    }

    /// The provider names this worker offers.
    pub fn names(&self) -> impl ExactSizeIterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }
}

/// One configured provider, with its concurrency limit and circuit breaker.
pub struct Provider {
    name: String,
    backend: Backend,
    concurrency: Option<Semaphore>,
    breaker: Option<Breaker>,
    max_continuations: u32,
    default_model: Option<String>,
    json_schema: bool,
    streams: bool,
}

enum Backend {
    Offline(Offline),
    OpenAi(OpenAiCompatible),
    Anthropic(Anthropic),
}

impl Provider {
    pub fn from_config(name: &str, config: &ProviderConfig) -> Result<Self, SetupError> {
        Self::build(name, config, None)
    }

    /// `timeouts` replaces the configured ones (tests need less than a second).
    pub(crate) fn build(
        name: &str,
        config: &ProviderConfig,
        timeouts: Option<Timeouts>,
    ) -> Result<Self, SetupError> {
        let setup_error = |reason: String| SetupError {
            provider: name.to_owned(),
            reason,
        };
        let http = match config {
            ProviderConfig::Offline { latency_ms, answer } => {
                return Ok(Self {
                    name: name.to_owned(),
                    backend: Backend::Offline(Offline::new(
                        Duration::from_millis(*latency_ms),
                        *answer,
                    )),
                    concurrency: None,
                    breaker: None,
                    max_continuations: 0,
                    default_model: None,
                    json_schema: false,
                    streams: false,
                });
            }
            ProviderConfig::OpenAiCompatible(http) | ProviderConfig::Anthropic(http) => http,
        };
        let api_key = http.resolve_api_key().map_err(setup_error)?;
        let timeouts = timeouts.unwrap_or_else(|| configured_timeouts(http));
        let client = http::client(timeouts).map_err(|error| setup_error(error.to_string()))?;
        let backend = match config {
            ProviderConfig::OpenAiCompatible(_) => {
                if http.base_url.trim().is_empty() {
                    return Err(setup_error(
                        "base_url is empty; it looks like https://api.openai.com/v1".to_owned(),
                    ));
                }
                Backend::OpenAi(OpenAiCompatible::new(
                    name,
                    client,
                    &http.base_url,
                    api_key,
                    http.stream,
                ))
            }
            _ => Backend::Anthropic(Anthropic::new(
                name,
                client,
                &http.base_url,
                api_key,
                http.stream,
            )),
        };
        let breaker = &http.circuit_breaker;
        Ok(Self {
            name: name.to_owned(),
            backend,
            concurrency: http.max_concurrency.map(Semaphore::new),
            breaker: (breaker.failure_threshold > 0).then(|| {
                Breaker::new(
                    breaker.failure_threshold,
                    Duration::from_secs(breaker.cool_down_secs),
                )
            }),
            max_continuations: http.max_continuations,
            default_model: http.model.clone().filter(|model| !model.is_empty()),
            json_schema: http.json_schema,
            streams: http.stream,
        })
    }

    /// Whether its answers come as a stream whose pieces [`Provider::complete_streaming`]
    /// hands to a sink.
    pub fn streams(&self) -> bool {
        self.streams
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Asks for one answer.
    pub async fn complete(&self, request: &ChatRequest) -> Result<Completion, LlmError> {
        self.complete_streaming(request, None).await
    }

    /// Asks for one answer, handing its text to `sink` as it comes.
    pub async fn complete_streaming(
        &self,
        request: &ChatRequest,
        sink: Option<TextSink<'_>>,
    ) -> Result<Completion, LlmError> {
        let model = match (&self.default_model, request.model.is_empty()) {
            (Some(default), true) => default.as_str(),
            _ => request.model.as_str(),
        };
        let span = tracing::info_span!(
            "chat",
            otel.name = %format_args!("chat {model}"),
            otel.kind = "client",
            otel.status_code = Empty,
            gen_ai.operation.name = "chat",
            gen_ai.system = self.system(),
            gen_ai.provider.name = self.system(),
            gen_ai.request.model = model,
            gen_ai.request.max_tokens = request.max_tokens,
            gen_ai.request.temperature = f64::from(request.temperature),
            gen_ai.response.model = Empty,
            gen_ai.response.finish_reasons = Empty,
            gen_ai.usage.input_tokens = Empty,
            gen_ai.usage.output_tokens = Empty,
            server.address = self.server_address(),
            error.type = Empty,
            cadre.llm.provider = %self.name,
            cadre.llm.continuations = Empty,
        );
        let result = self
            .guarded(request, model, sink)
            .instrument(span.clone())
            .await;
        match &result {
            Ok(completion) => {
                if let Some(answered) = &completion.response_model {
                    span.record("gen_ai.response.model", answered.as_str());
                }
                if let Some(reason) = &completion.finish_reason {
                    span.record("gen_ai.response.finish_reasons", reason.as_str());
                }
                span.record("gen_ai.usage.input_tokens", completion.usage.prompt);
                span.record("gen_ai.usage.output_tokens", completion.usage.completion);
                span.record("cadre.llm.continuations", completion.continuations);
            }
            Err(error) => {
                span.record("otel.status_code", "ERROR");
                span.record("error.type", error.error_type());
            }
        }
        result
    }

    /// `gen_ai.system`: what kind of server this is.
    fn system(&self) -> &'static str {
        match &self.backend {
            Backend::Offline(_) => "offline",
            Backend::OpenAi(client) if client.url().contains("://api.openai.com/") => "openai",
            Backend::OpenAi(_) => "openai_compatible",
            Backend::Anthropic(_) => "anthropic",
        }
    }

    fn server_address(&self) -> String {
        let url = match &self.backend {
            Backend::Offline(_) => return String::new(),
            Backend::OpenAi(client) => client.url(),
            Backend::Anthropic(client) => client.url(),
        };
        reqwest::Url::parse(url)
            .ok()
            .and_then(|url| url.host_str().map(str::to_owned))
            .unwrap_or_default()
    }

    fn url(&self) -> &str {
        match &self.backend {
            Backend::Offline(_) => "offline",
            Backend::OpenAi(client) => client.url(),
            Backend::Anthropic(client) => client.url(),
        }
    }

    fn error(&self, model: &str, kind: LlmErrorKind) -> LlmError {
        LlmError::new(kind, &self.name, model, self.url())
    }

    /// The concurrency limit and the circuit breaker around the conversation.
    async fn guarded(
        &self,
        request: &ChatRequest,
        model: &str,
        sink: Option<TextSink<'_>>,
    ) -> Result<Completion, LlmError> {
        if let Backend::Offline(offline) = &self.backend {
            let completion = offline
                .complete(request)
                .await
                .map_err(|kind| self.error(model, kind))?;
            if let Some(sink) = sink {
                sink(&completion.text);
            }
            return Ok(completion);
        }
        let circuit_open = |remaining| self.error(model, LlmErrorKind::CircuitOpen { remaining });
        // Fail fast without queueing for a permit while the circuit is open.
        if let Some(remaining) = self
            .breaker
            .as_ref()
            .and_then(|breaker| breaker.open_for(Instant::now()))
        {
            return Err(circuit_open(remaining));
        }
        // Waiting for a permit is no failure: the semaphore is never closed.
        let _permit = match &self.concurrency {
            Some(limit) => limit.acquire().await.ok(),
            None => None,
        };
        let pass = match &self.breaker {
            Some(breaker) => Some(breaker.admit(Instant::now()).map_err(circuit_open)?),
            None => None,
        };
        let result = self.converse(request, model, sink).await;
        if let Some(pass) = pass {
            let healthy = !matches!(&result, Err(error) if error.is_retryable());
            pass.settle(healthy, Instant::now());
        }
        result
    }

    /// One call, and its continuations while the answer is cut off at `max_tokens`.
    async fn converse(
        &self,
        request: &ChatRequest,
        model: &str,
        sink: Option<TextSink<'_>>,
    ) -> Result<Completion, LlmError> {
        let mut text = String::new();
        let mut usage = TokenUsage {
            prompt: 0,
            completion: 0,
            total: 0,
        };
        let mut continuations = 0;
        loop {
            let partial = (!text.is_empty()).then_some(text.as_str());
            let turn = Turn {
                request,
                model,
                partial,
                json_schema: request
                    .json_schema
                    .as_ref()
                    .filter(|_| self.json_schema && partial.is_none()),
                sink,
            };
            let answer = match &self.backend {
                Backend::OpenAi(client) => client.turn(&turn).await?,
                Backend::Anthropic(client) => client.turn(&turn).await?,
                Backend::Offline(_) => unreachable!("the offline provider answers in one go"),
            };
            let estimated_prompt = estimate_tokens(&request.system)
                .saturating_add(estimate_tokens(&request.user))
                .saturating_add(partial.map_or(0, estimate_tokens));
            let turn_usage = answer.usage.resolve(estimated_prompt, &answer.text);
            usage.prompt = usage.prompt.saturating_add(turn_usage.prompt);
            usage.completion = usage.completion.saturating_add(turn_usage.completion);
            usage.total = usage.total.saturating_add(turn_usage.total);
            if let (Some(sink), false) = (sink, answer.streamed) {
                sink(&answer.text);
            }
            text.push_str(&answer.text);
            match answer.stop {
                Stop::Refused(reason) => {
                    return Err(self.error(model, LlmErrorKind::Refused { reason }));
                }
                // Nothing to continue from (all of it went into reasoning, or a tool's input
                // that cannot be continued): more of the same would not help.
                Stop::MaxTokens
                    if continuations < self.max_continuations
                        && !strip_reasoning_for_check(&text).is_empty() =>
                {
                    continuations += 1;
                    tracing::info!(
                        continuations,
                        max_tokens = request.max_tokens,
                        "the answer was cut off at max_tokens; continuing it"
                    );
                }
                Stop::MaxTokens => {
                    return Err(self.error(
                        model,
                        LlmErrorKind::Truncated {
                            max_tokens: request.max_tokens,
                            continuations,
                        },
                    ));
                }
                Stop::Done => {
                    let text = wire::strip_reasoning(&text);
                    if text.trim().is_empty() {
                        return Err(self.error(model, LlmErrorKind::EmptyContent));
                    }
                    return Ok(Completion {
                        text,
                        usage,
                        finish_reason: answer.finish_reason,
                        response_model: answer.model,
                        continuations,
                    });
                }
            }
        }
    }
}

fn strip_reasoning_for_check(text: &str) -> String {
    wire::strip_reasoning(text).trim().to_owned()
}

fn configured_timeouts(http: &HttpProviderConfig) -> Timeouts {
    // Zero would end every call at once; read it as "the default".
    let secs =
        |value: u64, default: u64| Duration::from_secs(if value == 0 { default } else { value });
    Timeouts {
        total: secs(http.timeout_secs, 120),
        idle: secs(http.idle_timeout_secs, 60),
        connect: secs(http.connect_timeout_secs, 10),
    }
}

/// One call to a provider within a conversation.
pub(crate) struct Turn<'a> {
    pub request: &'a ChatRequest,
    pub model: &'a str,
    /// The answer so far, when this call continues a cut-off one.
    pub partial: Option<&'a str>,
    /// The schema to ask for JSON against (never on a continuation: it goes on with text).
    pub json_schema: Option<&'a Value>,
    pub sink: Option<TextSink<'a>>,
}

impl Turn<'_> {
    /// The conversation after the system prompt: the user's message, then (continuing) the
    /// partial answer and the request to go on.
    pub fn messages(&self) -> Vec<(&'static str, &str)> {
        let mut messages = vec![("user", self.request.user.as_str())];
        if let Some(partial) = self.partial {
            messages.push(("assistant", partial));
            messages.push(("user", CONTINUE_PROMPT));
        }
        messages
    }
}

/// Why the model stopped.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Stop {
    Done,
    MaxTokens,
    Refused(String),
}

/// What one call brought back.
#[derive(Debug)]
pub(crate) struct TurnAnswer {
    pub text: String,
    pub usage: ReportedUsage,
    pub finish_reason: Option<String>,
    pub stop: Stop,
    pub model: Option<String>,
    /// Whether the sink already saw the text, delta by delta.
    pub streamed: bool,
}

/// A rough token count (about four tokens for three English words), for answers that come
/// without the provider's own count.
pub fn estimate_tokens(text: &str) -> u32 {
    let words = u32::try_from(text.split_whitespace().count()).unwrap_or(u32::MAX);
    words.saturating_mul(4).div_ceil(3)
}

fn estimated_usage(request: &ChatRequest, answer: &str) -> TokenUsage {
    let prompt = estimate_tokens(&request.system).saturating_add(estimate_tokens(&request.user));
    let completion = estimate_tokens(answer);
    TokenUsage {
        prompt,
        completion,
        total: prompt.saturating_add(completion),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn sampling_defaults_follow_the_seed() {
        let agent = crate::fixtures::agent();
        let prompt = StepPrompt {
            system: "s".to_owned(),
            user: "u".to_owned(),
        };
        let request = ChatRequest::for_agent(&agent, prompt);
        assert_eq!((request.temperature, request.max_tokens), (0.5, 2000));
        assert_eq!(request.model, agent.model);
        assert_eq!(request.json_schema, None);
    }

    #[test]
    fn unknown_provider_is_permanent_and_names_what_is_offered() {
        let providers = Providers::from_config(&Config::default().providers).unwrap();
        assert!(providers.get("offline").is_ok());
        assert_eq!(providers.names().collect::<Vec<_>>(), ["offline"]);
        let Err(error) = providers.get("openai") else {
            panic!("openai is not configured by default");
        };
        assert!(!error.is_retryable());
        assert!(matches!(error.kind(), LlmErrorKind::UnknownProvider { .. }));
        assert!(error.to_string().contains("\"openai\""), "{error}");
        assert!(error.to_string().contains("offline"), "{error}");
    }

    #[test]
    fn unusable_provider_settings_stop_the_worker_at_startup() {
        let without_url = BTreeMap::from([(
            "openai".to_owned(),
            ProviderConfig::OpenAiCompatible(HttpProviderConfig::default()),
        )]);
        let Err(error) = Providers::from_config(&without_url) else {
            panic!("an OpenAI-compatible provider needs a base_url");
        };
        assert!(error.to_string().contains("base_url"), "{error}");

        let missing_key = BTreeMap::from([(
            "claude".to_owned(),
            ProviderConfig::Anthropic(HttpProviderConfig {
                api_key_env: Some("CADRE_TEST_NO_SUCH_KEY_VARIABLE".to_owned()),
                ..HttpProviderConfig::default()
            }),
        )]);
        let Err(error) = Providers::from_config(&missing_key) else {
            panic!("a missing key variable is a startup error");
        };
        assert!(error.to_string().contains("\"claude\""), "{error}");
        assert!(
            error
                .to_string()
                .contains("CADRE_TEST_NO_SUCH_KEY_VARIABLE"),
            "{error}"
        );

        let anthropic_default = BTreeMap::from([(
            "claude".to_owned(),
            ProviderConfig::Anthropic(HttpProviderConfig::default()),
        )]);
        let providers = Providers::from_config(&anthropic_default).unwrap();
        let claude = providers.get("claude").unwrap();
        assert_eq!(claude.url(), "https://api.anthropic.com/v1/messages");
        assert_eq!(claude.server_address(), "api.anthropic.com");
    }

    mod spans {
        use std::fmt;
        use std::sync::{Arc, Mutex};

        use serde_json::json;
        use tracing::field::{Field, Visit};
        use tracing::span::{Attributes, Id, Record};
        use tracing_subscriber::layer::{Context, Layer, SubscriberExt as _};

        use crate::llm::testing::{API_KEY, Fake, Reply, http_config, openai, request};

        type Fields = Arc<Mutex<Vec<(String, String)>>>;

        thread_local! {
            /// Where this thread's span fields go (none: dropped).
            static CAPTURED: std::cell::RefCell<Option<Fields>> = const { std::cell::RefCell::new(None) };
        }

        /// Captures span fields on threads that ask for them. A global subscriber rather than
        /// a scoped one: with a scoped one, other tests hitting the span's callsite at the same
        /// time on threads without a subscriber can leave its cached interest at "never".
        fn capture_on_this_thread() -> Fields {
            static INSTALL: std::sync::Once = std::sync::Once::new();
            INSTALL.call_once(|| {
                tracing::subscriber::set_global_default(
                    tracing_subscriber::registry().with(Capture),
                )
                .unwrap();
            });
            let fields = Fields::default();
            CAPTURED.with(|captured| *captured.borrow_mut() = Some(fields.clone()));
            fields
        }

        struct Capture;

        struct Visitor;

        impl Visitor {
            fn push(field: &Field, value: String) {
                CAPTURED.with(|captured| {
                    if let Some(fields) = &*captured.borrow() {
                        fields
                            .lock()
                            .unwrap()
                            .push((field.name().to_owned(), value));
                    }
                });
            }
        }

        impl Visit for Visitor {
            fn record_str(&mut self, field: &Field, value: &str) {
                Self::push(field, value.to_owned());
            }

            fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
                Self::push(field, format!("{value:?}"));
            }
        }

        impl<S: tracing::Subscriber> Layer<S> for Capture {
            fn on_new_span(&self, attributes: &Attributes<'_>, _: &Id, _: Context<'_, S>) {
                attributes.record(&mut Visitor);
            }

            fn on_record(&self, _: &Id, values: &Record<'_>, _: Context<'_, S>) {
                values.record(&mut Visitor);
            }
        }

        fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
            fields
                .iter()
                .rev()
                .find(|(field, _)| field == name)
                .map(|(_, value)| value.as_str())
        }

        #[tokio::test]
        async fn each_call_is_a_gen_ai_span_without_prompts_or_keys() {
            let fields = capture_on_this_thread();

            let answer = json!({
                "model": "gpt-test-2024",
                "choices": [{"index": 0, "message": {"content": "ok"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 11, "completion_tokens": 7}
            });
            let fake = Fake::start(
                "/chat/completions",
                vec![Reply::json(200, answer), Reply::raw(503, "down")],
            )
            .await;
            let provider = openai(http_config(&fake.base_url));
            provider.complete(&request()).await.unwrap();
            let ok = fields.lock().unwrap().clone();
            for (name, value) in [
                ("otel.name", "chat gpt-test"),
                ("gen_ai.operation.name", "chat"),
                ("gen_ai.system", "openai_compatible"),
                ("gen_ai.request.model", "gpt-test"),
                ("gen_ai.response.model", "gpt-test-2024"),
                ("gen_ai.response.finish_reasons", "stop"),
                ("gen_ai.usage.input_tokens", "11"),
                ("gen_ai.usage.output_tokens", "7"),
                ("server.address", "127.0.0.1"),
            ] {
                assert_eq!(field(&ok, name), Some(value), "{name} in {ok:?}");
            }
            assert_eq!(field(&ok, "error.type"), None);

            fields.lock().unwrap().clear();
            provider.complete(&request()).await.unwrap_err();
            let failed = fields.lock().unwrap().clone();
            assert_eq!(field(&failed, "error.type"), Some("503"));
            assert_eq!(field(&failed, "otel.status_code"), Some("ERROR"));

            for (name, value) in ok.iter().chain(&failed) {
                assert!(
                    !value.contains(API_KEY)
                        && !value.contains("You are Ada")
                        && !value.contains("Design the API"),
                    "{name} = {value}"
                );
            }
        }
    }
}
