//! The CloudEvents 1.0 JSON envelope (structured mode) around every event.
//!
//! On the wire: `specversion`, `id` (the event id, a UUIDv7, also the `Nats-Msg-Id`), `source`
//! (the emitting service), `type`, `subject` (the execution id for execution events), `time`,
//! `datacontenttype`, the extension attribute `tenantid`, and `data` (the typed payload).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::events::{self, Event, types};
use crate::ids::{EventId, TenantId};

pub const SPEC_VERSION: &str = "1.0";
pub const CONTENT_TYPE: &str = "application/cloudevents+json";
const DATA_CONTENT_TYPE: &str = "application/json";

/// Envelope attributes other than the payload.
#[derive(Debug, Clone, PartialEq)]
pub struct EventMeta {
    pub id: EventId,
    /// URI-reference of the emitter, e.g. `/cadre/coordinator`.
    pub source: String,
    pub time: DateTime<Utc>,
    pub tenant: TenantId,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    pub meta: EventMeta,
    pub event: Event,
}

/// Why bytes on the bus are not an event this build understands. Consumers terminate such a
/// message with this text as the reason: redelivering it would fail the same way.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("not a CloudEvents JSON envelope: {0}")]
    Malformed(serde_json::Error),
    #[error("unsupported CloudEvents specversion {0:?} (expected \"1.0\")")]
    SpecVersion(String),
    #[error("unknown event type {0:?}")]
    UnknownType(String),
    #[error("invalid data for {event_type}: {error}")]
    InvalidData {
        event_type: String,
        error: serde_json::Error,
    },
}

