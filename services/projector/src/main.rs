//! `cadre-projector`: configuration, telemetry and signals around [`cadre_projector`].

use anyhow::Context as _;
use cadre_projector::Config;
use cadre_runtime::{shutdown, telemetry};
use clap::{Parser, Subcommand};
use sqlx::postgres::PgPoolOptions;

#[derive(Parser)]
#[command(
    version,
    about = "Folds Cadre's event log into the Postgres read models"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Clone, Copy)]
enum Command {
    /// Project events as they are appended (the default).
    Run,
    /// Empty the read models, replay the whole event log into them, and exit.
    Rebuild,
    /// Bring the read-model schema up to date, and exit.
    Migrate,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config: Config = cadre_runtime::config::load().context("loading configuration")?;
    let _telemetry = telemetry::init("cadre-projector");
    let shutdown = shutdown::on_signal();

    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect(&config.database_url)
        .await
        .context("connecting to Postgres")?;
    cadre_projector::migrate(&pool)
        .await
        .context("migrating the read models")?;
    pool.close().await;

    match cli.command.unwrap_or(Command::Run) {
        Command::Migrate => {}
        Command::Run => cadre_projector::run(config, shutdown).await?,
        Command::Rebuild => tokio::select! {
            report = cadre_projector::rebuild(config) => println!("{}", report?),
            () = shutdown.cancelled() => anyhow::bail!("rebuild interrupted; run it again to finish"),
        },
    }
    Ok(())
}
