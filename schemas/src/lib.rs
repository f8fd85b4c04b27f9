//! Funnel's wire formats, shared by every binary: the Avro schema of a chat message, its Rust
//! type, and the Confluent wire-format codec (magic byte 0, 4-byte big-endian schema id, Avro
//! binary). No I/O here: looking schema ids up in a registry is the caller's business.

mod chat_message;
mod wire;

pub use chat_message::{ChatMessage, Direction, CHAT_MESSAGE_AVSC};
pub use wire::{decode, encode, split_frame, WireError, MAGIC_BYTE};
