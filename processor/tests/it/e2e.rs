//! One message path end to end: HTTP -> Kafka (Avro, registry id) -> processor -> PostgreSQL.

use std::time::Duration;

use chrono::{DateTime, Utc};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rust_decimal::Decimal;
use serde_json::json;

use crate::harness::{eventually, start_ingest, start_processor, Stack};

#[derive(Debug, PartialEq, sqlx::FromRow)]
struct Row {
    phone: String,
    lead_at: Option<DateTime<Utc>>,
    channel: Option<String>,
    campaign: Option<String>,
    booking_at: Option<DateTime<Utc>>,
    transaction_at: Option<DateTime<Utc>>,
    transaction_value: Decimal,
    transaction_count: i32,
    message_count: i64,
    rule_set_version: Option<i64>,
}

async fn rows(stack: &Stack) -> Vec<Row> {
    sqlx::query_as(
        "SELECT phone, lead_at, channel, campaign, booking_at, transaction_at, transaction_value,
                transaction_count, message_count, rule_set_version
           FROM funnel_contacts ORDER BY phone",
    )
    .fetch_all(&stack.pool)
    .await
    .expect("query funnel_contacts")
}

async fn processed(stack: &Stack) -> i64 {
    sqlx::query_scalar("SELECT coalesce(sum(next_offset), 0)::bigint FROM funnel_sink_offsets WHERE consumer_group = $1")
        .bind(&stack.group)
        .fetch_one(&stack.pool)
        .await
        .expect("query offsets")
}

/// A client that sends the token on every request.
fn authorized(token: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse().expect("header value"),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .expect("client")
}

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("timestamp")
        .with_timezone(&Utc)
}

