//! The pieces every resource shares: problem details and the typed error responses
//! ([`problem`]), value types of the documents ([`types`]), bearer-token authorization
//! ([`auth`]), the middleware around every route ([`middleware`]), streamed CSV bodies
//! ([`csv`]), opaque tokens for clients to hand back ([`seal`]) and the listening socket's
//! connection cap ([`listener`]).

pub mod auth;
pub mod csv;
pub mod listener;
pub mod middleware;
pub mod problem;
pub mod seal;
pub mod types;
