//! Statistics for read models that grow from empty.
//!
//! Every Cadre session lets Postgres cache a generic plan for a statement it runs often (the
//! default `plan_cache_mode`): planning each of the projector's statements again every time
//! took as long as running it (0.1 ms each, a dozen per batch). A cached plan is only as good
//! as the statistics it was made with, and tables that grow from empty outrun autovacuum's
//! analyze, which waits for its one-minute nap and for a tenth of a table to change: a plan made
//! while a table was empty (a sequential scan) would outlive the table's growth. So the
//! projector analyzes the database itself each time the read models' position in the log
//! doubles (8,192 events, 16,384, 32,768 ...): their statistics are never far behind, and every
//! session's cached plans on them are made again (Postgres invalidates them when statistics
//! change). Doubling costs a handful of runs while the tables are young and next to nothing
//! later, when autovacuum keeps up on its own. Only tables that hold rows are analyzed: an
//! empty one analyzed would tell the planner it stays empty, where a never-analyzed one is
//! assumed to hold a few pages. One replica analyzes at a time (an advisory lock); the others
//! skip that position.

use std::str::FromStr;

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection};
use tokio::task::JoinHandle;

/// The first log position at which the read models are analyzed; the next ones double it.
/// Before it, a plan made for empty tables scans a few thousand rows at most; starting at
/// 1,024 analyzed five times in `make bench`'s 17,000 events and cost about 3% of its
/// throughput, at 8,192 twice and nothing measurable.
pub(crate) const FIRST: u64 = 8192;

/// Key of the advisory lock an analyzing session holds ("cadreANZ"), so that replicas crossing
/// the same position analyze once.
const ANALYZE_LOCK_KEY: i64 = 0x6361_6472_6541_4e5a;

/// Starts an analyze of the read models in the background each time their position in the
/// log crosses [`FIRST`] times a power of two, one at a time.
pub(crate) struct Analyzer {
    database_url: String,
    running: Option<JoinHandle<()>>,
}

/// An analyze still running when its lease is dropped (the session lost, a rebuild's replay
/// done) stops with it rather than overlap the next lease's.
impl Drop for Analyzer {
    fn drop(&mut self) {
        if let Some(running) = &self.running {
            running.abort();
        }
    }
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
            match analyze(&database_url, Another::Skip).await {
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

/// What an analyze does when another session is analyzing the read models.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Another {
    /// Waits for it, then analyzes (a rebuild owes the planner what it wrote).
    Wait,
    /// Leaves it to that one (a replica crossing the same position).
    Skip,
}

/// Analyzes the tables of the database's schema that hold rows (the read models and their
/// bookkeeping), in one statement, on a session of its own, closed after.
pub(crate) async fn analyze(database_url: &str, another: Another) -> Result<(), sqlx::Error> {
    let mut conn = PgConnectOptions::from_str(database_url)?
        .application_name("cadre-projector - analyze")
        .connect()
        .await?;
    let locked = match another {
        Another::Wait => {
            sqlx::query("SELECT pg_advisory_lock($1)")
                .bind(ANALYZE_LOCK_KEY)
                .execute(&mut conn)
                .await?;
            true
        }
        Another::Skip => {
            sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                .bind(ANALYZE_LOCK_KEY)
                .fetch_one(&mut conn)
                .await?
        }
    };
    if locked {
        // Whether a table holds rows is read from the table (a page at most), not from the
        // statistics views, which trail the last writes by up to seconds.
        sqlx::raw_sql(
            "DO $$
             DECLARE
                 t text;
                 filled boolean;
             BEGIN
                 FOR t IN SELECT quote_ident(tablename) FROM pg_tables
                          WHERE schemaname = current_schema() ORDER BY tablename LOOP
                     EXECUTE format('SELECT EXISTS (SELECT 1 FROM %s)', t) INTO filled;
                     IF filled THEN
                         EXECUTE 'ANALYZE ' || t;
                     END IF;
                 END LOOP;
             END $$",
        )
        .execute(&mut conn)
        .await?;
    }
    // Closing the session releases the lock.
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
