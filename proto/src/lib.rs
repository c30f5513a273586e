//! Cadre's wire contract, and nothing else.
//!
//! Every fact Cadre records is an [`events::Event`] carried in a CloudEvents 1.0 JSON
//! [`envelope::Envelope`] on a subject built by [`subjects`], stored in the stream described by
//! [`streams`]. The domain vocabulary (agents, workflows, steps) keeps the seed types' names and
//! their camelCase JSON. This crate performs no I/O: services and tests share it so that a
//! subject, an event type or a stream setting is spelled in exactly one place.

pub mod control;
pub mod envelope;
pub mod events;
pub mod ids;
pub mod model;
#[cfg(any(test, feature = "samples"))]
pub mod samples;
pub mod shape;
pub mod streams;
pub mod subjects;
pub mod timers;
pub mod upcast;
pub mod workers;

pub use envelope::{DecodeError, Envelope, EventMeta};
pub use events::Event;
pub use ids::{
    AgentId, EscalationId, EventId, ExecutionId, KnowledgeId, StepId, SubscriptionId, TemplateId,
    TenantId, WorkflowId,
};
