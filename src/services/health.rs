//! What an operator's health check asks: does storage take writes, are the listeners up.
//! The listeners report themselves here (the server sets the flags as they start and
//! stop); storage answers from its write state (see [`crate::storage::health`]).

use std::sync::atomic::{AtomicU8, Ordering};

use serde::Serialize;

use crate::storage::health::WriteState;
use crate::storage::Db;

/// A listener's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerState {
    /// Not configured.
    Disabled,
    /// Accepting connections.
    Up,
    /// Configured but not accepting (stopped or failed).
    Down,
}

impl ListenerState {
    fn from_u8(value: u8) -> Self {
        match value {
            1 => Self::Up,
            2 => Self::Down,
            _ => Self::Disabled,
        }
    }

    fn as_u8(self) -> u8 {
        match self {
            Self::Disabled => 0,
            Self::Up => 1,
            Self::Down => 2,
        }
    }
}

/// The listeners' states, set by the server.
#[derive(Debug, Default)]
pub struct Listeners {
    client: AtomicU8,
    federation: AtomicU8,
}

impl Listeners {
    /// Records the client listener's state.
    pub fn set_client(&self, state: ListenerState) {
        self.client.store(state.as_u8(), Ordering::Release);
    }

    /// Records the federation listener's state.
    pub fn set_federation(&self, state: ListenerState) {
        self.federation.store(state.as_u8(), Ordering::Release);
    }
}

/// Storage's part of the report.
#[derive(Debug, Clone, Serialize)]
pub struct StorageHealth {
    /// Whether writes go through.
    pub writable: bool,
    /// Why not, when they don't (for the operator; never shown to clients elsewhere).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// For how long, in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped_for_secs: Option<u64>,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct HealthReport {
    /// `"ok"` when everything configured works, else `"degraded"`.
    pub status: &'static str,
    /// Storage.
    pub storage: StorageHealth,
    /// The client listener.
    pub client_listener: ListenerState,
    /// The federation listener.
    pub federation_listener: ListenerState,
}

impl HealthReport {
    /// Whether everything configured works.
    pub fn healthy(&self) -> bool {
        self.status == "ok"
    }
}

/// The report now (storage probed with a small write first: see [`Db::probe_writes`]).
pub fn report(db: &Db, listeners: &Listeners) -> HealthReport {
    db.probe_writes();
    let storage = match db.write_state() {
        WriteState::Writable => StorageHealth {
            writable: true,
            error: None,
            stopped_for_secs: None,
        },
        WriteState::Stopped { error, seconds } => StorageHealth {
            writable: false,
            error: Some(error),
            stopped_for_secs: Some(seconds),
        },
    };
    let client_listener = ListenerState::from_u8(listeners.client.load(Ordering::Acquire));
    let federation_listener = ListenerState::from_u8(listeners.federation.load(Ordering::Acquire));
    let healthy = storage.writable
        && client_listener != ListenerState::Down
        && federation_listener != ListenerState::Down;
    HealthReport {
        status: if healthy { "ok" } else { "degraded" },
        storage,
        client_listener,
        federation_listener,
    }
}