async fn post(
    client: &reqwest::Client,
    url: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let res = client
        .post(format!("{url}/v1/messages"))
        .json(&body)
        .send()
        .await
        .expect("POST /v1/messages");
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(serde_json::Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http_messages_become_funnel_rows_exactly_once() {
    let stack = Stack::new(4).await;
    let (ingest, url) = start_ingest(stack.ingest_settings()).await;
    let processor = start_processor(stack.processor_settings());
    let client = authorized(&stack.token);
    let ready = client
        .get(format!("{url}/health/ready"))
        .send()
        .await
        .expect("GET /health/ready");
    assert_eq!(ready.status(), 200);
    assert_eq!(
        ready.json::<serde_json::Value>().await.expect("json"),
        json!({"kafka": true, "postgres": true})
    );

    // Contact A: lead on ads, then a booking, then a payment; the lead arrives last
    // (out of order) and the payment twice (a retried webhook).
    let a = [
        json!({"event_id": "a-2", "phone": "0812-1111-2222", "channel": "ads", "text": "Mau booking hari Sabtu", "sent_at": "2026-11-02T10:00:00+07:00"}),
        json!({"event_id": "a-3", "phone": "+62 812 1111 2222", "channel": "direct", "text": "Sudah transfer Rp 1.500.000 ya", "sent_at": "2026-11-03T09:00:00+07:00"}),
        json!({"event_id": "a-3", "phone": "6281211112222", "channel": "direct", "text": "Sudah transfer Rp 1.500.000 ya", "sent_at": "2026-11-03T09:00:00+07:00"}),
        json!({"event_id": "a-1", "phone": "081211112222", "channel": "ADS", "text": "Halo, info promo dong", "sent_at": "2026-11-01T08:00:00+07:00", "campaign": "ramadan"}),
        json!({"event_id": "a-4", "phone": "081211112222", "channel": "website", "direction": "outbound", "text": "info promo lain ya kak", "sent_at": "2026-10-30T08:00:00+07:00"}),
    ];
    // Contact B: a payment without any lead, with a value in "jt"; no event id (derived).
    let b = [
        json!({"phone": "+6281333334444", "channel": "direct", "text": "lunas 1,2jt", "sent_at": "2026-11-05T12:00:00Z"}),
    ];
    let mut accepted = 0;
    for m in a.iter().chain(b.iter()) {
        let (status, body) = post(&client, &url, m.clone()).await;
        assert_eq!(status, 202, "accepted: {body}");
        assert!(
            body["partition"].as_i64().is_some() && body["offset"].as_i64().is_some(),
            "{body}"
        );
        accepted += 1;
    }
    // The same message without an id twice gets the same derived id.
    let (_, again) = post(&client, &url, b[0].clone()).await;
    accepted += 1;
    let (_, first) = post(&client, &url, b[0].clone()).await;
    accepted += 1;
    assert_eq!(again["event_id"], first["event_id"]);
    assert!(again["event_id"]
        .as_str()
        .is_some_and(|s| s.starts_with("sha256-")));

    // Invalid input: 422 with every bad field, and nothing produced.
    let (status, problem) = post(
        &client,
        &url,
        json!({"phone": "12", "channel": "no spaces", "text": "x", "sent_at": "kemarin"}),
    )
    .await;
    assert_eq!(status, 422);
    let pointers: Vec<&str> = problem["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .filter_map(|e| e["pointer"].as_str())
        .collect();
    assert_eq!(pointers, ["/phone", "/channel", "/sent_at"], "{problem}");

    eventually(
        60,
        "the processor to consume every accepted message",
        || async { (processed(&stack).await == accepted).then_some(()) },
    )
    .await;
    let got = rows(&stack).await;
    let want = vec![
        Row {
            phone: "+6281211112222".into(),
            lead_at: Some(t("2026-11-01T08:00:00+07:00")),
            channel: Some("ads".into()),
            campaign: Some("ramadan".into()),
            booking_at: Some(t("2026-11-02T10:00:00+07:00")),
            transaction_at: Some(t("2026-11-03T09:00:00+07:00")),
            transaction_value: Decimal::new(1_500_000, 0),
            transaction_count: 1,
            // a-1, a-2, a-3 (twice), a-4: the outbound a-4 does not make a lead (inbound-only rule)
            message_count: 4,
            rule_set_version: Some(1),
        },
        Row {
            phone: "+6281333334444".into(),
            lead_at: None,
            channel: None,
            campaign: None,
            booking_at: None,
            transaction_at: Some(t("2026-11-05T12:00:00Z")),
            transaction_value: Decimal::new(1_200_000, 0),
            transaction_count: 1,
            message_count: 1,
            rule_set_version: Some(1),
        },
    ];
    assert_eq!(got, want);
    let stage_events: i64 = sqlx::query_scalar("SELECT count(*) FROM funnel_stage_events")
        .fetch_one(&stack.pool)
        .await
        .expect("count stage events");
    assert_eq!(
        stage_events, 4,
        "lead a-1, booking a-2, transaction a-3, transaction of b"
    );

    // Restart with the RocksDB state deleted: the processor must rebuild it from the topic,
    // not start from nothing (which would make contact A's next message its only one).
    processor.stop().await;
    std::fs::remove_dir_all(&stack.state_dir).expect("delete state");
    let processor = start_processor(stack.processor_settings());
    let (status, _) = post(
        &client,
        &url,
        json!({"event_id": "a-5", "phone": "081211112222", "channel": "direct", "text": "lunas 350rb", "sent_at": "2026-11-06T09:00:00+07:00"}),
    )
    .await;
    assert_eq!(status, 202);
    accepted += 1;
    eventually(60, "the restarted processor to catch up", || async {
        (processed(&stack).await == accepted).then_some(())
    })
    .await;
    let a_row = rows(&stack).await.into_iter().next().expect("contact A");
    assert_eq!(a_row.message_count, 5);
    assert_eq!(a_row.transaction_count, 2);
    assert_eq!(a_row.transaction_value, Decimal::new(1_850_000, 0));
    assert_eq!(a_row.lead_at, Some(t("2026-11-01T08:00:00+07:00")));

    processor.stop().await;
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn poison_messages_go_to_the_dead_letter_topic_and_the_offset_moves_on() {
    let stack = Stack::new(1).await;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &stack.brokers)
        .create()
        .expect("producer");
    let send = |key: &'static str, value: Vec<u8>| {
        let producer = producer.clone();
        let topic = stack.topic.clone();
        async move {
            producer
                .send(
                    FutureRecord::to(&topic).key(key).payload(&value),
                    Duration::from_secs(10),
                )
                .await
                .expect("produce");
        }
    };
    send("+6281200000001", b"not avro at all".to_vec()).await;
    send("+6281200000001", vec![0, 0x7f, 0xff, 0xff, 0xf0, 1, 2, 3]).await; // unknown schema id
                                                                            // A valid record produced with the registry's id, as an integration would.
    let schema_id = funnel_runtime::registry::register_schema(&stack.kafka())
        .await
        .expect("register");
    let good = funnel_schemas::ChatMessage {
        event_id: "good-1".into(),
        tenant: "default".into(),
        phone: "+6281200000001".into(),
        channel: "website".into(),
        direction: funnel_schemas::Direction::Inbound,
        text: "harga paket berapa?".into(),
        sent_at: 1_700_000_000_000,
        received_at: 1_700_000_000_000,
        conversation_id: None,
        campaign: None,
        source: None,
        metadata: Default::default(),
        ..Default::default()
    };
    send(
        "+6281200000001",
        funnel_schemas::encode(schema_id, &good).expect("encode"),
    )
    .await;
    // Key differs from the phone: would split the contact across partitions.
    send(
        "someone-else",
        funnel_schemas::encode(schema_id, &good).expect("encode"),
    )
    .await;

    let mut settings = stack.processor_settings();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    settings.http_addr = format!("127.0.0.1:{port}");
    let processor = start_processor(settings);
    eventually(60, "all four offsets to be stored", || async {
        (processed(&stack).await == 4).then_some(())
    })
    .await;
    let got = rows(&stack).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].channel.as_deref(), Some("website"));

    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &stack.brokers)
        .set("group.id", format!("{}-dlq-reader", stack.group))
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    consumer.subscribe(&[&stack.dlq]).expect("subscribe");
    let mut dead = Vec::new();
    while dead.len() < 3 {
        let m = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .expect("dead letters arrive")
            .expect("consume");
        let headers = m.headers().expect("dead letters carry headers");
        let header = |name: &str| {
            headers
                .iter()
                .find(|h| h.key == name)
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        assert_eq!(
            header("funnel.source.topic").as_deref(),
            Some(stack.topic.as_str())
        );
        assert_eq!(header("funnel.source.partition").as_deref(), Some("0"));
        dead.push((
            header("funnel.source.offset").expect("offset header"),
            header("funnel.error").expect("error header"),
        ));
    }
    dead.sort();
    assert_eq!(dead[0].0, "0");
    assert!(dead[0].1.contains("magic byte"), "{:?}", dead[0]);
    assert_eq!(dead[1].0, "1");
    assert!(dead[1].1.contains("schema id"), "{:?}", dead[1]);
    assert_eq!(dead[2].0, "3");
    assert!(dead[2].1.contains("key"), "{:?}", dead[2]);

    // `funnel-processor dlq list` shows the three, none redriven yet.
    let settings = stack.processor_settings();
    let listed = funnel_processor::dlq::list(&settings, 100)
        .await
        .expect("dlq list");
    let mut sources: Vec<(Option<i64>, bool)> = listed
        .iter()
        .map(|e| (e.source_offset, e.redriven))
        .collect();
    sources.sort();
    assert_eq!(
        sources,
        [(Some(0), false), (Some(1), false), (Some(3), false)]
    );
    assert!(listed
        .iter()
        .all(|e| e.source_topic == stack.topic && e.value_bytes > 0));
    // A dry run sends nothing; a redrive sends the three back to the source topic once.
    let dry = funnel_processor::dlq::redrive(&settings, true)
        .await
        .expect("dry run");
    assert_eq!(dry.redriven.get(&stack.topic), Some(&3));
    let done = funnel_processor::dlq::redrive(&settings, false)
        .await
        .expect("redrive");
    assert_eq!(done.redriven.get(&stack.topic), Some(&3));
    // Still poison (nothing was fixed), so they come back as new dead letters after their
    // redriven copies were read: the offsets move over all seven records.
    eventually(60, "the redriven copies to be processed", || async {
        (processed(&stack).await == 7).then_some(())
    })
    .await;
    let listed = eventually(60, "three new dead letters", || async {
        let l = funnel_processor::dlq::list(&settings, 100)
            .await
            .expect("list");
        (l.len() == 6).then_some(l)
    })
    .await;
    let mut flags: Vec<(Option<i64>, bool)> = listed
        .iter()
        .map(|e| (e.source_offset, e.redriven))
        .collect();
    flags.sort();
    assert_eq!(
        flags,
        [
            (Some(0), true),
            (Some(1), true),
            (Some(3), true),
            (Some(4), false),
            (Some(5), false),
            (Some(6), false)
        ]
    );
    // Nothing new was redriven twice, and the good contact is unchanged.
    let again = funnel_processor::dlq::redrive(&settings, true)
        .await
        .expect("dry run");
    assert_eq!(
        again.redriven.get(&stack.topic),
        Some(&3),
        "only the new ones"
    );
    assert_eq!(rows(&stack).await, got);

    // The processor's metrics count what happened, and its lag reaches 0.
    let metric = |text: &str, name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
    };
    let text = eventually(60, "lag 0 in the metrics", || async {
        let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        (metric(&text, "funnel_processor_lag_messages{partition=\"0\"}") == Some(0.0))
            .then_some(text)
    })
    .await;
    assert_eq!(
        metric(&text, "funnel_processor_messages_consumed_total"),
        Some(7.0)
    );
    assert_eq!(
        metric(&text, "funnel_processor_dead_letters_total"),
        Some(6.0)
    );
    assert_eq!(
        metric(&text, "funnel_processor_stage_events_total{stage=\"lead\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &text,
            "funnel_processor_rebalances_total{kind=\"assigned\"}"
        ),
        Some(1.0)
    );
    let ready = reqwest::get(format!("http://127.0.0.1:{port}/health/ready"))
        .await
        .expect("ready");
    assert_eq!(ready.status(), 200);
    processor.stop().await;
}

