//! A chat message as a client sends it (JSON fields, a phone in any form people type) checked
//! field by field and turned into the record: every invalid field is named at once, with what
//! was expected. Pure: no I/O; the caller supplies the tenant, the region and the clock.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::event_id::derive_event_id;
use crate::message::{
    is_channel, MAX_EVENT_ID_CHARS, MAX_LABEL_CHARS, MAX_METADATA_ENTRIES, MAX_METADATA_KEY_CHARS,
    MAX_METADATA_VALUE_CHARS, MAX_PHONE_CHARS, MAX_TEXT_BYTES,
};
use crate::phone::{normalize_phone, Region};
use crate::{ChatMessage, Direction};

/// Per-message limits (configurable; the contract's defaults).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_text_bytes: usize,
    pub max_metadata_entries: usize,
}

impl Limits {
    /// Refuses limits past what a record may carry (a consumer refuses such records).
    pub fn check(self) -> Result<Self, String> {
        if self.max_text_bytes > MAX_TEXT_BYTES {
            return Err(format!(
                "a text limit of {} bytes; at most {MAX_TEXT_BYTES}",
                self.max_text_bytes
            ));
        }
        if self.max_metadata_entries > MAX_METADATA_ENTRIES {
            return Err(format!(
                "a metadata limit of {} entries; at most {MAX_METADATA_ENTRIES}",
                self.max_metadata_entries
            ));
        }
        Ok(self)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_text_bytes: 64 * 1024,
            max_metadata_entries: 32,
        }
    }
}

const FIELDS: [&str; 10] = [
    "event_id",
    "phone",
    "channel",
    "direction",
    "text",
    "sent_at",
    "conversation_id",
    "campaign",
    "source",
    "metadata",
];

/// Reads the fields of a JSON chat message, naming every field that is missing, of the wrong
/// type or unknown.
pub fn from_json(value: serde_json::Value) -> Result<RawMessage, Vec<FieldError>> {
    let (raw, errors) = read_json(value)?;
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(raw)
}

/// Reads and checks a JSON chat message in one pass, naming every invalid field at once: a
/// missing or mistyped field does not hide another field's wrong value.
pub fn check_json(
    value: serde_json::Value,
    tenant: &str,
    region: Region,
    limits: Limits,
    now: DateTime<Utc>,
) -> Result<ChatMessage, Vec<FieldError>> {
    let (raw, errors) = read_json(value)?;
    validate_after(raw, errors, tenant, region, limits, now)
}

/// The fields of a JSON object as strings, and what is wrong with their types; Err when the
/// body is not an object at all.
fn read_json(value: serde_json::Value) -> Result<(RawMessage, Vec<FieldError>), Vec<FieldError>> {
    use serde_json::Value;
    let Value::Object(mut obj) = value else {
        return Err(vec![err(
            "",
            "the body is not a JSON object",
            "a JSON object with the fields of a chat message",
        )]);
    };
    let mut errors = Vec::new();
    for key in obj.keys() {
        if !FIELDS.contains(&key.as_str()) {
            errors.push(err(
                &format!("/{}", escape(&shown_key(key))),
                "unknown field",
                &format!("only the fields {}", FIELDS.join(", ")),
            ));
        }
    }
    // Fields are moved out of the parsed body, not copied.
    let mut required = |name: &str| match obj.remove(name) {
        Some(Value::String(s)) => s,
        None | Some(Value::Null) => {
            errors.push(err(&format!("/{name}"), "is required", "a string"));
            String::new()
        }
        Some(other) => {
            errors.push(err(
                &format!("/{name}"),
                format!("is {}", kind(&other)),
                "a string",
            ));
            String::new()
        }
    };
    let phone = required("phone");
    let channel = required("channel");
    let text = required("text");
    let sent_at = required("sent_at");
    let mut optional = |name: &str| match obj.remove(name) {
        Some(Value::String(s)) => Some(s),
        None | Some(Value::Null) => None,
        Some(other) => {
            errors.push(err(
                &format!("/{name}"),
                format!("is {}", kind(&other)),
                "a string or null",
            ));
            None
        }
    };
    let event_id = optional("event_id");
    let direction = optional("direction");
    let conversation_id = optional("conversation_id");
    let campaign = optional("campaign");
    let source = optional("source");
    let metadata = obj
        .remove("metadata")
        .and_then(|v| metadata_from_json(v, &mut errors));
    let raw = RawMessage {
        event_id,
        phone,
        channel,
        direction,
        text,
        sent_at,
        conversation_id,
        campaign,
        source,
        metadata,
    };
    Ok((raw, errors))
}

