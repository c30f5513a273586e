//! `make bench-console`'s stack and load: the three services in-process on a private NATS
//! server and a fresh database (as `make bench`), driven at a steady rate of steps per second
//! while a browser (`tests/browser/console_bench.py`) watches the console. Prints figures,
//! asserts nothing.
//!
//! It talks to the browser script over its standard streams, one line each:
//! - out `CONSOLE_URL=<base>`, `WATCHED_WORKFLOW=<id>`, `LOAD_WORKFLOWS=<id> <id> ...`, `READY`;
//! - in `go`: starts executions of the load workflows at `BENCH_RATE / BENCH_STEPS` per
//!   second for `BENCH_SECONDS`, then waits (bounded) for them to finish and prints the achieved
//!   rate (steps completed in the log, by their store time), each line starting `load:`, then
//!   `LOAD_DONE`;
//! - end of input: stops the services and exits.
//!
//! The watched workflow is a pipeline on a second team served by its own worker whose offline
//! provider takes `BENCH_WATCHED_STEP_MS` per call, so a person (or the browser) can follow its
//! runs while the load runs through the same coordinator, log and feeds.
//!
//! Settings (environment): `BENCH_RATE` (1000 steps/s), `BENCH_STEPS` (5), `BENCH_WORKFLOWS` (4),
//! `BENCH_SECONDS` (30), `BENCH_WATCHED_STEPS` (12), `BENCH_WATCHED_STEP_MS` (250),
//! `BENCH_START_PARALLELISM` (512: a start answers once the read models have it), `BENCH_WORKER_CONCURRENCY` (256), `BENCH_COORDINATOR_SHARDS`
//! (128).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cadre_agent_worker::{OfflineAnswer, ProviderConfig};
use cadre_proto::subjects;
use cadre_tests::api::{PIPELINE_SKILLS, pipeline, team};
use cadre_tests::stack::LogWatch;
use cadre_tests::{Stack, StackOptions};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use hdrhistogram::Histogram;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::Semaphore;

/// The provider (and step queue) of the watched team's worker.
const PACED: &str = "paced";

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What the log showed of the load.
#[derive(Default)]
struct Tally {
    /// Store times of the load workflows' `StepCompleted` events.
    steps_completed: Vec<DateTime<Utc>>,
    executions_started: u64,
    executions_finished: u64,
    /// Every event of the log (the watched runs' included: what the tenant's feed carries),
    /// as its stream sequence and store time.
    events: Vec<(u64, DateTime<Utc>)>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let rate = setting("BENCH_RATE", 1000).max(1) as f64;
    let steps = setting("BENCH_STEPS", 5).max(1) as usize;
    let workflows = setting("BENCH_WORKFLOWS", 4).max(1);
    let seconds = setting("BENCH_SECONDS", 30).max(1);
    let watched_steps = setting("BENCH_WATCHED_STEPS", 12).max(1) as usize;
    let watched_step_ms = setting("BENCH_WATCHED_STEP_MS", 250);
    let parallelism = setting("BENCH_START_PARALLELISM", 512).max(1) as usize;

    let mut stack = Stack::start_with(StackOptions {
        offline_latency_ms: 0,
        worker_concurrency: setting("BENCH_WORKER_CONCURRENCY", 256) as usize,
        coordinator_shards: setting("BENCH_COORDINATOR_SHARDS", 128) as usize,
        projector_max_batch: 2000,
        ..Default::default()
    })
    .await;
    let paced = stack.worker_config(
        "paced-worker",
        BTreeMap::from([(
            PACED.to_owned(),
            ProviderConfig::Offline {
                latency_ms: watched_step_ms,
                answer: OfflineAnswer::Team,
            },
        )]),
    );
    stack.run_worker("paced-worker", paced);
    let api = stack.api.clone();

    let mut load_agents = Vec::new();
    for agent in team("offline") {
        load_agents.push(id(&api.register_agent(&agent).await));
    }
    let mut watched_agents = Vec::new();
    for mut agent in team(PACED) {
        agent["name"] = format!("{} (paced)", agent["name"].as_str().unwrap_or("agent")).into();
        agent["model"] = "offline-deterministic".into();
        watched_agents.push(id(&api.register_agent(&agent).await));
    }
    let mut load_workflows = Vec::new();
    for n in 0..workflows {
        let workflow = pipeline(
            &format!("Load {}", n + 1),
            &load_agents,
            &PIPELINE_SKILLS,
            steps,
        );
        load_workflows.push(id(&api.create_workflow(&workflow).await));
    }
    let watched = id(&api
        .create_workflow(&pipeline(
            "Watched",
            &watched_agents,
            &PIPELINE_SKILLS,
            watched_steps,
        ))
        .await);

