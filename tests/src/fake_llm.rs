//! A local server that speaks OpenAI's chat completions API, standing in for a paid LLM in
//! end-to-end tests.
//!
//! It records every request and answers deterministically in the seed's sections. Its
//! insight and decision lines name the step found in the user prompt ([`insight_line`],
//! [`decision_line`]), so a test can check that a later step's prompt carries the knowledge an
//! earlier step shared. Failures can be scripted ([`FakeLlm::fail_next`]) and answers slowed
//! ([`FakeLlm::set_latency`]). Asked to ([`FakeLlm::judge_knowledge`]), it also confirms,
//! supersedes or flags a conflict with every knowledge item its prompt shows
//! ([`verdict_line`]), shares a constraint ([`FakeLlm::share_constraint`]) or asks teammates
//! questions ([`FakeLlm::ask_questions`]). The server stops when the `FakeLlm` is dropped.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use tokio::sync::oneshot;

/// One chat completion request the fake received.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedRequest {
    pub model: String,
    pub system: String,
    pub user: String,
    pub temperature: Option<f64>,
    pub max_tokens: Option<u64>,
    /// The `Authorization` header, if any (`Bearer <key>`).
    pub authorization: Option<String>,
    /// The HTTP status the fake answered with.
    pub status: u16,
    /// When the request arrived.
    pub received_at: std::time::Instant,
}

impl RecordedRequest {
    /// The step named on the user prompt's `Step: ` line.
    pub fn step_name(&self) -> Option<&str> {
        step_name(&self.user)
    }
}

/// The insight the fake reports for a step.
pub fn insight_line(step_name: &str) -> String {
    format!("- Insight from {step_name}: later steps can build on this.")
}

/// The decision the fake reports for a step.
pub fn decision_line(step_name: &str) -> String {
    format!("- Decision from {step_name}: proceed as planned.")
}

/// The line by which the fake judges the knowledge item shown as `handle` (`K-1a2b3c4d`):
/// `verdict` is `confirms`, `supersedes` or `conflicts`.
pub fn verdict_line(verdict: &str, handle: &str, step_name: &str) -> String {
    format!("- [{verdict} {handle}] Judged by {step_name}.")
}

/// The knowledge handles a prompt shows (`[K-` and 8 hex digits`]`), in order.
fn handles(prompt: &str) -> Vec<String> {
    prompt
        .match_indices("[K-")
        .filter_map(|(at, _)| {
            let handle = prompt.get(at + 1..at + 11)?;
            let closed = prompt.get(at + 11..at + 12) == Some("]");
            (closed && handle[2..].chars().all(|c| c.is_ascii_hexdigit()))
                .then(|| handle.to_owned())
        })
        .collect()
}

/// The question the fake raises for a step.
pub fn question_line(step_name: &str) -> String {
    format!("- Question from {step_name}: is anything missing?")
}

#[derive(Default)]
struct Script {
    requests: Vec<RecordedRequest>,
    /// Statuses (and `Retry-After` seconds) to answer the next requests with, one per request.
    failures: VecDeque<(StatusCode, Option<u64>)>,
    latency: Duration,
    /// Requests whose client hung up before the answer.
    abandoned: usize,
    /// Characters of filler added to every answer's output.
    padding: usize,
    /// Reviews still to answer with "CHANGES REQUESTED".
    rejections: usize,
    /// What answers say of the knowledge their prompt shows (`confirms`, ...), if anything.
    verdict: Option<&'static str>,
    /// A constraint every step's answer shares.
    constraint: Option<String>,
    /// Lines a step's first answer adds to its questions (`@name: question`), once per step.
    asks: Vec<String>,
    /// Steps (by name) whose next request fails, with the status.
    failing_steps: Vec<(String, StatusCode)>,
    /// The output of the answer to a re-planning step (`Re-plan the run`).
    plan: Option<String>,
    /// The participant a coordinator agent chooses (by name) in a `Choose who takes` step.
    delegate_to: Option<String>,
    /// How long a teammate takes to answer a question.
    question_delay: Duration,
    /// The percentage of step requests answered with HTTP 429 and `Retry-After` (seconds).
    rate_limit: Option<(u64, u64)>,
    /// Step requests counted while `rate_limit` was set.
    rate_limit_calls: u64,
    /// While true, step requests are recorded and then wait unanswered.
    held: tokio::sync::watch::Sender<bool>,
}

impl Script {
    /// HTTP 429 for `percent` of the step requests, evenly spread, while a rate limit is set.
    fn rate_limited(&mut self) -> Option<(StatusCode, Option<u64>)> {
        let (percent, retry_after_secs) = self.rate_limit?;
        let n = self.rate_limit_calls;
        self.rate_limit_calls += 1;
        ((n + 1) * percent / 100 > n * percent / 100)
            .then_some((StatusCode::TOO_MANY_REQUESTS, Some(retry_after_secs)))
    }
}

