//! `make chaos`: the fault suite. Cadre's three services run as separate processes on a private
//! nats-server and a fresh database; runs of a pipeline workflow are started as load, and while
//! their steps are in flight a fault is injected. Then the system drains (every accepted run
//! ended, the coordinator idle, the read models at the log's end) and the invariants are checked:
//!
//! - the ledger (every run whose start the API acknowledged, and every step attempt whose
//!   `StepScheduled` the log stored, so whose dispatch the coordinator owes) is complete: each run
//!   ended once, completed; each attempt was handed out and started by one event each and has
//!   exactly one outcome, in the log and as a row;
//! - no read-model row names a source event the log does not have;
//! - the read models equal a rebuild from sequence 1 (`cadre-projector rebuild` into a second
//!   database): per table, the row count and an MD5 of the rows, without the two columns that
//!   record when the projector wrote them.
//!
//! Each fault is one row of the table printed at the end: steps in flight when it was injected,
//! how many of those reached an outcome, steps or runs lost or duplicated, and the seconds from
//! the injection until the last of those steps had its outcome. The process exits 1 when any
//! invariant failed (listed under the table). Wall times are figures, never assertions.
//!
//! `kill-nats-node` runs on a three-node NATS cluster ([`NatsCluster`], streams with 3
//! replicas), `restart-nats` on a single server, the other faults on a single server unless
//! `CHAOS_CLUSTER=1` puts them on a cluster too.
//!
//! Settings (environment; `scripts/chaos.sh` documents them too): `CHAOS_FAULTS` (comma-separated
//! names of [`Fault`], default all), `CHAOS_CLUSTER` (0; 1: every fault on the cluster),
//! `CHAOS_ROUNDS` (3: each fault that many times), `CHAOS_EXECUTIONS` (24 runs a fault),
//! `CHAOS_STEPS` (4), `CHAOS_LATENCY_MS` (200, the offline provider's), `CHAOS_DRAIN_SECS` (180,
//! the most a drain may take), `CHAOS_SEED` (random: the faults' timing and choices; printed, so
//! a run can be repeated), `CHAOS_LOG_DIR` (the services' and the nats-servers' logs; default a
//! temporary directory kept only when a check failed).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context as _;
use cadre_coordinator::partitions;
use cadre_proto::{Envelope, TenantId, WorkflowId, streams, subjects};
use cadre_runtime::bus::{self, EventBus};
use cadre_runtime::projection::read_checkpoints;
use cadre_tests::api::{PIPELINE_SKILLS, pipeline, post_created, start_until_acknowledged, team};
use cadre_tests::audit::{self, Attempt, Findings, LogFacts};
use cadre_tests::fake_llm::FakeLlm;
use cadre_tests::nats::{CLUSTER_NODES, NatsCluster, NatsServer, free_port};
use cadre_tests::pg::TestDb;
use cadre_tests::services::{Environment, Kind, Process, run_once};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// The faults, in the order they run within a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// `kill -9` an agent worker (the two take turns), restarted a second later.
    KillWorker,
    /// `kill -9` the coordinator, restarted a second later on the same address.
    KillCoordinator,
    /// `kill -9` the projector, restarted a second later.
    KillProjector,
    /// SIGSTOP an agent worker for longer than the dispatch consumer's ack wait
    /// ([`streams::AGENT_WORKER_ACK_WAIT`]), so its steps go to the other worker; then SIGCONT:
    /// its late results must change nothing.
    PauseWorker,
    /// Unreadable messages on the subjects of every consumer: each must be terminated with a
    /// reason (the projector records it), and the rest flows.
    Poison,
    /// Every Postgres connection of the read models' database terminated, three times.
    PgKill,
    /// The LLM answers 30% of calls with 429 and `Retry-After: 1` for ten seconds: no step may
    /// fail and no step may call again before its `Retry-After`.
    RateLimit,
    /// A second projector replica beside the first, which then share the projections; the
    /// first is killed, and the second takes its projections over once its heartbeat expires.
    ProjectorFailover,
    /// The NATS connections of the coordinator and of one worker (through a loopback proxy)
    /// cut at random for eight seconds: publish acknowledgements get lost and are retried.
    LostAck,
    /// SIGKILL the NATS node that leads the event log (on the three-node cluster), restarted a
    /// few seconds later on the same store: the services reconnect to the other nodes, and
    /// nothing acknowledged is lost.
    KillNatsNode,
    /// Stop the single NATS server (SIGTERM) under load and start it again one to three seconds
    /// later on the same store: every service loses NATS at once, and the server comes back
    /// without what it held in memory only (the heartbeat buckets), which the services must
    /// bring back to go on.
    RestartNats,
    /// Copies of old events re-published with fresh `Nats-Msg-Id`s, so the stream stores them
    /// again (as after the duplicate window): the read models must not change and no service
    /// may act on them.
    Republish,
}

impl Fault {
    const ALL: [Fault; 12] = [
        Fault::KillWorker,
        Fault::KillCoordinator,
        Fault::KillProjector,
        Fault::PauseWorker,
        Fault::Poison,
        Fault::PgKill,
        Fault::RateLimit,
        Fault::ProjectorFailover,
        Fault::LostAck,
        Fault::RestartNats,
        Fault::KillNatsNode,
        Fault::Republish,
    ];

