//! The PostgreSQL the resources read and write: contacts, the funnel report, rule sets and API
//! tokens.

pub mod contacts;
pub mod report;
pub mod rules;
pub mod tenants;
pub mod tokens;
