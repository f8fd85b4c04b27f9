//! Rule sets over HTTP (GET/PUT /v1/rules, GET /v1/rules.csv, POST /v1/classify) and a new
//! version reaching a running processor without a restart.

use funnel_ingest::auth::{create, Scope};
use serde_json::{json, Value};

use crate::harness::{eventually, start_ingest, start_processor, Stack};

async fn call(
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rule_sets_are_versioned_per_tenant_and_validated_whole() {
    let stack = Stack::new(1).await;
    let (ingest, url) = start_ingest(stack.ingest_settings()).await;
    let client = reqwest::Client::new();
    let rules_url = format!("{url}/v1/rules");
    let (_, acme_admin) = create(&stack.pool, "acme", &[Scope::Read, Scope::Admin], None)
        .await
        .expect("token");
    let (_, acme_reader) = create(&stack.pool, "acme", &[Scope::Read], None)
        .await
        .expect("token");

    // A tenant without a set of its own reads the default tenant's, marked inherited.
    let (status, body, _) = call(
        &client,
        reqwest::Method::GET,
        &rules_url,
        &acme_reader,
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["version"], 1);
    assert_eq!(body["tenant"], "default");
    assert_eq!(body["inherited"], true);
    assert_eq!(body["rules"].as_array().map(Vec::len), Some(13));

    // A reader may not replace rules.
    let set = json!([
        {"stage": "lead", "pattern": "minat"},
        {"id": "acme-pay", "stage": "transaction", "match": "regex", "pattern": "\\bdp\\b", "priority": 5},
        {"stage": "booking", "pattern": "jadwal", "channel": "WEBSITE", "direction": "inbound"}
    ]);
    let put = |token: &str, ctype: &str, body: String| {
        let client = client.clone();
        let (url, token, ctype) = (rules_url.clone(), token.to_string(), ctype.to_string());
        async move {
            call(
                &client,
                reqwest::Method::PUT,
                &url,
                &token,
                Some((&ctype, body)),
            )
            .await
        }
    };
    let (status, body, _) = put(&acme_reader, "application/json", set.to_string()).await;
    assert_eq!(status, 403, "{body}");

    // Every problem of a set is reported at once, with where it is; nothing is stored.
    let bad = json!([
        {"stage": "lead", "pattern": "!!!"},
        {"id": "x", "stage": "booking", "match": "regex", "pattern": "(unclosed"},
        {"id": "x", "stage": "booking", "pattern": "ok", "channel": "web site"}
    ]);
    let (status, body, _) = put(&acme_admin, "application/json", bad.to_string()).await;
    assert_eq!(status, 422, "{body}");
    let pointers: Vec<&str> = body["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .filter_map(|e| e["pointer"].as_str())
        .collect();
    assert_eq!(
        pointers,
        ["/0/pattern", "/1/pattern", "/2/id", "/2/channel"],
        "{body}"
    );

    // A valid set becomes a new version (versions are unique across tenants); ids are derived
    // where absent; channels are lower-cased.
    let (status, body, _) = put(&acme_admin, "application/json", set.to_string()).await;
    assert_eq!(status, 201, "{body}");
    let v2 = body["version"].as_i64().expect("version");
    assert!(v2 > 1, "{body}");
    assert_eq!(body["created"], true);
    // The same set again makes no new version.
    let (status, body, _) = put(&acme_admin, "application/json", set.to_string()).await;
    assert_eq!(
        (status, body["version"].as_i64()),
        (200, Some(v2)),
        "{body}"
    );
    assert_eq!(body["created"], false);

    let (status, body, _) = call(
        &client,
        reqwest::Method::GET,
        &rules_url,
        &acme_reader,
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["version"].as_i64(), &body["inherited"]),
        (Some(v2), &json!(false))
    );
    let ids: Vec<&str> = body["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .filter_map(|r| r["id"].as_str())
        .collect();
    assert_eq!(ids, ["lead-minat", "acme-pay", "booking-jadwal"]);
    assert_eq!(body["rules"][2]["channel"], "website");
    // The default tenant is untouched.
    let (_, body, _) = call(
        &client,
        reqwest::Method::GET,
        &rules_url,
        &stack.token,
        None,
    )
    .await;
    assert_eq!(body["version"], 1);

    // CSV round trip: what GET /v1/rules.csv gives, PUT accepts, and it is the same set.
    let (status, csv, version) = call(
        &client,
        reqwest::Method::GET,
        &format!("{url}/v1/rules.csv"),
        &acme_reader,
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(version, v2.to_string());
    let csv = csv.as_str().expect("csv text").to_string();
    assert!(
        csv.starts_with("id,stage,match,pattern,channel,direction,priority\n"),
        "{csv}"
    );
    let (status, body, _) = put(&acme_admin, "text/csv; charset=utf-8", csv.clone()).await;
    assert_eq!(
        (status, body["version"].as_i64()),
        (200, Some(v2)),
        "{body}"
    );

    // CSV problems point at the line.
    let bad_csv =
        "stage,match,pattern,channel,direction,priority\nlead,word,halo,,,\nbooking,regex,(,,,\n";
    let (status, body, _) = put(&acme_admin, "text/csv", bad_csv.into()).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["errors"][0]["pointer"], "/lines/3", "{body}");
    let bad_csv = "stage,pattern\nlead,halo\n";
    let (status, body, _) = put(&acme_admin, "text/csv", bad_csv.into()).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["errors"][0]["pointer"], "/lines/1", "{body}");

    // The dry run uses the tenant's active set.
    let classify = format!("{url}/v1/classify");
    let (status, body, _) = call(
        &client,
        reqwest::Method::POST,
        &classify,
        &acme_reader,
        Some((
            "application/json",
            json!({"text": "Minat! DP 350rb dulu, jadwal besok", "channel": "website"}).to_string(),
        )),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rule_set_version"].as_i64(), Some(v2));
    assert_eq!(body["stages"], json!(["lead", "booking", "transaction"]));
    assert_eq!(body["value"], "350000.00");
    assert_eq!(body["normalized_text"], "minat dp 350rb dulu jadwal besok");
    // Without the channel, the website-only booking rule does not match.
    let (_, body, _) = call(
        &client,
        reqwest::Method::POST,
        &classify,
        &acme_reader,
        Some((
            "application/json",
            json!({"text": "jadwal besok"}).to_string(),
        )),
    )
    .await;
    assert_eq!(body["stages"], json!([]), "{body}");
    // null is no channel or direction: the problem names the field.
    let (status, body, _) = call(
        &client,
        reqwest::Method::POST,
        &classify,
        &acme_reader,
        Some((
            "application/json",
            json!({"text": "halo", "direction": null}).to_string(),
        )),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["errors"][0]["pointer"], "/direction", "{body}");
    // The default tenant still classifies with version 1.
    let (_, body, _) = call(
        &client,
        reqwest::Method::POST,
        &classify,
        &stack.token,
        Some((
            "application/json",
            json!({"text": "Sudah transfer Rp 1.500.000,00", "channel": "direct"}).to_string(),
        )),
    )
    .await;
    assert_eq!(body["rule_set_version"], 1, "{body}");
    assert_eq!(
        body["hits"],
        json!([{"stage": "transaction", "rule_id": "trx-transfer", "value": "1500000.00"}])
    );
    assert_eq!(body["matched_rule_ids"], json!(["trx-transfer"]));

    ingest.stop().await;
}

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
