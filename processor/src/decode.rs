//! One record decoder for every reader of the input topic (the live pipeline, a replay's
//! pipeline, `replay --dry-run`): the Confluent frame, the writer schema by registry id (fetched
//! once), the Avro payload resolved to this build's schema, and the checks the schema cannot
//! make (`funnel_schemas::record`). A record is either a chat message or poison, with the
//! reason it is dead-lettered; only a registry that does not answer is an error (transient).

use funnel_runtime::registry::{RegistryError, SchemaCache};
use funnel_schemas::{record, split_frame, ChatMessage};

/// Why a record can never be folded: the reason its dead letter carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Poison(pub String);

impl std::fmt::Display for Poison {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

pub struct RecordDecoder {
    registry: SchemaCache,
}

impl RecordDecoder {
    pub fn new(kafka: &funnel_runtime::settings::KafkaSettings) -> Result<Self, RegistryError> {
        Ok(Self {
            registry: SchemaCache::new(kafka)?,
        })
    }

    /// Checks the registry answers (at start, where a registry that does not is fatal).
    pub async fn ping(&self) -> Result<(), RegistryError> {
        self.registry.ping().await
    }

    /// The message of a record with `key` and `value`, or why it is poison. Err: the registry
    /// is unavailable, so whether the record is poison is not known yet.
    pub async fn decode(
        &mut self,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
    ) -> Result<Result<ChatMessage, Poison>, RegistryError> {
        let poison = |why: String| Ok(Err(Poison(why)));
        let Some(bytes) = value else {
            return poison("empty value (tombstone)".into());
        };
        let (id, payload) = match split_frame(bytes) {
            Ok(f) => f,
            Err(e) => return poison(e.to_string()),
        };
        let decoder = match self.registry.decoder(id).await {
            Ok(d) => d,
            Err(e @ RegistryError::Unknown { .. }) => return poison(e.to_string()),
            Err(e) => return Err(e),
        };
        let m = match decoder.decode(payload) {
            Ok(m) => m,
            Err(e) => return poison(e.to_string()),
        };
        Ok(record::check(&m, key)
            .map(|()| m)
            .map_err(|e| Poison(e.to_string())))
    }
}
