//! What went wrong in an LLM call, whether another try may help, and what a person can do.

use std::fmt;
use std::time::{Duration, SystemTime};

use reqwest::header::HeaderMap;

/// What went wrong, by what a caller can do about it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum LlmErrorKind {
    /// No provider of that name is configured on this worker (permanent).
    UnknownProvider { offered: Vec<String> },
    /// Connecting, sending or reading failed.
    Transport { retryable: bool, message: String },
    /// The call outlasted `timeout_secs`, or the server sent nothing for `idle_timeout_secs`.
    Timeout { message: String },
    /// The server answered with an error: an HTTP error status, or a 200 whose body (or a
    /// streamed event) is an error. `status` is 200 for the latter unless the body names one.
    Api {
        status: u16,
        code: Option<String>,
        message: String,
        retryable: bool,
    },
    /// The answer cannot be read as this provider's protocol.
    Malformed(String),
    /// The answer has no text (only reasoning, or nothing at all).
    EmptyContent,
    /// The answer was still cut off at `max_tokens` after `continuations` continuations.
    Truncated { max_tokens: u32, continuations: u32 },
    /// The model or the provider's content filter declined to answer.
    Refused { reason: String },
    /// The provider failed repeatedly and is given a rest; calls resume after `remaining`.
    CircuitOpen { remaining: Duration },
}

/// A failed LLM call: what went wrong, and where (provider, model, URL; never the key).
/// Boxed: results carry it through every layer of a call.
#[derive(Debug, Clone, PartialEq)]
pub struct LlmError(Box<Inner>);

#[derive(Debug, Clone, PartialEq)]
struct Inner {
    kind: LlmErrorKind,
    provider: String,
    model: String,
    url: String,
    retry_after: Option<Duration>,
}

impl LlmErrorKind {
    /// The kind with every occurrence of `secret` in the server's words replaced.
    pub(crate) fn redacted(self, secret: &str) -> Self {
        // Too short to be a key worth hiding, and replacing it would garble the message.
        if secret.len() < 8 {
            return self;
        }
        let clean = |text: String| text.replace(secret, "[redacted API key]");
        match self {
            Self::Transport { retryable, message } => Self::Transport {
                retryable,
                message: clean(message),
            },
            Self::Timeout { message } => Self::Timeout {
                message: clean(message),
            },
            Self::Api {
                status,
                code,
                message,
                retryable,
            } => Self::Api {
                status,
                code: code.map(clean),
                message: clean(message),
                retryable,
            },
            Self::Malformed(text) => Self::Malformed(clean(text)),
            Self::Refused { reason } => Self::Refused {
                reason: clean(reason),
            },
            other => other,
        }
    }
}

impl LlmError {
    pub(crate) fn new(kind: LlmErrorKind, provider: &str, model: &str, url: &str) -> Self {
        Self(Box::new(Inner {
            kind,
            provider: provider.to_owned(),
            model: model.to_owned(),
            url: url.to_owned(),
            retry_after: None,
        }))
    }

    pub(crate) fn unknown_provider(name: &str, offered: Vec<String>) -> Self {
        Self::new(LlmErrorKind::UnknownProvider { offered }, name, "", "")
    }

    pub(crate) fn with_retry_after(mut self, retry_after: Option<Duration>) -> Self {
        self.0.retry_after = retry_after;
        self
    }

    pub fn kind(&self) -> &LlmErrorKind {
        &self.0.kind
    }

    pub fn provider(&self) -> &str {
        &self.0.provider
    }

    pub fn model(&self) -> &str {
        &self.0.model
    }

    pub fn url(&self) -> &str {
        &self.0.url
    }

    /// Whether trying the same call again later may succeed.
    pub fn is_retryable(&self) -> bool {
        match &self.0.kind {
            LlmErrorKind::Transport { retryable, .. } | LlmErrorKind::Api { retryable, .. } => {
                *retryable
            }
            LlmErrorKind::Timeout { .. } | LlmErrorKind::CircuitOpen { .. } => true,
            LlmErrorKind::UnknownProvider { .. }
            | LlmErrorKind::Malformed(_)
            | LlmErrorKind::EmptyContent
            | LlmErrorKind::Truncated { .. }
            | LlmErrorKind::Refused { .. } => false,
        }
    }

    /// How long to wait before the next try, when the server said (or the circuit breaker
    /// knows).
    pub fn retry_after(&self) -> Option<Duration> {
        match &self.0.kind {
            LlmErrorKind::CircuitOpen { remaining } => Some(*remaining),
            _ => self.0.retry_after,
        }
    }

