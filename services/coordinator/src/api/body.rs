//! The JSON body extractor: strict about what it accepts, precise about what it refuses.
//! A field it does not know (a typo such as `dependOn`) is an error, not silently ignored; an
//! object is never filled from an array; and every error carries the JSON pointer of the
//! field at fault with a message in the API's own terms (an object, a list, a UUID, the
//! allowed values), never the Rust type names serde speaks in.

use std::fmt;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::header;
use serde::de::{
    self, DeserializeOwned, DeserializeSeed, Deserializer, EnumAccess, IgnoredAny, MapAccess,
    SeqAccess, Unexpected, VariantAccess, Visitor,
};

use cadre_proto::shape::{self, UNKNOWN_FIELD, escape, one_of, pointer_of, pointer_of_ignored};

use super::problem::Problem;
use crate::domain::validation::FieldError;

pub struct Body<T>(pub T);

/// A body that may be left empty; when present it must be JSON, with the same answers as
/// [`Body`] for a wrong type or an oversized body.
pub struct OptionalBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for OptionalBody {
    type Rejection = Problem;

    async fn from_request(request: Request, state: &S) -> Result<Self, Problem> {
        let is_json = json_content(&request);
        let bytes = Bytes::from_request(request, state).await?;
        if !bytes.iter().all(u8::is_ascii_whitespace) && !is_json {
            return Err(Problem::unsupported_media_type());
        }
        Ok(Self(bytes))
    }
}

fn json_content(request: &Request) -> bool {
    request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| {
            let mime = mime.trim();
            mime == "application/json" || mime.ends_with("+json")
        })
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = Problem;

    async fn from_request(request: Request, state: &S) -> Result<Self, Problem> {
        if !json_content(&request) {
            return Err(Problem::unsupported_media_type());
        }
        let bytes = Bytes::from_request(request, state).await?;
        parse(&bytes).map(Body)
    }
}

const NUL_REFUSED: &str =
    "text must not contain the NUL character (U+0000): the read models (Postgres) cannot store it";

/// The pointer of the first string (or key) of `value`, at `pointer`, that holds a NUL.
fn nul_at(value: &serde_json::Value, pointer: String) -> Option<String> {
    use serde_json::Value;
    match value {
        Value::String(text) => text.contains('\0').then_some(pointer),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, item)| nul_at(item, format!("{pointer}/{i}"))),
        Value::Object(fields) => fields.iter().find_map(|(key, field)| {
            let at = format!("{pointer}/{}", escape(key));
            if key.contains('\0') {
                Some(at)
            } else {
                nul_at(field, at)
            }
        }),
        Value::Null | Value::Bool(_) | Value::Number(_) => None,
    }
}

/// The problem of a body serde_json cannot read as JSON, at the line and column it names.
fn not_json(error: &serde_json::Error) -> Problem {
    // JSON itself sets no range on numbers; this server reads them as 64-bit floats at most.
    Problem::bad_request(if error.to_string().starts_with("number out of range") {
        format!(
            "the body has a number too large for a 64-bit float (about 1.8e308 at most) at \
             line {} column {}",
            error.line(),
            error.column()
        )
    } else {
        format!("the body is not valid JSON: {error}")
    })
}

