//! The CloudEvents 1.0 JSON envelope (structured mode) around every event.
//!
//! On the wire: `specversion`, `id` (the event id, a UUIDv7, also the `Nats-Msg-Id`), `source`
//! (the emitting service), `type`, `subject` (the execution id for execution events), `time`,
//! `datacontenttype`, the extension attribute `tenantid`, and `data` (the typed payload).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::events::Event;
use crate::ids::{EventId, TenantId};
use crate::upcast;

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
    data: Box<RawValue>,
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
        // Serializing plain structs of strings, numbers and maps with string keys cannot fail.
        let data = self
            .event
            .data()
            .unwrap_or_else(|_| RawValue::NULL.to_owned());
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
        serde_json::to_vec(&wire).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let wire: WireIn<'_> = serde_json::from_slice(bytes).map_err(DecodeError::Malformed)?;
        if wire.specversion != SPEC_VERSION {
            return Err(DecodeError::SpecVersion(wire.specversion));
        }
        let event = decode_data(&wire.event_type, wire.data)?;
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

/// The payload of `event_type`, upcast first when it is an older version.
fn decode_data(event_type: &str, data: &RawValue) -> Result<Event, DecodeError> {
    let invalid = |error| DecodeError::InvalidData {
        event_type: event_type.to_owned(),
        error,
    };
    if let Some(event) = Event::from_data(event_type, data.get()) {
        return event.map_err(invalid);
    }
    match upcast::to_current(event_type, data) {
        Some(upcast) => {
            let (current, data) = upcast.map_err(invalid)?;
            Event::from_data(current, data.get())
                .unwrap_or_else(|| Err(serde::de::Error::custom("upcast to an unknown type")))
                .map_err(invalid)
        }
        None => Err(DecodeError::UnknownType(event_type.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::events::*;
    use crate::ids::{ExecutionId, StepId, WorkflowId};
    use crate::samples::{attempt, every_event, workflow, wrap};

    #[test]
    fn every_event_type_round_trips_and_is_a_valid_cloudevent() {
        let events = every_event();
        let covered: BTreeSet<&str> = events.iter().map(Event::type_name).collect();
        assert_eq!(covered, types::ALL.iter().copied().collect::<BTreeSet<_>>());
        for event in events {
            let envelope = wrap(event);
            let bytes = envelope.encode();
            assert_eq!(Envelope::decode(&bytes).unwrap(), envelope);

            // An independent CloudEvents implementation accepts it, attributes and all.
            let ce: cloudevents::Event = serde_json::from_slice(&bytes).unwrap();
            use cloudevents::AttributesReader;
            assert_eq!(ce.id(), envelope.meta.id.to_string());
            assert_eq!(ce.ty(), envelope.event.type_name());
            assert_eq!(ce.source().to_string(), "/cadre/agent-worker");
            assert_eq!(ce.subject(), Some(envelope.event.ce_subject().as_str()));
            assert!(ce.extension("tenantid").is_some());
            assert!(envelope.nats_subject().starts_with(crate::subjects::PREFIX));
        }
    }

    fn sample_completion() -> Box<StepCompleted> {
        every_event()
            .into_iter()
            .find_map(|e| match e {
                Event::StepCompleted(done) => Some(done),
                _ => None,
            })
            .expect("the samples have a StepCompleted")
    }

    #[test]
    fn what_a_completion_told_is_each_the_cloudevent_it_stands_for_without_shared_attributes() {
        let done = sample_completion();
        assert_eq!(done.told.len(), 4, "one of each kind");
        for told in &done.told {
            let wire = serde_json::to_value(told).unwrap();
            let event = Event::from(told.event.clone());
            assert_eq!(wire["id"], serde_json::json!(told.id));
            assert_eq!(wire["type"], event.type_name());
            // Its data reads as the event of that type, with nothing more at the top level.
            let data = wire["data"].to_string();
            let read = Event::from_data(event.type_name(), &data).unwrap().unwrap();
            assert_eq!(read, event);
            assert_eq!(wire.as_object().unwrap().len(), 3, "{wire}");
        }
    }

    #[test]
    fn a_completion_skips_what_it_told_of_a_kind_this_build_does_not_know() {
        let done = sample_completion();
        let bytes = wrap(Event::StepCompleted(done.clone())).encode();
        let mut wire: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        let told = wire["data"]["told"].as_array_mut().unwrap();
        told.insert(
            1,
            serde_json::json!({"id": EventId::new(), "type": "dev.cadre.workflow.later_kind.v1",
                               "data": {"anything": [1, 2]}}),
        );
        let decoded = Envelope::decode(&serde_json::to_vec(&wire).unwrap()).unwrap();
        let Event::StepCompleted(read) = decoded.event else {
            panic!("still a completion");
        };
        assert_eq!(read.told, done.told, "the known ones, in order");

        // A known kind whose data does not fit is an error, as the event would be.
        let broken = wire["data"]["told"].as_array_mut().unwrap();
        broken[0]["data"] = serde_json::json!({"executionId": 3});
        assert!(Envelope::decode(&serde_json::to_vec(&wire).unwrap()).is_err());
    }

    #[test]
    fn step_attempt_fields_stay_at_the_top_level_of_the_payload() {
        let bytes = wrap(Event::StepFailed(StepFailed {
            attempt: attempt(),
            retryable: true,
            error: "e".into(),
            usage: None,
        }))
        .encode();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        for field in ["executionId", "workflowId", "stepId", "stepName", "agentId"] {
            assert!(v["data"][field].is_string(), "{field}");
        }
        assert_eq!(v["data"]["attempt"], 1);
    }

    #[test]
    fn an_execution_failed_v1_is_read_as_the_current_version() {
        let (w, e) = (WorkflowId::new(), ExecutionId::new());
        let v1 = |failed_step: serde_json::Value| {
            serde_json::json!({
                "specversion": "1.0", "id": EventId::new(), "source": "/cadre/coordinator",
                "type": crate::upcast::EXECUTION_FAILED_V1, "subject": e.to_string(),
                "time": Utc::now(), "datacontenttype": "application/json", "tenantid": "default",
                "data": {"executionId": e, "workflowId": w, "failedStepId": failed_step,
                         "error": "step 'A' failed after 1 attempt(s): boom"}
            })
        };
        let decoded = Envelope::decode(&serde_json::to_vec(&v1("a".into())).unwrap()).unwrap();
        assert_eq!(
            decoded.event,
            Event::ExecutionFailed(ExecutionFailed {
                execution_id: e,
                workflow_id: w,
                cause: FailureCause::StepFailed {
                    step_id: StepId::parse("a").unwrap()
                },
                error: "step 'A' failed after 1 attempt(s): boom".into(),
            })
        );
        assert_eq!(decoded.event.type_name(), types::EXECUTION_FAILED);
        let decoded = Envelope::decode(&serde_json::to_vec(&v1(serde_json::Value::Null)).unwrap());
        assert!(matches!(
            decoded.unwrap().event,
            Event::ExecutionFailed(ExecutionFailed {
                cause: FailureCause::Unspecified,
                ..
            })
        ));
    }

    #[test]
    fn a_workflow_created_before_templates_reads_without_a_template() {
        let created = wrap(Event::WorkflowCreated(WorkflowCreated {
            workflow: workflow(),
            template_id: None,
        }));
        let v: serde_json::Value = serde_json::from_slice(&created.encode()).unwrap();
        assert!(v["data"].get("templateId").is_none(), "{v}");
        assert_eq!(Envelope::decode(&created.encode()).unwrap(), created);
    }

    #[test]
    fn an_execution_started_before_records_reads_without_records() {
        let Some(Event::ExecutionStarted(sample)) = every_event()
            .into_iter()
            .find(|e| matches!(e, Event::ExecutionStarted(_)))
        else {
            panic!("every_event holds an ExecutionStarted");
        };
        assert!(!sample.records.is_empty());
        let mut v: serde_json::Value =
            serde_json::from_slice(&wrap(Event::ExecutionStarted(sample.clone())).encode())
                .unwrap();
        assert!(v["data"]["records"].is_object(), "{v}");
        v["data"].as_object_mut().unwrap().remove("records");
        let decoded = Envelope::decode(&serde_json::to_vec(&v).unwrap()).unwrap();
        let without = ExecutionStarted {
            records: Default::default(),
            ..*sample
        };
        assert_eq!(decoded.event, Event::ExecutionStarted(Box::new(without)));
    }

    #[test]
    fn rejects_what_it_does_not_understand() {
        let sample = wrap(Event::StepFailed(StepFailed {
            attempt: attempt(),
            retryable: true,
            error: "e".into(),
            usage: None,
        }));
        assert!(matches!(
            Envelope::decode(b"{not json"),
            Err(DecodeError::Malformed(_))
        ));
        let mut v: serde_json::Value = serde_json::from_slice(&sample.encode()).unwrap();
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
        v["type"] = crate::upcast::EXECUTION_FAILED_V1.into();
        v["data"] = serde_json::json!({"error": "no ids"});
        let err = Envelope::decode(&serde_json::to_vec(&v).unwrap()).unwrap_err();
        assert!(err.to_string().contains("invalid data"), "{err}");
        v["specversion"] = "0.3".into();
        let err = Envelope::decode(&serde_json::to_vec(&v).unwrap()).unwrap_err();
        assert!(matches!(err, DecodeError::SpecVersion(_)));
    }
}
