//! Cadre's three services in-process on a private NATS server and a fresh database, with a
//! team registered on the offline provider, for the browser test (`scripts/browser-test.sh`)
//! to drive the web console. Prints `CONSOLE_URL=<base URL>` once serving; stops cleanly on
//! SIGTERM or ctrl-c.

use cadre_tests::api::team;
use cadre_tests::{Stack, StackOptions};
use clap::Parser;

#[derive(Parser)]
#[command(about = "Runs a test stack for the browser test of the web console")]
struct Args {
    /// How long each offline LLM call takes, so a browser can see steps run.
    #[arg(long, default_value_t = 1500)]
    latency_ms: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let stack = Stack::start_with(StackOptions {
        offline_latency_ms: args.latency_ms,
        ..StackOptions::default()
    })
    .await;
    for agent in team("offline") {
        stack.api.register_agent(&agent).await;
    }
    println!("CONSOLE_URL={}", stack.api.base());

    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    stack.stop().await;
    Ok(())
}