    println!("CONSOLE_URL={}", api.base());
    println!("WATCHED_WORKFLOW={watched}");
    println!("LOAD_WORKFLOWS={}", load_workflows.join(" "));
    println!("READY");

    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        if line.trim() != "go" {
            continue;
        }
        let executions_per_second = rate / steps as f64;
        println!(
            "load: offering {rate:.0} steps/s ({executions_per_second:.0} executions/s of \
             {steps} steps over {workflows} workflows) for {seconds} s, {} cores",
            std::thread::available_parallelism().map_or(1, |n| n.get())
        );
        load(
            &stack,
            &load_workflows,
            executions_per_second,
            Duration::from_secs(seconds),
            parallelism,
        )
        .await?;
        println!("LOAD_DONE");
    }
    stack.stop().await;
    Ok(())
}

fn id(created: &serde_json::Value) -> String {
    created["id"].as_str().unwrap_or_default().to_owned()
}

/// Starts executions at `per_second` for `window`, round-robin over `workflows`, then waits
/// (at most a minute) until every one has finished, and prints what the log shows.
async fn load(
    stack: &Stack,
    workflows: &[String],
    per_second: f64,
    window: Duration,
    parallelism: usize,
) -> anyhow::Result<()> {
    let load_workflows: HashSet<String> = workflows.iter().cloned().collect();
    // Watch the log from here on, and the projector's commits.
    let LogWatch {
        events: mut messages,
        commits: mut commit_receiver,
        projection,
        ..
    } = stack
        .watch_log_and_commits(&[subjects::ALL_EVENTS], Utc::now)
        .await?;
    let (tally_sender, tally_receiver) = tokio::sync::watch::channel((0u64, 0u64));
    let stop_counting = tokio_util::sync::CancellationToken::new();
    let counter = tokio::spawn({
        let stop = stop_counting.clone();
        async move {
            let mut tally = Tally::default();
            loop {
                let message = tokio::select! {
                    _ = stop.cancelled() => break,
                    next = messages.next() => match next {
                        Some(Ok(message)) => message,
                        _ => break,
                    },
                };
                let Ok(info) = message.info() else { continue };
                let stored = DateTime::<Utc>::from_timestamp_nanos(
                    i64::try_from(info.published.unix_timestamp_nanos()).unwrap_or(0),
                );
                tally.events.push((info.stream_sequence, stored));
                // The subject says all this needs (as in `make bench`): decoding every event
                // would load the machine it measures.
                let tokens: Vec<&str> = message.subject.split('.').collect();
                if tokens.get(5) != Some(&"execution")
                    || !tokens.get(4).is_some_and(|w| load_workflows.contains(*w))
                {
                    continue;
                }
                match (tokens.get(7), tokens.get(9)) {
                    (Some(&"step"), Some(&"completed")) => tally.steps_completed.push(stored),
                    (Some(&"started"), None) => tally.executions_started += 1,
                    (Some(&"completed" | &"failed" | &"cancelled"), None) => {
                        tally.executions_finished += 1;
                    }
                    _ => {}
                }
                let _ = tally_sender.send((tally.executions_started, tally.executions_finished));
            }
            tally
        }
    });

    // Starts on a fixed schedule; a start that finds every client busy waits for one, so an
    // overloaded stack is offered less (the figures below say how much it got).
    let clients = Arc::new(Semaphore::new(parallelism));
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / per_second));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let started_at = Utc::now();
    let began = Instant::now();
    let mut requests = Vec::new();
    let mut requested = 0usize;
    let mut start_latency = Histogram::<u64>::new(3)?;
    while began.elapsed() < window {
        ticks.tick().await;
        let permit = clients.clone().acquire_owned().await?;
        let api = stack.api.clone();
        let workflow = workflows[requested % workflows.len()].clone();
        requested += 1;
        requests.push(tokio::spawn(async move {
            let sent = Instant::now();
            let reply = api
                .post(
                    &format!("/v1/workflows/{workflow}/executions"),
                    &serde_json::json!({}),
                )
                .await;
            drop(permit);
            (reply.status, sent.elapsed())
        }));
    }
    let offered_for = began.elapsed().as_secs_f64();
    let window_end = Utc::now();
    let mut refused = 0u64;
    for request in requests {
        let (status, took) = request.await?;
        if status == 202 {
            start_latency.record(u64::try_from(took.as_micros()).unwrap_or(u64::MAX))?;
        } else {
            refused += 1;
        }
    }
    let accepted = start_latency.len();

    // Let the backlog drain, so the next figures (and the browser's) see the whole load.
    let drain = Instant::now();
    let mut progress = tally_receiver.clone();
    let _ = tokio::time::timeout(
        Duration::from_secs(60),
        progress.wait_for(|(_, finished)| *finished >= accepted),
    )
    .await;
    let drained_in = drain.elapsed().as_secs_f64();
    // The projector too: the list pages read what it wrote.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop_counting.cancel();
    let mut tally = counter.await?;
    projection.abort();
    let mut commits = Vec::new();
    while let Ok(commit) = commit_receiver.try_recv() {
        commits.push(commit);
    }
    // Projection lag: the first commit that covers an event, minus the event's store time.
    let mut lag = Histogram::<u64>::new(3)?;
    tally.events.sort_unstable_by_key(|(sequence, _)| *sequence);
    let mut commit = commits.iter().peekable();
    for (sequence, stored) in &tally.events {
        while commit.peek().is_some_and(|(covered, _)| covered < sequence) {
            commit.next();
        }
        if let Some((_, visible)) = commit.peek() {
            lag.record(
                u64::try_from((*visible - *stored).num_microseconds().unwrap_or(0)).unwrap_or(0),
            )?;
        }
    }

    let in_window = tally
        .steps_completed
        .iter()
        .filter(|at| **at >= started_at && **at <= window_end)
        .count();
    let window_secs = (window_end - started_at).num_milliseconds() as f64 / 1000.0;
    let (first, last) = (
        tally.steps_completed.iter().min(),
        tally.steps_completed.iter().max(),
    );
    let span = match (first, last) {
        (Some(first), Some(last)) => (*last - *first).num_milliseconds() as f64 / 1000.0,
        _ => 0.0,
    };
    println!(
        "load: {requested} starts offered in {offered_for:.1} s = {:.0}/s; {accepted} accepted \
         ({refused} refused), start request p50 {:.1} ms, p99 {:.1} ms",
        requested as f64 / offered_for,
        start_latency.value_at_quantile(0.5) as f64 / 1000.0,
        start_latency.value_at_quantile(0.99) as f64 / 1000.0,
    );
    println!(
        "load: achieved {:.0} steps/s during the {window_secs:.1} s window ({in_window} steps \
         completed in it); {} steps in all over {span:.1} s = {:.0} steps/s",
        in_window as f64 / window_secs,
        tally.steps_completed.len(),
        tally.steps_completed.len() as f64 / span.max(0.001)
    );
    println!(
        "load: {} executions started, {} finished ({drained_in:.1} s after the last start); \
         {} events in the log ({:.0} events/s over the window)",
        tally.executions_started,
        tally.executions_finished,
        tally.events.len(),
        tally.events.len() as f64 / window_secs.max(0.001)
    );
    println!(
        "load: projection lag (event stored -> row visible, the floor of a list page's delay): \
         p50 {:.0} ms, p95 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        lag.value_at_quantile(0.5) as f64 / 1000.0,
        lag.value_at_quantile(0.95) as f64 / 1000.0,
        lag.value_at_quantile(0.99) as f64 / 1000.0,
        lag.max() as f64 / 1000.0
    );
    println!(
        "LOAD_FIGURES={}",
        serde_json::json!({
            "achievedStepsPerSecond": in_window as f64 / window_secs,
            "windowSeconds": window_secs,
            "stepsCompleted": tally.steps_completed.len(),
            "events": tally.events.len(),
            "projectionLagP99Ms": lag.value_at_quantile(0.99) as f64 / 1000.0,
        })
    );
    Ok(())
}