type Shared = Arc<Mutex<Script>>;

fn lock(script: &Shared) -> MutexGuard<'_, Script> {
    // A test that panicked while holding the lock already failed; keep serving the others.
    script
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub struct FakeLlm {
    addr: SocketAddr,
    script: Shared,
    stop: Option<oneshot::Sender<()>>,
}

impl FakeLlm {
    /// Starts the server on a free port of 127.0.0.1.
    pub async fn start() -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let addr = listener.local_addr()?;
        let script = Shared::default();
        let router = Router::new()
            .route("/v1/chat/completions", post(complete))
            .with_state(script.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        Ok(Self {
            addr,
            script,
            stop: Some(stop),
        })
    }

    /// What to configure as the provider's `base_url`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.script).requests.clone()
    }

    /// Answers the next request for the step named `step` with HTTP `status`, once.
    pub fn fail_step(&self, step: &str, status: u16) {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        lock(&self.script)
            .failing_steps
            .push((step.to_owned(), status));
    }

    /// Answers a coordinator agent's choice (a step `Choose who takes …`) with the participant
    /// named `name`, by the id its prompt lists for it.
    pub fn delegate_to(&self, name: &str) {
        lock(&self.script).delegate_to = Some(name.to_owned());
    }

    /// Answers a re-planning step (`Re-plan the run`) with `plan` as its output.
    pub fn propose_plan(&self, plan: &str) {
        lock(&self.script).plan = Some(plan.to_owned());
    }

    /// Answers the next `n` requests with HTTP `status` and an OpenAI-style error body.
    pub fn fail_next(&self, n: usize, status: u16) {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        lock(&self.script)
            .failures
            .extend(std::iter::repeat_n((status, None), n));
    }

    /// Answers the next `n` requests with HTTP 429 and `Retry-After: retry_after_secs`.
    pub fn rate_limit_next(&self, n: usize, retry_after_secs: u64) {
        lock(&self.script).failures.extend(std::iter::repeat_n(
            (StatusCode::TOO_MANY_REQUESTS, Some(retry_after_secs)),
            n,
        ));
    }

    /// From now on, answers `percent` of the step requests (evenly spread) with HTTP 429 and
    /// `Retry-After: retry_after_secs`; `percent` 0 lifts the limit.
    pub fn rate_limit_share(&self, percent: u64, retry_after_secs: u64) {
        let mut script = lock(&self.script);
        script.rate_limit = (percent > 0).then_some((percent.min(100), retry_after_secs));
        script.rate_limit_calls = 0;
    }

    /// Keeps every step request from now on waiting, recorded but unanswered, until
    /// [`FakeLlm::release_answers`].
    pub fn hold_answers(&self) {
        lock(&self.script).held.send_replace(true);
    }

    /// Answers the step requests [`FakeLlm::hold_answers`] kept waiting, and those to come.
    pub fn release_answers(&self) {
        lock(&self.script).held.send_replace(false);
    }

    /// Delays every answer from now on by `latency`.
    pub fn set_latency(&self, latency: Duration) {
        lock(&self.script).latency = latency;
    }

    /// Answers the next `n` reviews (prompts asking for a verdict) with "CHANGES REQUESTED" and
    /// feedback; later reviews approve.
    pub fn reject_reviews(&self, n: usize) {
        lock(&self.script).rejections = n;
    }

    /// Pads every answer's output with `chars` characters from now on (a very long answer).
    pub fn set_output_padding(&self, chars: usize) {
        lock(&self.script).padding = chars;
    }

    /// From now on, every step's answer judges each knowledge item its prompt shows with one
    /// [`verdict_line`] in its insights: `verdict` is `confirms`, `supersedes` or `conflicts`.
    pub fn judge_knowledge(&self, verdict: &'static str) {
        lock(&self.script).verdict = Some(verdict);
    }

    /// From now on, every step's answer shares `text` as a constraint (`[constraint] text`).
    pub fn share_constraint(&self, text: &str) {
        lock(&self.script).constraint = Some(text.to_owned());
    }

    /// How many requests were abandoned by their client (a stopped call) before the answer.
    /// Every step's first answer (one without its questions' answers) also asks `lines`
    /// (`@architect: which database?`), so the step waits for its teammates.
    pub fn ask_questions(&self, lines: &[&str]) {
        lock(&self.script).asks = lines.iter().map(|l| (*l).to_owned()).collect();
    }

    /// Teammates take `delay` to answer a question.
    pub fn set_question_delay(&self, delay: Duration) {
        lock(&self.script).question_delay = delay;
    }

    pub fn abandoned(&self) -> usize {
        lock(&self.script).abandoned
    }

    /// Stops the server (as dropping it does).
    pub fn shutdown(mut self) {
        self.stop_serving();
    }

    fn stop_serving(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Drop for FakeLlm {
    fn drop(&mut self) {
        self.stop_serving();
    }
}

async fn complete(
    State(script): State<Shared>,
    headers: axum::http::HeaderMap,
    body: String,
) -> Response {
    let Ok(request) = serde_json::from_str::<Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, "request body is not JSON");
    };
    let message = |role: &str| {
        request["messages"]
            .as_array()
            .and_then(|messages| messages.iter().find(|m| m["role"] == role))
            .and_then(|m| m["content"].as_str())
            .unwrap_or_default()
            .to_owned()
    };
    let mut recorded = RecordedRequest {
        model: request["model"].as_str().unwrap_or_default().to_owned(),
        system: message("system"),
        user: message("user"),
        temperature: request["temperature"].as_f64(),
        max_tokens: request["max_tokens"].as_u64(),
        authorization: headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned),
        status: StatusCode::OK.as_u16(),
        received_at: std::time::Instant::now(),
    };
    let review = recorded.system.contains("## Verdict");
    if let Some(asked) = recorded.user.strip_prefix(QUESTION_PROMPT) {
        let delay = {
            let mut script = lock(&script);
            script.requests.push(recorded.clone());
            script.question_delay
        };
        tokio::time::sleep(delay).await;
        let asker = asked.split(" (").next().unwrap_or_default();
        let text = question_answer(persona(&recorded.system), asker);
        return completion(&recorded.model, &text, words(&recorded.user), words(&text));
    }
    let step = recorded.step_name().unwrap_or("an unnamed step").to_owned();
    let (failure, latency, padding, reject, verdict, constraint, asks, plan, mut held) = {
        let mut script = lock(&script);
        let failing = script
            .failing_steps
            .iter()
            .position(|(name, _)| *name == step);
        let failure = match failing {
            Some(at) => Some((script.failing_steps.remove(at).1, None)),
            None => script
                .failures
                .pop_front()
                .or_else(|| script.rate_limited()),
        };
        if let Some((status, _)) = failure {
            recorded.status = status.as_u16();
        }
        script.requests.push(recorded.clone());
        let reject = review && script.rejections > 0;
        if reject {
            script.rejections -= 1;
        }
        // Asked once per step: the attempt that has its answers finishes.
        let asks = if review || recorded.user.contains(ANSWERS_HEADER) {
            Vec::new()
        } else {
            script.asks.clone()
        };
        (
            failure,
            script.latency,
            script.padding,
            reject,
            script.verdict,
            script.constraint.clone(),
            asks,
            script
                .plan
                .clone()
                .filter(|_| step == REPLAN_STEP)
                .or_else(|| {
                    let name = script.delegate_to.as_deref()?;
                    step.starts_with(CHOOSING_STEP)
                        .then(|| choice(&recorded.user, name))
                        .flatten()
                }),
            script.held.subscribe(),
        )
    };
    // The sender lives as long as the server.
    let _ = held.wait_for(|held| !held).await;
    if !latency.is_zero() {
        // The server drops this handler when the client hangs up: the guard counts that.
        let pending = Pending {
            script: script.clone(),
            answered: false,
        };
        tokio::time::sleep(latency).await;
        pending.answered();
    }
    if let Some((status, retry_after)) = failure {
        let mut response = error(status, "scripted failure");
        if let Some(seconds) = retry_after {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(seconds),
            );
        }
        return response;
    }

    let text = if let Some(plan) = plan {
        format!("## Summary\nA smaller plan.\n\n## Output\n{plan}\n")
    } else if review {
        let verdict = if reject {
            "CHANGES REQUESTED"
        } else {
            "APPROVED"
        };
        format!(
            "## Verdict\n{verdict}\n\n## Feedback\n{}\n",
            review_feedback(reject)
        )
    } else {
        let mut extra: Vec<String> = constraint
            .iter()
            .map(|text| format!("- [constraint] {text}"))
            .collect();
        if let Some(verdict) = verdict {
            let shown = handles(&format!("{}\n{}", recorded.system, recorded.user));
            extra.extend(shown.iter().map(|h| verdict_line(verdict, h, &step)));
        }
        let text = answer_with(&step, &recorded.model, padding, &extra);
        if asks.is_empty() {
            text
        } else {
            format!("{text}{}\n", asks.join("\n"))
        }
    };
    let prompt_tokens = words(&recorded.system) + words(&recorded.user);
    let completion_tokens = words(&text);
    if request["stream"] == true {
        return streamed(&recorded.model, &text, prompt_tokens, completion_tokens);
    }
    completion(&recorded.model, &text, prompt_tokens, completion_tokens)
}

