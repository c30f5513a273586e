//! Identifiers. Entity ids are UUIDv7 (time-ordered); step ids and tenant ids are user-facing
//! names that also appear as subject tokens, so they are validated to be token-safe.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A fresh time-ordered id.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }
    };
}

uuid_id!(
    /// An agent: a persona with skills and an LLM.
    AgentId
);
uuid_id!(
    /// A workflow definition.
    WorkflowId
);
uuid_id!(
    /// One run of a workflow.
    ExecutionId
);
uuid_id!(
    /// One item of a workflow's shared knowledge.
    KnowledgeId
);
uuid_id!(
    /// A question put to a person about one attempt of a step (a failure past the escalation
    /// ladder's automatic rungs, or an approval).
    EscalationId
);
uuid_id!(
    /// One event; also its `Nats-Msg-Id`, so JetStream drops a re-published copy.
    EventId
);
uuid_id!(
    /// A webhook subscription: a URL that receives Cadre's events over HTTP.
    SubscriptionId
);
uuid_id!(
    /// A workflow template: a reusable workflow configuration whose steps name roles, from
    /// which workflows are created by mapping each role to an agent.
    TemplateId
);

impl TemplateId {
    /// The id of the system template named `slug` (`implement-a-feature`) in `tenant`: derived
    /// (UUIDv5), so every coordinator, at every start, names it the same and registers it once.
    pub fn system(tenant: &TenantId, slug: &str) -> Self {
        Self(Uuid::new_v5(
            &SYSTEM_TEMPLATES,
            format!("{tenant}/{slug}").as_bytes(),
        ))
    }
}

/// The UUIDv5 namespace of system template ids (itself `uuid5(NAMESPACE_URL,
/// "https://cadre.dev/system-templates")`, written out so that it never changes).
const SYSTEM_TEMPLATES: Uuid = Uuid::from_u128(0x2745_d6de_5943_5421_b467_7387_0a3e_04df);

impl KnowledgeId {
    /// How prompts and answers name the item: `K-` and the last 8 hex digits of its id. The
    /// last, not the first: ids are UUIDv7, whose first digits are a timestamp shared by
    /// everything shared within the same minute.
    pub fn handle(self) -> String {
        let hex = self.0.simple().to_string();
        format!("K-{}", &hex[hex.len() - 8..])
    }
}

impl EscalationId {
    /// The escalation of `attempt` of `step` in `execution`: derived, so that deciding twice
    /// names it the same.
    pub fn of(execution: ExecutionId, step: &StepId, attempt: u32) -> Self {
        Self(Uuid::new_v5(
            &execution.0,
            format!("escalation/{step}/{attempt}").as_bytes(),
        ))
    }

    /// The escalation of `execution` as a whole (its `escalation.afterMinutes` passed): one
    /// per run.
    pub fn of_execution(execution: ExecutionId) -> Self {
        Self(Uuid::new_v5(&execution.0, b"escalation/execution"))
    }
}

impl EventId {
    /// A UUIDv7 whose time is `at` and whose other bits are a hash of `(namespace, key)`.
    ///
    /// Whoever emits an event on behalf of a message it may receive twice derives the event id
    /// instead of drawing it, so that the second attempt publishes the same id and JetStream's
    /// duplicate window (and the projector's event index beyond it) drops it.
    pub fn derive(at: DateTime<Utc>, namespace: Uuid, key: &str) -> Self {
        let hashed = Uuid::new_v5(&namespace, key.as_bytes());
        let mut bytes = *hashed.as_bytes();
        let millis = u64::try_from(at.timestamp_millis()).unwrap_or(0);
        bytes[..6].copy_from_slice(&millis.to_be_bytes()[2..]);
        bytes[6] = (bytes[6] & 0x0f) | 0x70; // version 7
        bytes[8] = (bytes[8] & 0x3f) | 0x80; // RFC 9562 variant
        Self(Uuid::from_bytes(bytes))
    }

    /// An id derived from this one: same timestamp, other bits from `label`.
    pub fn child(&self, label: &str) -> Self {
        let millis = self
            .0
            .get_timestamp()
            .map(|ts| {
                let (secs, nanos) = ts.to_unix();
                secs * 1000 + u64::from(nanos) / 1_000_000
            })
            .unwrap_or(0);
        let at = DateTime::<Utc>::from_timestamp_millis(i64::try_from(millis).unwrap_or(0))
            .unwrap_or_default();
        Self::derive(at, self.0, label)
    }
}

/// Why a name was refused as a subject-safe identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} must be 1 to {max} characters of letters, digits, '-' or '_' (got {got:?})")]
pub struct InvalidName {
    pub what: &'static str,
    pub max: usize,
    pub got: String,
}