    fn name(self) -> &'static str {
        match self {
            Fault::KillWorker => "kill-worker",
            Fault::KillCoordinator => "kill-coordinator",
            Fault::KillProjector => "kill-projector",
            Fault::PauseWorker => "pause-worker",
            Fault::Poison => "poison",
            Fault::PgKill => "pg-kill",
            Fault::RateLimit => "rate-limit",
            Fault::ProjectorFailover => "projector-failover",
            Fault::LostAck => "lost-ack",
            Fault::KillNatsNode => "kill-nats-node",
            Fault::RestartNats => "restart-nats",
            Fault::Republish => "republish",
        }
    }

    /// Whether the fault runs on the three-node cluster: the one that needs it, and, with
    /// `CHAOS_CLUSTER=1`, every one that can (a single server's restart cannot).
    fn on_cluster(self, every_fault_on_cluster: bool) -> bool {
        match self {
            Fault::KillNatsNode => true,
            Fault::RestartNats => false,
            _ => every_fault_on_cluster,
        }
    }

    fn parse_list(list: &str) -> anyhow::Result<Vec<Fault>> {
        if list.trim().is_empty() || list.trim() == "all" {
            return Ok(Self::ALL.to_vec());
        }
        let mut faults = Vec::new();
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let Some(fault) = Self::ALL.into_iter().find(|f| f.name() == name) else {
                let known: Vec<_> = Self::ALL.iter().map(|f| f.name()).collect();
                anyhow::bail!("unknown fault '{name}' in CHAOS_FAULTS; known: {known:?}");
            };
            faults.push(fault);
        }
        // Run in the canonical order whatever the list's.
        faults.sort_by_key(|f| Self::ALL.iter().position(|a| a == f));
        faults.dedup();
        Ok(faults)
    }
}

#[derive(Clone)]
struct Settings {
    faults: Vec<Fault>,
    /// Every fault on the cluster, not only those that need it.
    cluster: bool,
    rounds: u64,
    executions: u64,
    steps: usize,
    latency_ms: u64,
    drain: Duration,
    seed: u64,
}

/// One line of the figures table.
struct Row {
    fault: Fault,
    round: u64,
    in_flight: usize,
    recovered: usize,
    lost: usize,
    duplicated: usize,
    recover_secs: Option<f64>,
    note: String,
    violations: Vec<String>,
}

/// What the watcher has seen of the log so far.
#[derive(Default)]
struct Observed {
    facts: LogFacts,
    /// When each attempt's outcome was seen.
    outcome_at: HashMap<Attempt, Instant>,
    last_sequence: u64,
}

