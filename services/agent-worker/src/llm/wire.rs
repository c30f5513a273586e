//! Reading what servers actually send, leniently: bodies with broken text, server-sent events,
//! token counts in any shape, error bodies and proxy pages.

use serde_json::Value;

use cadre_proto::model::TokenUsage;

use super::estimate_tokens;

/// How much of an error body goes into an error message.
const ERROR_BODY_LIMIT: usize = 500;

/// A body as text: invalid UTF-8 becomes U+FFFD, and so does every lone UTF-16 surrogate
/// escape (`"\ud83d"` alone, a high surrogate before something else, a lone low one), which
/// `serde_json` rejects outright. Models emit those when they cut an emoji in half.
pub(crate) fn body_text(bytes: &[u8]) -> String {
    repair_surrogate_escapes(&String::from_utf8_lossy(bytes))
}

/// Parses JSON from text that went through [`body_text`].
pub(crate) fn parse_json(text: &str) -> Result<Value, serde_json::Error> {
    serde_json::from_str(text)
}

fn repair_surrogate_escapes(text: &str) -> String {
    if !text.contains("\\u") {
        return text.to_owned();
    }
    let bytes = text.as_bytes();
    let mut repaired = String::with_capacity(text.len());
    let mut copied_up_to = 0;
    let mut at = 0;
    while at < bytes.len() {
        if bytes[at] != b'\\' {
            at += 1;
            continue;
        }
        // Any escape is two bytes or more: skipping both keeps `\\u...` (an escaped
        // backslash, then text) from being read as an escape.
        if bytes.get(at + 1) != Some(&b'u') {
            at += 2;
            continue;
        }
        let Some(unit) = hex4(bytes, at + 2) else {
            at += 2;
            continue;
        };
        let lone = match unit {
            0xD800..=0xDBFF => {
                let pair = bytes.get(at + 6) == Some(&b'\\')
                    && bytes.get(at + 7) == Some(&b'u')
                    && matches!(hex4(bytes, at + 8), Some(0xDC00..=0xDFFF));
                if pair {
                    at += 12;
                    continue;
                }
                true
            }
            0xDC00..=0xDFFF => true,
            _ => false,
        };
        if lone {
            // `at` is at a backslash, an ASCII byte, so always on a character boundary.
            repaired.push_str(&text[copied_up_to..at]);
            repaired.push_str("\\ufffd");
            copied_up_to = at + 6;
        }
        at += 6;
    }
    repaired.push_str(&text[copied_up_to..]);
    repaired
}

fn hex4(bytes: &[u8], at: usize) -> Option<u16> {
    let digits = bytes.get(at..at + 4)?;
    let digits = std::str::from_utf8(digits).ok()?;
    if !digits.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        return None;
    }
    u16::from_str_radix(digits, 16).ok()
}

/// Whether a body is server-sent events (some servers stream although asked not to).
pub(crate) fn looks_like_sse(text: &str) -> bool {
    let start = text.trim_start();
    start.starts_with("data:") || start.starts_with("event:")
}

/// One server-sent event.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SseEvent {
    pub event: Option<String>,
    pub data: String,
}

/// Splits a byte stream into server-sent events, whatever the chunk boundaries.
#[derive(Debug, Default)]
pub(crate) struct SseParser {
    pending: Vec<u8>,
    event: Option<String>,
    data: Option<String>,
}

impl SseParser {
    pub fn push(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        self.pending.extend_from_slice(chunk);
        let mut events = Vec::new();
        while let Some(end) = self.pending.iter().position(|byte| *byte == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=end).collect();
            let line = body_text(&line);
            let line = line.trim_end_matches(['\n', '\r']);
            if let Some(event) = self.line(line) {
                events.push(event);
            }
        }
        events
    }

    /// The last event, when the stream ends without a blank line.
    pub fn finish(&mut self) -> Vec<SseEvent> {
        let rest = std::mem::take(&mut self.pending);
        let mut events = Vec::new();
        if !rest.is_empty() {
            let line = body_text(&rest);
            if let Some(event) = self.line(line.trim_end_matches(['\n', '\r'])) {
                events.push(event);
            }
        }
        events.extend(self.dispatch());
        events
    }

    fn line(&mut self, line: &str) -> Option<SseEvent> {
        if line.is_empty() {
            return self.dispatch();
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => self.event = Some(value.to_owned()),
            "data" => match &mut self.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => self.data = Some(value.to_owned()),
            },
            _ => {}
        }
        None
    }

    fn dispatch(&mut self) -> Option<SseEvent> {
        let event = self.event.take();
        let data = self.data.take()?;
        Some(SseEvent { event, data })
    }
}

