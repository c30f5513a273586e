//! A private nats-server per test: its own port and JetStream store, killed on drop; or a
//! private three-node cluster ([`NatsCluster`]) for the fault suite and the scale benchmark.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;

pub struct NatsServer {
    /// `None` while stopped ([`NatsServer::stop`]).
    child: Option<Child>,
    pub url: String,
    port: u16,
    store: tempfile::TempDir,
}

/// The nats-server binary: `NATS_SERVER_BIN`, else the one `scripts/ensure-nats.sh` installs.
pub fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("NATS_SERVER_BIN") {
        return path.into();
    }
    let installed = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.cadre/bin/nats-server");
    assert!(
        installed.exists(),
        "no nats-server 2.11+ found: run `make test` (it runs scripts/ensure-nats.sh), \
         or set NATS_SERVER_BIN"
    );
    installed
}

/// A local port nothing listens on now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free local port")
}

impl NatsServer {
    pub fn start() -> Self {
        let store = tempfile::tempdir().expect("temporary JetStream store");
        let port = free_port();
        let child = spawn_server(port, store.path());
        let deadline = Instant::now() + START_PATIENCE;
        while !listening(port) {
            assert!(
                Instant::now() < deadline,
                "nats-server did not start on port {port}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Self {
            child: Some(child),
            url: format!("nats://127.0.0.1:{port}"),
            port,
            store,
        }
    }

    /// Stops the server as an operator's restart would (SIGTERM: it stores what it holds and
    /// exits), and returns once it has exited. What it kept in memory only (memory-storage
    /// streams and buckets, subscriptions) is gone; [`NatsServer::start_again`] brings back
    /// what it stored. Waits without blocking the runtime, so the services under test live
    /// through the outage.
    pub async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let stopped = tokio::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .await
            .expect("running kill");
        assert!(stopped.success(), "kill -TERM nats-server failed");
        while child.try_wait().expect("nats-server's status").is_none() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Starts the stopped server again on the same port and store; returns once it listens.
    pub async fn start_again(&mut self) {
        assert!(self.child.is_none(), "nats-server is running");
        self.child = Some(spawn_server(self.port, self.store.path()));
        let deadline = Instant::now() + START_PATIENCE;
        while !listening(self.port) {
            assert!(
                Instant::now() < deadline,
                "nats-server did not start again on port {}",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// How long a server may take to listen once started.
const START_PATIENCE: Duration = Duration::from_secs(10);

/// Starts a single JetStream server on `port` storing in `store`.
fn spawn_server(port: u16, store: &Path) -> Child {
    Command::new(binary())
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(store)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting nats-server")
}

/// Whether something accepts connections on local `port`.
fn listening(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One node of a [`NatsCluster`].
struct Node {
    name: String,
    client_port: u16,
    monitor_port: u16,
    config: PathBuf,
    child: Option<Child>,
}

/// Three local nats-server processes forming one JetStream cluster (loopback only), each with
/// its own ports, store and config file; every write is synced to disk (`sync_interval:
/// always`), so a node killed with SIGKILL loses nothing it acknowledged. Streams created on it
/// should have 3 replicas. Every node is killed on drop.
pub struct NatsCluster {
    nodes: Vec<Node>,
    _dir: tempfile::TempDir,
}

/// How many nodes a [`NatsCluster`] has.
pub const CLUSTER_NODES: usize = 3;

impl NatsCluster {
    /// Starts the three nodes, each logging to `log_dir/nats-<n>.log`, and returns once
    /// JetStream has a meta leader and creates a stream with 3 replicas.
    pub async fn start(log_dir: &Path) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("cadre-nats-cluster-")
            .tempdir()
            .context("a directory for the cluster")?;
        std::fs::create_dir_all(log_dir)
            .with_context(|| format!("creating {}", log_dir.display()))?;
        let ports: Vec<(u16, u16, u16)> = (0..CLUSTER_NODES)
            .map(|_| (free_port(), free_port(), free_port()))
            .collect();
        let mut nodes = Vec::new();
        for (index, &(client_port, cluster_port, monitor_port)) in ports.iter().enumerate() {
            let name = format!("cadre-{}", index + 1);
            let store = dir.path().join(&name);
            let routes: Vec<String> = ports
                .iter()
                .enumerate()
                .filter(|(other, _)| *other != index)
                .map(|(_, (_, route, _))| format!("\"nats-route://127.0.0.1:{route}\""))
                .collect();
            let config = dir.path().join(format!("{name}.conf"));
            let log = log_dir.join(format!("nats-{}.log", index + 1));
            std::fs::write(
                &config,
                format!(
                    "server_name: \"{name}\"\n\
                     listen: \"127.0.0.1:{client_port}\"\n\
                     http: \"127.0.0.1:{monitor_port}\"\n\
                     log_file: \"{}\"\n\
                     jetstream {{\n  store_dir: \"{}\"\n  sync_interval: always\n}}\n\
                     cluster {{\n  name: \"cadre\"\n  listen: \"127.0.0.1:{cluster_port}\"\n  \
                     routes: [{}]\n}}\n",
                    log.display(),
                    store.display(),
                    routes.join(", ")
                ),
            )
            .with_context(|| format!("writing {}", config.display()))?;
            nodes.push(Node {
                name,
                client_port,
                monitor_port,
                config,
                child: None,
            });
        }
        let mut cluster = Self { nodes, _dir: dir };
        for index in 0..CLUSTER_NODES {
            cluster.spawn(index)?;
        }
        for index in 0..CLUSTER_NODES {
            cluster.wait_healthy(index, Duration::from_secs(60)).await?;
        }
        cluster.wait_for_replicated_streams().await?;
        Ok(cluster)
    }

    fn spawn(&mut self, index: usize) -> anyhow::Result<()> {
        let node = &mut self.nodes[index];
        let child = Command::new(binary())
            .arg("-c")
            .arg(&node.config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting nats-server {}", node.name))?;
        node.child = Some(child);
        Ok(())
    }

    /// Waits until node `index` says it is healthy (`/healthz`: it reached the meta leader and
    /// its streams and consumers have caught up).
    async fn wait_healthy(&self, index: usize, timeout: Duration) -> anyhow::Result<()> {
        let node = &self.nodes[index];
        let http = reqwest::Client::new();
        let url = format!("http://127.0.0.1:{}/healthz", node.monitor_port);
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let healthy = http
                .get(&url)
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .is_ok_and(|reply| reply.status().is_success());
            if healthy {
                return Ok(());
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "nats-server {} was not healthy within {timeout:?}",
                node.name
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A node can be healthy before the meta group places a replicated stream, and for a
    /// second or two after the first success the nodes still replace duplicate and pooled
    /// routes, during which a peer counts as offline and placement fails ("no suitable peers
    /// for placement"). So: create and delete a probe stream with 3 replicas until that has
    /// worked without a failure for two seconds.
    async fn wait_for_replicated_streams(&self) -> anyhow::Result<()> {
        let client = self.connect("cadre-cluster-probe").await?;
        let js = async_nats::jetstream::new(client);
        let name = format!("CADRE_PROBE_{}", uuid::Uuid::now_v7().simple());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let mut working_since: Option<tokio::time::Instant> = None;
        loop {
            let probe = async {
                js.create_stream(async_nats::jetstream::stream::Config {
                    name: name.clone(),
                    subjects: vec![format!("cadre-probe.{name}")],
                    num_replicas: CLUSTER_NODES,
                    ..Default::default()
                })
                .await
                .map_err(anyhow::Error::from)?;
                js.delete_stream(&name).await.map_err(anyhow::Error::from)
            };
            match probe.await {
                Ok(_) => {
                    let since = *working_since.get_or_insert_with(tokio::time::Instant::now);
                    if since.elapsed() >= Duration::from_secs(2) {
                        return Ok(());
                    }
                }
                Err(error) => {
                    working_since = None;
                    anyhow::ensure!(
                        tokio::time::Instant::now() < deadline,
                        "the cluster would not create a stream with {CLUSTER_NODES} replicas: \
                         {error}"
                    );
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Node `index`'s client URL (`nats://127.0.0.1:port`).
    pub fn url(&self, index: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[index].client_port)
    }

    /// Every node's client URL, node `first`'s first, separated by commas as the services'
    /// `NATS_URL` takes them: a service connects to one of them (the client shuffles the list)
    /// and, when it dies, to another.
    pub fn nats_url(&self, first: usize) -> String {
        (0..CLUSTER_NODES)
            .map(|offset| self.url((first + offset) % CLUSTER_NODES))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A client that knows every node from the start, so it connects and reconnects to
    /// whichever is alive.
    pub async fn connect(&self, name: &str) -> anyhow::Result<async_nats::Client> {
        cadre_runtime::bus::connect(&self.nats_url(0), name)
            .await
            .map_err(|e| anyhow::anyhow!("connecting to the NATS cluster: {e}"))
    }

    /// The index of the node whose `server_name` is `name` (as JetStream names a leader).
    pub fn node_named(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|node| node.name == name)
    }

    /// Node `index`'s `server_name`.
    pub fn name(&self, index: usize) -> &str {
        &self.nodes[index].name
    }

    /// SIGKILLs node `index` and waits until it is gone.
    pub fn kill(&mut self, index: usize) -> anyhow::Result<()> {
        let node = &mut self.nodes[index];
        let mut child = node
            .child
            .take()
            .with_context(|| format!("nats-server {} is not running", node.name))?;
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// Starts node `index` again on its ports and store, and waits until it has caught up
    /// (healthy, at most a minute).
    pub async fn restart(&mut self, index: usize) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.nodes[index].child.is_none(),
            "nats-server {} is running",
            self.nodes[index].name
        );
        self.spawn(index)?;
        self.wait_healthy(index, Duration::from_secs(60)).await
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for child in self.nodes.iter_mut().filter_map(|node| node.child.as_mut()) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
