//! `cadre`: parses the command line, runs the command, leaves with its exit code.

use std::process::ExitCode;

use clap::Parser;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = cadre_cli::Cli::parse();
    if let Err(error) = cli.check() {
        error.exit();
    }
    match cadre_cli::run(cli).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