    /// A low-cardinality name for the OpenTelemetry `error.type` attribute.
    pub fn error_type(&self) -> String {
        match &self.0.kind {
            LlmErrorKind::UnknownProvider { .. } => "unknown_provider".to_owned(),
            LlmErrorKind::Transport { .. } => "transport".to_owned(),
            LlmErrorKind::Timeout { .. } => "timeout".to_owned(),
            LlmErrorKind::Api { status: 200, .. } => "api_error".to_owned(),
            LlmErrorKind::Api { status, .. } => status.to_string(),
            LlmErrorKind::Malformed(_) => "malformed_answer".to_owned(),
            LlmErrorKind::EmptyContent => "empty_answer".to_owned(),
            LlmErrorKind::Truncated { .. } => "max_tokens".to_owned(),
            LlmErrorKind::Refused { .. } => "refused".to_owned(),
            LlmErrorKind::CircuitOpen { .. } => "circuit_open".to_owned(),
        }
    }

    fn hint(&self) -> String {
        match &self.0.kind {
            LlmErrorKind::UnknownProvider { .. } => String::new(),
            LlmErrorKind::Transport {
                retryable: true, ..
            } => "is the server running and reachable at the base URL? The call is retried"
                .to_owned(),
            LlmErrorKind::Transport { .. } => "check the provider's base_url".to_owned(),
            LlmErrorKind::Timeout { .. } => {
                "the server was too slow (timeout_secs) or went silent (idle_timeout_secs); \
                 raise them for slow models. The call is retried"
                    .to_owned()
            }
            LlmErrorKind::Api {
                status, retryable, ..
            } => match (*status, *retryable) {
                (401 | 403, _) => "check the provider's API key (api_key, api_key_env or \
                                   api_key_file) and what it is allowed to use"
                    .to_owned(),
                (404, _) => "is the base URL missing /v1? A base URL looks like \
                             https://api.openai.com/v1. Or the model does not exist there"
                    .to_owned(),
                (_, false) if self.is_billing() => {
                    "the account has no quota or credit left: add credit or use another key"
                        .to_owned()
                }
                (429, true) => {
                    "rate limited: a transient failure, worth calling again later".to_owned()
                }
                (_, true) => "the provider (or a proxy in front of it) failed or is \
                              overloaded: a transient failure, worth calling again later"
                    .to_owned(),
                (_, false) => "the provider refused the request: check the model name, \
                               max_tokens and the agent's settings"
                    .to_owned(),
            },
            LlmErrorKind::Malformed(_) => "the server does not answer in this provider's \
                                           protocol: check the provider's kind and base_url"
                .to_owned(),
            LlmErrorKind::EmptyContent => {
                "the model answered no text: try another model or more max_tokens".to_owned()
            }
            LlmErrorKind::Truncated {
                max_tokens,
                continuations,
            } => format!(
                "raise the agent's max_tokens (now {max_tokens}) or the provider's \
                 max_continuations (now {continuations})"
            ),
            LlmErrorKind::Refused { .. } => {
                "change the step's instructions or use another model".to_owned()
            }
            LlmErrorKind::CircuitOpen { .. } => {
                "the provider failed repeatedly and is given a rest: worth calling again later"
                    .to_owned()
            }
        }
    }

    fn is_billing(&self) -> bool {
        match &self.0.kind {
            LlmErrorKind::Api { code, .. } => code.as_deref().is_some_and(is_billing_label),
            _ => false,
        }
    }
}

impl fmt::Display for LlmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let LlmErrorKind::UnknownProvider { offered } = &self.0.kind {
            return write!(
                f,
                "no LLM provider named {:?} is configured on the agent workers (they offer: {}); \
                 configure it under `providers` or give the agent one of those",
                self.0.provider,
                offered.join(", ")
            );
        }
        write!(
            f,
            "LLM provider {:?} (model {:?}, {}): ",
            self.0.provider, self.0.model, self.0.url
        )?;
        match &self.0.kind {
            LlmErrorKind::UnknownProvider { .. } => {}
            LlmErrorKind::Transport { message, .. } => write!(f, "the call failed: {message}")?,
            LlmErrorKind::Timeout { message } => write!(f, "the call timed out: {message}")?,
            LlmErrorKind::Api {
                status: 200,
                code,
                message,
                ..
            } => {
                write!(f, "the answer is an error")?;
                if let Some(code) = code {
                    write!(f, " ({code})")?;
                }
                write!(f, ": {message}")?;
            }
            LlmErrorKind::Api {
                status,
                code,
                message,
                ..
            } => {
                let reason = reqwest::StatusCode::from_u16(*status)
                    .ok()
                    .and_then(|status| status.canonical_reason())
                    .unwrap_or("");
                write!(f, "HTTP {status} {reason}")?;
                if let Some(code) = code {
                    write!(f, " ({code})")?;
                }
                write!(f, ": {message}")?;
            }
            LlmErrorKind::Malformed(detail) => write!(f, "the answer is malformed: {detail}")?,
            LlmErrorKind::EmptyContent => write!(f, "the answer has no text")?,
            LlmErrorKind::Truncated {
                max_tokens,
                continuations,
            } => write!(
                f,
                "the answer was cut off at max_tokens ({max_tokens}) and still was after \
                 {continuations} continuation(s) (max_continuations)"
            )?,
            LlmErrorKind::Refused { reason } => write!(f, "the model declined: {reason}")?,
            LlmErrorKind::CircuitOpen { remaining } => write!(
                f,
                "not called: the circuit breaker is open for another {:.1} s",
                remaining.as_secs_f64()
            )?,
        }
        if let Some(after) = self.0.retry_after {
            write!(f, " (the server asks to wait {:.1} s)", after.as_secs_f64())?;
        }
        write!(f, ". Hint: {}", self.hint())
    }
}

