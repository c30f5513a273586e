//! `make bench`: N executions of an M-step workflow on the offline provider, through the three
//! services on a private NATS server and a fresh database. Prints throughput, the latency from
//! a step's last dependency's completion to the step's start, how many steps of one execution
//! ran at once, and projection lag. Figures, not assertions.
//!
//! Settings (environment):
//! - `BENCH_SHAPE`: `pipeline` (default: each step depends on the one before) or `dag` (layers
//!   of `BENCH_FANOUT` steps, each step depending on every step of the layer before: fan-out,
//!   then fan-in, so up to `BENCH_FANOUT` steps of one execution run at once).
//! - `BENCH_MODE`: `run` (default: start the executions, wait for all of them to finish and for
//!   the projector to catch up) or `starts` (start the executions of one workflow as fast as the
//!   API accepts them and measure only the start requests; the executions are not waited for)
//!   or `sequential` (low load: one execution at a time, each started when the one before is
//!   visible in the read models; prints the time per step).
//! - `BENCH_RATE` (0, `run` mode only): steps per second offered, as executions started evenly
//!   (`BENCH_RATE / BENCH_STEPS` a second; an open loop: a start does not wait for earlier ones,
//!   nor for `BENCH_START_PARALLELISM`), so that handoff and projection lag are measured at a
//!   set load, as `make bench-console` offers it; 0 starts them all at once.
//! - `BENCH_WORKLOAD`: `team` (default: each step's answer, from the offline provider, shares
//!   two insights and a decision with the team and raises a concern, and each step ranks the
//!   team's knowledge for its prompt) or `noop` (each step's answer is a ~200 B output and
//!   nothing else, in a workflow that shares no knowledge: the no-op step `make bench-peers`
//!   runs on its peers).
//! - `BENCH_EXECUTIONS` (1000), `BENCH_STEPS` (5), `BENCH_FANOUT` (10), `BENCH_WORKFLOWS` (1,
//!   `run` mode only), `BENCH_START_PARALLELISM` (64 concurrent HTTP clients),
//!   `BENCH_LATENCY_MS` (0), `BENCH_WORKER_CONCURRENCY` (256), `BENCH_COORDINATOR_SHARDS` (128).
//!
//! For the in-flight figure (one worker holding many slow calls), for example:
//! `BENCH_LATENCY_MS=2000 BENCH_SHAPE=dag BENCH_STEPS=100 BENCH_FANOUT=100 BENCH_EXECUTIONS=60
//! BENCH_WORKFLOWS=60 BENCH_WORKER_CONCURRENCY=8000`: every step of an execution runs at once,
//! and the bench prints the peak of steps in flight and the memory each one costs.
//!
//! Times are the server's store timestamps of the events (one clock: everything runs on this
//! machine); projection lag is the time the projector's commit notification arrives minus the
//! store time of the events it covers.
//!
//! The last line is `result: steps_per_s=…` (`run`) or `result: ms_per_step=…` (`sequential`),
//! for `scripts/bench-peers.sh`; both count only once every read model is projected.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use cadre_agent_worker::OfflineAnswer;
use cadre_proto::subjects;
use cadre_runtime::projection::read_checkpoints;
use cadre_tests::api::{PIPELINE_SKILLS, pipeline, team};
use cadre_tests::stack::LogWatch;
use cadre_tests::{Api, Stack, StackOptions};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use hdrhistogram::Histogram;
use serde_json::{Value, json};

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn choice(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().to_ascii_lowercase())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

/// How the steps of the benchmark's workflow depend on each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// Each step depends on the one before.
    Pipeline,
    /// Layers of `fanout` steps; each step depends on every step of the layer before.
    Dag { fanout: usize },
}

impl Shape {
    /// The ids of the steps that step `i` (0-based; its id is `step-{i + 1}`) depends on.
    fn dependencies(self, i: usize) -> Vec<String> {
        match self {
            Shape::Pipeline if i == 0 => vec![],
            Shape::Pipeline => vec![step_id(i - 1)],
            Shape::Dag { fanout } => {
                let layer = i / fanout;
                if layer == 0 {
                    vec![]
                } else {
                    ((layer - 1) * fanout..layer * fanout)
                        .map(step_id)
                        .collect()
                }
            }
        }
    }

