//! Writer schemas by registry id, fetched once from any Confluent-compatible registry.

use std::collections::HashMap;
use std::sync::Arc;

use apache_avro::Schema;
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
    schemas: HashMap<u32, Arc<Schema>>,
}

impl SchemaCache {
    pub fn new(url: &str) -> Self {
        Self {
            settings: SrSettings::new(url.to_string()),
            schemas: HashMap::new(),
        }
    }

    pub async fn writer_schema(&mut self, id: u32) -> Result<Arc<Schema>, RegistryError> {
        if let Some(s) = self.schemas.get(&id) {
            return Ok(s.clone());
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
        let schema = Arc::new(schema);
        self.schemas.insert(id, schema.clone());
        Ok(schema)
    }

    /// Checks the registry answers at all (fatal at start when it does not).
    pub async fn ping(&self) -> Result<(), RegistryError> {
        schema_registry_converter::async_impl::schema_registry::get_all_subjects(&self.settings)
            .await
            .map(|_| ())
            .map_err(|e| RegistryError::Unavailable(e.to_string()))
    }
}
