//! The live registry of agent workers (the [`crate::streams::WORKERS_BUCKET`] key-value bucket):
//! what each running worker offers, so the coordinator can tell which agents' steps can run.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// What one agent worker announces every [`crate::streams::WORKER_HEARTBEAT`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct WorkerRecord {
    pub worker_id: String,
    /// The LLM provider names it serves: it consumes exactly their step queues.
    pub providers: Vec<String>,
    /// Most steps it runs at once.
    pub concurrency: usize,
    pub started_at: DateTime<Utc>,
    /// The Cadre release it runs.
    pub version: String,
}

/// One piece of a step's answer as the model writes it, on [`crate::subjects::live_tokens`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct TokenDelta {
    pub attempt: u32,
    /// 0 for the answer's first piece, then 1, 2, ...: a subscriber sees gaps and order.
    pub index: u64,
    pub text: String,
}

impl WorkerRecord {
    /// Its key in the bucket: the worker id with every character a key may not hold replaced.
    pub fn key(&self) -> String {
        self.worker_id
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '=') {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    }

    pub fn offers(&self, provider: &str) -> bool {
        self.providers.iter().any(|offered| offered == provider)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_valid_bucket_keys_whatever_the_host_name() {
        let record = WorkerRecord {
            worker_id: "pod.ns/üx 1".to_owned(),
            providers: vec!["offline".to_owned()],
            concurrency: 4,
            started_at: Utc::now(),
            version: "0".to_owned(),
        };
        assert_eq!(record.key(), "pod_ns__x_1");
        assert!(record.offers("offline") && !record.offers("openai"));
    }
}