    /// The most steps of one execution the shape lets run at once.
    fn width(self, steps: usize) -> usize {
        match self {
            Shape::Pipeline => 1.min(steps),
            Shape::Dag { fanout } => fanout.min(steps),
        }
    }

    /// The workflow the API takes: [`pipeline`]'s steps, rewired to this shape.
    fn workflow(self, agent_ids: &[String], steps: usize, workload: Workload) -> Value {
        let mut workflow = pipeline("bench", agent_ids, &PIPELINE_SKILLS, steps);
        workflow["configuration"]["coordination"]["knowledgeSharing"] =
            json!(workload == Workload::Team);
        if let Shape::Dag { fanout } = self {
            workflow["workflowType"] = json!("parallel");
            workflow["description"] = json!(format!(
                "{steps} steps in layers of {fanout}, each depending on the whole layer before."
            ));
            if let Some(list) = workflow["configuration"]["steps"].as_array_mut() {
                for (i, step) in list.iter_mut().enumerate() {
                    step["dependsOn"] = json!(self.dependencies(i));
                }
            }
        }
        workflow
    }

    fn describe(self) -> String {
        match self {
            Shape::Pipeline => "pipeline".to_owned(),
            Shape::Dag { fanout } => {
                format!("DAG (layers of {fanout}, each on the whole layer before)")
            }
        }
    }
}

/// What each step of the benchmark's workflow does besides its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Workload {
    /// The offline provider's full answer in a workflow that shares knowledge: each step
    /// ranks the team's knowledge, shares two insights and a decision and raises a concern.
    Team,
    /// The offline provider's brief answer (~200 B of output) in a workflow that shares no
    /// knowledge: a no-op step, as the peers' in `make bench-peers`.
    Noop,
}

impl Workload {
    fn offline_answer(self) -> OfflineAnswer {
        match self {
            Workload::Team => OfflineAnswer::Team,
            Workload::Noop => OfflineAnswer::Brief,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Workload::Team => "team steps (knowledge shared, a concern raised)",
            Workload::Noop => "no-op steps (a ~200 B output, no knowledge)",
        }
    }
}