/// A whole chat completion answering `text`.
fn completion(model: &str, text: &str, prompt_tokens: usize, completion_tokens: usize) -> Response {
    axum::Json(json!({
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": "stop"
        }],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens
        }
    }))
    .into_response()
}

/// The name of the step in which a coordinator agent re-plans a failing run.
const REPLAN_STEP: &str = "Re-plan the run";
/// How the name of a step in which a coordinator agent chooses who takes another begins.
const CHOOSING_STEP: &str = "Choose who takes ";

/// A coordinator agent's choice of the participant named `name`, from the prompt's list of
/// participants (`- <id>: <name> (<role>), skills: …`).
fn choice(prompt: &str, name: &str) -> Option<String> {
    let id = prompt.lines().find_map(|line| {
        let (id, rest) = line.strip_prefix("- ")?.split_once(": ")?;
        rest.starts_with(&format!("{name} (")).then_some(id)
    })?;
    Some(json!({ "agentId": id, "reasoning": format!("{name} knows this code best.") }).to_string())
}

/// How the worker's prompt for a teammate's question begins, and how a step's prompt
/// introduces the answers to its questions.
const QUESTION_PROMPT: &str = "Question from ";
const ANSWERS_HEADER: &str = "Answers to your questions";

/// The agent a system prompt makes the model: `You are <name>, a <role>.`
fn persona(system: &str) -> &str {
    system
        .strip_prefix("You are ")
        .and_then(|rest| rest.split(',').next())
        .unwrap_or_default()
}

