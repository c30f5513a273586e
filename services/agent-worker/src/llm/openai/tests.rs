use std::sync::Mutex;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use cadre_proto::model::TokenUsage;
use serde_json::json;

use crate::config::HttpProviderConfig;
use crate::llm::testing::{API_KEY, Fake, Reply, http_config, openai, request};
use crate::llm::{Completion, LlmError, LlmErrorKind};

use super::*;

const PATH: &str = "/chat/completions";

fn answer(content: Value, finish_reason: &str) -> Value {
    json!({
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "gpt-test-2024",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish_reason}],
        "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
    })
}

/// Serves `replies` and makes one call with the default test settings.
async fn call(replies: Vec<Reply>) -> (Result<Completion, LlmError>, Fake) {
    call_with(replies, |_| {}).await
}

async fn call_with(
    replies: Vec<Reply>,
    configure: impl FnOnce(&mut HttpProviderConfig),
) -> (Result<Completion, LlmError>, Fake) {
    let fake = Fake::start(PATH, replies).await;
    let mut config = http_config(&fake.base_url);
    configure(&mut config);
    let result = openai(config).complete(&request()).await;
    (result, fake)
}

async fn text_of(reply: Reply) -> String {
    let (result, _) = call(vec![reply]).await;
    result.unwrap().text
}

async fn error_of(reply: Reply) -> LlmError {
    let (result, _) = call(vec![reply]).await;
    let error = result.unwrap_err();
    assert!(!error.to_string().contains(API_KEY), "{error}");
    assert!(!format!("{error:?}").contains(API_KEY), "{error:?}");
    error
}

#[tokio::test]
async fn sends_the_chat_and_reads_content_usage_and_metadata() {
    let (result, fake) = call(vec![Reply::json(
        200,
        answer(json!("## Summary\nDone"), "stop"),
    )])
    .await;
    let completion = result.unwrap();
    assert_eq!(completion.text, "## Summary\nDone");
    assert_eq!(
        completion.usage,
        TokenUsage {
            prompt: 11,
            completion: 7,
            total: 18
        }
    );
    assert_eq!(completion.finish_reason.as_deref(), Some("stop"));
    assert_eq!(completion.response_model.as_deref(), Some("gpt-test-2024"));
    assert_eq!(completion.continuations, 0);

    let sent = &fake.requests()[0];
    assert_eq!(sent.headers["authorization"], format!("Bearer {API_KEY}"));
    let body = &sent.body;
    assert_eq!(body["model"], "gpt-test");
    assert_eq!(body["messages"][0]["role"], "system");
    assert_eq!(body["messages"][0]["content"], request().system);
    assert_eq!(body["messages"][1]["role"], "user");
    assert_eq!(body["messages"][1]["content"], request().user);
    assert_eq!(body["messages"].as_array().unwrap().len(), 2);
    assert_eq!(body["max_tokens"], 300);
    assert!((body["temperature"].as_f64().unwrap() - 0.2).abs() < 1e-6);
    assert!(body.get("response_format").is_none());
    assert!(body.get("stream").is_none());
}

#[tokio::test]
async fn an_empty_system_prompt_sends_no_system_message() {
    let fake = Fake::start(PATH, vec![Reply::json(200, answer(json!("ok"), "stop"))]).await;
    let mut request = request();
    request.system.clear();
    openai(http_config(&fake.base_url))
        .complete(&request)
        .await
        .unwrap();
    let messages = fake.requests()[0].body["messages"].clone();
    assert_eq!(messages, json!([{"role": "user", "content": request.user}]));
}

#[tokio::test]
async fn a_configured_model_serves_requests_that_name_none() {
    let fake = Fake::start(PATH, vec![Reply::json(200, answer(json!("ok"), "stop"))]).await;
    let mut config = http_config(&fake.base_url);
    config.model = Some("deepseek-chat".to_owned());
    let mut request = request();
    request.model.clear();
    openai(config).complete(&request).await.unwrap();
    assert_eq!(fake.requests()[0].body["model"], "deepseek-chat");
}

