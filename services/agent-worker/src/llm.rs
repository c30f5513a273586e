//! The LLM providers a worker can call, and how their failures are classified.
//!
//! A retryable failure (timeout, connection error, HTTP 408/429/5xx) is worth another delivery
//! of the step; a permanent one (any other 4xx, a malformed answer, an empty answer, a provider
//! name no worker knows) fails the step at once.

use std::collections::BTreeMap;
use std::time::Duration;

use cadre_proto::model::{AgentProfile, TokenUsage};
use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::config::ProviderConfig;
use crate::prompt::{self, PromptFacts, StepPrompt};

/// The seed's sampling defaults, for agents that set none.
const DEFAULT_TEMPERATURE: f32 = 0.5;
const DEFAULT_MAX_TOKENS: u32 = 2000;

/// How much of an error body goes into a step's error message.
const ERROR_BODY_LIMIT: usize = 500;

/// One chat completion: a system and a user message.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    pub model: String,
    pub system: String,
    pub user: String,
    pub temperature: f32,
    pub max_tokens: u32,
    /// A JSON Schema the answer should follow, where the provider supports structured output.
    pub json_schema: Option<serde_json::Value>,
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

#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub text: String,
    pub usage: TokenUsage,
}

#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    #[error("no LLM provider named {0:?} is configured on the agent workers")]
    UnknownProvider(String),
    #[error("calling the provider failed: {message}")]
    Transport { retryable: bool, message: String },
    #[error("the provider answered HTTP {status}: {body}")]
    Status {
        status: StatusCode,
        body: String,
        retry_after: Option<Duration>,
    },
    #[error("the provider's answer is malformed: {0}")]
    Malformed(String),
    #[error("the provider's answer has no content")]
    EmptyContent,
}

impl LlmError {
    /// When the provider asked to be called again (`Retry-After` in seconds).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Whether trying the same call again later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Transport { retryable, .. } => *retryable,
            Self::Status { status, .. } => {
                *status == StatusCode::TOO_MANY_REQUESTS
                    || *status == StatusCode::REQUEST_TIMEOUT
                    || status.is_server_error()
            }
            Self::UnknownProvider(_) | Self::Malformed(_) | Self::EmptyContent => false,
        }
    }

    fn transport(error: reqwest::Error) -> Self {
        // A request that could not be built or was redirected in circles fails the same way
        // every time; anything that went wrong on the wire may not.
        let retryable = !(error.is_builder() || error.is_redirect());
        Self::Transport {
            retryable,
            message: error_chain(&error),
        }
    }
}

/// An error and its causes, as one line: reqwest's own message hides the cause.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// The providers configured on this worker, by the name agents use.
pub struct Providers(BTreeMap<String, Provider>);

impl Providers {
    pub fn from_config(configs: &BTreeMap<String, ProviderConfig>) -> Result<Self, reqwest::Error> {
        configs
            .iter()
            .map(|(name, config)| Ok((name.clone(), Provider::from_config(config)?)))
            .collect::<Result<_, _>>()
            .map(Self)
    }

    /// The provider names this worker offers, in order.
    pub fn names(&self) -> Vec<String> {
        self.0.keys().cloned().collect()
    }

    pub fn get(&self, name: &str) -> Result<&Provider, LlmError> {
        self.0
            .get(name)
            .ok_or_else(|| LlmError::UnknownProvider(name.to_owned()))
    }
}

pub enum Provider {
    Offline(Offline),
    OpenAiCompatible(OpenAiCompatible),
}

impl Provider {
    pub fn from_config(config: &ProviderConfig) -> Result<Self, reqwest::Error> {
        Ok(match config {
            ProviderConfig::Offline { latency_ms } => Self::Offline(Offline {
                latency: Duration::from_millis(*latency_ms),
            }),
            ProviderConfig::OpenAiCompatible {
                base_url,
                api_key,
                timeout_secs,
            } => Self::OpenAiCompatible(OpenAiCompatible::new(
                base_url,
                api_key.clone(),
                Duration::from_secs(*timeout_secs),
            )?),
        })
    }

