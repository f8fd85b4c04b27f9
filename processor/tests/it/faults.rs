//! Traffic shapes that break naive sinks: one event id sent many times at once, and one contact
//! many times inside one batch (with copies), out of order.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rust_decimal::Decimal;
use serde_json::json;

use crate::harness::{eventually, start_ingest, start_processor, Stack};

type Row = (
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
    Decimal,
    i32,
    i64,
);

async fn row(stack: &Stack, phone: &str) -> Option<Row> {
    sqlx::query_as(
        "SELECT lead_at, booking_at, transaction_at, transaction_value, transaction_count, message_count
           FROM funnel_contacts WHERE phone = $1",
    )
    .bind(phone)
    .fetch_optional(&stack.pool)
    .await
    .expect("query")
}

async fn committed(stack: &Stack) -> i64 {
    sqlx::query_scalar(
        "SELECT COALESCE(sum(next_offset), 0)::bigint FROM funnel_sink_offsets WHERE consumer_group = $1",
    )
    .bind(&stack.group)
    .fetch_one(&stack.pool)
    .await
    .expect("offsets")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_event_sent_many_times_at_once_counts_once() {
    let stack = Stack::new(3).await;
    let (ingest, url) = start_ingest(stack.ingest_settings()).await;
    let processor = start_processor(stack.processor_settings());
    let client = reqwest::Client::new();
    // 40 concurrent copies of one webhook, the phone typed four ways.
    let phones = [
        "0812-7777-0001",
        "+62 812 7777 0001",
        "6281277770001",
        "081277770001",
    ];
    let sends = (0..40).map(|i| {
        let body = json!({"event_id": "same-1", "phone": phones[i % 4], "channel": "ads",
                          "text": "sudah transfer Rp 250.000", "sent_at": "2026-11-20T10:00:00+07:00"});
        client
            .post(format!("{url}/v1/messages"))
            .bearer_auth(&stack.token)
            .json(&body)
            .send()
    });
    for res in futures::future::join_all(sends).await {
        assert_eq!(res.expect("send").status(), 202);
    }
    eventually(60, "all 40 copies to be consumed", || async {
        (committed(&stack).await == 40).then_some(())
    })
    .await;
    let (_, _, trx_at, value, count, messages) = row(&stack, "+6281277770001")
        .await
        .expect("the contact's row");
    assert!(trx_at.is_some());
    assert_eq!((value, count, messages), (Decimal::from(250_000), 1, 1));
    let events: i64 =
        sqlx::query_scalar("SELECT count(*) FROM funnel_stage_events WHERE event_id = 'same-1'")
            .fetch_one(&stack.pool)
            .await
            .expect("count");
    assert_eq!(events, 1);
    processor.stop().await;
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_contact_many_times_in_one_batch_folds_like_any_order() {
    let stack = Stack::new(1).await;
    let schema_id = funnel_runtime::registry::register_schema(&stack.kafka())
        .await
        .expect("register");
    let phone = "+6281288880002";
    let base = Utc
        .with_ymd_and_hms(2026, 11, 1, 3, 0, 0)
        .single()
        .expect("time");
    let message = |i: i64| {
        let text = match i % 20 {
            0 | 10 => "info promo dong",
            5 | 15 => "mau booking",
            7 => "sudah transfer Rp 100.000",
            _ => "ok kak",
        };
        funnel_schemas::ChatMessage {
            event_id: format!("hot-{i}"),
            tenant: "default".into(),
            phone: phone.into(),
            channel: if i == 40 { "ads" } else { "direct" }.into(),
            direction: funnel_schemas::Direction::Inbound,
            text: text.into(),
            sent_at: (base + chrono::Duration::minutes(i)).timestamp_millis(),
            received_at: base.timestamp_millis(),
            conversation_id: None,
            campaign: None,
            source: None,
            metadata: Default::default(),
            ..Default::default()
        }
    };
    // 200 messages, each twice, newest first: one batch holds the contact 400 times.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &stack.brokers)
        .create()
        .expect("producer");
    for i in (0..200).rev() {
        let value = funnel_schemas::encode(schema_id, &message(i)).expect("encode");
        for _ in 0..2 {
            producer
                .send(
                    FutureRecord::to(&stack.topic).key(phone).payload(&value),
                    Duration::from_secs(10),
                )
                .await
                .expect("produce");
        }
    }
    let mut settings = stack.processor_settings();
    settings.batch_max = 1000;
    settings.batch_linger_ms = 500;
    let processor = start_processor(settings);
    eventually(60, "the 400 records to be consumed", || async {
        (committed(&stack).await == 400).then_some(())
    })
    .await;
    let got = row(&stack, phone).await.expect("the contact's row");
    assert_eq!(
        got,
        (
            Some(base),
            Some(base + chrono::Duration::minutes(5)),
            Some(base + chrono::Duration::minutes(7)),
            Decimal::from(1_000_000),
            10,
            200
        )
    );
    let channel: Option<String> =
        sqlx::query_scalar("SELECT channel FROM funnel_contacts WHERE phone = $1")
            .bind(phone)
            .fetch_one(&stack.pool)
            .await
            .expect("channel");
    assert_eq!(
        channel.as_deref(),
        Some("direct"),
        "the earliest lead's channel, not the last seen"
    );
    processor.stop().await;
}
