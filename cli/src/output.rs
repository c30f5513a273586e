//! `-o table|json|yaml`: what the API answered, as a table for people or whole for scripts.

use comfy_table::presets::NOTHING;
use comfy_table::{ContentArrangement, Table};
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Yaml,
}

/// Writes `text` to standard output. When its reader has gone (`cadre logs | head`), the
/// program ends there with success, as Unix tools do: `println!` would panic instead, since
/// Rust ignores SIGPIPE.
pub fn write_out(text: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout.write_fmt(text).and_then(|()| stdout.flush()) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(error) => panic!("writing to standard output: {error}"),
    }
}

/// `print!` through [`write_out`].
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => { $crate::output::write_out(format_args!($($arg)*)) };
}

/// `println!` through [`write_out`].
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => { $crate::output::write_out(format_args!("{}\n", format_args!($($arg)*))) };
}

/// Narrower than this, a terminal's width is not believed.
const MIN_WIDTH: u16 = 20;

/// A column: its header and how a row's cell is read from an item.
pub type Column = (&'static str, fn(&Value) -> String);

/// Prints `value` whole (JSON, YAML); for a table, `rows` of it under `columns`.
pub fn print(format: Format, value: &Value, rows: &[Value], columns: &[Column]) {
    match format {
        Format::Json => crate::outln!("{}", json(value)),
        Format::Yaml => crate::out!("{}", yaml(value)),
        Format::Table => {
            if rows.is_empty() {
                crate::outln!("(none)");
                return;
            }
            let mut table = Table::new();
            table
                .load_style(NOTHING)
                .set_content_arrangement(ContentArrangement::Dynamic)
                .set_header(columns.iter().map(|(header, _)| *header));
            // A terminal that does not know its width (0 columns: a pseudo-terminal nobody
            // sized, as `script` makes without one) would squeeze every column to a character.
            if table.width().is_some_and(|width| width < MIN_WIDTH) {
                table.set_content_arrangement(ContentArrangement::Disabled);
            }
            for row in rows {
                table.add_row(columns.iter().map(|(_, cell)| cell(row)));
            }
            crate::outln!("{table}");
        }
    }
}

/// One object: YAML for people (and `-o yaml`), JSON for `-o json`.
pub fn print_one(format: Format, value: &Value) {
    match format {
        Format::Json => crate::outln!("{}", json(value)),
        Format::Table | Format::Yaml => crate::out!("{}", yaml(value)),
    }
}

pub fn json(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_default()
}

pub fn yaml(value: &Value) -> String {
    serde_saphyr::to_string(value).unwrap_or_else(|_| json(value))
}

/// A field as a cell: strings bare, absent as `-`, anything else as JSON.
pub fn cell(value: &Value, field: &str) -> String {
    match &value[field] {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        Value::Array(items) => items
            .iter()
            .map(|i| {
                i.as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| i.to_string())
            })
            .collect::<Vec<_>>()
            .join(", "),
        other => other.to_string(),
    }
}

/// A long text cut for a cell.
pub fn short(text: &str, max: usize) -> String {
    let line = text.lines().next().unwrap_or_default();
    if line.chars().count() > max || text.lines().count() > 1 {
        format!("{}…", line.chars().take(max).collect::<String>())
    } else {
        line.to_owned()
    }
}

/// A timestamp without its fraction of a second.
pub fn time(value: &Value, field: &str) -> String {
    match value[field].as_str() {
        Some(t) => t
            .split_once('.')
            .map(|(seconds, _)| format!("{seconds}Z"))
            .unwrap_or_else(|| t.to_owned())
            .replace('T', " "),
        None => "-".to_owned(),
    }
}

pub const AGENTS: &[Column] = &[
    ("ID", |v| cell(v, "id")),
    ("NAME", |v| cell(v, "name")),
    ("ROLE", |v| cell(v, "role")),
    ("PROVIDER", |v| cell(v, "provider")),
    ("MODEL", |v| cell(v, "model")),
    ("SKILLS", |v| cell(v, "skills")),
];

pub const WORKFLOWS: &[Column] = &[
    ("ID", |v| cell(v, "id")),
    ("NAME", |v| cell(v, "name")),
    ("TYPE", |v| cell(v, "workflowType")),
    ("STATUS", |v| cell(v, "status")),
    ("STEPS", |v| cell(v, "totalSteps")),
    ("RUNS", |v| cell(v, "executionCount")),
    ("CREATED", |v| time(v, "createdAt")),
];

pub const EXECUTIONS: &[Column] = &[
    ("ID", |v| cell(v, "id")),
    ("WORKFLOW", |v| cell(v, "workflowName")),
    ("#", |v| cell(v, "executionNumber")),
    ("STATUS", |v| cell(v, "status")),
    ("STARTED", |v| time(v, "startedAt")),
    ("DURATION", |v| match v["actualDuration"].as_i64() {
        Some(seconds) => format!("{seconds} s"),
        None => "-".to_owned(),
    }),
    // Why the run ended otherwise than completed: a failure's error or a cancel's reason.
    ("REASON", |v| {
        v["errorMessage"]
            .as_str()
            .map(|e| short(e, 60))
            .unwrap_or_else(|| "-".to_owned())
    }),
];

pub const ESCALATIONS: &[Column] = &[
    ("ID", |v| cell(v, "id")),
    ("KIND", |v| cell(v, "kind")),
    ("STATUS", |v| cell(v, "status")),
    ("STEP", |v| cell(v, "stepId")),
    ("EXECUTION", |v| cell(v, "executionId")),
    ("REASON", |v| short(v["reason"].as_str().unwrap_or("-"), 60)),
    ("CREATED", |v| time(v, "createdAt")),
    // What a person decided, once one did.
    ("ACTION", |v| cell(v, "action")),
    ("RESOLVED BY", |v| cell(v, "resolvedBy")),
];

pub const TEMPLATES: &[Column] = &[
    ("ID", |v| cell(v, "id")),
    ("NAME", |v| cell(v, "name")),
    ("CATEGORY", |v| cell(v, "category")),
    ("ROLES", |v| cell(v, "requiredAgentRoles")),
    ("WORKFLOWS", |v| cell(v, "workflowCount")),
    ("RUNS", |v| cell(v, "usageCount")),
    ("SUCCESS", success_rate),
];

/// A template's share of ended runs that completed; "-" while none has ended (the API's 0 is
/// no rate yet).
pub fn success_rate(template: &Value) -> String {
    if template["endedRuns"].as_u64().unwrap_or(0) == 0 {
        return "-".to_owned();
    }
    format!("{} %", cell(template, "successRate"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_template_with_no_ended_run_has_no_success_rate_yet() {
        let none = serde_json::json!({"endedRuns": 0, "successRate": 0.0});
        assert_eq!(success_rate(&none), "-");
        let some = serde_json::json!({"endedRuns": 4, "successRate": 75.0});
        assert_eq!(success_rate(&some), "75.0 %");
    }
}
