//! Writer schemas by registry id, fetched once from any Confluent-compatible registry, each
//! with its prepared decoder.

use std::collections::HashMap;

use apache_avro::Schema;
use funnel_schemas::Decoder;
use schema_registry_converter::async_impl::schema_registry::{get_schema_by_id, SrSettings};

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The registry does not know the id, or the schema is not Avro: a poison message.
    #[error("schema id {id}: {reason}")]
    Unknown { id: u32, reason: String },
    /// The registry did not answer: retry.
    #[error("schema registry unavailable: {0}")]
    Unavailable(String),
}

pub struct SchemaCache {
    settings: SrSettings,
    /// Leaked on purpose: one schema and decoder per registry id ever seen, kept for the life
    /// of the process (a decoder borrows its schema, and a process sees a handful of ids).
    decoders: HashMap<u32, &'static Decoder<'static>>,
}

impl SchemaCache {
    pub fn new(url: &str) -> Self {
        Self {
            settings: SrSettings::new(url.to_string()),
            decoders: HashMap::new(),
        }
    }

    /// The decoder of the writer schema registered under `id`.
    pub async fn decoder(&mut self, id: u32) -> Result<&'static Decoder<'static>, RegistryError> {
        if let Some(d) = self.decoders.get(&id) {
            return Ok(d);
        }
        let registered = get_schema_by_id(id, &self.settings).await.map_err(|e| {
            // Only a definite "not found" makes the message poison; anything else (connection
            // refused, 5xx, timeouts) may pass, so it is retried.
            let text = e.to_string();
            if text.contains("status 404") {
                RegistryError::Unknown { id, reason: text }
            } else {
                RegistryError::Unavailable(text)
            }
        })?;
        let schema = Schema::parse_str(&registered.schema).map_err(|e| RegistryError::Unknown {
            id,
            reason: format!("not an Avro schema: {e}"),
        })?;
        let schema: &'static Schema = Box::leak(Box::new(schema));
        let decoder = Decoder::new(schema).map_err(|e| RegistryError::Unknown {
            id,
            reason: format!("cannot be read as a chat message: {e}"),
        })?;
        let decoder: &'static Decoder<'static> = Box::leak(Box::new(decoder));
        self.decoders.insert(id, decoder);
        Ok(decoder)
    }

    /// Checks the registry answers at all (fatal at start when it does not).
    pub async fn ping(&self) -> Result<(), RegistryError> {
        schema_registry_converter::async_impl::schema_registry::get_all_subjects(&self.settings)
            .await
            .map(|_| ())
            .map_err(|e| RegistryError::Unavailable(e.to_string()))
    }
}
