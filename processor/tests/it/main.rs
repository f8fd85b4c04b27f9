//! The processor's integration tests against the real local stack (PostgreSQL, Apache Kafka,
//! the schema registry), started by `make test`, with the HTTP API in front where a test sends
//! messages as a client would. Each test gets its own topic, consumer group, database and state
//! folder, so tests run in parallel. A missing stack is a failure, never a skip.

mod e2e;
mod faults;
mod harness;
mod oracle;
mod replay;
mod rules;
