//! The coordinator's HTTP API as the CLI uses it, and its RFC 9457 problems as a person reads
//! them.

use std::fmt;
use std::time::Duration;

use reqwest::StatusCode;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// One `errors[]` entry of a validation problem.
#[derive(Debug, Clone, Deserialize)]
pub struct FieldError {
    #[serde(default)]
    pub pointer: String,
    #[serde(default)]
    pub message: String,
}

/// An RFC 9457 problem the API answered with.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Problem {
    #[serde(default)]
    pub title: String,
    #[serde(default)]
    pub status: u16,
    #[serde(default)]
    pub detail: String,
    #[serde(default)]
    pub errors: Vec<FieldError>,
    #[serde(default)]
    pub current_status: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The API refused the request and said why.
    #[error("{}", show_problem(.method, .path, .problem))]
    Problem {
        method: &'static str,
        path: String,
        problem: Problem,
    },
    /// The API answered with something else than a problem (a proxy, another server).
    #[error("{method} {path}: HTTP {status}: {body}")]
    Unexpected {
        method: &'static str,
        path: String,
        status: StatusCode,
        body: String,
    },
    // Why comes after, as the error's source (`{:#}` prints the chain): not in this text too.
    #[error(
        "cannot reach the Cadre API at {base} (is the coordinator running? Name it with --api \
         or CADRE_API)"
    )]
    Unreachable {
        base: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{method} {path}: the answer is not what this CLI expects: {detail}")]
    Decode {
        method: &'static str,
        path: String,
        detail: String,
    },
}

impl ApiError {
    /// The problem, when the API refused the request.
    pub fn problem(&self) -> Option<&Problem> {
        match self {
            Self::Problem { problem, .. } => Some(problem),
            _ => None,
        }
    }

    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Self::Problem { problem, .. } => StatusCode::from_u16(problem.status).ok(),
            Self::Unexpected { status, .. } => Some(*status),
            _ => None,
        }
    }
}

fn show_problem(method: &str, path: &str, problem: &Problem) -> String {
    let mut shown = format!("{method} {path}: {} ({})", problem.title, problem.status);
    if !problem.detail.is_empty() {
        shown.push_str(&format!(": {}", problem.detail));
    }
    if let Some(status) = &problem.current_status {
        shown.push_str(&format!(" [current status: {status}]"));
    }
    for error in &problem.errors {
        shown.push_str(&format!("\n  at {}: {}", error.pointer, error.message));
    }
    shown
}

#[derive(Clone)]
pub struct Client {
    base: String,
    http: reqwest::Client,
}

impl Client {
    pub fn new(base: &str) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ApiError> {
        let request = self
            .http
            .get(self.url(path))
            .timeout(Duration::from_secs(60));
        self.send("GET", path, request).await
    }

    /// `POST` with a JSON body (none when `body` is `Value::Null`).
    pub async fn post<T: DeserializeOwned>(&self, path: &str, body: &Value) -> Result<T, ApiError> {
        let mut request = self
            .http
            .post(self.url(path))
            .timeout(Duration::from_secs(60));
        if !body.is_null() {
            request = request.json(body);
        }
        self.send("POST", path, request).await
    }

    /// Every item of a paged list.
    pub async fn list_all(&self, path: &str) -> Result<Vec<Value>, ApiError> {
        self.list(path, None).await
    }

    /// The items of a paged list, page after page as each page's `Link: <…>; rel="next"`
    /// header leads, up to `most` items when given.
    pub async fn list(&self, path: &str, most: Option<usize>) -> Result<Vec<Value>, ApiError> {
        const MAX_PAGE: usize = 1000;
        let separator = if path.contains('?') { '&' } else { '?' };
        let page = most.map_or(MAX_PAGE, |most| most.clamp(1, MAX_PAGE));
        let mut next = Some(format!("{path}{separator}limit={page}"));
        let mut all = Vec::new();
        while let Some(path) = next.take() {
            let request = self
                .http
                .get(self.url(&path))
                .timeout(Duration::from_secs(60));
            let response = request.send().await.map_err(|e| self.unreachable(e))?;
            if !response.status().is_success() {
                return Err(Self::refused("GET", &path, response).await);
            }
            next = response
                .headers()
                .get_all(reqwest::header::LINK)
                .iter()
                .filter_map(|value| value.to_str().ok())
                .find_map(next_link);
            let bytes = response.bytes().await.map_err(|e| self.unreachable(e))?;
            let items: Vec<Value> =
                serde_json::from_slice(&bytes).map_err(|e| ApiError::Decode {
                    method: "GET",
                    path: path.clone(),
                    detail: e.to_string(),
                })?;
            all.extend(items);
            if let Some(most) = most
                && all.len() >= most
            {
                all.truncate(most);
                break;
            }
        }
        Ok(all)
    }

