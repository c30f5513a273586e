#![allow(clippy::unwrap_used)]
// SCRATCH: not to be committed.

use std::time::{Duration, Instant};

use cadre_projector::{Config, migrate, rebuild, run};
use cadre_proto::events::*;
use cadre_proto::model::*;
use cadre_proto::*;
use cadre_runtime::bus::EventBus;
use chrono::Utc;
use serde_json::json;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

fn config(max_batch: usize) -> Config {
    let port = std::fs::read_to_string("/tmp/projscratch/port").unwrap();
    Config {
        nats_url: format!("nats://127.0.0.1:{}", port.trim()),
        database_url: std::env::var("SCRATCH_DB").unwrap_or("postgres://postgres@127.0.0.1:5432/cadre_projector_scratch".into()),
        stream_replicas: 1,
        health_addr: "127.0.0.1:0".parse().unwrap(),
        max_batch,
    }
}

struct Ids {
    workflow: WorkflowId,
    agents: Vec<AgentProfile>,
    step: WorkflowStep,
}

fn step(id: &str) -> WorkflowStep {
    WorkflowStep {
        id: StepId::parse(id).unwrap(),
        name: format!("Step {id}"),
        description: "d".into(),
        step_type: StepType::Analysis,
        assigned_agent_role: None,
        preferred_agent_id: None,
        required_skills: vec![],
        depends_on: vec![],
        can_run_in_parallel: true,
        instructions: "i".into(),
        expected_output: "o".into(),
        timeout_minutes: None,
        validation_criteria: vec![],
        review_required: false,
        reviewer_role: None,
    }
}

fn agent(name: &str) -> AgentProfile {
    AgentProfile {
        id: AgentId::new(),
        name: name.into(),
        role: "dev".into(),
        backstory: "b".into(),
        skills: vec!["rust".into()],
        provider: "offline".into(),
        model: "m".into(),
        model_parameters: Default::default(),
    }
}

fn env(event: Event) -> Envelope {
    Envelope::new("/scratch", TenantId::default_tenant(), Utc::now(), event)
}

fn definition(ids: &Ids) -> WorkflowDefinition {
    WorkflowDefinition {
        id: ids.workflow,
        name: "wf".into(),
        description: "desc".into(),
        workflow_type: WorkflowType::Pipeline,
        participating_agents: ids.agents.iter().map(|a| a.id).collect(),
        coordinator_agent_id: Some(ids.agents[0].id),
        configuration: WorkflowConfiguration {
            steps: vec![ids.step.clone()],
            coordination: Default::default(),
            constraints: Default::default(),
        },
    }
}