impl std::error::Error for LlmError {}

/// Whether an error code or type says the account is out of money or quota: retrying cannot
/// help, even on a 429.
pub(crate) fn is_billing_label(label: &str) -> bool {
    let label = label.to_ascii_lowercase();
    ["quota", "billing", "balance", "credit"]
        .iter()
        .any(|word| label.contains(word))
}

/// Whether an API error is worth another try, from the HTTP status and the error's code and
/// type (OpenAI's `code`/`type`, Anthropic's `error.type`). The code beats the status: a 429
/// `insufficient_quota` is permanent, an Anthropic `overloaded_error` is retryable whatever
/// status carried it.
pub(crate) fn is_retryable_api_error(status: u16, code: Option<&str>, kind: Option<&str>) -> bool {
    let labels: Vec<String> = [code, kind]
        .into_iter()
        .flatten()
        .map(str::to_ascii_lowercase)
        .collect();
    let any = |words: &[&str]| {
        labels
            .iter()
            .any(|label| words.iter().any(|word| label == word))
    };
    if labels.iter().any(|label| is_billing_label(label)) {
        return false;
    }
    if any(&[
        "rate_limit_error",
        "overloaded_error",
        "api_error",
        "timeout_error",
    ]) {
        return true;
    }
    if any(&[
        "authentication_error",
        "permission_error",
        "invalid_request_error",
        "not_found_error",
        "request_too_large",
    ]) {
        return false;
    }
    if status == 200 {
        // An error inside a success: only its words tell.
        return labels.iter().any(|label| {
            [
                "rate_limit",
                "overloaded",
                "server_error",
                "timeout",
                "unavailable",
            ]
            .iter()
            .any(|word| label.contains(word))
        });
    }
    is_retryable_status(status)
}

/// 408, 409, 425, 429 and server errors (but 501 and 505, which say the server never will).
pub(crate) fn is_retryable_status(status: u16) -> bool {
    matches!(status, 408 | 409 | 425 | 429)
        || ((500..600).contains(&status) && !matches!(status, 501 | 505))
}

/// The server's hint how long to wait: `retry-after-ms`, `Retry-After` (seconds or an HTTP
/// date), or OpenAI's `x-ratelimit-reset-requests`/`-tokens` (Go durations like `6m0s`; the
/// later of the two).
pub(crate) fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::trim)
    };
    if let Some(ms) = header("retry-after-ms").and_then(non_negative) {
        return Some(Duration::from_secs_f64(ms / 1000.0));
    }
    if let Some(value) = header("retry-after") {
        if let Some(seconds) = non_negative(value) {
            return Some(Duration::from_secs_f64(seconds));
        }
        if let Ok(date) = httpdate::parse_http_date(value) {
            return Some(date.duration_since(now).unwrap_or(Duration::ZERO));
        }
    }
    ["x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"]
        .into_iter()
        .filter_map(|name| header(name).and_then(go_duration))
        .max()
}

fn non_negative(text: &str) -> Option<f64> {
    text.parse::<f64>()
        .ok()
        .filter(|value| value.is_finite() && *value >= 0.0 && *value < 1e9)
}