/// The `metadata` object: strings by key; what is not is added to `errors`.
fn metadata_from_json(
    value: serde_json::Value,
    errors: &mut Vec<FieldError>,
) -> Option<BTreeMap<String, String>> {
    use serde_json::Value;
    match value {
        Value::Null => None,
        Value::Object(m) => {
            let mut out = BTreeMap::new();
            for (k, v) in m {
                match v {
                    Value::String(s) => {
                        out.insert(k, s);
                    }
                    other => errors.push(err(
                        &format!("/metadata/{}", escape(&shown_key(&k))),
                        format!("is {}", kind(&other)),
                        "a string",
                    )),
                }
            }
            Some(out)
        }
        other => {
            errors.push(err(
                "/metadata",
                format!("is {}", kind(&other)),
                "an object of strings",
            ));
            None
        }
    }
}

/// A key as it may appear in a pointer: cut to the longest key a message may have, so an
/// error never echoes a megabyte back.
fn shown_key(key: &str) -> String {
    key.chars().take(MAX_METADATA_KEY_CHARS).collect()
}

/// A client's value quoted in an error detail, or only its length when it is long.
fn shown(value: &str) -> String {
    let n = value.chars().count();
    if n <= 64 {
        format!("{value:?}")
    } else {
        format!("a string of {n} characters")
    }
}

/// JSON pointer escaping (RFC 6901).
fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// One invalid field: where (a JSON pointer), what was wrong, and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub pointer: String,
    pub detail: String,
    pub expected: String,
}

fn err(pointer: &str, detail: impl Into<String>, expected: &str) -> FieldError {
    FieldError {
        pointer: pointer.into(),
        detail: detail.into(),
        expected: expected.into(),
    }
}

/// The fields of a chat message as a client sends them.
#[derive(Debug, Clone, Default)]
pub struct RawMessage {
    pub event_id: Option<String>,
    pub phone: String,
    pub channel: String,
    pub direction: Option<String>,
    pub text: String,
    pub sent_at: String,
    pub conversation_id: Option<String>,
    pub campaign: Option<String>,
    pub source: Option<String>,
    pub metadata: Option<BTreeMap<String, String>>,
}

/// Checks every field and builds the Kafka record, or lists every invalid field.
pub fn validate(
    raw: RawMessage,
    tenant: &str,
    region: Region,
    limits: Limits,
    now: DateTime<Utc>,
) -> Result<ChatMessage, Vec<FieldError>> {
    validate_after(raw, Vec::new(), tenant, region, limits, now)
}

