//! Cadre's three services, in-process, on a private NATS server and a fresh database.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use cadre_agent_worker::{HttpProviderConfig, OfflineAnswer, ProviderConfig};
use cadre_proto::{Event, ExecutionId, TenantId, WorkflowId, subjects};
use cadre_runtime::bus::{self, EventBus};
use cadre_runtime::projection::read_checkpoints;
use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::Api;
use crate::fake_llm::FakeLlm;
use crate::nats::NatsServer;
use crate::pg::TestDb;

/// The provider name under which tests reach the fake OpenAI-compatible server.
pub const FAKE_PROVIDER: &str = "fake-openai";

#[derive(Debug, Clone)]
pub struct StackOptions {
    /// Simulated latency of the built-in offline provider.
    pub offline_latency_ms: u64,
    /// What the built-in offline provider answers a step with.
    pub offline_answer: OfflineAnswer,
    pub worker_concurrency: usize,
    pub coordinator_shards: usize,
    pub projector_max_batch: usize,
    /// How long a worker waits for the fake LLM's answer.
    pub llm_timeout_secs: u64,
}

impl Default for StackOptions {
    fn default() -> Self {
        Self {
            offline_latency_ms: 0,
            offline_answer: OfflineAnswer::Team,
            worker_concurrency: 64,
            coordinator_shards: 8,
            projector_max_batch: 1000,
            llm_timeout_secs: 10,
        }
    }
}

pub struct Stack {
    pub api: Api,
    pub bus: EventBus,
    pub llm: FakeLlm,
    pub db: TestDb,
    pub nats: NatsServer,
    /// The execution partitions the first coordinator works, as they change.
    pub coordinator_partitions: watch::Receiver<BTreeSet<u16>>,
    shutdown: CancellationToken,
    services: Vec<Service>,
}

/// What [`Stack::watch_log_and_commits`] hands a benchmark.
pub struct LogWatch<T> {
    /// The first log sequence the watch can see: the log's end when it began, plus one.
    pub first_sequence: u64,
    pub events: async_nats::jetstream::consumer::pull::Ordered,
    pub commits: tokio::sync::mpsc::UnboundedReceiver<(u64, T)>,
    /// Forwards the projector's commits; abort it when done.
    pub projection: JoinHandle<()>,
}

/// A service running in-process, stoppable on its own.
struct Service {
    name: &'static str,
    stop: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

/// Logs of the services under test, when `RUST_LOG` asks for them.
fn init_test_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off")),
        )
        .with_test_writer()
        .try_init();
}

impl Stack {
    pub async fn start() -> Self {
        Self::start_with(StackOptions::default()).await
    }

    pub async fn start_with(options: StackOptions) -> Self {
        init_test_logging();
        let nats = NatsServer::start();
        let db = TestDb::create().await;
        let llm = FakeLlm::start().await.expect("fake LLM server");
        let shutdown = CancellationToken::new();

        let client = bus::connect(&nats.url, "cadre-tests").await.expect("NATS");
        let bus = EventBus::open(async_nats::jetstream::new(client), 1)
            .await
            .expect("event stream");

        let mut services = Vec::new();
        let coordinator_stop = shutdown.child_token();
        let coordinator = cadre_coordinator::start(
            cadre_coordinator::Config {
                nats_url: nats.url.clone(),
                database_url: db.url.clone(),
                http_addr: "127.0.0.1:0".parse().expect("address"),
                shards: options.coordinator_shards,
                ..Default::default()
            },
            coordinator_stop.clone(),
        )
        .await
        .expect("coordinator starts");
        let api = Api::new(format!("http://{}", coordinator.http_addr));
        let coordinator_partitions = coordinator.partitions();
        services.push(Service {
            name: "coordinator",
            stop: coordinator_stop,
            task: tokio::spawn(coordinator.wait()),
        });

        let mut stack = Self {
            api,
            bus,
            llm,
            db,
            nats,
            coordinator_partitions,
            shutdown,
            services,
        };
        stack.spawn_projector(options.projector_max_batch);
        stack.spawn_worker(&options);
        stack
    }

    /// Another coordinator on the same NATS and database, as a second replica would be; it
    /// runs until `stop` is cancelled.
    pub async fn second_coordinator(
        &self,
        stop: CancellationToken,
    ) -> (cadre_coordinator::Running, Api) {
        let running = cadre_coordinator::start(
            cadre_coordinator::Config {
                nats_url: self.nats.url.clone(),
                database_url: self.db.url.clone(),
                http_addr: "127.0.0.1:0".parse().expect("address"),
                ..Default::default()
            },
            stop,
        )
        .await
        .expect("second coordinator starts");
        let api = Api::new(format!("http://{}", running.http_addr));
        (running, api)
    }