/// This process's resident set size in KiB (`VmRSS`), where `/proc` tells it.
fn resident_kib() -> Option<u64> {
    std::fs::read_to_string("/proc/self/status")
        .ok()?
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

fn step_id(i: usize) -> String {
    format!("step-{}", i + 1)
}

#[derive(Default)]
struct ExecutionTimes {
    started: Option<DateTime<Utc>>,
    finished: Option<DateTime<Utc>>,
    failed: bool,
    /// Per step id: when it was scheduled, started and completed.
    step_scheduled: HashMap<String, DateTime<Utc>>,
    step_started: HashMap<String, DateTime<Utc>>,
    step_completed: HashMap<String, DateTime<Utc>>,
}

impl ExecutionTimes {
    /// How many of the execution's steps ran at once (from `StepStarted` to `StepCompleted`):
    /// the time-weighted average while at least one ran, and the peak. `None` without steps.
    fn overlap(&self) -> Option<(f64, usize)> {
        let mut edges: Vec<(DateTime<Utc>, i32)> = Vec::new();
        for (step, started) in &self.step_started {
            if let Some(completed) = self.step_completed.get(step) {
                edges.push((*started, 1));
                edges.push((*completed, -1));
            }
        }
        // At equal times a completion comes first: a handoff is no overlap.
        edges.sort_unstable();
        let (mut running, mut peak) = (0i32, 0i32);
        let (mut busy, mut weighted) = (0u64, 0u64);
        let mut previous: Option<DateTime<Utc>> = None;
        for (at, delta) in edges {
            if let Some(previous) = previous {
                let span = micros(at, previous);
                if running > 0 {
                    busy += span;
                    weighted += span * running as u64;
                }
            }
            running += delta;
            peak = peak.max(running);
            previous = Some(at);
        }
        (peak > 0).then(|| {
            let average = if busy == 0 {
                1.0
            } else {
                weighted as f64 / busy as f64
            };
            (average, peak as usize)
        })
    }
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
    let steps = setting("BENCH_STEPS", 5).max(1) as usize;
    let latency_ms = setting("BENCH_LATENCY_MS", 0);
    let concurrency = setting("BENCH_WORKER_CONCURRENCY", 256) as usize;
    let start_parallelism = setting("BENCH_START_PARALLELISM", 64).max(1) as usize;
    let rate = setting("BENCH_RATE", 0);
    let shape = match choice("BENCH_SHAPE", "pipeline").as_str() {
        "pipeline" => Shape::Pipeline,
        "dag" => Shape::Dag {
            fanout: setting("BENCH_FANOUT", 10).max(1) as usize,
        },
        other => anyhow::bail!("BENCH_SHAPE must be 'pipeline' or 'dag', not '{other}'"),
    };
    let workload = match choice("BENCH_WORKLOAD", "team").as_str() {
        "team" => Workload::Team,
        "noop" => Workload::Noop,
        other => anyhow::bail!("BENCH_WORKLOAD must be 'team' or 'noop', not '{other}'"),
    };
    let mode = choice("BENCH_MODE", "run");
    let (starts_only, sequential) = match mode.as_str() {
        "run" => (false, false),
        "starts" => (true, false),
        "sequential" => (false, true),
        other => anyhow::bail!("BENCH_MODE must be 'run', 'starts' or 'sequential', not '{other}'"),
    };
    // Starts of one workflow queue behind each other (execution numbers are consecutive);
    // spreading the executions over several identical workflows shows the steps' own ceiling.
    // The starts measurement is of one workflow.
    let workflows = if starts_only || sequential {
        1
    } else {
        setting("BENCH_WORKFLOWS", 1).max(1)
    };
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let workload_line = workload.describe();
    if sequential {
        println!(
            "cadre bench (sequential): {executions} executions x {steps} steps, one at a time, \
             {workload_line}, offline provider latency {latency_ms} ms, {cores} cores"
        );
    } else if starts_only {
        println!(
            "cadre bench (starts): {executions} starts of one {steps}-step {} workflow from \
             {start_parallelism} concurrent HTTP clients, {workload_line}, offline provider \
             latency {latency_ms} ms, worker concurrency {concurrency}, {cores} cores",
            shape.describe()
        );
    } else {
        println!(
            "cadre bench: {executions} executions x {steps} steps over {workflows} workflow(s), \
             {workload_line}, offline provider latency {latency_ms} ms, worker concurrency \
             {concurrency}, {cores} cores"
        );
        if rate > 0 {
            println!(
                "offered: {rate} steps/s ({:.1} executions started per second)",
                rate as f64 / steps as f64
            );
        }
        if shape != Shape::Pipeline {
            println!("shape: {}", shape.describe());
        }
    }

    let stack = Stack::start_with(StackOptions {
        offline_latency_ms: latency_ms,
        offline_answer: workload.offline_answer(),
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
            .create_workflow(&shape.workflow(&agent_ids, steps, workload))
            .await;
        workflow_ids.push(workflow["id"].as_str().unwrap_or_default().to_owned());
    }

    if starts_only {
        let outcome = measure_starts(&api, &workflow_ids[0], executions, start_parallelism).await;
        // The executions are still running: stop the services under them, as a deploy would.
        stack.stop().await;
        return outcome;
    }
    if sequential {
        return measure_sequential(stack, &workflow_ids[0], executions, steps).await;
    }
    measure_runs(
        stack,
        &workflow_ids,
        shape,
        executions,
        steps,
        Starts {
            // An open loop: a start is sent when due, however many are still unanswered.
            parallelism: if rate > 0 {
                usize::try_from(executions).unwrap_or(usize::MAX).max(1)
            } else {
                start_parallelism
            },
            executions_per_s: rate as f64 / steps as f64,
        },
    )
    .await
}

/// How `BENCH_MODE=run` starts its executions.
struct Starts {
    /// Concurrent start requests at most.
    parallelism: usize,
    /// Executions started per second, evenly paced; 0 starts them all at once.
    executions_per_s: f64,
}

impl Starts {
    /// When start number `i` is due, counted from `first`.
    fn due(&self, first: Instant, i: u64) -> Instant {
        if self.executions_per_s > 0.0 {
            first + Duration::from_secs_f64(i as f64 / self.executions_per_s)
        } else {
            first
        }
    }
}

/// `BENCH_MODE=starts`: `executions` start requests for one workflow, `parallelism` at a time;
/// prints the accepted starts per second and the requests' latency. Waits for no execution.
async fn measure_starts(
    api: &Api,
    workflow_id: &str,
    executions: u64,
    parallelism: usize,
) -> anyhow::Result<()> {
    let path = format!("/v1/workflows/{workflow_id}/executions");
    let body = json!({});
    let wall = Instant::now();
    let replies = futures::stream::iter(0..executions)
        .map(|_| async {
            let sent = Instant::now();
            let reply = api.post(&path, &body).await;
            (reply.status, sent.elapsed())
        })
        .buffer_unordered(parallelism)
        .collect::<Vec<(u16, Duration)>>()
        .await;
    let took = wall.elapsed().as_secs_f64();

    let mut accepted = Histogram::<u64>::new(3)?;
    let mut refused: HashMap<u16, u64> = HashMap::new();
    for (status, latency) in &replies {
        if *status == 202 {
            accepted.record(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX))?;
        } else {
            *refused.entry(*status).or_default() += 1;
        }
    }
    println!(
        "starts: {} accepted in {took:.2} s = {:.0} starts/s ({parallelism} concurrent clients)",
        accepted.len(),
        accepted.len() as f64 / took
    );
    println!(
        "start request (POST -> 202): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        ms(&accepted, 0.5),
        ms(&accepted, 0.99),
        ms(&accepted, 1.0)
    );
    if !refused.is_empty() {
        let mut refused: Vec<_> = refused.into_iter().collect();
        refused.sort_unstable();
        println!("refused starts (status: count): {refused:?}");
    }
    Ok(())
}

/// What the log holds from one sequence to another: the times of each execution's facts, by
/// execution id; each event's sequence and store time; how many `StepStarted` there were.
type RunsRead = (
    HashMap<String, ExecutionTimes>,
    Vec<(u64, DateTime<Utc>)>,
    u64,
);

/// Every event of the log from `first_sequence` to `last_sequence`, read after the load.
async fn read_runs(
    stack: &Stack,
    first_sequence: u64,
    last_sequence: u64,
) -> anyhow::Result<RunsRead> {
    let mut log = stack
        .read_log_from(first_sequence, &[subjects::ALL_EVENTS])
        .await?;
    let mut times: HashMap<String, ExecutionTimes> = HashMap::new();
    let mut stored: Vec<(u64, DateTime<Utc>)> = Vec::new();
    let mut step_events = 0;
    while stored
        .last()
        .is_none_or(|(sequence, _)| *sequence < last_sequence)
    {
        let Some(message) = tokio::time::timeout(Duration::from_secs(60), log.next()).await? else {
            anyhow::bail!("the event log ended");
        };
        let message = message?;
        let info = message.info().map_err(|e| anyhow::anyhow!("{e}"))?;
        let at = DateTime::<Utc>::from_timestamp_nanos(
            i64::try_from(info.published.unix_timestamp_nanos()).unwrap_or(0),
        );
        stored.push((info.stream_sequence, at));
        // The subject says all the bench needs: `...execution.<id>.<fact>` or
        // `...execution.<id>.step.<step>.<fact>`.
        let tokens: Vec<&str> = message.subject.split('.').collect();
        if tokens.get(5) != Some(&"execution") {
            continue;
        }
        let entry = times.entry(tokens[6].to_owned()).or_default();
        let step = || tokens[8].to_owned();
        match (tokens.get(7), tokens.get(9)) {
            (Some(&"step"), Some(&"scheduled")) => _ = entry.step_scheduled.insert(step(), at),
            (Some(&"step"), Some(&"started")) => {
                step_events += 1;
                entry.step_started.insert(step(), at);
            }
            (Some(&"step"), Some(&"completed")) => _ = entry.step_completed.insert(step(), at),
            (Some(&"started"), None) => entry.started = Some(at),
            (Some(&"completed"), None) => entry.finished = Some(at),
            (Some(&"failed"), None) => {
                entry.finished = Some(at);
                entry.failed = true;
            }
            _ => {}
        }
    }
    Ok((times, stored, step_events))
}

/// `BENCH_MODE=run`: starts the executions, follows the event log until every one finished and
/// the projector caught up, then prints the figures.
async fn measure_runs(
    stack: Stack,
    workflow_ids: &[String],
    shape: Shape,
    executions: u64,
    steps: usize,
    starts: Starts,
) -> anyhow::Result<()> {
    let api = stack.api.clone();
    // Watch the executions' ends from here on, and the projector's commits. The rest of the
    // log is read once the load is over: a live reader of every event would cost the server a
    // delivery per event, load the machine it measures and lower the figure.
    let completed = subjects::every_execution(subjects::COMPLETED);
    let failed = subjects::every_execution(subjects::FAILED);
    let LogWatch {
        first_sequence,
        events: mut endings,
        commits: mut commit_receiver,
        projection,
    } = stack
        .watch_log_and_commits(&[&completed, &failed], Utc::now)
        .await?;

    // The whole process's resident memory, sampled while the executions run.
    let baseline_rss = resident_kib();
    let sampling = tokio_util::sync::CancellationToken::new();
    let sampler = tokio::spawn({
        let stop = sampling.clone();
        async move {
            let mut peak = 0;
            while !stop.is_cancelled() {
                peak = resident_kib().map_or(peak, |now| now.max(peak));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            peak
        }
    });

    let first_sent = Utc::now();
    let wall = Instant::now();
    let http_latencies = futures::stream::iter(0..executions)
        .then(|i| {
            let due = starts.due(wall, i);
            async move {
                tokio::time::sleep_until(due.into()).await;
                i
            }
        })
        .map(|i| {
            let api = api.clone();
            let workflow_id = workflow_ids[i as usize % workflow_ids.len()].clone();
            async move {
                let started = Instant::now();
                // The figure counts once the read models show everything: the start need not
                // wait for them.
                api.start_execution_without_waiting(&workflow_id).await;
                started.elapsed()
            }
        })
        .buffer_unordered(starts.parallelism)
        .collect::<Vec<Duration>>()
        .await;
    let accepted_in = wall.elapsed();

    let mut finished = 0u64;
    let mut last_sequence = 0;
    while finished < executions {
        let Some(message) = tokio::time::timeout(Duration::from_secs(120), endings.next()).await?
        else {
            anyhow::bail!("the event log ended");
        };
        let info = message?
            .info()
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .stream_sequence;
        last_sequence = last_sequence.max(info);
        finished += 1;
    }
    sampling.cancel();
    let peak_rss = sampler.await.unwrap_or(0);

    // Let the projector finish before reading the log for the times: reading and decoding the
    // whole run's events here would take the cores from the projector's last batches, and
    // delay the very commit the read-model figures end at.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let checkpoint = read_checkpoints(&stack.db.pool).await?.read_models();
        if checkpoint >= last_sequence || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (times, stored, step_events) = read_runs(&stack, first_sequence, last_sequence).await?;
    let failed = times.values().filter(|t| t.failed).count();
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
    let completed_rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM workflow_executions WHERE status = 'completed'")
            .fetch_one(&stack.db.pool)
            .await?;
    // The checkpoint can be read before its commit's notification arrives: wait for it.
    let mut commits: Vec<(u64, DateTime<Utc>)> = Vec::new();
    while commits
        .last()
        .is_none_or(|(covered, _)| *covered < last_sequence)
    {
        match tokio::time::timeout(Duration::from_secs(5), commit_receiver.recv()).await {
            Ok(Some(commit)) => commits.push(commit),
            _ => break,
        }
    }
    projection.abort();
    while let Ok(commit) = commit_receiver.try_recv() {
        commits.push(commit);
    }
    stack.stop().await;

    // Step handoff: the last of a step's dependencies completed -> the step started, within
    // each execution (in a pipeline: step k completed -> step k+1 started).
    let dependencies: Vec<(String, Vec<String>)> = (0..steps)
        .map(|i| (step_id(i), shape.dependencies(i)))
        .filter(|(_, on)| !on.is_empty())
        .collect();
    let mut handoff = Histogram::<u64>::new(3)?;
    // The handoff's two stages: the coordinator's decision, then the queue and the worker.
    let mut deciding = Histogram::<u64>::new(3)?;
    let mut dispatching = Histogram::<u64>::new(3)?;
    let mut end_to_end = Histogram::<u64>::new(3)?;
    let (mut overlap_sum, mut peak_sum, mut peak_max, mut overlapped) = (0.0, 0usize, 0usize, 0u32);
    for t in times.values() {
        for (step, on) in &dependencies {
            let last_done = on
                .iter()
                .map(|d| t.step_completed.get(d).copied())
                .collect::<Option<Vec<_>>>()
                .and_then(|done| done.into_iter().max());
            if let (Some(done), Some(next)) = (last_done, t.step_started.get(step)) {
                handoff.record(micros(*next, done))?;
                if let Some(scheduled) = t.step_scheduled.get(step) {
                    deciding.record(micros(*scheduled, done))?;
                    dispatching.record(micros(*next, *scheduled))?;
                }
            }
        }
        if let (Some(start), Some(end)) = (t.started, t.finished) {
            end_to_end.record(micros(end, start))?;
        }
        if let Some((average, peak)) = t.overlap() {
            overlap_sum += average;
            peak_sum += peak;
            peak_max = peak_max.max(peak);
            overlapped += 1;
        }
    }
    let mut http = Histogram::<u64>::new(3)?;
    for latency in &http_latencies {
        http.record(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX))?;
    }
    // Projection lag: the first commit that covers an event, minus the event's store time
    // (`stored` is in log order).
    let mut lag = Histogram::<u64>::new(3)?;
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
        "throughput: {:.0} steps/s end to end ({total_steps} steps in {wall:.2} s, first event \
         stored -> last event stored)",
        total_steps as f64 / wall
    );
    // The figure that compares with a peer's: from the first start request until every read
    // model shows every event (the projector's commit that covers the last one).
    let visible_at = commits
        .iter()
        .find(|(covered, _)| *covered >= last_sequence)
        .map(|(_, at)| *at);
    let visible_steps_per_s = visible_at.map(|at| {
        let took = micros(at, first_sent) as f64 / 1e6;
        let steps_per_s = total_steps as f64 / took;
        println!(
            "throughput (read models visible): {steps_per_s:.0} steps/s ({total_steps} steps in \
             {took:.2} s, first start request -> the projector's commit of the last event)"
        );
        steps_per_s
    });
    let handoff_what = match shape {
        Shape::Pipeline => "StepCompleted -> next StepStarted",
        Shape::Dag { .. } => "last dependency's StepCompleted -> StepStarted",
    };
    println!(
        "step handoff ({handoff_what}): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms over {} handoffs",
        ms(&handoff, 0.5),
        ms(&handoff, 0.99),
        ms(&handoff, 1.0),
        handoff.len()
    );
    println!(
        "  of which -> StepScheduled (the coordinator): p50 {:.1} ms, p99 {:.1} ms; \
         StepScheduled -> StepStarted (the queue and the worker): p50 {:.1} ms, p99 {:.1} ms",
        ms(&deciding, 0.5),
        ms(&deciding, 0.99),
        ms(&dispatching, 0.5),
        ms(&dispatching, 0.99)
    );
    println!(
        "execution (ExecutionStarted -> ExecutionCompleted): p50 {:.1} ms, p99 {:.1} ms",
        ms(&end_to_end, 0.5),
        ms(&end_to_end, 0.99)
    );
    if overlapped > 0 {
        println!(
            "overlap (steps of one execution running at once, StepStarted -> StepCompleted): \
             average {:.2} while any runs, peak {:.2} on average, max {peak_max} (the shape allows {})",
            overlap_sum / f64::from(overlapped),
            peak_sum as f64 / f64::from(overlapped),
            shape.width(steps)
        );
    }
    // Steps in flight across all executions: a sweep over the StepStarted -> StepCompleted
    // intervals.
    let mut edges: Vec<(DateTime<Utc>, i64)> = times
        .values()
        .flat_map(|t| {
            t.step_started.iter().filter_map(|(step, started)| {
                let done = t.step_completed.get(step)?;
                Some([(*started, 1), (*done, -1)])
            })
        })
        .flatten()
        .collect();
    edges.sort_unstable();
    let (mut running, mut peak_in_flight) = (0i64, 0i64);
    for (_, change) in edges {
        running += change;
        peak_in_flight = peak_in_flight.max(running);
    }
    if let Some(baseline) = baseline_rss
        && peak_in_flight > 0
    {
        let grown = peak_rss.saturating_sub(baseline);
        println!(
            "in flight: peak {peak_in_flight} steps at once; memory (the whole process: \
             coordinator, projector, worker, bench): {:.0} MiB before, peak {:.0} MiB, \
             {:.1} KiB more per in-flight step",
            baseline as f64 / 1024.0,
            peak_rss as f64 / 1024.0,
            grown as f64 / peak_in_flight as f64
        );
    }
    println!(
        "projection lag (event stored -> row visible): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms over {} events",
        ms(&lag, 0.5),
        ms(&lag, 0.99),
        ms(&lag, 1.0),
        lag.len()
    );
    match visible_steps_per_s {
        Some(steps_per_s) if failed == 0 && completed_rows as u64 == executions => {
            println!("result: steps_per_s={steps_per_s:.1}");
        }
        _ => println!(
            "result: invalid (failed executions, or read models not caught up within the deadline)"
        ),
    }
    Ok(())
}

