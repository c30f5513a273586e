//! The coordinator's read of the live worker registry ([`streams::WORKERS_BUCKET`]): which agent
//! workers run and which LLM providers they offer. Used to warn about an agent no worker can
//! serve and to show why a step is still waiting; it decides nothing (a step for a provider no
//! worker offers simply waits in its queue).

use std::collections::BTreeSet;

use async_nats::jetstream::kv;
use cadre_proto::streams;
use cadre_proto::workers::WorkerRecord;
use cadre_runtime::bus::NatsError;
use futures::TryStreamExt;

#[derive(Clone)]
pub struct WorkerRegistry(kv::Store);

impl WorkerRegistry {
    pub async fn open(
        js: &async_nats::jetstream::Context,
        replicas: usize,
    ) -> Result<Self, NatsError> {
        Ok(Self(
            // Created or updated as the workers do (`LivenessBucket::open`), so the two agree
            // on its settings whichever starts first.
            js.create_or_update_key_value(streams::workers_kv(replicas))
                .await?,
        ))
    }

    /// Every worker that has announced itself within the registry's TTL, by id. An entry this
    /// build cannot read is left out (a newer worker's, say).
    pub async fn live(&self) -> Result<Vec<WorkerRecord>, NatsError> {
        let keys: Vec<String> = self.0.keys().await?.try_collect().await?;
        let mut workers = Vec::with_capacity(keys.len());
        for key in keys {
            if let Some(value) = self.0.get(&key).await?
                && let Ok(record) = serde_json::from_slice::<WorkerRecord>(&value)
            {
                workers.push(record);
            }
        }
        workers.sort_by(|a, b| a.worker_id.cmp(&b.worker_id));
        Ok(workers)
    }

    /// The providers at least one live worker offers.
    pub async fn offered(&self) -> Result<BTreeSet<String>, NatsError> {
        Ok(self
            .live()
            .await?
            .into_iter()
            .flat_map(|worker| worker.providers)
            .collect())
    }
}

/// Why a step of `provider` may not run yet, when no live worker offers it.
pub fn no_worker_offers(provider: &str) -> String {
    format!(
        "no live agent worker offers provider {provider:?}: its steps wait in their queue until \
         a worker configured with it starts (configure it under CADRE_PROVIDERS__<NAME>__KIND)"
    )
}
