//! Which replicas of a service are alive, so that they can share its work without talking to
//! each other: each replica heartbeats its own key in the service's membership bucket (see
//! [`streams::membership_kv`]), and reads the keys that have not expired as the live replicas.
//! Every replica derives its share of the work from that set by a rule all replicas compute
//! alike; what keeps two replicas off the same work while their views differ is up to the
//! service (a pinned consumer, a Postgres lock).

use std::collections::BTreeSet;
use std::time::Instant;

use async_nats::jetstream::{self, kv};
use futures::TryStreamExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use cadre_proto::streams::{MEMBERSHIP_HEARTBEAT, MEMBERSHIP_TTL};

use crate::bus::NatsError;

/// The live replicas as this one sees them; `None` while this replica cannot tell whether the
/// others still count it alive.
pub type View = Option<BTreeSet<String>>;

/// A replica name unique per running process: the host name (the pod name under Kubernetes),
/// or `service` without one, and a random suffix.
pub fn default_replica_id(service: &str) -> String {
    // `HOSTNAME` is the pod's name under Kubernetes; shells do not export it.
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| hostname::get().ok()?.into_string().ok())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| service.to_owned());
    let suffix = uuid::Uuid::now_v7().simple().to_string();
    // The random end of a v7 id: the start is the time, the same for replicas started together.
    format!("{host}-{}", &suffix[suffix.len() - 8..])
}

/// A bucket of keys that say who is alive, each rewritten by its owner before it expires
/// (replicas' membership, the worker registry). Such buckets are kept in memory (see
/// [`cadre_proto::streams::membership_kv`]), so a NATS server that restarts without a replica
/// of them (a single server, say) comes back without them: the owners' writes then fail, and
/// the first owner to notice creates the bucket again.
pub struct LivenessBucket {
    js: jetstream::Context,
    config: kv::Config,
    store: kv::Store,
}

impl LivenessBucket {
    /// Opens `config`'s bucket, creating it (or updating its settings) as needed.
    pub async fn open(js: &jetstream::Context, config: kv::Config) -> Result<Self, NatsError> {
        let store = js.create_or_update_key_value(config.clone()).await?;
        Ok(Self {
            js: js.clone(),
            config,
            store,
        })
    }

    /// The bucket, for reads.
    pub fn store(&self) -> &kv::Store {
        &self.store
    }

    /// Writes `key`, renewing it for the bucket's TTL. When the server answers that the bucket
    /// is gone (at once: no stream listens on its subjects), the bucket is created again and
    /// the write tried once more; any other failure (a timeout, NATS unreachable) is returned
    /// as it is, so a heartbeat fails no later than it did.
    pub async fn renew(&self, key: &str, value: bytes::Bytes) -> Result<Renewal, NatsError> {
        match self.store.put(key, value.clone()).await {
            Ok(_) => Ok(Renewal::Renewed),
            Err(error) if bucket_is_gone(&error) => {
                tracing::info!(
                    bucket = self.config.bucket,
                    "the bucket is gone (NATS restarted?); creating it again"
                );
                let store = self
                    .js
                    .create_or_update_key_value(self.config.clone())
                    .await?;
                store.put(key, value).await?;
                Ok(Renewal::Recreated)
            }
            Err(error) => Err(error.into()),
        }
    }

    /// Deletes `key`, so that readers stop counting its owner at once.
    pub async fn withdraw(&self, key: &str) -> Result<(), NatsError> {
        self.store.delete(key).await?;
        Ok(())
    }
}

/// What [`LivenessBucket::renew`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    Renewed,
    /// The bucket was gone and is back, with this key alone until the other owners write
    /// theirs.
    Recreated,
}

/// Whether a write failed because no stream stores the bucket's subjects: the server answers
/// such a publish at once with "no responders".
fn bucket_is_gone(error: &kv::PutError) -> bool {
    std::error::Error::source(error)
        .and_then(|source| source.downcast_ref::<jetstream::context::PublishError>())
        .is_some_and(|publish| {
            publish.kind() == jetstream::context::PublishErrorKind::StreamNotFound
        })
}

/// This replica's place among the live replicas of its service.
pub struct Membership {
    registry: LivenessBucket,
    me: String,
}

impl Membership {
    /// Opens (or creates) the membership bucket `bucket` and heartbeats once as `me`.
    pub async fn join(
        js: &jetstream::Context,
        bucket: kv::Config,
        me: String,
    ) -> Result<Self, NatsError> {
        let registry = LivenessBucket::open(js, bucket).await?;
        let membership = Self { registry, me };
        membership.heartbeat().await?;
        Ok(membership)
    }

    pub fn me(&self) -> &str {
        &self.me
    }

    /// Says this replica is alive, for [`MEMBERSHIP_TTL`].
    async fn heartbeat(&self) -> Result<Renewal, NatsError> {
        self.registry.renew(&self.me, bytes::Bytes::new()).await
    }

    /// The replicas that heartbeated within [`MEMBERSHIP_TTL`].
    async fn live(&self) -> Result<BTreeSet<String>, NatsError> {
        Ok(self.registry.store().keys().await?.try_collect().await?)
    }

    /// Heartbeats every [`MEMBERSHIP_HEARTBEAT`] until `shutdown`, then leaves. After each
    /// heartbeat `view` gets the live replicas; once no heartbeat has been stored for so long
    /// that the others may count this replica gone, it gets `None`.
    pub async fn keep(self, view: watch::Sender<View>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(MEMBERSHIP_HEARTBEAT);
        let mut renewed = Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            let beat = async {
                let renewal = self.heartbeat().await?;
                Ok::<_, NatsError>((renewal, self.live().await?))
            };
            tokio::pin!(beat);
            // Once the others may soon count this replica gone, it works nothing, even while
            // a slow server still has the heartbeat in hand.
            let doubt = renewed + MEMBERSHIP_TTL - MEMBERSHIP_HEARTBEAT;
            // The others count the TTL from when the key was written, not from when the
            // listing after it came back.
            let attempt = Instant::now();
            let beat = tokio::select! {
                beat = &mut beat => beat,
                () = tokio::time::sleep_until(doubt.into()) => {
                    view.send_replace(None);
                    beat.await
                }
            };
            match beat {
                Ok((Renewal::Renewed, live)) => {
                    renewed = attempt;
                    view.send_replace(Some(live));
                }
                // The bucket came back holding this replica's key alone: the others write
                // theirs within a heartbeat, so the view waits for the next one rather than
                // hand this replica every share for a moment.
                Ok((Renewal::Recreated, _)) => renewed = attempt,
                Err(error) => {
                    tracing::warn!(%error, bucket = self.registry.store().name, "could not renew this replica's membership");
                    if renewed.elapsed() + MEMBERSHIP_HEARTBEAT >= MEMBERSHIP_TTL {
                        view.send_replace(None);
                    }
                }
            }
        }
        self.leave().await;
    }

    /// Leaves at once, so the others take this replica's work without waiting for its key to
    /// expire.
    async fn leave(&self) {
        if let Err(error) = self.registry.withdraw(&self.me).await {
            tracing::warn!(%error, bucket = self.registry.store().name, "could not leave; the others take over when this replica's key expires");
        }
    }
}
