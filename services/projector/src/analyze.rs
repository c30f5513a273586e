//! Statistics for read models that grow from empty.
//!
//! Every Cadre session lets Postgres cache a generic plan for a statement it runs often (the
//! default `plan_cache_mode`): planning each of the projector's statements again every time
//! took as long as running it (0.1 ms each, a dozen per batch). A cached plan is only as good
//! as the statistics it was made with, and tables that grow from empty outrun autovacuum's
//! analyze, which waits for its one-minute nap and for a tenth of a table to change: a plan made
//! while a table was empty (a sequential scan) would outlive the table's growth. So the
//! projector analyzes the database itself each time the read models' position in the log
//! doubles (1,024 events, 2,048, 4,096 ...): their statistics are never far behind, and every
//! session's cached plans on them are made again (Postgres invalidates them when statistics
//! change). Doubling costs a handful of runs while the tables are young and next to nothing
//! later, when autovacuum keeps up on its own.

use std::str::FromStr;

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection};
use tokio::task::JoinHandle;

/// The first log position at which the read models are analyzed; the next ones double it.
const FIRST: u64 = 1024;

/// Starts an analyze of the read models in the background each time their position in the
/// log crosses [`FIRST`] times a power of two, one at a time.
pub(crate) struct Analyzer {
    database_url: String,
    running: Option<JoinHandle<()>>,
}

impl Analyzer {
    pub fn new(database_url: &str) -> Self {
        Self {
            database_url: database_url.to_owned(),
            running: None,
        }
    }

    /// The read models moved from log position `before` to `now`: analyzes them if that
    /// crossed a position of the schedule (skipped while the analyze before still runs; the
    /// next crossing takes it).
    pub fn moved(&mut self, before: u64, now: u64) {
        if !crosses(before, now) || self.running.as_ref().is_some_and(|t| !t.is_finished()) {
            return;
        }
        let database_url = self.database_url.clone();
        self.running = Some(tokio::spawn(async move {
            match analyze(&database_url).await {
                Ok(()) => tracing::debug!(position = now, "analyzed the read models"),
                Err(error) => tracing::warn!(%error, "analyzing the read models failed"),
            }
        }));
    }
}

/// Whether moving from `before` to `now` crosses a position of the schedule: [`FIRST`],
/// `2 * FIRST`, `4 * FIRST` ...
fn crosses(before: u64, now: u64) -> bool {
    let mut next = FIRST;
    while next <= before {
        match next.checked_mul(2) {
            Some(doubled) => next = doubled,
            None => return false,
        }
    }
    now >= next
}

/// Analyzes every table of the database (it holds the read models and their bookkeeping) on
/// a session of its own, closed after.
pub(crate) async fn analyze(database_url: &str) -> Result<(), sqlx::Error> {
    let mut conn = PgConnectOptions::from_str(database_url)?
        .application_name("cadre-projector - analyze")
        .connect()
        .await?;
    sqlx::query("ANALYZE").execute(&mut conn).await?;
    conn.close().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_doubles_from_its_first_position() {
        assert!(!crosses(0, FIRST - 1));
        assert!(crosses(0, FIRST));
        assert!(crosses(FIRST - 1, FIRST + 5));
        assert!(!crosses(FIRST, 2 * FIRST - 1));
        assert!(crosses(FIRST, 2 * FIRST));
        assert!(!crosses(2 * FIRST, 3 * FIRST));
        assert!(crosses(3 * FIRST, 4 * FIRST));
        // One analyze for a jump over several positions (a replay's large batch).
        assert!(crosses(0, 100 * FIRST));
        assert!(!crosses(100 * FIRST, 120 * FIRST));
        assert!(crosses(100 * FIRST, 128 * FIRST));
        assert!(!crosses(u64::MAX - 1, u64::MAX));
    }
}
