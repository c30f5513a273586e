//! A client reads its own writes: a command answers once the read models show what it
//! appended, so the query sent right after it finds it. Every command response says where its
//! events are in the log (`Cadre-Log-Position`) and whether the read models had reached them
//! (`Cadre-Read-Models`).

// Test code: a panic is the failure report, in helpers as in tests.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use cadre_proto::streams::PROJECTIONS;
use cadre_proto::{AgentId, ExecutionId, TenantId, WorkflowId, subjects};
use cadre_runtime::bus::{self, EventBus};
use cadre_runtime::projection::ProjectionWatermark;
use cadre_tests::api::{agent, pipeline};
use cadre_tests::nats::NatsServer;
use cadre_tests::pg::TestDb;
use cadre_tests::stack::FAKE_PROVIDER;
use cadre_tests::{Stack, StackOptions, eventually};
use serde_json::{Value, json};
use sqlx::postgres::PgPoolOptions;
use tokio_util::sync::CancellationToken;

const ROUNDS: usize = 30;
const FINISH: Duration = Duration::from_secs(60);
/// Only a wait that failed to wake up gets this far.
const LONG: Duration = Duration::from_secs(60);
/// Where no Postgres listens.
const NO_DATABASE: &str = "postgres://postgres@127.0.0.1:1/cadre";

/// A command's answer with the headers about the read models.
#[derive(Debug)]
struct Answer {
    status: u16,
    location: Option<String>,
    position: u64,
    read_models: String,
    body: Value,
}

/// Sends a command and reads its answer; a command's answer always carries both headers.
async fn command(base: &str, path: &str, body: &Value) -> Answer {
    // A guard against a command that waits where it must not; no test waits this long.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let response = http
        .post(format!("{base}{path}"))
        .json(body)
        .send()
        .await
        .unwrap();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let (location, position, read_models) = (
        header("location"),
        header("cadre-log-position"),
        header("cadre-read-models"),
    );
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    Answer {
        status,
        location,
        position: position
            .unwrap_or_else(|| panic!("{path}: no Cadre-Log-Position ({status} {body})"))
            .parse()
            .unwrap(),
        read_models: read_models
            .unwrap_or_else(|| panic!("{path}: no Cadre-Read-Models ({status} {body})")),
        body,
    }
}

/// The command went through and the read models have its events.
fn current(answer: &Answer, status: u16) {
    assert_eq!(answer.status, status, "{}", answer.body);
    assert_eq!(answer.read_models, "current", "{answer:?}");
}

async fn stored_at(bus: &EventBus, filter: &str) -> u64 {
    bus.last_event(filter).await.unwrap().unwrap().sequence
}

fn tenant() -> TenantId {
    TenantId::default_tenant()
}

fn id_of(value: &Value, field: &str) -> String {
    value[field].as_str().unwrap().to_owned()
}

async fn register(stack: &Stack, name: &str, provider: &str) -> String {
    let answer = command(
        stack.api.base(),
        "/v1/agents",
        &agent(name, "analyst", &["research"], provider),
    )
    .await;
    current(&answer, 201);
    id_of(&answer.body, "id")
}

/// A one-step workflow run by `agent_id`.
async fn one_step_workflow(stack: &Stack, agent_id: &str) -> String {
    let answer = command(
        stack.api.base(),
        "/v1/workflows",
        &pipeline("One step", &[agent_id.to_owned()], &[&["research"]], 1),
    )
    .await;
    current(&answer, 201);
    id_of(&answer.body, "id")
}

#[tokio::test]
async fn a_created_workflow_can_be_read_right_away() {
    let stack = Stack::start().await;
    let ada = register(&stack, "Ada", "offline").await;
    for round in 0..ROUNDS {
        let answer = command(
            stack.api.base(),
            "/v1/workflows",
            &pipeline(
                &format!("Round {round}"),
                std::slice::from_ref(&ada),
                &[&["research"]],
                2,
            ),
        )
        .await;
        current(&answer, 201);
        let id = id_of(&answer.body, "id");
        let workflow = WorkflowId(id.parse().unwrap());
        assert_eq!(
            answer.position,
            stored_at(
                &stack.bus,
                &subjects::workflow_lifecycle(&tenant(), workflow)
            )
            .await,
            "the position is where the workflow's creation is stored"
        );

        let location = answer.location.unwrap();
        let got = stack.api.get(&location).await;
        assert_eq!(
            got.status, 200,
            "round {round}: GET {location}: {}",
            got.body
        );
        assert_eq!(got.body["id"], id.as_str());
        assert_eq!(got.body["name"], format!("Round {round}"));
        for path in [
            format!("/v1/workflows/{id}/knowledge"),
            format!("/v1/workflows/{id}/executions"),
        ] {
            let got = stack.api.get(&path).await;
            assert_eq!(got.status, 200, "round {round}: GET {path}: {}", got.body);
            assert_eq!(got.body, json!([]), "round {round}: GET {path}");
        }
    }
    stack.stop().await;
}

