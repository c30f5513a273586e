//! The JSON body extractor: strict about what it accepts, precise about what it refuses.
//! A field it does not know (a typo such as `dependOn`) is an error, not silently ignored,
//! and every error carries the JSON pointer of the field at fault.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::header;
use serde::de::DeserializeOwned;

use super::problem::Problem;
use crate::domain::validation::FieldError;

pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = Problem;

    async fn from_request(request: Request, state: &S) -> Result<Self, Problem> {
        let is_json = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|mime| {
                let mime = mime.trim();
                mime == "application/json" || mime.ends_with("+json")
            });
        if !is_json {
            return Err(Problem::unsupported_media_type());
        }
        let bytes = Bytes::from_request(request, state).await?;
        parse(&bytes).map(Body)
    }
}

/// Parses `bytes` as `T`, refusing unknown fields.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    let mut unknown = Vec::new();
    let mut json = serde_json::Deserializer::from_slice(bytes);
    let mut record_unknown =
        |path: serde_ignored::Path<'_>| unknown.push(pointer_of_ignored(&path.to_string()));
    let parsed: Result<T, _> = serde_path_to_error::deserialize(serde_ignored::Deserializer::new(
        &mut json,
        &mut record_unknown,
    ));
    let value = match parsed {
        Ok(value) => value,
        Err(error) => {
            let inner = error.inner();
            if inner.is_syntax() || inner.is_eof() {
                return Err(Problem::bad_request(format!(
                    "the body is not valid JSON: {inner}"
                )));
            }
            let pointer = pointer_of(error.path());
            return Err(Problem::invalid(
                format!("the body does not have the expected shape at '{pointer}': {inner}"),
                vec![FieldError {
                    pointer,
                    message: inner.to_string(),
                }],
            ));
        }
    };
    if json.end().is_err() {
        return Err(Problem::bad_request(
            "the body is not valid JSON: trailing characters after the document",
        ));
    }
    if !unknown.is_empty() {
        let errors: Vec<FieldError> = unknown
            .into_iter()
            .map(|pointer| FieldError {
                pointer,
                message: "unknown field; check its spelling against the API reference".into(),
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

fn pointer_of(path: &serde_path_to_error::Path) -> String {
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
    if pointer.is_empty() {
        "/".into()
    } else {
        pointer
    }
}

/// serde_ignored writes paths as `a.b.0.c`.
fn pointer_of_ignored(path: &str) -> String {
    format!(
        "/{}",
        path.split('.').map(escape).collect::<Vec<_>>().join("/")
    )
}

fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests {
    use super::*;
    use cadre_proto::model::WorkflowConfiguration;

    #[test]
    fn errors_point_at_the_field() {
        let missing = parse::<WorkflowConfiguration>(br#"{"steps":[{"id":"a"}]}"#).unwrap_err();
        assert_eq!(missing.status, 422);
        assert_eq!(missing.errors[0].pointer, "/steps/0");
        assert!(
            missing.detail.contains("missing field `name`"),
            "{}",
            missing.detail
        );

        let typo = parse::<WorkflowConfiguration>(
            br#"{"steps":[{"id":"a","name":"A","description":"","type":"analysis","instructions":"i","expectedOutput":"o","dependOn":[]}]}"#,
        )
        .unwrap_err();
        assert_eq!(typo.errors[0].pointer, "/steps/0/dependOn");

        let wrong_type = parse::<WorkflowConfiguration>(br#"{"steps":7}"#).unwrap_err();
        assert_eq!(wrong_type.errors[0].pointer, "/steps");
        assert!(wrong_type.detail.contains("invalid type"));

        let syntax = parse::<WorkflowConfiguration>(br#"{"steps":"#).unwrap_err();
        assert_eq!(syntax.status, 400);
    }
}
