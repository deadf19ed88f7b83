//! ourwhats: a Matrix homeserver over an embedded RocksDB.
//!
//! Layers, top to bottom (arrows point down only): [`http`] with [`client_api`],
//! [`media_api`] and [`federation_api`]; [`services`]; [`core`] (pure protocol functions);
//! [`storage`]. See `docs/architecture.md` for the map.

#![warn(missing_docs)]

pub mod client_api;
pub mod config;
pub mod core;
pub mod error;
pub mod fd_limit;
pub mod federation_api;
pub mod http;
pub mod logging;
pub mod media_api;
pub mod server;
pub mod services;
pub mod storage;
pub mod tls;

pub use config::Config;
pub use server::{RunningServer, Server};
