//! The workflow Restate runs: M steps, each a durable `ctx.run` that does no work and returns
//! about 200 bytes of JSON, which Restate journals before the next step starts.

use restate_sdk::prelude::*;
use serde_json::{Value, json};

pub struct BenchWorkflow;

#[restate_sdk::workflow]
impl BenchWorkflow {
    /// Runs `steps` steps one after the other; returns the last step's output.
    #[handler]
    async fn run(&self, ctx: WorkflowContext<'_>, steps: u32) -> HandlerResult<Json<Value>> {
        let mut previous = Value::Null;
        for step in 1..=steps.max(1) {
            let input_bytes = previous.to_string().len();
            previous = ctx
                .run(move || async move { Ok(Json(step_output(step, input_bytes))) })
                .name(format!("step-{step}"))
                .await?
                .into_inner();
        }
        Ok(Json(previous))
    }
}

/// About 200 bytes of JSON, as a step of Cadre's offline provider hands the next one a short
/// answer. `input_bytes` is the size of the previous step's output, so each step reads it.
pub fn step_output(step: u32, input_bytes: usize) -> Value {
    json!({
        "step": format!("step-{step}"),
        "summary": "A no-op step: it does no work and returns this answer.",
        "output": "Outline: deliver what is expected and hand the result to the next step.",
        "inputBytes": input_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::step_output;

    #[test]
    fn a_step_returns_about_200_bytes() {
        let size = step_output(5, 200).to_string().len();
        assert!((180..=230).contains(&size), "{size} bytes");
    }
}
