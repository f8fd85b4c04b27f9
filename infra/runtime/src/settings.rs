//! The settings every binary takes, declared once and flattened into each binary's own
//! `Settings`: defaults, then `FUNNEL_*`/`DATABASE_URL` environment variables, then flags. The
//! flags are global, so they may follow a subcommand (`funnel-processor replay --database-url
//! ...`).

use std::time::Duration;

use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

/// Where Kafka, its schema registry and the chat messages topic are.
#[derive(Debug, Clone, clap::Args)]
pub struct KafkaSettings {
    /// Kafka bootstrap servers
    #[arg(
        long = "kafka-brokers",
        env = "FUNNEL_KAFKA_BROKERS",
        default_value = "127.0.0.1:9092",
        global = true
    )]
    pub brokers: String,
    /// Base URL of a Confluent-compatible schema registry
    #[arg(
        long = "schema-registry-url",
        env = "FUNNEL_SCHEMA_REGISTRY_URL",
        default_value = "http://127.0.0.1:8081",
        global = true
    )]
    pub registry_url: String,
    /// Topic of chat messages
    #[arg(
        long,
        env = "FUNNEL_TOPIC_MESSAGES",
        default_value = "funnel.chat-messages",
        global = true
    )]
    pub topic_messages: String,
}

/// Where PostgreSQL is.
#[derive(Debug, Clone, clap::Args)]
pub struct DatabaseSettings {
    /// PostgreSQL connection URL (postgres://user:password@host:port/database)
    #[arg(
        long = "database-url",
        env = "DATABASE_URL",
        default_value = "",
        hide_default_value = true,
        global = true
    )]
    pub url: String,
}

impl DatabaseSettings {
    /// A pool of at most `max_connections`, each acquisition waiting at most `acquire_timeout`.
    pub async fn connect(
        &self,
        max_connections: u32,
        acquire_timeout: Duration,
    ) -> Result<PgPool, crate::db::DbError> {
        crate::db::connect(
            &self.url,
            PgPoolOptions::new()
                .max_connections(max_connections)
                .acquire_timeout(acquire_timeout),
        )
        .await
    }

    /// [`DatabaseSettings::connect`], then the migrations of `sql/` that are not applied yet.
    pub async fn connect_and_migrate(
        &self,
        max_connections: u32,
        acquire_timeout: Duration,
    ) -> Result<PgPool, crate::db::DbError> {
        let pool = self.connect(max_connections, acquire_timeout).await?;
        crate::db::migrate(&pool).await?;
        Ok(pool)
    }
}