/// Token counts as a server reported them; any may be missing.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub(crate) struct ReportedUsage {
    pub prompt: Option<u32>,
    pub completion: Option<u32>,
    pub total: Option<u32>,
}

impl ReportedUsage {
    /// OpenAI's `usage` (`prompt_tokens`, `completion_tokens`, `total_tokens`), or the
    /// `input_tokens`/`output_tokens` names some compatible servers use; nulls, floats and
    /// extra details are fine.
    pub fn from_openai(usage: &Value) -> Self {
        let field = |names: &[&str]| names.iter().find_map(|name| count(&usage[*name]));
        Self {
            prompt: field(&["prompt_tokens", "input_tokens"]),
            completion: field(&["completion_tokens", "output_tokens"]),
            total: field(&["total_tokens"]),
        }
    }

    /// Anthropic's `usage`: the prompt is the uncached input plus what was written to and
    /// read from the prompt cache.
    pub fn from_anthropic(usage: &Value) -> Self {
        let inputs: Vec<u32> = [
            "input_tokens",
            "cache_creation_input_tokens",
            "cache_read_input_tokens",
        ]
        .iter()
        .filter_map(|name| count(&usage[*name]))
        .collect();
        Self {
            prompt: (!inputs.is_empty())
                .then(|| inputs.iter().fold(0_u32, |sum, n| sum.saturating_add(*n))),
            completion: count(&usage["output_tokens"]),
            total: None,
        }
    }

    /// Later reports (the last chunks of a stream) fill in or replace earlier ones.
    pub fn update(&mut self, later: Self) {
        self.prompt = later.prompt.or(self.prompt);
        self.completion = later.completion.or(self.completion);
        self.total = later.total.or(self.total);
    }

    /// Complete counts: a missing total is the sum, a missing part is derived from the total,
    /// and what is still missing is estimated. A report of all zeros (servers that do not
    /// count) is no report.
    pub fn resolve(self, estimated_prompt: u32, answer: &str) -> TokenUsage {
        let reported = if [self.prompt, self.completion, self.total]
            .iter()
            .all(|n| n.unwrap_or(0) == 0)
        {
            Self::default()
        } else {
            self
        };
        let prompt = reported
            .prompt
            .or_else(|| Some(reported.total?.saturating_sub(reported.completion?)))
            .unwrap_or(estimated_prompt);
        let completion = reported
            .completion
            .or_else(|| reported.total.map(|total| total.saturating_sub(prompt)))
            .unwrap_or_else(|| estimate_tokens(answer));
        let sum = prompt.saturating_add(completion);
        TokenUsage {
            prompt,
            completion,
            total: reported.total.filter(|total| *total >= sum).unwrap_or(sum),
        }
    }
}

/// A token count: an integer, a float (rounded), or a numeric string.
fn count(value: &Value) -> Option<u32> {
    let number = match value {
        Value::Number(number) => number.as_u64().map(|n| n as f64).or(number.as_f64())?,
        Value::String(text) => text.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    if !number.is_finite() || number < 0.0 {
        return None;
    }
    Some(number.round().min(f64::from(u32::MAX)) as u32)
}

/// The text of a message `content`: a string, or an array of parts of which the text ones
/// count (`{type: "text", text}`, `output_text`, or a bare string).
pub(crate) fn content_text(content: &Value) -> Option<String> {
    match content {
        Value::String(text) => Some(text.clone()),
        Value::Array(parts) => {
            let texts: Vec<&str> = parts
                .iter()
                .filter_map(|part| match part {
                    Value::String(text) => Some(text.as_str()),
                    Value::Object(_) => {
                        let kind = part["type"].as_str().unwrap_or("text");
                        matches!(kind, "text" | "output_text")
                            .then(|| part["text"].as_str())
                            .flatten()
                    }
                    _ => None,
                })
                .collect();
            (!texts.is_empty()).then(|| texts.concat())
        }
        _ => None,
    }
}

/// The answer without a reasoning prefix: `<think>…</think>` (or `<thinking>`) at the start,
/// or everything up to a `</think>` whose opening tag was in the chat template. An unclosed
/// prefix is all reasoning, so no answer.
pub(crate) fn strip_reasoning(text: &str) -> String {
    let start = text.trim_start();
    for (open, close) in [("<think>", "</think>"), ("<thinking>", "</thinking>")] {
        if let Some(rest) = start.strip_prefix(open) {
            return match rest.find(close) {
                Some(end) => rest[end + close.len()..].trim_start().to_owned(),
                None => String::new(),
            };
        }
    }
    if let Some(end) = text.find("</think>")
        && !text[..end].contains("<think>")
    {
        return text[end + "</think>".len()..].trim_start().to_owned();
    }
    text.to_owned()
}

/// What an error body says: its code, its type and its message, from OpenAI's
/// `{"error": {"message", "type", "code"}}`, Anthropic's `{"type": "error", "error": {"type",
/// "message"}}`, a bare `{"error": "..."}` or `{"message"|"detail": "..."}`, an HTML page from
/// a proxy (its title), or plain text.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct ErrorBody {
    pub code: Option<String>,
    pub kind: Option<String>,
    pub message: String,
    /// A numeric `code` in the 4xx/5xx range (OpenRouter puts the upstream status there).
    pub status: Option<u16>,
}

