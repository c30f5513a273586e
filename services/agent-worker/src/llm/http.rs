//! The HTTP exchange both protocols share: timeouts, error statuses, and reading a success
//! body that may be JSON or server-sent events whatever its `Content-Type` says.

use std::time::{Duration, SystemTime};

use reqwest::{Client, RequestBuilder, Response};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use super::error::{self, LlmError, LlmErrorKind};
use super::wire::{self, ErrorBody, SseEvent, SseParser};
use super::{TextSink, TurnAnswer};

#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeouts {
    /// The whole call, answer included.
    pub total: Duration,
    /// No bytes for this long ends the call.
    pub idle: Duration,
    pub connect: Duration,
}

pub(crate) fn client(timeouts: Timeouts) -> reqwest::Result<Client> {
    Client::builder()
        .timeout(timeouts.total)
        .read_timeout(timeouts.idle)
        .connect_timeout(timeouts.connect)
        .build()
}

/// Where a call goes, for its errors.
pub(crate) struct Call<'a> {
    pub provider: &'a str,
    pub model: &'a str,
    pub url: &'a str,
    /// The call's API key: taken out of whatever the server said (some servers echo a key
    /// they refuse), so an error can be logged, recorded and published.
    pub api_key: Option<&'a SecretString>,
}

impl Call<'_> {
    pub fn error(&self, kind: LlmErrorKind) -> LlmError {
        let kind = match self.api_key {
            Some(key) => kind.redacted(key.expose_secret()),
            None => kind,
        };
        LlmError::new(kind, self.provider, self.model, self.url)
    }

    pub fn transport(&self, error: &reqwest::Error) -> LlmError {
        let message = error_chain(error);
        if error.is_timeout() {
            return self.error(LlmErrorKind::Timeout { message });
        }
        // A request that could not be built or was redirected in circles fails the same way
        // every time; anything that went wrong on the wire may not.
        let retryable = !(error.is_builder() || error.is_redirect());
        self.error(LlmErrorKind::Transport { retryable, message })
    }

    /// An error the server answered, classified by its status and its code.
    pub fn api(&self, status: u16, body: &ErrorBody) -> LlmError {
        let status = match (status, body.status) {
            (200, Some(named)) => named,
            _ => status,
        };
        let retryable =
            error::is_retryable_api_error(status, body.code.as_deref(), body.kind.as_deref());
        self.error(LlmErrorKind::Api {
            status,
            code: body.code.clone().or_else(|| body.kind.clone()),
            message: body.message.clone(),
            retryable,
        })
    }

    pub fn malformed(&self, detail: impl Into<String>) -> LlmError {
        self.error(LlmErrorKind::Malformed(detail.into()))
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

/// Sends the request; an error status comes back as an [`LlmError`] with the server's
/// `retry_after` hint.
pub(crate) async fn send(call: &Call<'_>, request: RequestBuilder) -> Result<Response, LlmError> {
    let response = request
        .send()
        .await
        .map_err(|error| call.transport(&error))?;
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let retry_after = error::retry_after(response.headers(), SystemTime::now());
    let body = match response.bytes().await {
        Ok(bytes) => ErrorBody::from_text(&wire::body_text(&bytes)),
        Err(error) => ErrorBody {
            message: format!("(the error body could not be read: {error})"),
            ..ErrorBody::default()
        },
    };
    Err(call
        .api(status.as_u16(), &body)
        .with_retry_after(retry_after))
}

enum Mode {
    Undecided,
    Json,
    Events(SseParser),
}

/// Reads a success body. JSON comes back whole; server-sent events are handed to `on_event`
/// as they arrive (which returns true at the protocol's end marker) and `None` comes back.
pub(crate) async fn read(
    call: &Call<'_>,
    mut response: Response,
    on_event: &mut (dyn FnMut(&SseEvent) -> Result<bool, LlmError> + Send),
) -> Result<Option<Value>, LlmError> {
    let mut head = Vec::new();
    let mut mode = Mode::Undecided;
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|error| call.transport(&error))?
    {
        if let Mode::Events(parser) = &mut mode {
            for event in parser.push(&chunk) {
                if on_event(&event)? {
                    return Ok(None);
                }
            }
            continue;
        }
        head.extend_from_slice(&chunk);
        if matches!(mode, Mode::Json) {
            continue;
        }
        let start = head.trim_ascii_start();
        let prefixes: [&[u8]; 3] = [b"data:", b"event:", b":"];
        if prefixes.iter().any(|prefix| start.starts_with(prefix)) {
            let mut parser = SseParser::default();
            for event in parser.push(&head) {
                if on_event(&event)? {
                    return Ok(None);
                }
            }
            mode = Mode::Events(parser);
        } else if !start.is_empty() && !prefixes.iter().any(|prefix| prefix.starts_with(start)) {
            mode = Mode::Json;
        }
    }
    if let Mode::Events(mut parser) = mode {
        for event in parser.finish() {
            if on_event(&event)? {
                break;
            }
        }
        return Ok(None);
    }
    let text = wire::body_text(&head);
    if wire::looks_like_sse(&text) {
        let mut parser = SseParser::default();
        let mut events = parser.push(text.as_bytes());
        events.extend(parser.finish());
        for event in &events {
            if on_event(event)? {
                break;
            }
        }
        return Ok(None);
    }
    wire::parse_json(&text).map(Some).map_err(|error| {
        call.malformed(format!(
            "{error}, in {}",
            ErrorBody::from_text(&text).message
        ))
    })
}

/// What differs between chat APIs in reading a streamed answer: their events.
pub(crate) trait AnswerStream: Default + Send {
    /// Takes one event (handing text to `sink` as it comes); `Ok(true)` when the answer ended.
    fn on_event(
        &mut self,
        call: &Call<'_>,
        event: &SseEvent,
        sink: Option<TextSink<'_>>,
    ) -> Result<bool, LlmError>;

    /// The answer the events made.
    fn finish(self, call: &Call<'_>) -> Result<TurnAnswer, LlmError>;
}

/// Sends the request and reads its answer, whole (`read_answer`) or as events (`S`), whichever
/// the server sent.
pub(crate) async fn exchange<S: AnswerStream>(
    call: &Call<'_>,
    builder: RequestBuilder,
    sink: Option<TextSink<'_>>,
    read_answer: fn(&Call<'_>, &Value) -> Result<TurnAnswer, LlmError>,
) -> Result<TurnAnswer, LlmError> {
    let response = send(call, builder).await?;
    let mut stream = S::default();
    let whole = read(call, response, &mut |event| {
        stream.on_event(call, event, sink)
    })
    .await?;
    match whole {
        Some(answer) => read_answer(call, &answer),
        None => stream.finish(call),
    }
}
