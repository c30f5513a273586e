//! The worker's entry in the live registry ([`streams::WORKERS_BUCKET`]): rewritten every
//! [`streams::WORKER_HEARTBEAT`] while it runs, deleted when it stops, and dropped by the bucket's
//! TTL if it dies. The coordinator reads it to tell whether any worker offers an agent's provider.

use cadre_proto::streams;
use cadre_proto::workers::WorkerRecord;
use cadre_runtime::membership::LivenessBucket;
use tokio_util::sync::CancellationToken;

/// Announces `record` until `shutdown`, then withdraws it.
pub async fn announce(registry: LivenessBucket, record: WorkerRecord, shutdown: CancellationToken) {
    let key = record.key();
    let value: bytes::Bytes = serde_json::to_vec(&record).unwrap_or_default().into();
    let mut beat = tokio::time::interval(streams::WORKER_HEARTBEAT);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = beat.tick() => {
                if let Err(error) = registry.renew(&key, value.clone()).await {
                    tracing::warn!(%error, "could not renew this worker's registry entry");
                }
            }
        }
    }
    // Gone at once rather than when the TTL runs out: nothing should count on a stopped worker.
    if let Err(error) = registry.withdraw(&key).await {
        tracing::warn!(%error, "could not withdraw this worker's registry entry");
    }
}
