//! `rejected_events`: messages on the event stream that are not events this build can hold,
//! with the reason, so that nobody has to guess why the read models skipped them.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use super::columns;
use crate::incoming::{Incoming, Unreadable};
use crate::plan::sequence;

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Rejection {
    pub stream_sequence: i64,
    pub subject: String,
    pub reason: String,
    pub payload: Vec<u8>,
    pub rejected_at: DateTime<Utc>,
}

/// The batch's rejected messages, in stream order.
#[derive(Debug, Default)]
pub(crate) struct Changes {
    pub rows: Vec<Rejection>,
}

impl Changes {
    pub fn rejected(&mut self, incoming: &Incoming, unreadable: &Unreadable) {
        self.rows.push(Rejection {
            stream_sequence: sequence(incoming.sequence),
            subject: incoming.subject.clone(),
            reason: unreadable.reason.clone(),
            payload: unreadable.payload.clone(),
            rejected_at: incoming.stored_at,
        });
    }

    /// The stream sequence identifies a message: a replayed batch records nothing twice.
    pub async fn write(self, tx: &mut PgConnection) -> Result<(), sqlx::Error> {
        let rows = self.rows;
        if rows.is_empty() {
            return Ok(());
        }
        columns!(for r in rows => stream_sequence, subject, reason, payload, rejected_at);
        sqlx::query!(
            "INSERT INTO rejected_events (stream_sequence, subject, reason, payload, rejected_at)
             SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::bytea[],
                                  $5::timestamptz[])
             ON CONFLICT (stream_sequence) DO NOTHING",
            &stream_sequence,
            &subject,
            &reason,
            &payload,
            &rejected_at,
        )
        .execute(&mut *tx)
        .await?;
        Ok(())
    }
}

pub(crate) async fn reset(tx: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query!("TRUNCATE rejected_events")
        .execute(&mut *tx)
        .await?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test that unwraps fails with the value it got
mod tests {
    use serde_json::Value;

    use super::*;
    use crate::testing::{Fixture, payload, plan_all};

    #[test]
    fn malformed_and_unknown_messages_become_rejections() {
        let mut f = Fixture::new();
        let good = f.message(f.scheduled(1));
        let stored_at = f.clock;
        let mut unknown: Value = serde_json::from_slice(&payload(&good)).unwrap();
        unknown["type"] = "dev.cadre.execution.exploded.v9".into();
        let batch = vec![
            Incoming::decode(7, "cadre.events.x", stored_at, b"{not json"),
            good,
            Incoming::decode(
                9,
                "cadre.events.y",
                stored_at,
                &serde_json::to_vec(&unknown).unwrap(),
            ),
        ];
        let plan = plan_all(&batch);

        assert_eq!(plan.last_sequence, 9);
        assert_eq!(
            plan.executions.patches.len(),
            1,
            "the good event is still applied"
        );
        assert_eq!(plan.rejections.rows.len(), 2);
        let malformed = &plan.rejections.rows[0];
        assert_eq!(malformed.stream_sequence, 7);
        assert_eq!(malformed.subject, "cadre.events.x");
        assert!(
            malformed
                .reason
                .starts_with("not a CloudEvents JSON envelope"),
            "{}",
            malformed.reason
        );
        assert_eq!(malformed.payload, b"{not json");
        assert_eq!(malformed.rejected_at, stored_at);
        assert_eq!(
            plan.rejections.rows[1].reason,
            "unknown event type \"dev.cadre.execution.exploded.v9\""
        );
    }
}