/// Parses `bytes` as `T`, refusing unknown fields.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    // Syntax first, on its own: serde_json reports a number where an enum belongs as a syntax
    // error ("expected value"), so only once the document is known to be JSON does every error
    // of the typed pass below mean "wrong shape".
    if let Err(error) = serde_json::from_slice::<IgnoredAny>(bytes) {
        return Err(not_json(&error));
    }
    // JSON carries a NUL only escaped; most bodies are spared the second look.
    if bytes.windows(6).any(|window| window == br"\u0000")
        && let Ok(document) = serde_json::from_slice::<serde_json::Value>(bytes)
        && let Some(pointer) = nul_at(&document, String::new())
    {
        return Err(Problem::invalid(
            format!("the body has a NUL character (U+0000) at '{pointer}': {NUL_REFUSED}"),
            vec![FieldError {
                pointer,
                message: NUL_REFUSED.into(),
            }],
        ));
    }
    let mut unknown = Vec::new();
    let mut json = serde_json::Deserializer::from_slice(bytes);
    let mut record_unknown =
        |path: serde_ignored::Path<'_>| unknown.push(pointer_of_ignored(&path));
    let parsed: Result<T, _> = serde_path_to_error::deserialize(serde_ignored::Deserializer::new(
        Strict(&mut json),
        &mut record_unknown,
    ));
    let value = match parsed {
        Ok(value) => value,
        Err(error) => {
            let inner = error.inner();
            if inner.is_syntax() || inner.is_eof() {
                // Only what the syntax pass lets through, such as invalid UTF-8 in a string or
                // a number out of range.
                return Err(not_json(inner));
            }
            let (pointer, message) = shape::explain(pointer_of(error.path()), &inner.to_string());
            let field = FieldError { pointer, message };
            let detail = match field.message.strip_prefix("expected an object, got ") {
                Some(got) if field.pointer.is_empty() => {
                    format!("the body must be a JSON object, got {got}")
                }
                _ => format!(
                    "the body does not have the expected shape at '{}': {}",
                    field.pointer, field.message
                ),
            };
            return Err(Problem::invalid(detail, vec![field]));
        }
    };
    if !unknown.is_empty() {
        let errors: Vec<FieldError> = unknown
            .into_iter()
            .map(|pointer| FieldError {
                pointer,
                message: UNKNOWN_FIELD.into(),
            })
            .collect();
        return Err(Problem::invalid(
            format!(
                "the body has fields this API does not know: {}",
                errors
                    .iter()
                    .map(|e| e.pointer.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            errors,
        ));
    }
    Ok(value)
}

// ----- the strict layer -----

/// Passes every call through to serde_json with two changes, at any depth. A struct is read
/// only from an object: serde_json would also fill one from an array, field by field in
/// declaration order, so `[]` passed for a body whose fields all have defaults and
/// `[0.3, 1200]` for `modelParameters`. And an enum given something other than a name is told
/// the allowed names, where serde_json reports a syntax error.
struct Strict<D>(D);

/// Wraps what serde_json hands back to serde (visitors, seeds, accessors) so that the values
/// nested inside are read through [`Strict`] as well.
struct StrictVisitor<V> {
    inner: V,
    /// Refuse an array: the visitor builds a struct.
    object_only: bool,
}

struct StrictSeed<S>(S);

struct StrictAccess<A>(A);

impl<V> StrictVisitor<V> {
    fn any(inner: V) -> Self {
        Self {
            inner,
            object_only: false,
        }
    }

    fn object(inner: V) -> Self {
        Self {
            inner,
            object_only: true,
        }
    }
}

macro_rules! forward_deserialize {
    ($($method:ident)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
            self.0.$method(StrictVisitor::any(visitor))
        }
    )*};
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Strict<D> {
    type Error = D::Error;

    forward_deserialize! {
        deserialize_any deserialize_bool deserialize_i8 deserialize_i16 deserialize_i32
        deserialize_i64 deserialize_i128 deserialize_u8 deserialize_u16 deserialize_u32
        deserialize_u64 deserialize_u128 deserialize_f32 deserialize_f64 deserialize_char
        deserialize_str deserialize_string deserialize_bytes deserialize_byte_buf
        deserialize_option deserialize_unit deserialize_seq deserialize_map
        deserialize_identifier deserialize_ignored_any
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0
            .deserialize_unit_struct(name, StrictVisitor::any(visitor))
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0
            .deserialize_newtype_struct(name, StrictVisitor::any(visitor))
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_tuple(len, StrictVisitor::any(visitor))
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0
            .deserialize_tuple_struct(name, len, StrictVisitor::any(visitor))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0
            .deserialize_struct(name, fields, StrictVisitor::object(visitor))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0
            .deserialize_enum(name, variants, StrictVisitor::any(visitor))
            .map_err(|error| {
                // The document is valid JSON (checked first), so this is a wrong type.
                if error.to_string().starts_with("expected value") {
                    de::Error::custom(one_of(variants))
                } else {
                    error
                }
            })
    }

    fn is_human_readable(&self) -> bool {
        self.0.is_human_readable()
    }
}

