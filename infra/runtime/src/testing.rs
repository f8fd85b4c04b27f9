//! Integration-test support against the real local stack (PostgreSQL, Apache Kafka, the schema
//! registry) that `make test` starts: each test gets its own topics, database, consumer group
//! and state folder, so tests run in parallel. A missing stack is a failure, never a skip.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::time::Duration;

use funnel_schemas::ChatMessage;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::settings::{DatabaseSettings, KafkaSettings};

/// An environment variable `make test` exports; panics with what to do when it is missing.
pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the tests with `make test`, which starts the local stack and exports its settings")
    })
}

/// A loopback address with a free port.
pub fn free_addr() -> String {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    format!("127.0.0.1:{port}")
}

/// One test's share of the local stack.
pub struct TestStack {
    pub brokers: String,
    pub registry: String,
    pub database_url: String,
    pub topic: String,
    pub dlq: String,
    /// A name unique to the test: its database, consumer group and state folder.
    pub group: String,
    pub state_dir: PathBuf,
    pub pool: PgPool,
}

fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

impl TestStack {
    /// A fresh topic (and dead-letter topic) of `partitions`, and a fresh database with the
    /// migrations applied.
    pub async fn new(partitions: i32) -> TestStack {
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
        crate::db::migrate(&pool).await.expect("migrations");
        TestStack {
            brokers,
            registry,
            database_url,
            state_dir: std::env::temp_dir().join(&name),
            topic,
            dlq,
            group: name,
            pool,
        }
    }

    pub fn kafka(&self) -> KafkaSettings {
        KafkaSettings {
            brokers: self.brokers.clone(),
            registry_url: self.registry.clone(),
            topic_messages: self.topic.clone(),
            security: Default::default(),
            registry_auth: Default::default(),
        }
    }

    pub fn database(&self) -> DatabaseSettings {
        DatabaseSettings {
            url: self.database_url.clone(),
            migrate_on_start: false,
        }
    }

    /// Reads one record of the test's topic and decodes it with the registry's writer schema;
    /// also returns its headers.
    pub async fn read_record(
        &self,
        partition: i32,
        offset: i64,
    ) -> (ChatMessage, HashMap<String, String>) {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        use rdkafka::message::{Headers, Message};
        use rdkafka::{Offset, TopicPartitionList};
        let consumer: BaseConsumer =
            crate::kafka::consumer_config(&self.kafka(), &format!("{}-reader", self.group))
                .expect("kafka settings")
                .create()
                .expect("consumer");
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.topic, partition, Offset::Offset(offset))
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
        let mut cache = crate::registry::SchemaCache::new(&self.kafka()).expect("registry client");
        let decoder = cache.decoder(id).await.expect("writer schema");
        (decoder.decode(payload).expect("decode"), headers)
    }
}

/// A service running in this process until stopped.
pub struct Running {
    token: CancellationToken,
    handle: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Runs `service` (a `run(settings, shutdown)`) on the test's runtime.
    pub fn start<F>(service: impl FnOnce(CancellationToken) -> F) -> Running
    where
        F: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let token = CancellationToken::new();
        let handle = tokio::spawn(service(token.clone()));
        Running { token, handle }
    }

    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }

    /// Stops the service and checks it ran without error.
    pub async fn stop(self) {
        self.token.cancel();
        let res = tokio::time::timeout(Duration::from_secs(30), self.handle).await;
        res.expect("service stops in time")
            .expect("service task")
            .expect("service ran without error");
    }
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
