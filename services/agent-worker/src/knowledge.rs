//! The worker's read of the workflow's shared knowledge, from the projector's read models.
//!
//! A step must see the knowledge its dependencies shared. The coordinator stamps each
//! `StepScheduled` with a knowledge watermark (a stream sequence); the projector commits its
//! checkpoint with its rows and announces it with `NOTIFY cadre_projection`. The view follows that
//! checkpoint so a step can wait, bounded, until the read models have caught up before asking.

use std::sync::Arc;
use std::time::Duration;

use cadre_proto::{TenantId, WorkflowId};
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::watch;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::prompt::KnowledgeItem;

/// The channel the projector notifies, with the new checkpoint as payload, when it commits.
pub const PROJECTION_CHANNEL: &str = "cadre_projection";
/// The projection whose checkpoint covers `collaboration_knowledge`.
const READ_MODELS_PROJECTION: &str = "read_models";
/// Notifications can be missed (while reconnecting, or if the projector skips one): polling
/// bounds how late the view can be.
const POLL_INTERVAL: Duration = Duration::from_secs(1);
const RECONNECT_DELAY: Duration = Duration::from_secs(1);

pub struct KnowledgeView {
    pool: PgPool,
    checkpoint: watch::Receiver<u64>,
    /// Stops the checkpoint followers when the view is dropped.
    _followers: DropGuard,
}

impl KnowledgeView {
    /// Starts following the projection checkpoint in the background.
    pub fn start(pool: PgPool) -> Self {
        let (sender, checkpoint) = watch::channel(0);
        let sender = Arc::new(sender);
        let stop = CancellationToken::new();
        tokio::spawn(listen(pool.clone(), sender.clone(), stop.clone()));
        tokio::spawn(poll(pool.clone(), sender, stop.clone()));
        Self {
            pool,
            checkpoint,
            _followers: stop.drop_guard(),
        }
    }

    /// The stream sequence the read models have been seen to cover.
    pub fn checkpoint(&self) -> u64 {
        *self.checkpoint.borrow()
    }

    /// Waits until the read models cover `watermark`; false if `timeout` passed first.
    pub async fn wait_until(&self, watermark: u64, timeout: Duration) -> bool {
        let mut checkpoint = self.checkpoint.clone();
        matches!(
            tokio::time::timeout(timeout, checkpoint.wait_for(|seen| *seen >= watermark)).await,
            Ok(Ok(_))
        )
    }

    /// The workflow's most relevant active knowledge, newest first among equals (the seed's
    /// `gatherRelevantKnowledge`).
    pub async fn relevant(
        &self,
        tenant: &TenantId,
        workflow: WorkflowId,
        limit: u32,
    ) -> Result<Vec<KnowledgeItem>, sqlx::Error> {
        let rows: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT title, knowledge_type, content FROM collaboration_knowledge \
             WHERE tenant_id = $1 AND workflow_id = $2 AND is_active \
             ORDER BY relevance_score DESC, event_sequence DESC LIMIT $3",
        )
        .bind(tenant.as_str())
        .bind(workflow.0)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(title, knowledge_type, content)| KnowledgeItem {
                title,
                knowledge_type,
                content,
            })
            .collect())
    }
}

async fn read_checkpoint(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let sequence: Option<(i64,)> =
        sqlx::query_as("SELECT stream_sequence FROM projection_checkpoints WHERE projection = $1")
            .bind(READ_MODELS_PROJECTION)
            .fetch_optional(pool)
            .await?;
    Ok(sequence.map_or(0, |(sequence,)| u64::try_from(sequence).unwrap_or(0)))
}

/// Records the latest checkpoint seen. The latest, not the largest: a projection rebuilt from
/// scratch starts again at 0, and steps must then wait for it to catch up. (A late notification
/// can make the value step back briefly; that only delays a wait.)
fn observe(checkpoint: &watch::Sender<u64>, sequence: u64) {
    checkpoint.send_if_modified(|seen| {
        let changed = *seen != sequence;
        *seen = sequence;
        changed
    });
}

async fn refresh(pool: &PgPool, checkpoint: &watch::Sender<u64>) {
    match read_checkpoint(pool).await {
        Ok(sequence) => observe(checkpoint, sequence),
        Err(error) => tracing::warn!(%error, "cannot read the projection checkpoint"),
    }
}

async fn poll(pool: PgPool, checkpoint: Arc<watch::Sender<u64>>, stop: CancellationToken) {
    let mut every = tokio::time::interval(POLL_INTERVAL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = every.tick() => refresh(&pool, &checkpoint).await,
        }
    }
}

async fn listen(pool: PgPool, checkpoint: Arc<watch::Sender<u64>>, stop: CancellationToken) {
    loop {
        let listened = stop
            .run_until_cancelled(follow_notifications(&pool, &checkpoint))
            .await;
        match listened {
            None => return,
            Some(error) => {
                tracing::warn!(%error, "listening for projection checkpoints failed; retrying")
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(RECONNECT_DELAY) => {}
        }
    }
}

/// Follows `NOTIFY cadre_projection` until the listener fails.
async fn follow_notifications(pool: &PgPool, checkpoint: &watch::Sender<u64>) -> sqlx::Error {
    let mut listener = match PgListener::connect_with(pool).await {
        Ok(listener) => listener,
        Err(error) => return error,
    };
    if let Err(error) = listener.listen(PROJECTION_CHANNEL).await {
        return error;
    }
    // Whatever was committed before LISTEN took effect was announced to nobody.
    refresh(pool, checkpoint).await;
    loop {
        match listener.try_recv().await {
            Ok(Some(notification)) => match notification.payload().trim().parse::<u64>() {
                Ok(sequence) => observe(checkpoint, sequence),
                Err(_) => {
                    tracing::warn!(
                        payload = notification.payload(),
                        "unexpected projection notification; reading the checkpoint instead"
                    );
                    refresh(pool, checkpoint).await;
                }
            },
            // The connection dropped and has been re-established: catch up on what was missed.
            Ok(None) => refresh(pool, checkpoint).await,
            Err(error) => return error,
        }
    }
}
