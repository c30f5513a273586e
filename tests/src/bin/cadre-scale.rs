//! `make bench-scale`: throughput against the number of coordinator replicas. For each count C
//! of `SCALE_COORDINATORS`, on a fresh three-node NATS cluster (every stream with 3 replicas,
//! each write synced to disk) and a fresh database: the projector, `SCALE_WORKERS` agent
//! workers and C coordinators, each a separate process (the binaries built next to this one).
//! `SCALE_EXECUTIONS` executions of a `SCALE_STEPS`-step pipeline on the offline provider (no
//! simulated latency) are started round-robin over the coordinators' APIs; the bench follows
//! the log until every one ended and waits for the read models to show the last event, then
//! prints steps per second, the execution latency and the start requests' latency, and a table
//! of every C at the end. It stops everything it started before the next C, and on Ctrl-C.
//!
//! Figures, never assertions: the exit status is 1 only when a start was never acknowledged,
//! an execution failed, or executions were lost (no end in the log before it stood still for
//! `SCALE_STALL_SECS`) or never showed in the read models.
//!
//! Settings (environment; `scripts/bench-scale.sh` documents them too): `SCALE_COORDINATORS`
//! ("1 2 4"), `SCALE_EXECUTIONS` (500), `SCALE_STEPS` (5), `SCALE_WORKERS` (2),
//! `SCALE_WORKFLOWS` (1: identical workflows the executions are spread over),
//! `SCALE_START_PARALLELISM` (64 concurrent start requests), `SCALE_STALL_SECS` (120),
//! `SCALE_LOG_DIR` (the services' and nats-servers' logs; default a temporary directory, kept
//! only when a run failed).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use cadre_proto::subjects;
use cadre_runtime::bus::EventBus;
use cadre_runtime::projection::read_checkpoints;
use cadre_tests::api::{PIPELINE_SKILLS, pipeline, post_created, start_until_acknowledged, team};
use cadre_tests::nats::{CLUSTER_NODES, NatsCluster, free_port};
use cadre_tests::pg::TestDb;
use cadre_tests::services::{Environment, Kind, Process};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use hdrhistogram::Histogram;
use serde_json::json;
use tokio::time::Instant;

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

struct Settings {
    coordinators: Vec<usize>,
    executions: u64,
    steps: usize,
    workers: usize,
    workflows: usize,
    start_parallelism: usize,
    stall: Duration,
}

/// What one count of coordinators measured.
struct Figures {
    coordinators: usize,
    accepted: usize,
    completed: usize,
    failed: usize,
    refused: usize,
    lost: usize,
    /// Steps per second from the first start request until the read models showed the last
    /// event; `None` when they never did.
    visible_steps_per_s: Option<f64>,
    /// Steps per second from the first event stored to the last.
    log_steps_per_s: f64,
    execution_ms: (f64, f64),
    start_ms: (f64, f64),
    starts_secs: f64,
}

impl Figures {
    fn ok(&self) -> bool {
        self.failed == 0
            && self.refused == 0
            && self.lost == 0
            && self.visible_steps_per_s.is_some()
    }
}

