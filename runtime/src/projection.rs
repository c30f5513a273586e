//! How far the projector's read models have got: a live view of their checkpoints.
//!
//! The projector folds the log into the read models as several projections (see
//! [`PROJECTIONS`]). Each commits its checkpoint (the last stream sequence of the event log it
//! applied) in the same transaction as its rows and announces it with
//! `NOTIFY cadre_projection, '<projection>:<checkpoint>'`. The read models as a whole cover the
//! lowest of those checkpoints. A [`ProjectionWatermark`] listens for the notifications (and
//! polls, in case one is missed), so a reader can wait, bounded, until the read models cover a
//! position in the log: the coordinator before it answers a command, so that the client's next
//! query sees what the command wrote.
//!
//! It only reads the checkpoints; the projector alone writes them.

use std::sync::Arc;
use std::time::Duration;

use cadre_proto::streams::PROJECTIONS;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::watch;
use tokio_util::sync::{CancellationToken, DropGuard};

/// The channel the projector notifies when it commits, with `<projection>:<checkpoint>` as
/// payload.
pub const PROJECTION_CHANNEL: &str = "cadre_projection";
/// Notifications can be missed (while reconnecting, or if the projector skips one): polling
/// bounds how late the view can be.
const POLL_INTERVAL: Duration = Duration::from_secs(1);
const RECONNECT_DELAY: Duration = Duration::from_secs(1);

/// Every projection's checkpoint, as last read or announced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Checkpoints([u64; PROJECTIONS.len()]);

impl Checkpoints {
    /// The stream sequence the read models as a whole cover: the lowest checkpoint.
    pub fn read_models(&self) -> u64 {
        self.0.iter().copied().min().unwrap_or(0)
    }

    /// One projection's checkpoint; 0 for a name not in [`PROJECTIONS`].
    pub fn of(&self, projection: &str) -> u64 {
        PROJECTIONS
            .iter()
            .position(|known| *known == projection)
            .map_or(0, |place| self.0[place])
    }

    /// Records the checkpoint a `NOTIFY cadre_projection` payload announces; false if the
    /// payload is not such an announcement.
    pub fn notified(&mut self, payload: &str) -> bool {
        let announced = payload
            .trim()
            .split_once(':')
            .and_then(|(name, checkpoint)| {
                let projection = PROJECTIONS.iter().position(|known| *known == name)?;
                Some((projection, checkpoint.parse().ok()?))
            });
        let Some((projection, checkpoint)) = announced else {
            return false;
        };
        self.0[projection] = checkpoint;
        true
    }
}

/// What the followers have seen of the checkpoints.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Seen {
    checkpoints: Checkpoints,
    readable: Readable,
}

impl Seen {
    fn checkpoint(&self) -> u64 {
        self.checkpoints.read_models()
    }
}

/// Whether the checkpoint could be read at the last attempt (a notification counts as one).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Readable {
    /// No attempt has finished yet (just started).
    #[default]
    Unknown,
    Yes,
    /// Postgres is unreachable, or the read models are not there: waiting would only time out.
    No,
}

/// The projector's checkpoint as last seen, followed in the background. Clones share the
/// followers, which stop when the last clone is dropped.
#[derive(Clone)]
pub struct ProjectionWatermark {
    seen: watch::Receiver<Seen>,
    _followers: Arc<DropGuard>,
}

impl ProjectionWatermark {
    /// Starts following the checkpoint in `pool`'s database. The listener keeps one of the
    /// pool's connections for itself.
    pub fn start(pool: PgPool) -> Self {
        let (sender, seen) = watch::channel(Seen::default());
        let sender = Arc::new(sender);
        let stop = CancellationToken::new();
        tokio::spawn(listen(pool.clone(), sender.clone(), stop.clone()));
        tokio::spawn(poll(pool, sender, stop.clone()));
        Self {
            seen,
            _followers: Arc::new(stop.drop_guard()),
        }
    }

    /// The stream sequence the read models (every projection) have been seen to cover.
    pub fn checkpoint(&self) -> u64 {
        self.seen.borrow().checkpoint()
    }

    /// The stream sequence one projection (of [`PROJECTIONS`]) has been seen to cover: for a
    /// reader of its read models alone, which need not wait for the others.
    pub fn checkpoint_of(&self, projection: &str) -> u64 {
        self.seen.borrow().checkpoints.of(projection)
    }

    /// True when the last attempt to read the checkpoint failed: Postgres is unreachable, or
    /// the read models are not there yet.
    pub fn unreadable(&self) -> bool {
        self.seen.borrow().readable == Readable::No
    }

    /// Waits until the read models cover `sequence`; false if `timeout` passed first. Keeps
    /// waiting while Postgres is unreachable: it may be back before the timeout.
    pub async fn wait_until(&self, sequence: u64, timeout: Duration) -> bool {
        self.wait(sequence, timeout, |_| false).await
    }

