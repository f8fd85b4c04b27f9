//! The Confluent wire format: `0x00`, the writer schema's registry id as a big-endian u32,
//! then the Avro binary datum.

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::writer::datum::GenericDatumWriter;
use apache_avro::Schema;
use std::sync::OnceLock;

use crate::ChatMessage;

pub const MAGIC_BYTE: u8 = 0;

/// Why bytes could not be decoded. Every variant is a poison message for a consumer: the same
/// bytes will never decode, so they go to the dead-letter topic.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("value is {0} bytes, shorter than the 5-byte Confluent header")]
    TooShort(usize),
    #[error("magic byte is {0}, expected 0 (Confluent wire format)")]
    BadMagic(u8),
    #[error("avro: {0}")]
    Avro(#[from] apache_avro::Error),
    #[error("record does not match the chat message schema: {0}")]
    Shape(String),
}

/// Splits a framed value into the writer schema id and the Avro payload.
pub fn split_frame(bytes: &[u8]) -> Result<(u32, &[u8]), WireError> {
    if bytes.len() < 5 {
        return Err(WireError::TooShort(bytes.len()));
    }
    if bytes[0] != MAGIC_BYTE {
        return Err(WireError::BadMagic(bytes[0]));
    }
    let id = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
    Ok((id, &bytes[5..]))
}

/// Encodes a message with the schema registered under `schema_id` (which must be
/// [`ChatMessage::schema`]).
pub fn encode(schema_id: u32, msg: &ChatMessage) -> Result<Vec<u8>, WireError> {
    // Resolving the schema costs more than writing a record: do it once.
    static WRITER: OnceLock<Result<GenericDatumWriter<'static>, String>> = OnceLock::new();
    let writer = WRITER
        .get_or_init(|| {
            GenericDatumWriter::builder(ChatMessage::schema())
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| WireError::Shape(e.clone()))?;
    let mut out = Vec::with_capacity(64 + msg.text.len());
    out.push(MAGIC_BYTE);
    out.extend_from_slice(&schema_id.to_be_bytes());
    // Serialized straight from the struct (serde, schema-aware): no intermediate `Value` tree
    // and no copy of the strings, which was the largest cost of ingest's batch path.
    writer.write_ser(&mut out, msg)?;
    Ok(out)
}

/// Decodes the payloads of one writer schema, prepared once: resolving a schema costs more
/// than reading a record. When the writer schema is this build's own (the common case), records
/// are deserialized straight into [`ChatMessage`]; otherwise they are read as Avro values,
/// resolved to this build's reader schema (so older and newer compatible writers both work) and
/// mapped.
pub struct Decoder<'s> {
    reader: GenericDatumReader<'s>,
    direct: bool,
}

impl<'s> Decoder<'s> {
    pub fn new(writer: &'s Schema) -> Result<Self, WireError> {
        let own = ChatMessage::schema();
        // Schemas compare by their canonical form.
        let direct = writer == own;
        let reader = if direct {
            GenericDatumReader::builder(writer).build()?
        } else {
            GenericDatumReader::builder(writer)
                .reader_schema(own)
                .build()?
        };
        Ok(Self { reader, direct })
    }

    /// Whether records are deserialized straight into the struct (writer = this build's schema).
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    pub fn decode(&self, payload: &[u8]) -> Result<ChatMessage, WireError> {
        let (msg, rest) = if self.direct {
            let mut reader = payload;
            let msg = self.reader.read_deser::<ChatMessage>(&mut reader)?;
            (msg, reader.len())
        } else {
            let mut reader = Strict(payload);
            let msg = ChatMessage::from_value(self.reader.read_value(&mut reader)?)?;
            (msg, reader.0.len())
        };
        if rest > 0 {
            return Err(WireError::Shape(format!(
                "{rest} trailing bytes after the record"
            )));
        }
        Ok(msg)
    }

    /// The value path whatever the writer: what [`Decoder::decode`] must agree with.
    #[cfg(test)]
    fn decode_via_value(&self, payload: &[u8]) -> Result<ChatMessage, WireError> {
        let mut reader = Strict(payload);
        let value = self.reader.read_value(&mut reader)?;
        if !reader.0.is_empty() {
            return Err(WireError::Shape("trailing bytes".into()));
        }
        ChatMessage::from_value(value)
    }
}

/// A payload as the value decoder reads it: running out of bytes is an error, not an end of
/// input. apache-avro's value decoder reads an end of input where a string or a union starts as
/// null, so a record cut short after its last required field decoded, with its optional fields
/// empty (the property test `direct_and_value_paths_agree_on_damaged_payloads` found it once
/// the schema ended with optional fields); the direct path refuses such a record.
struct Strict<'a>(&'a [u8]);

impl std::io::Read for Strict<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.0.is_empty() && !buf.is_empty() {
            return Err(std::io::Error::other("the record ends early"));
        }
        self.0.read(buf)
    }
}