fn lock(observed: &Mutex<Observed>) -> MutexGuard<'_, Observed> {
    observed
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Follows the whole log from sequence 1 into `observed`. On a cluster the node this reads
/// through may be killed: the watcher then carries on after the last event it saw, with a new
/// consumer once the client has reconnected, and gives up only when it cannot make one for a
/// minute.
async fn watch_log(bus: EventBus, observed: Arc<Mutex<Observed>>) -> anyhow::Result<()> {
    let mut failing_since: Option<Instant> = None;
    loop {
        let from = lock(&observed).last_sequence + 1;
        let error = follow_log(&bus, &observed, from, &mut failing_since)
            .await
            .err()
            .unwrap_or_else(|| anyhow::anyhow!("the log's consumer ended"));
        let since = *failing_since.get_or_insert_with(Instant::now);
        if since.elapsed() > Duration::from_secs(60) {
            return Err(error.context("following the log"));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Follows the log from sequence `from` (an ordered consumer) into `observed` until the
/// consumer fails; clears `failing_since` once the consumer is made.
async fn follow_log(
    bus: &EventBus,
    observed: &Mutex<Observed>,
    from: u64,
    failing_since: &mut Option<Instant>,
) -> anyhow::Result<()> {
    let consumer = bus
        .stream()
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
            filter_subject: subjects::ALL_EVENTS.to_owned(),
            deliver_policy: async_nats::jetstream::consumer::DeliverPolicy::ByStartSequence {
                start_sequence: from,
            },
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    *failing_since = None;
    while let Some(message) = messages.next().await {
        let message = message?;
        let sequence = message
            .info()
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .stream_sequence;
        let mut observed = lock(observed);
        observed.last_sequence = sequence;
        if let Ok(envelope) = Envelope::decode(&message.payload) {
            let before = observed.facts.outcomes.len();
            observed.facts.apply(sequence, &envelope);
            if observed.facts.outcomes.len() > before {
                let new: Vec<Attempt> = observed
                    .facts
                    .outcomes
                    .keys()
                    .filter(|a| !observed.outcome_at.contains_key(*a))
                    .cloned()
                    .collect();
                for attempt in new {
                    observed.outcome_at.insert(attempt, Instant::now());
                }
            }
        }
    }
    Ok(())
}

/// A loopback TCP proxy in front of NATS that can cut every connection through it at random.
struct Proxy {
    url: String,
    cuts: watch::Sender<u64>,
    accept: JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: &str) -> anyhow::Result<Self> {
        let upstream = upstream
            .strip_prefix("nats://")
            .unwrap_or(upstream)
            .to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("nats://{}", listener.local_addr()?);
        let (cuts, _) = watch::channel(0u64);
        let cut = cuts.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let mut cut = cut.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        // Both sockets close with the bytes the copy held (a publish or its
                        // acknowledgement) undelivered, as on a broken network.
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Ok(Self { url, cuts, accept })
    }

    fn cut(&self) {
        self.cuts.send_modify(|n| *n += 1);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// What the system runs on: one nats-server, or the three-node cluster.
enum Nats {
    Single(NatsServer),
    Cluster(NatsCluster),
}

impl Nats {
    async fn start(cluster: bool, log_dir: &std::path::Path) -> anyhow::Result<Self> {
        Ok(if cluster {
            Nats::Cluster(NatsCluster::start(log_dir).await?)
        } else {
            Nats::Single(NatsServer::start())
        })
    }

    /// The `NATS_URL` of the `index`-th connection: on the cluster, every node, a different one
    /// first in turn, so the services' connections are spread over them.
    fn url(&self, index: usize) -> String {
        match self {
            Nats::Single(server) => server.url.clone(),
            Nats::Cluster(cluster) => cluster.nats_url(index % CLUSTER_NODES),
        }
    }

    /// The one server the lost-ack proxy stands in front of: on the cluster, the first node.
    fn first_server(&self) -> String {
        match self {
            Nats::Single(server) => server.url.clone(),
            Nats::Cluster(cluster) => cluster.url(0),
        }
    }

    fn replicas(&self) -> usize {
        match self {
            Nats::Single(_) => 1,
            Nats::Cluster(_) => CLUSTER_NODES,
        }
    }

    /// The harness's own connection: on the cluster it knows every node from the start.
    async fn connect(&self) -> anyhow::Result<async_nats::Client> {
        match self {
            Nats::Single(server) => bus::connect(&server.url, "cadre-chaos")
                .await
                .map_err(|e| anyhow::anyhow!("NATS: {e}")),
            Nats::Cluster(cluster) => cluster.connect("cadre-chaos").await,
        }
    }
}

/// The system under test. Fields drop in order: the processes go before NATS and the databases.
struct System {
    coordinator: Option<Process>,
    /// A second coordinator replica, sharing the execution partitions with the first for the
    /// whole run: every fault also moves partitions between replicas.
    partner: Option<Process>,
    workers: Vec<Option<Process>>,
    projectors: Vec<Process>,
    proxy: Proxy,
    env: Environment,
    coordinator_addr: String,
    api: String,
    http: reqwest::Client,
    observed: Arc<Mutex<Observed>>,
    watcher: JoinHandle<anyhow::Result<()>>,
    bus: EventBus,
    llm: FakeLlm,
    shadow: TestDb,
    db: TestDb,
    nats: Nats,
    rng: fastrand::Rng,
    settings: Settings,
    offline_workflow: String,
    fake_workflow: String,
    /// Every run whose start the API acknowledged.
    accepted: Vec<String>,
}

/// The provider name the workers give the fake LLM.
const FAKE_PROVIDER: &str = "fake";
/// How many agent workers run.
const WORKERS: usize = 2;
/// The `Retry-After` of the rate-limit fault, in seconds.
const RETRY_AFTER_SECS: u64 = 1;

impl System {
    /// Starts everything on a single nats-server, or on the three-node cluster (`cluster`).
    /// The services connect to one URL each (on the cluster: the coordinator and the first
    /// worker through the proxy to the first node, the second worker to the second, the
    /// projector to the third), and learn the other nodes from the server.
    async fn start(
        settings: Settings,
        log_dir: &std::path::Path,
        cluster: bool,
    ) -> anyhow::Result<Self> {
        let nats = Nats::start(cluster, log_dir).await?;
        let db = TestDb::create().await;
        let shadow = TestDb::create().await;
        let llm = FakeLlm::start().await?;
        let client = nats.connect().await?;
        let bus = EventBus::open(async_nats::jetstream::new(client), nats.replicas())
            .await
            .map_err(|e| anyhow::anyhow!("event stream: {e}"))?;
        let observed = Arc::new(Mutex::new(Observed::default()));
        let watcher = tokio::spawn(watch_log(bus.clone(), observed.clone()));
        let proxy = Proxy::start(&nats.first_server()).await?;
        let provider = |key: &str, value: String| {
            (
                Kind::Worker,
                format!("PROVIDERS__{}__{key}", FAKE_PROVIDER.to_uppercase()),
                value,
            )
        };
        let env = Environment {
            bin_dir: Environment::beside_current_exe()?,
            log_dir: log_dir.to_path_buf(),
            nats_url: nats.url(2),
            database_url: db.url.clone(),
            stream_replicas: nats.replicas(),
            settings: vec![
                // A start answers at once: the projector may be down.
                (
                    Kind::Coordinator,
                    "READ_YOUR_WRITES_TIMEOUT_MS".into(),
                    "0".into(),
                ),
                (Kind::Coordinator, "SHARDS".into(), "16".into()),
                (Kind::Worker, "CONCURRENCY".into(), "64".into()),
                (
                    Kind::Worker,
                    "PROVIDERS__OFFLINE__LATENCY_MS".into(),
                    settings.latency_ms.to_string(),
                ),
                provider("KIND", "openai_compatible".into()),
                provider("BASE_URL", llm.base_url()),
                provider("API_KEY", "chaos-key".into()),
            ],
        };
        let rng = fastrand::Rng::with_seed(settings.seed);
        let coordinator_addr = format!("127.0.0.1:{}", free_port());
        let mut system = Self {
            coordinator: None,
            partner: None,
            workers: (0..WORKERS).map(|_| None).collect(),
            projectors: Vec::new(),
            proxy,
            env,
            api: format!("http://{coordinator_addr}"),
            coordinator_addr,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?,
            observed,
            watcher,
            bus,
            llm,
            shadow,
            db,
            nats,
            rng,
            settings,
            offline_workflow: String::new(),
            fake_workflow: String::new(),
            accepted: Vec::new(),
        };
        system.start_projector("projector-1").await?;
        for index in 0..WORKERS {
            system.start_worker(index).await?;
        }
        system.start_coordinator().await?;
        let partner_addr = format!("127.0.0.1:{}", free_port());
        system.partner = Some(
            Process::start(
                &system.env,
                Kind::Coordinator,
                "coordinator-2",
                &partner_addr,
            )
            .await?,
        );
        system.offline_workflow = system.create_workflow("offline").await?;
        system.fake_workflow = system.create_workflow(FAKE_PROVIDER).await?;
        Ok(system)
    }

    async fn start_coordinator(&mut self) -> anyhow::Result<()> {
        // Through the proxy, so the lost-ack fault can cut its connection.
        let env = Environment {
            nats_url: self.proxy.url.clone(),
            ..self.env.clone()
        };
        self.coordinator = Some(
            Process::start(
                &env,
                Kind::Coordinator,
                "coordinator",
                &self.coordinator_addr,
            )
            .await?,
        );
        Ok(())
    }

    async fn start_worker(&mut self, index: usize) -> anyhow::Result<()> {
        // The first worker through the proxy, the second straight to NATS.
        let env = Environment {
            nats_url: if index == 0 {
                self.proxy.url.clone()
            } else {
                self.nats.url(index)
            },
            ..self.env.clone()
        };
        let name = format!("worker-{}", index + 1);
        let address = format!("127.0.0.1:{}", free_port());
        self.workers[index] = Some(Process::start(&env, Kind::Worker, &name, &address).await?);
        Ok(())
    }

    async fn start_projector(&mut self, name: &str) -> anyhow::Result<()> {
        let address = format!("127.0.0.1:{}", free_port());
        self.projectors
            .push(Process::start(&self.env, Kind::Projector, name, &address).await?);
        Ok(())
    }

    /// Registers a team on `provider` and its pipeline; returns the workflow's id.
    async fn create_workflow(&self, provider: &str) -> anyhow::Result<String> {
        let mut ids = Vec::new();
        for mut agent in team(provider) {
            // Agent names are unique: one team per provider.
            agent["name"] = json!(format!(
                "{} ({provider})",
                agent["name"].as_str().unwrap_or_default()
            ));
            ids.push(self.post_created("/v1/agents", &agent).await?);
        }
        let workflow = pipeline(
            &format!("Chaos pipeline ({provider})"),
            &ids,
            &PIPELINE_SKILLS,
            self.settings.steps,
        );
        self.post_created("/v1/workflows", &workflow).await
    }

    async fn post_created(&self, path: &str, body: &Value) -> anyhow::Result<String> {
        post_created(&self.http, &format!("{}{path}", self.api), body).await
    }

    /// Starts `count` runs of `workflow` in the background, eight at a time, each retried with
    /// its `Idempotency-Key` until the API acknowledges it (the coordinator may be down, or its
    /// reply lost): the ids of the runs started, and the starts never acknowledged.
    fn start_runs(&self, workflow: &str, count: u64) -> JoinHandle<(Vec<String>, Vec<String>)> {
        let (http, api, workflow) = (self.http.clone(), self.api.clone(), workflow.to_owned());
        tokio::spawn(async move {
            let outcomes = futures::stream::iter(0..count)
                .map(|_| {
                    let key = uuid::Uuid::now_v7().to_string();
                    // The key is also the run's input, so the prompts (and the fake LLM) tell
                    // runs apart.
                    let body = json!({ "input": { "chaosRun": key } });
                    let (http, api, workflow) = (&http, &api, &workflow);
                    async move {
                        start_until_acknowledged(
                            http,
                            api,
                            workflow,
                            &key,
                            &body,
                            Duration::from_secs(120),
                        )
                        .await
                    }
                })
                .buffer_unordered(8)
                .collect::<Vec<_>>()
                .await;
            let mut started = Vec::new();
            let mut refused = Vec::new();
            for outcome in outcomes {
                match outcome {
                    Ok(id) => started.push(id),
                    Err(why) => refused.push(why),
                }
            }
            (started, refused)
        })
    }

    fn observed(&self) -> MutexGuard<'_, Observed> {
        lock(&self.observed)
    }

    /// Waits until the wave is under way: `count` more outcomes than `outcomes_before` (at most
    /// 30 s).
    async fn wait_for_progress(&self, outcomes_before: usize, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline
            && self.observed().facts.outcomes.len() < outcomes_before + count
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until every accepted run ended, the coordinator has nothing left to read, the
    /// watcher and the projector reached the log's end, and the log stays still. `false` at
    /// the drain deadline.
    async fn drain(&self) -> anyhow::Result<bool> {
        let deadline = Instant::now() + self.settings.drain;
        let mut still_since: Option<(u64, Instant)> = None;
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            // While a NATS node restarts, the harness's requests may fail until its client has
            // reconnected: not drained yet.
            let Ok(last) = self
                .bus
                .stream()
                .clone()
                .info()
                .await
                .map(|info| info.state.last_sequence)
            else {
                still_since = None;
                continue;
            };
            let (seen, all_ended) = {
                let observed = self.observed();
                let ended = self
                    .accepted
                    .iter()
                    .all(|e| observed.facts.endings.contains_key(e));
                (observed.last_sequence, ended)
            };
            let checkpoint = read_checkpoints(&self.db.pool)
                .await
                .map_or(0, |checkpoints| checkpoints.read_models());
            let coordinator_idle = partitions::backlog(self.bus.jetstream())
                .await
                .is_ok_and(|backlog| backlog == 0);
            let drained = all_ended && seen == last && checkpoint >= last && coordinator_idle;
            if !drained {
                still_since = None;
                continue;
            }
            // Still for a second: nothing more is on its way.
            match still_since {
                Some((at, since)) if at == last => {
                    if since.elapsed() >= Duration::from_secs(1) {
                        return Ok(true);
                    }
                }
                _ => still_since = Some((last, Instant::now())),
            }
        }
        Ok(false)
    }

    /// The invariants over the whole log and read models, the rebuild comparison included.
    async fn audit(&mut self) -> anyhow::Result<Findings> {
        let facts = LogFacts::read(&self.bus).await?;
        let mut findings = Findings::default();
        audit::check_log(&facts, &self.accepted, &mut findings);
        audit::check_read_models(&self.db.pool, &facts, &self.accepted, &mut findings).await?;
        // The rebuild shares the projector's durable consumer: stop the projectors meanwhile.
        for projector in std::mem::take(&mut self.projectors) {
            projector.stop().await?;
        }
        let report = run_once(
            &self.env,
            Kind::Projector,
            "rebuild",
            &self.shadow.url,
            &["rebuild"],
        )
        .await?;
        let live = audit::table_hashes(&self.db.pool).await?;
        let rebuilt = audit::table_hashes(&self.shadow.pool).await?;
        findings
            .violations
            .extend(audit::compare_hashes(&live, &rebuilt, "the rebuild", &[]));
        if findings.violations.is_empty() {
            println!("    rebuild: {}", report.trim());
        }
        self.start_projector("projector-1").await?;
        Ok(findings)
    }

    /// One round of a fault under load.
    async fn run_fault(&mut self, fault: Fault, round: u64) -> anyhow::Result<Row> {
        if fault == Fault::Republish {
            return self.republish(round).await;
        }
        let executions = self.settings.executions;
        let workflow = if fault == Fault::RateLimit {
            self.fake_workflow.clone()
        } else {
            self.offline_workflow.clone()
        };
        let mut violations = Vec::new();
        let mut advisories = None;
        match fault {
            Fault::ProjectorFailover => self.start_projector("projector-2").await?,
            Fault::Poison => {
                advisories = Some(
                    self.bus
                        .jetstream()
                        .client()
                        .subscribe("$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.>")
                        .await?,
                );
            }
            _ => {}
        }
        let (outcomes_before, requests_before) = (
            self.observed().facts.outcomes.len(),
            self.llm.requests().len(),
        );
        if fault == Fault::RateLimit {
            self.llm.rate_limit_share(30, RETRY_AFTER_SECS);
        }
        let starts = self.start_runs(&workflow, executions);
        self.wait_for_progress(outcomes_before, (executions as usize / 2).max(1))
            .await;
        let in_flight = self.observed().facts.in_flight();
        let injected = Instant::now();
        let note = self.inject(fault, &mut violations).await?;
        let (started, refused) = starts.await?;
        violations.extend(
            refused
                .into_iter()
                .map(|why| format!("a start was never acknowledged: {why}")),
        );
        let wave = started.clone();
        self.accepted.extend(started);
        if let Some(advisories) = advisories {
            violations.extend(self.poison_checks(advisories, &note).await?);
        }
        if !self.drain().await? {
            violations.push(format!(
                "did not drain within {} s",
                self.settings.drain.as_secs()
            ));
        }
        if fault == Fault::RateLimit {
            self.llm.rate_limit_share(0, 0);
            violations.extend(self.rate_limit_checks(&wave, requests_before));
        }
        let (recovered, recover_secs) = {
            let observed = self.observed();
            let times: Vec<Instant> = in_flight
                .iter()
                .filter_map(|a| observed.outcome_at.get(a).copied())
                .collect();
            let all = times.len() == in_flight.len();
            let last = times.into_iter().max();
            (
                observed
                    .facts
                    .outcomes
                    .keys()
                    .filter(|a| in_flight.contains(a))
                    .count(),
                all.then(|| {
                    last.map_or(0.0, |at| {
                        at.saturating_duration_since(injected).as_secs_f64()
                    })
                }),
            )
        };
        let findings = self.audit().await?;
        violations.extend(findings.violations);
        Ok(Row {
            fault,
            round,
            in_flight: in_flight.len(),
            recovered,
            lost: findings.lost,
            duplicated: findings.duplicated,
            recover_secs,
            note,
            violations,
        })
    }

    /// Injects `fault` into the running system; returns a note for the table.
    async fn inject(
        &mut self,
        fault: Fault,
        violations: &mut Vec<String>,
    ) -> anyhow::Result<String> {
        let pause = Duration::from_secs(1);
        Ok(match fault {
            Fault::KillWorker => {
                let index = self.rng.usize(0..WORKERS);
                if let Some(worker) = self.workers[index].take() {
                    worker.kill().await?;
                }
                tokio::time::sleep(pause).await;
                self.start_worker(index).await?;
                format!("killed worker-{}", index + 1)
            }
            Fault::KillCoordinator => {
                if let Some(coordinator) = self.coordinator.take() {
                    coordinator.kill().await?;
                }
                tokio::time::sleep(pause).await;
                self.start_coordinator().await?;
                "killed the coordinator (coordinator-2 shares the partitions)".to_owned()
            }
            Fault::KillProjector => {
                for projector in std::mem::take(&mut self.projectors) {
                    projector.kill().await?;
                }
                tokio::time::sleep(pause).await;
                self.start_projector("projector-1").await?;
                "killed the projector".to_owned()
            }
            Fault::PauseWorker => {
                let index = self.rng.usize(0..WORKERS);
                let worker = self.workers[index]
                    .as_ref()
                    .context("the worker is not running")?;
                worker.signal("STOP").await?;
                // Past the ack wait, so the other worker is handed its steps.
                let stopped = streams::AGENT_WORKER_ACK_WAIT + Duration::from_secs(5);
                tokio::time::sleep(stopped).await;
                worker.signal("CONT").await?;
                format!("worker-{} stopped {} s", index + 1, stopped.as_secs())
            }
            Fault::Poison => self.publish_poison().await?,
            Fault::PgKill => {
                let name = self
                    .db
                    .url
                    .rsplit('/')
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                let admin = sqlx::PgPool::connect(&cadre_tests::pg::admin_url()).await?;
                let mut terminated = 0i64;
                for _ in 0..3 {
                    terminated += sqlx::query_scalar::<_, i64>(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                         WHERE datname = $1 AND pid <> pg_backend_pid()",
                    )
                    .bind(&name)
                    .fetch_one(&admin)
                    .await?;
                    tokio::time::sleep(Duration::from_millis(self.rng.u64(300..900))).await;
                }
                admin.close().await;
                if terminated == 0 {
                    violations.push("no Postgres connection to terminate".to_owned());
                }
                format!("{terminated} connections terminated")
            }
            Fault::RateLimit => {
                // The limit was set before the wave; it holds for ten seconds from here.
                tokio::time::sleep(Duration::from_secs(10)).await;
                self.llm.rate_limit_share(0, 0);
                let limited = self
                    .llm
                    .requests()
                    .iter()
                    .filter(|r| r.status == 429)
                    .count();
                format!("{limited} calls answered 429")
            }
            Fault::ProjectorFailover => {
                // The first projector ran alone until the second started; they now share.
                let first = self.projectors.remove(0);
                first.kill().await?;
                "killed the first of two projectors".to_owned()
            }
            Fault::LostAck => {
                let until = Instant::now() + Duration::from_secs(8);
                let mut cuts = 0;
                while Instant::now() < until {
                    tokio::time::sleep(Duration::from_millis(self.rng.u64(100..1000))).await;
                    self.proxy.cut();
                    cuts += 1;
                }
                format!("{cuts} connection cuts")
            }
            Fault::KillNatsNode => self.kill_nats_node().await?,
            Fault::RestartNats => {
                let Nats::Single(server) = &mut self.nats else {
                    anyhow::bail!("restart-nats runs on a single server");
                };
                let down = Duration::from_secs(self.rng.u64(1..=3));
                server.stop().await;
                tokio::time::sleep(down).await;
                server.start_again().await;
                format!("NATS down {} s", down.as_secs())
            }
            Fault::Republish => unreachable!("republish runs without load"),
        })
    }

    /// SIGKILLs the node that leads the event log (a random one when no leader is known within
    /// ten seconds), restarts it after three to eight seconds, and waits until it has caught
    /// up; returns a note for the table.
    async fn kill_nats_node(&mut self) -> anyhow::Result<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let leader = loop {
            let leader = match self.bus.stream().clone().info().await {
                Ok(info) => info.cluster.as_ref().and_then(|c| c.leader.clone()),
                Err(_) => None,
            };
            if leader.is_some() || Instant::now() > deadline {
                break leader;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let down = Duration::from_secs(self.rng.u64(3..=8));
        let random = self.rng.usize(0..CLUSTER_NODES);
        let Nats::Cluster(cluster) = &mut self.nats else {
            anyhow::bail!("kill-nats-node runs on the cluster only");
        };
        let (index, role) = match leader.as_deref().and_then(|name| cluster.node_named(name)) {
            Some(index) => (index, "the log's leader"),
            None => (random, "no leader known"),
        };
        cluster.kill(index)?;
        tokio::time::sleep(down).await;
        let restarted = Instant::now();
        cluster.restart(index).await?;
        Ok(format!(
            "killed {} ({role}), down {} s, caught up {:.1} s after its restart",
            cluster.name(index),
            down.as_secs(),
            restarted.elapsed().as_secs_f64()
        ))
    }

    /// Publishes one unreadable message on the subjects of each consumer; returns their
    /// stream sequences as a note (`STREAM:sequence ...`).
    async fn publish_poison(&mut self) -> anyhow::Result<String> {
        let tenant = TenantId::default_tenant();
        let nobody = WorkflowId(uuid::Uuid::now_v7());
        let unknown_type = json!({
            "specversion": "1.0", "id": uuid::Uuid::now_v7(), "source": "cadre-chaos",
            "type": "dev.cadre.chaos.unknown.v1", "subject": "poison",
            "time": chrono::Utc::now(), "tenantid": tenant.to_string(), "data": {}
        });
        let poisons: [(String, Vec<u8>); 5] = [
            (
                subjects::execution(
                    &tenant,
                    nobody,
                    cadre_proto::ExecutionId::new(),
                    "completed",
                ),
                b"\x00not an event".to_vec(),
            ),
            (
                subjects::workflow(&tenant, nobody, "created"),
                unknown_type.to_string().into_bytes(),
            ),
            (
                subjects::dispatched_steps("offline", &tenant),
                b"{\"not\": \"a step\"}".to_vec(),
            ),
            (
                format!("cadre.timers.{tenant}.fired.chaos.{}", uuid::Uuid::now_v7()),
                b"not a timer".to_vec(),
            ),
            (
                subjects::trigger(&tenant, nobody),
                b"not a CloudEvent".to_vec(),
            ),
        ];
        let mut published = Vec::new();
        for (subject, payload) in poisons {
            let ack = self
                .bus
                .jetstream()
                .publish(subject.clone(), payload.into())
                .await?
                .await?;
            published.push(format!("{}:{}", ack.stream, ack.sequence));
        }
        Ok(published.join(" "))
    }

    /// Each poison message (`note` from [`System::publish_poison`]) terminated by the consumer
    /// that reads it with a reason, and those on the log recorded by the projector.
    async fn poison_checks(
        &self,
        mut advisories: async_nats::Subscriber,
        note: &str,
    ) -> anyhow::Result<Vec<String>> {
        let items: Vec<(String, u64)> = note
            .split_whitespace()
            .filter_map(|item| {
                let (stream, sequence) = item.split_once(':')?;
                Some((stream.to_owned(), sequence.parse().ok()?))
            })
            .collect();
        // The coordinator reads the log's and the timers' poison as copies in its partitioned
        // inbox, whose advisories name the copies: those are counted, the others matched.
        let read_in_inbox =
            |stream: &str| stream == streams::EVENTS_STREAM || stream == streams::TIMERS_STREAM;
        let inbox_poisons = items.iter().filter(|(s, _)| read_in_inbox(s)).count();
        let expected: Vec<(String, u64, &str)> = items
            .iter()
            .filter(|(stream, _)| !read_in_inbox(stream))
            .map(|(stream, sequence)| {
                let consumer = match stream.as_str() {
                    streams::DISPATCH_STREAM => "agent-worker-offline",
                    _ => streams::COORDINATOR_TRIGGERS_CONSUMER,
                };
                (stream.clone(), *sequence, consumer)
            })
            .collect();
        let mut seen: BTreeMap<(String, u64), (String, String)> = BTreeMap::new();
        let mut inbox_terminated = 0;
        let deadline = Instant::now() + Duration::from_secs(40);
        while inbox_terminated < inbox_poisons
            || expected
                .iter()
                .any(|(s, q, _)| !seen.contains_key(&(s.clone(), *q)))
        {
            let Ok(Some(message)) = tokio::time::timeout_at(deadline, advisories.next()).await
            else {
                break;
            };
            let advisory: Value = serde_json::from_slice(&message.payload).unwrap_or_default();
            let stream = advisory["stream"].as_str().unwrap_or_default();
            let consumer = advisory["consumer"].as_str().unwrap_or_default();
            let reason = advisory["reason"].as_str().unwrap_or_default();
            if stream == streams::PARTITIONS_STREAM {
                if consumer.starts_with("coordinator-p") && !reason.is_empty() {
                    inbox_terminated += 1;
                }
                continue;
            }
            let key = (
                stream.to_owned(),
                advisory["stream_seq"].as_u64().unwrap_or(0),
            );
            seen.insert(key, (consumer.to_owned(), reason.to_owned()));
        }
        let mut violations = Vec::new();
        if inbox_terminated < inbox_poisons {
            violations.push(format!(
                "{inbox_terminated} of {inbox_poisons} poison events and timers were terminated \
                 with a reason by the coordinator's partitions"
            ));
        }
        for (stream, sequence, consumer) in &expected {
            match seen.get(&(stream.clone(), *sequence)) {
                None => violations.push(format!(
                    "poison {stream}:{sequence} was not terminated by {consumer}"
                )),
                Some((by, reason)) if by != consumer || reason.is_empty() => {
                    violations.push(format!(
                        "poison {stream}:{sequence} terminated by {by} with reason {reason:?}, \
                         expected {consumer} with a reason"
                    ));
                }
                Some(_) => {}
            }
        }
        for (stream, sequence) in items.iter().filter(|(s, _)| s == streams::EVENTS_STREAM) {
            let recorded: Option<String> =
                sqlx::query_scalar("SELECT reason FROM rejected_events WHERE stream_sequence = $1")
                    .bind(i64::try_from(*sequence)?)
                    .fetch_optional(&self.db.pool)
                    .await?;
            // The projector records it once it reaches it; the drain that follows waits for
            // that, so look again after the drain when it is not there yet.
            if recorded.is_none() {
                self.drain().await?;
            }
            let recorded: Option<String> =
                sqlx::query_scalar("SELECT reason FROM rejected_events WHERE stream_sequence = $1")
                    .bind(i64::try_from(*sequence)?)
                    .fetch_optional(&self.db.pool)
                    .await?;
            if recorded.is_none_or(|reason| reason.is_empty()) {
                violations.push(format!(
                    "poison {stream}:{sequence} has no reason in rejected_events"
                ));
            }
        }
        Ok(violations)
    }

    /// No failed step among the wave's runs, and no call for a step before the `Retry-After`
    /// of its previous call's 429.
    fn rate_limit_checks(&self, wave: &[String], requests_before: usize) -> Vec<String> {
        let mut violations = Vec::new();
        let failed: usize = {
            let observed = self.observed();
            observed
                .facts
                .failed
                .iter()
                .filter(|((execution, _, _), _)| wave.contains(execution))
                .map(|(_, ids)| ids.len())
                .sum()
        };
        if failed > 0 {
            violations.push(format!("{failed} step(s) failed under the rate limit"));
        }
        // A step's calls: its run (the run's input, quoted in the prompt) and its name.
        let mut calls: HashMap<(String, String), Vec<(Instant, u16)>> = HashMap::new();
        for request in self.llm.requests().into_iter().skip(requests_before) {
            let Some(run) = request
                .user
                .split_once("\"chaosRun\": \"")
                .and_then(|(_, rest)| rest.split('"').next())
            else {
                continue;
            };
            let step = request.step_name().unwrap_or_default().to_owned();
            calls
                .entry((run.to_owned(), step))
                .or_default()
                .push((request.received_at.into(), request.status));
        }
        let early = calls
            .values()
            .flat_map(|calls| calls.windows(2))
            .filter(|pair| {
                pair[0].1 == 429
                    && pair[1].0.duration_since(pair[0].0) < Duration::from_secs(RETRY_AFTER_SECS)
            })
            .count();
        if early > 0 {
            violations.push(format!("{early} call(s) came before their Retry-After"));
        }
        violations
    }

    /// Re-publishes copies of old events with fresh message ids, with no other load; the read
    /// models must stay as they were and no service may append anything.
    async fn republish(&mut self, round: u64) -> anyhow::Result<Row> {
        let mut violations = Vec::new();
        let before = audit::table_hashes(&self.db.pool).await?;
        let mut sequences: Vec<i64> = self
            .observed()
            .facts
            .event_sequences
            .iter()
            .copied()
            .collect();
        sequences.sort_unstable();
        self.rng.shuffle(&mut sequences);
        sequences.truncate(200);
        sequences.sort_unstable();
        let mut last = 0;
        for sequence in &sequences {
            let original = self
                .bus
                .stream()
                .get_raw_message(u64::try_from(*sequence)?)
                .await?;
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", uuid::Uuid::now_v7().to_string().as_str());
            let ack = self
                .bus
                .jetstream()
                .publish_with_headers(original.subject.to_string(), headers, original.payload)
                .await?
                .await?;
            last = ack.sequence;
        }
        let injected = Instant::now();
        if !self.drain().await? {
            violations.push(format!(
                "did not drain within {} s",
                self.settings.drain.as_secs()
            ));
        }
        let recover_secs = injected.elapsed().as_secs_f64();
        let now = self.bus.stream().clone().info().await?.state.last_sequence;
        if now != last {
            violations.push(format!(
                "the copies made the services append {} event(s)",
                now.saturating_sub(last)
            ));
        }
        let after = audit::table_hashes(&self.db.pool).await?;
        violations.extend(audit::compare_hashes(
            &after,
            &before,
            "before the copies",
            &["projection_checkpoints"],
        ));
        let findings = self.audit().await?;
        violations.extend(findings.violations);
        Ok(Row {
            fault: Fault::Republish,
            round,
            in_flight: 0,
            recovered: 0,
            lost: findings.lost,
            duplicated: findings.duplicated,
            recover_secs: Some(recover_secs),
            note: format!("{} old events copied", sequences.len()),
            violations,
        })
    }
}

fn print_table(rows: &[Row]) {
    println!();
    println!(
        "{:<19} {:>5} {:>9} {:>9} {:>5} {:>10} {:>9}  {:<6} note",
        "fault", "round", "in flight", "recovered", "lost", "duplicated", "recover s", "checks"
    );
    for row in rows {
        println!(
            "{:<19} {:>5} {:>9} {:>9} {:>5} {:>10} {:>9}  {:<6} {}",
            row.fault.name(),
            row.round,
            row.in_flight,
            row.recovered,
            row.lost,
            row.duplicated,
            row.recover_secs
                .map_or_else(|| "-".to_owned(), |s| format!("{s:.1}")),
            if row.violations.is_empty() {
                "ok"
            } else {
                "FAILED"
            },
            row.note
        );
    }
}

async fn run(settings: Settings, log_dir: &std::path::Path) -> anyhow::Result<Vec<Row>> {
    let (faults, rounds) = (settings.faults.clone(), settings.rounds);
    println!(
        "cadre chaos: faults {:?}, {rounds} round(s), {} runs of {} steps a fault, seed {}; logs in {}",
        faults.iter().map(|f| f.name()).collect::<Vec<_>>(),
        settings.executions,
        settings.steps,
        settings.seed,
        log_dir.display()
    );
    // The faults that need the cluster run on one of their own after the others (unless
    // every fault runs on a cluster), each system started fresh and stopped before the next.
    let (on_cluster, on_single): (Vec<Fault>, Vec<Fault>) = faults
        .iter()
        .partition(|fault| fault.on_cluster(settings.cluster));
    let mut rows = Vec::new();
    for (cluster, faults) in [(false, on_single), (true, on_cluster)] {
        if faults.is_empty() {
            continue;
        }
        if cluster {
            println!(
                "  on a {CLUSTER_NODES}-node NATS cluster, streams with {CLUSTER_NODES} replicas"
            );
        }
        let mut system = System::start(settings.clone(), log_dir, cluster).await?;
        for round in 1..=rounds {
            for &fault in &faults {
                let started = Instant::now();
                println!("  round {round}: {} ...", fault.name());
                let row = system.run_fault(fault, round).await?;
                println!(
                    "    {} in {:.1} s",
                    if row.violations.is_empty() {
                        "ok"
                    } else {
                        "FAILED"
                    },
                    started.elapsed().as_secs_f64()
                );
                rows.push(row);
            }
        }
        if system.watcher.is_finished() {
            anyhow::bail!("the log watcher stopped early");
        }
        // It would outlive the system (a dropped task handle detaches), following a log that
        // is gone.
        system.watcher.abort();
    }
    Ok(rows)
}

#[tokio::main]
async fn main() -> anyhow::Result<std::process::ExitCode> {
    let settings = Settings {
        faults: Fault::parse_list(&std::env::var("CHAOS_FAULTS").unwrap_or_default())?,
        cluster: setting("CHAOS_CLUSTER", 0) == 1,
        rounds: setting("CHAOS_ROUNDS", 3).max(1),
        executions: setting("CHAOS_EXECUTIONS", 24).max(1),
        steps: setting("CHAOS_STEPS", 4).max(1) as usize,
        latency_ms: setting("CHAOS_LATENCY_MS", 200),
        drain: Duration::from_secs(setting("CHAOS_DRAIN_SECS", 180)),
        seed: setting("CHAOS_SEED", fastrand::u64(..)),
    };
    let temporary = tempfile::Builder::new().prefix("cadre-chaos-").tempdir()?;
    let log_dir = std::env::var_os("CHAOS_LOG_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| temporary.path().to_path_buf());
    // SIGINT or SIGTERM drops the run: every process, database and server it started goes
    // with it.
    let interrupted = cadre_runtime::shutdown::on_signal();
    let rows = tokio::select! {
        rows = run(settings, &log_dir) => rows,
        () = interrupted.cancelled() => {
            eprintln!("interrupted; everything started was stopped");
            return Ok(std::process::ExitCode::from(130));
        }
    };
    let rows = match rows {
        Ok(rows) => rows,
        Err(error) => {
            // The services' logs say what went wrong around it: keep them.
            let _ = temporary.keep();
            eprintln!("the services' logs are in {}", log_dir.display());
            return Err(error);
        }
    };
    print_table(&rows);
    let failed: Vec<_> = rows.iter().filter(|r| !r.violations.is_empty()).collect();
    if failed.is_empty() {
        println!("every invariant held");
        return Ok(std::process::ExitCode::SUCCESS);
    }
    println!();
    for row in failed {
        for violation in row.violations.iter().take(20) {
            println!("{} round {}: {violation}", row.fault.name(), row.round);
        }
        if row.violations.len() > 20 {
            println!("... and {} more", row.violations.len() - 20);
        }
    }
    // Keep the services' logs of a failed run.
    let _ = temporary.keep();
    println!(
        "invariants failed; the services' logs are in {}",
        log_dir.display()
    );
    Ok(std::process::ExitCode::FAILURE)
}