/// Configuration the processor cannot work with stops it at start with what to fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn misconfigured_topics_and_registry_stop_the_processor_at_start() {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let stack = Stack::new(2).await;
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &stack.brokers)
        .create()
        .expect("admin");
    let other = format!("{}.commerce", stack.group);
    for r in admin
        .create_topics(
            &[NewTopic::new(&other, 3, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .expect("create topic")
    {
        r.expect("topic created");
    }
    let fails = |settings: funnel_processor::Settings| async move {
        let run = funnel_processor::run(settings, tokio_util::sync::CancellationToken::new());
        let res = tokio::time::timeout(Duration::from_secs(60), run)
            .await
            .expect("the processor stops by itself");
        format!("{:#}", res.expect_err("the processor refuses to start"))
    };

    let mut settings = stack.processor_settings();
    settings.co_partitioned_topics = vec![other.clone()];
    let err = fails(settings).await;
    assert!(
        err.contains("co-partitioned") && err.contains(&other) && err.contains("3 partitions"),
        "{err}"
    );

    let mut settings = stack.processor_settings();
    settings.kafka.topic_messages = format!("{}.missing", stack.group);
    let err = fails(settings).await;
    assert!(err.contains("does not exist"), "{err}");

    let mut settings = stack.processor_settings();
    settings.kafka.registry_url = "http://127.0.0.1:9".into();
    let err = fails(settings).await;
    assert!(err.contains("FUNNEL_SCHEMA_REGISTRY_URL"), "{err}");

    // A registry that accepts connections and never answers: the start gives up (three
    // requests of 10 s) rather than waiting for ever.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = silent.local_addr().expect("addr");
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in silent.incoming().flatten() {
            held.push(conn);
        }
    });
    let mut settings = stack.processor_settings();
    settings.kafka.registry_url = format!("http://{addr}");
    let err = fails(settings).await;
    assert!(
        err.contains("FUNNEL_SCHEMA_REGISTRY_URL") && err.contains("3 attempts"),
        "{err}"
    );

    // The sink was built on 2 partitions; pretend the topic had 4 when it started.
    sqlx::query(
        "INSERT INTO funnel_sink_topics (consumer_group, topic, partitions) VALUES ($1, $2, 4)
         ON CONFLICT (consumer_group, topic) DO UPDATE SET partitions = 4",
    )
    .bind(&stack.group)
    .bind(&stack.topic)
    .execute(&stack.pool)
    .await
    .expect("update");
    let err = fails(stack.processor_settings()).await;
    assert!(err.contains("was built on 4"), "{err}");
}

