//! The projections: the read models in groups, each with its own checkpoint, event-id index
//! and Postgres lock, so that projector replicas can share them (see [`crate::run`]). A replica
//! reads the log once for the projections it holds and writes them in one transaction per
//! batch.
//!
//! A read model whose statements read another's rows (history, escalations and tasks read the
//! executions; templates read the workflows) is in the same projection as that model, so it
//! always reads rows as of the same log position.

use std::fmt;

use cadre_proto::streams::PROJECTIONS;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Projection {
    /// `workflow_executions` (a view of `executions` and `execution_steps`), `escalations`,
    /// `agent_tasks`, `execution_history`.
    Runs,
    /// `agent_interactions`, `task_handoffs`.
    Interactions,
    /// `collaboration_knowledge`.
    Knowledge,
    /// `agents`, `agent_status`, `collaboration_workflows`, `workflow_templates`, `token_usage`,
    /// `alerts`, and `rejected_events`: the messages that are not readable events.
    Catalog,
}

impl Projection {
    /// In the order of [`PROJECTIONS`].
    pub const ALL: [Self; 4] = [
        Self::Runs,
        Self::Interactions,
        Self::Knowledge,
        Self::Catalog,
    ];

    /// Its row of `projection_checkpoints`, and its name in `projected_events` and in the
    /// `cadre_projection` notifications.
    pub fn name(self) -> &'static str {
        PROJECTIONS[self as usize]
    }

    /// The projection of that name (see [`PROJECTIONS`]).
    pub fn named(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|projection| projection.name() == name)
    }

    /// Whether it records the messages that are not readable events (in `rejected_events`):
    /// one projection does, so each is recorded once.
    pub fn records_rejections(self) -> bool {
        self == Self::Catalog
    }

    /// The key of the Postgres advisory lock its active replica holds ("cadreP" and the
    /// projection's position).
    pub fn lock_key(self) -> i64 {
        0x6361_6472_6550_0000 + self as i64
    }
}

impl fmt::Display for Projection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_projection_has_its_own_name_and_lock() {
        let names: std::collections::HashSet<_> = Projection::ALL.map(Projection::name).into();
        let locks: std::collections::HashSet<_> = Projection::ALL.map(Projection::lock_key).into();
        assert_eq!(names.len(), PROJECTIONS.len());
        assert_eq!(locks.len(), PROJECTIONS.len());
        for (projection, name) in Projection::ALL.into_iter().zip(PROJECTIONS) {
            assert_eq!(projection.name(), name);
        }
    }
}
