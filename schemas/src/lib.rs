//! Funnel's shared model, used by every binary: the Avro schema of a chat message, its Rust
//! type, the Confluent wire-format codec (magic byte 0, 4-byte big-endian schema id, Avro
//! binary), and the keyword rules that classify messages (the processor classifies with them,
//! the API validates and dry-runs them). No I/O here: looking schema ids up in a registry or
//! rule sets up in PostgreSQL is the caller's business.

mod chat_message;
pub mod rules;
mod wire;

pub use chat_message::{ChatMessage, Direction, CHAT_MESSAGE_AVSC};
pub use wire::{decode, encode, split_frame, Decoder, WireError, MAGIC_BYTE};
