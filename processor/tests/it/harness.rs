//! Test harness: isolated topic + database per test, and the two services run in-process.

use std::net::TcpListener;
use std::path::PathBuf;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the tests with `make test`, which starts the local stack and exports its settings")
    })
}

pub struct Stack {
    pub brokers: String,
    pub registry: String,
    pub database_url: String,
    pub topic: String,
    pub dlq: String,
    pub group: String,
    pub state_dir: PathBuf,
    pub pool: PgPool,
    /// A token of tenant `default` with every scope.
    pub token: String,
}

fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

impl Stack {
    /// A fresh topic (and dead-letter topic), database and consumer group on the local stack.
    pub async fn new(partitions: i32) -> Stack {
        let brokers = env("FUNNEL_KAFKA_BROKERS");
        let registry = env("FUNNEL_SCHEMA_REGISTRY_URL");
        let base_url = env("DATABASE_URL");
        let name = unique("it");
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .create()
            .expect("admin client");
        let topic = format!("{name}.chat-messages");
        let dlq = format!("{name}.dlq");
        let topics = [
            NewTopic::new(&topic, partitions, TopicReplication::Fixed(1)),
            NewTopic::new(&dlq, partitions, TopicReplication::Fixed(1)),
        ];
        for r in admin
            .create_topics(&topics, &AdminOptions::new())
            .await
            .expect("create topics")
        {
            r.expect("topic created");
        }
        let admin_pool = PgPool::connect(&base_url)
            .await
            .expect("connect to DATABASE_URL");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&admin_pool)
            .await
            .expect("create database");
        admin_pool.close().await;
        let database_url = match base_url.rfind('/') {
            Some(i) => format!("{}/{name}", &base_url[..i]),
            None => panic!("DATABASE_URL has no database name"),
        };
        let pool = PgPool::connect(&database_url)
            .await
            .expect("connect to the test database");
        funnel_processor::MIGRATOR
            .run(&pool)
            .await
            .expect("migrations");
        let state_dir = std::env::temp_dir().join(&name);
        use funnel_ingest::auth::{create, Scope};
        let (_, token) = create(
            &pool,
            "default",
            &[Scope::Ingest, Scope::Read, Scope::Admin],
            Some("tests"),
        )
        .await
        .expect("create token");
        Stack {
            token,
            brokers,
            registry,
            database_url,
            topic,
            dlq,
            group: name.clone(),
            state_dir,
            pool,
        }
    }

    pub fn processor_settings(&self) -> funnel_processor::Settings {
        funnel_processor::Settings {
            kafka_brokers: self.brokers.clone(),
            schema_registry_url: self.registry.clone(),
            database_url: self.database_url.clone(),
            topic_messages: self.topic.clone(),
            topic_dlq: self.dlq.clone(),
            consumer_group: self.group.clone(),
            state_dir: self.state_dir.clone(),
            batch_max: 500,
            replay_batch_max: 500,
            batch_linger_ms: 20,
            rules_poll_ms: 500,
            dedup_window_hours: 168,
            http_addr: String::new(),
            instance_id: String::new(),
            co_partitioned_topics: vec![],
        }
    }

    pub fn ingest_settings(&self) -> funnel_ingest::Settings {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        funnel_ingest::Settings {
            http_addr: format!("127.0.0.1:{port}"),
            database_url: self.database_url.clone(),
            max_body_bytes: 16 * 1024 * 1024,
            max_text_bytes: 64 * 1024,
            max_metadata_entries: 32,
            max_batch: 1000,
            kafka_brokers: self.brokers.clone(),
            schema_registry_url: self.registry.clone(),
            topic_messages: self.topic.clone(),
            default_region: "ID".into(),
            produce_timeout_ms: 10_000,
            producer_linger_ms: 5,
            producer_queue_max: 10_000,
        }
    }
}

/// A service running in this process until stopped.
pub struct Running {
    token: CancellationToken,
    handle: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    pub async fn stop(self) {
        self.token.cancel();
        let res = tokio::time::timeout(Duration::from_secs(30), self.handle).await;
        res.expect("service stops in time")
            .expect("service task")
            .expect("service ran without error");
    }
}

pub fn start_processor(settings: funnel_processor::Settings) -> Running {
    let token = CancellationToken::new();
    let handle = tokio::spawn(funnel_processor::run(settings, token.clone()));
    Running { token, handle }
}

/// Starts ingest and waits until it answers.
pub async fn start_ingest(settings: funnel_ingest::Settings) -> (Running, String) {
    let url = format!("http://{}", settings.http_addr);
    let token = CancellationToken::new();
    let handle = tokio::spawn(funnel_ingest::run(settings, token.clone()));
    let client = reqwest::Client::new();
    for _ in 0..200 {
        if client
            .get(format!("{url}/health/live"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return (Running { token, handle }, url);
        }
        assert!(
            !handle.is_finished(),
            "funnel-ingest exited during start-up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("funnel-ingest did not answer at {url}");
}

/// Polls until `check` returns Some, or fails after `secs`.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Reads one record of the test's topic and decodes it with the registry's writer schema.
pub async fn read_record(
    stack: &Stack,
    partition: i32,
    offset: i64,
) -> (
    funnel_schemas::ChatMessage,
    std::collections::HashMap<String, String>,
) {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::{Headers, Message};
    use rdkafka::{Offset, TopicPartitionList};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &stack.brokers)
        .set("group.id", format!("{}-reader", stack.group))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&stack.topic, partition, Offset::Offset(offset))
        .expect("tpl");
    consumer.assign(&tpl).expect("assign");
    let (bytes, headers) =
        tokio::task::block_in_place(|| match consumer.poll(Duration::from_secs(30)) {
            Some(Ok(m)) => {
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                (
                                    h.key.to_string(),
                                    String::from_utf8_lossy(h.value.unwrap_or_default())
                                        .into_owned(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                (m.payload().expect("payload").to_vec(), headers)
            }
            Some(Err(e)) => panic!("consume: {e}"),
            None => panic!("no record at {partition}/{offset}"),
        });
    let (id, payload) = funnel_schemas::split_frame(&bytes).expect("frame");
    let mut cache =
        funnel_processor::registry::SchemaCache::new(&stack.registry).expect("registry client");
    let decoder = cache.decoder(id).await.expect("writer schema");
    (decoder.decode(payload).expect("decode"), headers)
}
