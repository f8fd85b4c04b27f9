//! A generated dataset through the real stack, checked against the reference fold: two
//! tenants, duplicates, late and out-of-order events, phone-format variants and invalid bodies,
//! half sent in batches over HTTP and half produced straight to Kafka.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use funnel_loadtest::generate::{self, Expect, GenConfig};
use funnel_loadtest::send::{self, SendOptions, Target};
use funnel_loadtest::verify;
use funnel_schemas::rules::{rules_from_csv, Rule};

use crate::harness::{start_ingest, start_processor, Stack};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn generated_traffic_ends_as_the_oracle_says() {
    let stack = Stack::new(12).await;
    let processor = start_processor(stack.processor_settings());
    let (ingest, url) = start_ingest(stack.ingest_settings()).await;
    let (_, token2) = funnel_http::queries::tokens::create(
        &stack.pool,
        "tenant-2",
        &[funnel_http::queries::tokens::Scope::Ingest],
        Some("oracle test"),
    )
    .await
    .expect("token of tenant-2");

    let traffic = generate::generate(&GenConfig {
        seed: 2026,
        contacts: 120,
        tenants: 2,
        ..GenConfig::default()
    });
    let expected =
        funnel_loadtest::expect(&traffic.messages, generate::DEFAULT_RULES_CSV).expect("oracle");
    let (first, second) = traffic.messages.split_at(traffic.messages.len() / 2);
    let http = SendOptions {
        target: Target::Batch {
            url: url.clone(),
            size: 50,
        },
        tokens: BTreeMap::from([
            ("default".to_string(), stack.token.clone()),
            ("tenant-2".to_string(), token2),
        ]),
        rate: 0.0,
        duration: None,
        concurrency: 4,
        retries: 5,
        progress: false,
    };
    let report = send::send(first, &http).await.expect("send over HTTP");
    println!("http: {}", report.summary());
    let kafka = SendOptions {
        target: Target::Kafka(Box::new(stack.kafka())),
        concurrency: 8,
        ..http.clone()
    };
    let report2 = send::send(second, &kafka).await.expect("send to Kafka");
    println!("kafka: {}", report2.summary());
    for r in [&report, &report2] {
        assert_eq!((r.failed, r.unexpected), (0, 0), "{}", r.summary());
    }
    let rejects = traffic
        .messages
        .iter()
        .filter(|m| m.expect == Expect::Reject)
        .count() as u64;
    assert_eq!(report.rejected + report2.rejected, rejects);
    assert!(rejects > 0 && report.status_2xx > 0);

    let tenants = funnel_loadtest::tenants(&traffic.messages);
    let deadline = Instant::now() + Duration::from_secs(120);
    let report = loop {
        let actual = verify::load(&stack.pool, &tenants)
            .await
            .expect("load rows");
        let report = verify::compare(&expected, &actual);
        if report.is_equal() || Instant::now() > deadline {
            break report;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    println!("{}", report.render(20));
    assert!(report.is_equal(), "{}", report.render(20));
    assert_eq!(report.equal_rows, expected.rows.len());

    // The check can fail: one planted difference is found and named.
    let (tenant, phone) = expected.rows.keys().next().cloned().expect("a row");
    sqlx::query("UPDATE funnel_contacts SET message_count = message_count + 1 WHERE tenant = $1 AND phone = $2")
        .bind(&tenant)
        .bind(&phone)
        .execute(&stack.pool)
        .await
        .expect("plant a difference");
    let actual = verify::load(&stack.pool, &tenants)
        .await
        .expect("load rows");
    let planted = verify::compare(&expected, &actual);
    assert!(!planted.is_equal());
    assert!(
        planted
            .render(5)
            .contains(&format!("differs  {tenant}/{phone} message_count")),
        "{}",
        planted.render(5)
    );

    ingest.stop().await;
    processor.stop().await;
}

/// The generator writes texts for the rules every new database starts with.
#[tokio::test]
async fn generator_rules_are_the_databases_first_rule_set() {
    let stack = Stack::new(1).await;
    let book = funnel_processor::rulebook::Rulebook::load(&stack.pool)
        .await
        .expect("rule sets");
    let active = book.for_tenant("default");
    assert_eq!(active.version(), 1);
    let db: Vec<Rule> = active.rules().to_vec();
    let csv = rules_from_csv(generate::DEFAULT_RULES_CSV).expect("csv");
    let key = |r: &Rule| {
        (
            r.stage,
            r.match_kind as u8,
            r.pattern.clone(),
            r.channel.clone(),
            r.direction,
            r.priority,
        )
    };
    assert_eq!(
        db.iter().map(key).collect::<Vec<_>>(),
        csv.iter().map(key).collect::<Vec<_>>()
    );
}