/// A Go duration as OpenAI sends it: `1s`, `6m0s`, `20ms`, `1h2m3.5s`; a bare number is
/// seconds.
pub(crate) fn go_duration(text: &str) -> Option<Duration> {
    if let Some(seconds) = non_negative(text) {
        return Some(Duration::from_secs_f64(seconds));
    }
    let mut rest = text;
    let mut total = 0.0_f64;
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .filter(|end| *end > 0)?;
        let number: f64 = rest[..number_end].parse().ok()?;
        rest = &rest[number_end..];
        let (unit, scale) = [
            ("ms", 1e-3),
            ("us", 1e-6),
            ("µs", 1e-6),
            ("ns", 1e-9),
            ("h", 3600.0),
            ("m", 60.0),
            ("s", 1.0),
        ]
        .into_iter()
        .find(|(unit, _)| rest.starts_with(unit))?;
        total += number * scale;
        rest = &rest[unit.len()..];
    }
    (total.is_finite() && total < 1e9).then(|| Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use reqwest::header::{HeaderName, HeaderValue};

    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(name, value)| {
                (
                    HeaderName::from_static(name),
                    HeaderValue::from_str(value).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn retry_after_reads_every_convention() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480); // 2015-10-21 07:28:00 GMT
        let wait = |pairs: &[(&'static str, &str)]| retry_after(&headers(pairs), now);
        assert_eq!(wait(&[("retry-after", "7")]), Some(Duration::from_secs(7)));
        assert_eq!(
            wait(&[("retry-after", "Wed, 21 Oct 2015 07:28:30 GMT")]),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            wait(&[("retry-after", "Wed, 21 Oct 2015 07:00:00 GMT")]),
            Some(Duration::ZERO),
            "a date in the past means now"
        );
        assert_eq!(
            wait(&[("retry-after-ms", "250"), ("retry-after", "7")]),
            Some(Duration::from_millis(250)),
            "the finer header wins"
        );
        assert_eq!(
            wait(&[
                ("x-ratelimit-reset-requests", "1s"),
                ("x-ratelimit-reset-tokens", "6m0s")
            ]),
            Some(Duration::from_secs(360))
        );
        assert_eq!(
            wait(&[("x-ratelimit-reset-tokens", "20ms")]),
            Some(Duration::from_millis(20))
        );
        assert_eq!(wait(&[("retry-after", "soon")]), None);
        assert_eq!(wait(&[]), None);
    }

    #[test]
    fn go_durations_parse() {
        assert_eq!(
            go_duration("1h2m3.5s"),
            Some(Duration::from_millis(3_723_500))
        );
        assert_eq!(go_duration("150us"), Some(Duration::from_micros(150)));
        assert_eq!(go_duration("2"), Some(Duration::from_secs(2)));
        assert_eq!(go_duration("1x"), None);
        assert_eq!(go_duration("s"), None);
    }

    #[test]
    fn statuses_and_codes_are_classified() {
        for status in [408, 409, 425, 429, 500, 502, 503, 504, 529] {
            assert!(is_retryable_api_error(status, None, None), "{status}");
        }
        for status in [400, 401, 403, 404, 422, 501] {
            assert!(!is_retryable_api_error(status, None, None), "{status}");
        }
        assert!(!is_retryable_api_error(
            429,
            Some("insufficient_quota"),
            Some("insufficient_quota")
        ));
        assert!(!is_retryable_api_error(402, None, Some("billing_error")));
        assert!(is_retryable_api_error(529, None, Some("overloaded_error")));
        assert!(is_retryable_api_error(200, None, Some("overloaded_error")));
        assert!(!is_retryable_api_error(
            500,
            None,
            Some("invalid_request_error")
        ));
        assert!(is_retryable_api_error(200, Some("server_error"), None));
        assert!(!is_retryable_api_error(
            200,
            Some("context_length_exceeded"),
            None
        ));
    }

    #[test]
    fn display_names_where_and_what_to_do() {
        let error = LlmError::new(
            LlmErrorKind::Api {
                status: 404,
                code: None,
                message: "page not found".to_owned(),
                retryable: false,
            },
            "openai",
            "gpt-4o",
            "https://api.example.com/chat/completions",
        );
        let text = error.to_string();
        for part in [
            "\"openai\"",
            "\"gpt-4o\"",
            "https://api.example.com/chat/completions",
            "HTTP 404 Not Found",
            "page not found",
            "missing /v1",
            "https://api.openai.com/v1",
        ] {
            assert!(text.contains(part), "{part} missing in {text}");
        }

        let quota = LlmError::new(
            LlmErrorKind::Api {
                status: 429,
                code: Some("insufficient_quota".to_owned()),
                message: "You exceeded your current quota".to_owned(),
                retryable: false,
            },
            "openai",
            "gpt-4o",
            "u",
        );
        assert!(quota.to_string().contains("credit"), "{quota}");

        let unknown = LlmError::unknown_provider("claude", vec!["offline".to_owned()]);
        assert!(!unknown.is_retryable());
        assert!(unknown.to_string().contains("\"claude\""));
        assert!(unknown.to_string().contains("offline"));
    }
}