    /// The events of an execution's state (not its interactions), in log order.
    pub async fn execution_events(&self, workflow_id: &str, execution_id: &str) -> Vec<Event> {
        self.bus
            .read_all(&subjects::execution_state(
                &TenantId::default_tenant(),
                WorkflowId(workflow_id.parse().expect("a workflow id")),
                ExecutionId(execution_id.parse().expect("an execution id")),
            ))
            .await
            .expect("the execution's events")
            .into_iter()
            .map(|stored| stored.envelope.event)
            .collect()
    }

    /// Hands `stored` (a `StepScheduled` or `QuestionAssigned` from the log) to the workers of
    /// `provider` again, naming where it is stored, as the coordinator's first hand-over does,
    /// with a fresh `Nats-Msg-Id`: as a redelivery of that hand-over would reach a worker past the
    /// duplicate window; returns its sequence in their queue.
    pub async fn hand_to_workers_again(&self, stored: &bus::Stored, provider: &str) -> u64 {
        let again = async_nats::jetstream::message::PublishMessage::build()
            .message_id(format!("{}-again", stored.envelope.meta.id))
            .header(
                cadre_proto::streams::LOG_SEQUENCE_HEADER,
                stored.sequence.to_string().as_str(),
            )
            .payload(stored.envelope.encode().into());
        let subject = subjects::dispatched_steps(provider, &stored.envelope.meta.tenant);
        self.bus
            .jetstream()
            .send_publish(subject, again)
            .await
            .expect("publishing to the workers' queue")
            .await
            .expect("the workers' queue stores it")
            .sequence
    }

    /// The queue of `provider`'s steps, as the server counts it now (`None` if unreadable).
    pub async fn provider_queue(
        &self,
        provider: &str,
    ) -> Option<async_nats::jetstream::consumer::Info> {
        let name = cadre_proto::streams::agent_worker_consumer_name(provider);
        self.bus.dispatch_stream().consumer_info(name).await.ok()
    }

    /// [`Api::wait_until_finished`], then [`Self::wait_for_read_models`]: each projection
    /// commits on its own, so a run can show finished before its interactions, its knowledge or
    /// its agents' figures do. Returns the finished execution as the API shows it.
    pub async fn wait_until_finished(&self, execution_id: &str, timeout: Duration) -> Value {
        let finished = self.api.wait_until_finished(execution_id, timeout).await;
        self.wait_for_read_models(timeout).await;
        finished
    }

    /// Waits until every projection covers the log as it stands now.
    pub async fn wait_for_read_models(&self, timeout: Duration) {
        let end = self.log_state().await.last_sequence;
        crate::eventually(timeout, "every projection to cover the log", || async {
            let checkpoints = read_checkpoints(&self.db.pool).await.ok()?;
            (checkpoints.read_models() >= end).then_some(())
        })
        .await;
    }

    /// The event log's counts and last sequence, now.
    pub async fn log_state(&self) -> async_nats::jetstream::stream::State {
        let mut stream = self.bus.stream().clone();
        stream
            .info()
            .await
            .expect("event stream info")
            .state
            .clone()
    }