#[tokio::test]
async fn a_registered_agent_is_listed_right_away() {
    let stack = Stack::start().await;
    for round in 0..ROUNDS {
        let answer = command(
            stack.api.base(),
            "/v1/agents",
            &agent(
                &format!("Agent {round}"),
                "analyst",
                &["research"],
                "offline",
            ),
        )
        .await;
        current(&answer, 201);
        let id = id_of(&answer.body, "id");
        let agent_id = AgentId(id.parse().unwrap());
        assert_eq!(
            answer.position,
            stored_at(
                &stack.bus,
                &subjects::agent(&tenant(), agent_id, subjects::REGISTERED)
            )
            .await
        );

        let listed = stack.api.get("/v1/agents?limit=1000").await;
        assert_eq!(listed.status, 200, "{}", listed.body);
        let ids: Vec<&str> = listed
            .body
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["id"].as_str().unwrap())
            .collect();
        assert!(
            ids.contains(&id.as_str()),
            "round {round}: {id} not in {ids:?}"
        );
        assert_eq!(ids.len(), round + 1);
    }
    stack.stop().await;
}

/// The execution as the read models have it, right after its start was answered.
async fn assert_readable(stack: &Stack, workflow_id: &str, execution_id: &str, what: &str) {
    let got = stack
        .api
        .get(&format!("/v1/executions/{execution_id}"))
        .await;
    assert_eq!(got.status, 200, "{what}: {}", got.body);
    // Only the answer from the log, for a start the read models do not have yet, says
    // `pending`: the projected row starts `running`.
    let status = got.body["status"].as_str().unwrap();
    assert!(
        matches!(status, "running" | "completed"),
        "{what}: status {status} is not from the read model: {}",
        got.body
    );

    let listed = stack
        .api
        .get(&format!(
            "/v1/workflows/{workflow_id}/executions?limit=1000"
        ))
        .await;
    assert_eq!(listed.status, 200, "{what}: {}", listed.body);
    assert!(
        listed
            .body
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["id"] == execution_id),
        "{what}: {execution_id} not among the workflow's executions: {}",
        listed.body
    );

    let interactions = stack
        .api
        .get(&format!("/v1/executions/{execution_id}/interactions"))
        .await;
    assert_eq!(interactions.status, 200, "{what}: {}", interactions.body);
}

#[tokio::test]
async fn a_started_execution_can_be_read_right_away() {
    let stack = Stack::start().await;
    let ada = register(&stack, "Ada", "offline").await;
    let workflow_id = one_step_workflow(&stack, &ada).await;
    let start = format!("/v1/workflows/{workflow_id}/executions");
    for round in 0..ROUNDS {
        let answer = command(stack.api.base(), &start, &json!({})).await;
        current(&answer, 202);
        let execution_id = id_of(&answer.body, "executionId");
        let execution = ExecutionId(execution_id.parse().unwrap());
        assert_eq!(
            answer.position,
            stored_at(
                &stack.bus,
                &subjects::execution_started_in_any_workflow(&tenant(), execution)
            )
            .await
        );
        assert_readable(
            &stack,
            &workflow_id,
            &execution_id,
            &format!("round {round}"),
        )
        .await;
    }

    let empty = json!({});
    // Starts of one workflow queue on a lock; the wait for the read models happens after it,
    // so concurrent starts all get through and each answers with its own events.
    let answers =
        futures::future::join_all((0..8).map(|_| command(stack.api.base(), &start, &empty))).await;
    let mut positions = Vec::new();
    for answer in &answers {
        current(answer, 202);
        positions.push(answer.position);
        let execution_id = id_of(&answer.body, "executionId");
        assert_readable(&stack, &workflow_id, &execution_id, "a concurrent start").await;
    }
    positions.sort_unstable();
    positions.dedup();
    assert_eq!(positions.len(), answers.len(), "one position per start");
    stack.stop().await;
}

#[tokio::test]
async fn pause_resume_and_cancel_can_be_read_right_away() {
    let stack = Stack::start_with(StackOptions {
        llm_timeout_secs: 3600,
        ..Default::default()
    })
    .await;
    // Steps keep running until they are stopped.
    stack.llm.set_latency(Duration::from_secs(3600));
    let ada = register(&stack, "Ada", FAKE_PROVIDER).await;
    let workflow_id = one_step_workflow(&stack, &ada).await;
    let base = stack.api.base();

    for round in 0..3 {
        let started = command(
            base,
            &format!("/v1/workflows/{workflow_id}/executions"),
            &json!({}),
        )
        .await;
        current(&started, 202);
        let id = id_of(&started.body, "executionId");
        eventually(FINISH, "the step's LLM call", || async {
            (stack.llm.requests().len() == round + 1).then_some(())
        })
        .await;

        for (control, status) in [
            ("pause", "paused"),
            ("resume", "running"),
            ("cancel", "cancelled"),
        ] {
            let answer = command(base, &format!("/v1/executions/{id}/{control}"), &json!({})).await;
            current(&answer, 202);
            assert_eq!(answer.body["status"], status);
            let got = stack.api.get(&format!("/v1/executions/{id}")).await;
            assert_eq!(
                got.body["status"], status,
                "round {round}: GET after {control}: {}",
                got.body
            );
        }
        eventually(
            FINISH,
            "the cancelled step's call to be stopped",
            || async { (stack.llm.abandoned() == round + 1).then_some(()) },
        )
        .await;
    }

    for (control, paused) in [("pause", true), ("resume", false)] {
        let answer = command(
            base,
            &format!("/v1/workflows/{workflow_id}/{control}"),
            &json!({}),
        )
        .await;
        current(&answer, 200);
        let got = stack.api.get(&format!("/v1/workflows/{workflow_id}")).await;
        assert_eq!(
            got.body["status"] == "paused",
            paused,
            "GET after {control}: {}",
            got.body
        );
    }
    stack.stop().await;
}

