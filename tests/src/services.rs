//! Cadre's services as separate OS processes (the binaries cargo built next to the running
//! one), so a fault can kill, stop or restart one as an orchestrator or a crash would. Every
//! process is killed when its [`Process`] is dropped, also when the harness is interrupted.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use tokio::process::{Child, Command};

use crate::nats::free_port;

/// Which service a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Coordinator,
    Worker,
    Projector,
}

impl Kind {
    fn binary(self) -> &'static str {
        match self {
            Kind::Coordinator => "cadre-coordinator",
            Kind::Worker => "cadre-agent-worker",
            Kind::Projector => "cadre-projector",
        }
    }
}

/// What every service of one stack is started with.
#[derive(Debug, Clone)]
pub struct Environment {
    /// Where the service binaries are.
    pub bin_dir: PathBuf,
    /// Where each process writes its log (`<name>.log`, appended across restarts).
    pub log_dir: PathBuf,
    /// The NATS URL the services connect to: one server, or a cluster's servers separated by
    /// commas (see [`crate::nats::NatsCluster::nats_url`]).
    pub nats_url: String,
    pub database_url: String,
    /// Replicas of the streams and buckets a service creates (`CADRE_STREAM_REPLICAS`): 1 on a
    /// single server, 3 on a [`crate::nats::NatsCluster`].
    pub stream_replicas: usize,
    /// `CADRE_`-prefixed settings (without the prefix) given to every service of a kind.
    pub settings: Vec<(Kind, String, String)>,
}

impl Environment {
    /// The directory of the running executable: cargo builds every binary of the workspace
    /// there, so the services sit next to the harness.
    pub fn beside_current_exe() -> anyhow::Result<PathBuf> {
        let exe = std::env::current_exe().context("locating the running executable")?;
        Ok(exe
            .parent()
            .context("the executable has no directory")?
            .to_path_buf())
    }
}

/// One running service process.
pub struct Process {
    pub name: String,
    pub kind: Kind,
    /// The coordinator's API (`http://127.0.0.1:port`), or the health address of the others.
    pub base_url: String,
    child: Child,
}

impl Process {
    /// Starts `kind` as `name`, serving its API or health endpoints on `address`, and waits
    /// until it answers `/readyz` (at most a minute).
    pub async fn start(
        env: &Environment,
        kind: Kind,
        name: &str,
        address: &str,
    ) -> anyhow::Result<Self> {
        let binary = env.bin_dir.join(kind.binary());
        anyhow::ensure!(
            binary.exists(),
            "{} is missing: build the services first (cargo build --bins)",
            binary.display()
        );
        let log = log_file(&env.log_dir, name)?;
        let mut command = Command::new(&binary);
        command
            .env("NATS_URL", &env.nats_url)
            .env("DATABASE_URL", &env.database_url)
            .env("CADRE_STREAM_REPLICAS", env.stream_replicas.to_string())
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or("info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        match kind {
            Kind::Coordinator => command.env("CADRE_HTTP_ADDR", address),
            Kind::Worker => command
                .env("CADRE_HEALTH_ADDR", address)
                .env("CADRE_WORKER_ID", name),
            Kind::Projector => command.env("CADRE_HEALTH_ADDR", address).arg("run"),
        };
        for (_, key, value) in env.settings.iter().filter(|(k, _, _)| *k == kind) {
            command.env(format!("CADRE_{key}"), value);
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut process = Self {
            name: name.to_owned(),
            kind,
            base_url: format!("http://{address}"),
            child,
        };
        process.wait_ready(&env.log_dir).await?;
        Ok(process)
    }

    async fn wait_ready(&mut self, log_dir: &Path) -> anyhow::Result<()> {
        let http = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait()? {
                anyhow::bail!(
                    "{} exited with {status} while starting; see {}",
                    self.name,
                    log_dir.join(format!("{}.log", self.name)).display()
                );
            }
            let ready = http
                .get(format!("{}/readyz", self.base_url))
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .is_ok_and(|reply| reply.status().is_success());
            if ready {
                return Ok(());
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "{} did not become ready within a minute",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Sends `signal` (`KILL`, `STOP`, `CONT`, `TERM`) to the process.
    pub async fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let pid = self.pid().context("the process has already exited")?;
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .await?;
        anyhow::ensure!(status.success(), "kill -{signal} {pid} failed");
        Ok(())
    }

    /// `kill -9`, and waits for the process to be gone.
    pub async fn kill(mut self) -> anyhow::Result<()> {
        self.child.kill().await?;
        Ok(())
    }

    /// SIGTERM, and waits (at most 30 s) for a clean exit.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.signal("TERM").await?;
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .with_context(|| format!("{} did not stop within 30 s of SIGTERM", self.name))??;
        anyhow::ensure!(status.success(), "{} stopped with {status}", self.name);
        Ok(())
    }
}

fn log_file(dir: &Path, name: &str) -> anyhow::Result<std::fs::File> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!("{name}.log"));
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))
}

/// Runs a one-shot command of a service binary (`cadre-projector rebuild`, say) against
/// `database_url` and returns its standard output; its log goes to `<name>.log`.
pub async fn run_once(
    env: &Environment,
    kind: Kind,
    name: &str,
    database_url: &str,
    args: &[&str],
) -> anyhow::Result<String> {
    let log = log_file(&env.log_dir, name)?;
    let output = Command::new(env.bin_dir.join(kind.binary()))
        .args(args)
        .env("NATS_URL", &env.nats_url)
        .env("DATABASE_URL", database_url)
        .env("CADRE_STREAM_REPLICAS", env.stream_replicas.to_string())
        .env("CADRE_HEALTH_ADDR", format!("127.0.0.1:{}", free_port()))
        .stdin(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .output()
        .await?;
    anyhow::ensure!(
        output.status.success(),
        "{name} ({} {}) failed with {}; see its log in {}",
        kind.binary(),
        args.join(" "),
        output.status,
        env.log_dir.display()
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