    /// [`Self::wait_until`], but gives up as soon as the checkpoint cannot be read (at once if
    /// it could not at the last attempt), for a caller that would rather answer now than wait
    /// out an outage. A recovery is noticed at the next poll, so right after one this can give
    /// up on read models that would have caught up: not for a reader that must see them.
    pub async fn wait_while_readable(&self, sequence: u64, timeout: Duration) -> bool {
        self.wait(sequence, timeout, |seen| seen.readable == Readable::No)
            .await
    }

    async fn wait(
        &self,
        sequence: u64,
        timeout: Duration,
        give_up: impl Fn(&Seen) -> bool,
    ) -> bool {
        let mut seen = self.seen.clone();
        let waited = tokio::time::timeout(
            timeout,
            seen.wait_for(|seen| seen.checkpoint() >= sequence || give_up(seen)),
        )
        .await;
        matches!(waited, Ok(Ok(seen)) if seen.checkpoint() >= sequence)
    }
}

/// Records the latest checkpoints read. The latest, not the largest: a projection rebuilt from
/// scratch starts again at 0, and readers must then wait for it to catch up. (A late
/// notification can make a value step back briefly; that only delays a wait.)
fn observe(seen: &watch::Sender<Seen>, checkpoints: Checkpoints) {
    let now = Seen {
        checkpoints,
        readable: Readable::Yes,
    };
    seen.send_if_modified(|current| std::mem::replace(current, now) != now);
}

/// Records the checkpoint a notification announces; false if `payload` is not an announcement.
fn observe_notified(seen: &watch::Sender<Seen>, payload: &str) -> bool {
    let mut checkpoints = seen.borrow().checkpoints;
    if !checkpoints.notified(payload) {
        return false;
    }
    observe(seen, checkpoints);
    true
}

fn observe_unreadable(seen: &watch::Sender<Seen>) {
    seen.send_if_modified(|current| {
        std::mem::replace(&mut current.readable, Readable::No) != Readable::No
    });
}

/// Every projection's checkpoint as committed now (0 for one that has none yet).
pub async fn read_checkpoints(pool: &PgPool) -> Result<Checkpoints, sqlx::Error> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT projection, stream_sequence FROM projection_checkpoints WHERE projection = ANY($1)",
    )
    .bind(PROJECTIONS)
    .fetch_all(pool)
    .await?;
    let mut checkpoints = [0; PROJECTIONS.len()];
    for (name, sequence) in rows {
        if let Some(projection) = PROJECTIONS.iter().position(|known| *known == name) {
            checkpoints[projection] = u64::try_from(sequence).unwrap_or(0);
        }
    }
    Ok(Checkpoints(checkpoints))
}

async fn refresh(pool: &PgPool, seen: &watch::Sender<Seen>) {
    match read_checkpoints(pool).await {
        Ok(checkpoints) => observe(seen, checkpoints),
        Err(error) => {
            tracing::warn!(%error, "cannot read the projection checkpoints");
            observe_unreadable(seen);
        }
    }
}

async fn poll(pool: PgPool, seen: Arc<watch::Sender<Seen>>, stop: CancellationToken) {
    let mut every = tokio::time::interval(POLL_INTERVAL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = every.tick() => refresh(&pool, &seen).await,
        }
    }
}

