//! Funnel's pure core, used by every binary: what a chat message is and how it travels, what
//! it means for the funnel, and how a contact's row follows from its messages. No I/O here:
//! looking schema ids up in a registry, rule sets up in PostgreSQL or the time of day is the
//! caller's business.
//!
//! - [`message`]: the chat message record, its Avro schema and channel names;
//! - [`wire`]: the Confluent wire format (magic byte 0, 4-byte schema id, Avro binary);
//! - [`validate`]: a message as a client sends it, checked field by field into the record,
//!   with [`phone`] normalization and derived [`event_id`]s;
//! - [`record`]: the checks a consumer makes on a decoded record;
//! - [`rules`]: keyword rules, the classifier and the CSV form, with [`money`] values;
//! - [`fold`]: a contact's funnel state as a function of the set of its classified events;
//! - [`whatsapp`]: Meta's WhatsApp webhook payloads, their signature and their messages.

pub mod event_id;
pub mod fold;
pub mod message;
pub mod money;
pub mod phone;
pub mod record;
pub mod rules;
pub mod validate;
pub mod whatsapp;
pub mod wire;

pub use message::{ChatMessage, Direction, CHAT_MESSAGE_AVSC};
pub use wire::{decode, encode, split_frame, Decoder, WireError, MAGIC_BYTE};
