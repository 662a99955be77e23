//! Protocol adapters: what happens between the client and the backend once a
//! session is allowed. `tcp` relays opaque bytes; `postgres` and `mysql`
//! decide statements; `http` requests; `ssh` channels.

pub mod budget;
pub mod http;
pub mod local_socket;
pub mod mysql;
pub mod postgres;
pub mod ssh;
pub mod tcp;