    /// Opens a server-sent events feed, after `last_event_id` when given.
    pub async fn events(
        &self,
        path: &str,
        last_event_id: Option<&str>,
    ) -> Result<reqwest::Response, ApiError> {
        let mut request = self
            .http
            .get(self.url(path))
            .header(reqwest::header::ACCEPT, "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = request.send().await.map_err(|e| self.unreachable(e))?;
        if response.status().is_success() {
            Ok(response)
        } else {
            Err(Self::refused("GET", path, response).await)
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn unreachable(&self, source: reqwest::Error) -> ApiError {
        ApiError::Unreachable {
            base: self.base.clone(),
            source,
        }
    }

    async fn send<T: DeserializeOwned>(
        &self,
        method: &'static str,
        path: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<T, ApiError> {
        let response = request.send().await.map_err(|e| self.unreachable(e))?;
        if !response.status().is_success() {
            return Err(Self::refused(method, path, response).await);
        }
        let bytes = response.bytes().await.map_err(|e| self.unreachable(e))?;
        serde_json::from_slice(&bytes).map_err(|e| ApiError::Decode {
            method,
            path: path.to_owned(),
            detail: e.to_string(),
        })
    }

    async fn refused(method: &'static str, path: &str, response: reqwest::Response) -> ApiError {
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        match serde_json::from_str::<Problem>(&body) {
            Ok(problem) if !problem.title.is_empty() || !problem.detail.is_empty() => {
                ApiError::Problem {
                    method,
                    path: path.to_owned(),
                    problem: Problem {
                        status: status.as_u16(),
                        ..problem
                    },
                }
            }
            _ => ApiError::Unexpected {
                method,
                path: path.to_owned(),
                status,
                body: body.chars().take(500).collect(),
            },
        }
    }
}

/// The target of the `rel="next"` link of an RFC 8288 `Link` header value, if it has one.
fn next_link(header: &str) -> Option<String> {
    header.split(',').find_map(|link| {
        let (target, params) = link.trim().strip_prefix('<')?.split_once('>')?;
        params
            .split(';')
            .filter_map(|param| param.trim().strip_prefix("rel="))
            .any(|rel| {
                rel.trim_matches('"')
                    .split_whitespace()
                    .any(|r| r == "next")
            })
            .then(|| target.to_owned())
    })
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client").field("base", &self.base).finish()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_next_page_is_the_link_whose_relation_is_next() {
        assert_eq!(
            next_link(r#"</v1/agents?limit=2&cursor=abc>; rel="next""#).as_deref(),
            Some("/v1/agents?limit=2&cursor=abc")
        );
        assert_eq!(
            next_link(r#"</a>; rel="prev", </b>; rel="next""#).as_deref(),
            Some("/b")
        );
        assert_eq!(next_link(r#"</a>; rel="prev""#), None);
        assert_eq!(next_link("nonsense"), None);
    }

    #[test]
    fn a_problem_reads_with_its_detail_and_pointers() {
        let problem: Problem = serde_json::from_value(serde_json::json!({
            "type": "https://cadre.dev/problems/validation",
            "title": "The request is not valid",
            "status": 422,
            "detail": "the workflow is not valid",
            "errors": [{"pointer": "/configuration/steps/1/dependsOn/0", "message": "no step has the id 'x'"}]
        }))
        .unwrap();
        let error = ApiError::Problem {
            method: "POST",
            path: "/v1/workflows".into(),
            problem,
        };
        assert_eq!(
            error.to_string(),
            "POST /v1/workflows: The request is not valid (422): the workflow is not valid\n  \
             at /configuration/steps/1/dependsOn/0: no step has the id 'x'"
        );
    }
}
