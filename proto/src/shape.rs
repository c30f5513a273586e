//! How a document that does not have the contract's shape is explained: serde's messages, and
//! the path a deserializer took to them, in words a person who wrote the JSON (or the YAML the
//! CLI turns into it) can act on, at the RFC 6901 pointer of the field. The API answers a
//! request body with them; the CLI says them of a file before it sends anything.

/// What an unknown field is told.
pub const UNKNOWN_FIELD: &str = "unknown field; check its spelling against the API reference";

/// The RFC 6901 pointer of a path; the whole document is the empty pointer.
pub fn pointer_of(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut pointer = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => pointer.push_str(&format!("/{index}")),
            Segment::Map { key } => pointer.push_str(&format!("/{}", escape(key))),
            Segment::Enum { variant } => pointer.push_str(&format!("/{}", escape(variant))),
            Segment::Unknown => pointer.push_str("/?"),
        }
    }
    pointer
}

/// The RFC 6901 pointer of a field serde_ignored reports. Built from the path itself, not its
/// `a.b.0.c` text: that text writes an optional value as `?` and cannot tell a key holding a
/// dot from two keys.
pub fn pointer_of_ignored(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}/{index}", pointer_of_ignored(parent)),
        Path::Map { parent, key } => format!("{}/{}", pointer_of_ignored(parent), escape(key)),
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => pointer_of_ignored(parent),
    }
}

pub fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// Rewrites one of serde's messages (`raw`, about the value at `pointer`) for the person who
/// wrote the document; returns the field's pointer and the message. serde's categories: invalid type, invalid value, invalid length, unknown
/// variant, unknown field, missing field, duplicate field, and custom messages (ours, or a
/// type's such as the UUID parser's). A missing or duplicate field's message about a struct
/// names the field, but serde reports it at the struct's path: the field is appended to the
/// pointer.
pub fn explain(mut pointer: String, raw: &str) -> (String, String) {
    let message = without_position(raw);
    let text = if let Some(field) = quoted_after(message, "missing field `") {
        pointer.push_str(&format!("/{}", escape(field)));
        "this field is required".to_owned()
    } else if let Some(field) = quoted_after(message, "duplicate field `") {
        pointer.push_str(&format!("/{}", escape(field)));
        "this field appears more than once; give it once".to_owned()
    } else if message.starts_with("unknown field `") {
        // Refused while its key is read (`deny_unknown_fields`): the path names it already.
        UNKNOWN_FIELD.to_owned()
    } else if let Some(rest) = message.strip_prefix("unknown variant `") {
        // "unknown variant `x`, expected one of `a`, `b`" (or "expected `a` or `b`").
        let (got, allowed) = rest
            .rsplit_once("`, expected ")
            .or_else(|| rest.rsplit_once("`, there are no variants"))
            .unwrap_or((rest, ""));
        format!("{}; got {}", one_of(&backquoted(allowed)), quote(got))
    } else if let Some(rest) = message
        .strip_prefix("invalid type: ")
        .or_else(|| message.strip_prefix("invalid value: "))
    {
        // The unexpected value comes first and may itself contain ", expected ".
        let (got, expected) = rest.rsplit_once(", expected ").unwrap_or((rest, ""));
        format!(
            "expected {}, got {}",
            expected_kind(expected),
            got_kind(got)
        )
    } else if let Some(rest) = message.strip_prefix("invalid length ") {
        let (len, expected) = rest.split_once(", expected ").unwrap_or((rest, ""));
        let items = if len == "1" { "item" } else { "items" };
        format!(
            "expected {}, got a list of {len} {items}",
            expected_kind(expected)
        )
    } else if message.starts_with("UUID parsing failed") {
        format!("expected {}", expected_kind("UUID"))
    } else {
        // A custom message: ours (`must be one of`) or a type's own, such as a step id's.
        message.to_owned()
    };
    (pointer, text)
}

/// serde_json appends " at line L column C"; the pointer says where, better.
fn without_position(message: &str) -> &str {
    match message.rsplit_once(" at line ") {
        Some((text, position))
            if position
                .split(" column ")
                .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())) =>
        {
            text
        }
        _ => message,
    }
}

/// The text between `prefix` and the next backquote.
fn quoted_after<'a>(message: &'a str, prefix: &str) -> Option<&'a str> {
    message.strip_prefix(prefix)?.split('`').next()
}

/// The backquoted names in "one of `a`, `b`" or "`a` or `b`".
fn backquoted(text: &str) -> Vec<&str> {
    text.split('`').skip(1).step_by(2).collect()
}

/// "must be one of: a, b" (or that nothing is allowed).
pub fn one_of(allowed: &[&str]) -> String {
    if allowed.is_empty() {
        "no value is allowed here".to_owned()
    } else {
        format!("must be one of: {}", allowed.join(", "))
    }
}