macro_rules! forward_visit {
    ($($method:ident: $ty:ty)*) => {$(
        fn $method<E: de::Error>(self, value: $ty) -> Result<V::Value, E> {
            self.inner.$method(value)
        }
    )*};
}

impl<'de, V: Visitor<'de>> Visitor<'de> for StrictVisitor<V> {
    type Value = V::Value;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.expecting(formatter)
    }

    forward_visit! {
        visit_bool: bool visit_i8: i8 visit_i16: i16 visit_i32: i32 visit_i64: i64
        visit_i128: i128 visit_u8: u8 visit_u16: u16 visit_u32: u32 visit_u64: u64
        visit_u128: u128 visit_f32: f32 visit_f64: f64 visit_char: char visit_str: &str
        visit_borrowed_str: &'de str visit_string: String visit_bytes: &[u8]
        visit_borrowed_bytes: &'de [u8] visit_byte_buf: Vec<u8>
    }

    fn visit_none<E: de::Error>(self) -> Result<V::Value, E> {
        self.inner.visit_none()
    }

    fn visit_unit<E: de::Error>(self) -> Result<V::Value, E> {
        self.inner.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<V::Value, D::Error> {
        self.inner.visit_some(Strict(deserializer))
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<V::Value, D::Error> {
        self.inner.visit_newtype_struct(Strict(deserializer))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<V::Value, A::Error> {
        if self.object_only {
            return Err(de::Error::invalid_type(Unexpected::Seq, &self));
        }
        self.inner.visit_seq(StrictAccess(seq))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        self.inner.visit_map(StrictAccess(map))
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<V::Value, A::Error> {
        self.inner.visit_enum(StrictAccess(data))
    }
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for StrictSeed<S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<S::Value, D::Error> {
        self.0.deserialize(Strict(deserializer))
    }
}

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for StrictAccess<A> {
    type Error = A::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, A::Error> {
        self.0.next_element_seed(StrictSeed(seed))
    }

    fn size_hint(&self) -> Option<usize> {
        self.0.size_hint()
    }
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for StrictAccess<A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        self.0.next_key_seed(StrictSeed(seed))
    }

    fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value, A::Error> {
        self.0.next_value_seed(StrictSeed(seed))
    }

    fn size_hint(&self) -> Option<usize> {
        self.0.size_hint()
    }
}

impl<'de, A: EnumAccess<'de>> EnumAccess<'de> for StrictAccess<A> {
    type Error = A::Error;
    type Variant = StrictAccess<A::Variant>;

    fn variant_seed<T: DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<(T::Value, Self::Variant), A::Error> {
        self.0
            .variant_seed(StrictSeed(seed))
            .map(|(value, variant)| (value, StrictAccess(variant)))
    }
}

impl<'de, A: VariantAccess<'de>> VariantAccess<'de> for StrictAccess<A> {
    type Error = A::Error;

    fn unit_variant(self) -> Result<(), A::Error> {
        self.0.unit_variant()
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, A::Error> {
        self.0.newtype_variant_seed(StrictSeed(seed))
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, A::Error> {
        self.0.tuple_variant(len, StrictVisitor::any(visitor))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, A::Error> {
        self.0
            .struct_variant(fields, StrictVisitor::object(visitor))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::agents::RegisterAgent;
    use crate::api::executions::StartRequest as StartExecution;
    use crate::api::workflows::CreateWorkflow;
    use cadre_proto::model::WorkflowConfiguration;
    use serde_json::{Value, json};

    /// The request types are not `Debug`, so `unwrap_err` is not for them.
    fn refused<T: DeserializeOwned>(bytes: &[u8]) -> Problem {
        match parse::<T>(bytes) {
            Ok(_) => panic!("{} was accepted", String::from_utf8_lossy(bytes)),
            Err(problem) => problem,
        }
    }

    fn refusal<T: DeserializeOwned>(body: &Value) -> Problem {
        refused::<T>(body.to_string().as_bytes())
    }

    /// The one field error, as (pointer, message).
    fn field<T: DeserializeOwned>(body: &Value) -> (String, String) {
        let problem = refusal::<T>(body);
        assert_eq!(problem.status, 422, "{}", problem.detail);
        assert_eq!(problem.errors.len(), 1, "{:?}", problem.errors);
        let error = &problem.errors[0];
        assert!(
            problem.detail.contains(&error.message) || error.pointer.is_empty(),
            "{}",
            problem.detail
        );
        (error.pointer.clone(), error.message.clone())
    }

    #[test]
    fn a_nul_character_anywhere_is_refused_at_its_field() {
        let at = |body: Value| field::<RegisterAgent>(&body).0;
        assert_eq!(at(with(agent(), "/name", json!("Zoë \u{0} null"))), "/name");
        assert_eq!(
            at(with(agent(), "/skills", json!(["ok", "b\u{0}d"]))),
            "/skills/1"
        );
        let problem = refusal::<CreateWorkflow>(&with(
            workflow(),
            "/configuration/steps/0/instructions",
            json!("do\u{0}this"),
        ));
        assert_eq!(problem.status, 422);
        assert_eq!(
            problem.errors[0].pointer,
            "/configuration/steps/0/instructions"
        );
        // A key too, escaped as a pointer; and a backslash followed by "u0000" is no NUL.
        let problem = refusal::<CreateWorkflow>(&with(workflow(), "/a~b\u{0}", json!(1)));
        assert_eq!(problem.errors[0].pointer, "/a~0b\u{0}");
        assert!(
            parse::<RegisterAgent>(
                with(agent(), "/backstory", json!("C:\\u0000"))
                    .to_string()
                    .as_bytes()
            )
            .is_ok()
        );
    }

    fn agent() -> Value {
        json!({"name": "Ada", "role": "analyst", "backstory": "b", "skills": ["research"],
               "provider": "offline", "model": "m", "modelParameters": {"temperature": 0.3}})
    }

    fn step() -> Value {
        json!({"id": "a", "name": "A", "description": "", "type": "analysis",
               "instructions": "i", "expectedOutput": "o"})
    }

    fn workflow() -> Value {
        json!({"name": "W", "description": "d",
               "participatingAgents": ["0196b4a2-7e0c-7d21-9f3a-2b5c8d1e4f60"],
               "configuration": {"steps": [step()], "coordination": {}, "constraints": {}}})
    }

    /// `value` with `replacement` at `pointer`, added if absent.
    fn with(mut value: Value, pointer: &str, replacement: Value) -> Value {
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        match value.pointer_mut(parent).unwrap() {
            Value::Object(object) => {
                object.insert(key.to_owned(), replacement);
            }
            Value::Array(array) => array[key.parse::<usize>().unwrap()] = replacement,
            other => panic!("{other} has no {key}"),
        }
        value
    }

    fn without(mut value: Value, pointer: &str) -> Value {
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        value
            .pointer_mut(parent)
            .unwrap()
            .as_object_mut()
            .unwrap()
            .remove(key);
        value
    }

    #[test]
    fn the_valid_bodies_are_accepted() {
        parse::<RegisterAgent>(agent().to_string().as_bytes()).unwrap();
        parse::<CreateWorkflow>(workflow().to_string().as_bytes()).unwrap();
        parse::<StartExecution>(b"{}").unwrap();
        parse::<StartExecution>(br#"{"triggerReason":"event","triggeredBy":"ci"}"#).unwrap();
    }

    #[test]
    fn a_missing_field_points_at_the_field_itself() {
        let expected = ("/role".to_owned(), "this field is required".to_owned());
        assert_eq!(field::<RegisterAgent>(&without(agent(), "/role")), expected);
        assert_eq!(
            field::<CreateWorkflow>(&without(workflow(), "/configuration/steps/0/name")),
            (
                "/configuration/steps/0/name".to_owned(),
                "this field is required".to_owned()
            )
        );
        assert_eq!(
            field::<WorkflowConfiguration>(&json!({"steps": [{"id": "a"}]})).0,
            "/steps/0/name"
        );
        assert_eq!(
            field::<CreateWorkflow>(&without(workflow(), "/configuration")).0,
            "/configuration"
        );
        let problem = refusal::<RegisterAgent>(&without(agent(), "/role"));
        assert_eq!(
            problem.detail,
            "the body does not have the expected shape at '/role': this field is required"
        );
    }

    #[test]
    fn a_duplicate_field_points_at_the_field() {
        let body = br#"{"name":"Ada","name":"Bo","role":"r","provider":"p","model":"m"}"#;
        let problem = refused::<RegisterAgent>(body);
        assert_eq!(problem.errors[0].pointer, "/name");
        assert_eq!(
            problem.errors[0].message,
            "this field appears more than once; give it once"
        );
    }

    #[test]
    fn wrong_types_and_values_are_described_in_json_terms() {
        let cases: Vec<(Value, &str, &str)> = vec![
            (
                with(agent(), "/skills", json!("rust")),
                "/skills",
                "expected a list, got the string \"rust\"",
            ),
            (
                with(agent(), "/skills", json!({})),
                "/skills",
                "expected a list, got an object",
            ),
            (
                with(agent(), "/skills", json!([1])),
                "/skills/0",
                "expected a string, got 1",
            ),
            (
                with(agent(), "/name", json!(null)),
                "/name",
                "expected a string, got null",
            ),
            (
                with(agent(), "/modelParameters/maxTokens", json!(-1)),
                "/modelParameters/maxTokens",
                "expected a whole number from 0 to 4294967295, got -1",
            ),
            (
                with(agent(), "/modelParameters/maxTokens", json!(1.5)),
                "/modelParameters/maxTokens",
                "expected a whole number from 0 to 4294967295, got 1.5",
            ),
            (
                with(agent(), "/modelParameters/temperature", json!("hot")),
                "/modelParameters/temperature",
                "expected a number, got the string \"hot\"",
            ),
            (
                with(agent(), "/modelParameters", json!([0.3, 1200])),
                "/modelParameters",
                "expected an object, got a list",
            ),
            (
                with(workflow(), "/configuration/steps", json!(7)),
                "/configuration/steps",
                "expected a list, got 7",
            ),
            (
                with(workflow(), "/configuration/steps/0", json!(["a", "A"])),
                "/configuration/steps/0",
                "expected an object, got a list",
            ),
            (
                with(
                    workflow(),
                    "/configuration/steps/0/canRunInParallel",
                    json!("yes"),
                ),
                "/configuration/steps/0/canRunInParallel",
                "expected true or false, got the string \"yes\"",
            ),
            (
                with(workflow(), "/participatingAgents/0", json!("nope")),
                "/participatingAgents/0",
                "expected a UUID such as 0196b4a2-7e0c-7d21-9f3a-2b5c8d1e4f60",
            ),
            (
                with(workflow(), "/participatingAgents/0", json!(7)),
                "/participatingAgents/0",
                "expected a UUID such as 0196b4a2-7e0c-7d21-9f3a-2b5c8d1e4f60, got 7",
            ),
            (
                with(
                    workflow(),
                    "/configuration/constraints",
                    json!({"maxRetries": 99999999999u64}),
                ),
                "/configuration/constraints/maxRetries",
                "expected a whole number from 0 to 4294967295, got 99999999999",
            ),
            (
                with(workflow(), "/configuration/steps/0/id", json!("step one")),
                "/configuration/steps/0/id",
                "a step id must be 1 to 64 characters of letters, digits, '-' or '_' \
                 (got \"step one\")",
            ),
        ];
        for (body, pointer, message) in cases {
            let (at, said) = if body.get("participatingAgents").is_some() {
                field::<CreateWorkflow>(&body)
            } else {
                field::<RegisterAgent>(&body)
            };
            assert_eq!((at.as_str(), said.as_str()), (pointer, message), "{body}");
        }
    }

    #[test]
    fn an_unknown_or_mistyped_name_lists_the_allowed_names() {
        let (at, said) = field::<CreateWorkflow>(&with(
            workflow(),
            "/configuration/steps/0/type",
            json!("dancing"),
        ));
        assert_eq!(at, "/configuration/steps/0/type");
        assert_eq!(
            said,
            "must be one of: analysis, implementation, review, testing, documentation, \
             coordination, decision, approval; got \"dancing\""
        );
        // serde_json calls a number where a name belongs a syntax error; it is a wrong type.
        let (at, said) = field::<CreateWorkflow>(&with(workflow(), "/workflowType", json!(7)));
        assert_eq!(at, "/workflowType");
        assert_eq!(
            said,
            "must be one of: pipeline, parallel, conditional, recursive"
        );
        let (at, said) = field::<StartExecution>(&json!({"triggerReason": null}));
        assert_eq!(at, "/triggerReason");
        assert_eq!(said, "must be one of: manual, scheduled, event, dependency");
    }

    #[test]
    fn a_body_that_is_not_an_object_is_refused_whatever_it_is() {
        for (body, got) in [
            ("null", "null"),
            ("[]", "a list"),
            ("[1]", "a list"),
            (r#"["manual"]"#, "a list"),
            (r#""manual""#, "the string \"manual\""),
            ("7", "7"),
            ("true", "true"),
        ] {
            let problem = refused::<StartExecution>(body.as_bytes());
            assert_eq!(problem.status, 422, "{body}");
            assert_eq!(
                problem.detail,
                format!("the body must be a JSON object, got {got}")
            );
            assert_eq!(problem.errors[0].pointer, "", "{body}");
            // The same for every request type.
            let problem = refused::<RegisterAgent>(body.as_bytes());
            assert_eq!(problem.status, 422, "{body}");
            let problem = refused::<CreateWorkflow>(body.as_bytes());
            assert_eq!(problem.status, 422, "{body}");
        }
    }

    #[test]
    fn unknown_fields_and_bad_syntax_keep_their_own_answers() {
        let typo = refusal::<WorkflowConfiguration>(&json!({"steps": [
            {"id": "a", "name": "A", "description": "", "type": "analysis",
             "instructions": "i", "expectedOutput": "o", "dependOn": []}
        ]}));
        assert_eq!(typo.errors[0].pointer, "/steps/0/dependOn");
        assert_eq!(typo.errors[0].message, UNKNOWN_FIELD);
        // Inside an optional object, and under a key that holds a dot.
        let nested = refusal::<WorkflowConfiguration>(&json!({"steps": [],
            "constraints": {"retryBackoff": {"initialSeconds": 1, "maxSecs": 2}},
            "a.b": 1}));
        let pointers: Vec<&str> = nested.errors.iter().map(|e| e.pointer.as_str()).collect();
        assert!(
            pointers.contains(&"/constraints/retryBackoff/maxSecs") && pointers.contains(&"/a.b"),
            "{pointers:?}"
        );

        for body in [&b"{\"steps\":"[..], b"{} {}", b"{\"a\":1,}", b"nul"] {
            let problem = refused::<WorkflowConfiguration>(body);
            assert_eq!(problem.status, 400, "{}", String::from_utf8_lossy(body));
            assert!(problem.detail.starts_with("the body is not valid JSON"));
        }
        for body in [
            &b"{\"steps\": 1e309}"[..],
            b"{\"steps\": [], \"phases\": -1e400}",
        ] {
            let problem = refused::<WorkflowConfiguration>(body);
            assert_eq!(problem.status, 400, "{}", String::from_utf8_lossy(body));
            assert!(
                problem
                    .detail
                    .starts_with("the body has a number too large")
                    && problem.detail.contains("line 1 column"),
                "{}",
                problem.detail
            );
        }
    }

    #[test]
    fn a_field_a_strict_body_refuses_is_named_once() {
        // `deny_unknown_fields` refuses the field as its key is read: the path names it.
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Strictly {
            url: String,
            inner: Option<Box<Strictly>>,
        }
        let cases = [
            (json!({"url": "u", "secret": "s"}), "/secret"),
            (
                json!({"url": "u", "inner": {"url": "v", "url2": 1}}),
                "/inner/url2",
            ),
        ];
        for (body, pointer) in cases {
            assert_eq!(
                field::<Strictly>(&body),
                (pointer.to_owned(), UNKNOWN_FIELD.to_owned())
            );
        }
    }

    /// Words that name Rust types or serde's vocabulary rather than JSON's.
    const RUST_WORDS: [&str; 22] = [
        "struct",
        "enum",
        "variant",
        "identifier",
        "sequence",
        "map",
        "tuple",
        "Option",
        "u8",
        "u32",
        "u64",
        "i64",
        "f32",
        "f64",
        "Uuid",
        "StepId",
        "AgentId",
        "RegisterAgent",
        "CreateWorkflow",
        "StartExecution",
        "WorkflowStep",
        "line",
    ];

    fn assert_plain(problem: &Problem, body: &Value) {
        let texts = std::iter::once(problem.detail.as_str())
            .chain(problem.errors.iter().map(|e| e.message.as_str()));
        for text in texts {
            let words: Vec<&str> = text
                .split(|c: char| !c.is_ascii_alphanumeric())
                .filter(|w| !w.is_empty())
                .collect();
            for rust in RUST_WORDS {
                assert!(
                    !words.contains(&rust),
                    "{text:?} says {rust:?} (for {body})"
                );
            }
            assert!(!text.contains('`'), "{text:?} (for {body})");
        }
    }

    #[test]
    fn no_message_names_a_rust_type() {
        let shapes = [
            json!(null),
            json!([]),
            json!([1, 2]),
            json!("x"),
            json!(7),
            json!(1.5),
            json!(-1),
            json!(true),
            json!({}),
            json!({"a": 1}),
            json!("not-a-uuid"),
        ];
        let agent_pointers = [
            "/name",
            "/role",
            "/backstory",
            "/skills",
            "/provider",
            "/model",
            "/modelParameters",
            "/modelParameters/temperature",
            "/modelParameters/maxTokens",
        ];
        let workflow_pointers = [
            "/name",
            "/description",
            "/workflowType",
            "/participatingAgents",
            "/participatingAgents/0",
            "/configuration",
            "/configuration/steps",
            "/configuration/steps/0",
            "/configuration/steps/0/id",
            "/configuration/steps/0/type",
            "/configuration/steps/0/dependsOn",
            "/configuration/steps/0/timeoutMinutes",
            "/configuration/steps/0/canRunInParallel",
            "/configuration/coordination",
            "/configuration/coordination/decisionMaking",
            "/configuration/constraints",
            "/configuration/constraints/maxRetries",
        ];
        let mut checked = 0;
        for shape in &shapes {
            for body in [
                shape.clone(),
                json!({"triggeredBy": shape}),
                json!({"triggerReason": shape}),
            ] {
                if let Err(problem) = parse::<StartExecution>(body.to_string().as_bytes()) {
                    assert_plain(&problem, &body);
                    checked += 1;
                }
            }
            if let Err(problem) = parse::<RegisterAgent>(shape.to_string().as_bytes()) {
                assert_plain(&problem, shape);
                checked += 1;
            }
            for pointer in agent_pointers {
                let body = with(agent(), pointer, shape.clone());
                if let Err(problem) = parse::<RegisterAgent>(body.to_string().as_bytes()) {
                    assert_plain(&problem, &body);
                    checked += 1;
                }
                let body = without(agent(), pointer);
                if let Err(problem) = parse::<RegisterAgent>(body.to_string().as_bytes()) {
                    assert_plain(&problem, &body);
                    checked += 1;
                }
            }
            for pointer in workflow_pointers {
                let body = with(workflow(), pointer, shape.clone());
                if let Err(problem) = parse::<CreateWorkflow>(body.to_string().as_bytes()) {
                    assert_plain(&problem, &body);
                    checked += 1;
                }
            }
        }
        assert!(checked > 250, "only {checked} refusals checked");
    }
}
