//! The chat message record and its mapping to and from Avro values.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use apache_avro::types::Value;
use apache_avro::Schema;

use crate::WireError;

/// The schema text, registered under `<topic>-value` (TopicNameStrategy).
pub const CHAT_MESSAGE_AVSC: &str = include_str!("../chat_message.avsc");

/// Whether the contact wrote the message (`inbound`) or an agent did (`outbound`).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    #[default]
    Inbound,
    Outbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }

    #[cfg(test)]
    fn index(self) -> u32 {
        match self {
            Direction::Inbound => 0,
            Direction::Outbound => 1,
        }
    }
}

impl std::str::FromStr for Direction {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "inbound" => Ok(Direction::Inbound),
            "outbound" => Ok(Direction::Outbound),
            _ => Err(()),
        }
    }
}

/// Longest event id, in characters.
pub const MAX_EVENT_ID_CHARS: usize = 128;
/// Longest phone as a client types it, in characters (checked before it is parsed; E.164 has
/// at most 16).
pub const MAX_PHONE_CHARS: usize = 64;
/// Longest contact key on a record, in bytes (the E.164 phone today, a business-scoped user
/// id later).
pub const MAX_CONTACT_KEY_BYTES: usize = 128;
/// Longest `conversation_id`, `campaign` or `source`, in characters.
pub const MAX_LABEL_CHARS: usize = 256;
/// Longest business-scoped user id, in characters: a country code, `.`, up to 128
/// alphanumerics (parent ids add `ENT.`).
pub const MAX_BUSINESS_USER_ID_CHARS: usize = 140;
/// Longest referral URL, in characters.
pub const MAX_URL_CHARS: usize = 2048;
/// Longest referral headline, body or click id, in characters.
pub const MAX_REFERRAL_TEXT_CHARS: usize = 4096;
/// Longest `metadata` key, in characters.
pub const MAX_METADATA_KEY_CHARS: usize = 64;
/// Longest `metadata` value, in characters.
pub const MAX_METADATA_VALUE_CHARS: usize = 1024;
/// Most `metadata` entries on a record, whatever an ingest instance is configured to accept.
pub const MAX_METADATA_ENTRIES: usize = 256;
/// Longest text on a record, in bytes, whatever an ingest instance is configured to accept: a
/// record stays well under the broker's default message size (1 MiB).
pub const MAX_TEXT_BYTES: usize = 512 * 1024;

/// Whether `s` is a channel name: a slug `[a-z0-9_-]{1,64}` (the contract's form, after
/// lower-casing).
pub fn is_channel(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// One chat message as it travels on `funnel.chat-messages`. Times are Unix milliseconds (UTC).
/// The fields are those of `chat_message.avsc`, in its order (the encoder writes the struct
/// by name).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChatMessage {
    pub event_id: String,
    pub tenant: String,
    /// The contact key: the E.164 phone, or the business-scoped user id of a contact whose
    /// phone is withheld; an opaque string downstream.
    pub phone: String,
    pub channel: String,
    pub direction: Direction,
    pub text: String,
    pub sent_at: i64,
    pub received_at: i64,
    pub conversation_id: Option<String>,
    pub campaign: Option<String>,
    pub source: Option<String>,
    pub metadata: BTreeMap<String, String>,
    /// The WhatsApp business-scoped user id, when the message carried one.
    pub business_user_id: Option<String>,
    /// The click-to-WhatsApp ad the message came from (its `referral`).
    pub referral_source_id: Option<String>,
    pub referral_source_type: Option<String>,
    pub referral_source_url: Option<String>,
    pub referral_headline: Option<String>,
    pub referral_body: Option<String>,
    pub ctwa_clid: Option<String>,
    /// The registered intake channel the message came through (`ch_...`).
    pub intake_channel_id: Option<String>,
}

