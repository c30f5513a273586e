use cadre_coordinator::Config;
use cadre_runtime::{config, shutdown, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = telemetry::init("cadre-coordinator");
    let config: Config = config::load().map_err(|e| anyhow::anyhow!("configuration: {e}"))?;
    cadre_coordinator::run(config, shutdown::on_signal()).await
}
