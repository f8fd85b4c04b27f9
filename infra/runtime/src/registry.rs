//! Any Confluent-compatible schema registry: the chat message schema registered under
//! `<topic>-value` (TopicNameStrategy) by producers, and writer schemas fetched by id, once,
//! each with its prepared decoder, by consumers.

use std::collections::HashMap;
use std::time::Duration;

use apache_avro::Schema;
use funnel_schemas::{Decoder, CHAT_MESSAGE_AVSC};
use schema_registry_converter::async_impl::schema_registry::{
    get_schema_by_id, post_schema, SrSettings,
};
use schema_registry_converter::schema_registry_common::{SchemaType, SuppliedSchema};

use crate::settings::KafkaSettings;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The registry does not know the id, or the schema is not Avro: a poison message.
    #[error("schema id {id}: {reason}")]
    Unknown { id: u32, reason: String },
    /// The registry did not answer: retry.
    #[error("schema registry unavailable: {0}")]
    Unavailable(String),
    /// The registry did not take the chat message schema (not reachable, or the subject's
    /// compatibility rule refused it).
    #[error("cannot register the chat message schema at {url}: {reason}")]
    Register { url: String, reason: String },
}

/// How long one request to the registry may take (connect and read).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A registry client with the basic authentication of `kafka`, if any, whose requests give up
/// after [`REQUEST_TIMEOUT`]. (`SrSettings::new` has no timeout: a request the registry
/// accepted but never answered hung the processor's start for good, in CI.)
fn client(kafka: &KafkaSettings) -> Result<SrSettings, RegistryError> {
    let url = &kafka.registry_url;
    let mut b = SrSettings::new_builder(url.to_string());
    b.set_timeout(REQUEST_TIMEOUT);
    if let Some(user) = &kafka.registry_auth.registry_username {
        b.set_basic_authorization(user, kafka.registry_auth.password());
    }
    b.build()
        .map_err(|e| RegistryError::Unavailable(format!("schema registry client for {url}: {e}")))
}

/// Registers (or finds) the chat message schema under `<topic>-value` of the chat messages
/// topic and returns its id. A schema the subject's compatibility rule refuses is an error
/// here, before anything is produced.
pub async fn register_schema(kafka: &KafkaSettings) -> Result<u32, RegistryError> {
    let (registry_url, topic) = (&kafka.registry_url, &kafka.topic_messages);
    let schema = SuppliedSchema::new(
        Some("dev.funnel.ChatMessage".into()),
        SchemaType::Avro,
        CHAT_MESSAGE_AVSC.to_string(),
    );
    let registered = post_schema(&client(kafka)?, format!("{topic}-value"), schema)
        .await
        .map_err(|e| RegistryError::Register {
            url: registry_url.to_string(),
            reason: e.to_string(),
        })?;
    Ok(registered.id)
}

pub struct SchemaCache {
    settings: SrSettings,
    /// Leaked on purpose: one schema and decoder per registry id ever seen, kept for the life
    /// of the process (a decoder borrows its schema, and a process sees a handful of ids).
    decoders: HashMap<u32, &'static Decoder<'static>>,
}

impl SchemaCache {
    pub fn new(kafka: &KafkaSettings) -> Result<Self, RegistryError> {
        Ok(Self {
            settings: client(kafka)?,
            decoders: HashMap::new(),
        })
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

    /// Checks the registry answers at all (fatal at start when it does not): three attempts,
    /// 2 s apart, so one lost request does not stop the processor.
    pub async fn ping(&self) -> Result<(), RegistryError> {
        let mut attempt = 1;
        loop {
            match schema_registry_converter::async_impl::schema_registry::get_all_subjects(
                &self.settings,
            )
            .await
            {
                Ok(_) => return Ok(()),
                Err(e) if attempt < 3 => {
                    tracing::warn!(attempt, error = %e, "the schema registry did not answer; trying again");
                    attempt += 1;
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
                Err(e) => {
                    return Err(RegistryError::Unavailable(format!(
                        "{e} (3 attempts of at most {} s each)",
                        REQUEST_TIMEOUT.as_secs()
                    )))
                }
            }
        }
    }
}