/// What the fake answers, as `agent`, to a question `asker` asked.
pub fn question_answer(agent: &str, asker: &str) -> String {
    format!("{agent} answers {asker}: use Postgres, and keep the rollback plan.")
}

/// The answer as OpenAI streams it (server-sent events): the text in pieces of about
/// [`STREAM_PIECE_CHARS`] characters, the finish reason, the usage, then `[DONE]`.
fn streamed(model: &str, text: &str, prompt_tokens: usize, completion_tokens: usize) -> Response {
    let chars: Vec<char> = text.chars().collect();
    let mut body = String::new();
    let mut event = |data: Value| body.push_str(&format!("data: {data}\n\n"));
    for piece in chars.chunks(STREAM_PIECE_CHARS) {
        let piece: String = piece.iter().collect();
        event(json!({"model": model, "choices": [{"index": 0, "delta": {"content": piece}}]}));
    }
    event(json!({"model": model, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}));
    event(json!({"model": model, "choices": [], "usage": {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens
    }}));
    body.push_str("data: [DONE]\n\n");
    (
        [(axum::http::header::CONTENT_TYPE, "text/event-stream")],
        body,
    )
        .into_response()
}

/// How long a streamed answer's pieces are.
pub const STREAM_PIECE_CHARS: usize = 40;

/// A request waiting for its answer.
struct Pending {
    script: Shared,
    answered: bool,
}

impl Pending {
    fn answered(mut self) {
        self.answered = true;
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.answered {
            lock(&self.script).abandoned += 1;
        }
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    let body = json!({"error": {"message": message, "type": "fake_llm", "code": status.as_u16()}});
    (status, axum::Json(body)).into_response()
}

fn step_name(user_prompt: &str) -> Option<&str> {
    user_prompt
        .lines()
        .find_map(|line| line.strip_prefix("Step: "))
        .map(str::trim)
}

fn words(text: &str) -> usize {
    text.split_whitespace().count()
}

/// The fake reviewer's feedback.
pub fn review_feedback(rejected: bool) -> &'static str {
    if rejected {
        "Name the error codes of every endpoint."
    } else {
        "Clear and complete."
    }
}

/// The default answer, with `extra` lines after the insight line.
fn answer_with(step: &str, model: &str, padding: usize, extra: &[String]) -> String {
    let filler = "x".repeat(padding);
    let insights = std::iter::once(insight_line(step))
        .chain(extra.iter().cloned())
        .collect::<Vec<_>>()
        .join("\n");
    format!(
        "## Summary\nFake LLM completed {step}.\n\n\
         ## Output\nDeliverable of {step}, written by {model}.{filler}\n\n\
         ## Insights\n{}\n\n\
         ## Decisions\n{}\n\n\
         ## Questions/Concerns\n{}\n",
        insights,
        decision_line(step),
        question_line(step),
    )
}
