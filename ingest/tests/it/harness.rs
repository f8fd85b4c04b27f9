//! The shared test support of `funnel_http::testing` and `funnel_runtime::testing`.

pub use funnel_http::testing::{call, start_ingest, Stack};
