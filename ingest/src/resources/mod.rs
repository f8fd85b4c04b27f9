//! The API's resources, one module each: the handlers, the documents they answer with, and
//! the parsing of their parameters. The queries they run are in `crate::queries`.

pub mod channels;
pub mod contacts;
pub mod health;
pub mod messages;
mod params;
pub mod reports;
pub mod rules;