fn ms(histogram: &Histogram<u64>, quantile: f64) -> f64 {
    histogram.value_at_quantile(quantile) as f64 / 1000.0
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

/// How an execution ended, from its subject's last token.
fn ended(fact: &str) -> Option<bool> {
    match fact {
        "completed" => Some(true),
        "failed" | "cancelled" => Some(false),
        _ => None,
    }
}

/// The system of one count of coordinators. Fields drop in order: the processes go before the
/// cluster and the database.
struct System {
    coordinators: Vec<Process>,
    _workers: Vec<Process>,
    _projector: Process,
    bus: EventBus,
    db: TestDb,
    _cluster: NatsCluster,
}

impl System {
    /// A fresh cluster and database, the projector, the workers and `coordinators`
    /// coordinators, their connections spread over the cluster's nodes (a service takes one
    /// URL and learns the other nodes from the server).
    async fn start(
        coordinators: usize,
        settings: &Settings,
        log_dir: &Path,
    ) -> anyhow::Result<Self> {
        let cluster = NatsCluster::start(log_dir).await?;
        let db = TestDb::create().await;
        // The harness makes the streams first, with the replicas the services ask for.
        let client = cluster.connect("cadre-scale").await?;
        let bus = EventBus::open(async_nats::jetstream::new(client), CLUSTER_NODES)
            .await
            .map_err(|e| anyhow::anyhow!("event stream: {e}"))?;
        let env = Environment {
            bin_dir: Environment::beside_current_exe()?,
            log_dir: log_dir.to_path_buf(),
            nats_url: cluster.nats_url(0),
            database_url: db.url.clone(),
            stream_replicas: CLUSTER_NODES,
            // Four coordinators (16 connections each by default), two workers (16 each), the
            // projector and the bench would pass Postgres's default of 100 connections.
            settings: vec![(Kind::Coordinator, "DB_MAX_CONNECTIONS".into(), "8".into())],
        };
        let on_node = |index: usize| Environment {
            nats_url: cluster.nats_url(index % CLUSTER_NODES),
            ..env.clone()
        };
        let address = || format!("127.0.0.1:{}", free_port());
        let projector = Process::start(&env, Kind::Projector, "projector", &address()).await?;
        let mut workers = Vec::new();
        for index in 0..settings.workers {
            let name = format!("worker-{}", index + 1);
            workers
                .push(Process::start(&on_node(index + 1), Kind::Worker, &name, &address()).await?);
        }
        let mut replicas = Vec::new();
        for index in 0..coordinators {
            let name = format!("coordinator-{}", index + 1);
            replicas
                .push(Process::start(&on_node(index), Kind::Coordinator, &name, &address()).await?);
        }
        Ok(Self {
            coordinators: replicas,
            _workers: workers,
            _projector: projector,
            bus,
            db,
            _cluster: cluster,
        })
    }
}

/// One count of coordinators, from a fresh system to its figures.
async fn measure(
    coordinators: usize,
    settings: &Settings,
    log_dir: &Path,
) -> anyhow::Result<Figures> {
    let system = System::start(coordinators, settings, log_dir).await?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let apis: Vec<String> = system
        .coordinators
        .iter()
        .map(|c| c.base_url.clone())
        .collect();
    let mut agent_ids = Vec::new();
    for agent in team("offline") {
        agent_ids.push(post_created(&http, &format!("{}/v1/agents", apis[0]), &agent).await?);
    }
    let mut workflows = Vec::new();
    for index in 0..settings.workflows {
        let workflow = pipeline(
            &format!("Scale pipeline {}", index + 1),
            &agent_ids,
            &PIPELINE_SKILLS,
            settings.steps,
        );
        workflows.push(post_created(&http, &format!("{}/v1/workflows", apis[0]), &workflow).await?);
    }

    // Follow the log from here on.
    let first_sequence = system
        .bus
        .stream()
        .clone()
        .info()
        .await?
        .state
        .last_sequence
        + 1;
    let mut events = system
        .bus
        .stream()
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
            filter_subject: subjects::ALL_EVENTS.to_owned(),
            deliver_policy: async_nats::jetstream::consumer::DeliverPolicy::ByStartSequence {
                start_sequence: first_sequence,
            },
            ..Default::default()
        })
        .await?
        .messages()
        .await?;

    let sent = Instant::now();
    let outcomes = futures::stream::iter(0..settings.executions as usize)
        .map(|i| {
            let (http, api) = (http.clone(), apis[i % apis.len()].clone());
            let workflow = workflows[i % workflows.len()].clone();
            async move {
                let started = Instant::now();
                let key = uuid::Uuid::now_v7().to_string();
                let outcome = start_until_acknowledged(
                    &http,
                    &api,
                    &workflow,
                    &key,
                    &json!({}),
                    Duration::from_secs(60),
                )
                .await;
                (outcome, started.elapsed())
            }
        })
        .buffer_unordered(settings.start_parallelism)
        .collect::<Vec<_>>()
        .await;
    let starts_secs = sent.elapsed().as_secs_f64();
    let mut start_latency = Histogram::<u64>::new(3)?;
    let mut accepted = HashSet::new();
    let mut refused = Vec::new();
    for (outcome, took) in outcomes {
        match outcome {
            Ok(id) => {
                start_latency.record(micros(took))?;
                accepted.insert(id);
            }
            Err(why) => refused.push(why),
        }
    }
    for why in refused.iter().take(5) {
        println!("  a start was never acknowledged: {why}");
    }

    // Until every accepted execution ended, or the log stood still for the stall time.
    let mut began: HashMap<String, DateTime<Utc>> = HashMap::new();
    let mut endings: HashMap<String, (bool, DateTime<Utc>)> = HashMap::new();
    let (mut first_stored, mut last_stored) = (None::<DateTime<Utc>>, None::<DateTime<Utc>>);
    let mut last_sequence = first_sequence.saturating_sub(1);
    let mut unfinished = accepted.len();
    while unfinished > 0 {
        let Ok(next) = tokio::time::timeout(settings.stall, events.next()).await else {
            break;
        };
        let message = next.context("the event log ended")??;
        let info = message.info().map_err(|e| anyhow::anyhow!("{e}"))?;
        let at = DateTime::<Utc>::from_timestamp_nanos(
            i64::try_from(info.published.unix_timestamp_nanos()).unwrap_or(0),
        );
        last_sequence = info.stream_sequence;
        first_stored.get_or_insert(at);
        last_stored = Some(at);
        // The subject says all the bench needs: `...execution.<id>.<fact>`.
        let tokens: Vec<&str> = message.subject.split('.').collect();
        if tokens.len() != 8 || tokens[5] != "execution" {
            continue;
        }
        let execution = tokens[6].to_owned();
        if tokens[7] == "started" {
            began.insert(execution, at);
        } else if let Some(completed) = ended(tokens[7]) {
            if accepted.contains(&execution) && !endings.contains_key(&execution) {
                unfinished -= 1;
            }
            endings.entry(execution).or_insert((completed, at));
        }
    }
    let lost = unfinished;

    // Until the read models show the last event seen (the projector's checkpoint, polled), for
    // at most the stall time.
    let deadline = Instant::now() + settings.stall;
    let visible_at = loop {
        let checkpoint = read_checkpoints(&system.db.pool).await?.read_models();
        if checkpoint >= last_sequence {
            break Some(Instant::now());
        }
        if Instant::now() > deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let completed = endings
        .iter()
        .filter(|(id, (completed, _))| *completed && accepted.contains(*id))
        .count();
    let rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM workflow_executions WHERE status = 'completed'")
            .fetch_one(&system.db.pool)
            .await?;
    if usize::try_from(rows).unwrap_or(0) != completed {
        println!("  the read models show {rows} completed executions, the log {completed}");
    }
    drop(system);

    let mut execution_latency = Histogram::<u64>::new(3)?;
    for (id, (_, end)) in &endings {
        if let Some(start) = began.get(id) {
            execution_latency.record(micros((*end - *start).to_std().unwrap_or_default()))?;
        }
    }
    let steps = (completed * settings.steps) as f64;
    let log_secs = match (first_stored, last_stored) {
        (Some(first), Some(last)) => (last - first).to_std().unwrap_or_default().as_secs_f64(),
        _ => 0.0,
    };
    Ok(Figures {
        coordinators,
        accepted: accepted.len(),
        completed,
        failed: endings.values().filter(|(completed, _)| !completed).count(),
        refused: refused.len(),
        lost,
        visible_steps_per_s: visible_at
            .filter(|_| usize::try_from(rows).unwrap_or(0) == completed)
            .map(|at| steps / (at - sent).as_secs_f64()),
        log_steps_per_s: if log_secs > 0.0 {
            steps / log_secs
        } else {
            0.0
        },
        execution_ms: (ms(&execution_latency, 0.5), ms(&execution_latency, 0.99)),
        start_ms: (ms(&start_latency, 0.5), ms(&start_latency, 0.99)),
        starts_secs,
    })
}

