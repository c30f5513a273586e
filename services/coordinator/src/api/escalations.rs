//! `/v1/escalations`: the steps that wait, or waited, for a person, from the `escalations` read
//! model (list and get). Resolving one is a command on its execution (`…/resolve`).

use std::collections::HashMap;

use axum::extract::{Path, State};
use axum::http::Uri;
use uuid::Uuid;

use cadre_proto::EscalationId;

use super::list::ListQuery;
use super::openapi::{BadRequest, NotFound, PageParams, Unavailable};
use super::{ApiResult, AppState, Problem, found, parse_id, unavailable_db};
use crate::read::{self, EscalationFilter, EscalationStatus};

/// `GET /v1/escalations?status=open&executionId=…&workflowId=…&limit&cursor`: oldest first
/// (by the time escalated, then id); each filter is optional.
#[utoipa::path(
    get,
    path = "/v1/escalations",
    tag = "escalations",
    params(
        ("status" = Option<String>, Query, description = "Only those in this status",
         example = "open", pattern = "^(open|resolved|closed)$"),
        ("executionId" = Option<Uuid>, Query, description = "Only this execution's"),
        ("workflowId" = Option<Uuid>, Query, description = "Only this workflow's runs'"),
        PageParams,
    ),
    responses((status = 200, description = "Escalations, oldest first", body = Vec<read::EscalationView>, headers(("Link" = String, description = "The next page (`<…>; rel=\"next\"`), when more items follow"))), BadRequest, Unavailable)
)]
pub(super) async fn list(State(app): State<AppState>, uri: Uri) -> ApiResult {
    let query = ListQuery::read(
        &uri,
        "escalations",
        &["status", "executionId", "workflowId"],
    )?;
    let page = query.page()?;
    let filter = filter(query.params())?;
    let rows = read::escalations(&app.db, &app.tenant, filter, page)
        .await
        .map_err(unavailable_db)?;
    Ok(query.answer(rows))
}

/// `GET /v1/escalations/{id}`. The read models lag the log a little: an escalation recorded a
/// moment ago may not be found yet.
#[utoipa::path(
    get,
    path = "/v1/escalations/{id}",
    tag = "escalations",
    params(("id" = uuid::Uuid, Path, description = "The escalation's id")),
    responses((status = 200, description = "The escalation", body = read::EscalationView), BadRequest, NotFound, Unavailable)
)]
pub(super) async fn get(State(app): State<AppState>, Path(raw): Path<String>) -> ApiResult {
    let id: EscalationId = parse_id(&raw, "escalation id")?;
    let row = read::escalation(&app.db, &app.tenant, id.0)
        .await
        .map_err(unavailable_db)?;
    found(row, || format!("no escalation has the id {id}"))
}

fn filter(params: &HashMap<String, String>) -> Result<EscalationFilter, Problem> {
    let status = match params.get("status") {
        None => None,
        Some(raw) => Some(EscalationStatus::parse(raw).ok_or_else(|| {
            let allowed: Vec<_> = EscalationStatus::ALL.map(EscalationStatus::as_str).into();
            Problem::bad_request(format!(
                "query parameter 'status' must be one of {}, not '{raw}'",
                allowed.join(", ")
            ))
        })?),
    };
    let id = |name: &str| -> Result<Option<Uuid>, Problem> {
        params
            .get(name)
            .map(|raw| {
                raw.parse().map_err(|_| {
                    Problem::bad_request(format!(
                        "query parameter '{name}' must be a UUID, not '{raw}'"
                    ))
                })
            })
            .transpose()
    };
    Ok(EscalationFilter {
        status,
        execution_id: id("executionId")?,
        workflow_id: id("workflowId")?,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test that unwraps fails with the value it got
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn filters_are_optional_and_read_as_given() {
        let none = filter(&params(&[])).unwrap();
        assert!(none.status.is_none() && none.execution_id.is_none() && none.workflow_id.is_none());

        let execution = Uuid::now_v7();
        let workflow = Uuid::now_v7();
        let all = filter(&params(&[
            ("status", "open"),
            ("executionId", &execution.to_string()),
            ("workflowId", &workflow.to_string()),
        ]))
        .unwrap();
        assert_eq!(all.status, Some(EscalationStatus::Open));
        assert_eq!(all.execution_id, Some(execution));
        assert_eq!(all.workflow_id, Some(workflow));
    }

    #[test]
    fn a_bad_filter_is_a_problem_naming_the_parameter() {
        let status = filter(&params(&[("status", "pending")])).unwrap_err();
        assert_eq!(status.status, 400);
        assert_eq!(
            status.detail,
            "query parameter 'status' must be one of open, resolved, closed, not 'pending'"
        );
        for name in ["executionId", "workflowId"] {
            let problem = filter(&params(&[(name, "x1")])).unwrap_err();
            assert_eq!(problem.status, 400);
            assert!(problem.detail.contains(&format!("'{name}'")), "{problem:?}");
        }
    }
}
