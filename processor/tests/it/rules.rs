//! A new rule set version reaching a running processor without a restart.

use serde_json::json;

use crate::harness::{call, eventually, start_ingest, start_processor, Stack};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_rule_set_reaches_the_running_processor() {
    let stack = Stack::new(2).await;
    let (ingest, url) = start_ingest(stack.ingest_settings()).await;
    let processor = start_processor(stack.processor_settings());
    let client = reqwest::Client::new();
    let send_as = |phone: &str, event_id: &str, text: &str| {
        let body = json!({"event_id": event_id, "phone": phone, "channel": "direct",
                          "text": text, "sent_at": "2026-11-20T10:00:00+07:00"});
        client
            .post(format!("{url}/v1/messages"))
            .bearer_auth(&stack.token)
            .json(&body)
            .send()
    };
    let send = |event_id: &str, text: &str| send_as("081255550000", event_id, text);
    let stage_of = |event_id: &'static str| {
        let pool = stack.pool.clone();
        move || {
            let pool = pool.clone();
            async move {
                sqlx::query_as::<_, (String, i64, String)>(
                    "SELECT stage, rule_set_version, rule_id FROM funnel_stage_events WHERE event_id = $1",
                )
                .bind(event_id)
                .fetch_optional(&pool)
                .await
                .expect("query")
            }
        }
    };
    assert_eq!(send("m-1", "saya minat").await.expect("send").status(), 202);
    // Another contact whose only message matches nothing under version 1.
    assert_eq!(
        send_as("081255550001", "y-1", "saya minat")
            .await
            .expect("send")
            .status(),
        202
    );
    assert_eq!(send("m-2", "info dong").await.expect("send").status(), 202);
    eventually(60, "m-2 classified under version 1", stage_of("m-2")).await;
    assert_eq!(
        stage_of("m-1")().await,
        None,
        "`minat` is no rule of version 1"
    );

    let (status, body, _) = call(
        &client,
        reqwest::Method::PUT,
        &format!("{url}/v1/rules"),
        &stack.token,
        Some((
            "text/csv",
            "stage,match,pattern,channel,direction,priority\nlead,word,minat,,inbound,1\n".into(),
        )),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let v2 = body["version"].as_i64().expect("version");
    // The processor polls every 500 ms here; give it a few polls, then send.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert_eq!(
        send("m-3", "masih minat").await.expect("send").status(),
        202
    );
    let (stage, version, rule) = eventually(60, "m-3 classified", stage_of("m-3")).await;
    assert_eq!(
        (stage.as_str(), version, rule.as_str()),
        ("lead", v2, "lead-minat")
    );
    // Earlier events keep the version that classified them.
    assert_eq!(
        stage_of("m-2")().await.map(|(_, v, r)| (v, r)),
        Some((1, "lead-info".to_string()))
    );

    // State rebuilt from the log after version 2 is active: y-1 keeps the classification it
    // was committed with (nothing), it is not reclassified by today's rules.
    processor.stop().await;
    std::fs::remove_dir_all(&stack.state_dir).expect("delete state");
    let processor = start_processor(stack.processor_settings());
    assert_eq!(
        send_as("081255550001", "y-2", "oke kak")
            .await
            .expect("send")
            .status(),
        202
    );
    let row = eventually(60, "y-2 folded into the rebuilt state", || {
        let pool = stack.pool.clone();
        async move {
            sqlx::query_as::<_, (Option<chrono::DateTime<chrono::Utc>>, i64)>(
                "SELECT lead_at, message_count FROM funnel_contacts WHERE phone = '+6281255550001'",
            )
            .fetch_optional(&pool)
            .await
            .expect("query")
            .filter(|(_, n)| *n == 2)
        }
    })
    .await;
    assert_eq!(
        row.0, None,
        "a rebuild must not reclassify y-1 with version 2"
    );
    processor.stop().await;
    ingest.stop().await;
}