fn print_figures(figures: &Figures, settings: &Settings) {
    println!(
        "  starts: {} accepted in {:.2} s (HTTP p50 {:.1} ms, p99 {:.1} ms), {} never acknowledged",
        figures.accepted,
        figures.starts_secs,
        figures.start_ms.0,
        figures.start_ms.1,
        figures.refused
    );
    println!(
        "  finished: {} completed, {} failed, {} lost",
        figures.completed, figures.failed, figures.lost
    );
    match figures.visible_steps_per_s {
        Some(steps_per_s) => println!(
            "  throughput (read models visible): {steps_per_s:.0} steps/s ({} steps, first start \
             request -> the projector's checkpoint at the last event)",
            figures.completed * settings.steps
        ),
        None => println!("  throughput (read models visible): - (they never showed every run)"),
    }
    println!(
        "  throughput (log): {:.0} steps/s (first event stored -> last event stored)",
        figures.log_steps_per_s
    );
    println!(
        "  execution (ExecutionStarted -> its end): p50 {:.1} ms, p99 {:.1} ms",
        figures.execution_ms.0, figures.execution_ms.1
    );
}

/// One line per count: starts never acknowledged (`refused`) and accepted runs without an end
/// (`lost`) apart; execution latency from `ExecutionStarted` to its end, start latency of the
/// HTTP request.
fn print_table(rows: &[Figures]) {
    println!();
    println!(
        "{:>12} {:>9} {:>6} {:>7} {:>4} {:>15} {:>11} {:>8} {:>8} {:>12}  checks",
        "coordinators",
        "completed",
        "failed",
        "refused",
        "lost",
        "steps/s visible",
        "steps/s log",
        "exec p50",
        "exec p99",
        "start p50 ms"
    );
    for row in rows {
        println!(
            "{:>12} {:>9} {:>6} {:>7} {:>4} {:>15} {:>11.0} {:>8.0} {:>8.0} {:>12.0}  {}",
            row.coordinators,
            row.completed,
            row.failed,
            row.refused,
            row.lost,
            row.visible_steps_per_s
                .map_or_else(|| "-".to_owned(), |s| format!("{s:.0}")),
            row.log_steps_per_s,
            row.execution_ms.0,
            row.execution_ms.1,
            row.start_ms.0,
            if row.ok() { "ok" } else { "FAILED" }
        );
    }
}

