use std::net::SocketAddr;

use anyhow::Context as _;
use cadre_agent_worker::Config;
use cadre_runtime::health::{self, Readiness};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config: Config = cadre_runtime::config::load().context("loading configuration")?;
    let _telemetry = cadre_runtime::telemetry::init("cadre-agent-worker");
    let shutdown = cadre_runtime::shutdown::on_signal();

    let readiness = Readiness::default();
    let health_addr: SocketAddr = config.health_addr.parse().context("parsing health_addr")?;
    let bound = health::serve(health_addr, readiness.clone(), shutdown.clone())
        .await
        .context("serving health endpoints")?;
    tracing::info!(%bound, "health endpoints listening");

    cadre_agent_worker::run_with_readiness(config, readiness, shutdown).await
}