#[derive(Serialize)]
struct WireOut<'a> {
    specversion: &'static str,
    id: EventId,
    source: &'a str,
    #[serde(rename = "type")]
    event_type: &'static str,
    subject: String,
    time: DateTime<Utc>,
    datacontenttype: &'static str,
    tenantid: &'a TenantId,
    data: Data<'a>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Data<'a> {
    AgentRegistered(&'a events::AgentRegistered),
    WorkflowCreated(&'a events::WorkflowCreated),
    KnowledgeShared(&'a events::KnowledgeShared),
    ExecutionStarted(&'a events::ExecutionStarted),
    StepScheduled(&'a events::StepScheduled),
    StepStarted(&'a events::StepStarted),
    InteractionRecorded(&'a events::InteractionRecorded),
    StepCompleted(&'a events::StepCompleted),
    StepFailed(&'a events::StepFailed),
    ExecutionCompleted(&'a events::ExecutionCompleted),
    ExecutionFailed(&'a events::ExecutionFailed),
}

#[derive(Deserialize)]
struct WireIn<'a> {
    specversion: String,
    id: EventId,
    source: String,
    #[serde(rename = "type")]
    event_type: String,
    time: DateTime<Utc>,
    tenantid: TenantId,
    #[serde(borrow)]
    data: &'a RawValue,
}

impl Envelope {
    /// A new event with a fresh id.
    pub fn new(source: &str, tenant: TenantId, time: DateTime<Utc>, event: Event) -> Self {
        Self::with_id(EventId::new(), source, tenant, time, event)
    }

    pub fn with_id(
        id: EventId,
        source: &str,
        tenant: TenantId,
        time: DateTime<Utc>,
        event: Event,
    ) -> Self {
        Self {
            meta: EventMeta {
                id,
                source: source.to_owned(),
                time,
                tenant,
            },
            event,
        }
    }

    pub fn nats_subject(&self) -> String {
        self.event.nats_subject(&self.meta.tenant)
    }

    pub fn encode(&self) -> Vec<u8> {
        let data = match &self.event {
            Event::AgentRegistered(e) => Data::AgentRegistered(e),
            Event::WorkflowCreated(e) => Data::WorkflowCreated(e),
            Event::KnowledgeShared(e) => Data::KnowledgeShared(e),
            Event::ExecutionStarted(e) => Data::ExecutionStarted(e),
            Event::StepScheduled(e) => Data::StepScheduled(e),
            Event::StepStarted(e) => Data::StepStarted(e),
            Event::InteractionRecorded(e) => Data::InteractionRecorded(e),
            Event::StepCompleted(e) => Data::StepCompleted(e),
            Event::StepFailed(e) => Data::StepFailed(e),
            Event::ExecutionCompleted(e) => Data::ExecutionCompleted(e),
            Event::ExecutionFailed(e) => Data::ExecutionFailed(e),
        };
        let wire = WireOut {
            specversion: SPEC_VERSION,
            id: self.meta.id,
            source: &self.meta.source,
            event_type: self.event.type_name(),
            subject: self.event.ce_subject(),
            time: self.meta.time,
            datacontenttype: DATA_CONTENT_TYPE,
            tenantid: &self.meta.tenant,
            data,
        };
        // Serializing plain structs of strings, numbers and maps with string keys cannot fail.
        serde_json::to_vec(&wire).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let wire: WireIn<'_> = serde_json::from_slice(bytes).map_err(DecodeError::Malformed)?;
        if wire.specversion != SPEC_VERSION {
            return Err(DecodeError::SpecVersion(wire.specversion));
        }
        let event = decode_data(&wire.event_type, wire.data.get())?;
        Ok(Self {
            meta: EventMeta {
                id: wire.id,
                source: wire.source,
                time: wire.time,
                tenant: wire.tenantid,
            },
            event,
        })
    }
}

fn decode_data(event_type: &str, data: &str) -> Result<Event, DecodeError> {
    fn parse<T: serde::de::DeserializeOwned>(
        event_type: &str,
        data: &str,
    ) -> Result<T, DecodeError> {
        serde_json::from_str(data).map_err(|error| DecodeError::InvalidData {
            event_type: event_type.to_owned(),
            error,
        })
    }
    Ok(match event_type {
        types::AGENT_REGISTERED => Event::AgentRegistered(parse(event_type, data)?),
        types::WORKFLOW_CREATED => Event::WorkflowCreated(parse(event_type, data)?),
        types::KNOWLEDGE_SHARED => Event::KnowledgeShared(parse(event_type, data)?),
        types::EXECUTION_STARTED => Event::ExecutionStarted(parse(event_type, data)?),
        types::STEP_SCHEDULED => Event::StepScheduled(parse(event_type, data)?),
        types::STEP_STARTED => Event::StepStarted(parse(event_type, data)?),
        types::INTERACTION_RECORDED => Event::InteractionRecorded(parse(event_type, data)?),
        types::STEP_COMPLETED => Event::StepCompleted(parse(event_type, data)?),
        types::STEP_FAILED => Event::StepFailed(parse(event_type, data)?),
        types::EXECUTION_COMPLETED => Event::ExecutionCompleted(parse(event_type, data)?),
        types::EXECUTION_FAILED => Event::ExecutionFailed(parse(event_type, data)?),
        other => return Err(DecodeError::UnknownType(other.to_owned())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::StepFailed;
    use crate::ids::{AgentId, ExecutionId, StepId, WorkflowId};

    fn sample() -> Envelope {
        Envelope::new(
            "/cadre/agent-worker",
            TenantId::default_tenant(),
            Utc::now(),
            Event::StepFailed(StepFailed {
                execution_id: ExecutionId::new(),
                workflow_id: WorkflowId::new(),
                step_id: StepId::parse("review").unwrap(),
                step_name: "Review".to_owned(),
                attempt: 1,
                agent_id: AgentId::new(),
                error: "provider said 400".to_owned(),
            }),
        )
    }

    #[test]
    fn round_trips_and_is_a_valid_cloudevent() {
        let envelope = sample();
        let bytes = envelope.encode();
        assert_eq!(Envelope::decode(&bytes).unwrap(), envelope);

        // An independent CloudEvents implementation accepts it, attributes and all.
        let ce: cloudevents::Event = serde_json::from_slice(&bytes).unwrap();
        use cloudevents::AttributesReader;
        assert_eq!(ce.id(), envelope.meta.id.to_string());
        assert_eq!(ce.ty(), types::STEP_FAILED);
        assert_eq!(ce.source().to_string(), "/cadre/agent-worker");
        assert_eq!(ce.subject(), Some(envelope.event.ce_subject().as_str()));
        assert!(ce.extension("tenantid").is_some());
    }

    #[test]
    fn rejects_what_it_does_not_understand() {
        assert!(matches!(
            Envelope::decode(b"{not json"),
            Err(DecodeError::Malformed(_))
        ));
        let mut v: serde_json::Value = serde_json::from_slice(&sample().encode()).unwrap();
        v["type"] = "dev.cadre.execution.exploded.v9".into();
        let err = Envelope::decode(&serde_json::to_vec(&v).unwrap()).unwrap_err();
        assert!(matches!(err, DecodeError::UnknownType(ref t) if t.ends_with("exploded.v9")));
        v["type"] = types::AGENT_REGISTERED.into();
        let err = Envelope::decode(&serde_json::to_vec(&v).unwrap()).unwrap_err();
        assert!(
            err.to_string().starts_with(
                "invalid data for dev.cadre.agent.registered.v1: missing field `agent`"
            )
        );
        v["specversion"] = "0.3".into();
        let err = Envelope::decode(&serde_json::to_vec(&v).unwrap()).unwrap_err();
        assert!(matches!(err, DecodeError::SpecVersion(_)));
    }
}