async fn run(settings: &Settings, log_dir: &Path) -> anyhow::Result<Vec<Figures>> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "cadre bench-scale: coordinators {:?}, {} executions x {} steps over {} workflow(s), \
         {} workers, offline provider without latency, {CLUSTER_NODES}-node NATS cluster \
         (R{CLUSTER_NODES}, sync always), {cores} cores; logs in {}",
        settings.coordinators,
        settings.executions,
        settings.steps,
        settings.workflows,
        settings.workers,
        log_dir.display()
    );
    let mut rows = Vec::new();
    for &coordinators in &settings.coordinators {
        println!("{coordinators} coordinator(s):");
        let figures = measure(
            coordinators,
            settings,
            &log_dir.join(format!("coordinators-{coordinators}")),
        )
        .await?;
        print_figures(&figures, settings);
        rows.push(figures);
    }
    Ok(rows)
}

#[tokio::main]
async fn main() -> anyhow::Result<std::process::ExitCode> {
    let coordinators = std::env::var("SCALE_COORDINATORS").unwrap_or_else(|_| "1 2 4".into());
    let coordinators = coordinators
        .split([' ', ','])
        .filter(|c| !c.is_empty())
        .map(|c| match c.parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(anyhow::anyhow!(
                "SCALE_COORDINATORS takes counts above 0 (\"1 2 4\"), not '{c}'"
            )),
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let settings = Settings {
        coordinators,
        executions: setting("SCALE_EXECUTIONS", 500).max(1),
        steps: setting("SCALE_STEPS", 5).max(1) as usize,
        workers: setting("SCALE_WORKERS", 2).max(1) as usize,
        workflows: setting("SCALE_WORKFLOWS", 1).max(1) as usize,
        start_parallelism: setting("SCALE_START_PARALLELISM", 64).max(1) as usize,
        stall: Duration::from_secs(setting("SCALE_STALL_SECS", 120).max(1)),
    };
    let temporary = tempfile::Builder::new().prefix("cadre-scale-").tempdir()?;
    let log_dir = std::env::var_os("SCALE_LOG_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| temporary.path().to_path_buf());
    // SIGINT or SIGTERM drops the run: every process, database and server it started goes
    // with it.
    let interrupted = cadre_runtime::shutdown::on_signal();
    let rows = tokio::select! {
        rows = run(&settings, &log_dir) => rows?,
        () = interrupted.cancelled() => {
            eprintln!("interrupted; everything started was stopped");
            return Ok(std::process::ExitCode::from(130));
        }
    };
    print_table(&rows);
    if rows.iter().all(Figures::ok) {
        return Ok(std::process::ExitCode::SUCCESS);
    }
    // Keep the services' logs of a failed run.
    let _ = temporary.keep();
    println!(
        "some executions failed, were refused or got lost; the logs are in {}",
        log_dir.display()
    );
    Ok(std::process::ExitCode::FAILURE)
}
