use std::sync::Mutex;
use std::time::Duration;

use cadre_proto::model::TokenUsage;
use serde_json::json;

use crate::config::HttpProviderConfig;
use crate::llm::testing::{API_KEY, Fake, Reply, anthropic, http_config, request};
use crate::llm::{Completion, LlmError, LlmErrorKind};

use super::*;

const PATH: &str = "/messages";

fn message(content: Value, stop_reason: &str) -> Value {
    json!({
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-test-2025",
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": null,
        "usage": {"input_tokens": 11, "output_tokens": 7}
    })
}

async fn call_with(
    replies: Vec<Reply>,
    configure: impl FnOnce(&mut HttpProviderConfig),
) -> (Result<Completion, LlmError>, Fake) {
    let fake = Fake::start(PATH, replies).await;
    let mut config = http_config(&fake.base_url);
    configure(&mut config);
    let result = anthropic(config).complete(&request()).await;
    (result, fake)
}

async fn error_of(reply: Reply) -> LlmError {
    let (result, _) = call_with(vec![reply], |_| {}).await;
    let error = result.unwrap_err();
    assert!(!error.to_string().contains(API_KEY), "{error}");
    assert!(!format!("{error:?}").contains(API_KEY), "{error:?}");
    error
}

#[tokio::test]
async fn sends_the_message_and_reads_text_blocks_and_usage() {
    let content = json!([
        {"type": "thinking", "thinking": "Let me see.", "signature": "sig"},
        {"type": "text", "text": "## Summary\n"},
        {"type": "text", "text": "Done", "citations": null}
    ]);
    let mut answer = message(content, "end_turn");
    answer["usage"] = json!({
        "input_tokens": 5, "cache_creation_input_tokens": 4, "cache_read_input_tokens": null,
        "output_tokens": 7, "service_tier": "standard"
    });
    let (result, fake) = call_with(vec![Reply::json(200, answer)], |_| {}).await;
    let completion = result.unwrap();
    assert_eq!(completion.text, "## Summary\nDone");
    assert_eq!(
        completion.usage,
        TokenUsage {
            prompt: 9,
            completion: 7,
            total: 16
        }
    );
    assert_eq!(completion.finish_reason.as_deref(), Some("end_turn"));
    assert_eq!(
        completion.response_model.as_deref(),
        Some("claude-test-2025")
    );

    let sent = &fake.requests()[0];
    assert_eq!(sent.headers["x-api-key"], API_KEY);
    assert_eq!(sent.headers["anthropic-version"], "2023-06-01");
    assert!(sent.headers.get("authorization").is_none());
    assert_eq!(
        sent.body,
        json!({
            "model": "gpt-test",
            "system": request().system,
            "messages": [{"role": "user", "content": request().user}],
            "max_tokens": 300,
            "temperature": sent.body["temperature"],
        })
    );
    assert!((sent.body["temperature"].as_f64().unwrap() - 0.2).abs() < 1e-6);
}

#[tokio::test]
async fn an_empty_system_prompt_is_left_out() {
    let fake = Fake::start(
        PATH,
        vec![Reply::json(
            200,
            message(json!([{"type": "text", "text": "ok"}]), "end_turn"),
        )],
    )
    .await;
    let mut request = request();
    request.system.clear();
    anthropic(http_config(&fake.base_url))
        .complete(&request)
        .await
        .unwrap();
    assert!(fake.requests()[0].body.get("system").is_none());
}

#[tokio::test]
async fn max_tokens_is_continued_then_fails_for_good() {
    let part = |text: &str, stop: &str| {
        Reply::json(200, message(json!([{"type": "text", "text": text}]), stop))
    };
    let (result, fake) = call_with(
        vec![part("First, ", "max_tokens"), part("second.", "end_turn")],
        |_| {},
    )
    .await;
    let completion = result.unwrap();
    assert_eq!(completion.text, "First, second.");
    assert_eq!(completion.continuations, 1);
    assert_eq!(completion.usage.completion, 14);
    let messages = fake.requests()[1].body["messages"].clone();
    assert_eq!(
        messages[1],
        json!({"role": "assistant", "content": "First, "})
    );
    assert_eq!(messages[2]["role"], "user");

    let (result, fake) = call_with(vec![part("more ", "max_tokens")], |config| {
        config.max_continuations = 2;
    })
    .await;
    let error = result.unwrap_err();
    assert_eq!(
        error.kind(),
        &LlmErrorKind::Truncated {
            max_tokens: 300,
            continuations: 2
        }
    );
    assert!(!error.is_retryable());
    assert_eq!(fake.requests().len(), 3);
}

#[tokio::test]
async fn a_refusal_fails_for_good() {
    let error = error_of(Reply::json(200, message(json!([]), "refusal"))).await;
    assert!(
        matches!(error.kind(), LlmErrorKind::Refused { .. }),
        "{error}"
    );
    assert!(!error.is_retryable());
    assert!(error.to_string().contains("refusal"));
}

#[tokio::test]
async fn json_comes_from_a_forced_tool() {
    let schema = json!({"type": "object", "properties": {"summary": {"type": "string"}}, "required": ["summary"]});
    let content = json!([
        {"type": "text", "text": "Here you go:"},
        {"type": "tool_use", "id": "toolu_1", "name": "answer", "input": {"summary": "s"}}
    ]);
    let fake = Fake::start(PATH, vec![Reply::json(200, message(content, "tool_use"))]).await;
    let mut request = request();
    request.json_schema = Some(schema.clone());
    let completion = anthropic(http_config(&fake.base_url))
        .complete(&request)
        .await
        .unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&completion.text).unwrap(),
        json!({"summary": "s"})
    );
    let body = &fake.requests()[0].body;
    assert_eq!(body["tools"][0]["input_schema"], schema);
    assert_eq!(body["tools"][0]["name"], "answer");
    assert_eq!(
        body["tool_choice"],
        json!({"type": "tool", "name": "answer"})
    );

    // A tool input cut off at max_tokens is not continued.
    let cut = json!([{"type": "tool_use", "id": "t", "name": "answer", "input": {}}]);
    let fake = Fake::start(PATH, vec![Reply::json(200, message(cut, "max_tokens"))]).await;
    let error = anthropic(http_config(&fake.base_url))
        .complete(&request)
        .await
        .unwrap_err();
    assert!(
        matches!(error.kind(), LlmErrorKind::Truncated { .. }),
        "{error}"
    );
    assert_eq!(fake.requests().len(), 1);
}