#[tokio::test]
async fn json_schema_is_asked_for_and_dropped_for_good_when_refused() {
    let schema = json!({"type": "object", "properties": {"summary": {"type": "string"}}});
    let refused = Reply::json(
        400,
        json!({"error": {"message": "Unrecognized request argument supplied: response_format", "type": "invalid_request_error"}}),
    );
    let fake = Fake::start(
        PATH,
        vec![
            refused,
            Reply::json(200, answer(json!("{\"summary\":\"s\"}"), "stop")),
        ],
    )
    .await;
    let provider = openai(http_config(&fake.base_url));
    let mut request = request();
    request.json_schema = Some(schema.clone());
    let completion = provider.complete(&request).await.unwrap();
    assert_eq!(completion.text, "{\"summary\":\"s\"}");
    provider.complete(&request).await.unwrap();

    let sent = fake.requests();
    assert_eq!(sent.len(), 3);
    assert_eq!(
        sent[0].body["response_format"],
        json!({"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": false}})
    );
    assert!(sent[1].body.get("response_format").is_none(), "the retry");
    assert!(
        sent[2].body.get("response_format").is_none(),
        "remembered for the provider"
    );
}

#[tokio::test]
async fn every_shape_of_a_json_schema_refusal_drops_the_schema() {
    // OpenAI and vLLM say 400, others 422, llama-cpp-python 500 (its validation error).
    let refusals = [
        (
            400,
            json!({"error": {"message": "Invalid parameter: 'response_format' of type 'json_schema' is not supported with this model.", "type": "invalid_request_error", "param": "response_format"}}),
        ),
        (
            422,
            json!({"error": {"message": "unknown field", "code": "response_format"}}),
        ),
        (
            500,
            json!({"error": {"message": "1 validation error:\n {'type': 'literal_error', 'loc': ('body', 'response_format', 'type'), 'msg': \"Input should be 'text' or 'json_object'\", 'input': 'json_schema'}", "type": "internal_server_error", "param": null, "code": null}}),
        ),
        // llama.cpp's server when the schema's grammar is too large for it to build.
        (
            500,
            json!({"error": {"code": 500, "message": "failed to parse grammar", "type": "server_error"}}),
        ),
        (
            400,
            json!({"error": {"code": 400, "message": "JSON schema conversion failed:\nUnrecognized schema: {\"maxLength\": 100000}", "type": "invalid_request_error"}}),
        ),
        // vLLM's guided decoding backends.
        (
            400,
            json!({"object": "error", "message": "The provided JSON schema contains features not supported by xgrammar.", "type": "BadRequestError", "code": 400}),
        ),
    ];
    for (status, body) in refusals {
        let fake = Fake::start(
            PATH,
            vec![
                Reply::json(status, body),
                Reply::json(200, answer(json!("{\"summary\":\"s\"}"), "stop")),
            ],
        )
        .await;
        let mut request = request();
        request.json_schema = Some(json!({"type": "object"}));
        let completion = openai(http_config(&fake.base_url))
            .complete(&request)
            .await
            .unwrap_or_else(|error| panic!("HTTP {status}: {error}"));
        assert_eq!(completion.text, "{\"summary\":\"s\"}");
        let sent = fake.requests();
        assert!(
            sent[1].body.get("response_format").is_none(),
            "HTTP {status}"
        );
    }
}

#[tokio::test]
async fn a_400_about_something_else_is_not_retried_without_the_schema() {
    let fake = Fake::start(
        PATH,
        vec![Reply::json(
            400,
            json!({"error": {"message": "This model's maximum context length is 8192 tokens"}}),
        )],
    )
    .await;
    let mut request = request();
    request.json_schema = Some(json!({"type": "object"}));
    let error = openai(http_config(&fake.base_url))
        .complete(&request)
        .await
        .unwrap_err();
    assert!(!error.is_retryable());
    assert_eq!(fake.requests().len(), 1);
}

