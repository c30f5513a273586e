//! The lists page by cursor: a client following each page's `Link: <…>; rel="next"` header
//! gets every row once, in order, while rows are added between its requests; the runs of all
//! workflows are filtered by workflow, status and start time; and what a list cannot read
//! (`offset`, an unknown parameter, a bad cursor or time) is a problem naming it.

// Test code: a panic is the failure report, in helpers as in tests.
#![allow(clippy::unwrap_used)]

use std::future::Future;
use std::time::Duration;

use cadre_tests::api::{Api, PIPELINE_SKILLS, agent, pipeline};
use cadre_tests::{Stack, eventually};
use serde_json::{Value, json};

/// The ids of a page's items, in order.
fn ids(page: &Value) -> Vec<String> {
    page.as_array()
        .unwrap()
        .iter()
        .map(|item| item["id"].as_str().unwrap().to_owned())
        .collect()
}

/// The ids of every item of list `path`, page after page as its links lead, and how many
/// pages; `meanwhile` runs after each page that links to another.
async fn follow<F, Fut>(api: &Api, path: &str, mut meanwhile: F) -> (Vec<String>, usize)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let (mut all, mut pages) = (Vec::new(), 0);
    let mut next = Some(path.to_owned());
    while let Some(path) = next {
        let reply = api.get(&path).await;
        assert_eq!(reply.status, 200, "{path}: {}", reply.body);
        all.extend(ids(&reply.body));
        pages += 1;
        next = reply.next;
        if next.is_some() {
            meanwhile().await;
        }
    }
    (all, pages)
}

