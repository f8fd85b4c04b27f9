//! Funnel's plumbing: what every binary needs to talk to the outside world the same way, kept
//! in one place so the services and the load tool cannot drift apart.
//!
//! - [`settings`]: the Kafka, registry, topic and database settings every binary takes;
//! - [`telemetry`]: logs (`RUST_LOG`/`FUNNEL_LOG`), OTLP traces, shutdown on signals;
//! - [`db`]: the PostgreSQL pool, the migrations of `sql/`, pools on a generation's schema;
//! - [`kafka`]: client configurations, among them the producer contract (acks=all,
//!   idempotence, `murmur2_random`) every producer of Funnel uses;
//! - [`registry`]: registering the chat message schema and decoders by writer schema id;
//! - [`sink`]: the funnel tables' writes (rows, stage events, offsets in one transaction);
//! - [`seal`]: values encrypted under a key of `funnel_secrets` (cursors, channel secrets);
//! - [`metrics`]: Prometheus metrics, registered once and rendered in the text format;
//! - [`clidoc`]: the configuration reference in docs/configuration.md, from clap definitions.

pub mod clidoc;
pub mod db;
pub mod kafka;
pub mod metrics;
pub mod registry;
pub mod seal;
pub mod settings;
pub mod sink;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