    /// What a benchmark watches from now on: every event appended after this call whose
    /// subject matches one of `filters` (an ordered consumer of the log), the first sequence
    /// that can come, and each commit of the projector as `(the log sequence it covers, now()
    /// when it arrived)`, taken as it arrives (it may come before the watcher has seen the
    /// event it covers). Abort the returned task when done. Each event watched costs the
    /// server a delivery while the load runs: watch only what must be seen live.
    pub async fn watch_log_and_commits<T: Send + 'static>(
        &self,
        filters: &[&str],
        now: fn() -> T,
    ) -> anyhow::Result<LogWatch<T>> {
        let first_sequence = self.log_state().await.last_sequence + 1;
        let events = self.read_log_from(first_sequence, filters).await?;
        let mut listener = sqlx::postgres::PgListener::connect(&self.db.url).await?;
        listener
            .listen(cadre_runtime::projection::PROJECTION_CHANNEL)
            .await?;
        let (commit_sender, commits) = tokio::sync::mpsc::unbounded_channel();
        // What the read models as a whole cover: the lowest of the projections' checkpoints.
        let mut checkpoints = read_checkpoints(&self.db.pool).await?;
        let projection = tokio::spawn(async move {
            while let Ok(notification) = listener.recv().await {
                let covered = checkpoints.read_models();
                if checkpoints.notified(notification.payload())
                    && checkpoints.read_models() != covered
                    && commit_sender
                        .send((checkpoints.read_models(), now()))
                        .is_err()
                {
                    break;
                }
            }
        });
        Ok(LogWatch {
            first_sequence,
            events,
            commits,
            projection,
        })
    }

    /// The events of the log from `first_sequence` on whose subject matches one of
    /// `filters`, in log order (an ordered consumer).
    pub async fn read_log_from(
        &self,
        first_sequence: u64,
        filters: &[&str],
    ) -> anyhow::Result<async_nats::jetstream::consumer::pull::Ordered> {
        let reader = self
            .bus
            .stream()
            .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
                filter_subjects: filters.iter().map(|filter| (*filter).to_owned()).collect(),
                deliver_policy: async_nats::jetstream::consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: first_sequence,
                },
                ..Default::default()
            })
            .await?;
        Ok(reader.messages().await?)
    }

    pub fn projector_config(&self, max_batch: usize) -> cadre_projector::Config {
        cadre_projector::Config {
            nats_url: self.nats.url.clone(),
            database_url: self.db.url.clone(),
            health_addr: "127.0.0.1:0".parse().expect("address"),
            replica_id: "projector-a".to_owned(),
            max_batch,
            ..Default::default()
        }
    }

    fn spawn_projector(&mut self, max_batch: usize) {
        let config = self.projector_config(max_batch);
        let stop = self.shutdown.child_token();
        let task = tokio::spawn(cadre_projector::run(config, stop.clone()));
        self.services.push(Service {
            name: "projector",
            stop,
            task,
        });
    }

    fn spawn_worker(&mut self, options: &StackOptions) {
        let providers = BTreeMap::from([
            (
                "offline".to_owned(),
                ProviderConfig::Offline {
                    latency_ms: options.offline_latency_ms,
                    answer: options.offline_answer,
                },
            ),
            (
                FAKE_PROVIDER.to_owned(),
                self.fake_provider(options.llm_timeout_secs),
            ),
        ]);
        let config = cadre_agent_worker::Config {
            concurrency: options.worker_concurrency,
            ..self.worker_config("agent-worker", providers)
        };
        self.run_worker("agent-worker", config);
    }

    /// The fake OpenAI-compatible server as a provider's configuration.
    pub fn fake_provider(&self, timeout_secs: u64) -> ProviderConfig {
        ProviderConfig::OpenAiCompatible(HttpProviderConfig {
            api_key: Some("test-key".to_owned().into()),
            timeout_secs,
            ..HttpProviderConfig::new(self.llm.base_url())
        })
    }

    /// The configuration of an agent worker of this stack with id `name`, offering exactly
    /// `providers`.
    pub fn worker_config(
        &self,
        name: &str,
        providers: BTreeMap<String, ProviderConfig>,
    ) -> cadre_agent_worker::Config {
        cadre_agent_worker::Config {
            nats_url: self.nats.url.clone(),
            database_url: self.db.url.clone(),
            health_addr: "127.0.0.1:0".into(),
            worker_id: name.to_owned(),
            concurrency: StackOptions::default().worker_concurrency,
            providers,
            ..Default::default()
        }
    }

    /// Starts another agent worker, stoppable as `name` with [`Stack::stop_service`].
    pub fn run_worker(&mut self, name: &'static str, config: cadre_agent_worker::Config) {
        let stop = self.shutdown.child_token();
        let task = tokio::spawn(cadre_agent_worker::run(config, stop.clone()));
        self.services.push(Service { name, stop, task });
    }

    /// Asks every service to stop and checks that each stopped cleanly.
    pub async fn stop(mut self) {
        self.stop_services().await;
    }

    /// [`Stack::stop`], keeping NATS and the database for a look afterwards.
    pub async fn stop_services(&mut self) {
        self.shutdown.cancel();
        for service in std::mem::take(&mut self.services) {
            stopped_cleanly(service).await;
        }
    }

    /// Stops one service (`"coordinator"`, `"agent-worker"` or `"projector"`), as a pod would be.
    pub async fn stop_service(&mut self, name: &str) {
        let at = self
            .services
            .iter()
            .position(|s| s.name == name)
            .unwrap_or_else(|| panic!("no running service {name}"));
        let service = self.services.remove(at);
        service.stop.cancel();
        stopped_cleanly(service).await;
    }
}

async fn stopped_cleanly(service: Service) {
    let name = service.name;
    match tokio::time::timeout(Duration::from_secs(30), service.task).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(error))) => panic!("{name} stopped with an error: {error:#}"),
        Ok(Err(panic)) => panic!("{name} panicked: {panic}"),
        Err(_) => panic!("{name} did not stop within 30 s of the stop request"),
    }
}
