//! The pieces every resource shares: problem details and the typed error responses
//! ([`problem`]), value types of the documents ([`types`]), bearer-token authorization
//! ([`auth`]), the middleware around every route ([`middleware`]), streamed CSV bodies
//! ([`csv`]) and opaque tokens for clients to hand back ([`seal`]).

pub mod auth;
pub mod csv;
pub mod middleware;
pub mod problem;
pub mod seal;
pub mod types;