async fn listen(pool: PgPool, seen: Arc<watch::Sender<Seen>>, stop: CancellationToken) {
    loop {
        let listened = stop
            .run_until_cancelled(follow_notifications(&pool, &seen))
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
async fn follow_notifications(pool: &PgPool, seen: &watch::Sender<Seen>) -> sqlx::Error {
    let mut listener = match PgListener::connect_with(pool).await {
        Ok(listener) => listener,
        Err(error) => return error,
    };
    if let Err(error) = listener.listen(PROJECTION_CHANNEL).await {
        return error;
    }
    // Whatever was committed before LISTEN took effect was announced to nobody.
    refresh(pool, seen).await;
    loop {
        match listener.try_recv().await {
            Ok(Some(notification)) => {
                if !observe_notified(seen, notification.payload()) {
                    tracing::warn!(
                        payload = notification.payload(),
                        "unexpected projection notification; reading the checkpoints instead"
                    );
                    refresh(pool, seen).await;
                }
            }
            // The connection dropped and has been re-established: catch up on what was missed.
            Ok(None) => refresh(pool, seen).await,
            Err(error) => return error,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test that unwraps fails with the value it got
mod tests {
    use super::*;

    /// A watermark driven by the test instead of by Postgres.
    fn driven() -> (watch::Sender<Seen>, ProjectionWatermark) {
        let (sender, seen) = watch::channel(Seen::default());
        let watermark = ProjectionWatermark {
            seen,
            _followers: Arc::new(CancellationToken::new().drop_guard()),
        };
        (sender, watermark)
    }

    #[test]
    fn notifications_name_their_projection_and_anything_else_is_not_one() {
        let mut checkpoints = Checkpoints::default();
        assert!(checkpoints.notified("runs:42"));
        assert!(checkpoints.notified(" catalog:7\n"));
        assert_eq!(checkpoints.0, [42, 0, 0, 7]);
        assert_eq!((checkpoints.of("runs"), checkpoints.of("catalog")), (42, 7));
        for other in ["42", "read_models:42", "runs:", "runs:-1", "runs:x", ""] {
            assert!(!checkpoints.notified(other), "{other:?}");
        }
        assert_eq!(checkpoints.0, [42, 0, 0, 7]);
    }

    #[tokio::test]
    async fn the_read_models_cover_only_what_their_slowest_projection_covers() {
        let (seen, watermark) = driven();
        observe(&seen, Checkpoints([5; PROJECTIONS.len()]));
        for (place, projection) in PROJECTIONS.iter().enumerate() {
            assert!(observe_notified(&seen, &format!("{projection}:9")));
            let expected = if place + 1 == PROJECTIONS.len() { 9 } else { 5 };
            assert_eq!(watermark.checkpoint(), expected, "after {projection}");
        }
        assert!(watermark.wait_until(9, Duration::ZERO).await);
        // A projection rebuilt from scratch holds the whole back.
        assert!(observe_notified(&seen, "knowledge:0"));
        assert_eq!(watermark.checkpoint(), 0);
    }

    /// Reached only by a waiter that failed to wake up.
    const LONG: Duration = Duration::from_secs(60);

    #[tokio::test]
    async fn a_covered_position_is_reached_at_once_and_an_uncovered_one_not_without_waiting() {
        let (seen, watermark) = driven();
        observe(&seen, Checkpoints([7; PROJECTIONS.len()]));
        assert!(watermark.wait_until(7, Duration::ZERO).await);
        assert!(watermark.wait_while_readable(3, Duration::ZERO).await);
        assert!(!watermark.wait_until(8, Duration::ZERO).await);
        assert!(!watermark.wait_while_readable(8, Duration::ZERO).await);
    }

    #[tokio::test]
    async fn a_waiter_wakes_when_the_checkpoint_reaches_its_position() {
        let (seen, watermark) = driven();
        let waiter = tokio::spawn({
            let watermark = watermark.clone();
            async move { watermark.wait_until(5, LONG).await }
        });
        tokio::task::yield_now().await;
        observe(&seen, Checkpoints([4; PROJECTIONS.len()]));
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "4 does not cover 5");
        observe(&seen, Checkpoints([9; PROJECTIONS.len()]));
        assert!(waiter.await.unwrap());
        assert_eq!(watermark.checkpoint(), 9);
    }

    #[tokio::test]
    async fn a_wait_times_out_when_the_read_models_stay_behind() {
        let (seen, watermark) = driven();
        observe(&seen, Checkpoints([4; PROJECTIONS.len()]));
        assert!(!watermark.wait_until(5, Duration::from_millis(20)).await);
    }

    #[tokio::test]
    async fn only_the_readable_wait_gives_up_when_the_checkpoint_cannot_be_read() {
        let (seen, watermark) = driven();
        observe(&seen, Checkpoints([1; PROJECTIONS.len()]));
        let patient = tokio::spawn({
            let watermark = watermark.clone();
            async move { watermark.wait_until(2, LONG).await }
        });
        let hasty = tokio::spawn({
            let watermark = watermark.clone();
            async move { watermark.wait_while_readable(2, LONG).await }
        });
        tokio::task::yield_now().await;
        observe_unreadable(&seen);
        assert!(watermark.unreadable());
        assert!(!hasty.await.unwrap(), "gave up");
        assert!(
            !watermark.wait_while_readable(2, LONG).await,
            "gives up at once"
        );
        tokio::task::yield_now().await;
        assert!(!patient.is_finished(), "still waiting");
        // Postgres is back and the projector has caught up.
        observe(&seen, Checkpoints([2; PROJECTIONS.len()]));
        assert!(patient.await.unwrap());
        assert!(!watermark.unreadable());
    }

    #[tokio::test]
    async fn a_rebuilt_projection_is_followed_back_to_its_start() {
        let (seen, watermark) = driven();
        observe(&seen, Checkpoints([10; PROJECTIONS.len()]));
        observe(&seen, Checkpoints([0; PROJECTIONS.len()]));
        assert_eq!(watermark.checkpoint(), 0);
        assert!(!watermark.wait_until(5, Duration::ZERO).await);
    }

    #[tokio::test]
    async fn before_the_first_read_a_readable_wait_still_waits() {
        let (seen, watermark) = driven();
        assert!(!watermark.unreadable());
        let waiter = tokio::spawn({
            let watermark = watermark.clone();
            async move { watermark.wait_while_readable(1, LONG).await }
        });
        tokio::task::yield_now().await;
        observe(&seen, Checkpoints([1; PROJECTIONS.len()]));
        assert!(waiter.await.unwrap());
    }
}