async fn workflow(api: &Api, name: &str, agent: &str) -> String {
    let created = api
        .create_workflow(&pipeline(name, &[agent.to_owned()], &PIPELINE_SKILLS, 1))
        .await;
    created["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn lists_page_by_cursor_while_rows_are_added_and_runs_filter_by_workflow_status_and_time() {
    let stack = Stack::start().await;
    let api = &stack.api;
    // No worker offers this provider: its runs wait, running, until cancelled.
    let ida = api
        .register_agent(&agent("Ida", "analyst", &["research"], "nobody"))
        .await;
    let ida = ida["id"].as_str().unwrap();

    // Newest first, with new workflows created between the pages: offsets would show some
    // twice; the cursor shows each of the first five once, and none created after the first
    // page.
    let mut drafts = Vec::new();
    for n in 1..=5 {
        drafts.push(workflow(api, &format!("Draft {n}"), ida).await);
    }
    drafts.reverse();
    let mut added = 0;
    let (listed, pages) = follow(api, "/v1/workflows?limit=2", || {
        added += 1;
        let name = format!("Added {added}");
        async move {
            workflow(api, &name, ida).await;
        }
    })
    .await;
    assert_eq!((listed, pages), (drafts.clone(), 3));

    // Runs: three of one workflow, two of another, one of them cancelled.
    let (first, second) = (drafts[4].clone(), drafts[3].clone());
    let mut runs = Vec::new();
    for workflow in [&first, &first, &first, &second, &second] {
        runs.push(api.start_execution(workflow).await.0);
    }
    let reply = api
        .post(&format!("/v1/executions/{}/cancel", runs[1]), &json!({}))
        .await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    let newest_first: Vec<String> = runs.iter().rev().cloned().collect();
    let all = eventually(Duration::from_secs(20), "the cancelled run", || async {
        let reply = api.get("/v1/executions").await;
        let cancelled = reply
            .body
            .as_array()
            .unwrap()
            .iter()
            .any(|run| run["id"] == runs[1].as_str() && run["status"] == "cancelled");
        cancelled.then_some(reply)
    })
    .await;
    assert_eq!(ids(&all.body), newest_first);
    assert_eq!(all.next, None, "one page holds them all");

    // Paged while another run starts: that run is newer than the first page, so not shown.
    let (listed, pages) = follow(api, "/v1/executions?limit=2", || async {
        api.start_execution(&second).await;
    })
    .await;
    assert_eq!((listed, pages), (newest_first.clone(), 3));

    let listed = |path: String| async move {
        let reply = api.get(&path).await;
        assert_eq!(reply.status, 200, "{path}: {}", reply.body);
        ids(&reply.body)
    };
    let started = |run: usize| {
        all.body.as_array().unwrap()[4 - run]["startedAt"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(
        listed(format!("/v1/executions?workflowId={first}")).await,
        [runs[2].as_str(), runs[1].as_str(), runs[0].as_str()]
    );
    assert_eq!(
        listed("/v1/executions?status=cancelled".to_owned()).await,
        [runs[1].as_str()]
    );
    assert_eq!(
        listed(format!(
            "/v1/workflows/{first}/executions?status=running,paused"
        ))
        .await,
        [runs[2].as_str(), runs[0].as_str()]
    );
    // From `startedAfter` (included) to `startedBefore` (excluded).
    assert_eq!(
        listed(format!(
            "/v1/executions?workflowId={first}&startedAfter={}",
            started(1)
        ))
        .await,
        [runs[2].as_str(), runs[1].as_str()]
    );
    assert_eq!(
        listed(format!(
            "/v1/workflows/{first}/executions?startedAfter={}&startedBefore={}",
            started(0),
            started(2)
        ))
        .await,
        [runs[1].as_str(), runs[0].as_str()]
    );
    // Exactly a page left: no link to an empty one.
    let reply = api
        .get(&format!("/v1/executions?workflowId={first}&limit=3"))
        .await;
    assert_eq!((ids(&reply.body).len(), reply.next), (3, None));
    let drafts_listed = listed("/v1/workflows?status=draft&limit=1000".to_owned()).await;
    assert!(!drafts_listed.contains(&first) && drafts_listed.contains(&drafts[0]));

    // The console's history pages the same list: "Older runs" links to the next page.
    let html = |reply: cadre_tests::api::Reply| reply.body.as_str().unwrap().to_owned();
    let page = html(
        api.get(&format!("/console/history?workflowId={first}&limit=2"))
            .await,
    );
    let older = page
        .split(r#"<a id="older" href=""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no link to older runs: {page}"))
        .replace("&amp;", "&");
    assert!(page.contains(&runs[2]) && page.contains(&runs[1]) && !page.contains(&runs[0]));
    let page = html(api.get(&older).await);
    assert!(
        page.contains(&runs[0]) && !page.contains(&runs[1]),
        "{page}"
    );
    assert!(
        !page.contains("Older runs") && page.contains("Newest runs"),
        "{page}"
    );

    // What a list cannot read is refused, naming the parameter.
    let cursor_of_runs = api
        .get("/v1/executions?limit=1")
        .await
        .next
        .unwrap()
        .split("cursor=")
        .nth(1)
        .unwrap()
        .to_owned();
    for (path, says) in [
        (
            "/v1/agents?offset=2".to_owned(),
            "'offset' is not supported",
        ),
        (
            "/v1/workflows?stauts=draft".to_owned(),
            "unknown query parameter 'stauts'; this list takes status, limit, cursor",
        ),
        ("/v1/agents?limit=0".to_owned(), "'limit' must be"),
        (
            "/v1/executions?cursor=bm9wZQ".to_owned(),
            "'cursor' is not a cursor this API gave",
        ),
        (
            format!("/v1/workflows?cursor={cursor_of_runs}"),
            "'cursor' is a cursor of another list (executions)",
        ),
        ("/v1/executions?status=lost".to_owned(), "'status'"),
        ("/v1/workflows?status=running".to_owned(), "'status'"),
        (
            "/v1/executions?startedBefore=yesterday".to_owned(),
            "'startedBefore' must be an RFC 3339 time",
        ),
        (
            "/v1/executions?startedAfter=2025-02-01T00:00:00Z&startedBefore=2025-01-01T00:00:00Z"
                .to_owned(),
            "'startedAfter' (2025-02-01T00:00:00+00:00) is not before 'startedBefore'",
        ),
        // The range includes startedAfter and excludes startedBefore: equal, it is empty.
        (
            "/v1/executions?startedAfter=2025-02-01T00:00:00Z&startedBefore=2025-02-01T01:00:00%2B01:00"
                .to_owned(),
            "'startedAfter' (2025-02-01T00:00:00+00:00) is not before 'startedBefore' (2025-02-01T00:00:00+00:00)",
        ),
    ] {
        let reply = api.get(&path).await;
        assert_eq!(reply.status, 400, "{path}: {}", reply.body);
        assert_eq!(reply.content_type, "application/problem+json", "{path}");
        let detail = reply.body["detail"].as_str().unwrap();
        assert!(detail.contains(says), "{path}: {detail}");
    }
    stack.stop().await;
}