/// A value from the request, quoted, and cut short when long.
fn quote(value: &str) -> String {
    const MAX: usize = 40;
    if value.chars().count() <= MAX {
        format!("\"{value}\"")
    } else {
        format!("\"{}…\"", value.chars().take(MAX).collect::<String>())
    }
}

/// What serde's `expected ...` phrase means in JSON terms.
fn expected_kind(expected: &str) -> String {
    let whole_number = |max: u64| format!("a whole number from 0 to {max}");
    match expected {
        "a string" | "a borrowed string" | "string" => "a string".to_owned(),
        "a sequence" | "sequence" => "a list".to_owned(),
        "a boolean" | "bool" => "true or false".to_owned(),
        "a map" | "map" => "an object".to_owned(),
        "u8" => whole_number(u8::MAX.into()),
        "u16" => whole_number(u16::MAX.into()),
        "u32" => whole_number(u32::MAX.into()),
        "u64" | "usize" | "u128" => whole_number(u64::MAX),
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "a whole number".to_owned(),
        "f32" | "f64" => "a number".to_owned(),
        "a character" | "char" => "a single character".to_owned(),
        "unit" => "null".to_owned(),
        "option" => "a value or null".to_owned(),
        "variant identifier" | "field identifier" => "a name".to_owned(),
        _ if expected.contains("UUID") => {
            "a UUID such as 0196b4a2-7e0c-7d21-9f3a-2b5c8d1e4f60".to_owned()
        }
        _ if expected.starts_with("struct ") || expected.starts_with("struct variant ") => {
            "an object".to_owned()
        }
        _ if expected.starts_with("enum ") => "one of the allowed names".to_owned(),
        _ if expected.starts_with("a tuple of size ") => format!(
            "a list of {} items",
            expected.trim_start_matches("a tuple of size ")
        ),
        _ if expected.starts_with("tuple") => "a list".to_owned(),
        // A visitor's own words ("a step id"), unless they look like a Rust type.
        _ if looks_plain(expected) => expected.to_owned(),
        _ => "a value of another kind".to_owned(),
    }
}

fn looks_plain(phrase: &str) -> bool {
    (phrase.starts_with("a ") || phrase.starts_with("an "))
        && !phrase.contains("::")
        && !phrase.contains('`')
        && !phrase.contains('<')
        && !phrase.split(' ').skip(1).any(|word| {
            word.chars().next().is_some_and(char::is_uppercase) && word != "JSON" && word != "UUID"
        })
}

/// What serde's `Unexpected` display ("integer `7`", "string \"x\"", "sequence") was, in JSON
/// terms.
fn got_kind(unexpected: &str) -> String {
    if let Some(string) = unexpected.strip_prefix("string ") {
        // Debug-quoted by serde: keep it when short, else say only what it was.
        return if string.chars().count() <= 42 {
            format!("the string {string}")
        } else {
            "a long string".to_owned()
        };
    }
    for prefix in ["integer `", "floating point `", "boolean `", "character `"] {
        if let Some(value) = quoted_after(unexpected, prefix) {
            return if prefix == "character `" {
                format!("the string \"{value}\"")
            } else {
                value.to_owned()
            };
        }
    }
    match unexpected {
        "null" | "unit value" | "Option value" => "null".to_owned(),
        "sequence" => "a list".to_owned(),
        "map" => "an object".to_owned(),
        _ => "a value of another kind".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_messages_of_every_category_read_as_plain_words() {
        let cases = [
            (
                "invalid type: integer `7`, expected struct RegisterAgent at line 1 column 1",
                "expected an object, got 7",
            ),
            (
                "invalid value: integer `-1`, expected u32",
                "expected a whole number from 0 to 4294967295, got -1",
            ),
            (
                "invalid length 0, expected struct RegisterAgent with 7 elements",
                "expected an object, got a list of 0 items",
            ),
            (
                "invalid length 1, expected a tuple of size 2",
                "expected a list of 2 items, got a list of 1 item",
            ),
            (
                "unknown variant `x`, expected `a` or `b`",
                "must be one of: a, b; got \"x\"",
            ),
            (
                "unknown variant `x`, there are no variants",
                "no value is allowed here; got \"x\"",
            ),
            (
                "invalid type: string \", expected u32\", expected a sequence",
                "expected a list, got the string \", expected u32\"",
            ),
            (
                "invalid type: map, expected enum StepType",
                "expected one of the allowed names, got an object",
            ),
            (
                "invalid type: sequence, expected struct variant Kind::Thing",
                "expected an object, got a list",
            ),
            (
                "invalid type: null, expected HashMap<String, Vec<StepId>>",
                "expected a value of another kind, got null",
            ),
            ("missing field `name`", "this field is required"),
            (
                "duplicate field `name`",
                "this field appears more than once; give it once",
            ),
            ("unknown field `nmae`, expected `name`", UNKNOWN_FIELD),
        ];
        for (raw, plain) in cases {
            assert_eq!(explain(String::new(), raw).1, plain, "{raw}");
        }
    }
}
