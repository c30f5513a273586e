//! Claim checks for step results too large for an event: the whole result goes to the results
//! Object Store and the event carries previews and a reference, so no answer, however long,
//! can stop a run (an event over the log's size limit could never be stored).

use cadre_proto::model::{ObjectRef, StepResult};
use cadre_proto::streams::INLINE_RESULT_BYTES;

/// Characters kept of each long text in the event.
const PREVIEW_CHARS: usize = 2000;
/// Items kept of each list in the event, and characters of each.
const PREVIEW_ITEMS: usize = 20;
const PREVIEW_ITEM_CHARS: usize = 500;

/// Whether `result` is too large to travel whole in an event.
pub fn too_large(result: &StepResult) -> bool {
    serde_json::to_vec(result).map_or(true, |json| json.len() > INLINE_RESULT_BYTES)
}

/// The whole result as stored in the Object Store.
pub fn encode(result: &StepResult) -> Vec<u8> {
    // A struct of strings and numbers always serializes.
    serde_json::to_vec(result).unwrap_or_default()
}

/// `result` as an event carries it once the whole of it is stored at `full`.
pub fn shrink(result: StepResult, full: ObjectRef, whole_at: &str) -> StepResult {
    let text = |text: String| preview(text, PREVIEW_CHARS, whole_at);
    let list = |items: Vec<String>| -> Vec<String> {
        items
            .into_iter()
            .take(PREVIEW_ITEMS)
            .map(|item| preview(item, PREVIEW_ITEM_CHARS, whole_at))
            .collect()
    };
    StepResult {
        summary: text(result.summary),
        output: text(result.output),
        insights: list(result.insights),
        decisions: list(result.decisions),
        questions: list(result.questions),
        raw_response: text(result.raw_response),
        tokens: result.tokens,
        full: Some(full),
    }
}

fn preview(text: String, max: usize, whole_at: &str) -> String {
    let total = text.chars().count();
    if total <= max {
        return text;
    }
    let kept: String = text.chars().take(max).collect();
    format!("{kept}… [preview: {max} of {total} characters; the whole result is at {whole_at}]")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn huge() -> StepResult {
        StepResult {
            summary: "s".repeat(10),
            output: "o".repeat(380 * 1024),
            insights: (0..100).map(|i| format!("- insight {i}")).collect(),
            decisions: vec!["d".repeat(5000)],
            questions: vec![],
            raw_response: "r".repeat(400 * 1024),
            tokens: Default::default(),
            full: None,
        }
    }

    #[test]
    fn a_large_result_is_carried_as_previews_and_a_reference() {
        let result = huge();
        assert!(too_large(&result));
        let reference = ObjectRef {
            bucket: "CADRE_RESULTS".into(),
            name: "e/s/1".into(),
            size: encode(&result).len() as u64,
        };
        let small = shrink(
            result.clone(),
            reference.clone(),
            "/v1/executions/e/steps/s/result",
        );
        assert!(!too_large(&small));
        assert_eq!(small.full, Some(reference));
        assert_eq!(small.summary, result.summary, "short texts stay whole");
        assert!(small.output.starts_with(&"o".repeat(PREVIEW_CHARS)));
        assert!(small.output.ends_with(
            "[preview: 2000 of 389120 characters; the whole result is at /v1/executions/e/steps/s/result]"
        ));
        assert_eq!(small.insights.len(), PREVIEW_ITEMS);
        assert!(small.decisions[0].contains("preview: 500 of 5000"));
        let whole: StepResult = serde_json::from_slice(&encode(&result)).unwrap();
        assert_eq!(whole, result);
    }
}
