//! How coordinator replicas share the work: the executions are split into
//! [`EXECUTION_PARTITIONS`] partitions of the coordinator's inbox, and each partition is worked
//! by one live replica.
//!
//! Each replica heartbeats its key in [`streams::COORDINATORS_BUCKET`] (see
//! [`cadre_runtime::membership`]) and, from the replicas it sees live, computes which
//! partitions are its own by rendezvous hashing: every replica with the same view reaches the
//! same answer without talking to the others, and a replica joining or leaving moves only the
//! partitions it takes or gives up. Views may differ for a
//! moment; the partition consumers' pinned client keeps one replica at a time on a partition
//! even then, and appends expect each execution's last sequence, so a replica that acts on a
//! stale state decides again rather than twice.

use std::collections::BTreeSet;

use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::context::{ConsumerInfoErrorKind, GetStreamError, GetStreamErrorKind};
use async_nats::jetstream::{self, stream};
use sha2::{Digest, Sha256};

use cadre_proto::streams::{self, EXECUTION_PARTITIONS, PARTITIONS_STREAM};
use cadre_runtime::bus::{EventBus, NatsError};

/// The partitions `me` works when `live` are the replicas alive (`me` counts as alive
/// whatever `live` says): each partition goes to the replica scoring highest for it.
pub fn owned(live: &BTreeSet<String>, me: &str) -> BTreeSet<u16> {
    let score = |replica: &str, partition: u16| {
        // SHA-256: the same on every replica and every release (unlike std's hasher), and
        // well mixed (FNV gave one replica every partition).
        let digest = Sha256::new()
            .chain_update(replica.as_bytes())
            .chain_update([0])
            .chain_update(partition.to_be_bytes())
            .finalize();
        let mut first = [0; 8];
        first.copy_from_slice(&digest[..8]);
        u64::from_be_bytes(first)
    };
    (0..EXECUTION_PARTITIONS)
        .filter(|&partition| {
            let mine = score(me, partition);
            live.iter()
                .filter(|replica| replica.as_str() != me)
                // Ties (never seen with 64-bit scores) go to the smaller name.
                .all(|other| (mine, me) > (score(other, partition), other.as_str()))
        })
        .collect()
}

/// The coordinator's inbox (see [`streams::partitions_stream`]) and one consumer per partition.
/// Created by the first coordinator that runs; one upgraded from a single coordinator consumer
/// per stream starts the inbox where those consumers had got to, then deletes them.
pub async fn open_inbox(bus: &EventBus, replicas: usize) -> Result<stream::Stream, NatsError> {
    let js = bus.jetstream();
    let inbox = match js.get_stream(PARTITIONS_STREAM).await {
        Ok(inbox) => inbox,
        // Only when it surely does not exist: created from sequence 1 on a system that has
        // one, it would decide on the whole history again.
        Err(error) if is_not_found(&error) => {
            let mut from = [1; 2];
            for (next, (stream, consumer)) in
                from.iter_mut().zip(streams::RETIRED_COORDINATOR_CONSUMERS)
            {
                match js.get_stream(stream).await?.consumer_info(consumer).await {
                    Ok(info) => *next = info.ack_floor.stream_sequence + 1,
                    Err(error) if error.kind() == ConsumerInfoErrorKind::NotFound => {}
                    Err(error) => return Err(error.into()),
                }
            }
            // Two coordinators starting at once may both try: the loser takes the winner's.
            match js
                .create_stream(streams::partitions_stream(replicas, from[0], from[1]))
                .await
            {
                Ok(inbox) => inbox,
                Err(_) => js.get_stream(PARTITIONS_STREAM).await?,
            }
        }
        Err(error) => return Err(error.into()),
    };
    // On every start: one that stopped between creating the inbox and this leaves them behind.
    for (stream, consumer) in streams::RETIRED_COORDINATOR_CONSUMERS {
        let _ = js.get_stream(stream).await?.delete_consumer(consumer).await;
    }
    for partition in 0..EXECUTION_PARTITIONS {
        // Create or update: a consumer left by an older release takes today's settings.
        inbox
            .create_consumer(streams::coordinator_partition_consumer(partition))
            .await?;
    }
    Ok(inbox)
}

fn is_not_found(error: &GetStreamError) -> bool {
    matches!(error.kind(), GetStreamErrorKind::JetStream(error) if error.error_code() == ErrorCode::STREAM_NOT_FOUND)
}

/// How many of the inbox's messages wait to be decided on, counting those the server has not
/// copied into it yet: 0 once the coordinators have caught up with the log and the timers.
pub async fn backlog(js: &jetstream::Context) -> Result<u64, NatsError> {
    let mut inbox = js.get_stream(PARTITIONS_STREAM).await?;
    let info = inbox.info().await?;
    Ok(info.state.messages + info.sources.iter().map(|source| source.lag).sum::<u64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replicas(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|name| (*name).to_owned()).collect()
    }

    #[test]
    fn every_partition_has_exactly_one_owner_among_replicas_that_agree() {
        for live in [
            replicas(&["a"]),
            replicas(&["a", "b"]),
            replicas(&["a", "b", "c", "d"]),
        ] {
            let mut all = Vec::new();
            for me in &live {
                all.extend(owned(&live, me));
            }
            all.sort_unstable();
            assert_eq!(
                all,
                (0..EXECUTION_PARTITIONS).collect::<Vec<_>>(),
                "{live:?}"
            );
        }
    }

    #[test]
    fn a_lone_replica_owns_everything_even_before_it_sees_itself() {
        assert_eq!(
            owned(&BTreeSet::new(), "a").len(),
            usize::from(EXECUTION_PARTITIONS)
        );
    }

    #[test]
    fn a_replica_leaving_moves_only_its_own_partitions() {
        let before = replicas(&["a", "b", "c", "d"]);
        let after = replicas(&["a", "b", "c"]);
        for me in ["a", "b", "c"] {
            let kept = owned(&before, me);
            assert!(
                kept.is_subset(&owned(&after, me)),
                "{me} lost a partition it owned"
            );
        }
    }

    #[test]
    fn four_replicas_share_the_partitions_roughly_evenly() {
        let live = replicas(&[
            "coordinator-0",
            "coordinator-1",
            "coordinator-2",
            "coordinator-3",
        ]);
        for me in &live {
            let share = owned(&live, me).len();
            assert!((1..=8).contains(&share), "{me} owns {share} of 16");
        }
    }
}
