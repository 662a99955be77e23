//! Protocol adapters: what happens between the client and the backend once a
//! session is allowed. `tcp` relays opaque bytes.

pub mod http;
pub mod postgres;
pub mod ssh;
pub mod tcp;
