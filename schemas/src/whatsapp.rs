//! Meta's WhatsApp Cloud API webhook (docs/channels.md): the `X-Hub-Signature-256` check on the
//! raw bytes, and a payload's `messages` and `smb_message_echoes` changes mapped to chat
//! messages. Pure: the caller looks the channel up, resolves aliases and produces.
//!
//! What a payload holds: `entry[].changes[]`, each with a `field` and a `value`. A `messages`
//! value has `metadata.phone_number_id`, `contacts[]` (`wa_id`, and since 2026 the
//! business-scoped `user_id`), `messages[]` (from the contact: `from`, `from_user_id`, `id`,
//! `timestamp`, `type` and a body) or `statuses[]` (of the business's own messages: counted,
//! not turned into messages). A `smb_message_echoes` value has `message_echoes[]`: what the
//! business sent from the WhatsApp Business app (`to`, `to_user_id`), outbound. Unknown fields
//! are ignored; Meta adds them often.

use std::collections::BTreeMap;

use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::message::MAX_EVENT_ID_CHARS;
use crate::phone::{normalize_phone, Region};
use crate::Direction;

/// Whether `header` (`sha256=<hex>`) is the HMAC-SHA256 of `body`, exactly as received, under
/// the app secret. Compared in constant time. Meta signs the bytes it sends, with non-ASCII
/// escaped as `\uXXXX` and `/` as `\/`: a payload parsed and written again no longer matches.
pub fn signature_matches(app_secret: &[u8], body: &[u8], header: Option<&str>) -> bool {
    let Some(hex_sig) = header.and_then(|h| h.trim().strip_prefix("sha256=")) else {
        return false;
    };
    let Ok(sig) = hex::decode(hex_sig) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(app_secret) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&sig).is_ok()
}

/// What a payload holds for one channel.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Mapped {
    pub messages: Vec<WaMessage>,
    /// Status updates of the business's own messages (sent, delivered, read, failed).
    pub statuses: usize,
    /// Changes for another phone number id, or of a field Funnel does not take.
    pub ignored: usize,
    /// Messages that name no contact (neither a phone nor a user id), with the reason.
    pub unusable: Vec<String>,
}

/// One WhatsApp message as a chat message needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaMessage {
    /// The WhatsApp message id (`wamid....`): a redelivery carries the same.
    pub event_id: String,
    /// The contact's phone in E.164, when the payload has it.
    pub phone: Option<String>,
    /// The contact's business-scoped user id, when the payload has it.
    pub business_user_id: Option<String>,
    pub direction: Direction,
    pub text: String,
    /// Unix milliseconds.
    pub sent_at: i64,
    /// The WhatsApp message type (`text`, `interactive`, `image`, ...).
    pub kind: String,
    pub referral: Option<WaReferral>,
}

/// A message's click-to-WhatsApp `referral`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct WaReferral {
    pub source_id: Option<String>,
    pub source_type: Option<String>,
    pub source_url: Option<String>,
    pub headline: Option<String>,
    pub body: Option<String>,
    pub ctwa_clid: Option<String>,
}

impl WaMessage {
    /// The contact key: the phone when there is one, else the business-scoped user id.
    pub fn key(&self) -> Option<&str> {
        self.phone.as_deref().or(self.business_user_id.as_deref())
    }