    pub async fn complete(&self, request: &ChatRequest) -> Result<Completion, LlmError> {
        match self {
            Self::Offline(offline) => Ok(offline.complete(request).await),
            Self::OpenAiCompatible(client) => client.complete(request).await,
        }
    }
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

/// Answers without a model: the same prompt always gets the same answer, in the seed's
/// sections, built from what the prompt says (step name, expected output, how much team
/// knowledge it carries). Its summary says where it came from, so nobody mistakes it for work.
pub struct Offline {
    latency: Duration,
}

impl Offline {
    async fn complete(&self, request: &ChatRequest) -> Completion {
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        let text = offline_answer(&prompt::read_prompt(&request.system, &request.user));
        Completion {
            usage: estimated_usage(request, &text),
            text,
        }
    }
}

fn offline_answer(facts: &PromptFacts) -> String {
    let PromptFacts {
        step_name: step,
        expected_output: expected,
        knowledge_items: known,
        review,
    } = facts;
    if *review {
        return format!(
            "## Verdict
APPROVED

## Feedback
[offline provider] Reviewed \"{step}\" without a language model: the work is approved as it \
stands against the expected output (\"{expected}\"); a person should review it before relying on it.
"
        );
    }
    format!(
        "## Summary
[offline provider] Completed \"{step}\" without a language model, with {known} item(s) of team knowledge in context.

## Output
Outline for \"{step}\":
1. Deliver what is expected: {expected}
2. Build on the {known} item(s) of knowledge the team has shared so far.
3. Hand the result to the steps that depend on this one.

## Insights
- {step}: the expected output (\"{expected}\") is the acceptance criterion of this step.
- {step}: {known} item(s) of team knowledge were available when it ran.

## Decisions
- {step}: proceed with the outline above.

## Questions/Concerns
- {step}: this answer was produced by the offline provider; should a person review it before relying on it?
"
    )
}

/// A client of OpenAI's chat completions API, or of any server that speaks it.
pub struct OpenAiCompatible {
    http: reqwest::Client,
    completions_url: String,
    api_key: Option<SecretString>,
}

#[derive(Serialize)]
struct ChatBody<'a> {
    model: &'a str,
    messages: [Message<'a>; 2],
    temperature: f32,
    max_tokens: u32,
}

#[derive(Serialize)]
struct Message<'a> {
    role: &'static str,
    content: &'a str,
}

#[derive(Deserialize)]
struct ChatResponse {
    choices: Vec<Choice>,
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct Choice {
    message: AnswerMessage,
}

#[derive(Deserialize)]
struct AnswerMessage {
    content: Option<String>,
}

#[derive(Deserialize)]
struct Usage {
    prompt_tokens: u32,
    completion_tokens: u32,
    total_tokens: u32,
}

impl OpenAiCompatible {
    pub fn new(
        base_url: &str,
        api_key: Option<SecretString>,
        timeout: Duration,
    ) -> Result<Self, reqwest::Error> {
        Ok(Self {
            http: reqwest::Client::builder().timeout(timeout).build()?,
            completions_url: format!("{}/chat/completions", base_url.trim_end_matches('/')),
            api_key,
        })
    }

