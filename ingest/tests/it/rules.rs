//! Rule sets over HTTP (GET/PUT /v1/rules, GET /v1/rules.csv, POST /v1/classify).

use funnel_http::queries::tokens::{create, Scope};
use serde_json::json;

use crate::harness::{call, start_ingest, Stack};

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

    // A tenant without a set of its own reads the built-in starter set, marked inherited.
    let (status, body, _) = call(
        &client,
        reqwest::Method::GET,
        &rules_url,
        &acme_reader,
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["tenant"], "_builtin");
    assert_eq!(body["inherited"], true);
    assert_eq!(body["created_by"], "migration");
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
