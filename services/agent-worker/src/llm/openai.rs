//! A client of OpenAI's chat completions API, or of any server that speaks it (OpenAI,
//! DeepSeek, vLLM, Ollama, llama.cpp's server, gateways).

use std::sync::atomic::{AtomicBool, Ordering};

use reqwest::Client;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use super::http::{self, Call};
use super::wire::{ErrorBody, ReportedUsage, SseEvent, content_text, parse_json};
use super::{LlmError, LlmErrorKind, Stop, TextSink, Turn, TurnAnswer};

pub(crate) struct OpenAiCompatible {
    provider: String,
    http: Client,
    url: String,
    api_key: Option<SecretString>,
    stream: bool,
    /// Set once the server refused `response_format`: it is not sent again.
    json_schema_refused: AtomicBool,
}

impl OpenAiCompatible {
    pub fn new(
        provider: &str,
        http: Client,
        base_url: &str,
        api_key: Option<SecretString>,
        stream: bool,
    ) -> Self {
        Self {
            provider: provider.to_owned(),
            http,
            url: format!("{}/chat/completions", base_url.trim().trim_end_matches('/')),
            api_key,
            stream,
            json_schema_refused: AtomicBool::new(false),
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub async fn turn(&self, turn: &Turn<'_>) -> Result<TurnAnswer, LlmError> {
        let schema = turn
            .json_schema
            .filter(|_| !self.json_schema_refused.load(Ordering::Relaxed));
        match self.exchange(turn, schema).await {
            Err(error) if schema.is_some() && refuses_json_schema(&error) => {
                self.json_schema_refused.store(true, Ordering::Relaxed);
                tracing::warn!(
                    provider = self.provider,
                    %error,
                    "the server does not take response_format json_schema; asking without it from now on"
                );
                self.exchange(turn, None).await
            }
            answered => answered,
        }
    }

    fn body(&self, turn: &Turn<'_>, schema: Option<&Value>) -> Value {
        let request = turn.request;
        let mut messages = Vec::new();
        if !request.system.is_empty() {
            messages.push(json!({"role": "system", "content": request.system}));
        }
        for (role, content) in turn.messages() {
            messages.push(json!({"role": role, "content": content}));
        }
        let mut body = json!({
            "model": turn.model,
            "messages": messages,
            "temperature": request.temperature,
            "max_tokens": request.max_tokens,
        });
        if let Some(schema) = schema {
            body["response_format"] = json!({
                "type": "json_schema",
                "json_schema": {"name": "answer", "schema": schema, "strict": false},
            });
        }
        if self.stream {
            body["stream"] = json!(true);
            body["stream_options"] = json!({"include_usage": true});
        }
        body
    }

    async fn exchange(
        &self,
        turn: &Turn<'_>,
        schema: Option<&Value>,
    ) -> Result<TurnAnswer, LlmError> {
        let call = Call {
            provider: &self.provider,
            model: turn.model,
            url: &self.url,
            api_key: self.api_key.as_ref(),
        };
        let mut builder = self.http.post(&self.url).json(&self.body(turn, schema));
        if let Some(key) = &self.api_key {
            builder = builder.bearer_auth(key.expose_secret());
        }
        http::exchange::<Streamed>(&call, builder, turn.sink, read_answer).await
    }
}

/// A refusal of the schema: an error that names `response_format`, the schema, or the grammar
/// a server builds from it (llama.cpp: "failed to parse grammar", "JSON schema conversion
/// failed"; vLLM: "not supported by xgrammar"). Servers say so with 400 or 422 (OpenAI, vLLM,
/// Ollama) and some with 500 (llama-cpp-python answers every request it cannot validate with
/// `internal_server_error`, llama.cpp a grammar it cannot build): any 4xx or 5xx that names
/// them, since a retry of the same request would be refused the same way.
fn refuses_json_schema(error: &LlmError) -> bool {
    match error.kind() {
        LlmErrorKind::Api {
            status: 400..=599,
            code,
            message,
            ..
        } => [Some(message.as_str()), code.as_deref()]
            .into_iter()
            .flatten()
            .any(|text| {
                let text = text.to_ascii_lowercase();
                ["response_format", "json_schema", "json schema", "grammar"]
                    .iter()
                    .any(|name| text.contains(name))
            }),
        _ => false,
    }
}

/// The first choice (the one with index 0, else the first listed).
fn first_choice(answer: &Value) -> Option<&Value> {
    let choices = answer["choices"].as_array()?;
    choices
        .iter()
        .find(|choice| choice["index"].as_u64() == Some(0))
        .or_else(|| choices.first())
}

fn stop(finish_reason: Option<&str>, refusal: Option<String>) -> Stop {
    if let Some(refusal) = refusal.filter(|refusal| !refusal.trim().is_empty()) {
        return Stop::Refused(refusal);
    }
    match finish_reason {
        Some("length" | "max_tokens") => Stop::MaxTokens,
        Some("content_filter") => Stop::Refused(
            "content_filter: the provider's content filter stopped the answer".to_owned(),
        ),
        _ => Stop::Done,
    }
}

/// A whole (not streamed) answer.
fn read_answer(call: &Call<'_>, answer: &Value) -> Result<TurnAnswer, LlmError> {
    if !answer["error"].is_null() && !answer["choices"].is_array() {
        return Err(call.api(200, &ErrorBody::from_json(answer)));
    }
    let Some(choice) = first_choice(answer) else {
        return Err(call.malformed(format!(
            "no choices in {}",
            super::wire::truncated(&answer.to_string())
        )));
    };
    let message = &choice["message"];
    // The answer is `content` (a string or parts); `reasoning_content` and `reasoning` beside
    // it are not. Legacy completions put it in `text`; a server that answered with a tool call
    // (no tools were offered, so JSON mode) in its arguments.
    let text = content_text(&message["content"])
        .filter(|text| !text.trim().is_empty())
        .or_else(|| choice["text"].as_str().map(str::to_owned))
        .or_else(|| {
            message["tool_calls"][0]["function"]["arguments"]
                .as_str()
                .map(str::to_owned)
        })
        .unwrap_or_default();
    let finish_reason = choice["finish_reason"].as_str().map(str::to_owned);
    Ok(TurnAnswer {
        stop: stop(
            finish_reason.as_deref(),
            message["refusal"].as_str().map(str::to_owned),
        ),
        text,
        usage: ReportedUsage::from_openai(&answer["usage"]),
        finish_reason,
        model: answer["model"].as_str().map(str::to_owned),
        streamed: false,
    })
}

/// A streamed answer, assembled from its chunks.
#[derive(Default)]
struct Streamed {
    text: String,
    tool_arguments: String,
    refusal: String,
    finish_reason: Option<String>,
    usage: ReportedUsage,
    model: Option<String>,
    done: bool,
}

impl http::AnswerStream for Streamed {
    fn on_event(
        &mut self,
        call: &Call<'_>,
        event: &SseEvent,
        sink: Option<TextSink<'_>>,
    ) -> Result<bool, LlmError> {
        let data = event.data.trim();
        if data == "[DONE]" {
            self.done = true;
            return Ok(true);
        }
        let Ok(chunk) = parse_json(data) else {
            tracing::debug!(data, "skipping a stream event that is not JSON");
            return Ok(false);
        };
        if !chunk["error"].is_null() {
            return Err(call.api(200, &ErrorBody::from_json(&chunk)));
        }
        if let Some(model) = chunk["model"].as_str() {
            self.model = Some(model.to_owned());
        }
        if chunk["usage"].is_object() {
            self.usage
                .update(ReportedUsage::from_openai(&chunk["usage"]));
        }
        let Some(choice) = first_choice(&chunk) else {
            return Ok(false);
        };
        let delta = if choice["delta"].is_object() {
            &choice["delta"]
        } else {
            &choice["message"]
        };
        if let Some(piece) = content_text(&delta["content"])
            .or_else(|| choice["text"].as_str().map(str::to_owned))
            .filter(|piece| !piece.is_empty())
        {
            if let Some(sink) = sink {
                sink(&piece);
            }
            self.text.push_str(&piece);
        }
        if let Some(refusal) = delta["refusal"].as_str() {
            self.refusal.push_str(refusal);
        }
        if let Some(arguments) = delta["tool_calls"][0]["function"]["arguments"].as_str() {
            self.tool_arguments.push_str(arguments);
        }
        if let Some(reason) = choice["finish_reason"].as_str() {
            self.finish_reason = Some(reason.to_owned());
        }
        Ok(false)
    }

    fn finish(self, call: &Call<'_>) -> Result<TurnAnswer, LlmError> {
        if !self.done && self.finish_reason.is_none() {
            return Err(call.error(LlmErrorKind::Transport {
                retryable: true,
                message: "the answer's stream ended before the answer did".to_owned(),
            }));
        }
        let text = if self.text.trim().is_empty() {
            self.tool_arguments
        } else {
            self.text
        };
        Ok(TurnAnswer {
            stop: stop(self.finish_reason.as_deref(), Some(self.refusal)),
            text,
            usage: self.usage,
            finish_reason: self.finish_reason,
            model: self.model,
            streamed: true,
        })
    }
}

#[cfg(test)]
mod tests;
