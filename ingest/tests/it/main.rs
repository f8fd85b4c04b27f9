//! The HTTP API's integration tests against the real local stack (PostgreSQL, Apache Kafka, the
//! schema registry), started by `make test`. Each test gets its own topic, database and token,
//! so tests run in parallel. A missing stack is a failure, never a skip.

mod harness;
mod messages;
mod rules;