/// One execution's events.
fn execution_events(ids: &Ids, number: u32, fail: bool) -> Vec<Envelope> {
    let ex = ExecutionId::new();
    let wf = ids.workflow;
    let a = &ids.agents[1];
    let s = &ids.step;
    let scheduled = env(Event::StepScheduled(Box::new(StepScheduled {
        execution_id: ex,
        workflow_id: wf,
        workflow_name: "wf".into(),
        step: s.clone(),
        attempt: 1,
        agent: a.clone(),
        reason: AssignmentReason::SkillMatch { matched: vec!["rust".into()], active_steps: 0 },
        coordinator_agent_id: Some(ids.agents[0].id),
        knowledge_sharing: true,
        knowledge_watermark: 0,
    })));
    let mut out = vec![
        env(Event::ExecutionStarted(Box::new(ExecutionStarted {
            execution_id: ex,
            workflow_id: wf,
            execution_number: number,
            trigger_reason: TriggerReason::Manual,
            triggered_by: Some("me".into()),
            workflow: definition(ids),
            agents: ids.agents.clone(),
        }))),
        scheduled.clone(),
        env(Event::StepStarted(StepStarted {
            execution_id: ex,
            workflow_id: wf,
            step_id: s.id.clone(),
            step_name: s.name.clone(),
            attempt: 1,
            agent_id: a.id,
            scheduled_event_id: scheduled.meta.id,
        })),
        env(Event::InteractionRecorded(InteractionRecorded {
            execution_id: ex,
            workflow_id: wf,
            from_agent_id: a.id,
            to_agent_id: None,
            interaction_type: InteractionType::Question,
            message: "Why?".into(),
            context_data: json!({"q": 1}),
            related_step_id: Some(s.id.clone()),
            requires_response: true,
        })),
        env(Event::KnowledgeShared(KnowledgeShared {
            knowledge_id: KnowledgeId::new(),
            workflow_id: wf,
            execution_id: ex,
            step_id: s.id.clone(),
            title: "Insights".into(),
            content: "x".repeat(300),
            knowledge_type: KnowledgeType::Insight,
            created_by_agent_id: a.id,
            relevance_score: 0.9,
            tags: vec!["t".into()],
        })),
    ];
    if fail {
        out.push(env(Event::StepFailed(StepFailed {
            execution_id: ex,
            workflow_id: wf,
            step_id: s.id.clone(),
            step_name: s.name.clone(),
            attempt: 1,
            agent_id: a.id,
            error: "boom\u{0}".into(),
        })));
        out.push(env(Event::ExecutionFailed(ExecutionFailed {
            execution_id: ex,
            workflow_id: wf,
            failed_step_id: Some(s.id.clone()),
            error: "step failed".into(),
        })));
    } else {
        out.push(env(Event::StepCompleted(Box::new(StepCompleted {
            execution_id: ex,
            workflow_id: wf,
            step_id: s.id.clone(),
            step_name: s.name.clone(),
            attempt: 1,
            agent_id: a.id,
            result: StepResult {
                summary: "sum".into(),
                output: "out".into(),
                insights: vec!["i".into()],
                decisions: vec![],
                questions: vec![],
                raw_response: "raw".into(),
                tokens: TokenUsage { prompt: 1, completion: 2, total: 3 },
            },
            provider: "offline".into(),
            model: "m".into(),
            duration_ms: 5,
        }))));
        out.push(env(Event::ExecutionCompleted(ExecutionCompleted {
            execution_id: ex,
            workflow_id: wf,
            final_output: json!({"s1": "out"}),
        })));
    }
    out
}

async fn checkpoint(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT stream_sequence FROM projection_checkpoints WHERE projection='read_models'")
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn wait_for(pool: &PgPool, seq: u64) {
    let start = Instant::now();
    while (checkpoint(pool).await as u64) < seq {
        assert!(start.elapsed() < Duration::from_secs(60), "timeout waiting for {seq}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn dump(pool: &PgPool) -> String {
    let mut out = String::new();
    for (table, key) in [
        ("agents", "id"),
        ("collaboration_workflows", "id"),
        ("workflow_executions", "id"),
        ("agent_interactions", "id"),
        ("collaboration_knowledge", "id"),
        ("projected_events", "event_id"),
        ("rejected_events", "stream_sequence"),
    ] {
        let rows: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT to_jsonb(t)::text FROM {table} t ORDER BY {key}"
        )))
        .fetch_all(pool)
        .await
        .unwrap();
        out.push_str(&format!("== {table} {}\n", rows.len()));
        for r in rows {
            out.push_str(&r);
            out.push('\n');
        }
    }
    out
}

