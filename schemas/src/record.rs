//! What a consumer checks on a decoded record beyond its schema: the checks ingest makes at the
//! door, repeated for integrations that produce straight to Kafka. A record that fails them is
//! poison (it never becomes valid), so it goes to the dead-letter topic with the reason.

use crate::message::{
    MAX_BUSINESS_USER_ID_CHARS, MAX_CONTACT_KEY_BYTES, MAX_EVENT_ID_CHARS, MAX_LABEL_CHARS,
    MAX_METADATA_ENTRIES, MAX_METADATA_KEY_CHARS, MAX_METADATA_VALUE_CHARS,
    MAX_REFERRAL_TEXT_CHARS, MAX_TEXT_BYTES, MAX_URL_CHARS,
};
use crate::ChatMessage;

/// Why a decoded record cannot be folded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("event_id must be 1..128 characters")]
    EventId,
    #[error("{0} must not be empty")]
    Empty(&'static str),
    /// A field past its bound (the contract's, the same ingest applies).
    #[error("{0} is longer than {1}")]
    TooLong(&'static str, &'static str),
    #[error(
        "the record key must be the phone (E.164, UTF-8) so the contact stays on one partition"
    )]
    Key,
}

/// Checks a decoded record and its Kafka key.
pub fn check(m: &ChatMessage, key: Option<&[u8]>) -> Result<(), RecordError> {
    if m.event_id.is_empty() || m.event_id.chars().count() > MAX_EVENT_ID_CHARS {
        return Err(RecordError::EventId);
    }
    for (field, value) in [
        ("tenant", &m.tenant),
        ("phone", &m.phone),
        ("channel", &m.channel),
    ] {
        if value.is_empty() {
            return Err(RecordError::Empty(field));
        }
    }
    bounds(m)?;
    if key != Some(m.phone.as_bytes()) {
        return Err(RecordError::Key);
    }
    Ok(())
}

/// Every field within the bound ingest applies at the door, for records produced straight to
/// Kafka.
fn bounds(m: &ChatMessage) -> Result<(), RecordError> {
    let chars = |s: &str, max: usize| s.chars().count() <= max;
    if m.phone.len() > MAX_CONTACT_KEY_BYTES {
        return Err(RecordError::TooLong("phone", "128 bytes"));
    }
    if !chars(&m.channel, 64) {
        return Err(RecordError::TooLong("channel", "64 characters"));
    }
    if !chars(&m.tenant, 64) {
        return Err(RecordError::TooLong("tenant", "64 characters"));
    }
    if m.text.len() > MAX_TEXT_BYTES {
        return Err(RecordError::TooLong("text", "512 KiB"));
    }
    for (name, value, max, said) in [
        (
            "conversation_id",
            &m.conversation_id,
            MAX_LABEL_CHARS,
            "256 characters",
        ),
        ("campaign", &m.campaign, MAX_LABEL_CHARS, "256 characters"),
        ("source", &m.source, MAX_LABEL_CHARS, "256 characters"),
        (
            "referral_source_id",
            &m.referral_source_id,
            MAX_LABEL_CHARS,
            "256 characters",
        ),
        (
            "referral_source_type",
            &m.referral_source_type,
            MAX_LABEL_CHARS,
            "256 characters",
        ),
        (
            "intake_channel_id",
            &m.intake_channel_id,
            MAX_LABEL_CHARS,
            "256 characters",
        ),
        (
            "business_user_id",
            &m.business_user_id,
            MAX_BUSINESS_USER_ID_CHARS,
            "140 characters",
        ),
        (
            "referral_source_url",
            &m.referral_source_url,
            MAX_URL_CHARS,
            "2048 characters",
        ),
        (
            "referral_headline",
            &m.referral_headline,
            MAX_REFERRAL_TEXT_CHARS,
            "4096 characters",
        ),
        (
            "referral_body",
            &m.referral_body,
            MAX_REFERRAL_TEXT_CHARS,
            "4096 characters",
        ),
        (
            "ctwa_clid",
            &m.ctwa_clid,
            MAX_REFERRAL_TEXT_CHARS,
            "4096 characters",
        ),
    ] {
        if !value.as_deref().is_none_or(|v| chars(v, max)) {
            return Err(RecordError::TooLong(name, said));
        }
    }
    if m.metadata.len() > MAX_METADATA_ENTRIES {
        return Err(RecordError::TooLong("metadata", "256 entries"));
    }
    let entry_fits = |(k, v): (&String, &String)| {
        chars(k, MAX_METADATA_KEY_CHARS) && chars(v, MAX_METADATA_VALUE_CHARS)
    };
    if !m.metadata.iter().all(entry_fits) {
        return Err(RecordError::TooLong(
            "a metadata entry",
            "64 characters (key) or 1024 (value)",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Direction;

    fn record() -> ChatMessage {
        ChatMessage {
            event_id: "e-1".into(),
            tenant: "default".into(),
            phone: "+6281234567890".into(),
            channel: "ads".into(),
            direction: Direction::Inbound,
            text: "info".into(),
            sent_at: 1,
            received_at: 2,
            conversation_id: None,
            campaign: None,
            source: None,
            metadata: Default::default(),
            ..Default::default()
        }
    }

    #[test]
    fn every_check_names_its_reason() {
        let key = Some("+6281234567890".as_bytes());
        assert_eq!(check(&record(), key), Ok(()));
        type Damage = fn(&mut ChatMessage);
        let cases: [(Damage, RecordError); 9] = [
            (
                |m| m.phone = "+".repeat(129),
                RecordError::TooLong("phone", "128 bytes"),
            ),
            (
                |m| m.campaign = Some("c".repeat(257)),
                RecordError::TooLong("campaign", "256 characters"),
            ),
            (
                |m| m.text = "t".repeat(MAX_TEXT_BYTES + 1),
                RecordError::TooLong("text", "512 KiB"),
            ),
            (
                |m| {
                    m.metadata.insert("k".into(), "v".repeat(1025));
                },
                RecordError::TooLong("a metadata entry", "64 characters (key) or 1024 (value)"),
            ),
            (|m| m.event_id.clear(), RecordError::EventId),
            (|m| m.event_id = "x".repeat(129), RecordError::EventId),
            (|m| m.tenant.clear(), RecordError::Empty("tenant")),
            (|m| m.phone.clear(), RecordError::Empty("phone")),
            (|m| m.channel.clear(), RecordError::Empty("channel")),
        ];
        for (damage, want) in cases {
            let mut m = record();
            damage(&mut m);
            assert_eq!(check(&m, key), Err(want));
        }
        assert_eq!(check(&record(), None), Err(RecordError::Key));
        assert_eq!(
            check(&record(), Some("+6281234567891".as_bytes())),
            Err(RecordError::Key)
        );
        assert_eq!(
            RecordError::Empty("tenant").to_string(),
            "tenant must not be empty"
        );
    }
}
