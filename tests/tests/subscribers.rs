//! What an event subscriber outside Cadre receives: every event type, as stored on NATS, read
//! by the CloudEvents SDK of another language (Python's, from PyPI); and the subscribers' guide
//! (docs/events.md) names every event type and subject Cadre stores.

// Test code: a panic is the failure report, in helpers as in tests.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::process::Command;

use cadre_proto::events::types;
use cadre_proto::samples::{every_event, wrap};
use cadre_proto::subjects;
use serde_json::json;

fn repo() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

#[test]
fn another_languages_cloudevents_sdk_reads_every_event_type() {
    let folder = tempfile::tempdir().unwrap();
    let mut expected = BTreeMap::new();
    for (i, event) in every_event().into_iter().enumerate() {
        let envelope = wrap(event);
        let name = format!("{i:02}.json");
        std::fs::write(folder.path().join(&name), envelope.encode()).unwrap();
        expected.insert(
            name,
            json!({
                "type": envelope.event.type_name(),
                "subject": envelope.event.ce_subject(),
                "tenantid": envelope.meta.tenant.to_string(),
            }),
        );
    }
    std::fs::write(
        folder.path().join("expected.json"),
        serde_json::to_vec(&expected).unwrap(),
    )
    .unwrap();
    let output = Command::new("bash")
        .arg(repo().join("scripts/read-events.sh"))
        .arg(folder.path())
        .output()
        .expect("running scripts/read-events.sh");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    for ty in types::ALL {
        assert!(
            stdout.contains(&format!("ok {ty} ")),
            "{ty} not read: {stdout}"
        );
    }
    assert!(
        stdout.contains(&format!("read {} events", types::ALL.len())),
        "{stdout}"
    );
}

/// `subject` with its tenant and ids as the guide writes them: `<tenant>`, `<workflow>`, ...
fn pattern(subject: &str) -> String {
    let tokens: Vec<&str> = subject.split('.').collect();
    let before = |i: usize, n: usize| i.checked_sub(n).map(|j| tokens[j]);
    tokens
        .iter()
        .enumerate()
        .map(|(i, token)| match (i, before(i, 1), before(i, 2)) {
            (2, ..) => "<tenant>".to_owned(),
            (_, Some("agent"), _) => "<agent>".to_owned(),
            (_, Some("workflow"), _) => "<workflow>".to_owned(),
            (_, Some("template"), _) => "<template>".to_owned(),
            (_, Some("subscription"), _) => "<subscription>".to_owned(),
            (_, Some("execution" | "interactions"), _) => "<execution>".to_owned(),
            (_, Some("step"), _) => "<step>".to_owned(),
            (_, Some(subjects::ALERT_RAISED), _) => "<alert>".to_owned(),
            (_, _, Some(subjects::ALERT_RAISED)) => "<crossing>".to_owned(),
            _ => (*token).to_owned(),
        })
        .collect::<Vec<_>>()
        .join(".")
}

#[test]
fn the_subscribers_guide_names_every_event_type_and_its_subject() {
    let guide = std::fs::read_to_string(repo().join("docs/events.md")).unwrap();
    let tenant = cadre_proto::TenantId::default_tenant();
    for event in every_event() {
        let ty = event.type_name();
        let subject = pattern(&event.nats_subject(&tenant));
        let row = format!(
            "| `{ty}` | `{}` |",
            subject.trim_start_matches("cadre.events.<tenant>.")
        );
        assert!(guide.contains(&row), "docs/events.md has no row {row}");
    }
}
