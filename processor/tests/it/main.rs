//! Integration tests against the real local stack (PostgreSQL, Apache Kafka, the schema
//! registry), started by `make test`. Each test gets its own topic, consumer group, database
//! and state folder, so tests run in parallel. A missing stack is a failure, never a skip.

mod e2e;
mod faults;
mod harness;
mod ingest_api;
mod oracle;
mod replay;
mod rules_api;