impl ErrorBody {
    pub fn from_text(text: &str) -> Self {
        match parse_json(text) {
            Ok(value) if value.is_object() => Self::from_json(&value),
            _ => Self {
                message: plain_summary(text),
                ..Self::default()
            },
        }
    }

    pub fn from_json(value: &Value) -> Self {
        let error = match &value["error"] {
            Value::Object(_) => &value["error"],
            Value::String(message) => {
                return Self {
                    message: truncated(message),
                    ..Self::default()
                };
            }
            _ => value,
        };
        let label = |value: &Value| match value {
            Value::String(text) => Some(text.clone()),
            Value::Number(number) => Some(number.to_string()),
            _ => None,
        };
        let message = ["message", "detail", "error"]
            .iter()
            .find_map(|name| error[*name].as_str())
            .map(truncated)
            .unwrap_or_else(|| truncated(&value.to_string()));
        Self {
            code: label(&error["code"]),
            kind: error["type"].as_str().map(str::to_owned),
            status: error["code"]
                .as_u64()
                .and_then(|code| u16::try_from(code).ok())
                .filter(|code| (400..600).contains(code)),
            message,
        }
    }
}

/// A non-JSON body in a line: an HTML page is its title (proxies answer 502/504 with one).
fn plain_summary(text: &str) -> String {
    let lower = text.to_ascii_lowercase();
    if lower.contains("<html") || lower.contains("<!doctype") {
        let inner = |tag: &str| {
            let open = lower.find(&format!("<{tag}"))?;
            let content = open + lower[open..].find('>')? + 1;
            let close = content + lower[content..].find(&format!("</{tag}>"))?;
            let inner = text.get(content..close)?.trim();
            (!inner.is_empty()).then(|| inner.to_owned())
        };
        return match inner("title").or_else(|| inner("h1")) {
            Some(title) => format!("an HTML page: {}", truncated(&title)),
            None => "an HTML page (from a proxy?)".to_owned(),
        };
    }
    let text = text.trim();
    if text.is_empty() {
        "an empty body".to_owned()
    } else {
        truncated(text)
    }
}

