//! `/v1/alerts`: the alerts raised on agents' performance (`AlertRaised`, see
//! [`crate::domain::alerts`]), from the `alerts` read model.

use std::collections::HashMap;

use axum::extract::State;
use axum::http::Uri;
use uuid::Uuid;

use cadre_proto::events::AlertCondition;
use cadre_proto::model::StepType;

use super::list::ListQuery;
use super::openapi::{BadRequest, PageParams, Unavailable};
use super::{ApiResult, AppState, Problem, unavailable_db};
use crate::read::metrics::{self, AlertFilter};

/// `GET /v1/alerts?agentId&condition&taskType&workflowId&executionId&limit&cursor`: newest
/// first (in the order raised); each filter is optional.
#[utoipa::path(
    get,
    path = "/v1/alerts",
    tag = "alerts",
    params(
        ("agentId" = Option<Uuid>, Query, description = "Only this agent's"),
        ("condition" = Option<String>, Query, description = "Only this condition's",
         pattern = "^(failure_rate|slow_completion|repeated_escalations|low_quality)$"),
        ("taskType" = Option<cadre_proto::model::StepType>, Query, description = "Only this step type's"),
        ("workflowId" = Option<Uuid>, Query, description = "Only those raised in this workflow's runs"),
        ("executionId" = Option<Uuid>, Query, description = "Only those raised in this run"),
        PageParams,
    ),
    responses((status = 200, description = "Alerts, newest first", body = Vec<metrics::AlertView>, headers(("Link" = String, description = "The next page (`<…>; rel=\"next\"`), when more items follow"))), BadRequest, Unavailable)
)]
pub(super) async fn list(State(app): State<AppState>, uri: Uri) -> ApiResult {
    let query = ListQuery::read(
        &uri,
        "alerts",
        &[
            "agentId",
            "condition",
            "taskType",
            "workflowId",
            "executionId",
        ],
    )?;
    let page = query.page()?;
    let filter = filter(query.params())?;
    let rows = metrics::alerts(&app.db, &app.tenant, filter, page)
        .await
        .map_err(unavailable_db)?;
    Ok(query.answer(rows))
}

fn filter(params: &HashMap<String, String>) -> Result<AlertFilter, Problem> {
    let one_of = |name: &str, raw: &str, allowed: &[&str]| {
        Problem::bad_request(format!(
            "query parameter '{name}' must be one of {}, not '{raw}'",
            allowed.join(", ")
        ))
    };
    let condition = params
        .get("condition")
        .map(|raw| {
            AlertCondition::ALL
                .into_iter()
                .find(|c| c.as_str() == raw)
                .ok_or_else(|| {
                    one_of(
                        "condition",
                        raw,
                        &AlertCondition::ALL.map(AlertCondition::as_str),
                    )
                })
        })
        .transpose()?;
    let task_type = params
        .get("taskType")
        .map(|raw| {
            StepType::parse(raw)
                .ok_or_else(|| one_of("taskType", raw, &StepType::ALL.map(StepType::as_str)))
        })
        .transpose()?;
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
    Ok(AlertFilter {
        agent_id: id("agentId")?,
        condition,
        task_type,
        workflow_id: id("workflowId")?,
        execution_id: id("executionId")?,
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
        assert!(none.agent_id.is_none() && none.condition.is_none() && none.task_type.is_none());
        let agent = Uuid::now_v7();
        let all = filter(&params(&[
            ("agentId", &agent.to_string()),
            ("condition", "repeated_escalations"),
            ("taskType", "review"),
            ("workflowId", &Uuid::now_v7().to_string()),
            ("executionId", &Uuid::now_v7().to_string()),
        ]))
        .unwrap();
        assert_eq!(all.agent_id, Some(agent));
        assert_eq!(all.condition, Some(AlertCondition::RepeatedEscalations));
        assert_eq!(all.task_type, Some(StepType::Review));
        assert!(all.workflow_id.is_some() && all.execution_id.is_some());
    }

    #[test]
    fn a_bad_filter_is_a_problem_naming_the_parameter_and_what_it_takes() {
        let condition = filter(&params(&[("condition", "slow")])).unwrap_err();
        assert_eq!(condition.status, 400);
        assert_eq!(
            condition.detail,
            "query parameter 'condition' must be one of failure_rate, slow_completion, \
             repeated_escalations, low_quality, not 'slow'"
        );
        let task_type = filter(&params(&[("taskType", "coding")])).unwrap_err();
        assert!(
            task_type
                .detail
                .contains("'taskType' must be one of analysis"),
            "{task_type:?}"
        );
        for name in ["agentId", "workflowId", "executionId"] {
            let problem = filter(&params(&[(name, "x1")])).unwrap_err();
            assert_eq!(problem.status, 400);
            assert!(problem.detail.contains(&format!("'{name}'")), "{problem:?}");
        }
    }
}