/// `BENCH_MODE=sequential`: low load. One execution at a time, each started once the one
/// before is visible in the read models; prints the time per step from the start request to
/// the projector's commit of the execution's `ExecutionCompleted`.
async fn measure_sequential(
    stack: Stack,
    workflow_id: &str,
    executions: u64,
    steps: usize,
) -> anyhow::Result<()> {
    // Not measured: the first executions open connections and fill caches.
    const WARM_UP: u64 = 3;
    let api = stack.api.clone();
    // Watch the log from here on, and the projector's commits.
    let LogWatch {
        mut events,
        mut commits,
        projection,
        ..
    } = stack
        .watch_log_and_commits(&[subjects::ALL_EXECUTION_STATES], Instant::now)
        .await?;

    let mut stored = Histogram::<u64>::new(3)?;
    let mut visible = Histogram::<u64>::new(3)?;
    // Each stage of a step, from when the bench sees one event in the log to the next:
    // StepScheduled -> StepStarted (handing over: the coordinator dispatches it, a worker takes
    // it, checks the log and reads its dependencies), StepStarted -> StepCompleted (the work:
    // knowledge, prompt, the provider, what the step shared), StepCompleted -> the next
    // StepScheduled (the coordinator decides), and the start request -> the first StepScheduled.
    let mut stages: [(&str, Histogram<u64>); 4] = [
        ("start request -> first StepScheduled", Histogram::new(3)?),
        ("StepScheduled -> StepStarted", Histogram::new(3)?),
        ("StepStarted -> StepCompleted", Histogram::new(3)?),
        ("StepCompleted -> next StepScheduled", Histogram::new(3)?),
    ];
    let mut failed = 0u64;
    let mut latest_commit: Option<(u64, Instant)> = None;
    let wait = Duration::from_secs(60);
    for i in 0..WARM_UP + executions {
        let sent = Instant::now();
        // Answered once the log has the run: a start that waited for the read models as well
        // would have the bench read the run's first events only after that wait, and time the
        // first stage by it.
        let (execution_id, _) = api.start_execution_without_waiting(workflow_id).await;
        // The stage each step event ends, and when the bench saw it.
        let mut seen: Vec<(usize, Duration)> = Vec::new();
        let mut last: (&str, Instant) = ("start", sent);
        // Follow the log to this execution's end: `...execution.<id>.completed` (or `failed`).
        let (sequence, seen_at, completed) = loop {
            let Some(message) = tokio::time::timeout(wait, events.next()).await? else {
                anyhow::bail!("the event log ended");
            };
            let message = message?;
            let arrived = Instant::now();
            let tokens: Vec<&str> = message.subject.split('.').collect();
            if tokens.len() < 8 || tokens[5] != "execution" || tokens[6] != execution_id {
                continue;
            }
            if tokens.len() == 10 && tokens[7] == "step" {
                let stage = match (last.0, tokens[9]) {
                    ("start", "scheduled") => Some(0),
                    ("scheduled", "started") => Some(1),
                    ("started", "completed") => Some(2),
                    ("completed", "scheduled") => Some(3),
                    _ => None,
                };
                if let Some(stage) = stage {
                    seen.push((stage, arrived - last.1));
                }
                if let Some(fact) = ["scheduled", "started", "completed"]
                    .into_iter()
                    .find(|fact| *fact == tokens[9])
                {
                    last = (fact, arrived);
                }
                continue;
            }
            if tokens.len() != 8 {
                continue;
            }
            if tokens[7] == "completed" || tokens[7] == "failed" {
                let info = message.info().map_err(|e| anyhow::anyhow!("{e}"))?;
                break (
                    info.stream_sequence,
                    Instant::now(),
                    tokens[7] == "completed",
                );
            }
        };
        // The first commit that covers that event.
        let visible_at = loop {
            if let Some((covered, at)) = latest_commit
                && covered >= sequence
            {
                break at;
            }
            latest_commit = tokio::time::timeout(wait, commits.recv()).await?;
            if latest_commit.is_none() {
                anyhow::bail!("the projector's notifications ended");
            }
        };
        if i < WARM_UP {
            continue;
        }
        failed += u64::from(!completed);
        for (stage, took) in seen {
            stages[stage].1.record(u64::try_from(took.as_micros())?)?;
        }
        stored.record(u64::try_from((seen_at - sent).as_micros())?)?;
        visible.record(u64::try_from((visible_at.max(sent) - sent).as_micros())?)?;
    }
    projection.abort();
    stack.stop().await;

    let per_step = ms(&visible, 0.5) / steps as f64;
    println!("finished: {executions} executions ({failed} failed)");
    println!(
        "execution (start request -> ExecutionCompleted seen in the log): p50 {:.2} ms, p99 {:.2} ms",
        ms(&stored, 0.5),
        ms(&stored, 0.99)
    );
    println!(
        "execution (start request -> read models visible): p50 {:.2} ms, p99 {:.2} ms, mean {:.2} ms",
        ms(&visible, 0.5),
        ms(&visible, 0.99),
        visible.mean() / 1000.0
    );
    println!(
        "per step: {per_step:.2} ms (execution p50 with read models visible / {steps}), mean {:.2} ms",
        visible.mean() / 1000.0 / steps as f64
    );
    for (stage, took) in &stages {
        println!(
            "  stage {stage}: p50 {:.2} ms, p99 {:.2} ms",
            ms(took, 0.5),
            ms(took, 0.99)
        );
    }
    if failed == 0 {
        println!("result: ms_per_step={per_step:.3}");
    } else {
        println!("result: invalid (some executions failed)");
    }
    Ok(())
}