/// Commands do not need Postgres: while it is down they answer at once, saying the read models
/// are behind, however long the configured wait.
#[tokio::test]
async fn without_postgres_commands_answer_without_waiting() {
    let nats = NatsServer::start();
    let stop = CancellationToken::new();
    let coordinator = cadre_coordinator::start(
        cadre_coordinator::Config {
            nats_url: nats.url.clone(),
            database_url: NO_DATABASE.to_owned(),
            http_addr: "127.0.0.1:0".parse().unwrap(),
            shards: 2,
            // Longer than the reply guard in `command`: waiting it out fails the test.
            read_your_writes_timeout_ms: 3_600_000,
            ..Default::default()
        },
        stop.clone(),
    )
    .await
    .unwrap();
    let base = format!("http://{}", coordinator.http_addr);
    let client = bus::connect(&nats.url, "cadre-tests").await.unwrap();
    let bus = EventBus::open(async_nats::jetstream::new(client), 1)
        .await
        .unwrap();

    for name in ["Ada", "Linus"] {
        let answer = command(
            &base,
            "/v1/agents",
            &agent(name, "analyst", &["research"], "offline"),
        )
        .await;
        assert_eq!(answer.status, 201, "{}", answer.body);
        assert_eq!(answer.read_models, "behind");
        let agent_id = AgentId(id_of(&answer.body, "id").parse().unwrap());
        assert_eq!(
            answer.position,
            stored_at(
                &bus,
                &subjects::agent(&tenant(), agent_id, subjects::REGISTERED)
            )
            .await
        );
    }
    // Queries do need it.
    let api = cadre_tests::Api::new(base);
    assert_eq!(api.get("/v1/agents").await.status, 503);

    stop.cancel();
    coordinator.wait().await.unwrap();
}

/// The shared watcher against a real database, without the projector: a checkpoint committed
/// with its notification wakes a waiter; one committed silently is found by polling.
#[tokio::test]
async fn the_watermark_follows_the_checkpoint_the_projector_commits() {
    let db = TestDb::create().await;
    let watermark = ProjectionWatermark::start(db.pool.clone());
    // As the projector commits: every projection moves its checkpoint and announces it.
    let commit = |sequence: i64, notify: bool| {
        let pool = db.pool.clone();
        async move {
            let mut tx = pool.begin().await.unwrap();
            sqlx::query(
                "INSERT INTO projection_checkpoints (projection, stream_sequence, updated_at)
                 SELECT projection, $2, now() FROM unnest($1::text[]) AS projection
                 ON CONFLICT (projection) DO UPDATE SET stream_sequence = excluded.stream_sequence",
            )
            .bind(PROJECTIONS)
            .bind(sequence)
            .execute(&mut *tx)
            .await
            .unwrap();
            if notify {
                sqlx::query(
                    "SELECT pg_notify('cadre_projection', projection || ':' || $2)
                     FROM unnest($1::text[]) AS projection",
                )
                .bind(PROJECTIONS)
                .bind(sequence.to_string())
                .execute(&mut *tx)
                .await
                .unwrap();
            }
            tx.commit().await.unwrap();
        }
    };

    let waiter = tokio::spawn({
        let watermark = watermark.clone();
        async move { watermark.wait_until(42, LONG).await }
    });
    commit(42, true).await;
    assert!(waiter.await.unwrap(), "woken by the notification");
    assert_eq!(watermark.checkpoint(), 42);

    commit(50, false).await;
    assert!(
        watermark.wait_while_readable(50, LONG).await,
        "found by the poll"
    );
    assert!(!watermark.unreadable());

    // Nothing to read: a readable wait gives up once the first read fails.
    let nowhere = PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(500))
        .connect_lazy(NO_DATABASE)
        .unwrap();
    let unreachable = ProjectionWatermark::start(nowhere);
    assert!(!unreachable.wait_while_readable(1, LONG).await);
    assert!(unreachable.unreadable());
    assert_eq!(unreachable.checkpoint(), 0);
}
