//! Step conditions: CEL expressions, parsed and evaluated by the `cel` crate.
//!
//! A condition sees two variables: `input`, the execution's input (`null` when none), and
//! `steps`, a map from step id to `{status, summary, output}` of every step of the execution
//! (`status` is `waiting`, `scheduled`, `running`, `completed`, `failed` or `skipped`). For
//! example `input.priority == "high"` or `steps.triage.summary.contains("security")`.
//! JSON numbers become CEL `int` when whole, else `double`, so `input.retries > 1` compares
//! like with like.

use std::collections::HashMap;

/// Longest condition accepted, in characters.
pub const MAX_LENGTH: usize = 4096;

/// List macros a condition may use. Each nests a loop over a list, so a few nested ones over
/// small lists already take seconds; two keep every condition cheap.
const MAX_LIST_MACROS: usize = 2;

/// Parses `source`; the error says what is wrong in words a workflow author can act on.
pub fn check(source: &str) -> Result<(), String> {
    if source.chars().count() > MAX_LENGTH {
        return Err(format!("must be at most {MAX_LENGTH} characters"));
    }
    let macros = [".all(", ".exists(", ".exists_one(", ".map(", ".filter("]
        .iter()
        .map(|m| source.matches(m).count())
        .sum::<usize>();
    if macros > MAX_LIST_MACROS {
        return Err(format!(
            "uses {macros} list macros (all, exists, exists_one, map, filter); at most \
             {MAX_LIST_MACROS} keep a condition cheap to evaluate"
        ));
    }
    cel::Program::compile(source)
        .map(drop)
        .map_err(|errors| format!("is not a valid CEL expression: {errors}"))
}

/// What a condition can see of one step.
pub struct StepView<'a> {
    pub status: &'static str,
    pub summary: &'a str,
    pub output: &'a str,
}

/// Evaluates `source` to `true` or `false`; anything else is an error saying why.
pub fn evaluate<'a>(
    source: &str,
    input: Option<&serde_json::Value>,
    steps: impl Iterator<Item = (&'a str, StepView<'a>)>,
) -> Result<bool, String> {
    let program = cel::Program::compile(source)
        .map_err(|errors| format!("is not a valid CEL expression: {errors}"))?;
    let mut context = cel::Context::default();
    context.add_variable_from_value("input", input.map_or(cel::Value::Null, to_cel));
    let steps: HashMap<String, cel::Value> = steps
        .map(|(id, view)| {
            let fields: HashMap<String, cel::Value> = HashMap::from([
                ("status".to_owned(), view.status.into()),
                ("summary".to_owned(), view.summary.into()),
                ("output".to_owned(), view.output.into()),
            ]);
            (id.to_owned(), fields.into())
        })
        .collect();
    context.add_variable_from_value("steps", steps);
    match program.execute(&context) {
        Ok(cel::Value::Bool(value)) => Ok(value),
        Ok(other) => Err(format!(
            "gave {:?} where true or false was needed",
            other.type_of()
        )),
        Err(error) => Err(format!("could not be evaluated: {error}")),
    }
}

fn to_cel(json: &serde_json::Value) -> cel::Value {
    use serde_json::Value as Json;
    match json {
        Json::Null => cel::Value::Null,
        Json::Bool(b) => cel::Value::Bool(*b),
        Json::Number(n) => match n.as_i64() {
            Some(i) => cel::Value::Int(i),
            None => cel::Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(s) => s.as_str().into(),
        Json::Array(items) => {
            cel::Value::List(std::sync::Arc::new(items.iter().map(to_cel).collect()))
        }
        Json::Object(fields) => fields
            .iter()
            .map(|(k, v)| (k.clone(), to_cel(v)))
            .collect::<HashMap<String, cel::Value>>()
            .into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn steps() -> Vec<(&'static str, StepView<'static>)> {
        vec![(
            "triage",
            StepView {
                status: "completed",
                summary: "a security issue",
                output: "details",
            },
        )]
    }

    #[test]
    fn conditions_see_the_input_and_the_steps() {
        let input = json!({"priority": "high", "retries": 2, "tags": ["db"], "ratio": 0.5});
        for (source, expected) in [
            ("input.priority == 'high'", true),
            ("input.retries > 1", true),
            ("input.ratio < 1.0", true),
            ("'db' in input.tags", true),
            ("steps.triage.status == 'completed'", true),
            ("steps.triage.summary.contains('security')", true),
            ("has(input.missing)", false),
            (
                "input.priority == 'low' || steps.triage.status == 'failed'",
                false,
            ),
        ] {
            assert_eq!(
                evaluate(source, Some(&input), steps().into_iter()),
                Ok(expected),
                "{source}"
            );
        }
        assert_eq!(
            evaluate("input == null", None, std::iter::empty()),
            Ok(true)
        );
    }

    #[test]
    fn what_is_not_a_boolean_condition_is_an_error_in_words() {
        assert!(
            check("input.priority ==")
                .unwrap_err()
                .starts_with("is not a valid CEL expression")
        );
        assert!(check(&"x".repeat(MAX_LENGTH + 1)).is_err());
        let nested = "[1,2].all(a, [1,2].all(b, [1,2].all(c, a + b + c > 0)))";
        assert!(check(nested).unwrap_err().starts_with("uses 3 list macros"));
        assert_eq!(check("input.tags.exists(t, t == 'db')"), Ok(()));
        let error = evaluate(
            "input.priority",
            Some(&json!({"priority": "high"})),
            std::iter::empty(),
        )
        .unwrap_err();
        assert!(error.contains("where true or false was needed"), "{error}");
        let error =
            evaluate("input.nope.deeper", Some(&json!({})), std::iter::empty()).unwrap_err();
        assert!(error.starts_with("could not be evaluated"), "{error}");
    }
}
