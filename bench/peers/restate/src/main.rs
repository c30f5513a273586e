//! Restate's side of `make bench-peers`: the same N x M workload as `cadre-bench`, run by
//! Restate's published server with a workflow written with its Rust SDK. Starts
//! `RESTATE_SERVER_BIN` on free ports with its data in a temporary directory, serves
//! [`workflow::BenchWorkflow`] in this process, registers it, runs the executions through the
//! ingress and prints figures; then stops the server and removes its data. Asserts nothing.
//!
//! Settings (environment), named as `cadre-bench`'s:
//! - `BENCH_MODE`: `run` (default: `BENCH_EXECUTIONS` executions, `BENCH_IN_FLIGHT` at a time,
//!   each a request that waits for the workflow's result; prints steps/s) or `sequential` (one
//!   execution at a time; prints ms per step).
//! - `BENCH_EXECUTIONS` (1000), `BENCH_STEPS` (5), `BENCH_IN_FLIGHT` (256).
//!
//! The last line is `result: steps_per_s=…` or `result: ms_per_step=…`, for
//! `scripts/bench-peers.sh`.

mod workflow;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::StreamExt;
use hdrhistogram::Histogram;
use restate_sdk::prelude::{Endpoint, HttpServer};

use workflow::BenchWorkflow;

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Run,
    Sequential,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mode = match std::env::var("BENCH_MODE")
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
        .as_str()
    {
        "" | "run" => Mode::Run,
        "sequential" => Mode::Sequential,
        other => bail!("BENCH_MODE must be 'run' or 'sequential', not '{other}'"),
    };
    let executions = setting("BENCH_EXECUTIONS", 1000).max(1);
    let steps = setting("BENCH_STEPS", 5).clamp(1, u64::from(u32::MAX)) as u32;
    let in_flight = setting("BENCH_IN_FLIGHT", 256).max(1) as usize;
    let server_bin = PathBuf::from(
        std::env::var("RESTATE_SERVER_BIN")
            .context("RESTATE_SERVER_BIN: the restate-server binary to run")?,
    );

    let data = tempfile::Builder::new()
        .prefix("cadre-peer-restate-")
        .tempdir()?;
    let mut server = RestateServer::start(&server_bin, data.path()).await?;
    // Stop the server and remove its data however the run ends: finished, failed or signalled.
    let outcome = tokio::select! {
        outcome = bench(&server, mode, executions, steps, in_flight) => outcome,
        signal = shutdown_signal() => {
            server.stop().await;
            drop(data);
            eprintln!("stopped by {signal}");
            std::process::exit(130);
        }
    };
    if outcome.is_err() {
        server.print_log_tail();
    }
    server.stop().await;
    drop(data);
    outcome
}

async fn shutdown_signal() -> &'static str {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "ctrl-c",
        _ = term.recv() => "SIGTERM",
    }
}

/// A `restate-server` child process on free local ports.
struct RestateServer {
    child: tokio::process::Child,
    version: String,
    admin: String,
    ingress: String,
    log: PathBuf,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl RestateServer {
    /// Starts the server with its published defaults (a single node, development mode), but
    /// on free ports, TCP only, without telemetry, and waits until its admin API answers.
    async fn start(bin: &Path, dir: &Path) -> anyhow::Result<Self> {
        let version = std::process::Command::new(bin)
            .arg("--version")
            .output()
            .with_context(|| format!("running {}", bin.display()))?;
        let version = String::from_utf8_lossy(&version.stdout).trim().to_owned();
        let (fabric, admin, ingress) = (free_port()?, free_port()?, free_port()?);
        let log = dir.join("restate-server.log");
        let log_file = std::fs::File::create(&log)?;
        let child = tokio::process::Command::new(bin)
            .arg("--no-logo")
            .args(["--listen-mode", "tcp"])
            .arg("--base-dir")
            .arg(dir.join("data"))
            .args(["--node-name", "bench"])
            .args(["--bind-address", &format!("127.0.0.1:{fabric}")])
            .env("RESTATE_ADMIN__BIND_ADDRESS", format!("127.0.0.1:{admin}"))
            .env(
                "RESTATE_INGRESS__BIND_ADDRESS",
                format!("127.0.0.1:{ingress}"),
            )
            .env("RESTATE_DISABLE_TELEMETRY", "true")
            .env("RESTATE_LOG_FILTER", "warn")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut server = Self {
            child,
            version,
            admin: format!("http://127.0.0.1:{admin}"),
            ingress: format!("http://127.0.0.1:{ingress}"),
            log,
        };
        if let Err(error) = server.wait_ready().await {
            server.print_log_tail();
            server.stop().await;
            return Err(error);
        }
        Ok(server)
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("restate-server exited while starting: {status}");
            }
            let admin = http.get(format!("{}/health", self.admin)).send().await;
            let ingress = http
                .get(format!("{}/restate/health", self.ingress))
                .send()
                .await;
            if admin.is_ok_and(|r| r.status().is_success())
                && ingress.is_ok_and(|r| r.status().is_success())
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("restate-server did not answer within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn print_log_tail(&self) {
        if let Ok(log) = std::fs::read_to_string(&self.log) {
            let lines: Vec<&str> = log.lines().collect();
            eprintln!("restate-server's log, last lines:");
            for line in &lines[lines.len().saturating_sub(30)..] {
                eprintln!("  {line}");
            }
        }
    }

    async fn stop(&mut self) {
        let _ = self.child.kill().await;
    }
}

async fn bench(
    server: &RestateServer,
    mode: Mode,
    executions: u64,
    steps: u32,
    in_flight: usize,
) -> anyhow::Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let endpoint = format!("http://{}", listener.local_addr()?);
    tokio::spawn(
        HttpServer::new(Endpoint::builder().bind(BenchWorkflow).build())
            .serve_with_cancel(listener, std::future::pending::<()>()),
    );

    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(in_flight)
        .timeout(Duration::from_secs(300))
        .build()?;
    let registered = http
        .post(format!("{}/deployments", server.admin))
        .json(&serde_json::json!({ "uri": endpoint }))
        .send()
        .await?;
    if !registered.status().is_success() {
        bail!(
            "registering {endpoint}: {} {}",
            registered.status(),
            registered.text().await.unwrap_or_default()
        );
    }

