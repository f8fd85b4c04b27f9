//! Conversions back to Meta (the Conversions API for Business Messaging, docs/channels.md): for
//! contacts a click-to-WhatsApp ad brought (their first-touch ad has a `ctwa_clid`), a
//! `LeadSubmitted` once per contact and a `Purchase` per transaction event, within 7 days of the
//! click, for channels with a dataset.
//!
//! - [`enqueue`]: which conversions a batch leads to (pure); the live generation's batch writes
//!   them to the outbox `funnel_conversions` in the transaction of its stage events, under ids
//!   that are a hash of what they are of, so nothing is enqueued twice; a replay's generation
//!   enqueues nothing;
//! - [`store`]: the outbox's reads and writes (leases, outcomes, the operators' commands);
//! - [`sender`]: posts due conversions, retries 429, 5xx and Meta's transient error codes with
//!   backoff, parks the others with the reason. Delivery is at least once, with the same
//!   `event_id` each time.

pub mod enqueue;
pub mod sender;
pub mod store;
