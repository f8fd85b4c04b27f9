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
    #[command(flatten)]
    pub security: KafkaSecurity,
    #[command(flatten)]
    pub registry_auth: RegistryAuth,
}

/// How every Kafka client of Funnel authenticates and encrypts (docs/security.md).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct KafkaSecurity {
    /// Kafka security protocol: plaintext, ssl, sasl_plaintext or sasl_ssl
    #[arg(
        long = "kafka-security-protocol",
        env = "FUNNEL_KAFKA_SECURITY_PROTOCOL",
        value_enum,
        ignore_case = true,
        default_value_t = SecurityProtocol::Plaintext,
        global = true
    )]
    pub protocol: SecurityProtocol,
    /// SASL mechanism (with sasl_plaintext or sasl_ssl): SCRAM-SHA-512, SCRAM-SHA-256 or PLAIN
    #[arg(
        long = "kafka-sasl-mechanism",
        env = "FUNNEL_KAFKA_SASL_MECHANISM",
        value_enum,
        ignore_case = true,
        default_value_t = SaslMechanism::ScramSha512,
        global = true
    )]
    pub sasl_mechanism: SaslMechanism,
    /// SASL user name
    #[arg(
        long = "kafka-sasl-username",
        env = "FUNNEL_KAFKA_SASL_USERNAME",
        global = true
    )]
    pub sasl_username: Option<String>,
    /// SASL password (prefer the _FILE form: the environment of a process can be read by others)
    #[arg(
        long = "kafka-sasl-password",
        env = "FUNNEL_KAFKA_SASL_PASSWORD",
        hide_env_values = true,
        value_parser = secret,
        global = true
    )]
    pub sasl_password: Option<Secret>,
    /// A file holding the SASL password
    #[arg(
        long = "kafka-sasl-password-file",
        env = "FUNNEL_KAFKA_SASL_PASSWORD_FILE",
        value_parser = secret_file,
        conflicts_with = "sasl_password",
        global = true
    )]
    pub sasl_password_file: Option<Secret>,
    /// CA certificates (PEM) the brokers' certificates are checked against (ssl, sasl_ssl);
    /// default: the system's
    #[arg(
        long = "kafka-ssl-ca-location",
        env = "FUNNEL_KAFKA_SSL_CA_LOCATION",
        global = true
    )]
    pub ssl_ca_location: Option<String>,
    /// Client certificate (PEM), for brokers that require mutual TLS
    #[arg(
        long = "kafka-ssl-certificate-location",
        env = "FUNNEL_KAFKA_SSL_CERTIFICATE_LOCATION",
        requires = "ssl_key_location",
        global = true
    )]
    pub ssl_certificate_location: Option<String>,
    /// The client certificate's private key (PEM)
    #[arg(
        long = "kafka-ssl-key-location",
        env = "FUNNEL_KAFKA_SSL_KEY_LOCATION",
        requires = "ssl_certificate_location",
        global = true
    )]
    pub ssl_key_location: Option<String>,
    /// A file holding the private key's password, if it has one
    #[arg(
        long = "kafka-ssl-key-password-file",
        env = "FUNNEL_KAFKA_SSL_KEY_PASSWORD_FILE",
        value_parser = secret_file,
        global = true
    )]
    pub ssl_key_password_file: Option<Secret>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum SecurityProtocol {
    #[default]
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl SecurityProtocol {
    /// librdkafka's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Plaintext => "plaintext",
            Self::Ssl => "ssl",
            Self::SaslPlaintext => "sasl_plaintext",
            Self::SaslSsl => "sasl_ssl",
        }
    }
    pub fn sasl(self) -> bool {
        matches!(self, Self::SaslPlaintext | Self::SaslSsl)
    }
    pub fn tls(self) -> bool {
        matches!(self, Self::Ssl | Self::SaslSsl)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SaslMechanism {
    #[default]
    #[value(name = "SCRAM-SHA-512")]
    ScramSha512,
    #[value(name = "SCRAM-SHA-256")]
    ScramSha256,
    #[value(name = "PLAIN")]
    Plain,
}

impl SaslMechanism {
    /// librdkafka's (and Kafka's) name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ScramSha512 => "SCRAM-SHA-512",
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::Plain => "PLAIN",
        }
    }
}

/// Basic authentication for the schema registry.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RegistryAuth {
    /// Schema registry user name (HTTP basic authentication)
    #[arg(
        long = "schema-registry-username",
        env = "FUNNEL_SCHEMA_REGISTRY_USERNAME",
        global = true
    )]
    pub registry_username: Option<String>,
    /// Schema registry password
    #[arg(
        long = "schema-registry-password",
        env = "FUNNEL_SCHEMA_REGISTRY_PASSWORD",
        hide_env_values = true,
        value_parser = secret,
        requires = "registry_username",
        global = true
    )]
    pub registry_password: Option<Secret>,
    /// A file holding the schema registry password
    #[arg(
        long = "schema-registry-password-file",
        env = "FUNNEL_SCHEMA_REGISTRY_PASSWORD_FILE",
        value_parser = secret_file,
        conflicts_with = "registry_password",
        requires = "registry_username",
        global = true
    )]
    pub registry_password_file: Option<Secret>,
}

impl RegistryAuth {
    pub fn password(&self) -> Option<&str> {
        self.registry_password
            .as_ref()
            .or(self.registry_password_file.as_ref())
            .map(Secret::expose)
    }
}

impl KafkaSecurity {
    pub fn sasl_password(&self) -> Option<&str> {
        self.sasl_password
            .as_ref()
            .or(self.sasl_password_file.as_ref())
            .map(Secret::expose)
    }
}

/// A password or key: never printed, in logs or in `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

fn secret(value: &str) -> Result<Secret, String> {
    Ok(Secret(value.to_string()))
}

/// The contents of a secret file, without the line break editors leave at its end.
fn secret_file(path: &str) -> Result<Secret, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let text = text.strip_suffix('\n').unwrap_or(&text);
    let text = text.strip_suffix('\r').unwrap_or(text);
    if text.is_empty() {
        return Err(format!("{path} is empty"));
    }
    Ok(Secret(text.to_string()))
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
    /// Apply missing migrations of sql/ at start (the role must own the database). Off by
    /// default: migrations are applied by `funnel-processor migrate` as the owner, and the
    /// services, which run as roles that may not create anything, only check them
    #[arg(
        long = "migrate-on-start",
        env = "FUNNEL_MIGRATE_ON_START",
        global = true
    )]
    pub migrate_on_start: bool,
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

    /// [`DatabaseSettings::connect`], then a check that the database has every migration of
    /// `sql/` (applied here only with `--migrate-on-start`).
    pub async fn connect_checked(
        &self,
        max_connections: u32,
        acquire_timeout: Duration,
    ) -> Result<PgPool, crate::db::DbError> {
        let pool = self.connect(max_connections, acquire_timeout).await?;
        crate::db::ensure_migrated(&pool, self.migrate_on_start).await?;
        Ok(pool)
    }
}