impl ChatMessage {
    /// The parsed schema (the reader schema of every consumer in this repository).
    pub fn schema() -> &'static Schema {
        static SCHEMA: OnceLock<Schema> = OnceLock::new();
        SCHEMA.get_or_init(|| {
            #[allow(clippy::expect_used)]
            Schema::parse_str(CHAT_MESSAGE_AVSC).expect("chat_message.avsc is a valid Avro schema")
        })
    }

    /// The record as an Avro value; the encoder serializes the struct directly, and tests check
    /// both give the same bytes.
    #[cfg(test)]
    pub(crate) fn to_value(&self) -> Value {
        let opt = |v: &Option<String>| match v {
            Some(s) => Value::Union(1, Box::new(Value::String(s.clone()))),
            None => Value::Union(0, Box::new(Value::Null)),
        };
        Value::Record(vec![
            ("event_id".into(), Value::String(self.event_id.clone())),
            ("tenant".into(), Value::String(self.tenant.clone())),
            ("phone".into(), Value::String(self.phone.clone())),
            ("channel".into(), Value::String(self.channel.clone())),
            (
                "direction".into(),
                Value::Enum(self.direction.index(), self.direction.as_str().into()),
            ),
            ("text".into(), Value::String(self.text.clone())),
            ("sent_at".into(), Value::TimestampMillis(self.sent_at)),
            (
                "received_at".into(),
                Value::TimestampMillis(self.received_at),
            ),
            ("conversation_id".into(), opt(&self.conversation_id)),
            ("campaign".into(), opt(&self.campaign)),
            ("source".into(), opt(&self.source)),
            (
                "metadata".into(),
                Value::Map(
                    self.metadata
                        .iter()
                        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                        .collect(),
                ),
            ),
            ("business_user_id".into(), opt(&self.business_user_id)),
            ("referral_source_id".into(), opt(&self.referral_source_id)),
            (
                "referral_source_type".into(),
                opt(&self.referral_source_type),
            ),
            ("referral_source_url".into(), opt(&self.referral_source_url)),
            ("referral_headline".into(), opt(&self.referral_headline)),
            ("referral_body".into(), opt(&self.referral_body)),
            ("ctwa_clid".into(), opt(&self.ctwa_clid)),
            ("intake_channel_id".into(), opt(&self.intake_channel_id)),
        ])
    }

    /// Reads a value already resolved to [`ChatMessage::schema`].
    pub(crate) fn from_value(value: Value) -> Result<Self, WireError> {
        let Value::Record(fields) = value else {
            return Err(WireError::Shape("not a record".into()));
        };
        let mut f: BTreeMap<String, Value> = fields.into_iter().collect();
        let mut take = |name: &str| {
            f.remove(name)
                .ok_or_else(|| WireError::Shape(format!("field {name} is missing")))
        };
        Ok(ChatMessage {
            event_id: string(take("event_id")?, "event_id")?,
            tenant: string(take("tenant")?, "tenant")?,
            phone: string(take("phone")?, "phone")?,
            channel: string(take("channel")?, "channel")?,
            direction: match take("direction")? {
                Value::Enum(_, s) | Value::String(s) => s.parse().map_err(|()| {
                    WireError::Shape(format!("direction {s:?} is not inbound|outbound"))
                })?,
                other => return Err(shape("direction", &other)),
            },
            text: string(take("text")?, "text")?,
            sent_at: millis(take("sent_at")?, "sent_at")?,
            received_at: millis(take("received_at")?, "received_at")?,
            conversation_id: optional(take("conversation_id")?, "conversation_id")?,
            campaign: optional(take("campaign")?, "campaign")?,
            source: optional(take("source")?, "source")?,
            metadata: match take("metadata")? {
                Value::Map(m) => m
                    .into_iter()
                    .map(|(k, v)| Ok((k, string(v, "metadata")?)))
                    .collect::<Result<_, WireError>>()?,
                other => return Err(shape("metadata", &other)),
            },
            business_user_id: optional(take("business_user_id")?, "business_user_id")?,
            referral_source_id: optional(take("referral_source_id")?, "referral_source_id")?,
            referral_source_type: optional(take("referral_source_type")?, "referral_source_type")?,
            referral_source_url: optional(take("referral_source_url")?, "referral_source_url")?,
            referral_headline: optional(take("referral_headline")?, "referral_headline")?,
            referral_body: optional(take("referral_body")?, "referral_body")?,
            ctwa_clid: optional(take("ctwa_clid")?, "ctwa_clid")?,
            intake_channel_id: optional(take("intake_channel_id")?, "intake_channel_id")?,
        })
    }
}

fn shape(field: &str, v: &Value) -> WireError {
    WireError::Shape(format!("field {field} has unexpected value {v:?}"))
}

fn string(v: Value, field: &str) -> Result<String, WireError> {
    match v {
        Value::String(s) => Ok(s),
        other => Err(shape(field, &other)),
    }
}

fn millis(v: Value, field: &str) -> Result<i64, WireError> {
    match v {
        Value::TimestampMillis(t) | Value::Long(t) => Ok(t),
        Value::TimestampMicros(t) => Ok(t.div_euclid(1000)),
        other => Err(shape(field, &other)),
    }
}

fn optional(v: Value, field: &str) -> Result<Option<String>, WireError> {
    match v {
        Value::Union(_, inner) => match *inner {
            Value::Null => Ok(None),
            Value::String(s) => Ok(Some(s)),
            other => Err(shape(field, &other)),
        },
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s)),
        other => Err(shape(field, &other)),
    }
}
