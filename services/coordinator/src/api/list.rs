//! What every list of the API reads and answers alike. Its query: the list's own filters,
//! `limit` (1 to [`MAX_LIMIT`], default [`DEFAULT_LIMIT`]) and `cursor`; any other parameter is
//! a 400 naming it (a misspelt filter silently ignored would list everything), and so is
//! `offset`, gone with offset paging (ignored, it would send a client round the first page
//! forever). Its answer: a JSON array of at most `limit` items and, when more follow, an
//! RFC 8288 `Link: <…>; rel="next"` header to the next page: the same path, filters and limit
//! with the `cursor` of the last item ([`crate::read::page`]).

use std::collections::HashMap;

use axum::http::{HeaderValue, Uri, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::Problem;
use crate::read::page::{self, CursorError, Page, Paged, SortKey};

pub(super) const DEFAULT_LIMIT: i64 = 100;
pub(super) const MAX_LIMIT: i64 = 1000;

/// A 400 naming the first of `names` (the query parameters of a request) that is not one of
/// `accepted`, the parameters this `what` takes: a misspelt parameter silently ignored would
/// answer something other than what was asked.
pub(super) fn refuse_unknown<'a>(
    names: impl IntoIterator<Item = &'a str>,
    what: &str,
    accepted: &[&str],
) -> Result<(), Problem> {
    match names.into_iter().find(|name| !accepted.contains(name)) {
        Some(name) => Err(Problem::bad_request(format!(
            "unknown query parameter '{name}'; this {what} takes {}",
            accepted.join(", ")
        ))),
        None => Ok(()),
    }
}

/// The query of a request for one list.
pub(super) struct ListQuery {
    /// Names the list in its cursors.
    list: &'static str,
    path: String,
    /// As given, in order: the next page's link repeats them.
    pairs: Vec<(String, String)>,
    params: HashMap<String, String>,
}

