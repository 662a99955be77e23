//! Gatehouse: a host-level access agent for bastion hosts.
//!
//! The modules follow the life of a connection (see ARCHITECTURE.md):
//! [`redirect`] (eBPF: the kernel sends protected connections here) →
//! [`identity`] (who opened it) → [`policy`] (may they?) → [`proxy`]
//! (listener and session task) → [`protocol`] (per-protocol relay) →
//! [`audit`] (the record). [`control`] serves the CLI ([`cli`]) over a Unix
//! socket; [`settings`] holds the agent's own knobs.
#![deny(unsafe_code)]

pub mod approval;
pub mod audit;
pub mod catalog;
pub mod cli;
pub mod control;
pub mod identity;
pub mod live;
pub mod mask;
pub mod metrics;
pub mod notify;
pub mod policy;
pub mod protocol;
pub mod proxy;
pub mod redirect;
pub mod secrets;
pub mod service;
pub mod settings;
pub mod sql;
mod sys;
pub use sys::Allocator;
pub mod trail;
pub mod types;

/// The compiled eBPF object (built from `agent-ebpf` by build.rs).
pub const EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/agent-ebpf"));
