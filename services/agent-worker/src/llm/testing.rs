//! A local server that answers like a provider, scripted reply by reply, and records what it
//! was sent.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Response, StatusCode};
use axum::routing::post;
use serde_json::Value;

use super::ChatRequest;
use super::http::Timeouts;
use super::{Provider, ProviderConfig};
use crate::config::HttpProviderConfig;

/// The key the tests' providers are given; it must never show in an error or a Debug print.
pub(crate) const API_KEY: &str = "sk-test-SECRET-4242";

pub(crate) fn request() -> ChatRequest {
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

/// One scripted answer.
#[derive(Clone)]
pub(crate) struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Send the headers, then nothing.
    hang: bool,
}

impl Reply {
    pub fn json(status: u16, body: Value) -> Self {
        Self::raw(status, body.to_string()).header("content-type", "application/json")
    }

    /// A body as given, with no `Content-Type`.
    pub fn raw(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: body.into(),
            hang: false,
        }
    }

    /// Server-sent events, one `data:` line per item (and `event:` lines where given); a JSON
    /// string goes out raw (`[DONE]`).
    pub fn events(events: &[(Option<&str>, Value)]) -> Self {
        let mut body = String::new();
        for (name, data) in events {
            if let Some(name) = name {
                body.push_str(&format!("event: {name}\n"));
            }
            match data {
                Value::String(raw) => body.push_str(&format!("data: {raw}\n\n")),
                _ => body.push_str(&format!("data: {data}\n\n")),
            }
        }
        Self::raw(200, body).header("content-type", "text/event-stream")
    }

    pub fn hang() -> Self {
        Self {
            hang: true,
            ..Self::raw(200, "")
        }
        .header("content-type", "application/json")
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }
}

/// What the fake was sent.
#[derive(Debug, Clone)]
pub(crate) struct Recorded {
    pub headers: HeaderMap,
    pub body: Value,
}

#[derive(Clone)]
struct Script {
    replies: Arc<Mutex<VecDeque<Reply>>>,
    requests: Arc<Mutex<Vec<Recorded>>>,
}

pub(crate) struct Fake {
    /// Up to and including `/v1`.
    pub base_url: String,
    requests: Arc<Mutex<Vec<Recorded>>>,
}

impl Fake {
    /// Serves `replies` in order on `POST /v1{path}` (the last one again once they run out).
    pub async fn start(path: &str, replies: Vec<Reply>) -> Self {
        let script = Script {
            replies: Arc::new(Mutex::new(replies.into())),
            requests: Arc::default(),
        };
        let requests = script.requests.clone();
        let router = Router::new()
            .route(&format!("/v1{path}"), post(answer))
            .with_state(script);
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await });
        Self {
            base_url: format!("http://{addr}/v1"),
            requests,
        }
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }
}

async fn answer(State(script): State<Script>, headers: HeaderMap, body: Bytes) -> Response<Body> {
    let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
    script
        .requests
        .lock()
        .unwrap()
        .push(Recorded { headers, body });
    let reply = {
        let mut replies = script.replies.lock().unwrap();
        if replies.len() > 1 {
            replies.pop_front().unwrap()
        } else {
            replies.front().cloned().unwrap()
        }
    };
    let mut response = Response::builder().status(StatusCode::from_u16(reply.status).unwrap());
    for (name, value) in &reply.headers {
        response = response.header(name, value);
    }
    let body = if reply.hang {
        Body::from_stream(futures::stream::pending::<Result<Bytes, std::io::Error>>())
    } else {
        Body::from(reply.body)
    };
    response.body(body).unwrap()
}

/// Timeouts short enough for tests.
pub(crate) fn short_timeouts() -> Timeouts {
    Timeouts {
        total: Duration::from_secs(10),
        idle: Duration::from_millis(300),
        connect: Duration::from_secs(2),
    }
}

/// The settings tests start from: the test key, no breaker.
pub(crate) fn http_config(base_url: &str) -> HttpProviderConfig {
    let mut config = HttpProviderConfig::new(base_url);
    config.api_key = Some(API_KEY.to_owned().into());
    config.circuit_breaker.failure_threshold = 0;
    config
}

pub(crate) fn openai(config: HttpProviderConfig) -> Provider {
    Provider::build(
        "openai",
        &ProviderConfig::OpenAiCompatible(config),
        Some(short_timeouts()),
    )
    .unwrap()
}

pub(crate) fn anthropic(config: HttpProviderConfig) -> Provider {
    Provider::build(
        "claude",
        &ProviderConfig::Anthropic(config),
        Some(short_timeouts()),
    )
    .unwrap()
}
