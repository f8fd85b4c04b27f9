//! Event ids derived for messages that come without one. Pure: no I/O.

use sha2::{Digest, Sha256};

use crate::Direction;

/// A deterministic id from (tenant, phone, sent_at, direction, text), so a retried webhook
/// without an id gets the same one.
pub fn derive_event_id(
    tenant: &str,
    phone: &str,
    sent_at_ms: i64,
    direction: Direction,
    text: &str,
) -> String {
    let mut h = Sha256::new();
    for part in [
        tenant,
        phone,
        &sent_at_ms.to_string(),
        direction.as_str(),
        text,
    ] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    format!("sha256-{}", hex::encode(&h.finalize()[..20]))
}