/// [`validate`], after `errors` were found reading the fields: a field already named there
/// (missing, or of the wrong type) is not checked again.
fn validate_after(
    raw: RawMessage,
    mut errors: Vec<FieldError>,
    tenant: &str,
    region: Region,
    limits: Limits,
    now: DateTime<Utc>,
) -> Result<ChatMessage, Vec<FieldError>> {
    let read: Vec<String> = errors.iter().map(|e| e.pointer.clone()).collect();
    let fresh = |pointer: &str| !read.iter().any(|p| p == pointer);
    let phone = fresh("/phone")
        .then(|| phone(&raw.phone, region, &mut errors))
        .flatten();
    let channel = raw.channel.to_lowercase();
    if fresh("/channel") && !is_channel(&channel) {
        errors.push(err(
            "/channel",
            format!("{} is not a slug", shown(&raw.channel)),
            "[a-z0-9_-]{1,64} after lower-casing",
        ));
    }
    let direction = direction(raw.direction.as_deref(), &mut errors);
    if raw.text.len() > limits.max_text_bytes {
        errors.push(err(
            "/text",
            format!("{} bytes is too long", raw.text.len()),
            &format!("at most {} bytes", limits.max_text_bytes),
        ));
    }
    let sent_at = fresh("/sent_at")
        .then(|| sent_at(&raw.sent_at, now, &mut errors))
        .flatten();
    if let Some(id) = &raw.event_id {
        let n = id.chars().count();
        if n == 0 || n > MAX_EVENT_ID_CHARS {
            errors.push(err(
                "/event_id",
                format!("{n} characters"),
                "1..128 characters",
            ));
        }
    }
    labels(&raw, &mut errors);
    let metadata = raw.metadata.unwrap_or_default();
    metadata_bounds(&metadata, limits, &mut errors);
    let (Some(phone), Some(sent_at), true) = (phone, sent_at, errors.is_empty()) else {
        return Err(errors);
    };
    let event_id = raw
        .event_id
        .unwrap_or_else(|| derive_event_id(tenant, &phone, sent_at, direction, &raw.text));
    Ok(ChatMessage {
        event_id,
        tenant: tenant.to_string(),
        phone,
        channel,
        direction,
        text: raw.text,
        sent_at,
        received_at: now.timestamp_millis(),
        conversation_id: raw.conversation_id,
        campaign: raw.campaign,
        source: raw.source,
        metadata,
        ..Default::default()
    })
}

/// `conversation_id`, `campaign` and `source`: at most [`MAX_LABEL_CHARS`] each.
fn labels(raw: &RawMessage, errors: &mut Vec<FieldError>) {
    for (name, value) in [
        ("conversation_id", &raw.conversation_id),
        ("campaign", &raw.campaign),
        ("source", &raw.source),
    ] {
        let n = value.as_deref().map_or(0, |v| v.chars().count());
        if n > MAX_LABEL_CHARS {
            errors.push(err(
                &format!("/{name}"),
                format!("{n} characters is too long"),
                &format!("at most {MAX_LABEL_CHARS} characters"),
            ));
        }
    }
}

/// The number of entries, and the length of every key and value.
fn metadata_bounds(
    metadata: &BTreeMap<String, String>,
    limits: Limits,
    errors: &mut Vec<FieldError>,
) {
    if metadata.len() > limits.max_metadata_entries {
        errors.push(err(
            "/metadata",
            format!("{} entries", metadata.len()),
            &format!("at most {} entries", limits.max_metadata_entries),
        ));
    }
    for (k, v) in metadata {
        let key_chars = k.chars().count();
        if key_chars == 0 || key_chars > MAX_METADATA_KEY_CHARS {
            errors.push(err(
                "/metadata",
                format!("a key of {key_chars} characters"),
                &format!("keys of 1..{MAX_METADATA_KEY_CHARS} characters"),
            ));
            continue;
        }
        let n = v.chars().count();
        if n > MAX_METADATA_VALUE_CHARS {
            errors.push(err(
                &format!("/metadata/{}", escape(k)),
                format!("{n} characters is too long"),
                &format!("at most {MAX_METADATA_VALUE_CHARS} characters"),
            ));
        }
    }
}

/// The phone in E.164; a number that does not parse is added to `errors`.
fn phone(raw: &str, region: Region, errors: &mut Vec<FieldError>) -> Option<String> {
    let n = raw.chars().count();
    if n > MAX_PHONE_CHARS {
        // Refused before parsing, so a long string never reaches the parser or its cache.
        errors.push(err(
            "/phone",
            format!("{n} characters is too long"),
            &format!("a phone number of at most {MAX_PHONE_CHARS} characters"),
        ));
        return None;
    }
    normalize_phone(raw, region)
        .map_err(|e| {
            errors.push(err(
                "/phone",
                e,
                "a phone number: E.164 (+6281234567890) or a national form of the default region",
            ))
        })
        .ok()
}