/// Decodes an Avro payload written with `writer` (looked up by the frame's schema id). Builds a
/// [`Decoder`] for the one call: hot paths keep a decoder per schema id instead.
pub fn decode(writer: &Schema, payload: &[u8]) -> Result<ChatMessage, WireError> {
    Decoder::new(writer)?.decode(payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn sample() -> ChatMessage {
        ChatMessage {
            event_id: "e-1".into(),
            tenant: "default".into(),
            phone: "+6281234567890".into(),
            channel: "ads".into(),
            direction: crate::Direction::Inbound,
            text: "Halo, info promo dong".into(),
            sent_at: 1_700_000_000_123,
            received_at: 1_700_000_001_000,
            conversation_id: None,
            campaign: Some("ramadan".into()),
            source: None,
            metadata: BTreeMap::from([("utm".into(), "fb".into())]),
            business_user_id: Some("ID.13491208655302741918".into()),
            referral_source_id: Some("120226305854810726".into()),
            referral_source_type: Some("ad".into()),
            referral_source_url: Some("https://fb.me/3cr4Wqqkv".into()),
            referral_headline: Some("Chat with us".into()),
            referral_body: None,
            ctwa_clid: Some("Aff-n8ZTODiE79d22KtAwQ".into()),
            intake_channel_id: Some("ch_1".into()),
        }
    }

    #[test]
    fn frame_carries_magic_and_big_endian_id() {
        let bytes = encode(0x0102_0304, &sample()).unwrap();
        assert_eq!(&bytes[..5], &[0, 1, 2, 3, 4]);
        let (id, payload) = split_frame(&bytes).unwrap();
        assert_eq!(id, 0x0102_0304);
        assert_eq!(decode(ChatMessage::schema(), payload).unwrap(), sample());
    }

    #[test]
    fn serde_path_writes_the_same_bytes_as_the_value_path() {
        let writer = GenericDatumWriter::builder(ChatMessage::schema())
            .build()
            .unwrap();
        let mut m = sample();
        for _ in 0..2 {
            let via_value = writer.write_value_to_vec(m.to_value()).unwrap();
            assert_eq!(&encode(9, &m).unwrap()[5..], &via_value[..]);
            m.direction = crate::Direction::Outbound;
            m.campaign = None;
            m.conversation_id = Some("c".into());
            m.metadata.clear();
            m.ctwa_clid = None;
            m.referral_body = Some("Summer Succulents are here!".into());
        }
    }

    #[test]
    fn bad_frames_are_named() {
        assert!(matches!(split_frame(&[0, 1]), Err(WireError::TooShort(2))));
        assert!(matches!(
            split_frame(&[7, 0, 0, 0, 1, 2]),
            Err(WireError::BadMagic(7))
        ));
        let bytes = encode(1, &sample()).unwrap();
        assert!(decode(ChatMessage::schema(), &bytes[5..9]).is_err());
    }

    #[test]
    fn older_writer_schema_resolves_with_defaults() {
        // A producer on a first version of the schema without tenant, campaign and metadata:
        // the reader fills the defaults (this is what BACKWARD compatibility buys).
        let old = Schema::parse_str(
            r#"{"type":"record","name":"ChatMessage","namespace":"dev.funnel","fields":[
              {"name":"event_id","type":"string"},{"name":"phone","type":"string"},
              {"name":"channel","type":"string"},{"name":"text","type":"string"},
              {"name":"sent_at","type":{"type":"long","logicalType":"timestamp-millis"}},
              {"name":"received_at","type":{"type":"long","logicalType":"timestamp-millis"}}]}"#,
        )
        .unwrap();
        use apache_avro::types::Record;
        let mut r = Record::new(&old).unwrap();
        r.put("event_id", "x");
        r.put("phone", "+62811");
        r.put("channel", "web");
        r.put("text", "hi");
        r.put("sent_at", apache_avro::types::Value::TimestampMillis(5));
        r.put("received_at", apache_avro::types::Value::TimestampMillis(6));
        let datum = GenericDatumWriter::builder(&old)
            .build()
            .unwrap()
            .write_value_to_vec(r)
            .unwrap();
        let msg = decode(&old, &datum).unwrap();
        assert_eq!(msg.tenant, "default");
        assert_eq!(msg.direction, crate::Direction::Inbound);
        assert_eq!(msg.campaign, None);
        assert!(msg.metadata.is_empty());
        assert_eq!(msg.sent_at, 5);
    }

    /// A record cut inside its optional fields (the case the damaged-payload property found):
    /// both paths refuse it, wherever the cut falls.
    #[test]
    fn a_record_cut_in_its_optional_fields_is_refused_by_both_paths() {
        let payload = encode(1, &sample()).unwrap()[5..].to_vec();
        let without = {
            let mut m = sample();
            m.business_user_id = None;
            m.referral_source_id = None;
            m.referral_source_type = None;
            m.referral_source_url = None;
            m.referral_headline = None;
            m.ctwa_clid = None;
            m.intake_channel_id = None;
            encode(1, &m).unwrap().len() - 5 - 8
        };
        let decoder = Decoder::new(ChatMessage::schema()).unwrap();
        for cut in without..payload.len() {
            let damaged = &payload[..cut];
            assert!(
                decoder.decode(damaged).is_err(),
                "direct path read a record cut at {cut}"
            );
            assert!(
                decoder.decode_via_value(damaged).is_err(),
                "value path read a record cut at {cut}"
            );
        }
        assert_eq!(decoder.decode_via_value(&payload).unwrap(), sample());
    }

    /// Every schema version ever published (schemas/history/) writes records this build reads:
    /// the fields added since take their defaults.
    #[test]
    fn every_published_schema_version_is_read_by_this_build() {
        let v1 = Schema::parse_str(include_str!("../history/chat_message.1.avsc")).unwrap();
        use apache_avro::types::Record;
        let mut r = Record::new(&v1).unwrap();
        for (k, v) in [
            ("event_id", "wamid.1"),
            ("tenant", "acme"),
            ("phone", "+6281234567890"),
            ("channel", "ctwa"),
            ("text", "halo"),
        ] {
            r.put(k, v);
        }
        r.put(
            "direction",
            apache_avro::types::Value::Enum(0, "inbound".into()),
        );
        r.put("sent_at", apache_avro::types::Value::TimestampMillis(5));
        r.put("received_at", apache_avro::types::Value::TimestampMillis(6));
        for k in ["conversation_id", "campaign", "source"] {
            r.put(
                k,
                apache_avro::types::Value::Union(0, Box::new(apache_avro::types::Value::Null)),
            );
        }
        r.put(
            "metadata",
            apache_avro::types::Value::Map(Default::default()),
        );
        let datum = GenericDatumWriter::builder(&v1)
            .build()
            .unwrap()
            .write_value_to_vec(r)
            .unwrap();
        let decoder = Decoder::new(&v1).unwrap();
        assert!(
            !decoder.is_direct(),
            "an older writer is resolved to this build's schema"
        );
        let msg = decoder.decode(&datum).unwrap();
        assert_eq!((msg.tenant.as_str(), msg.text.as_str()), ("acme", "halo"));
        assert_eq!(
            (msg.referral_source_id, msg.ctwa_clid, msg.business_user_id),
            (None, None, None)
        );
    }

    fn arb_opt() -> impl Strategy<Value = Option<String>> {
        proptest::option::of("\\PC{0,20}")
    }

    proptest! {
        #[test]
        fn round_trip(
            event_id in "\\PC{1,40}", phone in "\\+[0-9]{8,15}", channel in "[a-z0-9_-]{1,64}",
            outbound: bool, text in "\\PC{0,200}", sent_at: i64, received_at: i64,
            conversation_id in arb_opt(), campaign in arb_opt(), source in arb_opt(),
            metadata in proptest::collection::btree_map("\\PC{0,8}", "\\PC{0,8}", 0..5),
            schema_id: u32,
            (business_user_id, referral_source_id, referral_source_type, referral_source_url) in (arb_opt(), arb_opt(), arb_opt(), arb_opt()),
            (referral_headline, referral_body, ctwa_clid, intake_channel_id) in (arb_opt(), arb_opt(), arb_opt(), arb_opt()),
        ) {
            let msg = ChatMessage {
                event_id, tenant: "t".into(), phone, channel,
                direction: if outbound { crate::Direction::Outbound } else { crate::Direction::Inbound },
                text, sent_at, received_at, conversation_id, campaign, source, metadata,
                business_user_id, referral_source_id, referral_source_type, referral_source_url,
                referral_headline, referral_body, ctwa_clid, intake_channel_id,
            };
            let bytes = encode(schema_id, &msg).unwrap();
            let (id, payload) = split_frame(&bytes).unwrap();
            prop_assert_eq!(id, schema_id);
            let decoder = Decoder::new(ChatMessage::schema()).unwrap();
            prop_assert!(decoder.is_direct());
            prop_assert_eq!(decoder.decode_via_value(payload).unwrap(), msg.clone());
            prop_assert_eq!(decoder.decode(payload).unwrap(), msg);
        }

        /// Damaged payloads (bytes changed, cut short, or followed by more): the direct path
        /// fails exactly when the value path does (never panics), and reads the same message
        /// when both succeed.
        #[test]
        fn direct_and_value_paths_agree_on_damaged_payloads(
            text in "\\PC{0,60}", cut in 0usize..200, flips in proptest::collection::vec((0usize..200, any::<u8>()), 0..4),
            tail in proptest::collection::vec(any::<u8>(), 0..3),
        ) {
            let mut m = sample();
            m.text = text;
            let mut payload = encode(1, &m).unwrap()[5..].to_vec();
            for (at, byte) in flips {
                if !payload.is_empty() {
                    let i = at % payload.len();
                    payload[i] = byte;
                }
            }
            payload.truncate(cut.min(payload.len()));
            // Bytes after the record: both paths must refuse them.
            payload.extend(tail);
            let decoder = Decoder::new(ChatMessage::schema()).unwrap();
            let direct = decoder.decode(&payload);
            let value = decoder.decode_via_value(&payload);
            match (direct, value) {
                (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
                (Err(_), Err(_)) => {}
                (a, b) => prop_assert!(false, "direct {:?} but value path {:?}", a, b),
            }
        }
    }
}