#[tokio::test]
async fn an_answer_cut_off_at_max_tokens_is_continued() {
    let (result, fake) = call(vec![
        Reply::json(200, answer(json!("The first half, "), "length")),
        Reply::json(200, answer(json!("and the second."), "stop")),
    ])
    .await;
    let completion = result.unwrap();
    assert_eq!(completion.text, "The first half, and the second.");
    assert_eq!(completion.continuations, 1);
    assert_eq!(
        completion.usage,
        TokenUsage {
            prompt: 22,
            completion: 14,
            total: 36
        }
    );
    let sent = fake.requests();
    assert_eq!(sent.len(), 2);
    let messages = sent[1].body["messages"].as_array().unwrap().clone();
    assert_eq!(messages.len(), 4);
    assert_eq!(messages[2]["role"], "assistant");
    assert_eq!(messages[2]["content"], "The first half, ");
    assert_eq!(messages[3]["role"], "user");
    assert!(
        messages[3]["content"]
            .as_str()
            .unwrap()
            .contains("Continue exactly where it stopped")
    );
}

#[tokio::test]
async fn an_answer_still_cut_off_after_max_continuations_fails_for_good() {
    let (result, fake) = call_with(
        vec![Reply::json(200, answer(json!("more "), "length"))],
        |config| config.max_continuations = 1,
    )
    .await;
    let error = result.unwrap_err();
    assert_eq!(
        error.kind(),
        &LlmErrorKind::Truncated {
            max_tokens: 300,
            continuations: 1
        }
    );
    assert!(!error.is_retryable());
    assert!(error.to_string().contains("max_tokens (300)"), "{error}");
    assert!(error.to_string().contains("max_continuations"), "{error}");
    assert_eq!(fake.requests().len(), 2);

    // All of it spent on reasoning: nothing to continue from.
    let reasoning_only = error_of(Reply::json(
        200,
        answer(json!("<think>still thinking"), "length"),
    ))
    .await;
    assert!(matches!(
        reasoning_only.kind(),
        LlmErrorKind::Truncated { .. }
    ));
}

#[tokio::test]
async fn content_filters_and_refusals_fail_for_good_with_the_reason() {
    let filtered = error_of(Reply::json(200, answer(json!("partial"), "content_filter"))).await;
    assert!(!filtered.is_retryable());
    assert!(
        filtered.to_string().contains("content_filter"),
        "{filtered}"
    );

    let mut refusal = answer(Value::Null, "stop");
    refusal["choices"][0]["message"]["refusal"] = json!("I can't help with that.");
    let refused = error_of(Reply::json(200, refusal)).await;
    assert!(matches!(refused.kind(), LlmErrorKind::Refused { .. }));
    assert!(refused.to_string().contains("I can't help with that."));
}

#[tokio::test]
async fn usage_in_odd_shapes_keeps_the_answer() {
    let usage_of = |usage: Value| {
        let mut body = answer(json!("one two three"), "stop");
        body["usage"] = usage;
        Reply::json(200, body)
    };
    let cases = [
        (
            json!({"prompt_tokens": 11, "completion_tokens": 7}),
            (11, 7, 18),
        ),
        (json!({"input_tokens": 11, "output_tokens": 7}), (11, 7, 18)),
        (
            json!({"prompt_tokens": 11.0, "completion_tokens": 7.0, "total_tokens": 18.0}),
            (11, 7, 18),
        ),
        (
            json!({"prompt_tokens": null, "completion_tokens": 7, "total_tokens": 18,
                   "prompt_tokens_details": {"cached_tokens": 0}, "completion_tokens_details": {"reasoning_tokens": 3}}),
            (11, 7, 18),
        ),
    ];
    for (usage, (prompt, completion, total)) in cases {
        let (result, _) = call(vec![usage_of(usage.clone())]).await;
        assert_eq!(
            result.unwrap().usage,
            TokenUsage {
                prompt,
                completion,
                total
            },
            "{usage}"
        );
    }
    let mut without = answer(json!("one two three"), "stop");
    without.as_object_mut().unwrap().remove("usage");
    let (result, _) = call(vec![Reply::json(200, without)]).await;
    let usage = result.unwrap().usage;
    assert_eq!(usage.completion, 4, "estimated");
    assert!(usage.prompt > 0);
    assert_eq!(usage.total, usage.prompt + usage.completion);
}