async fn last_seq(bus: &EventBus) -> u64 {
    bus.stream().get_info().await.unwrap().state.last_sequence
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scratch() {
    let _t = cadre_runtime::telemetry::init("scratch");
    let cfg = config(1000);
    let pool = PgPool::connect(&cfg.database_url).await.unwrap();
    migrate(&pool).await.unwrap();
    let client = async_nats::connect(&cfg.nats_url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let bus = EventBus::open(js.clone(), 1).await.unwrap();

    // Live projection.
    let shutdown = CancellationToken::new();
    let live = tokio::spawn(run(cfg.clone(), shutdown.clone()));

    // A second replica: must wait as standby.
    let shutdown2 = CancellationToken::new();
    let standby = tokio::spawn(run(config(1000), shutdown2.clone()));

    let mut listener = sqlx::postgres::PgListener::connect(&cfg.database_url).await.unwrap();
    listener.listen("cadre_projection").await.unwrap();

    let ids = Ids { workflow: WorkflowId::new(), agents: vec![agent("Coord"), agent("Ada")], step: step("s1") };
    let mut events = vec![
        env(Event::AgentRegistered(AgentRegistered { agent: ids.agents[0].clone() })),
        env(Event::AgentRegistered(AgentRegistered { agent: ids.agents[1].clone() })),
        env(Event::WorkflowCreated(WorkflowCreated { workflow: definition(&ids) })),
    ];
    events.extend(execution_events(&ids, 1, false));
    events.extend(execution_events(&ids, 2, true));
    bus.publish_all(&events).await.unwrap();
    // Junk and a re-published copy without a msg id (beyond the duplicate window in effect).
    js.publish("cadre.events.default.junk", "{not json".into()).await.unwrap().await.unwrap();
    js.publish(events[5].nats_subject(), events[5].encode().into()).await.unwrap().await.unwrap();
    let target = last_seq(&bus).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    if live.is_finished() { println!("LIVE ENDED: {:?}", live.await); panic!(); }
    wait_for(&pool, target).await;
    let note = tokio::time::timeout(Duration::from_secs(5), listener.recv()).await.unwrap().unwrap();
    println!("NOTIFY payload {}", note.payload());

    let live_dump = dump(&pool).await;
    println!("{live_dump}");
    let interactions: i64 = sqlx::query_scalar("SELECT count(*) FROM agent_interactions").fetch_one(&pool).await.unwrap();
    assert_eq!(interactions, 2 * 5);
    let rejected: i64 = sqlx::query_scalar("SELECT count(*) FROM rejected_events").fetch_one(&pool).await.unwrap();
    assert_eq!(rejected, 1);
    let wf: (String, i32, Option<i32>) = sqlx::query_as("SELECT status, execution_count, actual_duration FROM collaboration_workflows")
        .fetch_one(&pool).await.unwrap();
    println!("workflow {wf:?}");
    assert_eq!(wf.0, "failed");
    assert_eq!(wf.1, 2);

    // rebuild must wait while run holds the lock.
    let waiting = tokio::spawn(rebuild(config(1)));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!waiting.is_finished(), "rebuild must wait for the lock");
    shutdown.cancel();
    live.await.unwrap().unwrap();
    // Now either the standby or the rebuild gets the lock. Stop the standby so rebuild gets it.
    shutdown2.cancel();
    standby.await.unwrap().unwrap();
    let report = waiting.await.unwrap().unwrap();
    println!("rebuild(max_batch=1): {report}");
    let one_by_one = dump(&pool).await;
    assert_eq!(one_by_one, live_dump, "batch size 1 replay differs");
    let report = rebuild(config(1000)).await.unwrap();
    println!("rebuild(max_batch=1000): {report}");
    assert_eq!(dump(&pool).await, live_dump, "batch 1000 replay differs");

    // Simulated restore: DB reset behind the consumer's back, then run again.
    sqlx::query("TRUNCATE agents, collaboration_workflows, workflow_executions, agent_interactions, collaboration_knowledge, projected_events, rejected_events").execute(&pool).await.unwrap();
    sqlx::query("UPDATE projection_checkpoints SET stream_sequence = 0").execute(&pool).await.unwrap();
    let shutdown = CancellationToken::new();
    let live = tokio::spawn(run(cfg.clone(), shutdown.clone()));
    wait_for(&pool, target).await;
    assert_eq!(dump(&pool).await, live_dump, "restored replay differs");

    // Throughput: many executions while live.
    let n: usize = std::env::var("SCRATCH_N").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
    let mut bulk = Vec::new();
    for i in 0..n {
        bulk.extend(execution_events(&ids, 3 + i as u32, i % 10 == 0));
    }
    let t = Instant::now();
    for chunk in bulk.chunks(5000) {
        bus.publish_all(chunk).await.unwrap();
    }
    let published = t.elapsed();
    let target = last_seq(&bus).await;
    wait_for(&pool, target).await;
    let live_elapsed = t.elapsed();
    println!(
        "live: published {} events in {:?}; projected all by {:?} ({:.0} events/s end to end)",
        bulk.len(), published, live_elapsed, bulk.len() as f64 / live_elapsed.as_secs_f64()
    );
    let live_dump = dump(&pool).await;
    shutdown.cancel();
    live.await.unwrap().unwrap();
    let report = rebuild(config(1000)).await.unwrap();
    println!("rebuild of everything: {report}");
    assert_eq!(dump(&pool).await, live_dump, "big replay differs");
    let active: i64 = sqlx::query_scalar("SELECT count(*) FROM workflow_executions WHERE active_agents <> '[]'").fetch_one(&pool).await.unwrap();
    assert_eq!(active, 0);
}
