//! A client of Anthropic's Messages API.
//!
//! JSON against a schema is asked for with a forced tool (`tool_choice` names it) whose
//! `input_schema` is the schema; the tool's input is the answer, as JSON text. Anthropic takes
//! only object schemas there, so other schemas are not sent (the prompt has to ask). A tool
//! input cut off at `max_tokens` cannot be continued: that call fails naming `max_tokens`.

use reqwest::Client;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use super::http::{self, Call};
use super::wire::{ErrorBody, ReportedUsage, SseEvent, parse_json};
use super::{LlmError, LlmErrorKind, Stop, TextSink, Turn, TurnAnswer};

const DEFAULT_BASE_URL: &str = "https://api.anthropic.com/v1";
const API_VERSION: &str = "2023-06-01";
/// The forced tool that carries a JSON answer.
const ANSWER_TOOL: &str = "answer";

pub(crate) struct Anthropic {
    provider: String,
    http: Client,
    url: String,
    api_key: Option<SecretString>,
    stream: bool,
}

impl Anthropic {
    pub fn new(
        provider: &str,
        http: Client,
        base_url: &str,
        api_key: Option<SecretString>,
        stream: bool,
    ) -> Self {
        let base_url = match base_url.trim() {
            "" => DEFAULT_BASE_URL,
            given => given,
        };
        Self {
            provider: provider.to_owned(),
            http,
            url: format!("{}/messages", base_url.trim_end_matches('/')),
            api_key,
            stream,
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn body(&self, turn: &Turn<'_>) -> Value {
        let request = turn.request;
        let messages: Vec<Value> = turn
            .messages()
            .into_iter()
            .map(|(role, content)| json!({"role": role, "content": content}))
            .collect();
        let mut body = json!({
            "model": turn.model,
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "messages": messages,
        });
        if !request.system.is_empty() {
            body["system"] = json!(request.system);
        }
        if let Some(schema) = turn.json_schema.filter(|schema| schema["type"] == "object") {
            body["tools"] = json!([{
                "name": ANSWER_TOOL,
                "description": "Give the answer as JSON matching the schema.",
                "input_schema": schema,
            }]);
            body["tool_choice"] = json!({"type": "tool", "name": ANSWER_TOOL});
        }
        if self.stream {
            body["stream"] = json!(true);
        }
        body
    }

    pub async fn turn(&self, turn: &Turn<'_>) -> Result<TurnAnswer, LlmError> {
        let call = Call {
            provider: &self.provider,
            model: turn.model,
            url: &self.url,
            api_key: self.api_key.as_ref(),
        };
        let mut builder = self
            .http
            .post(&self.url)
            .header("anthropic-version", API_VERSION)
            .json(&self.body(turn));
        if let Some(key) = &self.api_key {
            builder = builder.header("x-api-key", key.expose_secret());
        }
        http::exchange::<Streamed>(&call, builder, turn.sink, read_answer).await
    }
}

fn is_error(value: &Value) -> bool {
    value["type"] == "error" || value["error"].is_object()
}

fn stop(stop_reason: Option<&str>) -> Stop {
    match stop_reason {
        Some("max_tokens" | "model_context_window_exceeded") => Stop::MaxTokens,
        Some("refusal") => Stop::Refused("refusal: the model declined to answer".to_owned()),
        _ => Stop::Done,
    }
}

/// The answer's text: the forced tool's input where there is one (text blocks beside it are
/// preamble), else the text blocks; `thinking` and other blocks are not the answer.
fn answer_text(texts: String, tool_input: Option<String>, stop: &Stop) -> String {
    match tool_input {
        // A cut-off tool input is not JSON yet, and cannot be continued.
        Some(_) if *stop == Stop::MaxTokens => String::new(),
        Some(input) => input,
        None => texts,
    }
}

fn read_answer(call: &Call<'_>, answer: &Value) -> Result<TurnAnswer, LlmError> {
    if is_error(answer) {
        return Err(call.api(200, &ErrorBody::from_json(answer)));
    }
    let Some(blocks) = answer["content"].as_array() else {
        return Err(call.malformed(format!(
            "no content blocks in {}",
            super::wire::truncated(&answer.to_string())
        )));
    };
    let mut texts = String::new();
    let mut tool_input = None;
    for block in blocks {
        match block["type"].as_str() {
            Some("text") => texts.push_str(block["text"].as_str().unwrap_or_default()),
            Some("tool_use") => tool_input = Some(block["input"].to_string()),
            _ => {}
        }
    }
    let stop_reason = answer["stop_reason"].as_str().map(str::to_owned);
    let stop = stop(stop_reason.as_deref());
    Ok(TurnAnswer {
        text: answer_text(texts, tool_input, &stop),
        stop,
        usage: ReportedUsage::from_anthropic(&answer["usage"]),
        finish_reason: stop_reason,
        model: answer["model"].as_str().map(str::to_owned),
        streamed: false,
    })
}

/// A streamed answer, assembled from its events.
#[derive(Default)]
struct Streamed {
    text: String,
    tool_input: Option<String>,
    stop_reason: Option<String>,
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
        let Ok(data) = parse_json(event.data.trim()) else {
            tracing::debug!(
                data = event.data,
                "skipping a stream event that is not JSON"
            );
            return Ok(false);
        };
        if is_error(&data) {
            return Err(call.api(200, &ErrorBody::from_json(&data)));
        }
        let kind = data["type"].as_str().or(event.event.as_deref());
        match kind {
            Some("message_start") => {
                let message = &data["message"];
                self.model = message["model"].as_str().map(str::to_owned);
                self.usage
                    .update(ReportedUsage::from_anthropic(&message["usage"]));
            }
            Some("content_block_start") => {
                let block = &data["content_block"];
                match block["type"].as_str() {
                    Some("text") => self.push_text(block["text"].as_str(), sink),
                    Some("tool_use") => self.tool_input = Some(String::new()),
                    _ => {}
                }
            }
            Some("content_block_delta") => {
                let delta = &data["delta"];
                match delta["type"].as_str() {
                    Some("text_delta") => self.push_text(delta["text"].as_str(), sink),
                    Some("input_json_delta") => {
                        if let (Some(input), Some(partial)) =
                            (&mut self.tool_input, delta["partial_json"].as_str())
                        {
                            input.push_str(partial);
                        }
                    }
                    _ => {}
                }
            }
            Some("message_delta") => {
                if let Some(reason) = data["delta"]["stop_reason"].as_str() {
                    self.stop_reason = Some(reason.to_owned());
                }
                self.usage
                    .update(ReportedUsage::from_anthropic(&data["usage"]));
            }
            Some("message_stop") => {
                self.done = true;
                return Ok(true);
            }
            _ => {}
        }
        Ok(false)
    }

    fn finish(self, call: &Call<'_>) -> Result<TurnAnswer, LlmError> {
        if !self.done && self.stop_reason.is_none() {
            return Err(call.error(LlmErrorKind::Transport {
                retryable: true,
                message: "the answer's stream ended before the answer did".to_owned(),
            }));
        }
        let stop = stop(self.stop_reason.as_deref());
        // An empty streamed tool input is an empty object.
        let tool_input = self.tool_input.map(|input| {
            if input.trim().is_empty() {
                "{}".to_owned()
            } else {
                input
            }
        });
        Ok(TurnAnswer {
            text: answer_text(self.text, tool_input, &stop),
            stop,
            usage: self.usage,
            finish_reason: self.stop_reason,
            model: self.model,
            streamed: true,
        })
    }
}

impl Streamed {
    fn push_text(&mut self, piece: Option<&str>, sink: Option<TextSink<'_>>) {
        let Some(piece) = piece.filter(|piece| !piece.is_empty()) else {
            return;
        };
        if let Some(sink) = sink {
            sink(piece);
        }
        self.text.push_str(piece);
    }
}

#[cfg(test)]
mod tests;