/// A copy of a message produced long after it (an import, a direct producer sending again, with
/// the original's times) after many newer messages of the contact: one event. Before, ids left
/// the state after a 7-day window and such a copy counted twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_copy_produced_a_year_later_counts_once() {
    let stack = Stack::new(2).await;
    let producer: FutureProducer = funnel_runtime::kafka::producer_config(&stack.kafka())
        .expect("kafka settings")
        .create()
        .expect("producer");
    let schema_id = funnel_runtime::registry::register_schema(&stack.kafka())
        .await
        .expect("register");
    let day = 86_400_000i64;
    let message = |id: String, received_at: i64| funnel_schemas::ChatMessage {
        event_id: id,
        tenant: "default".into(),
        phone: "+6281200000077".into(),
        channel: "direct".into(),
        text: "halo kak".into(),
        sent_at: 1_700_000_000_000,
        received_at,
        ..Default::default()
    };
    let mut records = vec![message("first".into(), 1_700_000_000_000)];
    records.extend((0..300).map(|i| message(format!("newer-{i}"), 1_700_000_000_000 + i * day)));
    records.push(message("first".into(), 1_700_000_000_000 + 365 * day));
    for m in &records {
        producer
            .send(
                FutureRecord::to(&stack.topic)
                    .key(&m.phone)
                    .payload(&funnel_schemas::encode(schema_id, m).expect("encode")),
                Duration::from_secs(10),
            )
            .await
            .expect("produce");
    }
    let processor = start_processor(stack.processor_settings());
    eventually(90, "every record to be applied", || async {
        (processed(&stack).await == records.len() as i64).then_some(())
    })
    .await;
    let got = rows(&stack).await;
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].message_count, 301,
        "the copy is one event with its original"
    );
    processor.stop().await;
}