fn api_error(kind: &str, message: &str) -> Value {
    json!({"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_1"})
}

#[tokio::test]
async fn errors_are_classified_by_their_type() {
    let overloaded = error_of(Reply::json(
        529,
        api_error("overloaded_error", "Overloaded"),
    ))
    .await;
    assert!(overloaded.is_retryable(), "{overloaded}");
    assert!(overloaded.to_string().contains("529"), "{overloaded}");

    let limited = error_of(
        Reply::json(
            429,
            api_error("rate_limit_error", "Number of requests exceeded"),
        )
        .header("retry-after", "12"),
    )
    .await;
    assert!(limited.is_retryable());
    assert_eq!(limited.retry_after(), Some(Duration::from_secs(12)));

    let internal = error_of(Reply::json(500, api_error("api_error", "Internal error"))).await;
    assert!(internal.is_retryable());

    for (status, kind) in [
        (401, "authentication_error"),
        (403, "permission_error"),
        (400, "invalid_request_error"),
        (404, "not_found_error"),
        (413, "request_too_large"),
    ] {
        let error = error_of(Reply::json(status, api_error(kind, "no"))).await;
        assert!(!error.is_retryable(), "{status} {kind}: {error}");
        assert!(error.to_string().contains(kind), "{error}");
    }

    let billing = error_of(Reply::json(
        400,
        api_error(
            "invalid_request_error",
            "Your credit balance is too low to access the Anthropic API.",
        ),
    ))
    .await;
    assert!(!billing.is_retryable());

    let in_a_200 = error_of(Reply::json(
        200,
        api_error("overloaded_error", "Overloaded"),
    ))
    .await;
    assert!(in_a_200.is_retryable(), "{in_a_200}");
}

fn event(name: &'static str, data: Value) -> (Option<&'static str>, Value) {
    (Some(name), data)
}

#[tokio::test]
async fn streams_text_deltas_to_the_sink() {
    let reply = Reply::events(&[
        event(
            "message_start",
            json!({"type": "message_start", "message": {"id": "m", "type": "message", "role": "assistant", "model": "claude-s", "content": [], "stop_reason": null, "usage": {"input_tokens": 25, "cache_read_input_tokens": 5, "output_tokens": 1}}}),
        ),
        event(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}}),
        ),
        event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "hmm"}}),
        ),
        event("ping", json!({"type": "ping"})),
        event(
            "content_block_start",
            json!({"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}}),
        ),
        event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "Hello"}}),
        ),
        event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": " world"}}),
        ),
        event(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 1}),
        ),
        event(
            "message_delta",
            json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": 15}}),
        ),
        event("message_stop", json!({"type": "message_stop"})),
    ]);
    let fake = Fake::start(PATH, vec![reply]).await;
    let mut config = http_config(&fake.base_url);
    config.stream = true;
    let deltas = Mutex::new(Vec::new());
    let sink = |piece: &str| deltas.lock().unwrap().push(piece.to_owned());
    let completion = anthropic(config)
        .complete_streaming(&request(), Some(&sink))
        .await
        .unwrap();
    assert_eq!(completion.text, "Hello world");
    assert_eq!(*deltas.lock().unwrap(), ["Hello", " world"]);
    assert_eq!(
        completion.usage,
        TokenUsage {
            prompt: 30,
            completion: 15,
            total: 45
        }
    );
    assert_eq!(completion.finish_reason.as_deref(), Some("end_turn"));
    assert_eq!(completion.response_model.as_deref(), Some("claude-s"));
    assert_eq!(fake.requests()[0].body["stream"], true);
}

#[tokio::test]
async fn a_streamed_error_event_is_classified() {
    let error = error_of(Reply::events(&[
        event(
            "message_start",
            json!({"type": "message_start", "message": {"model": "claude-s", "usage": {"input_tokens": 1}}}),
        ),
        event("error", api_error("overloaded_error", "Overloaded")),
    ]))
    .await;
    assert!(error.is_retryable(), "{error}");
    assert!(error.to_string().contains("Overloaded"));

    let cut = error_of(Reply::events(&[event(
        "content_block_delta",
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hel"}}),
    )]))
    .await;
    assert!(cut.is_retryable(), "{cut}");
}

#[tokio::test]
async fn a_streamed_tool_input_is_the_json_answer() {
    let reply = Reply::events(&[
        event(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": "t", "name": "answer", "input": {}}}),
        ),
        event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": "{\"summary\": "}}),
        ),
        event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": "\"s\"}"}}),
        ),
        event(
            "message_delta",
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 9}}),
        ),
        event("message_stop", json!({"type": "message_stop"})),
    ]);
    let fake = Fake::start(PATH, vec![reply]).await;
    let mut config = http_config(&fake.base_url);
    config.stream = true;
    let mut request = request();
    request.json_schema = Some(json!({"type": "object"}));
    let completion = anthropic(config).complete(&request).await.unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&completion.text).unwrap(),
        json!({"summary": "s"})
    );
}
