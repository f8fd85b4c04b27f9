//! The PostgreSQL the resources read and write: contacts, the funnel report, rule sets, API
//! tokens, tenants' limits, intake channels and their contact aliases, signed webhooks.

pub mod aliases;
pub mod channels;
pub mod contacts;
pub mod report;
pub mod rules;
pub mod tenants;
pub mod tokens;
pub mod webhooks;