    pub async fn complete(&self, request: &ChatRequest) -> Result<Completion, LlmError> {
        let body = ChatBody {
            model: &request.model,
            messages: [
                Message {
                    role: "system",
                    content: &request.system,
                },
                Message {
                    role: "user",
                    content: &request.user,
                },
            ],
            temperature: request.temperature,
            max_tokens: request.max_tokens,
        };
        let mut call = self.http.post(&self.completions_url).json(&body);
        if let Some(key) = &self.api_key {
            call = call.bearer_auth(key.expose_secret());
        }
        let response = call.send().await.map_err(LlmError::transport)?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok()?.trim().parse().ok())
            .map(Duration::from_secs);
        let bytes = response.bytes().await.map_err(LlmError::transport)?;
        if !status.is_success() {
            return Err(LlmError::Status {
                status,
                body: truncated(&String::from_utf8_lossy(&bytes)),
                retry_after,
            });
        }
        let answer: ChatResponse = serde_json::from_slice(&bytes).map_err(|error| {
            LlmError::Malformed(format!(
                "{error} in {}",
                truncated(&String::from_utf8_lossy(&bytes))
            ))
        })?;
        let text = answer
            .choices
            .into_iter()
            .next()
            .ok_or_else(|| LlmError::Malformed("no choices".to_owned()))?
            .message
            .content
            .filter(|text| !text.trim().is_empty())
            .ok_or(LlmError::EmptyContent)?;
        let usage = match answer.usage {
            Some(usage) => TokenUsage {
                prompt: usage.prompt_tokens,
                completion: usage.completion_tokens,
                total: usage.total_tokens,
            },
            None => estimated_usage(request, &text),
        };
        Ok(Completion { text, usage })
    }
}

fn truncated(text: &str) -> String {
    match text.char_indices().nth(ERROR_BODY_LIMIT) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use axum::Router;
    use axum::http::{HeaderMap, StatusCode as AxumStatus};
    use axum::routing::post;

    use super::*;
    use crate::prompt::parse_step_result;

    fn request() -> ChatRequest {
        ChatRequest {
            model: "gpt-test".to_owned(),
            system: "You are Ada.\n\nRelevant Team Knowledge:\n- A (insight): x\n  more\n- B (decision): y\n"
                .to_owned(),
            user: "Step: Design the API\n\nDescription: d\n\nInstructions: i\n\n\
                   Expected Output: An endpoint table\n\n\
                   Please complete this step thoroughly and provide the structured response format requested."
                .to_owned(),
            temperature: 0.2,
            max_tokens: 300,
            json_schema: None,
        }
    }

    /// Serves `router` on a free local port and returns the base URL a provider is given.
    async fn serve(router: Router) -> String {
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await });
        format!("http://{addr}/v1/")
    }

    fn client(base_url: &str) -> OpenAiCompatible {
        OpenAiCompatible::new(
            base_url,
            Some(SecretString::from("sk-test")),
            Duration::from_secs(5),
        )
        .unwrap()
    }

    async fn answering(status: u16, body: &'static str) -> Result<Completion, LlmError> {
        let router = Router::new().route(
            "/v1/chat/completions",
            post(move || async move { (AxumStatus::from_u16(status).unwrap(), body) }),
        );
        client(&serve(router).await).complete(&request()).await
    }

    #[tokio::test]
    async fn openai_success_sends_the_chat_and_reads_content_and_usage() {
        let router = Router::new().route(
            "/v1/chat/completions",
            post(|headers: HeaderMap, body: String| async move {
                let body: serde_json::Value = serde_json::from_str(&body).unwrap();
                assert_eq!(headers["authorization"], "Bearer sk-test");
                assert_eq!(body["model"], "gpt-test");
                assert_eq!(body["messages"][0]["role"], "system");
                assert_eq!(body["messages"][0]["content"], request().system);
                assert_eq!(body["messages"][1]["role"], "user");
                assert_eq!(body["messages"][1]["content"], request().user);
                assert_eq!(body["max_tokens"], 300);
                assert!((body["temperature"].as_f64().unwrap() - 0.2).abs() < 1e-6);
                axum::Json(serde_json::json!({
                    "id": "chatcmpl-1",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "## Summary\nDone"}}],
                    "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
                }))
            }),
        );
        let completion = client(&serve(router).await)
            .complete(&request())
            .await
            .unwrap();
        assert_eq!(completion.text, "## Summary\nDone");
        assert_eq!(
            completion.usage,
            TokenUsage {
                prompt: 11,
                completion: 7,
                total: 18
            }
        );
    }

    #[tokio::test]
    async fn openai_errors_are_classified() {
        let limited = answering(429, r#"{"error":{"message":"rate limited"}}"#)
            .await
            .unwrap_err();
        assert!(limited.is_retryable(), "{limited}");
        assert!(
            limited.to_string().contains("429") && limited.to_string().contains("rate limited")
        );

        let unavailable = answering(503, "overloaded").await.unwrap_err();
        assert!(unavailable.is_retryable(), "{unavailable}");

        let bad = answering(400, r#"{"error":{"message":"unknown model"}}"#)
            .await
            .unwrap_err();
        assert!(!bad.is_retryable(), "{bad}");
        assert!(bad.to_string().contains("unknown model"));

        let malformed = answering(200, "<html>not json</html>").await.unwrap_err();
        assert!(matches!(malformed, LlmError::Malformed(_)), "{malformed}");
        assert!(!malformed.is_retryable());

        let no_choices = answering(200, r#"{"choices":[]}"#).await.unwrap_err();
        assert!(matches!(no_choices, LlmError::Malformed(_)), "{no_choices}");

        let empty = answering(200, r#"{"choices":[{"message":{"content":"  "}}]}"#)
            .await
            .unwrap_err();
        assert!(matches!(empty, LlmError::EmptyContent));
        assert!(!empty.is_retryable());
    }

    #[tokio::test]
    async fn openai_unreachable_and_slow_servers_are_retryable() {
        // A port that was just free: nothing listens there any more.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let refused = client(&format!("http://{addr}/v1"))
            .complete(&request())
            .await
            .unwrap_err();
        assert!(refused.is_retryable(), "{refused}");

        let router = Router::new().route(
            "/v1/chat/completions",
            post(|| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                "late"
            }),
        );
        let slow = OpenAiCompatible::new(&serve(router).await, None, Duration::from_millis(100))
            .unwrap()
            .complete(&request())
            .await
            .unwrap_err();
        assert!(slow.is_retryable(), "{slow}");
    }

    #[tokio::test]
    async fn openai_answer_without_usage_gets_an_estimate() {
        let completion = answering(
            200,
            r#"{"choices":[{"message":{"content":"one two three"}}]}"#,
        )
        .await
        .unwrap();
        assert_eq!(completion.usage.completion, 4);
        assert_eq!(
            completion.usage.total,
            completion.usage.prompt + completion.usage.completion
        );
    }

    #[tokio::test]
    async fn unknown_provider_is_permanent() {
        let providers =
            Providers::from_config(&crate::config::Config::default().providers).unwrap();
        assert!(providers.get("offline").is_ok());
        let Err(error) = providers.get("openai") else {
            panic!("openai is not configured by default");
        };
        assert!(!error.is_retryable());
        assert!(error.to_string().contains("\"openai\""));
    }

    #[tokio::test]
    async fn offline_is_deterministic_labelled_and_in_the_seed_sections() {
        let offline = Provider::Offline(Offline {
            latency: Duration::ZERO,
        });
        let first = offline.complete(&request()).await.unwrap();
        let second = offline.complete(&request()).await.unwrap();
        assert_eq!(first, second);
        assert!(first.usage.prompt > 0 && first.usage.completion > 0);
        assert_eq!(
            first.usage.total,
            first.usage.prompt + first.usage.completion
        );

        let result = parse_step_result("Design the API", &first.text, first.usage);
        assert!(
            result.summary.starts_with("[offline provider]"),
            "{}",
            result.summary
        );
        assert!(result.summary.contains("2 item(s)"), "{}", result.summary);
        assert!(result.output.contains("An endpoint table"));
        assert_eq!(result.insights.len(), 2);
        assert!(result.insights[0].contains("Design the API"));
        assert_eq!(result.decisions.len(), 1);
        assert_eq!(result.questions.len(), 1);

        // More knowledge in the prompt changes the answer.
        let mut richer = request();
        richer.system.push_str("- C (insight): z\n");
        let third = offline.complete(&richer).await.unwrap();
        assert!(third.text.contains("3 item(s)"));
    }

    #[tokio::test]
    async fn offline_latency_is_simulated() {
        let offline = Offline {
            latency: Duration::from_millis(50),
        };
        let started = std::time::Instant::now();
        offline.complete(&request()).await;
        assert!(started.elapsed() >= Duration::from_millis(50));
    }

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
    }
}