    /// The channel name of the contract: `ctwa` for a message from a click-to-WhatsApp ad.
    pub fn channel(&self) -> &'static str {
        if self.referral.is_some() {
            "ctwa"
        } else {
            "whatsapp"
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error("not a WhatsApp webhook payload: {0}")]
    Json(#[from] serde_json::Error),
}

#[derive(Deserialize)]
struct Payload {
    #[serde(default)]
    entry: Vec<Entry>,
}

#[derive(Deserialize)]
struct Entry {
    #[serde(default)]
    changes: Vec<Change>,
}

#[derive(Deserialize)]
struct Change {
    #[serde(default)]
    field: String,
    #[serde(default)]
    value: ChangeValue,
}

#[derive(Deserialize, Default)]
struct ChangeValue {
    metadata: Option<Metadata>,
    #[serde(default)]
    contacts: Vec<Contact>,
    #[serde(default)]
    messages: Vec<Message>,
    #[serde(default)]
    message_echoes: Vec<Message>,
    #[serde(default)]
    statuses: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct Metadata {
    phone_number_id: Option<String>,
}

#[derive(Deserialize)]
struct Contact {
    wa_id: Option<String>,
    user_id: Option<String>,
}

#[derive(Deserialize)]
struct Message {
    id: String,
    from: Option<String>,
    from_user_id: Option<String>,
    to: Option<String>,
    to_user_id: Option<String>,
    timestamp: Timestamp,
    #[serde(rename = "type", default)]
    kind: String,
    text: Option<Body>,
    interactive: Option<Interactive>,
    button: Option<Button>,
    image: Option<Media>,
    video: Option<Media>,
    document: Option<Media>,
    referral: Option<WaReferral>,
}

/// Seconds since the epoch: a string in Meta's examples, an integer in some of its tables.
#[derive(Deserialize)]
#[serde(untagged)]
enum Timestamp {
    Text(String),
    Number(i64),
}

impl Timestamp {
    fn millis(&self) -> Option<i64> {
        let secs = match self {
            Timestamp::Text(s) => s.trim().parse::<i64>().ok()?,
            Timestamp::Number(n) => *n,
        };
        secs.checked_mul(1000)
    }
}

#[derive(Deserialize)]
struct Body {
    body: Option<String>,
}

#[derive(Deserialize)]
struct Interactive {
    button_reply: Option<Reply>,
    list_reply: Option<Reply>,
}

#[derive(Deserialize)]
struct Reply {
    title: Option<String>,
}

#[derive(Deserialize)]
struct Button {
    text: Option<String>,
    payload: Option<String>,
}

#[derive(Deserialize)]
struct Media {
    caption: Option<String>,
}

impl Message {
    /// The text to classify: the text body, a button or list reply's title, a template
    /// button's text, a media caption; other types as `[type]`.
    fn text(&self) -> String {
        let reply = self
            .interactive
            .as_ref()
            .and_then(|i| i.button_reply.as_ref().or(i.list_reply.as_ref()))
            .and_then(|r| r.title.clone());
        let button = self
            .button
            .as_ref()
            .and_then(|b| b.text.clone().or_else(|| b.payload.clone()));
        let caption = [&self.image, &self.video, &self.document]
            .into_iter()
            .flatten()
            .find_map(|m| m.caption.clone());
        self.text
            .as_ref()
            .and_then(|t| t.body.clone())
            .or(reply)
            .or(button)
            .or(caption)
            .unwrap_or_else(|| format!("[{}]", self.kind))
    }
}

/// A WhatsApp message id as an event id: as is when it fits (1..128 characters), else a hash
/// of it (stable, so a redelivery is still one event).
fn event_id(wamid: &str) -> String {
    if !wamid.is_empty() && wamid.chars().count() <= MAX_EVENT_ID_CHARS {
        wamid.to_string()
    } else {
        format!("wa:{}", hex::encode(Sha256::digest(wamid.as_bytes())))
    }
}

/// A `wa_id`/`from` (digits, international, without `+`) in E.164; None when it is not a
/// phone number.
fn phone(wa_id: &str, region: Region) -> Option<String> {
    let digits = wa_id.trim().trim_start_matches('+');
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    normalize_phone(&format!("+{digits}"), region).ok()
}

fn non_empty(s: &Option<String>) -> Option<String> {
    s.as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// The messages of a payload for the channel of `phone_number_id`: changes of another phone
/// number id are ignored (an app may serve several numbers, and Meta sends each of them to
/// every webhook of the app).
pub fn map(body: &[u8], phone_number_id: &str, region: Region) -> Result<Mapped, PayloadError> {
    let payload: Payload = serde_json::from_slice(body)?;
    let mut out = Mapped::default();
    for change in payload.entry.into_iter().flat_map(|e| e.changes) {
        let v = change.value;
        let ours = v
            .metadata
            .as_ref()
            .and_then(|m| m.phone_number_id.as_deref())
            == Some(phone_number_id);
        let (items, direction) = match change.field.as_str() {
            "messages" => (v.messages, Direction::Inbound),
            "smb_message_echoes" => (v.message_echoes, Direction::Outbound),
            _ => {
                out.ignored += 1;
                continue;
            }
        };
        if !ours {
            out.ignored += items.len() + v.statuses.len();
            continue;
        }
        out.statuses += v.statuses.len();
        // The contacts array pairs a phone with a user id, for messages that carry only one.
        let mut by_phone: BTreeMap<String, String> = BTreeMap::new();
        let mut by_user: BTreeMap<String, String> = BTreeMap::new();
        for c in &v.contacts {
            if let (Some(wa), Some(user)) = (non_empty(&c.wa_id), non_empty(&c.user_id)) {
                by_phone.insert(wa.clone(), user.clone());
                by_user.insert(user, wa);
            }
        }
        for m in items {
            let (wa, user) = match direction {
                Direction::Inbound => (non_empty(&m.from), non_empty(&m.from_user_id)),
                Direction::Outbound => (non_empty(&m.to), non_empty(&m.to_user_id)),
            };
            let user = user.or_else(|| wa.as_ref().and_then(|w| by_phone.get(w).cloned()));
            let wa = wa.or_else(|| user.as_ref().and_then(|u| by_user.get(u).cloned()));
            let e164 = wa.as_deref().and_then(|w| phone(w, region));
            let Some(sent_at) = m.timestamp.millis() else {
                out.unusable.push(format!(
                    "message {}: timestamp is not a number of seconds",
                    m.id
                ));
                continue;
            };
            if e164.is_none() && user.is_none() {
                out.unusable.push(format!(
                    "message {}: neither a phone nor a business-scoped user id",
                    m.id
                ));
                continue;
            }
            let text = m.text();
            out.messages.push(WaMessage {
                event_id: event_id(&m.id),
                phone: e164,
                business_user_id: user,
                direction,
                text,
                sent_at,
                kind: m.kind.clone(),
                referral: m.referral.filter(|r| *r != WaReferral::default()),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region() -> Region {
        crate::phone::parse_region("ID").unwrap()
    }

    /// A payload as Meta writes it: non-ASCII escaped as \uXXXX (emoji as surrogate pairs),
    /// `/` as `\/`.
    const PAYLOAD: &str = r#"{"object":"whatsapp_business_account","entry":[{"id":"102290129340398","changes":[{"value":{"messaging_product":"whatsapp","metadata":{"display_phone_number":"15550783881","phone_number_id":"106540352242922"},"contacts":[{"profile":{"name":"Sheena Nelson"},"wa_id":"6281234567890","user_id":"ID.13491208655302741918"}],"messages":[{"from":"6281234567890","from_user_id":"ID.13491208655302741918","id":"wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA=","timestamp":"1749416383","type":"text","text":{"body":"Halo kak, info harga caf\u00e9 \ud83d\ude00 https:\/\/fb.me\/x"},"referral":{"source_url":"https:\/\/fb.me\/3cr4Wqqkv","source_id":"120226305854810726","source_type":"ad","body":"Summer Succulents are here!","headline":"Chat with us","media_type":"image","image_url":"https:\/\/scontent.xx.fbcdn.net\/v\/t45.1","ctwa_clid":"Aff-n8ZTODiE79d22KtAwQKj9e","welcome_message":{"text":"Hi there!"}}},{"from":"6281234567890","id":"wamid.2","timestamp":"1749416400","type":"interactive","interactive":{"type":"button_reply","button_reply":{"id":"b1","title":"Mau booking"}}},{"from":"6281234567890","id":"wamid.3","timestamp":"1749416401","type":"sticker","sticker":{"mime_type":"image\/webp","id":"9"}}],"statuses":[{"id":"wamid.out1","status":"delivered","timestamp":"1750030073","recipient_id":"6281234567890"}]},"field":"messages"}]}]}"#;

    #[test]
    fn messages_map_with_their_text_referral_and_keys() {
        let m = map(PAYLOAD.as_bytes(), "106540352242922", region()).unwrap();
        assert_eq!((m.statuses, m.ignored, m.unusable.len()), (1, 0, 0));
        assert_eq!(m.messages.len(), 3);
        let first = &m.messages[0];
        assert_eq!(
            first.event_id,
            "wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA="
        );
        assert_eq!(first.phone.as_deref(), Some("+6281234567890"));
        assert_eq!(
            first.business_user_id.as_deref(),
            Some("ID.13491208655302741918")
        );
        assert_eq!(first.text, "Halo kak, info harga café 😀 https://fb.me/x");
        assert_eq!(first.sent_at, 1_749_416_383_000);
        assert_eq!(first.channel(), "ctwa");
        let r = first.referral.as_ref().unwrap();
        assert_eq!(r.source_url.as_deref(), Some("https://fb.me/3cr4Wqqkv"));
        assert_eq!(r.ctwa_clid.as_deref(), Some("Aff-n8ZTODiE79d22KtAwQKj9e"));
        assert_eq!(
            (m.messages[1].text.as_str(), m.messages[1].channel()),
            ("Mau booking", "whatsapp")
        );
        // The second message has no from_user_id: the contacts array pairs it.
        assert_eq!(
            m.messages[1].business_user_id.as_deref(),
            Some("ID.13491208655302741918")
        );
        assert_eq!(m.messages[2].text, "[sticker]");
    }

    #[test]
    fn the_signature_is_over_the_bytes_as_sent() {
        let secret = b"app_secret_example";
        let sign = |body: &[u8]| {
            let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
            mac.update(body);
            format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
        };
        // A digest computed independently (Python's hmac module) for an empty entry list.
        let empty = br#"{"object":"whatsapp_business_account","entry":[]}"#;
        assert_eq!(
            sign(empty),
            "sha256=6eb10e0bc4192e9206e3de93178e66ea9eb262e9ea07bb66abdc83dcf8d3abf3"
        );
        let sig = sign(PAYLOAD.as_bytes());
        assert!(signature_matches(secret, PAYLOAD.as_bytes(), Some(&sig)));
        // The same JSON written again (escapes undone) is another byte string: no match.
        let rewritten =
            serde_json::to_vec(&serde_json::from_str::<serde_json::Value>(PAYLOAD).unwrap())
                .unwrap();
        assert!(!signature_matches(secret, &rewritten, Some(&sig)));
        let mut tampered = PAYLOAD.as_bytes().to_vec();
        tampered[200] ^= 1;
        assert!(!signature_matches(secret, &tampered, Some(&sig)));
        assert!(!signature_matches(
            b"another secret",
            PAYLOAD.as_bytes(),
            Some(&sig)
        ));
        for bad in [
            None,
            Some(""),
            Some("sha1=00"),
            Some("sha256=zz"),
            Some("sha256="),
        ] {
            assert!(
                !signature_matches(secret, PAYLOAD.as_bytes(), bad),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn echoes_are_outbound_to_the_contact_and_other_numbers_are_ignored() {
        let echo = r#"{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"value":{"messaging_product":"whatsapp","metadata":{"display_phone_number":"15550783881","phone_number_id":"P1"},"message_echoes":[{"from":"15550783881","to":"6281234567890","id":"wamid.e1","timestamp":1739321024,"type":"text","text":{"body":"Harga paket Rp 1.500.000 ya kak"}}]},"field":"smb_message_echoes"},{"value":{"metadata":{"phone_number_id":"OTHER"},"messages":[{"from":"6281234567890","id":"wamid.x","timestamp":"1","type":"text","text":{"body":"hi"}}]},"field":"messages"},{"value":{},"field":"account_update"}]}]}"#;
        let m = map(echo.as_bytes(), "P1", region()).unwrap();
        assert_eq!(m.messages.len(), 1);
        let e = &m.messages[0];
        assert_eq!(
            (e.direction, e.phone.as_deref()),
            (Direction::Outbound, Some("+6281234567890"))
        );
        assert_eq!(e.sent_at, 1_739_321_024_000);
        assert_eq!(
            m.ignored, 2,
            "a message for another number and an unknown field"
        );
    }

    #[test]
    fn a_user_id_without_a_phone_keys_the_contact_and_nothing_is_guessed() {
        let bsuid = r#"{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"value":{"metadata":{"phone_number_id":"P1"},"contacts":[{"profile":{"name":"Sheena","username":"@sheena"},"user_id":"US.13491208655302741918","parent_user_id":"US.ENT.11815799212886844830"}],"messages":[{"from_user_id":"US.13491208655302741918","id":"wamid.u1","timestamp":"1749416383","type":"image","image":{"caption":"ini buktinya","mime_type":"image\/jpeg","id":"5"}},{"id":"wamid.u2","timestamp":"1749416383","type":"text","text":{"body":"?"}}]},"field":"messages"}]}]}"#;
        let m = map(bsuid.as_bytes(), "P1", region()).unwrap();
        assert_eq!(m.messages.len(), 1);
        let u = &m.messages[0];
        assert_eq!(
            (u.phone.as_deref(), u.key()),
            (None, Some("US.13491208655302741918"))
        );
        assert_eq!(u.text, "ini buktinya");
        assert_eq!(
            m.unusable.len(),
            1,
            "a message naming no contact: {:?}",
            m.unusable
        );
        assert!(map(b"[1,2", "P1", region()).is_err());
    }

    #[test]
    fn a_message_id_past_the_event_id_bound_is_hashed_stably() {
        let long = "wamid.".to_string() + &"A".repeat(200);
        let a = event_id(&long);
        assert!(a.starts_with("wa:") && a.len() <= MAX_EVENT_ID_CHARS);
        assert_eq!(a, event_id(&long));
        assert_eq!(event_id("wamid.short"), "wamid.short");
    }
}
