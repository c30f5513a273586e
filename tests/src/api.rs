//! A small client for the coordinator's HTTP API, shared by the tests and the bench.

use std::time::Duration;

use serde_json::{Value, json};

#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub content_type: String,
    pub location: Option<String>,
    /// The target of the `Link: <…>; rel="next"` header of a list's page, when more follow.
    pub next: Option<String>,
    pub body: Value,
}

#[derive(Clone)]
pub struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    pub fn new(base: impl Into<String>) -> Self {
        Self {
            base: base.into(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("HTTP client"),
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    async fn reply(response: reqwest::Response) -> Reply {
        let status = response.status().as_u16();
        let header = |name: reqwest::header::HeaderName| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let content_type = header(reqwest::header::CONTENT_TYPE).unwrap_or_default();
        let location = header(reqwest::header::LOCATION);
        let next = header(reqwest::header::LINK).and_then(|link| {
            let (target, relation) = link.strip_prefix('<')?.split_once('>')?;
            (relation.trim() == "; rel=\"next\"").then(|| target.to_owned())
        });
        let bytes = response.bytes().await.expect("response body");
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Reply {
            status,
            content_type,
            location,
            next,
            body,
        }
    }

    /// Opens the server-sent events at `path` (resuming after `last_event_id`): the stream
    /// of its events, or the reply when it answered with something else than a feed.
    pub async fn events(
        &self,
        path: &str,
        last_event_id: Option<&str>,
    ) -> Result<impl futures::Stream<Item = eventsource_stream::Event> + Unpin + use<>, Reply> {
        use eventsource_stream::Eventsource;
        use futures::StreamExt;
        let mut request = reqwest::Client::new().get(format!("{}{path}", self.base));
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = request.send().await.expect("GET events");
        let is_feed = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        if !is_feed {
            return Err(Self::reply(response).await);
        }
        Ok(response
            .bytes_stream()
            .eventsource()
            // A broken connection ends the stream, as a closed one does.
            .take_while(|event| futures::future::ready(event.is_ok()))
            .filter_map(|event| futures::future::ready(event.ok()))
            .boxed())
    }

    pub async fn get(&self, path: &str) -> Reply {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("GET");
        Self::reply(response).await
    }

    /// The 404 `detail` of a step's result that the run will never have (it asserts the 404).
    pub async fn no_result(&self, execution_id: &str, step: &str) -> String {
        let reply = self
            .get(&format!(
                "/v1/executions/{execution_id}/steps/{step}/result"
            ))
            .await;
        assert_eq!(reply.status, 404, "{}", reply.body);
        reply.body["detail"].as_str().unwrap_or_default().to_owned()
    }

    pub async fn delete(&self, path: &str) -> Reply {
        let response = self
            .http
            .delete(format!("{}{path}", self.base))
            .send()
            .await
            .expect("DELETE");
        Self::reply(response).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Reply {
        self.post_raw(
            path,
            Some("application/json"),
            body.to_string().into_bytes(),
        )
        .await
    }

    pub async fn post_raw(&self, path: &str, content_type: Option<&str>, body: Vec<u8>) -> Reply {
        let mut request = self.http.post(format!("{}{path}", self.base)).body(body);
        if let Some(content_type) = content_type {
            request = request.header(reqwest::header::CONTENT_TYPE, content_type);
        }
        Self::reply(request.send().await.expect("POST")).await
    }

    fn expect(reply: Reply, status: u16, what: &str) -> Value {
        assert_eq!(reply.status, status, "{what}: {}", reply.body);
        reply.body
    }

    /// Registers an agent and returns it as the API echoes it.
    pub async fn register_agent(&self, agent: &Value) -> Value {
        Self::expect(
            self.post("/v1/agents", agent).await,
            201,
            "registering an agent",
        )
    }

    pub async fn create_workflow(&self, workflow: &Value) -> Value {
        Self::expect(
            self.post("/v1/workflows", workflow).await,
            201,
            "creating a workflow",
        )
    }

    /// Starts an execution; returns `(executionId, executionNumber)`.
    pub async fn start_execution(&self, workflow_id: &str) -> (String, u64) {
        self.start(workflow_id, None).await
    }

    /// [`Self::start_execution`] answered once the log has the run (`Prefer: wait=0`), before
    /// the read models show it.
    pub async fn start_execution_without_waiting(&self, workflow_id: &str) -> (String, u64) {
        self.start(workflow_id, Some("wait=0")).await
    }

    async fn start(&self, workflow_id: &str, prefer: Option<&str>) -> (String, u64) {
        let mut request = self
            .http
            .post(format!(
                "{}/v1/workflows/{workflow_id}/executions",
                self.base
            ))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body("{}");
        if let Some(prefer) = prefer {
            request = request.header("prefer", prefer);
        }
        let body = Self::expect(
            Self::reply(request.send().await.expect("POST")).await,
            202,
            "starting an execution",
        );
        (
            body["executionId"]
                .as_str()
                .expect("executionId")
                .to_owned(),
            body["executionNumber"].as_u64().expect("executionNumber"),
        )
    }

    /// Registers the demo team on `provider` and creates its `steps`-step pipeline; returns
    /// the agents' ids (in step order) and the workflow's id.
    pub async fn team_and_pipeline(&self, provider: &str, steps: usize) -> (Vec<String>, String) {
        let mut ids = Vec::new();
        for agent in team(provider) {
            let created = self.register_agent(&agent).await;
            ids.push(created["id"].as_str().expect("agent id").to_owned());
        }
        let workflow = self
            .create_workflow(&pipeline("Feature pipeline", &ids, &PIPELINE_SKILLS, steps))
            .await;
        (
            ids,
            workflow["id"].as_str().expect("workflow id").to_owned(),
        )
    }

    /// Polls the execution's read model until it is completed, failed or cancelled.
    pub async fn wait_until_finished(&self, execution_id: &str, timeout: Duration) -> Value {
        crate::eventually(timeout, "the execution to finish", || async {
            let reply = self.get(&format!("/v1/executions/{execution_id}")).await;
            let status = reply.body["status"].as_str().unwrap_or_default();
            (reply.status == 200 && matches!(status, "completed" | "failed" | "cancelled"))
                .then_some(reply.body)
        })
        .await
    }
}

/// An agent request body.
pub fn agent(name: &str, role: &str, skills: &[&str], provider: &str) -> Value {
    json!({
        "name": name,
        "role": role,
        "backstory": format!("{name} has shipped many projects as a {role}."),
        "skills": skills,
        "provider": provider,
        "model": if provider == "offline" { "offline-deterministic" } else { "gpt-4o-mini" },
        "modelParameters": { "temperature": 0.3, "maxTokens": 1200 }
    })
}

/// Seed 002's team, one agent per role the system templates name, on `provider`.
pub fn seed_team(provider: &str) -> Vec<Value> {
    [
        (
            "Sasha",
            "security",
            &["threat modeling", "security review"][..],
        ),
        (
            "Dana",
            "database",
            &["schema design", "sql", "data integrity"],
        ),
        (
            "Finn",
            "frontend",
            &["ux", "react", "rendering performance"],
        ),
        (
            "Ari",
            "api",
            &["api design", "debugging", "performance optimisation"],
        ),
        ("Tess", "testing", &["test design", "benchmarking"]),
        ("Dev", "devops", &["deployment", "monitoring"]),
        ("Meta", "meta", &["coordination", "triage"]),
    ]
    .into_iter()
    .map(|(name, role, skills)| agent(name, role, skills, provider))
    .collect()
}

/// The three agents of the bench pipeline, in step order.
pub fn team(provider: &str) -> Vec<Value> {
    vec![
        agent(
            "Ada",
            "analyst",
            &["requirements analysis", "research"],
            provider,
        ),
        agent("Linus", "engineer", &["rust", "implementation"], provider),
        agent("Grace", "reviewer", &["code review", "testing"], provider),
    ]
}

/// A pipeline of `steps` steps, each depending on the previous one, spread over `agents`
/// (ids) by required skills. The first three are the seed's analyse → build → review.
pub fn pipeline(name: &str, agent_ids: &[String], skills: &[&[&str]], steps: usize) -> Value {
    const KINDS: [(&str, &str, &str); 3] = [
        (
            "analysis",
            "Analyse requirements",
            "A list of requirements and risks",
        ),
        (
            "implementation",
            "Implement the change",
            "A description of the implementation",
        ),
        (
            "review",
            "Review the implementation",
            "Review findings and a verdict",
        ),
    ];
    let steps: Vec<Value> = (0..steps)
        .map(|i| {
            let (kind, title, output) = KINDS[i % KINDS.len()];
            let id = format!("step-{}", i + 1);
            let depends_on: Vec<String> = if i == 0 { vec![] } else { vec![format!("step-{i}")] };
            json!({
                "id": id,
                "name": if steps <= KINDS.len() { title.to_owned() } else { format!("{title} ({})", i + 1) },
                "description": format!("{title} for the real-time collaboration feature."),
                "type": kind,
                "requiredSkills": skills[i % skills.len()],
                "dependsOn": depends_on,
                "instructions": format!("{title}. Build on what the team already shared."),
                "expectedOutput": output,
                "timeoutMinutes": 10
            })
        })
        .collect();
    json!({
        "name": name,
        "description": "Analyse, build and review a feature as a team.",
        "workflowType": "pipeline",
        "participatingAgents": agent_ids,
        "configuration": {
            "steps": steps,
            "coordination": { "communicationStyle": "technical", "decisionMaking": "coordinator", "knowledgeSharing": true },
            "constraints": { "maxRetries": 1 }
        }
    })
}

/// The skills each step of [`pipeline`] requires, matching [`team`].
pub const PIPELINE_SKILLS: [&[&str]; 3] = [&["research"], &["rust"], &["code review"]];

/// Starts a run of `workflow` through the API at `api` with `body`, answered once the log has
/// it (`Prefer: wait=0`), retrying with the same `Idempotency-Key` (`key`) until the API
/// acknowledges it (202, or 200 for a start it already had) or `patience` runs out: the
/// execution's id, or the last error. For harnesses whose services come and go.
pub async fn start_until_acknowledged(
    http: &reqwest::Client,
    api: &str,
    workflow: &str,
    key: &str,
    body: &Value,
    patience: Duration,
) -> Result<String, String> {
    let deadline = tokio::time::Instant::now() + patience;
    let mut last_error = String::new();
    while tokio::time::Instant::now() < deadline {
        let reply = http
            .post(format!("{api}/v1/workflows/{workflow}/executions"))
            .header("Idempotency-Key", key)
            .header("Prefer", "wait=0")
            .json(body)
            .send()
            .await;
        match reply {
            Ok(reply) if matches!(reply.status().as_u16(), 200 | 202) => {
                let body: Value = reply.json().await.map_err(|e| e.to_string())?;
                return body["executionId"]
                    .as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| format!("no executionId in {body}"));
            }
            Ok(reply) => last_error = format!("HTTP {}", reply.status()),
            Err(error) => last_error = error.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Err(format!("{api}, key {key}: {last_error}"))
}

/// POSTs `body` to `url` and expects `201 Created`: the id of what was created.
pub async fn post_created(
    http: &reqwest::Client,
    url: &str,
    body: &Value,
) -> anyhow::Result<String> {
    let reply = http.post(url).json(body).send().await?;
    anyhow::ensure!(
        reply.status().as_u16() == 201,
        "POST {url}: {}",
        reply.status()
    );
    let body: Value = reply.json().await?;
    body["id"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("POST {url}: no id in the reply {body}"))
}