pub(crate) fn truncated(text: &str) -> String {
    match text.char_indices().nth(ERROR_BODY_LIMIT) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn lone_surrogates_become_replacement_characters() {
        // What this repairs: serde_json refuses them outright.
        assert!(serde_json::from_str::<Value>(r#""a\ud83d""#).is_err());
        let cases = [
            (r#"{"t":"a\ud83d"}"#, "a\u{FFFD}"),
            (r#"{"t":"a\ud83dxyz"}"#, "a\u{FFFD}xyz"),
            (r#"{"t":"\ud83d\u0041"}"#, "\u{FFFD}A"),
            (r#"{"t":"\ude00 end"}"#, "\u{FFFD} end"),
            (r#"{"t":"\ud83d\ud83d\ude00"}"#, "\u{FFFD}\u{1F600}"),
            (r#"{"t":"ok \ud83d\ude00"}"#, "ok \u{1F600}"),
            (r#"{"t":"\\ud83d"}"#, "\\ud83d"),
        ];
        for (raw, expected) in cases {
            let value = parse_json(&body_text(raw.as_bytes())).unwrap();
            assert_eq!(value["t"], expected, "{raw}");
        }
    }

    #[test]
    fn invalid_utf8_becomes_replacement_characters() {
        let mut raw = br#"{"t":"caf"#.to_vec();
        raw.extend_from_slice(&[0xC3, 0x28, 0xFF]);
        raw.extend_from_slice(br#""}"#);
        let value = parse_json(&body_text(&raw)).unwrap();
        assert_eq!(value["t"], "caf\u{FFFD}(\u{FFFD}");
    }

    #[test]
    fn sse_events_survive_any_chunking() {
        let stream =
            "event: a\r\ndata: {\"x\":1}\r\n\r\n: comment\n\ndata: one\ndata: two\n\ndata: [DONE]";
        let whole = {
            let mut parser = SseParser::default();
            let mut events = parser.push(stream.as_bytes());
            events.extend(parser.finish());
            events
        };
        let bytewise = {
            let mut parser = SseParser::default();
            let mut events = Vec::new();
            for byte in stream.as_bytes() {
                events.extend(parser.push(&[*byte]));
            }
            events.extend(parser.finish());
            events
        };
        assert_eq!(whole, bytewise);
        let data: Vec<(Option<&str>, &str)> = whole
            .iter()
            .map(|event| (event.event.as_deref(), event.data.as_str()))
            .collect();
        assert_eq!(
            data,
            [
                (Some("a"), "{\"x\":1}"),
                (None, "one\ntwo"),
                (None, "[DONE]")
            ]
        );
    }

    #[test]
    fn usage_in_any_shape_is_completed() {
        let resolve = |usage: Value| ReportedUsage::from_openai(&usage).resolve(100, "a b c");
        let usage = |prompt, completion, total| TokenUsage {
            prompt,
            completion,
            total,
        };
        assert_eq!(
            resolve(json!({"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18})),
            usage(11, 7, 18)
        );
        assert_eq!(
            resolve(json!({"prompt_tokens": 11, "completion_tokens": 7})),
            usage(11, 7, 18)
        );
        assert_eq!(
            resolve(json!({"input_tokens": 11, "output_tokens": 7})),
            usage(11, 7, 18)
        );
        assert_eq!(
            resolve(json!({"prompt_tokens": 11.0, "completion_tokens": 6.6, "total_tokens": null})),
            usage(11, 7, 18)
        );
        assert_eq!(
            resolve(json!({"prompt_tokens": null, "completion_tokens": 7, "total_tokens": 18})),
            usage(11, 7, 18)
        );
        assert_eq!(
            resolve(json!({
                "prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18,
                "prompt_tokens_details": {"cached_tokens": 3, "audio_tokens": null},
                "completion_tokens_details": {"reasoning_tokens": 2}
            })),
            usage(11, 7, 18)
        );
        // Nothing, or only zeros: estimated (the prompt's estimate is given, "a b c" is 4).
        assert_eq!(resolve(Value::Null), usage(100, 4, 104));
        assert_eq!(
            resolve(json!({"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0})),
            usage(100, 4, 104)
        );
        assert_eq!(resolve(json!({"prompt_tokens": 11})), usage(11, 4, 15));

        let anthropic = ReportedUsage::from_anthropic(&json!({
            "input_tokens": 5, "cache_creation_input_tokens": 10,
            "cache_read_input_tokens": null, "output_tokens": 3
        }));
        assert_eq!(anthropic.resolve(100, ""), usage(15, 3, 18));
    }

    #[test]
    fn content_parts_and_reasoning() {
        assert_eq!(
            content_text(&json!([
                {"type": "text", "text": "Hello "},
                {"type": "reasoning", "text": "hidden"},
                {"type": "output_text", "text": "world"}
            ]))
            .as_deref(),
            Some("Hello world")
        );
        assert_eq!(content_text(&Value::Null), None);
        assert_eq!(
            strip_reasoning("<think>\nhmm\n</think>\n\nAnswer"),
            "Answer"
        );
        assert_eq!(strip_reasoning("  <thinking>x</thinking>Answer"), "Answer");
        assert_eq!(strip_reasoning("hmm, let me see</think>Answer"), "Answer");
        assert_eq!(strip_reasoning("<think>never closed"), "");
        assert_eq!(strip_reasoning("Plain answer"), "Plain answer");
    }

    #[test]
    fn error_bodies_are_summarised() {
        let openai = ErrorBody::from_text(
            r#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#,
        );
        assert_eq!(openai.code.as_deref(), Some("insufficient_quota"));
        assert_eq!(openai.message, "You exceeded your current quota");

        let anthropic = ErrorBody::from_text(
            r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        );
        assert_eq!(anthropic.kind.as_deref(), Some("overloaded_error"));

        let openrouter = ErrorBody::from_text(r#"{"error":{"code":502,"message":"upstream"}}"#);
        assert_eq!(openrouter.status, Some(502));

        let proxy = ErrorBody::from_text(
            "<html><head><title>502 Bad Gateway</title></head><body><h1>502</h1></body></html>",
        );
        assert_eq!(proxy.message, "an HTML page: 502 Bad Gateway");
        assert_eq!(ErrorBody::from_text("").message, "an empty body");
    }
}