fn check_token(what: &'static str, max: usize, value: &str) -> Result<(), InvalidName> {
    let ok = !value.is_empty()
        && value.len() <= max
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(InvalidName {
            what,
            max,
            got: value.to_owned(),
        })
    }
}

/// A step's id inside its workflow, chosen by the workflow's author (`"design"`, `"review-1"`).
/// It is a subject token, hence the restricted alphabet.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(try_from = "String", into = "String")]
pub struct StepId(String);

impl StepId {
    pub const MAX_LEN: usize = 64;

    pub fn parse(value: impl Into<String>) -> Result<Self, InvalidName> {
        let value = value.into();
        check_token("a step id", Self::MAX_LEN, &value)?;
        Ok(Self(value))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Prefix of the steps that compensate others: reserved, no workflow may use it.
    pub const UNDO_PREFIX: &'static str = "undo-";
    /// Prefix of the steps in which a coordinator agent re-plans a failing run: reserved.
    pub const REPLAN_PREFIX: &'static str = "replan-";
    /// Prefix of the steps in which a coordinator agent chooses who takes another: reserved.
    pub const DELEGATE_PREFIX: &'static str = "delegate-";

    /// The step in which the coordinator agent chooses who takes this one (`delegate-<id>`).
    /// Workflow validation keeps the steps it may choose for short enough.
    pub fn delegate(&self) -> Self {
        Self(format!("{}{}", Self::DELEGATE_PREFIX, self.0))
    }

    /// The step a `delegate-<id>` step chooses for.
    pub fn delegated(&self) -> Option<Self> {
        self.0
            .strip_prefix(Self::DELEGATE_PREFIX)
            .map(|id| Self(id.to_owned()))
    }

    /// The step of a run's `n`-th re-planning (`replan-<n>`).
    pub fn replan(n: u32) -> Self {
        Self(format!("{}{n}", Self::REPLAN_PREFIX))
    }

    /// The id of the step that compensates this one (`undo-<id>`). Workflow validation keeps a
    /// step with a compensation short enough for it to be a step id.
    pub fn undo(&self) -> Self {
        Self(format!("{}{}", Self::UNDO_PREFIX, self.0))
    }
}

impl TryFrom<String> for StepId {
    type Error = InvalidName;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(value)
    }
}

impl From<StepId> for String {
    fn from(id: StepId) -> Self {
        id.0
    }
}

impl fmt::Display for StepId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The tenant that owns an event or a row. Until authentication arrives every request runs as
/// [`TenantId::default_tenant`]; the id is carried everywhere so that tenancy later changes no
/// event or table.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TenantId(String);

impl TenantId {
    pub const MAX_LEN: usize = 63;
    const DEFAULT: &'static str = "default";

    pub fn parse(value: impl Into<String>) -> Result<Self, InvalidName> {
        let value = value.into();
        check_token("a tenant id", Self::MAX_LEN, &value)?;
        Ok(Self(value))
    }

    pub fn default_tenant() -> Self {
        Self(Self::DEFAULT.to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for TenantId {
    type Error = InvalidName;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(value)
    }
}

impl From<TenantId> for String {
    fn from(id: TenantId) -> Self {
        id.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_ids_are_deterministic_v7_and_keyed() {
        let parent = EventId::new();
        let a = parent.child("started");
        assert_eq!(a, parent.child("started"));
        assert_ne!(a, parent.child("completed"));
        assert_eq!(a.0.get_version_num(), 7);
        assert_eq!(a.0.get_variant(), uuid::Variant::RFC4122);
        // The derived id keeps the parent's millisecond timestamp, so ids stay time-ordered.
        assert_eq!(a.0.as_bytes()[..6], parent.0.as_bytes()[..6]);
    }

    #[test]
    fn system_template_ids_are_derived_per_tenant_and_slug() {
        let tenant = TenantId::default_tenant();
        let id = TemplateId::system(&tenant, "implement-a-feature");
        assert_eq!(id, TemplateId::system(&tenant, "implement-a-feature"));
        assert_ne!(id, TemplateId::system(&tenant, "critical-production-bug"));
        let other = TenantId::parse("acme").unwrap();
        assert_ne!(id, TemplateId::system(&other, "implement-a-feature"));
        assert_eq!(id.0.get_version_num(), 5);
    }

    #[test]
    fn step_ids_must_be_subject_tokens() {
        assert!(StepId::parse("design-1_b").is_ok());
        for bad in ["", "a.b", "a b", "a*", ">", &"x".repeat(65)] {
            let err = StepId::parse(bad).unwrap_err();
            assert!(err.to_string().contains("a step id"), "{err}");
        }
    }
}