#[tokio::test]
async fn broken_text_is_decoded_leniently() {
    let body = r#"{"choices":[{"index":0,"message":{"content":"half an emoji \ud83d, a lone low \ude00, a pair \ud83d\ude00"},"finish_reason":"stop"}]}"#;
    assert_eq!(
        text_of(Reply::raw(200, body)).await,
        "half an emoji \u{FFFD}, a lone low \u{FFFD}, a pair \u{1F600}"
    );
    let high_then_other = r#"{"choices":[{"message":{"content":"\ud83d\u0041"}}]}"#;
    assert_eq!(text_of(Reply::raw(200, high_then_other)).await, "\u{FFFD}A");

    let mut bytes = br#"{"choices":[{"message":{"content":"bad "#.to_vec();
    bytes.extend_from_slice(&[0xFF, 0xFE]);
    bytes.extend_from_slice(br#" bytes"}}]}"#);
    assert_eq!(
        text_of(Reply::raw(200, bytes)).await,
        "bad \u{FFFD}\u{FFFD} bytes"
    );
}

#[tokio::test]
async fn answer_shapes_real_servers_send() {
    // Content as parts.
    let parts = json!([{"type": "text", "text": "Hello "}, {"type": "text", "text": "world"}]);
    assert_eq!(
        text_of(Reply::json(200, answer(parts, "stop"))).await,
        "Hello world"
    );

    // No content, a tool call instead (JSON mode on some servers).
    let mut tool = answer(Value::Null, "tool_calls");
    tool["choices"][0]["message"]["tool_calls"] = json!([{"id": "c1", "type": "function", "function": {"name": "answer", "arguments": "{\"a\":1}"}}]);
    assert_eq!(text_of(Reply::json(200, tool)).await, "{\"a\":1}");

    // Reasoning beside the content is not the answer.
    let mut deepseek = answer(json!("The answer."), "stop");
    deepseek["choices"][0]["message"]["reasoning_content"] = json!("Let me think.");
    deepseek["choices"][0]["message"]["reasoning"] = json!("More thought.");
    assert_eq!(text_of(Reply::json(200, deepseek)).await, "The answer.");

    // Reasoning inside it neither.
    assert_eq!(
        text_of(Reply::json(
            200,
            answer(json!("<think>\nhmm\n</think>\n\nThe answer."), "stop")
        ))
        .await,
        "The answer."
    );

    // Several choices: index 0, wherever it is listed.
    let mut several = answer(json!("second"), "stop");
    several["choices"] = json!([
        {"index": 1, "message": {"content": "second"}, "finish_reason": "stop"},
        {"index": 0, "message": {"content": "first"}, "finish_reason": "stop"}
    ]);
    assert_eq!(text_of(Reply::json(200, several)).await, "first");

    // The legacy completions shape.
    assert_eq!(
        text_of(Reply::json(
            200,
            json!({"choices": [{"text": "legacy", "index": 0, "finish_reason": "stop"}]})
        ))
        .await,
        "legacy"
    );

    // Unknown fields everywhere, no id/model/created, no Content-Type, an unknown finish
    // reason.
    let bare = json!({
        "choices": [{"message": {"content": "bare", "extra": {"x": [1]}}, "finish_reason": "eos", "logprobs": null}],
        "system_fingerprint": "fp", "x_groq": {"id": "q"}
    });
    let (result, _) = call(vec![Reply::raw(200, bare.to_string())]).await;
    let completion = result.unwrap();
    assert_eq!(completion.text, "bare");
    assert_eq!(completion.response_model, None);
    assert_eq!(completion.finish_reason.as_deref(), Some("eos"));

    // A wrong Content-Type.
    assert_eq!(
        text_of(
            Reply::raw(200, answer(json!("typed wrong"), "stop").to_string())
                .header("content-type", "text/html")
        )
        .await,
        "typed wrong"
    );
}

#[tokio::test]
async fn a_stream_nobody_asked_for_is_assembled() {
    let chunk = |delta: Value, finish: Value| json!({"id": "c", "model": "m-1", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
    let body = format!(
        "data: {}\n\ndata: {}\n\ndata: {}\n\ndata: {}\n\ndata: [DONE]\n\n",
        chunk(json!({"role": "assistant", "content": ""}), Value::Null),
        chunk(json!({"content": "Hello "}), Value::Null),
        chunk(json!({"content": "there"}), json!("stop")),
        json!({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}}),
    );
    // No Content-Type at all, and not asked to stream.
    let (result, fake) = call(vec![Reply::raw(200, body)]).await;
    let completion = result.unwrap();
    assert_eq!(completion.text, "Hello there");
    assert_eq!(
        completion.usage,
        TokenUsage {
            prompt: 5,
            completion: 2,
            total: 7
        }
    );
    assert_eq!(completion.response_model.as_deref(), Some("m-1"));
    assert!(fake.requests()[0].body.get("stream").is_none());
}

#[tokio::test]
async fn errors_inside_a_200_are_classified_by_their_code() {
    let overloaded = error_of(Reply::json(
        200,
        json!({"error": {"message": "Provider overloaded", "code": 502}}),
    ))
    .await;
    assert!(overloaded.is_retryable(), "{overloaded}");
    assert!(overloaded.to_string().contains("Provider overloaded"));

    let bad = error_of(Reply::json(
        200,
        json!({"error": {"message": "Invalid model", "type": "invalid_request_error", "code": "model_not_found"}}),
    ))
    .await;
    assert!(!bad.is_retryable(), "{bad}");
    assert!(matches!(bad.kind(), LlmErrorKind::Api { status: 200, .. }));
}

#[tokio::test]
async fn statuses_are_classified() {
    for status in [408, 409, 425, 429, 500, 502, 503, 504, 529] {
        let error = error_of(Reply::json(
            status,
            json!({"error": {"message": "try later"}}),
        ))
        .await;
        assert!(error.is_retryable(), "{status}: {error}");
        assert!(error.to_string().contains(&status.to_string()));
    }
    for status in [400, 401, 403, 404, 422] {
        let error = error_of(Reply::json(status, json!({"error": {"message": "no"}}))).await;
        assert!(!error.is_retryable(), "{status}: {error}");
    }
}

#[tokio::test]
async fn errors_say_where_and_what_to_do() {
    let not_found = error_of(Reply::raw(404, "404 page not found")).await;
    let text = not_found.to_string();
    assert!(text.contains("\"openai\""), "{text}");
    assert!(text.contains("\"gpt-test\""), "{text}");
    assert!(text.contains("/v1/chat/completions"), "{text}");
    assert!(text.contains("missing /v1"), "{text}");

    let unauthorized = error_of(Reply::json(
        401,
        json!({"error": {"message": "Incorrect API key provided: sk-test-***4242", "code": "invalid_api_key"}}),
    ))
    .await;
    assert!(!unauthorized.is_retryable());
    assert!(unauthorized.to_string().contains("api_key_env"));

    // A server that echoes the key it refuses: the error (logged, recorded, published) does not.
    for body in [
        json!({"error": {"message": format!("Incorrect API key provided: {API_KEY}."), "code": "invalid_api_key"}}),
        json!({"error": {"message": "bad key", "code": API_KEY}}),
    ] {
        let echoed = error_of(Reply::json(401, body)).await;
        let text = echoed.to_string();
        assert!(!text.contains(API_KEY), "{text}");
        assert!(!format!("{echoed:?}").contains(API_KEY));
        assert!(text.contains("[redacted API key]"), "{text}");
    }
    let proxied = error_of(Reply::raw(
        502,
        format!("<html><title>bad gateway for {API_KEY}</title></html>"),
    ))
    .await;
    assert!(!proxied.to_string().contains(API_KEY), "{proxied}");
}

#[tokio::test]
async fn rate_limits_say_when_to_come_back_and_quota_is_permanent() {
    let limited = error_of(
        Reply::json(
            429,
            json!({"error": {"message": "Rate limit reached", "code": "rate_limit_exceeded"}}),
        )
        .header("retry-after", "3"),
    )
    .await;
    assert!(limited.is_retryable());
    assert_eq!(limited.retry_after(), Some(Duration::from_secs(3)));

    let reset = error_of(
        Reply::json(429, json!({"error": {"message": "slow down"}}))
            .header("x-ratelimit-reset-requests", "20ms")
            .header("x-ratelimit-reset-tokens", "6m0s"),
    )
    .await;
    assert_eq!(reset.retry_after(), Some(Duration::from_secs(360)));

    let ms = error_of(Reply::raw(503, "busy").header("retry-after-ms", "1500")).await;
    assert_eq!(ms.retry_after(), Some(Duration::from_millis(1500)));

    let quota = error_of(Reply::json(
        429,
        json!({"error": {"message": "You exceeded your current quota, please check your plan and billing details.",
                         "type": "insufficient_quota", "code": "insufficient_quota"}}),
    ))
    .await;
    assert!(!quota.is_retryable(), "{quota}");
    assert!(quota.to_string().contains("credit"), "{quota}");
}

#[tokio::test]
async fn a_proxy_page_is_a_retryable_error_with_its_title() {
    let page = "<!DOCTYPE html><html><head><title>504 Gateway Time-out</title></head><body><center><h1>504 Gateway Time-out</h1></center><hr><center>nginx</center></body></html>";
    let error = error_of(Reply::raw(504, page).header("content-type", "text/html")).await;
    assert!(error.is_retryable());
    assert!(
        error
            .to_string()
            .contains("an HTML page: 504 Gateway Time-out"),
        "{error}"
    );

    let on_200 = error_of(Reply::raw(200, page)).await;
    assert!(
        matches!(on_200.kind(), LlmErrorKind::Malformed(_)),
        "{on_200}"
    );
    assert!(
        on_200.to_string().contains("504 Gateway Time-out"),
        "{on_200}"
    );
}

#[tokio::test]
async fn no_choices_or_no_text_is_permanent() {
    let none = error_of(Reply::json(200, json!({"choices": []}))).await;
    assert!(matches!(none.kind(), LlmErrorKind::Malformed(_)), "{none}");
    let empty = error_of(Reply::json(200, answer(json!("  "), "stop"))).await;
    assert_eq!(empty.kind(), &LlmErrorKind::EmptyContent);
    assert!(!empty.is_retryable());
}

#[tokio::test]
async fn unreachable_and_hung_servers_are_retryable() {
    // A port that was just free: nothing listens there any more.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let refused = openai(http_config(&format!("http://{addr}/v1")))
        .complete(&request())
        .await
        .unwrap_err();
    assert!(refused.is_retryable(), "{refused}");
    assert!(
        matches!(refused.kind(), LlmErrorKind::Transport { .. }),
        "{refused}"
    );

    // Headers, then nothing: the idle timeout ends it.
    let hung = error_of(Reply::hang()).await;
    assert!(hung.is_retryable(), "{hung}");
    assert!(
        matches!(hung.kind(), LlmErrorKind::Timeout { .. }),
        "{hung}"
    );
}

#[tokio::test]
async fn streams_text_to_the_sink_and_assembles_the_completion() {
    let chunk = |content: &str, finish: Value| json!({"model": "m-2", "choices": [{"index": 0, "delta": {"content": content, "reasoning_content": "x"}, "finish_reason": finish}]});
    let reply = Reply::events(&[
        (None, chunk("Hel", Value::Null)),
        (None, chunk("lo", Value::Null)),
        (None, chunk("!", json!("stop"))),
        (
            None,
            json!({"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}}),
        ),
        (None, json!("[DONE]")),
    ]);
    let fake = Fake::start(PATH, vec![reply]).await;
    let mut config = http_config(&fake.base_url);
    config.stream = true;
    let deltas = Mutex::new(Vec::new());
    let sink = |piece: &str| deltas.lock().unwrap().push(piece.to_owned());
    let completion = openai(config)
        .complete_streaming(&request(), Some(&sink))
        .await
        .unwrap();
    assert_eq!(completion.text, "Hello!");
    assert_eq!(*deltas.lock().unwrap(), ["Hel", "lo", "!"]);
    assert_eq!(
        completion.usage,
        TokenUsage {
            prompt: 9,
            completion: 3,
            total: 12
        }
    );
    assert_eq!(completion.finish_reason.as_deref(), Some("stop"));
    let body = &fake.requests()[0].body;
    assert_eq!(body["stream"], true);
    assert_eq!(body["stream_options"]["include_usage"], true);
}

#[tokio::test]
async fn a_stream_that_breaks_off_or_carries_an_error_fails() {
    let chunk =
        json!({"choices": [{"index": 0, "delta": {"content": "Hel"}, "finish_reason": null}]});
    let broken = error_of(Reply::events(&[(None, chunk.clone())])).await;
    assert!(broken.is_retryable(), "{broken}");

    let failed = error_of(Reply::events(&[
        (None, chunk),
        (
            None,
            json!({"error": {"message": "upstream overloaded", "type": "server_error"}}),
        ),
    ]))
    .await;
    assert!(failed.is_retryable(), "{failed}");
    assert!(failed.to_string().contains("upstream overloaded"));
}

#[tokio::test]
async fn concurrency_is_limited_per_provider() {
    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    #[derive(Clone, Default)]
    struct Counts {
        running: Arc<AtomicUsize>,
        most: Arc<AtomicUsize>,
    }
    let counts = Counts::default();
    let router = axum::Router::new()
        .route(
            "/v1/chat/completions",
            axum::routing::post(
                |axum::extract::State(counts): axum::extract::State<Counts>| async move {
                    let now = counts.running.fetch_add(1, Ordering::SeqCst) + 1;
                    counts.most.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(30)).await;
                    counts.running.fetch_sub(1, Ordering::SeqCst);
                    axum::Json(answer(json!("ok"), "stop"))
                },
            ),
        )
        .with_state(counts.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });

    let mut config = http_config(&format!("http://{addr}/v1"));
    config.max_concurrency = Some(2);
    let provider = openai(config);
    let request = request();
    let calls = (0..6).map(|_| provider.complete(&request));
    for result in futures::future::join_all(calls).await {
        result.unwrap();
    }
    assert_eq!(counts.most.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn the_circuit_breaker_fails_fast_once_open() {
    let fake = Fake::start(PATH, vec![Reply::raw(503, "down")]).await;
    let mut config = http_config(&fake.base_url);
    config.circuit_breaker.failure_threshold = 2;
    config.circuit_breaker.cool_down_secs = 60;
    let provider = openai(config);
    for _ in 0..2 {
        let error = provider.complete(&request()).await.unwrap_err();
        assert!(matches!(
            error.kind(),
            LlmErrorKind::Api { status: 503, .. }
        ));
    }
    let fast = provider.complete(&request()).await.unwrap_err();
    assert!(
        matches!(fast.kind(), LlmErrorKind::CircuitOpen { .. }),
        "{fast}"
    );
    assert!(fast.is_retryable());
    let wait = fast.retry_after().unwrap();
    assert!(
        wait > Duration::from_secs(50) && wait <= Duration::from_secs(60),
        "{wait:?}"
    );
    assert_eq!(fake.requests().len(), 2, "the open circuit sent nothing");
}

#[tokio::test]
async fn permanent_errors_do_not_open_the_circuit() {
    let fake = Fake::start(PATH, vec![Reply::raw(400, "bad")]).await;
    let mut config = http_config(&fake.base_url);
    config.circuit_breaker.failure_threshold = 1;
    let provider = openai(config);
    for _ in 0..3 {
        let error = provider.complete(&request()).await.unwrap_err();
        assert!(matches!(
            error.kind(),
            LlmErrorKind::Api { status: 400, .. }
        ));
    }
    assert_eq!(fake.requests().len(), 3);
}
