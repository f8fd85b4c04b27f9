//! Integration-test support (feature `testing`): a test's share of the local stack with a
//! token of tenant `default` holding every scope, the API's settings on it, the API started
//! in-process, and a request helper.

#![allow(clippy::expect_used)]

use std::ops::Deref;
use std::time::Duration;

use funnel_runtime::testing::{free_addr, Running, TestStack};
use serde_json::Value;

use crate::queries::tokens::{create, Scope};
use crate::Settings;

/// A test's share of the stack (see [`TestStack`]) and a token of tenant `default` with every
/// scope.
pub struct Stack {
    stack: TestStack,
    pub token: String,
}

impl Deref for Stack {
    type Target = TestStack;
    fn deref(&self) -> &TestStack {
        &self.stack
    }
}

impl Stack {
    /// Fresh topics of `partitions`, a fresh database, and the token.
    pub async fn new(partitions: i32) -> Stack {
        let stack = TestStack::new(partitions).await;
        let (_, token) = create(
            &stack.pool,
            "default",
            &[Scope::Ingest, Scope::Read, Scope::Admin],
            Some("tests"),
        )
        .await
        .expect("create token");
        Stack { stack, token }
    }

    /// The API's settings on the stack, on a free port.
    pub fn ingest_settings(&self) -> Settings {
        Settings {
            http_addr: free_addr(),
            database: self.database(),
            kafka: self.kafka(),
            max_body_bytes: 16 * 1024 * 1024,
            whatsapp_max_body_bytes: 4 * 1024 * 1024,
            max_text_bytes: 64 * 1024,
            max_metadata_entries: 32,
            max_batch: 1000,
            default_region: "ID".into(),
            produce_timeout_ms: 10_000,
            producer_linger_ms: 5,
            producer_queue_max: 10_000,
            limit_messages_per_second: std::num::NonZeroU32::new(10_000).expect("positive"),
            limit_burst: std::num::NonZeroU32::new(20_000).expect("positive"),
            limit_reads_per_second: std::num::NonZeroU32::new(100).expect("positive"),
            read_timeout_ms: 15_000,
            trusted_proxies: vec![],
            http_max_connections: 1024,
            http_idle_timeout_ms: 60_000,
            http_header_timeout_ms: 10_000,
            http_body_timeout_ms: 30_000,
        }
    }
}

/// A request with a bearer token and an optional body of a content type; answers with the
/// status, the body (JSON, or the text as a JSON string) and the `X-Rule-Set-Version` header.
pub async fn call(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    token: &str,
    body: Option<(&str, String)>,
) -> (u16, Value, String) {
    let mut req = client.request(method, url).bearer_auth(token);
    if let Some((ctype, text)) = body {
        req = req.header("content-type", ctype).body(text);
    }
    let res = req.send().await.expect("request");
    let status = res.status().as_u16();
    let version = res
        .headers()
        .get("x-rule-set-version")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let text = res.text().await.expect("body");
    let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, json, version)
}

/// Starts the API and waits until it answers; returns it and its base URL.
pub async fn start_ingest(settings: Settings) -> (Running, String) {
    let url = format!("http://{}", settings.http_addr);
    let running = Running::start(|token| crate::run(settings, token));
    let client = reqwest::Client::new();
    for _ in 0..200 {
        if client
            .get(format!("{url}/health/live"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return (running, url);
        }
        assert!(
            !running.is_finished(),
            "funnel-ingest exited during start-up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("funnel-ingest did not answer at {url}");
}
