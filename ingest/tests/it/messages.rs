//! Accepting messages, at the HTTP level: auth, batch, limits, problem details, metrics.

use serde_json::{json, Value};

use crate::harness::{start_ingest, Stack};
use funnel_http::queries::tokens::{create, revoke, Scope};

async fn call(
    method: reqwest::Method,
    url: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, String, Value) {
    let client = reqwest::Client::new();
    let mut req = client.request(method, url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req.send().await.expect("request");
    let status = res.status().as_u16();
    let ctype = res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let text = res.text().await.expect("body");
    (
        status,
        ctype,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn msg(phone: &str, id: &str) -> Value {
    json!({"event_id": id, "phone": phone, "channel": "ads", "text": "info promo", "sent_at": "2026-11-20T10:00:00+07:00"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tokens_scopes_and_tenants() {
    let stack = Stack::new(1).await;
    let (ingest, url) = start_ingest(stack.ingest_settings()).await;
    let post = reqwest::Method::POST;
    let messages = format!("{url}/v1/messages");

    let (status, ctype, body) = call(
        post.clone(),
        &messages,
        None,
        Some(msg("081200000001", "x1")),
    )
    .await;
    assert_eq!(
        (status, ctype.as_str()),
        (401, "application/problem+json"),
        "{body}"
    );
    assert_eq!(body["status"], 401);
    let (status, _, _) = call(
        post.clone(),
        &messages,
        Some("fnl_not-a-token"),
        Some(msg("081200000001", "x1")),
    )
    .await;
    assert_eq!(status, 401);

    let (_, read_only) = create(&stack.pool, "default", &[Scope::Read], None)
        .await
        .expect("token");
    let (status, ctype, body) = call(
        post.clone(),
        &messages,
        Some(&read_only),
        Some(msg("081200000001", "x1")),
    )
    .await;
    assert_eq!(
        (status, ctype.as_str()),
        (403, "application/problem+json"),
        "{body}"
    );
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("ingest")),
        "{body}"
    );

    // The tenant comes from the token: a body that names another tenant is refused, and the
    // record carries the token's tenant.
    let (id, acme) = create(&stack.pool, "acme", &[Scope::Ingest], None)
        .await
        .expect("token");
    let mut with_tenant = msg("081200000001", "x2");
    with_tenant["tenant"] = json!("default");
    let (status, _, body) = call(post.clone(), &messages, Some(&acme), Some(with_tenant)).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["errors"][0]["pointer"], "/tenant");
    let res = reqwest::Client::new()
        .post(&messages)
        .bearer_auth(&acme)
        .header("x-request-id", "it-request-1")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .json(&msg("081200000001", "x3"))
        .send()
        .await
        .expect("post");
    assert_eq!(res.status().as_u16(), 202);
    assert_eq!(res.headers()["x-request-id"], "it-request-1");
    let body: Value = res.json().await.expect("json");
    let (record, headers) = stack
        .read_record(
            body["partition"].as_i64().expect("p") as i32,
            body["offset"].as_i64().expect("o"),
        )
        .await;
    assert_eq!(record.tenant, "acme");
    assert_eq!(
        headers.get("x-request-id").map(String::as_str),
        Some("it-request-1")
    );
    assert_eq!(
        headers.get("traceparent").map(String::as_str),
        Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    );

    // A revoked token stops working (a token never used is not cached).
    let (revoked_id, revoked) = create(&stack.pool, "default", &[Scope::Ingest], None)
        .await
        .expect("token");
    assert!(revoke(&stack.pool, &revoked_id).await.expect("revoke"));
    let (status, _, _) = call(
        post.clone(),
        &messages,
        Some(&revoked),
        Some(msg("081200000001", "x4")),
    )
    .await;
    assert_eq!(status, 401);
    assert!(revoke(&stack.pool, &id).await.expect("revoke"));
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batch_limits_problems_and_metrics() {
    let stack = Stack::new(2).await;
    let mut settings = stack.ingest_settings();
    settings.max_batch = 5;
    settings.max_body_bytes = 64 * 1024;
    let (ingest, url) = start_ingest(settings).await;
    let token = Some(stack.token.as_str());
    let post = reqwest::Method::POST;
    let batch = format!("{url}/v1/messages/batch");

    // Valid items are produced even when others are rejected; results keep the request order.
    let body = json!({"messages": [
        msg("0812-1000-0001", "b1"),
        {"phone": "12", "channel": "ads", "text": "x", "sent_at": "2026-11-20T10:00:00Z"},
        msg("+62 812 1000 0002", "b2"),
        {"channel": 7},
    ]});
    let (status, _, res) = call(post.clone(), &batch, token, Some(body)).await;
    assert_eq!(status, 202, "{res}");
    assert_eq!(
        (res["accepted"].as_u64(), res["rejected"].as_u64()),
        (Some(2), Some(2))
    );
    let results = res["results"].as_array().expect("results");
    let statuses: Vec<&str> = results
        .iter()
        .filter_map(|r| r["status"].as_str())
        .collect();
    assert_eq!(statuses, ["accepted", "rejected", "accepted", "rejected"]);
    assert_eq!(results[0]["event_id"], "b1");
    assert_eq!(results[2]["event_id"], "b2");
    assert!(results[0]["offset"].as_i64().is_some());
    assert_eq!(results[1]["errors"][0]["pointer"], "/phone");
    let pointers: Vec<&str> = results[3]["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .filter_map(|e| e["pointer"].as_str())
        .collect();
    assert_eq!(pointers, ["/phone", "/channel", "/text", "/sent_at"]);

    // Past the batch size and the body size: 413 with problem details.
    let six: Vec<Value> = (0..6)
        .map(|i| msg("081210000003", &format!("c{i}")))
        .collect();
    let (status, ctype, res) =
        call(post.clone(), &batch, token, Some(json!({"messages": six}))).await;
    assert_eq!(
        (status, ctype.as_str()),
        (413, "application/problem+json"),
        "{res}"
    );
    let big = json!({"messages": [{"phone": "081210000003", "channel": "ads", "text": "x".repeat(70 * 1024), "sent_at": "2026-11-20T10:00:00Z"}]});
    let (status, ctype, _) = call(post.clone(), &batch, token, Some(big)).await;
    assert_eq!((status, ctype.as_str()), (413, "application/problem+json"));

    // Not JSON at all: 422 problem, not a bare 400.
    let res = reqwest::Client::new()
        .post(format!("{url}/v1/messages"))
        .bearer_auth(&stack.token)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("post");
    assert_eq!(res.status().as_u16(), 422);
    assert_eq!(res.headers()["content-type"], "application/problem+json");

    // Unknown routes answer problem details too.
    let (status, ctype, _) =
        call(reqwest::Method::GET, &format!("{url}/v1/nope"), token, None).await;
    assert_eq!((status, ctype.as_str()), (404, "application/problem+json"));

    let (status, _, metrics) =
        call(reqwest::Method::GET, &format!("{url}/metrics"), None, None).await;
    assert_eq!(status, 200);
    let metrics = metrics.as_str().expect("text").to_string();
    assert!(
        metrics.contains("funnel_ingest_messages_accepted_total 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("funnel_ingest_messages_rejected_total{reason=\"validation\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("funnel_ingest_produce_seconds_count 2"),
        "{metrics}"
    );

    // The OpenAPI document is served and names the bearer scheme and the batch endpoint.
    let (status, _, doc) = call(
        reqwest::Method::GET,
        &format!("{url}/openapi.json"),
        None,
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"].as_str().map(|v| &v[..2]), Some("3."));
    assert!(doc["paths"]["/v1/messages/batch"]["post"].is_object());
    assert!(
        doc["components"]["securitySchemes"]["BearerAuth"].is_object(),
        "{}",
        doc["components"]
    );
    ingest.stop().await;
}

/// Stopping ingest while batches wait for their acknowledgements: every request that reached it
/// is answered in full, and every message it accepted is in the topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn graceful_shutdown_drains_in_flight_requests() {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use std::time::Duration;
    let stack = Stack::new(1).await;
    let mut settings = stack.ingest_settings();
    // Every request waits at least this long for its acknowledgement, so the requests are in
    // flight when the shutdown starts.
    settings.producer_linger_ms = 300;
    let (ingest, url) = start_ingest(settings).await;
    let client = reqwest::Client::new();
    let mut requests = Vec::new();
    for r in 0..16 {
        let messages: Vec<Value> = (0..100)
            .map(|i| {
                msg(
                    &format!("+62812{:07}", r * 100 + i),
                    &format!("drain-{r}-{i}"),
                )
            })
            .collect();
        let req = client
            .post(format!("{url}/v1/messages/batch"))
            .bearer_auth(&stack.token)
            .json(&json!({ "messages": messages }))
            .send();
        requests.push(tokio::spawn(req));
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    let stopping = std::time::Instant::now();
    ingest.stop().await;
    let (mut answered, mut accepted) = (0, 0);
    for r in requests {
        match r.await.expect("request task") {
            Ok(res) => {
                assert!(res.status().is_success(), "{}", res.status());
                let body: Value = res.json().await.expect("a complete body");
                accepted += body["accepted"].as_u64().expect("accepted");
                answered += 1;
            }
            Err(e) => assert!(e.is_connect(), "a request that reached ingest was cut: {e}"),
        }
    }
    assert!(answered > 0, "no request was in flight at the shutdown");
    assert!(
        stopping.elapsed() >= Duration::from_millis(100),
        "the shutdown waited for the in-flight requests"
    );
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &stack.brokers)
        .set("group.id", "watermarks")
        .create()
        .expect("consumer");
    let (_, high) = consumer
        .fetch_watermarks(&stack.topic, 0, Duration::from_secs(10))
        .expect("watermarks");
    assert_eq!(
        high as u64, accepted,
        "every accepted message is in the topic"
    );
}

/// A token in use keeps working at most the documented 5 s after its revocation (the token
/// cache's lifetime), then every request is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revoked_token_in_use_stops_within_the_cache_window() {
    use std::time::{Duration, Instant};
    let stack = Stack::new(1).await;
    let (ingest, url) = start_ingest(stack.ingest_settings()).await;
    let messages = format!("{url}/v1/messages");
    let (id, token) = create(&stack.pool, "default", &[Scope::Ingest], None)
        .await
        .expect("token");
    let send = |n: u32| {
        call(
            reqwest::Method::POST,
            &messages,
            Some(&token),
            Some(msg("081200000002", &format!("rv{n}"))),
        )
    };
    assert_eq!(send(0).await.0, 202, "the token works and is now cached");
    assert!(revoke(&stack.pool, &id).await.expect("revoke"));
    let revoked_at = Instant::now();
    let mut n = 1;
    let refused_after = loop {
        let status = send(n).await.0;
        if status == 401 {
            break revoked_at.elapsed();
        }
        assert_eq!(status, 202);
        assert!(
            revoked_at.elapsed() < Duration::from_secs(7),
            "a revoked token still works after the 5 s window"
        );
        n += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Once refused, refused for good.
    for m in 0..5 {
        assert_eq!(send(1000 + m).await.0, 401);
    }
    println!("revoked token refused after {refused_after:?}");
    ingest.stop().await;
}
