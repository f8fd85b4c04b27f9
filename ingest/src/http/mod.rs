//! The pieces every resource shares: problem details and the typed error responses
//! ([`problem`]), value types of the documents ([`types`]), bearer-token authorization
//! ([`auth`]), signed webhooks ([`signed`]), the middleware around every route
//! ([`middleware`]), streamed CSV bodies ([`csv`]) and the listening socket's connection cap
//! and head deadline ([`listener`]).

pub mod auth;
pub mod csv;
pub mod listener;
pub mod middleware;
pub mod problem;
pub mod signed;
pub mod types;