impl ListQuery {
    /// Reads the query of `uri`, a request for list `list`, which takes `filters` besides
    /// `limit` and `cursor`.
    pub(super) fn read(uri: &Uri, list: &'static str, filters: &[&str]) -> Result<Self, Problem> {
        let pairs: Vec<(String, String)> =
            form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes())
                .into_owned()
                .collect();
        let mut params = HashMap::new();
        for (name, value) in &pairs {
            if name == "offset" {
                return Err(Problem::bad_request(
                    "query parameter 'offset' is not supported: lists are paged by cursor; \
                     follow the URL of each page's `Link: <…>; rel=\"next\"` header (it has \
                     the `cursor` of the next page)",
                ));
            }
            let mut accepted = filters.to_vec();
            accepted.extend(["limit", "cursor"]);
            refuse_unknown([name.as_str()], "list", &accepted)?;
            if params.insert(name.clone(), value.clone()).is_some() {
                return Err(Problem::bad_request(format!(
                    "query parameter '{name}' is given more than once"
                )));
            }
        }
        Ok(Self {
            list,
            path: uri.path().to_owned(),
            pairs,
            params,
        })
    }

    /// The query's parameters by name.
    pub(super) fn params(&self) -> &HashMap<String, String> {
        &self.params
    }

    /// The page asked for.
    pub(super) fn page<K: SortKey>(&self) -> Result<Page<K>, Problem> {
        let limit = match self.params.get("limit") {
            None => DEFAULT_LIMIT,
            Some(raw) => raw
                .parse::<i64>()
                .ok()
                .filter(|n| (1..=MAX_LIMIT).contains(n))
                .ok_or_else(|| {
                    Problem::bad_request(format!(
                        "query parameter 'limit' must be a whole number from 1 to {MAX_LIMIT}, \
                         not '{raw}'"
                    ))
                })?,
        };
        let after = match self.params.get("cursor") {
            None => None,
            Some(raw) => Some(page::decode(self.list, raw).map_err(|why| {
                let hint = match why {
                    CursorError::Malformed => "",
                    CursorError::OtherList(_) => "; a cursor pages only the list that gave it",
                };
                Problem::bad_request(format!(
                    "query parameter 'cursor' {why}{hint}: give the one of the `Link: <…>; \
                     rel=\"next\"` header of the page before, or none for the first page"
                ))
            })?),
        };
        Ok(Page { limit, after })
    }

    /// The page as the API answers it: its items, and a link to the next page if one follows.
    pub(super) fn answer<T: Serialize, K: SortKey>(&self, paged: Paged<T, K>) -> Response {
        let link = paged
            .next
            .map(|key| self.next(&page::encode(self.list, &key)));
        let mut response = axum::Json(paged.rows).into_response();
        if let Some(link) = link.and_then(|l| HeaderValue::from_str(&l).ok()) {
            response.headers_mut().insert(header::LINK, link);
        }
        response
    }

    /// The `Link` header value to the page starting at `cursor`: this request with the cursor
    /// replaced.
    fn next(&self, cursor: &str) -> String {
        let mut query = form_urlencoded::Serializer::new(String::new());
        for (name, value) in self.pairs.iter().filter(|(name, _)| name != "cursor") {
            query.append_pair(name, value);
        }
        query.append_pair("cursor", cursor);
        format!("<{}?{}>; rel=\"next\"", self.path, query.finish())
    }

    /// The filter `name`, a UUID.
    pub(super) fn uuid(&self, name: &str) -> Result<Option<Uuid>, Problem> {
        self.params
            .get(name)
            .map(|raw| {
                raw.parse().map_err(|_| {
                    Problem::bad_request(format!(
                        "query parameter '{name}' must be a UUID, not '{raw}'"
                    ))
                })
            })
            .transpose()
    }

    /// The filter `name`, a comma-separated list of some of `allowed` (empty when absent).
    pub(super) fn any_of(
        &self,
        name: &str,
        allowed: &[&'static str],
    ) -> Result<Vec<&'static str>, Problem> {
        let Some(raw) = self.params.get(name) else {
            return Ok(vec![]);
        };
        raw.split(',')
            .map(|value| {
                allowed
                    .iter()
                    .find(|a| **a == value)
                    .copied()
                    .ok_or_else(|| {
                        Problem::bad_request(format!(
                            "query parameter '{name}' must be one of {} (or several, \
                             comma-separated), not '{value}'",
                            allowed.join(", ")
                        ))
                    })
            })
            .collect()
    }

    /// The filter `name`, one of `allowed`.
    pub(super) fn one_of(
        &self,
        name: &str,
        allowed: &[&'static str],
    ) -> Result<Option<&'static str>, Problem> {
        self.params
            .get(name)
            .map(|raw| {
                allowed.iter().find(|a| **a == raw).copied().ok_or_else(|| {
                    Problem::bad_request(format!(
                        "query parameter '{name}' must be one of {}, not '{raw}'",
                        allowed.join(", ")
                    ))
                })
            })
            .transpose()
    }

    /// The filter `name`, an RFC 3339 time.
    pub(super) fn time(&self, name: &str) -> Result<Option<DateTime<Utc>>, Problem> {
        self.params
            .get(name)
            .map(|raw| {
                DateTime::parse_from_rfc3339(raw)
                    .map(|at| at.to_utc())
                    .map_err(|_| {
                        Problem::bad_request(format!(
                            "query parameter '{name}' must be an RFC 3339 time such as \
                             2025-01-31T09:30:00Z (a '+' of an offset sent as %2B), not '{raw}'"
                        ))
                    })
            })
            .transpose()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test that unwraps fails with the value it got
mod tests {
    use super::*;

    fn query(uri: &str, filters: &[&str]) -> Result<ListQuery, Problem> {
        ListQuery::read(&uri.parse().unwrap(), "things", filters)
    }

    #[test]
    fn offset_unknown_and_repeated_parameters_are_refused_by_name() {
        let offset = query("/v1/things?limit=5&offset=10", &[]).err().unwrap();
        assert_eq!(offset.status, 400);
        assert!(
            offset.detail.contains("'offset' is not supported"),
            "{offset:?}"
        );
        assert!(offset.detail.contains("rel=\"next\""), "{offset:?}");
        let unknown = query("/v1/things?stauts=open", &["status", "workflowId"])
            .err()
            .unwrap();
        assert_eq!(
            unknown.detail,
            "unknown query parameter 'stauts'; this list takes status, workflowId, limit, cursor"
        );
        let twice = query("/v1/things?status=a&status=b", &["status"])
            .err()
            .unwrap();
        assert!(
            twice.detail.contains("'status' is given more than once"),
            "{twice:?}"
        );
        assert!(query("/v1/things?status=a&limit=2", &["status"]).is_ok());
    }

    #[test]
    fn limit_is_one_to_a_thousand_and_defaults_to_a_hundred() {
        let page = query("/v1/things", &[]).unwrap().page::<i64>().unwrap();
        assert_eq!((page.limit, page.after), (DEFAULT_LIMIT, None));
        let page = query("/v1/things?limit=1000", &[])
            .unwrap()
            .page::<i64>()
            .unwrap();
        assert_eq!(page.limit, 1000);
        for bad in ["0", "1001", "-1", "ten", ""] {
            let problem = query(&format!("/v1/things?limit={bad}"), &[])
                .unwrap()
                .page::<i64>()
                .err()
                .unwrap();
            assert!(
                problem
                    .detail
                    .contains("'limit' must be a whole number from 1 to 1000"),
                "{problem:?}"
            );
        }
    }

    #[test]
    fn the_next_link_repeats_the_query_with_the_last_rows_cursor() {
        let q = query(
            "/v1/things?status=a%2Cb&limit=2&cursor=old&startedAfter=2025-01-01T00:00:00%2B02:00",
            &["status", "startedAfter"],
        )
        .unwrap();
        let paged = Paged {
            rows: vec![1, 2],
            next: Some(7_i64),
        };
        let response = q.answer(paged);
        let link = response.headers()[header::LINK]
            .to_str()
            .unwrap()
            .to_owned();
        let cursor = page::encode("things", &7_i64);
        assert_eq!(
            link,
            format!(
                "</v1/things?status=a%2Cb&limit=2&startedAfter=2025-01-01T00%3A00%3A00%2B02%3A00\
                 &cursor={cursor}>; rel=\"next\""
            )
        );
        // Following it reads the same filters and the page after row 7.
        let uri = link.trim_start_matches('<').split('>').next().unwrap();
        let next =
            ListQuery::read(&uri.parse().unwrap(), "things", &["status", "startedAfter"]).unwrap();
        assert_eq!(next.page::<i64>().unwrap().after, Some(7));
        assert_eq!(next.params()["startedAfter"], "2025-01-01T00:00:00+02:00");
        let last = q.answer(Paged::<i32, i64> {
            rows: vec![1],
            next: None,
        });
        assert!(last.headers().get(header::LINK).is_none());
    }

    #[test]
    fn a_bad_cursor_is_a_problem_naming_it() {
        let other = page::encode("others", &7_i64);
        for (cursor, says) in [
            ("nonsense!", "'cursor' is not a cursor this API gave"),
            (
                other.as_str(),
                "'cursor' is a cursor of another list (others)",
            ),
        ] {
            let problem = query(&format!("/v1/things?cursor={cursor}"), &[])
                .unwrap()
                .page::<i64>()
                .err()
                .unwrap();
            assert_eq!(problem.status, 400);
            assert!(problem.detail.contains(says), "{problem:?}");
        }
    }

    #[test]
    fn filters_read_uuids_statuses_and_times() {
        let id = Uuid::now_v7();
        let q = query(
            &format!(
                "/v1/things?workflowId={id}&status=failed,cancelled&trigger=manual\
                 &startedAfter=2025-01-31T09:30:00%2B01:00"
            ),
            &["workflowId", "status", "trigger", "startedAfter"],
        )
        .unwrap();
        assert_eq!(q.uuid("workflowId").unwrap(), Some(id));
        let allowed = ["running", "failed", "cancelled"];
        assert_eq!(
            q.any_of("status", &allowed).unwrap(),
            ["failed", "cancelled"]
        );
        assert_eq!(q.one_of("trigger", &["manual"]).unwrap(), Some("manual"));
        assert_eq!(
            q.time("startedAfter").unwrap().unwrap().to_rfc3339(),
            "2025-01-31T08:30:00+00:00"
        );
        assert_eq!(q.time("startedBefore").unwrap(), None);
        assert!(q.any_of("other", &allowed).unwrap().is_empty());

        let bad = query(
            "/v1/things?workflowId=x&status=failed,lost&startedAfter=yesterday",
            &["workflowId", "status", "startedAfter"],
        )
        .unwrap();
        assert!(
            bad.uuid("workflowId")
                .unwrap_err()
                .detail
                .contains("'workflowId'")
        );
        assert!(
            bad.any_of("status", &allowed)
                .unwrap_err()
                .detail
                .contains("not 'lost'")
        );
        assert!(
            bad.time("startedAfter")
                .unwrap_err()
                .detail
                .contains("'startedAfter' must be an RFC 3339 time")
        );
    }
}