    let invoker = Invoker {
        http,
        ingress: server.ingress.clone(),
        steps,
        tag: format!(
            "{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis())
        ),
    };
    // The first invocations wait for the ingress to learn the new deployment, and open the
    // connections: not measured. Cadre's bench warms up its own way (agents, workflow).
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut warm = 0;
    while warm < 3 {
        match invoker.invoke(&format!("warm-{warm}")).await {
            Ok(_) => warm += 1,
            Err(error) if Instant::now() > deadline => return Err(error.context("warming up")),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }

    match mode {
        Mode::Run => {
            println!(
                "restate bench: {executions} executions x {steps} steps (a Workflow, one durable \
                 ctx.run per step), {in_flight} in flight, {}, {cores} cores",
                server.version
            );
            let wall = Instant::now();
            let outcomes = futures::stream::iter(0..executions)
                .map(|i| {
                    let invoker = &invoker;
                    async move { invoker.invoke(&format!("run-{i}")).await }
                })
                .buffer_unordered(in_flight)
                .collect::<Vec<_>>()
                .await;
            let took = wall.elapsed().as_secs_f64();
            let latencies = report_outcomes(&outcomes)?;
            let total_steps = latencies.len() as u64 * u64::from(steps);
            let steps_per_s = total_steps as f64 / took;
            println!(
                "throughput: {steps_per_s:.0} steps/s end to end ({total_steps} steps in {took:.2} s, \
                 first request sent -> last result received)"
            );
            println!(
                "execution (request -> result): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                ms(&latencies, 0.5),
                ms(&latencies, 0.99),
                ms(&latencies, 1.0)
            );
            if latencies.len() as u64 == executions {
                println!("result: steps_per_s={steps_per_s:.1}");
            } else {
                println!("result: invalid (some executions failed)");
            }
        }
        Mode::Sequential => {
            println!(
                "restate bench (sequential): {executions} executions x {steps} steps, one at a \
                 time, {}, {cores} cores",
                server.version
            );
            let mut outcomes = Vec::new();
            for i in 0..executions {
                outcomes.push(invoker.invoke(&format!("seq-{i}")).await);
            }
            let latencies = report_outcomes(&outcomes)?;
            let per_step = ms(&latencies, 0.5) / f64::from(steps);
            println!(
                "execution (request -> result): p50 {:.2} ms, p99 {:.2} ms, mean {:.2} ms",
                ms(&latencies, 0.5),
                ms(&latencies, 0.99),
                latencies.mean() / 1000.0
            );
            println!(
                "per step: {per_step:.2} ms (execution p50 / {steps}), mean {:.2} ms",
                latencies.mean() / 1000.0 / f64::from(steps)
            );
            if latencies.len() as u64 == executions {
                println!("result: ms_per_step={per_step:.3}");
            } else {
                println!("result: invalid (some executions failed)");
            }
        }
    }
    Ok(())
}

/// Prints the failures, if any; returns the successful executions' latencies (µs).
fn report_outcomes(outcomes: &[anyhow::Result<Duration>]) -> anyhow::Result<Histogram<u64>> {
    let mut latencies = Histogram::<u64>::new(3)?;
    let mut failures = 0;
    for outcome in outcomes {
        match outcome {
            Ok(latency) => latencies.record(u64::try_from(latency.as_micros())?)?,
            Err(error) => {
                failures += 1;
                if failures <= 3 {
                    eprintln!("execution failed: {error:#}");
                }
            }
        }
    }
    println!(
        "finished: {} executions ({failures} failed)",
        outcomes.len()
    );
    Ok(latencies)
}

fn ms(histogram: &Histogram<u64>, quantile: f64) -> f64 {
    histogram.value_at_quantile(quantile) as f64 / 1000.0
}

/// Starts workflows through the ingress and waits for their results.
struct Invoker {
    http: reqwest::Client,
    ingress: String,
    steps: u32,
    /// Keeps this run's workflow ids apart from any other's.
    tag: String,
}

impl Invoker {
    /// Runs workflow `name` to its end: one request that returns the workflow's result.
    async fn invoke(&self, name: &str) -> anyhow::Result<Duration> {
        let sent = Instant::now();
        let reply = self
            .http
            .post(format!(
                "{}/BenchWorkflow/{}-{name}/run",
                self.ingress, self.tag
            ))
            .json(&self.steps)
            .send()
            .await?;
        let status = reply.status();
        let body = reply.bytes().await?;
        if !status.is_success() {
            bail!("{status}: {}", String::from_utf8_lossy(&body));
        }
        Ok(sent.elapsed())
    }
}
