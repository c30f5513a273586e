//! Messages as read from the event stream: an event the read models can hold, or the reason a
//! message is not one.

use cadre_proto::{Envelope, Event};
use chrono::{DateTime, Datelike, Utc};

/// A message read from the event stream.
#[derive(Debug)]
pub(crate) struct Incoming {
    pub sequence: u64,
    pub subject: String,
    /// When JetStream stored the message: the only time a message that is not an event has.
    pub stored_at: DateTime<Utc>,
    pub content: Result<Envelope, Unreadable>,
}

/// A message that is not an event the read models can hold, and why.
#[derive(Debug)]
pub(crate) struct Unreadable {
    pub reason: String,
    pub payload: Vec<u8>,
}

impl Incoming {
    pub fn decode(
        sequence: u64,
        subject: impl Into<String>,
        stored_at: DateTime<Utc>,
        payload: &[u8],
    ) -> Self {
        let payload = without_nul_escapes(payload);
        let content = Envelope::decode(&payload)
            .map_err(|error| error.to_string())
            .and_then(|envelope| storable(&envelope).map(|()| envelope))
            .map_err(|reason| Unreadable {
                reason,
                payload: payload.into_owned(),
            });
        Self {
            sequence,
            subject: subject.into(),
            stored_at,
            content,
        }
    }
}

/// Postgres refuses NUL in `text` and `jsonb`; one such character would fail its batch on
/// every retry and stall the projection. JSON can only carry it escaped, so the escape is
/// swapped for U+FFFD (same length) before decoding.
fn without_nul_escapes(payload: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    const NUL: &[u8] = b"u0000";
    const REPLACEMENT: &[u8] = b"ufffd";
    let mut owned: Option<Vec<u8>> = None;
    let mut i = 0;
    while i < payload.len() {
        if payload[i] != b'\\' {
            i += 1;
            continue;
        }
        // A backslash always starts an escape inside a JSON string; skip the escaped character
        // so that an escaped backslash followed by "u0000" is left alone.
        if payload.get(i + 1..i + 1 + NUL.len()) == Some(NUL) {
            owned.get_or_insert_with(|| payload.to_vec())[i + 1..i + 1 + NUL.len()]
                .copy_from_slice(REPLACEMENT);
            i += 1 + NUL.len();
        } else {
            i += 2;
        }
    }
    owned.map_or(std::borrow::Cow::Borrowed(payload), std::borrow::Cow::Owned)
}

/// Events that decode but cannot be stored would fail their batch forever; they are rejected
/// like undecodable messages instead.
fn storable(envelope: &Envelope) -> Result<(), String> {
    let year = envelope.meta.time.year();
    if !(1..=9999).contains(&year) {
        return Err(format!("event time {} is out of range", envelope.meta.time));
    }
    if let Event::ExecutionStarted(e) = &envelope.event
        && i32::try_from(e.execution_number).is_err()
    {
        return Err(format!(
            "execution number {} is out of range",
            e.execution_number
        ));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test that unwraps fails with the value it got
mod tests {
    use super::*;
    use crate::testing::Fixture;

    #[test]
    fn nul_characters_are_replaced_not_fatal() {
        let mut f = Fixture::new();
        let mut failed = f.step_failed(1);
        if let Event::StepFailed(e) = &mut failed {
            e.error = "bad\u{0}byte and a literal \\u0000".to_owned();
        }
        let incoming = f.message(failed);
        let envelope = incoming.content.as_ref().unwrap();
        let Event::StepFailed(e) = &envelope.event else {
            panic!("decoded as {envelope:?}")
        };
        assert_eq!(e.error, "bad\u{fffd}byte and a literal \\u0000");
    }

    #[test]
    fn unstorable_events_are_rejected() {
        let mut f = Fixture::new();
        let incoming = f.message(f.started(u32::MAX));
        let reason = &incoming.content.as_ref().unwrap_err().reason;
        assert_eq!(reason, "execution number 4294967295 is out of range");
    }
}
