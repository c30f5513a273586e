//! The provider that answers without a model, for demos, tests and benchmarks.

use std::time::Duration;

use super::{ChatRequest, Completion, LlmErrorKind, estimated_usage};
use crate::config::OfflineAnswer;
use crate::prompt::{self, PromptFacts};

/// Answers without a model: the same prompt always gets the same answer, in the seed's
/// sections, built from what the prompt says (step name, expected output, how much team
/// knowledge it carries), in full or brief ([`OfflineAnswer`]), or never (`fail`). Its summary
/// says where it came from, so nobody mistakes it for work. A request's `json_schema` changes
/// nothing: callers read the seed's sections as well.
pub(crate) struct Offline {
    latency: Duration,
    answer: OfflineAnswer,
}

impl Offline {
    pub fn new(latency: Duration, answer: OfflineAnswer) -> Self {
        Self { latency, answer }
    }

    /// The answer, after the simulated latency; a provider set to `fail` refuses the request
    /// as a server would a bad one (400, not retryable).
    pub async fn complete(&self, request: &ChatRequest) -> Result<Completion, LlmErrorKind> {
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        if self.answer == OfflineAnswer::Fail {
            return Err(LlmErrorKind::Api {
                status: 400,
                code: Some("offline_fail".to_owned()),
                message: "the offline provider is set to fail every call (answer = fail)"
                    .to_owned(),
                retryable: false,
            });
        }
        let text = offline_answer(
            &prompt::read_prompt(&request.system, &request.user),
            self.answer,
        );
        Ok(Completion {
            usage: estimated_usage(request, &text),
            text,
            finish_reason: Some("stop".to_owned()),
            response_model: None,
            continuations: 0,
        })
    }
}

fn offline_answer(facts: &PromptFacts, answer: OfflineAnswer) -> String {
    let PromptFacts {
        step_name: step,
        expected_output: expected,
        knowledge_items: known,
        review,
        question,
    } = facts;
    if *question {
        return "[offline provider] Answered without a language model: there is no expert \
                opinion here; the asker should go on with what it knows and flag the open point."
            .to_owned();
    }
    if *review {
        return format!(
            "## Verdict
APPROVED

## Feedback
[offline provider] Reviewed \"{step}\" without a language model: the work is approved as it \
stands against the expected output (\"{expected}\"); a person should review it before relying on it.
"
        );
    }
    if answer == OfflineAnswer::Brief {
        // About 200 bytes of output, as a peer's no-op step returns: a small JSON value.
        let output = serde_json::json!({
            "step": step,
            "expected": expected,
            "knowledgeInContext": known,
            "by": "offline provider (brief answer)",
            "note": "a no-op step: no knowledge shared, nothing asked",
        });
        return format!(
            "## Summary
[offline provider] Completed \"{step}\" without a language model.

## Output
{output}
"
        );
    }
    format!(
        "## Summary
[offline provider] Completed \"{step}\" without a language model, with {known} item(s) of team knowledge in context.

## Output
Outline for \"{step}\":
1. Deliver what is expected: {expected}
2. Build on the {known} item(s) of knowledge the team has shared so far.
3. Hand the result to the steps that depend on this one.

## Insights
- {step}: the expected output (\"{expected}\") is the acceptance criterion of this step.
- {step}: {known} item(s) of team knowledge were available when it ran.

## Decisions
- {step}: proceed with the outline above.

## Questions/Concerns
- {step}: this answer was produced by the offline provider; should a person review it before relying on it?
"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ProviderConfig;
    use crate::llm::Provider;
    use crate::llm::testing::request;
    use crate::prompt::parse_step_result;

    #[tokio::test]
    async fn offline_is_deterministic_labelled_and_in_the_seed_sections() {
        let offline = Provider::from_config(
            "offline",
            &ProviderConfig::Offline {
                latency_ms: 0,
                answer: OfflineAnswer::Team,
            },
        )
        .unwrap();
        let first = offline.complete(&request()).await.unwrap();
        let second = offline.complete(&request()).await.unwrap();
        assert_eq!(first, second);
        assert!(first.usage.prompt > 0 && first.usage.completion > 0);
        assert_eq!(
            first.usage.total,
            first.usage.prompt + first.usage.completion
        );

        let result = parse_step_result("Design the API", &first.text, first.usage);
        assert!(
            result.summary.starts_with("[offline provider]"),
            "{}",
            result.summary
        );
        assert!(result.summary.contains("2 item(s)"), "{}", result.summary);
        assert!(result.output.contains("An endpoint table"));
        assert_eq!(result.insights.len(), 2);
        assert!(result.insights[0].contains("Design the API"));
        assert_eq!(result.decisions.len(), 1);
        assert_eq!(result.questions.len(), 1);

        // More knowledge in the prompt changes the answer.
        let mut richer = request();
        richer.system.push_str("- C (insight): z\n");
        let third = offline.complete(&richer).await.unwrap();
        assert!(third.text.contains("3 item(s)"));
    }

    #[tokio::test]
    async fn a_brief_answer_is_a_summary_and_a_small_output_and_nothing_else() {
        let offline = Offline::new(Duration::ZERO, OfflineAnswer::Brief);
        let completion = offline.complete(&request()).await.unwrap();
        let result = parse_step_result("Design the API", &completion.text, completion.usage);
        assert!(
            result.summary.starts_with("[offline provider]"),
            "{}",
            result.summary
        );
        let output: serde_json::Value = serde_json::from_str(&result.output).unwrap();
        assert_eq!(output["step"], "Design the API");
        assert!(
            (100..=300).contains(&result.output.len()),
            "{} bytes: {}",
            result.output.len(),
            result.output
        );
        assert!(result.insights.is_empty() && result.decisions.is_empty());
        assert!(result.questions.is_empty());
    }

    #[tokio::test]
    async fn offline_latency_is_simulated() {
        let offline = Offline::new(Duration::from_millis(50), OfflineAnswer::Team);
        let started = std::time::Instant::now();
        offline.complete(&request()).await.unwrap();
        assert!(started.elapsed() >= Duration::from_millis(50));
    }

    #[tokio::test]
    async fn a_provider_set_to_fail_refuses_every_call_for_good() {
        let offline = Provider::from_config(
            "broken",
            &ProviderConfig::Offline {
                latency_ms: 0,
                answer: OfflineAnswer::Fail,
            },
        )
        .unwrap();
        let error = offline.complete(&request()).await.unwrap_err();
        assert!(!error.is_retryable(), "{error}");
        assert!(
            error.to_string().contains("broken"),
            "names the provider: {error}"
        );
        assert!(error.to_string().contains("answer = fail"), "{error}");
    }
}