/// The direction, `inbound` when absent; another word is added to `errors`.
fn direction(raw: Option<&str>, errors: &mut Vec<FieldError>) -> Direction {
    match raw {
        None => Direction::Inbound,
        Some(d) => d.parse().unwrap_or_else(|()| {
            errors.push(err(
                "/direction",
                format!("{} is not a direction", shown(d)),
                "inbound or outbound",
            ));
            Direction::Inbound
        }),
    }
}

/// The event time in Unix milliseconds: RFC 3339, not more than 24 hours after `now`; else
/// the problem is added to `errors`.
fn sent_at(raw: &str, now: DateTime<Utc>, errors: &mut Vec<FieldError>) -> Option<i64> {
    match DateTime::parse_from_rfc3339(raw) {
        Ok(t) if t.with_timezone(&Utc) > now + chrono::Duration::hours(24) => {
            errors.push(err(
                "/sent_at",
                "more than 24 hours in the future",
                "an event time not after now + 24h",
            ));
            None
        }
        Ok(t) => Some(t.with_timezone(&Utc).timestamp_millis()),
        Err(e) => {
            errors.push(err(
                "/sent_at",
                format!("{} is not RFC 3339: {e}", shown(raw)),
                "an RFC 3339 timestamp like 2026-01-31T09:30:00+07:00",
            ));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rlibphonenumber::Region as Id;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-23T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn raw() -> RawMessage {
        RawMessage {
            phone: "0812-3456-7890".into(),
            channel: "Ads".into(),
            text: "info promo".into(),
            sent_at: "2026-11-23T09:00:00+07:00".into(),
            ..Default::default()
        }
    }

    #[test]
    fn valid_message_is_normalized() {
        let m = validate(raw(), "default", Id::ID, Limits::default(), now()).unwrap();
        assert_eq!(m.phone, "+6281234567890");
        assert_eq!(m.channel, "ads");
        assert_eq!(m.direction, Direction::Inbound);
        assert_eq!(m.sent_at, 1_795_399_200_000);
        assert!(m.event_id.starts_with("sha256-"));
        // Deterministic: the same message gets the same id.
        assert_eq!(
            validate(raw(), "default", Id::ID, Limits::default(), now())
                .unwrap()
                .event_id,
            m.event_id
        );
        // Another tenant, another id.
        assert_ne!(
            validate(raw(), "other", Id::ID, Limits::default(), now())
                .unwrap()
                .event_id,
            m.event_id
        );
    }

    #[test]
    fn every_invalid_field_is_listed() {
        let bad = RawMessage {
            event_id: Some(String::new()),
            phone: "123".into(),
            channel: "no spaces allowed".into(),
            direction: Some("sideways".into()),
            text: "x".repeat(64 * 1024 + 1),
            sent_at: "yesterday".into(),
            metadata: Some((0..33).map(|i| (i.to_string(), String::new())).collect()),
            ..Default::default()
        };
        let errors = validate(bad, "default", Id::ID, Limits::default(), now()).unwrap_err();
        let pointers: Vec<&str> = errors.iter().map(|e| e.pointer.as_str()).collect();
        assert_eq!(
            pointers,
            [
                "/phone",
                "/channel",
                "/direction",
                "/text",
                "/sent_at",
                "/event_id",
                "/metadata"
            ]
        );
    }

    #[test]
    fn json_fields_are_checked_by_name() {
        let errors = from_json(serde_json::json!({
            "phone": 6281234, "text": "hi", "sent_at": null, "fone": "x",
            "metadata": {"a/b": 1, "ok": "yes"}, "campaign": ["x"]
        }))
        .unwrap_err();
        let got: Vec<(&str, &str)> = errors
            .iter()
            .map(|e| (e.pointer.as_str(), e.detail.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("/fone", "unknown field"),
                ("/phone", "is a number"),
                ("/channel", "is required"),
                ("/sent_at", "is required"),
                ("/campaign", "is an array"),
                ("/metadata/a~1b", "is a number"),
            ]
        );
        assert_eq!(
            from_json(serde_json::json!([1])).unwrap_err()[0].pointer,
            ""
        );
        let ok = from_json(
            serde_json::json!({"phone": "0812", "channel": "ads", "text": "", "sent_at": "x"}),
        )
        .unwrap();
        assert_eq!(ok.channel, "ads");
    }

    #[test]
    fn limits_are_configurable() {
        let mut r = raw();
        r.text = "x".repeat(11);
        let tight = Limits {
            max_text_bytes: 10,
            max_metadata_entries: 0,
        };
        r.metadata = Some(BTreeMap::from([("k".into(), "v".into())]));
        let errors = validate(r, "default", Id::ID, tight, now()).unwrap_err();
        let pointers: Vec<&str> = errors.iter().map(|e| e.pointer.as_str()).collect();
        assert_eq!(pointers, ["/text", "/metadata"]);
        assert_eq!(errors[0].expected, "at most 10 bytes");
    }

    #[test]
    fn far_future_is_refused() {
        let mut r = raw();
        r.sent_at = "2026-11-25T10:00:00Z".into();
        let errors = validate(r, "default", Id::ID, Limits::default(), now()).unwrap_err();
        assert_eq!(errors[0].pointer, "/sent_at");
    }

    #[test]
    fn a_missing_field_does_not_hide_the_others() {
        let errors = check_json(
            serde_json::json!({"phone": "123", "channel": "no spaces", "sent_at": "yesterday"}),
            "default",
            Id::ID,
            Limits::default(),
            now(),
        )
        .unwrap_err();
        let pointers: Vec<&str> = errors.iter().map(|e| e.pointer.as_str()).collect();
        assert_eq!(pointers, ["/text", "/phone", "/channel", "/sent_at"]);
        // A field named while reading is not named again.
        let errors = check_json(
            serde_json::json!({"phone": 1, "channel": "ads", "text": "", "sent_at": "2026-11-23T09:00:00Z"}),
            "default",
            Id::ID,
            Limits::default(),
            now(),
        )
        .unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].detail, "is a number");
    }

    #[test]
    fn every_string_field_is_bounded() {
        let mut r = raw();
        r.phone = "0".repeat(MAX_PHONE_CHARS + 1);
        r.campaign = Some("c".repeat(MAX_LABEL_CHARS + 1));
        r.source = Some("s".repeat(MAX_LABEL_CHARS));
        r.conversation_id = Some("v".repeat(MAX_LABEL_CHARS + 1));
        r.metadata = Some(BTreeMap::from([
            ("k".repeat(MAX_METADATA_KEY_CHARS + 1), "v".into()),
            ("ok".into(), "v".repeat(MAX_METADATA_VALUE_CHARS + 1)),
            ("fine".into(), "v".repeat(MAX_METADATA_VALUE_CHARS)),
        ]));
        let errors = validate(r, "default", Id::ID, Limits::default(), now()).unwrap_err();
        let pointers: Vec<&str> = errors.iter().map(|e| e.pointer.as_str()).collect();
        assert_eq!(
            pointers,
            [
                "/phone",
                "/conversation_id",
                "/campaign",
                "/metadata",
                "/metadata/ok"
            ]
        );
        assert_eq!(errors[0].detail, "65 characters is too long");
        // Long values are not echoed back.
        let mut r = raw();
        r.channel = "x ".repeat(10_000);
        r.sent_at = "y".repeat(10_000);
        let errors = validate(r, "default", Id::ID, Limits::default(), now()).unwrap_err();
        assert!(errors.iter().all(|e| e.detail.len() < 200), "{errors:?}");
    }

    #[test]
    fn limits_past_a_record_are_refused() {
        let ok = Limits::default().check();
        assert!(ok.is_ok());
        let too_big = Limits {
            max_text_bytes: MAX_TEXT_BYTES + 1,
            ..Limits::default()
        };
        assert!(too_big.check().unwrap_err().contains("at most"));
    }
}
