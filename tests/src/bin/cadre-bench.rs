//! `make bench`: N executions of an M-step pipeline on the offline provider, through the three
//! services on a private NATS server and a fresh database. Prints throughput, the latency from
//! one step's completion to the next step's start, and projection lag. Figures, not assertions.
//!
//! Times are the server's store timestamps of the events (one clock: everything runs on this
//! machine); projection lag is the time the projector's commit notification arrives minus the
//! store time of the events it covers.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
use cadre_proto::subjects;
use cadre_tests::api::{PIPELINE_SKILLS, pipeline, team};
use cadre_tests::{Stack, StackOptions};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use hdrhistogram::Histogram;
use sqlx::postgres::PgListener;

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Default)]
struct ExecutionTimes {
    started: Option<DateTime<Utc>>,
    finished: Option<DateTime<Utc>>,
    /// Per step id: when it was started and when it completed.
    step_started: HashMap<String, DateTime<Utc>>,
    step_completed: HashMap<String, DateTime<Utc>>,
}

fn micros(later: DateTime<Utc>, earlier: DateTime<Utc>) -> u64 {
    u64::try_from((later - earlier).num_microseconds().unwrap_or(0)).unwrap_or(0)
}

fn ms(histogram: &Histogram<u64>, quantile: f64) -> f64 {
    histogram.value_at_quantile(quantile) as f64 / 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let executions = setting("BENCH_EXECUTIONS", 1000);
    let steps = setting("BENCH_STEPS", 5) as usize;
    let latency_ms = setting("BENCH_LATENCY_MS", 0);
    let concurrency = setting("BENCH_WORKER_CONCURRENCY", 256) as usize;
    let start_parallelism = setting("BENCH_START_PARALLELISM", 64) as usize;
    // Starts of one workflow queue behind each other (execution numbers are consecutive);
    // spreading the executions over several identical workflows shows the steps' own ceiling.
    let workflows = setting("BENCH_WORKFLOWS", 1).max(1);
    println!(
        "cadre bench: {executions} executions x {steps} steps over {workflows} workflow(s), \
         offline provider latency {latency_ms} ms, worker concurrency {concurrency}, {} cores",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );

    let stack = Stack::start_with(StackOptions {
        offline_latency_ms: latency_ms,
        worker_concurrency: concurrency,
        coordinator_shards: setting("BENCH_COORDINATOR_SHARDS", 128) as usize,
        projector_max_batch: 2000,
        ..Default::default()
    })
    .await;
    let api = stack.api.clone();
    let mut agent_ids = Vec::new();
    for agent in team("offline") {
        agent_ids.push(
            api.register_agent(&agent).await["id"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
    }
    let mut workflow_ids = Vec::new();
    for _ in 0..workflows {
        let workflow = api
            .create_workflow(&pipeline("bench", &agent_ids, &PIPELINE_SKILLS, steps))
            .await;
        workflow_ids.push(workflow["id"].as_str().unwrap_or_default().to_owned());
    }

    // Watch the log from here on, and the projector's commits.
    let first_sequence = stack.log_state().await.last_sequence + 1;
    let observer = stack
        .bus
        .stream()
        .create_consumer(OrderedConfig {
            filter_subject: subjects::ALL_EVENTS.to_owned(),
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: first_sequence,
            },
            ..Default::default()
        })
        .await?;
    let mut events = observer.messages().await?;
    let mut listener = PgListener::connect(&stack.db.url).await?;
    listener.listen("cadre_projection").await?;
    let (commit_sender, mut commit_receiver) = tokio::sync::mpsc::unbounded_channel();
    let projection = tokio::spawn(async move {
        while let Ok(notification) = listener.recv().await {
            if let Ok(sequence) = notification.payload().parse::<u64>()
                && commit_sender.send((sequence, Utc::now())).is_err()
            {
                break;
            }
        }
    });

    let wall = Instant::now();
    let http_latencies = futures::stream::iter(0..executions)
        .map(|i| {
            let api = api.clone();
            let workflow_id = workflow_ids[i as usize % workflow_ids.len()].clone();
            async move {
                let started = Instant::now();
                api.start_execution(&workflow_id).await;
                started.elapsed()
            }
        })
        .buffer_unordered(start_parallelism)
        .collect::<Vec<Duration>>()
        .await;
    let accepted_in = wall.elapsed();

    let mut times: HashMap<String, ExecutionTimes> = HashMap::new();
    let mut stored: Vec<(u64, DateTime<Utc>)> = Vec::new();
    let mut finished = 0u64;
    let mut failed = 0u64;
    let mut step_events = 0u64;
    while finished < executions {
        let Some(message) = tokio::time::timeout(Duration::from_secs(120), events.next()).await?
        else {
            anyhow::bail!("the event log ended");
        };
        let message = message?;
        let info = message.info().map_err(|e| anyhow::anyhow!("{e}"))?;
        let at = DateTime::<Utc>::from_timestamp_nanos(
            i64::try_from(info.published.unix_timestamp_nanos()).unwrap_or(0),
        );
        stored.push((info.stream_sequence, at));
        // The subject says all the bench needs; decoding every event would load the machine
        // it measures. `...execution.<id>.<fact>` or `...execution.<id>.step.<step>.<fact>`.
        let tokens: Vec<&str> = message.subject.split('.').collect();
        if tokens.get(5) != Some(&"execution") {
            continue;
        }
        let entry = times.entry(tokens[6].to_owned()).or_default();
        match (tokens.get(7), tokens.get(9), tokens.last()) {
            (Some(&"step"), Some(&"started"), _) => {
                step_events += 1;
                entry.step_started.insert(tokens[8].to_owned(), at);
            }
            (Some(&"step"), Some(&"completed"), _) => {
                entry.step_completed.insert(tokens[8].to_owned(), at);
            }
            (Some(&"started"), None, _) => entry.started = Some(at),
            (Some(&"completed"), None, _) => {
                entry.finished = Some(at);
                finished += 1;
            }
            (Some(&"failed"), None, _) => {
                entry.finished = Some(at);
                finished += 1;
                failed += 1;
            }
            _ => {}
        }
    }
    let last_event = stored
        .iter()
        .map(|(_, at)| *at)
        .max()
        .unwrap_or_else(Utc::now);
    let first_event = stored
        .iter()
        .map(|(_, at)| *at)
        .min()
        .unwrap_or_else(Utc::now);
    let last_sequence = stored.iter().map(|(s, _)| *s).max().unwrap_or(0);

    // Let the projector finish, then stop everything and collect its commit times.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let checkpoint: i64 = sqlx::query_scalar(
            "SELECT stream_sequence FROM projection_checkpoints WHERE projection = 'read_models'",
        )
        .fetch_one(&stack.db.pool)
        .await?;
        if checkpoint as u64 >= last_sequence || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let completed_rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM workflow_executions WHERE status = 'completed'")
            .fetch_one(&stack.db.pool)
            .await?;
    projection.abort();
    let mut commits: Vec<(u64, DateTime<Utc>)> = Vec::new();
    while let Ok(commit) = commit_receiver.try_recv() {
        commits.push(commit);
    }
    stack.stop().await;

    // Step handoff: step k completed -> step k+1 started, within each execution.
    let mut handoff = Histogram::<u64>::new(3)?;
    let mut end_to_end = Histogram::<u64>::new(3)?;
    for t in times.values() {
        for k in 1..steps {
            let (done, next) = (format!("step-{k}"), format!("step-{}", k + 1));
            if let (Some(done), Some(next)) =
                (t.step_completed.get(&done), t.step_started.get(&next))
            {
                handoff.record(micros(*next, *done))?;
            }
        }
        if let (Some(start), Some(end)) = (t.started, t.finished) {
            end_to_end.record(micros(end, start))?;
        }
    }
    let mut http = Histogram::<u64>::new(3)?;
    for latency in &http_latencies {
        http.record(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX))?;
    }
    // Projection lag: the first commit that covers an event, minus the event's store time.
    let mut lag = Histogram::<u64>::new(3)?;
    stored.sort_unstable_by_key(|(sequence, _)| *sequence);
    let mut commit = commits.iter().peekable();
    for (sequence, at) in &stored {
        while commit.peek().is_some_and(|(covered, _)| covered < sequence) {
            commit.next();
        }
        if let Some((_, visible)) = commit.peek() {
            lag.record(micros(*visible, *at))?;
        }
    }

    let wall = micros(last_event, first_event) as f64 / 1e6;
    let total_steps = executions * steps as u64;
    println!(
        "executions accepted in {:.2} s (HTTP p50 {:.1} ms, p99 {:.1} ms)",
        accepted_in.as_secs_f64(),
        ms(&http, 0.5),
        ms(&http, 0.99)
    );
    println!(
        "finished: {executions} executions ({failed} failed), {step_events} steps started, {completed_rows} completed rows in Postgres"
    );
    println!(
        "events: {} in {wall:.2} s = {:.0} events/s",
        stored.len(),
        stored.len() as f64 / wall
    );
    println!(
        "throughput: {:.0} steps/s end to end ({total_steps} steps in {wall:.2} s)",
        total_steps as f64 / wall
    );
    println!(
        "step handoff (StepCompleted -> next StepStarted): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        ms(&handoff, 0.5),
        ms(&handoff, 0.99),
        ms(&handoff, 1.0)
    );
    println!(
        "execution (ExecutionStarted -> ExecutionCompleted): p50 {:.1} ms, p99 {:.1} ms",
        ms(&end_to_end, 0.5),
        ms(&end_to_end, 0.99)
    );
    println!(
        "projection lag (event stored -> row visible): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms over {} events",
        ms(&lag, 0.5),
        ms(&lag, 0.99),
        ms(&lag, 1.0),
        lag.len()
    );
    Ok(())
}
